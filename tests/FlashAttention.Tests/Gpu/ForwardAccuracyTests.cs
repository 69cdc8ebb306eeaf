using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// The forward kernels against the float64 reference, judged by the FA2 rule (KERNELS.md section 5): our error
/// must be no worse than twice the error of a plain same-dtype attention, and under a fixed cap per dtype. Every case
/// runs on each kernel path by name: <see cref="KernelPath.Sm80"/> everywhere (so the portable kernels stay checked on
/// Hopper, where Auto takes the sm90 ones), and <see cref="KernelPath.Sm90"/>, which must run the sm90 forward on a
/// compute capability 9.0 GPU with a build that has sm_90a code, and must be refused (UNSUPPORTED, naming the path)
/// anywhere else; the refusal is asserted, never ignored. The kernel each call ran is read from the library's log
/// and must be of the path's family (<see cref="ForwardPaths"/>).
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class ForwardAccuracyTests : ForwardPathTestBase
{
    private static readonly KernelPath[] Paths = [KernelPath.Sm80, KernelPath.Sm90];

    private static string Name(DataType dtype) => dtype == DataType.Float16 ? "fp16" : "bf16";

    private static readonly (int Sq, int Sk)[] SeqLens =
    [
        (1, 1), (1, 17), (17, 17), (113, 203), (203, 113), (128, 217), (1, 1023), (1023, 1), (3, 799), (1023, 1023),
    ];

    private static readonly (int Hq, int Hkv)[] Heads = [(4, 4), (8, 2), (6, 1)];

    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (KernelPath path in Paths)
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
                            yield return new TestCaseData(path, dtype, d, sq, sk, hq, hkv, mask)
                                .SetArgDisplayNames(path.ToString(), Name(dtype), $"D{d}", $"Sq{sq}", $"Sk{sk}", $"Hq{hq}", $"Hkv{hkv}", mask.ToString());
                        }
                    }
                }
            }
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void ForwardMatchesReference(KernelPath path, DataType dtype, int headDim, int sq, int sk, int hq, int hkv, Mask mask) =>
        RunAndJudge(path, dtype, new AttentionDims(2, sq, sk, hq, hkv, headDim), MaskSpec.From(mask), scale: null);

    [TestCase(KernelPath.Sm80, DataType.Float16, 64, 0.37f)]
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 128, 0.05f)]
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 64, 1.0f)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 64, 0.37f)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 128, 0.05f)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 256, 1.0f)]
    public void CustomScaleMatchesReference(KernelPath path, DataType dtype, int headDim, float scale) =>
        RunAndJudge(path, dtype, new AttentionDims(2, 77, 150, 8, 2, headDim), MaskSpec.From(Mask.CausalTopLeft), scale);

    /// <summary>
    /// Head dims other than 64 and 128: those with their own sm80 kernel (32, 96, 192, 256) and those padded up to the
    /// next one (8, 40, 80, 136, 200); on the sm90 path (kernel classes 64, 128, 192, 256) 8, 32 and 40 run the 64 kernel, 80
    /// and 96 the 128 one, 136 and 192 the 192 one, 200 and 256 the 256 one. Which exist depends on FA_HEAD_DIMS at build time, so a dim this
    /// build does not serve at all (Check says Unsupported) is reported as ignored, never as passed.
    /// </summary>
    public static IEnumerable<TestCaseData> OtherHeadDimCases()
    {
        (DataType Dtype, int D)[] dims =
        [
            (DataType.BFloat16, 32), (DataType.Float16, 96), (DataType.BFloat16, 192), (DataType.Float16, 256), (DataType.Float16, 8),
            (DataType.Float16, 40), (DataType.BFloat16, 80), (DataType.Float16, 136), (DataType.BFloat16, 200),
        ];
        foreach (KernelPath path in Paths)
        {
            foreach (var (dtype, d) in dims)
            {
                yield return new TestCaseData(path, dtype, d).SetArgDisplayNames(path.ToString(), Name(dtype), $"D{d}");
            }
        }
    }

    [TestCaseSource(nameof(OtherHeadDimCases))]
    public void OtherHeadDimsMatchReference(KernelPath path, DataType dtype, int headDim)
    {
        var dims = new AttentionDims(2, 113, 203, 8, 2, headDim);
        RequireServed(dtype, dims);
        RunAndJudge(path, dtype, dims, MaskSpec.From(Mask.CausalBottomRight), scale: null);
    }

    /// <summary>GQA ratios 4, 8 and 32 (MQA) with sequences past 2048 on one side or both.</summary>
    public static IEnumerable<TestCaseData> GqaAndLongCases()
    {
        foreach (KernelPath path in Paths)
        {
            TestCaseData Case(DataType dtype, int d, int sq, int sk, int hq, int hkv, Mask mask) =>
                new TestCaseData(path, dtype, new AttentionDims(1, sq, sk, hq, hkv, d), mask)
                    .SetArgDisplayNames(path.ToString(), Name(dtype), $"D{d}", $"Sq{sq}", $"Sk{sk}", $"Hq{hq}", $"Hkv{hkv}", mask.ToString());

            yield return Case(DataType.BFloat16, 64, 799, 2049, 32, 1, Mask.CausalBottomRight);
            yield return Case(DataType.Float16, 128, 2049, 799, 32, 8, Mask.CausalTopLeft);
            yield return Case(DataType.BFloat16, 64, 2049, 2049, 8, 1, Mask.None);
            yield return Case(DataType.BFloat16, 128, 2049, 1023, 16, 2, Mask.CausalBottomRight);
        }
    }

    [TestCaseSource(nameof(GqaAndLongCases))]
    public void GqaAndLongSequencesMatchReference(KernelPath path, DataType dtype, AttentionDims dims, Mask mask) =>
        RunAndJudge(path, dtype, dims, MaskSpec.From(mask), scale: null);

    /// <summary>
    /// GQA ratios 1, 2, 4, 8, 16 and 32 (MQA): query head h reads kv head h / (Hq / Hkv), at each kernel class of the
    /// sm90 path (64, 128, 192, 256), both causal alignments with Sq &lt; Sk.
    /// </summary>
    public static IEnumerable<TestCaseData> GqaRatioCases()
    {
        (DataType Dtype, int Hq, int Hkv, int D, Mask Mask)[] cases =
        [
            (DataType.BFloat16, 4, 4, 64, Mask.CausalBottomRight),
            (DataType.Float16, 8, 4, 128, Mask.None),
            (DataType.BFloat16, 8, 2, 256, Mask.CausalTopLeft),
            (DataType.Float16, 16, 2, 64, Mask.CausalBottomRight),
            (DataType.BFloat16, 32, 2, 128, Mask.CausalTopLeft),
            (DataType.Float16, 32, 1, 256, Mask.CausalBottomRight),
            (DataType.BFloat16, 16, 4, 192, Mask.CausalTopLeft),
        ];
        foreach (KernelPath path in Paths)
        {
            foreach (var (dtype, hq, hkv, d, mask) in cases)
            {
                yield return new TestCaseData(path, dtype, hq, hkv, d, mask)
                    .SetArgDisplayNames(path.ToString(), Name(dtype), $"Hq{hq}", $"Hkv{hkv}", $"D{d}", mask.ToString());
            }
        }
    }

    [TestCaseSource(nameof(GqaRatioCases))]
    public void GqaRatiosMatchReference(KernelPath path, DataType dtype, int hq, int hkv, int headDim, Mask mask) =>
        RunAndJudge(path, dtype, new AttentionDims(1, 177, 333, hq, hkv, headDim), MaskSpec.From(mask), scale: null);

    /// <summary>
    /// Rows that see no key (bottom-right causal with Sq &gt; Sk; a window that slides off the keys) are exactly 0 with
    /// log-sum-exp +infinity, and the cases do have such rows (the reference says which).
    /// </summary>
    public static IEnumerable<TestCaseData> FullyMaskedCases()
    {
        foreach (KernelPath path in Paths)
        {
            TestCaseData Case(DataType dtype, int d, int sq, int sk, int hq, int hkv, MaskSpec spec) =>
                new TestCaseData(path, dtype, new AttentionDims(2, sq, sk, hq, hkv, d), spec)
                    .SetArgDisplayNames(path.ToString(), Name(dtype), $"D{d}", $"Sq{sq}", $"Sk{sk}", $"Hq{hq}", $"Hkv{hkv}", spec.ToString());

            yield return Case(DataType.BFloat16, 128, 300, 77, 8, 2, new MaskSpec(true, false));                  // rows 0..222 see nothing
            yield return Case(DataType.Float16, 64, 300, 100, 4, 1, new MaskSpec(false, true, Left: 3, Right: 3)); // rows 103.. see nothing
            yield return Case(DataType.BFloat16, 256, 211, 64, 4, 4, new MaskSpec(true, false, Left: 16, Softcap: 30f));
        }
    }

    [TestCaseSource(nameof(FullyMaskedCases))]
    public void FullyMaskedRowsAreZeroWithInfiniteLse(KernelPath path, DataType dtype, AttentionDims dims, MaskSpec mask)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        AttentionOptions options = mask.ToOptions() with { KernelPath = path };
        using ForwardRun run = ForwardRun.Create(Device, dims, dtype, random, seed);
        string context = $"seed {seed}, {Name(dtype)}, {dims}, {mask}";
        if (!ForwardOnPath(options, dtype, dims.HeadDim, varlen: false, () =>
            {
                Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
                Stream.Synchronize();
            }, [run.DOut, run.DLse], context))
        {
            return;
        }

        float[] ours = run.DOut.Read();
        float[] lse = run.DLse.Read();
        var (refOut, refLse) = run.Reference(options);
        int masked = 0, wrongOut = 0, wrongLse = 0;
        for (int b = 0; b < dims.Batch; b++)
        {
            for (int h = 0; h < dims.HeadsQ; h++)
            {
                for (int i = 0; i < dims.SeqQ; i++)
                {
                    long row = ((long)b * dims.HeadsQ + h) * dims.SeqQ + i;
                    if (!double.IsPositiveInfinity(refLse[row]))
                    {
                        continue;
                    }

                    masked++;
                    wrongLse += float.IsPositiveInfinity(lse[row]) ? 0 : 1;
                    long start = (((long)b * dims.SeqQ + i) * dims.HeadsQ + h) * dims.HeadDim;
                    for (int x = 0; x < dims.HeadDim; x++)
                    {
                        wrongOut += ours[start + x] == 0f ? 0 : 1;
                    }
                }
            }
        }

        using (Assert.EnterMultipleScope())
        {
            Assert.That(masked, Is.GreaterThan(0), $"{context}: the case must have rows that see no key");
            Assert.That(wrongOut, Is.Zero, $"{context}: {wrongOut} output elements of the {masked} rows that see no key are not 0");
            Assert.That(wrongLse, Is.Zero, $"{context}: {wrongLse} of the {masked} rows that see no key have a log-sum-exp other than +infinity");
        }

        float[] naive = NaiveAttention.ForwardSameDtype(run.Q, run.K, run.V, dims, mask, (float)dims.DefaultScale, x => DeviceArray.Round(dtype, x));
        JudgeOutput(ours, naive, refOut, dtype, dims, mask, context);
        JudgeLse(lse, refLse, context);
    }

    /// <summary>
    /// <see cref="KernelPath.Auto"/> runs the sm90 forward on a compute capability 9.0 GPU with a build that has sm_90a
    /// code, and the sm80 one everywhere else, and is right either way.
    /// </summary>
    [TestCase(DataType.BFloat16, 128, Mask.CausalBottomRight)]
    [TestCase(DataType.Float16, 64, Mask.None)]
    [TestCase(DataType.BFloat16, 200, Mask.CausalTopLeft)]
    public void AutoRunsTheFastestPathOfTheDevice(DataType dtype, int headDim, Mask mask)
    {
        var dims = new AttentionDims(2, 203, 331, 8, 2, headDim);
        RequireServed(dtype, dims);
        RunAndJudge(KernelPath.Auto, dtype, dims, MaskSpec.From(mask), scale: null);
    }

    /// <summary>
    /// A forward captured once into a CUDA graph runs only on replay, and each replay computes the attention of
    /// whatever the captured buffers hold then; the captured kernel is the path's.
    /// </summary>
    [TestCase(KernelPath.Sm80)]
    [TestCase(KernelPath.Sm90)]
    public void GraphReplayWithNewInputsMatchesReference(KernelPath path)
    {
        var dims = new AttentionDims(2, 300, 333, 8, 2, 64);
        const DataType dtype = DataType.BFloat16;
        Random random = TestRandom.ForCurrentTest(out int seed);
        using ForwardRun run = ForwardRun.Create(Device, dims, dtype, random, seed);
        var options = new AttentionOptions { Causal = true, WindowLeft = 100, KernelPath = path };
        Stream.Synchronize();

        // Where the path serves, the forward is captured (the kernel check reads the name logged at capture); where it
        // must be refused, the refusal is checked on a plain call, before any capture begins.
        CudaGraph? captured = null;
        Action capture = () =>
        {
            Stream.BeginCapture();
            try
            {
                Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
            }
            finally
            {
                captured = Stream.EndCapture(); // ends the capture even when the call throws
            }

            Stream.Synchronize();
        };
        Action plain = () =>
        {
            Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
            Stream.Synchronize();
        };
        bool served = ForwardOnPath(options, dtype, dims.HeadDim, varlen: false, ForwardPaths.Serves(path, Device) ? capture : plain,
            [run.DOut, run.DLse], $"seed {seed}, graph capture, {dims}");
        using CudaGraph? graph = captured;
        if (!served)
        {
            return;
        }

        Assert.That(run.DOut.Read().All(float.IsNaN), Is.True, "capturing must not run the forward");

        for (int replay = 1; replay <= 2; replay++)
        {
            run.Refill(random);
            run.PoisonOutputs();
            graph!.Launch(Stream);
            Stream.Synchronize();
            float[] ours = run.DOut.Read();
            float[] lse = run.DLse.Read();
            var (refOut, refLse) = run.Reference(options);
            MaskSpec spec = new(true, false, Left: 100);
            float scale = (float)(1.0 / Math.Sqrt(dims.HeadDim));
            float[] naive = NaiveAttention.ForwardSameDtype(run.Q, run.K, run.V, dims, spec, scale, x => DeviceArray.Round(dtype, x));
            string context = $"seed {seed}, replay {replay}, {dims}, path {path}";
            JudgeOutput(ours, naive, refOut, dtype, dims, spec, context);
            JudgeLse(lse, refLse, context);
        }
    }

    public static IEnumerable<TestCaseData> WindowCases()
    {
        foreach (KernelPath path in Paths)
        {
            TestCaseData Case(DataType dtype, int d, int sq, int sk, int hq, int hkv, MaskSpec spec) =>
                new TestCaseData(path, dtype, new AttentionDims(2, sq, sk, hq, hkv, d), spec)
                    .SetArgDisplayNames(path.ToString(), Name(dtype), $"D{d}", $"Sq{sq}", $"Sk{sk}", $"Hq{hq}", $"Hkv{hkv}", spec.ToString());

            yield return Case(DataType.BFloat16, 128, 1023, 1023, 8, 2, new MaskSpec(true, false, Left: 255));
            yield return Case(DataType.Float16, 64, 113, 203, 4, 4, new MaskSpec(false, false, Left: 32, Right: 16));
            yield return Case(DataType.BFloat16, 64, 203, 113, 6, 1, new MaskSpec(false, true, Left: 0, Right: 0));
            yield return Case(DataType.Float16, 128, 128, 217, 8, 2, new MaskSpec(false, false, Softcap: 30f));
            yield return Case(DataType.BFloat16, 128, 217, 128, 4, 4, new MaskSpec(true, false, Left: 7, Softcap: 50f));
            yield return Case(DataType.BFloat16, 64, 1, 1023, 8, 2, new MaskSpec(false, false, Left: 100, Right: 0));
            yield return Case(DataType.Float16, 256, 150, 301, 4, 2, new MaskSpec(true, true, Left: 40, Softcap: 15f));
        }
    }

    [TestCaseSource(nameof(WindowCases))]
    public void WindowAndSoftcapMatchReference(KernelPath path, DataType dtype, AttentionDims dims, MaskSpec spec) =>
        RunAndJudge(path, dtype, dims, spec, scale: null);

    private void RunAndJudge(KernelPath path, DataType dtype, AttentionDims dims, MaskSpec mask, float? scale)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        AttentionOptions options = mask.ToOptions(scale) with { KernelPath = path };
        using ForwardRun run = ForwardRun.Create(Device, dims, dtype, random, seed);
        float effectiveScale = scale ?? (float)(1.0 / Math.Sqrt(dims.HeadDim));
        string context = $"seed {seed}, {Name(dtype)}, {dims}, {mask}, scale {effectiveScale}";

        if (!ForwardOnPath(options, dtype, dims.HeadDim, varlen: false, () =>
            {
                Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
                Stream.Synchronize();
            }, [run.DOut, run.DLse], context))
        {
            return; // a refusal, checked
        }

        float[] ours = run.DOut.Read();
        float[] lse = run.DLse.Read();

        var (refOut, refLse) = run.Reference(options);
        float[] naive = NaiveAttention.ForwardSameDtype(run.Q, run.K, run.V, dims, mask, effectiveScale, x => DeviceArray.Round(dtype, x));

        context += $", path {path}";
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
