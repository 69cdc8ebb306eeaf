using FlashAttn.Internal;
using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// Learnable sinks (C ABI 0.7, FEATURES.md §7) without a GPU: the public float64 reference overloads against an
/// independent concatenated-column softmax and against finite differences (the sinks' gradient included); the managed
/// and native refusals of bad sinks/dSinks, each naming the argument; 0.6-sized structs still accepted; the support
/// query. Inputs are fresh random values per case (TestRandom), never zeros; outputs start poisoned.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class SinkTests
{
    // ---- the reference ----------------------------------------------------------------------------------------

    public sealed record Case(string Name, AttentionShape Shape, AttentionOptions Options)
    {
        public override string ToString() => Name;
    }

    public static IEnumerable<TestCaseData> ReferenceCases()
    {
        yield return Data("plain", new AttentionShape(2, 5, 7, 4, 2, 8), AttentionOptions.Default);
        yield return Data("causal Sq>Sk (empty rows)", new AttentionShape(1, 9, 4, 2, 1, 8), new AttentionOptions { Causal = true });
        yield return Data("causal top-left", new AttentionShape(2, 6, 9, 2, 2, 8), new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft });
        yield return Data("window softcap GQA", new AttentionShape(1, 8, 8, 6, 2, 8), new AttentionOptions { WindowLeft = 2, WindowRight = 1, Softcap = 2.5f });
        // Bottom-right, Sq 12 > Sk 4, window (1, 0): rows 0..7 see no key.
        yield return Data("window misses every key", new AttentionShape(1, 12, 4, 2, 2, 8), new AttentionOptions { WindowLeft = 1, WindowRight = 0, SoftmaxScale = 0.7f });

        static TestCaseData Data(string name, AttentionShape shape, AttentionOptions options) =>
            new TestCaseData(new Case(name, shape, options)).SetName($"Sinks reference: {name}");
    }

    /// <summary>
    /// The forward with sinks equals softmax over [scores of the visible keys, σ_h] with the last column dropped, written
    /// out here independently of the product (gpt-oss's reference), and LSE = log(e^σ + Σ e^x); empty rows O = 0, LSE = σ.
    /// </summary>
    [TestCaseSource(nameof(ReferenceCases))]
    public void ForwardIsTheSoftmaxWithASinkColumn(Case c)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        AttentionShape s = c.Shape;
        double[] q = Doubles(random, s.QElementCount), k = Doubles(random, s.KvElementCount), v = Doubles(random, s.KvElementCount);
        double[] sinks = Doubles(random, s.HeadsQ, 2.0);
        var output = Poisoned(s.QElementCount);
        var lse = Poisoned(s.LseElementCount);
        AttentionReference.Forward(q, k, v, s, c.Options, sinks, output, lse);

        double scale = c.Options.EffectiveScale(s.HeadDim);
        int group = s.HeadsQ / s.HeadsKv;
        int emptyRows = 0;
        for (int b = 0; b < s.Batch; b++)
        {
            for (int h = 0; h < s.HeadsQ; h++)
            {
                for (int i = 0; i < s.SeqLenQ; i++)
                {
                    (int first, int end) = AttentionReference.VisibleKeys(c.Options, i, s.SeqLenQ, s.SeqLenK);
                    var logits = new List<double>();
                    for (int j = first; j < end; j++)
                    {
                        double dot = 0;
                        for (int x = 0; x < s.HeadDim; x++)
                        {
                            dot += q[QAt(s, b, i, h, x)] * k[KAt(s, b, j, h / group, x)];
                        }

                        double t = dot * scale;
                        logits.Add(c.Options.Softcap is { } cap ? cap * Math.Tanh(t / cap) : t);
                    }

                    logits.Add(sinks[h]);  // the sink column
                    double max = logits.Max();
                    double denominator = logits.Sum(x => Math.Exp(x - max));
                    long at = ((long)b * s.HeadsQ + h) * s.SeqLenQ + i;
                    Assert.That(lse[at], Is.EqualTo(max + Math.Log(denominator)).Within(1e-12 * (1 + Math.Abs(lse[at]))),
                        $"lse b{b} h{h} i{i} (seed {seed})");
                    emptyRows += end <= first ? 1 : 0;
                    if (end <= first)
                    {
                        Assert.That(lse[at], Is.EqualTo(sinks[h]), $"an empty row's lse is its sink (b{b} h{h} i{i})");
                    }

                    for (int x = 0; x < s.HeadDim; x++)
                    {
                        double expected = 0;
                        for (int j = first; j < end; j++)
                        {
                            expected += Math.Exp(logits[j - first] - max) / denominator * v[KAt(s, b, j, h / group, x)];
                        }

                        double got = output[QAt(s, b, i, h, x)];
                        Assert.That(got, Is.EqualTo(expected).Within(1e-12), $"output b{b} h{h} i{i} x{x} (seed {seed})");
                    }
                }
            }
        }

        if (c.Name.Contains("empty", StringComparison.Ordinal) || c.Name.Contains("misses", StringComparison.Ordinal))
        {
            Assert.That(emptyRows, Is.GreaterThan(0), "the case must have rows that see no key");
        }
    }

    /// <summary>
    /// dQ, dK, dV and dσ of the public Backward overload against central finite differences of L = Σ dO ∘ O through the
    /// public Forward overload (every element of every gradient).
    /// </summary>
    [TestCaseSource(nameof(ReferenceCases))]
    public void BackwardMatchesFiniteDifferences(Case c)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        AttentionShape s = c.Shape;
        double[] q = Doubles(random, s.QElementCount), k = Doubles(random, s.KvElementCount), v = Doubles(random, s.KvElementCount);
        double[] sinks = Doubles(random, s.HeadsQ, 1.5);
        double[] dout = Doubles(random, s.QElementCount);
        var dq = Poisoned(s.QElementCount);
        var dk = Poisoned(s.KvElementCount);
        var dv = Poisoned(s.KvElementCount);
        var dsinks = Poisoned(s.HeadsQ);
        AttentionReference.Backward(q, k, v, dout, s, c.Options, sinks, dq, dk, dv, dsinks);

        double Loss()
        {
            var o = new double[s.QElementCount];
            AttentionReference.Forward(q, k, v, s, c.Options, sinks, o, Span<double>.Empty);
            double sum = 0;
            for (long i = 0; i < o.LongLength; i++)
            {
                sum += o[i] * dout[i];
            }

            return sum;
        }

        foreach ((string name, double[] x, double[] grad) in new[] { ("dQ", q, dq), ("dK", k, dk), ("dV", v, dv), ("dSinks", sinks, dsinks) })
        {
            for (int i = 0; i < x.Length; i++)
            {
                const double h = 1e-5;
                double keep = x[i];
                x[i] = keep + h;
                double up = Loss();
                x[i] = keep - h;
                double down = Loss();
                x[i] = keep;
                double fd = (up - down) / (2 * h);
                Assert.That(grad[i], Is.EqualTo(fd).Within(1e-6 + (1e-6 * Math.Abs(fd))), $"{name}[{i}] (seed {seed})");
            }
        }

        Assert.That(dsinks, Has.Some.Not.EqualTo(0.0), "the sinks' gradient must not vanish on this case");
    }

    [Test]
    public void VarlenBackwardMatchesFiniteDifferencesWithAnEmptySequence()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        int[] lensQ = [3, 0, 5, 2], lensK = [4, 2, 0, 6];  // an empty query sequence and an empty key sequence
        int hq = 4, hkv = 2, d = 8, totalQ = lensQ.Sum(), totalK = lensK.Sum();
        var options = new AttentionOptions { Causal = true };
        double[] q = Doubles(random, (long)totalQ * hq * d), k = Doubles(random, (long)totalK * hkv * d), v = Doubles(random, (long)totalK * hkv * d);
        double[] sinks = Doubles(random, hq, 1.5), dout = Doubles(random, (long)totalQ * hq * d);
        var output = Poisoned((long)totalQ * hq * d);
        var lse = Poisoned((long)totalQ * hq);
        AttentionReference.ForwardVarlen(q, k, v, lensQ, lensK, hq, hkv, d, options, sinks, output, lse);
        // Sequence 2 has 5 queries and no key: O = 0 and LSE = the sink.
        for (int h = 0; h < hq; h++)
        {
            for (int t = 3; t < 8; t++)
            {
                Assert.That(lse[(h * totalQ) + t], Is.EqualTo(sinks[h]), $"lse of head {h}, packed row {t}");
                Assert.That(output.AsSpan((((t * hq) + h) * d), d).ToArray(), Is.All.EqualTo(0.0), $"output of head {h}, packed row {t}");
            }
        }

        var dq = Poisoned(q.LongLength);
        var dk = Poisoned(k.LongLength);
        var dv = Poisoned(v.LongLength);
        var dsinks = Poisoned(hq);
        AttentionReference.BackwardVarlen(q, k, v, dout, lensQ, lensK, hq, hkv, d, options, sinks, dq, dk, dv, dsinks);

        double Loss()
        {
            var o = new double[output.Length];
            AttentionReference.ForwardVarlen(q, k, v, lensQ, lensK, hq, hkv, d, options, sinks, o, Span<double>.Empty);
            return o.Select((x, i) => x * dout[i]).Sum();
        }

        foreach ((string name, double[] x, double[] grad) in new[] { ("dQ", q, dq), ("dK", k, dk), ("dV", v, dv), ("dSinks", sinks, dsinks) })
        {
            for (int i = 0; i < x.Length; i++)
            {
                const double h = 1e-5;
                double keep = x[i];
                x[i] = keep + h;
                double up = Loss();
                x[i] = keep - h;
                double down = Loss();
                x[i] = keep;
                double fd = (up - down) / (2 * h);
                Assert.That(grad[i], Is.EqualTo(fd).Within(1e-6 + (1e-6 * Math.Abs(fd))), $"{name}[{i}] (seed {seed})");
            }
        }
    }

    /// <summary>
    /// The GPU tests' same-dtype bar (Gpu/SinkGpuTests' NaiveSink) is sink attention: with no rounding it agrees with the
    /// float64 reference to float32 precision, forward and backward (dsinks included), on rows that see no key too.
    /// </summary>
    [Test]
    public void TheGpuTestsNaiveSinkBarIsSinkAttention()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        var d = new AttentionDims(2, 23, 11, 4, 2, 16);  // causal Sq > Sk: rows 0..11 see no key
        var mask = new MaskSpec(true, false, null, null, 5f);
        float[] q = TestRandom.Normal(random, d.QElements), k = TestRandom.Normal(random, d.KvElements);
        float[] v = TestRandom.Normal(random, d.KvElements), dOut = TestRandom.Normal(random, d.QElements);
        float[] sinks = TestRandom.Normal(random, d.HeadsQ, 2.0);
        float scale = (float)d.DefaultScale;
        var shape = new AttentionShape(d.Batch, d.SeqQ, d.SeqK, d.HeadsQ, d.HeadsKv, d.HeadDim);
        AttentionOptions options = mask.ToOptions();
        double[] s64 = sinks.Select(x => (double)x).ToArray();
        var refOut = new double[d.QElements];
        AttentionReference.Forward(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v), shape, options,
            s64, refOut, Span<double>.Empty);
        float[] naive = FlashAttn.Tests.Gpu.NaiveSink.ForwardSameDtype(q, k, v, sinks, d, mask, scale, x => x);
        Assert.That(Numerics.RelativeL2(naive, refOut), Is.LessThan(1e-5), $"forward (seed {seed})");

        var rdq = new double[d.QElements];
        var rdk = new double[d.KvElements];
        var rdv = new double[d.KvElements];
        var rds = new double[d.HeadsQ];
        AttentionReference.Backward(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            AttentionReference.ToDouble(dOut), shape, options, s64, rdq, rdk, rdv, rds);
        (float[] ndq, float[] ndk, float[] ndv, float[] nds, float[] nTerms) =
            FlashAttn.Tests.Gpu.NaiveSink.BackwardSameDtype(q, k, v, sinks, dOut, d, mask, scale, x => x);
        var termSums = new double[d.HeadsQ];
        for (int t = 0; t < nTerms.Length; t++)
        {
            termSums[t / d.SeqQ % d.HeadsQ] += nTerms[t];  // [B, Hq, Sq]
        }
        Assert.Multiple(() =>
        {
            Assert.That(Numerics.RelativeL2(ndq, rdq), Is.LessThan(1e-5), $"dq (seed {seed})");
            Assert.That(Numerics.RelativeL2(ndk, rdk), Is.LessThan(1e-5), $"dk (seed {seed})");
            Assert.That(Numerics.RelativeL2(ndv, rdv), Is.LessThan(1e-5), $"dv (seed {seed})");
            Assert.That(Numerics.RelativeL2(nds, rds), Is.LessThan(1e-5), $"dsinks (seed {seed})");
            Assert.That(Numerics.RelativeL2(termSums, rds), Is.LessThan(1e-5), $"dsinks from the per-row terms (seed {seed})");
        });
    }

    /// <summary>
    /// SinkGradientCheck (the GPU tests' dsinks rule) accepts dsinks reduced in float32 from an accurate stored output and
    /// LSE, and rejects a sign error, a lost row, another head's sink and a log2-unit LSE.
    /// </summary>
    [Test]
    public void SinkGradientCheckAcceptsAFloat32ReductionAndRejectsDefects()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        var d = new AttentionDims(2, 40, 29, 4, 2, 32);  // causal Sq > Sk: rows 0..10 see no key
        var mask = new MaskSpec(true, false);
        Func<float, float> round = x => DeviceArray.Round(DataType.BFloat16, x);
        float[] Values(int n) => TestRandom.Normal(random, n).Select(round).ToArray();
        float[] q = Values(d.QElements), k = Values(d.KvElements), v = Values(d.KvElements), dOut = Values(d.QElements);
        float[] sinks = TestRandom.Normal(random, d.HeadsQ, 2.0);
        var shape = new AttentionShape(d.Batch, d.SeqQ, d.SeqK, d.HeadsQ, d.HeadsKv, d.HeadDim);
        AttentionOptions options = mask.ToOptions();
        double[] s64 = sinks.Select(x => (double)x).ToArray();
        var refOut = new double[d.QElements];
        var refLse = new double[d.LseElements];
        AttentionReference.Forward(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v), shape, options,
            s64, refOut, refLse);
        var rdq = new double[d.QElements];
        var rdk = new double[d.KvElements];
        var rdv = new double[d.KvElements];
        var rds = new double[d.HeadsQ];
        AttentionReference.Backward(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            AttentionReference.ToDouble(dOut), shape, options, s64, rdq, rdk, rdv, rds);
        (_, _, _, _, float[] nTerms) = FlashAttn.Tests.Gpu.NaiveSink.BackwardSameDtype(q, k, v, sinks, dOut, d, mask, (float)d.DefaultScale, round);
        float[] o = refOut.Select(x => (float)x).ToArray();
        float[] lse = refLse.Select(x => (float)x).ToArray();

        // What bwd_preprocess + bwd_sink_reduce do, in float32: per row -expf(σ - lse)·(dO·O), summed in row order.
        float[] Reduce(Func<int, float> sigmaOf, Func<float, float> lseOf, int skipB = -1, int skipI = -1, float sign = 1f)
        {
            var ds = new float[d.HeadsQ];
            for (int b = 0; b < d.Batch; b++)
            {
                for (int h = 0; h < d.HeadsQ; h++)
                {
                    for (int i = 0; i < d.SeqQ; i++)
                    {
                        float dot = 0;
                        for (int x = 0; x < d.HeadDim; x++)
                        {
                            long at = ((((long)b * d.SeqQ) + i) * d.HeadsQ + h) * d.HeadDim + x;
                            dot += o[at] * dOut[at];
                        }

                        if ((b, i) != (skipB, skipI))
                        {
                            ds[h] -= sign * MathF.Exp(sigmaOf(h) - lseOf(lse[(((long)b * d.HeadsQ) + h) * d.SeqQ + i])) * dot;
                        }
                    }
                }
            }

            return ds;
        }

        List<string> Judge(float[] ds) =>
            SinkGradientCheck.Judge(ds, o, lse, nTerms, refOut, refLse, rds, dOut, sinks, d.Batch, d.SeqQ, d.HeadsQ, d.HeadDim, DataType.BFloat16);

        string context = $"seed {seed}";
        Assert.That(Judge(Reduce(h => sinks[h], l => l)), Is.Empty, $"the faithful float32 reduction, {context}");
        Assert.That(Judge(Reduce(h => sinks[h], l => l, sign: -1f)), Is.Not.Empty, $"a sign error, {context}");
        Assert.That(Judge(Reduce(h => sinks[h], l => l, skipB: 1, skipI: d.SeqQ - 1)), Is.Not.Empty, $"the last row of batch entry 1 left out, {context}");
        Assert.That(Judge(Reduce(h => sinks[(h + 1) % d.HeadsQ], l => l)), Is.Not.Empty, $"the next head's sink, {context}");
        Assert.That(Judge(Reduce(h => sinks[h], l => l * 1.44269504f)), Is.Not.Empty, $"the LSE in log2 units, {context}");
    }

    [Test]
    public void ReferenceRefusesSinksOfTheWrongLength()
    {
        var s = new AttentionShape(1, 3, 3, 4, 2, 8);
        Assert.That(
            () => AttentionReference.Forward(new double[s.QElementCount], new double[s.KvElementCount], new double[s.KvElementCount], s,
                AttentionOptions.Default, new double[2], new double[s.QElementCount], Span<double>.Empty),
            Throws.ArgumentException.With.Message.Contains("Sinks has 2 values"));
    }

    // ---- managed and native validation -----------------------------------------------------------------------

    private const long Qa = 0x1000_0000, Ka = 0x2000_0000, Va = 0x3000_0000, Oa = 0x4000_0000, La = 0x5000_0000;
    private const long Da = 0x6000_0000, DQa = 0x7000_0000, DKa = 0x7800_0000, DVa = 0x7C00_0000;
    private const long Sa = 0x0A00_0000, DSa = 0x0B00_0000;

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    private static DeviceTensor TS(long address, DataType dtype, long[] shape, long[] strides) =>
        DeviceTensor.FromPointer((IntPtr)address, dtype, shape, strides);

    /// <summary>B=2, Sq=17, Sk=33, Hq=8, Hkv=2, d=64, fp16, with sinks [8].</summary>
    private static AttentionArguments ValidForward() =>
        new(T(Qa, DataType.Float16, 2, 17, 8, 64), T(Ka, DataType.Float16, 2, 33, 2, 64), T(Va, DataType.Float16, 2, 33, 2, 64),
            T(Oa, DataType.Float16, 2, 17, 8, 64), T(La, DataType.Float32, 2, 8, 17))
        { Sinks = T(Sa, DataType.Float32, 8) };

    private static BackwardArguments ValidBackward() =>
        new(T(Qa, DataType.Float16, 2, 17, 8, 64), T(Ka, DataType.Float16, 2, 33, 2, 64), T(Va, DataType.Float16, 2, 33, 2, 64),
            T(Oa, DataType.Float16, 2, 17, 8, 64), T(Da, DataType.Float16, 2, 17, 8, 64), T(La, DataType.Float32, 2, 8, 17),
            T(DQa, DataType.Float16, 2, 17, 8, 64), T(DKa, DataType.Float16, 2, 33, 2, 64), T(DVa, DataType.Float16, 2, 33, 2, 64))
        { Sinks = T(Sa, DataType.Float32, 8), DSinks = T(DSa, DataType.Float32, 8) };

    public static IEnumerable<TestCaseData> BadForwardSinks()
    {
        AttentionArguments ok = ValidForward();
        yield return Bad("bf16 sinks (managed)", ok with { Sinks = T(Sa, DataType.BFloat16, 8) }, "sinks", "Float32");
        yield return Bad("rank 2 sinks (managed)", ok with { Sinks = T(Sa, DataType.Float32, 8, 1) }, "sinks", "heads_q=8");
        yield return Bad("sinks per KV head (managed)", ok with { Sinks = T(Sa, DataType.Float32, 2) }, "sinks", "heads_q=8");
        yield return Bad("misaligned sinks (native)", ok with { Sinks = T(Sa + 2, DataType.Float32, 8) }, "sinks.data", "4-byte aligned");
        yield return Bad("stride 0 sinks (native)", ok with { Sinks = TS(Sa, DataType.Float32, [8], [0]) }, "sinks.strides[0]", "positive");
        yield return Bad("null sinks pointer with a shape is none", ok with { Sinks = T(0, DataType.Float32, 8) }, null);
        yield return Bad("sinks inside the output (native)", ok with { Sinks = T(Oa + 64, DataType.Float32, 8) }, "out", "sinks");
        yield return Bad("sinks inside the lse (native)", ok with { Sinks = T(La + 64, DataType.Float32, 8) }, "lse", "sinks");
        yield return Bad("strided sinks are fine", ok with { Sinks = TS(Sa, DataType.Float32, [8], [4]) }, null);

        static TestCaseData Bad(string name, AttentionArguments a, params string[]? fragments) =>
            new TestCaseData(a, fragments).SetName($"Sinks forward check: {name}");
    }

    [TestCaseSource(nameof(BadForwardSinks))]
    public void ForwardCheckRefusesBadSinksNamingThem(AttentionArguments args, string[]? fragments)
    {
        FlashAttentionStatus status = FlashAttention.Check(args, out string message);
        if (fragments is null)
        {
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), message);
            return;
        }

        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.InvalidArgument), message);
            foreach (string f in fragments)
            {
                Assert.That(message, Does.Contain(f));
            }
        });
    }

    public static IEnumerable<TestCaseData> BadBackwardSinks()
    {
        BackwardArguments ok = ValidBackward();
        yield return Bad("valid sinks and dSinks", ok, null);
        yield return Bad("sinks without dSinks", ok with { DSinks = null }, null);
        yield return Bad("dSinks without sinks (managed)", ok with { Sinks = null }, "dSinks", "Sinks is null");
        yield return Bad("fp16 dSinks (managed)", ok with { DSinks = T(DSa, DataType.Float16, 8) }, "dSinks", "Float32");
        yield return Bad("dSinks of the wrong length (managed)", ok with { DSinks = T(DSa, DataType.Float32, 7) }, "dSinks", "heads_q=8");
        yield return Bad("fp16 sinks (managed)", ok with { Sinks = T(Sa, DataType.Float16, 8) }, "sinks", "Float32");
        yield return Bad("dSinks over the sinks (native)", ok with { DSinks = T(Sa, DataType.Float32, 8) }, "dsinks", "sinks");
        yield return Bad("dSinks inside dq (native)", ok with { DSinks = T(DQa + 32, DataType.Float32, 8) }, "dsinks", "dq");
        yield return Bad("misaligned dSinks (native)", ok with { DSinks = T(DSa + 1, DataType.Float32, 8) }, "dsinks.data", "4-byte aligned");

        static TestCaseData Bad(string name, BackwardArguments a, params string[]? fragments) =>
            new TestCaseData(a, fragments).SetName($"Sinks backward check: {name}");
    }

    [TestCaseSource(nameof(BadBackwardSinks))]
    public void BackwardCheckRefusesBadSinksNamingThem(BackwardArguments args, string[]? fragments)
    {
        FlashAttentionStatus status = FlashAttention.CheckBackward(args, out string message);
        if (fragments is null)
        {
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), message);
            return;
        }

        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.InvalidArgument), message);
            foreach (string f in fragments)
            {
                Assert.That(message, Does.Contain(f));
            }
        });
    }

    /// <summary>A 0.6 caller's structs end before the sinks: garbage past them is never read, and the calls pass.</summary>
    [Test]
    public unsafe void OlderStructSizesAreStillAccepted()
    {
        const uint forward06 = 728, backward06 = 824, query06 = 40;
        // 0.7 appends the sinks (one tensor to the forward, two to the backward, one int32 to the query); 0.8 the ALiBi
        // slopes (one tensor each, one int32 to the query; AlibiTests checks those); 0.9 the dropout block (128 bytes
        // to the forward, 40 to the backward, one int32 to the query; DropoutAbiTests checks those); 0.10 head_dim_v
        // (one int32 to the query; ValueHeadDimValidationTests checks it); 0.11 the block table (one tensor to the
        // forward, one int32 to the query; PagedKvValidationTests checks those); 0.13 kv_cache_dtype (one int32 to the query;
        // Float8KvCacheTests checks it).
        Assert.That(sizeof(FaForwardParams), Is.EqualTo(forward06 + (3 * sizeof(FaTensor)) + 128),
            "0.7 and 0.8 append one tensor each to the forward, 0.9 the dropout block, 0.11 one tensor");
        Assert.That(sizeof(FaBackwardParams), Is.EqualTo(backward06 + (3 * sizeof(FaTensor)) + 40), "0.7 appends two tensors to the backward, 0.8 one, 0.9 the dropout block");
        Assert.That(sizeof(FaSupportQuery), Is.EqualTo(query06 + 24), "0.7, 0.8, 0.9, 0.10, 0.11 and 0.13 append one int32 each to the query");

        FaForwardParams f = ForwardParamsFactory.Valid();
        f.sinks = ForwardParamsFactory.Dense(3, (FaDtype)99, 1, 1, 1, 1);  // garbage a 0.6 caller never wrote
        f.struct_size = forward06;
        Assert.That(NativeMethods.fa_forward_check(&f, 0), Is.EqualTo(FaStatus.Success), Errors.LastErrorMessage());
        f.struct_size = (uint)sizeof(FaForwardParams);
        Assert.That(NativeMethods.fa_forward_check(&f, 0), Is.EqualTo(FaStatus.InvalidArgument), "a 0.7 size reads the sinks");

        FaBackwardParams b = BackwardParamsFactory.Valid();
        b.sinks = ForwardParamsFactory.Dense(3, (FaDtype)99, 1, 1, 1, 1);
        b.dsinks = ForwardParamsFactory.Dense(5, (FaDtype)99, 1, 1, 1, 1);
        b.struct_size = backward06;
        Assert.That(NativeMethods.fa_backward_check(&b, 0), Is.EqualTo(FaStatus.Success), Errors.LastErrorMessage());
        b.struct_size = backward06 - 8;
        Assert.That(NativeMethods.fa_backward_check(&b, 0), Is.EqualTo(FaStatus.InvalidArgument));
        Assert.That(Errors.LastErrorMessage(), Does.Contain("at least 824"));

        FaSupportQuery q = default;
        q.struct_size = query06;
        q.pass = (int)FaPass.Forward;
        q.dtype = (int)FaDtype.Float16;
        q.head_dim = 64;
        q.sinks = 7;  // past a 0.6 struct: not read
        Assert.That(NativeMethods.fa_query_support(&q), Is.EqualTo(FaStatus.Success), Errors.LastErrorMessage());
        q.struct_size = (uint)sizeof(FaSupportQuery);
        Assert.That(NativeMethods.fa_query_support(&q), Is.EqualTo(FaStatus.InvalidArgument), "a 0.7 query reads sinks");
    }

    [Test]
    public void SupportQueryKnowsSinks()
    {
        SupportResult forward = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, DataType.BFloat16, 64, Causal: true, Sinks: true));
        SupportResult backward = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Backward, DataType.Float16, 64, Window: true, KernelPath: KernelPath.Sm80, Sinks: true));
        SupportResult decode = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Decode, DataType.Float16, 64, Sinks: true));
        Assert.Multiple(() =>
        {
            Assert.That(forward.IsSupported, Is.True, forward.Reason);
            Assert.That(backward.IsSupported, Is.True, backward.Reason);
            Assert.That(decode.IsSupported, Is.False);
            Assert.That(decode.Reason, Does.Contain("no learnable sinks"));
        });
    }

    // ---- helpers ----------------------------------------------------------------------------------------------

    private static long QAt(AttentionShape s, int b, int i, int h, int x) => ((((long)b * s.SeqLenQ) + i) * s.HeadsQ + h) * s.HeadDim + x;

    private static long KAt(AttentionShape s, int b, int j, int hk, int x) => ((((long)b * s.SeqLenK) + j) * s.HeadsKv + hk) * s.HeadDim + x;

    private static double[] Doubles(Random random, long count, double std = 1.0) =>
        TestRandom.Normal(random, checked((int)count), std).Select(x => (double)x).ToArray();

    private static double[] Poisoned(long count) => Enumerable.Repeat(double.NaN, checked((int)count)).ToArray();
}
