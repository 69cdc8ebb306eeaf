// See validate_common.h.
#include "validate_common.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <vector>

#include "dispatch.h"
#include "error.h"

namespace fa {
namespace validation {

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
        case FA_DTYPE_FLOAT8_E4M3: return "FA_DTYPE_FLOAT8_E4M3";
        case FA_DTYPE_UINT8: return "FA_DTYPE_UINT8";
        default: return "an unknown dtype";
    }
}

int64_t dtype_size(int32_t dtype) {
    switch (dtype) {
        case FA_DTYPE_FLOAT8_E4M3:
        case FA_DTYPE_UINT8: return 1;
        case FA_DTYPE_FLOAT16:
        case FA_DTYPE_BFLOAT16: return 2;
        case FA_DTYPE_FLOAT32:
        case FA_DTYPE_INT32: return 4;
        default: return 0;
    }
}

int64_t stride_multiple(int32_t dtype) {
    const int64_t elem = dtype_size(dtype);
    return elem > 0 ? FA_ALIGNMENT_BYTES / elem : kStrideMultiple;
}

int64_t head_dim_multiple(int32_t dtype) {
    return dtype == FA_DTYPE_FLOAT8_E4M3 ? kFp8HeadDimMultiple : kHeadDimMultiple;
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

std::string float_string(float value) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%g", static_cast<double>(value));
    return buffer;
}

[[noreturn]] void invalid(const std::string& message) {
    fail(FA_STATUS_INVALID_ARGUMENT, message);
}

[[noreturn]] void unsupported(const std::string& message) {
    fail(FA_STATUS_UNSUPPORTED, message);
}

Extent check_tensor(const TensorArg& a, TensorKind kind, int32_t may_be_empty) {
    // Attention data: fp16/bf16 (and fp8 for AttentionInput), last dimension contiguous, 16-byte rows.
    const bool attention_input = kind == TensorKind::Attention || kind == TensorKind::AttentionInput;
    const fa_tensor_t& t = a.t;
    // The name as a std::string, for messages: built only when a check fails (this runs on every call).
    const auto n = [&a] { return std::string(a.name); };
    const bool empty = may_be_empty >= 0 && t.rank == a.rank && t.shape[may_be_empty] == 0;
    if (t.data == nullptr && !empty) {
        invalid(n() + ".data is NULL");
    }
    if (kind == TensorKind::AttentionInput) {
        if (t.dtype != FA_DTYPE_FLOAT16 && t.dtype != FA_DTYPE_BFLOAT16 && t.dtype != FA_DTYPE_FLOAT8_E4M3) {
            invalid(n() + ".dtype is " + s(t.dtype) + " (" + dtype_name(t.dtype) + "); " + n() +
                    " must be FA_DTYPE_FLOAT16, FA_DTYPE_BFLOAT16 or (forward only) FA_DTYPE_FLOAT8_E4M3");
        }
    } else if (attention_input) {
        if (t.dtype != FA_DTYPE_FLOAT16 && t.dtype != FA_DTYPE_BFLOAT16) {
            invalid(n() + ".dtype is " + s(t.dtype) + " (" + dtype_name(t.dtype) + "); " + n() +
                    " must be FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16");
        }
    } else {
        const int32_t want = kind == TensorKind::Int32   ? FA_DTYPE_INT32
                             : kind == TensorKind::UInt8 ? FA_DTYPE_UINT8
                                                         : FA_DTYPE_FLOAT32;
        if (t.dtype != want) {
            invalid(n() + ".dtype is " + s(t.dtype) + " (" + dtype_name(t.dtype) + "); " + n() + " must be " +
                    dtype_name(want));
        }
    }
    if (t.rank != a.rank) {
        std::string layout = "[";
        for (int32_t i = 0; i < a.rank; ++i) {
            layout += (i > 0 ? ", " : "") + std::string(a.dim_names[i]);
        }
        invalid(n() + ".rank is " + s(t.rank) + "; " + n() + " must have rank " + s(a.rank) + " " + layout + "]" +
                a.rank_hint);
    }
    for (int32_t i = 0; i < a.rank; ++i) {
        if (i == may_be_empty && t.shape[i] == 0) {
            continue;
        }
        if (t.shape[i] < 1) {
            invalid(n() + ".shape[" + s(i) + "] (" + a.dim_names[i] + ") is " + s(t.shape[i]) +
                    "; it must be at least " + (i == may_be_empty ? "0" : "1"));
        }
    }
    const int32_t last = a.rank - 1;
    if (attention_input && t.strides[last] != 1) {
        invalid(n() + ".strides[" + s(last) + "] is " + s(t.strides[last]) + "; the last dimension (" +
                a.dim_names[last] + ") must be contiguous (stride 1)");
    }
    if (kind == TensorKind::Float32Broadcast) {
        for (int32_t i = 0; i < a.rank; ++i) {
            if (t.strides[i] < 0) {
                invalid(n() + ".strides[" + s(i) + "] (" + a.dim_names[i] + ") is " + s(t.strides[i]) +
                        "; strides must be >= 0 (0 broadcasts one factor along that dimension)");
            }
        }
    } else {
        for (int32_t i = 0; i < a.rank; ++i) {
            if (t.strides[i] < 1) {
                invalid(n() + ".strides[" + s(i) + "] (" + a.dim_names[i] + ") is " + s(t.strides[i]) +
                        "; strides must be positive");
            }
        }
    }
    if (attention_input) {
        const int64_t stride_mult = stride_multiple(t.dtype);
        const int64_t d_mult = head_dim_multiple(t.dtype);
        for (int32_t i = 0; i < last; ++i) {
            if (t.strides[i] % stride_mult != 0) {
                // A head dim that is not a multiple of 8 (16 for fp8) is the root cause of a contiguous tensor's
                // stride fault: say that first (the same sentence check_head_dim_served gives padded strides).
                if (t.shape[last] % d_mult != 0) {
                    const bool fp8 = t.dtype == FA_DTYPE_FLOAT8_E4M3;
                    invalid(n() + ".shape[" + s(last) + "] (" + a.dim_names[last] + ") is " + s(t.shape[last]) + "; " +
                            (fp8 ? "fp8 (e4m3) head dims must be multiples of " + s(d_mult) + " (as in FlashAttention-3)"
                                 : "head dims must be multiples of " + s(d_mult) + " (this build serves head dims " +
                                       served_head_dims() + ")") +
                            ", and so " + n() + ".strides[" + s(i) + "] (" + a.dim_names[i] + ") is " + s(t.strides[i]) +
                            ", not a multiple of " + s(stride_mult) + " elements (16 bytes); pad the head dim to a multiple of " +
                            s(d_mult) + " with zeros (q, k and v) and slice the output");
                }
                std::string others;
                for (int32_t j = 0; j < last; ++j) {
                    others += std::string(j == 0 ? "" : (j == last - 1 ? " and " : ", ")) + a.dim_names[j];
                }
                invalid(n() + ".strides[" + s(i) + "] (" + a.dim_names[i] + ") is " + s(t.strides[i]) + "; the " +
                        others + " strides must be multiples of " + s(stride_mult) +
                        " elements (16 bytes) so that every row starts 16-byte aligned");
            }
        }
    }
    const int64_t elem = dtype_size(t.dtype);
    const uintptr_t address = reinterpret_cast<uintptr_t>(t.data);
    const int64_t alignment = attention_input ? FA_ALIGNMENT_BYTES : elem;
    if (address % static_cast<uintptr_t>(alignment) != 0) {
        invalid(n() + ".data (" + hex(t.data) + ") is not " + s(alignment) + "-byte aligned");
    }

    if (empty) {
        return Extent{address, address};
    }

    // Offset of the last element, then the byte count, each step checked against int64 overflow.
    const int64_t max = std::numeric_limits<int64_t>::max();
    int64_t last_offset = 0;
    for (int32_t i = 0; i < a.rank; ++i) {
        const int64_t extent = t.shape[i] - 1;  // >= 0
        if (extent != 0 && t.strides[i] > max / extent) {
            invalid(n() + " is too large: shape " + shape_string(t) + " with strides[" + s(i) + "] = " +
                    s(t.strides[i]) + " spans more than 2^63 elements");
        }
        const int64_t term = extent * t.strides[i];
        if (last_offset > max - term) {
            invalid(n() + " is too large: shape " + shape_string(t) + " and its strides span more than 2^63 elements");
        }
        last_offset += term;
    }
    if (last_offset > max / elem - 1) {
        invalid(n() + " is too large: shape " + shape_string(t) + " and its strides span more than 2^63 bytes");
    }
    const uint64_t bytes = static_cast<uint64_t>((last_offset + 1) * elem);
    if (address > std::numeric_limits<uintptr_t>::max() - bytes) {
        invalid(n() + ".data (" + hex(t.data) + ") plus the " + s(static_cast<int64_t>(bytes)) +
                " bytes its shape and strides span runs past the end of the address space");
    }
    return Extent{address, address + static_cast<uintptr_t>(bytes)};
}

static bool overlaps(const Extent& a, const Extent& b) {
    return a.begin < b.end && b.begin < a.end;
}

Extent buffer_extent(const void* pointer, size_t bytes, const char* name) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(pointer);
    if (address > std::numeric_limits<uintptr_t>::max() - bytes) {
        invalid(std::string(name) + " (" + hex(pointer) + ") plus its " + s(static_cast<int64_t>(bytes)) +
                " bytes runs past the end of the address space");
    }
    return Extent{address, address + bytes};
}

void check_no_overlap(const Extent& written, const char* written_name, const Extent& other, const char* other_name) {
    if (overlaps(written, other)) {
        invalid(std::string(written_name) + " (bytes " + hex(reinterpret_cast<void*>(written.begin)) + ".." +
                hex(reinterpret_cast<void*>(written.end)) + ") overlaps " + other_name + " (bytes " +
                hex(reinterpret_cast<void*>(other.begin)) + ".." + hex(reinterpret_cast<void*>(other.end)) +
                "); " + written_name + " is written by the call, so it must not share memory with " + other_name);
    }
}

void check_kernel_path(int32_t value, const std::string& name) {
    if (value != FA_PATH_AUTO && value != FA_PATH_SM80 && value != FA_PATH_SM90) {
        invalid(name + " is " + s(value) + "; it must be FA_PATH_AUTO (0), FA_PATH_SM80 (1) or FA_PATH_SM90 (2)");
    }
}

// ---- fields every pass has -----------------------------------------------------------------------------

void check_reserved(int64_t value, const char* name) {
    if (value != 0) {
        invalid(std::string(name) + " is " + s(value) + "; it is reserved and must be 0");
    }
}

void check_flag(int32_t value, const char* name) {
    if (value != 0 && value != 1) {
        invalid(std::string(name) + " is " + s(value) + "; it must be 0 or 1");
    }
}

void check_compute_capability_arg(int32_t cc, const char* name) {
    if (cc < 0) {
        invalid(std::string(name) + " is " + s(cc) + "; pass major*10+minor of the target GPU (e.g. 90) or 0 for any GPU");
    }
}

void check_compute_capability_served(int32_t cc, const char* name) {
    if (cc != 0 && cc < 80) {
        unsupported(std::string(name) + " is " + s(cc) + " (" + s(cc / 10) + "." + s(cc % 10) +
                    "); the kernels need compute capability 8.0 or newer");
    }
}

void check_int32_aligned(const int32_t* pointer, const char* name) {
    if (reinterpret_cast<uintptr_t>(pointer) % alignof(int32_t) != 0) {
        invalid(std::string(name) + " (" + hex(pointer) + ") is not 4-byte aligned");
    }
}

void check_softmax_scale(float scale) {
    if (!std::isfinite(scale) || scale < 0.0f) {
        invalid("softmax_scale is " + float_string(scale) + "; it must be finite and >= 0 (0 means 1/sqrt(head_dim))");
    }
}

void check_causal_alignment(int32_t alignment) {
    if (alignment != FA_CAUSAL_BOTTOM_RIGHT && alignment != FA_CAUSAL_TOP_LEFT) {
        invalid("causal_alignment is " + s(alignment) +
                "; it must be FA_CAUSAL_BOTTOM_RIGHT (0) or FA_CAUSAL_TOP_LEFT (1)");
    }
}

void check_window(int32_t left, int32_t right) {
    if (left < -1) {
        invalid("window_left is " + s(left) + "; it must be -1 (unbounded) or a number of keys >= 0");
    }
    if (right < -1) {
        invalid("window_right is " + s(right) + "; it must be -1 (unbounded) or a number of keys >= 0");
    }
}

void check_softcap(float softcap) {
    if (!std::isfinite(softcap) || softcap < 0.0f) {
        invalid("softcap is " + float_string(softcap) + "; it must be finite and >= 0 (0 turns it off)");
    }
    // The kernels multiply softcap by log2(e); the product must stay a finite float.
    if (static_cast<double>(softcap) * kLog2e > static_cast<double>(std::numeric_limits<float>::max())) {
        invalid("softcap is " + float_string(softcap) + "; it must be at most " +
                float_string(static_cast<float>(std::numeric_limits<float>::max() / kLog2e)));
    }
}

void check_gqa(int64_t heads_q, int64_t heads_kv, const char* k_name) {
    if (heads_q % heads_kv != 0) {
        invalid(std::string(k_name) + " has " + s(heads_kv) + " heads, which does not divide q's " + s(heads_q) +
                " heads; heads_q must be a multiple of heads_kv (GQA/MQA)");
    }
}

void check_head_dim_served(int64_t d, int32_t index) {
    if (d % kHeadDimMultiple != 0) {
        unsupported("q.shape[" + s(index) + "] (head_dim) is " + s(d) + "; head dims must be multiples of " +
                    s(kHeadDimMultiple) + " (this build serves head dims " + served_head_dims() + ")");
    }
    if (d > kInt32Max || !head_dim_served(static_cast<int32_t>(d))) {
        unsupported("q.shape[" + s(index) + "] (head_dim) is " + s(d) + "; this build serves head dims " +
                    served_head_dims());
    }
}

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

void check_int32_sizes(std::initializer_list<SizeArg> sizes) {
    for (const SizeArg& size : sizes) {
        if (size.value > kInt32Max) {
            unsupported(std::string(size.what) + " is " + s(size.value) + "; the largest this build serves is " +
                        s(kInt32Max));
        }
    }
}

// ---- variable-length batches ----------------------------------------------------------------------------

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

Extent cu_extent(const int32_t* cu, int32_t batch, const char* name) {
    return buffer_extent(cu, (static_cast<size_t>(batch) + 1) * sizeof(int32_t), name);
}

AlibiSlopes check_alibi_slopes(const fa_tensor_t& t, int64_t batch, const char* batch_what, int64_t heads_q) {
    if (t.data == nullptr) {
        return AlibiSlopes{false, Extent{0, 0}, 0, 0};
    }
    if (t.rank != 1 && t.rank != 2) {
        invalid("alibi_slopes.rank is " + s(t.rank) + "; alibi_slopes must be [heads_q] (one slope per query head) or "
                "[batch, heads_q] (per sequence and query head), fp32");
    }
    const bool per_batch = t.rank == 2;
    const Extent e = per_batch ? check_tensor({t, "alibi_slopes", {"batch", "heads_q", "", ""}, 2,
                                               "; or [heads_q], one fp32 slope per query head"},
                                              TensorKind::Float32)
                               : check_tensor({t, "alibi_slopes", {"heads_q", "", "", ""}, 1,
                                               "; or [batch, heads_q]"},
                                              TensorKind::Float32);
    const int64_t heads = t.shape[per_batch ? 1 : 0];
    if (heads != heads_q) {
        invalid("alibi_slopes.shape is " + shape_string(t) + " but its last dimension must be heads_q = " + s(heads_q) +
                ": one slope per query head (not per KV head)");
    }
    if (per_batch && t.shape[0] != batch) {
        invalid("alibi_slopes.shape is " + shape_string(t) + " but its first dimension must be the batch, " +
                batch_what + " = " + s(batch) + " (or pass the [heads_q] form, shared by every sequence)");
    }
    return AlibiSlopes{true, e, per_batch ? t.strides[0] : 0, t.strides[per_batch ? 1 : 0]};
}

}  // namespace validation
}  // namespace fa
