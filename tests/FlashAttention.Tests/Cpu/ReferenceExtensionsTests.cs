using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The float64 reference's sliding window, soft-capping and variable-length batches against the tests' own
/// naive formula (which spells out the header's visibility rule key by key).
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ReferenceExtensionsTests
{
    private const double Tolerance = 1e-11;

    private static double[] Normal(Random random, int n) => TestRandom.Normal(random, n).Select(x => (double)x).ToArray();

    private static void AssertClose(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, string what, string context) =>
        ElementAsserts.Close(actual, expected, Tolerance, what, context);

    public static IEnumerable<TestCaseData> WindowCases()
    {
        // (causal, topLeft, left, right, softcap)
        yield return new TestCaseData(false, false, 5, 5, 0f).SetArgDisplayNames("local 5/5 bottom-right");
        yield return new TestCaseData(false, true, 3, 0, 0f).SetArgDisplayNames("local 3/0 top-left");
        yield return new TestCaseData(true, false, 7, null, 0f).SetArgDisplayNames("causal window 7");
        yield return new TestCaseData(true, true, 0, null, 0f).SetArgDisplayNames("causal window 0 top-left (diagonal only)");
        yield return new TestCaseData(false, false, null, 2, 0f).SetArgDisplayNames("right only 2");
        yield return new TestCaseData(true, false, null, 4, 0f).SetArgDisplayNames("causal caps right window");
        yield return new TestCaseData(false, false, null, null, 5f).SetArgDisplayNames("softcap 5");
        yield return new TestCaseData(true, true, 9, null, 0.5f).SetArgDisplayNames("causal window 9 softcap 0.5");
        yield return new TestCaseData(false, false, 0, 0, 30f).SetArgDisplayNames("diagonal only softcap 30");
    }

    [TestCaseSource(nameof(WindowCases))]
    public void WindowAndSoftcapMatchNaiveFormula(bool causal, bool topLeft, int? left, int? right, float softcap)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 6; iteration++)
        {
            int sq = random.Next(1, 45), sk = random.Next(1, 45);
            int hkv = random.Next(1, 3);
            var dims = new AttentionDims(random.Next(1, 3), sq, sk, hkv * random.Next(1, 4), hkv, random.Next(1, 24));
            var q = Normal(random, dims.QElements);
            var k = Normal(random, dims.KvElements);
            var v = Normal(random, dims.KvElements);
            var options = new AttentionOptions
            {
                Causal = causal,
                CausalAlignment = topLeft ? CausalAlignment.TopLeft : CausalAlignment.BottomRight,
                WindowLeft = left,
                WindowRight = right,
                Softcap = softcap > 0 ? softcap : null,
                SoftmaxScale = 0.9f,
            };
            var output = new double[dims.QElements];
            var lse = new double[dims.LseElements];
            output.AsSpan().Fill(double.NaN);
            lse.AsSpan().Fill(double.NaN);
            AttentionReference.Forward(q, k, v, new AttentionShape(dims.Batch, sq, sk, dims.HeadsQ, dims.HeadsKv, dims.HeadDim), options, output, lse);
            var (naiveOut, naiveLse) = NaiveAttention.Forward64(q, k, v, dims, causal, topLeft, left, right, softcap, 0.9f);
            string context = $"seed {seed}, iteration {iteration}, {dims}";
            AssertClose(output, naiveOut, "output", context);
            AssertClose(lse, naiveLse, "lse", context);
        }
    }

    [Test]
    public void VisibleKeysAgreesWithTheRuleKeyByKey()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int n = 0; n < 400; n++)
        {
            int sq = random.Next(1, 30), sk = random.Next(0, 30);
            bool causal = random.Next(2) == 0, topLeft = random.Next(2) == 0;
            int? left = random.Next(3) == 0 ? null : random.Next(0, 8);
            int? right = random.Next(3) == 0 ? null : random.Next(0, 8);
            var options = new AttentionOptions
            {
                Causal = causal,
                CausalAlignment = topLeft ? CausalAlignment.TopLeft : CausalAlignment.BottomRight,
                WindowLeft = left,
                WindowRight = right,
            };
            for (int i = 0; i < sq; i++)
            {
                var (first, end) = AttentionReference.VisibleKeys(options, i, sq, sk);
                for (int j = 0; j < sk; j++)
                {
                    bool expected = NaiveAttention.Visible(i, j, sq, sk, causal, topLeft, left, right);
                    bool actual = j >= first && j < end;
                    if (expected != actual)
                    {
                        Assert.Fail($"seed {seed}: Sq {sq} Sk {sk} causal {causal} topLeft {topLeft} window ({left}, {right}): " +
                            $"row {i} key {j} visible per rule {expected}, VisibleKeys gives [{first}, {end})");
                    }
                }
            }
        }
    }

    [Test]
    public void SoftcapBoundsTheScoresAndTheLse()
    {
        // With a cap c every score lies in (-c, c), so lse <= c + log(Sk) however large q.k is.
        var dims = new AttentionDims(1, 1, 3, 1, 1, 1);
        var output = new double[1];
        var lse = new double[1];
        AttentionReference.Forward(new[] { 1000.0 }, new[] { 1.0, 2.0, -3.0 }, new[] { 1.0, 2.0, 3.0 },
            new AttentionShape(1, 1, 3, 1, 1, 1), new AttentionOptions { SoftmaxScale = 1f, Softcap = 2f }, output, lse);
        double s1 = 2 * Math.Tanh(500), s2 = 2 * Math.Tanh(1000), s3 = 2 * Math.Tanh(-1500);
        double m = Math.Max(s1, Math.Max(s2, s3));
        double z = Math.Exp(s1 - m) + Math.Exp(s2 - m) + Math.Exp(s3 - m);
        Assert.Multiple(() =>
        {
            Assert.That(lse[0], Is.EqualTo(m + Math.Log(z)).Within(1e-12));
            Assert.That(lse[0], Is.LessThanOrEqualTo(2 + Math.Log(3)));
            Assert.That(output[0], Is.EqualTo(((1 * Math.Exp(s1 - m)) + (2 * Math.Exp(s2 - m)) + (3 * Math.Exp(s3 - m))) / z).Within(1e-12));
        });
        _ = dims;
    }

    [TestCase(false, false)]
    [TestCase(true, false)]
    [TestCase(true, true)]
    public void VarlenMatchesPerSequenceNaiveFormula(bool causal, bool topLeft)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        // Includes empty and length-1 sequences on both sides.
        int[] lensQ = [5, 0, 1, 17, 3, 9, 1];
        int[] lensK = [5, 4, 0, 9, 1, 23, 1];
        const int hq = 4, hkv = 2, d = 8;
        int totalQ = lensQ.Sum(), totalK = lensK.Sum();
        var q = Normal(random, totalQ * hq * d);
        var k = Normal(random, totalK * hkv * d);
        var v = Normal(random, totalK * hkv * d);
        var options = new AttentionOptions
        {
            Causal = causal,
            CausalAlignment = topLeft ? CausalAlignment.TopLeft : CausalAlignment.BottomRight,
            WindowLeft = causal ? 6 : null,
        };
        var output = new double[totalQ * hq * d];
        var lse = new double[hq * totalQ];
        output.AsSpan().Fill(double.NaN);
        lse.AsSpan().Fill(double.NaN);
        AttentionReference.ForwardVarlen(q, k, v, lensQ, lensK, hq, hkv, d, options, output, lse);

        int rowQ = 0, rowK = 0;
        for (int b = 0; b < lensQ.Length; b++)
        {
            var dims = new AttentionDims(1, lensQ[b], lensK[b], hq, hkv, d);
            var (naiveOut, naiveLse) = NaiveAttention.Forward64(
                q.AsSpan(rowQ * hq * d, lensQ[b] * hq * d), k.AsSpan(rowK * hkv * d, lensK[b] * hkv * d),
                v.AsSpan(rowK * hkv * d, lensK[b] * hkv * d), dims, causal, topLeft, options.WindowLeft, null, 0, 1.0 / Math.Sqrt(d));
            string context = $"seed {seed}, sequence {b} (Sq {lensQ[b]}, Sk {lensK[b]})";
            AssertClose(output.AsSpan(rowQ * hq * d, lensQ[b] * hq * d), naiveOut, "output", context);
            for (int h = 0; h < hq; h++)
            {
                AssertClose(lse.AsSpan((h * totalQ) + rowQ, lensQ[b]), naiveLse.AsSpan(h * lensQ[b], lensQ[b]), $"lse head {h}", context);
            }

            rowQ += lensQ[b];
            rowK += lensK[b];
        }
    }
}
