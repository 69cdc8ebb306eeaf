// The read-back of a trace build's stamps (sm90/fwd_trace.cuh, sm90/bwd_trace.cuh): the host side of the
// fa_debug_*_trace exports, for the device array `symbol` of the translation unit that defines them.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace fa {
namespace sm90 {

// Copies the first `bytes` (at most the array's) after synchronizing the device: the bytes copied, < 0 on an error.
template <class Symbol>
int trace_read(const Symbol& symbol, void* dst, size_t bytes) {
    if (bytes > sizeof(Symbol)) bytes = sizeof(Symbol);
    if (cudaDeviceSynchronize() != cudaSuccess) return -1;
    return cudaMemcpyFromSymbol(dst, symbol, bytes) == cudaSuccess ? static_cast<int>(bytes) : -2;
}

// Zeroes the array on the device: 0, or < 0 on an error.
template <class Symbol>
int trace_clear(const Symbol& symbol) {
    void* address = nullptr;
    if (cudaGetSymbolAddress(&address, symbol) != cudaSuccess) return -2;
    return cudaMemset(address, 0, sizeof(Symbol)) == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess ? 0 : -2;
}

}  // namespace sm90
}  // namespace fa
