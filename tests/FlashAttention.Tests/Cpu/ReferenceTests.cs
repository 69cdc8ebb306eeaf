using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>The float64 CPU reference (the oracle of the GPU tests) against the tests' own naive formula.</summary>
[TestFixture]
[Category("Cpu")]
public sealed class ReferenceTests
{
    // Both sides compute in float64 with different summation orders; O(1) inputs give differences near 1e-15.
    private const double Tolerance = 1e-11;

    private static Mask ToMask(AttentionOptions o) =>
        !o.Causal ? Mask.None : o.CausalAlignment == CausalAlignment.TopLeft ? Mask.CausalTopLeft : Mask.CausalBottomRight;

    private static AttentionShape ToShape(AttentionDims d) =>
        new(d.Batch, d.SeqQ, d.SeqK, d.HeadsQ, d.HeadsKv, d.HeadDim);

    private static (double[] Out, double[] Lse) RunReference(
        double[] q, double[] k, double[] v, AttentionDims d, AttentionOptions options)
    {
        var output = new double[d.QElements];
        var lse = new double[d.LseElements];
        output.AsSpan().Fill(double.NaN); // poison: every element must be written
        lse.AsSpan().Fill(double.NaN);
        AttentionReference.Forward(q, k, v, ToShape(d), options, output, lse);
        return (output, lse);
    }

    private static void AssertClose(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, string what, string context) =>
        ElementAsserts.Close(actual, expected, Tolerance, what, context);

    private static IEnumerable<TestCaseData> RandomCases()
    {
        var masks = new (bool Causal, CausalAlignment Align)[]
        {
            (false, CausalAlignment.BottomRight),
            (true, CausalAlignment.BottomRight),
            (true, CausalAlignment.TopLeft),
        };
        foreach (var (causal, align) in masks)
        {
            foreach (string lengths in new[] { "Sq<Sk", "Sq>Sk", "Sq=Sk", "any" })
            {
                foreach (bool customScale in new[] { false, true })
                {
                    yield return new TestCaseData(causal, align, lengths, customScale)
                        .SetArgDisplayNames(causal ? $"causal-{align}" : "full", lengths, customScale ? "scale" : "default-scale");
                }
            }
        }
    }

    [TestCaseSource(nameof(RandomCases))]
    public void MatchesNaiveFormulaOnRandomShapes(bool causal, CausalAlignment alignment, string lengths, bool customScale)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 6; iteration++)
        {
            int sq = random.Next(1, 40);
            int sk = random.Next(1, 40);
            switch (lengths)
            {
                case "Sq<Sk": sk = sq + random.Next(1, 20); break;
                case "Sq>Sk": sq = sk + random.Next(1, 20); break;
                case "Sq=Sk": sk = sq; break;
            }

            int hkv = random.Next(1, 4);
            int hq = hkv * random.Next(1, 5); // GQA/MQA ratios 1..4
            var dims = new AttentionDims(random.Next(1, 4), sq, sk, hq, hkv, random.Next(1, 41));
            double scale = customScale ? random.NextDouble() * 2 + 0.05 : dims.DefaultScale;
            var options = new AttentionOptions
            {
                Causal = causal,
                CausalAlignment = alignment,
                SoftmaxScale = customScale ? (float)scale : null,
            };
            if (customScale)
            {
                scale = (float)scale; // the option is a float; compare at the value actually used
            }

            var q = TestRandom.Normal(random, dims.QElements).Select(x => (double)x).ToArray();
            var k = TestRandom.Normal(random, dims.KvElements).Select(x => (double)x).ToArray();
            var v = TestRandom.Normal(random, dims.KvElements).Select(x => (double)x).ToArray();

            var (refOut, refLse) = RunReference(q, k, v, dims, options);
            var (naiveOut, naiveLse) = NaiveAttention.Forward64(q, k, v, dims, ToMask(options), scale);

            string context = $"seed {seed}, iteration {iteration}, {dims}, scale {scale}";
            AssertClose(refOut, naiveOut, "output", context);
            AssertClose(refLse, naiveLse, "lse", context);
        }
    }

    [Test]
    public void BottomRightRowsWithoutKeysGiveZeroAndInfiniteLse()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(2, 9, 4, 2, 1, 8); // Sq > Sk: rows 0..4 see no key
        var q = TestRandom.Normal(random, dims.QElements).Select(x => (double)x).ToArray();
        var k = TestRandom.Normal(random, dims.KvElements).Select(x => (double)x).ToArray();
        var v = TestRandom.Normal(random, dims.KvElements).Select(x => (double)x).ToArray();
        var (output, lse) = RunReference(q, k, v, dims, new AttentionOptions { Causal = true });

        for (int b = 0; b < dims.Batch; b++)
        {
            for (int h = 0; h < dims.HeadsQ; h++)
            {
                for (int i = 0; i < dims.SeqQ; i++)
                {
                    int visibleKeys = Math.Clamp(i + dims.SeqK - dims.SeqQ + 1, 0, dims.SeqK);
                    double l = lse[(b * dims.HeadsQ + h) * dims.SeqQ + i];
                    var row = output.AsSpan((((b * dims.SeqQ) + i) * dims.HeadsQ + h) * dims.HeadDim, dims.HeadDim);
                    if (visibleKeys == 0)
                    {
                        Assert.That(l, Is.EqualTo(double.PositiveInfinity), $"seed {seed} b{b} h{h} row {i}");
                        Assert.That(row.ToArray(), Is.All.EqualTo(0.0), $"row {i} output");
                    }
                    else
                    {
                        Assert.That(double.IsFinite(l), Is.True, $"row {i} sees {visibleKeys} keys");
                        Assert.That(row.ToArray(), Is.All.Not.EqualTo(0.0), $"row {i} output");
                    }
                }
            }
        }
    }

    [Test]
    public void TopLeftWithMoreQueriesThanKeysSeesAPrefix()
    {
        // Top-left: query i sees keys 0..min(i, Sk-1); every row sees at least key 0.
        var dims = new AttentionDims(1, 6, 3, 1, 1, 1);
        var q = new double[] { 1, 1, 1, 1, 1, 1 };
        var k = new double[] { 1, 1, 1 }; // equal scores: output = mean of visible v
        var v = new double[] { 3, 5, 10 };
        var (output, lse) = RunReference(q, k, v, dims, new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft });
        Assert.Multiple(() =>
        {
            Assert.That(output, Is.EqualTo(new[] { 3.0, 4.0, 6.0, 6.0, 6.0, 6.0 }).Within(1e-14));
            Assert.That(lse, Is.EqualTo(new[] { 1.0, 1 + Math.Log(2), 1 + Math.Log(3), 1 + Math.Log(3), 1 + Math.Log(3), 1 + Math.Log(3) }).Within(1e-14));
        });
    }

    [Test]
    public void SingleKeyGivesValueExactly()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(2, 7, 1, 6, 3, 16);
        var q = TestRandom.Normal(random, dims.QElements).Select(x => (double)x).ToArray();
        var k = TestRandom.Normal(random, dims.KvElements).Select(x => (double)x).ToArray();
        var v = TestRandom.Normal(random, dims.KvElements).Select(x => (double)x).ToArray();
        var (output, lse) = RunReference(q, k, v, dims, new AttentionOptions { SoftmaxScale = 0.5f });
        for (int b = 0; b < dims.Batch; b++)
        {
            for (int i = 0; i < dims.SeqQ; i++)
            {
                for (int h = 0; h < dims.HeadsQ; h++)
                {
                    int kvh = h / 2;
                    double dot = 0;
                    for (int x = 0; x < dims.HeadDim; x++)
                    {
                        int o = (((b * dims.SeqQ) + i) * dims.HeadsQ + h) * dims.HeadDim + x;
                        int vi = ((b * dims.HeadsKv) + kvh) * dims.HeadDim + x;
                        Assert.That(output[o], Is.EqualTo(v[vi]), $"seed {seed}: softmax over one key is exactly 1");
                        dot += q[o] * k[vi];
                    }

                    Assert.That(lse[(b * dims.HeadsQ + h) * dims.SeqQ + i], Is.EqualTo(0.5 * dot).Within(1e-12));
                }
            }
        }
    }

    [Test]
    public void UniformScoresGiveTheMeanOfV()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(1, 3, 11, 2, 2, 4);
        var q = TestRandom.Normal(random, dims.QElements).Select(x => (double)x).ToArray();
        var kRow = TestRandom.Normal(random, dims.HeadsKv * dims.HeadDim).Select(x => (double)x).ToArray();
        var k = Enumerable.Range(0, dims.SeqK).SelectMany(_ => kRow).ToArray(); // every key equal
        var v = TestRandom.Normal(random, dims.KvElements).Select(x => (double)x).ToArray();
        var (output, lse) = RunReference(q, k, v, dims, AttentionOptions.Default);
        for (int i = 0; i < dims.SeqQ; i++)
        {
            for (int h = 0; h < dims.HeadsQ; h++)
            {
                double dot = 0;
                for (int x = 0; x < dims.HeadDim; x++)
                {
                    double mean = 0;
                    for (int j = 0; j < dims.SeqK; j++)
                    {
                        mean += v[(j * dims.HeadsKv + h) * dims.HeadDim + x];
                    }

                    mean /= dims.SeqK;
                    Assert.That(output[(i * dims.HeadsQ + h) * dims.HeadDim + x], Is.EqualTo(mean).Within(1e-13), $"seed {seed}");
                    dot += q[(i * dims.HeadsQ + h) * dims.HeadDim + x] * kRow[h * dims.HeadDim + x];
                }

                Assert.That(lse[h * dims.SeqQ + i], Is.EqualTo(dot / 2 + Math.Log(dims.SeqK)).Within(1e-13), "lse = s + log(Sk)");
            }
        }
    }

    [Test]
    public void LargeScoresDoNotOverflow()
    {
        // exp(1000) overflows a double; a softmax that subtracts the row maximum must not.
        var dims = new AttentionDims(1, 1, 2, 1, 1, 1);
        var (output, lse) = RunReference(new[] { 1000.0 }, new[] { 1.0, 0.999 }, new[] { 2.0, 4.0 }, dims, new AttentionOptions { SoftmaxScale = 1f });
        double w = Math.Exp(-1.0); // weights 1 and exp(-1) after subtracting the max
        Assert.Multiple(() =>
        {
            Assert.That(output[0], Is.EqualTo((2.0 + 4.0 * w) / (1 + w)).Within(1e-12));
            Assert.That(lse[0], Is.EqualTo(1000.0 + Math.Log(1 + w)).Within(1e-9));
        });
    }

    [Test]
    public void LogSumExpIsOptionalAndLengthsAreChecked()
    {
        var dims = new AttentionDims(1, 2, 3, 1, 1, 4);
        var shape = ToShape(dims);
        var random = TestRandom.ForCurrentTest(out _);
        var q = TestRandom.Normal(random, dims.QElements).Select(x => (double)x).ToArray();
        var k = TestRandom.Normal(random, dims.KvElements).Select(x => (double)x).ToArray();
        var v = TestRandom.Normal(random, dims.KvElements).Select(x => (double)x).ToArray();
        var output = new double[dims.QElements];
        AttentionReference.Forward(q, k, v, shape, AttentionOptions.Default, output, Span<double>.Empty);
        var (expected, _) = NaiveAttention.Forward64(q, k, v, dims, Mask.None, dims.DefaultScale);
        Assert.That(output, Is.EqualTo(expected).Within(1e-12));

        Assert.Multiple(() =>
        {
            Assert.That(() => AttentionReference.Forward(q, k, v, shape, AttentionOptions.Default, new double[1], Span<double>.Empty),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("output"));
            Assert.That(() => AttentionReference.Forward(q, k.AsSpan(1), v, shape, AttentionOptions.Default, output, Span<double>.Empty),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("k"));
            Assert.That(() => AttentionReference.Forward(q, k, v, shape, AttentionOptions.Default, output, new double[5]),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("logSumExp"));
            Assert.That(() => AttentionReference.Forward(q, k, v, shape with { HeadsQ = 3, HeadsKv = 2 }, AttentionOptions.Default, output, Span<double>.Empty),
                Throws.ArgumentException);
        });
    }

    [Test]
    public void HalfAndBFloat16OverloadsWidenExactly()
    {
        var random = TestRandom.ForCurrentTest(out _);
        var dims = new AttentionDims(1, 5, 7, 4, 2, 8);
        var shape = ToShape(dims);
        var qf = TestRandom.Normal(random, dims.QElements);
        var kf = TestRandom.Normal(random, dims.KvElements);
        var vf = TestRandom.Normal(random, dims.KvElements);
        var options = new AttentionOptions { Causal = true };

        var qh = qf.Select(x => (Half)x).ToArray();
        var kh = kf.Select(x => (Half)x).ToArray();
        var vh = vf.Select(x => (Half)x).ToArray();
        var outH = new double[dims.QElements];
        AttentionReference.Forward(qh, kh, vh, shape, options, outH, Span<double>.Empty);
        var (expH, _) = NaiveAttention.Forward64(
            qh.Select(x => (double)x).ToArray(), kh.Select(x => (double)x).ToArray(), vh.Select(x => (double)x).ToArray(),
            dims, Mask.CausalBottomRight, dims.DefaultScale);

        var qb = qf.Select(x => (BFloat16)x).ToArray();
        var kb = kf.Select(x => (BFloat16)x).ToArray();
        var vb = vf.Select(x => (BFloat16)x).ToArray();
        var outB = new double[dims.QElements];
        AttentionReference.Forward(qb, kb, vb, shape, options, outB, Span<double>.Empty);
        var (expB, _) = NaiveAttention.Forward64(
            qf.Select(x => (double)Numerics.RoundToBf16(x)).ToArray(), kf.Select(x => (double)Numerics.RoundToBf16(x)).ToArray(),
            vf.Select(x => (double)Numerics.RoundToBf16(x)).ToArray(), dims, Mask.CausalBottomRight, dims.DefaultScale);

        Assert.Multiple(() =>
        {
            Assert.That(outH, Is.EqualTo(expH).Within(1e-12));
            Assert.That(outB, Is.EqualTo(expB).Within(1e-12));
        });
    }

    [Test]
    public void RelativeL2ErrorHelper()
    {
        Assert.Multiple(() =>
        {
            Assert.That(AttentionReference.RelativeL2Error(new[] { 3.0, 4.0 }, new[] { 3.0, 4.0 }), Is.Zero);
            Assert.That(AttentionReference.RelativeL2Error(new[] { 3.0, 4.0 }, new[] { 3.0, 5.0 }), Is.EqualTo(0.2).Within(1e-15));
            Assert.That(AttentionReference.RelativeL2Error(new[] { 1.0 }, new[] { double.NaN }), Is.NaN, "NaN never passes");
            Assert.That(AttentionReference.RelativeL2Error(new[] { double.PositiveInfinity, 1 }, new[] { double.PositiveInfinity, 1 }), Is.Zero);
            Assert.That(AttentionReference.RelativeL2Error(new[] { double.PositiveInfinity }, new[] { 1.0 }), Is.EqualTo(double.PositiveInfinity));
            Assert.That(Numerics.RelativeL2(new[] { 3.0, 5.0 }, new[] { 3.0, 4.0 }), Is.EqualTo(0.2).Within(1e-15));
        });
    }
}
