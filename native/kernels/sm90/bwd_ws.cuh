// The warp-specialized sm90 backward (FA_SM90_BWD_WS, sm90/bwd_traits.h kBwdWs): its hand-overs and the two working
// warps of its third warpgroup; the consumers' side is sm90/bwd_kernel.cuh's (search kWS). bench/ws_protocol.py
// models the hand-overs.
//
// The load warp walks the blocks as the consumers do: block it's stage, once the consumers released block it - S's
// (they arrive after the products that read its Q and dO retired and its statistics were read), gets Q and dO by TMA
// from lane 0 and the statistics by 4-byte cp.async from every lane (lse_log2 and dsum of rows lane and lane + 32; a
// row slot need not be 16-byte aligned, as a bulk copy's source must be), each lane's copies arriving on the stage's
// mbarrier when they land: the phase completes with lane 0's arrival, the 32 lanes' and Tr::kStageTx bytes.
// The dQ warp takes each block's dQ, which the consumers stage in shared memory in dq_accum's layout (the fragment
// layout for a full block, rows for a partial one), adds it to dq_accum with one bulk reduction and hands the buffer
// back once the reduction has read it. In deterministic mode (FA_SM90_BWD_WS_DET) it also takes the block's turn on
// dQ: it waits for the turn while the consumers still compute the block, and passes it once the reduction completed.
// Each named barrier has exactly one arrival for each wait (the conditions below and at the consumers' calls), so none
// is left pending at exit, and a barrier's next generation cannot start early (the consumers re-release a stage only
// after its refill landed, re-stage a buffer only after it came back).
#pragma once
#include <cstdint>

#include "common/bwd_block.cuh"
#include "common/ptx.cuh"
#include "params/bwd_params.h"
#include "sm90/async.cuh"
#include "sm90/wgmma.cuh"

namespace fa {
namespace sm90 {

// The named barriers, each between the Tr::kThreads consumer threads and one producer warp: free + st (the consumers
// released stage st), dq_full + buf (they staged a block's dQ in buffer buf), dq_free + buf (its reduction has read it).
// Ids from 4 (1..3: the consumers' CTA barrier and the deterministic turn warpgroup's).
template <class Tr>
struct BwdWsBars {
    static constexpr int kFree = 4, kDqFull = kFree + Tr::kStages, kDqFree = kDqFull + 2, kCount = Tr::kThreads + 32;
    static_assert(Tr::kDqBufs >= 1 && Tr::kDqBufs <= 2 && kDqFree + Tr::kDqBufs <= 16, "named barriers 1..15");
    // The consumers' side: block `it`'s stage back to the load warp (it + S < iters: a later block will use it);
    // wait until dQ buffer buf is free; block's dQ staged (and fenced) in buffer buf.
    __device__ static __forceinline__ void release_stage(int st) { barrier_arrive(kFree + st, kCount); }
    __device__ static __forceinline__ void wait_dq_buffer(int buf) { barrier_sync(kDqFree + buf, kCount); }
    __device__ static __forceinline__ void dq_staged(int buf) { barrier_arrive(kDqFull + buf, kCount); }
};

// Warp 0: the ring's loads. tma_q_do(st, bar, h, m): block (h, m)'s Q and dO into stage st by TMA (one thread).
template <class Tr, class TmaQdO>
__device__ __forceinline__ void bwd_ws_load_warp(const BwdParams& p, const BwdBlock& blk, uint32_t s0, uint32_t bar0,
                                                 int lane, const TmaQdO& tma_q_do) {
    using Bars = BwdWsBars<Tr>;
    constexpr int S = Tr::kStages, BM = Tr::kBlockM;
    for (int it = 0; it < blk.iters; ++it) {
        const int st = it % S;
        __syncwarp();  // (lane 0's TMA branch behind: the warp meets each barrier converged, as the turn warp does)
        if (it >= S) barrier_sync(Bars::kFree + st, Bars::kCount);  // block it - S's stage released
        const int h = blk.head(it);
        const int m = blk.block(it);
        const uint32_t bar = bar0 + 8 * st;
        if (lane == 0) tma_q_do(st, bar, h, m);
        const int rows = min(BM, blk.seq.sq - m * BM);
        const int64_t slot = bwd_row_slot(p, blk.b, h, blk.seq.q_row0, m * BM);
        const uint32_t dst = s0 + Tr::kOffStats + st * Tr::kSmemStats;
#pragma unroll
        for (int r = lane; r < BM; r += 32) {
            cp_async_4(dst + r * 4, p.lse_log2 + slot + r, r < rows);
            cp_async_4(dst + (BM + r) * 4, p.dsum + slot + r, r < rows);
        }
        cp_async_mbar_arrive_noinc(bar);
    }
    cp_async_commit();  // (every copy landed before the warp leaves)
    cp_async_wait<0>();
}

// Warp 1: dQ's bulk reductions (and in deterministic mode the turns).
template <class Tr, bool kLocal, bool kDeterministic>
__device__ __forceinline__ void bwd_ws_dq_warp(const BwdParams& p, const BwdBlock& blk, uint32_t s0, int lane) {
    using Bars = BwdWsBars<Tr>;
    constexpr int B = Tr::kDqBufs, BM = Tr::kBlockM, BN = Tr::kBlockN, D = Tr::kHeadDim;
    const int iters = blk.iters;
    // every buffer starts free (as far as a block will stage in it)
    if (iters > 0) barrier_arrive(Bars::kDqFree, Bars::kCount);
    if (B > 1 && iters > 1) barrier_arrive(Bars::kDqFree + 1, Bars::kCount);
    for (int it = 0; it < iters; ++it) {
        const int buf = it % B;
        const int h = blk.head(it);
        const int m = blk.block(it);
        // Deterministic mode: block it's turn, awaited while the consumers still compute the block.
        if (kDeterministic && lane == 0) bwd_poll_turn<kLocal, BM, BN>(p, blk, h, m);
        __syncwarp();
        barrier_sync(Bars::kDqFull + buf, Bars::kCount);  // block it's dQ staged and fenced
        if (lane == 0) {
            const int rows = min(BM, blk.seq.sq - m * BM);
            float* dst = bwd_dq_rows(p, blk, bwd_row_slot(p, blk.b, h, blk.seq.q_row0, m * BM));
            bulk_reduce_add_f32(dst, s0 + Tr::kOffDQ + buf * Tr::kSmemDQ, static_cast<uint32_t>(rows * D * 4));
            bulk_commit();
            if constexpr (kDeterministic) {
                // the adds complete (performed in global memory, not only read from shared), then the turn passes by
                // a release increment (as FlashAttention-3's dQ writer does)
                bulk_wait<0>();
                bwd_pass_turn_inc(p, blk, h, m);
            } else {
                bulk_wait_read<B - 1>();  // block it - (B - 1)'s reduction has read its buffer
            }
        }
        __syncwarp();
        // block it + 1 - B's buffer (B = 1: this block's; B = 2: block it - 1's), for block it + 1 (the first B blocks
        // had the arrivals above)
        if (it + 1 < iters && it + 1 >= B) barrier_arrive(Bars::kDqFree + (it + 1) % B, Bars::kCount);
    }
    if (lane == 0) bulk_wait<0>();  // every reduction complete before the warp leaves
}

}  // namespace sm90
}  // namespace fa
