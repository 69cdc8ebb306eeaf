// See dispatch.h.
#include "dispatch.h"

#include "error.h"
#include "flash_attention.h"

namespace fa {

namespace {
const char* pass_name(Pass pass) { return pass == Pass::Forward ? "forward" : pass == Pass::Backward ? "backward" : "decode"; }
}  // namespace

bool path_serves(Pass pass, Path path, int32_t kernel_d, int32_t cc, std::string* why) {
    const char* reason = nullptr;
    if (path == Path::Sm90) {
        if (pass == Pass::Decode) {
            reason = "the sm90 kernels serve the forward and backward passes; decode runs on the sm80 path "
                     "(pass FA_PATH_AUTO or FA_PATH_SM80)";
        } else if (!kernels::has_sm90_code()) {
            reason = "this build has no sm_90a code (configure with FA_CUDA_ARCHS containing 90a)";
        } else if (cc != 0 && cc != 90) {
            reason = "the wgmma kernels run on compute capability 9.0 only";
        } else if (!kernels::has_kernel(pass, path, kernel_d)) {
            reason = pass == Pass::Forward ? "this build has no sm90 forward kernel for that head dim (the 64, 128 and 256 "
                                             "kernels serve head dims up to 64, 128 and 256)"
                                           : "the sm90 backward serves the head dims of the 64, 128 and 256 kernels (33..64, 97..128 and "
                     "193..256 in a build of every head dim)";
        }
    } else if (!kernels::has_kernel(pass, path, kernel_d)) {
        reason = "this build has no kernel for that head dim";
    }
    if (reason != nullptr && why != nullptr) *why = reason;
    return reason == nullptr;
}

Path choose_path(Pass pass, int32_t kernel_path, int32_t head_dim, int32_t cc, int64_t smem_optin,
                 const std::string& field, int32_t device) {
    const int32_t kd = kernels::kernel_head_dim(head_dim);
    std::string why;
    bool sm90 = path_serves(pass, Path::Sm90, kd, cc, &why);
    if (sm90 && smem_optin >= 0 && kernels::smem_bytes(pass, Path::Sm90, kd) > smem_optin) {
        sm90 = false;
        why = (device >= 0 ? "device " + std::to_string(device) : std::string("the GPU")) +
              " lacks the shared memory of the sm90 " + pass_name(pass) + " kernel";
    }
    if (kernel_path == FA_PATH_SM90 && !sm90) {
        fail(FA_STATUS_UNSUPPORTED, field + " is FA_PATH_SM90, but " + why + " (head dim " + std::to_string(head_dim) +
                                        (device >= 0 ? ", device " + std::to_string(device) : std::string()) + ")");
    }
    return sm90 && kernel_path != FA_PATH_SM80 ? Path::Sm90 : Path::Sm80;
}

int32_t smem_need(Pass pass, int32_t kernel_path, int32_t kernel_d, int32_t cc) {
    const bool sm90 = kernel_path != FA_PATH_SM80 && path_serves(pass, Path::Sm90, kernel_d, cc, nullptr);
    return kernels::smem_bytes(pass, sm90 ? Path::Sm90 : Path::Sm80, kernel_d);
}

BwdWorkspaceLayout bwd_workspace_layout(const FwdParams& f, int32_t kernel_d, bool deterministic) {
    const bool varlen = f.cu_seqlens_q != nullptr;
    const size_t slots = varlen ? static_cast<size_t>(f.hq) * f.total_q : static_cast<size_t>(f.b) * f.hq * f.sq;
    const auto round = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
    BwdWorkspaceLayout w{};
    w.dq_accum = round(slots * kernel_d * sizeof(float));
    w.dsum = round(slots * sizeof(float));
    w.lse_log2 = round(slots * sizeof(float));
    const size_t m_blocks = (static_cast<size_t>(f.sq) + kBwdMinBlockM - 1) / kBwdMinBlockM;
    w.sem = deterministic ? round(static_cast<size_t>(f.b) * f.hq * m_blocks * sizeof(int32_t)) : 0;
    w.total = w.dq_accum + w.dsum + w.lse_log2 + w.sem;
    return w;
}

size_t decode_accum_offset(const DecodeParams& p, int32_t num_splits) {
    const size_t rows = static_cast<size_t>(num_splits) * p.b * p.hq * p.sq;
    const size_t o_bytes = rows * static_cast<size_t>(p.d) * sizeof(float);
    return (o_bytes + FA_WORKSPACE_ALIGNMENT - 1) / FA_WORKSPACE_ALIGNMENT * FA_WORKSPACE_ALIGNMENT;
}

size_t decode_workspace_bytes(const DecodeParams& p, int32_t num_splits) {
    if (num_splits <= 1) return 0;
    const size_t rows = static_cast<size_t>(num_splits) * p.b * p.hq * p.sq;
    return decode_accum_offset(p, num_splits) + rows * sizeof(float);
}

}  // namespace fa
