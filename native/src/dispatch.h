// Path choice and kernel facts for the host: the one place that decides which kernel family (sm80 or sm90)
// a call runs, and the host-side views of the kernels' needs (head dims served, shared memory, workspace
// layouts). Everything below it is the kernel registry (native/kernels/registry.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "flash_attention.h"
#include "registry.h"

namespace fa {

// The kernels' element type of a validated q/k/v dtype (an fa_dtype_t value: FA_DTYPE_FLOAT16, FA_DTYPE_BFLOAT16
// or FA_DTYPE_FLOAT8_E4M3; anything else is a bug of the caller's validation and maps to Float16).
inline DType kernel_dtype(int32_t dtype) {
    return dtype == FA_DTYPE_BFLOAT16 ? DType::BFloat16 : dtype == FA_DTYPE_FLOAT8_E4M3 ? DType::Float8E4M3 : DType::Float16;
}
// "fp16", "bf16" or "e4m3", for logs and messages.
inline const char* dtype_tag(DType dtype) {
    return dtype == DType::BFloat16 ? "bf16" : dtype == DType::Float8E4M3 ? "e4m3" : "fp16";
}
// Why `pass` does not take q/k/v of `dtype` at all (on any path, any GPU), or nullptr when it does: fp8 (e4m3) is
// an input of the forward only (FEATURES.md 6).
const char* dtype_refusal(Pass pass, DType dtype);

// Head dims: served when a multiple of 8 no larger than the largest compiled kernel head dim.
inline int32_t kernel_head_dim(int32_t d) { return kernels::kernel_head_dim(d); }
inline bool head_dim_served(int32_t d) { return kernels::kernel_head_dim(d) != 0; }

// Whether `path` serves `pass` for q/k/v of `dtype` at kernel head dim kernel_d on compute capability cc
// (major * 10 + minor; 0: any GPU this build serves), ignoring shared memory; if not, *why (when given) says why
// in a phrase.
// dropout: the call has dropout (dropout_p > 0), which the sm80 forward and backward serve, and the sm90 ones where
// this build has their dropout kernels (FA_SM90_FWD_DROPOUT, FA_SM90_BWD_DROPOUT; FlashAttention-3 has none).
bool path_serves(Pass pass, Path path, int32_t kernel_d, DType dtype, int32_t cc, std::string* why,
                 bool dropout = false);

// The path a call with q/k/v of `dtype` runs, from its kernel_path field (FA_PATH_AUTO: sm90 where it serves and
// the device's shared memory allows it, else sm80; FA_PATH_SM80; FA_PATH_SM90: sm90, or UNSUPPORTED saying why
// where it does not serve). fp8 (e4m3) has no sm80 kernels: FA_PATH_SM80 is UNSUPPORTED for it, and so is
// FA_PATH_AUTO where the sm90 forward does not serve it. smem_optin < 0: not known (validation without a device),
// so not checked. `field` names the field in messages ("kernel_path", "query->kernel_path"); device >= 0 is named
// in them too. A dropout call is served by the sm90 path as any other option for a pass whose sm90 dropout kernels the
// build has (FA_SM90_FWD_DROPOUT, FA_SM90_BWD_DROPOUT, on by default; kernels::has_sm90_dropout; not the V head dim
// pairs); elsewhere it runs on the sm80 path: FA_PATH_AUTO takes it on any GPU, FA_PATH_SM90 is UNSUPPORTED saying so.
// head_dim_v: v's and out's head dim when it differs from head_dim (0: the same). FlashAttention-3's pairs: the sm80
// path serves both forwards and (192, 128)'s backward, the sm90 path both forwards and (192, 128)'s backward (without
// dropout; AUTO takes them where they serve); every other pair, (64, 512)'s backward and decode are UNSUPPORTED
// saying why.
Path choose_path(Pass pass, int32_t kernel_path, int32_t head_dim, DType dtype, int32_t cc, int64_t smem_optin,
                 const std::string& field, int32_t device = -1, bool dropout = false, int64_t head_dim_v = 0);

// Why this build does not serve dropout on `path` for `pass` (on any GPU), or nullptr when it does: fp8 and decode have
// none (FlashAttention-3 and flash_attn_with_kvcache have none), nor have the sm90 kernels but those of a build with
// FA_SM90_FWD_DROPOUT (forward) or FA_SM90_BWD_DROPOUT (backward) at kernel head dim kernel_d (0: not asked, refused).
const char* dropout_refusal(Pass pass, Path path, DType dtype, int32_t kernel_d = 0);

// Shared memory per block of the main kernel a backward or decode call would run (the path choose_path makes, on
// cc; these passes take fp16 and bf16 queries only, whose kernels share one layout; decode's over an fp8 cache,
// cache_dtype Float8E4M3, has its own).
int32_t smem_need(Pass pass, int32_t kernel_path, int32_t kernel_d, int32_t cc, DType cache_dtype = DType::Float16);

// Backward workspace of a call (bytes of each part, each rounded to 256); kernel_d is kernel_head_dim(d), and the dQ
// accumulator is sized for the widest kernel any path runs for it (kernels::bwd_accum_d), so the size does not
// depend on the path; dsinks: the call asks for the sinks' gradient (one fp32 partial per preprocess block).
struct BwdWorkspaceLayout {
    size_t dq_accum, dsum, lse_log2, sem, sink_partial, total;
    size_t dq_copy;      // bytes of one dQ accumulator copy (dq_accum = dq_copies of them)
    int32_t dq_copies;   // deterministic: kBwdDetDqCopies, else 1
};
BwdWorkspaceLayout bwd_workspace_layout(const FwdParams& f, int32_t kernel_d, bool deterministic, bool dsinks);

// Decode workspace for p split num_splits ways: fp32 partial outputs, then (at the next
// FA_WORKSPACE_ALIGNMENT boundary) fp32 partial log-sum-exps; 0 when num_splits is 1.
size_t decode_accum_offset(const DecodeParams& p, int32_t num_splits);
size_t decode_workspace_bytes(const DecodeParams& p, int32_t num_splits);

}  // namespace fa
