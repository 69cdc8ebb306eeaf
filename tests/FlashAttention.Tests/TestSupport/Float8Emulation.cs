namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// A CPU emulation of the fp8 (e4m3) forward kernel with its precision choices (FEATURES.md §6, FlashAttention-3):
/// e4m3 inputs, fp32 scores <c>q8·k8</c> multiplied by <c>scale · qDescale · kDescale</c> (inside the tanh with a
/// soft-cap), an online softmax over key blocks, the unnormalised weights <c>2^((x - m_running) log2 e + 8)</c> (the max
/// offset 8: in [0, 256]) rounded to e4m3 before <c>P·V</c> while the row sum takes them unrounded, fp32 accumulators
/// rescaled per block, <c>vDescale / rowsum</c> applied once, the output rounded to bf16. Used only to show that the fp8
/// acceptance rule (<see cref="Float8Testing"/>) accepts a faithful kernel and rejects subtly wrong ones.
/// </summary>
public static class Float8Emulation
{
    /// <summary>Deliberate defects, to show the rule catches them.</summary>
    public enum Defect
    {
        None,

        /// <summary>v's descale never applied.</summary>
        IgnoreVDescale,

        /// <summary>q's descale indexed by the query head (mod heads_kv) instead of the KV head.</summary>
        QDescaleByQueryHead,

        /// <summary>With a soft-cap: the descales applied to the capped score instead of inside the tanh.</summary>
        DescaleOutsideTanh,

        /// <summary>The accumulators and the row sum not rescaled when the running maximum grows.</summary>
        NoRescaleBetweenBlocks,

        /// <summary>One output element off by 0.25.</summary>
        OneWrongElement,
    }

    public static (float[] Out, float[] Lse) Forward(
        float[] q, float[] k, float[] v, float[] qDescale, float[] kDescale, float[] vDescale, AttentionDims d, MaskSpec mask,
        float scale, int blockK, Defect defect = Defect.None)
    {
        var output = new float[d.QElements];
        var lse = new float[d.LseElements];
        int group = d.HeadsQ / d.HeadsKv;
        const float Log2E = 1.44269504f;
        float cap = mask.Softcap;
        Parallel.For(0, d.Batch * d.HeadsQ, bh =>
        {
            int b = bh / d.HeadsQ, h = bh % d.HeadsQ, hk = h / group;
            int qdHead = defect == Defect.QDescaleByQueryHead ? h % d.HeadsKv : hk;
            float qd = qDescale.Length == 0 ? 1f : qDescale[(b * d.HeadsKv) + qdHead];
            float kd = kDescale.Length == 0 ? 1f : kDescale[(b * d.HeadsKv) + hk];
            float vd = vDescale.Length == 0 || defect == Defect.IgnoreVDescale ? 1f : vDescale[(b * d.HeadsKv) + hk];
            float qkScale = scale * qd * kd;
            var acc = new float[d.HeadDim];
            var s = new float[blockK];
            for (int i = 0; i < d.SeqQ; i++)
            {
                long qBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * d.HeadDim;
                var visible = new List<int>();
                for (int j = 0; j < d.SeqK; j++)
                {
                    if (mask.Visible(i, j, d.SeqQ, d.SeqK))
                    {
                        visible.Add(j);
                    }
                }

                long lseIndex = ((long)b * d.HeadsQ + h) * d.SeqQ + i;
                if (visible.Count == 0)
                {
                    lse[lseIndex] = float.PositiveInfinity;
                    continue; // output stays 0
                }

                Array.Clear(acc);
                float m = float.NegativeInfinity, rowSum = 0;
                for (int at = 0; at < visible.Count; at += blockK)
                {
                    int n = Math.Min(blockK, visible.Count - at);
                    float blockMax = float.NegativeInfinity;
                    for (int t = 0; t < n; t++)
                    {
                        long kBase = (((long)b * d.SeqK + visible[at + t]) * d.HeadsKv + hk) * d.HeadDim;
                        float dot = 0;
                        for (int x = 0; x < d.HeadDim; x++)
                        {
                            dot += q[qBase + x] * k[kBase + x];
                        }

                        float logit;
                        if (cap > 0)
                        {
                            logit = defect == Defect.DescaleOutsideTanh
                                ? cap * MathF.Tanh(dot * scale / cap) * qd * kd
                                : cap * MathF.Tanh(dot * qkScale / cap);
                        }
                        else
                        {
                            logit = dot * qkScale;
                        }

                        s[t] = logit;
                        blockMax = MathF.Max(blockMax, logit);
                    }

                    float mNew = MathF.Max(m, blockMax);
                    float correction = float.IsNegativeInfinity(m) ? 0f
                        : defect == Defect.NoRescaleBetweenBlocks ? 1f
                        : MathF.Pow(2, (m - mNew) * Log2E);
                    rowSum *= correction;
                    for (int x = 0; x < d.HeadDim; x++)
                    {
                        acc[x] *= correction;
                    }

                    for (int t = 0; t < n; t++)
                    {
                        float p = MathF.Pow(2, ((s[t] - mNew) * Log2E) + 8); // max offset 8: in [0, 256]
                        rowSum += p;
                        float rounded = (Float8E4M3)p;
                        long vBase = (((long)b * d.SeqK + visible[at + t]) * d.HeadsKv + hk) * d.HeadDim;
                        for (int x = 0; x < d.HeadDim; x++)
                        {
                            acc[x] += rounded * v[vBase + x];
                        }
                    }

                    m = mNew;
                }

                float factor = vd / rowSum;
                for (int x = 0; x < d.HeadDim; x++)
                {
                    output[qBase + x] = Numerics.RoundToBf16(acc[x] * factor);
                }

                lse[lseIndex] = m + MathF.Log(rowSum) - (8 * MathF.Log(2));
            }
        });

        if (defect == Defect.OneWrongElement)
        {
            int index = output.Length / 2;
            output[index] = Numerics.RoundToBf16(output[index] + 0.25f);
        }

        return (output, lse);
    }
}
