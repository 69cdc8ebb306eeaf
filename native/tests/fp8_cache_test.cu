// The fp8 (e4m3) KV cache's byte-to-fragment conversion (native/kernels/common/fp8_cache.cuh, e4m3x4_bits), checked
// on the host (no GPU needed) for every byte value in every position of a 32-bit word, fp16 and bf16: the 16-bit
// pattern it builds, times its power of two (2^8 for fp16, 2^120 for bf16), must be the e4m3 value decoded here from
// the OCP definition (s eeee mmm, bias 7, exponent 0 subnormal m * 2^-9, magnitude 0x7F NaN), exactly, zero signs
// included; NaN bytes must give NaN. Also the pairing the decode kernel relies on: lo = (b0, b2), hi = (b1, b3); the
// fast form (e4m3x4_bits_fast) must give the same pattern for every byte but NaN (which it reads as +-480), and
// e4m3x4_nan_flags must flag exactly the NaN bytes. For the FA_DECODE_FP8_HW_CVT form: e4m3x4_hw_sel's permute for
// every selector, the q row scale (q_row_scale_log2, exp2_int) over fp32's range, and, with a GPU, the device's
// e4m3_pairs_to_half_hw (cvt.rn.f16x2.e4m3x2 where the target has it) for every pair of bytes against the e4m3 definition (without
// a GPU that part prints SKIP).
// Prints a line per failure and a summary; exit code 1 on any failure.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/fp8_cache.cuh"

namespace {

int g_failed = 0, g_checks = 0;

// The e4m3 value of byte b, from the definition (not from any conversion under test).
double e4m3_value(uint32_t b) {
    const int s = (b >> 7) & 1, e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(1.0 + m / 8.0, e - 7);
    return s ? -mag : mag;
}

// A 16-bit pattern as a double: IEEE binary16, or bfloat16 (the high half of a binary32).
double half_bits_value(uint32_t h) {
    const int s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    double mag;
    if (e == 31) {
        mag = m ? NAN : INFINITY;
    } else if (e == 0) {
        mag = std::ldexp(m, -24);
    } else {
        mag = std::ldexp(1.0 + m / 1024.0, e - 15);
    }
    return s ? -mag : mag;
}

double bf16_bits_value(uint32_t h) {
    const uint32_t u = h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

template <typename T>
void check_type(const char* name, int scale_log2, double (*value_of)(uint32_t)) {
    int bad = 0;
    for (uint32_t b = 0; b < 256; ++b) {
        for (int pos = 0; pos < 4; ++pos) {
            // The byte under test at position pos, other positions holding other (varying) bytes so that a leak
            // between neighbours shows.
            uint32_t z = 0;
            for (int q = 0; q < 4; ++q) z |= ((q == pos ? b : (b * 37u + 11u * q + 0x7Fu) & 0xFFu) << (8 * q));
            uint32_t lo, hi, flo, fhi;
            fa::e4m3x4_bits<T>(z, lo, hi);
            fa::e4m3x4_bits_fast<T>(z, flo, fhi);
            // Position 0 -> lo low half, 2 -> lo high half, 1 -> hi low half, 3 -> hi high half.
            const uint32_t word = pos % 2 == 0 ? lo : hi;
            const uint32_t half = (word >> (pos >= 2 ? 16 : 0)) & 0xFFFFu;
            const double got = std::ldexp(value_of(half), scale_log2);
            const double want = e4m3_value(b);
            // The fast form: the same pattern for every byte but NaN, which it reads as +-480 (its callers check for
            // NaN bytes first, e4m3x4_nan_flags).
            const uint32_t fword = pos % 2 == 0 ? flo : fhi;
            const uint32_t fhalf = (fword >> (pos >= 2 ? 16 : 0)) & 0xFFFFu;
            const bool fast_ok = std::isnan(want) ? std::fabs(std::ldexp(value_of(fhalf), scale_log2)) == 480.0
                                                  : fhalf == half;
            // The NaN flag of this byte.
            const bool flag = ((fa::e4m3x4_nan_flags(z) >> (8 * pos + 7)) & 1u) != 0;
            const bool ok = (std::isnan(want) ? std::isnan(got)
                                              : got == want && std::signbit(got) == std::signbit(want)) &&
                            fast_ok && flag == std::isnan(want);
            ++g_checks;
            if (!ok) {
                if (++bad <= 8) {
                    std::printf("FAIL %s: byte 0x%02X at position %d -> pattern 0x%04X = %.9g (fast 0x%04X, NaN flag %d), "
                                "want %.9g\n", name, b, pos, half, got, fhalf, flag ? 1 : 0, want);
                }
                ++g_failed;
            }
        }
    }
    std::printf("%s %s: 256 bytes x 4 positions%s\n", bad == 0 ? "PASS" : "FAIL", name,
                bad == 0 ? ", exact (NaN stays NaN, signed zeros kept)" : "");
}

// The rescale constants: two copies of 2^8 (fp16) and 2^120 (bf16).
void check_rescale() {
    const uint32_t h = fa::e4m3_rescale_bits<__half>(), b = fa::e4m3_rescale_bits<__nv_bfloat16>();
    const bool ok = half_bits_value(h & 0xFFFFu) == 256.0 && (h >> 16) == (h & 0xFFFFu) &&
                    bf16_bits_value(b & 0xFFFFu) == std::ldexp(1.0, 120) && (b >> 16) == (b & 0xFFFFu);
    ++g_checks;
    if (!ok) ++g_failed;
    std::printf("%s rescale constants (fp16 2^8, bf16 2^120)\n", ok ? "PASS" : "FAIL");
}

// e4m3x4_hw_sel: one permute giving (byte 0, byte 2 | byte 1, byte 3) of what __byte_perm(a, b, sel) gives, for every
// selector of distinct-or-repeated source bytes the kernel could pass (all 4096 of nibbles 0..7).
void check_hw_sel() {
    int bad = 0;
    const uint32_t a = 0x33221100u, b = 0x77665544u;  // byte i of (a, b) is 0x11 i
    for (uint32_t sel = 0; sel < 0x8000u; ++sel) {
        if ((sel & 0x8888u) != 0) continue;  // selector nibbles 0..7 only
        const uint32_t w = fa::fp8_byte_perm(a, b, sel);
        const uint32_t want = (w & 0xFFu) | ((w >> 16) & 0xFFu) << 8 | ((w >> 8) & 0xFFu) << 16 | (w >> 24) << 24;
        const uint32_t got = fa::fp8_byte_perm(a, b, fa::e4m3x4_hw_sel(sel));
        ++g_checks;
        if (got != want) {
            ++g_failed;
            if (++bad <= 8) std::printf("FAIL hw_sel: sel 0x%04X -> 0x%08X, want 0x%08X\n", sel, got, want);
        }
    }
    std::printf("%s e4m3x4_hw_sel: 4096 selectors\n", bad == 0 ? "PASS" : "FAIL");
}

// q_row_scale_log2 and exp2_int: amax 2^e lands in [2^14, 2^15) for amax from fp32's smallest subnormal to its largest
// finite value (e clamped to +-126, where the scaled value stays below 2^15), 0 for 0, inf and NaN; exp2_int exact.
void check_q_scale() {
    int bad = 0;
    const auto fail = [&](const char* what, double x, int e) {
        ++g_failed;
        if (++bad <= 8) std::printf("FAIL q scale: %s, amax %.9g -> e %d\n", what, x, e);
    };
    for (int i = -149; i <= 127; ++i) {
        for (double m : {1.0, 1.5, 1.99999988079071044921875}) {
            const float amax = static_cast<float>(std::ldexp(m, i));
            if (!(amax > 0.f) || std::isinf(amax)) continue;
            const int e = fa::q_row_scale_log2(amax);
            const double scaled = std::ldexp(static_cast<double>(amax), e);
            ++g_checks;
            if (e < -126 || e > 126) fail("e out of range", amax, e);
            else if (scaled >= 32768.0) fail("scaled at or above 2^15", amax, e);
            else if (scaled < 16384.0 && e != 126) fail("scaled below 2^14 without the clamp", amax, e);
        }
    }
    for (float x : {0.f, -0.f, INFINITY, NAN}) {
        ++g_checks;
        if (fa::q_row_scale_log2(x) != 0) fail("special value", x, fa::q_row_scale_log2(x));
    }
    for (int e = -126; e <= 126; ++e) {
        ++g_checks;
        if (static_cast<double>(fa::exp2_int(e)) != std::ldexp(1.0, e)) fail("exp2_int", 0.0, e);
    }
    std::printf("%s q row scale (q_row_scale_log2, exp2_int)\n", bad == 0 ? "PASS" : "FAIL");
}

// The device's e4m3_pairs_to_half_hw (cvt.rn.f16x2.e4m3x2 where FA_FP8_HW_CVT_ARCH, the integer form elsewhere; the
// line says which ran) for every pair of bytes
// in both halves: each fp16 value must be the e4m3 value of its byte, exactly (NaN for NaN bytes, zero signs kept).
__global__ void hw_form_kernel(int* out) { *out = FA_FP8_HW_CVT_ARCH; }

__global__ void pairs_kernel(uint32_t* out) {
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;  // 0 .. 65535: bytes (i & 0xFF, i >> 8)
    const uint32_t pairs = (i & 0xFFFFu) | ((i ^ 0xA5C3u) & 0xFFFFu) << 16;  // the high half: other bytes
    uint32_t lo, hi;
    fa::e4m3_pairs_to_half_hw(pairs, lo, hi);
    out[2 * i] = lo;
    out[2 * i + 1] = hi;
}

void check_hw_pairs() {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::printf("SKIP e4m3_pairs_to_half_hw: no GPU\n");
        return;
    }
    uint32_t* d = nullptr;
    int* dform = nullptr;
    int form = -1;
    std::vector<uint32_t> h(2 * 65536, 0u);
    bool ran = cudaMalloc(&d, h.size() * 4) == cudaSuccess && cudaMemset(d, 0xFF, h.size() * 4) == cudaSuccess &&
               cudaMalloc(&dform, sizeof(int)) == cudaSuccess;
    if (ran) {
        pairs_kernel<<<256, 256>>>(d);
        hw_form_kernel<<<1, 1>>>(dform);
        ran = cudaGetLastError() == cudaSuccess && cudaMemcpy(h.data(), d, h.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess &&
              cudaMemcpy(&form, dform, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
    }
    cudaFree(d);
    cudaFree(dform);
    int bad = 0;
    if (!ran) {
        ++g_failed;
        std::printf("FAIL e4m3_pairs_to_half_hw: the kernel did not run\n");
        return;
    }
    for (uint32_t i = 0; i < 65536; ++i) {
        const uint32_t pairs = i | ((i ^ 0xA5C3u) & 0xFFFFu) << 16;
        for (int q = 0; q < 4; ++q) {
            const uint32_t byte = (pairs >> (8 * q)) & 0xFFu;
            const uint32_t half = (h[2 * i + q / 2] >> (16 * (q % 2))) & 0xFFFFu;
            const double got = half_bits_value(half), want = e4m3_value(byte);
            const bool ok = std::isnan(want) ? std::isnan(got) : got == want && std::signbit(got) == std::signbit(want);
            ++g_checks;
            if (!ok) {
                ++g_failed;
                if (++bad <= 8)
                    std::printf("FAIL e4m3_pairs_to_half_hw: pairs 0x%08X byte %d (0x%02X) -> 0x%04X = %.9g, want %.9g\n",
                                pairs, q, byte, half, got, want);
            }
        }
    }
    int dev = 0, major = 0, minor = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    std::printf("%s e4m3_pairs_to_half_hw on the device (compute capability %d.%d, %s): 65536 x 4 bytes\n",
                bad == 0 ? "PASS" : "FAIL", major, minor,
                form == 1 ? "the hardware conversion" : "this target's integer fallback");
}

}  // namespace

int main() {
    check_type<__half>("fp16", 8, half_bits_value);
    check_type<__nv_bfloat16>("bf16", 120, bf16_bits_value);
    check_rescale();
    check_hw_sel();
    check_q_scale();
    check_hw_pairs();
    std::printf("fp8_cache_test: %d checks, %d failed\n", g_checks, g_failed);
    return g_failed == 0 ? 0 : 1;
}
