// Host-side test of the forward's block order (native/kernels/common/fwd_schedule.h): for many
// shapes, every (batch, head, row block) is computed by exactly one grid block, groups hold the
// promised number of (batch, head) pairs, row blocks run heaviest first inside a group, and a group's
// K/V fits the L2 budget unless a single pair is already larger; the column-chunked order (chunk_coord)
// gives every (row block, chunk) one tile, a row block's chunks adjacent. Also the backward's grid order
// (native/kernels/common/bwd_schedule.h): every (key block, pair) once, the head-major prefix as the default order, the
// tail key block major. Needs no GPU; runs under ctest.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "common/bwd_schedule.h"
#include "common/fwd_schedule.h"

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const char* what, const fa::FwdParams& p, int l2) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        std::printf("FAIL %s: b=%d hq=%d sq=%d sk=%d d=%d l2=%d (m_blocks=%d heads_per_group=%d)\n", what, p.b, p.hq,
                    p.sq, p.sk, p.d, l2, p.m_blocks, p.heads_per_group);
    }
}

void run_case(int b, int hq, int sq, int sk, int d, int block_m, int l2) {
    fa::FwdParams p{};
    p.b = b;
    p.hq = hq;
    p.sq = sq;
    p.sk = sk;
    p.d = d;
    const unsigned blocks = fa::schedule(p, block_m, l2);
    const int m_blocks = (sq + block_m - 1) / block_m;
    check(p.m_blocks == m_blocks, "m_blocks", p, l2);
    check(blocks == static_cast<unsigned>(b) * hq * m_blocks, "grid size", p, l2);
    check(p.heads_per_group >= 1 && p.heads_per_group <= b * hq, "heads_per_group in [1, pairs]", p, l2);
    if (l2 < 0) check(p.heads_per_group == 1, "l2 < 0 gives one pair per group", p, l2);
    const long long kv = 4ll * sk * d;
    const long long budget = l2 > 0 ? l2 / 4 : (12ll << 20);
    if (l2 >= 0 && p.heads_per_group > 1) check(kv * p.heads_per_group <= budget, "group K/V within budget", p, l2);
    if (l2 >= 0 && p.heads_per_group < b * hq) check(kv * (p.heads_per_group + 1) > budget, "group as large as fits", p, l2);

    std::vector<int> seen(static_cast<size_t>(b) * hq * m_blocks, 0);
    int prev_group = -1, prev_m = 0;
    bool in_range = true, ordered = true;
    for (unsigned linear = 0; linear < blocks; ++linear) {
        const fa::BlockCoord c = fa::block_coord(p, static_cast<int>(linear));
        if (c.b < 0 || c.b >= b || c.h < 0 || c.h >= hq || c.m_block < 0 || c.m_block >= m_blocks) {
            in_range = false;
            continue;
        }
        ++seen[(static_cast<size_t>(c.b) * hq + c.h) * m_blocks + c.m_block];
        const int group = (c.b * hq + c.h) / p.heads_per_group;
        if (group < prev_group) ordered = false;                        // groups in order
        if (group == prev_group && c.m_block > prev_m) ordered = false;  // heaviest first inside a group
        prev_group = group;
        prev_m = c.m_block;
    }
    check(in_range, "coordinates in range", p, l2);
    bool once = true;
    for (const int n : seen) once = once && n == 1;
    check(once, "every (batch, head, row block) exactly once", p, l2);
    check(ordered, "groups in order, row blocks heaviest first", p, l2);

    // Column chunks (the sm90 forward of (64, 512): 2 tiles per row block): chunk_coord<2> walks the same order with
    // each row block twice in a row, chunk 0 then 1, so every (row block, chunk) comes exactly once; chunk_coord<1>
    // is block_coord.
    std::vector<int> seen2(2 * seen.size(), 0);
    bool same1 = true, adjacent = true, in_range2 = true;
    for (unsigned linear = 0; linear < 2 * blocks; ++linear) {
        const fa::ChunkCoord cc = fa::chunk_coord<2>(p, static_cast<int>(linear));
        const fa::BlockCoord c = fa::block_coord(p, static_cast<int>(linear / 2));
        adjacent = adjacent && cc.chunk == static_cast<int>(linear % 2) && cc.c.b == c.b && cc.c.h == c.h &&
                   cc.c.m_block == c.m_block;
        if (cc.c.b < 0 || cc.c.b >= b || cc.c.h < 0 || cc.c.h >= hq || cc.c.m_block < 0 || cc.c.m_block >= m_blocks) {
            in_range2 = false;
            continue;
        }
        ++seen2[((static_cast<size_t>(cc.c.b) * hq + cc.c.h) * m_blocks + cc.c.m_block) * 2 + cc.chunk];
        if (linear < blocks) {
            const fa::ChunkCoord one = fa::chunk_coord<1>(p, static_cast<int>(linear));
            const fa::BlockCoord ref = fa::block_coord(p, static_cast<int>(linear));
            same1 = same1 && one.chunk == 0 && one.c.b == ref.b && one.c.h == ref.h && one.c.m_block == ref.m_block;
        }
    }
    bool once2 = in_range2;
    for (const int n : seen2) once2 = once2 && n == 1;
    check(once2, "chunk_coord<2>: every (batch, head, row block, chunk) exactly once", p, l2);
    check(adjacent, "chunk_coord<2>: a row block's two chunks adjacent, in block_coord's order", p, l2);
    check(same1, "chunk_coord<1> is block_coord", p, l2);

    // The 2-CTA clusters' order (pair_coord, an even m_blocks): every (batch, head, row block) exactly once; tiles 2 q
    // and 2 q + 1 (a cluster's two CTAs) are row blocks 2 m' and 2 m' + 1 of one (batch, head).
    if (m_blocks % 2 == 0) {
        std::vector<int> seen3(seen.size(), 0);
        bool paired = true, in_range3 = true;
        for (unsigned linear = 0; linear < blocks; linear += 2) {
            const fa::BlockCoord c0 = fa::pair_coord(p, static_cast<int>(linear));
            const fa::BlockCoord c1 = fa::pair_coord(p, static_cast<int>(linear + 1));
            paired = paired && c0.b == c1.b && c0.h == c1.h && c0.m_block % 2 == 0 && c1.m_block == c0.m_block + 1;
            for (const fa::BlockCoord& c : {c0, c1}) {
                if (c.b < 0 || c.b >= b || c.h < 0 || c.h >= hq || c.m_block < 0 || c.m_block >= m_blocks) {
                    in_range3 = false;
                    continue;
                }
                ++seen3[(static_cast<size_t>(c.b) * hq + c.h) * m_blocks + c.m_block];
            }
        }
        bool once3 = in_range3;
        for (const int n : seen3) once3 = once3 && n == 1;
        check(once3, "pair_coord: every (batch, head, row block) exactly once", p, l2);
        check(paired, "pair_coord: a cluster's two tiles are adjacent row blocks of one head", p, l2);
    }
}

}  // namespace

// The persistent grid's walk (persistent_next from tile c): over CTAs 0..ctas-1 every tile of [0, tiles) comes exactly
// once; CTA c's r-th tile lies in round r ([r ctas, r ctas + n_r)), at c (a plain stride) or n_r - 1 - c (zigzag,
// odd r); every CTA runs ceil((tiles - c) / ctas) rounds in both forms; near INT_MAX the zigzag's tiles stay in place
// and in range (sampled: CTAs 0, 1 and the last two only; that its arithmetic never overflows an int, which a wrapped
// form would pass here too, was checked once under -fsanitize=undefined, eighteenth session).
void run_walk(int tiles, int ctas, bool sampled = false) {
    fa::FwdParams p{};  // for check's message only
    p.b = tiles;
    p.hq = ctas;
    for (const bool zig : {false, true}) {
        if (sampled && !zig) continue;  // the plain stride's tile + ctas wraps past INT_MAX, as it always did
        std::vector<int> seen(sampled ? 0 : static_cast<size_t>(tiles), 0);
        bool placed = true, rounds = true;
        for (int c = 0; c < ctas; c = sampled && c == 1 ? ctas - 2 : c + 1) {
            long long r = 0;
            for (int tile = c; tile < tiles && r < (1ll << 31); tile = fa::persistent_next(tile, c, ctas, tiles, zig), ++r) {
                const long long base = r * ctas, n = tiles - base < ctas ? tiles - base : ctas;
                const long long want = base + (zig && (r & 1) ? n - 1 - c : c);
                placed = placed && tile == want && tile >= 0;
                if (!seen.empty() && tile >= 0) ++seen[static_cast<size_t>(tile)];
            }
            rounds = rounds && r == (c < tiles ? (static_cast<long long>(tiles) - c + ctas - 1) / ctas : 0);
        }
        bool once = true;
        for (const int n : seen) once = once && n == 1;
        check(placed, zig ? "zigzag walk: each round's tile in place" : "plain walk: each round's tile in place", p, 0);
        check(rounds, "walk: rounds per CTA", p, 0);
        if (!sampled) check(once, zig ? "zigzag walk: every tile exactly once" : "plain walk: every tile exactly once", p, 0);
    }
}

// The backward's grid order for n_blocks key blocks x pairs with a tail of `tail` pairs.
void run_bwd_order(int n_blocks, int pairs, int tail) {
    ++g_checks;
    std::vector<int> seen(static_cast<size_t>(n_blocks) * pairs, 0);
    bool ok = true;
    const int tail0 = (pairs - tail) * n_blocks;
    fa::BwdGridCoord prev{-1, -1};
    for (int linear = 0; linear < n_blocks * pairs; ++linear) {
        const fa::BwdGridCoord g = fa::bwd_grid_coord(linear, n_blocks, pairs, tail);
        if (g.n_block < 0 || g.n_block >= n_blocks || g.pair < 0 || g.pair >= pairs) {
            ok = false;
            break;
        }
        ++seen[static_cast<size_t>(g.pair) * n_blocks + g.n_block];
        if (linear < tail0) {
            ok &= g.n_block == linear % n_blocks && g.pair == linear / n_blocks;  // the default order
        } else {
            ok &= g.pair >= pairs - tail;                                      // a tail pair
            if (linear > tail0) ok &= g.n_block >= prev.n_block;                 // key blocks in order (longest first)
        }
        prev = g;
    }
    for (const int c : seen) ok &= c == 1;
    if (!ok) {
        ++g_failures;
        std::printf("FAIL bwd grid order: n_blocks=%d pairs=%d tail=%d\n", n_blocks, pairs, tail);
    }
}

void run_bwd_tail(int pairs, int n_blocks, int sms) {
    ++g_checks;
    const int t = fa::bwd_lpt_tail(pairs, n_blocks, sms);
    // at most every pair, at least one, and (short of every pair) at least two waves of CTAs but not a pair more
    const bool ok = t >= 1 && t <= pairs && (t == pairs || (t * n_blocks >= 2 * sms && (t - 1) * n_blocks < 2 * sms));
    if (!ok) {
        ++g_failures;
        std::printf("FAIL bwd_lpt_tail(%d, %d, %d) = %d\n", pairs, n_blocks, sms, t);
    }
}

int main() {
    for (const int n_blocks : {1, 2, 3, 8, 32, 128, 129}) {
        for (const int pairs : {1, 2, 5, 16, 64, 256}) {
            for (const int tail : {0, 1, 2, 7, pairs}) {
                if (tail <= pairs) run_bwd_order(n_blocks, pairs, tail);
            }
            for (const int sms : {1, 108, 132}) run_bwd_tail(pairs, n_blocks, sms);
        }
    }
    for (const int ctas : {1, 2, 7, 132}) {
        for (const int tiles : {1, 2, 6, 7, 8, 131, 132, 133, 263, 264, 265, 2048, 4099}) run_walk(tiles, ctas);
    }
    // Near INT_MAX: two or three rounds of CTAs 0, 1 and the last two.
    run_walk(0x7fffffff, 0x40000000, true);
    run_walk(0x7ffffffe, 0x3fffffff, true);
    run_walk(0x7fffffff, 0x2aaaaaab, true);
    // Hand-picked shapes: the TARGETS grid, tails, a single pair, more pairs than fit a group.
    const int l2s[] = {50 << 20, 0, -1, 1 << 20};
    for (const int l2 : l2s) {
        for (const int s : {1, 17, 128, 129, 1024, 4096, 16384}) {
            run_case(16384 / s > 0 ? 16384 / s : 1, 2048 / 64, s, s, 64, 128, l2);
            run_case(4, 32, s, s + 7, 128, 128, l2);
            run_case(1, 1, s, 3 * s, 256, 128, l2);
        }
        run_case(3, 5, 1000, 1000, 96, 128, l2);
        run_case(7, 3, 129, 5000, 256, 128, l2);
    }
    // Random shapes.
    std::mt19937 rng(12345);
    for (int i = 0; i < 300; ++i) {
        const int b = 1 + static_cast<int>(rng() % 9), hq = 1 + static_cast<int>(rng() % 40);
        const int sq = 1 + static_cast<int>(rng() % 3000), sk = 1 + static_cast<int>(rng() % 70000);
        const int d = 8 * (1 + static_cast<int>(rng() % 32));
        const int l2 = (i % 3 == 0) ? -1 : static_cast<int>((1 + rng() % 64) << 20);
        run_case(b, hq, sq, sk, d, (i % 2) ? 128 : 64, l2);
    }
    std::printf("%s: %d checks, %d failed\n", g_failures ? "FAILED" : "PASSED", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
