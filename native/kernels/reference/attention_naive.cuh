// Naive attention on the GPU: one thread per query row, fp32 arithmetic, two passes over the keys.
// Executable documentation of what the fast kernels compute, and an oracle for shapes too large
// for the CPU reference. Same layout, strides, GQA and causal rules as fa_forward.
#pragma once
#include <cuda_runtime.h>
#include <math_constants.h>

#include "params/fwd_params.h"

namespace fa {
namespace reference {

// Whether query i sees key j (the rule of FwdParams, written out plainly).
__device__ inline bool visible(const FwdParams& p, int i, int j, int sq, int sk) {
    const int off = p.bottom_right ? sk - sq : 0;
    if (j >= sk) return false;
    const int right = p.window_right;  // causal folded in by the host (FwdParams)
    if (right >= 0 && j > i + off + right) return false;
    if (p.window_left >= 0 && j < i + off - p.window_left) return false;
    return true;
}

// One thread per (batch, head, query row) of the padded [b, hq, sq] grid.
template <typename T, int MaxD>
__global__ void attention_naive(const FwdParams p) {
    const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t rows = static_cast<int64_t>(p.b) * p.hq * p.sq;
    if (idx >= rows) return;
    const int i = static_cast<int>(idx % p.sq);
    const int h = static_cast<int>((idx / p.sq) % p.hq);
    const int b = static_cast<int>(idx / (static_cast<int64_t>(p.sq) * p.hq));
    const int hk = h / p.hq_per_hkv;
    int sq = p.sq, sk = p.sk;
    int64_t q0 = 0, k0 = 0, qb = b * p.q_batch_stride, kb = b * p.k_batch_stride, vb = b * p.v_batch_stride,
            ob = b * p.o_batch_stride, lb = b * p.lse_batch_stride;
    if (p.cu_seqlens_q != nullptr) {
        q0 = min(max(p.cu_seqlens_q[b], 0), p.total_q);
        k0 = min(max(p.cu_seqlens_k[b], 0), p.total_k);
        sq = min(min(max(p.cu_seqlens_q[b + 1], int(q0)), p.total_q) - int(q0), p.sq);
        sk = min(min(max(p.cu_seqlens_k[b + 1], int(k0)), p.total_k) - int(k0), p.sk);
        qb = kb = vb = ob = lb = 0;
    }
    if (i >= sq) return;
    const T* q = reinterpret_cast<const T*>(p.q) + qb + h * p.q_head_stride + (q0 + i) * p.q_row_stride;
    const T* k = reinterpret_cast<const T*>(p.k) + kb + hk * p.k_head_stride + k0 * p.k_row_stride;
    const T* v = reinterpret_cast<const T*>(p.v) + vb + hk * p.v_head_stride + k0 * p.v_row_stride;
    T* o = reinterpret_cast<T*>(p.o) + ob + h * p.o_head_stride + (q0 + i) * p.o_row_stride;

    auto score = [&](int j) {
        float s = 0.f;
        for (int d = 0; d < p.d; ++d) s += static_cast<float>(q[d]) * static_cast<float>(k[j * p.k_row_stride + d]);
        s *= p.scale;
        if (p.softcap > 0.f) s = p.softcap * tanhf(s / p.softcap);
        return s;
    };
    float m = -CUDART_INF_F;
    for (int j = 0; j < sk; ++j) {
        if (visible(p, i, j, sq, sk)) m = fmaxf(m, score(j));
    }
    float acc[MaxD];
    for (int d = 0; d < p.d; ++d) acc[d] = 0.f;
    float sum = 0.f;
    for (int j = 0; j < sk; ++j) {
        if (!visible(p, i, j, sq, sk)) continue;
        const float w = expf(score(j) - m);
        sum += w;
        for (int d = 0; d < p.d; ++d) acc[d] += w * static_cast<float>(v[j * p.v_row_stride + d]);
    }
    for (int d = 0; d < p.d; ++d) o[d] = static_cast<T>(sum > 0.f ? acc[d] / sum : 0.f);
    if (p.lse != nullptr) {
        p.lse[lb + h * p.lse_head_stride + (q0 + i) * p.lse_row_stride] = sum > 0.f ? m + logf(sum) : CUDART_INF_F;
    }
}

}  // namespace reference
}  // namespace fa
