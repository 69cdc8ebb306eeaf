// Compile-time facts of the sm80 forward kernel: tile sizes per head dim, warps, shared-memory
// layout. No algorithm here (that is fwd_kernel.cuh). Pure constexpr, so host code can read it.
#pragma once

namespace fa {
namespace sm80 {

// Tile choice per head dim: rows of Q per CTA (BlockM), keys per K/V tile (BlockN), warps.
// Warps split only along M; each warp owns BlockM / Warps query rows and sees the whole K/V tile.
template <int D>
struct FwdTile;
// Measured on the H100 (bench/NOTES.md): at d64 128x64 (no spills) edged out 128x128 (spills) once
// the mask code grew, and capping registers for 3 CTAs/SM lost; 128x128 beat 128x64 at d32; 128x64
// beat 128x32, 64x64 and 8 warps at d128, and 64x64 at d96; at d192 and d256 8 warps of 16 rows
// (128x64) beat 4 warps (64x64, 64x32), whose 256-wide accumulators spill.
template <>
struct FwdTile<32> {
    static constexpr int kBlockM = 128, kBlockN = 128, kWarps = 4, kMinBlocks = 1;
};
template <>
struct FwdTile<64> {
    static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 4, kMinBlocks = 1;
};
template <>
struct FwdTile<96> {
    static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 4, kMinBlocks = 1;
};
template <>
struct FwdTile<128> {
    static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 4, kMinBlocks = 1;
};
template <>
struct FwdTile<192> {
    static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 8, kMinBlocks = 1;
};
template <>
struct FwdTile<256> {
    static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 8, kMinBlocks = 1;
};

// MinBlocks: CTAs per SM the register allocation must allow (__launch_bounds__); 1 leaves ptxas free
// to take up to 255 registers a thread.
template <typename T, int D, int BlockM, int BlockN, int Warps, int MinBlocks = 1>
struct FwdTraits {
    using Elem = T;
    static constexpr int kHeadDim = D;
    static constexpr int kBlockM = BlockM;
    static constexpr int kBlockN = BlockN;
    static constexpr int kWarps = Warps;
    static constexpr int kThreads = Warps * 32;
    static constexpr int kMinBlocks = MinBlocks;
    static constexpr int kRowsPerWarp = BlockM / Warps;
    static constexpr int kMTiles = kRowsPerWarp / 16;  // m16 tiles per warp
    static constexpr int kNTilesS = BlockN / 8;        // n8 tiles of S = Q K^T per m16 tile
    static constexpr int kNTilesO = D / 8;             // n8 tiles of O per m16 tile
    static constexpr int kKStepsQK = D / 16;           // k16 steps of Q K^T
    static constexpr int kKStepsPV = BlockN / 16;      // k16 steps of P V
    static constexpr int kChunksPerRow = D / 8;        // 16-byte chunks in one row of a tile
    static constexpr int kRowBytes = D * 2;
    static constexpr int kSmemQ = BlockM * kRowBytes;
    static constexpr int kSmemK = BlockN * kRowBytes;
    static constexpr int kSmemV = BlockN * kRowBytes;
    static constexpr int kSmemBytes = kSmemQ + kSmemK + kSmemV;

    static_assert(sizeof(T) == 2, "16-bit inputs only");
    static_assert(kRowsPerWarp % 16 == 0, "each warp owns whole m16 tiles");
    static_assert(BlockN % 16 == 0, "K/V tiles are whole k16 steps of P V");
    static_assert(D % 32 == 0, "the swizzle needs rows of whole 64-byte groups");
    static_assert((BlockM * kChunksPerRow) % kThreads == 0, "Q tile splits evenly over threads");
    static_assert((BlockN * kChunksPerRow) % kThreads == 0, "K/V tiles split evenly over threads");
};

}  // namespace sm80
}  // namespace fa
