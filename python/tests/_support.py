"""Helpers shared by the CPU and GPU tests (a plain module beside them: pytest's default import mode puts this folder
on sys.path)."""
import ctypes


def fp8_kernels(lib):
    """Whether the library `lib` (a flash_attn_interop Library) lists the sm90 fp8 forward kernels (sm90_fwd_e4m3_*):
    the fp8 forward is then served at compute capability 9.0; a build without them (one from before they were
    verified on a GPU) refuses fp8."""
    n = ctypes.c_int32(0)
    assert lib.lib.fa_kernel_count(ctypes.byref(n)) == 0
    name = ctypes.c_char_p()
    names = []
    for i in range(n.value):
        assert lib.lib.fa_kernel_name(i, ctypes.byref(name)) == 0
        names.append(name.value.decode())
    return any(x.startswith("sm90_fwd_e4m3_") for x in names)
