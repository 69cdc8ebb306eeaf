using FlashAttn.Internal;
using System.Runtime.InteropServices;
using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// ALiBi (C ABI 0.8, FEATURES.md §2) without a GPU: the public float64 reference overloads against a case worked out by
/// hand (FlashAttention-2's causal column form and its LSE shift, the bias neither scaled nor capped), the causal and
/// distance forms against each other on random inputs, the decode reference's left pad and its causal form at one new
/// token; the managed and native refusals of bad slopes, each naming the argument; 0.7-sized structs still accepted; the
/// support query. Random inputs are fresh per case (TestRandom); outputs start poisoned.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class AlibiTests
{
    // ---- the reference ----------------------------------------------------------------------------------------

    /// <summary>
    /// One query (q = 0, so every scaled and capped score is 0) over three keys whose values are rows of 1, 2 and 3; slope
    /// ln 2. Not causal: bias -ln2·|0 + 2 - j| = -ln2·(2, 1, 0), weights (1/4, 1/2, 1)/1.75, O = 4.25/1.75, LSE = ln 1.75.
    /// Causal (FA2's +ln2·j): weights (1, 2, 4)/7, the same O = 17/7, LSE = ln 7 = ln 1.75 + ln2·(i + sk - sq). With a
    /// softcap of 0.5 the numbers do not change: the bias (up to 2 ln 2 > 0.5) is added after tanh, not capped.
    /// </summary>
    [TestCase(false, null)]
    [TestCase(true, null)]
    [TestCase(false, 0.5f)]
    [TestCase(true, 0.5f)]
    public void HandWorkedCase(bool causal, float? softcap)
    {
        const int d = 8;
        var shape = new AttentionShape(1, 1, 3, 1, 1, d);
        var q = new double[d];
        var k = new double[3 * d];
        var v = new double[3 * d];
        for (int j = 0; j < 3; j++)
        {
            for (int x = 0; x < d; x++)
            {
                k[(j * d) + x] = 0.25 * (x + 1) * (j - 1);
                v[(j * d) + x] = j + 1;
            }
        }

        var options = new AttentionOptions { Causal = causal, Softcap = softcap };
        var output = Poisoned(d);
        var lse = Poisoned(1);
        AttentionReference.Forward(q, k, v, shape, options, ReadOnlySpan<double>.Empty, [Math.Log(2)], output, lse);
        Assert.Multiple(() =>
        {
            Assert.That(output, Is.All.EqualTo(17.0 / 7.0).Within(1e-14));
            Assert.That(lse[0], Is.EqualTo(causal ? Math.Log(7) : Math.Log(1.75)).Within(1e-14));
        });
    }

    public sealed record Case(string Name, AttentionShape Shape, AttentionOptions Causal, AttentionOptions Distance)
    {
        public override string ToString() => Name;
    }

    public static IEnumerable<TestCaseData> FormCases()
    {
        // A causal call with a left window of Sk - 1 hides nothing more (Sq <= Sk, bottom-right; or top-left), but FA2
        // treats it as "local": the distance form. Same mask, so O must agree and LSE differ by slope·(i + off).
        yield return Data("bottom-right Sq<Sk", new AttentionShape(2, 5, 9, 4, 2, 8), CausalAlignment.BottomRight);
        yield return Data("bottom-right Sq=Sk GQA", new AttentionShape(1, 7, 7, 6, 2, 8), CausalAlignment.BottomRight);
        yield return Data("top-left Sq<Sk", new AttentionShape(2, 4, 11, 2, 1, 8), CausalAlignment.TopLeft);

        static TestCaseData Data(string name, AttentionShape s, CausalAlignment alignment) =>
            new TestCaseData(new Case(
                name,
                s,
                new AttentionOptions { Causal = true, CausalAlignment = alignment },
                new AttentionOptions { Causal = true, CausalAlignment = alignment, WindowLeft = s.SeqLenK - 1 })).SetName($"Alibi reference forms: {name}");
    }

    /// <summary>FA2's causal column form gives the distance form's output and an LSE larger by slope·(i + off).</summary>
    [TestCaseSource(nameof(FormCases))]
    public void CausalFormShiftsOnlyTheLse(Case c)
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        AttentionShape s = c.Shape;
        double[] q = Doubles(random, s.QElementCount), k = Doubles(random, s.KvElementCount), v = Doubles(random, s.KvElementCount);
        double[] slopes = TestRandom.Uniform(random, s.Batch * s.HeadsQ, 0, 0.3);  // [b, Hq], FA2's test draw
        var o1 = Poisoned(s.QElementCount);
        var o2 = Poisoned(s.QElementCount);
        var l1 = Poisoned(s.LseElementCount);
        var l2 = Poisoned(s.LseElementCount);
        AttentionReference.Forward(q, k, v, s, c.Causal, ReadOnlySpan<double>.Empty, slopes, o1, l1);
        AttentionReference.Forward(q, k, v, s, c.Distance, ReadOnlySpan<double>.Empty, slopes, o2, l2);
        int off = c.Causal.CausalAlignment == CausalAlignment.TopLeft ? 0 : s.SeqLenK - s.SeqLenQ;
        for (int i = 0; i < o1.Length; i++)
        {
            Assert.That(o1[i], Is.EqualTo(o2[i]).Within(1e-12), $"output[{i}] (seed {seed})");
        }

        for (int b = 0; b < s.Batch; b++)
        {
            for (int h = 0; h < s.HeadsQ; h++)
            {
                for (int i = 0; i < s.SeqLenQ; i++)
                {
                    long at = (((long)b * s.HeadsQ) + h) * s.SeqLenQ + i;
                    double shift = slopes[(b * s.HeadsQ) + h] * (i + off);
                    Assert.That(l1[at] - l2[at], Is.EqualTo(shift).Within(1e-12), $"lse b{b} h{h} i{i} (seed {seed})");
                }
            }
        }
    }

    /// <summary>The backward with ALiBi matches finite differences of the forward (varlen, GQA, softcap, [b, Hq] slopes).</summary>
    [Test]
    public void BackwardMatchesFiniteDifferences()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        int[] lensQ = [3, 0, 4], lensK = [5, 2, 4];
        const int hq = 4, hkv = 2, d = 8;
        var options = new AttentionOptions { Causal = true, Softcap = 3f };
        int totalQ = lensQ.Sum(), totalK = lensK.Sum();
        double[] q = Doubles(random, totalQ * hq * d), k = Doubles(random, totalK * hkv * d), v = Doubles(random, totalK * hkv * d);
        double[] dout = Doubles(random, totalQ * hq * d);
        double[] slopes = TestRandom.Uniform(random, lensQ.Length * hq, 0, 0.5);
        var dq = Poisoned(q.Length);
        var dk = Poisoned(k.Length);
        var dv = Poisoned(v.Length);
        AttentionReference.BackwardVarlen(q, k, v, dout, lensQ, lensK, hq, hkv, d, options, ReadOnlySpan<double>.Empty, slopes, dq, dk, dv, Span<double>.Empty);

        double Loss()
        {
            var o = new double[dout.Length];
            AttentionReference.ForwardVarlen(q, k, v, lensQ, lensK, hq, hkv, d, options, ReadOnlySpan<double>.Empty, slopes, o, Span<double>.Empty);
            return o.Select((x, i) => x * dout[i]).Sum();
        }

        foreach ((string name, double[] x, double[] grad) in new[] { ("dQ", q, dq), ("dK", k, dk), ("dV", v, dv) })
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
    /// Decode (one new token, left pads): the bias counts keys from the pad. Causal keeps FA2's column form at seqlen 1:
    /// the output equals the non-causal call's (the mask hides nothing) and the LSE is larger by slope·(sk - 1),
    /// sk = length + appended - pad.
    /// </summary>
    [Test]
    public void DecodeCountsFromTheLeftPadAndKeepsTheCausalForm()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        const int batch = 2, hq = 4, hkv = 2, d = 8, capacity = 12;
        int[] lens = [9, 6];
        int[] pads = [3, 0];
        double[] q = Doubles(random, batch * hq * d);
        double[] kCache = Doubles(random, batch * capacity * hkv * d), vCache = Doubles(random, kCache.Length);
        double[] slopes = TestRandom.Uniform(random, batch * hq, 0, 0.4);
        var serving = new DecodeServingOptions { CacheLeftPad = pads, AlibiSlopes = slopes };

        (double[] O, double[] Lse) Run(AttentionOptions options)
        {
            var o = Poisoned(q.Length);
            var l = Poisoned(batch * hq);
            DecodeReference.ForwardContiguous(q, kCache.ToArray(), vCache.ToArray(), lens, ReadOnlySpan<double>.Empty, ReadOnlySpan<double>.Empty, 1,
                hq, hkv, d, capacity, options, serving, o, l);
            return (o, l);
        }

        (double[] causalO, double[] causalL) = Run(new AttentionOptions { Causal = true });
        (double[] plainO, double[] plainL) = Run(AttentionOptions.Default);
        for (int i = 0; i < causalO.Length; i++)
        {
            Assert.That(causalO[i], Is.EqualTo(plainO[i]).Within(1e-12), $"output[{i}] (seed {seed})");
        }

        for (int b = 0; b < batch; b++)
        {
            int sk = lens[b] - pads[b];
            for (int h = 0; h < hq; h++)
            {
                Assert.That(causalL[(b * hq) + h] - plainL[(b * hq) + h], Is.EqualTo(slopes[(b * hq) + h] * (sk - 1)).Within(1e-12),
                    $"lse b{b} h{h} (seed {seed})");
            }
        }

        // The distance form itself, written out for sequence 0's head 1: keys p = pad .. len - 1, bias -m·(len - 1 - p).
        double scale = 1 / Math.Sqrt(d);
        double m = slopes[1];
        var logits = new List<double>();
        for (int p = pads[0]; p < lens[0]; p++)
        {
            double dot = 0;
            for (int x = 0; x < d; x++)
            {
                dot += q[(1 * d) + x] * kCache[((((0 * capacity) + p) * hkv) + 0) * d + x];
            }

            logits.Add((dot * scale) - (m * (lens[0] - 1 - p)));
        }

        double max = logits.Max();
        Assert.That(plainL[1], Is.EqualTo(max + Math.Log(logits.Sum(x => Math.Exp(x - max)))).Within(1e-12), $"distance-form lse (seed {seed})");
    }

    [Test]
    public void ReferenceRefusesSlopesOfTheWrongLength()
    {
        var s = new AttentionShape(2, 3, 3, 4, 2, 8);
        Assert.That(
            () => AttentionReference.Forward(new double[s.QElementCount], new double[s.KvElementCount], new double[s.KvElementCount], s,
                AttentionOptions.Default, ReadOnlySpan<double>.Empty, new double[5], new double[s.QElementCount], Span<double>.Empty),
            Throws.ArgumentException.With.Message.Contains("AlibiSlopes has 5 values"));
    }

    // ---- managed and native validation -----------------------------------------------------------------------

    private const long Qa = 0x1000_0000, Ka = 0x2000_0000, Va = 0x3000_0000, Oa = 0x4000_0000, La = 0x5000_0000;
    private const long Da = 0x6000_0000, DQa = 0x7000_0000, DKa = 0x7800_0000, DVa = 0x7C00_0000;
    private const long Aa = 0x0C00_0000;

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    private static DeviceTensor TS(long address, DataType dtype, long[] shape, long[] strides) =>
        DeviceTensor.FromPointer((IntPtr)address, dtype, shape, strides);

    /// <summary>B=2, Sq=17, Sk=33, Hq=8, Hkv=2, d=64, fp16, with slopes [8].</summary>
    private static AttentionArguments ValidForward() =>
        new(T(Qa, DataType.Float16, 2, 17, 8, 64), T(Ka, DataType.Float16, 2, 33, 2, 64), T(Va, DataType.Float16, 2, 33, 2, 64),
            T(Oa, DataType.Float16, 2, 17, 8, 64), T(La, DataType.Float32, 2, 8, 17))
        { AlibiSlopes = T(Aa, DataType.Float32, 8) };

    private static BackwardArguments ValidBackward() =>
        new(T(Qa, DataType.Float16, 2, 17, 8, 64), T(Ka, DataType.Float16, 2, 33, 2, 64), T(Va, DataType.Float16, 2, 33, 2, 64),
            T(Oa, DataType.Float16, 2, 17, 8, 64), T(Da, DataType.Float16, 2, 17, 8, 64), T(La, DataType.Float32, 2, 8, 17),
            T(DQa, DataType.Float16, 2, 17, 8, 64), T(DKa, DataType.Float16, 2, 33, 2, 64), T(DVa, DataType.Float16, 2, 33, 2, 64))
        { AlibiSlopes = T(Aa, DataType.Float32, 2, 8) };

    public static IEnumerable<TestCaseData> ForwardSlopes()
    {
        AttentionArguments ok = ValidForward();
        yield return Data("[heads_q]", ok, null);
        yield return Data("[batch, heads_q]", ok with { AlibiSlopes = T(Aa, DataType.Float32, 2, 8) }, null);
        yield return Data("strided [batch, heads_q]", ok with { AlibiSlopes = TS(Aa, DataType.Float32, [2, 8], [32, 2]) }, null);
        yield return Data("null pointer with a shape is none", ok with { AlibiSlopes = T(0, DataType.Float32, 8) }, null);
        yield return Data("bf16 (managed)", ok with { AlibiSlopes = T(Aa, DataType.BFloat16, 8) }, "alibiSlopes", "Float32");
        yield return Data("per KV head (managed)", ok with { AlibiSlopes = T(Aa, DataType.Float32, 2) }, "alibiSlopes", "heads_q=8");
        yield return Data("wrong batch (managed)", ok with { AlibiSlopes = T(Aa, DataType.Float32, 3, 8) }, "alibiSlopes", "batch=2");
        yield return Data("rank 3 (managed)", ok with { AlibiSlopes = T(Aa, DataType.Float32, 2, 8, 1) }, "alibiSlopes", "[heads_q=8] or [batch=2, heads_q=8]");
        yield return Data("misaligned (native)", ok with { AlibiSlopes = T(Aa + 2, DataType.Float32, 8) }, "alibi_slopes.data", "4-byte aligned");
        yield return Data("stride 0 (native)", ok with { AlibiSlopes = TS(Aa, DataType.Float32, [8], [0]) }, "alibi_slopes.strides[0]", "positive");
        yield return Data("inside the output (native)", ok with { AlibiSlopes = T(Oa + 64, DataType.Float32, 8) }, "out", "alibi_slopes");
        yield return Data("inside the lse (native)", ok with { AlibiSlopes = T(La + 64, DataType.Float32, 8) }, "lse", "alibi_slopes");

        static TestCaseData Data(string name, AttentionArguments a, params string[]? fragments) =>
            new TestCaseData(a, fragments).SetName($"Alibi forward check: {name}");
    }

    [TestCaseSource(nameof(ForwardSlopes))]
    public void ForwardCheckNamesBadSlopes(AttentionArguments args, string[]? fragments) =>
        Expect(FlashAttention.Check(args, out string message), message, fragments);

    public static IEnumerable<TestCaseData> BackwardSlopes()
    {
        BackwardArguments ok = ValidBackward();
        yield return Data("[batch, heads_q]", ok, null);
        yield return Data("with causal-form options too", ok with { AlibiSlopes = T(Aa, DataType.Float32, 8) }, null);
        yield return Data("fp16 (managed)", ok with { AlibiSlopes = T(Aa, DataType.Float16, 8) }, "alibiSlopes", "Float32");
        yield return Data("inside dq (native)", ok with { AlibiSlopes = T(DQa + 32, DataType.Float32, 8) }, "dq", "alibi_slopes");
        yield return Data("misaligned (native)", ok with { AlibiSlopes = T(Aa + 1, DataType.Float32, 8) }, "alibi_slopes.data", "4-byte aligned");

        static TestCaseData Data(string name, BackwardArguments a, params string[]? fragments) =>
            new TestCaseData(a, fragments).SetName($"Alibi backward check: {name}");
    }

    [TestCaseSource(nameof(BackwardSlopes))]
    public void BackwardCheckNamesBadSlopes(BackwardArguments args, string[]? fragments) =>
        Expect(FlashAttention.CheckBackward(args, out string message), message, fragments);

    private static void Expect(FlashAttentionStatus status, string message, string[]? fragments)
    {
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

    /// <summary>A 0.7 caller's structs end before the slopes: garbage past them is never read, and the calls pass.</summary>
    [Test]
    public unsafe void Version07StructSizesAreStillAccepted()
    {
        // 0.9 appends the dropout block after the slopes (DropoutAbiTests checks it): the 0.7 sizes are the offsets.
        uint forward07 = (uint)Marshal.OffsetOf<FaForwardParams>(nameof(FaForwardParams.alibi_slopes)).ToInt64();
        uint backward07 = (uint)Marshal.OffsetOf<FaBackwardParams>(nameof(FaBackwardParams.alibi_slopes)).ToInt64();
        uint query07 = (uint)Marshal.OffsetOf<FaSupportQuery>(nameof(FaSupportQuery.alibi)).ToInt64();
        Assert.Multiple(() =>
        {
            Assert.That(forward07, Is.EqualTo(728 + 80), "0.7's forward: 0.6's 728 bytes and the sinks");
            Assert.That(backward07, Is.EqualTo(824 + 160), "0.7's backward: 0.6's 824 bytes, sinks and dsinks");
            Assert.That(query07, Is.EqualTo(44), "0.7's query");
            Assert.That(Marshal.OffsetOf<FaDecodeParams>(nameof(FaDecodeParams.alibi_slopes)).ToInt64(), Is.EqualTo(960),
                "0.8 appends alibi_slopes to the decode's 960 bytes (the rotary block follows)");
        });

        FaForwardParams f = ForwardParamsFactory.Valid();
        f.alibi_slopes = ForwardParamsFactory.Dense(3, (FaDtype)99, 1, 1, 1, 1);  // garbage a 0.7 caller never wrote
        f.struct_size = forward07;
        Assert.That(NativeMethods.fa_forward_check(&f, 0), Is.EqualTo(FaStatus.Success), Errors.LastErrorMessage());
        f.struct_size = (uint)sizeof(FaForwardParams);
        Assert.That(NativeMethods.fa_forward_check(&f, 0), Is.EqualTo(FaStatus.InvalidArgument), "a 0.8 size reads the slopes");
        Assert.That(Errors.LastErrorMessage(), Does.Contain("alibi_slopes"));

        FaBackwardParams b = BackwardParamsFactory.Valid();
        b.alibi_slopes = ForwardParamsFactory.Dense(3, (FaDtype)99, 1, 1, 1, 1);
        b.struct_size = backward07;
        Assert.That(NativeMethods.fa_backward_check(&b, 0), Is.EqualTo(FaStatus.Success), Errors.LastErrorMessage());
        b.struct_size = (uint)sizeof(FaBackwardParams);
        Assert.That(NativeMethods.fa_backward_check(&b, 0), Is.EqualTo(FaStatus.InvalidArgument), "a 0.8 size reads the slopes");

        FaSupportQuery q = default;
        q.struct_size = query07;
        q.pass = (int)FaPass.Forward;
        q.dtype = (int)FaDtype.Float16;
        q.head_dim = 64;
        q.alibi = 7;  // past a 0.7 struct: not read
        Assert.That(NativeMethods.fa_query_support(&q), Is.EqualTo(FaStatus.Success), Errors.LastErrorMessage());
        q.struct_size = (uint)sizeof(FaSupportQuery);
        Assert.That(NativeMethods.fa_query_support(&q), Is.EqualTo(FaStatus.InvalidArgument), "a 0.8 query reads alibi");
        Assert.That(Errors.LastErrorMessage(), Does.Contain("query->alibi"));
    }

    [Test]
    public void SupportQueryServesAlibiOnEveryPass()
    {
        SupportResult forward = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, DataType.BFloat16, 64, Causal: true, Softcap: true, Alibi: true));
        SupportResult backward = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Backward, DataType.Float16, 64, Window: true, Varlen: true, KernelPath: KernelPath.Sm80, Alibi: true));
        SupportResult decode = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Decode, DataType.Float16, 64, Causal: true, Alibi: true));
        Assert.Multiple(() =>
        {
            Assert.That(forward.IsSupported, Is.True, forward.Reason);
            Assert.That(backward.IsSupported, Is.True, backward.Reason);
            Assert.That(decode.IsSupported, Is.True, decode.Reason);
        });
    }

    // ---- helpers ----------------------------------------------------------------------------------------------

    private static double[] Doubles(Random random, long count, double std = 1.0) =>
        TestRandom.Normal(random, checked((int)count), std).Select(x => (double)x).ToArray();

    private static double[] Poisoned(long count) => Enumerable.Repeat(double.NaN, checked((int)count)).ToArray();
}
