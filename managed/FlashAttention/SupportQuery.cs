namespace FlashAttn;

/// <summary>
/// A question for <see cref="FlashAttention.QuerySupport(SupportQuery)"/>: does this build of the native library
/// serve this kind of call (on this GPU architecture)? Describes the call, not its tensors.
/// </summary>
/// <param name="Pass">The computation.</param>
/// <param name="DataType">
/// The element type of q, k and v: <see cref="FlashAttn.DataType.Float16"/> and <see cref="FlashAttn.DataType.BFloat16"/>
/// are served by every pass; <see cref="FlashAttn.DataType.Float8E4M3"/> by the forward pass on the sm90 path only (compute
/// capability 9.0 or 0, <see cref="KernelPath.Auto"/> or <see cref="KernelPath.Sm90"/>, head dims that are multiples of
/// 16, a build with the sm90 fp8 kernels).
/// </param>
/// <param name="HeadDim">The head dimension of q and k (1 or more); that of v and the output is <see cref="HeadDimV"/>.</param>
/// <param name="Causal">Whether the call is causal.</param>
/// <param name="Window">Whether the call has a sliding window (<see cref="AttentionOptions.HasWindow"/>).</param>
/// <param name="Softcap">Whether the call uses soft-capping (<see cref="AttentionOptions.Softcap"/> set).</param>
/// <param name="Varlen">Whether the batch is variable-length (<see cref="FlashAttention.ForwardVarlen"/>).</param>
/// <param name="ComputeCapability">Target GPU as <c>major * 10 + minor</c> (e.g. 90), or 0 for any GPU this build serves.</param>
/// <param name="KernelPath">The kernel family the call may use.</param>
/// <param name="Sinks">
/// Whether the call has learnable sinks (<see cref="AttentionArguments.Sinks"/>; for the backward pass also their gradient
/// <see cref="BackwardArguments.DSinks"/>): served by the forward and backward passes on every path; decode has none.
/// </param>
/// <param name="Alibi">
/// Whether the call has ALiBi slopes (<see cref="AttentionArguments.AlibiSlopes"/>, <see cref="BackwardArguments.AlibiSlopes"/>,
/// <see cref="DecodeArguments.AlibiSlopes"/>): served by every pass on every path and dtype (C ABI 0.8).
/// </param>
public sealed record SupportQuery(
    AttentionPass Pass,
    DataType DataType,
    int HeadDim,
    bool Causal = false,
    bool Window = false,
    bool Softcap = false,
    bool Varlen = false,
    int ComputeCapability = 0,
    KernelPath KernelPath = KernelPath.Auto,
    bool Sinks = false,
    bool Alibi = false)
{
    /// <summary>
    /// Whether the call has dropout (<see cref="AttentionArguments.DropoutP"/> or the backward's &gt; 0; C ABI 0.9): served
    /// by the forward and backward passes of both paths in Float16 and BFloat16 (the sm90 path on compute capability 9.0
    /// in a build with sm_90a code, which <see cref="KernelPath.Auto"/> takes there; the V head dim pairs on sm80 only);
    /// Float8E4M3, decode and a pair on <see cref="KernelPath.Sm90"/> are refused with the native library's reason.
    /// Set it with an object initializer or <c>with</c> (<c>query with { Dropout = true }</c>).
    /// </summary>
    public bool Dropout { get; init; }

    /// <summary>
    /// The head dim of v and the output when it differs from <see cref="HeadDim"/>; 0 (default) or <see cref="HeadDim"/>:
    /// the same. Set it with an object initializer or <c>with</c>:
    /// <c>SupportQuery.For(AttentionPass.Forward, DataType.BFloat16, 192, options) with { HeadDimV = 128 }</c>. The pairs
    /// (HeadDim, HeadDimV) = (192, 128) and (64, 512) are served by the forward pass on the sm80 path (Float16 and
    /// BFloat16, every forward option, C ABI 0.10), and (192, 128) by the backward pass too, as FlashAttention-3's. The
    /// sm90 forward serves both pairs and the sm90 backward (192, 128) on compute capability 9.0 in a build with sm_90a
    /// code, every option but dropout; <see cref="KernelPath.Auto"/> takes them there and sm80 elsewhere. (64, 512)'s
    /// backward, decode, Float8E4M3, every other pair and <see cref="KernelPath.Sm90"/> where it does not serve are
    /// refused with the native library's reason.
    /// </summary>
    public int HeadDimV { get; init; }

    /// <summary>
    /// Whether the keys and values are paged (C ABI 0.11): the forward's block table (<see cref="VarlenBatch.WithBlockTable"/>,
    /// which needs a variable-length batch, so <see cref="Varlen"/> must be true too: a forward query with PagedKv and
    /// without Varlen is malformed and throws <see cref="ArgumentException"/>), or a paged <see cref="KvCache"/> for
    /// decode. Served by the forward pass of both paths in Float16 and BFloat16 without dropout, and by decode; the backward
    /// pass (it has no paged K/V), Float8E4M3 and <see cref="Dropout"/> are refused with the native library's reason. Set
    /// it with an object initializer or
    /// <c>with</c> (<c>query with { PagedKv = true }</c>).
    /// </summary>
    public bool PagedKv { get; init; }

    /// <summary>
    /// The element type of the KV cache of a decode when it differs from <see cref="DataType"/> (C ABI 0.13):
    /// <see cref="FlashAttn.DataType.Float8E4M3"/> asks about an fp8 <see cref="KvCache"/> under Float16 or BFloat16 queries,
    /// served by every decode kernel. Null (the default), or <see cref="DataType"/> itself: the cache has q's dtype. Other
    /// passes have none (the native library refuses one with its reason). Set it with an object initializer or <c>with</c>:
    /// <c>new SupportQuery(AttentionPass.Decode, DataType.BFloat16, 128) { KvCacheDataType = DataType.Float8E4M3 }</c>.
    /// </summary>
    public DataType? KvCacheDataType { get; init; }

    /// <summary>
    /// The query that describes a call with these options (one head dim for q, k and v; add a V head dim of its own with
    /// <c>with { HeadDimV = ... }</c>).
    /// </summary>
    /// <param name="pass">The computation.</param>
    /// <param name="dataType">The element type of q, k and v.</param>
    /// <param name="headDim">The head dimension.</param>
    /// <param name="options">The call's options (causal, window, softcap and kernel path are taken from it).</param>
    /// <param name="varlen">Whether the batch is variable-length.</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c>, or 0 for any GPU this build serves.</param>
    /// <returns>The query.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static SupportQuery For(
        AttentionPass pass, DataType dataType, int headDim, AttentionOptions options, bool varlen = false, int computeCapability = 0)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new SupportQuery(
            pass, dataType, headDim, options.Causal, options.HasWindow, options.Softcap is not null, varlen, computeCapability, options.KernelPath);
    }
}

/// <summary>The answer of <see cref="FlashAttention.QuerySupport(SupportQuery)"/>.</summary>
/// <param name="IsSupported">Whether this build serves the call.</param>
/// <param name="Reason">"" when supported; otherwise the native library's sentence saying why not.</param>
public sealed record SupportResult(bool IsSupported, string Reason);
