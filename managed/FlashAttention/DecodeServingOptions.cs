namespace FlashAttn;

/// <summary>
/// The serving options of <c>flash_attn_with_kvcache</c> (issue 15) for the float64 decode reference
/// (<see cref="DecodeReference"/>'s overloads that take one): a query count other than the appended one, a cache
/// batch index and left padding, which the kernels serve since C ABI 0.7 (<see cref="DecodeArguments.CacheRows"/>,
/// <see cref="KvCache.SetLeftPadding"/> and the token count of <see cref="DecodeArguments.KNew"/>), and rotary embedding
/// on append, which they serve since C ABI 0.8 (<see cref="DecodeArguments.Rotary"/>), and an fp8 cache's descale factors
/// and query dtype, which they serve since C ABI 0.13 (<see cref="KvCache.KeyDescale"/>). Semantics: shared/FEATURES.md
/// §4 and §5, and <c>fa_decode_params_t</c> for the fp8 cache.
/// </summary>
public sealed record DecodeServingOptions
{
    /// <summary>No serving option: the public reference's behaviour.</summary>
    public static DecodeServingOptions None { get; } = new();

    /// <summary>
    /// Queries per sequence (<c>sq</c>, 1 or more) when it is not the appended count; null: <c>seqLenNew</c> is both.
    /// When set, <c>seqLenNew</c> counts only the appended tokens: 0 exactly when no new keys are given.
    /// </summary>
    public int? SeqLenQ { get; init; }

    /// <summary>
    /// <c>cache_batch_idx</c>, <c>[batch]</c>: sequence <c>b</c> reads and appends cache row <c>CacheBatchIndex[b]</c>
    /// (contiguous: the row of <c>[cacheRows, capacity, headsKv, headDim]</c>; paged: the block-table row, FA3's
    /// <c>page_table[cache_batch_idx]</c>). Lengths and left pads stay indexed by <c>b</c>. Null: row <c>b</c>.
    /// </summary>
    public int[]? CacheBatchIndex { get; init; }

    /// <summary>
    /// Rows of the contiguous cache (or of the block table) that <see cref="CacheBatchIndex"/> picks from; null means
    /// the batch. Only with <see cref="CacheBatchIndex"/>.
    /// </summary>
    public int? CacheRows { get; init; }

    /// <summary>
    /// <c>cache_leftpad</c>, <c>[batch]</c>: the first valid cache position of each sequence, 0 .. <c>cacheSeqLens[b]</c> plus
    /// the appended count (fa_decode's bound). Null: 0 everywhere.
    /// </summary>
    public int[]? CacheLeftPad { get; init; }

    /// <summary>
    /// <c>alibi_slopes</c>, <c>[headsQ]</c> or <c>[batch, headsQ]</c> (C ABI 0.8, <see cref="DecodeArguments.AlibiSlopes"/>):
    /// FlashAttention-2's bias over each sequence's keys counted from its left pad (<c>sk = total - pad</c>), the causal
    /// form <c>+slope · (p - pad)</c> for a causal call without a left window shorter than the capacity (kept for one
    /// new token), else <c>-slope · |i + sk - sq - (p - pad)|</c>. Null: none.
    /// </summary>
    public double[]? AlibiSlopes { get; init; }

    /// <summary><c>rotary_cos</c>, <c>[seqlenRo, RotaryDim / 2]</c>; given exactly when <see cref="RotarySin"/> is, and only with new keys.</summary>
    public double[]? RotaryCos { get; init; }

    /// <summary><c>rotary_sin</c>, <c>[seqlenRo, RotaryDim / 2]</c>.</summary>
    public double[]? RotarySin { get; init; }

    /// <summary>
    /// Dimensions rotated (even, 2 .. headDim; fa_decode and FA2's kernels need a multiple of 16); the rest pass through.
    /// The tables are read as double: give the values the kernels see (rounded to the cache's dtype) to compare with them.
    /// </summary>
    public int RotaryDim { get; init; }

    /// <summary>
    /// <c>rotary_interleaved</c>: true (the kvcache APIs' default, GPT-J) rotates pairs <c>(2t, 2t+1)</c>; false
    /// (GPT-NeoX, Llama) rotates <c>(t, t + RotaryDim/2)</c>.
    /// </summary>
    public bool RotaryInterleaved { get; init; } = true;

    /// <summary>
    /// Queries per sequence, <c>[batch]</c>, each 0 or more (C ABI 0.12's <c>cu_seqlens_q</c>,
    /// <see cref="DecodeArguments.QueryCounts"/>): q and the output are packed <c>[sum, headsQ, headDim]</c>, sequence
    /// <c>b</c>'s rows after those of the sequences before it, and the log-sum-exp is <c>[headsQ, sum]</c>. Each sequence's
    /// causal diagonal sits bottom-right over its own final length. Null: every sequence has the same count
    /// (<see cref="SeqLenQ"/>, or <c>seqLenNew</c>); <see cref="SeqLenQ"/> must be null when this is set.
    /// </summary>
    public int[]? QueryCounts { get; init; }

    /// <summary>
    /// New keys appended per sequence, <c>[batch]</c>, each 0 or more (C ABI 0.12's <c>cu_seqlens_k_new</c>,
    /// <see cref="DecodeArguments.AppendCounts"/>): kNew and vNew are packed <c>[sum, headsKv, headDim]</c>, and
    /// <c>seqLenNew</c> must be 0. Needs <see cref="SeqLenQ"/> or <see cref="QueryCounts"/> (the queries' count is then
    /// not the appended one). Null: every sequence appends <c>seqLenNew</c>.
    /// </summary>
    public int[]? AppendCounts { get; init; }

    /// <summary>
    /// An fp8 cache's key descale factors (C ABI 0.13's <c>k_descale</c>), <c>[headsKv]</c> (one per KV head) or <c>[1]</c>
    /// (one for the whole cache): the key attended at a position of KV head <c>h</c> is the stored e4m3 value times
    /// factor <c>h</c> (or 0), and an appended key is divided by it before it is quantized. Required by the overloads that
    /// take Float8E4M3 caches; refused by the others. fp32, as the kernels read them.
    /// </summary>
    public float[]? KeyDescale { get; init; }

    /// <summary>An fp8 cache's value descale factors (<c>v_descale</c>), shaped like <see cref="KeyDescale"/>.</summary>
    public float[]? ValueDescale { get; init; }

    /// <summary>
    /// The dtype of q and the new keys and values over an fp8 cache (Float16 or BFloat16): an appended element is first
    /// rounded to it, as a 16-bit cache would store it, then quantized (<see cref="DecodeReference.QuantizeForCache"/>).
    /// Required by the Float8E4M3 overloads when they append; refused by the others.
    /// </summary>
    public DataType? QueryDataType { get; init; }

    /// <summary>Whether rotary tables are given.</summary>
    public bool HasRotary => RotaryCos is not null || RotarySin is not null;
}
