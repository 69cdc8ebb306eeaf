// Launch template of the sm80 backward: preprocess, main kernel (variant picked from the options),
// convert, all on one stream. Included only by the per-(head dim, dtype) instantiation files.
#pragma once
#include <atomic>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "sm80/bwd_kernel.cuh"

namespace fa {
namespace sm80 {

template <typename T, int D, bool kLocal, bool kSoftcap, bool kDet>
cudaError_t launch_bwd_main(const BwdParams& p, const LaunchInfo& info, cudaStream_t stream) {
    using Tr = BwdTraits<T, D>;
    auto kernel = bwd_kernel<Tr, kLocal, kSoftcap, kDet>;
    constexpr int smem = Tr::kSmemBytes;
    if (smem > info.smem_optin) return cudaErrorInvalidConfiguration;
    static std::atomic<uint64_t> raised{0};  // devices (ordinals < 64) whose attribute is already set
    const uint64_t bit = info.device < 64 ? (uint64_t{1} << info.device) : 0;
    if (bit == 0 || (raised.load(std::memory_order_relaxed) & bit) == 0) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (err != cudaSuccess) return err;
        raised.fetch_or(bit, std::memory_order_relaxed);
    }
    const int64_t blocks = static_cast<int64_t>(p.n_blocks) * p.f.b * p.f.hkv;
    if (blocks == 0) return cudaSuccess;
    if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;  // validation rejects these first
    kernel<<<static_cast<unsigned>(blocks), Tr::kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

template <typename T, int D, bool kLocal, bool kSoftcap>
cudaError_t launch_bwd_main_det(const BwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name) {
    if (p.deterministic) {
        if (name) *name = backward_kernel_name(std::is_same<T, __nv_bfloat16>::value, D, kLocal, kSoftcap, true);
        return launch_bwd_main<T, D, kLocal, kSoftcap, true>(p, info, stream);
    }
    if (name) *name = backward_kernel_name(std::is_same<T, __nv_bfloat16>::value, D, kLocal, kSoftcap, false);
    return launch_bwd_main<T, D, kLocal, kSoftcap, false>(p, info, stream);
}

// The whole backward for one (dtype, head dim). p's workspace pointers are set; m_blocks/n_blocks are
// filled here.
template <typename T, int D>
int run_bwd(BwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name) {
    using Tr = BwdTraits<T, D>;
    const FwdParams& f = p.f;
    p.m_blocks = static_cast<int32_t>((static_cast<int64_t>(f.sq) + Tr::kBlockM - 1) / Tr::kBlockM);
    p.n_blocks = static_cast<int32_t>((static_cast<int64_t>(f.sk) + Tr::kBlockN - 1) / Tr::kBlockN);
    const bool varlen = f.cu_seqlens_q != nullptr;
    const int64_t rows = varlen ? f.total_q : f.sq;
    const int64_t heads = varlen ? f.hq : static_cast<int64_t>(f.b) * f.hq;

    cudaError_t err = cudaSuccess;
    if (p.deterministic && p.m_blocks > 0) {
        err = cudaMemsetAsync(p.sem, 0, sizeof(int32_t) * static_cast<size_t>(f.b) * f.hq * p.m_blocks, stream);
        if (err != cudaSuccess) return static_cast<int>(err);
    }
    const int64_t pre_blocks = heads * ((rows + kPreRowsPerBlock - 1) / kPreRowsPerBlock);
    if (pre_blocks > INT32_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
    if (pre_blocks > 0) {
        bwd_preprocess<T><<<static_cast<unsigned>(pre_blocks), 256, 0, stream>>>(p);
        if ((err = cudaGetLastError()) != cudaSuccess) return static_cast<int>(err);
    }

    const bool local = f.causal != 0 || f.window_left >= 0 || f.window_right >= 0;
    const bool softcap = f.softcap > 0.f;
    if (local) {
        err = softcap ? launch_bwd_main_det<T, D, true, true>(p, info, stream, name)
                      : launch_bwd_main_det<T, D, true, false>(p, info, stream, name);
    } else {
        err = softcap ? launch_bwd_main_det<T, D, false, true>(p, info, stream, name)
                      : launch_bwd_main_det<T, D, false, false>(p, info, stream, name);
    }
    if (err != cudaSuccess) return static_cast<int>(err);

    const int64_t conv_blocks = heads * ((rows * (f.d / 8) + kConvertThreads - 1) / kConvertThreads);
    if (conv_blocks > INT32_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
    if (conv_blocks > 0) {
        bwd_convert<T><<<static_cast<unsigned>(conv_blocks), kConvertThreads, 0, stream>>>(p);
        if ((err = cudaGetLastError()) != cudaSuccess) return static_cast<int>(err);
    }
    return 0;
}

}  // namespace sm80
}  // namespace fa
