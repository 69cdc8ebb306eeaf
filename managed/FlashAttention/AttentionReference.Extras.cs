using FlashAttn.Internal;

namespace FlashAttn;

/// <summary>
/// The issue-14 options of the float64 reference (ALiBi, attention sinks, a V head dim different from the QK head
/// dim, dropout), with the meanings of <c>../shared/FEATURES.md</c>. Internal: only the reference and its tests use
/// it, until the C ABI and <see cref="AttentionOptions"/> grow the same options and map onto it. The sinks have (C ABI
/// 0.7): the public reference overloads that take <c>sinks</c> map onto <see cref="Sinks"/>; so have the ALiBi slopes
/// (0.8): the overloads that take <c>alibiSlopes</c>, and <see cref="DecodeServingOptions.AlibiSlopes"/>.
/// </summary>
/// <remarks>
/// <para>
/// Order of operations per logit (FEATURES.md §0): <c>t = scale * q·k_j</c>; softcap <c>cap * tanh(t / cap)</c>;
/// then the ALiBi bias; masked keys drop out; softmax (with the sink in the denominator); dropout on the normalised
/// weights; <c>O = Σ w_j v_j</c>.
/// </para>
/// <list type="bullet">
/// <item><b>ALiBi</b> (§2): slope <c>m</c> of query head h (and of batch b, or sequence b in a varlen batch, for the
/// <c>[batch, headsQ]</c> form). The bias is added after scale and softcap, in natural-logit units.
/// With <c>off</c> the diagonal offset of <see cref="AttentionOptions.CausalAlignment"/> (<c>sk - sq</c> bottom-right,
/// FA2's only alignment; 0 top-left): <c>bias_ij = -m * |i + off - j|</c>, except for FA2's "causal" masks, which add
/// <c>+m * j</c> (FA2's exact formula: on the visible keys it differs from the distance form by the row constant
/// <c>m * (i + off)</c>, so the output is the same and the LSE is larger by that constant). FA2's causal masks are
/// those whose window is (unbounded left, right 0) after FA2's normalisation: <see cref="AttentionOptions.Causal"/> or
/// <c>WindowRight = 0</c>, with no <c>WindowLeft</c> or one of at least the longest key sequence of the call (FA2
/// turns <c>window_left &gt;= seqlen_k</c> into -1 before it decides).</item>
/// <item><b>Sinks</b> (§7): one logit <c>σ_h</c> per query head, in final-logit units (no scale, cap or bias), joins
/// the denominator only: <c>O_i = Σ_j e^{x_ij} v_j / (e^{σ_h} + Σ_j e^{x_ij})</c> and
/// <c>LSE_i = log(e^{σ_h} + Σ_j e^{x_ij})</c>; a row that sees no key gets O = 0 and LSE = σ_h (FA4). The backward
/// gives <c>dσ_h = -Σ_{b,i} e^{σ_h - LSE_{b,h,i}} D_{b,h,i}</c> with <c>D = dO·O</c> (no incoming LSE gradient).</item>
/// <item><b>V head dim</b> (§8): v, the output, its gradient and dV have <see cref="ValueHeadDim"/> columns; q, k, dQ
/// and dK keep the QK head dim, which alone sets the default scale; the LSE keeps its shape and meaning.</item>
/// <item><b>Dropout</b> (§1): element (i, j) of batch b (the sequence's index in a varlen batch) and query head h is
/// kept iff its Philox byte is at most <c>T = floor(float(1 - p) * 255)</c> (<see cref="Philox.DropoutKeep"/>, with i
/// and j within the sequence); <c>O_i = (1 / (1 - p)) Σ_j Z_ij P_ij v_j</c> with P the softmax before dropout, so the
/// LSE is unchanged. The backward regenerates the same mask: <c>dV_j += (1/(1-p)) Z_ij P_ij dO_i</c>,
/// <c>dP_ij = (1/(1-p)) Z_ij dO_i·v_j</c>, <c>dS_ij = P_ij (dP_ij - dO_i·O_i)</c>. p = 0 is no dropout.</item>
/// </list>
/// </remarks>
internal sealed record ReferenceExtras
{
    /// <summary>No extra option: the reference as the public API computes it.</summary>
    public static ReferenceExtras None { get; } = new();

    /// <summary>ALiBi slopes, <c>[headsQ]</c> or <c>[batch, headsQ]</c> (batch: sequences for varlen); null for none.</summary>
    public double[]? AlibiSlopes { get; init; }

    /// <summary>
    /// The key length FA2 compares <c>WindowLeft</c> with when it decides the causal ALiBi form (a left window of at
    /// least it is unbounded); null: the call's longest key sequence. The decode reference passes the cache capacity,
    /// as <c>flash_attn_with_kvcache</c> (whose seqlen_k is <c>k_cache.shape[1]</c>) and fa_decode do.
    /// </summary>
    public int? AlibiSeqLenK { get; init; }

    /// <summary>Attention-sink logits, <c>[headsQ]</c>; null for none.</summary>
    public double[]? Sinks { get; init; }

    /// <summary>The head dim of v and of the output (1 or more); null for the QK head dim.</summary>
    public int? ValueHeadDim { get; init; }

    /// <summary>Dropout probability in [0, 1); 0 for none.</summary>
    public float DropoutP { get; init; }

    /// <summary>Philox seed of the dropout mask.</summary>
    public ulong DropoutSeed { get; init; }

    /// <summary>Philox base offset of the dropout mask.</summary>
    public ulong DropoutOffset { get; init; }

    /// <summary>
    /// Forward only: round each unnormalised weight to e4m3 before <c>P·V</c> as the fp8 kernels do (FEATURES.md §6,
    /// FlashAttention-3's max offset 8): <c>P̃_j = e4m3(256 · e^{x_j - m})</c> with m the row's final maximum, the
    /// denominator summed from the unrounded weights, <c>O = Σ P̃_j v_j / (256 · Σ e^{x_j - m})</c>. The LSE is unchanged.
    /// </summary>
    public bool RoundProbabilitiesToFloat8 { get; init; }
}

/// <content>The extras' per-call plan, shared by the forward and backward row kernels.</content>
public static partial class AttentionReference
{
    /// <summary><see cref="ReferenceExtras"/> checked against a call's sizes and resolved for the row kernels.</summary>
    private sealed class ExtrasPlan
    {
        private readonly double[]? _slopes;
        private readonly bool _slopesPerBatch;
        private readonly double[]? _sinks;
        private readonly uint _threshold;
        private readonly ulong _seed;
        private readonly ulong _offset;

        /// <summary>Checks <paramref name="extras"/> for a call of <paramref name="batch"/> batches (or sequences).</summary>
        public ExtrasPlan(ReferenceExtras extras, AttentionOptions options, int batch, int headsQ, int headDim, int maxSeqLenK)
        {
            ArgumentNullException.ThrowIfNull(extras);
            HeadsQ = headsQ;
            ValueHeadDim = extras.ValueHeadDim ?? headDim;
            if (ValueHeadDim < 1)
            {
                throw new ArgumentException($"ValueHeadDim must be 1 or more when set (got {ValueHeadDim}).", nameof(extras));
            }

            if (extras.AlibiSlopes is { } slopes)
            {
                if (slopes.Length != headsQ && slopes.LongLength != (long)batch * headsQ)
                {
                    throw new ArgumentException(
                        $"AlibiSlopes has {slopes.Length} values; it must be [headsQ] ({headsQ}) or [batch, headsQ] ({(long)batch * headsQ}).",
                        nameof(extras));
                }

                _slopes = slopes;
                _slopesPerBatch = slopes.Length != headsQ;

                // FA2 adds +slope*j when its mask is causal: window (-1, 0) after window_left >= seqlen_k became -1.
                bool rightZero = options.Causal || options.WindowRight == 0;
                bool leftOpen = options.WindowLeft is not { } left || left >= (extras.AlibiSeqLenK ?? maxSeqLenK);
                AlibiColumnForm = rightZero && leftOpen;
            }

            if (extras.Sinks is { } sinks)
            {
                if (sinks.Length != headsQ)
                {
                    throw new ArgumentException($"Sinks has {sinks.Length} values; it must be [headsQ] ({headsQ}).", nameof(extras));
                }

                _sinks = sinks;
            }

            RoundsProbabilitiesToFloat8 = extras.RoundProbabilitiesToFloat8;
            float p = extras.DropoutP;
            if (!(p >= 0f && p < 1f))
            {
                throw new ArgumentException($"DropoutP must be in [0, 1) (got {p}).", nameof(extras));
            }

            if (p > 0f)
            {
                HasDropout = true;
                _threshold = Philox.DropoutThreshold(p);
                DropoutScale = 1.0 / (1.0 - p);
                _seed = extras.DropoutSeed;
                _offset = extras.DropoutOffset;
            }
        }

        public int HeadsQ { get; }

        public int ValueHeadDim { get; }

        public bool HasAlibi => _slopes is not null;

        /// <summary>Whether the ALiBi bias is FA2's causal <c>+slope * j</c> rather than <c>-slope * |i + off - j|</c>.</summary>
        public bool AlibiColumnForm { get; }

        public bool HasSinks => _sinks is not null;

        public bool HasDropout { get; }

        /// <summary>Whether the forward rounds <c>256 · e^{x - m}</c> to e4m3 before <c>P·V</c> (<see cref="ReferenceExtras.RoundProbabilitiesToFloat8"/>).</summary>
        public bool RoundsProbabilitiesToFloat8 { get; }

        /// <summary><c>1 / (1 - p)</c>.</summary>
        public double DropoutScale { get; } = 1;

        public double Slope(int b, int h) => _slopesPerBatch ? _slopes![((long)b * HeadsQ) + h] : _slopes![h];

        /// <summary>The ALiBi bias of key <paramref name="j"/> for a row whose diagonal is at <paramref name="diagonal"/>.</summary>
        public double Bias(double slope, long diagonal, int j) =>
            AlibiColumnForm ? slope * j : -slope * Math.Abs(diagonal - j);

        public double Sink(int h) => _sinks![h];

        public bool Keep(int b, int h, int i, int j) =>
            Philox.DropoutKeep(_seed, _offset, b, h, HeadsQ, (uint)i, (uint)j, _threshold);
    }

    /// <summary>
    /// <paramref name="extras"/> with <paramref name="shape"/>'s V head dim: unchanged when the shape's
    /// <see cref="AttentionShape.HeadDimV"/> is its head dim (so an extras' own <see cref="ReferenceExtras.ValueHeadDim"/>,
    /// or none, holds), else with <see cref="ReferenceExtras.ValueHeadDim"/> set to it.
    /// </summary>
    /// <exception cref="ArgumentException">The extras set another V head dim than the shape.</exception>
    private static ReferenceExtras WithValueHeadDimOf(AttentionShape shape, ReferenceExtras extras)
    {
        ArgumentNullException.ThrowIfNull(extras);
        if (shape.HeadDimV == shape.HeadDim)
        {
            return extras;
        }

        if (extras.ValueHeadDim is { } dv && dv != shape.HeadDimV)
        {
            throw new ArgumentException(
                $"The shape's HeadDimV is {shape.HeadDimV} but the extras' ValueHeadDim is {dv}; set one of them.", nameof(extras));
        }

        return extras with { ValueHeadDim = shape.HeadDimV };
    }

    /// <summary>The extras of the public overloads: an empty span is "none".</summary>
    private static ReferenceExtras SinksAndAlibi(ReadOnlySpan<double> sinks, ReadOnlySpan<double> alibiSlopes) => new()
    {
        Sinks = sinks.IsEmpty ? null : sinks.ToArray(),
        AlibiSlopes = alibiSlopes.IsEmpty ? null : alibiSlopes.ToArray(),
    };

    /// <summary>The diagonal offset of <paramref name="options"/>' alignment: <c>sk - sq</c> bottom-right, 0 top-left.</summary>
    private static long DiagonalOffset(AttentionOptions options, int seqLenQ, int seqLenK) =>
        options.CausalAlignment == CausalAlignment.TopLeft ? 0 : (long)seqLenK - seqLenQ;
}
