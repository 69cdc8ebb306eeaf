namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// One fixed-length fp8 (e4m3) forward problem on the host: q, k and v in e4m3 (<c>[B, Sq, Hq, D]</c> and
/// <c>[B, Sk, Hkv, D]</c>) and their dense <c>[batch, heads_kv]</c> descale factors (empty: 1), with the float64
/// reference of <see cref="Float8Testing"/>'s rule and the judgement of results by that rule. The Cpu rule tests and the
/// Gpu tests' <see cref="Float8Run"/> judge through it alike.
/// </summary>
internal sealed record Float8Problem(
    AttentionDims Dims, Float8E4M3[] Q, Float8E4M3[] K, Float8E4M3[] V, float[] QDescale, float[] KDescale, float[] VDescale)
{
    /// <summary>ALiBi slopes (<c>[Hq]</c> or <c>[B, Hq]</c>) of the call, or null: the reference adds FA2's bias.</summary>
    public double[]? AlibiSlopes { get; init; }

    /// <summary>The float64 reference output and LSE, and the P-rounded variant (FA3's pt before its bf16 rounding).</summary>
    public (double[] Out, double[] Lse, double[] RoundedP) Reference(AttentionOptions options)
    {
        var shape = new AttentionShape(Dims.Batch, Dims.SeqQ, Dims.SeqK, Dims.HeadsQ, Dims.HeadsKv, Dims.HeadDim);
        var output = new double[Dims.QElements];
        var lse = new double[Dims.LseElements];
        var pt = new double[Dims.QElements];
        AttentionReference.ForwardFloat8WithAlibi(Q, K, V, shape, options, QDescale, KDescale, VDescale, output, lse, false, AlibiSlopes);
        AttentionReference.ForwardFloat8WithAlibi(Q, K, V, shape, options, QDescale, KDescale, VDescale, pt, default, true, AlibiSlopes);
        return (output, lse, pt);
    }

    /// <summary>
    /// FA3's output rule (rtol for a soft-cap where <paramref name="softcap"/>) and our LSE bound (taken with the softmax
    /// scale <paramref name="scale"/>) on an output <paramref name="ours"/> and log-sum-exp <paramref name="lse"/> of this
    /// problem under <paramref name="options"/>: the output's problems and the LSE's, each empty when accepted.
    /// </summary>
    public (List<string> Output, List<string> Lse) Judge(float[] ours, float[] lse, AttentionOptions options, double scale, bool softcap)
    {
        var (reference, refLse, pt) = Reference(options);
        AttentionDims d = Dims;
        int group = d.HeadsQ / d.HeadsKv;
        double[] qt = Float8Testing.Dequantize(Q, QDescale, t => t / d.SeqQ, d.HeadsQ, group, d.HeadDim, d.HeadsKv);
        double[] kt = Float8Testing.Dequantize(K, KDescale, t => t / d.SeqK, d.HeadsKv, 1, d.HeadDim, d.HeadsKv);
        double[] bounds = Float8Testing.LseBounds(qt, kt, d, scale);
        List<string> output = Float8Testing.JudgeOutput(ours, reference, pt, softcap, d.HeadDim, row =>
        {
            long t = row / d.HeadsQ;
            int h = (int)(row % d.HeadsQ), b = (int)(t / d.SeqQ), i = (int)(t % d.SeqQ);
            return double.IsPositiveInfinity(refLse[((long)b * d.HeadsQ + h) * d.SeqQ + i]);
        });
        return (output, Float8Testing.JudgeLse(lse, refLse, bounds));
    }
}
