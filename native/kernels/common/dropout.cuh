// Dropout in the sm80 kernels (FEATURES.md section 1): which elements of an m16n8k16 accumulator fragment a call
// keeps, from FlashAttention-2's Philox stream (common/philox.cuh, whose element mapping philox_test checks).
//
// The accumulator layout makes the stream cheap: lane L of a warp holds, in each 16-row x 8-column tile, rows L / 4
// and L / 4 + 8 and columns 2 (L % 4) and 2 (L % 4) + 1, so every element it holds in a 16 x 32 block (4 such tiles)
// maps to lane L of that block (dropout_lane) and to a distinct byte of one Philox call. A thread therefore makes one
// call per 16 x 32 block it holds (per 16 x 16 when a warp holds only 16 columns of the block, as the backward's
// d64/d96 tiles do: half the bytes of the call are then used).
//
// Only the dropout kernels carry this (kDropout, a local variant of its own, feature::kDropout, "_dropout" in the
// name): calls without dropout run kernels that hold none of its code (woven into the local kernels behind a runtime
// branch, it made ptxas spill more in them: the sm80 causal backward ran 5-7% slower; bench/NOTES.md).
//
// The keep mask a caller asks for (FwdParams::dropout_mask) is written by its own small kernel after the forward
// (dropout_mask_kernel, one thread per element, from the element-wise mapping dropout_keep), not from inside the
// attention kernel: the stores and their addresses made the sm_80 d64 local kernel spill (92 bytes at 255
// registers, against none), which every causal call would pay. Both read the same stream; the GPU tests check the
// attention kernel's own mask through its output against the float64 reference under the written mask.
#pragma once
#include <cstdint>

#include "common/philox.cuh"
#include "params/fwd_params.h"

namespace fa {

// The call's Philox key and the lane's counter offset for (sequence b, query head h): seed and base offset from
// the device pointers when given (read when the kernel runs, so a replayed CUDA graph sees the caller's new
// offset), else from the host values; o = offset + (b * H + h) * 32 + lane.
struct DropoutLane {
    uint64_t seed;
    uint64_t offset;  // the lane's counter words 0-1
    uint32_t threshold;
};

__device__ __forceinline__ DropoutLane dropout_lane_state(const FwdParams& p, int b, int h, int lane) {
    const uint64_t seed = p.dropout_seed_ptr != nullptr ? __ldg(reinterpret_cast<const unsigned long long*>(p.dropout_seed_ptr))
                                                        : p.dropout_seed;
    const uint64_t base = p.dropout_offset + (p.dropout_offset_ptr != nullptr
                                                  ? __ldg(reinterpret_cast<const unsigned long long*>(p.dropout_offset_ptr))
                                                  : 0ull);
    // Opaque to the optimiser: otherwise it hoists the Philox key schedule (seed plus the round constants, loop
    // invariants) out of the kernel's main loop and keeps a dozen registers live through it, which spilled the
    // sm_80 backward's local kernels (d64: 8 -> 268 bytes of spill stores).
    uint64_t key = seed;
    asm volatile("" : "+l"(key));
    return DropoutLane{key, dropout_lane_offset(base, b, h, p.hq, lane), p.dropout_threshold};
}

// Word nt (0..3) of a Philox output, by selects (nt may be a runtime value: no local-memory indexing).
__device__ __forceinline__ uint32_t philox_word(const Philox4x32Out& r, int nt) {
    return nt >= 2 ? (nt == 3 ? r.w[3] : r.w[2]) : (nt == 1 ? r.w[1] : r.w[0]);
}

// Column tile nt = (c % 32) / 8 of a 16 x 32 block reads word nt of the lane's call, and element e of the n8 tile's
// accumulator (row +8 for e >= 2, column + (e & 1)) byte e of it: dropout_byte_index(r, c) = 4 nt + e.

// The keep flags of NS consecutive n8 tiles of one m16 tile of a thread's fragment, as bits (bit 4 j + e; e as in
// mma.sync's accumulator: rows +0 (e < 2) and +8, columns 2 (lane % 4) + (e & 1)). row16 is the tile's first row
// within the sequence (a multiple of 16), col0 the first column of tile j = 0 within the sequence (a multiple of 8;
// of 32 when NS >= 4, of 16 otherwise).
template <int NS>
__device__ __forceinline__ uint32_t dropout_keep_bits(const DropoutLane& d, int row16, int col0) {
    static_assert(NS % 2 == 0 && NS <= 8, "pairs of n8 tiles, up to 8 (32 bits)");
    constexpr int kPerCall = NS >= 4 ? 4 : NS;  // n8 tiles served by one Philox call
    uint32_t bits = 0;
#pragma unroll
    for (int g = 0; g < NS / kPerCall; ++g) {
        const int c_first = col0 + g * kPerCall * 8;
        const Philox4x32Out r = dropout_philox(d.seed, d.offset, static_cast<uint32_t>(row16 / 16),
                                               static_cast<uint32_t>(c_first / 32));
        const int nt0 = kPerCall == 4 ? 0 : (c_first % 32) / 8;
#pragma unroll
        for (int t = 0; t < kPerCall; ++t) {
            const uint32_t word = kPerCall == 4 ? r.w[t] : philox_word(r, nt0 + t);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                if (((word >> (8 * e)) & 0xFFu) <= d.threshold) bits |= 1u << (4 * (g * kPerCall + t) + e);
            }
        }
    }
    return bits;
}

// The keep masks of the 16-bit pairs of one n8 tile's accumulator elements, from that tile's Philox word (byte e =
// element e): pair 0 is elements (0, 1) (row +0), pair 1 elements (2, 3) (row +8); each half is 0xFFFF where the
// element is kept (its byte <= the threshold) and 0 where dropped, to AND with the packed pair of rounded P values
// (FlashAttention-2's trick: the bytes widened to 16 bits compare as positive f16 subnormals in one set.le.f16x2,
// whose PTX default keeps subnormals). thr2 = threshold in both halves. Three instructions per pair, against a
// byte extract, a compare and a select per element on the fp32 values.
__device__ __forceinline__ uint32_t dropout_pair_mask(uint32_t word, int pair, uint32_t thr2) {
    const uint32_t r16 = __byte_perm(word, 0u, pair == 0 ? 0x4140u : 0x4342u);  // bytes (2 pair, 2 pair + 1) -> u16 x2
    uint32_t m;
    asm("set.le.u32.f16x2 %0, %1, %2;" : "=r"(m) : "r"(r16), "r"(thr2));
    return m;
}

// The keep flags of a Philox word as bytes (byte e: 0xFF where element e is kept, 0 where dropped), from its two pair
// masks: what the sm90 forward's producer stores for its consumers (sm90/fwd_kernel.cuh kDropMask).
__device__ __forceinline__ uint32_t dropout_keep_bytes(uint32_t word, uint32_t thr2) {
    return __byte_perm(dropout_pair_mask(word, 0, thr2), dropout_pair_mask(word, 1, thr2), 0x6420u);
}

// dropout_pair_mask(word, pair, thr2) from the word's keep flags (dropout_keep_bytes): flag bytes 2 pair and
// 2 pair + 1, each widened to a 16-bit half, by one byte permute.
__device__ __forceinline__ uint32_t dropout_pair_mask_of_flags(uint32_t flags, int pair) {
    return __byte_perm(flags, 0u, pair == 0 ? 0x1100u : 0x3322u);
}

// FlashAttention-2's rng_state: the (seed, offset) the call used, written by one thread of the grid before any
// block returns early, so that a backward (or a test) reads exactly what the forward used.
__device__ __forceinline__ void write_dropout_rng_state(const FwdParams& p) {
    if (p.dropout_rng_state != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
        const uint64_t seed = p.dropout_seed_ptr != nullptr ? *p.dropout_seed_ptr : p.dropout_seed;
        const uint64_t base = p.dropout_offset + (p.dropout_offset_ptr != nullptr ? *p.dropout_offset_ptr : 0ull);
        p.dropout_rng_state[0] = seed;
        p.dropout_rng_state[1] = base;
    }
}

}  // namespace fa
