// FlashAttention-2 backward main kernel on Hopper's warpgroup MMA (wgmma, sm_90a). The preprocess and
// convert kernels (common/bwd_prepost.cuh), the workspace, the block walk (query blocks of every q head of
// the GQA group, in the order BwdWalk says), the masks and the deterministic ordering (common/bwd_block.cuh) are the
// sm80 kernel's; what differs is how the five products are computed:
//
// One CTA = two warpgroups = 128 keys (warpgroup w owns keys [64w, 64w + 64)); query blocks of 64 rows. In deterministic
// mode a third warpgroup owns the turns on dQ (below, BwdTurns).
// Every tile lives in shared memory as 64-column panels of 128-byte rows with the 128-byte swizzle,
// which wgmma reads either K-major or MN-major, so no operand is ever transposed by hand:
//   S^T  = K Q^T      m64n64, A = K (K-major), B = Q (K-major)        } keys as rows: the accumulators
//   dP^T = V dO^T     m64n64, A = V, B = dO                          } hold P^T and dS^T row-wise, ...
//   dV  += P^T dO     m64nD,  A = P^T from registers, B = dO (MN-major) } ... which are the A operands
//   dK  += dS^T Q     m64nD,  A = dS^T from registers, B = Q (MN-major) } of these two (FA3's trick)
//   dQ   = dS K       m64n(D/2) per warpgroup (its half of the columns), A = dS (dS^T stored [key][query],
//                     read MN-major), B = K (MN-major); added to the fp32 accumulator with red.global.add.v4
//                     in the accumulator's fragment layout (BwdParams::dq_frag_rows). At D = 192 a half (96
//                     columns) straddles the middle panel, which an MN-major operand may not cross mid-panel: two
//                     products of 64 and 32 columns each.
// P never leaves registers (but at D = 192 and 256, below); dS^T goes to shared memory once, into one of two buffers
// (2 x 16 KB, 2 x 8 KB at D = 192 and 256). dK and dV
// (64 x D per warpgroup) stay in registers for the whole walk.
//
// At D = 256 dK and dV of 64 keys take 256 registers a thread (192 at D = 192), so the warpgroups split the roles
// instead (kSplit): a CTA holds 64 keys; warpgroup 0 computes S^T, P^T and dV, warpgroup 1 dP^T, dS^T
// and dK (128 accumulator registers each). Warpgroup 1 needs P^T (times 1 - tanh^2 under softcap): it
// takes it in fp32 through shared memory (16 KB) across a CTA barrier, which warpgroup 1 reaches first (its
// dP^T product needs no exponentials), so warpgroup 0's dV product starts at once. dQ is split by columns as above.
//
// DV (D's but for FlashAttention-3's pair (192, 128)): the head dim of v, dO and dV. Its kernel runs D = 192's
// products unchanged, one instruction stream for both warpgroups (only the shared-memory descriptors differ by
// warpgroup): ptxas serializes wgmma issued in warpgroup-divergent branches of different shapes (C7520), which cost
// an earlier version, with DV-wide products, 2-6% against a call padded to 192 (bench/NOTES.md). So the dO and V
// tiles are D columns wide, as at equal dims, and their columns DV..D - 1 hold zeros: V's are loaded as zeros, dO's
// are cleared once at kernel start and never written again (a stage's TMA brings Q's D / 64 boxes and dO's DV / 64).
// Then dP^T = V dO^T over D / 16 k-steps is exact (the extra k-steps multiply zeros), dV += P^T dO over N = D has
// zeros past column DV, which the epilogue does not store, and the rest is D = 192's code. What DV changes is
// confined to if constexpr (kVPair) branches and DV-dependent constants, so the equal-dims kernels compile as before.
//
// Warp specialization (FA_SM90_BWD_WS, sm90/bwd_traits.h kBwdWs; head dims 64 and 128, the default mode): a third
// warpgroup, at 24 registers, takes the loads and dQ's global adds off the consumers (at 240): its warp 0 fills the
// ring (Q and dO by TMA, the statistics by cp.async) as the consumers release stages, and its warp 1 adds each block's
// dQ, which the consumers store to shared memory in dq_accum's layout, with one bulk reduction (cp.reduce.async.bulk).
// The hand-overs are named barriers (bench/ws_protocol.py models them); the products are unchanged.
//
// Dropout (bwd_kernel_sm90's kDropout, FA_SM90_BWD_DROPOUT; FlashAttention-2's backward: dV = (Z o P)^T dO / (1 - p),
// dP = Z o (dO V^T) / (1 - p), dS = P o (dP - dsum)): the keep mask Z of the forward's Philox stream, read in the
// transposed layout. FA2's element (query q, key k) is byte 2 ((q % 16) / 8) + k % 2 of word (k % 32) / 8 of the call
// of lane 4 (q % 8) + (k % 8) / 2 for block (q / 16, k / 32) (common/philox.cuh). A thread of warp wl holds keys
// kr0 (+8) (k % 8 = lane / 4) and queries 8 j + 2 (lane % 4) (+1), so its elements of a 16-query block come from
// lanes 8 (lane % 4) + lane / 8 (+4) and words 2 (wl % 2) (+1): each thread makes its own lane's call of the block
// (warps wl and wl ^ 1 share the 32 keys of a call, so each call is made twice) and takes the words it needs from
// the two lanes by shuffles. With kSplit warpgroup 0 hands warpgroup 1 the mask as P^T's sign (P^T >= 0: a dropped
// element's value is handed negated).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include "common/alibi.cuh"
#include "common/bwd_block.cuh"
#include "common/dropout.cuh"
#include "common/ptx.cuh"
#include "common/tile_io.cuh"
#include "params/bwd_params.h"
#include "sm90/async.cuh"
#include "sm90/bwd_trace.cuh"
#include "sm90/bwd_traits.h"
#include "sm90/bwd_ws.cuh"
#include "sm90/wgmma.cuh"

namespace fa {
namespace sm90 {

// The kernel's parameter: the call's params and the TMA descriptors of q and dO ([b][rows][heads][d], rows = the
// packed rows when varlen, with b = 1; boxes of 64 columns x BlockM rows), built per call by the launcher
// (sm90/bwd_launch.cuh).
struct BwdArgs90 {
    BwdParams p;
    TmaMap q, dout;
};

// dV/dK's accumulators and A fragments stay untouched until their products retire: the fences, placed after the wait
// that retires them, keep the fragments' registers from reuse until then.
template <int NK, int NV, int NA, int ND>
__device__ __forceinline__ void fence_dkdv(float (&acc_k)[NK], float (&acc_v)[NV], uint32_t (&fa)[NA][4],
                                           uint32_t (&fd)[ND][4]) {
    fence_regs(acc_k);
    fence_regs(acc_v);
#pragma unroll
    for (int kk = 0; kk < NA; ++kk) {
        fence_regs(fa[kk]);
        if constexpr (ND == NA) fence_regs(fd[kk]);  // (kSplit: fd is unused, one row)
    }
}

// kDropout (FA_SM90_BWD_DROPOUT): the call's dropout (see the top of this file), in the masked kernels of square head
// dims. (A template parameter here: a __global__ wrapper around a __device__ body changed the PTX of the kernels without
// dropout.)
template <typename T, int D, bool kLocal, bool kSoftcap, bool kDeterministic, int DV = D, bool kDropout = false>
__global__ void __launch_bounds__(BwdTurns<kBwdThird<D, kLocal, kDeterministic, kDropout>>::kThreads, 1)
    bwd_kernel_sm90(const __grid_constant__ BwdArgs90 a) {
#ifdef FA_SM90A_DEVICE
    static_assert(!kDropout || (kLocal && DV == D), "dropout: the masked kernels of square head dims");
    const BwdParams& p = a.p;
    using Tr = BwdTraits90<D, DV>;
    constexpr bool kSplit = Tr::kSplit;
    constexpr bool kVPair = DV != D;  // a V head dim of its own (the pair (192, 128); implies kSplit)
    constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN;
    constexpr int QStride = BM * 128;  // bytes between panels of a Q/dO tile (whatever its width)
    constexpr int KStride = BN * 128;  // ... of a K/V tile

    extern __shared__ __align__(1024) unsigned char smem[];
    const FwdParams& f = p.f;

    const BwdBlock blk = bwd_block<kLocal, BM, BN>(p);
    const int hk = blk.hk, b = blk.b, key0 = blk.key0, keys_here = blk.keys_here;
    const SeqInfo& seq = blk.seq;
    const bool varlen = blk.varlen;
    const int tid = threadIdx.x, lane = tid % 32;
    const int wg = tid / 128, wl = (tid % 128) / 32;  // warpgroup, warp within it
    BwdTrace trace(wg, tid % 128 == 0);  // a trace build's phase cycles (sm90/bwd_trace.cuh); nothing otherwise
    if (keys_here <= 0) return;
    const int right_bound = blk.mask.right, left_bound = blk.mask.left;
    const int iters = blk.iters;

    // Deterministic mode (BwdTurns): the third warpgroup's first warp owns the turns on dQ. Lane 0 waits for the
    // first query block's turn; then per block of the walk the warp arrives at kBarTurn, where the consumers wait
    // before their adds, polls the next block's turn while they add, waits at kBarAdded for their adds to be issued
    // and passes this block's turn by one release increment (fence.acq_rel + red.add: the barrier ordered every
    // warp's adds before it, and the release is cumulative, as in CUTLASS's semaphore). So the consumers never poll
    // nor fence, and the poll's round trip overlaps their work rather than following the pass. Polling block it + 1
    // before passing block it cannot deadlock: the turn order of the key blocks is the same at every query block
    // (BwdWalk), so no key block ahead of this one waits for it. The consumers' CTA barriers are kBarCta over their
    // 256 threads (cta_sync): the turn warp takes no part in them and touches no shared memory; the warpgroup's
    // other three warps leave at once, after giving their registers to the consumers.
    // Warp specialization (kWS, FA_SM90_BWD_WS; sm90/bwd_ws.cuh): the consumers hand stages and dQ buffers to the
    // third warpgroup's warps through the named barriers of BwdWsBars.
    constexpr bool kWS = kBwdWs<D, kLocal, kDeterministic, kDropout>;
    // FA_SM90_BWD_EXP_UNDER_DP (sm90/bwd_traits.h): S^T and dP^T committed as two groups, the exponentials computed
    // once S^T has retired, while dP^T still runs; dS^T once it has.
    constexpr bool kExpUnderDP = kBwdExpUnderDp<D, kLocal, kDropout>;
    // FA_SM90_BWD_DQ_LAG (sm90/bwd_traits.h): block it's dQ issued in iteration it + 1; each warpgroup's iterations
    // handed to the other by named barrier kBarLag + 2 wg + (it & 1) (two per warpgroup, alternating: a warpgroup
    // cannot arrive on one again before the other has waited for its last arrival there, see the loop).
    constexpr bool kLag = kBwdDqLag<D, kLocal, kDeterministic, kDropout>;
    constexpr int kBarLag = 12;  // 12..15 (1..3: the CTA and turn barriers; 4..11 at most: warp specialization's)
    static_assert(!kLag || (!kSplit && !kWS && !kDeterministic), "the dQ lag: the default mode's kernels of D 64, 128");
    using Turns = BwdTurns<kBwdThird<D, kLocal, kDeterministic, kDropout>>;
    using WsBars = BwdWsBars<Tr>;
    constexpr int kBarCta = 1, kBarTurn = 2, kBarAdded = 3, kTurnCount = Tr::kThreads + 32;
    const auto cta_sync = [] {
        if constexpr (kDeterministic || kWS) barrier_sync(kBarCta, Tr::kThreads); else __syncthreads();
    };
    if constexpr (kDeterministic && !kWS) {  // (kWS: the dQ warp takes the turns)
        if (tid >= Tr::kThreads) {
            regs_dealloc<Turns::kTurnRegs>();
            if (tid >= Tr::kThreads + 32) return;
            if (lane == 0 && iters > 0) bwd_poll_turn<kLocal, BM, BN>(p, blk, blk.head(0), blk.block(0));
            trace.lap(0);
            for (int it = 0; it < iters; ++it) {
                __syncwarp();
                barrier_arrive(kBarTurn, kTurnCount);
                if (lane == 0 && it + 1 < iters) bwd_poll_turn<kLocal, BM, BN>(p, blk, blk.head(it + 1), blk.block(it + 1));
                trace.lap(0);
                __syncwarp();
                barrier_sync(kBarAdded, kTurnCount);
                trace.lap(1);
                if (lane == 0) bwd_pass_turn_inc(p, blk, blk.head(it), blk.block(it));
                trace.lap(2);
                trace.count(9);
            }
            __syncwarp();
            return;
        }
        regs_alloc<Turns::kConsumerRegs>();
    }

    const uint32_t s0 = smem_u32(smem);
    const uint32_t sK = s0 + Tr::kOffK, sV = s0 + Tr::kOffV;
    constexpr int S = Tr::kStages;
    const uint32_t bar0 = s0 + Tr::kOffBar;  // stage st's "loaded" mbarrier at bar0 + 8 st

    const T* kp = rows_at<const T>(f.k, f.k_batch_stride, f.k_head_stride, f.k_row_stride, varlen, b, hk, seq.k_row0 + key0);
    const T* vp = rows_at<const T>(f.v, f.v_batch_stride, f.v_head_stride, f.v_row_stride, varlen, b, hk, seq.k_row0 + key0);

    // The walk (BwdBlock): each q head of the group, its query blocks in the order BwdWalk says. Block it's Q and dO
    // go into stage it % S by TMA, issued by thread 0 (the stage is free: see the loop), and its row statistics by a
    // 4-byte cp.async from each thread of warpgroup 0 (a row slot need not be 16-byte aligned, as a bulk copy's
    // source must be), each thread's copy arriving on the stage's mbarrier when it lands
    // (cp.async.mbarrier.arrive.noinc): the phase completes with thread 0's arrival, the 128 copies and
    // Tr::kStageTx bytes. Rows past the tensor read as zeros; a varlen sequence's last, partial block reads the next
    // sequence's rows, which the loop zeroes.
    // Q and dO of query block m of head h into stage st by TMA, from one thread (the transaction count included).
    const auto tma_q_do = [&](int st, uint32_t bar, int h, int m) {
        const int row = static_cast<int>(seq.q_row0) + m * BM;
        const int bb = varlen ? 0 : b;
        mbar_arrive_expect_tx(bar, Tr::kStageTx);
#pragma unroll
        for (int pn = 0; pn < D / 64; ++pn) {
            tma_load_4d(s0 + Tr::kOffQ + st * Tr::kSmemQ + pn * QStride, a.q, bar, pn * 64, row, h, bb);
            // dO: DV / 64 panels (all D / 64 but for the pair, whose panels past DV hold the zeros of kernel start)
            if (pn < DV / 64) {
                tma_load_4d(s0 + Tr::kOffDO + st * Tr::kSmemDO + pn * QStride, a.dout, bar, pn * 64, row, h, bb);
            }
        }
    };
    auto load_q_do = [&](int it) {
        const int h = blk.head(it);
        const int m = blk.block(it);
        const int st = it % S;
        const uint32_t bar = bar0 + 8 * st;
        if (tid == 0) tma_q_do(st, bar, h, m);
        const int r = tid % BM;  // tid < 2 BM: lse_log2 of row r, then dsum of row r
        const float* src = (tid < BM ? p.lse_log2 : p.dsum) + bwd_row_slot(p, b, h, seq.q_row0, m * BM) + r;
        cp_async_4(s0 + Tr::kOffStats + st * Tr::kSmemStats + tid * 4, src, r < min(BM, seq.sq - m * BM));
        cp_async_mbar_arrive_noinc(bar);
    };

    // Block it + S - 1's loads, once stage (it - 1) % S is free: every product of block it - 1 retired and its
    // statistics read, which a CTA barrier of block it tells (the mid-block one; with kSplit the earlier P^T
    // hand-over; with kLag the other warpgroup's end of block it - 1, waited for before the dS^T stores). The
    // statistics' copies are generic-proxy writes, which the barrier orders after the reads.
    const auto load_next = [&](int it) {
        if (tid < 2 * BM && it + S - 1 < iters) load_q_do(it + S - 1);
        __syncwarp();  // the warps converged again before the .aligned wgmma instructions that follow
    };

    if constexpr (kWS) {
        // Warp specialization (sm90/bwd_ws.cuh): the third warpgroup's warp 0 loads the ring, its warp 1 adds dQ (and
        // takes the turns in deterministic mode); warps 2 and 3 leave at once. The consumers only compute.
        if (tid == 0) {
#pragma unroll
            for (int st = 0; st < S; ++st) mbar_init(bar0 + 8 * st, 1 + 32);  // lane 0, and the 32 lanes' copies
            mbar_init_fence();
        }
        __syncthreads();  // the mbarriers initialised before any load completes on them or any thread waits
        if (tid >= Tr::kThreads) {
            regs_dealloc<Turns::kTurnRegs>();
            const int pw = (tid - Tr::kThreads) / 32;
            if (pw == 0) {
                bwd_ws_load_warp<Tr>(p, blk, s0, bar0, lane, tma_q_do);
            } else if (pw == 1) {
                bwd_ws_dq_warp<Tr, kLocal, kDeterministic>(p, blk, s0, lane);
            }
            return;
        }
        regs_alloc<Turns::kConsumerRegs>();
    }
    if constexpr (kVPair) {
        // dO's columns DV..D - 1 in every stage: zeros, for the whole walk (the TMA writes only the first DV / 64
        // panels). Cleared before any load is issued, and made visible to wgmma (async proxy) by the fence and the
        // barrier below (the K/V fence and barrier that follow cover it again).
        constexpr int kZeroChunks = (D - DV) / 64 * BM * 8;  // 16-byte chunks of a stage's zero panels
        static_assert(kZeroChunks % Tr::kThreads == 0, "the zero panels split evenly over the threads");
#pragma unroll
        for (int st = 0; st < S; ++st) {
#pragma unroll
            for (int i = 0; i < kZeroChunks / Tr::kThreads; ++i) {
                const int c = tid + i * Tr::kThreads;
                *reinterpret_cast<uint4*>(smem + Tr::kOffDO + st * Tr::kSmemDO + (DV / 64) * QStride + c * 16) =
                    make_uint4(0, 0, 0, 0);
            }
        }
        fence_proxy_async();
    }
    if constexpr (!kWS) {  // (kWS: the producer's)
        if (tid == 0) {
#pragma unroll
            for (int st = 0; st < S; ++st) mbar_init(bar0 + 8 * st, 1 + 2 * BM);  // thread 0, the statistics' copies
            mbar_init_fence();
        }
        cta_sync();  // the mbarriers initialised before any load completes on them or any thread waits
                     // (the pair: dO's zero panels written, and fenced, before any TMA load or wgmma)
        if (tid < 2 * BM) {
            for (int it = 0; it < S - 1 && it < iters; ++it) load_q_do(it);
        }
    }
    load_panels<T, BN, D, Tr::kThreads>(sK, kp, f.k_row_stride, keys_here, f.d, tid);
    // V: D columns, the pair's past f.dv zero-filled by the loads
    load_panels<T, BN, D, Tr::kThreads>(sV, vp, f.v_row_stride, keys_here, kVPair ? f.dv : f.d, tid);
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async();  // the cp.async writes of K and V, for wgmma's reads
    cta_sync();

    // Gradient accumulators (m64nD): both modes: acc_k/acc_v are dK/dV of this warpgroup's 64 keys;
    // kSplit: acc_k is dV (warpgroup 0) or dK (warpgroup 1) of the CTA's 64 keys, acc_v unused (kVPair: dV's
    // columns past DV stay zero).
    float acc_k[D / 2], acc_v[kSplit ? 1 : D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) acc_k[i] = 0.f;
#pragma unroll
    for (int i = 0; i < (kSplit ? 1 : D / 2); ++i) acc_v[i] = 0.f;

    // This thread's rows in a warpgroup's accumulators: key kr0 (+8) of the warpgroup's 64; columns 8j + qc0 (+1).
    const int kr0 = wl * 16 + lane / 4;
    const int qc0 = 2 * (lane % 4);
    const int key_base = kSplit ? 0 : wg * 64;  // first key (in the CTA's block) of this warpgroup's rows

    const float scale_log2 = f.scale_log2;
    const float cap_premul = kSoftcap ? f.scale / f.softcap : 1.f;

    trace.lap(10);

    // Block i's loads: waited for, and (varlen) a partial block's rows past its sequence zeroed. Every consumer thread
    // calls it at the same block (it may end at a CTA barrier).
    const auto stage_ready = [&](int i) {
        const int st_i = i % S;
        const int rows_i = min(BM, seq.sq - blk.block(i) * BM);
        mbar_wait(bar0 + 8 * st_i, (i / S) & 1);  // Q, dO and the statistics of block i have landed
        __syncwarp();  // (the wait is a loop: the warp converged again before the .aligned wgmma instructions)
        if (varlen && rows_i < BM) {
            // The rows past this sequence's last one hold the next sequence's queries: zeros instead, so that no
            // value of another sequence (not even an inf or a NaN) reaches this one's dK and dV.
            // (the pair's dO panels past DV are zeros already, and stay zeros)
            constexpr int kChunks = BM * D / 8;  // 16-byte chunks of one Q or dO tile
            for (int c = tid; c < kChunks; c += Tr::kThreads) {
                const int r = (c / 8) % BM;  // panel rows of 8 chunks, BM rows a panel
                if (r >= rows_i) {
                    const int off = c * 16;
                    *reinterpret_cast<uint4*>(smem + Tr::kOffQ + st_i * Tr::kSmemQ + off) = make_uint4(0, 0, 0, 0);
                    *reinterpret_cast<uint4*>(smem + Tr::kOffDO + st_i * Tr::kSmemDO + off) = make_uint4(0, 0, 0, 0);
                }
            }
            fence_proxy_async();  // the zeros, for wgmma's reads (and before the stage's next TMA writes)
            cta_sync();
            // (kWS: a named barrier, not .aligned: the warp converged again before the .aligned wgmma instructions
            // that follow. The deterministic kernels have run without it, unchanged here.)
            if constexpr (kWS) __syncwarp();
        }
    };

    // S^T and dP^T of block i: [64 keys x 64 queries], K = D (kVPair: dP^T's k-steps past DV multiply zeros), issued
    // and committed (one group). Both per warpgroup, or (kSplit) S^T in warpgroup 0 and dP^T in warpgroup 1, one
    // instruction stream (the operands' descriptors differ).
    float st[32], dpt[kSplit ? 1 : 32];
    // with_s, with_dp: which of the two (constants at every call; kEarlyST issues them one at a time; with kSplit
    // with_s stands for the warpgroup's one product).
    const auto issue_products = [&](int i, bool with_s, bool with_dp) {
        const uint32_t sQ = s0 + Tr::kOffQ + (i % S) * Tr::kSmemQ;
        const uint32_t sdO = s0 + Tr::kOffDO + (i % S) * Tr::kSmemDO;
        if (with_s) {
#pragma unroll
            for (int j = 0; j < 32; ++j) st[j] = 0.f;
        }
        if (with_dp) {
#pragma unroll
            for (int j = 0; j < (kSplit ? 1 : 32); ++j) dpt[j] = 0.f;
        }
        if (with_s) fence_regs(st);
        if (with_dp) fence_regs(dpt);
        wgmma_fence();
        const uint32_t rows = static_cast<uint32_t>(key_base * 128);
        const uint32_t a0 = kSplit && wg == 1 ? sV : sK;
        const uint32_t b0 = kSplit && wg == 1 ? sdO : sQ;
        if constexpr (kExpUnderDP) {
            // (no kSplit) S^T's k-steps, then dP^T's, each product a group of its own
            const auto product = [&](auto& acc, uint32_t a_tile, uint32_t b_tile) {
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    const uint32_t ko = (kk / 4) * KStride + rows + (kk % 4) * 32;
                    const uint32_t qo = (kk / 4) * QStride + (kk % 4) * 32;
                    Wgmma<T, 64, 0, 0>::ss(acc, smem_desc(a_tile + ko, 16, 1024), smem_desc(b_tile + qo, 16, 1024), 1);
                }
                wgmma_commit();
            };
            if (with_s) product(st, sK, sQ);
            if (with_dp) product(dpt, sV, sdO);
        } else {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const uint32_t ko = (kk / 4) * KStride + rows + (kk % 4) * 32;
                const uint32_t qo = (kk / 4) * QStride + (kk % 4) * 32;
                if (with_s) Wgmma<T, 64, 0, 0>::ss(st, smem_desc(a0 + ko, 16, 1024), smem_desc(b0 + qo, 16, 1024), 1);
                if constexpr (!kSplit) {
                    if (with_dp) {
                        Wgmma<T, 64, 0, 0>::ss(dpt, smem_desc(sV + ko, 16, 1024), smem_desc(sdO + qo, 16, 1024), 1);
                    }
                }
            }
            wgmma_commit();
        }
    };
    // kEarlyS (BwdTraits90, the default mode): block it + 1's S^T and dP^T are issued right after block it's dQ
    // product, so they run while it waits for dQ and adds it; block 0's here. kEarlyST (head dim 128, the kernel
    // without mask or softcap): block it + 1's S^T alone, once dV/dK have retired, and its dP^T at the top of
    // iteration it + 1 (FA_SM90_BWD_EARLY_ST_D128 in sm90/bwd_traits.h says where it was measured).
    constexpr bool kEarlyS = Tr::kEarlyS && !kDeterministic;
    constexpr bool kEarlyST = Tr::kEarlyST && !kDeterministic && !kLocal && !kSoftcap &&
                              (!kWS || FA_SM90_BWD_WS_EARLY_ST != 0);  // (kWS: 240 registers; FA_SM90_BWD_WS_EARLY_ST)
    constexpr bool kEarly = kEarlyS || kEarlyST;
    static_assert(!kEarly || S >= 3, "block it + 1's stage is neither block it's nor the one load_next(it) refills");
    // Block i's stage waited for and its early products issued (kEarly): S^T, and dP^T too under kEarlyS.
    const auto start_early = [&](int i) {
        stage_ready(i);
        issue_products(i, true, kEarlyS);
    };
    // dQ (this warpgroup's D/2 columns) = dS K: A = dS (queries contiguous: MN-major), B = K rows
    // (columns contiguous: MN-major), K = the block's keys. An MN-major B operand is read in 64-column panels
    // from its start, so one that starts inside a panel must end in it: at D = 192 each warpgroup's 96 columns
    // are two products, 64 columns on a whole panel (dq[0, 32)) and 32 on half of the middle one (dq[32, 48)):
    // warpgroup 0 columns 0..63 and 64..95, warpgroup 1 columns 128..191 and 96..127. Their column groups of 8
    // are then (in dq's order) groups 0..7 and 8..11 of warpgroup 0's half, 4..11 and 0..3 of warpgroup 1's.
    constexpr int kDqN = D / 2;
    constexpr bool kDqTwo = kDqN > 64 && kDqN % 64 != 0;  // D = 192
    static_assert(!kDqTwo || kDqN == 96, "a dQ half is one product, or 64 + 32 columns");
    // dq_a: the one product's accumulators, or (kDqTwo) the whole panel's; dq_b: the half panel's (kDqTwo).
    constexpr int kDqA = kDqTwo ? 32 : kDqN / 2, kDqB = kDqTwo ? 16 : 1;
    const int col0 = wg * kDqN;  // first column of this warpgroup's half
    // Column group (of 8, in this warpgroup's half) of dq(4 g .. 4 g + 3): g, but at D = 192 in warpgroup 1
    // the whole panel's 8 groups (g < 8) are groups 4..11 and the half panel's 4 are groups 0..3.
    const auto dq_group = [&](int g) { return kDqTwo && wg == 1 ? (g < 8 ? g + 4 : g - 8) : g; };
    // The dQ products of the block whose dS^T is in the buffer at sdS_i, into dq_a and dq_b (zeroed here; the caller
    // commits the group).
    const auto issue_dq = [&](float (&dq_a)[kDqA], float (&dq_b)[kDqB], uint32_t sdS_i) {
#pragma unroll
        for (int i = 0; i < kDqA; ++i) dq_a[i] = 0.f;
#pragma unroll
        for (int i = 0; i < kDqB; ++i) dq_b[i] = 0.f;
        fence_regs(dq_a);
        fence_regs(dq_b);
        wgmma_fence();
        if constexpr (kDqTwo) {
            const uint32_t panel_cols = static_cast<uint32_t>((wg == 0 ? 0 : 2) * KStride);   // columns 0 or 128
            const uint32_t half_cols = static_cast<uint32_t>(KStride + (wg == 0 ? 0 : 64));   // columns 64 or 96
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                Wgmma<T, 64, 1, 1>::ss(dq_a, smem_desc(sdS_i + kk * 16 * 128, KStride, 1024),
                                       smem_desc(sK + panel_cols + kk * 16 * 128, KStride, 1024), 1);
                Wgmma<T, 32, 1, 1>::ss(dq_b, smem_desc(sdS_i + kk * 16 * 128, KStride, 1024),
                                       smem_desc(sK + half_cols + kk * 16 * 128, KStride, 1024), 1);
            }
        } else {
            const uint32_t k_cols = kDqN >= 64 ? static_cast<uint32_t>((col0 / 64) * KStride) : static_cast<uint32_t>(col0 * 2);
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                Wgmma<T, kDqN, 1, 1>::ss(dq_a, smem_desc(sdS_i + kk * 16 * 128, KStride, 1024),
                                         smem_desc(sK + k_cols + kk * 16 * 128, KStride, 1024), 1);
            }
        }
    };
    // A block's dQ (dq_a, dq_b, retired) to dq_dst: added to dq_accum (red.global), or (kWS) stored in the same layout
    // to a shared-memory buffer. frag: a full block, in the fragment layout; else rows_i rows, row by row.
    const auto put_dq = [&](const float (&dq_a)[kDqA], const float (&dq_b)[kDqB], float* dq_dst, bool frag, int rows_i) {
        // dq(i) reads register i of the half's kDqN / 2 in that order (i is a constant in the unrolled loops).
        const auto dq = [&](int i) { return kDqTwo && i >= 32 ? dq_b[i - 32] : dq_a[i]; };
        const auto put4 = [&](float* dst, int j) {
            if constexpr (kWS) {
                *reinterpret_cast<float4*>(dst) = make_float4(dq(4 * j), dq(4 * j + 1), dq(4 * j + 2), dq(4 * j + 3));
            } else {
                red_add_f32x4(dst, dq(4 * j), dq(4 * j + 1), dq(4 * j + 2), dq(4 * j + 3));
            }
        };
        const auto put2 = [&](float* dst, int j, int i) {
            if constexpr (kWS) {
                *reinterpret_cast<float2*>(dst) = make_float2(dq(4 * j + 2 * i), dq(4 * j + 2 * i + 1));
            } else {
                red_add_f32x2(dst, dq(4 * j + 2 * i), dq(4 * j + 2 * i + 1));
            }
        };
        if (frag) {
            float* dst = dq_dst + wg * (BM * kDqN) + tid % 128 * 4;
#pragma unroll
            for (int j = 0; j < kDqN / 8; ++j) put4(dst + dq_group(j) * 512, j);
        } else {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int qr = wl * 16 + lane / 4 + 8 * i;
                if (qr < rows_i) {
                    float* dst = dq_dst + static_cast<int64_t>(qr) * D + col0 + qc0;
#pragma unroll
                    for (int j = 0; j < kDqN / 8; ++j) put2(dst + 8 * dq_group(j), j, i);
                }
            }
        }
    };
    if constexpr (kEarly) {
        if (iters > 0) start_early(0);
    }
    // kLag: "iteration -1" done, for the other warpgroup's wait in iteration 0.
    if constexpr (kLag) barrier_arrive(kBarLag + 2 * wg + 1, Tr::kThreads);
    for (int it = 0; it < iters; ++it) {
        const int h = blk.head(it);
        const int m = blk.block(it);
        const int row0 = m * BM;
        const int rows_here = min(BM, seq.sq - row0);
        const int st_it = it % S;
        const uint32_t sQ = s0 + Tr::kOffQ + st_it * Tr::kSmemQ;
        const uint32_t sdO = s0 + Tr::kOffDO + st_it * Tr::kSmemDO;
        // dS^T in two buffers: this block's is written while the other warpgroup may still read the previous one
        // in its dQ product (no barrier between them: the loads no longer need one at the loop top).
        const uint32_t sdS = s0 + Tr::kOffDS + (it & 1) * Tr::kSmemDS;
        const int ds_off = Tr::kOffDS + (it & 1) * Tr::kSmemDS;

        if constexpr (!kEarly) stage_ready(it);
        trace.lap(0);
        const int64_t slot0 = bwd_row_slot(p, b, h, seq.q_row0, row0);
        const float* stats = reinterpret_cast<const float*>(smem + Tr::kOffStats + st_it * Tr::kSmemStats);

        if constexpr (kEarlyST) {
            issue_products(it, false, true);  // dP^T (S^T: at the end of the previous iteration, or before the walk)
        } else if constexpr (!kEarlyS) {
            issue_products(it, true, true);
        }
        if constexpr (kExpUnderDP) {
            wgmma_wait<1>();  // S^T (dP^T, the newer group, still runs: the exponentials below go under it)
            fence_regs(st);
        } else {
            wgmma_wait<0>();  // S^T and dP^T (kEarlyS: issued at the end of the previous iteration, or before the walk)
            fence_regs(st);
            fence_regs(dpt);
        }
        trace.lap(1);

        // P^T = exp2(S^T * scale_log2 - lse_log2[query]) (0 where masked or past the sequence), dS^T =
        // P^T (dP^T - dsum[query]) [* (1 - tanh^2)], packed to 16 bits as the A fragments of dV/dK: k-step
        // kk covers queries [16kk, 16kk + 16) = column blocks 2kk and 2kk + 1. kSplit: warpgroup 0 makes
        // P^T (fa: its A fragments) and hands P^T (1 - tanh^2) to warpgroup 1, which makes dS^T (fa too).
        const bool tile_mask = tile_masked<kLocal>(blk.mask, row0, BM, key0, BN, seq.sk);
        // ALiBi (kLocal variant only, common/alibi.cuh): the exponent is that of s + bias, as in the forward; the
        // softcap factor 1 - tanh^2 takes s without it. This thread's query row0 + qc0 + (8j + c) and key
        // key0 + key_base + kr0 + 8i, the unrolled offsets constants (alibi_bias_from). Without softcap the bias is
        // added to S^T here, before the loop, which then runs unchanged (as sm80/bwd_kernel.cuh); with softcap it
        // follows tanh inside the loop.
        const bool alibi_on = kLocal && f.alibi_slopes != nullptr && (!kSplit || wg == 0);
        const AlibiRow alibi = kLocal && kSoftcap && alibi_on
                                   ? alibi_row(f.alibi_slopes, f.alibi_batch_stride, f.alibi_head_stride,
                                               f.alibi_causal, b, h, f.softcap, f.bottom_right ? seq.sk - seq.sq : 0)
                                   : AlibiRow{false, false, 0.f, 0};
        const float key_tf = static_cast<float>(key0 + key_base + kr0);
        const float alibi_rel = static_cast<float>(row0 + qc0 + alibi.off - (key0 + key_base + kr0));
        if constexpr (kLocal && !kSoftcap) {
            if (alibi_on) {
                const AlibiRow ar = alibi_row(f.alibi_slopes, f.alibi_batch_stride, f.alibi_head_stride, f.alibi_causal,
                                             b, h, f.scale, f.bottom_right ? seq.sk - seq.sq : 0);
                const float rel0 = static_cast<float>(row0 + qc0 + ar.off - (key0 + key_base + kr0));
#pragma unroll
                for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
                    for (int i = 0; i < 2; ++i) {
#pragma unroll
                        for (int c = 0; c < 2; ++c) {
                            st[4 * j + 2 * i + c] += alibi_bias_from(ar, rel0 + static_cast<float>(8 * j + c), key_tf, 8 * i);
                        }
                    }
                }
            }
        }
        float4* px = reinterpret_cast<float4*>(smem + Tr::kOffPX) + (tid % 128);  // kSplit: 8 float4, 128 apart
        uint32_t fa[BM / 16][4], fd[kSplit ? 1 : BM / 16][4];
        if (!kSplit || wg == 0) {
            // Dropout: this lane's Philox state (formed per block: nothing of it stays live through the walk); z[c][i]
            // the word of lane dropout_t_lane(lane, c)'s call that holds keys 8 i of this warp's 16
            // (common/philox.cuh, the top of this file), for the 16-query block of column blocks j and j + 1 (j even).
            DropoutLane drop{};
            if constexpr (kDropout) drop = dropout_lane_state(f, b, h, lane);
            uint32_t z[2][2] = {{0u, 0u}, {0u, 0u}};
#pragma unroll
            for (int j = 0; j < BM / 8; ++j) {
                const float2 lse2 = *reinterpret_cast<const float2*>(stats + 8 * j + qc0);
                const float2 dsum2 = *reinterpret_cast<const float2*>(stats + BM + 8 * j + qc0);
                float handed[4];
                if constexpr (kDropout) {
                    if (j % 2 == 0) {
                        const Philox4x32Out r = dropout_philox(drop.seed, drop.offset, static_cast<uint32_t>(row0 / 16 + j / 2),
                                                               static_cast<uint32_t>((key0 + key_base) / 32 + wl / 2));
                        const uint32_t w0 = philox_word(r, dropout_t_word(wl, 0));
                        const uint32_t w1 = philox_word(r, dropout_t_word(wl, 1));
#pragma unroll
                        for (int c = 0; c < 2; ++c) {
                            z[c][0] = __shfl_sync(0xffffffffu, w0, dropout_t_lane(lane, c));
                            z[c][1] = __shfl_sync(0xffffffffu, w1, dropout_t_lane(lane, c));
                        }
                    }
                }
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    float pv2[2], ds2[2];
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const int e = 4 * j + 2 * i + c;
                        const int qc = 8 * j + qc0 + c;
                        const bool ok = qc < rows_here;
                        const float lse_c = ok ? (c ? lse2.y : lse2.x) : CUDART_INF_F;
                        float x = st[e];
                        if (kSoftcap) x = tanhf(x * cap_premul);
                        float xb = x;
                        if constexpr (kLocal && kSoftcap) {
                            if (alibi.on) xb += alibi_bias_from(alibi, alibi_rel + static_cast<float>(8 * j + c), key_tf, 8 * i);
                        }
                        float pv = fast_exp2(xb * scale_log2 - lse_c);
                        if (tile_mask) {
                            const int key = key0 + key_base + kr0 + 8 * i;
                            const int diff = key - (row0 + qc);
                            bool hidden = key >= seq.sk;
                            if (kLocal) hidden |= diff > right_bound || diff < left_bound;
                            if (hidden) pv = 0.f;
                        }
                        const float pd = kSoftcap ? pv * (1.f - x * x) : pv;  // dS / (dP - dsum)
                        // Dropout: Z of (query 8 j + qc0 + c, key 8 i of the warp's 16): dV's P^T and dP^T zeroed where
                        // dropped, the kept dP^T scaled by 1 / (1 - p) (dV's at the end); dS takes the undropped P.
                        const bool keep =
                            !kDropout || ((z[c][i] >> dropout_t_shift(lane, j)) & 0xFFu) <= drop.threshold;
                        pv2[c] = keep ? pv : 0.f;
                        if constexpr (kSplit) {
                            handed[2 * i + c] = keep ? pd : -pd;  // (dropout: the mask as the sign, pd >= 0)
                        } else if constexpr (kExpUnderDP) {
                            st[e] = pd;  // dS^T's factor, taken once dP^T has retired (below; read once, then written)
                        } else {
                            const float dsum_c = ok ? (c ? dsum2.y : dsum2.x) : 0.f;
                            const float dp = kDropout ? (keep ? dpt[e] * f.dropout_rp : 0.f) : dpt[e];
                            ds2[c] = pd * (dp - dsum_c);
                        }
                    }
                    fa[j / 2][(j % 2) * 2 + i] = pack2<T>(pv2[0], pv2[1]);
                    if constexpr (!kSplit && !kExpUnderDP) fd[j / 2][(j % 2) * 2 + i] = pack2<T>(ds2[0], ds2[1]);
                }
                if constexpr (kSplit) px[j * 128] = make_float4(handed[0], handed[1], handed[2], handed[3]);
            }
        }
        if constexpr (kExpUnderDP) {
            wgmma_wait<0>();  // dP^T
            fence_regs(dpt);
#pragma unroll
            for (int j = 0; j < BM / 8; ++j) {
                const float2 dsum2 = *reinterpret_cast<const float2*>(stats + BM + 8 * j + qc0);
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    float ds2[2];
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const int e = 4 * j + 2 * i + c;
                        const float dsum_c = 8 * j + qc0 + c < rows_here ? (c ? dsum2.y : dsum2.x) : 0.f;
                        ds2[c] = st[e] * (dpt[e] - dsum_c);
                    }
                    fd[j / 2][(j % 2) * 2 + i] = pack2<T>(ds2[0], ds2[1]);
                }
            }
        }
        trace.lap(2);
        if constexpr (kSplit) {
            // P^T handed over by one barrier of the consumers (cta_sync), executed by both warpgroups at this one
            // instruction. Warpgroup 1 arrives from the end of its dP^T product, long before warpgroup 0 has
            // its exponentials, so warpgroup 0 does not wait (measured: bench/NOTES.md). The earlier hand-over
            // (warpgroup 0 bar.arrive, warpgroup 1 bar.sync, at two instructions, with the CTA's thread count)
            // drew racecheck hazards on these stores and reads, and bar.sync at two instructions draws synccheck's
            // "divergent threads in block" (PTX: an aligned barrier is one instruction for all threads).
            cta_sync();
            load_next(it);
        }
        trace.lap(3);
        if (kSplit && wg == 1) {
#pragma unroll
            for (int j = 0; j < BM / 8; ++j) {
                const float2 dsum2 = *reinterpret_cast<const float2*>(stats + BM + 8 * j + qc0);
                const float4 pd = px[j * 128];
                const float pdv[4] = {pd.x, pd.y, pd.z, pd.w};
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    float ds2[2];
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const bool ok = 8 * j + qc0 + c < rows_here;
                        const float dsum_c = ok ? (c ? dsum2.y : dsum2.x) : 0.f;
                        // st holds dP^T here; dropout: the mask as P^T's sign (warpgroup 0 above)
                        const float hv = pdv[2 * i + c];
                        const float dp = !kDropout ? st[4 * j + 2 * i + c]
                                         : (__float_as_uint(hv) >> 31) ? 0.f : st[4 * j + 2 * i + c] * f.dropout_rp;
                        ds2[c] = (kDropout ? fabsf(hv) : hv) * (dp - dsum_c);
                    }
                    fa[j / 2][(j % 2) * 2 + i] = pack2<T>(ds2[0], ds2[1]);
                }
            }
        }

        if constexpr (kLag) {
            // The other warpgroup's iteration it - 1 done: its dS^T(it - 1) stored and fenced (for dQ(it - 1) below), its
            // dQ(it - 2) retired (this buffer free) and its dV/dK(it - 1) (block it - 1's stage free for thread 0's load).
            barrier_sync(kBarLag + 2 * (1 - wg) + ((it - 1) & 1), Tr::kThreads);
            load_next(it);
        }
        // dS^T to shared memory as [key][query] rows of 128 bytes (one panel), for dQ. The stores read the
        // registers that are also the A fragments of the dK product (fd, or fa in warpgroup 1 with kSplit).
        // They are stored before that product is issued: the PTX ISA leaves any access to a wgmma's register
        // operands undefined until wgmma.wait_group retires it. (Storing after the issue, so that the products
        // start a few instructions earlier, measured no faster: bench/NOTES.md.)
        if (!kSplit || wg == 1) {
#pragma unroll
            for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const int kr = key_base + kr0 + 8 * i;
                    const uint32_t byte = static_cast<uint32_t>(kr * 128 + ((j ^ (kr % 8)) << 4) + (lane % 4) * 4);
                    // dS^T: fd, or (kSplit, warpgroup 1) fa
                    const uint32_t v = kSplit ? fa[j / 2][(j % 2) * 2 + i] : fd[kSplit ? 0 : j / 2][(j % 2) * 2 + i];
                    *reinterpret_cast<uint32_t*>(smem + ds_off + byte) = v;
                }
            }
        }
        fence_proxy_async();  // the dS^T stores, for wgmma's reads

        // dV += P^T dO and dK += dS^T Q: [64 keys x D], K = the 64 queries (B MN-major, panels QStride
        // apart). kSplit: warpgroup 0 the first (into acc_k), warpgroup 1 the second, one instruction stream
        // (kVPair: dV's columns past DV come out zero).
        fence_regs(acc_k);
        fence_regs(acc_v);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk) {
            if constexpr (kSplit) {
                Wgmma<T, D, 0, 1>::rs(acc_k, fa[kk], smem_desc((wg == 0 ? sdO : sQ) + kk * 16 * 128, QStride, 1024), 1);
            } else {
                Wgmma<T, D, 0, 1>::rs(acc_v, fa[kk], smem_desc(sdO + kk * 16 * 128, QStride, 1024), 1);
                Wgmma<T, D, 0, 1>::rs(acc_k, fd[kk], smem_desc(sQ + kk * 16 * 128, QStride, 1024), 1);
            }
        }
        wgmma_commit();
        trace.lap(4);

        // dS^T written; every wgmma of block it - 1 retired (each warpgroup waited for its own). (kLag: the hand-over
        // above instead.)
        if constexpr (!kLag) cta_sync();
        if constexpr (!kSplit && !kWS && !kLag) load_next(it);
        __syncwarp();  // converged before the .aligned wgmma below (cta_sync is a non-aligned barrier in det mode)
        trace.lap(5);

        // The dQ of block iq: this one, or (kLag) the previous one (none at it = 0: the empty commit group keeps the
        // waits' counts).
        const int iq = kLag ? it - 1 : it;
        float* acc_rows = bwd_dq_rows(p, blk, kLag ? bwd_row_slot(p, b, blk.head(iq), seq.q_row0, blk.block(iq) * BM) : slot0);
        float dq_a[kDqA], dq_b[kDqB];  // (issue_dq)
        if (!kLag || it > 0) issue_dq(dq_a, dq_b, kLag ? s0 + Tr::kOffDS + (iq & 1) * Tr::kSmemDS : sdS);
        wgmma_commit();
        if constexpr (kEarly) {
            if constexpr (kEarlyST) {
                wgmma_wait<1>();  // dV/dK retired (dQ in flight): their A fragments free for block it + 1's S^T
                fence_dkdv(acc_k, acc_v, fa, fd);
            }
            if (it + 1 < iters) {
                start_early(it + 1);
                // dV/dK and dQ retired; block it + 1's early products (kExpUnderDP with kEarlyS: two groups) in flight
                wgmma_wait<(kExpUnderDP && kEarlyS) ? 2 : 1>();
            } else {
                wgmma_wait<0>();
            }
        } else {
            wgmma_wait<0>();  // also retires dV/dK
        }
        trace.lap(6);
        fence_regs(dq_a);
        fence_regs(dq_b);
        if constexpr (!kEarlyST) fence_dkdv(acc_k, acc_v, fa, fd);  // (kEarlyST: after the earlier wait)
        if constexpr (kWS) {
            // Block it's Q, dO and statistics read (dV/dK retired above): its stage back to the producer for block it + S.
            if (it + S < iters) WsBars::release_stage(st_it);
        }

        // A full query block's dQ goes in the fragment layout (BwdParams::dq_frag_rows, dq_frag_offset): this thread's
        // 4 floats of column group j at [warpgroup half][j][thread][4], one vector add each (half the adds of row-major
        // pairs, and a warp's adds cover 512 contiguous bytes); a partial last block row by row. (Measured 1.06-1.19x
        // the row-major adds; staging the fragments for one bulk reduction per warpgroup, 0.94-1.04x: bench/NOTES.md.)
        const int rows_q = kLag ? min(BM, seq.sq - blk.block(iq) * BM) : rows_here;
        const bool frag = rows_q == BM;
        if constexpr (kDeterministic && !kWS) barrier_sync(kBarTurn, kTurnCount);  // the turn warp saw this block's turn
        trace.lap(7);
        // This block's dQ: added to dq_accum (red.global), or (kWS) stored in the same layout to a shared-memory buffer,
        // which the producer's dQ warp adds with one bulk reduction.
        float* dq_dst = acc_rows;
        if constexpr (kWS) {
            WsBars::wait_dq_buffer(it % Tr::kDqBufs);  // the buffer's previous reduction has read it
            dq_dst = reinterpret_cast<float*>(smem + Tr::kOffDQ + (it % Tr::kDqBufs) * Tr::kSmemDQ);
        }
        if (!kLag || it > 0) put_dq(dq_a, dq_b, dq_dst, frag, rows_q);
        if constexpr (kWS) {
            fence_proxy_async();  // the stores, for the bulk reduction's reads (async proxy)
            WsBars::dq_staged(it % Tr::kDqBufs);
        }
        trace.lap(8);
        trace.count(9);
        if constexpr (kDeterministic && !kWS) barrier_arrive(kBarAdded, kTurnCount);  // adds issued: the turn warp passes the turn
        // kLag: this iteration done (dS^T(it) stored and fenced, dQ(it - 1) and dV/dK(it) retired), for the other
        // warpgroup's wait in iteration it + 1 (or after the walk).
        if constexpr (kLag) {
            barrier_arrive(kBarLag + 2 * wg + (it & 1), Tr::kThreads);
            __syncwarp();  // converged before the next iteration's .aligned wgmma (the barrier is not .aligned)
        }
    }
    if constexpr (kLag) {
        // The walk's last block's dQ, once the other warpgroup's last iteration is done (its dS^T stored).
        barrier_sync(kBarLag + 2 * (1 - wg) + ((iters - 1) & 1), Tr::kThreads);
        if (iters > 0) {
            __syncwarp();  // converged before the .aligned wgmma (the barrier is not .aligned)
            const int iq = iters - 1;
            float dq_a[kDqA], dq_b[kDqB];
            issue_dq(dq_a, dq_b, s0 + Tr::kOffDS + (iq & 1) * Tr::kSmemDS);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(dq_a);
            fence_regs(dq_b);
            const int rows_q = min(BM, seq.sq - blk.block(iq) * BM);
            put_dq(dq_a, dq_b, bwd_dq_rows(p, blk, bwd_row_slot(p, b, blk.head(iq), seq.q_row0, blk.block(iq) * BM)),
                   rows_q == BM, rows_q);
        }
    }

    // Epilogue: dK * scale and dV to 16 bits, staged through the K and V tiles (panel layout), then
    // 16-byte stores of the rows and columns this call has. (No load is in flight: each one issued was waited for.)
    cta_sync();
    const float scale = f.scale;
    auto stage = [&](const float (&acc)[D / 2], int tile, float mul) {
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int kr = key_base + kr0 + 8 * i;
                const uint32_t byte = panel_off<BN>(kr, j) + (lane % 4) * 4;
                *reinterpret_cast<uint32_t*>(smem + tile + byte) = pack2<T>(acc[4 * j + 2 * i] * mul, acc[4 * j + 2 * i + 1] * mul);
            }
        }
    };
    const float dv_scale = kDropout ? f.dropout_rp : 1.f;  // dropout: dV = (Z o P)^T dO / (1 - p)
    if constexpr (kSplit) {
        stage(acc_k, wg == 0 ? Tr::kOffV : Tr::kOffK, wg == 0 ? dv_scale : scale);  // (kVPair: dV's zeros past DV too)
    } else {
        stage(acc_k, Tr::kOffK, scale);
        stage(acc_v, Tr::kOffV, dv_scale);
    }
    cta_sync();
    T* dkp = rows_at<T>(p.dk, p.dk_batch_stride, p.dk_head_stride, p.dk_row_stride, varlen, b, hk, seq.k_row0 + key0);
    T* dvp = rows_at<T>(p.dv, p.dv_batch_stride, p.dv_head_stride, p.dv_row_stride, varlen, b, hk, seq.k_row0 + key0);
    constexpr int CPR = D / 8;
    for (int c = tid; c < BN * CPR; c += Tr::kThreads) {
        const int r = c / CPR, ch = c % CPR;
        if (r < keys_here && ch * 8 < f.d) {
            *reinterpret_cast<uint4*>(dkp + static_cast<int64_t>(r) * p.dk_row_stride + ch * 8) =
                *reinterpret_cast<const uint4*>(smem + Tr::kOffK + panel_off<BN>(r, ch));
            if (!kVPair || (ch < DV / 8 && ch * 8 < f.dv)) {  // dV's columns (the pair: DV of the call's dv)
                *reinterpret_cast<uint4*>(dvp + static_cast<int64_t>(r) * p.dv_row_stride + ch * 8) =
                    *reinterpret_cast<const uint4*>(smem + Tr::kOffV + panel_off<BN>(r, ch));
            }
        }
    }
    trace.lap(11);
#elif defined(__CUDA_ARCH__)
    // Device code for another target (the sm_80 pass, or PTX that a driver JIT-compiles, e.g. under
    // CUDA_FORCE_PTX_JIT): the host launches this kernel only where sm_90a code exists, so reaching here
    // means the driver chose other code; fail the launch loudly rather than leave the gradients unwritten.
    __trap();
#endif  // FA_SM90A_DEVICE
}

}  // namespace sm90
}  // namespace fa
