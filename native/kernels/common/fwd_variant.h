// The forward's variant choice, the same on every path: masks that can hide keys other than the sequence
// tail (causal, windows) pick the local variant, softcap its own, so the plain kernel carries neither.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/features.h"
#include "common/mask.cuh"
#include "params/fwd_params.h"

namespace fa {

// Calls launch(local, softcap) with std::integral_constant<bool> arguments for the call's variant and
// returns its cudaError_t as an int; *features gets the variant (common/features.h).
template <class Launch>
int run_fwd_variant(const FwdParams& p, uint32_t* features, Launch&& launch) {
    const bool local = is_local(p);
    const bool softcap = p.softcap > 0.f;
    *features = (local ? feature::kLocal : 0u) | (softcap ? feature::kSoftcap : 0u);
    using Yes = std::true_type;
    using No = std::false_type;
    cudaError_t err;
    if (local) {
        err = softcap ? launch(Yes{}, Yes{}) : launch(Yes{}, No{});
    } else {
        err = softcap ? launch(No{}, Yes{}) : launch(No{}, No{});
    }
    return static_cast<int>(err);
}

}  // namespace fa
