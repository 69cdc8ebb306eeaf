// The decode pass's kernel parameters (fa_decode): a plain struct the host (native/src/validate_decode.cpp)
// fills after every argument has been checked, passed by value to the kernels. Offsets are int64 so caches
// past 2^31 elements index correctly. Plain data.
#pragma once
#include <cstdint>

#include "params/fwd_params.h"  // DType

namespace fa {

struct DecodeParams {
    const void* q;          // [b, sq, hq, d] (packed [total_q, hq, d] with cu_seqlens_q)
    void* k_cache;          // contiguous [b, capacity, hkv, d] or paged [num_blocks, block_size, hkv, d]
    void* v_cache;          // shaped like k_cache
    const void* k_new;      // [b, added, hkv, d] (packed with cu_seqlens_knew) or nullptr (nothing appended)
    const void* v_new;      // [b, added, hkv, d] or nullptr
    void* o;                // [b, sq, hq, d]
    float* lse;             // [b, hq, sq] or nullptr
    int32_t* cache_seqlens;        // [b], device (written only when advance is 1)
    const int32_t* block_table;    // [b, max_blocks], device; nullptr: contiguous cache

    // Strides in elements (the last dimension is contiguous). For a paged cache the "batch" stride of
    // k/v_cache is the stride between physical blocks.
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t kn_batch_stride, kn_row_stride, kn_head_stride;
    int64_t vn_batch_stride, vn_row_stride, vn_head_stride;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    int64_t lse_batch_stride, lse_head_stride, lse_row_stride;
    int64_t seqlens_stride;
    int64_t table_batch_stride, table_page_stride;

    int32_t b, sq, hq, hkv, d;
    int32_t g;               // hq / hkv: query heads per kv head, packed with the sq rows into M
    int32_t rows;            // g * sq: packed query rows per (sequence, kv head)
    int32_t capacity;        // positions each sequence's cache holds (S_max, or max_blocks * block_size)
    int32_t added;           // k_new's rows when appending (any count, not tied to sq), else 0 (and 0 when packed)
    int32_t advance;         // 1: a last kernel stores the clamped length + added into cache_seqlens
    // Paged cache: block_size = 1 << block_shift; block ids are clamped to [0, num_blocks) (and reported).
    int32_t block_size, block_shift, num_blocks, max_blocks;

    float scale;             // softmax scale
    float scale_log2;        // (softcap > 0 ? softcap : scale) * log2(e)
    float softcap;           // > 0: scores become softcap * tanh(score * scale / softcap)
    // Bottom-right masks, with off = total_b - sq (total_b = cache_seqlens[b] + added, absolute positions): query i
    // sees key j iff j >= leftpad_b and
    //   j >= i + off - window_left   (window_left < 0: unbounded)
    //   j <= i + off + window_right  (window_right < 0: unbounded; a causal call has 0 here)
    // (FEATURES.md §5: sk = total_b - leftpad_b keys numbered from leftpad_b, the diagonal bottom-right over them,
    // which in absolute positions is the same diagonal.)
    int32_t window_left, window_right;
    int32_t causal;          // kept for logs; already folded into window_right
    DType dtype;

    // Split-KV: num_splits blocks per (sequence, kv head, 16-row block); m_blocks = ceil(rows / 16).
    // With num_splits > 1 every split writes its normalised partial output and log-sum-exp to
    // o_accum [num_splits, b, hq, sq, d] / lse_accum [num_splits, b, hq, sq] (fp32) and a combine kernel
    // writes o and lse; with 1 the attention kernel writes them itself.
    int32_t num_splits, m_blocks;
    float* o_accum;
    float* lse_accum;

    // The context's device-flag word (params/device_flags.h), set by the launcher from LaunchInfo as the
    // backward's: a length or block id the kernels had to clamp is reported there. nullptr: not reported.
    uint32_t* device_flags = nullptr;

    // Serving options (C ABI 0.7). cache_batch_idx [b] (device, or nullptr: sequence b uses row b): the cache row
    // (contiguous: k/v_cache's batch index; paged: block_table's row) of sequence b, clamped to [0, cache_rows)
    // and reported (kDeviceFlagDecodeBatchIndex). cache_leftpad [b] (device, or nullptr: 0): the first valid
    // position, clamped to [0, total_b] and reported (kDeviceFlagDecodeLeftpad).
    const int32_t* cache_batch_idx = nullptr;
    const int32_t* cache_leftpad = nullptr;
    int64_t batch_idx_stride = 0, leftpad_stride = 0;
    int32_t cache_rows = 0;  // rows cache_batch_idx picks from: k_cache.shape[0] (contiguous) or block_table.shape[0]

    // ALiBi (C ABI 0.8; FwdParams::alibi_slopes, common/alibi.cuh): slope of (sequence b, query head h) at
    // alibi_slopes[b * alibi_batch_stride + h * alibi_head_stride]; distances count from the left pad. nullptr:
    // none (a uniform runtime branch: the decode kernel has no template variants for its options).
    const float* alibi_slopes = nullptr;
    int64_t alibi_batch_stride = 0;
    int64_t alibi_head_stride = 0;
    int32_t alibi_causal = 0;
    // Nonzero (FA_DECODE_CLUSTER_SPLITS, set by the launcher; with split-KV above): the num_splits CTAs of a (sequence,
    // kv head, 16-row block) are one thread-block cluster, neighbours in the grid, and merge their partials through
    // distributed shared memory, so o_accum and lse_accum stay unused and no combine kernel runs. (Here, in the padding
    // before the next pointer: the struct's layout, and the kernels' code without the knob, stay as they were.)
    int32_t cluster_splits = 0;
    // Rotary embedding (C ABI 0.8; common/rotary.cuh). rotary_cos / rotary_sin [rotary_seqlen, rotary_dim / 2] (dtype
    // of q, contiguous), or nullptr: none. New key j of sequence b is rotated at cache_seqlens[b] + j in the append
    // kernel before it is stored; query i at cache_seqlens[b] + i when rotary_per_row (causal or a window given),
    // else at cache_seqlens[b], as the attention kernel loads Q. rotary_dim is a multiple of 16 (a 16-byte chunk of
    // 8 elements is wholly rotated or wholly passed through, and a half-split pair's partner chunk is a whole chunk).
    // Positions past the table are clamped to its last row (the host refuses every call that could reach them).
    const void* rotary_cos = nullptr;
    const void* rotary_sin = nullptr;
    int32_t rotary_dim = 0, rotary_seqlen = 0;
    int32_t rotary_interleaved = 1, rotary_per_row = 0;
    // Per-sequence counts (C ABI 0.12; decode_q_span / decode_seq). cu_seqlens_q [b + 1] (device, or nullptr: sq
    // queries each): sequence b's queries are packed rows cu_seqlens_q[b] .. [b + 1] - 1 of q/o (whose batch
    // strides are then 0, the row strides stepping over packed rows) and lse ([hq, total_q]); sq is then
    // max_seqlen_q (grid, split buffers). cu_seqlens_knew [b + 1] (or nullptr: added keys each): sequence b appends
    // packed rows cu_seqlens_knew[b] .. [b + 1] - 1 of k_new/v_new; added is then 0. Entries are clamped into
    // [0, total_q] / [0, total_knew] (a query count into [0, sq], an appended one into [0, capacity]) and a clamp, or a
    // first entry other than 0, is reported (kDeviceFlagDecodeCuSeqlens).
    const int32_t* cu_seqlens_q = nullptr;
    const int32_t* cu_seqlens_knew = nullptr;
    int64_t cu_q_stride = 0, cu_knew_stride = 0;
    int32_t total_q = 0, total_knew = 0;
    // FP8 KV cache (C ABI 0.13). cache_dtype: the element type of k_cache/v_cache, dtype (16-bit) or Float8E4M3 (then
    // k_cache/v_cache hold e4m3 bytes, strides in bytes, while q, o, k_new, v_new and the rotary tables stay dtype).
    // k_descale / v_descale [hkv] (fp32, device; only with an fp8 cache): KV head hk's factor at
    // k_descale[hk * k_descale_stride], stride 0 for a one-factor [1] table. The attention kernel multiplies the
    // scores by k_descale (before softcap, as the scale) and the output by v_descale (before a split's partial is
    // written); the append kernel divides what it stores by them (common/fp8_cache.cuh).
    DType cache_dtype = DType::Float16;
    const float* k_descale = nullptr;
    const float* v_descale = nullptr;
    int64_t k_descale_stride = 0, v_descale_stride = 0;
};

}  // namespace fa
