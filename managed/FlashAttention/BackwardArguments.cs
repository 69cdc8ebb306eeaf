namespace FlashAttn;

/// <summary>
/// The tensors of a backward call (<see cref="FlashAttention.Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>,
/// <see cref="FlashAttention.CheckBackward(in BackwardArguments, out string, AttentionOptions, int)"/> and
/// <see cref="FlashAttention.GetBackwardWorkspaceSize(in BackwardArguments, AttentionOptions)"/>): the inputs, output
/// and log-sum-exp of the forward call, the output gradient, the three gradients to write, and optionally the
/// forward call's variable-length batch and a caller workspace.
/// </summary>
/// <param name="Q">
/// Queries of the forward call, Float16 or BFloat16, last dimension contiguous (the fp8 forward has no backward, as in
/// FlashAttention-3: Float8E4M3 inputs are <see cref="FlashAttentionStatus.Unsupported"/>).
/// </param>
/// <param name="K">Keys of the forward call, q's dtype; headsKv divides headsQ.</param>
/// <param name="V">Values of the forward call, k's shape (but v's head dim, q's but for the pair (192, 128)) and q's dtype.</param>
/// <param name="Output">Output of the forward call, q's shape (but v's head dim) and dtype.</param>
/// <param name="DOut">Gradient of the loss with respect to <paramref name="Output"/>, its shape and q's dtype.</param>
/// <param name="LogSumExp">
/// Log-sum-exp the forward call wrote (required): Float32 <c>[batch, headsQ, seqLenQ]</c>, or <c>[headsQ, totalQ]</c>
/// with a <see cref="Batch"/>.
/// </param>
/// <param name="DQ">Written: the gradient of q, q's shape and dtype.</param>
/// <param name="DK">Written: the gradient of k (summed over each GQA group's query heads), k's shape and q's dtype.</param>
/// <param name="DV">Written: the gradient of v (summed like <paramref name="DK"/>), v's shape and q's dtype.</param>
/// <param name="Batch">
/// The forward call's sequence boundaries for a variable-length batch, or null for a fixed-length call. Without a
/// <see cref="VarlenBatch.BlockTable"/>: the backward has no paged K/V, so a paged batch is refused
/// (<see cref="ArgumentException"/>, or <see cref="FlashAttentionStatus.InvalidArgument"/> from the check); gather the
/// keys and values into packed k and v first.
/// </param>
/// <param name="Workspace">
/// Scratch memory of at least <see cref="FlashAttention.GetBackwardWorkspaceSize(in BackwardArguments, AttentionOptions)"/>
/// bytes on the instance's device, or null (or empty) to let the library allocate it stream-ordered. Only the run uses
/// it: the check and the workspace-size query ignore it.
/// </param>
/// <remarks>
/// <para>
/// A <c>readonly record struct</c> for the reasons given on <see cref="AttentionArguments"/>: no allocation per call,
/// passed by <see langword="in"/> reference, <c>with</c> for variants. Every required tensor is checked for null by the
/// call (<see cref="ArgumentNullException"/> named as the positional overloads' parameters: q, k, v, output, dOut,
/// logSumExp, dq, dk, dv) before any native call.
/// </para>
/// <para>
/// A forward call whose v has a head dim of its own (<see cref="AttentionShape.HeadDimV"/>) takes
/// <paramref name="DOut"/> shaped like its output and <paramref name="DV"/> like v: the native library serves the pair
/// (192, 128) and refuses (64, 512) as <see cref="FlashAttentionStatus.Unsupported"/> with the reason.
/// </para>
/// </remarks>
public readonly record struct BackwardArguments(
    DeviceTensor Q,
    DeviceTensor K,
    DeviceTensor V,
    DeviceTensor Output,
    DeviceTensor DOut,
    DeviceTensor LogSumExp,
    DeviceTensor DQ,
    DeviceTensor DK,
    DeviceTensor DV,
    VarlenBatch? Batch = null,
    DeviceBuffer<byte>? Workspace = null)
{
    /// <summary>Whether these are the arguments of a variable-length call (<see cref="Batch"/> is set).</summary>
    public bool IsVariableLength => Batch is not null;

    /// <summary>
    /// The learnable sinks of the forward call (<see cref="AttentionArguments.Sinks"/>: Float32 <c>[headsQ]</c>), or null
    /// when it had none. dq, dk and dv need nothing else for them: the forward's log-sum-exp includes each sink.
    /// </summary>
    public DeviceTensor? Sinks { get; init; }

    /// <summary>
    /// Optional, written (overwritten, not accumulated): the gradient of <see cref="Sinks"/>, Float32 <c>[headsQ]</c>:
    /// <c>dσ_h = -Σ_{b,i} e^{σ_h - LSE_{b,h,i}} · rowsum(dOut ∘ Output)_{b,h,i}</c> (FlashAttention-4's
    /// <c>learnable_sink</c> gradient with no incoming log-sum-exp gradient). Needs <see cref="Sinks"/>. Summed in a fixed
    /// order, so it is bitwise reproducible with or without <see cref="AttentionOptions.Deterministic"/>.
    /// </summary>
    public DeviceTensor? DSinks { get; init; }

    /// <summary>
    /// The ALiBi slopes of the forward call (<see cref="AttentionArguments.AlibiSlopes"/>: Float32 <c>[headsQ]</c> or
    /// <c>[batch, headsQ]</c>), or null when it had none. The backward recomputes the same bias; the slopes get no gradient.
    /// </summary>
    public DeviceTensor? AlibiSlopes { get; init; }

    /// <summary>
    /// The forward call's dropout probability (<see cref="AttentionArguments.DropoutP"/>); with the same
    /// <see cref="DropoutSeed"/> and <see cref="DropoutOffset"/> the backward regenerates the forward's keep mask (as
    /// FlashAttention-2: <c>dV = (Z ∘ P)ᵀ dO / (1 - p)</c>, <c>dP = Z ∘ (dO Vᵀ) / (1 - p)</c>, <c>dS = P ∘ (dP - D)</c>).
    /// </summary>
    public float DropoutP { get; init; }

    /// <summary>The forward call's dropout seed.</summary>
    public ulong DropoutSeed { get; init; }

    /// <summary>The forward call's dropout offset.</summary>
    public ulong DropoutOffset { get; init; }

    /// <summary>The forward call's arguments these were derived from (q, k, v, output and the log-sum-exp, with the batch, sinks, ALiBi slopes and dropout).</summary>
    public AttentionArguments ForwardArguments => new(Q, K, V, Output, LogSumExp, Batch)
    {
        Sinks = Sinks,
        AlibiSlopes = AlibiSlopes,
        DropoutP = DropoutP,
        DropoutSeed = DropoutSeed,
        DropoutOffset = DropoutOffset,
    };

    /// <summary>Throws <see cref="ArgumentNullException"/> for the first required tensor that is null.</summary>
    internal void ThrowIfIncomplete()
    {
        ForwardArguments.ThrowIfIncomplete();
        ArgumentNullException.ThrowIfNull(DOut, "dOut");
        ArgumentNullException.ThrowIfNull(LogSumExp, "logSumExp");
        ArgumentNullException.ThrowIfNull(DQ, "dq");
        ArgumentNullException.ThrowIfNull(DK, "dk");
        ArgumentNullException.ThrowIfNull(DV, "dv");
    }
}
