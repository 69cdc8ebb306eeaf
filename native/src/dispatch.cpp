// See dispatch.h.
#include "dispatch.h"

#include "error.h"
#include "flash_attention.h"

namespace fa {

namespace {
const char* pass_name(Pass pass) { return pass == Pass::Forward ? "forward" : pass == Pass::Backward ? "backward" : "decode"; }

// Where the fp8 forward runs, for messages.
constexpr const char* kFp8Sm90Only =
    "fp8 (e4m3) is served by the sm90 forward only (compute capability 9.0 and a build with sm_90a code)";
}  // namespace

const char* dtype_refusal(Pass pass, DType dtype) {
    if (dtype != DType::Float8E4M3 || pass == Pass::Forward) return nullptr;
    return pass == Pass::Backward ? "the fp8 forward has no backward (as FlashAttention-3); use bf16/fp16 for training"
                                  : "decode takes fp16 or bf16 queries (an fp8 KV cache goes with them: k_cache and "
                                    "v_cache FA_DTYPE_FLOAT8_E4M3 with k_descale and v_descale)";
}

const char* dropout_refusal(Pass pass, Path path, DType dtype, int32_t kernel_d) {
    if (pass == Pass::Decode) {
        return "fa_decode has no dropout (flash_attn_with_kvcache fixes dropout_p at 0)";
    }
    if (dtype == DType::Float8E4M3) {
        return "the fp8 (e4m3) forward has no dropout (FlashAttention-3 has none); use bf16/fp16 for training";
    }
    if (path == Path::Sm90 && !(kernel_d > 0 && kernels::has_sm90_dropout(pass, kernel_d))) {
        return pass == Pass::Backward
                   ? "the sm90 kernels have no dropout in the backward (FlashAttention-3 has none); the sm80 path "
                     "serves it on every GPU (pass FA_PATH_AUTO or FA_PATH_SM80)"
                   : "the sm90 kernels have no dropout (FlashAttention-3 has none); the sm80 path serves it on every "
                     "GPU (pass FA_PATH_AUTO or FA_PATH_SM80)";
    }
    return nullptr;
}

bool path_serves(Pass pass, Path path, int32_t kernel_d, DType dtype, int32_t cc, std::string* why, bool dropout) {
    const bool fp8 = dtype == DType::Float8E4M3;
    const char* reason = dtype_refusal(pass, dtype);  // not served on any path
    if (reason == nullptr && dropout) reason = dropout_refusal(pass, path, dtype, kernel_d);
    if (reason == nullptr && path == Path::Sm90) {
        if (pass == Pass::Decode) {
            reason = "the sm90 kernels serve the forward and backward passes; decode runs on the sm80 path "
                     "(pass FA_PATH_AUTO or FA_PATH_SM80)";
        } else if (!kernels::has_sm90_code()) {
            reason = "this build has no sm_90a code (configure with FA_CUDA_ARCHS containing 90a)";
        } else if (cc != 0 && cc != 90) {
            reason = "the wgmma kernels run on compute capability 9.0 only";
        } else if (!kernels::has_kernel(pass, path, kernel_d, dtype)) {
            reason = fp8 ? "this build has no sm90 fp8 forward kernel for that head dim"
                     : pass == Pass::Forward ? "this build has no sm90 forward kernel for that head dim (its kernels at 64, "
                                               "128, 192 and 256, where FA_HEAD_DIMS has them, serve the head dims up to theirs)"
                                             : "this build has no sm90 backward kernel for that head dim (its kernels at 64, "
                                               "128, 192 and 256, where FA_HEAD_DIMS has them, serve the head dims up to theirs)";
        }
    } else if (reason == nullptr && fp8) {
        reason = kFp8Sm90Only;
    } else if (reason == nullptr && !kernels::has_kernel(pass, path, kernel_d, dtype)) {
        reason = "this build has no kernel for that head dim";
    }
    if (reason != nullptr && why != nullptr) *why = reason;
    return reason == nullptr;
}

Path choose_path(Pass pass, int32_t kernel_path, int32_t head_dim, DType dtype, int32_t cc, int64_t smem_optin,
                 const std::string& field, int32_t device, bool dropout, int64_t head_dim_v) {
    const int32_t kd = kernels::kernel_head_dim(head_dim);
    // Built only for a message (this runs on every call).
    const auto where = [&] {
        return " (head dim " + std::to_string(head_dim) + (device >= 0 ? ", device " + std::to_string(device) : std::string()) + ")";
    };
    if (const char* refusal = dtype_refusal(pass, dtype)) {
        fail(FA_STATUS_UNSUPPORTED, std::string("q is ") + dtype_tag(dtype) + ": " + refusal);
    }
    const bool fp8 = dtype == DType::Float8E4M3;
    if (dropout && (pass == Pass::Decode || fp8)) {
        fail(FA_STATUS_UNSUPPORTED, std::string("dropout_p > 0, but ") + dropout_refusal(pass, Path::Sm80, dtype));
    }
    // A V head dim other than q's: the pair kernels (kernels::has_v_kernel): the sm80 forward's (every forward option)
    // and backward's, and the sm90 forward's for both pairs and backward's for (192, 128) (every option but dropout),
    // which AUTO takes where they serve. The pair's own refusals come first; then the path choice below, as for every
    // call.
    const bool v_pair = head_dim_v != 0 && head_dim_v != head_dim;
    const int32_t dv32 = static_cast<int32_t>(head_dim_v > 0 && head_dim_v < (1 << 30) ? head_dim_v : 0);
    std::string pair;
    if (v_pair) {
        pair = "(head_dim " + std::to_string(head_dim) + ", head_dim_v " + std::to_string(head_dim_v) + ")";
        if (pass == Pass::Decode) {
            fail(FA_STATUS_UNSUPPORTED, "a V head dim other than q's " + pair + " is not served by fa_decode");
        }
        if (fp8) {
            fail(FA_STATUS_UNSUPPORTED, "fp8 (e4m3) inputs with a V head dim other than q's " + pair +
                                            ": those pairs run on the sm80 path, in fp16 and bf16");
        }
        if (pass == Pass::Backward && kernels::has_v_kernel(Pass::Forward, head_dim, dv32) &&
            !kernels::has_v_kernel(Pass::Backward, head_dim, dv32)) {
            fail(FA_STATUS_UNSUPPORTED, "head_dim_v " + std::to_string(head_dim_v) + " differs from head_dim " +
                                            std::to_string(head_dim) +
                                            ": the backward of a V head dim other than q's is served for (head_dim, "
                                            "head_dim_v) = (192, 128) only (as FlashAttention-3's; the forward serves "
                                            "(64, 512) too)");
        }
        if (!kernels::has_v_kernel(Pass::Forward, head_dim, dv32)) {
            const bool known = (head_dim == 192 && head_dim_v == 128) || (head_dim == 64 && head_dim_v == 512);
            fail(FA_STATUS_UNSUPPORTED, "head_dim_v is " + std::to_string(head_dim_v) + " but head_dim is " +
                                            std::to_string(head_dim) +
                                            "; a V head dim other than q's is served for (head_dim, head_dim_v) = (192, 128) "
                                            "and (64, 512) only" +
                                            (known ? " (this build lacks head dim " + std::to_string(head_dim) +
                                                         ": FA_HEAD_DIMS picks them at build time)"
                                                   : std::string()));
        }
    }
    if (fp8 && kernel_path == FA_PATH_SM80) {
        fail(FA_STATUS_UNSUPPORTED, field + " is FA_PATH_SM80, but " + kFp8Sm90Only + "; pass FA_PATH_AUTO or FA_PATH_SM90");
    }
    std::string why;
    // A build's sm90 dropout kernels (FA_SM90_FWD_DROPOUT, FA_SM90_BWD_DROPOUT) are the square head dims': a pair's
    // dropout call is refused here for that reason on every GPU (elsewhere dropout_refusal says the path has none).
    const bool pair_dropout = v_pair && dropout && dropout_refusal(pass, Path::Sm90, dtype, kd) == nullptr;
    bool sm90 = !pair_dropout && path_serves(pass, Path::Sm90, kd, dtype, cc, &why, dropout);
    if (pair_dropout) {
        why = "the sm90 kernels have no dropout for a V head dim other than q's " + pair +
              "; the sm80 path serves it on every GPU (pass FA_PATH_AUTO or FA_PATH_SM80)";
    }
    if (sm90 && v_pair && !kernels::has_v_kernel(pass, Path::Sm90, head_dim, dv32)) {
        // (The backward of a pair without a forward kernel, or of (64, 512), was refused above: this is the forward's.)
        sm90 = false;
        why = pass == Pass::Backward ? "the sm90 backward serves the V head dim pair (192, 128) only, not " + pair
                                     : "this build has no sm90 forward kernels of " + pair;
    }
    const auto smem = [&] {  // the sm90 kernel's (asked only where the path serves)
        return v_pair ? kernels::v_smem_bytes(pass, Path::Sm90, head_dim, dv32)
                      : kernels::smem_bytes(pass, Path::Sm90, kd, dtype);
    };
    if (sm90 && smem_optin >= 0 && smem() > smem_optin) {
        sm90 = false;
        why = (device >= 0 ? "device " + std::to_string(device) : std::string("the GPU")) +
              " lacks the shared memory of the sm90 " + (fp8 ? "fp8 " : "") + pass_name(pass) + " kernel" +
              (v_pair ? " of " + pair : std::string());
    }
    if (kernel_path == FA_PATH_SM90 && !sm90) {
        fail(FA_STATUS_UNSUPPORTED, field + " is FA_PATH_SM90, but " + why + where());
    }
    if (fp8 && !sm90) {
        fail(FA_STATUS_UNSUPPORTED, std::string(kFp8Sm90Only) + ", but " + why + where());
    }
    if (dropout && (!sm90 || kernel_path == FA_PATH_SM80)) {
        if (const char* refusal = dropout_refusal(pass, Path::Sm80, dtype)) {
            fail(FA_STATUS_UNSUPPORTED, std::string("dropout_p > 0, but ") + refusal + where());
        }
    }
    return sm90 && kernel_path != FA_PATH_SM80 ? Path::Sm90 : Path::Sm80;
}

int32_t smem_need(Pass pass, int32_t kernel_path, int32_t kernel_d, int32_t cc, DType cache_dtype) {
    if (pass == Pass::Decode) return kernels::decode_smem_bytes(kernel_d, cache_dtype);
    const bool sm90 = kernel_path != FA_PATH_SM80 && path_serves(pass, Path::Sm90, kernel_d, DType::Float16, cc, nullptr);
    return kernels::smem_bytes(pass, sm90 ? Path::Sm90 : Path::Sm80, kernel_d);
}

BwdWorkspaceLayout bwd_workspace_layout(const FwdParams& f, int32_t kernel_d, bool deterministic, bool dsinks) {
    const bool varlen = f.cu_seqlens_q != nullptr;
    const size_t slots = varlen ? static_cast<size_t>(f.hq) * f.total_q : static_cast<size_t>(f.b) * f.hq * f.sq;
    const auto round = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
    BwdWorkspaceLayout w{};
    // The widest dQ accumulator any path of the build runs for kernel_d, so one size serves whichever path runs.
    // Deterministic: kBwdDetDqCopies of it (BwdParams::dq_copies), each dq_copy bytes.
    w.dq_copy = round(slots * kernels::bwd_accum_d(kernel_d) * sizeof(float));
    w.dq_copies = deterministic ? kBwdDetDqCopies : 1;
    w.dq_accum = w.dq_copy * w.dq_copies;
    w.dsum = round(slots * sizeof(float));
    w.lse_log2 = round(slots * sizeof(float));
    const size_t m_blocks = (static_cast<size_t>(f.sq) + kBwdMinBlockM - 1) / kBwdMinBlockM;
    // One counter per (dQ copy, sequence, head, query block), and the word a block sets when it gives up waiting.
    w.sem = deterministic ? round((w.dq_copies * static_cast<size_t>(f.b) * f.hq * m_blocks + 1) * sizeof(int32_t)) : 0;
    // dsinks: one partial per bwd_preprocess block (32 rows of one (sequence, head), or of one head's packed rows).
    const size_t pre_rows = varlen ? static_cast<size_t>(f.total_q) : static_cast<size_t>(f.sq);
    const size_t pre_heads = varlen ? static_cast<size_t>(f.hq) : static_cast<size_t>(f.b) * f.hq;
    w.sink_partial = dsinks ? round(pre_heads * ((pre_rows + 31) / 32) * sizeof(float)) : 0;
    w.total = w.dq_accum + w.dsum + w.lse_log2 + w.sem + w.sink_partial;
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
