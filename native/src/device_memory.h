// The last check of fa_forward, fa_backward and fa_decode before anything is launched: every pointer the
// kernels will read or write is memory the context's GPU can reach (DESIGN.md, "The C ABI": bad input returns
// a status and a message and never faults on the GPU, which would lose the whole process's CUDA context).
//
// Validation (validate_*.cpp) has already checked each descriptor and computed the byte range it spans; the
// run functions collect those ranges in a MemoryArgs and call check_device_memory on the context's device.
// The *_check functions run without a device and do not call this.
//
// Per pointer: cudaPointerGetAttributes says what the memory is (device memory on the context's device,
// managed memory and mapped pinned host memory pass; unregistered host memory, freed device memory, pinned host
// memory that is not mapped and another device's memory are refused). Then, where the driver tells it, the
// range is checked against the allocation: cuPointerGetAttributes (through cudaGetDriverEntryPoint, so the
// library does not link libcuda) gives CU_POINTER_ATTRIBUTE_RANGE_START_ADDR / RANGE_SIZE, the allocation of
// cudaMalloc / cudaMallocManaged / cudaHostAlloc, or the whole reserved range of virtual-memory-management
// mappings and stream-ordered pools. A range that reaches past it is refused. cuMemGetAddressRange is not used:
// on VMM memory (PyTorch's expandable segments) it reports one mapped chunk, and a tensor may legally span
// several adjacent chunks. Nothing is cached but the driver entry point itself (it cannot go stale).
//
// Not detectable, and so not refused: memory freed back to a stream-ordered pool (cudaFreeAsync) or to a
// caching allocator, whose addresses stay mapped; a range running into a neighbouring allocation of a pool or
// into an unmapped part of a VMM reservation.
#pragma once

#include <cstdint>

#include "validate_common.h"

namespace fa {

// One pointer the call dereferences on the device and the byte range it is used over.
struct MemoryArg {
    const char* field;  // the argument as messages name it: "q.data", "cu_seqlens_q", "workspace"
    const char* span;   // what sizes the range, for the too-small message: "q's shape and strides"
    validation::Extent extent;
};

// The pointers of one call (at most kMaxMemoryArgs; fixed storage, no allocation).
class MemoryArgs {
public:
    static constexpr int kMaxMemoryArgs = 16;
    // Adds a range; an empty range (nothing is read or written there) is skipped.
    void add(const char* field, const char* span, validation::Extent extent);
    int count() const { return count_; }
    const MemoryArg& operator[](int i) const { return items_[i]; }

private:
    MemoryArg items_[kMaxMemoryArgs] = {};
    int count_ = 0;
};

// INVALID_ARGUMENT naming the first argument whose memory device `device` cannot use (see above); CUDA_ERROR /
// NO_DEVICE when CUDA itself fails. Leaves no CUDA error behind on this thread.
void check_device_memory(const MemoryArgs& args, int32_t device);

}  // namespace fa
