// The sm90 (wgmma) backward main kernel as a family of common/bwd_launch.cuh: which kernel a variant is
// (at head dim 256 the masked kernel serves unmasked calls too: kBwdLocalVariant), and its launch shape.
// Included only by the per-(head dim, dtype) instantiation files (sm90/bwd_hdim<D>_<dtype>_sm90.cu, built
// where FA_CUDA_ARCHS has 90a).
#pragma once
#include "common/bwd_launch.cuh"
#include "sm90/bwd_kernel.cuh"

namespace fa {
namespace sm90 {

template <typename T, int D>
struct BwdFamily {
    using Tr = BwdTraits90<D>;
    static constexpr int kSmemBytes = Tr::kSmemBytes;
    static constexpr int kThreads = Tr::kThreads;
    static constexpr bool local_variant(bool local) { return D == 256 ? true : local; }
    static constexpr bool kHasDropout = false;  // dropout is sm80-only (the host refuses it here)
    template <bool kLocal, bool kSoftcap, bool kDet>
    static auto kernel() { return bwd_kernel_sm90<T, D, kLocal, kSoftcap, kDet>; }
};

}  // namespace sm90
}  // namespace fa
