using FlashAttn.Internal;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// A V head dim other than q's (issue 14, C ABI 0.10, FEATURES.md §8): the forward with v
/// <c>[B, Sk, Hkv, Dv]</c> and the output <c>[B, Sq, Hq, Dv]</c> for FlashAttention-3's pairs (D, Dv) = (192, 128) and
/// (64, 512), fp16 and bf16, on <see cref="KernelPath.Auto"/>, <see cref="KernelPath.Sm80"/> and <see cref="KernelPath.Sm90"/>
/// (<see cref="ForwardPathTestBase.ForwardValueHeadDimOnPath"/>: Sm80 runs the pair's sm80 kernels on every GPU; Sm90 runs
/// the pair's sm90 kernels ((64, 512)'s in two CTAs of 256 output columns per row block) without dropout on a compute
/// capability 9.0 GPU whose library lists them and is refused elsewhere; Auto runs the sm90 kernels where Sm90 serves,
/// the sm80 ones elsewhere), against the float64 reference
/// (<see cref="AttentionReference"/> with <see cref="AttentionShape.HeadDimV"/>, checked against the tests' own naive
/// formula in Cpu/ReferenceValueHeadDimTests) by the rule of the other forward tests (<see cref="AcceptanceRule"/>: at
/// most twice the error of a same-dtype naive attention with Dv columns, under the dtype cap, rows that see no key
/// exactly 0; the log-sum-exp within its tolerance, +infinity where no key). Fresh random inputs per case, outputs
/// poisoned (NaN bytes) before each call, every element judged. Masks: causal both alignments with Sq &lt; Sk and
/// Sq &gt; Sk, a window, softcap, a custom scale, GQA and MQA, Sq = 1; varlen with an empty and a length-1 sequence;
/// ALiBi, sinks and dropout (its materialised keep mask bit for bit, the output under that mask). A refused call is
/// UNSUPPORTED naming FA_PATH_SM90 and why, its outputs untouched. A build without head dim D
/// (FA_HEAD_DIMS) reports the cases of that pair as ignored; a build with it must serve the pair.
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class ValueHeadDimForwardTests : ForwardPathTestBase
{
    private static readonly (int D, int Dv)[] Pairs = [(192, 128), (64, 512)];
    private static readonly KernelPath[] Paths = [KernelPath.Auto, KernelPath.Sm80, KernelPath.Sm90];
    private static readonly DataType[] Dtypes = [DataType.BFloat16, DataType.Float16];

    private static string Name(DataType dtype) => dtype == DataType.Float16 ? "fp16" : "bf16";

    /// <summary>One fixed-length case: the sizes (with <see cref="AttentionDims.HeadDimV"/>), masks and an optional scale.</summary>
    public sealed record Case(KernelPath Path, DataType Dtype, AttentionDims Dims, MaskSpec Mask, float? Scale = null)
    {
        public override string ToString() =>
            $"{Path} {Name(Dtype)} {Dims} {Mask}" + (Scale is { } s ? $" scale {s}" : string.Empty);
    }

    /// <summary>The masks and sizes every (pair, dtype, path) runs.</summary>
    private static readonly (int B, int Sq, int Sk, int Hq, int Hkv, MaskSpec Mask, float? Scale)[] Shapes =
    [
        (2, 113, 203, 8, 2, new(false, false), null),                    // no mask, GQA 4
        (2, 113, 203, 8, 2, new(true, false), null),                     // causal bottom-right, Sq < Sk
        (1, 203, 113, 4, 4, new(true, false), null),                     // causal bottom-right, Sq > Sk: rows that see no key
        (1, 77, 150, 6, 1, new(true, true), null),                       // causal top-left, Sq < Sk, MQA
        (2, 150, 77, 4, 2, new(true, true), null),                       // causal top-left, Sq > Sk
        (1, 333, 411, 6, 2, new(false, false, 17, 5), null),             // sliding window
        (1, 129, 257, 8, 2, new(true, false, Softcap: 30f), null),       // causal + softcap
        (2, 1, 1023, 8, 2, new(false, false), null),                     // one query row, a long key sequence
        (1, 300, 77, 8, 2, new(false, false, 3, 3), null),               // a window that slides off the keys: empty rows
        (2, 77, 150, 8, 2, new(true, true, Left: 40, Softcap: 15f), 0.37f), // custom scale, top-left window, softcap
    ];

    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (var (d, dv) in Pairs)
        {
            foreach (DataType dtype in Dtypes)
            {
                foreach (KernelPath path in Paths)
                {
                    foreach (var (b, sq, sk, hq, hkv, mask, scale) in Shapes)
                    {
                        var c = new Case(path, dtype, new AttentionDims(b, sq, sk, hq, hkv, d) { HeadDimV = dv }, mask, scale);
                        yield return new TestCaseData(c).SetName($"V head dim GPU: {c}");
                    }
                }
            }
        }
    }

    /// <summary>Output and log-sum-exp of a fixed-length call, every element, against the float64 reference.</summary>
    [TestCaseSource(nameof(Cases))]
    public void ForwardMatchesTheReference(Case c)
    {
        AttentionDims d = c.Dims;
        RequireHeadDim(c.Dtype, d);
        Random random = TestRandom.ForCurrentTest(out int seed);
        AttentionOptions options = c.Mask.ToOptions(c.Scale) with { KernelPath = c.Path };
        using ForwardRun run = ForwardRun.Create(Device, d, c.Dtype, random, seed);
        float scale = c.Scale ?? (float)d.DefaultScale; // q's head dim alone sets the default
        string context = $"seed {seed}, {c}";
        if (!ForwardValueHeadDimOnPath(options, c.Dtype, d.HeadDim, d.HeadDimV, varlen: false, () =>
            {
                Attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options, Stream);
                Stream.Synchronize();
            }, [run.DOut, run.DLse], context))
        {
            return; // a refusal, checked
        }

        float[] ours = run.DOut.Read();
        float[] lse = run.DLse.Read();
        var (refOut, refLse) = run.Reference(options);
        float[] naive = NaiveAttention.ForwardSameDtype(run.Q, run.K, run.V, d, c.Mask, scale, x => DeviceArray.Round(c.Dtype, x));
        Assert.That(AcceptanceRule.JudgeOutput(ours, naive, refOut, c.Dtype, d, c.Mask), Is.Empty, $"output, {context}");
        Assert.That(AcceptanceRule.JudgeLse(lse, refLse), Is.Empty, $"lse, {context}");
    }

    public static IEnumerable<TestCaseData> VarlenCases()
    {
        foreach (var (d, dv) in Pairs)
        {
            foreach (DataType dtype in Dtypes)
            {
                foreach (KernelPath path in Paths)
                {
                    foreach (MaskSpec mask in new MaskSpec[] { new(false, false), new(true, false), new(true, true, Left: 30) })
                    {
                        yield return new TestCaseData(path, dtype, d, dv, mask)
                            .SetArgDisplayNames(path.ToString(), Name(dtype), $"D{d}", $"Dv{dv}", mask.ToString());
                    }
                }
            }
        }
    }

    /// <summary>
    /// A variable-length batch with empty query and key sequences and length-1 ones (packed v <c>[totalK, Hkv, Dv]</c>,
    /// output <c>[totalQ, Hq, Dv]</c>), judged per sequence; the log-sum-exp too.
    /// </summary>
    [TestCaseSource(nameof(VarlenCases))]
    public void VarlenMatchesTheReferencePerSequence(KernelPath path, DataType dtype, int d, int dv, MaskSpec mask)
    {
        int[] lensQ = [113, 0, 1, 17, 203, 1, 64], lensK = [203, 5, 1, 0, 113, 300, 64];
        const int hq = 8, hkv = 2;
        RequireHeadDim(dtype, new AttentionDims(1, 1, 1, hq, hkv, d));
        Random random = TestRandom.ForCurrentTest(out int seed);
        int totalQ = lensQ.Sum(), totalK = lensK.Sum();
        float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalQ * hq * d));
        float[] k = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * d));
        float[] v = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, totalK * hkv * dv));
        AttentionOptions options = mask.ToOptions() with { KernelPath = path };
        string context = $"seed {seed}, varlen {Name(dtype)} D{d} Dv{dv} {mask}";

        using var gq = DeviceArray.Upload(Device, dtype, q);
        using var gk = DeviceArray.Upload(Device, dtype, k);
        using var gv = DeviceArray.Upload(Device, dtype, v);
        using var go = DeviceArray.Allocate(Device, dtype, totalQ * hq * dv);
        using var gl = DeviceArray.Allocate(Device, DataType.Float32, hq * totalQ);
        go.Poison();
        gl.Poison();
        using var batch = VarlenBatch.FromLengths(Device, lensQ, lensK);
        if (!ForwardValueHeadDimOnPath(options, dtype, d, dv, varlen: true, () =>
            {
                Attention.ForwardVarlen(gq.Tensor([totalQ, hq, d]), gk.Tensor([totalK, hkv, d]), gv.Tensor([totalK, hkv, dv]),
                    go.Tensor([totalQ, hq, dv]), batch, gl.Tensor([hq, totalQ]), options, Stream);
                Stream.Synchronize();
            }, [go, gl], context))
        {
            return; // a refusal, checked
        }

        float[] ours = go.Read();
        float[] lse = gl.Read();
        var refOut = new double[ours.Length];
        var refLse = new double[lse.Length];
        AttentionReference.ForwardVarlen(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            lensQ, lensK, hq, hkv, d, dv, options, ReadOnlySpan<double>.Empty, ReadOnlySpan<double>.Empty, refOut, refLse);

        VarlenJudge.PerSequence(
            lensQ, lensK, q, k, v, ours, lse, refOut, refLse, hq, hkv, d, dv, dtype, mask,
            (float)(1.0 / Math.Sqrt(d)),
            b => $"{context}, path {path}, sequence {b} (Sq {lensQ[b]}, Sk {lensK[b]})");
    }

    /// <summary>What a case adds to the plain call: ALiBi slopes (per head or per batch), sinks, or dropout.</summary>
    public enum Extra
    {
        AlibiPerHead,
        AlibiPerBatch,
        Sinks,
        Dropout,
    }

    public static IEnumerable<TestCaseData> ExtraCases()
    {
        // Each extra with each pair, in both dtypes and on every path, under masks that exercise it (the causal column form
        // of ALiBi, the distance form with a window; sinks on rows that see no key; dropout with causal and softcap).
        // Dropout on Sm90 is refused everywhere (the sm90 kernels have none); Auto takes sm80 for it.
        (Extra Extra, DataType Dtype, KernelPath Path, int B, int Sq, int Sk, int Hq, int Hkv, MaskSpec Mask)[] rows =
        [
            (Extra.AlibiPerHead, DataType.BFloat16, KernelPath.Sm80, 2, 113, 203, 8, 2, new(true, false)),
            (Extra.AlibiPerBatch, DataType.Float16, KernelPath.Auto, 2, 150, 200, 4, 2, new(false, false, 17, 5, 30f)),
            (Extra.Sinks, DataType.BFloat16, KernelPath.Auto, 1, 203, 113, 8, 2, new(true, false)),
            (Extra.Sinks, DataType.Float16, KernelPath.Sm80, 2, 97, 300, 4, 1, new(false, false, 31, 0, 20f)),
            (Extra.Dropout, DataType.BFloat16, KernelPath.Auto, 2, 113, 203, 8, 2, new(true, false)),
            (Extra.Dropout, DataType.Float16, KernelPath.Sm80, 1, 203, 113, 4, 4, new(true, true, Softcap: 30f)),
            (Extra.AlibiPerHead, DataType.Float16, KernelPath.Sm90, 2, 113, 203, 8, 2, new(true, false)),
            (Extra.AlibiPerBatch, DataType.BFloat16, KernelPath.Sm90, 2, 150, 200, 4, 2, new(false, false, 17, 5, 30f)),
            (Extra.Sinks, DataType.BFloat16, KernelPath.Sm90, 1, 203, 113, 8, 2, new(true, false)),
            (Extra.Dropout, DataType.BFloat16, KernelPath.Sm90, 2, 113, 203, 8, 2, new(true, false)),
        ];
        foreach (var (d, dv) in Pairs)
        {
            foreach (var r in rows)
            {
                var c = new Case(r.Path, r.Dtype, new AttentionDims(r.B, r.Sq, r.Sk, r.Hq, r.Hkv, d) { HeadDimV = dv }, r.Mask);
                yield return new TestCaseData(r.Extra, c).SetName($"V head dim GPU with {r.Extra}: {c}");
            }
        }
    }

    /// <summary>
    /// ALiBi, sinks and dropout with a V head dim of its own: the output and log-sum-exp against the float64 reference
    /// with the same extra (the naive same-dtype attention applies it too); dropout's keep mask, materialised by the
    /// call, bit for bit against the managed Philox, and the output judged under that mask.
    /// </summary>
    [TestCaseSource(nameof(ExtraCases))]
    public void ForwardWithAnExtraMatchesTheReference(Extra extra, Case c)
    {
        AttentionDims d = c.Dims;
        RequireHeadDim(c.Dtype, d);
        Random random = TestRandom.ForCurrentTest(out int seed);
        string context = $"seed {seed}, {extra}, {c}";
        float[] q = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.QElements));
        float[] k = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.KvElements));
        float[] v = ForwardRun.RoundAll(c.Dtype, TestRandom.Normal(random, d.VElements));
        bool perBatch = extra == Extra.AlibiPerBatch;
        float[]? slopes = extra is Extra.AlibiPerHead or Extra.AlibiPerBatch
            ? TestRandom.Uniform(random, perBatch ? d.Batch * d.HeadsQ : d.HeadsQ, 0, 0.3).Select(x => (float)x).ToArray() // FA2's draw
            : null;
        float[]? sinks = extra == Extra.Sinks ? TestRandom.Normal(random, d.HeadsQ, 2.0) : null;
        const float dropoutP = 0.17f;
        ulong dropoutSeed = (ulong)random.NextInt64(), dropoutOffset = (ulong)random.Next(0, 1 << 20) * 4;
        AttentionOptions options = c.Mask.ToOptions() with { KernelPath = c.Path };
        long maskElements = (long)d.Batch * d.HeadsQ * d.SeqQ * d.SeqK;

        using var gq = DeviceArray.Upload(Device, c.Dtype, q);
        using var gk = DeviceArray.Upload(Device, c.Dtype, k);
        using var gv = DeviceArray.Upload(Device, c.Dtype, v);
        using var go = DeviceArray.Allocate(Device, c.Dtype, d.OutElements);
        using var gl = DeviceArray.Allocate(Device, DataType.Float32, d.LseElements);
        using DeviceArray? ga = slopes is null ? null : DeviceArray.Upload(Device, DataType.Float32, slopes);
        using DeviceArray? gs = sinks is null ? null : DeviceArray.Upload(Device, DataType.Float32, sinks);
        using DeviceBuffer<byte>? gm = extra == Extra.Dropout ? new DeviceBuffer<byte>(Device, maskElements) : null;
        go.Poison();
        gl.Poison();
        gm?.Fill(0xA5);
        long[] qShape = [d.Batch, d.SeqQ, d.HeadsQ, d.HeadDim], kShape = [d.Batch, d.SeqK, d.HeadsKv, d.HeadDim];
        long[] vShape = [d.Batch, d.SeqK, d.HeadsKv, d.HeadDimV], oShape = [d.Batch, d.SeqQ, d.HeadsQ, d.HeadDimV];
        var args = new AttentionArguments(gq.Tensor(qShape), gk.Tensor(kShape), gv.Tensor(vShape), go.Tensor(oShape),
            gl.Tensor([d.Batch, d.HeadsQ, d.SeqQ]))
        {
            AlibiSlopes = ga?.Tensor(perBatch ? [d.Batch, d.HeadsQ] : [d.HeadsQ]),
            Sinks = gs?.Tensor([d.HeadsQ]),
            DropoutP = gm is null ? 0f : dropoutP,
            DropoutSeed = dropoutSeed,
            DropoutOffset = dropoutOffset,
            DropoutMask = gm is null ? null : DeviceTensor.FromBuffer(gm, [d.Batch, d.HeadsQ, d.SeqQ, d.SeqK]),
        };
        if (!ForwardValueHeadDimOnPath(options, c.Dtype, d.HeadDim, d.HeadDimV, varlen: false, () =>
            {
                Attention.Forward(args, options, Stream);
                Stream.Synchronize();
            }, [go, gl], context, dropout: gm is not null))
        {
            if (gm is not null)
            {
                var untouched = new byte[maskElements];
                gm.CopyTo(untouched);
                Assert.That(untouched.All(x => x == 0xA5), Is.True, $"{context}: a refused call wrote the dropout mask");
            }

            return; // a refusal, checked
        }

        NaiveAttention.Dropout? naiveDropout = null;
        if (gm is not null)
        {
            var mask = new byte[maskElements];
            gm.CopyTo(mask);
            uint threshold = Philox.DropoutThreshold(dropoutP);
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
                            byte want = Philox.DropoutKeep(dropoutSeed, dropoutOffset, b, h, d.HeadsQ, (uint)i, (uint)j, threshold) ? (byte)1 : (byte)0;
                            if (mask[at] != want && wrong++ == 0)
                            {
                                firstWrong = $"[{b}, {h}, {i}, {j}] is {mask[at]}, the managed Philox says {want}";
                            }
                        }
                    }
                }
            }

            Assert.That(wrong, Is.Zero, $"mask elements differing from the managed Philox: {wrong}; first {firstWrong}; {context}");
            naiveDropout = new NaiveAttention.Dropout(dropoutP, (b, h, i, j) => mask[((((long)b * d.HeadsQ) + h) * d.SeqQ + i) * d.SeqK + j] == 1);
        }

        float[] ours = go.Read();
        float[] lse = gl.Read();
        var shape = new AttentionShape(d.Batch, d.SeqQ, d.SeqK, d.HeadsQ, d.HeadsKv, d.HeadDim) { HeadDimV = d.HeadDimV };
        var refOut = new double[d.OutElements];
        var refLse = new double[d.LseElements];
        var extras = new ReferenceExtras
        {
            AlibiSlopes = slopes?.Select(x => (double)x).ToArray(),
            Sinks = sinks?.Select(x => (double)x).ToArray(),
            DropoutP = gm is null ? 0f : dropoutP,
            DropoutSeed = dropoutSeed,
            DropoutOffset = dropoutOffset,
        };
        AttentionReference.ForwardWithExtras(AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
            shape, options, extras, refOut, refLse);
        float[] naive = NaiveAttention.ForwardSameDtype(q, k, v, d, c.Mask, (float)d.DefaultScale, x => DeviceArray.Round(c.Dtype, x),
            slopes is null ? null : AlibiBias(slopes, perBatch, d, c.Mask), naiveDropout, sinks);
        Assert.That(AcceptanceRule.JudgeOutput(ours, naive, refOut, c.Dtype, d, c.Mask), Is.Empty, $"output, {context}");
        Assert.That(AcceptanceRule.JudgeLse(lse, refLse), Is.Empty, $"lse, {context}");
    }

    // ---- helpers ----------------------------------------------------------------------------------------------

    /// <summary>
    /// Ignores the test where this build has no head dim D at all (FA_HEAD_DIMS at build time: the square call is
    /// Unsupported); a build that has it must serve the pair, which the call itself then checks.
    /// </summary>
    private void RequireHeadDim(DataType dtype, AttentionDims dims) => RequireServed(dtype, dims with { HeadDimV = dims.HeadDim });

    /// <summary>
    /// FlashAttention-2's ALiBi bias, written out from FEATURES.md §2: the causal column form +m·j for a causal mask (or
    /// right 0) without a left window (or one of at least Sk), else -m·|i + off - j|, off = Sk - Sq bottom-right, 0 top-left.
    /// </summary>
    private static Func<int, int, int, int, float> AlibiBias(float[] slopes, bool perBatch, AttentionDims d, MaskSpec mask)
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
