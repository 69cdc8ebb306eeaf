// Launch templates of the sm80 decode pass: the attention kernel for a traits choice (raising its dynamic
// shared-memory limit once per device), the append and combine kernels, and run_decode<T, D, Fp8Cache>, which the
// per-(head dim, dtype[, fp8 cache]) instantiation files compile. Header-only, so the harness can launch other tile
// choices through the same code.
#pragma once
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "common/features.h"
#include "common/launch.h"
#include "sm80/decode_kernel.cuh"

namespace fa {
namespace sm80 {

template <typename T, int D>
using DecodeTraitsFor = DecodeTraits<T, D, DecodeTile<D>::kWarps, DecodeTile<D>::kStages, DecodeTile<D>::kMinBlocks>;
// The kernel of an fp8 (e4m3) cache with q of type T (C ABI 0.13).
template <typename T, int D>
using DecodeTraitsFp8For = DecodeTraits<T, D, DecodeTileFp8<D>::kWarps, DecodeTileFp8<D>::kStages,
                                         DecodeTileFp8<D>::kMinBlocks, true, DecodeTileFp8<D>::kWarpKeys>;

template <class Tr, bool kPaged>
cudaError_t launch_decode_attention(const DecodeParams& p, const LaunchInfo& info, cudaStream_t stream) {
    auto kernel = decode_kernel<Tr, kPaged>;
    constexpr int smem = Tr::kSmemBytes;
    static std::atomic<uint64_t> raised{0};
    const cudaError_t err = raise_smem_once(kernel, smem, info, raised);
    if (err != cudaSuccess) return err;
    const int64_t blocks = static_cast<int64_t>(p.b) * p.hkv * p.m_blocks * p.num_splits;
    if (blocks == 0) return cudaSuccess;
    if (p.cluster_splits != 0) {
        // (FA_DECODE_CLUSTER_SPLITS, decode_cluster_splits: a cluster of the num_splits CTAs of a (sequence, kv head,
        // 16-row block), neighbours in the grid; blocks is a multiple of num_splits)
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(static_cast<unsigned>(blocks));
        cfg.blockDim = dim3(Tr::kThreads);
        cfg.dynamicSmemBytes = smem;
        cfg.stream = stream;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = static_cast<unsigned>(p.num_splits);
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        const cudaError_t lerr = cudaLaunchKernelEx(&cfg, kernel, p);
        return lerr != cudaSuccess ? lerr : cudaGetLastError();
    }
    kernel<<<static_cast<unsigned>(blocks), Tr::kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

template <typename T, bool Fp8Cache = false>
cudaError_t launch_decode_append(const DecodeParams& p, const LaunchInfo& info, cudaStream_t stream) {
    // One thread per (k_new row, kv head, 16-byte chunk): b x added rows, or the packed rows (cu_seqlens_k_new).
    const int64_t rows = p.b == 0 ? 0 : p.cu_seqlens_knew != nullptr ? p.total_knew : static_cast<int64_t>(p.b) * p.added;
    const int64_t chunks = rows * p.hkv * (p.d / 8);
    const int64_t wanted = (chunks + 255) / 256;
    const int64_t most = static_cast<int64_t>(info.sm_count > 0 ? info.sm_count : 1) * 8;  // grid-stride beyond
    const unsigned blocks = static_cast<unsigned>(wanted < most ? wanted : most);
    if (blocks == 0) return cudaSuccess;
    decode_append_kernel<T, Fp8Cache><<<blocks, 256, 0, stream>>>(p);
    return cudaGetLastError();
}

// Whether the device `info` names runs decode_combine_kernel<T> from an image compiled for sm_90 or newer, which has
// the griddepcontrol.wait (decode_kernel.cuh): not from the compute_80 PTX JIT-compiled for it (a build without sm_90a
// code, a newer architecture than the build's, CUDA_FORCE_PTX_JIT), whose kernel would not wait. Asked once per device
// (devices 0..63; others ask on every call).
template <typename T>
bool decode_combine_waits(const LaunchInfo& info) {
    static std::atomic<uint64_t> asked{0}, waits{0};
    const uint64_t bit = info.device >= 0 && info.device < 64 ? (uint64_t{1} << info.device) : 0;
    if (bit != 0 && (asked.load(std::memory_order_acquire) & bit) != 0) {
        return (waits.load(std::memory_order_relaxed) & bit) != 0;
    }
    cudaFuncAttributes a{};
    const bool yes = cudaFuncGetAttributes(&a, decode_combine_kernel<T>) == cudaSuccess && a.ptxVersion >= 90;
    if (!yes) (void)cudaGetLastError();  // a failed query only means the plain launch
    if (bit != 0) {
        if (yes) waits.fetch_or(bit, std::memory_order_relaxed);
        asked.fetch_or(bit, std::memory_order_release);
    }
    return yes;
}

// Whether a call merges its splits inside clusters (FA_DECODE_CLUSTER_SPLITS, sm80/decode_kernel.cuh; and
// FA_DECODE_CLUSTER_LAUNCH): 2 to 8 splits (the portable cluster sizes), compute capability 9.0 (the H100/H200 this was
// written for), and the kernels from the build's sm_90 code (decode_combine_waits tells: the same image holds both
// kernels; the compute_80 PTX has no cluster code). The launcher then sets DecodeParams::cluster_splits and launches no
// combine kernel. (Not yet handled: a cluster launch refused for resources, e.g. under an MPS SM limit, fails the call;
// a landing would check cudaOccupancyMaxActiveClusters once and fall back to the combine kernel.)
template <typename T>
bool decode_cluster_splits(const DecodeParams& p, const LaunchInfo& info) {
    return FA_DECODE_CLUSTER_SPLITS != 0 && FA_DECODE_CLUSTER_LAUNCH != 0 && p.num_splits >= 2 && p.num_splits <= 8 &&
           info.cc_major == 9 && decode_combine_waits<T>(info);
}

// The combine kernel; with FA_DECODE_PDL, where its image waits (decode_combine_waits: compute capability 9.0 and the
// build's sm_90a code), as a programmatic dependent of the attention kernel launched just before it on the stream (see
// decode_kernel.cuh).
template <typename T>
cudaError_t launch_decode_combine(const DecodeParams& p, const LaunchInfo& info, cudaStream_t stream) {
    constexpr int kThreads = 128;
    const int rows_per_cta = kThreads / (p.d / 8);
    const int64_t rows = static_cast<int64_t>(p.b) * p.hq * p.sq;
    const int64_t blocks = (rows + rows_per_cta - 1) / rows_per_cta;
    if (blocks == 0) return cudaSuccess;
    if (FA_DECODE_PDL && info.cc_major >= 9 && decode_combine_waits<T>(info)) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(static_cast<unsigned>(blocks));
        cfg.blockDim = dim3(kThreads);
        cfg.dynamicSmemBytes = 0;
        cfg.stream = stream;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        return cudaLaunchKernelEx(&cfg, decode_combine_kernel<T>, p);
    }
    decode_combine_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

// The attention kernel of head dim D (its DecodeTile; DecodeTileFp8 for an fp8 cache), contiguous or paged as p says;
// *features gets the variant (common/features.h).
template <typename T, int D, bool Fp8Cache>
int run_decode(const DecodeParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features) {
    using Tr = typename std::conditional<Fp8Cache, DecodeTraitsFp8For<T, D>, DecodeTraitsFor<T, D>>::type;
    *features = (p.block_table != nullptr ? feature::kPaged : 0u) | (Fp8Cache ? feature::kFp8Cache : 0u);
    const cudaError_t err = p.block_table != nullptr ? launch_decode_attention<Tr, true>(p, info, stream)
                                                     : launch_decode_attention<Tr, false>(p, info, stream);
    return static_cast<int>(err);
}

// advance_cache_seqlens, after every other kernel of the call.
template <typename T>
cudaError_t launch_decode_advance(const DecodeParams& p, cudaStream_t stream) {
    decode_advance_kernel<T><<<(p.b + 255) / 256, 256, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace sm80
}  // namespace fa
