namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// A paged K/V layout for a variable-length batch (C ABI 0.11, <see cref="VarlenBatch.WithBlockTable"/>), built the
/// hard way for the tests: each sequence's pages get blocks in a shuffled order from a pool with spare blocks, the
/// table has spare columns, every table entry past a sequence's last page holds <see cref="Garbage"/> (a block id far
/// outside the pool, so a kernel that read one would be reported) and every pool row no sequence uses holds NaN (so a
/// kernel that used one would poison its row). Key <c>j</c> of sequence <c>b</c> is row <c>j % BlockSize</c> of block
/// <c>Table[b * Columns + j / BlockSize]</c>.
/// </summary>
internal sealed class PagedLayout
{
    /// <summary>The value of every table entry past a sequence's last page.</summary>
    public const int Garbage = int.MaxValue;

    private PagedLayout(int[] lensK, int blockSize, int numBlocks, int columns, int[] table)
    {
        LensK = lensK;
        BlockSize = blockSize;
        NumBlocks = numBlocks;
        Columns = columns;
        Table = table;
    }

    public int[] LensK { get; }

    public int BlockSize { get; }

    public int NumBlocks { get; }

    /// <summary>Columns of the table (max_blocks_per_seq): the most pages a sequence uses, plus the spare ones.</summary>
    public int Columns { get; }

    /// <summary>The block table, <c>[batch, Columns]</c> row-major.</summary>
    public int[] Table { get; }

    public int Batch => LensK.Length;

    /// <summary>
    /// A layout for key lengths <paramref name="lensK"/>: the pages the sequences use take distinct blocks, in a random
    /// order, of a pool with <paramref name="spareBlocks"/> blocks more than they need; the table has
    /// <paramref name="spareColumns"/> columns more than the longest sequence needs (at least one column in all).
    /// </summary>
    public static PagedLayout Build(Random random, int[] lensK, int blockSize, int spareBlocks = 3, int spareColumns = 2)
    {
        int[] pages = lensK.Select(n => (n + blockSize - 1) / blockSize).ToArray();
        int used = pages.Sum();
        int numBlocks = used + spareBlocks;
        int columns = Math.Max(1, pages.Max() + spareColumns);
        int[] ids = Enumerable.Range(0, numBlocks).ToArray();
        random.Shuffle(ids);
        var table = new int[lensK.Length * columns];
        Array.Fill(table, Garbage);
        int next = 0;
        for (int b = 0; b < lensK.Length; b++)
        {
            for (int p = 0; p < pages[b]; p++)
            {
                table[(b * columns) + p] = ids[next++];
            }
        }

        return new PagedLayout(lensK, blockSize, numBlocks, columns, table);
    }

    /// <summary>The table stored column-major (<c>[Columns, batch]</c> in memory), for a view with strides <c>[1, batch]</c>.</summary>
    public int[] TransposedTable()
    {
        var t = new int[Table.Length];
        for (int b = 0; b < Batch; b++)
        {
            for (int c = 0; c < Columns; c++)
            {
                t[(c * Batch) + b] = Table[(b * Columns) + c];
            }
        }

        return t;
    }

    /// <summary>
    /// The pool <c>[NumBlocks, BlockSize, heads, dim]</c> holding the packed rows <paramref name="packed"/>
    /// (<c>[Σ LensK, heads, dim]</c>, <paramref name="rowElements"/> = heads * dim per row) where the table puts them,
    /// NaN everywhere else.
    /// </summary>
    public float[] Scatter(float[] packed, int rowElements)
    {
        var pool = new float[(long)NumBlocks * BlockSize * rowElements];
        Array.Fill(pool, float.NaN);
        ForEachRow((packedRow, poolRow) =>
            Array.Copy(packed, packedRow * rowElements, pool, poolRow * rowElements, rowElements));
        return pool;
    }

    /// <summary><see cref="Scatter(float[], int)"/> for float64 rows.</summary>
    public double[] Scatter(double[] packed, int rowElements)
    {
        var pool = new double[(long)NumBlocks * BlockSize * rowElements];
        Array.Fill(pool, double.NaN);
        ForEachRow((packedRow, poolRow) =>
            Array.Copy(packed, packedRow * rowElements, pool, poolRow * rowElements, rowElements));
        return pool;
    }

    /// <summary>The pool row of key <paramref name="j"/> of sequence <paramref name="b"/>.</summary>
    public long PoolRow(int b, int j) => ((long)Table[(b * Columns) + (j / BlockSize)] * BlockSize) + (j % BlockSize);

    /// <summary>Calls <paramref name="copy"/>(packed row, pool row) for every key of every sequence.</summary>
    private void ForEachRow(Action<long, long> copy)
    {
        long packedRow = 0;
        for (int b = 0; b < Batch; b++)
        {
            for (int j = 0; j < LensK[b]; j++)
            {
                copy(packedRow++, PoolRow(b, j));
            }
        }
    }
}
