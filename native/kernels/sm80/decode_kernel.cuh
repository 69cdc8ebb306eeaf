// Decode over a KV cache, portable path (mma.sync m16n8k16 + ldmatrix + cp.async), sm_80 and up.
//
// Decode is bound by memory bandwidth: each query row does 4 FLOPs per cached K/V element it reads, so the
// kernel is built to stream every K/V byte once, from as many SMs as there are:
// - One CTA takes 16 packed query rows, row = new token i * g + head of the GQA group (g = hq / hkv), so
//   all q heads that share a kv head (and all new tokens) read each K/V byte once.
// - Split-KV: the grid has num_splits CTAs per (sequence, kv head, 16-row block), each walking its own run
//   of key tiles; a combine kernel merges their partial results by log-sum-exp. With one split the
//   attention kernel writes the output itself.
// - K/V tiles stream through a ring of kStages shared-memory stages filled with 16-byte cp.async, so
//   kStages - 1 tiles are in flight while one is computed on; one __syncthreads per tile.
// - Each warp owns 16 keys of every tile and runs its own online softmax over them (no inter-warp traffic
//   in the loop); the warps merge their (max, sum, O) once at the end, through the freed ring.
// - Paged caches: the block-table entries of a tile are read one iteration before its copies are issued,
//   so the table lookup never sits between a tile and its load.
// Serving options: sequence b reads (and appends) cache row cache_batch_idx[b], and its keys start at its left
// pad; both only move where the walk starts and which row it reads. Rotary embedding: the append kernel stores
// rotated keys, and the attention kernel rotates Q as it loads it (common/rotary.cuh); cached keys are read as stored.
// Rows of the cache outside the keys a block may see (past the sequence's length or before its left pad, in
// particular) are never read: their shared-memory rows are zero-filled by cp.async, since a masked probability of 0 times a NaN
// value is still NaN.
// An fp8 (e4m3) cache (C ABI 0.13; DecodeTraits' Fp8Cache): K/V tiles land as bytes (half a 16-bit cache's, so more
// stages fit), and each warp turns its own 16 keys into fp16/bf16 mma fragments in registers with integer operations
// and one exact power-of-two multiply (common/fp8_cache.cuh), from layouts described at decode_q_frag_fp8; k_descale
// multiplies the scores (before softcap, as the scale), v_descale the output (before a split's partial is written, so
// the combine is the 16-bit one). The 16-bit path's code is untouched: the fp8 steps are `if constexpr` branches.
//
// Also here: the append kernel (writes k_new/v_new into the cache before the attention kernel runs, on the
// same stream) and the combine kernel.
#pragma once
#include <cuda_runtime.h>
#include <math_constants.h>

#include <type_traits>

#include "common/alibi.cuh"
#include "common/fp8_cache.cuh"  // an fp8 cache: bytes to fp16/bf16 fragments, the append's quantization
#include "common/ptx.cuh"
#include "common/rotary.cuh"  // rotary_chunk: new keys before they are stored, queries as they are loaded
#include "common/seq.cuh"      // ceil_div
#include "common/tile_io.cuh"  // swizzle, frag_addr: the forward's shared-memory conventions
#include "params/decode_params.h"
#include "params/device_flags.h"
#include "sm80/decode_traits.h"

// Programmatic dependent launch of the combine kernel (Hopper; FA_DECODE_PDL, default 1, 0 builds without it): the
// attention kernel's CTAs signal at their start that the dependent grid may be launched, and the combine kernel,
// launched with programmatic stream serialization where its image has the wait (sm80/decode_launch.cuh,
// decode_combine_waits), waits at its start for the attention grid to complete with its memory visible
// (griddepcontrol.wait), so its launch overlaps the attention kernel's last wave instead of following it. Both
// instructions are sm_90 PTX; elsewhere (and with the macro at 0) nothing is emitted. A kernel launched without the
// attribute finds griddepcontrol.wait a no-op. H200 (bench/NOTES.md, twelfth session): the bf16 B 16 row at 4k 79.3 ->
// 78.4 us, 16k and 32k within 0.3%; CUDA-graph capture included in c_decode_test.
#ifndef FA_DECODE_PDL
#define FA_DECODE_PDL 1
#endif
#if FA_DECODE_PDL && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FA_DECODE_PDL_LAUNCH_DEPENDENTS() asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory")
#define FA_DECODE_PDL_WAIT() asm volatile("griddepcontrol.wait;\n" ::: "memory")
#else
#define FA_DECODE_PDL_LAUNCH_DEPENDENTS() ((void)0)
#define FA_DECODE_PDL_WAIT() ((void)0)
#endif

// Split-KV merged inside thread-block clusters (sm_90; FA_DECODE_CLUSTER_SPLITS, default 0: never). Where the launcher
// says so (sm80/decode_launch.cuh decode_cluster_splits: 2..8 splits, compute capability 9.0, the build's sm_90 code),
// DecodeParams::cluster_splits is set and the num_splits CTAs of a (sequence, kv head, 16-row block) are one cluster,
// neighbours in the grid. Each stores its normalised partial and log-sum-exp in its own shared memory
// (DecodeTraits::kOffPart) instead of o_accum / lse_accum, the cluster meets at a barrier, CTA rank c merges the rows
// r with r % num_splits == c from every CTA's partial through distributed shared memory, as the combine kernel does and
// in the same split order (so the same bits), and a second barrier keeps each partial until every CTA has read it. No
// partials through global memory and no combine kernel: a split's fixed cost measured about 5 us on the H200 (B 16 fp8
// cache at 1k: 23.4 us unsplit, 28.4 in two splits; fourteenth session), in a call of 276 us at 32k.
// (The macro's default is in sm80/decode_traits.h, whose kOffPart this uses.)
#if FA_DECODE_CLUSTER_SPLITS && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FA_DECODE_CLUSTER_CODE 1
#else
#define FA_DECODE_CLUSTER_CODE 0
#endif

namespace fa {
namespace sm80 {

#if FA_DECODE_CLUSTER_CODE
// The cluster's barrier (every thread of every CTA; arrive's default semantics are release and wait's acquire: each
// CTA's shared-memory stores before it are visible to the others' loads after it), this CTA's rank, and 32/128-bit
// loads of another CTA's shared memory at the address `local` has in this one.
__device__ __forceinline__ void decode_cluster_sync() {
    asm volatile("barrier.cluster.arrive.aligned;\nbarrier.cluster.wait.aligned;\n" ::: "memory");
}
__device__ __forceinline__ uint32_t decode_cluster_rank() {
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
__device__ __forceinline__ float decode_ld_cluster(uint32_t local, uint32_t rank) {
    uint32_t a;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(a) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(a) : "memory");
    return v;
}
__device__ __forceinline__ float4 decode_ld_cluster4(uint32_t local, uint32_t rank) {
    uint32_t a;
    float4 v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(a) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(a)
                 : "memory");
    return v;
}
#endif

// o += w x for the 8 floats of (x0, x1): a warp's or a split's weighted part of a row (the attention kernel's merge of
// its warps, the combine kernel, the cluster's merge).
__device__ __forceinline__ void decode_axpy8(float (&o)[8], float w, const float4& x0, const float4& x1) {
    o[0] += w * x0.x;
    o[1] += w * x0.y;
    o[2] += w * x0.z;
    o[3] += w * x0.w;
    o[4] += w * x1.x;
    o[5] += w * x1.y;
    o[6] += w * x1.z;
    o[7] += w * x1.w;
}

// Sequence b's packed rows [row0, row0 + count) of a cu_seqlens array over `total` rows (C ABI 0.12), clamped so
// that no access leaves the packed tensor (and the count to `most`); a clamp is reported in the context's
// device-flag word (the host then raises FA_STATUS_DEVICE_CHECK_FAILED naming the array), never silently used.
struct DecodeSpan {
    int row0;
    int count;
};

__device__ __forceinline__ DecodeSpan decode_span(const DecodeParams& p, const int32_t* cu, int64_t stride, int b,
                                                  int total, int most) {
    const int s0 = __ldg(cu + b * stride);
    const int s1 = __ldg(cu + (b + 1) * stride);
    const int r0 = min(max(s0, 0), total);
    const int r1 = min(max(s1, r0), total);
    const int count = min(r1 - r0, most);
    // (The arrays start at 0: a first entry past it would leave the rows before it unwritten.)
    if ((r0 != s0 || r1 != s1 || count != r1 - r0 || (b == 0 && s0 != 0)) && p.device_flags != nullptr) {
        set_host_flag(p.device_flags, kDeviceFlagDecodeCuSeqlens);
    }
    return DecodeSpan{r0, count};
}

// Sequence b's queries: packed rows of q/o/lse from cu_seqlens_q (whose batch strides are then 0), or sq rows of
// its own batch entry.
__device__ __forceinline__ DecodeSpan decode_q_span(const DecodeParams& p, int b) {
    if (p.cu_seqlens_q == nullptr) return DecodeSpan{0, p.sq};
    return decode_span(p, p.cu_seqlens_q, p.cu_q_stride, b, p.total_q, p.sq);
}

// Sequence b's appended keys: packed rows of k_new/v_new from cu_seqlens_k_new, or `added` rows of its batch entry.
__device__ __forceinline__ DecodeSpan decode_knew_span(const DecodeParams& p, int b) {
    if (p.cu_seqlens_knew == nullptr) return DecodeSpan{0, p.added};
    return decode_span(p, p.cu_seqlens_knew, p.cu_knew_stride, b, p.total_knew, p.capacity);
}

// Cache length of sequence b before and after the append, and its appended rows. The device array is clamped so
// that no position read or written leaves the sequence's capacity; a length that needed it is reported in the
// context's device-flag word (the host then raises FA_STATUS_DEVICE_CHECK_FAILED), never silently used.
struct DecodeSeq {
    int cached;
    int total;
    DecodeSpan added;  // k_new/v_new rows appended (count 0 without an append)
};

__device__ __forceinline__ DecodeSeq decode_seq(const DecodeParams& p, int b) {
    const DecodeSpan added = decode_knew_span(p, b);
    const int stored = __ldg(p.cache_seqlens + b * p.seqlens_stride);
    const int cached = min(max(stored, 0), p.capacity - added.count);
    if (cached != stored && p.device_flags != nullptr) set_host_flag(p.device_flags, kDeviceFlagDecodeLength);
    return DecodeSeq{cached, cached + added.count, added};
}

// First valid position of sequence b (cache_leftpad, 0 without it), given its length with the new tokens: clamped
// to [0, total] and reported as decode_seq's lengths. Keys before it are never read.
__device__ __forceinline__ int decode_leftpad(const DecodeParams& p, int b, int total) {
    if (p.cache_leftpad == nullptr) return 0;
    const int stored = __ldg(p.cache_leftpad + b * p.leftpad_stride);
    const int pad = min(max(stored, 0), total);
    if (pad != stored && p.device_flags != nullptr) set_host_flag(p.device_flags, kDeviceFlagDecodeLeftpad);
    return pad;
}

// Cache row of sequence b (cache_batch_idx, b without it): the contiguous cache's batch index or the block table's
// row, clamped into the pool and reported as decode_seq's lengths.
__device__ __forceinline__ int decode_cache_row(const DecodeParams& p, int b) {
    if (p.cache_batch_idx == nullptr) return b;
    const int stored = __ldg(p.cache_batch_idx + b * p.batch_idx_stride);
    const int row = min(max(stored, 0), p.cache_rows - 1);
    if (row != stored && p.device_flags != nullptr) set_host_flag(p.device_flags, kDeviceFlagDecodeBatchIndex);
    return row;
}

// Physical block of logical page `page`, clamped into the cache so that a bad table entry cannot move an
// access outside it (and reported, as decode_seq's lengths).
__device__ __forceinline__ int decode_block_id(const DecodeParams& p, const int32_t* table_row, int page) {
    const int id = __ldg(table_row + page * p.table_page_stride);
    const int clamped = min(max(id, 0), p.num_blocks - 1);
    if (clamped != id && p.device_flags != nullptr) set_host_flag(p.device_flags, kDeviceFlagDecodeBlockId);
    return clamped;
}

// Row and column chunk of a thread's i-th 16-byte chunk of a K/V tile.
template <class Tr>
__device__ __forceinline__ void decode_chunk(int tid, int i, int& row, int& ch) {
    constexpr int CPR = Tr::kKvChunksPerRow;
    if constexpr (Tr::kRowMapped) {
        row = tid / CPR + i * Tr::kRowStep;
        ch = tid % CPR;
    } else {
        const int c = tid + i * Tr::kThreads;
        row = c / CPR;
        ch = c % CPR;
    }
}

// Byte offset of 16-byte chunk ch of row `row` in a K/V tile. A 16-bit cache's tiles are laid out as Q's (swizzle).
// An fp8 cache's rows are kKvRowBytes (whole 128-byte lines) apart and chunk ch sits at ch ^ h(row % 8), with
// h(r) = 2 (r % 4) ^ 4 (r / 4 % 2): the fragment loads of the fp8 path (decode_qk_fp8, decode_pv_fp8) then read 8
// distinct chunk positions of a 128-byte line per 8 lanes (K: rows r and r + 4 of a lane pair fall in opposite line
// halves; V: rows r, r + 1, r + 2, r + 3 of a member at two neighbouring chunks spread over all eight).
__device__ __forceinline__ constexpr int kv_fp8_xor(int row) { return ((row & 3) << 1) ^ (row & 4); }

template <class Tr>
__device__ __forceinline__ uint32_t kv_swizzle(int row, int ch) {
    if constexpr (Tr::kFp8Cache) {
        return static_cast<uint32_t>(row * Tr::kKvRowBytes + ((ch ^ kv_fp8_xor(row)) << 4));
    } else {
        return swizzle<Tr::kRowBytes>(row, ch);
    }
}

// Block-table entries of the pages a thread's chunks of the tile starting at key pos0 fall in, for the
// pages holding some key of [k_lo, k_hi) (the others are never read: they may lie past the sequence).
template <class Tr>
__device__ __forceinline__ void decode_fetch_ids(int (&ids)[Tr::kIds], const DecodeParams& p, const int32_t* table_row,
                                                 int pos0, int k_lo, int k_hi, int tid) {
#pragma unroll
    for (int k = 0; k < Tr::kIds; ++k) {
        bool used = false;
        int first_row = 0;
#pragma unroll
        for (int c = 0; c < Tr::kChunksPerId; ++c) {
            int row, ch;
            decode_chunk<Tr>(tid, k * Tr::kChunksPerId + c, row, ch);
            if (c == 0) first_row = row;
            used |= pos0 + row >= k_lo && pos0 + row < k_hi;
        }
        ids[k] = used ? decode_block_id(p, table_row, (pos0 + first_row) >> p.block_shift) : 0;
    }
}

// Copies the K and V rows of the tile starting at key pos0 into one ring stage. Rows outside [k_lo, k_hi)
// and columns at or past d are zero-filled and never read. k/v point at the sequence's (contiguous) or the
// cache's (paged) first row of kv head hk. Where threads cover whole rows, a thread's chunks are kRowStep rows
// apart, so the source pointer steps by a constant: one 64-bit product per tile (contiguous) or per page
// group (paged) instead of one per chunk.
template <class Tr, bool kPaged>
__device__ __forceinline__ void decode_load_kv(uint32_t sK, uint32_t sV, const typename Tr::CacheElem* k,
                                               const typename Tr::CacheElem* v, const DecodeParams& p, int pos0, int k_lo,
                                               int k_hi, const int (&ids)[Tr::kIds], int tid) {
    using T = typename Tr::CacheElem;
    constexpr int CPR = Tr::kKvChunksPerRow;
    constexpr int E = 16 / Tr::kCacheElemBytes;  // elements in a 16-byte chunk: 8 (16-bit) or 16 (fp8)
    if constexpr (Tr::kRowMapped) {
        constexpr int RS = Tr::kRowStep, P = Tr::kChunksPerId;
        const int r0 = tid / CPR;
        const int ch = tid % CPR;
        const bool col_ok = ch * E < p.d;
        const int64_t k_step = RS * p.k_row_stride, v_step = RS * p.v_row_stride;
        const T* ks = nullptr;
        const T* vs = nullptr;
#pragma unroll
        for (int i = 0; i < Tr::kChunks; ++i) {
            const int row = r0 + i * RS;
            if (kPaged ? i % P == 0 : i == 0) {
                // First chunk of a page group (paged) or of the tile (contiguous): where its row lives.
                int64_t k_off, v_off;
                if constexpr (kPaged) {
                    const int64_t block = ids[i / P];
                    const int64_t in_page = (pos0 + row) & (p.block_size - 1);
                    k_off = block * p.k_batch_stride + in_page * p.k_row_stride;
                    v_off = block * p.v_batch_stride + in_page * p.v_row_stride;
                } else {
                    k_off = static_cast<int64_t>(pos0 + row) * p.k_row_stride;
                    v_off = static_cast<int64_t>(pos0 + row) * p.v_row_stride;
                }
                ks = k + k_off + ch * E;
                vs = v + v_off + ch * E;
            }
            const bool valid = col_ok && pos0 + row >= k_lo && pos0 + row < k_hi;
            const uint32_t dst = kv_swizzle<Tr>(row, ch);
            cp_async_16(sK + dst, valid ? ks : k, valid);
            cp_async_16(sV + dst, valid ? vs : v, valid);
            ks += k_step;
            vs += v_step;
        }
    } else {
#pragma unroll
        for (int i = 0; i < Tr::kChunks; ++i) {
            int row, ch;
            decode_chunk<Tr>(tid, i, row, ch);
            const int pos = pos0 + row;
            const bool valid = pos >= k_lo && pos < k_hi && ch * E < p.d;
            int64_t k_off, v_off;
            if constexpr (kPaged) {
                const int64_t block = ids[i];
                const int64_t in_page = pos & (p.block_size - 1);
                k_off = block * p.k_batch_stride + in_page * p.k_row_stride;
                v_off = block * p.v_batch_stride + in_page * p.v_row_stride;
            } else {
                k_off = static_cast<int64_t>(pos) * p.k_row_stride;
                v_off = static_cast<int64_t>(pos) * p.v_row_stride;
            }
            const uint32_t dst = kv_swizzle<Tr>(row, ch);
            cp_async_16(sK + dst, valid ? k + k_off + ch * E : k, valid);
            cp_async_16(sV + dst, valid ? v + v_off + ch * E : v, valid);
        }
    }
}

// ---- an fp8 (e4m3) cache (C ABI 0.13): fragments straight from the cached bytes --------------------------------------
// The 16-bit path reads K and V tiles with ldmatrix; e4m3 bytes are converted in registers instead (common/fp8_cache.cuh),
// from layouts chosen so that every lane loads whole runs of bytes it needs and nothing else:
// - Q K^T, k16 step kk: lane (g, t) (g = lane / 4, t = lane % 4) needs 4 head-dim elements of a key row. It takes the 4
//   bytes at fp8_k_col(kk, t): in a full 64-column group G (steps 4G .. 4G + 3) lane t owns bytes 16t .. 16t + 15, one
//   16-byte load for four steps; in a tail group of 32 columns (head dims 32 and 96) bytes 8t .. 8t + 7. e4m3x4_to
//   pairs those bytes (b0, b2) and (b1, b3), the mma's k positions (2t, 2t + 1) and (8 + 2t, 9 + 2t); q's A fragment
//   pairs q's elements at the same columns the same way (decode_q_frag_fp8). A dot product does not depend on the order
//   of its terms, so this is Q K^T.
// - The keys: n position n of the warp's n8 tile j is key warp_key + 8j + n / 2 + 4 (n % 2) (rather than 8j + n), so
//   that P's k positions (2t, 2t + 1, 8 + 2t, 9 + 2t) of the P V product are the keys t, t + 4, 8 + t, 12 + t: one row
//   each of the V tile, whose bytes lane (g, t) loads whole.
// - P V: the output columns are permuted too. The head dim is cut into segments (fp8_v_seg: lines of 128 columns, then
//   64 and 32); in a segment of L columns at `base`, lane g owns columns base + g L / 8 .. + L / 8 - 1 and loads them
//   (L / 8 bytes) from each of its 4 key rows; byte c of rows (t, t + 4) and of rows (8 + t, 12 + t), interleaved
//   (one PRMT) and converted, are the B fragment of n8 tile j0 + c, whose n position g is column base + g L / 8 + c.
//   The accumulators are un-permuted once, where the warps merge (decode_fp8_out_col).
template <int D>
__device__ __forceinline__ constexpr bool fp8_full_group(int group) {
    return 64 * (group + 1) <= D;
}

template <int D>
__device__ __forceinline__ constexpr int fp8_k_col(int kk, int t) {
    return fp8_full_group<D>(kk / 4) ? 64 * (kk / 4) + 16 * t + 4 * (kk % 4) : 64 * (kk / 4) + 8 * t + 4 * (kk % 4);
}

// V segments: (first column, length) of segment i; fp8_v_segs<D>() of them. 32: [32]; 64: [64]; 96: [64, 32];
// 128: [128]; 192: [128, 64]; 256: [128, 128].
template <int D>
__device__ __forceinline__ constexpr int fp8_v_segs() {
    return D == 96 ? 2 : (D + 127) / 128;
}
template <int D>
__device__ __forceinline__ constexpr int fp8_v_seg_base(int i) {
    return D == 96 ? 64 * i : 128 * i;
}
template <int D>
__device__ __forceinline__ constexpr int fp8_v_seg_len(int i) {
    return D == 96 ? (i == 0 ? 64 : 32) : (D - 128 * i < 128 ? D - 128 * i : 128);
}

// q's A fragment of k16 step kk for an fp8 cache, from the swizzled Q tile: rows g and g + 8, the 4 elements at
// fp8_k_col, paired (0, 2) and (1, 3) as e4m3x4_to pairs the keys' bytes.
template <class Tr>
__device__ __forceinline__ void decode_q_frag_fp8(uint32_t (&a)[4], const unsigned char* sq, int kk, int lane) {
    constexpr int RB = Tr::kRowBytes;
    const int col = fp8_k_col<Tr::kHeadDim>(kk, lane % 4);
    const uint2 r0 = *reinterpret_cast<const uint2*>(sq + swizzle<RB>(lane / 4, col / 8) + (col % 8) * 2);
    const uint2 r1 = *reinterpret_cast<const uint2*>(sq + swizzle<RB>(lane / 4 + 8, col / 8) + (col % 8) * 2);
    a[0] = __byte_perm(r0.x, r0.y, 0x5410);
    a[1] = __byte_perm(r1.x, r1.y, 0x5410);
    a[2] = __byte_perm(r0.x, r0.y, 0x7632);
    a[3] = __byte_perm(r1.x, r1.y, 0x7632);
}

// Physical output column of accumulator column n (0..7) of n8 tile j in the fp8 P V layout (see above).
template <int D>
__device__ __forceinline__ constexpr int decode_fp8_out_col(int j, int n) {
    int first = 0;
    for (int i = 0; i < fp8_v_segs<D>(); ++i) {
        const int tiles = fp8_v_seg_len<D>(i) / 8;
        if (j < first + tiles) return fp8_v_seg_base<D>(i) + n * tiles + (j - first);
        first += tiles;
    }
    return 0;
}

template <class Tr, bool kPaged>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) decode_kernel(const __grid_constant__ DecodeParams p) {
    using T = typename Tr::Elem;
    constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, RB = Tr::kRowBytes, CPR = Tr::kChunksPerRow;
    constexpr int NO = Tr::kHeadDim / 8, KS = Tr::kHeadDim / 16, NS = Tr::kStages, W = Tr::kWarps;
    constexpr int NJ = Tr::kWarpKeys / 8, KP = Tr::kWarpKeys / 16;  // a warp's n8 tiles of S, k16 steps of P V

    FA_DECODE_PDL_LAUNCH_DEPENDENTS();  // the combine kernel may be launched (it waits for this grid's end)
    extern __shared__ __align__(128) unsigned char smem[];

    // Grid order: the 16-row blocks of one split are neighbours (they read the same keys, mostly from L2),
    // then the splits, then the kv heads and sequences.
    // (FA_DECODE_CLUSTER_SPLITS: a cluster's splits are the neighbours instead.)
    const bool clustered = FA_DECODE_CLUSTER_SPLITS && p.cluster_splits != 0;
    int linear = blockIdx.x;
    int m_block, split;
    if (clustered) {
        split = linear % p.num_splits;
        linear /= p.num_splits;
        m_block = linear % p.m_blocks;
        linear /= p.m_blocks;
    } else {
        m_block = linear % p.m_blocks;
        linear /= p.m_blocks;
        split = linear % p.num_splits;
        linear /= p.num_splits;
    }
    const int hk = linear % p.hkv;
    const int b = linear / p.hkv;
    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;

    const DecodeSeq seq = decode_seq(p, b);
    // Read (and checked) before any early return, as the length and the left pad are: a sequence with no key to
    // read (a pad at its end, an empty cache, a window that hides everything) still reports a device-only
    // cache_batch_idx entry outside the pool, as the host check of cache_batch_idx_host refuses it whatever the
    // sequence reads. The pool row (contiguous) or block-table row (paged).
    const int64_t cache_row = decode_cache_row(p, b);
    // This sequence's queries (cu_seqlens_q: its own count, the grid sized by the largest): a block past its
    // packed rows has nothing to do (the combine skips those rows too).
    const DecodeSpan qs = decode_q_span(p, b);
    const int pad = decode_leftpad(p, b, seq.total);  // (read, and checked, before the return below too)
    const int row0 = m_block * BM;
    if (row0 >= p.g * qs.count) return;
    const int rows_here = min(BM, p.g * qs.count - row0);
    // Query i sits at position i + off (positions absolute, a left pad included); bottom-right masks are placed
    // around that diagonal, and no key before the left pad is seen.
    const int64_t off = static_cast<int64_t>(seq.total) - qs.count;
    // Keys some row of this block may see: [k_lo, k_hi). Computed in 64 bits: windows reach 2^31.
    const int qi_lo = row0 / p.g;
    const int qi_hi = (row0 + rows_here - 1) / p.g;
    int64_t lo = pad, hi = seq.total;
    if (p.window_left >= 0) lo = max(lo, off + qi_lo - p.window_left);
    if (p.window_right >= 0) hi = min(hi, off + qi_hi + p.window_right + 1);
    const int k_lo = static_cast<int>(min(lo, static_cast<int64_t>(seq.total)));
    const int k_hi = static_cast<int>(max(hi, static_cast<int64_t>(k_lo)));
    // This split's share of the key tiles; shares differ by at most one tile.
    const int t_lo = k_lo / BN;
    const int n_tiles = k_hi > k_lo ? ceil_div(k_hi, BN) - t_lo : 0;
    const int t_begin = t_lo + static_cast<int>(static_cast<int64_t>(split) * n_tiles / p.num_splits);
    const int t_end = t_lo + static_cast<int>(static_cast<int64_t>(split + 1) * n_tiles / p.num_splits);

    const bool direct = p.num_splits == 1;
    const int64_t accum_rows = static_cast<int64_t>(p.b) * p.hq * p.sq;
    // Packed row R of this kv head's group: new token R / g, q head hk * g + R % g.
    const auto out_row = [&](int r) {
        const int R = row0 + r;
        const int qi = R / p.g;
        const int head = hk * p.g + (R - qi * p.g);
        return make_int2(qi, head);
    };

    // Where the output of packed row r (qh = out_row(r)) goes: chunk ch of its O, and its log-sum-exp (the direct
    // path's writes and the cluster's merge).
    const auto o_row = [&](int2 qh, int ch) {
        return reinterpret_cast<T*>(p.o) + b * p.o_batch_stride + (qs.row0 + qh.x) * p.o_row_stride +
               qh.y * p.o_head_stride + ch * 8;
    };
    const auto lse_at = [&](int2 qh) {
        return p.lse + b * p.lse_batch_stride + qh.y * p.lse_head_stride + (qs.row0 + qh.x) * p.lse_row_stride;
    };
    // FA_DECODE_CLUSTER_SPLITS: the cluster's merge of the partials (see the top of this file), from every thread of
    // every CTA of the cluster, once. (No code without it, or for a target before sm_90.)
    const auto cluster_merge = [&]() {
#if FA_DECODE_CLUSTER_CODE
        decode_cluster_sync();  // every CTA's partial stored
        const uint32_t rank = decode_cluster_rank();
        const int S = p.num_splits;
        const uint32_t part = smem_u32(smem + Tr::kOffPart), part_lse = smem_u32(smem + Tr::kOffPartLse);
        for (int c = tid; c < BM * CPR; c += Tr::kThreads) {
            const int r = c / CPR;
            const int ch = c % CPR;
            if (r >= rows_here || ch * 8 >= p.d || r % S != static_cast<int>(rank)) continue;
            const int2 qh = out_row(r);
            T* dst = o_row(qh, ch);
            float* lse_dst = p.lse == nullptr ? nullptr : lse_at(qh);
            float mx = -CUDART_INF_F;
            for (int sp = 0; sp < S; ++sp) mx = fmaxf(mx, decode_ld_cluster(part_lse + r * 4, sp));
            if (mx == -CUDART_INF_F) {  // no split saw a key of this row
                *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
                if (ch == 0 && lse_dst != nullptr) *lse_dst = CUDART_INF_F;
                continue;
            }
            float sum = 0.f;
            for (int sp = 0; sp < S; ++sp) sum += __expf(decode_ld_cluster(part_lse + r * 4, sp) - mx);
            const float lse = mx + __logf(sum);
            float o[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) o[e] = 0.f;
            for (int sp = 0; sp < S; ++sp) {
                const float l = decode_ld_cluster(part_lse + r * 4, sp);
                if (l == -CUDART_INF_F) continue;  // (its partial was never written)
                const float w = __expf(l - lse);
                const uint32_t src = part + (r * Tr::kHeadDim + ch * 8) * 4;
                const float4 x0 = decode_ld_cluster4(src, sp), x1 = decode_ld_cluster4(src + 16, sp);
                decode_axpy8(o, w, x0, x1);
            }
            *reinterpret_cast<uint4*>(dst) =
                make_uint4(pack2<T>(o[0], o[1]), pack2<T>(o[2], o[3]), pack2<T>(o[4], o[5]), pack2<T>(o[6], o[7]));
            if (ch == 0 && lse_dst != nullptr) *lse_dst = lse;
        }
        decode_cluster_sync();  // no CTA leaves while another may still read its partial
#elif FA_DECODE_CLUSTER_SPLITS && defined(__CUDA_ARCH__)
        __trap();  // (code for a target before sm_90 in a cluster launch: the launcher never does that; fail loudly)
#endif
    };

    if (t_begin >= t_end) {
        // No key for this split: a partial that the combine skips (log-sum-exp -inf), or with one split the
        // final answer for rows that see nothing: O = 0, log-sum-exp +inf.
        if (clustered) {
            float* part_lse = reinterpret_cast<float*>(smem + Tr::kOffPartLse);
            for (int r = tid; r < BM; r += Tr::kThreads) part_lse[r] = -CUDART_INF_F;  // (the merge skips this split)
            cluster_merge();
            return;
        }
        for (int c = tid; c < BM * CPR; c += Tr::kThreads) {
            const int r = c / CPR;
            const int ch = c % CPR;
            if (r >= rows_here) continue;
            const int2 qh = out_row(r);
            if (direct) {
                if (ch * 8 < p.d) *reinterpret_cast<uint4*>(o_row(qh, ch)) = make_uint4(0, 0, 0, 0);
                if (ch == 0 && p.lse != nullptr) *lse_at(qh) = CUDART_INF_F;
            } else if (ch == 0) {
                const int64_t arow = (static_cast<int64_t>(b) * p.hq + qh.y) * p.sq + qh.x;
                p.lse_accum[split * accum_rows + arow] = -CUDART_INF_F;
            }
        }
        return;
    }

    const T* q = reinterpret_cast<const T*>(p.q) + b * p.q_batch_stride + qs.row0 * p.q_row_stride +
                 static_cast<int64_t>(hk) * p.g * p.q_head_stride;
    const int64_t cache_base = kPaged ? 0 : cache_row;
    using C = typename Tr::CacheElem;  // T, or the bytes of an fp8 cache
    // FA_DECODE_FP8_HW_CVT (decode_traits.h) where the target has the instruction (FA_FP8_HW_CVT_ARCH: sm_90, sm_89
    // from nvcc 12.1): an fp8 cache's bytes become fp16 by the hardware conversion (common/fp8_cache.cuh
    // e4m3_pairs_to_half_hw: exact, NaN kept, no NaN scan), and both products run in fp16 (MT) whatever q's type: q's
    // fragments scaled per row by a power of two into fp16's range (q_row_scale_log2), P in fp16. Elsewhere the
    // integer conversion to T (e4m3x4_to) and MT = T.
#if FA_FP8_HW_CVT_ARCH
    constexpr bool kCvt = Tr::kFp8Cache && FA_DECODE_FP8_HW_CVT != 0;
#else
    constexpr bool kCvt = false;
#endif
    using MT = std::conditional_t<kCvt, __half, T>;
    constexpr bool kScaleQ = kCvt && !std::is_same<T, __half>::value;  // bf16 q into fp16: a power of two per row
    const C* k = reinterpret_cast<const C*>(p.k_cache) + cache_base * p.k_batch_stride + hk * p.k_head_stride;
    const C* v = reinterpret_cast<const C*>(p.v_cache) + cache_base * p.v_batch_stride + hk * p.v_head_stride;
    const int32_t* table_row = kPaged ? p.block_table + cache_row * p.table_batch_stride : nullptr;

    const uint32_t sQ = smem_u32(smem);
    const uint32_t ring = sQ + Tr::kSmemQ + Tr::kSmemQFrag;

    // Q rows past the block's rows and columns past d are zero-filled. Without rotary Q rides in the first
    // commit group; with it, Q is rotated as it is loaded, after the prologue's copies are issued (below).
    const bool rotary = p.rotary_cos != nullptr;
    if (!rotary) {
        for (int c = tid; c < BM * CPR; c += Tr::kThreads) {
            const int r = c / CPR;
            const int ch = c % CPR;
            const bool valid = r < rows_here && ch * 8 < p.d;
            const T* src = q;
            if (valid) {
                const int R = row0 + r;
                const int qi = R / p.g;
                src = q + qi * p.q_row_stride + (R - qi * p.g) * p.q_head_stride + ch * 8;
            }
            cp_async_16(sQ + swizzle<RB>(r, ch), src, valid);
        }
    }
    // Prologue: the first NS - 1 tiles (one commit group each, Q rides in the first).
    int ids[Tr::kIds];
#pragma unroll
    for (int st = 0; st < NS - 1; ++st) {
        const int t = t_begin + st;
        if (t < t_end) {
            if constexpr (kPaged) decode_fetch_ids<Tr>(ids, p, table_row, t * BN, k_lo, k_hi, tid);
            decode_load_kv<Tr, kPaged>(ring + st * Tr::kSmemStage, ring + st * Tr::kSmemStage + Tr::kSmemTile, k, v,
                                       p, t * BN, k_lo, k_hi, ids, tid);
        }
        cp_async_commit();
    }
    if constexpr (kPaged) {
        if (t_begin + NS - 1 < t_end) decode_fetch_ids<Tr>(ids, p, table_row, (t_begin + NS - 1) * BN, k_lo, k_hi, tid);
    }
    if (rotary) {
        // Rotary: query i of the sequence at position cached + i (causal or windowed) or cached (otherwise), rotated
        // in fp32 and rounded to T as it is loaded, then stored into sQ with plain shared stores; the first loop
        // iteration's __syncthreads makes them visible to ldmatrix. This runs while the prologue's K/V copies are
        // in flight, once per CTA (16 rows), so the key walk keeps its copy bandwidth; fusing it here spares a
        // pre-pass kernel and a rotated-Q buffer (one more launch per step, which short decodes would feel).
        for (int c = tid; c < BM * CPR; c += Tr::kThreads) {
            const int r = c / CPR;
            const int ch = c % CPR;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (r < rows_here && ch * 8 < p.d) {
                const int R = row0 + r;
                const int qi = R / p.g;
                const int pos = seq.cached + (p.rotary_per_row != 0 ? qi : 0);
                val = rotary_chunk<T>(q + qi * p.q_row_stride + (R - qi * p.g) * p.q_head_stride, ch,
                                      rotary_row<T>(p.rotary_cos, pos, p.rotary_seqlen, p.rotary_dim),
                                      rotary_row<T>(p.rotary_sin, pos, p.rotary_seqlen, p.rotary_dim), p.rotary_dim,
                                      p.rotary_interleaved != 0);
            }
            *reinterpret_cast<uint4*>(smem + swizzle<RB>(r, ch)) = val;
        }
    }

    // The two rows this thread holds of the m16 tile (lane / 4 and lane / 4 + 8) see keys
    // [row_lo, row_hi]; rows past the block's use the last real row's bounds (their Q is zero).
    int row_lo[2], row_hi[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int qi = (row0 + min(lane / 4 + 8 * r, rows_here - 1)) / p.g;
        int64_t l = k_lo, h = k_hi - 1;
        if (p.window_left >= 0) l = max(l, off + qi - p.window_left);
        if (p.window_right >= 0) h = min(h, off + qi + p.window_right);
        l = min(l, static_cast<int64_t>(k_hi));
        row_lo[r] = static_cast<int>(l);
        row_hi[r] = static_cast<int>(max(h, l - 1));
    }

    // The fp8 path's mask skip: the latest first key and the earliest last key any row of the CTA sees (rows past the
    // block's have the last real row's bounds); a warp's keys within both need no mask.
    int rows_lo_max = 0, rows_hi_min = 0;
    if constexpr (Tr::kFp8Cache) {
        rows_lo_max = __reduce_max_sync(0xffffffffu, max(row_lo[0], row_lo[1]));
        rows_hi_min = __reduce_min_sync(0xffffffffu, min(row_hi[0], row_hi[1]));
    }

    float acc[NO][4];
#pragma unroll
    for (int j = 0; j < NO; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;
    }
    float row_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
    float row_sum[2] = {0.f, 0.f};
    uint32_t qf[Tr::kQInRegs ? KS : 1][4];
    // An fp8 cache: KV head hk's descales, read once (the scores are multiplied by k_descale, the output by v_descale).
    float k_desc = 1.f, v_desc = 1.f;
    if constexpr (Tr::kFp8Cache) {
        k_desc = __ldg(p.k_descale + hk * p.k_descale_stride);
        v_desc = __ldg(p.v_descale + hk * p.v_descale_stride);
    }
    // The scores' factor per row r of this thread: k_descale, times 2^-e of kCvt's q scaling (set with the fragments).
    float k_row[2] = {k_desc, k_desc};

    // Per-lane ldmatrix coordinates, as in the forward: Q (A operand), K ([key][d], B operand), V^T (.trans).
    const uint32_t q_off = swizzle<RB>(lane % 16, lane / 16);
    const uint32_t k_off = swizzle<RB>((lane / 16) * 8 + lane % 8, (lane / 8) % 2);
    const uint32_t v_off = swizzle<RB>(((lane / 8) % 2) * 8 + lane % 8, lane / 16);
    const int warp_key = warp * Tr::kWarpKeys;
    const float scale_log2 = p.scale_log2;
    const bool softcap = p.softcap > 0.f;
    const float cap_premul = softcap ? p.scale / p.softcap : 1.f;
    // ALiBi (common/alibi.cuh) of the thread's two rows, each of its own query head: keys count from the left pad,
    // so the diagonal offset is sk - sq with sk = total - pad. A uniform branch per tile when there are slopes.
    const bool alibi_on = p.alibi_slopes != nullptr;
    AlibiRow alibi[2];
    int alibi_qi[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int R = row0 + min(lane / 4 + 8 * r, rows_here - 1);
        alibi_qi[r] = R / p.g;
        alibi[r] = alibi_row(p.alibi_slopes, p.alibi_batch_stride, p.alibi_head_stride, p.alibi_causal, b,
                             hk * p.g + (R - alibi_qi[r] * p.g), softcap ? p.softcap : p.scale,
                             seq.total - pad - qs.count);
    }

    int stage = 0;            // ring stage of tile t
    int load_stage = NS - 1;  // ring stage the next tile goes to
    for (int t = t_begin; t < t_end; ++t) {
        cp_async_wait<NS - 2>();
        __syncthreads();  // tile t (and Q) visible to all; every warp is done with the stage refilled below
        const int tn = t + NS - 1;
        if (tn < t_end) {
            const uint32_t dst = ring + load_stage * Tr::kSmemStage;
            decode_load_kv<Tr, kPaged>(dst, dst + Tr::kSmemTile, k, v, p, tn * BN, k_lo, k_hi, ids, tid);
            if constexpr (kPaged) {
                if (tn + 1 < t_end) decode_fetch_ids<Tr>(ids, p, table_row, (tn + 1) * BN, k_lo, k_hi, tid);
            }
        }
        cp_async_commit();
        load_stage = load_stage + 1 == NS ? 0 : load_stage + 1;
        if constexpr (Tr::kFp8Cache) {
            // q's fragments in the fp8 pairing: in registers, or (D > 128) in this warp's own slots of the fragment
            // area, which only this lane reads back (no barrier needed).
            if (t == t_begin) {
                // kScaleQ: each row's power of two (its quad's fragments hold the whole row).
                float q_scale[2] = {1.f, 1.f};
                if constexpr (kScaleQ) {
                    float amax[2] = {0.f, 0.f};
#pragma unroll
                    for (int kk = 0; kk < KS; ++kk) {
                        uint32_t a[4];
                        decode_q_frag_fp8<Tr>(a, smem, kk, lane);
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a[e]));
                            amax[e % 2] = fmaxf(amax[e % 2], fmaxf(fabsf(f.x), fabsf(f.y)));
                        }
                    }
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        amax[r] = fmaxf(amax[r], __shfl_xor_sync(0xffffffffu, amax[r], 1));
                        amax[r] = fmaxf(amax[r], __shfl_xor_sync(0xffffffffu, amax[r], 2));
                        const int e = q_row_scale_log2(amax[r]);
                        q_scale[r] = exp2_int(e);
                        k_row[r] = k_desc * exp2_int(-e);
                    }
                }
#pragma unroll
                for (int kk = 0; kk < KS; ++kk) {
                    uint32_t a[4];
                    decode_q_frag_fp8<Tr>(a, smem, kk, lane);
                    if constexpr (kScaleQ) {
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a[e]));
                            a[e] = pack2<__half>(f.x * q_scale[e % 2], f.y * q_scale[e % 2]);
                        }
                    }
                    if constexpr (Tr::kQInRegs) {
#pragma unroll
                        for (int e = 0; e < 4; ++e) qf[kk][e] = a[e];
                    } else {
                        *reinterpret_cast<uint4*>(smem + Tr::kSmemQ + ((warp * KS + kk) * 32 + lane) * 16) =
                            make_uint4(a[0], a[1], a[2], a[3]);
                    }
                }
            }
        } else if constexpr (Tr::kQInRegs) {
            if (t == t_begin) {
#pragma unroll
                for (int kk = 0; kk < KS; ++kk) {
                    ldmatrix_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], frag_addr<RB>(sQ, q_off, kk, 0));
                }
            }
        }
        const uint32_t sK = ring + stage * Tr::kSmemStage;
        const uint32_t sV = sK + Tr::kSmemTile;
        stage = stage + 1 == NS ? 0 : stage + 1;

        // S = Q K^T over this warp's kWarpKeys keys: NJ n8 tiles (two; four for an fp8 cache's 32-key warps).
        float s[NJ][4];
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
        }
        if constexpr (Tr::kFp8Cache) {
            // Key rows of this lane's n positions (n = g of tile j): warp_key + 8j + g / 2 + 4 (g % 2) (8j = 16 (j / 2)
            // + 8 (j % 2): each 16-key step has the layout of decode_q_frag_fp8's note).
            const int g = lane / 4, tq = lane % 4;
            const unsigned char* k_rows = smem + (sK - sQ) + (warp_key + g / 2 + 4 * (g % 2)) * Tr::kKvRowBytes;
            const int kx = kv_fp8_xor(g / 2 + 4 * (g % 2));  // the rows' swizzle (row % 8 is the same for all)
            constexpr int kRow8 = 8 * Tr::kKvRowBytes;
#pragma unroll
            for (int grp = 0; grp < (KS + 3) / 4; ++grp) {
                const bool full = fp8_full_group<Tr::kHeadDim>(grp);
                uint32_t w[NJ][4];
                uint32_t nan = 0;
#pragma unroll
                for (int j = 0; j < NJ; ++j) {
                    if (full) {
                        const uint4 x = *reinterpret_cast<const uint4*>(k_rows + j * kRow8 + (((4 * grp + tq) ^ kx) << 4));
                        w[j][0] = x.x, w[j][1] = x.y, w[j][2] = x.z, w[j][3] = x.w;
                    } else {
                        const uint2 x = *reinterpret_cast<const uint2*>(k_rows + j * kRow8 +
                                                                         (((4 * grp + tq / 2) ^ kx) << 4) + 8 * (tq % 2));
                        w[j][0] = x.x, w[j][1] = x.y, w[j][2] = 0u, w[j][3] = 0u;
                    }
                    if constexpr (!kCvt) {
#pragma unroll
                        for (int st = 0; st < (full ? 4 : 2); ++st) nan |= e4m3x4_nan_flags(w[j][st]);
                    }
                }
                // The fast conversion unless a NaN byte is in this warp's words (then the exact one: NaN keys give NaN
                // scores, as float(k_cache[..]) is NaN). Warp-uniform. (kCvt: the hardware conversion keeps NaN itself,
                // so there is no scan and one form.)
                const auto qk = [&](auto exact) {
#pragma unroll
                    for (int st = 0; st < (full ? 4 : 2); ++st) {
                        const int kk = 4 * grp + st;
                        uint32_t a[4];
                        if constexpr (Tr::kQInRegs) {
#pragma unroll
                            for (int e = 0; e < 4; ++e) a[e] = qf[kk][e];
                        } else {
                            const uint4 x =
                                *reinterpret_cast<const uint4*>(smem + Tr::kSmemQ + ((warp * KS + kk) * 32 + lane) * 16);
                            a[0] = x.x, a[1] = x.y, a[2] = x.z, a[3] = x.w;
                        }
#pragma unroll
                        for (int j = 0; j < NJ; ++j) {
                            uint32_t b0, b1;
                            if constexpr (kCvt) {
                                e4m3_pairs_to_half_hw(__byte_perm(w[j][st], 0u, e4m3x4_hw_sel(0x3210u)), b0, b1);
                            } else {
                                e4m3x4_to<T, decltype(exact)::value>(w[j][st], b0, b1);
                            }
                            mma_16816<MT>(s[j], a, b0, b1);
                        }
                    }
                };
                if (kCvt) {
                    qk(std::false_type{});
                } else if (__any_sync(0xffffffffu, (nan & 0x80808080u) != 0u)) {
                    qk(std::true_type{});
                } else {
                    qk(std::false_type{});
                }
            }
            // The stored keys times k_descale: the scores q . k_cache * k_descale (softcap and the scale follow); kCvt
            // also takes q's row scale back out (k_row).
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[j][e] *= k_row[e / 2];
            }
        } else {
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                uint32_t a[4];
                if constexpr (Tr::kQInRegs) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) a[e] = qf[kk][e];
                } else {
                    ldmatrix_x4(a[0], a[1], a[2], a[3], frag_addr<RB>(sQ, q_off, kk, 0));
                }
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4(b0, b1, b2, b3, frag_addr<RB>(sK, k_off, kk, warp_key));
                mma_16816<T>(s[0], a, b0, b1);
                mma_16816<T>(s[1], a, b2, b3);
            }
        }
        if (softcap) {
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[j][e] = tanhf(s[j][e] * cap_premul);
            }
        }
        // Key of score column (tile j, element e): key0 + 8j + kKeyStep (e % 2); the fp8 path's n positions are keys
        // n / 2 + 4 (n % 2) of a 16-key step (see decode_q_frag_fp8's note), the 16-bit path's keys n.
        constexpr int kKeyLane = Tr::kFp8Cache ? 1 : 2, kKeyStep = Tr::kFp8Cache ? 4 : 1;
        const int key0 = t * BN + warp_key + (lane % 4) * kKeyLane;
        // ALiBi after softcap, before the masks (which then replace the biased score of a hidden key).
        if (alibi_on) {
            const float key0f = static_cast<float>(key0 - pad);  // keys count from the left pad
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const float rel = static_cast<float>(alibi_qi[r] + alibi[r].off - (key0 - pad));
#pragma unroll
                for (int j = 0; j < NJ; ++j) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) s[j][2 * r + c] += alibi_bias_from(alibi[r], rel, key0f, j * 8 + c * kKeyStep);
                }
            }
        }
        // Masks (sequence end, causal diagonal, window): a handful of compares, cheaper than deciding per
        // tile whether they are needed. Replacing the score also discards whatever a zero-filled K row gave.
        // (The fp8 path, whose conversions keep the integer pipe busy, skips them where every row of the CTA sees
        // every key of the warp's share of the tile, as most tiles of a long cache are: one warp-uniform compare.)
        bool masked = true;
        if constexpr (Tr::kFp8Cache) {
            const int kw0 = t * BN + warp_key;
            masked = kw0 < rows_lo_max || kw0 + Tr::kWarpKeys - 1 > rows_hi_min;
        }
        if (masked) {
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = key0 + j * 8 + (e & 1) * kKeyStep;
                    const int r = e >> 1;
                    if (key < row_lo[r] || key > row_hi[r]) s[j][e] = -CUDART_INF_F;
                }
            }
        }
        // Online softmax of this warp's keys; a row's 4 owners are a quad.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = row_max[r];
#pragma unroll
            for (int jp = 0; jp < NJ; jp += 2) {
                mx = fmaxf(mx, fmaxf(fmaxf(s[jp][2 * r], s[jp][2 * r + 1]), fmaxf(s[jp + 1][2 * r], s[jp + 1][2 * r + 1])));
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            // A row that has seen no key yet keeps max -inf; use 0 so -inf - -inf never makes NaN.
            const float m_scaled = mx == -CUDART_INF_F ? 0.f : mx * scale_log2;
            const float alpha = fast_exp2(row_max[r] * scale_log2 - m_scaled);
            row_max[r] = mx;
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const float pv = fast_exp2(s[j][2 * r + c] * scale_log2 - m_scaled);
                    s[j][2 * r + c] = pv;
                    sum += pv;
                }
            }
            row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
            for (int j = 0; j < NO; ++j) {
                acc[j][2 * r] *= alpha;
                acc[j][2 * r + 1] *= alpha;
            }
        }
        // O += P V: P is KP k16 A fragments (one per 16 keys), re-packed from the S accumulators.
        uint32_t pa[KP][4];
#pragma unroll
        for (int kp = 0; kp < KP; ++kp) {
            pa[kp][0] = pack2<MT>(s[2 * kp][0], s[2 * kp][1]);
            pa[kp][1] = pack2<MT>(s[2 * kp][2], s[2 * kp][3]);
            pa[kp][2] = pack2<MT>(s[2 * kp + 1][0], s[2 * kp + 1][1]);
            pa[kp][3] = pack2<MT>(s[2 * kp + 1][2], s[2 * kp + 1][3]);
        }
        if constexpr (Tr::kFp8Cache) {
            // P's k positions (2t, 2t + 1 | 8 + 2t, 9 + 2t) of 16-key step kp are keys (t, t + 4 | 8 + t, 12 + t) of
            // it: rows m0..m3 of the V tile. Per segment, lane g loads its L / 8 columns of each (decode_q_frag_fp8's
            // note).
            const int g = lane / 4, tq = lane % 4;
            const int vx0 = kv_fp8_xor(tq), vx1 = kv_fp8_xor(tq + 4);  // rows t, 8 + t and t + 4, 12 + t
#pragma unroll
            for (int kp = 0; kp < KP; ++kp) {
                const unsigned char* v_rows = smem + (sV - sQ) + (warp_key + 16 * kp + tq) * Tr::kKvRowBytes;
                int j0 = 0;
#pragma unroll
                for (int seg = 0; seg < fp8_v_segs<Tr::kHeadDim>(); ++seg) {
                    const int len = fp8_v_seg_len<Tr::kHeadDim>(seg), base = fp8_v_seg_base<Tr::kHeadDim>(seg);
                    const int bytes = len / 8;  // this lane's columns: base + g * bytes ..
                    const int first = base + g * bytes;
                    uint32_t m[4][4];  // [member][word]: rows t, t + 4, 8 + t, 12 + t
                    uint32_t nan = 0;
#pragma unroll
                    for (int mb = 0; mb < 4; ++mb) {
                        const unsigned char* row = v_rows + ((mb / 2) * 8 + (mb % 2) * 4) * Tr::kKvRowBytes;
                        const int off = (((first / 16) ^ (mb % 2 ? vx1 : vx0)) << 4) + first % 16;
                        if (bytes == 16) {
                            const uint4 x = *reinterpret_cast<const uint4*>(row + off);
                            m[mb][0] = x.x, m[mb][1] = x.y, m[mb][2] = x.z, m[mb][3] = x.w;
                        } else if (bytes == 8) {
                            const uint2 x = *reinterpret_cast<const uint2*>(row + off);
                            m[mb][0] = x.x, m[mb][1] = x.y, m[mb][2] = 0u, m[mb][3] = 0u;
                        } else {
                            m[mb][0] = *reinterpret_cast<const uint32_t*>(row + off);
                            m[mb][1] = m[mb][2] = m[mb][3] = 0u;
                        }
                        if constexpr (!kCvt) {
#pragma unroll
                            for (int w = 0; w < bytes / 4; ++w) nan |= e4m3x4_nan_flags(m[mb][w]);
                        }
                    }
                    // As for K: the exact conversion where this warp's words hold a NaN byte (NaN values give NaN).
                    const auto pv = [&](auto exact) {
#pragma unroll
                        for (int w = 0; w < bytes / 4; ++w) {
#pragma unroll
                            for (int h = 0; h < 2; ++h) {
                                // Bytes 2h, 2h + 1 of word w of the member pairs: columns 4w + 2h (lo) and 4w + 2h + 1
                                // (hi).
                                const uint32_t sel = h == 0 ? 0x5410u : 0x7632u;
                                uint32_t b0lo, b0hi, b1lo, b1hi;
                                if constexpr (kCvt) {
                                    const uint32_t hs = e4m3x4_hw_sel(sel);
                                    e4m3_pairs_to_half_hw(__byte_perm(m[0][w], m[1][w], hs), b0lo, b0hi);
                                    e4m3_pairs_to_half_hw(__byte_perm(m[2][w], m[3][w], hs), b1lo, b1hi);
                                } else {
                                    e4m3x4_to<T, decltype(exact)::value>(__byte_perm(m[0][w], m[1][w], sel), b0lo, b0hi);
                                    e4m3x4_to<T, decltype(exact)::value>(__byte_perm(m[2][w], m[3][w], sel), b1lo, b1hi);
                                }
                                mma_16816<MT>(acc[j0 + 4 * w + 2 * h], pa[kp], b0lo, b1lo);
                                mma_16816<MT>(acc[j0 + 4 * w + 2 * h + 1], pa[kp], b0hi, b1hi);
                            }
                        }
                    };
                    if (kCvt) {
                        pv(std::false_type{});
                    } else if (__any_sync(0xffffffffu, (nan & 0x80808080u) != 0u)) {
                        pv(std::true_type{});
                    } else {
                        pv(std::false_type{});
                    }
                    j0 += bytes;
                }
            }
        } else {
#pragma unroll
            for (int dp = 0; dp < NO / 2; ++dp) {
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4_trans(b0, b1, b2, b3, frag_addr<RB>(sV, v_off, dp, warp_key));
                mma_16816<T>(acc[2 * dp], pa[0], b0, b1);
                mma_16816<T>(acc[2 * dp + 1], pa[0], b2, b3);
            }
        }
    }

    // Merge the warps: each stores its row max, row sum and unnormalised O in the (now idle) ring.
    cp_async_wait<0>();
    __syncthreads();
    float* red_o = reinterpret_cast<float*>(smem + Tr::kSmemQ);
    float* red_m = reinterpret_cast<float*>(smem + Tr::kSmemQ + Tr::kSmemRedO);
    float* red_l = red_m + W * BM;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = row_sum[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int lr = lane / 4 + 8 * r;
        if (lane % 4 == 0) {
            red_m[warp * BM + lr] = row_max[r];
            red_l[warp * BM + lr] = sum;
        }
        if constexpr (Tr::kFp8Cache) {
            // Un-permute the fp8 path's output columns (decode_fp8_out_col), scaled by v_descale.
            float* dst = red_o + (warp * BM + lr) * Tr::kRedStride;
#pragma unroll
            for (int j = 0; j < NO; ++j) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    dst[decode_fp8_out_col<Tr::kHeadDim>(j, (lane % 4) * 2 + c)] = acc[j][2 * r + c] * v_desc;
                }
            }
        } else {
            float* dst = red_o + (warp * BM + lr) * Tr::kRedStride + (lane % 4) * 2;
#pragma unroll
            for (int j = 0; j < NO; ++j) {
                *reinterpret_cast<float2*>(dst + j * 8) = make_float2(acc[j][2 * r], acc[j][2 * r + 1]);
            }
        }
    }
    __syncthreads();

    // One thread per (row, 8 columns): rescale each warp's part to the common max, sum, normalise.
    const float lse_scale = softcap ? p.softcap : p.scale;
    for (int c = tid; c < BM * CPR; c += Tr::kThreads) {
        const int r = c / CPR;
        const int ch = c % CPR;
        if (r >= rows_here || ch * 8 >= p.d) continue;
        float mx = -CUDART_INF_F;
#pragma unroll
        for (int w = 0; w < W; ++w) mx = fmaxf(mx, red_m[w * BM + r]);
        const float m_scaled = mx == -CUDART_INF_F ? 0.f : mx * scale_log2;
        float l = 0.f;
        float o[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) o[e] = 0.f;
#pragma unroll
        for (int w = 0; w < W; ++w) {
            const float f = fast_exp2(red_m[w * BM + r] * scale_log2 - m_scaled);
            l += f * red_l[w * BM + r];
            const float4* src = reinterpret_cast<const float4*>(red_o + (w * BM + r) * Tr::kRedStride + ch * 8);
            const float4 x0 = src[0], x1 = src[1];
            decode_axpy8(o, f, x0, x1);
        }
        const bool seen = l > 0.f;
        const float inv = seen ? 1.f / l : 0.f;
        const float lse = seen ? mx * lse_scale + logf(l) : (direct ? CUDART_INF_F : -CUDART_INF_F);
        const int2 qh = out_row(r);
        if (direct) {
            *reinterpret_cast<uint4*>(o_row(qh, ch)) =
                make_uint4(pack2<T>(o[0] * inv, o[1] * inv), pack2<T>(o[2] * inv, o[3] * inv),
                           pack2<T>(o[4] * inv, o[5] * inv), pack2<T>(o[6] * inv, o[7] * inv));
            if (ch == 0 && p.lse != nullptr) *lse_at(qh) = lse;
        } else if (clustered) {  // (FA_DECODE_CLUSTER_SPLITS: in this CTA's shared memory, for cluster_merge)
            float4* dst = reinterpret_cast<float4*>(smem + Tr::kOffPart + (r * Tr::kHeadDim + ch * 8) * 4);
            dst[0] = make_float4(o[0] * inv, o[1] * inv, o[2] * inv, o[3] * inv);
            dst[1] = make_float4(o[4] * inv, o[5] * inv, o[6] * inv, o[7] * inv);
            if (ch == 0) reinterpret_cast<float*>(smem + Tr::kOffPartLse)[r] = lse;
        } else {
            const int64_t srow = split * accum_rows + (static_cast<int64_t>(b) * p.hq + qh.y) * p.sq + qh.x;
            float4* dst = reinterpret_cast<float4*>(p.o_accum + srow * p.d + ch * 8);
            dst[0] = make_float4(o[0] * inv, o[1] * inv, o[2] * inv, o[3] * inv);
            dst[1] = make_float4(o[4] * inv, o[5] * inv, o[6] * inv, o[7] * inv);
            if (ch == 0) p.lse_accum[srow] = lse;
        }
    }
    if (clustered) cluster_merge();
}

// Merges the num_splits partial results of each output row: with L = log(sum_s exp(lse_s)),
// O = sum_s exp(lse_s - L) O_s. Splits with lse_s = -inf saw no key and are skipped (their O_s may be
// unwritten); a row that no split saw gets O = 0 and LSE = +inf. One thread per (row, 8 columns).
template <typename T>
__global__ void __launch_bounds__(128) decode_combine_kernel(const __grid_constant__ DecodeParams p) {
    FA_DECODE_PDL_WAIT();  // the attention grid's partials complete and visible (a no-op without the launch attribute)
    const int cpr = p.d / 8;
    const int rows_per_cta = blockDim.x / cpr;
    const int local = threadIdx.x / cpr;
    const int ch = threadIdx.x - local * cpr;
    const int64_t rows = static_cast<int64_t>(p.b) * p.hq * p.sq;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_cta + local;
    if (local >= rows_per_cta || row >= rows) return;
    // Rows fit in int32 (validated), so the index arithmetic stays 32-bit.
    const int row32 = static_cast<int>(row);
    const int qi = row32 % p.sq;
    const int bh = row32 / p.sq;
    const int head = bh % p.hq;
    const int b = bh / p.hq;
    // With cu_seqlens_q the split buffers keep sq (max_seqlen_q) rows a sequence; rows past its own count have no
    // partials and no output.
    const DecodeSpan qs = decode_q_span(p, b);
    if (qi >= qs.count) return;
    const int64_t orow = qs.row0 + qi;
    T* out = reinterpret_cast<T*>(p.o) + b * p.o_batch_stride + orow * p.o_row_stride + head * p.o_head_stride + ch * 8;
    float* lse_out = p.lse == nullptr ? nullptr
                                      : p.lse + b * p.lse_batch_stride + head * p.lse_head_stride + orow * p.lse_row_stride;

    const float* part_lse = p.lse_accum + row;
    float mx = -CUDART_INF_F;
    for (int s = 0; s < p.num_splits; ++s) mx = fmaxf(mx, part_lse[s * rows]);
    if (mx == -CUDART_INF_F) {
        *reinterpret_cast<uint4*>(out) = make_uint4(0, 0, 0, 0);
        if (ch == 0 && lse_out != nullptr) *lse_out = CUDART_INF_F;
        return;
    }
    float sum = 0.f;
    for (int s = 0; s < p.num_splits; ++s) sum += __expf(part_lse[s * rows] - mx);
    const float lse = mx + __logf(sum);
    float o[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = 0.f;
    for (int s = 0; s < p.num_splits; ++s) {
        const float l = part_lse[s * rows];
        if (l == -CUDART_INF_F) continue;
        const float w = __expf(l - lse);
        const float4* src = reinterpret_cast<const float4*>(p.o_accum + (s * rows + row) * p.d + ch * 8);
        const float4 x0 = src[0], x1 = src[1];
        decode_axpy8(o, w, x0, x1);
    }
    *reinterpret_cast<uint4*>(out) =
        make_uint4(pack2<T>(o[0], o[1]), pack2<T>(o[2], o[3]), pack2<T>(o[4], o[5]), pack2<T>(o[6], o[7]));
    if (ch == 0 && lse_out != nullptr) *lse_out = lse;
}

// The sequence whose packed k_new rows (cu_seqlens_k_new) hold packed row r: the last b with cu[b] <= r (a binary
// search over the raw entries; the caller checks r against the sequence's clamped span, so a malformed array can
// only leave rows unappended, which decode_span reports).
__device__ __forceinline__ int decode_knew_owner(const DecodeParams& p, int r) {
    int lo = 0, hi = p.b - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (__ldg(p.cu_seqlens_knew + mid * p.cu_knew_stride) <= r) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

// Writes k_new / v_new into the cache at positions cached_b .. cached_b + added_b - 1 of every sequence's cache row
// (cache_batch_idx), 16 bytes per thread, each key chunk rotated at its position first when rotary is on. Launched
// before the attention kernel on the same stream, which orders the two. One thread per (k_new row, kv head, 16-byte
// chunk): rows are [b, added] or, with cu_seqlens_k_new, the packed rows, each found in its sequence's span.
// Fp8Cache: the cache holds e4m3 bytes; each chunk (what a cache of T would store) is divided by its KV head's
// descales and quantized (e4m3_quantize8) into 8 bytes.
template <typename T, bool Fp8Cache = false>
__global__ void __launch_bounds__(256) decode_append_kernel(const __grid_constant__ DecodeParams p) {
    const int cpr = p.d / 8;
    const bool packed = p.cu_seqlens_knew != nullptr;
    const int64_t rows = packed ? static_cast<int64_t>(p.total_knew) : static_cast<int64_t>(p.b) * p.added;
    const int64_t total = rows * p.hkv * cpr;
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        int64_t rest = idx;
        const int ch = static_cast<int>(rest % cpr);
        rest /= cpr;
        const int h = static_cast<int>(rest % p.hkv);
        rest /= p.hkv;
        int b, i;
        if (packed) {
            b = decode_knew_owner(p, static_cast<int>(rest));
            i = static_cast<int>(rest);  // made relative to the sequence's first row below
        } else {
            i = static_cast<int>(rest % p.added);
            b = static_cast<int>(rest / p.added);
        }
        const DecodeSeq seq = decode_seq(p, b);
        if (packed) {
            i -= seq.added.row0;
            if (i < 0 || i >= seq.added.count) continue;  // a row no sequence appends (past the last, or clamped)
        }
        const int pos = seq.cached + i;
        const int64_t row = decode_cache_row(p, b);
        // An index outside the pool (clamped and reported by decode_cache_row) appends nothing: the clamped row is
        // another sequence's, whose cache must not change.
        if (p.cache_batch_idx != nullptr && __ldg(p.cache_batch_idx + b * p.batch_idx_stride) != row) continue;
        int64_t k_dst, v_dst;
        if (p.block_table != nullptr) {
            const int64_t block = decode_block_id(p, p.block_table + row * p.table_batch_stride, pos >> p.block_shift);
            const int64_t in_page = pos & (p.block_size - 1);
            k_dst = block * p.k_batch_stride + in_page * p.k_row_stride;
            v_dst = block * p.v_batch_stride + in_page * p.v_row_stride;
        } else {
            k_dst = row * p.k_batch_stride + static_cast<int64_t>(pos) * p.k_row_stride;
            v_dst = row * p.v_batch_stride + static_cast<int64_t>(pos) * p.v_row_stride;
        }
        k_dst += h * p.k_head_stride + ch * 8;
        v_dst += h * p.v_head_stride + ch * 8;
        const int64_t kn_row = seq.added.row0 + i;  // row0 is 0 unless packed
        const T* kn = reinterpret_cast<const T*>(p.k_new) + b * p.kn_batch_stride + kn_row * p.kn_row_stride +
                      h * p.kn_head_stride;
        const T* vn = reinterpret_cast<const T*>(p.v_new) + b * p.vn_batch_stride + kn_row * p.vn_row_stride +
                      h * p.vn_head_stride + ch * 8;
        // With rotary the key is rotated at its own cache position before it is stored (FEATURES.md section 4: the
        // cache holds rotated keys); the partner chunk of a half-split pair is read from k_new, never the cache.
        const uint4 key = p.rotary_cos != nullptr
                              ? rotary_chunk<T>(kn, ch, rotary_row<T>(p.rotary_cos, pos, p.rotary_seqlen, p.rotary_dim),
                                                rotary_row<T>(p.rotary_sin, pos, p.rotary_seqlen, p.rotary_dim),
                                                p.rotary_dim, p.rotary_interleaved != 0)
                              : *reinterpret_cast<const uint4*>(kn + ch * 8);
        if constexpr (Fp8Cache) {
            // (Strides of an fp8 cache count bytes; element 8 ch of the head is byte 8 ch.)
            *reinterpret_cast<uint2*>(reinterpret_cast<uint8_t*>(p.k_cache) + k_dst) =
                e4m3_quantize8<T>(key, __ldg(p.k_descale + h * p.k_descale_stride));
            *reinterpret_cast<uint2*>(reinterpret_cast<uint8_t*>(p.v_cache) + v_dst) =
                e4m3_quantize8<T>(*reinterpret_cast<const uint4*>(vn), __ldg(p.v_descale + h * p.v_descale_stride));
        } else {
            *reinterpret_cast<uint4*>(reinterpret_cast<T*>(p.k_cache) + k_dst) = key;
            *reinterpret_cast<uint4*>(reinterpret_cast<T*>(p.v_cache) + v_dst) = *reinterpret_cast<const uint4*>(vn);
        }
    }
}

// advance_cache_seqlens: stores each sequence's length after the append (the clamped length the other kernels
// used, plus the new tokens). Launched last on the stream, after every kernel that reads cache_seqlens.
// (A template, like its neighbours, so that every translation unit that includes this header may define it.)
template <typename T>
__global__ void __launch_bounds__(256) decode_advance_kernel(const __grid_constant__ DecodeParams p) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b < p.b) p.cache_seqlens[b * p.seqlens_stride] = decode_seq(p, b).total;
}

}  // namespace sm80
}  // namespace fa
