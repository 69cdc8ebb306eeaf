using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The rules the Gpu forward and backward tests apply, checked on the CPU: a faithful emulation of the
/// FlashAttention-2 algorithm (with the kernel's precision choices) passes each, and subtly broken variants fail it.
/// This guards against a rule so tight that a correct kernel fails, or so loose that a wrong one passes.
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

    // ---- the backward rule (BackwardAcceptance) ---------------------------------------------------------------------

    private static List<string> JudgeBackward(DataType dtype, AttentionDims dims, Mask mask, BackwardEmulation.Defect defect, out int seed)
    {
        Random random = TestRandom.ForCurrentTest(out seed);
        float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.QElements));
        float[] k = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.KvElements));
        float[] v = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.KvElements));
        float[] dOut = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.QElements));
        float scale = (float)dims.DefaultScale;
        Func<float, float> round = x => DeviceArray.Round(dtype, x);
        MaskSpec spec = MaskSpec.From(mask);

        var refQ = new double[dims.QElements];
        var refK = new double[dims.KvElements];
        var refV = new double[dims.KvElements];
        AttentionReference.Backward(
            AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v), AttentionReference.ToDouble(dOut),
            new AttentionShape(dims.Batch, dims.SeqQ, dims.SeqK, dims.HeadsQ, dims.HeadsKv, dims.HeadDim), spec.ToOptions(), refQ, refK, refV);
        var (nq, nk, nv) = NaiveBackward.SameDtype(q, k, v, dOut, dims, spec, scale, round);
        var (eq, ek, ev) = BackwardEmulation.Backward(q, k, v, dOut, dims, spec, scale, round, defect);
        var (zq, zkv) = ZeroRows(dims, spec);
        List<string> problems = BackwardAcceptance.Judge("dq", eq, nq, refQ, dtype, dims.HeadDim, zq);
        problems.AddRange(BackwardAcceptance.Judge("dk", ek, nk, refK, dtype, dims.HeadDim, zkv));
        problems.AddRange(BackwardAcceptance.Judge("dv", ev, nv, refV, dtype, dims.HeadDim, zkv));
        return problems;
    }

    /// <summary>Rows that must be exactly 0: dq of queries that see no key, dk and dv of keys no query sees.</summary>
    private static (bool[] Dq, bool[] Dkv) ZeroRows(AttentionDims d, MaskSpec mask)
    {
        var rowSees = new bool[d.SeqQ];
        var keySeen = new bool[d.SeqK];
        for (int i = 0; i < d.SeqQ; i++)
        {
            for (int j = 0; j < d.SeqK; j++)
            {
                if (mask.Visible(i, j, d.SeqQ, d.SeqK))
                {
                    rowSees[i] = keySeen[j] = true;
                }
            }
        }

        var dq = new bool[d.Batch * d.SeqQ * d.HeadsQ];
        var dkv = new bool[d.Batch * d.SeqK * d.HeadsKv];
        for (int r = 0; r < dq.Length; r++)
        {
            dq[r] = !rowSees[r / d.HeadsQ % d.SeqQ];
        }

        for (int r = 0; r < dkv.Length; r++)
        {
            dkv[r] = !keySeen[r / d.HeadsKv % d.SeqK];
        }

        return (dq, dkv);
    }

    [TestCaseSource(nameof(Shapes))]
    public void FaithfulFlashBackwardPasses(DataType dtype, AttentionDims dims, Mask mask)
    {
        List<string> problems = JudgeBackward(dtype, dims, mask, BackwardEmulation.Defect.None, out int seed);
        Assert.That(problems, Is.Empty, $"seed {seed}");
    }

    /// <summary>
    /// Each broken backward fails the rule in both dtypes, on a GQA shape (4 query heads per kv head) whose first
    /// 90 query rows see no key (causal bottom-right, seqlen_q 203 > seqlen_k 113), so the structural zeros count too.
    /// </summary>
    [TestCase(BackwardEmulation.Defect.ScaleOffByOnePercent)]
    [TestCase(BackwardEmulation.Defect.NoDeltaTerm)]
    [TestCase(BackwardEmulation.Defect.DropLastKeyOfEachRow)]
    [TestCase(BackwardEmulation.Defect.DkDvFromFirstHeadOfGroupOnly)]
    [TestCase(BackwardEmulation.Defect.SoftmaxDerivativeWithoutP)]
    [TestCase(BackwardEmulation.Defect.OneUnwrittenElement)]
    [TestCase(BackwardEmulation.Defect.MaskedRowNotZero)]
    public void BackwardDefectsFail(BackwardEmulation.Defect defect)
    {
        var dims = new AttentionDims(2, 203, 113, 8, 2, 64);
        foreach (DataType dtype in new[] { DataType.Float16, DataType.BFloat16 })
        {
            List<string> faithful = JudgeBackward(dtype, dims, Mask.CausalBottomRight, BackwardEmulation.Defect.None, out int seed);
            Assert.That(faithful, Is.Empty, $"{dtype}: the faithful backward fails on this shape, so the defect proves nothing (seed {seed})");
            List<string> problems = JudgeBackward(dtype, dims, Mask.CausalBottomRight, defect, out seed);
            Assert.That(problems, Is.Not.Empty, $"{dtype}: the backward rule let {defect} through (seed {seed})");
            TestContext.Out.WriteLine($"{dtype} {defect}: {string.Join(" | ", problems)}");
        }
    }
}
