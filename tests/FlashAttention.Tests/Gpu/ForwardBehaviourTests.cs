using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>Strided views, the optional log-sum-exp, errors through Forward, foreign streams and determinism.</summary>
[TestFixture]
[Category("Gpu")]
public sealed class ForwardBehaviourTests : ForwardPathTestBase
{
    /// <summary>
    /// q, k and v as strided slices of one packed [B, S, 3, H, D] buffer give bit for bit what dense copies give, on each
    /// kernel path by name (the sm90 forward where it serves; elsewhere Sm90 is refused and nothing is written).
    /// </summary>
    [TestCase(KernelPath.Sm80, DataType.Float16, 64, false)]
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 128, true)]
    [TestCase(KernelPath.Sm80, DataType.Float16, 128, true)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 64, false)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 128, true)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 256, true)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 40, false)]
    public void PackedQkvSlicesMatchContiguousCopiesBitForBit(KernelPath path, DataType dtype, int d, bool causal)
    {
        const int b = 2, s = 203, h = 4;
        RequireServed(dtype, new AttentionDims(b, s, s, h, h, d));
        Random random = TestRandom.ForCurrentTest(out int seed);
        float[] packed = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, b * s * 3 * h * d));
        using var dPacked = DeviceArray.Upload(Device, dtype, packed);

        long[] shape = [b, s, h, d];
        long[] strides = [(long)s * 3 * h * d, 3L * h * d, d, 1];
        DeviceTensor Slice(int which) => dPacked.Tensor(shape, strides, elementOffset: (long)which * h * d);

        // The same values as three dense arrays.
        var dense = new float[3][];
        for (int which = 0; which < 3; which++)
        {
            dense[which] = new float[b * s * h * d];
            for (int bb = 0; bb < b; bb++)
            {
                for (int ss = 0; ss < s; ss++)
                {
                    Array.Copy(packed, (((bb * s) + ss) * 3 + which) * h * d, dense[which], ((bb * s) + ss) * h * d, h * d);
                }
            }
        }

        using var dq = DeviceArray.Upload(Device, dtype, dense[0]);
        using var dk = DeviceArray.Upload(Device, dtype, dense[1]);
        using var dv = DeviceArray.Upload(Device, dtype, dense[2]);
        using var out1 = DeviceArray.Allocate(Device, dtype, b * s * h * d);
        using var out2 = DeviceArray.Allocate(Device, dtype, b * s * h * d);
        using var lse1 = DeviceArray.Allocate(Device, DataType.Float32, b * h * s);
        using var lse2 = DeviceArray.Allocate(Device, DataType.Float32, b * h * s);
        foreach (var a in new[] { out1, out2, lse1, lse2 })
        {
            a.Poison();
        }

        var options = new AttentionOptions { Causal = causal, KernelPath = path };
        long[] lseShape = [b, h, s];
        if (!ForwardOnPath(options, dtype, d, varlen: false, () =>
            {
                Attention.Forward(Slice(0), Slice(1), Slice(2), out1.Tensor(shape), lse1.Tensor(lseShape), options, Stream);
                Attention.Forward(dq.Tensor(shape), dk.Tensor(shape), dv.Tensor(shape), out2.Tensor(shape), lse2.Tensor(lseShape), options, Stream);
                Stream.Synchronize();
            }, [out1, out2, lse1, lse2], $"seed {seed}, packed QKV {dtype} D{d} causal {causal}"))
        {
            return; // a refusal, checked
        }

        float[] strided = out1.Read();
        Assert.That(Numerics.FirstNonFinite(strided), Is.EqualTo(-1), $"seed {seed}: strided output not fully written");
        Assert.Multiple(() =>
        {
            Assert.That(out1.ReadBytes(), Is.EqualTo(out2.ReadBytes()), $"seed {seed}: output of strided views differs from contiguous copies");
            Assert.That(lse1.ReadBytes(), Is.EqualTo(lse2.ReadBytes()), $"seed {seed}: lse differs");
        });

        // And the strided result is right, not just equal.
        var dims = new AttentionDims(b, s, s, h, h, d);
        var reference = new double[dims.QElements];
        AttentionReference.Forward(
            AttentionReference.ToDouble(dense[0]), AttentionReference.ToDouble(dense[1]), AttentionReference.ToDouble(dense[2]),
            new AttentionShape(b, s, s, h, h, d), options, reference, Span<double>.Empty);
        float[] naive = NaiveAttention.ForwardSameDtype(dense[0], dense[1], dense[2], dims, causal ? Mask.CausalBottomRight : Mask.None,
            (float)(1.0 / Math.Sqrt(d)), x => DeviceArray.Round(dtype, x));
        ForwardAccuracyTests.JudgeOutput(strided, naive, reference, dtype, dims, causal ? Mask.CausalBottomRight : Mask.None, $"seed {seed}");
    }

    [Test]
    public void LogSumExpIsOptional()
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(2, 113, 203, 8, 2, 64);
        using ForwardRun run = ForwardRun.Create(Device, dims, DataType.BFloat16, random, seed);
        var options = new AttentionOptions { Causal = true };

        Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
        Stream.Synchronize();
        byte[] withLse = run.DOut.ReadBytes();

        run.PoisonOutputs();
        Attention.Forward(run.QT, run.KT, run.VT, run.OutT, logSumExp: null, options, Stream);
        Stream.Synchronize();
        Assert.Multiple(() =>
        {
            Assert.That(run.DOut.ReadBytes(), Is.EqualTo(withLse), $"seed {seed}: output must not depend on whether lse is written");
            Assert.That(run.DLse.ReadBytes(), Is.All.EqualTo((byte)0xFF), "lse buffer untouched when not passed");
        });
    }

    [Test]
    public void RawPointerViewsGiveTheSameBits()
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(2, 203, 113, 6, 1, 128);
        using ForwardRun run = ForwardRun.Create(Device, dims, DataType.Float16, random, seed);
        var options = new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft };
        Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
        Stream.Synchronize();
        byte[] viaBuffers = run.DOut.ReadBytes();
        byte[] lseViaBuffers = run.DLse.ReadBytes();

        run.PoisonOutputs();
        DeviceTensor Raw(DeviceArray a, long[] shape) => DeviceTensor.FromPointer(a.Tensor([a.Length]).Pointer, a.DataType, shape);
        Attention.Forward(Raw(run.DQ, run.QShape), Raw(run.DK, run.KvShape), Raw(run.DV, run.KvShape), Raw(run.DOut, run.QShape),
            Raw(run.DLse, run.LseShape), options, Stream);
        Stream.Synchronize();
        Assert.Multiple(() =>
        {
            Assert.That(run.DOut.ReadBytes(), Is.EqualTo(viaBuffers), $"seed {seed}");
            Assert.That(run.DLse.ReadBytes(), Is.EqualTo(lseViaBuffers), $"seed {seed}");
        });
    }

    [Test]
    public void DefaultStreamAndDefaultOptionsWork()
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(2, 17, 17, 4, 4, 64);
        using ForwardRun run = ForwardRun.Create(Device, dims, DataType.Float16, random, seed);
        Attention.Forward(run.QT, run.KT, run.VT, run.OutT);
        Device.Synchronize();
        float[] ours = run.DOut.Read();
        var (refOut, _) = run.Reference(AttentionOptions.Default);
        float[] naive = NaiveAttention.ForwardSameDtype(run.Q, run.K, run.V, dims, Mask.None, (float)dims.DefaultScale, Numerics.RoundToHalf);
        ForwardAccuracyTests.JudgeOutput(ours, naive, refOut, DataType.Float16, dims, Mask.None, $"seed {seed}");
    }

    [Test]
    public void ResultsAreBitwiseDeterministic()
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(2, 1023, 1023, 8, 2, 128);
        using ForwardRun run = ForwardRun.Create(Device, dims, DataType.BFloat16, random, seed);
        var options = new AttentionOptions { Causal = true };

        Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
        Stream.Synchronize();
        byte[] out1 = run.DOut.ReadBytes();
        byte[] lse1 = run.DLse.ReadBytes();

        run.PoisonOutputs();
        Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
        Stream.Synchronize();
        Assert.Multiple(() =>
        {
            Assert.That(run.DOut.ReadBytes().SequenceEqual(out1), Is.True, $"seed {seed}: output differs between two identical calls");
            Assert.That(run.DLse.ReadBytes().SequenceEqual(lse1), Is.True, $"seed {seed}: lse differs between two identical calls");
            Assert.That(Numerics.FirstNonFinite(run.DOut.Read()), Is.EqualTo(-1));
        });
    }

    [Test]
    public void ManagedSideRejectsWhatItCanSeeWithArgumentException()
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(2, 17, 33, 8, 2, 64);
        using ForwardRun run = ForwardRun.Create(Device, dims, DataType.Float16, random, seed);
        using var bf16 = DeviceArray.Allocate(Device, DataType.BFloat16, dims.KvElements);
        using var lse16 = DeviceArray.Allocate(Device, DataType.Float16, dims.LseElements);

        Assert.Multiple(() =>
        {
            Assert.That(() => Attention.Forward(run.DQ.Tensor([2 * 17, 8, 64]), run.KT, run.VT, run.OutT),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("q"));
            Assert.That(() => Attention.Forward(run.QT, bf16.Tensor(run.KvShape), run.VT, run.OutT),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("k"));
            Assert.That(() => Attention.Forward(run.QT, run.KT, run.VT, run.DOut.Tensor([2, 17, 4, 128])),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("output"));
            Assert.That(() => Attention.Forward(run.QT, run.KT, run.VT, run.OutT, lse16.Tensor(run.LseShape)),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("logSumExp"));
            Assert.That(() => Attention.Forward(run.QT, run.KT, run.VT, run.OutT, null, new AttentionOptions { SoftmaxScale = float.NaN }),
                Throws.ArgumentException.With.Message.Contains("SoftmaxScale"));
            Assert.That(() => Attention.Forward(null!, run.KT, run.VT, run.OutT), Throws.ArgumentNullException);

            // The record form checks the same things, with the same parameter names.
            var args = new AttentionArguments(run.QT, run.KT, run.VT, run.OutT);
            Assert.That(() => Attention.Forward(args with { K = bf16.Tensor(run.KvShape) }),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("k"));
            Assert.That(() => Attention.Forward(args with { LogSumExp = lse16.Tensor(run.LseShape) }),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("logSumExp"));
            Assert.That(() => Attention.Forward(default(AttentionArguments)),
                Throws.ArgumentNullException.With.Property("ParamName").EqualTo("q"));
        });
    }

    /// <summary>The record form and the positional form are the same call: the same bits, output and log-sum-exp.</summary>
    [Test]
    public void RecordFormGivesTheSameBitsAsThePositionalForm()
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(2, 203, 113, 8, 2, 64);
        using ForwardRun run = ForwardRun.Create(Device, dims, DataType.BFloat16, random, seed);
        var options = new AttentionOptions { Causal = true, WindowLeft = 40, Softcap = 20f, SoftmaxScale = 0.1f };

        Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
        Stream.Synchronize();
        byte[] positionalOut = run.DOut.ReadBytes();
        byte[] positionalLse = run.DLse.ReadBytes();

        run.PoisonOutputs();
        Attention.Forward(new AttentionArguments(run.QT, run.KT, run.VT, run.OutT, run.LseT), options, Stream);
        Stream.Synchronize();
        Assert.Multiple(() =>
        {
            Assert.That(run.DOut.ReadBytes(), Is.EqualTo(positionalOut), $"seed {seed}: output");
            Assert.That(run.DLse.ReadBytes(), Is.EqualTo(positionalLse), $"seed {seed}: log-sum-exp");
            Assert.That(Numerics.FirstNonFinite(run.DOut.Read()), Is.EqualTo(-1), "the record form wrote the output");
        });
    }

    public static IEnumerable<TestCaseData> NativeRejections()
    {
        yield return new TestCaseData("head dim 264", FlashAttentionStatus.Unsupported, "q.shape[3]").SetName("Forward rejects: head dim 264");
        yield return new TestCaseData("misaligned q", FlashAttentionStatus.InvalidArgument, "q.data").SetName("Forward rejects: misaligned q");
        yield return new TestCaseData("negative scale", FlashAttentionStatus.InvalidArgument, "softmax_scale").SetName("Forward rejects: negative scale");
        yield return new TestCaseData("out overlaps v", FlashAttentionStatus.InvalidArgument, "overlaps").SetName("Forward rejects: out overlaps v");
    }

    [TestCaseSource(nameof(NativeRejections))]
    public void NativeRejectionThrowsCheckStatusAndLeavesNoStickyError(string what, FlashAttentionStatus expected, string fragment)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(2, 17, 33, 8, 2, 64);
        using ForwardRun run = ForwardRun.Create(Device, dims, DataType.Float16, random, seed);

        // A good call first, for a bitwise baseline.
        Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, null, Stream);
        Stream.Synchronize();
        byte[] baseline = run.DOut.ReadBytes();

        using var odd = DeviceArray.Allocate(Device, DataType.Float16, 2L * 33 * 8 * 264);
        using var odd2 = DeviceArray.Allocate(Device, DataType.Float16, 2L * 17 * 8 * 264);
        using var big = DeviceArray.Allocate(Device, DataType.Float16, dims.QElements + 8);
        DeviceTensor q = run.QT, k = run.KT, v = run.VT, o = run.OutT;
        AttentionOptions options = AttentionOptions.Default;
        DeviceTensor? lse = run.LseT;
        switch (what)
        {
            case "head dim 264":
                q = odd.Tensor([2, 17, 8, 264]);
                k = odd.Tensor([2, 33, 2, 264]);
                v = k;
                o = odd2.Tensor([2, 17, 8, 264]);
                lse = null;
                break;
            case "misaligned q":
                q = big.Tensor(run.QShape, elementOffset: 1); // 2 bytes past a 256-byte aligned allocation
                break;
            case "negative scale":
                options = new AttentionOptions { SoftmaxScale = -0.25f };
                break;
            case "out overlaps v":
                v = run.DOut.Tensor(run.KvShape); // v's view lies inside the output buffer
                break;
            default:
                Assert.Fail($"unknown case {what}");
                break;
        }

        FlashAttentionStatus checkStatus = FlashAttention.Check(q, k, v, o, out string checkMessage, lse, options, Device.ComputeCapabilityCode);
        var ex = Assert.Throws<FlashAttentionException>(() => Attention.Forward(q, k, v, o, lse, options, Stream));
        Assert.Multiple(() =>
        {
            Assert.That(checkStatus, Is.EqualTo(expected), checkMessage);
            Assert.That(ex!.Status, Is.EqualTo(checkStatus), "Forward reports the status Check gives");
            Assert.That(ex.NativeMessage, Is.EqualTo(checkMessage), "and the same native message");
            Assert.That(ex.NativeMessage, Does.Contain(fragment));
            Assert.That(ex.Message, Does.Contain(fragment));
        });

        // No sticky error: the next good call works and gives the same bits.
        run.PoisonOutputs();
        Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, null, Stream);
        Stream.Synchronize();
        Device.Synchronize();
        Assert.That(run.DOut.ReadBytes(), Is.EqualTo(baseline), $"seed {seed}: the call after a rejected one must succeed unchanged");
    }

    [Test]
    public unsafe void ForeignStreamIsUsedButNeverDestroyed()
    {
        nint raw = 0;
        Assert.That(NativeMethods.fa_stream_create(Device.Ordinal, &raw), Is.EqualTo(FaStatus.Success), NativeLib.LastError());
        try
        {
            Random random = TestRandom.ForCurrentTest(out int seed);
            var dims = new AttentionDims(2, 128, 217, 6, 1, 128);
            using ForwardRun run = ForwardRun.Create(Device, dims, DataType.BFloat16, random, seed);

            var borrowed = CudaStream.FromHandle(raw);
            Assert.That(borrowed.OwnsHandle, Is.False);
            Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, null, borrowed);
            borrowed.Synchronize();
            borrowed.Dispose();
            borrowed.Dispose();
            Assert.That(Numerics.FirstNonFinite(run.DOut.Read()), Is.EqualTo(-1), $"seed {seed}");

            // The stream is still alive: queue work on it directly and wait for it.
            run.PoisonOutputs();
            using var again = CudaStream.FromHandle(raw);
            Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, null, again);
            Assert.That(NativeMethods.fa_stream_synchronize(raw), Is.EqualTo(FaStatus.Success), NativeLib.LastError());
            Assert.That(Numerics.FirstNonFinite(run.DOut.Read()), Is.EqualTo(-1));
        }
        finally
        {
            Assert.That(NativeMethods.fa_stream_destroy(raw), Is.EqualTo(FaStatus.Success),
                "destroying the stream ourselves must succeed, so nobody destroyed it before: " + NativeLib.LastError());
        }
    }
}
