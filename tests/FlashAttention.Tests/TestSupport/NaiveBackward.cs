namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// The attention backward pass as a plain same-dtype framework computes it (what autograd of
/// softmax(scale q kᵀ + mask) v does with fp16/bf16 tensors): float32 arithmetic, every intermediate tensor a
/// framework would store rounded to the dtype (P, dP = dO vᵀ, dS), fp32 row reductions, each gradient rounded to the
/// dtype once at the end. Written independently of the product's reference; its error against the float64 reference
/// sets the bar the backward kernel must meet.
/// </summary>
internal static class NaiveBackward
{
    /// <summary>
    /// Gradients of q, k and v (dense [B, S, H, D] layouts of <paramref name="d"/>) for the output gradient
    /// <paramref name="dOut"/>; under GQA each kv head sums its query heads in float32 before the final rounding. An
    /// optional additive bias <c>bias(b, h, i, j)</c> (ALiBi) is added after the soft-cap; it gets no gradient. With
    /// <paramref name="dropout"/>, autograd of dropout(P) v: the dropped-and-scaled P (dtype) feeds dV, and the gradient
    /// of P is the dtype dO vᵀ masked and scaled by 1 / (1 - p), rounded again (FEATURES.md section 1).
    /// </summary>
    public static (float[] Dq, float[] Dk, float[] Dv) SameDtype(
        float[] q, float[] k, float[] v, float[] dOut, AttentionDims d, MaskSpec mask, float scale, Func<float, float> round,
        Func<int, int, int, int, float>? bias = null, NaiveAttention.Dropout? dropout = null)
    {
        float keepScale = dropout is null ? 1f : 1f / (1f - dropout.P);
        var dq = new float[d.QElements];
        var dk = new float[d.KvElements];
        var dv = new float[d.VElements];
        int group = d.HeadsQ / d.HeadsKv;
        int dim = d.HeadDim;
        int dimV = d.HeadDimV; // v's, dO's and dv's head dim
        Parallel.For(0, d.Batch * d.HeadsKv, unit =>
        {
            int b = unit / d.HeadsKv;
            int hk = unit % d.HeadsKv;
            var p = new float[d.SeqK];
            var dp = new float[d.SeqK];
            var pv = new float[d.SeqK]; // P as it multiplies V (dropped and scaled under dropout)
            var capFactor = new float[d.SeqK];
            var dqRow = new float[dim];
            var dkAcc = new float[d.SeqK * dim];
            var dvAcc = new float[d.SeqK * dimV];
            for (int h = hk * group; h < (hk + 1) * group; h++)
            {
                for (int i = 0; i < d.SeqQ; i++)
                {
                    long qBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * dim;
                    long oBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * dimV; // dO's row
                    float max = float.NegativeInfinity;
                    bool any = false;
                    for (int j = 0; j < d.SeqK; j++)
                    {
                        if (!mask.Visible(i, j, d.SeqQ, d.SeqK))
                        {
                            continue;
                        }

                        any = true;
                        long kBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * dim;
                        float dot = 0;
                        for (int x = 0; x < dim; x++)
                        {
                            dot += q[qBase + x] * k[kBase + x];
                        }

                        float t = scale * dot;
                        if (mask.Softcap > 0)
                        {
                            float th = MathF.Tanh(t / mask.Softcap);
                            p[j] = mask.Softcap * th;
                            capFactor[j] = 1f - (th * th);
                        }
                        else
                        {
                            p[j] = t;
                            capFactor[j] = 1f;
                        }

                        if (bias is not null)
                        {
                            p[j] += bias(b, h, i, j);
                        }

                        max = MathF.Max(max, p[j]);
                    }

                    if (!any)
                    {
                        continue; // the row's output is fixed at 0: no gradient flows through it
                    }

                    float sum = 0;
                    for (int j = 0; j < d.SeqK; j++)
                    {
                        if (mask.Visible(i, j, d.SeqQ, d.SeqK))
                        {
                            p[j] = MathF.Exp(p[j] - max);
                            sum += p[j];
                        }
                    }

                    // P and dP = dO vᵀ stored in the dtype; D = rowsum(P * dP) reduced in fp32.
                    float rowDot = 0;
                    for (int j = 0; j < d.SeqK; j++)
                    {
                        if (!mask.Visible(i, j, d.SeqQ, d.SeqK))
                        {
                            continue;
                        }

                        p[j] = round(p[j] / sum);
                        long vBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * dimV;
                        float dot = 0;
                        for (int x = 0; x < dimV; x++)
                        {
                            dot += dOut[oBase + x] * v[vBase + x];
                        }

                        dp[j] = round(dot);
                        pv[j] = p[j];
                        if (dropout is not null)
                        {
                            bool keep = dropout.Keep(b, h, i, j);
                            dp[j] = keep ? round(dp[j] * keepScale) : 0f;
                            pv[j] = keep ? round(p[j] * keepScale) : 0f;
                        }

                        rowDot += p[j] * dp[j];
                    }

                    Array.Clear(dqRow);
                    for (int j = 0; j < d.SeqK; j++)
                    {
                        if (!mask.Visible(i, j, d.SeqQ, d.SeqK))
                        {
                            continue;
                        }

                        float ds = round(p[j] * (dp[j] - rowDot) * capFactor[j]);
                        long kBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * dim;
                        int acc = j * dim;
                        for (int x = 0; x < dim; x++)
                        {
                            dqRow[x] += ds * k[kBase + x];
                            dkAcc[acc + x] += ds * q[qBase + x];
                        }

                        int accV = j * dimV;
                        for (int x = 0; x < dimV; x++)
                        {
                            dvAcc[accV + x] += pv[j] * dOut[oBase + x];
                        }
                    }

                    for (int x = 0; x < dim; x++)
                    {
                        dq[qBase + x] = round(scale * dqRow[x]);
                    }
                }
            }

            for (int j = 0; j < d.SeqK; j++)
            {
                long kBase = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * dim;
                for (int x = 0; x < dim; x++)
                {
                    dk[kBase + x] = round(scale * dkAcc[(j * dim) + x]);
                }

                long vRow = (((long)b * d.SeqK + j) * d.HeadsKv + hk) * dimV;
                for (int x = 0; x < dimV; x++)
                {
                    dv[vRow + x] = round(dvAcc[(j * dimV) + x]);
                }
            }
        });
        return (dq, dk, dv);
    }
}
