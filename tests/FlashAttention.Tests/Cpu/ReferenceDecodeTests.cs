using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The float64 decode reference (<see cref="DecodeReference"/>): contiguous and paged caches against each other,
/// the append into the cache slot by slot, slots past the end never read, and the attention itself against the
/// forward reference and the tests' naive formula on keys the tests gather themselves.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ReferenceDecodeTests
{
    // Same bar as the forward reference's tests: two float64 computations with different summation orders.
    private const double Tolerance = 1e-11;

    /// <summary>
    /// One decode problem as the tests see it: the queries, the optional new rows, and every sequence's keys and
    /// values in logical order (the cached ones followed by the new ones), from which each cache layout is built.
    /// </summary>
    private sealed class Case
    {
        public required int Batch { get; init; }

        public required int SeqNew { get; init; }

        public required int HeadsQ { get; init; }

        public required int HeadsKv { get; init; }

        public required int HeadDim { get; init; }

        public required int[] Lens { get; init; }

        public required double[] Q { get; init; }

        public double[]? KNew { get; init; }

        public double[]? VNew { get; init; }

        /// <summary>Per sequence, <c>[total, headsKv, headDim]</c>: the keys attention sees, in logical order.</summary>
        public required double[][] LogicalK { get; init; }

        public required double[][] LogicalV { get; init; }

        public bool Append => KNew is not null;

        public int Row => HeadsKv * HeadDim;

        public int Total(int b) => Lens[b] + (Append ? SeqNew : 0);

        public int MaxTotal => Enumerable.Range(0, Batch).Select(Total).DefaultIfEmpty(0).Max();

        public override string ToString() =>
            $"B={Batch} Snew={SeqNew} Hq={HeadsQ} Hkv={HeadsKv} D={HeadDim} lens=[{string.Join(",", Lens)}] append={Append}";
    }

    /// <summary>A paged cache: blocks, the block table and its geometry.</summary>
    private sealed record Paged(double[] K, double[] V, int[] Table, int BlockSize, int MaxBlocks)
    {
        public int Slot(int b, int p) => (Table[(b * MaxBlocks) + (p / BlockSize)] * BlockSize) + (p % BlockSize);
    }

    private static double[] Normal(Random random, int n) => TestRandom.Normal(random, n).Select(x => (double)x).ToArray();

    private static Case MakeCase(Random random, int batch, int seqNew, int headsQ, int headsKv, int headDim, int[] lens, bool append)
    {
        int row = headsKv * headDim;
        double[]? kNew = append ? Normal(random, batch * seqNew * row) : null;
        double[]? vNew = append ? Normal(random, batch * seqNew * row) : null;
        var logicalK = new double[batch][];
        var logicalV = new double[batch][];
        for (int b = 0; b < batch; b++)
        {
            var cachedK = Normal(random, lens[b] * row);
            var cachedV = Normal(random, lens[b] * row);
            logicalK[b] = append ? [.. cachedK, .. kNew.AsSpan(b * seqNew * row, seqNew * row)] : cachedK;
            logicalV[b] = append ? [.. cachedV, .. vNew.AsSpan(b * seqNew * row, seqNew * row)] : cachedV;
        }

        return new Case
        {
            Batch = batch,
            SeqNew = seqNew,
            HeadsQ = headsQ,
            HeadsKv = headsKv,
            HeadDim = headDim,
            Lens = lens,
            Q = Normal(random, batch * seqNew * headsQ * headDim),
            KNew = kNew,
            VNew = vNew,
            LogicalK = logicalK,
            LogicalV = logicalV,
        };
    }

    /// <summary>The same case with other new rows (the cached rows kept).</summary>
    private static Case WithNewRows(Case c, double[] kNew, double[] vNew)
    {
        int row = c.Row, per = c.SeqNew * row;
        return new Case
        {
            Batch = c.Batch,
            SeqNew = c.SeqNew,
            HeadsQ = c.HeadsQ,
            HeadsKv = c.HeadsKv,
            HeadDim = c.HeadDim,
            Lens = c.Lens,
            Q = c.Q,
            KNew = kNew,
            VNew = vNew,
            LogicalK = Enumerable.Range(0, c.Batch).Select(b => (double[])[.. c.LogicalK[b].AsSpan(0, c.Lens[b] * row), .. kNew.AsSpan(b * per, per)]).ToArray(),
            LogicalV = Enumerable.Range(0, c.Batch).Select(b => (double[])[.. c.LogicalV[b].AsSpan(0, c.Lens[b] * row), .. vNew.AsSpan(b * per, per)]).ToArray(),
        };
    }

    private static Case RandomCase(Random random, bool append, int maxLen = 40)
    {
        int batch = random.Next(1, 5);
        int hkv = random.Next(1, 3);
        int[] lens = Enumerable.Range(0, batch).Select(_ => random.Next(0, maxLen)).ToArray();
        return MakeCase(random, batch, random.Next(1, 5), hkv * random.Next(1, 4), hkv, random.Next(1, 17), lens, append);
    }

    /// <summary>A contiguous cache of <paramref name="capacity"/> positions per sequence: cached rows, garbage elsewhere.</summary>
    private static (double[] K, double[] V) Contiguous(Case c, int capacity, Func<double> garbage)
    {
        int row = c.Row;
        var k = new double[c.Batch * capacity * row];
        var v = new double[k.Length];
        for (int x = 0; x < k.Length; x++)
        {
            k[x] = garbage();
            v[x] = garbage();
        }

        for (int b = 0; b < c.Batch; b++)
        {
            c.LogicalK[b].AsSpan(0, c.Lens[b] * row).CopyTo(k.AsSpan(b * capacity * row));
            c.LogicalV[b].AsSpan(0, c.Lens[b] * row).CopyTo(v.AsSpan(b * capacity * row));
        }

        return (k, v);
    }

    /// <summary>
    /// A paged cache whose table is a random permutation of the blocks (plus <paramref name="spareBlocks"/> never
    /// in the table); cached rows in place, garbage elsewhere; unused table entries -1 when asked.
    /// </summary>
    private static Paged MakePaged(
        Case c, Random random, int blockSize, int maxBlocks, int spareBlocks, Func<double> garbage, bool unusedEntriesInvalid)
    {
        int row = c.Row;
        int numBlocks = (c.Batch * maxBlocks) + spareBlocks;
        int[] permutation = Enumerable.Range(0, numBlocks).ToArray();
        random.Shuffle(permutation);
        int[] table = permutation.AsSpan(0, c.Batch * maxBlocks).ToArray();
        if (unusedEntriesInvalid)
        {
            for (int b = 0; b < c.Batch; b++)
            {
                int used = (c.Total(b) + blockSize - 1) / blockSize;
                table.AsSpan((b * maxBlocks) + used, maxBlocks - used).Fill(-1);
            }
        }

        var k = new double[numBlocks * blockSize * row];
        var v = new double[k.Length];
        for (int x = 0; x < k.Length; x++)
        {
            k[x] = garbage();
            v[x] = garbage();
        }

        var paged = new Paged(k, v, table, blockSize, maxBlocks);
        for (int b = 0; b < c.Batch; b++)
        {
            for (int p = 0; p < c.Lens[b]; p++)
            {
                c.LogicalK[b].AsSpan(p * row, row).CopyTo(k.AsSpan(paged.Slot(b, p) * row));
                c.LogicalV[b].AsSpan(p * row, row).CopyTo(v.AsSpan(paged.Slot(b, p) * row));
            }
        }

        return paged;
    }

    private static (double[] Out, double[] Lse) Poisoned(Case c)
    {
        var output = new double[c.Q.Length];
        var lse = new double[c.Batch * c.HeadsQ * c.SeqNew];
        output.AsSpan().Fill(double.NaN);
        lse.AsSpan().Fill(double.NaN);
        return (output, lse);
    }

    private static (double[] Out, double[] Lse) RunContiguous(Case c, double[] k, double[] v, int capacity, AttentionOptions options)
    {
        var (output, lse) = Poisoned(c);
        DecodeReference.ForwardContiguous(
            c.Q, k, v, c.Lens, c.KNew, c.VNew, c.SeqNew, c.HeadsQ, c.HeadsKv, c.HeadDim, capacity, options, output, lse);
        return (output, lse);
    }

    private static (double[] Out, double[] Lse) RunPaged(Case c, Paged paged, AttentionOptions options)
    {
        var (output, lse) = Poisoned(c);
        DecodeReference.ForwardPaged(
            c.Q, paged.K, paged.V, paged.Table, c.Lens, c.KNew, c.VNew, c.SeqNew, c.HeadsQ, c.HeadsKv, c.HeadDim,
            paged.BlockSize, options, output, lse);
        return (output, lse);
    }

    /// <summary>Per sequence, the forward reference on the logical keys (the tests' own gather), concatenated.</summary>
    private static (double[] Out, double[] Lse) ForwardOnGathered(Case c, AttentionOptions options)
    {
        var (output, lse) = Poisoned(c);
        int qPer = c.SeqNew * c.HeadsQ * c.HeadDim, lsePer = c.HeadsQ * c.SeqNew;
        for (int b = 0; b < c.Batch; b++)
        {
            AttentionReference.Forward(
                c.Q.AsSpan(b * qPer, qPer), c.LogicalK[b], c.LogicalV[b],
                new AttentionShape(1, c.SeqNew, c.Total(b), c.HeadsQ, c.HeadsKv, c.HeadDim), options,
                output.AsSpan(b * qPer, qPer), lse.AsSpan(b * lsePer, lsePer));
        }

        return (output, lse);
    }

    /// <summary>Per sequence, the naive formula (bottom-right) on the logical keys, concatenated.</summary>
    private static (double[] Out, double[] Lse) Naive(Case c, AttentionOptions options)
    {
        var output = new List<double>();
        var lse = new List<double>();
        int qPer = c.SeqNew * c.HeadsQ * c.HeadDim;
        for (int b = 0; b < c.Batch; b++)
        {
            var dims = new AttentionDims(1, c.SeqNew, c.Total(b), c.HeadsQ, c.HeadsKv, c.HeadDim);
            var (o, l) = NaiveAttention.Forward64(
                c.Q.AsSpan(b * qPer, qPer), c.LogicalK[b], c.LogicalV[b], dims, options.Causal, false,
                options.WindowLeft, options.WindowRight, options.Softcap ?? 0, options.EffectiveScale(c.HeadDim));
            output.AddRange(o);
            lse.AddRange(l);
        }

        return (output.ToArray(), lse.ToArray());
    }

    private static void AssertBitwiseEqual(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, string what, string context) =>
        ElementAsserts.BitwiseEqual(actual, expected, what, context);

    private static void AssertClose(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, string what, string context) =>
        ElementAsserts.Close(actual, expected, Tolerance, what, context);

    private static void AssertNoNaN(double[] values, string what, string context)
    {
        int bad = Array.FindIndex(values, double.IsNaN);
        Assert.That(bad, Is.EqualTo(-1), $"{what}[{bad}] is NaN ({context})");
    }

    /// <summary>Checks the result against the forward reference (exactly) and the naive formula (to rounding).</summary>
    private static void AssertMatchesReferences((double[] Out, double[] Lse) actual, Case c, AttentionOptions options, string context)
    {
        var (forwardOut, forwardLse) = ForwardOnGathered(c, options);
        AssertBitwiseEqual(actual.Out, forwardOut, "output vs Forward on gathered keys", context);
        AssertBitwiseEqual(actual.Lse, forwardLse, "lse vs Forward on gathered keys", context);
        var (naiveOut, naiveLse) = Naive(c, options);
        AssertClose(actual.Out, naiveOut, "output vs naive formula", context);
        AssertClose(actual.Lse, naiveLse, "lse vs naive formula", context);
    }

    private static AttentionOptions RandomOptions(Random random) => new()
    {
        Causal = random.Next(2) == 0,
        WindowLeft = random.Next(3) == 0 ? random.Next(0, 10) : null,
        WindowRight = random.Next(4) == 0 ? random.Next(0, 5) : null,
        Softcap = random.Next(3) == 0 ? (float)(0.5 + (5 * random.NextDouble())) : null,
        SoftmaxScale = random.Next(2) == 0 ? (float)(0.2 + random.NextDouble()) : null,
    };

    [Test]
    public void PagedWithShuffledBlockTableEqualsContiguous([Values(false, true)] bool append)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 8; iteration++)
        {
            var c = RandomCase(random, append);
            var options = RandomOptions(random);
            int blockSize = random.Next(1, 9);
            int maxBlocks = ((c.MaxTotal + blockSize - 1) / blockSize) + random.Next(0, 3);
            int capacity = c.MaxTotal + random.Next(0, 5);
            string context = $"seed {seed}, iteration {iteration}, {c}, block {blockSize} x {maxBlocks}, {options}";

            var (k, v) = Contiguous(c, capacity, () => double.NaN);
            var paged = MakePaged(c, random, blockSize, maxBlocks, random.Next(0, 4), () => double.NaN, random.Next(2) == 0);
            var contiguous = RunContiguous(c, k, v, capacity, options);
            var fromPages = RunPaged(c, paged, options);

            AssertBitwiseEqual(fromPages.Out, contiguous.Out, "paged output vs contiguous", context);
            AssertBitwiseEqual(fromPages.Lse, contiguous.Lse, "paged lse vs contiguous", context);
            AssertMatchesReferences(contiguous, c, options, context);
            for (int b = 0; b < c.Batch; b++)
            {
                for (int p = 0; p < c.Total(b); p++)
                {
                    double[] pagedRow = paged.K.AsSpan(paged.Slot(b, p) * c.Row, c.Row).ToArray();
                    double[] contiguousRow = k.AsSpan(((b * capacity) + p) * c.Row, c.Row).ToArray();
                    AssertBitwiseEqual(pagedRow, contiguousRow, $"key row of sequence {b} position {p}, paged vs contiguous", context);
                }
            }
        }
    }

    [Test]
    public void SlotsPastTheEndAreNeverRead([Values(false, true)] bool paged, [Values(false, true)] bool append)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 8; iteration++)
        {
            var c = RandomCase(random, append);
            var options = RandomOptions(random);
            int blockSize = random.Next(1, 9);
            int maxBlocks = ((c.MaxTotal + blockSize - 1) / blockSize) + random.Next(1, 3);
            int capacity = c.MaxTotal + random.Next(1, 6);
            int spare = random.Next(1, 4);
            string context = $"seed {seed}, iteration {iteration}, {c}, paged {paged}, {options}";

            // The same problem twice: once with NaN in every slot past the end (and in spare blocks, and -1 in
            // unused table entries), once with finite garbage there. The same permutation is used for both.
            int tableSeed = random.Next();
            (double[] Out, double[] Lse) Run(Func<double> garbage, bool invalidEntries)
            {
                if (paged)
                {
                    return RunPaged(c, MakePaged(c, new Random(tableSeed), blockSize, maxBlocks, spare, garbage, invalidEntries), options);
                }

                var (k, v) = Contiguous(c, capacity, garbage);
                return RunContiguous(c, k, v, capacity, options);
            }

            var withNaN = Run(() => double.NaN, invalidEntries: true);
            var withGarbage = Run(() => (random.NextDouble() - 0.5) * 1e3, invalidEntries: false);
            AssertNoNaN(withNaN.Out, "output", context);
            AssertNoNaN(withNaN.Lse, "lse", context);
            AssertBitwiseEqual(withNaN.Out, withGarbage.Out, "output with NaN past the end vs finite garbage", context);
            AssertBitwiseEqual(withNaN.Lse, withGarbage.Lse, "lse with NaN past the end vs finite garbage", context);
            AssertMatchesReferences(withNaN, c, options, context);
        }
    }

    public static IEnumerable<TestCaseData> AppendCases()
    {
        yield return new TestCaseData("contiguous").SetArgDisplayNames("contiguous");
        yield return new TestCaseData("paged-any").SetArgDisplayNames("paged, anywhere");
        yield return new TestCaseData("paged-ends-at-page-end").SetArgDisplayNames("paged, ends exactly at a page end");
        yield return new TestCaseData("paged-crosses-page").SetArgDisplayNames("paged, crosses a page boundary");
        yield return new TestCaseData("paged-starts-at-page-start").SetArgDisplayNames("paged, starts a fresh page");
    }

    [TestCaseSource(nameof(AppendCases))]
    public void AppendWritesExactlyTheNewRows(string where)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 6; iteration++)
        {
            int batch = random.Next(1, 5), hkv = random.Next(1, 3), headDim = random.Next(1, 9);
            int blockSize = random.Next(2, 9);
            int seqNew = where == "paged-crosses-page" ? random.Next(2, blockSize + 3) : random.Next(1, blockSize + 1);
            var lens = new int[batch];
            for (int b = 0; b < batch; b++)
            {
                int pages = random.Next(0, 4);
                lens[b] = where switch
                {
                    // The last new row lands on the last row of a page.
                    "paged-ends-at-page-end" => ((pages + ((seqNew + blockSize - 1) / blockSize)) * blockSize) - seqNew,
                    // The first new row is not the first of its page, and the last lands on a later page.
                    "paged-crosses-page" => (pages * blockSize) + blockSize - random.Next(1, Math.Min(seqNew, blockSize)),
                    "paged-starts-at-page-start" => pages * blockSize,
                    _ => random.Next(0, 30),
                };
            }

            var c = MakeCase(random, batch, seqNew, hkv * random.Next(1, 3), hkv, headDim, lens, append: true);
            var options = RandomOptions(random);
            string context = $"seed {seed}, iteration {iteration}, {where}, {c}, block {blockSize}";
            int row = c.Row;
            for (int b = 0; b < batch; b++)
            {
                int first = lens[b], last = lens[b] + seqNew - 1;
                switch (where)
                {
                    case "paged-ends-at-page-end":
                        Assert.That((last + 1) % blockSize, Is.Zero, context);
                        break;
                    case "paged-crosses-page":
                        Assert.That(first / blockSize, Is.LessThan(last / blockSize), context);
                        Assert.That(first % blockSize, Is.Not.Zero, context);
                        break;
                    case "paged-starts-at-page-start":
                        Assert.That(first % blockSize, Is.Zero, context);
                        break;
                }
            }

            // The caches start full of random values (not NaN: a NaN written where a NaN was would go unseen).
            double[] beforeK, beforeV, afterK, afterV;
            Func<int, int, int> slot;
            (double[] Out, double[] Lse) result;
            if (where == "contiguous")
            {
                int capacity = c.MaxTotal + random.Next(0, 4);
                (afterK, afterV) = Contiguous(c, capacity, () => random.NextDouble() + 7);
                slot = (b, p) => (b * capacity) + p;
                beforeK = (double[])afterK.Clone();
                beforeV = (double[])afterV.Clone();
                result = RunContiguous(c, afterK, afterV, capacity, options);
            }
            else
            {
                int maxBlocks = ((c.MaxTotal + blockSize - 1) / blockSize) + random.Next(0, 2);
                var paged = MakePaged(c, random, blockSize, maxBlocks, random.Next(0, 3), () => random.NextDouble() + 7, false);
                (afterK, afterV) = (paged.K, paged.V);
                slot = paged.Slot;
                beforeK = (double[])afterK.Clone();
                beforeV = (double[])afterV.Clone();
                result = RunPaged(c, paged, options);
            }

            double[] expectedK = (double[])beforeK.Clone(), expectedV = (double[])beforeV.Clone();
            for (int b = 0; b < batch; b++)
            {
                for (int i = 0; i < seqNew; i++)
                {
                    int destination = slot(b, lens[b] + i) * row, source = ((b * seqNew) + i) * row;
                    c.KNew.AsSpan(source, row).CopyTo(expectedK.AsSpan(destination));
                    c.VNew.AsSpan(source, row).CopyTo(expectedV.AsSpan(destination));
                }
            }

            Assert.That(afterK, Is.Not.EqualTo(beforeK), $"the key cache did not change ({context})");
            AssertBitwiseEqual(afterK, expectedK, "key cache after the append", context);
            AssertBitwiseEqual(afterV, expectedV, "value cache after the append", context);
            AssertMatchesReferences(result, c, options, context);
        }
    }

    [Test]
    public void MatchesForwardOnGatheredKeys([Values(false, true)] bool paged, [Values(false, true)] bool append)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 10; iteration++)
        {
            var c = RandomCase(random, append, maxLen: 60);
            var options = RandomOptions(random);
            string context = $"seed {seed}, iteration {iteration}, {c}, paged {paged}, {options}";
            var result = Run(random, c, paged, options);
            AssertMatchesReferences(result, c, options, context);
        }
    }

    [Test]
    public void RaggedLengthsIncludingEmptyAndSingle([Values(false, true)] bool paged, [Values(false, true)] bool append)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 6; iteration++)
        {
            int[] lens = [0, 1, random.Next(2, 9), random.Next(9, 50), 0, 1];
            random.Shuffle(lens);
            int hkv = random.Next(1, 3);
            var c = MakeCase(random, lens.Length, random.Next(1, 4), hkv * random.Next(1, 3), hkv, random.Next(1, 12), lens, append);
            var options = RandomOptions(random) with { WindowLeft = null, WindowRight = null };
            string context = $"seed {seed}, iteration {iteration}, {c}, paged {paged}, {options}";
            var result = Run(random, c, paged, options);
            AssertMatchesReferences(result, c, options, context);
            for (int b = 0; b < c.Batch; b++)
            {
                for (int i = 0; i < c.SeqNew; i++)
                {
                    // Bottom-right: new token i sits at position total - seqNew + i; without the causal mask it sees
                    // every key. A row that sees none (an empty cache, or more new tokens than keys when nothing is
                    // appended) gets output 0 and lse +infinity, as the forward pass defines it.
                    bool seesSomething = c.Total(b) > 0 && (!options.Causal || c.Total(b) - c.SeqNew + i >= 0);
                    for (int h = 0; h < c.HeadsQ; h++)
                    {
                        double[] outRow = result.Out.AsSpan((((b * c.SeqNew) + i) * c.HeadsQ + h) * c.HeadDim, c.HeadDim).ToArray();
                        double lse = result.Lse[((b * c.HeadsQ) + h) * c.SeqNew + i];
                        string where = $"sequence {b} (total {c.Total(b)}) new token {i} head {h} ({context})";
                        if (seesSomething)
                        {
                            Assert.That(double.IsFinite(lse), Is.True, $"lse {lse}, {where}");
                            AssertNoNaN(outRow, "output", where);
                        }
                        else
                        {
                            Assert.That(lse, Is.EqualTo(double.PositiveInfinity), where);
                            Assert.That(outRow, Is.All.EqualTo(0.0), where);
                        }
                    }
                }
            }
        }
    }

    [Test]
    public void SeveralNewTokensCausalSeeOnlyTheirPrefix([Values(false, true)] bool paged)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 6; iteration++)
        {
            int batch = random.Next(1, 4), seqNew = random.Next(2, 7), hkv = random.Next(1, 3);
            int[] lens = Enumerable.Range(0, batch).Select(_ => random.Next(0, 20)).ToArray();
            var c = MakeCase(random, batch, seqNew, hkv * random.Next(1, 3), hkv, random.Next(1, 12), lens, append: true);
            var options = new AttentionOptions { Causal = true, Softcap = random.Next(2) == 0 ? 3f : null };
            string context = $"seed {seed}, iteration {iteration}, {c}, paged {paged}";
            var result = Run(random, c, paged, options);
            AssertMatchesReferences(result, c, options, context);

            // Changing the last new key and value changes only the last new token's rows.
            var kNew = (double[])c.KNew!.Clone();
            var vNew = (double[])c.VNew!.Clone();
            for (int b = 0; b < batch; b++)
            {
                int lastRow = ((b * seqNew) + seqNew - 1) * c.Row;
                for (int x = 0; x < c.Row; x++)
                {
                    kNew[lastRow + x] += 1 + random.NextDouble();
                    vNew[lastRow + x] += 1 + random.NextDouble();
                }
            }

            var perturbed = WithNewRows(c, kNew, vNew);
            var after = Run(random, perturbed, paged, options);
            for (int b = 0; b < batch; b++)
            {
                for (int i = 0; i < seqNew; i++)
                {
                    for (int h = 0; h < c.HeadsQ; h++)
                    {
                        int o = (((b * seqNew) + i) * c.HeadsQ + h) * c.HeadDim;
                        int l = ((b * c.HeadsQ) + h) * seqNew + i;
                        bool same = after.Lse[l] == result.Lse[l] && after.Out.AsSpan(o, c.HeadDim).SequenceEqual(result.Out.AsSpan(o, c.HeadDim));
                        Assert.That(same, Is.EqualTo(i < seqNew - 1),
                            $"sequence {b} new token {i} head {h}: {(same ? "unchanged" : "changed")} by the last new key ({context})");
                    }
                }
            }
        }
    }

    [Test]
    public void GroupedQueryAttentionRatios([Values(1, 4, 32)] int ratio, [Values(false, true)] bool paged)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 4; iteration++)
        {
            int hkv = random.Next(1, 3), batch = random.Next(1, 4);
            int[] lens = Enumerable.Range(0, batch).Select(_ => random.Next(0, 30)).ToArray();
            var c = MakeCase(random, batch, random.Next(1, 4), hkv * ratio, hkv, random.Next(1, 9), lens, append: random.Next(2) == 0);
            var options = RandomOptions(random);
            string context = $"seed {seed}, iteration {iteration}, {c}, paged {paged}, {options}";
            var result = Run(random, c, paged, options);
            AssertMatchesReferences(result, c, options, context);
        }
    }

    [Test]
    public void InvalidArgumentsThrowWithClearMessages()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        int[] lens = [3, 5];
        var c = MakeCase(random, 2, 2, 2, 1, 4, lens, append: true);
        var output = new double[c.Q.Length];
        var lse = new double[2 * 2 * 2];
        var options = new AttentionOptions { Causal = true };

        void Contig(int[] lensArg, int capacity, double[]? kNew, double[]? vNew, AttentionOptions o, int seqNew = 2)
        {
            var k = new double[2 * capacity * c.Row];
            DecodeReference.ForwardContiguous(c.Q, k, (double[])k.Clone(), lensArg, kNew, vNew, seqNew, 2, 1, 4, capacity, o, output, lse);
        }

        void PagedRun(int[] table, int numBlocks, int blockSize, int[] lensArg)
        {
            var k = new double[numBlocks * blockSize * c.Row];
            DecodeReference.ForwardPaged(c.Q, k, (double[])k.Clone(), table, lensArg, c.KNew, c.VNew, 2, 2, 1, 4, blockSize, options, output, lse);
        }

        string context = $"seed {seed}";
        Assert.That(() => Contig(lens, 6, c.KNew, c.VNew, options),
            Throws.ArgumentException.With.Message.Contains("Sequence 1 holds 5 tokens and appends 2, 7 in all").And.Message.Contains("room for 6"), context);
        Assert.That(() => Contig([3, -1], 8, c.KNew, c.VNew, options),
            Throws.ArgumentException.With.Message.Contains("cacheSeqLens[1] is -1"), context);
        Assert.That(() => Contig([3, 9], 8, null, null, options),
            Throws.ArgumentException.With.Message.Contains("cacheSeqLens[1] is 9, more than the 8 positions"), context);
        Assert.That(() => Contig(lens, 8, c.KNew, null, options),
            Throws.ArgumentException.With.Message.Contains("give both"), context);
        Assert.That(() => Contig(lens, 8, c.KNew, c.VNew, options, seqNew: 0),
            Throws.ArgumentException.With.Message.Contains("seqLenNew must be 1 or more"), context);
        Assert.That(() => Contig(lens, 8, c.KNew, c.VNew, options with { CausalAlignment = CausalAlignment.TopLeft }),
            Throws.ArgumentException.With.Message.Contains("BottomRight"), context);
        Assert.That(() => Contig(lens, 8, c.KNew, c.VNew, null!), Throws.ArgumentNullException, context);

        // Block size 4, 3 blocks per sequence: sequence 0 uses pages 0..1 (5 positions), sequence 1 pages 0..1 (7).
        Assert.That(() => PagedRun([0, 1, -1, 2, 6, -1], 6, 4, lens),
            Throws.ArgumentException.With.Message.Contains("blockTable[1, 1] is 6").And.Message.Contains("blocks 0..5"), context);
        Assert.That(() => PagedRun([0, -3, 5, 2, 3, 4], 6, 4, lens),
            Throws.ArgumentException.With.Message.Contains("blockTable[0, 1] is -3"), context);
        Assert.That(() => PagedRun([0, 1, 5, 2, 3, 4], 6, 4, [3, 11]),
            Throws.ArgumentException.With.Message.Contains("room for 12"), context);
        // Block 1 is page 1 of both sequences: sequence 0 appends its position 4 into row 0, where sequence 1 keeps its position 4.
        Assert.That(() => PagedRun([0, 1, 5, 2, 1, 4], 6, 4, lens),
            Throws.ArgumentException.With.Message.Contains("must not be shared"), context);
        Assert.That(() => PagedRun([0, 1, 5, 2, 3], 6, 4, lens),
            Throws.ArgumentException.With.Message.Contains("not a whole row"), context);

        // Shared read-only pages are fine: both sequences read block 0 (a common prefix) and append elsewhere.
        Assert.That(() => PagedRun([0, 1, 5, 0, 3, 4], 6, 4, [4, 4]), Throws.Nothing, context);
    }

    /// <summary>Runs the case on a fresh cache of either layout (NaN past the end, spare capacity, shuffled blocks).</summary>
    private static (double[] Out, double[] Lse) Run(Random random, Case c, bool paged, AttentionOptions options)
    {
        if (paged)
        {
            int blockSize = random.Next(1, 9);
            int maxBlocks = ((c.MaxTotal + blockSize - 1) / blockSize) + random.Next(0, 2);
            return RunPaged(c, MakePaged(c, random, blockSize, maxBlocks, random.Next(0, 3), () => double.NaN, random.Next(2) == 0), options);
        }

        int capacity = c.MaxTotal + random.Next(0, 4);
        var (k, v) = Contiguous(c, capacity, () => double.NaN);
        return RunContiguous(c, k, v, capacity, options);
    }
}
