namespace FlashAttn;

/// <summary>
/// The tensors of a forward call (<see cref="FlashAttention.Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>
/// and <see cref="FlashAttention.Check(in AttentionArguments, out string, AttentionOptions, int)"/>): fixed-length when
/// <see cref="Batch"/> is null, variable-length (packed) when it is given.
/// </summary>
/// <param name="Q">
/// Queries: <c>[batch, seqLenQ, headsQ, headDim]</c>, or <c>[totalQ, headsQ, headDim]</c> with a <see cref="Batch"/>;
/// Float16 or BFloat16, last dimension contiguous, headDim a multiple of 8.
/// </param>
/// <param name="K">Keys: <c>[batch, seqLenK, headsKv, headDim]</c> or <c>[totalK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ.</param>
/// <param name="V">Values, k's shape and q's dtype.</param>
/// <param name="Output">Written: q's shape and dtype; must not overlap the inputs.</param>
/// <param name="LogSumExp">
/// Optional, written: Float32 <c>[batch, headsQ, seqLenQ]</c>, or <c>[headsQ, totalQ]</c> with a <see cref="Batch"/>.
/// </param>
/// <param name="Batch">The sequence boundaries of a variable-length batch, or null for a fixed-length call.</param>
/// <remarks>
/// <para>
/// A <c>readonly record struct</c> rather than a class: building one per call (a decode loop, a training step) costs no
/// allocation, the entry points take it by <see langword="in"/> reference, and <c>with</c> derives a variant. The price
/// is that <c>default(AttentionArguments)</c> exists with null tensors; the entry points check every required tensor
/// (<see cref="ArgumentNullException"/>, named as the parameter of the positional overloads: q, k, v, output) before
/// anything else.
/// </para>
/// <para>
/// The shapes are checked by the call, not by the constructor, so the same arguments can be checked first and run later.
/// </para>
/// </remarks>
public readonly record struct AttentionArguments(
    DeviceTensor Q,
    DeviceTensor K,
    DeviceTensor V,
    DeviceTensor Output,
    DeviceTensor? LogSumExp = null,
    VarlenBatch? Batch = null)
{
    /// <summary>Whether these are the arguments of a variable-length call (<see cref="Batch"/> is set).</summary>
    public bool IsVariableLength => Batch is not null;

    /// <summary>Throws <see cref="ArgumentNullException"/> for the first required tensor that is null.</summary>
    internal void ThrowIfIncomplete()
    {
        ArgumentNullException.ThrowIfNull(Q, "q");
        ArgumentNullException.ThrowIfNull(K, "k");
        ArgumentNullException.ThrowIfNull(V, "v");
        ArgumentNullException.ThrowIfNull(Output, "output");
    }
}
