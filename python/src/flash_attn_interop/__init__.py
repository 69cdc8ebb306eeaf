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

__version__ = "0.13.0"

__all__ = ["flash_attn_func", "flash_attn_qkvpacked_func", "flash_attn_kvpacked_func", "flash_attn_varlen_func",
           "flash_attn_varlen_qkvpacked_func", "flash_attn_varlen_kvpacked_func", "flash_attn_with_kvcache",
           "FlashAttentionError", "LibraryNotFoundError", "UnsupportedArgumentError", "load_library",
           "library_version", "check_device_errors"]


def library_version():
    """(major, minor, patch) of the loaded libflash_attention (loading it if needed)."""
    v = load_library().version
    return v // 10000, v // 100 % 100, v % 100


def check_device_errors(device=None):
    """Raises FlashAttentionError (FA_STATUS_DEVICE_CHECK_FAILED, naming the cause) for what the GPU found during
    earlier calls on `device` (an ordinal or torch.device; default: torch's current device) that no check before the
    launch could see, e.g. a deterministic backward that gave up waiting for its turn because two calls in flight
    shared a workspace, or a device-only value of a call that did not fit its tensors (a kvcache's cache_batch_idx,
    a paged call's block id outside the pool: block_table); forgets it once raised. Does not synchronise: call it
    after the work it should cover is done. The next call on the device makes the same check. A device the package
    has not used yet has nothing."""
    lib = load_library()
    if device is None:
        import torch
        device = torch.cuda.current_device()
    elif not isinstance(device, int):
        device = device.index if device.index is not None else 0
    ctx = lib._contexts.get(int(device))
    if ctx is not None:
        lib.check("fa_context_check", lib.lib.fa_context_check(ctx))
