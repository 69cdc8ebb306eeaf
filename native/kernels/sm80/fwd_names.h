// Names of the sm80 forward kernels, e.g. "sm80_fwd_bf16_hdim128_local_softcap_128x64_4w": what the
// log and the capability query report. Host-only; the tile sizes come from fwd_traits.h.
#pragma once
#include <string>

#include "sm80/fwd_traits.h"

namespace fa {
namespace sm80 {

template <int D>
std::string tile_tag() {
    using Tile = FwdTile<D>;
    return std::to_string(Tile::kBlockM) + "x" + std::to_string(Tile::kBlockN) + "_" + std::to_string(Tile::kWarps) + "w";
}

inline std::string tile_tag_for(int d) {
    switch (d) {
        case 32: return tile_tag<32>();
        case 64: return tile_tag<64>();
        case 96: return tile_tag<96>();
        case 128: return tile_tag<128>();
        case 192: return tile_tag<192>();
        default: return tile_tag<256>();
    }
}

// Returns a pointer that lives as long as the process (one interned string per variant).
const char* kernel_name(bool bf16, int d, bool local, bool softcap);

}  // namespace sm80
}  // namespace fa
