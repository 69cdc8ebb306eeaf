"""Finding and loading the library, and its statuses as Python exceptions."""
import ctypes
import os
import subprocess
import sys

import pytest

from conftest import SRC
import flash_attn_interop
from flash_attn_interop import FlashAttentionError, LibraryNotFoundError, _abi, _library


def test_import_needs_neither_torch_nor_gpu_nor_library():
    code = ("import sys; sys.modules['torch'] = None; import flash_attn_interop as f; "
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]; "
            "assert f._library._library is None; print('ok')")
    env = dict(os.environ, PYTHONPATH=SRC, FLASH_ATTENTION_NATIVE_PATH="/nowhere/libflash_attention.so")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ok"


def test_lookup_order(tmp_path):
    f = tmp_path / "libflash_attention.so"
    # Set: that library and nothing else (never silently another one).
    assert _library.candidate_paths({"FLASH_ATTENTION_NATIVE_PATH": str(f)}) == [("FLASH_ATTENTION_NATIVE_PATH",
                                                                                  str(f))]
    # A folder names the library inside it; a relative path is made absolute.
    assert _library.candidate_paths({"FLASH_ATTENTION_NATIVE_PATH": str(tmp_path)})[0][1] == str(f)
    assert os.path.isabs(_library.candidate_paths({"FLASH_ATTENTION_NATIVE_PATH": "x/lib.so"})[0][1])
    # Unset: the package (a wheel), then the build tree.
    paths = _library.candidate_paths({})
    assert [w for w, _ in paths] == ["the package", "the build tree"]
    assert paths[0][1].endswith(os.path.join("flash_attn_interop", "libflash_attention.so"))
    assert paths[1][1].endswith(os.path.join("artifacts", "native", "libflash_attention.so"))


def test_not_found_names_every_place_tried(tmp_path):
    bad = tmp_path / "libflash_attention.so"
    bad.write_bytes(b"not an ELF file")
    code = ("import flash_attn_interop as f\n"
            "try:\n    f.load_library()\nexcept f.LibraryNotFoundError as e:\n    print(e)\n")
    env = dict(os.environ, PYTHONPATH=SRC, FLASH_ATTENTION_NATIVE_PATH=str(bad))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    msg = p.stdout
    assert str(bad) in msg and "FLASH_ATTENTION_NATIVE_PATH" in msg
    assert "./build.sh wheel" in msg


def test_loaded_library_is_this_abi(lib):
    assert lib.version // 10000 == _abi.FA_VERSION_MAJOR and lib.version >= _abi.FA_VERSION_CODE
    assert os.path.isabs(lib.path)
    import flash_attn_interop
    assert flash_attn_interop.library_version() == (lib.version // 10000, lib.version // 100 % 100,
                                                    lib.version % 100)


def test_status_becomes_exception_with_message(lib):
    p = lib.new_params("forward")  # every tensor NULL
    with pytest.raises(FlashAttentionError) as ei:
        lib.check("fa_forward_check", lib.lib.fa_forward_check(ctypes.byref(p), 0))
    e = ei.value
    assert e.status == _abi.FA_STATUS_INVALID_ARGUMENT
    assert e.status_name == "FA_STATUS_INVALID_ARGUMENT"
    assert e.function == "fa_forward_check"
    assert e.message and e.message in str(e) and "FA_STATUS_INVALID_ARGUMENT" in str(e)
    assert isinstance(e, RuntimeError)


def test_every_status_has_its_c_name(lib):
    for code, name in _library.STATUS_NAMES.items():
        assert lib.lib.fa_status_string(code).decode() == name


def test_check_device_errors_is_exported_and_quiet_before_any_context(lib):
    assert "check_device_errors" in flash_attn_interop.__all__
    assert "fa_context_check" in _library.REQUIRED_EXPORTS
    if not lib._contexts:  # a device never used has no context and so nothing to report (no GPU touched)
        assert flash_attn_interop.check_device_errors(0) is None
    with pytest.raises(FlashAttentionError) as ei:
        lib.check("fa_context_check", lib.lib.fa_context_check(None))
    assert ei.value.status == _abi.FA_STATUS_INVALID_ARGUMENT and "context" in ei.value.message


def test_an_unknown_status_uses_the_library_name(lib):
    e = lib.error("fa_forward", 77)
    assert e.status == 77 and e.status_name  # whatever fa_status_string says, never empty


def test_params_templates_are_the_init_defaults(lib):
    p = lib.new_params("forward")
    assert p.struct_size == ctypes.sizeof(_abi.FaForwardParams)
    assert (p.window_left, p.window_right, p.causal, p.softmax_scale) == (-1, -1, 0, 0.0)
    assert p.causal_alignment == _abi.FA_CAUSAL_BOTTOM_RIGHT
    d = lib.new_params("decode")
    assert d.struct_size == ctypes.sizeof(_abi.FaDecodeParams) and d.num_splits == 0
    b = lib.new_params("backward")
    assert b.struct_size == ctypes.sizeof(_abi.FaBackwardParams) and b.deterministic == 0
    # Copies, not the template itself.
    p.causal = 1
    assert lib.new_params("forward").causal == 0


def test_no_device_here_is_reported_not_raised(lib):
    assert lib.device_count() >= 0


def test_library_not_found_error_is_an_oserror():
    assert issubclass(LibraryNotFoundError, OSError) and issubclass(LibraryNotFoundError, FlashAttentionError)
