namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Shape of one attention problem as the tests describe it, independent of the product's own shape type:
/// q and out are [Batch, SeqQ, HeadsQ, HeadDim], k and v are [Batch, SeqK, HeadsKv, HeadDim] (dense),
/// the log-sum-exp is [Batch, HeadsQ, SeqQ].
/// </summary>
public readonly record struct AttentionDims(int Batch, int SeqQ, int SeqK, int HeadsQ, int HeadsKv, int HeadDim)
{
    public int QElements => Batch * SeqQ * HeadsQ * HeadDim;

    public int KvElements => Batch * SeqK * HeadsKv * HeadDim;

    public int LseElements => Batch * HeadsQ * SeqQ;

    public double DefaultScale => 1.0 / Math.Sqrt(HeadDim);

    public override string ToString() =>
        $"B={Batch} Sq={SeqQ} Sk={SeqK} Hq={HeadsQ} Hkv={HeadsKv} D={HeadDim}";
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
