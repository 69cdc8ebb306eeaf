using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// The forward kernel against the float64 reference, judged by the FA2 rule (KERNELS.md section 5): our error
/// must be no worse than twice the error of a plain same-dtype attention, and under a fixed cap per dtype.
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class ForwardAccuracyTests : AttentionTestBase
{
    private static readonly (int Sq, int Sk)[] SeqLens =
    [
        (1, 1), (1, 17), (17, 17), (113, 203), (203, 113), (128, 217), (1, 1023), (1023, 1), (3, 799), (1023, 1023),
    ];

    private static readonly (int Hq, int Hkv)[] Heads = [(4, 4), (8, 2), (6, 1)];

    public static IEnumerable<TestCaseData> Cases()
    {
        int index = 0;
        foreach (var (sq, sk) in SeqLens)
        {
            var masks = sq == sk
                ? new[] { Mask.None, Mask.CausalBottomRight } // both alignments coincide when Sq == Sk
                : new[] { Mask.None, Mask.CausalBottomRight, Mask.CausalTopLeft };
            foreach (Mask mask in masks)
            {
                foreach (DataType dtype in new[] { DataType.Float16, DataType.BFloat16 })
                {
                    foreach (int d in new[] { 64, 128 })
                    {
                        var (hq, hkv) = Heads[index++ % Heads.Length];
                        yield return new TestCaseData(dtype, d, sq, sk, hq, hkv, mask)
                            .SetArgDisplayNames(dtype == DataType.Float16 ? "fp16" : "bf16", $"D{d}", $"Sq{sq}", $"Sk{sk}", $"Hq{hq}", $"Hkv{hkv}", mask.ToString());
                    }
                }
            }
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void ForwardMatchesReference(DataType dtype, int headDim, int sq, int sk, int hq, int hkv, Mask mask) =>
        RunAndJudge(dtype, new AttentionDims(2, sq, sk, hq, hkv, headDim), mask, scale: null);

    [TestCase(DataType.Float16, 64, 0.37f)]
    [TestCase(DataType.BFloat16, 128, 0.05f)]
    [TestCase(DataType.BFloat16, 64, 1.0f)]
    public void CustomScaleMatchesReference(DataType dtype, int headDim, float scale) =>
        RunAndJudge(dtype, new AttentionDims(2, 77, 150, 8, 2, headDim), Mask.CausalTopLeft, scale);

    /// <summary>
    /// Head dims other than 64 and 128: those with their own kernel (32, 96, 192, 256) and those padded up to the
    /// next one (8, 80, 136). Which exist depends on FA_HEAD_DIMS at build time, so a dim this build does not
    /// serve (Check says Unsupported) is reported as ignored, never as passed.
    /// </summary>
    [TestCase(DataType.BFloat16, 32)]
    [TestCase(DataType.Float16, 96)]
    [TestCase(DataType.BFloat16, 192)]
    [TestCase(DataType.Float16, 256)]
    [TestCase(DataType.Float16, 8)]
    [TestCase(DataType.BFloat16, 80)]
    [TestCase(DataType.Float16, 136)]
    [TestCase(DataType.BFloat16, 200)]
    public void OtherHeadDimsMatchReference(DataType dtype, int headDim)
    {
        var dims = new AttentionDims(2, 113, 203, 8, 2, headDim);
        // Check never dereferences, so fake aligned addresses suffice to ask whether this build serves the dim.
        DeviceTensor Fake(long address, long seq, long heads) =>
            DeviceTensor.FromPointer((IntPtr)address, dtype, [dims.Batch, seq, heads, headDim]);
        FlashAttentionStatus status = FlashAttention.Check(
            Fake(0x1000_0000, dims.SeqQ, dims.HeadsQ), Fake(0x2000_0000, dims.SeqK, dims.HeadsKv),
            Fake(0x3000_0000, dims.SeqK, dims.HeadsKv), Fake(0x4000_0000, dims.SeqQ, dims.HeadsQ),
            out string message, computeCapability: Device.ComputeCapabilityCode);
        if (status == FlashAttentionStatus.Unsupported)
        {
            Assert.Ignore($"this build does not serve head dim {headDim}: {message}");
        }

        Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), message);
        RunAndJudge(dtype, dims, Mask.CausalBottomRight, scale: null);
    }

    /// <summary>GQA ratios 4, 8 and 32 (MQA) with sequences past 2048 on one side or both.</summary>
    public static IEnumerable<TestCaseData> GqaAndLongCases()
    {
        TestCaseData Case(DataType dtype, int d, int sq, int sk, int hq, int hkv, Mask mask) =>
            new TestCaseData(dtype, new AttentionDims(1, sq, sk, hq, hkv, d), mask)
                .SetArgDisplayNames(dtype == DataType.Float16 ? "fp16" : "bf16", $"D{d}", $"Sq{sq}", $"Sk{sk}", $"Hq{hq}", $"Hkv{hkv}", mask.ToString());

        yield return Case(DataType.BFloat16, 64, 799, 2049, 32, 1, Mask.CausalBottomRight);
        yield return Case(DataType.Float16, 128, 2049, 799, 32, 8, Mask.CausalTopLeft);
        yield return Case(DataType.BFloat16, 64, 2049, 2049, 8, 1, Mask.None);
        yield return Case(DataType.BFloat16, 128, 2049, 1023, 16, 2, Mask.CausalBottomRight);
    }

    [TestCaseSource(nameof(GqaAndLongCases))]
    public void GqaAndLongSequencesMatchReference(DataType dtype, AttentionDims dims, Mask mask) =>
        RunAndJudge(dtype, dims, mask, scale: null);

    /// <summary>
    /// A forward captured once into a CUDA graph runs only on replay, and each replay computes the attention of
    /// whatever the captured buffers hold then.
    /// </summary>
    [Test]
    public void GraphReplayWithNewInputsMatchesReference()
    {
        var dims = new AttentionDims(2, 300, 333, 8, 2, 64);
        const DataType dtype = DataType.BFloat16;
        Random random = TestRandom.ForCurrentTest(out int seed);
        using ForwardRun run = ForwardRun.Create(Device, dims, dtype, random, seed);
        var options = new AttentionOptions { Causal = true, WindowLeft = 100 };
        Stream.Synchronize();

        Stream.BeginCapture();
        Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
        using CudaGraph graph = Stream.EndCapture();
        Stream.Synchronize();
        Assert.That(run.DOut.Read().All(float.IsNaN), Is.True, "capturing must not run the forward");

        for (int replay = 1; replay <= 2; replay++)
        {
            run.Refill(random);
            run.PoisonOutputs();
            graph.Launch(Stream);
            Stream.Synchronize();
            float[] ours = run.DOut.Read();
            float[] lse = run.DLse.Read();
            var (refOut, refLse) = run.Reference(options);
            MaskSpec spec = new(true, false, Left: 100);
            float scale = (float)(1.0 / Math.Sqrt(dims.HeadDim));
            float[] naive = NaiveAttention.ForwardSameDtype(run.Q, run.K, run.V, dims, spec, scale, x => DeviceArray.Round(dtype, x));
            string context = $"seed {seed}, replay {replay}, {dims}";
            JudgeOutput(ours, naive, refOut, dtype, dims, spec, context);
            JudgeLse(lse, refLse, context);
        }
    }

    public static IEnumerable<TestCaseData> WindowCases()
    {
        TestCaseData Case(DataType dtype, int d, int sq, int sk, int hq, int hkv, MaskSpec spec) =>
            new TestCaseData(dtype, new AttentionDims(2, sq, sk, hq, hkv, d), spec)
                .SetArgDisplayNames(dtype == DataType.Float16 ? "fp16" : "bf16", $"D{d}", $"Sq{sq}", $"Sk{sk}", $"Hq{hq}", $"Hkv{hkv}", spec.ToString());

        yield return Case(DataType.BFloat16, 128, 1023, 1023, 8, 2, new MaskSpec(true, false, Left: 255));
        yield return Case(DataType.Float16, 64, 113, 203, 4, 4, new MaskSpec(false, false, Left: 32, Right: 16));
        yield return Case(DataType.BFloat16, 64, 203, 113, 6, 1, new MaskSpec(false, true, Left: 0, Right: 0));
        yield return Case(DataType.Float16, 128, 128, 217, 8, 2, new MaskSpec(false, false, Softcap: 30f));
        yield return Case(DataType.BFloat16, 128, 217, 128, 4, 4, new MaskSpec(true, false, Left: 7, Softcap: 50f));
        yield return Case(DataType.BFloat16, 64, 1, 1023, 8, 2, new MaskSpec(false, false, Left: 100, Right: 0));
    }

    [TestCaseSource(nameof(WindowCases))]
    public void WindowAndSoftcapMatchReference(DataType dtype, AttentionDims dims, MaskSpec spec) =>
        RunAndJudge(dtype, dims, spec, scale: null);

    private void RunAndJudge(DataType dtype, AttentionDims dims, Mask mask, float? scale) =>
        RunAndJudge(dtype, dims, MaskSpec.From(mask), scale);

    private void RunAndJudge(DataType dtype, AttentionDims dims, MaskSpec mask, float? scale)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        AttentionOptions options = mask.ToOptions(scale);
        using ForwardRun run = ForwardRun.Create(Device, dims, dtype, random, seed);

        Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
        Stream.Synchronize();
        float[] ours = run.DOut.Read();
        float[] lse = run.DLse.Read();

        var (refOut, refLse) = run.Reference(options);
        float effectiveScale = scale ?? (float)(1.0 / Math.Sqrt(dims.HeadDim));
        float[] naive = NaiveAttention.ForwardSameDtype(run.Q, run.K, run.V, dims, mask, effectiveScale, x => DeviceArray.Round(dtype, x));

        string context = $"seed {seed}, {dtype}, {dims}, {mask}, scale {effectiveScale}";
        JudgeOutput(ours, naive, refOut, dtype, dims, mask, context);
        JudgeLse(lse, refLse, context);
    }

    internal static void JudgeOutput(float[] ours, float[] naive, double[] reference, DataType dtype, AttentionDims dims, Mask mask, string context) =>
        Assert.That(AcceptanceRule.JudgeOutput(ours, naive, reference, dtype, dims, mask), Is.Empty, context);

    internal static void JudgeOutput(float[] ours, float[] naive, double[] reference, DataType dtype, AttentionDims dims, MaskSpec mask, string context) =>
        Assert.That(AcceptanceRule.JudgeOutput(ours, naive, reference, dtype, dims, mask), Is.Empty, context);

    internal static void JudgeLse(float[] lse, double[] reference, string context) =>
        Assert.That(AcceptanceRule.JudgeLse(lse, reference), Is.Empty, context);
}
