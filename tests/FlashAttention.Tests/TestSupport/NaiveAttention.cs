namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Deliberately plain attention written for the tests, independent of the product's reference:
/// per query row it lists the visible keys, computes their scores, takes an explicit softmax and mixes
/// the values. Two flavours: float64 (the oracle) and "same dtype" (what a plain framework would compute
/// in fp16/bf16: float32 arithmetic, P rounded to the dtype before P.V, output rounded to the dtype),
/// whose error against the oracle sets the bar the kernels must meet.
/// </summary>
internal static class NaiveAttention
{
    /// <summary>
    /// Dropout as a framework applies it (FEATURES.md section 1): element (b, h, i, j) of P is kept when
    /// <c>Keep(b, h, i, j)</c>, kept values scaled by 1 / (1 - P) in the dtype.
    /// </summary>
    public sealed record Dropout(float P, Func<int, int, int, int, bool> Keep);

    /// <summary>Whether query row <paramref name="i"/> sees key <paramref name="j"/>.</summary>
    public static bool Visible(int i, int j, int seqQ, int seqK, Mask mask) => mask switch
    {
        Mask.None => true,
        // The diagonal ends in the bottom-right corner: the last query sees every key.
        Mask.CausalBottomRight => j <= i + (seqK - seqQ),
        // The diagonal starts in the top-left corner: query i sees keys 0..i.
        Mask.CausalTopLeft => j <= i,
        _ => throw new ArgumentOutOfRangeException(nameof(mask)),
    };

    /// <summary>
    /// Visibility with a sliding window, spelled out from the header's definition: with the diagonal at
    /// i + off (off = Sk - Sq bottom-right, 0 top-left), key j is visible iff it is at most the diagonal when
    /// causal, at most diagonal + right and at least diagonal - left when those are set.
    /// </summary>
    public static bool Visible(int i, int j, int seqQ, int seqK, bool causal, bool topLeft, int? left, int? right)
    {
        long diagonal = i + (topLeft ? 0L : (long)seqK - seqQ);
        return (!causal || j <= diagonal)
            && (right is null || j <= diagonal + right.Value)
            && (left is null || j >= diagonal - left.Value);
    }

    /// <summary>
    /// float64 attention. Rows that see no key get output 0 and log-sum-exp +infinity.
    /// </summary>
    public static (double[] Output, double[] Lse) Forward64(
        ReadOnlySpan<double> q, ReadOnlySpan<double> k, ReadOnlySpan<double> v, AttentionDims d, Mask mask, double scale) =>
        Forward64(q, k, v, d, mask != Mask.None, mask == Mask.CausalTopLeft, null, null, 0, scale);

    /// <summary>
    /// float64 attention with causal mask, alignment, sliding window and soft-capping (cap &gt; 0: each scaled
    /// score s becomes cap * tanh(s / cap)). Rows that see no key get output 0 and log-sum-exp +infinity. v and the
    /// output have <see cref="AttentionDims.HeadDimV"/> columns.
    /// </summary>
    public static (double[] Output, double[] Lse) Forward64(
        ReadOnlySpan<double> q, ReadOnlySpan<double> k, ReadOnlySpan<double> v, AttentionDims d,
        bool causal, bool topLeft, int? windowLeft, int? windowRight, double softcap, double scale)
    {
        var qa = q.ToArray();
        var ka = k.ToArray();
        var va = v.ToArray();
        int dv = d.HeadDimV;
        var output = new double[d.OutElements];
        var lse = new double[d.LseElements];
        int group = d.HeadsQ / d.HeadsKv;
        Parallel.For(0, d.Batch * d.HeadsQ, bh =>
        {
            int b = bh / d.HeadsQ;
            int h = bh % d.HeadsQ;
            int hk = h / group;
            var scores = new double[d.SeqK];
            var visible = new List<int>(d.SeqK);
            for (int i = 0; i < d.SeqQ; i++)
            {
                visible.Clear();
                for (int j = 0; j < d.SeqK; j++)
                {
                    if (Visible(i, j, d.SeqQ, d.SeqK, causal, topLeft, windowLeft, windowRight))
                    {
                        visible.Add(j);
                    }
                }

                long qBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * d.HeadDim;
                long outBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * dv;
                if (visible.Count == 0)
                {
                    lse[((long)b * d.HeadsQ + h) * d.SeqQ + i] = double.PositiveInfinity;
                    continue; // output stays 0
                }

                double max = double.NegativeInfinity;
                foreach (int j in visible)
                {
                    long kBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * d.HeadDim;
                    double dot = 0;
                    for (int x = 0; x < d.HeadDim; x++)
                    {
                        dot += qa[qBase + x] * ka[kBase + x];
                    }

                    double score = scale * dot;
                    scores[j] = softcap > 0 ? softcap * Math.Tanh(score / softcap) : score;
                    max = Math.Max(max, scores[j]);
                }

                double sum = 0;
                foreach (int j in visible)
                {
                    scores[j] = Math.Exp(scores[j] - max);
                    sum += scores[j];
                }

                foreach (int j in visible)
                {
                    double p = scores[j] / sum;
                    long vBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * dv;
                    for (int x = 0; x < dv; x++)
                    {
                        output[outBase + x] += p * va[vBase + x];
                    }
                }

                lse[((long)b * d.HeadsQ + h) * d.SeqQ + i] = max + Math.Log(sum);
            }
        });
        return (output, lse);
    }

    /// <summary>
    /// Attention as a plain same-dtype implementation computes it: inputs are already dtype values,
    /// arithmetic in float32, the normalised P rounded to the dtype before P.V, the output rounded to the
    /// dtype. <paramref name="round"/> rounds a float to the nearest value of the dtype.
    /// </summary>
    public static float[] ForwardSameDtype(
        float[] q, float[] k, float[] v, AttentionDims d, Mask mask, float scale, Func<float, float> round) =>
        ForwardSameDtype(q, k, v, d, MaskSpec.From(mask), scale, round);

    /// <summary>
    /// Same as the <see cref="Mask"/> overload, with window and soft-cap (applied in float32), and an optional additive
    /// bias <c>bias(b, h, i, j)</c> (ALiBi) added in float32 after the soft-cap, optional dropout on the rounded P
    /// (dropped elements skipped, the row's sum scaled by 1 / (1 - p) before the output's rounding) and optional sink
    /// logits (one per query head: an extra softmax column with no value row, in the maximum and the denominator; a row
    /// that sees no key still gets 0). v and the output have <see cref="AttentionDims.HeadDimV"/> columns.
    /// </summary>
    public static float[] ForwardSameDtype(
        float[] q, float[] k, float[] v, AttentionDims d, MaskSpec mask, float scale, Func<float, float> round,
        Func<int, int, int, int, float>? bias = null, Dropout? dropout = null, float[]? sinks = null)
    {
        float keepScale = dropout is null ? 1f : 1f / (1f - dropout.P);
        int dv = d.HeadDimV;
        var output = new float[d.OutElements];
        int group = d.HeadsQ / d.HeadsKv;
        Parallel.For(0, d.Batch * d.HeadsQ, bh =>
        {
            int b = bh / d.HeadsQ;
            int h = bh % d.HeadsQ;
            int hk = h / group;
            var scores = new float[d.SeqK];
            var acc = new float[dv];
            for (int i = 0; i < d.SeqQ; i++)
            {
                long qBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * d.HeadDim;
                long outBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * dv;
                float max = sinks is null ? float.NegativeInfinity : sinks[h];
                bool any = false;
                for (int j = 0; j < d.SeqK; j++)
                {
                    if (!mask.Visible(i, j, d.SeqQ, d.SeqK))
                    {
                        continue;
                    }

                    any = true;
                    long kBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * d.HeadDim;
                    float dot = 0;
                    for (int x = 0; x < d.HeadDim; x++)
                    {
                        dot += q[qBase + x] * k[kBase + x];
                    }

                    scores[j] = mask.Softcap > 0 ? mask.Softcap * MathF.Tanh(scale * dot / mask.Softcap) : scale * dot;
                    if (bias is not null)
                    {
                        scores[j] += bias(b, h, i, j);
                    }

                    max = MathF.Max(max, scores[j]);
                }

                if (!any)
                {
                    continue;
                }

                float sum = sinks is null ? 0 : MathF.Exp(sinks[h] - max);
                for (int j = 0; j < d.SeqK; j++)
                {
                    if (mask.Visible(i, j, d.SeqQ, d.SeqK))
                    {
                        scores[j] = MathF.Exp(scores[j] - max);
                        sum += scores[j];
                    }
                }

                Array.Clear(acc);
                for (int j = 0; j < d.SeqK; j++)
                {
                    if (!mask.Visible(i, j, d.SeqQ, d.SeqK) || (dropout is not null && !dropout.Keep(b, h, i, j)))
                    {
                        continue;
                    }

                    float p = round(scores[j] / sum);
                    long vBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * dv;
                    for (int x = 0; x < dv; x++)
                    {
                        acc[x] += p * v[vBase + x];
                    }
                }

                for (int x = 0; x < dv; x++)
                {
                    output[outBase + x] = round(acc[x] * keepScale);
                }
            }
        });
        return output;
    }
}
