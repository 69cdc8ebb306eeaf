"""The benchmark's rows without a GPU: the shape grid, FLOP counts, and the record rows with every figure null
(TARGETS.md's fields, then ours). Pure Python, so the dry run and the table need neither torch nor the library."""
import random

import fa_abi
from common import INTEROP_TARGET_US

VARLEN_SEED = 2026
VARLEN_COUNT, VARLEN_MIN, VARLEN_MAX = 16, 256, 2048

# The dtypes each pass times by default: the forward grid (with its GQA and varlen rows) in bf16 and fp16, the
# backward in bf16.
FWD_DTYPES = ("bf16", "fp16")
BWD_DTYPES = ("bf16",)
# The fp8 forward's dtype (TARGETS.md aim 2): its grid rows (no GQA or varlen row) are measured where the C ABI mirror
# has FA_DTYPE_FLOAT8_E4M3 (0.5 on); with an older mirror the group is declared and skipped: no rows (no figure is
# faked), an entry in the record's skipped_groups and a line under the table.
FP8_FWD_DTYPES = ("e4m3",)
MATMUL_N = 8192  # the ceilings: one n x n x n matmul per dtype


def skip_reason(dtype):
    """Why a forward dtype is skipped (None: it is measured): e4m3 when the C ABI mirror has no fp8 dtype."""
    if dtype in FWD_DTYPES:
        return None
    if hasattr(fa_abi, "FA_DTYPE_FLOAT8_E4M3"):
        return None
    return (f"declared, not measured: the C ABI ({fa_abi.FA_VERSION_MAJOR}.{fa_abi.FA_VERSION_MINOR}) has no "
            f"fp8 dtype, so there is no {dtype} forward of ours to time")


def varlen_lengths(seed=VARLEN_SEED, count=VARLEN_COUNT, lo=VARLEN_MIN, hi=VARLEN_MAX):
    """The varlen row's sequence lengths: fixed seed, so every run (and the managed exe) sees the same batch."""
    rng = random.Random(seed)
    return [rng.randint(lo, hi) for _ in range(count)]


def parse_rows(text):
    """Rows written BxHxSxD[c],... (q and k/v heads H, or BxH/HKVxSxD for HKV k/v heads (GQA); Sq = Sk = S; c appended:
    causal), as bench/ab.py --rows and bench/bwd_trace.py --rows take them: [(b, h, hkv, s, d, causal)]."""
    rows = []
    for spec in (x.strip() for x in text.split(",") if x.strip()):
        causal = spec.endswith("c")
        b, heads, s, d = (spec[:-1] if causal else spec).split("x")
        h, _, hkv = heads.partition("/")
        h, hkv = int(h), int(hkv or h)
        if hkv <= 0 or h % hkv:
            raise ValueError(f"row {spec}: q heads {h} are not a multiple of k/v heads {hkv}")
        rows.append((int(b), h, hkv, int(s), int(d), causal))
    return rows


def fwd_row(d, causal, b, h, hkv, s, pass_="fwd", dtype="bf16"):
    return dict(pass_=pass_, dtype=dtype, d=d, causal=causal, b=b, h=h, hkv=hkv, sq=s, sk=s)


def shapes_grid(quick=False, pass_="fwd", dtypes=None, head_dims=(64, 128, 256)):
    """TARGETS.md's grid, then the GQA row and the varlen row, once per dtype (default: FWD_DTYPES for the forward
    pass, BWD_DTYPES for the backward), for the forward ("fwd") or backward ("bwd") pass. e4m3 makes the grid only
    (TARGETS.md's fp8 rows), and only where it is measured (see skip_reason). head_dims: the grid's head dims
    (TARGETS.md's 64, 128, 256; others, e.g. 96 or 192, get the same rows)."""
    if dtypes is None:
        dtypes = FWD_DTYPES if pass_ == "fwd" else BWD_DTYPES
    rows = []
    for dtype in dtypes:
        if skip_reason(dtype) is not None:
            continue
        for d in head_dims:
            for causal in (0, 1):
                for s in (1024, 4096, 16384):
                    if quick and s > 4096:
                        continue
                    h = 2048 // d
                    rows.append(fwd_row(d, causal, 16384 // s, h, h, s, pass_, dtype))
        if dtype in FP8_FWD_DTYPES:
            continue
        rows.append(fwd_row(128, 1, 4, 32, 8, 4096, pass_, dtype))  # GQA: 32 q heads over 8 kv heads
        lens = varlen_lengths()
        rows.append(dict(pass_=pass_, dtype=dtype, d=128, causal=1, b=len(lens), h=16, hkv=16, sq=max(lens),
                         sk=max(lens), varlen=1, lens=lens))
    return rows


def fwd_flops(shape):
    """4·B·H·Sq·Sk·D, halved when causal and Sq = Sk (as TARGETS.md counts); varlen: the sum of that over
    the sequences (each with B = 1 and its own Sq = Sk)."""
    if shape.get("varlen"):
        f = 0.0
        for n in shape["lens"]:
            f += 4.0 * shape["h"] * n * n * shape["d"] / (2 if shape["causal"] else 1)
        return f
    f = 4.0 * shape["b"] * shape["h"] * shape["sq"] * shape["sk"] * shape["d"]
    if shape["causal"] and shape["sq"] == shape["sk"]:
        f /= 2
    return f


def pass_flops(shape):
    """FLOPs of a row's pass: the forward's, or 2.5x that for the backward (as TARGETS.md counts)."""
    return fwd_flops(shape) * (2.5 if shape["pass_"] == "bwd" else 1.0)


def shape_key(s):
    """Identity of a shape; tolerant of a managed line that leaves out hkv or writes causal as a bool."""
    h = int(s["h"])
    if s.get("varlen") or s.get("kind") == "varlen":
        return ("varlen", str(s.get("dtype", "bf16")), int(s["d"]), int(bool(s["causal"])), h, int(s.get("hkv", h)),
                tuple(int(n) for n in s["lens"]))
    return (str(s["dtype"]), int(s["d"]), int(bool(s["causal"])), int(s["b"]), h,
            int(s.get("hkv", h)), int(s["sq"]), int(s["sk"]))


def managed_spec(s):
    """The shape object the managed exe takes (bench/README.md)."""
    if s.get("varlen"):
        return dict(kind="varlen", dtype=s["dtype"], d=s["d"], causal=s["causal"], h=s["h"], hkv=s["hkv"], lens=s["lens"])
    return dict(dtype=s["dtype"], d=s["d"], causal=s["causal"], b=s["b"], h=s["h"], hkv=s["hkv"], sq=s["sq"], sk=s["sk"])


def new_row(s, baseline=False):
    """A record row for shape s with every figure null (TARGETS.md's fields, then ours); baseline: the
    --baseline-lib fields too (forward and backward rows)."""
    row = {"pass": s["pass_"], "dtype": s["dtype"], "d": s["d"], "causal": int(bool(s["causal"])), "b": s["b"], "h": s["h"],
           "hkv": s["hkv"], "sq": s["sq"], "sk": s["sk"], "paged_block": None,
           "ours_ms": None, "flash_ms": None, "cudnn_ms": None, "ours_tflops": None, "flash_tflops": None,
           "cudnn_tflops": None, "ours_tbps": None, "copy_tbps": None,
           "managed_ms": None, "managed_tflops": None, "ours_rel_err": None, "note": None, "errors": {}}
    if s.get("varlen"):
        # b is the number of sequences; sq/sk the longest one; lens the lengths in packing order.
        row.update(varlen=1, lens=list(s["lens"]), total_q=sum(s["lens"]), total_k=sum(s["lens"]))
    if s["pass_"] == "fwd" and s["dtype"] in FP8_FWD_DTYPES:
        # fp8: ours is the e4m3 forward (default path, descales of 1 per (batch, kv head)); ours_bf16_* our bf16 forward
        # on the same shape and values; flash and cudnn are PyTorch SDPA in bf16 (sdpa_dtype: PyTorch has no fp8
        # attention); matmul_tflops is the e4m3 matmul ceiling. No sm80 timing: the sm80 path has no fp8 kernels.
        row.update(path=None, ours_kernel=None, ours_bf16_ms=None, ours_bf16_tflops=None, ours_bf16_rel_err=None,
                   ours_bf16_kernel=None, sdpa_dtype="bf16")
    elif s["pass_"] == "fwd":
        # The same forward forced onto the portable kernels (FA_PATH_SM80), and the kernels each of ours ran where
        # the library names them (its launch log); path: "sm80" or "sm90", from ours_kernel (TARGETS.md).
        row.update(ours_sm80_ms=None, ours_sm80_tflops=None, ours_sm80_rel_err=None, path=None, ours_kernel=None,
                   ours_sm80_kernel=None)
    if s["pass_"] in ("fwd", "bwd") and s["dtype"] not in FP8_FWD_DTYPES and not s.get("varlen"):
        # Learnable sinks (C ABI 0.7): the same call on the same path and tensors with one fp32 sink per query head;
        # sinks_ratio = ours_sinks_ms / ours_ms is their cost (issue 14's aim: at most 1.05).
        row.update(ours_sinks_ms=None, ours_sinks_tflops=None, ours_sinks_rel_err=None, sinks_ratio=None)
        if s["pass_"] == "fwd":
            row.update(ours_sinks_kernel=None)
        # ALiBi (C ABI 0.8): the same call with ALiBi's standard slopes (2^(-8 (h + 1) / H)); alibi_ratio =
        # ours_alibi_ms / ours_ms is its cost (issue 14's aim: at most 1.05).
        row.update(ours_alibi_ms=None, ours_alibi_tflops=None, ours_alibi_rel_err=None, alibi_ratio=None)
        if s["pass_"] == "fwd":
            row.update(ours_alibi_kernel=None)
    if s["pass_"] == "bwd":
        # Deterministic mode's time and its cost relative to the default mode; per-gradient errors.
        row.update(ours_det_ms=None, ours_det_tflops=None, ours_sm80_ms=None, ours_sm80_tflops=None, ours_sm80_rel_err=None,
                   det_ratio=None, grad_rel_err=None, det_rel_err=None,
                   workspace_bytes=None, det_workspace_bytes=None)
    if baseline:
        row.update(ours_base_ms=None, ours_base_tflops=None)
    return row


def interop_row(managed, c, errors):
    """The extra "interop" row: host cost of one Forward call on the tiny shape, managed (ours_us) and from C (c_us)."""
    m_us = managed.get("call_us") if managed else None
    c_us = c.get("call_us") if c else None
    diff = m_us - c_us if m_us is not None and c_us is not None else None
    row = {"pass": "interop", "dtype": "bf16", "d": 64, "causal": 0, "b": 1, "h": 1, "hkv": 1, "sq": 128, "sk": 128,
           "paged_block": None, "ours_ms": None, "flash_ms": None, "cudnn_ms": None, "ours_tflops": None,
           "flash_tflops": None, "cudnn_tflops": None, "ours_tbps": None, "copy_tbps": None,
           "ours_us": m_us, "c_us": c_us, "diff_us": diff,
           "ours_min_us": managed.get("min_call_us") if managed else None,
           "c_min_us": c.get("min_call_us") if c else None,
           "target_diff_us": INTEROP_TARGET_US,
           "within_target": None if diff is None else bool(diff <= INTEROP_TARGET_US)}
    if errors:
        row["errors"] = dict(errors)
    return row


def matmul_row(dtype, n=MATMUL_N):
    """A ceiling row (pass "matmul"): one n x n x n matrix multiply on this card in the same run, bf16 through
    torch.matmul (cuBLAS) or e4m3 through torch._scaled_mm (unit scales, bf16 output); figures null until measured
    (matmul_ms, matmul_tflops = 2 n^3 / time); a failure goes to errors and leaves them null."""
    fp8 = dtype == "e4m3"
    row = {"pass": "matmul", "dtype": dtype, "m": n, "n": n, "k": n, "out_dtype": "bf16",
           "op": "torch._scaled_mm" if fp8 else "torch.matmul",
           "matmul_ms": None, "matmul_tflops": None,
           # TARGETS.md's row fields, which do not apply to a matmul.
           "d": None, "causal": None, "b": None, "h": None, "hkv": None, "sq": None, "sk": None, "paged_block": None,
           "ours_ms": None, "flash_ms": None, "cudnn_ms": None, "ours_tflops": None, "flash_tflops": None,
           "cudnn_tflops": None, "ours_tbps": None, "copy_tbps": None}
    if fp8:
        row.update(scale_a=1.0, scale_b=1.0, use_fast_accum=False)
    return row


def matmul_flops(row):
    return 2.0 * row["m"] * row["n"] * row["k"]
