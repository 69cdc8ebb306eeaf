// The context's device-flag word (kernels/params/device_flags.h): where it lives, the wait bound the
// deterministic backward reads with it, and how the host turns its bits into FA_STATUS_DEVICE_CHECK_FAILED.
#pragma once

#include <cstdint>

#include "params/launch_info.h"

namespace fa {

// A zeroed word for a new context on `device`: pinned, mapped and portable host memory (kernels write it, the
// host reads it without a copy or a synchronisation). Words come from process-wide pages that are never freed,
// so a kernel still in flight after its context was destroyed writes to memory that stays valid (unless the
// caller resets the device the first page was allocated on: cudaDeviceReset frees every pinned allocation).
// The "word" is kDeviceFlagSlots consecutive words, one per cause, so causes found at once are all reported.
uint32_t* acquire_device_flag_word(int device);
// Gives the word of a destroyed context back; it is reused only after kQuarantine others (device_flags.cpp).
void release_device_flag_word(uint32_t* word) noexcept;

// If any of the context's slots (info.device_flags) is set: clears those and throws
// fa::Error(FA_STATUS_DEVICE_CHECK_FAILED) naming each cause (the wait bound from info.turn_wait_ns).
// `launching`: the caller is a pass that would launch (its message adds that it launched nothing).
void report_device_flags(const LaunchInfo& info, bool launching);

// The deterministic backward's bound on a wait for its turn, in ns: FLASH_ATTENTION_DETERMINISTIC_WAIT_MS
// (milliseconds; 0 = no bound) or 10 s. Throws INVALID_ARGUMENT for a value that is not a number in range.
int64_t turn_wait_ns_from_environment();

}  // namespace fa
