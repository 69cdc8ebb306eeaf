// See device_memory.h.
#include "device_memory.h"

#include <cuda.h>  // the CUpointer_attribute values and CUresult only: libcuda is reached through the runtime
#include <cuda_runtime_api.h>

#include <string>

#include "cuda_check.h"
#include "error.h"

namespace fa {

using validation::hex;
using validation::s;

void MemoryArgs::add(const char* field, const char* span, validation::Extent extent) {
    if (extent.end < extent.begin) {
        // Validation builds every range without wrapping; one that wraps is a bug here, never a buffer to trust.
        fail(FA_STATUS_INTERNAL, std::string("the byte range of ") + field + " wraps the address space");
    }
    if (extent.end == extent.begin) {
        return;  // nothing is read or written through it
    }
    if (count_ >= kMaxMemoryArgs) {
        fail(FA_STATUS_INTERNAL, "too many memory arguments for the device-memory check");
    }
    items_[count_++] = MemoryArg{field, span, extent};
}

namespace {

using PointerGetAttributes = CUresult (*)(unsigned int, CUpointer_attribute*, void**, CUdeviceptr);

// cuPointerGetAttributes from the driver the runtime loaded, or nullptr where it cannot be had (the size check
// is then skipped). Looked up once: a function's address in the loaded driver cannot change.
PointerGetAttributes driver_pointer_attributes() {
    static const PointerGetAttributes fn = [] {
        void* address = nullptr;
        cudaError_t err;
#if CUDART_VERSION >= 12050
        cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
        err = cudaGetDriverEntryPointByVersion("cuPointerGetAttributes", &address, CUDART_VERSION, cudaEnableDefault,
                                               &found);
        if (found != cudaDriverEntryPointSuccess) address = nullptr;
#elif CUDART_VERSION >= 12000
        cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
        err = cudaGetDriverEntryPoint("cuPointerGetAttributes", &address, cudaEnableDefault, &found);
        if (found != cudaDriverEntryPointSuccess) address = nullptr;
#else
        err = cudaGetDriverEntryPoint("cuPointerGetAttributes", &address, cudaEnableDefault);
#endif
        if (err != cudaSuccess) {
            (void)cudaGetLastError();  // not sticky; leave nothing for the caller's next CUDA call
            address = nullptr;
        }
        return reinterpret_cast<PointerGetAttributes>(address);
    }();
    return fn;
}

std::string device_memory_hint(int32_t device) {
    return "pass device memory on device " + s(device) +
           " (fa_memory_alloc, cudaMalloc, a framework tensor on that GPU), managed memory or mapped pinned host memory";
}

// The allocation the driver reports around `pointer` covers [extent.begin, extent.end), or the driver does not
// say (no entry point, an unknown attribute on an old driver, no range).
void check_range(const MemoryArg& a, int32_t device) {
    const PointerGetAttributes get = driver_pointer_attributes();
    if (get == nullptr) {
        return;
    }
    CUdeviceptr start = 0;
    size_t size = 0;
    CUpointer_attribute attributes[2] = {CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, CU_POINTER_ATTRIBUTE_RANGE_SIZE};
    void* data[2] = {&start, &size};
    // A driver call: a failure here is not recorded as the runtime's last error, so nothing needs clearing.
    if (get(2, attributes, data, static_cast<CUdeviceptr>(a.extent.begin)) != CUDA_SUCCESS || size == 0) {
        return;
    }
    const uintptr_t begin = static_cast<uintptr_t>(start);
    const uintptr_t end = begin + static_cast<uintptr_t>(size);
    if (a.extent.begin < begin || a.extent.begin >= end) {
        return;  // not the range of this pointer: nothing to conclude
    }
    if (a.extent.end > end) {
        const uintptr_t need = a.extent.end - a.extent.begin;
        const uintptr_t have = end - a.extent.begin;
        fail(FA_STATUS_INVALID_ARGUMENT,
             std::string(a.field) + " (" + hex(reinterpret_cast<void*>(a.extent.begin)) + ") is in an allocation of " +
                 s(static_cast<int64_t>(size)) + " bytes at " + hex(reinterpret_cast<void*>(begin)) +
                 " that has " + s(static_cast<int64_t>(have)) + " bytes from there on, but " + a.span + " span " +
                 s(static_cast<int64_t>(need)) + " bytes: the allocation is too small (on device " + s(device) + ")");
    }
}

void check_one(const MemoryArg& a, int32_t device) {
    const void* pointer = reinterpret_cast<const void*>(a.extent.begin);
    cudaPointerAttributes attr{};
    const cudaError_t err = cudaPointerGetAttributes(&attr, pointer);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();  // clear it: the call below and the caller's next CUDA call must not see it
        if (err != cudaErrorInvalidValue) {
            throw_cuda_error(err, std::string("cudaPointerGetAttributes of ") + a.field);
        }
        // Runtimes before 11.0 answer unregistered host memory this way.
        attr.type = cudaMemoryTypeUnregistered;
    }
    // Built only for a message (this runs for every pointer of every call).
    const auto what = [&a, pointer] { return std::string(a.field) + " (" + hex(pointer) + ")"; };
    switch (attr.type) {
        case cudaMemoryTypeDevice:
            if (attr.device != device) {
                fail(FA_STATUS_INVALID_ARGUMENT, what() + " is device memory on device " + s(attr.device) +
                                                     ", not on device " + s(device) + " (the context's device); " +
                                                     device_memory_hint(device));
            }
            break;
        case cudaMemoryTypeManaged:
            break;
        case cudaMemoryTypeHost:
            if (attr.devicePointer == nullptr) {
                fail(FA_STATUS_INVALID_ARGUMENT, what() + " is pinned host memory that is not mapped into the GPU's "
                                                        "address space, not device memory on device " +
                                                     s(device) + "; " + device_memory_hint(device));
            }
            if (attr.devicePointer != pointer) {
                fail(FA_STATUS_INVALID_ARGUMENT, what() + " is mapped pinned host memory whose device address is " +
                                                     hex(attr.devicePointer) + "; pass that address (cudaHostGetDevicePointer)");
            }
            break;
        default:  // cudaMemoryTypeUnregistered
            fail(FA_STATUS_INVALID_ARGUMENT, what() + " is host memory (or freed device memory), not device memory on device " +
                                                 s(device) + "; " + device_memory_hint(device));
    }
    check_range(a, device);
}

}  // namespace

void check_device_memory(const MemoryArgs& args, int32_t device) {
    for (int i = 0; i < args.count(); ++i) {
        check_one(args[i], device);
    }
}

}  // namespace fa
