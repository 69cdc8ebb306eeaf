// Runtime -> compile-time switch of the backward pass (dtype, head dim), and the workspace layout the
// host side sizes and carves. Head dims without their own instantiation run the next larger one, as
// in the forward (fwd_dispatch.cu).
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "bwd_params.h"
#include "sm80/bwd_instances.h"
#include "sm80/bwd_traits.h"

namespace fa {

namespace {
template <typename T>
int run_for_head_dim(int32_t kernel_d, BwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name) {
    switch (kernel_d) {
#if defined(FA_HAS_HDIM32)
        case 32: return sm80::run_bwd<T, 32>(p, info, stream, name);
#endif
#if defined(FA_HAS_HDIM64)
        case 64: return sm80::run_bwd<T, 64>(p, info, stream, name);
#endif
#if defined(FA_HAS_HDIM96)
        case 96: return sm80::run_bwd<T, 96>(p, info, stream, name);
#endif
#if defined(FA_HAS_HDIM128)
        case 128: return sm80::run_bwd<T, 128>(p, info, stream, name);
#endif
#if defined(FA_HAS_HDIM192)
        case 192: return sm80::run_bwd<T, 192>(p, info, stream, name);
#endif
#if defined(FA_HAS_HDIM256)
        case 256: return sm80::run_bwd<T, 256>(p, info, stream, name);
#endif
        default: return static_cast<int>(cudaErrorInvalidValue);  // validation rejects these first
    }
}

constexpr int32_t kCompiled[] = {
#if defined(FA_HAS_HDIM32)
    32,
#endif
#if defined(FA_HAS_HDIM64)
    64,
#endif
#if defined(FA_HAS_HDIM96)
    96,
#endif
#if defined(FA_HAS_HDIM128)
    128,
#endif
#if defined(FA_HAS_HDIM192)
    192,
#endif
#if defined(FA_HAS_HDIM256)
    256,
#endif
    0};  // sentinel

template <int D>
std::string tile_tag() {
    using Tile = sm80::BwdTile<D>;
    return std::to_string(Tile::kBlockM) + "x" + std::to_string(Tile::kBlockN) + "_8w";
}

std::string tile_tag_for(int32_t d) {
    switch (d) {
        case 32: return tile_tag<32>();
        case 64: return tile_tag<64>();
        case 96: return tile_tag<96>();
        case 128: return tile_tag<128>();
        case 192: return tile_tag<192>();
        default: return tile_tag<256>();
    }
}

// Every variant of every compiled head dim: per head dim, fp16 then bf16, then the eight
// (local, softcap, deterministic) combinations in binary order. Built once.
const std::vector<std::string>& all_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> out;
        for (const int32_t d : kCompiled) {
            if (d == 0) continue;
            for (const char* dtype : {"fp16", "bf16"}) {
                for (int v = 0; v < 8; ++v) {
                    out.push_back(std::string("sm80_bwd_") + dtype + "_hdim" + std::to_string(d) + ((v & 4) ? "_local" : "") +
                                  ((v & 2) ? "_softcap" : "") + ((v & 1) ? "_det" : "") + "_" + tile_tag_for(d));
                }
            }
        }
        return out;
    }();
    return names;
}

template <int D>
constexpr int32_t smem_of() {
    return sm80::BwdTraits<__half, D>::kSmemBytes;
}
}  // namespace

int32_t backward_kernel_count() { return static_cast<int32_t>(all_names().size()); }

const char* backward_kernel_name_at(int32_t index) {
    const auto& names = all_names();
    return index >= 0 && index < static_cast<int32_t>(names.size()) ? names[index].c_str() : nullptr;
}

const char* backward_kernel_name(bool bf16, int32_t kernel_d, bool local, bool softcap, bool deterministic) {
    int32_t index = 0;
    for (const int32_t k : kCompiled) {
        if (k == kernel_d || k == 0) break;
        index += 16;
    }
    index += (bf16 ? 8 : 0) + (local ? 4 : 0) + (softcap ? 2 : 0) + (deterministic ? 1 : 0);
    const char* name = backward_kernel_name_at(index);
    return name != nullptr ? name : "sm80_bwd_unknown";
}

int32_t backward_block_m(int32_t kernel_d) {
    switch (kernel_d) {
        case 32: return sm80::BwdTile<32>::kBlockM;
        case 64: return sm80::BwdTile<64>::kBlockM;
        case 96: return sm80::BwdTile<96>::kBlockM;
        case 128: return sm80::BwdTile<128>::kBlockM;
        case 192: return sm80::BwdTile<192>::kBlockM;
        default: return sm80::BwdTile<256>::kBlockM;
    }
}

int32_t backward_block_n(int32_t kernel_d) {
    switch (kernel_d) {
        case 32: return sm80::BwdTile<32>::kBlockN;
        case 64: return sm80::BwdTile<64>::kBlockN;
        case 96: return sm80::BwdTile<96>::kBlockN;
        case 128: return sm80::BwdTile<128>::kBlockN;
        case 192: return sm80::BwdTile<192>::kBlockN;
        default: return sm80::BwdTile<256>::kBlockN;
    }
}

int32_t backward_smem_bytes(int32_t kernel_d) {
    switch (kernel_d) {
        case 32: return smem_of<32>();
        case 64: return smem_of<64>();
        case 96: return smem_of<96>();
        case 128: return smem_of<128>();
        case 192: return smem_of<192>();
        default: return smem_of<256>();
    }
}

BwdWorkspaceLayout bwd_workspace_layout(const FwdParams& f, int32_t kernel_d, int32_t block_m, bool deterministic) {
    const bool varlen = f.cu_seqlens_q != nullptr;
    const size_t slots = varlen ? static_cast<size_t>(f.hq) * f.total_q : static_cast<size_t>(f.b) * f.hq * f.sq;
    const auto round = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
    BwdWorkspaceLayout w{};
    w.dq_accum = round(slots * kernel_d * sizeof(float));
    w.dsum = round(slots * sizeof(float));
    w.lse_log2 = round(slots * sizeof(float));
    const size_t m_blocks = (static_cast<size_t>(f.sq) + block_m - 1) / block_m;
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
