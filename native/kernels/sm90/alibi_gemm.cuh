// ALiBi through the Q K^T product of the sm90 forward (issue 14; the kAlibiGemm kernels of sm90/fwd_kernel.cuh,
// FA_SM90_FWD_ALIBI_GEMM in sm90/fwd_traits.h). The per-element bias of common/alibi.cuh costs two FP32-pipe
// operations an element in a softmax that is on the kernel's critical path (1.31-1.38x the plain call at head dim 64,
// bench/NOTES.md). Here the tensor cores add the part that varies along the keys, and the softmax adds the rest once
// per row and key block.
//
// The bias in score units (common/alibi.cuh), a = slope / u, of row i and key j = key0 + jj of a key block of BN keys,
// with h = BN / 2:
//   causal form         a j                 = a (jj - h) + a (key0 + h)
//   other form          -a |i + off - j|    = sigma a (jj - h) + sigma a (key0 + h - (i + off))
// where, for the other form, sigma = +1 if every visible key of the block is at or left of its row's diagonal key
// i + off, for all 64 rows of the warpgroup, -1 if every one is at or right of it (alibi_gemm_sign; per tile as two
// bounds on the block index, alibi_gemm_bounds); a block that straddles a diagonal (sigma 0) keeps the per-element
// bias. The causal form is sigma = +1 everywhere. Masked elements become -inf after the bias as before, so their side
// does not matter: a causal call with a left window (the other form, every visible key at or left of the diagonal)
// never straddles; without a mask one block per 64 rows does.
//
// sigma a (jj - h): one more k16 step, issued before the block's Q K^T (which accumulates onto it), S = A K'^T with
//   K' (B, shared memory, written once per CTA): row jj = (x, x, x, 0, ..., 0) in T, x = jj - h (|x| <= 128, exact in
//       bf16 and fp16), kBlockN rows of 16 bytes back to back, then zeros up to 2 kBlockN rows (FwdTraits90::kSmemKp);
//   A (registers, the RS form): every row (a1, a2, a3, 0, ..., 0) times sigma, with a1 = T(a), a2 = T(a - a1),
//       a3 = T(a - a1 - a2) (alibi_split). In wgmma's A fragment (mma.sync's m16n8k16 layout) registers 0 and 1 hold
//       columns 2 (lane % 4) and +1 of rows lane / 4 and +8, registers 2 and 3 columns 8 on: so lane % 4 == 0 holds
//       (a1, a2) twice, lane % 4 == 1 holds (a3, 0) twice, everything else is 0; sigma = -1 flips the sign bits;
//       sigma = 0 is A = 0 (S = 0 exactly, then Q K^T alone).
// K' descriptor (smem_desc_noswizzle): no swizzle, K-major, SBO = LBO = 128. That canonical layout (PTX ISA, wgmma
// shared memory layouts) has row r, column k at 16 (r % 8) + SBO (r / 8) + LBO (k / 8) + 2 (k % 8) bytes: row jj's
// k 0..7 at 16 jj + 2 k, the rows above; its k 8..15 read row jj + 8's k 0..7 (the last group's: the zeros), finite
// values that meet A's zero columns 8..15. With LBO = SBO the layout reads the same whichever offset the hardware
// applies to which dimension.
//
// c = sigma a (key0 + h - (i + off)) (causal form: a (key0 + h)), per row and block: max_j (S'_j + c) =
// max_j S'_j + c, so the block's row max is taken on S' and c added once; the exponent s scale_log2 - m_scaled becomes
// s' scale_log2 - (m_scaled - c scale_log2), the bracket one fma per row. In exact arithmetic S' + c is S + bias
// element for element, so the row max, P, O and the LSE (row_max u + log sum; the causal form's too) are those of the
// per-element path.
//
// Rounding. alibi_split: |a1 + a2 + a3 - a| <= 2^-24 |a| (bf16: each part takes 8 more bits; fp16 11, down to its
// subnormals, 2^-25 absolute). The tensor core multiplies exactly (8- or 11-bit parts by |x| <= 128) and sums in
// fp32: S' = S + a x to about an ulp of max(|S|, a BN / 2). c is one rounding (2^-24 |c|), and the exponent's constant
// m_scaled - c scale_log2 one fma whose result is near the block's largest s' scale_log2, so c's size cancels there.
// Against the per-element path, which rounds fl(a j) and fl(s + bias) at the size of the bias: the same far from the
// diagonal, and near it (where that bias is small) up to 2^-24 slope BN / 2 more in the logit: 1e-6 for slope 0.3 at
// BN 128, 3e-5 for slope 8 (a CPU simulation of this bookkeeping against float64 found lse errors of 2.4e-6 and
// 4.9e-5 there, the per-element path's 6e-7 and 8e-7). Slopes with |a| > kAlibiGemmMaxSlope (fp16's range) keep the
// per-element bias.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/alibi.cuh"
#include "common/mask.cuh"
#include "sm90/wgmma.cuh"  // fence_proxy_async

namespace fa {
namespace sm90 {

// |slope / u| above which a tile keeps the per-element bias: a1 stays finite in fp16 (largest 65504), a x far inside
// fp32 (a slope far beyond ALiBi's for any softmax scale; bf16 alone would not need the bound).
constexpr float kAlibiGemmMaxSlope = 16384.f;

// x rounded to T (nearest even), as a float.
template <typename T>
__host__ __device__ inline float alibi_round(float x);
template <>
__host__ __device__ inline float alibi_round<__nv_bfloat16>(float x) {
    return __bfloat162float(__float2bfloat16_rn(x));
}
template <>
__host__ __device__ inline float alibi_round<__half>(float x) {
    return __half2float(__float2half_rn(x));
}

// Two values of T (x rounded to it) packed as wgmma takes them, lo in the low 16 bits (ptx.cuh's pack2, on the host too).
template <typename T>
__host__ __device__ inline uint32_t alibi_bits(float x);
template <>
__host__ __device__ inline uint32_t alibi_bits<__nv_bfloat16>(float x) {
    const __nv_bfloat16_raw r = __float2bfloat16_rn(x);
    return r.x;
}
template <>
__host__ __device__ inline uint32_t alibi_bits<__half>(float x) {
    const __half_raw r = __float2half_rn(x);
    return r.x;
}
template <typename T>
__host__ __device__ inline uint32_t alibi_pack(float lo, float hi) {
    return alibi_bits<T>(lo) | (alibi_bits<T>(hi) << 16);
}

// a = a1 + a2 + a3 (to 2^-24 |a|), each part a value of T. The differences are exact in fp32 (each part is within a
// factor 2 of what it rounds, Sterbenz).
struct AlibiParts {
    float a1, a2, a3;
};
template <typename T>
__host__ __device__ inline AlibiParts alibi_split(float a) {
    AlibiParts r;
    r.a1 = alibi_round<T>(a);
    const float rest = a - r.a1;
    r.a2 = alibi_round<T>(rest);
    r.a3 = alibi_round<T>(rest - r.a2);
    return r;
}

// The block's side of the diagonal for the rows [row_lo, row_lo + rows) and keys [key0, key0 + keys) (within the
// sequence; m the call's mask, mask.cuh, kLocal): +1 if every visible key - row <= off (the other form's bias is
// then +a (key - i - off)) or the form is causal, -1 if every visible key - row >= off, else 0. Visible: left <= key -
// row <= right (unbounded sides are +-kUnbounded), so the largest key - row that matters is min(key_last - row_lo,
// right) and the smallest max(key0 - row_last, left).
__host__ __device__ inline int alibi_gemm_sign(bool causal, int off, const MaskBounds& m, int row_lo, int rows,
                                               int key0, int keys) {
    if (causal) return 1;
    const int hi = key0 + keys - 1 - row_lo;
    if ((hi < m.right ? hi : m.right) <= off) return 1;
    const int lo = key0 - (row_lo + rows - 1);
    if ((lo > m.left ? lo : m.left) >= off) return -1;
    return 0;
}

// The same per key block index n (keys [n BN, n BN + BN)): blocks n <= pos have sign +1, else blocks n >= neg -1, the
// rest 0; what alibi_gemm_sign says of every block, as two bounds formed once per tile (a block then costs two
// compares). +1 iff min(n BN + BN - 1 - row_lo, right) <= off: every block when right <= off, else n BN <=
// off + row_lo - BN + 1; -1 iff max(n BN - row_last, left) >= off: every block when left >= off, else n BN >=
// off + row_last.
struct AlibiGemmBounds {
    int pos, neg;
};
__host__ __device__ inline int alibi_floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
__host__ __device__ inline AlibiGemmBounds alibi_gemm_bounds(bool causal, int off, const MaskBounds& m, int row_lo,
                                                             int rows, int BN) {
    constexpr int kAll = 1 << 30;
    if (causal) return AlibiGemmBounds{kAll, kAll};
    const int pos = m.right <= off ? kAll : alibi_floor_div(off + row_lo - BN + 1, BN);
    const int neg = m.left >= off ? -kAll : -alibi_floor_div(-(off + row_lo + rows - 1), BN);  // ceiling
    return AlibiGemmBounds{pos, neg};
}

// The A register of the k-step for sigma = +1 of a thread with lane % 4 == t4 (registers 0 and 1 of its fragment; 2
// and 3 are 0): (a1, a2) at t4 0, (a3, 0) at t4 1, 0 elsewhere.
template <typename T>
__host__ __device__ inline uint32_t alibi_gemm_frag(float a, int t4) {
    const AlibiParts parts = alibi_split<T>(a);
    return t4 == 0 ? alibi_pack<T>(parts.a1, parts.a2) : t4 == 1 ? alibi_pack<T>(parts.a3, 0.f) : 0u;
}

// Row r of the K' panel (16 bytes): (x, x, x, 0, 0, 0, 0, 0) with x = r - BN / 2 for r < BN, zeros for the 8 rows after.
template <typename T, int BN>
__host__ __device__ inline uint4 alibi_kp_row(int r) {
    static_assert(BN % 2 == 0 && BN <= 256, "r - BN / 2 is exact in bf16 and fp16 for |r - BN / 2| <= 128");
    const float x = r < BN ? static_cast<float>(r - BN / 2) : 0.f;
    uint4 row;
    row.x = alibi_pack<T>(x, x);
    row.y = alibi_pack<T>(x, 0.f);
    row.z = 0u;
    row.w = 0u;
    return row;
}

// One (sequence, query head)'s facts for a consumer warpgroup and thread: the slope in score units a (as
// common/alibi.cuh's AlibiRow), the blocks of each sign (b; no block has one when the slope is beyond the k-step's
// range), this thread's A register of the k-step for sigma = +1 (lane % 4 == 0: (a1, a2), 1: (a3, 0), else 0; see
// above), and for its rows i = row + 8 r the floats e[r] = i + off - BN / 2 (the causal form: -BN / 2), so that block
// n's row constant is sigma a (n BN - e[r]) (exact integers below 2^24 until the product).
struct AlibiGemmTile {
    float a;
    uint32_t frag;
    AlibiGemmBounds b;
    float e[2];
};

// r: common/alibi.cuh's row of the tile (slope already divided by the kernel's multiplier u); m: the tile's mask;
// row_lo: the warpgroup's first row (of 64), row: this thread's first row; t4 = lane % 4.
template <typename T, int BN>
__device__ __forceinline__ AlibiGemmTile alibi_gemm_tile(const AlibiRow& r, const MaskBounds& m, int row_lo, int row,
                                                         int t4) {
    AlibiGemmTile g;
    const bool on = r.on && fabsf(r.slope) <= kAlibiGemmMaxSlope;  // false for NaN too: the per-element path
    g.a = r.slope;
    g.b = on ? alibi_gemm_bounds(r.causal, r.off, m, row_lo, 64, BN) : AlibiGemmBounds{-(1 << 30), 1 << 30};
    g.frag = alibi_gemm_frag<T>(on ? r.slope : 0.f, t4);
    // The causal form's constant is a (n BN + BN / 2), the other's sigma a (n BN + BN / 2 - (i + off)).
    g.e[0] = static_cast<float>(r.causal ? -(BN / 2) : row + r.off - BN / 2);
    g.e[1] = static_cast<float>(r.causal ? -(BN / 2) : row + 8 + r.off - BN / 2);
    return g;
}

// Pins the step's A registers where they are written: an empty asm per register (volatile, so it keeps its place
// before the issue's wgmma.fence, another volatile asm; no memory clobber, nothing else need wait for it), so that the
// compiler cannot sink their writes past the fence, after which they would need another one.
__device__ __forceinline__ void alibi_pin(uint32_t (&r)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(r[i]));
}

// The K' panel at `panel` (kBlockN rows of 16 bytes, then kBlockN rows of zeros; see above), written by threads
// [0, nthreads) of the CTA, each fencing its writes for wgmma's (async proxy) reads; the caller's barrier publishes
// them.
template <typename T, int BN>
__device__ __forceinline__ void write_alibi_kp(unsigned char* panel, int tid, int nthreads) {
    // Every 16-byte row of the panel's 2 * BN (FwdTraits90::kSmemKp), the rows past BN zeros.
    for (int r = tid; r < 2 * BN; r += nthreads) *reinterpret_cast<uint4*>(panel + 16 * r) = alibi_kp_row<T, BN>(r);
    fence_proxy_async();
}

}  // namespace sm90
}  // namespace fa
