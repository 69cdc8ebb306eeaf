"""What every pass of the benchmark shares: loading libflash_attention through the generated ctypes mirror
(python/src/flash_attn_interop/_abi.py, imported as fa_abi through the bench/fa_abi.py shim), tensor descriptors of torch tensors, status -> error text, our forward/backward calls, the
do_bench timer, and the thresholds a row is checked against.

Imports no torch or triton at module level (the dry run needs neither); the functions that time or allocate
import them when called.
"""
import ctypes
import os
import re

import fa_abi
from fa_abi import (FA_CAUSAL_TOP_LEFT, FA_DTYPE_BFLOAT16, FA_DTYPE_FLOAT16, FA_DTYPE_FLOAT32, FA_PATH_AUTO,
                    FaBackwardParams, FaForwardParams, FaTensor)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Two bf16 results of the same attention differ by a few 1e-3 (relative Frobenius norm); beyond this
# our kernel is wrong, however fast.
MAX_REL_ERR = 2e-2
# The fp8 forward against bf16 SDPA on the same (e4m3) values: the kernel rounds each softmax weight to e4m3 (3
# mantissa bits) before P.V, which alone costs about 2.5e-2 relative (a CPU emulation on random normal inputs, S 512,
# D 64); beyond this our fp8 kernel is wrong (a lost descale or rescale is off by 1e-1 or more).
MAX_FP8_REL_ERR = 6e-2
# The same for each of dq, dk and dv against the flash backend's gradients: both are bf16 results of fp32
# accumulations (a few 1e-3 apart, dq the most); beyond this our backward is wrong.
MAX_BWD_REL_ERR = 3e-2
# TARGETS.md, aim 4: a managed Forward call within this many microseconds of the same launch from C.
INTEROP_TARGET_US = 5.0
# The Philox seed and base offset of the benchmarks' dropout calls (bench/ab.py --dropout, bench/dropout.py): fixed, so
# that builds timed side by side draw the same mask.
BENCH_DROPOUT_SEED, BENCH_DROPOUT_OFFSET = 0x5EED, 4096

# Exports without which no row can run, and those the backward rows need (ABI 0.3 and later).
FORWARD_EXPORTS = ("fa_status_string", "fa_last_error_message", "fa_version", "fa_context_create",
                   "fa_context_destroy", "fa_forward_params_init", "fa_forward")
BACKWARD_EXPORTS = ("fa_backward_params_init", "fa_backward", "fa_backward_workspace_size")


def rel_err(a, ref):
    """Relative Frobenius error of tensor a against tensor ref (in fp32; the absolute error where ref is all zero)."""
    ref = ref.float()
    den = float(ref.norm())
    num = float((a.float() - ref).norm())
    return num / den if den > 0 else num


def cell(x, spec):
    """x formatted by spec for a table, or "-" where it was not measured (None or not a number)."""
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def lib_file(path):
    """The absolute path of libflash_attention.so given it or its folder."""
    if os.path.isdir(path):
        path = os.path.join(path, "libflash_attention.so")
    return os.path.abspath(path)


def first_line(e, limit):
    """An exception's first line, cut to limit characters (what a row's errors hold)."""
    return str(e).split("\n")[0][:limit]


def is_failure(key):
    """Whether an errors key names a failure of our own kernels: "ours" (the default path), "ours_<x>" (another
    of our timings, e.g. ours_sm80), "mismatch" or "mismatch_<x>" (a wrong result), or "row" (the row could not be
    measured at all). Other keys (flash, cudnn, base, managed, reference) are recorded without failing the run."""
    return key in ("ours", "mismatch", "row") or key.startswith(("ours_", "mismatch_"))


def finish_row(row):
    """Drops an empty errors dict; True when the row shows our kernel failed or gave a wrong result."""
    errs = row.get("errors")
    if not errs:
        row.pop("errors", None)
        return False
    return any(is_failure(k) for k in errs)


# The DEBUG message fa_forward / fa_backward / fa_decode log after a launch: "fa_forward: <kernel name> for <shape>"
# (native/src/api.cpp). A name has no spaces, so "nothing to launch for ..." and "(unnamed kernel)" do not match.
KERNEL_LOG = re.compile(r"^(fa_forward|fa_backward|fa_decode): (\S+)(?: \(deterministic\))? for ")


def kernel_from_log(message):
    """(entry point, kernel name) of a launch message of the library's log, or None."""
    m = KERNEL_LOG.match(message)
    return (m.group(1), m.group(2)) if m else None


def kernel_path_of(name):
    """"sm80" or "sm90" from a kernel name ("sm80_fwd_bf16_hdim128_...", "sm90_bwd_..."), else None."""
    if not name:
        return None
    head = name.split("_", 1)[0]
    return head if re.fullmatch(r"sm\d+", head) else None


def tflops(flops, ms):
    return None if ms is None or ms <= 0 else flops / ms / 1e9


class Timer:
    """triton.testing.do_bench (median, L2 flushed before every call) with one warm-up and measuring time, in ms."""

    def __init__(self, warmup, rep):
        self.warmup, self.rep = warmup, rep

    def __call__(self, fn):
        from triton.testing import do_bench
        return do_bench(fn, warmup=self.warmup, rep=self.rep, return_mode="median")


def describe(t, dtype_code):
    """An fa_tensor_t for a torch tensor (element strides, as the ABI wants)."""
    d = FaTensor()
    d.data = t.data_ptr()
    d.dtype = dtype_code
    d.rank = t.dim()
    for i in range(t.dim()):
        d.shape[i] = t.shape[i]
        d.strides[i] = t.stride(i)
    return d


def dtype_code(name):
    """fa_dtype_t of a row's dtype ("bf16", "fp16" or "e4m3")."""
    if name == "e4m3":
        return fa_abi.FA_DTYPE_FLOAT8_E4M3
    return FA_DTYPE_BFLOAT16 if name == "bf16" else FA_DTYPE_FLOAT16


def int32_ptr(address):
    """A const int32_t* field value from an address (a device pointer from torch's data_ptr())."""
    return ctypes.cast(address, ctypes.POINTER(ctypes.c_int32))


def current_stream():
    """torch's current CUDA stream as the void* the ABI takes."""
    import torch
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


def set_varlen(p, cu, cu_host, max_len):
    """The variable-length fields of a forward or backward params struct (same names in both): cu is the device
    int32 prefix sum of the lengths, cu_host the same values as a list."""
    host_q = (ctypes.c_int32 * len(cu_host))(*cu_host)
    host_k = (ctypes.c_int32 * len(cu_host))(*cu_host)
    p.cu_seqlens_q = int32_ptr(cu.data_ptr())
    p.cu_seqlens_k = int32_ptr(cu.data_ptr())
    p.cu_seqlens_q_host = ctypes.cast(host_q, ctypes.POINTER(ctypes.c_int32))
    p.cu_seqlens_k_host = ctypes.cast(host_k, ctypes.POINTER(ctypes.c_int32))
    p.varlen_batch = len(cu_host) - 1
    p.max_seqlen_q = max_len
    p.max_seqlen_k = max_len
    p._keep = (host_q, host_k)  # the host copies must outlive every call


def set_dropout(p, dropout):
    """The dropout fields (C ABI 0.9) of a forward or backward struct: dropout = (p, seed, offset[, keep mask]) with
    host seed and offset, or None (no dropout)."""
    if dropout is None:
        return
    p.dropout_p, p.dropout_seed, p.dropout_offset = float(dropout[0]), int(dropout[1]), int(dropout[2])
    if len(dropout) > 3 and dropout[3] is not None:
        p.dropout_mask = describe(dropout[3], fa_abi.FA_DTYPE_UINT8)


class FaLib:
    """One loaded libflash_attention: its own ctypes.CDLL (RTLD_LOCAL, so two builds loaded side by side each
    resolve their own symbols) with fa_abi's prototypes bound, and a context once open() is called."""

    def __init__(self, path, name="library"):
        self.path = path
        self.name = name
        self.lib = ctypes.CDLL(path)
        self.missing = fa_abi.bind(self.lib)
        lacking = [n for n in FORWARD_EXPORTS if n in self.missing]
        if lacking:
            raise RuntimeError(f"{path} does not export {', '.join(lacking)}")
        # A library before ABI 0.3 has no backward; its backward rows get an error.
        self.has_backward = not any(n in self.missing for n in BACKWARD_EXPORTS)
        self.ctx = None

    def version(self):
        return self.lib.fa_version()

    def serves(self, pass_, dtype, head_dim, causal, compute_capability):
        """fa_query_support's answer: whether this build serves the kind of call on a GPU of that compute capability
        (major * 10 + minor). A library without the function (before 0.4) answers no."""
        fn = getattr(self.lib, "fa_query_support", None)
        if fn is None:
            return False
        q = fa_abi.FaSupportQuery()
        q.struct_size = ctypes.sizeof(q)
        setattr(q, "pass", pass_)
        q.compute_capability = compute_capability
        q.dtype, q.head_dim, q.causal = dtype, head_dim, int(causal)
        q.kernel_path = fa_abi.FA_PATH_AUTO
        return fn(ctypes.byref(q)) == 0

    def error_text(self, status):
        """"FA_STATUS_...: message" for a failed call (the message of the last failed call on this thread)."""
        name = self.lib.fa_status_string(status).decode()
        msg = self.lib.fa_last_error_message().decode(errors="replace")
        return f"{name}: {msg}"

    def check(self, status, what):
        if status != 0:
            raise RuntimeError(f"{what}: {self.error_text(status)}")

    def open(self, device=0):
        """Creates the context every call of this library uses."""
        ctx = ctypes.c_void_p()
        self.check(self.lib.fa_context_create(device, ctypes.byref(ctx)), "fa_context_create")
        self.ctx = ctx
        return self

    def close(self):
        if self.ctx is not None:
            self.lib.fa_context_destroy(self.ctx)
            self.ctx = None

    # ---- forward ---------------------------------------------------------------------------------------------

    def launched_kernels(self, call, entry="fa_forward"):
        """Runs call() once with a log callback on this library and returns the names of the kernels its `entry`
        calls reported launching (the DEBUG message "fa_forward: <kernel> for ..."), in order; None when this
        build exports no fa_set_log_callback (call() still runs). The callback is removed afterwards, so the timed
        calls build no log messages. Process-wide for this copy of the library: not for concurrent callers."""
        if "fa_set_log_callback" in self.missing:
            call()
            return None
        names = []

        def sink(level, message, user_data):
            got = kernel_from_log((message or b"").decode(errors="replace"))
            if got is not None and got[0] == entry:
                names.append(got[1])

        callback = fa_abi.fa_log_callback_t(sink)  # kept alive by this frame until the callback is removed
        self.check(self.lib.fa_set_log_callback(callback, None), "fa_set_log_callback")
        try:
            call()
        finally:
            self.lib.fa_set_log_callback(fa_abi.fa_log_callback_t(), None)  # NULL: logging off
        return names

    def forward_params(self, code, q, k, v, out, causal, lse=None, varlen=None, path=FA_PATH_AUTO, out_code=None,
                       descales=None, sinks=None, alibi_slopes=None, dropout=None):
        """fa_forward_params_t over our [B, S, H, D] (varlen: packed [total, H, D]) tensors, PyTorch's causal
        convention; lse (fp32) when the log-sum-exp is wanted; varlen = (cu, cu_host, max_len); path an
        fa_kernel_path_t (FA_PATH_SM80 forces the portable mma.sync kernels). fp8: code FA_DTYPE_FLOAT8_E4M3,
        out_code the output's dtype (bf16), descales (q_descale, k_descale, v_descale) fp32 tensors (None: 1). sinks:
        the learnable sinks, an fp32 [H] tensor (C ABI 0.7), or None. alibi_slopes: fp32 [H] or [B, H] (C ABI 0.8),
        or None. dropout: (p, seed, offset, keep mask uint8 [B, H, Sq, Sk] or None) (C ABI 0.9), or None."""
        p = FaForwardParams()
        self.check(self.lib.fa_forward_params_init(ctypes.byref(p), ctypes.sizeof(p)), "fa_forward_params_init")
        p.q, p.k, p.v = (describe(t, code) for t in (q, k, v))
        p.out = describe(out, code if out_code is None else out_code)
        if descales is not None:
            p.q_descale, p.k_descale, p.v_descale = (FaTensor() if t is None else describe(t, FA_DTYPE_FLOAT32)
                                                     for t in descales)
        p.causal = int(causal)
        p.causal_alignment = FA_CAUSAL_TOP_LEFT  # PyTorch's is_causal; equal to bottom-right when sq == sk
        p.kernel_path = path
        if lse is not None:
            p.lse = describe(lse, FA_DTYPE_FLOAT32)
        if varlen:
            set_varlen(p, *varlen)
        if sinks is not None:
            p.sinks = describe(sinks, FA_DTYPE_FLOAT32)
        if alibi_slopes is not None:
            p.alibi_slopes = describe(alibi_slopes, FA_DTYPE_FLOAT32)
        set_dropout(p, dropout)
        return p

    def forward_call(self, p):
        """A no-argument function that runs fa_forward(p) on torch's current stream (what do_bench times)."""
        pp = ctypes.byref(p)
        fn, ctx = self.lib.fa_forward, self.ctx

        def ours():
            st = fn(ctx, pp, current_stream())
            if st != 0:
                self.check(st, "fa_forward")
        return ours

    # ---- backward --------------------------------------------------------------------------------------------

    def backward_params(self, code, tensors, lse, causal, deterministic, varlen=None, path=FA_PATH_AUTO, sinks=None,
                        dsinks=None, alibi_slopes=None, dropout=None):
        """fa_backward_params_t over tensors = (q, k, v, out, dout, dq, dk, dv), with a caller workspace of the size
        fa_backward_workspace_size asks for (a torch allocation kept on the struct, so no allocation is timed); sinks
        and dsinks (fp32 [H], C ABI 0.7) and the ALiBi slopes (fp32 [H] or [B, H], C ABI 0.8) when given; dropout as
        forward_params' (its mask ignored: the backward regenerates it)."""
        import torch
        if not self.has_backward:
            raise RuntimeError("the library exports no fa_backward (C ABI before 0.3)")
        p = FaBackwardParams()
        self.check(self.lib.fa_backward_params_init(ctypes.byref(p), ctypes.sizeof(p)), "fa_backward_params_init")
        p.q, p.k, p.v, p.out, p.dout, p.dq, p.dk, p.dv = (describe(t, code) for t in tensors)
        p.lse = describe(lse, FA_DTYPE_FLOAT32)
        p.causal = int(causal)
        p.causal_alignment = FA_CAUSAL_TOP_LEFT  # PyTorch's is_causal
        p.deterministic = int(deterministic)
        p.kernel_path = path
        if varlen:
            set_varlen(p, *varlen)
        if sinks is not None:
            p.sinks = describe(sinks, FA_DTYPE_FLOAT32)
        if dsinks is not None:
            p.dsinks = describe(dsinks, FA_DTYPE_FLOAT32)
        if alibi_slopes is not None:
            p.alibi_slopes = describe(alibi_slopes, FA_DTYPE_FLOAT32)
        set_dropout(p, None if dropout is None else dropout[:3])
        n = ctypes.c_size_t(0)
        self.check(self.lib.fa_backward_workspace_size(self.ctx, ctypes.byref(p), ctypes.byref(n)),
                   "fa_backward_workspace_size")
        ws = torch.empty(max(n.value, 1), dtype=torch.uint8, device=tensors[0].device)  # aligned to 512 bytes
        p.workspace = ws.data_ptr()
        p.workspace_size = n.value
        p._ws = ws
        return p

    def backward_call(self, p):
        """A no-argument function that runs fa_backward(p) on torch's current stream."""
        pp = ctypes.byref(p)
        fn, ctx = self.lib.fa_backward, self.ctx

        def ours():
            st = fn(ctx, pp, current_stream())
            if st != 0:
                self.check(st, "fa_backward")
        return ours


def time_baseline(row, flops, base, make_call, bench):
    """--baseline-lib: runs the baseline build's call once (surfacing its errors), then times it into
    ours_base_ms / ours_base_tflops. A failure goes to errors["base"]; it does not fail the run."""
    import torch
    try:
        call = make_call(base)
        call()
        torch.cuda.synchronize()
        row["ours_base_ms"] = bench(call)
        row["ours_base_tflops"] = tflops(flops, row["ours_base_ms"])
    except Exception as e:  # noqa: BLE001 - recorded on the row
        row["errors"]["base"] = first_line(e, 300)


def run_traced(call, clear, warmups):
    """A trace build's measured call (bench/fwd_trace.py, bench/bwd_trace.py): `warmups` untraced calls, the trace
    array zeroed by `clear` (a fa_debug_*_trace_clear export: 0 on success), then one call, synchronized, whose
    stamps alone the array then holds."""
    import torch
    for _ in range(warmups):
        call()
    torch.cuda.synchronize()
    got = clear()
    if got != 0:
        raise RuntimeError(f"{getattr(clear, '__name__', 'trace clear')} failed: {got}")
    call()
    torch.cuda.synchronize()
