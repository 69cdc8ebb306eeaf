#!/usr/bin/env python3
"""The Python package's benchmark rows (issue 13): flash_attn_interop.flash_attn_func against the same fa_forward
called directly through ctypes (a params struct built once, the call alone: what C pays, plus ctypes' own ~1 us).

  host_us     host time per call, tiny shape (the GPU idles, so the loop is host-bound): the direct call (the stream
              asked for with torch.cuda.current_stream() per call, as before, and with the one-C-call raw stream the
              package uses), the package under torch.no_grad() (entered once around the loop), the package with
              autograd recording (q requires grad; forward only, and forward + backward), and the custom op called
              as torch.compile's graph (or any TorchDispatchMode) calls it. Target: the package within 10 us of the
              direct call; within_target reads it against the current_stream() direct call (the issue's baseline,
              which itself pays ~5 us for the Stream object), within_target_vs_raw_stream against the raw-stream one
              (the package's own Python work alone): both are reported.
  host_split  where the package's no-grad call spends its host time, each piece timed alone in the same loop:
              argument mapping and the eager/custom-op decision, the params struct (descriptors of q, k, v, out and
              the packing), the output allocation, the stream query, the grad-mode check with the device and context
              lookups, the ctypes + C call; "rest" is the package's time less those (its Python call layers: the
              entry point, _options, dense_eager).
  tflops      one large shape (bf16, B 4, S 4096, H 32, D 128, causal), triton's do_bench median (the best of two
              rounds in rotated order; the direct call also with a fresh output per call): the package and the
              direct call, which should be equal within noise (the package adds host time only).

    python3 bench/python_api.py [--lib build/libflash_attention.so] [--out python_api.json]

Needs torch, triton and a GPU. The package is imported from python/src (no install needed); --lib (else
FLASH_ATTENTION_NATIVE_PATH, else the package's own lookup) picks the library both paths use.
"""
import argparse
import contextlib
import ctypes
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "python", "src"))

HOST_TARGET_US = 10.0


def host_us(fn, sync, n=3000, repeats=5, ctx=None):
    """Best of `repeats` loops of n calls: wall time per call in us (calls only queue work; the GPU keeps up). ctx: a
    context manager (torch.no_grad) entered once around each loop, not per call."""
    best = float("inf")
    for _ in range(repeats):
        sync()
        with ctx() if ctx is not None else contextlib.nullcontext():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            t1 = time.perf_counter()
        sync()
        best = min(best, (t1 - t0) / n * 1e6)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", help="libflash_attention.so (default: FLASH_ATTENTION_NATIVE_PATH, else the lookup)")
    ap.add_argument("--out", help="write the rows as JSON here too")
    args = ap.parse_args()
    if args.lib:
        os.environ["FLASH_ATTENTION_NATIVE_PATH"] = os.path.abspath(args.lib)

    import torch
    from triton.testing import do_bench

    import flash_attn_interop as fai
    from flash_attn_interop import _args, _interface, _ops
    from flash_attn_interop._ops import desc

    lib = fai.load_library()
    dev = torch.device("cuda")
    ctx = lib.context(dev.index if dev.index is not None else torch.cuda.current_device())
    sync = torch.cuda.synchronize

    def direct_call(q, k, v, causal):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[0], q.shape[2], q.shape[1], device=dev, dtype=torch.float32)
        p = _args.forward_params(lib, desc(q), desc(k), desc(v), desc(out), desc(lse), causal=causal)
        pp, fn, c = ctypes.byref(p), lib.lib.fa_forward, ctx

        def call():
            st = fn(c, pp, torch.cuda.current_stream().cuda_stream)
            if st:
                raise lib.error("fa_forward", st)
        call._keep = (p, out, lse)
        return call

    rows = []
    # Host overhead: a tiny shape.
    q, k, v = (torch.randn(1, 128, 1, 64, device=dev, dtype=torch.bfloat16) for _ in range(3))
    direct = direct_call(q, k, v, True)
    index = q.get_device()
    pp_direct = ctypes.byref(direct._keep[0])
    fa_forward, stream = lib.lib.fa_forward, _ops._stream(index)

    def direct_raw():
        st = fa_forward(ctx, pp_direct, _ops._stream(index))
        if st:
            raise lib.error("fa_forward", st)

    def pkg():
        fai.flash_attn_func(q, k, v, causal=True)
    qg = q.clone().requires_grad_()

    def pkg_grad():
        fai.flash_attn_func(qg, k, v, causal=True)
    g = torch.randn_like(q)

    def pkg_fwd_bwd():
        qg.grad = None  # the backward then hands dq over as the grad, no accumulation kernel
        fai.flash_attn_func(qg, k, v, causal=True).backward(g)
    opts = _interface._options("flash_attn_func", 0.0, None, True, (-1, -1), 0.0, None, "bottom_right")
    custom_op = getattr(_ops, "fwd_op", None)

    def pkg_custom_op():
        custom_op(q, k, v, *opts, False, None, None, 0, 0)
    no_grad = torch.no_grad
    for f in (direct, direct_raw, pkg, pkg_grad, pkg_fwd_bwd) + ((pkg_custom_op,) if custom_op else ()):
        f()
    sync()
    row = {"pass": "python_api", "what": "host_us", "shape": "bf16 B1 S128 H1 D64 causal",
           "direct_us": host_us(direct, sync), "direct_raw_stream_us": host_us(direct_raw, sync),
           "package_nograd_us": host_us(pkg, sync, ctx=no_grad), "package_grad_us": host_us(pkg_grad, sync, n=1000),
           "package_fwd_bwd_us": host_us(pkg_fwd_bwd, sync, n=1000),
           "custom_op_nograd_us": host_us(pkg_custom_op, sync, ctx=no_grad) if custom_op else None,
           "target_us": HOST_TARGET_US, "torch": torch.__version__}
    row["overhead_us"] = row["package_nograd_us"] - row["direct_us"]
    row["overhead_vs_raw_stream_us"] = row["package_nograd_us"] - row["direct_raw_stream_us"]
    row["within_target"] = row["overhead_us"] <= HOST_TARGET_US
    # The stricter reading: the direct call that asks for the stream as the package does (one C call), so the
    # difference is the package's own Python work alone.
    row["within_target_vs_raw_stream"] = row["overhead_vs_raw_stream_us"] <= HOST_TARGET_US
    rows.append(row)
    print("#", json.dumps(row), flush=True)

    # Where the package's no-grad call spends it: each piece alone, in the same loop as above.

    def args_part():
        _interface._options("flash_attn_func", 0.0, None, True, (-1, -1), 0.0, None, "bottom_right")
        _ops.plain_eager(q, k, v)

    fq = _ops._ready4(q)
    fo = _ops._outputs(q, fq, False, False)[1]

    def params_part():  # the descriptors of q, k, v (with their checks) and the packing, as the package's call
        fq, fk, fv = _ops._ready4(q), _ops._ready4(k), _ops._ready4(v)
        _args.pack_forward(lib.new_forward_params(), fq, fk, fv, fo, _args.NO_TENSOR, *opts)

    def alloc_part():  # out and its descriptor, as the package's no-grad call
        _ops._outputs(q, fq, False, False)

    def alloc_lse_part():  # out and lse, as a call with autograd or return_attn_probs
        _ops._outputs(q, fq, True, False)

    def stream_part():
        _ops._stream(index)

    def lookups_part():  # the grad-mode check, the device and the context, as dense_eager
        torch.is_grad_enabled()
        lib._contexts.get(q.get_device())

    def stream_current_part():
        torch.cuda.current_stream().cuda_stream

    def c_call_part():
        fa_forward(ctx, pp_direct, stream)
    with no_grad():
        for f in (args_part, params_part, alloc_part, alloc_lse_part, stream_part, stream_current_part, lookups_part,
                  c_call_part):
            f()
    sync()
    split = {"pass": "python_api", "what": "host_split", "shape": row["shape"],
             "args_us": host_us(args_part, sync, ctx=no_grad), "params_us": host_us(params_part, sync, ctx=no_grad),
             "alloc_out_us": host_us(alloc_part, sync, ctx=no_grad),
             "alloc_out_lse_us": host_us(alloc_lse_part, sync, ctx=no_grad),
             "stream_raw_us": host_us(stream_part, sync, ctx=no_grad),
             "stream_current_stream_us": host_us(stream_current_part, sync, ctx=no_grad),
             "lookups_us": host_us(lookups_part, sync, ctx=no_grad),
             "c_call_us": host_us(c_call_part, sync, ctx=no_grad)}
    split["rest_us"] = row["package_nograd_us"] - sum(split[x] for x in ("args_us", "params_us", "alloc_out_us",
                                                                          "stream_raw_us", "lookups_us", "c_call_us"))
    rows.append(split)
    print("#", json.dumps(split), flush=True)

    # Throughput: one large shape.
    b, s, h, d = 4, 4096, 32, 128
    q, k, v = (torch.randn(b, s, h, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
    flops = 4.0 * b * h * s * s * d / 2  # causal: half the score matrix
    direct = direct_call(q, k, v, True)
    ref = fai.flash_attn_func(q, k, v, causal=True)
    direct()
    sync()
    out_direct = direct._keep[1]
    assert torch.equal(ref, out_direct), "the package and the direct call disagree"

    def pkg():
        with torch.no_grad():
            fai.flash_attn_func(q, k, v, causal=True)
    params = direct._keep[0]

    def direct_alloc():
        # The direct call with a fresh output each time, as the package allocates one per call (the caching
        # allocator hands back the block freed by the previous call).
        o = torch.empty_like(q)
        params.out.data = o.data_ptr()
        direct()
    # Rotated twice (direct, package, direct with allocation), so an order effect shows as a spread.
    times = {"direct": [], "package": [], "direct_alloc": []}
    for _ in range(2):
        for name, fn in (("direct", direct), ("package", pkg), ("direct_alloc", direct_alloc)):
            times[name].append(do_bench(fn, warmup=25, rep=200, return_mode="median"))
    params.out.data = out_direct.data_ptr()
    ms_direct, ms_pkg, ms_alloc = (min(times[n]) for n in ("direct", "package", "direct_alloc"))
    row = {"pass": "python_api", "what": "tflops", "shape": f"bf16 B{b} S{s} H{h} D{d} causal fwd",
           "direct_ms": ms_direct, "package_ms": ms_pkg, "direct_alloc_ms": ms_alloc,
           "rounds_ms": times, "direct_tflops": flops / ms_direct / 1e9,
           "package_tflops": flops / ms_pkg / 1e9, "package_over_direct": ms_pkg / ms_direct,
           "direct_alloc_over_direct": ms_alloc / ms_direct}
    rows.append(row)
    print("#", json.dumps(row), flush=True)

    hr, sp, tp = rows
    print(f"host overhead: package {hr['package_nograd_us']:.1f} us (grad {hr['package_grad_us']:.1f} us, fwd+bwd "
          f"{hr['package_fwd_bwd_us']:.1f} us) vs direct {hr['direct_us']:.1f} us per call: "
          f"+{hr['overhead_us']:.1f} us ({'within' if hr['within_target'] else 'ABOVE'} the {HOST_TARGET_US:.0f} us "
          f"target); against the direct call with the raw stream ({hr['direct_raw_stream_us']:.1f} us) "
          f"+{hr['overhead_vs_raw_stream_us']:.1f} us ({'within' if hr['within_target_vs_raw_stream'] else 'ABOVE'} "
          f"it)")
    if hr["custom_op_nograd_us"] is not None:
        print(f"  the custom op (the torch.compile / dispatch-mode path) called eagerly: "
              f"{hr['custom_op_nograd_us']:.1f} us")
    print("  split of the no-grad call: " + ", ".join(
        f"{name} {sp[key]:.1f}" for name, key in (("args", "args_us"), ("params", "params_us"),
                                                  ("alloc out", "alloc_out_us"), ("stream", "stream_raw_us"),
                                                  ("grad mode, device, context", "lookups_us"),
                                                  ("C call", "c_call_us"), ("rest", "rest_us")))
          + f" us (out and lse {sp['alloc_out_lse_us']:.1f}, current_stream() {sp['stream_current_stream_us']:.1f})")
    print(f"throughput: package {tp['package_tflops']:.1f} TFLOP/s vs direct {tp['direct_tflops']:.1f} TFLOP/s "
          f"(ratio of times {tp['package_over_direct']:.3f}; the direct call with a fresh output per call "
          f"{tp['direct_alloc_over_direct']:.3f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "abi_version": lib.version, "library": lib.path}, f, indent=1)


if __name__ == "__main__":
    main()
