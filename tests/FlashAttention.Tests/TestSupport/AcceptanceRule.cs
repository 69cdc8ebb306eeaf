namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// The rule a GPU forward result must meet, as a pure function (so Cpu tests can check the rule itself):
/// every element written and finite; rows without keys exactly 0; relative L2 error against the float64
/// reference no more than twice that of a same-dtype naive attention and under a dtype cap; max abs error no more
/// than twice the naive one (the FA2 rule, KERNELS.md section 5); log-sum-exp within tolerance, +inf where no key.
/// The output has <see cref="AttentionDims.HeadDimV"/> columns (the head dim unless a case sets another).
/// </summary>
internal static class AcceptanceRule
{
    /// <summary>Cap on the relative L2 error for bf16 (DESIGN.md).</summary>
    public const double Bf16Cap = 1e-2;

    /// <summary>Cap for fp16, which has three more mantissa bits.</summary>
    public const double Fp16Cap = 2e-3;

    /// <summary>
    /// |lse - ref| &lt;= LseTolerance * max(1, |ref|). The LSE (m + log l) is computed in fp32 from dtype-exact inputs,
    /// so its error is fp32 arithmetic only: the D-term dot products (~sqrt(D) * 2^-24 relative to sum|q_i k_i|,
    /// about 1e-6 here), exp2/log2 approximations (~2^-22) and a sum of up to 1023 terms (under 1e-5 relative in l,
    /// so 1e-5 absolute in log l). 1e-4 leaves a 10x margin over that and still catches real bugs: a lost or extra
    /// key moves log l by at least log(1023/1022) = 1e-3, a wrong scale or missing max by far more.
    /// </summary>
    public const double LseTolerance = 1e-4;

    public static List<string> JudgeOutput(
        float[] ours, float[] naive, double[] reference, DataType dtype, AttentionDims dims, Mask mask) =>
        JudgeOutput(ours, naive, reference, dtype, dims, MaskSpec.From(mask));

    public static List<string> JudgeOutput(
        float[] ours, float[] naive, double[] reference, DataType dtype, AttentionDims dims, MaskSpec mask)
    {
        var problems = new List<string>();
        int bad = Numerics.FirstNonFinite(ours);
        if (bad >= 0)
        {
            problems.Add($"output[{bad}] = {ours[bad]}: every element must be written and finite");
            return problems;
        }

        for (int i = 0; i < dims.SeqQ && problems.Count == 0; i++)
        {
            bool anyKey = false;
            for (int j = 0; j < dims.SeqK && !anyKey; j++)
            {
                anyKey = mask.Visible(i, j, dims.SeqQ, dims.SeqK);
            }

            if (anyKey)
            {
                continue;
            }

            for (int b = 0; b < dims.Batch; b++)
            {
                for (int h = 0; h < dims.HeadsQ; h++)
                {
                    long start = (((long)b * dims.SeqQ + i) * dims.HeadsQ + h) * dims.HeadDimV;
                    for (int x = 0; x < dims.HeadDimV; x++)
                    {
                        if (ours[start + x] != 0f && problems.Count == 0)
                        {
                            problems.Add($"row b{b} i{i} h{h} sees no key but output[{x}] = {ours[start + x]}, not 0");
                        }
                    }
                }
            }
        }

        double errOurs = Numerics.RelativeL2(ours, reference);
        double errNaive = Numerics.RelativeL2(naive, reference);
        double cap = dtype == DataType.BFloat16 ? Bf16Cap : Fp16Cap;
        double maxOurs = MaxAbsDiff(ours, reference, out long worst);
        double maxNaive = MaxAbsDiff(naive, reference, out _);
        string numbers = $"rel L2 ours {errOurs:E3}, same-dtype naive {errNaive:E3}, cap {cap:E1}; max |diff| ours " +
            $"{maxOurs:E3} (element {worst}: {ours[worst]} vs {reference[worst]:G9}), naive {maxNaive:E3}";
        if (!(errOurs <= 2 * errNaive))
        {
            problems.Add("relative L2 error above twice the same-dtype naive one: " + numbers);
        }

        if (!(errOurs <= cap))
        {
            problems.Add("relative L2 error above the dtype cap: " + numbers);
        }

        if (!(maxOurs <= 2 * maxNaive))
        {
            problems.Add("max abs error above twice the same-dtype naive one (FA2 rule): " + numbers);
        }

        return problems;
    }

    public static List<string> JudgeLse(float[] lse, double[] reference) =>
        JudgeLse(lse, reference, (i, a, e) =>
            !float.IsFinite(a) || Math.Abs(a - e) > LseTolerance * Math.Max(1.0, Math.Abs(e))
                ? $"lse[{i}] = {a:G9}, reference {e:G12}, |diff| {Math.Abs(a - e):E3} > {LseTolerance:E0} * max(1, |ref|)"
                : null);

    /// <summary>
    /// The log-sum-exp rules' frame (this one's and <see cref="Float8Testing.JudgeLse"/>): up to three problems, in
    /// element order; where the reference is +infinity (the row sees no key) the value must be +infinity too; elsewhere
    /// <paramref name="judge"/> (index, value, reference) gives the problem with the value, or null when it is within
    /// the rule's tolerance.
    /// </summary>
    public static List<string> JudgeLse(float[] lse, double[] reference, Func<long, float, double, string?> judge)
    {
        var problems = new List<string>();
        for (long i = 0; i < lse.Length && problems.Count < 3; i++)
        {
            double e = reference[i];
            float a = lse[i];
            if (double.IsPositiveInfinity(e))
            {
                if (!float.IsPositiveInfinity(a))
                {
                    problems.Add($"lse[{i}] = {a} for a row that sees no key; expected +infinity");
                }

                continue;
            }

            if (judge(i, a, e) is { } problem)
            {
                problems.Add(problem);
            }
        }

        return problems;
    }

    private static double MaxAbsDiff(float[] actual, double[] reference, out long worst)
    {
        double max = 0;
        worst = 0;
        for (long i = 0; i < actual.Length; i++)
        {
            double d = Math.Abs(actual[i] - reference[i]);
            if (double.IsNaN(d))
            {
                worst = i;
                return double.NaN;
            }

            if (d > max)
            {
                max = d;
                worst = i;
            }
        }

        return max;
    }
}
