// What a kernel found that no check before its launch could see, as causes (bits) with one slot each among the
// context's device-flag words (LaunchInfo::device_flags, kDeviceFlagSlots of them). A kernel that finds one sets
// its cause's slot, leaves the work it cannot do undone (never a trap: that would lose the caller's CUDA context)
// and returns; the host (native/src/device_flags.cpp, report_device_flags) turns the slots into
// FA_STATUS_DEVICE_CHECK_FAILED, names the causes and clears them.
// Plain data, shared by host and device code; values only ever appended.
#pragma once
#include <cstdint>

namespace fa {

// The deterministic backward gave up waiting for its turn on dQ (bwd_wait_turn): another call changed the
// turn counters of its workspace (two calls in flight sharing one), or the wait outlived the bound.
constexpr uint32_t kDeviceFlagTurnTimeout = 1u << 0;
// fa_decode with device-only lengths: a sequence's cache_seqlens was negative, or with its new tokens exceeded the
// cache's capacity (k_cache's length, or the block table's pages times the block size); the kernels clamped it.
constexpr uint32_t kDeviceFlagDecodeLength = 1u << 1;
// fa_decode over a paged cache: a block_table entry a sequence used was outside [0, num_blocks); clamped.
constexpr uint32_t kDeviceFlagDecodeBlockId = 1u << 2;
// fa_decode with a device-only cache_batch_idx: an entry was outside [0, pool size) (k_cache.shape[0], or
// block_table.shape[0] when paged); the kernels clamped it.
constexpr uint32_t kDeviceFlagDecodeBatchIndex = 1u << 3;
// fa_decode with a device-only cache_leftpad: an entry was negative or past the sequence's length with its new
// tokens (cache_seqlens + seqlen_knew); the kernels clamped it.
constexpr uint32_t kDeviceFlagDecodeLeftpad = 1u << 4;
// fa_forward with paged K/V: a block_table entry a sequence used was outside [0, num_blocks); the kernels clamped it.
constexpr uint32_t kDeviceFlagForwardBlockId = 1u << 5;
// fa_decode with device-only cu_seqlens_q / cu_seqlens_k_new: an entry was outside the packed rows, the array
// decreased, or a query count exceeded max_seqlen_q; the kernels clamped it.
constexpr uint32_t kDeviceFlagDecodeCuSeqlens = 1u << 6;
// Every bit this build knows (the host names each; others it reports as numbers).
constexpr uint32_t kDeviceFlagsKnown = kDeviceFlagTurnTimeout | kDeviceFlagDecodeLength | kDeviceFlagDecodeBlockId |
                                       kDeviceFlagDecodeBatchIndex | kDeviceFlagDecodeLeftpad |
                                       kDeviceFlagForwardBlockId | kDeviceFlagDecodeCuSeqlens;
// Each cause has its own 32-bit slot (slot i for bit 1 << i): kDeviceFlagSlots consecutive words per context.
constexpr int kDeviceFlagSlots = 8;

}  // namespace fa
