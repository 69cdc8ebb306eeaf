"""The flash-attn 2.x functions: names, argument names, defaults, return values and semantics of
flash_attn.flash_attn_interface, on libflash_attention's C ABI.

Every argument is validated and every option the library does not serve is refused (UnsupportedArgumentError)
before torch is imported or a tensor is touched; then _ops runs the call.

Semantics (flash-attn >= 2.1): tensors [batch, seqlen, heads, head_dim] (varlen: [total, heads, head_dim]);
causal is aligned bottom-right (query i sees keys j <= i + seqlen_k - seqlen_q); window_size=(left, right) with -1
unbounded, applied on the same diagonal, causal forcing right to 0; softcap > 0 caps the scaled scores with
softcap * tanh(s / softcap); k/v may have fewer heads than q (GQA/MQA: heads_q divisible by heads_kv); the
log-sum-exp is [batch, heads, seqlen_q] fp32 ([heads, total_q] varlen). One extension, keyword-only:
causal_alignment="top_left" places the causal diagonal as PyTorch's is_causal does.
"""
from . import _args

_ops = None


def _torch_ops():
    """_ops, imported on the first call (it imports torch and registers the custom ops)."""
    global _ops
    if _ops is None:
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise ImportError("flash_attn_interop needs PyTorch to run attention (any version; pip install torch): "
                              f"{e}") from e
        from . import _ops as ops
        _ops = ops
    return _ops


# _options of the defaults (no scale, window, softcap, dropout or ALiBi; bottom-right), without or with causal.
_DEFAULT_OPTIONS = (0.0, False, _args.CAUSAL_ALIGNMENTS["bottom_right"], -1, -1, 0.0)
_DEFAULT_CAUSAL_OPTIONS = (0.0, True) + _DEFAULT_OPTIONS[2:]


def _options(function, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment):
    """(softmax_scale, causal, causal_alignment, window_left, window_right, softcap), the custom op's option args."""
    if (softmax_scale is None and alibi_slopes is None and type(dropout_p) is float and dropout_p == 0.0
            and type(softcap) is float and softcap == 0.0 and type(window_size) is tuple and window_size == (-1, -1)
            and type(causal_alignment) is str and causal_alignment == "bottom_right"):
        # Every option at its default (what the checks below would return, without their calls).
        return _DEFAULT_CAUSAL_OPTIONS if causal else _DEFAULT_OPTIONS
    _args.common_refusals(function, dropout_p, alibi_slopes)
    scale = _args.softmax_scale_arg(function, softmax_scale)
    left, right = _args.window_arg(function, window_size)
    align = _args.causal_alignment_arg(function, causal_alignment)
    return scale, bool(causal), align, left, right, _args.softcap_arg(function, softcap)


def _finish(out, lse, return_attn_probs, q):
    if not return_attn_probs:
        return out
    # flash-attn returns S_dmask only with dropout (the attention probabilities, for tests); with dropout_p=0 it
    # returns an empty tensor in its place, as here.
    return out, lse, q.new_empty((0,))


def _attn_inputs(ops, function, q, k, v, plain, rank, layout):
    """q, k, v checked (CUDA tensors, dtype, rank) and made what the library takes (attn_input)."""
    if not (plain and q.is_cuda and k.is_cuda and v.is_cuda):
        ops.require_cuda(function, q=q, k=k, v=v)
    q, k, v = ops.attn_input(function, "q", q, plain), ops.attn_input(function, "k", k, plain), \
        ops.attn_input(function, "v", v, plain)
    for n, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != rank:
            raise ValueError(f"{function}: {n} must be {layout}, got shape {tuple(t.shape)}")
    return q, k, v


def _dense(function, q, k, v, opts, deterministic, return_attn_probs):
    ops = _ops or _torch_ops()
    r = ops.dense_eager(q, k, v, opts, deterministic, return_attn_probs)  # the whole call, when it is plain
    if r is not None:
        return r
    return _dense_general(ops, function, q, k, v, opts, deterministic, return_attn_probs)


def _dense_general(ops, function, q, k, v, opts, deterministic, return_attn_probs):
    plain = ops.plain_eager(q, k, v)  # False under torch.compile: the custom op
    q, k, v = _attn_inputs(ops, function, q, k, v, plain, 4, "[batch, seqlen, heads, head_dim]")
    out, lse = ops.attention(q, k, v, opts, bool(deterministic), None, None, 0, 0, plain, return_attn_probs)
    return _finish(out, lse, return_attn_probs, q)


def _varlen(function, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts, deterministic,
            return_attn_probs):
    ops = _torch_ops()
    plain = ops.plain_eager(q, k, v, cu_seqlens_q, cu_seqlens_k)
    if not (plain and cu_seqlens_q.is_cuda and cu_seqlens_k.is_cuda):
        ops.require_cuda(function, q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    q, k, v = _attn_inputs(ops, function, q, k, v, plain, 3, "[total, heads, head_dim]")
    cu_q = ops.int32_input(function, "cu_seqlens_q", cu_seqlens_q)
    cu_k = ops.int32_input(function, "cu_seqlens_k", cu_seqlens_k)
    if cu_q.dim() != 1 or cu_k.dim() != 1 or cu_q.shape[0] != cu_k.shape[0] or cu_q.shape[0] < 2:
        raise ValueError(f"{function}: cu_seqlens_q and cu_seqlens_k must both be [batch + 1] (batch >= 1), got "
                         f"{tuple(cu_q.shape)} and {tuple(cu_k.shape)}")
    out, lse = ops.attention(q, k, v, opts, bool(deterministic), cu_q, cu_k, int(max_seqlen_q), int(max_seqlen_k),
                             plain, return_attn_probs)
    return _finish(out, lse, return_attn_probs, q)


def _no_block_table(function, block_table):
    if block_table is not None:
        _args.refuse(function, "block_table", "<tensor>", "a paged KV cache is served by flash_attn_with_kvcache only")


# ---- public API -------------------------------------------------------------------------------------------

def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                    causal_alignment="bottom_right"):
    """Attention over q [batch, seqlen_q, heads, head_dim], k and v [batch, seqlen_k, heads_kv, head_dim] (fp16 or
    bf16, CUDA). Returns out [batch, seqlen_q, heads, head_dim]; with return_attn_probs, (out, softmax_lse
    [batch, heads, seqlen_q] fp32, an empty S_dmask). Differentiable in q, k and v."""
    f = "flash_attn_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    ops = _ops or _torch_ops()
    r = ops.dense_eager(q, k, v, opts, deterministic, return_attn_probs)  # _dense, inlined (host time)
    if r is not None:
        return r
    return _dense_general(ops, f, q, k, v, opts, deterministic, return_attn_probs)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                              causal_alignment="bottom_right"):
    """flash_attn_func on qkv [batch, seqlen, 3, heads, head_dim] (the three read in place, as strided views)."""
    f = "flash_attn_qkvpacked_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    if getattr(qkv, "dim", None) is None or qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"{f}: qkv must be [batch, seqlen, 3, heads, head_dim], got {_shape(qkv)}")
    return _dense(f, qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], opts, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                             causal_alignment="bottom_right"):
    """flash_attn_func on q and kv [batch, seqlen_k, 2, heads_kv, head_dim]."""
    f = "flash_attn_kvpacked_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    if getattr(kv, "dim", None) is None or kv.dim() != 5 or kv.shape[2] != 2:
        raise ValueError(f"{f}: kv must be [batch, seqlen_k, 2, heads_kv, head_dim], got {_shape(kv)}")
    return _dense(f, q, kv[:, :, 0], kv[:, :, 1], opts, deterministic, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, *,
                           causal_alignment="bottom_right"):
    """Variable-length batch: q [total_q, heads, head_dim], k and v [total_k, heads_kv, head_dim], cu_seqlens_q/k
    int32 [batch + 1] prefix sums on the GPU, max_seqlen_q/k the longest lengths (host ints; no host copy of the
    lengths is made). softmax_lse is [heads, total_q]."""
    f = "flash_attn_varlen_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    _no_block_table(f, block_table)
    return _varlen(f, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts, deterministic,
                   return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False, *, causal_alignment="bottom_right"):
    """flash_attn_varlen_func on qkv [total, 3, heads, head_dim]."""
    f = "flash_attn_varlen_qkvpacked_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    if getattr(qkv, "dim", None) is None or qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"{f}: qkv must be [total, 3, heads, head_dim], got {_shape(qkv)}")
    return _varlen(f, qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, opts,
                   deterministic, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                                    causal_alignment="bottom_right"):
    """flash_attn_varlen_func on q [total_q, heads, head_dim] and kv [total_k, 2, heads_kv, head_dim]."""
    f = "flash_attn_varlen_kvpacked_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    if getattr(kv, "dim", None) is None or kv.dim() != 4 or kv.shape[1] != 2:
        raise ValueError(f"{f}: kv must be [total_k, 2, heads_kv, head_dim], got {_shape(kv)}")
    return _varlen(f, q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts,
                   deterministic, return_attn_probs)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """Attention of q [batch, seqlen_new, heads, head_dim] over a KV cache: k_cache/v_cache [batch, capacity,
    heads_kv, head_dim], or paged [num_blocks, block_size, heads_kv, head_dim] with block_table int32
    [batch, max_blocks_per_seq]. k/v [batch, seqlen_new, heads_kv, head_dim], when given, are first written into the
    cache at cache_seqlens (in place); cache_seqlens (int or int32 [batch]) is only read, as in flash-attn. Causal
    and window are placed bottom-right. Returns out, or (out, softmax_lse [batch, heads, seqlen_new]). Not
    differentiable."""
    f = "flash_attn_with_kvcache"
    for name, val, why in (("rotary_cos", rotary_cos, "no rotary embedding in the library; apply it to q/k first"),
                           ("rotary_sin", rotary_sin, "no rotary embedding in the library; apply it to q/k first"),
                           ("cache_batch_idx", cache_batch_idx, "the cache is indexed by batch position only"),
                           ("cache_leftpad", cache_leftpad, "no left padding of the cache"),
                           ("alibi_slopes", alibi_slopes, "the library has no ALiBi bias")):
        if val is not None:
            _args.refuse(f, name, "<tensor>", why)
    scale = _args.softmax_scale_arg(f, softmax_scale)
    left, right = _args.window_arg(f, window_size)
    cap = _args.softcap_arg(f, softcap)
    splits = _args.num_splits_arg(f, num_splits)
    if (k is None) != (v is None):
        raise ValueError(f"{f}: k and v are given together or not at all")
    if cache_seqlens is None and k is not None:
        raise ValueError(f"{f}: appending k/v needs cache_seqlens (where to write them)")
    # rotary_interleaved only matters with rotary_cos/rotary_sin, refused above.
    ops = _torch_ops()
    import torch
    ops.require_cuda(f, q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, block_table=block_table,
                     cache_seqlens=cache_seqlens if isinstance(cache_seqlens, torch.Tensor) else None)
    q = ops.attn_input(f, "q", q)
    for n, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        # Written in place when k/v are appended: never replaced by a copy.
        if ops.attn_input(f, n, t) is not t:
            raise ValueError(f"{f}: {n} must have a contiguous last dimension and a 16-byte aligned start (it is "
                             "written in place, so it cannot be copied)")
    if k is not None:
        k, v = ops.attn_input(f, "k", k), ops.attn_input(f, "v", v)
    batch = q.shape[0]
    if block_table is not None:
        block_table = ops.int32_input(f, "block_table", block_table)
        capacity = block_table.shape[1] * k_cache.shape[1]
    else:
        capacity = k_cache.shape[1]
    if cache_seqlens is None:
        cache_seqlens = torch.full((batch,), capacity, dtype=torch.int32, device=q.device)
    elif isinstance(cache_seqlens, int):
        cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    else:
        cache_seqlens = ops.int32_input(f, "cache_seqlens", cache_seqlens)
    out, lse = ops.decode(q, k_cache, v_cache, k, v, cache_seqlens, block_table, scale, bool(causal), left, right,
                          cap, splits)
    return (out, lse) if return_softmax_lse else out


def _shape(t):
    return tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
