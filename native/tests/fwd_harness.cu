// Standalone harness of the sm80 forward kernel family, for tuning on the GPU machine without the
// managed stack: instantiates several tile configurations, checks each against the naive GPU
// kernel (fresh random inputs, poisoned outputs, every element), then times each over the
// TARGETS.md grid with CUDA events (median of many runs). Build:
//   nvcc -std=c++17 -O3 --use_fast_math -gencode arch=compute_90a,code=sm_90a -I native/include
//        -I native/src -I native/kernels native/tests/fwd_harness.cu -o fwd_harness
// Usage: fwd_harness [--check-only] [--time-only]   (prints one line per case, a table last)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "reference/attention_naive.cuh"
#include "sm80/fwd_kernel.cuh"

using namespace fa;

#define CHECK_CUDA(x)                                                                                   \
    do {                                                                                                \
        cudaError_t e_ = (x);                                                                           \
        if (e_ != cudaSuccess) {                                                                        \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));     \
            std::exit(2);                                                                               \
        }                                                                                               \
    } while (0)

__global__ void fill_random(uint16_t* x, int64_t n, uint64_t seed, bool bf16) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        // Sum of 4 uniforms, centred: roughly normal with unit variance.
        float s = 0.f;
        for (int k = 0; k < 4; ++k) s += float((z >> (16 * k)) & 0xFFFF) / 65535.f;
        const float val = (s - 2.f) * 1.732f;
        if (bf16) {
            __nv_bfloat16 h = __float2bfloat16(val);
            x[i] = *reinterpret_cast<uint16_t*>(&h);
        } else {
            __half h = __float2half(val);
            x[i] = *reinterpret_cast<uint16_t*>(&h);
        }
    }
}

static int g_l2_bytes = 0;  // from the device; 0 = the schedule's default

struct Case {
    int b, hq, hkv, sq, sk, d;
    bool causal = false, top_left = false;
    int wl = -1, wr = -1;
    float softcap = 0.f;
    std::vector<int> lq, lk;  // varlen lengths (empty: fixed-length batch)
};

static std::string describe(const Case& c) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "b=%d hq=%d hkv=%d sq=%d sk=%d d=%d%s%s win=(%d,%d) cap=%g%s", c.b, c.hq, c.hkv,
                  c.sq, c.sk, c.d, c.causal ? " causal" : "", c.causal ? (c.top_left ? "TL" : "BR") : "", c.wl, c.wr,
                  c.softcap, c.lq.empty() ? "" : " varlen");
    return buf;
}

template <class Tr, bool Local, bool Cap>
static cudaError_t launch3(FwdParams p, cudaStream_t s) {
    auto kern = sm80::fwd_kernel<Tr, Local, Cap>;
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
    if (e != cudaSuccess) return e;
    const unsigned blocks = schedule(p, Tr::kBlockM, g_l2_bytes);
    if (blocks == 0) return cudaSuccess;
    kern<<<blocks, Tr::kThreads, Tr::kSmemBytes, s>>>(p);
    return cudaGetLastError();
}

struct Variant {
    std::string name;
    int d;
    bool bf16;
    bool production;
    cudaError_t (*run)(const FwdParams&, cudaStream_t);
};

template <typename T, int D, int BM, int BN, int W, int MB = 1>
static Variant make_variant(bool production) {
    using Tr = sm80::FwdTraits<T, D, BM, BN, W, MB>;
    Variant v;
    v.name = std::string(std::is_same<T, __half>::value ? "fp16" : "bf16") + "_d" + std::to_string(D) + "_" +
             std::to_string(BM) + "x" + std::to_string(BN) + "_" + std::to_string(W) + "w" +
             (MB > 1 ? "_mb" + std::to_string(MB) : "");
    v.d = D;
    v.bf16 = !std::is_same<T, __half>::value;
    v.production = production;
    v.run = [](const FwdParams& p, cudaStream_t s) {
        const bool local = is_local(p);
        const bool cap = p.softcap > 0.f;
        if (local) return cap ? launch3<Tr, true, true>(p, s) : launch3<Tr, true, false>(p, s);
        return cap ? launch3<Tr, false, true>(p, s) : launch3<Tr, false, false>(p, s);
    };
    return v;
}

template <typename T, int D>
static Variant production() {
    using Tile = sm80::FwdTile<D>;
    return make_variant<T, D, Tile::kBlockM, Tile::kBlockN, Tile::kWarps, Tile::kMinBlocks>(true);
}

static float to_float(uint16_t x, bool bf16) {
    if (bf16) {
        uint32_t u = uint32_t(x) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    __half h;
    std::memcpy(&h, &x, 2);
    return __half2float(h);
}

static void set_scale(FwdParams& p, int d, float softcap) {
    p.scale = 1.f / std::sqrt(float(d));
    p.softcap = softcap;
    p.scale_log2 = (softcap > 0 ? softcap : p.scale) * 1.4426950408889634f;
}

// Runs one case on one variant and on the naive kernel; every element of O and the LSE is compared.
static bool check_case(const Variant& var, const Case& c, uint64_t seed) {
    const bool varlen = !c.lq.empty();
    const int nb = varlen ? int(c.lq.size()) : c.b;
    int64_t tq = 0, tk = 0;
    std::vector<int> cuq(1, 0), cuk(1, 0);
    int maxq = 0, maxk = 0;
    if (varlen) {
        for (size_t i = 0; i < c.lq.size(); ++i) {
            cuq.push_back(cuq.back() + c.lq[i]);
            cuk.push_back(cuk.back() + c.lk[i]);
            maxq = std::max(maxq, c.lq[i]);
            maxk = std::max(maxk, c.lk[i]);
        }
        tq = cuq.back();
        tk = cuk.back();
    } else {
        tq = int64_t(c.b) * c.sq;
        tk = int64_t(c.b) * c.sk;
        maxq = c.sq;
        maxk = c.sk;
    }
    const int d = c.d;
    const int64_t nq = std::max<int64_t>(tq, 1) * c.hq * d, nk = std::max<int64_t>(tk, 1) * c.hkv * d,
                  nl = std::max<int64_t>(tq, 1) * c.hq;
    void *q, *k, *v, *o, *oref;
    float *lse, *lref;
    int *dcuq = nullptr, *dcuk = nullptr;
    CHECK_CUDA(cudaMalloc(&q, nq * 2));
    CHECK_CUDA(cudaMalloc(&k, nk * 2));
    CHECK_CUDA(cudaMalloc(&v, nk * 2));
    CHECK_CUDA(cudaMalloc(&o, nq * 2));
    CHECK_CUDA(cudaMalloc(&oref, nq * 2));
    CHECK_CUDA(cudaMalloc(&lse, nl * 4));
    CHECK_CUDA(cudaMalloc(&lref, nl * 4));
    fill_random<<<256, 256>>>((uint16_t*)q, nq, seed, var.bf16);
    fill_random<<<256, 256>>>((uint16_t*)k, nk, seed + 1, var.bf16);
    fill_random<<<256, 256>>>((uint16_t*)v, nk, seed + 2, var.bf16);
    CHECK_CUDA(cudaMemset(o, 0xFF, nq * 2));  // NaN poison
    CHECK_CUDA(cudaMemset(lse, 0xFF, nl * 4));
    CHECK_CUDA(cudaMemset(oref, 0xFF, nq * 2));
    CHECK_CUDA(cudaMemset(lref, 0xFF, nl * 4));
    FwdParams p{};
    p.q = q; p.k = k; p.v = v; p.o = o; p.lse = lse;
    p.q_row_stride = int64_t(c.hq) * d; p.q_head_stride = d; p.q_batch_stride = int64_t(maxq) * c.hq * d;
    p.k_row_stride = int64_t(c.hkv) * d; p.k_head_stride = d; p.k_batch_stride = int64_t(maxk) * c.hkv * d;
    p.v_row_stride = p.k_row_stride; p.v_head_stride = d; p.v_batch_stride = p.k_batch_stride;
    p.o_row_stride = p.q_row_stride; p.o_head_stride = d; p.o_batch_stride = p.q_batch_stride;
    if (varlen) {
        p.lse_row_stride = 1; p.lse_head_stride = tq; p.lse_batch_stride = 0;
        CHECK_CUDA(cudaMalloc(&dcuq, cuq.size() * 4));
        CHECK_CUDA(cudaMalloc(&dcuk, cuk.size() * 4));
        CHECK_CUDA(cudaMemcpy(dcuq, cuq.data(), cuq.size() * 4, cudaMemcpyHostToDevice));
        CHECK_CUDA(cudaMemcpy(dcuk, cuk.data(), cuk.size() * 4, cudaMemcpyHostToDevice));
        p.cu_seqlens_q = dcuq;
        p.cu_seqlens_k = dcuk;
        p.total_q = int(tq);
        p.total_k = int(tk);
    } else {
        p.lse_row_stride = 1; p.lse_head_stride = maxq; p.lse_batch_stride = int64_t(c.hq) * maxq;
    }
    p.b = nb; p.sq = maxq; p.sk = maxk; p.hq = c.hq; p.hkv = c.hkv; p.d = d; p.hq_per_hkv = c.hq / c.hkv;
    set_scale(p, d, c.softcap);
    p.causal = c.causal;
    p.bottom_right = !c.top_left;
    p.window_left = c.wl;
    p.window_right = c.causal ? 0 : c.wr;  // the host folds causal into window_right (FwdParams)
    p.dtype = var.bf16 ? DType::BFloat16 : DType::Float16;
    bool ok = true;
    if (maxq > 0) CHECK_CUDA(var.run(p, nullptr));
    FwdParams pr = p;
    pr.o = oref;
    pr.lse = lref;
    if (maxq > 0) {
        const int64_t rows = int64_t(p.b) * p.hq * p.sq;
        if (var.bf16) reference::attention_naive<__nv_bfloat16, 256><<<unsigned((rows + 127) / 128), 128>>>(pr);
        else reference::attention_naive<__half, 256><<<unsigned((rows + 127) / 128), 128>>>(pr);
        CHECK_CUDA(cudaGetLastError());
    }
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<uint16_t> ho(nq), hr(nq);
    std::vector<float> hl(nl), hlr(nl);
    CHECK_CUDA(cudaMemcpy(ho.data(), o, nq * 2, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(hr.data(), oref, nq * 2, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(hl.data(), lse, nl * 4, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(hlr.data(), lref, nl * 4, cudaMemcpyDeviceToHost));
    double num = 0, den = 0, lse_err = 0;
    int64_t bad = 0;
    const int64_t used_q = tq * c.hq * d, used_l = tq * c.hq;
    for (int64_t i = 0; i < used_q; ++i) {
        const double x = to_float(ho[i], var.bf16), y = to_float(hr[i], var.bf16);
        if (!std::isfinite(x) || !std::isfinite(y)) ++bad;
        num += (x - y) * (x - y);
        den += y * y;
    }
    for (int64_t i = 0; i < used_l; ++i) {
        if (std::isinf(hlr[i])) {
            if (!(std::isinf(hl[i]) && hl[i] > 0)) ++bad;
        } else {
            if (!std::isfinite(hl[i])) ++bad;
            lse_err = std::max(lse_err, std::fabs(double(hl[i]) - hlr[i]));
        }
    }
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    const double tol = var.bf16 ? 1e-2 : 2e-3;
    ok = bad == 0 && rel <= tol && lse_err <= 2e-3;
    std::printf("check %-22s %-60s rel=%.2e lse_err=%.1e bad=%lld %s\n", var.name.c_str(), describe(c).c_str(), rel,
                lse_err, (long long)bad, ok ? "ok" : "FAIL");
    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(oref); cudaFree(lse); cudaFree(lref);
    if (dcuq) cudaFree(dcuq);
    if (dcuk) cudaFree(dcuk);
    return ok;
}

static double time_case(const Variant& var, int b, int h, int s, bool causal) {
    const int d = var.d;
    const int64_t n = int64_t(b) * s * h * d;
    void *q, *k, *v, *o;
    float* lse;
    CHECK_CUDA(cudaMalloc(&q, n * 2));
    CHECK_CUDA(cudaMalloc(&k, n * 2));
    CHECK_CUDA(cudaMalloc(&v, n * 2));
    CHECK_CUDA(cudaMalloc(&o, n * 2));
    CHECK_CUDA(cudaMalloc(&lse, int64_t(b) * h * s * 4));
    fill_random<<<1024, 256>>>((uint16_t*)q, n, 7, var.bf16);
    fill_random<<<1024, 256>>>((uint16_t*)k, n, 8, var.bf16);
    fill_random<<<1024, 256>>>((uint16_t*)v, n, 9, var.bf16);
    FwdParams p{};
    p.q = q; p.k = k; p.v = v; p.o = o; p.lse = lse;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = int64_t(h) * d;
    p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = d;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = int64_t(s) * h * d;
    p.lse_row_stride = 1; p.lse_head_stride = s; p.lse_batch_stride = int64_t(h) * s;
    p.b = b; p.sq = s; p.sk = s; p.hq = h; p.hkv = h; p.d = d; p.hq_per_hkv = 1;
    set_scale(p, d, 0.f);
    p.causal = causal;
    p.window_right = causal ? 0 : -1;  // the host folds causal into window_right (FwdParams)
    p.dtype = var.bf16 ? DType::BFloat16 : DType::Float16;
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    for (int i = 0; i < 5; ++i) CHECK_CUDA(var.run(p, nullptr));
    CHECK_CUDA(cudaDeviceSynchronize());
    CHECK_CUDA(cudaEventRecord(e0));
    CHECK_CUDA(var.run(p, nullptr));
    CHECK_CUDA(cudaEventRecord(e1));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float one = 0;
    CHECK_CUDA(cudaEventElapsedTime(&one, e0, e1));
    const int reps = std::max(1, int(2.0 / std::max(one, 1e-3f)));  // each sample lasts >= ~2 ms
    std::vector<float> samples;
    for (int it = 0; it < 15; ++it) {
        CHECK_CUDA(cudaEventRecord(e0));
        for (int r = 0; r < reps; ++r) CHECK_CUDA(var.run(p, nullptr));
        CHECK_CUDA(cudaEventRecord(e1));
        CHECK_CUDA(cudaEventSynchronize(e1));
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        samples.push_back(ms / reps);
    }
    std::sort(samples.begin(), samples.end());
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(lse);
    return samples[samples.size() / 2];
}

int main(int argc, char** argv) {
    bool do_check = true, do_time = true;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--check-only")) do_time = false;
        if (!std::strcmp(argv[i], "--time-only")) do_check = false;
    }
    cudaDeviceProp prop;
    CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("# %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    g_l2_bytes = prop.l2CacheSize;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--no-lpt")) g_l2_bytes = -1;
    }
    std::vector<Variant> variants = {
        production<__nv_bfloat16, 32>(),  production<__nv_bfloat16, 64>(),  production<__nv_bfloat16, 96>(),
        production<__nv_bfloat16, 128>(), production<__nv_bfloat16, 192>(), production<__nv_bfloat16, 256>(),
        production<__half, 64>(),         production<__half, 128>(),        production<__half, 256>(),
        // tuning candidates
        make_variant<__nv_bfloat16, 256, 64, 64, 4>(false), make_variant<__nv_bfloat16, 256, 64, 32, 4>(false),
        make_variant<__nv_bfloat16, 192, 64, 64, 4>(false),  make_variant<__nv_bfloat16, 96, 64, 64, 4>(false),
        make_variant<__nv_bfloat16, 64, 128, 64, 4>(false),  make_variant<__nv_bfloat16, 32, 128, 64, 4>(false),
        make_variant<__nv_bfloat16, 64, 128, 64, 4, 3>(false), make_variant<__nv_bfloat16, 32, 128, 64, 4, 3>(false),
        make_variant<__nv_bfloat16, 32, 128, 128, 4, 2>(false),
    };
    int only_d = 0;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--d") && i + 1 < argc) only_d = std::atoi(argv[i + 1]);
    }
    if (only_d != 0) {
        std::vector<Variant> kept;
        for (const auto& v : variants) {
            if (v.d == only_d) kept.push_back(v);
        }
        variants = kept;
    }
    int failures = 0;
    if (do_check) {
        uint64_t seed = 1234;
        for (const auto& v : variants) {
            const int D = v.d;
            std::vector<Case> cases;
            Case c{2, 4, 2, 1000, 1000, D};
            cases.push_back(c);
            c.causal = true;
            cases.push_back(c);
            cases.push_back(Case{1, 6, 1, 113, 203, D, true});
            cases.push_back(Case{1, 6, 1, 203, 113, D, true});
            cases.push_back(Case{1, 6, 3, 203, 113, D, true, true});
            cases.push_back(Case{2, 2, 2, 1, 17, D});
            cases.push_back(Case{2, 2, 1, 17, 1, D, true});
            if (v.production) {
                cases.push_back(Case{1, 4, 2, 300, 500, D, false, false, 64, 16});   // sliding window
                cases.push_back(Case{1, 4, 2, 500, 300, D, true, false, 100, -1});   // causal + left window
                cases.push_back(Case{1, 4, 4, 257, 257, D, false, false, 0, 0});     // diagonal only
                cases.push_back(Case{1, 4, 2, 333, 333, D, false, false, -1, -1, 5.f});  // softcap
                cases.push_back(Case{1, 4, 2, 333, 411, D, true, true, -1, -1, 30.f});   // softcap + causal
                if (D > 32) cases.push_back(Case{2, 4, 2, 203, 203, D - 8 * (D >= 96 ? 3 : 1), true});  // padded d
                Case vl{0, 4, 2, 0, 0, D};
                vl.lq = {17, 0, 1, 300, 129};
                vl.lk = {17, 5, 0, 300, 260};
                cases.push_back(vl);
                vl.causal = true;
                cases.push_back(vl);
            }
            for (const auto& c2 : cases) failures += !check_case(v, c2, seed += 10);
        }
    }
    if (do_time) {
        for (const auto& v : variants) {
            if (!v.bf16) continue;
            const int l2 = g_l2_bytes;
            for (int order = 0; order < (v.production ? 2 : 1); ++order) {
                g_l2_bytes = order == 0 ? l2 : -1;  // second pass: one head per group (no LPT across heads)
                for (int causal = 0; causal < 2; ++causal) {
                    for (int s : {1024, 4096, 16384}) {
                        const int b = 16384 / s, h = 2048 / v.d;
                        const double ms = time_case(v, b, h, s, causal);
                        double flops = 4.0 * b * h * double(s) * s * v.d;
                        if (causal) flops /= 2;
                        std::printf("time %-22s %s causal=%d S=%5d b=%2d h=%2d  %8.3f ms  %6.1f TFLOP/s\n",
                                    v.name.c_str(), order == 0 ? "lpt " : "head", causal, s, b, h, ms, flops / ms / 1e9);
                    }
                }
            }
            g_l2_bytes = l2;
        }
    }
    std::printf("\n%s: %d correctness failures\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
