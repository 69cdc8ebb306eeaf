// fa_query_support: whether this build serves a kind of call, without tensors. The path choice is
// dispatch.cpp's (choose_path); the shared-memory table here is the one the backward's validation checks
// its kernel against too (check_block_smem).
#include <cstddef>
#include <string>

#include "dispatch.h"
#include "validate.h"
#include "validate_common.h"

namespace fa {

using namespace validation;

namespace {

// Largest dynamic shared memory a block may opt in to, per compute capability (CUDA programming guide,
// "Features and Technical Specifications"); 0 where this table does not know the GPU.
int32_t smem_optin_for(int32_t cc) {
    switch (cc) {
        case 80: case 87: return 163 * 1024;
        case 86: case 89: return 99 * 1024;
        case 90: return 227 * 1024;
        default: return 0;
    }
}

// The sinks flag of a query (0.7), 0 for an older caller's 0.6-sized one.
int32_t query_sinks(const fa_support_query_t& query) {
    return query.struct_size >= offsetof(fa_support_query_t, sinks) + sizeof(query.sinks) ? query.sinks : 0;
}

// The dropout flag of a query (0.9), 0 for an older caller's smaller one.
int32_t query_dropout(const fa_support_query_t& query) {
    return query.struct_size >= offsetof(fa_support_query_t, dropout) + sizeof(query.dropout) ? query.dropout : 0;
}

// The V head dim of a query (0.10), 0 (the same as head_dim) for an older caller's smaller one.
int32_t query_head_dim_v(const fa_support_query_t& query) {
    return query.struct_size >= offsetof(fa_support_query_t, head_dim_v) + sizeof(query.head_dim_v) ? query.head_dim_v
                                                                                                   : 0;
}

// The paged_kv flag of a query (0.11), 0 for an older caller's smaller one.
int32_t query_paged_kv(const fa_support_query_t& query) {
    return query.struct_size >= offsetof(fa_support_query_t, paged_kv) + sizeof(query.paged_kv) ? query.paged_kv : 0;
}

// The kv_cache_dtype of a query (0.13), 0 (the same as dtype) for an older caller's smaller one.
int32_t query_kv_cache_dtype(const fa_support_query_t& query) {
    return query.struct_size >= offsetof(fa_support_query_t, kv_cache_dtype) + sizeof(query.kv_cache_dtype)
               ? query.kv_cache_dtype
               : 0;
}

// The alibi flag of a query (0.8), 0 for an older caller's smaller one.
int32_t query_alibi(const fa_support_query_t& query) {
    return query.struct_size >= offsetof(fa_support_query_t, alibi) + sizeof(query.alibi) ? query.alibi : 0;
}

// Is the query well formed? (INVALID_ARGUMENT)
void check_query_fields(const fa_support_query_t& query) {
    // A 0.6-sized query (no sinks field) is accepted and asks about a call without sinks.
    if (query.struct_size < kSupportQueryMinSize) {
        invalid("query->struct_size is " + s(query.struct_size) + " but fa_support_query_t has " +
                s(static_cast<int64_t>(sizeof(fa_support_query_t))) + " bytes in this library (at least " +
                s(static_cast<int64_t>(kSupportQueryMinSize)) +
                " for version 0.6): set it to sizeof(fa_support_query_t)");
    }
    if (query.pass != FA_PASS_FORWARD && query.pass != FA_PASS_BACKWARD && query.pass != FA_PASS_DECODE) {
        invalid("query->pass is " + s(query.pass) +
                "; it must be FA_PASS_FORWARD (0), FA_PASS_BACKWARD (1) or FA_PASS_DECODE (2)");
    }
    check_compute_capability_arg(query.compute_capability, "query->compute_capability");
    if (dtype_size(query.dtype) == 0) {
        invalid("query->dtype is " + s(query.dtype) + "; it must be an fa_dtype_t value");
    }
    if (query.head_dim < 1) {
        invalid("query->head_dim is " + s(query.head_dim) + "; it must be at least 1");
    }
    check_flag(query.causal, "query->causal");
    check_flag(query.window, "query->window");
    check_flag(query.softcap, "query->softcap");
    check_flag(query.varlen, "query->varlen");
    check_kernel_path(query.kernel_path, "query->kernel_path");
    check_flag(query_sinks(query), "query->sinks");
    check_flag(query_alibi(query), "query->alibi");
    check_flag(query_dropout(query), "query->dropout");
    check_flag(query_paged_kv(query), "query->paged_kv");
    if (query.pass == FA_PASS_FORWARD && query_paged_kv(query) == 1 && query.varlen != 1) {
        invalid("query->paged_kv is 1 with query->varlen 0 for FA_PASS_FORWARD; the forward's block_table goes with a "
                "variable-length batch (set query->varlen to 1)");
    }
    const int32_t kv = query_kv_cache_dtype(query);
    if (kv != 0 && dtype_size(kv) == 0) {
        invalid("query->kv_cache_dtype is " + s(kv) + "; it must be 0 (the same as dtype) or an fa_dtype_t value");
    }
    if (query_head_dim_v(query) < 0) {
        invalid("query->head_dim_v is " + s(query_head_dim_v(query)) + "; it must be 0 (the same as head_dim) or a head dim");
    }
}

}  // namespace

void check_block_smem(Pass pass, int32_t kernel_path, int32_t head_dim, int32_t cc, DType cache_dtype) {
    const int32_t need = smem_need(pass, kernel_path, kernel_head_dim(head_dim), cc, cache_dtype);
    const int32_t allow = smem_optin_for(cc);
    if (allow > 0 && need > allow) {
        unsupported(std::string("the ") +
                    (pass == Pass::Backward ? "backward"
                     : cache_dtype == DType::Float8E4M3 ? "decode (fp8 cache)"
                                                        : "decode") +
                    " kernel for head dim " +
                    s(head_dim) + " needs " + s(need) + " bytes of shared memory per block, but compute capability " +
                    s(cc / 10) + "." + s(cc % 10) + " allows " + s(allow));
    }
}

void check_support_query(const fa_support_query_t& query) {
    check_query_fields(query);

    // ---- is it served? ------------------------------------------------------------------------
    if (query.pass == FA_PASS_DECODE && query.varlen == 1) {
        unsupported("decode has no variable-length batch; cache_seqlens gives every sequence its own length");
    }
    if (query.pass == FA_PASS_DECODE && query_sinks(query) == 1) {
        unsupported("fa_decode has no learnable sinks (fa_decode_params_t has no sinks field); fa_forward and "
                    "fa_backward take them");
    }
    const Pass pass = query.pass == FA_PASS_FORWARD ? Pass::Forward
                      : query.pass == FA_PASS_BACKWARD ? Pass::Backward
                                                       : Pass::Decode;
    const bool fp8 = query.dtype == FA_DTYPE_FLOAT8_E4M3;
    // kv_cache_dtype (0.13): decode's cache dtype when it differs from q's. 0 or dtype: a 16-bit cache, as before;
    // FA_DTYPE_FLOAT8_E4M3 with fp16/bf16 queries: an fp8 cache, served by every decode kernel (head dims multiples of
    // 16); anything else, and any value for the other passes, is not served.
    const int32_t kv = query_kv_cache_dtype(query);
    const bool kv_other = kv != 0 && kv != query.dtype;
    if (kv != 0 && pass != Pass::Decode) {
        unsupported(std::string("query->kv_cache_dtype is ") + dtype_name(kv) + " with " +
                    (pass == Pass::Forward ? "FA_PASS_FORWARD" : "FA_PASS_BACKWARD") +
                    "; only FA_PASS_DECODE has a KV cache dtype of its own (0 for the other passes)");
    }
    const bool fp8_cache = pass == Pass::Decode && kv_other && kv == FA_DTYPE_FLOAT8_E4M3 &&
                           (query.dtype == FA_DTYPE_FLOAT16 || query.dtype == FA_DTYPE_BFLOAT16);
    if (pass == Pass::Decode && kv_other && !fp8_cache) {
        unsupported(std::string("query->kv_cache_dtype is ") + dtype_name(kv) + " with query->dtype " +
                    dtype_name(query.dtype) + "; fa_decode's cache is q's dtype, or FA_DTYPE_FLOAT8_E4M3 (an fp8 cache) "
                    "with FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16 queries");
    }
    if (query_paged_kv(query) == 1 && pass == Pass::Backward) {
        unsupported("query->paged_kv is 1 with FA_PASS_BACKWARD; the backward has no paged K/V (fa_backward_params_t "
                    "has no block_table, as FlashAttention-2's varlen backward): gather the keys and values first");
    }
    if (query_paged_kv(query) == 1 && pass == Pass::Forward && query_dropout(query) == 1) {
        unsupported("query->paged_kv is 1 with query->dropout 1; paged K/V is served without dropout");
    }
    if (query_paged_kv(query) == 1 && fp8) {
        unsupported("query->paged_kv is 1 with FA_DTYPE_FLOAT8_E4M3; paged K/V is served for fp16 and bf16");
    }
    if (query.dtype != FA_DTYPE_FLOAT16 && query.dtype != FA_DTYPE_BFLOAT16 && !fp8) {
        unsupported(std::string("query->dtype is ") + dtype_name(query.dtype) +
                    "; the forward serves FA_DTYPE_FLOAT16 and FA_DTYPE_BFLOAT16 for q, k and v (and "
                    "FA_DTYPE_FLOAT8_E4M3 on the sm90 path)");
    }
    if (fp8 && pass != Pass::Forward) {
        unsupported(std::string("query->dtype is FA_DTYPE_FLOAT8_E4M3 with query->pass ") +
                    (pass == Pass::Backward ? "FA_PASS_BACKWARD: " : "FA_PASS_DECODE: ") + dtype_refusal(pass, DType::Float8E4M3));
    }
    if (query.head_dim > 0 && query.head_dim % kHeadDimMultiple != 0) {
        unsupported("query->head_dim is " + s(query.head_dim) + "; head dims must be multiples of " +
                    s(kHeadDimMultiple) + " (this build serves head dims " + served_head_dims() + ")");
    }
    if (!head_dim_served(query.head_dim)) {
        unsupported("query->head_dim is " + s(query.head_dim) + "; this build serves head dims " + served_head_dims());
    }
    if (fp8 && query.head_dim % kFp8HeadDimMultiple != 0) {
        unsupported("query->head_dim is " + s(query.head_dim) + "; fp8 (e4m3) head dims must be multiples of " +
                    s(kFp8HeadDimMultiple) + " (as in FlashAttention-3)");
    }
    if (fp8_cache && query.head_dim % kFp8HeadDimMultiple != 0) {
        unsupported("query->head_dim is " + s(query.head_dim) + "; the head dims of an fp8 (e4m3) KV cache must be "
                    "multiples of " + s(kFp8HeadDimMultiple) + " (whole 16-byte rows of its elements, as FlashAttention-3)");
    }
    check_compute_capability_served(query.compute_capability, "query->compute_capability");
    // FA_PATH_SM90 where it does not serve, fp8 anywhere but on the sm90 forward: UNSUPPORTED, saying why
    // (dispatch.cpp chooses the path).
    // Dropout: the sm80 forward and backward, and a pass of the sm90 path in a build with its dropout kernels
    // (FA_SM90_FWD_DROPOUT, FA_SM90_BWD_DROPOUT; not the V head dim pairs); FA_PATH_AUTO takes sm80 for it elsewhere;
    // FA_PATH_SM90 there, fp8 and decode are UNSUPPORTED, saying why.
    (void)choose_path(pass, query.kernel_path, query.head_dim, kernel_dtype(query.dtype), query.compute_capability, -1,
                      "query->kernel_path", -1, query_dropout(query) == 1, query_head_dim_v(query));
    if (query.pass != FA_PASS_FORWARD && query.compute_capability != 0) {
        // The backward and decode kernels take more shared memory than some GPUs allow a block (fa_backward
        // and fa_decode report the same from the device's own limit). AUTO runs the sm90 backward where it serves.
        check_block_smem(pass, query.kernel_path, query.head_dim, query.compute_capability,
                         fp8_cache ? DType::Float8E4M3 : DType::Float16);
    }
    // Causal masks, sliding windows, softcap, variable-length batches and learnable sinks (forward, fp8 included,
    // and backward) are served by every kernel of this build (sm80 path, any compute capability >= 8.0; sm90 where
    // it serves the pass): the sinks change only the forward's epilogue and the backward's preprocess, which every
    // kernel family shares. ALiBi slopes are served by every pass, path and dtype too: the masked ("local") variant
    // of every forward and backward kernel adds the bias (common/alibi.cuh), and the decode kernel a runtime branch.
    // Paged K/V (fp16, bf16; checked above) is served by every forward kernel (common/paged_kv.cuh) and by decode.
    // An fp8 KV cache (decode, fp16/bf16 queries) is served with every decode option: its kernels are the 16-bit
    // ones' fp8 variant (sm80/decode_kernel.cuh).
}

}  // namespace fa
