// Host side of the TMA: builds the descriptor of a 4-D tensor of 16-bit or 8-bit elements with cuTensorMapEncodeTiled, reached
// through the runtime's driver entry point (the library links no libcuda). Pure host code, no allocation, so
// a launch that builds its descriptors stays graph-capturable. Included by the sm90 launchers only.
#pragma once
#include <cuda.h>  // CUtensorMap and its enums; the function itself comes from the runtime's entry point
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "sm90/async.cuh"

namespace fa {
namespace sm90 {

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled of the loaded driver, or nullptr. Looked up once per process.
inline EncodeTiled encode_tiled_fn() {
    static const EncodeTiled fn = [] {
        void* address = nullptr;
        cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
        const cudaError_t err =
            cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &address, 12000, cudaEnableDefault, &found);
#else
        const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &address, cudaEnableDefault, &found);
#endif
        if (err != cudaSuccess || found != cudaDriverEntryPointSuccess) {
            (void)cudaGetLastError();
            address = nullptr;
        }
        return reinterpret_cast<EncodeTiled>(address);
    }();
    return fn;
}

// Element types of a tensor map: fp16, bf16, or 8-bit (fp8 e4m3, loaded as bytes).
enum class TmaElem { F16, BF16, U8 };

// A [dims[3]][dims[2]][dims[1]][dims[0]] tensor (dims[0] contiguous) with byte strides strides[0..2] for
// dims 1..3, read in boxes of box[0] x box[1] (x 1 x 1) with the 128-byte swizzle (box[0] is 128 bytes of
// elements: one 128-byte row per box row). Elements outside the dims read as zeros. A dim of extent 1
// may carry any stride: it is replaced by one the driver accepts. Returns cudaErrorInvalidValue where the
// driver refuses the tensor (or offers no encoder).
inline cudaError_t encode_4d(TmaMap* out, const void* base, TmaElem elem, const int64_t (&dims)[4],
                             const int64_t (&strides)[3], int box0, int box1) {
    const EncodeTiled encode = encode_tiled_fn();
    if (encode == nullptr) return cudaErrorInvalidValue;
    cuuint64_t d[4], s[3];
    int64_t span = dims[0] * (elem == TmaElem::U8 ? 1 : 2);  // bytes the dims so far cover
    for (int i = 0; i < 4; ++i) d[i] = static_cast<cuuint64_t>(dims[i] < 1 ? 1 : dims[i]);
    for (int i = 0; i < 3; ++i) {
        int64_t st = strides[i];
        if (d[i + 1] == 1) st = (span + 15) / 16 * 16;  // never stepped along: any valid stride
        s[i] = static_cast<cuuint64_t>(st);
        const int64_t reach = st * static_cast<int64_t>(d[i + 1]);
        span = reach > span ? reach : span;
    }
    const cuuint32_t boxes[4] = {static_cast<cuuint32_t>(box0), static_cast<cuuint32_t>(box1), 1, 1};
    const cuuint32_t unit[4] = {1, 1, 1, 1};
    CUtensorMap map;
    const CUtensorMapDataType type = elem == TmaElem::U8     ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                     : elem == TmaElem::BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                             : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    const CUresult r = encode(&map, type, 4,
                              const_cast<void*>(base), d, s, boxes, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                              CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) return cudaErrorInvalidValue;
    static_assert(sizeof(CUtensorMap) == sizeof(TmaMap), "a tensor map is 128 bytes");
    std::memcpy(out, &map, sizeof(map));
    return cudaSuccess;
}

// The descriptor of q, k, v or dO: [b][rows][heads][d] with the call's strides (in elements; varlen: one batch
// of the packed rows), read in boxes of 128 bytes of columns x box_rows rows.
inline cudaError_t encode_qkv(TmaMap* map, const void* data, TmaElem elem, int d, int64_t rows, int heads, int batches,
                              int64_t row_stride, int64_t head_stride, int64_t batch_stride, int box_rows) {
    const int64_t eb = elem == TmaElem::U8 ? 1 : 2;
    const int64_t dims[4] = {d, rows, heads, batches};
    const int64_t strides[3] = {row_stride * eb, head_stride * eb, batch_stride * eb};
    return encode_4d(map, data, elem, dims, strides, static_cast<int>(128 / eb), box_rows);
}

}  // namespace sm90
}  // namespace fa
