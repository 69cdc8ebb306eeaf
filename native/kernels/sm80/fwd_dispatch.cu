// Runtime -> compile-time switch of the forward pass: dtype and head dim pick the instantiation.
// A head dim without its own instantiation (any multiple of 8 up to 256) runs the next larger one,
// whose loads zero-fill the missing columns and whose stores skip them. The host side (native/src)
// has validated every argument before this is called.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "bwd_params.h"
#include "decode_params.h"
#include "params.h"
#include "sm80/fwd_instances.h"
#include "sm80/fwd_names.h"
#include "sm80/head_dims.h"

namespace fa {

namespace {
// Head dims compiled into this build (CMake's FA_HEAD_DIMS), ascending.
constexpr int32_t kCompiled[] = {
#if defined(FA_HAS_HDIM32)
    32,
#endif
#if defined(FA_HAS_HDIM64)
    64,
#endif
#if defined(FA_HAS_HDIM96)
    96,
#endif
#if defined(FA_HAS_HDIM128)
    128,
#endif
#if defined(FA_HAS_HDIM192)
    192,
#endif
#if defined(FA_HAS_HDIM256)
    256,
#endif
    0};  // sentinel, keeps the array non-empty

template <typename T>
int run_for_head_dim(int32_t kernel_d, const FwdParams& p, const LaunchInfo& info, cudaStream_t stream,
                     const char** name) {
    return sm80::with_compiled_head_dim(kernel_d, static_cast<int>(cudaErrorInvalidValue), [&](auto d) {
        return sm80::run_fwd<T, decltype(d)::value>(p, info, stream, name);
    });
}
}  // namespace

int32_t forward_kernel_head_dim(int32_t d) {
    if (d <= 0 || d % 8 != 0) return 0;
    for (const int32_t k : kCompiled) {
        if (k != 0 && k >= d) return k;
    }
    return 0;
}

bool forward_head_dim_compiled(int32_t d) { return forward_kernel_head_dim(d) != 0; }

int32_t forward_compiled_head_dims(const int32_t** dims) {
    if (dims) *dims = kCompiled;
    return static_cast<int32_t>(sizeof(kCompiled) / sizeof(kCompiled[0])) - 1;
}

namespace sm80 {
namespace {
// Every variant of every compiled head dim, in a fixed order; built once.
const std::vector<std::string>& all_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> out;
        for (const int32_t d : kCompiled) {
            if (d == 0) continue;
            for (const char* dtype : {"fp16", "bf16"}) {
                for (const char* variant : {"", "_softcap", "_local", "_local_softcap"}) {
                    out.push_back(std::string("sm80_fwd_") + dtype + "_hdim" + std::to_string(d) + variant + "_" +
                                  tile_tag_for(d));
                }
            }
        }
        return out;
    }();
    return names;
}
}  // namespace

const char* kernel_name(bool bf16, int d, bool local, bool softcap) {
    // Same order as all_names(): per head dim, fp16 then bf16, then the four variants.
    int index = 0;
    for (const int32_t k : kCompiled) {
        if (k == d) break;
        if (k != 0) index += 8;
    }
    index += (bf16 ? 4 : 0) + (local ? 2 : 0) + (softcap ? 1 : 0);
    const auto& names = all_names();
    return index < static_cast<int>(names.size()) ? names[index].c_str() : "sm80_fwd_unknown";
}
}  // namespace sm80

// The forward kernels, then the backward ones (bwd_dispatch.cu), then the decode ones (decode_dispatch.cu).
int32_t kernel_count() {
    return static_cast<int32_t>(sm80::all_names().size()) + backward_kernel_count() + decode_kernel_count();
}

const char* kernel_name_at(int32_t index) {
    const auto& names = sm80::all_names();
    const int32_t forward = static_cast<int32_t>(names.size());
    const int32_t backward = backward_kernel_count();
    if (index < 0) return nullptr;
    if (index < forward) return names[index].c_str();
    if (index < forward + backward) return backward_kernel_name_at(index - forward);
    return decode_kernel_name_at(index - forward - backward);
}

int launch_forward(const FwdParams& p, const LaunchInfo& info, void* stream, const char** kernel_name) {
    const auto s = static_cast<cudaStream_t>(stream);
    const int32_t kd = forward_kernel_head_dim(p.d);
    if (p.dtype == DType::BFloat16) return run_for_head_dim<__nv_bfloat16>(kd, p, info, s, kernel_name);
    return run_for_head_dim<__half>(kd, p, info, s, kernel_name);
}

}  // namespace fa
