// 2^x on the FMA pipes (native/kernels/common/exp2_poly.h, exp2_poly), which the sm90 forward's softmax uses for a
// share of its keys (FA_SM90_FWD_EXP2_POLY). Checked on the host against exp2 in double, for x in (-1, 1) (every
// 256th float32 pattern, both signs), [-140, 9] every 2^-12 and 200,000 pseudo-random x in [-130, 9): relative error
// within the polynomial's bound plus float32 rounding where the result is a normal float; results between 0 and 2^-126 below
// that; 0 for x <= -127 and -inf; NaN for NaN. With a GPU, the device form (max.NaN, __fadd_rn, fmaf, the integer
// exponent) must give the host form's bits for every swept x whose result is normal (the device multiply flushes
// subnormal results to zero under --use_fast_math; there both must be below 2^-125). Without one that part prints
// SKIP. Prints a line per failure (the first 8 of each kind) and a summary; exit code 1 on any failure.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/exp2_poly.h"

namespace {

int g_failed = 0;
long g_checks = 0;

// Polynomial bound plus float32 rounding: f exact, three fma and a multiply, each half an ulp (2^-24) relative,
// and the polynomial's own value rounded: 5 * 2^-24 < 3e-7 (generous: 4e-7).
constexpr double kTol = fa::kExp2PolyMaxRelErr + 4e-7;

uint32_t bits_of(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
}

float float_of(uint32_t u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}

bool check_one(float x, float got, int& shown) {
    const double want = std::exp2(static_cast<double>(x));
    bool ok;
    if (std::isnan(x)) {
        ok = std::isnan(got);
    } else if (x <= -127.f) {
        ok = got == 0.f;
    } else if (want >= std::ldexp(1.0, -126) * 1.5) {  // comfortably normal
        ok = std::fabs(got - want) <= kTol * want;
    } else {
        ok = got >= 0.f && got <= std::ldexp(1.0, -125);
    }
    ++g_checks;
    if (!ok) {
        ++g_failed;
        if (++shown <= 8) std::printf("FAIL host: x = %.9g (0x%08X): got %.9g, want %.9g\n", x, bits_of(x), got, want);
    }
    return ok;
}

__global__ void device_exp2_poly(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = fa::exp2_poly(x[i]);
}

}  // namespace

int main() {
    std::vector<float> xs;
    // (-1, 1), both signs: every 64th subnormal pattern, every 256th normal one (each exponent's mantissas spread).
    for (uint32_t u = 0; u < 0x3F800000u; u += u < 0x00800000u ? 64 : 256) {
        xs.push_back(float_of(u));
        xs.push_back(float_of(u | 0x80000000u));
    }
    for (double x = -140.0; x <= 9.0; x += 1.0 / 4096) xs.push_back(static_cast<float>(x));
    uint64_t state = 0x9E3779B97F4A7C15ull;  // xorshift64: uniform values in [-130, 9)
    for (int i = 0; i < 200000; ++i) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        xs.push_back(static_cast<float>(-130.0 + 139.0 * static_cast<double>(state >> 11) * 0x1p-53));
    }
    const float specials[] = {-INFINITY, NAN, -NAN, -127.f, -126.5f, -126.f, -125.5f, 0.f, -0.f, 0.5f, -0.5f, 8.f};
    for (float s : specials) xs.push_back(s);

    std::vector<float> host(xs.size());
    int shown = 0;
    double worst = 0.0;
    for (size_t i = 0; i < xs.size(); ++i) {
        host[i] = fa::exp2_poly(xs[i]);
        check_one(xs[i], host[i], shown);
        const double want = std::exp2(static_cast<double>(xs[i]));
        if (!std::isnan(xs[i]) && want >= std::ldexp(1.0, -125))
            worst = std::fmax(worst, std::fabs(host[i] - want) / want);
    }
    std::printf("%s host: %zu values, worst relative error %.3g (bound %.3g)\n", shown == 0 ? "PASS" : "FAIL",
                xs.size(), worst, kTol);

    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::printf("SKIP device: no GPU\n");
    } else {
        const int n = static_cast<int>(xs.size());
        float *dx = nullptr, *dy = nullptr;
        std::vector<float> dev(xs.size(), -1.f);
        bool ran = cudaMalloc(&dx, n * sizeof(float)) == cudaSuccess && cudaMalloc(&dy, n * sizeof(float)) == cudaSuccess &&
                   cudaMemcpy(dx, xs.data(), n * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess &&
                   cudaMemset(dy, 0xFF, n * sizeof(float)) == cudaSuccess;  // poisoned: NaN patterns
        if (ran) {
            device_exp2_poly<<<(n + 255) / 256, 256>>>(dx, dy, n);
            ran = cudaGetLastError() == cudaSuccess &&
                  cudaMemcpy(dev.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess;
        }
        cudaFree(dx);
        cudaFree(dy);
        int dshown = 0;
        if (!ran) {
            ++g_failed;
            std::printf("FAIL device: the kernel did not run\n");
        } else {
            for (size_t i = 0; i < xs.size(); ++i) {
                const float x = xs[i];
                bool ok;
                if (std::isnan(x)) {
                    ok = std::isnan(dev[i]);
                } else if (host[i] >= std::ldexp(1.0f, -125)) {
                    ok = bits_of(dev[i]) == bits_of(host[i]);
                } else {
                    ok = dev[i] >= 0.f && dev[i] <= std::ldexp(1.0f, -125);
                }
                ++g_checks;
                if (!ok) {
                    ++g_failed;
                    if (++dshown <= 8)
                        std::printf("FAIL device: x = %.9g: device %.9g (0x%08X), host %.9g (0x%08X)\n", x, dev[i],
                                    bits_of(dev[i]), host[i], bits_of(host[i]));
                }
            }
            std::printf("%s device: %d values against the host form's bits\n", dshown == 0 ? "PASS" : "FAIL", n);
        }
    }
    std::printf("exp2_poly_test: %ld checks, %d failed\n", g_checks, g_failed);
    return g_failed == 0 ? 0 : 1;
}
