using System.Numerics;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The float64 decode reference's serving options (issue 15; shared/FEATURES.md §4 rotary, §5 cache plumbing),
/// through its internal overloads with <see cref="DecodeServingOptions"/>: rotary on append (both layouts, partial
/// rotary dim), cache batch index, left padding and multi-token queries, alone and combined, over contiguous and
/// paged caches. Each case is fresh random data checked element by element against the tests' own computation:
/// the cache after the append is rebuilt here (keys rotated by a complex-number formula, not the product's) and
/// compared bit for bit over the whole cache array, and the attention is the tests' naive formula over the keys
/// the tests gather themselves.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ReferenceDecodeServingTests
{
    // Same bar as ReferenceDecodeTests: two float64 computations with different summation orders.
    private const double Tolerance = 1e-11;

    private sealed record Rotary(double[] Cos, double[] Sin, int Dim, bool Interleaved)
    {
        public int Positions => Cos.Length / (Dim / 2);
    }

    /// <summary>
    /// One problem: logical cache rows (<c>[capacity, headsKv, headDim]</c> each, NaN wherever nothing valid is
    /// stored: before the left pad, past the length, rows no sequence uses), queries, new rows and options.
    /// </summary>
    private sealed class Scenario
    {
        public required int Batch { get; init; }

        public required int SeqQ { get; init; }

        public required int SeqNew { get; init; }

        public required bool SetSeqLenQ { get; init; }

        public required int HeadsQ { get; init; }

        public required int HeadsKv { get; init; }

        public required int HeadDim { get; init; }

        public required int Capacity { get; init; }

        public required int CacheRows { get; init; }

        public required int[] Lens { get; init; }

        public int[]? LeftPad { get; init; }

        public int[]? BatchIndex { get; init; }

        public required double[] Q { get; init; }

        public double[]? KNew { get; init; }

        public double[]? VNew { get; init; }

        public required double[][] CacheK { get; init; }

        public required double[][] CacheV { get; init; }

        public Rotary? Rot { get; init; }

        public required bool Paged { get; init; }

        public required int BlockSize { get; init; }

        public bool Append => KNew is not null;

        public int Row => HeadsKv * HeadDim;

        public int CacheRowOf(int b) => BatchIndex?[b] ?? b;

        public int Pad(int b) => LeftPad?[b] ?? 0;

        public int Total(int b) => Lens[b] + SeqNew;

        public DecodeServingOptions Serving => new()
        {
            SeqLenQ = SetSeqLenQ ? SeqQ : null,
            CacheBatchIndex = BatchIndex,
            CacheRows = BatchIndex is null ? null : CacheRows,
            CacheLeftPad = LeftPad,
            RotaryCos = Rot?.Cos,
            RotarySin = Rot?.Sin,
            RotaryDim = Rot?.Dim ?? 0,
            RotaryInterleaved = Rot?.Interleaved ?? true,
        };

        public override string ToString() =>
            $"B={Batch} Sq={SeqQ} Snew={SeqNew} Hq={HeadsQ} Hkv={HeadsKv} D={HeadDim} cap={Capacity} rows={CacheRows} " +
            $"paged={Paged} block={BlockSize} lens=[{string.Join(",", Lens)}] pad=[{string.Join(",", LeftPad ?? [])}] " +
            $"idx=[{string.Join(",", BatchIndex ?? [])}] rotary={(Rot is null ? "off" : $"{Rot.Dim} interleaved={Rot.Interleaved}")}";
    }

    private static double[] Normal(Random random, int n) => TestRandom.Normal(random, n).Select(x => (double)x).ToArray();

    /// <summary>Tables of the usual form: angle p * 10000^(-2t/rd) (or arbitrary values: the formula needs no unit norm).</summary>
    private static Rotary MakeRotary(Random random, int positions, int dim, bool interleaved, bool arbitrary)
    {
        int half = dim / 2;
        var cos = new double[positions * half];
        var sin = new double[positions * half];
        for (int p = 0; p < positions; p++)
        {
            for (int t = 0; t < half; t++)
            {
                double angle = p * Math.Pow(10000, -2.0 * t / dim);
                cos[(p * half) + t] = arbitrary ? (random.NextDouble() * 4) - 2 : Math.Cos(angle);
                sin[(p * half) + t] = arbitrary ? (random.NextDouble() * 4) - 2 : Math.Sin(angle);
            }
        }

        return new Rotary(cos, sin, dim, interleaved);
    }

    private static Scenario Make(
        Random random,
        bool paged,
        bool append,
        bool multiToken,
        bool batchIndex,
        bool leftPad,
        bool? rotaryInterleaved,
        bool partialRotary = false,
        bool arbitraryTables = false)
    {
        bool rotary = rotaryInterleaved is not null;
        int batch = random.Next(1, 5), hkv = random.Next(1, 3);
        int headsQ = hkv * random.Next(1, 3);
        int headDim = rotary ? 2 * random.Next(partialRotary ? 2 : 1, 9) : random.Next(1, 13);
        int seqNew = append ? random.Next(1, 5) : 0;
        int seqQ = multiToken ? random.Next(1, 7) : (append ? seqNew : random.Next(1, 4));
        int[] lens = Enumerable.Range(0, batch).Select(_ => random.Next(4) == 0 ? 0 : random.Next(0, 20)).ToArray();
        int[]? pads = leftPad
            ? lens.Select(n => random.Next(3) switch { 0 => 0, 1 => n, _ => random.Next(0, n + 1) }).ToArray()
            : null;
        int maxTotal = lens.Max() + seqNew;
        int blockSize = random.Next(1, 9);
        int capacity = paged
            ? (((maxTotal + blockSize - 1) / blockSize) + random.Next(0, 2)) * blockSize
            : maxTotal + random.Next(0, 4);
        int cacheRows = batchIndex ? batch + random.Next(0, 3) : batch;
        int[]? index = null;
        if (batchIndex)
        {
            int[] pool = Enumerable.Range(0, cacheRows).ToArray();
            random.Shuffle(pool);
            index = pool[..batch];
            if (!append && batch > 1 && random.Next(2) == 0)
            {
                index[0] = index[1]; // read-only sequences may share a cache row
                lens[0] = lens[1];
                if (pads is not null)
                {
                    pads[0] = random.Next(0, lens[0] + 1);
                }
            }
        }

        int row = hkv * headDim;
        var cacheK = new double[cacheRows][];
        var cacheV = new double[cacheRows][];
        for (int r = 0; r < cacheRows; r++)
        {
            cacheK[r] = Enumerable.Repeat(double.NaN, capacity * row).ToArray();
            cacheV[r] = Enumerable.Repeat(double.NaN, capacity * row).ToArray();
        }

        for (int b = 0; b < batch; b++)
        {
            int r = index?[b] ?? b, first = pads?[b] ?? 0;
            Normal(random, (lens[b] - first) * row).CopyTo(cacheK[r], first * row);
            Normal(random, (lens[b] - first) * row).CopyTo(cacheV[r], first * row);
        }

        Rotary? rot = null;
        if (rotary)
        {
            int dim = partialRotary ? 2 * random.Next(1, headDim / 2) : headDim;
            if (!partialRotary && random.Next(3) == 0)
            {
                dim = 2 * random.Next(1, (headDim / 2) + 1);
            }

            int positions = Math.Max(capacity, lens.Max() + seqQ) + random.Next(0, 3);
            rot = MakeRotary(random, positions, dim, rotaryInterleaved!.Value, arbitraryTables);
        }

        return new Scenario
        {
            Batch = batch,
            SeqQ = seqQ,
            SeqNew = seqNew,
            SetSeqLenQ = multiToken || !append,
            HeadsQ = headsQ,
            HeadsKv = hkv,
            HeadDim = headDim,
            Capacity = capacity,
            CacheRows = cacheRows,
            Lens = lens,
            LeftPad = pads,
            BatchIndex = index,
            Q = Normal(random, batch * seqQ * headsQ * headDim),
            KNew = append ? Normal(random, batch * seqNew * row) : null,
            VNew = append ? Normal(random, batch * seqNew * row) : null,
            CacheK = cacheK,
            CacheV = cacheV,
            Rot = rot,
            Paged = paged,
            BlockSize = blockSize,
        };
    }

    private static AttentionOptions RandomOptions(Random random) => new()
    {
        Causal = random.Next(2) == 0,
        WindowLeft = random.Next(3) == 0 ? random.Next(0, 10) : null,
        WindowRight = random.Next(4) == 0 ? random.Next(0, 5) : null,
        Softcap = random.Next(3) == 0 ? (float)(0.5 + (5 * random.NextDouble())) : null,
        SoftmaxScale = random.Next(2) == 0 ? (float)(0.2 + random.NextDouble()) : null,
    };

    /// <summary>The physical cache the reference is handed, and where each logical (cache row, position) lives in it.</summary>
    private sealed record Physical(double[] K, double[] V, int[]? Table, Func<int, int, int> Slot);

    private static Physical Lay(Scenario s, double[][] logicalK, double[][] logicalV, int tableSeed)
    {
        int row = s.Row;
        if (!s.Paged)
        {
            return new Physical(
                logicalK.SelectMany(x => x).ToArray(), logicalV.SelectMany(x => x).ToArray(), null,
                (r, p) => (r * s.Capacity) + p);
        }

        // Blocks in a random order, with spare blocks no table row names; unused pages of a row -1 (never read).
        var tableRandom = new Random(tableSeed);
        int maxBlocks = s.Capacity / s.BlockSize;
        int numBlocks = (s.CacheRows * maxBlocks) + tableRandom.Next(0, 3);
        int[] permutation = Enumerable.Range(0, numBlocks).ToArray();
        tableRandom.Shuffle(permutation);
        int[] table = permutation[..(s.CacheRows * maxBlocks)];
        var slotTable = (int[])table.Clone();
        if (tableRandom.Next(2) == 0)
        {
            for (int r = 0; r < s.CacheRows; r++)
            {
                int used = Enumerable.Range(0, s.Batch).Where(b => s.CacheRowOf(b) == r)
                    .Select(b => (s.Total(b) + s.BlockSize - 1) / s.BlockSize).DefaultIfEmpty(0).Max();
                table.AsSpan((r * maxBlocks) + used, maxBlocks - used).Fill(-1);
            }
        }

        int Slot(int r, int p) => (slotTable[(r * maxBlocks) + (p / s.BlockSize)] * s.BlockSize) + (p % s.BlockSize);
        var k = Enumerable.Repeat(double.NaN, numBlocks * s.BlockSize * row).ToArray();
        var v = (double[])k.Clone();
        for (int r = 0; r < s.CacheRows; r++)
        {
            for (int p = 0; p < s.Capacity; p++)
            {
                logicalK[r].AsSpan(p * row, row).CopyTo(k.AsSpan(Slot(r, p) * row));
                logicalV[r].AsSpan(p * row, row).CopyTo(v.AsSpan(Slot(r, p) * row));
            }
        }

        return new Physical(k, v, table, Slot);
    }

    private static (double[] Out, double[] Lse) RunReference(Scenario s, Physical cache, AttentionOptions options)
    {
        var output = Enumerable.Repeat(double.NaN, s.Q.Length).ToArray();
        var lse = Enumerable.Repeat(double.NaN, s.Batch * s.HeadsQ * s.SeqQ).ToArray();
        int seqLenNew = s.SetSeqLenQ ? s.SeqNew : s.SeqQ;
        if (cache.Table is null)
        {
            DecodeReference.ForwardContiguous(
                s.Q, cache.K, cache.V, s.Lens, s.KNew, s.VNew, seqLenNew, s.HeadsQ, s.HeadsKv, s.HeadDim, s.Capacity,
                options, s.Serving, output, lse);
        }
        else
        {
            DecodeReference.ForwardPaged(
                s.Q, cache.K, cache.V, cache.Table, s.Lens, s.KNew, s.VNew, seqLenNew, s.HeadsQ, s.HeadsKv, s.HeadDim,
                s.BlockSize, options, s.Serving, output, lse);
        }

        return (output, lse);
    }

    /// <summary>
    /// The tests' rotary (FEATURES.md §4 "Math"), as multiplication by <c>c + i s</c> of the complex numbers the
    /// rotated pairs form: <c>x[2t] + i x[2t+1]</c> interleaved, <c>x[t] + i x[t + rd/2]</c> otherwise; dims past rd
    /// copied.
    /// </summary>
    private static double[] HandRotate(ReadOnlySpan<double> x, Rotary rot, int position)
    {
        var result = x.ToArray();
        int half = rot.Dim / 2;
        for (int t = 0; t < half; t++)
        {
            var (re, im) = rot.Interleaved ? (2 * t, (2 * t) + 1) : (t, t + half);
            var z = new Complex(x[re], x[im]) * new Complex(rot.Cos[(position * half) + t], rot.Sin[(position * half) + t]);
            result[re] = z.Real;
            result[im] = z.Imaginary;
        }

        return result;
    }

    /// <summary>The logical caches after the append, built by the tests: new key j of sequence b at position lens[b] + j of its row, rotated there.</summary>
    private static (double[][] K, double[][] V) ExpectedAfterAppend(Scenario s)
    {
        var k = s.CacheK.Select(x => (double[])x.Clone()).ToArray();
        var v = s.CacheV.Select(x => (double[])x.Clone()).ToArray();
        for (int b = 0; b < s.Batch && s.Append; b++)
        {
            for (int j = 0; j < s.SeqNew; j++)
            {
                int position = s.Lens[b] + j;
                for (int h = 0; h < s.HeadsKv; h++)
                {
                    int source = (((b * s.SeqNew) + j) * s.HeadsKv + h) * s.HeadDim;
                    int destination = ((position * s.HeadsKv) + h) * s.HeadDim;
                    double[] key = s.KNew!.AsSpan(source, s.HeadDim).ToArray();
                    (s.Rot is null ? key : HandRotate(key, s.Rot, position)).CopyTo(k[s.CacheRowOf(b)], destination);
                    s.VNew!.AsSpan(source, s.HeadDim).CopyTo(v[s.CacheRowOf(b)].AsSpan(destination));
                }
            }
        }

        return (k, v);
    }

    /// <summary>
    /// The tests' attention (FEATURES.md §4 "Positions", §5 "Valid keys and alignment"): sequence b's keys are
    /// positions pad .. lens + seqNew - 1 of its cache row; query i is rotated at lens[b] + i when causal or windowed,
    /// lens[b] otherwise; then the naive formula, bottom-right over those sk keys.
    /// </summary>
    private static (double[] Out, double[] Lse) Naive(Scenario s, double[][] expectedK, double[][] expectedV, AttentionOptions options)
    {
        var output = new List<double>();
        var lse = new List<double>();
        int row = s.Row, qPer = s.SeqQ * s.HeadsQ * s.HeadDim;
        bool perRow = options.Causal || options.WindowLeft is not null || options.WindowRight is not null;
        for (int b = 0; b < s.Batch; b++)
        {
            double[] q = s.Q.AsSpan(b * qPer, qPer).ToArray();
            if (s.Rot is not null)
            {
                for (int i = 0; i < s.SeqQ; i++)
                {
                    for (int h = 0; h < s.HeadsQ; h++)
                    {
                        int at = ((i * s.HeadsQ) + h) * s.HeadDim;
                        HandRotate(q.AsSpan(at, s.HeadDim), s.Rot, s.Lens[b] + (perRow ? i : 0)).CopyTo(q, at);
                    }
                }
            }

            int first = s.Pad(b), sk = s.Total(b) - first, r = s.CacheRowOf(b);
            double[] keys = expectedK[r].AsSpan(first * row, sk * row).ToArray();
            double[] values = expectedV[r].AsSpan(first * row, sk * row).ToArray();
            var (o, l) = NaiveAttention.Forward64(
                q, keys, values, new AttentionDims(1, s.SeqQ, sk, s.HeadsQ, s.HeadsKv, s.HeadDim), options.Causal, false,
                options.WindowLeft, options.WindowRight, options.Softcap ?? 0, options.EffectiveScale(s.HeadDim));
            output.AddRange(o);
            lse.AddRange(l);
        }

        return (output.ToArray(), lse.ToArray());
    }

    private static void AssertBitwiseEqual(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, string what, string context) =>
        ElementAsserts.BitwiseEqual(actual, expected, what, context);

    private static void AssertClose(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, string what, string context) =>
        ElementAsserts.Close(actual, expected, Tolerance, what, context);

    /// <summary>Runs the scenario and checks the whole cache arrays and every output and log-sum-exp element.</summary>
    private static void RunAndCheck(Scenario s, Random random, AttentionOptions options, string context)
    {
        int tableSeed = random.Next();
        var cache = Lay(s, s.CacheK, s.CacheV, tableSeed);
        var result = RunReference(s, cache, options);
        var (expectedK, expectedV) = ExpectedAfterAppend(s);
        var expectedCache = Lay(s, expectedK, expectedV, tableSeed);
        AssertBitwiseEqual(cache.K, expectedCache.K, "key cache after the call", context);
        AssertBitwiseEqual(cache.V, expectedCache.V, "value cache after the call", context);
        var (naiveOut, naiveLse) = Naive(s, expectedK, expectedV, options);
        AssertClose(result.Out, naiveOut, "output vs naive", context);
        AssertClose(result.Lse, naiveLse, "lse vs naive", context);
    }

    [Test]
    public void RotateMatchesHandComputedValues()
    {
        // x = [1..6], rotary dim 4 (dims 4 and 5 pass through), c = [0.5, 0.25], s = [2, 3].
        double[] x = [1, 2, 3, 4, 5, 6], cos = [0.5, 0.25], sin = [2, 3];
        var interleaved = (double[])x.Clone();
        DecodeReference.Rotate(interleaved, cos, sin, 4, interleaved: true);
        // (1, 2) with t = 0: (1*0.5 - 2*2, 1*2 + 2*0.5); (3, 4) with t = 1: (3*0.25 - 4*3, 3*3 + 4*0.25).
        Assert.That(interleaved, Is.EqualTo(new double[] { -3.5, 3, -11.25, 10, 5, 6 }));
        var neox = (double[])x.Clone();
        DecodeReference.Rotate(neox, cos, sin, 4, interleaved: false);
        // (x0, x2) = (1, 3) with t = 0: (1*0.5 - 3*2, 1*2 + 3*0.5); (x1, x3) = (2, 4) with t = 1: (2*0.25 - 4*3, 2*3 + 4*0.25).
        Assert.That(neox, Is.EqualTo(new double[] { -5.5, -11.5, 3.5, 7, 5, 6 }));
    }

    [Test]
    public void RotaryAppendStoresTheHandComputedKey([Values(true, false)] bool interleaved)
    {
        // One sequence holding 1 token appends one at position 1 (table row 1); headDim 6, rotary dim 4; two KV heads.
        double[] cos = [9, 9, 0.5, 0.25], sin = [9, 9, 2, 3];
        double[] kCache = new double[2 * 2 * 6], vCache = new double[kCache.Length];
        double[] kNew = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6], vNew = [.. Enumerable.Range(10, 12).Select(i => (double)i)];
        var serving = new DecodeServingOptions { RotaryCos = cos, RotarySin = sin, RotaryDim = 4, RotaryInterleaved = interleaved };
        DecodeReference.ForwardContiguous(
            new double[12], kCache, vCache, [1], kNew, vNew, 1, 2, 2, 6, 2, AttentionOptions.Default, serving, new double[12], []);
        double[] expected = interleaved ? [-3.5, 3, -11.25, 10, 5, 6] : [-5.5, -11.5, 3.5, 7, 5, 6];
        Assert.That(kCache[12..], Is.EqualTo(expected.Concat(expected).ToArray()));
        Assert.That(kCache[..12], Is.All.Zero);
        Assert.That(vCache[12..], Is.EqualTo(vNew));
    }

    [Test]
    public void RotaryOnAppendAndQueries(
        [Values(true, false)] bool interleaved, [Values(false, true)] bool paged, [Values(false, true)] bool partial)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 8; iteration++)
        {
            var s = Make(random, paged, append: true, multiToken: random.Next(2) == 0, batchIndex: false, leftPad: false,
                interleaved, partialRotary: partial, arbitraryTables: iteration % 2 == 0);
            var options = RandomOptions(random);
            RunAndCheck(s, random, options, $"seed {seed}, iteration {iteration}, {s}, {options}");
        }
    }

    [Test]
    public void QueriesShareOnePositionUnlessCausalOrWindowed([Values(-1, 10, 16, 100)] int windowLeft)
    {
        // Three equal query rows over keys none of them masks: without a mask they are all rotated at P0 and give equal
        // outputs; with a window (one that masks nothing) they are rotated at P0 + i (FEATURES.md §4 "Positions"). A
        // window side of the capacity (16) or more is no window, as FlashAttention-2 normalises it before it decides.
        bool windowed = windowLeft >= 0 && windowLeft < 16;
        var random = TestRandom.ForCurrentTest(out int seed);
        int headDim = 8, cached = 5, capacity = 16;
        var rot = MakeRotary(random, capacity, headDim, interleaved: false, arbitrary: false);
        double[] row = Normal(random, headDim);
        double[] q = [.. row, .. row, .. row];
        double[] kCache = [.. Normal(random, cached * headDim), .. new double[(capacity - cached) * headDim]];
        double[] vCache = [.. Normal(random, cached * headDim), .. new double[(capacity - cached) * headDim]];
        var output = new double[q.Length];
        var serving = new DecodeServingOptions
        {
            SeqLenQ = 3, RotaryCos = rot.Cos, RotarySin = rot.Sin, RotaryDim = headDim, RotaryInterleaved = false,
        };
        var options = windowLeft >= 0 ? new AttentionOptions { WindowLeft = windowLeft } : AttentionOptions.Default;
        DecodeReference.ForwardContiguous(
            q, kCache, vCache, [cached], Normal(random, headDim), Normal(random, headDim), 1, 1, 1, headDim, capacity,
            options, serving, output, []);
        for (int i = 1; i < 3; i++)
        {
            bool same = output.AsSpan(0, headDim).SequenceEqual(output.AsSpan(i * headDim, headDim));
            Assert.That(same, Is.EqualTo(!windowed), $"query rows 0 and {i}, window left {windowLeft} (seed {seed})");
        }
    }

    [Test]
    public void CacheBatchIndexOverAShuffledPool([Values(false, true)] bool paged, [Values(false, true)] bool append)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 8; iteration++)
        {
            var s = Make(random, paged, append, multiToken: false, batchIndex: true, leftPad: false, rotaryInterleaved: null);
            var options = RandomOptions(random);
            RunAndCheck(s, random, options, $"seed {seed}, iteration {iteration}, {s}, {options}");
        }
    }

    [Test]
    public void LeftPaddingIncludingNoneAndFull([Values(false, true)] bool paged, [Values(false, true)] bool append)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 8; iteration++)
        {
            var s = Make(random, paged, append, multiToken: false, batchIndex: false, leftPad: true, rotaryInterleaved: null);
            var options = RandomOptions(random);
            RunAndCheck(s, random, options, $"seed {seed}, iteration {iteration}, {s}, {options}");
        }
    }

    [Test]
    public void MultiTokenQueriesWithOtherAppendCounts([Values(false, true)] bool paged, [Values(false, true)] bool append)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 8; iteration++)
        {
            var s = Make(random, paged, append, multiToken: true, batchIndex: false, leftPad: false, rotaryInterleaved: null);
            var options = RandomOptions(random);
            RunAndCheck(s, random, options, $"seed {seed}, iteration {iteration}, {s}, {options}");
        }
    }

    [Test]
    public void AllOptionsTogether([Values(false, true)] bool paged, [Values(true, false)] bool interleaved)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 10; iteration++)
        {
            var s = Make(random, paged, append: true, multiToken: true, batchIndex: true, leftPad: true, interleaved,
                partialRotary: iteration % 2 == 1, arbitraryTables: iteration % 3 == 0);
            var options = RandomOptions(random);
            RunAndCheck(s, random, options, $"seed {seed}, iteration {iteration}, {s}, {options}");
        }
    }

    [Test]
    public void NeutralServingOptionsEqualThePublicCall([Values(false, true)] bool paged, [Values(false, true)] bool append)
    {
        // Identity batch index, zero left pads and SeqLenQ = seqLenNew change nothing, bit for bit.
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 6; iteration++)
        {
            var s = Make(random, paged, append, multiToken: false, batchIndex: false, leftPad: false, rotaryInterleaved: null);
            var options = RandomOptions(random);
            string context = $"seed {seed}, iteration {iteration}, {s}, {options}";
            int tableSeed = random.Next();
            var neutral = new DecodeServingOptions
            {
                SeqLenQ = append ? s.SeqQ : null,
                CacheBatchIndex = [.. Enumerable.Range(0, s.Batch)],
                CacheLeftPad = new int[s.Batch],
            };
            var a = Lay(s, s.CacheK, s.CacheV, tableSeed);
            var b = Lay(s, s.CacheK, s.CacheV, tableSeed);
            var (outA, lseA) = (new double[s.Q.Length], new double[s.Batch * s.HeadsQ * s.SeqQ]);
            var (outB, lseB) = (new double[s.Q.Length], new double[s.Batch * s.HeadsQ * s.SeqQ]);
            if (paged)
            {
                DecodeReference.ForwardPaged(s.Q, a.K, a.V, a.Table!, s.Lens, s.KNew, s.VNew, s.SeqQ, s.HeadsQ, s.HeadsKv, s.HeadDim,
                    s.BlockSize, options, outA, lseA);
                DecodeReference.ForwardPaged(s.Q, b.K, b.V, b.Table!, s.Lens, s.KNew, s.VNew, s.SeqQ, s.HeadsQ, s.HeadsKv, s.HeadDim,
                    s.BlockSize, options, neutral, outB, lseB);
            }
            else
            {
                DecodeReference.ForwardContiguous(s.Q, a.K, a.V, s.Lens, s.KNew, s.VNew, s.SeqQ, s.HeadsQ, s.HeadsKv, s.HeadDim,
                    s.Capacity, options, outA, lseA);
                DecodeReference.ForwardContiguous(s.Q, b.K, b.V, s.Lens, s.KNew, s.VNew, s.SeqQ, s.HeadsQ, s.HeadsKv, s.HeadDim,
                    s.Capacity, options, neutral, outB, lseB);
            }

            AssertBitwiseEqual(outB, outA, "output", context);
            AssertBitwiseEqual(lseB, lseA, "lse", context);
            AssertBitwiseEqual(b.K, a.K, "key cache", context);
            AssertBitwiseEqual(b.V, a.V, "value cache", context);
        }
    }

    [Test]
    public void PerSequenceCountsEqualOneCallPerSequence([Values(false, true)] bool causal)
    {
        // QueryCounts / AppendCounts (C ABI 0.12) over packed q, kNew and lse [headsQ, totalQ]: each sequence's rows, lse
        // column and cache row equal, bit for bit, a batch-1 call over that row with its own counts (a sequence without
        // queries still appends; its batch-1 call gets one dummy query whose output is not compared).
        var random = TestRandom.ForCurrentTest(out int seed);
        const int batch = 4, headsQ = 4, headsKv = 2, dim = 8, capacity = 40;
        int[] qn = [2, 0, 3, 1], kn = [1, 2, 0, 3], lens = [5, 0, 17, 30];
        int rowElements = headsKv * dim, qRow = headsQ * dim, totalQ = qn.Sum(), totalK = kn.Sum();
        double[] cacheK = Normal(random, batch * capacity * rowElements), cacheV = Normal(random, cacheK.Length);
        double[] q = Normal(random, totalQ * qRow), kNew = Normal(random, totalK * rowElements), vNew = Normal(random, kNew.Length);
        var options = new AttentionOptions { Causal = causal, Softcap = 5.0f };
        double[] packedK = (double[])cacheK.Clone(), packedV = (double[])cacheV.Clone();
        var (outPacked, lsePacked) = (new double[q.Length], new double[headsQ * totalQ]);
        DecodeReference.ForwardContiguous(q, packedK, packedV, lens, kNew, vNew, 0, headsQ, headsKv, dim, capacity, options,
            new DecodeServingOptions { QueryCounts = qn, AppendCounts = kn }, outPacked, lsePacked);

        double[] oneK = (double[])cacheK.Clone(), oneV = (double[])cacheV.Clone();
        int q0 = 0, k0 = 0;
        for (int b = 0; b < batch; b++)
        {
            string context = $"seed {seed}, causal {causal}, sequence {b}";
            int count = Math.Max(qn[b], 1);
            double[] qb = qn[b] > 0 ? q[(q0 * qRow)..((q0 + qn[b]) * qRow)] : Normal(random, qRow);
            var (outB, lseB) = (new double[count * qRow], new double[headsQ * count]);
            DecodeReference.ForwardContiguous(qb, oneK, oneV, [lens[b]], kNew[(k0 * rowElements)..((k0 + kn[b]) * rowElements)],
                vNew[(k0 * rowElements)..((k0 + kn[b]) * rowElements)], kn[b], headsQ, headsKv, dim, capacity, options,
                new DecodeServingOptions { SeqLenQ = count, CacheBatchIndex = [b], CacheRows = batch }, outB, lseB);
            if (qn[b] > 0)
            {
                AssertBitwiseEqual(outPacked.AsSpan(q0 * qRow, qn[b] * qRow), outB, "output", context);
                for (int h = 0; h < headsQ; h++)
                {
                    AssertBitwiseEqual(lsePacked.AsSpan((h * totalQ) + q0, qn[b]), lseB.AsSpan(h * count, count), $"lse head {h}", context);
                }
            }

            q0 += qn[b];
            k0 += kn[b];
        }

        AssertBitwiseEqual(packedK, oneK, "key cache", $"seed {seed}");
        AssertBitwiseEqual(packedV, oneV, "value cache", $"seed {seed}");
    }

    [Test]
    public void PerSequenceCountsAreCheckedBeforeAnythingIsWritten()
    {
        var options = new AttentionOptions { Causal = true };
        double[] k = new double[2 * 16 * 8], v = new double[k.Length], kNew = new double[3 * 8], q = new double[3 * 8];
        double[] before = (double[])k.Clone();
        void Call(DecodeServingOptions serving, int seqLenNew, int secondLength = 2) => DecodeReference.ForwardContiguous(
            q, k, v, [1, secondLength], kNew, kNew, seqLenNew, 1, 1, 8, 16, options, serving, new double[q.Length], []);
        Assert.Multiple(() =>
        {
            Assert.That(() => Call(new DecodeServingOptions { QueryCounts = [1, 2], SeqLenQ = 3, AppendCounts = [1, 2] }, 0),
                Throws.ArgumentException.With.Message.Contains("SeqLenQ or QueryCounts"));
            Assert.That(() => Call(new DecodeServingOptions { QueryCounts = [-1, 4], AppendCounts = [1, 2] }, 0),
                Throws.ArgumentException.With.Message.Contains("QueryCounts[0] is -1"));
            Assert.That(() => Call(new DecodeServingOptions { QueryCounts = [1, 2], AppendCounts = [1, 2] }, 3),
                Throws.ArgumentException.With.Message.Contains("seqLenNew must be 0"));
            Assert.That(() => Call(new DecodeServingOptions { AppendCounts = [1, 2] }, 0),
                Throws.ArgumentException.With.Message.Contains("AppendCounts needs SeqLenQ or QueryCounts"));
            Assert.That(() => Call(new DecodeServingOptions { QueryCounts = [1, 1], AppendCounts = [1, 2] }, 0),
                Throws.ArgumentException.With.Message.Contains("q has 24 elements"));
            Assert.That(() => Call(new DecodeServingOptions { QueryCounts = [1, 2], AppendCounts = [2, 2] }, 0),
                Throws.ArgumentException.With.Message.Contains("kNew has 24 elements"));
            Assert.That(() => Call(new DecodeServingOptions { QueryCounts = [1, 2], AppendCounts = [0, 3] }, 0, secondLength: 14),
                Throws.ArgumentException.With.Message.Contains("appends 3, 17 in all"));
            Assert.That(k, Is.EqualTo(before), "nothing is written before the checks pass");
        });
    }

    [Test]
    public void InvalidServingArgumentsAreRefusedBeforeAnythingIsWritten()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        // Two sequences holding 3 and 5 tokens append 2 each into a contiguous cache of 3 rows x 8 positions, D 4, 1 KV head.
        int[] lens = [3, 5];
        double[] q = Normal(random, 2 * 6 * 4), kNew = Normal(random, 2 * 2 * 4), vNew = Normal(random, 2 * 2 * 4);
        var rot = MakeRotary(random, 8, 4, interleaved: true, arbitrary: false);
        var good = new DecodeServingOptions
        {
            CacheBatchIndex = [2, 0], CacheRows = 3, CacheLeftPad = [1, 5], RotaryCos = rot.Cos, RotarySin = rot.Sin, RotaryDim = 4,
        };
        double[] kCache = Normal(random, 3 * 8 * 4), vCache = Normal(random, 3 * 8 * 4);
        string context = $"seed {seed}";

        void Run(DecodeServingOptions serving, bool append = true, int seqLenNew = 2, AttentionOptions? options = null, int[]? lengths = null)
        {
            double[] k = (double[])kCache.Clone(), v = (double[])vCache.Clone();
            try
            {
                int queries = serving.SeqLenQ ?? seqLenNew;
                DecodeReference.ForwardContiguous(
                    q.AsSpan(0, 2 * queries * 4), k, v, lengths ?? lens, append ? kNew : null, append ? vNew : null, seqLenNew, 1, 1, 4, 8,
                    options ?? new AttentionOptions { Causal = true }, serving, new double[2 * queries * 4], []);
            }
            finally
            {
                AssertBitwiseEqual(k, kCache, "key cache after the call", context);
                AssertBitwiseEqual(v, vCache, "value cache after the call", context);
            }
        }

        void Refused(DecodeServingOptions serving, string message, bool append = true, int seqLenNew = 2, AttentionOptions? options = null, int[]? lengths = null) =>
            Assert.That(() => Run(serving, append, seqLenNew, options, lengths), Throws.ArgumentException.With.Message.Contains(message), $"{message} ({context})");

        // The good call itself writes (checked by the throwing variants only); make sure it is accepted.
        Assert.That(
            () => DecodeReference.ForwardContiguous(q.AsSpan(0, 2 * 2 * 4), (double[])kCache.Clone(), (double[])vCache.Clone(), lens, kNew, vNew, 2, 1, 1, 4, 8,
                new AttentionOptions { Causal = true }, good, new double[2 * 2 * 4], []),
            Throws.Nothing, context);

        Refused(good with { CacheBatchIndex = [3, 0] }, "CacheBatchIndex[0] is 3, but the cache has rows 0..2");
        Refused(good with { CacheBatchIndex = [-1, 0] }, "CacheBatchIndex[0] is -1");
        Refused(good with { CacheBatchIndex = [2] }, "CacheBatchIndex has 1 elements but [batch] needs 2");
        // Both in row 1: sequence 0 appends positions 3 and 4, which sequence 1 (valid from 3) reads.
        Refused(good with { CacheBatchIndex = [1, 1], CacheLeftPad = [1, 3] }, "appended slots must not be shared");
        Refused(good with { CacheBatchIndex = null }, "CacheRows is only meaningful with CacheBatchIndex");
        Refused(good with { CacheLeftPad = [6, 0] }, "CacheLeftPad[0] is 6; it must lie in 0..cacheSeqLens[0] + seqLenNew = 5");
        Refused(good with { CacheLeftPad = [0, -1] }, "CacheLeftPad[1] is -1");
        Refused(good with { CacheLeftPad = [0] }, "CacheLeftPad has 1 elements");
        Refused(good with { RotaryDim = 3 }, "RotaryDim is 3; it must be even");
        Refused(good with { RotaryDim = 6 }, "at most the head dim 4");
        Refused(good with { RotaryDim = 0 }, "RotaryDim is 0");
        Refused(good with { RotarySin = null }, "Give both RotaryCos and RotarySin");
        Refused(good with { RotaryCos = rot.Cos[..^2], RotarySin = rot.Sin[..^2] }, "fewer than the cache's 8");
        Refused(good with { RotarySin = rot.Sin[..^1] }, "both must be [seqlenRo, RotaryDim / 2 = 2]");
        Refused(good with { SeqLenQ = 4 }, "queries are rotated up to position 8, past the rotary tables' 8 positions");
        Refused(good with { SeqLenQ = 1 }, "only allowed when new keys and values are appended", append: false, seqLenNew: 0);
        Refused(good with { SeqLenQ = 0 }, "SeqLenQ must be 1 or more");
        Refused(good with { SeqLenQ = 2, RotaryCos = null, RotarySin = null }, "0 without (got 2, without new keys)", append: false);
        Refused(good with { SeqLenQ = 2 }, "1 or more with new keys", seqLenNew: 0);
        Refused(good, "Sequence 1 holds 7 tokens and appends 2, 9 in all", lengths: [3, 7]);

        // Without a mask every query sits at P0 = 5 and fits the table; causal ones reached 8 above.
        Assert.That(
            () => DecodeReference.ForwardContiguous(q.AsSpan(0, 2 * 4 * 4), (double[])kCache.Clone(), (double[])vCache.Clone(), lens, kNew, vNew, 2, 1, 1, 4, 8,
                AttentionOptions.Default, good with { SeqLenQ = 4 }, new double[2 * 4 * 4], []),
            Throws.Nothing, context);
    }
}
