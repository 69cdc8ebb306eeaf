using FlashAttn.Internal;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The float64 reference with a V head dim other than q's (issue 14, FEATURES.md §8) through its public API:
/// <see cref="AttentionShape.HeadDimV"/> for the fixed-length overloads and the <c>headDimV</c> overload of
/// <see cref="AttentionReference.ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, int, AttentionOptions, ReadOnlySpan{double}, ReadOnlySpan{double}, Span{double}, Span{double})"/>.
/// Checked, every output and LSE element, against a naive formula written here (O = softmax(scale · Q Kᵀ + bias) V
/// with Dv-long value rows, the sink as one more logit without a value row, dropout from the Philox keep bytes) for
/// FlashAttention-3's pairs (192, 128) and (64, 512) on small shapes with every option the reference has (causal both
/// alignments with Sq &lt; Sk and Sq &gt; Sk, windows, softcap, custom scale, GQA/MQA, ALiBi both forms, sinks,
/// dropout, varlen with empty and length-1 sequences); and with HeadDimV equal to HeadDim (or unset, or 0) the
/// reference gives the bits of the calls without HeadDimV (the existing reference tests judge those calls against their
/// own naive formulas). Also AttentionShape's new members and the argument checks. Pure managed.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ReferenceValueHeadDimTests
{
    // As ReferenceTests and ReferenceExtrasTests: both sides in float64 with different summation orders.
    private const double Tolerance = 1e-11;

    private static readonly (int D, int Dv)[] Pairs = [(192, 128), (64, 512)];

    /// <summary>The extras a case adds: ALiBi slopes (<c>[Hq]</c> or <c>[B, Hq]</c>), sinks, dropout.</summary>
    private sealed record Extras(double[]? Slopes = null, double[]? Sinks = null, float DropoutP = 0f, ulong Seed = 0, ulong Offset = 0)
    {
        public ReferenceExtras ToReference() => new()
        {
            AlibiSlopes = Slopes,
            Sinks = Sinks,
            DropoutP = DropoutP,
            DropoutSeed = Seed,
            DropoutOffset = Offset,
        };
    }

    private static double[] Normal(Random random, int n) => TestRandom.Normal(random, n).Select(x => (double)x).ToArray();

    private static double[] Poisoned(int n)
    {
        var result = new double[n];
        result.AsSpan().Fill(double.NaN); // every element must be written
        return result;
    }

    /// <summary>The reference on a fixed-length problem, through the public overload (the internal one for dropout).</summary>
    private static (double[] Output, double[] Lse) Reference(double[] q, double[] k, double[] v, ProblemDims p, AttentionOptions o, Extras x)
    {
        double[] output = Poisoned(p.OElements), lse = Poisoned(p.LseElements);
        if (x.DropoutP > 0)
        {
            // Dropout has no public reference overload; the shape's HeadDimV still decides the V head dim.
            var extras = x.ToReference();
            AttentionReference.ForwardWithExtras(q, k, v, p.Shape, o, extras, output, lse);
        }
        else
        {
            AttentionReference.Forward(q, k, v, p.Shape, o, x.Sinks ?? [], x.Slopes ?? [], output, lse);
        }

        return (output, lse);
    }

    private static void AssertClose(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, string what, string context) =>
        ElementAsserts.Close(actual, expected, Tolerance, what, context);

    public static IEnumerable<TestCaseData> Mixes()
    {
        TestCaseData Case(string name, int sq, int sk, int hq, int hkv, AttentionOptions o, string extras = "none") =>
            new TestCaseData(sq, sk, hq, hkv, o, extras).SetArgDisplayNames(name);

        yield return Case("no mask, GQA 2", 7, 11, 4, 2, new AttentionOptions());
        yield return Case("causal bottom-right Sq<Sk", 6, 13, 4, 2, new AttentionOptions { Causal = true });
        yield return Case("causal bottom-right Sq>Sk (rows see no key)", 13, 6, 3, 1, new AttentionOptions { Causal = true });
        yield return Case("causal top-left Sq<Sk", 6, 13, 2, 2, new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft });
        yield return Case("causal top-left Sq>Sk", 13, 6, 4, 1, new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft });
        yield return Case("window 3/1", 9, 12, 2, 1, new AttentionOptions { WindowLeft = 3, WindowRight = 1 });
        yield return Case("window off the keys (rows see no key)", 14, 4, 2, 2, new AttentionOptions { WindowLeft = 1, WindowRight = 1 });
        yield return Case("softcap 2, custom scale 0.3", 8, 10, 2, 1, new AttentionOptions { Softcap = 2f, SoftmaxScale = 0.3f });
        yield return Case("one query, one key", 1, 1, 4, 2, new AttentionOptions { Causal = true });
        yield return Case("alibi per head, causal (FA2 column form)", 7, 12, 4, 2, new AttentionOptions { Causal = true }, "alibi-head");
        yield return Case("alibi per batch, window (distance form)", 9, 9, 2, 1, new AttentionOptions { WindowLeft = 2, WindowRight = 3 }, "alibi-batch");
        yield return Case("sinks, causal Sq>Sk (empty rows: LSE = sink)", 10, 4, 2, 2, new AttentionOptions { Causal = true }, "sinks");
        yield return Case("dropout 0.17", 7, 11, 4, 2, new AttentionOptions(), "dropout");
        yield return Case("all: alibi, sinks, dropout 0.3, causal window 4, softcap 3", 8, 12, 4, 2,
            new AttentionOptions { Causal = true, WindowLeft = 4, Softcap = 3f }, "all");
    }

    private static Extras ExtrasOf(string kind, Random random, int batch, int hq) => kind switch
    {
        "alibi-head" => new Extras(Slopes: TestRandom.Uniform(random, hq, 0, 0.3)),
        "alibi-batch" => new Extras(Slopes: TestRandom.Uniform(random, batch * hq, 0, 0.3)),
        "sinks" => new Extras(Sinks: Normal(random, hq)),
        "dropout" => new Extras(DropoutP: 0.17f, Seed: 0x0123456789abcdefUL, Offset: 0xffffffffUL - 40),
        "all" => new Extras(TestRandom.Uniform(random, batch * hq, 0, 0.3), Normal(random, hq), 0.3f, 42, 7),
        _ => new Extras(),
    };

    /// <summary>Fixed-length, both pairs, every option mix: every output (Dv columns) and LSE element against the naive formula.</summary>
    [TestCaseSource(nameof(Mixes))]
    public void ForwardMatchesNaiveFormula(int sq, int sk, int hq, int hkv, AttentionOptions options, string extras)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        foreach (var (d, dv) in Pairs)
        {
            var p = new ProblemDims(2, sq, sk, hq, hkv, d, dv);
            Extras x = ExtrasOf(extras, random, p.Batch, hq);
            double[] q = Normal(random, p.QElements), k = Normal(random, p.KElements), v = Normal(random, p.VElements);
            var (output, lse) = Reference(q, k, v, p, options, x);
            var (naiveOut, naiveLse) = ExtrasNaive.Forward(q, k, v, p, options, x.ToReference(), p.Sk);
            string context = $"seed {seed}, {p}, {extras}";
            AssertClose(output, naiveOut, "output", context);
            AssertClose(lse, naiveLse, "lse", context);
        }
    }

    /// <summary>
    /// Varlen through the <c>headDimV</c> overload (sinks and per-sequence ALiBi slopes too), with an empty query
    /// sequence, an empty key sequence and a length-1 one: each sequence against the naive formula run alone.
    /// </summary>
    [TestCase(false, false)]
    [TestCase(true, false)]
    [TestCase(true, true)]
    public void VarlenMatchesNaiveFormulaPerSequence(bool causal, bool withExtras)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        int[] lensQ = [5, 0, 1, 9, 3], lensK = [8, 4, 1, 0, 12];
        const int hq = 4, hkv = 2;
        var options = new AttentionOptions { Causal = causal, Softcap = withExtras ? 4f : null };
        foreach (var (d, dv) in Pairs)
        {
            int totalQ = lensQ.Sum(), totalK = lensK.Sum();
            double[] q = Normal(random, totalQ * hq * d), k = Normal(random, totalK * hkv * d), v = Normal(random, totalK * hkv * dv);
            Extras x = withExtras ? new Extras(TestRandom.Uniform(random, lensQ.Length * hq, 0, 0.3), Normal(random, hq)) : new Extras();
            double[] output = Poisoned(totalQ * hq * dv), lse = Poisoned(totalQ * hq);
            AttentionReference.ForwardVarlen(q, k, v, lensQ, lensK, hq, hkv, d, dv, options, x.Sinks ?? [], x.Slopes ?? [], output, lse);

            int maxSk = lensK.Max();
            for (int b = 0, q0 = 0, k0 = 0; b < lensQ.Length; q0 += lensQ[b], k0 += lensK[b], b++)
            {
                var p = new ProblemDims(1, lensQ[b], lensK[b], hq, hkv, d, dv);
                var (naiveOut, naiveLse) = ExtrasNaive.Forward(
                    q.AsSpan(q0 * hq * d, p.QElements).ToArray(), k.AsSpan(k0 * hkv * d, p.KElements).ToArray(),
                    v.AsSpan(k0 * hkv * dv, p.VElements).ToArray(), p, options, x.ToReference(), maxSk, batchBase: b);
                string context = $"seed {seed}, sequence {b} (Sq {lensQ[b]}, Sk {lensK[b]}), {p}";
                AssertClose(output.AsSpan(q0 * hq * dv, p.OElements), naiveOut, "output", context);
                var rowLse = new double[p.LseElements];
                for (int h = 0; h < hq; h++)
                {
                    lse.AsSpan((h * totalQ) + q0, lensQ[b]).CopyTo(rowLse.AsSpan(h * lensQ[b]));
                }

                AssertClose(rowLse, naiveLse, "lse", context);
            }
        }
    }

    /// <summary>
    /// The default scale is q's head dim's (D^-0.5, not Dv^-0.5), and v's columns beyond the output's never mix: a value
    /// head that is one-hot in column c gives an output that is the softmax weight mass in column c and 0 elsewhere.
    /// </summary>
    [Test]
    public void DefaultScaleIsQsHeadDimAndColumnsStayApart()
    {
        var p = new ProblemDims(1, 3, 4, 1, 1, 64, 512);
        var random = TestRandom.ForCurrentTest(out int seed);
        double[] q = Normal(random, p.QElements), k = Normal(random, p.KElements);
        var v = new double[p.VElements];
        for (int j = 0; j < p.Sk; j++)
        {
            v[(j * p.Dv) + 300 + j] = 1; // key j's value is one-hot in column 300 + j
        }

        var (output, lse) = Reference(q, k, v, p, new AttentionOptions(), new Extras());
        var (explicitD, explicitLse) = Reference(q, k, v, p, new AttentionOptions { SoftmaxScale = (float)(1.0 / Math.Sqrt(64)) }, new Extras());
        using (Assert.EnterMultipleScope())
        {
            ElementAsserts.BitwiseEqual(output, explicitD, "output", $"seed {seed}: default scale vs 64^-0.5 (exact in float)");
            ElementAsserts.BitwiseEqual(lse, explicitLse, "lse", $"seed {seed}: default scale vs 64^-0.5");
            for (int i = 0; i < p.Sq; i++)
            {
                double[] row = output.AsSpan(i * p.Dv, p.Dv).ToArray();
                Assert.That(row.Where((_, c) => c < 300 || c >= 300 + p.Sk), Is.All.EqualTo(0.0), $"row {i}: columns no value row sets");
                Assert.That(row.Skip(300).Take(p.Sk).Sum(), Is.EqualTo(1.0).Within(1e-12), $"row {i}: the weights sum to 1");
            }
        }
    }

    /// <summary>The backward overloads that take a shape honour its HeadDimV: the same bits as the extras' V head dim.</summary>
    [Test]
    public void BackwardTakesTheShapesValueHeadDim()
    {
        var random = TestRandom.ForCurrentTest(out _);
        var p = new ProblemDims(2, 5, 7, 4, 2, 64, 512);
        var options = new AttentionOptions { Causal = true };
        double[] q = Normal(random, p.QElements), k = Normal(random, p.KElements), v = Normal(random, p.VElements), g = Normal(random, p.OElements);
        double[][] a = [new double[p.QElements], new double[p.KElements], new double[p.VElements]];
        double[][] b = [new double[p.QElements], new double[p.KElements], new double[p.VElements]];
        AttentionReference.Backward(q, k, v, g, p.Shape, options, a[0], a[1], a[2]);
        var square = new AttentionShape(p.Batch, p.Sq, p.Sk, p.Hq, p.Hkv, p.D);
        AttentionReference.BackwardWithExtras(q, k, v, g, square, options, new ReferenceExtras { ValueHeadDim = p.Dv }, b[0], b[1], b[2], default);
        Assert.That(a, Is.EqualTo(b));
        Assert.That(a[2].Any(x => x != 0), Is.True, "dv was computed");
    }

    // ---- unchanged with HeadDimV == HeadDim ---------------------------------------------------------------------

    /// <summary>
    /// Everywhere: HeadDimV unset, set to HeadDim, or set to 0 give the same bits (fixed and varlen, with every option,
    /// random inputs), and the shapes compare equal.
    /// </summary>
    [Test]
    public void UnsetAndEqualValueHeadDimsAreBitwiseEqual()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        var shape = new AttentionShape(2, 9, 13, 4, 2, 32);
        var options = new AttentionOptions { Causal = true, WindowLeft = 5, Softcap = 4f };
        double[] q = Normal(random, (int)shape.QElementCount), k = Normal(random, (int)shape.KvElementCount), v = Normal(random, (int)shape.KvElementCount);
        double[] sinks = Normal(random, shape.HeadsQ), slopes = TestRandom.Uniform(random, shape.Batch * shape.HeadsQ, 0, 0.3);
        (double[] O, double[] L) Run(AttentionShape s)
        {
            double[] o = Poisoned((int)s.OutputElementCount), l = Poisoned((int)s.LseElementCount);
            AttentionReference.Forward(q, k, v, s, options, sinks, slopes, o, l);
            return (o, l);
        }

        var unset = Run(shape);
        foreach (AttentionShape s in new[] { shape with { HeadDimV = 32 }, shape with { HeadDimV = 0 } })
        {
            Assert.That(s, Is.EqualTo(shape), "equal sizes, equal shapes");
            Assert.That(s.GetHashCode(), Is.EqualTo(shape.GetHashCode()));
            var (o, l) = Run(s);
            ElementAsserts.BitwiseEqual(o, unset.O, "output", $"seed {seed}, HeadDimV {s.HeadDimV}");
            ElementAsserts.BitwiseEqual(l, unset.L, "lse", $"seed {seed}, HeadDimV {s.HeadDimV}");
        }

        int[] lensQ = [4, 0, 1, 7], lensK = [6, 3, 1, 0];
        int totalQ = lensQ.Sum(), totalK = lensK.Sum();
        double[] vq = Normal(random, totalQ * 4 * 32), vk = Normal(random, totalK * 2 * 32), vv = Normal(random, totalK * 2 * 32);
        double[] slopesV = TestRandom.Uniform(random, lensQ.Length * 4, 0, 0.3);
        double[] o1 = Poisoned(vq.Length), l1 = Poisoned(totalQ * 4), o2 = Poisoned(vq.Length), l2 = Poisoned(totalQ * 4);
        AttentionReference.ForwardVarlen(vq, vk, vv, lensQ, lensK, 4, 2, 32, options, sinks, slopesV, o1, l1);
        AttentionReference.ForwardVarlen(vq, vk, vv, lensQ, lensK, 4, 2, 32, 32, options, sinks, slopesV, o2, l2);
        ElementAsserts.BitwiseEqual(o2, o1, "varlen output", $"seed {seed}, headDimV = headDim");
        ElementAsserts.BitwiseEqual(l2, l1, "varlen lse", $"seed {seed}, headDimV = headDim");
    }

    // ---- AttentionShape and the argument checks ------------------------------------------------------------------

    /// <summary>HeadDimV defaults to HeadDim; the element counts and the FLOP count use it; Validate refuses a negative one.</summary>
    [Test]
    public void ShapeCountsUseTheValueHeadDim()
    {
        var square = new AttentionShape(2, 100, 300, 16, 4, 192);
        AttentionShape pair = square with { HeadDimV = 128 };
        using (Assert.EnterMultipleScope())
        {
            Assert.That(square.HeadDimV, Is.EqualTo(192));
            Assert.That(square.VElementCount, Is.EqualTo(square.KvElementCount));
            Assert.That(square.OutputElementCount, Is.EqualTo(square.QElementCount));
            // FlashAttention's count for equal head dims, to the bit: 4 * B * Hq * Sq * Sk * D (halved when causal).
            Assert.That(square.ForwardFlops(false), Is.EqualTo(4.0 * 2 * 16 * 100 * 300 * 192));
            Assert.That(square.ForwardFlops(true), Is.EqualTo(4.0 * 2 * 16 * 100 * 300 * 192 / 2));

            Assert.That(pair.HeadDim, Is.EqualTo(192));
            Assert.That(pair.HeadDimV, Is.EqualTo(128));
            Assert.That(pair.QElementCount, Is.EqualTo(2L * 100 * 16 * 192));
            Assert.That(pair.KvElementCount, Is.EqualTo(2L * 300 * 4 * 192));
            Assert.That(pair.VElementCount, Is.EqualTo(2L * 300 * 4 * 128));
            Assert.That(pair.OutputElementCount, Is.EqualTo(2L * 100 * 16 * 128));
            Assert.That(pair.LseElementCount, Is.EqualTo(2L * 16 * 100));
            Assert.That(pair.ForwardFlops(false), Is.EqualTo(2.0 * 2 * 16 * 100 * 300 * (192 + 128)));
            Assert.That(pair.ForwardFlops(true), Is.EqualTo(2.0 * 2 * 16 * 100 * 300 * (192 + 128) / 2));
            Assert.That(pair, Is.Not.EqualTo(square));
            Assert.That(pair.ToString(), Does.Contain("HeadDimV = 128"));
            Assert.That(() => pair.Validate(), Throws.Nothing);
            Assert.That(() => (square with { HeadDimV = -8 }).Validate("s"),
                Throws.ArgumentException.With.Message.Contains("HeadDimV").And.Property("ParamName").EqualTo("s"));
        }
    }

    /// <summary>Spans sized for the wrong head dim, a V head dim set twice differently, and the fp8 reference are refused.</summary>
    [Test]
    public void InconsistentArgumentsAreRefused()
    {
        var p = new ProblemDims(1, 3, 4, 2, 1, 64, 512);
        double[] q = new double[p.QElements], k = new double[p.KElements], v = new double[p.VElements], o = new double[p.OElements];
        var options = new AttentionOptions();
        using (Assert.EnterMultipleScope())
        {
            Assert.That(() => AttentionReference.Forward(q, k, v, p.Shape, options, o, default), Throws.Nothing);
            Assert.That(() => AttentionReference.Forward(q, k, new double[p.KElements], p.Shape, options, o, default),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("v"), "v sized for D");
            Assert.That(() => AttentionReference.Forward(q, k, v, p.Shape, options, new double[p.QElements], default),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("output"), "output sized for D");
            Assert.That(
                () => AttentionReference.ForwardWithExtras(q, k, v, p.Shape, options, new ReferenceExtras { ValueHeadDim = 256 }, o, default),
                Throws.ArgumentException.With.Message.Contains("HeadDimV").And.Message.Contains("ValueHeadDim"));
            Assert.That(
                () => AttentionReference.ForwardWithExtras(q, k, v, p.Shape, options, new ReferenceExtras { ValueHeadDim = 512 }, o, default),
                Throws.Nothing, "the same V head dim twice");
            Assert.That(
                () => AttentionReference.ForwardVarlen(q, k, v, [3], [4], 2, 1, 64, 0, options, [], [], o, default),
                Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("headDimV"));
            Assert.That(
                () => AttentionReference.ForwardVarlen(q, k, v, [3], [4], 2, 1, 64, 512, options, [], [], o, default), Throws.Nothing);
            var f8 = new Float8E4M3[p.KElements];
            Assert.That(
                () => AttentionReference.ForwardFloat8(new Float8E4M3[p.QElements], f8, f8, new AttentionShape(1, 3, 4, 2, 1, 64) { HeadDimV = 32 },
                    options, [], [], [], new double[p.QElements], default),
                Throws.ArgumentException.With.Message.Contains("HeadDimV").And.Property("ParamName").EqualTo("shape"));
        }
    }
}
