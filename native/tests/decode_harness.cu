// Standalone harness of the sm80 decode kernels (append + split-KV attention + combine), for checking and
// tuning on the GPU machine without the library or the managed stack. Header-only kernels; nothing to link.
// Build (H100; use compute_80/sm_80 on an A100 or with nvcc 11.8):
//   nvcc -std=c++17 -O3 --use_fast_math -gencode arch=compute_90a,code=sm_90a -I native/include
//        -I native/src -I native/kernels native/tests/decode_harness.cu -o /tmp/decode_harness
// Usage: decode_harness [--check-only] [--time-only] [--variants] [--splits N] [--reps N]
//   check: every case against a float64 CPU reference (fresh random inputs, output poisoned with NaN, every
//          cache slot a sequence does not use filled with NaN, appended rows read back bit for bit); one
//          PASS/FAIL line per case with max abs error, relative L2 error and the log-sum-exp error.
//   time:  the issue's grid (bf16, B 16, 32 q / 8 kv heads, D 128, one new token, cache 1k..128k;
//          contiguous, paged 16, paged 256) with CUDA events, L2 flushed before each run, median of --reps
//          (default 30) after warm-up; microseconds and K/V read TB/s (2*B*Hkv*S*D*2 bytes), beside a
//          device-to-device copy's (read + write) TB/s. --variants also times other tile choices at D 128;
//          --splits N forces the split count (default: the library's heuristic).
// Exit code 1 when a check failed.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "flash_attention.h"  // FA_DECODE_MAX_SPLITS
#include "sm80/decode_launch.cuh"

using namespace fa;
using namespace fa::sm80;

#define CHECK_CUDA(x)                                                                               \
    do {                                                                                            \
        cudaError_t e_ = (x);                                                                       \
        if (e_ != cudaSuccess) {                                                                    \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            std::exit(2);                                                                           \
        }                                                                                           \
    } while (0)

static LaunchInfo g_info{};
static int g_forced_splits = 0;
static int g_reps = 30;
static int g_failures = 0;
static uint64_t g_rng = 0;

// ---- host numbers ------------------------------------------------------------------------------------

static double uniform01() {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return double((g_rng * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}

static uint16_t to16(float x, bool bf16) {
    if (bf16) {
        __nv_bfloat16 h = __float2bfloat16(x);
        return *reinterpret_cast<uint16_t*>(&h);
    }
    __half h = __float2half(x);
    return *reinterpret_cast<uint16_t*>(&h);
}

static double from16(uint16_t x, bool bf16) {
    if (bf16) {
        const uint32_t u = uint32_t(x) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    __half h;
    std::memcpy(&h, &x, 2);
    return double(__half2float(h));
}

// Roughly normal, never exactly zero in bulk: sum of uniforms, centred.
static uint16_t random16(bool bf16) {
    const double s = uniform01() + uniform01() + uniform01() - 1.5;
    return to16(float(s * 2.0), bf16);
}

__global__ void fill_random(uint16_t* x, size_t n, uint64_t seed, bool bf16) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float val = (float((z & 0xFFFF) + ((z >> 16) & 0xFFFF) + ((z >> 32) & 0xFFFF)) / 65535.f - 1.5f) * 2.f;
        if (bf16) {
            __nv_bfloat16 h = __float2bfloat16(val);
            x[i] = *reinterpret_cast<uint16_t*>(&h);
        } else {
            __half h = __float2half(val);
            x[i] = *reinterpret_cast<uint16_t*>(&h);
        }
    }
}

// ---- a decode problem on the device ----------------------------------------------------------------

struct Case {
    std::string name;
    bool bf16 = true;
    int b = 1, sq = 1, hq = 8, hkv = 8, d = 128;
    int block = 0;          // paged block size, 0: contiguous
    int capacity = 0;       // positions per sequence (paged: a multiple of block)
    bool append = false, causal = false;
    int wl = -1, wr = -1;
    float softcap = 0.f, scale = 0.f;
    int splits = 0;         // 0: heuristic
    bool with_lse = true;
    std::vector<int> lens;  // cached tokens per sequence (before the append)
    int64_t first_block = 0;  // paged: physical blocks start here (>= 8192 with 256x8x128 blocks: offsets past 2^31)
};

struct Device {
    uint16_t *q = nullptr, *kc = nullptr, *vc = nullptr, *kn = nullptr, *vn = nullptr, *o = nullptr;
    float *lse = nullptr, *ws = nullptr;
    int32_t *lens = nullptr, *table = nullptr;
    size_t cache_elems = 0, ws_bytes = 0;
    std::vector<int32_t> host_table;
    int max_blocks = 0, num_blocks = 0;
};

static int64_t row_elems(const Case& c) { return int64_t(c.hkv) * c.d; }

// Physical row (in rows of hkv * d elements) of position pos of sequence b.
static int64_t phys_row(const Case& c, const Device& dv, int b, int pos) {
    if (c.block == 0) return int64_t(b) * c.capacity + pos;
    return int64_t(dv.host_table[size_t(b) * dv.max_blocks + pos / c.block]) * c.block + pos % c.block;
}

static void free_device(Device& dv) {
    for (void* p : {(void*)dv.q, (void*)dv.kc, (void*)dv.vc, (void*)dv.kn, (void*)dv.vn, (void*)dv.o, (void*)dv.lse,
                    (void*)dv.ws, (void*)dv.lens, (void*)dv.table}) {
        if (p) CHECK_CUDA(cudaFree(p));
    }
    dv = Device{};
}

// Allocates the cache (every slot NaN: 0xFFFF is a NaN in fp16 and bf16) and a shuffled block table.
static void alloc_device(const Case& c, Device& dv) {
    const int64_t row = row_elems(c);
    int64_t rows;
    if (c.block > 0) {
        dv.max_blocks = c.capacity / c.block;
        const int used = c.b * dv.max_blocks;
        dv.num_blocks = int(c.first_block) + used + 5;
        rows = int64_t(dv.num_blocks) * c.block;
        std::vector<int32_t> perm(used);
        for (int i = 0; i < used; ++i) perm[i] = int32_t(c.first_block) + i;
        for (int i = used - 1; i > 0; --i) std::swap(perm[i], perm[size_t(uniform01() * (i + 1)) % size_t(i + 1)]);
        dv.host_table.assign(size_t(used), -1);
        for (int bb = 0; bb < c.b; ++bb) {
            const int total = c.lens[bb] + (c.append ? c.sq : 0);
            for (int pg = 0; pg < dv.max_blocks; ++pg) {
                // Entries past a sequence's last page hold -1: never read.
                if (int64_t(pg) * c.block < total) dv.host_table[size_t(bb) * dv.max_blocks + pg] = perm[bb * dv.max_blocks + pg];
            }
        }
        CHECK_CUDA(cudaMalloc(&dv.table, sizeof(int32_t) * used));
        CHECK_CUDA(cudaMemcpy(dv.table, dv.host_table.data(), sizeof(int32_t) * used, cudaMemcpyHostToDevice));
    } else {
        rows = int64_t(c.b) * c.capacity;
    }
    dv.cache_elems = size_t(rows * row);
    CHECK_CUDA(cudaMalloc(&dv.kc, dv.cache_elems * 2));
    CHECK_CUDA(cudaMalloc(&dv.vc, dv.cache_elems * 2));
    CHECK_CUDA(cudaMemset(dv.kc, 0xFF, dv.cache_elems * 2));
    CHECK_CUDA(cudaMemset(dv.vc, 0xFF, dv.cache_elems * 2));
    const size_t nq = size_t(c.b) * c.sq * c.hq * c.d, nn = size_t(c.b) * c.sq * row;
    CHECK_CUDA(cudaMalloc(&dv.q, nq * 2));
    CHECK_CUDA(cudaMalloc(&dv.o, nq * 2));
    CHECK_CUDA(cudaMalloc(&dv.kn, nn * 2));
    CHECK_CUDA(cudaMalloc(&dv.vn, nn * 2));
    CHECK_CUDA(cudaMalloc(&dv.lse, sizeof(float) * c.b * c.hq * c.sq));
    CHECK_CUDA(cudaMalloc(&dv.lens, sizeof(int32_t) * c.b));
    CHECK_CUDA(cudaMemcpy(dv.lens, c.lens.data(), sizeof(int32_t) * c.b, cudaMemcpyHostToDevice));
    dv.ws_bytes = size_t(FA_DECODE_MAX_SPLITS) * c.b * c.hq * c.sq * (c.d + 1) * sizeof(float) + 4096;
    CHECK_CUDA(cudaMalloc(&dv.ws, dv.ws_bytes));
}

// The kernel parameters, filled as validate_decode.cpp fills them.
template <class Tr>
static DecodeParams make_params(const Case& c, const Device& dv) {
    DecodeParams p{};
    const int64_t row = row_elems(c);
    p.q = dv.q;
    p.k_cache = dv.kc;
    p.v_cache = dv.vc;
    p.k_new = c.append ? dv.kn : nullptr;
    p.v_new = c.append ? dv.vn : nullptr;
    p.o = dv.o;
    p.lse = c.with_lse ? dv.lse : nullptr;
    p.cache_seqlens = dv.lens;
    p.block_table = c.block > 0 ? dv.table : nullptr;
    p.q_row_stride = int64_t(c.hq) * c.d;
    p.q_batch_stride = c.sq * p.q_row_stride;
    p.q_head_stride = c.d;
    p.o_row_stride = p.q_row_stride;
    p.o_batch_stride = p.q_batch_stride;
    p.o_head_stride = c.d;
    p.k_row_stride = p.v_row_stride = row;
    p.k_head_stride = p.v_head_stride = c.d;
    p.k_batch_stride = p.v_batch_stride = row * (c.block > 0 ? c.block : c.capacity);
    p.kn_row_stride = p.vn_row_stride = row;
    p.kn_batch_stride = p.vn_batch_stride = row * c.sq;
    p.kn_head_stride = p.vn_head_stride = c.d;
    p.lse_batch_stride = int64_t(c.hq) * c.sq;
    p.lse_head_stride = c.sq;
    p.lse_row_stride = 1;
    p.seqlens_stride = 1;
    if (c.block > 0) {
        p.table_batch_stride = dv.max_blocks;
        p.table_page_stride = 1;
        p.block_size = c.block;
        int shift = 0;
        while ((1 << shift) < c.block) ++shift;
        p.block_shift = shift;
        p.num_blocks = dv.num_blocks;
        p.max_blocks = dv.max_blocks;
    }
    p.b = c.b;
    p.sq = c.sq;
    p.hq = c.hq;
    p.hkv = c.hkv;
    p.d = c.d;
    p.g = c.hq / c.hkv;
    p.rows = p.g * c.sq;
    p.m_blocks = (p.rows + 15) / 16;
    p.capacity = c.capacity;
    p.added = c.append ? c.sq : 0;
    const double scale = c.scale > 0.f ? c.scale : 1.0 / std::sqrt(double(c.d));
    p.scale = float(scale);
    p.softcap = c.softcap;
    p.scale_log2 = float((c.softcap > 0.f ? double(c.softcap) : scale) * 1.4426950408889634);
    p.causal = c.causal;
    p.window_left = c.wl >= c.capacity ? -1 : c.wl;
    p.window_right = c.causal ? 0 : (c.wr >= c.sq ? -1 : c.wr);
    p.dtype = c.bf16 ? DType::BFloat16 : DType::Float16;
    int longest = 0;
    for (int bb = 0; bb < c.b; ++bb) longest = std::max(longest, c.lens[bb] + p.added);
    p.num_splits = g_forced_splits > 0 ? g_forced_splits
                   : c.splits > 0      ? c.splits
                                       : choose_decode_splits(int64_t(c.b) * c.hkv * p.m_blocks, longest, Tr::kBlockN,
                                                              Tr::kSmemBytes, Tr::kMinBlocks, g_info.sm_count,
                                                              g_info.smem_optin, FA_DECODE_MAX_SPLITS,
                                                              decode_one_wave_min(false, c.block > 0, longest));
    const size_t accum_rows = size_t(p.num_splits) * c.b * c.hq * c.sq;
    p.o_accum = dv.ws;
    p.lse_accum = dv.ws + (accum_rows * c.d + 63) / 64 * 64;
    return p;
}

// Append, attention, combine: the library's launch order (registry.cu).
template <class Tr, bool kPaged>
static cudaError_t run(const DecodeParams& p, cudaStream_t s) {
    using T = typename Tr::Elem;
    if (p.k_new != nullptr) {
        const cudaError_t e = launch_decode_append<T>(p, g_info, s);
        if (e != cudaSuccess) return e;
    }
    cudaError_t e = launch_decode_attention<Tr, kPaged>(p, g_info, s);
    if (e != cudaSuccess || p.num_splits <= 1) return e;
    return launch_decode_combine<T>(p, g_info, s);
}

template <class Tr>
static cudaError_t run_any(const DecodeParams& p, cudaStream_t s) {
    return p.block_table != nullptr ? run<Tr, true>(p, s) : run<Tr, false>(p, s);
}

// ---- check ----------------------------------------------------------------------------------------------

template <class Tr>
static void check_case(const Case& c, const char* variant) {
    const bool bf = c.bf16;
    const int64_t row = row_elems(c);
    const int g = c.hq / c.hkv;
    Device dv;
    alloc_device(c, dv);
    // Logical cache contents and new tokens on the host; the device gets them at their physical rows.
    std::vector<std::vector<uint16_t>> kl(c.b), vl(c.b);
    for (int bb = 0; bb < c.b; ++bb) {
        kl[bb].resize(size_t(c.lens[bb] + c.sq) * row);
        vl[bb].resize(kl[bb].size());
        for (size_t i = 0; i < size_t(c.lens[bb]) * row; ++i) {
            kl[bb][i] = random16(bf);
            vl[bb][i] = random16(bf);
        }
        for (int pos = 0; pos < c.lens[bb];) {
            // Runs of positions that are contiguous in memory: one page, or the whole contiguous sequence.
            const int run_end = c.block > 0 ? std::min(c.lens[bb], (pos / c.block + 1) * c.block) : c.lens[bb];
            const size_t at = size_t(phys_row(c, dv, bb, pos) * row);
            const size_t n = size_t(run_end - pos) * row;
            CHECK_CUDA(cudaMemcpy(dv.kc + at, kl[bb].data() + size_t(pos) * row, n * 2, cudaMemcpyHostToDevice));
            CHECK_CUDA(cudaMemcpy(dv.vc + at, vl[bb].data() + size_t(pos) * row, n * 2, cudaMemcpyHostToDevice));
            pos = run_end;
        }
    }
    const size_t nq = size_t(c.b) * c.sq * c.hq * c.d, nn = size_t(c.b) * c.sq * row;
    std::vector<uint16_t> q(nq), kn(nn), vn(nn), o(nq);
    for (auto& x : q) x = random16(bf);
    for (size_t i = 0; i < nn; ++i) {
        kn[i] = random16(bf);
        vn[i] = random16(bf);
    }
    CHECK_CUDA(cudaMemcpy(dv.q, q.data(), nq * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dv.kn, kn.data(), nn * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dv.vn, vn.data(), nn * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemset(dv.o, 0xFF, nq * 2));
    CHECK_CUDA(cudaMemset(dv.lse, 0xFF, sizeof(float) * c.b * c.hq * c.sq));
    CHECK_CUDA(cudaMemset(dv.ws, 0xFF, dv.ws_bytes));  // unwritten partials are NaN

    const DecodeParams p = make_params<Tr>(c, dv);
    CHECK_CUDA(run_any<Tr>(p, nullptr));
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<float> lse(size_t(c.b) * c.hq * c.sq);
    CHECK_CUDA(cudaMemcpy(o.data(), dv.o, nq * 2, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(lse.data(), dv.lse, lse.size() * 4, cudaMemcpyDeviceToHost));

    // Appended rows, bit for bit; the slot after them (when it exists) still NaN.
    bool append_ok = true;
    if (c.append) {
        std::vector<uint16_t> got(static_cast<size_t>(row));
        for (int bb = 0; bb < c.b; ++bb) {
            for (int i = 0; i <= c.sq; ++i) {
                const int pos = c.lens[bb] + i;
                if (pos >= c.capacity || (c.block > 0 && dv.host_table[size_t(bb) * dv.max_blocks + pos / c.block] < 0)) break;
                for (int which = 0; which < 2; ++which) {
                    CHECK_CUDA(cudaMemcpy(got.data(), (which ? dv.vc : dv.kc) + size_t(phys_row(c, dv, bb, pos) * row),
                                          size_t(row) * 2, cudaMemcpyDeviceToHost));
                    const uint16_t* want = (which ? vn.data() : kn.data()) + (size_t(bb) * c.sq + i) * row;
                    for (int64_t e = 0; e < row; ++e) {
                        if (i < c.sq ? got[e] != want[e] : got[e] != 0xFFFF) append_ok = false;
                    }
                }
            }
            // The logical cache the reference reads: the cached tokens, then the new ones.
            std::copy(kn.begin() + size_t(bb) * c.sq * row, kn.begin() + size_t(bb + 1) * c.sq * row,
                      kl[bb].begin() + size_t(c.lens[bb]) * row);
            std::copy(vn.begin() + size_t(bb) * c.sq * row, vn.begin() + size_t(bb + 1) * c.sq * row,
                      vl[bb].begin() + size_t(c.lens[bb]) * row);
        }
    }

    // float64 reference (DecodeReference's rules: bottom-right masks around total - sq + i).
    const double scale = c.scale > 0.f ? c.scale : 1.0 / std::sqrt(double(c.d));
    double max_err = 0, num = 0, den = 0, lse_err = 0;
    int nan_count = 0, lse_bad = 0;
    std::vector<double> sc;
    for (int bb = 0; bb < c.b; ++bb) {
        const int total = c.lens[bb] + (c.append ? c.sq : 0);
        sc.resize(size_t(std::max(total, 1)));
        for (int i = 0; i < c.sq; ++i) {
            const int64_t diag = int64_t(total) - c.sq + i;
            for (int h = 0; h < c.hq; ++h) {
                const uint16_t* qr = q.data() + ((size_t(bb) * c.sq + i) * c.hq + h) * c.d;
                double mx = -INFINITY;
                for (int j = 0; j < total; ++j) {
                    const uint16_t* kr = kl[bb].data() + size_t(j) * row + size_t(h / g) * c.d;
                    double dot = 0;
                    for (int e = 0; e < c.d; ++e) dot += from16(qr[e], bf) * from16(kr[e], bf);
                    dot *= scale;
                    if (c.softcap > 0.f) dot = c.softcap * std::tanh(dot / c.softcap);
                    bool vis = true;
                    if (c.causal && j > diag) vis = false;
                    if (!c.causal && c.wr >= 0 && j > diag + c.wr) vis = false;
                    if (c.wl >= 0 && j < diag - c.wl) vis = false;
                    sc[j] = vis ? dot : -INFINITY;
                    mx = std::max(mx, sc[j]);
                }
                std::vector<double> ref(size_t(c.d), 0.0);
                double want_lse = INFINITY;
                if (mx > -INFINITY) {
                    double sum = 0;
                    for (int j = 0; j < total; ++j) {
                        if (sc[j] == -INFINITY) continue;
                        const double pj = std::exp(sc[j] - mx);
                        sum += pj;
                        const uint16_t* vr = vl[bb].data() + size_t(j) * row + size_t(h / g) * c.d;
                        for (int e = 0; e < c.d; ++e) ref[e] += pj * from16(vr[e], bf);
                    }
                    for (auto& x : ref) x /= sum;
                    want_lse = mx + std::log(sum);
                }
                const uint16_t* orow = o.data() + ((size_t(bb) * c.sq + i) * c.hq + h) * c.d;
                for (int e = 0; e < c.d; ++e) {
                    const double got = from16(orow[e], bf);
                    if (std::isnan(got)) ++nan_count;
                    max_err = std::max(max_err, std::fabs(got - ref[e]));
                    num += (got - ref[e]) * (got - ref[e]);
                    den += ref[e] * ref[e];
                }
                const float got_lse = c.with_lse ? lse[(size_t(bb) * c.hq + h) * c.sq + i] : float(want_lse);
                if (!c.with_lse) {
                    // No LSE requested: nothing to check (the output check above still runs).
                } else if (std::isinf(want_lse)) {
                    if (!(std::isinf(got_lse) && got_lse > 0)) ++lse_bad;
                } else if (!(std::fabs(got_lse - want_lse) < 1e30)) {
                    ++lse_bad;
                } else {
                    lse_err = std::max(lse_err, std::fabs(double(got_lse) - want_lse));
                }
            }
        }
    }
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    const double tol_abs = bf ? 3e-2 : 5e-3, tol_rel = bf ? 1e-2 : 2e-3;
    const bool pass = nan_count == 0 && max_err <= tol_abs && rel <= tol_rel && lse_bad == 0 && lse_err < 2e-3 && append_ok;
    std::printf("%s %-58s %-10s splits %3d  max|err| %.2e  relL2 %.2e  max|lse err| %.1e%s%s%s\n", pass ? "PASS" : "FAIL",
                c.name.c_str(), variant, p.num_splits, max_err, rel, lse_err, nan_count ? "  NaN in output" : "",
                lse_bad ? "  wrong +inf/NaN lse" : "", append_ok ? "" : "  APPENDED ROWS WRONG");
    if (!pass) ++g_failures;
    free_device(dv);
}

// ---- timing ----------------------------------------------------------------------------------------------

static void* g_flush = nullptr;
static const size_t kFlushBytes = size_t(256) << 20;  // several times any L2

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

template <typename F>
static double time_ms(F&& fn) {
    cudaEvent_t a, b;
    CHECK_CUDA(cudaEventCreate(&a));
    CHECK_CUDA(cudaEventCreate(&b));
    for (int i = 0; i < 3; ++i) fn();
    std::vector<double> ms;
    for (int i = 0; i < g_reps; ++i) {
        CHECK_CUDA(cudaMemsetAsync(g_flush, i & 0xFF, kFlushBytes));
        CHECK_CUDA(cudaEventRecord(a));
        fn();
        CHECK_CUDA(cudaEventRecord(b));
        CHECK_CUDA(cudaEventSynchronize(b));
        float t = 0;
        CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
        ms.push_back(t);
    }
    CHECK_CUDA(cudaEventDestroy(a));
    CHECK_CUDA(cudaEventDestroy(b));
    return median(ms);
}

static double copy_tbps() {
    const size_t bytes = size_t(1) << 30;
    void *x, *y;
    CHECK_CUDA(cudaMalloc(&x, bytes));
    CHECK_CUDA(cudaMalloc(&y, bytes));
    CHECK_CUDA(cudaMemset(x, 1, bytes));
    const double ms = time_ms([&] { CHECK_CUDA(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice)); });
    CHECK_CUDA(cudaFree(x));
    CHECK_CUDA(cudaFree(y));
    return 2.0 * double(bytes) / ms / 1e9;
}

struct TimeRow {
    std::string layout, variant;
    int s, splits;
    double us, tbps;
};

// One grid point: the cache filled on the device with random values (no host copy), every position in use.
template <class Tr>
static TimeRow time_case(const Case& c, const char* variant) {
    Device dv;
    alloc_device(c, dv);
    fill_random<<<1024, 256>>>(dv.kc, dv.cache_elems, g_rng++, c.bf16);
    fill_random<<<1024, 256>>>(dv.vc, dv.cache_elems, g_rng++, c.bf16);
    fill_random<<<256, 256>>>(dv.q, size_t(c.b) * c.sq * c.hq * c.d, g_rng++, c.bf16);
    CHECK_CUDA(cudaGetLastError());
    const DecodeParams p = make_params<Tr>(c, dv);
    const double ms = time_ms([&] { CHECK_CUDA(run_any<Tr>(p, nullptr)); });
    // A fast kernel that writes garbage is no result: the output must be finite.
    std::vector<uint16_t> o(size_t(c.b) * c.hq * c.d);
    CHECK_CUDA(cudaMemcpy(o.data(), dv.o, o.size() * 2, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (uint16_t x : o) bad += std::isfinite(from16(x, c.bf16)) ? 0 : 1;
    if (bad) {
        std::printf("FAIL timing run %s %s: %d non-finite outputs\n", c.name.c_str(), variant, bad);
        ++g_failures;
    }
    const int s = c.lens[0];
    const double bytes = 2.0 * c.b * c.hkv * double(s) * c.d * 2;
    free_device(dv);
    return TimeRow{c.block ? "paged " + std::to_string(c.block) : "contiguous", variant, s, p.num_splits, ms * 1e3,
                   bytes / ms / 1e9};
}

static Case grid_case(int s, int block) {
    Case c;
    c.name = "grid";
    c.b = 16;
    c.hq = 32;
    c.hkv = 8;
    c.d = 128;
    c.sq = 1;
    c.block = block;
    c.capacity = s;
    c.lens.assign(16, s);
    return c;
}

// Other D 128 tiles for --variants: warps x stages (8 warps fit one CTA per SM, so no register cap).
template <int W, int S>
using Bf128 = DecodeTraits<__nv_bfloat16, 128, W, S, W == 8 ? 1 : 2>;

// ---- cases -------------------------------------------------------------------------------------------

static Case mk(const char* name, int b, int sq, int hq, int hkv, int d, int block, int capacity, bool append,
               std::vector<int> lens) {
    Case c;
    c.name = name;
    c.b = b;
    c.sq = sq;
    c.hq = hq;
    c.hkv = hkv;
    c.d = d;
    c.block = block;
    c.capacity = capacity;
    c.append = append;
    c.lens = std::move(lens);
    return c;
}

template <typename T, int D>
using Def = DecodeTraitsFor<T, D>;

static void run_checks(bool variants) {
    using B128 = Def<__nv_bfloat16, 128>;
    std::vector<Case> main_cases;
    main_cases.push_back(mk("contig GQA1 lens 0/1/1000/4097", 4, 1, 8, 8, 128, 0, 4100, false, {0, 1, 1000, 4097}));
    main_cases.push_back(mk("contig GQA4 1 split", 3, 1, 32, 8, 128, 0, 3000, false, {17, 2048, 3000}));
    main_cases.back().splits = 1;
    main_cases.push_back(mk("contig GQA4 7 splits", 3, 1, 32, 8, 128, 0, 3000, false, {17, 2048, 3000}));
    main_cases.back().splits = 7;
    main_cases.push_back(mk("contig GQA4 128 splits (many empty)", 3, 1, 32, 8, 128, 0, 3000, false, {17, 2048, 3000}));
    main_cases.back().splits = 128;
    main_cases.push_back(mk("paged16 shuffled GQA8 append across page end", 3, 1, 32, 4, 128, 16, 512, true, {15, 0, 333}));
    main_cases.push_back(mk("paged32 GQA32 (2 row blocks) append", 2, 1, 32, 1, 128, 32, 256, true, {100, 31}));
    main_cases.push_back(mk("paged64 sq4 causal GQA4 append", 3, 4, 16, 4, 128, 64, 1152, true, {60, 0, 1000}));
    main_cases.back().causal = true;
    {
        Case c = mk("paged128 sq4 causal window 100 softcap 30 fp16", 2, 4, 8, 2, 128, 128, 1024, true, {700, 3});
        c.bf16 = false;
        c.causal = true;
        c.wl = 100;
        c.softcap = 30.f;
        main_cases.push_back(c);
    }
    main_cases.push_back(mk("paged256 append across page end 3 splits", 3, 1, 8, 8, 128, 256, 768, true, {255, 511, 0}));
    main_cases.back().splits = 3;
    main_cases.push_back(mk("contig sq4 causal rows that see nothing", 3, 4, 8, 2, 128, 0, 600, false, {2, 1, 500}));
    main_cases.back().causal = true;
    {
        Case c = mk("contig window (50, 3) non-causal sq3 scale 0.2", 2, 3, 8, 2, 128, 0, 900, true, {800, 10});
        c.wl = 50;
        c.wr = 3;
        c.scale = 0.2f;
        main_cases.push_back(c);
    }
    {
        Case c = mk("paged16 no lse, GQA 2", 2, 1, 4, 2, 128, 16, 256, false, {200, 1});
        c.with_lse = false;
        main_cases.push_back(c);
    }
    for (const Case& c : main_cases) {
        if (c.bf16) {
            check_case<B128>(c, "default");
        } else {
            check_case<Def<__half, 128>>(c, "default");
        }
    }
    // Every kernel head dim (bf16), paged 16 with append and a split, and a padded head dim (72 on the 96 kernel).
    {
        Case c = mk("paged16 append 2 splits, head dim ", 2, 2, 8, 2, 0, 16, 320, true, {250, 17});
        c.splits = 2;
        c.causal = true;
        auto with_d = [&](int d) {
            Case x = c;
            x.d = d;
            x.name += std::to_string(d);
            return x;
        };
        check_case<Def<__nv_bfloat16, 32>>(with_d(32), "default");
        check_case<Def<__nv_bfloat16, 64>>(with_d(64), "default");
        check_case<Def<__half, 64>>([&] { Case x = with_d(64); x.bf16 = false; x.name += " fp16"; return x; }(), "default");
        check_case<Def<__nv_bfloat16, 96>>(with_d(96), "default");
        check_case<Def<__nv_bfloat16, 96>>(with_d(72), "default");
        check_case<Def<__nv_bfloat16, 192>>(with_d(192), "default");
        check_case<Def<__nv_bfloat16, 256>>(with_d(256), "default");
    }
    // Offsets past 2^31 elements: a contiguous cache whose third sequence starts at element 2^31, and a paged
    // pool whose blocks in use start at block 8192 (8192 * 256 * 8 * 128 = 2^31). About 12 and 9 GB.
    {
        Case c = mk("contig offsets past 2^31 (b=2 starts at 2^31)", 3, 2, 16, 8, 128, 0, 1 << 20, true, {5, 300, 777});
        c.causal = true;
        check_case<B128>(c, "default");
        Case pcase = mk("paged256 blocks past 2^31 elements", 2, 1, 32, 8, 128, 256, 1024, true, {600, 255});
        pcase.first_block = 8192;
        check_case<B128>(pcase, "default");
    }
    if (variants) {
        const Case& a = main_cases[2];
        const Case& b = main_cases[4];
        const Case& c = main_cases[6];
        for (const Case* x : {&a, &b, &c}) {
            check_case<Bf128<4, 4>>(*x, "4w4s");
            check_case<Bf128<4, 2>>(*x, "4w2s");
            check_case<Bf128<2, 4>>(*x, "2w4s");
            check_case<Bf128<2, 6>>(*x, "2w6s");
            check_case<Bf128<8, 2>>(*x, "8w2s");
        }
    }
}

static void run_timing(bool variants) {
    const double copy = copy_tbps();
    std::printf("\ndevice-to-device copy: %.2f TB/s (read + write); issue goals: <= 109 us at 4k, >= %.2f TB/s "
                "(90%% of copy) at 32k+\n",
                copy, 0.9 * copy);
    std::vector<TimeRow> rows;
    for (int block : {0, 16, 256}) {
        for (int s : {1024, 4096, 16384, 32768, 131072}) {
            const Case c = grid_case(s, block);
            rows.push_back(time_case<Def<__nv_bfloat16, 128>>(c, "4w3s"));
            if (variants) {
                rows.push_back(time_case<Bf128<4, 4>>(c, "4w4s"));
                rows.push_back(time_case<Bf128<4, 2>>(c, "4w2s"));
                rows.push_back(time_case<Bf128<2, 4>>(c, "2w4s"));
                rows.push_back(time_case<Bf128<2, 6>>(c, "2w6s"));
                rows.push_back(time_case<Bf128<8, 2>>(c, "8w2s"));
            }
            const TimeRow& r = rows.back();
            std::printf("# %-11s %-5s S %6d  splits %3d  %9.1f us  %5.2f TB/s\n", r.layout.c_str(), r.variant.c_str(),
                        r.s, r.splits, r.us, r.tbps);
            std::fflush(stdout);
        }
    }
    std::printf("\nbf16 decode, B 16, 32 q / 8 kv heads, D 128, one new token (median of %d, L2 flushed)\n", g_reps);
    std::printf("layout       tile   cache  splits        us   K/V TB/s  of copy  goal\n");
    for (const TimeRow& r : rows) {
        std::string goal = "";
        if (r.s == 4096) goal = r.us <= 109.0 ? "<=109us met" : "<=109us NOT met";
        if (r.s >= 32768) goal = r.tbps >= 0.9 * copy ? ">=90% met" : ">=90% NOT met";
        std::printf("%-12s %-5s %6dk  %6d  %8.1f  %9.2f  %6.0f%%  %s\n", r.layout.c_str(), r.variant.c_str(), r.s / 1024,
                    r.splits, r.us, r.tbps, 100.0 * r.tbps / copy, goal.c_str());
    }
}

int main(int argc, char** argv) {
    bool check = true, timing = true, variants = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--check-only") timing = false;
        else if (a == "--time-only") check = false;
        else if (a == "--variants") variants = true;
        else if (a == "--splits" && i + 1 < argc) g_forced_splits = std::atoi(argv[++i]);
        else if (a == "--reps" && i + 1 < argc) g_reps = std::max(5, std::atoi(argv[++i]));
        else {
            std::fprintf(stderr, "usage: %s [--check-only] [--time-only] [--variants] [--splits N] [--reps N]\n", argv[0]);
            return 2;
        }
    }
    cudaDeviceProp prop;
    CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
    g_info.device = 0;
    g_info.cc_major = prop.major;
    g_info.cc_minor = prop.minor;
    g_info.sm_count = prop.multiProcessorCount;
    g_info.smem_optin = int64_t(prop.sharedMemPerBlockOptin);
    g_info.l2_bytes = prop.l2CacheSize;
    g_rng = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) | 1;
    std::printf("# %s: %d SMs, cc %d.%d, %.0f MB L2, %zu KB smem/block opt-in; seed %llu\n", prop.name,
                prop.multiProcessorCount, prop.major, prop.minor, prop.l2CacheSize / 1e6,
                size_t(prop.sharedMemPerBlockOptin) / 1024, (unsigned long long)g_rng);
    std::printf("# default D 128 tile: 16 rows x %d keys, %d warps, %d stages, %d B smem\n",
                Def<__nv_bfloat16, 128>::kBlockN, Def<__nv_bfloat16, 128>::kWarps, Def<__nv_bfloat16, 128>::kStages,
                Def<__nv_bfloat16, 128>::kSmemBytes);
    CHECK_CUDA(cudaMalloc(&g_flush, kFlushBytes));
    if (check) run_checks(variants);
    if (timing) run_timing(variants);
    CHECK_CUDA(cudaFree(g_flush));
    std::printf("\n%s: %d failure(s)\n", g_failures ? "FAILED" : "ALL PASSED", g_failures);
    return g_failures ? 1 : 0;
}
