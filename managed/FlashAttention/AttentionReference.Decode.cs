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
/// either contiguous, <c>[batch, cacheCapacity, headsKv, headDim]</c> (<see cref="ForwardContiguous"/>), or paged,
/// <c>[numBlocks, blockSize, headsKv, headDim]</c> with an int32 block table <c>[batch, maxBlocksPerSequence]</c>
/// (<see cref="ForwardPaged"/>): logical position <c>p</c> of sequence <c>b</c> lives in physical block
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
    {
        int batch = cacheSeqLens.Length;
        ValidateSizes(options, batch, seqLenNew, headsQ, headsKv, headDim);
        if (cacheCapacity < 0)
        {
            throw new ArgumentException($"cacheCapacity must be 0 or more (got {cacheCapacity}).", nameof(cacheCapacity));
        }

        long cacheRows = (long)batch * cacheCapacity;
        RequireLength(kCache.Length, cacheRows * headsKv * headDim, nameof(kCache), "[batch, cacheCapacity, headsKv, headDim]");
        RequireLength(vCache.Length, cacheRows * headsKv * headDim, nameof(vCache), "[batch, cacheCapacity, headsKv, headDim]");
        var map = new CacheMap(null, 0, cacheCapacity);
        Run(q, kCache, vCache, cacheSeqLens, kNew, vNew, seqLenNew, headsQ, headsKv, headDim, map, 0, options, output, logSumExp);
    }

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
    {
        int batch = cacheSeqLens.Length;
        ValidateSizes(options, batch, seqLenNew, headsQ, headsKv, headDim);
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
        int maxBlocks = 0;
        if (batch == 0)
        {
            RequireLength(blockTable.Length, 0, nameof(blockTable), "[batch, maxBlocksPerSequence] with batch 0");
        }
        else
        {
            if (blockTable.Length % batch != 0)
            {
                throw new ArgumentException(
                    $"blockTable has {blockTable.Length} entries, not a whole row of [batch = {batch}, maxBlocksPerSequence].",
                    nameof(blockTable));
            }

            maxBlocks = blockTable.Length / batch;
        }

        var map = new CacheMap(blockTable.ToArray(), maxBlocks, blockSize);
        Run(q, kCache, vCache, cacheSeqLens, kNew, vNew, seqLenNew, headsQ, headsKv, headDim, map, numBlocks, options, output, logSumExp);
    }

    private static void ValidateSizes(AttentionOptions options, int batch, int seqLenNew, int headsQ, int headsKv, int headDim)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate(nameof(options));
        if ((options.Causal || options.HasWindow) && options.CausalAlignment != CausalAlignment.BottomRight)
        {
            throw new ArgumentException(
                "Decoding places the causal mask and the window bottom-right (new token i sits at position " +
                "total - seqLenNew + i); CausalAlignment must be BottomRight when either is set.",
                nameof(options));
        }

        if (seqLenNew < 1)
        {
            throw new ArgumentException($"seqLenNew must be 1 or more (got {seqLenNew}).", nameof(seqLenNew));
        }

        new AttentionShape(batch, seqLenNew, 0, headsQ, headsKv, headDim).Validate(nameof(headsQ));
    }

    private static void Run(
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
        CacheMap map,
        long numBlocks,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp)
    {
        int batch = cacheSeqLens.Length;
        long qElements = (long)batch * seqLenNew * headsQ * headDim;
        long newElements = (long)batch * seqLenNew * headsKv * headDim;
        RequireLength(q.Length, qElements, nameof(q), "[batch, seqLenNew, headsQ, headDim]");
        RequireLength(output.Length, qElements, nameof(output), "[batch, seqLenNew, headsQ, headDim]");
        if (!logSumExp.IsEmpty)
        {
            RequireLength(logSumExp.Length, (long)batch * headsQ * seqLenNew, nameof(logSumExp), "[batch, headsQ, seqLenNew]");
        }

        if (kNew.IsEmpty != vNew.IsEmpty)
        {
            throw new ArgumentException(
                $"kNew has {kNew.Length} elements and vNew {vNew.Length}: give both (to append) or neither.",
                kNew.IsEmpty ? nameof(kNew) : nameof(vNew));
        }

        bool append = !kNew.IsEmpty;
        if (append)
        {
            RequireLength(kNew.Length, newElements, nameof(kNew), "[batch, seqLenNew, headsKv, headDim]");
            RequireLength(vNew.Length, newElements, nameof(vNew), "[batch, seqLenNew, headsKv, headDim]");
        }

        int added = append ? seqLenNew : 0;
        var totals = new int[batch];
        for (int b = 0; b < batch; b++)
        {
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
                        ? $"Sequence {b} holds {cached} tokens and appends {seqLenNew}, {total} in all, but its cache has room for {map.Capacity}."
                        : $"cacheSeqLens[{b}] is {cached}, more than the {map.Capacity} positions its cache has.",
                    nameof(cacheSeqLens));
            }

            totals[b] = (int)total;
        }

        if (map.IsPaged)
        {
            CheckBlockTable(map, totals, numBlocks);
            if (append)
            {
                CheckAppendSlotsAreOwned(map, cacheSeqLens, totals);
            }
        }

        int rowElements = headsKv * headDim;
        if (append)
        {
            for (int b = 0; b < batch; b++)
            {
                for (int i = 0; i < seqLenNew; i++)
                {
                    long destination = map.Row(b, cacheSeqLens[b] + i) * rowElements;
                    long source = ((long)b * seqLenNew + i) * rowElements;
                    kNew.Slice((int)source, rowElements).CopyTo(kCache.Slice((int)destination, rowElements));
                    vNew.Slice((int)source, rowElements).CopyTo(vCache.Slice((int)destination, rowElements));
                }
            }
        }

        int qPerSequence = seqLenNew * headsQ * headDim;
        int lsePerSequence = headsQ * seqLenNew;
        for (int b = 0; b < batch; b++)
        {
            int total = totals[b];
            var keys = new double[(long)total * rowElements];
            var values = new double[keys.Length];
            for (int p = 0; p < total; p++)
            {
                int source = (int)(map.Row(b, p) * rowElements);
                kCache.Slice(source, rowElements).CopyTo(keys.AsSpan(p * rowElements, rowElements));
                vCache.Slice(source, rowElements).CopyTo(values.AsSpan(p * rowElements, rowElements));
            }

            AttentionReference.Forward(
                q.Slice(b * qPerSequence, qPerSequence),
                keys,
                values,
                new AttentionShape(1, seqLenNew, total, headsQ, headsKv, headDim),
                options,
                output.Slice(b * qPerSequence, qPerSequence),
                logSumExp.IsEmpty ? Span<double>.Empty : logSumExp.Slice(b * lsePerSequence, lsePerSequence));
        }
    }

    /// <summary>Every block-table entry of a page a sequence uses must name an existing block.</summary>
    private static void CheckBlockTable(CacheMap map, int[] totals, long numBlocks)
    {
        for (int b = 0; b < totals.Length; b++)
        {
            int pages = (int)((totals[b] + (long)map.BlockSize - 1) / map.BlockSize);
            for (int page = 0; page < pages; page++)
            {
                int block = map.Table![(long)b * map.MaxBlocks + page];
                if (block < 0 || block >= numBlocks)
                {
                    throw new ArgumentException(
                        $"blockTable[{b}, {page}] is {block}, but the cache has blocks 0..{numBlocks - 1} " +
                        $"(sequence {b} uses pages 0..{pages - 1} for its {totals[b]} positions).",
                        "blockTable");
                }
            }
        }
    }

    /// <summary>A slot the call writes must not be read or written as any other (sequence, position).</summary>
    private static void CheckAppendSlotsAreOwned(CacheMap map, ReadOnlySpan<int> cacheSeqLens, int[] totals)
    {
        var firstUser = new Dictionary<long, (int B, int P)>();
        var secondUser = new Dictionary<long, (int B, int P)>();
        for (int b = 0; b < totals.Length; b++)
        {
            for (int p = 0; p < totals[b]; p++)
            {
                long slot = map.Row(b, p);
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
                long slot = map.Row(b, p);
                if (secondUser.TryGetValue(slot, out var second))
                {
                    var other = firstUser[slot] == (b, p) ? second : firstUser[slot];
                    throw new ArgumentException(
                        $"Sequence {b} appends position {p} into block {slot / map.BlockSize}, row {slot % map.BlockSize}, " +
                        $"which also holds position {other.P} of sequence {other.B}; appended slots must not be shared.",
                        "blockTable");
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

    /// <summary>
    /// Where a logical (sequence, position) lives, in rows of <c>headsKv * headDim</c> elements. Contiguous:
    /// no table, <see cref="BlockSize"/> is the capacity per sequence.
    /// </summary>
    private readonly struct CacheMap(int[]? table, int maxBlocks, int blockSize)
    {
        public int[]? Table { get; } = table;

        public int MaxBlocks { get; } = maxBlocks;

        public int BlockSize { get; } = blockSize;

        public bool IsPaged => Table is not null;

        public long Capacity => IsPaged ? (long)MaxBlocks * BlockSize : BlockSize;

        public long Row(int b, int p) => IsPaged
            ? ((long)Table![((long)b * MaxBlocks) + (p / BlockSize)] * BlockSize) + (p % BlockSize)
            : ((long)b * BlockSize) + p;
    }
}
