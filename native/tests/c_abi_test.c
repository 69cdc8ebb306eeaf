/*
 * c_abi_test.c - tests the C ABI of libflash_attention from plain C99, the way another language's
 * binding sees it: only flash_attention.h, no CUDA headers, no C++.
 *
 * Everywhere: version, status strings, last-error behaviour, fa_forward_params_init, argument
 * validation through fa_forward_check (bad inputs with expected statuses and messages, including
 * windows, softcap, variable-length batches, host cu_seqlens, older struct sizes, and the fp8 (e4m3)
 * forward's dtypes, strides, head dims, descales and path), fa_query_support,
 * the kernel names, the graph helpers' argument checks, the log callback, that the last error is per
 * thread, and what the device functions say when there is no GPU.
 * With a GPU (compute capability >= 8.0), against a float64 reference written here (masks, windows,
 * softcap and varlen as the header documents them), outputs poisoned first: a CUDA graph holding one
 * captured fa_forward, replayed on new inputs; fp16/bf16 forwards (causal, GQA/MQA, padded strides);
 * sliding windows and softcap; variable-length batches (empty sequences, sequences without keys);
 * head dims without their own kernel; an fp8 forward with a known output where the build and device serve it
 * (refused, writing nothing, elsewhere).
 *
 * Prints one line per failure, a summary, and returns nonzero if anything failed.
 */
#if defined(__unix__) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* pthreads under -std=c99 */
#endif
#include "flash_attention.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__unix__)
#include <pthread.h>
#define FA_TEST_HAVE_PTHREADS 1
#endif

#ifndef FA_TEST_HEAD_DIM
#define FA_TEST_HEAD_DIM 64
#endif

#include "c_test_util.h"

static void test_half_conversion(void) {
    uint32_t h;
    int mismatches = 0;
    for (h = 0; h < 0x10000u; ++h) {
        const double value = half_to_double((uint16_t)h);
        if (value != value) {
            continue; /* NaN */
        }
        if (float_to_half((float)value) != h) {
            ++mismatches;
        }
    }
    CHECK(mismatches == 0, "half round trip: %d of 63488 values changed", mismatches);
    CHECK(float_to_half(1.0f) == 0x3c00u, "float_to_half(1) = 0x%04x", float_to_half(1.0f));
    CHECK(float_to_half(-2.5f) == 0xc100u, "float_to_half(-2.5) = 0x%04x", float_to_half(-2.5f));
    CHECK(float_to_half(65504.0f) == 0x7bffu, "float_to_half(65504) = 0x%04x", float_to_half(65504.0f));
    CHECK(float_to_half(65520.0f) == 0x7c00u, "float_to_half(65520) = 0x%04x", float_to_half(65520.0f));
    CHECK(float_to_half((float)ldexp(1.0, -24)) == 0x0001u, "float_to_half(2^-24) wrong");
    CHECK(float_to_half((float)ldexp(1.0, -26)) == 0x0000u, "float_to_half(2^-26) wrong");
    CHECK(float_to_half(1.0f + (float)ldexp(1.0, -11)) == 0x3c00u, "tie 1+2^-11 must round to even");
    CHECK(float_to_half(1.0f + 3.0f * (float)ldexp(1.0, -11)) == 0x3c02u, "tie 1+3*2^-11 must round to even");
    CHECK(float_to_bf16(1.0f) == 0x3f80u, "float_to_bf16(1) = 0x%04x", float_to_bf16(1.0f));
    CHECK(float_to_bf16(1.0f + (float)ldexp(1.0, -8)) == 0x3f80u, "bf16 tie 1+2^-8 must round to even");
    CHECK(float_to_bf16(1.0f + 3.0f * (float)ldexp(1.0, -8)) == 0x3f82u, "bf16 tie 1+3*2^-8 must round to even");
    CHECK(bf16_to_double(0xc0a0u) == -5.0, "bf16_to_double(0xc0a0) = %g", bf16_to_double(0xc0a0u));
}

/* ---- random numbers (seeded in main: clock, --seed N or FA_TEST_SEED; the seed is printed) -------- */

static uint64_t g_rng = 0;

static double uniform01(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (double)((g_rng * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}

static double normal01(void) {
    double u1 = uniform01();
    const double u2 = uniform01();
    if (u1 < 1e-300) {
        u1 = 1e-300;
    }
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- tensors ------------------------------------------------------------------------------- */

static void set_tensor4(fa_tensor_t* t, void* data, int32_t dtype, int64_t n0, int64_t n1, int64_t n2, int64_t n3,
                        int64_t row_pad) {
    memset(t, 0, sizeof(*t));
    t->data = data;
    t->dtype = dtype;
    t->rank = 4;
    t->shape[0] = n0;
    t->shape[1] = n1;
    t->shape[2] = n2;
    t->shape[3] = n3;
    t->strides[3] = 1;
    t->strides[2] = n3;
    t->strides[1] = n2 * n3 + row_pad;
    t->strides[0] = n1 * t->strides[1];
}

static void set_tensor3_f32(fa_tensor_t* t, void* data, int64_t n0, int64_t n1, int64_t n2) {
    memset(t, 0, sizeof(*t));
    t->data = data;
    t->dtype = FA_DTYPE_FLOAT32;
    t->rank = 3;
    t->shape[0] = n0;
    t->shape[1] = n1;
    t->shape[2] = n2;
    t->strides[2] = 1;
    t->strides[1] = n2;
    t->strides[0] = n1 * n2;
}

/* Number of elements a tensor's memory spans. */
static int64_t span(const fa_tensor_t* t) {
    int64_t last = 0;
    int32_t i;
    for (i = 0; i < t->rank; ++i) {
        last += (t->shape[i] - 1) * t->strides[i];
    }
    return last + 1;
}

/* ---- validation tests (no GPU needed) -------------------------------------------------------- */

enum { VB = 2, VSQ = 17, VSK = 33, VHQ = 6, VHKV = 2 };

/* A valid call on made-up, aligned, disjoint addresses: fa_forward_check never dereferences them. */
static fa_forward_params_t valid_params(int with_lse) {
    fa_forward_params_t p;
    const int64_t d = FA_TEST_HEAD_DIM;
    fa_forward_params_init(&p, sizeof p);
    set_tensor4(&p.q, (void*)(uintptr_t)0x100000000ull, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, d, 0);
    set_tensor4(&p.k, (void*)(uintptr_t)0x200000000ull, FA_DTYPE_FLOAT16, VB, VSK, VHKV, d, 0);
    set_tensor4(&p.v, (void*)(uintptr_t)0x300000000ull, FA_DTYPE_FLOAT16, VB, VSK, VHKV, d, 0);
    set_tensor4(&p.out, (void*)(uintptr_t)0x400000000ull, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, d, 0);
    if (with_lse) {
        set_tensor3_f32(&p.lse, (void*)(uintptr_t)0x500000000ull, VB, VHQ, VSQ);
    }
    p.causal = 1;
    return p;
}

/* Gives q, k, v and out of valid_params head dim d (same addresses, contiguous layouts). */
static void set_head_dim(fa_forward_params_t* p, int64_t d) {
    set_tensor4(&p->q, p->q.data, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, d, 0);
    set_tensor4(&p->k, p->k.data, FA_DTYPE_FLOAT16, VB, VSK, VHKV, d, 0);
    set_tensor4(&p->v, p->v.data, FA_DTYPE_FLOAT16, VB, VSK, VHKV, d, 0);
    set_tensor4(&p->out, p->out.data, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, d, 0);
}

static void test_versions_and_status_strings(void) {
    const char* expected[] = {"FA_STATUS_SUCCESS",     "FA_STATUS_INVALID_ARGUMENT", "FA_STATUS_UNSUPPORTED",
                              "FA_STATUS_NO_DEVICE",   "FA_STATUS_OUT_OF_MEMORY",    "FA_STATUS_CUDA_ERROR",
                              "FA_STATUS_INTERNAL",    "FA_STATUS_DEVICE_CHECK_FAILED"};
    int i;
    CHECK(fa_version() == FA_VERSION_CODE, "fa_version() is %d, header says %d", (int)fa_version(), FA_VERSION_CODE);
    CHECK(FA_VERSION_CODE == FA_VERSION_MAJOR * 10000 + FA_VERSION_MINOR * 100 + FA_VERSION_PATCH,
          "FA_VERSION_CODE formula");
    for (i = 0; i < 8; ++i) {
        const char* name = fa_status_string((fa_status_t)i);
        CHECK(name != NULL && strcmp(name, expected[i]) == 0, "fa_status_string(%d) is \"%s\", expected \"%s\"", i,
              name != NULL ? name : "(null)", expected[i]);
    }
    CHECK(fa_status_string((fa_status_t)12345) != NULL && fa_status_string((fa_status_t)12345)[0] != '\0',
          "fa_status_string of an unknown value must be a non-empty string");
}

static void test_last_error_behaviour(void) {
    fa_forward_params_t p;
    const char* message;
    expect("fresh thread: success clears", fa_forward_params_init(&p, sizeof p), FA_STATUS_SUCCESS, NULL);
    expect("check(NULL)", fa_forward_check(NULL, 0), FA_STATUS_INVALID_ARGUMENT, "params");
    /* fa_status_string and fa_version do not disturb the message of the failed call. */
    (void)fa_status_string(FA_STATUS_INVALID_ARGUMENT);
    (void)fa_version();
    message = fa_last_error_message();
    CHECK(message != NULL && strstr(message, "params") != NULL,
          "the last error must survive fa_status_string/fa_version, got \"%s\"", message != NULL ? message : "(null)");
    /* The next successful call clears it. */
    p = valid_params(0);
    expect("valid check clears the error", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    CHECK(strcmp(fa_last_error_message(), "") == 0, "last error after success is \"%s\"", fa_last_error_message());
    expect("params_init(NULL)", fa_forward_params_init(NULL, sizeof(fa_forward_params_t)), FA_STATUS_INVALID_ARGUMENT, "params");
    expect("set_log_callback(NULL) clears", fa_set_log_callback(NULL, NULL), FA_STATUS_SUCCESS, NULL);
}

static void test_params_init(void) {
    fa_forward_params_t p;
    const unsigned char* bytes;
    size_t i;
    int tensors_zero = 1;
    memset(&p, 0xAB, sizeof(p));
    expect("fa_forward_params_init", fa_forward_params_init(&p, sizeof p), FA_STATUS_SUCCESS, NULL);
    CHECK(p.struct_size == sizeof(fa_forward_params_t), "struct_size is %u, sizeof is %u", (unsigned)p.struct_size,
          (unsigned)sizeof(fa_forward_params_t));
    CHECK(p.reserved0 == 0, "reserved0 is %u", (unsigned)p.reserved0);
    CHECK(p.softmax_scale == 0.0f, "softmax_scale default is %g", (double)p.softmax_scale);
    CHECK(p.causal == 0, "causal default is %d", (int)p.causal);
    CHECK(p.causal_alignment == FA_CAUSAL_BOTTOM_RIGHT, "causal_alignment default is %d", (int)p.causal_alignment);
    CHECK(p.kernel_path == FA_PATH_AUTO, "kernel_path default is %d", (int)p.kernel_path);
    CHECK(p.window_left == -1 && p.window_right == -1, "window default is (%d, %d), expected (-1, -1)",
          (int)p.window_left, (int)p.window_right);
    CHECK(p.softcap == 0.0f, "softcap default is %g", (double)p.softcap);
    CHECK(p.reserved1 == 0 && p.reserved2 == 0, "reserved1/2 defaults are %d/%d", (int)p.reserved1, (int)p.reserved2);
    CHECK(p.cu_seqlens_q == NULL && p.cu_seqlens_k == NULL && p.cu_seqlens_q_host == NULL &&
              p.cu_seqlens_k_host == NULL,
          "fa_forward_params_init must leave the cu_seqlens pointers NULL");
    CHECK(p.varlen_batch == 0 && p.max_seqlen_q == 0 && p.max_seqlen_k == 0,
          "varlen defaults are batch %d, max_seqlen %d/%d (expected 0)", (int)p.varlen_batch, (int)p.max_seqlen_q,
          (int)p.max_seqlen_k);
    bytes = (const unsigned char*)&p.q;
    for (i = 0; i < 5 * sizeof(fa_tensor_t); ++i) {
        if (bytes[i] != 0) {
            tensors_zero = 0;
        }
    }
    CHECK(tensors_zero, "fa_forward_params_init must zero the five tensors");

    /* A caller compiled against version 0.1 (a struct that ends after kernel_path) must get exactly
       its own bytes written: nothing past them. */
    {
        unsigned char buffer[sizeof(fa_forward_params_t) + 64];
        const size_t old_size = offsetof(fa_forward_params_t, window_left);
        fa_forward_params_t* old = (fa_forward_params_t*)(void*)buffer;
        int untouched = 1;
        memset(buffer, 0xAB, sizeof(buffer));
        expect("params_init with the 0.1 size", fa_forward_params_init(old, old_size), FA_STATUS_SUCCESS, NULL);
        CHECK(old->struct_size == old_size, "struct_size is %u, expected the caller's %u", (unsigned)old->struct_size,
              (unsigned)old_size);
        CHECK(old->causal_alignment == FA_CAUSAL_BOTTOM_RIGHT && old->kernel_path == FA_PATH_AUTO,
              "0.1-sized init must still set the 0.1 defaults");
        for (i = old_size; i < sizeof(buffer); ++i) {
            if (buffer[i] != 0xAB) {
                untouched = 0;
            }
        }
        CHECK(untouched, "fa_forward_params_init wrote past the caller's struct_size");
        expect("params_init with a too-small size", fa_forward_params_init(old, old_size - 4),
               FA_STATUS_INVALID_ARGUMENT, "struct_size");
    }
}

/* One input case of fa_forward_check (for any GPU: compute capability 0): `base` with `field` set to
   `value` must give status `want`, a failure's message mentioning `needle`. It works on the caller's
   variable `p`, which holds the changed call afterwards. */
#define EXPECT_FIELD(label, base, field, value, want, needle)           \
    do {                                                                \
        p = (base);                                                     \
        p.field = (value);                                              \
        expect((label), fa_forward_check(&p, 0), (want), (needle));     \
    } while (0)

/* The backward of forward params p: the same tensors and options, gradients at made-up addresses apart from
   everything (checks only, never dereferenced). */
static fa_backward_params_t backward_of(const fa_forward_params_t* p) {
    fa_backward_params_t bw;
    fa_backward_params_init(&bw, sizeof bw);
    bw.q = p->q;
    bw.k = p->k;
    bw.v = p->v;
    bw.out = p->out;
    bw.lse = p->lse;
    bw.dout = p->out;
    bw.dout.data = (void*)(uintptr_t)0x600000000ull;
    bw.dq = p->q;
    bw.dq.data = (void*)(uintptr_t)0x700000000ull;
    bw.dk = p->k;
    bw.dk.data = (void*)(uintptr_t)0x800000000ull;
    bw.dv = p->v;
    bw.dv.data = (void*)(uintptr_t)0x900000000ull;
    return bw;
}

/* Refusals that a mutation pass over native/src/validate_*.cpp (each check disabled in turn, the CPU tests run) found
   no test reaching: a head dim that is not a multiple of 8 in rows padded to one (the stride rule passes, so the
   head-dim rule itself must refuse it), the query's head-dim rule, a backward grid past 2^31 - 1 blocks, and a
   backward workspace smaller than the call needs. */
static fa_support_query_t forward_query(int dtype, int head_dim);

static void test_validation_edges(void) {
    const int64_t d = FA_TEST_HEAD_DIM;
    fa_forward_params_t p = valid_params(1);
    fa_backward_params_t bw;
    fa_support_query_t query;
    fa_tensor_t* ts[4];
    int i;
    /* Head dim 60 in rows of 64 elements: every stride a multiple of 8. */
    ts[0] = &p.q; ts[1] = &p.k; ts[2] = &p.v; ts[3] = &p.out;
    for (i = 0; i < 4; ++i) {
        ts[i]->shape[3] = 60;
        ts[i]->strides[2] = 64;
        ts[i]->strides[1] = 64 * ts[i]->shape[2];
        ts[i]->strides[0] = ts[i]->strides[1] * ts[i]->shape[1];
    }
    expect("head dim 60 in padded rows (forward)", fa_forward_check(&p, 0), FA_STATUS_UNSUPPORTED,
           "q.shape[3] (head_dim) is 60; head dims must be multiples of 8");
    bw = backward_of(&p);
    expect("head dim 60 in padded rows (backward)", fa_backward_check(&bw, 0), FA_STATUS_UNSUPPORTED,
           "q.shape[3] (head_dim) is 60; head dims must be multiples of 8");
    query = forward_query(FA_DTYPE_FLOAT16, 60);
    expect("query head dim 60", fa_query_support(&query), FA_STATUS_UNSUPPORTED,
           "query->head_dim is 60; head dims must be multiples of 8");

    /* A backward of 2 x 2^27 query rows over 256 heads: the forward's grid (a block per 64 rows and head) is 2^30
       blocks, the backward's (a block per 32 rows and head for its pre/post passes) 2^31. The tensors sit 2^48 bytes
       apart (q is 2^45 bytes at head dim 256; nothing is read: the check runs before any launch). The build's test
       head dim, which every build serves. */
    p = valid_params(1);
    set_tensor4(&p.q, (void*)(uintptr_t)((uint64_t)1 << 48), FA_DTYPE_FLOAT16, 2, (int64_t)1 << 27, 256, d, 0);
    set_tensor4(&p.out, (void*)(uintptr_t)((uint64_t)2 << 48), FA_DTYPE_FLOAT16, 2, (int64_t)1 << 27, 256, d, 0);
    set_tensor4(&p.k, (void*)(uintptr_t)0x200000000ull, FA_DTYPE_FLOAT16, 2, VSK, 2, d, 0);
    set_tensor4(&p.v, (void*)(uintptr_t)0x300000000ull, FA_DTYPE_FLOAT16, 2, VSK, 2, d, 0);
    set_tensor3_f32(&p.lse, (void*)(uintptr_t)((uint64_t)3 << 48), 2, 256, (int64_t)1 << 27);
    p.causal = 0;
    expect("forward of 2 x 2^27 rows over 256 heads (2^30 blocks)", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    bw = backward_of(&p);
    bw.dout.data = (void*)(uintptr_t)((uint64_t)4 << 48);
    bw.dq.data = (void*)(uintptr_t)((uint64_t)5 << 48);
    expect("backward grid past 2^31 - 1 blocks", fa_backward_check(&bw, 0), FA_STATUS_UNSUPPORTED,
           "more than 2^31 - 1; split the batch or the heads");

    /* A caller's workspace of 256 bytes: less than the call's fp32 dq accumulator alone. */
    p = valid_params(1);
    bw = backward_of(&p);
    bw.workspace = (void*)(uintptr_t)0xA00000000ull;
    bw.workspace_size = 256;
    expect("backward workspace too small", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
           "workspace_size is 256 bytes but this call needs");
}

static void test_validation(void) {
    fa_forward_params_t p;
    const int64_t d = FA_TEST_HEAD_DIM;
    int64_t q_bytes;
    char needle[160];

    /* Head dim 59, contiguous: the root cause (not a multiple of 8) comes first, then the stride it breaks. */
    p = valid_params(1);
    set_head_dim(&p, 59);
    expect("head dim 59 (forward)", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "q.shape[3] (head_dim) is 59; head dims must be multiples of 8");
    {
        fa_backward_params_t bw = backward_of(&p);
        expect("head dim 59 (backward)", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
               "q.shape[3] (head_dim) is 59; head dims must be multiples of 8");
        /* A workspace whose range runs past the end of the address space (found by fuzz_abi on the GPU: the
           wrapped range passed the overlap checks and the kernels wrote through it) is refused. */
        p = valid_params(1);
        bw = backward_of(&p);
        expect("backward with a valid workspace-free call", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
        bw.workspace = (void*)(uintptr_t)0xFFFFFFFFFFFFF000ull;
        bw.workspace_size = (size_t)1 << 40;
        expect("backward workspace wrapping the address space", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
               "runs past the end of the address space");
    }

    p = valid_params(0);
    expect("valid (cc 0)", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    expect("valid (cc 80)", fa_forward_check(&p, 80), FA_STATUS_SUCCESS, NULL);
    expect("valid (cc 90)", fa_forward_check(&p, 90), FA_STATUS_SUCCESS, NULL);
    p = valid_params(1);
    expect("valid with lse", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = valid_params(0);
    p.causal = 0;
    p.causal_alignment = FA_CAUSAL_TOP_LEFT;
    p.kernel_path = FA_PATH_SM80;
    p.softmax_scale = 0.125f;
    expect("valid non-causal, sm80, scale", fa_forward_check(&p, 86), FA_STATUS_SUCCESS, NULL);
    p = valid_params(0);
    p.struct_size += 64; /* a newer caller's larger struct: only the known fields are read */
    expect("larger struct_size accepted", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);

    expect("params NULL", fa_forward_check(NULL, 0), FA_STATUS_INVALID_ARGUMENT, "params is NULL");
    expect("backward params NULL", fa_backward_check(NULL, 0), FA_STATUS_INVALID_ARGUMENT, "params is NULL");
    test_validation_edges();
    EXPECT_FIELD("struct_size too small", valid_params(0), struct_size, 8,
                 FA_STATUS_INVALID_ARGUMENT, "struct_size is 8");
    EXPECT_FIELD("struct_size 0", valid_params(0), struct_size, 0, FA_STATUS_INVALID_ARGUMENT, "struct_size");
    EXPECT_FIELD("reserved0 != 0", valid_params(0), reserved0, 1, FA_STATUS_INVALID_ARGUMENT, "reserved0");
    EXPECT_FIELD("q.data NULL", valid_params(0), q.data, NULL, FA_STATUS_INVALID_ARGUMENT, "q.data is NULL");
    EXPECT_FIELD("out.data NULL", valid_params(0), out.data, NULL, FA_STATUS_INVALID_ARGUMENT, "out.data is NULL");
    EXPECT_FIELD("q fp32", valid_params(0), q.dtype, FA_DTYPE_FLOAT32, FA_STATUS_INVALID_ARGUMENT, "q.dtype");
    EXPECT_FIELD("k bf16 with q fp16", valid_params(0), k.dtype, FA_DTYPE_BFLOAT16,
                 FA_STATUS_INVALID_ARGUMENT, "k.dtype");
    EXPECT_FIELD("v dtype 99", valid_params(0), v.dtype, 99, FA_STATUS_INVALID_ARGUMENT, "v.dtype is 99");
    EXPECT_FIELD("v rank 3", valid_params(0), v.rank, 3, FA_STATUS_INVALID_ARGUMENT, "v.rank is 3");
    EXPECT_FIELD("seqlen_q 0", valid_params(0), q.shape[1], 0,
                 FA_STATUS_INVALID_ARGUMENT, "q.shape[1] (seqlen_q) is 0");
    EXPECT_FIELD("negative batch", valid_params(0), k.shape[0], -3, FA_STATUS_INVALID_ARGUMENT, "k.shape[0]");
    EXPECT_FIELD("head_dim not contiguous", valid_params(0), k.strides[3], 2, FA_STATUS_INVALID_ARGUMENT, "contiguous");
    EXPECT_FIELD("zero row stride", valid_params(0), q.strides[1], 0, FA_STATUS_INVALID_ARGUMENT, "positive");
    p = valid_params(0);
    p.v.strides[0] = -p.v.strides[0];
    expect("negative batch stride", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "positive");
    p = valid_params(0);
    p.out.strides[1] = VHQ * d + 4;
    p.out.strides[0] = VSQ * p.out.strides[1] + 4; /* the batch stride stays a multiple of 8 */
    sprintf(needle, "out.strides[1] (seqlen_q) is %d; the batch, seqlen_q and heads_q strides must be multiples of 8",
            (int)(VHQ * d + 4));
    expect("row stride not multiple of 8", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, needle);
    p = valid_params(0);
    p.q.data = (char*)p.q.data + 8;
    expect("q.data 8-byte aligned only", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "16-byte aligned");
    p = valid_params(0);
    p.k.shape[2] = 4;
    p.v.shape[2] = 4;
    expect("GQA 6 / 4", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "k has 4 heads, which does not divide q's 6 heads");
    EXPECT_FIELD("k, v seqlen differ", valid_params(0), v.shape[1], VSK + 1, FA_STATUS_INVALID_ARGUMENT, "same shape");
    EXPECT_FIELD("out shape != q shape", valid_params(0), out.shape[1], VSQ + 1,
                 FA_STATUS_INVALID_ARGUMENT, "out.shape");
    p = valid_params(0);
    p.k.shape[0] = VB + 1;
    p.v.shape[0] = VB + 1;
    expect("batch differs", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "batch");
    p = valid_params(0);
    p.k.shape[3] = 2 * d;
    p.v.shape[3] = 2 * d;
    p.k.strides[2] = 2 * d;
    p.k.strides[1] = VHKV * 2 * d;
    p.k.strides[0] = VSK * VHKV * 2 * d;
    p.v.strides[2] = 2 * d;
    p.v.strides[1] = VHKV * 2 * d;
    p.v.strides[0] = VSK * VHKV * 2 * d;
    expect("head_dim differs", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "head_dim");

    /* head dim 520: valid, but above every head dim the kernels serve (256 at most). */
    p = valid_params(0);
    set_head_dim(&p, 520);
    expect("head_dim 520 not served", fa_forward_check(&p, 0), FA_STATUS_UNSUPPORTED, "is 520; this build serves");

    p = valid_params(0);
    p.out.data = p.q.data;
    expect("out aliases q", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "overlaps q");
    p = valid_params(0);
    q_bytes = span(&p.q) * 2;
    p.out.data = (char*)p.q.data + q_bytes - 16; /* last 16 bytes of q are the first of out */
    expect("out overlaps q's tail", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "overlaps q");
    p = valid_params(0);
    p.out.data = (char*)p.q.data + q_bytes; /* right after q: touching, not overlapping */
    expect("out right after q", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = valid_params(1);
    p.lse.data = (char*)p.v.data + 64;
    expect("lse overlaps v", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "overlaps v");
    EXPECT_FIELD("lse fp16", valid_params(1), lse.dtype, FA_DTYPE_FLOAT16, FA_STATUS_INVALID_ARGUMENT, "lse.dtype");
    p = valid_params(1);
    p.lse.shape[2] = VSK;
    p.lse.strides[1] = VSK;
    p.lse.strides[0] = VHQ * VSK;
    expect("lse [b, hq, sk]", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "lse.shape");
    p = valid_params(1);
    p.lse.data = (char*)p.lse.data + 2;
    expect("lse 2-byte aligned", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "4-byte aligned");
    EXPECT_FIELD("lse zero stride", valid_params(1), lse.strides[2], 0, FA_STATUS_INVALID_ARGUMENT, "positive");

    EXPECT_FIELD("softmax_scale NaN", valid_params(0), softmax_scale, NAN,
                 FA_STATUS_INVALID_ARGUMENT, "softmax_scale is nan");
    EXPECT_FIELD("softmax_scale < 0", valid_params(0), softmax_scale, -0.5f,
                 FA_STATUS_INVALID_ARGUMENT, "softmax_scale is -0.5");
    EXPECT_FIELD("softmax_scale inf", valid_params(0), softmax_scale, INFINITY,
                 FA_STATUS_INVALID_ARGUMENT, "softmax_scale");
    EXPECT_FIELD("causal 2", valid_params(0), causal, 2, FA_STATUS_INVALID_ARGUMENT, "causal is 2");
    EXPECT_FIELD("causal_alignment 7", valid_params(0), causal_alignment, 7,
                 FA_STATUS_INVALID_ARGUMENT, "causal_alignment is 7");
    EXPECT_FIELD("kernel_path 5", valid_params(0), kernel_path, 5, FA_STATUS_INVALID_ARGUMENT, "kernel_path is 5");
    p = valid_params(0);
    expect("compute capability 75", fa_forward_check(&p, 75), FA_STATUS_UNSUPPORTED, "8.0 or newer");
    expect("compute capability -1", fa_forward_check(&p, -1), FA_STATUS_INVALID_ARGUMENT, "compute_capability");
    p = valid_params(0);
    p.q.strides[0] = ((int64_t)1 << 61);
    p.q.shape[0] = 8;
    p.out.data = (void*)(uintptr_t)0x600000000ull;
    expect("strides overflow int64", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "too large");
    /* Each dimension's span fits in 2^63 elements but their sum does not: batch's extent 1 at a stride of 2^62, and
       seqlen_q's extent just past 2^62. */
    p = valid_params(0);
    p.q.shape[0] = 2;
    p.q.strides[0] = (int64_t)1 << 62;
    p.q.strides[1] = ((int64_t)1 << 62) / (VSQ - 1) + 8;
    expect("strides sum past int64", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "and its strides span more");
    EXPECT_FIELD("extent past address space", valid_params(0), q.data, (void*)(uintptr_t)(UINTPTR_MAX - 255u),
                 FA_STATUS_INVALID_ARGUMENT, "address space");

    /* fa_forward checks before touching the GPU: these fail the same way on any machine. */
    p = valid_params(0);
    expect("fa_forward(NULL context)", fa_forward(NULL, &p, NULL), FA_STATUS_INVALID_ARGUMENT, "context is NULL");
}

/* ---- validation of windows, softcap and variable-length batches (no GPU needed) ---------------- */

/* Sequence lengths of the variable-length validation batch. */
enum { VL_BATCH = 4, VL_TOTAL_Q = 318, VL_TOTAL_K = 320, VL_MAX_Q = 300, VL_MAX_K = 290 };
static const int32_t g_vl_cu_q[VL_BATCH + 1] = {0, 17, 17, 18, 318};   /* lengths 17, 0, 1, 300 */
static const int32_t g_vl_cu_k[VL_BATCH + 1] = {0, 20, 25, 30, 320};   /* lengths 20, 5, 5, 290 */

static void set_tensor3(fa_tensor_t* t, void* data, int32_t dtype, int64_t n0, int64_t n1, int64_t n2, int64_t row_pad) {
    memset(t, 0, sizeof(*t));
    t->data = data;
    t->dtype = dtype;
    t->rank = 3;
    t->shape[0] = n0;
    t->shape[1] = n1;
    t->shape[2] = n2;
    t->strides[2] = 1;
    t->strides[1] = n2;
    t->strides[0] = n1 * n2 + row_pad;
}

static void set_tensor2_f32(fa_tensor_t* t, void* data, int64_t n0, int64_t n1) {
    memset(t, 0, sizeof(*t));
    t->data = data;
    t->dtype = FA_DTYPE_FLOAT32;
    t->rank = 2;
    t->shape[0] = n0;
    t->shape[1] = n1;
    t->strides[1] = 1;
    t->strides[0] = n1;
}

/* A valid variable-length call on made-up addresses (device cu_seqlens included), host copies given. */
static fa_forward_params_t valid_varlen_params(int with_lse) {
    fa_forward_params_t p;
    const int64_t d = FA_TEST_HEAD_DIM;
    fa_forward_params_init(&p, sizeof p);
    set_tensor3(&p.q, (void*)(uintptr_t)0x100000000ull, FA_DTYPE_FLOAT16, VL_TOTAL_Q, VHQ, d, 0);
    set_tensor3(&p.k, (void*)(uintptr_t)0x200000000ull, FA_DTYPE_FLOAT16, VL_TOTAL_K, VHKV, d, 0);
    set_tensor3(&p.v, (void*)(uintptr_t)0x300000000ull, FA_DTYPE_FLOAT16, VL_TOTAL_K, VHKV, d, 0);
    set_tensor3(&p.out, (void*)(uintptr_t)0x400000000ull, FA_DTYPE_FLOAT16, VL_TOTAL_Q, VHQ, d, 0);
    if (with_lse) {
        set_tensor2_f32(&p.lse, (void*)(uintptr_t)0x500000000ull, VHQ, VL_TOTAL_Q);
    }
    p.cu_seqlens_q = (const int32_t*)(uintptr_t)0x600000000ull;
    p.cu_seqlens_k = (const int32_t*)(uintptr_t)0x600000100ull;
    p.cu_seqlens_q_host = g_vl_cu_q;
    p.cu_seqlens_k_host = g_vl_cu_k;
    p.varlen_batch = VL_BATCH;
    p.max_seqlen_q = VL_MAX_Q;
    p.max_seqlen_k = VL_MAX_K;
    p.causal = 1;
    return p;
}

static void test_feature_validation(void) {
    fa_forward_params_t p;
    int32_t cu_q[VL_BATCH + 1], cu_k[VL_BATCH + 1];
    const int64_t d = FA_TEST_HEAD_DIM;

    /* windows and softcap on a fixed-length call */
    p = valid_params(1);
    p.window_left = 0;
    p.window_right = 0;
    expect("window (0, 0)", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = valid_params(0);
    p.causal = 0;
    p.window_left = 5;
    p.window_right = -1;
    p.softcap = 30.0f;
    expect("window (5, -1) + softcap", fa_forward_check(&p, 80), FA_STATUS_SUCCESS, NULL);
    p = valid_params(0);
    p.window_left = 2147483647; /* INT32_MAX: as good as unbounded */
    p.window_right = 2147483647;
    expect("window INT32_MAX", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    EXPECT_FIELD("window_left -2", valid_params(0), window_left, -2, FA_STATUS_INVALID_ARGUMENT, "window_left is -2");
    EXPECT_FIELD("window_right -100", valid_params(0), window_right, -100,
                 FA_STATUS_INVALID_ARGUMENT, "window_right is -100");
    EXPECT_FIELD("softcap NaN", valid_params(0), softcap, NAN, FA_STATUS_INVALID_ARGUMENT, "softcap is nan");
    EXPECT_FIELD("softcap -1", valid_params(0), softcap, -1.0f, FA_STATUS_INVALID_ARGUMENT, "softcap is -1");
    EXPECT_FIELD("softcap inf", valid_params(0), softcap, INFINITY, FA_STATUS_INVALID_ARGUMENT, "softcap is inf");
    EXPECT_FIELD("softcap 3e38", valid_params(0), softcap, 3e38f, FA_STATUS_INVALID_ARGUMENT, "at most");
    EXPECT_FIELD("reserved1 != 0", valid_params(0), reserved1, 1, FA_STATUS_INVALID_ARGUMENT, "reserved1 is 1");
    EXPECT_FIELD("reserved2 != 0", valid_params(0), reserved2, -4, FA_STATUS_INVALID_ARGUMENT, "reserved2 is -4");

    /* varlen fields on a fixed-length call */
    EXPECT_FIELD("fixed-length with varlen_batch", valid_params(0), varlen_batch, 3,
                 FA_STATUS_INVALID_ARGUMENT, "varlen_batch is 3 but cu_seqlens_q is NULL");
    EXPECT_FIELD("fixed-length with max_seqlen_k", valid_params(0), max_seqlen_k, 17,
                 FA_STATUS_INVALID_ARGUMENT, "max_seqlen_k is 17");
    EXPECT_FIELD("host copy without device arrays", valid_params(0), cu_seqlens_k_host, g_vl_cu_k,
                 FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_k_host is set but cu_seqlens_q and cu_seqlens_k are NULL");

    /* an older caller: a v0.1 struct (up to kernel_path) gets the defaults, whatever follows it */
    p = valid_params(1);
    p.window_left = -7;
    p.softcap = NAN;
    p.reserved1 = 5;
    p.cu_seqlens_q = (const int32_t*)(uintptr_t)3;
    p.varlen_batch = -1;
    p.reserved2 = 9;
    p.struct_size = (uint32_t)offsetof(fa_forward_params_t, window_left);
    expect("v0.1 struct_size: new fields ignored", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.struct_size = (uint32_t)offsetof(fa_forward_params_t, window_left) - 4;
    expect("struct_size below v0.1", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "struct_size is");
    p.struct_size = (uint32_t)offsetof(fa_forward_params_t, reserved1); /* covers the window and softcap */
    expect("struct_size up to softcap reads it", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "window_left is -7");
    p.window_left = 3;
    expect("struct_size up to softcap reads softcap", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "softcap is nan");
    p.softcap = 0.0f;
    expect("struct_size up to softcap: rest ignored", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);

    /* variable-length batches */
    p = valid_varlen_params(1);
    expect("varlen valid (host copies, lse)", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = valid_varlen_params(0);
    p.cu_seqlens_q_host = NULL;
    p.cu_seqlens_k_host = NULL;
    p.window_left = 64;
    p.softcap = 50.0f;
    p.causal_alignment = FA_CAUSAL_TOP_LEFT;
    expect("varlen valid (device arrays only, window, softcap)", fa_forward_check(&p, 86), FA_STATUS_SUCCESS, NULL);
    p = valid_varlen_params(0);
    p.cu_seqlens_k = NULL;
    p.cu_seqlens_k_host = NULL;
    expect("varlen with cu_seqlens_q only", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "cu_seqlens_q is set but cu_seqlens_k is NULL");
    EXPECT_FIELD("varlen with cu_seqlens_k only", valid_varlen_params(0), cu_seqlens_q, NULL,
                 FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_k is set but cu_seqlens_q is NULL");
    p = valid_varlen_params(0);
    p.cu_seqlens_k = (const int32_t*)((uintptr_t)p.cu_seqlens_k + 2);
    expect("varlen cu_seqlens_k misaligned", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "is not 4-byte aligned");
    EXPECT_FIELD("varlen_batch 0", valid_varlen_params(0), varlen_batch, 0,
                 FA_STATUS_INVALID_ARGUMENT, "varlen_batch is 0");
    p = valid_varlen_params(0);
    p.cu_seqlens_q_host = NULL;
    p.cu_seqlens_k_host = NULL;
    p.varlen_batch = 2000000000;
    expect("varlen_batch 2e9", fa_forward_check(&p, 0), FA_STATUS_UNSUPPORTED, "2^31 - 1 blocks");
    EXPECT_FIELD("max_seqlen_q -1", valid_varlen_params(0), max_seqlen_q, -1,
                 FA_STATUS_INVALID_ARGUMENT, "max_seqlen_q is -1");
    EXPECT_FIELD("max_seqlen_k -1", valid_varlen_params(0), max_seqlen_k, -1,
                 FA_STATUS_INVALID_ARGUMENT, "max_seqlen_k is -1");
    p = valid_varlen_params(0);
    set_tensor4(&p.q, p.q.data, FA_DTYPE_FLOAT16, 1, VL_TOTAL_Q, VHQ, d, 0);
    expect("varlen q rank 4", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "q.rank is 4; q must have rank 3 [total_q, heads_q, head_dim]");
    p = valid_varlen_params(0);
    set_tensor4(&p.v, p.v.data, FA_DTYPE_FLOAT16, 1, VL_TOTAL_K, VHKV, d, 0);
    expect("varlen v rank 4", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "v.rank is 4");
    EXPECT_FIELD("varlen k row stride not multiple of 8", valid_varlen_params(0), k.strides[0], VHKV * d + 4,
                 FA_STATUS_INVALID_ARGUMENT, "k.strides[0] (total_k)");
    EXPECT_FIELD("varlen out head_dim not contiguous", valid_varlen_params(0), out.strides[2], 2,
                 FA_STATUS_INVALID_ARGUMENT, "contiguous");
    p = valid_varlen_params(0);
    p.k.data = (char*)p.k.data + 8;
    expect("varlen k 8-byte aligned", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "16-byte aligned");
    EXPECT_FIELD("varlen out rows != q rows", valid_varlen_params(0), out.shape[0], VL_TOTAL_Q - 1,
                 FA_STATUS_INVALID_ARGUMENT, "out.shape");
    EXPECT_FIELD("varlen v rows != k rows", valid_varlen_params(0), v.shape[0], VL_TOTAL_K + 8,
                 FA_STATUS_INVALID_ARGUMENT, "same shape");
    p = valid_varlen_params(0);
    p.k.shape[1] = 4;
    p.v.shape[1] = 4;
    expect("varlen GQA 6 / 4", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "does not divide");
    p = valid_varlen_params(1);
    set_tensor3_f32(&p.lse, p.lse.data, VL_BATCH, VHQ, VL_MAX_Q);
    expect("varlen lse [b, hq, max_sq]", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "lse.rank is 3; lse must have rank 2 [heads_q, total_q]");
    p = valid_varlen_params(1);
    set_tensor2_f32(&p.lse, p.lse.data, VL_TOTAL_Q, VHQ);
    expect("varlen lse [total_q, hq]", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "must be [heads_q, total_q] = [6, 318]");
    p = valid_varlen_params(1);
    p.lse.data = (void*)p.cu_seqlens_q;
    expect("varlen lse overlaps cu_seqlens_q", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "overlaps cu_seqlens_q");
    p = valid_varlen_params(0);
    p.cu_seqlens_k = (const int32_t*)((uintptr_t)p.out.data + 64);
    expect("varlen out overlaps cu_seqlens_k", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "out (bytes");
    p = valid_varlen_params(0);
    set_tensor3(&p.q, p.q.data, FA_DTYPE_FLOAT16, VL_TOTAL_Q, VHQ, 520, 0);
    set_tensor3(&p.k, p.k.data, FA_DTYPE_FLOAT16, VL_TOTAL_K, VHKV, 520, 0);
    set_tensor3(&p.v, p.v.data, FA_DTYPE_FLOAT16, VL_TOTAL_K, VHKV, 520, 0);
    set_tensor3(&p.out, (void*)(uintptr_t)0x800000000ull, FA_DTYPE_FLOAT16, VL_TOTAL_Q, VHQ, 520, 0);
    expect("varlen head_dim 520", fa_forward_check(&p, 0), FA_STATUS_UNSUPPORTED, "q.shape[2] (head_dim) is 520");

    /* host copies of cu_seqlens */
    memcpy(cu_q, g_vl_cu_q, sizeof(cu_q));
    memcpy(cu_k, g_vl_cu_k, sizeof(cu_k));
    p = valid_varlen_params(0);
    p.cu_seqlens_q_host = cu_q;
    p.cu_seqlens_k_host = cu_k;
    cu_q[1] = 12;
    cu_q[2] = 12;
    cu_q[3] = 10; /* {0, 12, 12, 10, 318} */
    expect("cu_seqlens_q_host decreasing", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "cu_seqlens_q_host[3] is 10, less than cu_seqlens_q_host[2] = 12");
    memcpy(cu_q, g_vl_cu_q, sizeof(cu_q));
    cu_k[0] = 1;
    expect("cu_seqlens_k_host not starting at 0", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "cu_seqlens_k_host[0] is 1");
    memcpy(cu_k, g_vl_cu_k, sizeof(cu_k));
    cu_k[VL_BATCH] = VL_TOTAL_K + 1;
    p.max_seqlen_k = VL_MAX_K + 1;
    expect("cu_seqlens_k_host past the end", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "cu_seqlens_k_host[4] is 321, past the end of the 320 rows of k");
    memcpy(cu_k, g_vl_cu_k, sizeof(cu_k));
    p.max_seqlen_k = VL_MAX_K;
    p.max_seqlen_q = VL_MAX_Q - 1;
    expect("sequence longer than max_seqlen_q", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "sequence 3 has length 300 (cu_seqlens_q_host[4] - cu_seqlens_q_host[3] = 318 - 18), more than "
           "max_seqlen_q = 299");
    p.max_seqlen_q = VL_MAX_Q;
    p.cu_seqlens_q_host = NULL; /* each host copy is optional on its own */
    expect("only cu_seqlens_k_host", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.cu_seqlens_q_host = (const int32_t*)((uintptr_t)cu_q + 1);
    expect("cu_seqlens_q_host misaligned", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "cu_seqlens_q_host");

    /* an empty batch: every sequence empty, no query rows; data may be NULL */
    memset(cu_q, 0, sizeof(cu_q));
    p = valid_varlen_params(1);
    p.cu_seqlens_q_host = cu_q;
    p.max_seqlen_q = 0;
    p.q.shape[0] = 0;
    p.q.data = NULL;
    p.out.shape[0] = 0;
    p.out.data = NULL;
    p.lse.shape[1] = 0;
    expect("varlen with no query rows", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.max_seqlen_q = -2;
    expect("varlen with no query rows, max_seqlen_q -2", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "max_seqlen_q is -2");
}

/* ---- capability queries and kernel names (no GPU needed) ------------------------------------- */

static fa_support_query_t forward_query(int dtype, int head_dim) {
    fa_support_query_t q;
    memset(&q, 0, sizeof(q));
    q.struct_size = sizeof(q);
    q.pass = FA_PASS_FORWARD;
    q.dtype = dtype;
    q.head_dim = head_dim;
    q.kernel_path = FA_PATH_AUTO;
    return q;
}

static int head_dim_served(int d);

/* Whether two tile tags ("<rows>x<keys>_<rest>") agree but for the keys per block (a paged kernel's key block divides
   the pool's blocks, so its keys may differ from its contiguous twin's: the sm90 d256 forward's 64 against 80). */
static int same_tile_but_keys(const char* a, const char* b) {
    const char* ax = strchr(a, 'x');
    const char* bx = strchr(b, 'x');
    const char* ar = ax != NULL ? strchr(ax, '_') : NULL;
    const char* br = bx != NULL ? strchr(bx, '_') : NULL;
    return ax != NULL && bx != NULL && ax - a == bx - b && strncmp(a, b, (size_t)(ax - a)) == 0 && a[0] >= '0' &&
           a[0] <= '9' && ar != NULL && br != NULL && strcmp(ar, br) == 0;
}

/* Whether the library lists a kernel whose name `matches`. */
static int build_lists_kernel(int (*matches)(const char* name)) {
    int32_t count = 0, i;
    const char* name = NULL;
    if (fa_kernel_count(&count) != FA_STATUS_SUCCESS) {
        return 0;
    }
    for (i = 0; i < count; ++i) {
        if (fa_kernel_name(i, &name) == FA_STATUS_SUCCESS && name != NULL && matches(name)) {
            return 1;
        }
    }
    return 0;
}

static int is_sm90_kernel(const char* name) { return strncmp(name, "sm90_", 5) == 0; }

/* Whether the library has sm_90a code (FA_CUDA_ARCHS had 90a): it lists an sm90_ kernel (the backward's are in
   every such build). */
static int build_has_sm90a(void) { return build_lists_kernel(is_sm90_kernel); }

/* FA_PATH_SM90 and the forward: served on compute capability 9.0 (and 0, any GPU) for every head dim the build
   serves, with every option, in a build with sm_90a code; refused naming FA_PATH_SM90 on other compute
   capabilities, and naming 90a in a build without that code. fa_forward_check agrees with the query. Decode stays
   on the sm80 path. */
static void test_query_sm90_forward(void) {
    const int has90a = build_has_sm90a();
    const int ccs[2] = {90, 0};
    fa_support_query_t q;
    fa_forward_params_t p;
    int d, c, everything, checked = 0, wrong = 0;
    printf("  build has sm_90a code: %s\n", has90a ? "yes" : "no");

    q = forward_query(FA_DTYPE_BFLOAT16, FA_TEST_HEAD_DIM);
    q.kernel_path = FA_PATH_SM90;
    q.compute_capability = 80;
    expect("query forward on FA_PATH_SM90 at cc 8.0", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "FA_PATH_SM90");
    p = valid_params(1);
    p.kernel_path = FA_PATH_SM90;
    expect("forward_check FA_PATH_SM90 at cc 8.0", fa_forward_check(&p, 80), FA_STATUS_UNSUPPORTED, "FA_PATH_SM90");
    q.compute_capability = 90;
    if (has90a) {
        expect("query forward on FA_PATH_SM90 at cc 9.0 (build with 90a)", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    } else {
        expect("query forward on FA_PATH_SM90 at cc 9.0 (build without 90a)", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
               "90a");
    }

    /* Every head dim the build serves, plain and with causal + window + softcap + varlen, at 9.0 and 0. */
    for (d = 8; d <= 256; d += 8) {
        if (!head_dim_served(d)) {
            continue;
        }
        for (c = 0; c < 2; ++c) {
            for (everything = 0; everything <= 1; ++everything) {
                fa_status_t st;
                const char* msg;
                q = forward_query(everything ? FA_DTYPE_BFLOAT16 : FA_DTYPE_FLOAT16, d);
                q.kernel_path = FA_PATH_SM90;
                q.compute_capability = ccs[c];
                q.causal = q.window = q.softcap = q.varlen = everything;
                st = fa_query_support(&q);
                msg = fa_last_error_message();
                ++checked;
                if (has90a ? st != FA_STATUS_SUCCESS
                           : st != FA_STATUS_UNSUPPORTED || strstr(msg, "FA_PATH_SM90") == NULL || strstr(msg, "90a") == NULL) {
                    if (++wrong <= 5) {
                        printf("  query forward FA_PATH_SM90 d=%d cc=%d%s: %s \"%s\"\n", d, ccs[c],
                               everything ? " causal+window+softcap+varlen" : "", fa_status_string(st), msg);
                    }
                }
            }
            p = valid_params(1);
            set_head_dim(&p, d);
            p.kernel_path = FA_PATH_SM90;
            {
                const fa_status_t st = fa_forward_check(&p, ccs[c]);
                const char* msg = fa_last_error_message();
                ++checked;
                if (has90a ? st != FA_STATUS_SUCCESS
                           : st != FA_STATUS_UNSUPPORTED || strstr(msg, "FA_PATH_SM90") == NULL || strstr(msg, "90a") == NULL) {
                    if (++wrong <= 5) {
                        printf("  forward_check FA_PATH_SM90 d=%d cc=%d: %s \"%s\"\n", d, ccs[c], fa_status_string(st), msg);
                    }
                }
            }
        }
    }
    CHECK(wrong == 0, "FA_PATH_SM90 forward: %d of %d queries and checks at cc 9.0 / 0 did not %s", wrong, checked,
          has90a ? "succeed (a build with sm_90a code serves every head dim)"
                 : "fail with UNSUPPORTED naming FA_PATH_SM90 and 90a (a build without sm_90a code)");

    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.kernel_path = FA_PATH_SM90;
    q.pass = FA_PASS_DECODE;
    expect("query decode on FA_PATH_SM90", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "decode runs on the sm80 path");
    q.compute_capability = 90;
    expect("query decode on FA_PATH_SM90 at cc 9.0", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
           "decode runs on the sm80 path");
}

static void test_query_support(void) {
    fa_support_query_t q;
    int d, disagreements = 0;

    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    expect("query forward fp16", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q = forward_query(FA_DTYPE_BFLOAT16, FA_TEST_HEAD_DIM);
    q.causal = q.window = q.softcap = q.varlen = 1;
    q.compute_capability = 90;
    q.kernel_path = FA_PATH_SM80;
    expect("query forward bf16, every feature", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.struct_size += 32; /* a newer caller's larger struct */
    expect("query larger struct_size", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);

    expect("query NULL", fa_query_support(NULL), FA_STATUS_INVALID_ARGUMENT, "query is NULL");
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.struct_size = 8;
    expect("query struct_size 8", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "struct_size is 8");
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.pass = 7;
    expect("query pass 7", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "pass is 7");
    q = forward_query(99, FA_TEST_HEAD_DIM);
    expect("query dtype 99", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "dtype is 99");
    q = forward_query(FA_DTYPE_FLOAT16, 0);
    expect("query head_dim 0", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "head_dim is 0");
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.compute_capability = -1;
    expect("query compute_capability -1", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "compute_capability");
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.window = 2;
    expect("query window 2", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "window is 2");
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.kernel_path = 9;
    expect("query kernel_path 9", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "kernel_path is 9");

    /* FA_PATH_SM90: the forward (test_query_sm90_forward) and, on compute capability 9.0, the backward of the
       64/128/192/256 kernels; decode stays on the sm80 path */
    test_query_sm90_forward();
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.kernel_path = FA_PATH_SM90;
    q.pass = FA_PASS_BACKWARD;
    q.compute_capability = 80;
    expect("query backward on FA_PATH_SM90 at cc 8.0", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "FA_PATH_SM90");

    q = forward_query(FA_DTYPE_FLOAT32, FA_TEST_HEAD_DIM);
    expect("query fp32", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "FA_DTYPE_FLOAT32");
    q = forward_query(FA_DTYPE_FLOAT16, 520);
    expect("query head_dim 520", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "head_dim is 520; this build serves");
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM + 4);
    expect("query head_dim not a multiple of 8", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "this build serves");
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.compute_capability = 75;
    expect("query compute capability 75", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "8.0 or newer");
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.pass = FA_PASS_BACKWARD;
    expect("query backward", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    if (head_dim_served(128)) { /* (a build without head dim 128 refuses it first, for that reason) */
        q.compute_capability = 86; /* 99 KB of shared memory per block: too little for the d128 backward tile */
        q.head_dim = 128;
        expect("query backward sm86 d128", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "bytes of shared memory per block");
        q.compute_capability = 90;
        expect("query backward sm90 d128", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    } else {
        g_skipped += 2;
    }
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.pass = FA_PASS_DECODE;
    expect("query decode", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.varlen = 1;
    expect("query decode varlen", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "decode has no variable-length batch");

    /* The query and fa_forward_check agree on every head dim. */
    for (d = 1; d <= 264; ++d) {
        const int by_query = (q = forward_query(FA_DTYPE_FLOAT16, d), fa_query_support(&q) == FA_STATUS_SUCCESS);
        if (by_query != head_dim_served(d)) {
            ++disagreements;
            printf("  head dim %d: fa_query_support says %d, fa_forward_check says %d\n", d, by_query,
                   head_dim_served(d));
        }
    }
    CHECK(disagreements == 0, "fa_query_support and fa_forward_check disagree on %d head dims", disagreements);
    CHECK(head_dim_served(FA_TEST_HEAD_DIM) && !head_dim_served(FA_TEST_HEAD_DIM + 4) && !head_dim_served(264),
          "served head dims: %d must be served, %d and 264 not", FA_TEST_HEAD_DIM, FA_TEST_HEAD_DIM + 4);
}

/* ---- fp8 (e4m3) forward (issue 12; no GPU needed) --------------------------------------------------------- */

static int is_fp8_kernel(const char* name) { return strstr(name, "_e4m3_") != NULL || strstr(name, "_fp8_") != NULL; }

/* Whether the library lists an fp8 kernel ("_e4m3_" or "_fp8_" in a name): the sm90 fp8 forward is compiled in. */
static int build_has_fp8_kernels(void) { return build_lists_kernel(is_fp8_kernel); }

/* What the build holds (fp8_build_facts sets them before the fp8 tests: asking the library later would clear the
   last error of the call under test). */
static int g_fp8_sm90a = 0, g_fp8_kernels = 0;

static void fp8_build_facts(void) {
    g_fp8_sm90a = build_has_sm90a();
    g_fp8_kernels = build_has_fp8_kernels();
}

/* What a valid fp8 forward at compute capability cc (FA_PATH_AUTO) must get from this build: success where the sm90
   fp8 forward is compiled in and cc is 9.0 or 0 (any GPU), else UNSUPPORTED saying that fp8 needs the sm90 forward
   and, in words, why not here. Returns 1 when `status` and the message are that. */
static int fp8_verdict_ok(const char* label, fa_status_t status, int cc) {
    static const char* const sm90_only = "fp8 (e4m3) is served by the sm90 forward only";
    const char* why;
    if (!g_fp8_sm90a) {
        why = "this build has no sm_90a code";
    } else if (cc != 0 && cc != 90) {
        why = "compute capability 9.0 only";
    } else if (!g_fp8_kernels) {
        why = "this build has no sm90 fp8 forward kernel for that head dim";
    } else {
        return expect(label, status, FA_STATUS_SUCCESS, NULL);
    }
    if (!expect(label, status, FA_STATUS_UNSUPPORTED, sm90_only)) {
        return 0;
    }
    CHECK(strstr(fa_last_error_message(), why) != NULL, "%s: message \"%s\" does not say why (\"%s\")", label,
          fa_last_error_message(), why);
    return strstr(fa_last_error_message(), why) != NULL;
}

/* valid_params(with_lse) made an fp8 call: q, k and v e4m3 (1 byte, so the contiguous strides of head dim
   FA_TEST_HEAD_DIM stay multiples of 16 elements), out bf16. No descales. */
static fa_forward_params_t valid_fp8_params(int with_lse) {
    fa_forward_params_t p = valid_params(with_lse);
    p.q.dtype = FA_DTYPE_FLOAT8_E4M3;
    p.k.dtype = FA_DTYPE_FLOAT8_E4M3;
    p.v.dtype = FA_DTYPE_FLOAT8_E4M3;
    p.out.dtype = FA_DTYPE_BFLOAT16;
    return p;
}

#define DESCALE_Q ((void*)(uintptr_t)0xA00000000ull)
#define DESCALE_K ((void*)(uintptr_t)0xA00001000ull)
#define DESCALE_V ((void*)(uintptr_t)0xA00002000ull)

/* valid_fp8_params with all three descales: q one factor for the tensor (strides 0, 0), k dense [batch, heads_kv],
   v one factor per sequence (head stride 0). */
static fa_forward_params_t valid_fp8_descaled(int with_lse) {
    fa_forward_params_t p = valid_fp8_params(with_lse);
    set_descale(&p.q_descale, DESCALE_Q, VB, VHKV, 0, 0);
    set_descale(&p.k_descale, DESCALE_K, VB, VHKV, VHKV, 1);
    set_descale(&p.v_descale, DESCALE_V, VB, VHKV, 1, 0);
    return p;
}

static void test_fp8_validation(void) {
    fa_forward_params_t p;
    const int64_t d = FA_TEST_HEAD_DIM;
    const int ccs[3] = {0, 90, 80};
    char needle[200], label[96];
    int i;

    fp8_build_facts();
    printf("  build has sm90 fp8 forward kernels: %s\n", g_fp8_kernels ? "yes" : "no");
    CHECK(FA_DTYPE_FLOAT8_E4M3 == 5, "FA_DTYPE_FLOAT8_E4M3 is %d, the ABI fixes it at 5", (int)FA_DTYPE_FLOAT8_E4M3);
    CHECK(d % 16 == 0, "the tests' head dim %d must be a multiple of 16 for the fp8 cases", (int)d);

    /* Valid fp8 calls (descales absent, given, broadcast; lse; varlen): what the build serves, at cc 0, 9.0, 8.0. */
    for (i = 0; i < 3; ++i) {
        sprintf(label, "fp8 valid, no descales (cc %d)", ccs[i]);
        p = valid_fp8_params(1);
        fp8_verdict_ok(label, fa_forward_check(&p, ccs[i]), ccs[i]);
        sprintf(label, "fp8 valid, descales (cc %d)", ccs[i]);
        p = valid_fp8_descaled(1);
        fp8_verdict_ok(label, fa_forward_check(&p, ccs[i]), ccs[i]);
    }
    p = valid_fp8_descaled(0);
    p.causal = 0;
    p.window_left = 16;
    p.softcap = 30.0f;
    p.kernel_path = FA_PATH_SM90;
    if (g_fp8_sm90a && g_fp8_kernels) {
        expect("fp8 on FA_PATH_SM90, window, softcap", fa_forward_check(&p, 90), FA_STATUS_SUCCESS, NULL);
    } else {
        expect("fp8 on FA_PATH_SM90 without the kernels", fa_forward_check(&p, 90), FA_STATUS_UNSUPPORTED,
               "kernel_path is FA_PATH_SM90, but");
    }
    p = valid_fp8_descaled(1);
    p.kernel_path = FA_PATH_SM90;
    expect("fp8 on FA_PATH_SM90 at cc 8.0", fa_forward_check(&p, 80), FA_STATUS_UNSUPPORTED, "FA_PATH_SM90");
    /* the path: never sm80 */
    p = valid_fp8_descaled(1);
    p.kernel_path = FA_PATH_SM80;
    for (i = 0; i < 3; ++i) {
        sprintf(label, "fp8 on FA_PATH_SM80 (cc %d)", ccs[i]);
        expect(label, fa_forward_check(&p, ccs[i]), FA_STATUS_UNSUPPORTED,
               "kernel_path is FA_PATH_SM80, but fp8 (e4m3) is served by the sm90 forward only");
    }
    /* the 16-bit twin of the same call runs on sm80 anywhere */
    p = valid_params(1);
    p.kernel_path = FA_PATH_SM80;
    expect("bf16 twin on FA_PATH_SM80", fa_forward_check(&p, 80), FA_STATUS_SUCCESS, NULL);

    /* q, k and v all fp8 or none; the mismatching tensor is named */
    p = valid_fp8_params(0);
    p.k.dtype = FA_DTYPE_BFLOAT16;
    expect("fp8 q, bf16 k", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "k.dtype is FA_DTYPE_BFLOAT16 but q.dtype is FA_DTYPE_FLOAT8_E4M3; q, k and v must all be fp8");
    p = valid_fp8_params(0);
    p.v.dtype = FA_DTYPE_FLOAT16;
    expect("fp8 q and k, fp16 v", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "v.dtype is FA_DTYPE_FLOAT16 but q.dtype is FA_DTYPE_FLOAT8_E4M3; q, k and v must all be fp8");
    p = valid_params(0);
    p.k.dtype = FA_DTYPE_FLOAT8_E4M3;
    p.v.dtype = FA_DTYPE_FLOAT8_E4M3;
    expect("fp16 q, fp8 k and v", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "k.dtype is FA_DTYPE_FLOAT8_E4M3 but q.dtype is FA_DTYPE_FLOAT16; q, k and v must all be fp8");
    p = valid_params(0);
    p.v.dtype = FA_DTYPE_FLOAT8_E4M3;
    expect("fp16 q and k, fp8 v", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "v.dtype is FA_DTYPE_FLOAT8_E4M3 but q.dtype is FA_DTYPE_FLOAT16; q, k and v must all be fp8");
    EXPECT_FIELD("dtype 7 (no e5m2 in the ABI; 6 is uint8 since 0.9)", valid_fp8_params(0), k.dtype, 7,
                 FA_STATUS_INVALID_ARGUMENT, "k.dtype is 7 (an unknown dtype)");
    EXPECT_FIELD("dtype 6 (uint8, the dropout mask's)", valid_fp8_params(0), k.dtype, FA_DTYPE_UINT8,
                 FA_STATUS_INVALID_ARGUMENT, "k.dtype is 6 (FA_DTYPE_UINT8); k must be FA_DTYPE_FLOAT16");

    /* out is bf16 with fp8 inputs (and never fp8); lse stays fp32 */
    EXPECT_FIELD("fp8 with fp16 out", valid_fp8_params(0), out.dtype, FA_DTYPE_FLOAT16, FA_STATUS_INVALID_ARGUMENT,
                 "out.dtype is FA_DTYPE_FLOAT16; out must be bf16 when q is fp8 (e4m3)");
    EXPECT_FIELD("fp8 with fp8 out", valid_fp8_params(0), out.dtype, FA_DTYPE_FLOAT8_E4M3, FA_STATUS_INVALID_ARGUMENT,
                 "out.dtype is 5 (FA_DTYPE_FLOAT8_E4M3); out must be FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16");
    EXPECT_FIELD("fp16 call with fp8 out", valid_params(0), out.dtype, FA_DTYPE_FLOAT8_E4M3, FA_STATUS_INVALID_ARGUMENT,
                 "out.dtype is 5 (FA_DTYPE_FLOAT8_E4M3)");
    EXPECT_FIELD("fp8 with bf16 lse", valid_fp8_params(1), lse.dtype, FA_DTYPE_BFLOAT16, FA_STATUS_INVALID_ARGUMENT,
                 "lse.dtype is 2 (FA_DTYPE_BFLOAT16); lse must be FA_DTYPE_FLOAT32");
    /* out is 2 bytes an element, q 1: out right after q's 1-byte elements touches, one byte less overlaps */
    p = valid_fp8_params(0);
    p.out.data = (char*)p.q.data + span(&p.q);
    fp8_verdict_ok("out right after fp8 q (1-byte elements)", fa_forward_check(&p, 0), 0);
    p.out.data = (char*)p.q.data + span(&p.q) - 16;
    expect("out over fp8 q's last 16 bytes", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "overlaps q");
    p = valid_fp8_params(0);
    p.q.data = (char*)p.out.data + 2 * span(&p.out) - 16; /* q starts inside out's last 16 bytes (bf16: 2 each) */
    expect("fp8 q inside bf16 out's tail", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "overlaps q");

    /* strides: 16 bytes are 16 fp8 elements (8 of fp16/bf16) */
    p = valid_fp8_params(0);
    p.q.strides[1] = VHQ * d + 8;
    p.q.strides[0] = VSQ * (VHQ * d + 16);
    sprintf(needle, "q.strides[1] (seqlen_q) is %d; the batch, seqlen_q and heads_q strides must be multiples of 16 "
                    "elements (16 bytes)", (int)(VHQ * d + 8));
    expect("fp8 row stride a multiple of 8, not 16", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, needle);
    p.q.dtype = p.k.dtype = p.v.dtype = FA_DTYPE_BFLOAT16;
    expect("the same strides in bf16 (16 bytes)", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = valid_fp8_params(0);
    p.v.strides[2] = d + 8;
    p.v.strides[1] = VHKV * (d + 16);
    p.v.strides[0] = VSK * p.v.strides[1];
    expect("fp8 v head stride d + 8", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "the batch, seqlen_k and heads_kv strides must be multiples of 16 elements");
    p = valid_fp8_params(0);
    p.k.strides[0] += 8;
    expect("fp8 k batch stride + 8", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "k.strides[0] (batch)");
    EXPECT_FIELD("fp8 head_dim not contiguous", valid_fp8_params(0), k.strides[3], 2, FA_STATUS_INVALID_ARGUMENT,
                 "k.strides[3] is 2; the last dimension (head_dim) must be contiguous");
    p = valid_fp8_params(0);
    p.v.data = (char*)p.v.data + 8;
    expect("fp8 v 8-byte aligned only", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "v.data (0x300000008) is not 16-byte aligned");

    /* head dims: multiples of 16 (FlashAttention-3). Contiguous 24 breaks the 16-element strides first (the root
       cause named); 40 with padded strides is valid input but not served; both fine in bf16. */
    p = valid_fp8_params(0);
    set_tensor4(&p.q, p.q.data, FA_DTYPE_FLOAT8_E4M3, VB, VSQ, VHQ, 24, 0);
    set_tensor4(&p.k, p.k.data, FA_DTYPE_FLOAT8_E4M3, VB, VSK, VHKV, 24, 0);
    set_tensor4(&p.v, p.v.data, FA_DTYPE_FLOAT8_E4M3, VB, VSK, VHKV, 24, 0);
    set_tensor4(&p.out, p.out.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, 24, 0);
    expect("fp8 head dim 24, contiguous", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "q.shape[3] (head_dim) is 24; fp8 (e4m3) head dims must be multiples of 16");
    p = valid_fp8_params(0);
    {
        fa_tensor_t* ts[3] = {&p.q, &p.k, &p.v};
        const int64_t heads[3] = {VHQ, VHKV, VHKV}, rows[3] = {VSQ, VSK, VSK};
        int t;
        for (t = 0; t < 3; ++t) {
            set_tensor4(ts[t], ts[t]->data, FA_DTYPE_FLOAT8_E4M3, VB, rows[t], heads[t], 40, 0);
            ts[t]->strides[2] = 48;
            ts[t]->strides[1] = heads[t] * 48;
            ts[t]->strides[0] = rows[t] * heads[t] * 48;
        }
        set_tensor4(&p.out, p.out.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, 40, 0);
        if (head_dim_served(40)) {
            expect("fp8 head dim 40, strides of 48", fa_forward_check(&p, 0), FA_STATUS_UNSUPPORTED,
                   "q.shape[3] (head_dim) is 40; fp8 (e4m3) head dims must be multiples of 16");
            for (t = 0; t < 3; ++t) ts[t]->dtype = FA_DTYPE_BFLOAT16;
            expect("bf16 head dim 40, strides of 48", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
        }
    }

    /* descales: fp8 only, naming the field */
    EXPECT_FIELD("q_descale with fp16 q", valid_params(0), q_descale.data, DESCALE_Q, FA_STATUS_INVALID_ARGUMENT,
                 "q_descale.data is set but q.dtype is FA_DTYPE_FLOAT16");
    EXPECT_FIELD("k_descale with fp16 q", valid_params(0), k_descale.data, DESCALE_K, FA_STATUS_INVALID_ARGUMENT,
                 "k_descale.data is set but q.dtype is FA_DTYPE_FLOAT16");
    p = valid_params(0);
    p.q.dtype = p.k.dtype = p.v.dtype = p.out.dtype = FA_DTYPE_BFLOAT16;
    set_descale(&p.v_descale, DESCALE_V, VB, VHKV, VHKV, 1);
    expect("v_descale with bf16 q", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "v_descale.data is set but q.dtype is FA_DTYPE_BFLOAT16");
    /* absent: data NULL, whatever else the descriptor holds */
    p = valid_params(0);
    p.k_descale.dtype = 77;
    p.k_descale.rank = -3;
    expect("fp16 call, k_descale data NULL, garbage descriptor", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    /* each descale on its own */
    EXPECT_FIELD("q_descale bf16", valid_fp8_descaled(0), q_descale.dtype, FA_DTYPE_BFLOAT16, FA_STATUS_INVALID_ARGUMENT,
                 "q_descale.dtype is 2 (FA_DTYPE_BFLOAT16); q_descale must be FA_DTYPE_FLOAT32");
    EXPECT_FIELD("k_descale rank 1", valid_fp8_descaled(0), k_descale.rank, 1, FA_STATUS_INVALID_ARGUMENT,
                 "k_descale.rank is 1; k_descale must have rank 2 [batch, heads_kv]");
    EXPECT_FIELD("k_descale rank 3", valid_fp8_descaled(0), k_descale.rank, 3, FA_STATUS_INVALID_ARGUMENT,
                 "k_descale.rank is 3");
    EXPECT_FIELD("v_descale negative batch stride", valid_fp8_descaled(0), v_descale.strides[0], -1,
                 FA_STATUS_INVALID_ARGUMENT, "v_descale.strides[0] (batch) is -1; strides must be >= 0");
    EXPECT_FIELD("q_descale negative head stride", valid_fp8_descaled(0), q_descale.strides[1], -4,
                 FA_STATUS_INVALID_ARGUMENT, "q_descale.strides[1] (heads_kv) is -4");
    EXPECT_FIELD("k_descale 2-byte aligned", valid_fp8_descaled(0), k_descale.data, (char*)DESCALE_K + 2,
                 FA_STATUS_INVALID_ARGUMENT, "k_descale.data (0xa00001002) is not 4-byte aligned");
    EXPECT_FIELD("v_descale 0 sequences", valid_fp8_descaled(0), v_descale.shape[0], 0, FA_STATUS_INVALID_ARGUMENT,
                 "v_descale.shape[0] (batch) is 0; it must be at least 1");
    EXPECT_FIELD("q_descale past the address space", valid_fp8_descaled(0), q_descale.data,
                 (void*)(uintptr_t)(UINTPTR_MAX - 3u), FA_STATUS_INVALID_ARGUMENT, "runs past the end of the address space");
    p = valid_fp8_descaled(0);
    p.k_descale.strides[0] = (int64_t)1 << 62;
    expect("k_descale strides overflowing", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "k_descale is too large");
    /* the shape: [batch, heads_kv], per KV head even for q */
    p = valid_fp8_descaled(0);
    set_descale(&p.q_descale, DESCALE_Q, VB, VHQ, VHQ, 1);
    sprintf(needle, "q_descale.shape is [%d, %d] but must be [batch, heads_kv] = [%d, %d]", VB, VHQ, VB, VHKV);
    expect("q_descale per q head", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, needle);
    p = valid_fp8_descaled(0);
    set_descale(&p.v_descale, DESCALE_V, 1, VHKV, 0, 1);
    expect("v_descale one row for batch 2", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "v_descale.shape is [1, 2] but must be [batch, heads_kv] = [2, 2]");
    /* the descales are read: out and lse (written) must keep apart from them */
    p = valid_fp8_descaled(1);
    p.q_descale.data = (char*)p.out.data + 64;
    expect("q_descale inside out", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "out (bytes");
    expect("q_descale inside out: named", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "overlaps q_descale");
    p = valid_fp8_descaled(1);
    p.v_descale.data = p.lse.data;
    expect("v_descale on lse", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "lse (bytes");
    expect("v_descale on lse: named", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "overlaps v_descale");
    p = valid_fp8_descaled(1);
    p.k_descale.data = (char*)p.k.data + 64; /* read only: may share memory with an input */
    p.q_descale.data = p.k_descale.data;
    fp8_verdict_ok("descales inside k (read only)", fa_forward_check(&p, 0), 0);

    /* variable-length batches: [varlen_batch, heads_kv] */
    p = valid_varlen_params(1);
    p.q.dtype = p.k.dtype = p.v.dtype = FA_DTYPE_FLOAT8_E4M3;
    p.out.dtype = FA_DTYPE_BFLOAT16;
    set_descale(&p.q_descale, DESCALE_Q, VL_BATCH, VHKV, VHKV, 1);
    set_descale(&p.k_descale, DESCALE_K, VL_BATCH, VHKV, 0, 1);
    fp8_verdict_ok("fp8 varlen with descales", fa_forward_check(&p, 0), 0);
    set_descale(&p.k_descale, DESCALE_K, VB, VHKV, 0, 1);
    sprintf(needle, "k_descale.shape is [%d, %d] but must be [varlen_batch, heads_kv] = [%d, %d]", VB, VHKV, VL_BATCH,
            VHKV);
    expect("fp8 varlen k_descale of the wrong batch", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, needle);
    p.k_descale.rank = 3;
    expect("fp8 varlen k_descale rank 3", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "k_descale must have rank 2 [varlen_batch, heads_kv]");

    /* an INVALID_ARGUMENT fault is reported before fp8's UNSUPPORTED verdicts */
    p = valid_fp8_descaled(0);
    p.kernel_path = FA_PATH_SM80;
    p.causal = 3;
    expect("fp8 on FA_PATH_SM80 with causal 3", fa_forward_check(&p, 80), FA_STATUS_INVALID_ARGUMENT, "causal is 3");

    /* the backward: no fp8 (as FlashAttention-3) */
    {
        fa_backward_params_t bw;
        p = valid_fp8_params(1);
        bw = backward_of(&p);
        expect("backward of an fp8 call", fa_backward_check(&bw, 0), FA_STATUS_UNSUPPORTED,
               "q.dtype is FA_DTYPE_FLOAT8_E4M3: the fp8 forward has no backward (as FlashAttention-3); use bf16/fp16 "
               "for training");
        expect("backward of an fp8 call (cc 9.0)", fa_backward_check(&bw, 90), FA_STATUS_UNSUPPORTED,
               "the fp8 forward has no backward");
        p = valid_params(1);
        bw = backward_of(&p);
        bw.v.dtype = FA_DTYPE_FLOAT8_E4M3;
        expect("backward with an fp8 v", fa_backward_check(&bw, 0), FA_STATUS_UNSUPPORTED,
               "v.dtype is FA_DTYPE_FLOAT8_E4M3: the fp8 forward has no backward");
        bw = backward_of(&p);
        bw.dq.dtype = FA_DTYPE_FLOAT8_E4M3;
        expect("backward with an fp8 dq", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
               "dq.dtype is 5 (FA_DTYPE_FLOAT8_E4M3); dq must be FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16");
        bw = backward_of(&p);
        expect("backward of the fp16 twin", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    }

    /* An older caller (0.4: the struct ends where q_descale begins, 488 bytes on LP64) gets no descales, whatever
       lies past its struct; a 0.5 caller's fields are read. */
    CHECK(sizeof(void*) != 8 || offsetof(fa_forward_params_t, q_descale) == 488,
          "q_descale is at offset %u: the 0.5 fields must be appended after reserved2 (0.4's fa_forward_params_t had "
          "488 bytes)", (unsigned)offsetof(fa_forward_params_t, q_descale));
    CHECK(offsetof(fa_forward_params_t, q_descale) == offsetof(fa_forward_params_t, reserved2) + sizeof(int32_t) &&
              offsetof(fa_forward_params_t, v_descale) + sizeof(fa_tensor_t) == offsetof(fa_forward_params_t, sinks),
          "q_descale, k_descale and v_descale must follow reserved2 and end the 0.5/0.6 struct (0.7's sinks follow)");
    p = valid_params(1);
    set_descale(&p.q_descale, DESCALE_Q, 7, 7, -1, -1); /* garbage a 0.4 caller never wrote */
    p.k_descale.data = (void*)(uintptr_t)3;
    p.struct_size = (uint32_t)offsetof(fa_forward_params_t, q_descale);
    expect("0.4 struct_size: descales ignored", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.struct_size = (uint32_t)offsetof(fa_forward_params_t, k_descale); /* covers q_descale only */
    expect("struct_size up to q_descale reads it", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "q_descale.data is set but q.dtype is FA_DTYPE_FLOAT16");
    p.q_descale.data = NULL;
    expect("struct_size up to q_descale: k_descale ignored", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.struct_size = (uint32_t)sizeof(fa_forward_params_t);
    expect("0.5 struct_size reads k_descale", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "k_descale.data is set but q.dtype is FA_DTYPE_FLOAT16");
    /* an fp8 call from a 0.4-sized struct: the fp8 dtype alone, descales 1 */
    p = valid_fp8_params(1);
    p.v_descale.data = (void*)(uintptr_t)3;
    p.struct_size = (uint32_t)offsetof(fa_forward_params_t, q_descale);
    fp8_verdict_ok("fp8 call in a 0.4-sized struct", fa_forward_check(&p, 0), 0);
    {
        unsigned char buffer[sizeof(fa_forward_params_t) + 16];
        const size_t old_size = offsetof(fa_forward_params_t, q_descale);
        fa_forward_params_t* old = (fa_forward_params_t*)(void*)buffer;
        size_t j;
        int untouched = 1, zeroed = 1;
        memset(buffer, 0xAB, sizeof(buffer));
        expect("params_init with the 0.4 size", fa_forward_params_init(old, old_size), FA_STATUS_SUCCESS, NULL);
        for (j = old_size; j < sizeof(buffer); ++j) untouched &= buffer[j] == 0xAB;
        CHECK(untouched, "fa_forward_params_init with the 0.4 size wrote past offsetof(q_descale)");
        CHECK(old->struct_size == old_size && old->window_left == -1 && old->reserved2 == 0,
              "0.4-sized init must set the 0.4 defaults");
        memset(buffer, 0xAB, sizeof(buffer));
        expect("params_init with the 0.5 size", fa_forward_params_init(old, offsetof(fa_forward_params_t, sinks)),
               FA_STATUS_SUCCESS, NULL);
        for (j = offsetof(fa_forward_params_t, q_descale); j < offsetof(fa_forward_params_t, sinks); ++j) {
            zeroed &= buffer[j] == 0;
        }
        CHECK(zeroed, "fa_forward_params_init must zero q_descale, k_descale and v_descale (data NULL: factor 1)");
    }
}

/* A rank-1 fp32 [n] tensor with stride `stride`. */
static void set_tensor1_f32(fa_tensor_t* t, void* data, int64_t n, int64_t stride) {
    memset(t, 0, sizeof(*t));
    t->data = data;
    t->dtype = FA_DTYPE_FLOAT32;
    t->rank = 1;
    t->shape[0] = n;
    t->strides[0] = stride;
}

/* Learnable sinks (0.7): fa_forward_params_t.sinks and fa_backward_params_t.sinks/dsinks, every refusal with its
   message before any CUDA call; older (0.6-sized) structs and queries still accepted, their missing fields read as
   "no sinks"; fa_query_support knows the option. */
static void test_sinks_validation(void) {
    fa_forward_params_t p;
    fa_backward_params_t bw;
    fa_support_query_t q;
    void* const sinks_at = (void*)(uintptr_t)0xA00000000ull;
    void* const dsinks_at = (void*)(uintptr_t)0xB00000000ull;

    /* the layout: appended after the 0.6 structs (728, 824 and 40 bytes on LP64) */
    CHECK(sizeof(void*) != 8 || (offsetof(fa_forward_params_t, sinks) == 728 &&
                                 offsetof(fa_backward_params_t, sinks) == 824 &&
                                 offsetof(fa_support_query_t, sinks) == 40),
          "sinks must be appended to the 0.6 structs (forward 728, backward 824, query 40 bytes)");
    CHECK(offsetof(fa_forward_params_t, sinks) + sizeof(fa_tensor_t) == offsetof(fa_forward_params_t, alibi_slopes) &&
              offsetof(fa_backward_params_t, dsinks) + sizeof(fa_tensor_t) ==
                  offsetof(fa_backward_params_t, alibi_slopes) &&
              offsetof(fa_backward_params_t, dsinks) == offsetof(fa_backward_params_t, sinks) + sizeof(fa_tensor_t),
          "sinks end the 0.7 forward struct; sinks then dsinks end the 0.7 backward struct (0.8's alibi_slopes follow)");
    CHECK(FA_VERSION_CODE >= 700, "FA_VERSION_CODE is %d; sinks came with 0.7.0", FA_VERSION_CODE);

    /* forward: valid, then each refusal */
    p = valid_params(1);
    set_tensor1_f32(&p.sinks, sinks_at, VHQ, 1);
    expect("sinks: valid", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.sinks.strides[0] = 3;
    expect("sinks: strided", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = valid_params(1);
    set_tensor1_f32(&p.sinks, sinks_at, VHQ, 1);
    p.sinks.dtype = FA_DTYPE_BFLOAT16;
    expect("sinks: bf16", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "sinks.dtype is 2 (FA_DTYPE_BFLOAT16); sinks must be FA_DTYPE_FLOAT32");
    p.sinks.dtype = FA_DTYPE_FLOAT16;
    expect("sinks: fp16", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "sinks must be FA_DTYPE_FLOAT32");
    set_tensor1_f32(&p.sinks, sinks_at, VHQ, 1);
    p.sinks.rank = 2;
    p.sinks.shape[1] = 1;
    p.sinks.strides[1] = 1;
    expect("sinks: rank 2", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "sinks.rank is 2; sinks must have rank 1 [heads_q]; one fp32 sink logit per query head");
    set_tensor1_f32(&p.sinks, sinks_at, VHKV, 1);
    expect("sinks: per KV head", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "sinks.shape is [2] but must be [heads_q] = [6]: one sink logit per query head (not per KV head)");
    set_tensor1_f32(&p.sinks, sinks_at, 0, 1);
    expect("sinks: empty", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "sinks.shape[0] (heads_q) is 0");
    set_tensor1_f32(&p.sinks, (void*)((uintptr_t)sinks_at + 2), VHQ, 1);
    expect("sinks: misaligned", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "sinks.data (0xa00000002) is not 4-byte aligned");
    set_tensor1_f32(&p.sinks, sinks_at, VHQ, 0);
    expect("sinks: stride 0", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "sinks.strides[0] (heads_q) is 0; strides must be positive");
    set_tensor1_f32(&p.sinks, sinks_at, VHQ, -1);
    expect("sinks: negative stride", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "strides must be positive");
    /* sinks inside out or lse: out/lse would overwrite them */
    set_tensor1_f32(&p.sinks, (void*)((uintptr_t)p.out.data + 64), VHQ, 1);
    expect("sinks: inside out", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "out");
    CHECK(strstr(fa_last_error_message(), "sinks") != NULL, "overlap message names sinks: %s", fa_last_error_message());
    set_tensor1_f32(&p.sinks, (void*)((uintptr_t)p.lse.data + 64), VHQ, 1);
    expect("sinks: inside lse", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "lse");
    CHECK(strstr(fa_last_error_message(), "sinks") != NULL, "overlap message names sinks: %s", fa_last_error_message());
    /* data NULL is "no sinks", whatever the rest of the descriptor holds */
    set_tensor1_f32(&p.sinks, NULL, 999, -5);
    p.sinks.dtype = 77;
    expect("sinks: data NULL is none", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    /* varlen: [heads_q] all the same */
    p = valid_varlen_params(1);
    set_tensor1_f32(&p.sinks, sinks_at, VHQ, 1);
    expect("sinks: varlen", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.sinks.shape[0] = VHQ + 1;
    expect("sinks: varlen wrong heads", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "must be [heads_q] = [6]");

    /* an older (0.6) caller: the struct ends before sinks; garbage past it is never read */
    p = valid_params(1);
    set_tensor1_f32(&p.sinks, (void*)(uintptr_t)3, -1, -1); /* garbage a 0.6 caller never wrote */
    p.sinks.dtype = 99;
    p.struct_size = (uint32_t)offsetof(fa_forward_params_t, sinks);
    expect("0.6 struct_size: sinks ignored", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.struct_size = (uint32_t)sizeof(fa_forward_params_t);
    expect("0.7 struct_size reads sinks", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "sinks.dtype is 99");
    {
        unsigned char buffer[sizeof(fa_forward_params_t) + 16];
        const size_t old_size = offsetof(fa_forward_params_t, sinks);
        fa_forward_params_t* old = (fa_forward_params_t*)(void*)buffer;
        size_t j;
        int untouched = 1, zeroed = 1;
        memset(buffer, 0xAB, sizeof(buffer));
        expect("params_init with the 0.6 size", fa_forward_params_init(old, old_size), FA_STATUS_SUCCESS, NULL);
        for (j = old_size; j < sizeof(buffer); ++j) untouched &= buffer[j] == 0xAB;
        CHECK(untouched, "fa_forward_params_init with the 0.6 size wrote past offsetof(sinks)");
        memset(buffer, 0xAB, sizeof(buffer));
        expect("params_init with the 0.7 size", fa_forward_params_init(old, sizeof(fa_forward_params_t)),
               FA_STATUS_SUCCESS, NULL);
        for (j = old_size; j < sizeof(fa_forward_params_t); ++j) zeroed &= buffer[j] == 0;
        CHECK(zeroed, "fa_forward_params_init must zero sinks (data NULL: none)");
    }

    /* backward: sinks as the forward's, dsinks [heads_q] fp32, needs sinks, apart from everything */
    p = valid_params(1);
    bw = backward_of(&p);
    set_tensor1_f32(&bw.sinks, sinks_at, VHQ, 1);
    expect("backward sinks: valid", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    set_tensor1_f32(&bw.dsinks, dsinks_at, VHQ, 1);
    expect("backward sinks + dsinks: valid", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    bw.dsinks.strides[0] = 2;
    expect("backward dsinks strided", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    bw.sinks.data = NULL;
    expect("backward dsinks without sinks", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
           "dsinks.data is set but sinks.data is NULL; dsinks is the gradient of the sinks");
    bw = backward_of(&p);
    set_tensor1_f32(&bw.sinks, sinks_at, VHQ, 1);
    set_tensor1_f32(&bw.dsinks, dsinks_at, VHQ, 1);
    bw.dsinks.dtype = FA_DTYPE_FLOAT16;
    expect("backward dsinks fp16", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
           "dsinks.dtype is 1 (FA_DTYPE_FLOAT16); dsinks must be FA_DTYPE_FLOAT32");
    set_tensor1_f32(&bw.dsinks, dsinks_at, VHQ - 1, 1);
    expect("backward dsinks wrong shape", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
           "dsinks.shape is [5] but must be [heads_q] = [6], the shape of sinks");
    set_tensor1_f32(&bw.dsinks, (void*)((uintptr_t)dsinks_at + 1), VHQ, 1);
    expect("backward dsinks misaligned", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT, "is not 4-byte aligned");
    set_tensor1_f32(&bw.dsinks, sinks_at, VHQ, 1); /* dsinks over sinks */
    expect("backward dsinks over sinks", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT, "dsinks");
    CHECK(strstr(fa_last_error_message(), "sinks") != NULL, "names sinks: %s", fa_last_error_message());
    set_tensor1_f32(&bw.dsinks, (void*)((uintptr_t)bw.dq.data + 16), VHQ, 1); /* dsinks inside dq */
    expect("backward dsinks inside dq", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT, "dq");
    set_tensor1_f32(&bw.dsinks, (void*)((uintptr_t)bw.lse.data + 16), VHQ, 1); /* dsinks inside lse */
    expect("backward dsinks inside lse", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT, "lse");
    set_tensor1_f32(&bw.dsinks, dsinks_at, VHQ, 1);
    bw.sinks.dtype = FA_DTYPE_INT32;
    expect("backward sinks int32", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
           "sinks.dtype is 4 (FA_DTYPE_INT32); sinks must be FA_DTYPE_FLOAT32");
    /* a caller workspace over dsinks */
    bw = backward_of(&p);
    set_tensor1_f32(&bw.sinks, sinks_at, VHQ, 1);
    set_tensor1_f32(&bw.dsinks, dsinks_at, VHQ, 1);
    bw.workspace = (void*)((uintptr_t)dsinks_at - 256);
    bw.workspace_size = (size_t)1 << 30;
    expect("backward workspace over dsinks", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT, "workspace");

    /* an older (0.6) backward caller: sinks and dsinks are past its struct and never read */
    bw = backward_of(&p);
    set_tensor1_f32(&bw.sinks, (void*)(uintptr_t)3, -1, -1);
    set_tensor1_f32(&bw.dsinks, (void*)(uintptr_t)5, -1, -1);
    bw.struct_size = (uint32_t)offsetof(fa_backward_params_t, sinks);
    expect("backward 0.6 struct_size: sinks ignored", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    bw.struct_size = (uint32_t)offsetof(fa_backward_params_t, sinks) - 8;
    expect("backward struct_size below 0.6", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
           "(at least 824 for version 0.6)");
    bw.struct_size = (uint32_t)offsetof(fa_backward_params_t, dsinks); /* covers sinks only */
    expect("backward struct_size up to sinks reads it", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
           "sinks.shape[0] (heads_q) is -1");
    bw.sinks.data = NULL;
    expect("backward struct_size up to sinks: dsinks ignored", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    {
        unsigned char buffer[sizeof(fa_backward_params_t) + 16];
        const size_t old_size = offsetof(fa_backward_params_t, sinks);
        fa_backward_params_t* old = (fa_backward_params_t*)(void*)buffer;
        size_t j;
        int untouched = 1;
        memset(buffer, 0xAB, sizeof(buffer));
        expect("backward params_init with the 0.6 size", fa_backward_params_init(old, old_size), FA_STATUS_SUCCESS, NULL);
        for (j = old_size; j < sizeof(buffer); ++j) untouched &= buffer[j] == 0xAB;
        CHECK(untouched, "fa_backward_params_init with the 0.6 size wrote past offsetof(sinks)");
        CHECK(old->struct_size == old_size && old->window_left == -1 && old->deterministic == 0,
              "0.6-sized backward init must set the 0.6 defaults");
        expect("backward params_init below the 0.6 size", fa_backward_params_init(old, old_size - 8),
               FA_STATUS_INVALID_ARGUMENT, "struct_size is");
    }

    /* fa_query_support: sinks served by the forward and backward, not by decode; a 0.6-sized query works */
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.sinks = 1;
    q.causal = q.window = q.softcap = q.varlen = 1;
    expect("query forward sinks", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.kernel_path = FA_PATH_SM80;
    expect("query forward sinks sm80", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.pass = FA_PASS_BACKWARD;
    expect("query backward sinks sm80", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.pass = FA_PASS_DECODE;
    q.sinks = 1;
    expect("query decode sinks", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "fa_decode has no learnable sinks");
    q.sinks = 2;
    expect("query sinks 2", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "query->sinks");
    q.struct_size = (uint32_t)offsetof(fa_support_query_t, sinks); /* 0.6: the 2 is past the struct */
    expect("query 0.6 size: sinks ignored", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.struct_size = (uint32_t)offsetof(fa_support_query_t, sinks) - 4;
    expect("query below the 0.6 size", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "(at least 40 for version 0.6)");
}

/* ALiBi (0.8): alibi_slopes appended to fa_forward_params_t, fa_backward_params_t and fa_decode_params_t, and
   fa_support_query_t.alibi; every refusal with its message before any CUDA call; 0.7-sized structs and queries still
   accepted, their missing fields read as "no ALiBi". */
static void test_alibi_validation(void) {
    fa_forward_params_t p;
    fa_backward_params_t bw;
    fa_support_query_t q;
    void* const slopes_at = (void*)(uintptr_t)0xC00000000ull;

    /* the layout: appended after the 0.7 structs */
    CHECK(offsetof(fa_forward_params_t, alibi_slopes) == offsetof(fa_forward_params_t, sinks) + sizeof(fa_tensor_t) &&
              offsetof(fa_forward_params_t, alibi_slopes) + sizeof(fa_tensor_t) == offsetof(fa_forward_params_t, dropout_p),
          "alibi_slopes must follow sinks and end the 0.8 forward struct (0.9's dropout block after it)");
    CHECK(offsetof(fa_backward_params_t, alibi_slopes) == offsetof(fa_backward_params_t, dsinks) + sizeof(fa_tensor_t) &&
              offsetof(fa_backward_params_t, alibi_slopes) + sizeof(fa_tensor_t) == offsetof(fa_backward_params_t, dropout_p),
          "alibi_slopes must follow dsinks and end the 0.8 backward struct (0.9's dropout block after it)");
    CHECK(offsetof(fa_decode_params_t, alibi_slopes) + sizeof(fa_tensor_t) == offsetof(fa_decode_params_t, rotary_cos) &&
              (sizeof(void*) != 8 || offsetof(fa_decode_params_t, alibi_slopes) == 960),
          "alibi_slopes must follow the 0.7 decode struct's 960 bytes, the rotary block after it");
    CHECK(offsetof(fa_support_query_t, alibi) == offsetof(fa_support_query_t, sinks) + sizeof(int32_t) &&
              offsetof(fa_support_query_t, alibi) + sizeof(int32_t) == offsetof(fa_support_query_t, dropout),
          "alibi must follow sinks and end the 0.8 query struct");
    CHECK(FA_VERSION_CODE >= 800, "FA_VERSION_CODE is %d; ALiBi came with 0.8.0", FA_VERSION_CODE);

    /* forward: [heads_q], [batch, heads_q], strided */
    p = valid_params(1);
    set_tensor1_f32(&p.alibi_slopes, slopes_at, VHQ, 1);
    expect("alibi: [heads_q]", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.alibi_slopes.strides[0] = 3;
    expect("alibi: strided", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    set_tensor2_f32(&p.alibi_slopes, slopes_at, VB, VHQ);
    expect("alibi: [batch, heads_q]", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.causal = 1;
    p.softcap = 30.0f;
    expect("alibi: causal + softcap", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = valid_params(1);
    set_tensor2_f32(&p.alibi_slopes, slopes_at, VB + 1, VHQ);
    expect("alibi: wrong batch", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "alibi_slopes.shape is [3, 6] but its first dimension must be the batch, q.shape[0] = 2");
    set_tensor2_f32(&p.alibi_slopes, slopes_at, VB, VHKV);
    expect("alibi: per KV head", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "alibi_slopes.shape is [2, 2] but its last dimension must be heads_q = 6: one slope per query head");
    set_tensor1_f32(&p.alibi_slopes, slopes_at, VHKV, 1);
    expect("alibi: [heads_kv]", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "alibi_slopes.shape is [2] but its last dimension must be heads_q = 6");
    set_tensor1_f32(&p.alibi_slopes, slopes_at, VHQ, 1);
    p.alibi_slopes.rank = 3;
    expect("alibi: rank 3", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "alibi_slopes.rank is 3; alibi_slopes must be [heads_q] (one slope per query head) or [batch, heads_q]");
    set_tensor1_f32(&p.alibi_slopes, slopes_at, VHQ, 1);
    p.alibi_slopes.dtype = FA_DTYPE_BFLOAT16;
    expect("alibi: bf16", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "alibi_slopes.dtype is 2 (FA_DTYPE_BFLOAT16); alibi_slopes must be FA_DTYPE_FLOAT32");
    set_tensor1_f32(&p.alibi_slopes, (void*)((uintptr_t)slopes_at + 2), VHQ, 1);
    expect("alibi: misaligned", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "alibi_slopes.data (0xc00000002) is not 4-byte aligned");
    set_tensor1_f32(&p.alibi_slopes, slopes_at, VHQ, 0);
    expect("alibi: stride 0", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "alibi_slopes.strides[0] (heads_q) is 0; strides must be positive");
    set_tensor1_f32(&p.alibi_slopes, slopes_at, 0, 1);
    expect("alibi: empty", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "alibi_slopes.shape[0] (heads_q) is 0");
    set_tensor1_f32(&p.alibi_slopes, (void*)((uintptr_t)p.out.data + 64), VHQ, 1);
    expect("alibi: inside out", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "out");
    CHECK(strstr(fa_last_error_message(), "alibi_slopes") != NULL, "overlap names alibi_slopes: %s",
          fa_last_error_message());
    set_tensor1_f32(&p.alibi_slopes, (void*)((uintptr_t)p.lse.data + 64), VHQ, 1);
    expect("alibi: inside lse", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "lse");
    set_tensor1_f32(&p.alibi_slopes, NULL, 999, -5);
    p.alibi_slopes.dtype = 77;
    expect("alibi: data NULL is none", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    /* varlen: [heads_q], or [varlen_batch, heads_q] */
    p = valid_varlen_params(1);
    set_tensor1_f32(&p.alibi_slopes, slopes_at, VHQ, 1);
    expect("alibi: varlen [heads_q]", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    set_tensor2_f32(&p.alibi_slopes, slopes_at, VL_BATCH, VHQ);
    expect("alibi: varlen [varlen_batch, heads_q]", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    set_tensor2_f32(&p.alibi_slopes, slopes_at, VL_TOTAL_Q, VHQ);
    expect("alibi: varlen per token", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "its first dimension must be the batch, varlen_batch = 4");

    /* an older (0.7) caller: the struct ends before alibi_slopes; garbage past it is never read */
    p = valid_params(1);
    set_tensor1_f32(&p.alibi_slopes, (void*)(uintptr_t)3, -1, -1);
    p.alibi_slopes.dtype = 99;
    p.struct_size = (uint32_t)offsetof(fa_forward_params_t, alibi_slopes);
    expect("0.7 struct_size: alibi ignored", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.struct_size = (uint32_t)sizeof(fa_forward_params_t);
    expect("0.8 struct_size reads alibi", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "alibi_slopes.dtype is 99");
    {
        unsigned char buffer[sizeof(fa_forward_params_t) + 16];
        const size_t old_size = offsetof(fa_forward_params_t, alibi_slopes);
        fa_forward_params_t* old = (fa_forward_params_t*)(void*)buffer;
        size_t j;
        int untouched = 1, zeroed = 1;
        memset(buffer, 0xAB, sizeof(buffer));
        expect("params_init with the 0.7 size", fa_forward_params_init(old, old_size), FA_STATUS_SUCCESS, NULL);
        for (j = old_size; j < sizeof(buffer); ++j) untouched &= buffer[j] == 0xAB;
        CHECK(untouched, "fa_forward_params_init with the 0.7 size wrote past offsetof(alibi_slopes)");
        memset(buffer, 0xAB, sizeof(buffer));
        expect("params_init with the 0.8 size", fa_forward_params_init(old, sizeof(fa_forward_params_t)),
               FA_STATUS_SUCCESS, NULL);
        for (j = old_size; j < sizeof(fa_forward_params_t); ++j) zeroed &= buffer[j] == 0;
        CHECK(zeroed, "fa_forward_params_init must zero alibi_slopes (data NULL: none)");
    }

    /* backward: the forward's slopes; read-only, so gradients must not overlap them */
    p = valid_params(1);
    bw = backward_of(&p);
    set_tensor1_f32(&bw.alibi_slopes, slopes_at, VHQ, 1);
    expect("backward alibi: valid", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    set_tensor2_f32(&bw.alibi_slopes, slopes_at, VB, VHQ);
    expect("backward alibi [batch, heads_q]: valid", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    set_tensor2_f32(&bw.alibi_slopes, slopes_at, VB, VHQ + 1);
    expect("backward alibi wrong heads", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
           "its last dimension must be heads_q = 6");
    set_tensor1_f32(&bw.alibi_slopes, (void*)((uintptr_t)bw.dq.data + 16), VHQ, 1);
    expect("backward alibi inside dq", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT, "dq");
    CHECK(strstr(fa_last_error_message(), "alibi_slopes") != NULL, "overlap names alibi_slopes: %s",
          fa_last_error_message());
    bw = backward_of(&p);
    set_tensor1_f32(&bw.alibi_slopes, (void*)(uintptr_t)3, -1, -1);
    bw.struct_size = (uint32_t)offsetof(fa_backward_params_t, alibi_slopes);
    expect("backward 0.7 struct_size: alibi ignored", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    bw.struct_size = (uint32_t)sizeof(fa_backward_params_t);
    expect("backward 0.8 struct_size reads alibi", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
           "alibi_slopes.shape[0] (heads_q) is -1");
    {
        unsigned char buffer[sizeof(fa_backward_params_t) + 16];
        const size_t old_size = offsetof(fa_backward_params_t, alibi_slopes);
        fa_backward_params_t* old = (fa_backward_params_t*)(void*)buffer;
        size_t j;
        int untouched = 1;
        memset(buffer, 0xAB, sizeof(buffer));
        expect("backward params_init with the 0.7 size", fa_backward_params_init(old, old_size), FA_STATUS_SUCCESS, NULL);
        for (j = old_size; j < sizeof(buffer); ++j) untouched &= buffer[j] == 0xAB;
        CHECK(untouched, "fa_backward_params_init with the 0.7 size wrote past offsetof(alibi_slopes)");
    }

    /* fa_query_support: alibi served by every pass, with every option; a 0.7-sized query works */
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.alibi = 1;
    q.causal = q.window = q.softcap = q.varlen = q.sinks = 1;
    expect("query forward alibi", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.kernel_path = FA_PATH_SM80;
    expect("query forward alibi sm80", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.pass = FA_PASS_BACKWARD;
    expect("query backward alibi sm80", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.pass = FA_PASS_DECODE;
    q.alibi = 1;
    q.causal = 1;
    expect("query decode alibi", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.alibi = 2;
    expect("query alibi 2", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "query->alibi");
    q.struct_size = (uint32_t)offsetof(fa_support_query_t, alibi); /* 0.7: the 2 is past the struct */
    expect("query 0.7 size: alibi ignored", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
}

/* A uint8 keep mask [n0, n1, n2, n3], contiguous. */
static void set_mask4(fa_tensor_t* t, void* data, int64_t n0, int64_t n1, int64_t n2, int64_t n3) {
    set_tensor4(t, data, FA_DTYPE_UINT8, n0, n1, n2, n3, 0);
}

/* Dropout (0.9): dropout_p, seed and offset (host values, device pointers), rng_state and the keep mask appended to
   fa_forward_params_t, the same but the outputs to fa_backward_params_t, fa_support_query_t.dropout; every refusal
   with its message before any CUDA call; 0.8-sized structs and queries still accepted as "no dropout". */
/* Whether the build lists an sm90 dropout kernel of `pass` ("fwd" or "bwd") for the class that serves head dim d
   (the smallest of 64, 128, 192 and 256 at least d): a build with FA_SM90_FWD_DROPOUT / FA_SM90_BWD_DROPOUT. */
static int lists_sm90_dropout(const char* pass, int d) {
    char prefix[24], cls[16];
    int32_t count = 0, i;
    const char* name = NULL;
    sprintf(prefix, "sm90_%s_", pass);
    sprintf(cls, "_hdim%d_", d <= 64 ? 64 : d <= 128 ? 128 : d <= 192 ? 192 : 256);
    if (fa_kernel_count(&count) != FA_STATUS_SUCCESS) return 0;
    for (i = 0; i < count; ++i) {
        if (fa_kernel_name(i, &name) == FA_STATUS_SUCCESS && name != NULL && strncmp(name, prefix, strlen(prefix)) == 0 &&
            strstr(name, cls) != NULL && strstr(name, "_dropout_") != NULL) {
            return 1;
        }
    }
    return 0;
}

/* A dropout call on FA_PATH_SM90 at compute capability 9.0: served where the build has that pass's sm90 dropout kernels
   (served), else refused saying the sm90 kernels have none. */
static void expect_sm90_dropout(const char* what, fa_status_t status, int served) {
    if (served) {
        expect(what, status, FA_STATUS_SUCCESS, NULL);
    } else {
        expect(what, status, FA_STATUS_UNSUPPORTED, "the sm90 kernels have no dropout");
    }
}

/* Dropout is the sm80 kernels' (forward and backward), and the sm90 ones' in a build with them (FA_SM90_FWD_DROPOUT,
   FA_SM90_BWD_DROPOUT), which the kernel list shows for the test's head dim. */
static void test_dropout_validation(void) {
    const int sm90_dropout = lists_sm90_dropout("fwd", FA_TEST_HEAD_DIM);
    const int sm90_bwd_dropout = lists_sm90_dropout("bwd", FA_TEST_HEAD_DIM);
    fa_forward_params_t p;
    fa_backward_params_t bw;
    fa_support_query_t q;
    void* const mask_at = (void*)(uintptr_t)0xD00000000ull;
    uint64_t* const state_at = (uint64_t*)(uintptr_t)0xD80000000ull;

    /* the layout: appended after the 0.8 structs, 8-byte fields aligned without padding */
    CHECK(offsetof(fa_forward_params_t, dropout_p) == offsetof(fa_forward_params_t, alibi_slopes) + sizeof(fa_tensor_t) &&
              offsetof(fa_forward_params_t, reserved3) == offsetof(fa_forward_params_t, dropout_p) + 4 &&
              offsetof(fa_forward_params_t, dropout_seed) == offsetof(fa_forward_params_t, dropout_p) + 8 &&
              offsetof(fa_forward_params_t, dropout_offset) == offsetof(fa_forward_params_t, dropout_p) + 16 &&
              offsetof(fa_forward_params_t, dropout_mask) + sizeof(fa_tensor_t) ==
                  offsetof(fa_forward_params_t, block_table),
          "the forward's dropout block must follow alibi_slopes and end the 0.9 struct (0.11's block_table follows)");
    CHECK(sizeof(void*) != 8 || offsetof(fa_forward_params_t, block_table) - offsetof(fa_forward_params_t, dropout_p) == 128,
          "the forward's 0.9 block is 128 bytes (p, reserved3, seed, offset, 3 pointers, the mask)");
    CHECK(offsetof(fa_backward_params_t, dropout_p) == offsetof(fa_backward_params_t, alibi_slopes) + sizeof(fa_tensor_t) &&
              offsetof(fa_backward_params_t, dropout_offset_device) + sizeof(void*) == sizeof(fa_backward_params_t),
          "the backward's dropout block must follow alibi_slopes and end the struct");
    CHECK(offsetof(fa_support_query_t, dropout) + sizeof(int32_t) == offsetof(fa_support_query_t, head_dim_v),
          "dropout must be the query's 0.9 field, before 0.10's head_dim_v");
    CHECK(FA_VERSION_CODE >= 900, "FA_VERSION_CODE is %d; dropout came with 0.9.0", FA_VERSION_CODE);
    CHECK(FA_DTYPE_UINT8 == 6, "FA_DTYPE_UINT8 is %d, expected 6", (int)FA_DTYPE_UINT8);

    /* forward: host seed/offset, device pointers, rng_state, mask, with every option the sm80 path has */
    p = valid_params(1);
    expect("dropout: p = 0 is none", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.dropout_p = 0.17f;
    p.dropout_seed = 0x123456789ABCDEFull;
    p.dropout_offset = 96;
    expect("dropout: host seed and offset", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.dropout_seed_device = (const uint64_t*)(uintptr_t)0xD40000000ull;
    p.dropout_offset_device = (const uint64_t*)(uintptr_t)0xD40000008ull;
    p.dropout_rng_state = state_at;
    set_mask4(&p.dropout_mask, mask_at, VB, VHQ, VSQ, VSK);
    p.softcap = 30.0f;
    p.window_left = 4;
    expect("dropout: device seed/offset, rng_state, mask, softcap, window", fa_forward_check(&p, 80), FA_STATUS_SUCCESS, NULL);
    expect("dropout on cc 9.0 (AUTO takes sm80)", fa_forward_check(&p, 90), FA_STATUS_SUCCESS, NULL);
    p.kernel_path = FA_PATH_SM80;
    expect("dropout on FA_PATH_SM80", fa_forward_check(&p, 90), FA_STATUS_SUCCESS, NULL);
    p.kernel_path = FA_PATH_SM90;
    expect_sm90_dropout("dropout on FA_PATH_SM90", fa_forward_check(&p, 90), sm90_dropout);
    if (!sm90_dropout) {
        CHECK(strstr(fa_last_error_message(), "kernel_path is FA_PATH_SM90, but the sm90 kernels have no dropout "
                                              "(FlashAttention-3 has none)") != NULL,
              "the refusal names the field and the reason: %s", fa_last_error_message());
    }
    p = valid_params(1);
    p.dropout_p = 0.999f;
    expect("dropout: p = 0.999", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.dropout_p = 1.0f;
    expect("dropout: p = 1", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "dropout_p is 1; it must be in [0, 1)");
    p.dropout_p = -0.1f;
    expect("dropout: p < 0", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "; it must be in [0, 1)");
    p.dropout_p = (float)NAN;
    expect("dropout: p NaN", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "; it must be in [0, 1)");
    p.dropout_p = 0.1f;
    p.reserved3 = 1;
    expect("dropout: reserved3", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "params->reserved3 is 1");
    p.reserved3 = 0;
    p.dropout_seed_device = (const uint64_t*)(uintptr_t)0xD40000004ull;
    expect("dropout: seed pointer misaligned", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "dropout_seed_device (0xd40000004) is not 8-byte aligned");
    p.dropout_seed_device = NULL;
    p.dropout_offset_device = (const uint64_t*)(uintptr_t)0xD40000002ull;
    expect("dropout: offset pointer misaligned", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "dropout_offset_device");
    p.dropout_offset_device = NULL;
    p.dropout_rng_state = (uint64_t*)(uintptr_t)((uintptr_t)p.out.data + 64);
    expect("dropout: rng_state inside out", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "dropout_rng_state");
    CHECK(strstr(fa_last_error_message(), "overlaps out") != NULL, "overlap names out: %s", fa_last_error_message());
    p.dropout_rng_state = NULL;
    /* the mask: dtype, rank, shape, last stride, overlaps */
    set_mask4(&p.dropout_mask, mask_at, VB, VHQ, VSQ, VSK);
    expect("dropout: mask", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.dropout_mask.dtype = FA_DTYPE_INT32;
    expect("dropout: mask int32", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "dropout_mask.dtype is 4 (FA_DTYPE_INT32); dropout_mask must be FA_DTYPE_UINT8");
    set_mask4(&p.dropout_mask, mask_at, VB, VHQ, VSQ, VSK);
    p.dropout_mask.rank = 3;
    expect("dropout: mask rank 3", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "dropout_mask.rank is 3; dropout_mask must have rank 4 [batch, heads_q, seqlen_q, seqlen_k]");
    set_mask4(&p.dropout_mask, mask_at, VB, VHKV, VSQ, VSK);
    expect("dropout: mask per KV head", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "dropout_mask.shape is [2, 2, 17, 33] but must be [2, 6, 17, 33]");
    set_mask4(&p.dropout_mask, mask_at, VB, VHQ, VSK, VSQ);
    expect("dropout: mask transposed", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "but must be [2, 6, 17, 33]: [batch, heads_q, seqlen_q, seqlen_k]");
    set_mask4(&p.dropout_mask, mask_at, VB, VHQ, VSQ, VSK);
    p.dropout_mask.strides[3] = 2;
    expect("dropout: mask last stride 2", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "dropout_mask.strides[3] is 2; the last dimension (seqlen_k) must be contiguous");
    set_mask4(&p.dropout_mask, p.q.data, VB, VHQ, VSQ, VSK);
    expect("dropout: mask over q", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "dropout_mask");
    CHECK(strstr(fa_last_error_message(), "overlaps q") != NULL, "overlap names q: %s", fa_last_error_message());
    set_mask4(&p.dropout_mask, mask_at, VB, VHQ, VSQ, VSK);
    p.dropout_rng_state = (uint64_t*)(uintptr_t)((uintptr_t)mask_at + 64);
    expect("dropout: rng_state inside the mask", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "dropout_mask");
    p.dropout_rng_state = NULL;
    /* outputs without dropout: nothing to write */
    p.dropout_p = 0.0f;
    expect("dropout: mask with p = 0", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "dropout_mask.data is set but dropout_p is 0");
    set_mask4(&p.dropout_mask, NULL, 0, 0, 0, 0);
    p.dropout_rng_state = state_at;
    expect("dropout: rng_state with p = 0", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "dropout_rng_state is set but dropout_p is 0");
    p.dropout_rng_state = NULL;
    p.dropout_seed_device = (const uint64_t*)(uintptr_t)3; /* ignored without dropout */
    expect("dropout: p = 0 ignores the seed", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    /* varlen: the mask is [varlen_batch, heads_q, max_seqlen_q, max_seqlen_k] */
    p = valid_varlen_params(1);
    p.dropout_p = 0.25f;
    set_mask4(&p.dropout_mask, mask_at, VL_BATCH, VHQ, VL_MAX_Q, VL_MAX_K);
    expect("dropout: varlen mask", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    set_mask4(&p.dropout_mask, mask_at, 1, VHQ, VL_TOTAL_Q, VL_MAX_K);
    expect("dropout: varlen mask over total_q", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "[varlen_batch, heads_q, max_seqlen_q, max_seqlen_k]");
    /* fp8: no dropout (the fp8 forward is FlashAttention-3's, which has none) */
    p = valid_fp8_params(1);
    p.dropout_p = 0.1f;
    expect("dropout with fp8", fa_forward_check(&p, 90), FA_STATUS_UNSUPPORTED, "the fp8 (e4m3) forward has no dropout");

    /* an older (0.8) caller: the struct ends before dropout_p; garbage past it is never read */
    p = valid_params(1);
    p.dropout_p = 7.0f;
    p.reserved3 = 5;
    p.struct_size = (uint32_t)offsetof(fa_forward_params_t, dropout_p);
    expect("0.8 struct_size: dropout ignored", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.struct_size = (uint32_t)sizeof(fa_forward_params_t);
    expect("0.9 struct_size reads dropout", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "params->reserved3 is 5");
    {
        unsigned char buffer[sizeof(fa_forward_params_t) + 16];
        const size_t old_size = offsetof(fa_forward_params_t, dropout_p);
        fa_forward_params_t* old = (fa_forward_params_t*)(void*)buffer;
        size_t j;
        int untouched = 1, zeroed = 1;
        memset(buffer, 0xAB, sizeof(buffer));
        expect("params_init with the 0.8 size", fa_forward_params_init(old, old_size), FA_STATUS_SUCCESS, NULL);
        for (j = old_size; j < sizeof(buffer); ++j) untouched &= buffer[j] == 0xAB;
        CHECK(untouched, "fa_forward_params_init with the 0.8 size wrote past offsetof(dropout_p)");
        memset(buffer, 0xAB, sizeof(buffer));
        expect("params_init with the 0.9 size", fa_forward_params_init(old, sizeof(fa_forward_params_t)),
               FA_STATUS_SUCCESS, NULL);
        for (j = old_size; j < sizeof(fa_forward_params_t); ++j) zeroed &= buffer[j] == 0;
        CHECK(zeroed, "fa_forward_params_init must zero the dropout block (p 0: none)");
    }

    /* backward: the forward's p, seed and offset; no outputs of its own */
    p = valid_params(1);
    bw = backward_of(&p);
    bw.dropout_p = 0.17f;
    bw.dropout_seed_device = state_at;
    bw.dropout_offset_device = state_at + 1;
    expect("backward dropout from the forward's rng_state", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    bw.kernel_path = FA_PATH_SM90;
    expect_sm90_dropout("backward dropout on FA_PATH_SM90", fa_backward_check(&bw, 90), sm90_bwd_dropout);
    bw.kernel_path = FA_PATH_AUTO;
    bw.dropout_p = 1.5f;
    expect("backward dropout p = 1.5", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT, "dropout_p is 1.5");
    bw.dropout_p = 0.17f;
    bw.reserved2 = 1;
    expect("backward reserved2", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT, "params->reserved2 is 1");
    bw.struct_size = (uint32_t)offsetof(fa_backward_params_t, dropout_p);
    expect("backward 0.8 struct_size: dropout ignored", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
    bw = backward_of(&p);
    bw.dropout_p = 0.5f;
    bw.dropout_seed_device = (const uint64_t*)(uintptr_t)0xD40000001ull;
    expect("backward seed pointer misaligned", fa_backward_check(&bw, 0), FA_STATUS_INVALID_ARGUMENT,
           "dropout_seed_device");
    {
        unsigned char buffer[sizeof(fa_backward_params_t) + 16];
        const size_t old_size = offsetof(fa_backward_params_t, dropout_p);
        fa_backward_params_t* old = (fa_backward_params_t*)(void*)buffer;
        size_t j;
        int untouched = 1;
        memset(buffer, 0xAB, sizeof(buffer));
        expect("backward params_init with the 0.8 size", fa_backward_params_init(old, old_size), FA_STATUS_SUCCESS, NULL);
        for (j = old_size; j < sizeof(buffer); ++j) untouched &= buffer[j] == 0xAB;
        CHECK(untouched, "fa_backward_params_init with the 0.8 size wrote past offsetof(dropout_p)");
    }

    /* fa_query_support: the sm80 forward and backward; not sm90, fp8 or decode; a 0.8-sized query works */
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.dropout = 1;
    q.causal = q.window = q.softcap = q.varlen = q.sinks = q.alibi = 1;
    expect("query forward dropout", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.compute_capability = 90;
    expect("query forward dropout on cc 9.0 (AUTO)", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.pass = FA_PASS_BACKWARD;
    q.compute_capability = 0;
    expect("query backward dropout", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.pass = FA_PASS_FORWARD;
    q.kernel_path = FA_PATH_SM90;
    q.compute_capability = 90;
    expect_sm90_dropout("query forward dropout sm90", fa_query_support(&q), sm90_dropout);
    q = forward_query(FA_DTYPE_FLOAT8_E4M3, FA_TEST_HEAD_DIM);
    q.dropout = 1;
    expect("query fp8 dropout", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "the fp8 (e4m3) forward has no dropout");
    q = forward_query(FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    q.pass = FA_PASS_DECODE;
    q.dropout = 1;
    expect("query decode dropout", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "fa_decode has no dropout");
    q.dropout = 2;
    expect("query dropout 2", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "query->dropout");
    q.struct_size = (uint32_t)offsetof(fa_support_query_t, dropout); /* 0.8: the 2 is past the struct */
    expect("query 0.8 size: dropout ignored", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
}

/* fa_query_support for e4m3: the forward on the sm90 path only, head dims multiples of 16; agrees with
   fa_forward_check on every head dim and compute capability. */
static void test_query_fp8(void) {
    const int ccs[4] = {0, 80, 90, 89};
    fa_support_query_t q;
    int c, d, checked = 0, disagreements = 0;

    fp8_build_facts();
    for (c = 0; c < 4; ++c) {
        char label[64];
        q = forward_query(FA_DTYPE_FLOAT8_E4M3, FA_TEST_HEAD_DIM);
        q.compute_capability = ccs[c];
        sprintf(label, "query fp8 forward (cc %d)", ccs[c]);
        fp8_verdict_ok(label, fa_query_support(&q), ccs[c]);
        q.causal = q.window = q.softcap = q.varlen = 1;
        sprintf(label, "query fp8 forward, every option (cc %d)", ccs[c]);
        fp8_verdict_ok(label, fa_query_support(&q), ccs[c]);
    }
    q = forward_query(FA_DTYPE_FLOAT8_E4M3, FA_TEST_HEAD_DIM);
    q.kernel_path = FA_PATH_SM80;
    q.compute_capability = 90;
    expect("query fp8 on FA_PATH_SM80", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
           "query->kernel_path is FA_PATH_SM80, but fp8 (e4m3) is served by the sm90 forward only");
    q = forward_query(FA_DTYPE_FLOAT8_E4M3, FA_TEST_HEAD_DIM);
    q.kernel_path = FA_PATH_SM90;
    q.compute_capability = 80;
    expect("query fp8 on FA_PATH_SM90 at cc 8.0", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
           "query->kernel_path is FA_PATH_SM90, but");
    q = forward_query(FA_DTYPE_FLOAT8_E4M3, FA_TEST_HEAD_DIM);
    q.pass = FA_PASS_BACKWARD;
    q.compute_capability = 90;
    expect("query fp8 backward", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
           "query->dtype is FA_DTYPE_FLOAT8_E4M3 with query->pass FA_PASS_BACKWARD: the fp8 forward has no backward "
           "(as FlashAttention-3); use bf16/fp16 for training");
    q.pass = FA_PASS_DECODE;
    q.compute_capability = 0;
    expect("query fp8 decode", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
           "query->dtype is FA_DTYPE_FLOAT8_E4M3 with query->pass FA_PASS_DECODE: decode takes fp16 or bf16 queries");
    if (head_dim_served(40)) {
        q = forward_query(FA_DTYPE_FLOAT8_E4M3, 40);
        q.compute_capability = 90;
        expect("query fp8 head dim 40", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
               "query->head_dim is 40; fp8 (e4m3) head dims must be multiples of 16");
        q.dtype = FA_DTYPE_BFLOAT16;
        expect("query bf16 head dim 40", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    }
    q = forward_query(7, FA_TEST_HEAD_DIM);
    expect("query dtype 7", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "query->dtype is 7");
    q = forward_query(FA_DTYPE_UINT8, FA_TEST_HEAD_DIM); /* a known dtype (the dropout mask's), not one q takes */
    expect("query dtype uint8", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "query->dtype is FA_DTYPE_UINT8");

    /* The query and fa_forward_check agree on fp8 head dims 16..272 (step 16; contiguous strides stay multiples
       of 16) at cc 0, 8.0 and 9.0. */
    for (c = 0; c < 3; ++c) {
        for (d = 16; d <= 272; d += 16) {
            fa_forward_params_t p = valid_params(1);
            fa_status_t by_query, by_check;
            set_tensor4(&p.q, p.q.data, FA_DTYPE_FLOAT8_E4M3, VB, VSQ, VHQ, d, 0);
            set_tensor4(&p.k, p.k.data, FA_DTYPE_FLOAT8_E4M3, VB, VSK, VHKV, d, 0);
            set_tensor4(&p.v, p.v.data, FA_DTYPE_FLOAT8_E4M3, VB, VSK, VHKV, d, 0);
            set_tensor4(&p.out, p.out.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, d, 0);
            q = forward_query(FA_DTYPE_FLOAT8_E4M3, d);
            q.compute_capability = ccs[c];
            q.causal = 1;
            by_query = fa_query_support(&q);
            by_check = fa_forward_check(&p, ccs[c]);
            ++checked;
            if (by_query != by_check) {
                if (++disagreements <= 5) {
                    printf("  fp8 head dim %d cc %d: fa_query_support says %s, fa_forward_check %s (%s)\n", d, ccs[c],
                           fa_status_string(by_query), fa_status_string(by_check), fa_last_error_message());
                }
            }
            if (by_query == FA_STATUS_SUCCESS && ccs[c] == 80) {
                ++disagreements;
                printf("  fp8 head dim %d served at cc 8.0\n", d);
            }
        }
    }
    CHECK(disagreements == 0, "fp8: fa_query_support and fa_forward_check disagree (or serve cc 8.0) on %d of %d",
          disagreements, checked);
}

/* A V head dim other than q's (C ABI 0.10): (192, 128) and (64, 512) on the sm80 forward where the build has the head
   dim, and on the sm90 forward too in a build with sm_90a code (AUTO takes it on cc 9.0 there, sm80 elsewhere);
   the backward of (192, 128) on sm80, and on sm90 in a build with sm_90a code (AUTO takes it on cc 9.0 there, but
   for dropout); (64, 512)'s backward, other pairs and an out of q's head dim are refused, saying why; k of another
   head dim stays INVALID. The query agrees. */
/* Whether the build lists an sm80 kernel of `pass` ("fwd" or "bwd") for head dims (d, dv), i.e. compiled head dim d
   exactly; lists_pair_kernel_on does the same for a path prefix ("sm80_" or "sm90_"). */
static int lists_pair_kernel_on(const char* path, const char* pass, int d, int dv) {
    char needle[48];
    int32_t count = 0, i;
    const char* name = NULL;
    sprintf(needle, "_hdim%dv%d_", d, dv);
    if (fa_kernel_count(&count) != FA_STATUS_SUCCESS) {
        return 0;
    }
    for (i = 0; i < count; ++i) {
        if (fa_kernel_name(i, &name) == FA_STATUS_SUCCESS && name != NULL && strncmp(name, path, 5) == 0 &&
            strncmp(name + 5, pass, 3) == 0 && strstr(name, needle) != NULL) {
            return 1;
        }
    }
    return 0;
}
static int lists_pair_kernel(const char* pass, int d, int dv) { return lists_pair_kernel_on("sm80_", pass, d, dv); }

/* ---- paged K/V in the variable-length forward (C ABI 0.11; no GPU needed) ---------------------------------------- */

/* The validation batch's pool: 9 blocks of 128 keys, 3 per sequence (384 >= VL_MAX_K = 290). */
enum { PG_BLOCK = 128, PG_BLOCKS = 9, PG_MAX_BLOCKS = 3 };

/* A dense int32 [batch, max_blocks] block table. */
static void set_block_table(fa_tensor_t* t, void* data, int64_t batch, int64_t max_blocks) {
    set_tensor2_f32(t, data, batch, max_blocks);
    t->dtype = FA_DTYPE_INT32;
}

/* valid_varlen_params with k and v pools of blocks and a block table (made-up addresses, never dereferenced). */
static fa_forward_params_t valid_paged_params(int with_lse) {
    fa_forward_params_t p = valid_varlen_params(with_lse);
    const int64_t d = FA_TEST_HEAD_DIM;
    set_tensor4(&p.k, p.k.data, FA_DTYPE_FLOAT16, PG_BLOCKS, PG_BLOCK, VHKV, d, 0);
    set_tensor4(&p.v, p.v.data, FA_DTYPE_FLOAT16, PG_BLOCKS, PG_BLOCK, VHKV, d, 0);
    set_block_table(&p.block_table, (void*)(uintptr_t)0x700000000ull, VL_BATCH, PG_MAX_BLOCKS);
    return p;
}

static void test_paged_validation(void) {
    const int64_t d = FA_TEST_HEAD_DIM;
    fa_forward_params_t p;
    fa_support_query_t q;
    CHECK(offsetof(fa_forward_params_t, block_table) + sizeof(fa_tensor_t) == sizeof(fa_forward_params_t),
          "block_table (0.11) must end the forward's struct");
    CHECK(FA_VERSION_CODE >= 1100, "FA_VERSION_CODE is %d; block_table came with 0.11.0", FA_VERSION_CODE);
    p = valid_paged_params(1);
    expect("paged K/V", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    expect("paged K/V on 9.0", fa_forward_check(&p, 90), FA_STATUS_SUCCESS, NULL);
    p.kernel_path = FA_PATH_SM80;
    expect("paged K/V on sm80", fa_forward_check(&p, 80), FA_STATUS_SUCCESS, NULL);
    /* cu_seqlens_k_host's total (320) indexes no tensor when paged: lengths and order only */
    p = valid_paged_params(0);
    p.k.shape[0] = p.v.shape[0] = 1; /* a pool of 128 rows, fewer than cu_seqlens_k_host's total (320) */
    expect("paged, cu_seqlens_k_host total past the pool's rows", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);

    /* where the block table goes */
    p = valid_params(0);
    set_block_table(&p.block_table, (void*)(uintptr_t)0x700000000ull, VB, 1);
    expect("block_table on a fixed-length call", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "block_table.data is set but cu_seqlens_q and cu_seqlens_k are NULL");
    p = valid_varlen_params(0);
    set_block_table(&p.block_table, (void*)(uintptr_t)0x700000000ull, VL_BATCH, PG_MAX_BLOCKS);
    expect("block_table with packed k", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "k.rank is 3");
    /* an older caller (0.10: the struct ends before block_table) gets no block table, whatever follows */
    p.struct_size = (uint32_t)offsetof(fa_forward_params_t, block_table);
    expect("0.10 struct: block_table not read", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);

    /* the pool and the table */
    p = valid_paged_params(0);
    p.v.shape[0] = PG_BLOCKS - 1;
    expect("v with fewer blocks", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "k and v must have the same shape but for the head dim");
    p = valid_paged_params(0);
    p.block_table.shape[0] = VL_BATCH + 1;
    expect("block_table rows != varlen_batch", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "one row of blocks per sequence");
    p = valid_paged_params(0);
    p.block_table.dtype = FA_DTYPE_FLOAT32;
    expect("block_table fp32", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "block_table.dtype");
    p = valid_paged_params(0);
    p.block_table.rank = 1;
    expect("block_table rank 1", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "block_table.rank is 1");
    p = valid_paged_params(0);
    set_block_table(&p.block_table, p.block_table.data, VL_BATCH, 2); /* 256 keys a sequence < max_seqlen_k 290 */
    expect("max_seqlen_k above the capacity", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "max_seqlen_k is 290 but block_table holds 2 blocks of 128 keys");
    p = valid_paged_params(1);
    p.block_table.data = (char*)p.out.data + 64;
    expect("block_table inside out", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "overlaps block_table");
    p = valid_paged_params(1);
    p.block_table.data = p.lse.data;
    expect("block_table on lse", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "overlaps block_table");

    /* what is not served */
    p = valid_paged_params(0);
    set_tensor4(&p.k, p.k.data, FA_DTYPE_FLOAT16, 4 * PG_BLOCKS, 64, VHKV, d, 0);
    set_tensor4(&p.v, p.v.data, FA_DTYPE_FLOAT16, 4 * PG_BLOCKS, 64, VHKV, d, 0);
    set_block_table(&p.block_table, p.block_table.data, VL_BATCH, 5);
    expect("block size 64", fa_forward_check(&p, 0), FA_STATUS_UNSUPPORTED, "multiples of 128");
    set_tensor4(&p.k, p.k.data, FA_DTYPE_FLOAT16, PG_BLOCKS, 384, VHKV, d, 0);
    set_tensor4(&p.v, p.v.data, FA_DTYPE_FLOAT16, PG_BLOCKS, 384, VHKV, d, 0);
    set_block_table(&p.block_table, p.block_table.data, VL_BATCH, 1);
    expect("block size 384 (a multiple of 128, not a power of two)", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = valid_paged_params(0);
    p.q.dtype = p.k.dtype = p.v.dtype = FA_DTYPE_FLOAT8_E4M3;
    p.out.dtype = FA_DTYPE_BFLOAT16; /* (strides are multiples of 16 elements already: head dim 64) */
    expect("fp8 with block_table", fa_forward_check(&p, 90), FA_STATUS_UNSUPPORTED, "fp16 and bf16");

    /* the capability query (a head dim the build serves) */
    q = forward_query(FA_DTYPE_BFLOAT16, FA_TEST_HEAD_DIM);
    q.varlen = 1;
    q.paged_kv = 1;
    expect("query paged forward", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.kernel_path = FA_PATH_SM80;
    expect("query paged forward sm80", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q = forward_query(FA_DTYPE_BFLOAT16, FA_TEST_HEAD_DIM);
    q.paged_kv = 1;
    expect("query paged fixed-length forward", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT,
           "goes with a variable-length batch");
    q = forward_query(FA_DTYPE_BFLOAT16, FA_TEST_HEAD_DIM);
    q.pass = FA_PASS_BACKWARD;
    q.varlen = 1;
    q.paged_kv = 1;
    expect("query paged backward", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "the backward has no paged K/V");
    q = forward_query(FA_DTYPE_FLOAT8_E4M3, 128);
    q.varlen = 1;
    q.paged_kv = 1;
    expect("query paged fp8", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "paged K/V is served for fp16 and bf16");
    q = forward_query(FA_DTYPE_BFLOAT16, FA_TEST_HEAD_DIM);
    q.pass = FA_PASS_DECODE;
    q.paged_kv = 1;
    expect("query paged decode", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q = forward_query(FA_DTYPE_BFLOAT16, FA_TEST_HEAD_DIM);
    q.paged_kv = 2;
    expect("query paged_kv 2", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "query->paged_kv is 2");
    q = forward_query(FA_DTYPE_BFLOAT16, FA_TEST_HEAD_DIM);
    q.paged_kv = 1; /* a 0.10-sized query has no paged_kv: a fixed-length forward without it */
    q.struct_size = (uint32_t)offsetof(fa_support_query_t, paged_kv);
    expect("0.10-sized query", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);

    /* the kernel list: every forward kernel of a local variant without dropout (fp16, bf16) has its paged twin, and
       every paged kernel is such a twin (local, 16-bit, no dropout); the other passes have no paged forward kernel */
    {
        int32_t count = 0, i, paged = 0, twins = 0;
        CHECK(fa_kernel_count(&count) == FA_STATUS_SUCCESS, "fa_kernel_count: %s", fa_last_error_message());
        for (i = 0; i < count; ++i) {
            const char* name = NULL;
            char twin[192];
            const char* at;
            if (fa_kernel_name(i, &name) != FA_STATUS_SUCCESS || name == NULL || strstr(name, "_fwd_") == NULL) continue;
            if (strstr(name, "_paged_") != NULL) {
                ++paged;
                CHECK(strstr(name, "_local") != NULL && strstr(name, "_dropout") == NULL && strstr(name, "_e4m3_") == NULL,
                      "%s: a paged forward kernel must be a local, 16-bit kernel without dropout", name);
                continue;
            }
            if (strstr(name, "_local") == NULL || strstr(name, "_dropout") != NULL || strstr(name, "_e4m3_") != NULL) continue;
            /* the twin's name: "_paged_" before the tile tag (the first "_<digit>" after the variant tags), then a
               tile tag of its own (the sm90 d256 paged kernels keep 64 keys where the contiguous ones take 80) */
            at = strstr(name, "_local");
            while ((at = strchr(at + 1, '_')) != NULL && !(at[1] >= '0' && at[1] <= '9')) {
            }
            if (at == NULL || (size_t)(at - name) + 8 >= sizeof twin) continue;
            sprintf(twin, "%.*s_paged_", (int)(at - name), name);
            {
                int32_t j;
                int found = 0;
                const size_t prefix = strlen(twin);
                for (j = 0; j < count && !found; ++j) {
                    const char* other = NULL;
                    found = fa_kernel_name(j, &other) == FA_STATUS_SUCCESS && other != NULL &&
                            strncmp(other, twin, prefix) == 0 && same_tile_but_keys(at + 1, other + prefix);
                }
                CHECK(found, "%s has no paged twin %s<tile> (its rows, warps and stages) in the kernel list", name, twin);
                twins += found;
            }
        }
        CHECK(paged > 0 && paged == twins, "the kernel list has %d paged forward kernels and %d local kernels with a twin",
              (int)paged, (int)twins);
    }
}

static void test_v_head_dim_validation(void) {
    static const int pairs[2][2] = {{192, 128}, {64, 512}};
    fa_forward_params_t p;
    fa_support_query_t q;
    int i;
    CHECK(offsetof(fa_support_query_t, head_dim_v) + sizeof(int32_t) == offsetof(fa_support_query_t, paged_kv),
          "paged_kv (0.11) must follow head_dim_v (0.10) in the query struct");
    CHECK(FA_VERSION_CODE >= 1000, "FA_VERSION_CODE is %d; head_dim_v came with 0.10.0", FA_VERSION_CODE);
    for (i = 0; i < 2; ++i) {
        const int d = pairs[i][0], dv = pairs[i][1];
        p = valid_params(1);
        set_head_dim(&p, d);
        set_tensor4(&p.v, p.v.data, FA_DTYPE_FLOAT16, VB, VSK, VHKV, dv, 0);
        set_tensor4(&p.out, p.out.data, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, dv, 0);
        q = forward_query(FA_DTYPE_BFLOAT16, d);
        q.head_dim_v = dv;
        if (lists_pair_kernel("fwd", d, dv)) {
            CHECK(lists_pair_kernel("bwd", d, dv) == (d == 192), "the backward lists (192, 128)'s kernels only");
            /* the sm90 forward's pair kernels: both pairs in a build with sm_90a code ((64, 512) in two CTAs of 256
               output columns). (has90a is read here, not inside expect()'s arguments: listing the kernels clears the
               last error message it checks.) */
            const int has90a = build_has_sm90a();
            const int sm90_pair = has90a, sm90_bwd = has90a && d == 192;
            CHECK(lists_pair_kernel_on("sm90_", "fwd", d, dv) == sm90_pair,
                  "the sm90 forward lists (%d, %d)'s kernels exactly in a build with sm_90a code", d, dv);
            CHECK(lists_pair_kernel_on("sm90_", "bwd", d, dv) == sm90_bwd,
                  "the sm90 backward lists (%d, %d)'s kernels exactly in a build with sm_90a code, (192, 128) only", d, dv);
            expect("v head dim pair (forward)", fa_forward_check(&p, 0), FA_STATUS_SUCCESS, NULL);
            expect("v head dim pair at cc 9.0", fa_forward_check(&p, 90), FA_STATUS_SUCCESS, NULL);
            expect("query of the pair", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
            p.kernel_path = FA_PATH_SM90;
            expect("v head dim pair on FA_PATH_SM90", fa_forward_check(&p, 90), sm90_pair ? FA_STATUS_SUCCESS : FA_STATUS_UNSUPPORTED,
                   sm90_pair ? NULL : "FA_PATH_SM90");
            expect("v head dim pair on FA_PATH_SM90 at cc 8.0", fa_forward_check(&p, 80), FA_STATUS_UNSUPPORTED, "FA_PATH_SM90");
            q.kernel_path = FA_PATH_SM90;
            expect("query of the pair on FA_PATH_SM90", fa_query_support(&q), sm90_pair ? FA_STATUS_SUCCESS : FA_STATUS_UNSUPPORTED,
                   sm90_pair ? NULL : "FA_PATH_SM90");
            p.dropout_p = 0.1f;  /* dropout is the sm80 kernels' alone: AUTO takes sm80, FA_PATH_SM90 refuses it */
            expect("v head dim pair with dropout on FA_PATH_SM90", fa_forward_check(&p, 90), FA_STATUS_UNSUPPORTED, "dropout");
            p.kernel_path = FA_PATH_AUTO;
            expect("v head dim pair with dropout (AUTO)", fa_forward_check(&p, 90), FA_STATUS_SUCCESS, NULL);
            p.dropout_p = 0.0f;
            q.kernel_path = FA_PATH_AUTO;
            {
                /* the backward: (192, 128) on the sm80 path (dq like q, dk like k, dv like v, dout like out), as
                   FlashAttention-3's, and on the sm90 path in a build with sm_90a code; (64, 512) forward only */
                fa_backward_params_t bw = backward_of(&p);
                if (d == 192) {
                    expect("backward of the (192, 128) pair", fa_backward_check(&bw, 0), FA_STATUS_SUCCESS, NULL);
                    expect("backward of the (192, 128) pair at cc 9.0 (AUTO)", fa_backward_check(&bw, 90),
                           FA_STATUS_SUCCESS, NULL);
                    bw.kernel_path = FA_PATH_SM90;
                    expect("backward of the (192, 128) pair on FA_PATH_SM90", fa_backward_check(&bw, 90),
                           has90a ? FA_STATUS_SUCCESS : FA_STATUS_UNSUPPORTED, has90a ? NULL : "FA_PATH_SM90");
                    expect("backward of the (192, 128) pair on FA_PATH_SM90 at cc 8.0", fa_backward_check(&bw, 80),
                           FA_STATUS_UNSUPPORTED, "FA_PATH_SM90");
                    bw.dropout_p = 0.1f; /* dropout: the sm80 pair kernels' alone */
                    expect("backward of the (192, 128) pair with dropout on FA_PATH_SM90", fa_backward_check(&bw, 90),
                           FA_STATUS_UNSUPPORTED, "dropout");
                    bw.kernel_path = FA_PATH_AUTO;
                    expect("backward of the (192, 128) pair with dropout (AUTO takes sm80)", fa_backward_check(&bw, 90),
                           FA_STATUS_SUCCESS, NULL);
                } else {
                    expect("backward of the (64, 512) pair", fa_backward_check(&bw, 0), FA_STATUS_UNSUPPORTED,
                           "backward of a V head dim");
                }
            }
            q.pass = FA_PASS_BACKWARD;
            expect("query of the pair's backward", fa_query_support(&q), d == 192 ? FA_STATUS_SUCCESS : FA_STATUS_UNSUPPORTED,
                   d == 192 ? NULL : "backward of a V head dim");
            q.kernel_path = FA_PATH_SM90;
            expect("query of the pair's backward on FA_PATH_SM90", fa_query_support(&q),
                   sm90_bwd ? FA_STATUS_SUCCESS : FA_STATUS_UNSUPPORTED, sm90_bwd ? NULL : d == 192 ? "FA_PATH_SM90" : "backward of a V head dim");
            q.kernel_path = FA_PATH_AUTO;
        } else {
            /* a build without head dim d: refused (naming its head dims: FA_HEAD_DIMS picks them) */
            expect("v head dim pair of a head dim this build lacks", fa_forward_check(&p, 0), FA_STATUS_UNSUPPORTED, NULL);
        }
        /* out with q's head dim instead of v's */
        set_tensor4(&p.out, p.out.data, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, d, 0);
        expect("out of q's head dim with a v head dim pair", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
               "out takes v's head dim");
    }
    /* a pair no kernel serves */
    p = valid_params(1);
    set_head_dim(&p, 128);
    set_tensor4(&p.v, p.v.data, FA_DTYPE_FLOAT16, VB, VSK, VHKV, 64, 0);
    set_tensor4(&p.out, p.out.data, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, 64, 0);
    q = forward_query(FA_DTYPE_FLOAT16, 128);
    q.head_dim_v = 64;
    if (head_dim_served(128)) { /* (a build without head dim 128 refuses it first, for that reason) */
        expect("v head dim 64 with head dim 128", fa_forward_check(&p, 0), FA_STATUS_UNSUPPORTED, "(192, 128) and (64, 512)");
        expect("query of head dims 128 and 64", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "(192, 128) and (64, 512)");
    } else {
        g_skipped += 2;
    }
    q.head_dim_v = 128;
    expect("query with head_dim_v = head_dim", fa_query_support(&q), head_dim_served(128) ? FA_STATUS_SUCCESS : FA_STATUS_UNSUPPORTED,
           NULL);
    q.head_dim_v = -8;
    expect("query with a negative head_dim_v", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT, "head_dim_v");
    /* k of another head dim is still an error of the arguments */
    p = valid_params(1);
    set_tensor4(&p.k, p.k.data, FA_DTYPE_FLOAT16, VB, VSK, VHKV, FA_TEST_HEAD_DIM + 8, 0);
    expect("k of another head dim", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "q and k must have the same head_dim");
}

/* A valid decode call over an fp8 (e4m3) cache (C ABI 0.13) of head dim d on placeholder addresses: bf16 q, a paged
   cache of 16-row blocks, an append, descales [heads_kv] (fa_decode_check never dereferences device pointers). */
static fa_decode_params_t fp8_decode_params(int64_t d) {
    enum { B = 2, SQ = 1, HQ = 4, HKV = 2, BLOCK = 16, PAGES = 4, NBLOCKS = 8 };
    fa_decode_params_t p;
    const int64_t q_shape[4] = {B, SQ, HQ, d}, cache_shape[4] = {NBLOCKS, BLOCK, HKV, d}, new_shape[4] = {B, SQ, HKV, d};
    const int64_t lens[1] = {B}, table[2] = {B, PAGES}, desc[1] = {HKV};
    fa_decode_params_init(&p, sizeof p);
    set_dense(&p.q, (void*)(uintptr_t)0xB00000000ull, FA_DTYPE_BFLOAT16, 4, q_shape);
    set_dense(&p.out, (void*)(uintptr_t)0xB10000000ull, FA_DTYPE_BFLOAT16, 4, q_shape);
    set_dense(&p.k_cache, (void*)(uintptr_t)0xB20000000ull, FA_DTYPE_FLOAT8_E4M3, 4, cache_shape);
    set_dense(&p.v_cache, (void*)(uintptr_t)0xB30000000ull, FA_DTYPE_FLOAT8_E4M3, 4, cache_shape);
    set_dense(&p.k_new, (void*)(uintptr_t)0xB40000000ull, FA_DTYPE_BFLOAT16, 4, new_shape);
    set_dense(&p.v_new, (void*)(uintptr_t)0xB50000000ull, FA_DTYPE_BFLOAT16, 4, new_shape);
    set_dense(&p.cache_seqlens, (void*)(uintptr_t)0xB60000000ull, FA_DTYPE_INT32, 1, lens);
    set_dense(&p.block_table, (void*)(uintptr_t)0xB70000000ull, FA_DTYPE_INT32, 2, table);
    set_dense(&p.k_descale, (void*)(uintptr_t)0xB80000000ull, FA_DTYPE_FLOAT32, 1, desc);
    set_dense(&p.v_descale, (void*)(uintptr_t)0xB90000000ull, FA_DTYPE_FLOAT32, 1, desc);
    return p;
}

/* fa_query_support's kv_cache_dtype (0.13) and fa_decode_check agree on every head dim of an fp8 cache (the query
   says served exactly where a valid call is accepted); the fp8-cache decode kernels are listed for every compiled
   decode head dim, fp16 and bf16 queries, contiguous and paged, with their append kernels. */
static void test_fp8_cache_decode(void) {
    fa_support_query_t q;
    int32_t count = 0, i;
    int d, disagreements = 0, missing = 0, dt, paged;
    char want[96];
    for (d = 1; d <= 264; ++d) {
        fa_decode_params_t p = fp8_decode_params(d);
        int by_query;
        memset(&q, 0, sizeof q);
        q.struct_size = sizeof q;
        q.pass = FA_PASS_DECODE;
        q.dtype = FA_DTYPE_BFLOAT16;
        q.head_dim = d;
        q.paged_kv = 1;
        q.kv_cache_dtype = FA_DTYPE_FLOAT8_E4M3;
        by_query = fa_query_support(&q) == FA_STATUS_SUCCESS;
        if (by_query != (fa_decode_check(&p, 0) == FA_STATUS_SUCCESS)) {
            ++disagreements;
            printf("  fp8 cache, head dim %d: fa_query_support says %d, fa_decode_check %s\n", d, by_query,
                   fa_status_string(fa_decode_check(&p, 0)));
        }
    }
    CHECK(disagreements == 0, "fa_query_support (kv_cache_dtype fp8) and fa_decode_check disagree on %d head dims",
          disagreements);
    if (fa_kernel_count(&count) != FA_STATUS_SUCCESS) count = 0;
    for (d = 32; d <= 256; d += 32) {
        int compiled = 0; /* the 16-bit cache's decode kernel of head dim d is listed (FA_HEAD_DIMS has d) */
        if (d == 160 || d == 224) continue; /* no kernel of their own */
        sprintf(want, "sm80_decode_fp16_hdim%d_", d);
        for (i = 0; i < count; ++i) {
            const char* name = NULL;
            compiled |= fa_kernel_name(i, &name) == FA_STATUS_SUCCESS && name != NULL && strncmp(name, want, strlen(want)) == 0;
        }
        if (!compiled) continue;
        for (dt = 0; dt < 2; ++dt) {
            for (paged = 0; paged <= 1; ++paged) {
                int found = 0;
                sprintf(want, "sm80_decode_%s_hdim%d_e4m3kv_%s", dt ? "bf16" : "fp16", d, paged ? "paged_" : "");
                for (i = 0; i < count; ++i) {
                    const char* name = NULL;
                    if (fa_kernel_name(i, &name) == FA_STATUS_SUCCESS && name != NULL && strncmp(name, want, strlen(want)) == 0 &&
                        (paged || strstr(name, "_paged") == NULL)) {
                        ++found;
                    }
                }
                if (found != 1) {
                    ++missing;
                    printf("  %d kernels named %s...\n", found, want);
                }
            }
        }
    }
    for (dt = 0; dt < 2; ++dt) {
        int found = 0;
        sprintf(want, "sm80_decode_append_%s_e4m3kv", dt ? "bf16" : "fp16");
        for (i = 0; i < count; ++i) {
            const char* name = NULL;
            found += fa_kernel_name(i, &name) == FA_STATUS_SUCCESS && name != NULL && strcmp(name, want) == 0;
        }
        if (found != 1) {
            ++missing;
            printf("  %d kernels named %s\n", found, want);
        }
    }
    CHECK(missing == 0, "%d fp8-cache decode kernels are not listed once each", missing);
}

static void test_kernel_names(void) {
    int32_t count = -1, i, j;
    const char* name = (const char*)(uintptr_t)1;
    int bad_names = 0, duplicates = 0, sm90_fwd_fp16 = 0, sm90_fwd_bf16 = 0, sm90_fwd_bad_class = 0;
    expect("kernel_count", fa_kernel_count(&count), FA_STATUS_SUCCESS, NULL);
    CHECK(count > 0, "fa_kernel_count is %d", (int)count);
    for (i = 0; i < count; ++i) {
        const char* a = NULL;
        if (fa_kernel_name(i, &a) != FA_STATUS_SUCCESS || a == NULL ||
            (strncmp(a, "sm80_fwd_", 9) != 0 && strncmp(a, "sm80_bwd_", 9) != 0 && strncmp(a, "sm90_fwd_", 9) != 0 &&
             strncmp(a, "sm90_bwd_", 9) != 0 && strncmp(a, "sm80_decode_", 12) != 0) ||
            (strstr(a, "hdim") == NULL && strncmp(a, "sm80_decode_", 12) != 0)) {
            ++bad_names;
            printf("  kernel %d: bad name \"%s\" (%s)\n", (int)i, a != NULL ? a : "(null)", fa_last_error_message());
            continue;
        }
        if (strncmp(a, "sm90_fwd_", 9) == 0) { /* kernel classes 64, 128, 192 and 256 (fp8: 128, 256) */
            const int kd = atoi(strstr(a, "hdim") + 4);
            sm90_fwd_fp16 += strstr(a, "_fp16_") != NULL;
            sm90_fwd_bf16 += strstr(a, "_bf16_") != NULL;
            if (kd != 64 && kd != 128 && kd != 256 && !(kd == 192 && strstr(a, "_e4m3_") == NULL)) {
                ++sm90_fwd_bad_class;
                printf("  kernel %d: \"%s\" is not of an sm90 forward kernel class (64, 128, 192, 256; fp8 128, 256)\n", (int)i, a);
            }
        }
        for (j = 0; j < i; ++j) {
            const char* b = NULL;
            if (fa_kernel_name(j, &b) == FA_STATUS_SUCCESS && b != NULL && strcmp(a, b) == 0) {
                ++duplicates;
            }
        }
    }
    CHECK(bad_names == 0, "%d kernel names are missing or malformed", bad_names);
    CHECK(duplicates == 0, "%d kernel names repeat", duplicates);
    CHECK(sm90_fwd_bad_class == 0, "%d sm90 forward kernels of a head dim other than 64, 128, 192 and 256 (fp8: 128, 256)", sm90_fwd_bad_class);
    if (build_has_sm90a()) { /* a build with sm_90a code serves the forward on FA_PATH_SM90 */
        CHECK(sm90_fwd_fp16 > 0 && sm90_fwd_bf16 > 0, "a build with sm_90a code lists %d fp16 and %d bf16 sm90_fwd_ kernels",
              sm90_fwd_fp16, sm90_fwd_bf16);
    } else {
        CHECK(sm90_fwd_fp16 + sm90_fwd_bf16 == 0, "a build without sm_90a code lists sm90_fwd_ kernels");
    }
    if (count > 0 && fa_kernel_name(0, &name) == FA_STATUS_SUCCESS) {
        printf("  %d kernels, the first \"%s\"\n", (int)count, name);
    }
    name = (const char*)(uintptr_t)1;
    expect("kernel_name(count)", fa_kernel_name(count, &name), FA_STATUS_INVALID_ARGUMENT, "index is");
    CHECK(name == NULL, "a failed fa_kernel_name must set *name to NULL");
    expect("kernel_name(-1)", fa_kernel_name(-1, &name), FA_STATUS_INVALID_ARGUMENT, "index is -1");
    expect("kernel_name(0, NULL)", fa_kernel_name(0, NULL), FA_STATUS_INVALID_ARGUMENT, "name is NULL");
    expect("kernel_count(NULL)", fa_kernel_count(NULL), FA_STATUS_INVALID_ARGUMENT, "count is NULL");
}

/* Graph helpers: what needs no GPU (argument checks, NULL no-ops). */
static void test_graph_arguments(void) {
    void* graph = (void*)(uintptr_t)1;
    expect("begin_capture(NULL stream)", fa_stream_begin_capture(NULL), FA_STATUS_INVALID_ARGUMENT,
           "legacy default stream cannot be captured");
    expect("end_capture(graph NULL)", fa_stream_end_capture((void*)(uintptr_t)256, NULL), FA_STATUS_INVALID_ARGUMENT,
           "graph is NULL");
    expect("end_capture(NULL stream)", fa_stream_end_capture(NULL, &graph), FA_STATUS_INVALID_ARGUMENT,
           "stream is NULL");
    CHECK(graph == NULL, "a failed fa_stream_end_capture must set *graph to NULL");
    expect("graph_launch(NULL)", fa_graph_launch(NULL, NULL), FA_STATUS_INVALID_ARGUMENT, "graph is NULL");
    expect("graph_destroy(NULL) is a no-op", fa_graph_destroy(NULL), FA_STATUS_SUCCESS, NULL);
}

#if defined(FA_TEST_HAVE_PTHREADS)
/* The last error is per thread: another thread's failures and successes leave this thread's alone. */
typedef struct thread_result {
    int ok_after_success;
    int ok_after_failure;
    int concurrent_checks_ok;
} thread_result;

static void* other_thread(void* arg) {
    thread_result* r = (thread_result*)arg;
    fa_forward_params_t p;
    int i;
    r->ok_after_success = fa_forward_params_init(&p, sizeof p) == FA_STATUS_SUCCESS && fa_last_error_message()[0] == '\0';
    p.reserved0 = 7;
    r->ok_after_failure = fa_forward_check(&p, 0) == FA_STATUS_INVALID_ARGUMENT &&
                          strstr(fa_last_error_message(), "struct_size") == NULL &&
                          fa_last_error_message()[0] != '\0';
    r->concurrent_checks_ok = 1;
    p = valid_params(1);
    for (i = 0; i < 2000; ++i) {
        if (fa_forward_check(&p, 80) != FA_STATUS_SUCCESS || fa_last_error_message()[0] != '\0') {
            r->concurrent_checks_ok = 0;
        }
    }
    return NULL;
}

static void test_last_error_is_per_thread(void) {
    pthread_t thread;
    thread_result r;
    fa_forward_params_t p;
    int i, main_ok = 1;
    memset(&r, 0, sizeof(r));
    p = valid_params(0);
    p.q.rank = 2;
    expect("main thread failure", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "q.rank is 2");
    if (pthread_create(&thread, NULL, other_thread, &r) != 0) {
        CHECK(0, "pthread_create failed");
        return;
    }
    for (i = 0; i < 2000; ++i) { /* concurrent failing checks on this thread */
        if (fa_forward_check(&p, 0) != FA_STATUS_INVALID_ARGUMENT || strstr(fa_last_error_message(), "q.rank is 2") == NULL) {
            main_ok = 0;
        }
    }
    pthread_join(thread, NULL);
    CHECK(r.ok_after_success, "another thread: success must give \"\" there");
    CHECK(r.ok_after_failure, "another thread: its own failure must give its own message");
    CHECK(r.concurrent_checks_ok, "another thread: concurrent valid checks must succeed with \"\"");
    CHECK(main_ok, "main thread: concurrent failing checks must keep their own message");
    CHECK(strstr(fa_last_error_message(), "q.rank is 2") != NULL,
          "main thread's message changed by another thread: \"%s\"", fa_last_error_message());
}
#endif

/* ---- log callback -------------------------------------------------------------------------- */

typedef struct log_record {
    int calls;
    int debug_calls;
    int forward_launches; /* "fa_forward: <kernel> for ..." lines */
    char last[512];
} log_record;

static void on_log(int32_t level, const char* message, void* user_data) {
    log_record* r = (log_record*)user_data;
    ++r->calls;
    if (level == FA_LOG_DEBUG) {
        ++r->debug_calls;
    }
    if (message != NULL && strncmp(message, "fa_forward: ", 12) == 0 && strncmp(message + 12, "nothing", 7) != 0) {
        ++r->forward_launches;
    }
    strncpy(r->last, message != NULL ? message : "", sizeof(r->last) - 1);
    r->last[sizeof(r->last) - 1] = '\0';
}

/* ---- devices without a GPU ----------------------------------------------------------------- */

static void test_no_device_behaviour(void) {
    fa_context_t context = (fa_context_t)(uintptr_t)1;
    void* pointer = (void*)(uintptr_t)1;
    void* stream = (void*)(uintptr_t)1;
    fa_device_properties_t props;
    expect("context_create(0) without GPU", fa_context_create(0, &context), FA_STATUS_NO_DEVICE, NULL);
    CHECK(context == NULL, "a failed fa_context_create must set *context to NULL");
    expect("memory_alloc without GPU", fa_memory_alloc(0, 256, &pointer), FA_STATUS_NO_DEVICE, NULL);
    CHECK(pointer == NULL, "a failed fa_memory_alloc must set *ptr to NULL");
    expect("stream_create without GPU", fa_stream_create(0, &stream), FA_STATUS_NO_DEVICE, NULL);
    CHECK(stream == NULL, "a failed fa_stream_create must set *stream to NULL");
    memset(&props, 0, sizeof(props));
    props.struct_size = sizeof(props);
    expect("get_properties without GPU", fa_device_get_properties(0, &props), FA_STATUS_NO_DEVICE, NULL);
    expect("memory_free(NULL) is a no-op", fa_memory_free(0, NULL), FA_STATUS_SUCCESS, NULL);
    expect("stream_destroy(NULL) is a no-op", fa_stream_destroy(NULL), FA_STATUS_SUCCESS, NULL);
    expect("event_destroy(NULL) is a no-op", fa_event_destroy(NULL), FA_STATUS_SUCCESS, NULL);
    expect("context_destroy(NULL) is a no-op", fa_context_destroy(NULL), FA_STATUS_SUCCESS, NULL);
}

static void test_null_outputs(void) {
    expect("device_count(NULL)", fa_device_count(NULL), FA_STATUS_INVALID_ARGUMENT, "count is NULL");
    expect("memory_alloc(ptr NULL)", fa_memory_alloc(0, 16, NULL), FA_STATUS_INVALID_ARGUMENT, "ptr is NULL");
    expect("context_create(NULL)", fa_context_create(0, NULL), FA_STATUS_INVALID_ARGUMENT, "context is NULL");
    expect("context_get_device(NULL)", fa_context_get_device(NULL, NULL), FA_STATUS_INVALID_ARGUMENT, "context");
    expect("context_check(NULL)", fa_context_check(NULL), FA_STATUS_INVALID_ARGUMENT, "context is NULL");
    expect("event_elapsed_ms(NULL)", fa_event_elapsed_ms(NULL, NULL, NULL), FA_STATUS_INVALID_ARGUMENT, "NULL");
    expect("memset value 300", fa_memset_async((void*)(uintptr_t)256, 300, 16, NULL), FA_STATUS_INVALID_ARGUMENT,
           "0..255");
    expect("memcpy 0 bytes is a no-op", fa_memcpy(NULL, NULL, 0), FA_STATUS_SUCCESS, NULL);
    expect("memcpy NULL dst", fa_memcpy(NULL, (void*)(uintptr_t)256, 16), FA_STATUS_INVALID_ARGUMENT, "dst is NULL");
}

/* ---- GPU: forward against a float64 reference ---------------------------------------------- */

typedef struct fwd_case {
    int b, sq, sk, hq, hkv, d;
    int causal, alignment;
    float scale;  /* 0: default 1/sqrt(d) */
    int row_pad;  /* extra elements after each row of q, k, v and out (a multiple of 8) */
    int with_lse;
    int dtype;    /* FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16 */
    float softcap;                   /* 0: off */
    int window;                      /* 0: no window (-1, -1); 1: window_left / window_right below */
    int window_left, window_right;
} fwd_case;

/* Query rows the forward cases check against the float64 reference: 0, every row; n > 1, rows i % n == 0 and the
   last one (set around the long calls, whose full reference would take minutes). */
static int g_row_sample = 0;

static int row_checked(const fwd_case* c, int i) {
    return g_row_sample <= 1 || i % g_row_sample == 0 || i == c->sq - 1;
}

/* ALiBi slopes (0.8) of a case: form 0 none, 1 [hq], 2 [b, hq]; slope the largest (alibi_slope_of). */
typedef struct alibi_spec {
    int form;
    float slope;
} alibi_spec;

typedef struct alibi_case {
    fwd_case c;
    alibi_spec alibi;
} alibi_case;

/* Every fp16 and bf16 bit pattern as a double, built once in main (to_double_tables): the float64 reference reads
   each key and value element once per query row, and the conversion functions' branches made it the larger part of
   c_abi_test's time on the long cases (about 28 of 32 s of one core here for the 4 x 4100 x 4200 x 32-head case). The
   values are the functions' own, so the reference's results are the same bits. */
static double g_to_double[2][65536];

static void to_double_tables(void) {
    uint32_t x;
    for (x = 0; x < 65536u; ++x) {
        g_to_double[0][x] = half_to_double((uint16_t)x);
        g_to_double[1][x] = bf16_to_double((uint16_t)x);
    }
}

static double to_double(int dtype, uint16_t x) {
    return g_to_double[dtype == FA_DTYPE_BFLOAT16][x];
}

/* What the reference needs of a call besides the data: the header's semantics, written out. */
typedef struct ref_problem {
    int dtype, d, hq, hkv;
    int dv;                        /* v's and out's head dim (d, or a V head dim pair's) */
    int causal, alignment;
    int window_left, window_right; /* -1: unbounded on that side */
    double scale;                  /* the softmax scale (0 already replaced by 1/sqrt(d)) */
    double softcap;                /* 0: off */
    int alibi;                     /* 1: FlashAttention-2's ALiBi bias with alibi_slope (the row's, set per head) */
    int alibi_column;              /* its causal form +slope * j, else -slope * |i + off - j| (alibi_column_form) */
    double alibi_slope;
} ref_problem;

/* One query row i (head h) of a sequence with sq queries and sk keys, in double:
   out[0..dv) = softmax(s) v over the visible keys (q.k over d columns), where s_j = scale * q.k_j, or, with softcap,
   softcap * tanh(scale * q.k_j / softcap); key j is visible iff 0 <= j < sk and
   i + off - window_left <= j <= i + off + right, off = sk - sq (bottom-right) or 0 (top-left),
   right = window_right, capped at 0 when causal (0 when causal without a right window); a -1 side is
   unbounded; with ALiBi (FEATURES.md section 2) s_j gains, after softcap, +slope * j (the causal form) or
   -slope * |i + off - j|. Returns the log-sum-exp, +infinity (and out = 0) when no key is visible.
   k_row / v_row point at key 0 of the sequence for this head; rows are k_stride / v_stride apart. */
static double reference_row(const ref_problem* r, int i, int sq, int sk, const uint16_t* q_row, const uint16_t* k_row,
                            int64_t k_stride, const uint16_t* v_row, int64_t v_stride, double* out, double* scores) {
    const int64_t off = r->alignment == FA_CAUSAL_BOTTOM_RIGHT ? (int64_t)sk - sq : 0;
    const double* conv = g_to_double[r->dtype == FA_DTYPE_BFLOAT16];
    int64_t right = r->window_right;
    int64_t lo = 0, hi = (int64_t)sk - 1, j;
    double m = -INFINITY, sum = 0.0, qd[512];
    int e;
    if (r->causal) {
        right = 0; /* causal caps window_right at 0 (and bounds an unbounded right side there) */
    }
    if (right >= 0 && i + off + right < hi) {
        hi = i + off + right;
    }
    if (r->window_left >= 0 && i + off - r->window_left > lo) {
        lo = i + off - r->window_left;
    }
    for (e = 0; e < r->dv; ++e) {
        out[e] = 0.0;
    }
    if (hi < lo) {
        return INFINITY;
    }
    if (r->d > 512) {
        CHECK(0, "reference_row: head dim %d above 512", r->d);
        return NAN;
    }
    for (e = 0; e < r->d; ++e) {
        qd[e] = conv[q_row[e]];
    }
    for (j = lo; j <= hi; ++j) {
        const uint16_t* kj = k_row + j * k_stride;
        double dot = 0.0, s;
        for (e = 0; e < r->d; ++e) {
            dot += qd[e] * conv[kj[e]];
        }
        s = r->scale * dot;
        if (r->softcap > 0.0) {
            s = r->softcap * tanh(s / r->softcap);
        }
        if (r->alibi) {
            s += r->alibi_column ? r->alibi_slope * (double)j : -r->alibi_slope * fabs((double)(i + off - j));
        }
        scores[j] = s;
        if (s > m) {
            m = s;
        }
    }
    for (j = lo; j <= hi; ++j) {
        const uint16_t* vj = v_row + j * v_stride;
        const double w = exp(scores[j] - m);
        sum += w;
        for (e = 0; e < r->dv; ++e) {
            out[e] += w * conv[vj[e]];
        }
    }
    for (e = 0; e < r->dv; ++e) {
        out[e] /= sum;
    }
    return m + log(sum);
}

/* The reference's view of a case; window 0 means unbounded on both sides, scale 0 means 1/sqrt(d). */
static ref_problem make_problem(int dtype, int d, int hq, int hkv, int causal, int alignment, int window,
                                int window_left, int window_right, float scale, float softcap) {
    ref_problem r;
    r.dtype = dtype;
    r.d = d;
    r.dv = d; /* callers of a V head dim pair set theirs */
    r.hq = hq;
    r.hkv = hkv;
    r.causal = causal;
    r.alignment = alignment;
    r.window_left = window ? window_left : -1;
    r.window_right = window ? window_right : -1;
    r.scale = scale > 0.0f ? (double)scale : 1.0 / sqrt((double)d);
    r.softcap = (double)softcap;
    r.alibi = 0;
    r.alibi_column = 0;
    r.alibi_slope = 0.0;
    return r;
}

/* The host's choice of ALiBi form (validate_attention.cpp): FlashAttention-2's causal form +slope * j for a causal
   call (window right 0) without a left window, or with one of at least sk; a window side of max(sq, sk) or more is
   none. */
static int alibi_column_form(const fwd_case* c) {
    const int no_op = c->sq > c->sk ? c->sq : c->sk;
    const int left = c->window ? c->window_left : -1, right_in = c->window ? c->window_right : -1;
    const int right = c->causal ? 0 : right_in >= no_op ? -1 : right_in;
    return right == 0 && (left < 0 || left >= c->sk);
}

/* Slope x of a case's alibi_slopes (x = h for [hq], b * hq + h for [b, hq]): distinct per head and batch, so that a
   slope read for the wrong one shows; the largest is a->slope. */
static float alibi_slope_of(const fwd_case* c, const alibi_spec* a, int x) {
    const int n = a->form == 2 ? c->b * c->hq : c->hq;
    return a->slope * (float)(x + 1) / (float)n;
}

/* v's and out's head dim of a case: d, or dv where a V head dim pair gives one (dv 0: d). */
static int v_dim(int d, int dv) {
    return dv > 0 ? dv : d;
}

static ref_problem problem_of(const fwd_case* c, int dv) {
    ref_problem r = make_problem(c->dtype, c->d, c->hq, c->hkv, c->causal, c->alignment, c->window, c->window_left,
                                 c->window_right, c->scale, c->softcap);
    r.dv = v_dim(c->d, dv);
    return r;
}

/* out[b, i, h, :] (v_dim(d, dv) values) and lse[b, h, i] of a fixed-length call, in double; alibi NULL: none. */
static void reference_forward(const fwd_case* c, const alibi_spec* alibi, int dv, const uint16_t* q, const uint16_t* k,
                              const uint16_t* v, const fa_tensor_t* tq, const fa_tensor_t* tk, const fa_tensor_t* tv,
                              double* out, double* lse) {
    ref_problem r = problem_of(c, dv);
    const int group = c->hq / c->hkv;
    double* scores = (double*)malloc(sizeof(double) * (size_t)(c->sk > 0 ? c->sk : 1));
    int b, h, i;
    if (scores == NULL) {
        CHECK(0, "reference: host allocation failed");
        return;
    }
    r.alibi = alibi != NULL && alibi->form != 0;
    r.alibi_column = alibi_column_form(c);
    for (b = 0; b < c->b; ++b) {
        for (h = 0; h < c->hq; ++h) {
            const int kh = h / group;
            if (r.alibi) {
                r.alibi_slope = (double)alibi_slope_of(c, alibi, alibi->form == 2 ? b * c->hq + h : h);
            }
            for (i = 0; i < c->sq; ++i) {
                const uint16_t* qi = q + b * tq->strides[0] + i * tq->strides[1] + h * tq->strides[2];
                if (!row_checked(c, i)) continue;
                lse[((size_t)b * c->hq + h) * c->sq + i] = reference_row(
                    &r, i, c->sq, c->sk, qi, k + b * tk->strides[0] + kh * tk->strides[2], tk->strides[1],
                    v + b * tv->strides[0] + kh * tv->strides[2], tv->strides[1],
                    out + (((size_t)b * c->sq + i) * c->hq + h) * r.dv, scores);
            }
        }
    }
    free(scores);
}

static void fill_random(uint16_t* data, int64_t count, int dtype) {
    int64_t i;
    for (i = 0; i < count; ++i) {
        const float x = (float)normal01();
        data[i] = dtype == FA_DTYPE_BFLOAT16 ? float_to_bf16(x) : float_to_half(x);
    }
}

/* Whether an lse value matches the reference: +inf for a row without visible keys, else within 1e-3
   relative (a NaN never matches). */
static int lse_matches(double got, double want) {
    if (isinf(want)) {
        return isinf(got) && got > 0;
    }
    return fabs(got - want) <= 1e-3 * (fabs(want) > 1.0 ? fabs(want) : 1.0);
}

/* " window=(l,r)" and " softcap=x", appended to a case's label when the case uses them. */
static void append_features(char* label, int window, int window_left, int window_right, float softcap) {
    if (window) {
        sprintf(label + strlen(label), " window=(%d,%d)", window_left, window_right);
    }
    if (softcap > 0.0f) {
        sprintf(label + strlen(label), " softcap=%g", (double)softcap);
    }
}

/* The mask and softcap fields of a call (window 0 leaves the unbounded defaults). */
static void set_features(fa_forward_params_t* p, int causal, int alignment, int window, int window_left,
                         int window_right, float softcap) {
    p->causal = causal;
    p->causal_alignment = alignment;
    if (window) {
        p->window_left = window_left;
        p->window_right = window_right;
    }
    p->softcap = softcap;
}

/* Device memory of one call's q, k, v, out and lse, and the bytes of each (k and v: kv_bytes each, but v_bytes for
   v where not 0: a V head dim of its own). Start from all zeros: free_io accepts buffers never allocated. */
typedef struct device_io {
    void *q, *k, *v, *out, *lse;
    size_t q_bytes, kv_bytes, out_bytes, lse_bytes;
    size_t v_bytes;
} device_io;

static size_t v_bytes_of(const device_io* io) {
    return io->v_bytes != 0 ? io->v_bytes : io->kv_bytes;
}

/* Allocates the five buffers on device 0; returns 0 as soon as one allocation fails (reported). */
static int alloc_io(device_io* io) {
    return expect("alloc q", fa_memory_alloc(0, io->q_bytes, &io->q), FA_STATUS_SUCCESS, NULL) &&
           expect("alloc k", fa_memory_alloc(0, io->kv_bytes, &io->k), FA_STATUS_SUCCESS, NULL) &&
           expect("alloc v", fa_memory_alloc(0, v_bytes_of(io), &io->v), FA_STATUS_SUCCESS, NULL) &&
           expect("alloc out", fa_memory_alloc(0, io->out_bytes, &io->out), FA_STATUS_SUCCESS, NULL) &&
           expect("alloc lse", fa_memory_alloc(0, io->lse_bytes, &io->lse), FA_STATUS_SUCCESS, NULL);
}

static void free_io(device_io* io) {
    fa_memory_free(0, io->q);
    fa_memory_free(0, io->k);
    fa_memory_free(0, io->v);
    fa_memory_free(0, io->out);
    fa_memory_free(0, io->lse);
}

/* Copies the host inputs into q, k and v; every label starts with `prefix`. */
static void upload_inputs(const char* prefix, const device_io* io, const uint16_t* hq, const uint16_t* hk,
                          const uint16_t* hv) {
    char label[64];
    sprintf(label, "%scopy q", prefix);
    expect(label, fa_memcpy(io->q, hq, io->q_bytes), FA_STATUS_SUCCESS, NULL);
    sprintf(label, "%scopy k", prefix);
    expect(label, fa_memcpy(io->k, hk, io->kv_bytes), FA_STATUS_SUCCESS, NULL);
    sprintf(label, "%scopy v", prefix);
    expect(label, fa_memcpy(io->v, hv, v_bytes_of(io)), FA_STATUS_SUCCESS, NULL);
}

/* Poison: 0xFFFF is a NaN in fp16 and in bf16, 0xFFFFFFFF in fp32. */
static void poison_outputs(const char* prefix, const device_io* io, void* stream) {
    char label[64];
    sprintf(label, "%spoison out", prefix);
    expect(label, fa_memset_async(io->out, 0xFF, io->out_bytes, stream), FA_STATUS_SUCCESS, NULL);
    sprintf(label, "%spoison lse", prefix);
    expect(label, fa_memset_async(io->lse, 0xFF, io->lse_bytes, stream), FA_STATUS_SUCCESS, NULL);
}

static void download_outputs(const char* prefix, const device_io* io, uint16_t* ho, float* hl) {
    char label[64];
    sprintf(label, "%scopy out back", prefix);
    expect(label, fa_memcpy(ho, io->out, io->out_bytes), FA_STATUS_SUCCESS, NULL);
    sprintf(label, "%scopy lse back", prefix);
    expect(label, fa_memcpy(hl, io->lse, io->lse_bytes), FA_STATUS_SUCCESS, NULL);
}

/* Fresh parameters whose q, k, v and out have the given layouts on io's buffers. */
static void bind_io(fa_forward_params_t* p, const device_io* io, const fa_tensor_t* tq, const fa_tensor_t* tk,
                    const fa_tensor_t* tv, const fa_tensor_t* to) {
    fa_forward_params_init(p, sizeof *p);
    p->q = *tq;
    p->q.data = io->q;
    p->k = *tk;
    p->k.data = io->k;
    p->v = *tv;
    p->v.data = io->v;
    p->out = *to;
    p->out.data = io->out;
}

/* ---- GPU: the forward's kernel paths ------------------------------------------------------------------------ */

static int g_device_cc = 0; /* device 0's compute capability, major*10+minor (test_gpu sets it) */
/* C_ABI_TEST_ONLY: a comma-separated list of test_gpu's sections to run (unset or empty: all), for a device run that
   checks one kernel change in less than the whole test's two to three minutes on an H200. A section left out is
   reported and counted as skipped, never as passed. The names: graph, pointers, fp8, basic, wide64, sched256, pairs,
   padded, paths, paged, vpair, misc. */
static const char* g_sections = NULL;

/* The next item of a comma-separated list: its start and length in *item and *len, *at moved past it; 0 at the end. */
static int list_next(const char** at, const char** item, size_t* len) {
    const char* end;
    if (*at == NULL || **at == '\0') return 0;
    end = strchr(*at, ',');
    *item = *at;
    *len = end != NULL ? (size_t)(end - *at) : strlen(*at);
    *at = end != NULL ? end + 1 : NULL;
    return 1;
}

static int item_is(const char* item, size_t len, const char* name) {
    return strlen(name) == len && strncmp(item, name, len) == 0;
}

/* Whether the comma-separated list names `name` exactly (a pure function: section_filter_selftest checks it). */
static int section_listed(const char* list, const char* name) {
    const char *at = list, *item;
    size_t len;
    while (list_next(&at, &item, &len)) {
        if (item_is(item, len, name)) return 1;
    }
    return 0;
}

static const char* const kSections[] = {"graph", "pointers", "fp8", "basic", "wide64", "sched256",
                                        "pairs", "padded", "paths", "paged", "vpair", "misc"};

/* Every item of the list is a section name (a misspelt one would skip everything and pass); empty items are allowed. */
static int sections_known(const char* list) {
    const char *at = list, *item;
    size_t len, k;
    while (list_next(&at, &item, &len)) {
        int known = len == 0;
        for (k = 0; k < sizeof(kSections) / sizeof(kSections[0]); ++k) known |= item_is(item, len, kSections[k]);
        if (!known) return 0;
    }
    return 1;
}

static int section(const char* name) {
    if (g_sections == NULL || g_sections[0] == '\0' || section_listed(g_sections, name)) {
        printf("  SECTION %s\n", name);
        return 1;
    }
    printf("  SKIP section %s (C_ABI_TEST_ONLY=%s)\n", name, g_sections);
    ++g_skipped;
    return 0;
}

/* The list matching on the CPU (the GPU sections cannot run here). */
static void section_filter_selftest(void) {
    CHECK(section_listed("pairs", "pairs") && section_listed("basic,pairs", "pairs") && section_listed("pairs,basic", "pairs"),
          "section_listed finds a listed name");
    CHECK(!section_listed("pairs2,xpairs,pair", "pairs") && !section_listed("", "pairs") && !section_listed(",", "pairs"),
          "section_listed matches whole names only");
    CHECK(section_listed("a,,pairs", "pairs") && !section_listed("basic", "basic2"), "section_listed skips empty items");
    CHECK(sections_known("pairs,basic,misc") && sections_known("") && !sections_known("pairs,pair"),
          "sections_known refuses an unknown name");
}
static int g_has_sm90a = 0; /* build_has_sm90a() (test_gpu sets it) */

static const char* path_name(int path) {
    return path == FA_PATH_SM90 ? "sm90" : path == FA_PATH_SM80 ? "sm80" : "auto";
}

/* Whether a forward on `path` must run on device 0, else be refused: FA_PATH_SM90 serves the forward on compute
   capability 9.0 in a build with sm_90a code only; FA_PATH_SM80 and FA_PATH_AUTO serve it on every GPU. */
static int forward_served(int path) {
    return path != FA_PATH_SM90 || (g_device_cc == 90 && g_has_sm90a);
}

/* The kernel-name prefix of the family a served forward on `path` runs (AUTO takes sm90 where that serves). */
static const char* forward_family(int path) {
    return path == FA_PATH_SM90 || (path == FA_PATH_AUTO && forward_served(FA_PATH_SM90)) ? "sm90_fwd_" : "sm80_fwd_";
}

static int g_sm_count = 0; /* device 0's SMs (test_gpu) */

/* Whether the sm90 forward runs a head-dim-64 call (16-bit, unmasked) on its 192-row tile: sm90/fwd_launch.cuh's
   fwd_d64_wide_pays with the default FA_SM90_FWD_D64_WIDE_MIN_KEYS (2048 query rows and keys), for b x hq heads
   (varlen: b sequences) of sq rows (the longest) on g_sm_count SMs: its persistent rounds times 1.5 under the 128-row
   tile's times 1.06. */
static int wide_expected(int b, int hq, int sq, int sk) {
    const long long heads = (long long)b * hq, sms = g_sm_count > 0 ? g_sm_count : 132;
    if (sq < 2048 || sk < 2048) return 0;
    return ((sq + 191) / 192 * heads + sms - 1) / sms * 150 < ((sq + 127) / 128 * heads + sms - 1) / sms * 106;
}

static int is_wide_d64_kernel(const char* name) {
    return strncmp(name, "sm90_fwd_", 9) == 0 && strstr(name, "_hdim64_") != NULL && strstr(name, "_192x128_") != NULL;
}

/* After a long head-dim-64 call (`label`) on the sm90 path of a build that lists the 192-row kernels: the log names
   the tile wide_expected gives for b x hq heads of sq rows over sk keys. */
static void check_wide_choice(const char* label, const log_record* log, int b, int hq, int sq, int sk) {
    const int expect_wide = wide_expected(b, hq, sq, sk);
    CHECK((strstr(log->last, "_192x128_") != NULL) == expect_wide, "%s: on %d SMs the sm90 path must run the %s kernel; "
          "the log says \"%s\"", label, g_sm_count, expect_wide ? "192-row" : "128-row", log->last);
}

static const char* dtype_tag(int dtype) {
    return dtype == FA_DTYPE_BFLOAT16 ? "_bf16_" : "_fp16_";
}

/* The kernel head dim of `family` forward kernels of `dtype` that serves head dim d: the smallest hdimN >= d the
   library lists (a head dim without its own kernel runs the next larger one); 0 when there is none. */
static int forward_kernel_dim(const char* family, int dtype, int d) {
    int32_t count = 0, i;
    int best = 0;
    const char* name = NULL;
    if (fa_kernel_count(&count) != FA_STATUS_SUCCESS) {
        return 0;
    }
    for (i = 0; i < count; ++i) {
        const char* h;
        int kd;
        if (fa_kernel_name(i, &name) != FA_STATUS_SUCCESS || name == NULL || strncmp(name, family, strlen(family)) != 0 ||
            strstr(name, dtype_tag(dtype)) == NULL || (h = strstr(name, "_hdim")) == NULL) {
            continue;
        }
        kd = atoi(h + 5);
        if (kd >= d && (best == 0 || kd < best)) {
            best = kd;
        }
    }
    return best;
}

/* After a served fa_forward: its FA_LOG_DEBUG line ("fa_forward: <kernel> for ...", the last message) names a kernel
   of the path's family with the call's dtype and the kernel head dim that serves d; with a V head dim pair (dv not 0),
   that pair's kernel (..._hdim<d>v<dv>_...), which the path's family has for both pairs. */
static void check_forward_kernel_v(const char* label, const log_record* log, int path, int dtype, int d, int dv) {
    const char* family = forward_family(path);
    const int kd = dv > 0 ? d : forward_kernel_dim(family, dtype, d);
    char kernel[160], hdim[24];
    size_t n = 0;
    if (strncmp(log->last, "fa_forward: ", 12) == 0) {
        const char* k = log->last + 12;
        while (k[n] != '\0' && k[n] != ' ' && n + 1 < sizeof(kernel)) {
            kernel[n] = k[n];
            ++n;
        }
    }
    kernel[n] = '\0';
    if (dv > 0) {
        sprintf(hdim, "_hdim%dv%d_", d, dv);
    } else {
        sprintf(hdim, "_hdim%d_", kd);
    }
    CHECK(kd > 0, "%s: the library lists no %s%s kernel for head dim %d or larger", label, family, dtype_tag(dtype) + 1, d);
    CHECK(kd > 0 && strncmp(kernel, family, strlen(family)) == 0 && strstr(kernel, dtype_tag(dtype)) != NULL &&
              strstr(kernel, hdim) != NULL,
          "%s: path %s (cc %d, sm_90a code %s) must run a %s kernel %s%s; the log says \"%s\"", label,
          path_name(path), g_device_cc, g_has_sm90a ? "yes" : "no", family, dtype_tag(dtype) + 1, hdim + 1, log->last);
}

static void check_forward_kernel(const char* label, const log_record* log, int path, int dtype, int d) {
    check_forward_kernel_v(label, log, path, dtype, d, 0);
}

/* A refusal of FA_PATH_SM90 is the contract's: UNSUPPORTED naming the path, and 90a on a cc 9.0 GPU (whose build
   then lacks sm_90a code). */
static void check_sm90_refusal(const char* label, fa_status_t status) {
    if (expect(label, status, FA_STATUS_UNSUPPORTED, "FA_PATH_SM90") && g_device_cc == 90) {
        CHECK(strstr(fa_last_error_message(), "90a") != NULL, "%s: on compute capability 9.0 the refusal names 90a: \"%s\"",
              label, fa_last_error_message());
    }
}

/* Every element of `bytes` bytes at `host` is 0xFF (the poison, untouched). */
static int64_t count_unpoisoned(const void* host, size_t bytes) {
    const unsigned char* b = (const unsigned char*)host;
    int64_t changed = 0;
    size_t x;
    for (x = 0; x < bytes; ++x) {
        changed += b[x] != 0xFF;
    }
    return changed;
}

/* After a refused call: nothing launched, and out and lse still hold the poison. */
static void check_refusal_wrote_nothing(const char* label, const device_io* io, void* stream, uint16_t* ho, float* hl,
                                        const log_record* log, int launches_before) {
    int64_t changed;
    expect("stream synchronize", fa_stream_synchronize(stream), FA_STATUS_SUCCESS, NULL);
    download_outputs("refused: ", io, ho, hl);
    changed = count_unpoisoned(ho, io->out_bytes) + count_unpoisoned(hl, io->lse_bytes);
    CHECK(changed == 0, "%s: a refused call wrote %ld bytes of out and lse", label, (long)changed);
    CHECK(log->forward_launches == launches_before, "%s: a refused call launched a kernel", label);
}

/* fa_forward(p) on `path`: where the path does not serve the call, it must be refused (check_sm90_refusal) having
   launched and written nothing, and 0 is returned; else it must succeed (1) or fails the test (0). */
static int forward_or_refusal(const char* label, fa_context_t context, void* stream, const fa_forward_params_t* p,
                              int path, const device_io* io, uint16_t* ho, float* hl, log_record* log) {
    if (!forward_served(path)) {
        const int launches = log->forward_launches;
        check_sm90_refusal(label, fa_forward(context, p, stream));
        check_refusal_wrote_nothing(label, io, stream, ho, hl, log, launches);
        return 0;
    }
    return expect(label, fa_forward(context, p, stream), FA_STATUS_SUCCESS, NULL);
}

/* dv: v's and out's head dim where a V head dim pair (C ABI 0.10) gives one, else 0; alibi: the case's slopes (NULL:
   none). */
static int run_forward_case_a(fa_context_t context, void* stream, const fwd_case* c, const alibi_spec* alibi,
                              int dv_pair, int path, log_record* log) {
    const int dv = v_dim(c->d, dv_pair);
    fa_forward_params_t p;
    fa_tensor_t tq, tk, tv, to;
    int64_t nq, nk, nv, no, nl;
    uint16_t *hq = NULL, *hk = NULL, *hv = NULL, *ho = NULL;
    float* hl = NULL;
    double *ref = NULL, *ref_lse = NULL;
    float* h_slopes = NULL;
    void* d_slopes = NULL;
    const int n_slopes = alibi == NULL ? 0 : alibi->form == 2 ? c->b * c->hq : alibi->form == 1 ? c->hq : 0;
    device_io io;
    char label[256];
    int failures_before = g_failed;
    int b, i, h, e, nan_count = 0, poison_overwritten = 0, lse_bad = 0;
    double err2 = 0.0, ref2 = 0.0, rel;
    int64_t x;

    memset(&io, 0, sizeof(io));
    sprintf(label, "fwd %s b=%d sq=%d sk=%d hq=%d hkv=%d d=%d causal=%d%s pad=%d",
            c->dtype == FA_DTYPE_BFLOAT16 ? "bf16" : "fp16", c->b, c->sq, c->sk, c->hq, c->hkv, c->d, c->causal,
            c->alignment == FA_CAUSAL_TOP_LEFT ? "(top-left)" : "", c->row_pad);
    append_features(label, c->window, c->window_left, c->window_right, c->softcap);
    if (n_slopes > 0) {
        sprintf(label + strlen(label), " alibi%s<=%g", alibi->form == 2 ? "[b,hq]" : "[hq]", (double)alibi->slope);
    }
    if (dv_pair > 0) {
        sprintf(label + strlen(label), " dv=%d", dv);
    }
    if (path != FA_PATH_AUTO) {
        sprintf(label + strlen(label), " path=%s", path_name(path));
    }

    set_tensor4(&tq, NULL, c->dtype, c->b, c->sq, c->hq, c->d, c->row_pad);
    set_tensor4(&tk, NULL, c->dtype, c->b, c->sk, c->hkv, c->d, c->row_pad);
    set_tensor4(&tv, NULL, c->dtype, c->b, c->sk, c->hkv, dv, c->row_pad);
    set_tensor4(&to, NULL, c->dtype, c->b, c->sq, c->hq, dv, c->row_pad);
    nq = tq.shape[0] * tq.strides[0];
    nk = tk.shape[0] * tk.strides[0];
    nv = tv.shape[0] * tv.strides[0];
    no = to.shape[0] * to.strides[0];
    nl = (int64_t)c->b * c->hq * c->sq;
    hq = (uint16_t*)malloc((size_t)nq * 2);
    hk = (uint16_t*)malloc((size_t)nk * 2);
    hv = (uint16_t*)malloc((size_t)nv * 2);
    ho = (uint16_t*)malloc((size_t)no * 2);
    hl = (float*)malloc((size_t)nl * sizeof(float));
    ref = (double*)malloc(sizeof(double) * (size_t)c->b * c->sq * c->hq * dv);
    ref_lse = (double*)malloc(sizeof(double) * (size_t)nl);
    h_slopes = (float*)malloc(sizeof(float) * (size_t)(n_slopes > 0 ? n_slopes : 1));
    if (!hq || !hk || !hv || !ho || !hl || !ref || !ref_lse || !h_slopes) {
        CHECK(0, "%s: host allocation failed", label);
        goto done;
    }
    fill_random(hq, nq, c->dtype); /* the padding gets random values too; the kernel must ignore them */
    fill_random(hk, nk, c->dtype);
    fill_random(hv, nv, c->dtype);

    io.q_bytes = (size_t)nq * 2;
    io.kv_bytes = (size_t)nk * 2;
    io.v_bytes = (size_t)nv * 2;
    io.out_bytes = (size_t)no * 2;
    io.lse_bytes = (size_t)nl * 4;
    if (!alloc_io(&io)) {
        goto done;
    }
    upload_inputs("", &io, hq, hk, hv);
    /* A copy from pageable memory may return before its DMA lands, and a non-blocking stream does not
       wait for the legacy stream: make the inputs visible to every stream first. */
    expect("device synchronize", fa_device_synchronize(0), FA_STATUS_SUCCESS, NULL);
    poison_outputs("", &io, stream);

    bind_io(&p, &io, &tq, &tk, &tv, &to);
    if (c->with_lse) {
        set_tensor3_f32(&p.lse, io.lse, c->b, c->hq, c->sq);
    }
    p.softmax_scale = c->scale;
    p.kernel_path = path;
    set_features(&p, c->causal, c->alignment, c->window, c->window_left, c->window_right, c->softcap);
    if (n_slopes > 0) {
        for (x = 0; x < n_slopes; ++x) {
            h_slopes[x] = alibi_slope_of(c, alibi, (int)x);
        }
        if (!expect("alloc alibi slopes", fa_memory_alloc(0, sizeof(float) * (size_t)n_slopes, &d_slopes),
                    FA_STATUS_SUCCESS, NULL) ||
            !expect("copy alibi slopes", fa_memcpy(d_slopes, h_slopes, sizeof(float) * (size_t)n_slopes),
                    FA_STATUS_SUCCESS, NULL)) {
            goto done;
        }
        expect("device synchronize", fa_device_synchronize(0), FA_STATUS_SUCCESS, NULL);
        if (alibi->form == 2) {
            set_tensor2_f32(&p.alibi_slopes, d_slopes, c->b, c->hq);
        } else {
            set_tensor1_f32(&p.alibi_slopes, d_slopes, c->hq, 1);
        }
    }
    log->debug_calls = 0;
    if (!forward_or_refusal(label, context, stream, &p, path, &io, ho, hl, log)) {
        goto done;
    }
    CHECK(log->debug_calls >= 1, "%s: no FA_LOG_DEBUG message naming the kernel", label);
    if (log->debug_calls >= 1) {
        printf("  log %s\n", log->last);
    }
    check_forward_kernel_v(label, log, path, c->dtype, c->d, dv_pair);
    expect("stream synchronize", fa_stream_synchronize(stream), FA_STATUS_SUCCESS, NULL);
    download_outputs("", &io, ho, hl);

    reference_forward(c, alibi, dv_pair, hq, hk, hv, &tq, &tk, &tv, ref, ref_lse);
    for (b = 0; b < c->b; ++b) {
        for (i = 0; i < c->sq; ++i) {
            if (!row_checked(c, i)) continue;
            for (h = 0; h < c->hq; ++h) {
                for (e = 0; e < dv; ++e) {
                    const double got =
                        to_double(c->dtype, ho[b * to.strides[0] + i * to.strides[1] + h * to.strides[2] + e]);
                    const double want = ref[(((size_t)b * c->sq + i) * c->hq + h) * dv + e];
                    if (got != got) {
                        ++nan_count;
                    } else {
                        err2 += (got - want) * (got - want);
                    }
                    ref2 += want * want;
                }
            }
        }
    }
    /* Padding after each row of out must still hold the poison: nothing is written outside out. */
    for (x = 0; x < no; ++x) {
        if (x % to.strides[1] >= (int64_t)c->hq * dv && ho[x] != 0xFFFFu) {
            ++poison_overwritten;
        }
    }
    rel = ref2 > 0.0 ? sqrt(err2 / ref2) : sqrt(err2);
    CHECK(nan_count == 0, "%s: %d output elements are NaN (poison left or NaN computed)", label, nan_count);
    CHECK(rel_l2_within_cap(rel, c->dtype), "%s: relative L2 error %.3e above the %s cap %.0e", label, rel,
          c->dtype == FA_DTYPE_BFLOAT16 ? "bf16" : "fp16", rel_l2_cap(c->dtype));
    CHECK(poison_overwritten == 0, "%s: %d padding elements of out were written", label, poison_overwritten);
    if (c->with_lse) {
        for (x = 0; x < nl; ++x) {
            if (row_checked(c, (int)(x % c->sq)) && !lse_matches((double)hl[x], ref_lse[x])) {
                ++lse_bad;
            }
        }
        CHECK(lse_bad == 0, "%s: %d of %ld lse values wrong (tolerance 1e-3 relative; +inf for rows without keys)",
              label, lse_bad, (long)nl);
    }
    printf("  %s %s: relative L2 error %.3e, NaN %d%s%s\n", g_failed == failures_before ? "ok " : "BAD", label, rel,
           nan_count, c->with_lse ? ", lse checked" : "", g_row_sample > 1 ? " (sampled rows)" : "");

done:
    free_io(&io);
    fa_memory_free(0, d_slopes);
    free(hq);
    free(hk);
    free(hv);
    free(ho);
    free(hl);
    free(ref);
    free(ref_lse);
    free(h_slopes);
    return g_failed == failures_before;
}

static int run_forward_case_v(fa_context_t context, void* stream, const fwd_case* c, int dv_pair, int path,
                              log_record* log) {
    return run_forward_case_a(context, stream, c, NULL, dv_pair, path, log);
}

static int run_forward_case(fa_context_t context, void* stream, const fwd_case* c, int path, log_record* log) {
    return run_forward_case_v(context, stream, c, 0, path, log);
}

/* Compares rows x hq output rows of d values with the float64 reference: row (r, h) of the result
   starts at ho[out_off[r * hq + h]], of the reference at ref[(r * hq + h) * d]; its lse value is
   hl[lse_off[r * hq + h]] against ref_lse[r * hq + h] (lse_off NULL: no lse). Every other element of
   the n_out (n_lse) that were poisoned must still hold the poison. Returns 1 when all matched. */
static int compare_outputs(const char* label, int dtype, int d, int64_t rows, int hq, const uint16_t* ho, int64_t n_out,
                           const int64_t* out_off, const double* ref, const float* hl, int64_t n_lse,
                           const int64_t* lse_off, const double* ref_lse) {
    const int failures_before = g_failed;
    unsigned char* written = (unsigned char*)calloc((size_t)(n_out > n_lse ? n_out : n_lse) + 1, 1);
    int64_t r, x, nan_count = 0, poison_overwritten = 0, lse_bad = 0, lse_poison_overwritten = 0;
    double err2 = 0.0, ref2 = 0.0, rel;
    int e;
    if (written == NULL) {
        CHECK(0, "%s: host allocation failed", label);
        return 0;
    }
    for (r = 0; r < rows * hq; ++r) {
        for (e = 0; e < d; ++e) {
            const double got = to_double(dtype, ho[out_off[r] + e]);
            const double want = ref[r * d + e];
            written[out_off[r] + e] = 1;
            if (got != got) {
                ++nan_count;
            } else {
                err2 += (got - want) * (got - want);
            }
            ref2 += want * want;
        }
    }
    for (x = 0; x < n_out; ++x) {
        if (!written[x] && ho[x] != 0xFFFFu) {
            ++poison_overwritten;
        }
    }
    rel = ref2 > 0.0 ? sqrt(err2 / ref2) : sqrt(err2);
    CHECK(nan_count == 0, "%s: %ld output elements are NaN (poison left or NaN computed)", label, (long)nan_count);
    CHECK(rel_l2_within_cap(rel, dtype), "%s: relative L2 error %.3e above the %s cap %.0e", label, rel,
          dtype == FA_DTYPE_BFLOAT16 ? "bf16" : "fp16", rel_l2_cap(dtype));
    CHECK(poison_overwritten == 0, "%s: %ld elements outside out's rows were written", label, (long)poison_overwritten);
    if (lse_off != NULL) {
        uint32_t bits;
        memset(written, 0, (size_t)n_lse);
        for (r = 0; r < rows * hq; ++r) {
            written[lse_off[r]] = 1;
            if (!lse_matches((double)hl[lse_off[r]], ref_lse[r])) {
                ++lse_bad;
            }
        }
        for (x = 0; x < n_lse; ++x) {
            memcpy(&bits, &hl[x], sizeof(bits));
            if (!written[x] && bits != 0xFFFFFFFFu) {
                ++lse_poison_overwritten;
            }
        }
        CHECK(lse_bad == 0, "%s: %ld of %ld lse values wrong (tolerance 1e-3 relative; +inf for rows without keys)",
              label, (long)lse_bad, (long)(rows * hq));
        CHECK(lse_poison_overwritten == 0, "%s: %ld elements outside lse's rows were written", label,
              (long)lse_poison_overwritten);
    }
    printf("  %s %s: relative L2 error %.3e, NaN %ld%s\n", g_failed == failures_before ? "ok " : "BAD", label, rel,
           (long)nan_count, lse_off != NULL ? ", lse checked" : "");
    free(written);
    return g_failed == failures_before;
}

/* ---- GPU: variable-length batches ------------------------------------------------------------ */

typedef struct varlen_case {
    int batch;
    int len_q[4], len_k[4];
    int hq, hkv, d;
    int causal, alignment;
    int window, window_left, window_right;
    float softcap;
    int dtype;
    int row_pad;      /* extra elements after each packed row of q, k, v and out */
    int host_copies;  /* pass cu_seqlens_q_host / cu_seqlens_k_host */
    int max_extra;    /* max_seqlen_q/k are the longest lengths plus this */
} varlen_case;

/* Where a variable-length batch's host inputs and outputs live, for check_varlen_outputs. Keys: sequence n's key j of
   KV head kh at k + (cu_k[n] + j) * k_row + kh * k_head (values likewise). */
typedef struct varlen_view {
    int batch, hq, hkv, d;
    int dv;                      /* v's and out's head dim */
    const int32_t *cu_q, *cu_k;
    const int *len_q, *len_k;
    const uint16_t *q, *k, *v;
    const fa_tensor_t *tq, *to;  /* q's and out's layouts ([total, heads, d]) */
    int64_t k_row, k_head, v_row, v_head;
    int64_t lse_stride;          /* lse is [hq, total_q] with rows lse_stride apart */
} varlen_view;

/* Every element of a variable-length call's out and lse against the float64 reference (compare_outputs). */
static void check_varlen_outputs(const char* label, const ref_problem* rp, const varlen_view* w, const uint16_t* ho,
                                 int64_t n_out, const float* hl, int64_t n_lse) {
    const int64_t total_q = w->cu_q[w->batch];
    int max_k = 0, n, i, h;
    double *ref, *ref_lse, *scores;
    int64_t *out_off, *lse_off;
    for (n = 0; n < w->batch; ++n) max_k = w->len_k[n] > max_k ? w->len_k[n] : max_k;
    ref = (double*)malloc(sizeof(double) * (size_t)(total_q * w->hq * w->dv + 1));
    ref_lse = (double*)malloc(sizeof(double) * (size_t)(total_q * w->hq + 1));
    out_off = (int64_t*)malloc(sizeof(int64_t) * (size_t)(total_q * w->hq + 1));
    lse_off = (int64_t*)malloc(sizeof(int64_t) * (size_t)(total_q * w->hq + 1));
    scores = (double*)malloc(sizeof(double) * (size_t)(max_k + 1));
    if (!ref || !ref_lse || !out_off || !lse_off || !scores) {
        CHECK(0, "%s: host allocation failed", label);
    } else {
        for (n = 0; n < w->batch; ++n) {
            for (i = 0; i < w->len_q[n]; ++i) {
                const int64_t r = w->cu_q[n] + i;
                for (h = 0; h < w->hq; ++h) {
                    const int kh = h / (w->hq / w->hkv);
                    const int64_t slot = r * w->hq + h;
                    out_off[slot] = r * w->to->strides[0] + h * w->to->strides[1];
                    lse_off[slot] = h * w->lse_stride + r;
                    ref_lse[slot] = reference_row(
                        rp, i, w->len_q[n], w->len_k[n], w->q + r * w->tq->strides[0] + h * w->tq->strides[1],
                        w->k + w->cu_k[n] * w->k_row + kh * w->k_head, w->k_row, w->v + w->cu_k[n] * w->v_row + kh * w->v_head,
                        w->v_row, ref + slot * w->dv, scores);
                }
            }
        }
        compare_outputs(label, rp->dtype, w->dv, total_q, w->hq, ho, n_out, out_off, ref, hl, n_lse, lse_off, ref_lse);
    }
    free(ref);
    free(ref_lse);
    free(out_off);
    free(lse_off);
    free(scores);
}

/* dv_pair: v's and out's head dim where a V head dim pair (C ABI 0.10) gives one, else 0. */
static void run_varlen_case_v(fa_context_t context, void* stream, const varlen_case* c, int dv_pair, int path,
                              log_record* log) {
    enum { TAIL_ROWS = 2, LSE_PAD = 3 };
    const int dv = v_dim(c->d, dv_pair);
    fa_forward_params_t p;
    int32_t cu_q[5], cu_k[5];
    int max_q = 0, max_k = 0, n;
    int64_t total_q, total_k, n_q, n_k, n_v, n_out, n_lse, lse_stride;
    uint16_t *hq = NULL, *hk = NULL, *hv = NULL, *ho = NULL;
    float* hl = NULL;
    device_io io;
    varlen_view view;
    void *dcu_q = NULL, *dcu_k = NULL;
    fa_tensor_t tq, tk, tv, to;
    ref_problem rp;
    char label[256];

    memset(&io, 0, sizeof(io));
    cu_q[0] = cu_k[0] = 0;
    for (n = 0; n < c->batch; ++n) {
        cu_q[n + 1] = cu_q[n] + c->len_q[n];
        cu_k[n + 1] = cu_k[n] + c->len_k[n];
        max_q = c->len_q[n] > max_q ? c->len_q[n] : max_q;
        max_k = c->len_k[n] > max_k ? c->len_k[n] : max_k;
    }
    total_q = cu_q[c->batch];
    total_k = cu_k[c->batch];
    sprintf(label, "varlen %s lengths q {%d,%d,%d,%d} k {%d,%d,%d,%d} hq=%d hkv=%d d=%d causal=%d%s",
            c->dtype == FA_DTYPE_BFLOAT16 ? "bf16" : "fp16", c->len_q[0], c->len_q[1], c->len_q[2], c->len_q[3],
            c->len_k[0], c->len_k[1], c->len_k[2], c->len_k[3], c->hq, c->hkv, c->d, c->causal,
            c->alignment == FA_CAUSAL_TOP_LEFT ? "(top-left)" : "");
    append_features(label, c->window, c->window_left, c->window_right, c->softcap);
    sprintf(label + strlen(label), "%s pad=%d", c->host_copies ? " host-cu" : "", c->row_pad);
    if (dv_pair > 0) {
        sprintf(label + strlen(label), " dv=%d", dv);
    }
    if (path != FA_PATH_AUTO) {
        sprintf(label + strlen(label), " path=%s", path_name(path));
    }

    set_tensor3(&tq, NULL, c->dtype, total_q, c->hq, c->d, c->row_pad);
    set_tensor3(&tk, NULL, c->dtype, total_k, c->hkv, c->d, c->row_pad);
    set_tensor3(&tv, NULL, c->dtype, total_k, c->hkv, dv, c->row_pad);
    set_tensor3(&to, NULL, c->dtype, total_q, c->hq, dv, c->row_pad);
    n_q = total_q * tq.strides[0];
    n_k = total_k * tk.strides[0];
    n_v = total_k * tv.strides[0];
    n_out = (total_q + TAIL_ROWS) * to.strides[0]; /* rows past total_q stay poisoned */
    lse_stride = total_q + LSE_PAD;
    n_lse = c->hq * lse_stride;
    hq = (uint16_t*)malloc((size_t)n_q * 2);
    hk = (uint16_t*)malloc((size_t)n_k * 2);
    hv = (uint16_t*)malloc((size_t)n_v * 2);
    ho = (uint16_t*)malloc((size_t)n_out * 2);
    hl = (float*)malloc((size_t)n_lse * sizeof(float));
    if (!hq || !hk || !hv || !ho || !hl) {
        CHECK(0, "%s: host allocation failed", label);
        goto done;
    }
    fill_random(hq, n_q, c->dtype);
    fill_random(hk, n_k, c->dtype);
    fill_random(hv, n_v, c->dtype);
    io.q_bytes = (size_t)n_q * 2;
    io.kv_bytes = (size_t)n_k * 2;
    io.v_bytes = (size_t)n_v * 2;
    io.out_bytes = (size_t)n_out * 2;
    io.lse_bytes = (size_t)n_lse * 4;
    if (!alloc_io(&io) ||
        !expect("alloc cu_q", fa_memory_alloc(0, sizeof(cu_q), &dcu_q), FA_STATUS_SUCCESS, NULL) ||
        !expect("alloc cu_k", fa_memory_alloc(0, sizeof(cu_k), &dcu_k), FA_STATUS_SUCCESS, NULL)) {
        goto done;
    }
    upload_inputs("", &io, hq, hk, hv);
    expect("copy cu_q", fa_memcpy(dcu_q, cu_q, sizeof(cu_q)), FA_STATUS_SUCCESS, NULL);
    expect("copy cu_k", fa_memcpy(dcu_k, cu_k, sizeof(cu_k)), FA_STATUS_SUCCESS, NULL);
    expect("device synchronize", fa_device_synchronize(0), FA_STATUS_SUCCESS, NULL); /* see run_forward_case */
    poison_outputs("", &io, stream);

    bind_io(&p, &io, &tq, &tk, &tv, &to);
    set_tensor2_f32(&p.lse, io.lse, c->hq, total_q);
    p.lse.strides[0] = lse_stride;
    p.cu_seqlens_q = (const int32_t*)dcu_q;
    p.cu_seqlens_k = (const int32_t*)dcu_k;
    if (c->host_copies) {
        p.cu_seqlens_q_host = cu_q;
        p.cu_seqlens_k_host = cu_k;
    }
    p.varlen_batch = c->batch;
    p.max_seqlen_q = max_q + c->max_extra;
    p.max_seqlen_k = max_k + c->max_extra;
    p.kernel_path = path;
    set_features(&p, c->causal, c->alignment, c->window, c->window_left, c->window_right, c->softcap);
    if (!forward_or_refusal(label, context, stream, &p, path, &io, ho, hl, log)) {
        goto done;
    }
    check_forward_kernel_v(label, log, path, c->dtype, c->d, dv_pair);
    expect("stream synchronize", fa_stream_synchronize(stream), FA_STATUS_SUCCESS, NULL);
    download_outputs("", &io, ho, hl);

    rp = make_problem(c->dtype, c->d, c->hq, c->hkv, c->causal, c->alignment, c->window, c->window_left,
                      c->window_right, 0.0f, c->softcap); /* varlen cases use the default scale */
    rp.dv = dv;
    view = (varlen_view){c->batch, c->hq, c->hkv, c->d, dv, cu_q, cu_k, c->len_q, c->len_k, hq, hk, hv, &tq, &to,
                         tk.strides[0], tk.strides[1], tv.strides[0], tv.strides[1], lse_stride};
    check_varlen_outputs(label, &rp, &view, ho, n_out, hl, n_lse);

done:
    free_io(&io);
    fa_memory_free(0, dcu_q);
    fa_memory_free(0, dcu_k);
    free(hq);
    free(hk);
    free(hv);
    free(ho);
    free(hl);
}

static void run_varlen_case(fa_context_t context, void* stream, const varlen_case* c, int path, log_record* log) {
    run_varlen_case_v(context, stream, c, 0, path, log);
}

/* ---- GPU: paged K/V in the variable-length forward (C ABI 0.11) ------------------------------------------------ */

typedef struct paged_case {
    int batch;
    int len_q[4], len_k[4];
    int hq, hkv, d;
    int block_size;
    int causal, alignment;
    int window, window_left, window_right;
    float softcap;
    int dtype;
    int host_copies;
    int bad_block; /* 1: one used table entry points outside the pool (the kernels clamp it and report block_table) */
} paged_case;

/* A varlen call whose k and v are pools of blocks: each sequence's keys sit in blocks drawn at random from the pool
   (a shuffle), the rows of a sequence's last block past its length, the spare blocks and nothing else hold NaN, and
   the table's entries past a sequence's last block hold INT32_MAX, so any read of them would fault or show. Checked
   against the float64 reference over the keys as a contiguous sequence (every element of out and lse, poison kept
   around them), then fa_context_check must find no device flag. With bad_block the call must still succeed and the
   context must then report block_table. */
/* dv_pair: v's and out's head dim where a V head dim pair (C ABI 0.10) gives one, else 0. */
static void run_paged_case_v(fa_context_t context, void* stream, const paged_case* c, int dv_pair, int path,
                             log_record* log) {
    enum { SPARE_BLOCKS = 3, TAIL_ROWS = 2 };
    const int dv = v_dim(c->d, dv_pair);
    fa_forward_params_t p;
    int32_t cu_q[5], cu_k[5], first_block[5];
    int max_q = 0, max_k = 0, max_blocks = 1, num_blocks = SPARE_BLOCKS, n, i, j;
    int64_t total_q, total_k, n_q, n_k, n_v, n_pool, n_pool_v, n_out, n_lse, row_elems, row_elems_v;
    uint16_t *hq = NULL, *hk = NULL, *hv = NULL, *ho = NULL, *pk = NULL, *pv = NULL;
    int32_t *table = NULL, *perm = NULL;
    float* hl = NULL;
    device_io io;
    varlen_view view;
    void *dcu_q = NULL, *dcu_k = NULL, *dtable = NULL;
    fa_tensor_t tq, to;
    ref_problem rp;
    char label[256];

    memset(&io, 0, sizeof(io));
    cu_q[0] = cu_k[0] = 0;
    for (n = 0; n < c->batch; ++n) {
        const int blocks = (c->len_k[n] + c->block_size - 1) / c->block_size;
        cu_q[n + 1] = cu_q[n] + c->len_q[n];
        cu_k[n + 1] = cu_k[n] + c->len_k[n];
        max_q = c->len_q[n] > max_q ? c->len_q[n] : max_q;
        max_k = c->len_k[n] > max_k ? c->len_k[n] : max_k;
        first_block[n] = num_blocks - SPARE_BLOCKS;
        num_blocks += blocks;
        max_blocks = blocks + 1 > max_blocks ? blocks + 1 : max_blocks; /* a column past every last block */
    }
    total_q = cu_q[c->batch];
    total_k = cu_k[c->batch];
    sprintf(label, "paged %s block %d lengths q {%d,%d,%d,%d} k {%d,%d,%d,%d} hq=%d hkv=%d d=%d causal=%d%s%s",
            c->dtype == FA_DTYPE_BFLOAT16 ? "bf16" : "fp16", c->block_size, c->len_q[0], c->len_q[1], c->len_q[2],
            c->len_q[3], c->len_k[0], c->len_k[1], c->len_k[2], c->len_k[3], c->hq, c->hkv, c->d, c->causal,
            c->alignment == FA_CAUSAL_TOP_LEFT ? "(top-left)" : "", c->bad_block ? " bad-block" : "");
    append_features(label, c->window, c->window_left, c->window_right, c->softcap);
    if (c->host_copies) strcat(label, " host-cu");
    if (dv_pair > 0) sprintf(label + strlen(label), " dv=%d", dv);
    if (path != FA_PATH_AUTO) sprintf(label + strlen(label), " path=%s", path_name(path));

    set_tensor3(&tq, NULL, c->dtype, total_q, c->hq, c->d, 0);
    set_tensor3(&to, NULL, c->dtype, total_q, c->hq, dv, 0);
    row_elems = (int64_t)c->hkv * c->d;
    row_elems_v = (int64_t)c->hkv * dv;
    n_q = total_q * tq.strides[0];
    n_k = total_k * row_elems; /* the keys as contiguous sequences: the reference's view */
    n_v = total_k * row_elems_v;
    n_pool = (int64_t)num_blocks * c->block_size * row_elems;
    n_pool_v = (int64_t)num_blocks * c->block_size * row_elems_v;
    n_out = (total_q + TAIL_ROWS) * to.strides[0];
    n_lse = c->hq * total_q;
    hq = (uint16_t*)malloc((size_t)(n_q > 0 ? n_q : 1) * 2);
    hk = (uint16_t*)malloc((size_t)(n_k > 0 ? n_k : 1) * 2);
    hv = (uint16_t*)malloc((size_t)(n_v > 0 ? n_v : 1) * 2);
    pk = (uint16_t*)malloc((size_t)n_pool * 2);
    pv = (uint16_t*)malloc((size_t)n_pool_v * 2);
    ho = (uint16_t*)malloc((size_t)n_out * 2);
    hl = (float*)malloc((size_t)(n_lse > 0 ? n_lse : 1) * sizeof(float));
    table = (int32_t*)malloc(sizeof(int32_t) * (size_t)(c->batch * max_blocks));
    perm = (int32_t*)malloc(sizeof(int32_t) * (size_t)num_blocks);
    if (!hq || !hk || !hv || !pk || !pv || !ho || !hl || !table || !perm) {
        CHECK(0, "%s: host allocation failed", label);
        goto done;
    }
    fill_random(hq, n_q, c->dtype);
    fill_random(hk, n_k, c->dtype);
    fill_random(hv, n_v, c->dtype);
    /* A random permutation of the pool's blocks; sequence n takes perm[first_block[n] ..], the rest stay spare. */
    for (j = 0; j < num_blocks; ++j) perm[j] = j;
    for (j = num_blocks - 1; j > 0; --j) {
        const int o = (int)(uniform01() * (j + 1)) % (j + 1);
        const int32_t t = perm[j];
        perm[j] = perm[o];
        perm[o] = t;
    }
    memset(pk, 0xFF, (size_t)n_pool * 2); /* NaN in fp16 and bf16 */
    memset(pv, 0xFF, (size_t)n_pool_v * 2);
    for (n = 0; n < c->batch; ++n) {
        for (j = 0; j < max_blocks; ++j) table[n * max_blocks + j] = INT32_MAX;
        for (i = 0; i < c->len_k[n]; ++i) {
            const int page = i / c->block_size;
            const int32_t block = perm[first_block[n] + page];
            const int64_t slot = (int64_t)block * c->block_size + i % c->block_size;
            table[n * max_blocks + page] = block;
            memcpy(pk + slot * row_elems, hk + (cu_k[n] + i) * row_elems, (size_t)row_elems * 2);
            memcpy(pv + slot * row_elems_v, hv + (cu_k[n] + i) * row_elems_v, (size_t)row_elems_v * 2);
        }
    }
    if (c->bad_block) {
        for (n = 0; n < c->batch && c->len_k[n] == 0; ++n) {
        }
        table[n * max_blocks] = (n % 2) ? -3 : num_blocks + 5; /* the first page of the first non-empty sequence */
    }
    io.q_bytes = (size_t)(n_q > 0 ? n_q : 1) * 2;
    io.kv_bytes = (size_t)n_pool * 2;
    io.v_bytes = (size_t)n_pool_v * 2;
    io.out_bytes = (size_t)n_out * 2;
    io.lse_bytes = (size_t)(n_lse > 0 ? n_lse : 1) * 4;
    if (!alloc_io(&io) ||
        !expect("alloc cu_q", fa_memory_alloc(0, sizeof(cu_q), &dcu_q), FA_STATUS_SUCCESS, NULL) ||
        !expect("alloc cu_k", fa_memory_alloc(0, sizeof(cu_k), &dcu_k), FA_STATUS_SUCCESS, NULL) ||
        !expect("alloc table", fa_memory_alloc(0, sizeof(int32_t) * (size_t)(c->batch * max_blocks), &dtable),
                FA_STATUS_SUCCESS, NULL)) {
        goto done;
    }
    upload_inputs("paged ", &io, hq, pk, pv);
    expect("copy cu_q", fa_memcpy(dcu_q, cu_q, sizeof(cu_q)), FA_STATUS_SUCCESS, NULL);
    expect("copy cu_k", fa_memcpy(dcu_k, cu_k, sizeof(cu_k)), FA_STATUS_SUCCESS, NULL);
    expect("copy table", fa_memcpy(dtable, table, sizeof(int32_t) * (size_t)(c->batch * max_blocks)), FA_STATUS_SUCCESS,
           NULL);
    expect("device synchronize", fa_device_synchronize(0), FA_STATUS_SUCCESS, NULL); /* see run_forward_case */
    poison_outputs("paged ", &io, stream);

    fa_forward_params_init(&p, sizeof p);
    p.q = tq;
    p.q.data = io.q;
    p.out = to;
    p.out.data = io.out;
    set_tensor4(&p.k, io.k, c->dtype, num_blocks, c->block_size, c->hkv, c->d, 0);
    set_tensor4(&p.v, io.v, c->dtype, num_blocks, c->block_size, c->hkv, dv, 0);
    set_block_table(&p.block_table, dtable, c->batch, max_blocks);
    set_tensor2_f32(&p.lse, io.lse, c->hq, total_q);
    p.cu_seqlens_q = (const int32_t*)dcu_q;
    p.cu_seqlens_k = (const int32_t*)dcu_k;
    if (c->host_copies) {
        p.cu_seqlens_q_host = cu_q;
        p.cu_seqlens_k_host = cu_k;
    }
    p.varlen_batch = c->batch;
    p.max_seqlen_q = max_q;
    p.max_seqlen_k = max_k;
    p.kernel_path = path;
    set_features(&p, c->causal, c->alignment, c->window, c->window_left, c->window_right, c->softcap);
    if (!forward_or_refusal(label, context, stream, &p, path, &io, ho, hl, log)) {
        goto done;
    }
    check_forward_kernel_v(label, log, path, c->dtype, c->d, dv_pair);
    CHECK(strstr(log->last, "_paged_") != NULL, "%s: a paged call must run a paged kernel; the log says \"%s\"", label,
          log->last);
    expect("stream synchronize", fa_stream_synchronize(stream), FA_STATUS_SUCCESS, NULL);
    if (c->bad_block) {
        /* The clamped entry is reported (the outputs of that sequence are not valid, so they are not compared). */
        char what[300];
        sprintf(what, "%s: context check", label);
        expect(what, fa_context_check(context), FA_STATUS_DEVICE_CHECK_FAILED, "block_table entry outside [0, num_blocks)");
        sprintf(what, "%s: context check again", label);
        expect(what, fa_context_check(context), FA_STATUS_SUCCESS, NULL); /* reported once, then cleared */
        printf("  ok  %s: reported\n", label);
        goto done;
    }
    download_outputs("paged ", &io, ho, hl);
    {
        char what[300];
        sprintf(what, "%s: context check", label);
        expect(what, fa_context_check(context), FA_STATUS_SUCCESS, NULL); /* no entry was clamped */
    }

    rp = make_problem(c->dtype, c->d, c->hq, c->hkv, c->causal, c->alignment, c->window, c->window_left,
                      c->window_right, 0.0f, c->softcap);
    rp.dv = dv;
    /* the reference reads the keys as contiguous sequences (hk, hv), from which the pool was filled */
    view = (varlen_view){c->batch, c->hq, c->hkv, c->d, dv, cu_q, cu_k, c->len_q, c->len_k, hq, hk, hv, &tq, &to,
                         row_elems, c->d, row_elems_v, dv, total_q};
    check_varlen_outputs(label, &rp, &view, ho, n_out, hl, n_lse);

done:
    free_io(&io);
    fa_memory_free(0, dcu_q);
    fa_memory_free(0, dcu_k);
    fa_memory_free(0, dtable);
    free(hq);
    free(hk);
    free(hv);
    free(pk);
    free(pv);
    free(ho);
    free(hl);
    free(table);
    free(perm);
}

static void run_paged_case(fa_context_t context, void* stream, const paged_case* c, int path, log_record* log) {
    run_paged_case_v(context, stream, c, 0, path, log);
}

/* A variable-length batch with max_seqlen_q = 0 launches nothing and writes nothing. */
static void run_varlen_nothing_to_do(fa_context_t context, void* stream) {
    enum { ROWS = 5, H = 2 };
    const int d = FA_TEST_HEAD_DIM;
    int32_t cu[3] = {0, 0, 0};
    fa_forward_params_t p;
    void *dq = NULL, *dk = NULL, *dout = NULL, *dcu = NULL;
    uint16_t* ho = (uint16_t*)malloc((size_t)ROWS * H * d * 2);
    int64_t x, changed = 0;
    if (ho == NULL ||
        !expect("alloc q", fa_memory_alloc(0, (size_t)ROWS * H * d * 2, &dq), FA_STATUS_SUCCESS, NULL) ||
        !expect("alloc k", fa_memory_alloc(0, (size_t)ROWS * H * d * 2, &dk), FA_STATUS_SUCCESS, NULL) ||
        !expect("alloc out", fa_memory_alloc(0, (size_t)ROWS * H * d * 2, &dout), FA_STATUS_SUCCESS, NULL) ||
        !expect("alloc cu", fa_memory_alloc(0, sizeof(cu), &dcu), FA_STATUS_SUCCESS, NULL)) {
        goto done;
    }
    expect("copy cu", fa_memcpy(dcu, cu, sizeof(cu)), FA_STATUS_SUCCESS, NULL);
    expect("device synchronize", fa_device_synchronize(0), FA_STATUS_SUCCESS, NULL);
    expect("poison out", fa_memset_async(dout, 0xFF, (size_t)ROWS * H * d * 2, stream), FA_STATUS_SUCCESS, NULL);
    fa_forward_params_init(&p, sizeof p);
    set_tensor3(&p.q, dq, FA_DTYPE_FLOAT16, ROWS, H, d, 0);
    set_tensor3(&p.k, dk, FA_DTYPE_FLOAT16, ROWS, H, d, 0);
    set_tensor3(&p.v, dk, FA_DTYPE_FLOAT16, ROWS, H, d, 0);
    set_tensor3(&p.out, dout, FA_DTYPE_FLOAT16, ROWS, H, d, 0);
    p.cu_seqlens_q = (const int32_t*)dcu;
    p.cu_seqlens_k = (const int32_t*)dcu;
    p.cu_seqlens_q_host = cu;
    p.varlen_batch = 2;
    p.max_seqlen_q = 0;
    p.max_seqlen_k = 0;
    expect("varlen max_seqlen_q 0: nothing to do", fa_forward(context, &p, stream), FA_STATUS_SUCCESS, NULL);
    expect("stream synchronize", fa_stream_synchronize(stream), FA_STATUS_SUCCESS, NULL);
    expect("copy out back", fa_memcpy(ho, dout, (size_t)ROWS * H * d * 2), FA_STATUS_SUCCESS, NULL);
    for (x = 0; x < (int64_t)ROWS * H * d; ++x) {
        changed += ho[x] != 0xFFFFu;
    }
    CHECK(changed == 0, "varlen with max_seqlen_q 0 wrote %ld elements of out", (long)changed);
done:
    fa_memory_free(0, dq);
    fa_memory_free(0, dk);
    fa_memory_free(0, dout);
    fa_memory_free(0, dcu);
    free(ho);
}

/* ---- GPU: CUDA graph capture of fa_forward ---------------------------------------------------- */

/* Captures one fa_forward on a non-blocking stream, then replays the graph twice, each time after
   overwriting q, k and v with fresh random values, and checks each replay against the reference for
   the values it saw. */
static void run_graph_case(fa_context_t context, void* stream, int path, log_record* log) {
    const fwd_case c = {2, 70, 90, 4, 2, FA_TEST_HEAD_DIM, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 8, 1, FA_DTYPE_FLOAT16,
                        0.0f, 0, -1, -1};
    fa_forward_params_t p, bad;
    fa_tensor_t tq, tk, tv, to;
    int64_t nq, nk, no, nl, r;
    uint16_t *hq = NULL, *hk = NULL, *hv = NULL, *ho = NULL;
    float* hl = NULL;
    double *ref = NULL, *ref_lse = NULL;
    int64_t *out_off = NULL, *lse_off = NULL;
    device_io io;
    void* graph = NULL;
    char label[128];
    int replay, b, i, h;

    memset(&io, 0, sizeof(io));
    set_tensor4(&tq, NULL, c.dtype, c.b, c.sq, c.hq, c.d, c.row_pad);
    set_tensor4(&tk, NULL, c.dtype, c.b, c.sk, c.hkv, c.d, c.row_pad);
    set_tensor4(&tv, NULL, c.dtype, c.b, c.sk, c.hkv, c.d, c.row_pad);
    set_tensor4(&to, NULL, c.dtype, c.b, c.sq, c.hq, c.d, c.row_pad);
    nq = tq.shape[0] * tq.strides[0];
    nk = tk.shape[0] * tk.strides[0];
    no = to.shape[0] * to.strides[0];
    nl = (int64_t)c.b * c.hq * c.sq;
    hq = (uint16_t*)malloc((size_t)nq * 2);
    hk = (uint16_t*)malloc((size_t)nk * 2);
    hv = (uint16_t*)malloc((size_t)nk * 2);
    ho = (uint16_t*)malloc((size_t)no * 2);
    hl = (float*)malloc((size_t)nl * sizeof(float));
    ref = (double*)malloc(sizeof(double) * (size_t)nl * c.d);
    ref_lse = (double*)malloc(sizeof(double) * (size_t)nl);
    out_off = (int64_t*)malloc(sizeof(int64_t) * (size_t)nl);
    lse_off = (int64_t*)malloc(sizeof(int64_t) * (size_t)nl);
    if (!hq || !hk || !hv || !ho || !hl || !ref || !ref_lse || !out_off || !lse_off) {
        CHECK(0, "graph: host allocation failed");
        goto done;
    }
    io.q_bytes = (size_t)nq * 2;
    io.kv_bytes = (size_t)nk * 2;
    io.out_bytes = (size_t)no * 2;
    io.lse_bytes = (size_t)nl * 4;
    if (!alloc_io(&io)) {
        goto done;
    }
    bind_io(&p, &io, &tq, &tk, &tv, &to);
    set_tensor3_f32(&p.lse, io.lse, c.b, c.hq, c.sq);
    set_features(&p, c.causal, c.alignment, c.window, c.window_left, c.window_right, c.softcap);
    p.kernel_path = path;
    bad = p;
    bad.window_left = -3;
    sprintf(label, "graph: fa_forward path=%s while capturing", path_name(path));
    if (!forward_served(path)) { /* refused before anything is captured */
        sprintf(label, "graph: fa_forward path=%s", path_name(path));
        check_sm90_refusal(label, fa_forward(context, &p, stream));
        goto done;
    }

    if (!expect("graph: begin_capture", fa_stream_begin_capture(stream), FA_STATUS_SUCCESS, NULL)) {
        goto done;
    }
    /* A rejected call inside the capture touches no CUDA state, so the capture stays valid. */
    expect("graph: invalid fa_forward while capturing", fa_forward(context, &bad, stream), FA_STATUS_INVALID_ARGUMENT,
           "window_left is -3");
    expect(label, fa_forward(context, &p, stream), FA_STATUS_SUCCESS, NULL);
    check_forward_kernel(label, log, path, c.dtype, c.d); /* named when captured */
    if (!expect("graph: end_capture", fa_stream_end_capture(stream, &graph), FA_STATUS_SUCCESS, NULL)) {
        goto done;
    }
    CHECK(graph != NULL, "fa_stream_end_capture succeeded without a graph");

    for (b = 0; b < c.b; ++b) {
        for (i = 0; i < c.sq; ++i) {
            for (h = 0; h < c.hq; ++h) {
                r = ((int64_t)b * c.sq + i) * c.hq + h;
                out_off[r] = b * to.strides[0] + i * to.strides[1] + h * to.strides[2];
                lse_off[((int64_t)b * c.sq + i) * c.hq + h] = ((int64_t)b * c.hq + h) * c.sq + i;
            }
        }
    }
    for (replay = 1; replay <= 2 && graph != NULL; ++replay) {
        double* lse_by_row = ref_lse;
        fill_random(hq, nq, c.dtype); /* new inputs after the capture: the replay must read them */
        fill_random(hk, nk, c.dtype);
        fill_random(hv, nk, c.dtype);
        upload_inputs("graph: ", &io, hq, hk, hv);
        expect("graph: device synchronize", fa_device_synchronize(0), FA_STATUS_SUCCESS, NULL);
        poison_outputs("graph: ", &io, stream);
        if (!expect("graph: launch", fa_graph_launch(graph, stream), FA_STATUS_SUCCESS, NULL)) {
            break;
        }
        expect("graph: synchronize", fa_stream_synchronize(stream), FA_STATUS_SUCCESS, NULL);
        download_outputs("graph: ", &io, ho, hl);
        /* reference_forward writes out as [b, i, h, :] and lse as [b, h, i]; compare_outputs wants the
           lse of row (b, i, h) at index (b * sq + i) * hq + h, so reorder it. */
        reference_forward(&c, NULL, 0, hq, hk, hv, &tq, &tk, &tv, ref, ref_lse);
        lse_by_row = (double*)malloc(sizeof(double) * (size_t)nl);
        if (lse_by_row == NULL) {
            CHECK(0, "graph: host allocation failed");
            break;
        }
        for (b = 0; b < c.b; ++b) {
            for (i = 0; i < c.sq; ++i) {
                for (h = 0; h < c.hq; ++h) {
                    lse_by_row[((int64_t)b * c.sq + i) * c.hq + h] = ref_lse[((int64_t)b * c.hq + h) * c.sq + i];
                }
            }
        }
        sprintf(label, "graph replay %d: fwd fp16 b=%d sq=%d sk=%d hq=%d hkv=%d d=%d causal pad=%d path=%s", replay, c.b,
                c.sq, c.sk, c.hq, c.hkv, c.d, c.row_pad, path_name(path));
        compare_outputs(label, c.dtype, c.d, (int64_t)c.b * c.sq, c.hq, ho, no, out_off, ref, hl, nl, lse_off,
                        lse_by_row);
        free(lse_by_row);
    }
    expect("graph: destroy", fa_graph_destroy(graph), FA_STATUS_SUCCESS, NULL);

done:
    free_io(&io);
    free(hq);
    free(hk);
    free(hv);
    free(ho);
    free(hl);
    free(ref);
    free(ref_lse);
    free(out_off);
    free(lse_off);
}

/* Whether fa_forward_check accepts head dim d (on made-up addresses). */
static int head_dim_served(int d) {
    fa_forward_params_t p = valid_params(0);
    set_head_dim(&p, d);
    return fa_forward_check(&p, 0) == FA_STATUS_SUCCESS;
}

/* head_dim_served(d); where not, a SKIP line naming the case kind (`what`: "" or e.g. "ALiBi ") and the path (NULL:
   none), counted as skipped. */
static int served_or_skip(int d, const char* what, const char* path) {
    if (head_dim_served(d)) return 1;
    if (path != NULL) {
        printf("  SKIP %shead dim %d on path %s: not served by this build\n", what, d, path);
    } else {
        printf("  SKIP %shead dim %d: not served by this build\n", what, d);
    }
    ++g_skipped;
    return 0;
}

/* ---- GPU: an fp8 (e4m3) forward (issue 12) ------------------------------------------------------------------------ */

/* The tensors of that call: q and k (q_bytes, kv_bytes) e4m3 zeros and v (kv_bytes) e4m3 1.0 (sign 0, exponent 7 with
   bias 7, mantissa 0), filled on `stream`, and out and lse allocated; 0 when an allocation failed (the caller frees
   what was allocated either way, free_fp8_constant_call). */
static int alloc_fp8_constant_call(void* stream, size_t q_bytes, size_t kv_bytes, size_t out_bytes, size_t lse_bytes,
                                   void** q, void** k, void** v, void** o, void** lse) {
    fa_memory_alloc(0, q_bytes, q);
    fa_memory_alloc(0, kv_bytes, k);
    fa_memory_alloc(0, kv_bytes, v);
    fa_memory_alloc(0, out_bytes, o);
    fa_memory_alloc(0, lse_bytes, lse);
    if (!*q || !*k || !*v || !*o || !*lse) return 0;
    fa_memset_async(*q, 0x00, q_bytes, stream);
    fa_memset_async(*k, 0x00, kv_bytes, stream);
    fa_memset_async(*v, 0x38, kv_bytes, stream);
    return 1;
}
static void free_fp8_constant_call(void* q, void* k, void* v, void* o, void* lse) {
    fa_memory_free(0, q);
    fa_memory_free(0, k);
    fa_memory_free(0, v);
    fa_memory_free(0, o);
    fa_memory_free(0, lse);
}

/* After an fp8 forward whose q and k are zero and whose v is 1.0 with a v_descale of 2.0 (o and lse its out and lse, the
   lse [.., sq] with rows contiguous): every bf16 output is exactly 2.0 and each lse ln(the keys its row sees), sk, or
   under a bottom-right causal mask sk - sq + r + 1 for row r. */
static void check_fp8_constant_call(const char* label, void* stream, void* o, void* lse, uint16_t* ho, float* hl,
                                    size_t out_bytes, size_t lse_bytes, int sq, int sk, int causal) {
    size_t i;
    int wrong = 0;
    expect(label, fa_stream_synchronize(stream), FA_STATUS_SUCCESS, NULL);
    fa_memcpy(ho, o, out_bytes);
    fa_memcpy(hl, lse, lse_bytes);
    for (i = 0; i < out_bytes / 2; ++i) wrong += ho[i] != 0x4000; /* bf16 2.0 */
    CHECK(wrong == 0, "%s: %d of %d outputs are not 2.0 in bf16 (out[0] = 0x%04x)", label, wrong, (int)(out_bytes / 2),
          (unsigned)ho[0]);
    wrong = 0;
    for (i = 0; i < lse_bytes / 4; ++i) {
        const int seen = causal ? sk - sq + (int)(i % (size_t)sq) + 1 : sk;
        wrong += !(fabs((double)hl[i] - log((double)seen)) <= 1e-3);
    }
    CHECK(wrong == 0, "%s: %d lse values differ from ln(the keys the row sees) (lse[0] = %g, %d keys)", label, wrong,
          (double)hl[0], sk);
}

/* Where this build and device serve the fp8 forward: a call whose exact output is known (q and k zero, so every key
   weighs the same; v all 1.0 with v_descale 2.0 per sequence and head: out is 2.0 in bf16 and lse ln(seqlen_k)), and
   the descale pointers through the device-memory checks (host and freed memory refused, out untouched). Elsewhere:
   fa_forward refuses it with UNSUPPORTED, as fa_forward_check does for this compute capability, and writes nothing. */
static void test_fp8_gpu(fa_context_t context, void* stream, int cc, log_record* logs) {
    enum { B = 2, SQ = 17, SK = 33, HQ = 4, HKV = 2, POISON = 0xFF };
    const int64_t d = FA_TEST_HEAD_DIM;
    const size_t q_bytes = (size_t)B * SQ * HQ * d, kv_bytes = (size_t)B * SK * HKV * d;
    const size_t out_bytes = q_bytes * 2, lse_bytes = (size_t)B * HQ * SQ * 4;
    const float factors[B * HKV] = {2.0f, 2.0f, 2.0f, 2.0f};
    void *q = NULL, *k = NULL, *v = NULL, *o = NULL, *lse = NULL, *qd = NULL, *vd = NULL, *freed = NULL;
    void* host_block = malloc(4096);
    uint16_t* ho = (uint16_t*)malloc(out_bytes);
    float* hl = (float*)malloc(lse_bytes);
    fa_forward_params_t p;
    fa_support_query_t query = forward_query(FA_DTYPE_FLOAT8_E4M3, (int)d);
    int served, served_inputs;

    query.compute_capability = cc;
    served = fa_query_support(&query) == FA_STATUS_SUCCESS;
    printf("  fp8 (e4m3) forward on this device (cc %d): %s\n", cc, served ? "served" : fa_last_error_message());
    served_inputs = alloc_fp8_constant_call(stream, q_bytes, kv_bytes, out_bytes, lse_bytes, &q, &k, &v, &o, &lse);
    fa_memory_alloc(0, 256, &qd);
    fa_memory_alloc(0, 256, &vd);
    fa_memory_alloc(0, 256, &freed);
    fa_memory_free(0, freed);
    if (!served_inputs || !qd || !vd || host_block == NULL || ho == NULL || hl == NULL) {
        CHECK(0, "fp8 GPU test: allocation failed: %s", fa_last_error_message());
        goto done;
    }
    memset(host_block, 0, 4096);
    fa_memcpy(qd, factors, sizeof factors);
    fa_memcpy(vd, factors, sizeof factors);
    fa_memset_async(o, POISON, out_bytes, stream);
    fa_memset_async(lse, POISON, lse_bytes, stream);
    fa_stream_synchronize(stream);

    fa_forward_params_init(&p, sizeof p);
    set_tensor4(&p.q, q, FA_DTYPE_FLOAT8_E4M3, B, SQ, HQ, d, 0);
    set_tensor4(&p.k, k, FA_DTYPE_FLOAT8_E4M3, B, SK, HKV, d, 0);
    set_tensor4(&p.v, v, FA_DTYPE_FLOAT8_E4M3, B, SK, HKV, d, 0);
    set_tensor4(&p.out, o, FA_DTYPE_BFLOAT16, B, SQ, HQ, d, 0);
    set_tensor3_f32(&p.lse, lse, B, HQ, SQ);
    set_descale(&p.q_descale, qd, B, HKV, 0, 0);     /* one factor for q (broadcast) */
    set_descale(&p.v_descale, vd, B, HKV, HKV, 1);   /* one per (sequence, KV head) */

    if (!served) {
        expect("fa_forward fp8 where not served", fa_forward(context, &p, stream), FA_STATUS_UNSUPPORTED,
               "fp8 (e4m3) is served by the sm90 forward only");
        expect("fa_forward_check agrees", fa_forward_check(&p, cc), FA_STATUS_UNSUPPORTED, "fp8 (e4m3)");
        fa_stream_synchronize(stream);
        fa_memcpy(ho, o, out_bytes);
        CHECK(count_unpoisoned(ho, out_bytes) == 0, "a refused fp8 forward wrote %lld bytes of out",
              (long long)count_unpoisoned(ho, out_bytes));
        goto done;
    }
    if (expect("fa_forward fp8 (q, k zero; v 1.0 x v_descale 2.0)", fa_forward(context, &p, stream), FA_STATUS_SUCCESS,
               NULL)) {
        CHECK(strncmp(logs->last, "fa_forward: ", 12) == 0 && strstr(logs->last, " e4m3 descale(q(per tensor),v)") != NULL,
              "fp8 forward: the debug log line \"%s\" must name the dtype e4m3 and the descales", logs->last);
        check_fp8_constant_call("fp8 forward", stream, o, lse, ho, hl, out_bytes, lse_bytes, SQ, SK, 0);
    }
    /* the descale pointers go through the device-memory checks; a refusal writes nothing */
    fa_memset_async(o, POISON, out_bytes, stream);
    fa_stream_synchronize(stream);
    p.q_descale.data = host_block;
    expect("fp8 q_descale in host memory", fa_forward(context, &p, stream), FA_STATUS_INVALID_ARGUMENT,
           "q_descale.data");
    p.q_descale.data = qd;
    p.k_descale = p.v_descale;
    p.k_descale.data = freed;
    expect("fp8 k_descale in freed memory", fa_forward(context, &p, stream), FA_STATUS_INVALID_ARGUMENT,
           "k_descale.data");
    fa_stream_synchronize(stream);
    fa_memcpy(ho, o, out_bytes);
    CHECK(count_unpoisoned(ho, out_bytes) == 0, "refused fp8 forwards wrote %lld bytes of out",
          (long long)count_unpoisoned(ho, out_bytes));
done:
    free_fp8_constant_call(q, k, v, o, lse);
    fa_memory_free(0, qd);
    fa_memory_free(0, vd);
    free(host_block);
    free(ho);
    free(hl);
}

static int is_wide_fp8_kernel(const char* name) {
    return strncmp(name, "sm90_fwd_e4m3_hdim128_", 22) == 0 && strstr(name, "x224_") != NULL;
}

/* Whether the fp8 forward runs a head-dim-128 call without mask or softcap over sk keys on its 224-key kernel:
   sm90/fwd_launch.cuh's fwd_fp8_wide_pays with the default FA_SM90_FWD_FP8_WIDE_MIN_KEYS (1536 keys), where the keys
   its blocks span are at most 1.04x those of 128-key blocks. */
static int fp8_wide_expected(int sk) {
    const long long wide = (sk + 223) / 224 * 224LL, base = (sk + 127) / 128 * 128LL;
    return sk >= 1536 && wide * 100 <= base * 104;
}

/* The fp8 forward's 224-key head-dim-128 kernel: where the build lists it, an fp8 call without mask or softcap at a
   head dim up to 128 runs it where fp8_wide_expected says so and the 128-key kernel elsewhere, and a causal call
   never; each call's output is exactly 2.0 (q and k zero, v 1.0 times its descale 2.0) and its lse ln(keys seen), so
   a key block past the sequence (3000 = 13 x 224 + 88) or a key counted twice would show. */
static void test_fp8_wide_choice(fa_context_t context, void* stream, int cc, log_record* logs) {
    enum { SQ = 70, HQ = 2, MAXK = 3000, POISON = 0xFF };
    static const struct {
        int sk, causal;
    } calls[] = {{1535, 0}, {2048, 0}, {MAXK, 0}, {MAXK, 1}};
    const int64_t d = FA_TEST_HEAD_DIM;
    const size_t q_bytes = (size_t)SQ * HQ * d, kv_bytes = (size_t)MAXK * d, out_bytes = q_bytes * 2;
    const size_t lse_bytes = (size_t)HQ * SQ * 4;
    const float factor = 2.0f;
    const int listed = build_lists_kernel(is_wide_fp8_kernel);
    void *q = NULL, *k = NULL, *v = NULL, *o = NULL, *lse = NULL, *vd = NULL;
    uint16_t* ho = (uint16_t*)malloc(out_bytes);
    float* hl = (float*)malloc(lse_bytes);
    fa_support_query_t query = forward_query(FA_DTYPE_FLOAT8_E4M3, (int)d);
    fa_forward_params_t p;
    char label[96];
    size_t c;
    int inputs;

    query.compute_capability = cc;
    if (fa_query_support(&query) != FA_STATUS_SUCCESS) {
        CHECK(!listed || cc != 90, "the build lists the 224-key fp8 kernel but does not serve fp8 on cc 90");
        goto done;
    }
    printf("  fp8 224-key head-dim-128 kernel: %s\n", listed ? "listed" : "not listed (no head dim 128 or not compiled)");
    inputs = alloc_fp8_constant_call(stream, q_bytes, kv_bytes, out_bytes, lse_bytes, &q, &k, &v, &o, &lse);
    fa_memory_alloc(0, 256, &vd);
    if (!inputs || !vd || ho == NULL || hl == NULL) {
        CHECK(0, "fp8 wide-kernel test: allocation failed: %s", fa_last_error_message());
        goto done;
    }
    fa_memcpy(vd, &factor, sizeof factor);
    for (c = 0; c < sizeof calls / sizeof calls[0]; ++c) {
        const int sk = calls[c].sk, expect_wide = listed && d <= 128 && !calls[c].causal && fp8_wide_expected(sk);
        sprintf(label, "fp8 forward, %d keys%s", sk, calls[c].causal ? ", causal" : "");
        fa_memset_async(o, POISON, out_bytes, stream);
        fa_memset_async(lse, POISON, lse_bytes, stream);
        fa_forward_params_init(&p, sizeof p);
        set_tensor4(&p.q, q, FA_DTYPE_FLOAT8_E4M3, 1, SQ, HQ, d, 0);
        set_tensor4(&p.k, k, FA_DTYPE_FLOAT8_E4M3, 1, sk, 1, d, 0);
        set_tensor4(&p.v, v, FA_DTYPE_FLOAT8_E4M3, 1, sk, 1, d, 0);
        set_tensor4(&p.out, o, FA_DTYPE_BFLOAT16, 1, SQ, HQ, d, 0);
        set_tensor3_f32(&p.lse, lse, 1, HQ, SQ);
        set_descale(&p.v_descale, vd, 1, 1, 0, 0);
        p.causal = calls[c].causal;
        if (!expect(label, fa_forward(context, &p, stream), FA_STATUS_SUCCESS, NULL)) continue;
        CHECK((strstr(logs->last, "x224_") != NULL) == expect_wide, "%s: the %s kernel must run; the log says \"%s\"",
              label, expect_wide ? "224-key" : "build's", logs->last);
        check_fp8_constant_call(label, stream, o, lse, ho, hl, out_bytes, lse_bytes, SQ, sk, calls[c].causal);
    }
done:
    free_fp8_constant_call(q, k, v, o, lse);
    fa_memory_free(0, vd);
    free(ho);
    free(hl);
}

/* ---- device pointers (issue 16): host, freed and too-small memory refused before any launch ------------------ */

enum { DP_HOST, DP_FREED, DP_SMALL, DP_KINDS };
static const char* const g_dp_kind[DP_KINDS] = {"host memory", "freed memory", "a too-small allocation"};
#define DP_SMALL_BYTES 4096
#define DP_POISON 0x5A

typedef struct {
    void* host;   /* malloc'd, rounded up to 256 bytes */
    void* freed;  /* fa_memory_alloc'd, then freed */
    void* small;  /* DP_SMALL_BYTES of device memory */
} bad_memory;

/* The bad pointer of `kind` for an argument whose good pointer needs `bytes` (>= DP_SMALL_BYTES for DP_SMALL to
   be too small); `tail` bytes from the end of the small block (int arrays: a pointer near its end). */
static void* bad_pointer(const bad_memory* m, int kind, size_t tail) {
    if (kind == DP_HOST) return m->host;
    if (kind == DP_FREED) return m->freed;
    return tail > 0 ? (unsigned char*)m->small + DP_SMALL_BYTES - tail : m->small;
}

/* Poisons `n` device buffers (bytes each) and waits. */
static void poison(void* stream, void* const* buffers, const size_t* bytes, int n) {
    int i;
    for (i = 0; i < n; ++i) fa_memset_async(buffers[i], DP_POISON, bytes[i], stream);
    fa_stream_synchronize(stream);
}

/* 1 when every byte of the n buffers is still DP_POISON. */
static int untouched(void* const* buffers, const size_t* bytes, int n) {
    int i;
    size_t j;
    for (i = 0; i < n; ++i) {
        unsigned char* h = (unsigned char*)malloc(bytes[i]);
        int same = h != NULL && fa_memcpy(h, buffers[i], bytes[i]) == FA_STATUS_SUCCESS;
        for (j = 0; same && j < bytes[i]; ++j) same = h[j] == DP_POISON;
        free(h);
        if (!same) return 0;
    }
    return 1;
}

static void test_device_pointers(fa_context_t context, void* stream) {
    enum { B = 2, SQ = 17, SK = 33, HQ = 4, HKV = 2, VBATCH = 2 };
    const int64_t d = FA_TEST_HEAD_DIM;
    const size_t q_bytes = (size_t)B * SQ * HQ * d * 2, k_bytes = (size_t)B * SK * HKV * d * 2;
    const size_t lse_bytes = (size_t)B * HQ * SQ * 4;
    const int32_t cu_q[VBATCH + 1] = {0, 10, 17}, cu_k[VBATCH + 1] = {0, 20, 33};
    void *q = NULL, *k = NULL, *v = NULL, *o = NULL, *lse = NULL, *dout = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
    void *cuq = NULL, *cuk = NULL, *ws = NULL, *host_block = NULL;
    bad_memory m;
    fa_forward_params_t base, p;
    fa_backward_params_t bbase, bp;
    size_t ws_bytes = 0;
    int kind, arg;
    char label[128], needle[64];

    memset(&m, 0, sizeof m);
    host_block = malloc(1 << 20);
    m.host = (void*)(((uintptr_t)host_block + 255) & ~(uintptr_t)255);
    fa_memory_alloc(0, q_bytes, &q);
    fa_memory_alloc(0, k_bytes, &k);
    fa_memory_alloc(0, k_bytes, &v);
    fa_memory_alloc(0, q_bytes, &o);
    fa_memory_alloc(0, lse_bytes, &lse);
    fa_memory_alloc(0, q_bytes, &dout);
    fa_memory_alloc(0, q_bytes, &dq);
    fa_memory_alloc(0, k_bytes, &dk);
    fa_memory_alloc(0, k_bytes, &dv);
    fa_memory_alloc(0, 256, &cuq);
    fa_memory_alloc(0, 256, &cuk);
    /* The workspace before the small block: a too-small dq reaches past the small block's end, and must not reach
       into the workspace (the host's overlap check would refuse that first, with another message). Both come
       before the freed block, so that neither can take the freed address. */
    fa_memory_alloc(0, 1 << 20, &ws);
    fa_memory_alloc(0, DP_SMALL_BYTES, &m.small);
    fa_memory_alloc(0, 1 << 20, &m.freed);
    fa_memory_free(0, m.freed);
    if (host_block == NULL || !q || !k || !v || !o || !lse || !dout || !dq || !dk || !dv || !cuq || !cuk || !m.small) {
        CHECK(0, "device pointers: allocation failed: %s", fa_last_error_message());
        goto done;
    }
    CHECK(q_bytes > DP_SMALL_BYTES, "q must not fit the small block");
    memset(host_block, 0, 1 << 20);
    fa_memset_async(q, 0, q_bytes, stream);
    fa_memset_async(k, 0, k_bytes, stream);
    fa_memset_async(v, 0, k_bytes, stream);
    fa_memset_async(dout, 0, q_bytes, stream);
    fa_memcpy(cuq, cu_q, sizeof cu_q);
    fa_memcpy(cuk, cu_k, sizeof cu_k);

    fa_forward_params_init(&base, sizeof base);
    set_tensor4(&base.q, q, FA_DTYPE_FLOAT16, B, SQ, HQ, d, 0);
    set_tensor4(&base.k, k, FA_DTYPE_FLOAT16, B, SK, HKV, d, 0);
    set_tensor4(&base.v, v, FA_DTYPE_FLOAT16, B, SK, HKV, d, 0);
    set_tensor4(&base.out, o, FA_DTYPE_FLOAT16, B, SQ, HQ, d, 0);
    set_tensor3_f32(&base.lse, lse, B, HQ, SQ);
    base.causal = 1;
    expect("device pointers: valid forward", fa_forward(context, &base, stream), FA_STATUS_SUCCESS, NULL);

    /* The forward: q (read), out (written), cu_seqlens_q of a variable-length call. */
    for (arg = 0; arg < 3; ++arg) {
        for (kind = 0; kind < DP_KINDS; ++kind) {
            void* outs[2];
            size_t out_bytes[2];
            const char* field = arg == 0 ? "q.data" : arg == 1 ? "out.data" : "cu_seqlens_q";
            p = base;
            if (arg == 0) p.q.data = bad_pointer(&m, kind, 0);
            if (arg == 1) p.out.data = bad_pointer(&m, kind, 0);
            if (arg == 2) {
                /* [total, heads, head_dim]: the first 17 rows of q and out, as one variable-length batch */
                set_tensor3(&p.q, q, FA_DTYPE_FLOAT16, SQ, HQ, d, 0);
                set_tensor3(&p.k, k, FA_DTYPE_FLOAT16, SK, HKV, d, 0);
                set_tensor3(&p.v, v, FA_DTYPE_FLOAT16, SK, HKV, d, 0);
                set_tensor3(&p.out, o, FA_DTYPE_FLOAT16, SQ, HQ, d, 0);
                memset(&p.lse, 0, sizeof p.lse);
                p.varlen_batch = VBATCH;
                p.max_seqlen_q = SQ;
                p.max_seqlen_k = SK;
                p.cu_seqlens_k = (const int32_t*)cuk;
                p.cu_seqlens_q = (const int32_t*)bad_pointer(&m, kind, 4);  /* small: 4 bytes of its 12 */
            }
            outs[0] = arg == 1 ? lse : o;  /* a bad out.data is not read back */
            out_bytes[0] = arg == 1 ? lse_bytes : q_bytes;
            outs[1] = lse;
            out_bytes[1] = lse_bytes;
            poison(stream, outs, out_bytes, arg == 1 ? 1 : 2);
            sprintf(label, "forward, %s in %s", field, g_dp_kind[kind]);
            sprintf(needle, "%s (0x", field);
            expect(label, fa_forward(context, &p, stream), FA_STATUS_INVALID_ARGUMENT, needle);
            CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "%s: the stream failed after the refusal: %s", label,
                  fa_last_error_message());
            CHECK(untouched(outs, out_bytes, arg == 1 ? 1 : 2), "%s: the outputs were written", label);
            sprintf(label, "forward after %s in %s", field, g_dp_kind[kind]);
            expect(label, fa_forward(context, &base, stream), FA_STATUS_SUCCESS, NULL);
            CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "%s: %s", label, fa_last_error_message());
        }
    }
    /* Another device's memory, where there are two. */
    {
        int32_t count = 0;
        void* other = NULL;
        if (fa_device_count(&count) == FA_STATUS_SUCCESS && count > 1 &&
            fa_memory_alloc(1, q_bytes, &other) == FA_STATUS_SUCCESS) {
            p = base;
            p.q.data = other;
            expect("forward, q.data on device 1", fa_forward(context, &p, stream), FA_STATUS_INVALID_ARGUMENT,
                   "q.data (0x");
            fa_memory_free(1, other);
        }
    }

    /* The backward: dq (written) and a caller workspace. */
    fa_backward_params_init(&bbase, sizeof bbase);
    bbase.q = base.q;
    bbase.k = base.k;
    bbase.v = base.v;
    bbase.out = base.out;
    bbase.lse = base.lse;
    bbase.causal = 1;
    bbase.dout = base.out;
    bbase.dout.data = dout;
    bbase.dq = base.q;
    bbase.dq.data = dq;
    bbase.dk = base.k;
    bbase.dk.data = dk;
    bbase.dv = base.v;
    bbase.dv.data = dv;
    if (expect("device pointers: backward workspace size", fa_backward_workspace_size(context, &bbase, &ws_bytes),
               FA_STATUS_SUCCESS, NULL) &&
        ws != NULL && ws_bytes <= (size_t)1 << 20) {
        bbase.workspace = ws;
        bbase.workspace_size = ws_bytes;
        CHECK(ws_bytes > DP_SMALL_BYTES, "the backward workspace (%zu bytes) must not fit the small block", ws_bytes);
        expect("device pointers: valid backward", fa_backward(context, &bbase, stream), FA_STATUS_SUCCESS, NULL);
        for (arg = 0; arg < 2; ++arg) {
            for (kind = 0; kind < DP_KINDS; ++kind) {
                void* outs[3];
                size_t out_bytes[3];
                const char* field = arg == 0 ? "dq.data" : "workspace";
                bp = bbase;
                if (arg == 0) bp.dq.data = bad_pointer(&m, kind, 0);
                else bp.workspace = bad_pointer(&m, kind, 0);
                outs[0] = dk;
                outs[1] = dv;
                outs[2] = dq;
                out_bytes[0] = out_bytes[1] = k_bytes;
                out_bytes[2] = q_bytes;
                poison(stream, outs, out_bytes, 3);
                sprintf(label, "backward, %s in %s", field, g_dp_kind[kind]);
                sprintf(needle, "%s (0x", field);
                expect(label, fa_backward(context, &bp, stream), FA_STATUS_INVALID_ARGUMENT, needle);
                CHECK(untouched(outs, out_bytes, 3), "%s: the gradients were written", label);
                sprintf(label, "backward after %s in %s", field, g_dp_kind[kind]);
                expect(label, fa_backward(context, &bbase, stream), FA_STATUS_SUCCESS, NULL);
                CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "%s: %s", label, fa_last_error_message());
            }
        }
    }
done:
    fa_memory_free(0, q);
    fa_memory_free(0, k);
    fa_memory_free(0, v);
    fa_memory_free(0, o);
    fa_memory_free(0, lse);
    fa_memory_free(0, dout);
    fa_memory_free(0, dq);
    fa_memory_free(0, dk);
    fa_memory_free(0, dv);
    fa_memory_free(0, cuq);
    fa_memory_free(0, cuk);
    fa_memory_free(0, ws);
    fa_memory_free(0, m.small);
    free(host_block);
}

/* FlashAttention-3's V head dim pairs (C ABI 0.10) on each forward path: FA_PATH_SM80 runs the pair's sm80 kernels
   on every GPU; FA_PATH_SM90 the pair's sm90 kernels ((192, 128) as the square kernels; (64, 512) in two CTAs of 256
   output columns per row block, chunk 0 writing the lse) on compute capability 9.0 in a build with sm_90a code, and is
   refused elsewhere; AUTO takes sm90 where it serves. Against the float64 reference over dv columns: both causal
   alignments with Sq < Sk and Sq > Sk (rows that see no key: zeros, lse +inf), windows (one that slides off the keys),
   softcap, a custom scale, GQA and MQA, Sq = 1, rows padded, no lse, ALiBi (the causal form; the distance form with
   a window); partial row and key tiles throughout; and, on the named paths (AUTO runs one of theirs), varlen with empty sequences and paged K/V (block sizes 128 and 256, a
   sequence's last block partly past its end). A pair whose head dim the build lacks is skipped. */
static void test_v_pair_gpu(fa_context_t context, void* stream, log_record* log) {
    static const int pairs[2][2] = {{192, 128}, {64, 512}};
    const int paths[3] = {FA_PATH_AUTO, FA_PATH_SM80, FA_PATH_SM90};
    const int F16 = FA_DTYPE_FLOAT16, BF16 = FA_DTYPE_BFLOAT16;
    int pi, i, n;
    for (pi = 0; pi < 2; ++pi) {
        const int d = pairs[pi][0], dv = pairs[pi][1];
        const fwd_case cases[] = {
            /* b sq  sk  hq hkv d  causal alignment           scale pad lse dtype softcap window left right */
            {2, 77, 150, 4, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1},
            {1, 150, 77, 4, 4, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1}, /* rows 0..72 see no key */
            {1, 77, 150, 8, 1, d, 1, FA_CAUSAL_TOP_LEFT, 0.3f, 8, 1, F16, 0.0f, 0, -1, -1},    /* MQA, padded rows */
            {2, 150, 77, 4, 2, d, 1, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1},
            {1, 130, 200, 4, 2, d, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 20.0f, 1, 32, 8}, /* window, softcap */
            {2, 1, 300, 8, 2, d, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1},    /* one query row */
            {1, 300, 77, 8, 2, d, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 1, 3, 3},     /* empty rows */
            {1, 129, 129, 4, 4, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 16, 0, BF16, 0.0f, 0, -1, -1}, /* no lse */
        };
        const alibi_case alibi_cases[] = {
            {{2, 77, 150, 4, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1}, {2, 0.5f}},
            {{1, 130, 200, 4, 1, d, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, BF16, 0.0f, 1, 40, 30}, {1, 0.3f}},
        };
        const varlen_case varlen_cases[] = {
            {4, {17, 0, 1, 200}, {33, 5, 0, 160}, 8, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0, -1, -1, 0.0f, BF16, 8, 1, 0},
            {4, {1, 0, 130, 64}, {1, 9, 70, 0}, 4, 1, d, 1, FA_CAUSAL_TOP_LEFT, 1, 24, -1, 10.0f, F16, 0, 1, 3},
        };
        const paged_case paged_cases[] = {
            {4, {17, 0, 1, 200}, {300, 5, 1, 290}, 8, 2, d, 128, 1, FA_CAUSAL_BOTTOM_RIGHT, 0, -1, -1, 0.0f, BF16, 1, 0},
            {3, {77, 130, 9, 0}, {129, 40, 600, 0}, 4, 1, d, 256, 1, FA_CAUSAL_TOP_LEFT, 1, 48, -1, 10.0f, F16, 0, 0},
        };
        if (!lists_pair_kernel("fwd", d, dv)) {
            printf("  SKIP V head dim pair (%d, %d): this build lacks head dim %d\n", d, dv, d);
            ++g_skipped;
            continue;
        }
        for (i = 0; i < 3; ++i) {
            for (n = 0; n < (int)(sizeof(cases) / sizeof(cases[0])); ++n) {
                run_forward_case_v(context, stream, &cases[n], dv, paths[i], log);
            }
            for (n = 0; n < (int)(sizeof(alibi_cases) / sizeof(alibi_cases[0])); ++n) {
                run_forward_case_a(context, stream, &alibi_cases[n].c, &alibi_cases[n].alibi, dv, paths[i], log);
            }
            if (paths[i] == FA_PATH_AUTO) {
                continue; /* AUTO runs what one of the named paths runs: its kernel choice is checked above */
            }
            for (n = 0; n < (int)(sizeof(varlen_cases) / sizeof(varlen_cases[0])); ++n) {
                run_varlen_case_v(context, stream, &varlen_cases[n], dv, paths[i], log);
            }
            for (n = 0; n < (int)(sizeof(paged_cases) / sizeof(paged_cases[0])); ++n) {
                run_paged_case_v(context, stream, &paged_cases[n], dv, paths[i], log);
            }
        }
    }
}

static void test_gpu(int32_t count) {
    fa_device_properties_t props;
    fa_context_t context = NULL, bad = NULL;
    void* stream = NULL;
    void *start = NULL, *stop = NULL, *async_memory = NULL;
    int32_t device = -1;
    float ms = -1.0f;
    log_record log;
    const int d = FA_TEST_HEAD_DIM;
    int n, i;
    const int F16 = FA_DTYPE_FLOAT16, BF16 = FA_DTYPE_BFLOAT16;
    const fwd_case cases[] = {
        /* b sq  sk  hq hkv d  causal alignment           scale pad lse dtype softcap window left right */
        {2, 17, 33, 6, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1},
        {2, 33, 17, 6, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1}, /* first 16 rows see no key */
        {1, 33, 33, 4, 1, d, 1, FA_CAUSAL_TOP_LEFT, 0.3f, 8, 1, F16, 0.0f, 0, -1, -1},     /* MQA, padded rows */
        {2, 17, 33, 6, 3, d, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 16, 0, F16, 0.0f, 0, -1, -1},
        {1, 33, 17, 8, 2, d, 1, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1},
        {2, 17, 33, 6, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 8, 1, BF16, 0.0f, 0, -1, -1},
        {1, 33, 17, 4, 4, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1},
    };
    /* Sliding windows and softcap (window = 1 uses window_left / window_right). */
    const fwd_case feature_cases[] = {
        /* b sq  sk  hq hkv d  causal alignment           scale pad lse dtype softcap window left right */
        {2, 65, 97, 4, 2, d, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 1, 16, 8},
        {1, 97, 65, 4, 1, d, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 8, 1, BF16, 0.0f, 1, 0, 0},    /* diagonal only */
        {2, 80, 80, 6, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 1, 20, -1}, /* causal + left */
        {2, 65, 97, 4, 2, d, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 15.0f, 0, -1, -1}, /* softcap only */
        {1, 70, 130, 4, 2, d, 1, FA_CAUSAL_TOP_LEFT, 0.5f, 8, 1, BF16, 5.0f, 0, -1, -1},  /* small cap bites */
        {2, 65, 97, 4, 2, d, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 30.0f, 1, 24, 4},
        {1, 97, 33, 4, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 1, 2147483647, 2147483647},
        {1, 40, 60, 2, 1, d, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, F16, 0.0f, 1, -1, 5},     /* right only */
    };
    /* Head dims without their own kernel run a larger one (columns zero-filled); tried when served. */
    const fwd_case padded_cases[] = {
        {1, 17, 33, 4, 2, 40, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1},
        {1, 33, 17, 4, 2, 72, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 8, 1, BF16, 0.0f, 0, -1, -1},
        {2, 45, 70, 4, 2, 80, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 1, 32, -1},
        {1, 45, 70, 2, 1, 200, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 8, 1, BF16, 20.0f, 0, -1, -1},
    };
    /* Variable-length batches: an empty sequence, one of a single query, one longer than a tile. */
    const varlen_case varlen_cases[] = {
        /* batch, lengths q, lengths k, hq hkv d, causal alignment, window left right, softcap, dtype, pad,
           host copies, max_extra */
        {4, {17, 0, 1, 300}, {33, 5, 0, 260}, 6, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0, -1, -1, 0.0f, F16, 8, 1, 0},
        {4, {17, 0, 1, 300}, {17, 3, 1, 300}, 4, 4, d, 0, FA_CAUSAL_TOP_LEFT, 1, 24, 8, 20.0f, BF16, 0, 0, 5},
        {4, {17, 0, 1, 300}, {40, 0, 7, 128}, 4, 1, d, 1, FA_CAUSAL_TOP_LEFT, 1, 48, -1, 0.0f, F16, 0, 1, 0},
    };
    /* Head dim 64 calls that the sm90 path runs on its 192-row tile (sm90/fwd_launch.cuh, fwd_d64_wide_pays: at least
       FA_SM90_FWD_D64_WIDE_MIN_KEYS (2048) query rows and keys, no causal mask or window, and enough tiles that its
       fewer persistent rounds pay for the larger tile); the small cases above never reach it. 4 x 32 heads of 4096
       rows (22 192-row tiles each: several per CTA, so the P, O and Q tiles and the mbarrier phases turn over), rows
       and keys that are not multiples of the blocks, softcap, padded rows, GQA; every 97th query row and the last
       against the float64 reference (g_row_sample); a call of two heads (one persistent round either way: the
       128-row tile); and the threshold itself, 2048 rows and keys over 4 x 32 heads (the 192-row tile) against 2047
       query rows (the 128-row one). A variable-length batch with empty sequences (every row checked). With sm_90a code on compute
       capability 9.0 the log must name the tile wide_expected gives. */
    const fwd_case wide_cases[] = {
        {4, 4096, 4096, 32, 8, 64, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1},
        {4, 4100, 4200, 32, 8, 64, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 8, 1, F16, 30.0f, 0, -1, -1},
        {1, 4096, 4096, 2, 1, 64, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1}, /* a round: 128 rows */
        {4, 2048, 2048, 32, 8, 64, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1},  /* the threshold */
        {4, 2047, 2048, 32, 8, 64, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1},    /* below: 128 rows */
    };
    /* Head dim 256 causal calls whose sm90 grid is not a plain stride (sm90/fwd_launch.cuh; on a GPU of 40-60 MB of L2,
       as the H100 and H200): 20 heads of 1024 rows hold 160 tiles, more than the SMs, in groups of at most 16 heads
       (128 tiles), so the persistent walk zigzags (FA_SM90_FWD_ZIGZAG=2); 3 heads of 8192 rows have one head per group,
       so they run one CTA per tile (FA_SM90_FWD_PER_TILE_ONE_HEAD). Every 97th query row and the last against the
       float64 reference. Neither choice shows in the log: these check the outputs the two walks give. */
    const fwd_case sched_cases[] = {
        {1, 1024, 1024, 20, 4, 256, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1},
        {1, 8192, 8192, 3, 1, 256, 1, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1},
    };
    /* Unmasked calls of head dims 128 and 256 with an even count of 128-row blocks: they run 2-CTA clusters that share
       each K/V block by TMA multicast (sm90/fwd_launch.cuh; FA_SM90_FWD_CLUSTER: by default head dim 128's, with 2
       head dim 256's too), elsewhere the plain kernel. One pair of row blocks a head (batch 2, GQA); MQA with padded rows, a custom scale,
       no lse and a last row block partly past the rows; and grids with more pairs than clusters fit (16 and 8 row
       blocks over 32 and 24 heads: every cluster walks several pairs), with softcap and keys that end inside a block.
       Every 97th query row and the last against the float64 reference for the long ones. */
    const fwd_case pair_cases[] = {
        {2, 256, 200, 4, 2, 128, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1},
        {1, 500, 333, 6, 1, 256, 0, FA_CAUSAL_TOP_LEFT, 0.3f, 8, 0, F16, 0.0f, 0, -1, -1},
        {2, 2048, 700, 16, 4, 128, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 25.0f, 0, -1, -1},
        {1, 1024, 1030, 24, 8, 256, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1},
    };
    const varlen_case wide_varlen_cases[] = {
        {4, {4096, 0, 3, 4500}, {4096, 10, 0, 4200}, 2, 1, 64, 0, FA_CAUSAL_BOTTOM_RIGHT, 0, -1, -1, 0.0f, BF16, 0, 1, 0},
    };
    /* Each kernel path by name: FA_PATH_SM80 everywhere (the portable kernels stay checked on Hopper, where AUTO
       takes the sm90 ones); FA_PATH_SM90 runs the sm90 forward on compute capability 9.0 in a build with sm_90a code
       and is refused (UNSUPPORTED, nothing written) elsewhere. Every sm90 kernel class (64, 128, 192, 256) and head dims
       that run a larger one (8, 40, 96, 200); both causal alignments with Sq < Sk and Sq > Sk (rows that see no key:
       zeros, lse +inf); windows; softcap; GQA 1, 2, 4, 8, 16 and 32; rows 3 * H * D apart, as in a packed QKV
       buffer. A head dim the build does not serve is skipped. */
    const int paths[2] = {FA_PATH_SM80, FA_PATH_SM90};
    const fwd_case path_cases[] = {
        /* b sq  sk  hq hkv d  causal alignment           scale pad lse dtype softcap window left right */
        {2, 77, 150, 4, 4, 64, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1},
        {2, 150, 77, 4, 2, 64, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1}, /* rows 0..72 see no key */
        {1, 77, 150, 8, 1, 128, 1, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1},
        {1, 150, 77, 8, 2, 128, 1, FA_CAUSAL_TOP_LEFT, 0.3f, 8, 1, BF16, 0.0f, 0, -1, -1},
        {1, 65, 130, 4, 2, 256, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 8, 1, F16, 0.0f, 1, 32, 8},
        {1, 130, 65, 4, 4, 256, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1}, /* rows 0..64 see no key */
        {1, 100, 100, 32, 1, 64, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 20.0f, 0, -1, -1},  /* MQA, softcap */
        {1, 96, 160, 16, 1, 128, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 1, 48, -1},   /* causal window */
        {1, 45, 70, 4, 2, 40, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1},
        {1, 70, 45, 4, 2, 200, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 8, 1, BF16, 15.0f, 1, 10, 10}, /* rows 55.. see no key */
        {1, 33, 91, 8, 4, 96, 1, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1},
        {1, 33, 17, 2, 2, 8, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, BF16, 0.0f, 1, 3, 3},
        {1, 150, 77, 8, 2, 192, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1}, /* the 192 class */
        {2, 77, 150, 4, 1, 136, 1, FA_CAUSAL_TOP_LEFT, 0.0f, 8, 1, F16, 25.0f, 0, -1, -1},     /* 136 runs it too */
        {2, 90, 90, 4, 4, 128, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 2 * 4 * 128, 1, F16, 0.0f, 0, -1, -1}, /* packed QKV */
    };
    /* Paged K/V (0.11): block sizes 128 and 256; an empty sequence, one key, a block boundary exactly (256), several
       blocks; causal both ways, windows, softcap, GQA; and a table entry outside the pool, reported. */
    const paged_case paged_cases[] = {
        /* batch, lengths q, lengths k, hq hkv d, block, causal alignment, window left right, softcap, dtype, host, bad */
        {4, {17, 0, 1, 300}, {300, 5, 1, 513}, 8, 2, 128, 128, 1, FA_CAUSAL_BOTTOM_RIGHT, 0, -1, -1, 0.0f, BF16, 1, 0},
        {4, {130, 1, 3, 64}, {256, 1, 0, 200}, 4, 4, 64, 256, 0, FA_CAUSAL_BOTTOM_RIGHT, 0, -1, -1, 0.0f, F16, 0, 0},
        {3, {77, 200, 9, 0}, {129, 40, 640, 0}, 4, 1, 256, 128, 1, FA_CAUSAL_TOP_LEFT, 1, 48, -1, 10.0f, BF16, 1, 0},
        {2, {64, 100, 0, 0}, {384, 90, 0, 0}, 8, 2, 192, 128, 0, FA_CAUSAL_BOTTOM_RIGHT, 1, 32, 16, 0.0f, F16, 0, 0},
        {2, {64, 10, 0, 0}, {384, 90, 0, 0}, 2, 1, 96, 256, 1, FA_CAUSAL_BOTTOM_RIGHT, 0, -1, -1, 0.0f, BF16, 1, 1},
        /* more tiles than 3 x 132 SMs, so that a persistent sm90 CTA walks several tiles (the tail mbarrier's phases),
           with the keyless tiles of a sequence that has queries but no keys among them */
        {4, {300, 5, 257, 129}, {513, 0, 256, 700}, 32, 8, 64, 128, 1, FA_CAUSAL_BOTTOM_RIGHT, 0, -1, -1, 0.0f, BF16, 0, 0},
    };
    /* ALiBi (0.8) on each path against the float64 reference, lse included. On the sm90 path the 16-bit local kernels
       without softcap add the bias through an extra k-step of Q K^T (sm90/alibi_gemm.cuh) on the key blocks that lie
       on one side of the diagonal for all 64 rows of a warpgroup, per element on the others: the causal form (both
       alignments; sq < sk, and sq > sk with rows that see no key); the distance form without a mask, sq != sk both
       ways and both alignments (blocks left of, right of and across the diagonal); a two-sided window (one-sided and
       straddling blocks); causal with a left window (the distance form, one-sided blocks only); a right window only;
       causal with a left window of at least sk (the causal form again); slopes from 1e-4 to 8 (8 over a softmax scale
       of 1e-4 is beyond the k-step's range: the per-element path); softcap (per element); [hq] and [b, hq]; GQA and
       MQA; every sm90 head dim class; calls long enough for many key blocks. */
    const alibi_case alibi_cases[] = {
        /* b sq  sk  hq hkv d  causal alignment         scale pad lse dtype softcap window left right; form, slope */
        {{2, 77, 150, 4, 2, 64, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1}, {1, 0.3f}},
        {{2, 150, 77, 4, 4, 128, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1}, {2, 0.3f}},
        {{1, 130, 200, 8, 1, 256, 1, FA_CAUSAL_TOP_LEFT, 0.0f, 8, 1, BF16, 0.0f, 0, -1, -1}, {1, 1.0f}},
        {{2, 100, 300, 4, 2, 64, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1}, {2, 0.3f}},
        {{1, 300, 100, 4, 2, 128, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1}, {1, 0.3f}},
        {{1, 300, 100, 4, 2, 64, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1}, {1, 0.3f}},
        {{1, 100, 300, 4, 1, 192, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1}, {2, 0.5f}},
        {{1, 260, 390, 4, 2, 64, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 1, 100, 60}, {2, 0.5f}},
        {{2, 200, 200, 4, 4, 128, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 1, 70, -1}, {1, 0.5f}},
        {{1, 140, 140, 2, 1, 128, 0, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, F16, 0.0f, 1, -1, 5}, {1, 0.3f}},
        {{1, 80, 120, 4, 2, 64, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 1, 500, -1}, {1, 0.3f}},
        {{1, 129, 257, 4, 1, 64, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1}, {1, 8.0f}},
        {{1, 257, 129, 4, 2, 128, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1}, {2, 8.0f}},
        {{1, 100, 300, 4, 2, 256, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1}, {1, 1e-4f}},
        {{1, 90, 200, 4, 2, 64, 0, FA_CAUSAL_BOTTOM_RIGHT, 1e-4f, 0, 1, F16, 0.0f, 0, -1, -1}, {1, 8.0f}},
        {{1, 100, 150, 4, 2, 64, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 20.0f, 0, -1, -1}, {1, 0.3f}},
        {{1, 150, 77, 8, 2, 192, 1, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, BF16, 0.0f, 0, -1, -1}, {2, 0.3f}},
        {{1, 700, 1100, 2, 1, 128, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16, 0.0f, 1, 300, 200}, {1, 0.1f}},
        {{1, 700, 1100, 2, 1, 64, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16, 0.0f, 0, -1, -1}, {1, 0.1f}},
    };
    const varlen_case path_varlen_cases[] = {
        {4, {17, 0, 1, 300}, {33, 5, 0, 260}, 8, 2, 128, 1, FA_CAUSAL_BOTTOM_RIGHT, 0, -1, -1, 0.0f, BF16, 8, 1, 0},
        {4, {1, 0, 130, 64}, {1, 9, 70, 0}, 4, 1, 256, 1, FA_CAUSAL_TOP_LEFT, 1, 24, -1, 10.0f, F16, 0, 1, 3},
    };

    memset(&log, 0, sizeof(log));
    memset(&props, 0, sizeof(props));
    props.struct_size = sizeof(props);
    expect("get_properties(0)", fa_device_get_properties(0, &props), FA_STATUS_SUCCESS, NULL);
    printf("  device 0: %s, compute capability %d.%d, %d SMs, %lld MiB\n", props.name, (int)props.major,
           (int)props.minor, (int)props.multiprocessor_count, (long long)(props.total_memory >> 20));
    CHECK(props.name[0] != '\0' && props.multiprocessor_count > 0, "device properties look empty");
    expect("get_properties(count)", fa_device_get_properties(count, &props), FA_STATUS_INVALID_ARGUMENT, "device is");
    expect("context_create(count)", fa_context_create(count, &bad), FA_STATUS_INVALID_ARGUMENT, "visible");
    expect("context_create(-1)", fa_context_create(-1, &bad), FA_STATUS_INVALID_ARGUMENT, "device is -1");
    if (props.major < 8) {
        expect("context on cc < 8.0", fa_context_create(0, &context), FA_STATUS_UNSUPPORTED, "8.0 or newer");
        printf("  SKIP forward tests: device 0 has compute capability %d.%d (< 8.0)\n", (int)props.major,
               (int)props.minor);
        ++g_skipped;
        return;
    }
    expect("set_log_callback", fa_set_log_callback(on_log, &log), FA_STATUS_SUCCESS, NULL);
    if (!expect("context_create(0)", fa_context_create(0, &context), FA_STATUS_SUCCESS, NULL)) {
        fa_set_log_callback(NULL, NULL);
        return;
    }
    expect("context_get_device", fa_context_get_device(context, &device), FA_STATUS_SUCCESS, NULL);
    CHECK(device == 0, "context device is %d", (int)device);
    expect("context_check on a new context", fa_context_check(context), FA_STATUS_SUCCESS, NULL);
    expect("stream_create(0)", fa_stream_create(0, &stream), FA_STATUS_SUCCESS, NULL);
    g_device_cc = props.major * 10 + props.minor;
    g_sm_count = props.multiprocessor_count;
    g_has_sm90a = build_has_sm90a();
    printf("  forward paths: sm90 %s on this device (compute capability %d, sm_90a code %s); auto runs %s kernels\n",
           forward_served(FA_PATH_SM90) ? "serves" : "is refused", g_device_cc, g_has_sm90a ? "yes" : "no",
           forward_family(FA_PATH_AUTO));

    /* First, so that each capture contains the first launch of its kernel (any one-time setup included). */
    if (section("graph")) {
        run_graph_case(context, stream, FA_PATH_AUTO, &log);
        for (i = 0; i < 2; ++i) {
            run_graph_case(context, stream, paths[i], &log);
        }
    }
    if (section("pointers")) test_device_pointers(context, stream);
    if (section("fp8")) {
        test_fp8_gpu(context, stream, g_device_cc, &log);
        test_fp8_wide_choice(context, stream, g_device_cc, &log);
    }
    if (section("basic")) {
        for (n = 0; n < (int)(sizeof(cases) / sizeof(cases[0])); ++n) {
            run_forward_case(context, stream, &cases[n], FA_PATH_AUTO, &log);
        }
        for (n = 0; n < (int)(sizeof(feature_cases) / sizeof(feature_cases[0])); ++n) {
            run_forward_case(context, stream, &feature_cases[n], FA_PATH_AUTO, &log);
        }
        for (n = 0; n < (int)(sizeof(varlen_cases) / sizeof(varlen_cases[0])); ++n) {
            run_varlen_case(context, stream, &varlen_cases[n], FA_PATH_AUTO, &log);
        }
        run_varlen_nothing_to_do(context, stream);
    }
    if (!section("wide64")) {
        /* (skipped and counted by section()) */
    } else if (head_dim_served(64)) {
        /* (a build with sm_90a code and FA_SM90_FWD_D64_WIDE_MIN_KEYS > 0 lists the 192-row kernels) */
        const int wide = strncmp(forward_family(FA_PATH_AUTO), "sm90_", 5) == 0 && build_lists_kernel(is_wide_d64_kernel);
        const varlen_case* wv = &wide_varlen_cases[0];
        int longest_q = 0, longest_k = 0;
        for (n = 0; n < (int)(sizeof(wide_cases) / sizeof(wide_cases[0])); ++n) {
            int ok;
            g_row_sample = 97;
            ok = run_forward_case(context, stream, &wide_cases[n], FA_PATH_AUTO, &log);
            g_row_sample = 0;
            if (ok && wide) {
                const fwd_case* w = &wide_cases[n];
                check_wide_choice("long d64 case", &log, w->b, w->hq, w->sq, w->sk);
            }
        }
        for (i = 0; i < wv->batch; ++i) { /* the launcher sizes tiles by the longest sequences */
            if (wv->len_q[i] > longest_q) longest_q = wv->len_q[i];
            if (wv->len_k[i] > longest_k) longest_k = wv->len_k[i];
        }
        i = g_failed;
        run_varlen_case(context, stream, wv, FA_PATH_AUTO, &log);
        if (g_failed == i && wide) {
            check_wide_choice("long d64 varlen case", &log, wv->batch, wv->hq, longest_q, longest_k);
        }
    } else {
        printf("  SKIP the long head dim 64 cases: not served by this build\n");
        ++g_skipped;
    }
    if (!section("sched256")) {
        /* (skipped and counted by section()) */
    } else if (head_dim_served(256)) {
        for (n = 0; n < (int)(sizeof(sched_cases) / sizeof(sched_cases[0])); ++n) {
            g_row_sample = 97;
            run_forward_case(context, stream, &sched_cases[n], FA_PATH_AUTO, &log);
            g_row_sample = 0;
        }
    } else {
        printf("  SKIP the long head dim 256 cases: not served by this build\n");
        ++g_skipped;
    }
    if (section("pairs")) {
        for (n = 0; n < (int)(sizeof(pair_cases) / sizeof(pair_cases[0])); ++n) {
            if (served_or_skip(pair_cases[n].d, "", NULL)) {
                g_row_sample = pair_cases[n].sq > 512 ? 97 : 0;
                run_forward_case(context, stream, &pair_cases[n], FA_PATH_AUTO, &log);
                g_row_sample = 0;
            }
        }
    }
    if (section("padded")) {
        for (n = 0; n < (int)(sizeof(padded_cases) / sizeof(padded_cases[0])); ++n) {
            if (served_or_skip(padded_cases[n].d, "", NULL)) {
                run_forward_case(context, stream, &padded_cases[n], FA_PATH_AUTO, &log);
            }
        }
    }
    if (section("paths")) {
        for (i = 0; i < 2; ++i) {
            for (n = 0; n < (int)(sizeof(path_cases) / sizeof(path_cases[0])); ++n) {
                if (served_or_skip(path_cases[n].d, "", path_name(paths[i]))) {
                    run_forward_case(context, stream, &path_cases[n], paths[i], &log);
                }
            }
            for (n = 0; n < (int)(sizeof(alibi_cases) / sizeof(alibi_cases[0])); ++n) {
                if (served_or_skip(alibi_cases[n].c.d, "ALiBi ", path_name(paths[i]))) {
                    run_forward_case_a(context, stream, &alibi_cases[n].c, &alibi_cases[n].alibi, 0, paths[i], &log);
                }
            }
            for (n = 0; n < (int)(sizeof(varlen_cases) / sizeof(varlen_cases[0])); ++n) {
                run_varlen_case(context, stream, &varlen_cases[n], paths[i], &log);
            }
            for (n = 0; n < (int)(sizeof(path_varlen_cases) / sizeof(path_varlen_cases[0])); ++n) {
                if (served_or_skip(path_varlen_cases[n].d, "varlen ", path_name(paths[i]))) {
                    run_varlen_case(context, stream, &path_varlen_cases[n], paths[i], &log);
                }
            }
            for (n = 0; n < (int)(sizeof(paged_cases) / sizeof(paged_cases[0])); ++n) {
                if (served_or_skip(paged_cases[n].d, "paged ", path_name(paths[i]))) {
                    run_paged_case(context, stream, &paged_cases[n], paths[i], &log);
                }
            }
        }
    }
    if (section("paged")) {
        for (n = 0; n < (int)(sizeof(paged_cases) / sizeof(paged_cases[0])); ++n) {
            if (served_or_skip(paged_cases[n].d, "paged ", NULL)) {
                run_paged_case(context, stream, &paged_cases[n], FA_PATH_AUTO, &log);
            }
        }
    }
    if (section("vpair")) {
        test_v_pair_gpu(context, stream, &log);
    }
    /* The same call on the legacy default stream (NULL). */
    if (section("misc")) run_forward_case(context, NULL, &cases[0], FA_PATH_AUTO, &log);

    /* Events and stream-ordered memory. */
    expect("event_create start", fa_event_create(0, &start), FA_STATUS_SUCCESS, NULL);
    expect("event_create stop", fa_event_create(0, &stop), FA_STATUS_SUCCESS, NULL);
    expect("event_record start", fa_event_record(start, stream), FA_STATUS_SUCCESS, NULL);
    expect("memory_alloc_async", fa_memory_alloc_async(1 << 20, stream, &async_memory), FA_STATUS_SUCCESS, NULL);
    expect("memset_async", fa_memset_async(async_memory, 0x3C, 1 << 20, stream), FA_STATUS_SUCCESS, NULL);
    expect("memory_free_async", fa_memory_free_async(async_memory, stream), FA_STATUS_SUCCESS, NULL);
    expect("event_record stop", fa_event_record(stop, stream), FA_STATUS_SUCCESS, NULL);
    expect("event_synchronize", fa_event_synchronize(stop), FA_STATUS_SUCCESS, NULL);
    expect("event_elapsed_ms", fa_event_elapsed_ms(start, stop, &ms), FA_STATUS_SUCCESS, NULL);
    CHECK(ms >= 0.0f, "elapsed time %g ms", (double)ms);
    expect("device_synchronize", fa_device_synchronize(0), FA_STATUS_SUCCESS, NULL);
    expect("event_destroy", fa_event_destroy(start), FA_STATUS_SUCCESS, NULL);
    expect("event_destroy", fa_event_destroy(stop), FA_STATUS_SUCCESS, NULL);
    expect("stream_destroy", fa_stream_destroy(stream), FA_STATUS_SUCCESS, NULL);
    expect("context_destroy", fa_context_destroy(context), FA_STATUS_SUCCESS, NULL);
    expect("set_log_callback(NULL)", fa_set_log_callback(NULL, NULL), FA_STATUS_SUCCESS, NULL);
}

int main(int argc, char** argv) {
    int32_t count = -1;
    fa_status_t status;
    uint64_t seed = 0;

    if (!test_seed_from_args(argc, argv, "c_abi_test", &seed)) {
        return 2;
    }
    g_rng = rng_state_from_seed(seed);
    to_double_tables();
    g_sections = getenv("C_ABI_TEST_ONLY");
    if (g_sections != NULL && !sections_known(g_sections)) {
        fprintf(stderr, "c_abi_test: C_ABI_TEST_ONLY='%s' names a section that does not exist (known: graph, pointers, "
                        "fp8, basic, wide64, sched256, pairs, padded, paths, paged, vpair, misc)\n", g_sections);
        return 2;
    }
    section_filter_selftest();
    printf("c_abi_test: libflash_attention %d (header %d), head dim %d\n", (int)fa_version(), FA_VERSION_CODE,
           FA_TEST_HEAD_DIM);

    test_versions_and_status_strings();
    test_last_error_behaviour();
    test_params_init();
    test_half_conversion();
    test_validation();
    test_feature_validation();
    test_query_support();
    test_fp8_validation();
    test_query_fp8();
    test_sinks_validation();
    test_alibi_validation();
    test_dropout_validation();
    test_v_head_dim_validation();
    test_paged_validation();
    test_kernel_names();
    test_fp8_cache_decode();
    test_graph_arguments();
#if defined(FA_TEST_HAVE_PTHREADS)
    test_last_error_is_per_thread();
#endif
    test_null_outputs();

    status = fa_device_count(&count);
    if (status == FA_STATUS_NO_DEVICE) {
        CHECK(count == 0, "fa_device_count failed with NO_DEVICE but count is %d (expected 0)", (int)count);
        CHECK(fa_last_error_message()[0] != '\0', "NO_DEVICE without a message");
        printf("  no GPU here: fa_device_count says %s: %s\n", fa_status_string(status), fa_last_error_message());
        test_no_device_behaviour();
        printf("  SKIP GPU tests (forward vs float64 reference): no CUDA device on this machine\n");
        ++g_skipped;
    } else if (expect("device_count", status, FA_STATUS_SUCCESS, NULL)) {
        printf("  %d CUDA device(s)\n", (int)count);
        if (count > 0) {
            test_gpu(count);
        } else {
            CHECK(0, "fa_device_count succeeded with count 0 (it must fail with NO_DEVICE instead)");
        }
    }

    printf("c_abi_test: %d checks passed, %d failed, %d skipped\n", g_passed, g_failed, g_skipped);
    return g_failed == 0 ? 0 : 1;
}
