// The backward's preprocess and convert kernels (KERNELS.md section 2), the same for every kernel path:
//  1. bwd_preprocess: per query row, dsum = rowsum(dO * O) and lse * log2(e) into the workspace, and the fp32
//     dQ accumulator rows zeroed; with learnable sinks and dsinks, each block's share of
//     dsinks[h] = -sum_{b,i} e^(sink_h - LSE_i) * dsum_i into sink_partial;
//  1b. bwd_sink_reduce (dsinks only): dsinks[h] = the sum of head h's partials, in a fixed order;
//  3. bwd_convert: dQ = scale * dQ_accum in the caller's dtype and layout.
// dQ, dK and dV need nothing for the sinks: the forward's LSE holds them, so P = e^(x - LSE) is already right.
// (2, the main kernel, is sm80/bwd_kernel.cuh or sm90/bwd_kernel.cuh.)
#pragma once
#include <cuda_runtime.h>
#include <math_constants.h>

#include "common/ptx.cuh"
#include "common/seq.cuh"
#include "params/bwd_params.h"

namespace fa {

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
    // dsinks: this warp's rows' -e^(sink - LSE) * dsum, summed by lane 0 in row order. Varlen rows outside every
    // sequence ([cu_seqlens_q[0], cu_seqlens_q[batch]), clamped as bwd_convert does) hold no forward output.
    const bool want_sink = p.dsinks != nullptr;
    float sink_acc = 0.f;
    float sigma = 0.f;
    int seq_begin = 0, seq_end = rows;
    if (want_sink) {
        sigma = f.sinks[h * f.sinks_stride];
        if (varlen) {
            seq_begin = min(max(f.cu_seqlens_q[0], 0), f.total_q);
            seq_end = min(max(f.cu_seqlens_q[f.b], seq_begin), f.total_q);
        }
    }
    const int o_cols = f.dv > 0 ? f.dv : f.d;  // O's and dO's head dim (v's)
    for (int r = rb * kPreRowsPerBlock + warp; r < r_end; r += 8) {
        float dot = 0.f;
        for (int c = lane; c * 8 < o_cols; c += 32) {
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
            // A row that saw no key has O = 0, so dot = 0 and it adds nothing (LSE = sink there).
            if (want_sink && r >= seq_begin && r < seq_end) sink_acc -= expf(sigma - l) * dot;
        }
        for (int copy = 0; copy < p.dq_copies; ++copy) {
            float4* acc = reinterpret_cast<float4*>(p.dq_accum + copy * p.dq_copy_stride + slot * p.kernel_d);
            for (int c = lane; c * 4 < p.kernel_d; c += 32) acc[c] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    if (want_sink) {
        // The block's partial: the 8 warps' sums added in warp order by thread 0 (a fixed order).
        __shared__ float warp_sums[8];
        if (lane == 0) warp_sums[warp] = sink_acc;
        __syncthreads();
        if (threadIdx.x == 0) {
            float total = 0.f;
#pragma unroll
            for (int w = 0; w < 8; ++w) total += warp_sums[w];
            p.sink_partial[blockIdx.x] = total;
        }
    }
}

// ---- 1b. the sinks' gradient --------------------------------------------------------------------

constexpr int kSinkReduceThreads = 256;

// One block per query head h: dsinks[h] = the sum of bwd_preprocess's partials of h (every batch entry and row
// block; partial index bh * row_blocks + rb with bh = b * hq + h, or h for a variable-length batch). Thread t
// adds partials t, t + 256, ... in order, then a tree in shared memory: the order is fixed, so the result is
// bitwise the same on every run. It overwrites dsinks (no zeroing before, nothing accumulated across calls), and
// writes 0 when there are no rows.
__global__ void __launch_bounds__(kSinkReduceThreads) bwd_sink_reduce(const __grid_constant__ BwdParams p) {
    const FwdParams& f = p.f;
    const bool varlen = f.cu_seqlens_q != nullptr;
    const int h = blockIdx.x;
    const int row_blocks = ceil_div(bwd_rows(f), kPreRowsPerBlock);
    const int batches = varlen ? 1 : f.b;
    const int64_t items = static_cast<int64_t>(batches) * row_blocks;
    float acc = 0.f;
    for (int64_t i = threadIdx.x; i < items; i += kSinkReduceThreads) {
        const int64_t bb = i / row_blocks, rb = i % row_blocks;
        const int64_t bh = varlen ? h : bb * f.hq + h;
        acc += p.sink_partial[bh * row_blocks + rb];
    }
    __shared__ float part[kSinkReduceThreads];
    part[threadIdx.x] = acc;
    __syncthreads();
#pragma unroll
    for (int s = kSinkReduceThreads / 2; s > 0; s /= 2) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) p.dsinks[h * p.dsinks_stride] = part[0];
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
    // The fragment layout (BwdParams::dq_frag_rows): a row of a full query block reads its 8 columns from the 4 threads'
    // fragments that hold them (2 floats each); other rows (every row without it) are row-major.
    int64_t frag_tile = -1;  // the block's first element, relative to a copy's start
    int frag_row = 0;
    if (p.dq_frag_rows > 0) {
        int in_seq = r, len = f.sq;
        if (varlen) {  // the last sequence starting at or before packed row r (clamped as the main kernel's seq_info)
            int lo = 0, hi = f.b - 1;
            while (lo < hi) {
                const int mid = (lo + hi + 1) / 2;
                if (min(max(f.cu_seqlens_q[mid], 0), f.total_q) <= r) lo = mid; else hi = mid - 1;
            }
            const SeqInfo s = seq_info(f, lo);
            in_seq = r - static_cast<int>(s.q_row0);
            len = s.sq;
        }
        const int m = in_seq / p.dq_frag_rows;
        if (in_seq < len && (m + 1) * p.dq_frag_rows <= len) {
            frag_row = in_seq % p.dq_frag_rows;
            frag_tile = (slot - frag_row) * p.kernel_d;
        }
    }
    auto load8 = [&](const float* acc, float4& lo4, float4& hi4) {
        if (frag_tile < 0) {
            const float4* src = reinterpret_cast<const float4*>(acc + slot * p.kernel_d + c * 8);
            lo4 = src[0];
            hi4 = src[1];
        } else {
            float2 v[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                v[k] = *reinterpret_cast<const float2*>(acc + frag_tile + dq_frag_offset(frag_row, c * 8 + 2 * k, p.kernel_d));
            }
            lo4 = make_float4(v[0].x, v[0].y, v[1].x, v[1].y);
            hi4 = make_float4(v[2].x, v[2].y, v[3].x, v[3].y);
        }
    };
    float4 a, bb;
    load8(p.dq_accum, a, bb);
    for (int copy = 1; copy < p.dq_copies; ++copy) {  // deterministic: the copies added in order
        float4 x, y;
        load8(p.dq_accum + copy * p.dq_copy_stride, x, y);
        a = make_float4(a.x + x.x, a.y + x.y, a.z + x.z, a.w + x.w);
        bb = make_float4(bb.x + y.x, bb.y + y.y, bb.z + y.z, bb.w + y.w);
    }
    const float s = f.scale;
    uint4 out;
    out.x = pack2<T>(a.x * s, a.y * s);
    out.y = pack2<T>(a.z * s, a.w * s);
    out.z = pack2<T>(bb.x * s, bb.y * s);
    out.w = pack2<T>(bb.z * s, bb.w * s);
    T* dq = reinterpret_cast<T*>(p.dq) + (varlen ? 0 : b * p.dq_batch_stride) + h * p.dq_head_stride;
    *reinterpret_cast<uint4*>(dq + r * p.dq_row_stride + c * 8) = out;
}

}  // namespace fa
