"""The backward rows (pass "bwd"): each times only the backward kernels. PyTorch: one SDPA forward with
requires_grad, then torch.autograd.grad(out, (q, k, v), dO, retain_graph=True) (flash and cuDNN backends; varlen:
aten._flash_attention_backward after aten._flash_attention_forward). Ours: fa_backward with O and the log-sum-exp
from our own fa_forward and a caller workspace, in the default (atomic dq) mode, in deterministic mode and on the
portable sm80 kernels, each checked against PyTorch's gradients; fixed-length rows also with learnable sinks and
their gradient on the default path (ours_sinks_*, sinks_ratio) and with ALiBi (ours_alibi_*, alibi_ratio); with
--baseline-lib, the baseline build's default
mode on the same tensors. Needs torch and a GPU (run.py imports this module only when it runs the pass)."""
import ctypes
import json
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import MAX_BWD_REL_ERR, current_stream, dtype_code, finish_row, first_line, tflops, time_baseline
from fa_abi import FA_PATH_AUTO, FA_PATH_SM80
from inputs import sdpa_inputs, varlen_inputs
from shapes import new_row, pass_flops

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
NO_BACKWARD = "the library exports no fa_backward (C ABI before 0.3)"

# Our three timings: (deterministic, kernel path, row key of the times, row key of the worst error).
OUR_MODES = ((False, FA_PATH_AUTO, "ours", "ours_rel_err"),
             (True, FA_PATH_AUTO, "ours_det", "det_rel_err"),
             (False, FA_PATH_SM80, "ours_sm80", "ours_sm80_rel_err"))


def grad_errors(grads, ref):
    """Relative Frobenius error of each of our gradients (poisoned before the call) against ref, same layouts."""
    errs = {}
    for name, a, r in zip(("dq", "dk", "dv"), grads, ref):
        r = r.float()
        den = float(r.norm())
        num = float((a.float() - r).norm())
        e = num / den if den > 0 else num
        if math.isnan(e) or math.isinf(e):
            raise RuntimeError(f"our {name} holds NaN/Inf (the poison was not overwritten everywhere?)")
        errs[name] = e
    return errs


def our_forward_for_bwd(fa, code, q2, k2, v2, causal, lse, varlen=None, dropout=None):
    """Our forward, for the O and log-sum-exp the backward reads; varlen = (cu, cu_host, max_len); dropout as
    FaLib.forward_params'."""
    o2 = torch.full_like(q2, float("nan"))
    p = fa.forward_params(code, q2, k2, v2, o2, causal, lse=lse, varlen=varlen, dropout=dropout)
    fa.check(fa.lib.fa_forward(fa.ctx, ctypes.byref(p), current_stream()), "fa_forward (for the backward)")
    return o2


def run_ours_bwd(row, flops, fa, bench, code, tensors, lse, causal, ref, against, varlen=None):
    """Times our backward in the default and the deterministic mode, then the default mode on the portable sm80
    kernels alone (FA_PATH_SM80; on an H100 the default picks the sm90 kernels where they serve); gradients are
    checked against ref first."""
    grads = tensors[5:]
    for det, path, key, err_key in OUR_MODES:
        p = fa.backward_params(code, tensors, lse, causal, det, varlen, path)
        row["det_workspace_bytes" if det else "workspace_bytes"] = int(p.workspace_size)
        ours = fa.backward_call(p)
        for t in grads:
            t.fill_(float("nan"))
        ours()
        torch.cuda.synchronize()
        if ref is not None:
            errs = grad_errors(grads, ref)
            worst = max(errs.values())
            row[err_key] = worst
            if key == "ours":
                row["grad_rel_err"] = errs
            if worst > MAX_BWD_REL_ERR:
                row["errors"]["mismatch"] = (f"{key}: gradient relative errors "
                                             f"{', '.join(f'{k} {v:.2e}' for k, v in errs.items())} against {against} "
                                             f"exceed {MAX_BWD_REL_ERR}")
        ms = bench(ours)
        row[key + "_ms"] = ms
        row[key + "_tflops"] = tflops(flops, ms)
    if row["ours_ms"] and row["ours_det_ms"]:
        row["det_ratio"] = row["ours_det_ms"] / row["ours_ms"]


def run_sinks_bwd(row, flops, fa, bench, code, q, k, v, do, lse_shape, causal):
    """Our backward on the default path with learnable sinks and their gradient (ours_sinks_*; sinks_ratio =
    ours_sinks_ms / ours_ms), O and the log-sum-exp from our forward with the same sinks. Checked: dsinks against
    -sum_i e^(sink - lse_i) * rowsum(dO * O)_i computed here by torch from the same O and lse (ours_sinks_rel_err),
    dq, dk, dv finite (their values are the tests' business: the sink only changes P through the lse)."""
    h = q.shape[2]
    sinks = torch.randn(h, device=q.device, dtype=torch.float32)
    lse = torch.full(lse_shape, float("nan"), device=q.device, dtype=torch.float32)
    o = torch.full_like(q, float("nan"))
    p = fa.forward_params(code, q, k, v, o, causal, lse=lse, sinks=sinks)
    fa.check(fa.lib.fa_forward(fa.ctx, ctypes.byref(p), current_stream()), "fa_forward (with sinks, for the backward)")
    grads = tuple(torch.full_like(t, float("nan")) for t in (q, k, v))
    dsinks = torch.full((h,), float("nan"), device=q.device, dtype=torch.float32)
    pb = fa.backward_params(code, (q, k, v, o, do) + grads, lse, causal, False, sinks=sinks, dsinks=dsinks)
    ours = fa.backward_call(pb)
    ours()
    torch.cuda.synchronize()
    for name, g in zip(("dq", "dk", "dv"), grads):
        if not bool(torch.isfinite(g).all()):
            raise RuntimeError(f"our {name} with sinks holds NaN/Inf (the poison was not overwritten everywhere?)")
    dsum = (do.float() * o.float()).sum(-1).transpose(1, 2)  # [B, H, S]
    want = -(torch.exp(sinks.view(1, h, 1) - lse) * dsum).sum((0, 2))
    err = float((dsinks - want).norm() / want.norm().clamp_min(1e-30))
    row["ours_sinks_rel_err"] = err
    if not math.isfinite(err) or err > MAX_BWD_REL_ERR:
        row["errors"]["mismatch_sinks"] = f"dsinks relative error {err:.2e} against torch's formula exceeds {MAX_BWD_REL_ERR}"
    row["ours_sinks_ms"] = bench(ours)
    row["ours_sinks_tflops"] = tflops(flops, row["ours_sinks_ms"])
    if row.get("ours_ms"):
        row["sinks_ratio"] = row["ours_sinks_ms"] / row["ours_ms"]


def run_alibi_bwd(row, flops, fa, bench, code, q, k, v, do, lse_shape, causal):
    """Our backward on the default path with ALiBi (standard slopes 2^(-8 (i + 1) / H), [H]; ours_alibi_*;
    alibi_ratio = ours_alibi_ms / ours_ms), O and the log-sum-exp from our forward with the same slopes. Checked: dq,
    dk, dv finite (their values are the tests' business)."""
    h = q.shape[2]
    slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], device=q.device, dtype=torch.float32)
    lse = torch.full(lse_shape, float("nan"), device=q.device, dtype=torch.float32)
    o = torch.full_like(q, float("nan"))
    p = fa.forward_params(code, q, k, v, o, causal, lse=lse, alibi_slopes=slopes)
    fa.check(fa.lib.fa_forward(fa.ctx, ctypes.byref(p), current_stream()), "fa_forward (with ALiBi, for the backward)")
    grads = tuple(torch.full_like(t, float("nan")) for t in (q, k, v))
    pb = fa.backward_params(code, (q, k, v, o, do) + grads, lse, causal, False, alibi_slopes=slopes)
    ours = fa.backward_call(pb)
    ours()
    torch.cuda.synchronize()
    for name, g in zip(("dq", "dk", "dv"), grads):
        if not bool(torch.isfinite(g).all()):
            raise RuntimeError(f"our {name} with ALiBi holds NaN/Inf (the poison was not overwritten everywhere?)")
    row["ours_alibi_ms"] = bench(ours)
    row["ours_alibi_tflops"] = tflops(flops, row["ours_alibi_ms"])
    if row.get("ours_ms"):
        row["alibi_ratio"] = row["ours_alibi_ms"] / row["ours_ms"]


def ours_and_base(row, flops, fa, base, bench, code, q, k, v, do, lse_shape, causal, ref, against, varlen=None):
    """Our forward (O, lse), then our three backward timings on q, k, v, do in our layout, then the baseline build's
    default mode on the same tensors."""
    tensors, lse = None, None
    try:
        lse = torch.full(lse_shape, float("nan"), device=q.device, dtype=torch.float32)
        o = our_forward_for_bwd(fa, code, q, k, v, causal, lse, varlen)
        grads = tuple(torch.full_like(t, float("nan")) for t in (q, k, v))
        tensors = (q, k, v, o, do) + grads
        run_ours_bwd(row, flops, fa, bench, code, tensors, lse, causal, ref, against, varlen)
    except Exception as e:  # noqa: BLE001
        row["errors"]["ours"] = first_line(e, 300)
    if "ours_sinks_ms" in row and varlen is None:  # fixed-length rows, C ABI 0.7 on
        try:
            run_sinks_bwd(row, flops, fa, bench, code, q, k, v, do, lse_shape, causal)
        except Exception as e:  # noqa: BLE001
            row["errors"]["ours_sinks"] = first_line(e, 300)
    if "ours_alibi_ms" in row and varlen is None:  # fixed-length rows, C ABI 0.8 on
        try:
            run_alibi_bwd(row, flops, fa, bench, code, q, k, v, do, lse_shape, causal)
        except Exception as e:  # noqa: BLE001
            row["errors"]["ours_alibi"] = first_line(e, 300)
    if base is not None:
        if tensors is None:
            row["errors"]["base"] = "not timed: our forward, which makes its inputs, failed"
        else:
            time_baseline(row, flops, base,
                          lambda lib: lib.backward_call(lib.backward_params(code, tensors, lse, causal, False, varlen)),
                          bench)


def torch_bwd_call(name, be, q, k, v, do, h, hkv, causal, notes, dropout_p=0.0):
    """PyTorch's SDPA backward for one backend ([B, H, S, D] tensors): one forward with requires_grad under the
    backend (with dropout_p), then (f, gradients) where f() runs torch.autograd.grad(out, (q, k, v), dO,
    retain_graph=True) and gradients(f()) gives (dq, dk, dv) with dk and dv at hkv heads."""
    ql, kl, vl = (t.detach().requires_grad_() for t in (q, k, v))
    expanded = False
    with sdpa_kernel([be]):
        try:
            o = F.scaled_dot_product_attention(ql, kl, vl, is_causal=causal, enable_gqa=(h != hkv),
                                               dropout_p=dropout_p)
        except RuntimeError:
            if h == hkv:
                raise
            # This backend refuses enable_gqa: expanded k/v as leaves, so only the attention backward is timed.
            kl, vl = (t.detach().repeat_interleave(h // hkv, dim=1).requires_grad_() for t in (k, v))
            o = F.scaled_dot_product_attention(ql, kl, vl, is_causal=causal, dropout_p=dropout_p)
            expanded = True
            notes.append(f"{name}: enable_gqa refused, k/v expanded to {h} heads")
    inputs = (ql, kl, vl)

    def f():
        return torch.autograd.grad(o, inputs, do, retain_graph=True)

    def gradients(g):
        gq, gk, gv = g
        if expanded:
            b_, _, s_, d_ = gk.shape
            gk, gv = (x.view(b_, hkv, h // hkv, s_, d_).sum(2) for x in (gk, gv))
        return gq, gk, gv
    return f, gradients


def torch_bwd(name, be, q, k, v, do, h, hkv, causal, notes, bench):
    """Times PyTorch's SDPA backward alone for one backend (torch_bwd_call) under do_bench. Returns (ms, (dq, dk,
    dv)), dk and dv at hkv heads."""
    f, gradients = torch_bwd_call(name, be, q, k, v, do, h, hkv, causal, notes)
    g = f()
    return bench(f), gradients(g)


def fixed_bwd_row(s, row, flops, fa, base, bench):
    b, h, hkv, sq = s["b"], s["h"], s["hkv"], s["sq"]
    causal = bool(s["causal"])
    code = dtype_code(s["dtype"])
    q, k, v = sdpa_inputs(s)
    do = torch.randn_like(q)
    ref, against, notes = None, None, []
    for name, be in BACKENDS.items():
        try:
            ms, g = torch_bwd(name, be, q, k, v, do, h, hkv, causal, notes, bench)
            row[f"{name}_ms"] = ms
            row[f"{name}_tflops"] = tflops(flops, ms)
            if ref is None:
                ref, against = tuple(t.transpose(1, 2) for t in g), f"the {name} backend's gradients"
        except Exception as e:  # noqa: BLE001
            row["errors"][name] = first_line(e, 200)
    if notes:
        row["note"] = "; ".join(notes)
    if not fa.has_backward:
        row["errors"]["ours"] = NO_BACKWARD
        return
    q2, k2, v2, do2 = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
    del q, k, v, do
    ours_and_base(row, flops, fa, base, bench, code, q2, k2, v2, do2, (b, h, sq), causal, ref, against)


def varlen_bwd_row(s, row, flops, fa, base, bench):
    x = varlen_inputs(s, with_dout=True)
    lens, h, hkv, causal, code = x["lens"], x["h"], x["hkv"], x["causal"], x["code"]
    total, max_len, cu_host, cu, q, k, v, do = (x[n] for n in ("total", "max_len", "cu_host", "cu", "q", "k", "v", "do"))
    ref, against, notes = None, None, []
    # PyTorch's flash varlen entry points (private; their signatures are checked before use).
    try:
        fwd = torch.ops.aten._flash_attention_forward
        bwd = torch.ops.aten._flash_attention_backward
        want_f = ["query", "key", "value", "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p", "is_causal",
                  "return_debug_mask"]
        want_b = ["grad_out", "query", "key", "value", "out", "logsumexp", "cum_seq_q", "cum_seq_k", "max_q", "max_k",
                  "dropout_p", "is_causal"]
        names_f = [a.name for a in fwd.default._schema.arguments]
        names_b = [a.name for a in bwd.default._schema.arguments]
        if names_f[:len(want_f)] != want_f or names_b[:len(want_b)] != want_b or len(names_b) < len(want_b) + 2:
            raise RuntimeError(f"unexpected signatures {names_f} / {names_b}")
        res = fwd(q, k, v, cu, cu, max_len, max_len, 0.0, causal, False)
        o_t, lse_t, rng1, rng2 = res[0], res[1], res[2], res[3]
        f = lambda: bwd(do, q, k, v, o_t, lse_t, cu, cu, max_len, max_len, 0.0, causal, rng1, rng2)  # noqa: E731
        ref = tuple(f()[:3])
        against = "aten._flash_attention_backward (varlen)"
        row["flash_ms"] = bench(f)
        row["flash_tflops"] = tflops(flops, row["flash_ms"])
    except Exception as e:  # noqa: BLE001
        notes.append("flash_ms null: aten._flash_attention_forward/_backward with cum_seq_q/cum_seq_k not usable here ("
                     + first_line(e, 160) + ")")
        ref = None
    notes.append("cudnn_ms null: no varlen entry point timed for cuDNN")
    if ref is None:
        # Reference: per-sequence SDPA with autograd (any backend), [1, H, L, D] per sequence.
        try:
            parts = ([], [], [])
            for i in range(len(lens)):
                a, e = cu_host[i], cu_host[i + 1]
                qs, ks, vs = (t[a:e].transpose(0, 1).unsqueeze(0).detach().requires_grad_() for t in (q, k, v))
                o1 = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, enable_gqa=(h != hkv))
                g = torch.autograd.grad(o1, (qs, ks, vs), do[a:e].transpose(0, 1).unsqueeze(0))
                for j in range(3):
                    parts[j].append(g[j][0].transpose(0, 1))
            ref = tuple(torch.cat(part, 0) for part in parts)
            against = "a per-sequence SDPA autograd loop"
        except Exception as e:  # noqa: BLE001
            row["errors"]["reference"] = "per-sequence SDPA autograd loop failed: " + first_line(e, 200)
    row["note"] = "; ".join(notes)
    if not fa.has_backward:
        row["errors"]["ours"] = NO_BACKWARD
        return
    ours_and_base(row, flops, fa, base, bench, code, q, k, v, do, (h, total), causal, ref, against,
                  (cu, cu_host, max_len))


def backward_rows(shapes, fa, base, bench):
    """Every backward row, printed as it completes: (rows, whether our kernel failed or mismatched on any)."""
    rows, failed = [], False
    for s in shapes:
        torch.manual_seed(0)
        row = new_row(s, baseline=base is not None)
        flops = pass_flops(s)
        (varlen_bwd_row if s.get("varlen") else fixed_bwd_row)(s, row, flops, fa, base, bench)
        failed = finish_row(row) or failed
        rows.append(row)
        print("#", json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    return rows, failed
