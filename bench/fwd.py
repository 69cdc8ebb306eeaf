"""The forward rows (pass "fwd"): for each shape, PyTorch SDPA's flash and cuDNN backends, then our fa_forward on
the same inputs twice, with the default path (FA_PATH_AUTO: the Hopper kernels where they serve) and forced onto
the portable mma.sync kernels (FA_PATH_SM80), each checked against the first backend's output and named by the
kernel the library reports launching, then, with --baseline-lib, the baseline build on the same tensors; the
managed exe's figure for the shape is merged in. Fixed-length 16-bit rows also time our default path with learnable
sinks on the same tensors (ours_sinks_*, sinks_ratio: their cost) and with ALiBi (ours_alibi_*, alibi_ratio). Each column's failure is recorded in the row's errors under its
own key; nothing stops the pass. Needs torch and a GPU (run.py imports this module only when it runs the pass).

e4m3 rows (the fp8 forward, TARGETS.md aim 2): FA3's inputs (bf16 normals rounded to e4m3), our fp8 forward on the
default path with descales of 1 per (batch, kv head) (ours_*), our bf16 forward on the same values (ours_bf16_*),
and PyTorch SDPA's flash and cuDNN backends in bf16 on the same values (PyTorch has no fp8 attention), the flash
output the reference of both of ours (the fp8 one within MAX_FP8_REL_ERR). Where the GPU is not compute capability
9.0 the library refuses fp8 (the sm90 kernels are its only ones): that is a note on the row, not a failure; on 9.0
it is a failure."""
import json
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import (MAX_FP8_REL_ERR, MAX_REL_ERR, dtype_code, finish_row, first_line, kernel_path_of, tflops,
                    time_baseline)
from fa_abi import FA_DTYPE_BFLOAT16, FA_PASS_FORWARD, FA_PATH_AUTO, FA_PATH_SM80
from inputs import sdpa_inputs, varlen_inputs
from shapes import fwd_flops, new_row, shape_key

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}

# Our two timings of each row: (kernel path, row key of the figures; its failure is errors[key], a wrong result
# errors["mismatch" + suffix]). The default path's figures go in ours_*, the forced path's in ours_sm80_*.
OUR_PATHS = ((FA_PATH_AUTO, "ours"), (FA_PATH_SM80, "ours_sm80"))


def mismatch_key(key):
    """errors key of a wrong result of our timing `key`: "mismatch" for ours, "mismatch_sm80" for ours_sm80."""
    return "mismatch" + key[len("ours"):]


def compare(row, out, ref, against, key="ours", limit=MAX_REL_ERR):
    """Relative Frobenius error of our output (poisoned before the call) against ref, both [..., H, D], into
    row[key + "_rel_err"]; above limit the row gets errors[mismatch_key(key)]."""
    r = ref.float()
    diff = float((out.float() - r).norm() / r.norm())
    if math.isnan(diff) or math.isinf(diff):
        raise RuntimeError("our output holds NaN/Inf (the poison was not overwritten everywhere?)")
    row[key + "_rel_err"] = diff
    if diff > limit:
        row["errors"][mismatch_key(key)] = f"relative error {diff:.2e} against {against} exceeds {limit}"


def time_path(row, key, path, flops, fa, bench, make_params, ref, against, out, limit=MAX_REL_ERR):
    """One of our timings: poisons out, runs fa_forward once on `path` with the library's launch log on (the
    kernel it names goes to row[key + "_kernel"], and for the default path its family to row["path"]), checks the
    output against ref (relative error up to limit), then times the call. A forced sm80 call that reports another
    family is an error."""
    try:
        ours = fa.forward_call(make_params(fa, path))
        out.fill_(float("nan"))
        kernels = fa.launched_kernels(ours)
        torch.cuda.synchronize()
        kernel = kernels[-1] if kernels else None
        row[key + "_kernel"] = kernel
        family = kernel_path_of(kernel)
        if key == "ours":
            row["path"] = family
        elif path == FA_PATH_SM80 and family not in (None, "sm80"):
            raise RuntimeError(f"kernel_path FA_PATH_SM80 launched {kernel}, not an sm80 kernel")
        if ref is not None:
            compare(row, out, ref, against, key, limit)
        row[key + "_ms"] = bench(ours)
        row[key + "_tflops"] = tflops(flops, row[key + "_ms"])
    except Exception as e:  # noqa: BLE001 - recorded on the row, under this timing's own key
        row["errors"][key] = first_line(e, 300)


def time_ours(row, flops, fa, base, bench, make_params, ref, against, out):
    """Our forward on the default path and forced onto sm80 (each checked against ref, then timed), then the
    baseline build's default path on the same tensors. make_params(lib, path) builds the params struct for one
    loaded library."""
    for path, key in OUR_PATHS:
        time_path(row, key, path, flops, fa, bench, make_params, ref, against, out)
    if base is not None:
        time_baseline(row, flops, base, lambda lib: lib.forward_call(make_params(lib, FA_PATH_AUTO)), bench)


def time_sinks(row, flops, fa, bench, code, q2, k2, v2, causal, ref, against):
    """Our forward on the default path with learnable sinks (one fp32 logit per query head, randn), on the row's
    tensors (ours_sinks_*; sinks_ratio = ours_sinks_ms / ours_ms). Its reference: with a sink sigma_h the output is the
    plain one times sigmoid(lse - sigma_h) (FEATURES.md section 7), lse from our own plain forward."""
    b, sq, h, d = q2.shape
    sinks = torch.randn(h, device=q2.device, dtype=torch.float32)
    ref_s = None
    if ref is not None:
        try:
            lse = torch.empty(b, h, sq, device=q2.device, dtype=torch.float32)
            o_plain = torch.empty_like(q2)
            fa.forward_call(fa.forward_params(code, q2, k2, v2, o_plain, causal, lse=lse))()
            weight = torch.sigmoid(lse - sinks.view(1, h, 1)).transpose(1, 2).unsqueeze(-1)  # [B, S, H, 1]
            ref_s = (ref.float() * weight).to(ref.dtype)
        except Exception as e:  # noqa: BLE001 - the sinks' timing below still runs, unchecked
            row["errors"]["reference"] = "sinks reference: " + first_line(e, 200)
    out = torch.full_like(q2, float("nan"))
    time_path(row, "ours_sinks", FA_PATH_AUTO, flops, fa, bench,
              lambda lib, path: lib.forward_params(code, q2, k2, v2, out, causal, path=path, sinks=sinks), ref_s,
              None if against is None else against + " times sigmoid(lse - sink)", out)
    if row.get("ours_ms") and row.get("ours_sinks_ms"):
        row["sinks_ratio"] = row["ours_sinks_ms"] / row["ours_ms"]


def alibi_slopes(h, device):
    """ALiBi's standard slopes for h heads (the geometric sequence 2^(-8 (i + 1) / h), BLOOM's for a power of 2)."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], device=device, dtype=torch.float32)


def alibi_reference(q, k, v, slopes, causal):
    """[B, S, H, D] attention with FlashAttention-2's ALiBi bias, bottom-right, in float32 one head at a time (SDPA
    with a float32 bias; the distance form -slope |i + sk - sq - j| for causal too: the same output as FA2's +slope j
    form). Memory: one [sq, sk] fp32 bias at a time."""
    b, sq, h, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    i = torch.arange(sq, device=q.device).view(sq, 1) + (sk - sq)
    j = torch.arange(sk, device=q.device).view(1, sk)
    dist = (i - j).abs().float()
    for hh in range(h):
        bias = -slopes[hh] * dist
        if causal:
            bias = bias.masked_fill(j > i, float("-inf"))
        hk = hh // (h // hkv)
        qh, kh, vh = (t.float().transpose(1, 2) for t in (q[:, :, hh:hh + 1], k[:, :, hk:hk + 1], v[:, :, hk:hk + 1]))
        out[:, :, hh:hh + 1] = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias).transpose(1, 2).to(q.dtype)
        del bias
    return out


def time_alibi(row, flops, fa, bench, code, q2, k2, v2, causal):
    """Our forward on the default path with ALiBi (standard slopes, [H]) on the row's tensors (ours_alibi_*;
    alibi_ratio = ours_alibi_ms / ours_ms), checked against alibi_reference (float32, one head at a time)."""
    h = q2.shape[2]
    slopes = alibi_slopes(h, q2.device)
    ref = None
    try:
        ref = alibi_reference(q2, k2, v2, slopes, causal)
    except Exception as e:  # noqa: BLE001 - the timing below still runs, unchecked
        row["errors"]["reference"] = "alibi reference: " + first_line(e, 200)
    out = torch.full_like(q2, float("nan"))
    time_path(row, "ours_alibi", FA_PATH_AUTO, flops, fa, bench,
              lambda lib, path: lib.forward_params(code, q2, k2, v2, out, causal, path=path, alibi_slopes=slopes), ref,
              None if ref is None else "float32 SDPA with the ALiBi bias", out)
    if row.get("ours_ms") and row.get("ours_alibi_ms"):
        row["alibi_ratio"] = row["ours_alibi_ms"] / row["ours_ms"]


def time_fp8(row, flops, fa, base, bench, make_fp8, make_bf16, ref, against, out8, out16, served_here):
    """An e4m3 row's timings of ours: the fp8 forward on the default path (ours_*, checked against ref within
    MAX_FP8_REL_ERR), then our bf16 forward on the same values (ours_bf16_*, within MAX_REL_ERR), then, with
    --baseline-lib, the baseline build's fp8 forward. served_here: whether this GPU and build should serve fp8
    (fp8_served_here); where they should not, the library's refusal of the fp8 call is a note, not a failure."""
    time_path(row, "ours", FA_PATH_AUTO, flops, fa, bench, make_fp8, ref, against, out8, MAX_FP8_REL_ERR)
    if not served_here and "ours" in row["errors"]:
        why = row["errors"].pop("ours")
        row["note"] = "; ".join(n for n in (row.get("note"), "fp8 not timed: this GPU or this build does not serve "
                                            f"it ({why})") if n)
    time_path(row, "ours_bf16", FA_PATH_AUTO, flops, fa, bench, make_bf16, ref, against, out16)
    if base is not None:
        time_baseline(row, flops, base, lambda lib: lib.forward_call(make_fp8(lib, FA_PATH_AUTO)), bench)


def sdpa_columns(row, flops, bench, q, k, v, causal, h, hkv):
    """PyTorch SDPA's flash and cuDNN backends on q, k, v ([B, H, S, D]) into row's flash_* and cudnn_* (each
    failure under its own errors key): (the first backend's output or None, its name, notes)."""
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
    return ref, ref_name, notes


def fixed_row(s, row, flops, fa, base, bench):
    h, hkv = s["h"], s["hkv"]
    causal = bool(s["causal"])
    code = dtype_code(s["dtype"])
    # PyTorch's natural layout [B, H, S, D] for SDPA (as the anchors); ours [B, S, H, D] contiguous.
    q, k, v = sdpa_inputs(s)
    ref, ref_name, notes = sdpa_columns(row, flops, bench, q, k, v, causal, h, hkv)
    if notes:
        row["note"] = "; ".join(notes)
    q2, k2, v2 = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    o2 = torch.full_like(q2, float("nan"))
    time_ours(row, flops, fa, base, bench,
              lambda lib, path: lib.forward_params(code, q2, k2, v2, o2, causal, path=path),
              None if ref is None else ref.transpose(1, 2), ref_name, o2)
    if "ours_sinks_ms" in row:  # the C ABI has sinks (0.7 on)
        time_sinks(row, flops, fa, bench, code, q2, k2, v2, causal, None if ref is None else ref.transpose(1, 2),
                   ref_name)
    if "ours_alibi_ms" in row:  # the C ABI has ALiBi (0.8 on)
        time_alibi(row, flops, fa, bench, code, q2, k2, v2, causal)


def fp8_row(s, row, flops, fa, base, bench):
    """An e4m3 row (see the module's notes): ours fp8, ours bf16, flash and cuDNN bf16 on the same values."""
    b, h, hkv, sq, sk, d = s["b"], s["h"], s["hkv"], s["sq"], s["sk"], s["d"]
    causal = bool(s["causal"])
    dev = torch.device("cuda")
    fp8 = torch.float8_e4m3fn
    # FA3's fp8 inputs: bf16 normals rounded to e4m3, ours [B, S, H, D]; the same values in bf16 (exact) for the rest.
    q8 = torch.randn(b, sq, h, d, device=dev, dtype=torch.bfloat16).to(fp8)
    k8 = torch.randn(b, sk, hkv, d, device=dev, dtype=torch.bfloat16).to(fp8)
    v8 = torch.randn(b, sk, hkv, d, device=dev, dtype=torch.bfloat16).to(fp8)
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q8, k8, v8))
    ref, ref_name, notes = sdpa_columns(row, flops, bench, *(t.transpose(1, 2).contiguous() for t in (qb, kb, vb)),
                                        causal, h, hkv)
    if notes:
        row["note"] = "; ".join(notes)
    ones = torch.ones(b, hkv, device=dev, dtype=torch.float32)  # descales per (batch, kv head), as a real caller's
    o8 = torch.full((b, sq, h, d), float("nan"), device=dev, dtype=torch.bfloat16)
    o16 = torch.full_like(qb, float("nan"))
    time_fp8(row, flops, fa, base, bench,
             lambda lib, path: lib.forward_params(dtype_code("e4m3"), q8, k8, v8, o8, causal, path=path,
                                                  out_code=FA_DTYPE_BFLOAT16, descales=(ones, ones, ones)),
             lambda lib, path: lib.forward_params(FA_DTYPE_BFLOAT16, qb, kb, vb, o16, causal, path=path),
             None if ref is None else ref.transpose(1, 2), ref_name, o8, o16, fp8_served_here(fa, d, causal))


def fp8_served_here(fa, d, causal):
    """Whether this GPU and this build should serve the fp8 forward: compute capability 9.0 and the library's own
    answer (fa_query_support), so that a build without the fp8 kernels is a note, not a failure."""
    major, minor = torch.cuda.get_device_capability()
    return (major, minor) == (9, 0) and fa.serves(FA_PASS_FORWARD, dtype_code("e4m3"), d, causal, 90)


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
    time_ours(row, flops, fa, base, bench,
              lambda lib, path: lib.forward_params(code, q, k, v, o, causal, varlen=varlen, path=path), ref, against, o)


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
        fp8 = s["dtype"] == "e4m3"
        try:
            (fp8_row if fp8 else varlen_row if s.get("varlen") else fixed_row)(s, row, flops, fa, base, bench)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory making the inputs: this row only
            row["errors"]["row"] = f"{type(e).__name__}: {first_line(e, 300)}"
        if not fp8:  # the managed exe times the 16-bit rows only
            merge_managed(row, flops, managed, managed_missing)
        failed = finish_row(row) or failed
        rows.append(row)
        print("#", json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    return rows, failed
