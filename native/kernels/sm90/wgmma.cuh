// Hopper warpgroup MMA (wgmma, sm_90a): shared-memory matrix descriptors, the async fences, stmatrix, and
// m64nNk16 (N = 32, 64, 128, 176, 256) with fp32 accumulators for bf16/fp16 inputs and m64nNk32 (N = 64, 128,
// 256) for e4m3 inputs, A from shared memory (SS) or from registers (RS). Only compiled into sm_90a code (FA_SM90A_DEVICE); elsewhere the bodies are empty
// and the kernels that use them are never launched (the host picks the sm90 path only on cc 9.0 in a
// build with 90a). FA_SM90A_SYNTAX_CHECK compiles the bodies to PTX on an older nvcc/arch (-ptx only), to
// check the C++ without a Hopper toolchain.
//
// Accumulator layout of m64nN (per thread, N/2 floats): warp w of the warpgroup holds rows 16w..16w+15;
// for each n8 column block j, d[4j + 0/1] are (row 16w + lane/4, cols 8j + 2(lane%4) + 0/1) and
// d[4j + 2/3] the same columns 8 rows down: mma.sync's m16n8 C layout, repeated. A in registers for RS
// is mma.sync's m16n8k16 A layout for the warp's 16 rows.
#pragma once
#include <cstdint>

#if defined(__CUDA_ARCH__) && (defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(FA_SM90A_SYNTAX_CHECK))
#define FA_SM90A_DEVICE 1
#endif

namespace fa {
namespace sm90 {

// Descriptor of a 128-byte-swizzled shared-memory operand (KERNELS.md 4.6). lbo/sbo in bytes:
// K-major: sbo = 1024 (8 rows of 128 B), lbo unused. MN-major: lbo = bytes between 64-element panels
// along M/N, sbo = 1024 (8 rows of K). Tiles start on 1024-byte boundaries (base offset 0).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    uint64_t d = 0;
    d |= static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
    d |= static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16;
    d |= static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32;
    d |= static_cast<uint64_t>(1) << 62;  // 128-byte swizzle
    return d;
}
// Descriptor of an operand without swizzle (layout type 0, "interleave"): core matrices of 8 rows x 16 bytes, each
// 128 contiguous bytes (row r of one at 16 r). K-major: lbo = bytes from the core matrix of k 0..7 to that of
// k 8..15 (16-bit types), sbo = bytes from one group of 8 rows to the next (PTX ISA, wgmma shared memory layouts:
// ((8,m),(T,2k)):((1T,SBO),(1,LBO)) in 16-byte units). The address needs 16-byte alignment only.
__device__ __forceinline__ uint64_t smem_desc_noswizzle(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    uint64_t d = 0;
    d |= static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
    d |= static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16;
    d |= static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32;
    return d;
}

__device__ __forceinline__ void wgmma_fence() {
#ifdef FA_SM90A_DEVICE
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef FA_SM90A_DEVICE
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef FA_SM90A_DEVICE
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Generic-proxy shared-memory writes (st.shared, cp.async) made visible to wgmma's async proxy; each
// writing thread issues it before the barrier that publishes the data.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef FA_SM90A_DEVICE
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// stmatrix (sm_90): the warp stores four 8 x 8 matrices of 16-bit elements. Lanes 8i .. 8i + 7 give the shared-memory
// addresses of rows 0..7 of matrix i (16 bytes each, 16-byte aligned), and register ri of lane l holds row l / 4,
// elements 2 (l % 4) and 2 (l % 4) + 1 of matrix i (the lower in the low half): ldmatrix's fragment layout, stored.
// It is an 8 x 8 block of the m64nN accumulator layout above, packed to 16 bits (rows 16w + l / 4, columns 8j + 2 (l % 4)),
// so four such blocks store with one instruction instead of four 32-bit stores per lane.
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
#ifdef FA_SM90A_DEVICE
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
                 "r"(r2), "r"(r3)
                 : "memory");
#else
    (void)addr, (void)r0, (void)r1, (void)r2, (void)r3;
#endif
}
// Keeps the compiler from moving reads or writes of accumulator registers across the async region.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// Named barriers (id 1..15; 0 is __syncthreads'): arrive without waiting, or wait for `count` threads.
__device__ __forceinline__ void bar_arrive(int id, int count) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_sync(int id, int count) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
// The same without .aligned, for a barrier whose participants reach it at different instructions (PTX: an aligned
// barrier is one instruction for every thread that takes part; synccheck reports the other use).
__device__ __forceinline__ void barrier_arrive(int id, int count) {
    asm volatile("barrier.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void barrier_sync(int id, int count) {
    asm volatile("barrier.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

// d (+)= A B; scale_d 0 overwrites d. TA/TB: 0 K-major, 1 MN-major (transposed) operand.
template <typename T, int N, int TA, int TB>
struct Wgmma;

// One specialisation per (dtype, N), all from FA_WGMMA below. Operand numbering: the N/2 accumulators are
// %0 .. %(N/2 - 1) (FA_WGMMA_D<N>); then, for ss, a, b, scale_d, TA, TB; for rs, a[0..3], b, scale_d, TB.
// I0..I6 are the numbers after the accumulators, as strings (the PTX template needs them literally).
#define FA_WGMMA_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define FA_WGMMA_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define FA_WGMMA_D80 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39}"
#define FA_WGMMA_D96 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}"
#define FA_WGMMA_D112 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55}"
#define FA_WGMMA_D128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define FA_WGMMA_D144 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71}"
#define FA_WGMMA_D160 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79}"
#define FA_WGMMA_D176 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87}"
#define FA_WGMMA_D192 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}"
#define FA_WGMMA_D224 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111}"
#define FA_WGMMA_D256 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
// The accumulators' output operands: FA_WGMMA_O<R> lists "+f"(d[0]) .. "+f"(d[R - 1]).
#define FA_WGMMA_Q4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define FA_WGMMA_Q16(i) FA_WGMMA_Q4(i), FA_WGMMA_Q4(i + 4), FA_WGMMA_Q4(i + 8), FA_WGMMA_Q4(i + 12)
#define FA_WGMMA_O16 FA_WGMMA_Q16(0)
#define FA_WGMMA_O32 FA_WGMMA_O16, FA_WGMMA_Q16(16)
#define FA_WGMMA_O40 FA_WGMMA_O32, FA_WGMMA_Q4(32), FA_WGMMA_Q4(36)
#define FA_WGMMA_O48 FA_WGMMA_O32, FA_WGMMA_Q16(32)
#define FA_WGMMA_O56 FA_WGMMA_O48, FA_WGMMA_Q4(48), FA_WGMMA_Q4(52)
#define FA_WGMMA_O64 FA_WGMMA_O32, FA_WGMMA_Q16(32), FA_WGMMA_Q16(48)
#define FA_WGMMA_O72 FA_WGMMA_O64, FA_WGMMA_Q4(64), FA_WGMMA_Q4(68)
#define FA_WGMMA_O80 FA_WGMMA_O64, FA_WGMMA_Q16(64)
#define FA_WGMMA_O88 FA_WGMMA_O64, FA_WGMMA_Q16(64), FA_WGMMA_Q4(80), FA_WGMMA_Q4(84)
#define FA_WGMMA_O96 FA_WGMMA_O64, FA_WGMMA_Q16(64), FA_WGMMA_Q16(80)
#define FA_WGMMA_O112 FA_WGMMA_O96, FA_WGMMA_Q16(96)
#define FA_WGMMA_O128 FA_WGMMA_O64, FA_WGMMA_Q16(64), FA_WGMMA_Q16(80), FA_WGMMA_Q16(96), FA_WGMMA_Q16(112)
#define FA_WGMMA_O(R) FA_WGMMA_O##R

#ifdef FA_SM90A_DEVICE
#define FA_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define FA_WGMMA_ASM(...) ((void)0)
#endif

#define FA_WGMMA(TYPE, TNAME, N, R, I0, I1, I2, I3, I4, I5, I6)                                                      \
    template <int TA, int TB>                                                                                       \
    struct Wgmma<TYPE, N, TA, TB> {                                                                                 \
        __device__ __forceinline__ static void ss(float (&d)[R], uint64_t a, uint64_t b, int scale_d) {             \
            FA_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %" I2 ", 0;\n"                                            \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TNAME "." TNAME " " FA_WGMMA_D##N       \
                         ", %" I0 ", %" I1 ", p, 1, 1, %" I3 ", %" I4 ";\n}\n"                                     \
                         : FA_WGMMA_O(R)                                                                           \
                         : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB));                                        \
        }                                                                                                           \
        __device__ __forceinline__ static void rs(float (&d)[R], const uint32_t (&a)[4], uint64_t b, int scale_d) { \
            FA_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %" I5 ", 0;\n"                                            \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TNAME "." TNAME " " FA_WGMMA_D##N       \
                         ", {%" I0 ", %" I1 ", %" I2 ", %" I3 "}, %" I4 ", p, 1, 1, %" I6 ";\n}\n"                \
                         : FA_WGMMA_O(R)                                                                           \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d), "n"(TB));             \
        }                                                                                                           \
    };
FA_WGMMA(__nv_bfloat16, "bf16", 32, 16, "16", "17", "18", "19", "20", "21", "22")
FA_WGMMA(__nv_bfloat16, "bf16", 64, 32, "32", "33", "34", "35", "36", "37", "38")
FA_WGMMA(__nv_bfloat16, "bf16", 80, 40, "40", "41", "42", "43", "44", "45", "46")
FA_WGMMA(__nv_bfloat16, "bf16", 96, 48, "48", "49", "50", "51", "52", "53", "54")
FA_WGMMA(__nv_bfloat16, "bf16", 112, 56, "56", "57", "58", "59", "60", "61", "62")
FA_WGMMA(__nv_bfloat16, "bf16", 128, 64, "64", "65", "66", "67", "68", "69", "70")
FA_WGMMA(__nv_bfloat16, "bf16", 144, 72, "72", "73", "74", "75", "76", "77", "78")
FA_WGMMA(__nv_bfloat16, "bf16", 176, 88, "88", "89", "90", "91", "92", "93", "94")
FA_WGMMA(__nv_bfloat16, "bf16", 192, 96, "96", "97", "98", "99", "100", "101", "102")
FA_WGMMA(__nv_bfloat16, "bf16", 256, 128, "128", "129", "130", "131", "132", "133", "134")
FA_WGMMA(__half, "f16", 32, 16, "16", "17", "18", "19", "20", "21", "22")
FA_WGMMA(__half, "f16", 64, 32, "32", "33", "34", "35", "36", "37", "38")
FA_WGMMA(__half, "f16", 80, 40, "40", "41", "42", "43", "44", "45", "46")
FA_WGMMA(__half, "f16", 96, 48, "48", "49", "50", "51", "52", "53", "54")
FA_WGMMA(__half, "f16", 112, 56, "56", "57", "58", "59", "60", "61", "62")
FA_WGMMA(__half, "f16", 128, 64, "64", "65", "66", "67", "68", "69", "70")
FA_WGMMA(__half, "f16", 144, 72, "72", "73", "74", "75", "76", "77", "78")
FA_WGMMA(__half, "f16", 176, 88, "88", "89", "90", "91", "92", "93", "94")
FA_WGMMA(__half, "f16", 192, 96, "96", "97", "98", "99", "100", "101", "102")
FA_WGMMA(__half, "f16", 256, 128, "128", "129", "130", "131", "132", "133", "134")

// fp8: d (+)= A B with A and B in e4m3, m64nNk32 (both operands K-major: fp8 wgmma has no transpose). rs takes
// A from registers in the 8-bit fragment layout: for the warp's 16 rows, register 0 holds row lane/4 at
// k = 4 (lane % 4) + 0..3 (byte 0 the lowest k), register 1 the same 8 rows down, registers 2 and 3 the same
// at k + 16. Operands: ss a, b, scale_d; rs a[0..3], b, scale_d, after the N/2 accumulators.
template <int N>
struct WgmmaF8;
#define FA_WGMMA8(N, R, I0, I1, I2, I3, I4, I5)                                                                      \
    template <>                                                                                                     \
    struct WgmmaF8<N> {                                                                                             \
        __device__ __forceinline__ static void ss(float (&d)[R], uint64_t a, uint64_t b, int scale_d) {             \
            FA_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %" I2 ", 0;\n"                                           \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 " FA_WGMMA_D##N                 \
                         ", %" I0 ", %" I1 ", p, 1, 1;\n}\n"                                                       \
                         : FA_WGMMA_O(R)                                                                           \
                         : "l"(a), "l"(b), "r"(scale_d));                                                          \
        }                                                                                                           \
        __device__ __forceinline__ static void rs(float (&d)[R], const uint32_t (&a)[4], uint64_t b, int scale_d) { \
            FA_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %" I5 ", 0;\n"                                           \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 " FA_WGMMA_D##N                 \
                         ", {%" I0 ", %" I1 ", %" I2 ", %" I3 "}, %" I4 ", p, 1, 1;\n}\n"                          \
                         : FA_WGMMA_O(R)                                                                           \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d));                      \
        }                                                                                                           \
    };
FA_WGMMA8(64, 32, "32", "33", "34", "35", "36", "37")
FA_WGMMA8(96, 48, "48", "49", "50", "51", "52", "53")  // (the fp8 d256 key-block experiment, FA_SM90_FWD_FP8_BN256)
FA_WGMMA8(128, 64, "64", "65", "66", "67", "68", "69")
FA_WGMMA8(160, 80, "80", "81", "82", "83", "84", "85")  // (the fp8 d128 key-block experiment, FA_SM90_FWD_FP8_BN128)
FA_WGMMA8(192, 96, "96", "97", "98", "99", "100", "101")
FA_WGMMA8(224, 112, "112", "113", "114", "115", "116", "117")
FA_WGMMA8(256, 128, "128", "129", "130", "131", "132", "133")

#undef FA_WGMMA8

// Four floats to e4m3 (round to nearest, saturating to +-448), x0 in the lowest byte: one register of an fp8
// A fragment.
__device__ __forceinline__ uint32_t pack4_e4m3(float x0, float x1, float x2, float x3) {
#ifdef FA_SM90A_DEVICE
    uint16_t lo, hi;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(lo) : "f"(x1), "f"(x0));  // x1 high byte, x0 low
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(hi) : "f"(x3), "f"(x2));
    return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
#else
    (void)x0, (void)x1, (void)x2, (void)x3;
    return 0;
#endif
}
#undef FA_WGMMA
#undef FA_WGMMA_ASM
#undef FA_WGMMA_O
#undef FA_WGMMA_O128
#undef FA_WGMMA_O88
#undef FA_WGMMA_O64
#undef FA_WGMMA_O32
#undef FA_WGMMA_O16
#undef FA_WGMMA_Q16
#undef FA_WGMMA_Q4
#undef FA_WGMMA_D256
#undef FA_WGMMA_D176
#undef FA_WGMMA_D128
#undef FA_WGMMA_D64
#undef FA_WGMMA_D32

}  // namespace sm90
}  // namespace fa
