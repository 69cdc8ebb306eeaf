using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// The fp8 (e4m3) KV cache of C ABI 0.13 through <see cref="FlashAttention.Decode(in DecodeArguments, AttentionOptions, CudaStream)"/>:
/// Float16 or BFloat16 queries over a cache of e4m3 bytes read through per-KV-head or per-tensor descale factors (drawn
/// away from 1), against the float64 <see cref="DecodeReference"/> over the same bytes (its Float8E4M3 overloads: each
/// byte times its head's factor, exact in double). Judged exactly as the 16-bit cache is
/// (<see cref="DecodeAccuracyTests.JudgeOutput"/>, no tolerance widened): once dequantized the cache values are exact
/// inputs like a 16-bit cache's, so the error left is that of rounding q, P and the output to 16 bits and of the fp32
/// accumulation, which the same-dtype naive attention (over the same dequantized values) measures. Fresh random inputs
/// per case, 0x7F (NaN) in every slot no call may read, poisoned outputs, every output element checked, and the cache
/// read back byte for byte: appended bytes equal the reference's quantization (bit-exact without rotary; within one
/// e4m3 step with rotary, see <see cref="ServingRun"/>), every other byte unchanged.
/// </summary>
/// <remarks>Needs the native library's fp8 cache (issue 15's native side); skipped without a GPU.</remarks>
[TestFixture]
[Category("Gpu")]
public sealed class DecodeFloat8CacheTests : AttentionTestBase
{
    private const DataType F16 = DataType.Float16, Bf16 = DataType.BFloat16, E4M3 = DataType.Float8E4M3;
    private static readonly MaskSpec Full = new(false, false);
    private static readonly MaskSpec Causal = new(true, false);

    private static TestCaseData Case(ServingSpec spec) => new TestCaseData(spec).SetArgDisplayNames(spec.ToString());

    public static IEnumerable<TestCaseData> Cases()
    {
        // Contiguous and paged (shuffled blocks), appending, GQA, causal, a shuffled pool of rows, per head and per tensor.
        yield return Case(new(Bf16, 64, 8, 2, 1, 1, [0, 1, 150, 299, 40, 7, 77], [5, 2, 0, 3], null, 0, Causal) { Fp8 = "head" });
        yield return Case(new(F16, 128, 8, 2, 3, 3, [13, 0, 200, 64, 31, 90], [4, 1, 2], null, 16, Causal, 5) { Fp8 = "tensor" });
        yield return Case(new(F16, 64, 4, 4, 1, 1, [300, 17, 5], [2, 0, 1], null, 0, Full, 13) { Fp8 = "head" });
        yield return Case(new(Bf16, 64, 16, 1, 2, 2, [500, 1, 129], [1, 2], null, 64, Causal) { Fp8 = "tensor" });

        // Left pads (NaN bytes before them), no append, window and softcap, split-KV.
        yield return Case(new(Bf16, 64, 4, 2, 2, 2, [100, 37, 0, 250], null, [17, 37, 0, 1], 0, Causal) { Fp8 = "head" });
        yield return Case(new(F16, 128, 6, 3, 2, 0, [100, 33, 400], null, [40, 33, 0], 32, new MaskSpec(false, false, 20, 0, 10f), 4) { Fp8 = "head" });
        yield return Case(new(F16, 64, 8, 2, 1, 1, [700, 517, 3], null, [650, 0, 3], 128, Causal, 7) { Fp8 = "tensor" });

        // More and fewer appended keys than queries; ALiBi.
        yield return Case(new(Bf16, 64, 8, 1, 4, 1, [0, 2, 150], null, null, 0, Causal) { Fp8 = "head" });
        yield return Case(new(F16, 128, 8, 2, 1, 6, [33, 0, 100], null, null, 16, new MaskSpec(true, false, 12, null), 3, "head") { Fp8 = "head" });

        // Per-sequence counts (speculative drafts of 0..9 tokens), with rows and pads.
        yield return Case(new(Bf16, 64, 8, 2, 1, 0, [13, 0, 200, 100], null, null, 16, Causal) { QueryCounts = [0, 1, 5, 9], AppendCounts = [0, 1, 5, 9], Fp8 = "tensor" });
        yield return Case(new(F16, 128, 8, 2, 1, 2, [60, 300, 7, 40], [3, 1, 0], [5, 0, 0, 0], 0, Causal, 3) { QueryCounts = [4, 1, 7], Fp8 = "head" });

        // Rotary on append (the rotated key quantized; one e4m3 step allowed, see ServingRun), half-split and interleaved.
        yield return Case(new(Bf16, 64, 4, 1, 2, 0, [20, 40, 180], null, [0, 10, 100], 32, Causal) { AppendCounts = [4, 0, 2], RotaryDim = 64, RotaryInterleaved = false, Fp8 = "head" });
        yield return Case(new(F16, 128, 8, 2, 1, 3, [60, 300, 1], [2, 0], null, 0, Causal, 0) { RotaryDim = 32, Fp8 = "tensor" });

        // Factors that saturate most appended elements (|x| / factor > 448 from |x| ~ 1) and that make them subnormal.
        yield return Case(new(Bf16, 64, 8, 2, 1, 4, [10, 300, 77], null, null, 16, Causal) { Fp8 = "head", DescaleRange = (0.0015, 0.003) });
        yield return Case(new(F16, 64, 8, 2, 1, 4, [10, 300, 77], null, null, 0, Causal) { Fp8 = "tensor", DescaleRange = (40, 80) });

        // The call's own factors over a cache wrapped without any.
        yield return Case(new(Bf16, 128, 8, 2, 2, 2, [257, 33, 1000, 64], [2, 3, 0], [0, 30, 513, 0], 32, Causal) { Fp8 = "head", DescalesPerCall = true });
    }

    [TestCaseSource(nameof(Cases))]
    public void MatchesTheReference(ServingSpec spec)
    {
        RequireFp8Cache(spec.HeadDim, spec.Dtype);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var run = ServingRun.Create(Device, Stream, spec, random);
        run.Step(Attention, Stream, spec.Rows, spec.SeqQ, spec.SeqKNew, spec.NumSplits, $"seed {seed}, {spec}", spec.QueryCounts, spec.AppendCounts);
    }

    [Test]
    public void SplitCountsAgreeWithTheReference([Values(1, 3, 16, 64)] int splits)
    {
        var spec = new ServingSpec(Bf16, 64, 8, 2, 2, 3, [700, 400, 33, 900, 0], [3, 0, 1], [100, 0, 10, 450, 0], 32, Causal, splits) { Fp8 = "head" };
        RequireFp8Cache(spec.HeadDim, spec.Dtype);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var run = ServingRun.Create(Device, Stream, spec, random);
        run.Step(Attention, Stream, spec.Rows, spec.SeqQ, spec.SeqKNew, splits, $"seed {seed}, {spec}");
    }

    /// <summary>
    /// Three steps on one stream over one fp8 cache: later steps read the bytes earlier ones appended (the mirror holds
    /// them), through the same factors.
    /// </summary>
    [Test]
    public void StepsReadWhatEarlierStepsAppended([Values(0, 16)] int blockSize)
    {
        var spec = new ServingSpec(F16, 64, 8, 2, 1, 1, [30, 0, 65, 12], null, [5, 0, 0, 12], blockSize, Causal) { Fp8 = "head" };
        RequireFp8Cache(spec.HeadDim, spec.Dtype);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var run = ServingRun.Create(Device, Stream, spec, random, extraCapacity: 16);
        string context = $"seed {seed}, {spec}";
        run.Step(Attention, Stream, [2, 0], seqQ: 2, seqKNew: 3, numSplits: 0, context + ", step 1");
        run.Step(Attention, Stream, [1, 2], seqQ: 1, seqKNew: 1, numSplits: 3, context + ", step 2");
        run.Step(Attention, Stream, null, seqQ: 3, seqKNew: 2, numSplits: 0, context + ", step 3");
    }

    /// <summary>
    /// An owned fp8 cache (<see cref="KvCache.CreateContiguous"/>, <see cref="KvCache.CreatePaged"/>) from empty: a
    /// prefill of 5 tokens and two one-token steps, with <see cref="KvCache.SetDescales"/> before the first and between
    /// the second and the third (the cache's bytes are then read with the new factors: the factors are read at each
    /// call, nothing is rescaled). Each step: the output against the reference over the host mirror, and the bytes the
    /// step appended (read back with <see cref="KvCache.CopyKeysTo{T}"/>) equal to its quantization, bit for bit.
    /// </summary>
    [Test]
    public void OwnedCacheQuantizesAppendsAndReadsTheFactorsOfEachCall([Values(false, true)] bool paged, [Values] DescaleGranularity granularity)
    {
        const int batch = 2, headsQ = 4, headsKv = 2, d = 64, blockSize = 16, maxBlocks = 4;
        const DataType dtype = Bf16;
        RequireFp8Cache(d, dtype);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using KvCache cache = paged
            ? KvCache.CreatePaged(Device, E4M3, batch, numBlocks: 8, blockSize, headsKv, d, maxBlocks, Stream, granularity)
            : KvCache.CreateContiguous(Device, E4M3, batch, capacity: 64, headsKv, d, Stream, granularity);
        int factors = granularity == DescaleGranularity.PerTensor ? 1 : headsKv, row = headsKv * d;
        var k8 = Enumerable.Repeat(Float8E4M3.NaN, (int)cache.Keys.ElementCount).ToArray();
        var v8 = (Float8E4M3[])k8.Clone();
        int[] lens = new int[batch];
        var options = new AttentionOptions { Causal = true };
        Assert.Multiple(() =>
        {
            Assert.That(cache.IsFloat8, Is.True);
            Assert.That(cache.KeyDescale!.Shape, Is.EqualTo(new long[] { factors }));
            Assert.That(cache.ValueDescale!.Shape, Is.EqualTo(new long[] { factors }));
        });

        float[] kd = [], vd = [];
        foreach (var (step, newTokens, refactor) in new[] { (1, 5, true), (2, 1, false), (3, 1, true) })
        {
            string context = $"seed {seed}, {(paged ? "paged" : "contiguous")} {granularity}, step {step}";
            if (refactor)
            {
                kd = TestRandom.Uniform(random, factors, 0.01, 0.05).Select(x => (float)x).ToArray();
                vd = TestRandom.Uniform(random, factors, 0.01, 0.05).Select(x => (float)x).ToArray();
                cache.SetDescales(kd, vd, Stream);
            }

            float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, batch * headsQ * d));
            float[] kn = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, batch * newTokens * row));
            float[] vn = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, batch * newTokens * row));
            using var dq = DeviceArray.Upload(Device, dtype, q);
            using var dkn = DeviceArray.Upload(Device, dtype, kn);
            using var dvn = DeviceArray.Upload(Device, dtype, vn);
            using var dout = DeviceArray.Allocate(Device, dtype, q.Length);
            using var dlse = DeviceArray.Allocate(Device, DataType.Float32, batch * headsQ);
            dout.Poison();
            dlse.Poison();
            long[] newShape = [batch, newTokens, headsKv, d];
            Attention.Decode(
                new DecodeArguments(dq.Tensor([batch, 1, headsQ, d]), cache, dkn.Tensor(newShape), dvn.Tensor(newShape), dout.Tensor([batch, 1, headsQ, d]), dlse.Tensor([batch, headsQ, 1])),
                options, Stream);
            Stream.Synchronize();

            // The reference appends into the mirror (quantizing with this step's factors), then attends.
            int[] table = paged ? [.. cache.HostBlockTable!] : [];
            var serving = new DecodeServingOptions { SeqLenQ = 1, KeyDescale = kd, ValueDescale = vd, QueryDataType = dtype };
            var refOut = new double[q.Length];
            var refLse = new double[batch * headsQ];
            double[] qd = AttentionReference.ToDouble(q), knd = AttentionReference.ToDouble(kn), vnd = AttentionReference.ToDouble(vn);
            if (paged)
            {
                DecodeReference.ForwardPaged(qd, k8, v8, table, lens, knd, vnd, newTokens, headsQ, headsKv, d, blockSize, options, serving, refOut, refLse);
            }
            else
            {
                DecodeReference.ForwardContiguous(qd, k8, v8, lens, knd, vnd, newTokens, headsQ, headsKv, d, 64, options, serving, refOut, refLse);
            }

            long Slot(int b, int p) => paged ? ((long)table[(b * maxBlocks) + (p / blockSize)] * blockSize) + (p % blockSize) : ((long)b * 64) + p;
            var backK = new Float8E4M3[k8.Length];
            var backV = new Float8E4M3[v8.Length];
            cache.CopyKeysTo<Float8E4M3>(backK, Stream);
            cache.CopyValuesTo<Float8E4M3>(backV, Stream);
            int wrong = 0;
            string first = string.Empty;
            for (int b = 0; b < batch; b++)
            {
                for (int p = lens[b]; p < lens[b] + newTokens; p++)
                {
                    for (long e = Slot(b, p) * row; e < (Slot(b, p) + 1) * row; e++)
                    {
                        if ((backK[e].ToBits() != k8[e].ToBits() || backV[e].ToBits() != v8[e].ToBits()) && wrong++ == 0)
                        {
                            first = $"sequence {b} position {p} element {e % row}: k 0x{backK[e].ToBits():X2} v 0x{backV[e].ToBits():X2}, expected 0x{k8[e].ToBits():X2} 0x{v8[e].ToBits():X2}";
                        }
                    }
                }

                lens[b] += newTokens;
            }

            Assert.That(wrong, Is.Zero, $"{context}: appended bytes differ from the reference's quantization; first: {first}");
            float[] naive = NaiveOverMirror(q, k8, v8, lens, Slot, headsQ, headsKv, d, kd, vd, dtype);
            DecodeAccuracyTests.JudgeOutput(dout.Read(), naive, refOut, dlse.Read(), refLse, dtype, context);
            Assert.That(cache.SequenceLengths, Is.EqualTo(lens), context);
        }
    }

    /// <summary>Same-dtype naive attention of one query per sequence over its dequantized keys 0 .. len - 1 (causal: all of them).</summary>
    private static float[] NaiveOverMirror(
        float[] q, Float8E4M3[] k8, Float8E4M3[] v8, int[] lens, Func<int, int, long> slot, int headsQ, int headsKv, int d, float[] kd, float[] vd, DataType dtype)
    {
        int row = headsKv * d;
        var result = new float[q.Length];
        for (int b = 0; b < lens.Length; b++)
        {
            var k = new float[lens[b] * row];
            var v = new float[k.Length];
            for (int p = 0; p < lens[b]; p++)
            {
                for (int e = 0; e < row; e++)
                {
                    long at = (slot(b, p) * row) + e;
                    k[(p * row) + e] = (float)((double)k8[at] * kd[kd.Length == 1 ? 0 : e / d]);
                    v[(p * row) + e] = (float)((double)v8[at] * vd[vd.Length == 1 ? 0 : e / d]);
                }
            }

            int per = headsQ * d;
            NaiveAttention.ForwardSameDtype(q[(b * per)..((b + 1) * per)], k, v, new AttentionDims(1, 1, lens[b], headsQ, headsKv, d), new MaskSpec(true, false),
                (float)(1.0 / Math.Sqrt(d)), x => DeviceArray.Round(dtype, x)).CopyTo(result, b * per);
        }

        return result;
    }

    /// <summary>
    /// An fp8 cache without factors (neither the cache's nor the call's) is refused by the managed side before anything
    /// is queued: the output keeps its poison and the lengths stay.
    /// </summary>
    [Test]
    public void WithoutFactorsNothingIsQueued()
    {
        RequireFp8Cache(64, Bf16);
        using var k = DeviceArray.Allocate(Device, E4M3, 2 * 32 * 64);
        using var v = DeviceArray.Allocate(Device, E4M3, 2 * 32 * 64);
        using KvCache cache = KvCache.Wrap(k.Tensor([2, 32, 1, 64]), v.Tensor([2, 32, 1, 64]), [3, 5], stream: Stream);
        using var q = DeviceArray.Upload(Device, Bf16, new float[2 * 2 * 64]);
        using var o = DeviceArray.Allocate(Device, Bf16, 2 * 2 * 64);
        o.Poison();
        var e = Assert.Throws<ArgumentException>(() => Attention.Decode(
            new DecodeArguments(q.Tensor([2, 1, 2, 64]), cache, q.Tensor([2, 1, 1, 64], elementOffset: 0), q.Tensor([2, 1, 1, 64]), o.Tensor([2, 1, 2, 64])), null, Stream));
        Stream.Synchronize();
        Assert.Multiple(() =>
        {
            Assert.That(e!.Message, Does.Contain("k_descale"));
            Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 3, 5 }));
            Assert.That(o.ReadBytes().All(x => x == 0xFF), Is.True, "a refused decode wrote its output");
        });
    }

    /// <summary>
    /// Skips a head dim this build has no decode kernel for (a 16-bit decode is not served either); where the 16-bit
    /// decode is served the fp8 cache must be too (C ABI 0.13: every decode kernel serves it), so a refusal fails.
    /// </summary>
    private void RequireFp8Cache(int headDim, DataType dtype)
    {
        var query = new SupportQuery(AttentionPass.Decode, dtype, headDim, ComputeCapability: Device.ComputeCapabilityCode);
        SupportResult plain = FlashAttention.QuerySupport(query);
        if (!plain.IsSupported)
        {
            Assert.Ignore($"this build does not serve decode with head dim {headDim}: {plain.Reason}");
        }

        SupportResult fp8 = FlashAttention.QuerySupport(query with { KvCacheDataType = E4M3 });
        Assert.That(fp8.IsSupported, Is.True, $"decode at head dim {headDim} is served, so its fp8 cache must be: {fp8.Reason}");
    }
}
