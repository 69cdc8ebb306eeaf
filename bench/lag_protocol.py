#!/usr/bin/env python3
"""A model of the sm90 backward's dQ lag (FA_SM90_BWD_DQ_LAG; sm90/bwd_kernel.cuh kLag; no GPU): checks under random
interleavings of the two consumer warpgroups and the loads' landing that

- no named-barrier generation gets more arrivals than its count (256: one warpgroup's arrive, the other's sync), and
  none is left with arrivals pending at exit;
- a warpgroup stores block it's dS^T into buffer it % 2 only when no dQ product of either warpgroup still reads that
  buffer, and issues block i's dQ only when both warpgroups have stored dS^T(i) there;
- thread 0 loads block j into stage j % S only when no product of either warpgroup still reads block j - S there, and a
  warpgroup reads a block's stage only after its load landed;
- nothing deadlocks,

for walks of 0..N blocks, S stages, with and without the early products (block it + 1's stage waited for and read
from the end of iteration it, kEarlyS / kEarlyST), and with varlen partial blocks (stage_ready's zeroing of the stage
and its CTA barrier). Left out: mbarrier parity aliasing beyond the strict check, per-warp arrivals, proxy fences and
wgmma group counts (the kernel's comments argue those).

Per iteration it a warpgroup: (not early) waits for block it's stage; reads it (S^T, dP^T); waits on the other's
barrier (it - 1) % 2; warpgroup 0's thread 0 loads block it + S - 1; stores dS^T(it); issues dV/dK(it) and dQ(it - 1);
(early) waits for block it + 1's stage and starts reading it; retires dV/dK(it) and dQ(it - 1); arrives on its own
barrier it % 2. Before the walk each arrives on its barrier 1 ("iteration -1"); after it each waits on the other's
(iters - 1) % 2 and issues and retires dQ(iters - 1).

    python3 bench/lag_protocol.py [--max-iters 12 --seeds 200]
"""
import random

import protocol_model
from protocol_model import Barriers, ProtocolError, Ring, check_exit, drive


def run(iters, S, early, seed, wait_parity=None, arrive_parity=None, load_first=False, partial=(), strict=True,
        mut=None):
    """One interleaving. wait_parity(it), arrive_parity(it): the parities of the barriers a warpgroup waits on in
    iteration it (the other's) and arrives on at its end (its own); the kernel's (it - 1) % 2 and it % 2 by default.
    load_first: thread 0 loads before the wait (not the kernel's order; the model must catch it). partial: the blocks
    that are a varlen sequence's partial last one, whose stage_ready zeroes the stage's rows past it and meets the other
    warpgroup at a CTA barrier (__syncthreads). strict: a waited-for stage must still hold its block, and a load comes
    only after both warpgroups finished the stage's previous block. mut="arrive_early": a warpgroup arrives before it
    retires its products (not the kernel's order; caught)."""
    wait_parity = wait_parity or (lambda it: (it - 1) % 2)
    arrive_parity = arrive_parity or (lambda it: it % 2)
    bars = Barriers(lambda key: 256)  # one warpgroup's arrivals and the other's sync; the CTA barrier's 2 x 128
    arrive, sync = bars.arrive, bars.sync
    ring = Ring(S)
    landed, issued = ring.landed, ring.issued  # completed phases of each stage's mbarrier; loads issued, not landed
    stage_readers = {}  # (wg, block) -> stage, from the first product's issue to dV/dK's retirement
    ds_written = {}   # buffer -> {wg: block}
    dq_readers = {}   # (wg, block) -> buffer, from dQ's issue to its retirement

    def wait_full(i):
        yield from ring.wait_full(i)
        if strict and landed[i % S] != i // S + 1:
            raise ProtocolError(f"block {i}'s stage {i % S} already refilled (landed {landed[i % S]}) when waited for")

    done = {0: -1, 1: -1}  # last block each warpgroup finished reading

    def stage_ready(w, i):
        yield from wait_full(i)
        if i in partial:
            for (w2, blk), st in stage_readers.items():
                if st == i % S:
                    raise ProtocolError(f"warpgroup {w} zeroes stage {i % S} (block {i}) while warpgroup {w2} reads block {blk}")
            yield from sync(("cta",), 128)

    def load(j):
        if strict and (done[0] < j - S or done[1] < j - S):
            raise ProtocolError(f"block {j}'s load into stage {j % S} before both warpgroups finished block {j - S}: {done}")
        for (w, blk), st in stage_readers.items():
            if st == j % S and blk != j:
                raise ProtocolError(f"block {j}'s load into stage {j % S} while warpgroup {w} reads block {blk} there")
        issued.append(j)

    def issue_dq(w, i):
        got = ds_written.get(i % 2, {})
        if got.get(0) != i or got.get(1) != i:
            raise ProtocolError(f"warpgroup {w} issues dQ({i}) with buffer {i % 2} holding {got}")
        dq_readers[(w, i)] = i % 2

    def consumer(w):
        other = 1 - w
        for _ in range(2):
            yield
        if early and iters > 0:
            yield from stage_ready(w, 0)
            stage_readers[(w, 0)] = 0
        arrive(("lag", w, 1), 128)
        for it in range(iters):
            if not early:
                yield from stage_ready(w, it)
                stage_readers[(w, it)] = it % S
            yield
            if load_first and w == 0 and it + S - 1 < iters:
                load(it + S - 1)
            yield from sync(("lag", other, wait_parity(it)), 128)
            if not load_first and w == 0 and it + S - 1 < iters:
                load(it + S - 1)
            for (w2, blk), b in dq_readers.items():
                if b == it % 2:
                    raise ProtocolError(f"warpgroup {w} stores dS^T({it}) while warpgroup {w2}'s dQ({blk}) reads it")
            ds_written.setdefault(it % 2, {})[w] = it
            yield
            if it > 0:
                issue_dq(w, it - 1)
            yield
            if early and it + 1 < iters:
                yield from stage_ready(w, it + 1)
                stage_readers[(w, it + 1)] = (it + 1) % S
            yield
            if mut == "arrive_early":
                arrive(("lag", w, arrive_parity(it)), 128)
                yield
            del stage_readers[(w, it)]
            done[w] = it
            dq_readers.pop((w, it - 1), None)
            yield
            if mut != "arrive_early":
                arrive(("lag", w, arrive_parity(it)), 128)
        yield from sync(("lag", other, (iters - 1) % 2), 128)
        if iters > 0:
            issue_dq(w, iters - 1)
            yield
            del dq_readers[(w, iters - 1)]

    # Before the walk thread 0 loads blocks 0 .. S - 2 (the kernel's prologue).
    for j in range(min(S - 1, iters)):
        issued.append(j)
    drive([consumer(0), consumer(1)], ring, seed)
    check_exit(bars, ring)


def sweep(max_iters=12, seeds=200, partial_rate=0.3, **rules):
    """Failures over walks of 0..max_iters - 1 blocks, S in (2, 3), with and without the early products, each block a
    partial one (stage_ready's zeroing and CTA barrier) with probability partial_rate."""
    failures = []
    for iters in range(max_iters):
        for S in (2, 3):
            for early in (False, True) if S >= 3 else (False,):
                for seed in range(seeds):
                    try:
                        pr = random.Random(seed * 7919 + iters)
                        part = tuple(i for i in range(iters) if pr.random() < partial_rate)
                        run(iters, S, early, seed, partial=part, **rules)
                    except ProtocolError as e:
                        failures.append((iters, S, early, seed, str(e)))
    return failures


if __name__ == "__main__":
    raise SystemExit(protocol_model.main(__doc__, sweep))
