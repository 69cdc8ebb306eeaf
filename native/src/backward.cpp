// The exported fa_backward* functions. Each body sits between FA_API_BEGIN and FA_API_END
// (tools/check_abi_boundary.py enforces it).
#include <cuda_runtime_api.h>

#include <string>

#include "context.h"
#include "cuda_check.h"
#include "device_flags.h"
#include "device_memory.h"
#include "error.h"
#include "flash_attention.h"
#include "params_defaults.h"
#include "validate.h"

namespace {

void require(const void* pointer, const char* name) {
    if (pointer == nullptr) {
        fa::fail(FA_STATUS_INVALID_ARGUMENT, std::string(name) + " is NULL");
    }
}

// The kernel path for the device (dispatch.cpp: the sm90 kernels where they serve and the call allows them;
// UNSUPPORTED for kernel_path SM90 where they do not), and UNSUPPORTED when its main kernel needs more shared
// memory than the GPU allows.
fa::Path choose_kernel(const fa::BwdParams& p, int32_t kernel_path, const fa::LaunchInfo& info) {
    const fa::Path path = fa::choose_path(fa::Pass::Backward, kernel_path, p.f.d, p.f.dtype,
                                          info.cc_major * 10 + info.cc_minor, info.smem_optin, "kernel_path", info.device,
                                          p.f.dropout != 0, p.f.dv);
    const int32_t need = fa::kernels::smem_bytes(fa::Pass::Backward, path, p.kernel_d);
    if (need > info.smem_optin) {
        fa::fail(FA_STATUS_UNSUPPORTED,
                 "the backward kernel for head dim " + std::to_string(p.f.d) + " needs " + std::to_string(need) +
                     " bytes of shared memory per block, but device " + std::to_string(info.device) + " allows " +
                     std::to_string(info.smem_optin));
    }
    return path;
}

// Points the workspace parts of p into `base` (layout from bwd_workspace_layout, as validate_backward sized it),
// then sets p.kernel_d to the head dim of the kernel that `path` runs (the dQ accumulator's row stride).
void carve(fa::BwdParams& p, fa::Path path, char* base) {
    const fa::BwdWorkspaceLayout w =
        fa::bwd_workspace_layout(p.f, p.kernel_d, p.deterministic != 0, p.dsinks != nullptr);
    p.kernel_d = fa::kernels::run_kernel_d(fa::Pass::Backward, path, p.kernel_d);
    p.dq_accum = reinterpret_cast<float*>(base);
    p.dq_copies = w.dq_copies;
    p.dq_copy_stride = static_cast<int64_t>(w.dq_copy / sizeof(float));
    p.dsum = reinterpret_cast<float*>(base + w.dq_accum);
    p.lse_log2 = reinterpret_cast<float*>(base + w.dq_accum + w.dsum);
    p.sem = p.deterministic ? reinterpret_cast<int32_t*>(base + w.dq_accum + w.dsum + w.lse_log2) : nullptr;
    p.sink_partial = p.dsinks != nullptr
                         ? reinterpret_cast<float*>(base + w.dq_accum + w.dsum + w.lse_log2 + w.sem)
                         : nullptr;
}

}  // namespace

extern "C" {

FA_API fa_status_t fa_backward_params_init(fa_backward_params_t* params, size_t struct_size) {
    FA_API_BEGIN
    require(params, "params");
    fa::check_backward_params_size(struct_size);
    fa::init_params(params, struct_size);  // params_defaults.h: the defaults of every pass, written once
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_backward_check(const fa_backward_params_t* params, int32_t compute_capability) {
    FA_API_BEGIN
    (void)fa::validate_backward(params, compute_capability, true, nullptr);
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_backward_workspace_size(fa_context_t context, const fa_backward_params_t* params, size_t* bytes) {
    FA_API_BEGIN
    require(context, "context");
    require(bytes, "bytes");
    *bytes = 0;
    const fa::LaunchInfo& info = context->info;
    size_t need = 0;
    fa::BwdParams p = fa::validate_backward(params, info.cc_major * 10 + info.cc_minor, false, &need);
    (void)choose_kernel(p, params->kernel_path, info);
    *bytes = need;
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_backward(fa_context_t context, const fa_backward_params_t* params, void* stream) {
    FA_API_BEGIN
    require(context, "context");
    const fa::LaunchInfo& info = context->info;
    fa::report_device_flags(info, true);
    size_t need = 0;
    fa::MemoryArgs memory;
    fa::BwdParams p = fa::validate_backward(params, info.cc_major * 10 + info.cc_minor, true, &need, &memory);
    const fa::Path path = choose_kernel(p, params->kernel_path, info);
    // Nothing to compute: no query rows and no keys in any sequence.
    const bool varlen = p.f.cu_seqlens_q != nullptr;
    if (varlen && p.f.total_q == 0 && p.f.total_k == 0) {
        if (p.dsinks != nullptr) {  // no rows: the sinks' gradient is 0, written all the same (stream-ordered)
            fa::DeviceGuard guard(info.device);
            fa::check_device_memory(memory, info.device);
            const size_t pitch = static_cast<size_t>(p.dsinks_stride) * sizeof(float);
            fa::check_cuda(cudaMemset2DAsync(p.dsinks, pitch, 0, sizeof(float), static_cast<size_t>(p.f.hq),
                                             static_cast<cudaStream_t>(stream)),
                           "cudaMemset2DAsync of dsinks");
        }
        return FA_STATUS_SUCCESS;
    }
    fa::DeviceGuard guard(info.device);
    // Every pointer the kernels dereference is memory this GPU can use (never a fault that loses the context).
    fa::check_device_memory(memory, info.device);
    const auto s = static_cast<cudaStream_t>(stream);
    // With no caller workspace the library takes it from the stream's memory pool and gives it back
    // after the kernels (both stream-ordered: no synchronisation).
    void* owned = nullptr;
    void* base = params->workspace;
    if (base == nullptr && need > 0) {
        fa::check_cuda(cudaMallocAsync(&owned, need, s), "cudaMallocAsync of the backward workspace");
        base = owned;
    }
    carve(p, path, static_cast<char*>(base));
    const char* kernel_name = nullptr;
    const int result = fa::kernels::launch_backward(path, p, info, stream, &kernel_name);
    if (owned != nullptr) {
        const cudaError_t freed = cudaFreeAsync(owned, s);
        if (result == 0) fa::check_cuda(freed, "cudaFreeAsync of the backward workspace");
    }
    if (result != 0) {
        const std::string name = kernel_name != nullptr ? kernel_name : "the backward kernels";
        fa::throw_cuda_error(static_cast<cudaError_t>(result),
                             "launching " + name + " (" + fa::describe(p.f) + ") on device " + std::to_string(info.device));
    }
    if (fa::log_enabled()) {
        fa::log(FA_LOG_DEBUG, std::string("fa_backward: ") + (kernel_name != nullptr ? kernel_name : "(unnamed kernel)") +
                                  (p.deterministic ? " (deterministic)" : "") + " for " + fa::describe(p.f));
    }
    return FA_STATUS_SUCCESS;
    FA_API_END
}

}  // extern "C"
