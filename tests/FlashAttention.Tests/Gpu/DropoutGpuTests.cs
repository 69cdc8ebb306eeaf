using FlashAttn.Internal;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// Dropout (C ABI 0.9, FEATURES.md §1) on the GPU (the kernels <see cref="KernelPath.Auto"/> takes: sm90 on Hopper in a
/// build with sm_90a code, sm80 elsewhere):
/// the keep mask the library writes (<see cref="AttentionArguments.DropoutMask"/>) against the managed Philox twin
/// (<see cref="Philox"/>, checked against Random123's vectors and FA2's fragment walk in Cpu tests) bit for bit; the
/// output against the float64 reference under the same (seed, offset) (<see cref="ReferenceExtras"/>), which checks the
/// attention kernel's own in-register mask (a fragment-mapping error drops other elements and moves the output far past
/// the bar); the log-sum-exp unchanged by dropout; the keep rate of a large call against (T + 1) / 256 within six
/// standard deviations; the backward's gradients against the reference (FA2's dP = Z∘(dO Vᵀ)/(1-p), dS = P∘(dP - D)).
/// Output and gradients are judged by the rule of the other GPU tests: at most twice the error of a same-dtype naive
/// attention under the written mask, and the dtype cap. A
/// device-offset-free rerun reproducing the output bitwise. Fresh random inputs per case, outputs poisoned.
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class DropoutGpuTests : ForwardPathTestBase
{
    public sealed record Case(DataType Dtype, AttentionDims Dims, MaskSpec Mask, float P, ulong Seed, ulong Offset)
    {
        public override string ToString() => $"{Dtype} {Dims} {Mask} p={P} seed={Seed:x} offset={Offset}";
    }

    public static IEnumerable<TestCaseData> Cases()
    {
        var c = new List<Case>
        {
            new(DataType.BFloat16, new(2, 113, 203, 8, 2, 64), new(true, false), 0.17f, 0x1234_5678_9ABC_DEF0, 0),      // causal, GQA 4
            new(DataType.Float16, new(1, 203, 113, 4, 4, 128), new(true, false), 0.17f, 42, 128),                         // causal Sq>Sk: empty rows
            new(DataType.BFloat16, new(1, 333, 411, 6, 2, 64), new(false, false, 17, 5, 30f), 0.3f, 7, 4096),             // window + softcap
            new(DataType.Float16, new(2, 129, 257, 4, 2, 256), new(false, false), 0.1f, 99, 1UL << 40),                   // no mask, D 256, offset past 2^32
            new(DataType.BFloat16, new(2, 64, 64, 4, 2, 32), new(false, false), 0.5f, 3, 8),                              // D 32
            new(DataType.Float16, new(1, 97, 300, 2, 1, 96), new(true, true), 0.6f, 5, 0),                                // top-left, MQA, D 96, T = 101
            new(DataType.BFloat16, new(1, 150, 150, 4, 4, 192), new(false, false), 0.17f, 11, 64),                        // D 192
        };
        return c.Select(x => new TestCaseData(x).SetName($"Dropout GPU: {x}"));
    }

    /// <summary>The mask bit for bit, the output and LSE against the reference, then the backward's gradients.</summary>
    [TestCaseSource(nameof(Cases))]
    public void MaskOutputAndGradientsMatchTheReference(Case c)
    {
        AttentionDims d = c.Dims;
        RequireServed(c.Dtype, d);
        Random random = TestRandom.ForCurrentTest(out int seed);
        string context = $"seed {seed}, {c}";
        float[] q = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.QElements));
        float[] k = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.KvElements));
        float[] v = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.KvElements));
        float[] dOut = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.QElements));
        AttentionOptions options = c.Mask.ToOptions() with { KernelPath = KernelPath.Auto };
        long maskElements = (long)d.Batch * d.HeadsQ * d.SeqQ * d.SeqK;

        using var gq = DeviceArray.Upload(Device, c.Dtype, q);
        using var gk = DeviceArray.Upload(Device, c.Dtype, k);
        using var gv = DeviceArray.Upload(Device, c.Dtype, v);
        using var go = DeviceArray.Allocate(Device, c.Dtype, d.QElements);
        using var gl = DeviceArray.Allocate(Device, DataType.Float32, d.LseElements);
        using var gm = new DeviceBuffer<byte>(Device, maskElements);
        var poison = new byte[maskElements];
        Array.Fill(poison, (byte)0xA5);
        gm.CopyFrom(poison);
        go.Poison();
        gl.Poison();
        long[] qShape = [d.Batch, d.SeqQ, d.HeadsQ, d.HeadDim], kShape = [d.Batch, d.SeqK, d.HeadsKv, d.HeadDim];
        var args = new AttentionArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape),
            gl.Tensor([d.Batch, d.HeadsQ, d.SeqQ]))
        {
            DropoutP = c.P,
            DropoutSeed = c.Seed,
            DropoutOffset = c.Offset,
            DropoutMask = DeviceTensor.FromBuffer(gm, [d.Batch, d.HeadsQ, d.SeqQ, d.SeqK]),
        };
        Attention.Forward(args, options, Stream);
        Stream.Synchronize();

        // ---- the mask, bit for bit, every element (the mask kernel writes hidden keys too) ----
        var mask = new byte[maskElements];
        gm.CopyTo(mask);
        uint threshold = Philox.DropoutThreshold(c.P);
        long wrong = 0;
        string firstWrong = string.Empty;
        for (int b = 0; b < d.Batch; b++)
        {
            for (int h = 0; h < d.HeadsQ; h++)
            {
                for (int i = 0; i < d.SeqQ; i++)
                {
                    for (int j = 0; j < d.SeqK; j++)
                    {
                        long at = ((((long)b * d.HeadsQ) + h) * d.SeqQ + i) * d.SeqK + j;
                        byte want = Philox.DropoutKeep(c.Seed, c.Offset, b, h, d.HeadsQ, (uint)i, (uint)j, threshold) ? (byte)1 : (byte)0;
                        if (mask[at] != want && wrong++ == 0)
                        {
                            firstWrong = $"[{b}, {h}, {i}, {j}] is {mask[at]}, the managed Philox says {want}";
                        }
                    }
                }
            }
        }

        Assert.That(wrong, Is.Zero, $"mask elements differing from the managed Philox: {wrong}; first {firstWrong}; {context}");

        // ---- output and LSE against the float64 reference under the same stream ----
        var shape = new AttentionShape(d.Batch, d.SeqQ, d.SeqK, d.HeadsQ, d.HeadsKv, d.HeadDim);
        var extras = new ReferenceExtras { DropoutP = c.P, DropoutSeed = c.Seed, DropoutOffset = c.Offset };
        var refOut = new double[d.QElements];
        var refLse = new double[d.LseElements];
        AttentionReference.ForwardWithExtras(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            shape, options, extras, refOut, refLse);
        float[] ours = go.Read();
        Func<float, float> round = x => DeviceArray.Round(c.Dtype, x);
        float scale = (float)d.DefaultScale;
        var naiveDropout = new NaiveAttention.Dropout(c.P, (b, h, i, j) => mask[((((long)b * d.HeadsQ) + h) * d.SeqQ + i) * d.SeqK + j] == 1);
        float[] naive = NaiveAttention.ForwardSameDtype(q, k, v, d, c.Mask, scale, round, dropout: naiveDropout);
        Assert.That(AcceptanceRule.JudgeOutput(ours, naive, refOut, c.Dtype, d, c.Mask), Is.Empty, $"output, {context}");
        Assert.That(AcceptanceRule.JudgeLse(gl.Read(), refLse), Is.Empty, $"lse (dropout leaves it unchanged), {context}");

        // ---- backward, from our own output and LSE, the same (seed, offset) ----
        using var gdo = DeviceArray.Upload(Device, c.Dtype, dOut);
        using var gdq = DeviceArray.Allocate(Device, c.Dtype, d.QElements);
        using var gdk = DeviceArray.Allocate(Device, c.Dtype, d.KvElements);
        using var gdv = DeviceArray.Allocate(Device, c.Dtype, d.KvElements);
        foreach (DeviceArray a in new[] { gdq, gdk, gdv })
        {
            a.Poison();
        }

        var bargs = new BackwardArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape), gdo.Tensor(qShape),
            gl.Tensor([d.Batch, d.HeadsQ, d.SeqQ]), gdq.Tensor(qShape), gdk.Tensor(kShape), gdv.Tensor(kShape))
        { DropoutP = c.P, DropoutSeed = c.Seed, DropoutOffset = c.Offset };
        Attention.Backward(bargs, options, Stream);
        Stream.Synchronize();
        var rdq = new double[d.QElements];
        var rdk = new double[d.KvElements];
        var rdv = new double[d.KvElements];
        AttentionReference.BackwardWithExtras(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            AttentionReference.ToDouble(dOut), shape, options, extras, rdq, rdk, rdv, Span<double>.Empty);
        (float[] ndq, float[] ndk, float[] ndv) = NaiveBackward.SameDtype(q, k, v, dOut, d, c.Mask, scale, round, dropout: naiveDropout);
        (bool[] qZero, bool[] kZero) = BackwardAcceptance.ZeroRows(d, c.Mask);
        Assert.Multiple(() =>
        {
            Assert.That(BackwardAcceptance.Judge("dq", gdq.Read(), ndq, rdq, c.Dtype, d.HeadDim, qZero), Is.Empty, context);
            Assert.That(BackwardAcceptance.Judge("dk", gdk.Read(), ndk, rdk, c.Dtype, d.HeadDim, kZero), Is.Empty, context);
            Assert.That(BackwardAcceptance.Judge("dv", gdv.Read(), ndv, rdv, c.Dtype, d.HeadDim, kZero), Is.Empty, context);
        });
    }

    /// <summary>
    /// The keep rate over a large call (2 x 8 heads x 1024 x 1024 = 16.8M elements) is (T + 1) / 256 within six standard
    /// deviations, for FA2's test p (0.17, T = 211) and p = 0.6 (T = 101, where the float threshold differs from the
    /// double one); a rerun with the same (seed, offset) gives the same output bitwise, another offset a different mask.
    /// </summary>
    [TestCase(0.17f)]
    [TestCase(0.6f)]
    public void KeepRateAndReproducibility(float p)
    {
        var d = new AttentionDims(2, 1024, 1024, 8, 8, 64);
        RequireServed(DataType.BFloat16, d);
        Random random = TestRandom.ForCurrentTest(out int seed);
        float[] q = ForwardRun.RoundAll(DataType.BFloat16, TestRandom.Normal(random, d.QElements));
        float[] k = ForwardRun.RoundAll(DataType.BFloat16, TestRandom.Normal(random, d.KvElements));
        long n = (long)d.Batch * d.HeadsQ * d.SeqQ * d.SeqK;
        using var gq = DeviceArray.Upload(Device, DataType.BFloat16, q);
        using var gk = DeviceArray.Upload(Device, DataType.BFloat16, k);
        using var go = DeviceArray.Allocate(Device, DataType.BFloat16, d.QElements);
        using var gm = new DeviceBuffer<byte>(Device, n);
        long[] qShape = [d.Batch, d.SeqQ, d.HeadsQ, d.HeadDim];
        AttentionArguments Args(ulong offset) => new(gq.Tensor(qShape), gk.Tensor(qShape), gk.Tensor(qShape), go.Tensor(qShape), null)
        {
            DropoutP = p,
            DropoutSeed = (ulong)seed,
            DropoutOffset = offset,
            DropoutMask = DeviceTensor.FromBuffer(gm, [d.Batch, d.HeadsQ, d.SeqQ, d.SeqK]),
        };
        var options = new AttentionOptions();
        Attention.Forward(Args(0), options, Stream);
        Stream.Synchronize();
        var mask = new byte[n];
        gm.CopyTo(mask);
        long kept = mask.LongCount(x => x == 1);
        Assert.That(mask.All(x => x <= 1), Is.True, "the mask holds 0 and 1 only");
        double rate = (Philox.DropoutThreshold(p) + 1) / 256.0;
        double sigma = Math.Sqrt(rate * (1 - rate) / n);
        Assert.That((double)kept / n, Is.EqualTo(rate).Within(6 * sigma), $"keep rate, p = {p}, seed {seed}");

        float[] first = go.Read();
        go.Poison();
        Attention.Forward(Args(0), options, Stream);
        Stream.Synchronize();
        Assert.That(go.Read(), Is.EqualTo(first), "the same (seed, offset) reproduces the output bitwise");
        Attention.Forward(Args((ulong)d.Batch * (ulong)d.HeadsQ * 32), options, Stream);
        Stream.Synchronize();
        var other = new byte[n];
        gm.CopyTo(other);
        Assert.That(other, Is.Not.EqualTo(mask), "the next call's offset draws another mask");
    }
}
