namespace FlashAttn;

/// <summary>Options of an attention call. Immutable; use <c>with</c> to derive variants.</summary>
public sealed record AttentionOptions
{
    /// <summary>The default options: no mask, scale <c>1/sqrt(headDim)</c>, automatic kernel choice.</summary>
    public static AttentionOptions Default { get; } = new();

    /// <summary>Whether to apply a causal mask (see <see cref="CausalAlignment"/>).</summary>
    public bool Causal { get; init; }

    /// <summary>Where the causal diagonal sits when the sequence lengths differ; used when <see cref="Causal"/> is set.</summary>
    public CausalAlignment CausalAlignment { get; init; } = CausalAlignment.BottomRight;

    /// <summary>
    /// Multiplier of <c>q·k</c> before the softmax; <see langword="null"/> means <c>1/sqrt(headDim)</c>.
    /// Must be finite and non-zero when set.
    /// </summary>
    public float? SoftmaxScale { get; init; }

    /// <summary>Kernel family the call may use.</summary>
    public KernelPath KernelPath { get; init; } = KernelPath.Auto;

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

        if (!Enum.IsDefined(CausalAlignment))
        {
            return $"CausalAlignment {(int)CausalAlignment} is not a defined value.";
        }

        return Enum.IsDefined(KernelPath) ? null : $"KernelPath {(int)KernelPath} is not a defined value.";
    }
}
