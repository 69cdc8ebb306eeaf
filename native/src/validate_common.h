// Argument-checking helpers shared by the validation of every pass (validate.cpp: forward and backward;
// validate_decode.cpp: decode): message formatting, and the checks of one tensor descriptor on its own and of
// two tensors' memory against each other. Host-only; they throw fa::Error and touch no device memory.
#pragma once
#include <cstdint>
#include <limits>
#include <string>

#include "flash_attention.h"

namespace fa {
namespace validation {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
// Row, head and batch strides of 16-bit tensors must be multiples of this many elements (16 bytes).
constexpr int64_t kStrideMultiple = FA_ALIGNMENT_BYTES / 2;

std::string s(int64_t value);
std::string hex(const void* pointer);
std::string float_string(float value);
// "FA_DTYPE_FLOAT16", or "an unknown dtype".
const char* dtype_name(int32_t dtype);
// Bytes of one element, or 0 for an unknown dtype.
int64_t dtype_size(int32_t dtype);
// "[2, 17, 6, 64]".
std::string shape_string(const fa_tensor_t& t);

[[noreturn]] void invalid(const std::string& message);
[[noreturn]] void unsupported(const std::string& message);

// What a tensor holds: attention data (fp16/bf16, last dimension contiguous, 16-byte rows), the fp32
// log-sum-exp, or int32 indices (cache lengths, block tables).
enum class TensorKind { Attention, Float32, Int32 };

// One tensor argument and the names of its dimensions, for messages.
struct TensorArg {
    const fa_tensor_t& t;
    const char* name;          // "q"
    const char* dim_names[4];  // "batch", "seqlen_q", ...
    int32_t rank;              // required rank
    const char* rank_hint;     // why that rank ("" or a sentence starting with "; ")
};

// Byte range [begin, end) that a tensor's elements occupy, computed without overflow.
struct Extent {
    uintptr_t begin;
    uintptr_t end;
};

// Checks what one tensor must satisfy on its own; returns the byte range it spans. Dimension
// `may_be_empty` (the total rows of a variable-length batch; -1: none) may be 0, and the data of such an
// empty tensor may be NULL; it then spans no bytes.
Extent check_tensor(const TensorArg& a, TensorKind kind, int32_t may_be_empty = -1);

// INVALID_ARGUMENT when `written` (memory the call writes) overlaps `other`.
void check_no_overlap(const Extent& written, const char* written_name, const Extent& other, const char* other_name);

// INVALID_ARGUMENT unless `value` is an fa_kernel_path_t value; `name` is the field ("kernel_path",
// "query->kernel_path").
void check_kernel_path(int32_t value, const std::string& name);
// UNSUPPORTED for FA_PATH_SM90 in a pass that has no sm90 kernels; `runs_on` (may be empty) says what the
// pass runs on ("the forward runs on ...").
void refuse_sm90_path(int32_t value, const std::string& name, const std::string& runs_on);

}  // namespace validation
}  // namespace fa
