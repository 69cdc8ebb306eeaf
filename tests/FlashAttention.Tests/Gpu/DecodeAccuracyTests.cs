using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// One decode problem as the tests describe it: dtype, heads, new tokens per sequence, the tokens each sequence's
/// cache holds before the call, whether new keys are appended, and the cache layout (contiguous when
/// <see cref="BlockSize"/> is 0, else paged with that block size and a shuffled block table).
/// </summary>
public sealed record DecodeSpec(
    DataType Dtype, int HeadDim, int HeadsQ, int HeadsKv, int SeqNew, int[] Lens, bool Append, int BlockSize, MaskSpec Mask, float? Scale = null)
{
    public bool Paged => BlockSize > 0;

    public int Batch => Lens.Length;

    public int Total(int b) => Lens[b] + (Append ? SeqNew : 0);

    public float EffectiveScale => Scale ?? (float)(1.0 / Math.Sqrt(HeadDim));

    public override string ToString() =>
        $"{(Dtype == DataType.Float16 ? "fp16" : "bf16")} D{HeadDim} Hq{HeadsQ} Hkv{HeadsKv} Snew{SeqNew} lens[{string.Join(",", Lens)}] " +
        $"{(Append ? "append" : "no-append")} {(Paged ? $"paged bs{BlockSize}" : "contiguous")} {Mask}" + (Scale is { } s ? $" scale {s}" : string.Empty);
}

/// <summary>
/// One decode on the GPU: fresh random dtype inputs (never zeros), a cache whose slots past each sequence's length
/// hold NaN (or any other garbage), a shuffled block table whose unused entries point at a NaN block (or are -1),
/// poisoned outputs, and a <see cref="KvCache"/> view over it all.
/// </summary>
internal sealed class DecodeRun : IDisposable
{
    private readonly CudaDevice _device;

    private DecodeRun(CudaDevice device, DecodeSpec spec)
    {
        _device = device;
        Spec = spec;
    }

    public DecodeSpec Spec { get; }

    public float[] Q { get; private set; } = [];

    public float[] KNew { get; private set; } = [];

    public float[] VNew { get; private set; } = [];

    /// <summary>The cache as uploaded: [B, capacity, Hkv, D] or [numBlocks, blockSize, Hkv, D].</summary>
    public float[] KCache0 { get; private set; } = [];

    public float[] VCache0 { get; private set; } = [];

    public int[] Table { get; private set; } = [];

    public int Capacity { get; private set; }

    public int NumBlocks { get; private set; }

    public int MaxBlocks { get; private set; }

    public int Row => Spec.HeadsKv * Spec.HeadDim;

    public DeviceArray DQ { get; private set; } = null!;

    public DeviceArray DKNew { get; private set; } = null!;

    public DeviceArray DVNew { get; private set; } = null!;

    public DeviceArray DKCache { get; private set; } = null!;

    public DeviceArray DVCache { get; private set; } = null!;

    public DeviceArray DOut { get; private set; } = null!;

    public DeviceArray DLse { get; private set; } = null!;

    public DeviceBuffer<int>? DTable { get; private set; }

    public KvCache Cache { get; private set; } = null!;

    public long[] QShape => [Spec.Batch, Spec.SeqNew, Spec.HeadsQ, Spec.HeadDim];

    public long[] NewShape => [Spec.Batch, Spec.SeqNew, Spec.HeadsKv, Spec.HeadDim];

    public long[] CacheShape => Spec.Paged
        ? [NumBlocks, Spec.BlockSize, Spec.HeadsKv, Spec.HeadDim]
        : [Spec.Batch, Capacity, Spec.HeadsKv, Spec.HeadDim];

    public DeviceTensor QT => DQ.Tensor(QShape);

    public DeviceTensor? KNewT => Spec.Append ? DKNew.Tensor(NewShape) : null;

    public DeviceTensor? VNewT => Spec.Append ? DVNew.Tensor(NewShape) : null;

    public DeviceTensor OutT => DOut.Tensor(QShape);

    public DeviceTensor LseT => DLse.Tensor([Spec.Batch, Spec.HeadsQ, Spec.SeqNew]);

    public AttentionOptions Options => Spec.Mask.ToOptions(Spec.Scale);

    /// <summary>
    /// Draws the inputs and uploads them. <paramref name="garbage"/> is what the slots past each sequence's length hold
    /// (NaN by default); with <paramref name="unusedEntriesMinusOne"/> the unused block-table entries are -1 instead of
    /// the index of a NaN block.
    /// </summary>
    public static DecodeRun Create(CudaDevice device, DecodeSpec spec, Random random, float garbage = float.NaN, bool unusedEntriesMinusOne = false)
    {
        var run = new DecodeRun(device, spec);
        try
        {
            run.Build(random, garbage, unusedEntriesMinusOne);
            return run;
        }
        catch
        {
            run.Dispose();
            throw;
        }
    }

    /// <summary>Row (in units of Hkv*D elements) of logical position p of sequence b in the cache arrays.</summary>
    public long RowOf(int b, int p) => Spec.Paged
        ? ((long)Table[(b * MaxBlocks) + (p / Spec.BlockSize)] * Spec.BlockSize) + (p % Spec.BlockSize)
        : ((long)b * Capacity) + p;

    /// <summary>Re-uploads the original cache, poisons the outputs and wraps a fresh KvCache with the original lengths.</summary>
    public void Reset(CudaStream stream)
    {
        stream.Synchronize();
        DKCache.Write(KCache0);
        DVCache.Write(VCache0);
        DOut.Poison();
        DLse.Poison();
        Cache?.Dispose();
        Cache = KvCache.Wrap(DKCache.Tensor(CacheShape), DVCache.Tensor(CacheShape), Spec.Lens, DTable?.AsTensor(Spec.Batch, MaxBlocks), stream: stream);
    }

    public void Decode(FlashAttention attention, CudaStream stream, int numSplits = 0, DeviceBuffer<byte>? workspace = null) =>
        attention.Decode(QT, Cache, KNewT, VNewT, OutT, LseT, Options, stream, numSplits, workspace);

    /// <summary>float64 reference output and log-sum-exp, and the caches as they must be after the call.</summary>
    public (double[] Out, double[] Lse, double[] KAfter, double[] VAfter) Reference()
    {
        double[] k = AttentionReference.ToDouble(KCache0), v = AttentionReference.ToDouble(VCache0);
        var output = new double[Q.Length];
        var lse = new double[Spec.Batch * Spec.HeadsQ * Spec.SeqNew];
        double[] kn = Spec.Append ? AttentionReference.ToDouble(KNew) : [], vn = Spec.Append ? AttentionReference.ToDouble(VNew) : [];
        if (Spec.Paged)
        {
            DecodeReference.ForwardPaged(AttentionReference.ToDouble(Q), k, v, Table, Spec.Lens, kn, vn, Spec.SeqNew, Spec.HeadsQ, Spec.HeadsKv,
                Spec.HeadDim, Spec.BlockSize, Options, output, lse);
        }
        else
        {
            DecodeReference.ForwardContiguous(AttentionReference.ToDouble(Q), k, v, Spec.Lens, kn, vn, Spec.SeqNew, Spec.HeadsQ, Spec.HeadsKv,
                Spec.HeadDim, Capacity, Options, output, lse);
        }

        return (output, lse, k, v);
    }

    /// <summary>What a plain same-dtype attention computes, per sequence over its logical keys.</summary>
    public float[] Naive()
    {
        var result = new float[Q.Length];
        int qPer = Spec.SeqNew * Spec.HeadsQ * Spec.HeadDim;
        for (int b = 0; b < Spec.Batch; b++)
        {
            int total = Spec.Total(b);
            var k = new float[total * Row];
            var v = new float[total * Row];
            for (int p = 0; p < total; p++)
            {
                if (p < Spec.Lens[b])
                {
                    Array.Copy(KCache0, RowOf(b, p) * Row, k, p * Row, Row);
                    Array.Copy(VCache0, RowOf(b, p) * Row, v, p * Row, Row);
                }
                else
                {
                    int source = ((b * Spec.SeqNew) + p - Spec.Lens[b]) * Row;
                    Array.Copy(KNew, source, k, p * Row, Row);
                    Array.Copy(VNew, source, v, p * Row, Row);
                }
            }

            var dims = new AttentionDims(1, Spec.SeqNew, total, Spec.HeadsQ, Spec.HeadsKv, Spec.HeadDim);
            float[] o = NaiveAttention.ForwardSameDtype(Q[(b * qPer)..((b + 1) * qPer)], k, v, dims, Spec.Mask, Spec.EffectiveScale, x => DeviceArray.Round(Spec.Dtype, x));
            o.CopyTo(result, b * qPer);
        }

        return result;
    }

    /// <summary>Whether element index e of the cache arrays is a slot the call appends into (and which new row it receives).</summary>
    public Dictionary<long, int> AppendedRows()
    {
        var rows = new Dictionary<long, int>();
        if (!Spec.Append)
        {
            return rows;
        }

        for (int b = 0; b < Spec.Batch; b++)
        {
            for (int i = 0; i < Spec.SeqNew; i++)
            {
                rows[RowOf(b, Spec.Lens[b] + i)] = (b * Spec.SeqNew) + i;
            }
        }

        return rows;
    }

    public void Dispose()
    {
        Cache?.Dispose();
        DQ?.Dispose();
        DKNew?.Dispose();
        DVNew?.Dispose();
        DKCache?.Dispose();
        DVCache?.Dispose();
        DOut?.Dispose();
        DLse?.Dispose();
        DTable?.Dispose();
    }

    private void Build(Random random, float garbage, bool unusedEntriesMinusOne)
    {
        DecodeSpec s = Spec;
        DataType dtype = s.Dtype;
        int maxTotal = Enumerable.Range(0, s.Batch).Select(s.Total).Max();
        if (s.Paged)
        {
            int[] pages = Enumerable.Range(0, s.Batch).Select(b => (s.Total(b) + s.BlockSize - 1) / s.BlockSize).ToArray();
            MaxBlocks = pages.Max() + 1; // a spare column, so every row has unused entries
            NumBlocks = pages.Sum() + 3; // a NaN "trap" block and two more never used
            int[] order = Enumerable.Range(0, NumBlocks).ToArray();
            random.Shuffle(order);
            int trap = order[0], next = 1;
            Table = new int[s.Batch * MaxBlocks];
            for (int b = 0; b < s.Batch; b++)
            {
                for (int p = 0; p < MaxBlocks; p++)
                {
                    Table[(b * MaxBlocks) + p] = p < pages[b] ? order[next++] : unusedEntriesMinusOne ? -1 : trap;
                }
            }

            Capacity = MaxBlocks * s.BlockSize;
        }
        else
        {
            Capacity = maxTotal + 37;
        }

        Q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, s.Batch * s.SeqNew * s.HeadsQ * s.HeadDim));
        KNew = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, s.Batch * s.SeqNew * Row));
        VNew = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, s.Batch * s.SeqNew * Row));
        long cacheElements = CacheShape.Aggregate(1L, (a, x) => a * x);
        KCache0 = new float[cacheElements];
        VCache0 = new float[cacheElements];
        Array.Fill(KCache0, garbage);
        Array.Fill(VCache0, garbage);
        for (int b = 0; b < s.Batch; b++)
        {
            for (int p = 0; p < s.Lens[b]; p++)
            {
                ForwardRun.RoundAll(dtype, TestRandom.Normal(random, Row)).CopyTo(KCache0, RowOf(b, p) * Row);
                ForwardRun.RoundAll(dtype, TestRandom.Normal(random, Row)).CopyTo(VCache0, RowOf(b, p) * Row);
            }
        }

        DQ = DeviceArray.Upload(_device, dtype, Q);
        DKNew = DeviceArray.Upload(_device, dtype, KNew);
        DVNew = DeviceArray.Upload(_device, dtype, VNew);
        DKCache = DeviceArray.Upload(_device, dtype, KCache0);
        DVCache = DeviceArray.Upload(_device, dtype, VCache0);
        DOut = DeviceArray.Allocate(_device, dtype, Q.Length);
        DLse = DeviceArray.Allocate(_device, DataType.Float32, s.Batch * s.HeadsQ * s.SeqNew);
        DOut.Poison();
        DLse.Poison();
        if (s.Paged)
        {
            DTable = new DeviceBuffer<int>(_device, Table.Length);
            DTable.CopyFrom(Table);
        }

        Cache = KvCache.Wrap(DKCache.Tensor(CacheShape), DVCache.Tensor(CacheShape), s.Lens, DTable?.AsTensor(s.Batch, MaxBlocks));
    }
}

/// <summary>
/// The decode kernels through <see cref="FlashAttention.Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> against <see cref="DecodeReference"/> (float64, from
/// the exact 16-bit inputs), judged like the forward kernels: every output written and finite, rows without keys
/// exactly 0 with log-sum-exp +infinity, relative L2 error under the dtype cap (bf16 1e-2, fp16 2e-3) and no worse
/// than twice a same-dtype naive attention, max abs error no worse than twice the naive one, log-sum-exp within 1e-4
/// relative. Every run also reads the cache back: the appended rows landed in their slots and no other byte changed,
/// and the KvCache's lengths (host and device) advanced.
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class DecodeAccuracyTests : AttentionTestBase
{
    private static readonly MaskSpec Full = new(false, false);
    private static readonly MaskSpec Causal = new(true, false);

    private static TestCaseData Case(DecodeSpec spec) => new TestCaseData(spec).SetArgDisplayNames(spec.ToString());

    private static DecodeSpec S(DataType t, int d, int hq, int hkv, int sn, int[] lens, bool append, int blockSize, MaskSpec mask, float? scale = null) =>
        new(t, d, hq, hkv, sn, lens, append, blockSize, mask, scale);

    private const DataType F16 = DataType.Float16, Bf16 = DataType.BFloat16;

    public static IEnumerable<TestCaseData> Cases()
    {
        // contiguous, ragged lengths with 0 and 1, GQA 4, 1, 8 and 32 (MQA)
        yield return Case(S(F16, 64, 8, 2, 1, [0, 1, 17, 300], true, 0, Full));
        yield return Case(S(Bf16, 128, 4, 4, 1, [1, 0, 1023], false, 0, Full));
        yield return Case(S(Bf16, 96, 16, 2, 1, [5, 777], true, 0, Causal));
        yield return Case(S(F16, 128, 32, 1, 1, [2048, 1], true, 0, Full));

        // paged, every block size, shuffled tables; appends that fill a page exactly, start a new one, or land mid-page
        yield return Case(S(F16, 64, 8, 2, 1, [0, 1, 15, 16, 47], true, 16, Full));
        yield return Case(S(Bf16, 128, 8, 1, 1, [31, 32, 0, 100], true, 32, Causal));
        yield return Case(S(F16, 96, 4, 4, 1, [63, 1, 200], true, 64, Full));
        yield return Case(S(Bf16, 64, 16, 4, 1, [127, 128, 0, 1000], true, 128, Causal));
        yield return Case(S(F16, 128, 8, 8, 1, [255, 1, 513], true, 256, Full));
        yield return Case(S(Bf16, 64, 8, 2, 1, [1, 700, 0], false, 256, Full));

        // several new tokens (causal, bottom-right), appends that cross page ends
        yield return Case(S(Bf16, 64, 8, 2, 7, [0, 12, 30], true, 16, Causal));
        yield return Case(S(F16, 128, 4, 2, 64, [0, 1, 100], true, 64, Causal));
        yield return Case(S(Bf16, 64, 32, 4, 5, [3, 0, 250], true, 0, Causal));
        yield return Case(S(F16, 128, 8, 2, 3, [10, 400], false, 0, Causal));
        yield return Case(S(Bf16, 128, 32, 1, 2, [40, 0, 7], true, 32, Causal));
        yield return Case(S(F16, 64, 2, 1, 16, [1, 33], true, 16, Full));

        // window and softcap
        yield return Case(S(F16, 64, 8, 2, 1, [300, 5, 0], true, 16, new MaskSpec(false, false, Left: 32)));
        yield return Case(S(Bf16, 128, 8, 2, 4, [200, 3], true, 0, new MaskSpec(true, false, Left: 50, Softcap: 30f)));
        yield return Case(S(Bf16, 96, 4, 1, 1, [500, 70], true, 64, new MaskSpec(false, false, Softcap: 5f)));
        yield return Case(S(F16, 64, 4, 2, 6, [100, 2], true, 0, new MaskSpec(false, false, Left: 8, Right: 2)));
        yield return Case(S(Bf16, 64, 8, 4, 3, [90, 1], true, 32, new MaskSpec(true, false, Left: 0)));

        // custom scale
        yield return Case(S(F16, 64, 4, 2, 1, [129, 2], true, 0, Full, 0.3f));
        yield return Case(S(Bf16, 128, 8, 2, 2, [64, 65], true, 64, Causal, 0.05f));
    }

    [TestCaseSource(nameof(Cases))]
    public void DecodeMatchesReference(DecodeSpec spec) => RunAndJudge(spec);

    /// <summary>Head dims without a kernel of their own (80 pads to 96); ignored where the build does not serve them.</summary>
    [TestCase(F16, 80, 16)]
    [TestCase(Bf16, 80, 0)]
    [TestCase(Bf16, 32, 32)]
    [TestCase(F16, 256, 16)]
    [TestCase(Bf16, 192, 0)]
    public void OtherHeadDimsMatchReference(DataType dtype, int headDim, int blockSize)
    {
        var spec = S(dtype, headDim, 8, 2, 3, [0, 33, 64], true, blockSize, Causal);
        RequireServed(spec);
        RunAndJudge(spec);
    }

    /// <summary>
    /// The same call split 1 .. 128 ways (and the automatic choice) gives the same result within rounding, each
    /// against the reference; the split-count query reports what was asked for, and a caller workspace works.
    /// </summary>
    [TestCase(Bf16, 0, 1)]
    [TestCase(F16, 16, 1)]
    [TestCase(Bf16, 64, 4)]
    public void SplitCountsAgree(DataType dtype, int blockSize, int seqNew)
    {
        var spec = S(dtype, 128, 8, 2, seqNew, [1000, 3, 0, 517], true, blockSize, seqNew > 1 ? Causal : Full);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using DecodeRun run = DecodeRun.Create(Device, spec, random);
        var (refOut, refLse, _, _) = run.Reference();
        float[] naive = run.Naive();
        float[]? baseline = null;
        foreach (int splits in new[] { 1, 2, 3, 4, 7, 16, 33, 64, 128, 0 })
        {
            run.Reset(Stream);
            var args = new DecodeArguments(run.QT, run.Cache, run.KNewT, run.VNewT, run.OutT, run.LseT, splits);
            int used = Attention.GetDecodeSplitCount(args, run.Options);
            long bytes = Attention.GetDecodeWorkspaceSize(args, run.Options);
            Assert.That(Attention.GetDecodeSplitCount(run.QT, run.Cache, run.KNewT, run.VNewT, run.OutT, run.LseT, run.Options, splits), Is.EqualTo(used),
                "the positional and record forms choose the same split count");
            Assert.That(Attention.GetDecodeWorkspaceSize(run.QT, run.Cache, run.KNewT, run.VNewT, run.OutT, run.LseT, run.Options, splits), Is.EqualTo(bytes),
                "the positional and record forms size the same workspace");
            Assert.That(used, splits == 0 ? Is.InRange(1, FlashAttention.MaxDecodeSplits) : Is.EqualTo(splits), $"split count for num_splits={splits}");
            Assert.That(bytes, used == 1 ? Is.Zero : Is.Positive, $"workspace for {used} splits");
            using DeviceBuffer<byte>? workspace = bytes > 0 && splits % 2 == 0 ? new DeviceBuffer<byte>(Device, bytes) : null;
            bool record = splits % 4 == 0;
            if (record)
            {
                Attention.Decode(args with { Workspace = workspace }, run.Options, Stream);
            }
            else
            {
                run.Decode(Attention, Stream, splits, workspace);
            }

            Stream.Synchronize();
            float[] ours = run.DOut.Read();
            string context = $"seed {seed}, {spec}, num_splits {splits} (used {used}){(workspace is null ? string.Empty : ", caller workspace")}{(record ? ", record form" : string.Empty)}";
            JudgeOutput(ours, naive, refOut, run.DLse.Read(), refLse, spec.Dtype, context);
            if (baseline is null)
            {
                baseline = ours;
                continue;
            }

            // Within rounding of the unsplit result: each is within twice the naive error of the exact result, so the
            // triangle bound is 4x; independent rounding errors put the difference near 1.4x, and 3x leaves room.
            double relNaive = Numerics.RelativeL2(naive, refOut);
            double relSplit = Numerics.RelativeL2(ours, AttentionReference.ToDouble(baseline));
            double maxNaive = MaxAbs(naive, refOut);
            double maxSplit = MaxAbs(ours, AttentionReference.ToDouble(baseline));
            Assert.That(relSplit, Is.LessThanOrEqualTo(3 * relNaive), $"{context}: rel L2 against the unsplit result {relSplit:E3}, naive error {relNaive:E3}");
            Assert.That(maxSplit, Is.LessThanOrEqualTo(3 * maxNaive), $"{context}: max |diff| against the unsplit result {maxSplit:E3}, naive {maxNaive:E3}");
        }
    }

    /// <summary>
    /// Cache slots past each sequence's length (and blocks the table does not use for a sequence's live pages) never
    /// change the output: NaN there, or huge finite values, or -1 in the unused table entries, all give bitwise the
    /// same output, and it matches the reference.
    /// </summary>
    [TestCase(Bf16, 16)]
    [TestCase(F16, 64)]
    [TestCase(F16, 0)]
    public void SlotsPastTheEndNeverMatter(DataType dtype, int blockSize)
    {
        var spec = S(dtype, 64, 8, 2, 3, [1, 0, 77, 130], true, blockSize, Causal);
        int seed = TestRandom.SeedForCurrentTest();
        float big = dtype == DataType.Float16 ? 60000f : 1e30f;
        byte[]? first = null;
        foreach (var (garbage, minusOne) in new[] { (float.NaN, false), (big, false), (-big, true) })
        {
            using DecodeRun run = DecodeRun.Create(Device, spec, new Random(seed), garbage, minusOne);
            run.Decode(Attention, Stream, numSplits: 3);
            Stream.Synchronize();
            var (refOut, refLse, _, _) = run.Reference();
            string context = $"seed {seed}, {spec}, garbage {garbage}, unused entries {(minusOne ? "-1" : "NaN block")}";
            JudgeOutput(run.DOut.Read(), run.Naive(), refOut, run.DLse.Read(), refLse, dtype, context);
            byte[] bits = run.DOut.ReadBytes();
            first ??= bits;
            Assert.That(bits, Is.EqualTo(first), $"{context}: the output depends on slots it must not read");
        }
    }

    /// <summary>
    /// A paged cache whose used blocks sit past element 2^31 (4 GiB of 16-bit elements per cache): offsets must be
    /// 64-bit. Cheap: one kv head of 64, blocks of 256, only the used blocks are written, the rest is one memset.
    /// </summary>
    [Test]
    public void PagedCachePast2To31ElementsIndexesCorrectly()
    {
        const int headDim = 64, blockSize = 256, hq = 4, hkv = 1;
        const long blockElements = (long)blockSize * hkv * headDim; // 2^14
        int numBlocks = (int)((1L << 31) / blockElements) + 8;      // 131080 blocks: element offsets up to 2^31 + 2^17
        long elements = numBlocks * blockElements;
        RequireMemory(2 * elements * 2, "two paged caches of 2^31 + 2^17 bf16 elements");

        int[] lens = [300, 513];
        const int seqNew = 1;
        // Pages of each sequence, most of them past 2^31 elements (block 131072 starts at exactly 2^31).
        int[][] pages = [[numBlocks - 1, numBlocks - 5], [numBlocks - 4, numBlocks - 2, 2]];
        int maxBlocks = 4;
        var table = Enumerable.Repeat(-1, lens.Length * maxBlocks).ToArray();
        for (int b = 0; b < lens.Length; b++)
        {
            pages[b].CopyTo(table, b * maxBlocks);
        }

        Random random = TestRandom.ForCurrentTest(out int seed);
        using var k = new DeviceBuffer<BFloat16>(Device, elements);
        using var v = new DeviceBuffer<BFloat16>(Device, elements);
        k.Fill(0xFF);
        v.Fill(0xFF);

        // A compact host copy of the used blocks for the reference: host block i is physical block used[i].
        int[] used = pages.SelectMany(p => p).ToArray();
        var hostK = new float[used.Length * blockElements];
        var hostV = new float[used.Length * blockElements];
        Array.Fill(hostK, float.NaN);
        Array.Fill(hostV, float.NaN);
        var compactTable = new int[table.Length];
        Array.Fill(compactTable, -1);
        for (int b = 0; b < lens.Length; b++)
        {
            for (int page = 0; page < pages[b].Length; page++)
            {
                int compact = Array.IndexOf(used, pages[b][page]);
                compactTable[(b * maxBlocks) + page] = compact;
                for (int row = 0; row < blockSize; row++)
                {
                    int p = (page * blockSize) + row;
                    if (p >= lens[b])
                    {
                        break;
                    }

                    long at = ((compact * (long)blockSize) + row) * headDim;
                    ForwardRun.RoundAll(DataType.BFloat16, TestRandom.Normal(random, headDim)).CopyTo(hostK, at);
                    ForwardRun.RoundAll(DataType.BFloat16, TestRandom.Normal(random, headDim)).CopyTo(hostV, at);
                }
            }
        }

        for (int i = 0; i < used.Length; i++)
        {
            long offset = used[i] * blockElements;
            k.CopyFrom(hostK.AsSpan((int)(i * blockElements), (int)blockElements).ToArray().Select(x => (BFloat16)x).ToArray(), offset);
            v.CopyFrom(hostV.AsSpan((int)(i * blockElements), (int)blockElements).ToArray().Select(x => (BFloat16)x).ToArray(), offset);
        }

        float[] q = ForwardRun.RoundAll(DataType.BFloat16, TestRandom.Normal(random, lens.Length * seqNew * hq * headDim));
        float[] kn = ForwardRun.RoundAll(DataType.BFloat16, TestRandom.Normal(random, lens.Length * seqNew * hkv * headDim));
        float[] vn = ForwardRun.RoundAll(DataType.BFloat16, TestRandom.Normal(random, lens.Length * seqNew * hkv * headDim));
        using DeviceArray dq = DeviceArray.Upload(Device, DataType.BFloat16, q);
        using DeviceArray dkn = DeviceArray.Upload(Device, DataType.BFloat16, kn);
        using DeviceArray dvn = DeviceArray.Upload(Device, DataType.BFloat16, vn);
        using DeviceArray dout = DeviceArray.Allocate(Device, DataType.BFloat16, q.Length);
        using DeviceArray dlse = DeviceArray.Allocate(Device, DataType.Float32, lens.Length * hq * seqNew);
        dout.Poison();
        dlse.Poison();
        using var dtable = new DeviceBuffer<int>(Device, table.Length);
        dtable.CopyFrom(table);
        long[] cacheShape = [numBlocks, blockSize, hkv, headDim];
        using KvCache cache = KvCache.Wrap(k.AsTensor(cacheShape), v.AsTensor(cacheShape), lens, dtable.AsTensor(lens.Length, maxBlocks));
        var options = new AttentionOptions { Causal = true };
        long[] qShape = [lens.Length, seqNew, hq, headDim], newShape = [lens.Length, seqNew, hkv, headDim];
        Attention.Decode(dq.Tensor(qShape), cache, dkn.Tensor(newShape), dvn.Tensor(newShape), dout.Tensor(qShape),
            dlse.Tensor([lens.Length, hq, seqNew]), options, Stream, numSplits: 2);
        Stream.Synchronize();

        var refOut = new double[q.Length];
        var refLse = new double[lens.Length * hq * seqNew];
        double[] rk = AttentionReference.ToDouble(hostK), rv = AttentionReference.ToDouble(hostV);
        DecodeReference.ForwardPaged(AttentionReference.ToDouble(q), rk, rv, compactTable, lens, AttentionReference.ToDouble(kn),
            AttentionReference.ToDouble(vn), seqNew, hq, hkv, headDim, blockSize, options, refOut, refLse);
        var dims = new AttentionDims(1, seqNew, 0, hq, hkv, headDim);
        float[] naive = NaiveOverCompact(q, hostK, hostV, kn, vn, compactTable, lens, maxBlocks, blockSize, dims, DataType.BFloat16);
        string context = $"seed {seed}, paged cache of {numBlocks} blocks ({elements} elements), pages [{string.Join("; ", pages.Select(p => string.Join(",", p)))}]";
        JudgeOutput(dout.Read(), naive, refOut, dlse.Read(), refLse, DataType.BFloat16, context);

        // The appended rows landed in the far blocks, and the rest of those blocks is unchanged.
        for (int i = 0; i < used.Length; i++)
        {
            var back = new BFloat16[blockElements];
            k.CopyTo(back, used[i] * blockElements);
            for (long e = 0; e < blockElements; e++)
            {
                float expected = (float)rk[(i * blockElements) + e];
                float actual = (float)back[e];
                Assert.That(actual.Equals(expected), Is.True, $"{context}: k of block {used[i]} element {e} is {actual}, expected {expected}");
            }
        }

        Assert.That(cache.SequenceLengths, Is.EqualTo(lens.Select(x => x + seqNew)));
    }

    /// <summary>A contiguous cache whose second sequence starts past element 2^31.</summary>
    [Test]
    public void ContiguousCachePast2To31ElementsIndexesCorrectly()
    {
        const int headDim = 64, hq = 2, hkv = 1, batch = 2, seqNew = 2;
        int capacity = (1 << 25) + 16; // 2^31 + 1024 elements per sequence
        long elements = (long)batch * capacity * hkv * headDim;
        RequireMemory(2 * elements * 2, "two contiguous caches of 2^32 fp16 elements");
        int[] lens = [5, 300];
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var k = new DeviceBuffer<Half>(Device, elements);
        using var v = new DeviceBuffer<Half>(Device, elements);
        k.Fill(0xFF);
        v.Fill(0xFF);

        // Host copy of the first 512 positions of each sequence (what the call can read or write).
        const int window = 512;
        int row = hkv * headDim;
        var hostK = new float[batch * window * row];
        var hostV = new float[hostK.Length];
        Array.Fill(hostK, float.NaN);
        Array.Fill(hostV, float.NaN);
        for (int b = 0; b < batch; b++)
        {
            for (int p = 0; p < lens[b]; p++)
            {
                ForwardRun.RoundAll(DataType.Float16, TestRandom.Normal(random, row)).CopyTo(hostK, ((b * window) + p) * row);
                ForwardRun.RoundAll(DataType.Float16, TestRandom.Normal(random, row)).CopyTo(hostV, ((b * window) + p) * row);
            }

            long offset = (long)b * capacity * row;
            k.CopyFrom(hostK.AsSpan(b * window * row, window * row).ToArray().Select(x => (Half)x).ToArray(), offset);
            v.CopyFrom(hostV.AsSpan(b * window * row, window * row).ToArray().Select(x => (Half)x).ToArray(), offset);
        }

        float[] q = ForwardRun.RoundAll(DataType.Float16, TestRandom.Normal(random, batch * seqNew * hq * headDim));
        float[] kn = ForwardRun.RoundAll(DataType.Float16, TestRandom.Normal(random, batch * seqNew * row));
        float[] vn = ForwardRun.RoundAll(DataType.Float16, TestRandom.Normal(random, batch * seqNew * row));
        using DeviceArray dq = DeviceArray.Upload(Device, DataType.Float16, q);
        using DeviceArray dkn = DeviceArray.Upload(Device, DataType.Float16, kn);
        using DeviceArray dvn = DeviceArray.Upload(Device, DataType.Float16, vn);
        using DeviceArray dout = DeviceArray.Allocate(Device, DataType.Float16, q.Length);
        using DeviceArray dlse = DeviceArray.Allocate(Device, DataType.Float32, batch * hq * seqNew);
        dout.Poison();
        dlse.Poison();
        long[] cacheShape = [batch, capacity, hkv, headDim];
        using KvCache cache = KvCache.Wrap(k.AsTensor(cacheShape), v.AsTensor(cacheShape), lens);
        var options = new AttentionOptions { Causal = true };
        long[] qShape = [batch, seqNew, hq, headDim], newShape = [batch, seqNew, hkv, headDim];
        Attention.Decode(dq.Tensor(qShape), cache, dkn.Tensor(newShape), dvn.Tensor(newShape), dout.Tensor(qShape), dlse.Tensor([batch, hq, seqNew]), options, Stream);
        Stream.Synchronize();

        var refOut = new double[q.Length];
        var refLse = new double[batch * hq * seqNew];
        double[] rk = AttentionReference.ToDouble(hostK), rv = AttentionReference.ToDouble(hostV);
        DecodeReference.ForwardContiguous(AttentionReference.ToDouble(q), rk, rv, lens, AttentionReference.ToDouble(kn), AttentionReference.ToDouble(vn),
            seqNew, hq, hkv, headDim, window, options, refOut, refLse);
        var table = new int[batch];
        for (int b = 0; b < batch; b++)
        {
            table[b] = b;
        }

        float[] naive = NaiveOverCompact(q, hostK, hostV, kn, vn, table, lens, 1, window, new AttentionDims(1, seqNew, 0, hq, hkv, headDim), DataType.Float16);
        string context = $"seed {seed}, contiguous capacity {capacity}, sequence 1 at element {(long)capacity * row}";
        JudgeOutput(dout.Read(), naive, refOut, dlse.Read(), refLse, DataType.Float16, context);
        var back = new Half[window * row];
        k.CopyTo(back, (long)capacity * row);
        for (int e = 0; e < back.Length; e++)
        {
            float expected = (float)rk[(window * row) + e];
            Assert.That(((float)back[e]).Equals(expected), Is.True, $"{context}: k of sequence 1 element {e} is {(float)back[e]}, expected {expected}");
        }
    }

    /// <summary>
    /// Owned caches over many steps: a causal prefill then one token a step, all queued on one stream without waiting
    /// (the lengths' device copies must follow each decode in stream order), a sequence reset half way (its blocks go
    /// back to the free list and are reused), each step against the reference; the cache read back at the end holds
    /// every appended row where the block table says.
    /// </summary>
    [TestCase(Bf16, 16)]
    [TestCase(F16, 32)]
    [TestCase(Bf16, 0)]
    public void OwnedCacheOverManySteps(DataType dtype, int blockSize)
    {
        const int batch = 3, hq = 8, hkv = 2, headDim = 64, prefill = 5, steps = 40, resetAt = 20, resetSeq = 1;
        int capacity = prefill + steps;
        Random random = TestRandom.ForCurrentTest(out int seed);
        int pagesPerSeq = blockSize == 0 ? 0 : (capacity + blockSize - 1) / blockSize;
        using KvCache cache = blockSize == 0
            ? KvCache.CreateContiguous(Device, dtype, batch, capacity, hkv, headDim, Stream)
            : KvCache.CreatePaged(Device, dtype, batch, batch * pagesPerSeq, blockSize, hkv, headDim, pagesPerSeq, Stream);
        Assert.That(cache.OwnsMemory, Is.True);
        Assert.That(cache.HasBlockAllocator, Is.EqualTo(blockSize > 0));
        Assert.That(cache.FreeBlockCount, Is.EqualTo(blockSize > 0 ? batch * pagesPerSeq : 0));

        int row = hkv * headDim;
        var mirrorK = new double[batch * capacity * row];
        var mirrorV = new double[mirrorK.Length];
        var mirrorLens = new int[batch];
        var outputs = new List<(DeviceArray Q, DeviceArray K, DeviceArray V, DeviceArray Out, DeviceArray Lse, int Sn, double[] Ref, double[] RefLse, float[] Naive)>();
        var options = new AttentionOptions { Causal = true };
        try
        {
            for (int step = 0; step <= steps; step++)
            {
                int sn = step == 0 ? prefill : 1;
                if (step == resetAt)
                {
                    cache.ResetSequence(resetSeq, Stream);
                    mirrorLens[resetSeq] = 0;
                    Array.Fill(mirrorK, double.NaN, resetSeq * capacity * row, capacity * row);
                }

                float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, batch * sn * hq * headDim));
                float[] k = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, batch * sn * row));
                float[] v = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, batch * sn * row));
                var naive = new float[q.Length];
                int qPer = sn * hq * headDim;
                for (int b = 0; b < batch; b++)
                {
                    int total = mirrorLens[b] + sn;
                    var kb = new float[total * row];
                    var vb = new float[total * row];
                    for (int p = 0; p < mirrorLens[b]; p++)
                    {
                        for (int x = 0; x < row; x++)
                        {
                            kb[(p * row) + x] = (float)mirrorK[(((b * capacity) + p) * row) + x];
                            vb[(p * row) + x] = (float)mirrorV[(((b * capacity) + p) * row) + x];
                        }
                    }

                    Array.Copy(k, b * sn * row, kb, mirrorLens[b] * row, sn * row);
                    Array.Copy(v, b * sn * row, vb, mirrorLens[b] * row, sn * row);
                    NaiveAttention.ForwardSameDtype(q[(b * qPer)..((b + 1) * qPer)], kb, vb, new AttentionDims(1, sn, total, hq, hkv, headDim), Causal,
                        (float)(1.0 / Math.Sqrt(headDim)), x => DeviceArray.Round(dtype, x)).CopyTo(naive, b * qPer);
                }

                var refOut = new double[q.Length];
                var refLse = new double[batch * hq * sn];
                DecodeReference.ForwardContiguous(AttentionReference.ToDouble(q), mirrorK, mirrorV, mirrorLens, AttentionReference.ToDouble(k),
                    AttentionReference.ToDouble(v), sn, hq, hkv, headDim, capacity, options, refOut, refLse);
                for (int b = 0; b < batch; b++)
                {
                    mirrorLens[b] += sn;
                }

                var entry = (DeviceArray.Upload(Device, dtype, q), DeviceArray.Upload(Device, dtype, k), DeviceArray.Upload(Device, dtype, v),
                    DeviceArray.Allocate(Device, dtype, q.Length), DeviceArray.Allocate(Device, DataType.Float32, batch * hq * sn), sn, refOut, refLse, naive);
                outputs.Add(entry);
                entry.Item4.Poison();
                entry.Item5.Poison();
                long[] qShape = [batch, sn, hq, headDim], newShape = [batch, sn, hkv, headDim];
                Attention.Decode(entry.Item1.Tensor(qShape), cache, entry.Item2.Tensor(newShape), entry.Item3.Tensor(newShape),
                    entry.Item4.Tensor(qShape), entry.Item5.Tensor([batch, hq, sn]), options, Stream);
                Assert.That(cache.SequenceLengths, Is.EqualTo(mirrorLens), $"host lengths after step {step}");
            }

            Stream.Synchronize();
            for (int step = 0; step < outputs.Count; step++)
            {
                var o = outputs[step];
                JudgeOutput(o.Out.Read(), o.Naive, o.Ref, o.Lse.Read(), o.RefLse, dtype, $"seed {seed}, {cache}, step {step} (Snew {o.Sn})");
            }

            Assert.That(ReadDeviceLengths(cache), Is.EqualTo(mirrorLens), "device lengths");
            var bits = new ushort[cache.Keys.ElementCount];
            cache.CopyKeysTo(bits, Stream);
            for (int b = 0; b < batch; b++)
            {
                for (int p = 0; p < mirrorLens[b]; p++)
                {
                    long physical = blockSize == 0
                        ? ((long)b * capacity) + p
                        : ((long)cache.HostBlockTable![(b * pagesPerSeq) + (p / blockSize)] * blockSize) + (p % blockSize);
                    for (int x = 0; x < row; x++)
                    {
                        float actual = ToFloat(dtype, bits[(physical * row) + x]);
                        double expected = mirrorK[(((b * capacity) + p) * row) + x];
                        Assert.That(actual, Is.EqualTo(expected), $"seed {seed}: k of sequence {b} position {p} element {x}");
                    }
                }
            }

            if (blockSize > 0)
            {
                int usedPages = mirrorLens.Sum(len => (len + blockSize - 1) / blockSize);
                Assert.That(cache.FreeBlockCount, Is.EqualTo((batch * pagesPerSeq) - usedPages), "blocks in use after the reset");
                int[] blocks = cache.HostBlockTable!.Where(x => x >= 0).ToArray();
                Assert.That(blocks, Is.Unique, "no block is given to two pages");
            }
        }
        finally
        {
            foreach (var o in outputs)
            {
                o.Q.Dispose();
                o.K.Dispose();
                o.V.Dispose();
                o.Out.Dispose();
                o.Lse.Dispose();
            }
        }
    }

    /// <summary>The allocator of an owned paged cache: lengths give and take blocks; too few free blocks refuse cleanly.</summary>
    [Test]
    public void OwnedPagedCacheAllocatesAndRefuses()
    {
        using KvCache cache = KvCache.CreatePaged(Device, DataType.BFloat16, 2, numBlocks: 5, blockSize: 16, headsKv: 1, headDim: 64, maxBlocksPerSequence: 4, Stream);
        Assert.Multiple(() =>
        {
            Assert.That(cache.FreeBlockCount, Is.EqualTo(5));
            Assert.That(cache.Capacity, Is.EqualTo(64));
            Assert.That(cache.HostBlockTable, Is.All.EqualTo(-1));
        });

        cache.SetSequenceLengths([17, 16], Stream);   // 2 + 1 pages
        Assert.That(cache.FreeBlockCount, Is.EqualTo(2));
        Assert.That(cache.HostBlockTable!.Where(x => x >= 0), Is.Unique);
        Assert.That(ReadDeviceLengths(cache), Is.EqualTo(new[] { 17, 16 }));
        Assert.That(ReadDeviceTable(cache), Is.EqualTo(cache.HostBlockTable), "device block table follows the host copy");

        Assert.That(() => cache.SetSequenceLengths([64, 32], Stream), Throws.InvalidOperationException.With.Message.Contains("free blocks")); // needs 3 more
        Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 17, 16 }), "a refused change changes nothing");
        Assert.That(cache.FreeBlockCount, Is.EqualTo(2));

        // A decode whose append needs more blocks than are free is refused before the native call.
        cache.SetSequenceLengths([48, 32], Stream); // 3 + 2 pages: all 5 blocks
        Assert.That(cache.FreeBlockCount, Is.Zero);
        using var q = new DeviceBuffer<BFloat16>(Device, 2 * 4 * 64);
        using var kn = new DeviceBuffer<BFloat16>(Device, 2 * 64);
        using var vn = new DeviceBuffer<BFloat16>(Device, 2 * 64);
        using var o = new DeviceBuffer<BFloat16>(Device, 2 * 4 * 64);
        var ex = Assert.Throws<ArgumentException>(() => Attention.Decode(q.AsTensor(2, 1, 4, 64), cache, kn.AsTensor(2, 1, 1, 64), vn.AsTensor(2, 1, 1, 64), o.AsTensor(2, 1, 4, 64), stream: Stream));
        Assert.That(ex!.Message, Does.Contain("free"));
        var record = new DecodeArguments(q.AsTensor(2, 1, 4, 64), cache, kn.AsTensor(2, 1, 1, 64), vn.AsTensor(2, 1, 1, 64), o.AsTensor(2, 1, 4, 64));
        Assert.That(() => Attention.Decode(record, stream: Stream), Throws.ArgumentException.With.Message.Contains("free"), "the record form");
        Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 48, 32 }));

        cache.ResetSequence(0, Stream);
        Assert.That(cache.FreeBlockCount, Is.EqualTo(3));
        Assert.That(cache.HostBlockTable!.Take(4), Is.All.EqualTo(-1));
        Assert.That(ReadDeviceTable(cache), Is.EqualTo(cache.HostBlockTable));
        Assert.That(ReadDeviceLengths(cache), Is.EqualTo(new[] { 0, 32 }));
    }

    /// <summary>A call the native library refuses leaves the lengths and the free blocks as they were.</summary>
    [Test]
    public void RefusedDecodeChangesNothing()
    {
        using KvCache cache = KvCache.CreatePaged(Device, DataType.Float16, 1, numBlocks: 4, blockSize: 16, headsKv: 1, headDim: 64, stream: Stream);
        cache.SetSequenceLengths([16], Stream);
        using var q = new DeviceBuffer<Half>(Device, (4 * 64) + 8);
        using var kn = new DeviceBuffer<Half>(Device, 64);
        using var vn = new DeviceBuffer<Half>(Device, 64);
        using var o = new DeviceBuffer<Half>(Device, 4 * 64);
        // q one element off 16-byte alignment: only the native library can tell.
        DeviceTensor misaligned = DeviceTensor.FromBuffer(q, [1, 1, 4, 64], default, elementOffset: 1);
        var ex = Assert.Throws<FlashAttentionException>(() => Attention.Decode(misaligned, cache, kn.AsTensor(1, 1, 1, 64), vn.AsTensor(1, 1, 1, 64), o.AsTensor(1, 1, 4, 64), stream: Stream));
        Assert.Multiple(() =>
        {
            Assert.That(ex!.Status, Is.EqualTo(FlashAttentionStatus.InvalidArgument));
            Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 16 }));
            Assert.That(cache.FreeBlockCount, Is.EqualTo(3), "the block given for the append went back");
            Assert.That(ReadDeviceLengths(cache), Is.EqualTo(new[] { 16 }));
        });
    }

    [Test]
    public void CreateChecksItsArguments()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => KvCache.CreateContiguous(Device, DataType.Float32, 1, 16, 1, 64), Throws.ArgumentException.With.Message.Contains("Float16, BFloat16 or Float8E4M3"));
            Assert.That(() => KvCache.CreateContiguous(Device, DataType.Float8E4M3, 1, 16, 1, 40), Throws.ArgumentException.With.Message.Contains("multiple of 16"));
            Assert.That(() => KvCache.CreateContiguous(Device, DataType.Float16, 0, 16, 1, 64), Throws.InstanceOf<ArgumentOutOfRangeException>());
            Assert.That(() => KvCache.CreatePaged(Device, DataType.Float16, 1, 0, 16, 1, 64), Throws.InstanceOf<ArgumentOutOfRangeException>());
            Assert.That(() => KvCache.CreatePaged(Device, DataType.Float16, 1, 4, 16, 1, 64, maxBlocksPerSequence: -1), Throws.InstanceOf<ArgumentOutOfRangeException>());
        });
    }

    /// <summary>Wrapping a caller's device lengths array: the cache updates it in place after an append.</summary>
    [Test]
    public void CallerLengthsArrayIsUpdatedInPlace()
    {
        var spec = S(DataType.BFloat16, 64, 4, 2, 2, [3, 0], true, 0, Causal);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using DecodeRun run = DecodeRun.Create(Device, spec, random);
        using var lengths = new DeviceBuffer<int>(Device, 2);
        lengths.CopyFrom(spec.Lens);
        run.Cache.Dispose();
        using KvCache cache = KvCache.Wrap(run.DKCache.Tensor(run.CacheShape), run.DVCache.Tensor(run.CacheShape), spec.Lens, cacheSeqLens: lengths.AsTensor(2));
        Attention.Decode(run.QT, cache, run.KNewT, run.VNewT, run.OutT, run.LseT, run.Options, Stream);
        Stream.Synchronize();
        var back = new int[2];
        lengths.CopyTo(back);
        Assert.That(back, Is.EqualTo(new[] { 5, 2 }), $"seed {seed}");
    }

    private void RunAndJudge(DecodeSpec spec)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        using DecodeRun run = DecodeRun.Create(Device, spec, random);
        byte[] kBefore = run.DKCache.ReadBytes(), vBefore = run.DVCache.ReadBytes();
        run.Decode(Attention, Stream);
        Stream.Synchronize();
        float[] ours = run.DOut.Read();
        float[] lse = run.DLse.Read();
        var (refOut, refLse, _, _) = run.Reference();
        string context = $"seed {seed}, {spec}";
        JudgeOutput(ours, run.Naive(), refOut, lse, refLse, spec.Dtype, context);

        // The cache: appended rows in their slots, every other byte unchanged.
        CheckCache(run, kBefore, run.DKCache.ReadBytes(), run.KNew, "k", context);
        CheckCache(run, vBefore, run.DVCache.ReadBytes(), run.VNew, "v", context);
        int[] expected = spec.Lens.Select(x => x + (spec.Append ? spec.SeqNew : 0)).ToArray();
        Assert.That(run.Cache.SequenceLengths, Is.EqualTo(expected), $"{context}: host lengths");
        Assert.That(ReadDeviceLengths(run.Cache), Is.EqualTo(expected), $"{context}: device lengths");
    }

    private static void CheckCache(DecodeRun run, byte[] before, byte[] after, float[] appended, string name, string context)
    {
        Dictionary<long, int> rows = run.AppendedRows();
        int row = run.Row;
        long elements = before.Length / 2;
        int wrong = 0;
        string first = string.Empty;
        for (long e = 0; e < elements; e++)
        {
            ushort a = BitConverter.ToUInt16(after, (int)(e * 2));
            if (rows.TryGetValue(e / row, out int newRow))
            {
                float expected = appended[(newRow * row) + (e % row)];
                if (!ToFloat(run.Spec.Dtype, a).Equals(expected) && wrong++ == 0)
                {
                    first = $"{name} element {e} (appended row {newRow}) is {ToFloat(run.Spec.Dtype, a)}, expected {expected}";
                }
            }
            else if (a != BitConverter.ToUInt16(before, (int)(e * 2)) && wrong++ == 0)
            {
                first = $"{name} element {e} (not appended into) changed from 0x{BitConverter.ToUInt16(before, (int)(e * 2)):X4} to 0x{a:X4}";
            }
        }

        Assert.That(wrong, Is.Zero, $"{context}: {wrong} wrong cache elements; first: {first}");
    }

    internal static void JudgeOutput(float[] ours, float[] naive, double[] reference, float[] lse, double[] refLse, DataType dtype, string context)
    {
        var problems = new List<string>();
        int bad = Numerics.FirstNonFinite(ours);
        if (bad >= 0)
        {
            problems.Add($"output[{bad}] = {ours[bad]}: every element must be written and finite");
        }
        else
        {
            int headDim = ours.Length / refLse.Length; // output [B, Sn, Hq, D], lse [B, Hq, Sn]
            double errOurs = Numerics.RelativeL2(ours, reference);
            double errNaive = Numerics.RelativeL2(naive, reference);
            double cap = dtype == DataType.BFloat16 ? AcceptanceRule.Bf16Cap : AcceptanceRule.Fp16Cap;
            double maxOurs = MaxAbs(ours, reference), maxNaive = MaxAbs(naive, reference);
            string numbers = $"rel L2 ours {errOurs:E3}, same-dtype naive {errNaive:E3}, cap {cap:E1}; max |diff| ours {maxOurs:E3}, naive {maxNaive:E3}";
            if (!(errOurs <= 2 * errNaive))
            {
                problems.Add("relative L2 error above twice the same-dtype naive one: " + numbers);
            }

            if (!(errOurs <= cap))
            {
                problems.Add("relative L2 error above the dtype cap: " + numbers);
            }

            if (!(maxOurs <= 2 * maxNaive))
            {
                problems.Add("max abs error above twice the same-dtype naive one: " + numbers);
            }

            for (int i = 0; i < reference.Length; i++)
            {
                // Rows that see no key (their reference is exactly 0; random inputs make any other row nonzero) must be exactly 0.
                if (reference[i] == 0 && ours[i] != 0 && IsNoKeyRow(i, headDim, reference))
                {
                    problems.Add($"output[{i}] = {ours[i]} in a row that sees no key; expected 0");
                    break;
                }
            }
        }

        problems.AddRange(AcceptanceRule.JudgeLse(lse, refLse));
        Assert.That(problems, Is.Empty, context);
    }

    /// <summary>Whether output element i lies in a row whose reference is entirely 0 (a row that sees no key).</summary>
    private static bool IsNoKeyRow(int i, int headDim, double[] reference)
    {
        int start = i / headDim * headDim;
        for (int x = 0; x < headDim; x++)
        {
            if (reference[start + x] != 0)
            {
                return false;
            }
        }

        return true;
    }

    private static double MaxAbs(float[] actual, double[] reference)
    {
        double max = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double d = Math.Abs(actual[i] - reference[i]);
            if (double.IsNaN(d))
            {
                return double.NaN;
            }

            max = Math.Max(max, d);
        }

        return max;
    }

    private static float ToFloat(DataType dtype, ushort bits) =>
        dtype == DataType.Float16 ? (float)BitConverter.UInt16BitsToHalf(bits) : Numerics.Bf16BitsToFloat(bits);

    private static int[] ReadDeviceLengths(KvCache cache)
    {
        cache.Synchronize();
        var back = new int[cache.BatchSize];
        ((DeviceBuffer<int>)cache.CacheSeqLens.Owner!).CopyTo(back);
        return back;
    }

    private static int[] ReadDeviceTable(KvCache cache)
    {
        cache.Synchronize();
        var back = new int[cache.BatchSize * cache.MaxBlocksPerSequence];
        ((DeviceBuffer<int>)cache.BlockTable!.Owner!).CopyTo(back);
        return back;
    }

    /// <summary>Same-dtype naive attention over a compact paged host copy (block size <paramref name="blockSize"/>).</summary>
    private static float[] NaiveOverCompact(
        float[] q, float[] k, float[] v, float[] kn, float[] vn, int[] table, int[] lens, int maxBlocks, int blockSize, AttentionDims shape, DataType dtype)
    {
        int row = shape.HeadsKv * shape.HeadDim, sn = shape.SeqQ, qPer = sn * shape.HeadsQ * shape.HeadDim;
        var result = new float[q.Length];
        for (int b = 0; b < lens.Length; b++)
        {
            int total = lens[b] + sn;
            var kb = new float[total * row];
            var vb = new float[total * row];
            for (int p = 0; p < lens[b]; p++)
            {
                long at = (((long)table[(b * maxBlocks) + (p / blockSize)] * blockSize) + (p % blockSize)) * row;
                Array.Copy(k, at, kb, p * row, row);
                Array.Copy(v, at, vb, p * row, row);
            }

            Array.Copy(kn, b * sn * row, kb, lens[b] * row, sn * row);
            Array.Copy(vn, b * sn * row, vb, lens[b] * row, sn * row);
            NaiveAttention.ForwardSameDtype(q[(b * qPer)..((b + 1) * qPer)], kb, vb, shape with { SeqK = total }, Causal,
                (float)(1.0 / Math.Sqrt(shape.HeadDim)), x => DeviceArray.Round(dtype, x)).CopyTo(result, b * qPer);
        }

        return result;
    }

    private void RequireMemory(long bytes, string what)
    {
        long needed = bytes + (2L << 30);
        if (Device.TotalMemory < needed)
        {
            Assert.Ignore($"{what} need about {needed >> 30} GiB; {Device.Name} has {Device.TotalMemory >> 30} GiB");
        }
    }

    private void RequireServed(DecodeSpec spec)
    {
        // CheckDecode never dereferences, so fake aligned addresses suffice to ask whether this build serves the dim.
        DeviceTensor Fake(long address, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, spec.Dtype, shape);
        int b = spec.Batch;
        using KvCache cache = KvCache.Wrap(Fake(0x2000_0000, b, 128, spec.HeadsKv, spec.HeadDim), Fake(0x3000_0000, b, 128, spec.HeadsKv, spec.HeadDim),
            new int[b], cacheSeqLens: DeviceTensor.FromPointer((IntPtr)0x7100_0000, DataType.Int32, [b]));
        FlashAttentionStatus status = FlashAttention.CheckDecode(
            Fake(0x1000_0000, b, spec.SeqNew, spec.HeadsQ, spec.HeadDim), cache, null, null, Fake(0x4000_0000, b, spec.SeqNew, spec.HeadsQ, spec.HeadDim),
            out string message, computeCapability: Device.ComputeCapabilityCode);
        if (status == FlashAttentionStatus.Unsupported)
        {
            Assert.Ignore($"this build does not serve decode with head dim {spec.HeadDim}: {message}");
        }

        Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), message);
    }
}
