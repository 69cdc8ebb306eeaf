// Host-side launch helpers every kernel family shares. Compiled by nvcc only (kernel folder).
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "params/launch_info.h"

namespace fa {

// Raises `kernel`'s dynamic shared-memory limit to `smem` bytes on the device `info` names, once per
// (kernel, device): each kernel instantiation keeps its own `raised` bit set (devices 0..63; others
// raise on every call). Returns cudaErrorInvalidConfiguration when the device cannot give that much.
template <class Kernel>
cudaError_t raise_smem_once(Kernel kernel, int smem, const LaunchInfo& info, std::atomic<uint64_t>& raised) {
    if (smem > info.smem_optin) return cudaErrorInvalidConfiguration;
    if (smem <= 48 * 1024) return cudaSuccess;
    const uint64_t bit = info.device >= 0 && info.device < 64 ? (uint64_t{1} << info.device) : 0;
    if (bit == 0 || (raised.load(std::memory_order_relaxed) & bit) == 0) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (err != cudaSuccess) return err;
        raised.fetch_or(bit, std::memory_order_relaxed);
    }
    return cudaSuccess;
}

// A kernel whose warpgroups trade registers (setmaxnreg) assumes `need` registers a thread at launch: with fewer, a
// setmaxnreg.inc waits forever for registers nobody gives back. Checks the compiled kernel's count once per kernel
// (`checked`, one per instantiation: 0 unknown, 1 enough, 2 too few); cudaErrorInvalidConfiguration (a refusal, never
// a hang) when it has fewer.
template <class Kernel>
cudaError_t check_launch_regs(Kernel kernel, int need, std::atomic<int>& checked) {
    if (checked.load(std::memory_order_relaxed) == 0) {
        cudaFuncAttributes attr{};
        const cudaError_t err = cudaFuncGetAttributes(&attr, kernel);
        if (err != cudaSuccess) return err;
        checked.store(attr.numRegs >= need ? 1 : 2, std::memory_order_relaxed);
    }
    return checked.load(std::memory_order_relaxed) == 1 ? cudaSuccess : cudaErrorInvalidConfiguration;
}

}  // namespace fa
