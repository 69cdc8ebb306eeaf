// Error reporting of the C ABI: the exception type the host code throws, the thread-local last error,
// and the FA_API_BEGIN / FA_API_END boundary that wraps the body of every exported function.
//
// Inside the library, failures are C++ exceptions (fa::Error carries a status and a sentence). The
// boundary macros turn every exception into a status plus a thread-local message, so nothing ever
// unwinds across the C ABI. tools/check_abi_boundary.py proves that every export uses them.
#pragma once

#include <exception>
#include <new>
#include <string>

#include "flash_attention.h"

namespace fa {

// A failure with a status the caller can branch on and a message the user can act on.
class Error : public std::exception {
public:
    Error(fa_status_t status, std::string message) : status_(status), message_(std::move(message)) {}
    fa_status_t status() const noexcept { return status_; }
    const char* what() const noexcept override { return message_.c_str(); }

private:
    fa_status_t status_;
    std::string message_;
};

[[noreturn]] void fail(fa_status_t status, std::string message);

namespace detail {
// Empties this thread's last-error message (every status-returning export does this on entry).
void clear_last_error() noexcept;
// Stores message as this thread's last error and returns status. Never throws.
fa_status_t record_error(fa_status_t status, const char* message) noexcept;
}  // namespace detail

// Routes a message to the log callback, if one is set. Never throws; cheap when none is set.
void log(fa_log_level_t level, const std::string& message) noexcept;
// True when a log callback is set (lets callers skip building messages nobody reads).
bool log_enabled() noexcept;
// Replaces the process-wide log callback (nullptr turns logging off).
void set_log_callback(fa_log_callback_t callback, void* user_data);
// Constant name of a status; "FA_STATUS_UNKNOWN" for values this build does not know.
const char* status_name(fa_status_t status) noexcept;
// This thread's last-error message ("" after a successful call).
const char* last_error_text() noexcept;

}  // namespace fa

// Boundary of an exported function that returns fa_status_t. The body between the two macros ends
// with `return FA_STATUS_SUCCESS;` (or another status); any exception becomes a status and message.
#define FA_API_BEGIN                   \
    try {                              \
        ::fa::detail::clear_last_error();

#define FA_API_END                                                                                    \
    }                                                                                                 \
    catch (const ::fa::Error& e) {                                                                    \
        return ::fa::detail::record_error(e.status(), e.what());                                     \
    }                                                                                                 \
    catch (const std::bad_alloc&) {                                                                   \
        return ::fa::detail::record_error(FA_STATUS_OUT_OF_MEMORY,                                    \
                                          "a host memory allocation inside the library failed");      \
    }                                                                                                 \
    catch (const std::exception& e) {                                                                 \
        return ::fa::detail::record_error(FA_STATUS_INTERNAL, e.what());                              \
    }                                                                                                 \
    catch (...) {                                                                                     \
        return ::fa::detail::record_error(FA_STATUS_INTERNAL, "an unknown C++ exception was caught"); \
    }

// Boundary of an exported function that cannot fail and returns a plain value (fa_status_string,
// fa_version, fa_last_error_message). It leaves the last error untouched, so that
// `fa_status_string(s)` and `fa_last_error_message()` may be evaluated in either order after a
// failure. Should the body throw anyway (a library bug), the error is recorded and `fallback` returned.
#define FA_API_BEGIN_NOFAIL try {

#define FA_API_END_NOFAIL(fallback)                                                                \
    }                                                                                              \
    catch (const std::exception& e) {                                                              \
        ::fa::detail::record_error(FA_STATUS_INTERNAL, e.what());                                  \
        return (fallback);                                                                         \
    }                                                                                              \
    catch (...) {                                                                                  \
        ::fa::detail::record_error(FA_STATUS_INTERNAL, "an unknown C++ exception was caught");     \
        return (fallback);                                                                         \
    }
