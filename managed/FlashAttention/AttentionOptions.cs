namespace FlashAttn;

/// <summary>Options of an attention call. Immutable; use <c>with</c> to derive variants.</summary>
public sealed record AttentionOptions
{
    /// <summary>The default options: no mask, scale <c>1/sqrt(headDim)</c>, automatic kernel choice.</summary>
    public static AttentionOptions Default { get; } = new();

    /// <summary>Whether to apply a causal mask (see <see cref="CausalAlignment"/>).</summary>
    public bool Causal { get; init; }

    /// <summary>
    /// Where the diagonal sits when the sequence lengths differ: the causal mask (when <see cref="Causal"/> is set)
    /// and the sliding window (<see cref="WindowLeft"/>, <see cref="WindowRight"/>) are both placed around it.
    /// </summary>
    public CausalAlignment CausalAlignment { get; init; } = CausalAlignment.BottomRight;

    /// <summary>
    /// Multiplier of <c>q·k</c> before the softmax; <see langword="null"/> means <c>1/sqrt(headDim)</c>.
    /// Must be finite and non-zero when set.
    /// </summary>
    public float? SoftmaxScale { get; init; }

    /// <summary>Kernel family the call may use.</summary>
    public KernelPath KernelPath { get; init; } = KernelPath.Auto;

    /// <summary>
    /// Sliding window: how many keys left of the diagonal a query sees; <see langword="null"/> means unbounded.
    /// Must be 0 or more when set.
    /// </summary>
    /// <remarks>
    /// With <c>off = seqLenK - seqLenQ</c> for <see cref="FlashAttn.CausalAlignment.BottomRight"/> (per sequence
    /// in a variable-length batch) or 0 for <see cref="FlashAttn.CausalAlignment.TopLeft"/>, query <c>i</c> sees key
    /// <c>j</c> iff <c>i + off - WindowLeft &lt;= j &lt;= i + off + WindowRight</c> (a null side is unbounded).
    /// <see cref="Causal"/> caps <see cref="WindowRight"/> at 0, so causal with <c>WindowLeft = w</c> is a
    /// causal sliding window of <c>w + 1</c> keys. The alignment applies to the window even without
    /// <see cref="Causal"/>. Rows that see no key get output 0 and log-sum-exp +infinity.
    /// </remarks>
    public int? WindowLeft { get; init; }

    /// <summary>
    /// Sliding window: how many keys right of the diagonal a query sees; <see langword="null"/> means unbounded.
    /// Must be 0 or more when set. See <see cref="WindowLeft"/>; <see cref="Causal"/> caps it at 0.
    /// </summary>
    public int? WindowRight { get; init; }

    /// <summary>
    /// Score soft-capping: when set, each scaled score <c>s</c> becomes <c>Softcap * tanh(s / Softcap)</c> before
    /// the masks and the softmax (the log-sum-exp is taken over the capped scores). <see langword="null"/>: off.
    /// Must be finite and greater than 0 when set.
    /// </summary>
    public float? Softcap { get; init; }

    /// <summary>
    /// Backward pass only: when set, <see cref="FlashAttention.Backward(in BackwardArguments, AttentionOptions, CudaStream)"/> writes bitwise identical dq, dk and dv run
    /// after run for the same inputs and options (on the same GPU and library build). Off by default.
    /// </summary>
    /// <remarks>
    /// By default the backward pass accumulates dq in fp32 with atomic adds from every key block, in whatever order the
    /// blocks finish, so the last bits of dq vary from run to run within the same accuracy (dk and dv are summed in
    /// registers in a fixed order, GQA groups included, and never vary). Deterministic mode accumulates in a fixed order instead; it costs time (bench/run.py reports it
    /// per shape as <c>ours_det_ms</c>) and may need more workspace (<see cref="FlashAttention.GetBackwardWorkspaceSize(in BackwardArguments, AttentionOptions)"/>
    /// includes it). The forward pass ignores this option: it has no atomics and is always reproducible, so one
    /// options record can serve both passes of a training step.
    /// </remarks>
    public bool Deterministic { get; init; }

    /// <summary>Whether a sliding window is set on either side (<see cref="WindowLeft"/> or <see cref="WindowRight"/>).</summary>
    public bool HasWindow => WindowLeft is not null || WindowRight is not null;

    /// <summary>The scale actually applied for a head dimension.</summary>
    /// <param name="headDim">The head dimension.</param>
    /// <returns><see cref="SoftmaxScale"/>, or <c>1/sqrt(headDim)</c> when it is not set.</returns>
    public double EffectiveScale(int headDim) => SoftmaxScale ?? (1.0 / Math.Sqrt(headDim));

    internal void Validate(string paramName)
    {
        if (Problem() is { } problem)
        {
            throw new ArgumentException(problem, paramName);
        }
    }

    /// <summary>Why these options are invalid, or null when they are valid.</summary>
    internal string? Problem()
    {
        if (SoftmaxScale is { } s && (!float.IsFinite(s) || s == 0f))
        {
            return $"SoftmaxScale must be finite and non-zero (got {s}); leave it null for 1/sqrt(headDim).";
        }

        if (WindowLeft is < 0 || WindowRight is < 0)
        {
            return $"WindowLeft and WindowRight must be 0 or more when set (got {Show(WindowLeft)}, {Show(WindowRight)}); leave a side null for no limit.";
        }

        if (Softcap is { } cap && (!float.IsFinite(cap) || cap <= 0f))
        {
            return $"Softcap must be finite and greater than 0 when set (got {cap}); leave it null to turn soft-capping off.";
        }

        if (!Enum.IsDefined(CausalAlignment))
        {
            return $"CausalAlignment {(int)CausalAlignment} is not a defined value.";
        }

        return Enum.IsDefined(KernelPath) ? null : $"KernelPath {(int)KernelPath} is not a defined value.";
    }

    private static string Show(int? value) => value?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "null";
}
