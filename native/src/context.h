// The object behind fa_context_t: a device ordinal and the device facts the dispatcher needs, read
// once at creation. Immutable after creation, so one context serves many threads and streams; the one
// thing that changes is the device-flag word info.device_flags points to (device_flags.h), which kernels
// set and the host clears atomically.
#pragma once

#include "params/launch_info.h"

struct fa_context {
    fa::LaunchInfo info;  // device ordinal, compute capability, SM count, shared-memory opt-in, L2 size
};
