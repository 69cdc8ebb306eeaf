// Philox4x32 and FlashAttention-2's dropout stream: which random byte each element (b, h, r, c) of a call gets,
// and the quantised keep test. Plain integer code, __host__ __device__ under nvcc and plain C++ otherwise, so the
// host-side unit test (native/tests/philox_test.cpp) checks the same functions a kernel will call. Nothing calls
// it yet: it is the groundwork of dropout (issue 14); /work/shared/FEATURES.md section 1 is the specification.
//
// The generator is Random123's Philox4x32-R (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as
// 1, 2, 3", SC 2011): R rounds, the key bumped between rounds (R - 1 bumps). FA2 uses R = 7 (its philox.cuh runs
// six round+bump steps and a final round), the standard is R = 10. philox_test checks both against Random123's
// published known-answer vectors.
//
// The element mapping (FA2 dropout.h Dropout ctor and apply_dropout, with the m16n8k16 accumulator layout and
// utils.h convert_layout_acc_dropout):
//   key     = (lo32(seed), hi32(seed))
//   counter = (lo32(o), hi32(o), r / 16, c / 32),  o = offset + (b * H + h) * 32 + lane
//   lane    = 4 * (r % 8) + (c % 8) / 2
//   byte    = 8 * (nt / 2) + 4 * (nt % 2) + 2 * ((r % 16) / 8) + (c % 2),  nt = (c % 32) / 8
// where H is the number of query heads, (r, c) the element's query row and key column within its sequence (for
// varlen, b is the sequence's index in cu_seqlens and r, c are local to it), and byte k of the 16 output bytes is
// word[k / 4] >> (8 * (k % 4)) (little-endian). The element is kept iff byte <= threshold, with threshold =
// floor(float(1 - p) * 255) (dropout_threshold).
#pragma once
#include <cstdint>

#include "common/host_device.h"

namespace fa {

struct Philox4x32Out {
    uint32_t w[4];
};

// One Philox4x32 round: the multipliers act on words 0 and 2 (Random123's philox4x32round).
FA_HOST_DEVICE inline void philox_round(uint32_t (&x)[4], uint32_t k0, uint32_t k1) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * x[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * x[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    x[0] = hi1 ^ x[1] ^ k0;
    x[1] = lo1;
    x[2] = hi0 ^ x[3] ^ k1;
    x[3] = lo0;
}

// Philox4x32-Rounds of counter (c0..c3) under key (k0, k1): the key is bumped by the Weyl constants between
// rounds, so Rounds rounds take Rounds - 1 bumps (FA2's "6 rounds with a bump, then a 7th" for Rounds = 7).
template <int Rounds>
FA_HOST_DEVICE inline Philox4x32Out philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                               uint32_t k1) {
    static_assert(Rounds >= 1 && Rounds <= 16, "Philox4x32 is defined for 1..16 rounds");
    uint32_t x[4] = {c0, c1, c2, c3};
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int i = 0; i < Rounds; ++i) {
        if (i > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        philox_round(x, k0, k1);
    }
    Philox4x32Out out;
    out.w[0] = x[0];
    out.w[1] = x[1];
    out.w[2] = x[2];
    out.w[3] = x[3];
    return out;
}

// FA2's dropout generator: 7 rounds, key = seed, counter = (lo32(o), hi32(o), lo32(sub), hi32(sub)) with
// sub = (row tile) | (column tile) << 32 (FA2 passes the uint2 (r / 16, c / 32) as its 64-bit "subsequence").
FA_HOST_DEVICE inline Philox4x32Out dropout_philox(uint64_t seed, uint64_t o, uint32_t row_tile, uint32_t col_tile) {
    return philox4x32<7>(static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32), row_tile, col_tile,
                         static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The lane (0..31) of a 16x32 tile whose Philox call serves element (r, c).
FA_HOST_DEVICE inline int dropout_lane(uint32_t r, uint32_t c) {
    return static_cast<int>(4 * (r % 8) + (c % 8) / 2);
}

// The byte (0..15) of that call's 16 output bytes that element (r, c) reads.
FA_HOST_DEVICE inline int dropout_byte_index(uint32_t r, uint32_t c) {
    const uint32_t nt = (c % 32) / 8;  // the 8-column MMA tile within the 32 columns
    return static_cast<int>(8 * (nt / 2) + 4 * (nt % 2) + 2 * ((r % 16) / 8) + (c % 2));
}

// The sm90 forward's dropout k-steps (sm90/fwd_kernel.cuh pack_p): the 16 keys of k-step kk of a key block whose first
// key sits at `start` within its 32-key call (0; or 16, where blocks of BN % 32 == 16 keys start mid-call on odd
// blocks) read words 2 h and 2 h + 1, h = dropout_kstep_half(start, kk), of the block's call dropout_kstep_call(start,
// kk) (0: the call holding the block's first key); a block of bn keys spans dropout_block_calls(bn) calls from any
// such start (philox_test checks them against the element mapping).
FA_HOST_DEVICE constexpr int dropout_kstep_call(int start, int kk) { return (start + 16 * kk) / 32; }
FA_HOST_DEVICE constexpr int dropout_kstep_half(int start, int kk) { return ((start + 16 * kk) % 32) / 16; }
FA_HOST_DEVICE constexpr int dropout_block_calls(int bn) { return (bn + (bn % 32 ? 16 : 0) + 31) / 32; }

// The sm90 backward's transposed read (sm90/bwd_kernel.cuh), whose accumulators hold S^T, keys as rows: lane `lane` of
// warp `wl` (of a warpgroup's four, keys 16 wl .. 16 wl + 15 of a 64-key group starting at a multiple of 32) holds
// key 16 wl + lane / 4 + 8 i and query 8 j + 2 (lane % 4) + c of a 64-query block (j < 8; i, c < 2). That element's
// byte is in the call of lane dropout_t_lane(lane, c) for block (query / 16, key / 32) = (j / 2 of the block's, wl / 2
// of the group's), word dropout_t_word(wl, i), at bit dropout_t_shift(lane, j) (philox_test checks all of them).
FA_HOST_DEVICE inline int dropout_t_lane(int lane, int c) { return 8 * (lane % 4) + lane / 8 + 4 * c; }
FA_HOST_DEVICE inline int dropout_t_word(int wl, int i) { return 2 * (wl % 2) + i; }
FA_HOST_DEVICE inline int dropout_t_shift(int lane, int j) { return 16 * (j % 2) + 8 * ((lane / 4) % 2); }

// The Philox offset of lane `lane` of (batch b, query head h) with H query heads, from the call's base offset.
FA_HOST_DEVICE inline uint64_t dropout_lane_offset(uint64_t offset, int b, int h, int H, int lane) {
    return offset + (static_cast<uint64_t>(b) * static_cast<uint64_t>(H) + static_cast<uint64_t>(h)) * 32u +
           static_cast<uint64_t>(lane);
}

// Byte k (0..15) of a Philox output, little-endian within each word.
FA_HOST_DEVICE inline uint32_t philox_byte(const Philox4x32Out& v, int k) {
    return (v.w[k / 4] >> (8 * (k % 4))) & 0xFFu;
}

// The random byte of element (r, c) of (batch b, query head h) under (seed, offset), H query heads.
FA_HOST_DEVICE inline uint32_t dropout_byte(uint64_t seed, uint64_t offset, int b, int h, int H, uint32_t r,
                                            uint32_t c) {
    const uint64_t o = dropout_lane_offset(offset, b, h, H, dropout_lane(r, c));
    return philox_byte(dropout_philox(seed, o, r / 16, c / 32), dropout_byte_index(r, c));
}

// The quantised keep threshold of drop probability p in [0, 1): FA2's set_params_fprop computes the keep
// probability in float (params.p_dropout = 1.f - p_dropout) and then uint8_t(floor(p_dropout * 255.0)); the
// truncation below is that floor for the non-negative product. Computing 1 - p in double instead differs for some
// p (p = 0.6: 101 here, 102 in double), so the float step is kept.
FA_HOST_DEVICE inline uint32_t dropout_threshold(float p) {
    const float keep = 1.f - p;
    return static_cast<uint32_t>(static_cast<double>(keep) * 255.0);
}

// The keep test: element kept iff its byte <= threshold. The true keep probability is (threshold + 1) / 256.
FA_HOST_DEVICE inline bool dropout_keep(uint64_t seed, uint64_t offset, int b, int h, int H, uint32_t r, uint32_t c,
                                        uint32_t threshold) {
    return dropout_byte(seed, offset, b, h, H, r, c) <= threshold;
}

}  // namespace fa
