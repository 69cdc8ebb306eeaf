/*
 * c_test_util.h - what the plain C99 tests of the C ABI (c_abi_test.c, c_decode_test.c; fuzz_abi.c and
 * sanitize_driver.c use parts) share: the check counters and CHECK, expect() for a status and the last-error
 * contract, fp16/bf16 conversions (round to nearest even), the fp8 forward's descale tables, the random seed
 * (clock, --seed N or FA_TEST_SEED, printed either way, so a failure can be replayed) and the accuracy cap
 * shared with the NUnit tests. Include it once, after flash_attention.h and the C headers it uses.
 */
#ifndef FA_C_TEST_UTIL_H
#define FA_C_TEST_UTIL_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flash_attention.h"

static int g_passed = 0;
static int g_failed = 0;
static int g_skipped = 0;
/* Every check counted so far (also keeps g_skipped referenced in a test that skips nothing: gcc's -Wunused-variable
   under FA_WARNINGS_AS_ERRORS). */
static inline int checks_counted(void) { return g_passed + g_failed + g_skipped; }

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
static inline int expect(const char* label, fa_status_t got, fa_status_t want, const char* needle) {
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

static inline uint16_t float_to_half(float f) {
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

static inline double half_to_double(uint16_t h) {
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
static inline uint16_t float_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((x >> 16) | 0x40u);
    }
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static inline double bf16_to_double(uint16_t h) {
    const uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, sizeof(f));
    return (double)f;
}

/* ---- fp8 (e4m3) descale tables ---------------------------------------------------------------- */

/* A dense tensor of `rank` dimensions (row-major, the last one contiguous) at `data`. Inline, like set_descale. */
static inline void set_dense(fa_tensor_t* t, void* data, int32_t dtype, int rank, const int64_t* shape) {
    int64_t stride = 1;
    int i;
    memset(t, 0, sizeof(*t));
    t->data = data;
    t->dtype = dtype;
    t->rank = rank;
    for (i = rank - 1; i >= 0; --i) {
        t->shape[i] = shape[i];
        t->strides[i] = stride;
        stride *= shape[i];
    }
}

/* A [rows, cols] fp32 descale table at `data` with the given strides (0 broadcasts), as the fp8 forward's
   q_descale, k_descale and v_descale take it ([batch, heads_kv]). Inline, so that a test without fp8 calls
   (c_decode_test) does not warn that it is unused. */
static inline void set_descale(fa_tensor_t* t, void* data, int64_t rows, int64_t cols, int64_t row_stride,
                               int64_t col_stride) {
    memset(t, 0, sizeof(*t));
    t->data = data;
    t->dtype = FA_DTYPE_FLOAT32;
    t->rank = 2;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->strides[0] = row_stride;
    t->strides[1] = col_stride;
}

/* ---- accuracy cap (the same rule as the NUnit tests) ------------------------------------------ */

/* Cap on the relative L2 error ||out - ref||_2 / ||ref||_2 of a forward output against the float64 reference:
   the values of AcceptanceRule.Bf16Cap and AcceptanceRule.Fp16Cap in
   tests/FlashAttention.Tests/TestSupport/AcceptanceRule.cs (DESIGN.md), applied the same way: the error must be
   at most the cap (a NaN error never is). Change both places together. */
#define FA_TEST_BF16_REL_L2_CAP 1e-2
#define FA_TEST_FP16_REL_L2_CAP 2e-3

static inline double rel_l2_cap(int dtype) {
    return dtype == FA_DTYPE_BFLOAT16 ? FA_TEST_BF16_REL_L2_CAP : FA_TEST_FP16_REL_L2_CAP;
}

/* 1 when a relative L2 error meets the dtype's cap. */
static inline int rel_l2_within_cap(double rel, int dtype) {
    return rel <= rel_l2_cap(dtype);
}

/* ---- random seed -------------------------------------------------------------------------------- */

/* The seed comes from `--seed N` (or `--seed=N`) on the command line, else from the environment variable
   FA_TEST_SEED, else from the clock; N is a decimal number from 0 to 2^64-1. The seed is printed either way,
   with how to replay it. Returns 1 and sets *seed, or prints a usage message and returns 0 (bad or unknown
   arguments: the caller exits with status 2). */
static inline int parse_seed_text(const char* text, uint64_t* seed) {
    char* end = NULL;
    unsigned long long value;
    if (text == NULL || text[0] < '0' || text[0] > '9') {
        return 0; /* strtoull would accept a sign or spaces */
    }
    errno = 0;
    value = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0') {
        return 0;
    }
    *seed = (uint64_t)value;
    return 1;
}

static inline int test_seed_from_args(int argc, char** argv, const char* program, uint64_t* seed) {
    const char* text = NULL;
    const char* source = NULL;
    int i;
    for (i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            text = argv[++i];
            source = "--seed";
        } else if (strncmp(argv[i], "--seed=", 7) == 0) {
            text = argv[i] + 7;
            source = "--seed";
        } else {
            fprintf(stderr, "%s: unknown or incomplete argument '%s'\nusage: %s [--seed N]   (or FA_TEST_SEED=N)\n",
                    program, argv[i], program);
            return 0;
        }
    }
    if (text == NULL) {
        text = getenv("FA_TEST_SEED");
        if (text != NULL && text[0] != '\0') {
            source = "FA_TEST_SEED";
        } else {
            text = NULL;
        }
    }
    if (text != NULL) {
        if (!parse_seed_text(text, seed)) {
            fprintf(stderr, "%s: %s '%s' is not a decimal seed from 0 to 18446744073709551615\n", program, source,
                    text);
            return 0;
        }
    } else {
        source = "clock";
        *seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)clock() ^ 0xD1B54A32D192ED03ull;
    }
    printf("%s: random seed %llu (from %s; replay with --seed %llu or FA_TEST_SEED=%llu)\n", program,
           (unsigned long long)*seed, source, (unsigned long long)*seed, (unsigned long long)*seed);
    return 1;
}

/* The xorshift state for a seed: splitmix64 of it, so that every seed (0 and small ones too) starts a
   well-mixed, nonzero state. */
static inline uint64_t rng_state_from_seed(uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z != 0 ? z : 1;
}

#endif /* FA_C_TEST_UTIL_H */
