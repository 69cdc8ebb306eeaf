using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// Variable-length batches (packed [total, heads, head_dim] with cu_seqlens), including empty and length-1
/// sequences on both sides, judged per sequence by the same rule as the fixed-length tests, on each kernel path by
/// name (<see cref="ForwardPathTestBase"/>: Sm90 runs the sm90 forward where it serves and is refused elsewhere).
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class VarlenTests : ForwardPathTestBase
{
    private static readonly int[] LensQ = [113, 0, 1, 17, 203, 1, 64];
    private static readonly int[] LensK = [203, 5, 1, 0, 113, 300, 64];

    [TestCase(KernelPath.Sm80, DataType.BFloat16, 128, false, false)]
    [TestCase(KernelPath.Sm80, DataType.Float16, 64, true, false)]
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 64, true, true)]
    [TestCase(KernelPath.Sm80, DataType.Float16, 128, false, true)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 128, false, false)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 64, true, false)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 256, true, true)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 40, false, true)]
    [TestCase(KernelPath.Auto, DataType.BFloat16, 128, true, false)]
    public void VarlenMatchesReferencePerSequence(KernelPath path, DataType dtype, int d, bool causal, bool topLeft)
    {
        const int hq = 8, hkv = 2;
        RequireServed(dtype, new AttentionDims(1, 1, 1, hq, hkv, d));
        Random random = TestRandom.ForCurrentTest(out int seed);
        int totalQ = LensQ.Sum(), totalK = LensK.Sum();
        float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalQ * hq * d));
        float[] k = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * d));
        float[] v = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * d));
        var spec = new MaskSpec(causal, topLeft);
        AttentionOptions options = spec.ToOptions() with { KernelPath = path };

        using var dq = DeviceArray.Upload(Device, dtype, q);
        using var dk = DeviceArray.Upload(Device, dtype, k);
        using var dv = DeviceArray.Upload(Device, dtype, v);
        using var dout = DeviceArray.Allocate(Device, dtype, totalQ * hq * d);
        using var dlse = DeviceArray.Allocate(Device, DataType.Float32, hq * totalQ);
        dout.Poison();
        dlse.Poison();
        using var batch = VarlenBatch.FromLengths(Device, LensQ, LensK);

        if (!ForwardOnPath(options, dtype, d, varlen: true, () =>
            {
                Attention.ForwardVarlen(
                    dq.Tensor([totalQ, hq, d]), dk.Tensor([totalK, hkv, d]), dv.Tensor([totalK, hkv, d]), dout.Tensor([totalQ, hq, d]),
                    batch, dlse.Tensor([hq, totalQ]), options, Stream);
                Stream.Synchronize();
            }, [dout, dlse], $"seed {seed}, varlen {dtype} D{d} {spec}"))
        {
            return; // a refusal, checked
        }

        float[] ours = dout.Read();
        float[] lse = dlse.Read();

        var refOut = new double[ours.Length];
        var refLse = new double[lse.Length];
        AttentionReference.ForwardVarlen(
            AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            LensQ, LensK, hq, hkv, d, options, refOut, refLse);

        VarlenJudge.PerSequence(
            LensQ, LensK, q, k, v, ours, lse, refOut, refLse, hq, hkv, d, d, dtype, spec, (float)(1.0 / Math.Sqrt(d)),
            b => $"seed {seed}, {dtype}, D{d}, path {path}, sequence {b} (Sq {LensQ[b]}, Sk {LensK[b]}), {spec}");
    }
}
