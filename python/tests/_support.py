"""Helpers shared by the CPU and GPU tests (a plain module beside them: pytest's default import mode puts this folder
on sys.path)."""
import ctypes
import re

from flash_attn_interop import _abi


def kernel_names(lib):
    """The names of the kernels the library `lib` (a flash_attn_interop Library) lists (fa_kernel_name)."""
    n = ctypes.c_int32(0)
    assert lib.lib.fa_kernel_count(ctypes.byref(n)) == 0
    name = ctypes.c_char_p()
    names = []
    for i in range(n.value):
        assert lib.lib.fa_kernel_name(i, ctypes.byref(name)) == 0
        names.append(name.value.decode())
    return names


def fp8_kernels(lib):
    """Whether the library `lib` (a flash_attn_interop Library) lists the sm90 fp8 forward kernels (sm90_fwd_e4m3_*):
    the fp8 forward is then served at compute capability 9.0; a build without them (one from before they were
    verified on a GPU) refuses fp8."""
    return any(x.startswith("sm90_fwd_e4m3_") for x in kernel_names(lib))


def sm90a(lib):
    """Whether the library `lib` has sm_90a code (it lists sm90_ kernels)."""
    return any(x.startswith("sm90_") for x in kernel_names(lib))


def pair_kernels(lib, path, pass_, d, dv):
    """Whether the library `lib` lists kernels of `path` ("sm80" or "sm90") and `pass_` ("fwd" or "bwd") for the V head
    dim pair (d, dv): names <path>_<pass>_<dtype>_hdim<d>v<dv>_..."""
    tag = f"_hdim{d}v{dv}_"
    return any(x.startswith(f"{path}_{pass_}_") and tag in x for x in kernel_names(lib))


def sm90_dropout_kernels(lib, pass_, d):
    """Whether the library `lib` lists an sm90 dropout kernel of `pass_` ("fwd" or "bwd") for the class serving head dim
    d (the smallest of 64, 128, 192 and 256 at least d): a build with FA_SM90_FWD_DROPOUT / FA_SM90_BWD_DROPOUT (but
    the forward's head-dim-64 class with FA_SM90_FWD_P_SMEM), whose FA_PATH_AUTO then runs it on compute capability
    9.0."""
    cls = next(c for c in (64, 128, 192, 256) if c >= d)
    return any(x.startswith(f"sm90_{pass_}_") and f"_hdim{cls}_" in x and "_dropout_" in x for x in kernel_names(lib))


_LAUNCH = re.compile(r"^(fa_forward|fa_backward|fa_decode): (\S+)")


def launched_kernels(lib, fn):
    """Runs fn() with a log callback on the library `lib` and returns (fn's result, [(entry point, kernel name)] of the
    launches the library reported, the DEBUG messages "fa_forward: <kernel> for ...", in order). The callback is
    removed afterwards (process-wide: not for concurrent callers)."""
    got = []

    def sink(level, message, user_data):
        m = _LAUNCH.match((message or b"").decode(errors="replace"))
        if m:
            got.append((m.group(1), m.group(2)))

    callback = _abi.fa_log_callback_t(sink)  # alive in this frame until removed
    assert lib.lib.fa_set_log_callback(callback, None) == 0
    try:
        result = fn()
    finally:
        lib.lib.fa_set_log_callback(_abi.fa_log_callback_t(), None)
    return result, got
