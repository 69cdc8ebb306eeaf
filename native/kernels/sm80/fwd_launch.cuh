// Launch template of the sm80 forward: picks the tile for a head dim (or a pair of q and v head dims) and the
// variant for the call's options, raises the dynamic shared memory limit once per device, launches. Included only by the
// per-(head dim, dtype) instantiation files (sm80/fwd_hdim<D>_<dtype>_sm80.cu), so each family compiles in
// its own translation unit.
#pragma once
#include <atomic>
#include <cstdint>

#include "common/fwd_variant.h"
#include "common/launch.h"
#include "common/mask.cuh"
#include "common/paged_kv.cuh"  // paged_variant_fits
#include "sm80/fwd_kernel.cuh"

namespace fa {
namespace sm80 {

// One kernel (traits Tr) over the call's blocks, times v_chunks column chunks of O (adjacent blocks; FwdTileV).
template <class Tr, bool kLocal, bool kSoftcap, bool kDropout, bool kPaged>
cudaError_t launch_fwd_tr(FwdParams p, const LaunchInfo& info, cudaStream_t stream, unsigned v_chunks) {
    auto kernel = fwd_kernel<Tr, kLocal, kSoftcap, kDropout, kPaged>;
    constexpr int smem = Tr::kSmemBytes;
    // Paged K/V: a key tile must lie in one block (the host serves block sizes that are multiples of 128).
    if (!paged_variant_fits<kPaged, Tr::kBlockN>(p)) return cudaErrorInvalidValue;  // common/paged_kv.cuh
    static std::atomic<uint64_t> raised{0};
    const cudaError_t err = raise_smem_once(kernel, smem, info, raised);
    if (err != cudaSuccess) return err;
    const unsigned blocks = schedule(p, Tr::kBlockM, info.l2_bytes);
    if (blocks == 0) return cudaSuccess;
    if (static_cast<uint64_t>(blocks) * v_chunks > 0x7fffffffull) return cudaErrorInvalidConfiguration;
    kernel<<<blocks * v_chunks, Tr::kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

template <typename T, int D, bool kLocal, bool kSoftcap, bool kDropout, bool kPaged>
cudaError_t launch_fwd(FwdParams p, const LaunchInfo& info, cudaStream_t stream) {
    using Tile = FwdTile<D>;
    using Tr = FwdTraits<T, D, Tile::kBlockM, Tile::kBlockN, Tile::kWarps, Tile::kMinBlocks>;
    return launch_fwd_tr<Tr, kLocal, kSoftcap, kDropout, kPaged>(p, info, stream, 1);
}

// The variant for the call's options (common/fwd_variant.h).
template <typename T, int D>
int run_fwd(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features) {
    return run_fwd_variant<true>(p, features, [&](auto local, auto softcap, auto dropout, auto paged) {
        return launch_fwd<T, D, decltype(local)::value, decltype(softcap)::value, decltype(dropout)::value,
                          decltype(paged)::value>(p, info, stream);
    });
}

// A V head dim other than q's: the pair's kernel (FwdTileV), DV / kVCols column chunks.
template <typename T, int D, int DV>
int run_fwd_v(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features) {
    using Tile = FwdTileV<D, DV>;
    using Tr = FwdTraits<T, D, Tile::kBlockM, Tile::kBlockN, Tile::kWarps, Tile::kMinBlocks, Tile::kVCols>;
    static_assert(DV % Tile::kVCols == 0, "whole column chunks");
    // Within the smallest opt-in shared memory of an sm_8x GPU (99 KB on sm_86/sm_89), so the host's per-GPU check of
    // the head dim's kernel (smem_need) covers the pair too.
    static_assert(Tr::kSmemBytes <= 99 * 1024, "a pair kernel fits every sm_8x GPU");
    return run_fwd_variant<true>(p, features, [&](auto local, auto softcap, auto dropout, auto paged) {
        return launch_fwd_tr<Tr, decltype(local)::value, decltype(softcap)::value, decltype(dropout)::value,
                             decltype(paged)::value>(p, info, stream, DV / Tile::kVCols);
    });
}

}  // namespace sm80
}  // namespace fa
