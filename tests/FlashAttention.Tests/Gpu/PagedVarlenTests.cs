using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// Paged K/V of the variable-length forward (C ABI 0.11, <see cref="VarlenBatch.WithBlockTable"/>): the keys and values
/// of each sequence scattered into pools through a shuffled block table (<see cref="PagedLayout"/>: NaN in every pool
/// row no sequence uses, <see cref="PagedLayout.Garbage"/> in every table entry past a sequence's last page), judged
/// per sequence, every element, by the same rule as the packed varlen tests against the float64 reference over the
/// pools (<see cref="AttentionReference.ForwardVarlenPaged(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, int, AttentionOptions, Span{double}, Span{double})"/>)
/// and a same-dtype naive attention over the packed rows; outputs and log-sum-exp poisoned first. Sequences: an empty
/// one, one of a single key, one just past a block boundary, one ending on a boundary (256), longer ones; GQA 8:2;
/// blocks of 128 and 256; the table contiguous or column-major (strides [1, batch]); causal both alignments, windows and
/// softcap; on each kernel path by name (<see cref="ForwardPathTestBase"/>: Sm90 runs the sm90 forward where it serves
/// and is refused elsewhere). And a used block id outside the pool is reported as DEVICE_CHECK_FAILED naming block_table.
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class PagedVarlenTests : ForwardPathTestBase
{
    private static readonly int[] LensQ = [3, 5, 64, 256, 17, 300];
    private static readonly int[] LensK = [0, 1, 129, 256, 300, 513];

    private static readonly (string Name, MaskSpec Mask, float? Scale)[] Variants =
    [
        ("full", new MaskSpec(false, false), null),
        ("causal bottom-right", new MaskSpec(true, false), null),
        ("causal top-left", new MaskSpec(true, true), null),
        ("window (96, 32)", new MaskSpec(false, false, Left: 96, Right: 32), null),
        ("causal window left 100, softcap 5, scale 1", new MaskSpec(true, false, Left: 100, Softcap: 5f), 1f),
        ("top-left causal, softcap 20", new MaskSpec(true, true, Softcap: 20f), null),
    ];

    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (KernelPath path in new[] { KernelPath.Auto, KernelPath.Sm80, KernelPath.Sm90 })
        {
            for (int variant = 0; variant < Variants.Length; variant++)
            {
                foreach (int blockSize in new[] { 128, 256 })
                {
                    // Each (path, variant) sees both dtypes, both block sizes and both table layouts; head dims 128 and 64 alternate.
                    bool bf16 = (blockSize == 128) == (variant % 2 == 0);
                    DataType dtype = bf16 ? DataType.BFloat16 : DataType.Float16;
                    int d = variant % 3 == 1 ? 64 : 128;
                    bool transposed = blockSize == 256;
                    yield return new TestCaseData(path, dtype, blockSize, d, variant, transposed)
                        .SetArgDisplayNames(path.ToString(), dtype.ToString(), $"block {blockSize}", $"D{d}", Variants[variant].Name, transposed ? "table [1, batch]" : "table dense");
                }
            }
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void PagedVarlenMatchesReference(KernelPath path, DataType dtype, int blockSize, int d, int variant, bool transposedTable)
    {
        const int hq = 8, hkv = 2;
        RequireServed(dtype, new AttentionDims(1, 1, 1, hq, hkv, d));
        Random random = TestRandom.ForCurrentTest(out int seed);
        (string name, MaskSpec spec, float? scale) = Variants[variant];
        int totalQ = LensQ.Sum(), totalK = LensK.Sum();
        float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalQ * hq * d));
        float[] k = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * d));
        float[] v = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * d));
        var layout = PagedLayout.Build(random, LensK, blockSize);
        float[] kPool = layout.Scatter(k, hkv * d), vPool = layout.Scatter(v, hkv * d);
        int batchSize = LensK.Length;
        AttentionOptions options = spec.ToOptions(scale) with { KernelPath = path };
        string context = $"seed {seed}, paged varlen {dtype} D{d} block {blockSize} ({layout.NumBlocks} blocks, {layout.Columns} columns, " +
            $"table {(transposedTable ? "column-major" : "dense")}), {name}";

        using var dq = DeviceArray.Upload(Device, dtype, q);
        using var dk = DeviceArray.Upload(Device, dtype, kPool);
        using var dv = DeviceArray.Upload(Device, dtype, vPool);
        using var dout = DeviceArray.Allocate(Device, dtype, totalQ * hq * d);
        using var dlse = DeviceArray.Allocate(Device, DataType.Float32, hq * totalQ);
        using var table = new DeviceBuffer<int>(Device, layout.Table.Length);
        table.CopyFrom(transposedTable ? layout.TransposedTable() : layout.Table);
        DeviceTensor tableTensor = transposedTable
            ? DeviceTensor.FromBuffer(table, [batchSize, layout.Columns], [1, batchSize])
            : table.AsTensor(batchSize, layout.Columns);
        dout.Poison();
        dlse.Poison();
        using var batch = VarlenBatch.FromLengths(Device, LensQ, LensK);
        using VarlenBatch paged = batch.WithBlockTable(tableTensor);

        if (!ForwardOnPath(options, dtype, d, varlen: true, () =>
            {
                Attention.ForwardVarlen(
                    dq.Tensor([totalQ, hq, d]), dk.Tensor([layout.NumBlocks, blockSize, hkv, d]), dv.Tensor([layout.NumBlocks, blockSize, hkv, d]),
                    dout.Tensor([totalQ, hq, d]), paged, dlse.Tensor([hq, totalQ]), options, Stream);
                Stream.Synchronize();
            }, [dout, dlse], context, pagedKv: true))
        {
            return; // a refusal, checked
        }

        Assert.That(() => Attention.CheckDeviceErrors(), Throws.Nothing, $"{context}: no table entry past a sequence's pages was read");
        float[] ours = dout.Read();
        float[] lse = dlse.Read();
        int bad = Numerics.FirstNonFinite(ours);
        Assert.That(bad, Is.EqualTo(-1), $"{context}: output element {bad} is not finite: a NaN pool row was used, or the element was not written");

        var refOut = new double[ours.Length];
        var refLse = new double[lse.Length];
        AttentionReference.ForwardVarlenPaged(
            AttentionReference.ToDouble(q), AttentionReference.ToDouble(kPool), AttentionReference.ToDouble(vPool), layout.Table,
            LensQ, LensK, hq, hkv, d, blockSize, options, refOut, refLse);

        float softmaxScale = scale ?? (float)(1.0 / Math.Sqrt(d));
        // The naive side reads the packed rows, not the pools: an independent route to the same keys.
        VarlenJudge.PerSequence(
            LensQ, LensK, q, k, v, ours, lse, refOut, refLse, hq, hkv, d, d, dtype, spec, softmaxScale,
            b => $"{context}, path {path}, sequence {b} (Sq {LensQ[b]}, Sk {LensK[b]})");
    }

    /// <summary>
    /// A block id outside the pool in an entry a sequence uses (-3, or num_blocks + 5) is clamped by the kernels and
    /// reported: <see cref="FlashAttention.CheckDeviceErrors"/>, or else the next call on the instance, throws
    /// DEVICE_CHECK_FAILED naming block_table, once (then it is forgotten). The same call with the valid table reports
    /// nothing, and so does the valid call after the report.
    /// </summary>
    [Test]
    public void BlockIdOutsideThePoolIsReported(
        [Values(KernelPath.Sm80, KernelPath.Auto)] KernelPath path, [Values(true, false)] bool negative, [Values(true, false)] bool reportedByCheck)
    {
        const int hq = 4, hkv = 2, d = 64, blockSize = 128;
        DataType dtype = DataType.BFloat16;
        RequireServed(dtype, new AttentionDims(1, 1, 1, hq, hkv, d));
        Random random = TestRandom.ForCurrentTest(out int seed);
        int[] lensQ = [20, 7], lensK = [129, 40];
        int totalQ = lensQ.Sum(), totalK = lensK.Sum();
        var layout = PagedLayout.Build(random, lensK, blockSize);
        float[] kPool = layout.Scatter(ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * d)), hkv * d);
        float[] vPool = layout.Scatter(ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * d)), hkv * d);
        int[] badTable = (int[])layout.Table.Clone();
        int badId = negative ? -3 : layout.NumBlocks + 5;
        badTable[1] = badId; // sequence 0's second page: its keys 128 (129 keys)
        string context = $"seed {seed}, path {path}, block id {badId} of {layout.NumBlocks}";

        using var attention = new FlashAttention(Device);
        using var dq = DeviceArray.Upload(Device, dtype, ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalQ * hq * d)));
        using var dk = DeviceArray.Upload(Device, dtype, kPool);
        using var dv = DeviceArray.Upload(Device, dtype, vPool);
        using var dout = DeviceArray.Allocate(Device, dtype, totalQ * hq * d);
        using var good = new DeviceBuffer<int>(Device, layout.Table.Length);
        using var bad = new DeviceBuffer<int>(Device, badTable.Length);
        good.CopyFrom(layout.Table);
        bad.CopyFrom(badTable);
        using var batch = VarlenBatch.FromLengths(Device, lensQ, lensK);
        using VarlenBatch goodBatch = batch.WithBlockTable(good.AsTensor(layout.Batch, layout.Columns));
        using VarlenBatch badBatch = batch.WithBlockTable(bad.AsTensor(layout.Batch, layout.Columns));
        var options = new AttentionOptions { Causal = true, KernelPath = path };
        void Run(VarlenBatch b)
        {
            attention.ForwardVarlen(
                dq.Tensor([totalQ, hq, d]), dk.Tensor([layout.NumBlocks, blockSize, hkv, d]), dv.Tensor([layout.NumBlocks, blockSize, hkv, d]),
                dout.Tensor([totalQ, hq, d]), b, options: options, stream: Stream);
            Stream.Synchronize();
        }

        Run(goodBatch);
        Assert.That(() => attention.CheckDeviceErrors(), Throws.Nothing, $"{context}: the valid table reports nothing");

        Run(badBatch);
        FlashAttentionException? ex = reportedByCheck
            ? Assert.Throws<FlashAttentionException>(() => attention.CheckDeviceErrors(), context)
            : Assert.Throws<FlashAttentionException>(() => Run(goodBatch), $"{context}: the next call reports it");
        using (Assert.EnterMultipleScope())
        {
            Assert.That(ex!.Status, Is.EqualTo(FlashAttentionStatus.DeviceCheckFailed), context);
            Assert.That(ex.NativeMessage, Does.Contain("block_table").And.Contain("fa_forward"), context);
        }

        Assert.That(() => attention.CheckDeviceErrors(), Throws.Nothing, $"{context}: a report is given once");
        Assert.That(() => Run(goodBatch), Throws.Nothing, $"{context}: the valid call after the report runs");
        Assert.That(() => attention.CheckDeviceErrors(), Throws.Nothing, $"{context}: and reports nothing");
    }
}
