using FlashAttn.Internal;

namespace FlashAttn.Tests.TestSupport;

/// <summary>One problem: sizes (dense <c>[B, S, H, D]</c> layouts, v and the output with Dv columns).</summary>
internal sealed record ProblemDims(int Batch, int Sq, int Sk, int Hq, int Hkv, int D, int Dv)
{
    public int QElements => Batch * Sq * Hq * D;

    public int KElements => Batch * Sk * Hkv * D;

    public int VElements => Batch * Sk * Hkv * Dv;

    public int OElements => Batch * Sq * Hq * Dv;

    public int LseElements => Batch * Hq * Sq;

    public AttentionShape Shape => new(Batch, Sq, Sk, Hq, Hkv, D) { HeadDimV = Dv };

    public override string ToString() => $"B {Batch}, Sq {Sq}, Sk {Sk}, Hq {Hq}, Hkv {Hkv}, D {D}, Dv {Dv}";
}

/// <summary>
/// The naive float64 formula the reference tests judge <see cref="AttentionReference"/>'s extras against (ALiBi in both
/// of FlashAttention-2's forms, sinks, dropout from the Philox keep bytes, a V head dim of its own), one logit list per
/// query row with an explicit softmax: written apart from the reference's code, shared by ReferenceExtrasTests and
/// ReferenceValueHeadDimTests.
/// </summary>
internal static class ExtrasNaive
{
    /// <summary>
    /// FA2's rule for its causal ALiBi form, written from flash_api.cpp: windows of at least seqlen_k become -1,
    /// causal sets the right side to 0, and the kernel is "causal" iff (left, right) is then (-1, 0).
    /// </summary>
    public static bool Fa2Causal(AttentionOptions o, int maxSk)
    {
        int left = o.WindowLeft is { } l && l < maxSk ? l : -1;
        int right = o.WindowRight is { } r && r < maxSk ? r : -1;
        if (o.Causal)
        {
            right = 0;
        }

        return left < 0 && right == 0;
    }

    /// <summary>
    /// The naive formula: for every (b, h, i), the visible keys' final logits (scale, softcap, then the ALiBi bias:
    /// <c>+m j</c> for FA2's causal form, else <c>-m |i + off - j|</c>), the sink appended as one more logit whose value
    /// row is 0, an explicit softmax over that list, the Philox keep test and <c>1 / (1 - p)</c>; LSE = log Σ over the
    /// list (+infinity when it is empty). <paramref name="batchBase"/> is added to b for the slopes and the dropout
    /// stream (a varlen sequence run alone as batch 0).
    /// </summary>
    public static (double[] Output, double[] Lse) Forward(
        double[] q, double[] k, double[] v, ProblemDims dims, AttentionOptions o, ReferenceExtras x, int maxSk,
        int batchBase = 0, bool distanceForm = false)
    {
        var output = new double[dims.OElements];
        var lse = new double[dims.LseElements];
        double scale = o.SoftmaxScale ?? 1.0 / Math.Sqrt(dims.D);
        double cap = o.Softcap ?? 0;
        bool columnForm = !distanceForm && Fa2Causal(o, maxSk);
        uint threshold = (uint)Math.Floor((double)(1f - x.DropoutP) * 255.0);
        double rp = 1.0 / (1.0 - x.DropoutP);
        int off = o.CausalAlignment == CausalAlignment.TopLeft ? 0 : dims.Sk - dims.Sq;
        for (int b = 0; b < dims.Batch; b++)
        {
            for (int h = 0; h < dims.Hq; h++)
            {
                int hk = h / (dims.Hq / dims.Hkv);
                for (int i = 0; i < dims.Sq; i++)
                {
                    var columns = new List<int>();
                    var logits = new List<double>();
                    for (int j = 0; j < dims.Sk; j++)
                    {
                        if (!NaiveAttention.Visible(i, j, dims.Sq, dims.Sk, o.Causal, o.CausalAlignment == CausalAlignment.TopLeft, o.WindowLeft, o.WindowRight))
                        {
                            continue;
                        }

                        double dot = 0;
                        for (int e = 0; e < dims.D; e++)
                        {
                            dot += q[((((b * dims.Sq) + i) * dims.Hq) + h) * dims.D + e] * k[((((b * dims.Sk) + j) * dims.Hkv) + hk) * dims.D + e];
                        }

                        double logit = scale * dot;
                        if (cap > 0)
                        {
                            logit = cap * Math.Tanh(logit / cap);
                        }

                        if (x.AlibiSlopes is { } slopes)
                        {
                            double m = slopes.Length == dims.Hq ? slopes[h] : slopes[((batchBase + b) * dims.Hq) + h];
                            logit += columnForm ? m * j : -m * Math.Abs(i + off - j);
                        }

                        columns.Add(j);
                        logits.Add(logit);
                    }

                    if (x.Sinks is { } sinks)
                    {
                        columns.Add(-1); // the sink: a logit with no value row
                        logits.Add(sinks[h]);
                    }

                    int lseAt = (((b * dims.Hq) + h) * dims.Sq) + i;
                    if (logits.Count == 0)
                    {
                        lse[lseAt] = double.PositiveInfinity;
                        continue;
                    }

                    double max = logits.Max();
                    double z = logits.Sum(l => Math.Exp(l - max));
                    lse[lseAt] = max + Math.Log(z);
                    for (int c = 0; c < columns.Count; c++)
                    {
                        int j = columns[c];
                        if (j < 0)
                        {
                            continue;
                        }

                        double p = Math.Exp(logits[c] - max) / z;
                        if (x.DropoutP > 0)
                        {
                            uint u = Philox.DropoutByte(x.DropoutSeed, x.DropoutOffset, batchBase + b, h, dims.Hq, (uint)i, (uint)j);
                            p = u <= threshold ? p * rp : 0;
                        }

                        for (int e = 0; e < dims.Dv; e++)
                        {
                            output[((((b * dims.Sq) + i) * dims.Hq) + h) * dims.Dv + e] += p * v[((((b * dims.Sk) + j) * dims.Hkv) + hk) * dims.Dv + e];
                        }
                    }
                }
            }
        }

        return (output, lse);
    }
}
