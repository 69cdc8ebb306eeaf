// Compile-time facts of the sm80 backward kernel: tile sizes and warp layouts per head dim, shared-
// memory layout. Pure constexpr (host code reads it for the workspace and launch sizes).
#pragma once
#include "params/bwd_params.h"  // kBwdMinBlockM

namespace fa {
namespace sm80 {

// Tile per head dim: BlockM query rows x BlockN keys per step, 8 warps. Warp layouts:
//   S, dP  [BlockM x BlockN]: kWarpsMS along M x (8 / kWarpsMS) along N;
//   dK, dV [BlockN x D]:      kWarpsNKV along N x (8 / kWarpsNKV) along D;
//   dQ     [BlockM x D]:      kWarpsMQ along M x (8 / kWarpsMQ) along D, kDqChunk n8 tiles at a time.
// 64x128 at d32/d96/d128 (FA2's choice for d96/d128), 128x128 at d64, 64x64 above with dK/dV as 32x64
// warp tiles (FA2's d256 layout). The kernel is bound by shared-memory bandwidth (ncu at d128: L1 74%,
// SM 43%), so the tiles are picked for flops per shared byte within 255 registers. At d128, dQ as 16x64
// warp tiles (4 x 2 warps) measured 2-7% faster than 32x32 (2 x 4) despite more shared reads per MMA.
template <int D>
struct BwdTile {
    static constexpr int kBlockM = 64, kBlockN = 128, kWarpsMS = 2, kWarpsNKV = 4, kWarpsMQ = 4, kDqChunk = D / 16;
};
// 128x128 at d64 (FA2's tile): S and dP warp tiles of 64x32 read 22 flops per shared byte against
// 16 at 64x128; measured 5-9% faster on the H100 (bench/NOTES.md).
template <>
struct BwdTile<64> {
    static constexpr int kBlockM = 128, kBlockN = 128, kWarpsMS = 2, kWarpsNKV = 4, kWarpsMQ = 4, kDqChunk = 4;
};
template <>
struct BwdTile<192> {
    static constexpr int kBlockM = 64, kBlockN = 64, kWarpsMS = 2, kWarpsNKV = 2, kWarpsMQ = 2, kDqChunk = 6;
};
// At d256 the S/dP warp layout 4 x 2 (FA2's) measured the same as 2 x 4.
template <>
struct BwdTile<256> {
    static constexpr int kBlockM = 64, kBlockN = 64, kWarpsMS = 2, kWarpsNKV = 2, kWarpsMQ = 2, kDqChunk = 4;
};

// DV: the head dim of v, dO, O and dV (D unless the call's V head dim differs: the pair (192, 128), as
// FlashAttention-3's backward serves; sm80::fwd_v_pair's other pair is forward only).
template <typename T, int D, class Tile = BwdTile<D>, int DV = D>
struct BwdTraits {
    using Elem = T;
    static constexpr int kHeadDim = D;
    static constexpr int kHeadDimV = DV;
    static constexpr int kBlockM = Tile::kBlockM;
    static constexpr int kBlockN = Tile::kBlockN;
    static constexpr int kWarps = 8;
    static constexpr int kThreads = kWarps * 32;
    static constexpr int kChunksPerRow = D / 8;  // 16-byte chunks of a Q/K/V/dO row (load_tile)
    static constexpr int kRowBytes = D * 2;
    static constexpr int kRowBytesP = kBlockN * 2;  // rows of the P and dS tiles
    static constexpr int kChunksPerRowV = DV / 8;   // ... of a V/dO row
    static constexpr int kRowBytesV = DV * 2;

    // S and dP warp tiles.
    static constexpr int kWarpsMS = Tile::kWarpsMS, kWarpsNS = kWarps / kWarpsMS;
    static constexpr int kMTilesS = kBlockM / kWarpsMS / 16, kNTilesS = kBlockN / kWarpsNS / 8;
    // dK and dV warp tiles (rows are keys).
    static constexpr int kWarpsNKV = Tile::kWarpsNKV, kWarpsDKV = kWarps / kWarpsNKV;
    static constexpr int kMTilesKV = kBlockN / kWarpsNKV / 16, kNTilesKV = D / kWarpsDKV / 8;
    static constexpr int kNTilesKVV = DV / kWarpsDKV / 8;  // dV's n8 tiles
    // dQ warp tiles.
    static constexpr int kWarpsMQ = Tile::kWarpsMQ, kWarpsDQ = kWarps / kWarpsMQ;
    static constexpr int kMTilesQ = kBlockM / kWarpsMQ / 16, kNTilesQ = D / kWarpsDQ / 8;
    static constexpr int kDqChunk = Tile::kDqChunk;

    // Shared memory: Q and dO double-buffered, K, V, P and dS ([BlockM][BlockN] each), the row statistics.
    static constexpr int kSmemQ = kBlockM * kRowBytes;
    static constexpr int kSmemDO = kBlockM * kRowBytesV;
    static constexpr int kSmemK = kBlockN * kRowBytes;
    static constexpr int kSmemV = kBlockN * kRowBytesV;
    static constexpr int kSmemP = kBlockM * kRowBytesP;
    static constexpr int kOffQ = 0;                     // 2 buffers
    static constexpr int kOffDO = kOffQ + 2 * kSmemQ;   // 2 buffers
    static constexpr int kOffK = kOffDO + 2 * kSmemDO;
    static constexpr int kOffV = kOffK + kSmemK;
    static constexpr int kOffP = kOffV + kSmemV;
    static constexpr int kOffDS = kOffP + kSmemP;
    // Row statistics of the Q/dO buffers: lse_log2 then dsum, BlockM floats each, per buffer.
    static constexpr int kSmemStats = 2 * kBlockM * 4;
    static constexpr int kOffStats = kOffDS + kSmemP;  // 2 buffers
    static constexpr int kSmemBytes = kOffStats + 2 * kSmemStats;

    static_assert(sizeof(T) == 2, "16-bit inputs only");
    static_assert(kBlockM >= kBwdMinBlockM, "the deterministic counters are sized for BlockM >= kBwdMinBlockM");
    static_assert(kMTilesS >= 1 && kNTilesS % 2 == 0, "S warp tiles: whole m16 tiles, pairs of n8 tiles");
    static_assert(kMTilesKV >= 1 && kNTilesKV % 2 == 0, "dK/dV warp tiles: whole m16 tiles, pairs of n8 tiles");
    static_assert(kMTilesQ >= 1 && kNTilesQ % kDqChunk == 0 && kDqChunk % 2 == 0, "dQ chunks of n8-tile pairs");
    static_assert(D % 32 == 0 && DV % 32 == 0, "the swizzle needs rows of whole 64-byte groups");
    static_assert(kNTilesKVV % 2 == 0, "dV warp tiles: pairs of n8 tiles");
    // V's and dO's tiles for load_tile: the same threads, DV columns.
    struct VTile {
        using Elem = T;
        static constexpr int kThreads = kWarps * 32;
        static constexpr int kChunksPerRow = DV / 8;
        static constexpr int kRowBytes = DV * 2;
    };
    static_assert((kBlockN / kWarpsNS) % 16 == 0 || kNTilesS == 2, "S warp columns start on 16-key boundaries");
};

}  // namespace sm80
}  // namespace fa
