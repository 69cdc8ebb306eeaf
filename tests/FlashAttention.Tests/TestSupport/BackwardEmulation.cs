namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// A CPU emulation of the FlashAttention-2 backward pass with the kernel's precision choices, for checking the
/// backward acceptance rule (<see cref="BackwardAcceptance"/>) on the CPU: the probabilities are recomputed from
/// the forward's log-sum-exp (<c>P = exp(scale q·k - lse)</c>), <c>D = rowsum(dO ∘ O)</c> is taken from the forward
/// output O (stored in the dtype), P is rounded to the dtype for the <c>Pᵀ dO</c> product and dS for the
/// <c>dS k</c> and <c>dSᵀ q</c> products, everything accumulates in fp32, and dq, dk, dv are rounded to the dtype
/// once at the end. Each <see cref="Defect"/> is one bug a real kernel could have.
/// </summary>
public static class BackwardEmulation
{
    /// <summary>A deliberate bug in the emulation.</summary>
    public enum Defect
    {
        /// <summary>The faithful algorithm.</summary>
        None,

        /// <summary>The backward uses a softmax scale 1% too large (in the recomputed scores and the dq, dk factors).</summary>
        ScaleOffByOnePercent,

        /// <summary>D = rowsum(dO ∘ O) is left out of dS = P (dP - D).</summary>
        NoDeltaTerm,

        /// <summary>The last key each query row sees is masked out in the backward (a mask off by one).</summary>
        DropLastKeyOfEachRow,

        /// <summary>dk and dv take the gradient of the first query head of each GQA group only, not their sum.</summary>
        DkDvFromFirstHeadOfGroupOnly,

        /// <summary>dS is not multiplied by P (dS = dP - D), a wrong softmax derivative.</summary>
        SoftmaxDerivativeWithoutP,

        /// <summary>One element of dk is never written (it keeps the NaN poison).</summary>
        OneUnwrittenElement,

        /// <summary>dq of query rows that see no key is not zeroed (holds a small stale value).</summary>
        MaskedRowNotZero,
    }

    /// <summary>dq, dk, dv of the emulated kernel for inputs already rounded to the dtype.</summary>
    public static (float[] Dq, float[] Dk, float[] Dv) Backward(
        float[] q, float[] k, float[] v, float[] dOut, AttentionDims d, MaskSpec mask, float scale, Func<float, float> round, Defect defect)
    {
        var dq = new float[d.QElements];
        var dk = new float[d.KvElements];
        var dv = new float[d.KvElements];
        int group = d.HeadsQ / d.HeadsKv;
        int dim = d.HeadDim;
        float bwdScale = defect == Defect.ScaleOffByOnePercent ? scale * 1.01f : scale;
        Parallel.For(0, d.Batch * d.HeadsKv, unit =>
        {
            int b = unit / d.HeadsKv;
            int hk = unit % d.HeadsKv;
            var s = new float[d.SeqK];
            var o = new float[dim];
            var dqRow = new float[dim];
            var dkAcc = new float[d.SeqK * dim];
            var dvAcc = new float[d.SeqK * dim];
            for (int h = hk * group; h < (hk + 1) * group; h++)
            {
                bool feedsDkDv = defect != Defect.DkDvFromFirstHeadOfGroupOnly || h == hk * group;
                for (int i = 0; i < d.SeqQ; i++)
                {
                    long qBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * dim;

                    // The forward: log-sum-exp in fp32, O in the dtype.
                    float max = float.NegativeInfinity;
                    int lastVisible = -1;
                    for (int j = 0; j < d.SeqK; j++)
                    {
                        if (mask.Visible(i, j, d.SeqQ, d.SeqK))
                        {
                            s[j] = scale * Dot(q, qBase, k, KBase(b, j, hk, d), dim);
                            max = MathF.Max(max, s[j]);
                            lastVisible = j;
                        }
                    }

                    if (lastVisible < 0)
                    {
                        if (defect == Defect.MaskedRowNotZero)
                        {
                            dq[qBase] = round(1e-3f);
                        }

                        continue; // no key: output 0, no gradient
                    }

                    float sum = 0;
                    Array.Clear(o);
                    for (int j = 0; j <= lastVisible; j++)
                    {
                        if (mask.Visible(i, j, d.SeqQ, d.SeqK))
                        {
                            float p = MathF.Exp(s[j] - max);
                            sum += p;
                            long vBase = KBase(b, j, hk, d);
                            for (int x = 0; x < dim; x++)
                            {
                                o[x] += p * v[vBase + x];
                            }
                        }
                    }

                    float lse = max + MathF.Log(sum);
                    float delta = 0;
                    for (int x = 0; x < dim; x++)
                    {
                        delta += dOut[qBase + x] * round(o[x] / sum);
                    }

                    if (defect == Defect.NoDeltaTerm)
                    {
                        delta = 0;
                    }

                    // The backward: P recomputed from the log-sum-exp.
                    Array.Clear(dqRow);
                    for (int j = 0; j <= lastVisible; j++)
                    {
                        if (!mask.Visible(i, j, d.SeqQ, d.SeqK) || (defect == Defect.DropLastKeyOfEachRow && j == lastVisible))
                        {
                            continue;
                        }

                        long kBase = KBase(b, j, hk, d);
                        float p = MathF.Exp((bwdScale * Dot(q, qBase, k, kBase, dim)) - lse);
                        float dp = Dot(dOut, qBase, v, kBase, dim);
                        float ds = round(defect == Defect.SoftmaxDerivativeWithoutP ? dp - delta : p * (dp - delta));
                        float p16 = round(p);
                        int acc = j * dim;
                        for (int x = 0; x < dim; x++)
                        {
                            dqRow[x] += ds * k[kBase + x];
                            if (feedsDkDv)
                            {
                                dkAcc[acc + x] += ds * q[qBase + x];
                                dvAcc[acc + x] += p16 * dOut[qBase + x];
                            }
                        }
                    }

                    for (int x = 0; x < dim; x++)
                    {
                        dq[qBase + x] = round(bwdScale * dqRow[x]);
                    }
                }
            }

            for (int j = 0; j < d.SeqK; j++)
            {
                long kBase = KBase(b, j, hk, d);
                for (int x = 0; x < dim; x++)
                {
                    dk[kBase + x] = round(bwdScale * dkAcc[(j * dim) + x]);
                    dv[kBase + x] = round(dvAcc[(j * dim) + x]);
                }
            }
        });

        if (defect == Defect.OneUnwrittenElement)
        {
            dk[dk.Length / 2] = float.NaN;
        }

        return (dq, dk, dv);
    }

    private static long KBase(int b, int j, int hk, AttentionDims d) => (((long)b * d.SeqK + j) * d.HeadsKv + hk) * d.HeadDim;

    private static float Dot(float[] a, long aBase, float[] c, long cBase, int dim)
    {
        float dot = 0;
        for (int x = 0; x < dim; x++)
        {
            dot += a[aBase + x] * c[cBase + x];
        }

        return dot;
    }
}
