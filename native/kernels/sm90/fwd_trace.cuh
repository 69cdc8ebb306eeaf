// Where a tile's time goes in the sm90 forward (a measuring tool, off by default): with FA_SM90_FWD_TRACE (the CMake
// option of that name) every CTA records clock64 stamps of each tile's phases in g_fwd_trace, [CTA][its j-th tile]
// [role: 0 the producer's loading thread, 1.. thread 0 of each consumer][event], and fa_debug_fwd_trace copies the
// head-dim-128 bf16 kernels' copy to the host (the array is per translation unit). bench/fwd_trace.py reads it after
// one call and prints each phase's median in cycles and in main-loop iterations. Events, consumers: 0 tile top (its
// facts worked out), 1 Q arrived, 2 first K arrived, 3 first block's P packed, 4 main loop done, 5 last P V retired,
// 6 epilogue done, 7 (a value) the tile index | key blocks << 32; producer: 0 tile top, 1 first K slot free, 2 Q slot
// free, 3 the tile's loads issued. The stamps are volatile reads and global stores of one thread per role: the trace
// build's speed is near, not equal to, the release build's (bench/NOTES.md, thirteenth session).
#pragma once

namespace fa {
namespace sm90 {

#ifdef FA_SM90_FWD_TRACE
constexpr int kTraceCtas = 132, kTraceTiles = 40, kTraceRoles = 4, kTraceEvents = 8;
[[maybe_unused]] static __device__ long long g_fwd_trace[kTraceCtas][kTraceTiles][kTraceRoles][kTraceEvents];
#define FA_TRACE_AT(role, slot, ev, value)                                                                       \
    do {                                                                                                       \
        if (blockIdx.x < kTraceCtas && (slot) < kTraceTiles) g_fwd_trace[blockIdx.x][slot][role][ev] = (value); \
    } while (0)
#else
#define FA_TRACE_AT(role, slot, ev, value) ((void)(slot))
#endif
#define FA_TRACE(role, slot, ev) FA_TRACE_AT(role, slot, ev, clock64())

}  // namespace sm90
}  // namespace fa
