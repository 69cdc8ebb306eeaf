// Compile-time facts of the sm90 (wgmma + TMA, warp-specialised) forward kernel: tile, warpgroups, stages,
// shared-memory layout. Plain constexpr, so the registry reads them for names, launch sizes and the host's
// shared-memory checks.
#pragma once
#include <type_traits>

// The largest head dim whose kernel ping-pongs (below); a build may override it for experiments.
#ifndef FA_SM90_FWD_PINGPONG_MAX_D
#define FA_SM90_FWD_PINGPONG_MAX_D 64
#endif
// Consumer warpgroups of the head-dim-64 kernel (2, or 3 as FA3's 192-row tile; overridable for experiments).
#ifndef FA_SM90_FWD_D64_CONSUMERS
#define FA_SM90_FWD_D64_CONSUMERS 2
#endif
// Keys per K/V block of the head-dim-128 kernels over contiguous K/V (128, or 176 as FA3 picks, 144; overridable for
// experiments; the paged ones keep 128).
#ifndef FA_SM90_FWD_BN128
#define FA_SM90_FWD_BN128 128
#endif
// Keys per K/V block of the head-dim-192 kernels over contiguous K/V (96; 64 before, 112 as FA3 picks; the paged ones
// keep 64 whatever it is). Measured on the H200 (bench/NOTES.md, fifteenth session) against 64: 96 1.02/1.08/1.12x
// unmasked and 0.98/1.08/1.13x causal at 1k/4k/16k, 112 0.94/1.08/1.12x and 0.98/1.09/1.17x (both lose the separate O
// tile: O staged through Q). 96 for its smaller worst loss (1k); c_abi_test and memcheck/racecheck clean on both
// (sixteenth session).
#ifndef FA_SM90_FWD_BN192
#define FA_SM90_FWD_BN192 96
#endif
// Keys per K/V block of the head-dim-256 kernels over contiguous K/V (80, FA3's; 64 as before, overridable for
// experiments): 80 measured 1.02-1.09x 64 on the H200 (bench/NOTES.md, fifteenth session; S 40 registers a thread beside
// O's 128). The paged kernels keep 64 keys, a divisor of the block sizes the host serves (multiples of 128).
#ifndef FA_SM90_FWD_BN256
#define FA_SM90_FWD_BN256 80
#endif
// The 16-bit kernels whose q head dim is at least this store O from registers to global memory in the epilogue, as the
// fp8 ones do, instead of staging it in shared memory (0: every 16-bit kernel stages it): the Q tile is then released
// before the tile's last P V is issued (every Q K^T has retired), so the next tile's Q loads during the last P V and
// the epilogue, where D 192 and 256, whose O is staged in the Q tile, wait for it after the epilogue today; and D 128's
// separate O tile (32 KB) is free for a third K/V stage (FA_SM90_FWD_D128_STAGES; its ALiBi variant's K' panel then no
// longer fits: D 128 ALiBi calls take the per-element bias in that build). Measured on the H200: D 192/256 alone
// 0.945-0.998x (twenty-second session), D 128 with three stages 0.92-0.99x (twenty-third); off.
#ifndef FA_SM90_FWD_DIRECT_O_MIN_D
#define FA_SM90_FWD_DIRECT_O_MIN_D 0
#endif
// 2-CTA clusters that share each K/V block by TMA multicast (fwd_kernel_sm90_cluster; half the L2-to-SM traffic of K and
// V, as FlashAttention-3's Hopper forward does) for calls without a local mask (causal, window and ALiBi calls run the
// local kernels, never clustered) on 16-bit kernels, contiguous K/V, fixed lengths and an even count of row blocks:
// 1 (the default) at head dim 128, 2 at every head dim of 128 and more, 0 never. Measured on the H200 (twenty-second
// session, bench/NOTES.md) against the unclustered kernels: D 128 unmasked 1.014/1.033/1.027x at 1k/4k/16k, D 256
// 1.007/1.014/1.005x (noise-level, so left out of the default); twenty-third session, value 2 with 5 rounds: D 256
// 0.983-1.011x, D 192 0.996-1.008x (refuted there).
#ifndef FA_SM90_FWD_CLUSTER
#define FA_SM90_FWD_CLUSTER 1
#endif
#if FA_SM90_FWD_CLUSTER < 0 || FA_SM90_FWD_CLUSTER > 2
#error "FA_SM90_FWD_CLUSTER is 0 (never), 1 (head dim 128) or 2 (every head dim from 128)"
#endif
// K/V stages of the 16-bit head-dim-128 kernels (2; 3 with O staged through Q measured 0.85-0.97x, thirteenth session:
// Q then waited for the epilogue; 3 beside FA_SM90_FWD_DIRECT_O_MIN_D <= 128 measured 0.92-0.99x, twenty-third).
#ifndef FA_SM90_FWD_D128_STAGES
#define FA_SM90_FWD_D128_STAGES 2
#endif
// Where the head-dim-64 kernel (16-bit types) keeps P for O += P V: 0, in registers (the RS wgmma: the S accumulators
// packed to 16 bits); 1, in a shared-memory tile per consumer warpgroup (the SS wgmma), FA3's choice with three
// consumers, whose 160 registers hold S and O but not P beside them (bench/NOTES.md, experiment 6 of 2026-12-03).
// An experiment knob, orthogonal to FA_SM90_FWD_D64_CONSUMERS.
#ifndef FA_SM90_FWD_P_SMEM
#define FA_SM90_FWD_P_SMEM 0
#endif
// Query rows and keys (FwdParams::sq and sk, the longest sequence's under varlen) from which a call at head dim 64
// (16-bit, no causal mask, window, ALiBi or paged K/V) runs FwdTraits90Wide's kernel (three consumers, P in shared
// memory) instead of the build's own. 2048 (the default): measured 1.06-1.07x the build's kernel at 4k and 16k (twelfth
// session), 1.05-1.09x at 2k-3k (thirteenth; where fwd_d64_wide_pays's rounds model takes it), 0.96x at 1k, where a
// 192-row tile leaves 11% of its rows empty (bench/NOTES.md). 0: never, and that kernel
// is not compiled; 1: every such call (to test it). No effect where the build's own kernel is that one
// (FA_SM90_FWD_D64_CONSUMERS=3 with FA_SM90_FWD_P_SMEM=1).
#ifndef FA_SM90_FWD_D64_WIDE_MIN_KEYS
#define FA_SM90_FWD_D64_WIDE_MIN_KEYS 2048
#endif
// Load stages of the column-chunked kernel of the pair (64, 512) (3: its 200 KB of shared memory allow them;
// overridable for experiments).
#ifndef FA_SM90_FWD_VSPLIT_STAGES
#define FA_SM90_FWD_VSPLIT_STAGES 3
#endif
// Whether each CTA of a persistent forward grid takes the odd rounds of the block order in reverse (common/fwd_schedule.h
// persistent_next; FwdArgs90::zigzag): 0 never, 1 always (for tests), 2 (the default) masked calls whose order's groups
// hold fewer tiles than the GPU has SMs, so that a round of the stride spans more than one group. Measured on the
// H200 (eighteenth session, bench/NOTES.md), the rule against never: D 256 causal 1k 1.054 (two shapes), 2k 1.018, 4k
// 1.043 (groups of 96 tiles), D 192 causal 1k/2k 1.00 (128); always against never lost 1-9% at D 64/128 causal 1k-4k
// (groups of 192-400 tiles).
#ifndef FA_SM90_FWD_ZIGZAG
#define FA_SM90_FWD_ZIGZAG 2
#endif
// A share of the softmax's exponentials on the FMA pipes (common/exp2_poly.h: a degree-3 polynomial, relative error
// 7.5e-5, NaN kept) instead of the MUFU, whose 16 ex2 a cycle an SM take as long as the tensor cores' products of a
// block at head dim 64: of each 8 column groups of a thread's keys (fwd_kernel.cuh softmax, j % 8), the first
// FA_SM90_FWD_EXP2_POLY (0..8; 0, the default: none) in the kernels whose q head dim is at most
// FA_SM90_FWD_EXP2_POLY_MAX_D. Refuted on the H200 (twenty-third session, bench/NOTES.md; FlashAttention-4 does this
// on Blackwell): 1, 2, 3 of 8 ran 0.92-0.99x, 0.88-0.97x, 0.85-0.94x at D 64 and 1 and 2 0.84-0.93x at D 128 (bf16;
// fp16, dropout and ALiBi alike). ncu (D 64, 4k): the MUFU at 52% of its peak, issue 57%, tensor 48%: the kernel waits
// on its softmax's latency, not on the MUFU's rate, and 9 dependent operations lengthen that chain. Kept off.
#ifndef FA_SM90_FWD_EXP2_POLY
#define FA_SM90_FWD_EXP2_POLY 0
#endif
#if FA_SM90_FWD_EXP2_POLY < 0 || FA_SM90_FWD_EXP2_POLY > 8
#error "FA_SM90_FWD_EXP2_POLY counts column groups of 8: 0 to 8"
#endif
#ifndef FA_SM90_FWD_EXP2_POLY_MAX_D
#define FA_SM90_FWD_EXP2_POLY_MAX_D 64
#endif
// Whether the fp8 kernels ping-pong their consumers as the 16-bit head-dim-64 one does (0: no; an experiment).
#ifndef FA_SM90_FWD_FP8_PINGPONG
#define FA_SM90_FWD_FP8_PINGPONG 0
#endif
// Dropout in the sm90 forward (issue 14; fwd_kernel_sm90_dropout): 1 (the default) gives every 16-bit head-dim class
// whose P lives in registers (not FA_SM90_FWD_P_SMEM's) local dropout kernels, with and without softcap, which
// FA_PATH_AUTO then takes for the forward of a dropout call (the backward's are FA_SM90_BWD_DROPOUT's; both read the
// same Philox stream as the sm80 kernels, so the mask is the same on either path); 0 leaves dropout to the sm80
// kernels. The V head dim pairs and fp8 have none either way. Measured on the H200 (twenty-second session,
// bench/NOTES.md, p = 0.17): 1.23-1.41x the sm90 call without dropout, 1.19-1.64x PyTorch flash's dropout forward,
// faster than the sm80 kernels' call without dropout at D 128.
#ifndef FA_SM90_FWD_DROPOUT
#define FA_SM90_FWD_DROPOUT 1
#endif
// The largest head dim whose dropout kernels draw a key block's Philox words right after the block's Q K^T is issued,
// while the consumer waits for S (the words, 4 per 32 keys, then held through the softmax: 16 registers at 128 keys);
// above it they are drawn as the block's P is packed. 64 (the default): measured against packing-time draws on the
// H200 (twenty-second session) 1.028/1.041/1.021x at D 64 (full 1k, causal 1k, full 4k), 0.989/0.999/0.943x at D 128.
#ifndef FA_SM90_FWD_DROPOUT_EARLY_MAX_D
#define FA_SM90_FWD_DROPOUT_EARLY_MAX_D 64
#endif
// Dropout's keep masks drawn by the producer warpgroup (issue 14; fwd_kernel.cuh kDropMask): in the dropout kernels of
// head dims up to this (0, the default: none), producer warps 1..3, otherwise idle, make every Philox call of a key
// block and store its keep flags (a byte each, 0xFF kept) in a shared-memory ring beside the K/V stages, so that the
// consumers AND one byte permute a pair into P instead of drawing and comparing the words themselves (about 35
// instructions a call of 16 elements, on the softmax's chain). Blocks of whole 32-key calls (BN % 32 == 0: head dims
// 64, 128, 192) where the ring fits. Not yet measured: an A/B (prepared in the twenty-fourth session, without a GPU).
#ifndef FA_SM90_FWD_DROPOUT_MASKER_MAX_D
#define FA_SM90_FWD_DROPOUT_MASKER_MAX_D 0
#endif
// The producer warpgroup's setmaxnreg budget in those kernels (24 as the others'; 32 or 40 give the maskers room for
// the Philox state, the consumers then 232): an A/B knob.
#ifndef FA_SM90_FWD_DROPOUT_MASKER_REGS
#define FA_SM90_FWD_DROPOUT_MASKER_REGS 24
#endif
#if FA_SM90_FWD_DROPOUT_MASKER_REGS != 24 && FA_SM90_FWD_DROPOUT_MASKER_REGS != 32 && FA_SM90_FWD_DROPOUT_MASKER_REGS != 40
#error "FA_SM90_FWD_DROPOUT_MASKER_REGS is 24, 32 or 40 (setmaxnreg takes multiples of 8 from 24)"
#endif
// 1: those kernels' consumers wait for a block's masks and load them (16 registers at 128 keys, held through the
// softmax) right after the wait that retires its S, while the P V product still runs, instead of between the softmax
// and packing P (0, the default; an A/B knob, as FA_SM90_FWD_DROPOUT_EARLY_MAX_D is for the consumers' own draws).
#ifndef FA_SM90_FWD_DROPOUT_MASKER_EARLY
#define FA_SM90_FWD_DROPOUT_MASKER_EARLY 0
#endif
#ifdef FA_SM90_FWD_DROPOUT_EARLY
#error "FA_SM90_FWD_DROPOUT_EARLY (0/1) is now FA_SM90_FWD_DROPOUT_EARLY_MAX_D (the largest head dim that draws early)"
#endif
// ALiBi through the Q K^T product (fwd_kernel.cuh, sm90/alibi_gemm.cuh; issue 14): 1 gives the 16-bit local kernels
// without softcap (paged ones aside) a variant, launched for calls with ALiBi slopes, whose S starts with one more
// k-step that adds +-slope/u * (key - key0 - BN/2) and whose softmax adds the rest of the bias per row and key block;
// 0 keeps the per-element bias of every local kernel (the A of an A/B). Head dims above FA_SM90_FWD_ALIBI_GEMM_MAX_D
// keep the per-element bias.
#ifndef FA_SM90_FWD_ALIBI_GEMM
#define FA_SM90_FWD_ALIBI_GEMM 1
#endif
// The largest q head dim whose kernels take the variant: 128, the classes run on the H200 with it (64, 128 and the pair
// (64, 512): c_abi_test, compute-sanitizer, pytest; eleventh session). D 192/256 and the pair (192, 128) keep the
// per-element bias until they are (their ALiBi cost is 1.03-1.09x there anyway).
#ifndef FA_SM90_FWD_ALIBI_GEMM_MAX_D
#define FA_SM90_FWD_ALIBI_GEMM_MAX_D 128
#endif
// When the variant issues a key block's ALiBi step: 1 as soon as the previous block's P is packed (the step runs while
// the warpgroup waits; a commit group stays in flight across the loop's back edge), 0 right before the block's Q K^T
// (on its critical path; nothing in flight across iterations). 0 by default: on the H200 ptxas serialized the wgmma of
// the early order (C7514: accumulators read between start and end of a pipeline stage) and the ALiBi cost at D 64 was
// 1.22-1.34x; the late order compiles clean and costs 1.06-1.16x (bench/NOTES.md, eleventh session).
#ifndef FA_SM90_FWD_ALIBI_GEMM_EARLY
#define FA_SM90_FWD_ALIBI_GEMM_EARLY 0
#endif
// setmaxnreg budget of the fp8 kernels' producer warpgroup, which transposes V (24, leaving the consumers 240 as
// FA3's split does; 40 gives them 232; overridable for experiments). The consumers get what it gives back. At 232 ptxas
// serialized the d256 consumers' wgmma (C7512); with the ldmatrix transpose by key groups (transpose_v_fp8) 24
// measured 1.08-1.19x 40 at d256 and 1.00-1.06x at d128 (H200, bench/NOTES.md, sixteenth session), though the
// producer spills 20 bytes at d128.
#ifndef FA_SM90_FWD_FP8_PRODUCER_REGS
#define FA_SM90_FWD_FP8_PRODUCER_REGS 24
#endif
// K/V stages of the fp8 head-dim-128 kernel (2; 3 fits its shared memory, 160 KB: an experiment, the K, V and V^T
// rings one stage deeper so that the transposers run further ahead of the consumers). D 256's three would not fit.
#ifndef FA_SM90_FWD_FP8_D128_STAGES
#define FA_SM90_FWD_FP8_D128_STAGES 2
#endif
// Keys per K/V block of the fp8 head-dim-128 kernel (128; an experiment: 160, 192 or 224, FA3's 224, more keys per
// softmax pass and per rescale of O, the V^T stage then two 128-key panels).
#ifndef FA_SM90_FWD_FP8_BN128
#define FA_SM90_FWD_FP8_BN128 128
#endif
// The fp8 head-dim-128 forward's second kernel, on FA_SM90_FWD_FP8_WIDE_BN keys a block (224, FlashAttention-3's; its
// V^T stage two panels), which the launcher runs instead of the build's for calls without mask or softcap with at least
// FA_SM90_FWD_FP8_WIDE_MIN_KEYS keys (FwdParams::sk, the longest sequence's under varlen) where its blocks leave few
// keys empty (sm90/fwd_launch.cuh fwd_fp8_wide_pays). Measured (H200, bench/NOTES.md, seventeenth session) against the
// 128-key kernel: 0.96x at 1k, 1.03x at 1.5k, 1.07x at 3k, 1.09-1.10x at 8k-16k; its masked and softcap forms spill
// 72-612 bytes at 240 registers (1.01x causal at 16k), so they are not compiled.
// 0: never, and the kernel is not compiled; 1: every such call (to test it; c_abi_test's choice checks assume the
// default). No wide kernel either where the build's own has FA_SM90_FWD_FP8_WIDE_BN keys (FA_SM90_FWD_FP8_BN128).
#ifndef FA_SM90_FWD_FP8_WIDE_MIN_KEYS
#define FA_SM90_FWD_FP8_WIDE_MIN_KEYS 1536
#endif
#ifndef FA_SM90_FWD_FP8_WIDE_BN
#define FA_SM90_FWD_FP8_WIDE_BN 224
#endif
// ... of the fp8 head-dim-256 kernel (128, FA3's; an experiment: 64 or 96, whose S takes 32 or 48 registers a thread
// instead of 64 beside O's 128: the consumers spill 56-208 bytes at 240 with 128 keys, sixteenth session).
#ifndef FA_SM90_FWD_FP8_BN256
#define FA_SM90_FWD_FP8_BN256 128
#endif

namespace fa {
namespace sm90 {

// The kernel head dims ("classes") of the sm90 forward; any head dim a multiple of 8 up to 256 runs the
// smallest class at least as large, its columns past d read as zeros by the TMA.
constexpr bool fwd_head_dim(int D) { return D == 64 || D == 128 || D == 192 || D == 256; }
// The classes of the fp8 (e4m3) forward: a 128-byte panel row holds 128 fp8 columns, so head dims up to 128
// run the 128 kernel (FlashAttention-3's fp8 head dims are multiples of 16).
constexpr bool fwd_fp8_head_dim(int D) { return D == 128 || D == 256; }
// FlashAttention-3's V head dim pairs (head dim, V head dim) the sm90 forward has kernels for (16-bit types).
constexpr bool fwd_v_pair(int d, int dv) { return (d == 192 && dv == 128) || (d == 64 && dv == 512); }

// One CTA: a producer warpgroup (one thread issues every TMA load) and kConsumers consumer warpgroups of 64
// query rows each, so 64 * kConsumers query rows per tile; K and V stream through kStages-deep rings of BlockN keys.
// kFp8: q/k/v in e4m3 (1 byte), output bf16. fp8 wgmma reads both operands K-major, so V (keys x d, MN-major
// for the P V product) lands in a raw ring and warps 1..3 of the producer warpgroup transpose it into a V^T
// ring (d rows of BlockN key bytes) that the consumers read; O goes from registers straight to global memory.
// DV: the head dim of v and the output, D's but for FlashAttention-3's pairs (192, 128) and (64, 512) (C ABI 0.10).
// Column chunks: (64, 512)'s O of 512 fp32 columns would take 256 accumulator registers a thread, so each CTA computes
// kVCols = 256 of them, kVChunks = 2 CTAs per row block (adjacent tiles of the block order, common/fwd_schedule.h
// chunk_coord), each recomputing S = Q K^T (at head dim 64 a quarter of its P V) and the same softmax; chunk 0 writes
// the LSE. Its registers and tiles are then those of O's width 256 (64 keys, no ping-pong).
// kD64Consumers, kD64PSmem: the consumers and where P lives at head dim 64 (16-bit, D = DV; ignored elsewhere), the
// build's FA_SM90_FWD_D64_CONSUMERS and FA_SM90_FWD_P_SMEM unless given (FwdTraits90Wide below).
// kPagedKV: the tile of the paged kernels (a key block lies in one block of the pool, so BlockN divides 128).
// kFp8BlockN: an fp8 kernel's keys per block where not the build's (FwdTraits90Fp8Wide; always two stages: three of
// 224 keys would not fit).
template <int D, bool kFp8 = false, int DV = D, int kD64Consumers = FA_SM90_FWD_D64_CONSUMERS,
          bool kD64PSmem = (FA_SM90_FWD_P_SMEM != 0), bool kPagedKV = false, int kFp8BlockN = 0>
struct FwdTraits90 {
    static_assert(kFp8 ? fwd_fp8_head_dim(D) : fwd_head_dim(D),
                  "the sm90 forward has kernels for head dims 64, 128, 192 and 256 (fp8: 128 and 256)");
    static_assert(DV == D || (!kFp8 && fwd_v_pair(D, DV)), "the sm90 forward's V head dim pairs are (192, 128) and (64, 512)");
    static constexpr int kHeadDim = D;
    static constexpr int kHeadDimV = DV;
    static constexpr int kVCols = DV > 256 ? 256 : DV;  // columns of v and O one CTA computes
    static constexpr int kVChunks = DV / kVCols;        // CTAs (tiles of the block order) per row block
    static constexpr int kElemBytes = kFp8 ? 1 : 2;
    static constexpr int kPanelCols = 128 / kElemBytes;  // elements per 128-byte row of a panel
    static constexpr int kKStep = 32 / kElemBytes;       // K of one wgmma: k16 (16-bit), k32 (fp8): 32 bytes
    static constexpr int kConsumers = !kFp8 && D == 64 && DV == D ? kD64Consumers : 2;  // consumer warpgroups
    static constexpr int kBlockM = 64 * kConsumers;
    // Keys by O's width, which sets the registers: D 256 80 (FA_SM90_FWD_BN256; S 40 registers a thread beside O's 128,
    // O staged through Q), D 192 96 (FA_SM90_FWD_BN192: O 96 registers a thread and S of 128 keys would not leave room
    // at 240; at 96 and 112 (FA3's) O is staged through Q, at 64 it kept a separate tile), the pair
    // (192, 128) 128 as D 128 (its O then staged through Q), and (64, 512), whose CTA's O is 256 columns wide, 64.
    // The paged kernels take none of the knobs: their key block must divide 128 (64 where O is 192 columns or more).
    static constexpr int kBlockN = kFp8 && kFp8BlockN > 0 ? kFp8BlockN
                                 : kFp8                  ? (D == 128 ? FA_SM90_FWD_FP8_BN128 : FA_SM90_FWD_FP8_BN256)
                                 : kPagedKV              ? (kVCols >= 192 ? 64 : 128)
                                 : D == 256              ? FA_SM90_FWD_BN256
                                 : D == 192 && DV == D   ? FA_SM90_FWD_BN192
                                 : kVCols >= 192         ? 64
                                 : D == 128              ? FA_SM90_FWD_BN128
                                                         : 128;
    static constexpr int kStages = kVChunks > 1           ? FA_SM90_FWD_VSPLIT_STAGES
                                 : kFp8 && D == 128      ? (kFp8BlockN > 0 ? 2 : FA_SM90_FWD_FP8_D128_STAGES)
                                 : !kFp8 && D == 64      ? 3
                                 : !kFp8 && D == 128     ? FA_SM90_FWD_D128_STAGES
                                                         : 2;
    static constexpr int kThreads = 128 * (kConsumers + 1);
    // setmaxnreg budgets. The launch gives every thread kLaunchRegs (65536 / threads, a multiple of 8); the
    // consumers' setmaxnreg.inc can only take what the producer's setmaxnreg.dec gave back in the same CTA
    // (and waits for it forever otherwise: a hang, not an error), so (kLaunchRegs - producer) * 128 must cover
    // (consumer - kLaunchRegs) * 128 * kConsumers: 24/240 and 32/160 exactly, as FlashAttention-3's, and for fp8,
    // whose producer transposes V, FA_SM90_FWD_FP8_PRODUCER_REGS (24: 24/240) and all it gives back.
    static constexpr int kLaunchRegs = (65536 / kThreads) / 8 * 8 > 255 ? 248 : (65536 / kThreads) / 8 * 8;
    static constexpr int kProducerRegs = kFp8 ? FA_SM90_FWD_FP8_PRODUCER_REGS : kConsumers == 3 ? 32 : 24;
    static constexpr int kConsumerRegs =
        kFp8 ? kLaunchRegs + (kLaunchRegs - kProducerRegs) / kConsumers / 8 * 8 : kConsumers == 3 ? 160 : 240;
    static_assert((kLaunchRegs - kProducerRegs) * 128 >= (kConsumerRegs - kLaunchRegs) * 128 * kConsumers,
                  "the consumers' setmaxnreg.inc needs the registers the producer gives back");
    // Ping-pong: the consumers take turns to issue their products (named barriers), so one's softmax runs
    // under the other's GEMMs instead of both competing for the tensor cores at once.
    // (By O's width too: the pair (64, 512), whose P V products are four times its Q K^T, does not.)
    static constexpr bool kPingPong = kFp8 ? FA_SM90_FWD_FP8_PINGPONG != 0 : kVCols <= FA_SM90_FWD_PINGPONG_MAX_D;
    static constexpr int kPanels = D / kPanelCols;             // panels of 128-byte rows (Q, K)
    static constexpr int kPanelsV = kVCols / kPanelCols;       // ... of a CTA's V and O columns
    static constexpr int kSmemQ = kBlockM * D * kElemBytes;
    static constexpr int kSmemKV = kBlockN * D * kElemBytes;   // one K stage (and V's when DV = D)
    static constexpr int kSmemV = kBlockN * kVCols * kElemBytes;  // one V stage (the CTA's columns)
    // fp8: one V^T stage, kVtPanels panels of D rows x 128 key bytes (keys [128 p, 128 p + 128) in panel p)
    static constexpr int kVtPanels = (kBlockN + 127) / 128;
    static constexpr int kSmemVtPanel = D * 128;
    static constexpr int kSmemVt = kFp8 ? kVtPanels * kSmemVtPanel : 0;
    static constexpr int kOffQ = 0;
    static constexpr int kOffK = kOffQ + kSmemQ;
    static constexpr int kOffV = kOffK + kStages * kSmemKV;
    static constexpr int kOffVt = kOffV + kStages * kSmemV;
    static constexpr int kEndKV = kOffVt + kStages * kSmemVt;
    // P in shared memory (FA_SM90_FWD_P_SMEM, head dim 64, 16-bit): each consumer's P tile, 64 rows x kBlockN keys,
    // K-major in panels of 64 keys (128-byte rows, the 128-byte swizzle), the A operand of its SS P V product;
    // written by the consumer's own warps (fwd_kernel.cuh, pack_p), so one buffer per consumer.
    static constexpr bool kPSmem = !kFp8 && D == 64 && DV == D && kD64PSmem;
    static constexpr int kSmemPTile = kPSmem ? 64 * kBlockN * 2 : 0;  // one consumer's
    static constexpr int kOffP = kEndKV;
    static constexpr int kEndP = kOffP + kConsumers * kSmemPTile;
    // O (16-bit) is staged in its own tile where shared memory allows, so the next tile's Q loads during the
    // epilogue; otherwise in the consumer's own rows of the Q tile, which frees only after it. fp8 stores
    // O from registers (its bf16 O is twice the fp8 Q tile).
    static constexpr bool kStageO =
        !kFp8 && !(FA_SM90_FWD_DIRECT_O_MIN_D > 0 && D >= FA_SM90_FWD_DIRECT_O_MIN_D && kVChunks == 1);
    static constexpr int kSmemO =
        kStageO && kEndP + kBlockM * kVCols * 2 + 256 <= 227 * 1024 ? kBlockM * kVCols * 2 : 0;
    static constexpr bool kSeparateO = kSmemO > 0;
    static constexpr int kOffO = kEndP;
    static constexpr int kOffBar = kOffO + kSmemO;
    // Barriers (8 bytes each): q_full, q_empty, then per stage k_full, k_empty, v_full, v_empty (and, fp8,
    // vt_full, vt_empty), then v_tail (paged K/V: a tile's first V block cleared past the sequence).
    static constexpr int kBarriers = 2 + (kFp8 ? 6 : 4) * kStages + 1;
    static constexpr int kSmemBytes = kOffBar + kBarriers * 8;
    // The ALiBi variant (FA_SM90_FWD_ALIBI_GEMM) alone also holds the K' panel of its extra k-step after all of the
    // above: kBlockN rows of 16 bytes, then zeros (sm90/alibi_gemm.cuh), so the other kernels keep their layout and
    // size. The wgmma reads only the first kBlockN * 16 + 128 bytes (LBO = SBO = 128), but the panel spans the dense
    // footprint of an N x 16 operand of 16-bit elements (kBlockN * 32 bytes): compute-sanitizer's memcheck checks that
    // whole span from the descriptor's start (it reported a 4096-byte read past the smaller panel on the H200).
    // 16-bit types only (an e4m3 k-step would need more parts of the slope than it has columns).
    static constexpr int kSmemKp = kBlockN * 32;
    static constexpr int kOffKp = (kSmemBytes + 127) / 128 * 128;
    static constexpr int kSmemBytesAlibi = kOffKp + kSmemKp;
    static constexpr bool kAlibiGemm = FA_SM90_FWD_ALIBI_GEMM != 0 && !kFp8 && D <= FA_SM90_FWD_ALIBI_GEMM_MAX_D &&
                                       kSmemBytesAlibi <= 227 * 1024;
    // The dropout kernel's keep-mask ring (FA_SM90_FWD_DROPOUT_MASKER_MAX_D), after all of the above as the K' panel
    // (the other kernels keep their layout and size): kStages stages of kBlockM x kBlockN flag bytes, laid out
    // [row block of 16][32-key call][lane][16 bytes] (a Philox call's 16 elements), then a full and an empty mbarrier a
    // stage.
    static constexpr int kSmemDropStage = kBlockM * kBlockN;
    static constexpr int kOffDropMask = (kSmemBytes + 127) / 128 * 128;
    static constexpr int kOffDropBar = kOffDropMask + kStages * kSmemDropStage;
    static constexpr bool kDropMask = FA_SM90_FWD_DROPOUT_MASKER_MAX_D > 0 && !kFp8 && D <= FA_SM90_FWD_DROPOUT_MASKER_MAX_D &&
                                      DV == D && kVChunks == 1 && !kPSmem && !kPagedKV && kBlockN % 32 == 0 &&
                                      kOffDropBar + 2 * kStages * 8 <= 227 * 1024;
    static constexpr int kSmemBytesDropout = kDropMask ? kOffDropBar + 2 * kStages * 8 : kSmemBytes;
    static_assert(kSmemQ % 1024 == 0 && kSmemKV % 1024 == 0 && kSmemV % 1024 == 0, "tiles start on 1024-byte swizzle atoms");
    static_assert(!kPSmem || (kBlockN % 64 == 0 && kOffP % 1024 == 0 && kSmemPTile % 1024 == 0),
                  "P tiles of whole 64-key panels on 1024-byte swizzle atoms");
    static_assert(!kStageO || kSmemO > 0 || kSmemQ >= kBlockM * kVCols * 2, "O staged in the Q tile fits it");
    static_assert(DV % kVCols == 0 && kVCols % kPanelCols == 0, "whole column chunks of whole panels");
    static_assert(kVChunks == 1 || (kSeparateO && !kPingPong && kConsumers == 2),
                  "a column-chunked kernel stages O in its own tile (its O is wider than Q) and takes D 256's registers");
    static_assert(!kFp8 || (kBlockN % 32 == 0 && kBlockN <= 256),
                  "fp8: whole 32-key steps of P V, at most two 128-key V^T panels");
    static_assert(kSmemBytes <= 227 * 1024, "fits an H100/H200 block's shared memory");
    static_assert(!kPagedKV || 128 % kBlockN == 0, "a paged kernel's key block lies in one block of the pool");
};

// The traits of the build's kernel for (D, kFp8, DV), contiguous or paged K/V (fwd_kernel_sm90, launch_fwd, the registry).
template <int D, bool kFp8 = false, int DV = D, bool kPagedKV = false>
using FwdTraits90Of = FwdTraits90<D, kFp8, DV, FA_SM90_FWD_D64_CONSUMERS, (FA_SM90_FWD_P_SMEM != 0), kPagedKV>;

// FlashAttention-3's head-dim-64 forward (16-bit): a 192-row tile of three consumers (registers 32/160) with P in
// shared memory. The launcher runs it beside the build's own head-dim-64 kernel for the calls
// FA_SM90_FWD_D64_WIDE_MIN_KEYS selects (sm90/fwd_launch.cuh; fwd_kernel_sm90_wide).
using FwdTraits90Wide = FwdTraits90<64, false, 64, 3, true>;
// Whether the head-dim-64 16-bit forward has the wide kernel beside the build's own (FA_SM90_FWD_D64_WIDE_MIN_KEYS).
constexpr bool fwd_d64_wide() {
    return FA_SM90_FWD_D64_WIDE_MIN_KEYS > 0 && !(FA_SM90_FWD_D64_CONSUMERS == 3 && FA_SM90_FWD_P_SMEM != 0);
}
// The fp8 head-dim-128 forward's wide kernel (FA_SM90_FWD_FP8_WIDE_MIN_KEYS: 224-key blocks), and whether the build
// has it beside its own.
using FwdTraits90Fp8Wide =
    FwdTraits90<128, true, 128, FA_SM90_FWD_D64_CONSUMERS, (FA_SM90_FWD_P_SMEM != 0), false, FA_SM90_FWD_FP8_WIDE_BN>;
constexpr bool fwd_fp8_wide() {
    return FA_SM90_FWD_FP8_WIDE_MIN_KEYS > 0 && FA_SM90_FWD_FP8_WIDE_BN != FwdTraits90<128, true>::kBlockN;
}
// The wide kernel's traits of a dtype class (fp8: head dim 128; 16-bit: head dim 64).
template <bool kFp8>
using FwdTraits90WideOf = std::conditional_t<kFp8, FwdTraits90Fp8Wide, FwdTraits90Wide>;
// Of the wide kernel of a dtype class: whether the build has it, its head dim (q's and v's), and whether it has a
// softcap variant (the fp8 one has not: its softcap form spills; bench/NOTES.md, seventeenth session).
constexpr bool fwd_wide(bool fp8) { return fp8 ? fwd_fp8_wide() : fwd_d64_wide(); }
constexpr int fwd_wide_head_dim(bool fp8) { return fp8 ? FwdTraits90Fp8Wide::kHeadDim : FwdTraits90Wide::kHeadDim; }
constexpr bool fwd_wide_softcap(bool fp8) { return !fp8; }

// Whether the build has dropout kernels (FA_SM90_FWD_DROPOUT) for the sm90 forward's head-dim class D (q's and v's; the
// pairs have none) of a 16-bit dtype: where P is packed in registers, as the sm80 kernels' mask layout needs.
constexpr bool fwd_dropout_kernel(int D, bool fp8) {
    return FA_SM90_FWD_DROPOUT != 0 && !fp8 && fwd_head_dim(D) && !(D == 64 && FA_SM90_FWD_P_SMEM != 0);
}

}  // namespace sm90
}  // namespace fa
