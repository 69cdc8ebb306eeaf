// Launch of a backward main kernel, for every kernel family: picks the template variant (local, softcap,
// deterministic) from the call's options, raises the kernel's dynamic shared memory once per device and
// launches one CTA per (key block, batch, kv head). A family (sm80::BwdFamily, sm90::BwdFamily) says
// which kernel a variant is and its launch shape:
//   template <bool kLocal, bool kSoftcap, bool kDet> static auto kernel();   // the __global__ function
//   static constexpr int kSmemBytes;
//   template <bool kLocal, bool kDet, bool kDropout> static constexpr int threads();      // the kernel's block size
//   template <bool kLocal, bool kDet, bool kDropout> static constexpr int launch_regs();  // registers a thread its
//                                                                     // setmaxnreg assumes, or 0 (both of the variant)
//   static constexpr bool local_variant(bool local);                          // the mask variant that runs
//   static constexpr bool kHasDropout;   // dropout kernels of its own: kernel<true, kSoftcap, kDet, true>()
//   template <class K> static cudaError_t launch(K kernel, unsigned blocks, int threads, const BwdParams&, cudaStream_t);
#pragma once
#include <atomic>
#include <climits>
#include <cstdint>

#include "common/features.h"
#include "common/launch.h"
#include "common/mask.cuh"
#include "params/bwd_params.h"
#include "params/launch_info.h"

namespace fa {

template <class Family, bool kLocal, bool kSoftcap, bool kDet, bool kDropout = false>
cudaError_t launch_bwd_variant(const BwdParams& p, const LaunchInfo& info, cudaStream_t stream) {
    constexpr bool kRunLocal = kDropout || Family::local_variant(kLocal);  // the mask variant that runs
    auto kernel = [] {
        if constexpr (kDropout) {
            return Family::template kernel<true, kSoftcap, kDet, true>();
        } else {
            return Family::template kernel<kRunLocal, kSoftcap, kDet>();
        }
    }();
    static std::atomic<uint64_t> raised{0};  // per instantiation, i.e. per kernel
    cudaError_t err = raise_smem_once(kernel, Family::kSmemBytes, info, raised);
    if (err != cudaSuccess) return err;
    constexpr int kLaunchRegs = Family::template launch_regs<kRunLocal, kDet, kDropout>();
    if constexpr (kLaunchRegs > 0) {  // warpgroups that trade registers (setmaxnreg)
        static std::atomic<int> regs_checked{0};
        if ((err = check_launch_regs(kernel, kLaunchRegs, regs_checked)) != cudaSuccess) return err;
    }
    const int64_t blocks = static_cast<int64_t>(p.n_blocks) * p.f.b * p.f.hkv;
    if (blocks == 0) return cudaSuccess;
    if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;  // validation rejects these first
    return Family::launch(kernel, static_cast<unsigned>(blocks), Family::template threads<kRunLocal, kDet, kDropout>(), p,
                          stream);
}

template <class Family, bool kLocal, bool kSoftcap, bool kDropout = false>
cudaError_t launch_bwd_det(const BwdParams& p, const LaunchInfo& info, cudaStream_t stream) {
    return p.deterministic ? launch_bwd_variant<Family, kLocal, kSoftcap, true, kDropout>(p, info, stream)
                           : launch_bwd_variant<Family, kLocal, kSoftcap, false, kDropout>(p, info, stream);
}

// The main kernel of one family for one (dtype, head dim); p.m_blocks/n_blocks are set with the family's
// tile. *features gets the variant that ran (common/features.h). Returns a cudaError_t value.
template <class Family>
int run_bwd_main(const BwdParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features) {
    const bool local = is_local(p.f);
    const bool softcap = p.f.softcap > 0.f;
    // A dropout call this family has no kernel for (the host sends those elsewhere) fails rather than run without it
    // (its features name the variant asked for, which the registry does not list: "unknown_kernel" in the message).
    const bool dropout = Family::kHasDropout && p.f.dropout != 0;  // is_local is true then
    *features = (Family::local_variant(local) ? feature::kLocal : 0u) | (softcap ? feature::kSoftcap : 0u) |
                (p.deterministic ? feature::kDeterministic : 0u) | (p.f.dropout != 0 ? feature::kDropout : 0u);
    if (p.f.dropout != 0 && !Family::kHasDropout) return static_cast<int>(cudaErrorNotSupported);
    cudaError_t err;
    if constexpr (Family::kHasDropout) {
        if (dropout) {
            err = softcap ? launch_bwd_det<Family, true, true, true>(p, info, stream)
                          : launch_bwd_det<Family, true, false, true>(p, info, stream);
            return static_cast<int>(err);
        }
    }
    if (local) {
        err = softcap ? launch_bwd_det<Family, true, true>(p, info, stream) : launch_bwd_det<Family, true, false>(p, info, stream);
    } else {
        err = softcap ? launch_bwd_det<Family, false, true>(p, info, stream) : launch_bwd_det<Family, false, false>(p, info, stream);
    }
    return static_cast<int>(err);
}

}  // namespace fa
