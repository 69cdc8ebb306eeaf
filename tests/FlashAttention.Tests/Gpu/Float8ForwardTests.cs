using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// The fp8 (e4m3) forward (FlashAttention-3's, FEATURES.md §6) against the float64 reference on the dequantized inputs,
/// judged by FA3's rule (<see cref="Float8Testing"/>: max|out - ref| &lt;= rtol * max|pt - ref| + 2 * bf16 noise, rtol 2,
/// 3 with soft-cap; every element finite; rows that see no key exactly 0 with LSE +infinity; the LSE within our stated
/// bound). Inputs as FA3's tests make them (bf16 normals rounded to e4m3, descales rand * 2, per tensor and per
/// (batch, KV head)), outputs poisoned before each call. Every case runs on each kernel path by name: fp8 is served by
/// the sm90 forward only, so <see cref="KernelPath.Sm90"/> (and <see cref="KernelPath.Auto"/>) must run an
/// <c>sm90_fwd_e4m3_</c> kernel on a compute capability 9.0 GPU with a build that lists such kernels, and must be refused
/// (UNSUPPORTED, with the reason, nothing written) anywhere else; <see cref="KernelPath.Sm80"/> must be refused
/// everywhere. Refusals are asserted, never ignored. The backward pass and decode refuse fp8 inputs (decode's fp8 KV
/// cache under 16-bit queries is DecodeFloat8CacheTests').
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class Float8ForwardTests : ForwardPathTestBase
{
    private static readonly KernelPath[] Paths = [KernelPath.Sm80, KernelPath.Sm90];

    /// <summary>Whether the fp8 forward must serve a call on <paramref name="path"/> on this device.</summary>
    private bool Serves(KernelPath path) =>
        path != KernelPath.Sm80 && ForwardPaths.Sm90ServesForward(Device) && ForwardPaths.BuildHasFp8Forward;

    /// <summary>
    /// Runs <paramref name="forward"/> (the call and a synchronise) and checks the fp8 path contract: where it must serve,
    /// it runs (an UNSUPPORTED is a failure) on the sm90 e4m3 kernel of the head dim and the capability query agrees;
    /// elsewhere it throws UNSUPPORTED with the reason (naming the path asked for, or fp8), the query refuses too, no
    /// kernel runs and every byte of <paramref name="outputs"/> is still 0xFF. True when the caller should judge results.
    /// </summary>
    private bool Float8OnPath(AttentionOptions options, int headDim, bool varlen, Action forward, IReadOnlyList<DeviceArray> outputs, string context)
    {
        KernelPath path = options.KernelPath;
        string expected = path switch
        {
            KernelPath.Sm80 => "FA_PATH_SM80",
            KernelPath.Sm90 => "FA_PATH_SM90",
            _ => "fp8",
        };
        var contract = new PathContract(
            Serves(path),
            $"the fp8 forward on {path}",
            $"a build that lists sm90_fwd_e4m3_ kernels: the sm90 fp8 forward must serve head dim {headDim} on path {path}",
            null,
            (ex, _, where) =>
            {
                Assert.That(ex.Status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"{where}: {ex.NativeMessage}");
                Assert.That(ex.NativeMessage, Does.Contain(expected), where);
            });
        return ForwardOnPath(options, DataType.Float8E4M3, headDim, varlen, forward, outputs, context, contract);
    }

    public static IEnumerable<TestCaseData> Cases()
    {
        (int D, int Sq, int Sk, int Hq, int Hkv, MaskSpec Spec, Float8Descales Descales)[] cases =
        [
            (64, 128, 128, 4, 4, new MaskSpec(false, false), Float8Descales.PerHead),
            (128, 113, 203, 8, 2, new MaskSpec(true, false), Float8Descales.PerHead),
            (256, 203, 113, 4, 4, new MaskSpec(true, true), Float8Descales.PerTensor),
            (80, 150, 301, 4, 2, new MaskSpec(false, false, Left: 40, Right: 16), Float8Descales.PerHead),
            (144, 128, 217, 6, 1, new MaskSpec(false, false, Softcap: 15f), Float8Descales.PerHead),
            (128, 217, 128, 8, 8, new MaskSpec(true, false, Left: 7, Softcap: 30f), Float8Descales.Mixed),
            (64, 1, 1023, 16, 1, new MaskSpec(false, false), Float8Descales.PerHead),
            (128, 1023, 1023, 32, 8, new MaskSpec(true, false), Float8Descales.PerHead),
            (32, 77, 150, 4, 2, new MaskSpec(true, true), Float8Descales.None),
            (192, 300, 77, 8, 2, new MaskSpec(true, false), Float8Descales.PerHead),
            (16, 64, 64, 2, 1, new MaskSpec(false, false), Float8Descales.PerTensor),
            (96, 799, 1500, 8, 1, new MaskSpec(true, false, Left: 255), Float8Descales.Mixed),
            (256, 1, 1, 4, 4, new MaskSpec(true, false), Float8Descales.PerHead),
            (208, 33, 500, 4, 2, new MaskSpec(false, false, Left: 100, Right: 0, Softcap: 50f), Float8Descales.PerHead),
        ];
        foreach (KernelPath path in Paths)
        {
            foreach (var (d, sq, sk, hq, hkv, spec, descales) in cases)
            {
                yield return new TestCaseData(path, new AttentionDims(2, sq, sk, hq, hkv, d), spec, descales)
                    .SetArgDisplayNames(path.ToString(), $"D{d}", $"Sq{sq}", $"Sk{sk}", $"Hq{hq}", $"Hkv{hkv}", spec.ToString(), descales.ToString());
            }
        }

        yield return new TestCaseData(KernelPath.Auto, new AttentionDims(2, 300, 333, 8, 2, 128), new MaskSpec(true, false), Float8Descales.PerHead)
            .SetArgDisplayNames("Auto", "D128", "Sq300", "Sk333", "Hq8", "Hkv2", "causal", "PerHead");
        yield return new TestCaseData(KernelPath.Auto, new AttentionDims(1, 257, 257, 4, 1, 256), new MaskSpec(false, false, Softcap: 20f), Float8Descales.Mixed)
            .SetArgDisplayNames("Auto", "D256", "Sq257", "Sk257", "Hq4", "Hkv1", "softcap", "Mixed");
        yield return new TestCaseData(KernelPath.Auto, new AttentionDims(3, 65, 129, 6, 3, 64), new MaskSpec(true, true), Float8Descales.None)
            .SetArgDisplayNames("Auto", "D64", "Sq65", "Sk129", "Hq6", "Hkv3", "causal-top-left", "None");
    }

    [TestCaseSource(nameof(Cases))]
    public void Fp8ForwardMatchesReference(KernelPath path, AttentionDims dims, MaskSpec spec, Float8Descales descales) =>
        RunAndJudge(path, dims, spec, descales, scale: null);

    [TestCase(KernelPath.Sm80, 64, 0.37f)]
    [TestCase(KernelPath.Sm90, 64, 0.37f)]
    [TestCase(KernelPath.Sm90, 128, 0.05f)]
    [TestCase(KernelPath.Sm90, 256, 1.0f)]
    public void Fp8CustomScaleMatchesReference(KernelPath path, int headDim, float scale) =>
        RunAndJudge(path, new AttentionDims(2, 77, 150, 8, 2, headDim), new MaskSpec(true, true), Float8Descales.PerHead, scale);

    /// <summary>
    /// Rows that see no key (bottom-right causal with Sq &gt; Sk; a window past the keys) are exactly 0 with LSE
    /// +infinity; the cases do have such rows.
    /// </summary>
    [TestCase(KernelPath.Sm90, 128, false)]
    [TestCase(KernelPath.Sm90, 256, true)]
    [TestCase(KernelPath.Sm80, 128, false)]
    public void Fp8RowsThatSeeNoKeyAreZero(KernelPath path, int headDim, bool window)
    {
        var dims = new AttentionDims(2, 300, 100, 8, 2, headDim);
        MaskSpec spec = window ? new MaskSpec(false, true, Left: 3, Right: 3) : new MaskSpec(true, false);
        AttentionOptions options = spec.ToOptions() with { KernelPath = path };
        Random random = TestRandom.ForCurrentTest(out int seed);
        using Float8Run run = Float8Run.Create(Device, dims, spec.Softcap, Float8Descales.PerHead, random);
        Assert.That(run.HasRowsWithoutKeys(options), Is.True, "the case must have rows that see no key");
        RunOne(run, options, $"seed {seed}, {dims}, {spec}");
    }

    /// <summary>Packed variable-length batches with empty and length-1 sequences, descales per sequence, judged as one.</summary>
    [TestCase(KernelPath.Sm80, 128, false, false)]
    [TestCase(KernelPath.Sm90, 128, false, false)]
    [TestCase(KernelPath.Sm90, 64, true, false)]
    [TestCase(KernelPath.Sm90, 256, true, true)]
    [TestCase(KernelPath.Sm90, 80, false, true)]
    [TestCase(KernelPath.Auto, 128, true, false)]
    public void Fp8VarlenMatchesReference(KernelPath path, int d, bool causal, bool topLeft)
    {
        RequireServed(DataType.BFloat16, new AttentionDims(1, 1, 1, 8, 2, d));
        int[] lensQ = [113, 0, 1, 17, 203, 1, 64];
        int[] lensK = [203, 5, 1, 0, 113, 300, 64];
        const int Hq = 8, Hkv = 2;
        int totalQ = lensQ.Sum(), totalK = lensK.Sum(), sequences = lensQ.Length;
        Random random = TestRandom.ForCurrentTest(out int seed);
        var (q, k, v, qd, kd, vd) = Float8Testing.RandomVarlenInputs(random, totalQ, totalK, sequences, Hq, Hkv, d);
        AttentionOptions options = new MaskSpec(causal, topLeft).ToOptions() with { KernelPath = path };

        using var dq = DeviceArray.Upload(Device, DataType.Float8E4M3, Float8Testing.ToFloat(q));
        using var dk = DeviceArray.Upload(Device, DataType.Float8E4M3, Float8Testing.ToFloat(k));
        using var dv = DeviceArray.Upload(Device, DataType.Float8E4M3, Float8Testing.ToFloat(v));
        using var dqd = DeviceArray.Upload(Device, DataType.Float32, qd);
        using var dkd = DeviceArray.Upload(Device, DataType.Float32, kd);
        using var dvd = DeviceArray.Upload(Device, DataType.Float32, vd);
        using var dout = DeviceArray.Allocate(Device, DataType.BFloat16, totalQ * Hq * d);
        using var dlse = DeviceArray.Allocate(Device, DataType.Float32, Hq * totalQ);
        dout.Poison();
        dlse.Poison();
        using var batch = VarlenBatch.FromLengths(Device, lensQ, lensK);
        var args = new AttentionArguments(
            dq.Tensor([totalQ, Hq, d]), dk.Tensor([totalK, Hkv, d]), dv.Tensor([totalK, Hkv, d]), dout.Tensor([totalQ, Hq, d]), dlse.Tensor([Hq, totalQ]), batch)
        {
            QDescale = dqd.Tensor([sequences, Hkv]),
            KDescale = dkd.Tensor([sequences, Hkv]),
            VDescale = dvd.Tensor([sequences, Hkv]),
        };
        string context = $"seed {seed}, varlen e4m3 D{d} causal {causal} top-left {topLeft}";
        if (!Float8OnPath(options, d, varlen: true, () =>
            {
                Attention.Forward(args, options, Stream);
                Stream.Synchronize();
            }, [dout, dlse], context))
        {
            return;
        }

        var reference = new double[totalQ * Hq * d];
        var refLse = new double[Hq * totalQ];
        var pt = new double[totalQ * Hq * d];
        AttentionReference.ForwardFloat8Varlen(q, k, v, lensQ, lensK, Hq, Hkv, d, options, qd, kd, vd, reference, refLse);
        AttentionReference.ForwardFloat8Varlen(q, k, v, lensQ, lensK, Hq, Hkv, d, options, qd, kd, vd, pt, default, roundProbabilities: true);
        int[] seqOfQ = SequenceOf(lensQ), seqOfK = SequenceOf(lensK);
        double[] qt = Float8Testing.Dequantize(q, qd, t => seqOfQ[t], Hq, Hq / Hkv, d, Hkv);
        double[] kt = Float8Testing.Dequantize(k, kd, t => seqOfK[t], Hkv, 1, d, Hkv);
        double[] bounds = Float8Testing.LseBoundsVarlen(qt, kt, lensQ, lensK, Hq, Hkv, d, options.EffectiveScale(d));
        List<string> problems = Float8Testing.JudgeOutput(dout.Read(), reference, pt, softcap: false, d,
            row => double.IsPositiveInfinity(refLse[((row % Hq) * totalQ) + (row / Hq)]));
        problems.AddRange(Float8Testing.JudgeLse(dlse.Read(), refLse, bounds));
        Assert.That(problems, Is.Empty, context);
    }

    /// <summary>
    /// q, k and v as strided views of one packed [B, S, 3, H, D] e4m3 buffer, the output a strided view of a wider bf16
    /// buffer, k's descales a transposed table: the same bits as contiguous copies, judged by the rule, twice (the
    /// forward is bitwise repeatable).
    /// </summary>
    [TestCase(KernelPath.Sm90, 128)]
    [TestCase(KernelPath.Sm90, 64)]
    [TestCase(KernelPath.Sm80, 128)]
    public void Fp8StridedViewsMatchContiguousCopies(KernelPath path, int d)
    {
        const int B = 2, S = 160, H = 4;
        Random random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(B, S, S, H, H, d);
        var options = new AttentionOptions { Causal = true, KernelPath = path };
        using Float8Run run = Float8Run.Create(Device, dims, 0, Float8Descales.PerHead, random);

        // Pack run's q, k, v into one [B, S, 3, H, D] buffer.
        var packed = new float[B * S * 3 * H * d];
        Float8E4M3[][] parts = [run.Q, run.K, run.V];
        for (int t = 0; t < B * S; t++)
        {
            for (int which = 0; which < 3; which++)
            {
                for (int x = 0; x < H * d; x++)
                {
                    packed[(((t * 3) + which) * H * d) + x] = parts[which][(t * H * d) + x];
                }
            }
        }

        using var dqkv = DeviceArray.Upload(Device, DataType.Float8E4M3, packed);
        using var dwide = DeviceArray.Allocate(Device, DataType.BFloat16, B * S * H * 2 * d);
        using var dlse = DeviceArray.Allocate(Device, DataType.Float32, dims.LseElements);
        using var dkdT = DeviceArray.Upload(Device, DataType.Float32, Transpose(run.KDescale, B, H));
        long[] shape = [B, S, H, d];
        long[] viewStrides = [S * 3 * H * d, 3 * H * d, d, 1];
        AttentionArguments strided = new(
            dqkv.Tensor(shape, viewStrides, 0), dqkv.Tensor(shape, viewStrides, H * d), dqkv.Tensor(shape, viewStrides, 2 * H * d),
            dwide.Tensor(shape, [S * H * 2 * d, H * 2 * d, 2 * d, 1]), dlse.Tensor([B, H, S]))
        {
            QDescale = run.QDescaleT,
            KDescale = dkdT.Tensor([B, H], [1, B]),
            VDescale = run.VDescaleT,
        };
        dwide.Poison();
        dlse.Poison();
        string context = $"seed {seed}, strided e4m3 D{d}";
        if (!Float8OnPath(options, d, varlen: false, () =>
            {
                Attention.Forward(strided, options, Stream);
                Stream.Synchronize();
            }, [dwide, dlse], context))
        {
            return;
        }

        float[] wide = dwide.Read();
        var ours = new float[dims.QElements];
        for (int row = 0; row < B * S * H; row++)
        {
            Array.Copy(wide, row * 2 * d, ours, row * d, d);
            Assert.That(wide.AsSpan((row * 2 * d) + d, d).ToArray().All(float.IsNaN), Is.True, $"{context}: row {row}'s second half was written");
        }

        Attention.Forward(run.Arguments, options, Stream);
        Stream.Synchronize();
        float[] contiguous = run.DOut.Read();
        Assert.That(ours, Is.EqualTo(contiguous), $"{context}: the strided views must give the contiguous call's bits");
        Assert.That(run.DLse.Read(), Is.EqualTo(dlse.Read()), $"{context}: log-sum-exp");
        Assert.That(run.Judge(ours, dlse.Read(), options), Is.Empty, context);

        byte[] first = run.DOut.ReadBytes();
        run.PoisonOutputs();
        Attention.Forward(run.Arguments, options, Stream);
        Stream.Synchronize();
        Assert.That(run.DOut.ReadBytes(), Is.EqualTo(first), $"{context}: a second call must write the same bits");
    }

    /// <summary>The fp8 forward has no backward (FlashAttention-3's neither): a backward on e4m3 inputs is UNSUPPORTED and writes nothing.</summary>
    [Test]
    public void BackwardRefusesFp8()
    {
        var dims = new AttentionDims(1, 64, 64, 4, 2, 64);
        Random random = TestRandom.ForCurrentTest(out _);
        using Float8Run run = Float8Run.Create(Device, dims, 0, Float8Descales.None, random);
        using var dout = DeviceArray.Upload(Device, DataType.BFloat16, ForwardRun.RoundAll(DataType.BFloat16, TestRandom.Normal(random, dims.QElements)));
        using var dq = DeviceArray.Allocate(Device, DataType.BFloat16, dims.QElements);
        using var dk = DeviceArray.Allocate(Device, DataType.BFloat16, dims.KvElements);
        using var dvv = DeviceArray.Allocate(Device, DataType.BFloat16, dims.KvElements);
        foreach (DeviceArray g in new[] { dq, dk, dvv })
        {
            g.Poison();
        }

        AttentionArguments f = run.Arguments;
        var ex = Assert.Throws<FlashAttentionException>(() => Attention.Backward(
            new BackwardArguments(f.Q, f.K, f.V, f.Output, dout.Tensor(run.QShape), f.LogSumExp!, dq.Tensor(run.QShape), dk.Tensor(run.KvShape), dvv.Tensor(run.KvShape)),
            null, Stream));
        Stream.Synchronize();
        using (Assert.EnterMultipleScope())
        {
            Assert.That(ex!.Status, Is.EqualTo(FlashAttentionStatus.Unsupported), ex.NativeMessage);
            Assert.That(ex.NativeMessage, Does.Contain("no backward"));
            Assert.That(dq.ReadBytes().All(b => b == 0xFF) && dk.ReadBytes().All(b => b == 0xFF) && dvv.ReadBytes().All(b => b == 0xFF), Is.True,
                "a refused backward wrote a gradient");
        }
    }

    /// <summary>Decode has no fp8 query (its fp8 KV cache takes 16-bit ones): an e4m3 query over a bf16 cache is UNSUPPORTED and writes nothing.</summary>
    [Test]
    public void DecodeRefusesFp8()
    {
        using KvCache cache = KvCache.CreateContiguous(Device, DataType.BFloat16, 2, 64, 2, 64);
        using var q = DeviceArray.Upload(Device, DataType.Float8E4M3, new float[2 * 8 * 64]);
        using var output = DeviceArray.Allocate(Device, DataType.BFloat16, 2 * 8 * 64);
        output.Poison();
        var ex = Assert.Throws<FlashAttentionException>(() => Attention.Decode(
            new DecodeArguments(q.Tensor([2, 1, 8, 64]), cache, null, null, output.Tensor([2, 1, 8, 64])), null, Stream));
        Stream.Synchronize();
        Assert.That(ex!.Status, Is.EqualTo(FlashAttentionStatus.Unsupported), ex.NativeMessage);
        Assert.That(output.ReadBytes().All(b => b == 0xFF), Is.True, "a refused decode wrote its output");
    }

    /// <summary>
    /// ALiBi (C ABI 0.8) on the fp8 forward, which shares the sm90 consumer's score path: the bias is added to the true
    /// (descaled) logits, the slope divided by scale * q_descale * k_descale (or by the cap under softcap, the descales
    /// then being inside tanh). Judged by the same rule against the float64 reference with FA2's bias.
    /// </summary>
    [TestCase(KernelPath.Sm90, 128, true, false, Float8Descales.PerHead, false)]
    [TestCase(KernelPath.Sm90, 256, false, true, Float8Descales.Mixed, true)]
    [TestCase(KernelPath.Auto, 128, false, false, Float8Descales.PerTensor, true)]
    [TestCase(KernelPath.Sm80, 128, true, false, Float8Descales.PerHead, false)]
    public void Fp8AlibiMatchesReference(KernelPath path, int d, bool causal, bool softcap, Float8Descales descales, bool perBatch)
    {
        var dims = new AttentionDims(2, 150, 231, 8, 2, d);
        var spec = new MaskSpec(causal, false, Softcap: softcap ? 20f : 0f);
        RequireServed(DataType.BFloat16, dims);
        Random random = TestRandom.ForCurrentTest(out int seed);
        AttentionOptions options = spec.ToOptions() with { KernelPath = path };
        using Float8Run run = Float8Run.Create(Device, dims, spec.Softcap, descales, random);
        float[] slopes = TestRandom.Uniform(random, perBatch ? dims.Batch * dims.HeadsQ : dims.HeadsQ, 0, 0.3).Select(x => (float)x).ToArray();
        using var ga = DeviceArray.Upload(Device, DataType.Float32, slopes);
        AttentionArguments args = run.Arguments with { AlibiSlopes = ga.Tensor(perBatch ? [dims.Batch, dims.HeadsQ] : [dims.HeadsQ]) };
        string context = $"seed {seed}, e4m3 alibi, {dims}, {spec}, descales {descales}, slopes {(perBatch ? "[b, Hq]" : "[Hq]")}";
        if (!Float8OnPath(options, d, varlen: false, () =>
            {
                Attention.Forward(args, options, Stream);
                Stream.Synchronize();
            }, [run.DOut, run.DLse], context))
        {
            return;
        }

        Float8Problem problem = run.Problem with { AlibiSlopes = slopes.Select(x => (double)x).ToArray() };
        var (output, lse) = problem.Judge(run.DOut.Read(), run.DLse.Read(), options, options.EffectiveScale(d), softcap);
        Assert.Multiple(() =>
        {
            Assert.That(output, Is.Empty, $"output, {context}");
            Assert.That(lse, Is.Empty, $"lse, {context}");
        });
    }

    private void RunAndJudge(KernelPath path, AttentionDims dims, MaskSpec spec, Float8Descales descales, float? scale)
    {
        RequireServed(DataType.BFloat16, dims); // a head dim this build has no kernel for at all (FA_HEAD_DIMS) is ignored, never passed
        Random random = TestRandom.ForCurrentTest(out int seed);
        AttentionOptions options = spec.ToOptions(scale) with { KernelPath = path };
        using Float8Run run = Float8Run.Create(Device, dims, spec.Softcap, descales, random);
        RunOne(run, options, $"seed {seed}, e4m3, {dims}, {spec}, descales {descales}, scale {options.EffectiveScale(dims.HeadDim)}");
    }

    private void RunOne(Float8Run run, AttentionOptions options, string context)
    {
        if (!Float8OnPath(options, run.Dims.HeadDim, varlen: false, () =>
            {
                Attention.Forward(run.Arguments, options, Stream);
                Stream.Synchronize();
            }, [run.DOut, run.DLse], context))
        {
            return; // a refusal, checked
        }

        Assert.That(run.Judge(run.DOut.Read(), run.DLse.Read(), options), Is.Empty, context);
    }

    private static int[] SequenceOf(int[] lens)
    {
        var result = new int[lens.Sum()];
        int at = 0;
        for (int b = 0; b < lens.Length; b++)
        {
            result.AsSpan(at, lens[b]).Fill(b);
            at += lens[b];
        }

        return result;
    }

    /// <summary>A dense [rows, cols] table as [cols, rows] (so that a [rows, cols] view with strides [1, rows] reads it).</summary>
    private static float[] Transpose(float[] table, int rows, int cols)
    {
        var result = new float[table.Length];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                result[(c * rows) + r] = table[(r * cols) + c];
            }
        }

        return result;
    }
}
