#!/usr/bin/env python3
"""A schedule model of the backward's grid order (no GPU; FA_BWD_GRID_LPT in common/bwd_block.cuh): one CTA per
(key block, batch, kv head), one CTA an SM, dispatched in grid order as SMs free up. Key block n of a causal call walks
the query blocks from its diagonal on (S / BM - n BN / BM of them), plus a fixed cost c per CTA (its K/V load and
dK/dV epilogue, in blocks); an unmasked key block walks all of them. Prints each order's makespan over the work's lower
bound (total / SMs): head-major (the grid with FA_BWD_GRID_LPT=0: key blocks fastest within a head), the tail order of FA_BWD_GRID_LPT
(the default since the twenty-second session; head-major but for the last pairs, about two waves of CTAs, which go key block major: common/bwd_schedule.h), and key
block major throughout (longest first over the whole grid, but no head's CTAs together for L2).

    python3 bench/bwd_grid_order.py [--bn 128 --bm 64 --sms 132 --c 1.0]
"""
import argparse
import heapq


def makespan(jobs, sms):
    free = [0.0] * sms
    end = 0.0
    for d in jobs:
        t = heapq.heappop(free) + d
        end = max(end, t)
        heapq.heappush(free, t)
    return end


def lpt_tail(pairs, n_blocks, sms, waves=2):
    """common/bwd_schedule.h bwd_lpt_tail: the pairs of about `waves` waves of CTAs, at most every pair."""
    return min(pairs, (waves * sms + n_blocks - 1) // n_blocks)


def grid_coord(linear, n_blocks, pairs, tail):
    """common/bwd_schedule.h bwd_grid_coord: (key block, pair) of CTA `linear`."""
    tail0 = (pairs - tail) * n_blocks
    if linear < tail0:
        return linear % n_blocks, linear // n_blocks
    i = linear - tail0
    return i // tail, pairs - tail + i % tail


def orders(seq, heads, bn, bm, causal, c, group=1, sms=132):
    """The job lengths of three grid orders: head-major (n fastest), the tail order and key-block-major (n slowest).
    heads: batch x kv heads (the grid's pairs); group: q heads per kv head (a CTA walks each one's blocks)."""
    m_blocks, n_blocks = seq // bm, seq // bn
    work = [(m_blocks - n * bn // bm if causal else m_blocks) * group + c for n in range(n_blocks)]
    head = [work[n] for _ in range(heads) for n in range(n_blocks)]
    tail = lpt_tail(heads, n_blocks, sms)
    tailed = [work[grid_coord(i, n_blocks, heads, tail)[0]] for i in range(n_blocks * heads)]
    lpt = [work[n] for n in range(n_blocks) for _ in range(heads)]
    return head, tailed, lpt


def ratios(seq, heads, bn=128, bm=64, causal=True, c=1.0, sms=132, group=1):
    """Makespans over the lower bound: head-major, tail order, key block major."""
    runs = orders(seq, heads, bn, bm, causal, c, group, sms)
    bound = sum(runs[0]) / sms
    return tuple(makespan(r, sms) / bound for r in runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bn", type=int, default=128)
    ap.add_argument("--bm", type=int, default=64)
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--c", type=float, default=1.0, help="fixed cost of a CTA, in query blocks")
    args = ap.parse_args()
    print("row (B x Hq/Hkv, S)      head-major  tail (LPT knob)  key-block-major")
    for b, hq, hkv, s in ((16, 16, 16, 1024), (4, 16, 16, 4096), (1, 16, 16, 16384), (4, 32, 8, 4096)):
        for causal in (False, True):
            hm, tl, kb = ratios(s, b * hkv, args.bn, args.bm, causal, args.c, args.sms, hq // hkv)
            print(f"{b}x{hq}/{hkv} s{s} {'causal' if causal else 'full  '}   {hm:10.3f}  {tl:15.3f}  {kb:15.3f}")


if __name__ == "__main__":
    main()
