// 2^x without the MUFU: a share of the softmax's exponentials moved to the FMA and integer pipes (the technique
// FlashAttention-4 uses where the tensor cores outrun the MUFU). At head dim 64 a 128 x 128 block of the sm90 forward
// needs as many MUFU cycles (16 ex2 a cycle an SM) as tensor cycles, so the exponentials alone can hold the tensor
// cores back; sm90/fwd_traits.h FA_SM90_FWD_EXP2_POLY says which keys take this form (off: on the H200 it lost 1-16%,
// the softmax being bound by its latency rather than the MUFU's rate).
//
// x is clamped to [-127, inf) (NaN kept: max.NaN), then split as x = j + f with j = round(x) (by adding 1.5 * 2^23:
// j lands in the low mantissa bits of t) and f in [-0.5, 0.5]; 2^f is a degree-3 minimax polynomial (relative error
// at most 7.5e-5, below half an fp16 ulp of P, 2.4e-4), and 2^j comes from t's bits: (bits(t) << 23) + (127 << 23) is
// the float 2^j (j + 127 is t's low 9 bits; j = -127 gives 0.0). 9 operations: max, 3 adds, 3 fma, 1 imad, 1 mul.
// x = -inf gives 0, NaN gives NaN; x stays at most 8 here (the softmax's arguments are at most its offset), so 2^j
// never overflows.
// Host-callable (native/tests/exp2_poly_test.cu checks it against exp2 on the CPU and, with a GPU, the device form).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FA_EXP2P_FN __host__ __device__ __forceinline__
#else
#define FA_EXP2P_FN inline
#endif

namespace fa {

// The polynomial's coefficients, c0 + c1 f + c2 f^2 + c3 f^3 ~ 2^f on [-0.5, 0.5] (Remez, relative error).
constexpr float kExp2PolyC0 = 0.999928057f;
constexpr float kExp2PolyC1 = 0.693260968f;
constexpr float kExp2PolyC2 = 0.242611125f;
constexpr float kExp2PolyC3 = 0.0551716685f;
// Its maximum relative error on [-0.5, 0.5] in exact arithmetic (the test allows float32's rounding on top).
constexpr double kExp2PolyMaxRelErr = 7.5e-5;

FA_EXP2P_FN float exp2_poly(float x) {
    constexpr float kRound = 12582912.f;  // 1.5 * 2^23
#if defined(__CUDA_ARCH__)
    float xc;
    asm("max.NaN.f32 %0, %1, %2;\n" : "=f"(xc) : "f"(x), "f"(-127.f));
    const float t = __fadd_rn(xc, kRound);
    const float f = __fadd_rn(xc, -__fadd_rn(t, -kRound));
    float p = fmaf(kExp2PolyC3, f, kExp2PolyC2);
    p = fmaf(p, f, kExp2PolyC1);
    p = fmaf(p, f, kExp2PolyC0);
    const float two_j = __uint_as_float(__float_as_uint(t) * 8388608u + 0x3F800000u);
    return p * two_j;
#else
    const float xc = x != x ? x : (x < -127.f ? -127.f : x);
    const float t = xc + kRound;
    const float f = xc - (t - kRound);
    float p = __builtin_fmaf(kExp2PolyC3, f, kExp2PolyC2);
    p = __builtin_fmaf(p, f, kExp2PolyC1);
    p = __builtin_fmaf(p, f, kExp2PolyC0);
    uint32_t tb;
    std::memcpy(&tb, &t, 4);
    const uint32_t jb = tb * 8388608u + 0x3F800000u;
    float two_j;
    std::memcpy(&two_j, &jb, 4);
    return p * two_j;
#endif
}

}  // namespace fa
