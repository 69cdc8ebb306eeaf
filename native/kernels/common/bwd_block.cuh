// What the backward main kernels of every path share: which key block a CTA owns and which query blocks
// it walks (with the masks), the row pointers of its tiles, and the deterministic mode's ordered turns
// on dQ. sm80/bwd_kernel.cuh and sm90/bwd_kernel.cuh differ only in how they compute the five products.
#pragma once
#include <cstdint>

#include "common/bwd_schedule.h"
#include "common/mask.cuh"
#include "common/ptx.cuh"
#include "common/seq.cuh"
#include "params/bwd_params.h"
#include "params/device_flags.h"

namespace fa {

// The order in which a CTA walks its query blocks, and with it the order of the deterministic mode's dQ adds to
// each block (the key blocks add in the order they arrive there when they run at the same pace, so that none waits
// long for its turn). A key block only ever waits for key blocks launched before it, so the wait cannot deadlock
// however few CTAs fit on the GPU at once (another kernel may hold SMs).
// - LastFirst: from the last block down; key blocks take their turns in ascending n, in grid order. The default
//   mode's walk, and the deterministic one without a right mask bound. There every key block of a head reaches
//   the first block together, so key block n waits about n steps once: (M + N - 1) / M the default mode's time for
//   M query and N key blocks (1.5x at Sq = Sk with BlockN = 2 BlockM).
// - FirstUp (deterministic, a mask with a right bound: causal, windows): from the first block up; turns in
//   descending n, and the grid launches the key blocks from the last (bwd_block), so the blocks waited for were
//   launched first. Key block n + 1's range starts at or after n's, so it reaches every block at or before n does.
// An unmasked walk that rotates the start (key block n from block n) would make every turn come without a wait,
// but its waits form a cycle, which deadlocks when a head's key blocks do not all fit on the GPU at once.
enum class BwdWalk : int { LastFirst = 0, FirstUp = 1 };

// One CTA: key block n (BN keys from key0) of (batch b, kv head hk). It walks every query head of the GQA
// group and, per head, the query blocks that see its keys in the order `walk` (iteration it: head head(it),
// block block(it)).
struct BwdBlock {
    int n, hk, b;
    SeqInfo seq;
    bool varlen;
    int key0, keys_here;  // keys_here <= 0: this sequence has no keys in the block (varlen); nothing to do
    MaskBounds mask;
    BlockRange mr;        // query blocks that see some key of the block
    int group, m_count, iters;
    int n_seq;            // key blocks of this sequence (those with keys)
    BwdWalk walk;
    int copy;             // the dQ accumulator copy (and turn counters) this key block adds into: n % p.dq_copies

    __device__ __forceinline__ int head(int it) const { return hk * group + it / m_count; }
    __device__ __forceinline__ int block(int it) const {
        const int i = it % m_count;
        return walk == BwdWalk::FirstUp ? mr.begin + i : mr.end - 1 - i;
    }
};

// FA_BWD_GRID_LPT=1 (the default; 0: head-major throughout): in the default mode, a mask with a right bound and no left one (causal, a
// window open to the left) orders the grid's tail longest first. Key block n walks the query blocks from the diagonal
// on, so its work falls with n, and the head-major order below can end on a head's longest key block as likely as on
// its shortest: its last CTAs then run alone. So the last G (batch, kv head) pairs, about two waves of CTAs (G = 2 SMs
// / key blocks, at most all pairs), go key block major (every pair's key block 0, then 1, ...), longest first, and the
// rest head-major as before, which keeps a head's CTAs together for L2 (they read the same Q and dO and add into the
// same dQ rows). bench/bwd_grid_order.py: head-major 1.07x the work's lower bound at 1k/4k causal and 1.14x on the GQA
// causal row; this order 1.012-1.03x; key block major throughout 1.005x, but with the L2 reuse lost everywhere.
// Deterministic calls keep the head-major order their turns rely on. Measured on the H200 (twenty-second session,
// sm90 backward, bf16, 5 rounds against head-major): causal 1k 1.027/1.031 (D 64/128), 4k 1.045/1.043, 8k 1.032
// (D 128), GQA 4k 1.066, 16k 1.000/1.000, unmasked 1.001 (unchanged code); the sm80 backward (twenty-third, 3 rounds):
// causal 1k/4k 1.041/1.057 (D 64), 1.045/1.052 (D 128), GQA 4k 1.101, unmasked 1.001.
#ifndef FA_BWD_GRID_LPT
#define FA_BWD_GRID_LPT 1
#endif

// Block order of the grid: key blocks fastest, so that in deterministic mode every CTA a key block waits
// on (of the same batch and kv head) was launched before it: a smaller n (LastFirst), or under FirstUp a larger
// n, whose key blocks the grid then takes from the last. The choice depends on the call only, so every CTA agrees.
template <bool kLocal, int BM, int BN>
__device__ __forceinline__ BwdBlock bwd_block(const BwdParams& p) {
    const FwdParams& f = p.f;
    BwdBlock c;
    const bool first_up = p.deterministic && kLocal && f.window_right >= 0;  // mask_bounds' has_right
    int nb = blockIdx.x % p.n_blocks;
    int bhk = blockIdx.x / p.n_blocks;
    if constexpr (FA_BWD_GRID_LPT != 0 && kLocal) {
        // (a right bound without a left one: causal, where key block n's work falls with n; a sliding window's is flat)
        if (!p.deterministic && f.window_right >= 0 && f.window_left < 0) {  // the tail key block major (FA_BWD_GRID_LPT)
            const int pairs = f.b * f.hkv;
            const BwdGridCoord g = bwd_grid_coord(static_cast<int>(blockIdx.x), p.n_blocks, pairs,
                                                  bwd_lpt_tail(pairs, p.n_blocks, static_cast<int>(sm_count())));
            nb = g.n_block;
            bhk = g.pair;
        }
    }
    c.n = first_up ? p.n_blocks - 1 - nb : nb;
    c.hk = bhk % f.hkv;
    c.b = bhk / f.hkv;
    c.seq = seq_info(f, c.b);
    c.varlen = f.cu_seqlens_q != nullptr;
    c.key0 = c.n * BN;
    c.keys_here = min(BN, c.seq.sk - c.key0);
    c.mask = mask_bounds<kLocal>(f, c.seq);
    c.mr = query_block_range<kLocal>(c.mask, c.n, BM, BN, c.seq.sq, c.seq.sk);
    c.group = f.hq_per_hkv;
    c.m_count = c.mr.end - c.mr.begin;
    c.iters = c.m_count * c.group;
    c.n_seq = ceil_div(c.seq.sk, BN);
    c.walk = first_up ? BwdWalk::FirstUp : BwdWalk::LastFirst;
    c.copy = c.n % p.dq_copies;
    return c;
}

// Rows from `row` of head h of batch b's tensor (base, strides in elements): batch strides are unused in a
// variable-length batch, whose rows are packed.
template <typename T, typename Base>
__device__ __forceinline__ T* rows_at(Base* base, int64_t batch_stride, int64_t head_stride, int64_t row_stride,
                                      bool varlen, int b, int h, int64_t row) {
    return reinterpret_cast<T*>(base) + (varlen ? 0 : b * batch_stride) + h * head_stride + row * row_stride;
}

// This key block's place in the order of the dQ adds to query block m (BwdWalk), among the key blocks that see m
// and add into the same dQ copy (n mod p.dq_copies). LastFirst: the key blocks of its copy in [first, n), first the
// first key block whose range reaches m; FirstUp: those in (n, last], last the last key block whose range starts at
// or before m; both found by a binary search over the ranges, which are monotone in n. Either way a key block waits
// only for key blocks launched before it (bwd_block's grid order).
template <bool kLocal, int BM, int BN>
__device__ __forceinline__ int bwd_turn_rank(const BwdBlock& c, int m, int p_copies) {
    if (c.walk == BwdWalk::FirstUp) {
        int lo = c.n, hi = c.n_seq - 1;  // the last key block with begin <= m, in [n, n_seq)
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            const BlockRange r = query_block_range<kLocal>(c.mask, mid, BM, BN, c.seq.sq, c.seq.sk);
            if (r.begin <= m) lo = mid; else hi = mid - 1;
        }
        return (lo - c.n) / p_copies;
    }
    int lo = 0, hi = c.n;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        const BlockRange r = query_block_range<kLocal>(c.mask, mid, BM, BN, c.seq.sq, c.seq.sk);
        if (r.end > m) hi = mid; else lo = mid + 1;
    }
    return (c.n - lo) / p_copies;
}

// The turn counter of query block m of head h in this key block's dQ copy.
__device__ __forceinline__ int32_t* bwd_turn_counter(const BwdParams& p, const BwdBlock& c, int h, int m) {
    return p.sem + ((static_cast<int64_t>(c.copy) * p.f.b + c.b) * p.f.hq + h) * p.m_blocks + m;
}

// This key block's rows of its dQ accumulator copy, from row slot `slot` (bwd_row_slot), kernel_d columns each.
__device__ __forceinline__ float* bwd_dq_rows(const BwdParams& p, const BwdBlock& c, int64_t slot) {
    return p.dq_accum + c.copy * p.dq_copy_stride + slot * p.kernel_d;
}

// Deterministic mode, before block m of head h takes its turn on dQ: waits until every key block ahead of this
// one in the block's order (bwd_turn_rank) has added its part. One thread calls it: in the sm80 kernels thread 0
// (bwd_wait_turn, then a barrier of the whole CTA), in the sm90 ones the turn warp's lane 0 (then a named barrier
// where the consumers wait; sm90/bwd_kernel.cuh).
template <bool kLocal, int BM, int BN>
__device__ __forceinline__ void bwd_poll_turn(const BwdParams& p, const BwdBlock& c, int h, int m) {
    const int rank = bwd_turn_rank<kLocal, BM, BN>(c, m, p.dq_copies);
    const int32_t* sem = bwd_turn_counter(p, c, h, m);
    // Bounded (p.turn_wait_ns of the global timer, 0: unbounded): a turn that never comes (another call in
    // flight reset or advanced this workspace's counters) ends the wait instead of hanging the stream. The
    // first block to give up marks the call (sem_gave_up: the other blocks then stop waiting at once); every
    // block that leaves without its turn marks the context (device_flags: the host reports
    // FA_STATUS_DEVICE_CHECK_FAILED), since the give-up word lives in the same, possibly shared, workspace.
    // This call's dQ is then wrong.
    if (ld_acquire_gpu(sem) != rank) {
        const uint64_t start = global_timer_ns();
        while (ld_acquire_gpu(sem) != rank) {
            if (p.turn_wait_ns <= 0) continue;
            const bool timed_out = global_timer_ns() - start > static_cast<uint64_t>(p.turn_wait_ns);
            if (timed_out || ld_relaxed_gpu(p.sem_gave_up) != 0) {
                st_relaxed_gpu(p.sem_gave_up, 1);
                if (p.device_flags != nullptr) set_host_flag(p.device_flags, kDeviceFlagTurnTimeout);
                break;
            }
        }
    }
}

// The sm80 kernels' form: every thread calls it.
template <bool kLocal, int BM, int BN>
__device__ __forceinline__ void bwd_wait_turn(const BwdParams& p, const BwdBlock& c, int h, int m) {
    if (threadIdx.x == 0) bwd_poll_turn<kLocal, BM, BN>(p, c, h, m);
    __syncthreads();
}

// ... and after its adds, once a barrier has followed them: the barrier orders every warp's adds before the passing
// thread's fence and release (cumulative, as in CUTLASS's semaphore), so the next key block sees them all. The sm80
// kernels' thread 0 passes through bwd_release_turn (every thread calls it). The fence waits until the adds are
// performed at the GPU, so the sm80 kernels pass the turn of an iteration's block at a barrier in the middle of the
// next iteration (and after the walk for the last one), where the adds have had half an iteration of products to
// complete: the fence then rarely waits, and the next key block in the order gets its turn that much later
// (FA_BWD_DET_DEFER_RELEASE 0: at once, behind a barrier of its own).
__device__ __forceinline__ void bwd_pass_turn(const BwdParams& p, const BwdBlock& c, int h, int m) {
    int32_t* sem = bwd_turn_counter(p, c, h, m);
    __threadfence();
    st_release_gpu(sem, ld_acquire_gpu(sem) + 1);
}

// The same by one release increment, without bwd_pass_turn's load of the counter and its sequentially consistent
// fence: the sm90 kernels' turn warp (lane 0, after the consumers' arrival at a named barrier).
__device__ __forceinline__ void bwd_pass_turn_inc(const BwdParams& p, const BwdBlock& c, int h, int m) {
    red_release_inc_gpu(bwd_turn_counter(p, c, h, m));
}

__device__ __forceinline__ void bwd_release_turn(const BwdParams& p, const BwdBlock& c, int h, int m) {
    if (threadIdx.x == 0) bwd_pass_turn(p, c, h, m);
}

}  // namespace fa
