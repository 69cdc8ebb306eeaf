namespace FlashAttn;

/// <content>
/// Paged K/V of a variable-length batch (C ABI 0.11, FlashAttention-2's <c>block_table</c> of
/// <c>flash_attn_varlen_func</c>; <see cref="VarlenBatch.WithBlockTable"/>): the keys and values live in pools of
/// fixed-size blocks, <c>[numBlocks, blockSize, headsKv, headDim]</c> (<c>headDimV</c> for the values), and key <c>j</c>
/// of sequence <c>b</c> is row <c>j % blockSize</c> of block <c>blockTable[b, j / blockSize]</c>. The reference gathers
/// each sequence's keys and values through the table into packed rows and runs the variable-length reference on them,
/// so every option means exactly what it means for packed keys.
/// </content>
public static partial class AttentionReference
{
    /// <summary>
    /// Gathers the rows of a paged variable-length batch's key (or value) pool into packed rows
    /// <c>[totalK, headsKv, rowDim]</c>, sequence after sequence: row <c>j</c> of sequence <c>b</c> is row
    /// <c>j % blockSize</c> of block <c>blockTable[b, j / blockSize]</c> of <paramref name="pool"/>. Only the rows a
    /// sequence uses are read: the rest of its last block, the blocks no sequence uses and the table entries past each
    /// sequence's last page may hold anything (NaN, an out-of-range block id).
    /// </summary>
    /// <param name="pool">The pool, <c>[numBlocks, blockSize, headsKv, rowDim]</c> (numBlocks follows from its length).</param>
    /// <param name="blockTable">The block of each page of each sequence, <c>[batch, maxBlocksPerSequence]</c>, row-major.</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more); its length sets the batch.</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="rowDim">Elements per head of one row: the head dim of the keys, or of the values (1 or more).</param>
    /// <param name="blockSize">Rows per block (1 or more).</param>
    /// <returns>The packed rows, <c>[Σ seqLensK, headsKv, rowDim]</c>.</returns>
    /// <exception cref="ArgumentException">
    /// A size is below 1, the pool is not a whole number of blocks, the table is not a whole row per sequence, a length
    /// is negative or above the sequence's <c>maxBlocksPerSequence * blockSize</c> keys, or an entry a sequence uses lies
    /// outside <c>0 .. numBlocks - 1</c>.
    /// </exception>
    public static double[] GatherPaged(
        ReadOnlySpan<double> pool, ReadOnlySpan<int> blockTable, ReadOnlySpan<int> seqLensK, int headsKv, int rowDim, int blockSize)
    {
        if (headsKv < 1 || rowDim < 1 || blockSize < 1)
        {
            throw new ArgumentException(
                $"headsKv, rowDim and blockSize must be 1 or more (got {headsKv}, {rowDim}, {blockSize}).",
                headsKv < 1 ? nameof(headsKv) : rowDim < 1 ? nameof(rowDim) : nameof(blockSize));
        }

        long rowElements = (long)headsKv * rowDim;
        long blockElements = blockSize * rowElements;
        if (pool.Length % blockElements != 0)
        {
            throw new ArgumentException(
                $"pool has {pool.Length} elements, not a whole number of blocks of blockSize * headsKv * rowDim = {blockElements}.", nameof(pool));
        }

        long numBlocks = pool.Length / blockElements;
        int batch = seqLensK.Length;
        if (batch == 0 ? !blockTable.IsEmpty : blockTable.Length % batch != 0)
        {
            throw new ArgumentException(
                $"blockTable has {blockTable.Length} entries, not a whole row of [batch = {batch}, maxBlocksPerSequence].", nameof(blockTable));
        }

        int maxBlocks = batch == 0 ? 0 : blockTable.Length / batch;
        long[] cuK = PrefixSums(seqLensK, nameof(seqLensK), out _);
        var packed = new double[cuK[^1] * rowElements];
        for (int b = 0; b < batch; b++)
        {
            int length = seqLensK[b];
            if ((long)length > (long)maxBlocks * blockSize)
            {
                throw new ArgumentException(
                    $"Sequence {b} has {length} keys but its row of the block table holds {maxBlocks} blocks of {blockSize} " +
                    $"({(long)maxBlocks * blockSize} keys).", nameof(seqLensK));
            }

            for (int j = 0; j < length; j++)
            {
                int page = j / blockSize;
                int block = blockTable[(b * maxBlocks) + page];
                if (block < 0 || block >= numBlocks)
                {
                    throw new ArgumentException(
                        $"blockTable[{b}, {page}] is {block}, which sequence {b} uses, but the pool has blocks 0..{numBlocks - 1}.",
                        nameof(blockTable));
                }

                long from = ((long)block * blockSize + (j % blockSize)) * rowElements;
                pool.Slice((int)from, (int)rowElements).CopyTo(packed.AsSpan((int)((cuK[b] + j) * rowElements), (int)rowElements));
            }
        }

        return packed;
    }

    /// <summary>
    /// Runs attention forward in float64 over a variable-length batch whose keys and values are paged (C ABI 0.11,
    /// <see cref="VarlenBatch.WithBlockTable"/>): the keys and values of each sequence are gathered through
    /// <paramref name="blockTable"/> (<see cref="GatherPaged"/>) and attended to exactly as
    /// <see cref="ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, Span{double}, Span{double})"/>
    /// attends to packed ones.
    /// </summary>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c> with <c>totalQ = Σ seqLensQ</c>.</param>
    /// <param name="kPool">Key pool, <c>[numBlocks, blockSize, headsKv, headDim]</c>.</param>
    /// <param name="vPool">Value pool, <c>[numBlocks, blockSize, headsKv, headDim]</c> (kPool's blocks).</param>
    /// <param name="blockTable">
    /// Block of each page of each sequence, <c>[batch, maxBlocksPerSequence]</c>, row-major; the entries of the pages a
    /// sequence uses must lie in <c>0 .. numBlocks - 1</c>, the others are ignored.
    /// </param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more), as many as <paramref name="seqLensQ"/>.</param>
    /// <param name="headsQ">Query heads (1 or more), a multiple of <paramref name="headsKv"/>.</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more).</param>
    /// <param name="blockSize">Rows per block (1 or more; the GPU forward serves multiples of 128).</param>
    /// <param name="options">Mask, alignment, window, softcap and scale (<see cref="AttentionOptions.KernelPath"/> is ignored).</param>
    /// <param name="output">Receives the output, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[headsQ, totalQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">
    /// As <see cref="GatherPaged"/> for the pools and the table (a pool that is not whole blocks, a length past the
    /// table's capacity, a used entry out of range; the value pool must have the key pool's blocks), and as the packed
    /// reference for the rest.
    /// </exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void ForwardVarlenPaged(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> kPool,
        ReadOnlySpan<double> vPool,
        ReadOnlySpan<int> blockTable,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        int blockSize,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp) =>
        ForwardVarlenPaged(
            q, kPool, vPool, blockTable, seqLensQ, seqLensK, headsQ, headsKv, headDim, headDim, blockSize, options, default, default, output,
            logSumExp);

    /// <summary>
    /// <see cref="ForwardVarlenPaged(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, int, AttentionOptions, Span{double}, Span{double})"/>
    /// with a V head dim of its own, learnable sinks and ALiBi slopes (each optional: an empty span is none), as
    /// <see cref="ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, int, AttentionOptions, ReadOnlySpan{double}, ReadOnlySpan{double}, Span{double}, Span{double})"/>
    /// over the gathered keys and values.
    /// </summary>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="kPool">Key pool, <c>[numBlocks, blockSize, headsKv, headDim]</c>.</param>
    /// <param name="vPool">Value pool, <c>[numBlocks, blockSize, headsKv, headDimV]</c> (kPool's blocks).</param>
    /// <param name="blockTable">Block of each page of each sequence, <c>[batch, maxBlocksPerSequence]</c>; only the used entries count.</param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more).</param>
    /// <param name="headsQ">Query heads.</param>
    /// <param name="headsKv">Key/value heads.</param>
    /// <param name="headDim">Head dimension of q and k.</param>
    /// <param name="headDimV">Head dimension of v and the output (1 or more; <paramref name="headDim"/> for the usual case).</param>
    /// <param name="blockSize">Rows per block (1 or more).</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="sinks">One sink logit per query head, <c>[headsQ]</c>, or empty for none.</param>
    /// <param name="alibiSlopes">ALiBi slopes, <c>[headsQ]</c> or <c>[sequences, headsQ]</c>, or empty for none.</param>
    /// <param name="output">Receives the output, <c>[totalQ, headsQ, headDimV]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[headsQ, totalQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">The pools, the table or the sizes are inconsistent (see the other overload).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="headDimV"/> is below 1.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void ForwardVarlenPaged(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> kPool,
        ReadOnlySpan<double> vPool,
        ReadOnlySpan<int> blockTable,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        int headDimV,
        int blockSize,
        AttentionOptions options,
        ReadOnlySpan<double> sinks,
        ReadOnlySpan<double> alibiSlopes,
        Span<double> output,
        Span<double> logSumExp)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(headDimV, 1);
        if (headsKv >= 1 && headDim >= 1 && blockSize >= 1 && kPool.Length % ((long)blockSize * headsKv * headDim) == 0)
        {
            // The value pool has the key pool's blocks (GatherPaged checks each pool on its own).
            long blocks = kPool.Length / ((long)blockSize * headsKv * headDim);
            if (vPool.Length != blocks * blockSize * headsKv * headDimV)
            {
                throw new ArgumentException(
                    $"vPool has {vPool.Length} elements but kPool's {blocks} blocks of [blockSize={blockSize}, headsKv={headsKv}, headDimV={headDimV}] " +
                    $"need {blocks * blockSize * headsKv * headDimV}.", nameof(vPool));
            }
        }

        if (seqLensQ.Length != seqLensK.Length)
        {
            throw new ArgumentException(
                $"seqLensQ has {seqLensQ.Length} sequences but seqLensK has {seqLensK.Length}.", nameof(seqLensK));
        }

        double[] k = GatherPaged(kPool, blockTable, seqLensK, headsKv, headDim, blockSize);
        double[] v = GatherPaged(vPool, blockTable, seqLensK, headsKv, headDimV, blockSize);
        ForwardVarlenWithExtras(
            q, k, v, seqLensQ, seqLensK, headsQ, headsKv, headDim, options,
            SinksAndAlibi(sinks, alibiSlopes) with { ValueHeadDim = headDimV }, output, logSumExp);
    }
}
