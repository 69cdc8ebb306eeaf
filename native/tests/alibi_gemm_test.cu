// ALiBi through the sm90 forward's Q K^T (native/kernels/sm90/alibi_gemm.cuh), checked on the host (no GPU needed):
//  1. the extra k-step's product: this thread-by-thread A fragment (alibi_gemm_frag in wgmma's m64nNk16 A layout,
//     sigma +1, -1 and 0) times the K' panel (alibi_kp_row's bytes read as the no-swizzle K-major descriptor with
//     LBO = SBO = 128 reads them, PTX ISA's canonical layout), in float64: sigma (a1 + a2 + a3) (jj - BN / 2) for
//     every row and key, the parts within 2^-24 |a| of a (fp16: or 2^-25 where they underflow), bf16 and fp16, BN 64,
//     128 and 176;
//  2. the block signs: alibi_gemm_sign against every (row, key) of random blocks and masks (one side of the diagonal
//     exactly when it says so, never 0 where the block is one-sided), and the per-tile bounds (alibi_gemm_bounds)
//     against alibi_gemm_sign for every block index;
//  3. the softmax bookkeeping of the kernel's two paths, emulated in fp32 as the kernel does it (the per-element bias;
//     the k-step's S' = S + sigma a (jj - BN / 2), one rounding, and the row constant in the block's max and the
//     exponent), key block by key block from the last, both against a float64 reference: the k-step path's output
//     within the per-element path's error (up to a flip of P's 16-bit rounding) and its lse within that path's error
//     plus 4 roundings of slope * BN / 2 (sm90/alibi_gemm.cuh's bound), over causal and distance forms, windows,
//     both alignments, sq != sk, slopes 0 to 8.
// Prints a line per failure and a summary; exit code 1 on any failure.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

#include "sm90/alibi_gemm.cuh"

namespace {

using fa::MaskBounds;
using fa::kUnbounded;
using fa::sm90::AlibiGemmBounds;
using fa::sm90::AlibiParts;

int g_failed = 0, g_checks = 0;

// A small deterministic generator (<random> of the distribution's libstdc++ does not pass nvcc 11.8's front end).
struct Rng {
    uint64_t state;
    uint64_t next() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        return state;
    }
    int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
    double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
    double normal() {
        const double u = uniform() + 1e-300, v = uniform();
        return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
    }
};

double bits_to_double(bool bf16, uint32_t bits) {
    if (bf16) {
        uint32_t f = bits << 16;
        float x;
        std::memcpy(&x, &f, 4);
        return x;
    }
    __half_raw r;
    r.x = static_cast<unsigned short>(bits);
    return __half2float(__half(r));
}

// ---- 1. the k-step's product ----------------------------------------------------------------------------------

template <typename T, int BN>
void check_product(float a) {
    constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
    // K' as bytes, and B[n][k] read the way the descriptor (no swizzle, K-major, LBO = SBO = 128) reads them.
    std::vector<unsigned char> panel(16 * (BN + 8));
    for (int r = 0; r < BN + 8; ++r) {
        const uint4 row = fa::sm90::alibi_kp_row<T, BN>(r);
        std::memcpy(&panel[16 * r], &row, 16);
    }
    constexpr int kLbo = 128, kSbo = 128;
    const auto b_at = [&](int n, int k) {
        const int off = 16 * (n % 8) + kSbo * (n / 8) + kLbo * (k / 8) + 2 * (k % 8);
        uint16_t bits;
        std::memcpy(&bits, &panel[off], 2);
        return bits_to_double(kBf16, bits);
    };
    const AlibiParts parts = fa::sm90::alibi_split<T>(a);
    const double a_eff = static_cast<double>(parts.a1) + parts.a2 + parts.a3;
    // |a1 + a2 + a3 - a|: 2^-24 |a| (fp16 parts that underflow: 2^-25 absolute each)
    const double split_err = std::fabs(a_eff - a), split_bound = std::ldexp(std::fabs(a), -24) + (kBf16 ? 0.0 : 3 * std::ldexp(1.0, -25));
    ++g_checks;
    if (!(split_err <= split_bound)) {
        ++g_failed;
        std::printf("FAIL split %s a=%g: parts %g + %g + %g off by %.3g (bound %.3g)\n", kBf16 ? "bf16" : "fp16", a,
                    parts.a1, parts.a2, parts.a3, split_err, split_bound);
    }
    for (int sigma = -1; sigma <= 1; ++sigma) {
        // A[64][16] from each thread's registers {f, f, 0, 0} (mma.sync's m16n8k16 A layout per warp's 16 rows).
        double A[64][16] = {};
        for (int tid = 0; tid < 128; ++tid) {
            const int warp = tid / 32, lane = tid % 32, t4 = lane % 4;
            uint32_t f = fa::sm90::alibi_gemm_frag<T>(a, t4);
            f = sigma > 0 ? f : sigma < 0 ? f ^ 0x80008000u : 0u;  // as fwd_kernel.cuh's alibi_block
            const uint32_t reg[4] = {f, f, 0u, 0u};
            for (int x = 0; x < 4; ++x) {
                const int row = 16 * warp + lane / 4 + 8 * (x & 1), col = 2 * t4 + 8 * (x >> 1);
                A[row][col] = bits_to_double(kBf16, reg[x] & 0xffffu);
                A[row][col + 1] = bits_to_double(kBf16, reg[x] >> 16);
            }
        }
        int bad = 0;
        for (int i = 0; i < 64; ++i) {
            for (int n = 0; n < BN; ++n) {
                double d = 0.0;
                for (int k = 0; k < 16; ++k) d += A[i][k] * b_at(n, k);
                const double want = sigma * a_eff * (n - BN / 2);
                ++g_checks;
                if (d != want) {
                    ++g_failed;
                    if (++bad <= 3) {
                        std::printf("FAIL product %s BN %d a=%g sigma %d row %d key %d: %.9g, want %.9g\n",
                                    kBf16 ? "bf16" : "fp16", BN, a, sigma, i, n, d, want);
                    }
                }
            }
        }
    }
}

// ---- 2. the block signs ----------------------------------------------------------------------------------------

void check_signs(Rng& rng) {
    for (int it = 0; it < 100000; ++it) {
        const int off = rng.below(41) - 20;
        const int rows = 1 + rng.below(64), keys = 8 * (1 + rng.below(22));
        const int row_lo = rng.below(200), key0 = rng.below(300);
        MaskBounds m;
        m.has_right = rng.below(2) != 0;
        m.has_left = rng.below(2) != 0;
        m.right = m.has_right ? off + rng.below(40) - 5 : kUnbounded;
        m.left = m.has_left ? off - rng.below(40) + 5 : -kUnbounded;
        const bool causal = rng.below(8) == 0;
        bool any = false, all_le = true, all_ge = true;
        for (int i = row_lo; i < row_lo + rows; ++i) {
            for (int j = key0; j < key0 + keys; ++j) {
                const int d = j - i;
                if (d > m.right || d < m.left) continue;
                any = true;
                all_le = all_le && d <= off;
                all_ge = all_ge && d >= off;
            }
        }
        const int sg = fa::sm90::alibi_gemm_sign(causal, off, m, row_lo, rows, key0, keys);
        const bool ok = causal ? sg == 1 : sg == 1 ? all_le : sg == -1 ? all_ge : !(any && (all_le || all_ge));
        ++g_checks;
        if (!ok) {
            if (++g_failed <= 10) {
                std::printf("FAIL sign off %d rows [%d, +%d) keys [%d, +%d) right %d left %d causal %d: %d (one-sided: "
                            "<= %d, >= %d)\n", off, row_lo, rows, key0, keys, m.right, m.left, causal, sg, all_le, all_ge);
            }
        }
        for (int bn : {64, 128, 176}) {
            const AlibiGemmBounds b = fa::sm90::alibi_gemm_bounds(causal, off, m, row_lo, rows, bn);
            for (int n = -3; n < 12; ++n) {
                const int want = fa::sm90::alibi_gemm_sign(causal, off, m, row_lo, rows, n * bn, bn);
                const int got = n <= b.pos ? 1 : n >= b.neg ? -1 : 0;  // as fwd_kernel.cuh's alibi_block
                ++g_checks;
                if (got != want && ++g_failed <= 10) {
                    std::printf("FAIL bounds off %d rows [%d, +%d) BN %d block %d right %d left %d causal %d: %d, "
                                "alibi_gemm_sign %d\n", off, row_lo, rows, bn, n, m.right, m.left, causal, got, want);
                }
            }
        }
    }
}

// ---- 3. the softmax bookkeeping ----------------------------------------------------------------------------------

struct Case {
    int sq, sk, bn;
    bool causal, bottom_right, bf16;
    int wl, wr;  // the C ABI's window (-1: none); causal folds the right side to 0, as the host does
    float slope;
};

// One case, every row; returns 0 when the k-step path meets the bounds above.
int softmax_case(const Case& c, Rng& rng) {
    const int BM = 128, BN = c.bn;
    const float u = 0.125f;  // the softmax scale (no softcap)
    const int no_op = std::max(c.sq, c.sk);
    const int wl = c.wl >= no_op ? -1 : c.wl;
    const int wr = c.causal ? 0 : c.wr >= no_op ? -1 : c.wr;
    const bool column = wr == 0 && (c.wl < 0 || c.wl >= c.sk);  // the host's alibi_causal
    const int off = c.bottom_right ? c.sk - c.sq : 0;
    MaskBounds m;  // mask.cuh's mask_bounds<true>
    m.has_right = wr >= 0;
    m.has_left = wl >= 0;
    m.right = m.has_right ? off + wr : kUnbounded;
    m.left = m.has_left ? off - wl : -kUnbounded;
    const float a = c.slope / u;
    const float sl2 = static_cast<float>(u * 1.4426950408889634);
    const bool on = std::fabs(a) <= fa::sm90::kAlibiGemmMaxSlope;
    const AlibiParts parts = c.bf16 ? fa::sm90::alibi_split<__nv_bfloat16>(on ? a : 0.f)
                                    : fa::sm90::alibi_split<__half>(on ? a : 0.f);
    const auto round16 = [&](float x) {
        return c.bf16 ? fa::sm90::alibi_round<__nv_bfloat16>(x) : fa::sm90::alibi_round<__half>(x);
    };
    const int n_blocks = (c.sk + BN - 1) / BN;
    std::vector<float> S(c.sk), V(c.sk), s(BN);
    double worst_o[2] = {0, 0}, worst_l[2] = {0, 0};
    for (int row0 = 0; row0 < c.sq; row0 += BM) {
        const int rows = std::min(BM, c.sq - row0);
        int begin = 0, end = n_blocks;  // mask.cuh's key_block_range<true>
        if (m.has_right) {
            const int last_key = row0 + rows - 1 + m.right;
            end = last_key < 0 ? 0 : std::min(n_blocks, last_key / BN + 1);
        }
        if (m.has_left) begin = std::max(0, fa::sm90::alibi_floor_div(row0 + m.left, BN));
        for (int cw = 0; cw < 2; ++cw) {
            const AlibiGemmBounds b = on ? fa::sm90::alibi_gemm_bounds(column, off, m, row0 + 64 * cw, 64, BN)
                                         : AlibiGemmBounds{-(1 << 30), 1 << 30};
            for (int i = row0 + 64 * cw; i < std::min(row0 + 64 * cw + 64, c.sq); ++i) {
                for (int j = 0; j < c.sk; ++j) {
                    S[j] = static_cast<float>(3.0 * rng.normal());
                    V[j] = static_cast<float>(rng.normal());
                }
                // float64 reference (FEATURES.md section 2's bias, after the scale, the masks outside)
                double mx = -INFINITY, sum = 0.0, o = 0.0;
                std::vector<double> x(c.sk);
                std::vector<char> vis(c.sk);
                for (int j = 0; j < c.sk; ++j) {
                    const int d = j - i;
                    vis[j] = !(d > m.right || d < m.left);
                    x[j] = static_cast<double>(S[j]) * u +
                           (column ? static_cast<double>(c.slope) * j : -static_cast<double>(c.slope) * std::abs(i + off - j));
                    if (vis[j]) mx = std::max(mx, x[j]);
                }
                for (int j = 0; j < c.sk; ++j) {
                    if (!vis[j]) continue;
                    const double p = std::exp(x[j] - mx);
                    sum += p;
                    o += p * V[j];
                }
                const double ref_o = sum > 0 ? o / sum : 0.0, ref_lse = sum > 0 ? mx + std::log(sum) : INFINITY;
                for (int path = 0; path < 2; ++path) {  // 0: per element everywhere, 1: the k-step where one-sided
                    float row_max = -INFINITY, row_sum = 0.f, acc = 0.f;
                    for (int n = end - 1; n >= begin; --n) {
                        const bool plus = path == 1 && n <= b.pos, minus = path == 1 && !plus && n >= b.neg;
                        const int sigma = plus ? 1 : minus ? -1 : 0;
                        for (int jj = 0; jj < BN; ++jj) {
                            const int j = n * BN + jj;
                            float v = j < c.sk ? S[j] : 0.f;
                            if (sigma != 0) {  // the tensor core: exact products, one rounding of the sum
                                const double xx = jj - BN / 2;
                                v = static_cast<float>(v + sigma * (static_cast<double>(parts.a1) * xx + parts.a2 * xx + parts.a3 * xx));
                            } else {  // common/alibi.cuh's alibi_bias_from
                                const float rel = static_cast<float>(i + off - n * BN), k = static_cast<float>(jj);
                                v += column ? a * (static_cast<float>(n * BN) + k) : -a * std::fabs(rel - k);
                            }
                            const int d = j - i;
                            s[jj] = j >= c.sk || d > m.right || d < m.left ? -INFINITY : v;
                        }
                        // fwd_kernel.cuh's softmax: the row constant (alibi_c, e[r] of alibi_gemm_tile) in the max and sub
                        const float e = static_cast<float>(column ? -(BN / 2) : i + off - BN / 2);
                        const float sa = plus ? a : minus ? -a : 0.f;
                        const float row_c = path == 1 ? sa * (static_cast<float>(n * BN) - e) : 0.f;
                        float mxb = path == 1 ? -INFINITY : row_max;
                        for (int jj = 0; jj < BN; ++jj) mxb = std::fmax(mxb, s[jj]);
                        if (path == 1) mxb = std::fmax(row_max, mxb + row_c);
                        const float m_scaled = mxb == -INFINITY ? 0.f : mxb * sl2;
                        const float alpha = std::exp2(std::fma(row_max, sl2, -m_scaled));
                        row_max = mxb;
                        const float sub = path == 1 ? std::fma(-row_c, sl2, m_scaled) : m_scaled;
                        float sum_b = 0.f, o_b = 0.f;
                        for (int jj = 0; jj < BN; ++jj) {
                            const float p = std::exp2(std::fma(s[jj], sl2, -sub));
                            const int j = n * BN + jj;
                            sum_b += p;
                            o_b += round16(p) * (j < c.sk ? V[j] : 0.f);  // P V takes P in 16 bits
                        }
                        row_sum = row_sum * alpha + sum_b;
                        acc = acc * alpha + o_b;
                    }
                    const bool seen = row_sum > 0.f;
                    const double got_o = seen ? acc / row_sum : 0.0;
                    const double got_l = seen ? static_cast<double>(row_max * u + std::log(row_sum)) : INFINITY;
                    const double eo = std::fabs(got_o - ref_o);
                    const double el = std::isinf(ref_lse) ? (std::isinf(got_l) ? 0.0 : INFINITY)
                                                          : std::fabs(got_l - ref_lse) / std::max(1.0, std::fabs(ref_lse));
                    worst_o[path] = std::max(worst_o[path], eo == eo ? eo : INFINITY);
                    worst_l[path] = std::max(worst_l[path], el == el ? el : INFINITY);
                }
            }
        }
    }
    const double extra = 4 * std::ldexp(1.0, -24) * std::fabs(c.slope) * BN / 2;
    const double p_ulp = c.bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    const bool ok = worst_o[1] <= std::max(1.1 * worst_o[0], p_ulp) + 8 * extra && worst_l[1] <= worst_l[0] + extra + 1e-6;
    ++g_checks;
    if (!ok && ++g_failed <= 20) {
        std::printf("FAIL softmax sq %d sk %d BN %d causal %d window (%d, %d) %s slope %g %s: O error %.3g (per element "
                    "%.3g), lse %.3g (%.3g)\n", c.sq, c.sk, BN, c.causal, c.wl, c.wr,
                    c.bottom_right ? "bottom-right" : "top-left", c.slope, c.bf16 ? "bf16" : "fp16", worst_o[1],
                    worst_o[0], worst_l[1], worst_l[0]);
    }
    return ok ? 0 : 1;
}

}  // namespace

int main() {
    for (float a : {0.f, 1e-7f, 3e-5f, 0.031f, 0.56f, 2.4f, 8.f, 64.f, -3.7f, 1000.3f, 16000.f}) {
        check_product<__nv_bfloat16, 64>(a);
        check_product<__nv_bfloat16, 128>(a);
        check_product<__nv_bfloat16, 176>(a);
        check_product<__half, 64>(a);
        check_product<__half, 128>(a);
        check_product<__half, 176>(a);
    }
    Rng rng{0x9E3779B97F4A7C15ull};
    check_signs(rng);
    struct W {
        bool causal;
        int wl, wr;
    };
    const W windows[] = {{true, -1, -1}, {false, -1, -1}, {true, 20, -1}, {false, 64, 32}, {false, 0, 0},
                         {false, 300, 0}, {false, -1, 5}, {false, 3, -1}, {true, 5000, -1}};
    const int shapes[][2] = {{77, 150}, {150, 77}, {300, 300}, {1, 300}, {129, 129}};
    const float slopes[] = {0.f, 1e-4f, 0.07f, 0.3f, 1.f, 8.f, -0.5f};
    int n = 0, cases = 0, bad_cases = 0;
    for (int bn : {64, 128}) {
        for (const auto& sh : shapes) {
            for (const W& w : windows) {
                for (float slope : slopes) {
                    ++n;
                    // one case in three of the grid, alignments and dtypes taken in turn
                    if (n % 3 != 0) continue;
                    const Case c{sh[0], sh[1], bn, w.causal, (n / 3) % 2 == 0, (n / 6) % 2 == 0, w.wl, w.wr, slope};
                    ++cases;
                    bad_cases += softmax_case(c, rng);
                }
            }
        }
    }
    std::printf("softmax bookkeeping: %d cases, %d outside the bounds\n", cases, bad_cases);
    std::printf("alibi_gemm_test: %d checks, %d failed\n", g_checks, g_failed);
    return g_failed == 0 ? 0 : 1;
}
