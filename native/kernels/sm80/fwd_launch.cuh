// Launch template of the sm80 forward: picks the tile for a head dim, raises the dynamic shared
// memory limit once per device, launches. Included only by the per-(head dim, dtype) instantiation
// files, so each family compiles in its own translation unit.
#pragma once
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "sm80/fwd_kernel.cuh"
#include "sm80/fwd_names.h"

namespace fa {
namespace sm80 {

template <typename T, int D, bool kLocal, bool kSoftcap>
cudaError_t launch_fwd(FwdParams p, const LaunchInfo& info, cudaStream_t stream) {
    using Tile = FwdTile<D>;
    using Tr = FwdTraits<T, D, Tile::kBlockM, Tile::kBlockN, Tile::kWarps, Tile::kMinBlocks>;
    auto kernel = fwd_kernel<Tr, kLocal, kSoftcap>;
    constexpr int smem = Tr::kSmemBytes;
    if (smem > info.smem_optin) return cudaErrorInvalidConfiguration;
    if (smem > 48 * 1024) {
        // The attribute is per device; remember which devices already have it (ordinals < 64).
        static std::atomic<uint64_t> raised{0};
        const uint64_t bit = info.device < 64 ? (uint64_t{1} << info.device) : 0;
        if (bit == 0 || (raised.load(std::memory_order_relaxed) & bit) == 0) {
            const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
            if (err != cudaSuccess) return err;
            raised.fetch_or(bit, std::memory_order_relaxed);
        }
    }
    const unsigned blocks = schedule(p, Tr::kBlockM, info.l2_bytes);
    if (blocks == 0) return cudaSuccess;
    kernel<<<blocks, Tr::kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

template <typename T, int D, bool kLocal, bool kSoftcap>
int run_fwd_variant(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name) {
    if (name) *name = kernel_name(std::is_same<T, __nv_bfloat16>::value, D, kLocal, kSoftcap);
    return static_cast<int>(launch_fwd<T, D, kLocal, kSoftcap>(p, info, stream));
}

// Masks that can hide keys other than the sequence tail (causal, windows) pick the local variant;
// softcap its own, so the plain kernel carries neither.
template <typename T, int D>
int run_fwd(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name) {
    const bool local = p.causal != 0 || p.window_left >= 0 || p.window_right >= 0;
    const bool softcap = p.softcap > 0.f;
    if (local) {
        return softcap ? run_fwd_variant<T, D, true, true>(p, info, stream, name)
                       : run_fwd_variant<T, D, true, false>(p, info, stream, name);
    }
    return softcap ? run_fwd_variant<T, D, false, true>(p, info, stream, name)
                   : run_fwd_variant<T, D, false, false>(p, info, stream, name);
}

}  // namespace sm80
}  // namespace fa
