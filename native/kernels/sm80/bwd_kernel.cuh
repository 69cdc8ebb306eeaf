// FlashAttention-2 backward, portable path (mma.sync m16n8k16 + ldmatrix + cp.async), sm_80 and up.
//
// Three kernels (KERNELS.md section 2):
//  1. bwd_preprocess (common/bwd_prepost.cuh): per query row, dsum = rowsum(dO * O) and lse * log2(e) into the workspace, and
//     the fp32 dQ accumulator rows zeroed.
//  2. bwd_kernel: one CTA per (key block, batch, kv head). K and V of the block are loaded once; dK and
//     dV stay in registers while the CTA walks every query head of the GQA group and every query block
//     that sees the keys (so dK/dV are summed over the group without atomics). Per query block:
//        S = Q K^T, dP = dO V^T                  (registers)
//        P = exp2(S * scale_log2 - lse_log2)     (recomputed from the forward's LSE; no max/sum pass)
//        dS = P * (dP - dsum)  [* (1 - tanh^2) with softcap]
//        P, dS -> shared memory (needed transposed)
//        dV += P^T dO, dK += dS^T Q              (registers)
//        dQ_accum += dS K                        (fp32 atomics; deterministic mode: in key-block order)
//     Q and dO are double-buffered: the next block's loads overlap this block's five matmuls.
//  3. bwd_convert: dQ = scale * dQ_accum in the caller's dtype and layout.
// The softmax scale is applied once at the end (dK in the epilogue, dQ in bwd_convert).
#pragma once
#include <cuda_runtime.h>
#include <math_constants.h>

#include <type_traits>

#include "common/alibi.cuh"
#include "common/bwd_block.cuh"
#include "common/dropout.cuh"
#include "common/ptx.cuh"
#include "common/tile_io.cuh"
#include "params/bwd_params.h"
#include "sm80/bwd_traits.h"

namespace fa {
namespace sm80 {

// ---- 2. main kernel -----------------------------------------------------------------------------

// acc[MT][NT] = A B^T for a warp tile: A rows [a_row0, +MT*16) of a [m][k] tile, B rows
// [b_row0, +NT*8) of an [n][k] tile, K = KSteps * 16 (both row-major, swizzled with RB-byte rows).
template <typename T, int MT, int NT, int KSteps, int RB>
__device__ __forceinline__ void mma_tile_abt(float (&acc)[MT][NT][4], uint32_t sA, uint32_t a_off, int a_row0,
                                             uint32_t sB, uint32_t b_off, int b_row0) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.f;
        }
    }
#pragma unroll
    for (int kk = 0; kk < KSteps; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            ldmatrix_x4(a[mt][0], a[mt][1], a[mt][2], a[mt][3], frag_addr<RB>(sA, a_off, kk, a_row0 + mt * 16));
        }
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            uint32_t b0, b1, b2, b3;
            ldmatrix_x4(b0, b1, b2, b3, frag_addr<RB>(sB, b_off, kk, b_row0 + np * 16));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma_16816<T>(acc[mt][2 * np], a[mt], b0, b1);
                mma_16816<T>(acc[mt][2 * np + 1], a[mt], b2, b3);
            }
        }
    }
}

// kDropout (with kLocal only): the call's dropout, in a kernel of its own (as the forward's; sm80/fwd_kernel.cuh).
template <class Tr, bool kLocal, bool kSoftcap, bool kDeterministic, bool kDropout = false>
__global__ void __launch_bounds__(Tr::kThreads, 1) bwd_kernel(const __grid_constant__ BwdParams p) {
    static_assert(!kDropout || kLocal, "dropout runs in the local family");
    using T = typename Tr::Elem;
    constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, D = Tr::kHeadDim;
    constexpr int RB = Tr::kRowBytes, RBP = Tr::kRowBytesP;
    constexpr int MS = Tr::kMTilesS, NS = Tr::kNTilesS;
    constexpr int MKV = Tr::kMTilesKV, NKV = Tr::kNTilesKV;
    constexpr int MQ = Tr::kMTilesQ, NQ = Tr::kNTilesQ, QC = Tr::kDqChunk;
    // A V head dim other than q's (the pair (192, 128)): V, dO and dV have DV columns. The kernels of equal head dims
    // take the code they had before (if constexpr below), so they compile as they did.
    constexpr bool kVPair = Tr::kHeadDimV != Tr::kHeadDim;
    constexpr int DV = Tr::kHeadDimV, RBV = Tr::kRowBytesV, NKVV = Tr::kNTilesKVV;

    extern __shared__ __align__(128) unsigned char smem[];
    const FwdParams& f = p.f;

    const BwdBlock blk = bwd_block<kLocal, BM, BN>(p);
    const int hk = blk.hk, b = blk.b, key0 = blk.key0, keys_here = blk.keys_here;
    const SeqInfo& seq = blk.seq;
    const bool varlen = blk.varlen;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    if (keys_here <= 0) return;  // varlen: this sequence has fewer keys
    const int right_bound = blk.mask.right, left_bound = blk.mask.left;
    const int iters = blk.iters;

    const uint32_t s0 = smem_u32(smem);
    const uint32_t sK = s0 + Tr::kOffK, sV = s0 + Tr::kOffV, sP = s0 + Tr::kOffP, sdS = s0 + Tr::kOffDS;

    const T* kp = rows_at<const T>(f.k, f.k_batch_stride, f.k_head_stride, f.k_row_stride, varlen, b, hk, seq.k_row0 + key0);
    const T* vp = rows_at<const T>(f.v, f.v_batch_stride, f.v_head_stride, f.v_row_stride, varlen, b, hk, seq.k_row0 + key0);

    // The walk (BwdBlock): each q head of the group, its query blocks from the last down in the default mode (it
    // measured 0-7% faster than the other direction; bench/NOTES.md), and in the order that lets every key block
    // find its turn on dQ ready in the deterministic mode (BwdWalk).
    // Issues the cp.async loads of Q and dO for iteration `it` (head blk.head(it), block blk.block(it)) into
    // buffer it % 2.
    auto load_q_do = [&](int it) {
        const int h = blk.head(it);
        const int m = blk.block(it);
        const int rows = min(BM, seq.sq - m * BM);
        const int64_t row = seq.q_row0 + static_cast<int64_t>(m) * BM;
        const T* q = rows_at<const T>(f.q, f.q_batch_stride, f.q_head_stride, f.q_row_stride, varlen, b, h, row);
        const T* d_o = rows_at<const T>(p.dout, p.do_batch_stride, p.do_head_stride, p.do_row_stride, varlen, b, h, row);
        const int buf = it & 1;
        load_tile<Tr, BM>(s0 + Tr::kOffQ + buf * Tr::kSmemQ, q, f.q_row_stride, rows, f.d, tid);
        if constexpr (kVPair) {
            load_tile<typename Tr::VTile, BM>(s0 + Tr::kOffDO + buf * Tr::kSmemDO, d_o, p.do_row_stride, rows, f.dv, tid);
        } else {
            load_tile<Tr, BM>(s0 + Tr::kOffDO + buf * Tr::kSmemQ, d_o, p.do_row_stride, rows, f.d, tid);
        }
        // Row statistics (lse_log2, then dsum) of the block's rows; rows past the sequence are zero-filled
        // and never used (the step treats them as lse = +inf).
        if (tid < 2 * BM) {
            const int r = tid % BM;
            const float* src = (tid < BM ? p.lse_log2 : p.dsum) + bwd_row_slot(p, b, h, seq.q_row0, m * BM) + r;
            cp_async_4(s0 + Tr::kOffStats + buf * Tr::kSmemStats + tid * 4, src, r < rows);
        }
    };

    load_tile<Tr, BN>(sK, kp, f.k_row_stride, keys_here, f.d, tid);
    if constexpr (kVPair) {
        load_tile<typename Tr::VTile, BN>(sV, vp, f.v_row_stride, keys_here, f.dv, tid);
    } else {
        load_tile<Tr, BN>(sV, vp, f.v_row_stride, keys_here, f.d, tid);
    }
    if (iters > 0) load_q_do(0);
    cp_async_commit();

    float dk[MKV][NKV][4], dv[MKV][NKVV][4];
    if constexpr (kVPair) {
#pragma unroll
        for (int i = 0; i < MKV; ++i) {
#pragma unroll
            for (int j = 0; j < NKV; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) dk[i][j][e] = 0.f;
            }
#pragma unroll
            for (int j = 0; j < NKVV; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) dv[i][j][e] = 0.f;
            }
        }
    } else {
#pragma unroll
        for (int i = 0; i < MKV; ++i) {
#pragma unroll
            for (int j = 0; j < NKV; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) dk[i][j][e] = dv[i][j][e] = 0.f;
            }
        }
    }

    // Warp coordinates in each of the three layouts.
    const int ws_m = warp / Tr::kWarpsNS, ws_n = warp % Tr::kWarpsNS;      // S, dP
    const int wkv_n = warp / Tr::kWarpsDKV, wkv_d = warp % Tr::kWarpsDKV;  // dK, dV
    const int wq_m = warp / Tr::kWarpsDQ, wq_d = warp % Tr::kWarpsDQ;      // dQ
    const int s_row0 = ws_m * (BM / Tr::kWarpsMS), s_col0 = ws_n * (BN / Tr::kWarpsNS);
    const int kv_row0 = wkv_n * (BN / Tr::kWarpsNKV), kv_col0 = wkv_d * (D / Tr::kWarpsDKV);
    const int kv_col0_v = wkv_d * (DV / Tr::kWarpsDKV);  // dV's columns (kVPair; kv_col0 otherwise)
    const int q_row0 = wq_m * (BM / Tr::kWarpsMQ), q_col0 = wq_d * (D / Tr::kWarpsDQ);

    // Per-lane ldmatrix offsets (logical chunk 0 or 1 only, so frag_addr can add chunk pairs; KERNELS.md 1.4).
    const uint32_t a_off = swizzle<RB>(lane % 16, lane / 16);                         // A, row-major [m][k]
    const uint32_t b_off = swizzle<RB>((lane / 16) * 8 + lane % 8, (lane / 8) % 2);   // B from [n][k]
    const uint32_t bt_off = swizzle<RB>(((lane / 8) % 2) * 8 + lane % 8, lane / 16);  // B from [k][n] (.trans)
    // The same for the DV-wide V and dO tiles (kVPair; equal to the above otherwise).
    const uint32_t a_off_v = kVPair ? static_cast<uint32_t>(swizzle<RBV>(lane % 16, lane / 16)) : a_off;
    const uint32_t b_off_v = kVPair ? static_cast<uint32_t>(swizzle<RBV>((lane / 16) * 8 + lane % 8, (lane / 8) % 2)) : b_off;
    const uint32_t bt_off_v = kVPair ? static_cast<uint32_t>(swizzle<RBV>(((lane / 8) % 2) * 8 + lane % 8, lane / 16)) : bt_off;
    const uint32_t at_offp = swizzle<RBP>((lane / 16) * 8 + lane % 8, (lane / 8) % 2);  // A^T from P/dS [k][m]
    const uint32_t a_offp = swizzle<RBP>(lane % 16, lane / 16);                         // A from dS [m][k]

    const float scale_log2 = f.scale_log2;
    const float cap_premul = kSoftcap ? f.scale / f.softcap : 1.f;

    for (int it = 0; it < iters; ++it) {
        const int h = blk.head(it);
        const int m = blk.block(it);
        const int row0 = m * BM;
        const int rows_here = min(BM, seq.sq - row0);
        const uint32_t sQ = s0 + Tr::kOffQ + (it & 1) * Tr::kSmemQ;
        const uint32_t sdO = s0 + Tr::kOffDO + (it & 1) * Tr::kSmemDO;

        cp_async_wait<0>();
        __syncthreads();  // Q/dO(it) (and K/V) visible; every warp is done with iteration it-1
        if (it + 1 < iters) {
            load_q_do(it + 1);
            cp_async_commit();
        }

        // Workspace slot of the block's first row (dQ accumulator), and the block's row statistics in
        // shared memory (rows past the sequence: lse +inf, so P = 0).
        const int64_t slot0 = bwd_row_slot(p, b, h, seq.q_row0, row0);
        const float* stats = reinterpret_cast<const float*>(smem + Tr::kOffStats + (it & 1) * Tr::kSmemStats);

        // Dropout (kDropout kernels; common/dropout.cuh), FlashAttention-2's backward: the
        // forward's keep mask Z regenerated from the stream, as bits (4 j + e per m16 tile), drawn here, before S and
        // dP are live, so that only the bits stay live through them; dP takes Z / (1 - p) before dS, the P that
        // feeds dV takes Z after it, and dV the 1 / (1 - p) in the epilogue.
        uint32_t keep[MS];
        if constexpr (kDropout) {
            const DropoutLane drop = dropout_lane_state(f, b, h, lane);
#pragma unroll
            for (int mt = 0; mt < MS; ++mt) keep[mt] = dropout_keep_bits<NS>(drop, row0 + s_row0 + mt * 16, key0 + s_col0);
        }

        // dP = dO V^T and S = Q K^T, [BM x BN] each, warp tile (MS*16) x (NS*8).
        float dp[MS][NS][4], s[MS][NS][4];
        mma_tile_abt<T, MS, NS, DV / 16, RBV>(dp, sdO, a_off_v, s_row0, sV, b_off_v, s_col0);
        mma_tile_abt<T, MS, NS, D / 16, RB>(s, sQ, a_off, s_row0, sK, b_off, s_col0);

        // P = exp2(S * scale_log2 - lse_log2), 0 for masked keys (past the sequence, outside causal/window);
        // dS = P * (dP - dsum), times 1 - tanh^2 with softcap. P stays in s, dS goes to dp.
        // With ALiBi (kLocal variant only, common/alibi.cuh) the exponent is that of s + bias, as in the forward;
        // the softcap factor 1 - tanh^2 takes s without it (the bias does not depend on q or k).
        const bool tile_mask = tile_masked<kLocal>(blk.mask, row0, BM, key0, BN, seq.sk);
        const int col_base = key0 + s_col0 + (lane % 4) * 2;
        const int diff_base = col_base - (row0 + s_row0 + lane / 4);
        // The element loop. kAlibi (softcap kernels only, where the bias must follow tanh): a copy with the bias,
        // chosen by one uniform branch per iteration, outside the loop, everything it needs formed inside it. Without
        // softcap the bias is added to S before the loop (below), which then runs unchanged. Static local-memory
        // traffic (SASS LDL/STL, sm_80) against the kernels before ALiBi: no-softcap local kernels d64 2-4 -> 4-6,
        // d128 14-18 -> 8-16; softcap local kernels d64 2-4 -> 35-38, d128 14 -> 22 (unmeasured on a GPU).
        const auto p_and_ds = [&](auto alibi_tag) {
            constexpr bool kAlibi = decltype(alibi_tag)::value;
            const AlibiRow alibi = kAlibi ? alibi_row(f.alibi_slopes, f.alibi_batch_stride, f.alibi_head_stride,
                                                      f.alibi_causal, b, h, kSoftcap ? f.softcap : f.scale,
                                                      f.bottom_right ? seq.sk - seq.sq : 0)
                                          : AlibiRow{false, false, 0.f, 0};
            const float key0f = kAlibi ? static_cast<float>(col_base) : 0.f;
#pragma unroll
            for (int mt = 0; mt < MS; ++mt) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int lr = s_row0 + mt * 16 + lane / 4 + r * 8;
                    const float rel = kAlibi ? static_cast<float>(row0 + lr + alibi.off - col_base) : 0.f;
                    const bool ok = lr < rows_here;
                    const float lse_r = ok ? stats[lr] : CUDART_INF_F;
                    const float dsum_r = ok ? stats[BM + lr] : 0.f;
#pragma unroll
                    for (int j = 0; j < NS; ++j) {
#pragma unroll
                        for (int c = 0; c < 2; ++c) {
                            const int e = 2 * r + c;
                            float x = s[mt][j][e];
                            if (kSoftcap) x = tanhf(x * cap_premul);
                            float xb = x;
                            if constexpr (kAlibi) xb += alibi_bias_from(alibi, rel, key0f, j * 8 + c);
                            float pv = fast_exp2(xb * scale_log2 - lse_r);
                            if (tile_mask) {
                                const int dc = j * 8 + c;
                                const int diff = diff_base + dc - mt * 16 - r * 8;
                                bool hidden = col_base + dc >= seq.sk;
                                if (kLocal) hidden |= diff > right_bound || diff < left_bound;
                                if (hidden) pv = 0.f;
                            }
                            float ds = pv * (dp[mt][j][e] - dsum_r);
                            if (kSoftcap) ds *= 1.f - x * x;
                            s[mt][j][e] = pv;
                            dp[mt][j][e] = ds;
                        }
                    }
                }
            }
        };
        if constexpr (kLocal && !kSoftcap) {
            // Without softcap the bias goes into S first, in a short loop of its own, and the main loop runs unchanged
            // (one call site: a copy of the main loop with the bias made the compiler spill in the common code).
            if (f.alibi_slopes != nullptr) {
                const AlibiRow alibi = alibi_row(f.alibi_slopes, f.alibi_batch_stride, f.alibi_head_stride,
                                                 f.alibi_causal, b, h, f.scale, f.bottom_right ? seq.sk - seq.sq : 0);
                const float key0f = static_cast<float>(col_base);
#pragma unroll
                for (int mt = 0; mt < MS; ++mt) {
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const float rel =
                            static_cast<float>(row0 + s_row0 + mt * 16 + lane / 4 + r * 8 + alibi.off - col_base);
#pragma unroll
                        for (int j = 0; j < NS; ++j) {
#pragma unroll
                            for (int c = 0; c < 2; ++c) s[mt][j][2 * r + c] += alibi_bias_from(alibi, rel, key0f, j * 8 + c);
                        }
                    }
                }
            }
        }
        // Dropout: dP = Z o (dO V^T) / (1 - p) before dS (keep bits from the top of the iteration), so a dropped
        // element gets dS = P (0 - dsum) = -P D.
        if constexpr (kDropout) {
            const float rp = f.dropout_rp;
#pragma unroll
            for (int mt = 0; mt < MS; ++mt) {
#pragma unroll
                for (int j = 0; j < NS; ++j) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        dp[mt][j][e] = (keep[mt] >> (4 * j + e)) & 1u ? dp[mt][j][e] * rp : 0.f;
                    }
                }
            }
        }
        if constexpr (kLocal && kSoftcap) {
            // With softcap the bias goes after tanh, which the main loop applies: its own copy of the loop.
            if (f.alibi_slopes != nullptr) {
                p_and_ds(std::true_type{});
            } else {
                p_and_ds(std::false_type{});
            }
        } else {
            p_and_ds(std::false_type{});
        }
        // P and dS to shared memory (16-bit), [BM][BN] row-major.
#pragma unroll
        for (int mt = 0; mt < MS; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int lr = s_row0 + mt * 16 + lane / 4 + r * 8;
#pragma unroll
                for (int j = 0; j < NS; ++j) {
                    const int col = s_col0 + j * 8;
                    const uint32_t byte = swizzle<RBP>(lr, col / 8) + (lane % 4) * 4;
                    float p0 = s[mt][j][2 * r], p1 = s[mt][j][2 * r + 1];
                    if constexpr (kDropout) {
                        // Dropout: the P that feeds dV is Z o P (fused into the store: a loop of its own spilled).
                        p0 = (keep[mt] >> (4 * j + 2 * r)) & 1u ? p0 : 0.f;
                        p1 = (keep[mt] >> (4 * j + 2 * r + 1)) & 1u ? p1 : 0.f;
                    }
                    *reinterpret_cast<uint32_t*>(smem + Tr::kOffP + byte) = pack2<T>(p0, p1);
                    *reinterpret_cast<uint32_t*>(smem + Tr::kOffDS + byte) = pack2<T>(dp[mt][j][2 * r], dp[mt][j][2 * r + 1]);
                }
            }
        }
        __syncthreads();  // P and dS visible to all warps
        // Deterministic: the previous iteration's turn, its adds issued before this iteration's first barrier.
        if (kDeterministic && kBwdDetDeferRelease && it > 0) bwd_release_turn(p, blk, blk.head(it - 1), blk.block(it - 1));

        // dV += P^T dO and dK += dS^T Q: [BN x D], reduction over the BM query rows.
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk) {
            uint32_t ap[MKV][4], ad[MKV][4];
#pragma unroll
            for (int mt = 0; mt < MKV; ++mt) {
                const int pair = (kv_row0 + mt * 16) / 16;
                ldmatrix_x4_trans(ap[mt][0], ap[mt][1], ap[mt][2], ap[mt][3], frag_addr<RBP>(sP, at_offp, pair, kk * 16));
                ldmatrix_x4_trans(ad[mt][0], ad[mt][1], ad[mt][2], ad[mt][3], frag_addr<RBP>(sdS, at_offp, pair, kk * 16));
            }
            if constexpr (kVPair) {
                // dV over DV columns (dO's tile), then dK over D (Q's).
#pragma unroll
                for (int dpair = 0; dpair < NKVV / 2; ++dpair) {
                    uint32_t b0, b1, b2, b3;
                    ldmatrix_x4_trans(b0, b1, b2, b3, frag_addr<RBV>(sdO, bt_off_v, kv_col0_v / 16 + dpair, kk * 16));
#pragma unroll
                    for (int mt = 0; mt < MKV; ++mt) {
                        mma_16816<T>(dv[mt][2 * dpair], ap[mt], b0, b1);
                        mma_16816<T>(dv[mt][2 * dpair + 1], ap[mt], b2, b3);
                    }
                }
#pragma unroll
                for (int dpair = 0; dpair < NKV / 2; ++dpair) {
                    uint32_t b0, b1, b2, b3;
                    ldmatrix_x4_trans(b0, b1, b2, b3, frag_addr<RB>(sQ, bt_off, kv_col0 / 16 + dpair, kk * 16));
#pragma unroll
                    for (int mt = 0; mt < MKV; ++mt) {
                        mma_16816<T>(dk[mt][2 * dpair], ad[mt], b0, b1);
                        mma_16816<T>(dk[mt][2 * dpair + 1], ad[mt], b2, b3);
                    }
                }
            } else {
#pragma unroll
                for (int dpair = 0; dpair < NKV / 2; ++dpair) {
                    const int cpair = kv_col0 / 16 + dpair;
                    uint32_t b0, b1, b2, b3;
                    ldmatrix_x4_trans(b0, b1, b2, b3, frag_addr<RB>(sdO, bt_off, cpair, kk * 16));
#pragma unroll
                    for (int mt = 0; mt < MKV; ++mt) {
                        mma_16816<T>(dv[mt][2 * dpair], ap[mt], b0, b1);
                        mma_16816<T>(dv[mt][2 * dpair + 1], ap[mt], b2, b3);
                    }
                    ldmatrix_x4_trans(b0, b1, b2, b3, frag_addr<RB>(sQ, bt_off, cpair, kk * 16));
#pragma unroll
                    for (int mt = 0; mt < MKV; ++mt) {
                        mma_16816<T>(dk[mt][2 * dpair], ad[mt], b0, b1);
                        mma_16816<T>(dk[mt][2 * dpair + 1], ad[mt], b2, b3);
                    }
                }
            }
        }

        // dQ_accum += dS K: [BM x D], reduction over the BN keys, QC n8 tiles of columns at a time.
        float* acc_rows = bwd_dq_rows(p, blk, slot0);
        if (kDeterministic) bwd_wait_turn<kLocal, BM, BN>(p, blk, h, m);
#pragma unroll
        for (int c0 = 0; c0 < NQ; c0 += QC) {
            float dq[MQ][QC][4];
#pragma unroll
            for (int mt = 0; mt < MQ; ++mt) {
#pragma unroll
                for (int j = 0; j < QC; ++j) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) dq[mt][j][e] = 0.f;
                }
            }
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                uint32_t a[MQ][4];
#pragma unroll
                for (int mt = 0; mt < MQ; ++mt) {
                    ldmatrix_x4(a[mt][0], a[mt][1], a[mt][2], a[mt][3], frag_addr<RBP>(sdS, a_offp, kk, q_row0 + mt * 16));
                }
#pragma unroll
                for (int dpair = 0; dpair < QC / 2; ++dpair) {
                    uint32_t b0, b1, b2, b3;
                    ldmatrix_x4_trans(b0, b1, b2, b3, frag_addr<RB>(sK, bt_off, (q_col0 + c0 * 8) / 16 + dpair, kk * 16));
#pragma unroll
                    for (int mt = 0; mt < MQ; ++mt) {
                        mma_16816<T>(dq[mt][2 * dpair], a[mt], b0, b1);
                        mma_16816<T>(dq[mt][2 * dpair + 1], a[mt], b2, b3);
                    }
                }
            }
#pragma unroll
            for (int mt = 0; mt < MQ; ++mt) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int lr = q_row0 + mt * 16 + lane / 4 + r * 8;
                    if (lr < rows_here) {
                        float* dst = acc_rows + static_cast<int64_t>(lr) * D + q_col0 + c0 * 8 + (lane % 4) * 2;
#pragma unroll
                        for (int j = 0; j < QC; ++j) red_add_f32x2(dst + j * 8, dq[mt][j][2 * r], dq[mt][j][2 * r + 1]);
                    }
                }
            }
        }
        if (kDeterministic && !kBwdDetDeferRelease) {
            __syncthreads();
            bwd_release_turn(p, blk, h, m);
        }
    }

    // Epilogue: dK *= scale; dK and dV -> 16-bit, staged through the (now free) K and V tiles for
    // 16-byte stores of the rows this sequence has.
    cp_async_wait<0>();
    __syncthreads();
    if (kDeterministic && kBwdDetDeferRelease && iters > 0) bwd_release_turn(p, blk, blk.head(iters - 1), blk.block(iters - 1));
    const float scale = f.scale;
    // Dropout: dV = (Z o P)^T dO / (1 - p) (kDropout kernels; 1 otherwise).
    const float dv_scale = kDropout ? f.dropout_rp : 1.f;
    if constexpr (kVPair) {
        // dK (D columns) through the K tile, dV (DV columns) through the V tile.
#pragma unroll
        for (int mt = 0; mt < MKV; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int lr = kv_row0 + mt * 16 + lane / 4 + r * 8;
#pragma unroll
                for (int j = 0; j < NKV; ++j) {
                    const uint32_t byte = swizzle<RB>(lr, (kv_col0 + j * 8) / 8) + (lane % 4) * 4;
                    *reinterpret_cast<uint32_t*>(smem + Tr::kOffK + byte) = pack2<T>(dk[mt][j][2 * r] * scale, dk[mt][j][2 * r + 1] * scale);
                }
#pragma unroll
                for (int j = 0; j < NKVV; ++j) {
                    const uint32_t byte = swizzle<RBV>(lr, (kv_col0_v + j * 8) / 8) + (lane % 4) * 4;
                    *reinterpret_cast<uint32_t*>(smem + Tr::kOffV + byte) = pack2<T>(dv[mt][j][2 * r] * dv_scale, dv[mt][j][2 * r + 1] * dv_scale);
                }
            }
        }
        __syncthreads();
        T* dkp = rows_at<T>(p.dk, p.dk_batch_stride, p.dk_head_stride, p.dk_row_stride, varlen, b, hk, seq.k_row0 + key0);
        T* dvp = rows_at<T>(p.dv, p.dv_batch_stride, p.dv_head_stride, p.dv_row_stride, varlen, b, hk, seq.k_row0 + key0);
        for (int c = tid; c < BN * Tr::kChunksPerRow; c += Tr::kThreads) {
            const int r = c / Tr::kChunksPerRow;
            const int ch = c % Tr::kChunksPerRow;
            if (r < keys_here && ch * 8 < f.d) {
                *reinterpret_cast<uint4*>(dkp + static_cast<int64_t>(r) * p.dk_row_stride + ch * 8) =
                    *reinterpret_cast<const uint4*>(smem + Tr::kOffK + swizzle<RB>(r, ch));
            }
        }
        for (int c = tid; c < BN * Tr::kChunksPerRowV; c += Tr::kThreads) {
            const int r = c / Tr::kChunksPerRowV;
            const int ch = c % Tr::kChunksPerRowV;
            if (r < keys_here && ch * 8 < f.dv) {
                *reinterpret_cast<uint4*>(dvp + static_cast<int64_t>(r) * p.dv_row_stride + ch * 8) =
                    *reinterpret_cast<const uint4*>(smem + Tr::kOffV + swizzle<RBV>(r, ch));
            }
        }
    } else {
#pragma unroll
        for (int mt = 0; mt < MKV; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int lr = kv_row0 + mt * 16 + lane / 4 + r * 8;
#pragma unroll
                for (int j = 0; j < NKV; ++j) {
                    const uint32_t byte = swizzle<RB>(lr, (kv_col0 + j * 8) / 8) + (lane % 4) * 4;
                    *reinterpret_cast<uint32_t*>(smem + Tr::kOffK + byte) = pack2<T>(dk[mt][j][2 * r] * scale, dk[mt][j][2 * r + 1] * scale);
                    *reinterpret_cast<uint32_t*>(smem + Tr::kOffV + byte) = pack2<T>(dv[mt][j][2 * r] * dv_scale, dv[mt][j][2 * r + 1] * dv_scale);
                }
            }
        }
        __syncthreads();
        T* dkp = rows_at<T>(p.dk, p.dk_batch_stride, p.dk_head_stride, p.dk_row_stride, varlen, b, hk, seq.k_row0 + key0);
        T* dvp = rows_at<T>(p.dv, p.dv_batch_stride, p.dv_head_stride, p.dv_row_stride, varlen, b, hk, seq.k_row0 + key0);
        for (int c = tid; c < BN * Tr::kChunksPerRow; c += Tr::kThreads) {
            const int r = c / Tr::kChunksPerRow;
            const int ch = c % Tr::kChunksPerRow;
            if (r < keys_here && ch * 8 < f.d) {
                *reinterpret_cast<uint4*>(dkp + static_cast<int64_t>(r) * p.dk_row_stride + ch * 8) =
                    *reinterpret_cast<const uint4*>(smem + Tr::kOffK + swizzle<RB>(r, ch));
                *reinterpret_cast<uint4*>(dvp + static_cast<int64_t>(r) * p.dv_row_stride + ch * 8) =
                    *reinterpret_cast<const uint4*>(smem + Tr::kOffV + swizzle<RB>(r, ch));
            }
        }
    }
}

}  // namespace sm80
}  // namespace fa
