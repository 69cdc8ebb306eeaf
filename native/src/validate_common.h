// Argument-checking helpers shared by the validation of every pass (validate_forward.cpp, validate_backward.cpp,
// validate_decode.cpp, validate_query.cpp): message formatting, the checks of one tensor descriptor on its own
// and of two tensors' memory against each other, and the checks of the fields every pass has (reserved fields,
// flags, compute capability, the scale/causal/window/softcap/kernel_path options, GQA, head dims, 32-bit
// sizes, host copies of cu_seqlens). Each message is written here once. Host-only; they throw fa::Error and
// touch no device memory. The q/k/v/out/lse core of the forward and backward is validate_attention.h.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

#include "flash_attention.h"

namespace fa {
namespace validation {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
// Row, head and batch strides of 16-bit tensors must be multiples of this many elements (16 bytes).
constexpr int64_t kStrideMultiple = FA_ALIGNMENT_BYTES / 2;
// Head dims the kernels serve are multiples of this (a row of 16-bit elements is then whole 16-byte vectors).
constexpr int64_t kHeadDimMultiple = 8;
// fp8 (e4m3) head dims are multiples of this (FlashAttention-3's fp8 kernels: whole 16-byte rows, and the k-steps
// of the fp8 wgmma).
constexpr int64_t kFp8HeadDimMultiple = 16;
// Paged K/V of the forward (block_table, 0.11): block sizes served are multiples of this, which every key tile divides
// (sm80 64 or 128 keys, sm90 64 or 128), so a tile lies in one block.
constexpr int64_t kPagedKvBlockMultiple = 128;
// Row, head and batch strides of an attention tensor must be multiples of this many elements: 16 bytes (TMA rows
// and 16-byte vector loads), 8 elements of fp16/bf16, 16 of fp8.
int64_t stride_multiple(int32_t dtype);
// Head dims of q/k/v of this dtype are multiples of this: 8 (fp16, bf16) or 16 (fp8).
int64_t head_dim_multiple(int32_t dtype);

std::string s(int64_t value);
std::string hex(const void* pointer);
std::string float_string(float value);
// "FA_DTYPE_FLOAT16", "FA_DTYPE_FLOAT8_E4M3", or "an unknown dtype".
const char* dtype_name(int32_t dtype);
// Bytes of one element, or 0 for an unknown dtype.
int64_t dtype_size(int32_t dtype);
// "[2, 17, 6, 64]".
std::string shape_string(const fa_tensor_t& t);

[[noreturn]] void invalid(const std::string& message);
[[noreturn]] void unsupported(const std::string& message);

// What a tensor holds: attention data (fp16/bf16, last dimension contiguous, 16-byte rows), attention inputs that
// may also be fp8 (q, k and v of the forward and backward core; the backward refuses fp8 before it gets here), the
// fp32 log-sum-exp, fp32 factors whose strides may be 0 (the fp8 descales: broadcast), or int32 indices (cache
// lengths, block tables).
enum class TensorKind { Attention, AttentionInput, Float32, Float32Broadcast, Int32, UInt8 };

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

// The byte range [pointer, pointer + bytes) of a caller buffer (a workspace, cu_seqlens); INVALID_ARGUMENT when it
// runs past the end of the address space (a wild pointer that would otherwise wrap and pass every range check).
Extent buffer_extent(const void* pointer, size_t bytes, const char* name);

// INVALID_ARGUMENT unless `value` is an fa_kernel_path_t value; `name` is the field ("kernel_path",
// "query->kernel_path").
void check_kernel_path(int32_t value, const std::string& name);

// ---- fields every pass has -----------------------------------------------------------------------------
// `name` is the field as the message names it ("params->reserved0", "causal", "query->compute_capability").

// INVALID_ARGUMENT unless a reserved field is 0.
void check_reserved(int64_t value, const char* name);
// INVALID_ARGUMENT unless a flag is 0 or 1.
void check_flag(int32_t value, const char* name);
// INVALID_ARGUMENT for a negative compute capability (0 means any GPU).
void check_compute_capability_arg(int32_t cc, const char* name);
// UNSUPPORTED for a compute capability below 8.0 (0 passes).
void check_compute_capability_served(int32_t cc, const char* name);
// INVALID_ARGUMENT unless a host or device int32 array is 4-byte aligned.
void check_int32_aligned(const int32_t* pointer, const char* name);

// The options: softmax_scale, causal_alignment, window_left/right, softcap (causal is check_flag's, kernel_path
// check_kernel_path's). Each pass calls them in its own order.
void check_softmax_scale(float scale);
void check_causal_alignment(int32_t alignment);
void check_window(int32_t left, int32_t right);
void check_softcap(float softcap);
// log2(e): the kernels' softmax runs on exp2, so scale and softcap are multiplied by it.
constexpr double kLog2e = 1.4426950408889634074;

// INVALID_ARGUMENT unless q's heads are a multiple of the key heads (`k_name` names that tensor).
void check_gqa(int64_t heads_q, int64_t heads_kv, const char* k_name);
// UNSUPPORTED unless this build has a kernel for head dim `d`, read from q.shape[index].
void check_head_dim_served(int64_t d, int32_t index);
// "64, 128": the head dims this build has a forward kernel for.
std::string served_head_dims();

// One size the kernels index with 32 bits, with what it is ("q.shape[0] (batch)").
struct SizeArg {
    int64_t value;
    const char* what;
};
// UNSUPPORTED for the first size above INT32_MAX.
void check_int32_sizes(std::initializer_list<SizeArg> sizes);

// ---- ALiBi (every pass) ---------------------------------------------------------------------------------

// A call's ALiBi slopes, checked (absent: data NULL): fp32, rank 1 [heads_q] or rank 2 [batch, heads_q], positive
// strides, 4-byte aligned. `batch` is the number of sequences (varlen_batch for a variable-length batch, named
// `batch_what` in messages). Returns the extent (empty when absent); *batch_stride gets 0 for the rank-1 form.
struct AlibiSlopes {
    bool on;
    Extent extent;
    int64_t batch_stride, head_stride;
};
AlibiSlopes check_alibi_slopes(const fa_tensor_t& t, int64_t batch, const char* batch_what, int64_t heads_q);

// ---- variable-length batches ----------------------------------------------------------------------------

// Checks a host copy of cu_seqlens (batch + 1 prefix sums) against the rows of its tensors (`rows_what` names
// them) and the declared longest sequence `max_seqlen` (named `max_name`).
void check_host_cu_seqlens(const int32_t* cu, const char* name, int32_t batch, int64_t rows, const char* rows_what,
                           int32_t max_seqlen, const char* max_name);
// Byte range of a device cu_seqlens array (batch + 1 int32 values).
Extent cu_extent(const int32_t* cu, int32_t batch, const char* name);

}  // namespace validation
}  // namespace fa
