/*
 * flash_attention.h - the C ABI of FlashAttention.Interop.
 *
 * The one public header of libflash_attention. Plain C99: fixed-width integers, no bool, no unions,
 * no C++ types. Every function returns fa_status_t; on failure fa_last_error_message() says what was
 * wrong in words a user can act on. Nothing in the library calls exit, abort or printf.
 *
 * Tensors are described, not owned: a device pointer, a dtype, a rank, a shape and strides in
 * elements. Attention tensors use the layout [batch, seqlen, heads, head_dim]; the last dimension
 * must be contiguous (stride 1), every other stride is free, so slices of a packed QKV buffer work
 * without copies.
 *
 * Streams cross the ABI as void* (a cudaStream_t); NULL is the legacy default stream. Streams made by
 * other libraries (PyTorch, ONNX Runtime, TorchSharp, ...) may be passed.
 *
 * Thread safety: every function may be called from any thread. A context may be used from several
 * threads and streams at once; the stream is an argument of every call, never state on the context.
 */
#ifndef FLASH_ATTENTION_H
#define FLASH_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

/* Version of this header. fa_version() reports the version of the loaded binary. */
#define FA_VERSION_MAJOR 0
#define FA_VERSION_MINOR 13
#define FA_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH. */
#define FA_VERSION_CODE (FA_VERSION_MAJOR * 10000 + FA_VERSION_MINOR * 100 + FA_VERSION_PATCH)

/* Most dimensions a tensor descriptor carries. */
#define FA_MAX_RANK 4
/* Size of the name buffer in fa_device_properties_t. */
#define FA_DEVICE_NAME_SIZE 256
/* Required alignment, in bytes, of every tensor's data pointer. */
#define FA_ALIGNMENT_BYTES 16
/* Most key splits fa_decode runs per (sequence, head). */
#define FA_DECODE_MAX_SPLITS 128
/* Alignment, in bytes, a caller-supplied workspace must have. */
#define FA_WORKSPACE_ALIGNMENT 256

#if defined(_WIN32)
#  if defined(FA_BUILDING_LIBRARY)
#    define FA_API __declspec(dllexport)
#  else
#    define FA_API __declspec(dllimport)
#  endif
#else
#  define FA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Result of every call. Values are fixed and only ever appended. */
typedef enum fa_status {
    /* The call succeeded. */
    FA_STATUS_SUCCESS = 0,
    /* An argument is null, out of range or inconsistent with another; nothing was launched. */
    FA_STATUS_INVALID_ARGUMENT = 1,
    /* The arguments are valid but this build or this GPU does not serve them (head dim, dtype, arch). */
    FA_STATUS_UNSUPPORTED = 2,
    /* No CUDA device, no driver, or the driver is older than the library needs. */
    FA_STATUS_NO_DEVICE = 3,
    /* A device or host allocation failed. */
    FA_STATUS_OUT_OF_MEMORY = 4,
    /* A CUDA call failed; the message carries CUDA's own error name and text. */
    FA_STATUS_CUDA_ERROR = 5,
    /* A bug in the library: an exception or state it did not expect. Please report it. */
    FA_STATUS_INTERNAL = 6,
    /* A check only the GPU can make failed during an earlier call on this context (the message names the call
       and the cause: a deterministic backward that gave up waiting because two calls in flight shared one
       workspace, or a decode whose device-only cache_seqlens, block_table, cache_batch_idx or cache_leftpad did not
       fit the cache); that call's outputs are not valid. Reported once: by fa_context_check or, failing that, by the
       next fa_forward, fa_backward or fa_decode on the context, which then launches nothing. The CUDA context
       itself is intact. */
    FA_STATUS_DEVICE_CHECK_FAILED = 7
} fa_status_t;

/* Element types of tensors. Values are fixed and only ever appended. */
typedef enum fa_dtype {
    /* IEEE 754 binary16. */
    FA_DTYPE_FLOAT16 = 1,
    /* bfloat16 (8-bit exponent, 7-bit mantissa). */
    FA_DTYPE_BFLOAT16 = 2,
    /* IEEE 754 binary32; used for the log-sum-exp output. */
    FA_DTYPE_FLOAT32 = 3,
    /* 32-bit signed integer. */
    FA_DTYPE_INT32 = 4,
    /* OCP FP8 E4M3 (PyTorch's float8_e4m3fn): 4 exponent bits (bias 7), 3 mantissa bits, no infinities
       (exponent and mantissa all ones is NaN), largest finite value 448. Accepted for q, k and v of fa_forward
       on the sm90 path only (compute capability 9.0, a build with sm_90a code); out is then bf16, and q_descale,
       k_descale and v_descale of fa_forward_params_t give the factors that scale the values back. (Since 0.5.) */
    FA_DTYPE_FLOAT8_E4M3 = 5,
    /* 8-bit unsigned integer; used for the dropout keep mask (fa_forward_params_t.dropout_mask). (Since 0.9.) */
    FA_DTYPE_UINT8 = 6
} fa_dtype_t;

/* Where the causal diagonal sits when seqlen_q != seqlen_k. */
typedef enum fa_causal_alignment {
    /* Query i sees keys j <= i + (seqlen_k - seqlen_q): the last query sees every key.
       FlashAttention >= 2.1 convention; the default. */
    FA_CAUSAL_BOTTOM_RIGHT = 0,
    /* Query i sees keys j <= i: PyTorch's is_causal convention. */
    FA_CAUSAL_TOP_LEFT = 1
} fa_causal_alignment_t;

/* Kernel family a call may use. */
typedef enum fa_kernel_path {
    /* Pick the fastest path this build has for the device. */
    FA_PATH_AUTO = 0,
    /* The portable mma.sync path (sm_80 and later). */
    FA_PATH_SM80 = 1,
    /* Hopper's path (wgmma and TMA, with warp specialisation in the forward; a build with sm_90a code on
       compute capability 9.0). Serves the forward and backward passes for every head dim (kernels at 64, 128,
       192 and 256 (192 since 0.10); a head dim between them runs the next one up; the backward served only
       33..64, 97..128 and 193..256 before 0.6.1); elsewhere, and for decode, a call that asks for it is
       UNSUPPORTED.
       FA_PATH_AUTO picks it where it serves; fa_query_support says where. (Since 0.4.) The fp8 (e4m3) forward
       runs on this path only: FA_PATH_AUTO takes it, FA_PATH_SM80 refuses it. (Since 0.5.) */
    FA_PATH_SM90 = 2
} fa_kernel_path_t;

/* Which computation a capability query asks about. */
typedef enum fa_pass {
    /* fa_forward. */
    FA_PASS_FORWARD = 0,
    /* The backward pass (dQ, dK, dV). */
    FA_PASS_BACKWARD = 1,
    /* Decoding over a KV cache. */
    FA_PASS_DECODE = 2
} fa_pass_t;

/* Severity of a log message. */
typedef enum fa_log_level {
    FA_LOG_DEBUG = 0,
    FA_LOG_INFO = 1,
    FA_LOG_WARNING = 2,
    FA_LOG_ERROR = 3
} fa_log_level_t;

/* A strided view of device memory. The library never owns or frees data. */
typedef struct fa_tensor {
    /* Device pointer to element [0, 0, ...]; must be 16-byte aligned. */
    void* data;
    /* Element type (an fa_dtype_t value). */
    int32_t dtype;
    /* Number of dimensions used in shape and strides (1..FA_MAX_RANK). */
    int32_t rank;
    /* Extent of each dimension. */
    int64_t shape[FA_MAX_RANK];
    /* Distance, in elements, between neighbours along each dimension. */
    int64_t strides[FA_MAX_RANK];
} fa_tensor_t;

/* Arguments of fa_forward. Fill with fa_forward_params_init, then set the fields you need. */
typedef struct fa_forward_params {
    /* sizeof(fa_forward_params_t) as the caller compiled it; set by fa_forward_params_init. The library
       reads only the fields that fit in it, so older callers get the defaults for newer fields. */
    uint32_t struct_size;
    /* Reserved; must be 0. */
    uint32_t reserved0;
    /* Queries [batch, seqlen_q, heads_q, head_dim], fp16, bf16 or fp8 (FA_DTYPE_FLOAT8_E4M3: sm90 path only; the
       head dim is then a multiple of 16 and the strides other than the last multiples of 16 elements). */
    fa_tensor_t q;
    /* Keys [batch, seqlen_k, heads_kv, head_dim], same dtype as q; heads_kv must divide heads_q. */
    fa_tensor_t k;
    /* Values [batch, seqlen_k, heads_kv, head_dim_v], same dtype as q. head_dim_v is head_dim, or (since 0.10) the
       pairs (head_dim, head_dim_v) = (192, 128) and (64, 512) on the sm80 path (fp16, bf16), as FlashAttention-3
       serves them (fa_backward: (192, 128)), and both on the sm90 forward too and (192, 128) on the sm90 backward
       (without dropout); any other pair is FA_STATUS_UNSUPPORTED. */
    fa_tensor_t v;
    /* Output [batch, seqlen_q, heads_q, head_dim_v] (v's head dim), same dtype as q, but bf16 when q is fp8; written. Must not
       overlap q, k, v or the descales. */
    fa_tensor_t out;
    /* Optional log-sum-exp [batch, heads_q, seqlen_q], fp32 (natural log of the softmax denominator,
       scale included); written when data is not NULL. Rows that see no key get +infinity (the sink's value when
       sinks are given). */
    fa_tensor_t lse;
    /* Multiplier of q.k before the softmax; 0 means 1/sqrt(head_dim). */
    float softmax_scale;
    /* 1: causal mask; 0: none. */
    int32_t causal;
    /* An fa_causal_alignment_t value; used when causal is 1. */
    int32_t causal_alignment;
    /* An fa_kernel_path_t value. */
    int32_t kernel_path;
    /* Sliding window, in keys, on each side of the diagonal that causal_alignment places: query i sees
       key j iff i + off - window_left <= j <= i + off + window_right, where off is seqlen_k - seqlen_q
       (bottom-right) or 0 (top-left). -1: unbounded on that side. causal = 1 caps window_right at 0. */
    int32_t window_left;
    /* See window_left. */
    int32_t window_right;
    /* > 0: each scaled score s becomes softcap * tanh(s / softcap) before masks and softmax; 0: off. */
    float softcap;
    /* Reserved; must be 0. */
    int32_t reserved1;
    /* Variable-length batch when not NULL: device int32 [varlen_batch + 1], prefix sums of the query
       lengths (cu_seqlens_q[0] = 0). q and out are then rank 3, [total_q, heads_q, head_dim]; lse is
       [heads_q, total_q]. Sequence b spans rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] - 1. */
    const int32_t* cu_seqlens_q;
    /* Likewise for the keys: k and v are [total_k, heads_kv, head_dim]. Set together with cu_seqlens_q. */
    const int32_t* cu_seqlens_k;
    /* Optional host copies of cu_seqlens_q / cu_seqlens_k with the same values. When given, the library
       checks them before launching (start at 0, never decrease, end within the tensors, no length above
       max_seqlen). When not given the device arrays are trusted; a wrong array then yields wrong values
       for the sequences it describes, but every read and write stays inside the tensors. */
    const int32_t* cu_seqlens_q_host;
    /* See cu_seqlens_q_host. */
    const int32_t* cu_seqlens_k_host;
    /* Number of sequences of a variable-length batch. */
    int32_t varlen_batch;
    /* Longest query sequence of a variable-length batch (sizes the launch; longer ones are cut). */
    int32_t max_seqlen_q;
    /* Longest key sequence of a variable-length batch. */
    int32_t max_seqlen_k;
    /* Reserved; must be 0. */
    int32_t reserved2;
    /* fp8 only (q, k and v FA_DTYPE_FLOAT8_E4M3); data must be NULL otherwise. Optional factors that scale the fp8
       values back, as FlashAttention-3 takes them: fp32 device tensors of rank 2, [batch, heads_kv]
       ([varlen_batch, heads_kv] for a variable-length batch), one factor per (sequence, KV head), even for q.
       Strides in elements, >= 0: 0 broadcasts, so strides {0, 0} give one factor for the whole tensor. data NULL
       means 1.0. The values attended are q[b, i, h, :] * q_descale[b, h / (heads_q / heads_kv)],
       k[b, j, hk, :] * k_descale[b, hk] and v[b, j, hk, :] * v_descale[b, hk]; lse is that of these values.
       (Since 0.5: an older caller's smaller struct gets data NULL.) */
    fa_tensor_t q_descale;
    /* See q_descale. */
    fa_tensor_t k_descale;
    /* See q_descale. */
    fa_tensor_t v_descale;
    /* Optional learnable attention sinks (as FlashAttention-4's learnable_sink, gpt-oss's sinks, ONNX Runtime's
       head_sink): an fp32 device tensor of rank 1, [heads_q], one logit per query head (stride in elements, >= 1;
       4-byte aligned). The sink sigma_h joins the softmax denominator only, with no value row: out_i =
       sum_j e^(x_ij) v_j / (e^(sigma_h) + sum_j e^(x_ij)) and lse_i = log(e^(sigma_h) + sum_j e^(x_ij)), where
       x_ij is the final logit (scaled, softcapped, masked). sigma is in those final-logit units: not multiplied by
       softmax_scale, not capped, present whatever the mask or window. A row that sees no key gets out 0 and lse
       sigma_h (instead of +infinity). A sink of -infinity is no sink. data NULL: no sinks. Every path and dtype
       of the forward serves it (fp8 too: sigma is then in the units of the descaled logits).
       (Since 0.7: an older caller's smaller struct gets data NULL.) */
    fa_tensor_t sinks;
    /* Optional ALiBi slopes (FlashAttention-2's alibi_slopes): an fp32 device tensor, rank 1 [heads_q] (one slope
       per query head, every sequence) or rank 2 [batch, heads_q] (per sequence and query head; with a
       variable-length batch batch is varlen_batch); strides in elements, >= 1; 4-byte aligned. Adds to the final
       logit x_ij (after scale and softcap: the bias is not multiplied by softmax_scale and not capped) the bias
         -slope * |i + sk - sq - j|   (not causal, sliding windows included; sk, sq: the sequence's lengths), or
         +slope * j                   (causal without a left window: window (-1, 0) after the causal fold),
       i and j counted within the sequence. The causal form is FlashAttention-2's: on the visible keys it differs
       from the first by the row constant slope * (i + sk - sq), so out is the same but lse is larger by that
       constant. With FA_CAUSAL_TOP_LEFT, sk - sq is replaced by 0 (the offset of the mask's diagonal). A
       positive slope decays with distance; masked keys stay hidden. With learnable sinks the causal form is kept
       (no library defines ALiBi with sinks): the sink's logit then competes with +slope * j, which is the distance
       form with the sink lowered by slope * (i + sk - sq) on row i, so out differs from the distance form's on
       later rows; give a window (e.g. a left side of sk - 1) to get the distance form. data NULL: no ALiBi.
       (Since 0.8: an older caller's smaller struct gets data NULL.) */
    fa_tensor_t alibi_slopes;
    /* ---- Dropout (since 0.9; a caller compiled against 0.8 passes a smaller struct_size and gets none).
       FlashAttention-2's dropout_p: each element P_ij of the softmax (P computed before dropout, rounded to the
       dtype of q) is kept with its random bit Z_ij or set to 0, and out_i = (1 / (1 - p)) * sum_j Z_ij P_ij v_j;
       the softmax denominator and lse are those of the undropped P (lse is unchanged by dropout).
       The mask is FlashAttention-2's exactly (so a call reproduces flash-attn's mask for the same seed and
       offset): one random byte u_ij per element from Philox4x32 with 7 rounds, key = seed, counter =
       (lo32(o), hi32(o), i / 16, j / 32) with o = offset + (b * heads_q + h) * 32 + 4 * (i % 8) + (j % 8) / 2,
       byte 8 * (nt / 2) + 4 * (nt % 2) + 2 * ((i % 16) / 8) + (j % 2) of its 16 output bytes (nt = (j % 32) / 8),
       i and j counted within the sequence (b is the sequence's index in a variable-length batch); kept iff
       u_ij <= floor(float(1 - p) * 255), so the true keep rate is (that + 1) / 256, not exactly 1 - p.
       A call consumes heads_q * batch * 32 offsets (varlen: varlen_batch): advance the offset by at least that
       between calls that must draw different masks (PyTorch's generator rounds it up to a multiple of 4).
       Served by the sm80 kernels on every GPU and, in a build with sm_90a code, by the sm90 ones on compute
       capability 9.0, which FA_PATH_AUTO takes there (FlashAttention-3 has no dropout); fp8, decode and the sm90 path's V head dim pairs are UNSUPPORTED.
       (A build with FA_SM90_FWD_DROPOUT=0 or FA_SM90_BWD_DROPOUT=0 has no sm90 dropout kernels for that pass, which
       fa_query_support and the kernel list then report.) Softcap is served with it (FlashAttention-2 refuses the pair; the
       order of operations is the same). */
    /* Drop probability, in [0, 1); 0 (default): no dropout; the seed and offset fields below are then ignored, and
       dropout_rng_state and dropout_mask must be unset (there is nothing to write). */
    float dropout_p;
    /* Reserved; must be 0. */
    int32_t reserved3;
    /* The Philox key, when dropout_seed_device is NULL. */
    uint64_t dropout_seed;
    /* The Philox base offset is dropout_offset plus *dropout_offset_device when that is given (PyTorch's
       offset_intragraph added to the graph's offset), else dropout_offset alone. */
    uint64_t dropout_offset;
    /* Optional device pointer to the seed (uint64), read by the kernels when they run, instead of dropout_seed.
       With dropout_offset_device this lets a captured CUDA graph draw a new mask on each replay: the caller
       advances the device offset between replays (as PyTorch's philox_cuda_state under capture). */
    const uint64_t* dropout_seed_device;
    /* Optional device pointer to a base offset (uint64), read by the kernels when they run; added to
       dropout_offset. */
    const uint64_t* dropout_offset_device;
    /* Optional device uint64[2], 8-byte aligned, written with the (seed, offset) the call used (FlashAttention-2's
       rng_state): pass it as the backward's dropout_seed_device and dropout_offset_device (with the backward's
       dropout_offset 0) and the backward regenerates the same mask, also under graph replay. NULL: not written. */
    uint64_t* dropout_rng_state;
    /* Optional keep mask, written for tests and debugging (data NULL: not written): FA_DTYPE_UINT8, rank 4
       [batch, heads_q, seqlen_q, seqlen_k] ([varlen_batch, heads_q, max_seqlen_q, max_seqlen_k] for a
       variable-length batch, row i and key j of sequence b at [b, h, i, j]); strides in elements, the last 1.
       Element [b, h, i, j] is 1 if Z_ij keeps P_ij, 0 if it drops it, for every key j visible to row i (causal
       mask, window); entries of hidden keys and past a sequence's lengths are unspecified (the kernels may leave
       them as they were). Only with dropout_p > 0 (FlashAttention-2 has S_dmask only with dropout). Must not
       overlap any other tensor. */
    fa_tensor_t dropout_mask;
    /* ---- Paged K/V (since 0.11; a caller compiled against 0.10 passes a smaller struct_size and gets none).
       FlashAttention-2's block_table of flash_attn_varlen_func (FlashAttention-3's page_table): the keys and values
       of a variable-length batch live in a pool of fixed-size blocks, as a paged KV cache (chunked prefill over the
       cache, prefix sharing). Only with a variable-length batch (cu_seqlens_q set). k and v are then rank 4,
       [num_blocks, block_size, heads_kv, head_dim] ([..., head_dim_v] for v), the same num_blocks and block_size;
       key j of sequence b (j counted within the sequence, 0 .. cu_seqlens_k[b + 1] - cu_seqlens_k[b] - 1) is row
       j % block_size of block block_table[b, j / block_size]. cu_seqlens_k keeps giving the key lengths (prefix sums;
       its values index no tensor, so cu_seqlens_k_host is checked for order and lengths only) and max_seqlen_k may
       not exceed the table's capacity, max_blocks_per_seq * block_size. Every mask, window and option (but dropout)
       applies as to contiguous keys. block_size is served for multiples of 128 (FlashAttention-2 asks for multiples of
       256); other sizes are FA_STATUS_UNSUPPORTED (fa_decode takes powers of two from 16). Served by both paths for
       fp16 and bf16 without dropout (fp8, dropout_p > 0: UNSUPPORTED); fa_backward has no paged K/V. Entries past a
       sequence's last block are never read; a row of a sequence's last block past its length is never used (it may hold
       anything, NaN included). An entry outside [0, num_blocks) of a page the kernels read (one with a key some query
       row sees) is clamped by the kernels (no access leaves k or v) and reported: the context returns
       FA_STATUS_DEVICE_CHECK_FAILED naming block_table from fa_context_check or the next call. */
    /* Device int32 [varlen_batch, max_blocks_per_seq] (rank 2, any strides >= 1, 4-byte aligned), the block of each
       page of each sequence. data NULL: k and v are packed as described at cu_seqlens_k. Must not overlap out or
       lse. */
    fa_tensor_t block_table;
} fa_forward_params_t;

/* Arguments of fa_backward. Fill with fa_backward_params_init, then set the fields you need. The options
   (scale, causal, window, softcap, varlen) must be those of the forward call that produced out and lse. */
typedef struct fa_backward_params {
    /* sizeof(fa_backward_params_t) as the caller compiled it; set by fa_backward_params_init. */
    uint32_t struct_size;
    /* Reserved; must be 0. */
    uint32_t reserved0;
    /* Queries of the forward call [batch, seqlen_q, heads_q, head_dim], fp16 or bf16 (the fp8 forward has no
       backward, as in FlashAttention-3: FA_STATUS_UNSUPPORTED). */
    fa_tensor_t q;
    /* Keys of the forward call [batch, seqlen_k, heads_kv, head_dim], same dtype as q. */
    fa_tensor_t k;
    /* Values of the forward call [batch, seqlen_k, heads_kv, head_dim_v], same dtype as q (head_dim_v: head_dim, or
       since 0.10 128 with a head_dim of 192, as FlashAttention-3's backward serves). */
    fa_tensor_t v;
    /* Output of the forward call [batch, seqlen_q, heads_q, head_dim_v], same dtype as q. */
    fa_tensor_t out;
    /* Gradient of the loss with respect to out, shaped like out, same dtype. */
    fa_tensor_t dout;
    /* Log-sum-exp the forward call wrote [batch, heads_q, seqlen_q] ([heads_q, total_q] varlen), fp32. Required. */
    fa_tensor_t lse;
    /* Gradient of q, shaped like q, same dtype; written. */
    fa_tensor_t dq;
    /* Gradient of k, shaped like k, same dtype; written (summed over the query heads of each group). */
    fa_tensor_t dk;
    /* Gradient of v, shaped like v, same dtype; written (summed over the query heads of each group). */
    fa_tensor_t dv;
    /* As in fa_forward_params_t. */
    float softmax_scale;
    /* As in fa_forward_params_t. */
    int32_t causal;
    /* As in fa_forward_params_t. */
    int32_t causal_alignment;
    /* As in fa_forward_params_t (FA_PATH_SM90 where that path serves the backward). */
    int32_t kernel_path;
    /* As in fa_forward_params_t. */
    int32_t window_left;
    /* As in fa_forward_params_t. */
    int32_t window_right;
    /* As in fa_forward_params_t. */
    float softcap;
    /* 1: dq, dk and dv are bitwise identical run after run for the same inputs (dq is accumulated in a fixed
       order; somewhat slower). 0 (default): dq is accumulated with atomic adds, whose order varies. */
    int32_t deterministic;
    /* As in fa_forward_params_t (variable-length batch). */
    const int32_t* cu_seqlens_q;
    /* As in fa_forward_params_t. */
    const int32_t* cu_seqlens_k;
    /* As in fa_forward_params_t. */
    const int32_t* cu_seqlens_q_host;
    /* As in fa_forward_params_t. */
    const int32_t* cu_seqlens_k_host;
    /* As in fa_forward_params_t. */
    int32_t varlen_batch;
    /* As in fa_forward_params_t. */
    int32_t max_seqlen_q;
    /* As in fa_forward_params_t. */
    int32_t max_seqlen_k;
    /* Reserved; must be 0. */
    int32_t reserved1;
    /* Scratch device memory of at least fa_backward_workspace_size bytes, 256-byte aligned, used only during
       the call (stream-ordered; two calls in flight at once must not share it: in deterministic mode its
       counters order the dQ adds, and a shared one can stall the GPU). NULL: the library allocates and frees
       it on the stream itself. */
    void* workspace;
    /* Bytes at workspace (ignored when workspace is NULL). */
    size_t workspace_size;
    /* The sinks of the forward call (see fa_forward_params_t; data NULL: none). dq, dk and dv need no change with
       them: the forward's lse already holds each sink. (Since 0.7: an older caller's smaller struct gets data
       NULL.) */
    fa_tensor_t sinks;
    /* Optional gradient of the sinks, fp32 [heads_q] (stride >= 1, 4-byte aligned); written (not accumulated)
       when data is not NULL, which needs sinks: dsinks[h] = -sum over sequences b and rows i of
       e^(sinks[h] - lse[b, h, i]) * rowsum(dout * out)[b, h, i]. The sum runs in a fixed order, so it is
       bitwise identical run after run whatever deterministic says. (Since 0.7.) */
    fa_tensor_t dsinks;
    /* The ALiBi slopes of the forward call (see fa_forward_params_t; data NULL: none). The backward recomputes the
       same bias; the slopes get no gradient. (Since 0.8: an older caller's smaller struct gets data NULL.) */
    fa_tensor_t alibi_slopes;
    /* ---- Dropout (since 0.9; a 0.8-sized struct gets dropout_p 0). The forward call's dropout: the same p, seed
       and offset (see fa_forward_params_t), from which the backward regenerates the same keep mask Z. As
       FlashAttention-2: with P = exp(logit - lse) (undropped), dv = (1 / (1 - p)) (Z o P)^T dout,
       dP = (1 / (1 - p)) Z o (dout v^T), dS = P o (dP - D) with D_i = dout_i . out_i (so a dropped element gets
       dS = -P D), and no gradient for p. Served where the forward's is (the sm80 path, and in a build with sm_90a
       code the sm90 path on compute capability 9.0). */
    /* As in fa_forward_params_t. */
    float dropout_p;
    /* Reserved; must be 0. */
    int32_t reserved2;
    /* As in fa_forward_params_t. */
    uint64_t dropout_seed;
    /* As in fa_forward_params_t (0 when the offset comes from the forward's dropout_rng_state). */
    uint64_t dropout_offset;
    /* As in fa_forward_params_t; the forward's dropout_rng_state (element 0) replays its seed. */
    const uint64_t* dropout_seed_device;
    /* As in fa_forward_params_t; the forward's dropout_rng_state + 1 replays its offset. */
    const uint64_t* dropout_offset_device;
} fa_backward_params_t;

/* Arguments of fa_decode. Fill with fa_decode_params_init, then set the fields you need.
   seqlen_q (q.shape[1]) new queries per sequence attend over its cached keys; when k_new/v_new are given,
   their seqlen_knew (k_new.shape[1], independent of seqlen_q since 0.7: more or fewer) keys are first written
   into the cache at positions cache_seqlens[b] .. cache_seqlens[b] + seqlen_knew - 1, then attended too.
   Sequence b reads and appends cache row r_b = cache_batch_idx[b] (b without cache_batch_idx); its valid keys
   are positions lp_b .. total_b - 1, where lp_b = cache_leftpad[b] (0 without cache_leftpad) and
   total_b = cache_seqlens[b] + seqlen_knew (seqlen_knew = 0 without an append). Positions are absolute (a left
   pad is counted in cache_seqlens). The effective key length is sk_b = total_b - lp_b, keys numbered from lp_b;
   the causal mask and window are placed bottom-right over it, so query i sees, when causal, positions
   lp_b .. total_b - seqlen_q + i (a query with no such position gets output 0 and log-sum-exp +inf).
   cache_batch_idx, cache_leftpad, seqlen_knew != seqlen_q, rotary embedding (since 0.8) and per-sequence counts
   (cu_seqlens_q / cu_seqlens_k_new, since 0.12: seqlen_q and seqlen_knew are then sequence b's own) are served by
   every decode kernel, so fa_query_support has no field for them. */
typedef struct fa_decode_params {
    /* sizeof(fa_decode_params_t) as the caller compiled it; set by fa_decode_params_init. */
    uint32_t struct_size;
    /* Reserved; must be 0. */
    uint32_t reserved0;
    /* New queries [batch, seqlen_q, heads_q, head_dim] (packed [total_q, heads_q, head_dim] with cu_seqlens_q),
       fp16 or bf16 (an fp8 query is FA_STATUS_UNSUPPORTED; an fp8 cache is served since 0.13, see k_descale). */
    fa_tensor_t q;
    /* Key cache, same dtype as q or FA_DTYPE_FLOAT8_E4M3 (since 0.13, with k_descale/v_descale): contiguous [batch, capacity, heads_kv, head_dim] when block_table.data is
       NULL, else paged [num_blocks, block_size, heads_kv, head_dim] with block_size a power of two from 16
       up (16, 32, 64, 128, 256, ...). Written where new keys are appended. */
    fa_tensor_t k_cache;
    /* Value cache, shaped like k_cache. */
    fa_tensor_t v_cache;
    /* Optional new keys [batch, seqlen_knew, heads_kv, head_dim] (packed [total_k_new, heads_kv, head_dim] with
       cu_seqlens_k_new; data NULL: append nothing); seqlen_knew may differ from q's seqlen_q (since 0.7; 0.6
       required them equal). */
    fa_tensor_t k_new;
    /* New values, shaped like k_new; given exactly when k_new is. */
    fa_tensor_t v_new;
    /* Output shaped like q, same dtype as q; written. */
    fa_tensor_t out;
    /* Optional log-sum-exp [batch, heads_q, seqlen_q] ([heads_q, total_q] with cu_seqlens_q), fp32; written when
       data is not NULL. */
    fa_tensor_t lse;
    /* Tokens already in each sequence's cache (absolute: a left pad counts), device int32 [batch] (rank 1).
       Updated only with advance_cache_seqlens. */
    fa_tensor_t cache_seqlens;
    /* Paged cache: device int32 [batch, max_blocks_per_seq] (rank 2), the physical block of each page
       ([pool size, max_blocks_per_seq] with cache_batch_idx). data NULL: the cache is contiguous. Entries past
       a sequence's last page, and before the page of its left pad, are never read. */
    fa_tensor_t block_table;
    /* As in fa_forward_params_t. */
    float softmax_scale;
    /* 1: causal over the new tokens (bottom-right); 0: none. */
    int32_t causal;
    /* As in fa_forward_params_t (bottom-right placement). */
    int32_t window_left;
    /* As in fa_forward_params_t. */
    int32_t window_right;
    /* As in fa_forward_params_t. */
    float softcap;
    /* An fa_kernel_path_t value. */
    int32_t kernel_path;
    /* Number of key splits per (sequence, head), 1..FA_DECODE_MAX_SPLITS; 0: chosen from the batch, heads,
       SM count and the longest sequence (from cache_seqlens_host when given, else the cache capacity). */
    int32_t num_splits;
    /* 1: after attending, the call adds seqlen_knew to cache_seqlens[b] on the device (stream-ordered, after the
       kernels that read it), so a generation loop needs no host copy per step and can be captured into a CUDA
       graph; needs k_new/v_new. 0: cache_seqlens is only read. */
    int32_t advance_cache_seqlens;
    /* Optional host copy of cache_seqlens; when given the library checks that every sequence (with its new
       tokens) fits its capacity. When not given the kernels clamp a device length that does not fit (and a
       block_table entry outside the cache), so that no access leaves the cache, and report it: the context
       then returns FA_STATUS_DEVICE_CHECK_FAILED naming cache_seqlens (or block_table) from fa_context_check
       or the next call. */
    const int32_t* cache_seqlens_host;
    /* Scratch device memory of at least fa_decode_workspace_size bytes (0 when the call runs one split),
       256-byte aligned, used only during the call. NULL: the library allocates and frees it on the stream. */
    void* workspace;
    /* Bytes at workspace (ignored when workspace is NULL). */
    size_t workspace_size;
    /* Since 0.7 (a caller compiled against 0.6 passes a smaller struct_size and gets none of the fields below).
       Optional device int32 [batch] (rank 1), flash-attn's cache_batch_idx: sequence b reads and appends cache
       row cache_batch_idx[b] (continuous batching over a pool of rows). Contiguous cache: a row of k_cache,
       whose shape[0] is then the pool size (any size from 1, not tied to batch). Paged cache: a row of
       block_table (FlashAttention-3's page_table[cache_batch_idx]), whose shape[0] is then the pool size.
       cache_seqlens, cache_leftpad, q, k_new, out and lse stay indexed by b. Rows may repeat; when two sequences
       append into one row it is unspecified which write wins. data NULL: sequence b uses row b. */
    fa_tensor_t cache_batch_idx;
    /* Since 0.7. Optional device int32 [batch] (rank 1), flash-attn's cache_leftpad: the first valid position
       of each sequence's cache (0 .. cache_seqlens[b] + seqlen_knew); positions before it are never read
       (their block_table entries neither). Allowed with a paged cache (as FlashAttention-3; FlashAttention-2
       refuses the pair). data NULL: 0 for every sequence. */
    fa_tensor_t cache_leftpad;
    /* Since 0.7. Optional host copy of cache_batch_idx (batch entries); when given every entry is checked to lie
       in [0, pool size) before anything is launched. Without it the kernels clamp an entry outside the pool (so
       no access leaves the cache) and report it: FA_STATUS_DEVICE_CHECK_FAILED naming cache_batch_idx from
       fa_context_check or the next call. Only with cache_batch_idx.data. */
    const int32_t* cache_batch_idx_host;
    /* Since 0.7. Optional host copy of cache_leftpad (batch entries); each must be 0 or more and at most the
       capacity, and, when cache_seqlens_host is given too, at most cache_seqlens_host[b] + the sequence's appended
       count (seqlen_knew, or its cu_seqlens_k_new count when the host knows it); refused
       before anything is launched otherwise. Without it the kernels clamp a pad outside 0 .. total_b and report
       it (FA_STATUS_DEVICE_CHECK_FAILED naming cache_leftpad). Only with cache_leftpad.data. */
    const int32_t* cache_leftpad_host;
    /* Since 0.8. Optional ALiBi slopes, fp32 [heads_q] or [batch, heads_q] (see fa_forward_params_t). Distances
       count keys from the left pad: sk = cache_seqlens[b] + seqlen_knew - cache_leftpad[b], so a new token i sees
       key position p (absolute, p >= pad) with bias -slope * |i + sk - seqlen_q - (p - pad)|, or, causal (as
       FlashAttention-2, which keeps causal on with ALiBi even for seqlen_q = 1), +slope * (p - pad), whose lse
       is larger by slope * (i + sk - seqlen_q). data NULL: no ALiBi. */
    fa_tensor_t alibi_slopes;
    /* ---- Rotary embedding (since 0.8; a caller compiled against 0.7 passes a smaller struct_size and gets none:
       no rotation). flash-attn's rotary_cos / rotary_sin / rotary_interleaved of flash_attn_with_kvcache. Only
       with k_new/v_new (refused otherwise, as flash-attn raises). The first rotary_dim elements of each new key
       and each query head are rotated, the rest pass through; the math is fp32, rounded to the dtype of q:
         interleaved (GPT-J):   (x[2t], x[2t+1])      -> (x[2t] c - x[2t+1] s, x[2t] s + x[2t+1] c)
         half-split (GPT-NeoX): (x[t], x[t + rd/2])   -> (x[t] c - x[t+rd/2] s, x[t] s + x[t+rd/2] c)
       with c = rotary_cos[p, t], s = rotary_sin[p, t], t < rotary_dim / 2, at position p:
       - new key j of sequence b at p = cache_seqlens[b] + j (absolute: a left pad counts); the ROTATED key is
         what is stored in the cache;
       - query i at p = cache_seqlens[b] + i when causal or windowed (window_left or window_right in [0, capacity):
         a side of the cache capacity or more is no window, as flash-attn normalises it), else every query of the
         sequence at p = cache_seqlens[b]. (So with seqlen_knew != seqlen_q the
         rotary positions of the queries are not aligned with the bottom-right causal diagonal, as in flash-attn.)
       Cached keys are read as stored (rotated when they were appended). */
    /* Device table [rotary_seqlen, rotary_dim / 2], dtype of q, contiguous rows, 16-byte aligned: cos of each
       (position, pair). NULL (with rotary_sin NULL): no rotary embedding. */
    const void* rotary_cos;
    /* Device table shaped like rotary_cos: sin of each (position, pair); given exactly when rotary_cos is. */
    const void* rotary_sin;
    /* Rotated elements per head: a multiple of 16, at most the head dim (flash-attn's 2 * rotary_cos.shape[1]).
       Ignored (may be 0) without tables. */
    int32_t rotary_dim;
    /* Rows (positions) of the tables: at least the cache capacity (flash-attn's seqlen_ro >= seqlen_k), and, when
       causal or windowed with seqlen_q > seqlen_knew, at least every query position (checked exactly against
       cache_seqlens_host when it is given, else against the largest position the capacity allows). */
    int32_t rotary_seqlen;
    /* 1: interleaved pairs (2t, 2t+1), GPT-J, flash-attn's default (rotary_interleaved=True), and what
       fa_decode_params_init sets; 0: half-split pairs (t, t + rotary_dim/2), GPT-NeoX / Llama. A struct zeroed
       by the caller instead of fa_decode_params_init gets 0 (half-split): set it explicitly in that case. */
    int32_t rotary_interleaved;
    /* Reserved; must be 0 (keeps the rotary block 8-byte sized). */
    int32_t reserved1;
    /* ---- Per-sequence query and append counts (since 0.12; a caller compiled against 0.11 passes a smaller
       struct_size and gets none: every sequence has q.shape[1] queries and appends k_new.shape[1] keys).
       FlashAttention-3's cu_seqlens_q / cu_seqlens_k_new of flash_attn_with_kvcache: speculative decoding with
       drafts of different lengths, chunked prefill. Sequence b's new keys are appended first; its causal diagonal
       (and window) sits bottom-right over its final length cache_seqlens[b] + added_b, as with equal counts. */
    /* Optional device int32 [batch + 1] (rank 1), prefix sums of each sequence's query count, starting at 0. q and
       out are then rank 3, [total_q, heads_q, head_dim], and lse [heads_q, total_q]; sequence b's queries are rows
       cu_seqlens_q[b] .. cu_seqlens_q[b + 1] - 1 (a count may be 0: nothing is written for it), and batch is
       cu_seqlens_q.shape[0] - 1. Rotary positions of the queries are as documented above, with i counted within the
       sequence. data NULL: q is [batch, seqlen_q, heads_q, head_dim]. */
    fa_tensor_t cu_seqlens_q;
    /* Optional device int32 [batch + 1] (rank 1), prefix sums of each sequence's appended count, starting at 0;
       only with k_new/v_new, which are then rank 3, [total_k_new, heads_kv, head_dim], sequence b appending rows
       cu_seqlens_k_new[b] .. cu_seqlens_k_new[b + 1] - 1 (a count may be 0). advance_cache_seqlens adds each
       sequence's own count. data NULL: every sequence appends k_new.shape[1] keys. */
    fa_tensor_t cu_seqlens_k_new;
    /* Optional host copies of cu_seqlens_q / cu_seqlens_k_new (batch + 1 entries, the same values): checked before
       anything is launched (start at 0, never decrease, end within q's / k_new's rows, each query count at most
       max_seqlen_q, and with cache_seqlens_host each sequence's length with its appended keys within its cache).
       Without them the kernels clamp a malformed array (so that no access leaves the tensors) and report it:
       FA_STATUS_DEVICE_CHECK_FAILED naming cu_seqlens_q / cu_seqlens_k_new from fa_context_check or the next call. */
    const int32_t* cu_seqlens_q_host;
    /* See cu_seqlens_q_host. */
    const int32_t* cu_seqlens_k_new_host;
    /* With cu_seqlens_q: the most queries one sequence has (at least 1 and every count; a larger static bound is
       allowed, it only sizes the grid and the split workspace). Must be 0 without cu_seqlens_q. */
    int32_t max_seqlen_q;
    /* Reserved; must be 0. */
    int32_t reserved2;
    /* ---- FP8 KV cache (since 0.13; a 0.12-sized struct gets none). k_cache and v_cache may both be
       FA_DTYPE_FLOAT8_E4M3 while q, out, k_new, v_new (and the rotary tables) stay fp16 or bf16: the cache then holds
       half the bytes, which is what a decode over a long cache is bound by. The key attended at a cache position is
       float(k_cache[..]) * k_descale[h_kv] (the value: v_descale), so scores are q . k * k_descale * softmax_scale
       and the output is the probabilities times the stored values times v_descale. A key appended by the call is
       first what a cache of q's dtype would store (k_new, rotated when rotary is given, rounded to q's dtype), then
       divided by k_descale[h_kv] in fp32 and rounded to e4m3 (nearest even, saturated to +-448: +-Inf saturate
       too, NaN stays NaN); values the same with v_descale. Served by every decode kernel (head dims, paged or
       contiguous, every decode option); fa_query_support's kv_cache_dtype asks. */
    /* fp32 descale factors of an fp8 cache, device memory, rank 1: [heads_kv] (one per KV head) or [1] (one for the
       whole cache); required with an fp8 cache, data NULL otherwise. Read by the kernels only (a captured graph reads
       what they hold at replay), never by the host; factors are taken as given (0, negative or non-finite ones give
       Inf or NaN, as FlashAttention-3's descales do). */
    fa_tensor_t k_descale;
    /* See k_descale; the factors of v_cache. */
    fa_tensor_t v_descale;
} fa_decode_params_t;

/* A question for fa_query_support: is this kind of call served by this build on this GPU? */
typedef struct fa_support_query {
    /* sizeof(fa_support_query_t) as the caller compiled it. */
    uint32_t struct_size;
    /* An fa_pass_t value. */
    int32_t pass;
    /* major*10+minor of the target GPU, or 0 for any GPU this build serves. */
    int32_t compute_capability;
    /* An fa_dtype_t value of q/k/v. */
    int32_t dtype;
    /* Head dim of q/k/v. */
    int32_t head_dim;
    /* 1 if the call is causal. */
    int32_t causal;
    /* 1 if the call has a sliding window (window_left or window_right >= 0). */
    int32_t window;
    /* 1 if the call uses softcap. */
    int32_t softcap;
    /* 1 if the batch is variable-length. */
    int32_t varlen;
    /* An fa_kernel_path_t value. */
    int32_t kernel_path;
    /* 1 if the call has learnable sinks (fa_forward_params_t.sinks; with FA_PASS_BACKWARD also dsinks). Served by
       the forward and the backward on every path; fa_decode has none. (Since 0.7: a 0.6-sized query gets 0.) */
    int32_t sinks;
    /* 1 if the call has ALiBi slopes (alibi_slopes of fa_forward_params_t, fa_backward_params_t or
       fa_decode_params_t). Served by every pass on every path and dtype (fp8 included). (Since 0.8: a 0.7-sized
       query gets 0.) */
    int32_t alibi;
    /* 1 if the call has dropout (dropout_p > 0 in fa_forward_params_t or fa_backward_params_t). Served by the
       forward and backward of the sm80 path and (a build with sm_90a code, compute capability 9.0) of the sm90 path,
       fp16 and bf16; fp8, decode and the sm90 path's V head dim pairs have none. (Since 0.9: a 0.8-sized query
       gets 0.) */
    int32_t dropout;
    /* Head dim of v and out when it differs from head_dim (0: the same). Served pairs (head_dim, head_dim_v): (192, 128)
       and (64, 512) by the forward of the sm80 path (fp16, bf16) with every forward option and by the sm90 forward
       (every option but dropout), (192, 128) by the backward of both paths too (as FlashAttention-3; sm90 without
       dropout); decode and fp8 have none.
       (Since 0.10: a 0.9-sized query gets 0.) */
    int32_t head_dim_v;
    /* 1 if the keys and values are paged: the forward's block_table (a variable-length batch; varlen must be 1 too),
       or fa_decode's. Served by the forward of both paths for fp16 and bf16, and by decode; the backward and fp8
       have none. (Since 0.11: a 0.10-sized query gets 0.) */
    int32_t paged_kv;
    /* FA_PASS_DECODE: an fa_dtype_t value of k_cache/v_cache when it differs from dtype (FA_DTYPE_FLOAT8_E4M3: an
       fp8 KV cache with fp16 or bf16 queries, served by every decode kernel); 0: the same as dtype. Other passes
       have none. (Since 0.13: a 0.12-sized query gets 0.) */
    int32_t kv_cache_dtype;
} fa_support_query_t;

/* Properties of one CUDA device. */
typedef struct fa_device_properties {
    /* sizeof(fa_device_properties_t) as the caller compiled it; set it before the call. */
    uint32_t struct_size;
    /* Compute capability, major. */
    int32_t major;
    /* Compute capability, minor. */
    int32_t minor;
    /* Number of streaming multiprocessors. */
    int32_t multiprocessor_count;
    /* Global memory in bytes. */
    int64_t total_memory;
    /* Largest shared memory a block may opt in to, in bytes. */
    int64_t shared_memory_per_block_optin;
    /* Name, NUL-terminated. */
    char name[FA_DEVICE_NAME_SIZE];
} fa_device_properties_t;

/* Opaque per-device state: device ordinal, cached properties. */
typedef struct fa_context* fa_context_t;

/* Receives library log messages. message is valid only during the call. May be called from any
   thread that calls into the library. */
typedef void (*fa_log_callback_t)(int32_t level, const char* message, void* user_data);

/* ---- errors and versions ---------------------------------------------------------------------- */

/* Constant name of a status ("FA_STATUS_INVALID_ARGUMENT"); never NULL, never freed. */
FA_API const char* fa_status_string(fa_status_t status);

/* The message of the last failed call on this thread, or "" if it succeeded. Owned by the library;
   valid until the next fa_* call on the same thread. */
FA_API const char* fa_last_error_message(void);

/* Version of the loaded binary as FA_VERSION_CODE computes it. */
FA_API int32_t fa_version(void);

/* Routes library log messages to callback (NULL turns logging off). Process-wide. */
FA_API fa_status_t fa_set_log_callback(fa_log_callback_t callback, void* user_data);

/* ---- devices ---------------------------------------------------------------------------------- */

/* Number of CUDA devices. Returns FA_STATUS_NO_DEVICE (and count 0) where there is no driver or GPU. */
FA_API fa_status_t fa_device_count(int32_t* count);

/* Fills *props (whose struct_size the caller sets) for device ordinal `device`. */
FA_API fa_status_t fa_device_get_properties(int32_t device, fa_device_properties_t* props);

/* Waits for all work on `device`. */
FA_API fa_status_t fa_device_synchronize(int32_t device);

/* ---- memory ----------------------------------------------------------------------------------- */

/* Allocates `bytes` of device memory on `device` (256-byte aligned). Free with fa_memory_free. */
FA_API fa_status_t fa_memory_alloc(int32_t device, size_t bytes, void** ptr);

/* Frees memory from fa_memory_alloc. NULL is a no-op. */
FA_API fa_status_t fa_memory_free(int32_t device, void* ptr);

/* Allocates `bytes` on the device of `stream`, ordered on `stream`. Free with fa_memory_free_async. */
FA_API fa_status_t fa_memory_alloc_async(size_t bytes, void* stream, void** ptr);

/* Frees memory from fa_memory_alloc_async once prior work on `stream` is done. */
FA_API fa_status_t fa_memory_free_async(void* ptr, void* stream);

/* Copies `bytes` between any host or device pointers and waits for the copy. */
FA_API fa_status_t fa_memcpy(void* dst, const void* src, size_t bytes);

/* Copies `bytes` between any host or device pointers, ordered on `stream`. Host memory must stay
   valid (and, for true asynchrony, be pinned) until the stream reaches the copy. */
FA_API fa_status_t fa_memcpy_async(void* dst, const void* src, size_t bytes, void* stream);

/* Sets `bytes` bytes of device memory to the byte `value`, ordered on `stream`. */
FA_API fa_status_t fa_memset_async(void* ptr, int32_t value, size_t bytes, void* stream);

/* ---- streams and events ----------------------------------------------------------------------- */

/* Creates a non-blocking stream on `device`. Destroy with fa_stream_destroy. */
FA_API fa_status_t fa_stream_create(int32_t device, void** stream);

/* Destroys a stream from fa_stream_create. NULL is a no-op. */
FA_API fa_status_t fa_stream_destroy(void* stream);

/* Waits until all work on `stream` is done. */
FA_API fa_status_t fa_stream_synchronize(void* stream);

/* Creates a timing event on `device`. Destroy with fa_event_destroy. */
FA_API fa_status_t fa_event_create(int32_t device, void** event);

/* Destroys an event from fa_event_create. NULL is a no-op. */
FA_API fa_status_t fa_event_destroy(void* event);

/* Records `event` on `stream`. */
FA_API fa_status_t fa_event_record(void* event, void* stream);

/* Waits for `event`. */
FA_API fa_status_t fa_event_synchronize(void* event);

/* Milliseconds between two recorded, completed events. */
FA_API fa_status_t fa_event_elapsed_ms(void* start, void* end, float* milliseconds);

/* Starts capturing the work queued on `stream` into a CUDA graph (thread-local capture mode). */
FA_API fa_status_t fa_stream_begin_capture(void* stream);

/* Ends the capture on `stream` and instantiates it: *graph receives an executable graph to launch with
   fa_graph_launch and destroy with fa_graph_destroy. */
FA_API fa_status_t fa_stream_end_capture(void* stream, void** graph);

/* Launches an executable graph from fa_stream_end_capture on `stream`. */
FA_API fa_status_t fa_graph_launch(void* graph, void* stream);

/* Destroys an executable graph. NULL is a no-op. */
FA_API fa_status_t fa_graph_destroy(void* graph);

/* ---- contexts --------------------------------------------------------------------------------- */

/* Creates a context for device ordinal `device`. Destroy with fa_context_destroy. */
FA_API fa_status_t fa_context_create(int32_t device, fa_context_t* context);

/* Destroys a context. NULL is a no-op. Work already launched is not waited for. */
FA_API fa_status_t fa_context_destroy(fa_context_t context);

/* Device ordinal of a context. */
FA_API fa_status_t fa_context_get_device(fa_context_t context, int32_t* device);

/* Reports, and clears, what the GPU found during earlier calls on this context that no check before the launch
   could see: FA_STATUS_SUCCESS, or FA_STATUS_DEVICE_CHECK_FAILED with fa_last_error_message() naming the cause.
   Does not synchronise: it sees the calls that have finished, so call it after waiting for the stream (or the
   graph launch) whose calls it should cover. fa_forward, fa_backward and fa_decode make the same check first, and
   a report goes to whichever call on the context (from any thread) comes first.
   The deterministic backward waits at most FLASH_ATTENTION_DETERMINISTIC_WAIT_MS milliseconds (an environment
   variable read when the context is created; default 10000, 0 waits without a bound) for its turn on dQ. */
FA_API fa_status_t fa_context_check(fa_context_t context);

/* ---- attention -------------------------------------------------------------------------------- */

/* Fills the first struct_size bytes of *params with defaults: struct_size, scale 0 (1/sqrt(d)), not
   causal, bottom-right, auto path, no window (-1, -1), no softcap, fixed-length batch; tensors zeroed (so no
   lse, no fp8 descales and no sinks).
   Pass sizeof(fa_forward_params_t) as the caller compiled it: the library never writes past it, so a
   program built against an older, smaller struct stays safe with a newer library. */
FA_API fa_status_t fa_forward_params_init(fa_forward_params_t* params, size_t struct_size);

/* Checks *params without touching the GPU: shapes, dtypes, strides, alignment, head dim, GQA
   divisibility. compute_capability is major*10+minor of the target GPU (e.g. 90), or 0 for "any GPU
   this build serves". FA_STATUS_SUCCESS means fa_forward would accept the arguments. */
FA_API fa_status_t fa_forward_check(const fa_forward_params_t* params, int32_t compute_capability);

/* Whether this build serves the kind of call *query describes: FA_STATUS_SUCCESS, or
   FA_STATUS_UNSUPPORTED with fa_last_error_message() saying why (FA_STATUS_INVALID_ARGUMENT for a
   malformed query). Needs no GPU. */
FA_API fa_status_t fa_query_support(const fa_support_query_t* query);

/* Number of kernels compiled into this binary. */
FA_API fa_status_t fa_kernel_count(int32_t* count);

/* Name of compiled kernel `index` (0 <= index < count), e.g. "sm80_fwd_bf16_hdim128_local_128x64_4w",
   "sm90_fwd_bf16_hdim128_local_128x128_3wg2s" or "sm90_bwd_bf16_hdim128_64x128_2wg" (the tile's warps or warpgroups
   that compute it; an sm90 backward `_det` kernel adds a warpgroup that orders the dq adds).
   The string is owned by the library and lives as long as the process. */
FA_API fa_status_t fa_kernel_name(int32_t index, const char** name);

/* Scaled dot-product attention forward: out = softmax(scale * q k^T + mask) v, written to params->out
   (and the log-sum-exp to params->lse when given), ordered on `stream`. With fp8 inputs the attention runs on
   the descaled values (see q_descale). Validates everything before
   any CUDA call. Does not synchronise and does not allocate, so it may be captured into a CUDA graph. */
FA_API fa_status_t fa_forward(fa_context_t context, const fa_forward_params_t* params, void* stream);

/* ---- backward --------------------------------------------------------------------------------- */

/* Fills the first struct_size bytes of *params with defaults (as fa_forward_params_init; not deterministic,
   no workspace, no sinks and no dsinks). Pass sizeof(fa_backward_params_t) as the caller compiled it (at least
   version 0.6's size, which ends after workspace_size). */
FA_API fa_status_t fa_backward_params_init(fa_backward_params_t* params, size_t struct_size);

/* Checks *params without touching the GPU (as fa_forward_check). */
FA_API fa_status_t fa_backward_check(const fa_backward_params_t* params, int32_t compute_capability);

/* Bytes of workspace fa_backward needs for *params on the context's device (the workspace fields of *params
   are ignored). Validates *params. */
FA_API fa_status_t fa_backward_workspace_size(fa_context_t context, const fa_backward_params_t* params, size_t* bytes);

/* Gradients of attention: given q, k, v, out, dout and lse of a forward call with the same options, writes
   dq, dk and dv (and dsinks when given), ordered on `stream`. P is recomputed from lse; nothing of size seqlen_q x seqlen_k is stored.
   With a caller workspace nothing is allocated or synchronised, so the call may be captured into a CUDA
   graph; with workspace NULL the library allocates it stream-ordered (capturable where the driver supports
   stream-ordered allocation in graphs). */
FA_API fa_status_t fa_backward(fa_context_t context, const fa_backward_params_t* params, void* stream);

/* ---- decode over a KV cache --------------------------------------------------------------------- */

/* Fills the first struct_size bytes of *params with defaults: scale 0 (1/sqrt(d)), not causal, no window,
   no softcap, automatic split count, no workspace; tensors zeroed (contiguous cache, no append). */
FA_API fa_status_t fa_decode_params_init(fa_decode_params_t* params, size_t struct_size);

/* Checks *params without touching the GPU. */
FA_API fa_status_t fa_decode_check(const fa_decode_params_t* params, int32_t compute_capability);

/* Bytes of workspace fa_decode needs for *params on the context's device (the split partials). Validates
   *params. */
FA_API fa_status_t fa_decode_workspace_size(fa_context_t context, const fa_decode_params_t* params, size_t* bytes);

/* Number of key splits fa_decode would use for *params on the context's device. */
FA_API fa_status_t fa_decode_num_splits(fa_context_t context, const fa_decode_params_t* params, int32_t* num_splits);

/* Attention of new queries over a KV cache (appending k_new/v_new first when given), ordered on `stream`.
   Splits each sequence's keys over several blocks and combines the partial results by their log-sum-exp. */
FA_API fa_status_t fa_decode(fa_context_t context, const fa_decode_params_t* params, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* FLASH_ATTENTION_H */
