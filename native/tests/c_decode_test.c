/*
 * c_decode_test.c - tests the decode part of the C ABI (fa_decode_params_init, fa_decode_check,
 * fa_decode_workspace_size, fa_decode_num_splits, fa_decode) from plain C99, the way another language's
 * binding sees it: only flash_attention.h.
 *
 * Everywhere: the defaults of fa_decode_params_init, argument validation through fa_decode_check (bad
 * inputs with the expected status and a message naming the argument), the capability query and the kernel
 * names of the decode pass.
 * With a GPU (compute capability >= 8.0), against a float64 reference written here, outputs poisoned first
 * and cache slots past every sequence filled with NaN: contiguous and paged caches (shuffled block tables,
 * block sizes 16..256), ragged cache lengths with 0 and 1, appends that cross a page end, several new
 * tokens with a causal mask, windows, softcap, GQA, forced and automatic split counts, caller and library
 * workspaces, and a CUDA graph replay. The cache after the call must hold exactly the appended rows.
 * Serving options (C ABI 0.7): cache_batch_idx over a shuffled pool (contiguous rows and block-table rows, rows no
 * sequence uses all NaN and untouched), cache_leftpad (0, mid, all cached keys, the whole sequence; NaN before each
 * pad), appended counts above and below seqlen_q, with masks, GQA, paging and forced splits; every refusal of
 * their host copies; device-only values outside the pool or the sequence reported by fa_context_check; a
 * 0.6-sized struct.
 * Rotary embedding (C ABI 0.8): every refusal of the rotary block (odd, non-multiple-of-16 or too large rotary_dim,
 * a table too short, rotary without an append, a missing table) and a 0.7-sized struct; with a GPU, both layouts,
 * partial rotary_dim, with a batch index, pads and paging, causal (queries at their own positions) and not, more
 * queries than appended keys, the stored keys checked against the float64 rotation, and a captured step.
 *
 * Prints one line per failure, a summary, and returns nonzero if anything failed.
 */
#include "flash_attention.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef FA_TEST_HEAD_DIM
#define FA_TEST_HEAD_DIM 64
#endif

#include "c_test_util.h"

static double to_double(int dtype, uint16_t x) {
    return dtype == FA_DTYPE_BFLOAT16 ? bf16_to_double(x) : half_to_double(x);
}

static uint16_t nan16(int dtype) {
    return dtype == FA_DTYPE_BFLOAT16 ? 0x7fc0u : 0x7e00u;
}

/* ---- random numbers (seeded in main: clock, --seed N or FA_TEST_SEED; the seed is printed) ------------ */

static uint64_t g_rng = 0;

static double uniform01(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (double)((g_rng * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}

static uint16_t random16(int dtype) {
    const float x = (float)(uniform01() * 4.0 - 2.0);
    return dtype == FA_DTYPE_BFLOAT16 ? float_to_bf16(x) : float_to_half(x);
}

/* ---- tensors ------------------------------------------------------------------------------------------ */

static void set4(fa_tensor_t* t, void* data, int32_t dtype, int64_t n0, int64_t n1, int64_t n2, int64_t n3) {
    const int64_t shape[4] = {n0, n1, n2, n3};
    set_dense(t, data, dtype, 4, shape);
}

/* ---- validation (no GPU needed) ---------------------------------------------------------------------- */

enum { VB = 3, VSQ = 2, VHQ = 8, VHKV = 2, VCAP = 64, VBLOCK = 16, VPAGES = 4, VNBLOCKS = 20 };

#define ADDR(n) ((void*)(uintptr_t)((uint64_t)(n) << 32))

/* A valid paged call with append on made-up, aligned, disjoint addresses: fa_decode_check never
   dereferences device pointers. */
static fa_decode_params_t valid_params(int paged) {
    fa_decode_params_t p;
    const int64_t d = FA_TEST_HEAD_DIM;
    const int64_t lens_shape[1] = {VB};
    const int64_t table_shape[2] = {VB, VPAGES};
    const int64_t lse_shape[3] = {VB, VHQ, VSQ};
    fa_decode_params_init(&p, sizeof p);
    set4(&p.q, ADDR(1), FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, d);
    if (paged) {
        set4(&p.k_cache, ADDR(2), FA_DTYPE_BFLOAT16, VNBLOCKS, VBLOCK, VHKV, d);
        set4(&p.v_cache, ADDR(3), FA_DTYPE_BFLOAT16, VNBLOCKS, VBLOCK, VHKV, d);
        set_dense(&p.block_table, ADDR(4), FA_DTYPE_INT32, 2, table_shape);
    } else {
        set4(&p.k_cache, ADDR(2), FA_DTYPE_BFLOAT16, VB, VCAP, VHKV, d);
        set4(&p.v_cache, ADDR(3), FA_DTYPE_BFLOAT16, VB, VCAP, VHKV, d);
    }
    set4(&p.k_new, ADDR(5), FA_DTYPE_BFLOAT16, VB, VSQ, VHKV, d);
    set4(&p.v_new, ADDR(6), FA_DTYPE_BFLOAT16, VB, VSQ, VHKV, d);
    set4(&p.out, ADDR(7), FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, d);
    set_dense(&p.lse, ADDR(8), FA_DTYPE_FLOAT32, 3, lse_shape);
    set_dense(&p.cache_seqlens, ADDR(9), FA_DTYPE_INT32, 1, lens_shape);
    p.causal = 1;
    return p;
}

static void test_params_init(void) {
    fa_decode_params_t p;
    unsigned char big[sizeof(fa_decode_params_t) + 32];
    size_t i;
    int tail_zero = 1;
    memset(&p, 0xAB, sizeof p);
    expect("decode_params_init", fa_decode_params_init(&p, sizeof p), FA_STATUS_SUCCESS, NULL);
    CHECK(p.struct_size == sizeof p, "struct_size %u", (unsigned)p.struct_size);
    CHECK(p.window_left == -1 && p.window_right == -1, "window defaults %d %d", (int)p.window_left, (int)p.window_right);
    CHECK(p.num_splits == 0 && p.causal == 0 && p.softcap == 0.0f && p.softmax_scale == 0.0f,
          "num_splits/causal/softcap/scale defaults");
    CHECK(p.q.data == NULL && p.block_table.data == NULL && p.k_new.data == NULL && p.workspace == NULL &&
              p.cache_seqlens_host == NULL && p.workspace_size == 0,
          "tensors and pointers must start zeroed");
    memset(big, 0xAB, sizeof big);
    expect("decode_params_init(larger)", fa_decode_params_init((fa_decode_params_t*)(void*)big, sizeof big),
           FA_STATUS_SUCCESS, NULL);
    for (i = sizeof(fa_decode_params_t); i < sizeof big; ++i) {
        tail_zero &= big[i] == 0;
    }
    CHECK(tail_zero, "a newer caller's unknown tail must be zeroed");
    expect("decode_params_init(small)", fa_decode_params_init(&p, 16), FA_STATUS_INVALID_ARGUMENT, "struct_size is 16");
    expect("decode_params_init(NULL)", fa_decode_params_init(NULL, sizeof p), FA_STATUS_INVALID_ARGUMENT,
           "params is NULL");
}

/* One mutation of a valid call and what fa_decode_check must say about it. */
static void bad(const char* label, const fa_decode_params_t* p, fa_status_t want, const char* needle) {
    expect(label, fa_decode_check(p, 0), want, needle);
}

/* cache_batch_idx, cache_leftpad and seqlen_knew != seqlen_q (C ABI 0.7): what is accepted, every refusal with the
   argument it names, and a 0.6-sized struct (the serving fields unread). */
static void set_serving(fa_decode_params_t* p, int batch_idx, int leftpad) {
    const int64_t shape[1] = {VB};
    if (batch_idx) set_dense(&p->cache_batch_idx, ADDR(10), FA_DTYPE_INT32, 1, shape);
    if (leftpad) set_dense(&p->cache_leftpad, ADDR(11), FA_DTYPE_INT32, 1, shape);
}

static void test_serving_validation(void) {
    fa_decode_params_t p;
    int32_t idx[VB] = {4, 0, 2}, pads[VB] = {0, 0, 0};
    int32_t lens[VB] = {10, 0, VPAGES * VBLOCK - VSQ};
    int paged, sk;
    char label[96];

    /* Appended counts other than q's (more and fewer), with and without the options. */
    for (paged = 0; paged <= 1; ++paged) {
        for (sk = 1; sk <= 5; sk += 2) {
            p = valid_params(paged);
            p.k_new.shape[1] = p.v_new.shape[1] = sk;
            sprintf(label, "%s, seqlen_knew %d, seqlen_q %d", paged ? "paged" : "contiguous", sk, VSQ);
            expect(label, fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
        }
    }
    p = valid_params(0); p.k_new.shape[1] = p.v_new.shape[1] = VCAP + 1;
    bad("seqlen_knew past the capacity", &p, FA_STATUS_INVALID_ARGUMENT, "fewer than the 65 new tokens k_new appends");
    p = valid_params(0); p.k_new.shape[1] = p.v_new.shape[1] = 0;
    bad("seqlen_knew 0", &p, FA_STATUS_INVALID_ARGUMENT, "k_new.shape[1] (seqlen_knew) is 0");

    /* A pool larger than the batch (contiguous: k_cache rows; paged: block_table rows), host copies inside it. */
    p = valid_params(0); set_serving(&p, 1, 1);
    p.k_cache.shape[0] = p.v_cache.shape[0] = 5;
    expect("contiguous pool of 5 rows, batch 3", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.cache_batch_idx_host = idx;
    p.cache_leftpad_host = pads;
    expect("contiguous pool, host copies", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = valid_params(1); set_serving(&p, 1, 1);
    p.block_table.shape[0] = 5;
    p.cache_batch_idx_host = idx;
    expect("paged pool of 5 table rows, batch 3", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.block_table.shape[0] = 1; idx[0] = 0; idx[2] = 0;
    expect("paged pool of 1 table row (every sequence reads it)", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    idx[0] = 4; idx[2] = 2;
    p = valid_params(0); p.k_cache.shape[0] = p.v_cache.shape[0] = 5;
    bad("pool without cache_batch_idx", &p, FA_STATUS_INVALID_ARGUMENT, "k_cache.shape[0] (batch) is 5");

    /* The device arrays. */
    p = valid_params(0); set_serving(&p, 1, 0); p.cache_batch_idx.dtype = FA_DTYPE_FLOAT32;
    bad("cache_batch_idx fp32", &p, FA_STATUS_INVALID_ARGUMENT, "cache_batch_idx.dtype");
    p = valid_params(0); set_serving(&p, 1, 0);
    p.cache_batch_idx.rank = 2; p.cache_batch_idx.shape[1] = 1; p.cache_batch_idx.strides[1] = 1;
    bad("cache_batch_idx rank 2", &p, FA_STATUS_INVALID_ARGUMENT, "cache_batch_idx.rank is 2");
    p = valid_params(1); set_serving(&p, 1, 0); p.cache_batch_idx.shape[0] = VB + 1;
    bad("cache_batch_idx length", &p, FA_STATUS_INVALID_ARGUMENT, "cache_batch_idx.shape[0] (batch) is 4");
    p = valid_params(0); set_serving(&p, 1, 0); p.cache_batch_idx.data = (void*)((uintptr_t)p.cache_batch_idx.data + 2);
    bad("cache_batch_idx misaligned", &p, FA_STATUS_INVALID_ARGUMENT, "cache_batch_idx");
    p = valid_params(0); set_serving(&p, 0, 1); p.cache_leftpad.dtype = FA_DTYPE_FLOAT16;
    bad("cache_leftpad fp16", &p, FA_STATUS_INVALID_ARGUMENT, "cache_leftpad.dtype");
    p = valid_params(1); set_serving(&p, 0, 1); p.cache_leftpad.shape[0] = VB - 1;
    bad("cache_leftpad length", &p, FA_STATUS_INVALID_ARGUMENT, "cache_leftpad.shape[0] (batch) is 2");
    p = valid_params(0); set_serving(&p, 1, 0); p.out.data = p.cache_batch_idx.data;
    bad("out over cache_batch_idx", &p, FA_STATUS_INVALID_ARGUMENT, "overlaps cache_batch_idx");
    p = valid_params(1); set_serving(&p, 0, 1); p.k_cache.data = p.cache_leftpad.data;
    bad("appended k_cache over cache_leftpad", &p, FA_STATUS_INVALID_ARGUMENT, "overlaps cache_leftpad");

    /* Host copies: only with their device arrays, and inside the pool / the sequence. */
    p = valid_params(0); p.cache_batch_idx_host = idx;
    bad("cache_batch_idx_host alone", &p, FA_STATUS_INVALID_ARGUMENT,
        "cache_batch_idx_host is given but cache_batch_idx.data is NULL");
    p = valid_params(1); p.cache_leftpad_host = pads;
    bad("cache_leftpad_host alone", &p, FA_STATUS_INVALID_ARGUMENT,
        "cache_leftpad_host is given but cache_leftpad.data is NULL");
    p = valid_params(0); set_serving(&p, 1, 0); p.cache_batch_idx_host = idx;
    bad("host index = pool", &p, FA_STATUS_INVALID_ARGUMENT,
        "cache_batch_idx_host[0] is 4 but the pool of cache rows is k_cache.shape[0] (pool) = 3");
    p = valid_params(1); set_serving(&p, 1, 0); idx[1] = -1; p.cache_batch_idx_host = idx;
    p.block_table.shape[0] = 5;
    bad("host index -1", &p, FA_STATUS_INVALID_ARGUMENT,
        "cache_batch_idx_host[1] is -1 but the pool of cache rows is block_table.shape[0] (pool) = 5");
    idx[1] = 0;
    p = valid_params(0); set_serving(&p, 0, 1); pads[2] = -1; p.cache_leftpad_host = pads;
    bad("host leftpad -1", &p, FA_STATUS_INVALID_ARGUMENT, "cache_leftpad_host[2] is -1; a left pad must be 0 or more");
    p = valid_params(0); set_serving(&p, 0, 1); pads[2] = VCAP + 1; p.cache_leftpad_host = pads;
    bad("host leftpad past the capacity", &p, FA_STATUS_INVALID_ARGUMENT,
        "cache_leftpad_host[2] is 65, more than the 64 positions its cache has");
    /* With host lengths: up to the length with the new tokens (a pad at the very end leaves no key). */
    p = valid_params(1); set_serving(&p, 0, 1); pads[0] = 10 + VSQ; pads[1] = 0; pads[2] = 3;
    p.cache_leftpad_host = pads; p.cache_seqlens_host = lens;
    expect("host leftpad at the end of the appended keys", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    pads[0] = 10 + VSQ + 1;
    bad("host leftpad past the appended keys", &p, FA_STATUS_INVALID_ARGUMENT,
        "cache_leftpad_host[0] is 13 but sequence 0 ends at 12 (cache_seqlens_host[0] = 10 plus 2 new tokens)");
    p.k_new.data = p.v_new.data = NULL; pads[0] = 11;
    bad("host leftpad past the cache, no append", &p, FA_STATUS_INVALID_ARGUMENT,
        "cache_leftpad_host[0] is 11 but sequence 0 ends at 10 (cache_seqlens_host[0] = 10)");
    pads[0] = 0;

    /* A caller compiled against 0.6: its struct ends at workspace_size; whatever lies after it is not read. */
    {
        unsigned char buf[sizeof(fa_decode_params_t)];
        fa_decode_params_t* old = (fa_decode_params_t*)(void*)buf;
        const size_t size_06 = offsetof(fa_decode_params_t, cache_batch_idx);
        size_t i;
        int tail_untouched = 1;
        memset(buf, 0xAB, sizeof buf);
        expect("decode_params_init(0.6 size)", fa_decode_params_init(old, size_06), FA_STATUS_SUCCESS, NULL);
        for (i = size_06; i < sizeof buf; ++i) tail_untouched &= buf[i] == 0xAB;
        CHECK(tail_untouched, "fa_decode_params_init(0.6 size) wrote past the caller's struct");
        p = valid_params(1);
        memcpy(buf, &p, size_06);
        old->struct_size = (uint32_t)size_06;
        expect("0.6-sized struct, garbage after it", fa_decode_check(old, 0), FA_STATUS_SUCCESS, NULL);
        old->k_new.shape[1] = old->v_new.shape[1] = 1;
        expect("0.6-sized struct, one appended key for two queries", fa_decode_check(old, 0), FA_STATUS_SUCCESS, NULL);
        old->struct_size = (uint32_t)size_06 - 8;
        expect("struct smaller than 0.6", fa_decode_check(old, 0), FA_STATUS_INVALID_ARGUMENT, "for version 0.6");
    }
}

/* ALiBi (0.8): fa_decode_params_t.alibi_slopes, [heads_q] or [batch, heads_q] fp32; a 0.7-sized struct reads none. */
static void test_alibi_validation(void) {
    fa_decode_params_t p = valid_params(0);
    const int64_t per_head[1] = {VHQ};
    const int64_t per_batch[2] = {VB, VHQ};
    const int64_t wrong_batch[2] = {VB + 1, VHQ};
    const int64_t per_kv_head[1] = {VHKV};
    set_dense(&p.alibi_slopes, ADDR(12), FA_DTYPE_FLOAT32, 1, per_head);
    expect("decode alibi [heads_q]", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    set_dense(&p.alibi_slopes, ADDR(12), FA_DTYPE_FLOAT32, 2, per_batch);
    expect("decode alibi [batch, heads_q]", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    set_serving(&p, 0, 1);
    expect("decode alibi with leftpad", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = valid_params(1);
    set_dense(&p.alibi_slopes, ADDR(12), FA_DTYPE_FLOAT32, 1, per_head);
    expect("decode alibi paged", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    set_dense(&p.alibi_slopes, ADDR(12), FA_DTYPE_FLOAT32, 2, wrong_batch);
    bad("decode alibi wrong batch", &p, FA_STATUS_INVALID_ARGUMENT,
        "its first dimension must be the batch, q.shape[0] (batch) = 3");
    set_dense(&p.alibi_slopes, ADDR(12), FA_DTYPE_FLOAT32, 1, per_kv_head);
    bad("decode alibi per kv head", &p, FA_STATUS_INVALID_ARGUMENT, "its last dimension must be heads_q");
    set_dense(&p.alibi_slopes, ADDR(12), FA_DTYPE_BFLOAT16, 1, per_head);
    bad("decode alibi bf16", &p, FA_STATUS_INVALID_ARGUMENT, "alibi_slopes must be FA_DTYPE_FLOAT32");
    set_dense(&p.alibi_slopes, (void*)((uintptr_t)ADDR(12) + 2), FA_DTYPE_FLOAT32, 1, per_head);
    bad("decode alibi misaligned", &p, FA_STATUS_INVALID_ARGUMENT, "is not 4-byte aligned");
    set_dense(&p.alibi_slopes, (void*)((uintptr_t)p.out.data + 64), FA_DTYPE_FLOAT32, 1, per_head);
    bad("decode alibi inside out", &p, FA_STATUS_INVALID_ARGUMENT, "alibi_slopes");
    /* a 0.7 caller: its struct ends before alibi_slopes, which is then never read */
    set_dense(&p.alibi_slopes, (void*)(uintptr_t)3, 99, 1, per_head);
    p.struct_size = (uint32_t)offsetof(fa_decode_params_t, alibi_slopes);
    expect("decode 0.7 struct_size: alibi ignored", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.struct_size = (uint32_t)sizeof(fa_decode_params_t);
    bad("decode 0.8 struct_size reads alibi", &p, FA_STATUS_INVALID_ARGUMENT, "alibi_slopes");
}

/* Rotary embedding (C ABI 0.8): the defaults, what is accepted, every refusal (before anything is written: these
   run through fa_decode_check, which launches nothing), and a 0.7-sized struct (the rotary block unread). */
static void set_rotary(fa_decode_params_t* p, int32_t dim, int32_t rows) {
    p->rotary_cos = ADDR(12);
    p->rotary_sin = ADDR(13);
    p->rotary_dim = dim;
    p->rotary_seqlen = rows;
}

static void test_rotary_validation(void) {
    fa_decode_params_t p;
    const int32_t d = FA_TEST_HEAD_DIM;
    int32_t lens[VB] = {10, 0, VPAGES * VBLOCK - VSQ};
    int paged, inter, dim;
    char label[96];

    fa_decode_params_init(&p, sizeof p);
    CHECK(p.rotary_cos == NULL && p.rotary_sin == NULL && p.rotary_dim == 0 && p.rotary_seqlen == 0 &&
              p.rotary_interleaved == 1 && p.reserved1 == 0,
          "rotary defaults: no tables, interleaved 1 (flash-attn's default)");
    for (paged = 0; paged <= 1; ++paged) {
        for (inter = 0; inter <= 1; ++inter) {
            for (dim = 16; dim <= d; dim += 16) {
                p = valid_params(paged); set_rotary(&p, dim, VCAP); p.rotary_interleaved = inter;
                sprintf(label, "rotary %s, %s, dim %d", paged ? "paged" : "contiguous", inter ? "interleaved" : "half-split", dim);
                expect(label, fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
            }
        }
    }
    /* Leftover fields without tables are ignored. */
    p = valid_params(0); p.rotary_dim = 7; p.rotary_seqlen = 1;
    expect("rotary_dim without tables", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);

    p = valid_params(0); set_rotary(&p, 15, VCAP);
    bad("rotary_dim odd", &p, FA_STATUS_INVALID_ARGUMENT, "rotary_dim is 15, which is odd");
    p = valid_params(1); set_rotary(&p, 24, VCAP);
    bad("rotary_dim 24", &p, FA_STATUS_INVALID_ARGUMENT, "rotary_dim is 24; it must be a positive multiple of 16");
    p = valid_params(0); set_rotary(&p, 0, VCAP);
    bad("rotary_dim 0", &p, FA_STATUS_INVALID_ARGUMENT, "rotary_dim is 0; it must be a positive multiple of 16");
    p = valid_params(0); set_rotary(&p, d + 16, VCAP);
    sprintf(label, "rotary_dim is %d but the head dim (q.shape[3]) is %d", (int)(d + 16), (int)d);
    bad("rotary_dim above the head dim", &p, FA_STATUS_INVALID_ARGUMENT, label);
    p = valid_params(1); set_rotary(&p, 16, VCAP - 1);
    bad("rotary table too short (paged)", &p, FA_STATUS_INVALID_ARGUMENT,
        "rotary table too short: rotary_seqlen is 63 rows but the cache holds 64 positions");
    p = valid_params(0); set_rotary(&p, 16, VCAP - 1);
    bad("rotary table too short (contiguous)", &p, FA_STATUS_INVALID_ARGUMENT, "rotary table too short");
    p = valid_params(0); set_rotary(&p, 16, VCAP); p.k_new.data = p.v_new.data = NULL;
    bad("rotary without k_new", &p, FA_STATUS_INVALID_ARGUMENT, "rotary_cos/rotary_sin are given but k_new/v_new are not");
    p = valid_params(0); set_rotary(&p, 16, VCAP); p.rotary_cos = NULL;
    bad("rotary_cos NULL", &p, FA_STATUS_INVALID_ARGUMENT, "rotary_sin is set but rotary_cos is NULL");
    p = valid_params(1); set_rotary(&p, 16, VCAP); p.rotary_sin = NULL;
    bad("rotary_sin NULL", &p, FA_STATUS_INVALID_ARGUMENT, "rotary_cos is set but rotary_sin is NULL");
    p = valid_params(0); set_rotary(&p, 16, VCAP); p.rotary_interleaved = 2;
    bad("rotary_interleaved 2", &p, FA_STATUS_INVALID_ARGUMENT, "rotary_interleaved is 2; it must be 0 or 1");
    p = valid_params(0); p.reserved1 = 3;
    bad("reserved1", &p, FA_STATUS_INVALID_ARGUMENT, "reserved1 is 3; it is reserved and must be 0");
    p = valid_params(0); set_rotary(&p, 16, VCAP); p.rotary_sin = (const void*)((uintptr_t)p.rotary_sin + 8);
    bad("rotary_sin misaligned", &p, FA_STATUS_INVALID_ARGUMENT, "rotary_sin (");
    p = valid_params(0); set_rotary(&p, 16, VCAP); p.out.data = (void*)(uintptr_t)p.rotary_cos;
    bad("out over rotary_cos", &p, FA_STATUS_INVALID_ARGUMENT, "overlaps rotary_cos");
    p = valid_params(1); set_rotary(&p, 16, VCAP); p.k_cache.data = (void*)(uintptr_t)p.rotary_sin;
    bad("appended k_cache over rotary_sin", &p, FA_STATUS_INVALID_ARGUMENT, "overlaps rotary_sin");

    /* More queries than appended keys, per-row positions (causal): query i at cache_seqlens + i may pass the
       capacity; without host lengths the table must cover capacity - seqlen_knew + seqlen_q rows. */
    p = valid_params(0); set_rotary(&p, 16, VCAP); p.k_new.shape[1] = p.v_new.shape[1] = 1;
    bad("causal, seqlen_q 2 > seqlen_knew 1, table of the capacity", &p, FA_STATUS_INVALID_ARGUMENT,
        "reaches position 64 for a full cache; give cache_seqlens_host (checked exactly) or a table of 65 rows");
    p.rotary_seqlen = VCAP + 1;
    expect("causal, seqlen_q > seqlen_knew, a longer table", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.rotary_seqlen = VCAP; p.causal = 0;
    expect("not causal: every query at cache_seqlens", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.window_left = 8;
    bad("windowed: per-row positions again", &p, FA_STATUS_INVALID_ARGUMENT, "rotary table too short");
    p.window_left = VCAP;  /* a side of the capacity or more is no window (flash-attn): every query at cache_seqlens */
    expect("window_left = capacity: not per row", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.window_left = 0x7fffffff;
    expect("window_left = INT32_MAX: not per row", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.window_left = -1; p.window_right = VCAP;
    expect("window_right = capacity: not per row", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.window_right = VCAP - 1;
    bad("window_right below the capacity: per row", &p, FA_STATUS_INVALID_ARGUMENT, "rotary table too short");
    p.window_right = -1;
    p.window_left = -1; p.causal = 1; lens[2] = VCAP - 2; p.cache_seqlens_host = lens;
    expect("host lengths: the last query at 63", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    lens[2] = VCAP - 1;
    bad("host lengths: a query at 64", &p, FA_STATUS_INVALID_ARGUMENT,
        "rotary table too short: sequence 2 holds 63 tokens (cache_seqlens_host[2]) and its query 1 is rotated at "
        "position 64, past the 64 rows");

    /* A caller compiled against 0.7: its struct ends at cache_leftpad_host; what follows is not read. */
    {
        unsigned char buf[sizeof(fa_decode_params_t)];
        fa_decode_params_t* old = (fa_decode_params_t*)(void*)buf;
        const size_t size_07 = offsetof(fa_decode_params_t, alibi_slopes);
        size_t i;
        int tail_untouched = 1;
        CHECK(size_07 == offsetof(fa_decode_params_t, cache_leftpad_host) + sizeof(const int32_t*),
              "0.8's fields (alibi_slopes, then the rotary block) follow cache_leftpad_host directly");
        CHECK(offsetof(fa_decode_params_t, rotary_cos) == offsetof(fa_decode_params_t, alibi_slopes) + sizeof(fa_tensor_t),
              "the rotary block follows alibi_slopes");
        CHECK(sizeof(void*) != 8 ||
                  (size_07 == 960 && offsetof(fa_decode_params_t, cu_seqlens_q) == 960 + sizeof(fa_tensor_t) + 32),
              "0.8 appends alibi_slopes and the 32-byte rotary block to the 0.7 struct's 960");
        CHECK(offsetof(fa_decode_params_t, reserved1) + sizeof(int32_t) == offsetof(fa_decode_params_t, cu_seqlens_q),
              "reserved1 ends the 0.8 struct (0.12's per-sequence counts follow it directly)");
        CHECK(sizeof(void*) != 8 || offsetof(fa_decode_params_t, k_descale) == offsetof(fa_decode_params_t, cu_seqlens_q) +
                                                                             2 * sizeof(fa_tensor_t) + 2 * sizeof(void*) + 8,
              "0.12 appends two tensors, two host pointers and two int32 (max_seqlen_q, reserved2)");
        CHECK(offsetof(fa_decode_params_t, reserved2) + sizeof(int32_t) == offsetof(fa_decode_params_t, k_descale),
              "reserved2 ends the 0.12 struct (0.13's k_descale follows it directly)");
        CHECK(offsetof(fa_decode_params_t, v_descale) == offsetof(fa_decode_params_t, k_descale) + sizeof(fa_tensor_t) &&
                  offsetof(fa_decode_params_t, v_descale) + sizeof(fa_tensor_t) == sizeof(fa_decode_params_t),
              "0.13 appends k_descale and v_descale, and v_descale ends the struct");
        memset(buf, 0xAB, sizeof buf);
        expect("decode_params_init(0.7 size)", fa_decode_params_init(old, size_07), FA_STATUS_SUCCESS, NULL);
        for (i = size_07; i < sizeof buf; ++i) tail_untouched &= buf[i] == 0xAB;
        CHECK(tail_untouched, "fa_decode_params_init(0.7 size) wrote past the caller's struct");
        p = valid_params(1);
        memcpy(buf, &p, size_07);
        old->struct_size = (uint32_t)size_07;
        expect("0.7-sized struct, garbage where the rotary block would be", fa_decode_check(old, 0), FA_STATUS_SUCCESS,
               NULL);
        old->k_new.data = old->v_new.data = NULL;
        expect("0.7-sized struct without an append (no rotary read)", fa_decode_check(old, 0), FA_STATUS_SUCCESS, NULL);
    }
}

/* cu_seqlens_q / cu_seqlens_k_new (C ABI 0.12): packed queries and new keys, what is accepted and every refusal with
   the argument it names. */
static fa_decode_params_t counts_params(int paged, int packed_q, int packed_k) {
    fa_decode_params_t p = valid_params(paged);
    const int64_t d = FA_TEST_HEAD_DIM, cs[1] = {VB + 1};
    if (packed_q) {
        const int64_t qs[3] = {5, VHQ, d}, ls[2] = {VHQ, 5};
        set_dense(&p.q, ADDR(1), FA_DTYPE_BFLOAT16, 3, qs);
        set_dense(&p.out, ADDR(7), FA_DTYPE_BFLOAT16, 3, qs);
        set_dense(&p.lse, ADDR(8), FA_DTYPE_FLOAT32, 2, ls);
        set_dense(&p.cu_seqlens_q, ADDR(12), FA_DTYPE_INT32, 1, cs);
        p.max_seqlen_q = 3;
    }
    if (packed_k) {
        const int64_t ks[3] = {6, VHKV, d};
        set_dense(&p.k_new, ADDR(5), FA_DTYPE_BFLOAT16, 3, ks);
        set_dense(&p.v_new, ADDR(6), FA_DTYPE_BFLOAT16, 3, ks);
        set_dense(&p.cu_seqlens_k_new, ADDR(13), FA_DTYPE_INT32, 1, cs);
    }
    return p;
}

static void test_counts_validation(void) {
    fa_decode_params_t p;
    int32_t cuq[VB + 1] = {0, 2, 2, 5}, cuk[VB + 1] = {0, 1, 5, 6}, lens[VB] = {10, 0, 20};
    int paged, mode;
    char label[96];
    for (paged = 0; paged <= 1; ++paged) {
        for (mode = 1; mode <= 3; ++mode) {
            p = counts_params(paged, mode & 1, mode & 2);
            sprintf(label, "%s, %s%s", paged ? "paged" : "contiguous", mode & 1 ? "cu_seqlens_q " : "",
                    mode & 2 ? "cu_seqlens_k_new" : "");
            expect(label, fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
            p.cu_seqlens_q_host = mode & 1 ? cuq : NULL;
            p.cu_seqlens_k_new_host = mode & 2 ? cuk : NULL;
            p.cache_seqlens_host = lens;
            strcat(label, ", host copies");
            expect(label, fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
        }
    }
    p = counts_params(0, 1, 1);
    p.cu_seqlens_q_host = cuq;
    p.cu_seqlens_k_new_host = cuk;
    p.max_seqlen_q = 2;
    bad("a query count above max_seqlen_q", &p, FA_STATUS_INVALID_ARGUMENT, "sequence 2 has length 3");
    p.max_seqlen_q = 3;
    cuq[3] = 6;
    p.max_seqlen_q = 5;
    bad("cu_seqlens_q_host past q's rows", &p, FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_q_host[3] is 6, past the end of the 5 rows");
    p.max_seqlen_q = 3;
    cuq[3] = 5; cuq[2] = 1;
    bad("cu_seqlens_q_host decreasing", &p, FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_q_host[2] is 1, less than");
    cuq[2] = 2; cuq[0] = 1;
    bad("cu_seqlens_q_host not starting at 0", &p, FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_q_host[0] is 1");
    cuq[0] = 0; cuk[3] = 7;
    bad("cu_seqlens_k_new_host past k_new's rows", &p, FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_k_new_host[3] is 7");
    cuk[3] = 6;
    lens[1] = VCAP - 3;
    p.cache_seqlens_host = lens;
    bad("sequence 1's 4 new keys past the capacity", &p, FA_STATUS_INVALID_ARGUMENT, "and appends 4, 65 in all");
    lens[1] = 0;
    p = counts_params(0, 1, 0); p.max_seqlen_q = 0;
    bad("max_seqlen_q 0 with cu_seqlens_q", &p, FA_STATUS_INVALID_ARGUMENT, "max_seqlen_q is 0 with cu_seqlens_q");
    p = counts_params(0, 1, 0); p.cu_seqlens_q.shape[0] = 0;
    bad("cu_seqlens_q of no entries", &p, FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_q.shape[0] (batch + 1) is 0");
    p = counts_params(0, 1, 0); p.max_seqlen_q = 6;
    expect("max_seqlen_q above q's rows (a static bound, as FlashAttention-3 takes)", fa_decode_check(&p, 0),
           FA_STATUS_SUCCESS, NULL);
    p = valid_params(0); p.max_seqlen_q = 2;
    bad("max_seqlen_q without cu_seqlens_q", &p, FA_STATUS_INVALID_ARGUMENT, "max_seqlen_q is 2 but cu_seqlens_q.data is NULL");
    p = valid_params(0); p.cu_seqlens_q_host = cuq;
    bad("cu_seqlens_q_host alone", &p, FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_q_host is given but cu_seqlens_q.data is NULL");
    p = valid_params(0); p.cu_seqlens_k_new_host = cuk;
    bad("cu_seqlens_k_new_host alone", &p, FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_k_new_host is given but");
    p = counts_params(0, 0, 1); p.k_new.data = p.v_new.data = NULL;
    bad("cu_seqlens_k_new without k_new", &p, FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_k_new.data is set but k_new/v_new are not");
    p = counts_params(0, 1, 0); set4(&p.q, ADDR(1), FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, FA_TEST_HEAD_DIM);
    bad("rank-4 q with cu_seqlens_q", &p, FA_STATUS_INVALID_ARGUMENT, "q.rank is 4");
    p = counts_params(0, 1, 0); p.lse.shape[1] = 4;
    bad("lse not [heads_q, total_q]", &p, FA_STATUS_INVALID_ARGUMENT, "must be [heads_q, total_q]");
    p = counts_params(0, 1, 1); p.cu_seqlens_k_new.shape[0] = VB;
    bad("cu_seqlens_k_new of batch entries", &p, FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_k_new.shape[0] (batch + 1) is 3");
    p = counts_params(0, 1, 0); p.cache_seqlens.shape[0] = VB + 1;
    bad("cache_seqlens longer than cu_seqlens_q's batch", &p, FA_STATUS_INVALID_ARGUMENT, "cu_seqlens_q.shape[0] - 1 (batch)");
    p = counts_params(0, 0, 1); p.v_new.shape[0] = 5;
    bad("v_new rows differ from k_new's", &p, FA_STATUS_INVALID_ARGUMENT, "v_new.shape[0] (total_k_new) is 5");
    p = counts_params(0, 0, 1); p.k_new.shape[1] = p.v_new.shape[1] = VHKV + 1;
    bad("packed k_new heads", &p, FA_STATUS_INVALID_ARGUMENT, "k_new.shape[1] (heads_kv)");
    p = counts_params(0, 1, 1); p.reserved2 = 1;
    bad("reserved2", &p, FA_STATUS_INVALID_ARGUMENT, "reserved2");
    /* Rotary per query (causal) without cache_seqlens_host: each sequence's last query at capacity - added + queries - 1. */
    p = counts_params(0, 1, 1);
    p.rotary_cos = ADDR(14);
    p.rotary_sin = ADDR(15);
    p.rotary_dim = 16;
    p.rotary_seqlen = VCAP;
    bad("rotary table of the capacity, packed queries, unknown appends", &p, FA_STATUS_INVALID_ARGUMENT,
        "rotary table too short: rotary_seqlen is 64 rows");
    p.rotary_seqlen = VCAP + 3;
    expect("rotary table of capacity + max_seqlen_q", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.rotary_seqlen = VCAP;
    p.cu_seqlens_k_new.data = p.cu_seqlens_q.data;
    p.k_new.shape[0] = p.v_new.shape[0] = 5;
    expect("rotary table of the capacity, one array for both counts", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p.cu_seqlens_k_new.data = ADDR(13);
    p.cu_seqlens_q_host = cuq;
    p.cu_seqlens_k_new_host = cuk;
    p.k_new.shape[0] = p.v_new.shape[0] = 6;
    bad("rotary table of the capacity, host counts (sequence 2: 3 queries, 1 key)", &p, FA_STATUS_INVALID_ARGUMENT,
        "sequence 2 has 3 queries and appends 1 keys");
    /* Not causal: every query of a sequence is rotated at its cached length, which a sequence appending no key (a count
       of 0) and holding a full cache puts at the capacity itself, one past a table of capacity rows. */
    p = counts_params(0, 1, 1);
    p.causal = 0;
    p.rotary_cos = ADDR(14);
    p.rotary_sin = ADDR(15);
    p.rotary_dim = 16;
    p.rotary_seqlen = VCAP;
    {
        int32_t full[VB] = {VCAP, 10, 20}, cuk0[VB + 1] = {0, 0, 5, 6};
        p.cache_seqlens_host = full;
        p.cu_seqlens_k_new_host = cuk0;
        bad("not causal, a full cache appending 0 keys, a table of the capacity", &p, FA_STATUS_INVALID_ARGUMENT,
            "its query rows are rotated at position 64, past the 64 rows");
        p.rotary_seqlen = VCAP + 1;
        expect("the same with a table of capacity + 1 rows", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
        p.rotary_seqlen = VCAP;
        p.cache_seqlens_host = NULL;
        p.cu_seqlens_k_new_host = NULL;
        bad("not causal, unknown appended counts, a table of the capacity", &p, FA_STATUS_INVALID_ARGUMENT,
            "every query is rotated at cache_seqlens");
    }
    /* A 0.11-sized struct: the count fields are not read (a packed q is then a rank error). */
    p = counts_params(0, 1, 0);
    p.struct_size = (uint32_t)offsetof(fa_decode_params_t, cu_seqlens_q);
    bad("0.11-sized struct with a packed q", &p, FA_STATUS_INVALID_ARGUMENT, "q.rank is 3");
}

/* An fp8 (e4m3) KV cache (C ABI 0.13): k_cache and v_cache FA_DTYPE_FLOAT8_E4M3 with fp16/bf16 q, out, k_new and v_new,
   and k_descale / v_descale (fp32 [heads_kv] or [1]). What is accepted, every refusal with the argument it names, a
   0.12-sized struct, and the capability query's kv_cache_dtype. */
static fa_decode_params_t fp8_params(int paged, int per_tensor) {
    fa_decode_params_t p = valid_params(paged);
    const int64_t n[1] = {per_tensor ? 1 : VHKV};
    p.k_cache.dtype = p.v_cache.dtype = FA_DTYPE_FLOAT8_E4M3;
    set_dense(&p.k_descale, ADDR(16), FA_DTYPE_FLOAT32, 1, n);
    set_dense(&p.v_descale, ADDR(17), FA_DTYPE_FLOAT32, 1, n);
    return p;
}

static fa_support_query_t decode_query(int32_t dtype, int32_t kv, int32_t head_dim) {
    fa_support_query_t q;
    memset(&q, 0, sizeof q);
    q.struct_size = sizeof q;
    q.pass = FA_PASS_DECODE;
    q.dtype = dtype;
    q.head_dim = head_dim;
    q.kv_cache_dtype = kv;
    return q;
}

static void test_fp8_validation(void) {
    fa_decode_params_t p;
    fa_support_query_t q;
    int32_t lens[VB] = {10, 0, VPAGES * VBLOCK - VSQ}, idx[VB] = {2, 0, 1}, pads[VB] = {0, 2, 1};
    int paged, per_tensor, fp16;
    char label[128];

    /* Accepted: both layouts, both descale forms, fp16 and bf16 queries, with and without an append, and with the
       options every decode kernel serves (rotary tables of q's dtype, ALiBi, host copies, batch index, pads). */
    for (paged = 0; paged <= 1; ++paged) {
        for (per_tensor = 0; per_tensor <= 1; ++per_tensor) {
            for (fp16 = 0; fp16 <= 1; ++fp16) {
                p = fp8_params(paged, per_tensor);
                if (fp16) p.q.dtype = p.out.dtype = p.k_new.dtype = p.v_new.dtype = FA_DTYPE_FLOAT16;
                sprintf(label, "fp8 cache, %s, descales [%s], %s q", paged ? "paged" : "contiguous",
                        per_tensor ? "1" : "heads_kv", fp16 ? "fp16" : "bf16");
                expect(label, fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
                expect(label, fa_decode_check(&p, 80), FA_STATUS_SUCCESS, NULL);
                expect(label, fa_decode_check(&p, 90), FA_STATUS_SUCCESS, NULL);
                p.k_new.data = p.v_new.data = NULL;
                strcat(label, ", no append");
                expect(label, fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
            }
        }
    }
    p = fp8_params(1, 0);
    p.rotary_cos = ADDR(18); p.rotary_sin = ADDR(19); p.rotary_dim = 16; p.rotary_seqlen = VCAP;
    p.cache_seqlens_host = lens;
    {
        const int64_t heads[1] = {VHQ}, b1[1] = {VB};
        set_dense(&p.alibi_slopes, ADDR(20), FA_DTYPE_FLOAT32, 1, heads);
        set_dense(&p.cache_batch_idx, ADDR(21), FA_DTYPE_INT32, 1, b1);
        set_dense(&p.cache_leftpad, ADDR(22), FA_DTYPE_INT32, 1, b1);
        p.block_table.shape[0] = VB;
        p.cache_batch_idx_host = idx;
        p.cache_leftpad_host = pads;
    }
    p.window_left = 7; p.softcap = 5.0f; p.num_splits = 3;
    expect("fp8 cache with rotary, ALiBi, batch index, pads, window, softcap, splits", fa_decode_check(&p, 0),
           FA_STATUS_SUCCESS, NULL);
    p = fp8_params(0, 0); p.k_descale.strides[0] = 4; p.v_descale.strides[0] = 3;
    expect("fp8 cache, strided descales", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);

    /* The caches: both fp8 or neither; q, out, k_new and v_new stay 16-bit. */
    p = fp8_params(0, 0); p.v_cache.dtype = FA_DTYPE_BFLOAT16;
    bad("fp8 k_cache, bf16 v_cache", &p, FA_STATUS_INVALID_ARGUMENT,
        "k_cache.dtype is FA_DTYPE_FLOAT8_E4M3 but v_cache.dtype is FA_DTYPE_BFLOAT16; the key and value caches are both "
        "FA_DTYPE_FLOAT8_E4M3");
    p = fp8_params(1, 1); p.k_cache.dtype = FA_DTYPE_BFLOAT16;
    bad("bf16 k_cache, fp8 v_cache", &p, FA_STATUS_INVALID_ARGUMENT,
        "k_cache.dtype is FA_DTYPE_BFLOAT16 but v_cache.dtype is FA_DTYPE_FLOAT8_E4M3");
    p = fp8_params(0, 0); p.k_cache.dtype = p.v_cache.dtype = FA_DTYPE_FLOAT32;
    bad("fp32 caches", &p, FA_STATUS_INVALID_ARGUMENT,
        "k_cache.dtype is 3 (FA_DTYPE_FLOAT32); k_cache must be q's dtype (FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16) or "
        "FA_DTYPE_FLOAT8_E4M3");
    p = fp8_params(0, 0); p.q.dtype = FA_DTYPE_FLOAT8_E4M3;
    bad("fp8 q over an fp8 cache", &p, FA_STATUS_UNSUPPORTED, "q.dtype is FA_DTYPE_FLOAT8_E4M3: decode takes fp16 or bf16 queries");
    p = fp8_params(1, 0); p.k_new.dtype = FA_DTYPE_FLOAT8_E4M3;
    bad("fp8 k_new over an fp8 cache", &p, FA_STATUS_UNSUPPORTED,
        "k_new.dtype is FA_DTYPE_FLOAT8_E4M3: new keys and values are fp16 or bf16 (q's dtype)");
    p = fp8_params(0, 0); p.k_new.dtype = FA_DTYPE_FLOAT16;
    bad("fp16 k_new, bf16 q, fp8 cache", &p, FA_STATUS_INVALID_ARGUMENT,
        "k_new.dtype is FA_DTYPE_FLOAT16 but q.dtype is FA_DTYPE_BFLOAT16; q, the new keys/values and out must share one "
        "dtype (the caches are fp8)");
    p = fp8_params(1, 0); p.out.dtype = FA_DTYPE_FLOAT8_E4M3;
    bad("fp8 out, fp8 cache", &p, FA_STATUS_INVALID_ARGUMENT, "out.dtype is 5 (FA_DTYPE_FLOAT8_E4M3)");
    p = fp8_params(0, 0); p.k_cache.strides[1] += 8; p.v_cache.strides[1] += 8;
    bad("fp8 cache row stride not x16", &p, FA_STATUS_INVALID_ARGUMENT, "multiples of 16 elements (16 bytes)");
    p = fp8_params(0, 0); p.k_cache.data = (void*)((uintptr_t)p.k_cache.data + 8);
    bad("fp8 cache misaligned", &p, FA_STATUS_INVALID_ARGUMENT, "k_cache.data (0x");
    {
        /* Head dim 40 (a multiple of 8, not of 16): with contiguous strides the rows break the 16-byte rule; with
           padded strides (48) the head dim itself is refused. */
        const int64_t hd = 40;
        p = fp8_params(0, 0);
        set4(&p.q, p.q.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, hd);
        set4(&p.out, p.out.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, hd);
        set4(&p.k_new, p.k_new.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHKV, hd);
        set4(&p.v_new, p.v_new.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHKV, hd);
        set4(&p.k_cache, p.k_cache.data, FA_DTYPE_FLOAT8_E4M3, VB, VCAP, VHKV, hd);
        set4(&p.v_cache, p.v_cache.data, FA_DTYPE_FLOAT8_E4M3, VB, VCAP, VHKV, hd);
        bad("fp8 cache, head dim 40, contiguous", &p, FA_STATUS_INVALID_ARGUMENT,
            "k_cache.shape[3] (head_dim) is 40; fp8 (e4m3) head dims must be multiples of 16");
        p.k_cache.strides[2] = p.v_cache.strides[2] = 48;
        p.k_cache.strides[1] = p.v_cache.strides[1] = 48 * VHKV;
        p.k_cache.strides[0] = p.v_cache.strides[0] = 48 * VHKV * VCAP;
        bad("fp8 cache, head dim 40, padded strides", &p, FA_STATUS_INVALID_ARGUMENT,
            "k_cache.shape[3] (head_dim) is 40; the head dims of an fp8 (e4m3) cache must be multiples of 16");
    }

    /* The descales: required with an fp8 cache, refused without one, fp32 rank 1 [heads_kv] or [1], positive strides,
       aligned, and never written over. */
    p = fp8_params(0, 0); p.v_descale.data = NULL;
    bad("fp8 cache without v_descale", &p, FA_STATUS_INVALID_ARGUMENT,
        "k_cache and v_cache are FA_DTYPE_FLOAT8_E4M3 but v_descale.data is NULL; an fp8 cache needs k_descale and v_descale");
    p = valid_params(1);
    {
        const int64_t n[1] = {VHKV};
        set_dense(&p.k_descale, ADDR(16), FA_DTYPE_FLOAT32, 1, n);
    }
    bad("k_descale with a bf16 cache", &p, FA_STATUS_INVALID_ARGUMENT,
        "k_descale.data is set but k_cache and v_cache are FA_DTYPE_BFLOAT16; descales go with an fp8");
    p = valid_params(0);
    {
        const int64_t n[1] = {1};
        set_dense(&p.v_descale, ADDR(17), FA_DTYPE_FLOAT32, 1, n);
    }
    bad("v_descale with a bf16 cache", &p, FA_STATUS_INVALID_ARGUMENT, "v_descale.data is set but k_cache and v_cache are");
    p = fp8_params(0, 0); p.k_descale.dtype = FA_DTYPE_BFLOAT16;
    bad("k_descale bf16", &p, FA_STATUS_INVALID_ARGUMENT, "k_descale.dtype is 2 (FA_DTYPE_BFLOAT16); k_descale must be FA_DTYPE_FLOAT32");
    p = fp8_params(1, 0); p.v_descale.rank = 2; p.v_descale.shape[1] = 1; p.v_descale.strides[1] = 1;
    bad("v_descale rank 2", &p, FA_STATUS_INVALID_ARGUMENT, "v_descale.rank is 2; v_descale must have rank 1 [heads_kv]");
    p = fp8_params(0, 0); p.k_descale.shape[0] = VHKV + 1;
    bad("k_descale of 3 factors, 2 kv heads", &p, FA_STATUS_INVALID_ARGUMENT,
        "k_descale.shape[0] is 3 but must be heads_kv (k_cache.shape[2] = 2) or 1 (one factor for the whole cache)");
    p = fp8_params(0, 0); p.v_descale.shape[0] = 0;
    bad("v_descale empty", &p, FA_STATUS_INVALID_ARGUMENT, "v_descale.shape[0] (heads_kv) is 0");
    p = fp8_params(1, 0); p.k_descale.strides[0] = 0;
    bad("k_descale stride 0", &p, FA_STATUS_INVALID_ARGUMENT, "k_descale.strides[0] (heads_kv) is 0; strides must be positive");
    p = fp8_params(0, 1); p.v_descale.strides[0] = -1;
    bad("v_descale stride -1", &p, FA_STATUS_INVALID_ARGUMENT, "v_descale.strides[0] (heads_kv) is -1");
    p = fp8_params(0, 0); p.k_descale.data = (void*)((uintptr_t)p.k_descale.data + 2);
    bad("k_descale misaligned", &p, FA_STATUS_INVALID_ARGUMENT, "k_descale.data (0x");
    p = fp8_params(0, 0); p.k_descale.data = p.v_descale.data;
    expect("k_descale and v_descale sharing one table (read only)", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = fp8_params(0, 0); p.out.data = p.k_descale.data;
    bad("out over k_descale", &p, FA_STATUS_INVALID_ARGUMENT, "out (bytes 0x");
    bad("out over k_descale (names it)", &p, FA_STATUS_INVALID_ARGUMENT, "overlaps k_descale");
    p = fp8_params(1, 0); p.lse.data = p.v_descale.data;
    bad("lse over v_descale", &p, FA_STATUS_INVALID_ARGUMENT, "overlaps v_descale");
    p = fp8_params(0, 0); p.v_cache.data = p.v_descale.data;
    bad("appended v_cache over v_descale", &p, FA_STATUS_INVALID_ARGUMENT, "v_cache (bytes");
    p.k_new.data = p.v_new.data = NULL;
    expect("v_cache over v_descale without an append (nothing written)", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    p = fp8_params(0, 0); p.cache_seqlens.data = p.k_descale.data; p.advance_cache_seqlens = 1;
    bad("advanced cache_seqlens over k_descale", &p, FA_STATUS_INVALID_ARGUMENT, "cache_seqlens (bytes");
    p = fp8_params(0, 0); p.workspace = (void*)(uintptr_t)ADDR(16); p.workspace_size = 4096;
    bad("workspace over k_descale", &p, FA_STATUS_INVALID_ARGUMENT, "workspace (bytes");

    /* Served: decode runs on the sm80 path only, on compute capability 8.0 and newer. */
    p = fp8_params(1, 0); p.kernel_path = FA_PATH_SM90;
    bad("fp8 cache on FA_PATH_SM90", &p, FA_STATUS_UNSUPPORTED, "decode runs on the sm80 path");
    p = fp8_params(1, 0);
    expect("fp8 cache at compute capability 7.5", fa_decode_check(&p, 75), FA_STATUS_UNSUPPORTED, "8.0 or newer");

    /* A caller compiled against 0.12: its struct ends at reserved2. An fp8 cache then has no descales (refused,
       saying so); a 16-bit cache is served and nothing past the struct is read. */
    {
        unsigned char buf[sizeof(fa_decode_params_t)];
        fa_decode_params_t* old = (fa_decode_params_t*)(void*)buf;
        const size_t size_12 = offsetof(fa_decode_params_t, k_descale);
        size_t i;
        int tail_untouched = 1;
        memset(buf, 0xAB, sizeof buf);
        expect("decode_params_init(0.12 size)", fa_decode_params_init(old, size_12), FA_STATUS_SUCCESS, NULL);
        for (i = size_12; i < sizeof buf; ++i) tail_untouched &= buf[i] == 0xAB;
        CHECK(tail_untouched, "fa_decode_params_init(0.12 size) wrote past the caller's struct");
        p = fp8_params(0, 0);
        memcpy(buf, &p, size_12);
        old->struct_size = (uint32_t)size_12;
        bad("0.12-sized struct with an fp8 cache", old, FA_STATUS_INVALID_ARGUMENT,
            "k_cache and v_cache are FA_DTYPE_FLOAT8_E4M3, but params->struct_size (");
        bad("0.12-sized struct with an fp8 cache (names the fields)", old, FA_STATUS_INVALID_ARGUMENT,
            "ends before k_descale and v_descale (C ABI 0.13)");
        p = valid_params(1);
        memcpy(buf, &p, size_12);
        old->struct_size = (uint32_t)size_12;
        expect("0.12-sized struct with a bf16 cache, garbage where the descales would be", fa_decode_check(old, 0),
               FA_STATUS_SUCCESS, NULL);
    }

    /* fa_query_support's kv_cache_dtype (0.13): 0 or q's dtype is a 16-bit cache; FA_DTYPE_FLOAT8_E4M3 with fp16/bf16
       queries is served (every decode option, head dims multiples of 16); other pairs and other passes are not. */
    q = decode_query(FA_DTYPE_BFLOAT16, 0, FA_TEST_HEAD_DIM);
    expect("query decode, kv_cache_dtype 0", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.kv_cache_dtype = FA_DTYPE_BFLOAT16;
    expect("query decode, kv_cache_dtype = dtype", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    for (fp16 = 0; fp16 <= 1; ++fp16) {
        q = decode_query(fp16 ? FA_DTYPE_FLOAT16 : FA_DTYPE_BFLOAT16, FA_DTYPE_FLOAT8_E4M3, FA_TEST_HEAD_DIM);
        sprintf(label, "query %s decode over an fp8 cache", fp16 ? "fp16" : "bf16");
        expect(label, fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
        q.paged_kv = q.causal = q.window = q.softcap = q.alibi = 1;
        strcat(label, ", paged, causal, window, softcap, ALiBi");
        expect(label, fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
        q.compute_capability = 80;
        expect("... at compute capability 8.0", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
        q.compute_capability = 90;
        expect("... at compute capability 9.0", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
        q.kernel_path = FA_PATH_SM90;
        expect("... on FA_PATH_SM90", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "decode runs on the sm80 path");
    }
    q = decode_query(FA_DTYPE_FLOAT8_E4M3, FA_DTYPE_FLOAT8_E4M3, FA_TEST_HEAD_DIM);
    expect("query fp8 q over an fp8 cache", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
           "query->dtype is FA_DTYPE_FLOAT8_E4M3 with query->pass FA_PASS_DECODE: decode takes fp16 or bf16 queries");
    q = decode_query(FA_DTYPE_BFLOAT16, FA_DTYPE_FLOAT16, FA_TEST_HEAD_DIM);
    expect("query bf16 q over an fp16 cache", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
           "query->kv_cache_dtype is FA_DTYPE_FLOAT16 with query->dtype FA_DTYPE_BFLOAT16; fa_decode's cache is q's dtype, "
           "or FA_DTYPE_FLOAT8_E4M3 (an fp8 cache) with FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16 queries");
    q = decode_query(FA_DTYPE_FLOAT16, FA_DTYPE_FLOAT32, FA_TEST_HEAD_DIM);
    expect("query fp32 cache", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "query->kv_cache_dtype is FA_DTYPE_FLOAT32");
    q = decode_query(FA_DTYPE_FLOAT16, 42, FA_TEST_HEAD_DIM);
    expect("query kv_cache_dtype 42", fa_query_support(&q), FA_STATUS_INVALID_ARGUMENT,
           "query->kv_cache_dtype is 42; it must be 0 (the same as dtype) or an fa_dtype_t value");
    q = decode_query(FA_DTYPE_BFLOAT16, FA_DTYPE_FLOAT8_E4M3, FA_TEST_HEAD_DIM);
    q.pass = FA_PASS_FORWARD;
    expect("query forward with kv_cache_dtype", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
           "query->kv_cache_dtype is FA_DTYPE_FLOAT8_E4M3 with FA_PASS_FORWARD; only FA_PASS_DECODE has a KV cache dtype");
    q.pass = FA_PASS_BACKWARD;
    q.kv_cache_dtype = FA_DTYPE_BFLOAT16;
    expect("query backward with kv_cache_dtype", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
           "query->kv_cache_dtype is FA_DTYPE_BFLOAT16 with FA_PASS_BACKWARD");
    q = decode_query(FA_DTYPE_BFLOAT16, FA_DTYPE_FLOAT8_E4M3, 40);
    if (fa_query_support(&q) != FA_STATUS_INVALID_ARGUMENT) {
        expect("query fp8 cache, head dim 40", fa_query_support(&q), FA_STATUS_UNSUPPORTED,
               "query->head_dim is 40; the head dims of an fp8 (e4m3) KV cache must be multiples of 16");
    }
    q = decode_query(FA_DTYPE_BFLOAT16, FA_DTYPE_FLOAT8_E4M3, FA_TEST_HEAD_DIM);
    q.struct_size = (uint32_t)offsetof(fa_support_query_t, kv_cache_dtype);
    q.kv_cache_dtype = 42; /* past a 0.12-sized query: never read */
    expect("0.12-sized query (no kv_cache_dtype)", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
}

static void test_validation(void) {
    fa_decode_params_t p;
    int32_t host_lens[VB] = {10, 0, VPAGES * VBLOCK - VSQ};
    int paged, bs;

    for (paged = 0; paged <= 1; ++paged) {
        p = valid_params(paged);
        expect(paged ? "valid paged call" : "valid contiguous call", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
        p.k_new.data = NULL;
        p.v_new.data = NULL;
        expect("valid call without append", fa_decode_check(&p, 90), FA_STATUS_SUCCESS, NULL);
    }
    p = valid_params(1);
    p.cache_seqlens_host = host_lens;
    expect("host lengths that fit", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    for (bs = 16; bs <= 256; bs *= 2) {
        char label[64];
        p = valid_params(1);
        p.k_cache.shape[1] = p.v_cache.shape[1] = bs;
        p.k_cache.strides[0] = p.v_cache.strides[0] = bs * p.k_cache.strides[1];
        sprintf(label, "paged block size %d", bs);
        expect(label, fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);
    }

    bad("params NULL", NULL, FA_STATUS_INVALID_ARGUMENT, "params is NULL");
    p = valid_params(1); p.struct_size = 64;
    bad("struct_size 64", &p, FA_STATUS_INVALID_ARGUMENT, "struct_size is 64");
    p = valid_params(1); p.reserved0 = 1;
    bad("reserved0", &p, FA_STATUS_INVALID_ARGUMENT, "reserved0");
    p = valid_params(1); p.advance_cache_seqlens = 3;
    bad("advance_cache_seqlens 3", &p, FA_STATUS_INVALID_ARGUMENT, "advance_cache_seqlens");
    p = valid_params(1);
    expect("compute_capability -1", fa_decode_check(&p, -1), FA_STATUS_INVALID_ARGUMENT, "compute_capability");
    p = valid_params(1); p.q.rank = 3;
    bad("q rank 3", &p, FA_STATUS_INVALID_ARGUMENT, "q.rank is 3");
    p = valid_params(1); p.q.dtype = FA_DTYPE_FLOAT32;
    bad("q fp32", &p, FA_STATUS_INVALID_ARGUMENT, "q.dtype");
    p = valid_params(1); p.k_cache.dtype = p.v_cache.dtype = FA_DTYPE_FLOAT16;
    bad("k_cache fp16, q bf16", &p, FA_STATUS_INVALID_ARGUMENT, "k_cache.dtype");
    p = valid_params(1); p.k_cache.data = NULL;
    bad("k_cache NULL", &p, FA_STATUS_INVALID_ARGUMENT, "k_cache.data is NULL");
    p = valid_params(1); p.v_cache.strides[3] = 2;
    bad("v_cache last stride 2", &p, FA_STATUS_INVALID_ARGUMENT, "v_cache.strides[3]");
    p = valid_params(1); p.k_cache.strides[1] += 4;
    bad("k_cache row stride not x8", &p, FA_STATUS_INVALID_ARGUMENT, "multiples of 8");
    p = valid_params(1); p.q.data = (void*)((uintptr_t)p.q.data + 8);
    bad("q misaligned", &p, FA_STATUS_INVALID_ARGUMENT, "16-byte aligned");
    p = valid_params(1); p.out.shape[2] = VHQ / 2;
    bad("out heads", &p, FA_STATUS_INVALID_ARGUMENT, "out must have the shape of q");
    p = valid_params(1); p.v_cache.shape[0] = VNBLOCKS - 1;
    bad("v_cache shape", &p, FA_STATUS_INVALID_ARGUMENT, "same shape");
    p = valid_params(1); p.k_cache.shape[2] = p.v_cache.shape[2] = 3;
    p.k_new.shape[2] = p.v_new.shape[2] = 3;
    bad("heads_kv 3 of 8", &p, FA_STATUS_INVALID_ARGUMENT, "does not divide");
    p = valid_params(1); p.k_cache.shape[3] = p.v_cache.shape[3] = FA_TEST_HEAD_DIM + 8;
    bad("cache head_dim", &p, FA_STATUS_INVALID_ARGUMENT, "k_cache.shape[3] (head_dim)");
    p = valid_params(0); p.k_cache.shape[0] = p.v_cache.shape[0] = VB + 1;
    bad("contiguous cache batch", &p, FA_STATUS_INVALID_ARGUMENT, "k_cache.shape[0] (batch)");
    p = valid_params(1); p.cache_seqlens.dtype = FA_DTYPE_FLOAT32;
    bad("cache_seqlens fp32", &p, FA_STATUS_INVALID_ARGUMENT, "cache_seqlens.dtype");
    p = valid_params(1); p.cache_seqlens.shape[0] = VB + 1;
    bad("cache_seqlens length", &p, FA_STATUS_INVALID_ARGUMENT, "cache_seqlens.shape[0]");
    p = valid_params(1); p.cache_seqlens.rank = 2; p.cache_seqlens.shape[1] = 1; p.cache_seqlens.strides[1] = 1;
    bad("cache_seqlens rank 2", &p, FA_STATUS_INVALID_ARGUMENT, "cache_seqlens.rank is 2");
    p = valid_params(1); p.cache_seqlens.data = NULL;
    bad("cache_seqlens NULL", &p, FA_STATUS_INVALID_ARGUMENT, "cache_seqlens.data is NULL");
    p = valid_params(1); p.block_table.dtype = FA_DTYPE_FLOAT16;
    bad("block_table fp16", &p, FA_STATUS_INVALID_ARGUMENT, "block_table.dtype");
    p = valid_params(1); p.block_table.rank = 1;
    bad("block_table rank 1", &p, FA_STATUS_INVALID_ARGUMENT, "block_table.rank is 1");
    p = valid_params(1); p.block_table.shape[0] = VB - 1;
    bad("block_table batch", &p, FA_STATUS_INVALID_ARGUMENT, "block_table.shape[0] (batch)");
    p = valid_params(1); p.v_new.data = NULL;
    bad("k_new without v_new", &p, FA_STATUS_INVALID_ARGUMENT, "v_new.data is NULL");
    /* The refusals below were reached by no test until a mutation pass over validate_decode.cpp (each check
       disabled in turn) said so. */
    p = valid_params(1); p.k_new.data = NULL;
    bad("v_new without k_new", &p, FA_STATUS_INVALID_ARGUMENT, "v_new.data is set but k_new.data is NULL");
    p = valid_params(0); p.k_new.data = p.v_new.data = NULL; p.advance_cache_seqlens = 1;
    bad("advance without an append", &p, FA_STATUS_INVALID_ARGUMENT, "advance_cache_seqlens is 1 but k_new/v_new are not given");
    p = valid_params(0);
    p.k_cache.shape[1] = p.v_cache.shape[1] = (int64_t)1 << 31;  /* 2^31 positions: past the kernels' 32-bit rows */
    p.k_cache.strides[0] = p.v_cache.strides[0] = p.k_cache.shape[1] * p.k_cache.strides[1];
    p.k_cache.data = (void*)(uintptr_t)((uint64_t)1 << 44);
    p.v_cache.data = (void*)(uintptr_t)((uint64_t)2 << 44);
    bad("a cache of 2^31 positions", &p, FA_STATUS_UNSUPPORTED, "positions per sequence; the largest this build serves is");
    p = valid_params(0);
    p.k_new.data = p.v_new.data = NULL;
    set4(&p.q, (void*)(uintptr_t)((uint64_t)1 << 44), FA_DTYPE_BFLOAT16, VB, (int64_t)1 << 30, VHQ, FA_TEST_HEAD_DIM);
    set4(&p.out, (void*)(uintptr_t)((uint64_t)2 << 44), FA_DTYPE_BFLOAT16, VB, (int64_t)1 << 30, VHQ, FA_TEST_HEAD_DIM);
    p.lse.data = NULL;
    bad("2^30 new tokens x 4 query heads a kv head: 2^32 packed rows", &p, FA_STATUS_UNSUPPORTED,
        "is too large for one decode launch");
    p = valid_params(1); p.k_new.shape[1] = VSQ + 1;
    bad("v_new seqlen other than k_new's", &p, FA_STATUS_INVALID_ARGUMENT,
        "v_new.shape[1] (seqlen_knew) is 2 but k_new.shape[1] (seqlen_knew) is 3");
    p = valid_params(1); p.v_new.dtype = FA_DTYPE_FLOAT16;
    bad("v_new fp16", &p, FA_STATUS_INVALID_ARGUMENT, "v_new.dtype");
    p = valid_params(1); p.lse.shape[2] = VSQ + 1;
    bad("lse shape", &p, FA_STATUS_INVALID_ARGUMENT, "lse.shape");
    p = valid_params(1); p.lse.dtype = FA_DTYPE_BFLOAT16;
    bad("lse bf16", &p, FA_STATUS_INVALID_ARGUMENT, "lse.dtype");
    p = valid_params(1); p.softmax_scale = -1.0f;
    bad("softmax_scale -1", &p, FA_STATUS_INVALID_ARGUMENT, "softmax_scale");
    p = valid_params(1); p.causal = 2;
    bad("causal 2", &p, FA_STATUS_INVALID_ARGUMENT, "causal is 2");
    p = valid_params(1); p.window_left = -2;
    bad("window_left -2", &p, FA_STATUS_INVALID_ARGUMENT, "window_left is -2");
    p = valid_params(1); p.softcap = (float)NAN;
    bad("softcap NaN", &p, FA_STATUS_INVALID_ARGUMENT, "softcap");
    p = valid_params(1); p.kernel_path = 7;
    bad("kernel_path 7", &p, FA_STATUS_INVALID_ARGUMENT, "kernel_path is 7");
    p = valid_params(1); p.kernel_path = FA_PATH_SM90; /* the sm90 kernels serve the forward and backward */
    bad("kernel_path FA_PATH_SM90", &p, FA_STATUS_UNSUPPORTED, "decode runs on the sm80 path");
    expect("kernel_path FA_PATH_SM90 at cc 9.0", fa_decode_check(&p, 90), FA_STATUS_UNSUPPORTED,
           "decode runs on the sm80 path");
    p = valid_params(1); p.num_splits = FA_DECODE_MAX_SPLITS + 1;
    bad("num_splits 129", &p, FA_STATUS_INVALID_ARGUMENT, "num_splits is");
    p = valid_params(1); p.num_splits = -1;
    bad("num_splits -1", &p, FA_STATUS_INVALID_ARGUMENT, "num_splits is -1");
    p = valid_params(1); p.workspace = (void*)(uintptr_t)0x10000080ull;
    bad("workspace misaligned", &p, FA_STATUS_INVALID_ARGUMENT, "workspace");
    p = valid_params(1); host_lens[2] = VPAGES * VBLOCK - VSQ + 1; p.cache_seqlens_host = host_lens;
    bad("host length past capacity", &p, FA_STATUS_INVALID_ARGUMENT, "cache_seqlens_host[2]");
    host_lens[2] = VPAGES * VBLOCK - VSQ;
    p = valid_params(1); host_lens[1] = -1; p.cache_seqlens_host = host_lens;
    bad("host length -1", &p, FA_STATUS_INVALID_ARGUMENT, "cache_seqlens_host[1] is -1");
    host_lens[1] = 0;
    p = valid_params(0); p.k_cache.shape[1] = p.v_cache.shape[1] = 1; p.k_cache.strides[0] = p.v_cache.strides[0] =
        p.k_cache.strides[1];
    bad("append past capacity", &p, FA_STATUS_INVALID_ARGUMENT, "new tokens");
    p = valid_params(1); p.out.data = (void*)((uintptr_t)p.q.data + 64);
    bad("out overlaps q", &p, FA_STATUS_INVALID_ARGUMENT, "overlaps q");
    p = valid_params(1); p.lse.data = p.cache_seqlens.data;
    bad("lse overlaps cache_seqlens", &p, FA_STATUS_INVALID_ARGUMENT, "overlaps");
    p = valid_params(1); p.k_new.data = (void*)((uintptr_t)p.k_cache.data + 256);
    bad("k_new inside k_cache", &p, FA_STATUS_INVALID_ARGUMENT, "k_cache");
    test_serving_validation();
    test_alibi_validation();
    test_rotary_validation();
    test_fp8_validation();

    /* fp8 (e4m3): an fp8 query or append is not served (UNSUPPORTED, naming the tensor; an fp8 cache is, with fp16/bf16
       queries: test_fp8_validation); an fp8 out is no dtype any pass writes (INVALID_ARGUMENT); a k_new/v_new
       descriptor without data is not looked at. */
    p = valid_params(1); p.q.dtype = FA_DTYPE_FLOAT8_E4M3;
    bad("q fp8", &p, FA_STATUS_UNSUPPORTED, "q.dtype is FA_DTYPE_FLOAT8_E4M3: decode takes fp16 or bf16 queries");
    expect("q fp8 at cc 9.0", fa_decode_check(&p, 90), FA_STATUS_UNSUPPORTED, "decode takes fp16 or bf16 queries");
    p = valid_params(0); p.k_cache.dtype = p.v_cache.dtype = FA_DTYPE_FLOAT8_E4M3;
    bad("fp8 cache without descales", &p, FA_STATUS_INVALID_ARGUMENT,
        "k_cache and v_cache are FA_DTYPE_FLOAT8_E4M3 but k_descale.data is NULL");
    p = valid_params(1); p.v_new.dtype = FA_DTYPE_FLOAT8_E4M3;
    bad("v_new fp8", &p, FA_STATUS_UNSUPPORTED, "v_new.dtype is FA_DTYPE_FLOAT8_E4M3: new keys and values are fp16 or bf16");
    p = valid_params(1); p.out.dtype = FA_DTYPE_FLOAT8_E4M3;
    bad("out fp8", &p, FA_STATUS_INVALID_ARGUMENT,
        "out.dtype is 5 (FA_DTYPE_FLOAT8_E4M3); out must be FA_DTYPE_FLOAT16 or FA_DTYPE_BFLOAT16");
    p = valid_params(1); p.k_new.data = p.v_new.data = NULL; p.k_new.dtype = p.v_new.dtype = FA_DTYPE_FLOAT8_E4M3;
    expect("no append, fp8 in the unused k_new/v_new", fa_decode_check(&p, 0), FA_STATUS_SUCCESS, NULL);

    p = valid_params(1); p.k_cache.shape[1] = p.v_cache.shape[1] = 24;
    bad("block size 24", &p, FA_STATUS_UNSUPPORTED, "block_size) is 24");
    p = valid_params(1); p.k_cache.shape[1] = p.v_cache.shape[1] = 8; p.block_table.shape[1] = 16;
    bad("block size 8", &p, FA_STATUS_UNSUPPORTED, "block_size) is 8");
    p = valid_params(1);
    set4(&p.q, p.q.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, 264);
    set4(&p.out, p.out.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, 264);
    set4(&p.k_cache, p.k_cache.data, FA_DTYPE_BFLOAT16, VNBLOCKS, VBLOCK, VHKV, 264);
    set4(&p.v_cache, p.v_cache.data, FA_DTYPE_BFLOAT16, VNBLOCKS, VBLOCK, VHKV, 264);
    set4(&p.k_new, p.k_new.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHKV, 264);
    set4(&p.v_new, p.v_new.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHKV, 264);
    bad("head_dim 264", &p, FA_STATUS_UNSUPPORTED, "head_dim) is 264");
    /* Head dim 59, contiguous: the root cause (not a multiple of 8) first, then the stride it breaks. */
    p = valid_params(1);
    set4(&p.q, p.q.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, 59);
    set4(&p.out, p.out.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHQ, 59);
    set4(&p.k_cache, p.k_cache.data, FA_DTYPE_BFLOAT16, VNBLOCKS, VBLOCK, VHKV, 59);
    set4(&p.v_cache, p.v_cache.data, FA_DTYPE_BFLOAT16, VNBLOCKS, VBLOCK, VHKV, 59);
    set4(&p.k_new, p.k_new.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHKV, 59);
    set4(&p.v_new, p.v_new.data, FA_DTYPE_BFLOAT16, VB, VSQ, VHKV, 59);
    bad("head_dim 59", &p, FA_STATUS_INVALID_ARGUMENT, "q.shape[3] (head_dim) is 59; head dims must be multiples of 8");
    p = valid_params(1);
    expect("compute capability 75", fa_decode_check(&p, 75), FA_STATUS_UNSUPPORTED, "8.0 or newer");
    expect("workspace_size(NULL context)", fa_decode_workspace_size(NULL, &p, NULL), FA_STATUS_INVALID_ARGUMENT,
           "bytes is NULL");
    {
        size_t bytes = 1;
        int32_t splits = 1;
        expect("workspace_size(NULL context)", fa_decode_workspace_size(NULL, &p, &bytes), FA_STATUS_INVALID_ARGUMENT,
               "context is NULL");
        CHECK(bytes == 0, "a failed fa_decode_workspace_size must set *bytes to 0");
        expect("num_splits(NULL context)", fa_decode_num_splits(NULL, &p, &splits), FA_STATUS_INVALID_ARGUMENT,
               "context is NULL");
        expect("decode(NULL context)", fa_decode(NULL, &p, NULL), FA_STATUS_INVALID_ARGUMENT, "context is NULL");
    }
}

static void test_query_and_names(void) {
    fa_support_query_t q;
    int32_t count = 0, i, decode_names = 0;
    memset(&q, 0, sizeof q);
    q.struct_size = sizeof q;
    q.pass = FA_PASS_DECODE;
    q.dtype = FA_DTYPE_BFLOAT16;
    q.head_dim = FA_TEST_HEAD_DIM;
    q.causal = q.window = q.softcap = 1;
    expect("query decode", fa_query_support(&q), FA_STATUS_SUCCESS, NULL);
    q.varlen = 1;
    expect("query decode varlen", fa_query_support(&q), FA_STATUS_UNSUPPORTED, "variable-length");
    expect("kernel_count", fa_kernel_count(&count), FA_STATUS_SUCCESS, NULL);
    for (i = 0; i < count; ++i) {
        const char* name = NULL;
        if (fa_kernel_name(i, &name) == FA_STATUS_SUCCESS && name != NULL && strncmp(name, "sm80_decode_", 12) == 0) {
            ++decode_names;
        }
    }
    CHECK(decode_names >= 4, "only %d of %d kernel names are decode kernels", (int)decode_names, (int)count);
}

/* ---- GPU: decode against a float64 reference ------------------------------------------------------- */

typedef struct {
    const char* label;
    int dtype, b, sq, hq, hkv, d;
    int block_size; /* 0: contiguous cache */
    int capacity;   /* positions per sequence (paged: a multiple of block_size) */
    int append, causal, window_left, window_right;
    float softcap, scale;
    int num_splits; /* 0: automatic */
    int host_lens, caller_workspace;
    int lens[6]; /* cache lengths before the append */
    /* Serving options (C ABI 0.7); zero: none. */
    int sk_new;  /* appended tokens when append (0: sq, as before 0.7) */
    int pool;    /* > 0: cache_batch_idx over a shuffled pool of this many cache (or block-table) rows */
    int use_pads;
    int pads[6]; /* cache_leftpad when use_pads */
    /* Rotary embedding (C ABI 0.8); zero: none. */
    int rotary_dim;   /* rotated elements per head (a multiple of 16), 0: no rotary */
    int rotary_neox;  /* 1: half-split pairs (t, t + rd/2); 0: interleaved (2t, 2t+1), flash-attn's default */
    /* Per-sequence counts (C ABI 0.12); zero: none. */
    int varlen_q;    /* 1: q packed [total_q, hq, d] with cu_seqlens_q, sequence b having qn[b] queries (sq unused) */
    int qn[6];
    int varlen_k;    /* 1: k_new packed [total_k_new, hkv, d] with cu_seqlens_k_new, sequence b appending kcounts[b] */
    int kcounts[6];
    /* FP8 KV cache (C ABI 0.13); zero: a cache of q's dtype. */
    int fp8;         /* 1: k_cache/v_cache FA_DTYPE_FLOAT8_E4M3 with k_descale/v_descale */
    int per_tensor;  /* fp8: descales of shape [1] (one factor for the cache) instead of [heads_kv] */
    int extremes;    /* fp8: some new keys/values saturate (|x| / descale above 448, and +-Inf) */
    int nan_new;     /* fp8: a NaN in sequence 0's last new key and in sequence 1's first new value (head 0) */
    int alibi;       /* 1: ALiBi slopes [heads_q] (C ABI 0.8) */
} dcase;

static int case_added(const dcase* c) {
    return c->append ? (c->sk_new > 0 ? c->sk_new : c->sq) : 0;
}

/* Sequence b's query count and appended count, and the packed rows before it (the fixed layouts [b, sq, ...] and
   [b, added, ...] are the packed ones with equal counts). */
static int case_qn(const dcase* c, int b) {
    return c->varlen_q ? c->qn[b] : c->sq;
}
static int case_kn(const dcase* c, int b) {
    return !c->append ? 0 : c->varlen_k ? c->kcounts[b] : case_added(c);
}
static int case_q0(const dcase* c, int b) {
    int r = 0, i;
    for (i = 0; i < b; ++i) r += case_qn(c, i);
    return r;
}
static int case_k0(const dcase* c, int b) {
    int r = 0, i;
    for (i = 0; i < b; ++i) r += case_kn(c, i);
    return r;
}
static int case_max_q(const dcase* c) {
    int m = 0, i;
    for (i = 0; i < c->b; ++i) m = case_qn(c, i) > m ? case_qn(c, i) : m;
    return m;
}
/* Rows of q/out/lse: with cu_seqlens_q two more than the sequences use (they must stay untouched). */
static int case_q_rows(const dcase* c) {
    return case_q0(c, c->b) + (c->varlen_q ? 2 : 0);
}
/* lse's element of (sequence b, head h, query i): [b, hq, sq], or [hq, q rows] with cu_seqlens_q. */
static int64_t case_lse_at(const dcase* c, int b, int h, int i) {
    return c->varlen_q ? (int64_t)h * case_q_rows(c) + case_q0(c, b) + i : ((int64_t)b * c->hq + h) * c->sq + i;
}

/* Rows of the contiguous cache or of the block table: the pool, or one per sequence. */
static int case_rows(const dcase* c) {
    return c->pool > 0 ? c->pool : c->b;
}

static int case_pad(const dcase* c, int b) {
    return c->use_pads ? c->pads[b] : 0;
}

/* Rotary (FEATURES.md section 4): whether the queries are rotated at their own positions (causal or windowed). */
static int rotary_per_row(const dcase* c) {
    return c->causal || c->window_left >= 0 || c->window_right >= 0;
}

/* Rotates x (d doubles) in place at the table rows cr / sr (rd / 2 entries of the case's dtype), in float64. */
static void rotate(const dcase* c, double* x, const uint16_t* cr, const uint16_t* sr) {
    const int half = c->rotary_dim / 2;
    int t;
    for (t = 0; t < half; ++t) {
        const int a = c->rotary_neox ? t : 2 * t, b = c->rotary_neox ? t + half : 2 * t + 1;
        const double x0 = x[a], x1 = x[b], co = to_double(c->dtype, cr[t]), si = to_double(c->dtype, sr[t]);
        x[a] = x0 * co - x1 * si;
        x[b] = x0 * si + x1 * co;
    }
}

static uint16_t to16(int dtype, double x) {
    return dtype == FA_DTYPE_BFLOAT16 ? float_to_bf16((float)x) : float_to_half((float)x);
}

/* ---- fp8 (e4m3) on the host, from the OCP definition (C ABI 0.13's contract, not the library's code) --------- */

/* The value of an e4m3 byte: s eeee mmm, bias 7, exponent 0 subnormal (m * 2^-9), magnitude 0x7F NaN. */
static double e4m3_value(uint8_t b) {
    const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    double mag;
    if ((b & 0x7F) == 0x7F) return NAN;
    mag = e == 0 ? ldexp((double)m, -9) : ldexp(1.0 + m / 8.0, e - 7);
    return s ? -mag : mag;
}

/* What the header says an appended element becomes: x (a value of q's dtype, as float) / descale in IEEE single
   precision (C float division; x86-64 evaluates it in single precision), rounded to e4m3 nearest even with
   saturation to +-448 (Inf too; 448 + 16 = 464 is the midpoint to the next, unrepresentable, step, whose even
   neighbour is 448 anyway), NaN staying NaN; the sign is kept, on a rounded zero too (0x80), as cuda_fp8.h does. */
static uint8_t e4m3_quantize(float x, float descale) {
    const float v = x / descale;
    const uint8_t sign = signbit(v) ? 0x80 : 0x00;
    const double a = fabs((double)v);
    int code, best = 0;
    double best_err = INFINITY;
    if (v != v) return 0x7F;
    if (a >= 448.0) return (uint8_t)(sign | 0x7E);
    for (code = 0; code <= 0x7E; ++code) {
        const double err = fabs(e4m3_value((uint8_t)code) - a);
        /* Ties to the even code: consecutive codes are consecutive values, and a code's last bit is its mantissa's. */
        if (err < best_err || (err == best_err && (code & 1) == 0)) {
            best = code;
            best_err = err;
        }
    }
    return (uint8_t)(sign | best);
}

/* Signed position of a finite e4m3 byte on the number line (+-0 both 0): neighbours differ by 1. */
static int e4m3_ordinal(uint8_t b) {
    return (b & 0x80) ? -(int)(b & 0x7F) : (int)(b & 0x7F);
}

/* A cached fp8 element: mostly the quantization of a uniform value in [-2, 2] (as an appended one would be), one in
   eight any finite code (subnormals and the largest magnitudes too). Never NaN: every slot a call reads is finite. */
static uint8_t random_e4m3(float descale) {
    if (uniform01() < 0.125) {
        uint8_t b;
        do {
            b = (uint8_t)(uniform01() * 256.0);
        } while ((b & 0x7F) == 0x7F);
        return b;
    }
    return e4m3_quantize((float)(uniform01() * 4.0 - 2.0), descale);
}

/* The descale of KV head h of a case (its [heads_kv] table, or the one factor of [1]). */
static float case_descale(const dcase* c, const float* table, int h) {
    return table[c->per_tensor ? 0 : h];
}

/* Where position pos of cache row r (cache_batch_idx[b], or b) lives, in rows of hkv * d elements. */
static int64_t cache_row(const dcase* c, const int32_t* table, int max_blocks, int r, int pos) {
    if (c->block_size == 0) {
        return (int64_t)r * c->capacity + pos;
    }
    return (int64_t)table[r * max_blocks + pos / c->block_size] * c->block_size + pos % c->block_size;
}

/* Sequence b reads cache row idx[b], keys pads[b] .. total - 1 (FEATURES.md section 5: sk = total - pad keys
   numbered from the pad, the diagonal bottom-right over them, which in absolute positions is total - sq + i).
   cache_k / cache_v hold the cache's values as attended (a 16-bit cache's elements, an fp8 cache's bytes times
   their descales), in float64. ALiBi (slopes [hq]): + slope * (p - pad) in the causal form (causal, no left
   window), else - slope * |diag - p| (the header's fa_decode_params_t.alibi_slopes). A row that sees a NaN key gets
   skip[row] = 1 (its output is not checked: what attention over a NaN score gives is not defined, and the kernels
   keep the 16-bit path's behaviour there); a NaN value makes that column of the rows that see it NaN. */
static void reference(const dcase* c, const uint16_t* q, const double* cache_k, const double* cache_v,
                      const int32_t* table, int max_blocks, const int32_t* idx, const float* slopes, double* out,
                      double* lse, unsigned char* skip) {
    const int g = c->hq / c->hkv;
    const double scale = c->scale > 0.0f ? c->scale : 1.0 / sqrt((double)c->d);
    const int64_t row = (int64_t)c->hkv * c->d;
    const int alibi_causal = c->causal && c->window_left < 0;
    int b, i, h, j, e;
    for (b = 0; b < c->b; ++b) {
        const int total = c->lens[b] + case_kn(c, b);
        const int pad = case_pad(c, b);
        const int nq = case_qn(c, b), q0 = case_q0(c, b);
        for (i = 0; i < nq; ++i) {
            const long diag = (long)total - nq + i;
            for (h = 0; h < c->hq; ++h) {
                const uint16_t* qr = q + (((int64_t)q0 + i) * c->hq + h) * c->d;
                double* o = out + (((int64_t)q0 + i) * c->hq + h) * c->d;
                double mx = -INFINITY, sum = 0.0;
                double* s = (double*)malloc(sizeof(double) * (total > 0 ? total : 1));
                skip[((int64_t)q0 + i) * c->hq + h] = 0;
                for (j = 0; j < total; ++j) {
                    const double* kr;
                    int visible = 1;
                    double dot = 0.0;
                    if (j < pad) {
                        s[j] = -INFINITY; /* before the left pad: never read (NaN there) */
                        continue;
                    }
                    kr = cache_k + cache_row(c, table, max_blocks, idx[b], j) * row + (int64_t)(h / g) * c->d;
                    for (e = 0; e < c->d; ++e) {
                        dot += to_double(c->dtype, qr[e]) * kr[e];
                    }
                    dot *= scale;
                    if (c->softcap > 0.0f) {
                        dot = c->softcap * tanh(dot / c->softcap);
                    }
                    if (c->alibi) {
                        dot += alibi_causal ? slopes[h] * (double)(j - pad) : -slopes[h] * fabs((double)(diag - j));
                    }
                    if (c->causal && j > diag) visible = 0;
                    if (!c->causal && c->window_right >= 0 && j > diag + c->window_right) visible = 0;
                    if (c->window_left >= 0 && j < diag - c->window_left) visible = 0;
                    if (visible && dot != dot) skip[((int64_t)q0 + i) * c->hq + h] = 1;
                    s[j] = visible ? dot : -INFINITY;
                    if (s[j] > mx) mx = s[j];
                }
                for (e = 0; e < c->d; ++e) o[e] = 0.0;
                if (mx == -INFINITY) {
                    lse[case_lse_at(c, b, h, i)] = INFINITY;
                    free(s);
                    continue;
                }
                for (j = 0; j < total; ++j) {
                    const double p = exp(s[j] - mx);
                    const double* vr;
                    if (s[j] == -INFINITY || s[j] != s[j]) continue;
                    vr = cache_v + cache_row(c, table, max_blocks, idx[b], j) * row + (int64_t)(h / g) * c->d;
                    sum += p;
                    for (e = 0; e < c->d; ++e) o[e] += p * vr[e];
                }
                for (e = 0; e < c->d; ++e) o[e] /= sum;
                /* (A row that sees a NaN key: NaN, so that its lse is not compared either.) */
                lse[case_lse_at(c, b, h, i)] = skip[((int64_t)q0 + i) * c->hq + h] ? NAN : mx + log(sum);
                free(s);
            }
        }
    }
}

/* Device copies of one case's tensors. */
typedef struct {
    void *q, *kc, *vc, *kn, *vn, *out, *lse, *lens, *table, *ws, *idx, *pads, *rcos, *rsin, *cuq, *cuk, *kds, *vds,
        *slopes;
} dev_bufs;

static void* dev_alloc(size_t bytes) {
    void* p = NULL;
    if (fa_memory_alloc(0, bytes, &p) != FA_STATUS_SUCCESS) {
        printf("  fa_memory_alloc of %lu bytes failed: %s\n", (unsigned long)bytes, fa_last_error_message());
        return NULL;
    }
    return p;
}

/* Marks rows of lse no sequence owns (packed rows past the sequences'): never compared as values. */
#define LSE_UNOWNED (-1.0e300)

static void run_case(fa_context_t context, void* stream, const dcase* c, int use_graph) {
    const int paged = c->block_size > 0;
    const int max_blocks = paged ? c->capacity / c->block_size : 0;
    const int rows = case_rows(c), added = case_added(c);
    const int total_q = case_q0(c, c->b), total_kn = case_k0(c, c->b), max_q = case_max_q(c);
    const int num_blocks = paged ? rows * max_blocks + 3 : 0; /* a few blocks no sequence uses */
    const int64_t row = (int64_t)c->hkv * c->d;
    const int64_t cache_rows = paged ? (int64_t)num_blocks * c->block_size : (int64_t)rows * c->capacity;
    const int q_rows = case_q_rows(c);  /* total_q, plus two rows no sequence owns with cu_seqlens_q */
    const int64_t n_q = (int64_t)q_rows * c->hq * c->d, n_q_used = (int64_t)total_q * c->hq * c->d;
    const int64_t n_new = (int64_t)(total_kn > 0 ? total_kn : 1) * row;
    const int64_t n_lse = (int64_t)q_rows * c->hq;
    const int cache_dtype = c->fp8 ? FA_DTYPE_FLOAT8_E4M3 : c->dtype;
    const size_t esz = c->fp8 ? 1 : 2; /* bytes of a cache element */
    const size_t cache_bytes = (size_t)(cache_rows * row) * esz;
    uint16_t *q = malloc(n_q * 2), *kn = malloc(n_new * 2), *vn = malloc(n_new * 2), *out = malloc(n_q * 2);
    /* The caches as bytes: uint16_t elements of q's dtype, or e4m3 bytes. */
    unsigned char *kc = malloc(cache_bytes), *vc = malloc(cache_bytes);
    unsigned char *kc_after = malloc(cache_bytes), *vc_after = malloc(cache_bytes);
    uint16_t *kc16 = (uint16_t*)(void*)kc, *vc16 = (uint16_t*)(void*)vc;
    double *kcd = malloc(sizeof(double) * (size_t)(cache_rows * row)), *vcd = malloc(sizeof(double) * (size_t)(cache_rows * row));
    float* lse = malloc(n_lse * 4);
    double *ref = malloc(n_q * sizeof(double)), *ref_lse = malloc(n_lse * sizeof(double));
    unsigned char* skip = calloc((size_t)(q_rows > 0 ? q_rows : 1) * c->hq, 1);
    int32_t* table = malloc(sizeof(int32_t) * (paged ? rows * max_blocks : 1));
    int32_t lens[6], idx[6], pads[6], cuq[7], cuk[7];
    /* fp8: the descales of the keys and the values ([heads_kv], or one for the cache), about amax / 448 for amax in
       [2, 3]: the cached and appended values of [-2, 2] land within +-448 (saturation is the extremes case's). */
    float kds[16], vds[16], slopes[64];
    dev_bufs d;
    fa_decode_params_t p;
    int64_t i;
    int b, pos, ok = 1, cache_ok = 1, lse_ok = 1, nan_out = 0, nan_mismatch = 0, skipped = 0;
    double max_err = 0.0, num = 0.0, den = 0.0, max_lse_err = 0.0, rel;
    /* Tolerances: a 16-bit cache's (bf16 2.5e-2, fp16 4e-3 on outputs of magnitude up to 2, the P V product rounding P
       to q's dtype). An fp8 cache's values are exact after dequantization (the kernels read e4m3 bytes into fp16/bf16
       exactly), so its error is the same rounding of P and of the output over values of the same magnitude (up to
       the descale's amax, at most 3, on a few arbitrary-code elements): the same tolerances hold. */
    const double tol = c->dtype == FA_DTYPE_BFLOAT16 ? 2.5e-2 : 4e-3;
    /* Rotary tables of capacity + sq rows (every query position fits), angles pos / 10000^(2t / rd) as models
       build them, rounded to the dtype; NULL without rotary. */
    const int rot_rows = c->capacity + max_q, rot_half = c->rotary_dim / 2;
    uint16_t* rcos = c->rotary_dim > 0 ? malloc(sizeof(uint16_t) * rot_rows * rot_half) : NULL;
    uint16_t* rsin = c->rotary_dim > 0 ? malloc(sizeof(uint16_t) * rot_rows * rot_half) : NULL;
    uint16_t* q_rot = malloc(n_q * 2);
    double* tmp = malloc(sizeof(double) * c->d);
    void* graph = NULL;
    int32_t splits_used = 0;
    const int n_desc = c->per_tensor ? 1 : c->hkv;

    memset(&d, 0, sizeof d);
    for (b = 0; b < c->b; ++b) {
        lens[b] = c->lens[b];
        pads[b] = case_pad(c, b);
        idx[b] = b;
    }
    for (b = 0; b <= c->b; ++b) {
        cuq[b] = case_q0(c, b);
        cuk[b] = case_k0(c, b);
    }
    for (i = 0; i < 16; ++i) {
        kds[i] = (float)((2.0 + uniform01()) / 448.0);
        vds[i] = (float)((2.0 + uniform01()) / 448.0);
    }
    for (i = 0; i < 64; ++i) slopes[i] = (float)(0.02 + 0.3 * uniform01());
    /* cache_batch_idx: the first b entries of a shuffled pool (rows no sequence uses stay NaN and untouched). */
    if (c->pool > 0) {
        int32_t perm[64];
        for (i = 0; i < c->pool; ++i) perm[i] = (int32_t)i;
        for (i = c->pool - 1; i > 0; --i) {
            const int64_t j = (int64_t)(uniform01() * (double)(i + 1)) % (i + 1);
            const int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        for (b = 0; b < c->b; ++b) idx[b] = perm[b];
    }
    /* A shuffled block table; entries past a sequence's pages, before its left pad's page and of pool rows no
       sequence uses are -1 (never read). */
    if (paged) {
        int32_t* perm = malloc(sizeof(int32_t) * num_blocks);
        for (i = 0; i < num_blocks; ++i) perm[i] = (int32_t)i;
        for (i = num_blocks - 1; i > 0; --i) {
            const int64_t j = (int64_t)(uniform01() * (double)(i + 1)) % (i + 1);
            const int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        for (i = 0; i < (int64_t)rows * max_blocks; ++i) table[i] = -1;
        for (b = 0; b < c->b; ++b) {
            const int total = lens[b] + case_kn(c, b);
            for (i = 0; i < max_blocks; ++i) {
                const int used = i * c->block_size < total && (i + 1) * c->block_size > pads[b];
                table[idx[b] * max_blocks + i] = used ? perm[idx[b] * max_blocks + i] : -1;
            }
        }
        free(perm);
    }
    /* Every slot NaN (an fp8 cache: 0x7F); then the cached tokens from the left pad on (the slots before it stay NaN). */
    if (c->fp8) {
        memset(kc, 0x7F, cache_bytes);
        memset(vc, 0x7F, cache_bytes);
    } else {
        for (i = 0; i < cache_rows * row; ++i) kc16[i] = vc16[i] = nan16(c->dtype);
    }
    for (b = 0; b < c->b; ++b) {
        for (pos = pads[b]; pos < lens[b]; ++pos) {
            const int64_t r = cache_row(c, table, max_blocks, idx[b], pos) * row;
            for (i = 0; i < row; ++i) {
                if (c->fp8) {
                    kc[r + i] = random_e4m3(case_descale(c, kds, (int)(i / c->d)));
                    vc[r + i] = random_e4m3(case_descale(c, vds, (int)(i / c->d)));
                } else {
                    kc16[r + i] = random16(c->dtype);
                    vc16[r + i] = random16(c->dtype);
                }
            }
        }
    }
    for (i = 0; i < n_q; ++i) q[i] = random16(c->dtype);
    for (i = 0; c->rotary_dim > 0 && i < (int64_t)rot_rows * rot_half; ++i) {
        const double theta = (double)(i / rot_half) * pow(10000.0, -2.0 * (double)(i % rot_half) / c->rotary_dim);
        rcos[i] = to16(c->dtype, cos(theta));
        rsin[i] = to16(c->dtype, sin(theta));
    }
    for (i = 0; i < n_new; ++i) {
        kn[i] = random16(c->dtype);
        vn[i] = random16(c->dtype);
    }
    if (c->fp8 && c->extremes) {
        /* One new element in seven beyond what e4m3 holds after the descale (|x| / descale from 460 to 4000), one in
           sixty-four +-Inf: all stored as +-448 (0x7E / 0xFE). */
        const uint16_t inf = c->dtype == FA_DTYPE_BFLOAT16 ? 0x7F80u : 0x7C00u;
        for (i = 0; i < n_new; ++i) {
            const double u = uniform01();
            const float kd = case_descale(c, kds, (int)((i % row) / c->d)), vd = case_descale(c, vds, (int)((i % row) / c->d));
            const double sign = uniform01() < 0.5 ? -1.0 : 1.0;
            if (u < 1.0 / 64) {
                kn[i] = (uint16_t)(inf | (sign < 0 ? 0x8000u : 0u));
                vn[i] = (uint16_t)(inf | (uniform01() < 0.5 ? 0x8000u : 0u));
            } else if (u < 1.0 / 7) {
                kn[i] = to16(c->dtype, sign * (460.0 + 3540.0 * uniform01()) * kd);
                vn[i] = to16(c->dtype, -sign * (460.0 + 3540.0 * uniform01()) * vd);
            }
        }
    }
    if (c->fp8 && c->nan_new) {
        /* Sequence 0's last new key and sequence 1's first new value, head 0: one NaN element each. */
        const uint16_t nan = nan16(c->dtype);
        kn[((int64_t)case_k0(c, 0) + case_kn(c, 0) - 1) * row + 5 % c->d] = nan;
        vn[(int64_t)case_k0(c, 1) * row + 7 % c->d] = nan;
    }

    d.q = dev_alloc(n_q * 2);
    d.kc = dev_alloc(cache_bytes);
    d.vc = dev_alloc(cache_bytes);
    d.kn = dev_alloc(n_new * 2);
    d.vn = dev_alloc(n_new * 2);
    d.out = dev_alloc(n_q * 2);
    d.lse = dev_alloc(n_lse * 4);
    d.lens = dev_alloc(sizeof(int32_t) * c->b);
    d.table = paged ? dev_alloc(sizeof(int32_t) * rows * max_blocks) : NULL;
    d.idx = c->pool > 0 ? dev_alloc(sizeof(int32_t) * c->b) : NULL;
    d.pads = c->use_pads ? dev_alloc(sizeof(int32_t) * c->b) : NULL;
    if (c->rotary_dim > 0) {
        d.rcos = dev_alloc(sizeof(uint16_t) * rot_rows * rot_half);
        d.rsin = dev_alloc(sizeof(uint16_t) * rot_rows * rot_half);
        fa_memcpy(d.rcos, rcos, sizeof(uint16_t) * rot_rows * rot_half);
        fa_memcpy(d.rsin, rsin, sizeof(uint16_t) * rot_rows * rot_half);
    }
    if (c->varlen_q) {
        d.cuq = dev_alloc(sizeof(int32_t) * (c->b + 1));
        fa_memcpy(d.cuq, cuq, sizeof(int32_t) * (c->b + 1));
    }
    if (c->varlen_k) {
        d.cuk = dev_alloc(sizeof(int32_t) * (c->b + 1));
        fa_memcpy(d.cuk, cuk, sizeof(int32_t) * (c->b + 1));
    }
    if (c->fp8) {
        d.kds = dev_alloc(sizeof(float) * n_desc);
        d.vds = dev_alloc(sizeof(float) * n_desc);
        fa_memcpy(d.kds, kds, sizeof(float) * n_desc);
        fa_memcpy(d.vds, vds, sizeof(float) * n_desc);
    }
    if (c->alibi) {
        d.slopes = dev_alloc(sizeof(float) * c->hq);
        fa_memcpy(d.slopes, slopes, sizeof(float) * c->hq);
    }
    if (d.idx) fa_memcpy(d.idx, idx, sizeof(int32_t) * c->b);
    if (d.pads) fa_memcpy(d.pads, pads, sizeof(int32_t) * c->b);
    fa_memcpy(d.q, q, n_q * 2);
    fa_memcpy(d.kc, kc, cache_bytes);
    fa_memcpy(d.vc, vc, cache_bytes);
    fa_memcpy(d.kn, kn, n_new * 2);
    fa_memcpy(d.vn, vn, n_new * 2);
    fa_memcpy(d.lens, lens, sizeof(int32_t) * c->b);
    if (paged) fa_memcpy(d.table, table, sizeof(int32_t) * rows * max_blocks);
    fa_memset_async(d.out, 0xFF, n_q * 2, stream); /* poison: NaN */
    fa_memset_async(d.lse, 0xFF, n_lse * 4, stream);

    fa_decode_params_init(&p, sizeof p);
    if (c->varlen_q) {
        /* Packed queries (C ABI 0.12): q/out [total_q, hq, d], lse [hq, total_q], cu_seqlens_q [b + 1]. */
        const int64_t qs[3] = {q_rows, c->hq, c->d}, ls[2] = {c->hq, q_rows}, cs[1] = {c->b + 1};
        set_dense(&p.q, d.q, c->dtype, 3, qs);
        set_dense(&p.out, d.out, c->dtype, 3, qs);
        set_dense(&p.lse, d.lse, FA_DTYPE_FLOAT32, 2, ls);
        set_dense(&p.cu_seqlens_q, d.cuq, FA_DTYPE_INT32, 1, cs);
        p.max_seqlen_q = max_q;
        if (c->host_lens) p.cu_seqlens_q_host = cuq;
    } else {
        const int64_t lse_shape[3] = {c->b, c->hq, c->sq};
        set4(&p.q, d.q, c->dtype, c->b, c->sq, c->hq, c->d);
        set4(&p.out, d.out, c->dtype, c->b, c->sq, c->hq, c->d);
        set_dense(&p.lse, d.lse, FA_DTYPE_FLOAT32, 3, lse_shape);
    }
    if (paged) {
        const int64_t table_shape[2] = {rows, max_blocks};
        set4(&p.k_cache, d.kc, cache_dtype, num_blocks, c->block_size, c->hkv, c->d);
        set4(&p.v_cache, d.vc, cache_dtype, num_blocks, c->block_size, c->hkv, c->d);
        set_dense(&p.block_table, d.table, FA_DTYPE_INT32, 2, table_shape);
    } else {
        set4(&p.k_cache, d.kc, cache_dtype, rows, c->capacity, c->hkv, c->d);
        set4(&p.v_cache, d.vc, cache_dtype, rows, c->capacity, c->hkv, c->d);
    }
    if (c->fp8) {
        const int64_t ds[1] = {n_desc};
        set_dense(&p.k_descale, d.kds, FA_DTYPE_FLOAT32, 1, ds);
        set_dense(&p.v_descale, d.vds, FA_DTYPE_FLOAT32, 1, ds);
    }
    if (c->alibi) {
        const int64_t hs[1] = {c->hq};
        set_dense(&p.alibi_slopes, d.slopes, FA_DTYPE_FLOAT32, 1, hs);
    }
    if (c->append && c->varlen_k) {
        /* Packed new keys/values (C ABI 0.12): [total_k_new, hkv, d], cu_seqlens_k_new [b + 1]. */
        const int64_t ks[3] = {total_kn, c->hkv, c->d}, cs[1] = {c->b + 1};
        set_dense(&p.k_new, d.kn, c->dtype, 3, ks);
        set_dense(&p.v_new, d.vn, c->dtype, 3, ks);
        set_dense(&p.cu_seqlens_k_new, d.cuk, FA_DTYPE_INT32, 1, cs);
        if (c->host_lens) p.cu_seqlens_k_new_host = cuk;
    } else if (c->append) {
        set4(&p.k_new, d.kn, c->dtype, c->b, added, c->hkv, c->d);
        set4(&p.v_new, d.vn, c->dtype, c->b, added, c->hkv, c->d);
    }
    {
        const int64_t shape[1] = {c->b};
        if (d.idx) set_dense(&p.cache_batch_idx, d.idx, FA_DTYPE_INT32, 1, shape);
        if (d.pads) set_dense(&p.cache_leftpad, d.pads, FA_DTYPE_INT32, 1, shape);
        /* The host copies go with the host lengths (the other cases leave the kernels to trust the devices'). */
        if (c->host_lens && d.idx) p.cache_batch_idx_host = idx;
        if (c->host_lens && d.pads) p.cache_leftpad_host = pads;
    }
    {
        const int64_t lens_shape[1] = {c->b};
        set_dense(&p.cache_seqlens, d.lens, FA_DTYPE_INT32, 1, lens_shape);
    }
    if (c->rotary_dim > 0) {
        p.rotary_cos = d.rcos;
        p.rotary_sin = d.rsin;
        p.rotary_dim = c->rotary_dim;
        p.rotary_seqlen = rot_rows;
        p.rotary_interleaved = !c->rotary_neox;
    }
    p.causal = c->causal;
    p.window_left = c->window_left;
    p.window_right = c->window_right;
    p.softcap = c->softcap;
    p.softmax_scale = c->scale;
    p.num_splits = c->num_splits;
    if (c->host_lens) p.cache_seqlens_host = lens;
    /* The appending cases that pass host lengths also let the call advance cache_seqlens on the device; the
       others must leave it as it was. */
    p.advance_cache_seqlens = c->append && c->host_lens;
    expect(c->label, fa_decode_num_splits(context, &p, &splits_used), FA_STATUS_SUCCESS, NULL);
    if (c->caller_workspace) {
        size_t bytes = 0;
        expect("decode_workspace_size", fa_decode_workspace_size(context, &p, &bytes), FA_STATUS_SUCCESS, NULL);
        CHECK(splits_used > 1 ? bytes > 0 : bytes == 0, "%s: %d splits need %lu workspace bytes", c->label,
              (int)splits_used, (unsigned long)bytes);
        if (bytes > 0) {
            d.ws = dev_alloc(bytes);
            p.workspace = d.ws;
            p.workspace_size = bytes - 1;
            expect("decode, workspace one byte short", fa_decode(context, &p, stream), FA_STATUS_INVALID_ARGUMENT,
                   "workspace_size");
            p.workspace_size = bytes;
        }
    }
    if (use_graph) {
        expect("begin_capture", fa_stream_begin_capture(stream), FA_STATUS_SUCCESS, NULL);
        expect("decode (captured)", fa_decode(context, &p, stream), FA_STATUS_SUCCESS, NULL);
        expect("end_capture", fa_stream_end_capture(stream, &graph), FA_STATUS_SUCCESS, NULL);
        ok = expect("graph_launch", fa_graph_launch(graph, stream), FA_STATUS_SUCCESS, NULL);
    } else {
        ok = expect(c->label, fa_decode(context, &p, stream), FA_STATUS_SUCCESS, NULL);
    }
    expect("stream_synchronize", fa_stream_synchronize(stream), FA_STATUS_SUCCESS, NULL);
    fa_memcpy(out, d.out, n_q * 2);
    fa_memcpy(lse, d.lse, n_lse * 4);
    fa_memcpy(kc_after, d.kc, cache_bytes);
    fa_memcpy(vc_after, d.vc, cache_bytes);
    {
        int32_t lens_after[6];
        int same = 1;
        fa_memcpy(lens_after, d.lens, sizeof(int32_t) * c->b);
        for (b = 0; b < c->b; ++b) same &= lens_after[b] == lens[b] + (p.advance_cache_seqlens ? case_kn(c, b) : 0);
        CHECK(same, "%s: cache_seqlens after the call must be %s", c->label,
              p.advance_cache_seqlens ? "the old lengths plus each sequence's appended count" : "unchanged");
    }

    /* The expected cache: the new rows appended, nothing else touched (NaN slots compared bitwise). With rotary the
       appended keys are the new keys rotated at their positions (fp32 on the GPU, one rounding): each within one
       unit in the last place of the float64 rotation, then taken as stored so the rest compares bitwise.
       An fp8 cache: each appended element is what a cache of q's dtype would store, quantized (e4m3_quantize: float
       of it / its head's descale, e4m3 nearest even, saturated): bit for bit without rotary. With rotary the key
       is first rotated, by the GPU in fp32 and here in float64, each rounded once to q's dtype: the two may differ
       by a unit in the last place, and the stored byte then by one e4m3 step (the quantization of neighbouring
       16-bit values); so a rotated key's byte must lie within one step of the host's (same sign side of zero
       included), and is taken as stored. A NaN element must be stored as NaN (magnitude 0x7F; its sign is not
       specified). */
    if (c->append) {
        const double ulp = c->dtype == FA_DTYPE_BFLOAT16 ? 1.0 / 128 : 1.0 / 1024;
        int rot_bad = 0, q_bad = 0, nan_bad = 0;
        for (b = 0; b < c->b; ++b) {
            for (pos = 0; pos < case_kn(c, b); ++pos) {
                const int64_t r = cache_row(c, table, max_blocks, idx[b], lens[b] + pos) * row;
                const uint16_t* src = kn + ((int64_t)case_k0(c, b) + pos) * row;
                const uint16_t* vsrc = vn + ((int64_t)case_k0(c, b) + pos) * row;
                int h, e;
                for (h = 0; h < c->hkv; ++h) {
                    const float kd = c->fp8 ? case_descale(c, kds, h) : 1.0f, vd = c->fp8 ? case_descale(c, vds, h) : 1.0f;
                    for (e = 0; e < c->d; ++e) tmp[e] = to_double(c->dtype, src[h * c->d + e]);
                    if (c->rotary_dim > 0) {
                        const int64_t tr = (int64_t)(lens[b] + pos) * rot_half;
                        rotate(c, tmp, rcos + tr, rsin + tr);
                    }
                    for (e = 0; e < c->d; ++e) {
                        const int64_t at = r + h * c->d + e;
                        if (!c->fp8) {
                            kc16[at] = src[h * c->d + e];
                            vc16[at] = vsrc[h * c->d + e];
                            if (c->rotary_dim > 0) {
                                const uint16_t got = ((const uint16_t*)(const void*)kc_after)[at];
                                const double gv = to_double(c->dtype, got);
                                if (!(fabs(gv - tmp[e]) <= ulp * fabs(tmp[e]) + 1e-6)) ++rot_bad;
                                kc16[at] = got;
                            }
                            continue;
                        }
                        {
                            /* The key as a cache of q's dtype would hold it (rotated and rounded once), quantized. */
                            const float kx = (float)to_double(c->dtype, c->rotary_dim > 0 ? to16(c->dtype, tmp[e])
                                                                                          : src[h * c->d + e]);
                            const uint8_t want_k = e4m3_quantize(kx, kd);
                            const uint8_t want_v = e4m3_quantize((float)to_double(c->dtype, vsrc[h * c->d + e]), vd);
                            const uint8_t got_k = kc_after[at], got_v = vc_after[at];
                            if ((want_k & 0x7F) == 0x7F || (want_v & 0x7F) == 0x7F) {
                                nan_bad += ((want_k & 0x7F) == 0x7F) != ((got_k & 0x7F) == 0x7F);
                                nan_bad += ((want_v & 0x7F) == 0x7F) != ((got_v & 0x7F) == 0x7F);
                            }
                            if ((want_k & 0x7F) != 0x7F) {
                                if (c->rotary_dim > 0) {
                                    rot_bad += (got_k & 0x7F) == 0x7F || abs(e4m3_ordinal(got_k) - e4m3_ordinal(want_k)) > 1;
                                } else {
                                    q_bad += got_k != want_k;
                                }
                            }
                            if ((want_v & 0x7F) != 0x7F) q_bad += got_v != want_v;
                            kc[at] = c->rotary_dim > 0 || (want_k & 0x7F) == 0x7F ? got_k : want_k;
                            vc[at] = (want_v & 0x7F) == 0x7F ? got_v : want_v;
                        }
                    }
                }
            }
        }
        CHECK(rot_bad == 0, "%s: %d appended key elements are not the rotated new keys (%s)", c->label, rot_bad,
              c->fp8 ? "within one e4m3 step of the host's quantization" : "within 1 ulp");
        CHECK(q_bad == 0, "%s: %d appended fp8 elements differ from the host's quantization (bit for bit)", c->label, q_bad);
        CHECK(nan_bad == 0, "%s: %d appended NaN elements are not stored as NaN (or the reverse)", c->label, nan_bad);
    }
    cache_ok = memcmp(kc, kc_after, cache_bytes) == 0 && memcmp(vc, vc_after, cache_bytes) == 0;
    CHECK(cache_ok, "%s: the cache after the call differs from the cache with the new rows appended", c->label);

    /* The cache as attended, in float64: a 16-bit cache's elements, an fp8 cache's bytes times their descales. */
    for (i = 0; i < cache_rows * row; ++i) {
        if (c->fp8) {
            const int h = (int)((i % row) / c->d);
            kcd[i] = e4m3_value(kc[i]) * (double)case_descale(c, kds, h);
            vcd[i] = e4m3_value(vc[i]) * (double)case_descale(c, vds, h);
        } else {
            kcd[i] = to_double(c->dtype, kc16[i]);
            vcd[i] = to_double(c->dtype, vc16[i]);
        }
    }

    /* The queries as the kernel sees them: rotated at cache_seqlens + i (causal or windowed) or cache_seqlens, in
       float64 and rounded to the dtype, as the kernel rounds its fp32 rotation. */
    memcpy(q_rot, q, n_q * 2);
    if (c->rotary_dim > 0) {
        int qi, h, e;
        for (b = 0; b < c->b; ++b) {
            for (qi = 0; qi < case_qn(c, b); ++qi) {
                const int64_t tr = (int64_t)(lens[b] + (rotary_per_row(c) ? qi : 0)) * rot_half;
                for (h = 0; h < c->hq; ++h) {
                    uint16_t* x = q_rot + (((int64_t)case_q0(c, b) + qi) * c->hq + h) * c->d;
                    for (e = 0; e < c->d; ++e) tmp[e] = to_double(c->dtype, x[e]);
                    rotate(c, tmp, rcos + tr, rsin + tr);
                    for (e = 0; e < c->d; ++e) x[e] = to16(c->dtype, tmp[e]);
                }
            }
        }
    }
    for (i = 0; i < n_lse; ++i) ref_lse[i] = LSE_UNOWNED; /* rows no sequence owns: compared as untouched below */
    reference(c, q_rot, kcd, vcd, table, max_blocks, idx, slopes, ref, ref_lse, skip);
    {
        /* Rows past cu_seqlens_q[b] (no sequence's) keep their poison: out bitwise, lse as the all-ones NaN. */
        int64_t untouched = 0, extra = 0;
        uint32_t bits;
        for (i = n_q_used; i < n_q; ++i, ++extra) untouched += out[i] == 0xFFFF;
        for (i = 0; i < n_lse; ++i) {
            if (ref_lse[i] != LSE_UNOWNED) continue;
            memcpy(&bits, &lse[i], 4);
            untouched += bits == 0xFFFFFFFFu;
            ++extra;
        }
        CHECK(untouched == extra, "%s: %ld of %ld elements of rows past the sequences were written", c->label,
              (long)(extra - untouched), (long)extra);
    }
    for (i = 0; i < n_q_used; ++i) {
        const double got = to_double(c->dtype, out[i]);
        double err;
        if (skip[i / c->d]) {
            ++skipped;
            continue;
        }
        if (ref[i] != ref[i]) {
            /* A NaN value this row attends: the element must be NaN too. */
            nan_mismatch += got == got;
            continue;
        }
        err = fabs(got - ref[i]);
        if (got != got) ++nan_out;
        if (err > max_err || err != err) max_err = err != err ? INFINITY : err;
        num += (got - ref[i]) * (got - ref[i]);
        den += ref[i] * ref[i];
    }
    for (i = 0; i < n_lse; ++i) {
        const double want = ref_lse[i];
        if (want == LSE_UNOWNED) continue; /* a row no sequence owns (checked above) */
        if (want != want) continue;        /* a row that sees a NaN key (skipped) */
        if (isinf(want)) {
            lse_ok &= isinf(lse[i]) && lse[i] > 0;
        } else {
            const double err = fabs(lse[i] - want);
            if (err > max_lse_err || err != err) max_lse_err = err != err ? INFINITY : err;
        }
    }
    rel = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("  %-4s %-44s splits %3d  max|err| %.2e  rel L2 %.2e  max|lse err| %.2e%s\n",
           ok && max_err <= tol && rel_l2_within_cap(rel, c->dtype) && lse_ok && max_lse_err < 2e-3 && cache_ok &&
                   nan_mismatch == 0
               ? "PASS"
               : "FAIL",
           c->label, (int)splits_used, max_err, rel, max_lse_err, skipped > 0 ? "  (rows seeing a NaN key skipped)" : "");
    CHECK(nan_out == 0, "%s: %d output elements are NaN", c->label, nan_out);
    CHECK(nan_mismatch == 0, "%s: %d output elements that attend a NaN value are not NaN", c->label, nan_mismatch);
    CHECK(max_err <= tol, "%s: max abs error %.3e above %.1e", c->label, max_err, tol);
    CHECK(rel_l2_within_cap(rel, c->dtype), "%s: relative L2 error %.3e above the %s cap %.0e", c->label, rel,
          c->dtype == FA_DTYPE_BFLOAT16 ? "bf16" : "fp16", rel_l2_cap(c->dtype));
    CHECK(lse_ok, "%s: rows that see no key must get log-sum-exp +inf", c->label);
    CHECK(max_lse_err < 2e-3, "%s: log-sum-exp error %.3e", c->label, max_lse_err);
    if (c->nan_new) {
        CHECK(skipped > 0 && skipped < n_q_used, "%s: the NaN key must be seen by some rows and not by others (%d of "
              "%ld elements skipped)", c->label, skipped, (long)n_q_used);
    }

    if (graph != NULL) fa_graph_destroy(graph);
    fa_memory_free(0, d.q);
    fa_memory_free(0, d.kc);
    fa_memory_free(0, d.vc);
    fa_memory_free(0, d.kn);
    fa_memory_free(0, d.vn);
    fa_memory_free(0, d.out);
    fa_memory_free(0, d.lse);
    fa_memory_free(0, d.lens);
    fa_memory_free(0, d.table);
    fa_memory_free(0, d.ws);
    fa_memory_free(0, d.idx);
    fa_memory_free(0, d.pads);
    fa_memory_free(0, d.rcos);
    fa_memory_free(0, d.rsin);
    fa_memory_free(0, d.cuq);
    fa_memory_free(0, d.cuk);
    fa_memory_free(0, d.kds);
    fa_memory_free(0, d.vds);
    fa_memory_free(0, d.slopes);
    free(rcos); free(rsin); free(q_rot); free(tmp); free(skip); free(kcd); free(vcd);
    free(q); free(kc); free(vc); free(kn); free(vn); free(out); free(kc_after); free(vc_after);
    free(lse); free(ref); free(ref_lse); free(table);
}

/* ---- device pointers (issue 16): host, freed and too-small memory refused before any launch; device-only ----
   lengths and block ids that do not fit the cache reported by the context (issue 15) */

#define DP_SMALL_BYTES 4096
#define DP_POISON 0x5A

static int all_poison(void* device, size_t bytes) {
    unsigned char* h = (unsigned char*)malloc(bytes);
    size_t i;
    int same = h != NULL && fa_memcpy(h, device, bytes) == FA_STATUS_SUCCESS;
    for (i = 0; same && i < bytes; ++i) same = h[i] == DP_POISON;
    free(h);
    return same;
}

static void test_device_pointers(fa_context_t context, void* stream) {
    enum { B = 2, SQ = 1, HQ = 4, HKV = 2, BLOCK = 16, PAGES = 4, NBLOCKS = 8, SPLITS = 4 };
    const int64_t d = FA_TEST_HEAD_DIM;
    const size_t q_bytes = (size_t)B * SQ * HQ * d * 2, cache_bytes = (size_t)NBLOCKS * BLOCK * HKV * d * 2;
    const size_t lse_bytes = (size_t)B * HQ * SQ * 4;
    const int32_t lens[B] = {20, 50}, table[B * PAGES] = {0, 1, 2, 3, 4, 5, 6, 7};
    const int64_t lens_shape[1] = {B}, table_shape[2] = {B, PAGES}, lse_shape[3] = {B, HQ, SQ};
    void *q = NULL, *kc = NULL, *vc = NULL, *o = NULL, *lse = NULL, *seq = NULL, *bt = NULL, *ws = NULL;
    void *small = NULL, *freed = NULL, *host_block = NULL, *host = NULL;
    fa_decode_params_t base, p;
    size_t ws_bytes = 0;
    int arg, kind;
    char label[128], needle[64];
    static const char* const kinds[3] = {"host memory", "freed memory", "a too-small allocation"};
    static const char* const fields[4] = {"block_table.data", "cache_seqlens.data", "workspace", "out.data"};

    host_block = malloc(1 << 20);
    host = (void*)(((uintptr_t)host_block + 255) & ~(uintptr_t)255);
    fa_memory_alloc(0, q_bytes, &q);
    fa_memory_alloc(0, cache_bytes, &kc);
    fa_memory_alloc(0, cache_bytes, &vc);
    fa_memory_alloc(0, q_bytes, &o);
    fa_memory_alloc(0, lse_bytes, &lse);
    fa_memory_alloc(0, 256, &seq);
    fa_memory_alloc(0, 256, &bt);
    fa_memory_alloc(0, 1 << 20, &ws);
    fa_memory_alloc(0, DP_SMALL_BYTES, &small);
    fa_memory_alloc(0, 1 << 20, &freed);
    fa_memory_free(0, freed); /* allocated last, so that nothing after takes its address */
    if (host_block == NULL || !q || !kc || !vc || !o || !lse || !seq || !bt || !ws || !small) {
        CHECK(0, "device pointers: allocation failed: %s", fa_last_error_message());
        goto done;
    }
    memset(host_block, 0, 1 << 20);
    fa_memset_async(q, 0, q_bytes, stream);
    fa_memset_async(kc, 0, cache_bytes, stream);
    fa_memset_async(vc, 0, cache_bytes, stream);
    fa_memcpy(seq, lens, sizeof lens);
    fa_memcpy(bt, table, sizeof table);

    fa_decode_params_init(&base, sizeof base);
    set4(&base.q, q, FA_DTYPE_FLOAT16, B, SQ, HQ, d);
    set4(&base.out, o, FA_DTYPE_FLOAT16, B, SQ, HQ, d);
    set4(&base.k_cache, kc, FA_DTYPE_FLOAT16, NBLOCKS, BLOCK, HKV, d);
    set4(&base.v_cache, vc, FA_DTYPE_FLOAT16, NBLOCKS, BLOCK, HKV, d);
    set_dense(&base.block_table, bt, FA_DTYPE_INT32, 2, table_shape);
    set_dense(&base.cache_seqlens, seq, FA_DTYPE_INT32, 1, lens_shape);
    set_dense(&base.lse, lse, FA_DTYPE_FLOAT32, 3, lse_shape);
    base.num_splits = SPLITS;
    if (!expect("device pointers: decode workspace size", fa_decode_workspace_size(context, &base, &ws_bytes),
                FA_STATUS_SUCCESS, NULL)) {
        goto done;
    }
    CHECK(ws_bytes > DP_SMALL_BYTES && ws_bytes <= (size_t)1 << 20, "workspace of %zu bytes", ws_bytes);
    base.workspace = ws;
    base.workspace_size = ws_bytes;
    expect("device pointers: valid decode", fa_decode(context, &base, stream), FA_STATUS_SUCCESS, NULL);

    for (arg = 0; arg < 4; ++arg) {
        for (kind = 0; kind < 3; ++kind) {
            /* int arrays: the small block's last 4 bytes (the array needs 8 or 32) */
            void* bad_ptr = kind == 0 ? host : kind == 1 ? freed
                                                         : (arg < 2 ? (unsigned char*)small + DP_SMALL_BYTES - 4 : small);
            p = base;
            if (arg == 0) p.block_table.data = bad_ptr;
            if (arg == 1) p.cache_seqlens.data = bad_ptr;
            if (arg == 2) p.workspace = bad_ptr;
            if (arg == 3) p.out.data = bad_ptr;
            if (arg == 3 && kind == 2) {
                /* out is 1 KiB at head dim 64: a pointer 512 bytes before the small block's end is short of it */
                p.out.data = (unsigned char*)small + DP_SMALL_BYTES - 512;
            }
            fa_memset_async(o, DP_POISON, q_bytes, stream);
            fa_memset_async(lse, DP_POISON, lse_bytes, stream);
            fa_stream_synchronize(stream);
            sprintf(label, "decode, %s in %s", fields[arg], kinds[kind]);
            sprintf(needle, "%s (0x", fields[arg]);
            expect(label, fa_decode(context, &p, stream), FA_STATUS_INVALID_ARGUMENT, needle);
            CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "%s: the stream failed: %s", label,
                  fa_last_error_message());
            CHECK((arg == 3 || all_poison(o, q_bytes)) && all_poison(lse, lse_bytes), "%s: the outputs were written", label);
            sprintf(label, "decode after %s in %s", fields[arg], kinds[kind]);
            expect(label, fa_decode(context, &base, stream), FA_STATUS_SUCCESS, NULL);
            CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "%s: %s", label, fa_last_error_message());
        }
    }
    expect("device lengths: nothing reported after valid calls", fa_context_check(context), FA_STATUS_SUCCESS, NULL);
    {
        /* Device-only lengths and block ids that do not fit the cache (capacity PAGES * BLOCK = 64 per sequence):
           the kernels clamp them (no access outside the cache) and the context reports them once. */
        const int32_t too_long[B] = {20, PAGES * BLOCK + 1}, negative[B] = {-3, 50}, at_capacity[B] = {PAGES * BLOCK, 0};
        const int32_t bad_table[B * PAGES] = {0, 1, 2, 3, 4, 5, NBLOCKS, 7}, neg_table[B * PAGES] = {0, -1, 2, 3, 4, 5, 6, 7};
        const struct { const char* what; const int32_t* lens; const int32_t* table; const char* needle; } cases[4] = {
            {"a length beyond the capacity", too_long, table, "cache_seqlens"},
            {"a negative length", negative, table, "cache_seqlens"},
            {"a block id = num_blocks", lens, bad_table, "block_table entry outside"},
            {"a negative block id", at_capacity, neg_table, "block_table entry outside"},
        };
        int c;
        /* Copies ordered on the call's stream (a pageable fa_memcpy may still be in flight when it returns). */
        for (c = 0; c < 4; ++c) {
            fa_memcpy_async(seq, cases[c].lens, sizeof lens, stream);
            fa_memcpy_async(bt, cases[c].table, sizeof table, stream);
            sprintf(label, "device lengths, %s: the launch", cases[c].what);
            expect(label, fa_decode(context, &base, stream), FA_STATUS_SUCCESS, NULL);
            CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "%s: %s", label, fa_last_error_message());
            sprintf(label, "device lengths, %s: fa_context_check", cases[c].what);
            expect(label, fa_context_check(context), FA_STATUS_DEVICE_CHECK_FAILED, cases[c].needle);
            sprintf(label, "device lengths, %s: reported once", cases[c].what);
            expect(label, fa_context_check(context), FA_STATUS_SUCCESS, NULL);
        }
        /* A length exactly at the capacity is valid: nothing reported. */
        fa_memcpy_async(seq, at_capacity, sizeof lens, stream);
        fa_memcpy_async(bt, table, sizeof table, stream);
        expect("device lengths at the capacity", fa_decode(context, &base, stream), FA_STATUS_SUCCESS, NULL);
        fa_stream_synchronize(stream);
        expect("device lengths at the capacity: nothing reported", fa_context_check(context), FA_STATUS_SUCCESS, NULL);
        /* Not checked explicitly: the next call reports it, launches nothing and leaves its outputs alone. */
        fa_memcpy_async(seq, too_long, sizeof lens, stream);
        expect("device lengths: a call that overflows", fa_decode(context, &base, stream), FA_STATUS_SUCCESS, NULL);
        fa_stream_synchronize(stream);
        fa_memcpy_async(seq, lens, sizeof lens, stream);
        fa_memset_async(o, DP_POISON, q_bytes, stream);
        fa_memset_async(lse, DP_POISON, lse_bytes, stream);
        fa_stream_synchronize(stream);
        expect("device lengths: the next fa_decode reports it", fa_decode(context, &base, stream),
               FA_STATUS_DEVICE_CHECK_FAILED, "launched nothing");
        fa_stream_synchronize(stream);
        CHECK(all_poison(o, q_bytes) && all_poison(lse, lse_bytes), "device lengths: the refused call wrote its outputs");
        expect("device lengths: the call after that", fa_decode(context, &base, stream), FA_STATUS_SUCCESS, NULL);
        CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "device lengths: %s", fa_last_error_message());
        expect("device lengths: nothing left", fa_context_check(context), FA_STATUS_SUCCESS, NULL);
    }
    {
        /* Device-only cu_seqlens_q / cu_seqlens_k_new (C ABI 0.12): packed q/out [2, HQ, d] (max_seqlen_q 1) and
           k_new/v_new [2, HKV, d]; an entry past the packed rows, a decreasing array or a query count above
           max_seqlen_q is clamped by the kernels and reported once, naming the array; arrays that fit report nothing. */
        const int32_t ok[B + 1] = {0, 1, 2}, too_many[B + 1] = {0, 2, 2}, past[B + 1] = {0, 1, 3}, down[B + 1] = {1, 0, 2};
        const int64_t qs[3] = {B * SQ, HQ, d}, ls[2] = {HQ, B * SQ}, ks[3] = {2, HKV, d}, cs[1] = {B + 1};
        const struct { const char* what; const int32_t* cuq; const int32_t* cuk; const char* needle; } cases[6] = {
            {"arrays that fit", ok, ok, NULL},
            {"a query count above max_seqlen_q", too_many, ok, "cu_seqlens_q"},
            {"cu_seqlens_q past q's rows", past, ok, "cu_seqlens_q"},
            {"a decreasing cu_seqlens_q", down, ok, "cu_seqlens_q"},
            {"cu_seqlens_k_new past k_new's rows", ok, past, "cu_seqlens_k_new"},
            {"a decreasing cu_seqlens_k_new", ok, down, "cu_seqlens_k_new"},
        };
        void *dq = NULL, *dk = NULL, *kn = NULL, *vn = NULL;
        int c;
        fa_memory_alloc(0, 256, &dq);
        fa_memory_alloc(0, 256, &dk);
        fa_memory_alloc(0, (size_t)2 * HKV * d * 2, &kn);
        fa_memory_alloc(0, (size_t)2 * HKV * d * 2, &vn);
        fa_memset_async(kn, 0x3C, (size_t)2 * HKV * d * 2, stream);
        fa_memset_async(vn, 0x3C, (size_t)2 * HKV * d * 2, stream);
        p = base;
        set_dense(&p.q, q, base.q.dtype, 3, qs);
        set_dense(&p.out, o, base.q.dtype, 3, qs);
        set_dense(&p.lse, lse, FA_DTYPE_FLOAT32, 2, ls);
        set_dense(&p.cu_seqlens_q, dq, FA_DTYPE_INT32, 1, cs);
        set_dense(&p.k_new, kn, base.q.dtype, 3, ks);
        set_dense(&p.v_new, vn, base.q.dtype, 3, ks);
        set_dense(&p.cu_seqlens_k_new, dk, FA_DTYPE_INT32, 1, cs);
        p.max_seqlen_q = 1;
        for (c = 0; c < 6 && dq != NULL && dk != NULL && kn != NULL && vn != NULL; ++c) {
            /* Lengths that leave room for the appends of every case (at most 2 keys a sequence). */
            fa_memcpy_async(seq, lens, sizeof lens, stream);
            fa_memcpy_async(bt, table, sizeof table, stream);
            fa_memcpy_async(dq, cases[c].cuq, sizeof ok, stream);
            fa_memcpy_async(dk, cases[c].cuk, sizeof ok, stream);
            sprintf(label, "device counts, %s: the launch", cases[c].what);
            expect(label, fa_decode(context, &p, stream), FA_STATUS_SUCCESS, NULL);
            CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "%s: %s", label, fa_last_error_message());
            sprintf(label, "device counts, %s: fa_context_check", cases[c].what);
            expect(label, fa_context_check(context), cases[c].needle ? FA_STATUS_DEVICE_CHECK_FAILED : FA_STATUS_SUCCESS,
                   cases[c].needle);
            sprintf(label, "device counts, %s: reported once", cases[c].what);
            expect(label, fa_context_check(context), FA_STATUS_SUCCESS, NULL);
        }
        fa_memcpy_async(seq, lens, sizeof lens, stream);
        fa_stream_synchronize(stream);
        fa_memory_free(0, dq);
        fa_memory_free(0, dk);
        fa_memory_free(0, kn);
        fa_memory_free(0, vn);
    }
    {
        /* Device-only cache_batch_idx and cache_leftpad (C ABI 0.7) outside the pool / past the sequence (lengths
           20 and 50, no append): clamped by the kernels, reported once by fa_context_check naming the tensor; the
           same call with values that fit reports nothing. A batch index outside the pool is reported whether the
           sequence has keys to read (pads 0 / 10) or none (pads at the end: every CTA takes the no-key path, which
           once returned before reading cache_batch_idx, so nothing was reported). */
        const int32_t idx_ok[B] = {1, 0}, idx_pool[B] = {0, B}, idx_neg[B] = {-1, 1};
        const int32_t pad_ok[B] = {20, 50}, pad_keys[B] = {0, 10}, pad_past[B] = {0, 51}, pad_neg[B] = {-1, 0};
        const struct { const char* what; const int32_t* idx; const int32_t* pads; const char* needle; } cases[8] = {
            {"values that fit (a pad at the end)", idx_ok, pad_ok, NULL},
            {"values that fit (keys left)", idx_ok, pad_keys, NULL},
            {"a batch index = the pool size", idx_pool, pad_keys, "cache_batch_idx entry outside the pool"},
            {"a negative batch index", idx_neg, pad_keys, "cache_batch_idx entry outside the pool"},
            {"a batch index = the pool size, no key read", idx_pool, pad_ok, "cache_batch_idx entry outside the pool"},
            {"a negative batch index, no key read", idx_neg, pad_ok, "cache_batch_idx entry outside the pool"},
            {"a left pad past the sequence", idx_ok, pad_past, "cache_leftpad entry"},
            {"a negative left pad", idx_ok, pad_neg, "cache_leftpad entry"},
        };
        void *didx = NULL, *dpad = NULL;
        int c;
        fa_memory_alloc(0, 256, &didx);
        fa_memory_alloc(0, 256, &dpad);
        fa_memcpy_async(seq, lens, sizeof lens, stream);
        fa_memcpy_async(bt, table, sizeof table, stream);
        p = base;
        set_dense(&p.cache_batch_idx, didx, FA_DTYPE_INT32, 1, lens_shape);
        set_dense(&p.cache_leftpad, dpad, FA_DTYPE_INT32, 1, lens_shape);
        for (c = 0; c < 8 && didx != NULL && dpad != NULL; ++c) {
            fa_memcpy_async(didx, cases[c].idx, sizeof lens, stream);
            fa_memcpy_async(dpad, cases[c].pads, sizeof lens, stream);
            sprintf(label, "device serving values, %s: the launch", cases[c].what);
            expect(label, fa_decode(context, &p, stream), FA_STATUS_SUCCESS, NULL);
            CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "%s: %s", label, fa_last_error_message());
            sprintf(label, "device serving values, %s: fa_context_check", cases[c].what);
            expect(label, fa_context_check(context), cases[c].needle ? FA_STATUS_DEVICE_CHECK_FAILED : FA_STATUS_SUCCESS,
                   cases[c].needle);
            if (cases[c].needle != NULL) {
                /* Only this case's cause: a batch index is not reported as a pad, nor the other way round. */
                const char* other = strstr(cases[c].needle, "cache_batch_idx") ? "cache_leftpad" : "cache_batch_idx";
                CHECK(strstr(fa_last_error_message(), other) == NULL, "%s: the report also names %s: %s", label, other,
                      fa_last_error_message());
            }
            sprintf(label, "device serving values, %s: reported once", cases[c].what);
            expect(label, fa_context_check(context), FA_STATUS_SUCCESS, NULL);
        }
        /* Not checked explicitly: the next fa_decode reports it and launches nothing. Pads that fit (the last case
           left a negative one, which would be reported beside the batch index) and leave no key to read. */
        fa_memcpy_async(dpad, pad_ok, sizeof lens, stream);
        fa_memcpy_async(didx, idx_pool, sizeof lens, stream);
        expect("device batch index: a call that overflows", fa_decode(context, &p, stream), FA_STATUS_SUCCESS, NULL);
        fa_stream_synchronize(stream);
        fa_memcpy_async(didx, idx_ok, sizeof lens, stream);
        expect("device batch index: the next fa_decode reports it", fa_decode(context, &p, stream),
               FA_STATUS_DEVICE_CHECK_FAILED, "cache_batch_idx");
        CHECK(strstr(fa_last_error_message(), "cache_leftpad") == NULL,
              "device batch index: the next fa_decode also reports a pad: %s", fa_last_error_message());
        fa_stream_synchronize(stream);
        expect("device serving values: nothing left", fa_context_check(context), FA_STATUS_SUCCESS, NULL);
        if (didx != NULL && dpad != NULL) {
            /* An append with a device-only index outside the pool: sequence 1's index B is clamped to row 1, which
               sequence 0 uses here (indices {1, B}); sequence 1 must append nothing, so the cache changes only at
               sequence 0's new slot (row 1's page lens[0] / BLOCK, slot lens[0] % BLOCK), and the call is reported. */
            const int32_t idx_clash[B] = {1, B};
            const size_t kn_bytes = (size_t)B * 1 * HKV * d * 2, row_bytes = (size_t)HKV * d * 2;
            const size_t at = ((size_t)table[1 * PAGES + lens[0] / BLOCK] * BLOCK + lens[0] % BLOCK) * row_bytes;
            unsigned char* before = (unsigned char*)malloc(cache_bytes);
            unsigned char* after = (unsigned char*)malloc(cache_bytes);
            void *kn = NULL, *vn = NULL;
            fa_memory_alloc(0, kn_bytes, &kn);
            fa_memory_alloc(0, kn_bytes, &vn);
            if (kn != NULL && vn != NULL && before != NULL && after != NULL) {
                fa_decode_params_t a = p;
                size_t i, elsewhere = 0, in_slot = 0;
                fa_memset_async(kn, 0x3C, kn_bytes, stream); /* fp16 0x3C3C, not the cache's zeros */
                fa_memset_async(vn, 0x3C, kn_bytes, stream);
                set4(&a.k_new, kn, FA_DTYPE_FLOAT16, B, 1, HKV, d);
                set4(&a.v_new, vn, FA_DTYPE_FLOAT16, B, 1, HKV, d);
                fa_memcpy_async(didx, idx_clash, sizeof lens, stream);
                fa_memcpy_async(dpad, pad_keys, sizeof lens, stream);
                fa_memcpy_async(seq, lens, sizeof lens, stream);
                fa_stream_synchronize(stream);
                fa_memcpy(before, kc, cache_bytes);
                expect("device batch index with an append: the launch", fa_decode(context, &a, stream), FA_STATUS_SUCCESS,
                       NULL);
                CHECK(fa_stream_synchronize(stream) == FA_STATUS_SUCCESS, "device batch index with an append: %s",
                      fa_last_error_message());
                expect("device batch index with an append: fa_context_check", fa_context_check(context),
                       FA_STATUS_DEVICE_CHECK_FAILED, "cache_batch_idx entry outside the pool");
                fa_memcpy(after, kc, cache_bytes);
                for (i = 0; i < cache_bytes; ++i) {
                    if (before[i] != after[i]) {
                        if (i >= at && i < at + row_bytes) ++in_slot; else ++elsewhere;
                    }
                }
                CHECK(elsewhere == 0, "device batch index with an append: %zu k_cache bytes changed outside sequence 0's "
                      "new slot (the out-of-pool sequence wrote into the clamped row)", elsewhere);
                CHECK(in_slot > 0, "device batch index with an append: sequence 0's new key was not appended");
                expect("device batch index with an append: nothing left", fa_context_check(context), FA_STATUS_SUCCESS,
                       NULL);
            } else {
                CHECK(0, "device batch index with an append: allocation failed");
            }
            fa_memory_free(0, kn);
            fa_memory_free(0, vn);
            free(before);
            free(after);
        }
        fa_memory_free(0, didx);
        fa_memory_free(0, dpad);
    }
done:
    fa_memory_free(0, q);
    fa_memory_free(0, kc);
    fa_memory_free(0, vc);
    fa_memory_free(0, o);
    fa_memory_free(0, lse);
    fa_memory_free(0, seq);
    fa_memory_free(0, bt);
    fa_memory_free(0, ws);
    fa_memory_free(0, small);
    free(host_block);
}

/* run_case, then nothing may be left for fa_context_check: valid lengths and block tables are never clamped (a
   false report would otherwise surface only at the next case's call, or never after the last). */
static void run_checked(fa_context_t context, void* stream, const dcase* c, int use_graph) {
    char label[200];
    run_case(context, stream, c, use_graph);
    fa_stream_synchronize(stream);
    snprintf(label, sizeof label, "%s: nothing for fa_context_check", c->label);
    expect(label, fa_context_check(context), FA_STATUS_SUCCESS, NULL);
}

/* Whether this build compiled the fp8-cache decode kernel of kernel head dim d (FA_HEAD_DIMS). */
static int fp8_kernel_compiled(int d) {
    int32_t count = 0, i;
    char want[64];
    sprintf(want, "sm80_decode_bf16_hdim%d_e4m3kv_", d);
    if (fa_kernel_count(&count) != FA_STATUS_SUCCESS) return 0;
    for (i = 0; i < count; ++i) {
        const char* name = NULL;
        if (fa_kernel_name(i, &name) == FA_STATUS_SUCCESS && name != NULL && strncmp(name, want, strlen(want)) == 0) return 1;
    }
    return 0;
}

/* An fp8 cache's device-only lengths and block ids that do not fit the cache (C ABI 0.13 keeps decode's clamping): the
   kernels clamp them and the context reports them, as for a 16-bit cache; valid ones report nothing. */
static void test_fp8_device_flags(fa_context_t context, void* stream) {
    enum { B = 2, SQ = 1, HQ = 4, HKV = 2, BLOCK = 16, PAGES = 4, NBLOCKS = 8 };
    const int64_t d = FA_TEST_HEAD_DIM;
    const size_t q_bytes = (size_t)B * SQ * HQ * d * 2, cache_bytes = (size_t)NBLOCKS * BLOCK * HKV * d;
    const int32_t lens[B] = {20, 50}, too_long[B] = {20, PAGES * BLOCK + 1};
    const int32_t table[B * PAGES] = {0, 1, 2, 3, 4, 5, 6, 7}, bad_table[B * PAGES] = {0, 1, 2, 3, 4, 5, NBLOCKS, 7};
    const float desc[HKV] = {0.01f, 0.02f};
    const int64_t lens_shape[1] = {B}, table_shape[2] = {B, PAGES}, desc_shape[1] = {HKV};
    void *q = NULL, *kc = NULL, *vc = NULL, *o = NULL, *seq = NULL, *bt = NULL, *kd = NULL, *vd = NULL;
    fa_decode_params_t p;
    fa_memory_alloc(0, q_bytes, &q);
    fa_memory_alloc(0, cache_bytes, &kc);
    fa_memory_alloc(0, cache_bytes, &vc);
    fa_memory_alloc(0, q_bytes, &o);
    fa_memory_alloc(0, 256, &seq);
    fa_memory_alloc(0, 256, &bt);
    fa_memory_alloc(0, 256, &kd);
    fa_memory_alloc(0, 256, &vd);
    if (!q || !kc || !vc || !o || !seq || !bt || !kd || !vd) {
        CHECK(0, "fp8 device flags: allocation failed: %s", fa_last_error_message());
    } else {
        fa_memset_async(q, 0x3C, q_bytes, stream);  /* fp16 1.0-ish everywhere */
        fa_memset_async(kc, 0x38, cache_bytes, stream); /* e4m3 1.0 */
        fa_memset_async(vc, 0x38, cache_bytes, stream);
        fa_memcpy(kd, desc, sizeof desc);
        fa_memcpy(vd, desc, sizeof desc);
        fa_decode_params_init(&p, sizeof p);
        set4(&p.q, q, FA_DTYPE_FLOAT16, B, SQ, HQ, d);
        set4(&p.out, o, FA_DTYPE_FLOAT16, B, SQ, HQ, d);
        set4(&p.k_cache, kc, FA_DTYPE_FLOAT8_E4M3, NBLOCKS, BLOCK, HKV, d);
        set4(&p.v_cache, vc, FA_DTYPE_FLOAT8_E4M3, NBLOCKS, BLOCK, HKV, d);
        set_dense(&p.block_table, bt, FA_DTYPE_INT32, 2, table_shape);
        set_dense(&p.cache_seqlens, seq, FA_DTYPE_INT32, 1, lens_shape);
        set_dense(&p.k_descale, kd, FA_DTYPE_FLOAT32, 1, desc_shape);
        set_dense(&p.v_descale, vd, FA_DTYPE_FLOAT32, 1, desc_shape);
        p.num_splits = 3;
        fa_memcpy_async(seq, lens, sizeof lens, stream);
        fa_memcpy_async(bt, table, sizeof table, stream);
        expect("fp8 device flags: valid call", fa_decode(context, &p, stream), FA_STATUS_SUCCESS, NULL);
        fa_stream_synchronize(stream);
        expect("fp8 device flags: nothing reported", fa_context_check(context), FA_STATUS_SUCCESS, NULL);
        fa_memcpy_async(seq, too_long, sizeof lens, stream);
        expect("fp8 device flags: a length beyond the capacity", fa_decode(context, &p, stream), FA_STATUS_SUCCESS, NULL);
        fa_stream_synchronize(stream);
        expect("fp8 device flags: the length reported", fa_context_check(context), FA_STATUS_DEVICE_CHECK_FAILED,
               "cache_seqlens");
        fa_memcpy_async(seq, lens, sizeof lens, stream);
        fa_memcpy_async(bt, bad_table, sizeof table, stream);
        expect("fp8 device flags: a block id = num_blocks", fa_decode(context, &p, stream), FA_STATUS_SUCCESS, NULL);
        fa_stream_synchronize(stream);
        expect("fp8 device flags: the block id reported", fa_context_check(context), FA_STATUS_DEVICE_CHECK_FAILED,
               "block_table entry outside");
        expect("fp8 device flags: reported once", fa_context_check(context), FA_STATUS_SUCCESS, NULL);
    }
    fa_memory_free(0, q);
    fa_memory_free(0, kc);
    fa_memory_free(0, vc);
    fa_memory_free(0, o);
    fa_memory_free(0, seq);
    fa_memory_free(0, bt);
    fa_memory_free(0, kd);
    fa_memory_free(0, vd);
}

/* An fp8 (e4m3) cache (C ABI 0.13) against the float64 reference on the dequantized cache (run_case with fp8 set):
   contiguous and paged, appends (stored bytes bit for bit, rotated keys within one e4m3 step), descales per KV head and
   one for the cache, GQA/MQA, causal and not, windows, softcap, ALiBi, split-KV, cache_batch_idx, left pads,
   per-sequence counts, saturating and NaN appends, NaN (0x7F) in every slot no call may read; at the test head dim,
   then at every compiled kernel head dim and at head dims between them; a captured step; device-only clamping. */
static void test_gpu_fp8(fa_context_t context, void* stream) {
    const int D = FA_TEST_HEAD_DIM, BF = FA_DTYPE_BFLOAT16, F16 = FA_DTYPE_FLOAT16;
    size_t n;
    int k;
    const dcase cases[] = {
        /* label, dtype, b sq hq hkv d, block, capacity, append causal wl wr, softcap scale, splits, host, ws, lens,
           sk_new pool use_pads pads, rotary_dim neox, varlen_q qn, varlen_k kcounts, fp8 per_tensor extremes nan_new
           alibi */
        {"fp8 cache, contiguous, ragged 0/1, GQA 4, auto splits", BF, 4, 1, 8, 2, D, 0, 700, 0, 0, -1, -1, 0.f, 0.f, 0, 1,
         0, {0, 1, 517, 700}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 0, 0, 0, 0},
        {"fp8 cache, contiguous, 13 splits, caller workspace, one descale, fp16", F16, 4, 1, 8, 2, D, 0, 700, 0, 0, -1, -1,
         0.f, 0.f, 13, 0, 1, {0, 1, 517, 700}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 1, 0, 0, 0},
        {"fp8 cache, paged 16, shuffled, append 3 causal, fp16", F16, 3, 3, 8, 1, D, 16, 256, 1, 1, -1, -1, 0.f, 0.f, 0, 1,
         0, {13, 0, 200}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 0, 0, 0, 0},
        {"fp8 cache, paged 256, append across a page end, 3 splits", BF, 2, 4, 4, 4, D, 256, 512, 1, 1, -1, -1, 0.f, 0.f, 3,
         1, 1, {254, 0}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 1, 0, 0, 0},
        {"fp8 cache, paged 32, window 40 + softcap 10, 5 splits", F16, 2, 2, 6, 3, D, 32, 512, 1, 0, 40, 0, 10.f, 0.f, 5, 0,
         0, {300, 33}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 0, 0, 0, 0},
        {"fp8 cache, paged 64, MQA 16 q heads, scale 0.3, causal, no append", BF, 2, 2, 16, 1, D, 64, 640, 0, 1, -1, -1, 0.f,
         0.3f, 0, 1, 0, {600, 65}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 1, 0, 0, 0},
        {"fp8 cache, paged 128, GQA 32 (two 16-row blocks), append", BF, 2, 1, 32, 1, D, 128, 1024, 1, 1, -1, -1, 0.f, 0.f,
         0, 1, 0, {1000, 127}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 0, 0, 0, 0},
        {"fp8 cache, device-only batch index over a pool of 7, 5 splits", F16, 4, 1, 8, 2, D, 0, 300, 1, 1, -1, -1, 0.f,
         0.f, 5, 0, 0, {0, 1, 150, 299}, 0, 7, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 0, 0, 0, 0},
        {"fp8 cache, left pads 17 / full / 0 / all cached, append", BF, 4, 2, 4, 2, D, 0, 300, 1, 1, -1, -1, 0.f, 0.f, 0, 1,
         0, {100, 37, 0, 250}, 0, 0, 1, {17, 39, 0, 250}, 0, 0, 0, {0}, 0, {0}, 1, 0, 0, 0, 0},
        {"fp8 cache, paged 32, device-only pads, window 20, softcap, 4 splits", F16, 3, 2, 6, 3, D, 32, 512, 0, 0, 20, 0,
         10.f, 0.f, 4, 0, 0, {100, 33, 400}, 0, 0, 1, {40, 0, 300}, 0, 0, 0, {0}, 0, {0}, 1, 1, 0, 0, 0},
        {"fp8 cache, seqlen_knew 5 > seqlen_q 2, paged 64, MQA, 7 splits", F16, 2, 2, 8, 1, D, 64, 512, 1, 1, -1, -1, 0.f,
         0.f, 7, 1, 0, {60, 300}, 5, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 0, 0, 0, 0},
        {"fp8 cache, rotary interleaved, contiguous, GQA 4", BF, 4, 1, 8, 2, D, 0, 300, 1, 0, -1, -1, 0.f, 0.f, 0, 1, 0,
         {0, 1, 150, 299}, 0, 0, 0, {0}, D, 0, 0, {0}, 0, {0}, 1, 0, 0, 0, 0},
        {"fp8 cache, rotary half-split, paged 16, append 3 causal, fp16", F16, 3, 3, 8, 1, D, 16, 256, 1, 1, -1, -1, 0.f,
         0.f, 0, 1, 0, {13, 0, 200}, 0, 0, 0, {0}, D, 1, 0, {0}, 0, {0}, 1, 1, 0, 0, 0},
        {"fp8 cache, cu_seqlens_q = cu_seqlens_k_new 0/1/5/16, paged 16, causal", BF, 4, 16, 8, 2, D, 16, 256, 1, 1, -1,
         -1, 0.f, 0.f, 0, 1, 0, {13, 0, 200, 100}, 0, 0, 0, {0}, 0, 0, 1, {0, 1, 5, 16}, 1, {0, 1, 5, 16}, 1, 0, 0, 0, 0},
        {"fp8 cache, cu_seqlens_q 3/1/7, seqlen_knew 2, window 20, 3 splits", F16, 3, 7, 6, 2, D, 0, 200, 1, 1, 20, -1, 0.f,
         0.f, 3, 0, 0, {50, 0, 120}, 2, 0, 0, {0}, 0, 0, 1, {3, 1, 7}, 0, {0}, 1, 1, 0, 0, 0},
        {"fp8 cache, saturating appends (|x| / descale > 448, +-Inf)", BF, 2, 3, 4, 2, D, 0, 128, 1, 1, -1, -1, 0.f, 0.f, 0,
         1, 0, {40, 7}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 0, 1, 0, 0},
        {"fp8 cache, saturating appends, paged 16, one descale, fp16", F16, 3, 2, 4, 1, D, 16, 128, 1, 0, -1, -1, 0.f, 0.f,
         2, 1, 0, {20, 0, 90}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 1, 1, 0, 0},
        {"fp8 cache, NaN in a new key and a new value", BF, 2, 3, 4, 2, D, 0, 128, 1, 1, -1, -1, 0.f, 0.f, 0, 1, 0,
         {40, 20}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 0, 0, 1, 0},
        {"fp8 cache, NaN in a new key and a new value, paged 16, 3 splits, fp16", F16, 2, 3, 4, 2, D, 16, 128, 1, 1, -1, -1,
         0.f, 0.f, 3, 1, 0, {40, 20}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 1, 0, 1, 0},
        {"fp8 cache, ALiBi (causal form), paged 16, append", BF, 3, 2, 8, 2, D, 16, 256, 1, 1, -1, -1, 0.f, 0.f, 0, 1, 0,
         {13, 0, 200}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 0, 0, 0, 1},
        {"fp8 cache, ALiBi (distance form), window 30, softcap, 3 splits", F16, 2, 2, 4, 1, D, 0, 300, 1, 0, 30, -1, 10.f,
         0.f, 3, 0, 0, {250, 40}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 1, 1, 0, 0, 1},
    };
    /* Head dims between the kernels', each running the next kernel up with zero-filled columns (multiples of 16, as an
       fp8 cache's head dims are). */
    static const int between[] = {16, 48, 80, 112, 144, 208, 240};
    static const int kernel_dims[] = {32, 64, 96, 128, 192, 256};
    for (n = 0; n < sizeof cases / sizeof cases[0]; ++n) {
        run_checked(context, stream, &cases[n], 0);
    }
    /* Every compiled kernel head dim (its fragment layout differs: tail groups at 32 and 96, V segments at 96 and 192,
       q fragments in shared memory and 16-key warps at 192 and 256), then the head dims between them. */
    for (k = 0; k < 6; ++k) {
        size_t which;
        if (!fp8_kernel_compiled(kernel_dims[k]) || kernel_dims[k] == D) continue;
        for (which = 0; which < 4; ++which) {
            static const int picks[4] = {0, 2, 3, 19}; /* contiguous; paged 16, append; paged 256, splits; ALiBi */
            char label[160];
            dcase c = cases[picks[which]];
            snprintf(label, sizeof label, "%s, head dim %d", c.label, kernel_dims[k]);
            c.label = label;
            c.d = kernel_dims[k];
            run_checked(context, stream, &c, 0);
        }
    }
    for (k = 0; k < (int)(sizeof between / sizeof between[0]); ++k) {
        fa_support_query_t q;
        memset(&q, 0, sizeof q);
        q.struct_size = sizeof q;
        q.pass = FA_PASS_DECODE;
        q.dtype = F16;
        q.head_dim = between[k];
        q.kv_cache_dtype = FA_DTYPE_FLOAT8_E4M3;
        if (fa_query_support(&q) == FA_STATUS_SUCCESS) {
            char label[160];
            dcase c = cases[2];
            snprintf(label, sizeof label, "%s, head dim %d (padded kernel)", c.label, between[k]);
            c.label = label;
            c.d = between[k];
            run_checked(context, stream, &c, 0);
        } else {
            printf("  SKIP fp8 cache at head dim %d: not served by this build\n", between[k]);
            ++g_skipped;
        }
    }
    /* A captured generation step over an fp8 cache: quantizing append across a page end, attention, combine, the
       device-side length advance, in one graph (the descales are read by the kernels at replay). */
    {
        dcase c = cases[3];
        c.label = "fp8 cache, CUDA graph, append + advance";
        c.caller_workspace = 0;
        run_checked(context, stream, &c, 1);
    }
    test_fp8_device_flags(context, stream);
}

static void test_gpu(void) {
    const int D = FA_TEST_HEAD_DIM, BF = FA_DTYPE_BFLOAT16, F16 = FA_DTYPE_FLOAT16;
    fa_device_properties_t props;
    fa_context_t context = NULL;
    void* stream = NULL;
    size_t n;
    const dcase cases[] = {
        /* label, dtype, b sq hq hkv d, block, capacity, append causal wl wr, softcap scale, splits, host, ws, lens */
        {"contiguous, ragged 0/1, GQA 4, auto splits", BF, 4, 1, 8, 2, D, 0, 700, 0, 0, -1, -1, 0.f, 0.f, 0, 1, 0,
         {0, 1, 517, 700}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"contiguous, 1 split", BF, 4, 1, 8, 2, D, 0, 700, 0, 0, -1, -1, 0.f, 0.f, 1, 0, 0, {0, 1, 517, 700}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"contiguous, 13 splits, caller workspace", BF, 4, 1, 8, 2, D, 0, 700, 0, 0, -1, -1, 0.f, 0.f, 13, 0, 1,
         {0, 1, 517, 700}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"paged 16, shuffled, append 3 causal, fp16", F16, 3, 3, 8, 1, D, 16, 256, 1, 1, -1, -1, 0.f, 0.f, 0, 1, 0,
         {13, 0, 200}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"paged 256, append across a page end", BF, 2, 4, 4, 4, D, 256, 512, 1, 1, -1, -1, 0.f, 0.f, 3, 1, 1,
         {254, 0}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"paged 32, window 40 + softcap 10, 5 splits", F16, 2, 2, 6, 3, D, 32, 512, 1, 0, 40, 0, 10.f, 0.f, 5, 0, 0,
         {300, 33}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"paged 64, MQA 16 q heads, scale 0.3", BF, 2, 2, 16, 1, D, 64, 640, 0, 1, -1, -1, 0.f, 0.3f, 0, 1, 0,
         {600, 65}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"contiguous, empty cache, no append", F16, 2, 1, 4, 2, D, 0, 64, 0, 0, -1, -1, 0.f, 0.f, 4, 0, 0, {0, 10}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"paged 128, GQA 32 (two 16-row blocks)", BF, 2, 1, 32, 1, D, 128, 1024, 1, 1, -1, -1, 0.f, 0.f, 0, 1, 0,
         {1000, 127}, 0, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        /* Serving options (C ABI 0.7), then: sk_new, pool, use_pads, pads. */
        {"contiguous, batch index over a shuffled pool of 7", BF, 4, 1, 8, 2, D, 0, 300, 1, 1, -1, -1, 0.f, 0.f, 0, 1, 0,
         {0, 1, 150, 299}, 0, 7, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"contiguous, device-only batch index, 5 splits, fp16", F16, 4, 1, 8, 2, D, 0, 300, 1, 1, -1, -1, 0.f, 0.f, 5, 0,
         0, {0, 1, 150, 299}, 0, 7, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"paged 16, batch index, pool of 6 table rows, 3 splits", F16, 3, 3, 8, 2, D, 16, 256, 1, 1, -1, -1, 0.f, 0.f, 3,
         1, 0, {13, 0, 200}, 0, 6, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"contiguous, left pads 17 / full / 0 / all cached", BF, 4, 2, 4, 2, D, 0, 300, 1, 1, -1, -1, 0.f, 0.f, 0, 1, 0,
         {100, 37, 0, 250}, 0, 0, 1, {17, 39, 0, 250}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"paged 32, device-only left pads, window 20, softcap, 4 splits", F16, 3, 2, 6, 3, D, 32, 512, 0, 0, 20, 0, 10.f,
         0.f, 4, 0, 0, {100, 33, 400}, 0, 0, 1, {40, 0, 300}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"seqlen_knew 1 < seqlen_q 4, causal (rows before the keys)", BF, 3, 4, 4, 2, D, 0, 200, 1, 1, -1, -1, 0.f, 0.f, 0,
         1, 0, {0, 2, 150}, 1, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"seqlen_knew 5 > seqlen_q 2, paged 64, MQA, 7 splits", F16, 2, 2, 8, 1, D, 64, 512, 1, 1, -1, -1, 0.f, 0.f, 7, 1,
         0, {60, 300}, 5, 0, 0, {0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"paged 16, pool 5 + pads + seqlen_knew 3 > sq 1, window 50", BF, 3, 1, 8, 2, D, 16, 256, 1, 0, 50, -1, 0.f, 0.f, 2,
         1, 0, {20, 10, 180}, 3, 5, 1, {0, 10, 100}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"contiguous, pool 6 + pads, no append, causal sq 2", F16, 3, 2, 4, 1, D, 0, 128, 0, 1, -1, -1, 0.f, 0.f, 0, 0, 0,
         {128, 5, 77}, 0, 6, 1, {3, 5, 0}, 0, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        /* Rotary (C ABI 0.8), then: rotary_dim, rotary_neox. */
        {"rotary interleaved, contiguous, sq 1, GQA 4", BF, 4, 1, 8, 2, D, 0, 300, 1, 0, -1, -1, 0.f, 0.f, 0, 1, 0,
         {0, 1, 150, 299}, 0, 0, 0, {0}, D, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"rotary half-split, paged 16, append 3 causal, fp16", F16, 3, 3, 8, 1, D, 16, 256, 1, 1, -1, -1, 0.f, 0.f, 0, 1,
         0, {13, 0, 200}, 0, 0, 0, {0}, D, 1, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"rotary half-split dim 16 (partial), not causal sq 2", BF, 2, 2, 4, 2, D, 0, 128, 1, 0, -1, -1, 0.f, 0.f, 3, 0, 0,
         {40, 7}, 0, 0, 0, {0}, 16, 1, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"rotary interleaved dim 32, pool 5 + pads, paged 32", F16, 3, 1, 8, 2, D, 32, 256, 1, 1, -1, -1, 0.f, 0.f, 2, 1,
         0, {20, 40, 180}, 2, 5, 1, {0, 10, 100}, 32, 0, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        {"rotary half-split, sq 4 > seqlen_knew 2, causal, window", BF, 2, 4, 4, 1, D, 0, 200, 1, 1, 30, -1, 0.f, 0.f, 0,
         1, 0, {50, 3}, 2, 0, 0, {0}, D, 1, 0, {0}, 0, {0}, 0, 0, 0, 0, 0},
        /* Per-sequence counts (C ABI 0.12), then: varlen_q, qn, varlen_k, kcounts. */
        {"cu_seqlens_q = cu_seqlens_k_new 0/1/5/16, paged 16, causal", BF, 4, 16, 8, 2, D, 16, 256, 1, 1, -1, -1, 0.f,
         0.f, 0, 1, 0, {13, 0, 200, 100}, 0, 0, 0, {0}, 0, 0, 1, {0, 1, 5, 16}, 1, {0, 1, 5, 16}, 0, 0, 0, 0, 0},
        {"cu_seqlens_q 3/1/7, seqlen_knew 2, device-only, window 20, 3 splits", F16, 3, 7, 6, 2, D, 0, 200, 1, 1, 20, -1,
         0.f, 0.f, 3, 0, 0, {50, 0, 120}, 2, 0, 0, {0}, 0, 0, 1, {3, 1, 7}, 0, {0}, 0, 0, 0, 0, 0},
        {"cu_seqlens_k_new 4/0/2, sq 1, pool 5 + pads, rotary, paged 32", BF, 3, 1, 8, 2, D, 32, 256, 1, 1, -1, -1, 0.f,
         0.f, 2, 1, 0, {20, 40, 180}, 0, 5, 1, {0, 10, 100}, D, 1, 0, {0}, 1, {4, 0, 2}, 0, 0, 0, 0, 0},
        {"chunked prefill 100/37 queries, cu both, paged 64, GQA 4", BF, 2, 100, 8, 2, D, 64, 512, 1, 1, -1, -1, 0.f,
         0.f, 0, 1, 0, {300, 0}, 0, 0, 0, {0}, 0, 0, 1, {100, 37}, 1, {100, 37}, 0, 0, 0, 0, 0},
        {"cu_seqlens_q 2/0/9 no append, softcap, 4 splits, device-only", F16, 3, 9, 4, 1, D, 0, 300, 0, 0, -1, -1, 10.f,
         0.f, 4, 0, 0, {280, 7, 0}, 0, 0, 0, {0}, 0, 0, 1, {2, 0, 9}, 0, {0}, 0, 0, 0, 0, 0},
        {"cu_seqlens_q 4/2, cu_seqlens_k_new 1/6, rotary causal", F16, 2, 4, 4, 2, D, 0, 256, 1, 1, -1, -1, 0.f, 0.f, 0, 1,
         0, {30, 100}, 0, 0, 0, {0}, 32, 0, 1, {4, 2}, 1, {1, 6}, 0, 0, 0, 0, 0},
    };
    memset(&props, 0, sizeof props);
    props.struct_size = sizeof props;
    expect("get_properties(0)", fa_device_get_properties(0, &props), FA_STATUS_SUCCESS, NULL);
    printf("  device 0: %s, compute capability %d.%d, %d SMs\n", props.name, (int)props.major, (int)props.minor,
           (int)props.multiprocessor_count);
    if (props.major < 8) {
        printf("  SKIP decode GPU tests: compute capability below 8.0\n");
        ++g_skipped;
        return;
    }
    if (!expect("context_create", fa_context_create(0, &context), FA_STATUS_SUCCESS, NULL)) return;
    expect("stream_create", fa_stream_create(0, &stream), FA_STATUS_SUCCESS, NULL);
    test_device_pointers(context, stream);
    for (n = 0; n < sizeof cases / sizeof cases[0]; ++n) {
        run_checked(context, stream, &cases[n], 0);
    }
    /* A graph holding the whole call (append, attention, combine, stream-ordered workspace): the same
       case as caller-workspace case 3 but with the library's allocation. */
    {
        dcase c = cases[2];
        c.label = "CUDA graph replay, 13 splits, library workspace";
        c.caller_workspace = 0;
        run_checked(context, stream, &c, 1);
    }
    /* A captured generation step: append across a page end, attention, combine and the device-side length
       advance, all in one graph (no host copy in the step). */
    {
        dcase c = cases[4];
        c.label = "CUDA graph, append + advance_cache_seqlens";
        c.caller_workspace = 0;
        run_checked(context, stream, &c, 1);
    }
    /* A captured step with every serving option: batch index, left pads, more keys appended than queries, and the
       device-side length advance. */
    {
        size_t k;
        for (k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
            if (cases[k].pool == 5) {
                dcase c = cases[k];
                c.label = "CUDA graph, pool + pads + seqlen_knew 3 + advance";
                run_checked(context, stream, &c, 1);
            }
        }
    }
    /* A captured generation step with rotary and append: new keys rotated and stored, queries rotated, the device
       lengths advanced, all in one graph. */
    {
        size_t k;
        for (k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
            if (cases[k].rotary_dim > 0 && cases[k].block_size == 16) {
                dcase c = cases[k];
                c.label = "CUDA graph, rotary half-split + append + advance";
                run_checked(context, stream, &c, 1);
            }
        }
    }
    /* A captured speculative step with per-sequence counts: packed queries and new keys, append, attention and the
       device-side advance by each sequence's own count, in one graph. */
    {
        size_t k;
        for (k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
            if (cases[k].varlen_q && cases[k].varlen_k && cases[k].block_size == 16) {
                dcase c = cases[k];
                c.label = "CUDA graph, cu_seqlens_q/k_new + append + advance";
                run_checked(context, stream, &c, 1);
            }
        }
    }
    /* A head dim without its own kernel (zero-filled columns) when served. */
    {
        dcase c = cases[3];
        fa_support_query_t q;
        memset(&q, 0, sizeof q);
        q.struct_size = sizeof q;
        q.pass = FA_PASS_DECODE;
        q.dtype = F16;
        q.head_dim = 40;
        if (fa_query_support(&q) == FA_STATUS_SUCCESS) {
            c.label = "paged 16, head dim 40 (padded kernel)";
            c.d = 40;
            run_checked(context, stream, &c, 0);
        } else {
            printf("  SKIP head dim 40: not served by this build\n");
            ++g_skipped;
        }
    }
    test_gpu_fp8(context, stream);
    fa_stream_destroy(stream);
    fa_context_destroy(context);
}

int main(int argc, char** argv) {
    int32_t count = 0;
    uint64_t seed = 0;
    if (!test_seed_from_args(argc, argv, "c_decode_test", &seed)) return 2;
    g_rng = rng_state_from_seed(seed);
    printf("c_decode_test: libflash_attention %d, head dim %d\n", (int)fa_version(), FA_TEST_HEAD_DIM);
    test_params_init();
    test_validation();
    test_counts_validation();
    test_query_and_names();
    /* Only "no device" (FA_STATUS_NO_DEVICE: no driver or no GPU) skips the GPU half; any other status is a
       broken CUDA setup and fails, so that a GPU machine never passes with its GPU tests skipped. */
    const fa_status_t count_status = fa_device_count(&count);
    if (count_status == FA_STATUS_NO_DEVICE) {
        printf("  SKIP decode GPU tests: no CUDA device (%s)\n", fa_last_error_message());
        ++g_skipped;
    } else if (count_status != FA_STATUS_SUCCESS || count <= 0) {
        printf("  FAIL fa_device_count returned %s with count %d (%s): the CUDA setup is broken\n",
               fa_status_string(count_status), (int)count, fa_last_error_message());
        ++g_failed;
    } else {
        test_gpu();
    }
    printf("c_decode_test: %d checks passed, %d failed, %d skipped\n", g_passed, g_failed, g_skipped);
    return g_failed == 0 ? 0 : 1;
}
