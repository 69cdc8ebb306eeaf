// The per-row mask limits (native/kernels/common/mask.cuh key_limits, the sm90 forward's masked key blocks)
// against key_hidden, checked on the host (no GPU needed): for random sequence lengths, windows as the host passes them
// (validate_attention.cpp: causal folded into window_right, a side at least max(sq, sk) of the call made unbounded, the
// call's maximum above this sequence's under varlen), both alignments, every row of the sequence, the key offsets
// col0 = n BN + 2 t4 of a thread (every even start up to past sk) and k in [0, 128): key col0 + k is hidden exactly
// when k >= hi or (local) k < lo. Prints a line per failure (the first 10) and a summary; exit code 1 on any failure.
#include <cstdint>
#include <cstdio>

#include "common/mask.cuh"

namespace {

struct Case {
    int sq, sk, window_left, window_right, bottom_right, call_max;
};

long long g_checks = 0, g_failures = 0;

// splitmix64: a fixed seed, so a failure replays (<random> does not compile under every nvcc/libstdc++ pairing here).
uint64_t g_state = 20261204u;
uint32_t next_u32() {
    uint64_t z = (g_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
}

template <bool kLocal>
void check_case(const Case& c) {
    fa::FwdParams p{};
    p.window_left = c.window_left;
    p.window_right = c.window_right;
    p.bottom_right = c.bottom_right;
    fa::SeqInfo seq{};
    seq.sq = c.sq;
    seq.sk = c.sk;
    const fa::MaskBounds m = fa::mask_bounds<kLocal>(p, seq);
    for (int row = 0; row < c.sq; ++row) {
        for (int col0 = 0; col0 <= c.sk + 2; col0 += 2) {
            const fa::KeyLimits l = fa::key_limits<kLocal>(m, row, col0, c.sk);
            for (int k = 0; k < 128; ++k) {
                const bool want = fa::key_hidden<kLocal>(m, col0 + k, row, c.sk);
                const bool got = k >= l.hi || (kLocal && k < l.lo);
                ++g_checks;
                if (want != got && ++g_failures <= 10) {
                    std::printf("FAIL local=%d sq=%d sk=%d window=(%d, %d) bottom_right=%d row=%d key=%d: key_hidden %d, "
                                "limits [%d, %d) say %d\n",
                                kLocal ? 1 : 0, c.sq, c.sk, c.window_left, c.window_right, c.bottom_right, row, col0 + k,
                                want ? 1 : 0, l.lo, l.hi, got ? 1 : 0);
                }
            }
        }
    }
}

// A window side as the host passes it: -1 (unbounded), or a value below the call's max(sq, sk).
int host_window(int w, int call_max) { return w < 0 || w >= call_max ? -1 : w; }

}  // namespace

int main() {
    const int picks[] = {-1, 0, 1, 2, 7, 31, 64, 127, 128, 200, 1000, 0x7fffffff};
    int cases = 0;
    for (int i = 0; i < 400; ++i) {
        Case c;
        c.sq = 1 + static_cast<int>(next_u32() % 160);
        c.sk = 1 + static_cast<int>(next_u32() % 160);
        c.call_max = (c.sq > c.sk ? c.sq : c.sk) + static_cast<int>(next_u32() % 3) * static_cast<int>(next_u32() % 500);
        const bool causal = next_u32() % 3 == 0;
        c.window_left = host_window(picks[next_u32() % 12], c.call_max);
        c.window_right = causal ? 0 : host_window(picks[next_u32() % 12], c.call_max);
        c.bottom_right = static_cast<int>(next_u32() % 2);
        check_case<true>(c);
        check_case<false>(c);
        ++cases;
    }
    std::printf("mask_limits_test: %d cases, %lld checks, %lld failed\n", cases, g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
