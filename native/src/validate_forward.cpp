// Validation of fa_forward_params_t and translation into fa::FwdParams.
//
// Order: every INVALID_ARGUMENT check first (the struct itself here, then validate_attention.cpp's core: the
// fields of a fixed-length or variable-length call, each tensor on its own, then tensors against each other,
// then scalars, then the host copies of cu_seqlens, then memory overlap), then the UNSUPPORTED checks (head
// dim, sizes the kernels index with 32 bits, compute capability, the sm90 path). So a call that is wrong in
// several ways reports a wrong argument before it reports something this build does not serve.
//
// Versions of fa_forward_params_t: v0.1 ends after kernel_path; v0.2 appends the window, softcap and
// variable-length fields; v0.5 the fp8 descale tables (q_descale, k_descale, v_descale); v0.7 the learnable
// sinks; v0.8 the ALiBi slopes; v0.9 dropout (p, seed and offset, rng_state, the keep mask); v0.11 the block table
// of paged K/V. A field is read only when the caller's struct_size covers it, so an older caller's smaller struct
// gets the defaults fa_forward_params_init writes (params_defaults.h): for the descales data NULL, a factor of 1; for
// the sinks and the block table data NULL, none.
#include <cstddef>
#include <string>

#include "device_memory.h"
#include "dispatch.h"
#include "params_defaults.h"
#include "validate.h"
#include "validate_attention.h"
#include "validate_common.h"

namespace fa {

using namespace validation;

namespace {

// What fa_forward_params_init writes: the values of the fields an older caller's struct lacks.
const fa_forward_params_t& forward_defaults() {
    static const fa_forward_params_t defaults = default_params<fa_forward_params_t>(sizeof(fa_forward_params_t));
    return defaults;
}

// The struct itself: present, large enough, reserved fields zero; and the compute capability argument.
void check_forward_struct(const fa_forward_params_t* params, int32_t compute_capability) {
    if (params == nullptr) {
        invalid("params is NULL");
    }
    // Fields past the caller's struct_size are not read (they get their defaults); a larger
    // struct_size (a newer caller) is accepted and its unknown tail ignored.
    if (params->struct_size < kForwardParamsMinSize) {
        invalid("params->struct_size is " + s(params->struct_size) + " but fa_forward_params_t has " +
                s(static_cast<int64_t>(sizeof(fa_forward_params_t))) + " bytes in this library (at least " +
                s(static_cast<int64_t>(kForwardParamsMinSize)) +
                " for version 0.1): fill params with fa_forward_params_init");
    }
    const fa_forward_params_t& P = *params;
    const fa_forward_params_t& D = forward_defaults();
    check_reserved(P.reserved0, "params->reserved0");
    check_compute_capability_arg(compute_capability, "compute_capability");
    check_reserved(FA_FIELD_OR_DEFAULT(P, D, reserved1), "params->reserved1");
    check_reserved(FA_FIELD_OR_DEFAULT(P, D, reserved2), "params->reserved2");
    check_reserved(FA_FIELD_OR_DEFAULT(P, D, reserved3), "params->reserved3");
}


}  // namespace

std::string describe(const FwdParams& p) {
    const bool varlen = p.cu_seqlens_q != nullptr;
    std::string out = varlen ? "varlen b=" + s(p.b) + " max_sq=" + s(p.sq) + " max_sk=" + s(p.sk) + " total_q=" +
                                   s(p.total_q) +
                                   (p.block_table != nullptr
                                        ? " paged(block " + s(p.block_size) + ", " + s(p.num_blocks) + " blocks)"
                                        : " total_k=" + s(p.total_k))
                             : "b=" + s(p.b) + " sq=" + s(p.sq) + " sk=" + s(p.sk);
    out += " hq=" + s(p.hq) + " hkv=" + s(p.hkv) + " d=" + s(p.d) + " " + dtype_tag(p.dtype);
    if (p.dtype == DType::Float8E4M3) {
        const FwdDescale* const tables[3] = {&p.q_descale, &p.k_descale, &p.v_descale};
        static const char* const names[3] = {"q", "k", "v"};
        std::string given;
        for (int i = 0; i < 3; ++i) {
            if (tables[i]->data == nullptr) continue;
            given += std::string(given.empty() ? "" : ",") + names[i] +
                     (tables[i]->batch_stride == 0 && tables[i]->head_stride == 0 ? "(per tensor)" : "");
        }
        out += given.empty() ? " descale(none)" : " descale(" + given + ")";
    }
    if (p.causal != 0) {
        out += varlen ? std::string(p.bottom_right != 0 ? " causal(bottom-right)" : " causal(top-left)")
                      : " causal(offset " + s(p.causal_offset) + ")";
    } else {
        out += " non-causal";
    }
    if (p.window_left >= 0 || (p.window_right >= 0 && p.causal == 0)) {
        out += " window(" + s(p.window_left) + ", " + s(p.window_right) +
               (p.bottom_right != 0 ? ", bottom-right)" : ", top-left)");
    }
    if (p.softcap > 0.0f) {
        out += " softcap=" + float_string(p.softcap);
    }
    if (p.sinks != nullptr) {
        out += " +sinks";
    }
    if (p.alibi_slopes != nullptr) {
        out += p.alibi_causal ? " +alibi(causal form)" : " +alibi";
    }
    if (p.dropout != 0) {
        out += " +dropout(threshold " + s(p.dropout_threshold) + (p.dropout_mask != nullptr ? ", mask)" : ")");
    }
    return out + (p.lse != nullptr ? " +lse" : "");
}

FwdParams validate_forward(const fa_forward_params_t* params, int32_t compute_capability, MemoryArgs* memory) {
    check_forward_struct(params, compute_capability);
    const fa_forward_params_t& P = *params;
    const fa_forward_params_t& D = forward_defaults();
    AttentionArgs a = attention_args(P, D);
    // The fp8 descales (since 0.5): an older caller's struct ends before them and gets D's (data NULL).
    a.q_descale = &FA_FIELD_OR_DEFAULT(P, D, q_descale);
    a.k_descale = &FA_FIELD_OR_DEFAULT(P, D, k_descale);
    a.v_descale = &FA_FIELD_OR_DEFAULT(P, D, v_descale);
    // The forward's own dropout outputs (since 0.9): likewise (sinks, ALiBi and the rest of dropout: attention_args).
    a.dropout_rng_state = FA_FIELD_OR_DEFAULT(P, D, dropout_rng_state);
    a.dropout_mask = &FA_FIELD_OR_DEFAULT(P, D, dropout_mask);
    // Paged K/V (since 0.11): likewise.
    a.block_table = &FA_FIELD_OR_DEFAULT(P, D, block_table);
    const AttentionShape shape = check_attention(a);
    check_attention_served(a, shape, compute_capability);
    // FA_PATH_SM90 where it does not serve, fp8 anywhere but on the sm90 forward, and dropout anywhere but on the
    // sm80 path (and the sm90 dropout kernels, in a build with them): UNSUPPORTED, saying why (dispatch.cpp chooses
    // the path).
    (void)choose_path(Pass::Forward, a.kernel_path, static_cast<int32_t>(shape.d), kernel_dtype(a.q->dtype),
                      compute_capability, -1, "kernel_path", -1, shape.dropout, shape.dv);
    if (memory != nullptr) {
        add_attention_memory(a, shape, *memory);
    }
    return attention_params(a, shape);
}

}  // namespace fa
