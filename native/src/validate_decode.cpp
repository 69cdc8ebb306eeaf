// Validation of fa_decode_params_t and translation into fa::DecodeParams.
//
// Order, as for the forward: every INVALID_ARGUMENT check first (the struct, each tensor on its own, tensors
// against each other, scalars, the host copy of cache_seqlens, memory overlap), then the UNSUPPORTED checks
// (head dim, paged block size, sizes the kernels index with 32 bits, compute capability), so a call that is
// wrong in several ways reports a wrong argument before something this build does not serve.
// The tensor checks and the option checks are validate_common.h's, shared with the forward and backward; each
// step is a function (check_decode_struct, then DecodeCheck's steps in order). fp8 (e4m3) queries, new keys or new
// values are UNSUPPORTED right after the struct (refuse_fp8). An fp8 KV cache (C ABI 0.13: k_cache and v_cache
// FA_DTYPE_FLOAT8_E4M3 with fp16/bf16 q) is checked with the other tensors: both caches or neither, k_descale and
// v_descale with it and only with it (fp32 [heads_kv] or [1]), head dims multiples of 16.
#include <cmath>
#include <limits>
#include <string>

#include "device_memory.h"
#include "dispatch.h"
#include "error.h"
#include "params_defaults.h"
#include "validate.h"
#include "validate_attention.h"  // FA_FIELD_OR_DEFAULT
#include "validate_common.h"

namespace fa {

using namespace validation;

namespace {

// Most positions one sequence's cache may hold: keeps positions and key-tile bounds inside int32.
constexpr int64_t kMaxCapacity = kInt32Max - 4096;
// Smallest page the paged kernels serve: a 16-row group of a key tile always lies in one page.
constexpr int64_t kMinBlockSize = 16;

// Dimension `dim` of `t` must equal `want` (named `want_what` in the message).
void check_dim(const fa_tensor_t& t, const char* name, int32_t dim, const char* dim_name, int64_t want,
               const std::string& want_what) {
    if (t.shape[dim] != want) {
        invalid(std::string(name) + ".shape[" + s(dim) + "] (" + dim_name + ") is " + s(t.shape[dim]) + " but " +
                want_what + " is " + s(want));
    }
}

bool is_power_of_two(int64_t x) {
    return x > 0 && (x & (x - 1)) == 0;
}

}  // namespace

std::string describe(const DecodeParams& p) {
    std::string out = "decode b=" + s(p.b) + " sq=" + s(p.sq) + " hq=" + s(p.hq) + " hkv=" + s(p.hkv) + " d=" + s(p.d) +
                      " " + dtype_tag(p.dtype) + (p.cache_dtype != p.dtype ? " e4m3-cache" : "") +
                      " capacity=" + s(p.capacity);
    out += p.block_table != nullptr ? " paged(block " + s(p.block_size) + ")" : " contiguous";
    if (p.cu_seqlens_q != nullptr) out += " cu_seqlens_q(total " + s(p.total_q) + ")";
    if (p.cu_seqlens_knew != nullptr) {
        out += " append cu_seqlens_k_new(total " + s(p.total_knew) + ")";
    } else if (p.added > 0) {
        out += p.added == p.sq ? " append" : " append=" + s(p.added);
    }
    if (p.cache_batch_idx != nullptr) out += " batch_idx(pool " + s(p.cache_rows) + ")";
    if (p.cache_leftpad != nullptr) out += " leftpad";
    if (p.alibi_slopes != nullptr) out += p.alibi_causal ? " alibi(causal form)" : " alibi";
    if (p.rotary_cos != nullptr) {
        out += " rotary(" + s(p.rotary_dim) + (p.rotary_interleaved != 0 ? ", interleaved" : ", half-split") +
               (p.rotary_per_row != 0 ? ", per row)" : ")");
    }
    if (p.causal != 0) out += " causal";
    if (p.window_left >= 0 || (p.window_right >= 0 && p.causal == 0)) {
        out += " window(" + s(p.window_left) + ", " + s(p.window_right) + ")";
    }
    if (p.softcap > 0.0f) out += " softcap=" + float_string(p.softcap);
    out += " splits=" + s(p.num_splits);
    return out + (p.lse != nullptr ? " +lse" : "");
}

namespace {

const fa_decode_params_t& decode_defaults() {
    static const fa_decode_params_t defaults = default_params<fa_decode_params_t>(sizeof(fa_decode_params_t));
    return defaults;
}

// The struct itself (INVALID_ARGUMENT): present, large enough, reserved field zero, flags, the compute
// capability argument, new keys and values given together.
void check_decode_struct(const fa_decode_params_t* params, int32_t compute_capability) {
    if (params == nullptr) {
        invalid("params is NULL");
    }
    if (params->struct_size < kDecodeParamsMinSize) {
        invalid("params->struct_size is " + s(params->struct_size) + " but fa_decode_params_t has " +
                s(static_cast<int64_t>(sizeof(fa_decode_params_t))) + " bytes in this library (at least " +
                s(static_cast<int64_t>(kDecodeParamsMinSize)) +
                " for version 0.6): fill params with fa_decode_params_init");
    }
    check_reserved(params->reserved0, "params->reserved0");
    check_flag(params->advance_cache_seqlens, "advance_cache_seqlens");
    if (params->advance_cache_seqlens == 1 && params->k_new.data == nullptr) {
        invalid("advance_cache_seqlens is 1 but k_new/v_new are not given; only an append advances the lengths");
    }
    check_compute_capability_arg(compute_capability, "compute_capability");
    const bool append = params->k_new.data != nullptr || params->v_new.data != nullptr;
    if (append && (params->k_new.data == nullptr || params->v_new.data == nullptr)) {
        invalid(std::string(params->k_new.data != nullptr ? "k_new.data is set but v_new.data is NULL"
                                                          : "v_new.data is set but k_new.data is NULL") +
                "; give both new keys and new values (to append them) or neither");
    }
}

// fp8 (e4m3) q or new keys/values: UNSUPPORTED naming the first such tensor (an fp8 out is INVALID_ARGUMENT in its
// own check: no pass writes fp8). The caches may be fp8 (DecodeCheck::cache_dtypes).
void refuse_fp8(const fa_decode_params_t& P) {
    if (P.q.dtype == FA_DTYPE_FLOAT8_E4M3) {
        unsupported(std::string("q.dtype is FA_DTYPE_FLOAT8_E4M3: ") + dtype_refusal(Pass::Decode, DType::Float8E4M3));
    }
    const bool append = P.k_new.data != nullptr;
    const struct {
        const fa_tensor_t& t;
        const char* name;
    } news[] = {{P.k_new, "k_new"}, {P.v_new, "v_new"}};
    for (const auto& in : news) {
        if (append && in.t.dtype == FA_DTYPE_FLOAT8_E4M3) {
            unsupported(std::string(in.name) + ".dtype is FA_DTYPE_FLOAT8_E4M3: new keys and values are fp16 or bf16 "
                        "(q's dtype); an fp8 (e4m3) cache quantizes them as they are appended (k_descale, v_descale)");
        }
    }
}

// One call's checks, step by step in the order validate_decode runs them; each step reads what the earlier
// ones found.
struct DecodeCheck {
    const fa_decode_params_t& P;
    // The 0.7 fields, or their defaults for an older caller's smaller struct (never read past struct_size).
    fa_tensor_t batch_idx, leftpad;
    const int32_t* batch_idx_host;
    const int32_t* leftpad_host;
    fa_tensor_t alibi_t;  // the 0.8 field, or its default (data NULL)
    AlibiSlopes alibi{false, Extent{0, 0}, 0, 0};
    // The 0.8 rotary block, or its defaults (no tables) for an older caller's smaller struct.
    const void* rotary_cos;
    const void* rotary_sin;
    int32_t rotary_dim, rotary_seqlen, rotary_interleaved, rotary_reserved;
    bool has_rotary = false;
    // The 0.12 per-sequence counts, or their defaults (no arrays) for an older caller's smaller struct.
    fa_tensor_t cu_q_t, cu_kn_t;
    const int32_t* cu_q_host;
    const int32_t* cu_kn_host;
    int32_t max_seqlen_q, reserved2;
    bool varlen_q = false, packed_kn = false;
    // The 0.13 fp8-cache descales, or their defaults (data NULL) for an older caller's smaller struct; fp8_cache:
    // k_cache and v_cache are FA_DTYPE_FLOAT8_E4M3 (cache_dtypes), has_descales_fields: the struct reaches them.
    fa_tensor_t k_descale_t, v_descale_t;
    bool has_descale_fields = false, fp8_cache = false;
    Extent kd{0, 0}, vd{0, 0};
    Extent cq{0, 0}, ckn{0, 0};
    int64_t total_q = 0, total_kn = 0;
    Extent rc{0, 0}, rs{0, 0};
    bool paged = false, append = false, has_lse = false, has_batch_idx = false, has_leftpad = false;
    Extent q{0, 0}, kc{0, 0}, vc{0, 0}, o{0, 0}, sl{0, 0}, l{0, 0}, bt{0, 0}, kn{0, 0}, vn{0, 0}, bi{0, 0}, lp{0, 0};
    int64_t b = 0, sq = 0, hq = 0, d = 0, hkv = 0;
    int64_t block_size = 0, max_blocks = 0, capacity = 0, added = 0;
    int64_t cache_rows = 0;          // rows cache_batch_idx picks from (k_cache.shape[0] or block_table.shape[0])
    int64_t longest = 0;            // most keys a sequence sees (the capacity without host copies)
    int64_t rows = 0, m_blocks = 0;  // packed rows per kv head and their 16-row blocks

    explicit DecodeCheck(const fa_decode_params_t& params)
        : P(params),
          batch_idx(FA_FIELD_OR_DEFAULT(params, decode_defaults(), cache_batch_idx)),
          leftpad(FA_FIELD_OR_DEFAULT(params, decode_defaults(), cache_leftpad)),
          batch_idx_host(FA_FIELD_OR_DEFAULT(params, decode_defaults(), cache_batch_idx_host)),
          leftpad_host(FA_FIELD_OR_DEFAULT(params, decode_defaults(), cache_leftpad_host)),
          alibi_t(FA_FIELD_OR_DEFAULT(params, decode_defaults(), alibi_slopes)),
          rotary_cos(FA_FIELD_OR_DEFAULT(params, decode_defaults(), rotary_cos)),
          rotary_sin(FA_FIELD_OR_DEFAULT(params, decode_defaults(), rotary_sin)),
          rotary_dim(FA_FIELD_OR_DEFAULT(params, decode_defaults(), rotary_dim)),
          rotary_seqlen(FA_FIELD_OR_DEFAULT(params, decode_defaults(), rotary_seqlen)),
          rotary_interleaved(FA_FIELD_OR_DEFAULT(params, decode_defaults(), rotary_interleaved)),
          rotary_reserved(FA_FIELD_OR_DEFAULT(params, decode_defaults(), reserved1)),
          has_rotary(rotary_cos != nullptr || rotary_sin != nullptr),
          cu_q_t(FA_FIELD_OR_DEFAULT(params, decode_defaults(), cu_seqlens_q)),
          cu_kn_t(FA_FIELD_OR_DEFAULT(params, decode_defaults(), cu_seqlens_k_new)),
          cu_q_host(FA_FIELD_OR_DEFAULT(params, decode_defaults(), cu_seqlens_q_host)),
          cu_kn_host(FA_FIELD_OR_DEFAULT(params, decode_defaults(), cu_seqlens_k_new_host)),
          max_seqlen_q(FA_FIELD_OR_DEFAULT(params, decode_defaults(), max_seqlen_q)),
          reserved2(FA_FIELD_OR_DEFAULT(params, decode_defaults(), reserved2)),
          varlen_q(cu_q_t.data != nullptr),
          packed_kn(cu_kn_t.data != nullptr),
          k_descale_t(FA_FIELD_OR_DEFAULT(params, decode_defaults(), k_descale)),
          v_descale_t(FA_FIELD_OR_DEFAULT(params, decode_defaults(), v_descale)),
          has_descale_fields(params.struct_size >= offsetof(fa_decode_params_t, v_descale) + sizeof(fa_tensor_t)),
          paged(params.block_table.data != nullptr),
          append(params.k_new.data != nullptr || params.v_new.data != nullptr),
          has_lse(params.lse.data != nullptr),
          has_batch_idx(batch_idx.data != nullptr),
          has_leftpad(leftpad.data != nullptr) {}

    // The ALiBi slopes (since 0.8): [heads_q] or [batch, heads_q] fp32, once b and hq are known.
    void alibi_slopes() {
        alibi = check_alibi_slopes(alibi_t, b, varlen_q ? "cu_seqlens_q.shape[0] - 1 (batch)" : "q.shape[0] (batch)", hq);
    }

    // The fp8 cache's descales (0.13): required with an fp8 cache, absent (data NULL) without one; fp32 device tensors
    // of rank 1, [heads_kv] or [1], positive stride. Read by the kernels only.
    void descales() {
        const struct {
            const fa_tensor_t& t;
            const char* name;
            Extent* e;
        } tables[] = {{k_descale_t, "k_descale", &kd}, {v_descale_t, "v_descale", &vd}};
        if (fp8_cache && !has_descale_fields) {
            invalid("k_cache and v_cache are FA_DTYPE_FLOAT8_E4M3, but params->struct_size (" + s(P.struct_size) +
                    ") ends before k_descale and v_descale (C ABI 0.13), which an fp8 cache needs: fill params with "
                    "fa_decode_params_init of this version and set them");
        }
        for (const auto& t : tables) {
            if (!fp8_cache) {
                if (t.t.data != nullptr) {
                    invalid(std::string(t.name) + ".data is set but k_cache and v_cache are " + dtype_name(P.k_cache.dtype) +
                            "; descales go with an fp8 (FA_DTYPE_FLOAT8_E4M3) cache only (data NULL otherwise)");
                }
                continue;
            }
            if (t.t.data == nullptr) {
                invalid(std::string("k_cache and v_cache are FA_DTYPE_FLOAT8_E4M3 but ") + t.name +
                        ".data is NULL; an fp8 cache needs k_descale and v_descale: fp32 device tensors of [heads_kv] or "
                        "[1], the factors that scale the cached values back");
            }
            *t.e = check_tensor({t.t, t.name, {"heads_kv", "", "", ""}, 1,
                                 "; descales of an fp8 cache are [heads_kv] (one per KV head) or [1] (one for the cache)"},
                                TensorKind::Float32);
            if (t.t.shape[0] != hkv && t.t.shape[0] != 1) {
                invalid(std::string(t.name) + ".shape[0] is " + s(t.t.shape[0]) + " but must be heads_kv (k_cache.shape[2] = " +
                        s(hkv) + ") or 1 (one factor for the whole cache)");
            }
        }
    }

    // The per-sequence counts (0.12): the arrays go with what they describe, max_seqlen_q with cu_seqlens_q.
    void counts_paired() const {
        check_reserved(reserved2, "reserved2");
        if (packed_kn && !append) {
            invalid("cu_seqlens_k_new.data is set but k_new/v_new are not given; cu_seqlens_k_new gives the number of "
                    "new keys each sequence appends");
        }
        if (cu_q_host != nullptr && !varlen_q) {
            invalid("cu_seqlens_q_host is given but cu_seqlens_q.data is NULL; the host copy only accompanies the device "
                    "array the kernels read");
        }
        if (cu_kn_host != nullptr && !packed_kn) {
            invalid("cu_seqlens_k_new_host is given but cu_seqlens_k_new.data is NULL; the host copy only accompanies "
                    "the device array the kernels read");
        }
        if (!varlen_q && max_seqlen_q != 0) {
            invalid("max_seqlen_q is " + s(max_seqlen_q) + " but cu_seqlens_q.data is NULL; max_seqlen_q sizes a batch "
                    "of per-sequence query counts and must be 0 without one");
        }
        if (varlen_q && max_seqlen_q < 1) {
            invalid("max_seqlen_q is " + s(max_seqlen_q) + " with cu_seqlens_q; it must be at least 1 (the most queries "
                    "one sequence has; q holds at least one row)");
        }
    }

    // Sequence i's query count and appended count where the host knows them: the fixed counts, or the host copies
    // of the arrays; otherwise the largest query count (max_seqlen_q) and -1 for the appended count (unknown).
    int64_t queries_of(int64_t i) const {
        return varlen_q && cu_q_host != nullptr ? int64_t{cu_q_host[i + 1]} - cu_q_host[i] : sq;
    }
    int64_t added_of(int64_t i) const {
        if (!packed_kn) return added;
        return cu_kn_host != nullptr ? int64_t{cu_kn_host[i + 1]} - cu_kn_host[i] : -1;
    }

    // The host copies go with their device arrays.
    void host_copies_paired() const {
        if (batch_idx_host != nullptr && !has_batch_idx) {
            invalid("cache_batch_idx_host is given but cache_batch_idx.data is NULL; the host copy only accompanies the "
                    "device array the kernels read");
        }
        if (leftpad_host != nullptr && !has_leftpad) {
            invalid("cache_leftpad_host is given but cache_leftpad.data is NULL; the host copy only accompanies the "
                    "device array the kernels read");
        }
    }

    // Each tensor on its own.
    void each_tensor() {
        q = varlen_q ? check_tensor({P.q, "q", {"total_q", "heads_q", "head_dim", ""}, 3, ""}, TensorKind::Attention)
                     : check_tensor({P.q, "q", {"batch", "seqlen_new", "heads_q", "head_dim"}, 4, ""}, TensorKind::Attention);
        const char* cache_dims_contiguous[4] = {"batch", "capacity", "heads_kv", "head_dim"};
        const char* cache_dims_paged[4] = {"num_blocks", "block_size", "heads_kv", "head_dim"};
        const char* const* cd = paged ? cache_dims_paged : cache_dims_contiguous;
        cache_dtypes();
        // An fp8 cache: 16-byte rows of e4m3 bytes (strides multiples of 16 elements), as the forward's fp8 inputs.
        const TensorKind cache_kind = fp8_cache ? TensorKind::AttentionInput : TensorKind::Attention;
        kc = check_tensor({P.k_cache, "k_cache", {cd[0], cd[1], cd[2], cd[3]}, 4, ""}, cache_kind);
        vc = check_tensor({P.v_cache, "v_cache", {cd[0], cd[1], cd[2], cd[3]}, 4, ""}, cache_kind);
        o = varlen_q ? check_tensor({P.out, "out", {"total_q", "heads_q", "head_dim", ""}, 3, ""}, TensorKind::Attention)
                     : check_tensor({P.out, "out", {"batch", "seqlen_new", "heads_q", "head_dim"}, 4, ""}, TensorKind::Attention);
        sl = check_tensor({P.cache_seqlens, "cache_seqlens", {"batch", "", "", ""}, 1, ""}, TensorKind::Int32);
        if (has_lse) {
            l = varlen_q ? check_tensor({P.lse, "lse", {"heads_q", "total_q", "", ""}, 2, ""}, TensorKind::Float32)
                         : check_tensor({P.lse, "lse", {"batch", "heads_q", "seqlen_new", ""}, 3, ""}, TensorKind::Float32);
        }
        if (paged) {
            bt = check_tensor({P.block_table, "block_table", {has_batch_idx ? "pool" : "batch", "max_blocks_per_seq", "", ""},
                               2, ""},
                              TensorKind::Int32);
        }
        if (append) {
            if (packed_kn) {
                kn = check_tensor({P.k_new, "k_new", {"total_k_new", "heads_kv", "head_dim", ""}, 3, ""}, TensorKind::Attention);
                vn = check_tensor({P.v_new, "v_new", {"total_k_new", "heads_kv", "head_dim", ""}, 3, ""}, TensorKind::Attention);
            } else {
                kn = check_tensor({P.k_new, "k_new", {"batch", "seqlen_knew", "heads_kv", "head_dim"}, 4, ""},
                                  TensorKind::Attention);
                vn = check_tensor({P.v_new, "v_new", {"batch", "seqlen_knew", "heads_kv", "head_dim"}, 4, ""},
                                  TensorKind::Attention);
            }
        }
        if (varlen_q) {
            // (check_tensor refuses a zero extent: "cu_seqlens_q.shape[0] (batch + 1) is 0; it must be at least 1".)
            cq = check_tensor({cu_q_t, "cu_seqlens_q", {"batch + 1", "", "", ""}, 1, ""}, TensorKind::Int32);
        }
        if (packed_kn) {
            ckn = check_tensor({cu_kn_t, "cu_seqlens_k_new", {"batch + 1", "", "", ""}, 1, ""}, TensorKind::Int32);
        }
        if (has_batch_idx) {
            bi = check_tensor({batch_idx, "cache_batch_idx", {"batch", "", "", ""}, 1, ""}, TensorKind::Int32);
        }
        if (has_leftpad) {
            lp = check_tensor({leftpad, "cache_leftpad", {"batch", "", "", ""}, 1, ""}, TensorKind::Int32);
        }
    }

    // The caches' dtypes (before their tensor checks): q's (fp16/bf16), or both FA_DTYPE_FLOAT8_E4M3 (C ABI 0.13).
    void cache_dtypes() {
        const struct {
            const fa_tensor_t& t;
            const char* name;
        } caches[] = {{P.k_cache, "k_cache"}, {P.v_cache, "v_cache"}};
        for (const auto& c : caches) {
            const int32_t dt = c.t.dtype;
            if (dt != FA_DTYPE_FLOAT16 && dt != FA_DTYPE_BFLOAT16 && dt != FA_DTYPE_FLOAT8_E4M3) {
                invalid(std::string(c.name) + ".dtype is " + s(dt) + " (" + dtype_name(dt) + "); " + c.name +
                        " must be q's dtype (FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16) or FA_DTYPE_FLOAT8_E4M3 (an fp8 "
                        "cache, with k_descale and v_descale)");
            }
        }
        const bool k8 = P.k_cache.dtype == FA_DTYPE_FLOAT8_E4M3, v8 = P.v_cache.dtype == FA_DTYPE_FLOAT8_E4M3;
        if (k8 != v8) {
            invalid(std::string("k_cache.dtype is ") + dtype_name(P.k_cache.dtype) + " but v_cache.dtype is " +
                    dtype_name(P.v_cache.dtype) + "; the key and value caches are both FA_DTYPE_FLOAT8_E4M3 (an fp8 "
                    "cache) or both q's dtype");
        }
        fp8_cache = k8;
    }

    // Tensors against each other: one dtype (the caches: q's or fp8), shapes that agree, GQA, room for the new tokens.
    void tensors_agree() {
        const struct {
            const fa_tensor_t& t;
            const char* name;
            bool given;
        } same_dtype[] = {{P.k_cache, "k_cache", !fp8_cache}, {P.v_cache, "v_cache", !fp8_cache}, {P.out, "out", true},
                          {P.k_new, "k_new", append}, {P.v_new, "v_new", append}};
        for (const auto& other : same_dtype) {
            if (other.given && other.t.dtype != P.q.dtype) {
                invalid(std::string(other.name) + ".dtype is " + dtype_name(other.t.dtype) + " but q.dtype is " +
                        dtype_name(P.q.dtype) +
                        (fp8_cache ? "; q, the new keys/values and out must share one dtype (the caches are fp8)"
                                   : "; q, the caches, the new keys/values and out must share one dtype"));
            }
        }
        const int32_t qr = P.q.rank;  // 4, or 3 with cu_seqlens_q
        b = varlen_q ? cu_q_t.shape[0] - 1 : P.q.shape[0];
        sq = varlen_q ? max_seqlen_q : P.q.shape[1];
        total_q = varlen_q ? P.q.shape[0] : 0;
        hq = P.q.shape[qr - 2];
        d = P.q.shape[qr - 1];
        hkv = P.k_cache.shape[2];
        if (packed_kn) check_dim(cu_kn_t, "cu_seqlens_k_new", 0, "batch + 1", b + 1, varlen_q ? "cu_seqlens_q.shape[0]" : "q.shape[0] + 1");
        for (int32_t i = 0; i < qr; ++i) {
            if (P.out.shape[i] != P.q.shape[i]) {
                invalid("out.shape is " + shape_string(P.out) + " but q.shape is " + shape_string(P.q) +
                        "; out must have the shape of q");
            }
        }
        for (int32_t i = 0; i < 4; ++i) {
            if (P.v_cache.shape[i] != P.k_cache.shape[i]) {
                invalid("v_cache.shape is " + shape_string(P.v_cache) + " but k_cache.shape is " + shape_string(P.k_cache) +
                        "; the key and value caches must have the same shape");
            }
        }
        const std::string q_head_dim = varlen_q ? "q.shape[2] (head_dim)" : "q.shape[3] (head_dim)";
        const std::string q_batch = varlen_q ? "cu_seqlens_q.shape[0] - 1 (batch)" : "q.shape[0] (batch)";
        check_dim(P.k_cache, "k_cache", 3, "head_dim", d, q_head_dim);
        // With cache_batch_idx the cache (contiguous) or the block table (paged) is a pool of rows of any size;
        // without it, one row per sequence.
        if (!has_batch_idx) {
            if (paged) {
                check_dim(P.block_table, "block_table", 0, "batch", b, q_batch);
            } else {
                check_dim(P.k_cache, "k_cache", 0, "batch", b, q_batch);
            }
        }
        cache_rows = paged ? P.block_table.shape[0] : P.k_cache.shape[0];
        check_dim(P.cache_seqlens, "cache_seqlens", 0, "batch", b, q_batch);
        if (has_batch_idx) check_dim(batch_idx, "cache_batch_idx", 0, "batch", b, q_batch);
        if (has_leftpad) check_dim(leftpad, "cache_leftpad", 0, "batch", b, q_batch);
        if (append) {
            const struct {
                const fa_tensor_t& t;
                const char* name;
            } news[] = {{P.k_new, "k_new"}, {P.v_new, "v_new"}};
            // Packed (cu_seqlens_k_new): [total_k_new, heads_kv, head_dim]; else [batch, seqlen_knew, heads_kv, head_dim].
            const int32_t h = packed_kn ? 1 : 2;
            for (const auto& nw : news) {
                if (!packed_kn) check_dim(nw.t, nw.name, 0, "batch", b, q_batch);
                check_dim(nw.t, nw.name, h, "heads_kv", hkv, "k_cache.shape[2] (heads_kv)");
                check_dim(nw.t, nw.name, h + 1, "head_dim", d, q_head_dim);
            }
            // The appended count may differ from q's seqlen_q (more or fewer); v_new must match k_new.
            if (packed_kn) {
                check_dim(P.v_new, "v_new", 0, "total_k_new", P.k_new.shape[0], "k_new.shape[0] (total_k_new)");
                total_kn = P.k_new.shape[0];
            } else {
                check_dim(P.v_new, "v_new", 1, "seqlen_knew", P.k_new.shape[1], "k_new.shape[1] (seqlen_knew)");
            }
        }
        check_gqa(hq, hkv, "k_cache");
        if (fp8_cache && d % kFp8HeadDimMultiple != 0) {
            invalid("k_cache.shape[3] (head_dim) is " + s(d) + "; the head dims of an fp8 (e4m3) cache must be multiples "
                    "of " + s(kFp8HeadDimMultiple) + " (whole 16-byte rows of its elements, as FlashAttention-3's fp8)");
        }
        if (has_lse && varlen_q) {
            if (P.lse.shape[0] != hq || P.lse.shape[1] != total_q) {
                invalid("lse.shape is " + shape_string(P.lse) + " but must be [heads_q, total_q] = [" + s(hq) + ", " +
                        s(total_q) + "] (with cu_seqlens_q)");
            }
        } else if (has_lse) {
            if (P.lse.shape[0] != b || P.lse.shape[1] != hq || P.lse.shape[2] != sq) {
                invalid("lse.shape is " + shape_string(P.lse) + " but must be [batch, heads_q, seqlen_new] = [" + s(b) + ", " +
                        s(hq) + ", " + s(sq) + "]");
            }
        }
        block_size = paged ? P.k_cache.shape[1] : 0;
        max_blocks = paged ? P.block_table.shape[1] : 0;
        // Positions a sequence's cache holds (max_blocks * block_size cannot overflow: both are below 2^63 / 2^31
        // or rejected as too large by the UNSUPPORTED checks below, which look at each first).
        capacity = paged ? (block_size <= kInt32Max && max_blocks <= kInt32Max ? max_blocks * block_size
                                                                               : std::numeric_limits<int64_t>::max())
                         : P.k_cache.shape[1];
        added = append && !packed_kn ? P.k_new.shape[1] : 0;
        if (append && capacity < added) {
            invalid(std::string(paged ? "block_table.shape[1] (max_blocks_per_seq) x k_cache.shape[1] (block_size)"
                                      : "k_cache.shape[1] (capacity)") +
                    " is " + s(capacity) + " positions per sequence, fewer than the " + s(added) +
                    " new tokens k_new appends (k_new.shape[1])");
        }
    }

    // The options and the split count, and the workspace's alignment.
    void scalars() {
        check_softmax_scale(P.softmax_scale);
        check_flag(P.causal, "causal");
        check_window(P.window_left, P.window_right);
        check_softcap(P.softcap);
        check_kernel_path(P.kernel_path, "kernel_path");
        if (P.num_splits < 0 || P.num_splits > FA_DECODE_MAX_SPLITS) {
            invalid("num_splits is " + s(P.num_splits) + "; it must be 0 (chosen by the library) or 1.." +
                    s(FA_DECODE_MAX_SPLITS));
        }
        if (P.workspace != nullptr && reinterpret_cast<uintptr_t>(P.workspace) % FA_WORKSPACE_ALIGNMENT != 0) {
            invalid("workspace (" + hex(P.workspace) + ") is not " + s(FA_WORKSPACE_ALIGNMENT) +
                    "-byte aligned (FA_WORKSPACE_ALIGNMENT)");
        }
    }

    // Rotary embedding (0.8): both tables, only with an append, rotary_dim a multiple of 16 up to the head dim, a
    // table of at least the capacity's rows (flash-attn's seqlen_ro >= seqlen_k) and of every query position.
    // Every position a query or a new key is rotated at is below cache_seqlens + max(seqlen_q, seqlen_knew);
    // the keys' stay below the capacity, the queries' may pass it when seqlen_q > seqlen_knew and the rows are
    // rotated per query (causal or windowed): then the table must cover capacity - seqlen_knew + seqlen_q rows
    // (cache_seqlens_host, when given, makes the check exact; host_lengths). "Windowed" after FlashAttention-2's
    // normalisation: a window side of the capacity or more is no window (flash-attn sets it to -1 before it decides
    // where the queries are rotated), so (INT32_MAX, -1) rotates every query at cache_seqlens, as no window does.
    bool rotary_per_row() const {
        return P.causal == 1 || (P.window_left >= 0 && P.window_left < capacity) ||
               (P.window_right >= 0 && P.window_right < capacity);
    }

    void rotary() {
        check_reserved(rotary_reserved, "reserved1");
        check_flag(rotary_interleaved, "rotary_interleaved");
        if (!has_rotary) return;
        if (rotary_cos == nullptr || rotary_sin == nullptr) {
            invalid(std::string(rotary_cos != nullptr ? "rotary_cos is set but rotary_sin is NULL"
                                                      : "rotary_sin is set but rotary_cos is NULL") +
                    "; give both rotary tables (to rotate) or neither");
        }
        if (!append) {
            invalid("rotary_cos/rotary_sin are given but k_new/v_new are not; the rotary embedding is applied only in a "
                    "call that appends new keys (flash_attn_with_kvcache raises too): rotate the queries and keys "
                    "yourself, or pass the new tokens");
        }
        if (rotary_dim % 2 != 0) {
            invalid("rotary_dim is " + s(rotary_dim) + ", which is odd; elements are rotated in pairs, and rotary_dim "
                    "must be a multiple of 16 (2 * rotary_cos.shape[1] in flash-attn)");
        }
        if (rotary_dim <= 0 || rotary_dim % 16 != 0) {
            invalid("rotary_dim is " + s(rotary_dim) + "; it must be a positive multiple of 16 (as flash-attn requires)");
        }
        if (rotary_dim > d) {
            invalid("rotary_dim is " + s(rotary_dim) + " but the head dim (" + (varlen_q ? "q.shape[2]" : "q.shape[3]") + ") is " + s(d) +
                    "; at most the head dim is rotated");
        }
        if (rotary_seqlen < capacity) {
            invalid("rotary table too short: rotary_seqlen is " + s(rotary_seqlen) + " rows but the cache holds " +
                    s(capacity) + " positions per sequence; the cos/sin tables need a row for every cache position");
        }
        if (P.cache_seqlens_host == nullptr && (varlen_q || packed_kn)) {
            rotary_rows_per_sequence();
        } else if (rotary_per_row() && sq > added && P.cache_seqlens_host == nullptr &&
                   rotary_seqlen < capacity - added + sq) {
            invalid("rotary table too short: rotary_seqlen is " + s(rotary_seqlen) + " rows, but with causal or a window "
                    "query i is rotated at cache_seqlens + i, and with seqlen_q " + s(sq) + " above seqlen_knew " +
                    s(added) + " that reaches position " + s(capacity - added + sq - 1) +
                    " for a full cache; give cache_seqlens_host (checked exactly) or a table of " +
                    s(capacity - added + sq) + " rows");
        }
        const int64_t bytes = int64_t{rotary_seqlen} * (rotary_dim / 2) * dtype_size(P.q.dtype);
        const struct {
            const void* ptr;
            const char* name;
            Extent* e;
        } tables[] = {{rotary_cos, "rotary_cos", &rc}, {rotary_sin, "rotary_sin", &rs}};
        for (const auto& t : tables) {
            if (reinterpret_cast<uintptr_t>(t.ptr) % 16 != 0) {
                invalid(std::string(t.name) + " (" + hex(t.ptr) + ") is not 16-byte aligned");
            }
            *t.e = buffer_extent(t.ptr, static_cast<size_t>(bytes), t.name);
        }
    }

    // The rotary table check without cache_seqlens_host, with per-sequence counts (0.12): sequence i's last query
    // is rotated at (at most) capacity - added_i + queries_i - 1 (causal or windowed), or capacity - added_i (every
    // query at the cached length), with an appended count the host does not know taken as 0 and a query count it does
    // not know as max_seqlen_q; a sequence without queries rotates none. One device array for both counts means each
    // sequence appends as many keys as it has queries: its queries stay inside the capacity.
    void rotary_rows_per_sequence() const {
        if (varlen_q && packed_kn && cu_q_t.data == cu_kn_t.data && cu_q_t.strides[0] == cu_kn_t.strides[0]) return;
        int64_t need = capacity, worst = -1;
        for (int64_t i = 0; i < b; ++i) {
            const int64_t a = added_of(i), nq = queries_of(i);
            if (nq <= 0) continue;
            const int64_t rows_needed = capacity - (a < 0 ? 0 : a) + (rotary_per_row() ? nq : 1);
            if (rows_needed > need) {
                need = rows_needed;
                worst = i;
            }
        }
        if (rotary_seqlen < need) {
            const int64_t a = added_of(worst);
            invalid("rotary table too short: rotary_seqlen is " + s(rotary_seqlen) + " rows, but " +
                    (rotary_per_row() ? "with causal or a window query i is rotated at cache_seqlens + i"
                                      : "every query is rotated at cache_seqlens") +
                    ", and sequence " + s(worst) + " has " + s(queries_of(worst)) +
                    (varlen_q && cu_q_host == nullptr ? " (max_seqlen_q)" : "") + " queries and appends " +
                    (a < 0 ? "an unknown number of keys (no cu_seqlens_k_new_host; taken as 0)" : s(a) + " keys") +
                    ", which reaches position " + s(need - 1) + " for a full cache; give cache_seqlens_host (checked "
                    "exactly) or a table of " + s(need) + " rows");
        }
    }

    // The host copies of the per-sequence counts (0.12), checked as the forward's cu_seqlens host copies are.
    void host_counts() const {
        if (cu_q_host != nullptr) {
            check_int32_aligned(cu_q_host, "cu_seqlens_q_host");
            check_host_cu_seqlens(cu_q_host, "cu_seqlens_q_host", static_cast<int32_t>(b), total_q, "q (q.shape[0], total_q)",
                                  max_seqlen_q, "max_seqlen_q");
        }
        if (cu_kn_host != nullptr) {
            check_int32_aligned(cu_kn_host, "cu_seqlens_k_new_host");
            check_host_cu_seqlens(cu_kn_host, "cu_seqlens_k_new_host", static_cast<int32_t>(b), total_kn,
                                  "k_new (k_new.shape[0], total_k_new)",
                                  static_cast<int32_t>(capacity < kInt32Max ? capacity : kInt32Max),
                                  "the cache's capacity");
        }
    }

    // The host copies: lengths that fit the cache, batch indices inside the pool, left pads inside the sequences.
    void host_lengths() {
        longest = capacity;
        if (batch_idx_host != nullptr) {
            check_int32_aligned(batch_idx_host, "cache_batch_idx_host");
            for (int64_t i = 0; i < b; ++i) {
                const int64_t row = batch_idx_host[i];
                if (row < 0 || row >= cache_rows) {
                    invalid("cache_batch_idx_host[" + s(i) + "] is " + s(row) + " but the pool of cache rows is " +
                            (paged ? "block_table.shape[0] (pool) = " : "k_cache.shape[0] (pool) = ") + s(cache_rows) +
                            "; an index must lie in [0, " + s(cache_rows) + ")");
                }
            }
        }
        if (leftpad_host != nullptr) {
            check_int32_aligned(leftpad_host, "cache_leftpad_host");
            for (int64_t i = 0; i < b; ++i) {
                const int64_t pad = leftpad_host[i];
                if (pad < 0) {
                    invalid("cache_leftpad_host[" + s(i) + "] is " + s(pad) + "; a left pad must be 0 or more");
                }
                if (pad > capacity) {
                    invalid("cache_leftpad_host[" + s(i) + "] is " + s(pad) + ", more than the " + s(capacity) +
                            " positions its cache has");
                }
                // (A negative length is cache_seqlens_host's own refusal, below.)
                // (An appended count the host does not know, -1, leaves the bound to the kernels' clamp.)
                const int64_t a = added_of(i);
                if (P.cache_seqlens_host != nullptr && P.cache_seqlens_host[i] >= 0 && a >= 0 &&
                    pad > int64_t{P.cache_seqlens_host[i]} + a) {
                    invalid("cache_leftpad_host[" + s(i) + "] is " + s(pad) + " but sequence " + s(i) + " ends at " +
                            s(int64_t{P.cache_seqlens_host[i]} + a) + " (cache_seqlens_host[" + s(i) + "] = " +
                            s(P.cache_seqlens_host[i]) + (append ? " plus " + s(a) + " new tokens" : std::string()) +
                            "); its valid keys are positions cache_leftpad .. cache_seqlens + seqlen_knew - 1");
                }
            }
        }
        if (P.cache_seqlens_host != nullptr) {
            check_int32_aligned(P.cache_seqlens_host, "cache_seqlens_host");
            longest = 0;
            for (int64_t i = 0; i < b; ++i) {
                const int64_t cached = P.cache_seqlens_host[i];
                if (cached < 0) {
                    invalid("cache_seqlens_host[" + s(i) + "] is " + s(cached) + "; cache lengths must be 0 or more");
                }
                // Its appended count (-1: packed without cu_seqlens_k_new_host; the kernels clamp and report then).
                const int64_t a = added_of(i);
                if (cached + (a < 0 ? 0 : a) > capacity) {
                    invalid(append && a >= 0 ? "sequence " + s(i) + " holds " + s(cached) + " tokens (cache_seqlens_host[" +
                                                   s(i) + "]) and appends " + s(a) + ", " + s(cached + a) +
                                                   " in all, but its cache has room for " + s(capacity)
                                             : "cache_seqlens_host[" + s(i) + "] is " + s(cached) + ", more than the " +
                                                   s(capacity) + " positions its cache has");
                }
                // Its queries are rotated at cached + i (per row) or all at cached: with an appended count of 0
                // (cu_seqlens_k_new) a full cache puts the latter at the capacity itself, past a table of capacity rows.
                const int64_t nq = queries_of(i);
                const int64_t last = cached + (rotary_per_row() ? nq : 1) - 1;
                if (has_rotary && nq > 0 && last >= rotary_seqlen) {
                    invalid("rotary table too short: sequence " + s(i) + " holds " + s(cached) +
                            " tokens (cache_seqlens_host[" + s(i) + "]) and its query " +
                            (rotary_per_row() ? s(nq - 1) + " is" : std::string("rows are")) + " rotated at position " +
                            s(last) + ", past the " + s(rotary_seqlen) + " rows of the rotary tables (rotary_seqlen)");
                }
                // Keys the sequence sees: from its left pad (when known) to its end (the capacity when its appended
                // count is not known).
                const int64_t end = a < 0 ? capacity : cached + a;
                const int64_t seen = end - (leftpad_host != nullptr ? int64_t{leftpad_host[i]} : 0);
                longest = seen > longest ? seen : longest;
            }
        }
    }

    // Written memory (out, lse; the caches with an append; cache_seqlens when advanced; the workspace) must not
    // overlap anything else.
    void apart() {
        const struct {
            Extent e;
            const char* name;
            bool given;
        } read[] = {{q, "q", true},          {kc, "k_cache", true}, {vc, "v_cache", true},
                    {kn, "k_new", append},   {vn, "v_new", append}, {sl, "cache_seqlens", true},
                    {bt, "block_table", paged}, {bi, "cache_batch_idx", has_batch_idx},
                    {lp, "cache_leftpad", has_leftpad}, {alibi.extent, "alibi_slopes", alibi.on},
                    {rc, "rotary_cos", has_rotary}, {rs, "rotary_sin", has_rotary},
                    {cq, "cu_seqlens_q", varlen_q}, {ckn, "cu_seqlens_k_new", packed_kn},
                    {kd, "k_descale", fp8_cache}, {vd, "v_descale", fp8_cache}};
        for (const auto& r : read) {
            if (!r.given) continue;
            check_no_overlap(o, "out", r.e, r.name);
            if (has_lse) check_no_overlap(l, "lse", r.e, r.name);
        }
        if (has_lse) check_no_overlap(o, "out", l, "lse");
        if (append) {
            // The caches are written where the new tokens go. (k_cache and v_cache may interleave in one buffer,
            // but must not be the same memory: the values would overwrite the keys.)
            if (P.k_cache.data == P.v_cache.data) {
                invalid("k_cache.data and v_cache.data are the same pointer (" + hex(P.k_cache.data) +
                        "); with k_new/v_new the values would overwrite the keys");
            }
            for (const auto& r : read) {
                if (!r.given || &r == &read[1] || &r == &read[2]) continue;  // the caches themselves
                check_no_overlap(kc, "k_cache", r.e, r.name);
                check_no_overlap(vc, "v_cache", r.e, r.name);
            }
        }
        if (P.advance_cache_seqlens == 1) {
            // cache_seqlens is written too (after the kernels that read it).
            for (const auto& r : read) {
                if (r.given && &r != &read[5]) check_no_overlap(sl, "cache_seqlens", r.e, r.name);
            }
        }
        if (P.workspace != nullptr && P.workspace_size > 0) {
            // The partials are written into the workspace the caller declares.
            const Extent w = buffer_extent(P.workspace, P.workspace_size, "workspace");
            for (const auto& r : read) {
                if (r.given) check_no_overlap(w, "workspace", r.e, r.name);
            }
            check_no_overlap(w, "workspace", o, "out");
            if (has_lse) check_no_overlap(w, "workspace", l, "lse");
        }
    }

    // Valid; is it served? (UNSUPPORTED)
    void served(int32_t compute_capability) {
        // FA_PATH_SM90: UNSUPPORTED, saying why (dispatch.cpp's choose_path, as for the other passes).
        (void)choose_path(Pass::Decode, P.kernel_path, static_cast<int32_t>(d), kernel_dtype(P.q.dtype), compute_capability,
                          -1, "kernel_path");
        check_head_dim_served(d, varlen_q ? 2 : 3);
        if (paged && (block_size < kMinBlockSize || !is_power_of_two(block_size))) {
            unsupported("k_cache.shape[1] (block_size) is " + s(block_size) +
                        "; the paged cache is served for block sizes that are powers of two from " + s(kMinBlockSize) +
                        " up (16, 32, 64, 128, 256, ...)");
        }
        check_int32_sizes({{b, varlen_q ? "cu_seqlens_q.shape[0] - 1 (batch)" : "q.shape[0] (batch)"},
                           {varlen_q ? total_q : sq, varlen_q ? "q.shape[0] (total_q)" : "q.shape[1] (seqlen_q)"},
                           {packed_kn ? total_kn : added,
                            packed_kn ? "k_new.shape[0] (total_k_new)" : "k_new.shape[1] (seqlen_knew)"},
                           {cache_rows, paged ? "block_table.shape[0] (pool)" : "k_cache.shape[0] (pool)"},
                           {hq, varlen_q ? "q.shape[1] (heads_q)" : "q.shape[2] (heads_q)"},
                           {hkv, "k_cache.shape[2] (heads_kv)"},
                           {paged ? P.k_cache.shape[0] : 0, "k_cache.shape[0] (num_blocks)"},
                           {max_blocks, "block_table.shape[1] (max_blocks_per_seq)"}});
        if (capacity > kMaxCapacity) {
            unsupported("the cache holds " + s(capacity) + " positions per sequence; the largest this build serves is " +
                        s(kMaxCapacity));
        }
        // Packed rows (q heads per kv head x new tokens), and the grid of one block per (sequence, kv head,
        // 16 rows) per split, stay within int32; a forced split count multiplies the grid.
        rows = hq / hkv * sq;
        m_blocks = (rows + 15) / 16;
        const int64_t splits = P.num_splits > 0 ? P.num_splits : 1;
        if (rows > kInt32Max || b * hq > kInt32Max / sq || b * hkv > kInt32Max / (m_blocks * splits)) {
            unsupported("batch " + s(b) + " x heads_q " + s(hq) + (varlen_q ? " x max_seqlen_q " : " x seqlen_new ") + s(sq) +
                        (P.num_splits > 1 ? " x num_splits " + s(P.num_splits) : std::string()) +
                        " is too large for one decode launch (the grid and row indices are 32-bit); split the call");
        }
        check_compute_capability_served(compute_capability, "compute_capability");
    }

    DecodeParams params() const {
        DecodeParams p{};
        p.q = P.q.data;
        p.k_cache = P.k_cache.data;
        p.v_cache = P.v_cache.data;
        p.k_new = append ? P.k_new.data : nullptr;
        p.v_new = append ? P.v_new.data : nullptr;
        p.o = P.out.data;
        p.lse = has_lse ? static_cast<float*>(P.lse.data) : nullptr;
        p.cache_seqlens = static_cast<int32_t*>(P.cache_seqlens.data);
        p.block_table = paged ? static_cast<const int32_t*>(P.block_table.data) : nullptr;
        // With cu_seqlens_q q/out/lse have no batch dimension: batch strides 0, rows packed (decode_q_span).
        const int32_t qo = varlen_q ? 1 : 0;  // q/out dims shift down by one when packed
        p.q_batch_stride = varlen_q ? 0 : P.q.strides[0];
        p.q_row_stride = P.q.strides[1 - qo];
        p.q_head_stride = P.q.strides[2 - qo];
        p.k_batch_stride = P.k_cache.strides[0];
        p.k_row_stride = P.k_cache.strides[1];
        p.k_head_stride = P.k_cache.strides[2];
        p.v_batch_stride = P.v_cache.strides[0];
        p.v_row_stride = P.v_cache.strides[1];
        p.v_head_stride = P.v_cache.strides[2];
        if (append) {
            const int32_t ko = packed_kn ? 1 : 0;  // likewise for k_new/v_new with cu_seqlens_k_new
            p.kn_batch_stride = packed_kn ? 0 : P.k_new.strides[0];
            p.kn_row_stride = P.k_new.strides[1 - ko];
            p.kn_head_stride = P.k_new.strides[2 - ko];
            p.vn_batch_stride = packed_kn ? 0 : P.v_new.strides[0];
            p.vn_row_stride = P.v_new.strides[1 - ko];
            p.vn_head_stride = P.v_new.strides[2 - ko];
        }
        p.o_batch_stride = varlen_q ? 0 : P.out.strides[0];
        p.o_row_stride = P.out.strides[1 - qo];
        p.o_head_stride = P.out.strides[2 - qo];
        if (has_lse) {
            p.lse_batch_stride = varlen_q ? 0 : P.lse.strides[0];
            p.lse_head_stride = P.lse.strides[1 - qo];
            p.lse_row_stride = P.lse.strides[2 - qo];
        }
        if (varlen_q) {
            p.cu_seqlens_q = static_cast<const int32_t*>(cu_q_t.data);
            p.cu_q_stride = cu_q_t.strides[0];
            p.total_q = static_cast<int32_t>(total_q);
        }
        if (packed_kn) {
            p.cu_seqlens_knew = static_cast<const int32_t*>(cu_kn_t.data);
            p.cu_knew_stride = cu_kn_t.strides[0];
            p.total_knew = static_cast<int32_t>(total_kn);
        }
        p.seqlens_stride = P.cache_seqlens.strides[0];
        if (paged) {
            p.table_batch_stride = P.block_table.strides[0];
            p.table_page_stride = P.block_table.strides[1];
            p.block_size = static_cast<int32_t>(block_size);
            int32_t shift = 0;
            while ((int64_t{1} << shift) < block_size) ++shift;
            p.block_shift = shift;
            p.num_blocks = static_cast<int32_t>(P.k_cache.shape[0]);
            p.max_blocks = static_cast<int32_t>(max_blocks);
        }
        p.b = static_cast<int32_t>(b);
        p.sq = static_cast<int32_t>(sq);
        p.hq = static_cast<int32_t>(hq);
        p.hkv = static_cast<int32_t>(hkv);
        p.d = static_cast<int32_t>(d);
        p.g = static_cast<int32_t>(hq / hkv);
        p.rows = static_cast<int32_t>(rows);
        p.m_blocks = static_cast<int32_t>(m_blocks);
        p.capacity = static_cast<int32_t>(capacity);
        p.added = static_cast<int32_t>(added);
        p.advance = P.advance_cache_seqlens;
        if (has_batch_idx) {
            p.cache_batch_idx = static_cast<const int32_t*>(batch_idx.data);
            p.batch_idx_stride = batch_idx.strides[0];
        }
        if (has_leftpad) {
            p.cache_leftpad = static_cast<const int32_t*>(leftpad.data);
            p.leftpad_stride = leftpad.strides[0];
        }
        p.cache_rows = static_cast<int32_t>(cache_rows);
        if (has_rotary) {
            p.rotary_cos = rotary_cos;
            p.rotary_sin = rotary_sin;
            p.rotary_dim = rotary_dim;
            p.rotary_seqlen = rotary_seqlen;
            p.rotary_interleaved = rotary_interleaved;
            p.rotary_per_row = rotary_per_row() ? 1 : 0;
        }
        const double scale = P.softmax_scale > 0.0f ? static_cast<double>(P.softmax_scale)
                                                    : 1.0 / std::sqrt(static_cast<double>(d));
        p.scale = static_cast<float>(scale);
        p.softcap = P.softcap;
        // With softcap the kernel computes tanh(s * scale / softcap) and runs the softmax on softcap times that.
        p.scale_log2 = static_cast<float>((P.softcap > 0.0f ? static_cast<double>(P.softcap) : scale) * kLog2e);
        p.causal = P.causal;
        // A left window of capacity or more hides nothing (new token i sits at position total - sq + i, below
        // capacity), nor does a right window of seqlen_new or more; -1 lets the kernel skip them. Causal caps the
        // right side at the diagonal.
        p.window_left = P.window_left >= capacity ? -1 : P.window_left;
        const int32_t right = P.window_right >= sq ? -1 : P.window_right;
        p.window_right = P.causal == 1 ? 0 : right;
        p.dtype = kernel_dtype(P.q.dtype);
        p.cache_dtype = fp8_cache ? DType::Float8E4M3 : p.dtype;
        if (fp8_cache) {
            // A [1] table: one factor for every KV head (stride 0).
            p.k_descale = static_cast<const float*>(k_descale_t.data);
            p.v_descale = static_cast<const float*>(v_descale_t.data);
            p.k_descale_stride = k_descale_t.shape[0] == 1 ? 0 : k_descale_t.strides[0];
            p.v_descale_stride = v_descale_t.shape[0] == 1 ? 0 : v_descale_t.strides[0];
        }
        if (alibi.on) {
            p.alibi_slopes = static_cast<const float*>(alibi_t.data);
            p.alibi_batch_stride = alibi.batch_stride;
            p.alibi_head_stride = alibi.head_stride;
            // FlashAttention-2's causal form for a window (-1, 0) (a left side of capacity or more is -1 above; with
            // ALiBi it keeps causal even for seqlen_q = 1): +slope * (p - pad).
            p.alibi_causal = p.window_right == 0 && p.window_left < 0 ? 1 : 0;
        }
        p.num_splits = 1;
        return p;
    }
};

}  // namespace

DecodeParams validate_decode(const fa_decode_params_t* params, int32_t compute_capability, int32_t* length_hint,
                             MemoryArgs* memory) {
    check_decode_struct(params, compute_capability);
    refuse_fp8(*params);
    DecodeCheck c(*params);
    c.counts_paired();
    c.host_copies_paired();
    c.each_tensor();
    c.tensors_agree();
    c.alibi_slopes();
    c.descales();
    c.scalars();
    c.host_counts();
    c.rotary();
    c.host_lengths();
    c.apart();
    c.served(compute_capability);
    const DecodeParams p = c.params();
    if (memory != nullptr) {
        memory->add("q.data", "q's shape and strides", c.q);
        memory->add("k_cache.data", "k_cache's shape and strides", c.kc);
        memory->add("v_cache.data", "v_cache's shape and strides", c.vc);
        if (c.append) {
            memory->add("k_new.data", "k_new's shape and strides", c.kn);
            memory->add("v_new.data", "v_new's shape and strides", c.vn);
        }
        memory->add("out.data", "out's shape and strides", c.o);
        if (c.has_lse) memory->add("lse.data", "lse's shape and strides", c.l);
        memory->add("cache_seqlens.data", "cache_seqlens' shape and strides", c.sl);
        if (c.paged) memory->add("block_table.data", "block_table's shape and strides", c.bt);
        if (c.has_batch_idx) memory->add("cache_batch_idx.data", "cache_batch_idx' shape and strides", c.bi);
        if (c.has_leftpad) memory->add("cache_leftpad.data", "cache_leftpad's shape and strides", c.lp);
        if (c.varlen_q) memory->add("cu_seqlens_q.data", "cu_seqlens_q's shape and strides", c.cq);
        if (c.packed_kn) memory->add("cu_seqlens_k_new.data", "cu_seqlens_k_new's shape and strides", c.ckn);
        if (c.alibi.on) memory->add("alibi_slopes.data", "alibi_slopes' shape and strides", c.alibi.extent);
        if (c.fp8_cache) {
            memory->add("k_descale.data", "k_descale's shape and strides", c.kd);
            memory->add("v_descale.data", "v_descale's shape and strides", c.vd);
        }
        if (c.has_rotary) {
            memory->add("rotary_cos", "rotary_seqlen x rotary_dim / 2 elements", c.rc);
            memory->add("rotary_sin", "rotary_seqlen x rotary_dim / 2 elements", c.rs);
        }
    }
    if (length_hint != nullptr) {
        // The keys a 16-row block can see are fewer with a left window.
        int64_t hint = c.longest;
        if (p.window_left >= 0 && p.window_left + c.sq < hint) hint = p.window_left + c.sq;
        *length_hint = static_cast<int32_t>(hint < 1 ? 1 : hint);
    }
    return p;
}

}  // namespace fa
