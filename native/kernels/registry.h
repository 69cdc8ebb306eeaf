// The kernel registry: the one header of native/kernels/ that the host includes. It maps (path, pass,
// dtype, head dim, features) to a compiled kernel, launches it, and lists every kernel of the build by
// name; it also answers the compile-time facts the host validates against (shared memory per block,
// tile sizes). Everything it takes and returns is plain data (native/kernels/params/), so kernels never
// see the C ABI or host code; the host (native/src/dispatch.cpp) chooses the path, once per call.
#pragma once
#include <cstdint>

#include "params/bwd_params.h"
#include "params/decode_params.h"
#include "params/fwd_params.h"
#include "params/launch_info.h"

namespace fa {

// Kernel families, a folder each: sm80 (mma.sync, every GPU from sm_80) and sm90 (wgmma, sm_90a).
enum class Path : int32_t { Sm80 = 0, Sm90 = 1 };
enum class Pass : int32_t { Forward = 0, Backward = 1, Decode = 2 };

namespace kernels {

// Head dims. Kernels exist for a few head dims (the build's FA_HEAD_DIMS: 32, 64, 96, 128, 192, 256); a
// smaller multiple of 8 runs the next larger kernel with zero-filled columns.
int32_t kernel_head_dim(int32_t d);                 // the compiled kernel head dim that serves d, or 0
int32_t compiled_head_dims(const int32_t** dims);   // the compiled kernel head dims, ascending; their count

// Whether this build holds sm_90a code at all (FA_CUDA_ARCHS with 90a).
bool has_sm90_code();
// Whether this build has a `pass` kernel on `path` for kernel head dim kernel_d (no device check). kernel_d is
// always kernel_head_dim(d), the sm80 kernel's; the sm90 forward and backward run the smallest of their kernels
// (forward 64, 128, 192, 256; fp8 128, 256; backward 64, 128, 192, 256) at least that large, which names, shared memory and launches account for (run_kernel_d).
bool has_kernel(Pass pass, Path path, int32_t kernel_d);
// The same for one input dtype: fp16 and bf16 wherever has_kernel says so; fp8 (e4m3) only for the sm90
// forward, at the kernel head dims its fp8 kernels were built for.
bool has_kernel(Pass pass, Path path, int32_t kernel_d, DType dtype);
// Whether the sm90 kernels of `pass` serving kernel_d have dropout variants (fp16/bf16, q's head dim = v's; a build
// with FA_SM90_FWD_DROPOUT or FA_SM90_BWD_DROPOUT, whose dropout calls AUTO then runs there; no device check).
bool has_sm90_dropout(Pass pass, int32_t kernel_d);
// Whether this build has the sm80 `pass` kernels of head dim d with V head dim dv (dv != d: sm80::fwd_v_pair, compiled
// with head dim d; the backward's for (192, 128) only).
bool has_v_kernel(Pass pass, int32_t d, int32_t dv);
// The same on one path: sm80 as above; sm90 the forward's (both pairs) and backward's ((192, 128)) in a build with
// sm_90a code (no device check).
bool has_v_kernel(Pass pass, Path path, int32_t d, int32_t dv);
// Dynamic shared memory per block of that pair kernel (0 where has_v_kernel says no).
int32_t v_smem_bytes(Pass pass, Path path, int32_t d, int32_t dv);
// Whether this build has the decode kernels of kernel head dim kernel_d for queries of `dtype` over a cache of
// `cache_dtype`: the 16-bit cache (cache_dtype == dtype) or an fp8 (e4m3) cache (C ABI 0.13), fp16/bf16 queries.
bool has_decode_kernel(int32_t kernel_d, DType dtype, DType cache_dtype);
// Dynamic shared memory per block of the decode attention kernel of kernel_d over a cache of cache_dtype.
int32_t decode_smem_bytes(int32_t kernel_d, DType cache_dtype);
// Dynamic shared memory per block of the main kernel of (pass, path, kernel_d), where has_kernel says so.
int32_t smem_bytes(Pass pass, Path path, int32_t kernel_d);
// The same for one input dtype (the fp8 forward kernels have their own layout); has_kernel(..., dtype) must hold.
int32_t smem_bytes(Pass pass, Path path, int32_t kernel_d, DType dtype);
// Keys per block of the backward main kernel (the grid is keyed by these blocks).
int32_t bwd_block_n(Path path, int32_t kernel_d);
// The kernel head dim that (pass, path) runs for kernel_head_dim(d) == kernel_d (where has_kernel says so).
int32_t run_kernel_d(Pass pass, Path path, int32_t kernel_d);
// Columns per row of the backward's fp32 dQ accumulator that the workspace is sized for: the widest kernel head
// dim any path of this build runs for kernel_d, so one workspace size fits whichever path the call takes.
int32_t bwd_accum_d(int32_t kernel_d);
// Number of key splits of a decode call: `requested` (1..max_splits) when not 0, else the heuristic's
// choice for sequences of about `length_hint` keys on the device `info` describes. No CUDA call.
int32_t decode_num_splits(const DecodeParams& p, const LaunchInfo& info, int32_t requested, int32_t length_hint,
                          int32_t max_splits);

// Every kernel compiled into this build: the forward ones, then the backward ones, then the decode ones
// (per pass: sm80, then sm90, then the V head dim pairs' kernels, sm80's then sm90's; per path: head dims ascending,
// fp16 then bf16, variants in binary order of fp8 cache, local, softcap, deterministic, paged; decode's fp8-cache
// kernels carry "_e4m3kv" after the head dim, e.g. "sm80_decode_bf16_hdim128_e4m3kv_paged_16x64_4w6s"). Names live
// as long as the process; nullptr past the end.
int32_t kernel_count();
const char* kernel_name_at(int32_t index);

// Launches: return a cudaError_t value (0 on success) so that callers need no CUDA header; *kernel_name
// (when given) names the main kernel that ran. The params are validated and complete (decode: splits and
// workspace set; backward: workspace set, m_blocks/n_blocks filled here).
int launch_forward(Path path, const FwdParams& p, const LaunchInfo& info, void* stream, const char** kernel_name);
int launch_backward(Path path, BwdParams& p, const LaunchInfo& info, void* stream, const char** kernel_name);
int launch_decode(Path path, const DecodeParams& p, const LaunchInfo& info, void* stream, const char** kernel_name);

}  // namespace kernels
}  // namespace fa
