// Issue 16: the deterministic backward's bounded wait for its turn on dQ, through the C ABI.
//
// Two deterministic calls in flight that share a workspace reset each other's turn counters, and a block can
// then wait for a turn that never comes. The kernel bounds the wait (FLASH_ATTENTION_DETERMINISTIC_WAIT_MS,
// read when the context is created), gives up, and marks the context; the host reports
// FA_STATUS_DEVICE_CHECK_FAILED once, from fa_context_check or from the next launching call, which then
// launches nothing. This program makes the lost turn (nearly) certain: a "poison" kernel on a second stream keeps
// overwriting the workspace's turn counters with a value no turn ever has (or with 0), while a deterministic
// backward runs on the first stream. Without the bound the backward never ends (ctest's time limit fails it).
//
// Checked, per kernel path the GPU serves (sm80; sm90 on a Hopper GPU with a 90a build):
//   - a clean deterministic backward reports nothing and is bit-for-bit repeatable (the bound does not fire);
//   - with counters poisoned to a value no turn has, the backward's stream finishes well within the poison's run,
//     fa_context_check then reports DEVICE_CHECK_FAILED naming the deterministic backward, and a second
//     fa_context_check succeeds;
//   - with counters reset to 0 over and over (what another call sharing the workspace does), the stream finishes
//     after at least one full bounded wait, and the loss is reported;
//   - after another poisoned call, the next fa_forward reports it, launches nothing (its poisoned output stays
//     as it was) and the one after succeeds;
//   - afterwards a clean deterministic backward again equals the first one bit for bit (nothing sticky);
//   - two deterministic calls sharing a workspace on two streams, repeated, always end (the real misuse).
// Also: an unparsable FLASH_ATTENTION_DETERMINISTIC_WAIT_MS makes fa_context_create fail naming it.
// Exit code 77 (skipped) without a GPU.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "flash_attention.h"
#include "c_test_util.h"

namespace {

constexpr int32_t kNoTurn = 0x3fffffff;  // never a turn count; as a float about 2.0 (finite)
constexpr int kWaitMs = 300;             // the bound this test sets
constexpr double kPoisonSeconds = 2.0;   // how long the poison kernel overwrites the workspace
constexpr int64_t kTurnBytes = 768;      // the workspace's turn counters and give-up word (Problem)

__global__ void fill_bf16(uint16_t* x, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        const float f = (static_cast<float>(h & 0xffff) / 65536.f - 0.5f) * 2.f;  // [-1, 1)
        uint32_t bits;
        memcpy(&bits, &f, 4);
        x[i] = static_cast<uint16_t>(bits >> 16);
    }
}

// Writes `value` over ints [first, n) of the workspace again and again for `ns` nanoseconds.
__global__ void poison(int32_t* ws, int64_t first, int64_t n, int32_t value, volatile int32_t* started, long long ns) {
    long long t0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    if (threadIdx.x == 0) {
        *started = 1;
        __threadfence_system();
    }
    for (;;) {
        long long now;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        if (now - t0 > ns) break;
        for (int64_t i = first + threadIdx.x; i < n; i += blockDim.x) reinterpret_cast<volatile int32_t*>(ws)[i] = value;
    }
}

bool cuda_ok(cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
        CHECK(0, "%s: %s", what, cudaGetErrorString(e));
        return false;
    }
    return true;
}

struct Problem {
    int64_t b = 2, s = 512, h = 4, d = 64;
    // White-box (dispatch.cpp bwd_workspace_layout): the deterministic workspace ends with one turn counter per (dQ
    // copy (kBwdDetDqCopies, 2), batch, head, 64-row query block) and the give-up word, rounded up to 256 bytes:
    // (2 * 2 * 4 * 8 + 1) * 4 = 516 -> 768 bytes. A build with another FA_BWD_DET_DQ_COPIES (an experiment; the A/B
    // builds turn the tests off) changes it: 1 copy 512 bytes (the poison would reach lse_log2), 3 copies 1792.
    void *q, *k, *v, *o, *dout, *lse, *dq, *dk, *dv, *ws;
    size_t ws_bytes = 0;
    int64_t elems() const { return b * s * h * d; }
};

void set_bwd(fa_backward_params_t* p, const Problem& P, int32_t path, void* dq, void* ws) {
    fa_backward_params_init(p, sizeof(*p));
    const int64_t shape[4] = {P.b, P.s, P.h, P.d};
    const int64_t lse_shape[3] = {P.b, P.h, P.s};
    set_dense(&p->q, P.q, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->k, P.k, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->v, P.v, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->out, P.o, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->dout, P.dout, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->lse, P.lse, FA_DTYPE_FLOAT32, 3, lse_shape);
    set_dense(&p->dq, dq, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->dk, P.dk, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->dv, P.dv, FA_DTYPE_BFLOAT16, 4, shape);
    p->causal = 1;
    p->kernel_path = path;
    p->deterministic = 1;
    p->workspace = ws;
    p->workspace_size = P.ws_bytes;
}

void set_fwd(fa_forward_params_t* p, const Problem& P, int32_t path, void* out) {
    fa_forward_params_init(p, sizeof(*p));
    const int64_t shape[4] = {P.b, P.s, P.h, P.d};
    const int64_t lse_shape[3] = {P.b, P.h, P.s};
    set_dense(&p->q, P.q, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->k, P.k, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->v, P.v, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->out, out, FA_DTYPE_BFLOAT16, 4, shape);
    set_dense(&p->lse, P.lse, FA_DTYPE_FLOAT32, 3, lse_shape);
    p->causal = 1;
    p->kernel_path = path;
}

std::vector<uint16_t> to_host(const void* dev, int64_t n) {
    std::vector<uint16_t> h(static_cast<size_t>(n));
    cudaMemcpy(h.data(), dev, n * 2, cudaMemcpyDeviceToHost);
    return h;
}

// A deterministic backward on `stream` while the poison kernel overwrites, on `other`, the workspace's last kTurnBytes
// (white-box: the turn counters and the give-up word are the layout's last part, kTurnBytes for this problem,
// dispatch.cpp bwd_workspace_layout), each int rewritten every few hundred ns, with `value`. kNoTurn: counters no
// turn ever matches and a set give-up word, so blocks leave at their first wait. 0: the counters reset over and
// over, as by another call sharing the workspace, so a block whose turn is 2 or later is very unlikely to see it
// and waits out the bound. Returns the seconds until `stream` was done (the poison may still run), or a negative
// number when a call failed.
double poisoned_backward(fa_context_t ctx, const Problem& P, int32_t path, cudaStream_t stream, cudaStream_t other,
                         volatile int32_t* started, int32_t value, double poison_seconds) {
    *started = 0;
    const int64_t n = static_cast<int64_t>(P.ws_bytes / 4);
    poison<<<1, 128, 0, other>>>(static_cast<int32_t*>(P.ws), n - kTurnBytes / 4, n, value, started,
                                 static_cast<long long>(poison_seconds * 1e9));
    if (!cuda_ok(cudaGetLastError(), "launching the poison kernel")) return -1;
    const auto t0 = std::chrono::steady_clock::now();
    while (*started == 0) {
        if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(5)) {
            CHECK(0, "the poison kernel did not start within 5 s");
            return -1;
        }
    }
    fa_backward_params_t bp;
    set_bwd(&bp, P, path, P.dq, P.ws);
    const auto t1 = std::chrono::steady_clock::now();
    if (!expect("poisoned deterministic fa_backward (launch)", fa_backward(ctx, &bp, stream), FA_STATUS_SUCCESS, NULL))
        return -1;
    if (!cuda_ok(cudaStreamSynchronize(stream), "waiting for the poisoned backward")) return -1;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    if (!cuda_ok(cudaStreamSynchronize(other), "waiting for the poison kernel")) return -1;
    return secs;
}

void run_path(fa_context_t ctx, int32_t path, const char* name, cudaStream_t s1, cudaStream_t s2,
              volatile int32_t* started) {
    printf("path %s\n", name);
    Problem P;
    const int64_t n = P.elems();
    void** bufs[] = {&P.q, &P.k, &P.v, &P.o, &P.dout, &P.dq, &P.dk, &P.dv};
    for (void** b : bufs) {
        if (!cuda_ok(cudaMalloc(b, n * 2), "cudaMalloc")) return;
    }
    if (!cuda_ok(cudaMalloc(&P.lse, P.b * P.h * P.s * 4), "cudaMalloc lse")) return;
    uint32_t seed = 1234;
    for (void* b : {P.q, P.k, P.v, P.dout}) fill_bf16<<<256, 256>>>(static_cast<uint16_t*>(b), n, seed += 77);
    fa_forward_params_t fp;
    set_fwd(&fp, P, path, P.o);
    if (!expect("forward (out, lse)", fa_forward(ctx, &fp, nullptr), FA_STATUS_SUCCESS, NULL)) return;
    fa_backward_params_t bp;
    set_bwd(&bp, P, path, P.dq, nullptr);
    if (!expect("fa_backward_workspace_size", fa_backward_workspace_size(ctx, &bp, &P.ws_bytes), FA_STATUS_SUCCESS,
                NULL))
        return;
    if (!cuda_ok(cudaMalloc(&P.ws, P.ws_bytes), "cudaMalloc workspace")) return;
    if (!cuda_ok(cudaDeviceSynchronize(), "setup")) return;

    // A clean deterministic backward: nothing reported, repeatable bit for bit.
    set_bwd(&bp, P, path, P.dq, P.ws);
    expect("clean deterministic fa_backward", fa_backward(ctx, &bp, s1), FA_STATUS_SUCCESS, NULL);
    cuda_ok(cudaStreamSynchronize(s1), "clean backward");
    expect("fa_context_check after a clean call", fa_context_check(ctx), FA_STATUS_SUCCESS, NULL);
    const std::vector<uint16_t> dq0 = to_host(P.dq, n);
    cudaMemset(P.dq, 0xff, n * 2);
    expect("clean deterministic fa_backward, again", fa_backward(ctx, &bp, s1), FA_STATUS_SUCCESS, NULL);
    cuda_ok(cudaStreamSynchronize(s1), "clean backward again");
    CHECK(to_host(P.dq, n) == dq0, "%s: two clean deterministic backwards differ", name);

    // Counters that no turn matches: the stream ends long before the poison does; fa_context_check reports it
    // once.
    double secs = poisoned_backward(ctx, P, path, s1, s2, started, kNoTurn, kPoisonSeconds);
    if (secs < 0) return;
    printf("  counters poisoned: the backward's stream done after %.3f s (bound %d ms, poison %.1f s)\n", secs,
           kWaitMs, kPoisonSeconds);
    CHECK(secs < 0.6 * kPoisonSeconds, "%s: the poisoned backward took %.3f s: its waits did not give up", name, secs);
    expect("fa_context_check after the poisoned call", fa_context_check(ctx), FA_STATUS_DEVICE_CHECK_FAILED,
           "deterministic fa_backward");
    expect("fa_context_check again (reported once)", fa_context_check(ctx), FA_STATUS_SUCCESS, NULL);

    // Counters reset to 0 over and over (the give-up word too): each lost turn waits out the bound, then leaves.
    secs = poisoned_backward(ctx, P, path, s1, s2, started, 0, 1.0);
    if (secs < 0) return;
    printf("  counters reset: the backward's stream done after %.3f s (bound %d ms, poison 1.0 s)\n", secs, kWaitMs);
    CHECK(secs >= 0.9 * kWaitMs / 1000.0 && secs < 30.0,
          "%s: the backward with reset counters took %.3f s: expected at least one bounded wait of %d ms", name, secs,
          kWaitMs);
    expect("fa_context_check after the reset counters", fa_context_check(ctx), FA_STATUS_DEVICE_CHECK_FAILED,
           "gave up waiting");

    // Poisoned again: the next fa_forward reports it and launches nothing.
    if (poisoned_backward(ctx, P, path, s1, s2, started, kNoTurn, kPoisonSeconds) < 0) return;
    void* out2 = nullptr;
    if (!cuda_ok(cudaMalloc(&out2, n * 2), "cudaMalloc out2")) return;
    cudaMemset(out2, 0xff, n * 2);  // bf16 NaN pattern
    cudaDeviceSynchronize();
    set_fwd(&fp, P, path, out2);
    fp.lse.data = nullptr;
    memset(&fp.lse, 0, sizeof(fp.lse));
    expect("fa_forward after a poisoned call", fa_forward(ctx, &fp, s1), FA_STATUS_DEVICE_CHECK_FAILED,
           "launched nothing");
    cudaStreamSynchronize(s1);
    const std::vector<uint16_t> untouched = to_host(out2, n);
    bool all_ff = true;
    for (uint16_t x : untouched) all_ff &= x == 0xffff;
    CHECK(all_ff, "%s: the refused fa_forward wrote its output", name);
    expect("fa_forward after the report", fa_forward(ctx, &fp, s1), FA_STATUS_SUCCESS, NULL);
    cuda_ok(cudaStreamSynchronize(s1), "forward after the report");
    cudaFree(out2);

    // Nothing sticky: a clean deterministic backward equals the first one.
    set_bwd(&bp, P, path, P.dq, P.ws);
    expect("clean deterministic fa_backward after the poison", fa_backward(ctx, &bp, s1), FA_STATUS_SUCCESS, NULL);
    cuda_ok(cudaStreamSynchronize(s1), "clean backward after the poison");
    CHECK(to_host(P.dq, n) == dq0, "%s: the deterministic backward after the poison differs from before", name);
    expect("fa_context_check after the clean call", fa_context_check(ctx), FA_STATUS_SUCCESS, NULL);

    // The real misuse: two calls in flight on two streams share one workspace. Each round must end; a lost
    // turn is reported, never a hang.
    void* dq2 = nullptr;
    if (!cuda_ok(cudaMalloc(&dq2, n * 2), "cudaMalloc dq2")) return;
    int reported = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int round = 0; round < 20; ++round) {
        fa_backward_params_t a, b;
        set_bwd(&a, P, path, P.dq, P.ws);
        set_bwd(&b, P, path, dq2, P.ws);
        fa_backward(ctx, &a, s1);
        fa_backward(ctx, &b, s2);
        cudaStreamSynchronize(s1);
        cudaStreamSynchronize(s2);
        reported += fa_context_check(ctx) == FA_STATUS_DEVICE_CHECK_FAILED;
    }
    const double shared_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("  shared workspace, 20 rounds on two streams: %.3f s, %d rounds reported a lost turn\n", shared_secs,
           reported);
    CHECK(cuda_ok(cudaGetLastError(), "after the shared-workspace rounds"), "%s: a CUDA error is left", name);
    cudaFree(dq2);
    for (void** b : bufs) cudaFree(*b);
    cudaFree(P.lse);
    cudaFree(P.ws);
}

}  // namespace

int main() {
    int32_t count = 0;
    const fa_status_t st = fa_device_count(&count);
    if (st == FA_STATUS_NO_DEVICE || count == 0) {
        printf("det_wait_test: skipped (no CUDA device: %s)\n", fa_last_error_message());
        return 77;
    }
    // An unparsable bound is refused at context creation, naming the variable.
    fa_context_t ctx = nullptr;
    setenv("FLASH_ATTENTION_DETERMINISTIC_WAIT_MS", "12ms", 1);
    expect("fa_context_create with FLASH_ATTENTION_DETERMINISTIC_WAIT_MS=12ms", fa_context_create(0, &ctx),
           FA_STATUS_INVALID_ARGUMENT, "FLASH_ATTENTION_DETERMINISTIC_WAIT_MS");
    CHECK(ctx == nullptr, "a refused fa_context_create left a context");
    char bound[32];
    snprintf(bound, sizeof(bound), "%d", kWaitMs);
    setenv("FLASH_ATTENTION_DETERMINISTIC_WAIT_MS", bound, 1);
    if (!expect("fa_context_create", fa_context_create(0, &ctx), FA_STATUS_SUCCESS, NULL)) return 1;
    expect("fa_context_check on a new context", fa_context_check(ctx), FA_STATUS_SUCCESS, NULL);
    expect("fa_context_check(NULL)", fa_context_check(nullptr), FA_STATUS_INVALID_ARGUMENT, "context");

    cudaStream_t s1, s2;
    cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking);
    int32_t* started = nullptr;
    cudaHostAlloc(reinterpret_cast<void**>(&started), 4, cudaHostAllocMapped);
    fa_device_properties_t props;
    memset(&props, 0, sizeof(props));
    props.struct_size = sizeof(props);
    fa_device_get_properties(0, &props);

    run_path(ctx, FA_PATH_SM80, "sm80", s1, s2, started);
    fa_support_query_t q;
    memset(&q, 0, sizeof(q));
    q.struct_size = sizeof(q);
    q.pass = FA_PASS_BACKWARD;
    q.dtype = FA_DTYPE_BFLOAT16;
    q.head_dim = 64;
    q.kernel_path = FA_PATH_SM90;
    q.compute_capability = props.major * 10 + props.minor;
    if (fa_query_support(&q) == FA_STATUS_SUCCESS) {
        run_path(ctx, FA_PATH_SM90, "sm90", s1, s2, started);
    } else {
        printf("path sm90: not served here (%s)\n", fa_last_error_message());
    }
    fa_context_destroy(ctx);
    cudaFreeHost(started);
    printf("det_wait_test: %d checks passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
