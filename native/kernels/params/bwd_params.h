// The backward pass's kernel parameters: the forward's (same tensors, strides, masks, varlen), the
// gradient tensors, and the workspace the host (native/src/backward.cpp) carves into its parts. Plain data.
#pragma once
#include <cstdint>

#include "params/fwd_params.h"

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
    float* dq_accum;  // [slots, kernel_d]: dQ / scale, accumulated by the main kernel (element order: dq_frag_rows)
    float* dsum;      // [slots]: rowsum(dO * O)
    float* lse_log2;  // [slots]: lse * log2(e) (+inf for rows that saw no key)
    int32_t* sem;     // deterministic: [dq_copies][b * hq * m_blocks] arrival counters and one more word, else nullptr
    int64_t q_slots;  // number of row slots
    // Deterministic mode: key block n adds into dQ accumulator copy n % dq_copies (copies dq_copy_stride floats
    // apart, each with its own turn counters), so a key block waits only on those of its copy; bwd_convert adds the
    // copies in a fixed order. 1 in the default mode.
    int32_t dq_copies = 1;
    int64_t dq_copy_stride = 0;

    // Gradient of the sinks (f.sinks set): dsinks[h * dsinks_stride] = -sum_{b,i} e^(sink_h - LSE) * dsum, written
    // by bwd_sink_reduce from sink_partial (workspace, [pre blocks]: one partial sum per bwd_preprocess block,
    // each block's rows summed in a fixed order), so the result does not depend on scheduling. nullptr: none.
    float* dsinks = nullptr;
    int64_t dsinks_stride = 0;
    float* sink_partial = nullptr;

    // Set by the launcher.
    // Layout of dq_accum: 0 row-major everywhere; kDqFragRows (the sm90 kernel) = the rows of every full query block
    // (kDqFragRows rows of one sequence and head, starting at a multiple of kDqFragRows in the sequence) hold the
    // kernel's accumulator fragments in the order dq_frag_offset says, so that a thread adds 4 contiguous floats at a
    // time and a warp 512 contiguous bytes; a last, partial block stays row-major.
    int32_t dq_frag_rows = 0;
    int32_t m_blocks = 0;  // ceil(sq / BlockM)
    int32_t n_blocks = 0;  // ceil(sk / BlockN)
    // Deterministic mode's bounded wait (bwd_wait_turn): the word after the counters, set once a block of this
    // call gave up waiting (the others then stop waiting too); the context's device-flag word and the bound.
    int32_t* sem_gave_up = nullptr;
    uint32_t* device_flags = nullptr;
    int64_t turn_wait_ns = 0;
};

// The smallest BlockM of any backward main kernel: the deterministic mode's counters (one per query
// block, plus the give-up word) are sized for it, so the workspace size does not depend on the kernel path.
constexpr int32_t kBwdMinBlockM = 64;

// dQ accumulator copies of the deterministic mode (BwdParams::dq_copies): with c copies key block n waits for
// about n / c turns instead of n, so an unmasked call takes about (M + (N - 1) / c) / M the default mode's steps
// (M query, N key blocks) for c times the accumulator's memory. Overridable for experiments.
#ifndef FA_BWD_DET_DQ_COPIES
#define FA_BWD_DET_DQ_COPIES 2
#endif
constexpr int32_t kBwdDetDqCopies = FA_BWD_DET_DQ_COPIES;
// Whether the deterministic mode passes a query block's turn in the middle of the next iteration (1) or right after
// its adds (0; common/bwd_block.cuh bwd_release_turn). Overridable for experiments.
#ifndef FA_BWD_DET_DEFER_RELEASE
#define FA_BWD_DET_DEFER_RELEASE 1
#endif
constexpr bool kBwdDetDeferRelease = FA_BWD_DET_DEFER_RELEASE != 0;
static_assert(kBwdDetDqCopies >= 1, "at least one dQ accumulator");

// dq_frag_rows of the fragment layout (the sm90 backward's BlockM) and where element (row, col) of such a block sits,
// in floats from the block's first row slot times kernel_d: the block's columns in two halves of kernel_d / 2 (one per
// warpgroup), each half [kernel_d / 16 column groups of 8][128 threads][4], thread t = 32 * warp + lane holding rows
// 16 * warp + lane / 4 (+ 8) and columns 8 * group + 2 * (lane % 4) (+ 1): wgmma's m64nN accumulator fragment.
constexpr int32_t kDqFragRows = 64;
#if defined(__CUDACC__)
__host__ __device__
#endif
inline int64_t dq_frag_offset(int row, int col, int kernel_d) {
    const int half_cols = kernel_d / 2;
    const int half = col / half_cols, cl = col % half_cols;
    const int thread = 32 * (row / 16) + 4 * (row % 8) + (cl % 8) / 2;
    const int e = 2 * ((row % 16) / 8) + cl % 2;
    return static_cast<int64_t>(half) * kDqFragRows * half_cols + (static_cast<int64_t>(cl / 8) * 128 + thread) * 4 + e;
}

// Row slot of query row `row` (0-based in its sequence) of (b, h): see BwdParams.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline int64_t bwd_row_slot(const BwdParams& p, int b, int h, int64_t seq_row0, int row) {
    return p.f.cu_seqlens_q != nullptr ? static_cast<int64_t>(h) * p.f.total_q + seq_row0 + row
                                       : (static_cast<int64_t>(b) * p.f.hq + h) * p.f.sq + row;
}

}  // namespace fa
