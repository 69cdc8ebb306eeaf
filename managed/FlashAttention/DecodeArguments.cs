namespace FlashAttn;

/// <summary>
/// The arguments of a decode call over a KV cache (<see cref="FlashAttention.Decode(in DecodeArguments, AttentionOptions, CudaStream)"/>,
/// <see cref="FlashAttention.CheckDecode(in DecodeArguments, out string, AttentionOptions, int)"/>,
/// <see cref="FlashAttention.GetDecodeWorkspaceSize(in DecodeArguments, AttentionOptions)"/> and
/// <see cref="FlashAttention.GetDecodeSplitCount(in DecodeArguments, AttentionOptions)"/>): the new queries, the
/// cache, the new keys and values to append (or none), the output, and how the call is split and where its scratch lives.
/// </summary>
/// <param name="Q">
/// New queries <c>[batch, seqLenQ, headsQ, headDim]</c>, the cache's dtype (Float16 or BFloat16; either over a
/// Float8E4M3 cache, whose keys and values are then read through their descale factors), last dimension contiguous; headsQ a
/// multiple of the cache's headsKv. <c>batch</c> is the cache's <see cref="KvCache.BatchSize"/>, or the length of
/// <see cref="CacheRows"/> when that is set.
/// </param>
/// <param name="Cache">The KV cache (its lengths say how many tokens each sequence already holds).</param>
/// <param name="KNew">
/// New keys <c>[batch, seqLenKNew, headsKv, headDim]</c>, q's dtype, to append (over an fp8 cache: quantized to e4m3
/// with the key descale factors as they are stored), or null to append nothing. <c>seqLenKNew</c> may
/// differ from q's <c>seqLenQ</c> (more or fewer): the keys are appended first, then the causal diagonal sits
/// bottom-right over each sequence's final length.
/// </param>
/// <param name="VNew">New values shaped like <paramref name="KNew"/>; given exactly when it is.</param>
/// <param name="Output">Written: <c>[batch, seqLenQ, headsQ, headDim]</c>, q's dtype.</param>
/// <param name="LogSumExp">Optional, written: <c>[batch, headsQ, seqLenQ]</c> Float32.</param>
/// <param name="NumSplits">
/// Key splits per (sequence, head): 0 lets the library choose, or 1 .. <see cref="FlashAttention.MaxDecodeSplits"/>.
/// </param>
/// <param name="Workspace">
/// Scratch memory of at least <see cref="FlashAttention.GetDecodeWorkspaceSize(in DecodeArguments, AttentionOptions)"/>
/// bytes, or null to let the library allocate it stream-ordered. Only the run uses it: the check and the queries ignore it.
/// </param>
/// <remarks>
/// A <c>readonly record struct</c> for the reasons given on <see cref="AttentionArguments"/>: a generation loop builds
/// one per token without allocating (<c>with</c> derives the next step's). The call checks q, the cache and the
/// output for null (<see cref="ArgumentNullException"/> named q, cache, output) before anything else.
/// </remarks>
public readonly record struct DecodeArguments(
    DeviceTensor Q,
    KvCache Cache,
    DeviceTensor? KNew,
    DeviceTensor? VNew,
    DeviceTensor Output,
    DeviceTensor? LogSumExp = null,
    int NumSplits = 0,
    DeviceBuffer<byte>? Workspace = null)
{
    /// <summary>Whether the call appends new keys and values to the cache (<see cref="KNew"/> is set).</summary>
    public bool Appends => KNew is not null;

    /// <summary>
    /// The cache rows of this step (flash-attn's <c>cache_batch_idx</c>; continuous batching over the cache as a pool):
    /// sequence <c>b</c> of q reads and appends row <c>CacheRows[b]</c>, with that row's length and left padding, and only
    /// those rows' lengths advance. Distinct rows in <c>0 .. Cache.BatchSize - 1</c>, any order, any count from 1. Null
    /// (the default): every row, in order. The array must not change while a call that uses it runs.
    /// </summary>
    public int[]? CacheRows { get; init; }

    /// <summary>
    /// Optional ALiBi slopes (flash-attn's <c>alibi_slopes</c>), Float32 <c>[headsQ]</c> or <c>[batch, headsQ]</c> (as
    /// <see cref="AttentionArguments.AlibiSlopes"/>). Distances count keys from the row's left padding: with
    /// <c>sk = length + appended - pad</c>, new token <c>i</c> and key position <c>p</c> get <c>-slope · |i + sk - sq - (p - pad)|</c>,
    /// or, causal (FlashAttention-2 keeps the causal form with ALiBi even for one new token), <c>+slope · (p - pad)</c>,
    /// whose log-sum-exp is larger by <c>slope · (i + sk - sq)</c>. Null: no ALiBi (C ABI 0.8).
    /// </summary>
    public DeviceTensor? AlibiSlopes { get; init; }

    /// <summary>
    /// Rotary embedding applied in this call (flash-attn's <c>rotary_cos</c> / <c>rotary_sin</c> /
    /// <c>rotary_interleaved</c>): new keys rotated at their positions before they are stored, queries at theirs. Only
    /// with <see cref="KNew"/>. Null (the default): no rotation. A per-call argument as in flash-attn (not state of the
    /// <see cref="KvCache"/>): it is allowed only in calls that append, and a step derived with <c>with</c> keeps it.
    /// </summary>
    public RotaryEmbedding? Rotary { get; init; }

    /// <summary>
    /// Queries per sequence (FlashAttention-3's <c>cu_seqlens_q</c> of <c>flash_attn_with_kvcache</c>, C ABI 0.12): one
    /// count (0 or more) per sequence of the step; <see cref="Q"/> and <see cref="Output"/> are then packed
    /// <c>[totalQ, headsQ, headDim]</c>, sequence <c>b</c>'s rows following those of the sequences before it (rows past the
    /// counts' sum are neither read nor written), and <see cref="LogSumExp"/> is <c>[headsQ, totalQ]</c>. Each sequence's
    /// causal diagonal sits bottom-right over its own final length. Speculative decoding with drafts of different
    /// lengths, chunked prefill. Null (the default): every sequence has q's <c>seqLenQ</c> queries. The array must not
    /// change while a call that uses it runs.
    /// </summary>
    public int[]? QueryCounts { get; init; }

    /// <summary>
    /// New keys appended per sequence (FlashAttention-3's <c>cu_seqlens_k_new</c>, C ABI 0.12): one count (0 or more) per
    /// sequence of the step; <see cref="KNew"/> and <see cref="VNew"/> are then packed <c>[totalKNew, headsKv, headDim]</c>
    /// (rows past the counts' sum are not read), and each sequence's length advances by its own count. Only with
    /// <see cref="KNew"/>. Null (the default): every sequence appends kNew's <c>seqLenKNew</c> keys.
    /// </summary>
    public int[]? AppendCounts { get; init; }

    /// <summary>
    /// The key descale factors of an fp8 cache for this call (C ABI 0.13's <c>k_descale</c>, FlashAttention-3's
    /// <c>k_descale</c> of <c>flash_attn_with_kvcache</c>): device Float32, rank 1, <c>[headsKv]</c> (one per KV head) or
    /// <c>[1]</c> (one for the whole cache). The key attended at a cache position of KV head <c>h</c> is the stored e4m3
    /// value times factor <c>h</c>; a key the call appends is divided by it in fp32 before it is rounded to e4m3. Null (the
    /// default): the cache's own <see cref="KvCache.KeyDescale"/>. Given exactly when <see cref="ValueDescale"/> is, and
    /// only over a Float8E4M3 cache (refused over a 16-bit one). The kernels read the factors; the host never does.
    /// </summary>
    public DeviceTensor? KeyDescale { get; init; }

    /// <summary>
    /// The value descale factors for this call (<c>v_descale</c>), shaped like <see cref="KeyDescale"/>; null: the
    /// cache's own <see cref="KvCache.ValueDescale"/>.
    /// </summary>
    public DeviceTensor? ValueDescale { get; init; }

    /// <summary>The descale factors this call passes: its own (<see cref="KeyDescale"/>), else the cache's; null for a 16-bit cache.</summary>
    internal (DeviceTensor? Keys, DeviceTensor? Values) Descales =>
        KeyDescale is not null || ValueDescale is not null ? (KeyDescale, ValueDescale) : (Cache.KeyDescale, Cache.ValueDescale);

    /// <summary>The sequences of the step: <see cref="QueryCounts"/>' length, or q's batch.</summary>
    internal long Batch => QueryCounts?.Length ?? Q.Shape[0];

    /// <summary>Keys each sequence of the step appends: <see cref="AppendCounts"/>, or kNew's count for each (0 without).</summary>
    internal int[] AppendedPerSequence() =>
        AppendCounts ?? Enumerable.Repeat(KNew is { } k ? (int)k.Shape[1] : 0, (int)Batch).ToArray();

    /// <summary>Throws <see cref="ArgumentNullException"/> for the first required argument that is null.</summary>
    internal void ThrowIfIncomplete()
    {
        ArgumentNullException.ThrowIfNull(Q, "q");
        ArgumentNullException.ThrowIfNull(Cache, "cache");
        ArgumentNullException.ThrowIfNull(Output, "output");
    }
}
