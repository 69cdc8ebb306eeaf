// Where one sequence of a batch lives, for every pass's kernels: per-batch offsets of a variable-length
// batch (cu_seqlens, clamped), plain strides otherwise; and the integer helpers the block walks use.
#pragma once
#include <cstdint>

#include "params/fwd_params.h"

namespace fa {

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Floor division that rounds toward -infinity (window bounds may be negative).
__device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

struct SeqInfo {
    int sq, sk;           // this sequence's lengths
    int64_t q_row0;       // row of this sequence's first query in q/o (varlen) or 0
    int64_t k_row0;       // likewise for k/v
};

__device__ __forceinline__ SeqInfo seq_info(const FwdParams& p, int b) {
    SeqInfo s;
    if (p.cu_seqlens_q != nullptr) {
        // Clamped so that a malformed device array can never move an access outside the tensors.
        const int q0 = min(max(p.cu_seqlens_q[b], 0), p.total_q);
        const int q1 = min(max(p.cu_seqlens_q[b + 1], q0), p.total_q);
        const int k0 = min(max(p.cu_seqlens_k[b], 0), p.total_k);
        const int k1 = min(max(p.cu_seqlens_k[b + 1], k0), p.total_k);
        s.sq = min(q1 - q0, p.sq);
        s.sk = min(k1 - k0, p.sk);
        s.q_row0 = q0;
        s.k_row0 = k0;
    } else {
        s.sq = p.sq;
        s.sk = p.sk;
        s.q_row0 = 0;
        s.k_row0 = 0;
    }
    return s;
}

}  // namespace fa
