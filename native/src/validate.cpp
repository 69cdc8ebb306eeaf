// Validation of fa_forward_params_t and translation into fa::FwdParams.
//
// Order: every INVALID_ARGUMENT check first (structure, the fields of a fixed-length or variable-length
// call, each tensor on its own, then tensors against each other, then scalars, then the host copies of
// cu_seqlens, then memory overlap), then the UNSUPPORTED checks (head dim, sizes the kernels index with
// 32 bits, compute capability). So a call that is wrong in several ways reports a wrong argument before
// it reports something this build does not serve.
//
// Versions of fa_forward_params_t: v0.1 ends after kernel_path; v0.2 appends the window, softcap and
// variable-length fields. A field is read only when the caller's struct_size covers it, so an older
// caller's smaller struct gets the defaults (no window, no softcap, fixed-length batch).
#include "validate.h"

#include <cinttypes>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "error.h"
#include "validate_common.h"

namespace fa {

using namespace validation;

namespace {

// Largest head dim asked of the dispatcher when listing the served ones.
constexpr int32_t kMaxProbedHeadDim = 1024;

}  // namespace

std::string served_head_dims() {
    std::vector<int32_t> dims;
    for (int32_t d = 1; d <= kMaxProbedHeadDim; ++d) {
        if (head_dim_served(d)) {
            dims.push_back(d);
        }
    }
    if (dims.empty()) {
        return "none";
    }
    // Runs of three or more equally spaced dims are written "8 to 128 in steps of 8".
    std::string list;
    size_t i = 0;
    while (i < dims.size()) {
        size_t j = i;
        if (i + 2 < dims.size()) {
            const int32_t step = dims[i + 1] - dims[i];
            j = i + 1;
            while (j + 1 < dims.size() && dims[j + 1] - dims[j] == step) {
                ++j;
            }
            if (j - i < 2) {
                j = i;
            }
        }
        list += list.empty() ? "" : ", ";
        if (j > i) {
            list += s(dims[i]) + " to " + s(dims[j]) + " in steps of " + s(dims[i + 1] - dims[i]);
        } else {
            list += s(dims[i]);
        }
        i = j + 1;
    }
    const int32_t* compiled = nullptr;
    const int32_t count = kernels::compiled_head_dims(&compiled);
    if (count > 0 && compiled != nullptr) {
        list += " (kernels for ";
        for (int32_t k = 0; k < count; ++k) {
            list += (k > 0 ? ", " : "") + s(compiled[k]);
        }
        list += "; FA_HEAD_DIMS picks them at build time)";
    }
    return list;
}

namespace {

// Field `field` of *P when the caller's struct_size covers it, else `fallback` (an older caller).
#define FA_PARAMS_FIELD_OR(P, field, fallback)                                                   \
    ((P).struct_size >= offsetof(fa_forward_params_t, field) + sizeof((P).field) ? (P).field \
                                                                                   : (fallback))

// The fields appended in v0.2, with the defaults an older caller gets.
struct V02Fields {
    int32_t window_left = -1;
    int32_t window_right = -1;
    float softcap = 0.0f;
    int32_t reserved1 = 0;
    const int32_t* cu_seqlens_q = nullptr;
    const int32_t* cu_seqlens_k = nullptr;
    const int32_t* cu_seqlens_q_host = nullptr;
    const int32_t* cu_seqlens_k_host = nullptr;
    int32_t varlen_batch = 0;
    int32_t max_seqlen_q = 0;
    int32_t max_seqlen_k = 0;
    int32_t reserved2 = 0;
};

V02Fields read_v02_fields(const fa_forward_params_t& P) {
    V02Fields f;
    f.window_left = FA_PARAMS_FIELD_OR(P, window_left, f.window_left);
    f.window_right = FA_PARAMS_FIELD_OR(P, window_right, f.window_right);
    f.softcap = FA_PARAMS_FIELD_OR(P, softcap, f.softcap);
    f.reserved1 = FA_PARAMS_FIELD_OR(P, reserved1, f.reserved1);
    f.cu_seqlens_q = FA_PARAMS_FIELD_OR(P, cu_seqlens_q, f.cu_seqlens_q);
    f.cu_seqlens_k = FA_PARAMS_FIELD_OR(P, cu_seqlens_k, f.cu_seqlens_k);
    f.cu_seqlens_q_host = FA_PARAMS_FIELD_OR(P, cu_seqlens_q_host, f.cu_seqlens_q_host);
    f.cu_seqlens_k_host = FA_PARAMS_FIELD_OR(P, cu_seqlens_k_host, f.cu_seqlens_k_host);
    f.varlen_batch = FA_PARAMS_FIELD_OR(P, varlen_batch, f.varlen_batch);
    f.max_seqlen_q = FA_PARAMS_FIELD_OR(P, max_seqlen_q, f.max_seqlen_q);
    f.max_seqlen_k = FA_PARAMS_FIELD_OR(P, max_seqlen_k, f.max_seqlen_k);
    f.reserved2 = FA_PARAMS_FIELD_OR(P, reserved2, f.reserved2);
    return f;
}

#undef FA_PARAMS_FIELD_OR

void check_int32_pointer_alignment(const int32_t* pointer, const char* name) {
    if (reinterpret_cast<uintptr_t>(pointer) % alignof(int32_t) != 0) {
        invalid(std::string(name) + " (" + hex(pointer) + ") is not 4-byte aligned");
    }
}

// Checks a host copy of cu_seqlens (batch + 1 prefix sums) against the rows of its tensors and the
// declared longest sequence.
void check_host_cu_seqlens(const int32_t* cu, const char* name, int32_t batch, int64_t rows, const char* rows_what,
                           int32_t max_seqlen, const char* max_name) {
    // Built only for a message: a name such as "cu_seqlens_q_host" is too long for the small-string
    // buffer, so a std::string made up front would allocate on every call.
    const auto n = [name] { return std::string(name); };
    if (cu[0] != 0) {
        invalid(n() + "[0] is " + s(cu[0]) + "; cu_seqlens are prefix sums of the sequence lengths and start at 0");
    }
    for (int32_t i = 1; i <= batch; ++i) {
        if (cu[i] < cu[i - 1]) {
            invalid(n() + "[" + s(i) + "] is " + s(cu[i]) + ", less than " + n() + "[" + s(i - 1) + "] = " +
                    s(cu[i - 1]) + "; cu_seqlens never decrease (sequence " + s(i - 1) +
                    " would have a negative length)");
        }
        const int64_t length = static_cast<int64_t>(cu[i]) - cu[i - 1];
        if (length > max_seqlen) {
            invalid("sequence " + s(i - 1) + " has length " + s(length) + " (" + n() + "[" + s(i) + "] - " + n() + "[" +
                    s(i - 1) + "] = " + s(cu[i]) + " - " + s(cu[i - 1]) + "), more than " + max_name + " = " +
                    s(max_seqlen));
        }
    }
    if (cu[batch] > rows) {
        invalid(n() + "[" + s(batch) + "] is " + s(cu[batch]) + ", past the end of the " + s(rows) + " rows of " +
                rows_what);
    }
}

// Byte range of a device cu_seqlens array (batch + 1 int32 values).
Extent cu_extent(const int32_t* cu, int32_t batch, const char* name) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(cu);
    const uintptr_t bytes = (static_cast<uintptr_t>(batch) + 1) * sizeof(int32_t);
    if (address > std::numeric_limits<uintptr_t>::max() - bytes) {
        invalid(std::string(name) + " (" + hex(cu) + ") plus its " + s(static_cast<int64_t>(bytes)) +
                " bytes runs past the end of the address space");
    }
    return Extent{address, address + bytes};
}

}  // namespace

std::string describe(const FwdParams& p) {
    const bool varlen = p.cu_seqlens_q != nullptr;
    std::string out = varlen ? "varlen b=" + s(p.b) + " max_sq=" + s(p.sq) + " max_sk=" + s(p.sk) + " total_q=" +
                                   s(p.total_q) + " total_k=" + s(p.total_k)
                             : "b=" + s(p.b) + " sq=" + s(p.sq) + " sk=" + s(p.sk);
    out += " hq=" + s(p.hq) + " hkv=" + s(p.hkv) + " d=" + s(p.d) + (p.dtype == DType::BFloat16 ? " bf16" : " fp16");
    if (p.causal != 0) {
        out += varlen ? std::string(p.bottom_right != 0 ? " causal(bottom-right)" : " causal(top-left)")
                      : " causal(offset " + s(p.causal_offset) + ")";
    } else {
        out += " non-causal";
    }
    if (p.window_left >= 0 || (p.window_right >= 0 && p.causal == 0)) {
        out += " window(" + s(p.window_left) + ", " + s(p.window_right) +
               (p.bottom_right != 0 ? ", bottom-right)" : ", top-left)");
    }
    if (p.softcap > 0.0f) {
        out += " softcap=" + float_string(p.softcap);
    }
    return out + (p.lse != nullptr ? " +lse" : "");
}

FwdParams validate_forward(const fa_forward_params_t* params, int32_t compute_capability, ForwardExtents* extents) {
    // ---- the struct itself ----------------------------------------------------------------------
    if (params == nullptr) {
        invalid("params is NULL");
    }
    // Fields past the caller's struct_size are not read (they get their defaults); a larger
    // struct_size (a newer caller) is accepted and its unknown tail ignored.
    if (params->struct_size < kForwardParamsMinSize) {
        invalid("params->struct_size is " + s(params->struct_size) + " but fa_forward_params_t has " +
                s(static_cast<int64_t>(sizeof(fa_forward_params_t))) + " bytes in this library (at least " +
                s(static_cast<int64_t>(kForwardParamsMinSize)) +
                " for version 0.1): fill params with fa_forward_params_init");
    }
    if (params->reserved0 != 0) {
        invalid("params->reserved0 is " + s(params->reserved0) + "; it is reserved and must be 0");
    }
    if (compute_capability < 0) {
        invalid("compute_capability is " + s(compute_capability) +
                "; pass major*10+minor of the target GPU (e.g. 90) or 0 for any GPU");
    }
    const fa_forward_params_t& P = *params;
    const V02Fields x = read_v02_fields(P);
    if (x.reserved1 != 0) {
        invalid("params->reserved1 is " + s(x.reserved1) + "; it is reserved and must be 0");
    }
    if (x.reserved2 != 0) {
        invalid("params->reserved2 is " + s(x.reserved2) + "; it is reserved and must be 0");
    }

    // ---- fixed-length or variable-length batch ---------------------------------------------------
    const bool varlen = x.cu_seqlens_q != nullptr || x.cu_seqlens_k != nullptr;
    if (varlen) {
        if (x.cu_seqlens_q == nullptr) {
            invalid("cu_seqlens_k is set but cu_seqlens_q is NULL; a variable-length batch needs both");
        }
        if (x.cu_seqlens_k == nullptr) {
            invalid("cu_seqlens_q is set but cu_seqlens_k is NULL; a variable-length batch needs both");
        }
        check_int32_pointer_alignment(x.cu_seqlens_q, "cu_seqlens_q");
        check_int32_pointer_alignment(x.cu_seqlens_k, "cu_seqlens_k");
        if (x.cu_seqlens_q_host != nullptr) {
            check_int32_pointer_alignment(x.cu_seqlens_q_host, "cu_seqlens_q_host");
        }
        if (x.cu_seqlens_k_host != nullptr) {
            check_int32_pointer_alignment(x.cu_seqlens_k_host, "cu_seqlens_k_host");
        }
        if (x.varlen_batch < 1) {
            invalid("varlen_batch is " + s(x.varlen_batch) +
                    "; a variable-length batch (cu_seqlens_q set) needs at least 1 sequence");
        }
        if (x.max_seqlen_q < 0) {
            invalid("max_seqlen_q is " + s(x.max_seqlen_q) + "; it must be >= 0");
        }
        if (x.max_seqlen_k < 0) {
            invalid("max_seqlen_k is " + s(x.max_seqlen_k) + "; it must be >= 0");
        }
    } else {
        if (x.cu_seqlens_q_host != nullptr || x.cu_seqlens_k_host != nullptr) {
            invalid(std::string(x.cu_seqlens_q_host != nullptr ? "cu_seqlens_q_host" : "cu_seqlens_k_host") +
                    " is set but cu_seqlens_q and cu_seqlens_k are NULL; host copies go with the device arrays "
                    "of a variable-length batch");
        }
        const struct {
            int32_t value;
            const char* name;
        } zeros[] = {{x.varlen_batch, "varlen_batch"}, {x.max_seqlen_q, "max_seqlen_q"}, {x.max_seqlen_k, "max_seqlen_k"}};
        for (const auto& z : zeros) {
            if (z.value != 0) {
                invalid(std::string(z.name) + " is " + s(z.value) +
                        " but cu_seqlens_q is NULL; varlen_batch, max_seqlen_q and max_seqlen_k must be 0 for a "
                        "fixed-length batch (set cu_seqlens_q and cu_seqlens_k for a variable-length one)");
            }
        }
    }

    // ---- each tensor on its own ---------------------------------------------------------------
    const bool has_lse = P.lse.data != nullptr;
    Extent q, k, v, o, l{0, 0};
    if (varlen) {
        const char* hint = "; a variable-length batch (cu_seqlens_q set) packs the sequences along one dimension";
        // total_q or total_k may be 0 (every sequence empty); such a tensor's data may be NULL. (An lse
        // with NULL data is absent, as in a fixed-length call.)
        q = check_tensor({P.q, "q", {"total_q", "heads_q", "head_dim", ""}, 3, hint}, TensorKind::Attention, 0);
        k = check_tensor({P.k, "k", {"total_k", "heads_kv", "head_dim", ""}, 3, hint}, TensorKind::Attention, 0);
        v = check_tensor({P.v, "v", {"total_k", "heads_kv", "head_dim", ""}, 3, hint}, TensorKind::Attention, 0);
        o = check_tensor({P.out, "out", {"total_q", "heads_q", "head_dim", ""}, 3, hint}, TensorKind::Attention, 0);
        if (has_lse) {
            l = check_tensor({P.lse, "lse", {"heads_q", "total_q", "", ""}, 2, hint}, TensorKind::Float32, 1);
        }
    } else {
        q = check_tensor({P.q, "q", {"batch", "seqlen_q", "heads_q", "head_dim"}, 4, ""}, TensorKind::Attention);
        k = check_tensor({P.k, "k", {"batch", "seqlen_k", "heads_kv", "head_dim"}, 4, ""}, TensorKind::Attention);
        v = check_tensor({P.v, "v", {"batch", "seqlen_k", "heads_kv", "head_dim"}, 4, ""}, TensorKind::Attention);
        o = check_tensor({P.out, "out", {"batch", "seqlen_q", "heads_q", "head_dim"}, 4, ""}, TensorKind::Attention);
        if (has_lse) {
            l = check_tensor({P.lse, "lse", {"batch", "heads_q", "seqlen_q", ""}, 3, ""}, TensorKind::Float32);
        }
    }

    if (extents != nullptr) {
        *extents = ForwardExtents{q, k, v, o, l};
    }

    // ---- tensors against each other ------------------------------------------------------------
    if (P.k.dtype != P.q.dtype || P.v.dtype != P.q.dtype || P.out.dtype != P.q.dtype) {
        const fa_tensor_t& odd = P.k.dtype != P.q.dtype ? P.k : (P.v.dtype != P.q.dtype ? P.v : P.out);
        const char* odd_name = &odd == &P.k ? "k" : (&odd == &P.v ? "v" : "out");
        invalid(std::string(odd_name) + ".dtype is " + dtype_name(odd.dtype) + " but q.dtype is " +
                dtype_name(P.q.dtype) + "; q, k, v and out must share one dtype");
    }
    // Index of the sequence (or packed rows) dimension; heads and head_dim follow it.
    const int32_t row_dim = varlen ? 0 : 1;
    const int32_t head_dim_index = row_dim + 2;
    const int64_t b = varlen ? x.varlen_batch : P.q.shape[0];
    const int64_t rows_q = P.q.shape[row_dim], hq = P.q.shape[row_dim + 1], d = P.q.shape[head_dim_index];
    const int64_t rows_k = P.k.shape[row_dim], hkv = P.k.shape[row_dim + 1];
    const struct {
        const fa_tensor_t& t;
        const char* name;
    } others[] = {{P.k, "k"}, {P.v, "v"}, {P.out, "out"}};
    for (const auto& other : others) {
        if (other.t.shape[head_dim_index] != d) {
            invalid(std::string(other.name) + ".shape[" + s(head_dim_index) + "] (head_dim) is " +
                    s(other.t.shape[head_dim_index]) + " but q.shape[" + s(head_dim_index) + "] is " + s(d) +
                    "; q, k, v and out must have the same head_dim");
        }
        if (!varlen && other.t.shape[0] != b) {
            invalid(std::string(other.name) + ".shape[0] (batch) is " + s(other.t.shape[0]) +
                    " but q.shape[0] is " + s(b) + "; q, k, v and out must have the same batch");
        }
    }
    if (P.v.shape[row_dim] != rows_k || P.v.shape[row_dim + 1] != hkv) {
        invalid("v.shape is " + shape_string(P.v) + " but k.shape is " + shape_string(P.k) +
                "; k and v must have the same shape");
    }
    if (P.out.shape[row_dim] != rows_q || P.out.shape[row_dim + 1] != hq) {
        invalid("out.shape is " + shape_string(P.out) + " but q.shape is " + shape_string(P.q) +
                "; out must have the shape of q");
    }
    if (hq % hkv != 0) {
        invalid("k has " + s(hkv) + " heads, which does not divide q's " + s(hq) +
                " heads; heads_q must be a multiple of heads_kv (GQA/MQA)");
    }
    if (has_lse) {
        if (varlen && (P.lse.shape[0] != hq || P.lse.shape[1] != rows_q)) {
            invalid("lse.shape is " + shape_string(P.lse) + " but must be [heads_q, total_q] = [" + s(hq) + ", " +
                    s(rows_q) + "] for a variable-length batch");
        }
        if (!varlen && (P.lse.shape[0] != b || P.lse.shape[1] != hq || P.lse.shape[2] != rows_q)) {
            invalid("lse.shape is " + shape_string(P.lse) + " but must be [batch, heads_q, seqlen_q] = [" + s(b) +
                    ", " + s(hq) + ", " + s(rows_q) + "]");
        }
    }

    // ---- scalars -------------------------------------------------------------------------------
    if (!std::isfinite(P.softmax_scale) || P.softmax_scale < 0.0f) {
        invalid("softmax_scale is " + float_string(P.softmax_scale) +
                "; it must be finite and >= 0 (0 means 1/sqrt(head_dim))");
    }
    if (P.causal != 0 && P.causal != 1) {
        invalid("causal is " + s(P.causal) + "; it must be 0 or 1");
    }
    if (P.causal_alignment != FA_CAUSAL_BOTTOM_RIGHT && P.causal_alignment != FA_CAUSAL_TOP_LEFT) {
        invalid("causal_alignment is " + s(P.causal_alignment) +
                "; it must be FA_CAUSAL_BOTTOM_RIGHT (0) or FA_CAUSAL_TOP_LEFT (1)");
    }
    check_kernel_path(P.kernel_path, "kernel_path");
    if (x.window_left < -1) {
        invalid("window_left is " + s(x.window_left) + "; it must be -1 (unbounded) or a number of keys >= 0");
    }
    if (x.window_right < -1) {
        invalid("window_right is " + s(x.window_right) + "; it must be -1 (unbounded) or a number of keys >= 0");
    }
    constexpr double kLog2e = 1.4426950408889634074;
    if (!std::isfinite(x.softcap) || x.softcap < 0.0f) {
        invalid("softcap is " + float_string(x.softcap) + "; it must be finite and >= 0 (0 turns it off)");
    }
    if (static_cast<double>(x.softcap) * kLog2e > static_cast<double>(std::numeric_limits<float>::max())) {
        invalid("softcap is " + float_string(x.softcap) + "; it must be at most " +
                float_string(static_cast<float>(std::numeric_limits<float>::max() / kLog2e)));
    }

    // ---- host copies of cu_seqlens ----------------------------------------------------------------
    if (varlen && x.cu_seqlens_q_host != nullptr) {
        check_host_cu_seqlens(x.cu_seqlens_q_host, "cu_seqlens_q_host", x.varlen_batch, rows_q,
                              "q (q.shape[0], total_q)", x.max_seqlen_q, "max_seqlen_q");
    }
    if (varlen && x.cu_seqlens_k_host != nullptr) {
        check_host_cu_seqlens(x.cu_seqlens_k_host, "cu_seqlens_k_host", x.varlen_batch, rows_k,
                              "k (k.shape[0], total_k)", x.max_seqlen_k, "max_seqlen_k");
    }

    // ---- outputs must not overlap inputs ---------------------------------------------------------
    check_no_overlap(o, "out", q, "q");
    check_no_overlap(o, "out", k, "k");
    check_no_overlap(o, "out", v, "v");
    if (has_lse) {
        check_no_overlap(o, "out", l, "lse");
        check_no_overlap(l, "lse", q, "q");
        check_no_overlap(l, "lse", k, "k");
        check_no_overlap(l, "lse", v, "v");
    }
    if (varlen) {
        const Extent cq = cu_extent(x.cu_seqlens_q, x.varlen_batch, "cu_seqlens_q");
        const Extent ck = cu_extent(x.cu_seqlens_k, x.varlen_batch, "cu_seqlens_k");
        check_no_overlap(o, "out", cq, "cu_seqlens_q");
        check_no_overlap(o, "out", ck, "cu_seqlens_k");
        if (has_lse) {
            check_no_overlap(l, "lse", cq, "cu_seqlens_q");
            check_no_overlap(l, "lse", ck, "cu_seqlens_k");
        }
    }

    // ---- valid; is it served? ------------------------------------------------------------------
    if (d > kInt32Max || !head_dim_served(static_cast<int32_t>(d))) {
        unsupported("q.shape[" + s(head_dim_index) + "] (head_dim) is " + s(d) + "; this build serves head dims " +
                    served_head_dims());
    }
    const struct {
        int64_t value;
        const char* what;
    } sizes[] = {{b, varlen ? "varlen_batch" : "q.shape[0] (batch)"},
                 {rows_q, varlen ? "q.shape[0] (total_q)" : "q.shape[1] (seqlen_q)"},
                 {rows_k, varlen ? "k.shape[0] (total_k)" : "k.shape[1] (seqlen_k)"},
                 {hq, varlen ? "q.shape[1] (heads_q)" : "q.shape[2] (heads_q)"},
                 {hkv, varlen ? "k.shape[1] (heads_kv)" : "k.shape[2] (heads_kv)"}};
    for (const auto& size : sizes) {
        if (size.value > kInt32Max) {
            unsupported(std::string(size.what) + " is " + s(size.value) + "; the largest this build serves is " +
                        s(kInt32Max));
        }
    }
    // The kernels walk a 1-D grid of one block per (sequence, head, 64-row block or more): its size
    // and the block index must stay within int32.
    {
        const int64_t sq = varlen ? static_cast<int64_t>(x.max_seqlen_q) : rows_q;
        const int64_t row_blocks = (sq + 63) / 64;
        if (b * hq > kInt32Max || b * hq * row_blocks > kInt32Max) {
            unsupported(std::string(varlen ? "varlen_batch" : "q.shape[0] (batch)") + " " + s(b) + " x heads_q " +
                        s(hq) + " x " + s(row_blocks) + " row blocks of seqlen_q " + s(sq) +
                        " needs more than 2^31 - 1 blocks; split the call");
        }
    }
    if (compute_capability != 0 && compute_capability < 80) {
        unsupported("compute_capability is " + s(compute_capability) + " (" + s(compute_capability / 10) + "." +
                    s(compute_capability % 10) + "); the kernels need compute capability 8.0 or newer");
    }
    refuse_sm90_path(P.kernel_path, "kernel_path", "the forward");

    // ---- kernel parameters -----------------------------------------------------------------------
    FwdParams p{};
    p.q = P.q.data;
    p.k = P.k.data;
    p.v = P.v.data;
    p.o = P.out.data;
    p.lse = has_lse ? static_cast<float*>(P.lse.data) : nullptr;
    // q, k, v and out are [batch, rows, heads, head_dim], or [total, heads, head_dim] for a variable-length
    // batch, which has no batch stride (the kernels ignore it with cu_seqlens set); row_dim says which.
    p.q_row_stride = P.q.strides[row_dim];
    p.q_head_stride = P.q.strides[row_dim + 1];
    p.k_row_stride = P.k.strides[row_dim];
    p.k_head_stride = P.k.strides[row_dim + 1];
    p.v_row_stride = P.v.strides[row_dim];
    p.v_head_stride = P.v.strides[row_dim + 1];
    p.o_row_stride = P.out.strides[row_dim];
    p.o_head_stride = P.out.strides[row_dim + 1];
    if (!varlen) {
        p.q_batch_stride = P.q.strides[0];
        p.k_batch_stride = P.k.strides[0];
        p.v_batch_stride = P.v.strides[0];
        p.o_batch_stride = P.out.strides[0];
    }
    // The LSE is [batch, heads, rows], or [heads, total] for a variable-length batch.
    if (has_lse) {
        const int32_t lse_head_dim = varlen ? 0 : 1;
        if (!varlen) {
            p.lse_batch_stride = P.lse.strides[0];
        }
        p.lse_head_stride = P.lse.strides[lse_head_dim];
        p.lse_row_stride = P.lse.strides[lse_head_dim + 1];
    }
    if (varlen) {
        p.cu_seqlens_q = x.cu_seqlens_q;
        p.cu_seqlens_k = x.cu_seqlens_k;
        p.total_q = static_cast<int32_t>(rows_q);
        p.total_k = static_cast<int32_t>(rows_k);
        p.sq = x.max_seqlen_q;
        p.sk = x.max_seqlen_k;
    } else {
        p.sq = static_cast<int32_t>(rows_q);
        p.sk = static_cast<int32_t>(rows_k);
    }
    p.b = static_cast<int32_t>(b);
    p.hq = static_cast<int32_t>(hq);
    p.hkv = static_cast<int32_t>(hkv);
    p.d = static_cast<int32_t>(d);
    p.hq_per_hkv = static_cast<int32_t>(hq / hkv);
    const double scale = P.softmax_scale > 0.0f ? static_cast<double>(P.softmax_scale)
                                                : 1.0 / std::sqrt(static_cast<double>(d));
    p.scale = static_cast<float>(scale);
    // With softcap the kernels compute tanh(s * scale / softcap) and run the softmax on softcap times
    // that, so the exp2 multiplier is softcap * log2(e) instead of scale * log2(e).
    p.softcap = x.softcap;
    p.scale_log2 = static_cast<float>((x.softcap > 0.0f ? static_cast<double>(x.softcap) : scale) * kLog2e);
    p.causal = P.causal;
    // The kernels read bottom_right (per sequence); causal_offset is kept for logs (fixed-length only).
    const bool bottom_right = P.causal_alignment == FA_CAUSAL_BOTTOM_RIGHT;
    p.bottom_right = bottom_right ? 1 : 0;
    p.causal_offset = !varlen && P.causal == 1 && bottom_right ? p.sk - p.sq : 0;
    // A window side at least max(seqlen_q, seqlen_k) hides no key of any sequence (every
    // |key - query - offset| is below it), so it is the same as unbounded; passing -1 keeps the kernels'
    // 32-bit bound arithmetic far from overflow (INT32_MAX is a common "no window" value) and lets a
    // non-causal call run the kernel without the local masks.
    const int32_t no_op_window = p.sq > p.sk ? p.sq : p.sk;
    p.window_left = x.window_left >= no_op_window ? -1 : x.window_left;
    // A causal call sees no key right of the diagonal: causal is folded into window_right here, once, so
    // that every kernel reads one right bound (native/kernels/common/mask.cuh).
    p.window_right = P.causal == 1 ? 0 : x.window_right >= no_op_window ? -1 : x.window_right;
    p.dtype = P.q.dtype == FA_DTYPE_BFLOAT16 ? DType::BFloat16 : DType::Float16;
    return p;
}

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

}  // namespace

void check_support_query(const fa_support_query_t& query) {
    // ---- is the query well formed? ----------------------------------------------------------------
    if (query.struct_size < sizeof(fa_support_query_t)) {
        invalid("query->struct_size is " + s(query.struct_size) + " but fa_support_query_t has " +
                s(static_cast<int64_t>(sizeof(fa_support_query_t))) +
                " bytes in this library: set it to sizeof(fa_support_query_t)");
    }
    if (query.pass != FA_PASS_FORWARD && query.pass != FA_PASS_BACKWARD && query.pass != FA_PASS_DECODE) {
        invalid("query->pass is " + s(query.pass) +
                "; it must be FA_PASS_FORWARD (0), FA_PASS_BACKWARD (1) or FA_PASS_DECODE (2)");
    }
    if (query.compute_capability < 0) {
        invalid("query->compute_capability is " + s(query.compute_capability) +
                "; pass major*10+minor of the target GPU (e.g. 90) or 0 for any GPU");
    }
    if (dtype_size(query.dtype) == 0) {
        invalid("query->dtype is " + s(query.dtype) + "; it must be an fa_dtype_t value");
    }
    if (query.head_dim < 1) {
        invalid("query->head_dim is " + s(query.head_dim) + "; it must be at least 1");
    }
    const struct {
        int32_t value;
        const char* name;
    } flags[] = {{query.causal, "causal"},
                 {query.window, "window"},
                 {query.softcap, "softcap"},
                 {query.varlen, "varlen"}};
    for (const auto& flag : flags) {
        if (flag.value != 0 && flag.value != 1) {
            invalid(std::string("query->") + flag.name + " is " + s(flag.value) + "; it must be 0 or 1");
        }
    }
    check_kernel_path(query.kernel_path, "query->kernel_path");

    // ---- is it served? ------------------------------------------------------------------------
    if (query.pass == FA_PASS_DECODE && query.varlen == 1) {
        unsupported("decode has no variable-length batch; cache_seqlens gives every sequence its own length");
    }
    if (query.dtype != FA_DTYPE_FLOAT16 && query.dtype != FA_DTYPE_BFLOAT16) {
        unsupported(std::string("query->dtype is ") + dtype_name(query.dtype) +
                    "; the forward serves FA_DTYPE_FLOAT16 and FA_DTYPE_BFLOAT16 for q, k and v");
    }
    if (!head_dim_served(query.head_dim)) {
        unsupported("query->head_dim is " + s(query.head_dim) + "; this build serves head dims " + served_head_dims());
    }
    if (query.compute_capability != 0 && query.compute_capability < 80) {
        unsupported("query->compute_capability is " + s(query.compute_capability) + " (" +
                    s(query.compute_capability / 10) + "." + s(query.compute_capability % 10) +
                    "); the kernels need compute capability 8.0 or newer");
    }
    if (query.pass != FA_PASS_BACKWARD) refuse_sm90_path(query.kernel_path, "query->kernel_path", "");
    // FA_PATH_SM90 where it does not serve: UNSUPPORTED, saying why (dispatch.cpp chooses the path).
    const Pass pass = query.pass == FA_PASS_FORWARD ? Pass::Forward : query.pass == FA_PASS_BACKWARD ? Pass::Backward : Pass::Decode;
    (void)choose_path(pass, query.kernel_path, query.head_dim, query.compute_capability, -1, "query->kernel_path");
    if (query.pass != FA_PASS_FORWARD && query.compute_capability != 0) {
        // The backward and decode kernels take more shared memory than some GPUs allow a block (fa_backward
        // and fa_decode report the same from the device's own limit). AUTO runs the sm90 backward where it serves.
        const bool backward = query.pass == FA_PASS_BACKWARD;
        const int32_t need = smem_need(pass, query.kernel_path, kernel_head_dim(query.head_dim), query.compute_capability);
        const int32_t allow = smem_optin_for(query.compute_capability);
        if (allow > 0 && need > allow) {
            unsupported(std::string("the ") + (backward ? "backward" : "decode") + " kernel for head dim " + s(query.head_dim) + " needs " + s(need) +
                        " bytes of shared memory per block, but compute capability " + s(query.compute_capability / 10) +
                        "." + s(query.compute_capability % 10) + " allows " + s(allow));
        }
    }
    // Causal masks, sliding windows, softcap and variable-length batches are served by every kernel of
    // this build (sm80 path, any compute capability >= 8.0).
}

// ---- backward ------------------------------------------------------------------------------------

BwdParams validate_backward(const fa_backward_params_t* params, int32_t compute_capability, bool check_workspace,
                            size_t* workspace_bytes) {
    if (params == nullptr) {
        invalid("params is NULL");
    }
    if (params->struct_size < sizeof(fa_backward_params_t)) {
        invalid("params->struct_size is " + s(params->struct_size) + " but fa_backward_params_t has " +
                s(static_cast<int64_t>(sizeof(fa_backward_params_t))) +
                " bytes in this library: fill params with fa_backward_params_init");
    }
    const fa_backward_params_t& P = *params;
    if (P.reserved0 != 0) {
        invalid("params->reserved0 is " + s(P.reserved0) + "; it is reserved and must be 0");
    }
    if (P.reserved1 != 0) {
        invalid("params->reserved1 is " + s(P.reserved1) + "; it is reserved and must be 0");
    }
    if (P.lse.data == nullptr) {
        invalid("lse.data is NULL; the backward pass needs the log-sum-exp the forward call wrote");
    }

    // The forward call's arguments, checked as fa_forward checks them. An UNSUPPORTED verdict waits
    // until every argument of the backward call has been checked, so a wrong argument is reported first.
    fa_forward_params_t F;
    std::memset(&F, 0, sizeof(F));
    F.struct_size = sizeof(F);
    F.q = P.q;
    F.k = P.k;
    F.v = P.v;
    F.out = P.out;
    F.lse = P.lse;
    F.softmax_scale = P.softmax_scale;
    F.causal = P.causal;
    F.causal_alignment = P.causal_alignment;
    // FA_PATH_SM90 is a backward-only path: the forward's checks see AUTO; the sm90 verdict is below.
    F.kernel_path = P.kernel_path == FA_PATH_SM90 ? FA_PATH_AUTO : P.kernel_path;
    F.window_left = P.window_left;
    F.window_right = P.window_right;
    F.softcap = P.softcap;
    F.cu_seqlens_q = P.cu_seqlens_q;
    F.cu_seqlens_k = P.cu_seqlens_k;
    F.cu_seqlens_q_host = P.cu_seqlens_q_host;
    F.cu_seqlens_k_host = P.cu_seqlens_k_host;
    F.varlen_batch = P.varlen_batch;
    F.max_seqlen_q = P.max_seqlen_q;
    F.max_seqlen_k = P.max_seqlen_k;
    FwdParams f{};
    ForwardExtents fe{};
    bool served = true;
    std::string unserved;
    try {
        f = validate_forward(&F, compute_capability, &fe);
    } catch (const Error& e) {
        if (e.status() != FA_STATUS_UNSUPPORTED) throw;
        served = false;
        unserved = e.what();
    }

    // ---- the gradient tensors -----------------------------------------------------------------------
    const bool varlen = P.cu_seqlens_q != nullptr;
    const char* hint = varlen ? "; a variable-length batch (cu_seqlens_q set) packs the sequences along one dimension" : "";
    const int32_t rank = varlen ? 3 : 4;
    const int32_t empty_dim = varlen ? 0 : -1;
    const char* q_dims[4] = {"batch", "seqlen_q", "heads_q", "head_dim"};
    const char* k_dims[4] = {"batch", "seqlen_k", "heads_kv", "head_dim"};
    const char* q_dims_v[4] = {"total_q", "heads_q", "head_dim", ""};
    const char* k_dims_v[4] = {"total_k", "heads_kv", "head_dim", ""};
    const char* const* qd = varlen ? q_dims_v : q_dims;
    const char* const* kd = varlen ? k_dims_v : k_dims;
    struct Grad {
        const fa_tensor_t& t;
        const char* name;
        const fa_tensor_t& like;
        const char* like_name;
        bool query_side;
    } grads[] = {{P.dout, "dout", P.out, "out", true},
                 {P.dq, "dq", P.q, "q", true},
                 {P.dk, "dk", P.k, "k", false},
                 {P.dv, "dv", P.v, "v", false}};
    Extent ext[4];
    for (int i = 0; i < 4; ++i) {
        const Grad& g = grads[i];
        const char* const* dims = g.query_side ? qd : kd;
        ext[i] = check_tensor({g.t, g.name, {dims[0], dims[1], dims[2], dims[3]}, rank, hint}, TensorKind::Attention, empty_dim);
        if (g.t.dtype != P.q.dtype) {
            invalid(std::string(g.name) + ".dtype is " + dtype_name(g.t.dtype) + " but q.dtype is " +
                    dtype_name(P.q.dtype) + "; dout, dq, dk and dv must have the dtype of q");
        }
        for (int32_t dim = 0; dim < rank; ++dim) {
            if (g.t.shape[dim] != g.like.shape[dim]) {
                invalid(std::string(g.name) + ".shape is " + shape_string(g.t) + " but " + g.like_name + ".shape is " +
                        shape_string(g.like) + "; " + g.name + " must have the shape of " + g.like_name);
            }
        }
    }
    if (P.deterministic != 0 && P.deterministic != 1) {
        invalid("deterministic is " + s(P.deterministic) + "; it must be 0 or 1");
    }

    // Written tensors must not overlap each other or anything read.
    struct Named {
        Extent e;
        const char* name;
    };
    std::vector<Named> read = {{fe.q, "q"}, {fe.k, "k"}, {fe.v, "v"}, {fe.out, "out"}, {ext[0], "dout"}, {fe.lse, "lse"}};
    if (varlen) {
        read.push_back({cu_extent(P.cu_seqlens_q, P.varlen_batch, "cu_seqlens_q"), "cu_seqlens_q"});
        read.push_back({cu_extent(P.cu_seqlens_k, P.varlen_batch, "cu_seqlens_k"), "cu_seqlens_k"});
    }
    const Named written[] = {{ext[1], "dq"}, {ext[2], "dk"}, {ext[3], "dv"}};
    for (int i = 0; i < 3; ++i) {
        for (const Named& r : read) check_no_overlap(written[i].e, written[i].name, r.e, r.name);
        for (int j = 0; j < i; ++j) check_no_overlap(written[i].e, written[i].name, written[j].e, written[j].name);
    }

    if (!served) {
        unsupported(unserved);
    }
    (void)choose_path(Pass::Backward, P.kernel_path, f.d, compute_capability, -1, "kernel_path");
    if (compute_capability != 0 && P.kernel_path != FA_PATH_SM90) {
        const int32_t need = smem_need(Pass::Backward, P.kernel_path, kernel_head_dim(f.d), compute_capability);
        const int32_t allow = smem_optin_for(compute_capability);
        if (allow > 0 && need > allow) {
            unsupported("the backward kernel for head dim " + s(f.d) + " needs " + s(need) +
                        " bytes of shared memory per block, but compute capability " + s(compute_capability / 10) + "." +
                        s(compute_capability % 10) + " allows " + s(allow));
        }
    }
    // No sequence of a variable-length batch is longer than the packed rows, so larger maxima only add
    // empty blocks (and could push the grids past 32 bits).
    if (varlen) {
        f.sq = f.sq < f.total_q ? f.sq : f.total_q;
        f.sk = f.sk < f.total_k ? f.sk : f.total_k;
    }
    {
        // Grids of the three kernels: key blocks x batch x kv heads; row blocks / row chunks x (batch x) heads.
        const int32_t block_n = kernels::bwd_block_n(Path::Sm80, kernel_head_dim(f.d));  // the same on sm90
        const int64_t n_blocks = (static_cast<int64_t>(f.sk) + block_n - 1) / block_n;
        const int64_t heads = varlen ? f.hq : static_cast<int64_t>(f.b) * f.hq;
        const int64_t rows = varlen ? f.total_q : f.sq;
        const int64_t grids[] = {n_blocks * f.b * f.hkv, heads * ((rows + 31) / 32), heads * ((rows * (f.d / 8) + 255) / 256)};
        for (const int64_t g : grids) {
            if (g > kInt32Max) {
                unsupported("this backward call needs a grid of " + s(g) +
                            " blocks, more than 2^31 - 1; split the batch or the heads over several calls");
            }
        }
    }

    BwdParams p{};
    p.f = f;
    p.dout = P.dout.data;
    p.dq = P.dq.data;
    p.dk = P.dk.data;
    p.dv = P.dv.data;
    const int32_t row_dim = varlen ? 0 : 1;
    p.do_row_stride = P.dout.strides[row_dim];
    p.do_head_stride = P.dout.strides[row_dim + 1];
    p.dq_row_stride = P.dq.strides[row_dim];
    p.dq_head_stride = P.dq.strides[row_dim + 1];
    p.dk_row_stride = P.dk.strides[row_dim];
    p.dk_head_stride = P.dk.strides[row_dim + 1];
    p.dv_row_stride = P.dv.strides[row_dim];
    p.dv_head_stride = P.dv.strides[row_dim + 1];
    if (!varlen) {
        p.do_batch_stride = P.dout.strides[0];
        p.dq_batch_stride = P.dq.strides[0];
        p.dk_batch_stride = P.dk.strides[0];
        p.dv_batch_stride = P.dv.strides[0];
    }
    p.deterministic = P.deterministic;
    p.kernel_d = kernel_head_dim(f.d);
    p.q_slots = varlen ? static_cast<int64_t>(f.hq) * f.total_q : static_cast<int64_t>(f.b) * f.hq * f.sq;

    const BwdWorkspaceLayout ws = bwd_workspace_layout(f, p.kernel_d, P.deterministic != 0);
    if (workspace_bytes != nullptr) *workspace_bytes = ws.total;
    if (check_workspace && P.workspace != nullptr) {
        if (reinterpret_cast<uintptr_t>(P.workspace) % FA_WORKSPACE_ALIGNMENT != 0) {
            invalid("workspace (" + hex(P.workspace) + ") is not " + s(FA_WORKSPACE_ALIGNMENT) + "-byte aligned");
        }
        if (P.workspace_size < ws.total) {
            invalid("workspace_size is " + s(static_cast<int64_t>(P.workspace_size)) + " bytes but this call needs " +
                    s(static_cast<int64_t>(ws.total)) + " (ask fa_backward_workspace_size), or pass workspace NULL");
        }
        const uintptr_t begin = reinterpret_cast<uintptr_t>(P.workspace);
        const Extent w{begin, begin + ws.total};
        for (const Named& r : read) check_no_overlap(w, "workspace", r.e, r.name);
        for (const Named& r : written) check_no_overlap(w, "workspace", r.e, r.name);
    }
    return p;
}

void check_backward_params_size(size_t struct_size) {
    if (struct_size < sizeof(fa_backward_params_t) || struct_size > UINT32_MAX) {
        invalid("struct_size is " + s(static_cast<int64_t>(struct_size)) + "; pass sizeof(fa_backward_params_t) (" +
                s(static_cast<int64_t>(sizeof(fa_backward_params_t))) + " in this version)");
    }
}

}  // namespace fa
