// Kernel variant features: each launcher reports which variant it ran as a set of these bits, and the
// registry turns (path, pass, dtype, head dim, features) into the kernel's name. Plain constants.
#pragma once
#include <cstdint>

namespace fa {
namespace feature {
constexpr uint32_t kLocal = 1;          // causal or window masks (else only the sequence tail masks)
constexpr uint32_t kSoftcap = 2;        // softcap on the scores
constexpr uint32_t kDeterministic = 4;  // ordered dQ adds (backward)
constexpr uint32_t kPaged = 8;          // paged KV cache (decode)
constexpr uint32_t kDropout = 16;       // dropout (the forward and backward of both paths; always with kLocal)
constexpr uint32_t kFp8Cache = 32;      // an fp8 (e4m3) KV cache with fp16/bf16 queries (decode, C ABI 0.13)
// an sm90 forward wide tile, chosen per call (sm90/fwd_launch.cuh): d64's 192 rows, fp8 d128's 224 keys
constexpr uint32_t kWide = 64;
}  // namespace feature
}  // namespace fa
