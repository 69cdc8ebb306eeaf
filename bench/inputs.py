"""Random inputs of the benchmark rows that the forward and backward passes share (torch, on the GPU)."""
import torch

from common import dtype_code


def torch_dtype(name):
    return torch.bfloat16 if name == "bf16" else torch.float16


def sdpa_inputs(s, dt=None):
    """A fixed-length row's q [b, h, sq, d], k and v [b, hkv, sk, d], random normal in PyTorch SDPA's layout, of the
    row's dtype or `dt` (a torch dtype), on the GPU."""
    dt = torch_dtype(s["dtype"]) if dt is None else dt
    b, h, hkv, sq, sk, d = s["b"], s["h"], s["hkv"], s["sq"], s["sk"], s["d"]
    q = torch.randn(b, h, sq, d, device="cuda", dtype=dt)
    k = torch.randn(b, hkv, sk, d, device="cuda", dtype=dt)
    v = torch.randn(b, hkv, sk, d, device="cuda", dtype=dt)
    return q, k, v


def varlen_inputs(s, with_dout=False):
    """A varlen row's packed q [total, h, d], k and v [total, hkv, d] (and dO like q when with_dout), random normal,
    with cu_seqlens on the device and on the host. Returns a dict of those and the row's facts."""
    lens, h, hkv, d = s["lens"], s["h"], s["hkv"], s["d"]
    dt = torch_dtype(s["dtype"])
    dev = torch.device("cuda")
    total = sum(lens)
    cu_host = [0]
    for n in lens:
        cu_host.append(cu_host[-1] + n)
    x = dict(lens=lens, h=h, hkv=hkv, d=d, causal=bool(s["causal"]), dt=dt, code=dtype_code(s["dtype"]), total=total,
             max_len=max(lens), cu_host=cu_host, cu=torch.tensor(cu_host, dtype=torch.int32, device=dev),
             q=torch.randn(total, h, d, device=dev, dtype=dt), k=torch.randn(total, hkv, d, device=dev, dtype=dt),
             v=torch.randn(total, hkv, d, device=dev, dtype=dt))
    if with_dout:
        x["do"] = torch.randn(total, h, d, device=dev, dtype=dt)
    return x
