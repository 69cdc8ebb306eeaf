"""Where an iteration's time goes in the sm90 backward: reads the per-CTA phase cycles of a build configured with
-DFA_SM90_BWD_TRACE=ON (native/kernels/sm90/bwd_trace.cuh; the bf16 kernels of head dim FA_SM90_BWD_TRACE_HDIM, 64
by default) after one backward call per shape and mode, and prints each phase's cycles per iteration (summed over the
CTAs, over their iterations) for the two consumer warpgroups and, in deterministic mode, the turn warp. A measuring
tool, not a benchmark (the stamps move the kernel's timing a little: compare trace builds with trace builds).

    cmake -S . -B build/btrace -DFA_CUDA_ARCHS=90a -DFA_HEAD_DIMS=64 -DFA_BUILD_TESTS=OFF -DFA_SM90_BWD_TRACE=ON
    cmake --build build/btrace -j16
    python3 bench/bwd_trace.py --lib build/btrace --rows 16x16x1024x64,1x16x16384x64c [--modes default,det]
"""
import argparse
import ctypes
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CTAS, ROLES, EVENTS = 8192, 3, 12
CONSUMER = ["load wait", "S,dP", "softmax,dS", "P handover", "dS st,dV/dK", "mid barrier", "dQ product", "turn wait",
            "dQ adds"]
TURN = ["poll", "adds wait", "pass"]
ITERS, PROLOGUE, EPILOGUE = 9, 10, 11


def read(lib):
    buf = (ctypes.c_ulonglong * (CTAS * ROLES * EVENTS))()
    got = lib.lib.fa_debug_bwd_trace(buf, ctypes.sizeof(buf))
    if got <= 0:
        raise RuntimeError(f"fa_debug_bwd_trace: {got} (a build without -DFA_SM90_BWD_TRACE=ON?)")
    return lambda c, r, e: buf[(c * ROLES + r) * EVENTS + e]


def summarize(at, label):
    """Cycles per iteration of each phase, per role: the sums over the traced CTAs over their iterations."""
    lines = [f"== {label}"]
    for role, names in ((0, CONSUMER), (1, CONSUMER), (2, TURN)):
        ctas = [c for c in range(CTAS) if at(c, role, ITERS)]
        if not ctas:
            continue
        iters = sum(at(c, role, ITERS) for c in ctas)
        sums = [sum(at(c, role, e) for c in ctas) for e in range(len(names))]
        loop = sum(sums)
        who = "turn warp" if role == 2 else f"consumer {role}"
        lines.append(f"  {who}: {len(ctas)} CTAs, {iters} iterations, {loop / iters:.0f} cycles an iteration")
        lines.append("    " + "  ".join(f"{n} {s / iters:.0f} ({100 * s / loop:.0f}%)" for n, s in zip(names, sums) if s))
        if role < 2:
            pro = sum(at(c, role, PROLOGUE) for c in ctas) / len(ctas)
            epi = sum(at(c, role, EPILOGUE) for c in ctas) / len(ctas)
            lines.append(f"    per CTA: prologue {pro:.0f}, epilogue {epi:.0f} cycles ({(pro + epi) / (loop / iters):.2f} iterations)")
    if len(lines) == 1:
        lines.append("  nothing traced (the kernels of another head dim or dtype ran, or no sm90 backward)")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", required=True)
    ap.add_argument("--rows", default="16x16x1024x64,1x16x16384x64,1x16x16384x64c", help="BxHxSxD[c],... (bf16)")
    ap.add_argument("--modes", default="default,det")
    args = ap.parse_args()
    import torch
    from bwd import our_forward_for_bwd
    from common import FaLib, dtype_code, lib_file, run_traced
    from shapes import parse_rows
    lib = FaLib(lib_file(args.lib)).open()
    lib.lib.fa_debug_bwd_trace.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    code = dtype_code("bf16")
    for b, h, hkv, s, d, causal in parse_rows(args.rows):
        q, do = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        k, v = (torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        lse = torch.empty(b, h, s, device="cuda", dtype=torch.float32)
        o = our_forward_for_bwd(lib, code, q, k, v, causal, lse)
        grads = tuple(torch.empty_like(t) for t in (q, k, v))
        for mode in args.modes.split(","):
            p = lib.backward_params(code, (q, k, v, o, do) + grads, lse, causal, mode == "det")
            run_traced(lib.backward_call(p), lib.lib.fa_debug_bwd_trace_clear, warmups=2)
            print(summarize(read(lib), f"B{b} H{h}/{hkv} S{s} D{d} {'causal' if causal else 'full'} {mode}"), flush=True)


if __name__ == "__main__":
    main()
