// Internal kernel parameters: a plain struct filled by the host side (validate.cpp) after every
// argument has been checked, passed by value to the kernels. Offsets are int64 so tensors past
// 2^31 elements index correctly.
#pragma once
#include <cstdint>

namespace fa {

enum class DType : int32_t { Float16 = 1, BFloat16 = 2 };

struct FwdParams {
    const void* q;  // [b, sq, hq, d]
    const void* k;  // [b, sk, hkv, d]
    const void* v;  // [b, sk, hkv, d]
    void* o;        // [b, sq, hq, d]
    float* lse;     // [b, hq, sq] or nullptr

    // Strides in elements (the last dimension is contiguous).
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    int64_t lse_batch_stride, lse_head_stride, lse_row_stride;

    int32_t b, sq, sk, hq, hkv, d;
    int32_t hq_per_hkv;      // hq / hkv
    float scale;             // softmax scale
    float scale_log2;        // scale * log2(e)
    int32_t causal;          // 0 or 1
    int32_t causal_offset;   // key j visible to query i iff j <= i + causal_offset (sk - sq or 0)
    DType dtype;
};

struct LaunchInfo {
    int32_t device;
    int32_t cc_major, cc_minor;
    int32_t sm_count;
    int64_t smem_optin;
};

// Head dims with a compiled forward kernel (ascending). The dispatcher pads nothing yet: a head dim
// must be one of these exactly.
bool forward_head_dim_compiled(int32_t d);

// Launches the forward kernel on stream. Returns a cudaError_t value (0 on success) so that this
// header needs no CUDA include; the caller turns it into a status and message.
int launch_forward(const FwdParams& p, const LaunchInfo& info, void* stream, const char** kernel_name);

}  // namespace fa
