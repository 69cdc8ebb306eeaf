// Tile loads and shared-memory layouts of the cp.async kernels (sm80 path everywhere, and the sm90
// backward's loads): the row-swizzled tiles that ldmatrix reads (swizzle, load_tile, frag_addr) and the
// 64-column panels with the 128-byte swizzle that wgmma reads (panel_off, load_panels). Writers and readers
// of a tile must use the same layout function.
#pragma once
#include <cstdint>

#include "common/ptx.cuh"

namespace fa {

// Swizzle of a tile with `RowBytes` bytes per row, in 16-byte chunks. The 8 rows one ldmatrix phase
// reads (same logical chunk, 8 consecutive rows) must fall on distinct banks:
// - rows of a multiple of 128 bytes: XOR the chunk's low 3 bits with row % 8 (8 chunks per group);
// - rows of 64 bytes mod 128 (d 32, 96): consecutive row pairs already sit on opposite bank halves,
//   so XOR the chunk's low 2 bits with (row / 2) % 4.
// Readers and writers both go through swizzle(); frag_addr relies on SwizzleMask.
template <int RowBytes>
struct Swizzle {
    static_assert(RowBytes % 64 == 0, "rows of whole 64-byte groups");
    static constexpr int kMask = RowBytes % 128 == 0 ? 7 : 3;
    static constexpr int kRowShift = RowBytes % 128 == 0 ? 0 : 1;
};

template <int RowBytes>
__host__ __device__ constexpr int swizzle(int row, int chunk) {
    constexpr int M = Swizzle<RowBytes>::kMask;
    return row * RowBytes + (((chunk & ~M) | ((chunk ^ (row >> Swizzle<RowBytes>::kRowShift)) & M)) << 4);
}

// Copies `Rows` rows of a [rows, D] tile from global memory (row stride in elements) into a
// swizzled shared tile with cp.async. Rows at or past `rows_valid`, and columns at or past `cols`
// (the caller's head dim, a multiple of 8, when it is below the kernel's D), are zero-filled and
// never read.
template <class Tr, int Rows>
__device__ __forceinline__ void load_tile(uint32_t smem, const typename Tr::Elem* gmem, int64_t row_stride,
                                          int rows_valid, int cols, int tid) {
    constexpr int CPR = Tr::kChunksPerRow;
    if constexpr (Tr::kThreads % CPR == 0) {
        // Each thread keeps one column chunk and steps down the rows by a constant.
        constexpr int kRowStep = Tr::kThreads / CPR;
        const int r0 = tid / CPR;
        const int ch = tid % CPR;
        const bool col_ok = ch * 8 < cols;
        const typename Tr::Elem* src = gmem + static_cast<int64_t>(r0) * row_stride + ch * 8;
        const int64_t src_step = static_cast<int64_t>(kRowStep) * row_stride;
#pragma unroll
        for (int i = 0; i < Rows / kRowStep; ++i) {
            const int r = r0 + i * kRowStep;
            const bool valid = col_ok && r < rows_valid;
            cp_async_16(smem + swizzle<Tr::kRowBytes>(r, ch), valid ? src : gmem, valid);
            src += src_step;
            // Hide the pointer's history from the compiler: otherwise it precomputes every
            // i * src_step once per kernel and keeps them all live, which spills registers.
            asm volatile("" : "+l"(src));
        }
    } else {
#pragma unroll
        for (int i = 0; i < Rows * CPR / Tr::kThreads; ++i) {
            const int c = tid + i * Tr::kThreads;
            const int r = c / CPR;
            const int ch = c % CPR;
            const bool valid = r < rows_valid && ch * 8 < cols;
            cp_async_16(smem + swizzle<Tr::kRowBytes>(r, ch),
                        valid ? gmem + static_cast<int64_t>(r) * row_stride + ch * 8 : gmem, valid);
        }
    }
}

// Address of the ldmatrix row a lane supplies, at k16 step `kk` (two 16-byte chunks per step) and
// `rows` rows further down. `lane_off` = swizzle(row, lane_chunk) of the lane's first row; since the
// rows added are multiples of 8 and the chunk pairs even, the swizzle becomes one XOR with a
// constant, so only a few distinct per-lane values stay live instead of one per (step, tile).
template <int RowBytes>
__device__ __forceinline__ uint32_t frag_addr(uint32_t base, uint32_t lane_off, int kk, int rows) {
    constexpr int M = Swizzle<RowBytes>::kMask;
    return base + (lane_off ^ (((kk * 2) & M) << 4)) + (((kk * 2) & ~M) << 4) + rows * RowBytes;
}

// Byte offset of 16-byte chunk `ch` (columns 8ch..8ch+7) of row r in a panel-major tile of `Rows` rows:
// panel ch / 8 holds columns [64p, 64p + 64) of every row, 128 bytes per row, chunks XOR-swizzled with
// row % 8 (the layout wgmma's 128-byte swizzle mode reads).
template <int Rows>
__device__ __forceinline__ uint32_t panel_off(int r, int ch) {
    return static_cast<uint32_t>((ch / 8) * Rows * 128 + r * 128 + (((ch % 8) ^ (r % 8)) << 4));
}

// cp.async of rows [0, Rows) x columns [0, D) of a row-major global tile into panel layout; rows past
// rows_valid and columns past cols are zero-filled.
template <typename T, int Rows, int D, int Threads>
__device__ __forceinline__ void load_panels(uint32_t dst, const T* src, int64_t row_stride, int rows_valid, int cols,
                                            int tid) {
    constexpr int CPR = D / 8;
    static_assert((Rows * CPR) % Threads == 0, "tile splits evenly over threads");
    if constexpr (Threads % CPR != 0) {
        // A row's chunks do not divide the threads (D = 192: 24 chunks): chunk c = tid + i * Threads, anywhere.
#pragma unroll
        for (int i = 0; i < Rows * CPR / Threads; ++i) {
            const int c = tid + i * Threads;
            const int r = c / CPR, ch = c % CPR;
            const bool valid = ch * 8 < cols && r < rows_valid;
            cp_async_16(dst + panel_off<Rows>(r, ch), valid ? src + static_cast<int64_t>(r) * row_stride + ch * 8 : src,
                        valid);
        }
    } else {
        constexpr int kRowStep = Threads / CPR;
        const int r0 = tid / CPR, ch = tid % CPR;
        const bool col_ok = ch * 8 < cols;
        const T* g = src + static_cast<int64_t>(r0) * row_stride + ch * 8;
        const int64_t step = static_cast<int64_t>(kRowStep) * row_stride;
#pragma unroll
        for (int i = 0; i < Rows / kRowStep; ++i) {
            const int r = r0 + i * kRowStep;
            const bool valid = col_ok && r < rows_valid;
            cp_async_16(dst + panel_off<Rows>(r, ch), valid ? g : src, valid);
            g += step;
            asm volatile("" : "+l"(g));  // as in load_tile: keeps ptxas from precomputing every row pointer
        }
    }
}

}  // namespace fa
