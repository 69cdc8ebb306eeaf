// Compile-time facts of the sm80 decode kernel (tiles, warps, pipeline stages, shared-memory layout) and the
// split-count heuristic. Plain C++ (no CUDA keywords), so host code and the harness can include it.
#pragma once
#include <cstdint>
#include <type_traits>

// FA_DECODE_CLUSTER_SPLITS (sm80/decode_kernel.cuh: split-KV merged inside thread-block clusters; 0, the default:
// never). Here because DecodeTraits' partial-buffer check depends on it. FA_DECODE_CLUSTER_LAUNCH=0 compiles the
// cluster code but never launches it (sm80/decode_launch.cuh decode_cluster_splits): the A/B's control for the code
// generation the macro alone changes.
#ifndef FA_DECODE_CLUSTER_SPLITS
#define FA_DECODE_CLUSTER_SPLITS 0
#endif
#ifndef FA_DECODE_CLUSTER_LAUNCH
#define FA_DECODE_CLUSTER_LAUNCH 1
#endif

namespace fa {
namespace sm80 {

// Tile choice per head dim. Every CTA computes 16 packed query rows (the q heads of one GQA group times
// the new tokens) against a run of key tiles; each warp owns 16 keys of every tile (so a tile has 16 *
// Warps keys; an fp8 cache's kernels may give a warp 32, DecodeTileFp8), keeps its own online softmax, and the
// warps merge their partial results once at the end.
// Stages: K/V tiles in the cp.async ring, Stages - 1 of them in flight while one is computed on.
// Sizes aim at about 100 KB of shared memory (two CTAs per SM on A100 and H100) with 32-64 KB of
// K/V in flight per CTA; d 192/256 use 2 warps (32-key tiles) to keep 3-4 stages in that budget.
template <int D>
struct DecodeTile;
template <>
struct DecodeTile<32> {
    static constexpr int kWarps = 4, kStages = 4, kMinBlocks = 4;
};
template <>
struct DecodeTile<64> {
    static constexpr int kWarps = 4, kStages = 4, kMinBlocks = 2;
};
template <>
struct DecodeTile<96> {
    static constexpr int kWarps = 4, kStages = 4, kMinBlocks = 2;
};
template <>
struct DecodeTile<128> {
    static constexpr int kWarps = 4, kStages = 3, kMinBlocks = 2;
};
template <>
struct DecodeTile<192> {
    static constexpr int kWarps = 2, kStages = 4, kMinBlocks = 2;
};
template <>
struct DecodeTile<256> {
    static constexpr int kWarps = 2, kStages = 3, kMinBlocks = 2;
};

// The same for an fp8 (e4m3) cache (C ABI 0.13). Its bytes are converted to fp16/bf16 in registers, which costs
// integer work per byte that the 16-bit cache's ldmatrix does not; so at head dims up to 128 each warp owns 32 keys
// of a tile (kWarpKeys: the per-tile softmax, rescale and pipeline bookkeeping are paid once for twice the keys), and a
// stage (K/V rows padded to whole 128-byte lines, DecodeTraits::kKvRowBytes) holds as many bytes as the 16-bit
// kernel's, so as many are in flight per SM while two CTAs fit in about 100 KB each. At 192 and 256, whose q fragments
// take shared memory too (kSmemQFrag), warps keep 16 keys and more stages fit.
template <int D>
struct DecodeTileFp8;
template <>
struct DecodeTileFp8<32> {
    static constexpr int kWarps = 2, kStages = 3, kMinBlocks = 4, kWarpKeys = 32;
    static constexpr bool kTagged = false;
};
// Head dims 64 and 128 take compile-time overrides for GPU A/B runs (occupancy of the fp8 kernel, bench/NOTES.md's
// eleventh session), e.g. -DFA_DECODE_FP8_WARP_KEYS_128=16 -DFA_DECODE_FP8_MIN_BLOCKS_128=3; unset, each is the
// default below. kTagged: the tile is not the default, and the kernel's registry name then carries kMinBlocks too
// ("..._16x64_4w3s3b"; BlockN, warps and stages are always in it), so a bench row says which tile ran.
//
// Which combination gives 3-4 CTAs (12-16 warps) an SM at D 128 (4 warps, 128 threads)? Two limits:
// - registers: 65536 a SM, allocated per warp in units of 256 (8 a thread), so CTAs = 65536 / (128 x regs rounded up to
//   8): 2 CTAs up to 255 registers, 3 up to 168, 4 up to 128. __launch_bounds__(128, MinBlocks) makes ptxas stay
//   under that (168 with MinBlocks 3, 128 with 4), spilling to local memory if it must.
// - shared memory: 228 KB a SM, each CTA kSmemBytes + 1 KB reserved; kSmemBytes = Q 4 KB + Stages x 2 tiles of
//   BlockN x 128 bytes (BlockN = WarpKeys x Warps); the warps' merge buffers (34.5 KB) must fit in the ring.
//     WarpKeys 32, 3 stages (default): 100 KB -> 2 CTAs; 64 KB in flight a CTA, 128 KB an SM.
//     WarpKeys 32, 2 stages:            68 KB -> 3 CTAs; but one tile in flight while one is computed on, 96 KB an SM.
//     WarpKeys 16, 3 stages:            52 KB -> 4 CTAs; 32 KB in flight a CTA: 96 KB an SM at 3 CTAs, 128 at 4.
//     WarpKeys 16, 4 stages:            68 KB -> 3 CTAs; 48 KB in flight a CTA, 144 KB an SM.
//     WarpKeys 16, 2 stages: the merge buffers (34.5 KB) do not fit the 32 KB ring (static_assert).
//   WarpKeys 16 halves S, its K words and P: ptxas (CUDA 11.8, sm_80, bf16/fp16 q, contiguous/paged) gives 206-228
//   registers uncapped (today's tile: 239-252, no spills), so MinBlocks 2 stays at 2 CTAs; capped at 168 (MinBlocks 3)
//   it spills 20-76 bytes a thread (about 5 local loads a tile inside the key loop, bf16 contiguous), at 128
//   (MinBlocks 4) 192-292 bytes. WarpKeys 32 with 2 stages and MinBlocks 3 spills 152-280 bytes. (sm_90a's
//   allocation differs: its default kernels take 242-255 registers with one small spill; the device script prints
//   its figures.)
// Prediction (H200, B 16, 32/8 heads, 32k; today 314 us fp8 against 495.5 bf16, 1.58x): the kernel is issue/latency-
// bound at 8 warps an SM (3.0 cycles an issue, 58% of DRAM), so 12 warps should raise DRAM use towards 75-85%:
// WarpKeys 16 + 4 stages + MinBlocks 3 (12 warps, 144 KB in flight an SM, 3 splits) the best, about 265-285 us
// (1.75-1.85x), paying per key the softmax/rescale bookkeeping that 32-key warps amortize (a few % more instructions a
// key) and the small spills; WarpKeys 16 + 3 stages + MinBlocks 3 (96 KB in flight) close behind; MinBlocks 4 (16
// warps, 4 splits) no better, its spills (~200 bytes a thread, in L1) eating the extra warps' gain; WarpKeys 32 with
// 2 stages (3 CTAs, one tile in flight a CTA, larger spills) not proposed. The split rule (choose_decode_splits)
// follows from kSmemBytes and kMinBlocks: 2 splits (256 CTAs) at MinBlocks 2, 3 (384) at 3, 4 (512) at 4 for B 16.
// Outcome (twelfth session, bench/NOTES.md): refuted. At 32k the default tile took 300 us; WarpKeys 16 with MinBlocks 3
// 329-330 us (3 or 4 stages alike), with MinBlocks 4 422 us: more resident warps did not hide the latency that
// halving a warp's keys added, so the defaults stay.
// D 64 (rows padded to 128 bytes, so the same shared memory as D 128: 98 KB, 2 CTAs): WarpKeys 16 gives 50 KB (4 CTAs)
// and, on sm_80, 143/157 registers at MinBlocks 3 and 116/127 at MinBlocks 4 (contiguous/paged, bf16 q), no spills;
// today's tile takes 164/181.
// An fp8 cache's conversion where the target has cvt.rn.f16x2.e4m3x2 (common/fp8_cache.cuh FA_FP8_HW_CVT_ARCH: sm_90,
// the H100/H200, and sm_89 code built by nvcc 12.1 or newer): 1 (the default) converts the cached bytes with the
// hardware's cvt.rn.f16x2.e4m3x2 (one instruction a pair, NaN kept, so no NaN scan of the words) and runs both
// products in fp16 whatever q's type (bf16 q scaled into fp16 per row by a power of two; P in fp16); 0 keeps the
// integer conversion into q's type (common/fp8_cache.cuh e4m3x4_to: 7 integer operations a word, an fp16/bf16 rescale,
// and the NaN scan), the only form elsewhere (a default "80;90a" build runs its sm_80 code on sm_86/sm_89 GPUs, so
// they take the integer form). Measured on the H200 (twenty-third session, bench/NOTES.md; B 16,
// 32/8 heads, D 128, bf16 q): 1.07/1.10/1.10-1.15/1.22x the integer form at 4k/16k/32k/128k, the fp8 cache 1.78x the
// bf16 cache at 32k (was 1.55-1.62) and 1.83x at 128k. The fp8 kernel was bound by its instructions' latency, not the
// bytes (ncu, eleventh session).
#ifndef FA_DECODE_FP8_HW_CVT
#define FA_DECODE_FP8_HW_CVT 1
#endif
#ifndef FA_DECODE_FP8_WARPS_64
#define FA_DECODE_FP8_WARPS_64 4
#endif
#ifndef FA_DECODE_FP8_STAGES_64
#define FA_DECODE_FP8_STAGES_64 3
#endif
#ifndef FA_DECODE_FP8_MIN_BLOCKS_64
#define FA_DECODE_FP8_MIN_BLOCKS_64 2
#endif
#ifndef FA_DECODE_FP8_WARP_KEYS_64
#define FA_DECODE_FP8_WARP_KEYS_64 32
#endif
#ifndef FA_DECODE_FP8_WARPS_128
#define FA_DECODE_FP8_WARPS_128 4
#endif
#ifndef FA_DECODE_FP8_STAGES_128
#define FA_DECODE_FP8_STAGES_128 3
#endif
#ifndef FA_DECODE_FP8_MIN_BLOCKS_128
#define FA_DECODE_FP8_MIN_BLOCKS_128 2
#endif
#ifndef FA_DECODE_FP8_WARP_KEYS_128
#define FA_DECODE_FP8_WARP_KEYS_128 32
#endif
template <>
struct DecodeTileFp8<64> {
    static constexpr int kWarps = FA_DECODE_FP8_WARPS_64, kStages = FA_DECODE_FP8_STAGES_64,
                         kMinBlocks = FA_DECODE_FP8_MIN_BLOCKS_64, kWarpKeys = FA_DECODE_FP8_WARP_KEYS_64;
    static constexpr bool kTagged = !(kWarps == 4 && kStages == 3 && kMinBlocks == 2 && kWarpKeys == 32);
};
template <>
struct DecodeTileFp8<96> {
    static constexpr int kWarps = 4, kStages = 3, kMinBlocks = 2, kWarpKeys = 32;
    static constexpr bool kTagged = false;
};
template <>
struct DecodeTileFp8<128> {
    static constexpr int kWarps = FA_DECODE_FP8_WARPS_128, kStages = FA_DECODE_FP8_STAGES_128,
                         kMinBlocks = FA_DECODE_FP8_MIN_BLOCKS_128, kWarpKeys = FA_DECODE_FP8_WARP_KEYS_128;
    static constexpr bool kTagged = !(kWarps == 4 && kStages == 3 && kMinBlocks == 2 && kWarpKeys == 32);
};
template <>
struct DecodeTileFp8<192> {
    static constexpr int kWarps = 2, kStages = 5, kMinBlocks = 2, kWarpKeys = 16;
    static constexpr bool kTagged = false;
};
template <>
struct DecodeTileFp8<256> {
    static constexpr int kWarps = 2, kStages = 5, kMinBlocks = 2, kWarpKeys = 16;
    static constexpr bool kTagged = false;
};

// Fp8Cache: k_cache/v_cache hold e4m3 bytes while q and out are T (sm80/decode_kernel.cuh says how they are read).
// WarpKeys: keys of a tile each warp owns (16; 32 for some fp8-cache kernels).
template <typename T, int D, int Warps, int Stages, int MinBlocks, bool Fp8Cache = false, int WarpKeys = 16>
struct DecodeTraits {
    using Elem = T;
    using CacheElem = typename std::conditional<Fp8Cache, uint8_t, T>::type;  // an fp8 cache is read as bytes
    static constexpr bool kFp8Cache = Fp8Cache;
    static constexpr int kHeadDim = D;
    static constexpr int kWarps = Warps;
    static constexpr int kThreads = Warps * 32;
    static constexpr int kStages = Stages;
    static constexpr int kMinBlocks = MinBlocks;
    static constexpr int kBlockM = 16;              // packed query rows per CTA: one m16 tile
    static constexpr int kWarpKeys = WarpKeys;      // keys of a tile per warp: its n8 tiles of S, its k16 steps of P V
    static constexpr int kBlockN = WarpKeys * Warps;
    static constexpr int kRowBytes = D * 2;         // a row of Q (and of a 16-bit cache's K/V tile)
    static constexpr int kChunksPerRow = D / 8;     // 16-byte chunks in one row of Q
    // K/V tiles: one row per key. A 16-bit cache's rows are Q's; an fp8 cache's hold D bytes in kKvRowBytes (whole
    // 128-byte lines, so that its swizzle, kv_swizzle in the kernel, keeps the fragment loads free of bank conflicts).
    static constexpr int kCacheElemBytes = Fp8Cache ? 1 : 2;
    static constexpr int kKvRowBytes = Fp8Cache ? (D + 127) / 128 * 128 : kRowBytes;
    static constexpr int kKvChunksPerRow = D * kCacheElemBytes / 16;  // 16-byte chunks of data in one K/V row
    static constexpr int kSmemQ = kBlockM * kRowBytes;
    static constexpr int kSmemTile = kBlockN * kKvRowBytes;  // one K (or V) tile
    static constexpr int kSmemStage = 2 * kSmemTile;
    // An fp8 cache with D > 128 keeps q's fragments in shared memory instead of registers: one 16-byte entry per
    // (warp, k16 step, lane), written once per CTA by the lane that reads it (the fp8 fragments pair q's elements
    // differently from ldmatrix's, so they are built once rather than loaded per tile).
    static constexpr int kSmemQFrag = Fp8Cache && D > 128 ? Warps * (D / 16) * 32 * 16 : 0;
    static constexpr int kSmemBytes = kSmemQ + kSmemQFrag + Stages * kSmemStage;
    // Q's A fragments stay in registers across the key loop where they fit next to the accumulators.
    static constexpr bool kQInRegs = D <= 128;

    // K/V tile loads: each thread copies kChunks 16-byte chunks of K and the same of V per tile. When the
    // threads cover whole rows (kRowMapped) a thread keeps one column chunk and steps down by kRowStep rows.
    static constexpr int kChunks = kBlockN * kKvChunksPerRow / kThreads;
    static constexpr bool kRowMapped = kThreads % kKvChunksPerRow == 0;
    static constexpr int kRowStep = kRowMapped ? kThreads / kKvChunksPerRow : 0;
    // Paged cache: a thread's chunks that lie in one aligned 16-row group share a page (pages are at least
    // 16 rows and tiles start on a multiple of 16), so they share one block-table entry.
    static constexpr int kChunksPerId = kRowMapped && kRowStep < 16 ? 16 / kRowStep : 1;
    static constexpr int kIds = kChunks / kChunksPerId;

    // End of the key loop: each warp's unnormalised O (fp32, rows padded by 8 floats against bank
    // conflicts), row max and row sum, in the shared memory of the K/V ring.
    static constexpr int kRedStride = D + 8;
    static constexpr int kSmemRedO = Warps * kBlockM * kRedStride * 4;
    static constexpr int kSmemRed = kSmemRedO + Warps * kBlockM * 2 * 4;

    static_assert(sizeof(T) == 2, "16-bit queries only");
    static_assert(WarpKeys == 16 || (Fp8Cache && WarpKeys == 32), "16 keys a warp (32 with an fp8 cache)");
    static_assert(D % 32 == 0, "the swizzle needs rows of whole 64-byte groups");
    static_assert((kBlockN * kKvChunksPerRow) % kThreads == 0, "K/V tiles split evenly over threads");
    static_assert(kChunks % kChunksPerId == 0, "block-table slots cover whole chunk groups");
    static_assert(!kRowMapped || kRowStep >= 16 || 16 % kRowStep == 0, "row steps divide the 16-row groups");
    static_assert(kSmemRed <= Stages * kSmemStage, "the merge buffers fit in the K/V ring");
    // FA_DECODE_CLUSTER_SPLITS: a split's normalised partial O (fp32, [kBlockM][D]) and log-sum-exp ([kBlockM]) after
    // the merge buffers, where the other CTAs of its cluster read them (from smem's start: the merge buffers begin at
    // kSmemQ, over the q fragments and the ring, which are idle by then).
    static constexpr int kOffPart = kSmemQ + kSmemRed;
    static constexpr int kOffPartLse = kOffPart + kBlockM * D * 4;
    static_assert(FA_DECODE_CLUSTER_SPLITS == 0 || kOffPartLse + kBlockM * 4 <= kSmemBytes,
                  "a split's partial fits after the merge buffers");
    static_assert(kOffPart % 16 == 0, "the partial's 16-byte stores");
};

// Per-SM shared memory beyond the per-block opt-in limit, and the runtime's reserve per block (sm80/sm90).
constexpr int64_t kSmemPerSmExtra = 1024;
constexpr int64_t kSmemPerBlockReserved = 1024;

// The fp8 tiles that take overrides (DecodeTileFp8<64>, <128>), checked here so that a bad combination fails in every
// translation unit that includes this header, host code (registry, split rule) included: DecodeTraits' own
// static_asserts (the merge buffers fit the ring, the tile splits evenly over threads), shared memory within the
// per-block opt-in, MinBlocks CTAs within an SM's shared memory and threads (H100/H200: 228 KB; an A100's 164 KB holds
// fewer, which choose_decode_splits' per_sm already counts). Registers are ptxas's business: build with -Xptxas -v.
template <int D>
struct DecodeTileFp8Check {
    using Tile = DecodeTileFp8<D>;
    using Tr = DecodeTraits<uint16_t, D, Tile::kWarps, Tile::kStages, Tile::kMinBlocks, true, Tile::kWarpKeys>;
    static_assert(Tr::kSmemBytes <= 227 * 1024, "the fp8 decode tile's shared memory exceeds the per-block opt-in");
    static_assert(Tile::kMinBlocks * (Tr::kSmemBytes + kSmemPerBlockReserved) <= 228 * 1024,
                  "MinBlocks CTAs of the fp8 decode tile do not fit an SM's shared memory");
    static_assert(Tile::kMinBlocks * Tr::kThreads <= 2048, "MinBlocks CTAs exceed an SM's threads");
    static constexpr bool kOk = true;
};
static_assert(DecodeTileFp8Check<64>::kOk && DecodeTileFp8Check<128>::kOk, "fp8 decode tiles");

// Splits below this many key tiles each spend more on filling and draining the pipeline and on the
// combine than they gain in parallelism.
constexpr int64_t kMinTilesPerSplit = 4;

// Within this fraction of the best wave efficiency, the smallest split count wins (FlashAttention-2 uses 0.85; 0.95
// took one sequence over 128k keys from 29 to 32 splits, 84% -> 86% of the copy rate on the H200, before the
// one-wave rule below took over such shapes).
constexpr double kSplitEfficiency = 0.95;

// Key splits for `pairs` (sequence, kv head, 16-row block) work items over sequences of about `length`
// keys: with sm_count / pairs at least one_wave_min, that many (one CTA per SM); else the smallest split count
// whose grid fills the GPU's CTA slots (SMs x resident CTAs, from shared memory and the kernel's MinBlocks) within
// kSplitEfficiency of the best wave efficiency reachable, where efficiency = waves / ceil(waves), and that leaves
// every split kMinTilesPerSplit tiles or more.
inline int32_t choose_decode_splits(int64_t pairs, int64_t length, int block_n, int smem_bytes, int min_blocks,
                                    int32_t sm_count, int64_t smem_optin, int32_t max_splits, int one_wave_min) {
    if (pairs <= 0 || length <= 0 || sm_count <= 0) return 1;
    const int64_t tiles = (length + block_n - 1) / block_n;
    int64_t most = tiles / kMinTilesPerSplit;
    most = most < max_splits ? most : max_splits;
    const int64_t grid_limit = 2147483647ll / pairs;  // the 1-D grid must stay within int32
    most = most < grid_limit ? most : grid_limit;
    if (most <= 1) return 1;
    // Few work items: one CTA per SM in one wave, sm_count / pairs splits when that is at least one_wave_min. The
    // 16-bit kernel is bound by memory; on the H200 one sequence over 128k keys (8 pairs) ran fastest at 16 splits
    // (128 CTAs: 140-142 us, 89-91% of the copy rate) against 29 (the efficiency rule at 85%: 151-152 us) and 32-33
    // (two per SM: 148-150 us), four sequences (32 pairs) at 4 (488 us) against 7 (524) and 8 (496) (sixth session),
    // and 96 or 128 pairs unsplit at every length from 1k to 128k (B 16 at 1k: 28.4 us against 31.8 for the
    // efficiency rule's two splits, two CTAs an SM; fourteenth session): one_wave_min 1 for a contiguous 16-bit
    // cache. The fp8 cache's kernel and the paged kernels do not stream at the memory's rate from one CTA an SM (B 16
    // at 32k: fp8 378 us unsplit against 299 at two splits; paged 16 739 us against 500, paged 256 502 against 493),
    // so they take one wave only from two splits up (one_wave_min 2).
    const int64_t one_wave = sm_count / pairs;
    if (one_wave >= one_wave_min) return static_cast<int32_t>(one_wave < most ? one_wave : most);
    int64_t per_sm = (smem_optin + kSmemPerSmExtra) / (smem_bytes + kSmemPerBlockReserved);
    per_sm = per_sm < 1 ? 1 : (per_sm > min_blocks ? min_blocks : per_sm);
    const int64_t slots = static_cast<int64_t>(sm_count) * per_sm;
    const auto efficiency = [&](int64_t s) {
        const int64_t ctas = pairs * s;
        const int64_t waves = (ctas + slots - 1) / slots;
        return static_cast<double>(ctas) / static_cast<double>(waves * slots);
    };
    double best = 0.0;
    for (int64_t s = 1; s <= most; ++s) {
        best = efficiency(s) > best ? efficiency(s) : best;
    }
    for (int64_t s = 1; s <= most; ++s) {
        if (efficiency(s) >= kSplitEfficiency * best) return static_cast<int32_t>(s);
    }
    return 1;
}

// choose_decode_splits' one_wave_min for a cache: 1 where one CTA an SM streams it at the memory's rate (a contiguous
// 16-bit cache, and a contiguous fp8 one of at most 1k keys, where the second split's combine costs more than it
// gains: H200, B 16 x 8 kv heads, fourteenth session, 1k 23.4 us unsplit against 28.4 at two splits; 4k 58.0 against
// 56.6), else 2 (paged caches, longer fp8 ones).
inline int decode_one_wave_min(bool fp8, bool paged, int64_t length) {
    return paged || (fp8 && length > 1024) ? 2 : 1;
}

}  // namespace sm80
}  // namespace fa
