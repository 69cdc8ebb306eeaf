// Host-side test of the sm90 backward's dQ accumulator fragment layout (params/bwd_params.h dq_frag_offset), which
// the main kernel writes (one vector add or bulk reduction per thread's 4 floats) and bwd_convert reads back: for
// every kernel head dim with an sm90 kernel, the offsets of a full query block's 64 x D elements are a permutation
// of [0, 64 * D), and register r of thread t of warpgroup w (wgmma's m64nN accumulator: row 16 * warp + lane / 4
// + 8 * ((r / 2) % 2), column 8 * (r / 4) + 2 * (lane % 4) + r % 2 of the warpgroup's half) sits at
// w * 64 * D / 2 + ((r / 4) * 128 + t) * 4 + r % 4, the address the kernel adds it at (at D = 192 the kernel's registers
// come from two products and hold the column groups in another order, dq_group in sm90/bwd_kernel.cuh, but each
// column group goes to the address this formula gives it). Needs no GPU; runs under ctest.
#include <cstdio>
#include <vector>

#include "params/bwd_params.h"

int main() {
    int failures = 0, checks = 0;
    for (int d : {64, 128, 192, 256}) {
        const int rows = fa::kDqFragRows, half = d / 2;
        std::vector<int> seen(static_cast<size_t>(rows) * d, 0);
        for (int row = 0; row < rows; ++row) {
            for (int col = 0; col < d; ++col) {
                const int64_t off = fa::dq_frag_offset(row, col, d);
                ++checks;
                if (off < 0 || off >= static_cast<int64_t>(rows) * d) {
                    ++failures;
                    std::printf("FAIL d=%d row=%d col=%d: offset %lld outside the block\n", d, row, col, static_cast<long long>(off));
                    continue;
                }
                ++seen[static_cast<size_t>(off)];
            }
        }
        for (size_t i = 0; i < seen.size(); ++i) {
            ++checks;
            if (seen[i] != 1) {
                ++failures;
                if (failures < 20) std::printf("FAIL d=%d: offset %zu taken %d times\n", d, i, seen[i]);
            }
        }
        for (int w = 0; w < 2; ++w) {
            for (int t = 0; t < 128; ++t) {
                const int warp = t / 32, lane = t % 32;
                for (int r = 0; r < half / 2; ++r) {
                    const int row = 16 * warp + lane / 4 + 8 * ((r / 2) % 2);
                    const int col = w * half + 8 * (r / 4) + 2 * (lane % 4) + r % 2;
                    const int64_t want = static_cast<int64_t>(w) * rows * half + (static_cast<int64_t>(r / 4) * 128 + t) * 4 + r % 4;
                    ++checks;
                    if (fa::dq_frag_offset(row, col, d) != want) {
                        ++failures;
                        if (failures < 20) std::printf("FAIL d=%d wg=%d thread=%d reg=%d: offset %lld, the kernel adds at %lld\n", d, w, t, r,
                                                       static_cast<long long>(fa::dq_frag_offset(row, col, d)), static_cast<long long>(want));
                    }
                }
            }
        }
    }
    std::printf("dq_layout_test: %d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
