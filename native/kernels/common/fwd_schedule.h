// Block order of the forward, both paths: which (batch, head, row block) each block of the 1-D grid (sm80)
// or each tile of the persistent grid (sm90, which walks the same order with a stride of its grid size)
// computes. Pure integer code, shared by the launchers, the kernels and the host-side unit test
// (native/tests/schedule_test.cpp), so the order can be checked without a GPU.
#pragma once
#include <cstdint>

#include "common/host_device.h"
#include "params/fwd_params.h"

namespace fa {

// Fills the block-order fields of p and returns the 1-D grid size. Groups of (batch, head) pairs
// whose K/V together take about a quarter of L2 (l2_bytes; < 0 means one pair per group, 0 means
// unknown: assume 48 MB), so that every row block of a group finds its keys in L2 while the group
// runs its heaviest blocks first.
inline unsigned schedule(FwdParams& p, int block_m, int l2_bytes) {
    p.m_blocks = (p.sq + block_m - 1) / block_m;
    const int64_t elem = p.dtype == DType::Float8E4M3 ? 1 : 2;  // bytes of a K/V element
    const int64_t kv_bytes = p.sk * (static_cast<int64_t>(p.d) + (p.dv > 0 ? p.dv : p.d)) * elem;  // K and V of one head
    const int64_t budget = l2_bytes > 0 ? l2_bytes / 4 : (12ll << 20);
    const int64_t pairs = static_cast<int64_t>(p.b) * p.hq;
    int64_t g = l2_bytes < 0 ? 1 : (kv_bytes > 0 ? budget / kv_bytes : pairs);
    g = g < 1 ? 1 : (g > pairs ? pairs : g);
    p.heads_per_group = static_cast<int32_t>(g);
    return static_cast<unsigned>(pairs * p.m_blocks);
}

struct BlockCoord {
    int m_block, h, b;
};

// Coordinates of grid block `linear`: groups of heads_per_group (batch, head) pairs in order; inside
// a group the row blocks run from the last (heaviest under a causal mask) to the first, each for all
// pairs of the group before the next.
// (kPair 2: pair_coord's order, over the m_blocks / 2 row-block pairs of each head.)
template <int kPair = 1>
FA_HOST_DEVICE inline BlockCoord block_coord(const FwdParams& p, int linear) {
    const int group_size = p.heads_per_group * (p.m_blocks / kPair);
    const int group = linear / group_size;
    const int first_bh = group * p.heads_per_group;
    const int left = p.b * p.hq - first_bh;
    const int heads_here = p.heads_per_group < left ? p.heads_per_group : left;
    const int within = linear - group * group_size;
    const int bh = first_bh + within % heads_here;
    BlockCoord c;
    c.m_block = p.m_blocks / kPair - 1 - within / heads_here;
    c.b = bh / p.hq;
    c.h = bh % p.hq;
    return c;
}

// The order of a grid of 2-CTA clusters (the sm90 forward's K/V multicast, FA_SM90_FWD_CLUSTER; p.m_blocks even): tile
// 2 q + r is row block 2 m' + r of the (batch, head, row-block pair m') that block_coord's order gives pair q over
// m_blocks / 2 pairs, so the two CTAs of a cluster, which take tiles 2 q and 2 q + 1 together, compute adjacent row
// blocks of one head and need the same K/V blocks.
FA_HOST_DEVICE inline BlockCoord pair_coord(const FwdParams& p, int linear) {
    BlockCoord c = block_coord<2>(p, linear / 2);
    c.m_block = 2 * c.m_block + linear % 2;
    return c;
}

// The tiles one CTA of a persistent grid of `ctas` CTAs takes from the order above (the sm90 forward): round r is
// the tiles [r ctas, r ctas + n_r) (n_r = ctas but in the last round), and CTA c takes the round's c-th tile if
// c < n_r, starting with tile c. With `zigzag`, odd rounds are taken in reverse (tile r ctas + n_r - 1 - c), so that
// the CTAs that took the heaviest tiles of one round take the lightest of the next (under a causal mask the order
// runs from heavy row blocks to light ones). Either way the last round's CTAs are the same (c < n_r), so every CTA
// runs the same rounds in both forms. The next tile comes from the current one alone (its round is tile / ctas), so
// a loop keeps one counter, as a plain stride does:
//     for (int tile = blockIdx.x; tile < tiles; tile = persistent_next(tile, blockIdx.x, gridDim.x, tiles, zigzag))
// (returns `tiles` when the CTA has no further tile).
FA_HOST_DEVICE inline int persistent_next(int tile, int cta, int ctas, int tiles, bool zigzag) {
    if (!zigzag) return tile + ctas;  // the plain stride (the loop's condition ends it, as before)
    const int round = tile / ctas;
    const int left = tiles - round * ctas - ctas;  // tiles after this round (no overflow: round * ctas <= tile)
    if (left <= cta) return tiles;
    const int base = tiles - left;  // the next round's first tile
    return base + ((round & 1) == 0 ? (left < ctas ? left : ctas) - 1 - cta : cta);
}

// A kernel that computes O's columns in kChunks column chunks, one CTA per chunk (the sm90 forward of the pair
// (64, 512), whose O of 512 fp32 columns a consumer warpgroup's registers cannot hold): the block order above with
// each tile counted kChunks times, the chunk the fastest index, so the chunks of a row block are adjacent tiles that
// run at once and read its Q, K and V through L2 together, and every later use of the order (varlen, heaviest row
// blocks first, head groups) is unchanged. kChunks = 1 is block_coord itself, chunk 0.
struct ChunkCoord {
    BlockCoord c;
    int chunk;
};
template <int kChunks>
FA_HOST_DEVICE inline ChunkCoord chunk_coord(const FwdParams& p, int linear) {
    static_assert(kChunks >= 1, "at least one column chunk");
    ChunkCoord cc;
    cc.c = block_coord(p, linear / kChunks);
    cc.chunk = linear % kChunks;
    return cc;
}

}  // namespace fa
