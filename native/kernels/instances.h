// The entry points of every kernel family, declared for the registry (registry.cu). Each is defined, per
// (dtype, head dim), in its own generated instantiation file (native/tools/generate_kernels.py:
// sm80/{fwd,bwd,decode}_hdim<D>_<dtype>_sm80.cu and the fp8-cache decode's
// sm80/decode_hdim<D>_<dtype>_e4m3kv_sm80.cu, sm90/{fwd,bwd}_hdim<D>_<dtype>_sm90.cu, and the V head dim pairs'
// {fwd,bwd}_hdim<D>_v<DV>_<dtype>_sm{80,90}.cu), so families compile in parallel and CMake's FA_HEAD_DIMS /
// FA_CUDA_ARCHS leave some out. Each returns a cudaError_t value and
// sets *features to the variant it ran (common/features.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "params/bwd_params.h"
#include "params/decode_params.h"
#include "params/fwd_params.h"
#include "params/launch_info.h"

namespace fa {

// The backward main kernel of a family (common/bwd_launch.cuh).
template <class Family>
int run_bwd_main(const BwdParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features);

namespace sm80 {
template <typename T, int D>
int run_fwd(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features);
template <typename T, int D, int DV>
int run_fwd_v(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features);
template <typename T, int D, bool Fp8Cache>  // Fp8Cache: k_cache/v_cache hold e4m3 bytes (C ABI 0.13)
int run_decode(const DecodeParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features);
template <typename T, int D, int DV>
struct BwdFamily;
}  // namespace sm80

namespace sm90 {
template <typename T, int D, int DV>  // DV: v's head dim (D, or 128 for the pair (192, 128))
int run_fwd(const FwdParams& p, const LaunchInfo& info, cudaStream_t stream, uint32_t* features);
template <typename T, int D, int DV>  // the same
struct BwdFamily;
}  // namespace sm90

}  // namespace fa
