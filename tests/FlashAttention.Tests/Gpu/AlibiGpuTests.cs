using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// ALiBi (C ABI 0.8, FEATURES.md §2) on the GPU, forward and backward, on each kernel path by name
/// (<see cref="ForwardPathTestBase"/>: Sm90 runs the sm90 kernels where they serve and is refused elsewhere), against the
/// float64 reference with slopes (<see cref="AttentionReference"/>'s alibiSlopes overloads, checked by hand and against
/// finite differences in Cpu/AlibiTests). Fresh random inputs and slopes per case (FA2's draw: uniform [0, 0.3)), outputs
/// poisoned before each call, every element judged by the plain calls' rules: the output and gradients at most twice
/// the error of a same-dtype naive implementation with the same bias (FlashAttention-2's formulas written out here:
/// +m·j for a causal mask without a left window, else -m·|i + off - j|) and under the dtype caps
/// (<see cref="AcceptanceRule"/>, <see cref="BackwardAcceptance"/>); the log-sum-exp by
/// <see cref="AcceptanceRule.JudgeLse(float[], double[])"/>, which sees FA2's causal-form shift. Decode with ALiBi
/// (left pads, paged, splits) is in <see cref="DecodeServingTests"/>' "alibi" cases.
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class AlibiGpuTests : ForwardPathTestBase
{
    public sealed record Case(KernelPath Path, DataType Dtype, AttentionDims Dims, MaskSpec Mask, bool PerBatch)
    {
        public override string ToString() => $"{Path} {Dtype} {Dims} {Mask} slopes {(PerBatch ? "[b, Hq]" : "[Hq]")}";
    }

    public static IEnumerable<TestCaseData> Cases()
    {
        var c = new List<Case>
        {
            new(KernelPath.Sm80, DataType.BFloat16, new(2, 113, 203, 8, 2, 64), new(true, false), false),              // causal column form, GQA 4
            new(KernelPath.Sm80, DataType.Float16, new(1, 203, 113, 4, 4, 128), new(true, false), true),               // causal Sq>Sk: empty rows
            new(KernelPath.Sm80, DataType.BFloat16, new(2, 150, 200, 4, 2, 64), new(true, true), false),               // causal top-left
            new(KernelPath.Sm80, DataType.BFloat16, new(1, 333, 411, 6, 2, 64), new(false, false, 17, 5, 30f), true),  // window + softcap
            new(KernelPath.Sm80, DataType.Float16, new(1, 64, 100, 4, 2, 64), new(true, false, 200, null), false),     // left >= Sk: column form
            new(KernelPath.Sm80, DataType.Float16, new(2, 97, 97, 4, 2, 64), new(true, false, 9, null), true),         // causal window: distance form
            new(KernelPath.Sm80, DataType.Float16, new(2, 17, 1, 4, 1, 64), new(false, false), true),                  // one key, MQA, no mask
            new(KernelPath.Sm80, DataType.BFloat16, new(2, 129, 257, 4, 2, 256), new(false, false), false),            // no mask, D 256
            new(KernelPath.Sm90, DataType.BFloat16, new(1, 203, 113, 8, 2, 128), new(true, false), true),              // causal Sq>Sk, GQA
            new(KernelPath.Sm90, DataType.Float16, new(2, 333, 333, 4, 2, 64), new(false, false, 31, 0, 20f), false),  // window + softcap
            new(KernelPath.Sm90, DataType.BFloat16, new(1, 799, 1023, 2, 1, 128), new(true, true), false),             // causal top-left
            new(KernelPath.Sm90, DataType.Float16, new(2, 257, 300, 4, 2, 256), new(false, false), true),              // no mask, D 256
            new(KernelPath.Sm90, DataType.BFloat16, new(1, 300, 300, 4, 4, 64), new(false, false, null, 0), false),    // window (-1, 0): column form
            new(KernelPath.Auto, DataType.BFloat16, new(2, 113, 113, 4, 4, 128), new(false, false), false),
            new(KernelPath.Auto, DataType.Float16, new(1, 64, 300, 4, 2, 64), new(true, false), true),
        };
        return c.Select(x => new TestCaseData(x).SetName($"Alibi GPU: {x}"));
    }

    /// <summary>Forward with ALiBi (output, LSE), then the backward from our own output and LSE (dq, dk, dv).</summary>
    [TestCaseSource(nameof(Cases))]
    public void ForwardAndBackwardMatchTheReference(Case c)
    {
        AttentionDims d = c.Dims;
        RequireServed(c.Dtype, d);
        Random random = TestRandom.ForCurrentTest(out int seed);
        string context = $"seed {seed}, {c}";
        float[] q = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.QElements));
        float[] k = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.KvElements));
        float[] v = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.KvElements));
        float[] slopes = Slopes(random, c.PerBatch ? d.Batch * d.HeadsQ : d.HeadsQ);
        float[] dOut = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.QElements));
        AttentionOptions options = c.Mask.ToOptions() with { KernelPath = c.Path };
        long[] slopeShape = c.PerBatch ? [d.Batch, d.HeadsQ] : [d.HeadsQ];

        using var gq = DeviceArray.Upload(Device, c.Dtype, q);
        using var gk = DeviceArray.Upload(Device, c.Dtype, k);
        using var gv = DeviceArray.Upload(Device, c.Dtype, v);
        using var ga = DeviceArray.Upload(Device, DataType.Float32, slopes);
        using var go = DeviceArray.Allocate(Device, c.Dtype, d.QElements);
        using var gl = DeviceArray.Allocate(Device, DataType.Float32, d.LseElements);
        go.Poison();
        gl.Poison();
        long[] qShape = [d.Batch, d.SeqQ, d.HeadsQ, d.HeadDim], kShape = [d.Batch, d.SeqK, d.HeadsKv, d.HeadDim];
        var args = new AttentionArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape),
            gl.Tensor([d.Batch, d.HeadsQ, d.SeqQ])) { AlibiSlopes = ga.Tensor(slopeShape) };
        if (!ForwardOnPath(options, c.Dtype, d.HeadDim, varlen: false, () =>
            {
                Attention.Forward(args, options, Stream);
                Stream.Synchronize();
            }, [go, gl], context))
        {
            return; // a refusal, checked
        }

        float[] ours = go.Read();
        float[] lse = gl.Read();
        var shape = new AttentionShape(d.Batch, d.SeqQ, d.SeqK, d.HeadsQ, d.HeadsKv, d.HeadDim);
        double[] slopes64 = slopes.Select(x => (double)x).ToArray();
        var refOut = new double[d.QElements];
        var refLse = new double[d.LseElements];
        AttentionReference.Forward(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v), shape,
            options, ReadOnlySpan<double>.Empty, slopes64, refOut, refLse);
        Func<float, float> round = x => DeviceArray.Round(c.Dtype, x);
        float scale = (float)d.DefaultScale;
        Func<int, int, int, int, float> bias = Bias(slopes, c.PerBatch, d, c.Mask);
        float[] naive = NaiveAttention.ForwardSameDtype(q, k, v, d, c.Mask, scale, round, bias);
        Assert.That(AcceptanceRule.JudgeOutput(ours, naive, refOut, c.Dtype, d, c.Mask), Is.Empty, $"output, {context}");
        Assert.That(AcceptanceRule.JudgeLse(lse, refLse), Is.Empty, $"lse, {context}");

        // ---- backward, from our own forward's output and log-sum-exp ----
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
        { AlibiSlopes = ga.Tensor(slopeShape) };
        Attention.Backward(bargs, options, Stream);
        Stream.Synchronize();

        var rdq = new double[d.QElements];
        var rdk = new double[d.KvElements];
        var rdv = new double[d.KvElements];
        AttentionReference.Backward(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            AttentionReference.ToDouble(dOut), shape, options, ReadOnlySpan<double>.Empty, slopes64, rdq, rdk, rdv, Span<double>.Empty);
        (float[] ndq, float[] ndk, float[] ndv) = NaiveBackward.SameDtype(q, k, v, dOut, d, c.Mask, scale, round, bias);
        (bool[] qZero, bool[] kZero) = BackwardAcceptance.ZeroRows(d, c.Mask);
        Assert.Multiple(() =>
        {
            Assert.That(BackwardAcceptance.Judge("dq", gdq.Read(), ndq, rdq, c.Dtype, d.HeadDim, qZero), Is.Empty, context);
            Assert.That(BackwardAcceptance.Judge("dk", gdk.Read(), ndk, rdk, c.Dtype, d.HeadDim, kZero), Is.Empty, context);
            Assert.That(BackwardAcceptance.Judge("dv", gdv.Read(), ndv, rdv, c.Dtype, d.HeadDim, kZero), Is.Empty, context);
        });
    }

    /// <summary>
    /// A variable-length batch with empty query and key sequences and a length-1 one, [batch, Hq] slopes (the batch is the
    /// sequence index), forward and backward; judged per sequence for the output and over the packed batch for the
    /// gradients (as SinkGpuTests' varlen case: the 2x rule over a one-query, one-key sequence is a coin flip).
    /// </summary>
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 64, true)]
    [TestCase(KernelPath.Sm80, DataType.Float16, 128, false)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 128, true)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 64, false)]
    [TestCase(KernelPath.Auto, DataType.Float16, 64, true)]
    public void VarlenWithEmptySequencesMatchesTheReference(KernelPath path, DataType dtype, int dim, bool causal)
    {
        int[] lensQ = [113, 0, 1, 17, 64], lensK = [203, 5, 1, 0, 64];
        const int hq = 6, hkv = 2;
        RequireServed(dtype, new AttentionDims(1, 1, 1, hq, hkv, dim));
        Random random = TestRandom.ForCurrentTest(out int seed);
        int totalQ = lensQ.Sum(), totalK = lensK.Sum(), nseq = lensQ.Length;
        float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalQ * hq * dim));
        float[] k = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * dim));
        float[] v = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * dim));
        float[] slopes = Slopes(random, nseq * hq);
        float[] dOut = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalQ * hq * dim));
        var spec = causal ? new MaskSpec(true, false) : new MaskSpec(false, false, 40, 3, 15f);
        AttentionOptions options = spec.ToOptions() with { KernelPath = path };
        string context = $"seed {seed}, varlen {dtype} D{dim} {spec} path {path}";

        using var gq = DeviceArray.Upload(Device, dtype, q);
        using var gk = DeviceArray.Upload(Device, dtype, k);
        using var gv = DeviceArray.Upload(Device, dtype, v);
        using var ga = DeviceArray.Upload(Device, DataType.Float32, slopes);
        using var go = DeviceArray.Allocate(Device, dtype, totalQ * hq * dim);
        using var gl = DeviceArray.Allocate(Device, DataType.Float32, hq * totalQ);
        go.Poison();
        gl.Poison();
        using var batch = VarlenBatch.FromLengths(Device, lensQ, lensK);
        long[] qShape = [totalQ, hq, dim], kShape = [totalK, hkv, dim];
        var args = new AttentionArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape), gl.Tensor([hq, totalQ]), batch)
        { AlibiSlopes = ga.Tensor([nseq, hq]) };
        if (!ForwardOnPath(options, dtype, dim, varlen: true, () =>
            {
                Attention.Forward(args, options, Stream);
                Stream.Synchronize();
            }, [go, gl], context))
        {
            return;
        }

        float[] ours = go.Read();
        float[] lse = gl.Read();
        double[] slopes64 = slopes.Select(x => (double)x).ToArray();
        var refOut = new double[ours.Length];
        var refLse = new double[lse.Length];
        AttentionReference.ForwardVarlen(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            lensQ, lensK, hq, hkv, dim, options, ReadOnlySpan<double>.Empty, slopes64, refOut, refLse);
        Assert.That(AcceptanceRule.JudgeLse(lse, refLse), Is.Empty, $"lse, {context}");

        using var gdo = DeviceArray.Upload(Device, dtype, dOut);
        using var gdq = DeviceArray.Allocate(Device, dtype, q.Length);
        using var gdk = DeviceArray.Allocate(Device, dtype, k.Length);
        using var gdv = DeviceArray.Allocate(Device, dtype, v.Length);
        foreach (DeviceArray a in new[] { gdq, gdk, gdv })
        {
            a.Poison();
        }

        var bargs = new BackwardArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape), gdo.Tensor(qShape),
            gl.Tensor([hq, totalQ]), gdq.Tensor(qShape), gdk.Tensor(kShape), gdv.Tensor(kShape), batch)
        { AlibiSlopes = ga.Tensor([nseq, hq]) };
        Attention.Backward(bargs, options, Stream);
        Stream.Synchronize();
        var rdq = new double[q.Length];
        var rdk = new double[k.Length];
        var rdv = new double[v.Length];
        AttentionReference.BackwardVarlen(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            AttentionReference.ToDouble(dOut), lensQ, lensK, hq, hkv, dim, options, ReadOnlySpan<double>.Empty, slopes64, rdq, rdk, rdv,
            Span<double>.Empty);

        float[] dqOurs = gdq.Read(), dkOurs = gdk.Read(), dvOurs = gdv.Read();
        var ndq = new float[q.Length];
        var ndk = new float[k.Length];
        var ndv = new float[v.Length];
        var qZero = new bool[totalQ * hq];
        var kZero = new bool[totalK * hkv];
        float scale = (float)(1.0 / Math.Sqrt(dim));
        Func<float, float> round = x => DeviceArray.Round(dtype, x);
        int rowQ = 0, rowK = 0;
        for (int b = 0; b < nseq; b++)
        {
            int lq = lensQ[b], lk = lensK[b];
            var dims = new AttentionDims(1, lq, lk, hq, hkv, dim);
            string where = $"{context}, sequence {b} (Sq {lq}, Sk {lk})";
            float[] Slice(float[] a, int row, int len, int heads) => a.AsSpan(row * heads * dim, len * heads * dim).ToArray();
            double[] SliceD(double[] a, int row, int len, int heads) => a.AsSpan(row * heads * dim, len * heads * dim).ToArray();
            float[] qs = Slice(q, rowQ, lq, hq), ks = Slice(k, rowK, lk, hkv), vs = Slice(v, rowK, lk, hkv), dos = Slice(dOut, rowQ, lq, hq);
            float[] seqSlopes = slopes.AsSpan(b * hq, hq).ToArray();
            Func<int, int, int, int, float> bias = Bias(seqSlopes, perBatch: false, dims, spec);
            if (lq > 0)
            {
                float[] naive = NaiveAttention.ForwardSameDtype(qs, ks, vs, dims, spec, scale, round, bias);
                Assert.That(AcceptanceRule.JudgeOutput(Slice(ours, rowQ, lq, hq), naive, SliceD(refOut, rowQ, lq, hq), dtype, dims, spec), Is.Empty, where);
            }

            if (lq > 0 && lk > 0)
            {
                (float[] sdq, float[] sdk, float[] sdv) = NaiveBackward.SameDtype(qs, ks, vs, dos, dims, spec, scale, round, bias);
                sdq.CopyTo(ndq, rowQ * hq * dim);
                sdk.CopyTo(ndk, rowK * hkv * dim);
                sdv.CopyTo(ndv, rowK * hkv * dim);
                (bool[] sqZero, bool[] skZero) = BackwardAcceptance.ZeroRows(dims, spec);
                sqZero.CopyTo(qZero, rowQ * hq);
                skZero.CopyTo(kZero, rowK * hkv);
            }
            else
            {
                Assert.That(Slice(dqOurs, rowQ, lq, hq), Is.All.EqualTo(0f), $"dq, {where}");
                Assert.That(Slice(dkOurs, rowK, lk, hkv), Is.All.EqualTo(0f), $"dk, {where}");
                Assert.That(Slice(dvOurs, rowK, lk, hkv), Is.All.EqualTo(0f), $"dv, {where}");
                Array.Fill(kZero, true, rowK * hkv, lk * hkv);
                Array.Fill(qZero, true, rowQ * hq, lq * hq);
            }

            rowQ += lq;
            rowK += lk;
        }

        Assert.Multiple(() =>
        {
            Assert.That(BackwardAcceptance.Judge("dq", dqOurs, ndq, rdq, dtype, dim, qZero), Is.Empty, context);
            Assert.That(BackwardAcceptance.Judge("dk", dkOurs, ndk, rdk, dtype, dim, kZero), Is.Empty, context);
            Assert.That(BackwardAcceptance.Judge("dv", dvOurs, ndv, rdv, dtype, dim, kZero), Is.Empty, context);
        });
    }

    /// <summary>
    /// Slopes of 0 on a causal call are the call without slopes bit for bit (both run the kLocal variant; the bias adds
    /// exactly 0, so the ALiBi branch must change nothing else), on each path: a check that the slopes are read for the
    /// right head and that the branch leaves the masks and the LSE alone.
    /// </summary>
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 64, true)]
    [TestCase(KernelPath.Sm80, DataType.Float16, 128, true)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 128, true)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 64, true)]
    public void ZeroSlopesGiveThePlainOutput(KernelPath path, DataType dtype, int dim, bool causal)
    {
        var d = new AttentionDims(2, 203, 257, 4, 2, dim);
        RequireServed(dtype, d);
        Random random = TestRandom.ForCurrentTest(out int seed);
        string context = $"seed {seed}, {path} {dtype} D{dim} causal {causal}";
        float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, d.QElements));
        float[] k = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, d.KvElements));
        float[] v = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, d.KvElements));
        AttentionOptions options = new MaskSpec(causal, false).ToOptions() with { KernelPath = path };
        using var gq = DeviceArray.Upload(Device, dtype, q);
        using var gk = DeviceArray.Upload(Device, dtype, k);
        using var gv = DeviceArray.Upload(Device, dtype, v);
        using var ga = DeviceArray.Upload(Device, DataType.Float32, new float[d.HeadsQ]);
        long[] qShape = [d.Batch, d.SeqQ, d.HeadsQ, d.HeadDim], kShape = [d.Batch, d.SeqK, d.HeadsKv, d.HeadDim];
        (float[] O, float[] Lse)? Run(bool withSlopes)
        {
            using var go = DeviceArray.Allocate(Device, dtype, d.QElements);
            using var gl = DeviceArray.Allocate(Device, DataType.Float32, d.LseElements);
            go.Poison();
            gl.Poison();
            var args = new AttentionArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape),
                gl.Tensor([d.Batch, d.HeadsQ, d.SeqQ])) { AlibiSlopes = withSlopes ? ga.Tensor([d.HeadsQ]) : null };
            bool ran = ForwardOnPath(options, dtype, d.HeadDim, varlen: false, () =>
            {
                Attention.Forward(args, options, Stream);
                Stream.Synchronize();
            }, [go, gl], context);
            return ran ? (go.Read(), gl.Read()) : null;
        }

        if (Run(false) is not { } plain || Run(true) is not { } zero)
        {
            return;
        }

        // The causal mask picks the same variant either way, so the bits must agree.
        Assert.Multiple(() =>
        {
            Assert.That(zero.O, Is.EqualTo(plain.O), $"output, {context}");
            Assert.That(zero.Lse, Is.EqualTo(plain.Lse), $"lse, {context}");
        });
    }

    // ---- helpers ----------------------------------------------------------------------------------------------

    private static float[] Slopes(Random random, int count) =>
        TestRandom.Uniform(random, count, 0, 0.3).Select(x => (float)x).ToArray();

    /// <summary>
    /// FlashAttention-2's bias, written out from FEATURES.md §2: the causal column form +m·j for a causal mask (or right 0)
    /// without a left window (or one of at least Sk), else -m·|i + off - j|, off = Sk - Sq bottom-right, 0 top-left.
    /// </summary>
    private static Func<int, int, int, int, float> Bias(float[] slopes, bool perBatch, AttentionDims d, MaskSpec mask)
    {
        bool columnForm = (mask.Causal || mask.Right == 0) && (mask.Left is not { } left || left >= d.SeqK);
        int off = mask.TopLeft ? 0 : d.SeqK - d.SeqQ;
        return (b, h, i, j) =>
        {
            float m = perBatch ? slopes[(b * d.HeadsQ) + h] : slopes[h];
            return columnForm ? m * j : -m * Math.Abs(i + off - j);
        };
    }
}
