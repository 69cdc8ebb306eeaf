#!/usr/bin/env python3
"""A model of the warp-specialized sm90 backward's hand-overs (FA_SM90_BWD_WS; sm90/bwd_ws.cuh, sm90/bwd_kernel.cuh;
no GPU): checks under random interleavings that no named-barrier generation gets more arrivals than its count, that
none is left with arrivals pending at exit, and that nothing deadlocks, for walks of 0..N blocks, ring depths S and dQ
buffer counts B.

Agents, as in the kernel: the two consumer warpgroups (128 threads each: their CTA barrier of 256 after dS^T and twice
in the epilogue; each block waits for its stage's mbarrier phase (at D 64 (kEarlyS) block it + 1's before block it's
release), releases its stage on free[it % S] when it + S < iters, waits dqfree[it % B], stages dQ and arrives on
dqfull[it % B]); producer warp 0 (32: waits free[it % S] for it >= S, issues block it's loads, which land in order at
random later); the dQ warp (32: arrives dqfree for the first B blocks, then per block waits dqfull, reduces, and hands
block it + 1 - B's buffer back for block it + 1). Named barriers count 288 (256 + 32), the CTA barrier 256.

The rules the kernel uses are the defaults of `run`; the tests pass other ones to show that the model catches them.

    python3 bench/ws_protocol.py [--max-iters 12 --seeds 200]
"""

import protocol_model
from protocol_model import Barriers, ProtocolError, Ring, check_exit, drive


def run(iters, S, B, early, seed, release_if=None, dq_refree_if=None):
    """One interleaving. release_if(it, iters, S): whether the consumers release block it's stage;
    dq_refree_if(it, iters, B): whether the dQ warp, after block it's reduction, hands a buffer back for block it + 1."""
    release_if = release_if or (lambda it, n, s: it + s < n)
    dq_refree_if = dq_refree_if or (lambda it, n, b: it + 1 < n and it + 1 >= b)
    bars = Barriers(lambda key: 256 if key[0] == "cta" else 288)
    arrive, sync = bars.arrive, bars.sync
    ring = Ring(S)
    issued, wait_full = ring.issued, ring.wait_full

    def consumer():
        if early and iters > 0:
            yield from wait_full(0)
        for it in range(iters):
            if not early:
                yield from wait_full(it)
            yield
            yield from sync(("cta",), 128)  # dS^T written
            if early and it + 1 < iters:
                yield from wait_full(it + 1)
            yield
            if release_if(it, iters, S):
                arrive(("free", it % S), 128)
            yield from sync(("dqfree", it % B), 128)
            yield
            arrive(("dqfull", it % B), 128)
        yield from sync(("cta",), 128)
        yield from sync(("cta",), 128)

    def producer():
        for it in range(iters):
            if it >= S:
                yield from sync(("free", it % S), 32)
            issued.append(it)
            yield

    def dq_warp():
        for b in range(min(B, iters)):
            arrive(("dqfree", b), 32)
        for it in range(iters):
            yield from sync(("dqfull", it % B), 32)
            yield
            if dq_refree_if(it, iters, B):
                arrive(("dqfree", (it + 1) % B), 32)

    drive([consumer(), consumer(), producer(), dq_warp()], ring, seed)
    check_exit(bars, ring)


def sweep(max_iters=12, seeds=200, **rules):
    """Failures over walks of 0..max_iters - 1 blocks, S in (2, 3), B in (1, 2), with and without the early wait."""
    failures = []
    for iters in range(max_iters):
        for S in (2, 3):
            for B in (1, 2):
                for early in (False, True) if S >= 3 else (False,):
                    for seed in range(seeds):
                        try:
                            run(iters, S, B, early, seed, **rules)
                        except ProtocolError as e:
                            failures.append((iters, S, B, early, seed, str(e)))
    return failures


if __name__ == "__main__":
    raise SystemExit(protocol_model.main(__doc__, sweep))
