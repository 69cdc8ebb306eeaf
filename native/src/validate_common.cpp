// See validate_common.h.
#include "validate_common.h"

#include <cinttypes>
#include <cstdio>

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
    const bool attention_input = kind == TensorKind::Attention;
    const fa_tensor_t& t = a.t;
    // The name as a std::string, for messages: built only when a check fails (this runs on every call).
    const auto n = [&a] { return std::string(a.name); };
    const bool empty = may_be_empty >= 0 && t.rank == a.rank && t.shape[may_be_empty] == 0;
    if (t.data == nullptr && !empty) {
        invalid(n() + ".data is NULL");
    }
    if (attention_input) {
        if (t.dtype != FA_DTYPE_FLOAT16 && t.dtype != FA_DTYPE_BFLOAT16) {
            invalid(n() + ".dtype is " + s(t.dtype) + " (" + dtype_name(t.dtype) + "); " + n() +
                    " must be FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16");
        }
    } else {
        const int32_t want = kind == TensorKind::Float32 ? FA_DTYPE_FLOAT32 : FA_DTYPE_INT32;
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
    for (int32_t i = 0; i < a.rank; ++i) {
        if (t.strides[i] < 1) {
            invalid(n() + ".strides[" + s(i) + "] (" + a.dim_names[i] + ") is " + s(t.strides[i]) +
                    "; strides must be positive");
        }
    }
    if (attention_input) {
        for (int32_t i = 0; i < last; ++i) {
            if (t.strides[i] % kStrideMultiple != 0) {
                std::string others;
                for (int32_t j = 0; j < last; ++j) {
                    others += std::string(j == 0 ? "" : (j == last - 1 ? " and " : ", ")) + a.dim_names[j];
                }
                invalid(n() + ".strides[" + s(i) + "] (" + a.dim_names[i] + ") is " + s(t.strides[i]) + "; the " +
                        others + " strides must be multiples of " + s(kStrideMultiple) +
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

void refuse_sm90_path(int32_t value, const std::string& name, const std::string& runs_on) {
    if (value == FA_PATH_SM90) {
        unsupported(name + " is FA_PATH_SM90, which serves the backward pass only" +
                    (runs_on.empty() ? "" : "; " + runs_on + " runs on FA_PATH_SM80 (pass FA_PATH_AUTO or FA_PATH_SM80)"));
    }
}

}  // namespace validation
}  // namespace fa
