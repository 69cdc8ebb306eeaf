// Every exported fa_* function. Each body sits between FA_API_BEGIN and FA_API_END (or the _NOFAIL
// pair for the three functions that cannot fail); tools/check_abi_boundary.py enforces it.
#include <cuda_runtime_api.h>

#include <cstring>
#include <new>
#include <string>

#include "context.h"
#include "cuda_check.h"
#include "device_flags.h"
#include "device_memory.h"
#include "error.h"
#include "flash_attention.h"
#include "dispatch.h"
#include "params_defaults.h"
#include "validate.h"

namespace {

using fa::fail;

void require_non_null(const void* pointer, const char* name) {
    if (pointer == nullptr) {
        fail(FA_STATUS_INVALID_ARGUMENT, std::string(name) + " is NULL");
    }
}

std::string bytes_string(size_t bytes) {
    return std::to_string(bytes) + " bytes";
}

// Checks the ordinal, makes `device` current for the duration of `call` (restoring the caller's device
// afterwards) and turns a failed cudaError_t from it into fa::Error naming `what`.
template <typename Call>
void call_on_device(int32_t device, const char* what, Call call) {
    fa::check_device_ordinal(device, "device");
    fa::DeviceGuard guard(device);
    fa::check_cuda(call(), what);
}

// fa_stream_create / fa_event_create: *out is NULL unless `create` made a handle on `device`.
template <typename Handle, typename Create>
void create_on_device(int32_t device, void** out, const char* out_name, const char* what, Create create) {
    require_non_null(out, out_name);
    *out = nullptr;
    Handle created = nullptr;
    call_on_device(device, what, [&] { return create(&created); });
    *out = created;
}

}  // namespace

extern "C" {

// ---- errors and versions ---------------------------------------------------------------------

FA_API const char* fa_status_string(fa_status_t status) {
    FA_API_BEGIN_NOFAIL
    return fa::status_name(status);
    FA_API_END_NOFAIL("FA_STATUS_UNKNOWN")
}

FA_API const char* fa_last_error_message(void) {
    FA_API_BEGIN_NOFAIL
    return fa::last_error_text();
    FA_API_END_NOFAIL("")
}

FA_API int32_t fa_version(void) {
    FA_API_BEGIN_NOFAIL
    return FA_VERSION_CODE;
    FA_API_END_NOFAIL(FA_VERSION_CODE)
}

FA_API fa_status_t fa_set_log_callback(fa_log_callback_t callback, void* user_data) {
    FA_API_BEGIN
    fa::set_log_callback(callback, user_data);
    return FA_STATUS_SUCCESS;
    FA_API_END
}

// ---- devices ---------------------------------------------------------------------------------

FA_API fa_status_t fa_device_count(int32_t* count) {
    FA_API_BEGIN
    require_non_null(count, "count");
    *count = 0;
    *count = fa::device_count();
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_device_get_properties(int32_t device, fa_device_properties_t* props) {
    FA_API_BEGIN
    require_non_null(props, "props");
    // A larger struct_size (a newer caller) is accepted and only the fields of v0.1 are written; a
    // smaller one cannot hold them and is refused.
    if (props->struct_size < sizeof(fa_device_properties_t)) {
        fail(FA_STATUS_INVALID_ARGUMENT, "props->struct_size is " + std::to_string(props->struct_size) +
                                             " but fa_device_properties_t has " +
                                             std::to_string(sizeof(fa_device_properties_t)) +
                                             " bytes in this library: set it to sizeof(fa_device_properties_t)");
    }
    fa::check_device_ordinal(device, "device");
    cudaDeviceProp prop;
    std::memset(&prop, 0, sizeof(prop));
    fa::check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    props->major = prop.major;
    props->minor = prop.minor;
    props->multiprocessor_count = prop.multiProcessorCount;
    props->total_memory = static_cast<int64_t>(prop.totalGlobalMem);
    props->shared_memory_per_block_optin = static_cast<int64_t>(prop.sharedMemPerBlockOptin);
    std::memset(props->name, 0, sizeof(props->name));
    std::strncpy(props->name, prop.name, sizeof(props->name) - 1);
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_device_synchronize(int32_t device) {
    FA_API_BEGIN
    call_on_device(device, "cudaDeviceSynchronize", [] { return cudaDeviceSynchronize(); });
    return FA_STATUS_SUCCESS;
    FA_API_END
}

// ---- memory ----------------------------------------------------------------------------------

FA_API fa_status_t fa_memory_alloc(int32_t device, size_t bytes, void** ptr) {
    FA_API_BEGIN
    require_non_null(ptr, "ptr");
    *ptr = nullptr;
    fa::check_device_ordinal(device, "device");
    if (bytes == 0) {
        return FA_STATUS_SUCCESS;  // *ptr stays NULL, which fa_memory_free accepts
    }
    fa::DeviceGuard guard(device);
    void* allocation = nullptr;
    const cudaError_t err = cudaMalloc(&allocation, bytes);
    if (err != cudaSuccess) {
        fa::throw_cuda_error(err, "cudaMalloc of " + bytes_string(bytes) + " on device " + std::to_string(device));
    }
    *ptr = allocation;
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_memory_free(int32_t device, void* ptr) {
    FA_API_BEGIN
    if (ptr == nullptr) {
        return FA_STATUS_SUCCESS;
    }
    call_on_device(device, "cudaFree", [ptr] { return cudaFree(ptr); });
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_memory_alloc_async(size_t bytes, void* stream, void** ptr) {
    FA_API_BEGIN
    require_non_null(ptr, "ptr");
    *ptr = nullptr;
    if (bytes == 0) {
        return FA_STATUS_SUCCESS;  // *ptr stays NULL, which fa_memory_free_async accepts
    }
    // The allocation comes from the memory pool of the stream's device (the current device for the
    // legacy default stream), so no device needs to be made current.
    void* allocation = nullptr;
    const cudaError_t err = cudaMallocAsync(&allocation, bytes, static_cast<cudaStream_t>(stream));
    if (err != cudaSuccess) {
        fa::throw_cuda_error(err, "cudaMallocAsync of " + bytes_string(bytes));
    }
    *ptr = allocation;
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_memory_free_async(void* ptr, void* stream) {
    FA_API_BEGIN
    if (ptr == nullptr) {
        return FA_STATUS_SUCCESS;
    }
    fa::check_cuda(cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream)), "cudaFreeAsync");
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_memcpy(void* dst, const void* src, size_t bytes) {
    FA_API_BEGIN
    if (bytes == 0) {
        return FA_STATUS_SUCCESS;
    }
    require_non_null(dst, "dst");
    require_non_null(src, "src");
    cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyDefault);
    if (err != cudaSuccess) {
        fa::throw_cuda_error(err, "cudaMemcpy of " + bytes_string(bytes));
    }
    // From pageable host memory cudaMemcpy may return once the data is staged, before the DMA lands;
    // the header promises the copy is done, and work on non-blocking streams does not wait for the
    // legacy stream, so wait for it here.
    err = cudaStreamSynchronize(cudaStreamLegacy);
    if (err != cudaSuccess) {
        fa::throw_cuda_error(err, "cudaStreamSynchronize after cudaMemcpy");
    }
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_memcpy_async(void* dst, const void* src, size_t bytes, void* stream) {
    FA_API_BEGIN
    if (bytes == 0) {
        return FA_STATUS_SUCCESS;
    }
    require_non_null(dst, "dst");
    require_non_null(src, "src");
    const cudaError_t err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream));
    if (err != cudaSuccess) {
        fa::throw_cuda_error(err, "cudaMemcpyAsync of " + bytes_string(bytes));
    }
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_memset_async(void* ptr, int32_t value, size_t bytes, void* stream) {
    FA_API_BEGIN
    if (value < 0 || value > 255) {
        fail(FA_STATUS_INVALID_ARGUMENT,
             "value is " + std::to_string(value) + "; it is a byte value and must be in 0..255");
    }
    if (bytes == 0) {
        return FA_STATUS_SUCCESS;
    }
    require_non_null(ptr, "ptr");
    const cudaError_t err = cudaMemsetAsync(ptr, value, bytes, static_cast<cudaStream_t>(stream));
    if (err != cudaSuccess) {
        fa::throw_cuda_error(err, "cudaMemsetAsync of " + bytes_string(bytes));
    }
    return FA_STATUS_SUCCESS;
    FA_API_END
}

// ---- streams and events ----------------------------------------------------------------------

FA_API fa_status_t fa_stream_create(int32_t device, void** stream) {
    FA_API_BEGIN
    create_on_device<cudaStream_t>(device, stream, "stream", "cudaStreamCreateWithFlags", [](cudaStream_t* created) {
        return cudaStreamCreateWithFlags(created, cudaStreamNonBlocking);
    });
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_stream_destroy(void* stream) {
    FA_API_BEGIN
    if (stream == nullptr) {
        return FA_STATUS_SUCCESS;
    }
    fa::check_cuda(cudaStreamDestroy(static_cast<cudaStream_t>(stream)), "cudaStreamDestroy");
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_stream_synchronize(void* stream) {
    FA_API_BEGIN
    fa::check_cuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_event_create(int32_t device, void** event) {
    FA_API_BEGIN
    create_on_device<cudaEvent_t>(device, event, "event", "cudaEventCreateWithFlags", [](cudaEvent_t* created) {
        return cudaEventCreateWithFlags(created, cudaEventDefault);
    });
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_event_destroy(void* event) {
    FA_API_BEGIN
    if (event == nullptr) {
        return FA_STATUS_SUCCESS;
    }
    fa::check_cuda(cudaEventDestroy(static_cast<cudaEvent_t>(event)), "cudaEventDestroy");
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_event_record(void* event, void* stream) {
    FA_API_BEGIN
    require_non_null(event, "event");
    fa::check_cuda(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)),
                   "cudaEventRecord");
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_event_synchronize(void* event) {
    FA_API_BEGIN
    require_non_null(event, "event");
    fa::check_cuda(cudaEventSynchronize(static_cast<cudaEvent_t>(event)), "cudaEventSynchronize");
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_event_elapsed_ms(void* start, void* end, float* milliseconds) {
    FA_API_BEGIN
    require_non_null(start, "start");
    require_non_null(end, "end");
    require_non_null(milliseconds, "milliseconds");
    *milliseconds = 0.0f;
    float elapsed = 0.0f;
    fa::check_cuda(cudaEventElapsedTime(&elapsed, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)),
                   "cudaEventElapsedTime");
    *milliseconds = elapsed;
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_stream_begin_capture(void* stream) {
    FA_API_BEGIN
    if (stream == nullptr) {
        fail(FA_STATUS_INVALID_ARGUMENT,
             "stream is NULL; the legacy default stream cannot be captured into a CUDA graph: capture a stream "
             "from fa_stream_create (or another non-default stream)");
    }
    fa::check_cuda(cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeThreadLocal),
                   "cudaStreamBeginCapture");
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_stream_end_capture(void* stream, void** graph) {
    FA_API_BEGIN
    require_non_null(graph, "graph");
    *graph = nullptr;
    require_non_null(stream, "stream");
    cudaGraph_t captured = nullptr;
    // Ends the capture even when it was invalidated by a failed call inside it; that failure
    // (cudaErrorStreamCaptureInvalidated and the like) is reported here.
    fa::check_cuda(cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &captured), "cudaStreamEndCapture");
    if (captured == nullptr) {
        fail(FA_STATUS_INTERNAL, "cudaStreamEndCapture succeeded but returned no graph");
    }
    cudaGraphExec_t executable = nullptr;
    const cudaError_t err = cudaGraphInstantiateWithFlags(&executable, captured, 0);
    // The executable graph does not need the template graph any more (nor does a failed attempt).
    const cudaError_t destroy_err = cudaGraphDestroy(captured);
    if (err != cudaSuccess) {
        fa::throw_cuda_error(err, "cudaGraphInstantiateWithFlags");
    }
    if (destroy_err != cudaSuccess) {
        (void)cudaGraphExecDestroy(executable);
        fa::throw_cuda_error(destroy_err, "cudaGraphDestroy");
    }
    *graph = executable;
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_graph_launch(void* graph, void* stream) {
    FA_API_BEGIN
    require_non_null(graph, "graph");
    fa::check_cuda(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), static_cast<cudaStream_t>(stream)),
                   "cudaGraphLaunch");
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_graph_destroy(void* graph) {
    FA_API_BEGIN
    if (graph == nullptr) {
        return FA_STATUS_SUCCESS;
    }
    fa::check_cuda(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph)), "cudaGraphExecDestroy");
    return FA_STATUS_SUCCESS;
    FA_API_END
}

// ---- contexts --------------------------------------------------------------------------------

FA_API fa_status_t fa_context_create(int32_t device, fa_context_t* context) {
    FA_API_BEGIN
    require_non_null(context, "context");
    *context = nullptr;
    fa::check_device_ordinal(device, "device");
    cudaDeviceProp prop;
    std::memset(&prop, 0, sizeof(prop));
    fa::check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    if (prop.major < 8) {
        fail(FA_STATUS_UNSUPPORTED, "device " + std::to_string(device) + " (" + prop.name +
                                        ") has compute capability " + std::to_string(prop.major) + "." +
                                        std::to_string(prop.minor) +
                                        "; FlashAttention needs compute capability 8.0 or newer");
    }
    const int64_t turn_wait_ns = fa::turn_wait_ns_from_environment();
    fa_context* created = new fa_context();  // std::bad_alloc becomes FA_STATUS_OUT_OF_MEMORY
    try {
        created->info.device_flags = fa::acquire_device_flag_word(device);
    } catch (...) {
        delete created;
        throw;
    }
    created->info.turn_wait_ns = turn_wait_ns;
    created->info.device = device;
    created->info.cc_major = prop.major;
    created->info.cc_minor = prop.minor;
    created->info.sm_count = prop.multiProcessorCount;
    created->info.smem_optin = static_cast<int64_t>(prop.sharedMemPerBlockOptin);
    created->info.l2_bytes = static_cast<int32_t>(prop.l2CacheSize);
    *context = created;
    if (fa::log_enabled()) {
        fa::log(FA_LOG_DEBUG, "fa_context_create: device " + std::to_string(device) + " (" + prop.name +
                                  "), compute capability " + std::to_string(prop.major) + "." +
                                  std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) +
                                  " SMs, " + std::to_string(prop.sharedMemPerBlockOptin) +
                                  " bytes of opt-in shared memory per block");
    }
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_context_destroy(fa_context_t context) {
    FA_API_BEGIN
    if (context != nullptr) fa::release_device_flag_word(context->info.device_flags);
    delete context;
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_context_get_device(fa_context_t context, int32_t* device) {
    FA_API_BEGIN
    require_non_null(context, "context");
    require_non_null(device, "device");
    *device = context->info.device;
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_context_check(fa_context_t context) {
    FA_API_BEGIN
    require_non_null(context, "context");
    fa::report_device_flags(context->info, false);
    return FA_STATUS_SUCCESS;
    FA_API_END
}

// ---- attention -------------------------------------------------------------------------------

FA_API fa_status_t fa_forward_params_init(fa_forward_params_t* params, size_t struct_size) {
    FA_API_BEGIN
    require_non_null(params, "params");
    if (struct_size < fa::kForwardParamsMinSize || struct_size > UINT32_MAX) {
        fa::fail(FA_STATUS_INVALID_ARGUMENT, "struct_size is " + std::to_string(struct_size) + "; pass sizeof(fa_forward_params_t) (" +
                             std::to_string(sizeof(fa_forward_params_t)) + " in this version, at least " +
                             std::to_string(fa::kForwardParamsMinSize) + ")");
    }
    fa::init_params(params, struct_size);  // params_defaults.h: the defaults of every pass, written once
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_forward_check(const fa_forward_params_t* params, int32_t compute_capability) {
    FA_API_BEGIN
    (void)fa::validate_forward(params, compute_capability);
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_query_support(const fa_support_query_t* query) {
    FA_API_BEGIN
    require_non_null(query, "query");
    fa::check_support_query(*query);
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_kernel_count(int32_t* count) {
    FA_API_BEGIN
    require_non_null(count, "count");
    *count = fa::kernels::kernel_count();
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_kernel_name(int32_t index, const char** name) {
    FA_API_BEGIN
    require_non_null(name, "name");
    *name = nullptr;
    const int32_t count = fa::kernels::kernel_count();
    const char* found = index >= 0 && index < count ? fa::kernels::kernel_name_at(index) : nullptr;
    if (found == nullptr) {
        fail(FA_STATUS_INVALID_ARGUMENT, "index is " + std::to_string(index) + "; this build has " +
                                             std::to_string(count) + " kernels" +
                                             (count > 0 ? ", numbered 0 to " + std::to_string(count - 1) : ""));
    }
    *name = found;
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_forward(fa_context_t context, const fa_forward_params_t* params, void* stream) {
    FA_API_BEGIN
    require_non_null(context, "context");
    const fa::LaunchInfo& info = context->info;
    fa::report_device_flags(info, true);
    fa::MemoryArgs memory;
    const fa::FwdParams p = fa::validate_forward(params, info.cc_major * 10 + info.cc_minor, &memory);
    const fa::Path path = fa::choose_path(fa::Pass::Forward, params->kernel_path, p.d, p.dtype,
                                          info.cc_major * 10 + info.cc_minor, info.smem_optin, "kernel_path", info.device,
                                          p.dropout != 0, p.dv);
    // A variable-length batch with max_seqlen_q = 0 or no query rows has nothing to compute or write.
    // (A fixed-length call always has rows: validation requires every extent >= 1.)
    if (p.cu_seqlens_q != nullptr && (p.sq == 0 || p.total_q == 0)) {
        if (fa::log_enabled()) {
            fa::log(FA_LOG_DEBUG, "fa_forward: nothing to launch for " + fa::describe(p));
        }
        return FA_STATUS_SUCCESS;
    }
    // Nothing below synchronises, allocates or touches the legacy stream, so the launch may be
    // captured into a CUDA graph (the device guard's cudaGetDevice/cudaSetDevice and the kernel's
    // one-time cudaFuncSetAttribute are not stream operations and are legal during a capture).
    fa::DeviceGuard guard(info.device);
    // Every pointer the kernel dereferences is memory this GPU can use (never a fault that loses the context).
    fa::check_device_memory(memory, info.device);
    const char* kernel_name = nullptr;
    const int result = fa::kernels::launch_forward(path, p, info, stream, &kernel_name);
    if (result != 0) {
        const std::string name = kernel_name != nullptr ? kernel_name : "the forward kernel";
        fa::throw_cuda_error(static_cast<cudaError_t>(result),
                             "launching " + name + " (" + fa::describe(p) + ") on device " +
                                 std::to_string(info.device));
    }
    if (fa::log_enabled()) {
        fa::log(FA_LOG_DEBUG, std::string("fa_forward: ") + (kernel_name != nullptr ? kernel_name : "(unnamed kernel)") +
                                  " for " + fa::describe(p));
    }
    return FA_STATUS_SUCCESS;
    FA_API_END
}

}  // extern "C"
