"""Forward A/B/C...: several builds of libflash_attention timed on the same tensors in one process, with cuDNN's
SDPA as the anchor, the order of the builds rotated between rounds (so none is always timed first), the median of
the rounds kept. For kernel experiments: build the variants side by side (e.g. with -DCMAKE_CUDA_FLAGS=-D...),
then

    python3 bench/ab_fwd.py --lib base=build/a --lib try=build/b [--dtype bf16] [--quick] [--rounds 3]

prints TFLOP/s per build and cuDNN, and each build over the first. Outputs are checked against cuDNN's (relative
Frobenius error above common.MAX_REL_ERR marks the row); a build that fails a shape shows "-". Needs torch and
a GPU."""
import argparse
import math
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from common import MAX_REL_ERR, FaLib, Timer, dtype_code, first_line, lib_file, tflops  # noqa: E402
from inputs import torch_dtype  # noqa: E402
from shapes import fwd_flops, shapes_grid  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", action="append", required=True, help="NAME=PATH of a build (a folder is accepted)")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    ap.add_argument("--quick", action="store_true", help="S 1k and 4k only")
    ap.add_argument("--d", default="", help="comma-separated head dims to keep (default: all of the grid)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rep", type=int, default=30)
    args = ap.parse_args(argv)
    args.libs = []
    for spec in args.lib:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"--lib takes NAME=PATH, got {spec!r}")
        args.libs.append((name, lib_file(path)))
    return args


def main(argv=None):
    args = parse_args(argv)
    bench = Timer(args.warmup, args.rep)
    libs = [(name, FaLib(path, name).open()) for name, path in args.libs]
    keep = {int(x) for x in args.d.split(",") if x}
    shapes = [s for s in shapes_grid(args.quick, "fwd", (args.dtype,)) if not s.get("varlen")]
    shapes = [s for s in shapes if not keep or s["d"] in keep]
    names = [n for n, _ in libs]
    print(f"{'row':26s} " + " ".join(f"{n:>8s}" for n in names) + f" {'cudnn':>7s} " +
          " ".join(f"{n + '/' + names[0]:>10s}" for n in names[1:]) + " " + " ".join(f"{n + '/cu':>9s}" for n in names))
    for s in shapes:
        torch.manual_seed(0)
        b, h, hkv, sq, sk, d, causal = s["b"], s["h"], s["hkv"], s["sq"], s["sk"], s["d"], bool(s["causal"])
        dt, code = torch_dtype(s["dtype"]), dtype_code(s["dtype"])
        q = torch.randn(b, h, sq, d, device="cuda", dtype=dt)
        k = torch.randn(b, hkv, sk, d, device="cuda", dtype=dt)
        v = torch.randn(b, hkv, sk, d, device="cuda", dtype=dt)
        flops = fwd_flops(s)
        ke, ve = (t.repeat_interleave(h // hkv, dim=1) for t in (k, v))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            anchor = lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=causal)  # noqa: E731
            ref = anchor()
            times = {"cudnn": [bench(anchor)]}
        q2, k2, v2 = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        calls, notes = {}, []
        for name, lib in libs:
            o = torch.full_like(q2, float("nan"))
            try:
                params = lib.forward_params(code, q2, k2, v2, o, causal)
                call = lib.forward_call(params)
                call()
                torch.cuda.synchronize()
                err = float((o.float() - ref.transpose(1, 2).float()).norm() / ref.float().norm())
                if math.isnan(err) or err > MAX_REL_ERR:
                    notes.append(f"{name}: rel.err {err:.2e}")
                calls[name] = (call, params, o)  # params and o stay alive with the call
                times[name] = []
            except Exception as e:  # noqa: BLE001
                notes.append(f"{name}: {first_line(e, 120)}")
        order = [n for n in names if n in calls]
        for r in range(args.rounds):
            rot = order[r % len(order):] + order[:r % len(order)] if order else []
            for name in rot:
                times[name].append(bench(calls[name][0]))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            times["cudnn"].append(bench(anchor))
        tf = {n: tflops(flops, statistics.median(t)) for n, t in times.items() if t}
        cu = tf.get("cudnn")
        key = f"d{d} {'causal' if causal else 'full'} s{sq} h{h}/{hkv}"
        cells = [f"{tf[n]:8.0f}" if n in tf else f"{'-':>8s}" for n in names]
        ratios = [f"{tf[n] / tf[names[0]]:10.3f}" if n in tf and names[0] in tf else f"{'-':>10s}" for n in names[1:]]
        vs_cu = [f"{tf[n] / cu:9.3f}" if n in tf and cu else f"{'-':>9s}" for n in names]
        print(f"{key:26s} " + " ".join(cells) + f" {cu or 0:7.0f} " + " ".join(ratios) + " " + " ".join(vs_cu) +
              (("  # " + "; ".join(notes)) if notes else ""), flush=True)
        del calls
        torch.cuda.empty_cache()
    for _, lib in libs:
        lib.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
