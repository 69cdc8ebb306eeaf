"""The torch side: torch tensors -> TensorDescs, the library calls on PyTorch's current stream, the custom ops
(torch.library.custom_op where this PyTorch has it, so torch.compile and CUDA graphs see opaque ops with fake
implementations) and their autograd. Imported on the first attention call, never at package import.

No host synchronisation: varlen lengths and cache_seqlens stay on the device (the library trusts the device arrays,
as flash-attn does), workspaces come from PyTorch's caching allocator, nothing is copied to the host.
"""
import ctypes
from typing import Optional, Tuple

import torch

from . import _abi, _args
from ._library import load_library

NAMESPACE = "flash_attn_interop"

_DTYPE_CODES = {torch.float16: _abi.FA_DTYPE_FLOAT16, torch.bfloat16: _abi.FA_DTYPE_BFLOAT16,
                torch.float32: _abi.FA_DTYPE_FLOAT32, torch.int32: _abi.FA_DTYPE_INT32}


def desc(t):
    """The TensorDesc of a torch tensor (None -> None)."""
    if t is None:
        return None
    return _args.TensorDesc(t.data_ptr(), _DTYPE_CODES[t.dtype], tuple(t.shape), t.stride())


def _stream(device):
    return torch.cuda.current_stream(device).cuda_stream


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


def _compiling():
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling()


def aligned(t):
    """t itself when its last dim is contiguous and its data 16-byte aligned (what the library needs), else a copy.
    Called on real tensors inside the ops (a traced graph has no data pointers)."""
    if t.stride(-1) != 1 or t.data_ptr() % _abi.FA_ALIGNMENT_BYTES:
        return t.contiguous()
    return t


def attn_input(function, name, t):
    """q/k/v as the library takes them: fp16/bf16 CUDA, last dim contiguous, 16-byte aligned (else copied; under
    torch.compile the alignment is settled inside the op, where the tensors are real)."""
    if t.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{function}: {name} is {t.dtype}; FlashAttention.Interop serves torch.float16 and "
                        "torch.bfloat16")
    if _compiling():
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


# ---- eager implementations ---------------------------------------------------------------------------------

def forward_impl(q, k, v, softmax_scale, causal, causal_alignment, window_left, window_right, softcap,
                 cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    lib = load_library()
    q, k, v = aligned(q), aligned(k), aligned(v)
    varlen = cu_seqlens_q is not None
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(_lse_shape(q, varlen), dtype=torch.float32, device=q.device)
    p = _args.forward_params(lib, desc(q), desc(k), desc(v), desc(out), desc(lse), softmax_scale=softmax_scale,
                             causal=causal, causal_alignment=causal_alignment, window=(window_left, window_right),
                             softcap=softcap, varlen=_varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    st = lib.lib.fa_forward(lib.context(q.device.index), ctypes.byref(p), _stream(q.device))
    if st:
        raise lib.error("fa_forward", st)
    return out, lse


def _run_with_workspace(lib, kind, p, device):
    """fa_<kind>_workspace_size, then fa_<kind> (backward or decode) on PyTorch's current stream with a workspace from
    PyTorch's allocator: its blocks are 512-byte aligned (the ABI wants 256) and stream-ordered with the call, and a
    caller workspace keeps the call free of allocations of its own, hence capturable."""
    ctx = lib.context(device.index)
    n = ctypes.c_size_t(0)
    st = getattr(lib.lib, f"fa_{kind}_workspace_size")(ctx, ctypes.byref(p), ctypes.byref(n))
    if st:
        raise lib.error(f"fa_{kind}_workspace_size", st)
    ws = torch.empty(max(n.value, _abi.FA_WORKSPACE_ALIGNMENT), dtype=torch.uint8, device=device)
    p.workspace = ws.data_ptr()
    p.workspace_size = ws.numel()
    st = getattr(lib.lib, f"fa_{kind}")(ctx, ctypes.byref(p), _stream(device))
    if st:
        raise lib.error(f"fa_{kind}", st)


def backward_impl(dout, q, k, v, out, lse, softmax_scale, causal, causal_alignment, window_left, window_right,
                  softcap, deterministic, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    lib = load_library()
    dout, q, k, v = aligned(dout), aligned(q), aligned(k), aligned(v)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    p = _args.backward_params(lib, desc(q), desc(k), desc(v), desc(out), desc(dout), desc(lse), desc(dq), desc(dk),
                              desc(dv), softmax_scale=softmax_scale, causal=causal, causal_alignment=causal_alignment,
                              window=(window_left, window_right), softcap=softcap, deterministic=deterministic,
                              varlen=_varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    _run_with_workspace(lib, "backward", p, q.device)
    return dq, dk, dv


def decode_impl(q, k_cache, v_cache, k, v, cache_seqlens, block_table, softmax_scale, causal, window_left,
                window_right, softcap, num_splits):
    lib = load_library()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32, device=q.device)
    p = _args.decode_params(lib, desc(q), desc(k_cache), desc(v_cache), desc(out), desc(cache_seqlens), k_new=desc(k),
                            v_new=desc(v), lse=desc(lse), block_table=desc(block_table), softmax_scale=softmax_scale,
                            causal=causal, window=(window_left, window_right), softcap=softcap, num_splits=num_splits)
    _run_with_workspace(lib, "decode", p, q.device)
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
        out = q.new_empty(q.shape)
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

    @torch.library.custom_op(f"{NAMESPACE}::decode", mutates_args=("k_cache", "v_cache"), device_types="cuda")
    def decode_op(q: T, k_cache: T, v_cache: T, k: Optional[T], v: Optional[T], cache_seqlens: T,
                  block_table: Optional[T], softmax_scale: float, causal: bool, window_left: int, window_right: int,
                  softcap: float, num_splits: int) -> Tuple[T, T]:
        return decode_impl(q, k_cache, v_cache, k, v, cache_seqlens, block_table, softmax_scale, causal,
                           window_left, window_right, softcap, num_splits)

    @decode_op.register_fake
    def _decode_fake(q, k_cache, v_cache, k, v, cache_seqlens, block_table, *rest):
        return q.new_empty(q.shape), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)

    def attention(*args):
        return fwd_op(*args)

    def decode(*args):
        return decode_op(*args)
else:
    class _Attention(torch.autograd.Function):
        """PyTorch before 2.4: a plain autograd.Function (eager and autograd; no torch.compile integration)."""

        @staticmethod
        def forward(ctx, q, k, v, softmax_scale, causal, causal_alignment, window_left, window_right, softcap,
                    deterministic, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
            out, lse = forward_impl(q, k, v, softmax_scale, causal, causal_alignment, window_left, window_right,
                                    softcap, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
            ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
            ctx.options = (softmax_scale, causal, causal_alignment, window_left, window_right, softcap, deterministic)
            ctx.max_seqlens = (max_seqlen_q, max_seqlen_k)
            ctx.mark_non_differentiable(lse)
            return out, lse

        @staticmethod
        def backward(ctx, dout, dlse):
            q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
            dq, dk, dv = backward_impl(dout, q, k, v, out, lse, *ctx.options, cu_q, cu_k, *ctx.max_seqlens)
            return (dq, dk, dv) + (None,) * 11

    def attention(*args):
        return _Attention.apply(*args)

    def decode(*args):
        return decode_impl(*args)
