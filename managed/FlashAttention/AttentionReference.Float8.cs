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
        bool roundProbabilities = false) =>
        ForwardFloat8WithAlibi(q, k, v, shape, options, qDescale, kDescale, vDescale, output, logSumExp, roundProbabilities, null);

    /// <summary>
    /// <see cref="ForwardFloat8(ReadOnlySpan{Float8E4M3}, ReadOnlySpan{Float8E4M3}, ReadOnlySpan{Float8E4M3}, AttentionShape, AttentionOptions, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, Span{double}, Span{double}, bool)"/>
    /// with ALiBi slopes (<c>[headsQ]</c> or <c>[batch, headsQ]</c>; null: none), added to the true (descaled) logits.
    /// </summary>
    internal static void ForwardFloat8WithAlibi(
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
        bool roundProbabilities,
        double[]? alibiSlopes)
    {
        ArgumentNullException.ThrowIfNull(options);
        shape.Validate(nameof(shape));
        if (shape.HeadDimV != shape.HeadDim)
        {
            // As the library: the fp8 forward has no V head dim of its own (C ABI 0.10 serves it in fp16 and bf16 only).
            throw new ArgumentException(
                $"The fp8 reference takes one head dim for q, k and v; the shape's HeadDimV is {shape.HeadDimV} but its HeadDim is {shape.HeadDim}.",
                nameof(shape));
        }

        RequireFloat8Inputs(q, k, v, shape.QElementCount, shape.KvElementCount, qDescale, kDescale, vDescale, shape.Batch, shape.HeadsKv);
        int seqQ = shape.SeqLenQ, seqK = shape.SeqLenK;
        var (tq, tk, tv) = Dequantize(
            q, k, v, qDescale, kDescale, vDescale, t => (int)(t / seqQ), t => (int)(t / seqK), shape.HeadsQ, shape.HeadsKv, shape.HeadDim);
        ReferenceExtras extras = Float8Extras(roundProbabilities);
        ForwardWithExtras(tq, tk, tv, shape, options, alibiSlopes is null ? extras : extras with { AlibiSlopes = alibiSlopes }, output,
            logSumExp);
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
        (long[] cuQ, long[] cuK, _) = CheckVarlenSizes(seqLensQ, seqLensK, headsQ, headsKv, headDim);
        RequireFloat8Inputs(
            q, k, v, cuQ[^1] * headsQ * headDim, cuK[^1] * headsKv * headDim, qDescale, kDescale, vDescale, seqLensQ.Length, headsKv);
        int[] sequenceOfQ = SequenceOfToken(cuQ), sequenceOfK = SequenceOfToken(cuK);
        var (tq, tk, tv) = Dequantize(
            q, k, v, qDescale, kDescale, vDescale, t => sequenceOfQ[t], t => sequenceOfK[t], headsQ, headsKv, headDim);
        ForwardVarlenWithExtras(
            tq, tk, tv, seqLensQ, seqLensK, headsQ, headsKv, headDim, options, Float8Extras(roundProbabilities), output, logSumExp);
    }

    private static ReferenceExtras Float8Extras(bool roundProbabilities) =>
        roundProbabilities ? new ReferenceExtras { RoundProbabilitiesToFloat8 = true } : ReferenceExtras.None;

    /// <summary>
    /// The length checks both fp8 entry points make, in this order: q against <paramref name="qElements"/>, k and v
    /// against <paramref name="kvElements"/>, then each descale table (empty, or dense <c>[batch, headsKv]</c>).
    /// </summary>
    private static void RequireFloat8Inputs(
        ReadOnlySpan<Float8E4M3> q,
        ReadOnlySpan<Float8E4M3> k,
        ReadOnlySpan<Float8E4M3> v,
        long qElements,
        long kvElements,
        ReadOnlySpan<float> qDescale,
        ReadOnlySpan<float> kDescale,
        ReadOnlySpan<float> vDescale,
        int batch,
        int headsKv)
    {
        RequireLength(q.Length, qElements, nameof(q));
        RequireLength(k.Length, kvElements, nameof(k));
        RequireLength(v.Length, kvElements, nameof(v));
        RequireDescale(qDescale, batch, headsKv, nameof(qDescale));
        RequireDescale(kDescale, batch, headsKv, nameof(kDescale));
        RequireDescale(vDescale, batch, headsKv, nameof(vDescale));
    }

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
    /// q, k and v dequantized (<see cref="Dequantize(ReadOnlySpan{Float8E4M3}, ReadOnlySpan{float}, Func{long, int}, int, int, int)"/>):
    /// q's factor is that of its KV head, <paramref name="batchOfQ"/> and <paramref name="batchOfK"/> give the batch
    /// (or sequence) of a q and a k/v token.
    /// </summary>
    private static (double[] Q, double[] K, double[] V) Dequantize(
        ReadOnlySpan<Float8E4M3> q,
        ReadOnlySpan<Float8E4M3> k,
        ReadOnlySpan<Float8E4M3> v,
        ReadOnlySpan<float> qDescale,
        ReadOnlySpan<float> kDescale,
        ReadOnlySpan<float> vDescale,
        Func<long, int> batchOfQ,
        Func<long, int> batchOfK,
        int headsQ,
        int headsKv,
        int headDim) =>
        (Dequantize(q, qDescale, batchOfQ, headsQ, headsQ / headsKv, headDim),
            Dequantize(k, kDescale, batchOfK, headsKv, 1, headDim),
            Dequantize(v, vDescale, batchOfK, headsKv, 1, headDim));

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
