// FlashAttention-2 forward, portable path (mma.sync m16n8k16 + ldmatrix + cp.async), sm_80 and up.
//
// One CTA computes BlockM query rows of one (batch, head). Q is loaded once into shared memory;
// K/V tiles of BlockN keys stream through one K and one V buffer, walking the visible key range from
// the last tile down so that only the first tiles (and, with a left window, the last ones) need
// masks. Scores stay in registers: online softmax with exp2 and the scale folded in, P re-packed in
// registers as the A operand of P.V, O normalised once at the end (with the learnable sink in the
// denominator when the call has one, common/sink.cuh), the log-sum-exp written for the backward pass.
//
// Pipeline per key tile n (one K and one V buffer):
//   wait K(n) | issue V(n) | S = Q K(n)^T, mask | wait V(n) | issue K(n-1) | softmax, O += P V(n)
// so the V load overlaps Q K^T and the next K load overlaps softmax and P V.
#pragma once
#include <cuda_runtime.h>
#include <math_constants.h>

#include <type_traits>

#include "common/alibi.cuh"
#include "common/dropout.cuh"
#include "common/mask.cuh"
#include "common/paged_kv.cuh"
#include "common/ptx.cuh"
#include "common/seq.cuh"
#include "common/sink.cuh"
#include "common/tile_io.cuh"
#include "params/fwd_params.h"
#include "common/fwd_schedule.h"
#include "sm80/fwd_traits.h"

namespace fa {
namespace sm80 {

// kLocal: some key may be hidden by a causal mask or a window (else only the sequence tail masks), or the call has
// ALiBi slopes or dropout (applied here only: the plain kernel carries neither). kDropout (with kLocal only): the
// call's dropout, in a kernel of its own, so that the local kernels every causal call runs carry none of its code
// (woven in behind a runtime branch it made ptxas spill more in them; bench/NOTES.md, sixth session).
template <class Tr, bool kLocal, bool kSoftcap, bool kDropout = false, bool kPaged = false>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) fwd_kernel(const __grid_constant__ FwdParams p) {
    using T = typename Tr::Elem;
    constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN;
    constexpr int MT = Tr::kMTiles, NS = Tr::kNTilesS, NO = Tr::kNTilesO;
    constexpr int RB = Tr::kRowBytes;
    constexpr int RBV = Tr::kRowBytesV;  // V and O rows (Tr::kHeadDimV columns)
    constexpr int CPRV = Tr::kHeadDimV / 8;
    // A kernel of a V head dim other than q's (FwdTileV) computes columns [vcol0, vcol0 + kHeadDimV) of O: the grid has
    // p.dv / kHeadDimV CTAs per tile, adjacent (blockIdx.x = tile * chunks + chunk), so that the chunks of a tile run
    // together and share Q and K in L2; the chunk-0 CTAs write the LSE.
    constexpr bool kVPair = Tr::kHeadDimV != Tr::kHeadDim;

    extern __shared__ __align__(128) unsigned char smem[];

    static_assert(!kDropout || kLocal, "dropout runs in the local family");
    static_assert(!kPaged || (kLocal && !kDropout), "paged K/V runs in the local family, without dropout");
    // Dropout's rng_state, before any block returns early (common/dropout.cuh).
    if constexpr (kDropout) write_dropout_rng_state(p);

    // Block order: see FwdParams::heads_per_group and fwd_schedule.h.
    const int v_chunks = kVPair ? p.dv / Tr::kHeadDimV : 1;
    const int v_chunk = kVPair ? static_cast<int>(blockIdx.x % v_chunks) : 0;
    const BlockCoord coord = block_coord(p, kVPair ? blockIdx.x / v_chunks : blockIdx.x);
    const int m_block = coord.m_block, h = coord.h, b = coord.b;
    const SeqInfo seq = seq_info(p, b);
    const int row0 = m_block * BM;
    if (row0 >= seq.sq) return;  // varlen: this sequence is shorter than the longest one

    const int hk = h / p.hq_per_hkv;
    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;
    const bool varlen = p.cu_seqlens_q != nullptr;

    const T* q = reinterpret_cast<const T*>(p.q) + (varlen ? 0 : b * p.q_batch_stride) + h * p.q_head_stride +
                 (seq.q_row0 + row0) * p.q_row_stride;
    // Paged K/V (kPaged kernels; common/paged_kv.cuh): k and v point at the KV head's rows of the pool, each tile found
    // by its block.
    const int64_t k_row0 = kPaged ? 0 : seq.k_row0;
    const T* k = reinterpret_cast<const T*>(p.k) + (varlen ? 0 : b * p.k_batch_stride) + hk * p.k_head_stride +
                 k_row0 * p.k_row_stride;
    const int vcol0 = v_chunk * Tr::kHeadDimV;
    // The call's columns of V and O in this CTA's range (read at each use, as p.d was before V head dims existed, so
    // that the kernels of equal head dims compile as they did).
    const auto v_cols = [&] { return kVPair ? p.dv - vcol0 : p.d; };
    const T* v = reinterpret_cast<const T*>(p.v) + (varlen ? 0 : b * p.v_batch_stride) + hk * p.v_head_stride +
                 k_row0 * p.v_row_stride + vcol0;
    const auto k_tile = [&](int n) { return k + kv_tile_offset<kPaged>(p, b, n * BN, p.k_row_stride, p.k_batch_stride); };
    const auto v_tile = [&](int n) { return v + kv_tile_offset<kPaged>(p, b, n * BN, p.v_row_stride, p.v_batch_stride); };
    T* o = reinterpret_cast<T*>(p.o) + (varlen ? 0 : b * p.o_batch_stride) + h * p.o_head_stride +
           (seq.q_row0 + row0) * p.o_row_stride + vcol0;
    float* lse = p.lse == nullptr || (kVPair && v_chunk != 0) ? nullptr
                                  : p.lse + (varlen ? 0 : b * p.lse_batch_stride) + h * p.lse_head_stride +
                                        (seq.q_row0 + row0) * p.lse_row_stride;

    const int rows_here = min(BM, seq.sq - row0);
    // Visible keys satisfy left_bound <= col - row <= right_bound (common/mask.cuh).
    const MaskBounds mask = mask_bounds<kLocal>(p, seq);
    const int right_bound = mask.right, left_bound = mask.left;

    // Key tiles some row of this block can see: [n_begin, n_end).
    const BlockRange tiles = key_block_range<kLocal>(mask, row0, rows_here, seq.sk, BN);
    const int n_begin = tiles.begin, n_end = tiles.end;

    if (n_end <= n_begin) {
        // No row of this block sees any key: O = 0 and LSE = +inf, or the sink (the backward pass then recomputes
        // P = 0).
        for (int c = tid; c < BM * CPRV; c += Tr::kThreads) {
            const int r = c / CPRV;
            const int ch = c % CPRV;
            if (r < rows_here && ch * 8 < v_cols()) {
                *reinterpret_cast<uint4*>(o + static_cast<int64_t>(r) * p.o_row_stride + ch * 8) = make_uint4(0, 0, 0, 0);
            }
        }
        if (lse != nullptr) {
            const float empty = empty_row_lse(row_sink(p.sinks, p.sinks_stride, h));  // common/sink.cuh
            for (int r = tid; r < rows_here; r += Tr::kThreads) lse[static_cast<int64_t>(r) * p.lse_row_stride] = empty;
        }
        return;
    }

    const uint32_t sQ = smem_u32(smem);
    const uint32_t sK = sQ + Tr::kSmemQ;
    const uint32_t sV = sK + Tr::kSmemK;

    int n = n_end - 1;
    load_tile<Tr, BM>(sQ, q, p.q_row_stride, rows_here, p.d, tid);
    load_tile<Tr, BN>(sK, k_tile(n), p.k_row_stride, seq.sk - n * BN, p.d, tid);
    cp_async_commit();

    float acc[MT][NO][4];
    float row_max[MT][2];
    float row_sum[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int j = 0; j < NO; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.f;
        }
        row_max[mt][0] = row_max[mt][1] = -CUDART_INF_F;
        row_sum[mt][0] = row_sum[mt][1] = 0.f;
    }

    // Per-lane ldmatrix coordinates (KERNELS.md 1.4): matrix i = lane / 8 of each x4.
    const int warp_row = warp * Tr::kRowsPerWarp;
    const uint32_t q_off = swizzle<RB>(warp_row + lane % 16, lane / 16);            // A operand, row-major Q
    const uint32_t k_off = swizzle<RB>((lane / 16) * 8 + lane % 8, (lane / 8) % 2);  // B operand, K [kv][d]
    const uint32_t v_off = swizzle<RBV>(((lane / 8) % 2) * 8 + lane % 8, lane / 16);  // B operand, V^T (.trans)
    // Softcap: s' = tanh(s * scale / cap) and the softmax runs on cap * s' (p.scale_log2 = cap * log2 e).
    const float scale_log2 = p.scale_log2;
    const float cap_premul = kSoftcap ? p.scale / p.softcap : 1.f;

    // One key tile: kMask says whether some key of it may be hidden (decided per tile below).
    auto step = [&](const int n, auto mask_tag) {
        constexpr bool kMask = decltype(mask_tag)::value;
        cp_async_wait<0>();
        __syncthreads();  // K(n) (and Q) visible to all; every warp is done with V(n+1)
        load_tile<typename Tr::VTile, BN>(sV, v_tile(n), p.v_row_stride,
                                          seq.sk - n * BN, v_cols(), tid);
        cp_async_commit();

        // S = Q K^T
        float s[MT][NS][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int j = 0; j < NS; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[mt][j][e] = 0.f;
            }
        }
#pragma unroll
        for (int kk = 0; kk < Tr::kKStepsQK; ++kk) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                ldmatrix_x4(a[mt][0], a[mt][1], a[mt][2], a[mt][3], frag_addr<RB>(sQ, q_off, kk, mt * 16));
            }
#pragma unroll
            for (int np = 0; np < NS / 2; ++np) {
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4(b0, b1, b2, b3, frag_addr<RB>(sK, k_off, kk, np * 16));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_16816<T>(s[mt][2 * np], a[mt], b0, b1);
                    mma_16816<T>(s[mt][2 * np + 1], a[mt], b2, b3);
                }
            }
        }

        if (kSoftcap) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int j = 0; j < NS; ++j) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[mt][j][e] = tanhf(s[mt][j][e] * cap_premul);
                }
            }
        }

        // ALiBi bias, after softcap and before the masks (a uniform branch, in the kLocal variant only;
        // common/alibi.cuh): the slope in units of s, divided by the multiplier that scale_log2 folds in. Formed
        // here, per tile, so nothing of it stays live through the rest of the loop.
        if constexpr (kLocal) {
            if (p.alibi_slopes != nullptr) {
                const AlibiRow alibi = alibi_row(p.alibi_slopes, p.alibi_batch_stride, p.alibi_head_stride,
                                                 p.alibi_causal, b, h, kSoftcap ? p.softcap : p.scale,
                                                 p.bottom_right ? seq.sk - seq.sq : 0);
                const int col0 = n * BN + (lane % 4) * 2;
                const float key0f = static_cast<float>(col0);
                const int rel0 = row0 + warp_row + lane / 4 + alibi.off - col0;
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float rel = static_cast<float>(rel0 + mt * 16 + (e >= 2 ? 8 : 0));
#pragma unroll
                        for (int j = 0; j < NS; ++j) s[mt][j][e] += alibi_bias_from(alibi, rel, key0f, j * 8 + (e & 1));
                    }
                }
            }
        }

        // Masks: keys past seqlen_k, right of the causal diagonal or window, left of the window.
        // Key col is hidden for row iff col >= sk or col - row leaves [left_bound, right_bound].
        if constexpr (kMask) {
            const int col0 = n * BN + (lane % 4) * 2;
            const int diff0 = col0 - (row0 + warp_row + lane / 4);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int j = 0; j < NS; ++j) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int dc = j * 8 + (e & 1);
                        const int diff = diff0 + dc - mt * 16 - (e >= 2 ? 8 : 0);
                        bool hidden = col0 + dc >= seq.sk;
                        if (kLocal) hidden |= diff > right_bound || diff < left_bound;
                        if (hidden) s[mt][j][e] = -CUDART_INF_F;
                    }
                }
            }
        }

        // Online softmax. Each thread holds rows g and g+8 of each m16 tile; a row's 4 owners are a quad.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = row_max[mt][r];
#pragma unroll
                for (int j = 0; j < NS; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * r], s[mt][j][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                // A row that has seen no key yet keeps max -inf; use 0 so -inf - -inf never makes NaN.
                const float m_scaled = mx == -CUDART_INF_F ? 0.f : mx * scale_log2;
                const float alpha = fast_exp2(row_max[mt][r] * scale_log2 - m_scaled);
                row_max[mt][r] = mx;
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < NS; ++j) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const float pv = fast_exp2(s[mt][j][2 * r + c] * scale_log2 - m_scaled);
                        s[mt][j][2 * r + c] = pv;
                        sum += pv;
                    }
                }
                row_sum[mt][r] = row_sum[mt][r] * alpha + sum;
#pragma unroll
                for (int j = 0; j < NO; ++j) {
                    acc[mt][j][2 * r] *= alpha;
                    acc[mt][j][2 * r + 1] *= alpha;
                }
            }
        }

        cp_async_wait<0>();
        __syncthreads();  // V(n) visible to all; every warp is done reading K(n)
        if (n > n_begin) {
            load_tile<Tr, BN>(sK, k_tile(n - 1), p.k_row_stride, seq.sk - (n - 1) * BN, p.d, tid);
            cp_async_commit();
        }

        // O += P V, P re-packed from the S accumulators as A fragments (no shared memory). Dropout (kDropout kernels;
        // common/dropout.cuh) zeroes the dropped elements of the packed, rounded P: after the row sums, which keep the undropped P (FlashAttention-2's "dropout on the
        // rounded P"); the 1 / (1 - p) comes with the final normalisation. One Philox call per 16 x 32 block serves
        // two k-steps; the lane's state is formed here, per tile, so nothing of it stays live through the loop.
        const auto pv = [&](auto drop_tag) {
            constexpr bool kDrop = decltype(drop_tag)::value;
            static_assert(!kDrop || (Tr::kKStepsPV % 2 == 0), "whole 32-key Philox blocks");
            DropoutLane drop{};
            uint32_t thr2 = 0;
            if constexpr (kDrop) {
                drop = dropout_lane_state(p, b, h, lane);
                thr2 = drop.threshold | (drop.threshold << 16);
            }
            Philox4x32Out rnd[MT];
#pragma unroll
            for (int kv = 0; kv < Tr::kKStepsPV; ++kv) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    a[mt][0] = pack2<T>(s[mt][2 * kv][0], s[mt][2 * kv][1]);
                    a[mt][1] = pack2<T>(s[mt][2 * kv][2], s[mt][2 * kv][3]);
                    a[mt][2] = pack2<T>(s[mt][2 * kv + 1][0], s[mt][2 * kv + 1][1]);
                    a[mt][3] = pack2<T>(s[mt][2 * kv + 1][2], s[mt][2 * kv + 1][3]);
                    if constexpr (kDrop) {
                        if (kv % 2 == 0) {
                            rnd[mt] = dropout_philox(drop.seed, drop.offset,
                                                     static_cast<uint32_t>((row0 + warp_row + mt * 16) / 16),
                                                     static_cast<uint32_t>((n * BN + kv * 16) / 32));
                        }
                        const uint32_t w0 = rnd[mt].w[(2 * kv) % 4], w1 = rnd[mt].w[(2 * kv + 1) % 4];
                        a[mt][0] &= dropout_pair_mask(w0, 0, thr2);
                        a[mt][1] &= dropout_pair_mask(w0, 1, thr2);
                        a[mt][2] &= dropout_pair_mask(w1, 0, thr2);
                        a[mt][3] &= dropout_pair_mask(w1, 1, thr2);
                    }
                }
#pragma unroll
                for (int dp = 0; dp < NO / 2; ++dp) {
                    uint32_t b0, b1, b2, b3;
                    ldmatrix_x4_trans(b0, b1, b2, b3, frag_addr<RBV>(sV, v_off, dp, kv * 16));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816<T>(acc[mt][2 * dp], a[mt], b0, b1);
                        mma_16816<T>(acc[mt][2 * dp + 1], a[mt], b2, b3);
                    }
                }
            }
        };
        pv(std::integral_constant<bool, kDropout>{});
    };

    // Walk the key tiles from the last down: the first tiles may need the right/tail masks, then
    // a run without masks, then (left window only) masked tiles again. (One loop with a per-tile
    // branch measured faster than three separate loops: ptxas spilled more with the latter.)
    auto needs_mask = [&](int t) { return tile_masked<kLocal>(mask, row0, rows_here, t * BN, BN, seq.sk); };
    for (; n >= n_begin; --n) {
        if (needs_mask(n)) {
            step(n, std::true_type{});
        } else {
            step(n, std::false_type{});
        }
    }

    // Epilogue: finish the row sums across the quad, normalise, write the LSE, stage O through the
    // (now unused) Q tile for 16-byte coalesced stores. Each warp overwrites only its own Q rows.
    const float lse_scale = kSoftcap ? p.softcap : p.scale;
    const RowSink sink = row_sink(p.sinks, p.sinks_stride, h);  // read here, not kept live through the main loop
    // With V rows of another width a warp's staged O rows are not its own Q rows: every warp done with Q, K and V
    // first.
    if constexpr (kVPair) __syncthreads();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float sum = row_sum[mt][r];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            // O = acc * inv and the LSE, with the sink in the denominator when there is one (common/sink.cuh).
            const RowFinish fin = finish_row(sum, row_max[mt][r] * lse_scale, 0.f, sink);
            float inv = fin.inv;
            if constexpr (kDropout) inv *= p.dropout_rp;  // kept P scaled by 1 / (1 - p); the LSE is unchanged
            const int lrow = warp_row + mt * 16 + lane / 4 + r * 8;
            if (lse != nullptr && lane % 4 == 0 && lrow < rows_here) {
                lse[static_cast<int64_t>(lrow) * p.lse_row_stride] = fin.lse;
            }
#pragma unroll
            for (int j = 0; j < NO; ++j) {
                const uint32_t packed = pack2<T>(acc[mt][j][2 * r] * inv, acc[mt][j][2 * r + 1] * inv);
                *reinterpret_cast<uint32_t*>(smem + swizzle<RBV>(lrow, j) + (lane % 4) * 4) = packed;
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < BM * CPRV / Tr::kThreads; ++i) {
        const int c = tid + i * Tr::kThreads;
        const int r = c / CPRV;
        const int ch = c % CPRV;
        if (r < rows_here && ch * 8 < v_cols()) {
            *reinterpret_cast<uint4*>(o + static_cast<int64_t>(r) * p.o_row_stride + ch * 8) =
                *reinterpret_cast<const uint4*>(smem + swizzle<RBV>(r, ch));
        }
    }
}

}  // namespace sm80
}  // namespace fa
