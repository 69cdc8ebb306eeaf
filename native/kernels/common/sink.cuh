// The end of a forward row's online softmax, with or without a learnable sink (FEATURES.md section 7), written
// once for every forward family (sm80/fwd_kernel.cuh, sm90/fwd_kernel.cuh).
//
// A kernel ends a row with acc = sum_j e^(x_j - M + c) V_j and sum = sum_j e^(x_j - M + c), where x_j are the
// final logits (natural-log units: scale or softcap, and fp8 descales, applied), M = row_max * lse_scale their
// maximum, and c a constant offset in natural-log units that the kernel keeps in P (0 on sm80; sm90's fp8 P
// offset times ln 2). Without a sink: O = acc / sum, LSE = M + log(sum) - c, and a row with no key (sum 0) gets
// O = 0, LSE = +inf. With a sink sigma the denominator gains e^sigma: relative to M' = max(M, sigma),
//   total = sum * e^(M - M') + e^(sigma - M' + c),  O = acc * e^(M - M') / total,  LSE = M' + log(total) - c,
// which neither overflows for a sigma far above the row's logits nor loses the row for one far below; a row with
// no key gets O = 0 and LSE = sigma exactly. A NaN sigma gives NaN (never a quiet "no sink"); -inf is no sink; +inf
// takes the whole row (O = 0, LSE = +inf, the limit). The row max in the exp2 domain the main loops use
// (row_max * scale_log2) stays as it was: the sink only changes the normalisation, once per row.
#pragma once
#include <cuda_runtime.h>
#include <math_constants.h>

namespace fa {

// How a row's accumulator becomes O (O = acc * inv) and its log-sum-exp.
struct RowFinish {
    float inv;
    float lse;
};

// The sink of query head h (read once per row block, before the epilogue), and whether there is one.
struct RowSink {
    bool on;
    float sigma;
};
__device__ __forceinline__ RowSink row_sink(const float* sinks, int64_t stride, int h) {
    return sinks == nullptr ? RowSink{false, 0.f} : RowSink{true, sinks[h * stride]};
}

// sum: the row's sum of P (all four owners of the row added); m: M in final-logit units (row_max * lse_scale,
// meaningless when sum is 0); c: the kernel's P offset in natural-log units.
__device__ __forceinline__ RowFinish finish_row(float sum, float m, float c, RowSink sink) {
    const bool seen = sum > 0.f;
    if (!sink.on) {
        return RowFinish{seen ? 1.f / sum : 0.f, seen ? m + logf(sum) - c : CUDART_INF_F};
    }
    const float sigma = sink.sigma;
    if (!seen) {  // exactly the sink (as the kernels' early exits write it), or +inf for a -inf sink: no sink at all
        return RowFinish{0.f, sigma == -CUDART_INF_F ? CUDART_INF_F : sigma};
    }
    if (sigma == CUDART_INF_F) return RowFinish{0.f, CUDART_INF_F};  // e^sigma outweighs every key: the limit
    // m is finite here. A NaN sigma makes the sink term NaN whichever M' is taken, and with it O and LSE.
    const float mm = !(sigma >= m) ? m : sigma;
    const float a = expf(m - mm);
    const float total = sum * a + expf(sigma - mm + c);
    return RowFinish{a / total, mm + logf(total) - c};
}

// The log-sum-exp of a row that sees no key (the kernels' early exit for blocks with no visible key).
// Agrees with finish_row on such a row: the sink itself, +inf without one (or for a -inf sink).
__device__ __forceinline__ float empty_row_lse(RowSink sink) {
    return sink.on && sink.sigma != -CUDART_INF_F ? sink.sigma : CUDART_INF_F;
}

}  // namespace fa
