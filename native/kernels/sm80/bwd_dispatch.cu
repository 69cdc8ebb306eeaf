// Runtime -> compile-time switch of the backward pass (dtype, head dim), and the workspace layout the
// host side sizes and carves. Head dims without their own instantiation run the next larger one, as
// in the forward (fwd_dispatch.cu).
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "bwd_params.h"
#include "sm80/bwd_instances.h"
#include "sm80/bwd_traits.h"
#include "sm80/head_dims.h"
#include "sm90/bwd_kernel.cuh"

namespace fa {

namespace {
template <typename T>
int run_for_head_dim(int32_t kernel_d, BwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name) {
    return sm80::with_compiled_head_dim(kernel_d, static_cast<int>(cudaErrorInvalidValue), [&](auto d) {
        return sm80::run_bwd<T, decltype(d)::value>(p, info, stream, name);
    });
}

template <int D>
std::string tile_tag() {
    using Tile = sm80::BwdTile<D>;
    return std::to_string(Tile::kBlockM) + "x" + std::to_string(Tile::kBlockN) + "_8w";
}

std::string tile_tag_for(int32_t d) {
    return sm80::with_head_dim(d, [](auto hd) { return tile_tag<decltype(hd)::value>(); });
}

#ifdef FA_HAS_SM90A
constexpr bool kHasSm90a = true;
#else
constexpr bool kHasSm90a = false;
#endif

// Variants the sm90 kernel of kernel head dim d has per dtype in this build: 8, but 4 at 256, where the
// masked kernel serves the unmasked calls too (sm90::kBwdLocalVariant); 0 without one.
int sm90_variants(int32_t d) { return !(kHasSm90a && bwd_sm90_head_dim(d)) ? 0 : d == 256 ? 4 : 8; }

// Every variant of every compiled head dim: the sm80 kernels (per head dim, fp16 then bf16, then the
// eight (local, softcap, deterministic) combinations in binary order), then the same for the sm90
// kernels of an sm_90a build (kernel head dims 64, 128 and 256; at 256 only the four _local variants per
// dtype, which serve the unmasked calls too: sm90::kBwdLocalVariant). Built once.
const std::vector<std::string>& all_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> out;
        const int32_t* dims = nullptr;
        const int32_t count = forward_compiled_head_dims(&dims);
        for (const bool sm90 : {false, true}) {
            for (int32_t i = 0; i < count; ++i) {
                const int32_t d = dims[i];
                if (sm90 && sm90_variants(d) == 0) continue;
                const std::string tile = sm90 ? std::to_string(kBwdSm90BlockM) + "x" + std::to_string(d == 256 ? kBwdSm90BlockN / 2 : kBwdSm90BlockN) + "_2wg"
                                              : tile_tag_for(d);
                for (const char* dtype : {"fp16", "bf16"}) {
                    for (int v = 0; v < 8; ++v) {
                        if (sm90 && sm90_variants(d) == 4 && !(v & 4)) continue;  // masked variants only
                        out.push_back(std::string(sm90 ? "sm90_bwd_" : "sm80_bwd_") + dtype + "_hdim" + std::to_string(d) +
                                      ((v & 4) ? "_local" : "") + ((v & 2) ? "_softcap" : "") + ((v & 1) ? "_det" : "") +
                                      "_" + tile);
                    }
                }
            }
        }
        return out;
    }();
    return names;
}

}  // namespace

int32_t backward_kernel_count() { return static_cast<int32_t>(all_names().size()); }

const char* backward_kernel_name_at(int32_t index) {
    const auto& names = all_names();
    return index >= 0 && index < static_cast<int32_t>(names.size()) ? names[index].c_str() : nullptr;
}

const char* backward_kernel_name(bool bf16, int32_t kernel_d, bool local, bool softcap, bool deterministic, bool sm90) {
    const int32_t* dims = nullptr;
    const int32_t count = forward_compiled_head_dims(&dims);
    int32_t index = 0;
    if (sm90) {
        // Past the sm80 names; per sm90 head dim two dtypes of sm90_variants each.
        index = 16 * count;
        for (int32_t i = 0; i < count && dims[i] != kernel_d; ++i) index += 2 * sm90_variants(dims[i]);
        const int variants = sm90_variants(kernel_d);
        index += (bf16 ? variants : 0) + (variants == 8 && local ? 4 : 0) + (softcap ? 2 : 0) + (deterministic ? 1 : 0);
    } else {
        for (int32_t i = 0; i < count && dims[i] != kernel_d; ++i) index += 16;
        index += (bf16 ? 8 : 0) + (local ? 4 : 0) + (softcap ? 2 : 0) + (deterministic ? 1 : 0);
    }
    const char* name = backward_kernel_name_at(index);
    return name != nullptr ? name : "bwd_unknown";
}

bool backward_sm90_serves(int32_t kernel_d, int32_t cc, std::string* why) {
    const char* reason = nullptr;
    if (!kHasSm90a) {
        reason = "this build has no sm_90a code (configure with FA_CUDA_ARCHS containing 90a)";
    } else if (cc != 0 && cc != 90) {
        reason = "the wgmma kernels run on compute capability 9.0 only";
    } else if (!bwd_sm90_head_dim(kernel_d)) {
        reason = "the sm90 backward serves the head dims of the 64, 128 and 256 kernels (33..64, 97..128 and "
                 "193..256 in a build of every head dim)";
    }
    if (reason != nullptr && why != nullptr) *why = reason;
    return reason == nullptr;
}

int32_t backward_sm90_smem_bytes(int32_t kernel_d) {
    return kernel_d == 64    ? sm90::BwdTraits90<64>::kSmemBytes
           : kernel_d == 128 ? sm90::BwdTraits90<128>::kSmemBytes
                             : sm90::BwdTraits90<256>::kSmemBytes;
}

int32_t backward_block_n(int32_t kernel_d) {
    return sm80::with_head_dim(kernel_d, [](auto d) { return int32_t{sm80::BwdTile<decltype(d)::value>::kBlockN}; });
}

int32_t backward_smem_bytes(int32_t kernel_d) {
    return sm80::with_head_dim(kernel_d, [](auto d) { return int32_t{sm80::BwdTraits<__half, decltype(d)::value>::kSmemBytes}; });
}

BwdWorkspaceLayout bwd_workspace_layout(const FwdParams& f, int32_t kernel_d, bool deterministic) {
    const bool varlen = f.cu_seqlens_q != nullptr;
    const size_t slots = varlen ? static_cast<size_t>(f.hq) * f.total_q : static_cast<size_t>(f.b) * f.hq * f.sq;
    const auto round = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
    BwdWorkspaceLayout w{};
    w.dq_accum = round(slots * kernel_d * sizeof(float));
    w.dsum = round(slots * sizeof(float));
    w.lse_log2 = round(slots * sizeof(float));
    const size_t m_blocks = (static_cast<size_t>(f.sq) + kBwdMinBlockM - 1) / kBwdMinBlockM;
    w.sem = deterministic ? round(static_cast<size_t>(f.b) * f.hq * m_blocks * sizeof(int32_t)) : 0;
    w.total = w.dq_accum + w.dsum + w.lse_log2 + w.sem;
    return w;
}

int launch_backward(BwdParams& p, const LaunchInfo& info, void* stream, const char** kernel_name) {
    const auto s = static_cast<cudaStream_t>(stream);
    if (p.f.dtype == DType::BFloat16) return run_for_head_dim<__nv_bfloat16>(p.kernel_d, p, info, s, kernel_name);
    return run_for_head_dim<__half>(p.kernel_d, p, info, s, kernel_name);
}

}  // namespace fa
