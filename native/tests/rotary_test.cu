// The rotary chunk helper of fa_decode (native/kernels/common/rotary.cuh), checked on the host (no GPU needed):
// every 16-byte chunk of random head vectors, both layouts (interleaved GPT-J, half-split NeoX), bf16 and fp16, full
// and partial rotary dims, against a float64 rotation written here from FEATURES.md section 4's formulas: rotated
// chunks within one unit in the last place of the dtype, chunks past rotary_dim bit for bit; and the table-row clamp.
// Prints a line per failure and a summary; exit code 1 on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/rotary.cuh"

namespace {

int g_failed = 0, g_checks = 0;

// A small deterministic generator (<random> of the distribution's libstdc++ does not pass nvcc 11.8's front end).
struct Rng {
    uint64_t state;
    double uniform() {  // [0, 1)
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        return static_cast<double>(state >> 11) * (1.0 / 9007199254740992.0);
    }
    double normal(double sd) {
        const double u = uniform() + 1e-300, v = uniform();
        return sd * std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
    }
};

template <typename T>
double to_double(T x);
template <>
double to_double(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
double to_double(__half x) { return __half2float(x); }

template <typename T>
T from_double(double x);
template <>
__nv_bfloat16 from_double(double x) { return __float2bfloat16_rn(static_cast<float>(x)); }
template <>
__half from_double(double x) { return __float2half_rn(static_cast<float>(x)); }

template <typename T>
void check(const char* dtype, int d, int rd, bool interleaved, Rng& rng) {
    constexpr int kRows = 9;
    alignas(16) T x[256];
    alignas(16) T cos_t[kRows * 128], sin_t[kRows * 128];
    for (int e = 0; e < d; ++e) x[e] = from_double<T>(rng.normal(1.5));
    for (int i = 0; i < kRows * rd / 2; ++i) {
        const double a = 6.4 * rng.uniform() - 3.2;
        cos_t[i] = from_double<T>(std::cos(a));
        sin_t[i] = from_double<T>(std::sin(a));
    }
    const double ulp = std::is_same<T, __nv_bfloat16>::value ? 1.0 / 128 : 1.0 / 1024;
    for (int pos = 0; pos < kRows; ++pos) {
        const T* cr = fa::rotary_row<T>(cos_t, pos, kRows, rd);
        const T* sr = fa::rotary_row<T>(sin_t, pos, kRows, rd);
        // The float64 rotation of the whole vector.
        std::vector<double> want(d);
        for (int e = 0; e < d; ++e) want[e] = to_double(x[e]);
        for (int t = 0; t < rd / 2; ++t) {
            const int a = interleaved ? 2 * t : t, b = interleaved ? 2 * t + 1 : t + rd / 2;
            const double x0 = to_double(x[a]), x1 = to_double(x[b]);
            const double c = to_double(cos_t[pos * rd / 2 + t]), s = to_double(sin_t[pos * rd / 2 + t]);
            want[a] = x0 * c - x1 * s;
            want[b] = x0 * s + x1 * c;
        }
        for (int ch = 0; ch < d / 8; ++ch) {
            const uint4 got4 = fa::rotary_chunk<T>(x, ch, cr, sr, rd, interleaved);
            T got[8];
            std::memcpy(got, &got4, sizeof got);
            for (int e = 0; e < 8; ++e) {
                const int k = ch * 8 + e;
                ++g_checks;
                const bool rotated = k < rd;
                bool ok;
                if (rotated) {
                    ok = std::fabs(to_double(got[e]) - want[k]) <= ulp * std::fabs(want[k]) + 1e-7;
                } else {
                    ok = std::memcmp(&got[e], &x[k], sizeof(T)) == 0;
                }
                if (!ok) {
                    ++g_failed;
                    if (g_failed <= 20) {
                        std::printf("FAIL %s d %d rotary_dim %d %s position %d element %d: got %.6g, want %.6g%s\n", dtype,
                                    d, rd, interleaved ? "interleaved" : "half-split", pos, k, to_double(got[e]), want[k],
                                    rotated ? "" : " (passed through, bit for bit)");
                    }
                }
            }
        }
    }
}

void check_row_clamp() {
    alignas(16) __half table[4 * 8];
    const int rd = 16;
    ++g_checks;
    if (fa::rotary_row<__half>(table, -3, 4, rd) != table || fa::rotary_row<__half>(table, 9, 4, rd) != table + 3 * 8 ||
        fa::rotary_row<__half>(table, 2, 4, rd) != table + 2 * 8) {
        ++g_failed;
        std::printf("FAIL rotary_row: a position outside the table must clamp to its first or last row\n");
    }
}

}  // namespace

int main() {
    Rng rng{20261203};
    for (int d : {16, 64, 128, 256}) {
        for (int rd = 16; rd <= d; rd += 16) {
            for (bool interleaved : {true, false}) {
                check<__nv_bfloat16>("bf16", d, rd, interleaved, rng);
                check<__half>("fp16", d, rd, interleaved, rng);
            }
        }
    }
    check_row_clamp();
    std::printf("rotary_test: %d checks, %d failed\n", g_checks, g_failed);
    return g_failed == 0 ? 0 : 1;
}
