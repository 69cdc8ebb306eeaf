// Where an iteration's time goes in the sm90 backward (a measuring tool, off by default): with FA_SM90_BWD_TRACE (the
// CMake option of that name) one thread of each role of every CTA adds the clock64 cycles of each phase of each
// iteration into g_bwd_trace[CTA][role][event] (role 0, 1: the consumer warpgroups' first threads; 2: the deterministic
// mode's turn warp) with fire-and-forget atomic adds, and fa_debug_bwd_trace copies one translation unit's array to the
// host (the array is per unit; CMake's FA_SM90_BWD_TRACE_HDIM picks the bf16 kernels of that head dim).
// bench/bwd_trace.py prints each phase's cycles per iteration. Events, consumers: 0 Q/dO/statistics wait, 1 S^T and
// dP^T products, 2 softmax and dS^T, 3 (kSplit) P^T hand-over barrier, 4 dS^T stores and the dV/dK issue, 5 the
// middle barrier, 6 the dQ product (with dV/dK retiring; at D 64 in the default mode, FA_SM90_BWD_EARLY_S, also the
// next block's stage wait and S^T/dP^T issue: event 0 then holds no stage wait and event 1 less of the products),
// 7 the turn barrier (deterministic), 8 the dQ adds, 9 iterations, 10 prologue (kernel start to the first iteration),
// 11 epilogue; turn warp: 0 poll, 1 the wait for the consumers' adds, 2 the pass, 9 iterations. The stamps move the
// kernel's timing a little: compare trace builds with trace builds.
#pragma once

namespace fa {
namespace sm90 {

#ifdef FA_SM90_BWD_TRACE
constexpr int kBwdTraceCtas = 8192, kBwdTraceRoles = 3, kBwdTraceEvents = 12;
[[maybe_unused]] static __device__ unsigned long long g_bwd_trace[kBwdTraceCtas][kBwdTraceRoles][kBwdTraceEvents];
struct BwdTrace {  // (the bodies are device code only: the host pass parses them too)
    unsigned long long* row = nullptr;  // nullptr: this thread does not trace
    long long t = 0;
    __device__ __forceinline__ BwdTrace(int role, bool tracer) {
#ifdef __CUDA_ARCH__
        row = tracer && blockIdx.x < kBwdTraceCtas ? g_bwd_trace[blockIdx.x][role] : nullptr;
        t = clock64();
#else
        (void)role, (void)tracer;
#endif
    }
    // Adds the cycles since the last lap to event e.
    __device__ __forceinline__ void lap(int e) {
#ifdef __CUDA_ARCH__
        const long long now = clock64();
        if (row != nullptr) atomicAdd(row + e, static_cast<unsigned long long>(now - t));
        t = now;
#else
        (void)e;
#endif
    }
    __device__ __forceinline__ void count(int e) {
#ifdef __CUDA_ARCH__
        if (row != nullptr) atomicAdd(row + e, 1ull);
#else
        (void)e;
#endif
    }
};
#else
struct BwdTrace {
    __device__ __forceinline__ BwdTrace(int, bool) {}
    __device__ __forceinline__ void lap(int) {}
    __device__ __forceinline__ void count(int) {}
};
#endif

}  // namespace sm90
}  // namespace fa
