// The kernel registry (registry.h): from (path, pass, dtype, head dim, features) to a compiled kernel, its
// name and its compile-time facts. The only place that knows which families exist: a new path adds its
// rows to has_kernel / smem_bytes / tile_tag and its branch to a launch; the rest is shared.
#include "registry.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "common/bwd_prepost.cuh"
#include "common/dropout_mask.cuh"  // the keep-mask kernel a dropout call may ask for after the forward
#include "common/features.h"
#include "common/head_dims.h"
#include "instances.h"
#include "sm80/bwd_traits.h"
#include "sm80/decode_launch.cuh"  // the append, combine and advance kernels around the attention kernel
#include "sm80/decode_traits.h"
#include "sm80/fwd_traits.h"
#include "sm90/bwd_traits.h"
#include "sm90/fwd_traits.h"

namespace fa {
namespace kernels {

namespace {

// Head dims compiled into this build (CMake's FA_HEAD_DIMS), ascending.
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
    0};  // sentinel, keeps the array non-empty
constexpr int32_t kCompiledCount = static_cast<int32_t>(sizeof(kCompiled) / sizeof(kCompiled[0])) - 1;

#ifdef FA_HAS_SM90A
constexpr bool kHasSm90a = true;
#else
constexpr bool kHasSm90a = false;
#endif

// The sm90 forward's kernel head dim ("class") for head dim d: the smallest compiled 64, 128, 192 or 256 at least d;
// 0 when none is.
int32_t sm90_fwd_class(int32_t d) {
    for (int32_t i = 0; i < kCompiledCount; ++i) {
        if (sm90::fwd_head_dim(kCompiled[i]) && kCompiled[i] >= d) return kCompiled[i];
    }
    return 0;
}

// The sm90 backward's kernel head dim for head dim d: the smallest compiled 64, 128, 192 or 256 at least d; 0 when
// none is. Head dims between its kernels (96, 160, ...) run the next one up with zero-filled columns, as the
// forward's do.
int32_t sm90_bwd_class(int32_t d) {
    for (int32_t i = 0; i < kCompiledCount; ++i) {
        if (sm90::bwd_head_dim(kCompiled[i]) && kCompiled[i] >= d) return kCompiled[i];
    }
    return 0;
}

// The same for the fp8 forward, whose classes are 128 and 256.
int32_t sm90_fwd_fp8_class(int32_t d) {
    for (int32_t i = 0; i < kCompiledCount; ++i) {
        if (sm90::fwd_fp8_head_dim(kCompiled[i]) && kCompiled[i] >= d) return kCompiled[i];
    }
    return 0;
}

// Input dtypes as registry indices, in listing order: fp16, bf16, e4m3.
constexpr int kDtypes = 3;
constexpr int kE4m3 = 2;
int dtype_index(DType t) { return t == DType::BFloat16 ? 1 : t == DType::Float8E4M3 ? kE4m3 : 0; }
DType dtype_at(int i) { return i == 1 ? DType::BFloat16 : i == kE4m3 ? DType::Float8E4M3 : DType::Float16; }
const char* dtype_tag(int i) { return i == 1 ? "bf16" : i == kE4m3 ? "e4m3" : "fp16"; }

// The kernel head dim a (pass, path, dtype index) runs for a head dim whose sm80 kernel head dim is kernel_d.
int32_t path_kernel_d(Pass pass, Path path, int32_t kernel_d, int dt = 0) {
    if (path != Path::Sm90 || pass == Pass::Decode) return kernel_d;
    if (pass == Pass::Backward) return sm90_bwd_class(kernel_d);
    return dt == kE4m3 ? sm90_fwd_fp8_class(kernel_d) : sm90_fwd_class(kernel_d);
}

int32_t compiled_index(int32_t kernel_d) {
    for (int32_t i = 0; i < kCompiledCount; ++i) {
        if (kCompiled[i] == kernel_d) return i;
    }
    return -1;
}

const char* pass_tag(Pass pass) { return pass == Pass::Forward ? "fwd" : pass == Pass::Backward ? "bwd" : "decode"; }
const char* path_tag(Path path) { return path == Path::Sm90 ? "sm90" : "sm80"; }

// The feature bits a (pass, path, head dim) has variants for, and whether a combination is compiled.
uint32_t feature_axes(Pass pass) {
    switch (pass) {
        case Pass::Forward: return feature::kLocal | feature::kSoftcap | feature::kDropout | feature::kPaged;
        case Pass::Backward: return feature::kLocal | feature::kSoftcap | feature::kDeterministic | feature::kDropout;
        default: return feature::kPaged | feature::kFp8Cache;
    }
}
// Whether the sm90 class `cls` of `pass` has dropout kernels in this build (FA_SM90_FWD_DROPOUT,
// sm90::fwd_dropout_kernel; FA_SM90_BWD_DROPOUT, sm90::bwd_dropout_kernel; 16-bit, square head dims).
bool sm90_dropout_class(Pass pass, int32_t cls) {
    return pass == Pass::Forward ? sm90::fwd_dropout_kernel(cls, false)
                                 : pass == Pass::Backward && sm90::bwd_dropout_kernel(cls);
}
bool variant_compiled(Pass pass, Path path, int32_t kernel_d, uint32_t features) {
    // Dropout kernels: local ones, on the sm80 path, and on the sm90 classes where the build has them (16-bit only:
    // the registry's loop skips fp8's; never the V head dim pairs').
    if ((features & feature::kDropout) &&
        (!(features & feature::kLocal) || (path == Path::Sm90 && !sm90_dropout_class(pass, kernel_d)))) {
        return false;
    }
    // The forward's paged K/V kernels: local ones without dropout (common/fwd_variant.h; fp16 and bf16 only: the
    // registry's loop skips fp8's).
    if (pass == Pass::Forward && (features & feature::kPaged) &&
        (!(features & feature::kLocal) || (features & feature::kDropout))) {
        return false;
    }
    // The sm90 backward at 192 and 256 has only masked kernels (they serve the unmasked calls too).
    return !(pass == Pass::Backward && path == Path::Sm90 && sm90::bwd_split(kernel_d) && !(features & feature::kLocal));
}

template <int D>
std::string tile_tag(Pass pass, Path path, int dt, uint32_t features) {
    const auto s = [](int v) { return std::to_string(v); };
    switch (pass) {
        case Pass::Forward: {
            // An sm90 forward tile (traits Tr): rows x keys, warpgroups, stages; _psmem: P staged in shared memory for
            // an SS P V product.
            const auto sm90_tile = [&](auto tr) {
                using Tr = decltype(tr);
                return s(Tr::kBlockM) + "x" + s(Tr::kBlockN) + "_" + s(Tr::kThreads / 128) + "wg" + s(Tr::kStages) + "s" +
                       (Tr::kPSmem ? "_psmem" : "");
            };
            if (path == Path::Sm90 && dt == kE4m3) {
                if constexpr (sm90::fwd_fp8_head_dim(D)) {
                    // The wide head-dim-128 kernel (feature::kWide: FwdTraits90Fp8Wide's tile, chosen per call) or the build's.
                    if constexpr (D == sm90::fwd_wide_head_dim(true)) {
                        if (features & feature::kWide) return sm90_tile(sm90::FwdTraits90WideOf<true>{});
                    }
                    return sm90_tile(sm90::FwdTraits90<D, true>{});
                }
                return "none";
            }
            if (path == Path::Sm90) {
                if constexpr (sm90::fwd_head_dim(D)) {
                    // The wide head-dim-64 kernel (feature::kWide: FwdTraits90Wide's tile, chosen per call) or the build's.
                    if constexpr (D == sm90::fwd_wide_head_dim(false)) {
                        if (features & feature::kWide) return sm90_tile(sm90::FwdTraits90WideOf<false>{});
                    }
                    // Paged K/V: the paged kernels' tile (sm90::FwdTraits90Of; 64 keys at head dim 256).
                    if (features & feature::kPaged) return sm90_tile(sm90::FwdTraits90Of<D, false, D, true>{});
                    return sm90_tile(sm90::FwdTraits90Of<D>{});
                }
                return "none";
            }
            using Tile = sm80::FwdTile<D>;
            return s(Tile::kBlockM) + "x" + s(Tile::kBlockN) + "_" + s(Tile::kWarps) + "w";
        }
        case Pass::Backward: {
            if (path == Path::Sm90) {
                if constexpr (sm90::bwd_head_dim(D)) {
                    using Tr = sm90::BwdTraits90<D>;
                    return s(Tr::kBlockM) + "x" + s(Tr::kBlockN) + "_" + s(Tr::kThreads / 128) + "wg";
                }
                return "none";
            }
            using Tr = sm80::BwdTraits<__half, D>;
            return s(Tr::kBlockM) + "x" + s(Tr::kBlockN) + "_" + s(Tr::kWarps) + "w";
        }
        default: {
            if (features & feature::kFp8Cache) {
                using Tr = sm80::DecodeTraitsFp8For<__half, D>;
                // A tile other than the default (decode_traits.h's FA_DECODE_FP8_* overrides) also names its MinBlocks.
                return s(Tr::kBlockM) + "x" + s(Tr::kBlockN) + "_" + s(Tr::kWarps) + "w" + s(Tr::kStages) + "s" +
                       (sm80::DecodeTileFp8<D>::kTagged ? s(Tr::kMinBlocks) + "b" : "");
            }
            using Tr = sm80::DecodeTraitsFor<__half, D>;
            return s(Tr::kBlockM) + "x" + s(Tr::kBlockN) + "_" + s(Tr::kWarps) + "w" + s(Tr::kStages) + "s";
        }
    }
}

// (An fp8 KV cache's decode kernels: "_e4m3kv" after the head dim, dt being q's dtype.)
std::string name_of(Pass pass, Path path, int dt, int32_t kernel_d, uint32_t features) {
    return std::string(path_tag(path)) + "_" + pass_tag(pass) + "_" + dtype_tag(dt) + "_hdim" +
           std::to_string(kernel_d) + ((features & feature::kFp8Cache) ? "_e4m3kv" : "") +
           ((features & feature::kLocal) ? "_local" : "") +
           ((features & feature::kSoftcap) ? "_softcap" : "") + ((features & feature::kDeterministic) ? "_det" : "") +
           ((features & feature::kPaged) ? "_paged" : "") + ((features & feature::kDropout) ? "_dropout" : "") + "_" +
           with_head_dim(kernel_d, [&](auto d) { return tile_tag<decltype(d)::value>(pass, path, dt, features); });
}

// FlashAttention-3's V head dim pairs, whose kernels (the sm80 forward's sm80::FwdTileV / fwd_v_pair and backward's,
// the sm90 forward's and backward's) are compiled with the head dim d (FA_HEAD_DIMS): a pair's index in kVPairs, or -1.
struct VPair {
    int32_t d, dv;
};
constexpr VPair kVPairs[] = {{192, 128}, {64, 512}};
constexpr int kVPairCount = 2;
int v_pair_index(int32_t d, int32_t dv) {
    for (int i = 0; i < kVPairCount; ++i) {
        if (kVPairs[i].d == d && kVPairs[i].dv == dv && compiled_index(d) >= 0) return i;
    }
    return -1;
}

template <int D, int DV>
std::string v_tile_tag() {
    using Tile = sm80::FwdTileV<D, DV>;
    const auto s = [](int v) { return std::to_string(v); };
    return s(Tile::kBlockM) + "x" + s(Tile::kBlockN) + "_" + s(Tile::kWarps) + "w";
}

std::string v_name_of(Pass pass, int dt, int pair, uint32_t features) {
    const VPair v = kVPairs[pair];
    const auto s = [](int x) { return std::to_string(x); };
    // The backward's pair kernel has the tile of its head dim D (sm80::BwdTile<D>).
    using BTr = sm80::BwdTraits<__half, 192>;
    const std::string tile = pass == Pass::Backward ? s(BTr::kBlockM) + "x" + s(BTr::kBlockN) + "_" + s(BTr::kWarps) + "w"
                             : pair == 0          ? v_tile_tag<192, 128>()
                                                  : v_tile_tag<64, 512>();
    return std::string("sm80_") + pass_tag(pass) + "_" + dtype_tag(dt) + "_hdim" + s(v.d) + "v" + s(v.dv) +
           ((features & feature::kLocal) ? "_local" : "") + ((features & feature::kSoftcap) ? "_softcap" : "") +
           ((features & feature::kDeterministic) ? "_det" : "") + ((features & feature::kPaged) ? "_paged" : "") +
           ((features & feature::kDropout) ? "_dropout" : "") + "_" + tile;
}

// Whether the backward has the pair's kernels: (192, 128) only, as FlashAttention-3's backward.
bool v_pair_backward(int pair) { return pair == 0; }

// Whether the sm90 path has the pair's kernels (in a build with sm_90a code): the forward both pairs, sm90::FwdTraits90
// with DV = 128, and DV = 512 in two CTAs of 256 O columns each (its kVChunks); the backward (192, 128), which is also
// v_pair_backward's only pair (sm90::BwdTraits90 with DV = 128).
bool v_pair_sm90(int pair) { return kHasSm90a && sm90::fwd_v_pair(kVPairs[pair].d, kVPairs[pair].dv); }

// f(std::integral_constant<int, D>, std::integral_constant<int, DV>) for pair's (D, DV).
static_assert(kVPairCount == 2 && kVPairs[0].d == 192 && kVPairs[1].d == 64, "with_v_pair knows the pairs");
template <class F>
auto with_v_pair(int pair, F&& f) {
    return pair == 0 ? f(std::integral_constant<int, 192>{}, std::integral_constant<int, 128>{})
                     : f(std::integral_constant<int, 64>{}, std::integral_constant<int, 512>{});
}

// The sm90 pair kernels' names, in the style of name_of: sm90_fwd_<dtype>_hdim192v128[_local][_softcap][_paged]_<tile>
// and sm90_bwd_<dtype>_hdim192v128_local[_softcap][_det]_<tile> (the backward's are masked only, as at head dim 192).
std::string v90_name_of(Pass pass, int dt, int pair, uint32_t features) {
    const VPair v = kVPairs[pair];
    const auto s = [](int x) { return std::to_string(x); };
    std::string tile;
    if (pass == Pass::Backward) {  // (192, 128) only (v_pair_backward)
        using Tr = sm90::BwdTraits90<192, 128>;
        tile = s(Tr::kBlockM) + "x" + s(Tr::kBlockN) + "_" + s(Tr::kThreads / 128) + "wg";
    } else {
        tile = with_v_pair(pair, [&](auto d, auto dv) {
            using Tr = sm90::FwdTraits90<decltype(d)::value, false, decltype(dv)::value>;
            return s(Tr::kBlockM) + "x" + s(Tr::kBlockN) + "_" + s(Tr::kThreads / 128) + "wg" + s(Tr::kStages) + "s";
        });
    }
    return std::string("sm90_") + pass_tag(pass) + "_" + dtype_tag(dt) + "_hdim" + s(v.d) + "v" + s(v.dv) +
           ((features & feature::kLocal) ? "_local" : "") + ((features & feature::kSoftcap) ? "_softcap" : "") +
           ((features & feature::kDeterministic) ? "_det" : "") + ((features & feature::kPaged) ? "_paged" : "") + "_" +
           tile;
}

// Every kernel of the build, and the index of each (pass, path, dtype, head dim, features).
struct Registry {
    std::vector<std::string> names;
    int32_t index[3][2][kDtypes][6][64];  // pass, path, dtype, compiled head dim, features -> name index (-1: none)
    int32_t v_index[2][kVPairCount][2][32];  // forward/backward, V head dim pair, fp16/bf16, features -> name index
    int32_t v90_index[2][kVPairCount][2][32];  // the sm90 ones': forward/backward, pair, fp16/bf16, features -> index
    int32_t wide_index[kDtypes][2];            // the sm90 forward's wide kernels: dtype, softcap -> index
};

const Registry& registry() {
    static const Registry r = [] {
        Registry out;
        std::memset(out.index, 0xff, sizeof(out.index));  // every entry -1: no kernel
        std::memset(out.v_index, 0xff, sizeof(out.v_index));
        std::memset(out.v90_index, 0xff, sizeof(out.v90_index));
        std::memset(out.wide_index, 0xff, sizeof(out.wide_index));
        for (const Pass pass : {Pass::Forward, Pass::Backward, Pass::Decode}) {
            const uint32_t axes = feature_axes(pass);
            for (const Path path : {Path::Sm80, Path::Sm90}) {
                for (int32_t i = 0; i < kCompiledCount; ++i) {
                    const int32_t d = kCompiled[i];
                    for (int dt = 0; dt < kDtypes; ++dt) {
                        if (!has_kernel(pass, path, d, dtype_at(dt)) || path_kernel_d(pass, path, d, dt) != d) continue;
                        // Variants in binary order of (fp8 cache, local, softcap, deterministic, paged, dropout), the
                        // first the highest bit (decode: the 16-bit cache's kernels, then the fp8 cache's).
                        for (uint32_t v = 0; v < 64; ++v) {
                            const uint32_t features = ((v & 32) ? feature::kFp8Cache : 0u) | ((v & 16) ? feature::kLocal : 0u) |
                                                      ((v & 8) ? feature::kSoftcap : 0u) | ((v & 4) ? feature::kDeterministic : 0u) |
                                                      ((v & 2) ? feature::kPaged : 0u) | ((v & 1) ? feature::kDropout : 0u);
                            if ((features & ~axes) != 0 || !variant_compiled(pass, path, d, features)) continue;
                            if ((features & (feature::kPaged | feature::kDropout)) && pass == Pass::Forward && dt == kE4m3) {
                                continue;
                            }
                            // An fp8 cache goes with fp16/bf16 queries (has_decode_kernel).
                            if ((features & feature::kFp8Cache) && !has_decode_kernel(d, dtype_at(dt), DType::Float8E4M3)) {
                                continue;
                            }
                            out.index[static_cast<int>(pass)][static_cast<int>(path)][dt][i][features] =
                                static_cast<int32_t>(out.names.size());
                            out.names.push_back(name_of(pass, path, dt, d, features));
                        }
                    }
                }
            }
            // The kernels of a V head dim other than q's (sm80, fp16 and bf16; the backward's for (192, 128) only).
            if (pass != Pass::Decode) {
                const int pi = pass == Pass::Forward ? 0 : 1;
                for (int pair = 0; pair < kVPairCount; ++pair) {
                    if (v_pair_index(kVPairs[pair].d, kVPairs[pair].dv) < 0 || (pi == 1 && !v_pair_backward(pair))) continue;
                    for (int dt = 0; dt < 2; ++dt) {
                        for (uint32_t v = 0; v < 32; ++v) {
                            const uint32_t features = ((v & 16) ? feature::kLocal : 0u) | ((v & 8) ? feature::kSoftcap : 0u) |
                                                      ((v & 4) ? feature::kDeterministic : 0u) | ((v & 2) ? feature::kPaged : 0u) |
                                                      ((v & 1) ? feature::kDropout : 0u);
                            if ((features & ~axes) != 0 || !variant_compiled(pass, Path::Sm80, kVPairs[pair].d, features)) {
                                continue;
                            }
                            out.v_index[pi][pair][dt][features] = static_cast<int32_t>(out.names.size());
                            out.names.push_back(v_name_of(pass, dt, pair, features));
                        }
                    }
                }
            }
            // The sm90 forward's wide kernels: head dim 64's (16-bit; without and with softcap), the build's names with
            // FwdTraits90Wide's tile, "sm90_fwd_<dtype>_hdim64[_softcap]_192x128_4wg3s_psmem", and fp8 head dim 128's
            // (without softcap), FwdTraits90Fp8Wide's, "sm90_fwd_e4m3_hdim128_128x224_3wg2s".
            if (pass == Pass::Forward) {
                for (int dt = 0; dt < kDtypes; ++dt) {
                    const bool fp8 = dt == kE4m3;
                    const int d = sm90::fwd_wide_head_dim(fp8);
                    if (!sm90::fwd_wide(fp8) || compiled_index(d) < 0 || !has_kernel(pass, Path::Sm90, d, dtype_at(dt))) {
                        continue;
                    }
                    for (int softcap = 0; softcap < (sm90::fwd_wide_softcap(fp8) ? 2 : 1); ++softcap) {
                        out.wide_index[dt][softcap] = static_cast<int32_t>(out.names.size());
                        out.names.push_back(name_of(pass, Path::Sm90, dt, d,
                                                    feature::kWide | (softcap != 0 ? feature::kSoftcap : 0u)));
                    }
                }
            }
            // The sm90 forward's pair kernels: the four mask/softcap variants and the two paged ones (dropout is
            // sm80-only).
            if (pass == Pass::Forward) {
                for (int pair = 0; pair < kVPairCount; ++pair) {
                    if (v_pair_index(kVPairs[pair].d, kVPairs[pair].dv) < 0 || !v_pair_sm90(pair)) continue;
                    for (int dt = 0; dt < 2; ++dt) {
                        for (const uint32_t features :
                             {0u, feature::kSoftcap, feature::kLocal, feature::kLocal | feature::kSoftcap,
                              feature::kLocal | feature::kPaged, feature::kLocal | feature::kSoftcap | feature::kPaged}) {
                            out.v90_index[0][pair][dt][features] = static_cast<int32_t>(out.names.size());
                            out.names.push_back(v90_name_of(pass, dt, pair, features));
                        }
                    }
                }
            }
            // The sm90 backward's pair kernels ((192, 128)): the variants of its head dim's kernel (masked only, with
            // softcap and deterministic ones; no dropout), in the order of the others.
            if (pass == Pass::Backward) {
                for (int pair = 0; pair < kVPairCount; ++pair) {
                    if (v_pair_index(kVPairs[pair].d, kVPairs[pair].dv) < 0 || !v_pair_sm90(pair) || !v_pair_backward(pair)) {
                        continue;
                    }
                    for (int dt = 0; dt < 2; ++dt) {
                        for (uint32_t v = 0; v < 32; ++v) {
                            const uint32_t features = ((v & 16) ? feature::kLocal : 0u) | ((v & 8) ? feature::kSoftcap : 0u) |
                                                      ((v & 4) ? feature::kDeterministic : 0u) | ((v & 2) ? feature::kPaged : 0u) |
                                                      ((v & 1) ? feature::kDropout : 0u);
                            if ((features & ~axes) != 0 || (features & feature::kDropout) ||
                                !variant_compiled(pass, Path::Sm90, kVPairs[pair].d, features)) {
                                continue;
                            }
                            out.v90_index[1][pair][dt][features] = static_cast<int32_t>(out.names.size());
                            out.names.push_back(v90_name_of(pass, dt, pair, features));
                        }
                    }
                }
            }
            // The decode pass's kernels around the attention kernel (and the append of an fp8 cache, which quantizes).
            if (pass == Pass::Decode && kCompiledCount > 0) {
                for (const char* dtype : {"fp16", "bf16"}) {
                    out.names.push_back(std::string("sm80_decode_append_") + dtype);
                    out.names.push_back(std::string("sm80_decode_combine_") + dtype);
                }
                for (const char* dtype : {"fp16", "bf16"}) {
                    out.names.push_back(std::string("sm80_decode_append_") + dtype + "_e4m3kv");
                }
            }
        }
        return out;
    }();
    return r;
}

const char* name_for(Pass pass, Path path, int dt, int32_t kernel_d, uint32_t features) {
    if (features & feature::kWide) {
        const int32_t at = registry().wide_index[dt][(features & feature::kSoftcap) ? 1 : 0];
        return at < 0 ? "unknown_kernel" : registry().names[at].c_str();
    }
    const int32_t i = compiled_index(path_kernel_d(pass, path, kernel_d, dt));
    const int32_t at = i < 0 ? -1 : registry().index[static_cast<int>(pass)][static_cast<int>(path)][dt][i][features & 63u];
    return at < 0 ? "unknown_kernel" : registry().names[at].c_str();
}

// The kernel block sizes of the backward main kernel of a path: (BlockM, BlockN).
struct BlockShape {
    int32_t m, n;
};
BlockShape bwd_block(Path path, int32_t kernel_d) {
    return with_head_dim(path_kernel_d(Pass::Backward, path, kernel_d), [&](auto hd) {
        constexpr int D = decltype(hd)::value;
        if constexpr (sm90::bwd_head_dim(D)) {
            if (path == Path::Sm90) return BlockShape{sm90::BwdTraits90<D>::kBlockM, sm90::BwdTraits90<D>::kBlockN};
        }
        return BlockShape{sm80::BwdTraits<__half, D>::kBlockM, sm80::BwdTraits<__half, D>::kBlockN};
    });
}

// The main kernel of the backward: sm80 or sm90 family for (T, kernel head dim).
template <typename T>
int run_bwd_main_for(Path path, int32_t kernel_d, const BwdParams& p, const LaunchInfo& info, cudaStream_t stream,
                     uint32_t* features) {
    return with_compiled_head_dim(kernel_d, static_cast<int>(cudaErrorInvalidValue), [&](auto hd) {
        constexpr int D = decltype(hd)::value;
        const bool v_pair = p.f.dv != 0 && p.f.dv != p.f.d;  // a V head dim other than q's: the pair's kernel
#ifdef FA_HAS_SM90A
        if constexpr (sm90::bwd_head_dim(D)) {
            if (path == Path::Sm90 && v_pair) {  // (the host refuses every pair but (192, 128) first)
#if defined(FA_HAS_HDIM192)
                if constexpr (D == 192) {
                    if (p.f.d == 192 && p.f.dv == 128) {
                        return run_bwd_main<sm90::BwdFamily<T, 192, 128>>(p, info, stream, features);
                    }
                }
#endif
                return static_cast<int>(cudaErrorInvalidValue);
            }
            if (path == Path::Sm90) return run_bwd_main<sm90::BwdFamily<T, D, D>>(p, info, stream, features);
        }
#endif
        if (path != Path::Sm80) return static_cast<int>(cudaErrorInvalidValue);
        if (v_pair) {  // the sm80 pair kernel (the host refuses the rest)
#if defined(FA_HAS_HDIM192)
            if constexpr (D == 192) {
                if (p.f.dv == 128) return run_bwd_main<sm80::BwdFamily<T, 192, 128>>(p, info, stream, features);
            }
#endif
            return static_cast<int>(cudaErrorInvalidValue);
        }
        return run_bwd_main<sm80::BwdFamily<T, D, D>>(p, info, stream, features);
    });
}

// The whole backward: preprocess (and the sinks' gradient), main kernel, convert, on one stream. p's workspace
// pointers are set.
template <typename T>
int launch_backward_t(Path path, BwdParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features) {
    const FwdParams& f = p.f;
    const BlockShape block = bwd_block(path, p.kernel_d);
    p.m_blocks = static_cast<int32_t>((static_cast<int64_t>(f.sq) + block.m - 1) / block.m);
    p.n_blocks = static_cast<int32_t>((static_cast<int64_t>(f.sk) + block.n - 1) / block.n);
    const bool varlen = f.cu_seqlens_q != nullptr;
    const int64_t rows = varlen ? f.total_q : f.sq;
    const int64_t heads = varlen ? f.hq : static_cast<int64_t>(f.b) * f.hq;
    p.dq_frag_rows = path == Path::Sm90 ? kDqFragRows : 0;  // the sm90 kernel's dQ layout

    cudaError_t err = cudaSuccess;
    if (p.deterministic && p.m_blocks > 0) {
        const size_t counters = static_cast<size_t>(p.dq_copies) * f.b * f.hq * p.m_blocks;
        p.sem_gave_up = p.sem + counters;
        p.device_flags = info.device_flags;
        p.turn_wait_ns = info.turn_wait_ns;
        err = cudaMemsetAsync(p.sem, 0, sizeof(int32_t) * (counters + 1), stream);
        if (err != cudaSuccess) return static_cast<int>(err);
    }
    const int64_t pre_blocks = heads * ((rows + kPreRowsPerBlock - 1) / kPreRowsPerBlock);
    if (pre_blocks > INT32_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
    if (pre_blocks > 0) {
        bwd_preprocess<T><<<static_cast<unsigned>(pre_blocks), 256, 0, stream>>>(p);
        if ((err = cudaGetLastError()) != cudaSuccess) return static_cast<int>(err);
    }
    if (p.dsinks != nullptr) {  // the sinks' gradient from the preprocess partials (0 when there are no rows)
        bwd_sink_reduce<<<static_cast<unsigned>(f.hq), kSinkReduceThreads, 0, stream>>>(p);
        if ((err = cudaGetLastError()) != cudaSuccess) return static_cast<int>(err);
    }
    const int main = run_bwd_main_for<T>(path, p.kernel_d, p, info, stream, features);
    if (main != 0) return main;
    const int64_t conv_blocks = heads * ((rows * (f.d / 8) + kConvertThreads - 1) / kConvertThreads);
    if (conv_blocks > INT32_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
    if (conv_blocks > 0) {
        bwd_convert<T><<<static_cast<unsigned>(conv_blocks), kConvertThreads, 0, stream>>>(p);
        if ((err = cudaGetLastError()) != cudaSuccess) return static_cast<int>(err);
    }
    return 0;
}

// The whole decode: the append kernel (when k_new is set), the attention kernel, the combine kernel (when
// split) and the length advance (when asked), on one stream. Fp8Cache: k_cache/v_cache hold e4m3 bytes.
template <typename T, bool Fp8Cache>
int launch_decode_t(const DecodeParams& p0, const LaunchInfo& info, cudaStream_t stream, uint32_t* features) {
    DecodeParams p = p0;
    // FA_DECODE_CLUSTER_SPLITS: the splits merged inside clusters, without the combine kernel (sm80/decode_launch.cuh).
    if (sm80::decode_cluster_splits<T>(p, info)) p.cluster_splits = 1;
    if (p.k_new != nullptr) {
        const cudaError_t err = sm80::launch_decode_append<T, Fp8Cache>(p, info, stream);
        if (err != cudaSuccess) return static_cast<int>(err);
    }
    int err = with_compiled_head_dim(kernel_head_dim(p.d), static_cast<int>(cudaErrorInvalidValue), [&](auto hd) {
        return sm80::run_decode<T, decltype(hd)::value, Fp8Cache>(p, info, stream, features);
    });
    if (err == 0 && p.num_splits > 1 && p.cluster_splits == 0) {
        err = static_cast<int>(sm80::launch_decode_combine<T>(p, info, stream));
    }
    if (err == 0 && p.advance) err = static_cast<int>(sm80::launch_decode_advance<T>(p, stream));
    return err;
}

}  // namespace

int32_t kernel_head_dim(int32_t d) {
    if (d <= 0 || d % 8 != 0) return 0;
    for (int32_t i = 0; i < kCompiledCount; ++i) {
        if (kCompiled[i] >= d) return kCompiled[i];
    }
    return 0;
}

int32_t compiled_head_dims(const int32_t** dims) {
    if (dims) *dims = kCompiled;
    return kCompiledCount;
}

bool has_sm90_code() { return kHasSm90a; }

bool has_sm90_dropout(Pass pass, int32_t kernel_d) {
    return has_kernel(pass, Path::Sm90, kernel_d) &&
           sm90_dropout_class(pass, path_kernel_d(pass, Path::Sm90, kernel_d, dtype_index(DType::Float16)));
}

bool has_kernel(Pass pass, Path path, int32_t kernel_d) {
    if (compiled_index(kernel_d) < 0) return false;
    if (path == Path::Sm80) return true;
    if (!kHasSm90a) return false;
    if (pass == Pass::Forward) return sm90_fwd_class(kernel_d) != 0;
    return pass == Pass::Backward && sm90_bwd_class(kernel_d) != 0;
}

bool has_kernel(Pass pass, Path path, int32_t kernel_d, DType dtype) {
    if (dtype == DType::Float16 || dtype == DType::BFloat16) return has_kernel(pass, path, kernel_d);
    // fp8 (e4m3): the sm90 forward only (none in a build compiled with -DFA_NO_FP8).
#ifdef FA_NO_FP8
    return false;
#else
    return dtype == DType::Float8E4M3 && kHasSm90a && pass == Pass::Forward && path == Path::Sm90 &&
           compiled_index(kernel_d) >= 0 && sm90_fwd_fp8_class(kernel_d) != 0;
#endif
}

bool has_decode_kernel(int32_t kernel_d, DType dtype, DType cache_dtype) {
    if (dtype != DType::Float16 && dtype != DType::BFloat16) return false;
    if (cache_dtype != dtype && cache_dtype != DType::Float8E4M3) return false;
    return has_kernel(Pass::Decode, Path::Sm80, kernel_d);
}

int32_t decode_smem_bytes(int32_t kernel_d, DType cache_dtype) {
    if (cache_dtype != DType::Float8E4M3) return smem_bytes(Pass::Decode, Path::Sm80, kernel_d);
    return with_head_dim(kernel_d, [&](auto hd) -> int32_t {
        return sm80::DecodeTraitsFp8For<__half, decltype(hd)::value>::kSmemBytes;
    });
}

int32_t smem_bytes(Pass pass, Path path, int32_t kernel_d, DType dtype) {
    if (dtype != DType::Float8E4M3) return smem_bytes(pass, path, kernel_d);
    if (pass != Pass::Forward || path != Path::Sm90) return 0;  // no such kernel (has_kernel says no)
    return with_head_dim(path_kernel_d(pass, path, kernel_d, kE4m3), [&](auto hd) -> int32_t {
        constexpr int D = decltype(hd)::value;
        // (the build's kernel's: the wide one runs only where it fits too, sm90/fwd_launch.cuh fwd_fp8_wide_pays)
        if constexpr (sm90::fwd_fp8_head_dim(D)) return sm90::FwdTraits90<D, true>::kSmemBytes;
        return 0;
    });
}

int32_t smem_bytes(Pass pass, Path path, int32_t kernel_d) {
    return with_head_dim(path_kernel_d(pass, path, kernel_d), [&](auto hd) -> int32_t {
        constexpr int D = decltype(hd)::value;
        switch (pass) {
            case Pass::Forward: {
                if constexpr (sm90::fwd_head_dim(D)) {
                    // (the largest of the contiguous, the paged and the dropout kernels')
                    if (path == Path::Sm90) {
                        return std::max({sm90::FwdTraits90Of<D>::kSmemBytes, sm90::FwdTraits90Of<D, false, D, true>::kSmemBytes,
                                         sm90::FwdTraits90Of<D>::kSmemBytesDropout});
                    }
                }
                using Tile = sm80::FwdTile<D>;
                return sm80::FwdTraits<__half, D, Tile::kBlockM, Tile::kBlockN, Tile::kWarps, Tile::kMinBlocks>::kSmemBytes;
            }
            case Pass::Backward:
                if constexpr (sm90::bwd_head_dim(D)) {
                    if (path == Path::Sm90) return sm90::BwdTraits90<D>::kSmemBytes;
                }
                return sm80::BwdTraits<__half, D>::kSmemBytes;
            default: return sm80::DecodeTraitsFor<__half, D>::kSmemBytes;
        }
    });
}

int32_t bwd_block_n(Path path, int32_t kernel_d) { return bwd_block(path, kernel_d).n; }

int32_t run_kernel_d(Pass pass, Path path, int32_t kernel_d) { return path_kernel_d(pass, path, kernel_d); }

int32_t bwd_accum_d(int32_t kernel_d) {
    const int32_t sm90 = kHasSm90a ? sm90_bwd_class(kernel_d) : 0;
    return sm90 > kernel_d ? sm90 : kernel_d;
}

int32_t decode_num_splits(const DecodeParams& p, const LaunchInfo& info, int32_t requested, int32_t length_hint,
                          int32_t max_splits) {
    if (requested > 0) return requested;
    const bool fp8 = p.cache_dtype == DType::Float8E4M3;
    const int one_wave_min = sm80::decode_one_wave_min(fp8, p.block_table != nullptr, length_hint);
    return with_head_dim(kernel_head_dim(p.d), [&](auto hd) {
        using Tr16 = sm80::DecodeTraitsFor<__half, decltype(hd)::value>;
        using Tr8 = sm80::DecodeTraitsFp8For<__half, decltype(hd)::value>;
        const int64_t pairs = static_cast<int64_t>(p.b) * p.hkv * p.m_blocks;
        return fp8 ? sm80::choose_decode_splits(pairs, length_hint, Tr8::kBlockN, Tr8::kSmemBytes, Tr8::kMinBlocks,
                                                info.sm_count, info.smem_optin, max_splits, one_wave_min)
                   : sm80::choose_decode_splits(pairs, length_hint, Tr16::kBlockN, Tr16::kSmemBytes, Tr16::kMinBlocks,
                                                info.sm_count, info.smem_optin, max_splits, one_wave_min);
    });
}

int32_t kernel_count() { return static_cast<int32_t>(registry().names.size()); }

const char* kernel_name_at(int32_t index) {
    const auto& names = registry().names;
    return index >= 0 && index < static_cast<int32_t>(names.size()) ? names[index].c_str() : nullptr;
}

bool has_v_kernel(Pass pass, int32_t d, int32_t dv) {
    const int pair = v_pair_index(d, dv);
    return pair >= 0 && (pass == Pass::Forward || (pass == Pass::Backward && v_pair_backward(pair)));
}

bool has_v_kernel(Pass pass, Path path, int32_t d, int32_t dv) {
    if (path == Path::Sm80) return has_v_kernel(pass, d, dv);
    const int pair = v_pair_index(d, dv);
    return pair >= 0 && v_pair_sm90(pair) &&
           (pass == Pass::Forward || (pass == Pass::Backward && v_pair_backward(pair)));
}

int32_t v_smem_bytes(Pass pass, Path path, int32_t d, int32_t dv) {
    if (!has_v_kernel(pass, path, d, dv)) return 0;
    if (path == Path::Sm90) {
        if (pass == Pass::Backward) return sm90::BwdTraits90<192, 128>::kSmemBytes;  // its one pair
        return with_v_pair(v_pair_index(d, dv), [](auto dd, auto ddv) {
            return static_cast<int32_t>(sm90::FwdTraits90<decltype(dd)::value, false, decltype(ddv)::value>::kSmemBytes);
        });
    }
    return smem_bytes(pass, path, d);
}

int launch_forward(Path path, const FwdParams& params, const LaunchInfo& info, void* stream, const char** kernel_name) {
    const auto s = static_cast<cudaStream_t>(stream);
    FwdParams p = params;
    p.device_flags = info.device_flags;  // a paged call's block ids the kernels clamp are reported to the context
    const int32_t kd = kernel_head_dim(p.d);
    const int dt = dtype_index(p.dtype);
    const bool bf16 = dt == 1;
    uint32_t features = 0;
    if (p.dv != 0 && p.dv != p.d) {  // a V head dim other than q's: the pair's kernel on `path` (the host refuses the rest)
        const int pair = v_pair_index(p.d, p.dv);
        int err = static_cast<int>(cudaErrorInvalidValue);
#if defined(FA_HAS_SM90A) && defined(FA_HAS_HDIM192)
        if (path == Path::Sm90 && dt != kE4m3 && pair == 0) {
            err = bf16 ? sm90::run_fwd<__nv_bfloat16, 192, 128>(p, info, s, &features)
                       : sm90::run_fwd<__half, 192, 128>(p, info, s, &features);
        }
#endif
#if defined(FA_HAS_SM90A) && defined(FA_HAS_HDIM64)
        if (path == Path::Sm90 && dt != kE4m3 && pair == 1) {
            err = bf16 ? sm90::run_fwd<__nv_bfloat16, 64, 512>(p, info, s, &features)
                       : sm90::run_fwd<__half, 64, 512>(p, info, s, &features);
        }
#endif
        if (path == Path::Sm80 && dt != kE4m3) {
#if defined(FA_HAS_HDIM192)
            if (pair == 0) {
                err = bf16 ? sm80::run_fwd_v<__nv_bfloat16, 192, 128>(p, info, s, &features)
                           : sm80::run_fwd_v<__half, 192, 128>(p, info, s, &features);
            }
#endif
#if defined(FA_HAS_HDIM64)
            if (pair == 1) {
                err = bf16 ? sm80::run_fwd_v<__nv_bfloat16, 64, 512>(p, info, s, &features)
                           : sm80::run_fwd_v<__half, 64, 512>(p, info, s, &features);
            }
#endif
        }
        const int32_t at = pair < 0 || dt == kE4m3 ? -1
                           : path == Path::Sm90 ? registry().v90_index[0][pair][dt][features & 31u]
                                                : registry().v_index[0][pair][dt][features & 31u];
        if (kernel_name) *kernel_name = at < 0 ? "unknown_kernel" : registry().names[at].c_str();
        if (err == 0 && p.dropout != 0 && p.dropout_mask != nullptr) return launch_dropout_mask(p, s);
        return err;
    }
    const int err = with_compiled_head_dim(path_kernel_d(Pass::Forward, path, kd, dt), static_cast<int>(cudaErrorInvalidValue),
                                           [&](auto hd) {
        constexpr int D = decltype(hd)::value;
#ifdef FA_HAS_SM90A
        if constexpr (sm90::fwd_fp8_head_dim(D)) {
            if (path == Path::Sm90 && dt == kE4m3) return sm90::run_fwd<__nv_fp8_e4m3, D, D>(p, info, s, &features);
        }
#endif
        if (dt == kE4m3) return static_cast<int>(cudaErrorInvalidValue);  // the host refuses others first
#ifdef FA_HAS_SM90A
        if constexpr (sm90::fwd_head_dim(D)) {
            if (path == Path::Sm90) {
                return bf16 ? sm90::run_fwd<__nv_bfloat16, D, D>(p, info, s, &features)
                            : sm90::run_fwd<__half, D, D>(p, info, s, &features);
            }
        }
#endif
        if (path != Path::Sm80) return static_cast<int>(cudaErrorInvalidValue);  // the host refuses others first
        return bf16 ? sm80::run_fwd<__nv_bfloat16, D>(p, info, s, &features) : sm80::run_fwd<__half, D>(p, info, s, &features);
    });
    if (kernel_name) *kernel_name = name_for(Pass::Forward, path, dt, kd, features);
    // The keep mask, when a dropout call asks for it (common/dropout.cuh says why it is not the attention kernel's).
    if (err == 0 && p.dropout != 0 && p.dropout_mask != nullptr) return launch_dropout_mask(p, s);
    return err;
}

int launch_backward(Path path, BwdParams& p, const LaunchInfo& info, void* stream, const char** kernel_name) {
    const auto s = static_cast<cudaStream_t>(stream);
    const bool bf16 = p.f.dtype == DType::BFloat16;
    uint32_t features = 0;
    const int err = bf16 ? launch_backward_t<__nv_bfloat16>(path, p, info, s, &features)
                         : launch_backward_t<__half>(path, p, info, s, &features);
    if (kernel_name) {
        const int pair = p.f.dv != 0 && p.f.dv != p.f.d ? v_pair_index(p.f.d, p.f.dv) : -1;
        const int dt = dtype_index(p.f.dtype);
        const int32_t at = pair < 0 || dt >= 2       ? -1
                           : path == Path::Sm90 ? registry().v90_index[1][pair][dt][features & 31u]
                                                : registry().v_index[1][pair][dt][features & 31u];
        *kernel_name = pair < 0 ? name_for(Pass::Backward, path, dt, p.kernel_d, features)
                                : at < 0 ? "unknown_kernel" : registry().names[at].c_str();
    }
    return err;
}

int launch_decode(Path path, const DecodeParams& p, const LaunchInfo& info, void* stream, const char** kernel_name) {
    if (path != Path::Sm80) return static_cast<int>(cudaErrorInvalidValue);  // the host refuses others first
    const auto s = static_cast<cudaStream_t>(stream);
    DecodeParams q = p;
    q.device_flags = info.device_flags;  // lengths or block ids the kernels clamp are reported to the context
    const bool fp8 = q.cache_dtype == DType::Float8E4M3;
    uint32_t features = (q.block_table != nullptr ? feature::kPaged : 0u) | (fp8 ? feature::kFp8Cache : 0u);
    int err;
    if (fp8) {
        err = q.dtype == DType::BFloat16 ? launch_decode_t<__nv_bfloat16, true>(q, info, s, &features)
                                         : launch_decode_t<__half, true>(q, info, s, &features);
    } else {
        err = q.dtype == DType::BFloat16 ? launch_decode_t<__nv_bfloat16, false>(q, info, s, &features)
                                         : launch_decode_t<__half, false>(q, info, s, &features);
    }
    if (kernel_name) *kernel_name = name_for(Pass::Decode, path, dtype_index(q.dtype), kernel_head_dim(q.d), features);
    return err;
}

}  // namespace kernels
}  // namespace fa
