namespace FlashAttn;

/// <content>The backward pass of the float64 reference: gradients of q, k and v from the gradient of the output.</content>
/// <remarks>
/// <para>
/// Derivation, for one query row <c>i</c> of query head <c>h</c> reading key/value head <c>g</c>, over the keys
/// <c>j</c> the row sees (the same visibility rule as the forward pass):
/// </para>
/// <list type="bullet">
/// <item><c>t_j = scale * q_i·k_j</c> (the scaled score), <c>s_j = cap * tanh(t_j / cap)</c> with a softcap, else
/// <c>s_j = t_j</c>;</item>
/// <item><c>P_j = exp(s_j) / Σ_l exp(s_l)</c> and <c>O_i = Σ_j P_j v_j</c>.</item>
/// </list>
/// <para>
/// With <c>dO_i = ∂L/∂O_i</c> given: <c>∂L/∂v_j += P_j dO_i</c>; <c>dP_j = dO_i·v_j</c>; the softmax Jacobian
/// <c>diag(P) - P Pᵀ</c> gives <c>∂L/∂s_j = P_j (dP_j - Δ_i)</c> with <c>Δ_i = Σ_l P_l dP_l = dO_i·O_i</c>; the softcap's
/// chain factor is <c>d(cap * tanh(t / cap))/dt = 1 - tanh²(t_j / cap)</c> (1 without a softcap), so
/// <c>∂L/∂t_j = ∂L/∂s_j * (1 - tanh²(t_j / cap))</c>; and since <c>t_j</c> is <c>scale</c> times a dot product,
/// <c>∂L/∂q_i += scale Σ_j (∂L/∂t_j) k_j</c> and <c>∂L/∂k_j += scale (∂L/∂t_j) q_i</c>. The gradients of k and v
/// sum these contributions over every query row and, under grouped-query attention, over every query head of the
/// group. A row that sees no key has an output fixed at 0, so it contributes nothing and its q gradient is 0.
/// </para>
/// </remarks>
public static partial class AttentionReference
{
    /// <summary>
    /// Runs the attention backward pass in float64: the gradients of q, k and v given the gradient of the output,
    /// recomputing the attention weights of every row under the same masks, window, softcap and scale as
    /// <see cref="Forward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, Span{double}, Span{double})"/>.
    /// </summary>
    /// <remarks>
    /// The derivation is in the remarks of this file. Work is split over (batch, key/value head): each piece owns the
    /// k and v gradients of its head and the q gradients of the query heads that read it, and walks those query heads
    /// and rows in a fixed order, so the result is the same bit for bit whether or not it runs in parallel.
    /// </remarks>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDimV]</c> (<see cref="AttentionShape.HeadDimV"/>: <c>HeadDim</c> unless set).</param>
    /// <param name="outputGrad">Gradient of the loss with respect to the output, <c>[Batch, SeqLenQ, HeadsQ, HeadDimV]</c>.</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale (<see cref="AttentionOptions.KernelPath"/> is ignored).</param>
    /// <param name="queryGrad">Receives the gradient of q, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="keyGrad">Receives the gradient of k, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="valueGrad">Receives the gradient of v, <c>[Batch, SeqLenK, HeadsKv, HeadDimV]</c>.</param>
    /// <exception cref="ArgumentException">A span length does not match <paramref name="shape"/>, or the shape is invalid.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void Backward(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<double> outputGrad,
        AttentionShape shape,
        AttentionOptions options,
        Span<double> queryGrad,
        Span<double> keyGrad,
        Span<double> valueGrad) =>
        BackwardWithExtras(q, k, v, outputGrad, shape, options, ReferenceExtras.None, queryGrad, keyGrad, valueGrad, default);

    /// <summary>
    /// Runs the attention backward pass in float64 with learnable sinks (as
    /// <see cref="Forward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, ReadOnlySpan{double}, Span{double}, Span{double})"/>):
    /// the gradients of q, k and v, and the sinks' gradient <c>dσ_h = -Σ_{b,i} e^{σ_h - LSE_{b,h,i}} (dO_{b,i,h} · O_{b,i,h})</c>
    /// (no incoming log-sum-exp gradient), summed over batches and rows in a fixed order.
    /// </summary>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDimV]</c> (<see cref="AttentionShape.HeadDimV"/>: <c>HeadDim</c> unless set).</param>
    /// <param name="outputGrad">Gradient of the loss with respect to the output, <c>[Batch, SeqLenQ, HeadsQ, HeadDimV]</c>.</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="sinks">The forward call's sink logits, <c>[HeadsQ]</c>.</param>
    /// <param name="queryGrad">Receives the gradient of q.</param>
    /// <param name="keyGrad">Receives the gradient of k.</param>
    /// <param name="valueGrad">Receives the gradient of v.</param>
    /// <param name="sinkGrad">Receives the gradient of the sinks, <c>[HeadsQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">A span length does not match <paramref name="shape"/>, or the shape is invalid.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void Backward(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<double> outputGrad,
        AttentionShape shape,
        AttentionOptions options,
        ReadOnlySpan<double> sinks,
        Span<double> queryGrad,
        Span<double> keyGrad,
        Span<double> valueGrad,
        Span<double> sinkGrad) =>
        BackwardWithExtras(
            q, k, v, outputGrad, shape, options, new ReferenceExtras { Sinks = sinks.ToArray() }, queryGrad, keyGrad, valueGrad, sinkGrad);

    /// <summary>
    /// Runs the attention backward pass in float64 over a variable-length batch with learnable sinks (as
    /// <see cref="Backward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, ReadOnlySpan{double}, Span{double}, Span{double}, Span{double}, Span{double})"/>,
    /// sequences packed as in <see cref="BackwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, Span{double}, Span{double}, Span{double})"/>).
    /// </summary>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="k">Packed keys, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="v">Packed values, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="outputGrad">Gradient of the loss with respect to the packed output, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more).</param>
    /// <param name="headsQ">Query heads.</param>
    /// <param name="headsKv">Key/value heads.</param>
    /// <param name="headDim">Head dimension.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="sinks">The forward call's sink logits, <c>[headsQ]</c>.</param>
    /// <param name="queryGrad">Receives the gradient of q.</param>
    /// <param name="keyGrad">Receives the gradient of k.</param>
    /// <param name="valueGrad">Receives the gradient of v.</param>
    /// <param name="sinkGrad">Receives the gradient of the sinks, <c>[headsQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">The sizes or span lengths are inconsistent.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void BackwardVarlen(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<double> outputGrad,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        ReadOnlySpan<double> sinks,
        Span<double> queryGrad,
        Span<double> keyGrad,
        Span<double> valueGrad,
        Span<double> sinkGrad) =>
        BackwardVarlenWithExtras(
            q, k, v, outputGrad, seqLensQ, seqLensK, headsQ, headsKv, headDim, options, new ReferenceExtras { Sinks = sinks.ToArray() },
            queryGrad, keyGrad, valueGrad, sinkGrad);

    /// <summary>
    /// Runs the attention backward pass in float64 with learnable sinks and ALiBi slopes (each optional: an empty span is
    /// none); the slopes get no gradient.
    /// </summary>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDimV]</c> (<see cref="AttentionShape.HeadDimV"/>: <c>HeadDim</c> unless set).</param>
    /// <param name="outputGrad">Gradient of the loss with respect to the output, <c>[Batch, SeqLenQ, HeadsQ, HeadDimV]</c>.</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="sinks">The forward call's sink logits, <c>[HeadsQ]</c>, or empty for none.</param>
    /// <param name="alibiSlopes">
    /// ALiBi slopes, <c>[headsQ]</c> or <c>[batch, headsQ]</c> (batch: the sequences of a variable-length batch), or empty for
    /// none: FlashAttention-2's bias (<c>-slope · |i + off - j|</c>, or <c>+slope · j</c> for a causal mask without a left
    /// window; see <see cref="AttentionArguments.AlibiSlopes"/>), added after the scale and softcap.
    /// </param>
    /// <param name="queryGrad">Receives the gradient of q.</param>
    /// <param name="keyGrad">Receives the gradient of k.</param>
    /// <param name="valueGrad">Receives the gradient of v.</param>
    /// <param name="sinkGrad">Receives the gradient of the sinks, <c>[HeadsQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">A span length does not match <paramref name="shape"/>, or the shape is invalid.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void Backward(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<double> outputGrad,
        AttentionShape shape,
        AttentionOptions options,
        ReadOnlySpan<double> sinks,
        ReadOnlySpan<double> alibiSlopes,
        Span<double> queryGrad,
        Span<double> keyGrad,
        Span<double> valueGrad,
        Span<double> sinkGrad) =>
        BackwardWithExtras(
            q, k, v, outputGrad, shape, options, SinksAndAlibi(sinks, alibiSlopes), queryGrad, keyGrad, valueGrad, sinkGrad);

    /// <summary>
    /// Runs the attention backward pass in float64 over a variable-length batch with learnable sinks and ALiBi slopes (each
    /// optional: an empty span is none); the slopes get no gradient.
    /// </summary>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="k">Packed keys, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="v">Packed values, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="outputGrad">Gradient of the loss with respect to the packed output, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more).</param>
    /// <param name="headsQ">Query heads.</param>
    /// <param name="headsKv">Key/value heads.</param>
    /// <param name="headDim">Head dimension.</param>
    /// <param name="options">Mask, alignment, window, softcap and scale.</param>
    /// <param name="sinks">The forward call's sink logits, <c>[headsQ]</c>, or empty for none.</param>
    /// <param name="alibiSlopes">
    /// ALiBi slopes, <c>[headsQ]</c> or <c>[batch, headsQ]</c> (batch: the sequences of a variable-length batch), or empty for
    /// none: FlashAttention-2's bias (<c>-slope · |i + off - j|</c>, or <c>+slope · j</c> for a causal mask without a left
    /// window; see <see cref="AttentionArguments.AlibiSlopes"/>), added after the scale and softcap.
    /// </param>
    /// <param name="queryGrad">Receives the gradient of q.</param>
    /// <param name="keyGrad">Receives the gradient of k.</param>
    /// <param name="valueGrad">Receives the gradient of v.</param>
    /// <param name="sinkGrad">Receives the gradient of the sinks, <c>[headsQ]</c>; pass an empty span to skip it.</param>
    /// <exception cref="ArgumentException">The sizes or span lengths are inconsistent.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void BackwardVarlen(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<double> outputGrad,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        ReadOnlySpan<double> sinks,
        ReadOnlySpan<double> alibiSlopes,
        Span<double> queryGrad,
        Span<double> keyGrad,
        Span<double> valueGrad,
        Span<double> sinkGrad) =>
        BackwardVarlenWithExtras(
            q, k, v, outputGrad, seqLensQ, seqLensK, headsQ, headsKv, headDim, options, SinksAndAlibi(sinks, alibiSlopes),
            queryGrad, keyGrad, valueGrad, sinkGrad);

    /// <summary>
    /// Runs the attention backward pass in float64 with the options of <see cref="ReferenceExtras"/>: v, the output
    /// gradient and dV have <c>ValueHeadDim</c> columns; <paramref name="sinkGrad"/> (<c>[HeadsQ]</c>, or empty to skip
    /// it) receives the sinks' gradient summed over batches and rows (0 without sinks); dropout regenerates the
    /// forward pass's mask from the same seed and offset.
    /// </summary>
    internal static unsafe void BackwardWithExtras(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<double> outputGrad,
        AttentionShape shape,
        AttentionOptions options,
        ReferenceExtras extras,
        Span<double> queryGrad,
        Span<double> keyGrad,
        Span<double> valueGrad,
        Span<double> sinkGrad)
    {
        ArgumentNullException.ThrowIfNull(options);
        shape.Validate(nameof(shape));
        options.Validate(nameof(options));
        var plan = new ExtrasPlan(WithValueHeadDimOf(shape, extras), options, shape.Batch, shape.HeadsQ, shape.HeadDim, shape.SeqLenK);
        int dvDim = plan.ValueHeadDim;
        long vElements = (long)shape.Batch * shape.SeqLenK * shape.HeadsKv * dvDim;
        long oElements = (long)shape.Batch * shape.SeqLenQ * shape.HeadsQ * dvDim;
        RequireLength(q.Length, shape.QElementCount, nameof(q));
        RequireLength(k.Length, shape.KvElementCount, nameof(k));
        RequireLength(v.Length, vElements, nameof(v));
        RequireLength(outputGrad.Length, oElements, nameof(outputGrad));
        RequireLength(queryGrad.Length, shape.QElementCount, nameof(queryGrad));
        RequireLength(keyGrad.Length, shape.KvElementCount, nameof(keyGrad));
        RequireLength(valueGrad.Length, vElements, nameof(valueGrad));
        if (!sinkGrad.IsEmpty)
        {
            RequireLength(sinkGrad.Length, shape.HeadsQ, nameof(sinkGrad));
        }

        // Every gradient starts at 0: rows that see no key and keys no row sees stay there.
        queryGrad.Clear();
        keyGrad.Clear();
        valueGrad.Clear();
        sinkGrad.Clear();
        long units = (long)shape.Batch * shape.HeadsKv;
        if (units == 0 || shape.SeqLenQ == 0 || shape.SeqLenK == 0)
        {
            return;
        }

        // Each unit writes the sink gradient of its (batch, query head)s here; summed over batches in order below.
        var sinkParts = new double[shape.Batch * shape.HeadsQ];
        var row = new BackwardRowKernel(options, shape.HeadDim, plan);
        long macs = (long)shape.Batch * shape.HeadsQ * shape.SeqLenQ * shape.SeqLenK * (shape.HeadDim + dvDim) / 2;
        fixed (double* pq = q, pk = k, pv = v, pdo = outputGrad, pdq = queryGrad, pdk = keyGrad, pdv = valueGrad)
        {
            nint qp = (nint)pq, kp = (nint)pk, vp = (nint)pv, dop = (nint)pdo, dqp = (nint)pdq, dkp = (nint)pdk, dvp = (nint)pdv;
            int sq = shape.SeqLenQ, sk = shape.SeqLenK, hq = shape.HeadsQ, hkv = shape.HeadsKv, d = shape.HeadDim, dv = dvDim;
            int group = hq / hkv;
            RunRows(units, BackwardScratchLength(sk), macs, (u, scratch) =>
            {
                // u runs over [B, Hkv]; the unit alone writes dK/dV of its key/value head and dQ of its query heads.
                int kvHead = (int)(u % hkv);
                long b = u / hkv;
                long kvRow = (b * sk * hkv) + kvHead;
                for (int h = kvHead * group; h < (kvHead + 1) * group; h++)
                {
                    double sinkPart = 0;
                    for (int i = 0; i < sq; i++)
                    {
                        long qRow = ((b * sq) + i) * hq + h;
                        sinkPart += row.Compute(
                            (double*)qp + (qRow * d), (double*)dop + (qRow * dv), (double*)kp + (kvRow * d), (double*)vp + (kvRow * dv),
                            (long)hkv * d, (long)hkv * dv, (int)b, h, i, sq, sk, (double*)dqp + (qRow * d), (double*)dkp + (kvRow * d),
                            (double*)dvp + (kvRow * dv), scratch);
                    }

                    sinkParts[(b * hq) + h] = sinkPart;
                }
            });
        }

        SumSinkParts(sinkParts, shape.HeadsQ, sinkGrad);
    }

    /// <summary>
    /// Runs the attention backward pass in float64 over a variable-length batch (sequences packed one after another,
    /// each attending only within itself, as in
    /// <see cref="ForwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, Span{double}, Span{double})"/>).
    /// </summary>
    /// <remarks>
    /// Work is split over (sequence, key/value head) and walks its query heads and rows in a fixed order, so the
    /// result does not depend on whether it runs in parallel. See
    /// <see cref="Backward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, Span{double}, Span{double}, Span{double})"/>
    /// for what is computed.
    /// </remarks>
    /// <param name="q">Packed queries, <c>[totalQ, headsQ, headDim]</c> with <c>totalQ = Σ seqLensQ</c>.</param>
    /// <param name="k">Packed keys, <c>[totalK, headsKv, headDim]</c> with <c>totalK = Σ seqLensK</c>.</param>
    /// <param name="v">Packed values, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="outputGrad">Gradient of the loss with respect to the packed output, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more), as many as <paramref name="seqLensQ"/>.</param>
    /// <param name="headsQ">Query heads (1 or more), a multiple of <paramref name="headsKv"/>.</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more).</param>
    /// <param name="options">Mask, alignment, window, softcap and scale (<see cref="AttentionOptions.KernelPath"/> is ignored).</param>
    /// <param name="queryGrad">Receives the gradient of q, <c>[totalQ, headsQ, headDim]</c>.</param>
    /// <param name="keyGrad">Receives the gradient of k, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <param name="valueGrad">Receives the gradient of v, <c>[totalK, headsKv, headDim]</c>.</param>
    /// <exception cref="ArgumentException">
    /// The length lists differ in count or hold a negative length, a size is out of range, the heads do not divide, or
    /// a span length does not match the sizes.
    /// </exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static void BackwardVarlen(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<double> outputGrad,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        Span<double> queryGrad,
        Span<double> keyGrad,
        Span<double> valueGrad) =>
        BackwardVarlenWithExtras(
            q, k, v, outputGrad, seqLensQ, seqLensK, headsQ, headsKv, headDim, options, ReferenceExtras.None, queryGrad, keyGrad,
            valueGrad, default);

    /// <summary>
    /// Runs the attention backward pass in float64 over a variable-length batch with the options of
    /// <see cref="ReferenceExtras"/> (the sequence's index is the batch index of the slopes and the dropout stream);
    /// <paramref name="sinkGrad"/> is as in the fixed-length overload.
    /// </summary>
    internal static unsafe void BackwardVarlenWithExtras(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        ReadOnlySpan<double> outputGrad,
        ReadOnlySpan<int> seqLensQ,
        ReadOnlySpan<int> seqLensK,
        int headsQ,
        int headsKv,
        int headDim,
        AttentionOptions options,
        ReferenceExtras extras,
        Span<double> queryGrad,
        Span<double> keyGrad,
        Span<double> valueGrad,
        Span<double> sinkGrad)
    {
        VarlenLayout layout = CheckVarlen(q, k, v, seqLensQ, seqLensK, headsQ, headsKv, headDim, options, extras, out ExtrasPlan plan);
        int dvDim = plan.ValueHeadDim;
        long[] cuQ = layout.CuQ, cuK = layout.CuK;
        int maxK = layout.MaxK;
        long qElements = cuQ[^1] * headsQ * headDim, kvElements = cuK[^1] * headsKv * headDim;
        long oElements = cuQ[^1] * headsQ * dvDim, vElements = cuK[^1] * headsKv * dvDim;
        RequireLength(outputGrad.Length, oElements, nameof(outputGrad));
        RequireLength(queryGrad.Length, qElements, nameof(queryGrad));
        RequireLength(keyGrad.Length, kvElements, nameof(keyGrad));
        RequireLength(valueGrad.Length, vElements, nameof(valueGrad));
        if (!sinkGrad.IsEmpty)
        {
            RequireLength(sinkGrad.Length, headsQ, nameof(sinkGrad));
        }

        queryGrad.Clear();
        keyGrad.Clear();
        valueGrad.Clear();
        sinkGrad.Clear();
        if (qElements == 0 || kvElements == 0)
        {
            return;
        }

        int[] lensQ = layout.LensQ, lensK = layout.LensK;
        long macs = layout.Macs;

        var sinkParts = new double[(long)lensQ.Length * headsQ];
        var row = new BackwardRowKernel(options, headDim, plan);
        fixed (double* pq = q, pk = k, pv = v, pdo = outputGrad, pdq = queryGrad, pdk = keyGrad, pdv = valueGrad)
        {
            nint qp = (nint)pq, kp = (nint)pk, vp = (nint)pv, dop = (nint)pdo, dqp = (nint)pdq, dkp = (nint)pdk, dvp = (nint)pdv;
            int hq = headsQ, hkv = headsKv, d = headDim, dv = dvDim;
            int group = hq / hkv;
            RunRows((long)lensQ.Length * hkv, BackwardScratchLength(maxK), macs, (u, scratch) =>
            {
                // u runs over [sequences, Hkv]; the unit alone writes dK/dV of its head's keys in its sequence and
                // dQ of its query heads' rows in its sequence.
                int kvHead = (int)(u % hkv);
                int b = (int)(u / hkv);
                int sq = lensQ[b], sk = lensK[b];
                if (sq == 0 || sk == 0)
                {
                    return;
                }

                long kvRow = (cuK[b] * hkv) + kvHead;
                for (int h = kvHead * group; h < (kvHead + 1) * group; h++)
                {
                    double sinkPart = 0;
                    for (int i = 0; i < sq; i++)
                    {
                        long qRow = ((cuQ[b] + i) * hq) + h;
                        sinkPart += row.Compute(
                            (double*)qp + (qRow * d), (double*)dop + (qRow * dv), (double*)kp + (kvRow * d), (double*)vp + (kvRow * dv),
                            (long)hkv * d, (long)hkv * dv, b, h, i, sq, sk, (double*)dqp + (qRow * d), (double*)dkp + (kvRow * d),
                            (double*)dvp + (kvRow * dv), scratch);
                    }

                    sinkParts[((long)b * hq) + h] = sinkPart;
                }
            });
        }

        SumSinkParts(sinkParts, headsQ, sinkGrad);
    }

    /// <summary>Sums the per-(batch, head) sink gradients <c>[batches, heads]</c> over batches, in order, into <paramref name="sinkGrad"/>.</summary>
    private static void SumSinkParts(double[] parts, int heads, Span<double> sinkGrad)
    {
        if (sinkGrad.IsEmpty)
        {
            return;
        }

        for (long bh = 0; bh < parts.LongLength; bh++)
        {
            sinkGrad[(int)(bh % heads)] += parts[bh];
        }
    }

    /// <summary>Scratch doubles one backward row needs: weights, softcap slopes and dP for up to <paramref name="maxKeys"/> keys.</summary>
    private static int BackwardScratchLength(int maxKeys)
    {
        if (maxKeys > Array.MaxLength / 3)
        {
            throw new ArgumentException(
                $"A sequence of {maxKeys} keys is too long for the CPU reference's backward pass (at most {Array.MaxLength / 3}).");
        }

        return 3 * maxKeys;
    }

    /// <summary>One query row of the backward pass: recomputes the row's weights and adds its share of dQ, dK and dV.</summary>
    private sealed class BackwardRowKernel(AttentionOptions options, int headDim, ExtrasPlan plan)
    {
        private readonly AttentionOptions _options = options;
        private readonly ExtrasPlan _plan = plan;
        private readonly double _scale = options.EffectiveScale(headDim);
        private readonly double _cap = options.Softcap ?? 0;
        private readonly int _d = headDim;

        /// <summary>
        /// Handles query row <paramref name="i"/> of query head <paramref name="h"/> in batch (or sequence)
        /// <paramref name="b"/>. <paramref name="kBase"/> and <paramref name="dkBase"/> point at key 0 of the row's
        /// key/value head, <paramref name="kRowStride"/> elements apart; <paramref name="vBase"/> and
        /// <paramref name="dvBase"/> likewise, <paramref name="vRowStride"/> apart. <paramref name="dqRow"/> must start at
        /// 0; it and the dK/dV rows of the visible keys are added to. Returns the row's share of the sink's gradient
        /// (0 without sinks).
        /// </summary>
        public unsafe double Compute(
            double* qRow,
            double* doRow,
            double* kBase,
            double* vBase,
            long kRowStride,
            long vRowStride,
            int b,
            int h,
            int i,
            int seqLenQ,
            int seqLenK,
            double* dqRow,
            double* dkBase,
            double* dvBase,
            double[] scratch)
        {
            int d = _d, dvDim = _plan.ValueHeadDim;
            ExtrasPlan plan = _plan;
            (int first, int end) = VisibleKeys(_options, i, seqLenQ, seqLenK);
            int n = end - first;
            if (n <= 0)
            {
                return 0; // the output is 0 whatever the inputs (the sink's too): no gradient flows.
            }

            Span<double> p = scratch.AsSpan(0, n);          // scores, then weights P_j
            Span<double> slope = scratch.AsSpan(n, n);      // d s_j / d t_j
            Span<double> dp = scratch.AsSpan(2 * n, n);     // dP_j = dO·v_j (times Z_j / (1 - p) with dropout)

            double alibiSlope = plan.HasAlibi ? plan.Slope(b, h) : 0;
            long diagonal = i + DiagonalOffset(_options, seqLenQ, seqLenK);
            double max = double.NegativeInfinity;
            for (int j = 0; j < n; j++)
            {
                double* kRow = kBase + ((first + j) * kRowStride);
                double dot = 0;
                for (int x = 0; x < d; x++)
                {
                    dot += qRow[x] * kRow[x];
                }

                double s = dot * _scale;
                double ds = 1;
                if (_cap > 0)
                {
                    double th = Math.Tanh(s / _cap);
                    s = _cap * th;
                    ds = 1 - (th * th);
                }

                if (plan.HasAlibi)
                {
                    s += plan.Bias(alibiSlope, diagonal, first + j); // a constant of q and k: no chain factor
                }

                p[j] = s;
                slope[j] = ds;
                if (double.IsNaN(s) || s > max)
                {
                    max = s; // NaN sticks, as in the forward pass.
                }
            }

            double sink = plan.HasSinks ? plan.Sink(h) : 0;
            if (plan.HasSinks && (double.IsNaN(sink) || sink > max))
            {
                max = sink;
            }

            double sum = 0;
            for (int j = 0; j < n; j++)
            {
                p[j] = Math.Exp(p[j] - max);
                sum += p[j];
            }

            double sinkWeight = 0;
            if (plan.HasSinks)
            {
                sinkWeight = Math.Exp(sink - max);
                sum += sinkWeight;
            }

            // P_j, dV_j += P_j dO, dP_j and Δ = Σ P_j dP_j (= dO·O); with dropout the kept P_j and dP_j carry 1/(1-p)
            // and the dropped ones are 0 in dV and dP.
            double inv = 1.0 / sum;
            double delta = 0;
            for (int j = 0; j < n; j++)
            {
                double w = p[j] * inv;
                p[j] = w;
                double wv = w;
                double keep = 1;
                if (plan.HasDropout)
                {
                    keep = plan.Keep(b, h, i, first + j) ? plan.DropoutScale : 0;
                    wv = w * keep;
                }

                double* vRow = vBase + ((first + j) * vRowStride);
                double* dvRow = dvBase + ((first + j) * vRowStride);
                double dot = 0;
                for (int x = 0; x < dvDim; x++)
                {
                    dot += doRow[x] * vRow[x];
                    dvRow[x] += wv * doRow[x];
                }

                if (plan.HasDropout)
                {
                    dot *= keep;
                }

                dp[j] = dot;
                delta += w * dot;
            }

            // ∂L/∂(q·k_j) = scale * P_j (dP_j - Δ) * slope_j; dQ += that k_j, dK_j += that q.
            for (int j = 0; j < n; j++)
            {
                double g = _scale * p[j] * (dp[j] - delta) * slope[j];
                double* kRow = kBase + ((first + j) * kRowStride);
                double* dkRow = dkBase + ((first + j) * kRowStride);
                for (int x = 0; x < d; x++)
                {
                    dqRow[x] += g * kRow[x];
                    dkRow[x] += g * qRow[x];
                }
            }

            // ∂L/∂σ = Σ_j dP_j ∂P_j/∂σ = -P_σ Δ, with P_σ = e^{σ - LSE}.
            return plan.HasSinks ? -(sinkWeight * inv) * delta : 0;
        }
    }
}
