"""flash_attn_interop: flash-attn 2.x's Python API on FlashAttention.Interop's C ABI (libflash_attention.so), called
through ctypes on PyTorch tensors: no compile step, any PyTorch version.

    from flash_attn_interop import flash_attn_func
    out = flash_attn_func(q, k, v, causal=True)

Importing needs neither a GPU nor PyTorch nor the library; the library is loaded (FLASH_ATTENTION_NATIVE_PATH, then
the copy inside the package, then the build tree's artifacts/native/) and torch imported on the first call.
"""
from ._args import UnsupportedArgumentError
from ._interface import (flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func,
                         flash_attn_varlen_func, flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func,
                         flash_attn_with_kvcache)
from ._library import FlashAttentionError, LibraryNotFoundError, load_library

__version__ = "0.5.0"

__all__ = ["flash_attn_func", "flash_attn_qkvpacked_func", "flash_attn_kvpacked_func", "flash_attn_varlen_func",
           "flash_attn_varlen_qkvpacked_func", "flash_attn_varlen_kvpacked_func", "flash_attn_with_kvcache",
           "FlashAttentionError", "LibraryNotFoundError", "UnsupportedArgumentError", "load_library",
           "library_version"]


def library_version():
    """(major, minor, patch) of the loaded libflash_attention (loading it if needed)."""
    v = load_library().version
    return v // 10000, v // 100 % 100, v % 100
