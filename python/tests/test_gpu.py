"""GPU tests of the package (marked gpu; run with `python3 -m pytest python/tests -m gpu`, about 1-3 minutes on an
H200): outputs and gradients against a float64 reference and PyTorch's SDPA for every option the library serves,
varlen, kvcache (contiguous and paged), CUDA-graph capture, torch.compile, and a tiny GPT trained with
flash_attn_func in place of SDPA whose loss curve matches SDPA's. They skip, with the reason, without PyTorch, CUDA
or the library (conftest.py)."""
import itertools
import math

import pytest

import flash_attn_interop as fai
from _support import fp8_kernels, launched_kernels, sm90_dropout_kernels
from flash_attn_interop import _library

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
F = torch.nn.functional
DEV = "cuda"
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402 - after the skip above


def masked_scores(q, k, v, causal, window, softcap, scale, top_left, slopes=None):
    """The scores of reference and its sink/ALiBi variants, [B, H, Sq, Sk] in q's dtype: scale (default 1/sqrt of q's
    head dim D, also when v's differs), softcap, FlashAttention-2's ALiBi bias when slopes ((H,) or (B, H)) are given
    (+slope * j for a causal call without a left window, else -slope * |i + sk - sq - j|), then the masks as flash-attn
    defines them (-inf); and v with its heads repeated to q's (its head dim Dv untouched: it may differ from D)."""
    b, sq, h, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    k = k.repeat_interleave(h // hkv, dim=2)
    v = v.repeat_interleave(h // hkv, dim=2)
    scale = scale or 1.0 / math.sqrt(d)
    s = torch.einsum("bqhd,bkhd->bhqk", q * scale, k)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    off = 0 if top_left else sk - sq
    i = torch.arange(sq, device=q.device)[:, None] + off
    j = torch.arange(sk, device=q.device)[None, :]
    left, right = window
    if causal:
        right = 0
    if slopes is not None:
        column = right == 0 and (left < 0 or left >= sk)
        m = slopes.to(s.dtype).expand(b, h) if slopes.dim() == 1 else slopes.to(s.dtype)
        dist = j.to(s.dtype).expand(sq, sk) if column else -(i - j).abs().to(s.dtype)
        s = s + m.view(b, h, 1, 1) * dist
    mask = torch.zeros(sq, sk, dtype=torch.bool, device=q.device)
    if right >= 0:
        mask |= j > i + right
    if left >= 0:
        mask |= j < i - left
    s = s.masked_fill(mask, float("-inf"))
    return s, v


def reference(q, k, v, causal=False, window=(-1, -1), softcap=0.0, scale=None, top_left=False, upcast=True,
              with_lse=False):
    """Attention in float64 (upcast) or in the inputs' dtype; masks as flash-attn defines them. q and k [B, S, H, D],
    v [B, Sk, Hkv, Dv] with Dv = D or another V head dim (FlashAttention-3's head_dim_v: out [B, Sq, H, Dv], the
    default scale still 1/sqrt(D)). with_lse: (out, lse [B, H, Sq], the natural log of the softmax denominator,
    -inf for a row that sees no key, whose out is 0)."""
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    s, v = masked_scores(q, k, v, causal, window, softcap, scale, top_left)
    if not upcast:
        s = s.float()
    p = torch.softmax(s, dim=-1).nan_to_num(0.0).to(v.dtype)
    out = torch.einsum("bhqk,bkhd->bqhd", p, v)
    return (out, torch.logsumexp(s, dim=-1)) if with_lse else out


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def rand(*shape, dtype=torch.bfloat16, grad=False):
    return torch.randn(*shape, device=DEV, dtype=dtype).requires_grad_(grad)


CASES = [
    # (name, sq, sk, h, hkv, d, kwargs)
    ("plain", 128, 128, 4, 4, 64, {}),
    ("causal-bottom-right", 96, 160, 4, 4, 64, {"causal": True}),
    ("causal-top-left", 96, 160, 4, 4, 64, {"causal": True, "causal_alignment": "top_left"}),
    ("window", 128, 128, 4, 4, 128, {"window_size": (32, 16)}),
    ("causal-window", 128, 192, 4, 2, 64, {"causal": True, "window_size": (48, -1)}),
    ("softcap", 128, 128, 4, 4, 64, {"softcap": 5.0}),
    ("gqa", 128, 128, 8, 2, 128, {"causal": True}),
    ("mqa-scale", 64, 256, 8, 1, 96, {"softmax_scale": 0.05}),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,sq,sk,h,hkv,d,kw", CASES, ids=[c[0] for c in CASES])
def test_forward_backward_against_float64(name, sq, sk, h, hkv, d, kw, dtype):
    torch.manual_seed(0)
    b = 2
    q, k, v = rand(b, sq, h, d, dtype=dtype, grad=True), rand(b, sk, hkv, d, dtype=dtype, grad=True), \
        rand(b, sk, hkv, d, dtype=dtype, grad=True)
    ref_kw = dict(causal=kw.get("causal", False), window=kw.get("window_size", (-1, -1)),
                  softcap=kw.get("softcap", 0.0), scale=kw.get("softmax_scale"),
                  top_left=kw.get("causal_alignment") == "top_left")
    out, lse, _ = fai.flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (b, h, sq) and lse.dtype == torch.float32
    assert_forward_backward_like_float64(q, k, v, out, ref_kw)


def assert_forward_backward_like_float64(q, k, v, out, ref_kw):
    """out = our forward of (q, k, v) (which require grad) and its gradients for a random dout, against the float64
    reference's: as flash-attn's tests, our error within a small multiple of PyTorch's in the same dtype."""
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    ref = reference(q, k, v, **ref_kw)
    rq, rk, rv = torch.autograd.grad(ref, (q, k, v), dout.double())
    pt = reference(q, k, v, upcast=False, **ref_kw)
    pq, pk, pv = torch.autograd.grad(pt, (q, k, v), dout)
    assert max_err(out, ref) <= 2 * max_err(pt, ref) + 1e-3
    for ours, exact, torch_low in ((dq, rq, pq), (dk, rk, pk), (dv, rv, pv)):
        assert max_err(ours, exact) <= 3 * max_err(torch_low, exact) + 1e-3


def test_against_sdpa_is_causal():
    torch.manual_seed(1)
    q, k, v = (rand(2, 256, 8, 64, grad=True) for _ in range(3))
    out = fai.flash_attn_func(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True).transpose(1, 2)
    assert max_err(out, ref) < 2e-2
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), g)
    theirs = torch.autograd.grad(ref, (q, k, v), g)
    for a, r in zip(ours, theirs):
        assert ((a.float() - r.float()).norm() / r.float().norm()).item() < 3e-2


def test_deterministic_backward_is_bitwise_repeatable():
    torch.manual_seed(2)
    q, k, v = (rand(2, 256, 4, 64, grad=True) for _ in range(3))
    g = torch.randn(2, 256, 4, 64, device=DEV, dtype=torch.bfloat16)
    runs = [torch.autograd.grad(fai.flash_attn_func(q, k, v, causal=True, deterministic=True), (q, k, v), g)
            for _ in range(3)]
    for r in runs[1:]:
        for a, b in zip(r, runs[0]):
            assert torch.equal(a, b)


def test_packed_functions_match_unpacked():
    torch.manual_seed(3)
    qkv = rand(2, 128, 3, 4, 64, grad=True)
    out = fai.flash_attn_qkvpacked_func(qkv, causal=True)
    ref = fai.flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=True)
    assert torch.equal(out, ref)
    out.sum().backward()
    assert qkv.grad is not None and qkv.grad.shape == qkv.shape
    q, kv = rand(2, 64, 4, 64), rand(2, 128, 2, 2, 64)
    assert torch.equal(fai.flash_attn_kvpacked_func(q, kv), fai.flash_attn_func(q, kv[:, :, 0], kv[:, :, 1]))


def _varlen_batch(lens, h, hkv, d):
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device=DEV, dtype=torch.int32)
    total = sum(lens)
    return cu, rand(total, h, d, grad=True), rand(total, hkv, d, grad=True), rand(total, hkv, d, grad=True)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_matches_per_sequence(causal):
    torch.manual_seed(4)
    lens = [37, 128, 5, 90]
    cu, q, k, v = _varlen_batch(lens, 4, 2, 64)
    out, lse, _ = fai.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=causal,
                                             window_size=(24, -1), return_attn_probs=True)
    assert lse.shape == (4, sum(lens))
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
    for i, n in enumerate(lens):
        a, e = cu[i].item(), cu[i + 1].item()
        sl = slice(a, e)
        ref = reference(q[sl][None], k[sl][None], v[sl][None], causal=causal, window=(24, -1))[0]
        assert max_err(out[sl], ref) < 2e-2
        rq, rk, rv = torch.autograd.grad(ref, (q, k, v), g[sl].double())
        assert max_err(dq[sl], rq[sl]) < 5e-2 and max_err(dk[sl], rk[sl]) < 5e-2 and max_err(dv[sl], rv[sl]) < 5e-2
    qkv = torch.stack([q.detach(), q.detach(), q.detach()], 1)
    o2 = fai.flash_attn_varlen_qkvpacked_func(qkv, cu, max(lens), causal=causal)
    assert torch.equal(o2, fai.flash_attn_varlen_func(q.detach(), q.detach(), q.detach(), cu, cu, max(lens),
                                                      max(lens), causal=causal))


def paged_cache(k_cache, v_cache, block):
    """The contiguous caches [rows, cap, hkv, d] as they are, or (block given) as pages of `block` positions in a
    shuffled pool: (k_cache, v_cache, block_table int32 [rows, cap / block] or None)."""
    if block is None:
        return k_cache, v_cache, None
    rows, cap, hkv, d = k_cache.shape
    per = cap // block
    perm = torch.randperm(rows * per, device=DEV)
    kc = torch.empty(rows * per, block, hkv, d, device=DEV, dtype=k_cache.dtype)
    vc = torch.empty_like(kc)
    kc[perm] = k_cache.view(rows * per, block, hkv, d)
    vc[perm] = v_cache.view(rows * per, block, hkv, d)
    return kc, vc, perm.view(rows, per).to(torch.int32)


@pytest.mark.parametrize("block", [None, 16, 256])
def test_kvcache_contiguous_and_paged(block):
    torch.manual_seed(5)
    b, h, hkv, d, cap, snew = 3, 8, 2, 128, 512, 2
    seqlens = torch.tensor([100, 1, 300], dtype=torch.int32, device=DEV)
    k_cache, v_cache = rand(b, cap, hkv, d), rand(b, cap, hkv, d)
    q, k_new, v_new = rand(b, snew, h, d), rand(b, snew, hkv, d), rand(b, snew, hkv, d)
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    for i in range(b):
        n = seqlens[i].item()
        expect_k[i, n:n + snew], expect_v[i, n:n + snew] = k_new[i], v_new[i]
    kc, vc, table = paged_cache(k_cache, v_cache, block)
    out, lse = fai.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, cache_seqlens=seqlens, block_table=table,
                                           causal=True, return_softmax_lse=True)
    assert lse.shape == (b, h, snew)
    if table is not None:
        got_k = kc[table.long()].view(b, cap, hkv, d)
    else:
        got_k = kc
    for i in range(b):
        n = seqlens[i].item() + snew
        assert torch.equal(got_k[i, :n], expect_k[i, :n])  # appended in place
        ref = reference(q[i:i + 1], expect_k[i:i + 1, :n], expect_v[i:i + 1, :n], causal=True)
        assert max_err(out[i:i + 1], ref) < 2e-2
    assert seqlens.tolist() == [100, 1, 300]  # only read, as flash-attn


@pytest.mark.parametrize("block", [None, 16])
@pytest.mark.parametrize("sq,snew", [(1, 1), (3, 1), (1, 4), (2, 0)], ids=["1q1k", "3q1k", "1q4k", "2q-no-append"])
@pytest.mark.parametrize("splits", [0, 5])
def test_kvcache_batch_idx_leftpad_and_seqlen_new(block, sq, snew, splits):
    """cache_batch_idx over a shuffled pool of 6 rows (paged: block-table rows), cache_leftpad (0, mid, all cached
    keys), k/v of another seqlen than q; NaN in every slot no sequence may read (before its pad, past its end, rows
    outside the step). Against the float64 reference over positions pad .. len + snew - 1 of each sequence's row."""
    torch.manual_seed(7 + sq * 10 + snew + (block or 0) + splits)
    b, pool, h, hkv, d, cap = 3, 6, 8, 2, 64, 256
    idx = torch.randperm(pool, device=DEV)[:b].to(torch.int32)
    seqlens = torch.tensor([100, 37, 200], dtype=torch.int32, device=DEV)
    pads = torch.tensor([17, 37, 0], dtype=torch.int32, device=DEV)
    k_pool = torch.full((pool, cap, hkv, d), float("nan"), device=DEV, dtype=torch.bfloat16)
    v_pool = torch.full_like(k_pool, float("nan"))
    for i in range(b):
        r, lo, hi = idx[i].item(), pads[i].item(), seqlens[i].item()
        k_pool[r, lo:hi], v_pool[r, lo:hi] = rand(hi - lo, hkv, d), rand(hi - lo, hkv, d)
    q = rand(b, sq, h, d)
    k_new, v_new = (rand(b, snew, hkv, d), rand(b, snew, hkv, d)) if snew else (None, None)
    expect_k, expect_v = k_pool.clone(), v_pool.clone()
    for i in range(b):
        if snew:
            r, n = idx[i].item(), seqlens[i].item()
            expect_k[r, n:n + snew], expect_v[r, n:n + snew] = k_new[i], v_new[i]
    kc, vc, table = paged_cache(k_pool, v_pool, block)
    out, lse = fai.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, cache_seqlens=seqlens, cache_batch_idx=idx,
                                           cache_leftpad=pads, block_table=table, causal=True, num_splits=splits,
                                           return_softmax_lse=True)
    torch.cuda.synchronize()
    got_k = kc if table is None else kc[table.long()].view(pool, cap, hkv, d)
    got_v = vc if table is None else vc[table.long()].view(pool, cap, hkv, d)
    # The cache: appended rows in the picked pool rows, every other slot (NaN included) unchanged.
    assert torch.equal(got_k.isnan(), expect_k.isnan()) and torch.equal(got_v.isnan(), expect_v.isnan())
    assert torch.equal(got_k.nan_to_num(7.0), expect_k.nan_to_num(7.0))
    assert torch.equal(got_v.nan_to_num(7.0), expect_v.nan_to_num(7.0))
    assert not out.isnan().any()
    for i in range(b):
        r, lo, hi = idx[i].item(), pads[i].item(), seqlens[i].item() + snew
        ref = reference(q[i:i + 1], expect_k[r:r + 1, lo:hi], expect_v[r:r + 1, lo:hi], causal=True)
        assert max_err(out[i:i + 1], ref) < 2e-2, i
        if hi == lo:
            assert (out[i] == 0).all() and torch.isinf(lse[i]).all() and (lse[i] > 0).all()
    assert seqlens.tolist() == [100, 37, 200]  # only read, as flash-attn


@pytest.mark.parametrize("block", [None, 16])
@pytest.mark.parametrize("packed_k", [True, False], ids=["cu_k_new", "fixed-k"])
@pytest.mark.parametrize("splits", [0, 3])
def test_kvcache_cu_seqlens_q_and_k_new(block, packed_k, splits):
    """FlashAttention-3's cu_seqlens_q / cu_seqlens_k_new: per-sequence query counts 0/1/4/9 over a packed q (one
    spare row past the sequences, NaN, never written), appended counts of their own (packed k/v) or 2 each, causal
    bottom-right over each sequence's final length; NaN in every cache slot no sequence may read. Against the float64
    reference per sequence."""
    torch.manual_seed(31 + (block or 0) + splits + packed_k)
    b, h, hkv, d, cap = 4, 8, 2, 64, 256
    qn, kn = [0, 1, 4, 9], ([3, 0, 4, 1] if packed_k else [2, 2, 2, 2])
    seqlens = torch.tensor([100, 5, 0, 200], dtype=torch.int32, device=DEV)
    cu_q = torch.tensor([0] + list(torch.tensor(qn).cumsum(0)), device=DEV, dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(kn).cumsum(0)), device=DEV, dtype=torch.int32)
    k_cache = torch.full((b, cap, hkv, d), float("nan"), device=DEV, dtype=torch.bfloat16)
    v_cache = torch.full_like(k_cache, float("nan"))
    for i in range(b):
        n = seqlens[i].item()
        k_cache[i, :n], v_cache[i, :n] = rand(n, hkv, d), rand(n, hkv, d)
    q = rand(sum(qn) + 1, h, d)
    q[-1] = float("nan")
    if packed_k:
        k_new, v_new = rand(sum(kn), hkv, d), rand(sum(kn), hkv, d)
        rows = [slice(cu_k[i].item(), cu_k[i + 1].item()) for i in range(b)]
    else:
        k_new, v_new = rand(b, 2, hkv, d), rand(b, 2, hkv, d)
        rows = [i for i in range(b)]
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    for i in range(b):
        n = seqlens[i].item()
        expect_k[i, n:n + kn[i]], expect_v[i, n:n + kn[i]] = k_new[rows[i]], v_new[rows[i]]
    kc, vc, table = paged_cache(k_cache, v_cache, block)
    out, lse = fai.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, cache_seqlens=seqlens, block_table=table,
                                           causal=True, num_splits=splits, return_softmax_lse=True,
                                           cu_seqlens_q=cu_q, cu_seqlens_k_new=cu_k if packed_k else None,
                                           max_seqlen_q=max(qn))
    torch.cuda.synchronize()
    assert out.shape == q.shape and lse.shape == (h, sum(qn) + 1)
    got_k = kc if table is None else kc[table.long()].view(b, cap, hkv, d)
    got_v = vc if table is None else vc[table.long()].view(b, cap, hkv, d)
    assert torch.equal(got_k.nan_to_num(7.0), expect_k.nan_to_num(7.0))
    assert torch.equal(got_v.nan_to_num(7.0), expect_v.nan_to_num(7.0))
    assert torch.equal(got_k.isnan(), expect_k.isnan())
    for i in range(b):
        a, e = cu_q[i].item(), cu_q[i + 1].item()
        total = seqlens[i].item() + kn[i]
        if e == a:
            continue
        ref, ref_lse = reference(q[a:e][None], expect_k[i:i + 1, :total], expect_v[i:i + 1, :total], causal=True,
                                 with_lse=True)
        assert max_err(out[a:e][None], ref) < 2e-2, i
        # Rows that see no key (sequence 2 with fixed appends: 4 queries over 2 keys, causal): lse +inf here (the
        # library's and flash-attn's convention), -inf in the reference; the others within 1e-3.
        seen = torch.isfinite(ref_lse[0])
        assert max_err(lse[:, a:e][seen], ref_lse[0][seen]) < 1e-3, i
        assert torch.isinf(lse[:, a:e][~seen]).all() and (lse[:, a:e][~seen] > 0).all(), i
    assert seqlens.tolist() == [100, 5, 0, 200]  # only read, as flash-attn


def test_kvcache_cu_seqlens_argument_errors():
    q, kc = rand(5, 4, 64), rand(2, 64, 2, 64)
    cu = torch.tensor([0, 2, 5], device=DEV, dtype=torch.int32)
    seqlens = torch.tensor([3, 4], device=DEV, dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens_q needs max_seqlen_q"):
        fai.flash_attn_with_kvcache(q, kc, kc.clone(), cache_seqlens=seqlens, cu_seqlens_q=cu)
    with pytest.raises(ValueError, match=r"q must be \[total_q, heads, head_dim\]"):
        fai.flash_attn_with_kvcache(q[None], kc, kc.clone(), cache_seqlens=seqlens, cu_seqlens_q=cu, max_seqlen_q=3)
    with pytest.raises(ValueError, match="max_seqlen_q is given without cu_seqlens_q"):
        fai.flash_attn_with_kvcache(q[None], kc, kc.clone(), cache_seqlens=seqlens, max_seqlen_q=3)
    with pytest.raises(ValueError, match="cu_seqlens_k_new is given without k/v"):
        fai.flash_attn_with_kvcache(q, kc, kc.clone(), cache_seqlens=seqlens, cu_seqlens_q=cu, max_seqlen_q=3,
                                    cu_seqlens_k_new=cu)
    with pytest.raises(TypeError, match="cu_seqlens_q must be torch.int32"):
        fai.flash_attn_with_kvcache(q, kc, kc.clone(), cache_seqlens=seqlens, cu_seqlens_q=cu.long(), max_seqlen_q=3)
    # A count above max_seqlen_q is the library's refusal (the host cannot see device counts: reported after).
    fai.flash_attn_with_kvcache(q, kc, kc.clone(), cache_seqlens=seqlens, cu_seqlens_q=cu, max_seqlen_q=2)
    torch.cuda.synchronize()
    with pytest.raises(fai.FlashAttentionError, match="cu_seqlens_q"):
        fai.flash_attn_with_kvcache(q, kc, kc.clone(), cache_seqlens=seqlens, cu_seqlens_q=cu, max_seqlen_q=3)


def rotate(x, cos, sin, positions, interleaved):
    """flash-attn's rotary in float64: x [n, heads, d] at positions [n] (long); tables [seqlen_ro, rotary_dim / 2]; the
    first rotary_dim elements rotated in pairs (2t, 2t+1) when interleaved, else (t, t + rotary_dim/2)."""
    x = x.double().clone()
    rd = 2 * cos.shape[1]
    c, s = cos.double()[positions][:, None, :], sin.double()[positions][:, None, :]
    if interleaved:
        x0, x1 = x[..., 0:rd:2].clone(), x[..., 1:rd:2].clone()
        x[..., 0:rd:2], x[..., 1:rd:2] = x0 * c - x1 * s, x0 * s + x1 * c
    else:
        x0, x1 = x[..., :rd // 2].clone(), x[..., rd // 2:rd].clone()
        x[..., :rd // 2], x[..., rd // 2:rd] = x0 * c - x1 * s, x0 * s + x1 * c
    return x


def rotary_tables(rows, rd, dtype=torch.bfloat16):
    pos = torch.arange(rows, device=DEV, dtype=torch.float64)[:, None]
    theta = pos * 10000.0 ** (-2.0 * torch.arange(rd // 2, device=DEV, dtype=torch.float64) / rd)
    return theta.cos().to(dtype), theta.sin().to(dtype)


@pytest.mark.parametrize("block", [None, 16])
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("rd", [32, 128])
@pytest.mark.parametrize("sq,snew", [(1, 1), (3, 3), (4, 2)], ids=["1q1k", "3q3k", "4q2k"])
def test_kvcache_rotary(block, interleaved, causal, rd, sq, snew):
    """rotary_cos / rotary_sin / rotary_interleaved (flash-attn's names and default) with cache_batch_idx over a
    shuffled pool, cache_leftpad and paging: the new keys rotated at cache_seqlens + j and stored so (within one bf16
    unit of the float64 rotation; every other slot, NaN included, unchanged), the queries at cache_seqlens + i when
    causal, else all at cache_seqlens; the output against the float64 reference over the rotated keys."""
    torch.manual_seed(11 + sq * 10 + snew + (block or 0) + rd + 2 * interleaved + causal)
    b, pool, h, hkv, d, cap = 3, 5, 8, 2, 128, 256
    idx = torch.randperm(pool, device=DEV)[:b].to(torch.int32)
    seqlens = torch.tensor([100, 37, 200], dtype=torch.int32, device=DEV)
    pads = torch.tensor([17, 0, 5], dtype=torch.int32, device=DEV)
    cos, sin = rotary_tables(cap + 8, rd)
    k_pool = torch.full((pool, cap, hkv, d), float("nan"), device=DEV, dtype=torch.bfloat16)
    v_pool = torch.full_like(k_pool, float("nan"))
    for i in range(b):
        r, lo, hi = idx[i].item(), pads[i].item(), seqlens[i].item()
        k_pool[r, lo:hi], v_pool[r, lo:hi] = rand(hi - lo, hkv, d), rand(hi - lo, hkv, d)
    q, k_new, v_new = rand(b, sq, h, d), rand(b, snew, hkv, d), rand(b, snew, hkv, d)
    expect_k, expect_v = k_pool.double(), v_pool.double()
    for i in range(b):
        r, n = idx[i].item(), seqlens[i].item()
        pos = torch.arange(n, n + snew, device=DEV)
        expect_k[r, n:n + snew] = rotate(k_new[i], cos, sin, pos, interleaved)
        expect_v[r, n:n + snew] = v_new[i].double()
    kc, vc, table = paged_cache(k_pool, v_pool, block)
    out = fai.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                      cache_batch_idx=idx, cache_leftpad=pads, block_table=table, causal=causal,
                                      rotary_interleaved=interleaved)
    torch.cuda.synchronize()
    got_k = (kc if table is None else kc[table.long()].view(pool, cap, hkv, d)).double()
    got_v = (vc if table is None else vc[table.long()].view(pool, cap, hkv, d)).double()
    assert torch.equal(got_k.isnan(), expect_k.isnan()) and torch.equal(got_v.isnan(), expect_v.isnan())
    assert torch.equal(got_v.nan_to_num(7.0), expect_v.nan_to_num(7.0))
    k_err = (got_k - expect_k).nan_to_num(0.0).abs()
    assert (k_err <= expect_k.nan_to_num(0.0).abs() / 128 + 1e-6).all(), k_err.max().item()
    assert not out.isnan().any()
    for i in range(b):
        r, lo, hi, n = idx[i].item(), pads[i].item(), seqlens[i].item() + snew, seqlens[i].item()
        pos = n + torch.arange(sq, device=DEV) if causal else torch.full((sq,), n, device=DEV)
        q_rot = rotate(q[i], cos, sin, pos, interleaved)[None]
        ref = reference(q_rot, expect_k[r:r + 1, lo:hi], expect_v[r:r + 1, lo:hi], causal=causal)
        assert max_err(out[i:i + 1], ref) < 2e-2, i
    assert seqlens.tolist() == [100, 37, 200]  # only read, as flash-attn


def test_kvcache_rotary_argument_errors():
    q, kc, vc = rand(1, 1, 4, 64), rand(1, 64, 2, 64), rand(1, 64, 2, 64)
    kn, vn = rand(1, 1, 2, 64), rand(1, 1, 2, 64)
    cos, sin = rotary_tables(64, 32)
    before = kc.clone()
    with pytest.raises(ValueError, match="q's dtype"):
        fai.flash_attn_with_kvcache(q, kc, vc, kn, vn, rotary_cos=cos.half(), rotary_sin=sin.half(), cache_seqlens=3)
    with pytest.raises(fai.FlashAttentionError, match="rotary table too short"):
        fai.flash_attn_with_kvcache(q, kc, vc, kn, vn, rotary_cos=cos[:63], rotary_sin=sin[:63], cache_seqlens=3)
    c24, s24 = rotary_tables(64, 24)
    with pytest.raises(fai.FlashAttentionError, match="multiple of 16"):
        fai.flash_attn_with_kvcache(q, kc, vc, kn, vn, rotary_cos=c24, rotary_sin=s24, cache_seqlens=3)
    torch.cuda.synchronize()
    assert torch.equal(kc, before)  # refused before anything was written


def test_cuda_graph_capture_of_a_rotary_generation_step():
    """A whole generation step (rotate and append k/v, rotate q, attend; paged) captured in a CUDA graph: a replay
    writes the bits of an eager call on the same inputs, cache included."""
    torch.manual_seed(13)
    b, h, hkv, d, cap, block = 2, 8, 2, 128, 256, 16
    per = cap // block
    table = torch.randperm(b * per, device=DEV).view(b, per).to(torch.int32)
    kc0, vc0 = rand(b * per, block, hkv, d), rand(b * per, block, hkv, d)
    kc, vc = kc0.clone(), vc0.clone()
    seqlens = torch.tensor([70, 201], dtype=torch.int32, device=DEV)
    cos, sin = rotary_tables(cap, 64)
    q, kn, vn = rand(b, 1, h, d), rand(b, 1, hkv, d), rand(b, 1, hkv, d)

    def step(kc_, vc_):
        return fai.flash_attn_with_kvcache(q, kc_, vc_, kn, vn, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                           block_table=table, causal=True, rotary_interleaved=False)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(kc, vc)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(kc, vc)
    for _ in range(2):
        with torch.no_grad():
            kc.copy_(kc0)
            vc.copy_(vc0)
            for t in (q, kn, vn):
                t.copy_(torch.randn_like(t))
        graph.replay()
        torch.cuda.synchronize()
        kce, vce = kc0.clone(), vc0.clone()
        eager = step(kce, vce)
        assert torch.equal(static_out, eager)
        assert torch.equal(kc, kce) and torch.equal(vc, vce)


def test_kvcache_device_only_bad_batch_idx_is_reported():
    """A cache_batch_idx entry outside the pool: the kernels clamp it (no access outside the cache) and the next call
    on the context raises FlashAttentionError with FA_STATUS_DEVICE_CHECK_FAILED naming cache_batch_idx."""
    q, kc, vc = rand(2, 1, 4, 64), rand(3, 128, 4, 64), rand(3, 128, 4, 64)
    idx = torch.tensor([0, 3], dtype=torch.int32, device=DEV)
    fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=50, cache_batch_idx=idx)
    torch.cuda.synchronize()
    with pytest.raises(fai.FlashAttentionError) as ei:
        fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=50, cache_batch_idx=idx.clamp(max=2))
    assert ei.value.status == 7 and "cache_batch_idx" in ei.value.message
    out = fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=50, cache_batch_idx=idx.clamp(max=2))
    ref = reference(q, kc[[0, 2], :50], vc[[0, 2], :50])
    assert max_err(out, ref) < 2e-2


def test_kvcache_int_seqlens_and_num_splits():
    torch.manual_seed(6)
    q, kc, vc = rand(2, 1, 4, 64), rand(2, 256, 4, 64), rand(2, 256, 4, 64)
    a = fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=200, num_splits=1)
    b = fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=200, num_splits=4)
    ref = reference(q, kc[:, :200], vc[:, :200])
    assert max_err(a, ref) < 2e-2 and max_err(b, ref) < 2e-2


def test_library_error_becomes_python_exception():
    q = rand(1, 16, 4, 512)  # head dim above what the library serves
    with pytest.raises(fai.FlashAttentionError) as ei:
        fai.flash_attn_func(q, q, q)
    assert ei.value.status == 2 and "head" in ei.value.message


def test_runs_on_the_current_stream():
    s = torch.cuda.Stream()
    q, k, v = (rand(2, 512, 8, 128) for _ in range(3))
    ref = fai.flash_attn_func(q, k, v)
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        torch.cuda._sleep(10_000_000)  # keeps the side stream busy: a wrong stream would read early or race
        out = fai.flash_attn_func(q, k, v)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(out, ref)


def test_cuda_graph_capture_forward_and_backward():
    torch.manual_seed(7)
    q, k, v = (rand(2, 128, 4, 64, grad=True) for _ in range(3))
    g = torch.randn(2, 128, 4, 64, device=DEV, dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up (contexts, allocator) outside the capture
        for _ in range(2):
            o = fai.flash_attn_func(q, k, v, causal=True)
            o.backward(g)
            q.grad = k.grad = v.grad = None
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fai.flash_attn_func(q, k, v, causal=True)
        static_out.backward(g)
    for _ in range(2):
        with torch.no_grad():
            for t in (q, k, v):
                t.copy_(torch.randn_like(t))
        graph.replay()
        torch.cuda.synchronize()
        qe, ke, ve = (t.detach().clone().requires_grad_() for t in (q, k, v))
        eager = fai.flash_attn_func(qe, ke, ve, causal=True)
        eager.backward(g)
        assert torch.equal(static_out, eager)
        assert max_err(q.grad, qe.grad) < 1e-2 and max_err(v.grad, ve.grad) < 1e-2


def _custom_ops():
    from flash_attn_interop import _ops
    if not _ops.HAS_CUSTOM_OP:
        pytest.skip("this PyTorch has no torch.library.custom_op (before 2.4): the autograd.Function is all there is")
    return _ops


class _RecordOps(TorchDispatchMode):
    """A dispatch mode that records the name of every op it sees (a mode also makes a call go through the custom ops
    instead of the eager path)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_path_and_custom_op_agree_bitwise():
    # A plain eager call skips the custom op (host time); what torch.compile's graph calls is the op: same bits.
    ops = _custom_ops()
    torch.manual_seed(11)
    q, k, v = (rand(2, 128, 4, 64, grad=True) for _ in range(3))
    g = torch.randn(2, 128, 4, 64, device=DEV, dtype=torch.bfloat16)
    out, lse, _ = fai.flash_attn_func(q, k, v, causal=True, deterministic=True, return_attn_probs=True)
    assert type(out.grad_fn).__name__ == "_EagerAttentionBackward"
    grads = torch.autograd.grad(out, (q, k, v), g)
    out2, lse2 = ops.fwd_op(q, k, v, 0.0, True, 0, -1, -1, 0.0, True, None, None, 0, 0)
    assert type(out2.grad_fn).__name__ != "_EagerAttentionBackward"
    grads2 = torch.autograd.grad(out2, (q, k, v), g)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)
    for a, b in zip(grads, grads2):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(fai.flash_attn_func(q, k, v, causal=True), out)  # no lse computed there


def test_modes_see_the_custom_op_and_a_device_context_does_not_need_it():
    _custom_ops()
    q = rand(1, 64, 2, 64, grad=True)
    ref = fai.flash_attn_func(q, q, q, causal=True)
    with _RecordOps() as mode:
        out = fai.flash_attn_func(q, q, q, causal=True)
    assert any("flash_attn_interop.fwd" in o for o in mode.ops), mode.ops
    assert torch.equal(out, ref)
    with torch.device(DEV):  # a TorchFunctionMode that changes factory defaults only: still the eager path
        out = fai.flash_attn_func(q, q, q, causal=True)
    assert type(out.grad_fn).__name__ == "_EagerAttentionBackward" and torch.equal(out, ref)


class Block(torch.nn.Module):
    """One causal self-attention layer; attn="flash" calls flash_attn_func, "sdpa" PyTorch's SDPA."""

    def __init__(self, dim, heads, attn):
        super().__init__()
        self.heads, self.attn = heads, attn
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.proj = torch.nn.Linear(dim, dim, bias=False)
        self.ln1, self.ln2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, s, c = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, c // self.heads)
        if self.attn == "flash":
            y = fai.flash_attn_qkvpacked_func(qkv, causal=True)
        else:
            q, k, v = qkv.unbind(2)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True).transpose(1, 2)
        x = x + self.proj(y.reshape(b, s, c))
        return x + self.mlp(self.ln2(x))


class GPT(torch.nn.Module):
    def __init__(self, attn, vocab=64, dim=128, heads=4, layers=2, seq=128):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Parameter(torch.zeros(seq, dim))
        self.blocks = torch.nn.ModuleList(Block(dim, heads, attn) for _ in range(layers))
        self.head = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)


def test_torch_compile_of_a_module_using_flash_attn_func():
    if not hasattr(torch, "compile"):
        pytest.skip("this PyTorch has no torch.compile")
    torch.manual_seed(8)
    blk = Block(128, 4, "flash").to(DEV, torch.bfloat16)
    x = rand(2, 64, 128, grad=True)
    eager = blk(x)
    compiled = torch.compile(blk, fullgraph=True)
    out = compiled(x)
    assert max_err(out, eager) < 5e-2
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()


def _train(attn, steps, data):
    torch.manual_seed(9)
    model = GPT(attn).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        x, y = data[step % len(data)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_tiny_gpt_trains_like_sdpa():
    g = torch.Generator(device=DEV).manual_seed(10)
    # A learnable sequence task: each token is the previous one plus a per-sequence stride (mod 64).
    data = []
    for _ in range(16):
        start = torch.randint(0, 64, (32, 1), device=DEV, generator=g)
        stride = torch.randint(1, 8, (32, 1), device=DEV, generator=g)
        seq = (start + stride * torch.arange(129, device=DEV)) % 64
        data.append((seq[:, :-1], seq[:, 1:]))
    steps = 300
    flash = _train("flash", steps, data)
    sdpa = _train("sdpa", steps, data)
    head = sum(flash[:10]) / 10
    f_tail, s_tail = sum(flash[-30:]) / 30, sum(sdpa[-30:]) / 30
    assert f_tail < 0.5 * head, (head, f_tail)  # it learned
    # The two curves agree within bf16 noise along the way, not only at the end.
    for a, b in ((flash[i:i + 30], sdpa[i:i + 30]) for i in range(0, steps, 60)):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        assert abs(ma - mb) <= 0.1 * mb + 0.05, (ma, mb)
    assert abs(f_tail - s_tail) <= 0.1 * s_tail + 0.05, (f_tail, s_tail)


# ---- fp8 (e4m3) forward: FlashAttention-3's fp8 forward, against a float64 reference with FA3's tolerance rule -------

FP8 = getattr(torch, "float8_e4m3fn", None)


def fp8_served():
    """The library's fp8 forward runs on the sm90 kernels: compute capability 9.0 (H100/H200) in a build that lists
    them. Elsewhere every fp8 call must be refused with FA_STATUS_UNSUPPORTED (asserted, not skipped)."""
    return torch.cuda.get_device_capability() == (9, 0) and fp8_kernels(_library.load_library())


def fp8_call(fn):
    """fn()'s result where the fp8 forward is served; None after checking the refusal where it is not."""
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    if fp8_served():
        return fn()
    with pytest.raises(fai.FlashAttentionError) as ei:
        fn()
    assert ei.value.status == 2 and "fp8" in ei.value.message, ei.value.message
    return None


def fp8_rand(*shape, scale=1.0):
    """FA3's fp8 inputs: bf16 normal values (times scale) converted to e4m3."""
    return (torch.randn(*shape, device=DEV, dtype=torch.bfloat16) * scale).to(FP8)


def fp8_descale(kind, b, hkv):
    """None (factor 1), one factor for the whole tensor (strides 0), or FA3's rand(b, hkv) * 2."""
    if kind == "none":
        return None
    if kind == "tensor":
        return (torch.rand(1, 1, device=DEV) * 2).expand(b, hkv)
    return torch.rand(b, hkv, device=DEV) * 2


def reference_fp8(q8, k8, v8, qd=None, kd=None, vd=None, causal=False, window=(-1, -1), softcap=0.0, scale=None,
                  top_left=False, round_p=False):
    """(out, lse) in float64 on the dequantized values (q by its KV head's factor); round_p: each weight
    256 * e^(x - max) rounded to e4m3 before P.V as the kernel rounds it (the row sum unrounded), FA3's pt."""
    b, sq, h, d = q8.shape
    sk, hkv = k8.shape[1], k8.shape[2]
    if sk == 0:  # no key at all: every row sees none
        return (torch.zeros(b, sq, h, d, dtype=torch.float64, device=DEV),
                torch.full((b, h, sq), float("inf"), dtype=torch.float64, device=DEV))
    g = h // hkv
    q, k, v = q8.double(), k8.double(), v8.double()
    if qd is not None:
        q = q * qd.double().repeat_interleave(g, dim=1)[:, None, :, None]
    if kd is not None:
        k = k * kd.double()[:, None, :, None]
    if vd is not None:
        v = v * vd.double()[:, None, :, None]
    k, v = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
    scale = scale or 1.0 / math.sqrt(d)
    s = torch.einsum("bqhd,bkhd->bhqk", q * scale, k)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    off = 0 if top_left else sk - sq
    i = torch.arange(sq, device=DEV)[:, None] + off
    j = torch.arange(sk, device=DEV)[None, :]
    left, right = window
    if causal:
        right = 0
    mask = torch.zeros(sq, sk, dtype=torch.bool, device=DEV)
    if right >= 0:
        mask |= j > i + right
    if left >= 0:
        mask |= j < i - left
    s = s.masked_fill(mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    empty = torch.isinf(m) & (m < 0)
    m = m.masked_fill(empty, 0.0)
    w = torch.exp(s - m)
    total = w.sum(-1, keepdim=True)
    p = (w * 256).to(FP8).double() / 256 if round_p else w
    out = torch.einsum("bhqk,bkhd->bqhd", p / total.clamp_min(1e-300), v)
    lse = (m + torch.log(total)).squeeze(-1).masked_fill(empty.squeeze(-1), float("inf"))
    return out, lse


def lse_bound(q8, k8, qd, kd, scale):
    """Our LSE bound (tests/.../Float8Testing.cs): 1e-4 * max(1, |ref|) is added by the caller; this is
    2^-10 * scale * sum_x |q_x| * max_j |k_jx| on the true values, per (b, h, i)."""
    b, sq, h, d = q8.shape
    g = h // k8.shape[2]
    if k8.shape[1] == 0:
        return torch.zeros(b, h, sq, dtype=torch.float64, device=DEV)
    q, k = q8.double(), k8.double()
    if qd is not None:
        q = q * qd.double().repeat_interleave(g, dim=1)[:, None, :, None]
    if kd is not None:
        k = k * kd.double()[:, None, :, None]
    kmax = k.abs().amax(dim=1).repeat_interleave(g, dim=1)  # [b, h, d]
    return (q.abs() * kmax[:, None]).sum(-1).transpose(1, 2) * scale / 1024  # [b, h, sq]


def assert_fp8_close(out, ref, pt, softcap, what=""):
    """FA3's rule: every element finite, max|out - ref| <= rtol * max|pt - ref| + 2 * max|(ref + 0.3 - 0.3) - ref|
    with the last term in bf16 arithmetic on the bf16 ref (as FA3 evaluates it), rtol 2 (3 with softcap)."""
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all(), what
    rb = ref.bfloat16()
    noise = ((rb + 0.3) - 0.3 - rb).abs().max().item()
    rtol = 3 if softcap > 0 else 2
    err, pt_err = max_err(out, ref), max_err(pt.bfloat16(), ref)
    assert err <= rtol * pt_err + 2 * noise, f"{what}: max|out-ref| {err:.3e} > {rtol} * {pt_err:.3e} + 2 * {noise:.3e}"


def assert_lse_close(lse, ref_lse, bound, what=""):
    inf = torch.isinf(ref_lse)
    assert torch.equal(torch.isposinf(lse), inf), f"{what}: +inf exactly where a row sees no key"
    tol = 1e-4 * ref_lse[~inf].abs().clamp_min(1.0) + bound[~inf]
    diff = (lse[~inf].double() - ref_lse[~inf]).abs()
    assert (diff <= tol).all(), f"{what}: lse off by {diff.max().item():.3e}"


FP8_CASES = [
    # (name, sq, sk, h, hkv, d, kwargs)
    ("plain-d64", 128, 128, 4, 4, 64, {}),
    ("causal-d128", 113, 203, 8, 2, 128, {"causal": True}),
    ("causal-top-left-d256", 203, 113, 4, 4, 256, {"causal": True, "causal_alignment": "top_left"}),
    ("window-d80", 150, 301, 4, 2, 80, {"window_size": (40, 16)}),
    ("softcap-d144", 128, 217, 6, 1, 144, {"softcap": 15.0}),
    ("causal-window-softcap-d128", 217, 128, 8, 8, 128, {"causal": True, "window_size": (7, -1), "softcap": 30.0}),
    ("mqa-scale-d64", 1, 1023, 16, 1, 64, {"softmax_scale": 0.05}),
    ("long-gqa-d128", 1023, 1023, 32, 8, 128, {"causal": True}),
    # Unmasked head-dim-128 calls of 3000 keys run the 224-key kernel (sm90/fwd_launch.cuh fwd_fp8_wide_pays; 13
    # blocks of 224 and one of 88).
    ("long-plain-d128", 200, 3000, 4, 2, 128, {}),
]


@pytest.mark.parametrize("descales", ["none", "tensor", "head"])
@pytest.mark.parametrize("name,sq,sk,h,hkv,d,kw", FP8_CASES, ids=[c[0] for c in FP8_CASES])
def test_fp8_forward_against_float64(name, sq, sk, h, hkv, d, kw, descales):
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    torch.manual_seed(100)
    b = 2
    softcap = kw.get("softcap", 0.0)
    q = fp8_rand(b, sq, h, d, scale=softcap / 4 if softcap > 0 else 1.0)  # FA3: q * softcap / 4
    k, v = fp8_rand(b, sk, hkv, d), fp8_rand(b, sk, hkv, d)
    qd, kd, vd = (fp8_descale(descales, b, hkv) for _ in range(3))
    got = fp8_call(lambda: fai.flash_attn_func(q, k, v, return_attn_probs=True, q_descale=qd, k_descale=kd,
                                               v_descale=vd, **kw))
    if got is None:
        return
    out, lse, _ = got
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert lse.shape == (b, h, sq) and lse.dtype == torch.float32
    ref_kw = dict(causal=kw.get("causal", False), window=kw.get("window_size", (-1, -1)), softcap=softcap,
                  scale=kw.get("softmax_scale"), top_left=kw.get("causal_alignment") == "top_left")
    ref, ref_lse = reference_fp8(q, k, v, qd, kd, vd, **ref_kw)
    pt, _ = reference_fp8(q, k, v, qd, kd, vd, round_p=True, **ref_kw)
    assert_fp8_close(out, ref, pt, softcap, name)
    assert_lse_close(lse, ref_lse, lse_bound(q, k, qd, kd, kw.get("softmax_scale") or 1 / math.sqrt(d)), name)
    # Rows that see no key: exactly 0 (FA3's pt and ref are 0 there too, so the rule alone would not see it).
    empty = torch.isinf(ref_lse).transpose(1, 2)[..., None].expand_as(out)
    assert (out[empty] == 0).all()


@pytest.mark.parametrize("causal", [True, False])
def test_fp8_varlen_with_empty_sequences(causal):
    """Unmasked, the longest sequence's 3000 keys take the 224-key kernel at head dim 128 (fwd_fp8_wide_pays reads the
    longest), so the other sequences run it too."""
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    torch.manual_seed(101)
    lens_q, lens_k = [37, 0, 1, 128, 90, 5], [50, 3, 0, 3000, 1, 0]
    h, hkv, d = 8, 2, 128
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), device=DEV, dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), device=DEV, dtype=torch.int32)
    q, k, v = fp8_rand(sum(lens_q), h, d), fp8_rand(sum(lens_k), hkv, d), fp8_rand(sum(lens_k), hkv, d)
    qd, kd, vd = (fp8_descale("head", len(lens_q), hkv) for _ in range(3))
    got = fp8_call(lambda: fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                                      return_attn_probs=True, q_descale=qd, k_descale=kd,
                                                      v_descale=vd))
    if got is None:
        return
    out, lse, _ = got
    assert out.dtype == torch.bfloat16 and lse.shape == (h, sum(lens_q))
    for i in range(len(lens_q)):
        a, e, ka, ke = cu_q[i].item(), cu_q[i + 1].item(), cu_k[i].item(), cu_k[i + 1].item()
        if e == a:
            continue
        one = (q[a:e][None], k[ka:ke][None], v[ka:ke][None], qd[i:i + 1], kd[i:i + 1], vd[i:i + 1])
        ref, ref_lse = reference_fp8(*one, causal=causal)
        pt, _ = reference_fp8(*one, causal=causal, round_p=True)
        what = f"sequence {i} (sq {e - a}, sk {ke - ka})"
        assert_fp8_close(out[a:e][None], ref, pt, 0.0, what)
        assert_lse_close(lse[:, a:e][None], ref_lse, lse_bound(q[a:e][None], k[ka:ke][None], qd[i:i + 1],
                                                                kd[i:i + 1], 1 / math.sqrt(d)), what)


def test_fp8_packed_and_strided_inputs_match_contiguous_copies():
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    torch.manual_seed(102)
    qkv = fp8_rand(2, 160, 3, 4, 64)
    qd, kd, vd = (fp8_descale("head", 2, 4) for _ in range(3))
    packed = fp8_call(lambda: fai.flash_attn_qkvpacked_func(qkv, causal=True, q_descale=qd, k_descale=kd,
                                                             v_descale=vd))
    if packed is None:
        return
    q, k, v = (qkv[:, :, i].contiguous() for i in range(3))
    plain = fai.flash_attn_func(q, k, v, causal=True, q_descale=qd, k_descale=kd, v_descale=vd)
    assert torch.equal(packed, plain)  # the strided views read in place give the same bits
    kv = torch.stack([k, v], 2)
    assert torch.equal(fai.flash_attn_kvpacked_func(q, kv, causal=True, q_descale=qd, k_descale=kd, v_descale=vd),
                       plain)
    # A transposed (non-contiguous) descale table reads the same factors.
    kd_t = kd.t().contiguous().t()
    assert kd_t.stride() != kd.stride()
    assert torch.equal(fai.flash_attn_func(q, k, v, causal=True, q_descale=qd, k_descale=kd_t, v_descale=vd), plain)
    # Bitwise repeatable.
    assert torch.equal(fai.flash_attn_func(q, k, v, causal=True, q_descale=qd, k_descale=kd, v_descale=vd), plain)


def test_fp8_custom_op_matches_the_eager_call():
    ops = _custom_ops()
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    torch.manual_seed(103)
    q, k, v = fp8_rand(2, 128, 4, 128), fp8_rand(2, 128, 2, 128), fp8_rand(2, 128, 2, 128)
    kd = fp8_descale("head", 2, 2)
    got = fp8_call(lambda: fai.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, k_descale=kd))
    if got is None:
        return
    out, lse, _ = got
    out2, lse2 = ops.fwd_fp8_op(q, k, v, None, kd, None, 0.0, True, 0, -1, -1, 0.0, None, None, 0, 0)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


def test_fp8_refusals_on_the_gpu():
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    q = fp8_rand(1, 64, 2, 64)
    with pytest.raises(fai.UnsupportedArgumentError, match="no backward pass"):
        fai.flash_attn_func(q.float().requires_grad_().to(FP8), q, q)  # a non-leaf that requires grad
    with pytest.raises(fai.UnsupportedArgumentError, match="float8_e4m3fn"):
        fai.flash_attn_with_kvcache(q, q, q)
    with pytest.raises(fai.FlashAttentionError) as ei:  # the d % 16 rule, from the library
        q24 = fp8_rand(1, 64, 2, 32)[..., :24]
        fai.flash_attn_func(q24, q24, q24)
    assert ei.value.status in (1, 2) and "16" in ei.value.message


# ---- fp8 KV cache (C ABI 0.13): flash_attn_with_kvcache over torch.float8_e4m3fn caches with k_descale / v_descale --
# Served by every decode kernel on any GPU the library runs on (the sm80 decode kernels; Hopper runs them too).

def e4m3_of(x, descale):
    """The header's quantization with torch's own cast: float(x) (x already of q's dtype) / descale per KV head (x
    [..., hkv, d], descale (hkv,) or (1,)) in fp32, then e4m3 nearest even. torch's float8_e4m3fn cast rounds to nearest
    even but does not saturate (past 448 it gives NaN), so the values are clamped to +-448 first (+-Inf too; clamp
    keeps NaN, which the cast keeps)."""
    q = x.float() / descale.float().view(-1, 1)
    return q.clamp(-448.0, 448.0).to(FP8)


def dequant(c8, descale):
    """An fp8 cache [..., hkv, d] as attended, in float64: each byte's value times its KV head's descale."""
    return c8.double() * descale.double().view(-1, 1)


def kv_descales(hkv, per_tensor):
    """k_descale and v_descale about amax / 448 for amax in [2, 3] (values of [-2, 2] quantize without saturating),
    one per KV head or one for the cache."""
    n = 1 if per_tensor else hkv
    return (2 + torch.rand(n, device=DEV)) / 448, (2 + torch.rand(n, device=DEV)) / 448


def bytes_of(c8):
    """An fp8 tensor's bytes (uint8 view): copies, indexing and comparisons run on these (torch does not implement
    every op for float8_e4m3fn)."""
    return c8.view(torch.uint8)


def paged_fp8(k_cache, v_cache, block):
    """paged_cache of fp8 caches, moved as bytes: (k_cache, v_cache, block_table or None), fp8."""
    kc, vc, table = paged_cache(bytes_of(k_cache), bytes_of(v_cache), block)
    return kc.view(FP8), vc.view(FP8), table


def unpaged_bytes(c8, table, rows, cap):
    """The bytes of a (paged) fp8 cache as [rows, cap, hkv, d]."""
    b8 = bytes_of(c8)
    return b8 if table is None else b8[table.long()].view(rows, cap, *b8.shape[2:])


def e4m3_ordinal(b8):
    """Signed position of e4m3 bytes on the number line (+-0 both 0): neighbouring values differ by 1."""
    mag = (b8 & 0x7F).int()
    return torch.where((b8 & 0x80) != 0, -mag, mag)


def fp8_cache_of(rows, cap, hkv, d, kd, vd, nan_from=None):
    """A cache of quantized values of [-2, 2]; positions from nan_from[r] on (a per-row list) hold NaN (0x7F)."""
    kc = e4m3_of(torch.rand(rows, cap, hkv, d, device=DEV) * 4 - 2, kd)
    vc = e4m3_of(torch.rand(rows, cap, hkv, d, device=DEV) * 4 - 2, vd)
    if nan_from is not None:
        for r, n in enumerate(nan_from):
            bytes_of(kc)[r, n:] = 0x7F
            bytes_of(vc)[r, n:] = 0x7F
    return kc, vc


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("block", [None, 16, 256])
@pytest.mark.parametrize("per_tensor", [False, True], ids=["per-head", "per-tensor"])
@pytest.mark.parametrize("splits", [0, 5])
def test_kvcache_fp8_against_float64(dtype, block, per_tensor, splits):
    """An fp8 cache (GQA 8/2, d 128, causal, two new tokens appended): the appended bytes equal torch's quantization of
    the new keys/values (float(k_new) / descale, clamped, cast) bit for bit, every other byte (NaN in every slot no
    call reads) unchanged; the output and lse against the float64 reference on the dequantized cache. Tolerances: the
    16-bit cache test's (bf16 2e-2, fp16 4e-3 on outputs of magnitude up to 2), since the kernel reads the e4m3 bytes
    exactly: its error is the rounding of P to q's dtype and of the output, as over a 16-bit cache."""
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    torch.manual_seed(31 + (block or 0) + splits + per_tensor + (dtype == torch.float16))
    b, h, hkv, d, cap, snew = 3, 8, 2, 128, 512, 2
    lens = [100, 1, 300]
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    kd, vd = kv_descales(hkv, per_tensor)
    k_cache, v_cache = fp8_cache_of(b, cap, hkv, d, kd, vd, nan_from=lens)  # NaN from each length on (appended too)
    q = rand(b, snew, h, d, dtype=dtype) * 2 / 3
    k_new, v_new = rand(b, snew, hkv, d, dtype=dtype).clamp(-2, 2), rand(b, snew, hkv, d, dtype=dtype).clamp(-2, 2)
    expect_k, expect_v = bytes_of(k_cache).clone(), bytes_of(v_cache).clone()
    for i, n in enumerate(lens):
        expect_k[i, n:n + snew] = bytes_of(e4m3_of(k_new[i], kd))
        expect_v[i, n:n + snew] = bytes_of(e4m3_of(v_new[i], vd))
    kc, vc, table = paged_fp8(k_cache, v_cache, block)
    out, lse = fai.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, cache_seqlens=seqlens, block_table=table,
                                           causal=True, num_splits=splits, return_softmax_lse=True, k_descale=kd,
                                           v_descale=vd)
    assert out.dtype == dtype and lse.shape == (b, h, snew)
    # Appended bit for bit, the rest (NaN slots included) as it was.
    assert torch.equal(unpaged_bytes(kc, table, b, cap), expect_k)
    assert torch.equal(unpaged_bytes(vc, table, b, cap), expect_v)
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    for i, n in enumerate(lens):
        kk = dequant(expect_k[i:i + 1, :n + snew].view(FP8), kd)
        vv = dequant(expect_v[i:i + 1, :n + snew].view(FP8), vd)
        ref, ref_lse = reference(q[i:i + 1], kk, vv, causal=True, with_lse=True)
        assert max_err(out[i:i + 1], ref) < tol, i
        assert max_err(lse[i:i + 1], ref_lse) < 2e-3, i
    assert seqlens.tolist() == lens  # only read, as flash-attn


@pytest.mark.parametrize("d", [64, 96, 128, 256])
def test_kvcache_fp8_bf16_query_magnitudes(d):
    """bf16 queries over an fp8 cache whose rows span bf16's range (2^-24 to 2^20 times N(0, 1), so some elements pass
    fp16's 65504): on Hopper the kernel runs its products in fp16 and scales each q row into fp16's range by a power of
    two (FA_DECODE_FP8_HW_CVT), so a wrong or missing per-row scale overflows or loses a row. GQA 8/1 and two query
    tokens fill all 16 rows of a CTA with different magnitudes; head dims with a 32-column tail (96) and with q's
    fragments in shared memory (256). Output against the float64 reference on the dequantized cache (bf16's 2e-2);
    lse relative to its magnitude (2e-3), which reaches 1e6 here."""
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    torch.manual_seed(53 + d)
    b, h, hkv, sq, cap = 2, 8, 1, 2, 320
    lens = [300, 77]
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    kd, vd = kv_descales(hkv, False)
    k_cache, v_cache = fp8_cache_of(b, cap, hkv, d, kd, vd, nan_from=lens)
    exps = torch.tensor([-24, -12, -6, 0, 3, 8, 14, 20], device=DEV, dtype=torch.float64)
    scale = torch.pow(2.0, exps[torch.randperm(8, device=DEV)])  # one magnitude a head, shuffled
    q = (torch.randn(b, sq, h, d, device=DEV, dtype=torch.float64) * scale.view(1, 1, h, 1)).to(torch.bfloat16)
    q[1, 0] = q[1, 1].flip(0)  # token 0 of batch 1: the heads' magnitudes reversed, so rows g and g + 8 differ
    assert q.float().abs().max().item() > 65504.0
    out, lse = fai.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True,
                                           return_softmax_lse=True, k_descale=kd, v_descale=vd)
    for i, n in enumerate(lens):
        kk, vv = dequant(k_cache[i:i + 1, :n], kd), dequant(v_cache[i:i + 1, :n], vd)
        ref, ref_lse = reference(q[i:i + 1], kk, vv, causal=True, with_lse=True)
        assert max_err(out[i:i + 1], ref) < 2e-2, i
        rel = ((lse[i:i + 1].double() - ref_lse).abs() / ref_lse.abs().clamp(min=1.0)).max().item()
        assert rel < 2e-3, (i, rel)


@pytest.mark.parametrize("block", [None, 16])
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
def test_kvcache_fp8_rotary_batch_idx_leftpad_alibi(block, interleaved):
    """The serving options over an fp8 cache: cache_batch_idx over a shuffled pool, cache_leftpad, rotary (the new
    keys rotated in fp32 and rounded to q's dtype before they are quantized: within one e4m3 step of torch's
    quantization of the float64 rotation, since the two roundings to bf16 may differ by one unit), ALiBi, a window
    and softcap; the output against the float64 reference over the stored bytes."""
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    torch.manual_seed(41 + (block or 0) + interleaved)
    b, pool, h, hkv, d, cap, sq, snew = 3, 5, 8, 2, 128, 256, 2, 2
    idx = torch.randperm(pool, device=DEV)[:b].to(torch.int32)
    lens, pads_l = [100, 37, 200], [17, 0, 5]
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    pads = torch.tensor(pads_l, dtype=torch.int32, device=DEV)
    kd, vd = kv_descales(hkv, False)
    k_pool, v_pool = fp8_cache_of(pool, cap, hkv, d, kd, vd, nan_from=[0] * pool)
    for i in range(b):  # the rows the sequences use: values from the pad to the length, NaN elsewhere
        r = idx[i].item()
        kx, vx = fp8_cache_of(1, lens[i] - pads_l[i], hkv, d, kd, vd)
        bytes_of(k_pool)[r, pads_l[i]:lens[i]], bytes_of(v_pool)[r, pads_l[i]:lens[i]] = bytes_of(kx)[0], bytes_of(vx)[0]
    cos, sin = rotary_tables(cap + 8, 64)
    slopes = torch.rand(h, device=DEV) * 0.3
    q, k_new, v_new = rand(b, sq, h, d), rand(b, snew, hkv, d).clamp(-2, 2), rand(b, snew, hkv, d).clamp(-2, 2)
    kc, vc, table = paged_fp8(k_pool, v_pool, block)
    # (A left window of 150 keys: narrower than sequences 0 and 2 see, wider than sequence 1's 39 keys, where
    # masked_scores takes ALiBi's column form and the kernel the distance form: the outputs agree, the lse would not.)
    out = fai.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                      cache_batch_idx=idx, cache_leftpad=pads, block_table=table, causal=True,
                                      window_size=(150, -1), softcap=20.0, alibi_slopes=slopes,
                                      rotary_interleaved=interleaved, k_descale=kd, v_descale=vd)
    torch.cuda.synchronize()
    got_k, got_v = unpaged_bytes(kc, table, pool, cap), unpaged_bytes(vc, table, pool, cap)
    for i in range(b):
        r, n = idx[i].item(), lens[i]
        pos = torch.arange(n, n + snew, device=DEV)
        want_k = bytes_of(e4m3_of(rotate(k_new[i], cos, sin, pos, interleaved).to(torch.bfloat16), kd))
        step = (e4m3_ordinal(got_k[r, n:n + snew]) - e4m3_ordinal(want_k)).abs()
        assert (step <= 1).all(), (i, step.max().item())  # within one e4m3 step
        assert torch.equal(got_v[r, n:n + snew], bytes_of(e4m3_of(v_new[i], vd))), i
    for i in range(b):
        r, lo, hi, n = idx[i].item(), pads_l[i], lens[i] + snew, lens[i]
        q_rot = rotate(q[i], cos, sin, n + torch.arange(sq, device=DEV), interleaved)[None]
        kk, vv = dequant(got_k[r:r + 1, lo:hi].view(FP8), kd), dequant(got_v[r:r + 1, lo:hi].view(FP8), vd)
        s, v_rep = masked_scores(q_rot, kk, vv, True, (150, -1), 20.0, None, False, slopes=slopes.double())
        ref = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1).nan_to_num(0.0), v_rep)
        assert max_err(out[i:i + 1], ref) < 2e-2, i
    assert not out.isnan().any()


def test_kvcache_fp8_saturation_and_nan():
    """Appended values beyond e4m3's range after the descale (|x| / descale from 460 up, and +-Inf) are stored as
    +-448 (0x7E / 0xFE); a NaN new value is stored as NaN and makes that output column NaN; torch's clamp-then-cast
    quantization agrees byte for byte."""
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    torch.manual_seed(51)
    b, h, hkv, d, cap = 2, 4, 2, 64, 128
    lens = [40, 7]
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    kd, vd = kv_descales(hkv, False)
    kc, vc = fp8_cache_of(b, cap, hkv, d, kd, vd, nan_from=[n + 1 for n in lens])
    q = rand(b, 1, h, d)
    k_new, v_new = rand(b, 1, hkv, d), rand(b, 1, hkv, d)
    k_new[0, 0, 0, :8] = torch.tensor([500, -600, 5000, -1e30, float("inf"), float("-inf"), 470, -449],
                                      device=DEV) * kd[0]
    v_new[0, 0, 1, :3] = torch.tensor([float("inf"), -800, 463], device=DEV) * vd[1]
    v_new[1, 0, 0, 5] = float("nan")
    out = fai.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, cache_seqlens=seqlens, k_descale=kd, v_descale=vd)
    torch.cuda.synchronize()
    assert bytes_of(kc)[0, lens[0], 0, :8].tolist() == [0x7E, 0xFE, 0x7E, 0xFE, 0x7E, 0xFE, 0x7E, 0xFE]
    assert bytes_of(vc)[0, lens[0], 1, :3].tolist() == [0x7E, 0xFE, 0x7E]
    assert (bytes_of(vc)[1, lens[1], 0, 5].item() & 0x7F) == 0x7F  # NaN kept
    for i, n in enumerate(lens):
        assert torch.equal(bytes_of(kc)[i, n], bytes_of(e4m3_of(k_new[i, 0], kd))), i
    # Sequence 1's KV head 0 (q heads 0 and 1) attends the NaN value: column 5 NaN there, nothing else.
    nan_at = out.isnan()
    assert nan_at[1, 0, :2, 5].all() and nan_at.sum().item() == 2


def test_kvcache_fp8_custom_op_matches_the_eager_call():
    """A plain eager call over an fp8 cache skips the custom op; the op (what torch.compile's graph calls, with the
    descales in its schema) gives the same bits."""
    ops = _custom_ops()
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    torch.manual_seed(61)
    b, h, hkv, d, cap = 2, 8, 2, 128, 256
    kd, vd = kv_descales(hkv, True)
    kc, vc = fp8_cache_of(b, cap, hkv, d, kd, vd)
    q = rand(b, 1, h, d)
    seqlens = torch.tensor([200, 17], dtype=torch.int32, device=DEV)
    eager = fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, k_descale=kd, v_descale=vd, num_splits=3)
    with _RecordOps() as mode:
        through_op = fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, k_descale=kd, v_descale=vd,
                                                 num_splits=3)
    assert any("flash_attn_interop.decode" in o for o in mode.ops), mode.ops
    assert torch.equal(eager, through_op)


def test_kvcache_fp8_refusals_on_the_gpu():
    """What the library refuses over an fp8 cache comes back as its message; what the package checks first, as
    ValueError / TypeError."""
    if FP8 is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    kd, vd = kv_descales(2, False)
    kc, vc = fp8_cache_of(1, 64, 2, 64, kd, vd)
    q = rand(1, 1, 4, 64)
    with pytest.raises(ValueError, match="needs v_descale"):
        fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=10, k_descale=kd)
    with pytest.raises(TypeError, match="k_descale must be torch.float32"):
        fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=10, k_descale=kd.half(), v_descale=vd)
    with pytest.raises(fai.FlashAttentionError) as ei:
        bad_q = rand(1, 1, 4, 64, dtype=torch.float16)  # q fp16, k/v bf16: the library names the dtypes
        fai.flash_attn_with_kvcache(bad_q, kc, vc, rand(1, 1, 2, 64), rand(1, 1, 2, 64), cache_seqlens=10,
                                    k_descale=kd, v_descale=vd)
    assert ei.value.status == 1 and "k_new.dtype" in ei.value.message


# ---- learnable sinks (C ABI 0.7; FlashAttention-4's learnable_sink) -------------------------------------------------

def reference_sink(q, k, v, sinks, causal=False, window=(-1, -1), softcap=0.0, scale=None, top_left=False,
                   upcast=True):
    """Attention with a sink logit per query head (gpt-oss's reference: the sink as an extra softmax column, dropped
    after the softmax), [B, S, H, D] (v's head dim may differ, as reference's), in float64 (upcast) or in the inputs'
    dtype; returns (out, lse [B, H, Sq])."""
    if upcast:
        q, k, v, sinks = q.double(), k.double(), v.double(), sinks.double()
    b, sq, h = q.shape[:3]
    s, v = masked_scores(q, k, v, causal, window, softcap, scale, top_left)
    if not upcast:
        s = s.float()
    col = sinks.to(s.dtype).view(1, h, 1, 1).expand(b, h, sq, 1)
    full = torch.cat([s, col], dim=-1)
    lse = torch.logsumexp(full, dim=-1)
    p = torch.softmax(full, dim=-1)[..., :-1].to(v.dtype)
    return torch.einsum("bhqk,bkhd->bqhd", p, v), lse


SINK_CASES = [
    # (name, sq, sk, h, hkv, d, kwargs)
    ("plain", 128, 128, 4, 4, 64, {}),
    ("causal-sq-gt-sk", 160, 96, 4, 2, 64, {"causal": True}),  # rows that see no key: out 0, lse = the sink
    ("causal-top-left", 96, 160, 4, 4, 128, {"causal": True, "causal_alignment": "top_left"}),
    ("window-softcap", 128, 192, 8, 2, 64, {"window_size": (32, 8), "softcap": 20.0}),
    ("gqa-scale", 64, 256, 8, 1, 128, {"softmax_scale": 0.07}),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,sq,sk,h,hkv,d,kw", SINK_CASES, ids=[c[0] for c in SINK_CASES])
def test_sinks_forward_backward_against_float64(name, sq, sk, h, hkv, d, kw, dtype):
    torch.manual_seed(11)
    b = 2
    q, k, v = rand(b, sq, h, d, dtype=dtype, grad=True), rand(b, sk, hkv, d, dtype=dtype, grad=True), \
        rand(b, sk, hkv, d, dtype=dtype, grad=True)
    sinks = (torch.randn(h, device=DEV) * 2).requires_grad_(True)
    ref_kw = dict(causal=kw.get("causal", False), window=kw.get("window_size", (-1, -1)),
                  softcap=kw.get("softcap", 0.0), scale=kw.get("softmax_scale"),
                  top_left=kw.get("causal_alignment") == "top_left")
    out, lse, _ = fai.flash_attn_func(q, k, v, return_attn_probs=True, sinks=sinks, **kw)
    dout = torch.randn_like(out)
    dq, dk, dv, ds = torch.autograd.grad(out, (q, k, v, sinks), dout)
    ref, ref_lse = reference_sink(q, k, v, sinks, **ref_kw)
    rq, rk, rv, rs = torch.autograd.grad(ref, (q, k, v, sinks), dout.double())
    pt, _ = reference_sink(q, k, v, sinks, upcast=False, **ref_kw)
    pq, pk, pv, ps = torch.autograd.grad(pt, (q, k, v, sinks), dout)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert max_err(out, ref) <= 2 * max_err(pt, ref) + 1e-3
    assert max_err(lse, ref_lse) <= 1e-4 * max(1.0, ref_lse.abs().max().item())
    for ours, exact, torch_low in ((dq, rq, pq), (dk, rk, pk), (dv, rv, pv)):
        assert max_err(ours, exact) <= 3 * max_err(torch_low, exact) + 1e-3
    # The sink gradient, dsinks[h] = -sum over (batch, row) of e^(sink - lse) * rowsum(dO * O), judged in two parts
    # (as the managed SinkGpuTests and bwd_check judge it). FlashAttention-4's rule (within twice PyTorch's error + 2
    # ulp) is not used: on these 4 numbers it compares one sample of two errors, and ours comes from the rounded O
    # (D = rowsum(dO * O), FlashAttention's formulation) while PyTorch's comes from its unrounded P, so a correct
    # kernel fails it on some seeds.
    assert ds.dtype == torch.float32 and ds.shape == (h,)
    p_ours = torch.exp(sinks.detach().double().view(1, h, 1) - lse.double())  # [b, h, sq]; 1 for rows that see no key
    dsum_ours = (dout.double() * out.detach().double()).sum(-1).permute(0, 2, 1)  # [b, h, sq]
    terms = p_ours * dsum_ours
    want = -terms.sum((0, 2))
    # (1) The reduction, against float64 on the O and LSE the kernel read: fp32 dot products of d terms and sums of
    # b * sq terms, each within (count) * 2^-24 of the sum of the magnitudes (the standard worst-case bound), and
    # e^x in fp32 within a few ulp.
    magnitude = terms.abs().sum((0, 2))
    bound = (b * sq + d + 8) * 2.0 ** -24 * magnitude + 1e-30
    assert ((ds.double() - want).abs() <= bound).all(), (ds, want, bound)
    # (2) End to end, against the float64 reference: what the forward's O and LSE errors (checked above) carry into
    # the formula, to first order, twice over: |dO . (O - O_ref)| per row and |dsum| |p - p_ref|.
    p_ref = torch.exp(sinks.detach().double().view(1, h, 1) - ref_lse.detach().double())
    o_err = (dout.double().abs() * (out.detach().double() - ref.detach()).abs()).sum(-1).permute(0, 2, 1)
    carried = (p_ours * o_err + dsum_ours.abs() * (p_ours - p_ref).abs()).sum((0, 2))
    assert ((ds.double() - rs.double()).abs() <= 2 * carried + bound).all(), (ds, rs, carried)
    if name == "causal-sq-gt-sk":
        empty = sq - sk  # rows 0 .. sq - sk - 1 see no key
        assert torch.equal(out[:, :empty], torch.zeros_like(out[:, :empty]))
        assert torch.equal(lse[:, :, :empty], sinks.detach().view(1, h, 1).expand(b, h, empty))


def test_sinks_learnable_sink_alias_and_low_precision_sinks():
    torch.manual_seed(12)
    q, k, v = rand(1, 64, 4, 64), rand(1, 64, 4, 64), rand(1, 64, 4, 64)
    s32 = torch.randn(4, device=DEV)
    a = fai.flash_attn_func(q, k, v, causal=True, sinks=s32)
    assert torch.equal(a, fai.flash_attn_func(q, k, v, causal=True, learnable_sink=s32))
    assert not torch.equal(a, fai.flash_attn_func(q, k, v, causal=True))  # the sinks change the output
    # bf16 sinks (FlashAttention-4 takes them): computed as their float32 values, gradient back in bf16.
    sbf = s32.bfloat16().requires_grad_(True)
    qg = q.clone().requires_grad_(True)
    out = fai.flash_attn_func(qg, k, v, causal=True, sinks=sbf)
    assert torch.equal(out, fai.flash_attn_func(q, k, v, causal=True, sinks=sbf.detach().float()))
    (g,) = torch.autograd.grad(out.float().sum(), (sbf,))
    assert g.dtype == torch.bfloat16 and g.shape == (4,) and torch.isfinite(g).all() and g.abs().sum() > 0


def test_sinks_varlen_with_empty_sequences():
    torch.manual_seed(13)
    lens_q, lens_k = [37, 0, 1, 20], [50, 7, 1, 0]  # an empty query and an empty key sequence
    h, hkv, d = 4, 2, 64
    cu_q = torch.tensor([0] + list(itertools.accumulate(lens_q)), dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0] + list(itertools.accumulate(lens_k)), dtype=torch.int32, device=DEV)
    q = rand(sum(lens_q), h, d, grad=True)
    k, v = rand(sum(lens_k), hkv, d, grad=True), rand(sum(lens_k), hkv, d, grad=True)
    sinks = torch.randn(h, device=DEV).requires_grad_(True)
    out, lse, _ = fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True,
                                             sinks=sinks, return_attn_probs=True)
    g = torch.randn_like(out)
    dq, dk, dv, ds = torch.autograd.grad(out, (q, k, v, sinks), g)
    ref_ds = torch.zeros(h, dtype=torch.float64, device=DEV)
    for i in range(len(lens_q)):
        a, e = cu_q[i].item(), cu_q[i + 1].item()
        ka, ke = cu_k[i].item(), cu_k[i + 1].item()
        if e == a:
            continue
        if ke == ka:  # no key: out 0, lse = the sink, no gradient
            assert torch.equal(out[a:e], torch.zeros_like(out[a:e]))
            assert torch.equal(lse[:, a:e], sinks.detach()[:, None].expand(h, e - a))
            assert torch.equal(dq[a:e], torch.zeros_like(dq[a:e]))
            continue
        ref, ref_lse = reference_sink(q[a:e][None], k[ka:ke][None], v[ka:ke][None], sinks, causal=True)
        assert max_err(out[a:e], ref[0]) < 2e-2
        assert max_err(lse[:, a:e], ref_lse[0]) < 1e-4 * max(1.0, ref_lse.abs().max().item())
        rq, rk, rv, rs = torch.autograd.grad(ref, (q, k, v, sinks), g[a:e][None].double())
        assert max_err(dq[a:e], rq[a:e]) < 5e-2 and max_err(dk[ka:ke], rk[ka:ke]) < 5e-2
        assert max_err(dv[ka:ke], rv[ka:ke]) < 5e-2
        ref_ds += rs
    assert max_err(ds, ref_ds) < 1e-2 * max(1.0, ref_ds.abs().max().item())


def test_sinks_custom_op_matches_the_eager_call():
    _custom_ops()
    torch.manual_seed(14)
    q, k, v = rand(2, 96, 4, 64, grad=True), rand(2, 96, 2, 64, grad=True), rand(2, 96, 2, 64, grad=True)
    sinks = torch.randn(4, device=DEV).requires_grad_(True)
    eager = fai.flash_attn_func(q, k, v, causal=True, sinks=sinks)
    ge = torch.autograd.grad(eager.float().sum(), (q, k, v, sinks))
    with _RecordOps() as mode:
        op = fai.flash_attn_func(q, k, v, causal=True, sinks=sinks)
        go = torch.autograd.grad(op.float().sum(), (q, k, v, sinks))
    assert any("flash_attn_interop.fwd_sink" in o for o in mode.ops), mode.ops
    assert any("flash_attn_interop.bwd_sink" in o for o in mode.ops), mode.ops
    assert torch.equal(eager, op)
    for a, b in zip(ge, go):
        assert torch.equal(a, b)


# ---- ALiBi (C ABI 0.8; FlashAttention-2's alibi_slopes) -------------------------------------------------------------

def reference_alibi(q, k, v, slopes, causal=False, window=(-1, -1), softcap=0.0, scale=None, top_left=False,
                    upcast=True):
    """Attention with FlashAttention-2's ALiBi bias, [B, S, H, D] (v's head dim may differ, as reference's), in float64
    (upcast) or in the inputs' dtype; slopes (H,) or (B, H). The bias is added after scale and softcap: +slope * j for
    a causal call without a left window (FA2's kernel form, whose lse is larger by slope * (i + sk - sq)), else
    -slope * |i + sk - sq - j| (FA2's tests' attn_bias_from_alibi_slopes, up to that row constant); masked keys -inf.
    Returns (out, lse [B, H, Sq])."""
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    s, v = masked_scores(q, k, v, causal, window, softcap, scale, top_left, slopes)
    if not upcast:
        s = s.float()
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0).to(v.dtype)
    return torch.einsum("bhqk,bkhd->bqhd", p, v), lse


ALIBI_CASES = [
    # (name, sq, sk, h, hkv, d, per_batch, kwargs)
    ("plain", 128, 128, 4, 4, 64, False, {}),
    ("causal", 113, 203, 8, 2, 64, True, {"causal": True}),
    ("causal-sq-gt-sk", 160, 96, 4, 2, 64, False, {"causal": True}),
    ("causal-top-left", 96, 160, 4, 4, 128, True, {"causal": True, "causal_alignment": "top_left"}),
    ("causal-window", 128, 128, 4, 2, 64, False, {"causal": True, "window_size": (17, -1)}),
    ("window-softcap", 128, 192, 8, 2, 64, True, {"window_size": (32, 8), "softcap": 20.0}),
    ("gqa-scale", 64, 256, 8, 1, 128, False, {"softmax_scale": 0.07}),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,sq,sk,h,hkv,d,per_batch,kw", ALIBI_CASES, ids=[c[0] for c in ALIBI_CASES])
def test_alibi_forward_backward_against_float64(name, sq, sk, h, hkv, d, per_batch, kw, dtype):
    """flash-attn's rules: out within 2x PyTorch's own error in the dtype, gradients within 3x; lse to 1e-4."""
    torch.manual_seed(21)
    b = 2
    q, k, v = rand(b, sq, h, d, dtype=dtype, grad=True), rand(b, sk, hkv, d, dtype=dtype, grad=True), \
        rand(b, sk, hkv, d, dtype=dtype, grad=True)
    slopes = torch.rand(b, h, device=DEV) * 0.3 if per_batch else torch.rand(h, device=DEV) * 0.3
    ref_kw = dict(causal=kw.get("causal", False), window=kw.get("window_size", (-1, -1)),
                  softcap=kw.get("softcap", 0.0), scale=kw.get("softmax_scale"),
                  top_left=kw.get("causal_alignment") == "top_left")
    out, lse, _ = fai.flash_attn_func(q, k, v, return_attn_probs=True, alibi_slopes=slopes, **kw)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    ref, ref_lse = reference_alibi(q, k, v, slopes, **ref_kw)
    rq, rk, rv = torch.autograd.grad(ref, (q, k, v), dout.double())
    pt, _ = reference_alibi(q, k, v, slopes, upcast=False, **ref_kw)
    pq, pk, pv = torch.autograd.grad(pt, (q, k, v), dout)
    assert torch.isfinite(out).all()
    assert max_err(out, ref) <= 2 * max_err(pt, ref) + 1e-3
    seen = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), seen)  # rows that see no key: +inf (ours) where the reference has -inf
    assert max_err(lse[seen], ref_lse[seen]) <= 1e-4 * max(1.0, ref_lse[seen].abs().max().item())
    for ours, exact, torch_low in ((dq, rq, pq), (dk, rk, pk), (dv, rv, pv)):
        assert max_err(ours, exact) <= 3 * max_err(torch_low, exact) + 1e-3


def test_alibi_causal_form_shifts_only_the_lse():
    """FA2's causal form (+slope * j) against the distance form of the same mask (causal with a left window of
    sk - 1, which hides nothing more): the same output, lse larger by slope * (i + sk - sq)."""
    torch.manual_seed(22)
    b, sq, sk, h = 2, 77, 130, 4
    q, k, v = rand(b, sq, h, 64), rand(b, sk, h, 64), rand(b, sk, h, 64)
    slopes = torch.rand(b, h, device=DEV) * 0.3
    o1, l1, _ = fai.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes, return_attn_probs=True)
    o2, l2, _ = fai.flash_attn_func(q, k, v, causal=True, window_size=(sk - 1, -1), alibi_slopes=slopes,
                                    return_attn_probs=True)
    assert max_err(o1, o2) < 1e-2
    shift = slopes.view(b, h, 1) * (torch.arange(sq, device=DEV) + sk - sq).view(1, 1, sq)
    assert max_err(l1 - l2, shift) <= 1e-4 * max(1.0, l1.abs().max().item())


@pytest.mark.parametrize("causal", [False, True])
def test_alibi_varlen_matches_per_sequence(causal):
    torch.manual_seed(23)
    lens_q, lens_k, h, hkv, d = [37, 0, 1, 64], [50, 5, 1, 64], 4, 2, 64
    cu_q = torch.tensor([0] + list(itertools.accumulate(lens_q)), dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0] + list(itertools.accumulate(lens_k)), dtype=torch.int32, device=DEV)
    q, k, v = rand(sum(lens_q), h, d), rand(sum(lens_k), hkv, d), rand(sum(lens_k), hkv, d)
    slopes = torch.rand(len(lens_q), h, device=DEV) * 0.3
    out = fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                     alibi_slopes=slopes)
    for i in range(len(lens_q)):
        a, e, c, f = cu_q[i].item(), cu_q[i + 1].item(), cu_k[i].item(), cu_k[i + 1].item()
        if e == a:
            continue
        if f == c:
            assert (out[a:e] == 0).all()
            continue
        ref, _ = reference_alibi(q[None, a:e], k[None, c:f], v[None, c:f], slopes[i], causal=causal)
        assert max_err(out[None, a:e], ref) < 2e-2, i


@pytest.mark.parametrize("block", [None, 16])
def test_alibi_kvcache_with_leftpad(block):
    """flash_attn_with_kvcache with alibi_slopes: keys counted from cache_leftpad; causal keeps FA2's column form at
    seqlen_q 1 (its lse larger by slope * (sk - 1))."""
    torch.manual_seed(24)
    b, h, hkv, d, cap = 3, 8, 2, 64, 256
    seqlens = torch.tensor([100, 37, 200], dtype=torch.int32, device=DEV)
    pads = torch.tensor([17, 0, 150], dtype=torch.int32, device=DEV)
    k_cache, v_cache = rand(b, cap, hkv, d), rand(b, cap, hkv, d)
    q = rand(b, 1, h, d)
    slopes = torch.rand(b, h, device=DEV) * 0.3
    kc, vc, table = paged_cache(k_cache, v_cache, block)
    results = {}
    for causal in (False, True):
        out, lse = fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, cache_leftpad=pads,
                                               block_table=table, causal=causal, alibi_slopes=slopes,
                                               return_softmax_lse=True)
        results[causal] = (out, lse)
        for i in range(b):
            lo, hi = pads[i].item(), seqlens[i].item()
            ref, ref_lse = reference_alibi(q[i:i + 1], k_cache[i:i + 1, lo:hi], v_cache[i:i + 1, lo:hi], slopes[i],
                                           causal=causal)
            assert max_err(out[i:i + 1], ref) < 2e-2, (causal, i)
            assert max_err(lse[i:i + 1], ref_lse) <= 1e-4 * max(1.0, ref_lse.abs().max().item()), (causal, i)
    (o0, l0), (o1, l1) = results[False], results[True]
    assert max_err(o0, o1) < 1e-2
    sk = (seqlens - pads).float()
    assert max_err(l1 - l0, slopes.view(b, h, 1) * (sk - 1).view(b, 1, 1)) <= 1e-3


def test_alibi_custom_op_matches_the_eager_call():
    """A plain eager call with slopes skips the custom op; the op (what torch.compile's graph calls) gives the same
    bits, forward and backward (the slopes get no gradient)."""
    ops = _custom_ops()
    from flash_attn_interop import _args
    torch.manual_seed(25)
    q, k, v = rand(2, 64, 4, 64, grad=True), rand(2, 96, 2, 64, grad=True), rand(2, 96, 2, 64, grad=True)
    slopes = torch.rand(4, device=DEV) * 0.3
    eager, lse, _ = fai.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes, return_attn_probs=True)
    align = _args.CAUSAL_ALIGNMENTS["bottom_right"]
    out, op_lse, _, _ = ops.fwd_sink_op(q, k, v, None, slopes, 0.0, False, 0.0, True, align, -1, -1, 0.0, False, None,
                                        None, 0, 0)
    assert torch.equal(eager, out) and torch.equal(lse, op_lse)
    g = torch.randn_like(out)
    assert all(torch.equal(a, b_) for a, b_ in zip(torch.autograd.grad(eager, (q, k, v), g),
                                                   torch.autograd.grad(out, (q, k, v), g)))


# ---- dropout (C ABI 0.9; FlashAttention-2's dropout_p; sm90 kernels on Hopper, sm80 elsewhere) --------------------

def torch_flash_dropout(q, k, v, p, causal):
    """PyTorch's own FlashAttention-2 kernels with dropout on [B, S, H, D] tensors: (out, keep mask [B, H, Sq, Sk] from
    the sign of S_dmask, FEATURES.md section 1), drawing (seed, offset) from the default CUDA generator as flash-attn
    does. Skips where this PyTorch's flash kernels refuse the call."""
    try:
        r = torch.ops.aten._scaled_dot_product_flash_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                               v.transpose(1, 2), p, causal, True)
    except RuntimeError as e:
        pytest.skip(f"PyTorch's flash attention refuses dropout with the debug mask here: {e}")
    sq, sk = q.shape[1], k.shape[1]
    return r[0].transpose(1, 2), ~torch.signbit(r[-1][:, :, :sq, :sk].float())


def reference_dropout(q, k, v, keep, p, causal, window=(-1, -1), softcap=0.0, slopes=None):
    """float64 attention with the keep mask [B, H, Sq, Sk] applied to P (kept / (1 - p)), flash-attn's bottom-right
    causal, window, softcap and ALiBi slopes, [B, S, H, D] (v's head dim may differ, as reference's)."""
    qd, kd, vd = q.double(), k.double(), v.double()
    s, vr = masked_scores(qd, kd, vd, causal, window, softcap, None, False, slopes)
    pr = torch.softmax(s, dim=-1).nan_to_num(0.0) * keep.double() / (1 - p)
    return torch.einsum("bhqk,bkhd->bqhd", pr, vr)


def reference_dropout_rounded(q, k, v, keep, p, causal, window=(-1, -1), softcap=0.0, slopes=None):
    """reference_dropout with the kernels' roundings: scores, softmax and products in float32, P rounded to q's dtype
    before the mask (FlashAttention-2 drops the rounded P), the output rounded to q's dtype. Its error against the
    float64 reference is the yardstick of a call PyTorch's flash kernels cannot make (window, softcap, GQA)."""
    s, vr = masked_scores(q.float(), k.float(), v.float(), causal, window, softcap, None, False, slopes)
    pr = torch.softmax(s, dim=-1).nan_to_num(0.0).to(q.dtype).float() * keep.float() / (1 - p)
    return torch.einsum("bhqk,bkhd->bqhd", pr, vr).to(q.dtype)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_dropout_draws_pytorch_flash_mask_and_matches_its_error(causal, dtype):
    """After torch.manual_seed(s) our call draws the (seed, offset) PyTorch's flash kernels draw after the same seed,
    so the keep mask (S_dmask >= 0) equals theirs on every visible element; output and gradients are judged against
    the float64 reference under that mask by FlashAttention-2's rule: at most twice PyTorch flash's own error (plus
    1e-5; gradients 3x, as FA2's test_flash_attn_output)."""
    p, b, s, h, d = 0.17, 2, 257, 4, 64
    torch.manual_seed(31)
    q, k, v = (rand(b, s, h, d, dtype=dtype, grad=True) for _ in range(3))
    g = torch.randn_like(q)
    torch.manual_seed(1234)
    pt_out, pt_keep = torch_flash_dropout(q, k, v, p, causal)
    pt_grads = torch.autograd.grad(pt_out, (q, k, v), g)
    torch.manual_seed(1234)
    out, lse, s_dmask = fai.flash_attn_func(q, k, v, dropout_p=p, causal=causal, return_attn_probs=True)
    assert s_dmask.shape == (b, h, s, s) and s_dmask.dtype == dtype
    assert bool(((s_dmask == 1) | (s_dmask == -1)).all()), "S_dmask holds +1 (kept) and -1 (dropped) only"
    keep = s_dmask >= 0
    visible = torch.ones(s, s, dtype=torch.bool, device=DEV)
    if causal:
        visible = visible.tril()
    differ = ((keep != pt_keep) & visible).sum().item()
    assert differ == 0, f"{differ} of {int(visible.sum()) * b * h} keep flags differ from PyTorch flash's"
    rate = keep[:, :, visible].float().mean().item()
    assert abs(rate - 212 / 256) < 0.01, rate  # T = floor(0.83 * 255) = 211: keep (T + 1) / 256
    ref = reference_dropout(q, k, v, keep, p, causal)
    assert max_err(out, ref) <= 2 * max_err(pt_out, ref) + 1e-5
    plain_lse = fai.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)[1]  # (the sm90 kernels on Hopper)
    assert max_err(lse, plain_lse) <= 1e-4 * max(1.0, plain_lse.abs().max().item()), "dropout leaves the lse as it is"
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g.double())
    for name, ours, theirs, r in zip("qkv", grads, pt_grads, ref_grads):
        assert max_err(ours, r) <= 3 * max_err(theirs, r) + 1e-5, name


def test_dropout_varlen_gqa_and_reproducibility():
    """A variable-length GQA batch with an empty sequence: the same seed gives the same output bitwise, the next call
    another mask; the output of each sequence matches the float64 reference under its slice of the keep mask; the
    gradients of a whole-batch loss match the reference's within 2e-2 of their largest magnitude."""
    p, h, hkv, d = 0.3, 4, 2, 64
    lens_q, lens_k = [70, 0, 33, 129], [90, 5, 64, 129]
    cu_q = torch.tensor([0] + list(itertools.accumulate(lens_q)), dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0] + list(itertools.accumulate(lens_k)), dtype=torch.int32, device=DEV)
    torch.manual_seed(32)
    q = rand(sum(lens_q), h, d, grad=True)
    k, v = rand(sum(lens_k), hkv, d, grad=True), rand(sum(lens_k), hkv, d, grad=True)
    mq, mk = max(lens_q), max(lens_k)
    torch.manual_seed(7)
    out, _, s_dmask = fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, dropout_p=p, causal=True,
                                                 return_attn_probs=True)
    assert s_dmask.shape == (len(lens_q), h, mq, mk)
    for i, (lq, lk) in enumerate(zip(lens_q, lens_k)):  # past a sequence's lengths: -1 (dropped), never garbage
        assert bool((s_dmask[i, :, lq:, :] == -1).all()) and bool((s_dmask[i, :, :, lk:] == -1).all()), i
    torch.manual_seed(7)
    again = fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, dropout_p=p, causal=True)
    assert torch.equal(out, again), "the same generator state reproduces the output bitwise"
    other = fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, dropout_p=p, causal=True)
    assert not torch.equal(out, other), "the generator advanced: the next call draws another mask"
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_out = torch.zeros_like(out, dtype=torch.float64)
    for i in range(len(lens_q)):
        a, e, ka, ke = cu_q[i].item(), cu_q[i + 1].item(), cu_k[i].item(), cu_k[i + 1].item()
        if e == a:
            continue
        keep = s_dmask[i:i + 1, :, :e - a, :ke - ka] >= 0
        ref_out[a:e] = reference_dropout(q[a:e][None], k[ka:ke][None], v[ka:ke][None], keep, p, True)[0]
        assert max_err(out[a:e], ref_out[a:e]) < 2e-2, i
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), g.double())
    for name, ours, r in zip("qkv", grads, ref_grads):
        assert max_err(ours, r) < 2e-2 * max(1.0, r.abs().max().item()), name


def expect_dropout_kernels(names, entry, pass_, d):
    """The kernel `entry` launched (names: launched_kernels' list) is a dropout kernel of the path FA_PATH_AUTO takes:
    sm90 on compute capability 9.0 in a build that lists an sm90 dropout kernel of that pass for head dim d's class,
    else sm80."""
    ran = [n for e, n in names if e == entry]
    hopper = torch.cuda.get_device_capability() == (9, 0)
    path = "sm90" if hopper and sm90_dropout_kernels(_library.load_library(), pass_, d) else "sm80"
    assert ran and ran[0].startswith(f"{path}_{pass_}_") and "_dropout_" in ran[0], (entry, ran, path)


def expect_dropout_grads(grads, ref, plain, plain_ref, inputs, g, p):
    """Dropout's gradients (grads, of inputs under the cotangent g) against those of the float64 reference ref, within
    3x the error of the same call without dropout (plain against plain_ref) over 1 - p, the kept dP's scale."""
    pairs = zip(grads, torch.autograd.grad(ref, inputs, g.double()), torch.autograd.grad(plain, inputs, g),
                torch.autograd.grad(plain_ref, inputs, g.double()))
    for name, (ours, r, pg, pr) in zip("qkv", pairs):
        assert max_err(ours, r) <= 3 * max_err(pg, pr) / (1 - p) + 1e-5, name


@pytest.mark.parametrize("d", [64, 96, 128, 192, 200, 256])
@pytest.mark.parametrize("mask", ["full", "causal", "window-softcap-gqa", "varlen-alibi-det"])
def test_dropout_every_head_dim_class(d, mask):
    """Dropout at every head-dim class and two head dims between them, over several key blocks of every kernel's tile
    (333 query rows and keys; 300 rows with the window): on Hopper, in a build with the sm90 dropout kernels
    (FA_SM90_FWD_DROPOUT, FA_SM90_BWD_DROPOUT, which FA_PATH_AUTO then runs), this checks each of them, the forward's
    D 256 80-key blocks starting halfway into a 32-key Philox block on odd blocks; the kernels the library reports
    launching must be the dropout kernels of the path AUTO takes. The output against the float64 reference under the
    keep mask the call returns: full and causal within twice PyTorch flash's own error on the same mask (as
    test_dropout_draws_pytorch_flash_mask_and_matches_its_error; also their gradients, 3x); a window with softcap and
    GQA, and a causal varlen GQA batch with an empty sequence, ALiBi and the deterministic backward (which PyTorch's
    flash kernels lack) within twice the error of the same math with the kernels' roundings
    (reference_dropout_rounded), their gradients within 3x those of the call without dropout (over 1 - p; the
    deterministic ones also bitwise the same on a second run). The lse is that of the call without dropout."""
    lib = _library.load_library()
    p, b, sk = 0.17, 2, 333
    dtype = torch.bfloat16 if d % 128 else torch.float16
    if mask == "varlen-alibi-det":
        h, hkv = 4, 2
        lens_q, lens_k = [130, 0, 97], [150, 40, 97]
        cu_q = torch.tensor([0] + list(itertools.accumulate(lens_q)), dtype=torch.int32, device=DEV)
        cu_k = torch.tensor([0] + list(itertools.accumulate(lens_k)), dtype=torch.int32, device=DEV)
        torch.manual_seed(43 + d)
        q = rand(sum(lens_q), h, d, dtype=dtype, grad=True)
        k, v = rand(sum(lens_k), hkv, d, dtype=dtype, grad=True), rand(sum(lens_k), hkv, d, dtype=dtype, grad=True)
        slopes = torch.rand(h, device=DEV, dtype=torch.float32) * 0.3 + 0.05

        def call(dropout_p):
            return fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), dropout_p=dropout_p,
                                              causal=True, alibi_slopes=slopes, deterministic=True,
                                              return_attn_probs=True)

        torch.manual_seed(99)
        (out, lse, s_dmask), launched = launched_kernels(lib, lambda: call(p))
        expect_dropout_kernels(launched, "fa_forward", "fwd", d)
        plain, plain_lse, _ = call(0.0)
        assert max_err(lse, plain_lse) <= 1e-4 * max(1.0, plain_lse.abs().max().item()), "dropout leaves the lse as it is"
        g = torch.randn_like(out)
        grads, launched = launched_kernels(lib, lambda: torch.autograd.grad(out, (q, k, v), g, retain_graph=True))
        expect_dropout_kernels(launched, "fa_backward", "bwd", d)
        assert all(torch.equal(a, b2) for a, b2 in zip(grads, torch.autograd.grad(out, (q, k, v), g))), \
            "the deterministic backward gives the same bits again"
        ref_out = torch.zeros_like(out, dtype=torch.float64)
        rounded = torch.zeros_like(out)
        plain_ref = torch.zeros_like(out, dtype=torch.float64)
        for i, (lq, lk) in enumerate(zip(lens_q, lens_k)):
            a, e, ka, ke = cu_q[i].item(), cu_q[i + 1].item(), cu_k[i].item(), cu_k[i + 1].item()
            if e == a:
                continue
            keep = s_dmask[i:i + 1, :, :lq, :lk] >= 0
            args = (q[a:e][None], k[ka:ke][None], v[ka:ke][None])
            ref_out[a:e] = reference_dropout(*args, keep, p, True, slopes=slopes)[0]
            rounded[a:e] = reference_dropout_rounded(*args, keep, p, True, slopes=slopes)[0]
            plain_ref[a:e] = reference_dropout(*args, torch.ones_like(keep), 0.0, True, slopes=slopes)[0]
        assert max_err(out, ref_out) <= 2 * max_err(rounded, ref_out) + 1e-5
        expect_dropout_grads(grads, ref_out, plain, plain_ref, (q, k, v), g, p)
        return
    sq = 300 if mask == "window-softcap-gqa" else sk  # (PyTorch's causal mask for Sq != Sk is not flash-attn's)
    h, hkv = (4, 2) if mask == "window-softcap-gqa" else (4, 4)
    causal = mask == "causal"
    window, softcap = ((40, 24), 20.0) if mask == "window-softcap-gqa" else ((-1, -1), 0.0)
    torch.manual_seed(41 + d)
    q = rand(b, sq, h, d, dtype=dtype, grad=True)
    k, v = rand(b, sk, hkv, d, dtype=dtype, grad=True), rand(b, sk, hkv, d, dtype=dtype, grad=True)
    torch.manual_seed(99)
    (out, lse, s_dmask), launched = launched_kernels(lib, lambda: fai.flash_attn_func(
        q, k, v, dropout_p=p, causal=causal, window_size=window, softcap=softcap, return_attn_probs=True))
    expect_dropout_kernels(launched, "fa_forward", "fwd", d)
    keep = s_dmask[:, :, :sq, :sk] >= 0
    ref = reference_dropout(q, k, v, keep, p, causal, window, softcap)
    plain_lse = fai.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap,
                                    return_attn_probs=True)[1]
    assert max_err(lse, plain_lse) <= 1e-4 * max(1.0, plain_lse.abs().max().item()), "dropout leaves the lse as it is"
    if mask == "window-softcap-gqa":
        rounded = reference_dropout_rounded(q, k, v, keep, p, causal, window, softcap)
        assert max_err(out, ref) <= 2 * max_err(rounded, ref) + 1e-5
        # Gradients: within 3x the error of the same call's gradients without dropout, over 1 - p (the kept dP's scale).
        g = torch.randn_like(out)
        grads, launched = launched_kernels(lib, lambda: torch.autograd.grad(out, (q, k, v), g))
        expect_dropout_kernels(launched, "fa_backward", "bwd", d)
        plain = fai.flash_attn_func(q, k, v, window_size=window, softcap=softcap)
        plain_ref = reference(q, k, v, window=window, softcap=softcap)
        expect_dropout_grads(grads, ref, plain, plain_ref, (q, k, v), g, p)
        return
    torch.manual_seed(99)
    pt_out, pt_keep = torch_flash_dropout(q, k, v, p, causal)
    visible = torch.ones(sq, sk, dtype=torch.bool, device=DEV)
    if causal:
        visible = visible.tril()
    assert int(((keep != pt_keep) & visible).sum()) == 0, "the mask PyTorch flash draws after the same seed"
    assert max_err(out, ref) <= 2 * max_err(pt_out, ref) + 1e-5
    g = torch.randn_like(out)
    grads, launched = launched_kernels(lib, lambda: torch.autograd.grad(out, (q, k, v), g))
    expect_dropout_kernels(launched, "fa_backward", "bwd", d)
    pt_grads = torch.autograd.grad(pt_out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g.double())
    for name, ours, theirs, r in zip("qkv", grads, pt_grads, ref_grads):
        assert max_err(ours, r) <= 3 * max_err(theirs, r) + 1e-5, name


def test_dropout_refusals_on_the_gpu():
    q = rand(1, 64, 2, 64)
    if hasattr(torch, "float8_e4m3fn"):  # refused before any device work, on every GPU
        q8 = q.to(torch.float8_e4m3fn)
        with pytest.raises(fai.UnsupportedArgumentError, match="fp8 inputs have no dropout"):
            fai.flash_attn_func(q8, q8, q8, dropout_p=0.1)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="dropout under CUDA graph capture"):
        with torch.cuda.graph(graph):
            fai.flash_attn_func(q, q, q, dropout_p=0.1)


# ---- a separate V head dim (C ABI 0.10; FlashAttention-3's hdim / hdim_v) --------------------------------------------
#
# The library serves (head_dim, head_dim_v) = (192, 128) and (64, 512), fp16 and bf16, on its sm80 kernels and on its
# sm90 kernels too ((64, 512) in two CTAs of 256 output columns per row block; FA_PATH_AUTO takes them on Hopper in a
# build with sm_90a code, but for dropout), so on an H100/H200 these cases check the sm90 forward; (192, 128)'s
# backward runs the sm90 kernels there too.
# Judged as the other forward tests: out within twice PyTorch's own error in the dtype against the float64 reference
# (plus 1e-3), lse within 1e-4 of it (relative, at least absolute), +inf exactly where a row sees no key (whose out
# is exactly 0).

V_PAIRS = [(192, 128), (64, 512)]

VDIM_CASES = [
    # (name, sq, sk, h, hkv, d, dv, kwargs)
    ("d192-dv128", 128, 128, 4, 4, 192, 128, {}),
    ("d192-dv128-causal-gqa", 113, 203, 8, 2, 192, 128, {"causal": True}),
    ("d192-dv128-causal-sq-gt-sk", 203, 113, 4, 4, 192, 128, {"causal": True}),  # rows that see no key
    ("d192-dv128-window-softcap-scale", 150, 301, 4, 2, 192, 128,
     {"window_size": (40, 16), "softcap": 15.0, "softmax_scale": 0.05}),
    ("d64-dv512", 128, 128, 4, 4, 64, 512, {}),
    ("d64-dv512-causal-mqa", 113, 203, 8, 1, 64, 512, {"causal": True}),
    ("d64-dv512-causal-top-left-gqa", 203, 113, 8, 2, 64, 512, {"causal": True, "causal_alignment": "top_left"}),
    ("d64-dv512-causal-window", 217, 217, 4, 2, 64, 512, {"causal": True, "window_size": (31, -1)}),
    ("d64-dv512-window-softcap-scale", 150, 301, 4, 2, 64, 512,
     {"window_size": (40, 16), "softcap": 15.0, "softmax_scale": 0.05}),
    ("d64-dv512-sq1", 1, 333, 8, 2, 64, 512, {}),
]


def _ref_kw(kw):
    return dict(causal=kw.get("causal", False), window=kw.get("window_size", (-1, -1)), softcap=kw.get("softcap", 0.0),
                scale=kw.get("softmax_scale"), top_left=kw.get("causal_alignment") == "top_left")


def assert_v_head_dim_close(out, lse, ref, ref_lse, pt, what=""):
    """out and lse of one call against the float64 reference (ref, ref_lse) and PyTorch's same-dtype pt."""
    assert torch.isfinite(out).all(), what
    err, pt_err = max_err(out, ref), max_err(pt, ref)
    assert err <= 2 * pt_err + 1e-3, f"{what}: max|out-ref| {err:.3e} > 2 * {pt_err:.3e} + 1e-3"
    seen = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), seen), f"{what}: lse not finite exactly where a row sees a key"
    assert torch.isposinf(lse[~seen]).all(), f"{what}: lse of a row that sees no key is +inf"
    if seen.any():
        assert max_err(lse[seen], ref_lse[seen]) <= 1e-4 * max(1.0, ref_lse[seen].abs().max().item()), what
    empty = (~seen).transpose(-1, -2)[..., None].expand_as(out)  # [.., sq, h, dv] rows that see no key
    assert (out[empty] == 0).all(), f"{what}: out of a row that sees no key is 0"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,sq,sk,h,hkv,d,dv,kw", VDIM_CASES, ids=[c[0] for c in VDIM_CASES])
def test_v_head_dim_forward_against_float64(name, sq, sk, h, hkv, d, dv, kw, dtype):
    torch.manual_seed(41)
    b = 2
    q, k, v = rand(b, sq, h, d, dtype=dtype), rand(b, sk, hkv, d, dtype=dtype), rand(b, sk, hkv, dv, dtype=dtype)
    out, lse, _ = fai.flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    assert out.shape == (b, sq, h, dv) and out.dtype == dtype and out.is_contiguous()
    assert lse.shape == (b, h, sq) and lse.dtype == torch.float32
    ref, ref_lse = reference(q, k, v, with_lse=True, **_ref_kw(kw))
    pt = reference(q, k, v, upcast=False, **_ref_kw(kw))
    assert_v_head_dim_close(out, lse, ref, ref_lse, pt, name)
    # The call that writes no lse (the plain eager path) gives the same bits.
    assert torch.equal(fai.flash_attn_func(q, k, v, **kw), out)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d,dv", V_PAIRS, ids=[f"d{d}-dv{dv}" for d, dv in V_PAIRS])
def test_v_head_dim_varlen_gqa_with_empty_sequences(d, dv, dtype, causal):
    """A variable-length GQA batch with an empty query sequence, a sequence with no key (out 0, lse +inf) and one
    whose causal rows mostly see none; each sequence against the float64 reference."""
    torch.manual_seed(42)
    lens_q, lens_k = [37, 0, 1, 128, 90, 5], [50, 3, 0, 128, 1, 77]
    h, hkv = 8, 2
    cu_q = torch.tensor([0] + list(itertools.accumulate(lens_q)), dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0] + list(itertools.accumulate(lens_k)), dtype=torch.int32, device=DEV)
    q = rand(sum(lens_q), h, d, dtype=dtype)
    k, v = rand(sum(lens_k), hkv, d, dtype=dtype), rand(sum(lens_k), hkv, dv, dtype=dtype)
    out, lse, _ = fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                             return_attn_probs=True)
    assert out.shape == (sum(lens_q), h, dv) and out.dtype == dtype
    assert lse.shape == (h, sum(lens_q))
    for i in range(len(lens_q)):
        a, e, ka, ke = cu_q[i].item(), cu_q[i + 1].item(), cu_k[i].item(), cu_k[i + 1].item()
        if e == a:
            continue
        one = (q[a:e][None], k[ka:ke][None], v[ka:ke][None])
        ref, ref_lse = reference(*one, causal=causal, with_lse=True)
        pt = reference(*one, causal=causal, upcast=False)
        assert_v_head_dim_close(out[a:e][None], lse[:, a:e][None], ref, ref_lse, pt,
                                f"sequence {i} (sq {e - a}, sk {ke - ka})")
    assert torch.equal(fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal), out)


@pytest.mark.parametrize("d,dv", V_PAIRS, ids=[f"d{d}-dv{dv}" for d, dv in V_PAIRS])
def test_v_head_dim_with_sinks_alibi_and_dropout(d, dv):
    """The extras with a V head dim: learnable sinks, ALiBi with a window and softcap, dropout (against the float64
    reference under the keep mask the call returns, as the dropout tests judge it)."""
    torch.manual_seed(43)
    b, sq, sk, h, hkv = 2, 113, 203, 8, 2
    q, k, v = rand(b, sq, h, d), rand(b, sk, hkv, d), rand(b, sk, hkv, dv)
    sinks = torch.randn(h, device=DEV) * 2
    out, lse, _ = fai.flash_attn_func(q, k, v, causal=True, sinks=sinks, return_attn_probs=True)
    assert out.shape == (b, sq, h, dv)
    ref, ref_lse = reference_sink(q, k, v, sinks, causal=True)
    pt, _ = reference_sink(q, k, v, sinks, causal=True, upcast=False)
    assert_v_head_dim_close(out, lse, ref, ref_lse, pt, "sinks")

    slopes = torch.rand(b, h, device=DEV) * 0.3
    kw = {"causal": True, "window_size": (64, -1), "softcap": 20.0}
    out, lse, _ = fai.flash_attn_func(q, k, v, alibi_slopes=slopes, return_attn_probs=True, **kw)
    assert out.shape == (b, sq, h, dv)
    ref, ref_lse = reference_alibi(q, k, v, slopes, **_ref_kw(kw))
    pt, _ = reference_alibi(q, k, v, slopes, upcast=False, **_ref_kw(kw))
    assert_v_head_dim_close(out, lse, ref, ref_lse, pt, "alibi")

    p = 0.17
    torch.manual_seed(1234)
    out, lse, s_dmask = fai.flash_attn_func(q, k, v, dropout_p=p, causal=True, return_attn_probs=True)
    assert out.shape == (b, sq, h, dv) and s_dmask.shape == (b, h, sq, sk)
    keep = s_dmask >= 0
    ref = reference_dropout(q, k, v, keep, p, True)
    assert max_err(out, ref) < 2e-2 * max(1.0, ref.abs().max().item())
    _, plain_lse = reference(q, k, v, causal=True, with_lse=True)
    assert max_err(lse, plain_lse) <= 1e-4 * max(1.0, plain_lse.abs().max().item()), "dropout leaves the lse as it is"
    torch.manual_seed(1234)
    assert torch.equal(fai.flash_attn_func(q, k, v, dropout_p=p, causal=True), out)  # the same draw, the same bits


def test_v_head_dim_strided_views_match_contiguous_copies():
    """q, k and v as views with a contiguous last dim but not contiguous (slices of wider buffers): read in place, out
    allocated contiguous with v's head dim; the same bits as contiguous copies."""
    torch.manual_seed(44)
    b, sq, sk, h, hkv, d, dv = 2, 97, 131, 4, 2, 192, 128
    q = rand(b, sq, h, d + 64)[..., :d]
    kv = rand(b, sk, hkv, d + dv)
    k, v = kv[..., :d], kv[..., d:]
    assert not q.is_contiguous() and not v.is_contiguous()
    out = fai.flash_attn_func(q, k, v, causal=True)
    assert out.shape == (b, sq, h, dv) and out.is_contiguous()
    assert torch.equal(out, fai.flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous(), causal=True))
    out2, lse, _ = fai.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert torch.equal(out2, out) and lse.shape == (b, h, sq)


V_BWD_CASES = [
    # (name, sq, sk, h, hkv, kwargs): the (192, 128) pair, whose backward the library serves
    ("plain", 128, 128, 4, 4, {}),
    ("causal-bottom-right", 96, 160, 4, 2, {"causal": True}),
    ("causal-top-left-gqa", 160, 96, 8, 2, {"causal": True, "causal_alignment": "top_left"}),
    ("window-softcap", 128, 128, 4, 4, {"window_size": (32, 16), "softcap": 5.0}),
    # rows that see no key, MQA, a partial last query and key block (203 and 113 are not multiples of 64)
    ("causal-sq-gt-sk-mqa", 203, 113, 8, 1, {"causal": True}),
    ("deterministic-causal-gqa", 113, 203, 8, 2, {"causal": True, "deterministic": True}),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,sq,sk,h,hkv,kw", V_BWD_CASES, ids=[c[0] for c in V_BWD_CASES])
def test_v_head_dim_192_128_forward_backward_against_float64(name, sq, sk, h, hkv, kw, dtype):
    """(192, 128)'s backward (FlashAttention-3's; the kernels AUTO picks: sm90 on Hopper in a build with sm_90a code,
    sm80 elsewhere): dq and dk over 192 columns, dv over 128, against the float64 reference's gradients within the rule
    of test_forward_backward_against_float64."""
    torch.manual_seed(46)
    b, d, dv_ = 2, 192, 128
    q, k = rand(b, sq, h, d, dtype=dtype, grad=True), rand(b, sk, hkv, d, dtype=dtype, grad=True)
    v = rand(b, sk, hkv, dv_, dtype=dtype, grad=True)
    ref_kw = dict(causal=kw.get("causal", False), window=kw.get("window_size", (-1, -1)),
                  softcap=kw.get("softcap", 0.0), top_left=kw.get("causal_alignment") == "top_left")
    out = fai.flash_attn_func(q, k, v, **kw)
    assert out.shape == (b, sq, h, dv_)
    assert_forward_backward_like_float64(q, k, v, out, ref_kw)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_v_head_dim_192_128_varlen_backward_per_sequence(causal):
    """(192, 128)'s backward over a variable-length GQA batch with an empty query sequence, a sequence without keys and
    sequences whose last query block is partial (the sm90 kernel zeroes the rows of the next sequence in its Q and dO
    tiles): each sequence's dq, dk and dv against the float64 reference's within the rule of
    test_forward_backward_against_float64; dq of a sequence without keys and dk, dv of one without queries are 0."""
    torch.manual_seed(47)
    lens_q, lens_k = [37, 0, 1, 128, 90, 5], [50, 3, 0, 128, 1, 77]
    h, hkv, d, dv_ = 8, 2, 192, 128
    cu_q = torch.tensor([0] + list(itertools.accumulate(lens_q)), dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0] + list(itertools.accumulate(lens_k)), dtype=torch.int32, device=DEV)
    q = rand(sum(lens_q), h, d, grad=True)
    k, v = rand(sum(lens_k), hkv, d, grad=True), rand(sum(lens_k), hkv, dv_, grad=True)
    out = fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal)
    assert out.shape == (sum(lens_q), h, dv_)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    for i in range(len(lens_q)):
        a, e, ka, ke = cu_q[i].item(), cu_q[i + 1].item(), cu_k[i].item(), cu_k[i + 1].item()
        what = f"sequence {i} (sq {e - a}, sk {ke - ka})"
        if e == a or ke == ka:  # no query or no key: nothing flows
            assert (dq[a:e] == 0).all() and (dk[ka:ke] == 0).all() and (dv[ka:ke] == 0).all(), what
            continue
        one = [t.detach()[None].requires_grad_(True) for t in (q[a:e], k[ka:ke], v[ka:ke])]
        ref = reference(*one, causal=causal)
        exact = torch.autograd.grad(ref, one, dout[a:e][None].double())
        pt = reference(*one, causal=causal, upcast=False)
        low = torch.autograd.grad(pt, one, dout[a:e][None])
        for name, ours, x, lo in zip(("dq", "dk", "dv"), (dq[a:e], dk[ka:ke], dv[ka:ke]), exact, low):
            assert max_err(ours, x[0]) <= 3 * max_err(lo[0], x[0]) + 1e-3, f"{what}: {name}"


def test_v_head_dim_192_128_deterministic_backward_is_bitwise_repeatable():
    """(192, 128)'s deterministic backward gives the same bits over runs (GQA heads and many key blocks feed each
    gradient row)."""
    torch.manual_seed(48)
    q, k = rand(2, 203, 8, 192, grad=True), rand(2, 331, 2, 192, grad=True)
    v = rand(2, 331, 2, 128, grad=True)
    g = torch.randn(2, 203, 8, 128, device=DEV, dtype=torch.bfloat16)
    runs = [torch.autograd.grad(fai.flash_attn_func(q, k, v, causal=True, deterministic=True), (q, k, v), g)
            for _ in range(3)]
    for r in runs[1:]:
        for a, b in zip(r, runs[0]):
            assert torch.equal(a, b)


def test_v_head_dim_with_grad_is_refused_before_anything_runs():
    """The library has no backward of the (64, 512) pair: a call that autograd would record (grad mode on and q, k, v
    or the sinks require grad) is refused up front with UnsupportedArgumentError (before any draw or launch: the
    generator's state is unchanged); under torch.no_grad() or torch.inference_mode(), or on detached tensors, the
    forward runs."""
    torch.manual_seed(45)
    b, sq, sk, h, hkv, d, dv = 1, 64, 80, 4, 2, 64, 512
    q, k, v = rand(b, sq, h, d), rand(b, sk, hkv, d), rand(b, sk, hkv, dv)
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    sinks_g = torch.randn(h, device=DEV).requires_grad_(True)
    slopes = torch.rand(h, device=DEV) * 0.3
    cu_q = torch.tensor([0, 30, 64], dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0, 50, 80], dtype=torch.int32, device=DEV)
    calls = {
        "q": lambda: fai.flash_attn_func(qg, k, v, causal=True),
        "k-lse": lambda: fai.flash_attn_func(q, kg, v, return_attn_probs=True),
        "v": lambda: fai.flash_attn_func(q, k, vg),
        "sinks-only": lambda: fai.flash_attn_func(q, k, v, sinks=sinks_g),
        "alibi": lambda: fai.flash_attn_func(qg, k, v, alibi_slopes=slopes),
        "dropout": lambda: fai.flash_attn_func(qg, k, v, dropout_p=0.1),
        "varlen": lambda: fai.flash_attn_varlen_func(qg[0], k[0], v[0], cu_q, cu_k, 34, 50, causal=True),
    }
    state = torch.cuda.get_rng_state()
    for what, call in calls.items():
        with pytest.raises(fai.UnsupportedArgumentError, match=r"\(192, 128\) only") as ei:
            call()
        assert str(ei.value).startswith("flash_attn_") and "torch.no_grad()" in str(ei.value), what
    assert torch.equal(torch.cuda.get_rng_state(), state)  # the dropout call drew nothing
    want = fai.flash_attn_func(q, k, v, causal=True)
    with torch.no_grad():
        assert torch.equal(fai.flash_attn_func(qg, kg, vg, causal=True), want)
        assert fai.flash_attn_func(q, k, v, sinks=sinks_g).shape == (b, sq, h, dv)
    with torch.inference_mode():
        assert torch.equal(fai.flash_attn_func(qg, kg, vg, causal=True), want)
    assert torch.equal(fai.flash_attn_func(qg.detach(), kg.detach(), vg.detach(), causal=True), want)
    assert not want.requires_grad


def test_v_head_dim_custom_op_backward_says_the_library_has_none():
    """The custom op called directly (what a graph torch.compile made of an older call would hold) records the forward
    of the forward-only (64, 512) pair; its backward then fails with the library's UNSUPPORTED message, never with
    wrong gradients."""
    ops = _custom_ops()
    q, k = rand(1, 64, 4, 64, grad=True), rand(1, 64, 4, 64, grad=True)
    v = rand(1, 64, 4, 512, grad=True)
    out, _ = ops.fwd_op(q, k, v, 0.0, True, 0, -1, -1, 0.0, False, None, None, 0, 0)
    assert out.shape == (1, 64, 4, 512)
    with pytest.raises(fai.FlashAttentionError) as ei:
        out.float().sum().backward()
    assert ei.value.status == 2 and "backward of a V head dim" in ei.value.message, ei.value.message


def test_v_head_dim_fake_implementations_give_out_with_vs_head_dim():
    """The custom ops' fake implementations (what torch.compile traces) give out [.., head_dim_v] and the lse's shape;
    the ops themselves give the eager call's bits."""
    ops = _custom_ops()
    from torch._subclasses.fake_tensor import FakeTensorMode
    from flash_attn_interop import _args
    align = _args.CAUSAL_ALIGNMENTS["bottom_right"]
    q, k, v = rand(2, 48, 4, 64), rand(2, 80, 2, 64), rand(2, 80, 2, 512)
    sinks = torch.randn(4, device=DEV)
    q8 = [t.to(FP8) for t in (q, k, v)] if FP8 is not None else None
    with FakeTensorMode() as mode:
        fq, fk, fv, fs = (mode.from_tensor(t) for t in (q, k, v, sinks))
        out, lse = ops.fwd_op(fq, fk, fv, 0.0, True, align, -1, -1, 0.0, False, None, None, 0, 0)
        assert out.shape == (2, 48, 4, 512) and lse.shape == (2, 4, 48)
        out, lse, _, _ = ops.fwd_sink_op(fq, fk, fv, fs, None, 0.0, False, 0.0, True, align, -1, -1, 0.0, False,
                                         None, None, 0, 0)
        assert out.shape == (2, 48, 4, 512) and lse.shape == (2, 4, 48)
        if q8 is not None:
            f8 = [mode.from_tensor(t) for t in q8]
            out, _ = ops.fwd_fp8_op(*f8, None, None, None, 0.0, True, align, -1, -1, 0.0, None, None, 0, 0)
            assert out.shape == (2, 48, 4, 512) and out.dtype == torch.bfloat16
    eager, eager_lse, _ = fai.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    out, lse = ops.fwd_op(q, k, v, 0.0, True, align, -1, -1, 0.0, False, None, None, 0, 0)
    assert torch.equal(out, eager) and torch.equal(lse, eager_lse)
    out, _, _, _ = ops.fwd_sink_op(q, k, v, sinks, None, 0.0, False, 0.0, True, align, -1, -1, 0.0, False, None, None,
                                   0, 0)
    assert torch.equal(out, fai.flash_attn_func(q, k, v, causal=True, sinks=sinks))


def test_v_head_dim_refusals_from_the_library():
    """Pairs the library does not serve, and the kvcache (one head dim), are the library's FlashAttentionError."""
    q, k = rand(1, 64, 4, 64), rand(1, 64, 4, 64)
    with pytest.raises(fai.FlashAttentionError) as ei:
        fai.flash_attn_func(q, k, rand(1, 64, 4, 96))
    assert ei.value.status == 2 and "head_dim_v" in ei.value.message, ei.value.message
    with pytest.raises(fai.FlashAttentionError) as ei:
        fai.flash_attn_func(rand(1, 64, 4, 128), rand(1, 64, 4, 128), rand(1, 64, 4, 64))
    assert ei.value.status == 2 and "head_dim_v" in ei.value.message, ei.value.message
    with pytest.raises(fai.FlashAttentionError):
        fai.flash_attn_with_kvcache(rand(1, 1, 4, 64), rand(1, 64, 4, 64), rand(1, 64, 4, 512), cache_seqlens=10)


# ---- paged K/V in the variable-length forward (C ABI 0.11; FlashAttention-2's block_table) ---------------------------
#
# flash_attn_varlen_func(..., block_table=...): k and v are pools [num_blocks, block_size, heads_kv, head_dim], key j
# of sequence b row j % block_size of block block_table[b, j // block_size]. Each sequence's keys and values are
# gathered out of the pool through its table row into the float64 reference; every output row is compared, by the rule
# of the other forward tests (out within twice PyTorch's own error in the dtype plus 1e-3, lse within 1e-4, +inf and
# out 0 exactly where a row sees no key). Every pool row no sequence may read holds NaN, and every table entry past a
# sequence's last block a block id far outside the pool (never read, so never reported either).

GARBAGE_BLOCK = 2 ** 30


def paged_pools(lens_k, block, hkv, d, dv=None, dtype=torch.bfloat16, spare=2):
    """Pools k [num_blocks, block, hkv, d] and v [num_blocks, block, hkv, dv] holding random keys and values of
    sequences of lens_k keys at shuffled block ids (and `spare` blocks no sequence owns), and block_table int32
    [batch, max_blocks + 1] (one column wider than the longest sequence needs). NaN in every pool row past a
    sequence's length and in the spare blocks; GARBAGE_BLOCK in every table entry past a sequence's last block.
    Returns (k_pool, v_pool, table, blocks per sequence)."""
    dv = dv or d
    per = [-(-n // block) for n in lens_k]
    num_blocks = sum(per) + spare
    ids = torch.randperm(num_blocks).tolist()
    rows = [[GARBAGE_BLOCK] * (max(per) + 1) for _ in lens_k]
    k_pool = torch.full((num_blocks, block, hkv, d), float("nan"), dtype=dtype, device=DEV)
    v_pool = torch.full((num_blocks, block, hkv, dv), float("nan"), dtype=dtype, device=DEV)
    for b, (n, m) in enumerate(zip(lens_k, per)):
        for i in range(m):
            blk = rows[b][i] = ids.pop()
            r = min(block, n - i * block)
            k_pool[blk, :r] = torch.randn(r, hkv, d, device=DEV, dtype=dtype)
            v_pool[blk, :r] = torch.randn(r, hkv, dv, device=DEV, dtype=dtype)
    assert len(ids) == spare
    return k_pool, v_pool, torch.tensor(rows, dtype=torch.int32, device=DEV), per


def gather_paged(pool, table, per, b, n):
    """Sequence b's n keys (or values) read out of the pool through its table row: [n, heads_kv, head_dim]."""
    out = pool[table[b, :per[b]].long()].flatten(0, 1)[:n]
    assert out.shape[0] == n and torch.isfinite(out).all(), "a row a sequence reads holds NaN: the pool is wrong"
    return out


def cu_of(lens):
    return torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device=DEV)


def poison_allocator(*shapes):
    """(shape, dtype) pairs of the outputs a call is about to allocate, in its order: the allocator's cache emptied, NaN
    tensors of those shapes allocated and freed, so that the call's outputs most likely reuse their memory and a row
    the kernels leave unwritten shows as NaN (the outputs are allocated by the package, so this is the way in)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    held = [torch.full(shape, float("nan"), dtype=dtype, device=DEV) for shape, dtype in shapes]
    del held


def judge_paged_sequences(out, lse, q, k_pool, v_pool, table, per, cu_q, lens_k, kw, name):
    """Each sequence of a paged varlen call (its keys gathered from the pool) against the float64 and same-dtype
    references (assert_v_head_dim_close's rule); a sequence without queries has nothing to judge."""
    for i in range(len(lens_k)):
        a, e = cu_q[i].item(), cu_q[i + 1].item()
        if e == a:
            continue
        kb, vb = (gather_paged(pool, table, per, i, lens_k[i]) for pool in (k_pool, v_pool))
        one = (q[a:e][None], kb[None], vb[None])
        ref, ref_lse = reference(*one, with_lse=True, **_ref_kw(kw))
        pt = reference(*one, upcast=False, **_ref_kw(kw))
        assert_v_head_dim_close(out[a:e][None], lse[:, a:e][None], ref, ref_lse, pt,
                                f"{name} sequence {i} (sq {e - a}, sk {lens_k[i]})")
    torch.cuda.synchronize()


PAGED_CASES = [
    # (name, kwargs); every case is GQA (8 query heads over 2 KV heads)
    ("full", {}),
    ("causal", {"causal": True}),
    ("softcap", {"softcap": 15.0}),
    ("causal-window-softcap", {"causal": True, "window_size": (150, 0), "softcap": 30.0}),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("block", [128, 256])
@pytest.mark.parametrize("name,kw", PAGED_CASES, ids=[c[0] for c in PAGED_CASES])
def test_paged_varlen_forward_against_float64(name, kw, block, dtype):
    """Key lengths 0, 1, exactly one block, two blocks and a part, a part of one, exactly three blocks; query lengths
    with an empty sequence, a single row, and rows that see no key (a sequence without keys, causal rows before the
    keys start); block sizes 128 and 256, bf16 and fp16."""
    torch.manual_seed(51)
    h, hkv, d = 8, 2, 128
    lens_k = [0, 1, block, 2 * block + 37, 77, 3 * block]
    lens_q = [5, 1, 64, 100, 0, 2 * block + 1]
    k_pool, v_pool, table, per = paged_pools(lens_k, block, hkv, d, dtype=dtype)
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    total_q = sum(lens_q)
    q = rand(total_q, h, d, dtype=dtype)
    args = (q, k_pool, v_pool, cu_q, cu_k, max(lens_q), max(lens_k))
    poison_allocator(((total_q, h, d), dtype), ((h, total_q), torch.float32))
    out, lse, s_dmask = fai.flash_attn_varlen_func(*args, block_table=table, return_attn_probs=True, **kw)
    assert out.shape == (total_q, h, d) and out.dtype == dtype
    assert lse.shape == (h, total_q) and lse.dtype == torch.float32 and s_dmask.numel() == 0
    judge_paged_sequences(out, lse, q, k_pool, v_pool, table, per, cu_q, lens_k, kw, name)
    assert fai.check_device_errors() is None  # the garbage past each sequence's last block was never read
    # The call without the lse (flash-attn's plain return) gives the same bits.
    assert torch.equal(fai.flash_attn_varlen_func(*args, block_table=table, **kw), out)


@pytest.mark.parametrize("block", [128, 256])
def test_paged_varlen_with_sinks_and_alibi(block):
    """The extras over paged K/V: learnable sinks, per-sequence ALiBi slopes with a window (each sequence's output
    matches the float64 reference); dropout is refused with a message naming it."""
    torch.manual_seed(52)
    h, hkv, d = 8, 2, 64
    lens_k = [block + 5, 0, 1, 2 * block]
    lens_q = [40, 3, 1, 2 * block]
    k_pool, v_pool, table, per = paged_pools(lens_k, block, hkv, d)
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    q = rand(sum(lens_q), h, d)
    mq, mk = max(lens_q), max(lens_k)
    args = (q, k_pool, v_pool, cu_q, cu_k, mq, mk)
    gathered = [tuple(gather_paged(pool, table, per, i, n) for pool in (k_pool, v_pool)) for i, n in enumerate(lens_k)]

    def each_sequence(check):
        for i in range(len(lens_q)):
            a, e = cu_q[i].item(), cu_q[i + 1].item()
            if e > a:
                check(i, a, e, q[a:e][None], gathered[i][0][None], gathered[i][1][None])

    sinks = torch.randn(h, device=DEV) * 2
    out, lse, _ = fai.flash_attn_varlen_func(*args, causal=True, sinks=sinks, block_table=table,
                                             return_attn_probs=True)

    def sink_check(i, a, e, qb, kb, vb):
        ref, ref_lse = reference_sink(qb, kb, vb, sinks, causal=True)
        pt, _ = reference_sink(qb, kb, vb, sinks, causal=True, upcast=False)
        assert_v_head_dim_close(out[a:e][None], lse[:, a:e][None], ref, ref_lse, pt, f"sinks, sequence {i}")
    each_sequence(sink_check)

    slopes = torch.rand(len(lens_q), h, device=DEV) * 0.3
    kw = {"causal": True, "window_size": (100, -1), "softcap": 20.0}
    out, lse, _ = fai.flash_attn_varlen_func(*args, alibi_slopes=slopes, block_table=table, return_attn_probs=True,
                                             **kw)

    def alibi_check(i, a, e, qb, kb, vb):
        ref, ref_lse = reference_alibi(qb, kb, vb, slopes[i], **_ref_kw(kw))
        pt, _ = reference_alibi(qb, kb, vb, slopes[i], upcast=False, **_ref_kw(kw))
        assert_v_head_dim_close(out[a:e][None], lse[:, a:e][None], ref, ref_lse, pt, f"alibi, sequence {i}")
    each_sequence(alibi_check)

    # Dropout is not served over paged K/V: refused before anything is drawn or launched, naming it.
    state = torch.cuda.get_rng_state()
    with pytest.raises(fai.UnsupportedArgumentError, match="dropout_p"):
        fai.flash_attn_varlen_func(*args, dropout_p=0.2, causal=True, block_table=table)
    assert torch.equal(torch.cuda.get_rng_state(), state), "a refused call draws nothing from the generator"


@pytest.mark.parametrize("name,kw", PAGED_CASES, ids=[c[0] for c in PAGED_CASES])
@pytest.mark.parametrize("d,dv", V_PAIRS, ids=[f"d{d}-dv{dv}" for d, dv in V_PAIRS])
def test_paged_v_head_dim_forward_against_float64(d, dv, name, kw):
    """Paged K/V with a V head dim of its own (v pool [num_blocks, block, heads_kv, dv], out [total_q, heads, dv]): the
    pair's paged kernels (on Hopper the sm90 ones, (64, 512)'s clearing the V columns of its own half past a sequence's
    end), each sequence against the float64 reference; key lengths with a part block, an empty sequence and rows that
    see no key."""
    torch.manual_seed(53)
    h, hkv, block = 8, 2, 128
    lens_k = [0, 1, block + 37, 2 * block]
    lens_q = [5, 1, 100, 2 * block + 1]
    k_pool, v_pool, table, per = paged_pools(lens_k, block, hkv, d, dv=dv)
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    total_q = sum(lens_q)
    q = rand(total_q, h, d)
    args = (q, k_pool, v_pool, cu_q, cu_k, max(lens_q), max(lens_k))
    poison_allocator(((total_q, h, dv), torch.bfloat16), ((h, total_q), torch.float32))
    out, lse, _ = fai.flash_attn_varlen_func(*args, block_table=table, return_attn_probs=True, **kw)
    assert out.shape == (total_q, h, dv) and lse.shape == (h, total_q)
    judge_paged_sequences(out, lse, q, k_pool, v_pool, table, per, cu_q, lens_k, kw, name)
    assert fai.check_device_errors() is None


def test_paged_call_with_grad_records_its_forward_and_its_backward_raises():
    """As flash-attn's varlen function: a paged call autograd records runs (out requires grad, the same bits as the
    call under no_grad); its backward raises UnsupportedArgumentError naming block_table (there is no paged backward),
    also through the custom ops (a dispatch mode makes the call go through them)."""
    torch.manual_seed(53)
    block, h, hkv, d = 128, 4, 2, 64
    lens_k, lens_q = [150, 40], [20, 40]
    k_pool, v_pool, table, _ = paged_pools(lens_k, block, hkv, d)
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    q = rand(sum(lens_q), h, d, grad=True)
    with torch.no_grad():
        want = fai.flash_attn_varlen_func(q, k_pool, v_pool, cu_q, cu_k, 40, 150, causal=True, block_table=table)
    out = fai.flash_attn_varlen_func(q, k_pool, v_pool, cu_q, cu_k, 40, 150, causal=True, block_table=table)
    assert out.requires_grad and torch.equal(out, want)
    with pytest.raises(fai.UnsupportedArgumentError) as ei:
        out.float().sum().backward()
    assert "block_table" in str(ei.value) and "no backward" in str(ei.value)
    assert q.grad is None

    from flash_attn_interop import _ops
    if not _ops.HAS_CUSTOM_OP:
        return
    with _RecordOps() as mode:
        out = fai.flash_attn_varlen_func(q, k_pool, v_pool, cu_q, cu_k, 40, 150, causal=True, block_table=table)
    assert any("flash_attn_interop.fwd_paged" in o for o in mode.ops), mode.ops
    assert out.requires_grad and torch.equal(out, want)
    with pytest.raises(fai.UnsupportedArgumentError) as ei:
        out.float().sum().backward()
    assert "block_table" in str(ei.value)


def test_paged_fake_implementation_and_torch_compile():
    """The paged op's fake implementation (what torch.compile traces) gives out [total_q, heads, head_dim_v], lse
    [heads, total_q] and the mask's shape; a compiled function with a paged call gives the eager call's bits."""
    ops = _custom_ops()
    from torch._subclasses.fake_tensor import FakeTensorMode
    torch.manual_seed(54)
    block, h, hkv, d = 128, 4, 2, 64
    lens_k, lens_q = [130, 7], [9, 7]
    k_pool, v_pool, table, _ = paged_pools(lens_k, block, hkv, d)
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    q = rand(sum(lens_q), h, d)
    with FakeTensorMode() as mode:
        f = [mode.from_tensor(t) for t in (q, k_pool, v_pool, table, cu_q, cu_k)]
        out, lse, mask = ops.fwd_paged_op(*f[:4], None, None, 0.0, False, 0.0, True, 0, -1, -1, 0.0, f[4], f[5], 9, 130)
        assert out.shape == (16, h, d) and lse.shape == (h, 16) and mask.shape == (0,)
        out, lse, mask = ops.fwd_paged_op(*f[:4], None, None, 0.1, True, 0.0, True, 0, -1, -1, 0.0, f[4], f[5], 9, 130)
        assert mask.shape == (2, h, 9, 130) and mask.dtype == torch.uint8
    eager = fai.flash_attn_varlen_func(q, k_pool, v_pool, cu_q, cu_k, 9, 130, causal=True, block_table=table)
    if not hasattr(torch, "compile"):
        return
    fn = torch.compile(lambda x: fai.flash_attn_varlen_func(x, k_pool, v_pool, cu_q, cu_k, 9, 130, causal=True,
                                                            block_table=table))
    assert torch.equal(fn(q), eager)


def test_paged_bad_block_id_is_reported_naming_block_table():
    """A block id outside [0, num_blocks) that a sequence uses (flash-attn raises for such a table): the kernels clamp
    it (no access leaves the pools) and the library reports it once, as decode's device checks: check_device_errors()
    raises FlashAttentionError (FA_STATUS_DEVICE_CHECK_FAILED) naming block_table, or, when nothing checked before it,
    the next call on the device does (launching nothing); the context works on after."""
    torch.manual_seed(55)
    block, h, hkv, d = 128, 4, 2, 64
    lens_k, lens_q = [200, 77], [3, 2]
    k_pool, v_pool, table, _ = paged_pools(lens_k, block, hkv, d)
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    q = rand(sum(lens_q), h, d)

    def call(t):
        return fai.flash_attn_varlen_func(q, k_pool, v_pool, cu_q, cu_k, 3, 200, block_table=t)

    good = call(table)
    torch.cuda.synchronize()
    assert fai.check_device_errors() is None
    for bad_id, reported_by in ((k_pool.shape[0], "check_device_errors"), (-1, "the next call")):
        bad = table.clone()
        bad[0, 1] = bad_id  # sequence 0's second block: its keys 128..199
        call(bad)
        torch.cuda.synchronize()
        with pytest.raises(fai.FlashAttentionError) as ei:
            if reported_by == "check_device_errors":
                fai.check_device_errors()
            else:
                call(table)
        e = ei.value
        assert e.status == 7 and e.status_name == "FA_STATUS_DEVICE_CHECK_FAILED", (reported_by, e)
        assert "block_table" in e.message, (reported_by, e.message)
        torch.cuda.synchronize()
        assert fai.check_device_errors() is None, reported_by  # reported once
        assert torch.equal(call(table), good), reported_by


def test_paged_refusals_from_the_library():
    """What the library does not serve with block_table: a block size that is not a multiple of 128 (UNSUPPORTED), a
    max_seqlen_k past the table's capacity (INVALID_ARGUMENT); its messages name them."""
    torch.manual_seed(56)
    h, hkv, d = 4, 2, 64
    q = rand(8, h, d)
    cu = cu_of([8])
    k64, v64, t64, _ = paged_pools([100], 64, hkv, d)
    with pytest.raises(fai.FlashAttentionError) as ei:
        fai.flash_attn_varlen_func(q, k64, v64, cu, cu_of([100]), 8, 100, block_table=t64)
    assert ei.value.status == 2 and "block_size" in ei.value.message, ei.value.message
    k, v, t, _ = paged_pools([100], 128, hkv, d)  # a table of 2 columns: 256 keys
    with pytest.raises(fai.FlashAttentionError) as ei:
        fai.flash_attn_varlen_func(q, k, v, cu, cu_of([100]), 8, 257, block_table=t)
    assert ei.value.status == 1 and "max_seqlen_k" in ei.value.message, ei.value.message
