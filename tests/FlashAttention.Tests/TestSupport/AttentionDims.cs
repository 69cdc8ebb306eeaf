namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Shape of one attention problem as the tests describe it, independent of the product's own shape type:
/// q is [Batch, SeqQ, HeadsQ, HeadDim], k [Batch, SeqK, HeadsKv, HeadDim], v [Batch, SeqK, HeadsKv, HeadDimV] and out
/// [Batch, SeqQ, HeadsQ, HeadDimV] (dense; <see cref="HeadDimV"/> is HeadDim unless set), the log-sum-exp is
/// [Batch, HeadsQ, SeqQ].
/// </summary>
public readonly record struct AttentionDims(int Batch, int SeqQ, int SeqK, int HeadsQ, int HeadsKv, int HeadDim)
{
    private readonly int _headDimV;

    /// <summary>Head dim of v and out (FlashAttention-3's separate V head dim): HeadDim unless set (0 also means HeadDim).</summary>
    public int HeadDimV
    {
        get => _headDimV == 0 ? HeadDim : _headDimV;
        init => _headDimV = value;
    }

    public int QElements => Batch * SeqQ * HeadsQ * HeadDim;

    public int KvElements => Batch * SeqK * HeadsKv * HeadDim;

    /// <summary>Elements of v: <see cref="KvElements"/> with <see cref="HeadDimV"/>.</summary>
    public int VElements => Batch * SeqK * HeadsKv * HeadDimV;

    /// <summary>Elements of the output: <see cref="QElements"/> with <see cref="HeadDimV"/>.</summary>
    public int OutElements => Batch * SeqQ * HeadsQ * HeadDimV;

    public int LseElements => Batch * HeadsQ * SeqQ;

    /// <summary>The default softmax scale: q's and k's head dim alone sets it (FEATURES.md §8).</summary>
    public double DefaultScale => 1.0 / Math.Sqrt(HeadDim);

    public override string ToString() =>
        $"B={Batch} Sq={SeqQ} Sk={SeqK} Hq={HeadsQ} Hkv={HeadsKv} D={HeadDim}" + (HeadDimV != HeadDim ? $" Dv={HeadDimV}" : string.Empty);
}

/// <summary>Causal masking as the tests spell it.</summary>
public enum Mask
{
    None,
    CausalBottomRight,
    CausalTopLeft,
}

/// <summary>Masking and score options in full (causal, alignment, sliding window, soft-cap), as the tests spell them.</summary>
public sealed record MaskSpec(bool Causal, bool TopLeft, int? Left = null, int? Right = null, float Softcap = 0f)
{
    public static MaskSpec From(Mask mask) => new(mask != Mask.None, mask == Mask.CausalTopLeft);

    public bool Visible(int i, int j, int seqQ, int seqK) =>
        NaiveAttention.Visible(i, j, seqQ, seqK, Causal, TopLeft, Left, Right);

    public AttentionOptions ToOptions(float? scale = null) => new()
    {
        Causal = Causal,
        CausalAlignment = TopLeft ? CausalAlignment.TopLeft : CausalAlignment.BottomRight,
        WindowLeft = Left,
        WindowRight = Right,
        Softcap = Softcap > 0 ? Softcap : null,
        SoftmaxScale = scale,
    };

    public override string ToString() =>
        $"{(Causal ? "causal" : "full")} {(TopLeft ? "top-left" : "bottom-right")}" +
        (Left is not null || Right is not null ? $" window ({Left?.ToString() ?? "-"}, {Right?.ToString() ?? "-"})" : string.Empty) +
        (Softcap > 0 ? $" softcap {Softcap}" : string.Empty);
}
