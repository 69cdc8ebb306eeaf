"""A V head dim other than q's (C ABI 0.10, issue 14) beside the alternatives on the same GPU, in one process.

FlashAttention-3's pairs (head_dim, head_dim_v) = (192, 128) (forward and backward) and (64, 512) (forward), bf16,
causal and not, S 1k and 4k (16k without --quick), B = 16384 / S, 16 heads. Triton do_bench medians, L2 flushed.
Columns, each timed on the same values:

  ours      the pair call with the default path (FA_PATH_AUTO: the pair's sm90 kernels without dropout on compute
            capability 9.0 in a build with sm_90a code: both forwards, (64, 512)'s in two CTAs of 256 O columns per
            row block, and (192, 128)'s backward; else the sm80 pair kernels); sm80 the same call forced onto the sm80
            pair kernels. The row names the forward and backward kernels that ran (ours_kernel, ours_bwd_kernel)
  padded    what a caller without the pair does: q, k and v zero-padded to the larger head dim, and past 256 v
            in chunks of 256 columns, one call each ((64, 512): two calls at 256); our call with the default path
            (the sm90 kernels at equal dims) and forced to sm80 (padded_sm80)
  flash     PyTorch SDPA's flash backend on the pair itself where it takes it, else on the padded call (the
            row's note says which)
  cudnn     likewise with the cuDNN backend

TFLOP/s count the pair's own work: forward 2 * B * H * Sq * Sk * (d + dv), backward 2 * B * H * Sq * Sk * (3 d + 2 dv)
(halved when causal), for every column, so a padded call's wasted columns show as a lower rate. Our outputs (and the
(192, 128) gradients) are checked against float32 attention at S 1k.

Run: python3 bench/vdim.py --lib build/native/libflash_attention.so [--out record.json] [--quick]
Exit status 1 when a check fails.
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import MAX_BWD_REL_ERR, MAX_REL_ERR, cell, rel_err, first_line, tflops
from fa_abi import FA_DTYPE_BFLOAT16, FA_PATH_AUTO, FA_PATH_SM80
from study import study_start, write_study_record

PAIRS = ((192, 128, True), (64, 512, False))  # (d, dv, has a backward)
HEADS = 16
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def pair_flops(b, h, s, d, dv, causal):
    """(forward, backward) FLOPs of the pair's own work."""
    f = 2.0 * b * h * s * s
    if causal:
        f /= 2
    return f * (d + dv), f * (3 * d + 2 * dv)


def ours(fa, bench, q2, k2, v2, causal, path, backward, scale=None):
    """Our forward (then backward from its O and LSE) on [B, S, H, *] tensors: (fwd ms, bwd ms or None, out, grads,
    dout, the forward kernel that ran, the backward main kernel that ran or None)."""
    b, s, h, _ = q2.shape
    o2 = torch.full((b, s, h, v2.shape[-1]), float("nan"), device="cuda", dtype=q2.dtype)
    lse = torch.empty(b, h, s, device="cuda", dtype=torch.float32)
    prm = fa.forward_params(FA_DTYPE_BFLOAT16, q2, k2, v2, o2, causal, lse=lse, path=path)
    if scale is not None:
        prm.softmax_scale = scale
    call = fa.forward_call(prm)
    ran = fa.launched_kernels(call)
    kernel = ran[-1] if ran else None
    fwd_ms = bench(call)
    if not backward:
        return fwd_ms, None, o2, None, None, kernel, None
    do, dq, dk, dv = (torch.randn_like(o2), torch.empty_like(q2), torch.empty_like(k2), torch.empty_like(v2))
    bprm = fa.backward_params(FA_DTYPE_BFLOAT16, (q2, k2, v2, o2, do, dq, dk, dv), lse, causal, False, path=path)
    if scale is not None:
        bprm.softmax_scale = scale
    bcall = fa.backward_call(bprm)
    ran_bwd = fa.launched_kernels(bcall, entry="fa_backward")  # (runs it once)
    bwd_kernel = ran_bwd[-1] if ran_bwd else None
    return fwd_ms, bench(bcall), o2, (dq, dk, dv), do, kernel, bwd_kernel


def sdpa(bench, backend, q, k, v, causal, backward, scale=None):
    """SDPA forward (and backward by autograd.grad over one retained graph) on [B, H, S, *]: (fwd ms, bwd ms)."""
    with sdpa_kernel([BACKENDS[backend]]):
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)  # noqa: E731
        fn()
        fwd_ms = bench(fn)
        if not backward:
            return fwd_ms, None
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, scale=scale)
        do = torch.randn_like(out)
        g = lambda: torch.autograd.grad(out, (qg, kg, vg), do, retain_graph=True)  # noqa: E731
        g()
        return fwd_ms, bench(g)


def reference(q2, k2, v2, do, causal):
    """float32 attention and (when do is given) its gradients, [B, S, H, *] in and out."""
    qf, kf, vf = (t.float().transpose(1, 2).detach().requires_grad_() for t in (q2, k2, v2))
    o = F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal)
    if do is None:
        return o.transpose(1, 2), None
    g = torch.autograd.grad(o, (qf, kf, vf), do.float().transpose(1, 2))
    return o.transpose(1, 2), [t.transpose(1, 2) for t in g]


def shape_row(fa, bench, d, dv, backward, causal, s):
    b, h = 16384 // s, HEADS
    fwd_f, bwd_f = pair_flops(b, h, s, d, dv, causal)
    row = {"pass": "fwd+bwd" if backward else "fwd", "dtype": "bf16", "d": d, "dv": dv, "causal": causal, "b": b,
           "h": h, "hkv": h, "sq": s, "sk": s, "fwd_flops": fwd_f, "bwd_flops": bwd_f, "errors": {}, "notes": {}}
    q2 = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16)
    k2 = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16)
    v2 = torch.randn(b, s, h, dv, device="cuda", dtype=torch.bfloat16)

    def record(key, fwd_ms, bwd_ms):
        row[f"{key}_ms"], row[f"{key}_tflops"] = fwd_ms, tflops(fwd_f, fwd_ms)
        if bwd_ms is not None:
            row[f"{key}_bwd_ms"], row[f"{key}_bwd_tflops"] = bwd_ms, tflops(bwd_f, bwd_ms)

    fwd_ms, bwd_ms, o2, grads, do, row["ours_kernel"], row["ours_bwd_kernel"] = ours(fa, bench, q2, k2, v2, causal,
                                                                                    FA_PATH_AUTO, backward)
    record("ours", fwd_ms, bwd_ms)
    try:
        fwd80, bwd80, *_ = ours(fa, bench, q2, k2, v2, causal, FA_PATH_SM80, backward)
        record("sm80", fwd80, bwd80)
    except RuntimeError as e:
        row["errors"]["sm80"] = first_line(e, 200)
    if s <= 1024:
        o_ref, g_ref = reference(q2, k2, v2, do, causal)
        row["ours_rel_err"] = rel_err(o2, o_ref)
        if grads is not None:
            row["ours_bwd_rel_err"] = max(rel_err(a, r) for a, r in zip(grads, g_ref))
        if row["ours_rel_err"] > MAX_REL_ERR or row.get("ours_bwd_rel_err", 0) > MAX_BWD_REL_ERR:
            row["errors"]["check"] = "error above the bench's bar"
        del o_ref, g_ref
    del o2, grads, do

    # The padded call: what a caller of a library without the pair runs. q, k and v zero-padded to one head dim
    # (zero columns add nothing to Q K^T; out's extra columns are 0), and past 256, the largest head dim most
    # libraries serve, v in chunks of 256 columns, one call per chunk with the same softmax ((64, 512): two calls at
    # head dim 256), with the pair's softmax scale (1 / sqrt(d), not the padded head dim's).
    wide = min(max(d, dv), 256)
    pad = lambda t: F.pad(t, (0, wide - t.shape[-1]))  # noqa: E731
    qp, kp = pad(q2), pad(k2)
    vps = [pad(v2[..., c:c + wide]).contiguous() for c in range(0, dv, wide)]
    pad_bwd = backward and len(vps) == 1
    for key, path in (("padded", FA_PATH_AUTO), ("padded_sm80", FA_PATH_SM80)):
        try:
            timed = [ours(fa, bench, qp, kp, vp, causal, path, pad_bwd, scale=d ** -0.5) for vp in vps]
            record(key, sum(t[0] for t in timed), timed[0][1] if pad_bwd else None)
        except RuntimeError as e:
            row["errors"][key] = first_line(e, 200)
    q, k, v = (t.transpose(1, 2) for t in (q2, k2, v2))
    for backend in BACKENDS:
        try:
            record(backend, *sdpa(bench, backend, q, k, v, causal, backward))
            row["notes"][backend] = "the pair"
        except RuntimeError as e:
            try:
                timed = [sdpa(bench, backend, qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2), causal,
                              pad_bwd, scale=d ** -0.5) for vp in vps]
                record(backend, sum(t[0] for t in timed), timed[0][1] if pad_bwd else None)
                row["notes"][backend] = (f"padded to {wide}" + (f" in {len(vps)} calls" if len(vps) > 1 else "")
                                         + " (the pair refused: " + first_line(e, 100) + ")")
            except RuntimeError as e2:
                row["errors"][backend] = first_line(e2, 200)
    del q2, k2, v2, qp, kp, vps
    torch.cuda.empty_cache()
    return row


def main():
    a, fa, bench, ceilings = study_start(__doc__.split("\n")[0], "S 1k and 4k only (the default adds 16k)")
    cols = ("ours", "sm80", "padded", "padded_sm80", "flash", "cudnn")
    print("TFLOP/s of the pair's own work; flash/cudnn on the pair or padded (notes)", flush=True)
    print(f"{'d/dv causal S':18s} | fwd: " + " ".join(f"{c:>11s}" for c in cols) + " | bwd: "
          + " ".join(f"{c:>11s}" for c in cols) + " | rel err fwd/bwd", flush=True)
    rows = []
    for d, dv, backward in PAIRS:
        for causal in (False, True):
            for s in ((1024, 4096) if a.quick else (1024, 4096, 16384)):
                r = shape_row(fa, bench, d, dv, backward, causal, s)
                rows.append(r)
                line = " ".join(cell(r.get(f"{c}_tflops"), "11.0f") for c in cols) + " | bwd: " + " ".join(
                    cell(r.get(f"{c}_bwd_tflops"), "11.0f") for c in cols)
                print(f"{d}/{dv:<4d} {int(causal):<6d} {s:<5d} | fwd: {line} | "
                      f"{cell(r.get('ours_rel_err'), '.1e')}/{cell(r.get('ours_bwd_rel_err'), '.1e')} "
                      f"{r.get('ours_kernel') or ''} {r.get('ours_bwd_kernel') or ''}"
                      + (f"  errors {r['errors']}" if r["errors"] else ""), flush=True)
    for backend in BACKENDS:
        notes = sorted({r["notes"].get(backend, "-") for r in rows})
        print(f"# {backend}: " + "; ".join(notes), flush=True)
    write_study_record(a, ceilings + rows)
    return 0 if not any("check" in r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
