// What a launcher needs to know of the device it launches on: filled once per context by the host
// (native/src/api.cpp, fa_context_create) and passed to every launch. Plain data.
#pragma once
#include <cstdint>

namespace fa {

struct LaunchInfo {
    int32_t device;
    int32_t cc_major, cc_minor;
    int32_t sm_count;
    int64_t smem_optin;  // dynamic shared memory a block may opt in to, bytes
    int32_t l2_bytes;    // L2 cache size (0 if unknown)
    // The context's word of device-found violations (params/device_flags.h): pinned, mapped host memory the
    // kernels write and the host reads without a copy; nullptr where a harness has none (nothing is reported).
    uint32_t* device_flags;
    // Longest wait for a turn (the deterministic backward's dQ order), in ns of the global timer; 0: unbounded.
    int64_t turn_wait_ns;
};

}  // namespace fa
