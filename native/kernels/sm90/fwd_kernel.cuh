// FlashAttention forward on Hopper (sm_90a): TMA loads, wgmma, warp specialisation, a persistent grid.
//
// One CTA = three warpgroups (four in the 192-row head-dim-64 wide kernel, fwd_kernel_sm90_wide). Warpgroup 0 is the
// producer: it gives most of its registers back (setmaxnreg) and one of its threads issues every load, a Q tile of 64
// rows a consumer and kStages-deep rings of K and
// V tiles, each a TMA box per 64-column panel with the 128-byte swizzle (the layout wgmma reads), each
// completing on an mbarrier ("full"); the consumers free a slot with one arrival per warp ("empty").
// Warpgroups 1.. are consumers of 64 query rows each (registers raised to 240 with two of them):
//   S = Q K^T   wgmma m64nBN, A = Q and B = K from shared memory (both K-major)
//   O += P V    wgmma m64nD,  A = P from registers (the S accumulators, rescaled and packed to 16 bits),
//               B = V from shared memory (MN-major: V needs no transpose)
// P in shared memory (FwdTraits90::kPSmem, FA_SM90_FWD_P_SMEM at head dim 64, FA3's choice for three consumers of 160
// registers, which cannot hold P beside S and O): O += P V is an SS wgmma, A = P from the consumer's own P tile (64 rows
// x BN keys, K-major, the 128-byte swizzle, as Q). pack_p stores P(n) there with stmatrix (each warp its own 16 rows)
// once the wait that retires P(n+1) V(n+1) has returned (one buffer per consumer, no overwrite under a running
// product), then fence.proxy.async and __syncwarp before the warp's next issue (see pack_p).
// Inside a warpgroup the softmax of key block n overlaps the P V product of block n+1 (FA3's intra-
// warpgroup pipelining): issue S(n) = Q K(n)^T, issue O += P(n+1) V(n+1), wait for S(n) only, mask and
// softmax it while the P V product runs, then wait for that, rescale O and pack P(n).
// With kPingPong the consumers also take turns to issue their products (named barriers 4.., a token
// passed round after each issue), so one warpgroup's softmax runs under the other's GEMMs (FA3's ping-pong).
// Key blocks run from the last visible one down, so only the first blocks (and, with a left window, the
// last) need the per-element mask. Tiles come from the forward's block order (common/fwd_schedule.h),
// each CTA taking every gridDim.x-th (one tile each when the launcher gives one CTA per tile; odd rounds in
// reverse where the launcher sets FwdArgs90::zigzag): heavy row blocks first, a group of heads' K/V reused
// from L2. The epilogue stages O in shared memory (its own tile at d64/d128, which frees the Q tile for the
// next one at once; else the warpgroup's own rows of the Q tile) for 16-byte coalesced stores (any strides,
// varlen tails) and writes the LSE from registers; a learnable sink joins the row's denominator there
// (common/sink.cuh), the main loop does not change.
// A V head dim other than q's: (192, 128) is the kernel above with V and O of 128 columns. (64, 512)'s O would
// take 256 accumulator registers a thread, so its kernel splits O's columns (FwdTraits90::kVChunks): each tile of
// the block order is two tiles (common/fwd_schedule.h chunk_coord), adjacent so that both run at once and share Q,
// K and V through L2, each computing the whole S = Q K^T and softmax and P V over its 256 columns of V (TMA boxes
// at column 256 * chunk), then writing those columns of O; only chunk 0 writes the LSE.
//
// ALiBi (common/alibi.cuh) is added per element in softmax, but calls with slopes on the 16-bit local kernels without
// softcap run their kAlibiGemm variant (FA_SM90_FWD_ALIBI_GEMM; sm90/alibi_gemm.cuh): one more k16 step, A = the slope
// in three parts from registers, B = a constant panel of key offsets, starts each key block's S (issued as soon as the
// previous block's P is packed, so that it runs while the warpgroup waits) and adds +-slope * (key - key0 - BN / 2);
// softmax adds the rest, a constant per row and block, to the block's row max and the exponent's constant. Blocks that
// straddle the diagonal of one of the warpgroup's rows (the distance form's |i + off - j|) take a zero A and the
// per-element bias. The variant is a kernel of its own (launch_fwd picks it), so that the local kernel of causal and
// windowed calls without slopes does not change.
//
// fp8 (e4m3 q/k/v, bf16 O; FwdTraits90<D, true>, D 128/256): the same roles and pipeline with 1-byte tiles
// (128-column panels), wgmma m64nNk32 e4m3, and V transposed: fp8 wgmma reads both operands K-major, so V lands
// in a raw ring and producer warps 1..3 (registers 24, consumers 240) transpose each stage into a V^T ring that
// the consumers read (transpose_v_fp8, whose key order makes the S accumulators the A fragment of P with no
// shuffles). The descales of the tile's (sequence, KV head) scale the scores (inside tanh under softcap) and
// O; P = exp2(x - max + 8) in [0, 256] (FlashAttention-3's offset, taken back out of the LSE); O is stored from
// registers. Descales are taken as given: 0, negative or non-finite factors give NaN rows, as in FA3.
//
// Dropout (fwd_kernel_sm90_dropout, FA_SM90_FWD_DROPOUT; common/dropout.cuh): the local kernels' variant that zeroes
// the dropped elements of the packed P before its P V product, from FlashAttention-2's Philox stream. A wgmma
// accumulator's warp holds its 16 rows in mma.sync's layout (lane l: rows l / 4 and l / 4 + 8, columns 2 (l % 4) and
// 2 (l % 4) + 1 of every 8), so the sm80 kernels' mapping carries over: one Philox call per warp's 16 x 32 block of
// (row, key), lane l taking bytes of its own call. The row sums keep the undropped P, O's normalisation takes the
// 1 / (1 - p), the LSE is unchanged.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math_constants.h>

#include "common/alibi.cuh"
#include "common/dropout.cuh"
#include "common/exp2_poly.h"
#include "common/fwd_schedule.h"
#include "common/mask.cuh"
#include "common/paged_kv.cuh"
#include "common/ptx.cuh"
#include "common/seq.cuh"
#include "common/sink.cuh"
#include "common/tile_io.cuh"
#include "params/fwd_params.h"
#include "sm90/alibi_gemm.cuh"
#include "sm90/async.cuh"
#include "sm90/fwd_trace.cuh"
#include "sm90/fwd_traits.h"
#include "sm90/wgmma.cuh"

namespace fa {
namespace sm90 {

// The kernel's parameter: the call's params and the TMA descriptors of q, k and v ([b][rows][heads][d],
// rows = total rows when varlen, with b = 1), built per call by the launcher.
struct FwdArgs90 {
    FwdParams p;
    TmaMap q, k, v;
    // Nonzero: each CTA of the persistent grid takes the odd rounds of the block order in reverse (common/fwd_schedule.h
    // persistent_next; the launcher's choice, FA_SM90_FWD_ZIGZAG).
    int zigzag = 0;
};

// What both roles compute of a tile: its place, its rows and the key blocks any of its rows sees.
struct FwdTile90 {
    int m_block, h, b;
    int v_chunk;  // which kVCols columns of v and O (FwdTraits90::kVChunks; 0 but for the pair (64, 512))
    SeqInfo seq;
    MaskBounds mask;
    int row0, rows;   // rows = 0: no rows of this sequence here (varlen)
    BlockRange keys;  // empty: every row is fully masked
};

// The input element type's facts: fp8 (e4m3) q/k/v give a bf16 output.
template <typename T>
struct FwdIo90 {
    static constexpr bool kFp8 = false;
    using Out = T;
};
template <>
struct FwdIo90<__nv_fp8_e4m3> {
    static constexpr bool kFp8 = true;
    using Out = __nv_bfloat16;
};

// fp8: the producer's warps 1..3 transpose a V stage ([BN keys][D bytes], TMA's panels of 128-byte rows,
// 128-byte swizzle) into a V^T stage ([D rows][128 key bytes], the same swizzle), the K-major B operand of
// O += P V. The keys of each 32-key k-step are stored permuted, so that the S accumulators a thread holds
// are already the fp8 A fragment of P (pack_p): k position 16h + 4t + e (h, e in 0..1 and 0..3, t in 0..3)
// holds key 16h + 2t + (e & 1) + 8 (e >> 1), the order of a thread's columns {2t, 2t+1, 2t+8, 2t+9} in the
// accumulator layout; so a 16-byte chunk of a V^T row holds the 16 keys of one 16-key group g.
// The transpose works on a 16-bit view of the bytes. ldmatrix.trans of an 8 x 8 block (8 keys x 8 column pairs) gives
// lane l the pairs (2 j, 2 j + 1) of keys a and a + 1, j = l / 4, a = 2 (l % 4); with the block of keys a + 8 and a + 9
// beside it, one byte permute makes the word of V^T row 2 j (keys a, a + 1, a + 8, a + 9: the permuted order, k
// positions 4 (l % 4) + e of the group) and one that of row 2 j + 1. stmatrix stores 8 V^T rows x 16 bytes a block,
// lane l's word in row l / 4 at bytes 4 (l % 4). A work item: group g and two 16-column chunks 2 cp, 2 cp + 1
// (ldmatrix.x4: keys 16 g + [0, 8) and [8, 16) of each chunk), D / 32 of them per group; each warp takes whole groups,
// so that its items' addresses are one XOR and an immediate offset from the group's (dealing the items round-robin
// instead measured 0.88-1.05x). The first version (4-byte loads and byte permutes, until the sixteenth session) issued
// a third of the kernel's instructions (bench/NOTES.md). Bank conflicts: a load phase reads 8 keys
// of one chunk (8 distinct swizzled positions); a store block takes the rows 2 j of its chunk for j < 4 and 2 j + 1 for
// j >= 4 (its twin the others: lanes 16..31 swap their two words), 8 distinct residues mod 8 that the swizzle spreads
// over all banks. (A CPU simulation of every lane against the first version and the layout's definition, D 128 and
// 256: the same bytes, each written once, no conflicts.) src, dst: the stages' shared-memory addresses (1024-aligned).
template <int D, int BN>
__device__ __forceinline__ void transpose_v_fp8(uint32_t src, uint32_t dst, int warp, int nwarps, int lane) {
    constexpr int kGroups = BN / 16;
    constexpr int kPairs = D / 32;
    const int mat = lane / 8, i = lane % 8;  // the block (of the x4) and its row this lane addresses
    const uint32_t ld_row = src + (8 * (mat & 1) + i) * 128;  // key 8 (mat & 1) + i of the group
    const int dr = (mat & 1) == (i < 4 ? 0 : 1) ? 2 * i : 2 * i + 1;  // the V^T row (of the chunk) of store row i
    const uint32_t sel0 = lane < 16 ? 0x6420u : 0x7531u, sel1 = lane < 16 ? 0x7531u : 0x6420u;
    // Chunk c = 2 cp + h of this lane's block: c % 8 = (2 cp) % 8 ^ h and c / 8 = 2 cp / 8, so the swizzled load
    // address is the lane's row with (i ^ h) in bits 4..6, XORed with the pair's (2 cp) % 8, plus the panel's offset;
    // the store's, the lane's V^T row with (dr & 7) ^ g in bits 4..6, plus 32 rows a pair.
    const int h = mat >> 1;
    const uint32_t ld_lane = ld_row + ((i ^ h) << 4);
    const uint32_t st_lane = dst + (16 * h + dr) * 128 + ((dr & 7) << 4);
#pragma unroll 1
    for (int g = warp; g < kGroups; g += nwarps) {
        const uint32_t ld_g = ld_lane + g * (16 * 128);
        // (blocks of more than 128 keys, FA_SM90_FWD_FP8_BN128: group g in V^T panel g / 8, at chunk g % 8)
        const uint32_t st_g = BN > 128 ? (st_lane + (g / 8) * (D * 128)) ^ (static_cast<uint32_t>(g % 8) << 4)
                                       : st_lane ^ (static_cast<uint32_t>(g) << 4);
#pragma unroll
        for (int cp = 0; cp < kPairs; ++cp) {
            uint32_t r0, r1, r2, r3;
            ldmatrix_x4_trans(r0, r1, r2, r3, (ld_g ^ (((2 * cp) % 8) << 4)) + (2 * cp / 8) * (BN * 128));
            stmatrix_x4(st_g + cp * (32 * 128), __byte_perm(r0, r1, sel0), __byte_perm(r0, r1, sel1),
                        __byte_perm(r2, r3, sel0), __byte_perm(r2, r3, sel1));
        }
    }
}

// kPairs: the order of a grid of 2-CTA clusters (common/fwd_schedule.h pair_coord; FA_SM90_FWD_CLUSTER).
template <bool kLocal, int BM, int BN, int kVChunks, bool kPairs = false>
__device__ __forceinline__ FwdTile90 fwd_tile90(const FwdParams& p, int tile) {
    FwdTile90 t;
    ChunkCoord cc;  // common/fwd_schedule.h
    if constexpr (kPairs) {
        cc.c = pair_coord(p, tile);
        cc.chunk = 0;
    } else {
        cc = chunk_coord<kVChunks>(p, tile);
    }
    const BlockCoord c = cc.c;
    t.v_chunk = cc.chunk;
    t.m_block = c.m_block;
    t.h = c.h;
    t.b = c.b;
    t.seq = seq_info(p, c.b);
    t.row0 = c.m_block * BM;
    t.rows = t.row0 < t.seq.sq ? min(BM, t.seq.sq - t.row0) : 0;
    t.mask = mask_bounds<kLocal>(p, t.seq);
    t.keys = t.rows > 0 ? key_block_range<kLocal>(t.mask, t.row0, t.rows, t.seq.sk, BN) : BlockRange{0, 0};
    return t;
}

#ifdef FA_SM90A_DEVICE
// The kernel's body for its traits Tr (FwdTraits90<D, kFp8, DV, ...>; DV: v's and O's head dim, the pairs (192, 128)
// and (64, 512), else D): fwd_kernel_sm90 runs the build's traits, fwd_kernel_sm90_wide a wide kernel's (the
// head-dim-64 kernel with three consumers and P in shared memory, the fp8 head-dim-128 one on 224-key blocks), whatever
// the build's traits are. `a` is the kernel's __grid_constant__ parameter (the TMA maps are read at its address).
// kAlibiGemm: the ALiBi variant (fwd_kernel_sm90 only; the wide kernels serve no local mask, hence no ALiBi).
// kCluster 2 (fwd_kernel_sm90_cluster; FA_SM90_FWD_CLUSTER): the CTA is one of a 2-CTA cluster that takes adjacent row
// blocks of one head (pair_coord), each producer loading half the panels of every K and V block with TMA multicast
// into both CTAs' stages; a stage frees when the consumers of both CTAs have released it (their arrivals on both
// CTAs' empty barriers), and a producer waits for its stages' last releases before its CTA may exit.
// kDropout (fwd_kernel_sm90_dropout; FA_SM90_FWD_DROPOUT): the call's dropout on P (see the top of this file).
template <typename T, int D, bool kLocal, bool kSoftcap, int DV, bool kPaged, class Tr, bool kAlibiGemm, int kCluster = 1,
          bool kDropout = false>
__device__ __forceinline__ void fwd_sm90_body(const FwdArgs90& a) {
    constexpr bool kFp8 = FwdIo90<T>::kFp8;
    static_assert(!kDropout || (kLocal && !kFp8 && !kPaged && !kAlibiGemm && kCluster == 1 && !Tr::kPSmem &&
                                Tr::kVChunks == 1 && DV == D && Tr::kBlockN % 16 == 0),
                  "dropout: the 16-bit local kernels of square head dims with P in registers");
    static_assert(kCluster == 1 || (kCluster == 2 && !kLocal && !kPaged && !kFp8 && !kAlibiGemm && Tr::kVChunks == 1 &&
                                    !Tr::kPingPong),
                  "2-CTA clusters: the 16-bit kernels without a local mask, paging, column chunks or ping-pong");
    constexpr bool kPairs = kCluster > 1;
    static_assert(!kPaged || (kLocal && !kFp8), "paged K/V runs in the local family, 16-bit types only");
    static_assert(Tr::kHeadDim == D && Tr::kHeadDimV == DV, "the traits of this head dim pair");
    static_assert(!kAlibiGemm || (kLocal && !kSoftcap && !kPaged && Tr::kAlibiGemm),
                  "ALiBi through Q K^T: contiguous 16-bit local kernels without softcap (tanh would take the bias in)");
    using TO = typename FwdIo90<T>::Out;  // the output's element type
    constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, S = Tr::kStages;
    // A CTA computes VC of O's DV columns, those of its tile's column chunk (VCH chunks: 2 for (64, 512), else 1).
    constexpr int VC = Tr::kVCols, VCH = Tr::kVChunks;
    constexpr int PC = Tr::kPanelCols, KS = Tr::kKStep;
    constexpr bool kAlibiEarly = FA_SM90_FWD_ALIBI_GEMM_EARLY != 0;  // when the ALiBi step is issued (fwd_traits.h)
    // Dropout: a block's Philox words drawn while the consumer waits for its S (FA_SM90_FWD_DROPOUT_EARLY_MAX_D): kDropCalls
    // calls of 32 keys cover its BN keys from any start (BN % 32 == 16: blocks start mid-call on odd n).
    // Dropout's keep masks from producer warps 1..3 (FA_SM90_FWD_DROPOUT_MASKER_MAX_D, FwdTraits90::kDropMask): they draw
    // every call of a key block into the block's stage of the mask ring (mask_full / mask_empty below, as a K stage's
    // barriers), and the consumers read the flags in pack_p; no words are drawn early then.
    constexpr bool kDropMask = kDropout && Tr::kDropMask;
    constexpr bool kDropEarly = kDropout && !kDropMask && D <= FA_SM90_FWD_DROPOUT_EARLY_MAX_D;
    constexpr int kDropCalls = kDropEarly ? dropout_block_calls(BN) : 1;
    // fp8: P = exp2(x - max + 8) lies in [0, 256], the upper range of e4m3 (FlashAttention-3's offset); the
    // row sum carries the same 2^8, which O's normalisation cancels and the LSE takes back out.
    constexpr float kPOffset = kFp8 ? 8.f : 0.f;
    // Of each 8 column groups (j % 8 in softmax), the first kPolyGroups take 2^x from common/exp2_poly.h (FMA pipes)
    // instead of ex2 (MUFU): FA_SM90_FWD_EXP2_POLY, at q head dims up to FA_SM90_FWD_EXP2_POLY_MAX_D (fwd_traits.h).
    constexpr int kPolyGroups = D <= FA_SM90_FWD_EXP2_POLY_MAX_D ? FA_SM90_FWD_EXP2_POLY : 0;
    constexpr int QPanel = BM * 128, KVPanel = BN * 128;  // bytes between the panels (128-byte rows) of a tile
    constexpr int PPanel = 64 * 128;                      // ... of a consumer's P tile (Tr::kPSmem)
    constexpr uint32_t kConsumerWarps = 4 * Tr::kConsumers;

    extern __shared__ __align__(1024) unsigned char smem[];
    const FwdParams& p = a.p;
    const uint32_t s0 = smem_u32(smem);
    const uint32_t sQ = s0 + Tr::kOffQ;
    const uint32_t bar = s0 + Tr::kOffBar;
    const uint32_t q_full = bar, q_empty = bar + 8;
    // Dropout's rng_state, once per call (block 0), whatever the tiles (common/dropout.cuh).
    if constexpr (kDropout) write_dropout_rng_state(p);
    const auto k_full = [&](int s) { return bar + 16 + 32 * s; };
    const auto k_empty = [&](int s) { return bar + 24 + 32 * s; };
    const auto v_full = [&](int s) { return bar + 32 + 32 * s; };
    const auto v_empty = [&](int s) { return bar + 40 + 32 * s; };
    const auto vt_full = [&](int s) { return bar + 16 + 32 * S + 16 * s; };  // fp8
    const auto vt_empty = [&](int s) { return bar + 24 + 32 * S + 16 * s; };
    const uint32_t v_tail = bar + 16 + (kFp8 ? 48 : 32) * S;  // paged K/V (below)
    const auto k_tile = [&](int s) { return s0 + Tr::kOffK + s * Tr::kSmemKV; };
    const auto v_tile = [&](int s) { return s0 + Tr::kOffV + s * Tr::kSmemV; };
    const auto vt_tile = [&](int s) { return s0 + Tr::kOffVt + s * Tr::kSmemVt; };
    // The barriers of the V stage the consumers read: V itself, or (fp8) its transpose.
    const auto pv_full = [&](int s) { return kFp8 ? vt_full(s) : v_full(s); };
    const auto pv_empty = [&](int s) { return kFp8 ? vt_empty(s) : v_empty(s); };
    constexpr uint32_t kTransposeWarps = 3;  // fp8: producer warps 1..3
    constexpr uint32_t kTailWarps = 3;       // paged K/V (16-bit): producer warps 1..3
    constexpr uint32_t kMaskWarps = 3;       // dropout's keep masks (kDropMask): producer warps 1..3
    const auto mask_full = [&](int s) { return s0 + Tr::kOffDropBar + 16 * s; };
    const auto mask_empty = [&](int s) { return s0 + Tr::kOffDropBar + 16 * s + 8; };
    // The setmaxnreg budgets: the traits', or (kDropMask) FA_SM90_FWD_DROPOUT_MASKER_REGS for the producer and what it
    // gives back for the consumers (24/240, 32/232 and 40/232 with two consumers).
    constexpr int kProducerRegs = kDropMask ? FA_SM90_FWD_DROPOUT_MASKER_REGS : Tr::kProducerRegs;
    constexpr int kConsumerRegs =
        !kDropMask ? Tr::kConsumerRegs
                   : (Tr::kLaunchRegs + (Tr::kLaunchRegs - kProducerRegs) / Tr::kConsumers / 8 * 8 < 240
                          ? Tr::kLaunchRegs + (Tr::kLaunchRegs - kProducerRegs) / Tr::kConsumers / 8 * 8
                          : 240);
    static_assert((Tr::kLaunchRegs - kProducerRegs) >= (kConsumerRegs - Tr::kLaunchRegs) * Tr::kConsumers,
                  "the consumers' setmaxnreg.inc needs the registers the producer gives back");

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    if (tid == 0) {
        mbar_init(q_full, 1);
        mbar_init(q_empty, kConsumerWarps);
        for (int s = 0; s < S; ++s) {
            mbar_init(k_full(s), 1);
            mbar_init(k_empty(s), kConsumerWarps * kCluster);  // (kCluster: both CTAs' consumers release a stage)
            mbar_init(v_full(s), 1);
            mbar_init(v_empty(s), kFp8 ? kTransposeWarps : kConsumerWarps * kCluster);  // fp8: the transposers read V
            if (kFp8) {
                mbar_init(vt_full(s), kTransposeWarps);
                mbar_init(vt_empty(s), kConsumerWarps);
            }
        }
        mbar_init(v_tail, kTailWarps);
        if constexpr (kDropMask) {
            for (int s = 0; s < S; ++s) {
                mbar_init(mask_full(s), kMaskWarps);
                mbar_init(mask_empty(s), kConsumerWarps);
            }
        }
        mbar_init_fence();
    }
    // The ALiBi variant's K' panel (sm90/alibi_gemm.cuh), constant, before any consumer's first Q K^T.
    if constexpr (kAlibiGemm) write_alibi_kp<T, BN>(smem + Tr::kOffKp, tid, Tr::kThreads);
    if constexpr (kCluster > 1) {
        __syncwarp();    // (converged after thread 0's initialisation, before the .aligned cluster barrier)
        cluster_sync();  // both CTAs' barriers initialised before either's multicast or arrivals reach them
    } else {
        __syncthreads();
    }
    const uint32_t rank = kCluster > 1 ? cluster_ctarank() : 0u;  // this CTA's place in its cluster
    constexpr uint16_t kClusterMask = (1u << kCluster) - 1;       // every CTA of the cluster
    // load(pn) for this CTA's share of `panels` panels (rank r: [r panels / kCluster, (r + 1) panels / kCluster)), with
    // compile-time bounds in each branch (the producer runs at 24 registers: no loop state kept live).
    const auto multicast_share = [&](uint32_t r, auto panels_c, auto&& load) {
        constexpr int kP = decltype(panels_c)::value;
        if (r == 0) {
#pragma unroll
            for (int pn = 0; pn < kP / kCluster; ++pn) load(pn);
        } else {
#pragma unroll
            for (int pn = kP / kCluster; pn < kP; ++pn) load(pn);
        }
    };

    const bool varlen = p.cu_seqlens_q != nullptr;
    // Paged K/V (kPaged kernels, C ABI 0.11, 16-bit types; common/paged_kv.cuh): the K and V maps span the pool of blocks, a key block
    // is loaded from its block's rows. TMA cannot stop at a sequence's end inside a block, so the rows of the tile's
    // first (last visible, the only partial) key block past the sequence would bring the block's other contents in:
    // K's are masked like any hidden key, but V's would meet P's zeros (0 * NaN is NaN). So producer warps 1..3
    // clear those V rows once the block lands and arrive on v_tail (one phase per tile with keys), on which the
    // consumers wait before that block's P V. They wait for the tile's Q first: it is loaded only after the
    // consumers released the previous tile's Q, so v_tail never runs a phase ahead of the consumers' waits.
    constexpr bool paged = kPaged;
    const int num_tiles = p.m_blocks * p.b * p.hq * VCH;  // the launcher checked it fits an int
    // This CTA's next tile of the block order (common/fwd_schedule.h; zigzag: the launcher's choice).
    const bool zigzag = FA_SM90_FWD_ZIGZAG != 0 && kCluster == 1 && a.zigzag != 0;
    const auto next_tile = [&](int tile) {
        return persistent_next(tile, static_cast<int>(blockIdx.x), static_cast<int>(gridDim.x), num_tiles, zigzag);
    };

    // The producer's block order for its helper warps (fp8's V transposers, dropout's maskers): every key block of every
    // tile of this CTA with keys, from the last visible one down, as the loading thread and the consumers walk them;
    // per_block(t, n, stage, phase) with the ring's stage and phase of the block.
    const auto walk_blocks = [&](auto&& per_block) {
        int kv = 0;
        for (int tile = blockIdx.x; tile < num_tiles; tile = next_tile(tile)) {
            const FwdTile90 t = fwd_tile90<kLocal, BM, BN, VCH, kPairs>(p, tile);
            if (t.keys.end <= t.keys.begin) continue;
            for (int n = t.keys.end - 1; n >= t.keys.begin; --n) {
                per_block(t, n, kv % S, static_cast<uint32_t>((kv / S) & 1));
                ++kv;
            }
        }
    };

    if (tid < 128) {
        // ---- producer ----
        regs_dealloc<kProducerRegs>();
        if (tid == 0) {
            tma_prefetch_map(a.q);
            tma_prefetch_map(a.k);
            tma_prefetch_map(a.v);
            int kv = 0, qn = 0;  // K/V blocks and Q tiles loaded so far (ring slot and phase)
            int slot = 0;
            for (int tile = blockIdx.x; tile < num_tiles; tile = next_tile(tile), ++slot) {
                const FwdTile90 t = fwd_tile90<kLocal, BM, BN, VCH, kPairs>(p, tile);
                FA_TRACE(0, slot, 0);
                FA_TRACE_AT(0, slot, 7, tile | (static_cast<long long>(max(t.keys.end - t.keys.begin, 0)) << 32));
                if (t.keys.end <= t.keys.begin) continue;  // no rows, or all masked: the consumers write zeros
                const int hk = t.h / p.hq_per_hkv;
                const int bb = varlen ? 0 : t.b;
                const int q_row = static_cast<int>(t.seq.q_row0) + t.row0;
                const int k_row = static_cast<int>(t.seq.k_row0);
                for (int n = t.keys.end - 1; n >= t.keys.begin; --n) {
                    const int s = kv % S;
                    const uint32_t ph = (kv / S) & 1;
                    // The block's row and batch coordinates: contiguous, the sequence's rows (varlen: of the
                    // packed tensor, batch 0); paged, its block's rows (the maps' batch is the block).
                    int kv_row = k_row + n * BN, kv_batch = bb;
                    if constexpr (paged) {
                        const PagedRow r = paged_row(p, t.b, n * BN);
                        kv_row = r.row;
                        kv_batch = r.block;
                    }
                    mbar_wait(k_empty(s), ph ^ 1);
                    if (n == t.keys.end - 1) FA_TRACE(0, slot, 1);
                    mbar_arrive_expect_tx(k_full(s), Tr::kSmemKV);
                    if constexpr (kCluster > 1) {
                        // This CTA's share of the panels, into both CTAs' stage s (each full barrier expects all).
                        multicast_share(rank, std::integral_constant<int, Tr::kPanels>{}, [&](int pn) {
                            tma_load_4d_multicast(k_tile(s) + pn * KVPanel, a.k, k_full(s), kClusterMask, pn * PC,
                                                  kv_row, hk, kv_batch);
                        });
                    } else {
#pragma unroll
                        for (int pn = 0; pn < Tr::kPanels; ++pn) {
                            tma_load_4d(k_tile(s) + pn * KVPanel, a.k, k_full(s), pn * PC, kv_row, hk, kv_batch);
                        }
                    }
                    if (n == t.keys.end - 1) {
                        // Q after the tile's first K: that K slot frees as soon as the consumers' last Q K^T
                        // of the previous tile retires, the Q tile only after their epilogue.
                        mbar_wait(q_empty, (qn & 1) ^ 1);
                        FA_TRACE(0, slot, 2);
                        mbar_arrive_expect_tx(q_full, Tr::kSmemQ);
#pragma unroll
                        for (int pn = 0; pn < Tr::kPanels; ++pn) {
                            tma_load_4d(sQ + pn * QPanel, a.q, q_full, pn * PC, q_row, t.h, bb);
                        }
                        ++qn;
                    }
                    mbar_wait(v_empty(s), ph ^ 1);
                    mbar_arrive_expect_tx(v_full(s), Tr::kSmemV);
                    if constexpr (kCluster > 1) {
                        multicast_share(rank, std::integral_constant<int, Tr::kPanelsV>{}, [&](int pn) {
                            tma_load_4d_multicast(v_tile(s) + pn * KVPanel, a.v, v_full(s), kClusterMask,
                                                  t.v_chunk * VC + pn * PC, kv_row, hk, kv_batch);
                        });
                    } else {
#pragma unroll
                        for (int pn = 0; pn < Tr::kPanelsV; ++pn) {  // the chunk's columns of v
                            tma_load_4d(v_tile(s) + pn * KVPanel, a.v, v_full(s), t.v_chunk * VC + pn * PC, kv_row,
                                        hk, kv_batch);
                        }
                    }
                    ++kv;
                }
                FA_TRACE(0, slot, 3);
            }
            if constexpr (kCluster > 1) {
                // The peer's consumers arrive on this CTA's empty barriers, and (for stages this CTA's consumers still
                // read) its multicast lands here, until both have released every stage's last use: wait for that, as
                // if loading S more blocks, before this CTA may exit.
                for (int j = 0; j < S; ++j) {
                    const int s = (kv + j) % S;
                    const uint32_t ph = ((kv + j) / S) & 1;
                    mbar_wait(k_empty(s), ph ^ 1);
                    mbar_wait(v_empty(s), ph ^ 1);
                }
            }
        } else if (paged && tid >= 32) {
            // Paged K/V: warps 1..3 clear the V rows of each tile's first key block past the sequence (see v_tail).
            int kv = 0, qn = 0;
            for (int tile = blockIdx.x; tile < num_tiles; tile = next_tile(tile)) {
                const FwdTile90 t = fwd_tile90<kLocal, BM, BN, VCH, kPairs>(p, tile);
                if (t.keys.end <= t.keys.begin) continue;
                const int s = kv % S;
                mbar_wait(q_full, qn & 1);
                mbar_wait(v_full(s), (kv / S) & 1);
                // Rows [valid, BN) of every 128-byte panel (the swizzle permutes chunks within a row only).
                const int valid = t.seq.sk - (t.keys.end - 1) * BN;
                const int chunks = (BN - valid) * 8;  // 16-byte chunks a panel clears
                for (int c = tid - 32; c < chunks * Tr::kPanelsV; c += 32 * kTailWarps) {
                    const int pn = c / chunks, rc = c % chunks;
                    *reinterpret_cast<uint4*>(smem + Tr::kOffV + s * Tr::kSmemV + pn * KVPanel + valid * 128 + rc * 16) =
                        make_uint4(0, 0, 0, 0);
                }
                fence_proxy_async();  // the cleared rows, for wgmma's reads
                __syncwarp();
                if (lane == 0) mbar_arrive(v_tail);
                ++qn;
                kv += t.keys.end - t.keys.begin;
            }
        } else if (kFp8 && tid >= 32) {
            // fp8: warps 1..3 transpose each V stage into the V^T ring, in the producer's block order.
            const int tw = tid / 32 - 1;
            walk_blocks([&](const FwdTile90&, int, int s, uint32_t ph) {
                mbar_wait(v_full(s), ph);
                mbar_wait(vt_empty(s), ph ^ 1);
                transpose_v_fp8<D, BN>(v_tile(s), vt_tile(s), tw, kTransposeWarps, lane);
                fence_proxy_async();  // the V^T writes, for wgmma's reads
                __syncwarp();
                if (lane == 0) {
                    mbar_arrive(vt_full(s));
                    mbar_arrive(v_empty(s));  // every read of the V stage is done
                }
            });
        } else if (kDropMask && tid >= 32) {
            if constexpr (kDropMask) {  // (a constant branch: the other kernels' code unchanged)
                // Dropout's keep masks (kDropMask): warps 1..3 make the Philox calls of each key block, in the
                // producer's block order, into its stage of the mask ring. An item is (16-row block rb, 32-key call c)
                // of the block, a lane's call each (lane l: counter offset o + l, FlashAttention-2's stream,
                // common/philox.cuh), its 16 bytes' keep flags (0xFF kept) stored where the consumer lane that holds
                // those elements reads them: [rb][c][lane], 16 bytes each, so a warp's stores and loads are 512
                // contiguous bytes.
                constexpr int kCalls = BN / 32;
                constexpr int kItems = (BM / 16) * kCalls;
                const int mw = tid / 32 - 1;
                const uint32_t thr2 = p.dropout_threshold | (p.dropout_threshold << 16);
                walk_blocks([&](const FwdTile90& t, int n, int s, uint32_t ph) {
                    mbar_wait(mask_empty(s), ph ^ 1);
                    // (formed per block, as the consumers' was: nothing of it stays live across the loop)
                    const DropoutLane drop = dropout_lane_state(p, t.b, t.h, lane);
                    unsigned char* stage = smem + Tr::kOffDropMask + s * Tr::kSmemDropStage + lane * 16;
#pragma unroll 1
                    for (int it = mw; it < kItems; it += kMaskWarps) {
                        const int rb = it / kCalls, c = it % kCalls;
                        // At 24 registers the key made opaque per call too, so that the optimiser does not hoist its
                        // schedule (the seed plus the round constants, 12 registers) out of this loop and spill it (a
                        // stand-in loop spilled 28 bytes at 24 registers, none at 32).
                        uint64_t seed = drop.seed;
                        if constexpr (kProducerRegs < 32) asm volatile("" : "+l"(seed));
                        const Philox4x32Out r = dropout_philox(
                            seed, drop.offset, static_cast<uint32_t>(t.row0 / 16 + rb), static_cast<uint32_t>(n * kCalls + c));
                        *reinterpret_cast<uint4*>(stage + it * (32 * 16)) =
                            make_uint4(dropout_keep_bytes(r.w[0], thr2), dropout_keep_bytes(r.w[1], thr2),
                                       dropout_keep_bytes(r.w[2], thr2), dropout_keep_bytes(r.w[3], thr2));
                    }
                    __syncwarp();
                    if (lane == 0) mbar_arrive(mask_full(s));  // (release: the warp's stores, ordered by the syncwarp)
                });
            }
        }
    } else {
        // ---- consumers ----
        regs_alloc<kConsumerRegs>();
        const int cw = tid / 128 - 1;                     // rows [64 cw, 64 cw + 64) of each tile
        const int wl = (tid % 128) / 32;                  // warp within the warpgroup
        const int rl = cw * 64 + wl * 16 + lane / 4;      // this thread's first row in the tile (and rl + 8)
        const int t4 = lane % 4;
        // P in shared memory (Tr::kPSmem): this consumer's P tile at sP, [BN / 64 panels][64 rows][128 bytes], the
        // 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r % 8)), as TMA lays out Q: P[r][k] (row r of the
        // consumer's 64, key k of the block) at sP + (k / 64) 8192 + 128 r + (((k % 64) / 8 ^ r % 8) << 4) + 2 (k % 8).
        // The accumulator s[4j + 2h + c] of lane l in warp wl is P[16 wl + l / 4 + 8 h][8 j + 2 (l % 4) + c], so the
        // packed pair (c = 0, 1) is the 32-bit word at sP + (j / 8) 8192 + 128 r + ((j % 8 ^ r % 8) << 4) + 4 (l % 4),
        // r = 16 wl + l / 4 + 8 h (O's staging in the epilogue has the same form); pack_p stores four such 8 x 8 blocks
        // per stmatrix.x4, the lanes giving row addresses instead. p_row: this lane's stmatrix row address for keys
        // 0..15 (see pack_p).
        const uint32_t sP = s0 + Tr::kOffP + cw * Tr::kSmemPTile;
        const uint32_t p_row = sP + (wl * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * 128 + (((lane & 7) ^ (lane >> 4)) << 4);
        const float base_scale_log2 = p.scale_log2;
        const float base_cap_premul = kSoftcap ? p.scale / p.softcap : 1.f;
        const float base_lse_scale = kSoftcap ? p.softcap : p.scale;
        constexpr int CPR = VC / 8;  // 16-byte chunks per row of the CTA's O
        const int o_cols_all = DV == D ? p.d : p.dv;  // O's columns in the call (the kernel's DV may be wider)
        int kv = 0, qn = 0;
        // Ping-pong turns: consumer c issues after bar.sync on barrier 4 + c and then hands the turn to the
        // next consumer with bar.arrive on its barrier; the last consumer gives consumer 0 the first turn, and
        // consumer 0 takes the last hand-over after its final tile, so no arrival is left pending at exit.
        constexpr int C = Tr::kConsumers;
        const auto my_turn = [&]() {
            if (Tr::kPingPong) bar_sync(4 + cw, 256);
        };
        const auto pass_turn = [&]() {
            if (Tr::kPingPong) bar_arrive(4 + (cw + 1) % C, 256);
        };
        if (cw == C - 1) pass_turn();
        const bool tracer = (tid & 127) == 0;
        int slot = -1;

        for (int tile = blockIdx.x; tile < num_tiles; tile = next_tile(tile)) {
            const FwdTile90 t = fwd_tile90<kLocal, BM, BN, VCH, kPairs>(p, tile);
            ++slot;
            if (tracer) FA_TRACE(1 + cw, slot, 0);
            if (tracer) FA_TRACE_AT(1 + cw, slot, 7, tile | (static_cast<long long>(max(t.keys.end - t.keys.begin, 0)) << 32));
            if (t.rows <= 0) continue;
            const int my_rows = t.rows - cw * 64;  // rows of this warpgroup in the sequence (may be <= 0)
            const int64_t row_g = t.seq.q_row0 + t.row0;
            // The score scales of this tile: fp8 multiplies in the descales of its (sequence, KV head) (inside
            // tanh under softcap, FlashAttention-3's order); v's descale joins O's normalisation.
            float scale_log2 = base_scale_log2, cap_premul = base_cap_premul, lse_scale = base_lse_scale;
            float o_scale = 1.f;
            if constexpr (kFp8) {
                const int hk = t.h / p.hq_per_hkv;
                const auto factor = [&](const FwdDescale& ds) {
                    return ds.data == nullptr ? 1.f : ds.data[t.b * ds.batch_stride + hk * ds.head_stride];
                };
                const float qk = factor(p.q_descale) * factor(p.k_descale);
                if (kSoftcap) {
                    cap_premul *= qk;
                } else {
                    scale_log2 *= qk;
                    lse_scale *= qk;
                }
                o_scale = factor(p.v_descale);
            }
            // The chunk's O columns [vcol0, vcol0 + VC), o_cols of them in the call; chunk 0 writes the LSE.
            const int vcol0 = t.v_chunk * VC;
            const int o_cols = o_cols_all - vcol0;
            TO* o = reinterpret_cast<TO*>(p.o) + (varlen ? 0 : t.b * p.o_batch_stride) + t.h * p.o_head_stride +
                   row_g * p.o_row_stride + vcol0;
            float* lse = p.lse == nullptr || t.v_chunk != 0 ? nullptr
                                          : p.lse + (varlen ? 0 : t.b * p.lse_batch_stride) + t.h * p.lse_head_stride +
                                                row_g * p.lse_row_stride;

            if (t.keys.end <= t.keys.begin) {
                // No row of the tile sees a key: O = 0, LSE = +inf or the sink (the backward then recomputes P = 0).
                for (int c = tid % 128; c < 64 * CPR; c += 128) {
                    const int r = c / CPR, ch = c % CPR;
                    if (r < my_rows && ch * 8 < o_cols) {
                        *reinterpret_cast<uint4*>(o + static_cast<int64_t>(cw * 64 + r) * p.o_row_stride + ch * 8) =
                            make_uint4(0, 0, 0, 0);
                    }
                }
                if (lse != nullptr) {
                    const float empty = empty_row_lse(row_sink(p.sinks, p.sinks_stride, t.h));  // common/sink.cuh
                    for (int r = tid % 128; r < my_rows && r < 64; r += 128) {
                        lse[static_cast<int64_t>(cw * 64 + r) * p.lse_row_stride] = empty;
                    }
                }
                continue;
            }

            float acc[VC / 2];
#pragma unroll
            for (int i = 0; i < VC / 2; ++i) acc[i] = 0.f;
            float s[BN / 2];
            uint32_t pa[BN / KS][4];
            float row_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
            float row_sum[2] = {0.f, 0.f};
            // ALiBi through Q K^T (kAlibiGemm; sm90/alibi_gemm.cuh): the tile's slope, this thread's A register of
            // the extra k-step and the key blocks of each sign. Per key block (alibi_block) the step's A for its side
            // of the diagonal (0 where it straddles one: the per-element bias in softmax) and sigma * a, whose
            // multiple is the row's constant of the block (alibi_c); issue_alibi starts the block's S with the step,
            // as soon as the previous block's P is packed, so that it runs while this warpgroup waits (for its
            // turn, for K) and the block's Q K^T is as long as without ALiBi.
            AlibiGemmTile ag{};
            if constexpr (kAlibiGemm) {
                ag = alibi_gemm_tile<T, BN>(alibi_row(p.alibi_slopes, p.alibi_batch_stride, p.alibi_head_stride,
                                                      p.alibi_causal, t.b, t.h, lse_scale,
                                                      p.bottom_right ? t.seq.sk - t.seq.sq : 0),
                                            t.mask, t.row0 + cw * 64, t.row0 + rl, t4);
            }
            uint32_t alibi_af[4] = {0u, 0u, 0u, 0u};
            float alibi_sa = 0.f;
            bool alibi_elem = true;
            const auto alibi_block = [&](int n) {
                if constexpr (kAlibiGemm) {
                    const bool plus = n <= ag.b.pos, minus = !plus && n >= ag.b.neg;
                    const uint32_t f = plus ? ag.frag : minus ? ag.frag ^ 0x80008000u : 0u;
                    alibi_af[0] = f;
                    alibi_af[1] = f;
                    alibi_af[2] = 0u;
                    alibi_af[3] = 0u;
                    alibi_pin(alibi_af);  // written here, before issue_alibi's wgmma.fence
                    alibi_sa = plus ? ag.a : minus ? -ag.a : 0.f;
                    alibi_elem = !plus && !minus;
                }
            };
            // c of row r (rl + 8 r) on key block n: sigma a (key0 + BN / 2 - (i + off)), the causal form's
            // a (key0 + BN / 2).
            const auto alibi_c = [&](int r, int n) { return alibi_sa * (static_cast<float>(n * BN) - ag.e[r]); };

            const auto release = [&](uint32_t b) {
                __syncwarp();
                if (lane == 0) mbar_arrive(b);
            };
            // A K or V stage: with kCluster, on the peer's barrier too (its producer multicasts into this stage).
            const auto release_kv = [&](uint32_t b) {
                __syncwarp();
                if (lane == 0) {
                    mbar_arrive(b);
                    if constexpr (kCluster > 1) mbar_arrive_cluster(b, rank ^ 1u);
                }
            };
            const auto issue_qk = [&](int st) {
                wgmma_fence();
                if constexpr (Tr::kPSmem) {
                    // With P in shared memory (160 registers with three consumers) Q's base is laundered as P's
                    // (issue_pv), so that Q's loop-invariant descriptors are not held in registers across the loop.
                    uint32_t q0 = sQ + cw * 64 * 128;
                    asm volatile("" : "+r"(q0));
#pragma unroll
                    for (int kk = 0; kk < D / KS; ++kk) {  // (kAlibiGemm: onto the block's ALiBi step, issue_alibi)
                        Wgmma<T, BN, 0, 0>::ss(s, smem_desc(q0 + (kk / 4) * QPanel + (kk % 4) * 32, 16, 1024),
                                               smem_desc(k_tile(st) + (kk / 4) * KVPanel + (kk % 4) * 32, 16, 1024),
                                               kk > 0 || kAlibiGemm ? 1 : 0);
                    }
                } else {
#pragma unroll
                    for (int kk = 0; kk < D / KS; ++kk) {  // K steps of 32 bytes, four per 128-byte panel row
                        const uint32_t qa = sQ + (kk / 4) * QPanel + cw * 64 * 128 + (kk % 4) * 32;
                        const uint32_t kb = k_tile(st) + (kk / 4) * KVPanel + (kk % 4) * 32;
                        if constexpr (kFp8) {
                            WgmmaF8<BN>::ss(s, smem_desc(qa, 16, 1024), smem_desc(kb, 16, 1024), kk > 0 ? 1 : 0);
                        } else {
                            // (kAlibiGemm: onto the block's ALiBi step, issue_alibi)
                            Wgmma<T, BN, 0, 0>::ss(s, smem_desc(qa, 16, 1024), smem_desc(kb, 16, 1024),
                                                   kk > 0 || kAlibiGemm ? 1 : 0);
                        }
                    }
                }
                wgmma_commit();
            };
            // kAlibiGemm: S = sigma a (key - key0 - BN / 2) for alibi_block's block, A the slope's parts (registers), B
            // the K' panel; a commit group of its own, which the block's wgmma_wait after its Q K^T covers.
            const auto issue_alibi = [&]() {
                if constexpr (kAlibiGemm) {
                    wgmma_fence();
                    Wgmma<T, BN, 0, 0>::rs(s, alibi_af, smem_desc_noswizzle(s0 + Tr::kOffKp, 128, 128), 0);
                    wgmma_commit();
                }
            };
            const auto issue_pv = [&](int st) {
                wgmma_fence();
                // P in shared memory: the tile's base laundered, so that its 8 descriptors are formed at each issue
                // (a few integer ops) instead of held in registers across the main loop.
                uint32_t pt = sP;
                if constexpr (Tr::kPSmem) asm volatile("" : "+r"(pt));
#pragma unroll
                for (int kk = 0; kk < BN / KS; ++kk) {
                    if constexpr (kFp8) {  // V^T: K-major, 32 key bytes per step, 128 keys a panel
                        WgmmaF8<D>::rs(acc, pa[kk],
                                       smem_desc(vt_tile(st) + (kk / 4) * Tr::kSmemVtPanel + (kk % 4) * 32, 16, 1024), 1);
                    } else if constexpr (Tr::kPSmem) {  // P: K-major as Q, 16 keys (32 bytes) per step; V as below
                        Wgmma<T, VC, 0, 1>::ss(acc, smem_desc(pt + (kk / 4) * PPanel + (kk % 4) * 32, 16, 1024),
                                               smem_desc(v_tile(st) + kk * 16 * 128, KVPanel, 1024), 1);
                    } else {               // V: MN-major, 16 key rows per step
                        Wgmma<T, VC, 0, 1>::rs(acc, pa[kk], smem_desc(v_tile(st) + kk * 16 * 128, KVPanel, 1024), 1);
                    }
                }
                wgmma_commit();
            };
            // Softcap and masks on S(n), then the online softmax: S becomes P (fp32), alpha rescales O.
            const auto softmax = [&](int n, float (&alpha)[2]) {
                if (kSoftcap) {
#pragma unroll
                    for (int i = 0; i < BN / 2; ++i) s[i] = tanhf(s[i] * cap_premul);
                }
                // ALiBi after softcap, before the masks (a uniform branch; kLocal variant only; common/alibi.cuh):
                // the slope divided by the multiplier of s in the final logit, lse_scale (with fp8 the descales'
                // product is in it, or inside tanh under softcap). Formed here, so nothing of it stays live.
                // (kAlibiGemm: only on a block whose Q K^T did not add it, alibi_block.)
                if constexpr (kLocal) {
                    if (p.alibi_slopes != nullptr && (!kAlibiGemm || alibi_elem)) {
                        const AlibiRow alibi = alibi_row(p.alibi_slopes, p.alibi_batch_stride, p.alibi_head_stride,
                                                         p.alibi_causal, t.b, t.h, lse_scale,
                                                         p.bottom_right ? t.seq.sk - t.seq.sq : 0);
                        const int col0 = n * BN + 2 * t4;
                        const float key0f = static_cast<float>(col0);
                        const float rel_lo = static_cast<float>(t.row0 + rl + alibi.off - col0);
#pragma unroll
                        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
                            for (int e = 0; e < 4; ++e) {
                                s[4 * j + e] += alibi_bias_from(alibi, rel_lo + (e >= 2 ? 8.f : 0.f), key0f, 8 * j + (e & 1));
                            }
                        }
                    }
                }
                if (tile_masked<kLocal>(t.mask, t.row0 + cw * 64, 64, n * BN, BN, t.seq.sk)) {
                    const int col0 = n * BN + 2 * t4;  // this thread's keys: col0 + 8 j + (e & 1)
                    // key_hidden per row as two limits (common/mask.cuh key_limits): row r (rl + 8 r) sees the keys
                    // with lo <= 8 j + c < hi, so each element costs two compares against a constant (1.06x at d128
                    // causal 1k and 2k against key_hidden's bounds per element; bench/NOTES.md, thirteenth session).
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const KeyLimits lim = key_limits<kLocal>(t.mask, t.row0 + rl + 8 * r, col0, t.seq.sk);
#pragma unroll
                        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
                            for (int c = 0; c < 2; ++c) {
                                const int k = 8 * j + c;
                                if (k >= lim.hi || (kLocal && k < lim.lo)) s[4 * j + 2 * r + c] = -CUDART_INF_F;
                            }
                        }
                    }
                }
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    // kAlibiGemm: the bias's row constant joins the block's max and the exponent's constant.
                    const float row_c = kAlibiGemm ? alibi_c(r, n) : 0.f;
                    float mx = kAlibiGemm ? -CUDART_INF_F : row_max[r];
#pragma unroll
                    for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    if constexpr (kAlibiGemm) mx = fmaxf(row_max[r], mx + row_c);
                    // A row that has seen no key yet keeps max -inf; use 0 so -inf - -inf never makes NaN.
                    const float m_scaled = mx == -CUDART_INF_F ? 0.f : mx * scale_log2;
                    alpha[r] = fast_exp2(row_max[r] * scale_log2 - m_scaled);
                    row_max[r] = mx;
                    // s scale_log2 - sub = (s + row_c) scale_log2 - m_scaled (kAlibiGemm: one fma of the row).
                    const float sub = kAlibiGemm ? fmaf(-row_c, scale_log2, m_scaled - kPOffset) : m_scaled - kPOffset;
                    float sum = 0.f;
#pragma unroll
                    for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
                        for (int c = 0; c < 2; ++c) {
                            const float arg = s[4 * j + 2 * r + c] * scale_log2 - sub;
                            const float pv = j % 8 < kPolyGroups ? exp2_poly(arg) : fast_exp2(arg);
                            s[4 * j + 2 * r + c] = pv;
                            sum += pv;
                        }
                    }
                    row_sum[r] = row_sum[r] * alpha[r] + sum;
                }
            };
            // kDropEarly: the words of the block's calls, drawn by draw_words(n) before its softmax (call c of the
            // block: keys [32 (n BN / 32 + c), +32) of this warp's 16 rows, lane l's call).
            // The call of this warp's 16 rows (lane l's) for the 32 keys from 32 col32.
            const auto drop_call = [&](const DropoutLane& drop, int col32) {
                return dropout_philox(drop.seed, drop.offset, static_cast<uint32_t>((t.row0 + cw * 64 + wl * 16) / 16),
                                      static_cast<uint32_t>(col32));
            };
            uint32_t dw[kDropCalls][4];
            const auto draw_words = [&](int n) {
                if constexpr (kDropEarly) {
                    const DropoutLane drop = dropout_lane_state(p, t.b, t.h, lane);
#pragma unroll
                    for (int c = 0; c < kDropCalls; ++c) {
                        const Philox4x32Out r = drop_call(drop, n * BN / 32 + c);
#pragma unroll
                        for (int w = 0; w < 4; ++w) dw[c][w] = r.w[w];
                    }
                }
            };
            // kDropMask: this lane's keep flags of a block in stage st of the mask ring, call c's at + 512 c (the warp's
            // 16 rows are row block 4 cw + wl of the tile; BN % 32 == 0, so k-step kk is half kk % 2 of call kk / 2).
            const auto mask_row_of = [&](int st) {
                return smem + Tr::kOffDropMask + st * Tr::kSmemDropStage + ((cw * 4 + wl) * (BN / 32) * 32 + lane) * 16;
            };
            // kMaskEarly (FA_SM90_FWD_DROPOUT_MASKER_EARLY): a block's flags waited for and loaded once its S is in,
            // before the softmax (load_masks), and held until pack_p.
            constexpr bool kMaskEarly = kDropMask && FA_SM90_FWD_DROPOUT_MASKER_EARLY != 0;
            uint4 mflags[kMaskEarly ? BN / 32 : 1];
            const auto load_masks = [&](int st, uint32_t ph) {
                if constexpr (kMaskEarly) {
                    mbar_wait(mask_full(st), ph);
#pragma unroll
                    for (int c = 0; c < BN / 32; ++c) mflags[c] = *reinterpret_cast<const uint4*>(mask_row_of(st) + c * (32 * 16));
                }
            };
            // kDropout: the keys of P(n) a 32-key Philox block (lane l's call of this warp's 16 rows) keeps; with
            // kDropMask, read from stage st of the mask ring (block n's, whose mask_full the caller waited for), or
            // (kMaskEarly) from mflags.
            const auto pack_p = [&](int n, int st) {
                if constexpr (kFp8) {  // the permuted key order of the V^T stage (transpose_v_fp8)
#pragma unroll
                    for (int kk = 0; kk < BN / 32; ++kk) {
                        const float* x = s + 16 * kk;
                        pa[kk][0] = pack4_e4m3(x[0], x[1], x[4], x[5]);
                        pa[kk][1] = pack4_e4m3(x[2], x[3], x[6], x[7]);
                        pa[kk][2] = pack4_e4m3(x[8], x[9], x[12], x[13]);
                        pa[kk][3] = pack4_e4m3(x[10], x[11], x[14], x[15]);
                    }
                } else if constexpr (Tr::kPSmem) {
                    // P to this consumer's P tile: per 16 keys one stmatrix.x4 of the four 8 x 8 blocks this warp's
                    // accumulators hold, in the RS fragment's order (rows +0 / +8, keys +0 / +8). Lane l addresses row
                    // (l % 8) + 8 ((l / 8) % 2) of the warp's 16, key chunk 2 (kk % 4) + l / 16 of panel kk / 4, which
                    // the swizzle puts at chunk (2 (kk % 4) + l / 16) ^ (l % 8) = (l % 8 ^ l / 16) ^ 2 (kk % 4): p_row
                    // XOR 32 (kk % 4) (the tile is 1024-byte aligned and rows 128 bytes, so that XOR touches the chunk
                    // bits only). 8 lanes of a matrix write 8 rows at 8 distinct chunks: no bank conflicts.
                    // The caller has retired the P V product that read the tile last (wgmma_wait<0>).
                    uint32_t prow = p_row;
                    asm volatile("" : "+r"(prow));  // the 4 XORed row addresses formed here, not held across the loop
#pragma unroll
                    for (int kk = 0; kk < BN / 16; ++kk) {
                        stmatrix_x4((prow ^ (32u * (kk % 4))) + (kk / 4) * PPanel, pack2<T>(s[8 * kk + 0], s[8 * kk + 1]),
                                    pack2<T>(s[8 * kk + 2], s[8 * kk + 3]), pack2<T>(s[8 * kk + 4], s[8 * kk + 5]),
                                    pack2<T>(s[8 * kk + 6], s[8 * kk + 7]));
                    }
                    // The stores (generic proxy) before the SS wgmma's reads (async proxy): each lane fences its own,
                    // then the warp syncs; its P V reads only the warp's own 16 rows of A (FA3 relies on the same; with
                    // ping-pong my_turn's bar.sync also orders the whole warpgroup).
                    fence_proxy_async();
                    __syncwarp();
                } else {
                    // Dropout: the lane's state formed here, per block, so nothing of it stays live through the loop.
                    DropoutLane drop{};
                    uint32_t thr2 = 0;
                    if constexpr (kDropout && !kDropMask) {  // (kDropMask: the maskers compare)
                        thr2 = p.dropout_threshold | (p.dropout_threshold << 16);
                        if constexpr (!kDropEarly) drop = dropout_lane_state(p, t.b, t.h, lane);
                    }
                    Philox4x32Out rnd{};
                    const unsigned char* mask_row = mask_row_of(st);  // (kDropMask)
                    uint4 flags{};
#pragma unroll
                    for (int kk = 0; kk < BN / 16; ++kk) {
                        pa[kk][0] = pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
                        pa[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
                        pa[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
                        pa[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
                        if constexpr (kDropout) {
                            // The k-step's 16 keys are words 2 h and 2 h + 1 of the call of their 32-key block
                            // (common/philox.cuh dropout_kstep_call/half; the block's first key at `start` in its call:
                            // 16 on odd blocks of D 256's 80 keys, else 0).
                            const int start = BN % 32 == 0 ? 0 : (n * BN) % 32;
                            uint32_t w0, w1;
                            if constexpr (kDropMask) {
                                if (kk % 2 == 0) {
                                    flags = kMaskEarly ? mflags[kMaskEarly ? kk / 2 : 0]
                                                       : *reinterpret_cast<const uint4*>(mask_row + (kk / 2) * (32 * 16));
                                }
                                const uint32_t f0 = kk % 2 == 0 ? flags.x : flags.z, f1 = kk % 2 == 0 ? flags.y : flags.w;
                                w0 = f0;  // (flags, not words: see below)
                                w1 = f1;
                            } else if constexpr (kDropEarly) {
                                // The two starts' (call, half), constants, and a select: no local memory.
                                const int c_a = dropout_kstep_call(0, kk), h_a = dropout_kstep_half(0, kk);
                                const int c_b = dropout_kstep_call(16, kk) < kDropCalls ? dropout_kstep_call(16, kk) : 0;
                                const int h_b = dropout_kstep_half(16, kk);
                                const bool mid = start != 0;
                                w0 = mid ? dw[c_b][2 * h_b] : dw[c_a][2 * h_a];
                                w1 = mid ? dw[c_b][2 * h_b + 1] : dw[c_a][2 * h_a + 1];
                            } else {
                                // A new call at the block's first k-step and at each k-step that starts a call.
                                const int h = dropout_kstep_half(start, kk);
                                if (kk == 0 || h == 0) rnd = drop_call(drop, n * BN / 32 + dropout_kstep_call(start, kk));
                                w0 = philox_word(rnd, 2 * h);
                                w1 = philox_word(rnd, 2 * h + 1);
                            }
                            if constexpr (kDropMask) {
                                pa[kk][0] &= dropout_pair_mask_of_flags(w0, 0);
                                pa[kk][1] &= dropout_pair_mask_of_flags(w0, 1);
                                pa[kk][2] &= dropout_pair_mask_of_flags(w1, 0);
                                pa[kk][3] &= dropout_pair_mask_of_flags(w1, 1);
                            } else {
                                pa[kk][0] &= dropout_pair_mask(w0, 0, thr2);
                                pa[kk][1] &= dropout_pair_mask(w0, 1, thr2);
                                pa[kk][2] &= dropout_pair_mask(w1, 0, thr2);
                                pa[kk][3] &= dropout_pair_mask(w1, 1, thr2);
                            }
                        }
                    }
                }
            };

            // pack_p(n) from stage st (phase ph) of the ring, and (kDropMask) block n's keep masks waited for there and
            // the stage released to the maskers after.
            const auto pack_mask_p = [&](int n, int st, uint32_t ph) {
                if constexpr (kDropMask && !kMaskEarly) mbar_wait(mask_full(st), ph);  // (kMaskEarly: load_masks waited)
                pack_p(n, st);
                if constexpr (kDropMask) release(mask_empty(st));
            };

            mbar_wait(q_full, qn & 1);
            if (tracer) FA_TRACE(1 + cw, slot, 1);
            ++qn;
            bool tail_pending = paged;  // paged K/V: the first block's V rows past the sequence are being cleared
            const auto wait_tail = [&]() {
                if constexpr (paged) {
                    if (tail_pending) {
                        mbar_wait(v_tail, (qn - 1) & 1);
                        tail_pending = false;
                    }
                }
            };

            // The first (last visible) key block: S, softmax, P; its P V waits for the next block's S.
            int n = t.keys.end - 1;
            int st = kv % S;
            uint32_t ph = (kv / S) & 1;
            alibi_block(n);
            issue_alibi();
            mbar_wait(k_full(st), ph);
            if (tracer) FA_TRACE(1 + cw, slot, 2);
            my_turn();
            issue_qk(st);
            pass_turn();
            draw_words(n);  // (kDropEarly: while S runs)
            wgmma_wait<0>();
            fence_regs(s);
            release_kv(k_empty(st));
            load_masks(st, ph);  // (kMaskEarly)
            {
                float alpha[2];
                softmax(n, alpha);
            }
            pack_mask_p(n, st, ph);
            if (tracer) FA_TRACE(1 + cw, slot, 3);
            // kAlibiGemm: the next block's ALiBi step (after the last block, one for block begin - 1 that nothing
            // reads: an unconditional issue keeps the wgmma stream free of branches, which ptxas would serialize).
            if constexpr (kAlibiEarly) {
                alibi_block(n - 1);
                issue_alibi();
            }
            int v_st = st;
            uint32_t v_ph = ph;
            ++kv;

            for (n = t.keys.end - 2; n >= t.keys.begin; --n) {
                st = kv % S;
                ph = (kv / S) & 1;
                if constexpr (!kAlibiEarly) {
                    alibi_block(n);
                    issue_alibi();
                }
                mbar_wait(k_full(st), ph);
                mbar_wait(pv_full(v_st), v_ph);
                wait_tail();
                my_turn();
                issue_qk(st);
                issue_pv(v_st);
                pass_turn();
                draw_words(n);    // (kDropEarly: while S runs)
                wgmma_wait<1>();  // S(n) is in; P(n+1) V(n+1) still runs
                fence_regs(s);
                release_kv(k_empty(st));
                load_masks(st, ph);  // (kMaskEarly)
                float alpha[2];
                softmax(n, alpha);
                wgmma_wait<0>();
                fence_regs(acc);
                release_kv(pv_empty(v_st));
#pragma unroll
                for (int j = 0; j < VC / 8; ++j) {
                    acc[4 * j + 0] *= alpha[0];
                    acc[4 * j + 1] *= alpha[0];
                    acc[4 * j + 2] *= alpha[1];
                    acc[4 * j + 3] *= alpha[1];
                }
                pack_mask_p(n, st, ph);
                if constexpr (kAlibiEarly) {
                    alibi_block(n - 1);
                    issue_alibi();
                }
                v_st = st;
                v_ph = ph;
                ++kv;
            }
            if (tracer) FA_TRACE(1 + cw, slot, 4);
            mbar_wait(pv_full(v_st), v_ph);
            wait_tail();
            // O stored from registers (16-bit, FA_SM90_FWD_DIRECT_O_MIN_D): the Q tile frees here, every Q K^T of the
            // tile having retired, so the next tile's Q loads under the last P V and the epilogue. (Not before
            // wait_tail: the paged tail's v_tail must not run a phase ahead of the consumers' waits.)
            constexpr bool kEarlyQRelease = !Tr::kStageO && !kFp8;
            if constexpr (kEarlyQRelease) release(q_empty);
            my_turn();
            issue_pv(v_st);
            pass_turn();
            wgmma_wait<0>();
            fence_regs(acc);
            if (tracer) FA_TRACE(1 + cw, slot, 5);
            release_kv(pv_empty(v_st));
            if ((Tr::kSeparateO || !Tr::kStageO) && !kEarlyQRelease) release(q_empty);  // every Q K^T has retired

            // Epilogue: row sums across the quad, LSE, O normalised and staged in this warpgroup's rows of
            // the O tile (or of the Q tile), panel layout, then 16-byte stores of the rows and columns the call
            // has; fp8 stores its bf16 O from registers (4 bytes a thread, a quad's 16 bytes contiguous).
            constexpr int kOffO = Tr::kSeparateO ? Tr::kOffO : Tr::kOffQ;
            const RowSink sink = row_sink(p.sinks, p.sinks_stride, t.h);  // read here, not kept live in the main loop
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float sum = row_sum[r];
                sum += __shfl_xor_sync(0xffffffffu, sum, 1);
                sum += __shfl_xor_sync(0xffffffffu, sum, 2);
                // O = acc * inv and the LSE, with the sink in the denominator when there is one (common/sink.cuh);
                // P carries e^(kPOffset ln 2), which finish_row takes back out of the LSE.
                constexpr float kLn2 = 0.6931471805599453f;
                const RowFinish fin = finish_row(sum, row_max[r] * lse_scale, kPOffset * kLn2, sink);
                // (Dropout: the kept P scaled by 1 / (1 - p) here; the LSE is the undropped P's.)
                const float inv = kDropout ? o_scale * fin.inv * p.dropout_rp : o_scale * fin.inv;
                const int lrow = rl + 8 * r;
                if (lse != nullptr && t4 == 0 && lrow < t.rows) {
                    lse[static_cast<int64_t>(lrow) * p.lse_row_stride] = fin.lse;
                }
                if constexpr (Tr::kStageO) {
#pragma unroll
                    for (int j = 0; j < VC / 8; ++j) {
                        const uint32_t packed = pack2<TO>(acc[4 * j + 2 * r] * inv, acc[4 * j + 2 * r + 1] * inv);
                        *reinterpret_cast<uint32_t*>(smem + kOffO + panel_off<BM>(lrow, j) + t4 * 4) = packed;
                    }
                } else if (lrow < t.rows) {
                    TO* orow = o + static_cast<int64_t>(lrow) * p.o_row_stride + 2 * t4;
#pragma unroll
                    for (int j = 0; j < VC / 8; ++j) {
                        if (8 * j + 2 * t4 < o_cols) {
                            *reinterpret_cast<uint32_t*>(orow + 8 * j) =
                                pack2<TO>(acc[4 * j + 2 * r] * inv, acc[4 * j + 2 * r + 1] * inv);
                        }
                    }
                }
            }
            if constexpr (!Tr::kStageO) {
                if (tracer) FA_TRACE(1 + cw, slot, 6);  // (the epilogue's end, as below)
                continue;
            }
            bar_sync(1 + cw, 128);  // this warpgroup's O rows staged
            for (int c = tid % 128; c < 64 * CPR; c += 128) {
                const int r = c / CPR, ch = c % CPR;
                if (r < my_rows && ch * 8 < o_cols) {
                    *reinterpret_cast<uint4*>(o + static_cast<int64_t>(cw * 64 + r) * p.o_row_stride + ch * 8) =
                        *reinterpret_cast<const uint4*>(smem + kOffO + panel_off<BM>(cw * 64 + r, ch));
                }
            }
            if (!Tr::kSeparateO) {
                fence_proxy_async();  // these reads of the Q tile before the next TMA writes of it
                release(q_empty);
            } else {
                bar_sync(1 + cw, 128);  // the O tile's rows read before the next tile's epilogue writes them
            }
            if (tracer) FA_TRACE(1 + cw, slot, 6);
        }
        if (cw == 0) my_turn();  // consumer 1's last hand-over
    }
}
#endif  // FA_SM90A_DEVICE

template <typename T, int D, bool kLocal, bool kSoftcap, int DV = D, bool kPaged = false, bool kAlibiGemm = false>
__global__ void __launch_bounds__(FwdTraits90Of<D, FwdIo90<T>::kFp8, DV, kPaged>::kThreads, 1)
    fwd_kernel_sm90(const __grid_constant__ FwdArgs90 a) {
#ifdef FA_SM90A_DEVICE
    fwd_sm90_body<T, D, kLocal, kSoftcap, DV, kPaged, FwdTraits90Of<D, FwdIo90<T>::kFp8, DV, kPaged>, kAlibiGemm>(a);
#elif defined(__CUDA_ARCH__)
    // Device code for another target: the host launches this kernel only where sm_90a code exists (see
    // sm90/bwd_kernel.cuh), so reaching here means the driver chose other code; fail loudly.
    __trap();
#endif  // FA_SM90A_DEVICE
}

// The build's kernel for calls without a local mask (16-bit, contiguous K/V, head dim 128; with FA_SM90_FWD_CLUSTER 2
// every head dim from 128) as 2-CTA clusters with K/V multicast (FA_SM90_FWD_CLUSTER; fwd_sm90_body's kCluster):
// launched with a cluster dimension of 2.
template <typename T, int D, bool kSoftcap>
__global__ void __launch_bounds__(FwdTraits90Of<D, false>::kThreads, 1)
    fwd_kernel_sm90_cluster(const __grid_constant__ FwdArgs90 a) {
#ifdef FA_SM90A_DEVICE
    fwd_sm90_body<T, D, false, kSoftcap, D, false, FwdTraits90Of<D, false>, false, 2>(a);
#elif defined(__CUDA_ARCH__)
    __trap();  // as fwd_kernel_sm90
#endif  // FA_SM90A_DEVICE
}

// The build's local kernel with the call's dropout (FA_SM90_FWD_DROPOUT; fwd_sm90_body's kDropout): 16-bit, square head
// dims, contiguous K/V, with or without softcap.
template <typename T, int D, bool kSoftcap>
__global__ void __launch_bounds__(FwdTraits90Of<D, false>::kThreads, 1)
    fwd_kernel_sm90_dropout(const __grid_constant__ FwdArgs90 a) {
#ifdef FA_SM90A_DEVICE
    fwd_sm90_body<T, D, true, kSoftcap, D, false, FwdTraits90Of<D, false>, false, 1, true>(a);
#elif defined(__CUDA_ARCH__)
    __trap();  // as fwd_kernel_sm90
#endif  // FA_SM90A_DEVICE
}

// A wide kernel (Tr: FwdTraits90WideOf) beside the build's own, for calls without masks other than the sequence tail and
// without paged K/V, which the launcher chooses per call: the head-dim-64 16-bit one of FwdTraits90Wide (three
// consumers, P in shared memory; the plain and softcap variants; FA_SM90_FWD_D64_WIDE_MIN_KEYS) and the fp8 head-dim-128
// one of FwdTraits90Fp8Wide (224-key blocks; the plain variant; FA_SM90_FWD_FP8_WIDE_MIN_KEYS). Instantiated only there.
// No ALiBi variant: ALiBi calls run the local kernels, which the wide kernels do not serve.
template <typename T, bool kSoftcap, class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) fwd_kernel_sm90_wide(const __grid_constant__ FwdArgs90 a) {
#ifdef FA_SM90A_DEVICE
    fwd_sm90_body<T, Tr::kHeadDim, false, kSoftcap, Tr::kHeadDimV, false, Tr, false>(a);
#elif defined(__CUDA_ARCH__)
    __trap();  // as fwd_kernel_sm90
#endif  // FA_SM90A_DEVICE
}

}  // namespace sm90
}  // namespace fa
