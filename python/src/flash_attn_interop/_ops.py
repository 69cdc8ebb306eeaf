"""The torch side: torch tensors -> the C ABI's tensor descriptors, the library calls on PyTorch's current stream,
the custom ops (torch.library.custom_op where this PyTorch has it, so torch.compile and CUDA graphs see opaque ops
with fake implementations) and their autograd, and the eager path that skips the custom op where nothing needs it
(plain_eager). Imported on the first attention call, never at package import.

No host synchronisation: varlen lengths and cache_seqlens stay on the device (the library trusts the device arrays,
as flash-attn does), workspaces come from PyTorch's caching allocator, nothing is copied to the host.

Host time per call is the point of most of the structure here (issue 13: within 10 us of a direct C call): a plain
eager call runs in one frame (dense_eager: no layer of helpers between the entry point and the C call), looks at each
tensor once (_ready4 gives both the checks and the descriptor fields), packs the params struct with a few
struct.pack_into calls (_args.pack_*), allocates only what it returns (no log-sum-exp unless asked for or needed by
autograd) and asks for the stream with one C call.
"""
import ctypes
from typing import Optional, Tuple

import torch

from . import _abi, _args, _library
from ._library import load_library

NAMESPACE = "flash_attn_interop"

_DTYPE_CODES = {torch.float16: _abi.FA_DTYPE_FLOAT16, torch.bfloat16: _abi.FA_DTYPE_BFLOAT16,
                torch.float32: _abi.FA_DTYPE_FLOAT32, torch.int32: _abi.FA_DTYPE_INT32}
_ATTN_DTYPES = (torch.float16, torch.bfloat16)
# fp8 e4m3 (FlashAttention-3's fp8 forward: q, k and v together, bf16 out); None on a PyTorch without float8 (< 2.1).
FP8 = getattr(torch, "float8_e4m3fn", None)
if FP8 is not None:
    _DTYPE_CODES[FP8] = _abi.FA_DTYPE_FLOAT8_E4M3
_empty_like = torch.empty_like


def desc(t):
    """The TensorDesc of a torch tensor (None -> None)."""
    if t is None:
        return None
    return _args.TensorDesc(t.data_ptr(), _DTYPE_CODES[t.dtype], tuple(t.shape), t.stride())


def fields(t):
    """The fa_tensor_t field values of a torch tensor (None: not given), as _args.pack_* take them."""
    if t is None:
        return _args.NO_TENSOR
    return _args.tensor_fields(t.data_ptr(), _DTYPE_CODES[t.dtype], t.shape, t.stride())


# PyTorch's current stream as a cudaStream_t: _cuda_getCurrentRawStream (what inductor's generated code calls) is one
# C call, torch.cuda.current_stream(i).cuda_stream builds a Stream object first (a few us).
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream_of_current_stream(index):
    return torch.cuda.current_stream(index).cuda_stream


# _stream(index): cudaStream_t (an int) of PyTorch's current stream on CUDA device ordinal `index`; the C function
# itself where this PyTorch has it (no Python frame in between).
_stream = _raw_stream if _raw_stream is not None else _stream_of_current_stream


def _lib():
    """The loaded Library (load_library() without its lock once loaded)."""
    return _library._library or load_library()


def require_cuda(function, **tensors):
    """A clear error when a tensor is not a CUDA tensor or there is no GPU (before the library is touched)."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{function}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cuda":
            why = ("PyTorch sees no CUDA GPU (torch.cuda.is_available() is False)" if not torch.cuda.is_available()
                   else "move it to the GPU first")
            raise RuntimeError(f"{function}: {name} is on {t.device}; FlashAttention.Interop runs on CUDA tensors "
                               f"only ({why})")


# torch.compiler.is_compiling, looked up once (dynamo knows the function itself, however it is reached, and folds it to
# True while it traces).
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def _compiling():
    return _is_compiling is not None and _is_compiling()


# ---- plain eager calls skip the custom op ----------------------------------------------------------------------
#
# A torch.library.custom_op call costs tens of us of host time in eager mode (schema parsing of 14 arguments, the
# dispatcher's Python kernels, its autograd wrapper); the op is needed only where something must see it as one opaque
# op: torch.compile (dynamo, AOT autograd, export), a TorchDispatchMode (FakeTensorMode, make_fx, selective
# checkpointing, FlopCounterMode, ...), a TorchFunctionMode, functorch transforms, jit tracing, tensor subclasses.
# Everywhere else (plain tensors, eager mode) the call goes straight to the implementation, through a plain
# torch.autograd.Function when autograd records it: same results, same errors, same stream, no host synchronisation.

_function_modes_on = getattr(torch._C, "_is_torch_function_mode_enabled", None)
_dispatch_stack_len = getattr(torch._C, "_len_torch_dispatch_stack", None)
_functorch_on = getattr(torch._C, "_are_functorch_transforms_active", None)
_jit_tracing = getattr(torch._C, "_get_tracing_state", None)
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
try:
    from torch.utils._device import DeviceContext as _DeviceContext  # torch.set_default_device / with torch.device
except ImportError:  # pragma: no cover - older PyTorch
    _DeviceContext = None


def _only_device_modes():
    """The active TorchFunctionModes are only torch.device contexts (torch.set_default_device, `with
    torch.device(...)`), which change factory functions' default device and nothing this package calls."""
    if _DeviceContext is None or not hasattr(torch._C, "_len_torch_function_stack"):
        return False
    return all(type(torch._C._get_function_stack_at(i)) is _DeviceContext
               for i in range(torch._C._len_torch_function_stack()))


def plain_eager(*tensors):
    """True when a call on these tensors (None entries ignored) may skip the custom op: not compiling or tracing, no
    mode or transform active, only plain torch.Tensor (or nn.Parameter) arguments. Always True on a PyTorch without
    custom ops (before 2.4) unless compiling: the autograd.Function is all there is."""
    if _compiling():
        return False
    for t in tensors:
        if t is not None and type(t) not in _PLAIN_TYPES:
            return False
    return not HAS_CUSTOM_OP or not _modes_active()


def _modes_active():
    """Something is active that must see the custom op: a TorchDispatchMode, a TorchFunctionMode other than
    torch.device, a functorch transform, jit tracing."""
    return bool((_dispatch_stack_len is not None and _dispatch_stack_len())
                or (_function_modes_on is not None and _function_modes_on() and not _only_device_modes())
                or (_functorch_on is not None and _functorch_on())
                or (_jit_tracing is not None and _jit_tracing() is not None))


def aligned(t):
    """t itself when its last dim is contiguous and its data 16-byte aligned (what the library needs), else a copy.
    Called on real tensors inside the ops (a traced graph has no data pointers)."""
    if t.stride(-1) != 1 or t.data_ptr() % _abi.FA_ALIGNMENT_BYTES:
        return t.contiguous()
    return t


def is_fp8(t):
    """Whether t is a torch.float8_e4m3fn tensor (the fp8 forward's inputs)."""
    return FP8 is not None and getattr(t, "dtype", None) is FP8


def attn_input(function, name, t, eager=None, fp8=False, fp8_of=None):
    """q/k/v as the library takes them: fp16/bf16 (fp8: torch.float8_e4m3fn) CUDA, last dim contiguous, 16-byte
    aligned (else copied). eager: the call runs on these real tensors here (plain_eager); else (under torch.compile,
    or through the custom op) only the last dim is settled here and the alignment inside the op, where the tensors are
    real. None: not compiling. fp8_of: what needs fp8 when it is not the fp8 forward ("an fp8 cache")."""
    if fp8:
        if t.dtype is not FP8:
            if fp8_of is not None:
                raise TypeError(f"{function}: {name} is {t.dtype}; {fp8_of} has k_cache and v_cache both in "
                                "torch.float8_e4m3fn")
            raise TypeError(f"{function}: {name} is {t.dtype} but q is torch.float8_e4m3fn; the fp8 forward takes q, "
                            "k and v all in torch.float8_e4m3fn (as FlashAttention-3)")
    elif t.dtype not in _ATTN_DTYPES:
        raise TypeError(f"{function}: {name} is {t.dtype}; FlashAttention.Interop serves torch.float16 and "
                        "torch.bfloat16" + (", and torch.float8_e4m3fn for q, k and v together in the forward "
                                            "(flash_attn_func, flash_attn_varlen_func and their packed forms)"
                                            if FP8 is not None else ""))
    if eager is None:
        eager = not _compiling()
    if not eager:
        return t.contiguous() if t.stride(-1) != 1 else t
    return aligned(t)


def int32_input(function, name, t):
    if t.dtype != torch.int32:
        raise TypeError(f"{function}: {name} must be torch.int32 (as flash-attn requires), got {t.dtype}")
    if not t.is_contiguous():
        t = t.contiguous()
    return t


def _lse_shape(q, varlen):
    # [batch, heads, seqlen_q] fixed-length; [heads, total_q] variable-length (flash-attn's layouts).
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


def _varlen(cu_q, cu_k, max_q, max_k):
    if cu_q is None:
        return None
    return (cu_q.data_ptr(), cu_k.data_ptr(), cu_q.shape[0] - 1, max_q, max_k)


# ---- implementations (real tensors; the eager path and the custom ops both end here) --------------------------

def _out_shape(q, v):
    """The forward's output shape: q's, with v's head dim (C ABI 0.10: v's may differ from q's)."""
    return (*q.shape[:-1], v.shape[-1])


def _outputs(q, fq, fv, want_lse, varlen):
    """(out, its fields, lse or None, its fields) of a forward on q and v (fq, fv: their fields): out contiguous, q's
    shape with v's head dim (head_dim_v, C ABI 0.10; q's own in every call where they are equal), lse (fp32,
    flash-attn's layout; varlen: the [heads, total_q] one) only when wanted (else not written)."""
    dv = fv[2 + fv[2]]  # the last dimension: shape[rank - 1]
    if dv == fq[2 + fq[2]] and q.is_contiguous():
        # empty_like then gives q's very strides (and is cheaper than new_empty's size parsing): out's descriptor is
        # q's with out's address.
        out = _empty_like(q)
        fo = (out.data_ptr(), *fq[1:])
    else:
        out = q.new_empty((*q.shape[:-1], dv))  # contiguous, whatever q's strides
        fo = fields(out)
    if not want_lse:
        return out, fo, None, _args.NO_TENSOR
    lse = q.new_empty(_lse_shape(q, varlen), dtype=torch.float32)
    return out, fo, lse, fields(lse)


def _run_forward(q, fq, fk, fv, opts, varlen, want_lse):
    """fa_forward on q, k, v given as their fa_tensor_t fields (fq, fk, fv; q itself gives the outputs' shape, dtype
    and device) with opts (softmax_scale, causal, causal_alignment, window_left, window_right, softcap) and varlen
    (_varlen). Returns (out, lse): out q's shape with v's head dim, lse None when not wanted (not written: one
    allocation less)."""
    lib = _lib()
    device = q.get_device()
    out, fo, lse, fl = _outputs(q, fq, fv, want_lse, varlen is not None)
    p = lib.new_forward_params()
    _args.pack_forward(p, fq, fk, fv, fo, fl, *opts, varlen)
    st = lib.lib.fa_forward(lib.context(device), p, _stream(device))
    if st:
        raise lib.error("fa_forward", st)
    return out, lse


def _forward(q, k, v, softmax_scale, causal, causal_alignment, window_left, window_right, softcap, cu_seqlens_q,
             cu_seqlens_k, max_seqlen_q, max_seqlen_k, want_lse=True):
    """fa_forward on aligned q, k, v: (out, lse) as _run_forward."""
    return _run_forward(q, fields(q), fields(k), fields(v),
                        (softmax_scale, causal, causal_alignment, window_left, window_right, softcap),
                        _varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k), want_lse)


def forward_impl(q, k, v, softmax_scale, causal, causal_alignment, window_left, window_right, softcap,
                 cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    return _forward(aligned(q), aligned(k), aligned(v), softmax_scale, causal, causal_alignment, window_left,
                    window_right, softcap, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


def fp8_descale(function, name, t, batch, heads_kv):
    """A descale factor table of the fp8 forward checked: a float32 CUDA tensor (batch, heads_kv) (FlashAttention-3's
    shape: per KV head, even q_descale); any strides, 0 broadcasting (t.expand(batch, heads_kv) of one value)."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{function}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{function}: {name} must be torch.float32 (as FlashAttention-3 takes it), got {t.dtype}")
    if tuple(t.shape) != (batch, heads_kv):
        raise ValueError(f"{function}: {name} must be (batch, nheads_k) = ({batch}, {heads_kv}) (one factor per "
                         f"sequence and KV head, even for q, as FlashAttention-3), got {tuple(t.shape)}")
    return t


def kv_cache_descales(function, k_cache, v_cache, k_descale, v_descale):
    """The descales of an fp8 KV cache (C ABI 0.13) checked: both caches torch.float8_e4m3fn, head dims multiples of 16,
    k_descale and v_descale given as float32 tensors of shape (nheads_k,) or (1,) (a broadcast view, stride 0, is
    copied: the library takes positive strides). Returns (k_descale, v_descale)."""
    if not (is_fp8(k_cache) and is_fp8(v_cache)):
        raise TypeError(f"{function}: k_cache is {k_cache.dtype} but v_cache is {v_cache.dtype}; an fp8 cache has both "
                        "in torch.float8_e4m3fn (q, k, v and out stay fp16 or bf16)")
    if k_cache.dim() < 1 or k_cache.shape[-1] % 16:
        raise ValueError(f"{function}: an fp8 cache's head_dim must be a multiple of 16 (whole 16-byte rows, as "
                         f"FlashAttention-3's fp8), got {tuple(k_cache.shape)}")
    heads_kv = k_cache.shape[-2] if k_cache.dim() >= 2 else 0
    out = []
    for name, t in (("k_descale", k_descale), ("v_descale", v_descale)):
        if t is None:
            raise ValueError(f"{function}: a torch.float8_e4m3fn cache needs {name}: a float32 CUDA tensor of shape "
                             f"(nheads_k,) = ({heads_kv},) or (1,), the factors that scale the cached values back")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{function}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.float32:
            raise TypeError(f"{function}: {name} must be torch.float32, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] not in (heads_kv, 1):
            raise ValueError(f"{function}: {name} must have shape (nheads_k,) = ({heads_kv},) (one factor per KV head) "
                             f"or (1,) (one for the cache), got {tuple(t.shape)}")
        out.append(t.contiguous() if t.stride(0) < 1 else t)
    return tuple(out)


def forward_fp8_impl(q, k, v, q_descale, k_descale, v_descale, softmax_scale, causal, causal_alignment, window_left,
                     window_right, softcap, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, want_lse=True):
    """fa_forward on fp8 q, k, v with their descale tables (None: 1): (out bf16, contiguous, q's shape with v's head
    dim; lse fp32 or None when not wanted)."""
    q, k, v = aligned(q), aligned(k), aligned(v)
    lib = _lib()
    device = q.get_device()
    varlen = _varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    out = torch.empty(_out_shape(q, v), dtype=torch.bfloat16, device=q.device)
    lse = q.new_empty(_lse_shape(q, varlen is not None), dtype=torch.float32) if want_lse else None
    p = lib.new_forward_params()
    _args.pack_forward(p, fields(q), fields(k), fields(v), fields(out), fields(lse), softmax_scale, causal,
                       causal_alignment, window_left, window_right, softcap, varlen,
                       (fields(q_descale), fields(k_descale), fields(v_descale)))
    st = lib.lib.fa_forward(lib.context(device), p, _stream(device))
    if st:
        raise lib.error("fa_forward", st)
    return out, lse


def _run_with_workspace(lib, kind, p, q):
    """fa_<kind>_workspace_size, then fa_<kind> (backward or decode) on PyTorch's current stream of q's device with a
    workspace from PyTorch's allocator: its blocks are 512-byte aligned (the ABI wants 256) and stream-ordered with
    the call, and a caller workspace keeps the call free of allocations of its own, hence capturable."""
    device = q.get_device()
    ctx = lib.context(device)
    n = ctypes.c_size_t(0)
    st = getattr(lib.lib, f"fa_{kind}_workspace_size")(ctx, p, ctypes.byref(n))
    if st:
        raise lib.error(f"fa_{kind}_workspace_size", st)
    ws = q.new_empty((max(n.value, _abi.FA_WORKSPACE_ALIGNMENT),), dtype=torch.uint8)
    p.workspace = ws.data_ptr()
    p.workspace_size = ws.numel()
    st = getattr(lib.lib, f"fa_{kind}")(ctx, p, _stream(device))
    if st:
        raise lib.error(f"fa_{kind}", st)


def backward_impl(dout, q, k, v, out, lse, softmax_scale, causal, causal_alignment, window_left, window_right,
                  softcap, deterministic, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    lib = _lib()
    dout, q, k, v = aligned(dout), aligned(q), aligned(k), aligned(v)
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    p = lib.new_params("backward")
    _args.pack_backward(p, fields(q), fields(k), fields(v), fields(out), fields(dout), fields(lse), fields(dq),
                        fields(dk), fields(dv), softmax_scale, causal, causal_alignment, window_left, window_right,
                        softcap, deterministic, _varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    _run_with_workspace(lib, "backward", p, q)
    return dq, dk, dv


# ---- learnable sinks (C ABI 0.7): a float32 [heads_q] tensor, one logit per query head -----------------------------

_SINK_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # FlashAttention-4's _LEARNABLE_SINK_DTYPES


def sink_input(function, sinks, heads_q):
    """The sinks checked (a torch.Tensor of shape (nheads,), fp16, bf16 or fp32, as FlashAttention-4's learnable_sink)
    before any device check, so the checks hold on CPU tensors too. The library takes float32: the caller converts
    (sinks.float(), which autograd differentiates back into the sinks' own dtype)."""
    if not isinstance(sinks, torch.Tensor):
        raise TypeError(f"{function}: sinks must be a torch.Tensor or None, got {type(sinks).__name__}")
    if sinks.dtype not in _SINK_DTYPES:
        raise TypeError(f"{function}: sinks must be torch.float32, torch.float16 or torch.bfloat16 (as "
                        f"FlashAttention-4's learnable_sink), got {sinks.dtype}")
    if sinks.dim() != 1 or sinks.shape[0] != heads_q:
        raise ValueError(f"{function}: sinks must be (nheads,) = ({heads_q},), one logit per query head, got "
                         f"{tuple(sinks.shape)}")
    return sinks


def alibi_input(function, alibi_slopes, batch, heads_q):
    """ALiBi slopes checked as FlashAttention-2 checks them (a torch.float32 tensor of shape (nheads,) or
    (batch, nheads), last dimension contiguous), before any device check. Not differentiable (FA2 has no slope
    gradient): a slopes tensor that requires grad is read as it is, and no gradient flows into it."""
    if not isinstance(alibi_slopes, torch.Tensor):
        raise TypeError(f"{function}: alibi_slopes must be a torch.Tensor or None, got {type(alibi_slopes).__name__}")
    if alibi_slopes.dtype != torch.float32:
        raise TypeError(f"{function}: alibi_slopes must be torch.float32 (as FlashAttention-2's), got "
                        f"{alibi_slopes.dtype}")
    shape = tuple(alibi_slopes.shape)
    if shape != (heads_q,) and shape != (batch, heads_q):
        raise ValueError(f"{function}: alibi_slopes must be (nheads,) = ({heads_q},) or (batch, nheads) = "
                         f"({batch}, {heads_q}), one slope per query head, got {shape}")
    if alibi_slopes.stride(-1) != 1:
        raise ValueError(f"{function}: alibi_slopes must have a contiguous last dimension (as FlashAttention-2's)")
    return alibi_slopes.detach()


def _sinks32(sinks):
    """The float32, unit-stride sinks the library reads (the tensor itself when it already is one)."""
    s = sinks if sinks.dtype == torch.float32 else sinks.float()
    return s if s.stride(0) == 1 else s.contiguous()


def philox_seed_offset(device, increment):
    """(seed, offset) for a dropout call from PyTorch's default CUDA generator of `device`, advancing its offset by
    `increment` rounded up to a multiple of 4, as CUDAGeneratorImpl::philox_cuda_state does for flash-attn's
    forward (increment = batch * heads * 32): a call after torch.manual_seed(s) draws what flash-attn (and PyTorch's
    own flash kernels) would draw. The generator's state is (seed, offset) as two 64-bit words."""
    gen = torch.cuda.default_generators[device]
    state = gen.get_state()
    words = state.view(torch.int64)
    seed, offset = int(words[0]) & 0xFFFFFFFFFFFFFFFF, int(words[1])
    words[1] = offset + (increment + 3) // 4 * 4
    gen.set_state(state)
    return seed, offset


def s_dmask_of(mask, q):
    """flash-attn's S_dmask slot for a dropout call with return_attn_probs: the keep mask the library wrote (uint8
    [batch, heads, seqlen_q, seqlen_k]; varlen: max lengths) as +1 (kept) / -1 (dropped) in q's dtype, so that
    S_dmask >= 0 is the keep mask, as flash-attn's sign convention gives it (its magnitudes, unnormalised
    probabilities, are not reproduced; flash-attn also pads the last two dimensions to multiples of 128)."""
    return mask.to(q.dtype) * 2 - 1


def forward_sink_impl(q, k, v, sinks, alibi_slopes, dropout_p, return_mask, softmax_scale, causal, causal_alignment,
                      window_left, window_right, softcap, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                      block_table=None):
    """fa_forward with the extras: learnable sinks (float32 [heads_q]) and/or ALiBi slopes (float32 [heads_q] or
    [batch, heads_q]), each None when absent, and dropout (dropout_p > 0: seed and offset from PyTorch's generator);
    block_table (C ABI 0.11; a variable-length call only): int32 [batch, max_blocks_per_seq], k and v then the pools
    [num_blocks, block_size, heads_kv, head_dim(_v)] it pages (None: k and v packed).
    Returns (out, lse, rng_state, mask): lse always written (the backward needs it); rng_state the int64 [2] (seed,
    offset) the call used (empty without dropout), mask the uint8 keep mask when return_mask (else empty)."""
    if dropout_p > 0 and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("flash_attn_interop: dropout under CUDA graph capture is not served by this package yet: the "
                           "seed and offset are drawn on the host, so every replay would reuse one mask (the C ABI "
                           "takes device seed/offset pointers for graphs; see fa_forward_params_t.dropout_seed_device)")
    q, k, v = aligned(q), aligned(k), aligned(v)
    lib = _lib()
    device = q.get_device()
    varlen = _varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    fq, fv = fields(q), fields(v)
    out, fo, lse, fl = _outputs(q, fq, fv, True, varlen is not None)
    p = lib.new_forward_params()
    _args.pack_forward(p, fq, fields(k), fv, fo, fl, softmax_scale, causal, causal_alignment, window_left, window_right,
                       softcap, varlen)
    if sinks is not None:
        _args.pack_sinks(p, fields(sinks))
    if alibi_slopes is not None:
        _args.pack_alibi(p, "forward", fields(alibi_slopes))
    if block_table is not None:
        _args.pack_block_table(p, fields(block_table))
    rng_state = q.new_empty((2 if dropout_p > 0 else 0,), dtype=torch.int64)
    mask = q.new_empty((0,), dtype=torch.uint8)
    if dropout_p > 0:
        batch = varlen[2] if varlen is not None else q.shape[0]
        heads = q.shape[-2]
        seed, offset = philox_seed_offset(device, batch * heads * 32)
        if return_mask:
            sq, sk = (max_seqlen_q, max_seqlen_k) if varlen is not None else (q.shape[1], k.shape[1])
            # Zeroed for a varlen batch: the library writes rows and keys within each sequence's lengths only, so
            # the padding past them reads as dropped (-1 in S_dmask) rather than as leftover memory.
            mask = q.new_empty((batch, heads, sq, sk), dtype=torch.uint8) if varlen is None \
                else q.new_zeros((batch, heads, sq, sk), dtype=torch.uint8)
        mf = _args.tensor_fields(mask.data_ptr(), _abi.FA_DTYPE_UINT8, mask.shape, mask.stride()) if return_mask \
            else _args.NO_TENSOR
        _args.pack_forward_dropout(p, dropout_p, seed, offset, rng_state.data_ptr(), mf)
    st = lib.lib.fa_forward(lib.context(device), p, _stream(device))
    if st:
        raise lib.error("fa_forward", st)
    return out, lse, rng_state, mask


def backward_sink_impl(dout, q, k, v, out, lse, sinks, alibi_slopes, dropout_p, rng_state, softmax_scale, causal,
                       causal_alignment, window_left, window_right, softcap, deterministic, cu_seqlens_q, cu_seqlens_k,
                       max_seqlen_q, max_seqlen_k):
    """fa_backward with the extras: (dq, dk, dv, dsinks float32 [heads_q], written by the call; an empty tensor
    without sinks). ALiBi slopes get no gradient. Dropout: the forward's rng_state (seed, offset) read on the device,
    so the backward regenerates the forward's keep mask."""
    lib = _lib()
    dout, q, k, v = aligned(dout), aligned(q), aligned(k), aligned(v)
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    dsinks = torch.empty_like(sinks, memory_format=torch.contiguous_format) if sinks is not None \
        else q.new_empty((0,), dtype=torch.float32)
    p = lib.new_params("backward")
    _args.pack_backward(p, fields(q), fields(k), fields(v), fields(out), fields(dout), fields(lse), fields(dq),
                        fields(dk), fields(dv), softmax_scale, causal, causal_alignment, window_left, window_right,
                        softcap, deterministic, _varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    if sinks is not None:
        _args.pack_backward_sinks(p, fields(sinks), fields(dsinks))
    if alibi_slopes is not None:
        _args.pack_alibi(p, "backward", fields(alibi_slopes))
    if dropout_p > 0:
        _args.pack_backward_dropout(p, dropout_p, rng_state.data_ptr())
    _run_with_workspace(lib, "backward", p, q)
    return dq, dk, dv, dsinks


def _decode_lse_shape(q):
    # [batch, heads, seqlen_q], or [heads, total_q] for packed queries (cu_seqlens_q).
    return (q.shape[1], q.shape[0]) if q.dim() == 3 else (q.shape[0], q.shape[2], q.shape[1])


def decode_impl(q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, cache_leftpad, alibi_slopes,
                rotary_cos, rotary_sin, cu_seqlens_q, cu_seqlens_k_new, k_descale, v_descale, softmax_scale, causal,
                window_left, window_right, softcap, num_splits, rotary_interleaved, max_seqlen_q):
    lib = _lib()
    out = q.new_empty(q.shape)
    lse = q.new_empty(_decode_lse_shape(q), dtype=torch.float32)
    p = lib.new_params("decode")
    rotary = None
    if rotary_cos is not None:
        # Checked by flash_attn_with_kvcache: 2-D, contiguous, aligned, q's dtype, sin shaped like cos.
        rotary = (rotary_cos.data_ptr(), rotary_sin.data_ptr(), 2 * rotary_cos.shape[1], rotary_cos.shape[0],
                  rotary_interleaved)
    _args.pack_decode(p, fields(q), fields(k_cache), fields(v_cache), fields(k), fields(v), fields(out), fields(lse),
                      fields(cache_seqlens), fields(block_table), softmax_scale, causal, window_left, window_right,
                      softcap, num_splits, fields(cache_batch_idx), fields(cache_leftpad), rotary, fields(cu_seqlens_q),
                      fields(cu_seqlens_k_new), max_seqlen_q)
    if alibi_slopes is not None:
        _args.pack_alibi(p, "decode", fields(alibi_slopes))
    if k_descale is not None or v_descale is not None:  # an fp8 cache (C ABI 0.13)
        _args.pack_decode_descales(p, fields(k_descale), fields(v_descale))
    _run_with_workspace(lib, "decode", p, q)
    return out, lse


# ---- custom ops (torch.library.custom_op, PyTorch >= 2.4) -------------------------------------------------------

HAS_CUSTOM_OP = hasattr(torch, "library") and hasattr(torch.library, "custom_op") \
    and hasattr(torch.library, "register_autograd")

T = torch.Tensor

if HAS_CUSTOM_OP:
    @torch.library.custom_op(f"{NAMESPACE}::fwd", mutates_args=(), device_types="cuda")
    def fwd_op(q: T, k: T, v: T, softmax_scale: float, causal: bool, causal_alignment: int, window_left: int,
               window_right: int, softcap: float, deterministic: bool, cu_seqlens_q: Optional[T],
               cu_seqlens_k: Optional[T], max_seqlen_q: int, max_seqlen_k: int) -> Tuple[T, T]:
        return forward_impl(q, k, v, softmax_scale, causal, causal_alignment, window_left, window_right, softcap,
                            cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)

    @fwd_op.register_fake
    def _fwd_fake(q, k, v, softmax_scale, causal, causal_alignment, window_left, window_right, softcap,
                  deterministic, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        out = q.new_empty(_out_shape(q, v))
        lse = q.new_empty(_lse_shape(q, cu_seqlens_q is not None), dtype=torch.float32)
        return out, lse

    @torch.library.custom_op(f"{NAMESPACE}::bwd", mutates_args=(), device_types="cuda")
    def bwd_op(dout: T, q: T, k: T, v: T, out: T, lse: T, softmax_scale: float, causal: bool,
               causal_alignment: int, window_left: int, window_right: int, softcap: float, deterministic: bool,
               cu_seqlens_q: Optional[T], cu_seqlens_k: Optional[T], max_seqlen_q: int,
               max_seqlen_k: int) -> Tuple[T, T, T]:
        return backward_impl(dout, q, k, v, out, lse, softmax_scale, causal, causal_alignment, window_left,
                             window_right, softcap, deterministic, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                             max_seqlen_k)

    @bwd_op.register_fake
    def _bwd_fake(dout, q, k, v, out, lse, *rest):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def _setup_context(ctx, inputs, output):
        (q, k, v, softmax_scale, causal, causal_alignment, window_left, window_right, softcap, deterministic,
         cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
        ctx.options = (softmax_scale, causal, causal_alignment, window_left, window_right, softcap, deterministic)
        ctx.max_seqlens = (max_seqlen_q, max_seqlen_k)

    def _backward(ctx, dout, dlse):
        # The log-sum-exp output is not differentiable (as in flash-attn): its gradient is not propagated.
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = bwd_op(dout, q, k, v, out, lse, *ctx.options, cu_q, cu_k, *ctx.max_seqlens)
        return (dq, dk, dv) + (None,) * 11

    torch.library.register_autograd(f"{NAMESPACE}::fwd", _backward, setup_context=_setup_context)

    # The fp8 forward: no autograd is registered (there is no fp8 backward, as in FlashAttention-3; the entry points
    # refuse inputs that require grad before they get here).
    @torch.library.custom_op(f"{NAMESPACE}::fwd_fp8", mutates_args=(), device_types="cuda")
    def fwd_fp8_op(q: T, k: T, v: T, q_descale: Optional[T], k_descale: Optional[T], v_descale: Optional[T],
                   softmax_scale: float, causal: bool, causal_alignment: int, window_left: int, window_right: int,
                   softcap: float, cu_seqlens_q: Optional[T], cu_seqlens_k: Optional[T], max_seqlen_q: int,
                   max_seqlen_k: int) -> Tuple[T, T]:
        return forward_fp8_impl(q, k, v, q_descale, k_descale, v_descale, softmax_scale, causal, causal_alignment,
                                window_left, window_right, softcap, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                max_seqlen_k)

    @fwd_fp8_op.register_fake
    def _fwd_fp8_fake(q, k, v, q_descale, k_descale, v_descale, softmax_scale, causal, causal_alignment, window_left,
                      window_right, softcap, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        out = q.new_empty(_out_shape(q, v), dtype=torch.bfloat16)
        lse = q.new_empty(_lse_shape(q, cu_seqlens_q is not None), dtype=torch.float32)
        return out, lse

    @torch.library.custom_op(f"{NAMESPACE}::decode", mutates_args=("k_cache", "v_cache"), device_types="cuda")
    def decode_op(q: T, k_cache: T, v_cache: T, k: Optional[T], v: Optional[T], cache_seqlens: T,
                  block_table: Optional[T], cache_batch_idx: Optional[T], cache_leftpad: Optional[T],
                  alibi_slopes: Optional[T], rotary_cos: Optional[T], rotary_sin: Optional[T],
                  cu_seqlens_q: Optional[T], cu_seqlens_k_new: Optional[T], k_descale: Optional[T],
                  v_descale: Optional[T], softmax_scale: float, causal: bool, window_left: int, window_right: int,
                  softcap: float, num_splits: int, rotary_interleaved: bool, max_seqlen_q: int) -> Tuple[T, T]:
        return decode_impl(q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, cache_leftpad,
                           alibi_slopes, rotary_cos, rotary_sin, cu_seqlens_q, cu_seqlens_k_new, k_descale, v_descale,
                           softmax_scale, causal, window_left, window_right, softcap, num_splits, rotary_interleaved,
                           max_seqlen_q)

    @decode_op.register_fake
    def _decode_fake(q, k_cache, v_cache, k, v, cache_seqlens, block_table, *rest):
        return q.new_empty(q.shape), q.new_empty(_decode_lse_shape(q), dtype=torch.float32)


if HAS_CUSTOM_OP:
    # The extras (learnable sinks, ALiBi slopes; each optional): their own ops (the plain fwd/bwd ops keep their
    # schema), differentiable in q, k, v and the sinks (the slopes get no gradient, as in FlashAttention-2).
    @torch.library.custom_op(f"{NAMESPACE}::fwd_sink", mutates_args=(), device_types="cuda")
    def fwd_sink_op(q: T, k: T, v: T, sinks: Optional[T], alibi_slopes: Optional[T], dropout_p: float,
                    return_mask: bool, softmax_scale: float, causal: bool, causal_alignment: int, window_left: int,
                    window_right: int, softcap: float, deterministic: bool, cu_seqlens_q: Optional[T],
                    cu_seqlens_k: Optional[T], max_seqlen_q: int, max_seqlen_k: int) -> Tuple[T, T, T, T]:
        return forward_sink_impl(q, k, v, sinks, alibi_slopes, dropout_p, return_mask, softmax_scale, causal,
                                 causal_alignment, window_left, window_right, softcap, cu_seqlens_q, cu_seqlens_k,
                                 max_seqlen_q, max_seqlen_k)

    @fwd_sink_op.register_fake
    def _fwd_sink_fake(q, k, v, sinks, alibi_slopes, dropout_p, return_mask, softmax_scale, causal, causal_alignment,
                       window_left, window_right, softcap, deterministic, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                       max_seqlen_k):
        varlen = cu_seqlens_q is not None
        batch = cu_seqlens_q.shape[0] - 1 if varlen else q.shape[0]
        sq, sk = (max_seqlen_q, max_seqlen_k) if varlen else (q.shape[1], k.shape[1])
        mask_shape = (batch, q.shape[-2], sq, sk) if dropout_p > 0 and return_mask else (0,)
        return (q.new_empty(_out_shape(q, v)), q.new_empty(_lse_shape(q, varlen), dtype=torch.float32),
                q.new_empty((2 if dropout_p > 0 else 0,), dtype=torch.int64), q.new_empty(mask_shape, dtype=torch.uint8))

    @torch.library.custom_op(f"{NAMESPACE}::bwd_sink", mutates_args=(), device_types="cuda")
    def bwd_sink_op(dout: T, q: T, k: T, v: T, out: T, lse: T, sinks: Optional[T], alibi_slopes: Optional[T],
                    dropout_p: float, rng_state: T, softmax_scale: float, causal: bool, causal_alignment: int,
                    window_left: int, window_right: int, softcap: float, deterministic: bool,
                    cu_seqlens_q: Optional[T], cu_seqlens_k: Optional[T], max_seqlen_q: int,
                    max_seqlen_k: int) -> Tuple[T, T, T, T]:
        return backward_sink_impl(dout, q, k, v, out, lse, sinks, alibi_slopes, dropout_p, rng_state, softmax_scale,
                                  causal, causal_alignment, window_left, window_right, softcap, deterministic,
                                  cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)

    @bwd_sink_op.register_fake
    def _bwd_sink_fake(dout, q, k, v, out, lse, sinks, *rest):
        ds = sinks.new_empty(sinks.shape) if sinks is not None else q.new_empty((0,), dtype=torch.float32)
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), ds

    def _setup_sink_context(ctx, inputs, output):
        (q, k, v, sinks, alibi_slopes, dropout_p, return_mask, softmax_scale, causal, causal_alignment, window_left,
         window_right, softcap, deterministic, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) = inputs
        out, lse, rng_state, _ = output
        ctx.save_for_backward(q, k, v, sinks, alibi_slopes, out, lse, rng_state, cu_seqlens_q, cu_seqlens_k)
        ctx.dropout_p = dropout_p
        ctx.options = (softmax_scale, causal, causal_alignment, window_left, window_right, softcap, deterministic)
        ctx.max_seqlens = (max_seqlen_q, max_seqlen_k)

    def _sink_backward(ctx, dout, dlse, drng, dmask):
        # As the plain op: no gradient flows into the log-sum-exp output (FlashAttention-4's dLSE term is 0 here).
        q, k, v, sinks, alibi_slopes, out, lse, rng_state, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv, dsinks = bwd_sink_op(dout, q, k, v, out, lse, sinks, alibi_slopes, ctx.dropout_p, rng_state,
                                         *ctx.options, cu_q, cu_k, *ctx.max_seqlens)
        return (dq, dk, dv, dsinks if sinks is not None else None) + (None,) * 14

    torch.library.register_autograd(f"{NAMESPACE}::fwd_sink", _sink_backward, setup_context=_setup_sink_context)


class _EagerSinkAttention(torch.autograd.Function):
    """_EagerAttention's counterpart with learnable sinks (float32 [heads_q]): gradients for q, k, v and the sinks."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, alibi_slopes, call, dropout_p, return_mask):
        if not call.plain:
            q, k, v = aligned(q), aligned(k), aligned(v)
        out, lse, rng_state, mask = forward_sink_impl(q, k, v, sinks, alibi_slopes, dropout_p, return_mask, *call.opts,
                                                      call.cu_q, call.cu_k, call.max_q, call.max_k)
        ctx.save_for_backward(q, k, v, sinks, alibi_slopes, out, lse, rng_state)
        ctx.call = call
        ctx.dropout_p = dropout_p
        ctx.mark_non_differentiable(lse, mask)
        ctx.set_materialize_grads(False)
        return out, lse, mask

    @staticmethod
    def backward(ctx, dout, dlse, dmask):
        if dout is None:
            return (None,) * 8
        q, k, v, sinks, alibi_slopes, out, lse, rng_state = ctx.saved_tensors
        c = ctx.call
        args = (dout, q, k, v, out, lse, sinks, alibi_slopes, ctx.dropout_p, rng_state, *c.opts, c.deterministic,
                c.cu_q, c.cu_k, c.max_q, c.max_k)
        if HAS_CUSTOM_OP and (torch.is_grad_enabled() or not plain_eager(dout)):
            dq, dk, dv, dsinks = bwd_sink_op(*args)
        else:
            dq, dk, dv, dsinks = backward_sink_impl(*args)
        return dq, dk, dv, dsinks if sinks is not None else None, None, None, None, None


def attention_sink(q, k, v, sinks, alibi_slopes, opts, deterministic, cu_q, cu_k, max_q, max_k, plain, dropout_p=0.0,
                   return_mask=False):
    """(out, lse, mask) of flash attention with the extras on q, k, v as attn_input made them: learnable sinks
    (checked by sink_input, any of its dtypes), ALiBi slopes (checked by alibi_input), each None when absent, and
    dropout_p (checked by _args.dropout_arg); mask: the uint8 keep mask when return_mask and dropout_p > 0, else None.
    Differentiable in q, k, v and the sinks."""
    s32 = _sinks32(sinks) if sinks is not None else None
    if HAS_CUSTOM_OP and not plain:
        out, lse, _, mask = fwd_sink_op(q, k, v, s32, alibi_slopes, dropout_p, return_mask, *opts, deterministic, cu_q,
                                        cu_k, max_q, max_k)
    elif torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                      or (s32 is not None and s32.requires_grad)):
        out, lse, mask = _EagerSinkAttention.apply(q, k, v, s32, alibi_slopes,
                                                   _Call(opts, deterministic, cu_q, cu_k, max_q, max_k, plain),
                                                   dropout_p, return_mask)
    else:
        if not plain:
            q, k, v = aligned(q), aligned(k), aligned(v)
        out, lse, _, mask = forward_sink_impl(q, k, v, s32, alibi_slopes, dropout_p, return_mask, *opts, cu_q, cu_k,
                                              max_q, max_k)
    return out, lse, (mask if return_mask and dropout_p > 0 else None)


# ---- paged K/V (C ABI 0.11; FlashAttention-2's block_table of flash_attn_varlen_func) -------------------------------
#
# A variable-length forward whose keys and values live in pools of fixed-size blocks: key j of sequence b is row
# j % block_size of block block_table[b, j // block_size]. Forward only (the library's fa_backward has no paged K/V,
# nor has flash-attn's variable-length backward): a call that autograd records runs and records its forward, as
# flash-attn's does, and its backward raises _args.paged_kv_no_backward().

def block_table_input(function, block_table, batch):
    """block_table checked as flash-attn checks it (a torch.int32 tensor (batch, max_num_blocks_per_seq), one row of
    block ids per sequence of cu_seqlens_q; batch -1: not known here, the library checks it), before any device check,
    so that the checks hold on CPU tensors too. Read in place (the library takes any positive strides), copied only
    when a stride is 0 (an expanded table)."""
    if not isinstance(block_table, torch.Tensor):
        raise TypeError(f"{function}: block_table must be a torch.Tensor or None, got {type(block_table).__name__}")
    if block_table.dtype != torch.int32:
        raise TypeError(f"{function}: block_table must be torch.int32 (as flash-attn requires), got "
                        f"{block_table.dtype}")
    if block_table.dim() != 2 or (batch >= 0 and block_table.shape[0] != batch):
        want = f"(batch, max_num_blocks_per_seq) with batch = {batch}" if batch >= 0 else \
            "(batch, max_num_blocks_per_seq)"
        raise ValueError(f"{function}: block_table must be {want}, one row of block ids per sequence of "
                         f"cu_seqlens_q, got {tuple(block_table.shape)}")
    if any(st < 1 for st in block_table.stride()):
        block_table = block_table.contiguous()
    return block_table


class _EagerPagedAttention(torch.autograd.Function):
    """The forward of a paged call (block_table) that autograd records, without the custom op: out requires grad as
    flash-attn's does, and the backward raises (there is no paged backward)."""

    @staticmethod
    def forward(ctx, q, k, v, block_table, sinks, alibi_slopes, call, dropout_p, return_mask):
        if not call.plain:
            q, k, v = aligned(q), aligned(k), aligned(v)
        out, lse, _, mask = forward_sink_impl(q, k, v, sinks, alibi_slopes, dropout_p, return_mask, *call.opts,
                                              call.cu_q, call.cu_k, call.max_q, call.max_k, block_table=block_table)
        ctx.mark_non_differentiable(lse, mask)
        return out, lse, mask

    @staticmethod
    def backward(ctx, dout, dlse, dmask):
        raise _args.paged_kv_no_backward()


if HAS_CUSTOM_OP:
    @torch.library.custom_op(f"{NAMESPACE}::fwd_paged", mutates_args=(), device_types="cuda")
    def fwd_paged_op(q: T, k: T, v: T, block_table: T, sinks: Optional[T], alibi_slopes: Optional[T], dropout_p: float,
                     return_mask: bool, softmax_scale: float, causal: bool, causal_alignment: int, window_left: int,
                     window_right: int, softcap: float, cu_seqlens_q: T, cu_seqlens_k: T, max_seqlen_q: int,
                     max_seqlen_k: int) -> Tuple[T, T, T]:
        out, lse, _, mask = forward_sink_impl(q, k, v, sinks, alibi_slopes, dropout_p, return_mask, softmax_scale,
                                              causal, causal_alignment, window_left, window_right, softcap,
                                              cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                              block_table=block_table)
        return out, lse, mask

    @fwd_paged_op.register_fake
    def _fwd_paged_fake(q, k, v, block_table, sinks, alibi_slopes, dropout_p, return_mask, softmax_scale, causal,
                        causal_alignment, window_left, window_right, softcap, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k):
        mask_shape = (cu_seqlens_q.shape[0] - 1, q.shape[-2], max_seqlen_q, max_seqlen_k) \
            if dropout_p > 0 and return_mask else (0,)
        return (q.new_empty(_out_shape(q, v)), q.new_empty(_lse_shape(q, True), dtype=torch.float32),
                q.new_empty(mask_shape, dtype=torch.uint8))

    # The backward is an op of its own that raises when it runs: a graph that torch.compile traces with inputs that
    # require grad compiles (its fake gives gradients of the inputs' shapes), and only running the backward fails.
    @torch.library.custom_op(f"{NAMESPACE}::bwd_paged", mutates_args=(), device_types="cuda")
    def bwd_paged_op(dout: T, q: T, k: T, v: T) -> Tuple[T, T, T]:
        raise _args.paged_kv_no_backward()

    @bwd_paged_op.register_fake
    def _bwd_paged_fake(dout, q, k, v):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def _setup_paged_context(ctx, inputs, output):
        q, k, v = inputs[:3]
        ctx.save_for_backward(q, k, v)

    def _paged_backward(ctx, dout, dlse, dmask):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = bwd_paged_op(dout, q, k, v)
        return (dq, dk, dv) + (None,) * 15

    torch.library.register_autograd(f"{NAMESPACE}::fwd_paged", _paged_backward, setup_context=_setup_paged_context)


def attention_paged(q, k, v, block_table, sinks, alibi_slopes, opts, cu_q, cu_k, max_q, max_k, plain, dropout_p=0.0,
                    return_mask=False):
    """(out, lse, mask) of the paged forward on q (as attn_input made it), the pools k and v (likewise) and block_table
    (checked by block_table_input), with the extras as attention_sink takes them (each None or 0.0 when absent).
    Recorded by autograd when an input requires grad (grad mode on), whose backward then raises."""
    s32 = _sinks32(sinks) if sinks is not None else None
    if HAS_CUSTOM_OP and not plain:
        out, lse, mask = fwd_paged_op(q, k, v, block_table, s32, alibi_slopes, dropout_p, return_mask, *opts, cu_q,
                                      cu_k, max_q, max_k)
    elif torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                      or (s32 is not None and s32.requires_grad)):
        out, lse, mask = _EagerPagedAttention.apply(q, k, v, block_table, s32, alibi_slopes,
                                                    _Call(opts, False, cu_q, cu_k, max_q, max_k, plain), dropout_p,
                                                    return_mask)
    else:
        if not plain:
            q, k, v = aligned(q), aligned(k), aligned(v)
        out, lse, _, mask = forward_sink_impl(q, k, v, s32, alibi_slopes, dropout_p, return_mask, *opts, cu_q, cu_k,
                                              max_q, max_k, block_table=block_table)
    return out, lse, (mask if return_mask and dropout_p > 0 else None)


# ---- the entry points _interface calls ----------------------------------------------------------------------------

class _Call:
    """The non-tensor arguments of an eager autograd call, one opaque object (Function.apply walks its arguments as a
    pytree; a plain object is one leaf). fields: q, k, v's fa_tensor_t fields when already made (dense_eager)."""
    __slots__ = ("opts", "deterministic", "cu_q", "cu_k", "max_q", "max_k", "plain", "fields")

    def __init__(self, opts, deterministic, cu_q, cu_k, max_q, max_k, plain, fields=None):
        self.opts, self.deterministic, self.cu_q, self.cu_k = opts, deterministic, cu_q, cu_k
        self.max_q, self.max_k, self.plain, self.fields = max_q, max_k, plain, fields


class _EagerAttention(torch.autograd.Function):
    """The forward and backward of an eager call that autograd records, without the custom op (see plain_eager); on
    a PyTorch without custom ops, every recorded call."""

    @staticmethod
    def forward(ctx, q, k, v, call):
        if call.fields is not None:
            out, lse = _run_forward(q, *call.fields, call.opts, None, True)
        else:
            if not call.plain:  # PyTorch < 2.4 under torch.compile: alignment settled here, as the op would
                q, k, v = aligned(q), aligned(k), aligned(v)
            out, lse = _forward(q, k, v, *call.opts, call.cu_q, call.cu_k, call.max_q, call.max_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.call = call
        # The log-sum-exp output is not differentiable (as in flash-attn): no gradient flows into it, and none is
        # materialised for it.
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        if dout is None:
            return None, None, None, None
        q, k, v, out, lse = ctx.saved_tensors
        c = ctx.call
        args = (dout, q, k, v, out, lse, *c.opts, c.deterministic, c.cu_q, c.cu_k, c.max_q, c.max_k)
        # Through the backward op where the forward's op would be needed (compiled autograd traces this backward),
        # and under create_graph (grad enabled here), where the op, which has no derivative, says so if a second
        # backward goes through it, as the custom op path does.
        if HAS_CUSTOM_OP and (torch.is_grad_enabled() or not plain_eager(dout)):
            dq, dk, dv = bwd_op(*args)
        else:
            dq, dk, dv = backward_impl(*args)
        return dq, dk, dv, None


_ATTN_CODES = {torch.float16: _abi.FA_DTYPE_FLOAT16, torch.bfloat16: _abi.FA_DTYPE_BFLOAT16}


_grad_enabled = torch.is_grad_enabled
_ALIGNMENT = _abi.FA_ALIGNMENT_BYTES
_NO_TENSOR = _args.NO_TENSOR


def _ready4(t):
    """The fa_tensor_t fields of t when the library takes it as it is as fixed-length q, k or v (a CUDA tensor of rank
    4, fp16 or bf16, last dim contiguous, 16-byte aligned start), else None. One look at the tensor for both the
    checks and the descriptor."""
    shape = t.shape
    if len(shape) != 4 or not t.is_cuda:
        return None
    code = _ATTN_CODES.get(t.dtype)
    strides = t.stride()
    data = t.data_ptr()
    if code is None or strides[-1] != 1 or data % _ALIGNMENT:
        return None
    return (data, code, 4, *shape, *strides)


def dense_eager(q, k, v, opts, deterministic, return_attn_probs):
    """The whole fixed-length call (flash_attn_func and the packed ones) where it takes the eager path with q, k and v
    as they are: plain_eager, the autograd decision, _run_forward and _interface._finish in one frame, each piece once
    (host time, issue 13). None when it does not apply (compiling, a mode, a subclass, a tensor that needs a check's
    error or a copy): _interface._dense_general then runs the call, with every check and error as before."""
    if _is_compiling is not None and _is_compiling():  # first: dynamo traces nothing below while compiling
        return None
    if type(q) not in _PLAIN_TYPES or type(k) not in _PLAIN_TYPES or type(v) not in _PLAIN_TYPES:
        return None
    if HAS_CUSTOM_OP and _modes_active():
        return None
    fq = _ready4(q)
    if fq is None:
        return None
    fk = _ready4(k)
    if fk is None:
        return None
    fv = _ready4(v)
    if fv is None:
        return None
    if _grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        if fv[6] != fq[6]:
            return None  # a V head dim other than q's: _dense_general (it refuses pairs without a backward)
        out, lse = _EagerAttention.apply(q, k, v, _Call(opts, bool(deterministic), None, None, 0, 0, True,
                                                        (fq, fk, fv)))
    else:
        # _run_forward, inlined
        lib = _library._library
        if lib is None:
            lib = load_library()
        device = q.get_device()
        if not return_attn_probs and fv[6] == fq[6] and q.is_contiguous():  # _outputs, inlined for the common case
            out = _empty_like(q)
            fo, lse, fl = (out.data_ptr(), *fq[1:]), None, _NO_TENSOR
        else:
            out, fo, lse, fl = _outputs(q, fq, fv, return_attn_probs, False)
        p = lib.new_forward_params()
        _args.pack_forward(p, fq, fk, fv, fo, fl, *opts)
        ctx = lib._contexts.get(device)
        if ctx is None:
            ctx = lib.context(device)
        st = lib.lib.fa_forward(ctx, p, _stream(device))
        if st:
            raise lib.error("fa_forward", st)
    if not return_attn_probs:
        return out
    return out, lse, q.new_empty((0,))  # _interface._finish


def attention(q, k, v, opts, deterministic, cu_q, cu_k, max_q, max_k, plain, want_lse=True):
    """(out, lse) of flash attention on q, k, v as attn_input made them (plain: plain_eager of the call's tensors).
    opts: (softmax_scale, causal, causal_alignment, window_left, window_right, softcap). want_lse False: lse may come
    back None (a plain call that autograd does not record does not compute it)."""
    if HAS_CUSTOM_OP and not plain:
        return fwd_op(q, k, v, *opts, deterministic, cu_q, cu_k, max_q, max_k)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _EagerAttention.apply(q, k, v, _Call(opts, deterministic, cu_q, cu_k, max_q, max_k, plain))
    if not plain:
        q, k, v = aligned(q), aligned(k), aligned(v)
    return _forward(q, k, v, *opts, cu_q, cu_k, max_q, max_k, want_lse)


def attention_fp8(q, k, v, descales, opts, cu_q, cu_k, max_q, max_k, plain, want_lse=True):
    """(out bf16, lse) of the fp8 forward on q, k, v as attn_input made them, with descales (q_descale, k_descale,
    v_descale; None entries: 1) checked by fp8_descale. Through the custom op unless plain (plain_eager of the call's
    tensors); never recorded by autograd (the entry points refuse inputs that require grad)."""
    if HAS_CUSTOM_OP and not plain:
        return fwd_fp8_op(q, k, v, *descales, *opts, cu_q, cu_k, max_q, max_k)
    return forward_fp8_impl(q, k, v, *descales, *opts, cu_q, cu_k, max_q, max_k, want_lse)


def requires_grad(*tensors):
    """Whether autograd would record a call on these tensors (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def refuse_v_head_dim_grad(function, q, k, v, sinks=None):
    """Refuses (UnsupportedArgumentError) a call whose v has a head dim other than q's (C ABI 0.10) when autograd would
    record it (grad mode on and q, k, v or the sinks require grad) and the library has no backward for the pair (it
    has (192, 128)'s, as FlashAttention-3; (64, 512) is forward only). Called before the device checks, so that it
    holds on CPU tensors too; an argument without a shape is left to the tensor checks that follow."""
    qs, vs = getattr(q, "shape", None), getattr(v, "shape", None)
    if not qs or not vs or qs[-1] == vs[-1] or (qs[-1], vs[-1]) in _args.V_HEAD_DIM_BACKWARD_PAIRS:
        return
    if torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in (q, k, v, sinks)):
        _args.refuse_v_head_dim_grad(function, qs[-1], vs[-1])


_increment_version = getattr(getattr(torch.autograd, "graph", None), "increment_version", None)


def decode(q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, cache_leftpad, alibi_slopes,
           rotary_cos, rotary_sin, cu_seqlens_q, cu_seqlens_k_new, k_descale, v_descale, *options):
    """(out, lse) of decode_impl; options: (softmax_scale, causal, window_left, window_right, softcap, num_splits,
    rotary_interleaved, max_seqlen_q).
    Through the custom op unless plain_eager and no input requires grad (the op's autograd handling stays theirs);
    directly otherwise, the caches' version counters moved as the op moves them when k/v are appended (the caches
    are written in place)."""
    tensors = (q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, cache_leftpad, alibi_slopes,
               rotary_cos, rotary_sin, cu_seqlens_q, cu_seqlens_k_new, k_descale, v_descale)
    if HAS_CUSTOM_OP and (not plain_eager(*tensors) or (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in tensors))):
        return decode_op(*tensors, *options)
    out, lse = decode_impl(*tensors, *options)
    if HAS_CUSTOM_OP and k is not None and _increment_version is not None:
        _increment_version(k_cache)
        _increment_version(v_cache)
    return out, lse
