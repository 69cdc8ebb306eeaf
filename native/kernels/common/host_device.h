// FA_HOST_DEVICE: __host__ __device__ under nvcc, nothing for a host compiler, for the pure integer and bit code that
// the kernels and the host-side unit tests share (common/fwd_schedule.h, common/bwd_schedule.h, common/philox.cuh).
#pragma once

#ifndef FA_HOST_DEVICE
#if defined(__CUDACC__)
#define FA_HOST_DEVICE __host__ __device__
#else
#define FA_HOST_DEVICE
#endif
#endif
