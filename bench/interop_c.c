/*
 * interop_c.c - host cost of one fa_forward call made straight from C, the baseline for the managed
 * API's interop cost (TARGETS.md: a managed Forward call within 5 us of the same launch from C).
 *
 * Same shape and method as FlashAttention.Bench --interop: bf16, b 1, s 128, h 1, d 64 (q = k = v,
 * one output), not causal; a warm-up of about WARMUP_MS of calls, then BATCHES batches of
 * CALLS_PER_BATCH calls, each batch started on an idle stream (synchronised before) and timed on the
 * host with a monotonic clock; the median (and minimum) per-call time over the batches is printed as one
 * JSON line: {"pass":"interop_c", ..., "call_us":..., "min_call_us":...}.
 *
 * Build (bench/run.py does this on the GPU machine):
 *   cc -O2 bench/interop_c.c -Inative/include -L<libdir> -lflash_attention -Wl,-rpath,<libdir> -o interop_c
 * Exit codes: 0 measured; 3 no CUDA device (prints a NO_DEVICE line on stderr); 1 any other failure.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flash_attention.h"

enum { B = 1, S = 128, H = 1, D = 64, BATCHES = 20, CALLS_PER_BATCH = 100, WARMUP_MS = 300 };

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void* a, const void* b)
{
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

/* Prints the failure and returns the exit code for it (3 for no device, 1 otherwise). */
static int fail(const char* what, fa_status_t st)
{
    if (st == FA_STATUS_NO_DEVICE) {
        fprintf(stderr, "NO_DEVICE: %s: %s: %s\n", what, fa_status_string(st), fa_last_error_message());
        return 3;
    }
    fprintf(stderr, "interop_c: %s failed: %s: %s\n", what, fa_status_string(st), fa_last_error_message());
    return 1;
}

static void describe(fa_tensor_t* t, void* data)
{
    memset(t, 0, sizeof *t);
    t->data = data;
    t->dtype = FA_DTYPE_BFLOAT16;
    t->rank = 4;
    t->shape[0] = B;
    t->shape[1] = S;
    t->shape[2] = H;
    t->shape[3] = D;
    t->strides[3] = 1;
    t->strides[2] = D;
    t->strides[1] = (int64_t)H * D;
    t->strides[0] = (int64_t)S * H * D;
}

int main(void)
{
    int rc = 1;
    fa_status_t st;
    int32_t count = 0;
    fa_context_t ctx = NULL;
    void* stream = NULL;
    void* qkv = NULL;
    void* out = NULL;
    const size_t bytes = (size_t)B * S * H * D * 2;
    double per_call[BATCHES];

    st = fa_device_count(&count);
    if (st != FA_STATUS_SUCCESS) {
        return fail("fa_device_count", st);
    }
    if (count < 1) {
        fprintf(stderr, "NO_DEVICE: fa_device_count reports no CUDA device\n");
        return 3;
    }
    if ((st = fa_context_create(0, &ctx)) != FA_STATUS_SUCCESS) {
        return fail("fa_context_create", st);
    }
    if ((st = fa_stream_create(0, &stream)) != FA_STATUS_SUCCESS) {
        rc = fail("fa_stream_create", st);
        goto done;
    }
    if ((st = fa_memory_alloc(0, bytes, &qkv)) != FA_STATUS_SUCCESS ||
        (st = fa_memory_alloc(0, bytes, &out)) != FA_STATUS_SUCCESS) {
        rc = fail("fa_memory_alloc", st);
        goto done;
    }
    {
        /* Small finite inputs (bf16 bit patterns of values in [-1, 1)); the values do not matter for a
           host-side timing, but they must not be NaN. */
        unsigned short* host = malloc(bytes);
        size_t i;
        if (host == NULL) {
            fprintf(stderr, "interop_c: out of host memory\n");
            goto done;
        }
        srand(7);
        for (i = 0; i < bytes / 2; i++) {
            float x = (float)rand() / (float)RAND_MAX * 2.0f - 1.0f;
            unsigned int bits;
            memcpy(&bits, &x, sizeof bits);
            host[i] = (unsigned short)(bits >> 16);
        }
        st = fa_memcpy(qkv, host, bytes);
        free(host);
        if (st != FA_STATUS_SUCCESS) {
            rc = fail("fa_memcpy", st);
            goto done;
        }
    }

    fa_forward_params_t p;
    if ((st = fa_forward_params_init(&p, sizeof p)) != FA_STATUS_SUCCESS) {
        rc = fail("fa_forward_params_init", st);
        goto done;
    }
    describe(&p.q, qkv);
    describe(&p.k, qkv);
    describe(&p.v, qkv);
    describe(&p.out, out);

    /* Warm-up: the first launch loads the module; keep calling for WARMUP_MS so clocks and caches settle,
       with the same batch shape as the measurement. */
    {
        double t_end = now_us() + WARMUP_MS * 1000.0;
        do {
            int i;
            if ((st = fa_stream_synchronize(stream)) != FA_STATUS_SUCCESS) {
                rc = fail("fa_stream_synchronize", st);
                goto done;
            }
            for (i = 0; i < CALLS_PER_BATCH; i++) {
                if ((st = fa_forward(ctx, &p, stream)) != FA_STATUS_SUCCESS) {
                    rc = fail("fa_forward", st);
                    goto done;
                }
            }
        } while (now_us() < t_end);
    }

    for (int rep = 0; rep < BATCHES; rep++) {
        if ((st = fa_stream_synchronize(stream)) != FA_STATUS_SUCCESS) {
            rc = fail("fa_stream_synchronize", st);
            goto done;
        }
        double t0 = now_us();
        for (int i = 0; i < CALLS_PER_BATCH; i++) {
            st = fa_forward(ctx, &p, stream);
            if (st != FA_STATUS_SUCCESS) {
                rc = fail("fa_forward", st);
                goto done;
            }
        }
        double t1 = now_us();
        per_call[rep] = (t1 - t0) / CALLS_PER_BATCH;
    }
    if ((st = fa_stream_synchronize(stream)) != FA_STATUS_SUCCESS) {
        rc = fail("fa_stream_synchronize", st);
        goto done;
    }
    qsort(per_call, BATCHES, sizeof per_call[0], cmp_double);
    printf("{\"pass\": \"interop_c\", \"dtype\": \"bf16\", \"b\": %d, \"h\": %d, \"sq\": %d, \"sk\": %d, \"d\": %d, "
           "\"batches\": %d, \"calls_per_batch\": %d, \"call_us\": %.4f, \"min_call_us\": %.4f}\n",
           B, H, S, S, D, BATCHES, CALLS_PER_BATCH, per_call[BATCHES / 2], per_call[0]);
    fflush(stdout);
    rc = 0;

done:
    fa_stream_synchronize(stream);
    fa_memory_free(0, out);
    fa_memory_free(0, qkv);
    fa_stream_destroy(stream);
    fa_context_destroy(ctx);
    return rc;
}
