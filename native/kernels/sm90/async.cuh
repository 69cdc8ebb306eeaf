// Hopper's asynchronous machinery as thin PTX wrappers, one instruction each: shared-memory mbarriers
// (init, arrive, arrive with an expected transaction count, parity wait), the tensor-memory accelerator's
// tiled 4-D load (cp.async.bulk.tensor) that completes on an mbarrier, the bulk reduction into global memory, and
// setmaxnreg. Like wgmma.cuh the bodies exist only in sm_90a device code (FA_SM90A_DEVICE); layout and protocol
// knowledge lives in the kernels.
#pragma once
#include <cstdint>
#include <cstdio>

#include "sm90/wgmma.cuh"  // FA_SM90A_DEVICE

namespace fa {
namespace sm90 {

// A TMA descriptor (CUtensorMap: 128 opaque bytes, 64-byte aligned) as plain data, so kernel parameters
// need no driver header. The launchers fill it with cuTensorMapEncodeTiled (sm90/tma_host.h).
struct alignas(64) TmaMap {
    uint64_t raw[16];
};

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
#ifdef FA_SM90A_DEVICE
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
// Makes the initialised barriers visible to the other threads and to the async proxy (TMA).
__device__ __forceinline__ void mbar_init_fence() {
#ifdef FA_SM90A_DEVICE
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#ifdef FA_SM90A_DEVICE
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
// One arrival that also expects `bytes` more of transactions (the TMA loads that complete on `bar`).
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#ifdef FA_SM90A_DEVICE
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
// Waits until the phase of parity `parity` has completed (a fresh barrier is in phase 0, so waiting for
// parity 1 returns at once: how a producer passes its first round of "empty" barriers).
// FA_SM90_DEBUG_HANG (a debugging build only): a wait still incomplete after 2 s (the global timer) prints the
// barrier's shared-memory address, the parity and the thread, then traps, so a protocol error shows up as a
// launch failure with its place instead of a hang.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#ifdef FA_SM90A_DEVICE
    uint32_t done = 0;
#ifdef FA_SM90_DEBUG_HANG
    uint64_t t0 = 0, now = 0;
#endif
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
#ifdef FA_SM90_DEBUG_HANG
        if (!done) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        if (!done && t0 == 0) t0 = now;
        if (!done && now - t0 > 2000000000ull) {
            printf("mbar_wait hang: barrier smem 0x%x parity %u thread %d block %d\n", bar, parity,
                   static_cast<int>(threadIdx.x), static_cast<int>(blockIdx.x));
            __trap();
        }
#endif
    } while (!done);
#endif
}

__device__ __forceinline__ void tma_prefetch_map(const TmaMap& map) {
#ifdef FA_SM90A_DEVICE
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map)) : "memory");
#endif
}
// Box at coordinates (c0 innermost .. c3) of the 4-D tensor `map` (a __grid_constant__ parameter) into
// shared memory at dst; completes `bar`'s transaction count with the box's bytes (out-of-bounds elements
// arrive as zeros and count too).
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const TmaMap& map, uint32_t bar, int c0, int c1, int c2, int c3) {
#ifdef FA_SM90A_DEVICE
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
        "[%6];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
        : "memory");
#endif
}

// Clusters (FA_SM90_FWD_CLUSTER; the forward's K/V multicast): this CTA's rank in its cluster; every thread of every CTA
// of the cluster arrives and waits (release/acquire: the barriers one CTA initialised are seen by the other's TMA and
// arrivals after it); an arrival on the barrier at the same shared-memory offset in CTA `cta` of the cluster; and the
// 4-D tiled load of tma_load_4d delivered to the CTAs of `mask` (bit r: rank r), each at dst in its own shared memory,
// completing the barrier at `bar` in each of them with the box's bytes.
__device__ __forceinline__ uint32_t cluster_ctarank() {
    uint32_t r = 0;
#ifdef FA_SM90A_DEVICE
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
    return r;
}
__device__ __forceinline__ void cluster_sync() {
#ifdef FA_SM90A_DEVICE
    asm volatile("barrier.cluster.arrive.aligned;\nbarrier.cluster.wait.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, uint32_t cta) {
#ifdef FA_SM90A_DEVICE
    asm volatile(
        "{\n.reg .b32 remote;\nmapa.shared::cluster.u32 remote, %0, %1;\nmbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n"
        ::"r"(bar), "r"(cta)
        : "memory");
#endif
}
__device__ __forceinline__ void tma_load_4d_multicast(uint32_t dst, const TmaMap& map, uint32_t bar, uint16_t mask, int c0,
                                                      int c1, int c2, int c3) {
#ifdef FA_SM90A_DEVICE
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, "
        "{%2, %3, %4, %5}], [%6], %7;\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar), "h"(mask)
        : "memory");
#endif
}

// An arrival on `bar` once every cp.async this thread issued before has landed, without raising the barrier's
// pending count (.noinc: the count it was initialised with includes these arrivals).
__device__ __forceinline__ void cp_async_mbar_arrive_noinc(uint32_t bar) {
#ifdef FA_SM90A_DEVICE
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
#endif
}

// A bulk reduction (the backward's dQ, FA_SM90_BWD_WS): global[dst .. dst + bytes) += shared[src ..] as fp32 adds, by
// the asynchronous proxy (16-byte aligned addresses, a multiple of 16 bytes; the shared-memory writes it reads were
// fenced by fence_proxy_async before the barrier that handed them over). Completes in the thread's bulk group:
// bulk_commit closes the group, bulk_wait_read<N> waits until at most N groups still read their shared memory,
// bulk_wait<N> until at most N are incomplete.
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, uint32_t src, uint32_t bytes) {
#ifdef FA_SM90A_DEVICE
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
                 "r"(bytes)
                 : "memory");
#endif
}
__device__ __forceinline__ void bulk_commit() {
#ifdef FA_SM90A_DEVICE
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
#ifdef FA_SM90A_DEVICE
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
#ifdef FA_SM90A_DEVICE
    asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Register budget of the calling warpgroup (every warp of it executes the same one).
template <int N>
__device__ __forceinline__ void regs_dealloc() {
#ifdef FA_SM90A_DEVICE
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void regs_alloc() {
#ifdef FA_SM90A_DEVICE
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

}  // namespace sm90
}  // namespace fa
