// Standalone harness of the backward pass through the C ABI, for the GPU machine without the managed
// stack: checks fa_backward against a float64 CPU reference (fresh random inputs, NaN-poisoned
// outputs, every element; equal head dims and the V head dim pair (192, 128)), checks the deterministic mode bit for
// bit across two runs, then times the backward over the TARGETS.md grid (CUDA events, median) in both modes. Build
// after build_native:
//   g++ -std=c++17 -O2 -I native/include native/tests/bwd_harness.cpp -L artifacts/native
//       -lflash_attention -Wl,-rpath,$PWD/artifacts/native -o /tmp/bwd_harness
// Usage: bwd_harness [--check-only] [--time-only] [--d 64,128,256] [--paths auto,sm80,sm90] [--seed N]
// (--paths: the kernel paths to check and time, each in turn; default auto.)
// Under ctest (bwd_check) it runs --check-only; without a GPU it exits 77, which ctest reports as skipped.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flash_attention.h"

#define CHECK(x)                                                                                       \
    do {                                                                                               \
        fa_status_t s_ = (x);                                                                          \
        if (s_ != FA_STATUS_SUCCESS) {                                                                 \
            std::fprintf(stderr, "%s:%d %s: %s: %s\n", __FILE__, __LINE__, #x, fa_status_string(s_),   \
                         fa_last_error_message());                                                     \
            std::exit(2);                                                                              \
        }                                                                                              \
    } while (0)

static uint16_t to_half_bits(float f, bool bf16) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (bf16) return static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    // fp16, round to nearest even (normal range only; inputs here are small normals)
    const uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = static_cast<int32_t>((u >> 23) & 0xFF) - 127 + 15;
    uint32_t mant = u & 0x7FFFFF;
    if (exp <= 0) return static_cast<uint16_t>(sign);
    uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
    return static_cast<uint16_t>(h);
}

static double from_half_bits(uint16_t x, bool bf16) {
    if (bf16) {
        uint32_t u = static_cast<uint32_t>(x) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    const int sign = x >> 15, exp = (x >> 10) & 0x1F, mant = x & 0x3FF;
    double v;
    if (exp == 0) v = std::ldexp(mant, -24);
    else if (exp == 31) v = mant ? NAN : INFINITY;
    else v = std::ldexp(1024 + mant, exp - 25);
    return sign ? -v : v;
}

struct Case {
    int b, hq, hkv, sq, sk, d;
    bool causal = false, top_left = false;
    int wl = -1, wr = -1;
    float softcap = 0.f, scale = 0.f;
    std::vector<int> lq, lk;  // varlen lengths (empty: fixed-length)
    bool bf16 = true;
    bool sinks = false;  // learnable sinks (C ABI 0.7): one fp32 logit per query head, and their gradient dsinks
    int alibi = 0;       // ALiBi slopes (C ABI 0.8): 1 [hq], 2 [b, hq] (b: the sequences of a varlen batch)
    int dv = 0;          // v's (and out's, dO's, dv's) head dim when it is not d (C ABI 0.10: the pair (192, 128)); 0: d
};

static std::string describe(const Case& c) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s b=%d hq=%d hkv=%d sq=%d sk=%d d=%d%s%s wl=%d wr=%d cap=%g%s", c.bf16 ? "bf16" : "fp16",
                  c.b, c.hq, c.hkv, c.sq, c.sk, c.d, c.causal ? " causal" : "", c.top_left ? " top-left" : "", c.wl, c.wr,
                  c.softcap, c.lq.empty() ? "" : " varlen");
    if (c.sinks) std::snprintf(buf + std::strlen(buf), sizeof buf - std::strlen(buf), " sinks");
    if (c.alibi) std::snprintf(buf + std::strlen(buf), sizeof buf - std::strlen(buf), " alibi%s", c.alibi == 2 ? "[b,hq]" : "[hq]");
    if (c.dv) std::snprintf(buf + std::strlen(buf), sizeof buf - std::strlen(buf), " dv=%d", c.dv);
    return buf;
}

static fa_tensor_t tensor(void* data, int dtype, std::vector<int64_t> shape) {
    fa_tensor_t t;
    std::memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.rank = static_cast<int32_t>(shape.size());
    int64_t stride = 1;
    for (int i = t.rank - 1; i >= 0; --i) {
        t.shape[i] = shape[i];
        t.strides[i] = stride;
        stride *= shape[i];
    }
    return t;
}

struct Dev {
    void* p = nullptr;
    size_t bytes = 0;
    explicit Dev(size_t n) : bytes(n) { CHECK(fa_memory_alloc(0, n == 0 ? 256 : n, &p)); }
    ~Dev() { fa_memory_free(0, p); }
};

// Everything one case needs on the device, filled with fresh random values.
struct Problem {
    Case c;
    int64_t rows_q, rows_k;  // per batch (fixed) or total (varlen)
    int64_t nq, nk, nl;
    int64_t nv, no;  // elements of v (and dv) and of out (and dO): nk and nq unless the V head dim differs
    std::vector<uint16_t> q, k, v, dout;
    std::vector<float> sinks;  // [hq] when c.sinks
    std::vector<float> slopes;  // [hq] or [b, hq] when c.alibi
    std::vector<int> cq, ck;
    Dev *dq_, *dk_, *dv_, *q_, *k_, *v_, *o_, *do_, *lse_, *cuq_, *cuk_;
    fa_context_t ctx;
    int dtype;
};

// The float64 reference of a case: dq, dk, dv; with sinks also dsinks [hq], per head the sum of its terms' magnitudes
// sum_i e^(sigma - lse_i) |D_i| (the condition of dsinks), and the forward's lse (layout of the call:
// [b, hq, sq] or [hq, total_q]), where a sink joins every row's denominator (FEATURES.md section 7) and a row that sees
// no key has lse = the sink. ALiBi (FEATURES.md section 2) adds slope * j (FlashAttention-2's causal form: causal or
// window right 0, with no left window or one of at least the longest key sequence) or -slope * |i + off - j| to each
// final logit, after softcap; it changes P and the lse, not the chain rule.
static double ref_case(const Problem& P, const std::vector<uint16_t>& o_kernel, std::vector<double>& dq, std::vector<double>& dk,
                       std::vector<double>& dv, std::vector<double>& dsinks, std::vector<double>& dsinks_abs,
                       std::vector<double>& lse_ref, std::vector<char>& lse_empty) {
    const Case& c = P.c;
    const bool varlen = !c.lq.empty();
    const int B = varlen ? static_cast<int>(c.lq.size()) : c.b;
    const double scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(double(c.d));
    dq.assign(P.nq, 0.0);
    dk.assign(P.nk, 0.0);
    dv.assign(P.nv, 0.0);
    dsinks.assign(c.hq, 0.0);
    dsinks_abs.assign(c.hq, 0.0);
    lse_ref.assign(varlen ? size_t(c.hq) * P.cq.back() : size_t(c.b) * c.hq * c.sq, INFINITY);
    lse_empty.assign(lse_ref.size(), 0);
    const int d = c.d, hq = c.hq, hkv = c.hkv;
    const int dvh = c.dv ? c.dv : c.d;  // the V head dim: v's, dO's, out's and dv's columns
    auto at = [&](const std::vector<uint16_t>& x, int64_t row, int h, int heads, int j) {
        return from_half_bits(x[(row * heads + h) * d + j], c.bf16);
    };
    auto atv = [&](const std::vector<uint16_t>& x, int64_t row, int h, int heads, int j) {  // v and dO
        return from_half_bits(x[(row * heads + h) * dvh + j], c.bf16);
    };
    (void)o_kernel;
    const int max_sk = varlen ? *std::max_element(c.lk.begin(), c.lk.end()) : c.sk;
    const bool column_form = (c.causal || c.wr == 0) && (c.wl < 0 || c.wl >= max_sk);
    for (int b = 0; b < B; ++b) {
        const int sq = varlen ? c.lq[b] : c.sq, sk = varlen ? c.lk[b] : c.sk;
        const int64_t q0 = varlen ? P.cq[b] : int64_t(b) * c.sq, k0 = varlen ? P.ck[b] : int64_t(b) * c.sk;
        const int off = c.top_left ? 0 : sk - sq;
        for (int h = 0; h < hq; ++h) {
            const int g = h / (hq / hkv);
            for (int i = 0; i < sq; ++i) {
                std::vector<double> logit(sk), t(sk), p(sk, 0.0), dp(sk);
                double mx = -INFINITY;
                std::vector<char> vis(sk);
                for (int j = 0; j < sk; ++j) {
                    int right = c.causal ? (c.wr >= 0 ? std::min(c.wr, 0) : 0) : c.wr;
                    bool ok = true;
                    if (right >= 0 && j > i + off + right) ok = false;
                    if (c.wl >= 0 && j < i + off - c.wl) ok = false;
                    vis[j] = ok;
                    double u = 0;
                    for (int e = 0; e < d; ++e) u += at(P.q, q0 + i, h, hq, e) * at(P.k, k0 + j, g, hkv, e);
                    if (c.softcap > 0) {
                        t[j] = std::tanh(u * scale / c.softcap);
                        logit[j] = c.softcap * t[j];
                    } else {
                        logit[j] = u * scale;
                    }
                    if (c.alibi) {
                        const double m = P.slopes[(c.alibi == 2 ? size_t(b) * hq : 0) + h];
                        logit[j] += column_form ? m * j : -m * std::abs(i + off - j);
                    }
                    if (ok) mx = std::max(mx, logit[j]);
                }
                const size_t lse_at = varlen ? size_t(h) * P.cq.back() + q0 + i : (size_t(b) * hq + h) * c.sq + i;
                const double sigma = c.sinks ? double(P.sinks[h]) : -INFINITY;
                lse_empty[lse_at] = mx == -INFINITY;
                if (c.sinks) mx = std::max(mx, sigma);
                if (mx == -INFINITY) continue;  // sees nothing: zero gradients
                double sum = c.sinks ? std::exp(sigma - mx) : 0.0;
                for (int j = 0; j < sk; ++j) {
                    if (vis[j]) sum += (p[j] = std::exp(logit[j] - mx));
                }
                for (int j = 0; j < sk; ++j) p[j] /= sum;
                const double lse_i = mx + std::log(sum);
                lse_ref[lse_at] = lse_i;
                std::vector<double> o(dvh, 0.0);
                for (int j = 0; j < sk; ++j) {
                    if (p[j] == 0) continue;
                    for (int e = 0; e < dvh; ++e) o[e] += p[j] * atv(P.v, k0 + j, g, hkv, e);
                }
                double D = 0;
                for (int e = 0; e < dvh; ++e) D += o[e] * atv(P.dout, q0 + i, h, hq, e);
                if (c.sinks) {
                    dsinks[h] -= std::exp(sigma - lse_i) * D;
                    dsinks_abs[h] += std::exp(sigma - lse_i) * std::fabs(D);
                }
                for (int j = 0; j < sk; ++j) {
                    if (p[j] == 0) continue;
                    double dpj = 0;
                    for (int e = 0; e < dvh; ++e) dpj += atv(P.dout, q0 + i, h, hq, e) * atv(P.v, k0 + j, g, hkv, e);
                    double ds = p[j] * (dpj - D);
                    ds *= c.softcap > 0 ? scale * (1 - t[j] * t[j]) : scale;
                    for (int e = 0; e < d; ++e) {
                        dq[((q0 + i) * hq + h) * d + e] += ds * at(P.k, k0 + j, g, hkv, e);
                        dk[((k0 + j) * hkv + g) * d + e] += ds * at(P.q, q0 + i, h, hq, e);
                    }
                    for (int e = 0; e < dvh; ++e) dv[((k0 + j) * hkv + g) * dvh + e] += p[j] * atv(P.dout, q0 + i, h, hq, e);
                }
            }
        }
    }
    return scale;
}

static double rel_l2(const std::vector<uint16_t>& got, const std::vector<double>& ref, bool bf16, bool* nan) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double g = from_half_bits(got[i], bf16);
        if (std::isnan(g)) *nan = true;
        num += (g - ref[i]) * (g - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

static std::mt19937_64 rng;
static int g_path = FA_PATH_AUTO;  // kernel_path of every call (--paths)

static void fill(std::vector<uint16_t>& x, bool bf16) {
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& e : x) {
        float f = nd(rng);
        if (f == 0.f) f = 0.5f;
        e = to_half_bits(f, bf16);
    }
}

// Runs forward + backward of a case; returns false on a failed check.
static bool check_case(fa_context_t ctx, const Case& c, bool deterministic) {
    const bool varlen = !c.lq.empty();
    const int B = varlen ? static_cast<int>(c.lq.size()) : c.b;
    std::vector<int> cq(B + 1, 0), ck(B + 1, 0);
    if (varlen) {
        for (int i = 0; i < B; ++i) {
            cq[i + 1] = cq[i] + c.lq[i];
            ck[i + 1] = ck[i] + c.lk[i];
        }
    }
    const int64_t rows_q = varlen ? cq[B] : int64_t(B) * c.sq, rows_k = varlen ? ck[B] : int64_t(B) * c.sk;
    const int dvh = c.dv ? c.dv : c.d;  // the V head dim
    const int64_t nq = rows_q * c.hq * c.d, nk = rows_k * c.hkv * c.d, nl = rows_q * c.hq;
    const int64_t nv = rows_k * c.hkv * dvh, no = rows_q * c.hq * dvh;
    Problem P;
    P.c = c;
    P.nq = nq;
    P.nk = nk;
    P.nv = nv;
    P.no = no;
    P.cq = cq;
    P.ck = ck;
    P.q.resize(nq);
    P.k.resize(nk);
    P.v.resize(nv);
    P.dout.resize(no);
    fill(P.q, c.bf16);
    fill(P.k, c.bf16);
    fill(P.v, c.bf16);
    fill(P.dout, c.bf16);
    if (c.sinks) {
        std::normal_distribution<float> nd(0.f, 2.f);
        P.sinks.resize(c.hq);
        for (float& s : P.sinks) s = nd(rng);
    }
    if (c.alibi) {  // FlashAttention-2's tests' draw: uniform [0, 0.3)
        std::uniform_real_distribution<float> ud(0.f, 0.3f);
        P.slopes.resize(size_t(c.alibi == 2 ? B : 1) * c.hq);
        for (float& s : P.slopes) s = ud(rng);
    }
    const int dt = c.bf16 ? FA_DTYPE_BFLOAT16 : FA_DTYPE_FLOAT16;
    Dev q(nq * 2), k(nk * 2), v(nv * 2), o(no * 2), dO(no * 2), lse(nl * 4), dq(nq * 2), dk(nk * 2), dv(nv * 2);
    Dev cuq((B + 1) * 4), cuk((B + 1) * 4), sinks(c.hq * 4), dsinks(c.hq * 4), slopes(size_t(B) * c.hq * 4);
    if (c.sinks) CHECK(fa_memcpy(sinks.p, P.sinks.data(), c.hq * 4));
    if (c.alibi) CHECK(fa_memcpy(slopes.p, P.slopes.data(), P.slopes.size() * 4));
    CHECK(fa_memcpy(q.p, P.q.data(), nq * 2));
    CHECK(fa_memcpy(k.p, P.k.data(), nk * 2));
    CHECK(fa_memcpy(v.p, P.v.data(), nv * 2));
    CHECK(fa_memcpy(dO.p, P.dout.data(), no * 2));
    CHECK(fa_memcpy(cuq.p, cq.data(), (B + 1) * 4));
    CHECK(fa_memcpy(cuk.p, ck.data(), (B + 1) * 4));

    auto qshape = [&](int h, int dim) -> std::vector<int64_t> {
        return varlen ? std::vector<int64_t>{rows_q, h, dim} : std::vector<int64_t>{B, c.sq, h, dim};
    };
    auto kshape = [&](int dim) -> std::vector<int64_t> {
        return varlen ? std::vector<int64_t>{rows_k, c.hkv, dim} : std::vector<int64_t>{B, c.sk, c.hkv, dim};
    };
    auto lshape = [&]() -> std::vector<int64_t> {
        return varlen ? std::vector<int64_t>{c.hq, rows_q} : std::vector<int64_t>{B, c.hq, c.sq};
    };
    fa_forward_params_t fp;
    CHECK(fa_forward_params_init(&fp, sizeof fp));
    fp.q = tensor(q.p, dt, qshape(c.hq, c.d));
    fp.k = tensor(k.p, dt, kshape(c.d));
    fp.v = tensor(v.p, dt, kshape(dvh));
    fp.out = tensor(o.p, dt, qshape(c.hq, dvh));
    fp.lse = tensor(lse.p, FA_DTYPE_FLOAT32, lshape());
    fp.causal = c.causal;
    fp.causal_alignment = c.top_left ? FA_CAUSAL_TOP_LEFT : FA_CAUSAL_BOTTOM_RIGHT;
    fp.window_left = c.wl;
    fp.window_right = c.wr;
    fp.softcap = c.softcap;
    fp.softmax_scale = c.scale;
    if (c.sinks) fp.sinks = tensor(sinks.p, FA_DTYPE_FLOAT32, {c.hq});
    if (c.alibi == 1) fp.alibi_slopes = tensor(slopes.p, FA_DTYPE_FLOAT32, {c.hq});
    if (c.alibi == 2) fp.alibi_slopes = tensor(slopes.p, FA_DTYPE_FLOAT32, {B, c.hq});
    CHECK(fa_memset_async(lse.p, 0xFF, nl * 4, nullptr));  // NaN poison
    if (varlen) {
        fp.cu_seqlens_q = static_cast<int32_t*>(cuq.p);
        fp.cu_seqlens_k = static_cast<int32_t*>(cuk.p);
        fp.varlen_batch = B;
        fp.max_seqlen_q = *std::max_element(c.lq.begin(), c.lq.end());
        fp.max_seqlen_k = *std::max_element(c.lk.begin(), c.lk.end());
    }
    const fa_status_t fwd = fa_forward(ctx, &fp, nullptr);
    if (fwd == FA_STATUS_UNSUPPORTED) {  // a head dim this build leaves out (FA_HEAD_DIMS)
        std::printf("SKIP %-70s  %s\n", describe(c).c_str(), fa_last_error_message());
        return true;
    }
    CHECK(fwd);

    fa_backward_params_t bp;
    CHECK(fa_backward_params_init(&bp, sizeof bp));
    bp.q = fp.q;
    bp.k = fp.k;
    bp.v = fp.v;
    bp.out = fp.out;
    bp.lse = fp.lse;
    bp.dout = tensor(dO.p, dt, qshape(c.hq, dvh));
    bp.dq = tensor(dq.p, dt, qshape(c.hq, c.d));
    bp.dk = tensor(dk.p, dt, kshape(c.d));
    bp.dv = tensor(dv.p, dt, kshape(dvh));
    bp.causal = fp.causal;
    bp.causal_alignment = fp.causal_alignment;
    bp.window_left = c.wl;
    bp.window_right = c.wr;
    bp.softcap = c.softcap;
    bp.softmax_scale = c.scale;
    bp.deterministic = deterministic;
    bp.kernel_path = g_path;
    bp.cu_seqlens_q = fp.cu_seqlens_q;
    bp.cu_seqlens_k = fp.cu_seqlens_k;
    bp.varlen_batch = fp.varlen_batch;
    bp.max_seqlen_q = fp.max_seqlen_q;
    bp.max_seqlen_k = fp.max_seqlen_k;
    bp.alibi_slopes = fp.alibi_slopes;
    if (c.sinks) {
        bp.sinks = fp.sinks;
        bp.dsinks = tensor(dsinks.p, FA_DTYPE_FLOAT32, {c.hq});
    }

    std::vector<uint16_t> gq(nq), gk(nk), gv(nv), gq2(nq), gk2(nk), gv2(nv);
    std::vector<float> gs(c.hq), gs2(c.hq), lse_host(nl);
    CHECK(fa_memcpy(lse_host.data(), lse.p, nl * 4));
    for (int run = 0; run < (deterministic ? 2 : 1); ++run) {
        CHECK(fa_memset_async(dq.p, 0xFF, nq * 2, nullptr));  // NaN poison
        CHECK(fa_memset_async(dk.p, 0xFF, nk * 2, nullptr));
        CHECK(fa_memset_async(dv.p, 0xFF, nv * 2, nullptr));
        CHECK(fa_memset_async(dsinks.p, 0xFF, c.hq * 4, nullptr));
        CHECK(fa_backward(ctx, &bp, nullptr));
        CHECK(fa_device_synchronize(0));
        CHECK(fa_memcpy(run == 0 ? gq.data() : gq2.data(), dq.p, nq * 2));
        CHECK(fa_memcpy(run == 0 ? gk.data() : gk2.data(), dk.p, nk * 2));
        CHECK(fa_memcpy(run == 0 ? gv.data() : gv2.data(), dv.p, nv * 2));
        CHECK(fa_memcpy(run == 0 ? gs.data() : gs2.data(), dsinks.p, c.hq * 4));
    }
    std::vector<double> rq, rk, rv, rs, rs_abs, rl;
    std::vector<char> empty;
    std::vector<uint16_t> o_host(no);
    CHECK(fa_memcpy(o_host.data(), o.p, no * 2));  // the forward's stored output, which the backward's D is read from
    ref_case(P, o_host, rq, rk, rv, rs, rs_abs, rl, empty);
    bool nan = false;
    const double eq = rel_l2(gq, rq, c.bf16, &nan), ek = rel_l2(gk, rk, c.bf16, &nan), ev = rel_l2(gv, rv, c.bf16, &nan);
    const double tol = c.bf16 ? 1e-2 : 2e-3;
    bool ok = !nan && eq < tol && ek < tol && ev < tol;
    // Sinks: dsinks by the gradients' rule; every lse within 1e-4 * max(1, |ref|), and exactly the sink on rows that
    // see no key (the kernels write the sink itself there).
    double es = 0.0, worst_lse = 0.0;
    int64_t lse_bad = -1;
    if (c.sinks) {
        // dsinks[h] = -sum_i t_i, t_i = e^(sigma - LSE_i) * D_i, D_i = rowsum(dO * O): a sum of mixed-sign terms, so an
        // error relative to |dsinks| is ill-conditioned (the H200 run: 2.11e-2 on sq=300 sk=177 top-left bf16, with
        // dq/dk/dv at 2.4e-3, from the bf16 rounding of the stored O that D is read from, as in FlashAttention 2/3/4).
        // Two checks instead:
        //  1. the kernels' reduction: dsinks[h] against the float64 sum of the terms formed from the same stored O (the
        //     bf16/fp16 output of the forward) and stored fp32 LSE the kernels read, within the float32 bound
        //     u * sum_i e^(sigma - LSE_i) * sum_e |dO_e O_e| * (d + n + |sigma - LSE_i| + 4), u = 2^-24 (d products
        //     summed per row, expf within 2 ulp of an argument rounded with error u * |sigma - LSE|, n rows added): a
        //     sign error, a lost, doubled or misplaced row, another head's sink or an LSE in the wrong units fails it;
        //  2. end to end against the float64 reference, the error normalised by sum_i |t_i| (the sum's condition) under
        //     the gradients' tolerance: each term's error is then at most the relative error of its D, which the
        //     stored O's rounding sets (the same order as dq/dk/dv's), so the bound is the gradients' own.
        // es reports the worse of the two ratios (error / allowed), so es < 1 passes.
        std::vector<double> sum_stored(c.hq, 0.0), bound(c.hq, 0.0), cond(c.hq, 0.0);
        const int Bn = varlen ? 1 : B;
        const int64_t rows = varlen ? rows_q : c.sq;
        for (int b = 0; b < Bn; ++b) {
            for (int h = 0; h < c.hq; ++h) {
                const double sigma = P.sinks[h];
                for (int64_t i = 0; i < rows; ++i) {
                    const int64_t row = ((int64_t(b) * rows + i) * c.hq + h) * dvh;  // of dO and O
                    const size_t lat = (size_t(b) * c.hq + h) * rows + i;  // [b, hq, sq] or [hq, total_q]
                    double dot = 0, adot = 0;
                    for (int e = 0; e < dvh; ++e) {
                        const double g = from_half_bits(P.dout[row + e], c.bf16);
                        const double pr = g * from_half_bits(o_host[row + e], c.bf16);
                        dot += pr;
                        adot += std::fabs(pr);
                    }
                    if (adot == 0) continue;  // a row that sees no key: O = 0
                    const double arg = sigma - double(lse_host[lat]);
                    const double w = std::exp(arg);
                    sum_stored[h] -= w * dot;
                    bound[h] += std::ldexp(1.0, -24) * w * adot * (dvh + double(Bn) * rows + std::fabs(arg) + 4);
                }
            }
        }
        cond = rs_abs;  // sum_i |t_i| of the float64 reference (ref_case)
        double worst = 0.0;
        for (int h = 0; h < c.hq; ++h) {
            if (std::isnan(gs[h])) nan = true;
            const double r1 = std::fabs(gs[h] - sum_stored[h]) / std::max(bound[h], 1e-300);
            const double r2 = std::fabs(gs[h] - rs[h]) / std::max(tol * cond[h], 1e-300);
            worst = std::max(worst, std::max(r1, r2));
            if (!(r1 <= 1.0) || !(r2 <= 1.0)) {
                std::printf("  dsinks[%d] = %.9g: stored-O sum %.9g (|diff| %.2e, bound %.2e), float64 %.9g (|diff| %.2e, "
                            "tol x sum|t| %.2e)\n",
                            h, gs[h], sum_stored[h], std::fabs(gs[h] - sum_stored[h]), bound[h], rs[h],
                            std::fabs(gs[h] - rs[h]), tol * cond[h]);
            }
        }
        es = std::isfinite(worst) ? worst : INFINITY;
        ok = ok && !nan && es <= 1.0;
    }
    if (c.sinks || c.alibi) {  // the forward's lse (ALiBi: FlashAttention-2's causal form shifts it)
        for (size_t r = 0; r < rl.size(); ++r) {
            const double want = rl[r], got = lse_host[r];
            const double d = std::fabs(got - want) / std::max(1.0, std::fabs(want));
            const bool bad = empty[r] ? got != static_cast<float>(want) : !(d <= 1e-4);  // NaN fails too
            if (bad && lse_bad < 0) lse_bad = static_cast<int64_t>(r);
            worst_lse = std::max(worst_lse, std::isfinite(d) ? d : INFINITY);
        }
        ok = ok && lse_bad < 0;
    }
    bool same = true;
    if (deterministic) {
        same = std::memcmp(gq.data(), gq2.data(), nq * 2) == 0 && std::memcmp(gk.data(), gk2.data(), nk * 2) == 0 &&
               std::memcmp(gv.data(), gv2.data(), nv * 2) == 0 && std::memcmp(gs.data(), gs2.data(), c.hq * 4) == 0;
        ok = ok && same;
    }
    std::printf("%s %-70s%s  rel-L2 dq %.2e dk %.2e dv %.2e%s%s", ok ? "PASS" : "FAIL", describe(c).c_str(),
                deterministic ? " det" : "", eq, ek, ev, nan ? " NaN!" : "", deterministic ? (same ? " bitwise-same" : " DIFFERS") : "");
    if (c.sinks) {
        std::printf("  dsinks err/allowed %.2f, lse worst %.1e%s", es, worst_lse,
                    lse_bad >= 0 ? (" (lse[" + std::to_string(lse_bad) + "] wrong)").c_str() : "");
    } else if (c.alibi) {
        std::printf("  lse worst %.1e%s", worst_lse,
                    lse_bad >= 0 ? (" (lse[" + std::to_string(lse_bad) + "] wrong)").c_str() : "");
    }
    std::printf("\n");
    std::fflush(stdout);
    return ok;
}

static double median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Median backward time in ms of the TARGETS shape (bf16), deterministic or not.
static double time_bwd(fa_context_t ctx, int b, int hq, int hkv, int s, int d, bool causal, bool det) {
    const int64_t nq = int64_t(b) * s * hq * d, nk = int64_t(b) * s * hkv * d, nl = int64_t(b) * hq * s;
    Dev q(nq * 2), k(nk * 2), v(nk * 2), o(nq * 2), dO(nq * 2), lse(nl * 4), dq(nq * 2), dk(nk * 2), dv(nk * 2);
    std::vector<uint16_t> h(std::max(nq, nk));
    fill(h, true);
    for (Dev* t : {&q, &o, &dO}) CHECK(fa_memcpy(t->p, h.data(), nq * 2));
    for (Dev* t : {&k, &v}) CHECK(fa_memcpy(t->p, h.data(), nk * 2));
    const int dt = FA_DTYPE_BFLOAT16;
    fa_forward_params_t fp;
    CHECK(fa_forward_params_init(&fp, sizeof fp));
    fp.q = tensor(q.p, dt, {b, s, hq, d});
    fp.k = tensor(k.p, dt, {b, s, hkv, d});
    fp.v = tensor(v.p, dt, {b, s, hkv, d});
    fp.out = tensor(o.p, dt, {b, s, hq, d});
    fp.lse = tensor(lse.p, FA_DTYPE_FLOAT32, {b, hq, s});
    fp.causal = causal;
    CHECK(fa_forward(ctx, &fp, nullptr));
    fa_backward_params_t bp;
    CHECK(fa_backward_params_init(&bp, sizeof bp));
    bp.q = fp.q;
    bp.k = fp.k;
    bp.v = fp.v;
    bp.out = fp.out;
    bp.lse = fp.lse;
    bp.dout = tensor(dO.p, dt, {b, s, hq, d});
    bp.dq = tensor(dq.p, dt, {b, s, hq, d});
    bp.dk = tensor(dk.p, dt, {b, s, hkv, d});
    bp.dv = tensor(dv.p, dt, {b, s, hkv, d});
    bp.causal = causal;
    bp.deterministic = det;
    bp.kernel_path = g_path;
    size_t ws_bytes = 0;
    CHECK(fa_backward_workspace_size(ctx, &bp, &ws_bytes));
    Dev ws(ws_bytes);
    bp.workspace = ws.p;
    bp.workspace_size = ws_bytes;
    void *e0, *e1;
    CHECK(fa_event_create(0, &e0));
    CHECK(fa_event_create(0, &e1));
    for (int i = 0; i < 5; ++i) CHECK(fa_backward(ctx, &bp, nullptr));
    std::vector<float> t;
    for (int i = 0; i < 30; ++i) {
        CHECK(fa_event_record(e0, nullptr));
        CHECK(fa_backward(ctx, &bp, nullptr));
        CHECK(fa_event_record(e1, nullptr));
        CHECK(fa_event_synchronize(e1));
        float ms;
        CHECK(fa_event_elapsed_ms(e0, e1, &ms));
        t.push_back(ms);
    }
    fa_event_destroy(e0);
    fa_event_destroy(e1);
    return median(t);
}

int main(int argc, char** argv) {
    bool check = true, timing = true;
    std::vector<int> dims = {64, 128, 256};
    std::vector<int> paths = {FA_PATH_AUTO};
    const char* path_names[] = {"auto", "sm80", "sm90"};
    uint64_t seed = std::random_device{}();
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    }
    rng.seed(seed);
    std::printf("# seed %llu (--seed to repeat)\n", static_cast<unsigned long long>(seed));
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--check-only")) timing = false;
        else if (!std::strcmp(argv[i], "--time-only")) check = false;
        else if (!std::strcmp(argv[i], "--paths") && i + 1 < argc) {
            paths.clear();
            for (char* t = std::strtok(argv[++i], ","); t; t = std::strtok(nullptr, ","))
                paths.push_back(!std::strcmp(t, "sm80") ? FA_PATH_SM80 : !std::strcmp(t, "sm90") ? FA_PATH_SM90 : FA_PATH_AUTO);
        } else if (!std::strcmp(argv[i], "--d") && i + 1 < argc) {
            dims.clear();
            for (char* t = std::strtok(argv[++i], ","); t; t = std::strtok(nullptr, ",")) dims.push_back(std::atoi(t));
        }
    }
    fa_context_t ctx;
    const fa_status_t created = fa_context_create(0, &ctx);
    if (created == FA_STATUS_NO_DEVICE) {
        std::printf("skipped: %s\n", fa_last_error_message());
        return 77;
    }
    CHECK(created);
    int failed = 0, total = 0;
    for (const int path : paths) {
    g_path = path;
    std::printf("# kernel_path %s\n", path_names[path]);
    // Both paths serve every case here (the sm90 path runs a head dim between its kernels on the next one up).
    if (check) {
        std::vector<Case> cases;
        for (int d : {32, 64, 96, 128, 192, 256}) {
            Case c{2, 4, 2, 131, 257, d};
            cases.push_back(c);
            c.causal = true;
            cases.push_back(c);
        }
        {
            Case c{1, 2, 2, 300, 177, 128};
            c.causal = true;
            cases.push_back(c);  // sq > sk, bottom-right: early rows see nothing
            c.top_left = true;
            cases.push_back(c);
        }
        {
            Case c{2, 8, 1, 97, 203, 64};  // MQA
            cases.push_back(c);
            Case w{1, 4, 2, 250, 250, 128};
            w.wl = 37;
            w.wr = 11;
            cases.push_back(w);
            Case s{1, 4, 4, 190, 220, 128};
            s.softcap = 30.f;
            s.scale = 0.2f;
            cases.push_back(s);
            s.causal = true;
            s.d = 80;
            cases.push_back(s);
            Case f16{2, 4, 2, 129, 200, 128};
            f16.bf16 = false;
            f16.causal = true;
            cases.push_back(f16);
            Case vl{0, 4, 2, 0, 0, 64};
            vl.lq = {17, 0, 130, 64};
            vl.lk = {40, 33, 130, 1};
            vl.causal = true;
            cases.push_back(vl);
            vl.d = 256;
            vl.causal = false;
            cases.push_back(vl);
            vl.d = 192;  // the 192 kernel: its two-product dQ halves, with the partial blocks' row-major adds
            vl.causal = true;
            cases.push_back(vl);
            Case s192{1, 4, 2, 190, 220, 160};  // 160 runs the 192 kernel, columns past it zero-filled
            s192.softcap = 30.f;
            s192.wl = 40;
            s192.wr = 7;
            cases.push_back(s192);
        }
        // Learnable sinks (C ABI 0.7): the same kinds of case with one fp32 sink per query head; dsinks and the
        // forward's lse checked too (rows that see no key: lse exactly the sink).
        const size_t plain_cases = cases.size();
        for (size_t i : {size_t(3), size_t(12), size_t(13), size_t(14), size_t(15), size_t(16), size_t(18), size_t(19)}) {
            if (i >= plain_cases) continue;
            Case c = cases[i];
            c.sinks = true;
            cases.push_back(c);
        }
        // ALiBi (C ABI 0.8): the same kinds of case with slopes, [hq] and [b, hq] alternately (FA2's causal form on
        // the causal ones without a left window); one with sinks too. The forward's lse is checked as well.
        const size_t sink_cases = cases.size();
        int form = 1;
        for (size_t i : {size_t(3), size_t(12), size_t(13), size_t(14), size_t(15), size_t(16), size_t(18), size_t(19)}) {
            if (i >= plain_cases) continue;
            Case c = cases[i];
            c.alibi = form;
            form = 3 - form;
            cases.push_back(c);
        }
        if (sink_cases > plain_cases) {
            Case c = cases[plain_cases];
            c.alibi = 2;
            cases.push_back(c);
        }
        // The V head dim pair (192, 128) (C ABI 0.10): the sm80 pair kernel, or on compute capability 9.0 in a build
        // with sm_90a code the sm90 one (AUTO and sm90): GQA and MQA, both causal alignments with sq > sk and sq < sk
        // (rows that see no key; partial last query and key blocks), window + softcap, varlen with empty sequences and
        // partial blocks, ALiBi and sinks. Skipped (fa_forward UNSUPPORTED) in a build without head dim 192.
        const size_t pair_cases = cases.size();
        {
            Case c{2, 8, 2, 131, 257, 192};
            c.dv = 128;
            c.causal = true;
            cases.push_back(c);
            Case t{1, 4, 1, 300, 177, 192};
            t.dv = 128;
            t.causal = true;
            t.top_left = true;
            cases.push_back(t);
            t.top_left = false;  // bottom-right: rows 0..122 see no key
            t.bf16 = false;
            cases.push_back(t);
            Case w{1, 4, 4, 190, 220, 192};
            w.dv = 128;
            w.softcap = 30.f;
            w.wl = 40;
            w.wr = 7;
            cases.push_back(w);
            Case vl{0, 4, 2, 0, 0, 192};
            vl.dv = 128;
            vl.lq = {17, 0, 130, 64};
            vl.lk = {40, 33, 130, 1};
            vl.causal = true;
            cases.push_back(vl);
            vl.causal = false;
            vl.alibi = 2;
            vl.sinks = true;
            cases.push_back(vl);
        }
        for (const Case& c : cases) {
            ++total;
            if (!check_case(ctx, c, false)) ++failed;
        }
        // Deterministic twice, bit for bit: among them d 192 causal (index 9) and the varlen 192 case (plain_cases - 2).
        for (size_t i : {size_t(1), size_t(3), size_t(7), size_t(9), size_t(13), plain_cases - 2, plain_cases,
                         plain_cases + 1, sink_cases, sink_cases + 1, pair_cases, pair_cases + 4}) {
            if (i >= cases.size()) continue;
            ++total;
            if (!check_case(ctx, cases[i], true)) ++failed;
        }
    }
    if (timing) {
        std::printf("%-34s %9s %9s %9s %9s %7s\n", "shape (bf16)", "ms", "TFLOP/s", "det ms", "det TF/s", "det/x");
        for (int d : dims) {
            for (int causal : {0, 1}) {
                for (int s : {1024, 4096, 16384}) {
                    const int b = 16384 / s, h = 2048 / d;
                    const double ms = time_bwd(ctx, b, h, h, s, d, causal, false);
                    const double msd = time_bwd(ctx, b, h, h, s, d, causal, true);
                    double flops = 2.5 * 4.0 * b * h * double(s) * s * d / (causal ? 2 : 1);
                    std::printf("d=%3d causal=%d S=%5d b=%2d h=%2d    %9.3f %9.1f %9.3f %9.1f %7.2f\n", d, causal, s, b, h, ms,
                                flops / ms / 1e9, msd, flops / msd / 1e9, msd / ms);
                    std::fflush(stdout);
                }
            }
        }
        const double ms = time_bwd(ctx, 4, 32, 8, 4096, 128, true, false);
        const double msd = time_bwd(ctx, 4, 32, 8, 4096, 128, true, true);
        const double flops = 2.5 * 4.0 * 4 * 32 * 4096.0 * 4096 * 128 / 2;
        std::printf("GQA 32/8 d=128 causal S=4096 b=4    %9.3f %9.1f %9.3f %9.1f %7.2f\n", ms, flops / ms / 1e9, msd,
                    flops / msd / 1e9, msd / ms);
    }
    }
    fa_context_destroy(ctx);
    if (check) std::printf("%d of %d checks failed\n", failed, total);
    return failed == 0 ? 0 : 1;
}
