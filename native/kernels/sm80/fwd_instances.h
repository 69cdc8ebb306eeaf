// Declarations of the per-(dtype, head dim) forward entry points. Each is defined (instantiated)
// in its own generated file fwd_hdim<D>_<dtype>_sm80.cu, so families compile in parallel and
// CMake's FA_HEAD_DIMS can leave some out.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "params.h"

namespace fa {
namespace sm80 {

template <typename T, int D>
int run_fwd(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name);

#define FA_DECLARE_FWD(T, D) \
    extern template int run_fwd<T, D>(const FwdParams&, const LaunchInfo&, cudaStream_t, const char**);
FA_DECLARE_FWD(__half, 32)
FA_DECLARE_FWD(__nv_bfloat16, 32)
FA_DECLARE_FWD(__half, 64)
FA_DECLARE_FWD(__nv_bfloat16, 64)
FA_DECLARE_FWD(__half, 96)
FA_DECLARE_FWD(__nv_bfloat16, 96)
FA_DECLARE_FWD(__half, 128)
FA_DECLARE_FWD(__nv_bfloat16, 128)
FA_DECLARE_FWD(__half, 192)
FA_DECLARE_FWD(__nv_bfloat16, 192)
FA_DECLARE_FWD(__half, 256)
FA_DECLARE_FWD(__nv_bfloat16, 256)
#undef FA_DECLARE_FWD

}  // namespace sm80
}  // namespace fa
