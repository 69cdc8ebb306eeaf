namespace FlashAttn;

/// <summary>
/// Sizes of one attention problem. Dense row-major layouts: q and output <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>,
/// k and v <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>, log-sum-exp <c>[Batch, HeadsQ, SeqLenQ]</c>.
/// </summary>
/// <param name="Batch">Number of sequences (0 or more).</param>
/// <param name="SeqLenQ">Query length (0 or more).</param>
/// <param name="SeqLenK">Key and value length (0 or more).</param>
/// <param name="HeadsQ">Query heads (1 or more); a multiple of <paramref name="HeadsKv"/>.</param>
/// <param name="HeadsKv">Key/value heads (1 or more). Query head <c>h</c> reads key/value head <c>h / (HeadsQ / HeadsKv)</c>.</param>
/// <param name="HeadDim">Head dimension (1 or more).</param>
public readonly record struct AttentionShape(int Batch, int SeqLenQ, int SeqLenK, int HeadsQ, int HeadsKv, int HeadDim)
{
    /// <summary>Elements of q and of the output: <c>Batch * SeqLenQ * HeadsQ * HeadDim</c>.</summary>
    public long QElementCount => (long)Batch * SeqLenQ * HeadsQ * HeadDim;

    /// <summary>Elements of k and of v: <c>Batch * SeqLenK * HeadsKv * HeadDim</c>.</summary>
    public long KvElementCount => (long)Batch * SeqLenK * HeadsKv * HeadDim;

    /// <summary>Elements of the log-sum-exp: <c>Batch * HeadsQ * SeqLenQ</c>.</summary>
    public long LseElementCount => (long)Batch * HeadsQ * SeqLenQ;

    /// <summary>Query heads per key/value head (<c>HeadsQ / HeadsKv</c>).</summary>
    public int GroupSize => HeadsKv == 0 ? 0 : HeadsQ / HeadsKv;

    /// <summary>
    /// Multiply-add work of a forward pass in FLOPs, as FlashAttention benchmarks count it:
    /// <c>4 * Batch * HeadsQ * SeqLenQ * SeqLenK * HeadDim</c>, halved when causal.
    /// </summary>
    /// <param name="causal">Whether the causal mask is applied.</param>
    /// <returns>The FLOP count.</returns>
    public double ForwardFlops(bool causal) =>
        4.0 * Batch * HeadsQ * SeqLenQ * SeqLenK * HeadDim / (causal ? 2.0 : 1.0);

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

        if (HeadsQ % HeadsKv != 0)
        {
            throw new ArgumentException(
                $"HeadsKv ({HeadsKv}) must divide HeadsQ ({HeadsQ}) for grouped-query attention.", paramName);
        }
    }
}
