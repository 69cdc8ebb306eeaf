// Thread-local last error, status names and the log callback.
#include "error.h"

#include <atomic>
#include <mutex>

namespace fa {

namespace {

// The message of this thread's last failed call. `text` points either into `storage` or at a
// string literal (when storing the message itself ran out of memory).
struct LastError {
    std::string storage;
    const char* text = "";
};

LastError& last_error() noexcept {
    thread_local LastError value;
    return value;
}

struct LogSink {
    std::mutex mutex;
    fa_log_callback_t callback = nullptr;
    void* user_data = nullptr;
    std::atomic<bool> enabled{false};
};

LogSink& log_sink() noexcept {
    static LogSink sink;
    return sink;
}

}  // namespace

[[noreturn]] void fail(fa_status_t status, std::string message) {
    throw Error(status, std::move(message));
}

namespace detail {

void clear_last_error() noexcept {
    LastError& e = last_error();
    e.storage.clear();  // keeps capacity; never allocates
    e.text = "";
}

fa_status_t record_error(fa_status_t status, const char* message) noexcept {
    LastError& e = last_error();
    if (message == nullptr || message[0] == '\0') {
        message = "the call failed without a message (a library bug; please report it)";
    }
    try {
        e.storage.assign(message);
        e.text = e.storage.c_str();
    } catch (...) {
        e.text = "the call failed and the library ran out of host memory while recording why";
    }
    return status;
}

}  // namespace detail

bool log_enabled() noexcept {
    return log_sink().enabled.load(std::memory_order_acquire);
}

void log(fa_log_level_t level, const std::string& message) noexcept {
    LogSink& sink = log_sink();
    if (!sink.enabled.load(std::memory_order_acquire)) {
        return;
    }
    fa_log_callback_t callback = nullptr;
    void* user_data = nullptr;
    {
        std::lock_guard<std::mutex> lock(sink.mutex);
        callback = sink.callback;
        user_data = sink.user_data;
    }
    // Called outside the lock so that a callback may itself call into the library.
    if (callback != nullptr) {
        callback(static_cast<int32_t>(level), message.c_str(), user_data);
    }
}

void set_log_callback(fa_log_callback_t callback, void* user_data) {
    LogSink& sink = log_sink();
    std::lock_guard<std::mutex> lock(sink.mutex);
    sink.callback = callback;
    sink.user_data = callback != nullptr ? user_data : nullptr;
    sink.enabled.store(callback != nullptr, std::memory_order_release);
}

const char* status_name(fa_status_t status) noexcept {
    switch (status) {
        case FA_STATUS_SUCCESS: return "FA_STATUS_SUCCESS";
        case FA_STATUS_INVALID_ARGUMENT: return "FA_STATUS_INVALID_ARGUMENT";
        case FA_STATUS_UNSUPPORTED: return "FA_STATUS_UNSUPPORTED";
        case FA_STATUS_NO_DEVICE: return "FA_STATUS_NO_DEVICE";
        case FA_STATUS_OUT_OF_MEMORY: return "FA_STATUS_OUT_OF_MEMORY";
        case FA_STATUS_CUDA_ERROR: return "FA_STATUS_CUDA_ERROR";
        case FA_STATUS_INTERNAL: return "FA_STATUS_INTERNAL";
        case FA_STATUS_DEVICE_CHECK_FAILED: return "FA_STATUS_DEVICE_CHECK_FAILED";
    }
    return "FA_STATUS_UNKNOWN";
}

const char* last_error_text() noexcept {
    return last_error().text;
}

}  // namespace fa
