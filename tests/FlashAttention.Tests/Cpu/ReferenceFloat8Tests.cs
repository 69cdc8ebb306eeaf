using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The float64 reference of the fp8 (e4m3) forward (<see cref="AttentionReference.ForwardFloat8"/>,
/// <see cref="AttentionReference.ForwardFloat8Varlen"/>): hand-computed cases (descales per KV head, GQA, the e4m3
/// rounding of the weights with the max offset 8 to the nearest value, the descale inside the soft-cap's tanh), random shapes against
/// the tests' own dequantization and naive formula, variable-length batches against fixed-length calls per sequence,
/// and what rounding the weights may and may not change.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ReferenceFloat8Tests
{
    // Float64 with different summation orders; O(1) inputs give differences near 1e-15.
    private const double Tolerance = 1e-11;

    private static Float8E4M3[] E4M3(params double[] values) => values.Select(x => (Float8E4M3)x).ToArray();

    private static (double[] Out, double[] Lse) Run(
        Float8E4M3[] q, Float8E4M3[] k, Float8E4M3[] v, AttentionShape shape, AttentionOptions options,
        float[] qd, float[] kd, float[] vd, bool round)
    {
        var output = new double[shape.QElementCount];
        var lse = new double[shape.LseElementCount];
        output.AsSpan().Fill(double.NaN); // poison: every element must be written
        lse.AsSpan().Fill(double.NaN);
        AttentionReference.ForwardFloat8(q, k, v, shape, options, qd, kd, vd, output, lse, round);
        return (output, lse);
    }

    /// <summary>
    /// One query token, two keys, two query heads over one KV head (GQA: both query heads take the KV head's descales),
    /// head dim 2, scale 1. True values: q = q8 * 2, k = k8 * 0.5, v = v8 * 1.5. Head 0 has logits 1 and 0 (weights
    /// 1 and e^-1); head 1 has two equal logits.
    /// </summary>
    [Test]
    public void HandComputedDescalesAndRoundedWeights()
    {
        var shape = new AttentionShape(1, 1, 2, 2, 1, 2);
        var options = new AttentionOptions { SoftmaxScale = 1f };
        Float8E4M3[] q = E4M3(1, 0, 0.5, 0.5);     // [b0, i0, h0..1, d]
        Float8E4M3[] k = E4M3(1, 1, 0, 2);         // key 0: (1, 1); key 1: (0, 2)
        Float8E4M3[] v = E4M3(1, -2, 3, 0.5);      // key 0: (1, -2); key 1: (3, 0.5)
        float[] qd = [2f], kd = [0.5f], vd = [1.5f];
        var (exact, lse) = Run(q, k, v, shape, options, qd, kd, vd, round: false);
        var (rounded, lseRounded) = Run(q, k, v, shape, options, qd, kd, vd, round: true);

        // Head 0: q = (2, 0); k0 = (0.5, 0.5), k1 = (0, 1): logits 1 and 0. v0 = (1.5, -3), v1 = (4.5, 0.75).
        double e = Math.Exp(-1);
        double[] v0 = [1.5, -3], v1 = [4.5, 0.75];
        // Rounded: 256 * 1 = 256 and 256 * e^-1 = 94.18, which e4m3 (spacing 8 in [64, 128)) rounds to 96; the
        // denominator keeps the unrounded 256 * (1 + e^-1).
        double[] expectedHead0 = [(v0[0] + e * v1[0]) / (1 + e), (v0[1] + e * v1[1]) / (1 + e)];
        double[] roundedHead0 = [(256 * v0[0] + 96 * v1[0]) / (256 * (1 + e)), (256 * v0[1] + 96 * v1[1]) / (256 * (1 + e))];
        // Head 1: q = (1, 1): logits 1 and 1, equal weights, which round exactly (256).
        double[] expectedHead1 = [(v0[0] + v1[0]) / 2, (v0[1] + v1[1]) / 2];

        ElementAsserts.Close(exact, [.. expectedHead0, .. expectedHead1], Tolerance, "output", "exact");
        ElementAsserts.Close(rounded, [.. roundedHead0, .. expectedHead1], Tolerance, "output", "rounded weights");
        ElementAsserts.Close(lse, [1 + Math.Log(1 + e), 1 + Math.Log(2)], Tolerance, "lse", "exact");
        ElementAsserts.BitwiseEqual(lseRounded, lse, "lse", "the rounded variant keeps the LSE of the true logits");
        ElementAsserts.BitwiseEqual(rounded.AsSpan(2), exact.AsSpan(2), "output", "weights that are exact in e4m3 change nothing");
    }

    /// <summary>
    /// A weight w becomes e4m3(256 * w) / 256 in P·V, to the nearest e4m3 value (spacing 8 in [64, 128), 16 in
    /// [128, 256)), not truncated. Logits 0 and -ln(256 / target) come from the scale ln(256 / target) on dots 1 and 0.
    /// </summary>
    [TestCase(99.0, 96.0)]
    [TestCase(101.0, 104.0)]
    [TestCase(126.0, 128.0)]
    [TestCase(135.0, 128.0)]
    [TestCase(139.0, 144.0)]
    public void RoundedWeightIsTheNearestE4M3Value(double target, double expectedRounded)
    {
        var shape = new AttentionShape(1, 1, 2, 1, 1, 16);
        float scale = (float)Math.Log(256 / target);
        var options = new AttentionOptions { SoftmaxScale = scale };
        var q = new Float8E4M3[16];
        var k = new Float8E4M3[32];
        var v = new Float8E4M3[32];
        q[0] = (Float8E4M3)1.0;
        k[0] = (Float8E4M3)1.0;            // key 0: dot 1; key 1: dot 0
        for (int x = 0; x < 16; x++)
        {
            v[x] = (Float8E4M3)(x % 3 - 1.0);
            v[16 + x] = (Float8E4M3)(x % 5 * 0.5);
        }

        var (rounded, _) = Run(q, k, v, shape, options, [], [], [], round: true);
        double w1 = Math.Exp(-(double)scale); // the logits are scale and 0
        Assert.That(256 * w1, Is.EqualTo(target).Within(1e-4), "the case must sit where intended");
        var expected = new double[16];
        for (int x = 0; x < 16; x++)
        {
            expected[x] = (256 * (double)v[x] + expectedRounded * (double)v[16 + x]) / (256 * (1 + w1));
        }

        ElementAsserts.Close(rounded, expected, Tolerance, "output", $"256 w = {256 * w1:G6} rounds to {expectedRounded}");
    }

    /// <summary>
    /// With a soft-cap the descales act inside the tanh (FA3): logit = cap * tanh(scale * qd * kd * q8·k8 / cap), so a
    /// capped score differs from descaling the capped raw score.
    /// </summary>
    [Test]
    public void SoftcapAppliesTheDescalesInsideTheTanh()
    {
        var shape = new AttentionShape(1, 1, 2, 1, 1, 16);
        var options = new AttentionOptions { SoftmaxScale = 0.5f, Softcap = 2f };
        var q = new Float8E4M3[16];
        var k = new Float8E4M3[32];
        var v = new Float8E4M3[32];
        q[0] = (Float8E4M3)3.0;
        k[0] = (Float8E4M3)2.0;   // dot 6
        k[16] = (Float8E4M3)(-1.0); // dot -3
        v[0] = (Float8E4M3)1.0;
        v[16] = (Float8E4M3)4.0;
        float[] qd = [1.5f], kd = [0.25f], vd = [0.5f];
        var (exact, lse) = Run(q, k, v, shape, options, qd, kd, vd, round: false);
        double l0 = 2 * Math.Tanh(0.5 * 1.5 * 0.25 * 6 / 2), l1 = 2 * Math.Tanh(0.5 * 1.5 * 0.25 * -3 / 2);
        double m = Math.Max(l0, l1), w0 = Math.Exp(l0 - m), w1 = Math.Exp(l1 - m);
        double[] expected = new double[16];
        expected[0] = (w0 * 0.5 + w1 * 2.0) / (w0 + w1);
        ElementAsserts.Close(exact, expected, Tolerance, "output", "softcap");
        ElementAsserts.Close(lse, [m + Math.Log(w0 + w1)], Tolerance, "lse", "softcap");
        double outsideTanh = 2 * Math.Tanh(0.5 * 6 / 2) * 1.5 * 0.25;
        Assert.That(Math.Abs(outsideTanh - l0), Is.GreaterThan(0.1), "the case tells the two orders apart");
    }

    public static IEnumerable<TestCaseData> RandomCases()
    {
        string[] descales = ["none", "all", "k-only", "q-and-v"];
        var masks = new (string Name, MaskSpec Spec)[]
        {
            ("full", new MaskSpec(false, false)),
            ("causal-bottom-right", new MaskSpec(true, false)),
            ("causal-top-left", new MaskSpec(true, true)),
            ("window", new MaskSpec(false, false, Left: 5, Right: 3)),
            ("softcap", new MaskSpec(false, false, Softcap: 3f)),
            ("causal-window-softcap", new MaskSpec(true, false, Left: 7, Softcap: 10f)),
        };
        int index = 0;
        foreach (var (name, spec) in masks)
        {
            foreach (bool round in new[] { false, true })
            {
                string which = descales[index++ % descales.Length];
                yield return new TestCaseData(spec, which, round).SetArgDisplayNames(name, $"descales-{which}", round ? "rounded-P" : "exact-P");
            }
        }
    }

    /// <summary>
    /// Random shapes (GQA ratios 1 to 4, Sq &lt;, = and &gt; Sk, head dims 1..40): the reference equals the naive float64
    /// formula on the tests' own dequantization (descale of batch b and KV head h / g for q, hk for k and v); with
    /// rounded weights it equals the naive formula with the tests' own e4m3 rounding of 256 * e^(x - max).
    /// </summary>
    [TestCaseSource(nameof(RandomCases))]
    public void MatchesNaiveFormulaOnDequantizedInputs(MaskSpec spec, string descales, bool round)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        for (int iteration = 0; iteration < 4; iteration++)
        {
            int hkv = random.Next(1, 4);
            var dims = new AttentionDims(random.Next(1, 4), random.Next(1, 30), random.Next(1, 30), hkv * random.Next(1, 5), hkv, random.Next(1, 41));
            string context = $"seed {seed}, iteration {iteration}, {dims}, {spec}, descales {descales}";
            var (q, k, v) = Float8Testing.RandomQkv(random, dims, spec.Softcap);
            int n = dims.Batch * dims.HeadsKv;
            float[] qd = descales is "all" or "q-and-v" ? Float8Testing.RandomDescales(random, n) : [];
            float[] kd = descales is "all" or "k-only" ? Float8Testing.RandomDescales(random, n) : [];
            float[] vd = descales is "all" or "q-and-v" ? Float8Testing.RandomDescales(random, n) : [];
            double scale = (random.NextDouble() * 0.5) + 0.05;
            AttentionOptions options = spec.ToOptions((float)scale);

            var (output, lse) = Run(q, k, v, new AttentionShape(dims.Batch, dims.SeqQ, dims.SeqK, dims.HeadsQ, dims.HeadsKv, dims.HeadDim),
                options, qd, kd, vd, round);
            int group = dims.HeadsQ / dims.HeadsKv;
            double[] qt = Float8Testing.Dequantize(q, qd, t => t / dims.SeqQ, dims.HeadsQ, group, dims.HeadDim, dims.HeadsKv);
            double[] kt = Float8Testing.Dequantize(k, kd, t => t / dims.SeqK, dims.HeadsKv, 1, dims.HeadDim, dims.HeadsKv);
            double[] vt = Float8Testing.Dequantize(v, vd, t => t / dims.SeqK, dims.HeadsKv, 1, dims.HeadDim, dims.HeadsKv);
            var (naiveOut, naiveLse) = NaiveFloat8(qt, kt, vt, dims, spec, (float)scale, round);
            ElementAsserts.Close(output, naiveOut, Tolerance, "output", context);
            ElementAsserts.Close(lse, naiveLse, Tolerance, "lse", context);
        }
    }

    /// <summary>
    /// A variable-length batch (empty and length-1 sequences among them, descales per sequence) equals fixed-length
    /// calls on each sequence alone with that sequence's row of each descale table; rounded weights included.
    /// </summary>
    [TestCase(false)]
    [TestCase(true)]
    public void VarlenEqualsPerSequenceCalls(bool round)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        int[] lensQ = [5, 0, 1, 17, 9, 0];
        int[] lensK = [7, 3, 0, 17, 1, 0];
        const int Hq = 4, Hkv = 2, D = 32;
        int totalQ = lensQ.Sum(), totalK = lensK.Sum(), sequences = lensQ.Length;
        var (q, k, v, qd, kd, vd) = Float8Testing.RandomVarlenInputs(random, totalQ, totalK, sequences, Hq, Hkv, D);
        var options = new AttentionOptions { Causal = true, WindowLeft = 6 };
        var output = new double[totalQ * Hq * D];
        var lse = new double[Hq * totalQ];
        output.AsSpan().Fill(double.NaN);
        lse.AsSpan().Fill(double.NaN);
        AttentionReference.ForwardFloat8Varlen(q, k, v, lensQ, lensK, Hq, Hkv, D, options, qd, kd, vd, output, lse, round);

        int startQ = 0, startK = 0;
        for (int b = 0; b < sequences; b++)
        {
            string context = $"seed {seed}, sequence {b} (Sq {lensQ[b]}, Sk {lensK[b]})";
            var shape = new AttentionShape(1, lensQ[b], lensK[b], Hq, Hkv, D);
            var (one, oneLse) = Run(
                q.AsSpan(startQ * Hq * D, lensQ[b] * Hq * D).ToArray(), k.AsSpan(startK * Hkv * D, lensK[b] * Hkv * D).ToArray(),
                v.AsSpan(startK * Hkv * D, lensK[b] * Hkv * D).ToArray(), shape, options,
                qd.AsSpan(b * Hkv, Hkv).ToArray(), kd.AsSpan(b * Hkv, Hkv).ToArray(), vd.AsSpan(b * Hkv, Hkv).ToArray(), round);
            ElementAsserts.BitwiseEqual(output.AsSpan(startQ * Hq * D, lensQ[b] * Hq * D), one, "output", context);
            for (int h = 0; h < Hq; h++)
            {
                ElementAsserts.BitwiseEqual(lse.AsSpan((h * totalQ) + startQ, lensQ[b]), oneLse.AsSpan(h * lensQ[b], lensQ[b]), "lse", context);
            }

            startQ += lensQ[b];
            startK += lensK[b];
        }
    }

    /// <summary>
    /// Rounding the weights moves each output by at most 2^-4 (e4m3's relative half-step) of the largest |v| of the row's
    /// keys, plus the subnormal floor; it does move some, and it never moves the LSE.
    /// </summary>
    [Test]
    public void RoundedWeightsStayWithinHalfAnE4M3Step()
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(2, 37, 301, 4, 2, 64);
        var shape = new AttentionShape(dims.Batch, dims.SeqQ, dims.SeqK, dims.HeadsQ, dims.HeadsKv, dims.HeadDim);
        var (q, k, v) = Float8Testing.RandomQkv(random, dims);
        float[] vd = Float8Testing.RandomDescales(random, dims.Batch * dims.HeadsKv);
        var options = new AttentionOptions { Causal = true };
        var (exact, lse) = Run(q, k, v, shape, options, [], [], vd, round: false);
        var (rounded, lseRounded) = Run(q, k, v, shape, options, [], [], vd, round: true);
        ElementAsserts.BitwiseEqual(lseRounded, lse, "lse", $"seed {seed}");
        double maxV = 0;
        for (int i = 0; i < v.Length; i++)
        {
            maxV = Math.Max(maxV, Math.Abs(v[i]) * 2); // descales < 2
        }

        // |P~ - P| <= 2^-4 P for normal values; below 2^-6 (subnormal) at most 2^-10 absolute, over at most Sk keys, /256.
        double bound = (maxV / 16) + (dims.SeqK * maxV * Math.Pow(2, -10) / 256);
        int moved = 0;
        for (int i = 0; i < exact.Length; i++)
        {
            double d = Math.Abs(rounded[i] - exact[i]);
            Assert.That(d, Is.LessThanOrEqualTo(bound), $"seed {seed}: element {i} moved by {d:E3}");
            moved += d > 0 ? 1 : 0;
        }

        Assert.That(moved, Is.GreaterThan(exact.Length / 2), $"seed {seed}: rounding must move most outputs");
    }

    [Test]
    public void DescaleTablesOfTheWrongSizeAreRefused()
    {
        var shape = new AttentionShape(2, 3, 4, 4, 2, 16);
        var q = new Float8E4M3[shape.QElementCount];
        var kv = new Float8E4M3[shape.KvElementCount];
        var output = new double[shape.QElementCount];
        var ex = Assert.Throws<ArgumentException>(() => AttentionReference.ForwardFloat8(
            q, kv, kv, shape, AttentionOptions.Default, [], new float[3], [], output, default));
        Assert.That(ex!.ParamName, Is.EqualTo("kDescale"));
        Assert.That(ex.Message, Does.Contain("[2, 2]"));
        ex = Assert.Throws<ArgumentException>(() => AttentionReference.ForwardFloat8Varlen(
            q, kv, kv, [3, 3], [4, 4], 4, 2, 16, AttentionOptions.Default, [], [], new float[8], output, default));
        Assert.That(ex!.ParamName, Is.EqualTo("vDescale"));
    }

    /// <summary>
    /// The tests' own float64 attention on true values (through <see cref="NaiveAttention.Forward64(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionDims, bool, bool, int?, int?, double, double)"/>
    /// for the exact case), and with <paramref name="round"/> its own e4m3 rounding of <c>256 e^(x - max)</c>.
    /// </summary>
    private static (double[] Out, double[] Lse) NaiveFloat8(double[] q, double[] k, double[] v, AttentionDims d, MaskSpec spec, float scale, bool round)
    {
        var (output, lse) = NaiveAttention.Forward64(q, k, v, d, spec.Causal, spec.TopLeft, spec.Left, spec.Right, spec.Softcap, scale);
        if (!round)
        {
            return (output, lse);
        }

        var rounded = new double[output.Length];
        int group = d.HeadsQ / d.HeadsKv;
        for (int b = 0; b < d.Batch; b++)
        {
            for (int h = 0; h < d.HeadsQ; h++)
            {
                int hk = h / group;
                for (int i = 0; i < d.SeqQ; i++)
                {
                    long qBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * d.HeadDim;
                    var logits = new List<(int J, double X)>();
                    for (int j = 0; j < d.SeqK; j++)
                    {
                        if (!spec.Visible(i, j, d.SeqQ, d.SeqK))
                        {
                            continue;
                        }

                        long kBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * d.HeadDim;
                        double dot = 0;
                        for (int x = 0; x < d.HeadDim; x++)
                        {
                            dot += q[qBase + x] * k[kBase + x];
                        }

                        double s = scale * dot;
                        logits.Add((j, spec.Softcap > 0 ? spec.Softcap * Math.Tanh(s / spec.Softcap) : s));
                    }

                    if (logits.Count == 0)
                    {
                        continue;
                    }

                    double max = logits.Max(l => l.X), sum = logits.Sum(l => Math.Exp(l.X - max));
                    foreach (var (j, x) in logits)
                    {
                        double p = (double)(Float8E4M3)(256 * Math.Exp(x - max)) / (256 * sum);
                        long vBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * d.HeadDim;
                        for (int c = 0; c < d.HeadDim; c++)
                        {
                            rounded[qBase + c] += p * v[vBase + c];
                        }
                    }
                }
            }
        }

        return (rounded, lse);
    }
}
