"""The forward rows (pass "fwd"): for each shape, PyTorch SDPA's flash and cuDNN backends, then our fa_forward on
the same inputs (checked against the first backend's output), then, with --baseline-lib, the baseline build on
the same tensors; the managed exe's figure for the shape is merged in. Needs torch and a GPU (run.py imports this
module only when it runs the pass)."""
import json
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import MAX_REL_ERR, dtype_code, finish_row, first_line, tflops, time_baseline
from inputs import torch_dtype, varlen_inputs
from shapes import fwd_flops, new_row, shape_key

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def compare(row, out, ref, against):
    """Relative Frobenius error of our output (poisoned before the call) against ref, both [..., H, D]."""
    r = ref.float()
    diff = float((out.float() - r).norm() / r.norm())
    if math.isnan(diff) or math.isinf(diff):
        raise RuntimeError("our output holds NaN/Inf (the poison was not overwritten everywhere?)")
    row["ours_rel_err"] = diff
    if diff > MAX_REL_ERR:
        row["errors"]["mismatch"] = f"relative error {diff:.2e} against {against} exceeds {MAX_REL_ERR}"


def time_ours(row, flops, fa, base, bench, make_params, ref, against, out):
    """Runs our forward once (checked against ref), times it, then the baseline build's on the same tensors.
    make_params(lib) builds the params struct for one loaded library."""
    try:
        ours = fa.forward_call(make_params(fa))
        ours()
        torch.cuda.synchronize()
        if ref is not None:
            compare(row, out, ref, against)
        row["ours_ms"] = bench(ours)
        row["ours_tflops"] = tflops(flops, row["ours_ms"])
    except Exception as e:  # noqa: BLE001
        row["errors"]["ours"] = first_line(e, 300)
    if base is not None:
        time_baseline(row, flops, base, lambda lib: lib.forward_call(make_params(lib)), bench)


def fixed_row(s, row, flops, fa, base, bench):
    b, h, hkv, sq, sk, d = s["b"], s["h"], s["hkv"], s["sq"], s["sk"], s["d"]
    causal = bool(s["causal"])
    dt, code = torch_dtype(s["dtype"]), dtype_code(s["dtype"])
    dev = torch.device("cuda")
    # PyTorch's natural layout [B, H, S, D] for SDPA (as the anchors); ours [B, S, H, D] contiguous.
    q = torch.randn(b, h, sq, d, device=dev, dtype=dt)
    k = torch.randn(b, hkv, sk, d, device=dev, dtype=dt)
    v = torch.randn(b, hkv, sk, d, device=dev, dtype=dt)
    ref, ref_name = None, None
    notes = []
    for name, be in BACKENDS.items():
        try:
            with sdpa_kernel([be]):
                f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=(h != hkv))  # noqa: E731
                try:
                    o = f()
                except RuntimeError:
                    if h == hkv:
                        raise
                    # This backend refuses enable_gqa: give it k/v expanded to h heads (what it would read).
                    ke, ve = (t.repeat_interleave(h // hkv, dim=1) for t in (k, v))
                    f = lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=causal)  # noqa: E731
                    o = f()
                    notes.append(f"{name}: enable_gqa refused, k/v expanded to {h} heads")
                if ref is None:
                    ref, ref_name = o, f"the {name} backend"
                row[f"{name}_ms"] = bench(f)
                row[f"{name}_tflops"] = tflops(flops, row[f"{name}_ms"])
        except Exception as e:  # noqa: BLE001
            row["errors"][name] = first_line(e, 200)
    if notes:
        row["note"] = "; ".join(notes)
    q2, k2, v2 = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    o2 = torch.full_like(q2, float("nan"))
    time_ours(row, flops, fa, base, bench, lambda lib: lib.forward_params(code, q2, k2, v2, o2, causal),
              None if ref is None else ref.transpose(1, 2), ref_name, o2)


def varlen_row(s, row, flops, fa, base, bench):
    x = varlen_inputs(s)
    lens, h, hkv, causal, code = x["lens"], x["h"], x["hkv"], x["causal"], x["code"]
    max_len, cu_host, cu, q, k, v = x["max_len"], x["cu_host"], x["cu"], x["q"], x["k"], x["v"]
    ref, against = None, None
    notes = []
    # PyTorch's flash varlen entry point (private; its signature is checked before use).
    try:
        op = torch.ops.aten._flash_attention_forward
        names = [a.name for a in op.default._schema.arguments]
        want = ["query", "key", "value", "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p", "is_causal",
                "return_debug_mask"]
        if names[:len(want)] != want:
            raise RuntimeError(f"unexpected signature {names}")
        f = lambda: op(q, k, v, cu, cu, max_len, max_len, 0.0, causal, False)  # noqa: E731
        ref = f()[0]
        against = "aten._flash_attention_forward (varlen)"
        row["flash_ms"] = bench(f)
        row["flash_tflops"] = tflops(flops, row["flash_ms"])
    except Exception as e:  # noqa: BLE001
        notes.append("flash_ms null: torch.ops.aten._flash_attention_forward with cum_seq_q/cum_seq_k not usable here ("
                     + first_line(e, 160) + ")")
        ref = None
    notes.append("cudnn_ms null: no varlen entry point timed for cuDNN")
    if ref is None:
        # Reference: a per-sequence SDPA loop (any backend), [1, H, L, D] per sequence.
        try:
            parts = []
            for i in range(len(lens)):
                a, e = cu_host[i], cu_host[i + 1]
                qs, ks, vs = (t[a:e].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
                o1 = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, enable_gqa=(h != hkv))
                parts.append(o1[0].transpose(0, 1))
            ref = torch.cat(parts, 0)
            against = "a per-sequence SDPA loop"
        except Exception as e:  # noqa: BLE001
            row["errors"]["reference"] = "per-sequence SDPA loop failed: " + first_line(e, 200)
    row["note"] = "; ".join(notes)
    o = torch.full_like(q, float("nan"))
    varlen = (cu, cu_host, max_len)
    time_ours(row, flops, fa, base, bench, lambda lib: lib.forward_params(code, q, k, v, o, causal, varlen=varlen),
              ref, against, o)


def merge_managed(row, flops, managed, managed_missing):
    """The managed exe's line for the row's shape (managed_ms, or its error); managed_missing is the error for a
    shape without a line (None when no exe was run)."""
    m = managed.get(shape_key(row))
    if m is not None:
        if m.get("ours_ms") is not None:
            row["managed_ms"] = m["ours_ms"]
            row["managed_tflops"] = tflops(flops, m["ours_ms"])
        if m.get("error"):
            row["errors"]["managed"] = str(m["error"])[:300]
    elif managed_missing:
        row["errors"]["managed"] = managed_missing


def forward_rows(shapes, fa, base, bench, managed, managed_missing):
    """Every forward row, printed as it completes: (rows, whether our kernel failed or mismatched on any)."""
    rows, failed = [], False
    for s in shapes:
        torch.manual_seed(0)
        row = new_row(s, baseline=base is not None)
        flops = fwd_flops(s)
        (varlen_row if s.get("varlen") else fixed_row)(s, row, flops, fa, base, bench)
        merge_managed(row, flops, managed, managed_missing)
        failed = finish_row(row) or failed
        rows.append(row)
        print("#", json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    return rows, failed
