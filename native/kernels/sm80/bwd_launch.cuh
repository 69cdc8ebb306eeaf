// Launch template of the backward: preprocess, main kernel (sm80 or, for kernel head dims 64, 128 and 256
// on an sm_90a build, the wgmma kernel; variant picked from the options), convert, all on one stream.
// Included only by the per-(head dim, dtype) instantiation files.
#pragma once
#include <atomic>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "sm80/bwd_kernel.cuh"
#include "sm90/bwd_kernel.cuh"

namespace fa {
namespace sm80 {

// Launches one main-kernel variant; the first launch on a device raises its dynamic shared-memory limit.
template <class Kernel>
cudaError_t launch_main(Kernel kernel, int smem, int threads, std::atomic<uint64_t>& raised, const BwdParams& p,
                        const LaunchInfo& info, cudaStream_t stream) {
    if (smem > info.smem_optin) return cudaErrorInvalidConfiguration;
    const uint64_t bit = info.device < 64 ? (uint64_t{1} << info.device) : 0;  // devices already raised
    if (bit == 0 || (raised.load(std::memory_order_relaxed) & bit) == 0) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (err != cudaSuccess) return err;
        raised.fetch_or(bit, std::memory_order_relaxed);
    }
    const int64_t blocks = static_cast<int64_t>(p.n_blocks) * p.f.b * p.f.hkv;
    if (blocks == 0) return cudaSuccess;
    if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;  // validation rejects these first
    kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(p);
    return cudaGetLastError();
}

template <typename T, int D, bool kLocal, bool kSoftcap, bool kDet>
cudaError_t launch_bwd_main(const BwdParams& p, const LaunchInfo& info, cudaStream_t stream) {
    static std::atomic<uint64_t> raised80{0}, raised90{0};  // per kernel: each needs its own attribute
    if constexpr (bwd_sm90_head_dim(D)) {
        if (p.sm90) {
            using Tr = sm90::BwdTraits90<D>;
            return launch_main(sm90::bwd_kernel_sm90<T, D, sm90::kBwdLocalVariant<D, kLocal>, kSoftcap, kDet>,
                               Tr::kSmemBytes, Tr::kThreads, raised90, p, info, stream);
        }
    }
    using Tr = BwdTraits<T, D>;
    return launch_main(bwd_kernel<Tr, kLocal, kSoftcap, kDet>, Tr::kSmemBytes, Tr::kThreads, raised80, p, info, stream);
}

template <typename T, int D, bool kLocal, bool kSoftcap>
cudaError_t launch_bwd_main_det(const BwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name) {
    const bool bf16 = std::is_same<T, __nv_bfloat16>::value;
    bool local = kLocal;
    if constexpr (bwd_sm90_head_dim(D)) {
        if (p.sm90) local = sm90::kBwdLocalVariant<D, kLocal>;
    }
    if (name) *name = backward_kernel_name(bf16, D, local, kSoftcap, p.deterministic != 0, p.sm90 != 0);
    if (p.deterministic) return launch_bwd_main<T, D, kLocal, kSoftcap, true>(p, info, stream);
    return launch_bwd_main<T, D, kLocal, kSoftcap, false>(p, info, stream);
}

// The whole backward for one (dtype, head dim). p's workspace pointers are set; m_blocks/n_blocks are
// filled here.
template <typename T, int D>
int run_bwd(BwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name) {
    const FwdParams& f = p.f;
    int block_m = BwdTraits<T, D>::kBlockM, block_n = BwdTraits<T, D>::kBlockN;
    if constexpr (bwd_sm90_head_dim(D)) {
        if (p.sm90) {
            block_m = sm90::BwdTraits90<D>::kBlockM;
            block_n = sm90::BwdTraits90<D>::kBlockN;
        }
    }
    p.m_blocks = static_cast<int32_t>((static_cast<int64_t>(f.sq) + block_m - 1) / block_m);
    p.n_blocks = static_cast<int32_t>((static_cast<int64_t>(f.sk) + block_n - 1) / block_n);
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
