// Validation of fa_forward_params_t and translation into fa::FwdParams.
//
// Order: every INVALID_ARGUMENT check first (structure, each tensor on its own, then tensors against
// each other, then scalars, then memory overlap), then the UNSUPPORTED checks (head dim, sizes the
// kernels index with 32 bits, compute capability). So a call that is wrong in several ways reports a
// wrong argument before it reports something this build does not serve.
#include "validate.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "error.h"

namespace fa {

namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
// Row, head and batch strides must be multiples of this many 16-bit elements (16 bytes).
constexpr int64_t kStrideMultiple = FA_ALIGNMENT_BYTES / 2;
// Largest head dim asked of the dispatcher when listing the served ones.
constexpr int32_t kMaxProbedHeadDim = 1024;

std::string s(int64_t value) {
    return std::to_string(value);
}

std::string hex(const void* pointer) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "0x%" PRIxPTR, reinterpret_cast<uintptr_t>(pointer));
    return buffer;
}

const char* dtype_name(int32_t dtype) {
    switch (dtype) {
        case FA_DTYPE_FLOAT16: return "FA_DTYPE_FLOAT16";
        case FA_DTYPE_BFLOAT16: return "FA_DTYPE_BFLOAT16";
        case FA_DTYPE_FLOAT32: return "FA_DTYPE_FLOAT32";
        case FA_DTYPE_INT32: return "FA_DTYPE_INT32";
        default: return "an unknown dtype";
    }
}

int64_t dtype_size(int32_t dtype) {
    switch (dtype) {
        case FA_DTYPE_FLOAT16:
        case FA_DTYPE_BFLOAT16: return 2;
        case FA_DTYPE_FLOAT32:
        case FA_DTYPE_INT32: return 4;
        default: return 0;
    }
}

std::string shape_string(const fa_tensor_t& t) {
    std::string out = "[";
    for (int32_t i = 0; i < t.rank && i < FA_MAX_RANK; ++i) {
        if (i > 0) {
            out += ", ";
        }
        out += s(t.shape[i]);
    }
    return out + "]";
}

[[noreturn]] void invalid(const std::string& message) {
    fail(FA_STATUS_INVALID_ARGUMENT, message);
}

[[noreturn]] void unsupported(const std::string& message) {
    fail(FA_STATUS_UNSUPPORTED, message);
}

// One tensor argument and the names of its dimensions, for messages.
struct TensorArg {
    const fa_tensor_t& t;
    const char* name;          // "q"
    const char* dim_names[4];  // "batch", "seqlen_q", ...
    int32_t rank;              // required rank
};

// Byte range [begin, end) that a tensor's elements occupy, computed without overflow.
struct Extent {
    uintptr_t begin;
    uintptr_t end;
};

// Checks what one tensor must satisfy on its own; returns the byte range it spans.
Extent check_tensor(const TensorArg& a, bool attention_input) {
    const fa_tensor_t& t = a.t;
    const std::string n = a.name;
    if (t.data == nullptr) {
        invalid(n + ".data is NULL");
    }
    if (attention_input) {
        if (t.dtype != FA_DTYPE_FLOAT16 && t.dtype != FA_DTYPE_BFLOAT16) {
            invalid(n + ".dtype is " + s(t.dtype) + " (" + dtype_name(t.dtype) + "); " + n +
                    " must be FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16");
        }
    } else if (t.dtype != FA_DTYPE_FLOAT32) {
        invalid(n + ".dtype is " + s(t.dtype) + " (" + dtype_name(t.dtype) + "); " + n +
                " must be FA_DTYPE_FLOAT32");
    }
    if (t.rank != a.rank) {
        std::string layout = "[";
        for (int32_t i = 0; i < a.rank; ++i) {
            layout += (i > 0 ? ", " : "") + std::string(a.dim_names[i]);
        }
        invalid(n + ".rank is " + s(t.rank) + "; " + n + " must have rank " + s(a.rank) + " " + layout + "]");
    }
    for (int32_t i = 0; i < a.rank; ++i) {
        if (t.shape[i] < 1) {
            invalid(n + ".shape[" + s(i) + "] (" + a.dim_names[i] + ") is " + s(t.shape[i]) +
                    "; it must be at least 1");
        }
    }
    const int32_t last = a.rank - 1;
    if (attention_input && t.strides[last] != 1) {
        invalid(n + ".strides[" + s(last) + "] is " + s(t.strides[last]) + "; the last dimension (" +
                a.dim_names[last] + ") must be contiguous (stride 1)");
    }
    for (int32_t i = 0; i < a.rank; ++i) {
        if (t.strides[i] < 1) {
            invalid(n + ".strides[" + s(i) + "] (" + a.dim_names[i] + ") is " + s(t.strides[i]) +
                    "; strides must be positive");
        }
    }
    if (attention_input) {
        for (int32_t i = 0; i < last; ++i) {
            if (t.strides[i] % kStrideMultiple != 0) {
                invalid(n + ".strides[" + s(i) + "] (" + a.dim_names[i] + ") is " + s(t.strides[i]) +
                        "; the batch, seqlen and heads strides must be multiples of " + s(kStrideMultiple) +
                        " elements (16 bytes) so that every row starts 16-byte aligned");
            }
        }
    }
    const int64_t elem = dtype_size(t.dtype);
    const uintptr_t address = reinterpret_cast<uintptr_t>(t.data);
    const int64_t alignment = attention_input ? FA_ALIGNMENT_BYTES : elem;
    if (address % static_cast<uintptr_t>(alignment) != 0) {
        invalid(n + ".data (" + hex(t.data) + ") is not " + s(alignment) + "-byte aligned");
    }

    // Offset of the last element, then the byte count, each step checked against int64 overflow.
    const int64_t max = std::numeric_limits<int64_t>::max();
    int64_t last_offset = 0;
    for (int32_t i = 0; i < a.rank; ++i) {
        const int64_t extent = t.shape[i] - 1;  // >= 0
        if (extent != 0 && t.strides[i] > max / extent) {
            invalid(n + " is too large: shape " + shape_string(t) + " with strides[" + s(i) + "] = " +
                    s(t.strides[i]) + " spans more than 2^63 elements");
        }
        const int64_t term = extent * t.strides[i];
        if (last_offset > max - term) {
            invalid(n + " is too large: shape " + shape_string(t) + " and its strides span more than 2^63 elements");
        }
        last_offset += term;
    }
    if (last_offset > max / elem - 1) {
        invalid(n + " is too large: shape " + shape_string(t) + " and its strides span more than 2^63 bytes");
    }
    const uint64_t bytes = static_cast<uint64_t>((last_offset + 1) * elem);
    if (address > std::numeric_limits<uintptr_t>::max() - bytes) {
        invalid(n + ".data (" + hex(t.data) + ") plus the " + s(static_cast<int64_t>(bytes)) +
                " bytes its shape and strides span runs past the end of the address space");
    }
    return Extent{address, address + static_cast<uintptr_t>(bytes)};
}

bool overlaps(const Extent& a, const Extent& b) {
    return a.begin < b.end && b.begin < a.end;
}

void check_no_overlap(const Extent& written, const char* written_name, const Extent& other, const char* other_name) {
    if (overlaps(written, other)) {
        invalid(std::string(written_name) + " (bytes " + hex(reinterpret_cast<void*>(written.begin)) + ".." +
                hex(reinterpret_cast<void*>(written.end)) + ") overlaps " + other_name + " (bytes " +
                hex(reinterpret_cast<void*>(other.begin)) + ".." + hex(reinterpret_cast<void*>(other.end)) +
                "); " + written_name + " must not share memory with q, k, v" +
                (std::string(written_name) == "out" ? " or lse" : " or out"));
    }
}

}  // namespace

std::string served_head_dims() {
    std::vector<int32_t> dims;
    for (int32_t d = 1; d <= kMaxProbedHeadDim; ++d) {
        if (forward_head_dim_compiled(d)) {
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
    const int32_t* kernels = nullptr;
    const int32_t count = forward_compiled_head_dims(&kernels);
    if (count > 0 && kernels != nullptr) {
        list += " (kernels for ";
        for (int32_t k = 0; k < count; ++k) {
            list += (k > 0 ? ", " : "") + s(kernels[k]);
        }
        list += "; FA_HEAD_DIMS picks them at build time)";
    }
    return list;
}

std::string describe(const FwdParams& p) {
    return "b=" + s(p.b) + " sq=" + s(p.sq) + " sk=" + s(p.sk) + " hq=" + s(p.hq) + " hkv=" + s(p.hkv) +
           " d=" + s(p.d) + (p.dtype == DType::BFloat16 ? " bf16" : " fp16") +
           (p.causal != 0 ? " causal(offset " + s(p.causal_offset) + ")" : std::string(" non-causal")) +
           (p.lse != nullptr ? " +lse" : "");
}

FwdParams validate_forward(const fa_forward_params_t* params, int32_t compute_capability) {
    // ---- the struct itself ----------------------------------------------------------------------
    if (params == nullptr) {
        invalid("params is NULL");
    }
    // Only the fields of v0.1 are read; a larger struct_size (a newer caller) is accepted.
    if (params->struct_size < sizeof(fa_forward_params_t)) {
        invalid("params->struct_size is " + s(params->struct_size) + " but fa_forward_params_t has " +
                s(static_cast<int64_t>(sizeof(fa_forward_params_t))) +
                " bytes in this library: fill params with fa_forward_params_init");
    }
    if (params->reserved0 != 0) {
        invalid("params->reserved0 is " + s(params->reserved0) + "; it is reserved and must be 0");
    }
    if (compute_capability < 0) {
        invalid("compute_capability is " + s(compute_capability) +
                "; pass major*10+minor of the target GPU (e.g. 90) or 0 for any GPU");
    }

    // ---- each tensor on its own ---------------------------------------------------------------
    const fa_forward_params_t& P = *params;
    const Extent q = check_tensor({P.q, "q", {"batch", "seqlen_q", "heads_q", "head_dim"}, 4}, true);
    const Extent k = check_tensor({P.k, "k", {"batch", "seqlen_k", "heads_kv", "head_dim"}, 4}, true);
    const Extent v = check_tensor({P.v, "v", {"batch", "seqlen_k", "heads_kv", "head_dim"}, 4}, true);
    const Extent o = check_tensor({P.out, "out", {"batch", "seqlen_q", "heads_q", "head_dim"}, 4}, true);
    const bool has_lse = P.lse.data != nullptr;
    Extent l{0, 0};
    if (has_lse) {
        l = check_tensor({P.lse, "lse", {"batch", "heads_q", "seqlen_q", ""}, 3}, false);
    }

    // ---- tensors against each other ------------------------------------------------------------
    if (P.k.dtype != P.q.dtype || P.v.dtype != P.q.dtype || P.out.dtype != P.q.dtype) {
        const fa_tensor_t& odd = P.k.dtype != P.q.dtype ? P.k : (P.v.dtype != P.q.dtype ? P.v : P.out);
        const char* odd_name = &odd == &P.k ? "k" : (&odd == &P.v ? "v" : "out");
        invalid(std::string(odd_name) + ".dtype is " + dtype_name(odd.dtype) + " but q.dtype is " +
                dtype_name(P.q.dtype) + "; q, k, v and out must share one dtype");
    }
    const int64_t b = P.q.shape[0], sq = P.q.shape[1], hq = P.q.shape[2], d = P.q.shape[3];
    const int64_t sk = P.k.shape[1], hkv = P.k.shape[2];
    const struct {
        const fa_tensor_t& t;
        const char* name;
    } others[] = {{P.k, "k"}, {P.v, "v"}, {P.out, "out"}};
    for (const auto& other : others) {
        if (other.t.shape[3] != d) {
            invalid(std::string(other.name) + ".shape[3] (head_dim) is " + s(other.t.shape[3]) +
                    " but q.shape[3] is " + s(d) + "; q, k, v and out must have the same head_dim");
        }
        if (other.t.shape[0] != b) {
            invalid(std::string(other.name) + ".shape[0] (batch) is " + s(other.t.shape[0]) +
                    " but q.shape[0] is " + s(b) + "; q, k, v and out must have the same batch");
        }
    }
    if (P.v.shape[1] != sk || P.v.shape[2] != hkv) {
        invalid("v.shape is " + shape_string(P.v) + " but k.shape is " + shape_string(P.k) +
                "; k and v must have the same shape");
    }
    if (P.out.shape[1] != sq || P.out.shape[2] != hq) {
        invalid("out.shape is " + shape_string(P.out) + " but q.shape is " + shape_string(P.q) +
                "; out must have the shape of q");
    }
    if (hq % hkv != 0) {
        invalid("k has " + s(hkv) + " heads, which does not divide q's " + s(hq) +
                " heads; heads_q must be a multiple of heads_kv (GQA/MQA)");
    }
    if (has_lse && (P.lse.shape[0] != b || P.lse.shape[1] != hq || P.lse.shape[2] != sq)) {
        invalid("lse.shape is " + shape_string(P.lse) + " but must be [batch, heads_q, seqlen_q] = [" + s(b) +
                ", " + s(hq) + ", " + s(sq) + "]");
    }

    // ---- scalars -------------------------------------------------------------------------------
    if (!std::isfinite(P.softmax_scale) || P.softmax_scale < 0.0f) {
        char value[32];
        std::snprintf(value, sizeof(value), "%g", static_cast<double>(P.softmax_scale));
        invalid(std::string("softmax_scale is ") + value +
                "; it must be finite and >= 0 (0 means 1/sqrt(head_dim))");
    }
    if (P.causal != 0 && P.causal != 1) {
        invalid("causal is " + s(P.causal) + "; it must be 0 or 1");
    }
    if (P.causal_alignment != FA_CAUSAL_BOTTOM_RIGHT && P.causal_alignment != FA_CAUSAL_TOP_LEFT) {
        invalid("causal_alignment is " + s(P.causal_alignment) +
                "; it must be FA_CAUSAL_BOTTOM_RIGHT (0) or FA_CAUSAL_TOP_LEFT (1)");
    }
    if (P.kernel_path != FA_PATH_AUTO && P.kernel_path != FA_PATH_SM80) {
        invalid("kernel_path is " + s(P.kernel_path) + "; it must be FA_PATH_AUTO (0) or FA_PATH_SM80 (1)");
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

    // ---- valid; is it served? ------------------------------------------------------------------
    if (d > kInt32Max || !forward_head_dim_compiled(static_cast<int32_t>(d))) {
        unsupported("q.shape[3] (head_dim) is " + s(d) + "; this build serves head dims " + served_head_dims());
    }
    const struct {
        int64_t value;
        const char* what;
    } sizes[] = {{b, "q.shape[0] (batch)"},  {sq, "q.shape[1] (seqlen_q)"}, {sk, "k.shape[1] (seqlen_k)"},
                 {hq, "q.shape[2] (heads_q)"}, {hkv, "k.shape[2] (heads_kv)"}};
    for (const auto& size : sizes) {
        if (size.value > kInt32Max) {
            unsupported(std::string(size.what) + " is " + s(size.value) + "; the largest this build serves is " +
                        s(kInt32Max));
        }
    }
    // The kernels launch one CTA column per (head, batch): grid y and z stop at 65535.
    if (hq > 65535) unsupported("q.shape[2] (heads_q) is " + s(hq) + "; the kernels serve at most 65535 heads");
    if (b > 65535) unsupported("q.shape[0] (batch) is " + s(b) + "; the kernels serve at most 65535 sequences");
    if (compute_capability != 0 && compute_capability < 80) {
        unsupported("compute_capability is " + s(compute_capability) + " (" + s(compute_capability / 10) + "." +
                    s(compute_capability % 10) + "); the kernels need compute capability 8.0 or newer");
    }

    // ---- kernel parameters -----------------------------------------------------------------------
    FwdParams p{};
    p.q = P.q.data;
    p.k = P.k.data;
    p.v = P.v.data;
    p.o = P.out.data;
    p.lse = has_lse ? static_cast<float*>(P.lse.data) : nullptr;
    p.q_batch_stride = P.q.strides[0];
    p.q_row_stride = P.q.strides[1];
    p.q_head_stride = P.q.strides[2];
    p.k_batch_stride = P.k.strides[0];
    p.k_row_stride = P.k.strides[1];
    p.k_head_stride = P.k.strides[2];
    p.v_batch_stride = P.v.strides[0];
    p.v_row_stride = P.v.strides[1];
    p.v_head_stride = P.v.strides[2];
    p.o_batch_stride = P.out.strides[0];
    p.o_row_stride = P.out.strides[1];
    p.o_head_stride = P.out.strides[2];
    if (has_lse) {
        p.lse_batch_stride = P.lse.strides[0];
        p.lse_head_stride = P.lse.strides[1];
        p.lse_row_stride = P.lse.strides[2];
    }
    p.b = static_cast<int32_t>(b);
    p.sq = static_cast<int32_t>(sq);
    p.sk = static_cast<int32_t>(sk);
    p.hq = static_cast<int32_t>(hq);
    p.hkv = static_cast<int32_t>(hkv);
    p.d = static_cast<int32_t>(d);
    p.hq_per_hkv = static_cast<int32_t>(hq / hkv);
    const double scale = P.softmax_scale > 0.0f ? static_cast<double>(P.softmax_scale)
                                                : 1.0 / std::sqrt(static_cast<double>(d));
    p.scale = static_cast<float>(scale);
    p.scale_log2 = static_cast<float>(scale * 1.4426950408889634074);  // log2(e)
    p.causal = P.causal;
    // The kernels read bottom_right (per sequence); causal_offset is kept for logs.
    const bool bottom_right = P.causal_alignment == FA_CAUSAL_BOTTOM_RIGHT;
    p.bottom_right = bottom_right ? 1 : 0;
    p.causal_offset = P.causal == 1 && bottom_right ? static_cast<int32_t>(sk - sq) : 0;
    // No sliding window, no softcap, fixed-length batch (the v0.1 ABI has none of them).
    p.window_left = -1;
    p.window_right = -1;
    p.softcap = 0.0f;
    p.cu_seqlens_q = nullptr;
    p.cu_seqlens_k = nullptr;
    p.dtype = P.q.dtype == FA_DTYPE_BFLOAT16 ? DType::BFloat16 : DType::Float16;
    return p;
}

}  // namespace fa
