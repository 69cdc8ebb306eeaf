// Runtime -> compile-time switch of the decode pass: dtype and head dim pick the attention kernel's
// instantiation (a head dim without its own runs the next larger one, as the forward does); the split
// count comes from the heuristic in decode_traits.h unless the caller forces one. The host side
// (native/src) has validated every argument before this is called.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "decode_params.h"
#include "sm80/decode_instances.h"
#include "sm80/decode_launch.cuh"
#include "sm80/head_dims.h"

namespace fa {

namespace sm80 {
// advance_cache_seqlens: stores each sequence's length after the append (the clamped length the other kernels
// used, plus the new tokens). Launched last on the stream, after every kernel that reads cache_seqlens.
__global__ void __launch_bounds__(256) decode_advance_kernel(const __grid_constant__ DecodeParams p) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b < p.b) p.cache_seqlens[b * p.seqlens_stride] = decode_seq(p, b).total;
}
}  // namespace sm80

namespace {

// What the split heuristic and the names need to know of the attention kernel for kernel head dim D.
struct DecodeShape {
    int block_n, warps, stages, smem_bytes, min_blocks;
};

template <int D>
DecodeShape decode_shape() {
    using Tr = sm80::DecodeTraitsFor<__half, D>;
    return DecodeShape{Tr::kBlockN, Tr::kWarps, Tr::kStages, Tr::kSmemBytes, Tr::kMinBlocks};
}

DecodeShape decode_shape_for(int32_t kernel_d) {
    return sm80::with_head_dim(kernel_d, [](auto d) { return decode_shape<decltype(d)::value>(); });
}

template <typename T>
int run_for_head_dim(int32_t kernel_d, const DecodeParams& p, const LaunchInfo& info, cudaStream_t stream) {
    return sm80::with_compiled_head_dim(kernel_d, static_cast<int>(cudaErrorInvalidValue), [&](auto d) {
        return sm80::run_decode<T, decltype(d)::value>(p, info, stream);
    });
}

template <typename T>
int launch_all(const DecodeParams& p, const LaunchInfo& info, cudaStream_t stream) {
    if (p.k_new != nullptr) {
        const cudaError_t err = sm80::launch_decode_append<T>(p, info, stream);
        if (err != cudaSuccess) return static_cast<int>(err);
    }
    int err = run_for_head_dim<T>(forward_kernel_head_dim(p.d), p, info, stream);
    if (err == 0 && p.num_splits > 1) err = static_cast<int>(sm80::launch_decode_combine<T>(p, stream));
    if (err == 0 && p.advance) {
        sm80::decode_advance_kernel<<<(p.b + 255) / 256, 256, 0, stream>>>(p);
        err = static_cast<int>(cudaGetLastError());
    }
    return err;
}

std::string attention_name(const char* dtype, int32_t kernel_d, bool paged) {
    const DecodeShape s = decode_shape_for(kernel_d);
    return std::string("sm80_decode_") + dtype + "_hdim" + std::to_string(kernel_d) + (paged ? "_paged" : "") + "_16x" +
           std::to_string(s.block_n) + "_" + std::to_string(s.warps) + "w" + std::to_string(s.stages) + "s";
}

// Every decode kernel of this build in a fixed order: per head dim, fp16 then bf16, contiguous then
// paged; then the append and combine kernels of each dtype. Built once.
const std::vector<std::string>& all_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> out;
        const int32_t* dims = nullptr;
        const int32_t count = forward_compiled_head_dims(&dims);
        for (int32_t i = 0; i < count; ++i) {
            for (const char* dtype : {"fp16", "bf16"}) {
                out.push_back(attention_name(dtype, dims[i], false));
                out.push_back(attention_name(dtype, dims[i], true));
            }
        }
        if (count > 0) {
            for (const char* dtype : {"fp16", "bf16"}) {
                out.push_back(std::string("sm80_decode_append_") + dtype);
                out.push_back(std::string("sm80_decode_combine_") + dtype);
            }
        }
        return out;
    }();
    return names;
}

}  // namespace

int32_t decode_smem_bytes(int32_t kernel_d) { return decode_shape_for(kernel_d).smem_bytes; }

int32_t decode_num_splits(const DecodeParams& p, const LaunchInfo& info, int32_t requested, int32_t length_hint) {
    if (requested > 0) return requested;
    const DecodeShape s = decode_shape_for(forward_kernel_head_dim(p.d));
    const int64_t pairs = static_cast<int64_t>(p.b) * p.hkv * p.m_blocks;
    return sm80::choose_decode_splits(pairs, length_hint, s.block_n, s.smem_bytes, s.min_blocks, info.sm_count,
                                      info.smem_optin, FA_DECODE_MAX_SPLITS);
}

int launch_decode(const DecodeParams& p, const LaunchInfo& info, void* stream, const char** kernel_name) {
    const auto st = static_cast<cudaStream_t>(stream);
    const int32_t kd = forward_kernel_head_dim(p.d);
    const bool bf16 = p.dtype == DType::BFloat16;
    if (kernel_name != nullptr) {
        // Same order as all_names(): 4 per compiled head dim.
        const int32_t* dims = nullptr;
        const int32_t count = forward_compiled_head_dims(&dims);
        int32_t index = 0;
        while (index < count && dims[index] != kd) ++index;
        const int32_t at = index * 4 + (bf16 ? 2 : 0) + (p.block_table != nullptr ? 1 : 0);
        *kernel_name = index < count ? all_names()[at].c_str() : "sm80_decode_unknown";
    }
    return bf16 ? launch_all<__nv_bfloat16>(p, info, st) : launch_all<__half>(p, info, st);
}

int32_t decode_kernel_count() { return static_cast<int32_t>(all_names().size()); }

const char* decode_kernel_name_at(int32_t index) {
    const auto& names = all_names();
    return index >= 0 && index < static_cast<int32_t>(names.size()) ? names[index].c_str() : nullptr;
}

}  // namespace fa
