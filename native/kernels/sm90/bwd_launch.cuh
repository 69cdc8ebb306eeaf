// The sm90 (wgmma) backward main kernel as a family of common/bwd_launch.cuh: which kernel a variant is
// (at head dims 192 and 256 the masked kernel serves unmasked calls too: local_variant), its launch shape and its launch.
// Included only by the per-(head dim, dtype) instantiation files (sm90/bwd_hdim<D>_<dtype>_sm90.cu, and for the V head
// dim pair (192, 128) sm90/bwd_hdim192_v128_<dtype>_sm90.cu, built where FA_CUDA_ARCHS has 90a).
#pragma once
#include "common/bwd_launch.cuh"
#include "sm90/bwd_kernel.cuh"
#include "sm90/tma_host.h"

namespace fa {
namespace sm90 {

// DV: the head dim of v, dO and dV (D, or 128 for the pair (192, 128): BwdTraits90).
template <typename T, int D, int DV>
struct BwdFamily {
    using Tr = BwdTraits90<D, DV>;
    static constexpr int kSmemBytes = Tr::kSmemBytes;
    // Two consumer warpgroups, and in deterministic mode the turn warpgroup, in a warp-specialized kernel the producer
    // (sm90/bwd_traits.h BwdTurns, kBwdWs).
    template <bool kLocal, bool kDet, bool kDropout>
    static constexpr int threads() { return BwdTurns<kBwdThird<D, kLocal, kDet, kDropout>>::kThreads; }
    static constexpr bool local_variant(bool local) { return Tr::kSplit ? true : local; }
    // Dropout kernels where the build has them (FA_SM90_BWD_DROPOUT; not the V head dim pair): the host sends dropout
    // calls elsewhere to the sm80 path.
    static constexpr bool kHasDropout = bwd_dropout_kernel(D) && DV == D;
    // The third warpgroup gives registers to the consumers.
    template <bool kLocal, bool kDet, bool kDropout>
    static constexpr int launch_regs() {
        return kBwdThird<D, kLocal, kDet, kDropout> ? BwdTurns<true>::kLaunchRegs : 0;
    }
    template <bool kLocal, bool kSoftcap, bool kDet, bool kDropout = false>
    static auto kernel() {
        if constexpr (kDropout) {
            static_assert(kHasDropout && kLocal, "the dropout kernels' calls");
            return bwd_kernel_sm90<T, D, true, kSoftcap, kDet, D, true>;
        } else {
            return bwd_kernel_sm90<T, D, kLocal, kSoftcap, kDet, DV>;
        }
    }
    // The TMA descriptors of q and dO for this call (host-only encoding, no allocation: graph-safe; dO's columns are
    // v's head dim), then the launch.
    template <class K>
    static cudaError_t launch(K kernel, unsigned blocks, int threads, const BwdParams& p, cudaStream_t stream) {
        const FwdParams& f = p.f;
        BwdArgs90 a;
        a.p = p;
        const TmaElem elem = f.dtype == DType::BFloat16 ? TmaElem::BF16 : TmaElem::F16;
        const bool varlen = f.cu_seqlens_q != nullptr;
        const int batches = varlen ? 1 : f.b;
        const int64_t rows = varlen ? f.total_q : f.sq;
        cudaError_t err;
        if (rows == 0) {
            // No query rows (a varlen batch of empty query sequences with keys): every CTA walks no block and writes
            // zero dK/dV without touching the maps, whose tensors may have no data to describe.
            a.q = a.dout = TmaMap{};
        } else if ((err = encode_qkv(&a.q, f.q, elem, f.d, rows, f.hq, batches, f.q_row_stride, f.q_head_stride,
                              f.q_batch_stride, Tr::kBlockM)) != cudaSuccess ||
            (err = encode_qkv(&a.dout, p.dout, elem, DV == D ? f.d : f.dv, rows, f.hq, batches, p.do_row_stride, p.do_head_stride,
                              p.do_batch_stride, Tr::kBlockM)) != cudaSuccess) {
            return err;
        }
        kernel<<<blocks, threads, kSmemBytes, stream>>>(a);
        return cudaGetLastError();
    }
};

}  // namespace sm90
}  // namespace fa

#if defined(FA_SM90_BWD_TRACE) && defined(FA_SM90_BWD_TRACE_EXPORT)
#include "sm90/trace_readback.h"
// The trace's read-back (sm90/bwd_trace.cuh), in the one translation unit CMake marks (FA_SM90_BWD_TRACE_HDIM's bf16
// kernels).
extern "C" __attribute__((visibility("default"))) int fa_debug_bwd_trace(void* dst, size_t bytes) {
    return fa::sm90::trace_read(fa::sm90::g_bwd_trace, dst, bytes);
}
extern "C" __attribute__((visibility("default"))) int fa_debug_bwd_trace_clear() {
    return fa::sm90::trace_clear(fa::sm90::g_bwd_trace);
}
#endif
