// The forward pass's kernel parameters: a plain struct the host (native/src/validate_forward.cpp) fills
// after every argument has been checked, passed by value to the kernels. This folder (native/kernels/params)
// is the whole contract between the host and the kernels: plain data, no ABI header, no std types.
// Offsets are int64 so tensors past 2^31 elements index correctly.
#pragma once
#include <cstdint>

namespace fa {

// Element types of q/k/v (the C ABI's fa_dtype_t values). Float8E4M3 (OCP e4m3, PyTorch's float8_e4m3fn) is an
// input type of the sm90 forward only; its output is bf16.
enum class DType : int32_t { Float16 = 1, BFloat16 = 2, Float8E4M3 = 5 };

// An fp8 descale factor table: fp32 on the device, the factor of (sequence b, KV head hk) at
// data[b * batch_stride + hk * head_stride] (strides in elements, 0 broadcasts); data nullptr means 1.
struct FwdDescale {
    const float* data = nullptr;
    int64_t batch_stride = 0;
    int64_t head_stride = 0;
};

struct FwdParams {
    const void* q;  // [b, sq, hq, d]
    const void* k;  // [b, sk, hkv, d]
    const void* v;  // [b, sk, hkv, dv]
    void* o;        // [b, sq, hq, dv]
    float* lse;     // [b, hq, sq] or nullptr

    // Strides in elements (the last dimension is contiguous).
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    int64_t lse_batch_stride, lse_head_stride, lse_row_stride;

    int32_t b, sq, sk, hq, hkv, d;
    int32_t hq_per_hkv;      // hq / hkv
    float scale;             // softmax scale
    float scale_log2;        // scale * log2(e)
    int32_t causal;          // 0 or 1; already folded into window_right (kept for names and logs)
    int32_t causal_offset;   // unused by the kernels (kept for logging): see bottom_right
    DType dtype;

    // Masks. Query i of a sequence sees key j iff j < sk_seq and
    //   j <= i + off + window_right   (unbounded if < 0; a causal call has 0 here)
    //   j >= i + off - window_left    (unbounded if < 0)
    // where off = sk_seq - sq_seq when bottom_right, else 0. common/mask.h turns these into bounds.
    int32_t window_left = -1;
    int32_t window_right = -1;
    int32_t bottom_right = 1;
    // > 0: scores become softcap * tanh(score * scale / softcap) before masking and softmax.
    float softcap = 0.f;

    // Variable-length batches: when cu_seqlens_q is set, q/o are [total_q, hq, d] and sequence b
    // spans rows cu_seqlens_q[b] .. cu_seqlens_q[b+1] (likewise k/v with cu_seqlens_k); batch strides
    // are ignored; sq/sk are the maxima; the LSE is [hq, total_q] (lse_batch_stride unused).
    const int32_t* cu_seqlens_q = nullptr;
    const int32_t* cu_seqlens_k = nullptr;
    // Rows of the packed tensors (varlen): the kernels clamp every sequence to [0, total) and to
    // sq/sk, so a wrong device-only cu_seqlens can give wrong values but never an access outside.
    int32_t total_q = 0;
    int32_t total_k = 0;

    // Block order (set by the launchers, see common/fwd_schedule.h): the grid walks groups of
    // `heads_per_group` (batch, head) pairs; inside a group the row blocks go heaviest first (for a
    // causal mask the last row blocks see the most keys), so the final wave holds the lightest blocks,
    // while the group's K/V stays small enough to be reused from L2.
    int32_t m_blocks = 0;
    int32_t heads_per_group = 0;

    // fp8 (dtype Float8E4M3): q, k and v hold values that the factors of their KV head (FlashAttention-3's
    // convention, even for q) scale back: true q = q * q_descale[b, h / hq_per_hkv], likewise k and v. The
    // output o is then bf16. Unused (all data nullptr) for the 16-bit types.
    FwdDescale q_descale, k_descale, v_descale;

    // Learnable sinks (FEATURES.md section 7): one fp32 logit per query head h at sinks[h * sinks_stride], in
    // final-logit units (natural log, not scaled, not capped), joining each row's softmax denominator only:
    // O = sum_j e^x_j V_j / (e^sink + sum_j e^x_j), LSE = log(e^sink + sum_j e^x_j); a row that sees no key
    // gets O = 0 and LSE = sink. nullptr: none (common/sink.cuh finishes a row either way).
    const float* sinks = nullptr;
    int64_t sinks_stride = 0;

    // ALiBi (FEATURES.md section 2): the slope of (sequence b, query head h) is
    // alibi_slopes[b * alibi_batch_stride + h * alibi_head_stride] (batch stride 0: one slope per head), fp32, in
    // final-logit units. alibi_causal: the bias is +slope * j (FlashAttention-2's causal form, for a causal call
    // without a left window), else -slope * |i + off - j| with the mask's off (common/alibi.cuh). nullptr: none.
    // Calls with slopes run the kLocal variant (common/mask.cuh is_local), which alone carries the bias.
    const float* alibi_slopes = nullptr;
    int64_t alibi_batch_stride = 0;
    int64_t alibi_head_stride = 0;
    int32_t alibi_causal = 0;

    // Dropout (FEATURES.md section 1; common/dropout.cuh): element (i, j) of (sequence b, query head h) is kept iff
    // its byte of FlashAttention-2's Philox stream (common/philox.cuh) is at most dropout_threshold; kept P is scaled
    // by dropout_rp = 1 / (1 - p) (the forward folds it into the final normalisation, the backward into dP and dV).
    // Key: *dropout_seed_ptr when given, else dropout_seed; base offset: dropout_offset + *dropout_offset_ptr (the
    // pointer's term 0 when null), read by the kernels when they run. dropout_rng_state (forward): written with the
    // (seed, offset) used. dropout_mask (forward): keep flags at mask[b * batch + h * head + i * row + j], uint8.
    // Calls with dropout run the kLocal variant (common/mask.cuh is_local), which alone carries it. dropout 0: none.
    int32_t dropout = 0;
    uint32_t dropout_threshold = 0;
    float dropout_rp = 1.f;
    uint64_t dropout_seed = 0;
    uint64_t dropout_offset = 0;
    const uint64_t* dropout_seed_ptr = nullptr;
    const uint64_t* dropout_offset_ptr = nullptr;
    uint64_t* dropout_rng_state = nullptr;
    uint8_t* dropout_mask = nullptr;
    int64_t dropout_mask_batch_stride = 0;
    int64_t dropout_mask_head_stride = 0;
    int64_t dropout_mask_row_stride = 0;

    // Head dim of v and o: d, or (the V head dim differs) a pair of sm80::fwd_v_pair, whose kernels alone read it. Last,
    // so that the other kernels' parameter offsets are those before it.
    int32_t dv = 0;

    // Paged K/V (C ABI 0.11; variable-length batches only): when block_table is set, k and v are pools
    // [num_blocks, block_size, hkv, d] and key j of sequence b is row j % block_size of block
    // block_table[b * table_batch_stride + (j / block_size) * table_page_stride]; k_batch_stride / v_batch_stride are
    // then the strides between blocks, cu_seqlens_k gives only the lengths (total_k is INT32_MAX: nothing to clamp
    // to), and block_size is a multiple of every kernel's key tile (the host serves multiples of 128), so that a
    // tile lies in one block. A block id outside [0, num_blocks) is clamped and reported (kDeviceFlagForwardBlockId)
    // in device_flags, set by the launcher from LaunchInfo. After dv, so that the other kernels' offsets stay.
    const int32_t* block_table = nullptr;
    int64_t table_batch_stride = 0, table_page_stride = 0;
    int32_t block_size = 0, num_blocks = 0;
    uint32_t* device_flags = nullptr;
};

}  // namespace fa
