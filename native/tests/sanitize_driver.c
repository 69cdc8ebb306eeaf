/*
 * sanitize_driver.c - small calls of every compiled kernel of the library, for compute-sanitizer (issues 12, 16
 * and 17: memcheck, racecheck, synccheck and initcheck over every kernel family and option, in gpu-test).
 *
 * The call list is built at run time, the same on every run on the same GPU and build:
 *   - one call aimed at each compiled attention kernel (fa_kernel_name) that the device serves: the sm80 kernels
 *     always, the sm90 ones where fa_query_support says FA_PATH_SM90 serves that pass and head dim (and V head dim); the masked,
 *     softcap, deterministic and paged variants each get their own call, and the calls aimed at one family rotate
 *     over the options (causal both alignments, windows, fully masked rows, GQA/MQA, varlen with empty sequences,
 *     packed-QKV strides, LSE on and off, head dims between the kernel classes, splits, appends, ...);
 *   - a list of feature calls per served pass and path at one head dim, naming each option once; the fp8 (e4m3)
 *     forward gets its own short list (descales broadcast, dense and absent; causal, window, softcap, varlen, GQA),
 *     planned only where fa_query_support says the build and GPU serve it (the sm90 path; issue 12); so does decode
 *     over an fp8 KV cache (C ABI 0.13: its kernels, "_e4m3kv", each get an aimed call too, and a feature list runs
 *     the decode options over it: appends that quantize, paging, splits, rotary, ALiBi, counts, pads).
 * Every call is small (sequences of at most 256 tokens, at most 8 heads), so that racecheck stays affordable.
 * Inputs are fully initialised (random values); outputs are left as allocated, so that initcheck sees a kernel
 * that reads memory nothing wrote. After each call the driver synchronises and checks every status; it never
 * compares numbers (the reference tests do that), only that the calls run.
 *
 * Output, one line each, flushed (tools/run_sanitizers.py reads it, interleaved with the sanitizer's records):
 *   SAN-CALL <i> BEGIN <label>
 *   SAN-CALL <i> END ok <ms> ms kernels=<name>[,<name>]     (the kernels the library says it ran)
 *   SAN-CALL <i> END FAIL <status>: <message>
 *   SAN-DRIVER: ... (the totals), SAN-COVERAGE / SAN-UNCOVERED (full runs only), SAN-DONE <exit code>
 *
 * Usage: sanitize_driver [--list] [--check-only] [--cc N] [--only I,J-K] [--shard K/N] [--filter TEXT]
 *   --list         print the planned calls and exit (needs no GPU with --cc)
 *   --check-only   no GPU: pass every planned call's params, with placeholder pointers, to fa_*_check for
 *                  compute capability --cc (ctest sanitize_cases): proves the list is valid without a GPU
 *   --cc N         compute capability to plan for without a GPU (default: the device's; 0 with --list alone)
 *   --only LIST    run only these call indices (e.g. 3,17-20), --shard K/N every N-th call from K (0-based),
 *   --filter TEXT  only calls whose label contains TEXT
 * Exit code: 0 every call succeeded (and, in a full run, every targeted kernel ran); 1 otherwise; 77 no CUDA
 * device (ctest: skipped); 2 bad arguments.
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flash_attention.h"
#include "c_test_util.h"

enum { PASS_FWD = 0, PASS_BWD = 1, PASS_DEC = 2 };
static const char* const k_pass_tag[3] = {"fwd", "bwd", "decode"};
static const int k_pass_enum[3] = {FA_PASS_FORWARD, FA_PASS_BACKWARD, FA_PASS_DECODE};
static const char* const k_path_tag[3] = {"auto", "sm80", "sm90"};
static const int k_classes[6] = {32, 64, 96, 128, 192, 256};

#define MAX_SEQ 6
#define MAX_CASES 4096
#define MAX_KERNELS 2048
#define MAX_BUFS 24

typedef struct {
    char label[320];
    char target[160]; /* the compiled kernel this call is aimed at ("" for a feature call) */
    int pass, path, dtype;
    int b, sq, sk, hq, hkv, d; /* decode: sq = seqlen_new */
    int dv;                    /* fwd, bwd (C ABI 0.10): the V/out head dim when it differs from d (0: d) */
    int causal, top_left, wl, wr;
    float softcap, scale;
    int lse;      /* fwd, decode: write the log-sum-exp (the backward always has one) */
    int nseq;     /* fwd, bwd: > 0 for a variable-length batch of lq/lk */
    int lq[MAX_SEQ], lk[MAX_SEQ];
    int host_cu;  /* varlen: pass host copies of cu_seqlens as well */
    int packed;   /* fwd, bwd: q, k and v are slices of one [b, s, 3, h, d] buffer */
    int det;      /* bwd: deterministic */
    int caller_ws; /* bwd, decode: a caller-supplied workspace */
    int block_size, append, splits, advance, host_lens; /* decode; block_size 0: contiguous cache */
    int lens[MAX_SEQ];                                    /* decode: cache lengths before the append */
    /* decode serving (C ABI 0.7): sk_new appended tokens (0: sq); pool > 0: cache_batch_idx over that many rows
       (sequence b uses row idx[b]); use_pads: cache_leftpad pads[]; host copies with host_lens */
    int sk_new, pool, use_pads;
    int32_t idx[MAX_SEQ], pads[MAX_SEQ];
    int descale;  /* fp8 forward: 0 none; 1 q per tensor (strides 0), k dense, v per sequence; 2 all dense */
    int sinks;    /* fwd, bwd: learnable sinks (C ABI 0.7); the backward then writes dsinks too */
    int alibi;    /* fwd, bwd, decode: ALiBi slopes (C ABI 0.8): 1 [hq], 2 [b, hq] */
    int rotary;   /* decode (C ABI 0.8): 0 none; 1 interleaved over the whole head; 2 half-split over 32 elements */
    int dropout;  /* fwd, bwd (C ABI 0.9): 0 none; 1 host seed/offset and the keep mask; 2 device seed/offset and
                     rng_state (the backward replays the forward's rng_state) */
    int paged;    /* fwd varlen (C ABI 0.11): the block size of paged K/V (blocks in reverse order, a spare one); 0 none */
    /* decode (C ABI 0.12): 0 none; 1 packed q and k_new, both counted by one cu array (cuq, qn[b] each); 2 packed q
       only. q/out/lse get one row past the sequences'. sq is then the largest count (max_seqlen_q). */
    int dcounts;
    int32_t cuq[MAX_SEQ + 1];
    int fp8kv;    /* decode (C ABI 0.13): 0 a cache of q's dtype; 1 an fp8 (e4m3) cache with k_descale/v_descale of
                     [heads_kv]; 2 the same with descales of [1] */
} scase;

static scase g_cases[MAX_CASES];
static int g_ncases = 0;

/* Compiled attention kernels the device serves (the coverage targets), and whether a call aimed at each. */
static char* g_targets[MAX_KERNELS];
static int g_target_aimed[MAX_KERNELS];
static int g_ntargets = 0;

/* ---- the kernels the library reports (FA_LOG_DEBUG "fa_forward: <name> for ...") -------------------------- */

static char g_call_kernels[1024]; /* this call's kernels, comma-separated */
static char* g_seen[MAX_KERNELS];
static int g_nseen = 0;
static long g_launches = 0;

static void remember_kernel(const char* name) {
    int i;
    for (i = 0; i < g_nseen; ++i) {
        if (strcmp(g_seen[i], name) == 0) return;
    }
    if (g_nseen < MAX_KERNELS) {
        g_seen[g_nseen] = (char*)malloc(strlen(name) + 1);
        if (g_seen[g_nseen] != NULL) {
            strcpy(g_seen[g_nseen], name);
            ++g_nseen;
        }
    }
}

static void on_log(int32_t level, const char* message, void* user_data) {
    static const char* const prefixes[3] = {"fa_forward: ", "fa_backward: ", "fa_decode: "};
    int i;
    (void)user_data;
    if (level != FA_LOG_DEBUG || message == NULL || strstr(message, "nothing to launch") != NULL) return;
    for (i = 0; i < 3; ++i) {
        const size_t n = strlen(prefixes[i]);
        if (strncmp(message, prefixes[i], n) == 0) {
            char name[256];
            size_t len = strcspn(message + n, " ");
            if (len >= sizeof name) len = sizeof name - 1;
            memcpy(name, message + n, len);
            name[len] = '\0';
            if (strlen(g_call_kernels) + len + 2 < sizeof g_call_kernels) {
                if (g_call_kernels[0] != '\0') strcat(g_call_kernels, ",");
                strcat(g_call_kernels, name);
            }
            remember_kernel(name);
            ++g_launches;
            return;
        }
    }
}

/* ---- what the build and the device serve ----------------------------------------------------------------- */

/* dv: v's head dim where it is not d (a pair kernel's), else 0. fp8kv: decode over an fp8 (e4m3) cache. */
/* fa_query_support's verdict on a call of that kind (dropout: with dropout; fp8kv: over an fp8 KV cache). */
static int served_query(int pass, int path, int dtype, int d, int dv, int cc, int fp8kv, int dropout) {
    fa_support_query_t q;
    memset(&q, 0, sizeof q);
    q.struct_size = sizeof q;
    q.pass = k_pass_enum[pass];
    q.compute_capability = cc;
    q.dtype = dtype;
    q.head_dim = d;
    q.head_dim_v = dv;
    q.kernel_path = path;
    q.kv_cache_dtype = fp8kv ? FA_DTYPE_FLOAT8_E4M3 : 0;
    q.dropout = dropout;
    return fa_query_support(&q) == FA_STATUS_SUCCESS;
}

static int served_kv(int pass, int path, int dtype, int d, int dv, int cc, int fp8kv) {
    return served_query(pass, path, dtype, d, dv, cc, fp8kv, 0);
}

static int served(int pass, int path, int dtype, int d, int dv, int cc) {
    return served_query(pass, path, dtype, d, dv, cc, 0, 0);
}

/* The same for a call with dropout (the sm80 kernels; the sm90 ones where the build has them: FA_SM90_FWD_DROPOUT,
   FA_SM90_BWD_DROPOUT, on by default). */
static int served_dropout(int pass, int path, int dtype, int d, int cc) {
    return served_query(pass, path, dtype, d, 0, cc, 0, 1);
}

/* An attention kernel's name: <path>_<pass>_<dtype>_hdim<d>[v<dv>][_e4m3kv][_local][_softcap][_det][_paged][_dropout]_<tile>
   (v<dv>: the kernels of a V head dim other than q's: both paths' forward and backward of (192, 128), the sm80
   forward of (64, 512); e4m3kv: decode over an fp8 KV cache, <dtype> being q's). */
typedef struct {
    int pass, path, dtype, d, dv, local, softcap, det, paged, dropout, fp8kv;
    char unknown[64]; /* a variant tag this driver does not know how to aim at ("" if none) */
} kinfo;

static int parse_kernel_name(const char* name, kinfo* k) {
    const char* s = name;
    memset(k, 0, sizeof *k);
    if (strncmp(s, "sm80_", 5) == 0) {
        k->path = FA_PATH_SM80;
    } else if (strncmp(s, "sm90_", 5) == 0) {
        k->path = FA_PATH_SM90;
    } else {
        return 0;
    }
    s += 5;
    if (strncmp(s, "fwd_", 4) == 0) {
        k->pass = PASS_FWD;
        s += 4;
    } else if (strncmp(s, "bwd_", 4) == 0) {
        k->pass = PASS_BWD;
        s += 4;
    } else if (strncmp(s, "decode_", 7) == 0) {
        k->pass = PASS_DEC;
        s += 7;
    } else {
        return 0;
    }
    if (strncmp(s, "fp16_", 5) == 0) {
        k->dtype = FA_DTYPE_FLOAT16;
        s += 5;
    } else if (strncmp(s, "bf16_", 5) == 0) {
        k->dtype = FA_DTYPE_BFLOAT16;
        s += 5;
    } else if (strncmp(s, "e4m3_", 5) == 0) {
        k->dtype = FA_DTYPE_FLOAT8_E4M3;
        s += 5;
    } else if (strncmp(s, "fp8_", 4) == 0) {
        k->dtype = FA_DTYPE_FLOAT8_E4M3;
        s += 4;
    } else {
        return 0; /* the decode helpers (append, combine) and dtypes this driver does not feed */
    }
    if (strncmp(s, "hdim", 4) != 0 || s[4] < '0' || s[4] > '9') return 0;
    k->d = (int)strtol(s + 4, (char**)&s, 10);
    if (*s == 'v' && s[1] >= '0' && s[1] <= '9') k->dv = (int)strtol(s + 1, (char**)&s, 10);
    while (*s == '_') {
        char tag[64];
        size_t len = strcspn(s + 1, "_");
        if (s[1] >= '0' && s[1] <= '9') break; /* the tile tag: the end of the variant tags */
        if (len >= sizeof tag) len = sizeof tag - 1;
        memcpy(tag, s + 1, len);
        tag[len] = '\0';
        if (strcmp(tag, "local") == 0) {
            k->local = 1;
        } else if (strcmp(tag, "softcap") == 0) {
            k->softcap = 1;
        } else if (strcmp(tag, "det") == 0) {
            k->det = 1;
        } else if (strcmp(tag, "paged") == 0) {
            k->paged = 1;
        } else if (strcmp(tag, "dropout") == 0) {
            k->dropout = 1;
        } else if (strcmp(tag, "e4m3kv") == 0 && k->pass == PASS_DEC) {
            k->fp8kv = 1;
        } else if (k->unknown[0] == '\0') {
            strcpy(k->unknown, tag);
        }
        s += 1 + strcspn(s + 1, "_");
    }
    return 1;
}

/* ---- the call list -------------------------------------------------------------------------------------- */

static scase* new_case(int pass, int path, int dtype, int d) {
    scase* c;
    if (g_ncases >= MAX_CASES) {
        fprintf(stderr, "sanitize_driver: more than %d calls planned\n", MAX_CASES);
        exit(2);
    }
    c = &g_cases[g_ncases++];
    memset(c, 0, sizeof *c);
    c->pass = pass;
    c->path = path;
    c->dtype = dtype;
    c->d = d;
    c->b = 1;
    c->hq = c->hkv = 1;
    c->wl = c->wr = -1;
    c->lse = 1;
    return c;
}

static void set_varlen(scase* c, int n, const int* lq, const int* lk) {
    int i;
    c->nseq = n;
    c->sq = c->sk = 0;
    for (i = 0; i < n; ++i) {
        c->lq[i] = lq[i];
        c->lk[i] = lk[i];
        if (lq[i] > c->sq) c->sq = lq[i];
        if (lk[i] > c->sk) c->sk = lk[i];
    }
}

static void set_lens(scase* c, int n, const int* lens) {
    int i;
    c->b = n;
    for (i = 0; i < n; ++i) c->lens[i] = lens[i];
}

/* The label: everything that distinguishes the call, then what it is aimed at. */
static void describe(scase* c, const char* what) {
    char* s = c->label;
    size_t cap = sizeof c->label, n;
    int i;
    n = (size_t)snprintf(s, cap, "%s %s %s d%d", k_pass_tag[c->pass], k_path_tag[c->path],
                         c->dtype == FA_DTYPE_BFLOAT16 ? "bf16" : c->dtype == FA_DTYPE_FLOAT8_E4M3 ? "e4m3" : "fp16", c->d);
    if (c->dv && n < cap) n += (size_t)snprintf(s + n, cap - n, " dv%d", c->dv);
#define ADD(...)                                                            \
    do {                                                                    \
        if (n < cap) n += (size_t)snprintf(s + n, cap - n, __VA_ARGS__);    \
    } while (0)
    if (c->pass == PASS_DEC) {
        ADD(" b%d new%d h%d/%d %s", c->b, c->sq, c->hq, c->hkv, c->block_size ? "paged" : "contiguous");
        if (c->block_size) ADD("%d", c->block_size);
        ADD(" lens");
        for (i = 0; i < c->b; ++i) ADD("%c%d", i ? ',' : '=', c->lens[i]);
        if (c->append) ADD(" append");
        if (c->advance) ADD(" advance");
        ADD(" splits=%d", c->splits);
        if (c->fp8kv) ADD(" e4m3-cache descale=%s", c->fp8kv == 1 ? "[hkv]" : "[1]");
    } else if (c->nseq > 0) {
        ADD(" varlen");
        for (i = 0; i < c->nseq; ++i) ADD("%c%d:%d", i ? ',' : '=', c->lq[i], c->lk[i]);
        ADD(" h%d/%d", c->hq, c->hkv);
        if (c->host_cu) ADD(" host-cu");
        if (c->paged) ADD(" paged%d", c->paged);
    } else {
        ADD(" b%d sq%d sk%d h%d/%d", c->b, c->sq, c->sk, c->hq, c->hkv);
    }
    if (c->causal) ADD(" causal-%s", c->top_left ? "tl" : "br");
    if (c->wl >= 0 || c->wr >= 0) ADD(" window=%d/%d", c->wl, c->wr);
    if (c->softcap > 0) ADD(" softcap=%g", (double)c->softcap);
    if (c->scale > 0) ADD(" scale=%g", (double)c->scale);
    if (c->packed) ADD(" packed-qkv");
    if (c->pass != PASS_BWD && !c->lse) ADD(" no-lse");
    if (c->det) ADD(" deterministic");
    if (c->caller_ws) ADD(" caller-ws");
    if (c->pass == PASS_DEC && c->host_lens) ADD(" host-lens");
    if (c->descale) ADD(" descale=%s", c->descale == 1 ? "broadcast" : "dense");
    if (c->sinks) ADD(" sinks");
    if (c->alibi) ADD(" alibi=%s", c->alibi == 1 ? "[hq]" : "[b,hq]");
    if (c->dropout) ADD(" dropout=%s", c->dropout == 1 ? "host+mask" : "device+rng_state");
    if (what != NULL && what[0] != '\0') ADD(" [%s]", what);
    if (c->target[0] != '\0') ADD(" -> %s", c->target);
#undef ADD
}

/* A call aimed at compiled kernel `name`. r counts the earlier calls aimed at kernels of the same pass, path and
   mask class (masked or not; paged or not), so that the calls of each class rotate over its shapes and options;
   n counts those of the same pass and path, for the choices every class shares. */
static void add_aimed_case(const kinfo* k, const char* name, int r, int n) {
    /* A head dim between the kernel classes every third call (the kernel's own class: d - 8 rounds up to d; an fp8
       cache's head dims are multiples of 16: d - 16). */
    /* (A pair kernel of a V head dim other than q's serves its exact head dims only.) */
    const int step = k->fp8kv ? 16 : 8;
    const int d = (n % 3 == 2 && k->d > step && !k->dv) ? k->d - step : k->d;
    scase* c = new_case(k->pass, k->path, k->dtype, d);
    snprintf(c->target, sizeof c->target, "%s", name);
    c->softcap = k->softcap ? 30.0f : 0.0f;
    c->scale = (k->softcap && (n >> 2) % 2) ? 0.2f : 0.0f;
    if (k->pass == PASS_DEC) {
        static const int block_sizes[5] = {16, 32, 64, 128, 256};
        c->block_size = k->paged ? block_sizes[r % 5] : 0;
        c->fp8kv = k->fp8kv ? 1 + (n >> 1) % 2 : 0; /* descales [hkv] and [1] in turn */
        switch (r % 4) {
            case 0: {
                const int lens[2] = {0, 150};
                set_lens(c, 2, lens);
                c->sq = 1, c->hq = 4, c->hkv = 2, c->append = 1, c->advance = 1, c->host_lens = 1, c->splits = 3;
                break;
            }
            case 1: {
                const int lens[3] = {17, 0, 200};
                set_lens(c, 3, lens);
                c->sq = 3, c->hq = 2, c->hkv = 1, c->append = 1, c->causal = 1, c->splits = 0;
                c->softcap = k->softcap ? 10.0f : 0.0f;
                break;
            }
            case 2: {
                const int lens[2] = {130, 1};
                set_lens(c, 2, lens);
                c->sq = 1, c->hq = 4, c->hkv = 1, c->splits = 1, c->wl = 40, c->wr = 0, c->caller_ws = 1;
                break;
            }
            default: {
                const int lens[2] = {250, 64};
                set_lens(c, 2, lens);
                c->sq = 2, c->hq = 2, c->hkv = 2, c->append = 1, c->splits = 5, c->caller_ws = 1, c->lse = 0;
                c->scale = 0.3f;
                break;
            }
        }
    } else if (k->paged) { /* the forward's paged K/V (local kernels only): a varlen call over a pool of blocks */
        const int lq[3] = {0, 50, 129}, lk[3] = {10, 300, 129};
        set_varlen(c, 3, lq, lk);
        c->hq = 2, c->hkv = 1, c->paged = r % 2 ? 256 : 128, c->host_cu = r % 2;
        if (r % 3 == 2) {
            c->wl = 40, c->wr = 16;
        } else {
            c->causal = 1, c->top_left = r % 3;
        }
    } else if (k->local) {
        switch (r % 5) {
            case 0: c->sq = 64, c->sk = 160, c->hq = 2, c->hkv = 2, c->causal = 1; break;
            case 1: c->sq = 160, c->sk = 64, c->hq = 2, c->hkv = 1, c->causal = 1; break; /* 96 rows see nothing */
            case 2: c->b = 2, c->sq = 150, c->sk = 90, c->causal = 1, c->top_left = 1; break;
            case 3: c->sq = 144, c->sk = 144, c->hq = 4, c->hkv = 2, c->wl = 32, c->wr = 8; break;
            default: {
                const int lq[3] = {0, 50, 129}, lk[3] = {10, 0, 129};
                set_varlen(c, 3, lq, lk);
                c->hq = 2, c->hkv = 1, c->causal = 1, c->wl = 24, c->host_cu = 1;
                break;
            }
        }
    } else {
        switch (r % 4) {
            case 0: c->b = 2, c->sq = 77, c->sk = 131, c->hq = 2, c->hkv = 2; break;
            case 1: c->sq = 128, c->sk = 96, c->hq = 4, c->hkv = 2; break;
            case 2: {
                const int lq[4] = {17, 0, 70, 1}, lk[4] = {40, 33, 0, 64};
                set_varlen(c, 4, lq, lk);
                c->hq = 2, c->hkv = 1;
                break;
            }
            default: c->sq = 100, c->sk = 100, c->hq = 2, c->hkv = 2, c->packed = 1, c->lse = 0; break;
        }
    }
    if (k->pass == PASS_BWD) {
        c->lse = 1;
        c->det = k->det;
        c->caller_ws = (n >> 1) % 2; /* the deterministic variants alternate with n's lowest bit */
    }
    if (k->dropout) c->dropout = 1 + (n >> 2) % 2; /* host seed + mask, device seed + rng_state in turn */
    if (k->dv) {
        c->dv = k->dv;
        c->packed = 0; /* q, k and v of one buffer share a head dim */
    }
    if (k->dtype == FA_DTYPE_FLOAT8_E4M3) {
        c->descale = n % 3; /* none, broadcast, dense in turn */
        if (c->d % 16 != 0) c->d = k->d; /* fp8 head dims are multiples of 16 */
    }
    describe(c, NULL);
}

/* One option each, at one head dim, for a pass and path (forward and backward). */
typedef struct {
    const char* what;
    int only; /* 0: forward and backward; 1: forward only; 2: backward only */
    int b, sq, sk, hq, hkv, d; /* d 0: the path's main head dim */
    int causal, top_left, wl, wr;
    float softcap, scale;
    int no_lse, packed, fp16, det, caller_ws, host_cu, nseq;
    int lq[MAX_SEQ], lk[MAX_SEQ];
    int sinks; /* learnable sinks (and dsinks in the backward); 0 where an entry leaves it out */
    int alibi; /* ALiBi slopes: 1 [hq], 2 [b, hq] (the sequences of a varlen batch) */
    int dropout; /* as scase::dropout; on the sm90 path only where the build serves it (served_dropout) */
    int paged;   /* as scase::paged (forward only, varlen) */
} feature;

static const feature k_features[] = {
    {"causal bottom-right, sq < sk", 0, 1, 100, 200, 2, 2, 0, 1, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"causal bottom-right, sq > sk: fully masked rows", 0, 1, 200, 70, 2, 1, 0, 1, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0,
     0, {0}, {0}, 0, 0, 0, 0},
    {"causal top-left, sq < sk", 0, 2, 90, 180, 2, 2, 0, 1, 1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"causal top-left, sq > sk", 0, 1, 180, 90, 2, 2, 0, 1, 1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"sliding window both sides", 0, 1, 150, 150, 2, 2, 0, 0, 0, 20, 30, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"causal top-left + window left", 0, 1, 130, 130, 2, 1, 0, 1, 1, 16, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"window right only", 0, 1, 120, 160, 1, 1, 0, 0, 0, -1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"window 0/0 with sq > sk: fully masked rows", 0, 1, 150, 40, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
     {0}, {0}, 0, 0, 0, 0},
    {"softcap + causal + scale", 0, 1, 128, 192, 2, 2, 0, 1, 0, -1, -1, 30.0f, 0.2f, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"GQA 4:2", 0, 2, 96, 144, 4, 2, 0, 0, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"MQA 8:1, causal", 0, 1, 64, 64, 8, 1, 0, 1, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"varlen with empty sequences (q, k, both), causal", 0, 0, 0, 0, 2, 1, 0, 1, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 5,
     {0, 33, 0, 128, 5}, {12, 0, 0, 128, 77}, 0, 0, 0, 0},
    {"varlen, window, host cu_seqlens", 0, 0, 0, 0, 2, 2, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, {1, 64, 200, 0},
     {50, 64, 180}, 0, 0, 0, 0},
    {"varlen without LSE", 1, 0, 0, 0, 2, 1, 0, 0, 0, -1, -1, 0, 0, 1, 0, 0, 0, 0, 0, 4, {17, 0, 130, 64, 0},
     {40, 33, 130, 1}, 0, 0, 0, 0},
    {"packed QKV strides, causal", 0, 2, 100, 100, 2, 2, 0, 1, 0, -1, -1, 0, 0, 0, 1, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"fp16, batch 3", 0, 3, 77, 131, 2, 2, 0, 0, 0, -1, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"one query, one key", 0, 1, 1, 1, 1, 1, 0, 0, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"head dim 40 (the 64 kernel), causal", 0, 1, 100, 140, 2, 2, 40, 1, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0, 0},
     {0}, 0, 0, 0, 0},
    {"head dim 200 (the 256 kernel), causal", 0, 1, 100, 140, 2, 2, 200, 1, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0, 0},
     {0}, 0, 0, 0, 0},
    {"head dim 256, no mask", 0, 1, 130, 190, 2, 1, 256, 0, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"two row blocks, no mask (a 2-CTA cluster with FA_SM90_FWD_CLUSTER)", 1, 2, 256, 200, 4, 2, 0, 0, 0, -1, -1, 0, 0, 0,
     0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"head dim 256, four row blocks, no mask, softcap", 1, 1, 500, 190, 2, 1, 256, 0, 0, -1, -1, 20.0f, 0, 0, 0, 0, 0, 0,
     0, 0, {0}, {0}, 0, 0, 0, 0},
    {"head dim 256, causal, GQA (issue 17's shape)", 0, 1, 130, 190, 4, 2, 256, 1, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
     {0}, {0}, 0, 0, 0, 0},
    {"deterministic, varlen with empty sequences, GQA", 2, 0, 0, 0, 4, 2, 0, 1, 0, -1, -1, 0, 0, 0, 0, 0, 1, 0, 0, 4,
     {0, 70, 33, 129}, {20, 0, 90, 129}, 0, 0, 0, 0},
    {"deterministic, causal top-left, caller workspace", 2, 2, 130, 100, 2, 2, 0, 1, 1, -1, -1, 0, 0, 0, 0, 0, 1, 1, 0,
     0, {0}, {0}, 0, 0, 0, 0},
    {"deterministic, head dim 256, causal", 2, 1, 130, 190, 4, 2, 256, 1, 0, -1, -1, 0, 0, 0, 0, 0, 1, 0, 0, 0, {0, 0},
     {0}, 0, 0, 0, 0},
    {"caller workspace, window", 2, 1, 140, 140, 2, 2, 0, 0, 0, 30, 30, 0, 0, 0, 0, 0, 0, 1, 0, 0, {0}, {0}, 0, 0, 0, 0},
    {"learnable sinks, causal sq > sk: fully masked rows, GQA", 0, 2, 200, 70, 4, 2, 0, 1, 0, -1, -1, 0, 0, 0, 0, 0,
     0, 0, 0, 0, {0}, {0}, 1, 0, 0, 0},
    {"learnable sinks, window + softcap, no LSE", 1, 1, 150, 150, 2, 2, 0, 0, 0, 20, 30, 30.0f, 0, 1, 0, 0, 0, 0, 0, 0,
     {0}, {0}, 1, 0, 0, 0},
    {"learnable sinks, varlen with empty sequences, deterministic", 2, 0, 0, 0, 4, 2, 0, 1, 0, -1, -1, 0, 0, 0, 0, 0,
     1, 0, 0, 4, {0, 70, 33, 129}, {20, 0, 90, 129}, 1, 0, 0, 0},
    {"alibi [hq], causal sq > sk: fully masked rows, GQA (FA2's causal form)", 0, 2, 200, 70, 4, 2, 0, 1, 0, -1, -1,
     0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 1, 0, 0},
    {"alibi [b, hq], window + softcap, no LSE", 1, 2, 150, 150, 2, 2, 0, 0, 0, 20, 30, 30.0f, 0, 1, 0, 0, 0, 0, 0, 0,
     {0}, {0}, 0, 2, 0, 0},
    {"alibi [b, hq] + sinks, varlen with empty sequences, deterministic", 2, 0, 0, 0, 4, 2, 0, 1, 0, -1, -1, 0, 0, 0, 0,
     0, 1, 0, 0, 4, {0, 70, 33, 129}, {20, 0, 90, 129}, 1, 2, 0, 0},
    {"alibi [hq], no mask, head dim 256 (local variant without a window)", 0, 1, 130, 190, 2, 1, 256, 0, 0, -1, -1, 0,
     0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 1, 0, 0},
    {"dropout 0.17, causal sq > sk: fully masked rows, GQA, keep mask", 0, 2, 200, 70, 4, 2, 0, 1, 0, -1, -1, 0, 0,
     0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 1, 0},
    {"dropout, window + softcap, device seed/offset, rng_state replayed", 0, 1, 150, 150, 2, 2, 0, 0, 0, 20, 30, 30.0f,
     0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 2, 0},
    {"dropout, varlen with empty sequences, deterministic, keep mask", 0, 0, 0, 0, 4, 2, 0, 1, 0, -1, -1, 0, 0, 0, 0,
     0, 1, 0, 0, 4, {0, 70, 33, 129}, {20, 0, 90, 129}, 0, 0, 1, 0},
    {"dropout 0.17, head dim 64 (the forward draws Philox words while S runs), causal, GQA", 0, 2, 200, 170, 4, 2, 64,
     1, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}, {0}, 0, 0, 1, 0},
    {"dropout + alibi [hq] + sinks, no mask, head dim 256", 0, 1, 130, 190, 2, 1, 256, 0, 0, -1, -1, 0, 0, 0, 0, 0, 0,
     0, 0, 0, {0}, {0}, 1, 1, 2, 0},
    {"paged K/V block 128, varlen with empty sequences, causal, GQA", 1, 0, 0, 0, 4, 2, 0, 1, 0, -1, -1, 0, 0, 0, 0, 0,
     0, 0, 1, 4, {0, 70, 33, 129}, {20, 0, 300, 129}, 0, 0, 0, 128},
    {"paged K/V block 256, window + softcap, alibi [b, hq], sinks", 1, 0, 0, 0, 2, 1, 0, 0, 0, 40, 8, 30.0f, 0, 0, 0, 0,
     0, 0, 0, 3, {64, 1, 200}, {257, 9, 190}, 1, 2, 0, 256},
    {"paged K/V block 128, more tiles than SMs (a CTA walks several), keyless tiles, causal", 1, 0, 0, 0, 16, 4, 0, 1, 0,
     -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 4, {300, 5, 257, 129}, {513, 0, 256, 700}, 0, 0, 0, 128},
};

/* The decode options (contiguous and paged caches, splits, appends). */
typedef struct {
    const char* what;
    int fp16, b, sq, hq, hkv, d, block_size, append, advance, causal, wl, wr;
    float softcap, scale;
    int splits, host_lens, caller_ws, no_lse;
    int lens[MAX_SEQ];
    int sk_new, pool, use_pads; /* serving (0.7): appended count (0: sq), pool rows (0: none; rows reversed), pads */
    int pads[MAX_SEQ];
    int alibi; /* ALiBi slopes (0.8): 1 [hq], 2 [b, hq] */
    int rotary; /* 0.8: 0 none, 1 interleaved (whole head), 2 half-split (32 elements, the rest passed through) */
    int counts; /* 0.12: scase.dcounts, with qn[b] queries (and appended keys when 1) a sequence */
    int qn[MAX_SEQ];
} dfeature;

static const dfeature k_dfeatures[] = {
    {"contiguous, ragged 0/1, GQA 4:2, auto splits", 0, 4, 1, 4, 2, 0, 0, 0, 0, 0, -1, -1, 0, 0, 0, 1, 0, 0,
     {0, 1, 150, 255}, 0, 0, 0, {0}, 0, 0, 0, {0}},
    {"contiguous, 13 splits, caller workspace", 0, 2, 1, 2, 2, 0, 0, 0, 0, 0, -1, -1, 0, 0, 13, 0, 1, 0, {255, 100}, 0, 0, 0, {0}, 0, 0, 0, {0}},
    {"paged 16, append 3, causal, fp16", 1, 3, 3, 4, 1, 0, 16, 1, 0, 1, -1, -1, 0, 0, 0, 1, 0, 0, {13, 0, 200}, 0, 0, 0, {0}, 0, 0, 0, {0}},
    {"paged 256, append across a page end, advance, 3 splits", 0, 2, 4, 2, 2, 0, 256, 1, 1, 1, -1, -1, 0, 0, 3, 1, 1,
     0, {254, 0}, 0, 0, 0, {0}, 0, 0, 0, {0}},
    {"paged 32, window + softcap, 5 splits", 1, 2, 2, 4, 2, 0, 32, 1, 0, 0, 40, 0, 10.0f, 0, 5, 0, 0, 0, {200, 33}, 0, 0, 0, {0}, 0, 0, 0, {0}},
    {"contiguous, empty cache without append: fully masked rows", 0, 2, 1, 2, 1, 0, 0, 0, 0, 0, -1, -1, 0, 0, 4, 0, 0,
     0, {0, 10}, 0, 0, 0, {0}, 0, 0, 0, {0}},
    {"paged 64, MQA 8:1, scale, no LSE", 0, 2, 1, 8, 1, 0, 64, 0, 0, 0, -1, -1, 0, 0.3f, 0, 1, 0, 1, {130, 65}, 0, 0, 0, {0}, 0, 0, 0, {0}},
    {"head dim 40 (the 64 kernel), paged 16, append", 1, 2, 2, 2, 2, 40, 16, 1, 0, 1, -1, -1, 0, 0, 2, 1, 0, 0,
     {31, 7}, 0, 0, 0, {0}, 0, 0, 0, {0}},
    {"contiguous pool of 5 (cache_batch_idx), pads, append 3 > sq 1, advance", 0, 3, 1, 4, 2, 0, 0, 1, 1, 1, -1, -1, 0, 0,
     0, 1, 0, 0, {40, 0, 100}, 3, 5, 1, {7, 0, 100}, 0, 0, 0, {0}},
    {"paged 16 pool of 4 table rows, device-only pads, append 1 < sq 3, 4 splits", 1, 3, 3, 4, 1, 0, 16, 1, 0, 1, -1,
     -1, 0, 0, 4, 0, 0, 0, {33, 2, 70}, 1, 4, 1, {20, 0, 64}, 0, 0, 0, {0}},
    {"alibi [hq], contiguous pool of 5, pads, causal (FA2's causal form at sq 1), append, advance", 0, 3, 1, 4, 2, 0, 0,
     1, 1, 1, -1, -1, 0, 0, 0, 1, 0, 0, {40, 0, 100}, 1, 5, 1, {7, 0, 100}, 1, 0, 0, {0}},
    {"alibi [b, hq], paged 16, window + softcap, device-only pads, 4 splits", 1, 3, 2, 4, 1, 0, 16, 1, 0, 0, 30, 0,
     10.0f, 0, 4, 0, 0, 0, {33, 2, 70}, 0, 0, 1, {20, 0, 64}, 2, 0, 0, {0}},
    {"rotary interleaved on append, paged 16 pool of 4 + pads, causal sq 2 > append 1", 0, 3, 2, 4, 2, 0, 16, 1, 0, 1,
     -1, -1, 0, 0, 0, 1, 0, 0, {33, 2, 70}, 1, 4, 1, {20, 0, 64}, 0, 1, 0, {0}},
    {"rotary half-split (32 of the head), contiguous, append 3, not causal, 3 splits, advance", 1, 2, 3, 4, 1, 0, 0, 1,
     1, 0, -1, -1, 0, 0, 3, 1, 0, 0, {100, 0}, 0, 0, 0, {0}, 0, 2, 0, {0}},
    {"rotary half-split, paged 32, device-only lengths, window, 4 splits", 0, 2, 2, 4, 2, 0, 32, 1, 0, 0, 20, 0, 0, 0, 4,
     0, 0, 0, {150, 7}, 0, 0, 0, {0}, 0, 2, 0, {0}},
    {"cu_seqlens_q = cu_seqlens_k_new 0/3/1/9 (one array), paged 16, causal, append, advance", 0, 4, 9, 4, 2, 0, 16, 1,
     1, 1, -1, -1, 0, 0, 0, 1, 0, 0, {13, 0, 200, 40}, 0, 0, 0, {0}, 0, 0, 1, {0, 3, 1, 9}},
    {"cu_seqlens_q 2/5/0, append 2 each, device-only lengths, window, rotary, 3 splits", 1, 3, 5, 4, 1, 0, 0, 1, 0, 1,
     20, -1, 0, 0, 3, 0, 0, 0, {50, 7, 120}, 2, 0, 0, {0}, 0, 1, 2, {2, 5, 0}},
};

/* Decode over an fp8 (e4m3) KV cache (C ABI 0.13), where it is served: the decode options again, each with appends that
   quantize where the 16-bit list appends (fp8kv 1: descales [hkv], 2: [1]). The dfeature rows these reuse by index. */
static const struct {
    int feature; /* index into k_dfeatures */
    int fp8kv;
} k_d8features[] = {
    {0, 1},  /* contiguous, ragged 0/1, GQA, auto splits */
    {1, 2},  /* 13 splits, caller workspace */
    {2, 1},  /* paged 16, append 3, causal, fp16 */
    {3, 2},  /* paged 256, append across a page end, advance, 3 splits */
    {4, 1},  /* paged 32, window + softcap, 5 splits */
    {5, 2},  /* empty cache: fully masked rows */
    {6, 1},  /* paged 64, MQA, scale, no LSE */
    {7, 2},  /* head dim 40: the 64 kernel (here 48: an fp8 cache's head dims are multiples of 16) */
    {8, 1},  /* pool (cache_batch_idx), pads, append 3 > sq 1, advance */
    {9, 2},  /* paged pool, device-only pads, append 1 < sq 3, 4 splits */
    {10, 1}, /* ALiBi [hq], causal form */
    {11, 2}, /* ALiBi [b, hq], window + softcap */
    {12, 1}, /* rotary interleaved on append */
    {13, 2}, /* rotary half-split, 3 splits, advance */
    {15, 1}, /* cu_seqlens_q = cu_seqlens_k_new (one array), append, advance */
    {16, 2}, /* cu_seqlens_q, append 2 each, device-only lengths, rotary, 3 splits */
};

/* The fp8 (e4m3) forward's options, where it is served (out bf16; descale 0 none, 1 broadcast, 2 dense). */
typedef struct {
    const char* what;
    int b, sq, sk, hq, hkv, d; /* d 0: the path's main head dim */
    int causal, top_left, wl, wr;
    float softcap;
    int no_lse, descale, nseq;
    int lq[MAX_SEQ], lk[MAX_SEQ];
} f8feature;

static const f8feature k_f8features[] = {
    {"fp8, no descales", 1, 128, 192, 2, 2, 0, 0, 0, -1, -1, 0, 0, 0, 0, {0}, {0}},
    {"fp8, descales broadcast, causal, GQA 4:2", 2, 100, 140, 4, 2, 0, 1, 0, -1, -1, 0, 0, 1, 0, {0}, {0}},
    {"fp8, dense descales, causal top-left, sq > sk", 1, 150, 90, 2, 1, 0, 1, 1, -1, -1, 0, 0, 2, 0, {0}, {0}},
    {"fp8, window + softcap, no LSE", 1, 140, 140, 2, 2, 0, 0, 0, 24, 8, 20.0f, 1, 1, 0, {0}, {0}},
    {"fp8, varlen with empty sequences, dense descales", 0, 0, 0, 2, 1, 0, 1, 0, -1, -1, 0, 0, 2, 4,
     {17, 0, 130, 64}, {40, 33, 0, 129}},
    {"fp8, head dim 64", 1, 77, 131, 2, 2, 64, 0, 0, -1, -1, 0, 0, 1, 0, {0}, {0}},
    {"fp8, head dim 256, causal", 1, 130, 190, 2, 1, 256, 1, 0, -1, -1, 0, 0, 2, 0, {0}, {0}},
};

/* The head dim the feature calls of a pass and path use: 128 where served, else the first served class. */
static int main_head_dim(int pass, int path, int cc) {
    int i;
    if (served(pass, path, FA_DTYPE_BFLOAT16, 128, 0, cc)) return 128;
    for (i = 0; i < 6; ++i) {
        if (served(pass, path, FA_DTYPE_BFLOAT16, k_classes[i], 0, cc)) return k_classes[i];
    }
    return 0;
}

static void add_fp8_feature_cases(int path, int cc) {
    const int dmain = served(PASS_FWD, path, FA_DTYPE_FLOAT8_E4M3, 128, 0, cc) ? 128 : 64;
    size_t i;
    for (i = 0; i < sizeof k_f8features / sizeof k_f8features[0]; ++i) {
        const f8feature* f = &k_f8features[i];
        const int d = f->d ? f->d : dmain;
        scase* c;
        if (!served(PASS_FWD, path, FA_DTYPE_FLOAT8_E4M3, d, 0, cc)) continue;
        c = new_case(PASS_FWD, path, FA_DTYPE_FLOAT8_E4M3, d);
        if (f->nseq > 0) {
            set_varlen(c, f->nseq, f->lq, f->lk);
        } else {
            c->b = f->b, c->sq = f->sq, c->sk = f->sk;
        }
        c->hq = f->hq, c->hkv = f->hkv, c->causal = f->causal, c->top_left = f->top_left, c->wl = f->wl;
        c->wr = f->wr, c->softcap = f->softcap, c->lse = !f->no_lse, c->descale = f->descale;
        describe(c, f->what);
    }
}

static void add_feature_cases(int pass, int path, int cc) {
    const int dmain = main_head_dim(pass, path, cc);
    size_t i;
    if (pass == PASS_FWD) add_fp8_feature_cases(path, cc);
    if (dmain == 0) return;
    if (pass == PASS_DEC) {
        const size_t n16 = sizeof k_dfeatures / sizeof k_dfeatures[0];
        const size_t n8 = sizeof k_d8features / sizeof k_d8features[0];
        /* The 16-bit cache's list, then the fp8 cache's (the same rows, k_d8features). */
        for (i = 0; i < n16 + n8; ++i) {
            const dfeature* f = &k_dfeatures[i < n16 ? i : (size_t)k_d8features[i - n16].feature];
            const int fp8kv = i < n16 ? 0 : k_d8features[i - n16].fp8kv;
            const int dtype = f->fp16 ? FA_DTYPE_FLOAT16 : FA_DTYPE_BFLOAT16;
            const int d = f->d ? (fp8kv ? (f->d + 15) / 16 * 16 : f->d) : dmain;
            scase* c;
            if (!served_kv(pass, path, dtype, d, 0, cc, fp8kv)) continue;
            c = new_case(pass, path, dtype, d);
            c->fp8kv = fp8kv;
            set_lens(c, f->b, f->lens);
            c->sq = f->sq, c->hq = f->hq, c->hkv = f->hkv, c->block_size = f->block_size, c->append = f->append;
            c->advance = f->advance, c->causal = f->causal, c->wl = f->wl, c->wr = f->wr, c->softcap = f->softcap;
            c->scale = f->scale, c->splits = f->splits, c->host_lens = f->host_lens, c->caller_ws = f->caller_ws;
            c->lse = !f->no_lse;
            c->sk_new = f->sk_new, c->pool = f->pool, c->use_pads = f->use_pads, c->alibi = f->alibi;
            c->rotary = f->rotary;
            c->dcounts = f->counts;
            if (f->counts) {
                int b, most = 0;
                c->cuq[0] = 0;
                for (b = 0; b < f->b; ++b) {
                    c->cuq[b + 1] = c->cuq[b] + f->qn[b];
                    most = f->qn[b] > most ? f->qn[b] : most;
                }
                c->sq = most;
            }
            {
                int b;
                for (b = 0; b < f->b; ++b) {
                    c->idx[b] = f->pool > 0 ? f->pool - 1 - b : b;
                    c->pads[b] = f->pads[b];
                }
            }
            describe(c, f->what);
        }
        return;
    }
    for (i = 0; i < sizeof k_features / sizeof k_features[0]; ++i) {
        const feature* f = &k_features[i];
        const int dtype = f->fp16 ? FA_DTYPE_FLOAT16 : FA_DTYPE_BFLOAT16;
        const int d = f->d ? f->d : dmain;
        scase* c;
        if ((f->only == 1 && pass != PASS_FWD) || (f->only == 2 && pass != PASS_BWD)) continue;
        if (!served(pass, path, dtype, d, 0, cc)) continue;
        /* (sm90 dropout: run where the build has the pass's dropout kernels, else refused, as the C tests check) */
        if (f->dropout && !served_dropout(pass, path, dtype, d, cc)) continue;
        c = new_case(pass, path, dtype, d);
        if (f->nseq > 0) {
            set_varlen(c, f->nseq, f->lq, f->lk);
        } else {
            c->b = f->b, c->sq = f->sq, c->sk = f->sk;
        }
        c->hq = f->hq, c->hkv = f->hkv, c->causal = f->causal, c->top_left = f->top_left, c->wl = f->wl;
        c->wr = f->wr, c->softcap = f->softcap, c->scale = f->scale, c->packed = f->packed, c->host_cu = f->host_cu;
        c->lse = pass == PASS_BWD ? 1 : !f->no_lse;
        c->det = f->det, c->caller_ws = f->caller_ws, c->sinks = f->sinks, c->alibi = f->alibi;
        c->dropout = f->dropout;
        c->paged = f->paged;
        describe(c, f->what);
    }
}

/* A wide sm90 forward kernel, which only long calls reach (see its use). */
static int long_calls_only(const char* name) {
    return strstr(name, "_psmem") != NULL ||
           (strncmp(name, "sm90_fwd_e4m3_hdim128_", 22) == 0 && strstr(name, "x224_") != NULL);
}

static void add_target(const char* name, int aimed) {
    if (g_ntargets >= MAX_KERNELS) return;
    g_targets[g_ntargets] = (char*)malloc(strlen(name) + 1);
    if (g_targets[g_ntargets] == NULL) return;
    strcpy(g_targets[g_ntargets], name);
    g_target_aimed[g_ntargets] = aimed;
    ++g_ntargets;
}

/* The whole list: the aimed calls in the registry's order, then the feature calls, pass by pass. */
static void build_cases(int cc) {
    int32_t count = 0, i;
    int rotation[3][3][2], aimed[3][3];
    int pass, path;
    memset(rotation, 0, sizeof rotation);
    memset(aimed, 0, sizeof aimed);
    if (fa_kernel_count(&count) != FA_STATUS_SUCCESS) {
        fprintf(stderr, "sanitize_driver: fa_kernel_count failed: %s\n", fa_last_error_message());
        exit(1);
    }
    for (i = 0; i < count; ++i) {
        const char* name = NULL;
        kinfo k;
        if (fa_kernel_name(i, &name) != FA_STATUS_SUCCESS || name == NULL || !parse_kernel_name(name, &k)) continue;
        if (!served_kv(k.pass, k.path, k.dtype, k.d, k.dv, cc, k.fp8kv)) continue; /* e.g. sm90 kernels on an sm80 GPU */
        if (k.unknown[0] != '\0') {
            printf("SAN-NOTE %s: variant tag '%s' unknown to sanitize_driver: no call is aimed at it\n", name,
                   k.unknown);
            add_target(name, 0);
            continue;
        }
        /* The sm90 forward's wide kernels run only for long calls (sm90/fwd_launch.cuh), too large for the
           sanitizers: the 192-row head-dim-64 one ("_psmem" tile) from 2048 query rows and keys over many heads, the
           fp8 head-dim-128 one on 224-key blocks ("x224_") from 1536 keys where its blocks leave few keys empty. The
           call aimed at each reaches it in a build with FA_SM90_FWD_D64_WIDE_MIN_KEYS=1 or
           FA_SM90_FWD_FP8_WIDE_MIN_KEYS=1 (every such call takes it there: how it is sanitized), and elsewhere runs
           the build's kernel without counting as uncovered. */
        add_target(name, long_calls_only(name) ? 2 : 1);
        add_aimed_case(&k, name, rotation[k.pass][k.path][k.local || k.paged]++, aimed[k.pass][k.path]++);
    }
    for (pass = PASS_FWD; pass <= PASS_DEC; ++pass) {
        for (path = FA_PATH_SM80; path <= FA_PATH_SM90; ++path) add_feature_cases(pass, path, cc);
    }
}

/* ---- memory: device allocations, or placeholder addresses for --check-only -------------------------------- */

static int g_fake = 0;           /* --check-only: placeholder pointers, nothing is allocated */
static uintptr_t g_fake_next = 0; /* the next placeholder address */
static uint64_t g_rng = 1;

typedef struct {
    void* p[MAX_BUFS];
    int n;
    int failed;
} bufs;

static float uniform_pm1(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

/* `bytes` of device memory; with `host` given, filled from it. NULL (and bufs.failed) when allocating failed. */
static void* dalloc(bufs* B, size_t bytes, const void* host) {
    void* p = NULL;
    const size_t copy = bytes;
    if (bytes == 0) bytes = 256;
    if (g_fake) {
        p = (void*)g_fake_next;
        g_fake_next += (bytes + 4095) & ~(uintptr_t)4095; /* disjoint, 4 KiB apart */
        return p;
    }
    if (B->n >= MAX_BUFS || fa_memory_alloc(0, bytes, &p) != FA_STATUS_SUCCESS) {
        printf("  fa_memory_alloc of %lu bytes failed: %s\n", (unsigned long)bytes, fa_last_error_message());
        B->failed = 1;
        return NULL;
    }
    B->p[B->n++] = p;
    if (host != NULL && copy > 0 && fa_memcpy(p, host, copy) != FA_STATUS_SUCCESS) {
        printf("  fa_memcpy of %lu bytes failed: %s\n", (unsigned long)bytes, fa_last_error_message());
        B->failed = 1;
    }
    return p;
}

/* Bytes of one element of q/k/v of `dtype` (fp8: 1) and of out (fp8 calls write bf16: 2). */
static size_t elem_bytes(int dtype) { return dtype == FA_DTYPE_FLOAT8_E4M3 ? 1 : 2; }
static int out_dtype(int dtype) { return dtype == FA_DTYPE_FLOAT8_E4M3 ? FA_DTYPE_BFLOAT16 : dtype; }

/* n random fp16/bf16 values (or e4m3 ones: random sign, exponent 1..7, mantissa; |x| in [2^-6, 1.875], never
   NaN) in device memory. */
static void* drandom(bufs* B, int dtype, int64_t n) {
    const size_t elem = elem_bytes(dtype);
    unsigned char* h;
    void* p;
    int64_t i;
    if (g_fake) return dalloc(B, (size_t)n * elem, NULL);
    h = (unsigned char*)malloc((size_t)(n > 0 ? n : 1) * elem);
    if (h == NULL) {
        B->failed = 1;
        return NULL;
    }
    for (i = 0; i < n; ++i) {
        const float f = uniform_pm1();
        if (dtype == FA_DTYPE_FLOAT8_E4M3) {
            const unsigned bits = (unsigned)((f + 1.0f) * 1024.0f);
            h[i] = (unsigned char)((f < 0.0f ? 0x80u : 0u) | ((1u + bits % 7u) << 3) | ((bits >> 3) & 7u));
        } else {
            const uint16_t x = dtype == FA_DTYPE_BFLOAT16 ? float_to_bf16(f) : float_to_half(f);
            memcpy(h + (size_t)i * 2, &x, 2);
        }
    }
    p = dalloc(B, (size_t)n * elem, h);
    free(h);
    return p;
}

/* An fp32 descale table [batch, heads_kv] with the given strides (0 broadcasts), factors in [0.5, 2.5]. */
static void descale_table(bufs* B, fa_tensor_t* t, int batch, int heads_kv, int64_t batch_stride, int64_t head_stride) {
    float h[64];
    int i;
    for (i = 0; i < 64; ++i) h[i] = 1.5f + uniform_pm1();
    /* the device copy covers batch * heads_kv <= 64 factors */
    set_descale(t, dalloc(B, sizeof h, h), batch, heads_kv, batch_stride, head_stride);
}

static void free_bufs(bufs* B) {
    int i;
    for (i = 0; i < B->n; ++i) fa_memory_free(0, B->p[i]);
    B->n = 0;
}

static void tensor(fa_tensor_t* t, void* data, int dtype, int rank, int64_t n0, int64_t n1, int64_t n2, int64_t n3) {
    const int64_t shape[4] = {n0, n1, n2, n3};
    set_dense(t, data, dtype, rank, shape);
}

/* ---- one call ------------------------------------------------------------------------------------------- */

typedef struct {
    fa_context_t ctx;
    void* stream;
    int cc;
} runner;

/* The forward params of a forward or backward call; the host cu_seqlens live in cu (2 * (MAX_SEQ + 1)). */
/* ALiBi slopes of a case (C ABI 0.8): [hq] (alibi 1) or [batch, hq] (alibi 2; batch: the sequences), in [0, 0.3)
   as FlashAttention-2's tests draw them. */
static void alibi_slopes(const scase* c, bufs* B, fa_tensor_t* t, int batch) {
    float slopes[MAX_SEQ * 64];
    const int n = c->alibi == 2 ? batch * c->hq : c->hq;
    int i;
    for (i = 0; i < n && i < MAX_SEQ * 64; ++i) slopes[i] = 0.15f * (1.0f + uniform_pm1());
    if (c->alibi == 2) {
        tensor(t, dalloc(B, sizeof(float) * (size_t)n, slopes), FA_DTYPE_FLOAT32, 2, batch, c->hq, 0, 0);
    } else {
        tensor(t, dalloc(B, sizeof(float) * (size_t)n, slopes), FA_DTYPE_FLOAT32, 1, c->hq, 0, 0, 0);
    }
}

static void forward_params(const scase* c, bufs* B, fa_forward_params_t* fp, int32_t* cu) {
    const int varlen = c->nseq > 0;
    const int dv = c->dv ? c->dv : c->d; /* v's and out's head dim */
    int64_t rows_q = (int64_t)c->b * c->sq, rows_k = (int64_t)c->b * c->sk;
    int i;
    fa_forward_params_init(fp, sizeof *fp);
    if (varlen) {
        int32_t* cq = cu;
        int32_t* ck = cu + MAX_SEQ + 1;
        cq[0] = ck[0] = 0;
        for (i = 0; i < c->nseq; ++i) {
            cq[i + 1] = cq[i] + c->lq[i];
            ck[i + 1] = ck[i] + c->lk[i];
        }
        rows_q = cq[c->nseq];
        rows_k = ck[c->nseq];
        tensor(&fp->q, drandom(B, c->dtype, rows_q * c->hq * c->d), c->dtype, 3, rows_q, c->hq, c->d, 0);
        if (c->paged) {
            /* A pool of blocks, the sequences' pages in reverse order of the pool and one spare block; the entries
               past a sequence's last page hold INT32_MAX (never read). */
            const int bs = c->paged;
            int32_t table[MAX_SEQ * 16];
            int blocks = 1, mb = 1, next, j;
            for (i = 0; i < c->nseq; ++i) {
                const int n = (c->lk[i] + bs - 1) / bs;
                blocks += n;
                mb = n > mb ? n : mb;
            }
            next = blocks - 1;
            for (i = 0; i < c->nseq; ++i) {
                for (j = 0; j < mb; ++j) table[i * mb + j] = j * bs < c->lk[i] ? next-- : INT32_MAX;
            }
            tensor(&fp->k, drandom(B, c->dtype, (int64_t)blocks * bs * c->hkv * c->d), c->dtype, 4, blocks, bs, c->hkv,
                   c->d);
            tensor(&fp->v, drandom(B, c->dtype, (int64_t)blocks * bs * c->hkv * dv), c->dtype, 4, blocks, bs, c->hkv, dv);
            tensor(&fp->block_table, dalloc(B, sizeof(int32_t) * (size_t)(c->nseq * mb), table), FA_DTYPE_INT32, 2,
                   c->nseq, mb, 0, 0);
        } else {
            tensor(&fp->k, drandom(B, c->dtype, rows_k * c->hkv * c->d), c->dtype, 3, rows_k, c->hkv, c->d, 0);
            tensor(&fp->v, drandom(B, c->dtype, rows_k * c->hkv * dv), c->dtype, 3, rows_k, c->hkv, dv, 0);
        }
        tensor(&fp->out, dalloc(B, (size_t)(rows_q * c->hq * dv * 2), NULL), out_dtype(c->dtype), 3, rows_q, c->hq,
               dv, 0);
        if (c->lse) {
            tensor(&fp->lse, dalloc(B, (size_t)(rows_q * c->hq * 4), NULL), FA_DTYPE_FLOAT32, 2, c->hq, rows_q, 0, 0);
        }
        fp->cu_seqlens_q = (const int32_t*)dalloc(B, sizeof(int32_t) * (size_t)(c->nseq + 1), cq);
        fp->cu_seqlens_k = (const int32_t*)dalloc(B, sizeof(int32_t) * (size_t)(c->nseq + 1), ck);
        if (c->host_cu) {
            fp->cu_seqlens_q_host = cq;
            fp->cu_seqlens_k_host = ck;
        }
        fp->varlen_batch = c->nseq;
        fp->max_seqlen_q = c->sq;
        fp->max_seqlen_k = c->sk;
    } else if (c->packed) {
        /* [b, s, 3, h, d]: q, k and v interleaved per token (sq == sk, hq == hkv). */
        const int64_t row = (int64_t)3 * c->hq * c->d;
        char* base = (char*)drandom(B, c->dtype, (int64_t)c->b * c->sq * row);
        int t;
        fa_tensor_t* qkv[3] = {&fp->q, &fp->k, &fp->v};
        for (t = 0; t < 3; ++t) {
            tensor(qkv[t], base == NULL ? NULL : base + (size_t)t * c->hq * c->d * elem_bytes(c->dtype), c->dtype, 4, c->b,
                   c->sq, c->hq, c->d);
            qkv[t]->strides[0] = (int64_t)c->sq * row;
            qkv[t]->strides[1] = row;
        }
    } else {
        tensor(&fp->q, drandom(B, c->dtype, rows_q * c->hq * c->d), c->dtype, 4, c->b, c->sq, c->hq, c->d);
        tensor(&fp->k, drandom(B, c->dtype, rows_k * c->hkv * c->d), c->dtype, 4, c->b, c->sk, c->hkv, c->d);
        tensor(&fp->v, drandom(B, c->dtype, rows_k * c->hkv * dv), c->dtype, 4, c->b, c->sk, c->hkv, dv);
    }
    if (!varlen) {
        tensor(&fp->out, dalloc(B, (size_t)(rows_q * c->hq * dv * 2), NULL), out_dtype(c->dtype), 4, c->b, c->sq,
               c->hq, dv);
        if (c->lse) {
            tensor(&fp->lse, dalloc(B, (size_t)(rows_q * c->hq * 4), NULL), FA_DTYPE_FLOAT32, 3, c->b, c->hq, c->sq, 0);
        }
    }
    if (c->descale > 0) {
        const int batch = varlen ? c->nseq : c->b;
        const int dense = c->descale == 2;
        descale_table(B, &fp->q_descale, batch, c->hkv, dense ? c->hkv : 0, dense ? 1 : 0);
        descale_table(B, &fp->k_descale, batch, c->hkv, c->hkv, 1);
        descale_table(B, &fp->v_descale, batch, c->hkv, dense ? c->hkv : 1, dense ? 1 : 0);
    }
    fp->softmax_scale = c->scale;
    fp->causal = c->causal;
    fp->causal_alignment = c->top_left ? FA_CAUSAL_TOP_LEFT : FA_CAUSAL_BOTTOM_RIGHT;
    fp->window_left = c->wl;
    fp->window_right = c->wr;
    fp->softcap = c->softcap;
    fp->kernel_path = c->pass == PASS_FWD ? c->path : FA_PATH_AUTO;
    if (c->sinks) {
        float sinks[64];
        for (i = 0; i < c->hq && i < 64; ++i) sinks[i] = 2.0f * uniform_pm1();
        tensor(&fp->sinks, dalloc(B, sizeof(float) * (size_t)c->hq, sinks), FA_DTYPE_FLOAT32, 1, c->hq, 0, 0, 0);
    }
    if (c->alibi) alibi_slopes(c, B, &fp->alibi_slopes, c->nseq > 0 ? c->nseq : c->b);
    if (c->dropout) {
        fp->dropout_p = 0.17f;
        if (c->dropout == 1) {
            const int64_t mb = varlen ? c->nseq : c->b;
            const int64_t msq = varlen ? fp->max_seqlen_q : c->sq, msk = varlen ? fp->max_seqlen_k : c->sk;
            fp->dropout_seed = 0x5EED5EEDull;
            fp->dropout_offset = 96;
            tensor(&fp->dropout_mask, dalloc(B, (size_t)(mb * c->hq * msq * msk), NULL), FA_DTYPE_UINT8, 4, mb, c->hq,
                   msq, msk);
        } else {
            const uint64_t seed_offset[2] = {0xC0FFEEull, 1ull << 33};
            fp->dropout_seed_device = (const uint64_t*)dalloc(B, sizeof seed_offset[0], &seed_offset[0]);
            fp->dropout_offset_device = (const uint64_t*)dalloc(B, sizeof seed_offset[1], &seed_offset[1]);
            fp->dropout_rng_state = (uint64_t*)dalloc(B, sizeof seed_offset, NULL);
        }
    }
}

static void backward_params(const scase* c, bufs* B, const fa_forward_params_t* fp, fa_backward_params_t* bp) {
    const int varlen = c->nseq > 0;
    const int64_t nq = varlen ? fp->q.shape[0] : (int64_t)c->b * c->sq;
    const int64_t nk = varlen ? fp->k.shape[0] : (int64_t)c->b * c->sk;
    fa_backward_params_init(bp, sizeof *bp);
    bp->q = fp->q;
    bp->k = fp->k;
    bp->v = fp->v;
    bp->out = fp->out;
    bp->lse = fp->lse;
    const int dv = c->dv ? c->dv : c->d; /* dO's and dV's head dim (v's) */
    bp->dout = fp->out;
    bp->dout.data = drandom(B, c->dtype, nq * c->hq * dv);
    bp->dq = fp->out;
    bp->dq.data = dalloc(B, (size_t)(nq * c->hq * c->d * 2), NULL);
    if (c->dv) { /* dq like q, not like out */
        if (varlen) {
            tensor(&bp->dq, bp->dq.data, c->dtype, 3, nq, c->hq, c->d, 0);
        } else {
            tensor(&bp->dq, bp->dq.data, c->dtype, 4, c->b, c->sq, c->hq, c->d);
        }
    }
    if (varlen) {
        tensor(&bp->dk, dalloc(B, (size_t)(nk * c->hkv * c->d * 2), NULL), c->dtype, 3, nk, c->hkv, c->d, 0);
        tensor(&bp->dv, dalloc(B, (size_t)(nk * c->hkv * dv * 2), NULL), c->dtype, 3, nk, c->hkv, dv, 0);
    } else {
        tensor(&bp->dk, dalloc(B, (size_t)(nk * c->hkv * c->d * 2), NULL), c->dtype, 4, c->b, c->sk, c->hkv, c->d);
        tensor(&bp->dv, dalloc(B, (size_t)(nk * c->hkv * dv * 2), NULL), c->dtype, 4, c->b, c->sk, c->hkv, dv);
    }
    bp->softmax_scale = fp->softmax_scale;
    bp->causal = fp->causal;
    bp->causal_alignment = fp->causal_alignment;
    bp->kernel_path = c->path;
    bp->window_left = fp->window_left;
    bp->window_right = fp->window_right;
    bp->softcap = fp->softcap;
    bp->deterministic = c->det;
    bp->cu_seqlens_q = fp->cu_seqlens_q;
    bp->cu_seqlens_k = fp->cu_seqlens_k;
    bp->cu_seqlens_q_host = fp->cu_seqlens_q_host;
    bp->cu_seqlens_k_host = fp->cu_seqlens_k_host;
    bp->varlen_batch = fp->varlen_batch;
    bp->max_seqlen_q = fp->max_seqlen_q;
    bp->max_seqlen_k = fp->max_seqlen_k;
    bp->alibi_slopes = fp->alibi_slopes;
    bp->dropout_p = fp->dropout_p;
    bp->dropout_seed = fp->dropout_seed;
    bp->dropout_offset = fp->dropout_offset;
    if (fp->dropout_rng_state != NULL) { /* FlashAttention-2's replay: the forward's recorded (seed, offset) */
        bp->dropout_seed_device = fp->dropout_rng_state;
        bp->dropout_offset_device = fp->dropout_rng_state + 1;
        bp->dropout_offset = 0;
    }
    if (c->sinks) {
        bp->sinks = fp->sinks;
        tensor(&bp->dsinks, dalloc(B, sizeof(float) * (size_t)c->hq, NULL), FA_DTYPE_FLOAT32, 1, c->hq, 0, 0, 0);
    }
}

/* Decode params; lens (MAX_SEQ) and the block table (host) are filled here and must outlive the call. */
static void decode_params(const scase* c, bufs* B, fa_decode_params_t* p, int32_t* lens, int32_t** table_out) {
    const int paged = c->block_size > 0;
    const int added = c->append ? (c->sk_new > 0 ? c->sk_new : c->sq) : 0;
    const int rows = c->pool > 0 ? c->pool : c->b; /* cache (or block-table) rows */
    int capacity = 0, max_blocks = 0, num_blocks = 0, b, i;
    int64_t cache_rows;
    const int64_t row = (int64_t)c->hkv * c->d;
    int32_t* table = NULL;
    /* Sequence b's appended count: its own with one cu array for queries and keys (dcounts 1), else added. */
#define ADDED_OF(b) (c->dcounts == 1 && c->append ? c->cuq[(b) + 1] - c->cuq[b] : added)
    const int total_q = c->dcounts ? c->cuq[c->b] : 0, q_rows = total_q + 1;
    for (b = 0; b < c->b; ++b) {
        const int total = c->lens[b] + ADDED_OF(b);
        lens[b] = c->lens[b];
        if (total > capacity) capacity = total;
    }
    if (paged) {
        max_blocks = (capacity + c->block_size - 1) / c->block_size;
        if (max_blocks < 1) max_blocks = 1;
        num_blocks = rows * max_blocks + 2; /* two blocks no sequence uses */
        cache_rows = (int64_t)num_blocks * c->block_size;
        /* A shuffled table; entries past a sequence's pages, before its pad's page and of rows no sequence uses
           are -1 (never read). */
        table = (int32_t*)malloc(sizeof(int32_t) * (size_t)(rows * max_blocks));
        {
            int32_t* perm = (int32_t*)malloc(sizeof(int32_t) * (size_t)num_blocks);
            if (table == NULL || perm == NULL) {
                free(perm);
                B->failed = 1;
                *table_out = table;
                return;
            }
            for (i = 0; i < num_blocks; ++i) perm[i] = i;
            for (i = num_blocks - 1; i > 0; --i) {
                const int j = (int)((uniform_pm1() + 1.0f) * 0.5f * (float)(i + 1)) % (i + 1);
                const int32_t t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
            }
            for (i = 0; i < rows * max_blocks; ++i) table[i] = -1;
            for (b = 0; b < c->b; ++b) {
                const int total = c->lens[b] + ADDED_OF(b), r = c->pool > 0 ? c->idx[b] : b;
                const int pad = c->use_pads ? c->pads[b] : 0;
                for (i = 0; i < max_blocks; ++i) {
                    const int used = i * c->block_size < total && (i + 1) * c->block_size > pad;
                    table[r * max_blocks + i] = used ? perm[r * max_blocks + i] : -1;
                }
            }
            free(perm);
        }
    } else {
        capacity += 3; /* a little room past the longest sequence */
        cache_rows = (int64_t)rows * capacity;
    }
    *table_out = table;
    fa_decode_params_init(p, sizeof *p);
    if (c->dcounts) {
        void* cu = dalloc(B, sizeof(int32_t) * (size_t)(c->b + 1), c->cuq);
        tensor(&p->q, drandom(B, c->dtype, (int64_t)q_rows * c->hq * c->d), c->dtype, 3, q_rows, c->hq, c->d, 0);
        tensor(&p->cu_seqlens_q, cu, FA_DTYPE_INT32, 1, c->b + 1, 0, 0, 0);
        p->max_seqlen_q = c->sq;
        if (c->host_lens) p->cu_seqlens_q_host = c->cuq;
        if (c->dcounts == 1 && c->append) {
            p->cu_seqlens_k_new = p->cu_seqlens_q;
            if (c->host_lens) p->cu_seqlens_k_new_host = c->cuq;
        }
    } else {
        tensor(&p->q, drandom(B, c->dtype, (int64_t)c->b * c->sq * c->hq * c->d), c->dtype, 4, c->b, c->sq, c->hq, c->d);
    }
    /* An fp8 cache (C ABI 0.13): e4m3 bytes (never NaN), descales [hkv] or [1] of factors in [0.5, 2.5]. */
    const int cache_dtype = c->fp8kv ? FA_DTYPE_FLOAT8_E4M3 : c->dtype;
    if (c->fp8kv) {
        float h[MAX_SEQ * 4];
        const int n = c->fp8kv == 2 ? 1 : c->hkv;
        int j;
        for (j = 0; j < (int)(sizeof h / sizeof h[0]); ++j) h[j] = 1.5f + uniform_pm1();
        tensor(&p->k_descale, dalloc(B, sizeof(float) * (size_t)n, h), FA_DTYPE_FLOAT32, 1, n, 0, 0, 0);
        tensor(&p->v_descale, dalloc(B, sizeof(float) * (size_t)n, h + n), FA_DTYPE_FLOAT32, 1, n, 0, 0, 0);
    }
    if (paged) {
        tensor(&p->k_cache, drandom(B, cache_dtype, cache_rows * row), cache_dtype, 4, num_blocks, c->block_size, c->hkv,
               c->d);
        tensor(&p->v_cache, drandom(B, cache_dtype, cache_rows * row), cache_dtype, 4, num_blocks, c->block_size, c->hkv,
               c->d);
        tensor(&p->block_table, dalloc(B, sizeof(int32_t) * (size_t)(rows * max_blocks), table), FA_DTYPE_INT32, 2,
               rows, max_blocks, 0, 0);
    } else {
        tensor(&p->k_cache, drandom(B, cache_dtype, cache_rows * row), cache_dtype, 4, rows, capacity, c->hkv, c->d);
        tensor(&p->v_cache, drandom(B, cache_dtype, cache_rows * row), cache_dtype, 4, rows, capacity, c->hkv, c->d);
    }
    if (c->append && c->dcounts == 1) {
        tensor(&p->k_new, drandom(B, c->dtype, (int64_t)total_q * row), c->dtype, 3, total_q, c->hkv, c->d, 0);
        tensor(&p->v_new, drandom(B, c->dtype, (int64_t)total_q * row), c->dtype, 3, total_q, c->hkv, c->d, 0);
    } else if (c->append) {
        tensor(&p->k_new, drandom(B, c->dtype, (int64_t)c->b * added * row), c->dtype, 4, c->b, added, c->hkv, c->d);
        tensor(&p->v_new, drandom(B, c->dtype, (int64_t)c->b * added * row), c->dtype, 4, c->b, added, c->hkv, c->d);
    }
#undef ADDED_OF
    if (c->pool > 0) {
        tensor(&p->cache_batch_idx, dalloc(B, sizeof(int32_t) * (size_t)c->b, c->idx), FA_DTYPE_INT32, 1, c->b, 0, 0, 0);
        if (c->host_lens) p->cache_batch_idx_host = c->idx;
    }
    if (c->use_pads) {
        tensor(&p->cache_leftpad, dalloc(B, sizeof(int32_t) * (size_t)c->b, c->pads), FA_DTYPE_INT32, 1, c->b, 0, 0, 0);
        if (c->host_lens) p->cache_leftpad_host = c->pads;
    }
    if (c->alibi) alibi_slopes(c, B, &p->alibi_slopes, c->b);
    if (c->dcounts) {
        tensor(&p->out, dalloc(B, (size_t)q_rows * c->hq * c->d * 2, NULL), c->dtype, 3, q_rows, c->hq, c->d, 0);
        if (c->lse) tensor(&p->lse, dalloc(B, (size_t)c->hq * q_rows * 4, NULL), FA_DTYPE_FLOAT32, 2, c->hq, q_rows, 0, 0);
    } else {
        tensor(&p->out, dalloc(B, (size_t)c->b * c->sq * c->hq * c->d * 2, NULL), c->dtype, 4, c->b, c->sq, c->hq, c->d);
        if (c->lse) {
            tensor(&p->lse, dalloc(B, (size_t)c->b * c->hq * c->sq * 4, NULL), FA_DTYPE_FLOAT32, 3, c->b, c->hq, c->sq, 0);
        }
    }
    tensor(&p->cache_seqlens, dalloc(B, sizeof(int32_t) * (size_t)c->b, lens), FA_DTYPE_INT32, 1, c->b, 0, 0, 0);
    p->softmax_scale = c->scale;
    p->causal = c->causal;
    p->window_left = c->wl;
    p->window_right = c->wr;
    p->softcap = c->softcap;
    p->kernel_path = c->path;
    p->num_splits = c->splits;
    p->advance_cache_seqlens = c->advance;
    if (c->host_lens) p->cache_seqlens_host = lens;
    if (c->rotary) {
        /* Tables of every position the call may rotate at (the capacity plus the queries), random values. */
        const int rows_ro = (paged ? max_blocks * c->block_size : capacity) + c->sq;
        const int dim = c->rotary == 1 ? c->d / 16 * 16 : 32;
        p->rotary_cos = drandom(B, c->dtype, (int64_t)rows_ro * (dim / 2));
        p->rotary_sin = drandom(B, c->dtype, (int64_t)rows_ro * (dim / 2));
        p->rotary_dim = dim;
        p->rotary_seqlen = rows_ro;
        p->rotary_interleaved = c->rotary == 1;
    }
}

/* Records a failed status; returns 1 when the status is a CUDA error (the context may be lost). */
static int report_status(int idx, const char* what, fa_status_t st) {
    printf("SAN-CALL %d END FAIL %s: %s: %s\n", idx, what, fa_status_string(st), fa_last_error_message());
    return st == FA_STATUS_CUDA_ERROR;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* --check-only: the call's params, with placeholder pointers, through fa_*_check. 1 when accepted. */
static int check_case(int idx, const scase* c, int cc) {
    bufs B;
    int32_t cu[2 * (MAX_SEQ + 1)], lens[MAX_SEQ];
    int32_t* table = NULL;
    fa_status_t st;
    memset(&B, 0, sizeof B);
    g_rng = rng_state_from_seed((uint64_t)idx);
    if (c->pass == PASS_DEC) {
        fa_decode_params_t p;
        decode_params(c, &B, &p, lens, &table);
        st = fa_decode_check(&p, cc);
        free(table);
    } else {
        fa_forward_params_t fp;
        forward_params(c, &B, &fp, cu);
        if (c->pass == PASS_FWD) {
            st = fa_forward_check(&fp, cc);
        } else {
            fa_backward_params_t bp;
            backward_params(c, &B, &fp, &bp);
            st = fa_forward_check(&fp, cc);
            if (st == FA_STATUS_SUCCESS) st = fa_backward_check(&bp, cc);
        }
    }
    if (st != FA_STATUS_SUCCESS) {
        printf("SAN-CHECK %d FAIL %s: %s: %s\n", idx, c->label, fa_status_string(st), fa_last_error_message());
        return 0;
    }
    printf("SAN-CHECK %d ok %s\n", idx, c->label);
    return 1;
}

/* Runs call idx and waits for it. Returns 0 ok, 1 failed, 2 failed with a CUDA error (context maybe lost). */
static int run_case(int idx, const scase* c, const runner* R) {
    bufs B;
    int32_t cu[2 * (MAX_SEQ + 1)], lens[MAX_SEQ];
    int32_t* table = NULL;
    fa_status_t st = FA_STATUS_SUCCESS;
    int cuda = 0, failed = 0;
    double t0;
    memset(&B, 0, sizeof B);
    g_rng = rng_state_from_seed((uint64_t)idx);
    g_call_kernels[0] = '\0';
    printf("SAN-CALL %d BEGIN %s\n", idx, c->label);
    fflush(stdout);
    t0 = now_ms();
    if (c->pass == PASS_DEC) {
        fa_decode_params_t p;
        decode_params(c, &B, &p, lens, &table);
        if (!B.failed && c->caller_ws) {
            size_t bytes = 0;
            st = fa_decode_workspace_size(R->ctx, &p, &bytes);
            if (st != FA_STATUS_SUCCESS) {
                cuda |= report_status(idx, "fa_decode_workspace_size", st);
                failed = 1;
            } else if (bytes > 0) {
                p.workspace = dalloc(&B, bytes, NULL);
                p.workspace_size = bytes;
            }
        }
        if (!B.failed && !failed) {
            st = fa_decode(R->ctx, &p, R->stream);
            if (st != FA_STATUS_SUCCESS) {
                cuda |= report_status(idx, "fa_decode", st);
                failed = 1;
            }
        }
    } else {
        fa_forward_params_t fp;
        forward_params(c, &B, &fp, cu);
        if (!B.failed) {
            st = fa_forward(R->ctx, &fp, R->stream);
            if (st != FA_STATUS_SUCCESS) {
                cuda |= report_status(idx, "fa_forward", st);
                failed = 1;
            }
        }
        if (!B.failed && !failed && c->pass == PASS_BWD) {
            fa_backward_params_t bp;
            backward_params(c, &B, &fp, &bp);
            if (!B.failed && c->caller_ws) {
                size_t bytes = 0;
                st = fa_backward_workspace_size(R->ctx, &bp, &bytes);
                if (st != FA_STATUS_SUCCESS) {
                    cuda |= report_status(idx, "fa_backward_workspace_size", st);
                    failed = 1;
                } else if (bytes > 0) {
                    bp.workspace = dalloc(&B, bytes, NULL);
                    bp.workspace_size = bytes;
                }
            }
            if (!B.failed && !failed) {
                st = fa_backward(R->ctx, &bp, R->stream);
                if (st != FA_STATUS_SUCCESS) {
                    cuda |= report_status(idx, "fa_backward", st);
                    failed = 1;
                }
            }
        }
    }
    if (B.failed && !failed) {
        printf("SAN-CALL %d END FAIL setup: a device allocation or copy failed\n", idx);
        failed = 1;
    }
    st = fa_stream_synchronize(R->stream);
    if (st != FA_STATUS_SUCCESS) {
        if (!failed) cuda |= report_status(idx, "fa_stream_synchronize", st);
        else cuda = 1;
        failed = 1;
    }
    if (!failed) {
        printf("SAN-CALL %d END ok %.1f ms kernels=%s\n", idx, now_ms() - t0,
               g_call_kernels[0] != '\0' ? g_call_kernels : "(none)");
    }
    fflush(stdout);
    free_bufs(&B);
    free(table);
    return failed ? (cuda ? 2 : 1) : 0;
}

/* ---- arguments, main ------------------------------------------------------------------------------------ */

/* "3,17-20" -> mask over the calls. 0 on a malformed list. */
static int parse_only(const char* text, unsigned char* mask, int n) {
    const char* s = text;
    while (*s != '\0') {
        char* end = NULL;
        long a = strtol(s, &end, 10), b2;
        if (end == s || a < 0) return 0;
        b2 = a;
        s = end;
        if (*s == '-') {
            b2 = strtol(s + 1, &end, 10);
            if (end == s + 1 || b2 < a) return 0;
            s = end;
        }
        for (; a <= b2 && a < n; ++a) mask[a] = 1;
        if (*s == ',') {
            ++s;
        } else if (*s != '\0') {
            return 0;
        }
    }
    return 1;
}

static void usage(void) {
    fprintf(stderr, "usage: sanitize_driver [--list] [--check-only] [--cc N] [--only I,J-K] [--shard K/N] "
                    "[--filter TEXT]\n");
}

int main(int argc, char** argv) {
    int list = 0, check_only = 0, cc = -1, shard_k = 0, shard_n = 1, i, full = 1;
    const char* only = NULL;
    const char* filter = NULL;
    static unsigned char selected[MAX_CASES];
    runner R;
    fa_device_properties_t props;
    int32_t count = 0;
    int planned_pass[3] = {0, 0, 0}, nsel = 0, ok = 0, failed = 0, not_run = 0, lost_after = -1, uncovered = 0;
    fa_status_t st;

    for (i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--list") == 0) {
            list = 1;
        } else if (strcmp(argv[i], "--check-only") == 0) {
            check_only = 1;
        } else if (strcmp(argv[i], "--cc") == 0 && i + 1 < argc) {
            cc = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            only = argv[++i];
        } else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
            filter = argv[++i];
        } else if (strcmp(argv[i], "--shard") == 0 && i + 1 < argc) {
            if (sscanf(argv[++i], "%d/%d", &shard_k, &shard_n) != 2 || shard_n < 1 || shard_k < 0 ||
                shard_k >= shard_n) {
                usage();
                return 2;
            }
        } else {
            usage();
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(&R, 0, sizeof R);
    memset(&props, 0, sizeof props);
    props.struct_size = sizeof props;

    if (check_only || (list && cc >= 0)) {
        g_fake = 1;
        g_fake_next = (uintptr_t)0x100000000ull;
        R.cc = cc >= 0 ? cc : 0;
        printf("SAN-DRIVER: planning for compute capability %d without a GPU (%s)\n", R.cc,
               check_only ? "--check-only" : "--list");
    } else if (list && cc < 0 && fa_device_count(&count) != FA_STATUS_SUCCESS) {
        g_fake = 1;
        R.cc = 0;
        printf("SAN-DRIVER: no CUDA device; planning for any GPU this build serves (compute capability 0)\n");
    } else {
        st = fa_device_count(&count);
        if (st == FA_STATUS_NO_DEVICE) {
            printf("SAN-SKIP no CUDA device: %s\n", fa_last_error_message());
            return 77;
        }
        if (st != FA_STATUS_SUCCESS || count <= 0) {
            printf("SAN-DRIVER FAIL: fa_device_count returned %s with count %d (%s): the CUDA setup is broken\n",
                   fa_status_string(st), (int)count, fa_last_error_message());
            return 1;
        }
        if (fa_device_get_properties(0, &props) != FA_STATUS_SUCCESS) {
            printf("SAN-DRIVER FAIL: fa_device_get_properties(0): %s\n", fa_last_error_message());
            return 1;
        }
        R.cc = cc >= 0 ? cc : props.major * 10 + props.minor;
        printf("SAN-DRIVER: device 0 %s, compute capability %d.%d; libflash_attention %d\n", props.name,
               (int)props.major, (int)props.minor, (int)fa_version());
    }

    build_cases(R.cc);
    for (i = 0; i < g_ncases; ++i) ++planned_pass[g_cases[i].pass];
    if (only != NULL) {
        full = 0;
        if (!parse_only(only, selected, g_ncases)) {
            usage();
            return 2;
        }
    } else {
        memset(selected, 1, sizeof selected);
    }
    if (shard_n > 1 || filter != NULL) full = 0;
    for (i = 0; i < g_ncases; ++i) {
        if (shard_n > 1 && i % shard_n != shard_k) selected[i] = 0;
        if (filter != NULL && strstr(g_cases[i].label, filter) == NULL) selected[i] = 0;
        nsel += selected[i];
    }
    printf("SAN-DRIVER: %d calls planned (fwd %d, bwd %d, decode %d), %d targeted kernels; running %d", g_ncases,
           planned_pass[0], planned_pass[1], planned_pass[2], g_ntargets, nsel);
    if (shard_n > 1) printf(" (shard %d/%d)", shard_k, shard_n);
    printf("\n");

    if (list) {
        for (i = 0; i < g_ncases; ++i) {
            if (selected[i]) printf("SAN-LIST %d %s\n", i, g_cases[i].label);
        }
        for (i = 0; i < g_ntargets; ++i) printf("SAN-TARGET %s\n", g_targets[i]);
        return 0;
    }
    if (check_only) {
        for (i = 0; i < g_ncases; ++i) {
            if (!selected[i]) continue;
            if (check_case(i, &g_cases[i], R.cc)) ++ok;
            else ++failed;
        }
        for (i = 0; i < g_ntargets; ++i) {
            if (!g_target_aimed[i]) ++uncovered;
        }
        printf("SAN-DRIVER: %d of %d calls accepted by fa_*_check for compute capability %d, %d failed; "
               "%d targeted kernels, %d without a call aimed at them\n",
               ok, nsel, R.cc, failed, g_ntargets, uncovered);
        /* Without a GPU the list must still plan something: the sm80 kernels of every compiled head dim. */
        if (g_ncases == 0 || g_ntargets == 0) {
            printf("SAN-DRIVER FAIL: nothing planned\n");
            failed = 1;
        }
        printf("SAN-DONE %d\n", failed || uncovered ? 1 : 0);
        return failed || uncovered ? 1 : 0;
    }

    if (fa_set_log_callback(on_log, NULL) != FA_STATUS_SUCCESS ||
        fa_context_create(0, &R.ctx) != FA_STATUS_SUCCESS || fa_stream_create(0, &R.stream) != FA_STATUS_SUCCESS) {
        printf("SAN-DRIVER FAIL: setting up the context and stream: %s\n", fa_last_error_message());
        return 1;
    }
    for (i = 0; i < g_ncases; ++i) {
        int r;
        if (!selected[i]) continue;
        if (lost_after >= 0) {
            ++not_run;
            continue;
        }
        r = run_case(i, &g_cases[i], &R);
        if (r == 0) {
            ++ok;
        } else {
            ++failed;
            /* A CUDA error: go on only when the context still works (a sticky error fails every later call). */
            if (r == 2 && (fa_device_synchronize(0) != FA_STATUS_SUCCESS ||
                           fa_stream_synchronize(R.stream) != FA_STATUS_SUCCESS)) {
                lost_after = i;
                printf("SAN-ABORT the CUDA context is lost after call %d (%s); the remaining calls are not run\n", i,
                       fa_last_error_message());
            }
        }
    }
    printf("SAN-DRIVER: %d calls: %d ok, %d failed, %d not run; %ld kernel launches named by the library, "
           "%d distinct kernels\n",
           nsel, ok, failed, not_run, g_launches, g_nseen);
    if (full && lost_after < 0) {
        int covered = 0, optional = 0, j;
        for (i = 0; i < g_ntargets; ++i) {
            int hit = 0;
            for (j = 0; j < g_nseen && !hit; ++j) hit = strcmp(g_seen[j], g_targets[i]) == 0;
            if (hit) {
                ++covered;
            } else if (g_target_aimed[i] == 2) {
                ++optional;
                printf("SAN-NOTE %s: not run here (long calls only; FA_SM90_FWD_D64_WIDE_MIN_KEYS=1 or "
                       "FA_SM90_FWD_FP8_WIDE_MIN_KEYS=1 builds run it)\n", g_targets[i]);
            } else {
                printf("SAN-UNCOVERED %s%s\n", g_targets[i],
                       g_target_aimed[i] ? " (a call was aimed at it, but the library ran another kernel)"
                                         : " (no call is aimed at it)");
            }
        }
        uncovered = g_ntargets - covered - optional;
        printf("SAN-COVERAGE: %d of %d compiled kernels that this device serves ran (%d reached by long calls only)\n",
               covered, g_ntargets, optional);
    }
    fa_stream_destroy(R.stream);
    fa_context_destroy(R.ctx);
    fa_set_log_callback(NULL, NULL);
    printf("SAN-DONE %d\n", failed || uncovered || not_run ? 1 : 0);
    return failed || uncovered || not_run ? 1 : 0;
}
