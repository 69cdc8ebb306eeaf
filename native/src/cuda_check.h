// Turning CUDA runtime errors into library errors, and keeping the caller's current device intact.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "error.h"

namespace fa {

// Status for a CUDA error: no driver / no device -> NO_DEVICE, allocation -> OUT_OF_MEMORY,
// missing kernel image -> UNSUPPORTED, everything else -> CUDA_ERROR.
fa_status_t status_for_cuda_error(cudaError_t err) noexcept;

// Throws fa::Error for a failed CUDA call. `what` names the operation ("cudaMalloc of 1024 bytes on
// device 0"). Clears the thread's non-sticky CUDA error first, so that the failure does not surface
// again in the caller's next CUDA call.
[[noreturn]] void throw_cuda_error(cudaError_t err, const std::string& what);

inline void check_cuda(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        throw_cuda_error(err, what);
    }
}

// Number of visible CUDA devices; throws NO_DEVICE (with an actionable message) when there is no
// driver or no device.
int device_count();

// Throws INVALID_ARGUMENT unless 0 <= device < device_count().
void check_device_ordinal(int device, const char* argument_name);

// Makes `device` current for the lifetime of the guard and restores the calling thread's previous
// device afterwards (only when it differed, so a call on the current device makes no extra CUDA call).
class DeviceGuard {
public:
    explicit DeviceGuard(int device);
    ~DeviceGuard();
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;

private:
    int previous_ = -1;
    bool restore_ = false;
};

}  // namespace fa
