// ALiBi (FEATURES.md section 2), written once for every kernel family: the bias of (query row i, key j) of one
// sequence, in the units of the scores the kernels keep.
//
// The final logit is x = s * u with u the kernel's multiplier (softmax scale; softcap when softcap is on, where s is
// then tanh(raw * scale / softcap); times q_descale * k_descale on the sm90 fp8 kernel), and the softmax runs on
// exp2(s * u * log2(e) - m) with u * log2(e) folded into scale_log2. FlashAttention-2 adds slope * dist to x; we
// add (slope / u) * dist to s before the row max, so that
//     exp2((s + slope / u * dist) * u * log2 e) = exp2((x + slope * dist) * log2 e) = e^(x + bias)
// (the same equivalent FlashAttention-2 uses: its slope divided by scale_softmax, multiplied back in the exponent),
// and the row max and LSE (row_max * u + log(sum)) are those of x + bias. The bias is therefore not multiplied by
// the softmax scale and not passed through tanh, and masked keys stay -inf because the masks are applied after it.
//   not causal (windows included): dist = -|i + off - j|,  off = sk - sq (bottom-right) or 0 (top-left)
//   causal (FlashAttention-2's form): dist = j; out is that of the first form (a row constant slope * (i + off)
//     cancels in the softmax) but the LSE is larger by slope * (i + off).
// Rounding: the bias is one fp32 product (and the sum with s), as in FlashAttention-2; its error is a relative 2^-24
// of slope * dist (e.g. 3e-4 in the logit for slope 0.3 at distance 16k), the same on every path but one: the sm90
// forward's ALiBi variant (sm90/alibi_gemm.cuh) adds slope/u * (key - key0 - BN/2) through its Q K^T and the rest per
// row, which rounds at the size of the block's part (|.| <= slope/u * BN/2) where this rounds at the bias's: up to
// 2^-24 slope * BN/2 in the logit more near the diagonal (2e-6 for slope 0.3 at BN 128), the same size far from it.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fa {

// One (sequence, query head)'s slope in score units and the form of its bias. on false: no ALiBi.
struct AlibiRow {
    bool on;
    bool causal;  // +slope * j, else -slope * |i + off - j|
    float slope;  // slope / u (score units)
    int off;      // the mask's diagonal offset (unused by the causal form)
};

// slopes: FwdParams/DecodeParams::alibi_slopes (nullptr: off); u: the kernel's multiplier of s (see above).
__device__ __forceinline__ AlibiRow alibi_row(const float* slopes, int64_t batch_stride, int64_t head_stride,
                                              int32_t causal, int b, int h, float u, int off) {
    if (slopes == nullptr) return AlibiRow{false, false, 0.f, 0};
    return AlibiRow{true, causal != 0, slopes[b * batch_stride + h * head_stride] / u, off};
}

// The bias of query row `row` and key `key` (both within the sequence; for decode, key counts from the left pad)
// in score units.
__device__ __forceinline__ float alibi_bias(const AlibiRow& a, int row, int key) {
    return a.causal ? a.slope * static_cast<float>(key) : -a.slope * static_cast<float>(abs(row + a.off - key));
}

// The same for the keys key0 + dk of one row, dk a compile-time constant of an unrolled loop, from two floats the
// caller converts once: key0f = key0 and rel = row + off - key0 (exact: every index is below 2^24). Converting each
// key index instead made the compiler hoist one conversion per unrolled key out of the backward's loop and spill them.
__device__ __forceinline__ float alibi_bias_from(const AlibiRow& a, float rel, float key0f, int dk) {
    const float k = static_cast<float>(dk);
    return a.causal ? a.slope * (key0f + k) : -a.slope * fabsf(rel - k);
}

}  // namespace fa
