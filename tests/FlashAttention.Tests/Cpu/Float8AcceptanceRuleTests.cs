using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The fp8 forward's acceptance rule (<see cref="Float8Testing"/>: FlashAttention-3's output rule and our LSE bound),
/// checked on the CPU: an emulation of the fp8 kernel with its precision choices (<see cref="Float8Emulation"/>:
/// weights rounded to e4m3 against the running maximum, not the final one the rule's <c>pt</c> uses) passes it on
/// every shape the Gpu tests use, with and without descales, soft-cap and masks; subtly broken variants fail it.
/// This guards against a rule so tight that a correct kernel fails, or so loose that a wrong one passes.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class Float8AcceptanceRuleTests
{
    public static IEnumerable<TestCaseData> Shapes()
    {
        TestCaseData Case(AttentionDims dims, MaskSpec spec, bool descales, string name) =>
            new TestCaseData(dims, spec, descales).SetArgDisplayNames(name, descales ? "descales" : "no-descales");

        yield return Case(new AttentionDims(2, 113, 203, 8, 2, 64), new MaskSpec(false, false), true, "113x203-full");
        yield return Case(new AttentionDims(2, 203, 113, 6, 1, 128), new MaskSpec(true, false), true, "203x113-bottom-right");
        yield return Case(new AttentionDims(2, 128, 217, 4, 4, 80), new MaskSpec(true, true), false, "128x217-top-left");
        yield return Case(new AttentionDims(1, 1, 300, 4, 4, 64), new MaskSpec(false, false), true, "1x300");
        yield return Case(new AttentionDims(2, 150, 301, 4, 2, 144), new MaskSpec(true, true, Left: 40, Softcap: 15f), true, "window-softcap");
        yield return Case(new AttentionDims(1, 217, 128, 4, 4, 128), new MaskSpec(true, false, Left: 7, Softcap: 50f), false, "causal-window-softcap");
        yield return Case(new AttentionDims(1, 300, 77, 8, 2, 256), new MaskSpec(true, false), true, "empty-rows");
    }

    private static (List<string> Output, List<string> Lse) Judge(
        AttentionDims dims, MaskSpec spec, bool descales, Float8Emulation.Defect defect, int blockK, out int seed)
    {
        Random random = TestRandom.ForCurrentTest(out seed);
        var (q, k, v) = Float8Testing.RandomQkv(random, dims, spec.Softcap);
        int n = dims.Batch * dims.HeadsKv;
        float[] qd = descales ? Float8Testing.RandomDescales(random, n) : [];
        float[] kd = descales ? Float8Testing.RandomDescales(random, n) : [];
        float[] vd = descales ? Float8Testing.RandomDescales(random, n) : [];
        float scale = (float)dims.DefaultScale;
        var (ours, lse) = Float8Emulation.Forward(
            Float8Testing.ToFloat(q), Float8Testing.ToFloat(k), Float8Testing.ToFloat(v), qd, kd, vd, dims, spec, scale, blockK, defect);
        return new Float8Problem(dims, q, k, v, qd, kd, vd).Judge(ours, lse, spec.ToOptions(), scale, spec.Softcap > 0);
    }

    [TestCaseSource(nameof(Shapes))]
    public void FaithfulFp8KernelPasses(AttentionDims dims, MaskSpec spec, bool descales)
    {
        foreach (int blockK in new[] { 64, 128, 176 })
        {
            var (output, lse) = Judge(dims, spec, descales, Float8Emulation.Defect.None, blockK, out int seed);
            using (Assert.EnterMultipleScope())
            {
                Assert.That(output, Is.Empty, $"seed {seed}, block {blockK}");
                Assert.That(lse, Is.Empty, $"seed {seed}, block {blockK}");
            }
        }
    }

    [TestCase(Float8Emulation.Defect.IgnoreVDescale)]
    [TestCase(Float8Emulation.Defect.QDescaleByQueryHead)]
    [TestCase(Float8Emulation.Defect.DescaleOutsideTanh)]
    [TestCase(Float8Emulation.Defect.NoRescaleBetweenBlocks)]
    [TestCase(Float8Emulation.Defect.OneWrongElement)]
    public void DefectsFail(Float8Emulation.Defect defect)
    {
        var spec = defect == Float8Emulation.Defect.DescaleOutsideTanh
            ? new MaskSpec(true, false, Softcap: 15f)
            : new MaskSpec(true, false);
        var (output, lse) = Judge(new AttentionDims(2, 113, 203, 8, 2, 64), spec, descales: true, defect, blockK: 64, out int seed);
        Assert.That(output, Is.Not.Empty, $"the output rule let {defect} through (seed {seed})");
        if (defect is Float8Emulation.Defect.QDescaleByQueryHead or Float8Emulation.Defect.DescaleOutsideTanh
            or Float8Emulation.Defect.NoRescaleBetweenBlocks)
        {
            Assert.That(lse, Is.Not.Empty, $"the lse bound let {defect} through (seed {seed})");
        }
    }

    /// <summary>
    /// FA3's noise term is evaluated in bf16 arithmetic (as FA3 evaluates it on its bf16 reference), not in float64
    /// (where it would be about 1e-17): 0.1 is bf16 0.10009765625, + 0.3 rounds to 0.400390625, - 0.3 to
    /// 0.1005859375, 2^-11 away; 0.2 and 0.7 come back exactly. The maximum over the elements counts.
    /// </summary>
    [Test]
    public void NoiseTermIsBf16Arithmetic()
    {
        using (Assert.EnterMultipleScope())
        {
            Assert.That(Float8Testing.Bf16Noise([0.1]), Is.EqualTo(Math.Pow(2, -11)));
            Assert.That(Float8Testing.Bf16Noise([0.2, 0.7]), Is.Zero);
            Assert.That(Float8Testing.Bf16Noise([0.2, 0.7, 0.05, 0.1]), Is.EqualTo(Math.Pow(2, -11)));
        }
    }

    /// <summary>rtol is 2 without a soft-cap and 3 with one (FA3): an error of 2.5 times pt's passes only with a soft-cap.</summary>
    [Test]
    public void SoftcapRaisesRtolToThree()
    {
        double[] reference = [0.69921875, 0.2001953125, -0.8984375, 0.44921875]; // exact in bf16, noise 0
        double[] pt = [0.69921875, 0.2001953125 + (1.0 / 64), -0.8984375, 0.44921875]; // 2^-6 off on one element
        float[] ours = [0.69921875f, 0.2001953125f, -0.8984375f - (2.5f / 64), 0.44921875f];
        Assert.That(Float8Testing.Bf16Noise(reference), Is.Zero);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(Float8Testing.JudgeOutput(ours, reference, pt, softcap: false, headDim: 4, _ => false), Is.Not.Empty);
            Assert.That(Float8Testing.JudgeOutput(ours, reference, pt, softcap: true, headDim: 4, _ => false), Is.Empty);
        }
    }

    /// <summary>A row that sees no key must be exactly 0, and a non-finite element fails whatever the numbers.</summary>
    [Test]
    public void EmptyRowsAreZeroAndEveryElementFinite()
    {
        double[] reference = [0.5, 0.25, 0, 0];
        float[] good = [0.5f, 0.25f, 0f, 0f];
        using (Assert.EnterMultipleScope())
        {
            Assert.That(Float8Testing.JudgeOutput(good, reference, reference, false, 2, row => row == 1), Is.Empty);
            Assert.That(Float8Testing.JudgeOutput([0.5f, 0.25f, 1e-30f, 0f], reference, reference, false, 2, row => row == 1), Is.Not.Empty);
            Assert.That(Float8Testing.JudgeOutput([0.5f, float.NaN, 0f, 0f], reference, reference, false, 2, _ => false), Is.Not.Empty);
        }
    }
}
