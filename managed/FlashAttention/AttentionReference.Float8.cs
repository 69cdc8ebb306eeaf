namespace FlashAttn;

/// <content>
/// The fp8 (e4m3) forward in float64: the inputs dequantized with their per-(batch, KV head) descale factors, then the
/// forward reference; optionally with the probabilities rounded to e4m3 as the fp8 kernels round them.
/// </content>
/// <remarks>
/// Semantics of FlashAttention-3's fp8 forward (FEATURES.md §6): the true inputs are
/// <c>q = q8 · qDescale[b, h / (headsQ / headsKv)]</c> (q's factor is per KV head too), <c>k = k8 · kDescale[b, hk]</c>
/// and <c>v = v8 · vDescale[b, hk]</c>, with b the batch index (the sequence index of a variable-length batch); the
/// scores, the soft-cap (the descales act inside the tanh), the masks, the softmax, the output and the log-sum-exp are
/// those of <see cref="Forward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, Span{double}, Span{double})"/>
/// on these true values. The kernels write the output in bf16; these methods return it in float64 (round it for a
/// bf16 comparison).
/// </remarks>
public static partial class AttentionReference
{
    /// <summary>
    /// The fp8 kernels scale the weights by 2^8 before rounding them to e4m3 (FlashAttention-3's max offset 8), so the
    /// largest weight of a row, 1, becomes 256 and small weights stay in the format's normal range.
    /// </summary>
    private const double Float8ProbabilityScale = 256.0;

    /// <summary>
    /// Runs the fp8 (e4m3) attention forward in float64 on the dequantized inputs.
    /// </summary>
    /// <param name="q">Queries in e4m3, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys in e4m3, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values in e4m3, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale (<see cref="AttentionOptions.KernelPath"/> is ignored).</param>
    /// <param name="qDescale">
    /// q's descale factors, dense <c>[Batch, HeadsKv]</c> (per KV head, as FlashAttention-3's <c>q_descale</c>), or empty
    /// for 1.
    /// </param>
    /// <param name="kDescale">k's descale factors, dense <c>[Batch, HeadsKv]</c>, or empty for 1.</param>
    /// <param name="vDescale">v's descale factors, dense <c>[Batch, HeadsKv]</c>, or empty for 1.</param>
    /// <param name="output">Receives the output in float64, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp of the true (descaled) logits, <c>[Batch, HeadsQ, SeqLenQ]</c>; empty to skip it.</param>
    /// <param name="roundProbabilities">
    /// <see langword="false"/>: the exact softmax (the <c>ref</c> of FlashAttention-3's fp8 tolerance rule).
    /// <see langword="true"/>: each weight rounded to e4m3 before <c>P·V</c> as the fp8 kernels round it, with the
    /// max offset 8: <c>P̃_j = e4m3(256 · e^{x_j - m})</c>, m the row's final maximum, the denominator
    /// <c>256 · Σ e^{x_j - m}</c> from the unrounded weights (the <c>pt</c> of the rule, once its output is rounded to
    /// bf16). The log-sum-exp is the same either way.
    /// </param>
    /// <exception cref="ArgumentException">A span length does not match <paramref name="shape"/>, or the shape is invalid.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void ForwardFloat8(
        ReadOnlySpan<Float8E4M3> q,
        ReadOnlySpan<Float8E4M3> k,
        ReadOnlySpan<Float8E4M3> v,
        AttentionShape shape,
        AttentionOptions options,
        ReadOnlySpan<float> qDescale,
        ReadOnlySpan<float> kDescale,
        ReadOnlySpan<float> vDescale,
        Span<double> output,
        Span<double> logSumExp,
        bool roundProbabilities = false)
    {
        ArgumentNullException.ThrowIfNull(options);
        shape.Validate(nameof(shape));
        RequireLength(q.Length, shape.QElementCount, nameof(q));
        RequireLength(k.Length, shape.KvElementCount, nameof(k));
        RequireLength(v.Length, shape.KvElementCount, nameof(v));
        RequireDescale(qDescale, shape.Batch, shape.HeadsKv, nameof(qDescale));
        RequireDescale(kDescale, shape.Batch, shape.HeadsKv, nameof(kDescale));
        RequireDescale(vDescale, shape.Batch, shape.HeadsKv, nameof(vDescale));
        int seqQ = shape.SeqLenQ, seqK = shape.SeqLenK;
        ForwardWithExtras(
            Dequantize(q, qDescale, t => (int)(t / seqQ), shape.HeadsQ, shape.GroupSize, shape.HeadDim),
            Dequantize(k, kDescale, t => (int)(t / seqK), shape.HeadsKv, 1, shape.HeadDim),
            Dequantize(v, vDescale, t => (int)(t / seqK), shape.HeadsKv, 1, shape.HeadDim),
            shape, options, Float8Extras(roundProbabilities), output, logSumExp);
    }

    /// <summary>
    /// Runs the fp8 (e4m3) attention forward in float64 over a variable-length batch (the packed layout of
    /// <see cref="ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, Span{double}, Span{double})"/>),
    /// on the dequantized inputs; the descale factors of sequence b are row b of each <c>[sequences, headsKv]</c> table.
    /// </summary>
    /// <param name="q">Packed queries in e4m3, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="k">Packed keys in e4m3, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="v">Packed values in e4m3, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more), as many as <paramref name="seqLensQ"/>.</param>
    /// <param name="headsQ">Query heads, a multiple of <paramref name="headsKv"/>.</param>
    /// <param name="headsKv">Key/value heads.</param>
    /// <param name="headDim">Head dimension.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="qDescale">q's descale factors, dense <c>[sequences, headsKv]</c>, or empty for 1.</param>
    /// <param name="kDescale">k's descale factors, dense <c>[sequences, headsKv]</c>, or empty for 1.</param>
    /// <param name="vDescale">v's descale factors, dense <c>[sequences, headsKv]</c>, or empty for 1.</param>
    /// <param name="output">Receives the output in float64, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[headsQ, totalQ]</c>; empty to skip it.</param>
    /// <param name="roundProbabilities">As in <see cref="ForwardFloat8"/>: round the weights to e4m3 as the kernels do.</param>
    /// <exception cref="ArgumentException">
    /// The length lists differ in count or hold a negative length, a size is out of range, the heads do not divide, or
    /// a span length does not match the sizes.
    /// </exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void ForwardFloat8Varlen(
        ReadOnlySpan<Float8E4M3> q,
        ReadOnlySpan<Float8E4M3> k,
        ReadOnlySpan<Float8E4M3> v,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        ReadOnlySpan<float> qDescale,
        ReadOnlySpan<float> kDescale,
        ReadOnlySpan<float> vDescale,
        Span<double> output,
        Span<double> logSumExp,
        bool roundProbabilities = false)
    {
        ArgumentNullException.ThrowIfNull(options);
        new AttentionShape(seqLensQ.Length, 0, 0, headsQ, headsKv, headDim).Validate(nameof(headsQ));
        if (seqLensQ.Length != seqLensK.Length)
        {
            throw new ArgumentException(
                $"seqLensQ has {seqLensQ.Length} sequences but seqLensK has {seqLensK.Length}.", nameof(seqLensK));
        }

        long[] cuQ = PrefixSums(seqLensQ, nameof(seqLensQ), out _);
        long[] cuK = PrefixSums(seqLensK, nameof(seqLensK), out _);
        RequireLength(q.Length, cuQ[^1] * headsQ * headDim, nameof(q));
        RequireLength(k.Length, cuK[^1] * headsKv * headDim, nameof(k));
        RequireLength(v.Length, cuK[^1] * headsKv * headDim, nameof(v));
        int sequences = seqLensQ.Length;
        RequireDescale(qDescale, sequences, headsKv, nameof(qDescale));
        RequireDescale(kDescale, sequences, headsKv, nameof(kDescale));
        RequireDescale(vDescale, sequences, headsKv, nameof(vDescale));
        int[] sequenceOfQ = SequenceOfToken(cuQ), sequenceOfK = SequenceOfToken(cuK);
        ForwardVarlenWithExtras(
            Dequantize(q, qDescale, t => sequenceOfQ[t], headsQ, headsQ / headsKv, headDim),
            Dequantize(k, kDescale, t => sequenceOfK[t], headsKv, 1, headDim),
            Dequantize(v, vDescale, t => sequenceOfK[t], headsKv, 1, headDim),
            seqLensQ, seqLensK, headsQ, headsKv, headDim, options, Float8Extras(roundProbabilities), output, logSumExp);
    }

    private static ReferenceExtras Float8Extras(bool roundProbabilities) =>
        roundProbabilities ? new ReferenceExtras { RoundProbabilitiesToFloat8 = true } : ReferenceExtras.None;

    private static void RequireDescale(ReadOnlySpan<float> descale, int batch, int headsKv, string paramName)
    {
        if (!descale.IsEmpty && descale.Length != (long)batch * headsKv)
        {
            throw new ArgumentException(
                $"{paramName} has {descale.Length} values; it must be empty (every factor 1) or dense [batch, headsKv] = " +
                $"[{batch}, {headsKv}] ({(long)batch * headsKv} values).", paramName);
        }
    }

    /// <summary>The sequence of each packed token, from the prefix sums of the lengths.</summary>
    private static int[] SequenceOfToken(long[] cu)
    {
        var sequenceOf = new int[cu[^1]];
        for (int b = 0; b + 1 < cu.Length; b++)
        {
            sequenceOf.AsSpan((int)cu[b], (int)(cu[b + 1] - cu[b])).Fill(b);
        }

        return sequenceOf;
    }

    /// <summary>
    /// <c>values</c>, tokens of <paramref name="heads"/> heads of <paramref name="headDim"/> elements, widened to float64
    /// and multiplied by <c>descale[batchOf(token), head / group]</c> (exact: an e4m3 value times an fp32 factor has at
    /// most 28 significant bits); an empty <paramref name="descale"/> is 1.
    /// </summary>
    private static double[] Dequantize(
        ReadOnlySpan<Float8E4M3> values, ReadOnlySpan<float> descale, Func<long, int> batchOf, int heads, int group, int headDim)
    {
        var result = new double[values.Length];
        int headsKv = heads / group;
        long tokens = values.Length / ((long)heads * headDim);
        for (long t = 0; t < tokens; t++)
        {
            int b = descale.IsEmpty ? 0 : batchOf(t);
            for (int h = 0; h < heads; h++)
            {
                double factor = descale.IsEmpty ? 1.0 : descale[(b * headsKv) + (h / group)];
                long start = ((t * heads) + h) * headDim;
                for (int x = 0; x < headDim; x++)
                {
                    result[start + x] = values[(int)(start + x)] * factor;
                }
            }
        }

        return result;
    }
}
