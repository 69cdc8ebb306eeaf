/*
 * fuzz_abi.c - random arguments through the C ABI, the way a careless caller would pass them (issue 16).
 *
 * For each pass (forward, backward, decode, capability query) it builds FUZZ_CASES (default 2000; env
 * FA_FUZZ_CASES) random calls: a valid-ish call (small shapes, random options, variable-length batches, paged
 * caches, host copies of lengths, fp8 (e4m3) forwards with bf16 out and descale tables, broadcast or not) with 0
 * to 4 faults added: dtypes (fp8 on one tensor of a 16-bit call and the reverse), ranks, shapes and strides (0,
 * negative, odd, huge), struct_size (0.4's too), reserved fields, enum values, NaN/inf/negative scales and softcaps,
 * windows, NULL, host, freed, misaligned, overlapping and too-small pointers, descales on 16-bit calls, fp8 (e4m3)
 * KV caches of a decode with their descales (missing, broken, on a 16-bit cache, one cache fp8 and one not),
 * cu_seqlens / cache_seqlens / block table contents (host copies and device arrays), workspaces. The seed is printed (--seed N or FA_TEST_SEED replays it); a
 * failure names the pass and case number.
 *
 * Everywhere: fa_*_check and fa_query_support; a call must return a status of the enum, a refusal a non-empty
 * fa_last_error_message, a success an empty one. With a GPU (compute capability >= 8.0): the real calls too, on
 * tensors in one device arena (fa_memory_alloc) whose bytes are set to a known image before each call; after a
 * refusal the arena must still hold that image byte for byte, after a success the stream must synchronise, and
 * every VALID_EVERY cases a known-valid call of the pass must succeed (no sticky CUDA error).
 *
 * Host arrays the library reads (cu_seqlens_*_host, cache_seqlens_host) are always real arrays long enough for
 * the batch the call declares: reading them is the caller's contract, not something validation can check.
 */
#include "flash_attention.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FA_TEST_HEAD_DIM
#define FA_TEST_HEAD_DIM 64
#endif

#include "c_test_util.h"

enum { VALID_EVERY = 50, HOST_CAP = 64, POISON = 0x7B };

/* ---- random numbers ------------------------------------------------------------------------------------ */

static uint64_t g_rng = 1;

static uint64_t next_u64(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 2685821657736338717ull;
}
static int64_t r(int64_t n) { return n <= 0 ? 0 : (int64_t)(next_u64() % (uint64_t)n); }
static int chance(int n) { return r(n) == 0; }

static int64_t wild_int(void) {
    static const int64_t values[] = {0, -1, 1, 2, 3, 7, 8, 59, 64, 1000, -8, INT32_MAX, INT32_MIN, (int64_t)1 << 31,
                                     (int64_t)1 << 40, INT64_MAX, INT64_MIN, INT64_MAX / 2 + 1};
    return chance(3) ? r(300) - 20 : values[r((int64_t)(sizeof(values) / sizeof(values[0])))];
}

static float wild_float(void) {
    const float values[] = {0.0f, -0.0f, -1.0f, 1.0f, 0.125f, 30.0f, 1e30f, FLT_MAX, -FLT_MAX, FLT_MIN, 1e-40f};
    switch (r(4)) {
        case 0: return (float)NAN;
        case 1: return (float)(chance(2) ? INFINITY : -INFINITY);
        default: return values[r((int64_t)(sizeof(values) / sizeof(values[0])))];
    }
}

/* ---- the arena: where the tensors live (device memory with a GPU; made-up addresses without) -------------- */

enum { S_Q, S_K, S_V, S_OUT, S_LSE, S_DOUT, S_DQ, S_DK, S_DV, S_KN, S_VN, S_CUQ, S_CUK, S_SEQ, S_BT, S_DESC, S_WS, S_COUNT };
/* The three descale tables share slot S_DESC, DESC_BYTES apart; the image holds 1.0f there. */
#define DESC_BYTES ((size_t)4096)
#define SLOT_BYTES ((size_t)64 * 1024)
#define WS_BYTES ((size_t)256 * 1024)
#define ARENA_BYTES (SLOT_BYTES * (S_COUNT - 1) + WS_BYTES)

static int g_gpu = 0;
static unsigned char* g_arena = NULL;  /* device arena, or a made-up address without a GPU */
static unsigned char* g_image = NULL;  /* what the arena must hold: POISON, and the int arrays */
static unsigned char* g_readback = NULL;
static void* g_host_block = NULL;      /* ordinary host memory (malloc) */
static void* g_freed = NULL;           /* device memory that was freed (a made-up address without a GPU) */

static unsigned char* slot(int s) { return g_arena + SLOT_BYTES * (size_t)s; }
static unsigned char* descale_slot(int i) { return slot(S_DESC) + DESC_BYTES * (size_t)i; }
static int32_t* image_ints(int s) { return (int32_t*)(g_image + SLOT_BYTES * (size_t)s); }

/* A pointer fault: NULL, misaligned, host, freed, another tensor's, near the arena's end, far away. */
static void* wild_pointer(void* current) {
    switch (r(9)) {
        case 0: return NULL;
        case 1: return (unsigned char*)current + 2;
        case 2: return (unsigned char*)current + 1 + 16 * r(4);
        case 3: return g_host_block;
        case 4: return g_freed;
        case 5: return slot((int)r(S_COUNT));
        case 6: return g_arena + ARENA_BYTES - 16 * (1 + r(64));
        case 7: return (void*)(uintptr_t)0xFFFFFFFFFFFFF000ull;
        default: return (unsigned char*)current + 16 * (1 + r(64));
    }
}

/* ---- tensors --------------------------------------------------------------------------------------------- */

static void t4(fa_tensor_t* t, void* data, int32_t dtype, int64_t a, int64_t b, int64_t c, int64_t d) {
    const int64_t shape[4] = {a, b, c, d};
    set_dense(t, data, dtype, 4, shape);
}
static void t3(fa_tensor_t* t, void* data, int32_t dtype, int64_t a, int64_t b, int64_t c) {
    const int64_t shape[3] = {a, b, c};
    set_dense(t, data, dtype, 3, shape);
}
static void t2(fa_tensor_t* t, void* data, int32_t dtype, int64_t a, int64_t b) {
    const int64_t shape[2] = {a, b};
    set_dense(t, data, dtype, 2, shape);
}
static void t1(fa_tensor_t* t, void* data, int32_t dtype, int64_t a) { set_dense(t, data, dtype, 1, &a); }

/* One fault in a tensor descriptor. */
static void break_tensor(fa_tensor_t* t) {
    const int i = (int)r(FA_MAX_RANK);
    switch (r(7)) {
        case 0: t->data = wild_pointer(t->data); break;
        case 1: t->dtype = (int32_t)(r(8) - 1); break;
        case 2: t->rank = (int32_t)(r(8) - 2); break;
        case 3: t->shape[i] = wild_int(); break;
        case 4: t->strides[i] = wild_int(); break;
        case 5: t->strides[i] += 1 + r(16); break;                 /* a little too far: overlap, out of the slot */
        default: t->shape[i] = t->shape[i] + 1 + r(200); break;    /* bigger than its memory */
    }
}

/* Head dim of a valid-ish call: the tested one mostly, sometimes any multiple of 8 up to 256, sometimes not. */
static int64_t pick_head_dim(void) {
    if (!chance(4)) return FA_TEST_HEAD_DIM;
    return chance(4) ? 1 + r(300) : 8 * (1 + r(32));
}

/* One fp8 descale table ([batch, heads_kv] fp32 at descale slot i): dense, broadcast along one dimension or both
   (strides 0), or absent (data NULL). */
static void random_descale(fa_tensor_t* t, int i, int64_t batch, int64_t heads_kv) {
    static const int64_t strides[4][2] = {{-1, 1}, {0, 0}, {1, 0}, {0, 1}}; /* -1: heads_kv (dense) */
    const int kind = (int)r(5);
    if (kind == 4) {
        memset(t, 0, sizeof(*t));
        return;
    }
    t2(t, descale_slot(i), FA_DTYPE_FLOAT32, batch, heads_kv);
    t->strides[0] = strides[kind][0] < 0 ? heads_kv : strides[kind][0];
    t->strides[1] = strides[kind][1];
}

/* Shrinks the rows so that rows * heads * d 16-bit elements fit a slot. */
static int64_t fit_rows(int64_t rows, int64_t other) {
    while (rows > 1 && rows * other * 2 > (int64_t)SLOT_BYTES) rows /= 2;
    return rows;
}

/* ---- host arrays the library reads ------------------------------------------------------------------------ */

static int32_t g_cu_q_host[HOST_CAP + 1], g_cu_k_host[HOST_CAP + 1], g_seq_host[HOST_CAP];
static int32_t g_idx_host[HOST_CAP], g_pad_host[HOST_CAP]; /* fa_decode's cache_batch_idx_host, cache_leftpad_host */

/* Prefix sums of `batch` random lengths (0..max_len) into cu; returns the total. */
static int32_t random_cu(int32_t* cu, int batch, int max_len, int32_t* longest) {
    int i;
    cu[0] = 0;
    *longest = 0;
    for (i = 0; i < batch; ++i) {
        const int32_t len = (int32_t)r(max_len + 1);
        cu[i + 1] = cu[i] + len;
        if (len > *longest) *longest = len;
    }
    return cu[batch];
}

/* Faults in an int array's contents (host copy or device array). */
static void break_ints(int32_t* a, int n) {
    const int i = (int)r(n);
    switch (r(4)) {
        case 0: a[i] = (int32_t)wild_int(); break;
        case 1: a[i] = -1 - (int32_t)r(5); break;
        case 2: a[i] = a[i] + 1 + (int32_t)r(1000); break;
        default: a[i] = INT32_MAX - (int32_t)r(3); break;
    }
}

/* ---- checking one call --------------------------------------------------------------------------------------- */

static const char* g_pass = "";
static int g_case = 0;
static int64_t g_refused = 0, g_accepted = 0, g_calls = 0, g_device_reports = 0;
static int g_case_faults = 0; /* the faults of the case being run (0: a valid call) */

/* The status contract of every call. Returns the status. */
static fa_status_t judge(const char* what, fa_status_t status) {
    const char* message = fa_last_error_message();
    ++g_calls;
    if (message == NULL) {
        CHECK(0, "%s case %d: %s: fa_last_error_message() is NULL", g_pass, g_case, what);
        return status;
    }
    if ((int)status < (int)FA_STATUS_SUCCESS || (int)status > (int)FA_STATUS_DEVICE_CHECK_FAILED) {
        CHECK(0, "%s case %d: %s: status %d is not an fa_status_t value", g_pass, g_case, what, (int)status);
    } else if (status == FA_STATUS_DEVICE_CHECK_FAILED) {
        /* after_call takes every report right after the call that made it: one here leaked past it */
        CHECK(0, "%s case %d: %s: a device check of an earlier call reached this one: %s", g_pass, g_case, what, message);
    } else if (status == FA_STATUS_INTERNAL) {
        CHECK(0, "%s case %d: %s: FA_STATUS_INTERNAL (a library bug): %s", g_pass, g_case, what, message);
    } else if (status == FA_STATUS_SUCCESS) {
        CHECK(message[0] == '\0', "%s case %d: %s: succeeded with message \"%s\"", g_pass, g_case, what, message);
        ++g_accepted;
    } else {
        CHECK(message[0] != '\0', "%s case %d: %s: %s without a message", g_pass, g_case, what, fa_status_string(status));
        ++g_refused;
    }
    return status;
}

/* GPU: the arena gets its image before a real call. */
static void load_arena(void) {
    if (g_gpu) {
        CHECK(fa_memcpy(g_arena, g_image, ARENA_BYTES) == FA_STATUS_SUCCESS, "%s case %d: uploading the arena: %s", g_pass,
              g_case, fa_last_error_message());
    }
}

/* GPU, after a real call: a refusal left every byte as it was; a success synchronises. */
static void after_call(fa_context_t context, const char* what, fa_status_t status, void* stream) {
    if (status == FA_STATUS_SUCCESS) {
        fa_status_t found;
        CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "%s case %d: %s succeeded, then the stream failed: %s",
              g_pass, g_case, what, fa_last_error_message());
        /* What only the GPU could see: a decode's device lengths or block ids that do not fit the cache (a faulty
           case may break them, or the shapes they must fit) are reported, with a message; a fault-free decode (its
           lengths and block ids fit by construction), the forward and the backward have nothing to report. */
        found = fa_context_check(context);
        if (found == FA_STATUS_DEVICE_CHECK_FAILED && strcmp(what, "fa_decode") == 0 && g_case_faults > 0) {
            CHECK(fa_last_error_message()[0] != '\0', "%s case %d: a device check failed without a message", g_pass, g_case);
            ++g_device_reports;
        } else {
            CHECK(found == FA_STATUS_SUCCESS, "%s case %d: fa_context_check after %s: %s (%s)", g_pass, g_case, what,
                  fa_status_string(found), fa_last_error_message());
        }
        return;
    }
    if (fa_memcpy(g_readback, g_arena, ARENA_BYTES) != FA_STATUS_SUCCESS) {
        CHECK(0, "%s case %d: reading the arena back after a refused %s: %s", g_pass, g_case, what, fa_last_error_message());
        return;
    }
    if (memcmp(g_readback, g_image, ARENA_BYTES) != 0) {
        size_t i = 0;
        while (i < ARENA_BYTES && g_readback[i] == g_image[i]) ++i;
        CHECK(0, "%s case %d: %s was refused (%s) but changed arena byte %zu (slot %zu)", g_pass, g_case, what,
              fa_status_string(status), i, i / SLOT_BYTES);
    }
}

/* ---- forward --------------------------------------------------------------------------------------------------- */

static void build_forward(fa_forward_params_t* p, int faults) {
    int64_t d = pick_head_dim();
    const int64_t hkv = 1 + r(2), hq = hkv * (1 + r(2));
    const int64_t b = 1 + r(2);
    const int64_t sq = fit_rows(1 + r(40), 3 * hq * d), sk = fit_rows(1 + r(40), 3 * hkv * d);  /* x3: batch */
    /* fp8 one call in four: q, k and v e4m3, out bf16 (head dims of 16-element rows mostly) */
    const int fp8 = chance(4);
    const int32_t dtype = fp8 ? FA_DTYPE_FLOAT8_E4M3 : chance(2) ? FA_DTYPE_FLOAT16 : FA_DTYPE_BFLOAT16;
    const int32_t out_dtype = fp8 ? FA_DTYPE_BFLOAT16 : dtype;
    int f;
    if (fp8 && d % 16 != 0 && !chance(4)) d = (d + 15) / 16 * 16;
    fa_forward_params_init(p, sizeof(*p));
    p->causal = (int32_t)r(2);
    p->causal_alignment = (int32_t)r(2);
    p->softmax_scale = chance(2) ? 0.0f : 0.05f * (float)(1 + r(20));
    p->window_left = chance(2) ? -1 : (int32_t)r(24);
    p->window_right = chance(2) ? -1 : (int32_t)r(24);
    p->softcap = chance(3) ? 0.5f * (float)(1 + r(60)) : 0.0f;
    p->kernel_path = chance(4) ? (int32_t)r(3) : FA_PATH_AUTO;
    if (chance(4)) {
        const int batch = 1 + (int)r(3);
        int32_t lq, lk;
        const int32_t total_q = random_cu(g_cu_q_host, batch, (int)(sq * 2 / batch), &lq);  /* <= 3 * sq rows */
        const int32_t total_k = random_cu(g_cu_k_host, batch, (int)(sk * 2 / batch), &lk);
        memcpy(image_ints(S_CUQ), g_cu_q_host, sizeof(int32_t) * (size_t)(batch + 1));
        memcpy(image_ints(S_CUK), g_cu_k_host, sizeof(int32_t) * (size_t)(batch + 1));
        t3(&p->q, slot(S_Q), dtype, total_q, hq, d);
        t3(&p->k, slot(S_K), dtype, total_k, hkv, d);
        t3(&p->v, slot(S_V), dtype, total_k, hkv, d);
        t3(&p->out, slot(S_OUT), out_dtype, total_q, hq, d);
        if (chance(2)) t2(&p->lse, slot(S_LSE), FA_DTYPE_FLOAT32, hq, total_q);
        p->cu_seqlens_q = (const int32_t*)slot(S_CUQ);
        p->cu_seqlens_k = (const int32_t*)slot(S_CUK);
        if (chance(2)) {
            p->cu_seqlens_q_host = g_cu_q_host;
            p->cu_seqlens_k_host = g_cu_k_host;
        }
        p->varlen_batch = batch;
        p->max_seqlen_q = lq + (int32_t)(chance(4) ? r(3) : 0);
        p->max_seqlen_k = lk + (int32_t)(chance(4) ? r(3) : 0);
    } else {
        t4(&p->q, slot(S_Q), dtype, b, sq, hq, d);
        t4(&p->k, slot(S_K), dtype, b, sk, hkv, d);
        t4(&p->v, slot(S_V), dtype, b, sk, hkv, d);
        t4(&p->out, slot(S_OUT), out_dtype, b, sq, hq, d);
        if (chance(2)) t3(&p->lse, slot(S_LSE), FA_DTYPE_FLOAT32, b, hq, sq);
    }
    if (fp8) {
        const int64_t batch = p->cu_seqlens_q != NULL ? p->varlen_batch : b;
        random_descale(&p->q_descale, 0, batch, hkv);
        random_descale(&p->k_descale, 1, batch, hkv);
        random_descale(&p->v_descale, 2, batch, hkv);
    }
    for (f = 0; f < faults; ++f) {
        switch (r(20)) {
            case 0: break_tensor(&p->q); break;
            case 1: break_tensor(&p->k); break;
            case 2: break_tensor(&p->v); break;
            case 3: break_tensor(&p->out); break;
            case 4: break_tensor(&p->lse); break;
            case 5: {
                static const uint32_t sizes[] = {0, 4, 60, 63, 64, 100, 200, 1u << 20, UINT32_MAX};
                p->struct_size = chance(2) ? sizes[r(9)] : (uint32_t)r((int64_t)sizeof(*p) + 64);
                break;
            }
            case 6: p->reserved0 = (uint32_t)wild_int(); break;
            case 7: if (chance(2)) p->reserved1 = (int32_t)wild_int(); else p->reserved2 = (int32_t)wild_int(); break;
            case 8: p->causal = (int32_t)wild_int(); break;
            case 9: if (chance(2)) p->causal_alignment = (int32_t)wild_int(); else p->kernel_path = (int32_t)wild_int(); break;
            case 10: if (chance(2)) p->softmax_scale = wild_float(); else p->softcap = wild_float(); break;
            case 11: if (chance(2)) p->window_left = (int32_t)wild_int(); else p->window_right = (int32_t)wild_int(); break;
            case 12:
                if (chance(2)) p->cu_seqlens_q = (const int32_t*)wild_pointer((void*)(uintptr_t)p->cu_seqlens_q);
                else p->cu_seqlens_k = (const int32_t*)wild_pointer((void*)(uintptr_t)p->cu_seqlens_k);
                break;
            case 13: {
                /* The batch: the host copies hold HOST_CAP + 1 values, so a larger batch drops them. */
                const int64_t v = wild_int();
                p->varlen_batch = (int32_t)v;
                if (v > HOST_CAP) p->cu_seqlens_q_host = p->cu_seqlens_k_host = NULL;
                break;
            }
            case 14: if (chance(2)) p->max_seqlen_q = (int32_t)wild_int(); else p->max_seqlen_k = (int32_t)wild_int(); break;
            case 15:
            case 18: {
                /* A descale table, given (on an fp8 call, or one turned fp8 here, or where it must not be: a 16-bit
                   call), then broken, or dropped by the 0.4 struct size. */
                fa_tensor_t* t = r(3) == 0 ? &p->q_descale : chance(2) ? &p->k_descale : &p->v_descale;
                const int i = t == &p->q_descale ? 0 : t == &p->k_descale ? 1 : 2;
                if (!fp8 && chance(2)) {
                    p->q.dtype = p->k.dtype = p->v.dtype = FA_DTYPE_FLOAT8_E4M3;
                    p->out.dtype = FA_DTYPE_BFLOAT16;
                }
                if (t->data == NULL || chance(3)) random_descale(t, i, p->cu_seqlens_q != NULL ? p->varlen_batch : b, hkv);
                if (t->data != NULL && chance(4)) p->struct_size = (uint32_t)offsetof(fa_forward_params_t, q_descale);
                else if (chance(4)) t->data = descale_slot(i) + 4 * r(8);  /* elsewhere in its table (aligned or not) */
                else break_tensor(t);
                break;
            }
            case 16: {
                /* fp8 where it does not belong (one of q/k/v/out of a 16-bit call), or a 16-bit dtype in an fp8 call */
                fa_tensor_t* t = r(4) == 0 ? &p->q : chance(3) ? &p->k : chance(2) ? &p->v : &p->out;
                t->dtype = t->dtype == FA_DTYPE_FLOAT8_E4M3 ? (chance(2) ? FA_DTYPE_FLOAT16 : FA_DTYPE_BFLOAT16)
                                                            : FA_DTYPE_FLOAT8_E4M3;
                break;
            }
            case 17: {
                /* out of an fp8 call in another dtype, or every input fp8 with the output left as it was */
                if (p->q.dtype == FA_DTYPE_FLOAT8_E4M3) p->out.dtype = chance(2) ? FA_DTYPE_FLOAT16 : FA_DTYPE_FLOAT8_E4M3;
                else p->q.dtype = p->k.dtype = p->v.dtype = FA_DTYPE_FLOAT8_E4M3;
                break;
            }
            default:
                /* Contents of the lengths: the host copies, or only the device arrays (then trusted). */
                if (chance(2)) break_ints(g_cu_q_host, HOST_CAP + 1); else break_ints(g_cu_k_host, HOST_CAP + 1);
                if (chance(2)) break_ints(image_ints(S_CUQ), 8); else break_ints(image_ints(S_CUK), 8);
                break;
        }
    }
}

/* ---- backward ---------------------------------------------------------------------------------------------------- */

static void build_backward(fa_backward_params_t* p, int faults) {
    fa_forward_params_t f;
    int i;
    build_forward(&f, 0);
    fa_backward_params_init(p, sizeof(*p));
    p->q = f.q;
    p->k = f.k;
    p->v = f.v;
    p->out = f.out;
    p->dout = f.out;
    p->dout.data = slot(S_DOUT);
    p->dq = f.q;
    p->dq.data = slot(S_DQ);
    p->dk = f.k;
    p->dk.data = slot(S_DK);
    p->dv = f.v;
    p->dv.data = slot(S_DV);
    p->lse = f.lse;
    if (p->lse.data == NULL) {
        if (f.cu_seqlens_q != NULL) t2(&p->lse, slot(S_LSE), FA_DTYPE_FLOAT32, f.q.shape[1], f.q.shape[0]);
        else t3(&p->lse, slot(S_LSE), FA_DTYPE_FLOAT32, f.q.shape[0], f.q.shape[2], f.q.shape[1]);
    }
    p->softmax_scale = f.softmax_scale;
    p->causal = f.causal;
    p->causal_alignment = f.causal_alignment;
    p->kernel_path = f.kernel_path;
    p->window_left = f.window_left;
    p->window_right = f.window_right;
    p->softcap = f.softcap;
    p->cu_seqlens_q = f.cu_seqlens_q;
    p->cu_seqlens_k = f.cu_seqlens_k;
    p->cu_seqlens_q_host = f.cu_seqlens_q_host;
    p->cu_seqlens_k_host = f.cu_seqlens_k_host;
    p->varlen_batch = f.varlen_batch;
    p->max_seqlen_q = f.max_seqlen_q;
    p->max_seqlen_k = f.max_seqlen_k;
    p->deterministic = (int32_t)r(2);
    if (chance(2)) {
        p->workspace = slot(S_WS);
        p->workspace_size = WS_BYTES;
    }
    for (i = 0; i < faults; ++i) {
        switch (r(14)) {
            case 0: break_tensor(&p->q); break;
            case 1: break_tensor(&p->k); break;
            case 2: break_tensor(&p->out); break;
            case 3: break_tensor(&p->dout); break;
            case 4: break_tensor(&p->lse); break;
            case 5: break_tensor(&p->dq); break;
            case 6: break_tensor(&p->dk); break;
            case 7: break_tensor(&p->dv); break;
            case 8: p->deterministic = (int32_t)wild_int(); break;
            case 9: p->workspace = wild_pointer(p->workspace != NULL ? p->workspace : slot(S_WS)); break;
            case 10: p->workspace_size = (size_t)r(2 * WS_BYTES); break;
            case 11: p->struct_size = (uint32_t)r((int64_t)sizeof(*p) + 64); break;
            case 12: if (chance(2)) p->reserved0 = (uint32_t)wild_int(); else p->reserved1 = (int32_t)wild_int(); break;
            default: {
                /* The forward's faults, mapped onto the backward's fields. */
                fa_forward_params_t g;
                build_forward(&g, 1);
                if (g.causal != f.causal) p->causal = g.causal;
                if (!(g.softmax_scale == f.softmax_scale)) p->softmax_scale = g.softmax_scale;
                if (g.window_left != f.window_left) p->window_left = g.window_left;
                if (g.softcap != f.softcap) p->softcap = g.softcap;
                if (g.kernel_path != f.kernel_path) p->kernel_path = g.kernel_path;
                if (chance(2)) p->cu_seqlens_q = g.cu_seqlens_q;
                if (chance(2)) p->varlen_batch = g.varlen_batch;
                if (p->varlen_batch > HOST_CAP || p->varlen_batch < 0) p->cu_seqlens_q_host = p->cu_seqlens_k_host = NULL;
                break;
            }
        }
    }
}

/* ---- decode ---------------------------------------------------------------------------------------------------------- */

static void build_decode(fa_decode_params_t* p, int faults) {
    const int64_t d = pick_head_dim();
    const int64_t hkv = 1 + r(2), hq = hkv * (1 + r(2));
    const int64_t b = 1 + r(2), sq = 1 + r(4);
    const int32_t dtype = chance(2) ? FA_DTYPE_FLOAT16 : FA_DTYPE_BFLOAT16;
    /* C ABI 0.13: an fp8 (e4m3) KV cache one call in four, with k_descale / v_descale of [heads_kv] or [1] (the
       image holds 1.0f in the descale slots; the poison bytes read as a finite e4m3 value). */
    const int fp8_cache = chance(4);
    const int32_t cache_dtype = fp8_cache ? FA_DTYPE_FLOAT8_E4M3 : dtype;
    const int paged = chance(2);
    const int append = chance(2);
    /* C ABI 0.7: appended count independent of sq, cache_batch_idx over a pool of rows, cache_leftpad. Their
       device arrays live in the varlen slots S_CUQ / S_CUK, which a decode does not otherwise use. */
    const int64_t added = append ? 1 + r(4) : 0;
    const int use_idx = chance(3), use_pad = chance(3);
    const int64_t rows = use_idx ? b + r(3) : b;
    int64_t capacity, i;
    int f;
    fa_decode_params_init(p, sizeof(*p));
    t4(&p->q, slot(S_Q), dtype, b, sq, hq, d);
    t4(&p->out, slot(S_OUT), dtype, b, sq, hq, d);
    if (paged) {
        const int64_t block = chance(2) ? 16 : 32;
        const int64_t max_blocks = 1 + r(3);
        int64_t blocks = rows * max_blocks + r(2);
        while (blocks > 1 && blocks * block * hkv * d * 2 > (int64_t)SLOT_BYTES) --blocks;
        t4(&p->k_cache, slot(S_K), cache_dtype, blocks, block, hkv, d);
        t4(&p->v_cache, slot(S_V), cache_dtype, blocks, block, hkv, d);
        t2(&p->block_table, slot(S_BT), FA_DTYPE_INT32, rows, max_blocks);
        for (i = 0; i < rows * max_blocks; ++i) image_ints(S_BT)[i] = (int32_t)r(blocks);
        capacity = max_blocks * block;
    } else {
        capacity = fit_rows(sq + added + r(40), 2 * rows * hkv * d);
        t4(&p->k_cache, slot(S_K), cache_dtype, rows, capacity, hkv, d);
        t4(&p->v_cache, slot(S_V), cache_dtype, rows, capacity, hkv, d);
    }
    if (fp8_cache) {
        t1(&p->k_descale, descale_slot(0), FA_DTYPE_FLOAT32, chance(2) ? hkv : 1);
        t1(&p->v_descale, descale_slot(1), FA_DTYPE_FLOAT32, chance(2) ? hkv : 1);
    }
    for (i = 0; i < b; ++i) {
        const int64_t room = capacity - added;
        g_seq_host[i] = (int32_t)(room > 0 ? r(room + 1) : 0);
        image_ints(S_SEQ)[i] = g_seq_host[i];
        g_idx_host[i] = (int32_t)r(rows);
        image_ints(S_CUQ)[i] = g_idx_host[i];
        g_pad_host[i] = (int32_t)r(g_seq_host[i] + added + 1);
        image_ints(S_CUK)[i] = g_pad_host[i];
    }
    t1(&p->cache_seqlens, slot(S_SEQ), FA_DTYPE_INT32, b);
    if (chance(2)) p->cache_seqlens_host = g_seq_host;
    if (use_idx) {
        t1(&p->cache_batch_idx, slot(S_CUQ), FA_DTYPE_INT32, b);
        if (chance(2)) p->cache_batch_idx_host = g_idx_host;
    }
    if (use_pad) {
        t1(&p->cache_leftpad, slot(S_CUK), FA_DTYPE_INT32, b);
        if (chance(2)) p->cache_leftpad_host = g_pad_host;
    }
    if (append) {
        t4(&p->k_new, slot(S_KN), dtype, b, added, hkv, d);
        t4(&p->v_new, slot(S_VN), dtype, b, added, hkv, d);
        p->advance_cache_seqlens = (int32_t)r(2);
    }
    if (append && chance(3)) {
        /* C ABI 0.8: rotary tables (in the backward's dq / dk slots, unused by a decode) of a multiple of 16 up to the
           head dim, rows for the capacity and the queries; any contents (the call only reads them). */
        const int64_t rd = d >= 16 ? 16 * (1 + r(d / 16)) : 16;
        const int64_t rows_ro = capacity + sq;
        if (rows_ro * rd <= (int64_t)SLOT_BYTES) {
            p->rotary_cos = slot(S_DQ);
            p->rotary_sin = slot(S_DK);
            p->rotary_dim = (int32_t)rd;
            p->rotary_seqlen = (int32_t)rows_ro;
            p->rotary_interleaved = (int32_t)r(2);
        }
    }
    if (chance(2)) t3(&p->lse, slot(S_LSE), FA_DTYPE_FLOAT32, b, hq, sq);
    p->causal = (int32_t)r(2);
    p->window_left = chance(2) ? -1 : (int32_t)r(24);
    p->window_right = chance(2) ? -1 : (int32_t)r(8);
    p->softcap = chance(3) ? 0.5f * (float)(1 + r(60)) : 0.0f;
    p->softmax_scale = chance(2) ? 0.0f : 0.05f * (float)(1 + r(20));
    p->num_splits = (int32_t)r(5);
    if (chance(2)) {
        p->workspace = slot(S_WS);
        p->workspace_size = WS_BYTES;
    }
    for (f = 0; f < faults; ++f) {
        switch (r(23)) {
            case 0: break_tensor(&p->q); break;
            case 1: break_tensor(&p->k_cache); break;
            case 2: break_tensor(&p->v_cache); break;
            case 3: break_tensor(&p->k_new); break;
            case 4: break_tensor(&p->out); break;
            case 5: break_tensor(&p->lse); break;
            case 6: break_tensor(&p->cache_seqlens); break;
            case 7: break_tensor(&p->block_table); break;
            case 8: p->struct_size = (uint32_t)r((int64_t)sizeof(*p) + 64); break;
            case 9: p->reserved0 = (uint32_t)wild_int(); break;
            case 10: if (chance(2)) p->causal = (int32_t)wild_int(); else p->kernel_path = (int32_t)wild_int(); break;
            case 11: if (chance(2)) p->softmax_scale = wild_float(); else p->softcap = wild_float(); break;
            case 12: if (chance(2)) p->window_left = (int32_t)wild_int(); else p->window_right = (int32_t)wild_int(); break;
            case 13: if (chance(2)) p->num_splits = (int32_t)wild_int(); else p->advance_cache_seqlens = (int32_t)wild_int(); break;
            case 14: p->workspace = wild_pointer(p->workspace != NULL ? p->workspace : slot(S_WS)); break;
            case 15: p->workspace_size = (size_t)r(2 * WS_BYTES); break;
            case 16:
                /* The rotary block (0.8): its sizes, its flag, its reserved field, a table missing or elsewhere. */
                switch (r(6)) {
                    case 0: p->rotary_dim = (int32_t)wild_int(); break;
                    case 1: p->rotary_seqlen = (int32_t)wild_int(); break;
                    case 2: p->rotary_interleaved = (int32_t)wild_int(); break;
                    case 3: p->reserved1 = (int32_t)wild_int(); break;
                    case 4: p->rotary_cos = wild_pointer(p->rotary_cos != NULL ? (void*)(uintptr_t)p->rotary_cos : slot(S_DQ)); break;
                    default: p->rotary_sin = chance(2) ? NULL : slot(S_DK); break;
                }
                break;
            case 17: break_tensor(&p->cache_batch_idx); break;
            case 18: break_tensor(&p->cache_leftpad); break;
            case 19:
                /* The serving arrays' contents: host copies (checked) or device arrays (trusted, clamped), or a host
                   copy without its device array. */
                if (chance(4)) p->cache_batch_idx_host = g_idx_host;
                else if (chance(3)) p->cache_leftpad_host = g_pad_host;
                else if (chance(2)) break_ints(chance(2) ? g_idx_host : g_pad_host, (int)b);
                else break_ints(image_ints(chance(2) ? S_CUQ : S_CUK), (int)b);
                break;
            case 20: break_tensor(chance(2) ? &p->k_descale : &p->v_descale); break;
            case 21:
                /* The fp8 cache's pairing (0.13): a descale on a 16-bit cache, one missing, one cache of the other
                   dtype, an fp8 q or k_new. */
                switch (r(5)) {
                    case 0: t1(chance(2) ? &p->k_descale : &p->v_descale, descale_slot(2), FA_DTYPE_FLOAT32, 1); break;
                    case 1: memset(chance(2) ? &p->k_descale : &p->v_descale, 0, sizeof(fa_tensor_t)); break;
                    case 2: (chance(2) ? &p->k_cache : &p->v_cache)->dtype = fp8_cache ? dtype : FA_DTYPE_FLOAT8_E4M3; break;
                    case 3: p->q.dtype = FA_DTYPE_FLOAT8_E4M3; break;
                    default: p->k_new.dtype = FA_DTYPE_FLOAT8_E4M3; break;
                }
                break;
            default:
                /* Contents: the host copy (checked), the device lengths and block table (trusted, clamped). */
                if (chance(2)) break_ints(g_seq_host, (int)b);
                else if (chance(2)) break_ints(image_ints(S_SEQ), (int)b);
                else break_ints(image_ints(S_BT), 8);
                break;
        }
    }
    /* The host copy is read for q.shape[0] sequences: a caller's array holds that many. */
    if (p->q.shape[0] > HOST_CAP || p->q.shape[0] < 0) {
        p->cache_seqlens_host = NULL;
        p->cache_batch_idx_host = p->cache_leftpad_host = NULL;
    }
}

/* ---- the capability query ------------------------------------------------------------------------------------------- */

static void build_query(fa_support_query_t* q) {
    memset(q, 0, sizeof(*q));
    q->struct_size = chance(8) ? (uint32_t)r((int64_t)sizeof(*q) + 16) : (uint32_t)sizeof(*q);
    q->pass = (int32_t)(chance(6) ? wild_int() : r(3));
    q->compute_capability = (int32_t)(chance(4) ? wild_int() : (chance(2) ? 0 : 80 + r(21)));
    q->dtype = (int32_t)(chance(6) ? wild_int() : 1 + r(5));  /* 5: FA_DTYPE_FLOAT8_E4M3 */
    q->head_dim = (int32_t)(chance(3) ? wild_int() : 8 * (1 + r(40)));
    q->causal = (int32_t)(chance(8) ? wild_int() : r(2));
    q->window = (int32_t)(chance(8) ? wild_int() : r(2));
    q->softcap = (int32_t)(chance(8) ? wild_int() : r(2));
    q->varlen = (int32_t)(chance(8) ? wild_int() : r(2));
    q->kernel_path = (int32_t)(chance(6) ? wild_int() : r(3));
    /* C ABI 0.13: the decode's KV cache dtype (0: q's), sometimes e4m3, sometimes anything. */
    q->kv_cache_dtype = (int32_t)(chance(2) ? 0 : chance(6) ? wild_int() : r(6));
}

/* ---- the runs ------------------------------------------------------------------------------------------------------------ */

static int wild_cc(void) {
    static const int values[] = {0, 80, 86, 89, 90, 100, 120, 75, 70, -1, 1000};
    return values[r((int64_t)(sizeof(values) / sizeof(values[0])))];
}

/* Resets the image (poison, then the int arrays a builder writes). */
static void reset_image(void) {
    const float one = 1.0f;
    size_t i;
    memset(g_image, POISON, ARENA_BYTES);
    for (i = 0; i < 3 * DESC_BYTES; i += sizeof one) memcpy(g_image + SLOT_BYTES * S_DESC + i, &one, sizeof one);
    memset(image_ints(S_CUQ), 0, SLOT_BYTES);
    memset(image_ints(S_CUK), 0, SLOT_BYTES);
    memset(image_ints(S_SEQ), 0, SLOT_BYTES);
    memset(image_ints(S_BT), 0, SLOT_BYTES);
}

static int faults_of_case(void) { return g_case_faults = chance(4) ? 0 : 1 + (int)r(4); }

/* A known-valid call of each pass (head dim FA_TEST_HEAD_DIM): must succeed. */
static void valid_calls(fa_context_t context, void* stream) {
    fa_forward_params_t f;
    fa_backward_params_t bw;
    fa_decode_params_t dc;
    const int64_t d = FA_TEST_HEAD_DIM;
    reset_image();
    fa_forward_params_init(&f, sizeof f);
    t4(&f.q, slot(S_Q), FA_DTYPE_FLOAT16, 2, 17, 4, d);
    t4(&f.k, slot(S_K), FA_DTYPE_FLOAT16, 2, 33, 2, d);
    t4(&f.v, slot(S_V), FA_DTYPE_FLOAT16, 2, 33, 2, d);
    t4(&f.out, slot(S_OUT), FA_DTYPE_FLOAT16, 2, 17, 4, d);
    t3(&f.lse, slot(S_LSE), FA_DTYPE_FLOAT32, 2, 4, 17);
    f.causal = 1;
    fa_backward_params_init(&bw, sizeof bw);
    bw.q = f.q; bw.k = f.k; bw.v = f.v; bw.out = f.out; bw.lse = f.lse; bw.causal = 1;
    bw.dout = f.out; bw.dout.data = slot(S_DOUT);
    bw.dq = f.q; bw.dq.data = slot(S_DQ);
    bw.dk = f.k; bw.dk.data = slot(S_DK);
    bw.dv = f.v; bw.dv.data = slot(S_DV);
    fa_decode_params_init(&dc, sizeof dc);
    t4(&dc.q, slot(S_Q), FA_DTYPE_FLOAT16, 2, 1, 4, d);
    t4(&dc.out, slot(S_OUT), FA_DTYPE_FLOAT16, 2, 1, 4, d);
    t4(&dc.k_cache, slot(S_K), FA_DTYPE_FLOAT16, 2, 32, 2, d);
    t4(&dc.v_cache, slot(S_V), FA_DTYPE_FLOAT16, 2, 32, 2, d);
    t1(&dc.cache_seqlens, slot(S_SEQ), FA_DTYPE_INT32, 2);
    image_ints(S_SEQ)[0] = 5;
    image_ints(S_SEQ)[1] = 32;
    CHECK(fa_forward_check(&f, 0) == FA_STATUS_SUCCESS, "%s case %d: known-valid forward check: %s", g_pass, g_case,
          fa_last_error_message());
    CHECK(fa_backward_check(&bw, 0) == FA_STATUS_SUCCESS, "%s case %d: known-valid backward check: %s", g_pass, g_case,
          fa_last_error_message());
    CHECK(fa_decode_check(&dc, 0) == FA_STATUS_SUCCESS, "%s case %d: known-valid decode check: %s", g_pass, g_case,
          fa_last_error_message());
    if (context == NULL) return;
    load_arena();
    CHECK(fa_forward(context, &f, stream) == FA_STATUS_SUCCESS && fa_stream_synchronize(stream) == FA_STATUS_SUCCESS,
          "%s case %d: a known-valid forward failed (sticky error?): %s", g_pass, g_case, fa_last_error_message());
    CHECK(fa_backward(context, &bw, stream) == FA_STATUS_SUCCESS && fa_stream_synchronize(stream) == FA_STATUS_SUCCESS,
          "%s case %d: a known-valid backward failed (sticky error?): %s", g_pass, g_case, fa_last_error_message());
    CHECK(fa_decode(context, &dc, stream) == FA_STATUS_SUCCESS && fa_stream_synchronize(stream) == FA_STATUS_SUCCESS,
          "%s case %d: a known-valid decode failed (sticky error?): %s", g_pass, g_case, fa_last_error_message());
}

static void fuzz(fa_context_t context, void* stream, int cases) {
    int pass;
    for (pass = 0; pass < 4; ++pass) {
        static const char* names[] = {"forward", "backward", "decode", "query"};
        const int64_t calls_before = g_calls, refused_before = g_refused, reports_before = g_device_reports;
        g_pass = names[pass];
        for (g_case = 0; g_case < cases; ++g_case) {
            const int cc = wild_cc();
            fa_status_t st;
            reset_image();
            if (pass == 0) {
                fa_forward_params_t p;
                build_forward(&p, faults_of_case());
                judge("fa_forward_check", fa_forward_check(&p, cc));
                if (context != NULL) {
                    load_arena();
                    st = judge("fa_forward", fa_forward(context, &p, stream));
                    after_call(context, "fa_forward", st, stream);
                }
            } else if (pass == 1) {
                fa_backward_params_t p;
                size_t bytes = 0;
                build_backward(&p, faults_of_case());
                judge("fa_backward_check", fa_backward_check(&p, cc));
                if (context != NULL) {
                    judge("fa_backward_workspace_size", fa_backward_workspace_size(context, &p, &bytes));
                    load_arena();
                    st = judge("fa_backward", fa_backward(context, &p, stream));
                    after_call(context, "fa_backward", st, stream);
                }
            } else if (pass == 2) {
                fa_decode_params_t p;
                size_t bytes = 0;
                int32_t splits = 0;
                build_decode(&p, faults_of_case());
                judge("fa_decode_check", fa_decode_check(&p, cc));
                if (context != NULL) {
                    judge("fa_decode_workspace_size", fa_decode_workspace_size(context, &p, &bytes));
                    judge("fa_decode_num_splits", fa_decode_num_splits(context, &p, &splits));
                    load_arena();
                    st = judge("fa_decode", fa_decode(context, &p, stream));
                    after_call(context, "fa_decode", st, stream);
                }
            } else {
                fa_support_query_t q;
                build_query(&q);
                judge("fa_query_support", fa_query_support(&q));
            }
            if ((g_case + 1) % VALID_EVERY == 0) valid_calls(context, stream);
        }
        printf("  %-8s %d cases, %lld calls, %lld refused, %lld device reports\n", g_pass, cases,
               (long long)(g_calls - calls_before), (long long)(g_refused - refused_before),
               (long long)(g_device_reports - reports_before));
    }
}

int main(int argc, char** argv) {
    uint64_t seed = 0;
    int32_t count = 0;
    int cases = 2000;
    fa_context_t context = NULL;
    void* stream = NULL;
    const char* env = getenv("FA_FUZZ_CASES");
    if (!test_seed_from_args(argc, argv, "fuzz_abi", &seed)) return 2;
    g_rng = rng_state_from_seed(seed);
    if (env != NULL && atoi(env) > 0) cases = atoi(env);
    g_image = (unsigned char*)malloc(ARENA_BYTES);
    g_readback = (unsigned char*)malloc(ARENA_BYTES);
    g_host_block = malloc(ARENA_BYTES);
    if (g_image == NULL || g_readback == NULL || g_host_block == NULL) {
        printf("fuzz_abi: out of host memory\n");
        return 1;
    }
    memset(g_host_block, POISON, ARENA_BYTES);
    if (fa_device_count(&count) == FA_STATUS_SUCCESS && count > 0) {
        fa_device_properties_t props;
        memset(&props, 0, sizeof props);
        props.struct_size = sizeof props;
        if (fa_device_get_properties(0, &props) == FA_STATUS_SUCCESS && props.major >= 8) g_gpu = 1;
    }
    if (g_gpu) {
        void* arena = NULL;
        CHECK(fa_context_create(0, &context) == FA_STATUS_SUCCESS, "context: %s", fa_last_error_message());
        CHECK(fa_stream_create(0, &stream) == FA_STATUS_SUCCESS, "stream: %s", fa_last_error_message());
        CHECK(fa_memory_alloc(0, ARENA_BYTES, &arena) == FA_STATUS_SUCCESS, "arena: %s", fa_last_error_message());
        CHECK(fa_memory_alloc(0, 1 << 20, &g_freed) == FA_STATUS_SUCCESS, "freed block: %s", fa_last_error_message());
        CHECK(fa_memory_free(0, g_freed) == FA_STATUS_SUCCESS, "free: %s", fa_last_error_message());
        if (g_failed != 0) return 1;
        g_arena = (unsigned char*)arena;
        printf("fuzz_abi: GPU run (checks and real calls), %d cases per pass\n", cases);
    } else {
        g_arena = (unsigned char*)(uintptr_t)0x7f0000000000ull;  /* made up: the checks never dereference it */
        g_freed = (void*)(uintptr_t)0x7e0000000000ull;
        printf("fuzz_abi: no usable GPU: checks only, %d cases per pass\n", cases);
    }
    fuzz(context, stream, cases);
    valid_calls(context, stream);
    if (g_gpu) {
        CHECK(fa_memory_free(0, g_arena) == FA_STATUS_SUCCESS, "arena free: %s", fa_last_error_message());
        fa_stream_destroy(stream);
        fa_context_destroy(context);
    }
    free(g_image);
    free(g_readback);
    free(g_host_block);
    printf("fuzz_abi: %lld calls (%lld accepted, %lld refused); %d checks passed, %d failed; seed %llu\n",
           (long long)g_calls, (long long)g_accepted, (long long)g_refused, g_passed, g_failed,
           (unsigned long long)seed);
    return g_failed == 0 ? 0 : 1;
}
