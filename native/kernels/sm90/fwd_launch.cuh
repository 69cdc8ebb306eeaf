// Launch template of the sm90 forward: the block order (common/fwd_schedule.h), the TMA descriptors of q, k
// and v built for this call (host-only encoding, no allocation: graph-safe), a persistent grid of at most
// one CTA per SM (or one CTA per tile for masked calls whose tiles' costs differ widely, see launch_fwd), the variant for
// the call's options. Included only by the per-(head dim, dtype)
// instantiation files (sm90/fwd_hdim<D>_<dtype>_sm90.cu, built where FA_CUDA_ARCHS has 90a).
#pragma once
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "common/fwd_variant.h"
#include "common/fwd_schedule.h"
#include "common/launch.h"
#include "common/mask.cuh"
#include "common/paged_kv.cuh"  // paged_variant_fits
#include "sm90/fwd_kernel.cuh"
#include "sm90/tma_host.h"

// Masked calls with more keys than this run one CTA per tile instead of a persistent grid (see launch_fwd);
// overridable for experiments.
#ifndef FA_SM90_FWD_PERSISTENT_MAX_KEYS
#define FA_SM90_FWD_PERSISTENT_MAX_KEYS 8192
#endif

// Causal calls (no left window, sq >= sk, fixed lengths) whose block order has one (batch, head) pair per group
// (common/fwd_schedule.h: one head's K/V is more than an eighth of L2, D 256 from about 6.4k keys) also run one CTA per
// tile, at any length (1; 0: only above FA_SM90_FWD_PERSISTENT_MAX_KEYS keys). There the static stride walks one head's
// row blocks heaviest first, 132 at a time, so the same CTAs take the heavy ones round after round: D 256 causal 8k ran
// at 0.68-0.69x cuDNN, and 1.38-1.46x faster one CTA per tile (0.95-0.99x cuDNN; H200, eighteenth session,
// bench/NOTES.md). With three or more pairs a group the stride mixes the heads' row blocks: D 128 causal 8k (three)
// lost 5-9% one CTA per tile. Windows (tiles of about equal cost), varlen batches (the group size follows the longest
// sequence) and the column-chunked kernels keep the measured rule alone.
#ifndef FA_SM90_FWD_PER_TILE_ONE_HEAD
#define FA_SM90_FWD_PER_TILE_ONE_HEAD 1
#endif

namespace fa {
namespace sm90 {

// Whether the wide kernel of T's dtype class (fwd_kernel_sm90_wide) serves a call of this variant: its head dim (q's
// and v's), no local mask (so no ALiBi), no paged K/V, softcap where it has that variant.
template <typename T, int D, int DV, bool kLocal, bool kSoftcap, bool kPaged>
constexpr bool fwd_wide_serves() {
    constexpr bool kFp8 = FwdIo90<T>::kFp8;
    return D == fwd_wide_head_dim(kFp8) && DV == D && !kLocal && !kPaged && (!kSoftcap || fwd_wide_softcap(kFp8));
}

// The kernel launch_fwd runs: the build's (kAlibiGemm: its ALiBi variant; kDropout: fwd_kernel_sm90_dropout), or (kWide)
// fwd_kernel_sm90_wide.
template <typename T, int D, bool kLocal, bool kSoftcap, int DV, bool kPaged, bool kWide, bool kAlibiGemm,
          bool kDropout = false>
auto fwd_kernel_for() {
    if constexpr (kDropout) {
        static_assert(fwd_dropout_kernel(D, FwdIo90<T>::kFp8) && DV == D && kLocal && !kPaged && !kWide && !kAlibiGemm,
                      "the dropout kernels' calls");
        return fwd_kernel_sm90_dropout<T, D, kSoftcap>;
    } else if constexpr (kWide) {
        static_assert(fwd_wide_serves<T, D, DV, kLocal, kSoftcap, kPaged>() && !kAlibiGemm, "the wide kernels' calls");
        return fwd_kernel_sm90_wide<T, kSoftcap, FwdTraits90WideOf<FwdIo90<T>::kFp8>>;
    } else {
        return fwd_kernel_sm90<T, D, kLocal, kSoftcap, DV, kPaged, kAlibiGemm>;
    }
}

// The launch configuration of fwd_kernel_sm90_cluster (clusters of 2 CTAs along x); cfg points into attr, so it is
// neither copied nor moved.
struct FwdClusterLaunch {
    cudaLaunchAttribute attr[1];
    cudaLaunchConfig_t cfg;
    FwdClusterLaunch(unsigned grid, unsigned threads, int smem, cudaStream_t stream) : attr{}, cfg{} {
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = 2;
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        cfg.gridDim = dim3(grid);
        cfg.blockDim = dim3(threads);
        cfg.dynamicSmemBytes = static_cast<size_t>(smem);
        cfg.stream = stream;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
    }
    FwdClusterLaunch(const FwdClusterLaunch&) = delete;
    FwdClusterLaunch& operator=(const FwdClusterLaunch&) = delete;
};

// The clusters of `kernel` (fwd_kernel_sm90_cluster, its shared memory already raised) that fit the device at once
// (cudaOccupancyMaxActiveClusters, asked once per device and kernel; an SM alone in its GPC takes none), 0 where none
// does or the query fails (the call then runs the plain kernel).
template <class Kernel>
int fwd_max_clusters(Kernel kernel, unsigned threads, int smem, const LaunchInfo& info, std::atomic<int> (&cached)[64]) {
    const int dev = info.device;
    if (dev < 0 || dev >= 64) return 0;
    int n = cached[dev].load(std::memory_order_relaxed);
    if (n != 0) return n > 0 ? n : 0;
    const FwdClusterLaunch probe(2, threads, smem, nullptr);
    if (cudaOccupancyMaxActiveClusters(&n, kernel, &probe.cfg) != cudaSuccess || n <= 0) {
        (void)cudaGetLastError();  // a failed query leaves no error behind
        n = -1;
    }
    cached[dev].store(n, std::memory_order_relaxed);
    return n > 0 ? n : 0;
}

template <typename T, int D, bool kLocal, bool kSoftcap, int DV = D, bool kPaged = false, bool kWide = false,
          bool kDropout = false>
cudaError_t launch_fwd(const FwdParams& params, const LaunchInfo& info, cudaStream_t stream) {
    using Tr = std::conditional_t<kWide, FwdTraits90WideOf<FwdIo90<T>::kFp8>, FwdTraits90Of<D, FwdIo90<T>::kFp8, DV, kPaged>>;
    // Calls with ALiBi slopes run the local kernel's ALiBi variant where the build has it (FA_SM90_FWD_ALIBI_GEMM:
    // the bias through Q K^T, sm90/alibi_gemm.cuh; its own kernel, so that the local kernel that causal and windowed
    // calls without ALiBi run does not change); it reports the local kernel's features and name. Never the wide
    // kernel's (kWide serves calls without a local mask, so without ALiBi).
    // (Dropout calls run fwd_kernel_sm90_dropout, with ALiBi's per-element bias where they have slopes.)
    constexpr bool kAlibiVariant = !kWide && kLocal && !kSoftcap && !kPaged && !kDropout && Tr::kAlibiGemm;
    const bool alibi_gemm = kAlibiVariant && params.alibi_slopes != nullptr && Tr::kSmemBytesAlibi <= info.smem_optin;
    auto kernel = alibi_gemm ? fwd_kernel_for<T, D, kLocal, kSoftcap, DV, kPaged, kWide, kAlibiVariant>()
                             : fwd_kernel_for<T, D, kLocal, kSoftcap, DV, kPaged, kWide, false, kDropout>();
    // (the dropout kernel's: with the keep-mask ring where it has one, FwdTraits90::kDropMask)
    const int smem = alibi_gemm ? Tr::kSmemBytesAlibi : kDropout ? Tr::kSmemBytesDropout : Tr::kSmemBytes;
    static std::atomic<uint64_t> raised{0}, raised_alibi{0};
    cudaError_t err = raise_smem_once(kernel, smem, info, alibi_gemm ? raised_alibi : raised);
    if (err != cudaSuccess) return err;
    // The setmaxnreg budget (FwdTraits90) assumes kLaunchRegs registers a thread at launch (common/launch.h).
    static std::atomic<int> regs_checked_plain{0}, regs_checked_alibi{0};
    err = check_launch_regs(kernel, Tr::kLaunchRegs, alibi_gemm ? regs_checked_alibi : regs_checked_plain);
    if (err != cudaSuccess) return err;
    FwdArgs90 a;
    a.p = params;
    const unsigned row_tiles = schedule(a.p, Tr::kBlockM, info.l2_bytes);
    if (row_tiles == 0) return cudaSuccess;
    // Column-chunked kernels (the pair (64, 512)): kVChunks tiles per row block (common/fwd_schedule.h chunk_coord),
    // counted in the kernel's int.
    if (static_cast<uint64_t>(row_tiles) * Tr::kVChunks > 0x7fffffffull) return cudaErrorInvalidConfiguration;
    const unsigned tiles = row_tiles * Tr::kVChunks;
    const FwdParams& p = a.p;
    const TmaElem elem = FwdIo90<T>::kFp8 ? TmaElem::U8 : p.dtype == DType::BFloat16 ? TmaElem::BF16 : TmaElem::F16;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const int batches = varlen ? 1 : p.b;
    // Paged K/V: the K and V maps span the pool, [num_blocks][block_size][hkv][d], a key block a box of one block's
    // rows (the host serves block sizes every key tile divides; fp8 has no paged path).
    const bool paged = kPaged;
    if (!paged_variant_fits<kPaged, Tr::kBlockN>(p)) return cudaErrorInvalidValue;  // common/paged_kv.cuh
    const int64_t kv_rows = paged ? p.block_size : varlen ? p.total_k : p.sk;
    const int kv_batches = paged ? p.num_blocks : batches;
    if ((err = encode_qkv(&a.q, p.q, elem, p.d, varlen ? p.total_q : p.sq, p.hq, batches, p.q_row_stride, p.q_head_stride,
                          p.q_batch_stride, Tr::kBlockM)) != cudaSuccess ||
        (err = encode_qkv(&a.k, p.k, elem, p.d, kv_rows, p.hkv, kv_batches, p.k_row_stride, p.k_head_stride,
                          p.k_batch_stride, Tr::kBlockN)) != cudaSuccess ||
        (err = encode_qkv(&a.v, p.v, elem, DV == D ? p.d : p.dv, kv_rows, p.hkv, kv_batches, p.v_row_stride,
                          p.v_head_stride, p.v_batch_stride, Tr::kBlockN)) != cudaSuccess) {
        return err;
    }
    // Persistent (one CTA per SM striding over the block order) where tiles cost about the same; one CTA per
    // tile where a causal mask or window makes them unequal and long (or, with one head per group, unequal at any
    // length: FA_SM90_FWD_PER_TILE_ONE_HEAD), so the hardware's block dispatch, in the heaviest-first order, balances
    // the SMs as a dynamic scheduler would (a static stride left the heaviest tiles on the same SMs: 0.63-0.77x cuDNN at
    // 16k causal; bench/NOTES.md).
    const int sms = info.sm_count > 0 ? info.sm_count : 132;
    // (ALiBi alone also runs the kLocal variant, common/mask.cuh, but its tiles cost the same: persistent.)
    const bool masked = p.window_left >= 0 || p.window_right >= 0;
    const bool one_head = FA_SM90_FWD_PER_TILE_ONE_HEAD && p.heads_per_group == 1 && p.window_left < 0 &&
                          p.window_right >= 0 && p.sq >= p.sk && !varlen && Tr::kVChunks == 1;
    const bool per_tile = kLocal && masked && (p.sk > FA_SM90_FWD_PERSISTENT_MAX_KEYS || one_head);
    const unsigned grid = per_tile || tiles < static_cast<unsigned>(sms) ? tiles : static_cast<unsigned>(sms);
    // The CTAs' tile counters (tile + grid) stay within an int (common/fwd_schedule.h persistent_next).
    if (static_cast<uint64_t>(tiles) + grid > 0x7fffffffull) return cudaErrorInvalidConfiguration;
    a.zigzag = FA_SM90_FWD_ZIGZAG == 1 || (FA_SM90_FWD_ZIGZAG == 2 && kLocal && masked &&
                                           static_cast<int64_t>(p.heads_per_group) * p.m_blocks * Tr::kVChunks < sms);
    // 2-CTA clusters with K/V multicast (FA_SM90_FWD_CLUSTER, fwd_kernel_sm90_cluster): calls without a local mask on the
    // 16-bit kernels of head dim 128 (or, with FA_SM90_FWD_CLUSTER 2, 128 and more), fixed lengths, an even count of row
    // blocks (a cluster takes two of one head: common/fwd_schedule.h pair_coord), at most as many clusters as fit at
    // once (a persistent grid).
    constexpr bool kClusterD = FA_SM90_FWD_CLUSTER == 2 ? D >= 128 : FA_SM90_FWD_CLUSTER == 1 && D == 128;
    constexpr bool kClusterable = kClusterD && !kWide && !kLocal && !kPaged && !FwdIo90<T>::kFp8 && DV == D &&
                                  Tr::kVChunks == 1 && !Tr::kPingPong;
    if constexpr (kClusterable) {
        if (!varlen && p.m_blocks % 2 == 0) {
            auto ckernel = fwd_kernel_sm90_cluster<T, D, kSoftcap>;
            static std::atomic<uint64_t> raised_cluster{0};
            err = raise_smem_once(ckernel, Tr::kSmemBytes, info, raised_cluster);
            if (err != cudaSuccess) return err;
            static std::atomic<int> regs_checked_cluster{0};
            err = check_launch_regs(ckernel, Tr::kLaunchRegs, regs_checked_cluster);
            if (err != cudaSuccess) return err;
            static std::atomic<int> max_clusters[64];
            const int clusters = fwd_max_clusters(ckernel, Tr::kThreads, Tr::kSmemBytes, info, max_clusters);
            if (clusters > 0) {
                const unsigned cap = 2u * static_cast<unsigned>(clusters);
                // (even: tiles, since m_blocks is, and cap)
                const FwdClusterLaunch launch(tiles < cap ? tiles : cap, Tr::kThreads, Tr::kSmemBytes, stream);
                a.zigzag = 0;
                err = cudaLaunchKernelEx(&launch.cfg, ckernel, a);
                return err != cudaSuccess ? err : cudaGetLastError();
            }
        }
    }
    kernel<<<grid, Tr::kThreads, smem, stream>>>(a);
    return cudaGetLastError();
}

// Whether a head-dim-64 call (16-bit, no causal mask, window, ALiBi or paged K/V) runs the wide kernel
// (FwdTraits90Wide: 192-row tiles) rather than the build's (128 rows). Both run one CTA an SM over their tiles, so a call
// takes about ceil(tiles / SMs) tile times, and a 192-row tile costs about 1.5 / 1.06 the 128-row one (H200: the wide
// kernel 1.06x faster per FLOP at 4k and 16k, bench/NOTES.md): the wide kernel is taken where its rounds times 1.5 are
// under the build's rounds times 1.06, and the call has at least FA_SM90_FWD_D64_WIDE_MIN_KEYS query rows and keys
// (shorter key loops do not amortize its larger tile's prologue and epilogue). The rounds model also says why 1k loses
// (24 rounds x 1.5 against 32 x 1.06 at B 16, H 32) and keeps calls of few heads (a round or two) on the 128-row tile.
// FA_SM90_FWD_D64_WIDE_MIN_KEYS=1 skips the model (every such call: for the tests of the kernel).
inline bool fwd_d64_wide_pays(const FwdParams& p, const LaunchInfo& info) {
    if (p.sq < FA_SM90_FWD_D64_WIDE_MIN_KEYS || p.sk < FA_SM90_FWD_D64_WIDE_MIN_KEYS) return false;
    if (FA_SM90_FWD_D64_WIDE_MIN_KEYS == 1) return true;
    const int64_t sms = info.sm_count > 0 ? info.sm_count : 132;
    const int64_t heads = static_cast<int64_t>(p.b) * p.hq;
    const auto rounds = [&](int rows) { return ((p.sq + rows - 1) / rows * heads + sms - 1) / sms; };
    return rounds(FwdTraits90Wide::kBlockM) * 150 < rounds(FwdTraits90<64>::kBlockM) * 106;
}

// Whether an fp8 head-dim-128 call without mask, softcap or paged K/V runs the wide kernel (FwdTraits90Fp8Wide: 224-key
// blocks) rather than the build's (128 keys): from FA_SM90_FWD_FP8_WIDE_MIN_KEYS keys on, where the keys its blocks
// span (the last one partly empty) are at most 1.04x those of the build's blocks. Its fewer softmax passes and O
// rescales a key are worth about 10% (1.09-1.10x at 8k-16k), less a 224-key block's longer prologue below ~3k keys:
// measured (H200, seventeenth session, W/NW) 0.96x at 1k (1120 keys spanned against 1024), 1.03x at 1.5k (1568 against
// 1536), 0.98-1.00x at 2k (2240 against 2048), 1.07x at 3k (3136 against 3072), 1.04x at 4k (4256 against 4096).
inline bool fwd_fp8_wide_pays(const FwdParams& p, const LaunchInfo& info) {
    if (p.sk < FA_SM90_FWD_FP8_WIDE_MIN_KEYS || FwdTraits90Fp8Wide::kSmemBytes > info.smem_optin) return false;
    if (FA_SM90_FWD_FP8_WIDE_MIN_KEYS == 1) return true;
    const auto spanned = [&](int64_t block) { return (p.sk + block - 1) / block * block; };
    return spanned(FwdTraits90Fp8Wide::kBlockN) * 100 <= spanned(FwdTraits90<128, true>::kBlockN) * 104;
}

// The variant for the call's options (common/fwd_variant.h). DV: v's head dim where it is not D (the pairs
// (192, 128) and (64, 512), generated as sm90/fwd_hdim<D>_v<DV>_<dtype>_sm90.cu). Dropout where the build has its
// kernels for this class (fwd_dropout_kernel; the host sends dropout calls elsewhere to the sm80 path).
template <typename T, int D, int DV>
int run_fwd(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features) {
    constexpr bool kHasDropout = fwd_dropout_kernel(D, FwdIo90<T>::kFp8) && DV == D;
    return run_fwd_variant<kHasDropout>(p, features, [&](auto local, auto softcap, auto dropout, auto paged) {
        // (Paged K/V has no fp8 kernels: the host refuses fp8 with a block table first.)
        if constexpr (decltype(paged)::value && FwdIo90<T>::kFp8) {
            return cudaErrorInvalidValue;
        } else {
            // The wide kernel of T's dtype class where the build has it, it serves the variant and it pays
            // (fwd_d64_wide_pays, fwd_fp8_wide_pays).
            constexpr bool kFp8 = FwdIo90<T>::kFp8;
            if constexpr (fwd_wide(kFp8) && fwd_wide_serves<T, D, DV, decltype(local)::value, decltype(softcap)::value,
                                                            decltype(paged)::value>()) {
                if (kFp8 ? fwd_fp8_wide_pays(p, info) : fwd_d64_wide_pays(p, info)) {
                    *features |= feature::kWide;
                    return launch_fwd<T, D, false, decltype(softcap)::value, DV, false, true>(p, info, stream);
                }
            }
            return launch_fwd<T, D, decltype(local)::value, decltype(softcap)::value, DV, decltype(paged)::value, false,
                              decltype(dropout)::value>(p, info, stream);
        }
    });
}

}  // namespace sm90
}  // namespace fa

#if defined(FA_SM90_FWD_TRACE) && defined(FA_SM90_FWD_TRACE_EXPORT)
#include "sm90/trace_readback.h"
// The trace's read-back (sm90/fwd_trace.cuh), in the one translation unit CMake marks (the head-dim-128 bf16 kernels).
extern "C" __attribute__((visibility("default"))) int fa_debug_fwd_trace(void* dst, size_t bytes) {
    return fa::sm90::trace_read(fa::sm90::g_fwd_trace, dst, bytes);
}
extern "C" __attribute__((visibility("default"))) int fa_debug_fwd_trace_clear() {
    return fa::sm90::trace_clear(fa::sm90::g_fwd_trace);
}
#endif
