// Declarations of the per-(dtype, head dim) decode entry points. Each is defined (instantiated) in its own
// generated file decode_hdim<D>_<dtype>_sm80.cu, so families compile in parallel and CMake's FA_HEAD_DIMS
// can leave some out.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "decode_params.h"

namespace fa {
namespace sm80 {

template <typename T, int D>
int run_decode(const DecodeParams& p, const LaunchInfo& info, cudaStream_t stream);

#define FA_DECLARE_DECODE(T, D) \
    extern template int run_decode<T, D>(const DecodeParams&, const LaunchInfo&, cudaStream_t);
FA_DECLARE_DECODE(__half, 32)
FA_DECLARE_DECODE(__nv_bfloat16, 32)
FA_DECLARE_DECODE(__half, 64)
FA_DECLARE_DECODE(__nv_bfloat16, 64)
FA_DECLARE_DECODE(__half, 96)
FA_DECLARE_DECODE(__nv_bfloat16, 96)
FA_DECLARE_DECODE(__half, 128)
FA_DECLARE_DECODE(__nv_bfloat16, 128)
FA_DECLARE_DECODE(__half, 192)
FA_DECLARE_DECODE(__nv_bfloat16, 192)
FA_DECLARE_DECODE(__half, 256)
FA_DECLARE_DECODE(__nv_bfloat16, 256)
#undef FA_DECLARE_DECODE

}  // namespace sm80
}  // namespace fa
