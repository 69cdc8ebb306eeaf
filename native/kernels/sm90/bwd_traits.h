// Compile-time facts of the sm90 (wgmma) backward main kernel: tile, warpgroups, shared-memory layout, load ring.
// Plain constexpr, so the registry reads them for names, launch sizes and the host's shared-memory checks.
#pragma once

#include "params/bwd_params.h"  // kBwdMinBlockM

// Block it + 1's S^T and dP^T issued right after block it's dQ product (1, the default; 0: after block it's adds, as
// before), so that the tensor cores compute them while the consumers wait for dQ and add it instead of idling there.
// Head dim 64 only: the products' 64 accumulators a thread live beside dK, dV, dQ and the A fragments (240 registers at
// D 64, no spills; 256 needed at D 128). The default mode only: measured (H200, bench/NOTES.md, fifteenth session)
// 1.07-1.12x on unmasked calls and 1.00x causal; the deterministic mode, whose turn barrier then waits with the
// products in flight, 0.94-1.03x, keeps the old order.
#ifndef FA_SM90_BWD_EARLY_S
#define FA_SM90_BWD_EARLY_S 1
#endif
// Head dim 128's form of it (1, the default; 0: the old order): there the next block's S^T and dP^T together do not
// fit beside dK, dV and dQ (255 registers, wgmma serialized: 0.78-0.87x, sixteenth session), so only S^T is issued
// early, once dV/dK have retired and freed their A fragments (32 accumulators a thread in flight during the dQ adds),
// and dP^T at the next iteration's top (BwdTraits90::kEarlyST). The default mode's kernel without mask or softcap only:
// measured (H200, bench/NOTES.md, seventeenth session) 1.02/1.06/1.04x at 1k/4k/16k unmasked (ptxas: 255 registers,
// 12 bytes spilled, no serialization) and 0.93-0.96x causal (the masked kernel, 16 bytes spilled), which keeps the
// old order, as the softcap kernels do (44 bytes spilled, not measured).
#ifndef FA_SM90_BWD_EARLY_ST_D128
#define FA_SM90_BWD_EARLY_ST_D128 1
#endif

// Dropout in the sm90 backward (issue 14; bwd_kernel_sm90's kDropout): 1 (the default) gives every head-dim class
// masked dropout kernels (with and without softcap, deterministic or not), which FA_PATH_AUTO then takes for the
// backward of a dropout call; 0 leaves it to the sm80 kernels. The V head dim pair has none. Measured on the H200
// (twenty-second session, bench/NOTES.md, p = 0.17): 1.01-1.43x PyTorch flash's dropout backward (the sm80 kernels:
// 0.72-1.04x), 1.21-1.67x the sm90 backward without dropout.
#ifndef FA_SM90_BWD_DROPOUT
#define FA_SM90_BWD_DROPOUT 1
#endif

// Warp specialization (issue 17; FA_SM90_BWD_WS): the default mode's kernels of head dims 64 and 128 get a third
// warpgroup (BwdTurns' shape: 24 registers for it, 240 for the consumers) whose warp 0 loads every query block's Q, dO
// (TMA) and row statistics (cp.async) into the ring once the consumers release its stage (one named barrier a stage),
// and whose warp 1 adds each block's dQ, staged by the consumers in shared memory in dq_accum's layout, to dq_accum
// with one bulk reduction (cp.reduce.async.bulk .add.f32), so that no consumer issues a load or a global add. 1: the
// kernels without mask (the form the twelfth session's branch measured 1.035-1.068x on; its causal kernels lost 8-10%),
// 2: the masked kernels too (an A/B), 0 (the default until measured on this kernel): none. Deterministic (but with
// FA_SM90_BWD_WS_DET), dropout and role-splitting (head dims 192, 256) kernels keep today's form.
#ifndef FA_SM90_BWD_WS
#define FA_SM90_BWD_WS 0
#endif
// FA_SM90_BWD_WS_DET=1: the deterministic kernels of those head dims too, their turns on dQ taken by the dQ warp
// itself (it waits for block it's turn while the consumers compute it, reduces, waits for the reduction to complete
// and passes the turn), so that no consumer ever waits for a turn: only for a free dQ buffer. (An A/B against the
// turn warpgroup's form, whose consumers wait at a named barrier per block.)
#ifndef FA_SM90_BWD_WS_DET
#define FA_SM90_BWD_WS_DET 0
#endif
// The smallest head dim whose kernels FA_SM90_BWD_WS makes warp-specialized (64: both of 64 and 128; 128: head dim
// 128's alone). Twenty-second session (H200, WS=2 against the default): d128 unmasked 1.021/1.044/1.004/1.020 (1k, 4k,
// 16k, GQA 4k), d64 unmasked 0.984-1.002, masked 0.88-0.98. Twenty-third session, `FA_SM90_BWD_WS=1
// FA_SM90_BWD_WS_MIN_D=128` against the default with 5 rounds: 1.007/1.017/1.013/1.001, below the landing rule (1.02),
// so it stays off; with FA_SM90_BWD_WS_EARLY_ST=1 0.90-0.91 (spills). bench/NOTES.md has ncu's view of why.
#ifndef FA_SM90_BWD_WS_MIN_D
#define FA_SM90_BWD_WS_MIN_D 64
#endif
// In those kernels head dim 128's early S^T (FA_SM90_BWD_EARLY_ST_D128) is off, as its registers measured 255 at the
// old cap and the consumers have 240; 1 keeps it (an A/B, for ptxas's spills against the overlap).
#ifndef FA_SM90_BWD_WS_EARLY_ST
#define FA_SM90_BWD_WS_EARLY_ST 0
#endif

// FA_SM90_BWD_EXP_UNDER_DP (issue 17; FlashAttention-3's order): S^T and dP^T are committed as two groups and the
// exponentials (P^T, its mask, the softcap factor) computed once S^T has retired, while dP^T still runs on the tensor
// cores; dS^T once dP^T has. Today both products are waited for together, so the tensor cores idle through the
// exponentials (the two warpgroups meet each iteration, so they idle together). 1: the kernels without mask, 2: the
// masked too; kernels that split the roles (head dims 192, 256) and the dropout kernels keep the order. 0: off (the
// default until measured).
#ifndef FA_SM90_BWD_EXP_UNDER_DP
#define FA_SM90_BWD_EXP_UNDER_DP 0
#endif

// FA_SM90_BWD_DQ_LAG (issue 17): block it's dQ product issued in iteration it + 1, after block it + 1's dV/dK, so
// that the mid-iteration CTA barrier (every consumer waits there until both warpgroups have stored their dS^T) becomes
// a hand-over one iteration wide: each warpgroup arrives on a named barrier of its own at the end of an iteration
// (its dS^T stored, its dQ and dV/dK products retired) and waits for the other's previous arrival just before it
// stores its next dS^T, so a warpgroup may run up to about half an iteration ahead of the other without waiting (ncu,
// twenty-third session: 11.6% of the d128 kernel's warp samples wait at that barrier). The last block's dQ follows
// the walk. 1: the kernels without mask, 2: the masked too; the default mode's kernels that do not split the roles
// (head dims 64, 128) and are not warp-specialized. 0 (the default): off. Not yet measured (prepared in the
// twenty-fourth session, without a GPU).
#ifndef FA_SM90_BWD_DQ_LAG
#define FA_SM90_BWD_DQ_LAG 0
#endif

namespace fa {
namespace sm90 {

// Deterministic mode: a third warpgroup whose first warp owns the turns on dQ (bwd_kernel_sm90): it waits for each
// query block's turn ahead of the consumers and passes it after their adds, so that neither the poll's round trip
// nor the fence that waits for the adds stalls a consumer warp. It gives its registers to the consumers (setmaxnreg:
// 24 for it, 240 for them, from 168 at launch). Measured (H200) 1.25-1.55x the consumers' own turns (thread 0 polling
// and passing, as the sm80 kernels do), and at D 64 1.09-1.11x a ninth warp alone (which caps every thread at 168
// registers: each quarter of the register file holds three of the nine warps); bench/NOTES.md, fourteenth session.
// Its loop polls the next block's turn before passing this one's by a release increment: 1.00-1.14x more than
// polling after a fenced load-and-store pass (D 64 1.04-1.14; fifteenth session).
// kThreads: the kernel's (two consumer warpgroups, and the turn warpgroup in deterministic mode).
// kThird: the kernel has a third warpgroup (deterministic mode's turns, or warp specialization's producer: kBwdWs).
template <bool kThird>
struct BwdTurns {
    static constexpr int kThreads = 256 + (kThird ? 128 : 0);
    static constexpr int kLaunchRegs = (65536 / kThreads) / 8 * 8, kTurnRegs = 24, kConsumerRegs = 240;
    static_assert(!kThird || (kLaunchRegs - kTurnRegs) >= 2 * (kConsumerRegs - kLaunchRegs),
                  "the turn warpgroup's registers cover the consumers' increase");
};

// The kernel head dims that have an sm90 main kernel (in a build with sm_90a code).
constexpr bool bwd_head_dim(int D) { return D == 64 || D == 128 || D == 192 || D == 256; }
// Whether the kernel of head dim D splits the roles between its warpgroups (below); such kernels are compiled masked
// only (sm90::BwdFamily::local_variant, the registry's variant list).
constexpr bool bwd_split(int D) { return D >= 192; }
// Whether the kernel of head dim D for these options is warp-specialized (FA_SM90_BWD_WS above). (A variable template:
// the kernel reads it too, where a constexpr function would need to be __host__ __device__.)
template <int D, bool kLocal, bool kDeterministic, bool kDropout>
inline constexpr bool kBwdWs =
    FA_SM90_BWD_WS != 0 && !bwd_split(D) && D >= FA_SM90_BWD_WS_MIN_D &&
    (!kDeterministic || FA_SM90_BWD_WS_DET != 0) && !kDropout && (!kLocal || FA_SM90_BWD_WS >= 2);
// Whether that kernel has a third warpgroup (the deterministic mode's turns, or warp specialization's producer): its
// launch shape, BwdTurns<kBwdThird<...>>, which the kernel's __launch_bounds__ and the launcher (BwdFamily) both read.
template <int D, bool kLocal, bool kDeterministic, bool kDropout>
inline constexpr bool kBwdThird = kDeterministic || kBwdWs<D, kLocal, kDeterministic, kDropout>;
// Whether the kernel of head dim D for these options computes the exponentials under dP^T (FA_SM90_BWD_EXP_UNDER_DP).
template <int D, bool kLocal, bool kDropout>
inline constexpr bool kBwdExpUnderDp =
    FA_SM90_BWD_EXP_UNDER_DP != 0 && !bwd_split(D) && !kDropout && (!kLocal || FA_SM90_BWD_EXP_UNDER_DP >= 2);
// Whether the kernel of head dim D for these options issues each block's dQ an iteration late (FA_SM90_BWD_DQ_LAG).
template <int D, bool kLocal, bool kDeterministic, bool kDropout>
inline constexpr bool kBwdDqLag = FA_SM90_BWD_DQ_LAG != 0 && !bwd_split(D) && !kDeterministic &&
                                  !kBwdWs<D, kLocal, kDeterministic, kDropout> && (!kLocal || FA_SM90_BWD_DQ_LAG >= 2);
// Whether the build has the backward's dropout kernels (FA_SM90_BWD_DROPOUT) for the class D (q's head dim = v's).
constexpr bool bwd_dropout_kernel(int D) { return FA_SM90_BWD_DROPOUT != 0 && bwd_head_dim(D); }

// Tile: 64 query rows x 128 keys (64 keys at head dims 192 and 256, where the warpgroups split the roles: dK and
// dV of 128 keys would not fit the registers).
// At head dims 192 and 256 the masked kernel also serves the calls without masks (sm90::BwdFamily::local_variant;
// no causal mask, no window: its tile test then only trims the last key block): ptxas spills 136 bytes in
// the unmasked D = 256 kernel and none in the masked one, which measured 4% faster on them (H100: 221/257/270
// against 212/247/263 TFLOP/s at 1k/4k/16k; bench/NOTES.md).
//
// DV: the head dim of v, dO and dV, D's but for FlashAttention-3's pair (192, 128) (DeepSeek's shape). Its kernel is
// D = 192's, instruction for instruction where wgmma is concerned: the dO and V tiles stay D columns wide (the layout
// below is the equal-dims one), their columns DV..D - 1 hold zeros (V's loaded as zeros, dO's cleared once at kernel
// start and never written by the TMA, which brings DV / 64 panels a stage), so dP^T = V dO^T over D / 16 k-steps is
// exact and dV's columns past DV come out zero (not stored).
template <int D, int DV = D>
struct BwdTraits90 {
    static_assert(bwd_head_dim(D), "the sm90 backward serves kernel head dims 64, 128, 192 and 256");
    static_assert(DV == D || (D == 192 && DV == 128), "the sm90 backward's V head dim pair is (192, 128)");
    static constexpr int kHeadDim = D;
    static constexpr int kHeadDimV = DV;
    static constexpr bool kSplit = bwd_split(D);  // warpgroups split the roles (see above)
    static constexpr int kBlockM = 64;
    static constexpr int kBlockN = kSplit ? 64 : 128;
    static constexpr bool kEarlyS = FA_SM90_BWD_EARLY_S != 0 && !kSplit && D == 64;  // (FA_SM90_BWD_EARLY_S; default mode)
    static constexpr bool kEarlyST = FA_SM90_BWD_EARLY_ST_D128 != 0 && !kSplit && D == 128;  // (default mode, no mask or softcap)
    static constexpr int kThreads = 256;  // two consumer warpgroups (BwdTurns: with the turn or the producer warpgroup)
    // Q and dO of a query block arrive by TMA, its row statistics (lse_log2 then dsum) by cp.async, into a ring of
    // kStages stages, each completing one mbarrier; three stages where they fit (the load of block it + 2 is issued
    // in the middle of block it), two at D = 256 (D = 192 takes 226 KB with three, and so does the pair (192, 128)).
    static constexpr int kStages = D == 256 ? 2 : 3;
    static constexpr int kSmemQ = kBlockM * D * 2;     // one Q tile
    static constexpr int kSmemDO = kBlockM * D * 2;    // one dO tile: D columns, also for the pair (zeros past DV)
    static constexpr int kTxDO = kBlockM * DV * 2;     // the bytes of a dO tile that its TMA boxes bring (DV columns)
    static constexpr int kSmemK = kBlockN * D * 2;     // K
    static constexpr int kSmemV = kBlockN * D * 2;     // V: D columns, also for the pair (zeros past DV)
    static constexpr int kSmemDS = kBlockN * kBlockM * 2;  // dS^T, [key][query]; two buffers
    static constexpr int kOffQ = 0;                     // kStages tiles
    static constexpr int kOffDO = kOffQ + kStages * kSmemQ;
    static constexpr int kOffK = kOffDO + kStages * kSmemDO;
    static constexpr int kOffV = kOffK + kSmemK;
    static constexpr int kOffDS = kOffV + kSmemV;
    static constexpr int kSmemPX = kSplit ? kBlockN * kBlockM * 4 : 0;  // P^T handed over in fp32
    static constexpr int kOffPX = kOffDS + 2 * kSmemDS;
    // FA_SM90_BWD_WS: a query block's dQ (fp32, BM x D) staged for the bulk reduction; two buffers at D = 64, one at
    // D = 128 (where a second does not fit). Sized in every kernel of the class, also those that do not use it.
    static constexpr int kDqBufs = FA_SM90_BWD_WS != 0 && !kSplit && D >= FA_SM90_BWD_WS_MIN_D ? (D == 64 ? 2 : 1) : 0;
    static constexpr int kSmemDQ = kBlockM * D * 4;
    static constexpr int kOffDQ = kOffPX + kSmemPX;  // kDqBufs
    static constexpr int kSmemStats = 2 * kBlockM * 4;  // lse_log2 then dsum, per stage
    static constexpr int kOffStats = kOffDQ + kDqBufs * kSmemDQ;  // kStages
    static constexpr int kOffBar = kOffStats + kStages * kSmemStats;  // kStages mbarriers (8 bytes each)
    static constexpr int kSmemBytes = kOffBar + kStages * 8;
    // Bytes one stage's TMA loads bring (the mbarrier's transaction count): Q and dO's DV columns.
    static constexpr int kStageTx = kSmemQ + kTxDO;
    static_assert(kBlockM >= kBwdMinBlockM, "the deterministic counters are sized for BlockM >= kBwdMinBlockM");
    static_assert(kOffK % 1024 == 0 && kOffV % 1024 == 0 && kOffDS % 1024 == 0 && kSmemQ % 1024 == 0 &&
                      kSmemDO % 1024 == 0,
                  "wgmma tiles start on 1024-byte swizzle atoms");
    static_assert(kOffDO % 1024 == 0, "TMA boxes with the 128-byte swizzle start on 1024 bytes");
    static_assert(kOffDQ % 16 == 0 && kSmemDQ % 16 == 0, "a bulk reduction's source: 16-byte aligned and sized");
    static_assert(kOffBar % 8 == 0 && 2 * kBlockM <= kThreads, "mbarriers on 8 bytes; one statistic per thread");
    static_assert(kSmemBytes <= 227 * 1024, "fits the opt-in shared memory of an sm_90 block");
    static_assert(kBlockM == kDqFragRows, "the fragment layout of dq_accum is the m64 accumulator's");
    static_assert(DV == D || kSplit, "a V head dim of its own runs a kernel that splits the roles");
    static_assert(DV % 64 == 0 && DV <= D, "dO's TMA brings whole 64-column panels, DV / 64 of a tile's D / 64");
    static_assert(kSmemDO == kSmemQ && kSmemV == kSmemK, "dO and V tiles are laid out as Q and K tiles (D columns)");
};

}  // namespace sm90
}  // namespace fa
