namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// How the GPU tests judge dσ (dsinks), a per-head sum over every query row of t_i = -e^(σ_h - LSE_i)·D_i with
/// D_i = rowsum(dO ∘ O). The sum has a handful of elements (one per head), each a sum of mixed-sign terms, so its
/// error relative to |dσ| is ill-conditioned and one draw of it against one draw of a naive's error is a coin flip:
/// a CPU emulation of the kernels' arithmetic (the FA2 forward's rounded P and O, D from the stored O, as
/// FlashAttention 2/3/4 do) was above twice the same-dtype naive's relative L2 error on the 4-element dsinks in 5 to
/// 24% of seeds (9 of 40 with one sink near 5, the H200 run's -5.149), while the same comparison over the per-row
/// terms stayed at a ratio of about 1. So dσ is judged in two parts that together bound it:
/// <list type="number">
/// <item>the per-row terms (one per batch entry, head and query row) that the kernels sum, formed from our own stored
/// output and log-sum-exp, by <see cref="BackwardAcceptance"/>'s rule (at most twice the same-dtype naive's relative L2
/// error over all rows, and under the dtype cap): the library's D comes from the forward's stored O, so this is where
/// its accuracy is decided;</item>
/// <item>the kernels' reduction: dσ_h within a float32 rounding bound of the float64 sum of those terms, scaled by
/// Σ_i |terms| (their condition): a sign error, a lost or doubled row, a wrong head, batch entry or LSE fails it.</item>
/// </list>
/// and, as an end-to-end guard, dσ_h against the float64 reference within the dtype cap times Σ_i |t_i| of the reference.
/// </summary>
internal static class SinkGradientCheck
{
    /// <summary>
    /// Per-row terms t = -e^(σ_h - LSE)·Σ_x dO·O, laid out as the LSE ([B, Hq, Sq]; a variable-length batch is B = 1,
    /// Sq = total rows), with O and dO in [B, Sq, Hq, D]; and per head the reduction bound of float32 arithmetic:
    /// u·Σ_i e^(σ - LSE_i)·Σ_x |dO·O|·(D + n + |σ - LSE_i| + 4), u = 2^-24, n the rows of the head (the dot product
    /// of D products, expf within 2 ulp of its argument, which itself rounds with error u·|σ - LSE|, and n additions).
    /// </summary>
    public static (double[] Terms, double[] ReductionBound, double[] AbsSum) Terms(
        Func<long, double> o, float[] dOut, Func<long, double> lse, float[] sinks, int batch, int seqQ, int heads, int dim)
    {
        var terms = new double[(long)batch * heads * seqQ];
        var bound = new double[heads];
        var absSum = new double[heads];
        long n = (long)batch * seqQ;
        for (int b = 0; b < batch; b++)
        {
            for (int h = 0; h < heads; h++)
            {
                for (int i = 0; i < seqQ; i++)
                {
                    long at = (((long)b * heads) + h) * seqQ + i;
                    long row = ((((long)b * seqQ) + i) * heads + h) * dim;
                    double dot = 0, absDot = 0;
                    for (int x = 0; x < dim; x++)
                    {
                        double pr = dOut[row + x] * o(row + x);
                        dot += pr;
                        absDot += Math.Abs(pr);
                    }

                    if (absDot == 0)
                    {
                        continue;  // a row that sees no key: O = 0 (its LSE is the sink), nothing to add
                    }

                    double arg = sinks[h] - lse(at);
                    double w = Math.Exp(arg);
                    terms[at] = -w * dot;
                    absSum[h] += Math.Abs(terms[at]);
                    bound[h] += Math.Pow(2, -24) * w * absDot * (dim + n + Math.Abs(arg) + 4);
                }
            }
        }

        return (terms, bound, absSum);
    }

    /// <summary>Problems of dsinks (empty when it passes); see the class summary for the three parts.</summary>
    /// <param name="ours">The kernels' dsinks [Hq].</param>
    /// <param name="oursOut">Our forward's stored output (widened), [B, Sq, Hq, D].</param>
    /// <param name="oursLse">Our forward's log-sum-exp, [B, Hq, Sq].</param>
    /// <param name="naiveTerms">The same-dtype naive's per-row terms (<see cref="FlashAttn.Tests.Gpu.NaiveSink"/>), [B, Hq, Sq].</param>
    /// <param name="refOut">The float64 reference output.</param>
    /// <param name="refLse">The float64 reference log-sum-exp.</param>
    /// <param name="refDsinks">The float64 reference dsinks.</param>
    /// <param name="dOut">The output gradient, [B, Sq, Hq, D].</param>
    /// <param name="sinks">The sinks [Hq], as the kernels read them.</param>
    /// <param name="batch">B (1 for a variable-length batch).</param>
    /// <param name="seqQ">Sq (the total rows for a variable-length batch).</param>
    /// <param name="heads">Hq.</param>
    /// <param name="dim">The head dim.</param>
    /// <param name="dtype">The inputs' dtype (picks the cap).</param>
    public static List<string> Judge(
        float[] ours, float[] oursOut, float[] oursLse, float[] naiveTerms, double[] refOut, double[] refLse, double[] refDsinks,
        float[] dOut, float[] sinks, int batch, int seqQ, int heads, int dim, DataType dtype)
    {
        var problems = new List<string>();
        int bad = Numerics.FirstNonFinite(ours);
        if (bad >= 0)
        {
            problems.Add($"dsinks[{bad}] = {ours[bad]}: every element must be written and finite");
            return problems;
        }

        (double[] oursTerms, double[] bound, _) = Terms(i => oursOut[i], dOut, i => oursLse[i], sinks, batch, seqQ, heads, dim);
        (double[] refTerms, _, double[] refAbs) = Terms(i => refOut[i], dOut, i => refLse[i], sinks, batch, seqQ, heads, dim);

        // 1. The per-row terms, from our stored output and LSE, by the gradients' rule.
        problems.AddRange(BackwardAcceptance.Judge(
            "dsinks per-row terms -e^(sink - lse) rowsum(dO * O)", oursTerms.Select(x => (float)x).ToArray(), naiveTerms, refTerms, dtype, 1, null));

        double cap = dtype == DataType.BFloat16 ? BackwardAcceptance.Bf16Cap : BackwardAcceptance.Fp16Cap;
        for (int h = 0; h < heads; h++)
        {
            // 2. The reduction of exactly those terms.
            double sum = 0;
            for (int b = 0; b < batch; b++)
            {
                for (int i = 0; i < seqQ; i++)
                {
                    sum += oursTerms[(((long)b * heads) + h) * seqQ + i];
                }
            }

            if (!(Math.Abs(ours[h] - sum) <= bound[h]))
            {
                problems.Add($"dsinks[{h}] = {ours[h]:G9} is not the sum of its rows' terms from our stored O and LSE, {sum:G9}: " +
                    $"|diff| {Math.Abs(ours[h] - sum):E3} > the float32 reduction bound {bound[h]:E3}");
            }

            // 3. End to end, against float64, relative to the sum's condition.
            if (!(Math.Abs(ours[h] - refDsinks[h]) <= cap * refAbs[h]))
            {
                problems.Add($"dsinks[{h}] = {ours[h]:G9}, float64 reference {refDsinks[h]:G9}: |diff| {Math.Abs(ours[h] - refDsinks[h]):E3} > " +
                    $"cap {cap:E1} x sum_i |term_i| {refAbs[h]:E3}");
            }
        }

        return problems;
    }
}
