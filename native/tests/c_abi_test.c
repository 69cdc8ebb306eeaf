/*
 * c_abi_test.c - tests the C ABI of libflash_attention from plain C99, the way another language's
 * binding sees it: only flash_attention.h, no CUDA headers, no C++.
 *
 * Everywhere: version, status strings, last-error behaviour, fa_forward_params_init, argument
 * validation through fa_forward_check (bad inputs with expected statuses and messages), the log
 * callback, that the last error is per thread, and what the device functions say when there is no GPU.
 * With a GPU (compute capability >= 8.0): fa_forward on random fp16 inputs (causal, GQA/MQA,
 * seqlen 17 and 33, padded strides) against a float64 reference written here, outputs poisoned first.
 *
 * Prints one line per failure, a summary, and returns nonzero if anything failed.
 */
#if defined(__unix__) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* pthreads under -std=c99 */
#endif
#include "flash_attention.h"

#include <math.h>
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

static int g_passed = 0;
static int g_failed = 0;
static int g_skipped = 0;

#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (cond) {                                               \
            ++g_passed;                                           \
        } else {                                                  \
            ++g_failed;                                           \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);           \
            printf(__VA_ARGS__);                                  \
            printf("\n");                                         \
        }                                                         \
    } while (0)

/* Checks a status and the last-error contract: a message after a failure, "" after a success.
   `needle`, when not NULL, must occur in the message. Returns 1 when everything matched. */
static int expect(const char* label, fa_status_t got, fa_status_t want, const char* needle) {
    const char* message = fa_last_error_message();
    int ok = 1;
    if (message == NULL) {
        CHECK(0, "%s: fa_last_error_message() returned NULL", label);
        return 0;
    }
    if (got != want) {
        CHECK(0, "%s: status %s, expected %s (message: \"%s\")", label, fa_status_string(got),
              fa_status_string(want), message);
        return 0;
    }
    if (want == FA_STATUS_SUCCESS) {
        if (message[0] != '\0') {
            ok = 0;
            CHECK(0, "%s: succeeded but the last error is \"%s\" instead of \"\"", label, message);
        }
    } else {
        if (message[0] == '\0') {
            ok = 0;
            CHECK(0, "%s: failed with %s but the message is empty", label, fa_status_string(got));
        } else if (needle != NULL && strstr(message, needle) == NULL) {
            ok = 0;
            CHECK(0, "%s: message \"%s\" does not mention \"%s\"", label, message, needle);
        } else {
            printf("  ok  %-34s %s: %s\n", label, fa_status_string(got), message);
        }
    }
    if (ok) {
        ++g_passed;
    }
    return ok;
}

/* ---- fp16 conversion (round to nearest even) ------------------------------------------------ */

static uint16_t float_to_half(float f) {
    uint32_t x;
    uint32_t sign, exponent, mantissa, half_mantissa, rest, halfway;
    int e, shift;
    memcpy(&x, &f, sizeof(x));
    sign = (x >> 16) & 0x8000u;
    exponent = (x >> 23) & 0xffu;
    mantissa = x & 0x7fffffu;
    if (exponent == 0xffu) { /* inf or NaN (NaN stays NaN) */
        return (uint16_t)(sign | 0x7c00u | (mantissa != 0 ? 0x200u : 0u));
    }
    e = (int)exponent - 127 + 15;
    if (e >= 31) {
        return (uint16_t)(sign | 0x7c00u);
    }
    if (e <= 0) { /* half subnormal or zero */
        if (e < -10) {
            return (uint16_t)sign;
        }
        mantissa |= 0x800000u;
        shift = 14 - e; /* 14..24 */
        half_mantissa = mantissa >> shift;
        rest = mantissa & ((1u << shift) - 1u);
        halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (half_mantissa & 1u))) {
            ++half_mantissa;
        }
        return (uint16_t)(sign | half_mantissa);
    }
    half_mantissa = mantissa >> 13;
    rest = mantissa & 0x1fffu;
    x = sign | ((uint32_t)e << 10) | half_mantissa;
    if (rest > 0x1000u || (rest == 0x1000u && (half_mantissa & 1u))) {
        ++x; /* a carry moves into the exponent, and 65520 becomes infinity, as it should */
    }
    return (uint16_t)x;
}

static double half_to_double(uint16_t h) {
    const int sign = (h & 0x8000u) ? -1 : 1;
    const int exponent = (h >> 10) & 0x1f;
    const int mantissa = h & 0x3ff;
    if (exponent == 0) {
        return sign * ldexp((double)mantissa, -24);
    }
    if (exponent == 31) {
        return mantissa != 0 ? (double)NAN : sign * (double)INFINITY;
    }
    return sign * ldexp((double)(mantissa | 0x400), exponent - 25);
}

/* bfloat16: the upper 16 bits of a float, rounded to nearest even (NaN kept a NaN). */
static uint16_t float_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((x >> 16) | 0x40u);
    }
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static double bf16_to_double(uint16_t h) {
    const uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, sizeof(f));
    return (double)f;
}

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

/* ---- random numbers (fresh per run; the seed is printed) ------------------------------------- */

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
    fa_forward_params_init(&p);
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

static void test_versions_and_status_strings(void) {
    const char* expected[] = {"FA_STATUS_SUCCESS",     "FA_STATUS_INVALID_ARGUMENT", "FA_STATUS_UNSUPPORTED",
                              "FA_STATUS_NO_DEVICE",   "FA_STATUS_OUT_OF_MEMORY",    "FA_STATUS_CUDA_ERROR",
                              "FA_STATUS_INTERNAL"};
    int i;
    CHECK(fa_version() == FA_VERSION_CODE, "fa_version() is %d, header says %d", (int)fa_version(), FA_VERSION_CODE);
    CHECK(FA_VERSION_CODE == FA_VERSION_MAJOR * 10000 + FA_VERSION_MINOR * 100 + FA_VERSION_PATCH,
          "FA_VERSION_CODE formula");
    for (i = 0; i < 7; ++i) {
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
    expect("fresh thread: success clears", fa_forward_params_init(&p), FA_STATUS_SUCCESS, NULL);
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
    expect("params_init(NULL)", fa_forward_params_init(NULL), FA_STATUS_INVALID_ARGUMENT, "params");
    expect("set_log_callback(NULL) clears", fa_set_log_callback(NULL, NULL), FA_STATUS_SUCCESS, NULL);
}

static void test_params_init(void) {
    fa_forward_params_t p;
    const unsigned char* bytes;
    size_t i;
    int tensors_zero = 1;
    memset(&p, 0xAB, sizeof(p));
    expect("fa_forward_params_init", fa_forward_params_init(&p), FA_STATUS_SUCCESS, NULL);
    CHECK(p.struct_size == sizeof(fa_forward_params_t), "struct_size is %u, sizeof is %u", (unsigned)p.struct_size,
          (unsigned)sizeof(fa_forward_params_t));
    CHECK(p.reserved0 == 0, "reserved0 is %u", (unsigned)p.reserved0);
    CHECK(p.softmax_scale == 0.0f, "softmax_scale default is %g", (double)p.softmax_scale);
    CHECK(p.causal == 0, "causal default is %d", (int)p.causal);
    CHECK(p.causal_alignment == FA_CAUSAL_BOTTOM_RIGHT, "causal_alignment default is %d", (int)p.causal_alignment);
    CHECK(p.kernel_path == FA_PATH_AUTO, "kernel_path default is %d", (int)p.kernel_path);
    bytes = (const unsigned char*)&p.q;
    for (i = 0; i < 5 * sizeof(fa_tensor_t); ++i) {
        if (bytes[i] != 0) {
            tensors_zero = 0;
        }
    }
    CHECK(tensors_zero, "fa_forward_params_init must zero the five tensors");
}

static void test_validation(void) {
    fa_forward_params_t p;
    const int64_t d = FA_TEST_HEAD_DIM;
    int64_t q_bytes;

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
    p = valid_params(0);
    p.struct_size = 8;
    expect("struct_size too small", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "struct_size is 8");
    p = valid_params(0);
    p.struct_size = 0;
    expect("struct_size 0", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "struct_size");
    p = valid_params(0);
    p.reserved0 = 1;
    expect("reserved0 != 0", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "reserved0");
    p = valid_params(0);
    p.q.data = NULL;
    expect("q.data NULL", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "q.data is NULL");
    p = valid_params(0);
    p.out.data = NULL;
    expect("out.data NULL", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "out.data is NULL");
    p = valid_params(0);
    p.q.dtype = FA_DTYPE_FLOAT32;
    expect("q fp32", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "q.dtype");
    p = valid_params(0);
    p.k.dtype = FA_DTYPE_BFLOAT16;
    expect("k bf16 with q fp16", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "k.dtype");
    p = valid_params(0);
    p.v.dtype = 99;
    expect("v dtype 99", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "v.dtype is 99");
    p = valid_params(0);
    p.v.rank = 3;
    expect("v rank 3", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "v.rank is 3");
    p = valid_params(0);
    p.q.shape[1] = 0;
    expect("seqlen_q 0", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "q.shape[1] (seqlen_q) is 0");
    p = valid_params(0);
    p.k.shape[0] = -3;
    expect("negative batch", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "k.shape[0]");
    p = valid_params(0);
    p.k.strides[3] = 2;
    expect("head_dim not contiguous", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "contiguous");
    p = valid_params(0);
    p.q.strides[1] = 0;
    expect("zero row stride", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "positive");
    p = valid_params(0);
    p.v.strides[0] = -p.v.strides[0];
    expect("negative batch stride", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "positive");
    p = valid_params(0);
    p.out.strides[1] = VHQ * d + 4;
    p.out.strides[0] = VSQ * p.out.strides[1] + 4; /* the batch stride stays a multiple of 8 */
    expect("row stride not multiple of 8", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "out.strides[1] (seqlen_q) is 388; the batch, seqlen and heads strides must be multiples of 8");
    p = valid_params(0);
    p.q.data = (char*)p.q.data + 8;
    expect("q.data 8-byte aligned only", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "16-byte aligned");
    p = valid_params(0);
    p.k.shape[2] = 4;
    p.v.shape[2] = 4;
    expect("GQA 6 / 4", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT,
           "k has 4 heads, which does not divide q's 6 heads");
    p = valid_params(0);
    p.v.shape[1] = VSK + 1;
    expect("k, v seqlen differ", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "same shape");
    p = valid_params(0);
    p.out.shape[1] = VSQ + 1;
    expect("out shape != q shape", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "out.shape");
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
    set_tensor4(&p.q, p.q.data, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, 520, 0);
    set_tensor4(&p.k, p.k.data, FA_DTYPE_FLOAT16, VB, VSK, VHKV, 520, 0);
    set_tensor4(&p.v, p.v.data, FA_DTYPE_FLOAT16, VB, VSK, VHKV, 520, 0);
    set_tensor4(&p.out, p.out.data, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, 520, 0);
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
    p = valid_params(1);
    p.lse.dtype = FA_DTYPE_FLOAT16;
    expect("lse fp16", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "lse.dtype");
    p = valid_params(1);
    p.lse.shape[2] = VSK;
    p.lse.strides[1] = VSK;
    p.lse.strides[0] = VHQ * VSK;
    expect("lse [b, hq, sk]", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "lse.shape");
    p = valid_params(1);
    p.lse.data = (char*)p.lse.data + 2;
    expect("lse 2-byte aligned", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "4-byte aligned");
    p = valid_params(1);
    p.lse.strides[2] = 0;
    expect("lse zero stride", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "positive");

    p = valid_params(0);
    p.softmax_scale = NAN;
    expect("softmax_scale NaN", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "softmax_scale is nan");
    p = valid_params(0);
    p.softmax_scale = -0.5f;
    expect("softmax_scale < 0", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "softmax_scale is -0.5");
    p = valid_params(0);
    p.softmax_scale = INFINITY;
    expect("softmax_scale inf", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "softmax_scale");
    p = valid_params(0);
    p.causal = 2;
    expect("causal 2", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "causal is 2");
    p = valid_params(0);
    p.causal_alignment = 7;
    expect("causal_alignment 7", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "causal_alignment is 7");
    p = valid_params(0);
    p.kernel_path = 5;
    expect("kernel_path 5", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "kernel_path is 5");
    p = valid_params(0);
    expect("compute capability 75", fa_forward_check(&p, 75), FA_STATUS_UNSUPPORTED, "8.0 or newer");
    expect("compute capability -1", fa_forward_check(&p, -1), FA_STATUS_INVALID_ARGUMENT, "compute_capability");
    p = valid_params(0);
    p.q.strides[0] = ((int64_t)1 << 61);
    p.q.shape[0] = 8;
    p.out.data = (void*)(uintptr_t)0x600000000ull;
    expect("strides overflow int64", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "too large");
    p = valid_params(0);
    p.q.data = (void*)(uintptr_t)(UINTPTR_MAX - 255u);
    expect("extent past address space", fa_forward_check(&p, 0), FA_STATUS_INVALID_ARGUMENT, "address space");

    /* fa_forward checks before touching the GPU: these fail the same way on any machine. */
    p = valid_params(0);
    expect("fa_forward(NULL context)", fa_forward(NULL, &p, NULL), FA_STATUS_INVALID_ARGUMENT, "context is NULL");
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
    r->ok_after_success = fa_forward_params_init(&p) == FA_STATUS_SUCCESS && fa_last_error_message()[0] == '\0';
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
    char last[512];
} log_record;

static void on_log(int32_t level, const char* message, void* user_data) {
    log_record* r = (log_record*)user_data;
    ++r->calls;
    if (level == FA_LOG_DEBUG) {
        ++r->debug_calls;
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
} fwd_case;

static double to_double(int dtype, uint16_t x) {
    return dtype == FA_DTYPE_BFLOAT16 ? bf16_to_double(x) : half_to_double(x);
}

/* out[b, i, h, :] and lse[b, h, i] of softmax(scale q k^T + mask) v, in double. */
static void reference_forward(const fwd_case* c, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                              const fa_tensor_t* tq, const fa_tensor_t* tk, const fa_tensor_t* tv, double* out,
                              double* lse) {
    const double scale = c->scale > 0.0f ? (double)c->scale : 1.0 / sqrt((double)c->d);
    const int group = c->hq / c->hkv;
    double* scores = (double*)malloc(sizeof(double) * (size_t)c->sk);
    int b, h, i, j, e;
    for (b = 0; b < c->b; ++b) {
        for (h = 0; h < c->hq; ++h) {
            const int kh = h / group;
            for (i = 0; i < c->sq; ++i) {
                const uint16_t* qi = q + b * tq->strides[0] + i * tq->strides[1] + h * tq->strides[2];
                double* oi = out + (((size_t)b * c->sq + i) * c->hq + h) * c->d;
                int last = c->sk - 1; /* last visible key */
                double m = -INFINITY, sum = 0.0;
                if (c->causal) {
                    const int limit = c->alignment == FA_CAUSAL_BOTTOM_RIGHT ? i + c->sk - c->sq : i;
                    if (limit < last) {
                        last = limit;
                    }
                }
                for (e = 0; e < c->d; ++e) {
                    oi[e] = 0.0;
                }
                if (last < 0) { /* sees no key: output 0, lse +inf */
                    lse[((size_t)b * c->hq + h) * c->sq + i] = INFINITY;
                    continue;
                }
                for (j = 0; j <= last; ++j) {
                    const uint16_t* kj = k + b * tk->strides[0] + j * tk->strides[1] + kh * tk->strides[2];
                    double dot = 0.0;
                    for (e = 0; e < c->d; ++e) {
                        dot += to_double(c->dtype, qi[e]) * to_double(c->dtype, kj[e]);
                    }
                    scores[j] = scale * dot;
                    if (scores[j] > m) {
                        m = scores[j];
                    }
                }
                for (j = 0; j <= last; ++j) {
                    const uint16_t* vj = v + b * tv->strides[0] + j * tv->strides[1] + kh * tv->strides[2];
                    const double w = exp(scores[j] - m);
                    sum += w;
                    for (e = 0; e < c->d; ++e) {
                        oi[e] += w * to_double(c->dtype, vj[e]);
                    }
                }
                for (e = 0; e < c->d; ++e) {
                    oi[e] /= sum;
                }
                lse[((size_t)b * c->hq + h) * c->sq + i] = m + log(sum);
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

static int run_forward_case(fa_context_t context, void* stream, const fwd_case* c, log_record* log) {
    fa_forward_params_t p;
    fa_tensor_t tq, tk, tv, to;
    int64_t nq, nk, no, nl;
    uint16_t *hq = NULL, *hk = NULL, *hv = NULL, *ho = NULL;
    float* hl = NULL;
    double *ref = NULL, *ref_lse = NULL;
    void *dq = NULL, *dk = NULL, *dv = NULL, *dout = NULL, *dl = NULL;
    char label[160];
    int failures_before = g_failed;
    int b, i, h, e, nan_count = 0, poison_overwritten = 0, lse_bad = 0;
    double err2 = 0.0, ref2 = 0.0, rel, lse_max_err = 0.0;
    int64_t x;

    sprintf(label, "fwd %s b=%d sq=%d sk=%d hq=%d hkv=%d d=%d causal=%d%s pad=%d",
            c->dtype == FA_DTYPE_BFLOAT16 ? "bf16" : "fp16", c->b, c->sq, c->sk, c->hq, c->hkv, c->d, c->causal,
            c->alignment == FA_CAUSAL_TOP_LEFT ? "(top-left)" : "", c->row_pad);

    set_tensor4(&tq, NULL, c->dtype, c->b, c->sq, c->hq, c->d, c->row_pad);
    set_tensor4(&tk, NULL, c->dtype, c->b, c->sk, c->hkv, c->d, c->row_pad);
    set_tensor4(&tv, NULL, c->dtype, c->b, c->sk, c->hkv, c->d, c->row_pad);
    set_tensor4(&to, NULL, c->dtype, c->b, c->sq, c->hq, c->d, c->row_pad);
    nq = tq.shape[0] * tq.strides[0];
    nk = tk.shape[0] * tk.strides[0];
    no = to.shape[0] * to.strides[0];
    nl = (int64_t)c->b * c->hq * c->sq;
    hq = (uint16_t*)malloc((size_t)nq * 2);
    hk = (uint16_t*)malloc((size_t)nk * 2);
    hv = (uint16_t*)malloc((size_t)nk * 2);
    ho = (uint16_t*)malloc((size_t)no * 2);
    hl = (float*)malloc((size_t)nl * sizeof(float));
    ref = (double*)malloc(sizeof(double) * (size_t)c->b * c->sq * c->hq * c->d);
    ref_lse = (double*)malloc(sizeof(double) * (size_t)nl);
    if (!hq || !hk || !hv || !ho || !hl || !ref || !ref_lse) {
        CHECK(0, "%s: host allocation failed", label);
        goto done;
    }
    fill_random(hq, nq, c->dtype); /* the padding gets random values too; the kernel must ignore them */
    fill_random(hk, nk, c->dtype);
    fill_random(hv, nk, c->dtype);

    if (!expect("alloc q", fa_memory_alloc(0, (size_t)nq * 2, &dq), FA_STATUS_SUCCESS, NULL) ||
        !expect("alloc k", fa_memory_alloc(0, (size_t)nk * 2, &dk), FA_STATUS_SUCCESS, NULL) ||
        !expect("alloc v", fa_memory_alloc(0, (size_t)nk * 2, &dv), FA_STATUS_SUCCESS, NULL) ||
        !expect("alloc out", fa_memory_alloc(0, (size_t)no * 2, &dout), FA_STATUS_SUCCESS, NULL) ||
        !expect("alloc lse", fa_memory_alloc(0, (size_t)nl * 4, &dl), FA_STATUS_SUCCESS, NULL)) {
        goto done;
    }
    expect("copy q", fa_memcpy(dq, hq, (size_t)nq * 2), FA_STATUS_SUCCESS, NULL);
    expect("copy k", fa_memcpy(dk, hk, (size_t)nk * 2), FA_STATUS_SUCCESS, NULL);
    expect("copy v", fa_memcpy(dv, hv, (size_t)nk * 2), FA_STATUS_SUCCESS, NULL);
    /* Poison: 0xFFFF is a NaN in fp16 and in bf16, 0xFFFFFFFF in fp32. */
    expect("poison out", fa_memset_async(dout, 0xFF, (size_t)no * 2, stream), FA_STATUS_SUCCESS, NULL);
    expect("poison lse", fa_memset_async(dl, 0xFF, (size_t)nl * 4, stream), FA_STATUS_SUCCESS, NULL);

    fa_forward_params_init(&p);
    p.q = tq;
    p.q.data = dq;
    p.k = tk;
    p.k.data = dk;
    p.v = tv;
    p.v.data = dv;
    p.out = to;
    p.out.data = dout;
    if (c->with_lse) {
        set_tensor3_f32(&p.lse, dl, c->b, c->hq, c->sq);
    }
    p.softmax_scale = c->scale;
    p.causal = c->causal;
    p.causal_alignment = c->alignment;
    log->debug_calls = 0;
    if (!expect(label, fa_forward(context, &p, stream), FA_STATUS_SUCCESS, NULL)) {
        goto done;
    }
    CHECK(log->debug_calls >= 1, "%s: no FA_LOG_DEBUG message naming the kernel", label);
    if (log->debug_calls >= 1) {
        printf("  log %s\n", log->last);
    }
    expect("stream synchronize", fa_stream_synchronize(stream), FA_STATUS_SUCCESS, NULL);
    expect("copy out back", fa_memcpy(ho, dout, (size_t)no * 2), FA_STATUS_SUCCESS, NULL);
    expect("copy lse back", fa_memcpy(hl, dl, (size_t)nl * 4), FA_STATUS_SUCCESS, NULL);

    reference_forward(c, hq, hk, hv, &tq, &tk, &tv, ref, ref_lse);
    for (b = 0; b < c->b; ++b) {
        for (i = 0; i < c->sq; ++i) {
            for (h = 0; h < c->hq; ++h) {
                for (e = 0; e < c->d; ++e) {
                    const double got =
                        to_double(c->dtype, ho[b * to.strides[0] + i * to.strides[1] + h * to.strides[2] + e]);
                    const double want = ref[(((size_t)b * c->sq + i) * c->hq + h) * c->d + e];
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
        if (x % to.strides[1] >= (int64_t)c->hq * c->d && ho[x] != 0xFFFFu) {
            ++poison_overwritten;
        }
    }
    rel = ref2 > 0.0 ? sqrt(err2 / ref2) : sqrt(err2);
    CHECK(nan_count == 0, "%s: %d output elements are NaN (poison left or NaN computed)", label, nan_count);
    CHECK(rel < 1e-2, "%s: relative L2 error %.3e >= 1e-2", label, rel);
    CHECK(poison_overwritten == 0, "%s: %d padding elements of out were written", label, poison_overwritten);
    if (c->with_lse) {
        for (x = 0; x < nl; ++x) {
            const double got = (double)hl[x];
            const double want = ref_lse[x];
            if (isinf(want)) {
                if (!(isinf(got) && got > 0)) {
                    ++lse_bad;
                }
            } else if (!(fabs(got - want) <= 1e-3 * (fabs(want) > 1.0 ? fabs(want) : 1.0))) {
                ++lse_bad; /* also catches NaN */
            } else if (fabs(got - want) > lse_max_err) {
                lse_max_err = fabs(got - want);
            }
        }
        CHECK(lse_bad == 0, "%s: %d of %ld lse values wrong (tolerance 1e-3 relative; +inf for rows without keys)",
              label, lse_bad, (long)nl);
    }
    printf("  %s %s: relative L2 error %.3e, NaN %d%s\n", g_failed == failures_before ? "ok " : "BAD", label, rel,
           nan_count, c->with_lse ? ", lse checked" : "");

done:
    fa_memory_free(0, dq);
    fa_memory_free(0, dk);
    fa_memory_free(0, dv);
    fa_memory_free(0, dout);
    fa_memory_free(0, dl);
    free(hq);
    free(hk);
    free(hv);
    free(ho);
    free(hl);
    free(ref);
    free(ref_lse);
    return g_failed == failures_before;
}

/* Whether fa_forward_check accepts head dim d (on made-up addresses). */
static int head_dim_served(int d) {
    fa_forward_params_t p = valid_params(0);
    set_tensor4(&p.q, p.q.data, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, d, 0);
    set_tensor4(&p.k, p.k.data, FA_DTYPE_FLOAT16, VB, VSK, VHKV, d, 0);
    set_tensor4(&p.v, p.v.data, FA_DTYPE_FLOAT16, VB, VSK, VHKV, d, 0);
    set_tensor4(&p.out, p.out.data, FA_DTYPE_FLOAT16, VB, VSQ, VHQ, d, 0);
    return fa_forward_check(&p, 0) == FA_STATUS_SUCCESS;
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
    int n;
    const int F16 = FA_DTYPE_FLOAT16, BF16 = FA_DTYPE_BFLOAT16;
    const fwd_case cases[] = {
        /* b sq  sk  hq hkv d  causal alignment           scale pad lse dtype */
        {2, 17, 33, 6, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16},
        {2, 33, 17, 6, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16}, /* first 16 rows see no key */
        {1, 33, 33, 4, 1, d, 1, FA_CAUSAL_TOP_LEFT, 0.3f, 8, 1, F16},     /* MQA, padded rows */
        {2, 17, 33, 6, 3, d, 0, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 16, 0, F16},
        {1, 33, 17, 8, 2, d, 1, FA_CAUSAL_TOP_LEFT, 0.0f, 0, 1, F16},
        {2, 17, 33, 6, 2, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 8, 1, BF16},
        {1, 33, 17, 4, 4, d, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, BF16},
    };
    /* Head dims without their own kernel run a larger one (columns zero-filled); tried when served. */
    const fwd_case padded_cases[] = {
        {1, 17, 33, 4, 2, 40, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 0, 1, F16},
        {1, 33, 17, 4, 2, 72, 1, FA_CAUSAL_BOTTOM_RIGHT, 0.0f, 8, 1, BF16},
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
    expect("stream_create(0)", fa_stream_create(0, &stream), FA_STATUS_SUCCESS, NULL);

    for (n = 0; n < (int)(sizeof(cases) / sizeof(cases[0])); ++n) {
        run_forward_case(context, stream, &cases[n], &log);
    }
    for (n = 0; n < (int)(sizeof(padded_cases) / sizeof(padded_cases[0])); ++n) {
        if (head_dim_served(padded_cases[n].d)) {
            run_forward_case(context, stream, &padded_cases[n], &log);
        } else {
            printf("  SKIP head dim %d: not served by this build\n", padded_cases[n].d);
            ++g_skipped;
        }
    }
    /* The same call on the legacy default stream (NULL). */
    run_forward_case(context, NULL, &cases[0], &log);

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

int main(void) {
    int32_t count = -1;
    fa_status_t status;

    g_rng = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)clock() ^ 0xD1B54A32D192ED03ull;
    if (g_rng == 0) {
        g_rng = 1;
    }
    printf("c_abi_test: libflash_attention %d (header %d), random seed %llu, head dim %d\n", (int)fa_version(),
           FA_VERSION_CODE, (unsigned long long)g_rng, FA_TEST_HEAD_DIM);

    test_versions_and_status_strings();
    test_last_error_behaviour();
    test_params_init();
    test_half_conversion();
    test_validation();
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
