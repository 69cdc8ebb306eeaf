// The sm80 backward main kernel as a family of common/bwd_launch.cuh: which kernel a variant is, and its
// launch shape. Included only by the per-(head dim, dtype) instantiation files (sm80/bwd_hdim<D>_<dtype>_sm80.cu).
#pragma once
#include "common/bwd_launch.cuh"
#include "sm80/bwd_kernel.cuh"

namespace fa {
namespace sm80 {

// DV: a V head dim other than D (the pair (192, 128); sm80/bwd_traits.h).
template <typename T, int D, int DV>
struct BwdFamily {
    using Tr = BwdTraits<T, D, BwdTile<D>, DV>;
    static constexpr int kSmemBytes = Tr::kSmemBytes;
    template <bool kLocal, bool kDet, bool kDropout>
    static constexpr int threads() { return Tr::kThreads; }
    static constexpr bool local_variant(bool local) { return local; }
    static constexpr bool kHasDropout = true;  // dropout kernels of their own (local only; sm80/bwd_kernel.cuh)
    template <bool kLocal, bool kDet, bool kDropout>
    static constexpr int launch_regs() { return 0; }  // no setmaxnreg
    template <bool kLocal, bool kSoftcap, bool kDet, bool kDropout = false>
    static auto kernel() { return bwd_kernel<Tr, kLocal, kSoftcap, kDet, kDropout>; }
    template <class K>
    static cudaError_t launch(K kernel, unsigned blocks, int threads, const BwdParams& p, cudaStream_t stream) {
        kernel<<<blocks, threads, kSmemBytes, stream>>>(p);
        return cudaGetLastError();
    }
};

}  // namespace sm80
}  // namespace fa
