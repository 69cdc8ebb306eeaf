// Causal and sliding-window masks, written once for every kernel of the forward and backward passes.
// The host has folded causal into window_right (FwdParams), so a query row i of a sequence sees key j iff
// j < sk and  left <= j - i <= right,  with right = off + window_right and left = off - window_left
// (each unbounded when its window is < 0) and off = sk - sq for bottom-right alignment, else 0.
#pragma once
#include "common/seq.cuh"
#include "params/fwd_params.h"

namespace fa {

// Whether a call needs the masked ("local") kernel variant: some key other than the sequence tail may be
// hidden, or the call has ALiBi slopes or dropout, which only the local variant applies (common/alibi.cuh,
// common/dropout.cuh): neither costs an extra kernel, and the plain kernel stays untouched. Host and device (the launchers pick the variant with it, the
// registry names it).
#if defined(__CUDACC__)
__host__ __device__
#endif
inline bool is_local(const FwdParams& p) {
    return p.window_left >= 0 || p.window_right >= 0 || p.alibi_slopes != nullptr || p.dropout != 0;
}

constexpr int kUnbounded = 1 << 30;

struct MaskBounds {
    int right, left;          // visible iff left <= key - row <= right
    bool has_right, has_left;  // whether each bound hides anything (kLocal kernels only)
};

template <bool kLocal>
__host__ __device__ __forceinline__ MaskBounds mask_bounds(const FwdParams& p, const SeqInfo& seq) {
    const int off = p.bottom_right ? seq.sk - seq.sq : 0;
    MaskBounds m;
    m.has_right = kLocal && p.window_right >= 0;
    m.has_left = kLocal && p.window_left >= 0;
    m.right = m.has_right ? off + p.window_right : kUnbounded;
    m.left = m.has_left ? off - p.window_left : -kUnbounded;
    return m;
}

// Whether key `key` is hidden from query row `row` (both within the sequence).
template <bool kLocal>
__host__ __device__ __forceinline__ bool key_hidden(const MaskBounds& m, int key, int row, int sk) {
    bool hidden = key >= sk;
    if (kLocal) {
        const int diff = key - row;
        hidden |= diff > m.right || diff < m.left;
    }
    return hidden;
}

// key_hidden for one row over the keys col0 + k (k >= 0) as two limits: key col0 + k is visible to `row` iff
// lo <= k < hi (kLocal; without it, iff k < hi), so a kernel tests each element with two compares against its constant
// offset k (the sm90 forward's masked key blocks). The sums are taken in 64 bits (a paged call's longest sequence
// may come near INT32_MAX) and clamped to [0, sk - col0]-like ranges that hide the same keys k >= 0.
// native/tests/mask_limits_test.cu checks it against key_hidden.
struct KeyLimits {
    int lo, hi;
};
template <bool kLocal>
__host__ __device__ __forceinline__ KeyLimits key_limits(const MaskBounds& m, int row, int col0, int sk) {
    // Both limits are kept in [0, hi]: k >= 0, so hi <= 0 hides every k as hi = 0 does, and lo >= hi as lo = hi.
    KeyLimits l{0, sk - col0 > 0 ? sk - col0 : 0};
    if (kLocal) {
        // diff = col0 + k - row must lie in [left, right]: k <= row + right - col0 and k >= row + left - col0.
        const long long hi = static_cast<long long>(row) + m.right + 1 - col0;
        const long long lo = static_cast<long long>(row) + m.left - col0;
        if (hi < l.hi) l.hi = hi < 0 ? 0 : static_cast<int>(hi);
        l.lo = lo < 0 ? 0 : lo > l.hi ? l.hi : static_cast<int>(lo);
    }
    return l;
}

// Whether a tile of rows [row0, row0 + rows) x keys [key0, key0 + keys) needs the per-element mask: it
// reaches past the sequence's keys or across a bound.
template <bool kLocal>
__device__ __forceinline__ bool tile_masked(const MaskBounds& m, int row0, int rows, int key0, int keys, int sk) {
    return key0 + keys > sk ||
           (kLocal && ((m.has_right && key0 + keys - 1 - row0 > m.right) || (m.has_left && key0 - (row0 + rows - 1) < m.left)));
}

// Key blocks of BN keys that some row of [row0, row0 + rows) sees: [begin, end) (forward walk).
struct BlockRange {
    int begin, end;
};
template <bool kLocal>
__device__ __forceinline__ BlockRange key_block_range(const MaskBounds& m, int row0, int rows, int sk, int BN) {
    const int n_blocks = ceil_div(sk, BN);
    BlockRange r{0, n_blocks};
    if (kLocal) {
        if (m.has_right) {
            const int last_key = row0 + rows - 1 + m.right;
            r.end = last_key < 0 ? 0 : min(n_blocks, last_key / BN + 1);
        }
        if (m.has_left) r.begin = max(0, floor_div(row0 + m.left, BN));
    }
    return r;
}

// Query blocks of BM rows that see some key of key block n (BN keys): [begin, end) (backward walk);
// monotone in n, which the deterministic ordering relies on.
template <bool kLocal>
__device__ __forceinline__ BlockRange query_block_range(const MaskBounds& m, int n, int BM, int BN, int sq, int sk) {
    BlockRange r{0, ceil_div(sq, BM)};
    if (n * BN >= sk) return BlockRange{0, 0};
    if (kLocal) {
        if (m.has_right) r.begin = max(0, floor_div(n * BN - m.right, BM));
        if (m.has_left) {
            const int last_key = min((n + 1) * BN, sk) - 1;
            const int last_row = last_key - m.left;
            r.end = last_row < 0 ? 0 : min(r.end, last_row / BM + 1);
        }
    }
    if (r.end < r.begin) r.end = r.begin;
    return r;
}

}  // namespace fa
