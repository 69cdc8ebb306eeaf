// FlashAttention-2 backward, portable path (mma.sync m16n8k16 + ldmatrix + cp.async), sm_80 and up.
//
// Three kernels (KERNELS.md section 2):
//  1. bwd_preprocess: per query row, dsum = rowsum(dO * O) and lse * log2(e) into the workspace, and
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

#include "bwd_params.h"
#include "common/ptx.cuh"
#include "sm80/bwd_traits.h"
#include "sm80/fwd_kernel.cuh"  // load_tile, frag_addr, seq_info, ceil_div, floor_div

namespace fa {
namespace sm80 {

constexpr float kLog2e = 1.4426950408889634074f;

// ---- 1. preprocess ----------------------------------------------------------------------------

// Query rows bwd_preprocess and bwd_convert walk per (batch, head): sq, or for a variable-length batch
// every packed row (total_q) under each head alone (the batch index is then 0).
__device__ __forceinline__ int bwd_rows(const FwdParams& f) { return f.cu_seqlens_q != nullptr ? f.total_q : f.sq; }
__device__ __forceinline__ int bwd_heads(const FwdParams& f) { return f.cu_seqlens_q != nullptr ? f.hq : f.b * f.hq; }

constexpr int kPreRowsPerBlock = 32;

// 1-D grid: ceil(rows / 32) blocks for each (batch, head) pair; 256 threads, one warp per row at a time.
template <typename T>
__global__ void __launch_bounds__(256) bwd_preprocess(const __grid_constant__ BwdParams p) {
    const FwdParams& f = p.f;
    const bool varlen = f.cu_seqlens_q != nullptr;
    const int rows = bwd_rows(f);
    const int row_blocks = ceil_div(rows, kPreRowsPerBlock);
    const int bh = blockIdx.x / row_blocks;
    const int rb = blockIdx.x % row_blocks;
    const int b = varlen ? 0 : bh / f.hq;
    const int h = bh % f.hq;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const T* o = reinterpret_cast<const T*>(f.o) + (varlen ? 0 : b * f.o_batch_stride) + h * f.o_head_stride;
    const T* dO = reinterpret_cast<const T*>(p.dout) + (varlen ? 0 : b * p.do_batch_stride) + h * p.do_head_stride;
    const float* lse = f.lse + (varlen ? 0 : b * f.lse_batch_stride) + h * f.lse_head_stride;
    const int r_end = min(rows, (rb + 1) * kPreRowsPerBlock);
    for (int r = rb * kPreRowsPerBlock + warp; r < r_end; r += 8) {
        float dot = 0.f;
        for (int c = lane; c * 8 < f.d; c += 32) {
            const uint4 ov = *reinterpret_cast<const uint4*>(o + r * f.o_row_stride + c * 8);
            const uint4 dv = *reinterpret_cast<const uint4*>(dO + r * p.do_row_stride + c * 8);
            const T* oe = reinterpret_cast<const T*>(&ov);
            const T* de = reinterpret_cast<const T*>(&dv);
#pragma unroll
            for (int e = 0; e < 8; ++e) dot += static_cast<float>(oe[e]) * static_cast<float>(de[e]);
        }
#pragma unroll
        for (int s = 16; s >= 1; s /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, s);
        // Varlen: r is the packed row, so the slot is h * total_q + r (sequence start 0, row r).
        const int64_t slot = bwd_row_slot(p, b, h, 0, r);
        if (lane == 0) {
            const float l = lse[r * f.lse_row_stride];
            p.dsum[slot] = dot;
            p.lse_log2[slot] = l == CUDART_INF_F ? CUDART_INF_F : l * kLog2e;
        }
        float4* acc = reinterpret_cast<float4*>(p.dq_accum + slot * p.kernel_d);
        for (int c = lane; c * 4 < p.kernel_d; c += 32) acc[c] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
}

// ---- 3. convert ---------------------------------------------------------------------------------

constexpr int kConvertThreads = 256;

// 1-D grid: ceil(rows * d/8 / 256) blocks for each (batch, head) pair, one thread per 8 columns of a row.
// Varlen rows outside every sequence ([cu_seqlens_q[0], cu_seqlens_q[batch]), clamped) stay untouched.
template <typename T>
__global__ void __launch_bounds__(kConvertThreads) bwd_convert(const __grid_constant__ BwdParams p) {
    const FwdParams& f = p.f;
    const bool varlen = f.cu_seqlens_q != nullptr;
    const int chunks = f.d / 8;
    const int64_t blocks_per_head = (static_cast<int64_t>(bwd_rows(f)) * chunks + kConvertThreads - 1) / kConvertThreads;
    const int bh = static_cast<int>(blockIdx.x / blocks_per_head);
    const int b = varlen ? 0 : bh / f.hq;
    const int h = bh % f.hq;
    int row_begin = 0, row_end = f.sq;
    if (varlen) {
        row_begin = min(max(f.cu_seqlens_q[0], 0), f.total_q);
        row_end = min(max(f.cu_seqlens_q[f.b], row_begin), f.total_q);
    }
    const int64_t item = (blockIdx.x % blocks_per_head) * kConvertThreads + threadIdx.x;
    const int r = static_cast<int>(item / chunks);
    const int c = item % chunks;
    if (r < row_begin || r >= row_end) return;
    const int64_t slot = bwd_row_slot(p, b, h, 0, r);
    const float4* src = reinterpret_cast<const float4*>(p.dq_accum + slot * p.kernel_d + c * 8);
    const float4 a = src[0], bb = src[1];
    const float s = f.scale;
    uint4 out;
    out.x = pack2<T>(a.x * s, a.y * s);
    out.y = pack2<T>(a.z * s, a.w * s);
    out.z = pack2<T>(bb.x * s, bb.y * s);
    out.w = pack2<T>(bb.z * s, bb.w * s);
    T* dq = reinterpret_cast<T*>(p.dq) + (varlen ? 0 : b * p.dq_batch_stride) + h * p.dq_head_stride;
    *reinterpret_cast<uint4*>(dq + r * p.dq_row_stride + c * 8) = out;
}

// ---- 2. main kernel -----------------------------------------------------------------------------

// Query blocks [begin, end) that see some key of key block n (for causal/window masks placed with
// offset `off`); monotone in n, which the deterministic ordering relies on.
struct MRange {
    int begin, end;
};
template <bool kLocal>
__device__ __forceinline__ MRange bwd_m_range(int n, int BM, int BN, int sq, int sk, int right_bound_or_max,
                                              int left_bound_or_min, bool has_right, bool has_left) {
    MRange r{0, ceil_div(sq, BM)};
    if (n * BN >= sk) return MRange{0, 0};
    if (kLocal) {
        if (has_right) r.begin = max(0, floor_div(n * BN - right_bound_or_max, BM));
        if (has_left) {
            const int last_key = min((n + 1) * BN, sk) - 1;
            const int last_row = last_key - left_bound_or_min;
            r.end = last_row < 0 ? 0 : min(r.end, last_row / BM + 1);
        }
    }
    if (r.end < r.begin) r.end = r.begin;
    return r;
}

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

template <class Tr, bool kLocal, bool kSoftcap, bool kDeterministic>
__global__ void __launch_bounds__(Tr::kThreads, 1) bwd_kernel(const __grid_constant__ BwdParams p) {
    using T = typename Tr::Elem;
    constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, D = Tr::kHeadDim;
    constexpr int RB = Tr::kRowBytes, RBP = Tr::kRowBytesP;
    constexpr int MS = Tr::kMTilesS, NS = Tr::kNTilesS;
    constexpr int MKV = Tr::kMTilesKV, NKV = Tr::kNTilesKV;
    constexpr int MQ = Tr::kMTilesQ, NQ = Tr::kNTilesQ, QC = Tr::kDqChunk;

    extern __shared__ __align__(128) unsigned char smem[];
    const FwdParams& f = p.f;

    // Block order: key blocks fastest, so that in deterministic mode every CTA a key block waits on
    // (a smaller n of the same batch and kv head) was launched before it.
    const int n = blockIdx.x % p.n_blocks;
    const int bhk = blockIdx.x / p.n_blocks;
    const int hk = bhk % f.hkv;
    const int b = bhk / f.hkv;
    const SeqInfo seq = seq_info(f, b);
    const bool varlen = f.cu_seqlens_q != nullptr;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int key0 = n * BN;
    const int keys_here = min(BN, seq.sk - key0);
    if (keys_here <= 0) return;  // varlen: this sequence has fewer keys

    const int off = f.bottom_right ? seq.sk - seq.sq : 0;
    const int win_right = f.causal ? (f.window_right >= 0 ? min(f.window_right, 0) : 0) : f.window_right;
    const int win_left = f.window_left;
    const bool has_right = kLocal && win_right >= 0, has_left = kLocal && win_left >= 0;
    constexpr int kUnbounded = 1 << 30;
    const int right_bound = has_right ? off + win_right : kUnbounded;
    const int left_bound = has_left ? off - win_left : -kUnbounded;
    const MRange mr = bwd_m_range<kLocal>(n, BM, BN, seq.sq, seq.sk, right_bound, left_bound, has_right, has_left);
    const int group = f.hq_per_hkv;
    const int m_count = mr.end - mr.begin;
    const int iters = m_count * group;

    const uint32_t s0 = smem_u32(smem);
    const uint32_t sK = s0 + Tr::kOffK, sV = s0 + Tr::kOffV, sP = s0 + Tr::kOffP, sdS = s0 + Tr::kOffDS;

    const T* kp = reinterpret_cast<const T*>(f.k) + (varlen ? 0 : b * f.k_batch_stride) + hk * f.k_head_stride +
                  (seq.k_row0 + key0) * f.k_row_stride;
    const T* vp = reinterpret_cast<const T*>(f.v) + (varlen ? 0 : b * f.v_batch_stride) + hk * f.v_head_stride +
                  (seq.k_row0 + key0) * f.v_row_stride;

    // Query block of iteration `it`: each query head of the group walks its m_count blocks from the last
    // down. Under a causal mask every key block then reaches a given query block at about the same time,
    // which keeps the deterministic mode's ordered adds from queueing behind each other (from the first
    // up, key block n waits for n - 1, which starts two blocks later: 2.4x the atomic mode's time at
    // d128 instead of 1.4x); the atomic mode measured 0-7% faster this way too (bench/NOTES.md).
    auto block_of = [&](int it) { return mr.end - 1 - it % m_count; };
    // Issues the cp.async loads of Q and dO for iteration `it` (head h = hk*group + it / m_count,
    // block block_of(it)) into buffer it % 2.
    auto load_q_do = [&](int it) {
        const int h = hk * group + it / m_count;
        const int m = block_of(it);
        const int rows = min(BM, seq.sq - m * BM);
        const int64_t row = seq.q_row0 + static_cast<int64_t>(m) * BM;
        const T* q = reinterpret_cast<const T*>(f.q) + (varlen ? 0 : b * f.q_batch_stride) + h * f.q_head_stride +
                     row * f.q_row_stride;
        const T* d_o = reinterpret_cast<const T*>(p.dout) + (varlen ? 0 : b * p.do_batch_stride) +
                       h * p.do_head_stride + row * p.do_row_stride;
        const int buf = it & 1;
        load_tile<Tr, BM>(s0 + Tr::kOffQ + buf * Tr::kSmemQ, q, f.q_row_stride, rows, f.d, tid);
        load_tile<Tr, BM>(s0 + Tr::kOffDO + buf * Tr::kSmemQ, d_o, p.do_row_stride, rows, f.d, tid);
        // Row statistics (lse_log2, then dsum) of the block's rows; rows past the sequence are zero-filled
        // and never used (the step treats them as lse = +inf).
        if (tid < 2 * BM) {
            const int r = tid % BM;
            const float* src = (tid < BM ? p.lse_log2 : p.dsum) + bwd_row_slot(p, b, h, seq.q_row0, m * BM) + r;
            cp_async_4(s0 + Tr::kOffStats + buf * Tr::kSmemStats + tid * 4, src, r < rows);
        }
    };

    load_tile<Tr, BN>(sK, kp, f.k_row_stride, keys_here, f.d, tid);
    load_tile<Tr, BN>(sV, vp, f.v_row_stride, keys_here, f.d, tid);
    if (iters > 0) load_q_do(0);
    cp_async_commit();

    float dk[MKV][NKV][4], dv[MKV][NKV][4];
#pragma unroll
    for (int i = 0; i < MKV; ++i) {
#pragma unroll
        for (int j = 0; j < NKV; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) dk[i][j][e] = dv[i][j][e] = 0.f;
        }
    }

    // Warp coordinates in each of the three layouts.
    const int ws_m = warp / Tr::kWarpsNS, ws_n = warp % Tr::kWarpsNS;      // S, dP
    const int wkv_n = warp / Tr::kWarpsDKV, wkv_d = warp % Tr::kWarpsDKV;  // dK, dV
    const int wq_m = warp / Tr::kWarpsDQ, wq_d = warp % Tr::kWarpsDQ;      // dQ
    const int s_row0 = ws_m * (BM / Tr::kWarpsMS), s_col0 = ws_n * (BN / Tr::kWarpsNS);
    const int kv_row0 = wkv_n * (BN / Tr::kWarpsNKV), kv_col0 = wkv_d * (D / Tr::kWarpsDKV);
    const int q_row0 = wq_m * (BM / Tr::kWarpsMQ), q_col0 = wq_d * (D / Tr::kWarpsDQ);

    // Per-lane ldmatrix offsets (logical chunk 0 or 1 only, so frag_addr can add chunk pairs; KERNELS.md 1.4).
    const uint32_t a_off = swizzle<RB>(lane % 16, lane / 16);                         // A, row-major [m][k]
    const uint32_t b_off = swizzle<RB>((lane / 16) * 8 + lane % 8, (lane / 8) % 2);   // B from [n][k]
    const uint32_t bt_off = swizzle<RB>(((lane / 8) % 2) * 8 + lane % 8, lane / 16);  // B from [k][n] (.trans)
    const uint32_t at_offp = swizzle<RBP>((lane / 16) * 8 + lane % 8, (lane / 8) % 2);  // A^T from P/dS [k][m]
    const uint32_t a_offp = swizzle<RBP>(lane % 16, lane / 16);                         // A from dS [m][k]

    const float scale_log2 = f.scale_log2;
    const float cap_premul = kSoftcap ? f.scale / f.softcap : 1.f;

    for (int it = 0; it < iters; ++it) {
        const int h = hk * group + it / m_count;
        const int m = block_of(it);
        const int row0 = m * BM;
        const int rows_here = min(BM, seq.sq - row0);
        const uint32_t sQ = s0 + Tr::kOffQ + (it & 1) * Tr::kSmemQ;
        const uint32_t sdO = s0 + Tr::kOffDO + (it & 1) * Tr::kSmemQ;

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

        // dP = dO V^T and S = Q K^T, [BM x BN] each, warp tile (MS*16) x (NS*8).
        float dp[MS][NS][4], s[MS][NS][4];
        mma_tile_abt<T, MS, NS, D / 16, RB>(dp, sdO, a_off, s_row0, sV, b_off, s_col0);
        mma_tile_abt<T, MS, NS, D / 16, RB>(s, sQ, a_off, s_row0, sK, b_off, s_col0);

        // P = exp2(S * scale_log2 - lse_log2), 0 for masked keys (past the sequence, outside causal/window);
        // dS = P * (dP - dsum), times 1 - tanh^2 with softcap. P stays in s, dS goes to dp.
        const bool tile_mask = key0 + BN > seq.sk ||
                               (kLocal && ((has_right && key0 + BN - 1 - row0 > right_bound) ||
                                           (has_left && key0 - (row0 + BM - 1) < left_bound)));
        const int col_base = key0 + s_col0 + (lane % 4) * 2;
        const int diff_base = col_base - (row0 + s_row0 + lane / 4);
#pragma unroll
        for (int mt = 0; mt < MS; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int lr = s_row0 + mt * 16 + lane / 4 + r * 8;
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
                        float pv = fast_exp2(x * scale_log2 - lse_r);
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
                    *reinterpret_cast<uint32_t*>(smem + Tr::kOffP + byte) = pack2<T>(s[mt][j][2 * r], s[mt][j][2 * r + 1]);
                    *reinterpret_cast<uint32_t*>(smem + Tr::kOffDS + byte) = pack2<T>(dp[mt][j][2 * r], dp[mt][j][2 * r + 1]);
                }
            }
        }
        __syncthreads();  // P and dS visible to all warps

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

        // dQ_accum += dS K: [BM x D], reduction over the BN keys, QC n8 tiles of columns at a time.
        float* acc_rows = p.dq_accum + slot0 * D;
        if (kDeterministic) {
            // Wait until every key block before this one (of those that see block m) has added its part.
            // rank = n - (first key block whose query range reaches m); binary search over the same
            // monotone ranges the blocks loop over.
            if (tid == 0) {
                int lo = 0, hi = n;
                while (lo < hi) {
                    const int mid = (lo + hi) / 2;
                    const MRange r = bwd_m_range<kLocal>(mid, BM, BN, seq.sq, seq.sk, right_bound, left_bound,
                                                         has_right, has_left);
                    if (r.end > m) hi = mid; else lo = mid + 1;
                }
                const int rank = n - lo;
                const int32_t* sem = p.sem + (static_cast<int64_t>(b) * f.hq + h) * p.m_blocks + m;
                while (ld_acquire_gpu(sem) != rank) {
                }
            }
            __syncthreads();
        }
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
        if (kDeterministic) {
            // The barrier orders every warp's adds before thread 0's release (cumulative, as in CUTLASS's
            // semaphore), so the next key block sees them all.
            __syncthreads();
            if (tid == 0) {
                int32_t* sem = p.sem + (static_cast<int64_t>(b) * f.hq + h) * p.m_blocks + m;
                __threadfence();
                st_release_gpu(sem, ld_acquire_gpu(sem) + 1);
            }
        }
    }

    // Epilogue: dK *= scale; dK and dV -> 16-bit, staged through the (now free) K and V tiles for
    // 16-byte stores of the rows this sequence has.
    cp_async_wait<0>();
    __syncthreads();
    const float scale = f.scale;
#pragma unroll
    for (int mt = 0; mt < MKV; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int lr = kv_row0 + mt * 16 + lane / 4 + r * 8;
#pragma unroll
            for (int j = 0; j < NKV; ++j) {
                const uint32_t byte = swizzle<RB>(lr, (kv_col0 + j * 8) / 8) + (lane % 4) * 4;
                *reinterpret_cast<uint32_t*>(smem + Tr::kOffK + byte) = pack2<T>(dk[mt][j][2 * r] * scale, dk[mt][j][2 * r + 1] * scale);
                *reinterpret_cast<uint32_t*>(smem + Tr::kOffV + byte) = pack2<T>(dv[mt][j][2 * r], dv[mt][j][2 * r + 1]);
            }
        }
    }
    __syncthreads();
    T* dkp = reinterpret_cast<T*>(p.dk) + (varlen ? 0 : b * p.dk_batch_stride) + hk * p.dk_head_stride +
             (seq.k_row0 + key0) * p.dk_row_stride;
    T* dvp = reinterpret_cast<T*>(p.dv) + (varlen ? 0 : b * p.dv_batch_stride) + hk * p.dv_head_stride +
             (seq.k_row0 + key0) * p.dv_row_stride;
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

}  // namespace sm80
}  // namespace fa
