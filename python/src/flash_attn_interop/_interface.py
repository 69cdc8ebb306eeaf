"""The flash-attn 2.x functions: names, argument names, defaults, return values and semantics of
flash_attn.flash_attn_interface, on libflash_attention's C ABI.

Every argument is validated and every option the library does not serve is refused (UnsupportedArgumentError)
before torch is imported or a tensor is touched; then _ops runs the call.

Semantics (flash-attn >= 2.1): tensors [batch, seqlen, heads, head_dim] (varlen: [total, heads, head_dim]);
causal is aligned bottom-right (query i sees keys j <= i + seqlen_k - seqlen_q); window_size=(left, right) with -1
unbounded, applied on the same diagonal, causal forcing right to 0; softcap > 0 caps the scaled scores with
softcap * tanh(s / softcap); k/v may have fewer heads than q (GQA/MQA: heads_q divisible by heads_kv); the
log-sum-exp is [batch, heads, seqlen_q] fp32 ([heads, total_q] varlen). Extensions, keyword-only:
causal_alignment="top_left" places the causal diagonal as PyTorch's is_causal does; q_descale, k_descale and v_descale
are FlashAttention-3's fp8 forward arguments; sinks (alias learnable_sink, FlashAttention-4's name) are learnable
attention sinks.

Learnable sinks (C ABI 0.7; FlashAttention-4's learnable_sink, gpt-oss's sinks): a tensor (nheads,) of fp32, fp16 or
bf16 on the GPU, one logit sigma_h per query head that joins the softmax denominator only:
out_i = sum_j e^{x_ij} v_j / (e^{sigma_h} + sum_j e^{x_ij}), lse_i = log(e^{sigma_h} + sum_j e^{x_ij}), x the final
(scaled, soft-capped, masked) logits; sigma is in those units and present whatever the mask; a row that sees no key
gets out 0 and lse sigma_h. Differentiable in the sinks too (dsigma_h = -sum_{b,i} e^{sigma_h - lse} rowsum(dout *
out); no gradient flows through the returned lse, as everywhere here). The library computes in fp32 (a 16-bit sinks
tensor is converted, and its gradient converted back). Not with fp8 inputs in this package yet.

ALiBi (C ABI 0.8; FlashAttention-2's alibi_slopes, on every function including flash_attn_with_kvcache): a float32
tensor (nheads,) or (batch, nheads) on the GPU, last dimension contiguous. The bias added to each final logit (after
softmax_scale and softcap: not scaled, not capped; before the masks) is -slope * |i + seqlen_k - seqlen_q - j|, or,
for a causal call without a left window, FlashAttention-2's +slope * j (the same output; the returned lse is larger
by slope * (i + seqlen_k - seqlen_q)). kvcache: keys counted from cache_leftpad, the causal form kept for seqlen_q 1.
The slopes get no gradient. Not with fp8 inputs in this package yet.

Dropout (C ABI 0.9; FlashAttention-2's dropout_p in [0, 1)): the library's sm90 kernels on Hopper (a build with sm_90a
code), its sm80 kernels on other GPUs and for the V head dim pairs (the same mask on both); (seed, offset)
come from PyTorch's default CUDA generator of q's device, advanced by batch * nheads * 32 (rounded up to 4) as
flash-attn's philox_cuda_state draw, so a call after torch.manual_seed(s) drops what flash-attn (and PyTorch's flash
kernels) would; the backward replays the forward's recorded (seed, offset). With return_attn_probs the third value is
the keep mask as +1 (kept) / -1 (dropped) in q's dtype, [batch, nheads, seqlen_q, seqlen_k] (varlen: max lengths):
flash-attn's S_dmask sign convention without its magnitudes (varlen: -1 past each sequence's lengths). Refused under
CUDA graph capture (the draw is on the host) and with fp8 inputs. The draw reads and writes the generator's state
(get_state/set_state, as no public call advances the offset alone): unlike flash-attn's draw it is not under the
generator's lock (concurrent draws from several threads on one device may overlap) and it resets cuDNN RNNs' cached
dropout state. Under torch.compile the op is not marked as drawing random numbers, so two identical dropout calls in
one compiled graph could be merged into one draw: call it eagerly where that matters.

fp8 (FlashAttention-3's fp8 forward): q, k and v all torch.float8_e4m3fn give a torch.bfloat16 output; q_descale,
k_descale and v_descale (float32 (batch, nheads_k), even for q; None: 1.0) scale the values back: the attention is
that of q * q_descale[b, h // (nheads // nheads_k)], k * k_descale[b, hk] and v * v_descale[b, hk], the log-sum-exp
that of these logits. Forward only (no autograd: inputs that require grad are refused), head dims multiples of 16,
served by the library's sm90 kernels (compute capability 9.0; elsewhere the library says FA_STATUS_UNSUPPORTED).

Separate V head dim (C ABI 0.10; FlashAttention-3's hdim / hdim_v): v may have a head dim head_dim_v other than q's
and k's head_dim in flash_attn_func and flash_attn_varlen_func (the packed functions hold k and v in one tensor, so
theirs are equal); out is then [..., heads, head_dim_v], the lse keeps its shape and meaning, and softmax_scale still
defaults to 1/sqrt(head_dim) (q's, as FlashAttention-3). The library serves the pairs (head_dim, head_dim_v) =
(192, 128) and (64, 512), fp16 and bf16, on its sm80 kernels (every GPU from compute capability 8.0) with every
forward option (causal, window, softcap, ALiBi, sinks, dropout, varlen, GQA, lse), and both without dropout on
its sm90 kernels (Hopper, a build with sm_90a code; taken there); another pair is its
FlashAttentionError (FA_STATUS_UNSUPPORTED, naming head_dim_v). The library's backward serves (192, 128), as
FlashAttention-3's (dq and dk take q's head dim, dv v's; the sm90 kernels on Hopper too, but for dropout); (64, 512) is
forward only, so such a call that autograd
would record (grad mode on and q, k, v or the sinks require grad) is refused up front with UnsupportedArgumentError,
before anything runs; call it under torch.no_grad() / torch.inference_mode() or on detached tensors. flash_attn_with_kvcache takes one head dim (v_cache shaped like k_cache).

Paged K/V (C ABI 0.11; FlashAttention-2's block_table of flash_attn_varlen_func, FlashAttention-3's page_table): with
block_table, int32 (batch, max_num_blocks_per_seq) on the GPU, k and v of flash_attn_varlen_func are pools of blocks,
[num_blocks, block_size, heads_kv, head_dim] and [num_blocks, block_size, heads_kv, head_dim_v]; key j of sequence b is
row j % block_size of block block_table[b, j // block_size], cu_seqlens_k still gives the key lengths (its values index
no tensor), and max_seqlen_k may not exceed max_num_blocks_per_seq * block_size. Rows of a sequence's last block past
its length are never used and table entries past its last block never read (they may hold anything). The library serves
block sizes that are multiples of 128 (flash-attn asks for multiples of 256; another size is its FlashAttentionError,
FA_STATUS_UNSUPPORTED), fp16 and bf16 (fp8 inputs with block_table are refused), with every other option but dropout
(causal, window, softcap, ALiBi, sinks, GQA, lse; dropout_p > 0 raises UnsupportedArgumentError); out is [total_q,
heads, head_dim_v] and the returned values are flash-attn's. Forward only, as in flash-attn (whose varlen backward reads
contiguous k and v, as the library's does): a call that autograd records (grad mode on, an input requires grad) runs and
records, so code that leaves grad mode on keeps working, and its backward raises UnsupportedArgumentError naming
block_table. A block id outside [0, num_blocks) of a page the kernels read is clamped on the GPU (no access leaves the
pools) and reported as decode's device checks are: the next call on the device raises FlashAttentionError
(FA_STATUS_DEVICE_CHECK_FAILED, its message naming block_table), or check_device_errors() does.
"""
import importlib

from . import _args

_ops = None


def _torch_ops():
    """_ops, imported on the first call (it imports torch and registers the custom ops)."""
    global _ops
    if _ops is None:
        try:
            importlib.import_module("torch")
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
    _args.dropout_arg(function, dropout_p)
    scale = _args.softmax_scale_arg(function, softmax_scale)
    left, right = _args.window_arg(function, window_size)
    align = _args.causal_alignment_arg(function, causal_alignment)
    return scale, bool(causal), align, left, right, _args.softcap_arg(function, softcap)


def _finish(out, lse, return_attn_probs, q, s_dmask=None):
    if not return_attn_probs:
        return out
    # flash-attn returns S_dmask only with dropout (the attention probabilities, for tests); with dropout_p=0 it
    # returns an empty tensor in its place, as here. With dropout, s_dmask is the keep mask in flash-attn's sign
    # convention (see the module's notes).
    return out, lse, q.new_empty((0,)) if s_dmask is None else s_dmask


def _attn_inputs(ops, function, q, k, v, plain, rank, layout, kv_rank=None, kv_layout=None):
    """q, k, v checked (CUDA tensors, dtype, rank) and made what the library takes (attn_input). kv_rank / kv_layout:
    k's and v's when they differ from q's (the paged pools)."""
    if not (plain and q.is_cuda and k.is_cuda and v.is_cuda):
        ops.require_cuda(function, q=q, k=k, v=v)
    q, k, v = ops.attn_input(function, "q", q, plain), ops.attn_input(function, "k", k, plain), \
        ops.attn_input(function, "v", v, plain)
    kv_rank, kv_layout = (rank, layout) if kv_rank is None else (kv_rank, kv_layout)
    for n, t, r, lay in (("q", q, rank, layout), ("k", k, kv_rank, kv_layout), ("v", v, kv_rank, kv_layout)):
        if t.dim() != r:
            raise ValueError(f"{function}: {n} must be {lay}, got shape {tuple(t.shape)}")
    return q, k, v


_NO_DESCALES = (None, None, None)
_DENSE_LAYOUT = "[batch, seqlen, heads, head_dim]"
_VARLEN_LAYOUT = "[total, heads, head_dim]"
_PAGED_LAYOUT = "a pool [num_blocks, block_size, heads_kv, head_dim] with block_table (paged K/V)"


def _dense(function, q, k, v, opts, deterministic, return_attn_probs, descales=_NO_DESCALES):
    ops = _ops or _torch_ops()
    if descales is not _NO_DESCALES:
        return _fp8(ops, function, q, k, v, None, None, 0, 0, opts, descales, return_attn_probs)
    r = ops.dense_eager(q, k, v, opts, deterministic, return_attn_probs)  # the whole call, when it is plain
    if r is not None:
        return r
    return _dense_general(ops, function, q, k, v, opts, deterministic, return_attn_probs)


def _dense_general(ops, function, q, k, v, opts, deterministic, return_attn_probs):
    if ops.is_fp8(q):
        return _fp8(ops, function, q, k, v, None, None, 0, 0, opts, _NO_DESCALES, return_attn_probs)
    ops.refuse_v_head_dim_grad(function, q, k, v)
    plain = ops.plain_eager(q, k, v)  # False under torch.compile: the custom op
    q, k, v = _attn_inputs(ops, function, q, k, v, plain, 4, _DENSE_LAYOUT)
    out, lse = ops.attention(q, k, v, opts, bool(deterministic), None, None, 0, 0, plain, return_attn_probs)
    return _finish(out, lse, return_attn_probs, q)


def _cu_seqlens(ops, function, cu_seqlens_q, cu_seqlens_k):
    cu_q = ops.int32_input(function, "cu_seqlens_q", cu_seqlens_q)
    cu_k = ops.int32_input(function, "cu_seqlens_k", cu_seqlens_k)
    if cu_q.dim() != 1 or cu_k.dim() != 1 or cu_q.shape[0] != cu_k.shape[0] or cu_q.shape[0] < 2:
        raise ValueError(f"{function}: cu_seqlens_q and cu_seqlens_k must both be [batch + 1] (batch >= 1), got "
                         f"{tuple(cu_q.shape)} and {tuple(cu_k.shape)}")
    return cu_q, cu_k


def _varlen(function, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts, deterministic,
            return_attn_probs, descales=_NO_DESCALES):
    ops = _torch_ops()
    if descales is not _NO_DESCALES or ops.is_fp8(q):
        return _fp8(ops, function, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts, descales,
                    return_attn_probs)
    ops.refuse_v_head_dim_grad(function, q, k, v)
    plain = ops.plain_eager(q, k, v, cu_seqlens_q, cu_seqlens_k)
    if not (plain and cu_seqlens_q.is_cuda and cu_seqlens_k.is_cuda):
        ops.require_cuda(function, q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    q, k, v = _attn_inputs(ops, function, q, k, v, plain, 3, _VARLEN_LAYOUT)
    cu_q, cu_k = _cu_seqlens(ops, function, cu_seqlens_q, cu_seqlens_k)
    out, lse = ops.attention(q, k, v, opts, bool(deterministic), cu_q, cu_k, int(max_seqlen_q), int(max_seqlen_k),
                             plain, return_attn_probs)
    return _finish(out, lse, return_attn_probs, q)


def _descales(q_descale, k_descale, v_descale):
    """The descale arguments as one tuple (_NO_DESCALES itself when none is given: the 16-bit calls' test)."""
    if q_descale is None and k_descale is None and v_descale is None:
        return _NO_DESCALES
    return q_descale, k_descale, v_descale


def _fp8(ops, function, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts, descales,
         return_attn_probs):
    """The fp8 forward (FlashAttention-3's): q, k and v torch.float8_e4m3fn, out bf16, descales float32
    (batch, nheads_k) or None; fixed-length when cu_seqlens_q is None. Never recorded by autograd."""
    if not ops.is_fp8(q):
        given = next(n for n, t in zip(_args.DESCALE_NAMES, descales) if t is not None)
        raise ValueError(f"{function}: {given} is given but q is {getattr(q, 'dtype', type(q).__name__)}; descale "
                         "factors scale torch.float8_e4m3fn inputs only (as in FlashAttention-3)")
    varlen = cu_seqlens_q is not None
    if ops.requires_grad(q, k, v):
        _args.refuse_fp8_grad(function)
    # The argument checks first, then the device (so that they can be tested on CPU tensors).
    plain = ops.plain_eager(q, k, v, cu_seqlens_q, cu_seqlens_k, *descales)
    rank, layout = (3, _VARLEN_LAYOUT) if varlen else (4, _DENSE_LAYOUT)
    q, k, v = (ops.attn_input(function, n, t, plain, fp8=True) for n, t in (("q", q), ("k", k), ("v", v)))
    for n, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != rank:
            raise ValueError(f"{function}: {n} must be {layout}, got shape {tuple(t.shape)}")
    cu_q = cu_k = None
    if varlen:
        cu_q, cu_k = _cu_seqlens(ops, function, cu_seqlens_q, cu_seqlens_k)
    batch = cu_q.shape[0] - 1 if varlen else q.shape[0]
    checked = tuple(ops.fp8_descale(function, n, t, batch, k.shape[-2]) for n, t in zip(_args.DESCALE_NAMES, descales))
    ops.require_cuda(function, q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                     **dict(zip(_args.DESCALE_NAMES, checked)))
    out, lse = ops.attention_fp8(q, k, v, checked, opts, cu_q, cu_k, int(max_seqlen_q), int(max_seqlen_k), plain,
                                 return_attn_probs)
    return _finish(out, lse, return_attn_probs, q)


def _with_sinks(function, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts, deterministic,
                return_attn_probs, descales, sinks, alibi_slopes=None, dropout_p=0.0):
    """A call with the extras, learnable sinks, ALiBi slopes and/or dropout (None or 0.0 when absent; fixed-length
    when cu_seqlens_q is None): the extras checked first (on any device), then q, k, v as every call checks them, then
    the devices; through the extras ops (differentiable in the sinks; the slopes get no gradient, as in
    FlashAttention-2)."""
    ops = _ops or _torch_ops()
    dropout_p = _args.dropout_arg(function, dropout_p)
    if dropout_p and (descales is not _NO_DESCALES or ops.is_fp8(q)):
        _args.refuse(function, "dropout_p", dropout_p, "fp8 inputs have no dropout (FlashAttention-3 has none; the "
                     "library's fp8 kernels have no dropout variant)")
    if descales is not _NO_DESCALES or ops.is_fp8(q):
        if sinks is not None:
            _args.refuse(function, "sinks", "<tensor>", "learnable sinks with fp8 inputs are served by the C ABI (0.7) "
                         "but not wired into this package yet; use fp16/bf16 inputs")
        _args.refuse(function, "alibi_slopes", "<tensor>", "ALiBi with fp8 inputs is served by the C ABI (0.8) but not "
                     "wired into this package yet; use fp16/bf16 inputs")
    varlen = cu_seqlens_q is not None
    rank, layout = (3, _VARLEN_LAYOUT) if varlen else (4, _DENSE_LAYOUT)
    if getattr(q, "dim", None) is None or q.dim() != rank:
        raise ValueError(f"{function}: q must be {layout}, got shape {_shape(q)}")
    if sinks is not None:
        sinks = ops.sink_input(function, sinks, q.shape[-2])
    if alibi_slopes is not None:
        # The batch of the (batch, nheads) form: the sequences of a variable-length batch.
        batch = (cu_seqlens_q.shape[0] - 1 if hasattr(cu_seqlens_q, "shape") else -1) if varlen else q.shape[0]
        alibi_slopes = ops.alibi_input(function, alibi_slopes, batch, q.shape[-2])
    ops.refuse_v_head_dim_grad(function, q, k, v, sinks)
    plain = ops.plain_eager(q, k, v, cu_seqlens_q, cu_seqlens_k, sinks, alibi_slopes)
    q, k, v = _attn_inputs(ops, function, q, k, v, plain, rank, layout)
    cu_q = cu_k = None
    if varlen:
        ops.require_cuda(function, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
        cu_q, cu_k = _cu_seqlens(ops, function, cu_seqlens_q, cu_seqlens_k)
    ops.require_cuda(function, sinks=sinks, alibi_slopes=alibi_slopes)
    out, lse, mask = ops.attention_sink(q, k, v, sinks, alibi_slopes, opts, bool(deterministic), cu_q, cu_k,
                                        int(max_seqlen_q), int(max_seqlen_k), plain, dropout_p,
                                        bool(return_attn_probs and dropout_p))
    return _finish(out, lse, return_attn_probs, q, ops.s_dmask_of(mask, q) if mask is not None else None)


def _refuse_paged_fp8(function):
    _args.refuse(function, "block_table", "<tensor>", "the library's paged K/V forward serves fp16 and bf16 q, k and "
                 "v; its fp8 forward reads contiguous keys and values")


def _paged(function, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts, return_attn_probs,
           descales, block_table, sinks=None, alibi_slopes=None, dropout_p=0.0):
    """A variable-length call whose k and v are pools paged by block_table (C ABI 0.11; FlashAttention-2's block_table
    of flash_attn_varlen_func), with any of the extras (None or 0.0 when absent): the arguments checked first (on any
    device), then q, k, v as every call checks them, then the devices. Forward only: recorded by autograd when an
    input requires grad, whose backward raises (see _ops.attention_paged)."""
    dropout_p = _args.dropout_arg(function, dropout_p)
    if dropout_p:
        # Refused here, before a seed and offset would be drawn from PyTorch's generator (the library refuses it too).
        _args.refuse(function, "dropout_p", dropout_p, "paged K/V (block_table) is served without dropout: it is for "
                     "attention over a KV cache; gather the keys and values into packed tensors to train with dropout")
    if descales is not _NO_DESCALES:
        _refuse_paged_fp8(function)
    if cu_seqlens_q is None or cu_seqlens_k is None:
        raise ValueError(f"{function}: block_table pages the keys and values of a variable-length batch: cu_seqlens_q "
                         "and cu_seqlens_k must be given (cu_seqlens_k gives the key lengths)")
    if getattr(q, "dim", None) is None or q.dim() != 3:
        raise ValueError(f"{function}: q must be {_VARLEN_LAYOUT}, got shape {_shape(q)}")
    for n, t in (("k", k), ("v", v)):
        if getattr(t, "dim", None) is None or t.dim() != 4:
            raise ValueError(f"{function}: {n} must be {_PAGED_LAYOUT}, got shape {_shape(t)}")
    ops = _ops or _torch_ops()
    if ops.is_fp8(q):
        _refuse_paged_fp8(function)
    batch = cu_seqlens_q.shape[0] - 1 if getattr(cu_seqlens_q, "dim", None) is not None and cu_seqlens_q.dim() == 1 \
        else -1
    block_table = ops.block_table_input(function, block_table, batch)
    if sinks is not None:
        sinks = ops.sink_input(function, sinks, q.shape[-2])
    if alibi_slopes is not None:
        alibi_slopes = ops.alibi_input(function, alibi_slopes, batch, q.shape[-2])
    plain = ops.plain_eager(q, k, v, cu_seqlens_q, cu_seqlens_k, block_table, sinks, alibi_slopes)
    q, k, v = _attn_inputs(ops, function, q, k, v, plain, 3, _VARLEN_LAYOUT, 4, _PAGED_LAYOUT)
    ops.require_cuda(function, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, block_table=block_table,
                     sinks=sinks, alibi_slopes=alibi_slopes)
    cu_q, cu_k = _cu_seqlens(ops, function, cu_seqlens_q, cu_seqlens_k)
    out, lse, mask = ops.attention_paged(q, k, v, block_table, sinks, alibi_slopes, opts, cu_q, cu_k,
                                         int(max_seqlen_q), int(max_seqlen_k), plain, dropout_p,
                                         bool(return_attn_probs and dropout_p))
    return _finish(out, lse, return_attn_probs, q, ops.s_dmask_of(mask, q) if mask is not None else None)


# ---- public API -------------------------------------------------------------------------------------------

def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                    causal_alignment="bottom_right", q_descale=None, k_descale=None, v_descale=None,
                    sinks=None, learnable_sink=None):
    """Attention over q [batch, seqlen_q, heads, head_dim], k [batch, seqlen_k, heads_kv, head_dim] and v
    [batch, seqlen_k, heads_kv, head_dim_v] (fp16 or bf16, CUDA; head_dim_v is head_dim, or FlashAttention-3's pairs
    (192, 128) and (64, 512): see the module's notes). Returns out [batch, seqlen_q, heads, head_dim_v];
    with return_attn_probs, (out, softmax_lse [batch, heads, seqlen_q] fp32, S_dmask: empty without dropout, the keep
    mask as +1/-1 with it). Differentiable in q, k and v (but for head dims (64, 512)). dropout_p: FlashAttention-2's
    dropout (see the module's notes).

    fp8: q, k and v torch.float8_e4m3fn give a bf16 out; q_descale, k_descale, v_descale: float32
    (batch, nheads_k) factors (None: 1.0), as FlashAttention-3's. Not differentiable (see the module's notes).

    sinks (or learnable_sink, FlashAttention-4's name): (nheads,) fp32/fp16/bf16 learnable attention sinks, one logit
    per query head in the softmax denominator (see the module's notes); differentiable."""
    f = "flash_attn_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    if sinks is not None or learnable_sink is not None or alibi_slopes is not None or dropout_p:
        return _with_sinks(f, q, k, v, None, None, 0, 0, opts, deterministic, return_attn_probs,
                           _descales(q_descale, k_descale, v_descale), _args.sinks_arg(f, sinks, learnable_sink),
                           alibi_slopes, dropout_p=dropout_p)
    if q_descale is not None or k_descale is not None or v_descale is not None:
        return _dense(f, q, k, v, opts, deterministic, return_attn_probs, (q_descale, k_descale, v_descale))
    ops = _ops or _torch_ops()
    r = ops.dense_eager(q, k, v, opts, deterministic, return_attn_probs)  # _dense, inlined (host time)
    if r is not None:
        return r
    return _dense_general(ops, f, q, k, v, opts, deterministic, return_attn_probs)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                              causal_alignment="bottom_right", q_descale=None, k_descale=None, v_descale=None,
                              sinks=None, learnable_sink=None):
    """flash_attn_func on qkv [batch, seqlen, 3, heads, head_dim] (the three read in place, as strided views); fp8
    qkv with its descales as flash_attn_func's."""
    f = "flash_attn_qkvpacked_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    if getattr(qkv, "dim", None) is None or qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"{f}: qkv must be [batch, seqlen, 3, heads, head_dim], got {_shape(qkv)}")
    if sinks is not None or learnable_sink is not None or alibi_slopes is not None or dropout_p:
        return _with_sinks(f, qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], None, None, 0, 0, opts, deterministic,
                           return_attn_probs, _descales(q_descale, k_descale, v_descale),
                           _args.sinks_arg(f, sinks, learnable_sink), alibi_slopes, dropout_p=dropout_p)
    return _dense(f, qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], opts, deterministic, return_attn_probs,
                  _descales(q_descale, k_descale, v_descale))


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                             causal_alignment="bottom_right", q_descale=None, k_descale=None, v_descale=None,
                             sinks=None, learnable_sink=None):
    """flash_attn_func on q and kv [batch, seqlen_k, 2, heads_kv, head_dim]; fp8 as flash_attn_func's."""
    f = "flash_attn_kvpacked_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    if getattr(kv, "dim", None) is None or kv.dim() != 5 or kv.shape[2] != 2:
        raise ValueError(f"{f}: kv must be [batch, seqlen_k, 2, heads_kv, head_dim], got {_shape(kv)}")
    if sinks is not None or learnable_sink is not None or alibi_slopes is not None or dropout_p:
        return _with_sinks(f, q, kv[:, :, 0], kv[:, :, 1], None, None, 0, 0, opts, deterministic, return_attn_probs,
                           _descales(q_descale, k_descale, v_descale), _args.sinks_arg(f, sinks, learnable_sink),
                           alibi_slopes, dropout_p=dropout_p)
    return _dense(f, q, kv[:, :, 0], kv[:, :, 1], opts, deterministic, return_attn_probs,
                  _descales(q_descale, k_descale, v_descale))


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, *,
                           causal_alignment="bottom_right", q_descale=None, k_descale=None, v_descale=None,
                           sinks=None, learnable_sink=None):
    """Variable-length batch: q [total_q, heads, head_dim], k [total_k, heads_kv, head_dim] and v [total_k, heads_kv,
    head_dim_v] (head_dim_v as flash_attn_func's), cu_seqlens_q/k int32 [batch + 1] prefix sums on the GPU,
    max_seqlen_q/k the longest lengths (host ints; no host copy of the lengths is made). out is [total_q, heads,
    head_dim_v], softmax_lse [heads, total_q]. fp8 as flash_attn_func's, the descales (batch, nheads_k) with one row
    per sequence.

    block_table (FlashAttention-2's paged K/V; int32 (batch, max_num_blocks_per_seq) on the GPU): k [num_blocks,
    block_size, heads_kv, head_dim] and v [num_blocks, block_size, heads_kv, head_dim_v] are then pools of blocks, key
    j of sequence b row j % block_size of block block_table[b, j // block_size]; cu_seqlens_k still gives the key
    lengths, and max_seqlen_k is at most max_num_blocks_per_seq * block_size. block_size a multiple of 128 (flash-attn:
    256); fp16 and bf16 (not fp8); every other option but dropout applies. Forward only, as flash-attn's: a call
    autograd records runs, and its backward raises UnsupportedArgumentError. A block id outside [0, num_blocks) of a
    page the kernels read is clamped on the GPU and reported by the next call on the device (FlashAttentionError,
    FA_STATUS_DEVICE_CHECK_FAILED, naming block_table) or by check_device_errors()."""
    f = "flash_attn_varlen_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    if block_table is not None:
        return _paged(f, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts, return_attn_probs,
                      _descales(q_descale, k_descale, v_descale), block_table,
                      _args.sinks_arg(f, sinks, learnable_sink), alibi_slopes, dropout_p)
    if sinks is not None or learnable_sink is not None or alibi_slopes is not None or dropout_p:
        return _with_sinks(f, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts, deterministic,
                           return_attn_probs, _descales(q_descale, k_descale, v_descale),
                           _args.sinks_arg(f, sinks, learnable_sink), alibi_slopes, dropout_p=dropout_p)
    return _varlen(f, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts, deterministic,
                   return_attn_probs, _descales(q_descale, k_descale, v_descale))


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False, *, causal_alignment="bottom_right", q_descale=None,
                                     k_descale=None, v_descale=None, sinks=None, learnable_sink=None):
    """flash_attn_varlen_func on qkv [total, 3, heads, head_dim]; fp8 as flash_attn_varlen_func's."""
    f = "flash_attn_varlen_qkvpacked_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    if getattr(qkv, "dim", None) is None or qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"{f}: qkv must be [total, 3, heads, head_dim], got {_shape(qkv)}")
    if sinks is not None or learnable_sink is not None or alibi_slopes is not None or dropout_p:
        return _with_sinks(f, qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, opts,
                           deterministic, return_attn_probs, _descales(q_descale, k_descale, v_descale),
                           _args.sinks_arg(f, sinks, learnable_sink), alibi_slopes, dropout_p=dropout_p)
    return _varlen(f, qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, opts,
                   deterministic, return_attn_probs, _descales(q_descale, k_descale, v_descale))


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                                    causal_alignment="bottom_right", q_descale=None, k_descale=None, v_descale=None,
                                    sinks=None, learnable_sink=None):
    """flash_attn_varlen_func on q [total_q, heads, head_dim] and kv [total_k, 2, heads_kv, head_dim]; fp8 as
    flash_attn_varlen_func's."""
    f = "flash_attn_varlen_kvpacked_func"
    opts = _options(f, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, causal_alignment)
    if getattr(kv, "dim", None) is None or kv.dim() != 4 or kv.shape[1] != 2:
        raise ValueError(f"{f}: kv must be [total_k, 2, heads_kv, head_dim], got {_shape(kv)}")
    if sinks is not None or learnable_sink is not None or alibi_slopes is not None or dropout_p:
        return _with_sinks(f, q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts,
                           deterministic, return_attn_probs, _descales(q_descale, k_descale, v_descale),
                           _args.sinks_arg(f, sinks, learnable_sink), alibi_slopes, dropout_p=dropout_p)
    return _varlen(f, q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opts,
                   deterministic, return_attn_probs, _descales(q_descale, k_descale, v_descale))


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False,
                            *, cu_seqlens_q=None, cu_seqlens_k_new=None, max_seqlen_q=None, k_descale=None,
                            v_descale=None):
    """Attention of q [batch, seqlen_q, heads, head_dim] over a KV cache: k_cache/v_cache [batch_cache, capacity,
    heads_kv, head_dim], or paged [num_blocks, block_size, heads_kv, head_dim] with block_table int32
    [batch_cache, max_blocks_per_seq]. k/v [batch, seqlen_new, heads_kv, head_dim] (seqlen_new may differ from
    seqlen_q), when given, are first written into the cache at cache_seqlens (in place); cache_seqlens (int or int32
    [batch]) is only read, as in flash-attn. cache_batch_idx (int32 [batch]): sequence b reads and appends cache row
    cache_batch_idx[b] (paged: block_table row, as FlashAttention-3; batch_cache is then any pool size). cache_leftpad
    (int32 [batch]): the first valid cache position of each sequence (allowed with paging, as FlashAttention-3); keys
    are positions cache_leftpad .. cache_seqlens + seqlen_new - 1. Causal and window are placed bottom-right over
    those keys. A device value outside the pool or past the sequence is clamped by the kernels and reported by the
    next call (FlashAttentionError, FA_STATUS_DEVICE_CHECK_FAILED). rotary_cos / rotary_sin ([seqlen_ro,
    rotary_dim / 2], q's dtype; only with k/v): the new keys are rotated at positions cache_seqlens + j before they
    are stored, and the queries at cache_seqlens + i (causal or windowed) or cache_seqlens (otherwise);
    rotary_interleaved=True (flash-attn's default) rotates pairs (2t, 2t+1) (GPT-J), False pairs (t, t + rotary_dim/2)
    (GPT-NeoX). rotary_dim = 2 * rotary_cos.shape[1], a multiple of 16 up to head_dim; seqlen_ro at least the cache
    capacity. cu_seqlens_q / cu_seqlens_k_new (int32 [batch + 1], FlashAttention-3's): per-sequence query and append
    counts as prefix sums; q (and out) are then packed [total_q, heads, head_dim] and max_seqlen_q (the largest count)
    is required; k/v packed [total_k_new, heads_kv, head_dim]. Each sequence's keys are appended first and its causal
    diagonal sits bottom-right over its final length. An fp8 KV cache (C ABI 0.13): k_cache and v_cache
    torch.float8_e4m3fn (q, k, v and out stay fp16 or bf16; head dims multiples of 16) with k_descale and v_descale,
    float32 CUDA tensors of shape (nheads_k,) or (1,) (not FlashAttention-3's (batch, nheads_k): a cache's factors belong
    to its heads, not to a call's sequences): the attended key is float(k_cache[..]) * k_descale[h_kv] (the
    value likewise with v_descale), and an appended key is what a cache of q's dtype would store, divided by its
    descale in fp32 and rounded to e4m3 (nearest even, saturated to +-448, NaN kept). Returns out, or (out,
    softmax_lse [batch, heads, seqlen_q], or [heads, total_q] with cu_seqlens_q). Not differentiable."""
    f = "flash_attn_with_kvcache"
    scale = _args.softmax_scale_arg(f, softmax_scale)
    left, right = _args.window_arg(f, window_size)
    cap = _args.softcap_arg(f, softcap)
    splits = _args.num_splits_arg(f, num_splits)
    if (k is None) != (v is None):
        raise ValueError(f"{f}: k and v are given together or not at all")
    if cache_seqlens is None and k is not None:
        raise ValueError(f"{f}: appending k/v needs cache_seqlens (where to write them)")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError(f"{f}: rotary_cos and rotary_sin are given together or not at all")
    if rotary_cos is not None and k is None:
        raise ValueError(f"{f}: rotary_cos/rotary_sin need k and v: the rotary embedding is applied only to keys "
                         "appended in the call (as flash-attn requires)")
    if cu_seqlens_q is not None and max_seqlen_q is None:
        raise ValueError(f"{f}: cu_seqlens_q needs max_seqlen_q (the most queries one sequence has), as "
                         "FlashAttention-3 requires")
    if cu_seqlens_q is None and max_seqlen_q is not None:
        raise ValueError(f"{f}: max_seqlen_q is given without cu_seqlens_q; it sizes a batch of packed queries")
    if cu_seqlens_k_new is not None and k is None:
        raise ValueError(f"{f}: cu_seqlens_k_new is given without k/v; it counts the new keys each sequence appends")
    packed_q = cu_seqlens_q is not None
    ops = _torch_ops()
    import torch
    if any(ops.is_fp8(t) for t in (q, k, v)):
        _args.refuse(f, "dtype", "torch.float8_e4m3fn", "decode takes fp16 or bf16 queries and new keys/values; the "
                     "cache may be torch.float8_e4m3fn, with k_descale and v_descale")
    fp8_cache = ops.is_fp8(k_cache) or ops.is_fp8(v_cache)
    if fp8_cache:
        k_descale, v_descale = ops.kv_cache_descales(f, k_cache, v_cache, k_descale, v_descale)
    elif k_descale is not None or v_descale is not None:
        raise ValueError(f"{f}: {'k_descale' if k_descale is not None else 'v_descale'} is given but k_cache is "
                         f"{getattr(k_cache, 'dtype', type(k_cache).__name__)}; descales go with a torch.float8_e4m3fn "
                         "cache only")
    want_dim = 3 if packed_q else 4
    if getattr(q, "dim", None) is None or q.dim() != want_dim:
        raise ValueError(f"{f}: q must be " + ("[total_q, heads, head_dim] with cu_seqlens_q" if packed_q else
                                               "[batch, seqlen_q, heads, head_dim]") + f", got {_shape(q)}")
    if packed_q and (not isinstance(cu_seqlens_q, torch.Tensor) or cu_seqlens_q.dim() != 1):
        raise ValueError(f"{f}: cu_seqlens_q must be an int32 tensor [batch + 1], got {_shape(cu_seqlens_q)}")
    batch = cu_seqlens_q.shape[0] - 1 if packed_q else q.shape[0]
    if alibi_slopes is not None:
        alibi_slopes = ops.alibi_input(f, alibi_slopes, batch, q.shape[-2])
    ops.require_cuda(f, q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, block_table=block_table,
                     cache_seqlens=cache_seqlens if isinstance(cache_seqlens, torch.Tensor) else None,
                     cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad, alibi_slopes=alibi_slopes,
                     rotary_cos=rotary_cos, rotary_sin=rotary_sin, cu_seqlens_q=cu_seqlens_q,
                     cu_seqlens_k_new=cu_seqlens_k_new, k_descale=k_descale, v_descale=v_descale)
    q = ops.attn_input(f, "q", q)
    for n, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        # Written in place when k/v are appended: never replaced by a copy.
        if ops.attn_input(f, n, t, fp8=fp8_cache, fp8_of="an fp8 cache") is not t:
            raise ValueError(f"{f}: {n} must have a contiguous last dimension and a 16-byte aligned start (it is "
                             "written in place, so it cannot be copied)")
    if k is not None:
        k, v = ops.attn_input(f, "k", k), ops.attn_input(f, "v", v)
    if packed_q:
        cu_seqlens_q = ops.int32_input(f, "cu_seqlens_q", cu_seqlens_q)
    if cu_seqlens_k_new is not None:
        cu_seqlens_k_new = ops.int32_input(f, "cu_seqlens_k_new", cu_seqlens_k_new)
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
    if cache_batch_idx is not None:
        cache_batch_idx = ops.int32_input(f, "cache_batch_idx", cache_batch_idx)
    if cache_leftpad is not None:
        cache_leftpad = ops.int32_input(f, "cache_leftpad", cache_leftpad)
    if rotary_cos is not None:
        rotary_cos, rotary_sin = (_rotary_table(f, n, t, q) for n, t in (("rotary_cos", rotary_cos),
                                                                           ("rotary_sin", rotary_sin)))
        if rotary_cos.shape != rotary_sin.shape:
            raise ValueError(f"{f}: rotary_sin has shape {tuple(rotary_sin.shape)} but rotary_cos "
                             f"{tuple(rotary_cos.shape)}; both are [seqlen_ro, rotary_dim / 2]")
    out, lse = ops.decode(q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, cache_leftpad,
                          alibi_slopes, rotary_cos, rotary_sin, cu_seqlens_q, cu_seqlens_k_new, k_descale, v_descale,
                          scale, bool(causal), left, right, cap, splits, bool(rotary_interleaved),
                          int(max_seqlen_q or 0))
    return (out, lse) if return_softmax_lse else out


def _rotary_table(f, name, t, q):
    """A rotary table as the C ABI reads it: 2-D, q's dtype, contiguous and 16-byte aligned (a copy where it is not:
    the tables are only read)."""
    if t.dim() != 2:
        raise ValueError(f"{f}: {name} must be [seqlen_ro, rotary_dim / 2]; it has shape {tuple(t.shape)}")
    if t.dtype != q.dtype:
        raise ValueError(f"{f}: {name} is {t.dtype} but q is {q.dtype}; the rotary tables have q's dtype")
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _shape(t):
    return tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
