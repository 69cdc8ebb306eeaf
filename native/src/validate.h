// Argument checking of every pass, as the exports (api.cpp, backward.cpp, decode.cpp) call it: one file per
// pass (validate_forward.cpp, validate_backward.cpp, validate_decode.cpp, validate_query.cpp) over the shared
// core (validate_common.h, validate_attention.h). Runs before any CUDA call and touches no device memory: it
// reads only the descriptors (and the host copies of lengths the caller gives).
#pragma once
#include <cstddef>

#include <string>

#include "dispatch.h"
#include "flash_attention.h"
#include "params/bwd_params.h"
#include "params/decode_params.h"
#include "params/fwd_params.h"
#include "validate_common.h"

namespace fa {

class MemoryArgs;  // device_memory.h

// Smallest fa_forward_params_t accepted: version 0.1's fields, up to kernel_path.
constexpr size_t kForwardParamsMinSize = offsetof(fa_forward_params_t, window_left);

// Checks *params for a GPU of compute capability `compute_capability` (major*10+minor, or 0 for any
// GPU this build serves). Throws fa::Error (INVALID_ARGUMENT for bad input, UNSUPPORTED for valid
// input this build or GPU does not serve). On success returns the filled kernel parameters, and *memory (when
// given) receives every device pointer the kernels dereference with its byte range, for check_device_memory.
// (validate_forward.cpp)
FwdParams validate_forward(const fa_forward_params_t* params, int32_t compute_capability,
                           MemoryArgs* memory = nullptr);

// Checks *params of fa_backward / fa_backward_check / fa_backward_workspace_size and returns the kernel
// parameters (workspace pointers unset). *workspace_bytes (if not NULL) receives the workspace the call
// needs; with check_workspace a caller workspace is checked against it (alignment, size, overlap). *memory (when
// given) receives the device pointers and their byte ranges, the workspace's included. (validate_backward.cpp)
BwdParams validate_backward(const fa_backward_params_t* params, int32_t compute_capability, bool check_workspace,
                            size_t* workspace_bytes, MemoryArgs* memory = nullptr);

// Smallest fa_backward_params_t accepted: version 0.6's fields, up to workspace_size (0.7 appends sinks and dsinks,
// which an older caller's struct then lacks: no sinks). Versions 0.3 to 0.6 have the same layout.
constexpr size_t kBackwardParamsMinSize = offsetof(fa_backward_params_t, sinks);

// fa_backward_params_init's struct_size: at least kBackwardParamsMinSize.
void check_backward_params_size(size_t struct_size);

// Smallest fa_support_query_t accepted: version 0.6's fields, up to kernel_path (0.7 appends sinks).
constexpr size_t kSupportQueryMinSize = offsetof(fa_support_query_t, sinks);

// Answers fa_query_support: returns when this build serves the kind of call *query describes, throws
// fa::Error (INVALID_ARGUMENT for a malformed query, UNSUPPORTED saying why otherwise). (validate_query.cpp)
void check_support_query(const fa_support_query_t& query);

// UNSUPPORTED when the main kernel of `pass` (backward or decode) for `head_dim`, on the path kernel_path
// chooses, needs more shared memory per block than compute capability `cc` (not 0) allows; silent for a GPU
// the table does not know. (validate_query.cpp: the table)
// cache_dtype: decode's cache (Float8E4M3: the fp8-cache kernel's shared memory).
void check_block_smem(Pass pass, int32_t kernel_path, int32_t head_dim, int32_t cc, DType cache_dtype = DType::Float16);

// Short description of a validated call for debug logs: "b=2 sq=17 sk=33 hq=6 hkv=2 d=64 fp16 causal".
std::string describe(const FwdParams& p);

// Smallest fa_decode_params_t accepted: version 0.6's fields, up to workspace_size (0.3, the first with decode,
// through 0.6 had the same struct). The serving fields of 0.7 (cache_batch_idx on) get their defaults when the
// caller's struct_size does not cover them.
constexpr size_t kDecodeParamsMinSize = offsetof(fa_decode_params_t, cache_batch_idx);

// Checks *params for a GPU of compute capability `compute_capability` (major*10+minor, or 0 for any GPU
// this build serves). Throws fa::Error (INVALID_ARGUMENT for bad input, UNSUPPORTED for valid input this
// build or GPU does not serve). On success returns the kernel parameters with num_splits and the workspace
// pointers unset (num_splits 1, no workspace). *length_hint receives the longest sequence (with its new tokens) when
// cache_seqlens_host is given, else the capacity: what the split heuristic plans for. *memory (when given)
// receives the device pointers and their byte ranges, the workspace not included (its size depends on the split
// count, which fa_decode adds). (validate_decode.cpp)
DecodeParams validate_decode(const fa_decode_params_t* params, int32_t compute_capability, int32_t* length_hint,
                             MemoryArgs* memory = nullptr);

// Short description of a validated decode call for debug logs.
std::string describe(const DecodeParams& p);

}  // namespace fa
