// The object behind fa_context_t: a device ordinal and the device facts the dispatcher needs, read
// once at creation. Immutable after creation, so one context serves many threads and streams.
#pragma once

#include "params/launch_info.h"

struct fa_context {
    fa::LaunchInfo info;  // device ordinal, compute capability, SM count, shared-memory opt-in, L2 size
};
