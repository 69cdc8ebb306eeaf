// Internal parameters of the backward pass: the forward's (same tensors, strides, masks, varlen), the
// gradient tensors, and the workspace carved into its parts by the host side (backward.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

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
    int32_t sm90;           // 1: the wgmma main kernel (sm_90a build, cc 9.0, kernel_d 64, 128 or 256)

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

// Tile of the sm90 (wgmma) main kernel: 64 query rows x 128 keys (64 keys at head dim 256).
constexpr int32_t kBwdSm90BlockM = 64, kBwdSm90BlockN = 128;
// The kernel head dims that have an sm90 main kernel (in a build with sm_90a code).
constexpr bool bwd_sm90_head_dim(int32_t kernel_d) { return kernel_d == 64 || kernel_d == 128 || kernel_d == 256; }
// The smallest BlockM of any backward main kernel: the deterministic mode's semaphores (one per query
// block) are sized for it, so the workspace size does not depend on the kernel path.
constexpr int32_t kBwdMinBlockM = 64;

// Workspace layout for a call (bytes of each part, each rounded to 256); kernel_d is the kernel's head dim.
struct BwdWorkspaceLayout {
    size_t dq_accum, dsum, lse_log2, sem, total;
};
BwdWorkspaceLayout bwd_workspace_layout(const FwdParams& f, int32_t kernel_d, bool deterministic);

// BlockN and dynamic shared memory of the sm80 backward kernel for a compiled kernel head dim (the sm90
// kernel has the same BlockN where it serves: 128, and 64 at head dim 256).
int32_t backward_block_n(int32_t kernel_d);
int32_t backward_smem_bytes(int32_t kernel_d);

// Whether this build's sm90 (wgmma) backward serves kernel head dim kernel_d on compute capability cc
// (major * 10 + minor; 0: any device that has it); if not, *why (when given) says why in a phrase.
bool backward_sm90_serves(int32_t kernel_d, int32_t cc, std::string* why);
// Dynamic shared memory of the sm90 backward kernel (kernel_d 64, 128 or 256).
int32_t backward_sm90_smem_bytes(int32_t kernel_d);

// Names of the backward kernels compiled into this build ("sm80_bwd_bf16_hdim128_local_det_64x128_8w",
// "sm90_bwd_bf16_hdim128_64x128_2wg"): their count, one by index (nullptr past the end), and the one of
// a variant (lives as long as the process).
int32_t backward_kernel_count();
const char* backward_kernel_name_at(int32_t index);
const char* backward_kernel_name(bool bf16, int32_t kernel_d, bool local, bool softcap, bool deterministic, bool sm90);

// Launches preprocess, main and convert kernels on stream (the workspace pointers set). Returns a
// cudaError_t value; *kernel_name names the main kernel.
int launch_backward(BwdParams& p, const LaunchInfo& info, void* stream, const char** kernel_name);

}  // namespace fa
