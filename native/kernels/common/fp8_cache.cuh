// The fp8 (e4m3) KV cache of fa_decode (C ABI 0.13): reading cached bytes as fp16/bf16 values for the mma.sync
// fragments, and quantizing appended keys and values. Written once for the attention and append kernels; the bit
// part is host-callable, so native/tests/fp8_cache_test.cu checks it on the CPU for every byte.
//
// Reading. An e4m3 value is s eeee mmm (bias 7; exponent 0 is subnormal, m * 2^-9; s 1111 111 is NaN, no infinities).
// Every e4m3 value is exact in fp16 and in bf16, so the attention kernel turns cached bytes into the 16-bit type of
// q with integer operations and one exact power-of-two multiply, never a rounding:
//   fp16: s 0eeee mm | m0000000 is an fp16 of exponent field e (bias 15): the value times 2^-8, subnormals included
//         (an fp16 subnormal of mantissa m << 7); times 2^8 gives the value.
//   bf16: s 0000eee | e mmm0000 is a bf16 of exponent field e (bias 127): the value times 2^-120 (a bf16 subnormal
//         when e = 0); times 2^120 gives the value.
// The multiply is fma.rn with -0.0 (exact for a power of two, signs and subnormals kept: no .ftz, which
// --use_fast_math does not add to inline PTX).
// Four bytes b0..b3 of one 32-bit word become two registers of two 16-bit values: lo = (b0, b2), hi = (b1, b3). The
// decode kernel's fragment layout is built around that pairing (sm80/decode_kernel.cuh: the q fragments of an fp8
// cache pair q's elements the same way).
// On Hopper (and sm_89 code from nvcc 12.1) the decode kernel takes the hardware conversion to fp16 instead
// (e4m3_pairs_to_half_hw below, FA_DECODE_FP8_HW_CVT); the integer forms are for older GPUs.
// Two forms. The fast one (e4m3x4_bits_fast: 7 integer operations a word, the decode kernel's inner loop) reads NaN
// (magnitude 0x7F) as the finite pattern of 480; the exact one (e4m3x4_bits) gives NaN the all-ones exponent (fp16:
// bit 14 set; bf16: bits 14..11 set), so it stays NaN through the multiply, as float(k_cache[..]) is NaN. The kernel
// looks for NaN bytes in what it loaded (e4m3x4_nan_flags: 2 operations a word) and takes the exact form where a warp
// finds one, so both give the values the contract defines (and the fast one the same bits for every other byte).
//
// Quantizing (the append): what a cache of q's dtype would store (T), as float, divided by the head's descale with
// IEEE division (div.rn.f32, never the approximate division --use_fast_math gives '/'), rounded to e4m3 nearest even
// with saturation to +-448 (+-Inf too; NaN stays NaN): cuda_fp8.h's __NV_SATFINITE conversion (cvt.rn.satfinite on
// sm_90, an exact software path before).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fa {

#define FA_FP8_FN __host__ __device__ __forceinline__

// __byte_perm on the device (one PRMT), its definition on the host: byte i of the result is byte sel nibble i of
// the 8 bytes (a, b) (selectors 0..7, no sign-replicate mode).
FA_FP8_FN uint32_t fp8_byte_perm(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
    return __byte_perm(a, b, sel);
#else
    const uint64_t x = (static_cast<uint64_t>(b) << 32) | a;
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) {
        const uint32_t s = (sel >> (4 * i)) & 7u;
        r |= static_cast<uint32_t>((x >> (8 * s)) & 0xFFu) << (8 * i);
    }
    return r;
#endif
}

// The four e4m3 bytes of z as 16-bit bit patterns of T, before the power-of-two scale (see above): lo = (b0, b2),
// hi = (b1, b3), each the value times 2^-8 (fp16) or 2^-120 (bf16); NaN bytes NaN.
template <typename T>
FA_FP8_FN void e4m3x4_bits(uint32_t z, uint32_t& lo, uint32_t& hi) {
    static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16");
    const uint32_t a = z & 0x7F7F7F7Fu;                  // magnitudes
    const uint32_t nan = (a + 0x01010101u) & 0x80808080u;  // bit 7 of each NaN byte (magnitude 0x7F; no carries)
    uint32_t high, low;                                   // the high and low byte of each 16-bit result
    if constexpr (std::is_same<T, __half>::value) {
        // Per byte: bit 6 the NaN flag (exponent MSB), bits 5..0 e3 e2 e1 e0 m2 m1 (bit 7 of (a | nan) >> 1 is the
        // next byte's bit 0: the mask drops it); the low byte is m0 << 7.
        high = (z & 0x80808080u) | (((a | nan) >> 1) & 0x7F7F7F7Fu);
        low = (z << 7) & 0x80808080u;
    } else {
        // Per byte: 0000 e3 e2 e1, or 0x7F for NaN (nan - nan >> 7: 0x80 - 0x01 in NaN bytes, 0 elsewhere); the low
        // byte is e0 m2 m1 m0 << 4.
        high = (z & 0x80808080u) | ((a >> 4) & 0x07070707u) | (nan - (nan >> 7));
        low = (z << 4) & 0xF0F0F0F0u;
    }
    lo = fp8_byte_perm(low, high, 0x6240u);  // (low.b0, high.b0, low.b2, high.b2): bytes 0 and 2 of z
    hi = fp8_byte_perm(low, high, 0x7351u);  // bytes 1 and 3
}

// e4m3x4_bits without NaN (see above): the same patterns for every byte but magnitude 0x7F, which reads as 480.
//   fp16: lo = (z << 8 & 0x80008000) | (z << 7 & 0x3F803F80), hi = (z & 0x80008000) | (z >> 1 & 0x3F803F80)
//   bf16: lo = (z << 8 & 0x80008000) | (z << 4 & 0x07F007F0), hi = (z & 0x80008000) | (z >> 4 & 0x07F007F0)
// (the sign of byte i lands on bit 15 of its half, its 7 magnitude bits on bits 13..7 (fp16) or 10..4 (bf16); the masks
// drop what the shifts bring in from the neighbouring bytes).
template <typename T>
FA_FP8_FN void e4m3x4_bits_fast(uint32_t z, uint32_t& lo, uint32_t& hi) {
    static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16");
    constexpr bool kHalf = std::is_same<T, __half>::value;
    constexpr uint32_t kBody = kHalf ? 0x3F803F80u : 0x07F007F0u;
    constexpr int kShift = kHalf ? 1 : 4;  // from bit 14 (the magnitude's top in a high byte) to 13 (fp16) or 10 (bf16)
    lo = ((z << 8) & 0x80008000u) | ((z << (8 - kShift)) & kBody);
    hi = (z & 0x80008000u) | ((z >> kShift) & kBody);
}

// Bit 7 of byte i of the result is set iff byte i of z is an e4m3 NaN (magnitude 0x7F); the other bits are noise
// (callers OR the words of a tile together and test & 0x80808080).
FA_FP8_FN uint32_t e4m3x4_nan_flags(uint32_t z) {
    return (z & 0x7F7F7F7Fu) + 0x01010101u;  // 0x7F + 1 carries into bit 7; no byte carries into the next
}

// The power of two that e4m3x4_bits' patterns are multiplied by, as two 16-bit values of T: 2^8 (fp16), 2^120 (bf16).
template <typename T>
FA_FP8_FN constexpr uint32_t e4m3_rescale_bits() {
    return std::is_same<T, __half>::value ? 0x5C005C00u : 0x7B807B80u;
}

#if defined(__CUDACC__)
// x * (two 16-bit values of T) + -0.0, exact for a power of two (signs, subnormals and NaN kept).
template <typename T>
__device__ __forceinline__ uint32_t fp8_rescale2(uint32_t x) {
    uint32_t r;
    if constexpr (std::is_same<T, __half>::value) {
        asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(r) : "r"(x), "r"(e4m3_rescale_bits<T>()), "r"(0x80008000u));
    } else {
        asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(r) : "r"(x), "r"(e4m3_rescale_bits<T>()), "r"(0x80008000u));
    }
    return r;
}

// Four cached e4m3 bytes as two registers of T values: lo = (b0, b2), hi = (b1, b3), exact. kNan: NaN bytes give
// NaN (e4m3x4_bits); false: the fast form, for words known to hold no NaN byte (e4m3x4_bits_fast).
template <typename T, bool kNan>
__device__ __forceinline__ void e4m3x4_to(uint32_t z, uint32_t& lo, uint32_t& hi) {
    uint32_t l, h;
    if constexpr (kNan) {
        e4m3x4_bits<T>(z, l, h);
    } else {
        e4m3x4_bits_fast<T>(z, l, h);
    }
    lo = fp8_rescale2<T>(l);
    hi = fp8_rescale2<T>(h);
}

// 1 in device code compiled for a target whose PTX has cvt.rn.f16x2.e4m3x2: sm_90 and newer, and sm_89 from nvcc 12.1
// (PTX ISA 8.1; before it the instruction needs sm_90). The decode kernel's FA_DECODE_FP8_HW_CVT form needs it.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900 || (__CUDA_ARCH__ >= 890 && (__CUDACC_VER_MAJOR__ > 12 || \
                                                       (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 1))))
#define FA_FP8_HW_CVT_ARCH 1
#else
#define FA_FP8_HW_CVT_ARCH 0
#endif

// The decode kernel's FA_DECODE_FP8_HW_CVT form: two pairs of bytes to fp16, exact, NaN bytes NaN, e4m3 values
// unscaled: the low half of `pairs` (bytes p0, p1) becomes lo = (p0, p1), the high half (p2, p3) hi = (p2, p3), the low
// byte the low half. Where FA_FP8_HW_CVT_ARCH the hardware conversion (cvt.rn.f16x2.e4m3x2, one instruction a pair);
// elsewhere the integer form (e4m3x4_bits) and the fp16 rescale, so that the function exists for every target (the
// kernel takes it only where FA_FP8_HW_CVT_ARCH). Callers form the pairs with one __byte_perm (e4m3x4_hw_sel).
__device__ __forceinline__ void e4m3_pairs_to_half_hw(uint32_t pairs, uint32_t& lo, uint32_t& hi) {
#if FA_FP8_HW_CVT_ARCH
    asm("{\n"
        "  .reg .b16 l, h;\n"
        "  mov.b32 {l, h}, %2;\n"
        "  cvt.rn.f16x2.e4m3x2 %0, l;\n"
        "  cvt.rn.f16x2.e4m3x2 %1, h;\n"
        "}\n"
        : "=r"(lo), "=r"(hi)
        : "r"(pairs));
#else
    e4m3x4_to<__half, true>(__byte_perm(pairs, 0u, 0x3120u), lo, hi);
#endif
}

// The selector of __byte_perm(a, b, .) that gives, in one permute, the pairs e4m3x4_to would take from
// __byte_perm(a, b, sel): (byte 0, byte 2) of that word in the low half, (byte 1, byte 3) in the high half.
FA_FP8_FN constexpr uint32_t e4m3x4_hw_sel(uint32_t sel) {
    return (sel & 0xFu) | ((sel >> 8) & 0xFu) << 4 | ((sel >> 4) & 0xFu) << 8 | ((sel >> 12) & 0xFu) << 12;
}

// FA_DECODE_FP8_HW_CVT with bf16 q: the power of two 2^e that takes a row of q into fp16 (the fp16 products): e puts
// the row's largest magnitude amax in [2^14, 2^15) (fp16's largest finite value is 65504), so nothing overflows and
// elements down to about 2^-38 of amax stay nonzero (fp16 subnormals reach 2^-24); |e| <= 126, so 2^e and 2^-e are
// normal floats. 0 for amax 0, infinite or NaN (the row then converts as it is: a row with an infinite element has
// infinite or NaN scores against every key of nonzero or zero element, so its softmax is undefined anyway).
FA_FP8_FN int q_row_scale_log2(float amax) {
    uint32_t b;
    memcpy(&b, &amax, 4);
    const int field = static_cast<int>((b >> 23) & 0xFFu);
    if (!(amax > 0.f) || field == 0xFF) return 0;
    const int e = 14 - (field == 0 ? -127 : field - 127);  // floor(log2 amax) for a normal amax
    return e > 126 ? 126 : (e < -126 ? -126 : e);
}

// 2^e as a float, for |e| <= 126 (exact).
FA_FP8_FN float exp2_int(int e) {
    const uint32_t b = static_cast<uint32_t>(e + 127) << 23;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

// x / descale in IEEE single precision (round to nearest even, subnormals kept), whatever the compile flags.
__device__ __forceinline__ float fp8_div_rn(float x, float descale) {
    float q;
    asm("div.rn.f32 %0, %1, %2;\n" : "=f"(q) : "f"(x), "f"(descale));
    return q;
}

// Eight T values (one 16-byte chunk of k_new, rotated where rotary says so) quantized for an fp8 cache: each
// float(x) / descale rounded to e4m3 nearest even with saturation (see above); byte i of the result is element i.
template <typename T>
__device__ __forceinline__ uint2 e4m3_quantize8(const uint4& chunk, float descale) {
    const uint32_t w[4] = {chunk.x, chunk.y, chunk.z, chunk.w};
    uint32_t out[2];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 f;
        if constexpr (std::is_same<T, __half>::value) {
            f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
        } else {
            f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
        }
        f.x = fp8_div_rn(f.x, descale);
        f.y = fp8_div_rn(f.y, descale);
        // x -> the low byte, y -> the high byte (element order).
        const uint32_t pair = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
        if (i % 2 == 0) {
            out[i / 2] = pair;
        } else {
            out[i / 2] |= pair << 16;
        }
    }
    return make_uint2(out[0], out[1]);
}
#endif

}  // namespace fa
