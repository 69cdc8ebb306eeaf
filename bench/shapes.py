"""The benchmark's rows without a GPU: the shape grid, FLOP counts, and the record rows with every figure null
(TARGETS.md's fields, then ours). Pure Python, so the dry run and the table need neither torch nor the library."""
import random

from common import INTEROP_TARGET_US

VARLEN_SEED = 2026
VARLEN_COUNT, VARLEN_MIN, VARLEN_MAX = 16, 256, 2048


def varlen_lengths(seed=VARLEN_SEED, count=VARLEN_COUNT, lo=VARLEN_MIN, hi=VARLEN_MAX):
    """The varlen row's sequence lengths: fixed seed, so every run (and the managed exe) sees the same batch."""
    rng = random.Random(seed)
    return [rng.randint(lo, hi) for _ in range(count)]


def fwd_row(d, causal, b, h, hkv, s, pass_="fwd"):
    return dict(pass_=pass_, dtype="bf16", d=d, causal=causal, b=b, h=h, hkv=hkv, sq=s, sk=s)


def shapes_grid(quick=False, pass_="fwd"):
    """TARGETS.md's grid, then the GQA row and the varlen row, for the forward ("fwd") or backward ("bwd") pass."""
    rows = []
    for d in (64, 128, 256):
        for causal in (0, 1):
            for s in (1024, 4096, 16384):
                if quick and s > 4096:
                    continue
                h = 2048 // d
                rows.append(fwd_row(d, causal, 16384 // s, h, h, s, pass_))
    rows.append(fwd_row(128, 1, 4, 32, 8, 4096, pass_))  # GQA: 32 q heads over 8 kv heads
    lens = varlen_lengths()
    rows.append(dict(pass_=pass_, dtype="bf16", d=128, causal=1, b=len(lens), h=16, hkv=16, sq=max(lens), sk=max(lens),
                     varlen=1, lens=lens))
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
