"""flash-attn arguments -> the C ABI's params structs, without torch.

Tensors arrive here as TensorDesc (a data pointer, an fa_dtype_t code, a shape and element strides), the CPU tests'
fake pointers that fa_*_check never dereferences, or, from the torch side (_ops.py), directly as the fa_tensor_t
field values (tensor_fields) that pack_forward, pack_backward and pack_decode write. Every refusal of an argument the
library does not serve is raised here, before any tensor is touched.
"""
import ctypes
import math
import numbers
import struct
from collections import namedtuple

from . import _abi


class UnsupportedArgumentError(NotImplementedError):
    """A flash-attn argument (or value) that FlashAttention.Interop does not serve yet. Raised, never ignored."""


TensorDesc = namedtuple("TensorDesc", "data dtype shape strides")
TensorDesc.__doc__ = "A tensor as the C ABI sees it: device address, fa_dtype_t code, shape, element strides."

CAUSAL_ALIGNMENTS = {"bottom_right": _abi.FA_CAUSAL_BOTTOM_RIGHT, "top_left": _abi.FA_CAUSAL_TOP_LEFT}


# ---- argument mapping (flash-attn 2.x semantics) --------------------------------------------------------------

def refuse(function, name, value, why):
    raise UnsupportedArgumentError(f"{function}: {name}={value!r} is not served by FlashAttention.Interop yet ({why})")


_F32 = struct.Struct("<f")


def dropout_arg(function, dropout_p):
    """dropout_p as a float in [0, 1) (FlashAttention-2's check: p < 1), refused with the reason otherwise; any real
    number (numpy scalars too) but bool. The library takes a 32-bit float: a p that rounds to 1.0 there (above
    1 - 2^-25) is refused here too, and one that rounds to 0 (below about 1e-45) is read as no dropout."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"{function}: dropout_p must be a float in [0, 1), got {type(dropout_p).__name__}")
    p = float(dropout_p)
    p32 = _F32.unpack(_F32.pack(p))[0] if p == p and abs(p) < 3e38 else p  # the float the C ABI reads
    if not (0.0 <= p < 1.0 and p32 < 1.0):  # NaN fails too
        raise ValueError(f"{function}: dropout_p is {dropout_p!r}; it must be in [0, 1) (the probability of dropping "
                         "each attention weight; 0: no dropout)")
    return p32


def softmax_scale_arg(function, softmax_scale):
    """flash-attn's softmax_scale (None: 1/sqrt(head_dim)) as the ABI's field (0: 1/sqrt(head_dim))."""
    if softmax_scale is None:
        return 0.0
    s = float(softmax_scale)
    if s == 0.0:
        refuse(function, "softmax_scale", softmax_scale,
               "the C ABI reads 0 as 1/sqrt(head_dim); a zero scale (uniform attention) cannot be asked for")
    if not math.isfinite(s):
        raise ValueError(f"{function}: softmax_scale must be finite, got {softmax_scale!r}")
    return s


def softcap_arg(function, softcap):
    """flash-attn's softcap: any value <= 0 turns it off."""
    c = float(softcap if softcap is not None else 0.0)
    if math.isnan(c) or math.isinf(c):
        raise ValueError(f"{function}: softcap must be finite, got {softcap!r}")
    return c if c > 0.0 else 0.0


_UNBOUNDED = (-1, -1)


def window_arg(function, window_size):
    """window_size=(left, right): -1 is unbounded on that side; each side an int >= -1."""
    if type(window_size) is tuple and window_size == _UNBOUNDED:  # the default, without the loop below
        return _UNBOUNDED
    try:
        left, right = window_size
    except (TypeError, ValueError):
        raise ValueError(f"{function}: window_size must be a pair (left, right), got {window_size!r}") from None
    out = []
    for side, w in (("left", left), ("right", right)):
        if isinstance(w, bool) or int(w) != w:
            raise ValueError(f"{function}: window_size {side} must be an int, got {w!r}")
        w = int(w)
        if w < -1:
            raise ValueError(f"{function}: window_size {side} must be >= -1 (-1: unbounded), got {w}")
        if w > 2**31 - 1:
            w = -1  # wider than any sequence the ABI can describe: unbounded
        out.append(w)
    return tuple(out)


def causal_alignment_arg(function, causal_alignment):
    try:
        return CAUSAL_ALIGNMENTS[causal_alignment]
    except (KeyError, TypeError):
        raise ValueError(f"{function}: causal_alignment must be one of {sorted(CAUSAL_ALIGNMENTS)}, "
                         f"got {causal_alignment!r}") from None


DESCALE_NAMES = ("q_descale", "k_descale", "v_descale")


def no_descales(q_descale, k_descale, v_descale):
    """True when no fp8 descale factor is given (the 16-bit calls' fast test)."""
    return q_descale is None and k_descale is None and v_descale is None


def refuse_fp8_grad(function):
    """fp8 inputs that require grad: FlashAttention-3 has no fp8 backward, and neither has the library."""
    raise UnsupportedArgumentError(
        f"{function}: fp8 (torch.float8_e4m3fn) q, k and v have no backward pass (as in FlashAttention-3, the fp8 "
        "forward is inference-only): they must not require grad; call it under torch.no_grad() or on detached "
        "tensors, or use bf16/fp16 inputs for training")


# (head_dim, head_dim_v) pairs whose backward the library serves (C ABI 0.10: FlashAttention-3's (192, 128)).
V_HEAD_DIM_BACKWARD_PAIRS = frozenset({(192, 128)})


def refuse_v_head_dim_grad(function, head_dim, head_dim_v):
    """A call whose v has a head dim other than q's (C ABI 0.10) that autograd would record, of a pair whose backward
    the library does not serve: refused up front, before any work is queued, rather than failing later in backward()
    (or, worse, giving gradients of another shape)."""
    raise UnsupportedArgumentError(
        f"{function}: v's head dim {head_dim_v} differs from q's and k's {head_dim}, and autograd would record the "
        "call (grad mode is on and an input requires grad), but the library serves the backward of a V head dim other "
        "than q's for (head_dim, head_dim_v) = (192, 128) only (this pair is forward only): call it under "
        "torch.no_grad() or torch.inference_mode(), or on detached tensors, or give v q's head dim for training")


def paged_kv_no_backward(function="flash_attn_varlen_func"):
    """The error of a backward through a forward with block_table (paged K/V, C ABI 0.11): neither the library's
    fa_backward nor flash-attn's variable-length backward reads a paged pool. Raised by the backward, as flash-attn's
    fails there too: the forward runs and records, so inference code that leaves grad mode on keeps working."""
    return UnsupportedArgumentError(
        f"{function}: the call had block_table (paged K/V), which has no backward pass (as in flash-attn, whose "
        "variable-length backward reads contiguous k and v; the library's fa_backward has no paged K/V): run such "
        "calls under torch.no_grad() or torch.inference_mode(), or on detached tensors, or gather the keys and values "
        "out of the pool into a contiguous variable-length batch for training")


def num_splits_arg(function, num_splits):
    n = int(num_splits)
    if n < 0 or n > _abi.FA_DECODE_MAX_SPLITS:
        raise ValueError(f"{function}: num_splits must be 0 (chosen by the library) or 1..{_abi.FA_DECODE_MAX_SPLITS}"
                         f", got {num_splits!r}")
    return n


# ---- params structs -------------------------------------------------------------------------------------------
#
# A params struct is a copy of its fa_*_params_init template (Library.new_params) whose fields are then written by a
# few struct.pack_into calls, one per run of adjacent fields, instead of one ctypes attribute set (and one FaTensor
# object) per field: this is the per-call host cost of every attention call, about 1 us this way against 5-7 us field
# by field. The formats come from the ctypes mirror at import, which also checks that each run's fields are adjacent
# (a header change that breaks that fails the import, never a call). A tensor is passed as its fa_tensor_t field
# values (tensor_fields), so the torch side never builds a TensorDesc or an FaTensor per call.

_SCALAR_FORMATS = {ctypes.c_int32: "i", ctypes.c_uint32: "I", ctypes.c_int64: "q", ctypes.c_uint64: "Q",
                   ctypes.c_float: "f", ctypes.c_double: "d", ctypes.c_void_p: "Q"}


def _format_of(ctype):
    """struct format (standard sizes, no padding) of a ctypes type of the mirror."""
    if issubclass(ctype, ctypes.Structure):
        return _run_format(ctype, [f[0] for f in ctype._fields_], whole=True)
    if issubclass(ctype, ctypes.Array):
        return str(ctype._length_) + _format_of(ctype._type_)
    if issubclass(ctype, ctypes._Pointer):
        return "Q"
    return _SCALAR_FORMATS[ctype]


def _run_format(cls, names, whole=False):
    types = dict(cls._fields_)
    start = end = getattr(cls, names[0]).offset
    fmt = ""
    for name in names:
        field = getattr(cls, name)
        if field.offset != end:
            raise ImportError(f"{cls.__name__}.{name} is not right after {names[0]}..: the packing runs of _args.py "
                              "no longer match the ctypes mirror")
        fmt += _format_of(types[name])
        end += field.size
    if struct.calcsize("<" + fmt) != end - start or (whole and end != ctypes.sizeof(cls)):
        raise ImportError(f"{cls.__name__}: struct format {fmt!r} does not cover its fields {names}")
    return fmt


def _run(cls, *names):
    """(offset, struct.Struct) writing the adjacent fields `names` of params struct `cls` in one pack_into."""
    return getattr(cls, names[0]).offset, struct.Struct("<" + _run_format(cls, names))


_RANK_PAD = {r: (0,) * (_abi.FA_MAX_RANK - r) for r in range(1, _abi.FA_MAX_RANK + 1)}
NO_TENSOR = (0,) * (3 + 2 * _abi.FA_MAX_RANK)  # a zeroed fa_tensor_t: the ABI's "not given"


def tensor_fields(data, dtype, shape, strides):
    """The fa_tensor_t field values (data, dtype, rank, shape[4], strides[4]) of a tensor, what pack_* take."""
    pad = _RANK_PAD.get(len(shape))
    if pad is None or len(strides) != len(shape):
        raise ValueError(f"a tensor of rank {len(shape)} (shape {tuple(shape)}) cannot be described: the "
                         f"C ABI takes rank 1..{_abi.FA_MAX_RANK}")
    return (data or 0, dtype, len(shape), *shape, *pad, *strides, *pad)


def desc_fields(desc):
    """tensor_fields of a TensorDesc (None: NO_TENSOR)."""
    return NO_TENSOR if desc is None else tensor_fields(*desc)


def fa_tensor(desc):
    """The fa_tensor_t of a TensorDesc (None: a zeroed descriptor, the ABI's "not given")."""
    return _abi.FaTensor.from_buffer_copy(_TENSOR.pack(*desc_fields(desc)))


_TENSOR = struct.Struct("<" + _format_of(_abi.FaTensor))
_F = _abi.FaForwardParams
_FWD_MAIN = _run(_F, "q", "k", "v", "out", "lse", "softmax_scale", "causal", "causal_alignment")
_FWD_WINDOW = _run(_F, "window_left", "window_right", "softcap")
_FWD_CU = _run(_F, "cu_seqlens_q", "cu_seqlens_k")
_FWD_LENS = _run(_F, "varlen_batch", "max_seqlen_q", "max_seqlen_k")
_FWD_DESCALE = _run(_F, "q_descale", "k_descale", "v_descale")
_FWD_SINKS = _run(_F, "sinks")
_FWD_ALIBI = _run(_F, "alibi_slopes")
_FWD_DROPOUT = _run(_F, "dropout_p", "reserved3", "dropout_seed", "dropout_offset", "dropout_seed_device",
                    "dropout_offset_device", "dropout_rng_state", "dropout_mask")  # C ABI 0.9
_FWD_PAGED = _run(_F, "block_table")  # C ABI 0.11
_B = _abi.FaBackwardParams
_BWD_MAIN = _run(_B, "q", "k", "v", "out", "dout", "lse", "dq", "dk", "dv", "softmax_scale", "causal",
                 "causal_alignment")
_BWD_WINDOW = _run(_B, "window_left", "window_right", "softcap", "deterministic")
_BWD_CU = _run(_B, "cu_seqlens_q", "cu_seqlens_k")
_BWD_LENS = _run(_B, "varlen_batch", "max_seqlen_q", "max_seqlen_k")
_BWD_SINKS = _run(_B, "sinks", "dsinks")
_BWD_ALIBI = _run(_B, "alibi_slopes")
_BWD_DROPOUT = _run(_B, "dropout_p", "reserved2", "dropout_seed", "dropout_offset", "dropout_seed_device",
                    "dropout_offset_device")  # C ABI 0.9
_D = _abi.FaDecodeParams
_DEC_MAIN = _run(_D, "q", "k_cache", "v_cache", "k_new", "v_new", "out", "lse", "cache_seqlens", "block_table",
                 "softmax_scale", "causal", "window_left", "window_right", "softcap")
_DEC_SPLITS = _run(_D, "num_splits", "advance_cache_seqlens")
_DEC_SERVING = _run(_D, "cache_batch_idx", "cache_leftpad")  # C ABI 0.7
_DEC_ALIBI = _run(_D, "alibi_slopes")  # C ABI 0.8
_ALIBI_RUNS = {"forward": _FWD_ALIBI, "backward": _BWD_ALIBI, "decode": _DEC_ALIBI}
_DEC_ROTARY = _run(_D, "rotary_cos", "rotary_sin", "rotary_dim", "rotary_seqlen", "rotary_interleaved",
                   "reserved1")  # C ABI 0.8
_DEC_COUNTS = _run(_D, "cu_seqlens_q", "cu_seqlens_k_new")  # C ABI 0.12
_DEC_MAX_Q = _run(_D, "max_seqlen_q", "reserved2")
_DEC_DESCALE = _run(_D, "k_descale", "v_descale")  # C ABI 0.13
del _F, _B, _D


def _unfit(kind, e):
    return ValueError(f"fa_{kind}_params_t: an argument does not fit its C field ({e})")


def _pack_varlen(p, cu_run, lens_run, varlen):
    cu_q, cu_k, batch, max_q, max_k = varlen
    cu_run[1].pack_into(p, cu_run[0], cu_q or 0, cu_k or 0)
    lens_run[1].pack_into(p, lens_run[0], batch, max_q, max_k)


def pack_sinks(p, sinks):
    """Writes fa_forward_params_t p's sinks (tensor_fields of a float32 [heads_q] tensor; C ABI 0.7)."""
    try:
        off, s = _FWD_SINKS
        s.pack_into(p, off, *sinks)
    except (struct.error, OverflowError) as e:
        raise _unfit("forward", e) from None


def pack_backward_sinks(p, sinks, dsinks):
    """Writes fa_backward_params_t p's sinks and dsinks (tensor_fields; NO_TENSOR: not given)."""
    try:
        off, s = _BWD_SINKS
        s.pack_into(p, off, *sinks, *dsinks)
    except (struct.error, OverflowError) as e:
        raise _unfit("backward", e) from None


def pack_alibi(p, kind, slopes):
    """Writes the alibi_slopes field (tensor_fields of a float32 [heads_q] or [batch, heads_q] tensor; C ABI 0.8) of
    the params of `kind` ("forward", "backward" or "decode")."""
    try:
        off, s = _ALIBI_RUNS[kind]
        s.pack_into(p, off, *slopes)
    except (struct.error, OverflowError) as e:
        raise _unfit(kind, e) from None


def pack_forward_dropout(p, dropout_p, seed, offset, rng_state, mask):
    """Writes fa_forward_params_t p's dropout fields (C ABI 0.9): p, the host seed and offset, the address of the
    uint64[2] rng_state the call writes, and the keep mask (tensor_fields; NO_TENSOR: not written)."""
    try:
        off, s = _FWD_DROPOUT
        s.pack_into(p, off, dropout_p, 0, seed, offset, 0, 0, rng_state, *mask)
    except (struct.error, OverflowError) as e:
        raise _unfit("forward", e) from None


def pack_block_table(p, block_table):
    """Writes fa_forward_params_t p's block_table (tensor_fields of a device int32 [varlen_batch, max_blocks_per_seq]
    tensor; C ABI 0.11): k and v are then pools [num_blocks, block_size, heads_kv, head_dim] paged by it."""
    try:
        off, s = _FWD_PAGED
        s.pack_into(p, off, *block_table)
    except (struct.error, OverflowError) as e:
        raise _unfit("forward", e) from None


def pack_backward_dropout(p, dropout_p, rng_state):
    """Writes fa_backward_params_t p's dropout fields: p, and the seed and offset read from the forward's rng_state
    (the address of its uint64[2]) on the device, as FlashAttention-2's backward replays them."""
    try:
        off, s = _BWD_DROPOUT
        s.pack_into(p, off, dropout_p, 0, 0, 0, rng_state, rng_state + 8)
    except (struct.error, OverflowError) as e:
        raise _unfit("backward", e) from None


def sinks_arg(function, sinks, learnable_sink):
    """The sinks of a call: `sinks` (this package's name, the C ABI's) or `learnable_sink` (FlashAttention-4's name for
    the same tensor), not both; None when neither is given."""
    if learnable_sink is not None:
        if sinks is not None:
            raise ValueError(f"{function}: sinks and learnable_sink are the same argument (FlashAttention-4 calls it "
                             "learnable_sink); give one of them")
        return learnable_sink
    return sinks


def pack_forward(p, q, k, v, out, lse, softmax_scale, causal, causal_alignment, window_left, window_right, softcap,
                 varlen=None, descales=None):
    """Writes the fields of fa_forward_params_t p (a copy of the init template) that a call sets. q..lse: tensor_fields
    tuples (NO_TENSOR: not given). varlen: None, or (cu_seqlens_q address, cu_seqlens_k address, batch, max_seqlen_q,
    max_seqlen_k) with no host copies (the device arrays are trusted, as flash-attn does: no host synchronisation).
    descales: None (the template's: none), or the tensor_fields of q_descale, k_descale and v_descale (NO_TENSOR: a
    factor of 1), the fp8 forward's."""
    try:
        off, s = _FWD_MAIN
        s.pack_into(p, off, *q, *k, *v, *out, *lse, softmax_scale, 1 if causal else 0, causal_alignment)
        off, s = _FWD_WINDOW
        s.pack_into(p, off, window_left, window_right, softcap)
        if varlen is not None:
            _pack_varlen(p, _FWD_CU, _FWD_LENS, varlen)
        if descales is not None:
            qd, kd, vd = descales
            off, s = _FWD_DESCALE
            s.pack_into(p, off, *qd, *kd, *vd)
    except (struct.error, OverflowError) as e:
        raise _unfit("forward", e) from None


def pack_backward(p, q, k, v, out, dout, lse, dq, dk, dv, softmax_scale, causal, causal_alignment, window_left,
                  window_right, softcap, deterministic, varlen=None):
    """pack_forward's counterpart for fa_backward_params_t (the workspace is set by the caller)."""
    try:
        off, s = _BWD_MAIN
        s.pack_into(p, off, *q, *k, *v, *out, *dout, *lse, *dq, *dk, *dv, softmax_scale, 1 if causal else 0,
                    causal_alignment)
        off, s = _BWD_WINDOW
        s.pack_into(p, off, window_left, window_right, softcap, 1 if deterministic else 0)
        if varlen is not None:
            _pack_varlen(p, _BWD_CU, _BWD_LENS, varlen)
    except (struct.error, OverflowError) as e:
        raise _unfit("backward", e) from None


def pack_decode(p, q, k_cache, v_cache, k_new, v_new, out, lse, cache_seqlens, block_table, softmax_scale, causal,
                window_left, window_right, softcap, num_splits, cache_batch_idx=NO_TENSOR, cache_leftpad=NO_TENSOR,
                rotary=None, cu_seqlens_q=NO_TENSOR, cu_seqlens_k_new=NO_TENSOR, max_seqlen_q=0):
    """pack_forward's counterpart for fa_decode_params_t (tensors in struct order; advance_cache_seqlens 0: the cache
    lengths are only read, flash-attn's convention). cache_batch_idx / cache_leftpad: the 0.7 serving fields (device
    int32 [batch]; NO_TENSOR: not given; no host copies, as flash-attn has none: a device value outside the pool or
    the sequence is clamped by the kernels and reported by the next call on the context). rotary: None (the init
    defaults: no tables), or (cos_ptr, sin_ptr, rotary_dim, rotary_seqlen, interleaved), the 0.8 rotary block (device
    tables [rotary_seqlen, rotary_dim / 2] of q's dtype). cu_seqlens_q / cu_seqlens_k_new / max_seqlen_q: the 0.12
    per-sequence counts (device int32 [batch + 1]; NO_TENSOR: not given; q/out/lse or k_new/v_new then packed)."""
    try:
        off, s = _DEC_MAIN
        s.pack_into(p, off, *q, *k_cache, *v_cache, *k_new, *v_new, *out, *lse, *cache_seqlens, *block_table,
                    softmax_scale, 1 if causal else 0, window_left, window_right, softcap)
        off, s = _DEC_SPLITS
        s.pack_into(p, off, num_splits, 0)
        off, s = _DEC_SERVING
        s.pack_into(p, off, *cache_batch_idx, *cache_leftpad)
        if rotary is not None:
            cos, sin, dim, rows, interleaved = rotary
            off, s = _DEC_ROTARY
            s.pack_into(p, off, cos or 0, sin or 0, dim, rows, 1 if interleaved else 0, 0)
        if cu_seqlens_q is not NO_TENSOR or cu_seqlens_k_new is not NO_TENSOR or max_seqlen_q:
            off, s = _DEC_COUNTS
            s.pack_into(p, off, *cu_seqlens_q, *cu_seqlens_k_new)
            off, s = _DEC_MAX_Q
            s.pack_into(p, off, max_seqlen_q, 0)
    except (struct.error, OverflowError) as e:
        raise _unfit("decode", e) from None


def pack_decode_descales(p, k_descale, v_descale):
    """Writes fa_decode_params_t p's fp8-cache descales (C ABI 0.13): k_descale and v_descale as tensor_fields (fp32
    device tensors [heads_kv] or [1]; NO_TENSOR: not given, the default of a cache of q's dtype)."""
    try:
        off, s = _DEC_DESCALE
        s.pack_into(p, off, *k_descale, *v_descale)
    except (struct.error, OverflowError) as e:
        raise _unfit("decode", e) from None


def _int_varlen(varlen):
    if varlen is None:
        return None
    cu_q, cu_k, batch, max_q, max_k = varlen
    return int(cu_q or 0), int(cu_k or 0), int(batch), int(max_q), int(max_k)


def forward_params(lib, q, k, v, out, lse=None, *, softmax_scale=0.0, causal=False,
                   causal_alignment=_abi.FA_CAUSAL_BOTTOM_RIGHT, window=(-1, -1), softcap=0.0, varlen=None,
                   descales=None, sinks=None, alibi_slopes=None, block_table=None):
    """fa_forward_params_t over TensorDescs (lse None: not written). lib: a loaded _library.Library. descales: None,
    or (q_descale, k_descale, v_descale) TensorDescs (None: a factor of 1), the fp8 forward's. sinks: None or the
    TensorDesc of the learnable sinks; alibi_slopes: None or the TensorDesc of the ALiBi slopes; block_table: None or
    the TensorDesc of the paged K/V's block table (a variable-length call; k and v then the pools)."""
    p = lib.new_params("forward")
    pack_forward(p, desc_fields(q), desc_fields(k), desc_fields(v), desc_fields(out), desc_fields(lse), softmax_scale,
                 causal, causal_alignment, window[0], window[1], softcap, _int_varlen(varlen),
                 None if descales is None else tuple(desc_fields(t) for t in descales))
    if sinks is not None:
        pack_sinks(p, desc_fields(sinks))
    if alibi_slopes is not None:
        pack_alibi(p, "forward", desc_fields(alibi_slopes))
    if block_table is not None:
        pack_block_table(p, desc_fields(block_table))
    return p


def backward_params(lib, q, k, v, out, dout, lse, dq, dk, dv, *, softmax_scale=0.0, causal=False,
                    causal_alignment=_abi.FA_CAUSAL_BOTTOM_RIGHT, window=(-1, -1), softcap=0.0, deterministic=False,
                    varlen=None, sinks=None, dsinks=None, alibi_slopes=None):
    """fa_backward_params_t over TensorDescs, no workspace yet (the caller sizes and sets it). sinks, dsinks: None or
    TensorDescs (the learnable sinks of the forward call and their gradient, written)."""
    p = lib.new_params("backward")
    pack_backward(p, *(desc_fields(t) for t in (q, k, v, out, dout, lse, dq, dk, dv)), softmax_scale, causal,
                  causal_alignment, window[0], window[1], softcap, deterministic, _int_varlen(varlen))
    if sinks is not None or dsinks is not None:
        pack_backward_sinks(p, desc_fields(sinks), desc_fields(dsinks))
    if alibi_slopes is not None:
        pack_alibi(p, "backward", desc_fields(alibi_slopes))
    return p


def decode_params(lib, q, k_cache, v_cache, out, cache_seqlens, *, k_new=None, v_new=None, lse=None,
                  block_table=None, softmax_scale=0.0, causal=False, window=(-1, -1), softcap=0.0, num_splits=0,
                  cache_batch_idx=None, cache_leftpad=None, alibi_slopes=None, rotary=None, cu_seqlens_q=None,
                  cu_seqlens_k_new=None, max_seqlen_q=0, k_descale=None, v_descale=None):
    """fa_decode_params_t over TensorDescs (k_new/v_new None: append nothing; block_table None: contiguous cache;
    cache_batch_idx / cache_leftpad None: not given; rotary None or pack_decode's tuple; k_descale / v_descale: an fp8
    cache's descales, None: not given). cache_seqlens is only read (flash-attn's convention: the caller advances it)."""
    p = lib.new_params("decode")
    pack_decode(p, *(desc_fields(t) for t in (q, k_cache, v_cache, k_new, v_new, out, lse, cache_seqlens, block_table)),
                softmax_scale, causal, window[0], window[1], softcap, num_splits, desc_fields(cache_batch_idx),
                desc_fields(cache_leftpad), rotary, desc_fields(cu_seqlens_q), desc_fields(cu_seqlens_k_new),
                max_seqlen_q)
    if alibi_slopes is not None:
        pack_alibi(p, "decode", desc_fields(alibi_slopes))
    if k_descale is not None or v_descale is not None:
        pack_decode_descales(p, desc_fields(k_descale), desc_fields(v_descale))
    return p


def check(lib, kind, params, compute_capability=0):
    """fa_{kind}_check on params (no GPU needed); raises FlashAttentionError with the library's message."""
    fn = getattr(lib.lib, f"fa_{kind}_check")
    lib.check(f"fa_{kind}_check", fn(ctypes.byref(params), int(compute_capability)))
