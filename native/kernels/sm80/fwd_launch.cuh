// Launch template of the sm80 forward: picks the tile for a head dim and the variant for the call's
// options, raises the dynamic shared memory limit once per device, launches. Included only by the
// per-(head dim, dtype) instantiation files (sm80/fwd_hdim<D>_<dtype>_sm80.cu), so each family compiles in
// its own translation unit.
#pragma once
#include <atomic>
#include <cstdint>

#include "common/fwd_variant.h"
#include "common/launch.h"
#include "common/mask.cuh"
#include "sm80/fwd_kernel.cuh"

namespace fa {
namespace sm80 {

template <typename T, int D, bool kLocal, bool kSoftcap, bool kDropout>
cudaError_t launch_fwd(FwdParams p, const LaunchInfo& info, cudaStream_t stream) {
    using Tile = FwdTile<D>;
    using Tr = FwdTraits<T, D, Tile::kBlockM, Tile::kBlockN, Tile::kWarps, Tile::kMinBlocks>;
    auto kernel = fwd_kernel<Tr, kLocal, kSoftcap, kDropout>;
    constexpr int smem = Tr::kSmemBytes;
    static std::atomic<uint64_t> raised{0};
    const cudaError_t err = raise_smem_once(kernel, smem, info, raised);
    if (err != cudaSuccess) return err;
    const unsigned blocks = schedule(p, Tr::kBlockM, info.l2_bytes);
    if (blocks == 0) return cudaSuccess;
    kernel<<<blocks, Tr::kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

// The variant for the call's options (common/fwd_variant.h).
template <typename T, int D>
int run_fwd(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features) {
    return run_fwd_variant<true>(p, features, [&](auto local, auto softcap, auto dropout) {
        return launch_fwd<T, D, decltype(local)::value, decltype(softcap)::value, decltype(dropout)::value>(p, info, stream);
    });
}

}  // namespace sm80
}  // namespace fa
