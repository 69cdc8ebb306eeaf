// The context's device-flag word: see device_flags.h.
#include "device_flags.h"

#include <cuda_runtime_api.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "error.h"
#include "params/device_flags.h"

namespace fa {

namespace {

constexpr size_t kPageBytes = 4096;
constexpr int64_t kDefaultTurnWaitMs = 10000;
// A destroyed context's word is reused only after this many other words were given back since: a kernel of the
// destroyed context still in flight (fa_context_destroy does not wait for work) would otherwise set bits that a
// new context reports as its own. Bounds the pinned memory at about 128 KiB beyond the live contexts' slots.
constexpr size_t kQuarantine = 4096;

struct WordPool {
    std::mutex mutex;
    std::vector<uint32_t*> fresh;      // never handed out
    std::deque<uint32_t*> released;    // given back, oldest first
};

WordPool& pool() {
    static WordPool* p = new WordPool();  // never destroyed: contexts may outlive static destruction
    return *p;
}

}  // namespace

uint32_t* acquire_device_flag_word(int device) {
    WordPool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.fresh.empty() && p.released.size() <= kQuarantine) {
        // On `device`, so that the allocation does not create a CUDA context on another GPU; portable, so
        // that every device's kernels may write it (one address everywhere under unified addressing).
        DeviceGuard guard(device);
        void* page = nullptr;
        check_cuda(cudaHostAlloc(&page, kPageBytes, cudaHostAllocMapped | cudaHostAllocPortable),
                   "cudaHostAlloc of the device-flag page (4096 bytes of pinned, mapped host memory)");
        void* device_view = nullptr;
        const cudaError_t err = cudaHostGetDevicePointer(&device_view, page, 0);
        if (err != cudaSuccess || device_view != page) {
            cudaFreeHost(page);
            if (err != cudaSuccess) throw_cuda_error(err, "cudaHostGetDevicePointer of the device-flag page");
            fail(FA_STATUS_UNSUPPORTED, "the device-flag page has a device address other than its host address "
                                        "(no unified addressing); FlashAttention needs a 64-bit platform with it");
        }
        auto* words = static_cast<uint32_t*>(page);
        for (size_t i = kPageBytes / sizeof(uint32_t) / kDeviceFlagSlots; i-- > 0;) {
            p.fresh.push_back(words + i * kDeviceFlagSlots);
        }
    }
    uint32_t* word = nullptr;
    if (!p.fresh.empty()) {
        word = p.fresh.back();
        p.fresh.pop_back();
    } else {
        word = p.released.front();
        p.released.pop_front();
    }
    for (int i = 0; i < kDeviceFlagSlots; ++i) __atomic_store_n(word + i, 0u, __ATOMIC_RELEASE);
    return word;
}

void release_device_flag_word(uint32_t* word) noexcept {
    if (word == nullptr) return;
    try {
        WordPool& p = pool();
        std::lock_guard<std::mutex> lock(p.mutex);
        p.released.push_back(word);
    } catch (...) {
        // A word not returned is 4 bytes of a page that lives as long as the process anyway.
    }
}

void report_device_flags(const LaunchInfo& info, bool launching) {
    uint32_t* word = info.device_flags;
    if (word == nullptr) return;
    uint32_t bits = 0;
    for (int i = 0; i < kDeviceFlagSlots; ++i) {
        if (__atomic_load_n(word + i, __ATOMIC_ACQUIRE) != 0 && __atomic_exchange_n(word + i, 0u, __ATOMIC_ACQ_REL) != 0) {
            bits |= 1u << i;  // (an exchange that finds 0: another thread reported it first)
        }
    }
    if (bits == 0) return;
    std::string message;
    const auto add = [&](const std::string& text) { message += (message.empty() ? "" : "; ") + text; };
    if (bits & kDeviceFlagTurnTimeout) {
        add("an earlier deterministic fa_backward on this context gave up waiting for its turn on dQ after " +
            std::to_string(info.turn_wait_ns / 1000000) +
            " ms, so its dq is not valid: two calls in flight shared one workspace (give each stream its own), or a "
            "legitimate wait outlived FLASH_ATTENTION_DETERMINISTIC_WAIT_MS (set when the context is created; 0 waits "
            "without a bound)");
    }
    if (bits & kDeviceFlagDecodeLength) {
        add("an earlier fa_decode on this context read a cache_seqlens entry that was negative or, with the call's new "
            "tokens, beyond the cache's capacity (k_cache's length, or the block table's pages times the block "
            "size); the kernels clamped it, so that sequence's output, lse and append are not valid (pass "
            "cache_seqlens_host too and such a length is refused before the launch)");
    }
    if (bits & kDeviceFlagDecodeBlockId) {
        add("an earlier fa_decode on this context read a block_table entry outside [0, num_blocks) (num_blocks = "
            "k_cache.shape[0]); the kernels clamped it, so that sequence's output, lse and append are not valid");
    }
    if (bits & kDeviceFlagDecodeBatchIndex) {
        add("an earlier fa_decode on this context read a cache_batch_idx entry outside the pool of cache rows "
            "[0, k_cache.shape[0]) (block_table.shape[0] when paged); the kernels clamped it for reading and appended "
            "nothing for that sequence, so its output and lse are not valid (pass cache_batch_idx_host too and such an "
            "entry is refused before the launch)");
    }
    if (bits & kDeviceFlagDecodeLeftpad) {
        add("an earlier fa_decode on this context read a cache_leftpad entry that was negative or past the sequence's "
            "length with the call's new tokens (cache_seqlens + seqlen_knew); the kernels clamped it, so that "
            "sequence's output and lse are not valid (pass cache_leftpad_host too and such a pad is refused before the "
            "launch)");
    }
    if (bits & kDeviceFlagDecodeCuSeqlens) {
        add("an earlier fa_decode on this context read a cu_seqlens_q or cu_seqlens_k_new entry outside the packed rows "
            "(q.shape[0] or k_new.shape[0]), decreasing, not starting at 0, or giving a sequence more queries than "
            "max_seqlen_q or more appended keys than its cache holds; the kernels "
            "clamped it, so that sequence's appended keys, output and lse are not valid (pass cu_seqlens_q_host / "
            "cu_seqlens_k_new_host too and such an array is refused before the launch)");
    }
    if (bits & kDeviceFlagForwardBlockId) {
        add("an earlier fa_forward on this context read a block_table entry outside [0, num_blocks) (num_blocks = "
            "k.shape[0]); the kernels clamped it, so that sequence's output and lse are not valid");
    }
    if (const uint32_t unknown = bits & ~kDeviceFlagsKnown) {
        char hex[16];
        std::snprintf(hex, sizeof(hex), "%x", unknown);
        add(std::string("an earlier call on this context reported device flags 0x") + hex);
    }
    if (launching) message += "; this call launched nothing (call fa_context_check after a stream's work to see it there)";
    fail(FA_STATUS_DEVICE_CHECK_FAILED, message);
}

int64_t turn_wait_ns_from_environment() {
    const char* text = std::getenv("FLASH_ATTENTION_DETERMINISTIC_WAIT_MS");
    if (text == nullptr || *text == '\0') return kDefaultTurnWaitMs * 1000000;
    errno = 0;
    char* end = nullptr;
    const long long ms = std::strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || ms < 0 || ms > 86400000LL) {
        fail(FA_STATUS_INVALID_ARGUMENT, std::string("FLASH_ATTENTION_DETERMINISTIC_WAIT_MS is '") + text +
                                             "'; it must be a whole number of milliseconds from 0 (no bound) to "
                                             "86400000 (a day)");
    }
    return static_cast<int64_t>(ms) * 1000000;
}

}  // namespace fa
