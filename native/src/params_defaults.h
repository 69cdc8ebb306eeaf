// The defaults of fa_forward_params_t, fa_backward_params_t and fa_decode_params_t, written once. The three
// *_params_init exports fill a caller's struct from here (init_params), and the forward's validation gives
// an older caller's smaller struct the same values for the fields it lacks (default_params, in
// validate_forward.cpp), so "no window" or "softcap off" cannot mean one thing in one place and another
// elsewhere.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "flash_attention.h"

namespace fa {

// window_left / window_right: unbounded on that side.
constexpr int32_t kNoWindow = -1;
// softcap: off.
constexpr float kNoSoftcap = 0.0f;
// softmax_scale: 1/sqrt(head_dim).
constexpr float kDefaultSoftmaxScale = 0.0f;

namespace detail {
template <typename Params, typename = void>
struct HasCausalAlignment : std::false_type {};
template <typename Params>
struct HasCausalAlignment<Params, std::void_t<decltype(std::declval<Params&>().causal_alignment)>> : std::true_type {};
}  // namespace detail

// The option fields the passes share: scale, causal mask (and its alignment where the pass has a choice; decode
// is always bottom-right), sliding window, softcap, kernel path.
template <typename Params>
void set_option_defaults(Params& p) {
    p.softmax_scale = kDefaultSoftmaxScale;
    p.causal = 0;
    if constexpr (detail::HasCausalAlignment<Params>::value) {
        p.causal_alignment = FA_CAUSAL_BOTTOM_RIGHT;
    }
    p.window_left = kNoWindow;
    p.window_right = kNoWindow;
    p.softcap = kNoSoftcap;
    p.kernel_path = FA_PATH_AUTO;
}

// The fields of one pass only (everything else, the variable-length fields included, starts as zero).
inline void set_pass_defaults(fa_forward_params_t& p) {
    // No fp8 descale tables (data NULL: a factor of 1); the rest of each descriptor stays zero.
    p.q_descale.data = nullptr;
    p.k_descale.data = nullptr;
    p.v_descale.data = nullptr;
}
inline void set_pass_defaults(fa_backward_params_t& p) {
    p.deterministic = 0;  // dq accumulated with atomic adds
}
inline void set_pass_defaults(fa_decode_params_t& p) {
    p.num_splits = 0;             // chosen by the library
    p.advance_cache_seqlens = 0;  // cache_seqlens is only read
    p.rotary_interleaved = 1;     // flash-attn's default (GPT-J pairs); no tables: no rotation
}

// A whole struct of this version holding the defaults, its struct_size set to `struct_size`.
template <typename Params>
Params default_params(uint32_t struct_size) {
    Params d;
    std::memset(&d, 0, sizeof(d));
    d.struct_size = struct_size;
    set_option_defaults(d);
    set_pass_defaults(d);
    return d;
}

// Fills the caller's struct of `struct_size` bytes (already checked): the defaults for the fields it has, and
// zero for a newer caller's fields this version does not know.
template <typename Params>
void init_params(Params* params, size_t struct_size) {
    const Params d = default_params<Params>(static_cast<uint32_t>(struct_size));
    const size_t known = struct_size < sizeof(d) ? struct_size : sizeof(d);
    std::memset(params, 0, struct_size);
    std::memcpy(params, &d, known);
}

}  // namespace fa
