using NUnit.Framework;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Judges a variable-length forward's output and log-sum-exp sequence by sequence, every element: the output by
/// <see cref="AcceptanceRule.JudgeOutput(float[], float[], double[], DataType, AttentionDims, MaskSpec)"/> against a same-dtype naive
/// attention over the sequence's packed rows and the float64 reference, the log-sum-exp by
/// <see cref="AcceptanceRule.JudgeLse(float[], double[])"/>. The packed varlen tests, the V-head-dim ones and the paged ones
/// share it (the naive side always reads the packed rows, an independent route to the keys of a paged call).
/// </summary>
internal static class VarlenJudge
{
    /// <summary>
    /// Asserts every sequence with queries: q <c>[Σ lensQ, hq, d]</c>, k <c>[Σ lensK, hkv, d]</c> and v
    /// <c>[Σ lensK, hkv, dv]</c> packed; ours and refOut <c>[Σ lensQ, hq, dv]</c>; lse and refLse <c>[hq, Σ lensQ]</c>.
    /// <paramref name="where"/> names sequence b in a failure message.
    /// </summary>
    public static void PerSequence(
        int[] lensQ, int[] lensK, float[] q, float[] k, float[] v, float[] ours, float[] lse, double[] refOut, double[] refLse,
        int hq, int hkv, int d, int dv, DataType dtype, MaskSpec mask, float softmaxScale, Func<int, string> where)
    {
        int totalQ = lensQ.Sum();
        int rowQ = 0, rowK = 0;
        for (int b = 0; b < lensQ.Length; b++)
        {
            int lq = lensQ[b], lk = lensK[b];
            var dims = new AttentionDims(1, lq, lk, hq, hkv, d) { HeadDimV = dv };
            if (lq > 0)
            {
                float[] qs = q.AsSpan(rowQ * hq * d, lq * hq * d).ToArray();
                float[] ks = k.AsSpan(rowK * hkv * d, lk * hkv * d).ToArray();
                float[] vs = v.AsSpan(rowK * hkv * dv, lk * hkv * dv).ToArray();
                float[] naive = NaiveAttention.ForwardSameDtype(qs, ks, vs, dims, mask, softmaxScale, x => DeviceArray.Round(dtype, x));
                float[] oursSeq = ours.AsSpan(rowQ * hq * dv, lq * hq * dv).ToArray();
                double[] refSeq = refOut.AsSpan(rowQ * hq * dv, lq * hq * dv).ToArray();
                Assert.That(AcceptanceRule.JudgeOutput(oursSeq, naive, refSeq, dtype, dims, mask), Is.Empty, where(b));

                var lseSeq = new float[hq * lq];
                var refLseSeq = new double[hq * lq];
                for (int h = 0; h < hq; h++)
                {
                    Array.Copy(lse, (h * totalQ) + rowQ, lseSeq, h * lq, lq);
                    Array.Copy(refLse, (h * totalQ) + rowQ, refLseSeq, h * lq, lq);
                }

                Assert.That(AcceptanceRule.JudgeLse(lseSeq, refLseSeq), Is.Empty, where(b));
            }

            rowQ += lq;
            rowK += lk;
        }
    }
}
