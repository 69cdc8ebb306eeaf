using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The float64 reference's backward pass against central finite differences of the reference forward pass: for a
/// random G fixed per case, the loss <c>L = Σ O·G</c> has <c>∂L/∂O = G</c>, so Backward(q, k, v, dO = G) must give
/// the numerical derivative of L with respect to every element of q, k and v.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ReferenceBackwardTests
{
    // Step: h = 1e-5 * max(1, |x|). Central differences in float64 err by about h²/6·|L'''| (~1e-11 for the O(1)
    // derivatives of these O(1) inputs) plus rounding ε·|L|/h (|L| stays below ~50 here, so ~1e-9): the expected
    // discrepancy is ~1e-9 (the worst seen over these cases is 2e-9), and 1e-7 relative (plus 1e-7 absolute for
    // near-zero gradients) keeps a margin of ~50 while any real mistake (a missing softcap factor, a scale off, a wrong
    // head or row) moves gradients by 1e-3 or more.
    private const double RelativeStep = 1e-5;
    private const double Tolerance = 1e-7;

    private static readonly (int Hq, int Hkv)[] HeadConfigs = [(1, 1), (4, 2), (3, 1)];

    private static double[] Normal(Random random, int n) => TestRandom.Normal(random, n).Select(x => (double)x).ToArray();

    private static double[] Poisoned(int n)
    {
        var result = new double[n];
        result.AsSpan().Fill(double.NaN); // every element must be written
        return result;
    }

    private static AttentionOptions Options(bool causal, bool topLeft, int? left, int? right, float softcap, float? scale) => new()
    {
        Causal = causal,
        CausalAlignment = topLeft ? CausalAlignment.TopLeft : CausalAlignment.BottomRight,
        WindowLeft = left,
        WindowRight = right,
        Softcap = softcap > 0 ? softcap : null,
        SoftmaxScale = scale,
    };

    /// <summary>
    /// Checks every element of <paramref name="grads"/> (dQ, dK, dV) against central differences of
    /// <c>L = Σ forward(q, k, v)·g</c>, perturbing <paramref name="inputs"/> (q, k, v) in place and restoring them.
    /// </summary>
    private static void AssertMatchesFiniteDifferences(
        double[][] inputs, double[][] grads, double[] g, Action<double[]> forward, string context)
    {
        var output = new double[g.Length];
        double Loss()
        {
            forward(output);
            double sum = 0;
            for (int i = 0; i < output.Length; i++)
            {
                sum += output[i] * g[i];
            }

            return sum;
        }

        string[] names = ["dQ", "dK", "dV"];
        for (int t = 0; t < 3; t++)
        {
            double[] x = inputs[t], grad = grads[t];
            Assert.That(grad, Has.Length.EqualTo(x.Length), names[t]);
            for (int i = 0; i < x.Length; i++)
            {
                double x0 = x[i];
                double h = RelativeStep * Math.Max(1, Math.Abs(x0));
                double up = x0 + h, down = x0 - h;
                x[i] = up;
                double lossUp = Loss();
                x[i] = down;
                double lossDown = Loss();
                x[i] = x0;
                double numeric = (lossUp - lossDown) / (up - down);
                double analytic = grad[i];
                if (!(Math.Abs(analytic - numeric) <= Tolerance * (1 + Math.Abs(numeric))))
                {
                    Assert.Fail($"{names[t]}[{i}] = {analytic:R}, central difference gives {numeric:R} ({context})");
                }
            }
        }
    }

    public static IEnumerable<TestCaseData> FixedLengthCases()
    {
        // (lengths, causal, topLeft, windowLeft, windowRight, softcap, scale)
        yield return new TestCaseData("any", false, false, null, null, 0f, null).SetArgDisplayNames("no mask");
        yield return new TestCaseData("Sq<Sk", true, false, null, null, 0f, null).SetArgDisplayNames("causal bottom-right Sq<Sk");
        yield return new TestCaseData("Sq>Sk", true, false, null, null, 0f, null).SetArgDisplayNames("causal bottom-right Sq>Sk (rows see no key)");
        yield return new TestCaseData("Sq<Sk", true, true, null, null, 0f, null).SetArgDisplayNames("causal top-left Sq<Sk");
        yield return new TestCaseData("Sq>Sk", true, true, null, null, 0f, null).SetArgDisplayNames("causal top-left Sq>Sk");
        yield return new TestCaseData("any", false, false, 2, 1, 0f, null).SetArgDisplayNames("window 2/1 bottom-right");
        yield return new TestCaseData("Sq>Sk", false, false, 0, 0, 0f, null).SetArgDisplayNames("window 0/0 bottom-right Sq>Sk (rows see no key)");
        yield return new TestCaseData("any", false, true, null, 1, 0f, null).SetArgDisplayNames("right window 1 top-left");
        yield return new TestCaseData("Sq<Sk", true, false, 2, null, 0f, null).SetArgDisplayNames("causal window 2 bottom-right");
        yield return new TestCaseData("Sq>Sk", true, true, 1, 3, 0f, null).SetArgDisplayNames("causal window 1 top-left (caps right 3)");
        yield return new TestCaseData("any", false, false, null, null, 5f, null).SetArgDisplayNames("softcap 5");
        yield return new TestCaseData("Sq<Sk", true, true, null, null, 0.5f, null).SetArgDisplayNames("softcap 0.5 causal top-left");
        yield return new TestCaseData("any", false, false, null, null, 0f, 0.9f).SetArgDisplayNames("scale 0.9");
        yield return new TestCaseData("Sq>Sk", true, false, 4, null, 2f, -0.6f).SetArgDisplayNames("scale -0.6 softcap 2 causal window 4 Sq>Sk");
    }

    [TestCaseSource(nameof(FixedLengthCases))]
    public void FixedLengthMatchesFiniteDifferences(
        string lengths, bool causal, bool topLeft, int? left, int? right, float softcap, float? scale)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        var options = Options(causal, topLeft, left, right, softcap, scale);
        foreach (var (hq, hkv) in HeadConfigs)
        {
            int sq = random.Next(1, 10), sk = random.Next(1, 10);
            switch (lengths)
            {
                case "Sq<Sk": sq = random.Next(1, 9); sk = random.Next(sq + 1, 10); break;
                case "Sq>Sk": sk = random.Next(1, 9); sq = random.Next(sk + 1, 10); break;
            }

            var shape = new AttentionShape(random.Next(1, 3), sq, sk, hq, hkv, random.Next(2) == 0 ? 8 : 16);
            string context = $"seed {seed}, B {shape.Batch}, Sq {sq}, Sk {sk}, Hq {hq}, Hkv {hkv}, D {shape.HeadDim}";
            var q = Normal(random, (int)shape.QElementCount);
            var k = Normal(random, (int)shape.KvElementCount);
            var v = Normal(random, (int)shape.KvElementCount);
            var g = Normal(random, (int)shape.QElementCount);
            var dq = Poisoned((int)shape.QElementCount);
            var dk = Poisoned((int)shape.KvElementCount);
            var dv = Poisoned((int)shape.KvElementCount);
            AttentionReference.Backward(q, k, v, g, shape, options, dq, dk, dv);

            // A row that sees no key contributes nothing: its dQ is exactly 0.
            for (int b = 0; b < shape.Batch; b++)
            {
                for (int i = 0; i < sq; i++)
                {
                    var (first, end) = AttentionReference.VisibleKeys(options, i, sq, sk);
                    if (end <= first)
                    {
                        int start = ((b * sq) + i) * hq * shape.HeadDim;
                        Assert.That(dq.AsSpan(start, hq * shape.HeadDim).ToArray(), Is.All.EqualTo(0.0), $"dQ of row {i}, batch {b} ({context})");
                    }
                }
            }

            AssertMatchesFiniteDifferences(
                [q, k, v], [dq, dk, dv], g, output => AttentionReference.Forward(q, k, v, shape, options, output, default), context);
        }
    }

    public static IEnumerable<TestCaseData> VarlenCases()
    {
        // (causal, topLeft, windowLeft, windowRight, softcap, scale)
        yield return new TestCaseData(false, false, null, null, 0f, null).SetArgDisplayNames("no mask");
        yield return new TestCaseData(true, false, null, null, 0f, null).SetArgDisplayNames("causal bottom-right");
        yield return new TestCaseData(true, true, null, null, 0f, null).SetArgDisplayNames("causal top-left");
        yield return new TestCaseData(false, false, 1, 2, 0f, null).SetArgDisplayNames("window 1/2 bottom-right");
        yield return new TestCaseData(true, true, 3, null, 3f, 0.7f).SetArgDisplayNames("causal window 3 top-left softcap 3 scale 0.7");
    }

    [TestCaseSource(nameof(VarlenCases))]
    public void VarlenMatchesFiniteDifferences(bool causal, bool topLeft, int? left, int? right, float softcap, float? scale)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        var options = Options(causal, topLeft, left, right, softcap, scale);
        foreach (var (hq, hkv) in HeadConfigs)
        {
            // An empty query sequence (its keys get no gradient), a length-1 one, one with no keys (its rows see
            // nothing) and a random one, in a random order.
            var sequences = new List<(int Q, int K)>
            {
                (0, random.Next(1, 6)),
                (1, random.Next(1, 6)),
                (random.Next(1, 5), 0),
                (random.Next(1, 8), random.Next(1, 8)),
            };
            sequences = sequences.OrderBy(_ => random.Next()).ToList();
            int[] lensQ = sequences.Select(s => s.Q).ToArray(), lensK = sequences.Select(s => s.K).ToArray();
            int d = random.Next(2) == 0 ? 8 : 16;
            int totalQ = lensQ.Sum(), totalK = lensK.Sum();
            string context = $"seed {seed}, Hq {hq}, Hkv {hkv}, D {d}, Q lengths [{string.Join(", ", lensQ)}], K lengths [{string.Join(", ", lensK)}]";
            var q = Normal(random, totalQ * hq * d);
            var k = Normal(random, totalK * hkv * d);
            var v = Normal(random, totalK * hkv * d);
            var g = Normal(random, totalQ * hq * d);
            var dq = Poisoned(q.Length);
            var dk = Poisoned(k.Length);
            var dv = Poisoned(v.Length);
            AttentionReference.BackwardVarlen(q, k, v, g, lensQ, lensK, hq, hkv, d, options, dq, dk, dv);
            AssertMatchesFiniteDifferences(
                [q, k, v], [dq, dk, dv], g,
                output => AttentionReference.ForwardVarlen(q, k, v, lensQ, lensK, hq, hkv, d, options, output, default),
                context);
        }
    }

    [Test]
    public void ParallelRunIsDeterministicAndMatchesPerHeadRuns()
    {
        // Large enough to run in parallel (over 2^20 multiply-adds); each (batch, kv head) slice alone is small enough
        // to run on one thread. The parallel run must equal the slices bit for bit, and a repeat must too.
        var random = TestRandom.ForCurrentTest(out int seed);
        var shape = new AttentionShape(2, 80, 72, 4, 2, 32);
        var options = new AttentionOptions { Causal = true, WindowLeft = 50, Softcap = 4f };
        var q = Normal(random, (int)shape.QElementCount);
        var k = Normal(random, (int)shape.KvElementCount);
        var v = Normal(random, (int)shape.KvElementCount);
        var g = Normal(random, (int)shape.QElementCount);
        var dq = Poisoned(q.Length);
        var dk = Poisoned(k.Length);
        var dv = Poisoned(k.Length);
        AttentionReference.Backward(q, k, v, g, shape, options, dq, dk, dv);
        var dq2 = Poisoned(q.Length);
        var dk2 = Poisoned(k.Length);
        var dv2 = Poisoned(k.Length);
        AttentionReference.Backward(q, k, v, g, shape, options, dq2, dk2, dv2);
        Assert.Multiple(() =>
        {
            Assert.That(dq2, Is.EqualTo(dq), $"dQ of a repeat (seed {seed})");
            Assert.That(dk2, Is.EqualTo(dk), $"dK of a repeat (seed {seed})");
            Assert.That(dv2, Is.EqualTo(dv), $"dV of a repeat (seed {seed})");
        });

        int group = shape.GroupSize, d = shape.HeadDim;
        var slice = new AttentionShape(1, shape.SeqLenQ, shape.SeqLenK, group, 1, d);
        for (int b = 0; b < shape.Batch; b++)
        {
            for (int kvHead = 0; kvHead < shape.HeadsKv; kvHead++)
            {
                var sq = new double[slice.QElementCount];
                var sg = new double[slice.QElementCount];
                var sk = new double[slice.KvElementCount];
                var sv = new double[slice.KvElementCount];
                for (int i = 0; i < shape.SeqLenQ; i++)
                {
                    int from = (((b * shape.SeqLenQ) + i) * shape.HeadsQ + (kvHead * group)) * d;
                    q.AsSpan(from, group * d).CopyTo(sq.AsSpan(i * group * d));
                    g.AsSpan(from, group * d).CopyTo(sg.AsSpan(i * group * d));
                }

                for (int j = 0; j < shape.SeqLenK; j++)
                {
                    int from = (((b * shape.SeqLenK) + j) * shape.HeadsKv + kvHead) * d;
                    k.AsSpan(from, d).CopyTo(sk.AsSpan(j * d));
                    v.AsSpan(from, d).CopyTo(sv.AsSpan(j * d));
                }

                var sdq = Poisoned(sq.Length);
                var sdk = Poisoned(sk.Length);
                var sdv = Poisoned(sv.Length);
                AttentionReference.Backward(sq, sk, sv, sg, slice, options, sdq, sdk, sdv);
                for (int i = 0; i < shape.SeqLenQ; i++)
                {
                    int from = (((b * shape.SeqLenQ) + i) * shape.HeadsQ + (kvHead * group)) * d;
                    Assert.That(dq.AsSpan(from, group * d).ToArray(), Is.EqualTo(sdq.AsSpan(i * group * d, group * d).ToArray()),
                        $"dQ row {i}, batch {b}, kv head {kvHead} (seed {seed})");
                }

                for (int j = 0; j < shape.SeqLenK; j++)
                {
                    int from = (((b * shape.SeqLenK) + j) * shape.HeadsKv + kvHead) * d;
                    Assert.That(dk.AsSpan(from, d).ToArray(), Is.EqualTo(sdk.AsSpan(j * d, d).ToArray()), $"dK key {j}, batch {b}, kv head {kvHead} (seed {seed})");
                    Assert.That(dv.AsSpan(from, d).ToArray(), Is.EqualTo(sdv.AsSpan(j * d, d).ToArray()), $"dV key {j}, batch {b}, kv head {kvHead} (seed {seed})");
                }
            }
        }
    }

    [Test]
    public void RejectsBadArguments()
    {
        var shape = new AttentionShape(1, 3, 4, 2, 1, 8);
        var q = new double[shape.QElementCount];
        var kv = new double[shape.KvElementCount];
        var dq = new double[shape.QElementCount];
        var dk = new double[shape.KvElementCount];
        var dv = new double[shape.KvElementCount];
        var badGrad = new double[shape.QElementCount - 1];
        var e = Assert.Throws<ArgumentException>(
            () => AttentionReference.Backward(q, kv, kv, badGrad, shape, AttentionOptions.Default, dq, dk, dv));
        Assert.That(e.ParamName, Is.EqualTo("outputGrad"));
        e = Assert.Throws<ArgumentException>(
            () => AttentionReference.Backward(q, kv, kv, q, shape, AttentionOptions.Default, dq, dk, new double[1]));
        Assert.That(e.ParamName, Is.EqualTo("valueGrad"));
        e = Assert.Throws<ArgumentException>(
            () => AttentionReference.BackwardVarlen(q, kv, kv, q, [3], [4, 0], 2, 1, 8, AttentionOptions.Default, dq, dk, dv));
        Assert.That(e.ParamName, Is.EqualTo("seqLensK"));
        Assert.Throws<ArgumentNullException>(
            () => AttentionReference.Backward(q, kv, kv, q, shape, null!, dq, dk, dv));
    }
}
