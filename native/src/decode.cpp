// The exported fa_decode* functions: decoding new queries over a KV cache. Each body sits between
// FA_API_BEGIN and FA_API_END; tools/check_abi_boundary.py enforces it. Validation lives in
// validate_decode.cpp, the kernels in native/kernels/sm80/decode_* (through the registry).
#include <cuda_runtime_api.h>

#include <string>

#include "context.h"
#include "cuda_check.h"
#include "device_flags.h"
#include "device_memory.h"
#include "dispatch.h"
#include "error.h"
#include "flash_attention.h"
#include "params_defaults.h"
#include "validate.h"

namespace {

using fa::fail;

void require_non_null(const void* pointer, const char* name) {
    if (pointer == nullptr) {
        fail(FA_STATUS_INVALID_ARGUMENT, std::string(name) + " is NULL");
    }
}

// A validated call with the split count it runs with on the context's device, and the workspace that needs.
struct Plan {
    fa::DecodeParams p;
    size_t workspace_bytes;
};

// *memory (when given) receives the device pointers of the call (validate_decode's list).
Plan plan(fa_context_t context, const fa_decode_params_t* params, fa::MemoryArgs* memory = nullptr) {
    require_non_null(context, "context");
    const fa::LaunchInfo& info = context->info;
    int32_t length_hint = 0;
    Plan out{fa::validate_decode(params, info.cc_major * 10 + info.cc_minor, &length_hint, memory), 0};
    // Before anything is launched (the append kernel runs first): a GPU with too little shared memory per
    // block for this head dim's kernel is told so, instead of failing at launch after the append.
    const bool fp8 = out.p.cache_dtype == fa::DType::Float8E4M3;
    const int32_t need = fa::kernels::decode_smem_bytes(fa::kernel_head_dim(out.p.d), out.p.cache_dtype);
    if (need > info.smem_optin) {
        fail(FA_STATUS_UNSUPPORTED, std::string("the decode kernel ") + (fp8 ? "of an fp8 cache " : "") + "for head dim " +
                                        std::to_string(out.p.d) + " needs " +
                                        std::to_string(need) + " bytes of shared memory per block, but device " +
                                        std::to_string(info.device) + " allows " + std::to_string(info.smem_optin));
    }
    out.p.num_splits = fa::kernels::decode_num_splits(out.p, info, params->num_splits, length_hint, FA_DECODE_MAX_SPLITS);
    out.workspace_bytes = fa::decode_workspace_bytes(out.p, out.p.num_splits);
    return out;
}

}  // namespace

extern "C" {

FA_API fa_status_t fa_decode_params_init(fa_decode_params_t* params, size_t struct_size) {
    FA_API_BEGIN
    require_non_null(params, "params");
    if (struct_size < fa::kDecodeParamsMinSize || struct_size > UINT32_MAX) {
        fail(FA_STATUS_INVALID_ARGUMENT, "struct_size is " + std::to_string(struct_size) +
                                             "; pass sizeof(fa_decode_params_t) (" +
                                             std::to_string(sizeof(fa_decode_params_t)) + " in this version)");
    }
    fa::init_params(params, struct_size);  // params_defaults.h: the defaults of every pass, written once
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_decode_check(const fa_decode_params_t* params, int32_t compute_capability) {
    FA_API_BEGIN
    (void)fa::validate_decode(params, compute_capability, nullptr);
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_decode_workspace_size(fa_context_t context, const fa_decode_params_t* params, size_t* bytes) {
    FA_API_BEGIN
    require_non_null(bytes, "bytes");
    *bytes = 0;
    *bytes = plan(context, params).workspace_bytes;
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_decode_num_splits(fa_context_t context, const fa_decode_params_t* params, int32_t* num_splits) {
    FA_API_BEGIN
    require_non_null(num_splits, "num_splits");
    *num_splits = 0;
    *num_splits = plan(context, params).p.num_splits;
    return FA_STATUS_SUCCESS;
    FA_API_END
}

FA_API fa_status_t fa_decode(fa_context_t context, const fa_decode_params_t* params, void* stream) {
    FA_API_BEGIN
    if (context != nullptr) fa::report_device_flags(context->info, true);
    fa::MemoryArgs memory;
    Plan pl = plan(context, params, &memory);
    fa::DecodeParams& p = pl.p;
    const fa::LaunchInfo& info = context->info;
    if (pl.workspace_bytes > 0 && params->workspace != nullptr && params->workspace_size < pl.workspace_bytes) {
        fail(FA_STATUS_INVALID_ARGUMENT, "workspace_size is " + std::to_string(params->workspace_size) +
                                             " bytes but this call needs " + std::to_string(pl.workspace_bytes) +
                                             " (" + std::to_string(p.num_splits) +
                                             " key splits; fa_decode_workspace_size gives the figure)");
    }
    // Nothing below synchronises or touches the legacy stream. With a caller workspace nothing is
    // allocated either; without one the partials come from the stream-ordered pool (capturable in a graph
    // where the driver supports stream-ordered allocation there).
    if (pl.workspace_bytes > 0 && params->workspace != nullptr) {
        memory.add("workspace", "the workspace this call needs (fa_decode_workspace_size)",
                   fa::validation::buffer_extent(params->workspace, pl.workspace_bytes, "workspace"));
    }
    fa::DeviceGuard guard(info.device);
    // Every pointer the kernels dereference is memory this GPU can use (never a fault that loses the context).
    fa::check_device_memory(memory, info.device);
    const auto st = static_cast<cudaStream_t>(stream);
    void* workspace = params->workspace;
    bool owned = false;
    if (pl.workspace_bytes > 0 && workspace == nullptr) {
        const cudaError_t err = cudaMallocAsync(&workspace, pl.workspace_bytes, st);
        if (err != cudaSuccess) {
            fa::throw_cuda_error(err, "cudaMallocAsync of the " + std::to_string(pl.workspace_bytes) +
                                          "-byte decode workspace (" + std::to_string(p.num_splits) + " key splits)");
        }
        owned = true;
    }
    if (pl.workspace_bytes > 0) {
        unsigned char* base = static_cast<unsigned char*>(workspace);
        p.o_accum = reinterpret_cast<float*>(base);
        p.lse_accum = reinterpret_cast<float*>(base + fa::decode_accum_offset(p, p.num_splits));
    }
    const char* kernel_name = nullptr;
    const fa::Path path = fa::choose_path(fa::Pass::Decode, params->kernel_path, p.d, p.dtype,
                                          info.cc_major * 10 + info.cc_minor, info.smem_optin, "kernel_path", info.device);
    const int result = fa::kernels::launch_decode(path, p, info, stream, &kernel_name);
    // The free is ordered after the kernels, so it is issued even when a launch failed.
    const cudaError_t free_err = owned ? cudaFreeAsync(workspace, st) : cudaSuccess;
    if (result != 0) {
        const std::string name = kernel_name != nullptr ? kernel_name : "the decode kernels";
        fa::throw_cuda_error(static_cast<cudaError_t>(result),
                             "launching " + name + " (" + fa::describe(p) + ") on device " + std::to_string(info.device));
    }
    if (free_err != cudaSuccess) {
        fa::throw_cuda_error(free_err, "cudaFreeAsync of the decode workspace");
    }
    if (fa::log_enabled()) {
        fa::log(FA_LOG_DEBUG, std::string("fa_decode: ") + (kernel_name != nullptr ? kernel_name : "(unnamed kernel)") +
                                  " for " + fa::describe(p));
    }
    return FA_STATUS_SUCCESS;
    FA_API_END
}

}  // extern "C"
