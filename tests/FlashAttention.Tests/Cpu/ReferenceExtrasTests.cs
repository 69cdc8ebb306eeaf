using FlashAttn.Internal;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The float64 reference's issue-14 options (<see cref="ReferenceExtras"/>: ALiBi, attention sinks, a V head dim
/// different from the QK head dim, dropout) against the tests' own naive formula of ../shared/FEATURES.md (§2 ALiBi
/// with FA2's causal form, §7 sinks as an extra softmax column dropped after the softmax, §8 dv columns, §1 dropout
/// from the Philox keep bytes), every output and LSE element; the backward pass against central finite differences
/// of the forward pass (q, k, v and the sinks), as ReferenceBackwardTests does for the plain options.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ReferenceExtrasTests
{
    // The forward tolerance of ReferenceExtensionsTests; the finite-difference step and tolerance of
    // ReferenceBackwardTests (the same error analysis holds: ALiBi biases, sinks and the dropout scale keep the
    // logits and the loss O(1)).
    private const double ForwardTolerance = 1e-11;
    private const double RelativeStep = 1e-5;
    private const double GradientTolerance = 1e-7;

    private const ulong Seed = 0x0123456789abcdefUL;
    private const ulong Offset = 0xffffffffUL - 40; // lane offsets cross the 32-bit carry

    private static readonly (int Hq, int Hkv)[] HeadConfigs = [(1, 1), (4, 2), (3, 1)];

    private static double[] Normal(Random random, int n) => TestRandom.Normal(random, n).Select(x => (double)x).ToArray();

    private static double[] Poisoned(int n)
    {
        var result = new double[n];
        result.AsSpan().Fill(double.NaN); // every element must be written
        return result;
    }

    /// <summary>An option mix, as the test cases spell it.</summary>
    public sealed record Mix(
        bool Causal = false,
        bool TopLeft = false,
        int? Left = null,
        int? Right = null,
        float Softcap = 0f,
        string Alibi = "none",
        bool Sinks = false,
        string Dv = "same",
        float DropoutP = 0f)
    {
        public AttentionOptions Options(float? scale = null) => new()
        {
            Causal = Causal,
            CausalAlignment = TopLeft ? CausalAlignment.TopLeft : CausalAlignment.BottomRight,
            WindowLeft = Left,
            WindowRight = Right,
            Softcap = Softcap > 0 ? Softcap : null,
            SoftmaxScale = scale,
        };

        public int ValueDim(Random random, int d) => Dv switch
        {
            "smaller" => random.Next(1, d),
            "larger" => d + random.Next(1, 20),
            _ => d,
        };

        /// <summary>Random extras of this mix for <paramref name="batch"/> batches (or sequences).</summary>
        internal ReferenceExtras Extras(Random random, int batch, int hq, int d, int dv) => new()
        {
            // FA2's tests draw slopes as rand * 0.3; sinks as randn (FEATURES.md §2, §7).
            AlibiSlopes = Alibi switch
            {
                "head" => TestRandom.Uniform(random, hq, 0, 0.3),
                "batch" => TestRandom.Uniform(random, batch * hq, 0, 0.3),
                _ => null,
            },
            Sinks = Sinks ? Normal(random, hq) : null,
            ValueHeadDim = dv == d && random.Next(2) == 0 ? null : dv,
            DropoutP = DropoutP,
            DropoutSeed = Seed,
            DropoutOffset = Offset,
        };
    }

    private static void AssertClose(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, string what, string context) =>
        ElementAsserts.Close(actual, expected, ForwardTolerance, what, context);

    private static ProblemDims RandomDims(Random random, string lengths, int hq, int hkv, int maxLen, Func<int, int> dvOf)
    {
        int sq = random.Next(1, maxLen), sk = random.Next(1, maxLen);
        switch (lengths)
        {
            case "Sq<Sk": sq = random.Next(1, maxLen - 1); sk = random.Next(sq + 1, maxLen); break;
            case "Sq>Sk": sk = random.Next(1, maxLen - 1); sq = random.Next(sk + 1, maxLen); break;
        }

        int d = random.Next(2) == 0 ? 8 : 16;
        return new ProblemDims(random.Next(1, 3), sq, sk, hq, hkv, d, dvOf(d));
    }

    public static IEnumerable<TestCaseData> Mixes()
    {
        TestCaseData Case(string lengths, Mix mix, string name) => new TestCaseData(lengths, mix).SetArgDisplayNames(name);

        yield return Case("any", new Mix(Alibi: "head"), "alibi per head, no mask");
        yield return Case("any", new Mix(Alibi: "batch"), "alibi per batch, no mask");
        yield return Case("Sq<Sk", new Mix(Causal: true, Alibi: "head"), "alibi causal bottom-right (FA2 column form)");
        yield return Case("Sq>Sk", new Mix(Causal: true, Alibi: "batch"), "alibi causal bottom-right Sq>Sk (rows see no key)");
        yield return Case("any", new Mix(Causal: true, TopLeft: true, Alibi: "head"), "alibi causal top-left");
        yield return Case("any", new Mix(Causal: true, Left: 3, Alibi: "head"), "alibi causal window 3 (distance form)");
        yield return Case("any", new Mix(Causal: true, Left: 40, Alibi: "head"), "alibi causal window >= Sk (FA2 column form)");
        yield return Case("any", new Mix(Right: 0, Alibi: "batch"), "alibi right window 0 (FA2 column form)");
        yield return Case("any", new Mix(Left: 2, Right: 1, TopLeft: true, Alibi: "head"), "alibi window 2/1 top-left");
        yield return Case("any", new Mix(Softcap: 2f, Alibi: "head"), "alibi after softcap 2");
        yield return Case("any", new Mix(Sinks: true), "sinks, no mask");
        yield return Case("Sq>Sk", new Mix(Causal: true, Sinks: true), "sinks causal Sq>Sk (empty rows: LSE = sink)");
        yield return Case("any", new Mix(Left: 1, Right: 2, Sinks: true, Softcap: 3f), "sinks window 1/2 softcap 3");
        yield return Case("any", new Mix(Dv: "smaller"), "dv < d");
        yield return Case("Sq<Sk", new Mix(Causal: true, Dv: "larger"), "dv > d causal");
        yield return Case("any", new Mix(DropoutP: 0.17f), "dropout 0.17");
        yield return Case("any", new Mix(Causal: true, TopLeft: true, DropoutP: 0.6f), "dropout 0.6 causal top-left");
        yield return Case("Sq<Sk", new Mix(Causal: true, Left: 4, Alibi: "batch", Sinks: true, Dv: "larger", DropoutP: 0.3f), "all: alibi sinks dv dropout causal window 4");
        yield return Case("any", new Mix(Left: 5, Right: 0, Alibi: "head", Sinks: true, Dv: "smaller", Softcap: 4f), "alibi sinks dv softcap window 5/0");
    }

    [TestCaseSource(nameof(Mixes))]
    public void ForwardMatchesNaiveFormula(string lengths, Mix mix)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        foreach (var (hq, hkv) in HeadConfigs)
        {
            for (int iteration = 0; iteration < 3; iteration++)
            {
                var dims = RandomDims(random, lengths, hq, hkv, 40, d => mix.ValueDim(random, d));
                var options = mix.Options(random.Next(2) == 0 ? null : 0.7f);
                var extras = mix.Extras(random, dims.Batch, hq, dims.D, dims.Dv);
                var q = Normal(random, dims.QElements);
                var k = Normal(random, dims.KElements);
                var v = Normal(random, dims.VElements);
                var output = Poisoned(dims.OElements);
                var lse = Poisoned(dims.LseElements);
                AttentionReference.ForwardWithExtras(q, k, v, dims.Shape, options, extras, output, lse);
                var (naiveOut, naiveLse) = ExtrasNaive.Forward(q, k, v, dims, options, extras, dims.Sk);
                string context = $"seed {seed}, iteration {iteration}, {dims}";
                AssertClose(output, naiveOut, "output", context);
                AssertClose(lse, naiveLse, "lse", context);
            }
        }
    }

    [TestCaseSource(nameof(Mixes))]
    public void VarlenForwardMatchesNaiveFormulaPerSequence(string lengths, Mix mix)
    {
        _ = lengths; // sequences of every kind below
        var random = TestRandom.ForCurrentTest(out int seed);
        foreach (var (hq, hkv) in HeadConfigs)
        {
            var sequences = new List<(int Q, int K)>
            {
                (0, random.Next(1, 9)),
                (random.Next(1, 6), 0),
                (random.Next(1, 30), random.Next(1, 30)),
                (random.Next(1, 30), random.Next(1, 30)),
            }.OrderBy(_ => random.Next()).ToList();
            int[] lensQ = sequences.Select(s => s.Q).ToArray(), lensK = sequences.Select(s => s.K).ToArray();
            int d = random.Next(2) == 0 ? 8 : 16, dv = mix.ValueDim(random, d);
            var options = mix.Options(0.8f);
            var extras = mix.Extras(random, lensQ.Length, hq, d, dv);
            int totalQ = lensQ.Sum(), totalK = lensK.Sum();
            var q = Normal(random, totalQ * hq * d);
            var k = Normal(random, totalK * hkv * d);
            var v = Normal(random, totalK * hkv * dv);
            var output = Poisoned(totalQ * hq * dv);
            var lse = Poisoned(totalQ * hq);
            AttentionReference.ForwardVarlenWithExtras(q, k, v, lensQ, lensK, hq, hkv, d, options, extras, output, lse);

            // Each sequence alone, as batch 0 of a dense naive call whose slopes and dropout stream use its index.
            int maxSk = lensK.Max();
            for (int b = 0, q0 = 0, k0 = 0; b < lensQ.Length; q0 += lensQ[b], k0 += lensK[b], b++)
            {
                var dims = new ProblemDims(1, lensQ[b], lensK[b], hq, hkv, d, dv);
                var (naiveOut, naiveLse) = ExtrasNaive.Forward(
                    q.AsSpan(q0 * hq * d, dims.QElements).ToArray(), k.AsSpan(k0 * hkv * d, dims.KElements).ToArray(),
                    v.AsSpan(k0 * hkv * dv, dims.VElements).ToArray(), dims, options, extras, maxSk, batchBase: b);
                string context = $"seed {seed}, sequence {b} of Q lengths [{string.Join(", ", lensQ)}], K lengths [{string.Join(", ", lensK)}], {dims}";
                AssertClose(output.AsSpan(q0 * hq * dv, dims.OElements), naiveOut, "output", context);
                var rowLse = new double[dims.LseElements];
                for (int h = 0; h < hq; h++)
                {
                    lse.AsSpan((h * totalQ) + q0, lensQ[b]).CopyTo(rowLse.AsSpan(h * lensQ[b]));
                }

                AssertClose(rowLse, naiveLse, "lse", context);
            }
        }
    }

    [TestCase(false)]
    [TestCase(true)]
    public void AlibiCausalFormShiftsOnlyTheLse(bool topLeft)
    {
        // FEATURES.md §2: FA2's causal +m*j differs from -m*|i + off - j| by m*(i + off) on the visible keys, so O is
        // the same and LSE_FA2 = LSE_distance + m*(i + off).
        var random = TestRandom.ForCurrentTest(out int seed);
        var dims = new ProblemDims(2, 13, 21, 4, 2, 16, 16);
        var options = new Mix(Causal: true, TopLeft: topLeft).Options();
        var slopes = TestRandom.Uniform(random, 2 * 4, 0, 0.3);
        var extras = new ReferenceExtras { AlibiSlopes = slopes };
        var q = Normal(random, dims.QElements);
        var k = Normal(random, dims.KElements);
        var v = Normal(random, dims.VElements);
        var output = Poisoned(dims.OElements);
        var lse = Poisoned(dims.LseElements);
        AttentionReference.ForwardWithExtras(q, k, v, dims.Shape, options, extras, output, lse);
        var (distanceOut, distanceLse) = ExtrasNaive.Forward(q, k, v, dims, options, extras, dims.Sk, distanceForm: true);
        AssertClose(output, distanceOut, "output", $"seed {seed}");
        int off = topLeft ? 0 : dims.Sk - dims.Sq;
        for (int b = 0; b < dims.Batch; b++)
        {
            for (int h = 0; h < dims.Hq; h++)
            {
                for (int i = 0; i < dims.Sq; i++)
                {
                    int at = (((b * dims.Hq) + h) * dims.Sq) + i;
                    double expected = distanceLse[at] + (slopes[(b * dims.Hq) + h] * (i + off));
                    Assert.That(lse[at], Is.EqualTo(expected).Within(ForwardTolerance * (1 + Math.Abs(expected))), $"lse[{at}] (seed {seed})");
                }
            }
        }
    }

    [Test]
    public void SinkIsTheLseOfRowsThatSeeNoKey()
    {
        // Causal bottom-right with Sq > Sk: rows i < Sq - Sk see nothing; FA4 gives O = 0 and LSE = the sink.
        var random = TestRandom.ForCurrentTest(out int seed);
        var dims = new ProblemDims(1, 7, 3, 2, 1, 8, 8);
        var sinks = Normal(random, 2);
        var extras = new ReferenceExtras { Sinks = sinks };
        var output = Poisoned(dims.OElements);
        var lse = Poisoned(dims.LseElements);
        AttentionReference.ForwardWithExtras(
            Normal(random, dims.QElements), Normal(random, dims.KElements), Normal(random, dims.VElements), dims.Shape,
            new AttentionOptions { Causal = true }, extras, output, lse);
        for (int h = 0; h < 2; h++)
        {
            for (int i = 0; i < 4; i++)
            {
                Assert.That(lse[(h * 7) + i], Is.EqualTo(sinks[h]), $"lse of head {h}, row {i} (seed {seed})");
                Assert.That(output.AsSpan(((i * 2) + h) * 8, 8).ToArray(), Is.All.EqualTo(0.0), $"output of head {h}, row {i}");
            }

            Assert.That(lse[(h * 7) + 4], Is.GreaterThan(sinks[h]), "a row that sees a key adds to the denominator");
        }
    }

    [Test]
    public void DropoutZeroIsNoDropoutBitForBit()
    {
        var random = TestRandom.ForCurrentTest(out _);
        var dims = new ProblemDims(2, 9, 11, 4, 2, 16, 16);
        var options = new AttentionOptions { Causal = true, WindowLeft = 5 };
        var q = Normal(random, dims.QElements);
        var k = Normal(random, dims.KElements);
        var v = Normal(random, dims.VElements);
        var g = Normal(random, dims.OElements);
        var zero = new ReferenceExtras { DropoutP = 0f, DropoutSeed = Seed, DropoutOffset = Offset };
        var (o1, l1) = (new double[dims.OElements], new double[dims.LseElements]);
        var (o2, l2) = (new double[dims.OElements], new double[dims.LseElements]);
        AttentionReference.Forward(q, k, v, dims.Shape, options, o1, l1);
        AttentionReference.ForwardWithExtras(q, k, v, dims.Shape, options, zero, o2, l2);
        Assert.That(o2, Is.EqualTo(o1));
        Assert.That(l2, Is.EqualTo(l1));

        var (dq1, dk1, dv1) = (new double[dims.QElements], new double[dims.KElements], new double[dims.VElements]);
        var (dq2, dk2, dv2) = (new double[dims.QElements], new double[dims.KElements], new double[dims.VElements]);
        AttentionReference.Backward(q, k, v, g, dims.Shape, options, dq1, dk1, dv1);
        AttentionReference.BackwardWithExtras(q, k, v, g, dims.Shape, options, zero, dq2, dk2, dv2, default);
        Assert.That(dq2, Is.EqualTo(dq1));
        Assert.That(dk2, Is.EqualTo(dk1));
        Assert.That(dv2, Is.EqualTo(dv1));
    }

    /// <summary>
    /// v = one-hot rows (dv = Sk, key j's row is e_j) makes output column j equal <c>Z_ij P_ij / (1 - p)</c>: the
    /// mask reads straight off the output. Returns the output with dropout and without, and the LSEs.
    /// </summary>
    private static (double[] Dropped, double[] Plain, double[] DroppedLse, double[] PlainLse) OneHotRun(
        Random random, ProblemDims dims, AttentionOptions options, float p)
    {
        var q = Normal(random, dims.QElements);
        var k = Normal(random, dims.KElements);
        var v = new double[dims.VElements];
        for (int b = 0; b < dims.Batch; b++)
        {
            for (int j = 0; j < dims.Sk; j++)
            {
                for (int hk = 0; hk < dims.Hkv; hk++)
                {
                    v[((((b * dims.Sk) + j) * dims.Hkv) + hk) * dims.Dv + j] = 1;
                }
            }
        }

        var dropped = Poisoned(dims.OElements);
        var plain = Poisoned(dims.OElements);
        var droppedLse = Poisoned(dims.LseElements);
        var plainLse = Poisoned(dims.LseElements);
        var dropout = new ReferenceExtras { ValueHeadDim = dims.Dv, DropoutP = p, DropoutSeed = Seed, DropoutOffset = Offset };
        AttentionReference.ForwardWithExtras(q, k, v, dims.Shape, options, dropout, dropped, droppedLse);
        AttentionReference.ForwardWithExtras(q, k, v, dims.Shape, options, dropout with { DropoutP = 0f }, plain, plainLse);
        return (dropped, plain, droppedLse, plainLse);
    }

    [Test]
    public void DropoutMaskIsPhiloxKeepBitsAndLseIsUnchanged()
    {
        // Rows cross 16-row and columns 32-column tiles; GQA, so h is the query head of the stream.
        var random = TestRandom.ForCurrentTest(out int seed);
        var dims = new ProblemDims(2, 40, 70, 3, 1, 8, 70);
        var options = new AttentionOptions { Causal = true };
        const float p = 0.17f;
        var (dropped, plain, droppedLse, plainLse) = OneHotRun(random, dims, options, p);
        Assert.That(droppedLse, Is.EqualTo(plainLse), "dropout leaves the LSE alone");
        double rp = 1.0 / (1.0 - p);
        int kept = 0, dropped0 = 0;
        for (int b = 0; b < dims.Batch; b++)
        {
            for (int i = 0; i < dims.Sq; i++)
            {
                for (int h = 0; h < dims.Hq; h++)
                {
                    for (int j = 0; j < dims.Sk; j++)
                    {
                        int at = ((((b * dims.Sq) + i) * dims.Hq) + h) * dims.Dv + j;
                        if (j > i + dims.Sk - dims.Sq)
                        {
                            Assert.That(plain[at], Is.EqualTo(0.0), "a masked key has no weight");
                            continue;
                        }

                        Assert.That(plain[at], Is.GreaterThan(0.0));
                        bool keep = Philox.DropoutKeep(Seed, Offset, b, h, dims.Hq, (uint)i, (uint)j, 211u);
                        string where = $"(b {b}, h {h}, i {i}, j {j}, seed {seed})";
                        if (keep)
                        {
                            kept++;
                            Assert.That(dropped[at], Is.EqualTo(plain[at] * rp).Within(1e-15 * rp), $"kept, scaled by 1/(1-p) {where}");
                        }
                        else
                        {
                            dropped0++;
                            Assert.That(dropped[at], Is.EqualTo(0.0), $"dropped {where}");
                        }
                    }
                }
            }
        }

        Assert.That(kept, Is.GreaterThan(0));
        Assert.That(dropped0, Is.GreaterThan(0));
    }

    [TestCase(0.17f, 211u)]
    [TestCase(0.5f, 127u)]
    [TestCase(0.9f, 25u)]
    public void KeptFractionIsNearTheQuantisedKeepProbability(float p, uint threshold)
    {
        // 2 * 128 * 128 = 32768 elements: the binomial standard deviation of the kept fraction is at most
        // sqrt(0.25 / 32768) = 0.0028, so 0.01 is over 3.5 of them (and the seed is fixed, so the result is too).
        var random = TestRandom.ForCurrentTest(out int seed);
        var dims = new ProblemDims(1, 128, 128, 2, 1, 8, 128);
        var (dropped, _, _, _) = OneHotRun(random, dims, new AttentionOptions(), p);
        int kept = dropped.Count(x => x != 0);
        double expected = (threshold + 1) / 256.0;
        Assert.That(Philox.DropoutThreshold(p), Is.EqualTo(threshold));
        Assert.That(kept / 32768.0, Is.EqualTo(expected).Within(0.01), $"seed {seed}");
    }

    [Test]
    public void VarlenDropoutStreamUsesTheSequenceIndexAndLocalPositions()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        int[] lensQ = [5, 0, 20, 17], lensK = [9, 4, 40, 3];
        const int hq = 2, hkv = 2, d = 8, dv = 40;
        int totalQ = lensQ.Sum(), totalK = lensK.Sum();
        var q = Normal(random, totalQ * hq * d);
        var k = Normal(random, totalK * hkv * d);
        var v = new double[totalK * hkv * dv];
        for (int b = 0, k0 = 0; b < lensK.Length; k0 += lensK[b], b++)
        {
            for (int j = 0; j < lensK[b]; j++)
            {
                for (int hk = 0; hk < hkv; hk++)
                {
                    v[((((k0 + j) * hkv) + hk) * dv) + j] = 1;
                }
            }
        }

        var extras = new ReferenceExtras { ValueHeadDim = dv, DropoutP = 0.5f, DropoutSeed = Seed, DropoutOffset = Offset };
        var output = Poisoned(totalQ * hq * dv);
        AttentionReference.ForwardVarlenWithExtras(q, k, v, lensQ, lensK, hq, hkv, d, new AttentionOptions(), extras, output, default);
        for (int b = 0, q0 = 0; b < lensQ.Length; q0 += lensQ[b], b++)
        {
            for (int i = 0; i < lensQ[b]; i++)
            {
                for (int h = 0; h < hq; h++)
                {
                    for (int j = 0; j < dv; j++)
                    {
                        double o = output[((((q0 + i) * hq) + h) * dv) + j];
                        bool keep = j < lensK[b] && Philox.DropoutKeep(Seed, Offset, b, h, hq, (uint)i, (uint)j, 127u);
                        Assert.That(o != 0, Is.EqualTo(keep), $"sequence {b}, h {h}, i {i}, j {j} (seed {seed})");
                    }
                }
            }
        }
    }

    /// <summary>
    /// Checks every element of each gradient against central differences of <c>L = Σ forward(...)·g</c>, perturbing
    /// the matching input in place and restoring it.
    /// </summary>
    private static void AssertMatchesFiniteDifferences(
        (string Name, double[] Input, double[] Grad)[] items, double[] g, Action<double[]> forward, string context)
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

        foreach (var (name, x, grad) in items)
        {
            Assert.That(grad, Has.Length.EqualTo(x.Length), name);
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
                if (!(Math.Abs(analytic - numeric) <= GradientTolerance * (1 + Math.Abs(numeric))))
                {
                    Assert.Fail($"{name}[{i}] = {analytic:R}, central difference gives {numeric:R} ({context})");
                }
            }
        }
    }

    [TestCaseSource(nameof(Mixes))]
    public void BackwardMatchesFiniteDifferences(string lengths, Mix mix)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        foreach (var (hq, hkv) in HeadConfigs)
        {
            var dims = RandomDims(random, lengths, hq, hkv, 10, d => mix.ValueDim(random, d));
            var options = mix.Options(random.Next(2) == 0 ? null : -0.8f);
            var extras = mix.Extras(random, dims.Batch, hq, dims.D, dims.Dv);
            var q = Normal(random, dims.QElements);
            var k = Normal(random, dims.KElements);
            var v = Normal(random, dims.VElements);
            var g = Normal(random, dims.OElements);
            var dq = Poisoned(dims.QElements);
            var dk = Poisoned(dims.KElements);
            var dv = Poisoned(dims.VElements);
            var dsink = Poisoned(hq);
            AttentionReference.BackwardWithExtras(q, k, v, g, dims.Shape, options, extras, dq, dk, dv, dsink);
            string context = $"seed {seed}, {dims}";
            var items = new List<(string, double[], double[])> { ("dQ", q, dq), ("dK", k, dk), ("dV", v, dv) };
            if (extras.Sinks is { } sinks)
            {
                items.Add(("dSink", sinks, dsink));
            }
            else
            {
                Assert.That(dsink, Is.All.EqualTo(0.0), "no sinks, no sink gradient");
            }

            AssertMatchesFiniteDifferences(
                items.ToArray(), g, output => AttentionReference.ForwardWithExtras(q, k, v, dims.Shape, options, extras, output, default), context);
        }
    }

    [TestCase(false, 0f)]
    [TestCase(true, 0.25f)]
    public void VarlenBackwardMatchesFiniteDifferences(bool causal, float dropoutP)
    {
        // Per-sequence slopes, sinks, dv != d and (one case) dropout, with an empty query sequence, a sequence with no
        // keys and two random ones.
        var random = TestRandom.ForCurrentTest(out int seed);
        var mix = new Mix(Causal: causal, Left: causal ? 3 : null, Alibi: "batch", Sinks: true, Dv: "larger", DropoutP: dropoutP);
        foreach (var (hq, hkv) in HeadConfigs)
        {
            var sequences = new List<(int Q, int K)>
            {
                (0, random.Next(1, 6)),
                (random.Next(1, 5), 0),
                (random.Next(1, 8), random.Next(1, 8)),
                (random.Next(1, 8), random.Next(1, 8)),
            }.OrderBy(_ => random.Next()).ToList();
            int[] lensQ = sequences.Select(s => s.Q).ToArray(), lensK = sequences.Select(s => s.K).ToArray();
            int d = random.Next(2) == 0 ? 8 : 16, dvDim = mix.ValueDim(random, d);
            var options = mix.Options();
            var extras = mix.Extras(random, lensQ.Length, hq, d, dvDim);
            int totalQ = lensQ.Sum(), totalK = lensK.Sum();
            var q = Normal(random, totalQ * hq * d);
            var k = Normal(random, totalK * hkv * d);
            var v = Normal(random, totalK * hkv * dvDim);
            var g = Normal(random, totalQ * hq * dvDim);
            var dq = Poisoned(q.Length);
            var dk = Poisoned(k.Length);
            var dv = Poisoned(v.Length);
            var dsink = Poisoned(hq);
            AttentionReference.BackwardVarlenWithExtras(q, k, v, g, lensQ, lensK, hq, hkv, d, options, extras, dq, dk, dv, dsink);
            string context = $"seed {seed}, Hq {hq}, Hkv {hkv}, D {d}, Dv {dvDim}, Q lengths [{string.Join(", ", lensQ)}], K lengths [{string.Join(", ", lensK)}]";
            AssertMatchesFiniteDifferences(
                [("dQ", q, dq), ("dK", k, dk), ("dV", v, dv), ("dSink", extras.Sinks!, dsink)], g,
                output => AttentionReference.ForwardVarlenWithExtras(q, k, v, lensQ, lensK, hq, hkv, d, options, extras, output, default),
                context);
        }
    }

    [Test]
    public void BackwardWithExtrasIsDeterministicInParallel()
    {
        // Over 2^20 multiply-adds, so the units run in parallel; the sink gradient is summed in a fixed order.
        var random = TestRandom.ForCurrentTest(out int seed);
        var dims = new ProblemDims(3, 80, 72, 4, 2, 32, 24);
        var options = new AttentionOptions { Causal = true, WindowLeft = 50 };
        var extras = new Mix(Alibi: "batch", Sinks: true, DropoutP: 0.2f).Extras(random, 3, 4, 32, 24);
        var q = Normal(random, dims.QElements);
        var k = Normal(random, dims.KElements);
        var v = Normal(random, dims.VElements);
        var g = Normal(random, dims.OElements);
        double[][] Run()
        {
            var r = new[] { Poisoned(dims.QElements), Poisoned(dims.KElements), Poisoned(dims.VElements), Poisoned(4) };
            AttentionReference.BackwardWithExtras(q, k, v, g, dims.Shape, options, extras, r[0], r[1], r[2], r[3]);
            return r;
        }

        var first = Run();
        var second = Run();
        for (int t = 0; t < 4; t++)
        {
            Assert.That(second[t], Is.EqualTo(first[t]), $"gradient {t} of a repeat (seed {seed})");
        }
    }

    [Test]
    public void PublicEntryPointsAreTheExtrasFreeOverloads()
    {
        var random = TestRandom.ForCurrentTest(out _);
        var dims = new ProblemDims(2, 6, 9, 4, 2, 8, 8);
        var options = new AttentionOptions { Causal = true, Softcap = 3f };
        var q = Normal(random, dims.QElements);
        var k = Normal(random, dims.KElements);
        var v = Normal(random, dims.VElements);
        var g = Normal(random, dims.OElements);
        var (o1, l1, o2, l2) = (new double[dims.OElements], new double[dims.LseElements], new double[dims.OElements], new double[dims.LseElements]);
        AttentionReference.Forward(q, k, v, dims.Shape, options, o1, l1);
        AttentionReference.ForwardWithExtras(q, k, v, dims.Shape, options, ReferenceExtras.None, o2, l2);
        Assert.That(o2, Is.EqualTo(o1));
        Assert.That(l2, Is.EqualTo(l1));
        var a = new[] { new double[dims.QElements], new double[dims.KElements], new double[dims.VElements] };
        var b = new[] { new double[dims.QElements], new double[dims.KElements], new double[dims.VElements] };
        AttentionReference.Backward(q, k, v, g, dims.Shape, options, a[0], a[1], a[2]);
        AttentionReference.BackwardWithExtras(q, k, v, g, dims.Shape, options, new ReferenceExtras { ValueHeadDim = 8 }, b[0], b[1], b[2], default);
        Assert.That(b, Is.EqualTo(a));
    }

    [Test]
    public void InvalidExtrasAreRefusedWithTheReason()
    {
        var dims = new ProblemDims(2, 3, 4, 4, 2, 8, 8);
        var q = new double[dims.QElements];
        var k = new double[dims.KElements];
        var v = new double[dims.VElements];
        var o = new double[dims.OElements];
        var options = new AttentionOptions();
        void Forward(ReferenceExtras x, double[]? vv = null, double[]? oo = null) =>
            AttentionReference.ForwardWithExtras(q, k, vv ?? v, dims.Shape, options, x, oo ?? o, default);

        Assert.Multiple(() =>
        {
            Assert.That(() => Forward(new() { AlibiSlopes = new double[3] }), Throws.ArgumentException.With.Message.Contains("AlibiSlopes has 3"));
            Assert.That(() => Forward(new() { AlibiSlopes = new double[4] }), Throws.Nothing, "[headsQ]");
            Assert.That(() => Forward(new() { AlibiSlopes = new double[8] }), Throws.Nothing, "[batch, headsQ]");
            Assert.That(() => Forward(new() { Sinks = new double[8] }), Throws.ArgumentException.With.Message.Contains("Sinks has 8"));
            Assert.That(() => Forward(new() { ValueHeadDim = 0 }), Throws.ArgumentException.With.Message.Contains("ValueHeadDim"));
            Assert.That(() => Forward(new() { DropoutP = 1f }), Throws.ArgumentException.With.Message.Contains("DropoutP"));
            Assert.That(() => Forward(new() { DropoutP = -0.1f }), Throws.ArgumentException.With.Message.Contains("DropoutP"));
            Assert.That(() => Forward(new() { DropoutP = float.NaN }), Throws.ArgumentException.With.Message.Contains("DropoutP"));
            Assert.That(() => Forward(new() { ValueHeadDim = 4 }), Throws.ArgumentException.With.Property("ParamName").EqualTo("v"), "v sized for d");
            Assert.That(
                () => Forward(new() { ValueHeadDim = 4 }, new double[dims.KElements / 2]),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("output"), "output sized for d");
            Assert.That(
                () => AttentionReference.BackwardWithExtras(q, k, v, o, dims.Shape, options, new ReferenceExtras { Sinks = new double[4] }, new double[q.Length], new double[k.Length], new double[v.Length], new double[3]),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("sinkGrad"));
        });
    }
}
