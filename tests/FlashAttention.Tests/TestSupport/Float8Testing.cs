namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Inputs and the accuracy rule of the fp8 (e4m3) forward tests, as FlashAttention-3's tests make and judge them
/// (hopper/test_flash_attn.py, FEATURES.md §6 "Test accuracy"). Pure functions, so the Cpu tests check the rule itself.
/// </summary>
/// <remarks>
/// <para>
/// Inputs: standard normal values rounded to bf16, then to e4m3 (FA3 draws <c>randn</c> in bf16 and converts with
/// <c>.to(torch.float8_e4m3fn)</c>); with a soft-cap q is first multiplied by <c>softcap / 4</c> (FA3, "so that qk
/// reaches the softcap range"). Descale factors are <c>rand(batch, headsKv) * 2</c>, uniform in [0, 2).
/// </para>
/// <para>
/// Output rule (FA3's <c>test_flash_attn_output</c>): every element finite; rows that see no key exactly 0; and
/// <c>max|out - ref| &lt;= rtol * max|pt - ref| + 2 * max|(ref + 0.3 - 0.3) - ref|</c>, rtol 2 (3 with softcap).
/// <c>ref</c> is the float64 reference on the dequantized inputs
/// (<see cref="AttentionReference.ForwardFloat8"/>); <c>pt</c> the same with each weight rounded to e4m3 as the kernel
/// rounds it (max offset 8; <c>roundProbabilities: true</c>) and the output rounded to bf16, our stand-in for FA3's
/// low-precision PyTorch computation. FA3 evaluates the last term on its bf16 <c>out_ref</c> in bf16 arithmetic
/// (the noise of one bf16 add near the output's magnitude), so it is evaluated so here: ref rounded to bf16, each
/// add rounded to bf16.
/// </para>
/// <para>
/// Log-sum-exp (FA3's test does not check it; this bound is ours): +infinity where the row sees no key, else
/// <c>|lse - ref| &lt;= 1e-4 * max(1, |ref|) + 2^-10 * scale * Σ_x |q_x| * max_j |k_jx|</c> on the true (descaled)
/// values. An error ε_j in each logit moves the LSE by at most max|ε_j| (the LSE's gradient is the softmax), and the
/// logits come from e4m3 products summed by the fp8 tensor cores, whose accumulation keeps fewer bits than fp32 (about
/// 14); 2^-10 of the sum of the products' magnitudes (bounded by <c>Σ_x |q_x| max_j |k_jx|</c>) covers that with a wide
/// margin, and the first term the fp32 exp, log and descale arithmetic, as the 16-bit rule's 1e-4. A wrong descale,
/// a descale outside the tanh, a lost mask or a wrong scale moves the LSE by far more.
/// </para>
/// </remarks>
internal static class Float8Testing
{
    /// <summary>rtol of the output rule without a soft-cap (FA3).</summary>
    public const double Rtol = 2;

    /// <summary>rtol of the output rule with a soft-cap (FA3).</summary>
    public const double RtolSoftcap = 3;

    /// <summary>Relative LSE term of the rule (the fp32 arithmetic), as the 16-bit rule's.</summary>
    public const double LseRelative = 1e-4;

    /// <summary>Fraction of the logits' sum of product magnitudes allowed for the fp8 tensor-core accumulation.</summary>
    public const double LseAccumulation = 1.0 / 1024;

    /// <summary>FA3's inputs: N(0, std^2) rounded to bf16, then to e4m3.</summary>
    public static Float8E4M3[] RandomInputs(Random random, int count, double std = 1.0)
    {
        float[] normal = TestRandom.Normal(random, count, std);
        var result = new Float8E4M3[count];
        for (int i = 0; i < count; i++)
        {
            result[i] = (Float8E4M3)Numerics.RoundToBf16(normal[i]);
        }

        return result;
    }

    /// <summary>
    /// FA3's q, k and v of a fixed-length problem (<see cref="RandomInputs"/>, drawn in that order): q with std
    /// <c>softcap / 4</c> where <paramref name="softcap"/> is set (FA3: "so that qk reaches the softcap range"), else 1;
    /// k and v with std 1.
    /// </summary>
    public static (Float8E4M3[] Q, Float8E4M3[] K, Float8E4M3[] V) RandomQkv(Random random, AttentionDims dims, float softcap = 0f) =>
        (RandomInputs(random, dims.QElements, softcap > 0 ? softcap / 4 : 1), RandomInputs(random, dims.KvElements),
            RandomInputs(random, dims.KvElements));

    /// <summary>
    /// FA3's inputs of a packed variable-length problem, drawn in this order: q <c>[totalQ, headsQ, headDim]</c>, k and v
    /// <c>[totalK, headsKv, headDim]</c> (<see cref="RandomInputs"/>, std 1), then q's, k's and v's descale tables
    /// <c>[sequences, headsKv]</c> (<see cref="RandomDescales"/>).
    /// </summary>
    public static (Float8E4M3[] Q, Float8E4M3[] K, Float8E4M3[] V, float[] QDescale, float[] KDescale, float[] VDescale) RandomVarlenInputs(
        Random random, int totalQ, int totalK, int sequences, int headsQ, int headsKv, int headDim)
    {
        Float8E4M3[] q = RandomInputs(random, totalQ * headsQ * headDim);
        Float8E4M3[] k = RandomInputs(random, totalK * headsKv * headDim);
        Float8E4M3[] v = RandomInputs(random, totalK * headsKv * headDim);
        float[] qd = RandomDescales(random, sequences * headsKv);
        float[] kd = RandomDescales(random, sequences * headsKv);
        float[] vd = RandomDescales(random, sequences * headsKv);
        return (q, k, v, qd, kd, vd);
    }

    /// <summary>FA3's descale factors: <c>rand(count) * 2</c>, uniform in [0, 2), as fp32.</summary>
    public static float[] RandomDescales(Random random, int count)
    {
        var result = new float[count];
        for (int i = 0; i < count; i++)
        {
            result[i] = (float)(random.NextDouble() * 2);
        }

        return result;
    }

    /// <summary>The e4m3 values widened to float (exact).</summary>
    public static float[] ToFloat(ReadOnlySpan<Float8E4M3> values)
    {
        var result = new float[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = values[i];
        }

        return result;
    }

    /// <summary>
    /// The true values of a dense <c>[tokens, heads, dim]</c> e4m3 tensor: <c>x * descale[batchOf(t), h / group]</c>
    /// (the tests' own indexing, independent of the product's); an empty descale is 1.
    /// </summary>
    public static double[] Dequantize(
        ReadOnlySpan<Float8E4M3> values, ReadOnlySpan<float> descale, Func<int, int> batchOf, int heads, int group, int dim, int headsKv)
    {
        var result = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            int t = i / (heads * dim);
            int h = i / dim % heads;
            double factor = descale.IsEmpty ? 1.0 : descale[(batchOf(t) * headsKv) + (h / group)];
            result[i] = values[i] * factor;
        }

        return result;
    }

    /// <summary>bf16 rounding of a float64 value (through float, as a bf16 output of an fp32 value is rounded).</summary>
    public static float Bf16(double x) => Numerics.RoundToBf16((float)x);

    /// <summary>
    /// FA3's output rule on flat arrays of one layout: <paramref name="ours"/> (bf16 values read back), the float64
    /// reference and the float64 P-rounded variant (<c>pt</c> before its bf16 rounding, done here). Rows of
    /// <paramref name="headDim"/> elements for which <paramref name="rowSeesNoKey"/> holds must be exactly 0. Returns the
    /// problems found (empty: accepted).
    /// </summary>
    public static List<string> JudgeOutput(
        float[] ours, double[] reference, double[] roundedP, bool softcap, int headDim, Func<long, bool> rowSeesNoKey)
    {
        var problems = new List<string>();
        int bad = Numerics.FirstNonFinite(ours);
        if (bad >= 0)
        {
            problems.Add($"output[{bad}] = {ours[bad]}: every element must be written and finite");
            return problems;
        }

        for (long i = 0; i < ours.Length; i += headDim)
        {
            if (!rowSeesNoKey(i / headDim))
            {
                continue;
            }

            for (int x = 0; x < headDim; x++)
            {
                if (ours[i + x] != 0f)
                {
                    problems.Add($"output row {i / headDim} sees no key but element {x} is {ours[i + x]}, not 0");
                    return problems;
                }
            }
        }

        double maxOurs = 0, maxPt = 0;
        long worst = 0;
        for (long i = 0; i < ours.Length; i++)
        {
            double r = reference[i];
            double d = Math.Abs(ours[i] - r);
            if (d > maxOurs)
            {
                maxOurs = d;
                worst = i;
            }

            maxPt = Math.Max(maxPt, Math.Abs(Bf16(roundedP[i]) - r));
        }

        double noise = Bf16Noise(reference);

        double rtol = softcap ? RtolSoftcap : Rtol;
        double bound = (rtol * maxPt) + (2 * noise);
        if (!(maxOurs <= bound))
        {
            problems.Add(
                $"max |out - ref| = {maxOurs:E3} (element {worst}: {ours[worst]} vs {reference[worst]:G9}) exceeds rtol {rtol} * " +
                $"max |pt - ref| ({maxPt:E3}) + 2 * bf16 noise ({noise:E3}) = {bound:E3}");
        }

        return problems;
    }

    /// <summary>
    /// FA3's <c>max|(out_ref + 0.3 - 0.3) - out_ref|</c> on the bf16 reference, each operation rounded to bf16 as PyTorch
    /// evaluates it on a bf16 tensor: the noise of one bf16 add near the outputs' magnitude.
    /// </summary>
    public static double Bf16Noise(ReadOnlySpan<double> reference)
    {
        double noise = 0;
        foreach (double r in reference)
        {
            float rb = Bf16(r);
            float up = Numerics.RoundToBf16(rb + 0.3f);
            float down = Numerics.RoundToBf16(up - 0.3f);
            noise = Math.Max(noise, Math.Abs(Numerics.RoundToBf16(down - rb)));
        }

        return noise;
    }

    /// <summary>
    /// The per-row LSE bound of the class remarks, for a dense fixed-length layout (q <c>[B, Sq, Hq, D]</c> and k
    /// <c>[B, Sk, Hkv, D]</c> as true values, LSE <c>[B, Hq, Sq]</c>).
    /// </summary>
    public static double[] LseBounds(double[] q, double[] k, AttentionDims d, double scale)
    {
        var bounds = new double[d.LseElements];
        int group = d.HeadsQ / d.HeadsKv;
        for (int b = 0; b < d.Batch; b++)
        {
            for (int hk = 0; hk < d.HeadsKv; hk++)
            {
                double[] kMax = ColumnMax(k, b * d.SeqK, d.SeqK, d.HeadsKv, hk, d.HeadDim);
                for (int h = hk * group; h < (hk + 1) * group; h++)
                {
                    for (int i = 0; i < d.SeqQ; i++)
                    {
                        long qBase = (((long)b * d.SeqQ + i) * d.HeadsQ + h) * d.HeadDim;
                        bounds[((long)b * d.HeadsQ + h) * d.SeqQ + i] = LseAccumulation * scale * Dot(q, qBase, kMax);
                    }
                }
            }
        }

        return bounds;
    }

    /// <summary>
    /// The per-row LSE bound for a packed variable-length layout (q <c>[totalQ, Hq, D]</c>, k <c>[totalK, Hkv, D]</c>
    /// as true values, LSE <c>[Hq, totalQ]</c>).
    /// </summary>
    public static double[] LseBoundsVarlen(double[] q, double[] k, int[] lensQ, int[] lensK, int headsQ, int headsKv, int headDim, double scale)
    {
        int totalQ = lensQ.Sum();
        var bounds = new double[(long)headsQ * totalQ];
        int group = headsQ / headsKv;
        int startQ = 0, startK = 0;
        for (int b = 0; b < lensQ.Length; b++)
        {
            for (int hk = 0; hk < headsKv; hk++)
            {
                double[] kMax = ColumnMax(k, startK, lensK[b], headsKv, hk, headDim);
                for (int h = hk * group; h < (hk + 1) * group; h++)
                {
                    for (int i = 0; i < lensQ[b]; i++)
                    {
                        long qBase = (((long)startQ + i) * headsQ + h) * headDim;
                        bounds[((long)h * totalQ) + startQ + i] = LseAccumulation * scale * Dot(q, qBase, kMax);
                    }
                }
            }

            startQ += lensQ[b];
            startK += lensK[b];
        }

        return bounds;
    }

    /// <summary>The LSE rule: +infinity where the reference is, else within <c>1e-4 * max(1, |ref|) + bound</c>.</summary>
    public static List<string> JudgeLse(float[] lse, double[] reference, double[] bounds) =>
        AcceptanceRule.JudgeLse(lse, reference, (i, a, e) =>
        {
            double tolerance = (LseRelative * Math.Max(1.0, Math.Abs(e))) + bounds[i];
            return !float.IsFinite(a) || !(Math.Abs(a - e) <= tolerance)
                ? $"lse[{i}] = {a:G9}, reference {e:G12}, |diff| {Math.Abs(a - e):E3} > {tolerance:E3}"
                : null;
        });

    /// <summary>max_j |k[j, hk, x]| over the <paramref name="count"/> tokens from <paramref name="start"/>.</summary>
    private static double[] ColumnMax(double[] k, int start, int count, int headsKv, int hk, int headDim)
    {
        var max = new double[headDim];
        for (int j = start; j < start + count; j++)
        {
            long kBase = (((long)j * headsKv) + hk) * headDim;
            for (int x = 0; x < headDim; x++)
            {
                max[x] = Math.Max(max[x], Math.Abs(k[kBase + x]));
            }
        }

        return max;
    }

    private static double Dot(double[] q, long qBase, double[] kMax)
    {
        double sum = 0;
        for (int x = 0; x < kMax.Length; x++)
        {
            sum += Math.Abs(q[qBase + x]) * kMax[x];
        }

        return sum;
    }
}
