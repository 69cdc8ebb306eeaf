namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// A CPU emulation of the FlashAttention-2 forward algorithm with the kernel's precision choices: fp32 scores,
/// an online softmax over key blocks in base 2 with the scale folded in, unnormalised P rounded to the dtype before
/// P.V, fp32 accumulators rescaled per block, one normalisation at the end, output rounded to the dtype. Used only
/// to show that the GPU acceptance rule accepts a faithful implementation and rejects subtly wrong ones.
/// </summary>
public static class FlashEmulation
{
    /// <summary>Deliberate defects, to show the rule catches them.</summary>
    public enum Defect
    {
        None,
        ScaleOffByOnePercent,
        DropLastKeyOfEachRow,
        NoRescaleBetweenBlocks,
        RoundScoresToDtype,
        OneWrongElement,
    }

    public static (float[] Out, float[] Lse) Forward(
        float[] q, float[] k, float[] v, AttentionDims d, Mask mask, float scale, Func<float, float> round, int blockK, Defect defect = Defect.None)
    {
        var output = new float[d.QElements];
        var lse = new float[d.LseElements];
        int group = d.HeadsQ / d.HeadsKv;
        float effScale = defect == Defect.ScaleOffByOnePercent ? scale * 1.01f : scale;
        float scaleLog2 = effScale * 1.44269504f;
        Parallel.For(0, d.Batch * d.HeadsQ, bh =>
        {
            int b = bh / d.HeadsQ, h = bh % d.HeadsQ, hk = h / group;
            var acc = new float[d.HeadDim];
            var s = new float[blockK];
            for (int i = 0; i < d.SeqQ; i++)
            {
                long qBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * d.HeadDim;
                int last = -1;
                for (int j = 0; j < d.SeqK; j++)
                {
                    if (NaiveAttention.Visible(i, j, d.SeqQ, d.SeqK, mask))
                    {
                        last = j;
                    }
                }

                if (defect == Defect.DropLastKeyOfEachRow && last > 0)
                {
                    last--;
                }

                Array.Clear(acc);
                float m = float.NegativeInfinity, l = 0;
                for (int j0 = 0; j0 <= last; j0 += blockK)
                {
                    int n = Math.Min(blockK, last + 1 - j0);
                    float blockMax = float.NegativeInfinity;
                    for (int t = 0; t < n; t++)
                    {
                        long kBase = (((long)b * d.SeqK + j0 + t) * d.HeadsKv + hk) * d.HeadDim;
                        float dot = 0;
                        for (int x = 0; x < d.HeadDim; x++)
                        {
                            dot += q[qBase + x] * k[kBase + x];
                        }

                        s[t] = defect == Defect.RoundScoresToDtype ? round(dot) : dot;
                        blockMax = MathF.Max(blockMax, s[t]);
                    }

                    float mNew = MathF.Max(m, blockMax);
                    float correction = defect == Defect.NoRescaleBetweenBlocks ? 1f : MathF.Pow(2, (m - mNew) * scaleLog2);
                    if (float.IsNegativeInfinity(m))
                    {
                        correction = 0;
                    }

                    l *= correction;
                    for (int x = 0; x < d.HeadDim; x++)
                    {
                        acc[x] *= correction;
                    }

                    for (int t = 0; t < n; t++)
                    {
                        float p = MathF.Pow(2, (s[t] - mNew) * scaleLog2);
                        l += p;
                        float pr = round(p);
                        long vBase = (((long)b * d.SeqK + j0 + t) * d.HeadsKv + hk) * d.HeadDim;
                        for (int x = 0; x < d.HeadDim; x++)
                        {
                            acc[x] += pr * v[vBase + x];
                        }
                    }

                    m = mNew;
                }

                long lseIndex = ((long)b * d.HeadsQ + h) * d.SeqQ + i;
                if (last < 0)
                {
                    lse[lseIndex] = float.PositiveInfinity;
                    continue; // output stays 0
                }

                float inv = 1f / l;
                for (int x = 0; x < d.HeadDim; x++)
                {
                    output[qBase + x] = round(acc[x] * inv);
                }

                lse[lseIndex] = (m * effScale) + MathF.Log(l);
            }
        });

        if (defect == Defect.OneWrongElement)
        {
            int index = output.Length / 2;
            output[index] = round(output[index] + 0.25f);
        }

        return (output, lse);
    }
}
