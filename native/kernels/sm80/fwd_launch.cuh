// Launch template of the sm80 forward: picks the tile for a head dim, raises the dynamic shared
// memory limit once per device, launches. Included only by the per-(head dim, dtype) instantiation
// files, so each family compiles in its own translation unit.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>

#include "sm80/fwd_kernel.cuh"

namespace fa {
namespace sm80 {

template <typename T>
constexpr const char* dtype_tag();
template <>
constexpr const char* dtype_tag<__half>() { return "fp16"; }
template <>
constexpr const char* dtype_tag<__nv_bfloat16>() { return "bf16"; }

template <typename T, int D, bool kLocal, bool kSoftcap>
cudaError_t launch_fwd(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream) {
    using Tile = FwdTile<D>;
    using Tr = FwdTraits<T, D, Tile::kBlockM, Tile::kBlockN, Tile::kWarps>;
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
    const dim3 grid((p.sq + Tr::kBlockM - 1) / Tr::kBlockM, p.hq, p.b);
    kernel<<<grid, Tr::kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

// "sm80_fwd_bf16_hdim128_local_softcap_128x64_4w": built once, valid for the life of the process.
template <typename T, int D, bool kLocal, bool kSoftcap>
const char* kernel_name() {
    using Tile = FwdTile<D>;
    static const std::string name = std::string("sm80_fwd_") + dtype_tag<T>() + "_hdim" + std::to_string(D) +
                                    (kLocal ? "_local" : "") + (kSoftcap ? "_softcap" : "") + "_" +
                                    std::to_string(Tile::kBlockM) + "x" + std::to_string(Tile::kBlockN) + "_" +
                                    std::to_string(Tile::kWarps) + "w";
    return name.c_str();
}

template <typename T, int D, bool kLocal, bool kSoftcap>
int run_fwd_variant(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name) {
    if (name) *name = kernel_name<T, D, kLocal, kSoftcap>();
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
