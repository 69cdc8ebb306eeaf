using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The rule the Gpu forward tests apply, checked on the CPU: a faithful emulation of the FlashAttention-2
/// algorithm (with the kernel's precision choices) passes it, and subtly broken variants fail it. This guards
/// against a rule so tight that a correct kernel fails, or so loose that a wrong one passes.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class AcceptanceRuleTests
{
    public static IEnumerable<TestCaseData> Shapes()
    {
        foreach (DataType dtype in new[] { DataType.Float16, DataType.BFloat16 })
        {
            string dt = dtype == DataType.Float16 ? "fp16" : "bf16";
            yield return new TestCaseData(dtype, new AttentionDims(2, 113, 203, 8, 2, 64), Mask.None).SetArgDisplayNames(dt, "113x203", "none");
            yield return new TestCaseData(dtype, new AttentionDims(2, 203, 113, 6, 1, 64), Mask.CausalBottomRight).SetArgDisplayNames(dt, "203x113", "bottom-right");
            yield return new TestCaseData(dtype, new AttentionDims(2, 128, 217, 4, 4, 128), Mask.CausalTopLeft).SetArgDisplayNames(dt, "128x217", "top-left");
            yield return new TestCaseData(dtype, new AttentionDims(2, 1, 17, 4, 4, 64), Mask.None).SetArgDisplayNames(dt, "1x17", "none");
            yield return new TestCaseData(dtype, new AttentionDims(2, 17, 17, 8, 2, 128), Mask.CausalBottomRight).SetArgDisplayNames(dt, "17x17", "causal");
        }
    }

    private static (List<string> Output, List<string> Lse) Judge(
        DataType dtype, AttentionDims dims, Mask mask, FlashEmulation.Defect defect, out int seed)
    {
        Random random = TestRandom.ForCurrentTest(out seed);
        float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.QElements));
        float[] k = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.KvElements));
        float[] v = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.KvElements));
        float scale = (float)dims.DefaultScale;
        Func<float, float> round = x => DeviceArray.Round(dtype, x);

        var options = new AttentionOptions
        {
            Causal = mask != Mask.None,
            CausalAlignment = mask == Mask.CausalTopLeft ? CausalAlignment.TopLeft : CausalAlignment.BottomRight,
        };
        var refOut = new double[dims.QElements];
        var refLse = new double[dims.LseElements];
        AttentionReference.Forward(
            AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            new AttentionShape(dims.Batch, dims.SeqQ, dims.SeqK, dims.HeadsQ, dims.HeadsKv, dims.HeadDim), options, refOut, refLse);
        float[] naive = NaiveAttention.ForwardSameDtype(q, k, v, dims, mask, scale, round);
        var (emuOut, emuLse) = FlashEmulation.Forward(q, k, v, dims, mask, scale, round, blockK: 64, defect);
        return (AcceptanceRule.JudgeOutput(emuOut, naive, refOut, dtype, dims, mask), AcceptanceRule.JudgeLse(emuLse, refLse));
    }

    [TestCaseSource(nameof(Shapes))]
    public void FaithfulFlashAlgorithmPasses(DataType dtype, AttentionDims dims, Mask mask)
    {
        var (output, lse) = Judge(dtype, dims, mask, FlashEmulation.Defect.None, out int seed);
        Assert.Multiple(() =>
        {
            Assert.That(output, Is.Empty, $"seed {seed}");
            Assert.That(lse, Is.Empty, $"seed {seed}");
        });
    }

    [TestCase(FlashEmulation.Defect.ScaleOffByOnePercent)]
    [TestCase(FlashEmulation.Defect.DropLastKeyOfEachRow)]
    [TestCase(FlashEmulation.Defect.NoRescaleBetweenBlocks)]
    [TestCase(FlashEmulation.Defect.RoundScoresToDtype)]
    [TestCase(FlashEmulation.Defect.OneWrongElement)]
    public void DefectsFail(FlashEmulation.Defect defect)
    {
        foreach (DataType dtype in new[] { DataType.Float16, DataType.BFloat16 })
        {
            var (output, lse) = Judge(dtype, new AttentionDims(2, 113, 203, 8, 2, 64), Mask.CausalBottomRight, defect, out int seed);
            bool lseMatters = defect is FlashEmulation.Defect.ScaleOffByOnePercent or FlashEmulation.Defect.DropLastKeyOfEachRow
                or FlashEmulation.Defect.NoRescaleBetweenBlocks;
            Assert.That(output.Count + (lseMatters ? lse.Count : 0), Is.GreaterThan(0), $"{dtype}: the rule let {defect} through (seed {seed})");
            if (lseMatters)
            {
                Assert.That(lse, Is.Not.Empty, $"{dtype}: the lse check let {defect} through (seed {seed})");
            }
        }
    }
}
