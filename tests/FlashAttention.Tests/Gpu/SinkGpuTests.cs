using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// Learnable sinks (C ABI 0.7, FEATURES.md §7) on the GPU, forward and backward, on each kernel path by name
/// (<see cref="ForwardPathTestBase"/>: Sm90 runs the sm90 forward where it serves and is refused elsewhere), against the
/// float64 reference with sinks (<see cref="AttentionReference"/>'s sinks overloads, themselves checked against finite
/// differences in Cpu/SinkTests). Fresh random inputs and sinks per case, outputs poisoned (NaN bytes) before each
/// call, every element judged: the output and gradients by the same rules as the plain calls
/// (<see cref="AcceptanceRule"/>, <see cref="BackwardAcceptance"/>: at most twice the error of a same-dtype naive
/// implementation, here with the sink in its denominator, and under the dtype caps); the log-sum-exp by
/// <see cref="AcceptanceRule.JudgeLse(float[], double[])"/>; rows that see no key exactly O = 0 and LSE = σ; dsinks by
/// <see cref="SinkGradientCheck"/> (its per-row terms by the gradients' rule, the kernels' reduction of them, and end to
/// end relative to the sum's condition).
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class SinkGpuTests : ForwardPathTestBase
{
    public sealed record Case(KernelPath Path, DataType Dtype, AttentionDims Dims, MaskSpec Mask)
    {
        public override string ToString() => $"{Path} {Dtype} {Dims} {Mask}";
    }

    public static IEnumerable<TestCaseData> Cases()
    {
        var c = new List<(KernelPath, DataType, AttentionDims, MaskSpec)>
        {
            (KernelPath.Sm80, DataType.BFloat16, new(2, 113, 203, 8, 2, 64), new(true, false)),                 // causal Sq<Sk, GQA 4
            (KernelPath.Sm80, DataType.Float16, new(1, 203, 113, 4, 4, 128), new(true, false)),                 // causal Sq>Sk: empty rows
            (KernelPath.Sm80, DataType.BFloat16, new(1, 333, 411, 6, 2, 64), new(false, false, 17, 5, 30f)),    // window + softcap
            (KernelPath.Sm80, DataType.Float16, new(2, 17, 1, 4, 1, 64), new(false, false)),                    // one key, MQA
            (KernelPath.Sm90, DataType.BFloat16, new(1, 203, 113, 8, 2, 128), new(true, false)),                // causal Sq>Sk, GQA
            (KernelPath.Sm90, DataType.Float16, new(2, 333, 333, 4, 2, 64), new(false, false, 31, 0, 20f)),     // window + softcap
            (KernelPath.Sm90, DataType.BFloat16, new(1, 799, 1023, 2, 1, 128), new(true, true)),               // causal top-left
            (KernelPath.Auto, DataType.BFloat16, new(2, 113, 113, 4, 4, 128), new(false, false)),
            (KernelPath.Auto, DataType.Float16, new(1, 64, 300, 4, 2, 64), new(false, false, 0, 0)),           // window (0, 0)
        };
        return c.Select(x => new TestCaseData(new Case(x.Item1, x.Item2, x.Item3, x.Item4)).SetName($"Sinks GPU: {new Case(x.Item1, x.Item2, x.Item3, x.Item4)}"));
    }

    /// <summary>Forward with sinks: output, LSE (σ on rows that see no key), then the backward: dq, dk, dv and dsinks.</summary>
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
        float[] sinks = TestRandom.Normal(random, d.HeadsQ, 2.0);  // fp32, what the kernels read
        float[] dOut = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.QElements));
        AttentionOptions options = c.Mask.ToOptions() with { KernelPath = c.Path };

        using var gq = DeviceArray.Upload(Device, c.Dtype, q);
        using var gk = DeviceArray.Upload(Device, c.Dtype, k);
        using var gv = DeviceArray.Upload(Device, c.Dtype, v);
        using var gs = DeviceArray.Upload(Device, DataType.Float32, sinks);
        using var go = DeviceArray.Allocate(Device, c.Dtype, d.QElements);
        using var gl = DeviceArray.Allocate(Device, DataType.Float32, d.LseElements);
        go.Poison();
        gl.Poison();
        long[] qShape = [d.Batch, d.SeqQ, d.HeadsQ, d.HeadDim], kShape = [d.Batch, d.SeqK, d.HeadsKv, d.HeadDim];
        var args = new AttentionArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape),
            gl.Tensor([d.Batch, d.HeadsQ, d.SeqQ])) { Sinks = gs.Tensor([d.HeadsQ]) };
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
        double[] sinks64 = sinks.Select(x => (double)x).ToArray();
        var refOut = new double[d.QElements];
        var refLse = new double[d.LseElements];
        AttentionReference.Forward(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v), shape,
            options, sinks64, refOut, refLse);
        Func<float, float> round = x => DeviceArray.Round(c.Dtype, x);
        float scale = (float)d.DefaultScale;
        float[] naive = NaiveSink.ForwardSameDtype(q, k, v, sinks, d, c.Mask, scale, round);
        Assert.That(AcceptanceRule.JudgeOutput(ours, naive, refOut, c.Dtype, d, c.Mask), Is.Empty, $"output, {context}");
        Assert.That(AcceptanceRule.JudgeLse(lse, refLse), Is.Empty, $"lse, {context}");
        AssertEmptyRows(lse, sinks, d, c.Mask, context);

        // ---- backward, from our own forward's output and log-sum-exp ----
        using var gdo = DeviceArray.Upload(Device, c.Dtype, dOut);
        using var gdq = DeviceArray.Allocate(Device, c.Dtype, d.QElements);
        using var gdk = DeviceArray.Allocate(Device, c.Dtype, d.KvElements);
        using var gdv = DeviceArray.Allocate(Device, c.Dtype, d.KvElements);
        using var gds = DeviceArray.Allocate(Device, DataType.Float32, d.HeadsQ);
        foreach (DeviceArray a in new[] { gdq, gdk, gdv, gds })
        {
            a.Poison();
        }

        var bargs = new BackwardArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape), gdo.Tensor(qShape),
            gl.Tensor([d.Batch, d.HeadsQ, d.SeqQ]), gdq.Tensor(qShape), gdk.Tensor(kShape), gdv.Tensor(kShape))
        { Sinks = gs.Tensor([d.HeadsQ]), DSinks = gds.Tensor([d.HeadsQ]) };
        Attention.Backward(bargs, options, Stream);
        Stream.Synchronize();

        var rdq = new double[d.QElements];
        var rdk = new double[d.KvElements];
        var rdv = new double[d.KvElements];
        var rds = new double[d.HeadsQ];
        AttentionReference.Backward(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            AttentionReference.ToDouble(dOut), shape, options, sinks64, rdq, rdk, rdv, rds);
        (float[] ndq, float[] ndk, float[] ndv, _, float[] nTerms) = NaiveSink.BackwardSameDtype(q, k, v, sinks, dOut, d, c.Mask, scale, round);
        (bool[] qZero, bool[] kZero) = BackwardAcceptance.ZeroRows(d, c.Mask);
        int qRow = d.HeadDim, kRow = d.HeadDim;
        Assert.Multiple(() =>
        {
            Assert.That(BackwardAcceptance.Judge("dq", gdq.Read(), ndq, rdq, c.Dtype, qRow, qZero), Is.Empty, context);
            Assert.That(BackwardAcceptance.Judge("dk", gdk.Read(), ndk, rdk, c.Dtype, kRow, kZero), Is.Empty, context);
            Assert.That(BackwardAcceptance.Judge("dv", gdv.Read(), ndv, rdv, c.Dtype, kRow, kZero), Is.Empty, context);
            // dsinks (fp32, a sum over rows of mixed-sign terms): its per-row terms by the gradients' rule, the kernels'
            // reduction of them to a float32 bound, and end to end relative to the sum's condition (SinkGradientCheck).
            Assert.That(SinkGradientCheck.Judge(gds.Read(), ours, lse, nTerms, refOut, refLse, rds, dOut, sinks, d.Batch, d.SeqQ, d.HeadsQ,
                d.HeadDim, c.Dtype), Is.Empty, context);
        });

        // dsinks is overwritten, not accumulated, and bitwise reproducible (fixed-order sums) without Deterministic:
        // a second backward into the same (not re-poisoned) buffer gives the same bits.
        float[] first = gds.Read();
        Attention.Backward(bargs, options, Stream);
        Stream.Synchronize();
        Assert.That(gds.Read(), Is.EqualTo(first), $"dsinks of a second, identical backward (must not accumulate, must not vary), {context}");
    }

    /// <summary>A variable-length batch with empty query and key sequences and a length-1 one, forward and backward.</summary>
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 64)]
    [TestCase(KernelPath.Sm80, DataType.Float16, 128)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 128)]
    [TestCase(KernelPath.Auto, DataType.Float16, 64)]
    public void VarlenWithEmptySequencesMatchesTheReference(KernelPath path, DataType dtype, int dim)
    {
        int[] lensQ = [113, 0, 1, 17, 64], lensK = [203, 5, 1, 0, 64];
        const int hq = 6, hkv = 2;
        RequireServed(dtype, new AttentionDims(1, 1, 1, hq, hkv, dim));
        Random random = TestRandom.ForCurrentTest(out int seed);
        int totalQ = lensQ.Sum(), totalK = lensK.Sum();
        float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalQ * hq * dim));
        float[] k = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * dim));
        float[] v = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * dim));
        float[] sinks = TestRandom.Normal(random, hq, 2.0);
        float[] dOut = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalQ * hq * dim));
        var spec = new MaskSpec(true, false);
        AttentionOptions options = spec.ToOptions() with { KernelPath = path };
        string context = $"seed {seed}, varlen {dtype} D{dim} {spec} path {path}";

        using var gq = DeviceArray.Upload(Device, dtype, q);
        using var gk = DeviceArray.Upload(Device, dtype, k);
        using var gv = DeviceArray.Upload(Device, dtype, v);
        using var gs = DeviceArray.Upload(Device, DataType.Float32, sinks);
        using var go = DeviceArray.Allocate(Device, dtype, totalQ * hq * dim);
        using var gl = DeviceArray.Allocate(Device, DataType.Float32, hq * totalQ);
        go.Poison();
        gl.Poison();
        using var batch = VarlenBatch.FromLengths(Device, lensQ, lensK);
        long[] qShape = [totalQ, hq, dim], kShape = [totalK, hkv, dim];
        var args = new AttentionArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape), gl.Tensor([hq, totalQ]), batch)
        { Sinks = gs.Tensor([hq]) };
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
        double[] sinks64 = sinks.Select(x => (double)x).ToArray();
        var refOut = new double[ours.Length];
        var refLse = new double[lse.Length];
        AttentionReference.ForwardVarlen(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            lensQ, lensK, hq, hkv, dim, options, sinks64, refOut, refLse);
        Assert.That(AcceptanceRule.JudgeLse(lse, refLse), Is.Empty, $"lse, {context}");

        using var gdo = DeviceArray.Upload(Device, dtype, dOut);
        using var gdq = DeviceArray.Allocate(Device, dtype, q.Length);
        using var gdk = DeviceArray.Allocate(Device, dtype, k.Length);
        using var gdv = DeviceArray.Allocate(Device, dtype, v.Length);
        using var gds = DeviceArray.Allocate(Device, DataType.Float32, hq);
        foreach (DeviceArray a in new[] { gdq, gdk, gdv, gds })
        {
            a.Poison();
        }

        var bargs = new BackwardArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape), gdo.Tensor(qShape),
            gl.Tensor([hq, totalQ]), gdq.Tensor(qShape), gdk.Tensor(kShape), gdv.Tensor(kShape), batch)
        { Sinks = gs.Tensor([hq]), DSinks = gds.Tensor([hq]) };
        Attention.Backward(bargs, options, Stream);
        Stream.Synchronize();
        var rdq = new double[q.Length];
        var rdk = new double[k.Length];
        var rdv = new double[v.Length];
        var rds = new double[hq];
        AttentionReference.BackwardVarlen(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            AttentionReference.ToDouble(dOut), lensQ, lensK, hq, hkv, dim, options, sinks64, rdq, rdk, rdv, rds);

        // The same-dtype naive bar, one sequence at a time (fixed-length naive over each), stitched into the packed
        // layout and judged over the whole batch, as BackwardAccuracyTests' variable-length backward does: the 2x rule
        // compares two relative L2 errors, which is sound over many rows but a coin flip over a sequence of one query
        // and one key (its dq is Hq scalars times k: the H200 run saw 5.9e-4 against 2 x 2.6e-4 in fp16 and 4.6e-3
        // against 2 x 2.2e-3 in bf16 there, and a CPU emulation of the kernels' arithmetic fails that per-sequence
        // comparison in about 23% of seeds). Each sequence keeps its own dtype cap and its structural zeros.
        float[] dqOurs = gdq.Read(), dkOurs = gdk.Read(), dvOurs = gdv.Read(), dsOurs = gds.Read();
        var ndq = new float[q.Length];
        var ndk = new float[k.Length];
        var ndv = new float[v.Length];
        var nTerms = new float[hq * totalQ];  // [hq, totalQ], as the LSE
        var qZero = new bool[totalQ * hq];
        var kZero = new bool[totalK * hkv];
        float scale = (float)(1.0 / Math.Sqrt(dim));
        Func<float, float> round = x => DeviceArray.Round(dtype, x);
        double cap = dtype == DataType.BFloat16 ? BackwardAcceptance.Bf16Cap : BackwardAcceptance.Fp16Cap;
        int rowQ = 0, rowK = 0;
        for (int b = 0; b < lensQ.Length; b++)
        {
            int lq = lensQ[b], lk = lensK[b];
            var dims = new AttentionDims(1, lq, lk, hq, hkv, dim);
            string where = $"{context}, sequence {b} (Sq {lq}, Sk {lk})";
            float[] Slice(float[] a, int row, int len, int heads) => a.AsSpan(row * heads * dim, len * heads * dim).ToArray();
            double[] SliceD(double[] a, int row, int len, int heads) => a.AsSpan(row * heads * dim, len * heads * dim).ToArray();
            float[] qs = Slice(q, rowQ, lq, hq), ks = Slice(k, rowK, lk, hkv), vs = Slice(v, rowK, lk, hkv), dos = Slice(dOut, rowQ, lq, hq);
            if (lq > 0)
            {
                float[] naive = NaiveSink.ForwardSameDtype(qs, ks, vs, sinks, dims, spec, scale, round);
                Assert.That(AcceptanceRule.JudgeOutput(Slice(ours, rowQ, lq, hq), naive, SliceD(refOut, rowQ, lq, hq), dtype, dims, spec), Is.Empty, where);
                for (int h = 0; h < hq; h++)
                {
                    for (int i = 0; i < (lk == 0 ? lq : 0); i++)
                    {
                        Assert.That(lse[(h * totalQ) + rowQ + i], Is.EqualTo(sinks[h]), $"lse of a row of an empty key sequence is the sink, {where}");
                    }
                }
            }

            if (lq > 0 && lk > 0)
            {
                (float[] sdq, float[] sdk, float[] sdv, _, float[] sTerms) = NaiveSink.BackwardSameDtype(qs, ks, vs, sinks, dos, dims, spec, scale, round);
                sdq.CopyTo(ndq, rowQ * hq * dim);
                sdk.CopyTo(ndk, rowK * hkv * dim);
                sdv.CopyTo(ndv, rowK * hkv * dim);
                (bool[] sqZero, bool[] skZero) = BackwardAcceptance.ZeroRows(dims, spec);
                sqZero.CopyTo(qZero, rowQ * hq);
                skZero.CopyTo(kZero, rowK * hkv);
                for (int h = 0; h < hq; h++)
                {
                    Array.Copy(sTerms, h * lq, nTerms, (h * totalQ) + rowQ, lq);
                }

                foreach ((string name, float[] got, double[] exact) in new[]
                {
                    ("dq", Slice(dqOurs, rowQ, lq, hq), SliceD(rdq, rowQ, lq, hq)),
                    ("dk", Slice(dkOurs, rowK, lk, hkv), SliceD(rdk, rowK, lk, hkv)),
                    ("dv", Slice(dvOurs, rowK, lk, hkv), SliceD(rdv, rowK, lk, hkv)),
                })
                {
                    double err = Numerics.RelativeL2(got, exact);
                    Assert.That(err, Is.LessThanOrEqualTo(cap), $"{name} of the sequence: relative L2 error above the dtype cap, {where}");
                }
            }
            else
            {
                // No query or no key: every gradient of the sequence is exactly 0.
                Assert.That(Slice(dqOurs, rowQ, lq, hq), Is.All.EqualTo(0f), $"dq, {where}");
                Assert.That(Slice(dkOurs, rowK, lk, hkv), Is.All.EqualTo(0f), $"dk, {where}");
                Assert.That(Slice(dvOurs, rowK, lk, hkv), Is.All.EqualTo(0f), $"dv, {where}");
                for (int j = 0; j < lk * hkv; j++)
                {
                    kZero[(rowK * hkv) + j] = true;  // keys no query sees
                }

                for (int i = 0; i < lq * hq; i++)
                {
                    qZero[(rowQ * hq) + i] = true;  // queries that see no key
                }
            }

            rowQ += lq;
            rowK += lk;
        }

        Assert.Multiple(() =>
        {
            Assert.That(BackwardAcceptance.Judge("dq", dqOurs, ndq, rdq, dtype, dim, qZero), Is.Empty, context);
            Assert.That(BackwardAcceptance.Judge("dk", dkOurs, ndk, rdk, dtype, dim, kZero), Is.Empty, context);
            Assert.That(BackwardAcceptance.Judge("dv", dvOurs, ndv, rdv, dtype, dim, kZero), Is.Empty, context);
            // The packed batch is one row set for the sinks: [hq, totalQ] terms (B = 1, Sq = totalQ).
            Assert.That(SinkGradientCheck.Judge(dsOurs, ours, lse, nTerms, refOut, refLse, rds, dOut, sinks, 1, totalQ, hq, dim, dtype),
                Is.Empty, context);
        });
    }

    /// <summary>
    /// The exact relation between a call with sinks and the plain call on the same inputs and path (FEATURES.md §7):
    /// lse_s = log(e^lse + e^σ) and out_s = out · sigmoid(lse - σ), since the sink changes only each row's denominator;
    /// rows that see no key give out_s = 0 and lse_s = σ exactly. Checked on the fp8 (e4m3) forward too, which shares
    /// the sm90 epilogue (its P offset and descales enter the normalisation the sink joins). Bounds: the relation holds
    /// in fp32 up to the two outputs' roundings to their dtype (2 ulp of the dtype, relative, plus one
    /// subnormal spacing of the dtype: 2^-24 in fp16), the LSE to 1e-5. The counts (rows that see no key, the weights'
    /// range) cover every row, however many problems were found.
    /// </summary>
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 64)]
    [TestCase(KernelPath.Sm80, DataType.Float16, 128)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 128)]
    [TestCase(KernelPath.Sm90, DataType.Float8E4M3, 128)]
    [TestCase(KernelPath.Sm90, DataType.Float8E4M3, 256)]
    public void SinksRescaleThePlainCall(KernelPath path, DataType dtype, int dim)
    {
        bool fp8 = dtype == DataType.Float8E4M3;
        var d = new AttentionDims(2, 203, 113, 8, 2, dim);  // causal Sq > Sk: rows 0..89 see no key
        if (fp8 && !(ForwardPaths.Sm90ServesForward(Device) && ForwardPaths.BuildHasFp8Forward))
        {
            Assert.Ignore($"the fp8 forward is served by the sm90 kernels only (compute capability 9.0, a build with sm90 fp8 kernels); {Device}");
        }

        if (!fp8)
        {
            RequireServed(dtype, d);
        }

        Random random = TestRandom.ForCurrentTest(out int seed);
        string context = $"seed {seed}, {path} {dtype} {d}";
        float[] Values(int n) => ForwardRun.RoundAll(dtype, TestRandom.Normal(random, n));
        float[] q = Values(d.QElements), k = Values(d.KvElements), v = Values(d.KvElements);
        // Sinks around the rows' log-sum-exps (log of ~100 keys), so the weights sigmoid(lse - σ) spread over (0, 1).
        float[] sinks = TestRandom.Normal(random, d.HeadsQ, 2.0).Select(x => x + 4f).ToArray();
        DataType outType = fp8 ? DataType.BFloat16 : dtype;
        var options = new AttentionOptions { Causal = true, KernelPath = path };

        using var gq = DeviceArray.Upload(Device, dtype, q);
        using var gk = DeviceArray.Upload(Device, dtype, k);
        using var gv = DeviceArray.Upload(Device, dtype, v);
        using var gs = DeviceArray.Upload(Device, DataType.Float32, sinks);
        using var o1 = DeviceArray.Allocate(Device, outType, d.QElements);
        using var l1 = DeviceArray.Allocate(Device, DataType.Float32, d.LseElements);
        using var o2 = DeviceArray.Allocate(Device, outType, d.QElements);
        using var l2 = DeviceArray.Allocate(Device, DataType.Float32, d.LseElements);
        foreach (DeviceArray a in new[] { o1, l1, o2, l2 })
        {
            a.Poison();
        }

        long[] qShape = [d.Batch, d.SeqQ, d.HeadsQ, d.HeadDim], kShape = [d.Batch, d.SeqK, d.HeadsKv, d.HeadDim], lShape = [d.Batch, d.HeadsQ, d.SeqQ];
        var plain = new AttentionArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), o1.Tensor(qShape), l1.Tensor(lShape));
        var withSinks = new AttentionArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), o2.Tensor(qShape), l2.Tensor(lShape))
        { Sinks = gs.Tensor([d.HeadsQ]) };
        void Run()
        {
            Attention.Forward(plain, options, Stream);
            Attention.Forward(withSinks, options, Stream);
            Stream.Synchronize();
        }

        if (fp8)
        {
            Run();  // must be served here (checked above)
        }
        else if (!ForwardOnPath(options, dtype, dim, varlen: false, Run, [o1, l1, o2, l2], context))
        {
            return; // a refusal, checked
        }

        float[] out1 = o1.Read(), lse1 = l1.Read(), out2 = o2.Read(), lse2 = l2.Read();
        double rel = outType == DataType.Float16 ? 2.0 * Math.Pow(2, -11) : 2.0 * Math.Pow(2, -8);
        // Plus an absolute term of one subnormal spacing of the output dtype: below the smallest normal (2^-14 in
        // fp16) a rounding is off by up to half the fixed spacing 2^-24, not by a relative half ulp, and both outputs
        // are rounded (the H200 run saw 4.58955765E-06 = 77 * 2^-24 for 0.00134277344 * 0.0034126 = 4.58235471E-06,
        // a correct rounding 0.12 spacing away). bf16 keeps fp32's exponent range: its subnormal spacing is 2^-133,
        // so the term changes nothing above bf16's own subnormals and the bf16 (and fp8-to-bf16) bound stays relative.
        double abs = outType == DataType.Float16 ? Math.Pow(2, -24) : Math.Pow(2, -133);
        var problems = new List<string>();
        int problemCount = 0;  // every row is visited (the counts below cover all of them); the first 5 are described
        void Problem(string what)
        {
            if (++problemCount <= 5)
            {
                problems.Add(what);
            }
        }

        int emptyRows = 0;
        double minWeight = 1, maxWeight = 0;
        for (int b = 0; b < d.Batch; b++)
        {
            for (int h = 0; h < d.HeadsQ; h++)
            {
                for (int i = 0; i < d.SeqQ; i++)
                {
                    long at = (((long)b * d.HeadsQ) + h) * d.SeqQ + i;
                    long row = ((((long)b * d.SeqQ) + i) * d.HeadsQ + h) * d.HeadDim;
                    double sigma = sinks[h];
                    if (float.IsPositiveInfinity(lse1[at]))
                    {
                        ++emptyRows;
                        if (lse2[at] != sinks[h])
                        {
                            Problem($"lse of empty row b{b} h{h} i{i} is {lse2[at]}, not the sink {sinks[h]}");
                        }

                        for (int x = 0; x < d.HeadDim; x++)
                        {
                            if (out2[row + x] != 0f)
                            {
                                Problem($"output of empty row b{b} h{h} i{i} [{x}] = {out2[row + x]}, not 0");
                                break;
                            }
                        }

                        continue;
                    }

                    double hi = Math.Max(lse1[at], sigma);
                    double want = hi + Math.Log(Math.Exp(lse1[at] - hi) + Math.Exp(sigma - hi));
                    if (!(Math.Abs(lse2[at] - want) <= 1e-5 * Math.Max(1.0, Math.Abs(want))))
                    {
                        Problem($"lse b{b} h{h} i{i}: {lse2[at]:G9} with the sink, {lse1[at]:G9} without, sink {sigma}: expected {want:G9}");
                    }

                    double w = 1.0 / (1.0 + Math.Exp(sigma - lse1[at]));
                    minWeight = Math.Min(minWeight, w);
                    maxWeight = Math.Max(maxWeight, w);
                    for (int x = 0; x < d.HeadDim; x++)
                    {
                        double expected = out1[row + x] * w, got = out2[row + x];
                        if (!(Math.Abs(got - expected) <= (rel * Math.Max(Math.Abs(got), Math.Abs(expected))) + abs))
                        {
                            Problem($"output b{b} h{h} i{i} [{x}] = {got:G9} with the sink; without it {out1[row + x]:G9} times weight {w:G6} = {expected:G9}");
                            break;
                        }
                    }
                }
            }
        }

        Assert.Multiple(() =>
        {
            Assert.That(problems, Is.Empty, $"{problemCount} problems in all (the first 5 shown), {context}");
            Assert.That(emptyRows, Is.EqualTo(d.Batch * d.HeadsQ * (d.SeqQ - d.SeqK)), $"rows that see no key, {context}");
            Assert.That(minWeight, Is.LessThan(0.5), $"some sink must dominate its row ({context})");
            Assert.That(maxWeight, Is.GreaterThan(0.5), $"some row must dominate its sink ({context})");
        });
    }

    /// <summary>
    /// The backward with sinks and dsinks captured into a CUDA graph (caller workspace): capturing runs nothing, and every
    /// replay writes the same dq, dk, dv and dsinks bits as a direct call, also when replayed without re-poisoning
    /// (dsinks is written by the call's own kernels, never accumulated across replays).
    /// </summary>
    [Test]
    public void BackwardWithSinksReplaysFromAGraph()
    {
        var d = new AttentionDims(2, 150, 97, 4, 2, 64);  // causal Sq > Sk: empty rows too
        RequireServed(DataType.BFloat16, d);
        Random random = TestRandom.ForCurrentTest(out int seed);
        float[] Values(int n) => ForwardRun.RoundAll(DataType.BFloat16, TestRandom.Normal(random, n));
        // Deterministic: dq's bits are then comparable across calls (dsinks' are in either mode).
        var options = new AttentionOptions { Causal = true, Deterministic = true };
        long[] qShape = [d.Batch, d.SeqQ, d.HeadsQ, d.HeadDim], kShape = [d.Batch, d.SeqK, d.HeadsKv, d.HeadDim], lShape = [d.Batch, d.HeadsQ, d.SeqQ];
        using var gq = DeviceArray.Upload(Device, DataType.BFloat16, Values(d.QElements));
        using var gk = DeviceArray.Upload(Device, DataType.BFloat16, Values(d.KvElements));
        using var gv = DeviceArray.Upload(Device, DataType.BFloat16, Values(d.KvElements));
        using var gdo = DeviceArray.Upload(Device, DataType.BFloat16, Values(d.QElements));
        using var gs = DeviceArray.Upload(Device, DataType.Float32, TestRandom.Normal(random, d.HeadsQ, 2.0));
        using var go = DeviceArray.Allocate(Device, DataType.BFloat16, d.QElements);
        using var gl = DeviceArray.Allocate(Device, DataType.Float32, d.LseElements);
        using var gdq = DeviceArray.Allocate(Device, DataType.BFloat16, d.QElements);
        using var gdk = DeviceArray.Allocate(Device, DataType.BFloat16, d.KvElements);
        using var gdv = DeviceArray.Allocate(Device, DataType.BFloat16, d.KvElements);
        using var gds = DeviceArray.Allocate(Device, DataType.Float32, d.HeadsQ);
        DeviceArray[] grads = [gdq, gdk, gdv, gds];
        Attention.Forward(new AttentionArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape), gl.Tensor(lShape))
        { Sinks = gs.Tensor([d.HeadsQ]) }, options, Stream);
        var args = new BackwardArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(kShape), go.Tensor(qShape), gdo.Tensor(qShape),
            gl.Tensor(lShape), gdq.Tensor(qShape), gdk.Tensor(kShape), gdv.Tensor(kShape))
        { Sinks = gs.Tensor([d.HeadsQ]), DSinks = gds.Tensor([d.HeadsQ]) };
        long bytes = Attention.GetBackwardWorkspaceSize(args, options);
        using var workspace = new DeviceBuffer<byte>(Device, Math.Max(bytes, 1));
        byte[] Bytes() => grads.SelectMany(a => a.ReadBytes()).ToArray();
        foreach (DeviceArray a in grads)
        {
            a.Poison();
        }

        Stream.Synchronize();
        Stream.BeginCapture();
        Attention.Backward(args with { Workspace = workspace }, options, Stream);
        using CudaGraph graph = Stream.EndCapture();
        Stream.Synchronize();
        Assert.That(gds.Read().All(float.IsNaN), Is.True, "capturing must not run the backward");

        Attention.Backward(args, options, Stream);
        Stream.Synchronize();
        byte[] direct = Bytes();
        Assert.That(gds.Read().All(float.IsFinite), Is.True, $"seed {seed}: dsinks of the direct call");
        for (int replay = 1; replay <= 3; replay++)
        {
            if (replay == 1)
            {
                foreach (DeviceArray a in grads)
                {
                    a.Poison();
                }
            }

            graph.Launch(Stream);
            Stream.Synchronize();
            Assert.That(Bytes(), Is.EqualTo(direct), $"seed {seed}: replay {replay} (re-poisoned only before the first) differs from a direct call");
        }
    }

    /// <summary>Rows that see no key: LSE exactly σ_h (the kernels write the sink itself there).</summary>
    private static void AssertEmptyRows(float[] lse, float[] sinks, AttentionDims d, MaskSpec mask, string context)
    {
        for (int i = 0; i < d.SeqQ; i++)
        {
            bool any = false;
            for (int j = 0; j < d.SeqK && !any; j++)
            {
                any = mask.Visible(i, j, d.SeqQ, d.SeqK);
            }

            if (any)
            {
                continue;
            }

            for (int b = 0; b < d.Batch; b++)
            {
                for (int h = 0; h < d.HeadsQ; h++)
                {
                    Assert.That(lse[(((long)b * d.HeadsQ) + h) * d.SeqQ + i], Is.EqualTo(sinks[h]), $"lse of empty row b{b} h{h} i{i}, {context}");
                }
            }
        }
    }

}

/// <summary>
/// Attention with a sink logit per query head as a plain same-dtype framework computes it (gpt-oss's reference: the
/// sink as an extra softmax column, dropped after the softmax): float32 arithmetic, P rounded to the dtype before P·V and
/// the output rounded; the backward as autograd of that (P, dP and dS rounded to the dtype, fp32 row reductions), with
/// dσ_h = -Σ_i P_sink,i · D_i in float32. Written for these tests, independent of the product's reference; its error
/// against the float64 reference sets the bar the kernels must meet.
/// </summary>
internal static class NaiveSink
{
    public static float[] ForwardSameDtype(
        float[] q, float[] k, float[] v, float[] sinks, AttentionDims d, MaskSpec mask, float scale, Func<float, float> round)
    {
        var output = new float[d.QElements];
        int group = d.HeadsQ / d.HeadsKv;
        Parallel.For(0, d.Batch * d.HeadsQ, bh =>
        {
            int b = bh / d.HeadsQ, h = bh % d.HeadsQ, hk = h / group;
            var p = new float[d.SeqK];
            var acc = new float[d.HeadDim];
            for (int i = 0; i < d.SeqQ; i++)
            {
                long qBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * d.HeadDim;
                float sum = Probabilities(q, k, qBase, b, hk, i, d, mask, scale, sinks[h], p, null, out _);
                Array.Clear(acc);
                for (int j = 0; j < d.SeqK; j++)
                {
                    if (!mask.Visible(i, j, d.SeqQ, d.SeqK))
                    {
                        continue;
                    }

                    float pj = round(p[j] / sum);
                    long vBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * d.HeadDim;
                    for (int x = 0; x < d.HeadDim; x++)
                    {
                        acc[x] += pj * v[vBase + x];
                    }
                }

                for (int x = 0; x < d.HeadDim; x++)
                {
                    output[qBase + x] = round(acc[x]);
                }
            }
        });
        return output;
    }

    /// <summary>
    /// The gradients, dσ and its per-row terms -P_sink,i·D_i (laid out as the LSE, [B, Hq, Sq]; 0 where a row sees no
    /// key), which <see cref="SinkGradientCheck"/> judges row by row.
    /// </summary>
    public static (float[] Dq, float[] Dk, float[] Dv, float[] DSinks, float[] SinkTerms) BackwardSameDtype(
        float[] q, float[] k, float[] v, float[] sinks, float[] dOut, AttentionDims d, MaskSpec mask, float scale, Func<float, float> round)
    {
        var sinkTerms = new float[d.LseElements];
        var dq = new float[d.QElements];
        var dk = new float[d.KvElements];
        var dv = new float[d.KvElements];
        var dsParts = new float[d.Batch * d.HeadsQ];
        int group = d.HeadsQ / d.HeadsKv, dim = d.HeadDim;
        Parallel.For(0, d.Batch * d.HeadsKv, unit =>
        {
            int b = unit / d.HeadsKv, hk = unit % d.HeadsKv;
            var p = new float[d.SeqK];
            var dp = new float[d.SeqK];
            var capFactor = new float[d.SeqK];
            var dqRow = new float[dim];
            var dkAcc = new float[d.SeqK * dim];
            var dvAcc = new float[d.SeqK * dim];
            for (int h = hk * group; h < (hk + 1) * group; h++)
            {
                float dsink = 0;
                for (int i = 0; i < d.SeqQ; i++)
                {
                    long qBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * dim;
                    float sum = Probabilities(q, k, qBase, b, hk, i, d, mask, scale, sinks[h], p, capFactor, out float max);
                    float rowDot = 0;
                    for (int j = 0; j < d.SeqK; j++)
                    {
                        if (!mask.Visible(i, j, d.SeqQ, d.SeqK))
                        {
                            continue;
                        }

                        p[j] = round(p[j] / sum);
                        long vBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * dim;
                        float dot = 0;
                        for (int x = 0; x < dim; x++)
                        {
                            dot += dOut[qBase + x] * v[vBase + x];
                        }

                        dp[j] = round(dot);
                        rowDot += p[j] * dp[j];
                    }

                    // The sink column's probability times -D (its dP is 0: it has no value row).
                    float term = -(MathF.Exp(sinks[h] - max) / sum * rowDot);
                    sinkTerms[(((long)b * d.HeadsQ) + h) * d.SeqQ + i] = term;
                    dsink += term;
                    Array.Clear(dqRow);
                    for (int j = 0; j < d.SeqK; j++)
                    {
                        if (!mask.Visible(i, j, d.SeqQ, d.SeqK))
                        {
                            continue;
                        }

                        float ds = round(p[j] * (dp[j] - rowDot) * capFactor[j]);
                        long kBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * dim;
                        int at = j * dim;
                        for (int x = 0; x < dim; x++)
                        {
                            dqRow[x] += ds * k[kBase + x];
                            dkAcc[at + x] += ds * q[qBase + x];
                            dvAcc[at + x] += p[j] * dOut[qBase + x];
                        }
                    }

                    for (int x = 0; x < dim; x++)
                    {
                        dq[qBase + x] = round(scale * dqRow[x]);
                    }
                }

                dsParts[(b * d.HeadsQ) + h] = dsink;
            }

            for (int j = 0; j < d.SeqK; j++)
            {
                long kBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * dim;
                for (int x = 0; x < dim; x++)
                {
                    dk[kBase + x] = round(scale * dkAcc[(j * dim) + x]);
                    dv[kBase + x] = round(dvAcc[(j * dim) + x]);
                }
            }
        });
        var ds = new float[d.HeadsQ];
        for (int bh = 0; bh < dsParts.Length; bh++)
        {
            ds[bh % d.HeadsQ] += dsParts[bh];
        }

        return (dq, dk, dv, ds, sinkTerms);
    }

    /// <summary>
    /// Fills p[j] = e^{x_j - m} for the visible keys (m = max(max_j x_j, σ)) and capFactor (1 - tanh² under softcap, or
    /// 1); returns the denominator Σ_j e^{x_j - m} + e^{σ - m}, and m.
    /// </summary>
    private static float Probabilities(
        float[] q, float[] k, long qBase, int b, int hk, int i, AttentionDims d, MaskSpec mask, float scale, float sink, float[] p,
        float[]? capFactor, out float max)
    {
        max = sink;
        for (int j = 0; j < d.SeqK; j++)
        {
            if (!mask.Visible(i, j, d.SeqQ, d.SeqK))
            {
                continue;
            }

            long kBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * d.HeadDim;
            float dot = 0;
            for (int x = 0; x < d.HeadDim; x++)
            {
                dot += q[qBase + x] * k[kBase + x];
            }

            float t = scale * dot;
            if (mask.Softcap > 0)
            {
                float th = MathF.Tanh(t / mask.Softcap);
                p[j] = mask.Softcap * th;
                if (capFactor is not null)
                {
                    capFactor[j] = 1f - (th * th);
                }
            }
            else
            {
                p[j] = t;
                if (capFactor is not null)
                {
                    capFactor[j] = 1f;
                }
            }

            max = MathF.Max(max, p[j]);
        }

        float sum = MathF.Exp(sink - max);
        for (int j = 0; j < d.SeqK; j++)
        {
            if (mask.Visible(i, j, d.SeqQ, d.SeqK))
            {
                p[j] = MathF.Exp(p[j] - max);
                sum += p[j];
            }
        }

        return sum;
    }
}
