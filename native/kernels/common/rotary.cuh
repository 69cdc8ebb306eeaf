// Rotary embedding of one 16-byte chunk (8 elements) of a head vector, as flash_attn_with_kvcache applies it
// (shared/FEATURES.md section 4): the first rotary_dim elements of the vector are rotated in pairs at one position,
// the rest pass through; the math is fp32, each result rounded once to the element type.
//   interleaved (GPT-J):   (x[2t], x[2t+1])    -> (x[2t] c_t - x[2t+1] s_t, x[2t] s_t + x[2t+1] c_t)
//   half-split (GPT-NeoX): (x[t], x[t + rd/2]) -> (x[t] c_t - x[t+rd/2] s_t, x[t] s_t + x[t+rd/2] c_t)
// with c_t = cos[p, t], s_t = sin[p, t], t < rd / 2, tables of rd / 2 elements per position.
//
// One thread makes one output chunk from what it loads itself (its chunk, the half-split partner chunk, 4 or 8
// table entries), so the helper needs no shared memory or shuffles and drops into any loop that moves a head
// vector 16 bytes at a time (the decode append kernel, the decode attention kernel's Q load). rotary_dim must be a
// multiple of 16: then a chunk lies wholly inside or wholly past the rotated part, and a half-split partner is a
// whole chunk rd / 16 chunks away. Every pointer is 16-byte aligned (table rows too: rd / 2 is a multiple of 8).
// Host-callable too (loads through __ldg on the device, plain loads on the host), so native/tests/rotary_test.cu
// checks the chunk logic on the CPU.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace fa {

#define FA_ROTARY_FN __host__ __device__ __forceinline__

// A read-only load: __ldg on the device, a plain load on the host.
template <typename V>
FA_ROTARY_FN V rotary_load(const V* p) {
#if defined(__CUDA_ARCH__)
    return __ldg(p);
#else
    return *p;
#endif
}

// One register of two 16-bit values -> two floats (exact).
template <typename T>
FA_ROTARY_FN float2 unpack2(uint32_t v);

template <>
FA_ROTARY_FN float2 unpack2<__nv_bfloat16>(uint32_t v) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
}

template <>
FA_ROTARY_FN float2 unpack2<__half>(uint32_t v) {
    return __half22float2(*reinterpret_cast<const __half2*>(&v));
}

// Two floats -> one register of two 16-bit values (lo first), round to nearest even (ptx.cuh's pack2, host-callable).
template <typename T>
FA_ROTARY_FN uint32_t rotary_pack2(float lo, float hi);

template <>
FA_ROTARY_FN uint32_t rotary_pack2<__nv_bfloat16>(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}

template <>
FA_ROTARY_FN uint32_t rotary_pack2<__half>(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}

template <typename T>
FA_ROTARY_FN void unpack8(const uint4& c, float (&x)[8]) {
    const float2 a = unpack2<T>(c.x), b = unpack2<T>(c.y), d = unpack2<T>(c.z), e = unpack2<T>(c.w);
    x[0] = a.x;
    x[1] = a.y;
    x[2] = b.x;
    x[3] = b.y;
    x[4] = d.x;
    x[5] = d.y;
    x[6] = e.x;
    x[7] = e.y;
}

template <typename T>
FA_ROTARY_FN uint4 pack8(const float (&x)[8]) {
    return make_uint4(rotary_pack2<T>(x[0], x[1]), rotary_pack2<T>(x[2], x[3]), rotary_pack2<T>(x[4], x[5]),
                      rotary_pack2<T>(x[6], x[7]));
}

// Table row of position pos: [rows, rd / 2] tables, pos clamped into [0, rows) (callers keep positions inside; the
// clamp only keeps a wrong one from leaving the table).
template <typename T>
FA_ROTARY_FN const T* rotary_row(const void* table, int pos, int rows, int rotary_dim) {
    const int p = pos < 0 ? 0 : (pos >= rows ? rows - 1 : pos);
    return reinterpret_cast<const T*>(table) + static_cast<int64_t>(p) * (rotary_dim / 2);
}

// Chunk ch (elements 8ch .. 8ch+7) of the head vector x (d contiguous elements), rotated at the position whose
// table rows are cos_row / sin_row. A chunk at or past rotary_dim is returned as loaded.
template <typename T>
FA_ROTARY_FN uint4 rotary_chunk(const T* x, int ch, const T* cos_row, const T* sin_row, int rotary_dim,
                                              bool interleaved) {
    const uint4 raw = rotary_load(reinterpret_cast<const uint4*>(x + ch * 8));
    if (ch * 8 >= rotary_dim) return raw;
    float v[8], out[8];
    unpack8<T>(raw, v);
    if (interleaved) {
        // Pairs (8ch + 2e, 8ch + 2e + 1), e < 4: table entries 4ch .. 4ch + 3 (8 bytes).
        const uint2 cr = rotary_load(reinterpret_cast<const uint2*>(cos_row + ch * 4));
        const uint2 sr = rotary_load(reinterpret_cast<const uint2*>(sin_row + ch * 4));
        const float2 c01 = unpack2<T>(cr.x), c23 = unpack2<T>(cr.y);
        const float2 s01 = unpack2<T>(sr.x), s23 = unpack2<T>(sr.y);
        const float c[4] = {c01.x, c01.y, c23.x, c23.y};
        const float s[4] = {s01.x, s01.y, s23.x, s23.y};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float x0 = v[2 * e], x1 = v[2 * e + 1];
            out[2 * e] = x0 * c[e] - x1 * s[e];
            out[2 * e + 1] = x0 * s[e] + x1 * c[e];
        }
    } else {
        // Element t pairs with t + rd/2: chunk ch with the chunk rd/16 away; table entries of the first half's chunk.
        const int half_chunks = rotary_dim / 16;
        const bool first = ch < half_chunks;
        const int partner = first ? ch + half_chunks : ch - half_chunks;
        const int t0 = (first ? ch : partner) * 8;
        float pv[8], c[8], s[8];
        unpack8<T>(rotary_load(reinterpret_cast<const uint4*>(x + partner * 8)), pv);
        unpack8<T>(rotary_load(reinterpret_cast<const uint4*>(cos_row + t0)), c);
        unpack8<T>(rotary_load(reinterpret_cast<const uint4*>(sin_row + t0)), s);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            // first half: x_t c - x_{t+h} s (x_t = v, x_{t+h} = pv); second half: x_t s + x_{t+h} c (x_t = pv).
            out[e] = first ? v[e] * c[e] - pv[e] * s[e] : pv[e] * s[e] + v[e] * c[e];
        }
    }
    return pack8<T>(out);
}

}  // namespace fa
