namespace FlashAttn;

/// <summary>
/// The tensors of a forward call (<see cref="FlashAttention.Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>
/// and <see cref="FlashAttention.Check(in AttentionArguments, out string, AttentionOptions, int)"/>): fixed-length when
/// <see cref="Batch"/> is null, variable-length (packed) when it is given.
/// </summary>
/// <param name="Q">
/// Queries: <c>[batch, seqLenQ, headsQ, headDim]</c>, or <c>[totalQ, headsQ, headDim]</c> with a <see cref="Batch"/>;
/// Float16, BFloat16 or Float8E4M3, last dimension contiguous, headDim a multiple of 8 (of 16 for Float8E4M3).
/// </param>
/// <param name="K">
/// Keys: <c>[batch, seqLenK, headsKv, headDim]</c> or <c>[totalK, headsKv, headDim]</c>, or, with a paged
/// <see cref="Batch"/> (<see cref="VarlenBatch.BlockTable"/> set), a pool of blocks <c>[numBlocks, blockSize, headsKv, headDim]</c>
/// (see <see cref="VarlenBatch.WithBlockTable"/>); q's dtype; headsKv divides headsQ.
/// </param>
/// <param name="V">
/// Values, q's dtype: k's shape, or k's shape with a head dim of its own last (<c>[batch, seqLenK, headsKv, headDimV]</c>;
/// C ABI 0.10 serves (headDim, headDimV) = (192, 128) and (64, 512) in Float16 and BFloat16, see
/// <see cref="FlashAttention.Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>); with a paged
/// <see cref="Batch"/>, a pool <c>[numBlocks, blockSize, headsKv, headDimV]</c> with k's blocks.
/// </param>
/// <param name="Output">
/// Written: q's shape with v's head dim last (q's shape when v's head dim is q's); q's dtype, or BFloat16 when q is
/// Float8E4M3 (the fp8 forward writes bf16). Must not overlap the inputs.
/// </param>
/// <param name="LogSumExp">
/// Optional, written: Float32 <c>[batch, headsQ, seqLenQ]</c>, or <c>[headsQ, totalQ]</c> with a <see cref="Batch"/>.
/// </param>
/// <param name="Batch">
/// The sequence boundaries of a variable-length batch, or null for a fixed-length call; with a block table
/// (<see cref="VarlenBatch.WithBlockTable"/>, C ABI 0.11) the keys and values are paged (forward only: the backward has no
/// paged K/V). A block table without a variable-length batch cannot be expressed.
/// </param>
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
/// <para>
/// fp8 (FlashAttention-3's fp8 forward, FEATURES.md §6): q, k and v all <see cref="DataType.Float8E4M3"/>, the output
/// <see cref="DataType.BFloat16"/>, and optionally the descale factors <see cref="QDescale"/>, <see cref="KDescale"/>
/// and <see cref="VDescale"/> set with an object initializer or <c>with</c>:
/// <c>new AttentionArguments(q8, k8, v8, outBf16) { QDescale = qd, KDescale = kd, VDescale = vd }</c>. Served by the
/// sm90 forward (compute capability 9.0, a build with sm_90a code); <see cref="KernelPath.Sm80"/>, the backward pass
/// and decode refuse it (<see cref="FlashAttentionStatus.Unsupported"/>).
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

    /// <summary>
    /// fp8 only: q's descale factors, or null for 1. Float32, rank 2 <c>[batch, headsKv]</c> (<c>[sequences, headsKv]</c>
    /// with a <see cref="Batch"/>), strides in elements, 0 broadcasts (a <c>[batch, headsKv]</c> view with strides
    /// <c>[0, 0]</c> of one value is a per-tensor factor). Per KV head even for q, as FlashAttention-3's
    /// <c>q_descale</c>: query head h of batch b is <c>Q * QDescale[b, h / (headsQ / headsKv)]</c>.
    /// </summary>
    public DeviceTensor? QDescale { get; init; }

    /// <summary>fp8 only: k's descale factors, or null for 1: key head hk of batch b is <c>K * KDescale[b, hk]</c>. As <see cref="QDescale"/>.</summary>
    public DeviceTensor? KDescale { get; init; }

    /// <summary>fp8 only: v's descale factors, or null for 1: value head hk of batch b is <c>V * VDescale[b, hk]</c>. As <see cref="QDescale"/>.</summary>
    public DeviceTensor? VDescale { get; init; }

    /// <summary>
    /// Optional learnable attention sinks (FlashAttention-4's <c>learnable_sink</c>, gpt-oss's <c>sinks</c>, ONNX
    /// Runtime's <c>head_sink</c>): Float32, rank 1 <c>[headsQ]</c>, one logit per query head (any positive stride). The
    /// sink <c>σ_h</c> joins each row's softmax denominator only, with no value row:
    /// <c>O_i = Σ_j e^{x_ij} v_j / (e^{σ_h} + Σ_j e^{x_ij})</c> and <c>LSE_i = log(e^{σ_h} + Σ_j e^{x_ij})</c>, where
    /// <c>x_ij</c> is the final logit (scaled, soft-capped, masked). <c>σ</c> is in those final-logit units (not
    /// multiplied by the scale, not capped) and present whatever the mask or window; a row that sees no key gets output
    /// 0 and log-sum-exp <c>σ_h</c>. Null: no sinks. The backward pass takes the same tensor
    /// (<see cref="BackwardArguments.Sinks"/>) and can write its gradient (<see cref="BackwardArguments.DSinks"/>).
    /// Served by every forward path and dtype (C ABI 0.7).
    /// </summary>
    public DeviceTensor? Sinks { get; init; }

    /// <summary>
    /// Optional ALiBi slopes (FlashAttention-2's <c>alibi_slopes</c>): Float32, rank 1 <c>[headsQ]</c> (one slope per
    /// query head) or rank 2 <c>[batch, headsQ]</c> (per sequence; a variable-length batch's sequence count). The bias
    /// added to each final logit (after the scale and softcap: not scaled, not capped; before the masks) is
    /// <c>-slope · |i + sk - sq - j|</c>, or FlashAttention-2's causal form <c>+slope · j</c> for a causal call without a
    /// left window (the same output; the log-sum-exp larger by <c>slope · (i + sk - sq)</c>). With
    /// <see cref="CausalAlignment.TopLeft"/> the offset <c>sk - sq</c> is 0. Null: no ALiBi. The backward pass takes the
    /// same slopes (<see cref="BackwardArguments.AlibiSlopes"/>); they get no gradient. Served by every path and dtype
    /// (C ABI 0.8).
    /// </summary>
    public DeviceTensor? AlibiSlopes { get; init; }

    /// <summary>
    /// Dropout (FlashAttention-2's <c>dropout_p</c>, C ABI 0.9): the probability p in [0, 1) of dropping each attention
    /// weight; 0 (default): none. The output is <c>(1 / (1 - p)) Σ_j Z_ij P_ij v_j</c> with P the softmax before dropout
    /// (the log-sum-exp is unchanged) and Z FlashAttention-2's keep mask under (<see cref="DropoutSeed"/>,
    /// <see cref="DropoutOffset"/>): Philox4x32 with 7 rounds, one byte per element, kept iff the byte is at most
    /// <c>floor(float(1 - p) · 255)</c> (so the keep rate is that plus one over 256). A call consumes
    /// <c>batch · headsQ · 32</c> offsets. Served by both paths (<see cref="KernelPath.Auto"/> takes the sm90 kernels on
    /// compute capability 9.0 in a build with sm_90a code and the sm80 ones elsewhere; the V head dim pairs run it on the
    /// sm80 kernels; <see cref="FlashAttention.CompiledKernels"/> lists the <c>_dropout</c> kernels).
    /// </summary>
    public float DropoutP { get; init; }

    /// <summary>The Philox key of the dropout mask (<see cref="DropoutP"/>).</summary>
    public ulong DropoutSeed { get; init; }

    /// <summary>The Philox base offset of the dropout mask (<see cref="DropoutP"/>).</summary>
    public ulong DropoutOffset { get; init; }

    /// <summary>
    /// Optional, written: the dropout keep mask, <see cref="DataType.UInt8"/> <c>[batch, headsQ, seqLenQ, seqLenK]</c>
    /// (<c>[sequences, headsQ, maxSeqLenQ, maxSeqLenK]</c> for a variable-length batch), last dimension contiguous: 1 where
    /// the call kept the weight, 0 where it dropped it, for every key a row sees (other entries unspecified). Only with
    /// <see cref="DropoutP"/> &gt; 0; for tests and debugging.
    /// </summary>
    public DeviceTensor? DropoutMask { get; init; }

    /// <summary>Whether any descale factor table is set.</summary>
    internal bool HasDescale => QDescale is not null || KDescale is not null || VDescale is not null;

    /// <summary>Throws <see cref="ArgumentNullException"/> for the first required tensor that is null.</summary>
    internal void ThrowIfIncomplete()
    {
        ArgumentNullException.ThrowIfNull(Q, "q");
        ArgumentNullException.ThrowIfNull(K, "k");
        ArgumentNullException.ThrowIfNull(V, "v");
        ArgumentNullException.ThrowIfNull(Output, "output");
    }
}
