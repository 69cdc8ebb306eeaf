#!/usr/bin/env python3
"""A schedule model of the deterministic backward's turns on dQ (no GPU): how much of det/default the turn order alone
costs, as opposed to what each iteration costs.

One CTA per (head, key block), one CTA an SM (`--sms`), dispatched in grid order as SMs free up (common/bwd_block.cuh:
key blocks fastest; under FirstUp from the last). A key block of BN = 2 BM keys walks its query blocks (causal: from
block 2n; unmasked: all), T per iteration; in deterministic mode its adds to block m wait until the key block before it
in m's turn order, in its dQ copy (n + copies under FirstUp, n - copies under LastFirst), has added there, plus L (the
pass and the poll). Prints the makespan of the deterministic schedule over the default one's. The model leaves out
what an iteration costs beyond T (the turn barrier, the fence): what it predicts is the floor of the turns' order.

    python3 bench/det_sim.py [--heads 16 --key-blocks 128 --sms 132]
"""
import argparse
import heapq


def makespan(heads, n_blocks, m_blocks, sms, det, causal, first_up, t=1.0, lag=0.7, copies=2):
    begin = (lambda n: 2 * n) if causal else (lambda n: 0)
    adds = {}
    free = [(0.0, s) for s in range(sms)]
    heapq.heapify(free)
    end = 0.0
    for h in range(heads):
        for nb in range(n_blocks):
            n = n_blocks - 1 - nb if first_up else nb
            now, sm = heapq.heappop(free)
            blocks = range(begin(n), m_blocks) if first_up else range(m_blocks - 1, begin(n) - 1, -1)
            for m in blocks:
                now += t
                if det:
                    k = n + copies if first_up else n - copies
                    if 0 <= k < n_blocks and begin(k) <= m:
                        now = max(now, adds[(h, m, k)] + lag)
                adds[(h, m, n)] = now
            heapq.heappush(free, (now, sm))
            end = max(end, now)
    return end


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--key-blocks", type=int, default=128, help="key blocks a head (S / 128)")
    ap.add_argument("--sms", type=int, default=132)
    a = ap.parse_args()
    n, m = a.key_blocks, 2 * a.key_blocks
    for causal in (False, True):
        base = makespan(a.heads, n, m, a.sms, False, causal, False)
        for walk in ("LastFirst", "FirstUp"):
            row = [makespan(a.heads, n, m, a.sms, True, causal, walk == "FirstUp", lag=lag) / base for lag in (0.3, 1.0, 2.0)]
            print(f"{'causal' if causal else 'full':6} {walk:9} det/default at L = 0.3, 1, 2 T: " + ", ".join(f"{r:.3f}" for r in row))


if __name__ == "__main__":
    main()
