namespace FlashAttn;

/// <summary>
/// A float64 CPU implementation of scaled dot-product attention: the oracle the GPU kernels are checked against,
/// and a way to run the same computation on a machine without a GPU.
/// </summary>
/// <remarks>
/// <para>
/// Inputs are dense row-major arrays in the layout <see cref="AttentionShape"/> describes (or packed
/// <c>[total, heads, headDim]</c> for <see cref="ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, Span{double}, Span{double})"/>).
/// For each batch <c>b</c>, query head <c>h</c> and query row <c>i</c>: scores <c>s_j = scale * q·k_j</c>, soft-capped
/// to <c>cap * tanh(s_j / cap)</c> when <see cref="AttentionOptions.Softcap"/> is set, over the visible keys;
/// <c>out = Σ softmax(s)_j v_j</c> and <c>lse = log Σ exp(s_j)</c> (natural log, scale and cap included). The
/// softmax subtracts the row maximum before exponentiating.
/// </para>
/// <para>
/// v and the output may have a head dim of their own (FlashAttention-3's separate V head dim, FEATURES.md §8):
/// <see cref="AttentionShape.HeadDimV"/> for the fixed-length overloads, the <c>headDimV</c> parameter of one
/// variable-length overload. Scores, the default scale <c>HeadDim^-0.5</c> and the log-sum-exp use q and k alone; each
/// output row is the weighted sum of <c>HeadDimV</c>-long value rows. The backward overloads that take a shape honour it
/// too (dV and the output gradient with <c>HeadDimV</c> columns); the GPU backward serves the pair (192, 128). With
/// <c>HeadDimV</c> unset (or equal to <c>HeadDim</c>) nothing changes, bit for bit.
/// </para>
/// <para>
/// Visibility follows <c>flash_attention.h</c>: with <c>off = seqLenK - seqLenQ</c> (bottom-right alignment, per
/// sequence) or 0 (top-left), key <c>j</c> is visible iff <c>j &gt;= i + off - WindowLeft</c> (when set),
/// <c>j &lt;= i + off + WindowRight</c> (when set) and, when causal, <c>j &lt;= i + off</c>. A row that sees no key
/// (bottom-right causal with <c>SeqLenQ &gt; SeqLenK</c>, an empty key sequence, a window that misses every key) gets
/// output 0 and lse = +infinity, as the native library defines it. NaN in the inputs propagates to the affected rows.
/// </para>
/// </remarks>
public static partial class AttentionReference
{
    /// <summary>Multiply-adds below which the computation stays on the calling thread.</summary>
    private const long ParallelThresholdMacs = 1L << 20;

    /// <summary>Runs attention forward in float64.</summary>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDimV]</c> (<see cref="AttentionShape.HeadDimV"/>: <c>HeadDim</c> unless set).</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale (<see cref="AttentionOptions.KernelPath"/> is ignored).</param>
    /// <param name="output">Receives the output, <c>[Batch, SeqLenQ, HeadsQ, HeadDimV]</c>.</param>
    /// <param name="logSumExp">
    /// Receives the log-sum-exp, <c>[Batch, HeadsQ, SeqLenQ]</c>; pass an empty span to skip it.
    /// </param>
    /// <exception cref="ArgumentException">A span length does not match <paramref name="shape"/>, or the shape is invalid.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void Forward(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        AttentionShape shape,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp) =>
        ForwardWithExtras(q, k, v, shape, options, ReferenceExtras.None, output, logSumExp);

    /// <summary>
    /// Runs attention forward in float64 with learnable sinks (<see cref="AttentionArguments.Sinks"/>, FEATURES.md §7):
    /// <c>out_i = Σ_j e^{x_ij} v_j / (e^{σ_h} + Σ_j e^{x_ij})</c> and <c>lse_i = log(e^{σ_h} + Σ_j e^{x_ij})</c> with
    /// <c>x_ij</c> the final (scaled, soft-capped) logits of the visible keys; a row that sees no key gets output 0 and
    /// lse <c>σ_h</c>.
    /// </summary>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDimV]</c> (<see cref="AttentionShape.HeadDimV"/>: <c>HeadDim</c> unless set).</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale (<see cref="AttentionOptions.KernelPath"/> is ignored).</param>
    /// <param name="sinks">One sink logit per query head, <c>[HeadsQ]</c>, in final-logit units.</param>
    /// <param name="output">Receives the output, <c>[Batch, SeqLenQ, HeadsQ, HeadDimV]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[Batch, HeadsQ, SeqLenQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">A span length does not match <paramref name="shape"/>, or the shape is invalid.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void Forward(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        AttentionShape shape,
        AttentionOptions options,
        ReadOnlySpan<double> sinks,
        Span<double> output,
        Span<double> logSumExp) =>
        ForwardWithExtras(q, k, v, shape, options, new ReferenceExtras { Sinks = sinks.ToArray() }, output, logSumExp);

    /// <summary>
    /// Runs attention forward in float64 over a variable-length batch with learnable sinks (as
    /// <see cref="Forward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, ReadOnlySpan{double}, Span{double}, Span{double})"/>,
    /// sequences packed as in
    /// <see cref="ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, Span{double}, Span{double})"/>).
    /// </summary>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="k">Packed keys, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="v">Packed values, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more).</param>
    /// <param name="headsQ">Query heads.</param>
    /// <param name="headsKv">Key/value heads.</param>
    /// <param name="headDim">Head dimension.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="sinks">One sink logit per query head, <c>[headsQ]</c>.</param>
    /// <param name="output">Receives the output, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[headsQ, totalQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">The sizes or span lengths are inconsistent.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void ForwardVarlen(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        ReadOnlySpan<double> sinks,
        Span<double> output,
        Span<double> logSumExp) =>
        ForwardVarlenWithExtras(
            q, k, v, seqLensQ, seqLensK, headsQ, headsKv, headDim, options, new ReferenceExtras { Sinks = sinks.ToArray() }, output,
            logSumExp);

    /// <summary>
    /// Runs attention forward in float64 with learnable sinks and ALiBi slopes (each optional: an empty span is none), as
    /// <see cref="Forward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, ReadOnlySpan{double}, Span{double}, Span{double})"/>.
    /// </summary>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDimV]</c> (<see cref="AttentionShape.HeadDimV"/>: <c>HeadDim</c> unless set).</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="sinks">One sink logit per query head, <c>[HeadsQ]</c>, or empty for none.</param>
    /// <param name="alibiSlopes">
    /// ALiBi slopes, <c>[headsQ]</c> or <c>[batch, headsQ]</c> (batch: the sequences of a variable-length batch), or empty for
    /// none: FlashAttention-2's bias (<c>-slope · |i + off - j|</c>, or <c>+slope · j</c> for a causal mask without a left
    /// window; see <see cref="AttentionArguments.AlibiSlopes"/>), added after the scale and softcap.
    /// </param>
    /// <param name="output">Receives the output, <c>[Batch, SeqLenQ, HeadsQ, HeadDimV]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[Batch, HeadsQ, SeqLenQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">A span length does not match <paramref name="shape"/>, or the shape is invalid.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void Forward(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        AttentionShape shape,
        AttentionOptions options,
        ReadOnlySpan<double> sinks,
        ReadOnlySpan<double> alibiSlopes,
        Span<double> output,
        Span<double> logSumExp) =>
        ForwardWithExtras(q, k, v, shape, options, SinksAndAlibi(sinks, alibiSlopes), output, logSumExp);

    /// <summary>
    /// Runs attention forward in float64 over a variable-length batch with learnable sinks and ALiBi slopes (each optional:
    /// an empty span is none).
    /// </summary>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="k">Packed keys, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="v">Packed values, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more).</param>
    /// <param name="headsQ">Query heads.</param>
    /// <param name="headsKv">Key/value heads.</param>
    /// <param name="headDim">Head dimension.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="sinks">One sink logit per query head, <c>[headsQ]</c>, or empty for none.</param>
    /// <param name="alibiSlopes">
    /// ALiBi slopes, <c>[headsQ]</c> or <c>[batch, headsQ]</c> (batch: the sequences of a variable-length batch), or empty for
    /// none: FlashAttention-2's bias (<c>-slope · |i + off - j|</c>, or <c>+slope · j</c> for a causal mask without a left
    /// window; see <see cref="AttentionArguments.AlibiSlopes"/>), added after the scale and softcap.
    /// </param>
    /// <param name="output">Receives the output, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[headsQ, totalQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">The sizes or span lengths are inconsistent.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void ForwardVarlen(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        ReadOnlySpan<double> sinks,
        ReadOnlySpan<double> alibiSlopes,
        Span<double> output,
        Span<double> logSumExp) =>
        ForwardVarlenWithExtras(
            q, k, v, seqLensQ, seqLensK, headsQ, headsKv, headDim, options, SinksAndAlibi(sinks, alibiSlopes), output, logSumExp);

    /// <summary>
    /// Runs attention forward in float64 over a variable-length batch whose v and output have a head dim of their own
    /// (FlashAttention-3's separate V head dim, FEATURES.md §8), with learnable sinks and ALiBi slopes (each optional: an
    /// empty span is none), as
    /// <see cref="ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, ReadOnlySpan{double}, ReadOnlySpan{double}, Span{double}, Span{double})"/>:
    /// the scores and the default scale use <paramref name="headDim"/>, each output row is the weighted sum of
    /// <paramref name="headDimV"/>-long value rows, the log-sum-exp is unchanged. The fixed-length overloads take the V
    /// head dim from <see cref="AttentionShape.HeadDimV"/>.
    /// </summary>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="k">Packed keys, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="v">Packed values, <c>[totalK, headsKv, headDimV]</c>.</param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more).</param>
    /// <param name="headsQ">Query heads.</param>
    /// <param name="headsKv">Key/value heads.</param>
    /// <param name="headDim">Head dimension of q and k.</param>
    /// <param name="headDimV">Head dimension of v and the output (1 or more; <paramref name="headDim"/> for the usual case).</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="sinks">One sink logit per query head, <c>[headsQ]</c>, or empty for none.</param>
    /// <param name="alibiSlopes">ALiBi slopes, <c>[headsQ]</c> or <c>[sequences, headsQ]</c>, or empty for none.</param>
    /// <param name="output">Receives the output, <c>[totalQ, headsQ, headDimV]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[headsQ, totalQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">The sizes or span lengths are inconsistent.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="headDimV"/> is below 1.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void ForwardVarlen(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        int headDimV,
        AttentionOptions options,
        ReadOnlySpan<double> sinks,
        ReadOnlySpan<double> alibiSlopes,
        Span<double> output,
        Span<double> logSumExp)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(headDimV, 1);
        ForwardVarlenWithExtras(
            q, k, v, seqLensQ, seqLensK, headsQ, headsKv, headDim, options,
            SinksAndAlibi(sinks, alibiSlopes) with { ValueHeadDim = headDimV }, output, logSumExp);
    }

    /// <summary>
    /// Runs attention forward in float64 with the options of <see cref="ReferenceExtras"/> (ALiBi, sinks, a V head
    /// dim, dropout); v and the output have <c>ValueHeadDim</c> columns, which is <paramref name="shape"/>'s
    /// <see cref="AttentionShape.HeadDimV"/> when that differs from its head dim (see <see cref="WithValueHeadDimOf"/>).
    /// </summary>
    internal static unsafe void ForwardWithExtras(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        AttentionShape shape,
        AttentionOptions options,
        ReferenceExtras extras,
        Span<double> output,
        Span<double> logSumExp)
    {
        ArgumentNullException.ThrowIfNull(options);
        shape.Validate(nameof(shape));
        options.Validate(nameof(options));
        var plan = new ExtrasPlan(WithValueHeadDimOf(shape, extras), options, shape.Batch, shape.HeadsQ, shape.HeadDim, shape.SeqLenK);
        int dv = plan.ValueHeadDim;
        long vElements = (long)shape.Batch * shape.SeqLenK * shape.HeadsKv * dv;
        long oElements = (long)shape.Batch * shape.SeqLenQ * shape.HeadsQ * dv;
        RequireLength(q.Length, shape.QElementCount, nameof(q));
        RequireLength(k.Length, shape.KvElementCount, nameof(k));
        RequireLength(v.Length, vElements, nameof(v));
        RequireLength(output.Length, oElements, nameof(output));
        if (!logSumExp.IsEmpty)
        {
            RequireLength(logSumExp.Length, shape.LseElementCount, nameof(logSumExp));
        }

        long rows = (long)shape.Batch * shape.HeadsQ * shape.SeqLenQ;
        if (rows == 0)
        {
            return;
        }

        var row = new RowKernel(options, shape.HeadDim, plan);
        fixed (double* pq = q, pk = k, pv = v, po = output, pl = logSumExp)
        {
            nint qp = (nint)pq, kp = (nint)pk, vp = (nint)pv, op = (nint)po, lp = logSumExp.IsEmpty ? 0 : (nint)pl;
            int sq = shape.SeqLenQ, sk = shape.SeqLenK, hq = shape.HeadsQ, hkv = shape.HeadsKv, d = shape.HeadDim;
            RunRows(rows, sk, rows * sk * (d + dv) / 2, (r, scores) =>
            {
                // r runs over [B, Hq, Sq], the log-sum-exp layout.
                int i = (int)(r % sq);
                long bh = r / sq;
                int h = (int)(bh % hq);
                long b = bh / hq;
                int kvHead = h / (hq / hkv);
                long qRow = ((b * sq) + i) * hq + h;
                long kvRow = (b * sk * hkv) + kvHead;
                row.Compute(
                    (double*)qp + (qRow * d), (double*)kp + (kvRow * d), (double*)vp + (kvRow * dv), (long)hkv * d, (long)hkv * dv,
                    (int)b, h, i, sq, sk, (double*)op + (qRow * dv), lp == 0 ? null : (double*)lp + r, scores);
            });
        }
    }

    /// <summary>
    /// Runs attention forward in float64 over a variable-length batch: sequences packed one after another along the
    /// first dimension, each attending only within itself (masks and the bottom-right diagonal placed per sequence).
    /// </summary>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c> with <c>totalQ = Σ seqLensQ</c>.</param>
    /// <param name="k">Packed keys, <c>[totalK, headsKv, headDim]</c> with <c>totalK = Σ seqLensK</c>.</param>
    /// <param name="v">Packed values, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more), as many as <paramref name="seqLensQ"/>.</param>
    /// <param name="headsQ">Query heads (1 or more), a multiple of <paramref name="headsKv"/>.</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more).</param>
    /// <param name="options">Mask, alignment, window, softcap and scale (<see cref="AttentionOptions.KernelPath"/> is ignored).</param>
    /// <param name="output">Receives the output, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[headsQ, totalQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">
    /// The length lists differ in count or hold a negative length, a size is out of range, the heads do not divide, or
    /// a span length does not match the sizes.
    /// </exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void ForwardVarlen(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp) =>
        ForwardVarlenWithExtras(q, k, v, seqLensQ, seqLensK, headsQ, headsKv, headDim, options, ReferenceExtras.None, output, logSumExp);

    /// <summary>
    /// Runs attention forward in float64 over a variable-length batch with the options of
    /// <see cref="ReferenceExtras"/>; ALiBi's <c>[batch, headsQ]</c> slopes and the dropout stream take the sequence's
    /// index as the batch index, and rows and columns within the sequence.
    /// </summary>
    internal static unsafe void ForwardVarlenWithExtras(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        ReferenceExtras extras,
        Span<double> output,
        Span<double> logSumExp)
    {
        VarlenLayout layout = CheckVarlen(q, k, v, seqLensQ, seqLensK, headsQ, headsKv, headDim, options, extras, out ExtrasPlan plan);
        int dv = plan.ValueHeadDim;
        long[] cuQ = layout.CuQ, cuK = layout.CuK;
        int maxK = layout.MaxK;
        long totalQ = cuQ[^1];
        RequireLength(output.Length, totalQ * headsQ * dv, nameof(output));
        if (!logSumExp.IsEmpty)
        {
            RequireLength(logSumExp.Length, totalQ * headsQ, nameof(logSumExp));
        }

        long rows = totalQ * headsQ;
        if (rows == 0)
        {
            return;
        }

        // The sequence of every packed query row.
        var sequenceOf = new int[totalQ];
        for (int b = 0; b < seqLensQ.Length; b++)
        {
            sequenceOf.AsSpan((int)cuQ[b], seqLensQ[b]).Fill(b);
        }

        int[] lensQ = layout.LensQ, lensK = layout.LensK;
        long macs = layout.Macs;

        var row = new RowKernel(options, headDim, plan);
        fixed (double* pq = q, pk = k, pv = v, po = output, pl = logSumExp)
        {
            nint qp = (nint)pq, kp = (nint)pk, vp = (nint)pv, op = (nint)po, lp = logSumExp.IsEmpty ? 0 : (nint)pl;
            int hq = headsQ, hkv = headsKv, d = headDim;
            RunRows(rows, maxK, macs, (r, scores) =>
            {
                // r runs over [Hq, totalQ], the log-sum-exp layout.
                long t = r % totalQ;
                int h = (int)(r / totalQ);
                int b = sequenceOf[t];
                int i = (int)(t - cuQ[b]);
                int kvHead = h / (hq / hkv);
                long qRow = (t * hq) + h;
                long kvRow = (cuK[b] * hkv) + kvHead;
                row.Compute(
                    (double*)qp + (qRow * d), (double*)kp + (kvRow * d), (double*)vp + (kvRow * dv), (long)hkv * d, (long)hkv * dv,
                    b, h, i, lensQ[b], lensK[b], (double*)op + (qRow * dv), lp == 0 ? null : (double*)lp + r, scores);
            });
        }
    }

    /// <summary>Runs <see cref="ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, Span{double}, Span{double})"/> on bfloat16 inputs, widened exactly to float64.</summary>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="k">Packed keys, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="v">Packed values, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="seqLensQ">Query length of each sequence.</param>
    /// <param name="seqLensK">Key length of each sequence.</param>
    /// <param name="headsQ">Query heads.</param>
    /// <param name="headsKv">Key/value heads.</param>
    /// <param name="headDim">Head dimension.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="output">Receives the output in float64, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[headsQ, totalQ]</c>, or empty to skip it.</param>
    public static void ForwardVarlen(
        ReadOnlySpan<BFloat16> q,
        ReadOnlySpan<BFloat16> k,
        ReadOnlySpan<BFloat16> v,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp) =>
        ForwardVarlen(ToDouble(q), ToDouble(k), ToDouble(v), seqLensQ, seqLensK, headsQ, headsKv, headDim, options, output, logSumExp);

    /// <summary>Runs <see cref="ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, Span{double}, Span{double})"/> on float16 inputs, widened exactly to float64.</summary>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="k">Packed keys, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="v">Packed values, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="seqLensQ">Query length of each sequence.</param>
    /// <param name="seqLensK">Key length of each sequence.</param>
    /// <param name="headsQ">Query heads.</param>
    /// <param name="headsKv">Key/value heads.</param>
    /// <param name="headDim">Head dimension.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="output">Receives the output in float64, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, <c>[headsQ, totalQ]</c>, or empty to skip it.</param>
    public static void ForwardVarlen(
        ReadOnlySpan<Half> q,
        ReadOnlySpan<Half> k,
        ReadOnlySpan<Half> v,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp) =>
        ForwardVarlen(ToDouble(q), ToDouble(k), ToDouble(v), seqLensQ, seqLensK, headsQ, headsKv, headDim, options, output, logSumExp);

    /// <summary>
    /// The keys query row <paramref name="i"/> sees, as the half-open range <c>[first, end)</c> (empty when
    /// <c>end &lt;= first</c>), for a sequence of <paramref name="seqLenQ"/> queries and <paramref name="seqLenK"/> keys
    /// under <paramref name="options"/>' causal mask, alignment and window.
    /// </summary>
    /// <param name="options">The options.</param>
    /// <param name="i">The query row within its sequence.</param>
    /// <param name="seqLenQ">Queries in the sequence.</param>
    /// <param name="seqLenK">Keys in the sequence.</param>
    /// <returns>The first visible key and one past the last; <c>first == end</c> when none is visible.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static (int First, int End) VisibleKeys(AttentionOptions options, int i, int seqLenQ, int seqLenK)
    {
        ArgumentNullException.ThrowIfNull(options);
        long off = options.CausalAlignment == CausalAlignment.TopLeft ? 0 : (long)seqLenK - seqLenQ;
        long diagonal = i + off;
        long last = seqLenK - 1L;
        if (options.Causal)
        {
            last = Math.Min(last, diagonal);
        }

        if (options.WindowRight is { } right)
        {
            last = Math.Min(last, diagonal + right);
        }

        long first = options.WindowLeft is { } left ? Math.Max(0, diagonal - left) : 0;
        return last < first ? ((int)Math.Min(first, seqLenK), (int)Math.Min(first, seqLenK)) : ((int)first, (int)(last + 1));
    }

    /// <summary>Runs <see cref="Forward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, Span{double}, Span{double})"/> on bfloat16 inputs, widened exactly to float64.</summary>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDimV]</c> (<see cref="AttentionShape.HeadDimV"/>: <c>HeadDim</c> unless set).</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="output">Receives the output in float64.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, or empty to skip it.</param>
    public static void Forward(
        ReadOnlySpan<BFloat16> q,
        ReadOnlySpan<BFloat16> k,
        ReadOnlySpan<BFloat16> v,
        AttentionShape shape,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp) =>
        Forward(ToDouble(q), ToDouble(k), ToDouble(v), shape, options, output, logSumExp);

    /// <summary>Runs <see cref="Forward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, Span{double}, Span{double})"/> on float16 inputs, widened exactly to float64.</summary>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDimV]</c> (<see cref="AttentionShape.HeadDimV"/>: <c>HeadDim</c> unless set).</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="output">Receives the output in float64.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, or empty to skip it.</param>
    public static void Forward(
        ReadOnlySpan<Half> q,
        ReadOnlySpan<Half> k,
        ReadOnlySpan<Half> v,
        AttentionShape shape,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp) =>
        Forward(ToDouble(q), ToDouble(k), ToDouble(v), shape, options, output, logSumExp);

    /// <summary>Widens bfloat16 values to float64 (exact).</summary>
    /// <param name="values">The values.</param>
    /// <returns>A new array.</returns>
    public static double[] ToDouble(ReadOnlySpan<BFloat16> values)
    {
        var result = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = values[i];
        }

        return result;
    }

    /// <summary>Widens float16 values to float64 (exact).</summary>
    /// <param name="values">The values.</param>
    /// <returns>A new array.</returns>
    public static double[] ToDouble(ReadOnlySpan<Half> values)
    {
        var result = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = (double)values[i];
        }

        return result;
    }

    /// <summary>Widens float32 values to float64 (exact).</summary>
    /// <param name="values">The values.</param>
    /// <returns>A new array.</returns>
    public static double[] ToDouble(ReadOnlySpan<float> values)
    {
        var result = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = values[i];
        }

        return result;
    }

    /// <summary>
    /// Relative L2 error <c>||actual - expected|| / ||expected||</c>, in float64. NaN in either input gives NaN;
    /// when <paramref name="expected"/> is all zeros the result is the absolute norm of the difference.
    /// Infinite entries that match exactly (same sign) count as no error.
    /// </summary>
    /// <param name="expected">The reference values.</param>
    /// <param name="actual">The values to judge.</param>
    /// <returns>The relative error.</returns>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public static double RelativeL2Error(ReadOnlySpan<double> expected, ReadOnlySpan<double> actual)
    {
        if (expected.Length != actual.Length)
        {
            throw new ArgumentException(
                $"expected has {expected.Length} elements but actual has {actual.Length}.", nameof(actual));
        }

        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], a = actual[i];
            if (double.IsNaN(e) || double.IsNaN(a))
            {
                return double.NaN;
            }

            if (double.IsInfinity(e) || double.IsInfinity(a))
            {
                if (e != a)
                {
                    return double.PositiveInfinity;
                }

                continue;
            }

            double d = a - e;
            diff += d * d;
            norm += e * e;
        }

        return norm == 0 ? Math.Sqrt(diff) : Math.Sqrt(diff / norm);
    }

    /// <summary>Prefix sums, lengths and cost of a variable-length batch, from <see cref="CheckVarlen"/>.</summary>
    private readonly record struct VarlenLayout(long[] CuQ, long[] CuK, int MaxK, int[] LensQ, int[] LensK, long Macs);

    /// <summary>
    /// The argument checks the variable-length entry points share (options, sizes, sequence counts and lengths, the
    /// extras, and the lengths of q, k and v), in that order; returns the prefix sums of the lengths, the longest key sequence
    /// and the multiply-adds of one pass over the batch (for the parallel threshold).
    /// </summary>
    private static VarlenLayout CheckVarlen(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        ReferenceExtras extras,
        out ExtrasPlan plan)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate(nameof(options));
        (long[] cuQ, long[] cuK, int maxK) = CheckVarlenSizes(seqLensQ, seqLensK, headsQ, headsKv, headDim);
        plan = new ExtrasPlan(extras, options, seqLensQ.Length, headsQ, headDim, maxK);
        int dv = plan.ValueHeadDim;
        RequireLength(q.Length, cuQ[^1] * headsQ * headDim, nameof(q));
        RequireLength(k.Length, cuK[^1] * headsKv * headDim, nameof(k));
        RequireLength(v.Length, cuK[^1] * headsKv * dv, nameof(v));
        int[] lensQ = seqLensQ.ToArray(), lensK = seqLensK.ToArray();
        long macs = 0;
        for (int b = 0; b < lensQ.Length; b++)
        {
            macs += (long)lensQ[b] * lensK[b] * headsQ * (headDim + dv) / 2;
        }

        return new VarlenLayout(cuQ, cuK, maxK, lensQ, lensK, macs);
    }

    /// <summary>
    /// The size and length checks of a variable-length batch (sizes, sequence counts, then each list's lengths), in
    /// that order; returns the prefix sums of the query and key lengths and the longest key sequence.
    /// </summary>
    private static (long[] CuQ, long[] CuK, int MaxK) CheckVarlenSizes(
        ReadOnlySpan<int> seqLensQ, ReadOnlySpan<int> seqLensK, int headsQ, int headsKv, int headDim)
    {
        new AttentionShape(seqLensQ.Length, 0, 0, headsQ, headsKv, headDim).Validate("headsQ");
        if (seqLensQ.Length != seqLensK.Length)
        {
            throw new ArgumentException(
                $"seqLensQ has {seqLensQ.Length} sequences but seqLensK has {seqLensK.Length}.", nameof(seqLensK));
        }

        long[] cuQ = PrefixSums(seqLensQ, nameof(seqLensQ), out _);
        long[] cuK = PrefixSums(seqLensK, nameof(seqLensK), out int maxK);
        return (cuQ, cuK, maxK);
    }

    private static void RequireLength(int actual, long expected, string paramName)
    {
        if (actual != expected)
        {
            throw new ArgumentException(
                $"{paramName} has {actual} elements but the shape needs {expected}.", paramName);
        }
    }

    private static long[] PrefixSums(ReadOnlySpan<int> lengths, string paramName, out int max)
    {
        var cu = new long[lengths.Length + 1];
        max = 0;
        for (int b = 0; b < lengths.Length; b++)
        {
            if (lengths[b] < 0)
            {
                throw new ArgumentException($"{paramName}[{b}] is {lengths[b]}; sequence lengths must be 0 or more.", paramName);
            }

            cu[b + 1] = cu[b] + lengths[b];
            max = Math.Max(max, lengths[b]);
        }

        if (cu[^1] > int.MaxValue)
        {
            throw new ArgumentException($"The lengths in {paramName} add up to more than {int.MaxValue}.", paramName);
        }

        return cu;
    }

    /// <summary>Runs <paramref name="body"/> for every row, in parallel when the work is large.</summary>
    private static void RunRows(long rows, int maxKeys, long macs, Action<long, double[]> body)
    {
        int scoresLength = Math.Max(maxKeys, 1);
        if (macs < ParallelThresholdMacs || Environment.ProcessorCount == 1)
        {
            var scores = new double[scoresLength];
            for (long r = 0; r < rows; r++)
            {
                body(r, scores);
            }

            return;
        }

        Parallel.For(
            0L,
            rows,
            () => new double[scoresLength],
            (r, _, scores) =>
            {
                body(r, scores);
                return scores;
            },
            _ => { });
    }

    /// <summary>
    /// One query row of attention: masks, window, softcap, ALiBi, softmax (with the sink), dropout and the weighted sum
    /// of values.
    /// </summary>
    private sealed class RowKernel(AttentionOptions options, int headDim, ExtrasPlan plan)
    {
        private readonly AttentionOptions _options = options;
        private readonly ExtrasPlan _plan = plan;
        private readonly double _scale = options.EffectiveScale(headDim);
        private readonly double _cap = options.Softcap ?? 0;
        private readonly int _d = headDim;

        /// <summary>
        /// Computes query row <paramref name="i"/> of query head <paramref name="h"/> in batch (or sequence)
        /// <paramref name="b"/>; <paramref name="kBase"/>/<paramref name="vBase"/> point at key 0 of the row's key/value
        /// head, <paramref name="kRowStride"/>/<paramref name="vRowStride"/> elements apart.
        /// </summary>
        public unsafe void Compute(
            double* qRow,
            double* kBase,
            double* vBase,
            long kRowStride,
            long vRowStride,
            int b,
            int h,
            int i,
            int seqLenQ,
            int seqLenK,
            double* outRow,
            double* lse,
            double[] scores)
        {
            int d = _d, dv = _plan.ValueHeadDim;
            ExtrasPlan plan = _plan;
            (int first, int end) = VisibleKeys(_options, i, seqLenQ, seqLenK);
            var acc = new Span<double>(outRow, dv);
            acc.Clear();
            if (end <= first)
            {
                if (lse != null)
                {
                    // FA2's +infinity; with a sink the denominator is e^σ alone (FA4).
                    *lse = plan.HasSinks ? plan.Sink(h) : double.PositiveInfinity;
                }

                return;
            }

            double slope = plan.HasAlibi ? plan.Slope(b, h) : 0;
            long diagonal = i + DiagonalOffset(_options, seqLenQ, seqLenK);
            double max = double.NegativeInfinity;
            for (int j = first; j < end; j++)
            {
                double* kRow = kBase + (j * kRowStride);
                double dot = 0;
                for (int x = 0; x < d; x++)
                {
                    dot += qRow[x] * kRow[x];
                }

                double s = dot * _scale;
                if (_cap > 0)
                {
                    s = _cap * Math.Tanh(s / _cap);
                }

                if (plan.HasAlibi)
                {
                    s += plan.Bias(slope, diagonal, j);
                }

                scores[j - first] = s;
                if (double.IsNaN(s) || s > max)
                {
                    max = s; // once NaN, "s > max" is never true again, so NaN sticks and propagates.
                }
            }

            double sink = plan.HasSinks ? plan.Sink(h) : 0;
            if (plan.HasSinks && (double.IsNaN(sink) || sink > max))
            {
                max = sink;
            }

            double sum = 0;
            for (int j = first; j < end; j++)
            {
                double w = Math.Exp(scores[j - first] - max);
                sum += w; // the denominator sums the weights before dropout
                if (plan.HasDropout && !plan.Keep(b, h, i, j))
                {
                    continue;
                }

                // The fp8 kernels' P: 256 * e^(x - m) (FlashAttention-3's max offset 8, in [0, 256]) rounded to e4m3,
                // scaled back by the exact 1/256 (the denominator keeps the unrounded w).
                double pw = plan.RoundsProbabilitiesToFloat8 ? (double)(Float8E4M3)(w * Float8ProbabilityScale) / Float8ProbabilityScale : w;
                double* vRow = vBase + (j * vRowStride);
                for (int x = 0; x < dv; x++)
                {
                    acc[x] += pw * vRow[x];
                }
            }

            if (plan.HasSinks)
            {
                sum += Math.Exp(sink - max);
            }

            double inv = 1.0 / sum;
            for (int x = 0; x < dv; x++)
            {
                acc[x] *= inv;
            }

            if (plan.HasDropout)
            {
                for (int x = 0; x < dv; x++)
                {
                    acc[x] *= plan.DropoutScale;
                }
            }

            if (lse != null)
            {
                *lse = max + Math.Log(sum);
            }
        }
    }
}
