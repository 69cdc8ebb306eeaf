// Internal parameters of the backward pass: the forward's (same tensors, strides, masks, varlen), the
// gradient tensors, and the workspace carved into its parts by the host side (backward.cpp).
#pragma once
#include <cstddef>
#include <cstdint>

#include "params.h"

namespace fa {

struct BwdParams {
    FwdParams f;  // q, k, v, o (= out), lse and every option of the forward call

    const void* dout;  // shaped like o
    void* dq;          // shaped like q
    void* dk;          // shaped like k
    void* dv;          // shaped like v
    int64_t do_batch_stride, do_row_stride, do_head_stride;
    int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
    int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
    int64_t dv_batch_stride, dv_row_stride, dv_head_stride;

    int32_t deterministic;  // 0 or 1
    int32_t kernel_d;       // head dim of the kernel that runs (>= f.d; extra columns are zero)

    // Workspace, all fp32 / int32, indexed by "row slot" = (b * hq + h) * sq + row for a fixed-length batch
    // and h * total_q + row for a variable-length one (rows of the packed tensor):
    float* dq_accum;  // [slots, kernel_d]: dQ / scale, accumulated by the main kernel
    float* dsum;      // [slots]: rowsum(dO * O)
    float* lse_log2;  // [slots]: lse * log2(e) (+inf for rows that saw no key)
    int32_t* sem;     // deterministic: [b * hq * m_blocks] arrival counters, else nullptr
    int64_t q_slots;  // number of row slots

    // Set by the launcher.
    int32_t m_blocks = 0;  // ceil(sq / BlockM)
    int32_t n_blocks = 0;  // ceil(sk / BlockN)
};

// Row slot of query row `row` (0-based in its sequence) of (b, h): see BwdParams.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline int64_t bwd_row_slot(const BwdParams& p, int b, int h, int64_t seq_row0, int row) {
    return p.f.cu_seqlens_q != nullptr ? static_cast<int64_t>(h) * p.f.total_q + seq_row0 + row
                                       : (static_cast<int64_t>(b) * p.f.hq + h) * p.f.sq + row;
}

// Workspace layout for a call (bytes of each part, each rounded to 256). block_m is the kernel's
// BlockM (for the semaphores); kernel_d its head dim.
struct BwdWorkspaceLayout {
    size_t dq_accum, dsum, lse_log2, sem, total;
};
BwdWorkspaceLayout bwd_workspace_layout(const FwdParams& f, int32_t kernel_d, int32_t block_m, bool deterministic);

// BlockM and dynamic shared memory of the backward kernel for a compiled kernel head dim.
int32_t backward_block_m(int32_t kernel_d);
int32_t backward_block_n(int32_t kernel_d);
int32_t backward_smem_bytes(int32_t kernel_d);

// Names of the backward kernels compiled into this build ("sm80_bwd_bf16_hdim128_local_det_64x128_8w"):
// their count, one by index (nullptr past the end), and the one of a variant (lives as long as the process).
int32_t backward_kernel_count();
const char* backward_kernel_name_at(int32_t index);
const char* backward_kernel_name(bool bf16, int32_t kernel_d, bool local, bool softcap, bool deterministic);

// Launches preprocess, main and convert kernels on stream (the workspace pointers set). Returns a
// cudaError_t value; *kernel_name names the main kernel.
int launch_backward(BwdParams& p, const LaunchInfo& info, void* stream, const char** kernel_name);

}  // namespace fa
