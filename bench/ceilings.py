"""The ceilings measured in the same run as the attention rows (TARGETS.md's goals are fractions of them): one
8192 x 8192 x 8192 matrix multiply in bf16 (torch.matmul, cuBLAS) and in fp8 e4m3 (torch._scaled_mm with unit
scales and a bf16 output), each timed like the rest (the Timer: do_bench median, L2 flushed before every call).

Each ceiling is a record row (pass "matmul", shapes.matmul_row). A ceiling that cannot be measured here (no
torch._scaled_mm in this PyTorch, no fp8 on this GPU, out of memory, ...) keeps null figures and the reason in its
errors; it never stops the run. torch is imported when a ceiling is measured, not at import.
"""
from common import first_line, tflops
from shapes import matmul_flops, matmul_row

CEILING_DTYPES = ("bf16", "e4m3")


def bf16_matmul(n):
    """A no-argument bf16 n x n x n matmul (random normal inputs)."""
    import torch
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return lambda: a @ b


def fp8_matmul(n):
    """A no-argument e4m3 n x n x n torch._scaled_mm (row-major a, column-major b as cuBLAS's fp8 kernels want;
    float32 unit scales; bf16 output), run once and checked for shape and dtype."""
    import torch
    if not hasattr(torch, "float8_e4m3fn"):
        raise RuntimeError(f"torch {torch.__version__} has no torch.float8_e4m3fn")
    scaled_mm = getattr(torch, "_scaled_mm", None)
    if scaled_mm is None:
        raise RuntimeError(f"torch._scaled_mm is not available in torch {torch.__version__}")
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16).to(torch.float8_e4m3fn).t()  # column-major
    one = torch.ones((), device="cuda", dtype=torch.float32)

    def f():
        out = scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=False)
        return out[0] if isinstance(out, tuple) else out  # PyTorch before 2.4 returned (out, amax)

    out = f()
    if tuple(out.shape) != (n, n) or out.dtype != torch.bfloat16:
        raise RuntimeError(f"torch._scaled_mm returned {tuple(out.shape)} {out.dtype}, not ({n}, {n}) bfloat16")
    del out
    return f


MAKERS = {"bf16": bf16_matmul, "e4m3": fp8_matmul}


def time_matmul(dtype, n, bench):
    """Milliseconds of one matmul of dtype (its tensors are freed on return)."""
    import torch
    fn = MAKERS[dtype](n)
    torch.cuda.synchronize()
    return bench(fn)


def measure(dtype, bench, n=None):
    """One ceiling row, measured (or with the reason it could not be in errors)."""
    row = matmul_row(dtype) if n is None else matmul_row(dtype, n)
    try:
        row["matmul_ms"] = time_matmul(dtype, row["n"], bench)
        row["matmul_tflops"] = tflops(matmul_flops(row), row["matmul_ms"])
    except Exception as e:  # noqa: BLE001 - recorded on the row; the run goes on
        row["errors"] = {"matmul": f"{type(e).__name__}: {first_line(e, 300)}"}
    try:
        import torch
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - nothing to free without torch
        pass
    return row


def ceiling_rows(bench, dtypes=CEILING_DTYPES):
    """The ceiling rows of this run, bf16 then e4m3, each printed as it completes."""
    rows = []
    for dtype in dtypes:
        row = measure(dtype, bench)
        rows.append(row)
        figure = f"{row['matmul_tflops']:.0f} TFLOP/s" if row["matmul_tflops"] else f"failed: {row['errors']['matmul']}"
        print(f"# ceiling: {dtype} matmul {row['n']}^3 ({row['op']}) {figure}", flush=True)
    return rows


def rate(rows, dtype):
    """The TFLOP/s of the ceiling row of dtype among rows, or None (absent or failed)."""
    for r in rows:
        if r.get("pass") == "matmul" and r.get("dtype") == dtype:
            return r.get("matmul_tflops")
    return None
