// Declarations of the per-(dtype, head dim) backward entry points, each instantiated in its own
// generated file bwd_hdim<D>_<dtype>_sm80.cu.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "bwd_params.h"

namespace fa {
namespace sm80 {

template <typename T, int D>
int run_bwd(BwdParams& p, const LaunchInfo& info, cudaStream_t stream, const char** name);

#define FA_DECLARE_BWD(T, D) extern template int run_bwd<T, D>(BwdParams&, const LaunchInfo&, cudaStream_t, const char**);
FA_DECLARE_BWD(__half, 32)
FA_DECLARE_BWD(__nv_bfloat16, 32)
FA_DECLARE_BWD(__half, 64)
FA_DECLARE_BWD(__nv_bfloat16, 64)
FA_DECLARE_BWD(__half, 96)
FA_DECLARE_BWD(__nv_bfloat16, 96)
FA_DECLARE_BWD(__half, 128)
FA_DECLARE_BWD(__nv_bfloat16, 128)
FA_DECLARE_BWD(__half, 192)
FA_DECLARE_BWD(__nv_bfloat16, 192)
FA_DECLARE_BWD(__half, 256)
FA_DECLARE_BWD(__nv_bfloat16, 256)
#undef FA_DECLARE_BWD

}  // namespace sm80
}  // namespace fa
