#!/usr/bin/env python3
"""Side-by-side decode benchmark on one GPU: our fa_decode against PyTorch SDPA, in one process.

Rows (the decode issue, TARGETS.md): bf16, B 16, 32 q heads over 8 kv heads, D 128, one new token, cache
lengths 1k/4k/16k/32k/128k, for a contiguous cache [B, S, Hkv, D] and paged caches of block size 16 and 256
([num_blocks, block, Hkv, D] with a shuffled block table); no append (every sequence holds S tokens).

  ours    fa_decode through the C ABI with ctypes on torch-allocated tensors, a caller workspace sized by
          fa_decode_workspace_size, the library's split heuristic, on torch's current stream;
  flash   torch SDPA with the FLASH_ATTENTION backend on q [B, Hq, 1, D], k/v [B, Hkv, S, D], enable_gqa=True;
  cudnn   the same with the CUDNN_ATTENTION backend.
SDPA has no paged cache: the paged rows carry the contiguous SDPA figures (their note says so). A backend
that refuses a shape gets null and the reason in the row's errors.

Serving rows (issue 15, C ABI 0.7), the contiguous shape again with one option each, so their cost shows beside the
plain contiguous row ("serving" names the option; SDPA's figures are the plain row's):
  batch_idx  cache_batch_idx over a pool of 2*B rows, the sequences' rows shuffled (the same K/V at those rows);
  leftpad    cache_leftpad: each sequence's S keys start at a pad of 0..255 positions (cache_seqlens = pad + S),
             so the same S keys are attended.
Shape rows (issue 15, SHAPE_ROWS; "serving" holds the label): b1 (one sequence over 128k cached keys, contiguous and
paged 256: the split-KV heuristic must fill the GPU) and spec4/spec16 (B 16, 4 or 16 query tokens per sequence over
32k, causal bottom-right: speculative decoding), each with SDPA on the same contiguous shape; spec_var (B 16 with query
counts 1..16, 97 in all, packed with cu_seqlens_q: drafts of different lengths) beside SDPA on the padded shape.

FP8 cache rows (issue 15, C ABI 0.13; "serving" fp8_cache, "kv_cache_dtype" e4m3): the contiguous B 16 shape at every
length, and the b1 row (one sequence over 128k keys), with the cache quantized to e4m3 per KV head (descale = the
head's max |x| / 448, per-head k_descale / v_descale) and q/out bf16. ours_tbps counts the bytes actually read (one
byte a cached element: half the bf16 rows'); bf16_cache_ms is our bf16 cache's time on the same shape (the plain row
of that length, or the b1 row), fp8_speedup its ratio to the fp8 row's (issue 15's goal: at least 1.8 at 32k). SDPA
has no fp8 cache: flash/cudnn are SDPA on the bf16 cache of the same shape (the row's note says so), and our output
is checked against SDPA's on the dequantized cache.

Method as shared/tools/sdpa_anchors.py measured the TARGETS.md decode anchors: triton.testing.do_bench
(warm-up 25 ms, 100 ms of runs, median, L2 flushed before every call); the copy ceiling is a torch device
copy of 1 GiB, (read + write) bytes over the median time. K/V read bandwidth: 2*B*Hkv*S*D*2 bytes over the
median. Our output is compared with the flash backend's (relative Frobenius norm), so a fast but wrong
kernel shows up.

decode_rows(lib_path, quick=False) returns the rows in TARGETS.md's record format (bench/run.py imports it; this
module imports bench/common.py and the generated ctypes mirror bench/fa_abi.py, never run.py);
run alone, `python3 bench/decode.py --lib build/libflash_attention.so [--quick] [--out decode.json]` prints a
table. Under 60 s on an H100 (about 26 GB of GPU memory at 128k).
"""
import argparse
import ctypes
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from common import MAX_REL_ERR, FaLib, describe, lib_file  # noqa: E402
from fa_abi import FA_DTYPE_BFLOAT16, FA_DTYPE_FLOAT32, FA_DTYPE_INT32, FaDecodeParams  # noqa: E402

FA_DTYPE_FLOAT8_E4M3 = 5  # fa_dtype_t's e4m3 (the mirror's constant where it has one)

FA_DECODE_VERSION_CODE = 300  # the first header version with fa_decode
FA_SERVING_VERSION_CODE = 700  # the first with cache_batch_idx / cache_leftpad
FA_ROTARY_VERSION_CODE = 800  # the first with rotary_cos / rotary_sin
FA_FP8_CACHE_VERSION_CODE = 1300  # the first with an fp8 KV cache (k_descale / v_descale)

B, HQ, HKV, D, SQ = 16, 32, 8, 128, 1
LENGTHS = (1024, 4096, 16384, 32768, 131072)
QUICK_LENGTHS = (4096, 32768)
LAYOUTS = (None, 16, 256)  # contiguous, then paged block sizes


def kv_bytes(s, b=B, elem=2):
    """K/V bytes read: 2 tensors of b * HKV * s * D elements of `elem` bytes (2: bf16; 1: an fp8 cache)."""
    return 2.0 * b * HKV * s * D * elem


def decode_flops(s, b=B, sq=SQ):
    return 4.0 * b * HQ * sq * s * D


def _rates(row, s, b=B, sq=SQ):
    """TFLOP/s and K/V read TB/s of ours, flash and cuDNN from their times (where measured): the bytes each read (ours
    over an fp8 cache: one byte an element; SDPA always reads the bf16 cache)."""
    for name in ("ours", "flash", "cudnn"):
        ms = row[f"{name}_ms"]
        if ms:
            elem = 1 if name == "ours" and row.get("kv_cache_dtype") == "e4m3" else 2
            row[f"{name}_tflops"] = decode_flops(s, b, sq) / ms / 1e9
            row[f"{name}_tbps"] = kv_bytes(s, b, elem) / ms / 1e9


def _sdpa(q, k, v, backends, bench, mask=None):
    """SDPA per backend on q [B, Hq, Sq, D], k/v [B, Hkv, S, D] (enable_gqa): ({name}_ms, the refusals by backend,
    the first backend's output as the reference)."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel
    times, errors, ref = {f"{name}_ms": None for name in backends}, {}, None
    for name, be in backends.items():
        try:
            with sdpa_kernel([be]):
                f = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # noqa: E731
                o = f()
                if ref is None:
                    ref = o
                times[f"{name}_ms"] = bench(f)
        except Exception as e:  # noqa: BLE001 - a refused shape is recorded, not fatal
            errors[name] = str(e).split("\n")[0][:200]
    return times, errors, ref


def _paged(kc, vc, block, torch):
    """The contiguous caches kc/vc [b, S, Hkv, D] as pages of `block` keys in shuffled order: (k_cache, v_cache,
    the int32 block table [b, S / block])."""
    b, s = kc.shape[0], kc.shape[1]
    pages = s // block
    perm = torch.randperm(b * pages, device=kc.device)
    k_cache = torch.empty(b * pages, block, HKV, D, device=kc.device, dtype=kc.dtype)
    v_cache = torch.empty_like(k_cache)
    k_cache[perm] = kc.reshape(b * pages, block, HKV, D)
    v_cache[perm] = vc.reshape(b * pages, block, HKV, D)
    return k_cache, v_cache, perm.view(b, pages).to(torch.int32)


def _workspace(fa, ctx, p, torch, dev):
    """Sizes p's decode workspace (fa_decode_workspace_size for its split count) and points p at a new allocation of
    it; returns the tensor (None when none is needed), which must outlive the calls."""
    size = ctypes.c_size_t()
    fa.check(fa.lib.fa_decode_workspace_size(ctx, ctypes.byref(p), ctypes.byref(size)), "fa_decode_workspace_size")
    if not size.value:
        p.workspace, p.workspace_size = None, 0
        return None
    ws = torch.empty(size.value, device=dev, dtype=torch.uint8)
    p.workspace, p.workspace_size = ws.data_ptr(), size.value
    return ws


def _check_and_time(fa, ctx, row, p, out, ref, bench, torch):
    """fa_decode(p) on torch's current stream: the library's split count into row, a workspace, one call checked
    against ref (SDPA's output [B, Hq, Sq, D]; None: unchecked), then its median time into row. Returns the call, its
    workspace on it (call.workspace: replace it with _workspace when p's split count changes)."""
    splits = ctypes.c_int32()
    fa.check(fa.lib.fa_decode_num_splits(ctx, ctypes.byref(p), ctypes.byref(splits)), "fa_decode_num_splits")
    row["ours_splits"] = splits.value
    pp = ctypes.byref(p)

    def ours():
        st = fa.lib.fa_decode(ctx, pp, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
        if st != 0:
            fa.check(st, "fa_decode")

    ours.workspace = _workspace(fa, ctx, p, torch, out.device)
    ours()
    torch.cuda.synchronize()
    if ref is not None:
        r = ref.transpose(1, 2).float()
        diff = float((out.float() - r).norm() / r.norm())
        if math.isnan(diff) or math.isinf(diff):
            raise RuntimeError("our output holds NaN/Inf (the poison was not overwritten everywhere?)")
        row["ours_rel_err"] = diff
        if diff > MAX_REL_ERR:
            row["errors"]["mismatch"] = f"relative error {diff:.2e} against SDPA exceeds {MAX_REL_ERR}"
    row["ours_ms"] = bench(ours)
    return ours


SERVING = ("batch_idx", "leftpad")  # the serving rows, contiguous
MAX_PAD = 256
# The paged row with rotary on append (issue 15): S - 1 cached keys and one new token appended in the call, the new key
# rotated at S - 1 before it is stored and the query rotated there too (half-split over the whole head, as Llama), in a
# paged cache of this block size; beside the plain "paged 16" row, which appends nothing.
ROTARY_BLOCK = 16
ROTARY_ROWS = [(ROTARY_BLOCK, "rotary_append")]


def rotate_half_split(x, cos, sin):
    """NeoX rotary of x [..., D] with cos/sin [..., D / 2] (broadcast), in fp32: the reference of the rotary row."""
    import torch
    h = x.shape[-1] // 2
    x0, x1 = x[..., :h].float(), x[..., h:].float()
    c, s = cos.float(), sin.float()
    return torch.cat((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).to(x.dtype)


def fp8_cache_of(kc, vc, torch):
    """The bf16 caches kc/vc [b, S, Hkv, D] quantized to e4m3 per KV head, as a caller's cache would hold them: descale
    = the head's max |x| / 448, bytes = (x / descale) rounded to e4m3 (torch's cast, after a clamp to +-448: it does not
    saturate). Returns (k8, v8, k_descale, v_descale (fp32 [Hkv]), and the dequantized caches in bf16, SDPA's layout
    [b, Hkv, S, D] for the reference). One sequence at a time (the fp32 temporaries of 128k keys stay small)."""
    out = []
    for c in (kc, vc):
        amax = torch.stack([c[i].abs().amax(dim=(0, 2)).float() for i in range(c.shape[0])]).amax(dim=0)
        descale = (amax.clamp(min=1e-6) / 448.0).contiguous()
        c8 = torch.empty(c.shape, device=c.device, dtype=torch.float8_e4m3fn)
        deq = torch.empty(c.shape[0], c.shape[2], c.shape[1], c.shape[3], device=c.device, dtype=torch.bfloat16)
        for i in range(c.shape[0]):
            q8 = (c[i].float() / descale.view(1, -1, 1)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
            c8.view(torch.uint8)[i] = q8.view(torch.uint8)  # (bytes: torch does not copy into float8 slices everywhere)
            deq[i] = (c8[i].float() * descale.view(1, -1, 1)).to(torch.bfloat16).transpose(0, 1)
        out.append((c8, descale, deq))
    (k8, kd, kdeq), (v8, vd, vdeq) = out
    return k8, v8, kd, vd, kdeq, vdeq


def fp8_note(block=None, what="B 16"):
    return (f"fp8 (e4m3) KV cache, {what}, q/out bf16, per-KV-head descales" + (f", paged {block}" if block else "") +
            "; ours_tbps: the bytes read (1 per cached element); flash/cudnn: SDPA on the bf16 cache of the same shape "
            "(SDPA has no fp8 cache); fp8_speedup: our bf16 cache's time (bf16_cache_ms) over this row's")


def _ours_fp8(fa, ctx, row, q2, k8, v8, kd, vd, lens, ref, bench, torch, block=None, outs=None):
    """fa_decode over the fp8 caches k8/v8 [b, S, Hkv, D] (paged `block` when given) with descales kd/vd, checked
    against ref (SDPA on the dequantized cache), timed into row; the output tensor appended to `outs` when given."""
    if fa.version() < FA_FP8_CACHE_VERSION_CODE:
        raise RuntimeError(f"the library is version code {fa.version()}; an fp8 cache needs {FA_FP8_CACHE_VERSION_CODE}")
    b, s = k8.shape[0], k8.shape[1]
    if block is not None:  # page the bytes (torch does not index float8 tensors everywhere)
        kp, vp, table = _paged(k8.view(torch.uint8), v8.view(torch.uint8), block, torch)
        k_cache, v_cache = kp.view(torch.float8_e4m3fn), vp.view(torch.float8_e4m3fn)
    else:
        k_cache, v_cache, table = k8, v8, None
    out = torch.full_like(q2, float("nan"))
    p = FaDecodeParams()
    fa.check(fa.lib.fa_decode_params_init(ctypes.byref(p), ctypes.sizeof(p)), "fa_decode_params_init")
    p.q, p.out = describe(q2, FA_DTYPE_BFLOAT16), describe(out, FA_DTYPE_BFLOAT16)
    p.k_cache, p.v_cache = describe(k_cache, FA_DTYPE_FLOAT8_E4M3), describe(v_cache, FA_DTYPE_FLOAT8_E4M3)
    p.k_descale, p.v_descale = describe(kd, FA_DTYPE_FLOAT32), describe(vd, FA_DTYPE_FLOAT32)
    p.cache_seqlens = describe(lens, FA_DTYPE_INT32)
    host_lens = (ctypes.c_int32 * b)(*([s] * b))
    p.cache_seqlens_host = ctypes.cast(host_lens, ctypes.POINTER(ctypes.c_int32))
    if table is not None:
        p.block_table = describe(table, FA_DTYPE_INT32)
    _check_and_time(fa, ctx, row, p, out, ref, bench, torch)
    if outs is not None:
        outs.append(out)
    del host_lens


def _fp8_row(fa, ctx, s, q, q2, kc, vc, lens, bf16_ms, copy_tbps, bench, backends_times, torch, b=B, label="fp8_cache"):
    """The fp8-cache row of a shape whose bf16 caches are kc/vc [b, S, Hkv, D] (our bf16 time bf16_ms; SDPA's bf16
    figures backends_times): quantize, reference on the dequantized cache, time ours."""
    import torch.nn.functional as F
    row = new_row(s, None, label)
    row.update(b=b, kv_cache_dtype="e4m3", copy_tbps=copy_tbps, bf16_cache_ms=bf16_ms, note=fp8_note(what=f"B {b}"))
    row.update(backends_times)
    try:
        k8, v8, kd, vd, kdeq, vdeq = fp8_cache_of(kc, vc, torch)
        ref = F.scaled_dot_product_attention(q, kdeq, vdeq, enable_gqa=True)
        del kdeq, vdeq
        _ours_fp8(fa, ctx, row, q2, k8, v8, kd, vd, lens, ref, bench, torch)
        del k8, v8, ref
    except Exception as e:  # noqa: BLE001
        row["errors"]["ours"] = str(e).split("\n")[0][:300]
    if row["ours_ms"] and bf16_ms:
        row["fp8_speedup"] = bf16_ms / row["ours_ms"]
    _rates(row, s, b)
    if not row["errors"]:
        row.pop("errors")
    return row


def planned_rows(quick=False):
    """The decode rows' skeletons (no GPU, no torch): what decode_rows measures, for --dry-run and the CPU tests."""
    rows = []
    for s in (QUICK_LENGTHS if quick else LENGTHS):
        rows += [new_row(s, blk) for blk in LAYOUTS] + [new_row(s, None, sv) for sv in SERVING]
        rows += [new_row(s, ROTARY_BLOCK, "rotary_append")]
        r = new_row(s, None, "fp8_cache")
        r.update(kv_cache_dtype="e4m3", bf16_cache_ms=None, fp8_speedup=None, note=fp8_note())
        rows.append(r)
    for label, b, sq, s, block in SHAPE_ROWS:
        r = new_row(s, block, label)
        r.update(b=b, sq=sq, causal=int(sq > 1))
        rows.append(r)
        if label in FP8_SHAPES and block is None:
            f = new_row(s, None, f"{label}_fp8_cache")
            f.update(b=b, kv_cache_dtype="e4m3", bf16_cache_ms=None, fp8_speedup=None, note=fp8_note(what=f"B {b}"))
            rows.append(f)
    r = new_row(32768, None, "spec_var")
    r.update(b=len(VAR_COUNTS), sq=max(VAR_COUNTS), causal=1)
    rows.append(r)
    return rows


def new_row(s, block, serving=None):
    return {"pass": "decode", "dtype": "bf16", "d": D, "causal": 0, "b": B, "h": HQ, "hkv": HKV, "sq": SQ, "sk": s,
            "paged_block": block, "serving": serving, "ours_ms": None, "flash_ms": None, "cudnn_ms": None, "ours_tflops": None,
            "flash_tflops": None, "cudnn_tflops": None, "ours_tbps": None, "flash_tbps": None, "cudnn_tbps": None,
            "copy_tbps": None, "ours_splits": None, "ours_rel_err": None, "note": None, "errors": {}}


def decode_rows(lib_path, quick=False, baseline_path=None):
    """Times the decode grid for ours, flash and cuDNN; returns TARGETS.md rows (null where not measured).
    baseline_path: a second build of the library, timed beside ours on the same cache (ours_base_ms)."""
    import torch
    from torch.nn.attention import SDPBackend
    from triton.testing import do_bench

    fa = FaLib(lib_file(lib_path))
    if fa.version() < FA_DECODE_VERSION_CODE:
        raise RuntimeError(f"the library is version code {fa.version()}; decode needs {FA_DECODE_VERSION_CODE}")
    dev = torch.device("cuda")
    ctx = fa.open(torch.cuda.current_device()).ctx
    fb = FaLib(lib_file(baseline_path)) if baseline_path else None
    bctx = fb.open(torch.cuda.current_device()).ctx if fb else None

    def bench(fn):
        return do_bench(fn, warmup=25, rep=100, return_mode="median")

    x = torch.empty(2 ** 30, device=dev, dtype=torch.uint8).random_()
    y = torch.empty_like(x)
    copy_tbps = 2 * x.numel() / bench(lambda: y.copy_(x)) / 1e9
    del x, y

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    rows = []
    try:
        for s in (QUICK_LENGTHS if quick else LENGTHS):
            torch.manual_seed(s)
            # PyTorch's layout, as the anchors: q [B, Hq, 1, D], k/v [B, Hkv, S, D].
            q = torch.randn(B, HQ, SQ, D, device=dev, dtype=torch.bfloat16)
            k = torch.randn(B, HKV, s, D, device=dev, dtype=torch.bfloat16)
            v = torch.randn(B, HKV, s, D, device=dev, dtype=torch.bfloat16)
            sdpa, sdpa_err, ref = _sdpa(q, k, v, backends, bench)
            # Ours: [B, S, Hkv, D] cache, q/out [B, 1, Hq, D].
            q2 = q.transpose(1, 2).contiguous()
            kc = k.transpose(1, 2).contiguous()
            vc = v.transpose(1, 2).contiguous()
            del k, v
            lens = torch.full((B,), s, dtype=torch.int32, device=dev)
            for block, serving in [(b, None) for b in LAYOUTS] + [(None, sv) for sv in SERVING] + ROTARY_ROWS:
                row = new_row(s, block, serving)
                row["copy_tbps"] = copy_tbps
                for key, val in sdpa.items():
                    row[key] = val
                row["errors"].update(sdpa_err)
                if block is not None:
                    row["note"] = "flash/cudnn: SDPA on the contiguous [B, Hkv, S, D] cache (SDPA has no paged cache)"
                if serving is not None:
                    row["note"] = f"serving {serving}: flash/cudnn are the plain contiguous row's figures"
                if serving == "rotary_append":
                    row["note"] = (f"paged {block}, 1 token appended at S-1 with rotary (half-split, D {D}) and the query "
                                   "rotated: the append, rotation and attention of one generation step; flash/cudnn are "
                                   "the plain contiguous row's figures (SDPA has no cache)")
                try:
                    _ours(fa, ctx, row, q2, kc, vc, lens, s, block, ref, bench, torch, serving)
                except Exception as e:  # noqa: BLE001
                    row["errors"]["ours"] = str(e).split("\n")[0][:300]
                # A baseline older than 0.7 (0.8 for rotary) would ignore the serving fields (and time another computation).
                need = FA_ROTARY_VERSION_CODE if serving == "rotary_append" else FA_SERVING_VERSION_CODE
                if fb is not None and (serving is None or fb.version() >= need):
                    base_row = new_row(s, block, serving)
                    try:
                        _ours(fb, bctx, base_row, q2, kc, vc, lens, s, block, ref, bench, torch, serving)
                        row["ours_base_ms"] = base_row["ours_ms"]
                        row["ours_base_tflops"] = decode_flops(s) / base_row["ours_ms"] / 1e9
                    except Exception as e:  # noqa: BLE001 - the baseline's failure is reported, not fatal
                        row["errors"]["base"] = str(e).split("\n")[0][:300]
                _rates(row, s)
                if not row["errors"]:
                    row.pop("errors")
                rows.append(row)
                print("#", json.dumps(row), flush=True)
            # The fp8 cache of this length (contiguous), beside our bf16 contiguous row's time.
            bf16_ms = next((r["ours_ms"] for r in rows if r["sk"] == s and r["paged_block"] is None and not r["serving"]
                            and r["b"] == B), None)
            del ref
            row = _fp8_row(fa, ctx, s, q, q2, kc, vc, lens, bf16_ms, copy_tbps, bench, sdpa, torch)
            rows.append(row)
            print("#", json.dumps(row), flush=True)
            del q, q2, kc, vc
            torch.cuda.empty_cache()
        rows += shape_rows(fa, ctx, copy_tbps, bench, backends)
        rows.append(varcount_row(fa, ctx, copy_tbps, bench, backends))
    finally:
        fa.close()
        if fb is not None:
            fb.close()
    return rows


# Issue 15's shapes beyond the B16 single-token grid: (label, batch, query tokens, cached keys, paged block): one
# sequence over 128k cached keys (few CTAs: split-KV must fill the GPU), contiguous and paged 256; 4 and 16 query
# tokens per sequence over 32k (speculative decoding: causal bottom-right, each token sees the cache and the tokens
# before it). SDPA anchors on the same shapes (causal_lower_right for the speculative rows where the backend takes it).
SHAPE_ROWS = (("b1", 1, 1, 131072, None), ("b1", 1, 1, 131072, 256), ("b4", 4, 1, 131072, None),
              ("spec4", 16, 4, 32768, None), ("spec16", 16, 16, 32768, None))
# The shape rows that also get an fp8-cache row (the contiguous one of each label): one sequence over 128k keys.
FP8_SHAPES = ("b1",)


# Forced split counts timed on the few-sequence rows beside the heuristic's (b1: 29 was the 0.85 efficiency rule's
# choice, 32 the 0.95 one's, 16 one CTA per SM; b4: 7, 8 and 4).
SPLIT_SWEEP = {1: (16, 29, 32, 33, 48), 4: (2, 4, 7, 8)}


def shape_rows(fa, ctx, copy_tbps, bench, backends):
    import torch
    from torch.nn.attention.bias import causal_lower_right
    dev = torch.device("cuda")
    rows = []
    for label, b, sq, s, block in SHAPE_ROWS:
        torch.manual_seed(s + sq)
        causal = sq > 1
        row = new_row(s, block, label)
        row.update(b=b, sq=sq, causal=int(causal), copy_tbps=copy_tbps)
        q = torch.randn(b, HQ, sq, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(b, HKV, s, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(b, HKV, s, D, device=dev, dtype=torch.bfloat16)
        times, errors, ref = _sdpa(q, k, v, backends, bench, causal_lower_right(sq, s) if causal else None)
        row.update(times)
        row["errors"].update(errors)
        q2, kc, vc = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        del k, v
        k_cache, v_cache, table = _paged(kc, vc, block, torch) if block is not None else (kc, vc, None)
        out = torch.full_like(q2, float("nan"))
        lens = torch.full((b,), s, dtype=torch.int32, device=dev)
        p = FaDecodeParams()
        try:
            fa.check(fa.lib.fa_decode_params_init(ctypes.byref(p), ctypes.sizeof(p)), "fa_decode_params_init")
            p.q, p.k_cache, p.v_cache, p.out = (describe(t, FA_DTYPE_BFLOAT16) for t in (q2, k_cache, v_cache, out))
            p.cache_seqlens = describe(lens, FA_DTYPE_INT32)
            host_lens = (ctypes.c_int32 * b)(*([s] * b))
            p.cache_seqlens_host = ctypes.cast(host_lens, ctypes.POINTER(ctypes.c_int32))
            p.causal = int(causal)
            if table is not None:
                p.block_table = describe(table, FA_DTYPE_INT32)
            ours = _check_and_time(fa, ctx, row, p, out, ref, bench, torch)
            if b in SPLIT_SWEEP:  # the split heuristic's choice beside forced counts, on the same cache (ms per count)
                sweep = {}
                for n in SPLIT_SWEEP[b]:
                    p.num_splits = n
                    ours.workspace = _workspace(fa, ctx, p, torch, dev)
                    sweep[str(n)] = bench(ours)
                row["ours_splits_sweep_ms"] = sweep
            del ours
        except Exception as e:  # noqa: BLE001
            row["errors"]["ours"] = str(e).split("\n")[0][:300]
        _rates(row, s, b, sq)
        row["note"] = (f"{label}: batch {b}, {sq} query token(s) per sequence" + (" (causal bottom-right)" if causal else "")
                       + (f", paged {block}" if block else "") + "; flash/cudnn: SDPA on the same contiguous shape")
        if not row["errors"]:
            row.pop("errors")
        rows.append(row)
        print("#", json.dumps(row), flush=True)
        if label in FP8_SHAPES and block is None and sq == 1:
            del ref
            ref = None
            f = _fp8_row(fa, ctx, s, q, q2, kc, vc, lens, row["ours_ms"], copy_tbps, bench, times, torch, b=b,
                         label=f"{label}_fp8_cache")
            rows.append(f)
            print("#", json.dumps(f), flush=True)
        del q, q2, kc, vc, k_cache, v_cache, out, ref
        torch.cuda.empty_cache()
    return rows


# Speculative decoding with drafts of different lengths (issue 15, C ABI 0.12's cu_seqlens_q): B 16 sequences over
# 32k cached keys with these query counts (97 in all, at most 16), packed, causal bottom-right per sequence. The
# anchors are SDPA on the padded shape a caller without per-sequence counts runs (16 tokens each, spec16's); every
# column's TFLOP/s counts the useful work (the 97 queries).
VAR_COUNTS = (1, 4, 16, 2, 8, 3, 12, 1, 6, 16, 2, 5, 9, 1, 4, 7)
FA_COUNTS_VERSION_CODE = 1200  # the first with cu_seqlens_q / cu_seqlens_k_new


def varcount_row(fa, ctx, copy_tbps, bench, backends, s=32768):
    import torch
    from torch.nn.attention.bias import causal_lower_right
    dev = torch.device("cuda")
    b, most, total = len(VAR_COUNTS), max(VAR_COUNTS), sum(VAR_COUNTS)
    torch.manual_seed(total)
    row = new_row(s, None, "spec_var")
    row.update(b=b, sq=most, causal=1, copy_tbps=copy_tbps, query_counts=list(VAR_COUNTS))
    q = torch.randn(b, HQ, most, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(b, HKV, s, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(b, HKV, s, D, device=dev, dtype=torch.bfloat16)
    times, errors, _ = _sdpa(q, k, v, backends, bench, causal_lower_right(most, s))
    row.update(times)
    row["errors"].update(errors)
    # Ours: the first count of each sequence's padded queries, packed [97, Hq, D]; the reference per sequence (SDPA,
    # causal bottom-right over its own count), packed the same way.
    q_packed = torch.cat([q[i, :, :n].transpose(0, 1) for i, n in enumerate(VAR_COUNTS)]).contiguous()
    import torch.nn.functional as F
    ref = torch.cat([F.scaled_dot_product_attention(q[i:i + 1, :, :n], k[i:i + 1], v[i:i + 1],
                                                    attn_mask=causal_lower_right(n, s), enable_gqa=True)[0].transpose(0, 1)
                     for i, n in enumerate(VAR_COUNTS)])
    kc, vc = (t.transpose(1, 2).contiguous() for t in (k, v))
    del k, v
    out = torch.full_like(q_packed, float("nan"))
    lens = torch.full((b,), s, dtype=torch.int32, device=dev)
    cu_list = [0]
    for n in VAR_COUNTS:
        cu_list.append(cu_list[-1] + n)
    cu = torch.tensor(cu_list, dtype=torch.int32, device=dev)
    p = FaDecodeParams()
    try:
        if fa.version() < FA_COUNTS_VERSION_CODE:
            raise RuntimeError(f"the library is version code {fa.version()}; per-sequence counts need {FA_COUNTS_VERSION_CODE}")
        fa.check(fa.lib.fa_decode_params_init(ctypes.byref(p), ctypes.sizeof(p)), "fa_decode_params_init")
        p.q, p.k_cache, p.v_cache, p.out = (describe(t, FA_DTYPE_BFLOAT16) for t in (q_packed, kc, vc, out))
        p.cache_seqlens = describe(lens, FA_DTYPE_INT32)
        p.cu_seqlens_q = describe(cu, FA_DTYPE_INT32)
        p.max_seqlen_q = most
        host_lens = (ctypes.c_int32 * b)(*([s] * b))
        host_cu = (ctypes.c_int32 * (b + 1))(*cu_list)
        p.cache_seqlens_host = ctypes.cast(host_lens, ctypes.POINTER(ctypes.c_int32))
        p.cu_seqlens_q_host = ctypes.cast(host_cu, ctypes.POINTER(ctypes.c_int32))
        p.causal = 1
        # _check_and_time compares out with ref.transpose(1, 2) (SDPA's [B, Hq, Sq, D]): hand it the packed reference
        # [97, Hq, D] transposed, so that its transpose is the packed layout again.
        _check_and_time(fa, ctx, row, p, out, ref.transpose(1, 2), bench, torch)
    except Exception as e:  # noqa: BLE001
        row["errors"]["ours"] = str(e).split("\n")[0][:300]
    _rates(row, s, 1, total)  # the useful work: 97 queries over s keys each (the anchors' padding not counted)
    row["note"] = (f"spec_var: batch {b}, query counts {'/'.join(map(str, VAR_COUNTS))} ({total} in all) packed with "
                   f"cu_seqlens_q over {s} cached keys, causal bottom-right per sequence; flash/cudnn: SDPA on the padded "
                   f"shape ({most} tokens each, as spec16); TFLOP/s of the {total} useful queries for every column")
    if not row["errors"]:
        row.pop("errors")
    print("#", json.dumps(row), flush=True)
    del q, q_packed, kc, vc, out, ref
    torch.cuda.empty_cache()
    return row


def _ours(fa, ctx, row, q2, kc, vc, lens, s, block, ref, bench, torch, serving=None):
    """Builds the cache layout for `block` (and the serving option's, contiguous), runs fa_decode once (checked
    against ref), then times it."""
    dev = q2.device
    code = FA_DTYPE_BFLOAT16
    batch_idx = leftpad = None
    host_lens_list = [s] * B
    rotary = serving == "rotary_append"
    if serving == "batch_idx":
        # A pool of 2B rows; sequence b reads row batch_idx[b] (shuffled), which holds its K/V.
        batch_idx = torch.randperm(2 * B, device=dev)[:B].to(torch.int32)
        k_cache = torch.zeros(2 * B, s, HKV, D, device=dev, dtype=kc.dtype)
        v_cache = torch.zeros_like(k_cache)
        k_cache[batch_idx.long()] = kc
        v_cache[batch_idx.long()] = vc
        table = None
    elif serving == "leftpad":
        # Sequence b's S keys at positions pad_b .. pad_b + S - 1 (cache_seqlens = pad_b + S).
        pads = torch.randint(0, MAX_PAD, (B,), device=dev, dtype=torch.int32)
        k_cache = torch.zeros(B, s + MAX_PAD, HKV, D, device=dev, dtype=kc.dtype)
        v_cache = torch.zeros_like(k_cache)
        for b, pad in enumerate(pads.tolist()):
            k_cache[b, pad:pad + s] = kc[b]
            v_cache[b, pad:pad + s] = vc[b]
        leftpad = pads
        host_lens_list = [pad + s for pad in pads.tolist()]
        lens = (pads + s).to(torch.int32)
        table = None
    elif block is None:
        k_cache, v_cache, table = kc, vc, None
    else:
        k_cache, v_cache, table = _paged(kc, vc, block, torch)
    k_new = v_new = cos = sin = None
    if rotary:
        # Position S - 1 is the new token: cached length S - 1, k/v_new the (unrotated) key and value of S - 1. The
        # reference is SDPA over the cache with that key rotated at S - 1 and the query rotated there (sq 1: every
        # query at cache_seqlens).
        pos = torch.arange(s, device=dev, dtype=torch.float32)[:, None]
        theta = pos * 10000.0 ** (-2.0 * torch.arange(D // 2, device=dev, dtype=torch.float32) / D)
        cos, sin = theta.cos().to(kc.dtype), theta.sin().to(kc.dtype)
        k_new, v_new = kc[:, s - 1:s].clone(), vc[:, s - 1:s].clone()
        lens = torch.full((B,), s - 1, dtype=torch.int32, device=dev)
        host_lens_list = [s - 1] * B
        k_ref = kc.clone()
        k_ref[:, s - 1] = rotate_half_split(k_new[:, 0], cos[s - 1], sin[s - 1])
        q_ref = rotate_half_split(q2, cos[s - 1], sin[s - 1])
        ref = torch.nn.functional.scaled_dot_product_attention(
            q_ref.transpose(1, 2), k_ref.transpose(1, 2), vc.transpose(1, 2), enable_gqa=True)
        del k_ref, q_ref
    out = torch.full_like(q2, float("nan"))
    p = FaDecodeParams()
    fa.check(fa.lib.fa_decode_params_init(ctypes.byref(p), ctypes.sizeof(p)), "fa_decode_params_init")
    p.q, p.k_cache, p.v_cache, p.out = (describe(t, code) for t in (q2, k_cache, v_cache, out))
    p.cache_seqlens = describe(lens, FA_DTYPE_INT32)
    if table is not None:
        p.block_table = describe(table, FA_DTYPE_INT32)
    host_lens = (ctypes.c_int32 * B)(*host_lens_list)
    p.cache_seqlens_host = ctypes.cast(host_lens, ctypes.POINTER(ctypes.c_int32))
    if batch_idx is not None:
        p.cache_batch_idx = describe(batch_idx, FA_DTYPE_INT32)
    if leftpad is not None:
        p.cache_leftpad = describe(leftpad, FA_DTYPE_INT32)
    if rotary:
        p.k_new, p.v_new = describe(k_new, code), describe(v_new, code)
        p.rotary_cos, p.rotary_sin = cos.data_ptr(), sin.data_ptr()
        p.rotary_dim, p.rotary_seqlen, p.rotary_interleaved = D, s, 0
    _check_and_time(fa, ctx, row, p, out, ref, bench, torch)
    del host_lens, k_cache, v_cache, k_new, v_new, cos, sin


def format_table(rows):
    lines = ["bf16 decode B16 32/8 heads D128, 1 token   ours_us  flash_us  cudnn_us  ours/fl  ours TB/s  copy%  "
             "splits  rel.err"]

    def f(x, spec):
        return format(x, spec) if isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x)) else "-"

    for r in rows:
        layout = "contiguous" if r["paged_block"] is None else f"paged {r['paged_block']}"
        if r.get("serving"):
            layout += f" +{r['serving']}"
        if r.get("kv_cache_dtype"):
            layout += f" kv {r['kv_cache_dtype']}"
        o, fl, cu = r["ours_ms"], r["flash_ms"], r["cudnn_ms"]
        ratio = fl / o if o and fl else None  # > 1: ours faster
        pct = 100 * r["ours_tbps"] / r["copy_tbps"] if r.get("ours_tbps") and r.get("copy_tbps") else None
        name = f"S {r['sk'] // 1024:>3}k {layout}"
        if r["b"] != B or r["sq"] != SQ:
            name += f" b{r['b']} q{r['sq']}"
        lines.append(f"{name:41s} {f(o and o * 1e3, '8.1f'):>8} {f(fl and fl * 1e3, '9.1f'):>9} "
                     f"{f(cu and cu * 1e3, '9.1f'):>9} {f(ratio, '8.2f'):>8} {f(r.get('ours_tbps'), '10.2f'):>10} "
                     f"{f(pct, '6.0f'):>6} {f(r.get('ours_splits'), 'd'):>7} {f(r.get('ours_rel_err'), '8.1e'):>8}"
                     + (f"  bf16/fp8 {f(r.get('fp8_speedup'), '.2f')}x" if r.get("kv_cache_dtype") else "")
                     + (f"  [{'; '.join(f'{k}: {v}' for k, v in r['errors'].items())}]" if r.get("errors") else ""))
    if rows:
        lines.append(f"copy ceiling {rows[0]['copy_tbps']:.2f} TB/s (read + write); goals: ours <= flash at 4k "
                     f"(ours/fl >= 1), >= 90% of copy at 32k+; an fp8 cache at least 1.8x our bf16 cache at 32k "
                     f"(bf16/fp8; its TB/s counts the bytes it reads, flash/cudnn stay SDPA's bf16 figures)")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default=os.environ.get("FLASH_ATTENTION_NATIVE_PATH", "build/libflash_attention.so"))
    ap.add_argument("--quick", action="store_true", help="only 4k and 32k")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    rows = decode_rows(args.lib, args.quick)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    print(format_table(rows))
    bad = [r for r in rows if r.get("errors", {}).get("ours") or r.get("errors", {}).get("mismatch")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
