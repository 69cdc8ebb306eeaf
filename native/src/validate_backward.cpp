// Validation of fa_backward_params_t and translation into fa::BwdParams.
//
// The forward call's arguments (q, k, v, out, lse and the options) go through validate_attention.cpp's core,
// as fa_forward checks them; then come the gradient tensors, the memory they must not overlap, and the
// workspace. An UNSUPPORTED verdict of the core waits until every argument of the backward call has been
// checked, so a wrong argument is reported first. The one exception is fp8 (e4m3) inputs: the fp8 forward has no
// backward, so there is no contract to check the other arguments against; that is UNSUPPORTED right after the
// struct itself.
//
// Versions of fa_backward_params_t: 0.3 to 0.6 end after workspace_size; 0.7 appends the learnable sinks and their
// gradient dsinks, 0.8 the ALiBi slopes, 0.9 dropout (p, seed, offset), which an older caller's smaller struct
// lacks (read as data NULL, dropout_p 0: none).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "device_memory.h"
#include "dispatch.h"
#include "error.h"
#include "params_defaults.h"
#include "validate.h"
#include "validate_attention.h"
#include "validate_common.h"

namespace fa {

using namespace validation;

namespace {

void check_backward_struct(const fa_backward_params_t* params, int32_t compute_capability) {
    if (params == nullptr) {
        invalid("params is NULL");
    }
    // Fields past the caller's struct_size are not read (they get their defaults); a larger struct_size (a newer
    // caller) is accepted and its unknown tail ignored.
    if (params->struct_size < kBackwardParamsMinSize) {
        invalid("params->struct_size is " + s(params->struct_size) + " but fa_backward_params_t has " +
                s(static_cast<int64_t>(sizeof(fa_backward_params_t))) + " bytes in this library (at least " +
                s(static_cast<int64_t>(kBackwardParamsMinSize)) +
                " for version 0.6): fill params with fa_backward_params_init");
    }
    check_reserved(params->reserved0, "params->reserved0");
    check_reserved(params->reserved1, "params->reserved1");
    {
        static const fa_backward_params_t defaults = default_params<fa_backward_params_t>(sizeof(fa_backward_params_t));
        check_reserved(FA_FIELD_OR_DEFAULT(*params, defaults, reserved2), "params->reserved2");
    }
    if (params->lse.data == nullptr) {
        invalid("lse.data is NULL; the backward pass needs the log-sum-exp the forward call wrote");
    }
    check_compute_capability_arg(compute_capability, "compute_capability");
}

// fp8 (e4m3) q, k or v (the inputs of an fp8 forward): UNSUPPORTED, naming the first such tensor. Other tensors
// of that dtype are INVALID_ARGUMENT in their own checks (no pass writes or takes an fp8 out or gradient).
void refuse_fp8(const fa_backward_params_t& P) {
    const struct {
        const fa_tensor_t& t;
        const char* name;
    } inputs[] = {{P.q, "q"}, {P.k, "k"}, {P.v, "v"}};
    for (const auto& in : inputs) {
        if (in.t.dtype == FA_DTYPE_FLOAT8_E4M3) {
            unsupported(std::string(in.name) + ".dtype is FA_DTYPE_FLOAT8_E4M3: " +
                        dtype_refusal(Pass::Backward, DType::Float8E4M3));
        }
    }
}

// What fa_backward_params_init writes: the values of the fields an older caller's struct lacks.
const fa_backward_params_t& backward_defaults() {
    static const fa_backward_params_t defaults = default_params<fa_backward_params_t>(sizeof(fa_backward_params_t));
    return defaults;
}

// A byte range and the argument's name, for the overlap checks.
struct Named {
    Extent e;
    const char* name;
};

// dout, dq, dk, dv: each on its own, with q's dtype and the shape of the tensor it goes with. Returns their
// extents in that order.
std::vector<Named> check_gradients(const fa_backward_params_t& P, const AttentionShape& sh) {
    const bool varlen = sh.varlen;
    const char* hint = varlen ? "; a variable-length batch (cu_seqlens_q set) packs the sequences along one dimension" : "";
    const int32_t rank = varlen ? 3 : 4;
    const int32_t empty_dim = varlen ? 0 : -1;
    const char* q_dims[4] = {"batch", "seqlen_q", "heads_q", "head_dim"};
    const char* k_dims[4] = {"batch", "seqlen_k", "heads_kv", "head_dim"};
    const char* q_dims_v[4] = {"total_q", "heads_q", "head_dim", ""};
    const char* k_dims_v[4] = {"total_k", "heads_kv", "head_dim", ""};
    const char* const* qd = varlen ? q_dims_v : q_dims;
    const char* const* kd = varlen ? k_dims_v : k_dims;
    const struct {
        const fa_tensor_t& t;
        const char* name;
        const fa_tensor_t& like;
        const char* like_name;
        bool query_side;
    } grads[] = {{P.dout, "dout", P.out, "out", true},
                 {P.dq, "dq", P.q, "q", true},
                 {P.dk, "dk", P.k, "k", false},
                 {P.dv, "dv", P.v, "v", false}};
    std::vector<Named> out;
    for (const auto& g : grads) {
        const char* const* dims = g.query_side ? qd : kd;
        out.push_back({check_tensor({g.t, g.name, {dims[0], dims[1], dims[2], dims[3]}, rank, hint},
                                    TensorKind::Attention, empty_dim),
                       g.name});
        if (g.t.dtype != P.q.dtype) {
            invalid(std::string(g.name) + ".dtype is " + dtype_name(g.t.dtype) + " but q.dtype is " +
                    dtype_name(P.q.dtype) + "; dout, dq, dk and dv must have the dtype of q");
        }
        for (int32_t dim = 0; dim < rank; ++dim) {
            if (g.t.shape[dim] != g.like.shape[dim]) {
                invalid(std::string(g.name) + ".shape is " + shape_string(g.t) + " but " + g.like_name + ".shape is " +
                        shape_string(g.like) + "; " + g.name + " must have the shape of " + g.like_name);
            }
        }
    }
    return out;
}

// The (UNSUPPORTED) checks of the backward kernels themselves: the path, shared memory, the grids.
void check_backward_served(const fa_backward_params_t& P, const FwdParams& f, int32_t compute_capability) {
    const bool dropout = FA_FIELD_OR_DEFAULT(P, backward_defaults(), dropout_p) > 0.0f;
    (void)choose_path(Pass::Backward, P.kernel_path, f.d, f.dtype, compute_capability, -1, "kernel_path", -1, dropout, f.dv);
    if (compute_capability != 0 && P.kernel_path != FA_PATH_SM90) {
        check_block_smem(Pass::Backward, P.kernel_path, f.d, compute_capability);
    }
    // Grids of the three kernels: key blocks x batch x kv heads; row blocks / row chunks x (batch x) heads.
    const bool varlen = f.cu_seqlens_q != nullptr;
    const int32_t kd = kernel_head_dim(f.d);
    const int32_t block_n = kernels::has_kernel(Pass::Backward, Path::Sm90, kd)
                                ? std::min(kernels::bwd_block_n(Path::Sm80, kd), kernels::bwd_block_n(Path::Sm90, kd))
                                : kernels::bwd_block_n(Path::Sm80, kd);  // the smaller block: the larger grid
    const int64_t n_blocks = (static_cast<int64_t>(f.sk) + block_n - 1) / block_n;
    const int64_t heads = varlen ? f.hq : static_cast<int64_t>(f.b) * f.hq;
    const int64_t rows = varlen ? f.total_q : f.sq;
    const int64_t grids[] = {n_blocks * f.b * f.hkv, heads * ((rows + 31) / 32), heads * ((rows * (f.d / 8) + 255) / 256)};
    for (const int64_t g : grids) {
        if (g > kInt32Max) {
            unsupported("this backward call needs a grid of " + s(g) +
                        " blocks, more than 2^31 - 1; split the batch or the heads over several calls");
        }
    }
}

// dsinks (absent: data NULL): needs sinks; fp32 [heads_q], any positive stride, 4-byte aligned. Returns its extent
// (0..0 when absent).
Extent check_dsinks(const fa_tensor_t& dsinks, const AttentionShape& sh) {
    if (dsinks.data == nullptr) {
        return Extent{0, 0};
    }
    if (!sh.has_sinks) {
        invalid("dsinks.data is set but sinks.data is NULL; dsinks is the gradient of the sinks: pass the sinks of "
                "the forward call, or leave dsinks.data NULL");
    }
    const Extent e = check_tensor({dsinks, "dsinks", {"heads_q", "", "", ""}, 1, "; one fp32 value per query head"},
                                  TensorKind::Float32);
    if (dsinks.shape[0] != sh.hq) {
        invalid("dsinks.shape is " + shape_string(dsinks) + " but must be [heads_q] = [" + s(sh.hq) +
                "], the shape of sinks");
    }
    return e;
}

BwdParams backward_params(const fa_backward_params_t& P, const fa_tensor_t& dsinks, const FwdParams& f) {
    const bool varlen = f.cu_seqlens_q != nullptr;
    BwdParams p{};
    p.f = f;
    p.dout = P.dout.data;
    p.dq = P.dq.data;
    p.dk = P.dk.data;
    p.dv = P.dv.data;
    const int32_t row_dim = varlen ? 0 : 1;
    p.do_row_stride = P.dout.strides[row_dim];
    p.do_head_stride = P.dout.strides[row_dim + 1];
    p.dq_row_stride = P.dq.strides[row_dim];
    p.dq_head_stride = P.dq.strides[row_dim + 1];
    p.dk_row_stride = P.dk.strides[row_dim];
    p.dk_head_stride = P.dk.strides[row_dim + 1];
    p.dv_row_stride = P.dv.strides[row_dim];
    p.dv_head_stride = P.dv.strides[row_dim + 1];
    if (!varlen) {
        p.do_batch_stride = P.dout.strides[0];
        p.dq_batch_stride = P.dq.strides[0];
        p.dk_batch_stride = P.dk.strides[0];
        p.dv_batch_stride = P.dv.strides[0];
    }
    p.deterministic = P.deterministic;
    if (dsinks.data != nullptr) {
        p.dsinks = static_cast<float*>(dsinks.data);
        p.dsinks_stride = dsinks.strides[0];
    }
    p.kernel_d = kernel_head_dim(f.d);
    p.q_slots = varlen ? static_cast<int64_t>(f.hq) * f.total_q : static_cast<int64_t>(f.b) * f.hq * f.sq;
    return p;
}

// A caller workspace: aligned, large enough, apart from every tensor of the call.
void check_workspace(const fa_backward_params_t& P, size_t need, const std::vector<Named>& read,
                     const std::vector<Named>& written) {
    if (reinterpret_cast<uintptr_t>(P.workspace) % FA_WORKSPACE_ALIGNMENT != 0) {
        invalid("workspace (" + hex(P.workspace) + ") is not " + s(FA_WORKSPACE_ALIGNMENT) + "-byte aligned");
    }
    if (P.workspace_size < need) {
        invalid("workspace_size is " + s(static_cast<int64_t>(P.workspace_size)) + " bytes but this call needs " +
                s(static_cast<int64_t>(need)) + " (ask fa_backward_workspace_size), or pass workspace NULL");
    }
    const Extent w = buffer_extent(P.workspace, need, "workspace");
    for (const Named& r : read) check_no_overlap(w, "workspace", r.e, r.name);
    for (const Named& r : written) check_no_overlap(w, "workspace", r.e, r.name);
}

}  // namespace

BwdParams validate_backward(const fa_backward_params_t* params, int32_t compute_capability, bool check_workspace_arg,
                            size_t* workspace_bytes, MemoryArgs* memory) {
    check_backward_struct(params, compute_capability);
    const fa_backward_params_t& P = *params;
    refuse_fp8(P);
    const fa_backward_params_t& D = backward_defaults();
    // Sinks, ALiBi slopes and dropout come with attention_args; the backward writes no mask and no rng_state.
    const AttentionArgs a = attention_args(P, D);
    // The sinks' gradient (since 0.7): an older caller's struct ends before it and gets D's (data NULL).
    const fa_tensor_t& dsinks = FA_FIELD_OR_DEFAULT(P, D, dsinks);
    const AttentionShape sh = check_attention(a);
    // The forward's UNSUPPORTED verdict waits until every argument has been checked.
    bool served = true;
    std::string unserved;
    try {
        check_attention_served(a, sh, compute_capability);
    } catch (const Error& e) {
        if (e.status() != FA_STATUS_UNSUPPORTED) throw;
        served = false;
        unserved = e.what();
    }

    const std::vector<Named> grads = check_gradients(P, sh);
    const Extent dsinks_extent = check_dsinks(dsinks, sh);
    check_flag(P.deterministic, "deterministic");

    // Written tensors must not overlap each other or anything read.
    std::vector<Named> read = {{sh.q, "q"}, {sh.k, "k"}, {sh.v, "v"}, {sh.out, "out"}, grads[0], {sh.lse, "lse"}};
    if (sh.varlen) {
        read.push_back({cu_extent(P.cu_seqlens_q, P.varlen_batch, "cu_seqlens_q"), "cu_seqlens_q"});
        read.push_back({cu_extent(P.cu_seqlens_k, P.varlen_batch, "cu_seqlens_k"), "cu_seqlens_k"});
    }
    if (sh.has_sinks) read.push_back({sh.sinks, "sinks"});
    if (sh.alibi.on) read.push_back({sh.alibi.extent, "alibi_slopes"});
    std::vector<Named> written(grads.begin() + 1, grads.end());  // dq, dk, dv (and dsinks)
    if (dsinks.data != nullptr) written.push_back({dsinks_extent, "dsinks"});
    for (size_t i = 0; i < written.size(); ++i) {
        for (const Named& r : read) check_no_overlap(written[i].e, written[i].name, r.e, r.name);
        for (size_t j = 0; j < i; ++j) check_no_overlap(written[i].e, written[i].name, written[j].e, written[j].name);
    }

    if (!served) {
        unsupported(unserved);
    }
    FwdParams f = attention_params(a, sh);
    // No sequence of a variable-length batch is longer than the packed rows, so larger maxima only add
    // empty blocks (and could push the grids past 32 bits).
    if (sh.varlen) {
        f.sq = f.sq < f.total_q ? f.sq : f.total_q;
        f.sk = f.sk < f.total_k ? f.sk : f.total_k;
    }
    check_backward_served(P, f, compute_capability);

    BwdParams p = backward_params(P, dsinks, f);
    const BwdWorkspaceLayout ws = bwd_workspace_layout(f, p.kernel_d, P.deterministic != 0, p.dsinks != nullptr);
    if (workspace_bytes != nullptr) *workspace_bytes = ws.total;
    if (check_workspace_arg && P.workspace != nullptr) {
        check_workspace(P, ws.total, read, written);
    }
    if (memory != nullptr) {
        add_attention_memory(a, sh, *memory);
        memory->add("dout.data", "dout's shape and strides", grads[0].e);
        memory->add("dq.data", "dq's shape and strides", grads[1].e);
        memory->add("dk.data", "dk's shape and strides", grads[2].e);
        memory->add("dv.data", "dv's shape and strides", grads[3].e);
        memory->add("dsinks.data", "dsinks' shape and strides", dsinks_extent);  // absent: empty, skipped
        if (P.workspace != nullptr) {
            memory->add("workspace", "the workspace this call needs (fa_backward_workspace_size)",
                        buffer_extent(P.workspace, ws.total, "workspace"));
        }
    }
    return p;
}

void check_backward_params_size(size_t struct_size) {
    if (struct_size < kBackwardParamsMinSize || struct_size > UINT32_MAX) {
        invalid("struct_size is " + s(static_cast<int64_t>(struct_size)) + "; pass sizeof(fa_backward_params_t) (" +
                s(static_cast<int64_t>(sizeof(fa_backward_params_t))) + " in this version, at least " +
                s(static_cast<int64_t>(kBackwardParamsMinSize)) + ")");
    }
}

}  // namespace fa
