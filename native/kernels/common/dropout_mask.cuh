// The dropout keep mask a forward call may ask for (FwdParams::dropout_mask), written by its own kernel after the
// attention kernel (common/dropout.cuh says why). Included only by the registry (registry.cu), so the kernel is
// defined once in the library.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/philox.cuh"
#include "params/fwd_params.h"

namespace fa {

// One thread per element (i, j) of the mask of (sequence b, query head h): blockIdx.x = b * H + h (x: the only grid
// dimension past 65535), blockIdx.y and z tile (i, j) in 8 rows x 32 keys. Writes 1 (kept) or 0 (dropped) for i < sq_b and j < sk_b (every element,
// hidden keys included); cu_seqlens give sq_b and sk_b for a variable-length batch (their device values, clamped to
// the launch's max_sq x max_sk as the attention kernels clamp them).
__global__ void dropout_mask_kernel(const FwdParams p) {
    const int bh = blockIdx.x;
    const int b = bh / p.hq, h = bh % p.hq;
    const int i = blockIdx.y * 8 + threadIdx.y;
    const int j = blockIdx.z * 32 + threadIdx.x;
    int sq = p.sq, sk = p.sk;
    if (p.cu_seqlens_q != nullptr) {
        sq = min(p.sq, max(0, p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b]));
        sk = min(p.sk, max(0, p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]));
    }
    if (i >= sq || j >= sk) return;
    const uint64_t seed = p.dropout_seed_ptr != nullptr ? *p.dropout_seed_ptr : p.dropout_seed;
    const uint64_t base = p.dropout_offset + (p.dropout_offset_ptr != nullptr ? *p.dropout_offset_ptr : 0ull);
    const bool keep = dropout_keep(seed, base, b, h, p.hq, static_cast<uint32_t>(i), static_cast<uint32_t>(j),
                                   p.dropout_threshold);
    p.dropout_mask[b * p.dropout_mask_batch_stride + h * p.dropout_mask_head_stride + i * p.dropout_mask_row_stride + j] =
        keep ? 1 : 0;
}

// Launches dropout_mask_kernel for a forward call with a mask (p.dropout_mask set); returns a cudaError_t value.
inline int launch_dropout_mask(const FwdParams& p, cudaStream_t stream) {
    if (p.dropout_mask == nullptr || p.sq <= 0 || p.sk <= 0 || p.b <= 0) return 0;
    const dim3 block(32, 8);
    const dim3 grid(static_cast<unsigned>(p.b * p.hq), static_cast<unsigned>((p.sq + 7) / 8),
                    static_cast<unsigned>((p.sk + 31) / 32));
    dropout_mask_kernel<<<grid, block, 0, stream>>>(p);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace fa
