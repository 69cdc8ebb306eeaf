// From a runtime kernel head dim (32, 64, 96, 128, 192 or 256) to a compile-time one, for the registry
// (registry.cu) of every pass and path: f is called with HeadDim<D>{}.
#pragma once
#include <cstdint>
#include <type_traits>

namespace fa {

template <int D>
using HeadDim = std::integral_constant<int, D>;

// Any kernel head dim, compiled into this build or not: for compile-time facts (tiles, shared memory, names).
// A value that is not a kernel head dim is treated as 256.
template <class F>
decltype(auto) with_head_dim(int32_t kernel_d, F&& f) {
    switch (kernel_d) {
        case 32: return f(HeadDim<32>{});
        case 64: return f(HeadDim<64>{});
        case 96: return f(HeadDim<96>{});
        case 128: return f(HeadDim<128>{});
        case 192: return f(HeadDim<192>{});
        default: return f(HeadDim<256>{});
    }
}

// The kernel head dims compiled into this build (CMake's FA_HEAD_DIMS defines FA_HAS_HDIM<D>): f for those,
// `otherwise` for any other value (validation rejects those first).
template <class R, class F>
R with_compiled_head_dim(int32_t kernel_d, R otherwise, F&& f) {
    switch (kernel_d) {
#if defined(FA_HAS_HDIM32)
        case 32: return f(HeadDim<32>{});
#endif
#if defined(FA_HAS_HDIM64)
        case 64: return f(HeadDim<64>{});
#endif
#if defined(FA_HAS_HDIM96)
        case 96: return f(HeadDim<96>{});
#endif
#if defined(FA_HAS_HDIM128)
        case 128: return f(HeadDim<128>{});
#endif
#if defined(FA_HAS_HDIM192)
        case 192: return f(HeadDim<192>{});
#endif
#if defined(FA_HAS_HDIM256)
        case 256: return f(HeadDim<256>{});
#endif
        default: return otherwise;
    }
}

}  // namespace fa
