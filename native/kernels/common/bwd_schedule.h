// Grid order of the backward main kernels, both paths: which (key block, (batch, kv head) pair) each CTA of the 1-D
// grid computes when FA_BWD_GRID_LPT orders the tail longest first (common/bwd_block.cuh says when and why). Pure
// integer code, shared by the kernels and the host-side unit test (native/tests/schedule_test.cpp), so the order can be
// checked without a GPU.
#pragma once
#include "common/host_device.h"

namespace fa {

struct BwdGridCoord {
    int n_block;  // key block
    int pair;     // batch * kv heads + kv head
};

// CTA `linear` of n_blocks x pairs: the first pairs - tail pairs head-major (key blocks fastest, as the default order),
// then the last `tail` pairs key block major (every such pair's key block 0, then 1, ...). tail 0: head-major throughout.
FA_HOST_DEVICE inline BwdGridCoord bwd_grid_coord(int linear, int n_blocks, int pairs, int tail) {
    const int tail0 = (pairs - tail) * n_blocks;  // the tail's first CTA
    if (linear < tail0) return BwdGridCoord{linear % n_blocks, linear / n_blocks};
    const int i = linear - tail0;
    return BwdGridCoord{i / tail, pairs - tail + i % tail};
}

// The tail's pairs: about `waves` waves of CTAs on `sms` SMs, at most every pair (a wave of one CTA an SM, as the sm90
// kernels run; sm80 kernels that fit two an SM get about one wave of theirs).
FA_HOST_DEVICE inline int bwd_lpt_tail(int pairs, int n_blocks, int sms, int waves = 2) {
    const int t = (waves * sms + n_blocks - 1) / n_blocks;
    return t < pairs ? t : pairs;
}

}  // namespace fa
