namespace FlashAttn;

/// <summary>
/// A float64 CPU implementation of decoding over a KV cache: the oracle of the decode kernels. New queries attend
/// over the keys already in each sequence's cache, after the optional new keys and values have been appended to it.
/// </summary>
/// <remarks>
/// <para>
/// Layouts (dense, row-major): q and output <c>[batch, seqLenNew, headsQ, headDim]</c>; the optional new keys and
/// values <c>[batch, seqLenNew, headsKv, headDim]</c>; log-sum-exp <c>[batch, headsQ, seqLenNew]</c>;
/// <c>cacheSeqLens[b]</c> is the number of tokens already in sequence <c>b</c>'s cache (not cumulative). The cache is
/// either contiguous, <c>[batch, cacheCapacity, headsKv, headDim]</c> (<see cref="ForwardContiguous(ReadOnlySpan{double}, Span{double}, Span{double}, ReadOnlySpan{int}, ReadOnlySpan{double}, ReadOnlySpan{double}, int, int, int, int, int, AttentionOptions, Span{double}, Span{double})"/>), or paged,
/// <c>[numBlocks, blockSize, headsKv, headDim]</c> with an int32 block table <c>[batch, maxBlocksPerSequence]</c>
/// (<see cref="ForwardPaged(ReadOnlySpan{double}, Span{double}, Span{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, ReadOnlySpan{double}, ReadOnlySpan{double}, int, int, int, int, int, AttentionOptions, Span{double}, Span{double})"/>): logical position <c>p</c> of sequence <c>b</c> lives in physical block
/// <c>blockTable[b, p / blockSize]</c>, row <c>p % blockSize</c>.
/// </para>
/// <para>
/// When new keys and values are given, the call first writes them into the cache arrays it is handed, at positions
/// <c>cacheSeqLens[b] .. cacheSeqLens[b] + seqLenNew - 1</c> of every sequence (nothing else in the cache changes),
/// then attends. Sequence <c>b</c> then has <c>total_b = cacheSeqLens[b] + seqLenNew</c> keys (<c>cacheSeqLens[b]</c>
/// without new keys), and its new queries attend over positions <c>0 .. total_b - 1</c> exactly as
/// <see cref="AttentionReference.Forward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, Span{double}, Span{double})"/>
/// does with <c>SeqLenQ = seqLenNew</c> and <c>SeqLenK = total_b</c>: GQA, scale, soft-capping, and the causal mask
/// and window placed bottom-right, so new token <c>i</c> sees, when causal, positions <c>&lt;= total_b - seqLenNew + i</c>.
/// A row that sees no key (an empty cache and no new keys, say) gets output 0 and log-sum-exp +infinity.
/// </para>
/// <para>
/// Cache slots at or past <c>total_b</c> are never read, and neither are the block-table entries of pages past the
/// last one a sequence uses (they may hold anything, -1 for example). Several sequences may share a physical block
/// for reading (a common prefix), but a slot the call appends into must belong to exactly one (sequence, position):
/// otherwise the result would depend on the order of the writes, and the call throws.
/// </para>
/// <para>
/// Overloads taking a <see cref="DecodeServingOptions"/> add <c>flash_attn_with_kvcache</c>'s serving options
/// (shared/FEATURES.md §5, issue 15): a cache batch index, left padding, and a query count other than the appended
/// one, as <see cref="FlashAttention.Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> serves them since C ABI
/// 0.7, and rotary embedding on append (§4; <see cref="DecodeServingOptions.RotaryCos"/>), which it serves since 0.8.
/// </para>
/// <para>
/// Overloads taking <see cref="Float8E4M3"/> caches decode over an fp8 KV cache (C ABI 0.13, <see cref="KvCache.IsFloat8"/>):
/// the cache holds e4m3 values read through per-KV-head (or per-cache) descale factors, and appended keys and values are
/// quantized into it exactly as the kernels do (<see cref="QuantizeForCache"/>), so that the bytes a GPU stored can be
/// compared with these.
/// </para>
/// </remarks>
public static class DecodeReference
{
    /// <summary>Decodes over a contiguous KV cache in float64, appending the new keys and values first when given.</summary>
    /// <param name="q">New queries, <c>[batch, seqLenNew, headsQ, headDim]</c>.</param>
    /// <param name="kCache">Key cache, <c>[batch, cacheCapacity, headsKv, headDim]</c>; receives the appended keys.</param>
    /// <param name="vCache">Value cache, <c>[batch, cacheCapacity, headsKv, headDim]</c>; receives the appended values.</param>
    /// <param name="cacheSeqLens">Tokens already in each sequence's cache, <c>[batch]</c>; its length sets the batch.</param>
    /// <param name="kNew">New keys, <c>[batch, seqLenNew, headsKv, headDim]</c>, or empty to append nothing.</param>
    /// <param name="vNew">New values, <c>[batch, seqLenNew, headsKv, headDim]</c>; empty exactly when <paramref name="kNew"/> is.</param>
    /// <param name="seqLenNew">New tokens per sequence (1 or more).</param>
    /// <param name="headsQ">Query heads (1 or more), a multiple of <paramref name="headsKv"/>.</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more).</param>
    /// <param name="cacheCapacity">Positions the cache holds per sequence (<c>S_max</c>, 0 or more).</param>
    /// <param name="options">
    /// Mask, window, softcap and scale (<see cref="AttentionOptions.KernelPath"/> is ignored). The causal mask and the
    /// window are bottom-right aligned; <see cref="CausalAlignment.TopLeft"/> is rejected when either is set.
    /// </param>
    /// <param name="output">Receives the output, <c>[batch, seqLenNew, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[batch, headsQ, seqLenNew]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">
    /// A size is out of range, a span length does not match the sizes, only one of <paramref name="kNew"/> and
    /// <paramref name="vNew"/> is given, a cache length is negative, or a sequence's tokens (with the new ones) do
    /// not fit in <paramref name="cacheCapacity"/>.
    /// </exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void ForwardContiguous(
        ReadOnlySpan<double> q,
        Span<double> kCache,
        Span<double> vCache,
        ReadOnlySpan<int> cacheSeqLens,
        ReadOnlySpan<double> kNew,
        ReadOnlySpan<double> vNew,
        int seqLenNew,
        int headsQ,
        int headsKv,
        int headDim,
        int cacheCapacity,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp)
        =>
        ForwardContiguous(
            q, kCache, vCache, cacheSeqLens, kNew, vNew, seqLenNew, headsQ, headsKv, headDim, cacheCapacity, options,
            DecodeServingOptions.None, output, logSumExp);

    /// <summary>Decodes over a paged KV cache in float64, appending the new keys and values first when given.</summary>
    /// <param name="q">New queries, <c>[batch, seqLenNew, headsQ, headDim]</c>.</param>
    /// <param name="kCache">Key blocks, <c>[numBlocks, blockSize, headsKv, headDim]</c>; receives the appended keys.</param>
    /// <param name="vCache">Value blocks, <c>[numBlocks, blockSize, headsKv, headDim]</c>; receives the appended values.</param>
    /// <param name="blockTable">
    /// Physical block of each page of each sequence, <c>[batch, maxBlocksPerSequence]</c>; the entries of the pages a
    /// sequence uses must lie in <c>0 .. numBlocks - 1</c>, the others are ignored.
    /// </param>
    /// <param name="cacheSeqLens">Tokens already in each sequence's cache, <c>[batch]</c>; its length sets the batch.</param>
    /// <param name="kNew">New keys, <c>[batch, seqLenNew, headsKv, headDim]</c>, or empty to append nothing.</param>
    /// <param name="vNew">New values, <c>[batch, seqLenNew, headsKv, headDim]</c>; empty exactly when <paramref name="kNew"/> is.</param>
    /// <param name="seqLenNew">New tokens per sequence (1 or more).</param>
    /// <param name="headsQ">Query heads (1 or more), a multiple of <paramref name="headsKv"/>.</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more).</param>
    /// <param name="blockSize">Positions per block (1 or more); <c>numBlocks</c> follows from the length of <paramref name="kCache"/>.</param>
    /// <param name="options">
    /// Mask, window, softcap and scale (<see cref="AttentionOptions.KernelPath"/> is ignored). The causal mask and the
    /// window are bottom-right aligned; <see cref="CausalAlignment.TopLeft"/> is rejected when either is set.
    /// </param>
    /// <param name="output">Receives the output, <c>[batch, seqLenNew, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[batch, headsQ, seqLenNew]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">
    /// A size is out of range, a span length does not match the sizes (the caches must hold whole blocks, the block
    /// table a whole row per sequence), only one of <paramref name="kNew"/> and <paramref name="vNew"/> is given, a
    /// cache length is negative, a sequence's tokens (with the new ones) do not fit in its
    /// <c>maxBlocksPerSequence * blockSize</c> positions, a used block-table entry is out of range, or an appended
    /// slot is shared with another position.
    /// </exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void ForwardPaged(
        ReadOnlySpan<double> q,
        Span<double> kCache,
        Span<double> vCache,
        ReadOnlySpan<int> blockTable,
        ReadOnlySpan<int> cacheSeqLens,
        ReadOnlySpan<double> kNew,
        ReadOnlySpan<double> vNew,
        int seqLenNew,
        int headsQ,
        int headsKv,
        int headDim,
        int blockSize,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp)
        =>
        ForwardPaged(
            q, kCache, vCache, blockTable, cacheSeqLens, kNew, vNew, seqLenNew, headsQ, headsKv, headDim, blockSize, options,
            DecodeServingOptions.None, output, logSumExp);

    /// <summary>
    /// <see cref="ForwardContiguous(ReadOnlySpan{double}, Span{double}, Span{double}, ReadOnlySpan{int}, ReadOnlySpan{double}, ReadOnlySpan{double}, int, int, int, int, int, AttentionOptions, Span{double}, Span{double})"/>
    /// with the serving options of <c>flash_attn_with_kvcache</c> (see <see cref="Run"/> for the formulas). With
    /// <see cref="DecodeServingOptions.CacheBatchIndex"/> the caches are <c>[cacheRows, cacheCapacity, headsKv, headDim]</c>.
    /// </summary>
    /// <param name="q">New queries, <c>[batch, sq, headsQ, headDim]</c> (<c>sq</c> = <see cref="DecodeServingOptions.SeqLenQ"/>, or <paramref name="seqLenNew"/> when that is null).</param>
    /// <param name="kCache">Key cache; receives the appended keys.</param>
    /// <param name="vCache">Value cache; receives the appended values.</param>
    /// <param name="cacheSeqLens">Tokens already in each sequence's cache (absolute: a left pad counts), <c>[batch]</c>; its length sets the batch.</param>
    /// <param name="kNew">New keys, <c>[batch, seqLenNew, headsKv, headDim]</c>, or empty to append nothing.</param>
    /// <param name="vNew">New values, shaped like <paramref name="kNew"/>; empty exactly when it is.</param>
    /// <param name="seqLenNew">New tokens per sequence; with <see cref="DecodeServingOptions.SeqLenQ"/> set, the appended count only (0 without new keys).</param>
    /// <param name="headsQ">Query heads (1 or more), a multiple of <paramref name="headsKv"/>.</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more).</param>
    /// <param name="cacheCapacity">Positions each cache row holds.</param>
    /// <param name="options">Mask, window, softcap and scale; bottom-right only.</param>
    /// <param name="serving">The serving options (<see cref="DecodeServingOptions.None"/>: none).</param>
    /// <param name="output">Receives the output, <c>[batch, sq, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[batch, headsQ, sq]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">A size, span length, length, index or pad is out of range, or an appended slot is shared.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> or <paramref name="serving"/> is null.</exception>
    public static void ForwardContiguous(
        ReadOnlySpan<double> q,
        Span<double> kCache,
        Span<double> vCache,
        ReadOnlySpan<int> cacheSeqLens,
        ReadOnlySpan<double> kNew,
        ReadOnlySpan<double> vNew,
        int seqLenNew,
        int headsQ,
        int headsKv,
        int headDim,
        int cacheCapacity,
        AttentionOptions options,
        DecodeServingOptions serving,
        Span<double> output,
        Span<double> logSumExp)
    {
        RequireNoFloat8(serving);
        RunContiguous(q, kCache, vCache, cacheSeqLens, kNew, vNew, seqLenNew, headsQ, headsKv, headDim, cacheCapacity, options, serving, null, output, logSumExp);
    }

    /// <summary>
    /// <see cref="ForwardContiguous(ReadOnlySpan{double}, Span{double}, Span{double}, ReadOnlySpan{int}, ReadOnlySpan{double}, ReadOnlySpan{double}, int, int, int, int, int, AttentionOptions, DecodeServingOptions, Span{double}, Span{double})"/>
    /// over an fp8 (e4m3) KV cache (C ABI 0.13): the keys and values it attends are the stored e4m3 values times their
    /// KV head's descale factor, and the keys and values it appends are stored as <see cref="QuantizeForCache"/> gives
    /// them. See <see cref="ForwardPaged(ReadOnlySpan{double}, Span{Float8E4M3}, Span{Float8E4M3}, ReadOnlySpan{int}, ReadOnlySpan{int}, ReadOnlySpan{double}, ReadOnlySpan{double}, int, int, int, int, int, AttentionOptions, DecodeServingOptions, Span{double}, Span{double})"/>
    /// for the exact definitions.
    /// </summary>
    /// <param name="q">New queries, <c>[batch, sq, headsQ, headDim]</c>, values of <see cref="DecodeServingOptions.QueryDataType"/>.</param>
    /// <param name="kCache">Key cache of e4m3 values, <c>[batch or CacheRows, cacheCapacity, headsKv, headDim]</c>; receives the appended keys, quantized.</param>
    /// <param name="vCache">Value cache, shaped like <paramref name="kCache"/>; receives the appended values, quantized.</param>
    /// <param name="cacheSeqLens">Tokens already in each sequence's cache (absolute: a left pad counts), <c>[batch]</c>; its length sets the batch.</param>
    /// <param name="kNew">New keys, <c>[batch, seqLenNew, headsKv, headDim]</c>, or empty to append nothing.</param>
    /// <param name="vNew">New values, shaped like <paramref name="kNew"/>; empty exactly when it is.</param>
    /// <param name="seqLenNew">New tokens per sequence, as for the 16-bit overload.</param>
    /// <param name="headsQ">Query heads (1 or more), a multiple of <paramref name="headsKv"/>.</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more).</param>
    /// <param name="cacheCapacity">Positions each cache row holds.</param>
    /// <param name="options">Mask, window, softcap and scale; bottom-right only.</param>
    /// <param name="serving">
    /// The serving options, with the fp8 cache's <see cref="DecodeServingOptions.KeyDescale"/> and
    /// <see cref="DecodeServingOptions.ValueDescale"/> (required) and, when appending,
    /// <see cref="DecodeServingOptions.QueryDataType"/>.
    /// </param>
    /// <param name="output">Receives the output, <c>[batch, sq, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[batch, headsQ, sq]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">
    /// As for the 16-bit overload; or a descale table is missing or of a length other than <paramref name="headsKv"/> or
    /// 1, or an appending call has no Float16 or BFloat16 <see cref="DecodeServingOptions.QueryDataType"/>.
    /// </exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> or <paramref name="serving"/> is null.</exception>
    public static void ForwardContiguous(
        ReadOnlySpan<double> q,
        Span<Float8E4M3> kCache,
        Span<Float8E4M3> vCache,
        ReadOnlySpan<int> cacheSeqLens,
        ReadOnlySpan<double> kNew,
        ReadOnlySpan<double> vNew,
        int seqLenNew,
        int headsQ,
        int headsKv,
        int headDim,
        int cacheCapacity,
        AttentionOptions options,
        DecodeServingOptions serving,
        Span<double> output,
        Span<double> logSumExp)
    {
        Float8Cache fp8 = Float8Cache.From(serving, headsKv, !kNew.IsEmpty || !vNew.IsEmpty);
        double[] k = Float8Cache.Widen(kCache), v = Float8Cache.Widen(vCache);
        RunContiguous(q, k, v, cacheSeqLens, kNew, vNew, seqLenNew, headsQ, headsKv, headDim, cacheCapacity, options, serving, fp8, output, logSumExp);
        Float8Cache.StoreChanged(k, kCache);
        Float8Cache.StoreChanged(v, vCache);
    }

    private static void RunContiguous(
        ReadOnlySpan<double> q,
        Span<double> kCache,
        Span<double> vCache,
        ReadOnlySpan<int> cacheSeqLens,
        ReadOnlySpan<double> kNew,
        ReadOnlySpan<double> vNew,
        int seqLenNew,
        int headsQ,
        int headsKv,
        int headDim,
        int cacheCapacity,
        AttentionOptions options,
        DecodeServingOptions serving,
        Float8Cache? fp8,
        Span<double> output,
        Span<double> logSumExp)
    {
        int batch = cacheSeqLens.Length;
        int seqLenQ = ValidateSizes(options, serving, batch, seqLenNew, !kNew.IsEmpty || !vNew.IsEmpty, headsQ, headsKv, headDim);
        if (cacheCapacity < 0)
        {
            throw new ArgumentException($"cacheCapacity must be 0 or more (got {cacheCapacity}).", nameof(cacheCapacity));
        }

        int cacheRows = CacheRowCount(serving, batch);
        long cacheElements = (long)cacheRows * cacheCapacity * headsKv * headDim;
        string layout = serving.CacheBatchIndex is null
            ? "[batch, cacheCapacity, headsKv, headDim]"
            : "[cacheRows, cacheCapacity, headsKv, headDim]";
        RequireLength(kCache.Length, cacheElements, nameof(kCache), layout);
        RequireLength(vCache.Length, cacheElements, nameof(vCache), layout);
        var map = new CacheMap(null, 0, cacheCapacity, cacheRows);
        Run(q, kCache, vCache, cacheSeqLens, kNew, vNew, seqLenQ, seqLenNew, headsQ, headsKv, headDim, map, 0, options, serving, fp8, output, logSumExp);
    }

    /// <summary>
    /// <see cref="ForwardPaged(ReadOnlySpan{double}, Span{double}, Span{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, ReadOnlySpan{double}, ReadOnlySpan{double}, int, int, int, int, int, AttentionOptions, Span{double}, Span{double})"/>
    /// with the serving options of <c>flash_attn_with_kvcache</c> (see <see cref="Run"/> for the formulas). With
    /// <see cref="DecodeServingOptions.CacheBatchIndex"/> the block table is <c>[cacheRows, maxBlocksPerSequence]</c>
    /// and sequence <c>b</c> uses its row <c>CacheBatchIndex[b]</c> (FA3; FA2 rejects the pair, and left padding
    /// with paging, which FA3 allows).
    /// </summary>
    /// <param name="q">New queries, <c>[batch, sq, headsQ, headDim]</c> (<c>sq</c> = <see cref="DecodeServingOptions.SeqLenQ"/>, or <paramref name="seqLenNew"/> when that is null).</param>
    /// <param name="kCache">Key cache; receives the appended keys.</param>
    /// <param name="vCache">Value cache; receives the appended values.</param>
    /// <param name="blockTable">Physical block of each page, <c>[batch or CacheRows, maxBlocksPerSequence]</c>.</param>
    /// <param name="cacheSeqLens">Tokens already in each sequence's cache (absolute: a left pad counts), <c>[batch]</c>; its length sets the batch.</param>
    /// <param name="kNew">New keys, <c>[batch, seqLenNew, headsKv, headDim]</c>, or empty to append nothing.</param>
    /// <param name="vNew">New values, shaped like <paramref name="kNew"/>; empty exactly when it is.</param>
    /// <param name="seqLenNew">New tokens per sequence; with <see cref="DecodeServingOptions.SeqLenQ"/> set, the appended count only (0 without new keys).</param>
    /// <param name="headsQ">Query heads (1 or more), a multiple of <paramref name="headsKv"/>.</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more).</param>
    /// <param name="blockSize">Positions per block.</param>
    /// <param name="options">Mask, window, softcap and scale; bottom-right only.</param>
    /// <param name="serving">The serving options (<see cref="DecodeServingOptions.None"/>: none).</param>
    /// <param name="output">Receives the output, <c>[batch, sq, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[batch, headsQ, sq]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">A size, span length, length, index or pad is out of range, or an appended slot is shared.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> or <paramref name="serving"/> is null.</exception>
    public static void ForwardPaged(
        ReadOnlySpan<double> q,
        Span<double> kCache,
        Span<double> vCache,
        ReadOnlySpan<int> blockTable,
        ReadOnlySpan<int> cacheSeqLens,
        ReadOnlySpan<double> kNew,
        ReadOnlySpan<double> vNew,
        int seqLenNew,
        int headsQ,
        int headsKv,
        int headDim,
        int blockSize,
        AttentionOptions options,
        DecodeServingOptions serving,
        Span<double> output,
        Span<double> logSumExp)
    {
        RequireNoFloat8(serving);
        RunPaged(q, kCache, vCache, blockTable, cacheSeqLens, kNew, vNew, seqLenNew, headsQ, headsKv, headDim, blockSize, options, serving, null, output, logSumExp);
    }

    /// <summary>
    /// <see cref="ForwardPaged(ReadOnlySpan{double}, Span{double}, Span{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, ReadOnlySpan{double}, ReadOnlySpan{double}, int, int, int, int, int, AttentionOptions, DecodeServingOptions, Span{double}, Span{double})"/>
    /// over an fp8 (e4m3) KV cache, as <c>fa_decode</c> serves it since C ABI 0.13 (the 16-bit overload's formulas
    /// otherwise). With <c>h</c> a position's KV head and <c>kd</c>, <c>vd</c> the factors
    /// (<see cref="DecodeServingOptions.KeyDescale"/>[h], or [0] when the table has one):
    /// <list type="bullet">
    /// <item>Attended: the key at a cache position is <c>(double)k_e4m3 * (double)kd</c> (exact: 4 significant bits times
    /// 24 fit in a double's 53), the value likewise with <c>vd</c>; a NaN byte reads as NaN (so a slot no call may read
    /// can hold 0x7F and prove it is not read).</item>
    /// <item>Appended: a new key (rotated first when rotary is on) is rounded to <see cref="DecodeServingOptions.QueryDataType"/>,
    /// divided by <c>kd</c> in fp32 and rounded to e4m3, nearest even, saturating to ±448
    /// (<see cref="QuantizeForCache"/>); new values the same with <c>vd</c>. Without rotary these are the kernels' stored
    /// bytes exactly; with rotary the rotation here is float64 where the kernels' is fp32, which can move the rounded key
    /// by one unit of q's dtype and the stored byte by one e4m3 step.</item>
    /// </list>
    /// The kernels fold the factors into the scores and the output in fp32; the float64 product here is the value the
    /// contract defines, within fp32 rounding (2^-24 relative) of any order the kernels take, far below the rounding of
    /// q, P and the output to 16 bits that decode's tolerance covers.
    /// </summary>
    /// <param name="q">New queries, <c>[batch, sq, headsQ, headDim]</c>, values of <see cref="DecodeServingOptions.QueryDataType"/>.</param>
    /// <param name="kCache">Key blocks of e4m3 values, <c>[numBlocks, blockSize, headsKv, headDim]</c>; receives the appended keys, quantized.</param>
    /// <param name="vCache">Value blocks, shaped like <paramref name="kCache"/>; receives the appended values, quantized.</param>
    /// <param name="blockTable">Physical block of each page, <c>[batch or CacheRows, maxBlocksPerSequence]</c>.</param>
    /// <param name="cacheSeqLens">Tokens already in each sequence's cache (absolute: a left pad counts), <c>[batch]</c>; its length sets the batch.</param>
    /// <param name="kNew">New keys, <c>[batch, seqLenNew, headsKv, headDim]</c>, or empty to append nothing.</param>
    /// <param name="vNew">New values, shaped like <paramref name="kNew"/>; empty exactly when it is.</param>
    /// <param name="seqLenNew">New tokens per sequence, as for the 16-bit overload.</param>
    /// <param name="headsQ">Query heads (1 or more), a multiple of <paramref name="headsKv"/>.</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more).</param>
    /// <param name="blockSize">Positions per block.</param>
    /// <param name="options">Mask, window, softcap and scale; bottom-right only.</param>
    /// <param name="serving">
    /// The serving options, with the fp8 cache's <see cref="DecodeServingOptions.KeyDescale"/> and
    /// <see cref="DecodeServingOptions.ValueDescale"/> (required) and, when appending,
    /// <see cref="DecodeServingOptions.QueryDataType"/>.
    /// </param>
    /// <param name="output">Receives the output, <c>[batch, sq, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[batch, headsQ, sq]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">
    /// As for the 16-bit overload; or a descale table is missing or of a length other than <paramref name="headsKv"/> or
    /// 1, or an appending call has no Float16 or BFloat16 <see cref="DecodeServingOptions.QueryDataType"/>.
    /// </exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> or <paramref name="serving"/> is null.</exception>
    public static void ForwardPaged(
        ReadOnlySpan<double> q,
        Span<Float8E4M3> kCache,
        Span<Float8E4M3> vCache,
        ReadOnlySpan<int> blockTable,
        ReadOnlySpan<int> cacheSeqLens,
        ReadOnlySpan<double> kNew,
        ReadOnlySpan<double> vNew,
        int seqLenNew,
        int headsQ,
        int headsKv,
        int headDim,
        int blockSize,
        AttentionOptions options,
        DecodeServingOptions serving,
        Span<double> output,
        Span<double> logSumExp)
    {
        Float8Cache fp8 = Float8Cache.From(serving, headsKv, !kNew.IsEmpty || !vNew.IsEmpty);
        double[] k = Float8Cache.Widen(kCache), v = Float8Cache.Widen(vCache);
        RunPaged(q, k, v, blockTable, cacheSeqLens, kNew, vNew, seqLenNew, headsQ, headsKv, headDim, blockSize, options, serving, fp8, output, logSumExp);
        Float8Cache.StoreChanged(k, kCache);
        Float8Cache.StoreChanged(v, vCache);
    }

    /// <summary>
    /// How an fp8 KV cache stores one appended key or value element (C ABI 0.13's <c>fa_decode_params_t</c>): the
    /// element (already rotated, for a key under rotary) is rounded to the queries' dtype, as a 16-bit cache would store
    /// it; that value, as a <see cref="float"/>, is divided by <paramref name="descale"/> in fp32 (IEEE division, correctly
    /// rounded); the quotient is rounded to e4m3, nearest even, saturating to ±448 (infinities included), NaN kept
    /// (<see cref="Float8E4M3.FromSingleSaturating"/>). The kernels store these bytes.
    /// </summary>
    /// <param name="value">The element, before rounding to <paramref name="queryType"/>.</param>
    /// <param name="descale">The descale factor of the element's KV head (taken as given: 0 gives ±448 or NaN).</param>
    /// <param name="queryType">The dtype of q and the new keys and values: Float16 or BFloat16.</param>
    /// <returns>The stored e4m3 value.</returns>
    /// <exception cref="ArgumentException"><paramref name="queryType"/> is not Float16 or BFloat16.</exception>
    public static Float8E4M3 QuantizeForCache(double value, float descale, DataType queryType)
    {
        float rounded = queryType switch
        {
            DataType.Float16 => (float)(Half)value,
            DataType.BFloat16 => (BFloat16)value,
            _ => throw new ArgumentException($"queryType must be Float16 or BFloat16 (the dtype of q over an fp8 cache); got {queryType}.", nameof(queryType)),
        };
        return Float8E4M3.FromSingleSaturating(rounded / descale);
    }

    private static void RunPaged(
        ReadOnlySpan<double> q,
        Span<double> kCache,
        Span<double> vCache,
        ReadOnlySpan<int> blockTable,
        ReadOnlySpan<int> cacheSeqLens,
        ReadOnlySpan<double> kNew,
        ReadOnlySpan<double> vNew,
        int seqLenNew,
        int headsQ,
        int headsKv,
        int headDim,
        int blockSize,
        AttentionOptions options,
        DecodeServingOptions serving,
        Float8Cache? fp8,
        Span<double> output,
        Span<double> logSumExp)
    {
        int batch = cacheSeqLens.Length;
        int seqLenQ = ValidateSizes(options, serving, batch, seqLenNew, !kNew.IsEmpty || !vNew.IsEmpty, headsQ, headsKv, headDim);
        if (blockSize < 1)
        {
            throw new ArgumentException($"blockSize must be 1 or more (got {blockSize}).", nameof(blockSize));
        }

        long blockElements = (long)blockSize * headsKv * headDim;
        if (kCache.Length % blockElements != 0)
        {
            throw new ArgumentException(
                $"kCache has {kCache.Length} elements, not a whole number of blocks of blockSize * headsKv * headDim = {blockElements}.",
                nameof(kCache));
        }

        RequireLength(vCache.Length, kCache.Length, nameof(vCache), "the length of kCache");
        long numBlocks = kCache.Length / blockElements;
        int cacheRows = CacheRowCount(serving, batch);
        string rows = serving.CacheBatchIndex is null ? "batch" : "cacheRows";
        int maxBlocks = 0;
        if (cacheRows == 0)
        {
            RequireLength(blockTable.Length, 0, nameof(blockTable), $"[{rows}, maxBlocksPerSequence] with {rows} 0");
        }
        else
        {
            if (blockTable.Length % cacheRows != 0)
            {
                throw new ArgumentException(
                    $"blockTable has {blockTable.Length} entries, not a whole row of [{rows} = {cacheRows}, maxBlocksPerSequence].",
                    nameof(blockTable));
            }

            maxBlocks = blockTable.Length / cacheRows;
        }

        var map = new CacheMap(blockTable.ToArray(), maxBlocks, blockSize, cacheRows);
        Run(q, kCache, vCache, cacheSeqLens, kNew, vNew, seqLenQ, seqLenNew, headsQ, headsKv, headDim, map, numBlocks, options, serving, fp8, output, logSumExp);
    }

    /// <summary>
    /// Rotates the first <paramref name="rotaryDim"/> elements of one head's vector <paramref name="x"/> in place at
    /// one position, whose table rows are <paramref name="cos"/> and <paramref name="sin"/> (<c>rotaryDim / 2</c>
    /// each); the rest pass through (FEATURES.md §4 "Math", in float64 where the kernels compute in fp32 and round
    /// back to the input dtype). Interleaved: <c>(x[2t], x[2t+1]) -> (x[2t] c_t - x[2t+1] s_t, x[2t] s_t + x[2t+1] c_t)</c>;
    /// otherwise (GPT-NeoX): <c>(x[t], x[t+rd/2]) -> (x[t] c_t - x[t+rd/2] s_t, x[t] s_t + x[t+rd/2] c_t)</c>.
    /// </summary>
    /// <param name="x">One head's vector (at least <paramref name="rotaryDim"/> elements); rotated in place.</param>
    /// <param name="cos">The cos table's row of the position, <c>rotaryDim / 2</c> elements.</param>
    /// <param name="sin">The sin table's row of the position, <c>rotaryDim / 2</c> elements.</param>
    /// <param name="rotaryDim">Elements rotated (even).</param>
    /// <param name="interleaved">True: pairs <c>(2t, 2t+1)</c> (GPT-J); false: <c>(t, t + rotaryDim/2)</c> (GPT-NeoX).</param>
    public static void Rotate(Span<double> x, ReadOnlySpan<double> cos, ReadOnlySpan<double> sin, int rotaryDim, bool interleaved)
    {
        int half = rotaryDim / 2;
        for (int t = 0; t < half; t++)
        {
            int first = interleaved ? 2 * t : t;
            int second = interleaved ? (2 * t) + 1 : t + half;
            double x0 = x[first], x1 = x[second], c = cos[t], s = sin[t];
            x[first] = (x0 * c) - (x1 * s);
            x[second] = (x0 * s) + (x1 * c);
        }
    }

    /// <summary>Returns the query count per sequence.</summary>
    private static int ValidateSizes(
        AttentionOptions options, DecodeServingOptions serving, int batch, int seqLenNew, bool appends, int headsQ, int headsKv, int headDim)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(serving);
        options.Validate(nameof(options));
        if ((options.Causal || options.HasWindow) && options.CausalAlignment != CausalAlignment.BottomRight)
        {
            throw new ArgumentException(
                "Decoding places the causal mask and the window bottom-right (new token i sits at position " +
                "total - seqLenNew + i); CausalAlignment must be BottomRight when either is set.",
                nameof(options));
        }

        int seqLenQ;
        if (serving.QueryCounts is { } counts)
        {
            // Per-sequence query counts (C ABI 0.12): their largest stands for the shape checks below.
            if (serving.SeqLenQ is not null)
            {
                throw new ArgumentException("Give SeqLenQ or QueryCounts, not both.", nameof(serving));
            }

            RequireCounts(counts, batch, "QueryCounts");
            seqLenQ = Math.Max(1, counts.Length == 0 ? 1 : counts.Max());
        }
        else if (serving.SeqLenQ is { } sq)
        {
            if (sq < 1)
            {
                throw new ArgumentException($"SeqLenQ must be 1 or more when set (got {sq}).", nameof(serving));
            }

            seqLenQ = sq;
        }
        else
        {
            if (serving.AppendCounts is not null)
            {
                throw new ArgumentException("AppendCounts needs SeqLenQ or QueryCounts (the queries' count is not the appended one).", nameof(serving));
            }

            if (seqLenNew < 1)
            {
                throw new ArgumentException($"seqLenNew must be 1 or more (got {seqLenNew}).", nameof(seqLenNew));
            }

            seqLenQ = seqLenNew;
        }

        if (serving.AppendCounts is { } appended)
        {
            if (seqLenNew != 0)
            {
                throw new ArgumentException($"With AppendCounts set, seqLenNew must be 0 (got {seqLenNew}).", nameof(seqLenNew));
            }

            RequireCounts(appended, batch, "AppendCounts");
        }
        else if ((serving.SeqLenQ is not null || serving.QueryCounts is not null) && (appends ? seqLenNew < 1 : seqLenNew != 0))
        {
            throw new ArgumentException(
                $"With SeqLenQ or QueryCounts set, seqLenNew counts the appended tokens: 1 or more with new keys, 0 without (got {seqLenNew}, " +
                (appends ? "with" : "without") + " new keys).",
                nameof(seqLenNew));
        }

        new AttentionShape(batch, seqLenQ, 0, headsQ, headsKv, headDim).Validate(nameof(headsQ));
        return seqLenQ;
    }

    private static void RequireCounts(int[] counts, int batch, string name)
    {
        RequireLength(counts.Length, batch, name, "[batch]");
        for (int b = 0; b < counts.Length; b++)
        {
            if (counts[b] < 0)
            {
                throw new ArgumentException($"{name}[{b}] is {counts[b]}; counts must be 0 or more.", "serving");
            }
        }
    }

    /// <summary>The first packed row of each sequence and the total: prefix sums of <paramref name="counts"/>.</summary>
    private static (int[] First, long Total) PrefixSums(int[] counts)
    {
        var first = new int[counts.Length];
        long total = 0;
        for (int b = 0; b < counts.Length; b++)
        {
            first[b] = (int)total;
            total += counts[b];
        }

        return (first, total);
    }

    private static int CacheRowCount(DecodeServingOptions serving, int batch)
    {
        if (serving.CacheRows is { } rows)
        {
            if (serving.CacheBatchIndex is null)
            {
                throw new ArgumentException("CacheRows is only meaningful with CacheBatchIndex.", nameof(serving));
            }

            if (rows < 0)
            {
                throw new ArgumentException($"CacheRows must be 0 or more (got {rows}).", nameof(serving));
            }

            return rows;
        }

        return batch;
    }

    /// <summary>
    /// The decode with its serving options. Notation of FEATURES.md: <c>P0 = cacheSeqLens[b]</c> (absolute, left pad
    /// included), <c>lp = leftpad[b]</c>, <c>n = seqLenNew</c> appended (0 without new keys), <c>sq</c> queries,
    /// <c>r = cacheBatchIndex[b]</c> (or <c>b</c>).
    /// <list type="number">
    /// <item>Append (§5 "Append"): new key and value <c>j</c> go to position <c>P0 + j</c> of cache row <c>r</c>, the key
    /// rotated at position <c>P0 + j</c> first when rotary is on (§4 "Positions": the rotated key is what is stored).</item>
    /// <item>Queries (§4 "Positions"): query <c>i</c> is rotated at <c>P0 + i</c> when causal or windowed, at <c>P0</c>
    /// otherwise (every row the same position).</item>
    /// <item>Attention (§5 "Valid keys and alignment"): over positions <c>lp .. P0 + n - 1</c> of row <c>r</c>, that is
    /// <c>sk = P0 + n - lp</c> keys numbered from <c>lp</c>, as the forward reference with <c>SeqLenQ = sq</c>,
    /// <c>SeqLenK = sk</c>: masks bottom-right, query <c>i</c>'s diagonal at key <c>sk - sq + i</c>.</item>
    /// </list>
    /// Everything is checked before anything is written. Where this differs from FA2/FA3: rotary is exact float64
    /// (the kernels compute in fp32 and round to the input dtype); any even rotary dim up to the head dim is accepted
    /// (FA2's kernels want a multiple of 16); "windowed" means a window is set, taken literally as everywhere in this
    /// library (FA2 first drops a side that reaches the cache capacity, and a call left with neither side rotates every
    /// query at <c>P0</c>); a repeated cache row whose appended slots another sequence uses is refused (FEATURES.md:
    /// unspecified which write wins); the batch index and left padding work with paging as in FA3 (FA2 rejects
    /// both pairings); the tables must cover the capacity (FA2's check) and every query position. With
    /// <paramref name="fp8"/> the cache arrays hold e4m3 values (as doubles): appends store what they quantize to and the
    /// attended keys and values are those times their KV head's factor (C ABI 0.13; FA3 takes its kvcache descales per
    /// (batch, KV head), fa_decode per KV head or per tensor, so the cache rows of a batch index need no rule).
    /// </summary>
    private static void Run(
        ReadOnlySpan<double> q,
        Span<double> kCache,
        Span<double> vCache,
        ReadOnlySpan<int> cacheSeqLens,
        ReadOnlySpan<double> kNew,
        ReadOnlySpan<double> vNew,
        int seqLenQ,
        int seqLenNew,
        int headsQ,
        int headsKv,
        int headDim,
        CacheMap map,
        long numBlocks,
        AttentionOptions options,
        DecodeServingOptions serving,
        Float8Cache? fp8,
        Span<double> output,
        Span<double> logSumExp)
    {
        int batch = cacheSeqLens.Length;
        // Each sequence's query and appended counts (the same for all without QueryCounts / AppendCounts) and the first
        // packed row of each: [batch, sq, ...] is the packed layout with equal counts.
        bool packedQ = serving.QueryCounts is not null;
        int[] queryCounts = serving.QueryCounts ?? Enumerable.Repeat(seqLenQ, batch).ToArray();
        var (queryFirst, totalQ) = PrefixSums(queryCounts);
        long qElements = totalQ * headsQ * headDim;
        string qLayout = packedQ ? "[sum of QueryCounts, headsQ, headDim]"
            : serving.SeqLenQ is null ? "[batch, seqLenNew, headsQ, headDim]" : "[batch, SeqLenQ, headsQ, headDim]";
        RequireLength(q.Length, qElements, nameof(q), qLayout);
        RequireLength(output.Length, qElements, nameof(output), qLayout);
        if (!logSumExp.IsEmpty)
        {
            RequireLength(
                logSumExp.Length, totalQ * headsQ, nameof(logSumExp),
                packedQ ? "[headsQ, sum of QueryCounts]" : serving.SeqLenQ is null ? "[batch, headsQ, seqLenNew]" : "[batch, headsQ, SeqLenQ]");
        }

        if (kNew.IsEmpty != vNew.IsEmpty)
        {
            throw new ArgumentException(
                $"kNew has {kNew.Length} elements and vNew {vNew.Length}: give both (to append) or neither.",
                kNew.IsEmpty ? nameof(kNew) : nameof(vNew));
        }

        bool append = !kNew.IsEmpty;
        int[] appendCounts = serving.AppendCounts ?? Enumerable.Repeat(append ? seqLenNew : 0, batch).ToArray();
        var (appendFirst, totalNew) = PrefixSums(appendCounts);
        long newElements = totalNew * headsKv * headDim;
        if (append)
        {
            string newLayout = serving.AppendCounts is null ? "[batch, seqLenNew, headsKv, headDim]" : "[sum of AppendCounts, headsKv, headDim]";
            RequireLength(kNew.Length, newElements, nameof(kNew), newLayout);
            RequireLength(vNew.Length, newElements, nameof(vNew), newLayout);
        }
        else if (totalNew > 0)
        {
            throw new ArgumentException($"AppendCounts add {totalNew} keys but no kNew/vNew are given.", nameof(serving));
        }

        var cacheRow = new int[batch];
        for (int b = 0; b < batch; b++)
        {
            cacheRow[b] = b;
        }

        if (serving.CacheBatchIndex is { } index)
        {
            RequireLength(index.Length, batch, "CacheBatchIndex", "[batch]");
            for (int b = 0; b < batch; b++)
            {
                if (index[b] < 0 || index[b] >= map.CacheRows)
                {
                    throw new ArgumentException(
                        $"CacheBatchIndex[{b}] is {index[b]}, but the cache has rows 0..{map.CacheRows - 1}.", nameof(serving));
                }

                cacheRow[b] = index[b];
            }
        }

        var leftPad = new int[batch];
        if (serving.AlibiSlopes is { } alibiSlopes && alibiSlopes.Length != headsQ && alibiSlopes.LongLength != (long)batch * headsQ)
        {
            throw new ArgumentException(
                $"AlibiSlopes has {alibiSlopes.Length} values; it must be [headsQ] ({headsQ}) or [batch, headsQ] ({(long)batch * headsQ}).",
                nameof(serving));
        }

        if (serving.CacheLeftPad is { } pads)
        {
            RequireLength(pads.Length, batch, "CacheLeftPad", "[batch]");
            pads.CopyTo(leftPad, 0);
        }

        var totals = new int[batch];
        for (int b = 0; b < batch; b++)
        {
            int added = appendCounts[b];
            int cached = cacheSeqLens[b];
            if (cached < 0)
            {
                throw new ArgumentException($"cacheSeqLens[{b}] is {cached}; cache lengths must be 0 or more.", nameof(cacheSeqLens));
            }

            long total = (long)cached + added;
            if (total > map.Capacity)
            {
                throw new ArgumentException(
                    append
                        ? $"Sequence {b} holds {cached} tokens and appends {added}, {total} in all, but its cache has room for {map.Capacity}."
                        : $"cacheSeqLens[{b}] is {cached}, more than the {map.Capacity} positions its cache has.",
                    nameof(cacheSeqLens));
            }

            // fa_decode's rule (C ABI 0.7): a pad may reach the end of the appended keys (a pad past cacheSeqLens hides
            // some of them; one at the end leaves the sequence no key).
            if (leftPad[b] < 0 || leftPad[b] > total)
            {
                throw new ArgumentException(
                    $"CacheLeftPad[{b}] is {leftPad[b]}; it must lie in 0..cacheSeqLens[{b}] + seqLenNew = {total} (the valid keys are " +
                    "positions leftpad .. cacheSeqLens + seqLenNew - 1).",
                    nameof(serving));
            }

            totals[b] = (int)total;
        }

        // Rotary: queries at their own positions when causal or windowed, after FlashAttention-2's normalisation (a
        // window side of the capacity or more is no window), else all at the cached length.
        bool perRowQueryPositions = options.Causal || options.WindowLeft < map.Capacity || options.WindowRight < map.Capacity;
        if (serving.HasRotary)
        {
            CheckRotary(serving, append, headDim, map.Capacity, cacheSeqLens, queryCounts, perRowQueryPositions);
        }

        if (map.IsPaged)
        {
            CheckBlockTable(map, cacheRow, leftPad, totals, numBlocks);
        }

        if (append && (map.IsPaged || serving.CacheBatchIndex is not null))
        {
            CheckAppendSlotsAreOwned(map, cacheRow, leftPad, cacheSeqLens, totals);
        }

        int rowElements = headsKv * headDim;
        int half = serving.RotaryDim / 2;
        if (append)
        {
            var rotated = new double[rowElements];
            for (int b = 0; b < batch; b++)
            {
                for (int i = 0; i < appendCounts[b]; i++)
                {
                    int position = cacheSeqLens[b] + i;
                    long destination = map.Row(cacheRow[b], position) * rowElements;
                    long source = ((long)appendFirst[b] + i) * rowElements;
                    kNew.Slice((int)source, rowElements).CopyTo(rotated);
                    if (serving.HasRotary)
                    {
                        for (int h = 0; h < headsKv; h++)
                        {
                            Rotate(
                                rotated.AsSpan(h * headDim, headDim), serving.RotaryCos.AsSpan(position * half, half),
                                serving.RotarySin.AsSpan(position * half, half), serving.RotaryDim, serving.RotaryInterleaved);
                        }
                    }

                    if (fp8 is { } f)
                    {
                        // An fp8 cache stores the e4m3 value (as a double) each element quantizes to.
                        f.Quantize(rotated, f.KeyDescale, headDim, kCache.Slice((int)destination, rowElements));
                        f.Quantize(vNew.Slice((int)source, rowElements), f.ValueDescale, headDim, vCache.Slice((int)destination, rowElements));
                    }
                    else
                    {
                        rotated.CopyTo(kCache.Slice((int)destination, rowElements));
                        vNew.Slice((int)source, rowElements).CopyTo(vCache.Slice((int)destination, rowElements));
                    }
                }
            }
        }

        for (int b = 0; b < batch; b++)
        {
            int count = queryCounts[b];
            if (count == 0)
            {
                continue;  // nothing to attend or write (its keys were appended above)
            }

            int qPerSequence = count * headsQ * headDim;
            int qStart = queryFirst[b] * headsQ * headDim;
            var queries = q.Slice(qStart, qPerSequence).ToArray();
            if (serving.HasRotary)
            {
                for (int i = 0; i < count; i++)
                {
                    int position = cacheSeqLens[b] + (perRowQueryPositions ? i : 0);
                    for (int h = 0; h < headsQ; h++)
                    {
                        Rotate(
                            queries.AsSpan(((i * headsQ) + h) * headDim, headDim), serving.RotaryCos.AsSpan(position * half, half),
                            serving.RotarySin.AsSpan(position * half, half), serving.RotaryDim, serving.RotaryInterleaved);
                    }
                }
            }

            int first = leftPad[b];
            int keyCount = totals[b] - first;
            var keys = new double[(long)keyCount * rowElements];
            var values = new double[keys.Length];
            for (int j = 0; j < keyCount; j++)
            {
                int source = (int)(map.Row(cacheRow[b], first + j) * rowElements);
                kCache.Slice(source, rowElements).CopyTo(keys.AsSpan(j * rowElements, rowElements));
                vCache.Slice(source, rowElements).CopyTo(values.AsSpan(j * rowElements, rowElements));
                if (fp8 is { } f)
                {
                    Float8Cache.Dequantize(keys.AsSpan(j * rowElements, rowElements), f.KeyDescale, headDim);
                    Float8Cache.Dequantize(values.AsSpan(j * rowElements, rowElements), f.ValueDescale, headDim);
                }
            }

            // ALiBi: this sequence's slopes, with FA2's kvcache seqlen_k (the capacity) deciding the causal form.
            ReferenceExtras extras = serving.AlibiSlopes is { } slopes
                ? new ReferenceExtras
                {
                    AlibiSlopes = slopes.Length == headsQ ? slopes : slopes.AsSpan(b * headsQ, headsQ).ToArray(),
                    AlibiSeqLenK = (int)Math.Min(map.Capacity, int.MaxValue),
                }
                : ReferenceExtras.None;
            // The log-sum-exp of [1, headsQ, count]: in place for [batch, headsQ, sq], scattered into [headsQ, totalQ].
            int lsePerSequence = headsQ * count;
            Span<double> lse = logSumExp.IsEmpty ? Span<double>.Empty
                : packedQ ? new double[lsePerSequence] : logSumExp.Slice(b * lsePerSequence, lsePerSequence);
            AttentionReference.ForwardWithExtras(
                queries,
                keys,
                values,
                new AttentionShape(1, count, keyCount, headsQ, headsKv, headDim),
                options,
                extras,
                output.Slice(qStart, qPerSequence),
                lse);
            if (packedQ && !logSumExp.IsEmpty)
            {
                for (int h = 0; h < headsQ; h++)
                {
                    lse.Slice(h * count, count).CopyTo(logSumExp.Slice((int)((h * totalQ) + queryFirst[b]), count));
                }
            }
        }
    }

    /// <summary>
    /// FEATURES.md §4 "Arguments": tables only with new keys, both of <c>[seqlenRo, rotaryDim / 2]</c>, rotary dim even
    /// and at most the head dim, <c>seqlenRo</c> at least the cache capacity (FA2's check), and every position a
    /// query is rotated at inside the table.
    /// </summary>
    private static void CheckRotary(
        DecodeServingOptions serving, bool append, int headDim, long capacity, ReadOnlySpan<int> cacheSeqLens, int[] queryCounts,
        bool perRow)
    {
        if (serving.RotaryCos is null || serving.RotarySin is null)
        {
            throw new ArgumentException("Give both RotaryCos and RotarySin, or neither.", nameof(serving));
        }

        if (!append)
        {
            throw new ArgumentException(
                "Rotary tables are only allowed when new keys and values are appended (flash_attn_with_kvcache raises otherwise).",
                nameof(serving));
        }

        int rotaryDim = serving.RotaryDim;
        if (rotaryDim < 2 || rotaryDim % 2 != 0 || rotaryDim > headDim)
        {
            throw new ArgumentException(
                $"RotaryDim is {rotaryDim}; it must be even, 2 or more and at most the head dim {headDim}.", nameof(serving));
        }

        int half = rotaryDim / 2;
        if (serving.RotaryCos.Length != serving.RotarySin.Length || serving.RotaryCos.Length % half != 0)
        {
            throw new ArgumentException(
                $"RotaryCos has {serving.RotaryCos.Length} elements and RotarySin {serving.RotarySin.Length}: both must be " +
                $"[seqlenRo, RotaryDim / 2 = {half}].",
                nameof(serving));
        }

        long seqLenRo = serving.RotaryCos.Length / half;
        if (seqLenRo < capacity)
        {
            throw new ArgumentException(
                $"The rotary tables have {seqLenRo} positions, fewer than the cache's {capacity} (seqlen_ro must be at least the capacity).",
                nameof(serving));
        }

        for (int b = 0; b < cacheSeqLens.Length; b++)
        {
            // Each query at its own position (per row), or all at the cached length; a sequence without queries
            // rotates none (fa_decode's rule too).
            if (queryCounts[b] == 0)
            {
                continue;
            }

            long last = (long)cacheSeqLens[b] + (perRow ? queryCounts[b] : 1) - 1;
            if (last >= seqLenRo)
            {
                throw new ArgumentException(
                    $"Sequence {b}'s queries are rotated up to position {last}, past the rotary tables' {seqLenRo} positions.",
                    nameof(serving));
            }
        }
    }

    /// <summary>
    /// Every block-table entry of a page a sequence uses (from its left pad's page to its last) must name an existing
    /// block; the entries before the pad's page are never read, as in fa_decode.
    /// </summary>
    private static void CheckBlockTable(CacheMap map, int[] cacheRow, int[] leftPad, int[] totals, long numBlocks)
    {
        for (int b = 0; b < totals.Length; b++)
        {
            int pages = (int)((totals[b] + (long)map.BlockSize - 1) / map.BlockSize);
            for (int page = leftPad[b] / map.BlockSize; page < pages; page++)
            {
                int block = map.Table![(long)cacheRow[b] * map.MaxBlocks + page];
                if (block < 0 || block >= numBlocks)
                {
                    throw new ArgumentException(
                        $"blockTable[{cacheRow[b]}, {page}] is {block}, but the cache has blocks 0..{numBlocks - 1} " +
                        $"(sequence {b} uses pages 0..{pages - 1} for its {totals[b]} positions).",
                        "blockTable");
                }
            }
        }
    }

    /// <summary>
    /// A slot the call writes must not be read or written as any other (sequence, position); a sequence uses its
    /// positions <c>leftpad .. total - 1</c>.
    /// </summary>
    private static void CheckAppendSlotsAreOwned(CacheMap map, int[] cacheRow, int[] leftPad, ReadOnlySpan<int> cacheSeqLens, int[] totals)
    {
        var firstUser = new Dictionary<long, (int B, int P)>();
        var secondUser = new Dictionary<long, (int B, int P)>();
        for (int b = 0; b < totals.Length; b++)
        {
            for (int p = leftPad[b]; p < totals[b]; p++)
            {
                long slot = map.Row(cacheRow[b], p);
                if (!firstUser.TryAdd(slot, (b, p)))
                {
                    secondUser.TryAdd(slot, (b, p));
                }
            }
        }

        for (int b = 0; b < totals.Length; b++)
        {
            for (int p = cacheSeqLens[b]; p < totals[b]; p++)
            {
                long slot = map.Row(cacheRow[b], p);
                if (secondUser.TryGetValue(slot, out var second))
                {
                    var other = firstUser[slot] == (b, p) ? second : firstUser[slot];
                    string where = map.IsPaged
                        ? $"block {slot / map.BlockSize}, row {slot % map.BlockSize}"
                        : $"cache row {cacheRow[b]}";
                    throw new ArgumentException(
                        $"Sequence {b} appends position {p} into {where}, " +
                        $"which also holds position {other.P} of sequence {other.B}; appended slots must not be shared.",
                        map.IsPaged ? "blockTable" : "CacheBatchIndex");
                }
            }
        }
    }

    private static void RequireLength(int actual, long expected, string paramName, string layout)
    {
        if (actual != expected)
        {
            throw new ArgumentException($"{paramName} has {actual} elements but {layout} needs {expected}.", paramName);
        }
    }

    /// <summary>The 16-bit overloads take no fp8 settings: they belong to the Float8E4M3 cache overloads.</summary>
    private static void RequireNoFloat8(DecodeServingOptions serving)
    {
        ArgumentNullException.ThrowIfNull(serving);
        if (serving.KeyDescale is not null || serving.ValueDescale is not null || serving.QueryDataType is not null)
        {
            throw new ArgumentException(
                "KeyDescale, ValueDescale and QueryDataType describe an fp8 cache: pass the cache as Float8E4M3 spans (the fp8 overloads), or leave them null.",
                nameof(serving));
        }
    }

    /// <summary>
    /// An fp8 cache's settings (C ABI 0.13): the descale factors of the keys and the values (one per KV head, or one),
    /// and the dtype the appended elements are rounded to before they are quantized.
    /// </summary>
    private sealed class Float8Cache
    {
        private Float8Cache(float[] keyDescale, float[] valueDescale, DataType queryType)
        {
            KeyDescale = keyDescale;
            ValueDescale = valueDescale;
            QueryType = queryType;
        }

        public float[] KeyDescale { get; }

        public float[] ValueDescale { get; }

        public DataType QueryType { get; }

        /// <summary>Checks <paramref name="serving"/>'s fp8 settings: both tables of <paramref name="headsKv"/> or 1 factors, a 16-bit query dtype when appending.</summary>
        public static Float8Cache From(DecodeServingOptions serving, int headsKv, bool append)
        {
            ArgumentNullException.ThrowIfNull(serving);
            foreach (var (table, name) in new[] { (serving.KeyDescale, "KeyDescale"), (serving.ValueDescale, "ValueDescale") })
            {
                if (table is null || (table.Length != headsKv && table.Length != 1))
                {
                    throw new ArgumentException(
                        $"An fp8 cache needs {name} with one factor per KV head ({headsKv}) or one for the whole cache; it has " +
                        (table is null ? "none." : $"{table.Length}."),
                        nameof(serving));
                }
            }

            DataType? queryType = serving.QueryDataType;
            if (queryType is not (null or DataType.Float16 or DataType.BFloat16) || (append && queryType is null))
            {
                throw new ArgumentException(
                    $"QueryDataType must be Float16 or BFloat16 (q's dtype, which appended keys and values are rounded to before they are quantized); it is {queryType?.ToString() ?? "null"}.",
                    nameof(serving));
            }

            return new Float8Cache(serving.KeyDescale!, serving.ValueDescale!, queryType ?? DataType.BFloat16);
        }

        /// <summary>The cache's e4m3 values as doubles (exact; NaN bytes give NaN).</summary>
        public static double[] Widen(ReadOnlySpan<Float8E4M3> cache)
        {
            var wide = new double[cache.Length];
            for (int i = 0; i < cache.Length; i++)
            {
                wide[i] = cache[i];
            }

            return wide;
        }

        /// <summary>Writes back the elements the call changed (all e4m3 values, so exactly).</summary>
        public static void StoreChanged(double[] wide, Span<Float8E4M3> cache)
        {
            for (int i = 0; i < cache.Length; i++)
            {
                if (BitConverter.DoubleToInt64Bits(wide[i]) != BitConverter.DoubleToInt64Bits(cache[i]))
                {
                    cache[i] = (Float8E4M3)wide[i];
                }
            }
        }

        /// <summary>Quantizes one cache row (<c>[headsKv, headDim]</c>) with the factors of its heads into <paramref name="destination"/>.</summary>
        public void Quantize(ReadOnlySpan<double> row, float[] descale, int headDim, Span<double> destination)
        {
            for (int e = 0; e < row.Length; e++)
            {
                destination[e] = QuantizeForCache(row[e], descale[descale.Length == 1 ? 0 : e / headDim], QueryType);
            }
        }

        /// <summary>Turns one cache row of stored e4m3 values into the attended ones: each times its head's factor (exact in double).</summary>
        public static void Dequantize(Span<double> row, float[] descale, int headDim)
        {
            for (int e = 0; e < row.Length; e++)
            {
                row[e] *= descale[descale.Length == 1 ? 0 : e / headDim];
            }
        }
    }

    /// <summary>
    /// Where a logical (cache row, position) lives, in rows of <c>headsKv * headDim</c> elements. Contiguous:
    /// no table, <see cref="BlockSize"/> is the capacity per cache row. <see cref="CacheRows"/>: rows of the
    /// contiguous cache or of the block table.
    /// </summary>
    private readonly struct CacheMap(int[]? table, int maxBlocks, int blockSize, int cacheRows)
    {
        public int[]? Table { get; } = table;

        public int MaxBlocks { get; } = maxBlocks;

        public int BlockSize { get; } = blockSize;

        public int CacheRows { get; } = cacheRows;

        public bool IsPaged => Table is not null;

        public long Capacity => IsPaged ? (long)MaxBlocks * BlockSize : BlockSize;

        public long Row(int row, int p) => IsPaged
            ? ((long)Table![((long)row * MaxBlocks) + (p / BlockSize)] * BlockSize) + (p % BlockSize)
            : ((long)row * BlockSize) + p;
    }
}
