"""Paged K/V in the variable-length forward (C ABI 0.11, issue 15): chunked prefill over a paged KV cache beside the
same attention without the cache, on the same GPU, in one process.

Each sequence has Sq new queries at the end of Sk keys (the keys of the queries included), held in a pool of blocks
of 256 keys drawn in a shuffled order, the queries causal bottom-right (query i sees keys 0 .. Sk - Sq + i), 32 query
and 8 KV heads, head dim 128, bf16. Triton do_bench medians, L2 flushed. Columns, each on the same values:

  ours         fa_forward over the paged K/V (block_table), FA_PATH_AUTO (the sm90 kernels on compute capability 9.0
               in a build with sm_90a code)
  sm80         the same call forced onto the sm80 kernels
  contiguous   the same call with K/V packed contiguously (no block table), FA_PATH_AUTO: what paging costs
  flash        PyTorch SDPA's flash backend on [B, H, S, D] K/V without a cache (causal_lower_right, GQA by
               enable_gqa); cudnn likewise with the cuDNN backend where it takes the call (else the row says why)

TFLOP/s count the visible work, 4 * B * Hq * D * sum_i (Sk - Sq + i + 1). Our output is checked against float32
attention on the gathered keys for the first sequence.

Run: python3 bench/paged.py --lib build/native/libflash_attention.so [--out record.json] [--quick]
Exit status 1 when a check fails.
"""
import ctypes
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import MAX_REL_ERR, cell, describe, first_line, int32_ptr, rel_err, tflops
from fa_abi import FA_CAUSAL_BOTTOM_RIGHT, FA_DTYPE_BFLOAT16, FA_DTYPE_INT32, FA_PATH_AUTO, FA_PATH_SM80
from study import study_start, write_study_record

HQ, HKV, D, BLOCK = 32, 8, 128, 256
# (batch, new queries a sequence, keys a sequence with them): chunked prefill of 512 tokens over a 32k cache, and
# a wider batch over 8k.
SHAPES = ((4, 512, 32768), (16, 512, 8192))
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def visible_flops(b, sq, sk):
    keys = sum(sk - sq + i + 1 for i in range(sq))
    return 4.0 * b * HQ * D * keys


def ours_params(fa, q, k, v, out, cu_q, cu_k, host_q, host_k, sq, sk, table, path):
    """fa_forward_params_t of the varlen call: q/out [B*Sq, HQ, D]; k/v packed [B*Sk, HKV, D] or pools
    [blocks, BLOCK, HKV, D] with table [B, Sk / BLOCK]."""
    p = fa.forward_params(FA_DTYPE_BFLOAT16, q, k, v, out, True, path=path)
    p.causal_alignment = FA_CAUSAL_BOTTOM_RIGHT
    p.cu_seqlens_q, p.cu_seqlens_k = int32_ptr(cu_q.data_ptr()), int32_ptr(cu_k.data_ptr())
    hq_arr = (ctypes.c_int32 * len(host_q))(*host_q)
    hk_arr = (ctypes.c_int32 * len(host_k))(*host_k)
    p.cu_seqlens_q_host = ctypes.cast(hq_arr, ctypes.POINTER(ctypes.c_int32))
    p.cu_seqlens_k_host = ctypes.cast(hk_arr, ctypes.POINTER(ctypes.c_int32))
    p._keep = (hq_arr, hk_arr)  # the host copies must outlive every call
    p.varlen_batch, p.max_seqlen_q, p.max_seqlen_k = len(host_q) - 1, sq, sk
    if table is not None:
        p.block_table = describe(table, FA_DTYPE_INT32)
    return p


def shape_row(fa, bench, b, sq, sk):
    flops = visible_flops(b, sq, sk)
    row = {"pass": "fwd", "case": "paged chunked prefill", "dtype": "bf16", "d": D, "causal": True, "b": b, "h": HQ,
           "hkv": HKV, "sq": sq, "sk": sk, "block_size": BLOCK, "flops": flops, "errors": {}, "notes": {}}
    dt = torch.bfloat16
    q = torch.randn(b * sq, HQ, D, device="cuda", dtype=dt)
    kc = torch.randn(b * sk, HKV, D, device="cuda", dtype=dt)  # the keys, contiguous per sequence
    vc = torch.randn(b * sk, HKV, D, device="cuda", dtype=dt)
    pages = sk // BLOCK
    blocks = b * pages + 7  # seven spare blocks, NaN
    perm = torch.randperm(blocks, device="cuda", dtype=torch.int64)[: b * pages]
    table = perm.to(torch.int32).view(b, pages).contiguous()
    kp = torch.full((blocks, BLOCK, HKV, D), float("nan"), device="cuda", dtype=dt)
    vp = torch.full((blocks, BLOCK, HKV, D), float("nan"), device="cuda", dtype=dt)
    kp[perm] = kc.view(b * pages, BLOCK, HKV, D)
    vp[perm] = vc.view(b * pages, BLOCK, HKV, D)
    host_q = [i * sq for i in range(b + 1)]
    host_k = [i * sk for i in range(b + 1)]
    cu_q = torch.tensor(host_q, device="cuda", dtype=torch.int32)
    cu_k = torch.tensor(host_k, device="cuda", dtype=torch.int32)
    out = torch.full_like(q, float("nan"))

    def timed(key, k, v, tbl, path):
        try:
            p = ours_params(fa, q, k, v, out, cu_q, cu_k, host_q, host_k, sq, sk, tbl, path)
            call = fa.forward_call(p)
            ran = fa.launched_kernels(call)
            row[f"{key}_kernel"] = ran[-1] if ran else None
            ms = bench(call)
            row[f"{key}_ms"], row[f"{key}_tflops"] = ms, tflops(flops, ms)
        except RuntimeError as e:
            row["errors"][key] = first_line(e, 200)

    timed("ours", kp, vp, table, FA_PATH_AUTO)
    # The check: the first sequence against float32 attention over its contiguous keys (GQA by repeating K/V heads).
    qf = q[:sq].float().transpose(0, 1)
    kf = kc[:sk].float().repeat_interleave(HQ // HKV, dim=1).transpose(0, 1)
    vf = vc[:sk].float().repeat_interleave(HQ // HKV, dim=1).transpose(0, 1)
    mask = torch.ones(sq, sk, device="cuda", dtype=torch.bool).tril(diagonal=sk - sq)
    ref = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask).transpose(0, 1)
    row["ours_rel_err"] = rel_err(out[:sq], ref)
    if not row["ours_rel_err"] <= MAX_REL_ERR:
        row["errors"]["check"] = "error above the bench's bar"
    del qf, kf, vf, mask, ref
    timed("sm80", kp, vp, table, FA_PATH_SM80)
    timed("contiguous", kc, vc, None, FA_PATH_AUTO)
    # PyTorch without the cache: [B, H, S, D], bottom-right causal.
    from torch.nn.attention.bias import causal_lower_right
    qt = q.view(b, sq, HQ, D).transpose(1, 2)
    kt = kc.view(b, sk, HKV, D).transpose(1, 2)
    vt = vc.view(b, sk, HKV, D).transpose(1, 2)
    bias = causal_lower_right(sq, sk)
    for backend, which in BACKENDS.items():
        try:
            with sdpa_kernel([which]):
                fn = lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias, enable_gqa=True)  # noqa: E731
                fn()
                ms = bench(fn)
            row[f"{backend}_ms"], row[f"{backend}_tflops"] = ms, tflops(flops, ms)
            row["notes"][backend] = "causal_lower_right, enable_gqa"
        except RuntimeError as e:
            try:  # GQA by repeated K/V heads where the backend refuses enable_gqa with the bias
                ke, ve = (t.repeat_interleave(HQ // HKV, dim=1) for t in (kt, vt))
                with sdpa_kernel([which]):
                    fn = lambda: F.scaled_dot_product_attention(qt, ke, ve, attn_mask=bias)  # noqa: E731
                    fn()
                    ms = bench(fn)
                row[f"{backend}_ms"], row[f"{backend}_tflops"] = ms, tflops(flops, ms)
                row["notes"][backend] = "causal_lower_right, K/V heads repeated (" + first_line(e, 80) + ")"
                del ke, ve
            except RuntimeError as e2:
                row["errors"][backend] = first_line(e2, 200)
    del q, kc, vc, kp, vp, out
    torch.cuda.empty_cache()
    return row


def main():
    a, fa, bench, ceilings = study_start(__doc__.split("\n")[0], "the 32k row only")
    for c in ceilings:
        print(f"# matmul {c.get('dtype')}: {cell(c.get('matmul_tflops'), '.0f')} TFLOP/s", flush=True)
    cols = ("ours", "sm80", "contiguous", "flash", "cudnn")
    print(f"{'B Sq Sk':18s} | " + " ".join(f"{c:>10s}" for c in cols) + " | paged/contig | rel err", flush=True)
    rows = []
    for b, sq, sk in (SHAPES[:1] if a.quick else SHAPES):
        r = shape_row(fa, bench, b, sq, sk)
        rows.append(r)
        ratio = (r["contiguous_ms"] / r["ours_ms"]) if r.get("ours_ms") and r.get("contiguous_ms") else None
        print(f"{b:<2d} {sq:<5d} {sk:<9d} | " + " ".join(cell(r.get(f"{c}_tflops"), "10.0f") for c in cols)
              + f" | {cell(ratio, '12.3f')} | {cell(r.get('ours_rel_err'), '.1e')} {r.get('ours_kernel') or ''}"
              + (f"  errors {r['errors']}" if r["errors"] else ""), flush=True)
    for backend in BACKENDS:
        print(f"# {backend}: " + "; ".join(sorted({r['notes'].get(backend, '-') for r in rows})), flush=True)
    write_study_record(a, ceilings + rows)
    return 0 if not any("check" in r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
