// See validate_attention.h. The checks run in the order the header lists, each step a function, so a call
// that is wrong in several ways reports the same first fault from fa_forward and fa_backward.
#include "validate_attention.h"

#include <cmath>
#include <string>

#include "common/philox.cuh"  // dropout_threshold: the kernels' own quantisation (plain integer code)
#include "device_memory.h"
#include "dispatch.h"
#include "error.h"

namespace fa {
namespace validation {

namespace {

// cu_seqlens_q/k set (a variable-length batch) or not: the fields that go with each.
void check_batch_fields(const AttentionArgs& a, bool varlen) {
    if (!varlen && a.block_table != nullptr && a.block_table->data != nullptr) {
        invalid("block_table.data is set but cu_seqlens_q and cu_seqlens_k are NULL; paged K/V is served for a "
                "variable-length batch (as flash_attn_varlen_func's block_table): set cu_seqlens_q and cu_seqlens_k "
                "(the key lengths), varlen_batch, max_seqlen_q and max_seqlen_k");
    }
    if (varlen) {
        if (a.cu_seqlens_q == nullptr) {
            invalid("cu_seqlens_k is set but cu_seqlens_q is NULL; a variable-length batch needs both");
        }
        if (a.cu_seqlens_k == nullptr) {
            invalid("cu_seqlens_q is set but cu_seqlens_k is NULL; a variable-length batch needs both");
        }
        check_int32_aligned(a.cu_seqlens_q, "cu_seqlens_q");
        check_int32_aligned(a.cu_seqlens_k, "cu_seqlens_k");
        if (a.cu_seqlens_q_host != nullptr) {
            check_int32_aligned(a.cu_seqlens_q_host, "cu_seqlens_q_host");
        }
        if (a.cu_seqlens_k_host != nullptr) {
            check_int32_aligned(a.cu_seqlens_k_host, "cu_seqlens_k_host");
        }
        if (a.varlen_batch < 1) {
            invalid("varlen_batch is " + s(a.varlen_batch) +
                    "; a variable-length batch (cu_seqlens_q set) needs at least 1 sequence");
        }
        if (a.max_seqlen_q < 0) {
            invalid("max_seqlen_q is " + s(a.max_seqlen_q) + "; it must be >= 0");
        }
        if (a.max_seqlen_k < 0) {
            invalid("max_seqlen_k is " + s(a.max_seqlen_k) + "; it must be >= 0");
        }
        return;
    }
    if (a.cu_seqlens_q_host != nullptr || a.cu_seqlens_k_host != nullptr) {
        invalid(std::string(a.cu_seqlens_q_host != nullptr ? "cu_seqlens_q_host" : "cu_seqlens_k_host") +
                " is set but cu_seqlens_q and cu_seqlens_k are NULL; host copies go with the device arrays "
                "of a variable-length batch");
    }
    const SizeArg zeros[] = {{a.varlen_batch, "varlen_batch"}, {a.max_seqlen_q, "max_seqlen_q"}, {a.max_seqlen_k, "max_seqlen_k"}};
    for (const SizeArg& z : zeros) {
        if (z.value != 0) {
            invalid(std::string(z.what) + " is " + s(z.value) +
                    " but cu_seqlens_q is NULL; varlen_batch, max_seqlen_q and max_seqlen_k must be 0 for a "
                    "fixed-length batch (set cu_seqlens_q and cu_seqlens_k for a variable-length one)");
        }
    }
}

// Each tensor on its own; fills the extents.
void check_each_tensor(const AttentionArgs& a, AttentionShape& sh) {
    if (sh.varlen) {
        const char* hint = "; a variable-length batch (cu_seqlens_q set) packs the sequences along one dimension";
        // total_q or total_k may be 0 (every sequence empty); such a tensor's data may be NULL. (An lse
        // with NULL data is absent, as in a fixed-length call.)
        sh.q = check_tensor({*a.q, "q", {"total_q", "heads_q", "head_dim", ""}, 3, hint}, TensorKind::AttentionInput, 0);
        if (sh.paged) {
            const char* pool = "; with block_table, k and v are pools of blocks [num_blocks, block_size, heads_kv, head_dim]";
            sh.k = check_tensor({*a.k, "k", {"num_blocks", "block_size", "heads_kv", "head_dim"}, 4, pool},
                                TensorKind::AttentionInput);
            sh.v = check_tensor({*a.v, "v", {"num_blocks", "block_size", "heads_kv", "head_dim"}, 4, pool},
                                TensorKind::AttentionInput);
            sh.block_table = check_tensor({*a.block_table, "block_table", {"varlen_batch", "max_blocks_per_seq", "", ""}, 2,
                                           "; the block of each page of each sequence"},
                                          TensorKind::Int32);
        } else {
            sh.k = check_tensor({*a.k, "k", {"total_k", "heads_kv", "head_dim", ""}, 3, hint}, TensorKind::AttentionInput, 0);
            sh.v = check_tensor({*a.v, "v", {"total_k", "heads_kv", "head_dim", ""}, 3, hint}, TensorKind::AttentionInput, 0);
        }
        sh.out = check_tensor({*a.out, "out", {"total_q", "heads_q", "head_dim", ""}, 3, hint}, TensorKind::Attention, 0);
        if (sh.has_lse) {
            sh.lse = check_tensor({*a.lse, "lse", {"heads_q", "total_q", "", ""}, 2, hint}, TensorKind::Float32, 1);
        }
        return;
    }
    sh.q = check_tensor({*a.q, "q", {"batch", "seqlen_q", "heads_q", "head_dim"}, 4, ""}, TensorKind::AttentionInput);
    sh.k = check_tensor({*a.k, "k", {"batch", "seqlen_k", "heads_kv", "head_dim"}, 4, ""}, TensorKind::AttentionInput);
    sh.v = check_tensor({*a.v, "v", {"batch", "seqlen_k", "heads_kv", "head_dim"}, 4, ""}, TensorKind::AttentionInput);
    sh.out = check_tensor({*a.out, "out", {"batch", "seqlen_q", "heads_q", "head_dim"}, 4, ""}, TensorKind::Attention);
    if (sh.has_lse) {
        sh.lse = check_tensor({*a.lse, "lse", {"batch", "heads_q", "seqlen_q", ""}, 3, ""}, TensorKind::Float32);
    }
}

// The dtypes: q, k and v all fp8 (e4m3) with a bf16 out, or none fp8 and all four of one dtype. Fills sh.fp8.
void check_dtypes_agree(const AttentionArgs& a, AttentionShape& sh) {
    const fa_tensor_t& q = *a.q;
    const fa_tensor_t& k = *a.k;
    const fa_tensor_t& v = *a.v;
    const fa_tensor_t& out = *a.out;
    const bool q8 = q.dtype == FA_DTYPE_FLOAT8_E4M3;
    const bool k8 = k.dtype == FA_DTYPE_FLOAT8_E4M3;
    const bool v8 = v.dtype == FA_DTYPE_FLOAT8_E4M3;
    if (q8 || k8 || v8) {
        if (!(q8 && k8 && v8)) {
            // The first tensor that breaks the rule: with q fp8 the first of k, v that is not; else the fp8 one.
            const bool k_odd = q8 ? !k8 : k8;
            const fa_tensor_t& odd = k_odd ? k : v;
            invalid(std::string(k_odd ? "k" : "v") + ".dtype is " + dtype_name(odd.dtype) + " but q.dtype is " +
                    dtype_name(q.dtype) + "; q, k and v must all be fp8 (FA_DTYPE_FLOAT8_E4M3) or none");
        }
        if (out.dtype != FA_DTYPE_BFLOAT16) {
            invalid("out.dtype is " + std::string(dtype_name(out.dtype)) +
                    "; out must be bf16 when q is fp8 (e4m3): FA_DTYPE_BFLOAT16, as in FlashAttention-3");
        }
        sh.fp8 = true;
        return;
    }
    if (k.dtype != q.dtype || v.dtype != q.dtype || out.dtype != q.dtype) {
        const bool k_odd = k.dtype != q.dtype;
        const bool v_odd = !k_odd && v.dtype != q.dtype;
        const fa_tensor_t& odd = k_odd ? k : (v_odd ? v : out);
        invalid(std::string(k_odd ? "k" : (v_odd ? "v" : "out")) + ".dtype is " + dtype_name(odd.dtype) +
                " but q.dtype is " + dtype_name(q.dtype) + "; q, k, v and out must share one dtype");
    }
}

// Paged K/V: block_table [varlen_batch, max_blocks_per_seq], and the longest key sequence within its capacity.
// Fills block_size and max_blocks.
void check_block_table(const AttentionArgs& a, AttentionShape& sh) {
    const fa_tensor_t& t = *a.block_table;
    if (t.shape[0] != sh.b) {
        invalid("block_table.shape is " + shape_string(t) + " but must be [varlen_batch, max_blocks_per_seq] with " +
                "varlen_batch = " + s(sh.b) + ": one row of blocks per sequence");
    }
    sh.block_size = a.k->shape[1];
    sh.max_blocks = t.shape[1];
    // Keys a sequence's row of blocks holds (the product of two extents below 2^31 each, or refused as past int32).
    const int64_t capacity = sh.block_size <= kInt32Max && sh.max_blocks <= kInt32Max ? sh.max_blocks * sh.block_size
                                                                                       : INT64_MAX;
    if (a.max_seqlen_k > capacity) {
        invalid("max_seqlen_k is " + s(a.max_seqlen_k) + " but block_table holds " + s(sh.max_blocks) +
                " blocks of " + s(sh.block_size) + " keys per sequence (block_table.shape[1] x k.shape[1] = " +
                s(capacity) + "); a sequence's keys must fit its blocks");
    }
}

// The tensors against each other: dtypes, one head dim and batch, k like v, out like q, GQA, lse's shape.
// Fills the sizes.
void check_tensors_agree(const AttentionArgs& a, AttentionShape& sh) {
    const fa_tensor_t& q = *a.q;
    const fa_tensor_t& k = *a.k;
    const fa_tensor_t& v = *a.v;
    const fa_tensor_t& out = *a.out;
    check_dtypes_agree(a, sh);
    const int32_t row_dim = sh.row_dim;
    const int32_t head_dim_index = row_dim + 2;
    const int32_t kv_row_dim = sh.kv_row_dim;  // k's and v's (a paged pool has a block dimension before the rows)
    const int32_t kv_head_dim_index = kv_row_dim + 2;
    sh.b = sh.varlen ? a.varlen_batch : q.shape[0];
    sh.rows_q = q.shape[row_dim];
    sh.hq = q.shape[row_dim + 1];
    sh.d = q.shape[head_dim_index];
    sh.rows_k = k.shape[kv_row_dim];
    sh.hkv = k.shape[kv_row_dim + 1];
    // v's head dim may differ from q's (head_dim_v: FlashAttention-3's pairs, check_attention_served says which);
    // out takes v's.
    sh.dv = v.shape[kv_head_dim_index];
    if (k.shape[kv_head_dim_index] != sh.d) {
        invalid("k.shape[" + s(kv_head_dim_index) + "] (head_dim) is " + s(k.shape[kv_head_dim_index]) + " but q.shape[" +
                s(head_dim_index) + "] is " + s(sh.d) + "; q and k must have the same head_dim");
    }
    if (out.shape[head_dim_index] != sh.dv) {
        invalid("out.shape[" + s(head_dim_index) + "] is " + s(out.shape[head_dim_index]) + " but v.shape[" +
                s(kv_head_dim_index) + "] (head_dim_v) is " + s(sh.dv) + "; out takes v's head dim");
    }
    const struct {
        const fa_tensor_t& t;
        const char* name;
    } others[] = {{k, "k"}, {v, "v"}, {out, "out"}};
    for (const auto& other : others) {
        if (!sh.varlen && other.t.shape[0] != sh.b) {
            invalid(std::string(other.name) + ".shape[0] (batch) is " + s(other.t.shape[0]) + " but q.shape[0] is " +
                    s(sh.b) + "; q, k, v and out must have the same batch");
        }
    }
    if (v.shape[kv_row_dim] != sh.rows_k || v.shape[kv_row_dim + 1] != sh.hkv || (sh.paged && v.shape[0] != k.shape[0])) {
        invalid("v.shape is " + shape_string(v) + " but k.shape is " + shape_string(k) +
                "; k and v must have the same shape but for the head dim");
    }
    if (sh.paged) check_block_table(a, sh);
    if (out.shape[row_dim] != sh.rows_q || out.shape[row_dim + 1] != sh.hq) {
        invalid("out.shape is " + shape_string(out) + " but q.shape is " + shape_string(q) +
                "; out must have the shape of q");
    }
    check_gqa(sh.hq, sh.hkv, "k");
    if (!sh.has_lse) {
        return;
    }
    const fa_tensor_t& lse = *a.lse;
    if (sh.varlen && (lse.shape[0] != sh.hq || lse.shape[1] != sh.rows_q)) {
        invalid("lse.shape is " + shape_string(lse) + " but must be [heads_q, total_q] = [" + s(sh.hq) + ", " +
                s(sh.rows_q) + "] for a variable-length batch");
    }
    if (!sh.varlen && (lse.shape[0] != sh.b || lse.shape[1] != sh.hq || lse.shape[2] != sh.rows_q)) {
        invalid("lse.shape is " + shape_string(lse) + " but must be [batch, heads_q, seqlen_q] = [" + s(sh.b) + ", " +
                s(sh.hq) + ", " + s(sh.rows_q) + "]");
    }
}

// The fp8 descale tables (absent: nullptr or data NULL): fp8 calls only; each fp32, [batch, heads_kv] (varlen_batch
// for a variable-length batch), strides >= 0. Fills their extents.
void check_descales(const AttentionArgs& a, AttentionShape& sh) {
    const struct {
        const fa_tensor_t* t;
        const char* name;
    } tables[3] = {{a.q_descale, "q_descale"}, {a.k_descale, "k_descale"}, {a.v_descale, "v_descale"}};
    for (int i = 0; i < 3; ++i) {
        sh.descale[i] = Extent{0, 0};
        if (tables[i].t == nullptr || tables[i].t->data == nullptr) {
            continue;
        }
        const fa_tensor_t& t = *tables[i].t;
        const std::string name = tables[i].name;
        if (!sh.fp8) {
            invalid(name + ".data is set but q.dtype is " + dtype_name(a.q->dtype) + "; " + name +
                    " scales fp8 inputs only: leave its data NULL unless q, k and v are FA_DTYPE_FLOAT8_E4M3");
        }
        const char* batch_name = sh.varlen ? "varlen_batch" : "batch";
        sh.descale[i] = check_tensor({t, tables[i].name, {batch_name, "heads_kv", "", ""}, 2,
                                      "; descales are per (sequence, KV head), even q_descale (as FlashAttention-3)"},
                                     TensorKind::Float32Broadcast);
        if (t.shape[0] != sh.b || t.shape[1] != sh.hkv) {
            invalid(name + ".shape is " + shape_string(t) + " but must be [" + batch_name + ", heads_kv] = [" + s(sh.b) +
                    ", " + s(sh.hkv) + "] (per KV head, even for q, as FlashAttention-3; strides 0 broadcast one factor)");
        }
    }
}

// The learnable sinks (absent: nullptr or data NULL): fp32, rank 1, one per query head, any positive stride,
// 4-byte aligned. Fills their extent.
void check_sinks(const AttentionArgs& a, AttentionShape& sh) {
    sh.sinks = Extent{0, 0};
    sh.has_sinks = a.sinks != nullptr && a.sinks->data != nullptr;
    if (!sh.has_sinks) {
        return;
    }
    const fa_tensor_t& t = *a.sinks;
    sh.sinks = check_tensor({t, "sinks", {"heads_q", "", "", ""}, 1, "; one fp32 sink logit per query head"},
                            TensorKind::Float32);
    if (t.shape[0] != sh.hq) {
        invalid("sinks.shape is " + shape_string(t) + " but must be [heads_q] = [" + s(sh.hq) +
                "]: one sink logit per query head (not per KV head)");
    }
}

// The ALiBi slopes (absent: nullptr or data NULL): [heads_q] or [batch, heads_q] fp32 (validate_common.cpp).
void check_alibi(const AttentionArgs& a, AttentionShape& sh) {
    static const fa_tensor_t kNone{};
    sh.alibi = check_alibi_slopes(a.alibi_slopes != nullptr ? *a.alibi_slopes : kNone, sh.b,
                                  sh.varlen ? "varlen_batch" : "q.shape[0]", sh.hq);
}

// A byte range and its argument's name, for the dropout outputs' overlap checks.
struct DropoutNamed {
    Extent e;
    const char* name;
};

// Dropout (since 0.9): p in [0, 1); with p > 0 the device seed/offset pointers 8-byte aligned, the forward's
// rng_state (16 bytes) and keep mask (uint8 [batch, heads_q, seqlen_q, seqlen_k], last stride 1). A mask or
// rng_state without dropout is refused: there is nothing to write (FlashAttention-2 refuses return_attn_probs
// with p = 0 in C++).
void check_dropout(const AttentionArgs& a, AttentionShape& sh) {
    sh.dropout_mask = Extent{0, 0};
    sh.dropout_rng_state = Extent{0, 0};
    const float p = a.dropout_p;
    if (!(p >= 0.0f && p < 1.0f)) {  // NaN fails both
        invalid("dropout_p is " + float_string(p) +
                "; it must be in [0, 1): the probability of dropping each attention weight (0: no dropout; "
                "1 would drop everything and scale by 1/0)");
    }
    sh.dropout = p > 0.0f;
    const bool has_mask = a.dropout_mask != nullptr && a.dropout_mask->data != nullptr;
    if (!sh.dropout) {
        if (has_mask) {
            invalid("dropout_mask.data is set but dropout_p is 0: the keep mask exists only for a dropout call "
                    "(set dropout_p > 0 or leave dropout_mask.data NULL)");
        }
        if (a.dropout_rng_state != nullptr) {
            invalid("dropout_rng_state is set but dropout_p is 0: there is no seed or offset to record "
                    "(set dropout_p > 0 or leave dropout_rng_state NULL)");
        }
        return;
    }
    const auto aligned8 = [](const void* ptr, const char* name) {
        if (reinterpret_cast<uintptr_t>(ptr) % 8 != 0) {
            invalid(std::string(name) + " (" + hex(ptr) + ") is not 8-byte aligned; it points to a uint64");
        }
    };
    if (a.dropout_seed_device != nullptr) aligned8(a.dropout_seed_device, "dropout_seed_device");
    if (a.dropout_offset_device != nullptr) aligned8(a.dropout_offset_device, "dropout_offset_device");
    if (a.dropout_rng_state != nullptr) {
        aligned8(a.dropout_rng_state, "dropout_rng_state");
        sh.dropout_rng_state = buffer_extent(a.dropout_rng_state, 2 * sizeof(uint64_t), "dropout_rng_state");
    }
    if (!has_mask) {
        return;
    }
    const fa_tensor_t& t = *a.dropout_mask;
    sh.dropout_mask = check_tensor({t, "dropout_mask", {"batch", "heads_q", "seqlen_q", "seqlen_k"}, 4,
                                    "; one uint8 keep flag per (sequence, query head, row, key)"},
                                   TensorKind::UInt8);
    if (t.strides[3] != 1) {
        invalid("dropout_mask.strides[3] is " + s(t.strides[3]) + "; the last dimension (seqlen_k) must be "
                "contiguous (stride 1)");
    }
    const int64_t sq = sh.varlen ? static_cast<int64_t>(a.max_seqlen_q) : sh.rows_q;
    const int64_t sk = sh.varlen ? static_cast<int64_t>(a.max_seqlen_k) : sh.rows_k;
    const int64_t want[4] = {sh.b, sh.hq, sq, sk};
    for (int i = 0; i < 4; ++i) {
        if (t.shape[i] != want[i]) {
            invalid("dropout_mask.shape is " + shape_string(t) + " but must be [" + s(want[0]) + ", " + s(want[1]) +
                    ", " + s(want[2]) + ", " + s(want[3]) + "]: " +
                    (sh.varlen ? "[varlen_batch, heads_q, max_seqlen_q, max_seqlen_k]"
                               : "[batch, heads_q, seqlen_q, seqlen_k]"));
        }
    }
}

void check_options(const AttentionArgs& a) {
    check_softmax_scale(a.softmax_scale);
    check_flag(a.causal, "causal");
    check_causal_alignment(a.causal_alignment);
    check_kernel_path(a.kernel_path, "kernel_path");
    check_window(a.window_left, a.window_right);
    check_softcap(a.softcap);
}

void check_host_copies(const AttentionArgs& a, const AttentionShape& sh) {
    if (sh.varlen && a.cu_seqlens_q_host != nullptr) {
        check_host_cu_seqlens(a.cu_seqlens_q_host, "cu_seqlens_q_host", a.varlen_batch, sh.rows_q,
                              "q (q.shape[0], total_q)", a.max_seqlen_q, "max_seqlen_q");
    }
    if (sh.varlen && a.cu_seqlens_k_host != nullptr) {
        // Paged: the prefix sums index no tensor (each sequence's keys are in its blocks), so only order and lengths.
        check_host_cu_seqlens(a.cu_seqlens_k_host, "cu_seqlens_k_host", a.varlen_batch, sh.paged ? INT64_MAX : sh.rows_k,
                              "k (k.shape[0], total_k)", a.max_seqlen_k, "max_seqlen_k");
    }
}

// out and lse (what the forward writes) against q, k, v and cu_seqlens. The backward reads out and lse,
// but runs the same checks (a forward call that wrote them had to pass them).
void check_outputs_apart(const AttentionArgs& a, const AttentionShape& sh) {
    check_no_overlap(sh.out, "out", sh.q, "q");
    check_no_overlap(sh.out, "out", sh.k, "k");
    check_no_overlap(sh.out, "out", sh.v, "v");
    if (sh.has_lse) {
        check_no_overlap(sh.out, "out", sh.lse, "lse");
        check_no_overlap(sh.lse, "lse", sh.q, "q");
        check_no_overlap(sh.lse, "lse", sh.k, "k");
        check_no_overlap(sh.lse, "lse", sh.v, "v");
    }
    static const char* const descale_names[3] = {"q_descale", "k_descale", "v_descale"};
    for (int i = 0; i < 3; ++i) {
        if (sh.descale[i].end == sh.descale[i].begin) continue;  // absent
        check_no_overlap(sh.out, "out", sh.descale[i], descale_names[i]);
        if (sh.has_lse) check_no_overlap(sh.lse, "lse", sh.descale[i], descale_names[i]);
    }
    if (sh.has_sinks) {
        check_no_overlap(sh.out, "out", sh.sinks, "sinks");
        if (sh.has_lse) check_no_overlap(sh.lse, "lse", sh.sinks, "sinks");
    }
    if (sh.alibi.on) {
        check_no_overlap(sh.out, "out", sh.alibi.extent, "alibi_slopes");
        if (sh.has_lse) check_no_overlap(sh.lse, "lse", sh.alibi.extent, "alibi_slopes");
    }
    // The dropout outputs (forward only) against everything else of the call.
    const DropoutNamed dropout_out[2] = {{sh.dropout_mask, "dropout_mask"}, {sh.dropout_rng_state, "dropout_rng_state"}};
    for (const DropoutNamed& w : dropout_out) {
        if (w.e.begin == w.e.end) continue;  // absent
        const DropoutNamed others[] = {{sh.q, "q"},          {sh.k, "k"},
                                {sh.v, "v"},          {sh.out, "out"},
                                {sh.lse, "lse"},      {sh.sinks, "sinks"},
                                {sh.alibi.extent, "alibi_slopes"},
                                {buffer_extent(a.dropout_seed_device, a.dropout_seed_device ? 8 : 0, "dropout_seed_device"),
                                 "dropout_seed_device"},
                                {buffer_extent(a.dropout_offset_device, a.dropout_offset_device ? 8 : 0,
                                               "dropout_offset_device"),
                                 "dropout_offset_device"}};
        for (const DropoutNamed& o : others) {
            if (o.e.begin != o.e.end) check_no_overlap(w.e, w.name, o.e, o.name);
        }
    }
    if (sh.dropout_mask.begin != sh.dropout_mask.end && sh.dropout_rng_state.begin != sh.dropout_rng_state.end) {
        check_no_overlap(sh.dropout_mask, "dropout_mask", sh.dropout_rng_state, "dropout_rng_state");
    }
    if (sh.varlen) {
        const Extent cq = cu_extent(a.cu_seqlens_q, a.varlen_batch, "cu_seqlens_q");
        const Extent ck = cu_extent(a.cu_seqlens_k, a.varlen_batch, "cu_seqlens_k");
        for (const DropoutNamed& w : dropout_out) {
            if (w.e.begin == w.e.end) continue;
            check_no_overlap(w.e, w.name, cq, "cu_seqlens_q");
            check_no_overlap(w.e, w.name, ck, "cu_seqlens_k");
        }
        check_no_overlap(sh.out, "out", cq, "cu_seqlens_q");
        check_no_overlap(sh.out, "out", ck, "cu_seqlens_k");
        if (sh.has_lse) {
            check_no_overlap(sh.lse, "lse", cq, "cu_seqlens_q");
            check_no_overlap(sh.lse, "lse", ck, "cu_seqlens_k");
        }
        if (sh.paged) {
            for (const DropoutNamed& w : dropout_out) {
                if (w.e.begin != w.e.end) check_no_overlap(w.e, w.name, sh.block_table, "block_table");
            }
            check_no_overlap(sh.out, "out", sh.block_table, "block_table");
            if (sh.has_lse) check_no_overlap(sh.lse, "lse", sh.block_table, "block_table");
        }
    }
}

}  // namespace

AttentionShape check_attention(const AttentionArgs& a) {
    AttentionShape sh{};
    sh.varlen = a.cu_seqlens_q != nullptr || a.cu_seqlens_k != nullptr;
    sh.has_lse = a.lse->data != nullptr;
    sh.row_dim = sh.varlen ? 0 : 1;
    check_batch_fields(a, sh.varlen);
    sh.paged = sh.varlen && a.block_table != nullptr && a.block_table->data != nullptr;
    sh.kv_row_dim = sh.paged ? 1 : sh.row_dim;
    check_each_tensor(a, sh);
    check_tensors_agree(a, sh);
    check_descales(a, sh);
    check_sinks(a, sh);
    check_alibi(a, sh);
    check_dropout(a, sh);
    check_options(a);
    check_host_copies(a, sh);
    check_outputs_apart(a, sh);
    return sh;
}

void check_attention_served(const AttentionArgs& a, const AttentionShape& sh, int32_t compute_capability) {
    const bool varlen = sh.varlen;
    check_head_dim_served(sh.d, sh.row_dim + 2);
    if (sh.fp8 && sh.d % kFp8HeadDimMultiple != 0) {
        unsupported("q.shape[" + s(sh.row_dim + 2) + "] (head_dim) is " + s(sh.d) +
                    "; fp8 (e4m3) head dims must be multiples of " + s(kFp8HeadDimMultiple) +
                    " (as in FlashAttention-3): pad q, k and v with zeros to the next multiple of " +
                    s(kFp8HeadDimMultiple) + " and slice the output");
    }
    if (sh.paged) {
        if (sh.fp8) {
            unsupported("block_table is set with fp8 (e4m3) q, k and v; paged K/V is served for fp16 and bf16 (the "
                        "sm90 fp8 forward reads contiguous K and V)");
        }
        if (sh.dropout) {
            unsupported("block_table is set with dropout_p " + float_string(a.dropout_p) + "; paged K/V is served without "
                        "dropout (it is for attention over a KV cache, at inference; gather the keys and values into "
                        "packed tensors to train with dropout)");
        }
        if (sh.block_size % kPagedKvBlockMultiple != 0) {
            unsupported("k.shape[1] (block_size) is " + s(sh.block_size) + "; the forward serves paged K/V with block "
                        "sizes that are multiples of " + s(kPagedKvBlockMultiple) + " (a key tile lies in one block; "
                        "FlashAttention-2 asks for multiples of 256), fa_decode powers of two from 16");
        }
        check_int32_sizes({{a.k->shape[0], "k.shape[0] (num_blocks)"},
                           {sh.max_blocks, "block_table.shape[1] (max_blocks_per_seq)"}});
    }
    check_int32_sizes({{sh.b, varlen ? "varlen_batch" : "q.shape[0] (batch)"},
                       {sh.rows_q, varlen ? "q.shape[0] (total_q)" : "q.shape[1] (seqlen_q)"},
                       {sh.rows_k, sh.paged   ? "k.shape[1] (block_size)"
                                   : varlen ? "k.shape[0] (total_k)"
                                            : "k.shape[1] (seqlen_k)"},
                       {sh.hq, varlen ? "q.shape[1] (heads_q)" : "q.shape[2] (heads_q)"},
                       {sh.hkv, sh.kv_row_dim == 0 ? "k.shape[1] (heads_kv)" : "k.shape[2] (heads_kv)"}});
    // The kernels walk a 1-D grid of one block per (sequence, head, 64-row block or more): its size
    // and the block index must stay within int32.
    const int64_t sq = varlen ? static_cast<int64_t>(a.max_seqlen_q) : sh.rows_q;
    const int64_t row_blocks = (sq + 63) / 64;
    if (sh.b * sh.hq > kInt32Max || sh.b * sh.hq * row_blocks > kInt32Max) {
        unsupported(std::string(varlen ? "varlen_batch" : "q.shape[0] (batch)") + " " + s(sh.b) + " x heads_q " +
                    s(sh.hq) + " x " + s(row_blocks) + " row blocks of seqlen_q " + s(sq) +
                    " needs more than 2^31 - 1 blocks; split the call");
    }
    check_compute_capability_served(compute_capability, "compute_capability");
}

void add_attention_memory(const AttentionArgs& a, const AttentionShape& sh, MemoryArgs& memory) {
    memory.add("q.data", "q's shape and strides", sh.q);
    memory.add("k.data", "k's shape and strides", sh.k);
    memory.add("v.data", "v's shape and strides", sh.v);
    memory.add("out.data", "out's shape and strides", sh.out);
    if (sh.has_lse) {
        memory.add("lse.data", "lse's shape and strides", sh.lse);
    }
    if (sh.varlen) {
        memory.add("cu_seqlens_q", "its varlen_batch + 1 int32 values",
                   cu_extent(a.cu_seqlens_q, a.varlen_batch, "cu_seqlens_q"));
        memory.add("cu_seqlens_k", "its varlen_batch + 1 int32 values",
                   cu_extent(a.cu_seqlens_k, a.varlen_batch, "cu_seqlens_k"));
    }
    memory.add("block_table.data", "block_table's shape and strides", sh.block_table);  // absent: empty, skipped
    memory.add("q_descale.data", "q_descale's shape and strides", sh.descale[0]);  // absent: empty, skipped
    memory.add("k_descale.data", "k_descale's shape and strides", sh.descale[1]);
    memory.add("v_descale.data", "v_descale's shape and strides", sh.descale[2]);
    memory.add("sinks.data", "sinks' shape and strides", sh.sinks);  // absent: empty, skipped
    memory.add("alibi_slopes.data", "alibi_slopes' shape and strides", sh.alibi.extent);  // likewise
}

FwdParams attention_params(const AttentionArgs& a, const AttentionShape& sh) {
    const fa_tensor_t& q = *a.q;
    const fa_tensor_t& k = *a.k;
    const fa_tensor_t& v = *a.v;
    const fa_tensor_t& out = *a.out;
    const bool varlen = sh.varlen;
    const int32_t row_dim = sh.row_dim;
    FwdParams p{};
    p.q = q.data;
    p.k = k.data;
    p.v = v.data;
    p.o = out.data;
    p.lse = sh.has_lse ? static_cast<float*>(a.lse->data) : nullptr;
    // q, k, v and out are [batch, rows, heads, head_dim], or [total, heads, head_dim] for a variable-length
    // batch, which has no batch stride (the kernels ignore it with cu_seqlens set); row_dim says which.
    const int32_t kv_row_dim = sh.kv_row_dim;  // paged: k and v are [num_blocks, block_size, heads, head_dim]
    p.q_row_stride = q.strides[row_dim];
    p.q_head_stride = q.strides[row_dim + 1];
    p.k_row_stride = k.strides[kv_row_dim];
    p.k_head_stride = k.strides[kv_row_dim + 1];
    p.v_row_stride = v.strides[kv_row_dim];
    p.v_head_stride = v.strides[kv_row_dim + 1];
    p.o_row_stride = out.strides[row_dim];
    p.o_head_stride = out.strides[row_dim + 1];
    if (!varlen) {
        p.q_batch_stride = q.strides[0];
        p.k_batch_stride = k.strides[0];
        p.v_batch_stride = v.strides[0];
        p.o_batch_stride = out.strides[0];
    }
    // The LSE is [batch, heads, rows], or [heads, total] for a variable-length batch.
    if (sh.has_lse) {
        const int32_t lse_head_dim = varlen ? 0 : 1;
        if (!varlen) {
            p.lse_batch_stride = a.lse->strides[0];
        }
        p.lse_head_stride = a.lse->strides[lse_head_dim];
        p.lse_row_stride = a.lse->strides[lse_head_dim + 1];
    }
    if (varlen) {
        p.cu_seqlens_q = a.cu_seqlens_q;
        p.cu_seqlens_k = a.cu_seqlens_k;
        p.total_q = static_cast<int32_t>(sh.rows_q);
        p.total_k = static_cast<int32_t>(sh.rows_k);
        if (sh.paged) {
            // The pool (FwdParams::block_table): the batch strides step between blocks; cu_seqlens_k gives lengths only.
            p.block_table = static_cast<const int32_t*>(a.block_table->data);
            p.table_batch_stride = a.block_table->strides[0];
            p.table_page_stride = a.block_table->strides[1];
            p.block_size = static_cast<int32_t>(sh.block_size);
            p.num_blocks = static_cast<int32_t>(k.shape[0]);
            p.k_batch_stride = k.strides[0];
            p.v_batch_stride = v.strides[0];
            p.total_k = INT32_MAX;
        }
        p.sq = a.max_seqlen_q;
        p.sk = a.max_seqlen_k;
    } else {
        p.sq = static_cast<int32_t>(sh.rows_q);
        p.sk = static_cast<int32_t>(sh.rows_k);
    }
    p.b = static_cast<int32_t>(sh.b);
    p.hq = static_cast<int32_t>(sh.hq);
    p.hkv = static_cast<int32_t>(sh.hkv);
    p.d = static_cast<int32_t>(sh.d);
    p.dv = static_cast<int32_t>(sh.dv);
    p.hq_per_hkv = static_cast<int32_t>(sh.hq / sh.hkv);
    const double scale = a.softmax_scale > 0.0f ? static_cast<double>(a.softmax_scale)
                                                : 1.0 / std::sqrt(static_cast<double>(sh.d));
    p.scale = static_cast<float>(scale);
    // With softcap the kernels compute tanh(s * scale / softcap) and run the softmax on softcap times
    // that, so the exp2 multiplier is softcap * log2(e) instead of scale * log2(e).
    p.softcap = a.softcap;
    p.scale_log2 = static_cast<float>((a.softcap > 0.0f ? static_cast<double>(a.softcap) : scale) * kLog2e);
    p.causal = a.causal;
    // The kernels read bottom_right (per sequence); causal_offset is kept for logs (fixed-length only).
    const bool bottom_right = a.causal_alignment == FA_CAUSAL_BOTTOM_RIGHT;
    p.bottom_right = bottom_right ? 1 : 0;
    p.causal_offset = !varlen && a.causal == 1 && bottom_right ? p.sk - p.sq : 0;
    // A window side at least max(seqlen_q, seqlen_k) hides no key of any sequence (every
    // |key - query - offset| is below it), so it is the same as unbounded; passing -1 keeps the kernels'
    // 32-bit bound arithmetic far from overflow (INT32_MAX is a common "no window" value) and lets a
    // non-causal call run the kernel without the local masks.
    const int32_t no_op_window = p.sq > p.sk ? p.sq : p.sk;
    p.window_left = a.window_left >= no_op_window ? -1 : a.window_left;
    // A causal call sees no key right of the diagonal: causal is folded into window_right here, once, so
    // that every kernel reads one right bound (native/kernels/common/mask.cuh).
    p.window_right = a.causal == 1 ? 0 : a.window_right >= no_op_window ? -1 : a.window_right;
    p.dtype = kernel_dtype(q.dtype);
    // fp8: the descale tables as given ([batch, heads_kv], strides in elements, 0 broadcasting); absent ones keep
    // data nullptr (factor 1). check_descales has made sure they are absent for the 16-bit types.
    const fa_tensor_t* const tables[3] = {a.q_descale, a.k_descale, a.v_descale};
    FwdDescale* const fields[3] = {&p.q_descale, &p.k_descale, &p.v_descale};
    for (int i = 0; i < 3; ++i) {
        if (sh.fp8 && tables[i] != nullptr && tables[i]->data != nullptr) {
            fields[i]->data = static_cast<const float*>(tables[i]->data);
            fields[i]->batch_stride = tables[i]->strides[0];
            fields[i]->head_stride = tables[i]->strides[1];
        }
    }
    if (sh.has_sinks) {
        p.sinks = static_cast<const float*>(a.sinks->data);
        p.sinks_stride = a.sinks->strides[0];
    }
    if (sh.alibi.on) {
        p.alibi_slopes = static_cast<const float*>(a.alibi_slopes->data);
        p.alibi_batch_stride = sh.alibi.batch_stride;
        p.alibi_head_stride = sh.alibi.head_stride;
        // FlashAttention-2's causal form (+slope * j) is for its "causal" calls: window (-1, 0) once a left side of
        // at least seqlen_k (the longest, for a variable-length batch) has become -1; a causal call with a left
        // window, or any other window, takes -slope * |i + off - j|.
        p.alibi_causal = p.window_right == 0 && (a.window_left < 0 || a.window_left >= p.sk) ? 1 : 0;
    }
    if (sh.dropout) {
        p.dropout = 1;
        p.dropout_threshold = dropout_threshold(a.dropout_p);
        p.dropout_rp = 1.0f / (1.0f - a.dropout_p);  // FlashAttention-2's rp_dropout, in float
        p.dropout_seed = a.dropout_seed;
        p.dropout_offset = a.dropout_offset;
        p.dropout_seed_ptr = a.dropout_seed_device;
        p.dropout_offset_ptr = a.dropout_offset_device;
        p.dropout_rng_state = a.dropout_rng_state;
        if (a.dropout_mask != nullptr && a.dropout_mask->data != nullptr) {
            p.dropout_mask = static_cast<uint8_t*>(a.dropout_mask->data);
            p.dropout_mask_batch_stride = a.dropout_mask->strides[0];
            p.dropout_mask_head_stride = a.dropout_mask->strides[1];
            p.dropout_mask_row_stride = a.dropout_mask->strides[2];
        }
    }
    return p;
}

}  // namespace validation
}  // namespace fa
