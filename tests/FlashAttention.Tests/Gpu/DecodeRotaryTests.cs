using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// Rotary embedding inside fa_decode (C ABI 0.8; flash-attn's <c>rotary_cos</c> / <c>rotary_sin</c> /
/// <c>rotary_interleaved</c>) through <see cref="DecodeArguments.Rotary"/>, judged by <see cref="ServingRun"/> as
/// <see cref="DecodeServingTests"/> judges the other serving options (no tolerance widened): the output against the
/// float64 <see cref="DecodeReference"/> with the same tables, every element; the cache read back, the appended keys
/// within one unit in the last place of the float64 rotation at their positions, every other element unchanged (NaN
/// included). Both layouts, partial rotary dims, with a batch index over a shuffled pool, left pads, paged caches,
/// causal (each query at its own position) and not (every query at the cached length), windows, more and fewer new keys
/// than queries, forced splits, and steps that continue from the rotated keys earlier steps stored.
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class DecodeRotaryTests : AttentionTestBase
{
    private const DataType F16 = DataType.Float16, Bf16 = DataType.BFloat16;
    private static readonly MaskSpec Full = new(false, false);
    private static readonly MaskSpec Causal = new(true, false);

    private static TestCaseData Case(ServingSpec spec) => new TestCaseData(spec).SetArgDisplayNames(spec.ToString());

    public static IEnumerable<TestCaseData> Cases()
    {
        // Both layouts, the whole head rotated, one token per step, contiguous (flash-attn's plain generation step).
        yield return Case(new(F16, 64, 8, 2, 1, 1, [0, 1, 150, 299], null, null, 0, Causal) { RotaryDim = 64 });
        yield return Case(new(Bf16, 128, 8, 2, 1, 1, [0, 1, 150, 299], null, null, 0, Causal) { RotaryDim = 128, RotaryInterleaved = false });

        // Not causal: every query at the cached length; several new tokens.
        yield return Case(new(F16, 64, 4, 2, 3, 3, [40, 7, 100], null, null, 0, Full) { RotaryDim = 64, RotaryInterleaved = false });
        yield return Case(new(Bf16, 128, 4, 4, 2, 1, [33, 0], null, null, 16, Full, 3) { RotaryDim = 32 });

        // Partial rotary dims (the rest passes through), paged, causal with several tokens.
        yield return Case(new(Bf16, 128, 8, 1, 3, 3, [13, 0, 200], null, null, 16, Causal) { RotaryDim = 32 });
        yield return Case(new(F16, 128, 6, 3, 2, 2, [100, 33, 400], null, null, 32, Causal, 4) { RotaryDim = 64, RotaryInterleaved = false });
        yield return Case(new(F16, 64, 8, 2, 1, 1, [70, 5, 130], null, null, 0, Causal) { RotaryDim = 16, RotaryInterleaved = false });

        // Batch index over a shuffled pool, contiguous and paged.
        yield return Case(new(F16, 64, 8, 2, 1, 1, [0, 1, 150, 299, 40, 7, 77], [5, 2, 0, 3], null, 0, Causal) { RotaryDim = 64 });
        yield return Case(new(Bf16, 128, 8, 2, 3, 3, [13, 0, 200, 64, 31, 90], [4, 1, 2], null, 16, Causal, 5) { RotaryDim = 96, RotaryInterleaved = false });

        // Left pads (positions stay absolute: a pad counts in the rotary position), with a window (queries per row).
        yield return Case(new(Bf16, 64, 4, 2, 2, 2, [100, 37, 0, 250], null, [17, 37, 0, 1], 0, Causal) { RotaryDim = 64 });
        yield return Case(new(F16, 128, 6, 3, 2, 2, [100, 33, 400], null, [40, 33, 0], 32, new MaskSpec(false, false, 20, 0, 10f), 4) { RotaryDim = 128, RotaryInterleaved = false });

        // More queries than new keys (query i at cached + i, not on the causal diagonal) and fewer.
        yield return Case(new(Bf16, 64, 4, 2, 4, 1, [0, 2, 150], null, null, 0, Causal) { RotaryDim = 64, RotaryInterleaved = false });
        yield return Case(new(F16, 128, 8, 1, 2, 5, [60, 300], null, null, 64, Causal, 7) { RotaryDim = 128 });
        yield return Case(new(Bf16, 64, 8, 2, 1, 6, [33, 0, 100], null, null, 16, new MaskSpec(true, false, 12, null)) { RotaryDim = 48 });

        // Everything at once.
        yield return Case(new(Bf16, 64, 8, 2, 1, 3, [20, 10, 180, 55, 1], [3, 0, 4], [0, 10, 100, 30, 0], 16, new MaskSpec(false, false, 50, null), 2) { RotaryDim = 32, RotaryInterleaved = false });
        yield return Case(new(F16, 256, 8, 2, 2, 2, [257, 33, 1000, 64], [2, 3, 0], [0, 30, 513, 0], 32, Causal) { RotaryDim = 128 });
    }

    [TestCaseSource(nameof(Cases))]
    public void RotaryMatchesTheReference(ServingSpec spec)
    {
        RequireHeadDim(spec.HeadDim, spec.Dtype);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var run = ServingRun.Create(Device, Stream, spec, random);
        run.Step(Attention, Stream, spec.Rows, spec.SeqQ, spec.SeqKNew, spec.NumSplits, $"seed {seed}, {spec}");
    }

    [Test]
    public void RotarySplitCountsAgreeWithTheReference([Values(1, 3, 16, 64)] int splits, [Values(true, false)] bool interleaved)
    {
        var spec = new ServingSpec(Bf16, 64, 8, 2, 2, 3, [700, 400, 33, 900, 0], [3, 0, 1], [100, 0, 10, 450, 0], 32, Causal, splits)
        {
            RotaryDim = 64, RotaryInterleaved = interleaved,
        };
        RequireHeadDim(spec.HeadDim, spec.Dtype);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var run = ServingRun.Create(Device, Stream, spec, random);
        run.Step(Attention, Stream, spec.Rows, spec.SeqQ, spec.SeqKNew, splits, $"seed {seed}, {spec}");
    }

    [Test]
    public void RotaryStepsReadTheKeysEarlierStepsRotated([Values(0, 16)] int blockSize, [Values(true, false)] bool interleaved)
    {
        // Three steps queued on one stream: the second and third attend over keys the earlier ones rotated and stored
        // (the mirror holds what the GPU stored), over different rows and token counts.
        var spec = new ServingSpec(F16, 64, 8, 2, 1, 1, [30, 0, 65, 12], null, [5, 0, 0, 12], blockSize, Causal)
        {
            RotaryDim = 32, RotaryInterleaved = interleaved,
        };
        RequireHeadDim(spec.HeadDim, spec.Dtype);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var run = ServingRun.Create(Device, Stream, spec, random, extraCapacity: 16);
        run.StepsOverDifferentRows(Attention, Stream, $"seed {seed}, {spec}");
    }

    [Test]
    public void RotaryWithoutAnAppendIsRefusedBeforeAnythingRuns()
    {
        RequireHeadDim(64, F16);
        using KvCache cache = KvCache.CreateContiguous(Device, F16, batchSize: 1, capacity: 32, headsKv: 1, headDim: 64, Stream);
        using var q = DeviceArray.Allocate(Device, F16, 64);
        using var o = DeviceArray.Allocate(Device, F16, 64);
        using var cos = DeviceArray.Allocate(Device, F16, 32 * 32);
        using var sin = DeviceArray.Allocate(Device, F16, 32 * 32);
        var args = new DecodeArguments(q.Tensor([1, 1, 1, 64]), cache, null, null, o.Tensor([1, 1, 1, 64]))
        {
            Rotary = new RotaryEmbedding(cos.Tensor([32, 32]), sin.Tensor([32, 32])),
        };
        Assert.That(() => Attention.Decode(args, new AttentionOptions(), Stream), Throws.ArgumentException.With.Message.Contains("appends"));
    }

    private void RequireHeadDim(int headDim, DataType dtype)
    {
        SupportResult result = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Decode, dtype, headDim, ComputeCapability: Device.ComputeCapabilityCode));
        if (!result.IsSupported)
        {
            Assert.Ignore($"this build does not serve decode with head dim {headDim}: {result.Reason}");
        }
    }
}
