"""flash-attn arguments -> the C ABI's params structs, without torch.

Tensors arrive here as TensorDesc (a data pointer, an fa_dtype_t code, a shape and element strides); the torch side
(_ops.py) makes them from torch tensors, the CPU tests from fake pointers that fa_*_check never dereferences. Every
refusal of an argument the library does not serve is raised here, before any tensor is touched.
"""
import ctypes
import math
from collections import namedtuple

from . import _abi


class UnsupportedArgumentError(NotImplementedError):
    """A flash-attn argument (or value) that FlashAttention.Interop does not serve yet. Raised, never ignored."""


TensorDesc = namedtuple("TensorDesc", "data dtype shape strides")
TensorDesc.__doc__ = "A tensor as the C ABI sees it: device address, fa_dtype_t code, shape, element strides."

CAUSAL_ALIGNMENTS = {"bottom_right": _abi.FA_CAUSAL_BOTTOM_RIGHT, "top_left": _abi.FA_CAUSAL_TOP_LEFT}


def fa_tensor(desc):
    """The fa_tensor_t of a TensorDesc (None: a zeroed descriptor, the ABI's "not given")."""
    t = _abi.FaTensor()
    if desc is None:
        return t
    if len(desc.shape) != len(desc.strides) or not 1 <= len(desc.shape) <= _abi.FA_MAX_RANK:
        raise ValueError(f"a tensor of rank {len(desc.shape)} (shape {tuple(desc.shape)}) cannot be described: the "
                         f"C ABI takes rank 1..{_abi.FA_MAX_RANK}")
    rank = len(desc.shape)
    t.data = desc.data or None
    t.dtype = desc.dtype
    t.rank = rank
    t.shape[:rank] = desc.shape
    t.strides[:rank] = desc.strides
    return t


# ---- argument mapping (flash-attn 2.x semantics) --------------------------------------------------------------

def refuse(function, name, value, why):
    raise UnsupportedArgumentError(f"{function}: {name}={value!r} is not served by FlashAttention.Interop yet ({why})")


def common_refusals(function, dropout_p=0.0, alibi_slopes=None):
    """The options every entry point takes that the library does not serve: dropout and ALiBi."""
    if dropout_p is None or float(dropout_p) != 0.0:
        refuse(function, "dropout_p", dropout_p, "the library has no dropout; pass dropout_p=0.0")
    if alibi_slopes is not None:
        refuse(function, "alibi_slopes", "<tensor>", "the library has no ALiBi bias; pass alibi_slopes=None")


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


def window_arg(function, window_size):
    """window_size=(left, right): -1 is unbounded on that side; each side an int >= -1."""
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


def num_splits_arg(function, num_splits):
    n = int(num_splits)
    if n < 0 or n > _abi.FA_DECODE_MAX_SPLITS:
        raise ValueError(f"{function}: num_splits must be 0 (chosen by the library) or 1..{_abi.FA_DECODE_MAX_SPLITS}"
                         f", got {num_splits!r}")
    return n


# ---- params structs -------------------------------------------------------------------------------------------

def _i32_ptr(address):
    return ctypes.cast(int(address), ctypes.POINTER(ctypes.c_int32)) if address else None


def _set_options(p, softmax_scale, causal, causal_alignment, window, softcap):
    p.softmax_scale = softmax_scale
    p.causal = 1 if causal else 0
    p.causal_alignment = causal_alignment
    p.window_left, p.window_right = window
    p.softcap = softcap


def _set_varlen(p, varlen):
    """varlen = (cu_seqlens_q address, cu_seqlens_k address, batch, max_seqlen_q, max_seqlen_k); no host copies (the
    device arrays are trusted, as flash-attn does: no host synchronisation)."""
    if varlen is None:
        return
    cu_q, cu_k, batch, max_q, max_k = varlen
    p.cu_seqlens_q = _i32_ptr(cu_q)
    p.cu_seqlens_k = _i32_ptr(cu_k)
    p.varlen_batch = int(batch)
    p.max_seqlen_q = int(max_q)
    p.max_seqlen_k = int(max_k)


def forward_params(lib, q, k, v, out, lse=None, *, softmax_scale=0.0, causal=False,
                   causal_alignment=_abi.FA_CAUSAL_BOTTOM_RIGHT, window=(-1, -1), softcap=0.0, varlen=None):
    """fa_forward_params_t over TensorDescs (lse None: not written). lib: a loaded _library.Library."""
    p = lib.new_params("forward")
    p.q, p.k, p.v, p.out, p.lse = (fa_tensor(t) for t in (q, k, v, out, lse))
    _set_options(p, softmax_scale, causal, causal_alignment, window, softcap)
    _set_varlen(p, varlen)
    return p


def backward_params(lib, q, k, v, out, dout, lse, dq, dk, dv, *, softmax_scale=0.0, causal=False,
                    causal_alignment=_abi.FA_CAUSAL_BOTTOM_RIGHT, window=(-1, -1), softcap=0.0, deterministic=False,
                    varlen=None):
    """fa_backward_params_t over TensorDescs, no workspace yet (the caller sizes and sets it)."""
    p = lib.new_params("backward")
    p.q, p.k, p.v, p.out, p.dout, p.lse, p.dq, p.dk, p.dv = (fa_tensor(t) for t in (q, k, v, out, dout, lse, dq, dk, dv))
    _set_options(p, softmax_scale, causal, causal_alignment, window, softcap)
    p.deterministic = 1 if deterministic else 0
    _set_varlen(p, varlen)
    return p


def decode_params(lib, q, k_cache, v_cache, out, cache_seqlens, *, k_new=None, v_new=None, lse=None,
                  block_table=None, softmax_scale=0.0, causal=False, window=(-1, -1), softcap=0.0, num_splits=0):
    """fa_decode_params_t over TensorDescs (k_new/v_new None: append nothing; block_table None: contiguous cache).
    cache_seqlens is only read (flash-attn's convention: the caller advances it)."""
    p = lib.new_params("decode")
    p.q, p.k_cache, p.v_cache, p.out, p.cache_seqlens = (fa_tensor(t) for t in (q, k_cache, v_cache, out, cache_seqlens))
    p.k_new, p.v_new, p.lse, p.block_table = (fa_tensor(t) for t in (k_new, v_new, lse, block_table))
    p.softmax_scale = softmax_scale
    p.causal = 1 if causal else 0
    p.window_left, p.window_right = window
    p.softcap = softcap
    p.num_splits = num_splits
    p.advance_cache_seqlens = 0
    return p


def check(lib, kind, params, compute_capability=0):
    """fa_{kind}_check on params (no GPU needed); raises FlashAttentionError with the library's message."""
    fn = getattr(lib.lib, f"fa_{kind}_check")
    lib.check(f"fa_{kind}_check", fn(ctypes.byref(params), int(compute_capability)))
