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

// A V head dim other than q's (FlashAttention-3's pairs): the tile of QK head dim D and V head dim DV. Each CTA
// computes kVCols of the DV columns of O (the same softmax in each of DV / kVCols CTAs: at (64, 512) an O of 512
// fp32 columns would not fit a thread's registers, and Q K^T at head dim 64 costs an eighth of P V, so doing it
// twice is cheaper than any other split).
template <int D, int DV>
struct FwdTileV;
template <>
struct FwdTileV<192, 128> {
    static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 8, kMinBlocks = 1, kVCols = 128;
};
template <>
struct FwdTileV<64, 512> {
    static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 8, kMinBlocks = 1, kVCols = 256;
};
// The pairs there are kernels for (the C ABI's list; validation refuses the others).
constexpr bool fwd_v_pair(int d, int dv) { return (d == 192 && dv == 128) || (d == 64 && dv == 512); }

// MinBlocks: CTAs per SM the register allocation must allow (__launch_bounds__); 1 leaves ptxas free
// to take up to 255 registers a thread. DV: the columns of V and O a CTA computes (D unless the call's V head
// dim differs, FwdTileV).
template <typename T, int D, int BlockM, int BlockN, int Warps, int MinBlocks = 1, int DV = D>
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
    static constexpr int kHeadDimV = DV;               // columns of V and O this CTA computes
    static constexpr int kNTilesO = DV / 8;            // n8 tiles of O per m16 tile
    static constexpr int kKStepsQK = D / 16;           // k16 steps of Q K^T
    static constexpr int kKStepsPV = BlockN / 16;      // k16 steps of P V
    static constexpr int kChunksPerRow = D / 8;        // 16-byte chunks in one row of a tile
    static constexpr int kRowBytes = D * 2;
    static constexpr int kSmemQ = BlockM * kRowBytes;
    static constexpr int kSmemK = BlockN * kRowBytes;
    static constexpr int kRowBytesV = DV * 2;
    static constexpr int kSmemV = BlockN * kRowBytesV;
    // O is staged for the stores from offset 0 (over the Q tile, and past it when DV > D).
    static constexpr int kSmemO = BlockM * kRowBytesV;
    static constexpr int kSmemBytes = kSmemQ + kSmemK + kSmemV > kSmemO ? kSmemQ + kSmemK + kSmemV : kSmemO;
    // V's tile for load_tile: the same threads, DV columns.
    struct VTile {
        using Elem = T;
        static constexpr int kThreads = Warps * 32;
        static constexpr int kChunksPerRow = DV / 8;
        static constexpr int kRowBytes = DV * 2;
    };

    static_assert(sizeof(T) == 2, "16-bit inputs only");
    static_assert(kRowsPerWarp % 16 == 0, "each warp owns whole m16 tiles");
    static_assert(BlockN % 16 == 0, "K/V tiles are whole k16 steps of P V");
    static_assert(D % 32 == 0, "the swizzle needs rows of whole 64-byte groups");
    static_assert((BlockM * kChunksPerRow) % kThreads == 0, "Q tile splits evenly over threads");
    static_assert((BlockN * kChunksPerRow) % kThreads == 0, "K/V tiles split evenly over threads");
    static_assert(DV % 32 == 0 && (BlockN * (DV / 8)) % kThreads == 0 && (BlockM * (DV / 8)) % kThreads == 0,
                  "V and O tiles of whole 64-byte groups that split evenly over threads");
};

}  // namespace sm80
}  // namespace fa
