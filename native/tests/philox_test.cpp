// Host-side test of native/kernels/common/philox.cuh (the groundwork of dropout, issue 14): the generator against
// published known-answer vectors, the element -> (lane, byte) mapping against FA2's loop over its accumulator
// fragment and its invariants, the quantised thresholds, and a digest of a fixed sweep of dropout bytes that the
// managed twin (managed/FlashAttention/Internal/Philox.cs, tests/FlashAttention.Tests/Cpu/PhiloxTests.cs) must
// reproduce. Needs no GPU; runs under ctest. `philox_test --print-digest` prints the sweep's digest (the constant
// kSweepDigest below and in PhiloxTests.cs came from it).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <tuple>
#include <vector>

#include "common/philox.cuh"

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const char* what) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        std::printf("FAIL %s\n", what);
    }
}

// Random123's known-answer vectors for philox4x32, rounds 7 and 10: D. E. Shaw Research, Random123,
// tests/kat_vectors (github.com/DEShawResearch/random123, commit 9545ff6). Each line there reads
// "philox4x32 R ctr0 ctr1 ctr2 ctr3 key0 key1   out0 out1 out2 out3".
struct Kat {
    int rounds;
    uint32_t ctr[4];
    uint32_t key[2];
    uint32_t out[4];
};
const Kat kKats[] = {
    {7, {0x00000000, 0x00000000, 0x00000000, 0x00000000}, {0x00000000, 0x00000000},
     {0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48}},
    {7, {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
     {0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662}},
    {7, {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
     {0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a}},
    {10, {0x00000000, 0x00000000, 0x00000000, 0x00000000}, {0x00000000, 0x00000000},
     {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {10, {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {10, {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

void test_kat() {
    for (const Kat& k : kKats) {
        const fa::Philox4x32Out v =
            k.rounds == 7 ? fa::philox4x32<7>(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1])
                          : fa::philox4x32<10>(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1]);
        bool ok = true;
        for (int i = 0; i < 4; ++i) ok = ok && v.w[i] == k.out[i];
        if (!ok)
            std::printf("  philox4x32-%d ctr %08x...: got %08x %08x %08x %08x want %08x %08x %08x %08x\n", k.rounds,
                        k.ctr[0], v.w[0], v.w[1], v.w[2], v.w[3], k.out[0], k.out[1], k.out[2], k.out[3]);
        check(ok, "Random123 known-answer vector");
    }
}

// FA2's own walk, written from its code rather than from the closed forms: lane `lane` of the warp holds the
// m16n8k16 accumulator values a = 0..3 of each 8-column MMA tile (row lane/4 + 8*(a/2), column 2*(lane%4) + a%2);
// convert_layout_acc_dropout regroups them as ((4, 2), MMA_M, MMA_N/2), i = a + 4*t with t the tile's parity, and
// apply_dropout reads rnd_8[j*8 + i] for tensor(i, m, n*2 + j), one Philox call per (m, n) with rowcol.y
// advancing by one per 32 columns. So within a 16x32 tile, tile nt = 2*j + t and the byte is 8*j + 4*t + a.
struct Slot {
    int lane, byte;
};
void fa2_walk(std::vector<Slot>& by_element /* [16*32], indexed r*32 + c */) {
    by_element.assign(16 * 32, Slot{-1, -1});
    for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < 2; ++j)
            for (int t = 0; t < 2; ++t)
                for (int a = 0; a < 4; ++a) {
                    const int r = lane / 4 + 8 * (a / 2);
                    const int c = 8 * (2 * j + t) + 2 * (lane % 4) + a % 2;
                    Slot& s = by_element[r * 32 + c];
                    check(s.lane < 0, "FA2 walk: an element of the 16x32 tile is served twice");
                    s = Slot{lane, 8 * j + 4 * t + a};
                }
}

void test_mapping() {
    std::vector<Slot> walk;
    fa2_walk(walk);
    // The closed forms of FEATURES.md section 1 against FA2's walk, for every element of a 64x128 tile (4x4 tiles
    // of 16x32): same lane and byte as the walk gives the element's position within its 16x32 tile.
    std::set<std::tuple<int, int, int, int>> used;  // (row tile, column tile, lane, byte)
    for (uint32_t r = 0; r < 64; ++r)
        for (uint32_t c = 0; c < 128; ++c) {
            const int lane = fa::dropout_lane(r, c), byte = fa::dropout_byte_index(r, c);
            const Slot& s = walk[(r % 16) * 32 + (c % 32)];
            check(lane == s.lane && byte == s.byte, "closed-form lane/byte = FA2's fragment walk");
            check(lane >= 0 && lane < 32 && byte >= 0 && byte < 16, "lane in [0,32), byte in [0,16)");
            used.insert(std::make_tuple(static_cast<int>(r / 16), static_cast<int>(c / 32), lane, byte));
        }
    // 8192 elements onto 8192 distinct (tile, lane, byte): every element gets exactly one, and each Philox call
    // (tile, lane) serves exactly 16 distinct elements.
    check(used.size() == 64u * 128u, "every element of a 64x128 tile gets its own (tile, lane, byte)");
    for (int tr = 0; tr < 4; ++tr)
        for (int tc = 0; tc < 4; ++tc)
            for (int lane = 0; lane < 32; ++lane) {
                int n = 0;
                for (int byte = 0; byte < 16; ++byte) n += used.count(std::make_tuple(tr, tc, lane, byte)) != 0;
                check(n == 16, "one Philox call per (lane, 16x32 tile) serves 16 distinct elements");
            }
    // Worked examples, by hand from the formulas: (r, c) -> (lane, byte).
    const struct {
        uint32_t r, c;
        int lane, byte;
    } ex[] = {
        {0, 0, 0, 0},    {0, 1, 0, 1},    {8, 0, 0, 2},    {8, 1, 0, 3},    {0, 8, 0, 4},
        {0, 16, 0, 8},   {0, 24, 0, 12},  {15, 31, 31, 15}, {1, 2, 5, 0},   {7, 6, 31, 0},
        {9, 27, 5, 15},  {16, 32, 0, 0},  {23, 45, 30, 5},  {110, 1001, 24, 7},
    };
    for (const auto& e : ex) {
        const bool ok = fa::dropout_lane(e.r, e.c) == e.lane && fa::dropout_byte_index(e.r, e.c) == e.byte;
        if (!ok)
            std::printf("  (r=%u, c=%u): lane %d byte %d, want lane %d byte %d\n", e.r, e.c, fa::dropout_lane(e.r, e.c),
                        fa::dropout_byte_index(e.r, e.c), e.lane, e.byte);
        check(ok, "worked (r, c) -> (lane, byte) example");
    }
}

// dropout_byte end to end: seed 0, offset 0, (b, h) = (0, 0), lane 0 of the first tile is counter (0, 0, 0, 0)
// under key (0, 0), Random123's first 7-round vector, so lane 0's 16 elements read its bytes 5f6fb709 0d893f64
// 4f121f81 4f730a48 little-endian.
void test_end_to_end() {
    const uint32_t w[4] = {0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48};
    int seen = 0;
    for (uint32_t r = 0; r < 16; ++r)
        for (uint32_t c = 0; c < 32; ++c) {
            if (fa::dropout_lane(r, c) != 0) continue;
            const int k = fa::dropout_byte_index(r, c);
            check(fa::dropout_byte(0, 0, 0, 0, 1, r, c) == ((w[k / 4] >> (8 * (k % 4))) & 0xFFu),
                  "lane 0 of tile (0, 0) under seed 0, offset 0 reads the 7-round zero vector");
            ++seen;
        }
    check(seen == 16, "lane 0 serves 16 elements of the first tile");
    check(fa::dropout_byte(0, 0, 0, 0, 1, 0, 0) == 0x09 && fa::dropout_byte(0, 0, 0, 0, 1, 0, 1) == 0xb7 &&
              fa::dropout_byte(0, 0, 0, 0, 1, 8, 0) == 0x6f && fa::dropout_byte(0, 0, 0, 0, 1, 8, 25) == 0x4f,
          "spelled-out bytes of the zero vector");
    // The counter's pieces: o = offset + (b*H + h)*32 + lane across the 32-bit carry, then (r/16, c/32).
    const uint64_t seed = 0x0123456789abcdefull, offset = 0xffffffffull - 40;
    const int b = 1, h = 2, H = 3;  // (b*H + h)*32 = 160
    const uint32_t r = 37, c = 75;  // lane 4*5 + 1 = 21, row tile 2, column tile 2
    const uint64_t o = offset + 160 + 21;
    check((o >> 32) == 1, "the test's offset crosses into the high counter word");
    const fa::Philox4x32Out v = fa::philox4x32<7>(static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32), 2, 2,
                                                  0x89abcdefu, 0x01234567u);
    check(fa::dropout_byte(seed, offset, b, h, H, r, c) == fa::philox_byte(v, fa::dropout_byte_index(r, c)),
          "dropout_byte = philox4x32<7>((lo, hi)(offset + (b*H+h)*32 + lane), r/16, c/32; (lo, hi)(seed))");
    // Each (b, h) owns 32 consecutive offsets, in the order (b, h): h + 1 continues after lane 31 of h, and
    // batch b + 1's head 0 after batch b's last head, so a call consumes B*H*32 offsets without overlap.
    check(fa::dropout_lane_offset(10, 1, 2, 4, 31) + 1 == fa::dropout_lane_offset(10, 1, 3, 4, 0) &&
              fa::dropout_lane_offset(10, 1, 3, 4, 31) + 1 == fa::dropout_lane_offset(10, 2, 0, 4, 0) &&
              fa::dropout_lane_offset(10, 0, 0, 4, 0) == 10 &&
              fa::dropout_lane_offset(10, 2, 3, 3 + 1, 31) + 1 == 10 + 3ull * 4 * 32,
          "(b, h) -> offset + (b*H + h)*32 + lane tiles [offset, offset + B*H*32)");
}

void test_thresholds() {
    struct {
        float p;
        uint32_t t;
        double keep;
    } cases[] = {
        {0.17f, 211, 0.828125},        {0.1f, 229, 0.8984375}, {0.999f, 0, 1.0 / 256},
        {0.0f, 255, 1.0},              {0.5f, 127, 0.5},       {0.6f, 101, 102.0 / 256},
    };
    for (const auto& k : cases) {
        const uint32_t t = fa::dropout_threshold(k.p);
        if (t != k.t) std::printf("  p=%g: threshold %u want %u\n", static_cast<double>(k.p), t, k.t);
        check(t == k.t, "quantised threshold T = floor(float(1 - p) * 255)");
        check((t + 1) / 256.0 == k.keep, "keep probability (T + 1) / 256");
    }
    // p = 0.6: FA2 takes 1 - p in float (0.39999998), so T = 101; 1 - p in double would give 102.
    check(static_cast<uint32_t>(std::floor((1.0 - 0.6) * 255.0)) == 102, "the double formula differs at p = 0.6");
    // Byte 255 is kept only at p = 0 and byte 0 always: the test is u <= T.
    check(fa::dropout_threshold(0.f) == 255u, "p = 0 keeps every byte (u <= 255)");
    // Over a 256x256 call at p = 0.17 the kept fraction is near 212/256 (sd about 0.0015; bound about 7 sd).
    const uint32_t t = fa::dropout_threshold(0.17f);
    long kept = 0, n = 0;
    for (uint32_t r = 0; r < 256; ++r)
        for (uint32_t c = 0; c < 256; ++c, ++n) kept += fa::dropout_keep(1234, 5678, 1, 3, 4, r, c, t);
    const double frac = static_cast<double>(kept) / static_cast<double>(n);
    if (std::fabs(frac - 0.828125) > 0.01) std::printf("  kept fraction %.5f\n", frac);
    check(std::fabs(frac - 0.828125) <= 0.01, "kept fraction near (T + 1) / 256 at p = 0.17");
}

// A fixed sweep of 512 (seed, offset, b, h, H, r, c), drawn with splitmix64 from seed 2024, hashed with FNV-1a
// over the dropout bytes. The managed twin computes the same sweep and must give the same digest.
uint64_t splitmix64(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t sweep_digest() {
    uint64_t s = 2024, digest = 0xcbf29ce484222325ull;
    for (int i = 0; i < 512; ++i) {
        const uint64_t seed = splitmix64(s);
        const uint64_t offset = splitmix64(s) >> 20;  // offsets up to 2^44, so o crosses 32 bits
        const int H = static_cast<int>(splitmix64(s) % 64) + 1;
        const int b = static_cast<int>(splitmix64(s) % 16);
        const int h = static_cast<int>(splitmix64(s) % static_cast<uint64_t>(H));
        const uint32_t r = static_cast<uint32_t>(splitmix64(s) % 65536);
        const uint32_t c = static_cast<uint32_t>(splitmix64(s) % 65536);
        const uint32_t u = fa::dropout_byte(seed, offset, b, h, H, r, c);
        digest = (digest ^ u) * 0x100000001b3ull;
    }
    return digest;
}

const uint64_t kSweepDigest = 0xcae0060640c2b12bull;  // from `philox_test --print-digest`; also in PhiloxTests.cs

}  // namespace

// The kernels' shortcut (common/dropout.cuh): lane L of a warp holding the m16 x n8 accumulator tiles of rows
// row16 .. +15 and columns col0 + 8 t .. (t < 4, col0 a multiple of 32; or t < 2 and col0 a multiple of 16 for the
// backward's 16-column warp tiles) makes one Philox call, counter (offset + (b H + h) 32 + L, row16 / 16, col0 / 32),
// and element e of tile t (row + 8 (e >> 1), column 2 (L % 4) + (e & 1)) reads byte e of word nt = (col0 % 32) / 8 + t.
// Checked against the element-wise mapping for every lane, tile and element over a sweep of blocks.
void test_fragment_shortcut() {
    const uint64_t seed = 0x0123456789ABCDEFull, offset = 0xFFFFFFF0ull;  // the offset carries into the high word
    const int H = 5;
    int bad = 0, n = 0;
    for (int b = 0; b < 2; ++b) {
        for (int h = 0; h < H; h += 2) {
            for (uint32_t row16 = 0; row16 < 64; row16 += 16) {
                for (uint32_t col0 = 0; col0 < 128; col0 += 16) {
                    for (int lane = 0; lane < 32; ++lane) {
                        const fa::Philox4x32Out r = fa::dropout_philox(
                            seed, fa::dropout_lane_offset(offset, b, h, H, lane), row16 / 16, col0 / 32);
                        const int tiles = col0 % 32 == 0 ? 4 : 2;
                        for (int t = 0; t < tiles; ++t) {
                            const int nt = static_cast<int>((col0 % 32) / 8) + t;
                            for (int e = 0; e < 4; ++e) {
                                const uint32_t row = row16 + static_cast<uint32_t>(lane / 4 + 8 * (e >> 1));
                                const uint32_t col = col0 + static_cast<uint32_t>(8 * t + 2 * (lane % 4) + (e & 1));
                                const uint32_t want = fa::dropout_byte(seed, offset, b, h, H, row, col);
                                const uint32_t got = (r.w[nt] >> (8 * e)) & 0xFFu;
                                ++n;
                                if (got != want) ++bad;
                            }
                        }
                    }
                }
            }
        }
    }
    std::printf("  fragment shortcut: %d elements, %d differ\n", n, bad);
    check(n > 0 && bad == 0, "the kernels' per-lane word/byte shortcut matches the element mapping");
}

// The sm90 backward's transposed read (common/philox.cuh dropout_t_lane/word/shift): for every warp, lane and element
// of a warpgroup's S^T accumulators (64 keys from key0, 64 queries from row0), the lane, word and bit the kernel reads
// after its shuffles against the element mapping, and the byte itself against dropout_byte.
void test_transposed_read() {
    const uint64_t seed = 0xFEEDFACECAFEBEEFull, offset = 0xFFFFFFC0ull;
    const int H = 3, b = 1, h = 2;
    int bad = 0, n = 0;
    for (uint32_t key0 = 0; key0 < 256; key0 += 64) {  // (key0 + key_base: a multiple of 64, hence of 32)
        for (uint32_t row0 = 0; row0 < 192; row0 += 64) {
            for (int wl = 0; wl < 4; ++wl) {
                for (int lane = 0; lane < 32; ++lane) {
                    for (int j = 0; j < 8; ++j) {
                        for (int i = 0; i < 2; ++i) {
                            for (int c = 0; c < 2; ++c) {
                                const uint32_t key = key0 + static_cast<uint32_t>(16 * wl + lane / 4 + 8 * i);
                                const uint32_t q = row0 + static_cast<uint32_t>(8 * j + 2 * (lane % 4) + c);
                                const int src = fa::dropout_t_lane(lane, c), word = fa::dropout_t_word(wl, i);
                                const int shift = fa::dropout_t_shift(lane, j);
                                const int byte = fa::dropout_byte_index(q, key);
                                const bool mapped = fa::dropout_lane(q, key) == src && byte / 4 == word &&
                                                    8 * (byte % 4) == shift && q / 16 == row0 / 16 + j / 2 &&
                                                    key / 32 == key0 / 32 + wl / 2;
                                const fa::Philox4x32Out r =
                                    fa::dropout_philox(seed, fa::dropout_lane_offset(offset, b, h, H, src),
                                                       row0 / 16 + j / 2, key0 / 32 + wl / 2);
                                const uint32_t got = (r.w[word] >> shift) & 0xFFu;
                                ++n;
                                if (!mapped || got != fa::dropout_byte(seed, offset, b, h, H, q, key)) ++bad;
                            }
                        }
                    }
                }
            }
        }
    }
    std::printf("  transposed read: %d elements, %d differ\n", n, bad);
    check(n > 0 && bad == 0, "the sm90 backward's transposed lane/word/bit reads the element mapping's byte");
}

// The sm90 forward's dropout k-steps (common/philox.cuh dropout_kstep_call/half, dropout_block_calls): for key blocks
// of 64-224 keys (every multiple of 16), every block n and k-step, the call and words they name hold the bytes of the
// k-step's elements (the fragment shortcut's lane and byte), and the block's calls stay below dropout_block_calls.
void test_kstep_calls() {
    int bad = 0, n_checked = 0;
    for (int bn = 64; bn <= 224; bn += 16) {
        for (int n = 0; n < 16; ++n) {
            const int start = (n * bn) % 32;
            for (int kk = 0; kk < bn / 16; ++kk) {
                const int call = n * bn / 32 + fa::dropout_kstep_call(start, kk);
                const int h = fa::dropout_kstep_half(start, kk);
                if (start % 16 != 0 || fa::dropout_kstep_call(start, kk) >= fa::dropout_block_calls(bn)) ++bad;
                for (int lane = 0; lane < 32; ++lane) {
                    for (int t = 0; t < 2; ++t) {
                        for (int e = 0; e < 4; ++e) {
                            const uint32_t row = static_cast<uint32_t>(lane / 4 + 8 * (e >> 1));
                            const uint32_t col = static_cast<uint32_t>(n * bn + 16 * kk + 8 * t + 2 * (lane % 4) + (e & 1));
                            ++n_checked;
                            if (fa::dropout_lane(row, col) != lane || static_cast<int>(col / 32) != call ||
                                fa::dropout_byte_index(row, col) != 4 * (2 * h + t) + e) {
                                ++bad;
                            }
                        }
                    }
                }
            }
        }
    }
    std::printf("  forward k-steps: %d elements, %d differ\n", n_checked, bad);
    check(n_checked > 0 && bad == 0, "the sm90 forward's k-step call and words hold its elements' bytes");
}

int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "--print-digest") == 0) {
        std::printf("0x%016llxull\n", static_cast<unsigned long long>(sweep_digest()));
        return 0;
    }
    test_kat();
    test_mapping();
    test_end_to_end();
    test_thresholds();
    test_fragment_shortcut();
    test_transposed_read();
    test_kstep_calls();
    const uint64_t d = sweep_digest();
    if (d != kSweepDigest) std::printf("  sweep digest 0x%016llx\n", static_cast<unsigned long long>(d));
    check(d == kSweepDigest, "digest of the fixed sweep (shared with the managed twin)");
    std::printf("philox_test: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
