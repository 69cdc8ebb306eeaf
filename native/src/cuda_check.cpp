#include "cuda_check.h"

namespace fa {

namespace {

std::string cuda_version_string(int version) {
    return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
}

// The sentence for "there is no usable driver or device", with what to do about it.
std::string no_device_message(cudaError_t err) {
    int driver = 0;
    int runtime = 0;
    // Both only read versions; clear whatever they may leave behind.
    (void)cudaDriverGetVersion(&driver);
    (void)cudaRuntimeGetVersion(&runtime);
    (void)cudaGetLastError();
    switch (err) {
        case cudaErrorNoDevice:
            return "no CUDA-capable device is visible: check nvidia-smi and CUDA_VISIBLE_DEVICES";
        case cudaErrorInsufficientDriver:
            if (driver == 0) {
                return "no NVIDIA driver was found (libcuda.so.1 could not be loaded): install the NVIDIA driver";
            }
            return "the NVIDIA driver supports CUDA " + cuda_version_string(driver) +
                   " but this library was built with CUDA " + cuda_version_string(runtime) +
                   ": update the NVIDIA driver";
        case cudaErrorStubLibrary:
            return "the CUDA driver library found is a stub (libcuda.so from the toolkit's stubs folder), "
                   "not a real driver: install the NVIDIA driver or fix LD_LIBRARY_PATH";
        case cudaErrorSystemDriverMismatch:
            return "the NVIDIA kernel driver and the user-mode driver (libcuda.so.1) have different "
                   "versions: reinstall the driver or reboot after an update";
        case cudaErrorCompatNotSupportedOnDevice:
            return "the CUDA forward-compatibility driver in use does not support this GPU: "
                   "use the system's NVIDIA driver";
        case cudaErrorDevicesUnavailable:
            return "every CUDA device is busy or unavailable (compute mode exclusive or prohibited): "
                   "check nvidia-smi";
        default:
            break;
    }
    return "CUDA could not be initialised";
}

}  // namespace

fa_status_t status_for_cuda_error(cudaError_t err) noexcept {
    switch (err) {
        case cudaSuccess:
            return FA_STATUS_SUCCESS;
        case cudaErrorNoDevice:
        case cudaErrorInsufficientDriver:
        case cudaErrorStubLibrary:
        case cudaErrorSystemDriverMismatch:
        case cudaErrorCompatNotSupportedOnDevice:
        case cudaErrorDevicesUnavailable:
            return FA_STATUS_NO_DEVICE;
        case cudaErrorMemoryAllocation:
            return FA_STATUS_OUT_OF_MEMORY;
        case cudaErrorNoKernelImageForDevice:
            return FA_STATUS_UNSUPPORTED;
        default:
            return FA_STATUS_CUDA_ERROR;
    }
}

[[noreturn]] void throw_cuda_error(cudaError_t err, const std::string& what) {
    // Reset the non-sticky error state before anything else, so the caller's next CUDA call does not
    // see our failure. (A sticky error, such as an illegal address, cannot be cleared by anyone.)
    (void)cudaGetLastError();
    const fa_status_t status = status_for_cuda_error(err);
    std::string message;
    if (status == FA_STATUS_NO_DEVICE) {
        message = no_device_message(err) + " (" + what + " returned " + cudaGetErrorName(err) + ")";
    } else {
        message = what + " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
        if (err == cudaErrorNoKernelImageForDevice) {
            message += " (this build has no kernel for this GPU's architecture: rebuild with FA_CUDA_ARCHS "
                       "including it)";
        } else if (err == cudaErrorUnsupportedPtxVersion || err == cudaErrorInvalidPtx) {
            message += " (the library was built with a newer CUDA toolkit than the driver supports: "
                       "update the NVIDIA driver)";
        }
    }
    fail(status, std::move(message));
}

int device_count() {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        throw_cuda_error(err, "cudaGetDeviceCount");
    }
    if (count <= 0) {
        fail(FA_STATUS_NO_DEVICE,
             "no CUDA-capable device is visible: check nvidia-smi and CUDA_VISIBLE_DEVICES");
    }
    return count;
}

void check_device_ordinal(int device, const char* argument_name) {
    if (device < 0) {
        fail(FA_STATUS_INVALID_ARGUMENT, std::string(argument_name) + " is " + std::to_string(device) +
                                             "; a device ordinal must be >= 0");
    }
    const int count = device_count();
    if (device >= count) {
        fail(FA_STATUS_INVALID_ARGUMENT,
             std::string(argument_name) + " is " + std::to_string(device) + " but only " +
                 std::to_string(count) + (count == 1 ? " CUDA device is" : " CUDA devices are") +
                 " visible (ordinals 0.." + std::to_string(count - 1) + ")");
    }
}

DeviceGuard::DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) {
        const cudaError_t err = cudaSetDevice(device);
        if (err != cudaSuccess) {
            throw_cuda_error(err, "cudaSetDevice(" + std::to_string(device) + ")");
        }
        restore_ = true;
    }
}

DeviceGuard::~DeviceGuard() {
    if (restore_) {
        if (cudaSetDevice(previous_) != cudaSuccess) {
            (void)cudaGetLastError();
        }
    }
}

}  // namespace fa
