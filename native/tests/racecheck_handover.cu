// A minimal kernel for issue 17, and the positive control of gpu-test's racecheck verdict.
//
// Issue 17 asked whether compute-sanitizer's racecheck models a producer/consumer hand-over through a named
// barrier where the producer passes with bar.arrive (no wait) and the consumer waits with bar.sync: the sm90
// D = 256 backward's P^T hand-over drew racecheck hazards on exactly those stores and reads. This is that
// pattern cut down: two warpgroups; per iteration warpgroup 0 writes a shared tile and signals named barrier
// 1, warpgroup 1 waits on it and reads the tile (other threads' elements); a __syncthreads at the top of each
// iteration orders the next writes after the previous reads. The program is correct in every mode but `none`
// (the PTX memory model makes bar.arrive synchronize with the bar.sync that completes the barrier); the data
// check proves it ran as written.
//
// Measured on the H200 (nvcc 13.0): racecheck reports the real race (`none`) and nothing for either hand-over,
// so the tool does model bar.arrive here: the backward's report was not this pattern failing in isolation.
// The backward now hands over with one CTA-wide barrier (sm90/bwd_kernel.cuh), which racecheck, synccheck and
// the others pass.
//
// Modes (argv[1]):
//   arrive  warpgroup 0 bar.arrive, warpgroup 1 bar.sync   (the backward's former pattern; correct)
//   sync    both bar.sync                                  (the same hand-over, both waiting; correct)
//   none    no named barrier                               (a real race: the positive control for racecheck)
//   mbar    mbarriers instead, both ways, no CTA barrier in the loop: each warp of warpgroup 0 writes, __syncwarp, and
//           its lane 0 arrives on `full` (4 arrivals a phase); warpgroup 1 waits for the phase, reads, and its warps
//           arrive likewise on `empty`, which warpgroup 0 waits for before the next writes (the sm90 forward's
//           dropout masks, FA_SM90_FWD_DROPOUT_MASKER_MAX_D; correct: arrive releases, the wait acquires). Not part
//           of gpu-test's verdict (tools/run_sanitizers.py --handover runs the three above): a probe of whether
//           racecheck models the pattern.
// Exit code 0 when the consumer read what the producer wrote in every iteration (for `none` any outcome).
// tools/run_sanitizers.py --handover runs the three modes under racecheck: the real race must be reported and
// the bar.sync hand-over must not, or gpu-test's racecheck verdict fails.
#include <cstdio>
#include <cstring>

namespace {

constexpr int kIters = 8;
constexpr int kTile = 64 * 64;  // floats: 16 KB, the size of the backward's P^T hand-over

__device__ __forceinline__ void named_arrive(int id, int count) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_sync(int id, int count) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// mbarrier wrappers (mode mbar): arrive (release, CTA scope) and a wait for the phase of `parity` (acquire).
__device__ __forceinline__ void mb_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mb_arrive(unsigned bar) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mb_wait(unsigned bar, unsigned parity) {
    unsigned done = 0;
    do {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        // (the kernels' form, sm90/async.cuh mbar_wait: the probe must use the instruction racecheck sees there)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
#else
        asm volatile("{\n.reg .pred p;\nmbarrier.test_wait.parity.shared.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
#endif
    } while (!done);
}

__global__ void __launch_bounds__(256, 1) handover(int mode, unsigned* bad) {
    __shared__ float tile[kTile];
    __shared__ __align__(8) unsigned long long bars[2];  // mode mbar: full, empty
    const int tid = threadIdx.x, wg = tid / 128, t = tid % 128;
    const unsigned full = static_cast<unsigned>(__cvta_generic_to_shared(&bars[0]));
    const unsigned empty = static_cast<unsigned>(__cvta_generic_to_shared(&bars[1]));
    if (mode == 3 && tid == 0) {
        mb_init(full, 4);
        mb_init(empty, 4);
    }
    __syncthreads();
    unsigned wrong = 0;
    for (int it = 0; it < kIters; ++it) {
        if (mode != 3) __syncthreads();  // the previous iteration's reads are done
        if (wg == 0) {
            if (mode == 3) mb_wait(empty, (it & 1) ^ 1);  // (a fresh barrier: parity 1 passes at once)
            for (int i = t; i < kTile; i += 128) tile[i] = static_cast<float>(it * kTile + i);
            if (mode == 0) named_arrive(1, 256);
            if (mode == 1) named_sync(1, 256);
            if (mode == 3) {
                __syncwarp();
                if (t % 32 == 0) mb_arrive(full);
            }
        } else {
            if (mode == 3) mb_wait(full, it & 1);
            if (mode == 0 || mode == 1) named_sync(1, 256);
            // Read other threads' elements (a rotated index), as the backward's warpgroup 1 reads what a
            // thread of warpgroup 0 wrote.
            for (int i = t; i < kTile; i += 128) {
                const int j = (i + 4096 / 2 + 37) % kTile;
                wrong += tile[j] != static_cast<float>(it * kTile + j);
            }
            if (mode == 3) {
                __syncwarp();
                if (t % 32 == 0) mb_arrive(empty);
            }
        }
    }
    if (wrong) atomicAdd(bad, wrong);
}

}  // namespace

int main(int argc, char** argv) {
    const char* name = argc > 1 ? argv[1] : "arrive";
    int mode = -1;
    if (!std::strcmp(name, "arrive")) mode = 0;
    if (!std::strcmp(name, "sync")) mode = 1;
    if (!std::strcmp(name, "none")) mode = 2;
    if (!std::strcmp(name, "mbar")) mode = 3;
    if (mode < 0) {
        std::fprintf(stderr, "usage: racecheck_handover arrive|sync|none|mbar\n");
        return 2;
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::printf("HANDOVER %s: no CUDA device; skipped\n", name);
        return 77;
    }
    unsigned* bad = nullptr;
    unsigned host_bad = 0;
    if (cudaMalloc(&bad, sizeof(unsigned)) != cudaSuccess || cudaMemset(bad, 0, sizeof(unsigned)) != cudaSuccess) {
        std::printf("HANDOVER %s: allocation failed\n", name);
        return 1;
    }
    handover<<<1, 256>>>(mode, bad);
    const cudaError_t err = cudaDeviceSynchronize();
    cudaMemcpy(&host_bad, bad, sizeof(unsigned), cudaMemcpyDeviceToHost);
    cudaFree(bad);
    if (err != cudaSuccess) {
        std::printf("HANDOVER %s: %s\n", name, cudaGetErrorString(err));
        return 1;
    }
    std::printf("HANDOVER %s: %u wrong reads of %d\n", name, host_bad, kIters * kTile);
    return (mode == 2 || host_bad == 0) ? 0 : 1;
}
