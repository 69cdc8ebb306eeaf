namespace FlashAttn;

/// <summary>
/// Rotary embedding applied inside a decode call that appends (flash-attn's <c>rotary_cos</c>, <c>rotary_sin</c> and
/// <c>rotary_interleaved</c> of <c>flash_attn_with_kvcache</c>; C ABI 0.8): each new key is rotated at its cache position
/// before it is stored, and the queries at theirs, so the cache holds rotated keys. Set it on
/// <see cref="DecodeArguments.Rotary"/>.
/// </summary>
/// <param name="Cos">
/// cos table <c>[seqlenRo, rotaryDim / 2]</c>, q's dtype (the cache's, or Float16 / BFloat16 over a Float8E4M3
/// cache), contiguous, on the cache's device. <c>rotaryDim</c>
/// (= 2 x <c>Cos.Shape[1]</c>) is a multiple of 16 and at most the head dim; the first rotaryDim elements of each head
/// are rotated, the rest pass through. <c>seqlenRo</c> is at least the cache capacity (and, when the call is causal or
/// windowed with more queries than appended keys, at least every query's position).
/// </param>
/// <param name="Sin">sin table shaped like <paramref name="Cos"/>.</param>
/// <param name="Interleaved">
/// True (flash-attn's default for the kvcache call, GPT-J): pairs <c>(2t, 2t + 1)</c>. False (GPT-NeoX, Llama):
/// pairs <c>(t, t + rotaryDim / 2)</c>.
/// </param>
/// <remarks>
/// Positions (shared/FEATURES.md §4): with <c>P0</c> the sequence's cached length (absolute: a left pad counts), new key
/// <c>j</c> at <c>P0 + j</c>; query <c>i</c> at <c>P0 + i</c> when the call is causal or has a window, else every query at
/// <c>P0</c>. The math is fp32, rounded to q's dtype (over a Float8E4M3 cache the rotated key is then quantized as
/// every appended key is). Only allowed in a call that appends (refused otherwise, as
/// flash-attn raises).
/// </remarks>
public sealed record RotaryEmbedding(DeviceTensor Cos, DeviceTensor Sin, bool Interleaved = true)
{
    /// <summary>The rotated elements per head: twice the tables' second extent.</summary>
    public int RotaryDim => Cos is { Rank: 2 } ? (int)Math.Min(int.MaxValue, 2 * Cos.Shape[1]) : 0;

    /// <summary>The positions the tables cover (their first extent).</summary>
    public int Positions => Cos is { Rank: 2 } ? (int)Math.Min(int.MaxValue, Cos.Shape[0]) : 0;

    /// <summary>What is wrong with the tables on their own (shape, dtype, layout), or null.</summary>
    internal string? Problem(DataType inputType, long headDim)
    {
        if (Cos is null || Sin is null)
        {
            return "Rotary needs both tables: Cos (rotary_cos) and Sin (rotary_sin).";
        }

        if (Cos.Rank != 2 || Sin.Rank != 2 || !Cos.HasShapeOf(Sin))
        {
            return $"Rotary.Cos and Rotary.Sin must both be [seqlenRo, rotaryDim / 2]; they are {Cos} and {Sin}.";
        }

        if (Cos.DataType != inputType || Sin.DataType != inputType)
        {
            return $"Rotary.Cos and Rotary.Sin must have q's dtype {inputType} (the cache's, or q's over a Float8E4M3 cache); they are {Cos.DataType} and {Sin.DataType}.";
        }

        if (!Cos.IsContiguous || !Sin.IsContiguous)
        {
            return "Rotary.Cos and Rotary.Sin must be contiguous (rows of rotaryDim / 2 elements).";
        }

        long rotaryDim = 2 * Cos.Shape[1];
        if (rotaryDim <= 0 || rotaryDim % 16 != 0 || rotaryDim > headDim)
        {
            return $"Rotary tables of {Cos.Shape[1]} columns give rotaryDim {rotaryDim}; it must be a positive multiple of 16 and at most the head dim {headDim}.";
        }

        if (Cos.Shape[0] > int.MaxValue)
        {
            return $"Rotary tables of {Cos.Shape[0]} positions are more than int32 can count.";
        }

        return null;
    }
}
