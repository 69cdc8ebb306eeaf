// The fp8 (e4m3) KV cache's byte-to-fragment conversion (native/kernels/common/fp8_cache.cuh, e4m3x4_bits), checked
// on the host (no GPU needed) for every byte value in every position of a 32-bit word, fp16 and bf16: the 16-bit
// pattern it builds, times its power of two (2^8 for fp16, 2^120 for bf16), must be the e4m3 value decoded here from
// the OCP definition (s eeee mmm, bias 7, exponent 0 subnormal m * 2^-9, magnitude 0x7F NaN), exactly, zero signs
// included; NaN bytes must give NaN. Also the pairing the decode kernel relies on: lo = (b0, b2), hi = (b1, b3); the
// fast form (e4m3x4_bits_fast) must give the same pattern for every byte but NaN (which it reads as +-480), and
// e4m3x4_nan_flags must flag exactly the NaN bytes.
// Prints a line per failure and a summary; exit code 1 on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

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

}  // namespace

int main() {
    check_type<__half>("fp16", 8, half_bits_value);
    check_type<__nv_bfloat16>("bf16", 120, bf16_bits_value);
    check_rescale();
    std::printf("fp8_cache_test: %d checks, %d failed\n", g_checks, g_failed);
    return g_failed == 0 ? 0 : 1;
}
