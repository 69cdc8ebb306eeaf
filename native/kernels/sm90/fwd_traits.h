// Compile-time facts of the sm90 (wgmma + TMA, warp-specialised) forward kernel: tile, warpgroups, stages,
// shared-memory layout. Plain constexpr, so the registry reads them for names, launch sizes and the host's
// shared-memory checks.
#pragma once

// The largest head dim whose kernel ping-pongs (below); a build may override it for experiments.
#ifndef FA_SM90_FWD_PINGPONG_MAX_D
#define FA_SM90_FWD_PINGPONG_MAX_D 64
#endif
// Keys per K/V block of the head-dim-128 kernel (128, or 176 as FA3 picks; overridable for experiments).
// Consumer warpgroups of the head-dim-64 kernel (2, or 3 as FA3's 192-row tile; overridable for experiments).
#ifndef FA_SM90_FWD_D64_CONSUMERS
#define FA_SM90_FWD_D64_CONSUMERS 2
#endif
#ifndef FA_SM90_FWD_BN128
#define FA_SM90_FWD_BN128 128
#endif

namespace fa {
namespace sm90 {

// The kernel head dims ("classes") of the sm90 forward; any head dim a multiple of 8 up to 256 runs the
// smallest class at least as large, its columns past d read as zeros by the TMA.
constexpr bool fwd_head_dim(int D) { return D == 64 || D == 128 || D == 256; }

// One CTA: a producer warpgroup (one thread issues every TMA load) and kConsumers consumer warpgroups of 64
// query rows each, so 64 * kConsumers query rows per tile; K and V stream through kStages-deep rings of BlockN keys.
template <int D>
struct FwdTraits90 {
    static_assert(fwd_head_dim(D), "the sm90 forward has kernels for head dims 64, 128 and 256");
    static constexpr int kHeadDim = D;
    static constexpr int kConsumers = D == 64 ? FA_SM90_FWD_D64_CONSUMERS : 2;  // consumer warpgroups
    static constexpr int kBlockM = 64 * kConsumers;
    static constexpr int kBlockN = D == 256 ? 64 : D == 128 ? FA_SM90_FWD_BN128 : 128;
    static constexpr int kStages = D == 64 ? 3 : 2;
    static constexpr int kThreads = 128 * (kConsumers + 1);
    // setmaxnreg budgets: 128*24 + 256*240 and 128*32 + 384*160 fit the 64K registers of an SM.
    static constexpr int kProducerRegs = kConsumers == 3 ? 32 : 24;
    static constexpr int kConsumerRegs = kConsumers == 3 ? 160 : 240;
    // Ping-pong: the consumers take turns to issue their products (named barriers), so one's softmax runs
    // under the other's GEMMs instead of both competing for the tensor cores at once.
    static constexpr bool kPingPong = D <= FA_SM90_FWD_PINGPONG_MAX_D;
    static constexpr int kPanels = D / 64;                     // 64-column panels of 128-byte rows
    static constexpr int kSmemQ = kBlockM * D * 2;
    static constexpr int kSmemKV = kBlockN * D * 2;             // one K or V stage
    static constexpr int kOffQ = 0;
    static constexpr int kOffK = kOffQ + kSmemQ;
    static constexpr int kOffV = kOffK + kStages * kSmemKV;
    // O is staged in its own tile where shared memory allows, so the next tile's Q loads during the
    // epilogue; otherwise in the consumer's own rows of the Q tile, which frees only after it.
    static constexpr int kSmemO = kOffV + kStages * kSmemKV + kBlockM * D * 2 + 256 <= 227 * 1024 ? kBlockM * D * 2 : 0;
    static constexpr bool kSeparateO = kSmemO > 0;
    static constexpr int kOffO = kOffV + kStages * kSmemKV;
    static constexpr int kOffBar = kOffO + kSmemO;
    // Barriers (8 bytes each): q_full, q_empty, then per stage k_full, k_empty, v_full, v_empty.
    static constexpr int kBarriers = 2 + 4 * kStages;
    static constexpr int kSmemBytes = kOffBar + kBarriers * 8;
    static_assert(kSmemQ % 1024 == 0 && kSmemKV % 1024 == 0, "tiles start on 1024-byte swizzle atoms");
    static_assert(kSmemBytes <= 227 * 1024, "fits an H100/H200 block's shared memory");
};

}  // namespace sm90
}  // namespace fa
