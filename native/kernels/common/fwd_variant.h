// The forward's variant choice, the same on every path: masks that can hide keys other than the sequence
// tail (causal, windows) pick the local variant, softcap its own, so the plain kernel carries neither; paged K/V
// (FwdParams::block_table) runs kernels of its own, local ones only (any call may run the local variant), so that
// no kernel of a contiguous call carries the block lookups (as a runtime branch they cost the sm80 kernels 5-11% on
// contiguous calls; bench/NOTES.md, ninth session).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/features.h"
#include "common/mask.cuh"
#include "params/fwd_params.h"

namespace fa {

// Calls launch(local, softcap, dropout, paged) with std::integral_constant<bool> arguments for the call's variant and
// returns its cudaError_t as an int; *features gets the variant (common/features.h). kHasDropout: the family has
// dropout variants (sm80: a local kernel of its own, so that the local kernels every causal call runs carry none
// of its code); without them dropout is never passed (the host refuses such calls first, and dropout with paged K/V).
template <bool kHasDropout = false, class Launch>
int run_fwd_variant(const FwdParams& p, uint32_t* features, Launch&& launch) {
    const bool paged = p.block_table != nullptr;
    const bool local = is_local(p) || paged;
    const bool softcap = p.softcap > 0.f;
    // A dropout call this family has no kernel for (the host sends those elsewhere) fails rather than run without it
    // (its features name the variant asked for, which the registry does not list: "unknown_kernel" in the message).
    const bool no_kernel = p.dropout != 0 && (!kHasDropout || paged);
    const bool dropout = kHasDropout && p.dropout != 0 && !paged;  // is_local(p) is true then
    *features = (local ? feature::kLocal : 0u) | (softcap ? feature::kSoftcap : 0u) |
                (p.dropout != 0 ? feature::kDropout : 0u) | (paged ? feature::kPaged : 0u);
    if (no_kernel) return static_cast<int>(cudaErrorNotSupported);
    using Yes = std::true_type;
    using No = std::false_type;
    cudaError_t err;
    if (paged) {
        err = softcap ? launch(Yes{}, Yes{}, No{}, Yes{}) : launch(Yes{}, No{}, No{}, Yes{});
        return static_cast<int>(err);
    }
    if constexpr (kHasDropout) {
        if (dropout) {
            err = softcap ? launch(Yes{}, Yes{}, Yes{}, No{}) : launch(Yes{}, No{}, Yes{}, No{});
            return static_cast<int>(err);
        }
    }
    if (local) {
        err = softcap ? launch(Yes{}, Yes{}, No{}, No{}) : launch(Yes{}, No{}, No{}, No{});
    } else {
        err = softcap ? launch(No{}, Yes{}, No{}, No{}) : launch(No{}, No{}, No{}, No{});
    }
    return static_cast<int>(err);
}

}  // namespace fa
