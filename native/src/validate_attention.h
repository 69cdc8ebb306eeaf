// The shared core of the forward and backward validation: the arguments fa_forward_params_t and
// fa_backward_params_t both carry (q, k, v, out, lse, the options, the variable-length fields), checked once
// here. validate_forward.cpp and validate_backward.cpp map their struct onto AttentionArgs, check what only
// their pass has, and call these in order:
//   check_attention (INVALID_ARGUMENT) -> check_attention_served (UNSUPPORTED) -> attention_params.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "params/fwd_params.h"
#include "flash_attention.h"
#include "validate_common.h"

namespace fa {

class MemoryArgs;  // device_memory.h

namespace validation {

// The attention arguments of one call: views of the caller's struct (the tensors are not copied, so the
// struct must outlive this).
struct AttentionArgs {
    const fa_tensor_t* q;
    const fa_tensor_t* k;
    const fa_tensor_t* v;
    const fa_tensor_t* out;
    const fa_tensor_t* lse;  // data NULL: absent (the backward requires it before calling here)
    float softmax_scale;
    int32_t causal;
    int32_t causal_alignment;
    int32_t kernel_path;
    int32_t window_left;
    int32_t window_right;
    float softcap;
    const int32_t* cu_seqlens_q;
    const int32_t* cu_seqlens_k;
    const int32_t* cu_seqlens_q_host;
    const int32_t* cu_seqlens_k_host;
    int32_t varlen_batch;
    int32_t max_seqlen_q;
    int32_t max_seqlen_k;
    // The fp8 descale tables (the forward's q_descale, k_descale, v_descale); nullptr in the backward, which has
    // none. A table with data NULL is absent (factor 1).
    const fa_tensor_t* q_descale = nullptr;
    const fa_tensor_t* k_descale = nullptr;
    const fa_tensor_t* v_descale = nullptr;
    // The learnable sinks ([heads_q] fp32; since 0.7); nullptr or data NULL: none.
    const fa_tensor_t* sinks = nullptr;
    // The ALiBi slopes ([heads_q] or [batch, heads_q] fp32; since 0.8); nullptr or data NULL: none.
    const fa_tensor_t* alibi_slopes = nullptr;
    // Dropout (since 0.9): the drop probability (0: none), the seed and offset as host values and device
    // pointers, and the forward's optional outputs (rng_state and the keep mask; nullptr in the backward).
    float dropout_p = 0.0f;
    uint64_t dropout_seed = 0;
    uint64_t dropout_offset = 0;
    const uint64_t* dropout_seed_device = nullptr;
    const uint64_t* dropout_offset_device = nullptr;
    uint64_t* dropout_rng_state = nullptr;
    const fa_tensor_t* dropout_mask = nullptr;  // nullptr or data NULL: not written
    // Paged K/V (the forward's block_table, since 0.11; nullptr in the backward, which has none): nullptr or data
    // NULL: k and v are packed or batched as usual.
    const fa_tensor_t* block_table = nullptr;
};

// Field `field` of the caller's params P when its struct_size covers it, else the default D's (an older, smaller
// struct: the forward accepts one from 0.1 on, the backward from 0.6 on).
#define FA_FIELD_OR_DEFAULT(P, D, field)                                                                       \
    ((P).struct_size >= offsetof(std::decay_t<decltype(P)>, field) + sizeof((P).field) ? (P).field : (D).field)

// The attention arguments of an fa_forward_params_t or fa_backward_params_t (D: the struct's defaults). The
// tensors and the options up to kernel_path are in every version of both structs.
template <class Params>
AttentionArgs attention_args(const Params& P, const Params& D) {
    AttentionArgs a{};
    a.q = &P.q;
    a.k = &P.k;
    a.v = &P.v;
    a.out = &P.out;
    a.lse = &P.lse;
    a.softmax_scale = P.softmax_scale;
    a.causal = P.causal;
    a.causal_alignment = P.causal_alignment;
    a.kernel_path = P.kernel_path;
    a.window_left = FA_FIELD_OR_DEFAULT(P, D, window_left);
    a.window_right = FA_FIELD_OR_DEFAULT(P, D, window_right);
    a.softcap = FA_FIELD_OR_DEFAULT(P, D, softcap);
    a.cu_seqlens_q = FA_FIELD_OR_DEFAULT(P, D, cu_seqlens_q);
    a.cu_seqlens_k = FA_FIELD_OR_DEFAULT(P, D, cu_seqlens_k);
    a.cu_seqlens_q_host = FA_FIELD_OR_DEFAULT(P, D, cu_seqlens_q_host);
    a.cu_seqlens_k_host = FA_FIELD_OR_DEFAULT(P, D, cu_seqlens_k_host);
    a.varlen_batch = FA_FIELD_OR_DEFAULT(P, D, varlen_batch);
    a.max_seqlen_q = FA_FIELD_OR_DEFAULT(P, D, max_seqlen_q);
    a.max_seqlen_k = FA_FIELD_OR_DEFAULT(P, D, max_seqlen_k);
    // The options appended to both structs; an older caller's struct ends before them and gets D's. Learnable sinks
    // (since 0.7; data NULL: none), ALiBi slopes (0.8; likewise), dropout (0.9; dropout_p 0: none). The forward's own
    // outputs and inputs (descales, rng_state, the keep mask) are read by validate_forward.
    a.sinks = &FA_FIELD_OR_DEFAULT(P, D, sinks);
    a.alibi_slopes = &FA_FIELD_OR_DEFAULT(P, D, alibi_slopes);
    a.dropout_p = FA_FIELD_OR_DEFAULT(P, D, dropout_p);
    a.dropout_seed = FA_FIELD_OR_DEFAULT(P, D, dropout_seed);
    a.dropout_offset = FA_FIELD_OR_DEFAULT(P, D, dropout_offset);
    a.dropout_seed_device = FA_FIELD_OR_DEFAULT(P, D, dropout_seed_device);
    a.dropout_offset_device = FA_FIELD_OR_DEFAULT(P, D, dropout_offset_device);
    return a;
}

// What check_attention found: the layout's sizes and the byte range of every tensor.
struct AttentionShape {
    bool varlen;   // cu_seqlens set: q, k, v and out are [total, heads, head_dim]
    bool has_lse;  // lse.data set
    bool fp8;      // q, k and v are FA_DTYPE_FLOAT8_E4M3 (out is then bf16)
    int32_t row_dim;  // index of the rows dimension: 0 (variable-length) or 1; heads and head_dim follow it
    bool paged;          // block_table given: k and v are pools [num_blocks, block_size, heads_kv, head_dim]
    int32_t kv_row_dim;  // k's and v's rows dimension: row_dim, or 1 (block_size) when paged
    int64_t block_size, max_blocks;  // paged: rows per block, block_table.shape[1]; 0 otherwise
    Extent block_table;              // 0..0 when absent
    int64_t b, rows_q, rows_k, hq, hkv, d;  // rows_k: paged, block_size (k's rows per block)
    int64_t dv;  // v's and out's head dim: d, or a pair FlashAttention-3 serves (check_attention_served)
    Extent q, k, v, out, lse;  // lse 0..0 when absent
    Extent descale[3];         // q_descale, k_descale, v_descale; 0..0 when absent
    bool has_sinks;            // sinks given
    Extent sinks;              // 0..0 when absent
    AlibiSlopes alibi;         // on false when absent (extent 0..0)
    bool dropout;              // dropout_p > 0
    Extent dropout_mask;       // 0..0 when absent
    Extent dropout_rng_state;  // 0..0 when absent (16 bytes otherwise)
};

// Every INVALID_ARGUMENT check of the attention arguments, in this order: the fixed- or variable-length
// fields, each tensor on its own, the tensors against each other (dtypes: one 16-bit dtype for all four, or fp8
// q, k and v with a bf16 out), the fp8 descales, the sinks, the ALiBi slopes, dropout, the options, the host copies of cu_seqlens, then out
// and lse against the memory they must not overlap.
AttentionShape check_attention(const AttentionArgs& a);

// The UNSUPPORTED checks: head dim (a multiple of 16 for fp8), the sizes the kernels index with 32 bits, the
// forward grid, compute capability (kernel_path is the caller's: which paths serve differs by pass, and by dtype).
void check_attention_served(const AttentionArgs& a, const AttentionShape& shape, int32_t compute_capability);

// The device memory of a checked call (q, k, v, out, lse, cu_seqlens_q/k, the descales, the sinks) with the byte
// range of each.
void add_attention_memory(const AttentionArgs& a, const AttentionShape& shape, MemoryArgs& memory);

// The forward kernel parameters of a checked call (the backward's BwdParams::f): dtype, and for fp8 the descale
// tables (data, batch and head strides in elements, as the caller gave them: 0 broadcasts).
FwdParams attention_params(const AttentionArgs& a, const AttentionShape& shape);

}  // namespace validation
}  // namespace fa
