namespace FlashAttn;

/// <summary>
/// Sizes of one attention problem. Dense row-major layouts: q <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>, k
/// <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>, v <c>[Batch, SeqLenK, HeadsKv, HeadDimV]</c>, the output
/// <c>[Batch, SeqLenQ, HeadsQ, HeadDimV]</c>, log-sum-exp <c>[Batch, HeadsQ, SeqLenQ]</c>. <see cref="HeadDimV"/> is
/// <see cref="HeadDim"/> unless set (FlashAttention-3's separate V head dim).
/// </summary>
/// <param name="Batch">Number of sequences (0 or more).</param>
/// <param name="SeqLenQ">Query length (0 or more).</param>
/// <param name="SeqLenK">Key and value length (0 or more).</param>
/// <param name="HeadsQ">Query heads (1 or more); a multiple of <paramref name="HeadsKv"/>.</param>
/// <param name="HeadsKv">Key/value heads (1 or more). Query head <c>h</c> reads key/value head <c>h / (HeadsQ / HeadsKv)</c>.</param>
/// <param name="HeadDim">Head dimension of q and k (1 or more); it alone sets the default softmax scale <c>HeadDim^-0.5</c>.</param>
/// <remarks>
/// Equality compares the sizes as the properties report them, so a shape whose <see cref="HeadDimV"/> was set to
/// <see cref="HeadDim"/> equals one where it was left unset.
/// </remarks>
public readonly record struct AttentionShape(int Batch, int SeqLenQ, int SeqLenK, int HeadsQ, int HeadsKv, int HeadDim)
{
    /// <summary>The head dim of v and the output as set; 0 when unset (then <see cref="HeadDim"/>).</summary>
    private readonly int _headDimV;

    /// <summary>
    /// Head dimension of v and of the output: <see cref="HeadDim"/> unless set with an object initializer or <c>with</c>
    /// (<c>new AttentionShape(1, 128, 128, 16, 16, 192) { HeadDimV = 128 }</c>); setting 0 means <see cref="HeadDim"/>.
    /// Scores and the default scale use <see cref="HeadDim"/> alone; the output rows have <see cref="HeadDimV"/> columns
    /// and the log-sum-exp keeps its shape and meaning. The GPU forward serves (HeadDim, HeadDimV) = (192, 128) and
    /// (64, 512) besides equal dims (C ABI 0.10: both on the sm80 kernels and on the sm90 kernels too;
    /// <see cref="SupportQuery.HeadDimV"/> tells for a build), the backward (192, 128) (on both kernel families too);
    /// the float64 reference (<see cref="AttentionReference"/>) takes any.
    /// </summary>
    public int HeadDimV
    {
        get => _headDimV == 0 ? HeadDim : _headDimV;
        init => _headDimV = value;
    }

    /// <summary>
    /// Elements of q: <c>Batch * SeqLenQ * HeadsQ * HeadDim</c>; also of the output while <see cref="HeadDimV"/> is
    /// <see cref="HeadDim"/> (<see cref="OutputElementCount"/> in general).
    /// </summary>
    public long QElementCount => (long)Batch * SeqLenQ * HeadsQ * HeadDim;

    /// <summary>
    /// Elements of k: <c>Batch * SeqLenK * HeadsKv * HeadDim</c>; also of v while <see cref="HeadDimV"/> is
    /// <see cref="HeadDim"/> (<see cref="VElementCount"/> in general).
    /// </summary>
    public long KvElementCount => (long)Batch * SeqLenK * HeadsKv * HeadDim;

    /// <summary>Elements of v: <c>Batch * SeqLenK * HeadsKv * HeadDimV</c>.</summary>
    public long VElementCount => (long)Batch * SeqLenK * HeadsKv * HeadDimV;

    /// <summary>Elements of the output: <c>Batch * SeqLenQ * HeadsQ * HeadDimV</c>.</summary>
    public long OutputElementCount => (long)Batch * SeqLenQ * HeadsQ * HeadDimV;

    /// <summary>Elements of the log-sum-exp: <c>Batch * HeadsQ * SeqLenQ</c>.</summary>
    public long LseElementCount => (long)Batch * HeadsQ * SeqLenQ;

    /// <summary>Query heads per key/value head (<c>HeadsQ / HeadsKv</c>).</summary>
    public int GroupSize => HeadsKv == 0 ? 0 : HeadsQ / HeadsKv;

    /// <summary>
    /// Multiply-add work of a forward pass in FLOPs, as FlashAttention benchmarks count it:
    /// <c>2 * Batch * HeadsQ * SeqLenQ * SeqLenK * (HeadDim + HeadDimV)</c> (<c>Q·Kᵀ</c> and <c>P·V</c>), halved when
    /// causal; with equal head dims that is <c>4 * Batch * HeadsQ * SeqLenQ * SeqLenK * HeadDim</c>.
    /// </summary>
    /// <param name="causal">Whether the causal mask is applied.</param>
    /// <returns>The FLOP count.</returns>
    public double ForwardFlops(bool causal) =>
        2.0 * Batch * HeadsQ * SeqLenQ * SeqLenK * ((double)HeadDim + HeadDimV) / (causal ? 2.0 : 1.0);

    /// <summary>Throws <see cref="ArgumentException"/> when a size is out of range or the heads do not divide.</summary>
    /// <param name="paramName">The parameter name to report.</param>
    public void Validate(string paramName = "shape")
    {
        if (Batch < 0 || SeqLenQ < 0 || SeqLenK < 0)
        {
            throw new ArgumentException(
                $"Batch, SeqLenQ and SeqLenK must be 0 or more (got {Batch}, {SeqLenQ}, {SeqLenK}).", paramName);
        }

        if (HeadsQ < 1 || HeadsKv < 1 || HeadDim < 1)
        {
            throw new ArgumentException(
                $"HeadsQ, HeadsKv and HeadDim must be 1 or more (got {HeadsQ}, {HeadsKv}, {HeadDim}).", paramName);
        }

        if (_headDimV < 0)
        {
            throw new ArgumentException(
                $"HeadDimV must be 1 or more, or 0 (unset) for HeadDim (got {_headDimV}).", paramName);
        }

        if (HeadsQ % HeadsKv != 0)
        {
            throw new ArgumentException(
                $"HeadsKv ({HeadsKv}) must divide HeadsQ ({HeadsQ}) for grouped-query attention.", paramName);
        }
    }

    /// <summary>Whether both shapes have the same sizes (<see cref="HeadDimV"/> compared as reported).</summary>
    /// <param name="other">The other shape.</param>
    /// <returns><see langword="true"/> when every size is equal.</returns>
    public bool Equals(AttentionShape other) =>
        Batch == other.Batch && SeqLenQ == other.SeqLenQ && SeqLenK == other.SeqLenK && HeadsQ == other.HeadsQ &&
        HeadsKv == other.HeadsKv && HeadDim == other.HeadDim && HeadDimV == other.HeadDimV;

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Batch, SeqLenQ, SeqLenK, HeadsQ, HeadsKv, HeadDim, HeadDimV);
}
