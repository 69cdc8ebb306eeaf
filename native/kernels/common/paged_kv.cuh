// Paged K/V of the variable-length forward (FwdParams::block_table, C ABI 0.11): where a key tile of a sequence
// lies in the pool of blocks. The host serves block sizes that every kernel's key tile divides, so a tile
// starting at a multiple of the tile lies in one block and is addressed like a contiguous one from there.
#pragma once
#include <cstdint>

#include "common/ptx.cuh"
#include "params/device_flags.h"
#include "params/fwd_params.h"

namespace fa {

// Block (clamped to [0, num_blocks), a clamp reported) and row within it of key `key` of sequence b.
struct PagedRow {
    int block;
    int row;
};

__device__ __forceinline__ PagedRow paged_row(const FwdParams& p, int b, int key) {
    const int page = key / p.block_size;
    const int id = p.block_table[static_cast<int64_t>(b) * p.table_batch_stride +
                                 static_cast<int64_t>(page) * p.table_page_stride];
    const int clamped = min(max(id, 0), p.num_blocks - 1);
    if (clamped != id && p.device_flags != nullptr) set_host_flag(p.device_flags, kDeviceFlagForwardBlockId);
    return PagedRow{clamped, key - page * p.block_size};
}

// Elements from the start of a KV head's rows (contiguous: of the sequence's rows) to the key tile that starts at
// key `key` of sequence b: key rows on, or (kPaged) the tile's block and row (block_stride: k's or v's stride between
// blocks, FwdParams::k_batch_stride / v_batch_stride).
template <bool kPaged>
__device__ __forceinline__ int64_t kv_tile_offset(const FwdParams& p, int b, int key, int64_t row_stride,
                                                  int64_t block_stride) {
    if constexpr (!kPaged) {
        return static_cast<int64_t>(key) * row_stride;
    } else {
        const PagedRow r = paged_row(p, b, key);
        return static_cast<int64_t>(r.block) * block_stride + static_cast<int64_t>(r.row) * row_stride;
    }
}

// The launchers' guard (host): a kPaged kernel serves exactly the calls with a block table, and only block sizes its key
// tile of BlockN keys divides (the host refuses other sizes first; a mismatch here is a launcher bug, not a user's).
template <bool kPaged, int BlockN>
inline bool paged_variant_fits(const FwdParams& p) {
    return kPaged == (p.block_table != nullptr) && (!kPaged || p.block_size % BlockN == 0);
}

}  // namespace fa
