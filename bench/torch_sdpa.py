"""PyTorch scaled_dot_product_attention (flash and cuDNN backends) over the TARGETS.md forward grid,
timed like ../shared/tools/sdpa_anchors.py (triton do_bench, median). Used beside our kernels in the
same command on the same GPU. Run: python3 bench/torch_sdpa.py [--d 64,128] [--s 1024,4096,16384] [--bwd]"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def fwd_flops(b, h, sq, sk, d, causal):
    f = 4.0 * b * h * sq * sk * d
    return f / 2 if causal and sq == sk else f


def time_sdpa(backend, b, hq, hkv, sq, sk, d, causal, dtype=torch.bfloat16):
    """Median forward time in ms, or None where the backend refuses the shape."""
    q = torch.randn(b, hq, sq, d, device="cuda", dtype=dtype)
    k = torch.randn(b, hkv, sk, d, device="cuda", dtype=dtype)
    v = torch.randn(b, hkv, sk, d, device="cuda", dtype=dtype)
    try:
        with sdpa_kernel([BACKENDS[backend]]):
            fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=hq != hkv)
            fn()
            return do_bench(fn, warmup=25, rep=100, return_mode="median")
    except RuntimeError:
        return None
    finally:
        del q, k, v
        torch.cuda.empty_cache()


def time_sdpa_bwd(backend, b, hq, hkv, sq, sk, d, causal, dtype=torch.bfloat16):
    """Median backward time in ms as ../shared/tools/sdpa_anchors.py measures it: (forward + backward)
    minus forward. None where the backend refuses the shape."""
    q = torch.randn(b, hq, sq, d, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(b, hkv, sk, d, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(b, hkv, sk, d, device="cuda", dtype=dtype, requires_grad=True)
    try:
        with sdpa_kernel([BACKENDS[backend]]):
            f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=hq != hkv)
            g = torch.randn_like(f())

            def fb():
                f().backward(g)

            fb()
            return do_bench(fb, warmup=25, rep=100, return_mode="median") - do_bench(f, warmup=25, rep=100, return_mode="median")
    except RuntimeError:
        return None
    finally:
        del q, k, v
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", default="64,128")
    ap.add_argument("--s", default="1024,4096,16384")
    ap.add_argument("--bwd", action="store_true", help="time the backward (2.5x forward FLOPs) instead")
    a = ap.parse_args()
    timer, mult = (time_sdpa_bwd, 2.5) if a.bwd else (time_sdpa, 1.0)
    print(f"# torch {torch.__version__} {torch.cuda.get_device_name()}")
    if a.bwd:
        for be in BACKENDS:
            ms = time_sdpa_bwd(be, 4, 32, 8, 4096, 4096, 128, True)
            print(f"torch bwd GQA 32/8 d=128 causal S=4096 b=4  {be} " + (f"{2.5 * fwd_flops(4, 32, 4096, 4096, 128, True) / ms / 1e9:6.1f}" if ms else "n/a"), flush=True)
    for d in map(int, a.d.split(",")):
        for causal in (False, True):
            for s in map(int, a.s.split(",")):
                b, h = 16384 // s, 2048 // d
                row = []
                for be in BACKENDS:
                    ms = timer(be, b, h, h, s, s, d, causal)
                    row.append(f"{be} {mult * fwd_flops(b, h, s, s, d, causal) / ms / 1e9:6.1f}" if ms else f"{be}   n/a")
                print(f"torch {'bwd' if a.bwd else 'fwd'} d={d:3d} causal={int(causal)} S={s:5d} b={b:2d} h={h:2d}  " + "  ".join(row), flush=True)


if __name__ == "__main__":
    main()
