// Names of the sm80 forward kernels, e.g. "sm80_fwd_bf16_hdim128_local_softcap_128x64_4w": what the
// log and the capability query report. Host-only; the tile sizes come from fwd_traits.h.
#pragma once
#include <string>

#include "sm80/fwd_traits.h"
#include "sm80/head_dims.h"

namespace fa {
namespace sm80 {

template <int D>
std::string tile_tag() {
    using Tile = FwdTile<D>;
    return std::to_string(Tile::kBlockM) + "x" + std::to_string(Tile::kBlockN) + "_" + std::to_string(Tile::kWarps) + "w";
}

inline std::string tile_tag_for(int d) {
    return with_head_dim(d, [](auto hd) { return tile_tag<decltype(hd)::value>(); });
}

// Returns a pointer that lives as long as the process (one interned string per variant).
const char* kernel_name(bool bf16, int d, bool local, bool softcap);

}  // namespace sm80
}  // namespace fa
