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
    int32_t causal_offset;   // unused by the kernels (kept for logging): see bottom_right
    DType dtype;

    // Masks. Query i of a sequence sees key j iff j < sk_seq and
    //   j <= i + off + right   (right = 0 when causal, else window_right; unbounded if < 0)
    //   j >= i + off - window_left                                    (unbounded if < 0)
    // where off = sk_seq - sq_seq when bottom_right, else 0.
    int32_t window_left = -1;
    int32_t window_right = -1;
    int32_t bottom_right = 1;
    // > 0: scores become softcap * tanh(score * scale / softcap) before masking and softmax.
    float softcap = 0.f;

    // Variable-length batches: when cu_seqlens_q is set, q/o are [total_q, hq, d] and sequence b
    // spans rows cu_seqlens_q[b] .. cu_seqlens_q[b+1] (likewise k/v with cu_seqlens_k); batch strides
    // are ignored; sq/sk are the maxima; the LSE is [hq, total_q] (lse_batch_stride unused).
    const int32_t* cu_seqlens_q = nullptr;
    const int32_t* cu_seqlens_k = nullptr;
    // Rows of the packed tensors (varlen): the kernels clamp every sequence to [0, total) and to
    // sq/sk, so a wrong device-only cu_seqlens can give wrong values but never an access outside.
    int32_t total_q = 0;
    int32_t total_k = 0;

    // Block order (set by the launcher, see sm80::schedule): the 1-D grid walks groups of
    // `heads_per_group` (batch, head) pairs; inside a group the row blocks go heaviest first (for a
    // causal mask the last row blocks see the most keys), so the final wave holds the lightest blocks,
    // while the group's K/V stays small enough to be reused from L2.
    int32_t m_blocks = 0;
    int32_t heads_per_group = 0;
};

struct LaunchInfo {
    int32_t device;
    int32_t cc_major, cc_minor;
    int32_t sm_count;
    int64_t smem_optin;
    int32_t l2_bytes;  // L2 cache size (0 if unknown)
};

// Whether this build serves head dim d: a multiple of 8 no larger than the largest compiled kernel
// head dim (a smaller d runs the next larger kernel with zero-filled columns).
bool forward_head_dim_compiled(int32_t d);
// The kernel head dim that serves d, or 0.
int32_t forward_kernel_head_dim(int32_t d);
// The compiled kernel head dims, ascending; returns their count.
int32_t forward_compiled_head_dims(const int32_t** dims);

// Kernels compiled into this build: their count, and the name of one (nullptr past the end).
int32_t kernel_count();
const char* kernel_name_at(int32_t index);

// Launches the forward kernel on stream. Returns a cudaError_t value (0 on success) so that this
// header needs no CUDA include; the caller turns it into a status and message.
int launch_forward(const FwdParams& p, const LaunchInfo& info, void* stream, const char** kernel_name);

}  // namespace fa
