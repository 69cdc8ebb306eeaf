using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The float64 reference over paged K/V of a variable-length batch (C ABI 0.11,
/// <see cref="AttentionReference.ForwardVarlenPaged(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, int, AttentionOptions, Span{double}, Span{double})"/>
/// and <see cref="AttentionReference.GatherPaged"/>): on fresh random data scattered into a pool through a shuffled block
/// table (<see cref="PagedLayout"/>: NaN in every pool row no sequence uses, <see cref="int.MaxValue"/> in every table
/// entry past a sequence's last page), it gives the bits of the packed reference
/// (<see cref="AttentionReference.ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, Span{double}, Span{double})"/>)
/// on the same keys and values, every output and log-sum-exp element, with each mask, window, softcap, GQA, a V head dim
/// of its own, sinks and ALiBi; a NaN in a row a sequence does use reaches its output (so the NaN rows would be seen if
/// they were read); and its argument checks name the problem. Pure managed.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ReferencePagedTests
{
    // An empty sequence, one of a single key, one past a block boundary, one ending exactly on one (256 with blocks of
    // 128 and 256), longer ones.
    private static readonly int[] LensQ = [3, 5, 64, 256, 17, 300];
    private static readonly int[] LensK = [0, 1, 129, 256, 300, 513];

    private static double[] Normal(Random random, int n) => TestRandom.Normal(random, n).Select(x => (double)x).ToArray();

    private static double[] Poisoned(long n)
    {
        var result = new double[n];
        result.AsSpan().Fill(double.NaN); // every element must be written
        return result;
    }

    public static IEnumerable<TestCaseData> Options()
    {
        (string Name, AttentionOptions Options)[] cases =
        [
            ("full", new AttentionOptions()),
            ("causal bottom-right", new AttentionOptions { Causal = true }),
            ("causal top-left", new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft }),
            ("window (96, 32)", new AttentionOptions { WindowLeft = 96, WindowRight = 32 }),
            ("causal window left 100 softcap 5 scale 1", new AttentionOptions { Causal = true, WindowLeft = 100, Softcap = 5f, SoftmaxScale = 1f }),
            ("top-left causal softcap 3", new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft, Softcap = 3f }),
        ];
        foreach (int blockSize in new[] { 128, 256, 16 })
        {
            foreach (var (name, options) in cases)
            {
                yield return new TestCaseData(blockSize, options).SetArgDisplayNames($"block {blockSize}", name);
            }
        }
    }

    /// <summary>Paged through a shuffled table (NaN rows, garbage entries) equals packed, bit for bit, with GQA 8:2.</summary>
    [TestCaseSource(nameof(Options))]
    public void PagedEqualsPacked(int blockSize, AttentionOptions options)
    {
        const int hq = 8, hkv = 2, d = 32;
        Random random = TestRandom.ForCurrentTest(out int seed);
        int totalQ = LensQ.Sum(), totalK = LensK.Sum();
        double[] q = Normal(random, totalQ * hq * d), k = Normal(random, totalK * hkv * d), v = Normal(random, totalK * hkv * d);
        var layout = PagedLayout.Build(random, LensK, blockSize);
        double[] kPool = layout.Scatter(k, hkv * d), vPool = layout.Scatter(v, hkv * d);
        string context = $"seed {seed}, block {blockSize}, {layout.NumBlocks} blocks, {layout.Columns} columns, {options}";

        double[] packedOut = Poisoned(totalQ * hq * d), packedLse = Poisoned(hq * totalQ);
        AttentionReference.ForwardVarlen(q, k, v, LensQ, LensK, hq, hkv, d, options, packedOut, packedLse);
        double[] pagedOut = Poisoned(totalQ * hq * d), pagedLse = Poisoned(hq * totalQ);
        AttentionReference.ForwardVarlenPaged(q, kPool, vPool, layout.Table, LensQ, LensK, hq, hkv, d, blockSize, options, pagedOut, pagedLse);

        using (Assert.EnterMultipleScope())
        {
            Assert.That(packedOut.All(double.IsFinite), Is.True, $"{context}: the packed reference wrote every output element");
            Assert.That(packedLse.Any(double.IsFinite), Is.True, $"{context}: rows see keys");
            Assert.That(pagedOut, Is.EqualTo(packedOut), $"{context}: output, paged vs packed");
            Assert.That(pagedLse, Is.EqualTo(packedLse), $"{context}: log-sum-exp, paged vs packed");
        }
    }

    /// <summary>
    /// The overload with a V head dim of its own, sinks and ALiBi (per sequence) equals the packed one on the same rows,
    /// bit for bit.
    /// </summary>
    [TestCase(128, 64, 64)]
    [TestCase(256, 64, 128)]
    [TestCase(16, 48, 16)]
    public void PagedWithExtrasEqualsPacked(int blockSize, int d, int dv)
    {
        const int hq = 4, hkv = 2;
        Random random = TestRandom.ForCurrentTest(out int seed);
        int totalQ = LensQ.Sum(), totalK = LensK.Sum();
        double[] q = Normal(random, totalQ * hq * d), k = Normal(random, totalK * hkv * d), v = Normal(random, totalK * hkv * dv);
        double[] sinks = Normal(random, hq);
        double[] slopes = TestRandom.Uniform(random, LensQ.Length * hq, 0.01, 0.3);
        var layout = PagedLayout.Build(random, LensK, blockSize);
        double[] kPool = layout.Scatter(k, hkv * d), vPool = layout.Scatter(v, hkv * dv);
        var options = new AttentionOptions { Causal = true, WindowLeft = 200 };
        string context = $"seed {seed}, block {blockSize}, D {d}, Dv {dv}";

        double[] packedOut = Poisoned(totalQ * hq * dv), packedLse = Poisoned(hq * totalQ);
        AttentionReference.ForwardVarlen(q, k, v, LensQ, LensK, hq, hkv, d, dv, options, sinks, slopes, packedOut, packedLse);
        double[] pagedOut = Poisoned(totalQ * hq * dv), pagedLse = Poisoned(hq * totalQ);
        AttentionReference.ForwardVarlenPaged(
            q, kPool, vPool, layout.Table, LensQ, LensK, hq, hkv, d, dv, blockSize, options, sinks, slopes, pagedOut, pagedLse);

        using (Assert.EnterMultipleScope())
        {
            Assert.That(packedOut.All(double.IsFinite), Is.True, $"{context}: the packed reference wrote every output element");
            Assert.That(pagedOut, Is.EqualTo(packedOut), $"{context}: output, paged vs packed");
            Assert.That(pagedLse, Is.EqualTo(packedLse), $"{context}: log-sum-exp, paged vs packed");
        }
    }

    /// <summary>
    /// The gathered rows are the packed rows; a NaN put into a row that sequence 3 uses shows up in sequence 3's output
    /// (and nowhere else), so the NaN in the unused rows would be seen if the reference read them.
    /// </summary>
    [Test]
    public void GatherReadsExactlyTheUsedRows()
    {
        const int hq = 2, hkv = 1, d = 8, blockSize = 128;
        Random random = TestRandom.ForCurrentTest(out int seed);
        int totalQ = LensQ.Sum(), totalK = LensK.Sum();
        double[] q = Normal(random, totalQ * hq * d), k = Normal(random, totalK * hkv * d), v = Normal(random, totalK * hkv * d);
        var layout = PagedLayout.Build(random, LensK, blockSize);
        double[] kPool = layout.Scatter(k, hkv * d), vPool = layout.Scatter(v, hkv * d);
        Assert.That(AttentionReference.GatherPaged(kPool, layout.Table, LensK, hkv, d, blockSize), Is.EqualTo(k), $"seed {seed}: gathered keys");
        Assert.That(AttentionReference.GatherPaged(vPool, layout.Table, LensK, hkv, d, blockSize), Is.EqualTo(v), $"seed {seed}: gathered values");

        // Key 200 of sequence 3 (its second block), value row: every query of sequence 3 sees it (not causal).
        vPool[layout.PoolRow(3, 200) * hkv * d] = double.NaN;
        double[] output = Poisoned(totalQ * hq * d);
        AttentionReference.ForwardVarlenPaged(q, kPool, vPool, layout.Table, LensQ, LensK, hq, hkv, d, blockSize, new AttentionOptions(), output, default);
        int start = LensQ.Take(3).Sum(), end = start + LensQ[3];
        for (int t = 0; t < totalQ; t++)
        {
            bool nan = double.IsNaN(output[t * hq * d]);
            Assert.That(nan, Is.EqualTo(t >= start && t < end), $"seed {seed}: query row {t}: NaN in sequence 3's used value row reaches sequence 3 only");
        }
    }

    public static IEnumerable<TestCaseData> BadArguments()
    {
        const int hkv = 2, d = 8, blockSize = 16;
        int[] lens = [20, 0, 16];
        // Sequence 0 uses pages 0 and 1, sequence 2 page 0; 4 blocks; 3 columns.
        int[] table = [2, 0, PagedLayout.Garbage, -7, PagedLayout.Garbage, 5, 3, 1, PagedLayout.Garbage];
        double[] pool = new double[4 * blockSize * hkv * d];
        TestCaseData Case(string name, Action call, string param, string text) =>
            new TestCaseData(call, param, text).SetArgDisplayNames(name);

        yield return Case("used entry past the pool", () => AttentionReference.GatherPaged(
            pool, [2, 4, 0, 0, 0, 0, 3, 1, 0], lens, hkv, d, blockSize), "blockTable", "blockTable[0, 1] is 4, which sequence 0 uses, but the pool has blocks 0..3");
        yield return Case("negative used entry", () => AttentionReference.GatherPaged(
            pool, [-3, 1, 0, 0, 0, 0, 3, 1, 0], lens, hkv, d, blockSize), "blockTable", "blockTable[0, 0] is -3");
        yield return Case("length past the table's capacity", () => AttentionReference.GatherPaged(
            pool, table, [20, 0, 49], hkv, d, blockSize), "seqLensK", "Sequence 2 has 49 keys but its row of the block table holds 3 blocks of 16 (48 keys)");
        yield return Case("pool not whole blocks", () => AttentionReference.GatherPaged(
            pool.AsSpan(1).ToArray(), table, lens, hkv, d, blockSize), "pool", "not a whole number of blocks");
        yield return Case("table not a whole row per sequence", () => AttentionReference.GatherPaged(
            pool, table.AsSpan(1).ToArray(), lens, hkv, d, blockSize), "blockTable", "not a whole row of [batch = 3");
        yield return Case("negative length", () => AttentionReference.GatherPaged(
            pool, table, [20, -1, 16], hkv, d, blockSize), "seqLensK", "seqLensK[1] is -1");
        yield return Case("block size 0", () => AttentionReference.GatherPaged(
            pool, table, lens, hkv, d, 0), "blockSize", "must be 1 or more");
        yield return Case("value pool of other blocks", () => AttentionReference.ForwardVarlenPaged(
            new double[36 * 4 * d], pool, pool.AsSpan(0, 3 * blockSize * hkv * d).ToArray(), table, [12, 12, 12], lens, 4, hkv, d, d, blockSize,
            new AttentionOptions(), default, default, new double[36 * 4 * d], default), "vPool", "kPool's 4 blocks");
    }

    /// <summary>The argument checks refuse what is wrong, naming the argument and the problem.</summary>
    [TestCaseSource(nameof(BadArguments))]
    public void BadArgumentsAreRefused(Action call, string param, string text)
    {
        var ex = Assert.Throws<ArgumentException>(() => call());
        Assert.That(ex!.ParamName, Is.EqualTo(param));
        Assert.That(ex.Message, Does.Contain(text));
    }
}
