namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// The rule a GPU backward result must meet, per gradient (dq, dk, dv), as a pure function:
/// <list type="bullet">
/// <item>every element written and finite (the gradients are poisoned with NaN before the call);</item>
/// <item>structural zeros exact: rows of dq whose query sees no key, and rows of dk/dv whose key no query sees, are 0;</item>
/// <item>relative L2 error against the float64 reference no more than <see cref="NaiveFactor"/> times that of the
/// same-dtype naive backward (<see cref="NaiveBackward"/>; the FA2 style of the forward's rule) and under a cap per
/// dtype (<see cref="Bf16Cap"/>, <see cref="Fp16Cap"/>).</item>
/// </list>
/// A gradient whose reference is exactly 0 everywhere (possible only in degenerate shapes) is judged by its largest
/// magnitude instead (<see cref="ZeroGradientTolerance"/>). Max-abs errors are reported in the message, not judged:
/// the kernel's D = rowsum(dO * O) uses the forward's rounded O while the naive uses its own P and dP, so their
/// per-element worst cases fall on different elements and are not comparable one to one.
/// </summary>
internal static class BackwardAcceptance
{
    /// <summary>Relative L2 cap for bf16 gradients (the rule).</summary>
    public const double Bf16Cap = 2e-2;

    /// <summary>Relative L2 cap for fp16 gradients (three more mantissa bits than bf16).</summary>
    public const double Fp16Cap = 4e-3;

    /// <summary>Our relative L2 error may be at most this many times the same-dtype naive one.</summary>
    public const double NaiveFactor = 2.0;

    /// <summary>Largest |gradient| accepted where the reference gradient is identically 0.</summary>
    public const double ZeroGradientTolerance = 1e-3;

    /// <summary>
    /// Rows (of heads x head dim elements) that must be exactly 0 under <paramref name="mask"/>: dq rows [b, i, h] of
    /// queries that see no key, and dk/dv rows [b, j, hk] of keys no query sees (dense layouts of <paramref name="d"/>).
    /// </summary>
    public static (bool[] Dq, bool[] Dkv) ZeroRows(AttentionDims d, MaskSpec mask)
    {
        var rowSees = new bool[d.SeqQ];
        var keySeen = new bool[d.SeqK];
        for (int i = 0; i < d.SeqQ; i++)
        {
            for (int j = 0; j < d.SeqK; j++)
            {
                if (mask.Visible(i, j, d.SeqQ, d.SeqK))
                {
                    rowSees[i] = keySeen[j] = true;
                }
            }
        }

        var dq = new bool[d.Batch * d.SeqQ * d.HeadsQ];
        var dkv = new bool[d.Batch * d.SeqK * d.HeadsKv];
        for (int r = 0; r < dq.Length; r++)
        {
            dq[r] = !rowSees[r / d.HeadsQ % d.SeqQ];
        }

        for (int r = 0; r < dkv.Length; r++)
        {
            dkv[r] = !keySeen[r / d.HeadsKv % d.SeqK];
        }

        return (dq, dkv);
    }

    /// <summary>Problems of one gradient; empty when it passes.</summary>
    /// <param name="name">dq, dk or dv (for the messages).</param>
    /// <param name="ours">The kernel's result, widened to float.</param>
    /// <param name="naive">The same-dtype naive result.</param>
    /// <param name="reference">The float64 reference.</param>
    /// <param name="dtype">The dtype of the gradients.</param>
    /// <param name="rowLength">Elements per row (heads x head dim): <paramref name="zeroRows"/> counts rows of this length.</param>
    /// <param name="zeroRows">Per row, whether it must be exactly 0 (no key seen / seen by no query); null: none.</param>
    public static List<string> Judge(
        string name, float[] ours, float[] naive, double[] reference, DataType dtype, int rowLength, bool[]? zeroRows)
    {
        var problems = new List<string>();
        int bad = Numerics.FirstNonFinite(ours);
        if (bad >= 0)
        {
            problems.Add($"{name}[{bad}] = {ours[bad]} (row {bad / rowLength}): every element must be written and finite");
            return problems;
        }

        if (zeroRows is not null)
        {
            for (int r = 0; r < zeroRows.Length && problems.Count < 3; r++)
            {
                if (!zeroRows[r])
                {
                    continue;
                }

                for (int x = 0; x < rowLength; x++)
                {
                    if (ours[((long)r * rowLength) + x] != 0f)
                    {
                        problems.Add($"{name} row {r} has no attention path (masked on every side) but element {x} is {ours[((long)r * rowLength) + x]}, not 0");
                        break;
                    }
                }
            }
        }

        double refNorm = 0;
        foreach (double e in reference)
        {
            refNorm += e * e;
        }

        double maxOurs = MaxAbsDiff(ours, reference, out long worst);
        double maxNaive = MaxAbsDiff(naive, reference, out _);
        if (refNorm == 0)
        {
            double largest = ours.Max(x => Math.Abs((double)x));
            if (!(largest <= ZeroGradientTolerance))
            {
                problems.Add($"{name}: the reference is 0 everywhere but max |{name}| is {largest:E3} > {ZeroGradientTolerance:E0}");
            }

            return problems;
        }

        double errOurs = Numerics.RelativeL2(ours, reference);
        double errNaive = Numerics.RelativeL2(naive, reference);
        double cap = dtype == DataType.BFloat16 ? Bf16Cap : Fp16Cap;
        string numbers = $"{name}: rel L2 ours {errOurs:E3}, same-dtype naive {errNaive:E3} (x{NaiveFactor} = {NaiveFactor * errNaive:E3}), cap {cap:E1}; " +
            $"max |diff| ours {maxOurs:E3} (element {worst}: {ours[worst]} vs {reference[worst]:G9}), naive {maxNaive:E3}";
        if (!(errOurs <= NaiveFactor * errNaive))
        {
            problems.Add("relative L2 error above twice the same-dtype naive one: " + numbers);
        }

        if (!(errOurs <= cap))
        {
            problems.Add("relative L2 error above the dtype cap: " + numbers);
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
            if (d > max)
            {
                max = d;
                worst = i;
            }
        }

        return max;
    }
}
