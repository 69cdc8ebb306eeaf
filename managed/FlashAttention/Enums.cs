namespace FlashAttn;

/// <summary>Element type of a tensor. The values match <c>fa_dtype_t</c> in <c>flash_attention.h</c>.</summary>
public enum DataType
{
    /// <summary>IEEE 754 binary16 (<see cref="System.Half"/>).</summary>
    Float16 = 1,

    /// <summary>bfloat16: 8-bit exponent, 7-bit mantissa (<see cref="FlashAttn.BFloat16"/>).</summary>
    BFloat16 = 2,

    /// <summary>IEEE 754 binary32 (<see cref="float"/>); the type of the log-sum-exp output.</summary>
    Float32 = 3,

    /// <summary>32-bit signed integer (<see cref="int"/>).</summary>
    Int32 = 4,

    /// <summary>
    /// 8-bit float, OCP FP8 E4M3 "FN" (<see cref="FlashAttn.Float8E4M3"/>, PyTorch's <c>torch.float8_e4m3fn</c>).
    /// An input type of the forward pass (q, k and v together, output <see cref="BFloat16"/>, optional fp32 descale
    /// factors: <see cref="AttentionArguments.QDescale"/>), served by the sm90 (Hopper) kernels, and the element type of
    /// an fp8 KV cache for decode (C ABI 0.13: <see cref="KvCache"/> with fp32 descale factors, under Float16 or
    /// BFloat16 queries, on every decode kernel). The backward pass and an fp8 query to decode are refused.
    /// </summary>
    Float8E4M3 = 5,

    /// <summary>
    /// 8-bit unsigned integer (<see cref="byte"/>): the dropout keep mask (<see cref="AttentionArguments.DropoutMask"/>,
    /// C ABI 0.9).
    /// </summary>
    UInt8 = 6,
}

/// <summary>Result of a native call. The values match <c>fa_status_t</c> in <c>flash_attention.h</c>.</summary>
public enum FlashAttentionStatus
{
    /// <summary>The call succeeded.</summary>
    Success = 0,

    /// <summary>An argument is null, out of range or inconsistent with another; nothing was launched.</summary>
    InvalidArgument = 1,

    /// <summary>The arguments are valid but this build or this GPU does not serve them (head dim, dtype, architecture).</summary>
    Unsupported = 2,

    /// <summary>
    /// No CUDA device, no driver, a driver older than the library needs, or (raised by the managed side) a native
    /// library that could not be loaded. In every case GPU attention cannot run in this process.
    /// </summary>
    NoDevice = 3,

    /// <summary>A device or host allocation failed.</summary>
    OutOfMemory = 4,

    /// <summary>A CUDA call failed; the message carries CUDA's own error name and text.</summary>
    CudaError = 5,

    /// <summary>A bug in the library: an exception or state it did not expect.</summary>
    Internal = 6,

    /// <summary>
    /// A check only the GPU can make failed during an earlier call on this instance (the message names the call and
    /// the cause, e.g. a deterministic backward that gave up waiting for its turn because two calls in flight shared
    /// one workspace); that call's outputs are not valid. Reported once: by
    /// <see cref="FlashAttention.CheckDeviceErrors"/> or, failing that, by the next forward, backward or decode call,
    /// which then launches nothing. The CUDA context is intact.
    /// </summary>
    DeviceCheckFailed = 7,
}

/// <summary>Where the causal diagonal sits when the query and key sequence lengths differ.</summary>
public enum CausalAlignment
{
    /// <summary>
    /// Query <c>i</c> sees keys <c>j &lt;= i + (seqLenK - seqLenQ)</c>: the last query sees every key
    /// (FlashAttention 2.1 and later; the default).
    /// </summary>
    BottomRight = 0,

    /// <summary>Query <c>i</c> sees keys <c>j &lt;= i</c> (PyTorch's <c>is_causal</c>).</summary>
    TopLeft = 1,
}

/// <summary>Kernel family an attention call may use.</summary>
public enum KernelPath
{
    /// <summary>The fastest path this build has for the device.</summary>
    Auto = 0,

    /// <summary>The portable mma.sync path, which runs on every GPU from sm_80 on.</summary>
    Sm80 = 1,

    /// <summary>
    /// Hopper's path (wgmma, and TMA with warp specialisation in the forward; a build with sm_90a code, on compute
    /// capability 9.0). It serves the forward and backward passes at every head dim (kernels at 64, 128, 192 and 256; a
    /// head dim between them runs the next one up with zero-filled columns); elsewhere, and for decode, asking for it is
    /// <see cref="FlashAttentionStatus.Unsupported"/>.
    /// <see cref="Auto"/> picks it where it serves. The fp8 (<see cref="DataType.Float8E4M3"/>) forward runs on this path
    /// only: <see cref="Auto"/> takes it, <see cref="Sm80"/> refuses it, and where it does not serve no path does.
    /// </summary>
    Sm90 = 2,
}

/// <summary>Which computation a capability query asks about. The values match <c>fa_pass_t</c> in <c>flash_attention.h</c>.</summary>
public enum AttentionPass
{
    /// <summary>The forward pass (<see cref="FlashAttention.Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>, <see cref="FlashAttention.ForwardVarlen"/>).</summary>
    Forward = 0,

    /// <summary>The backward pass (dQ, dK, dV).</summary>
    Backward = 1,

    /// <summary>Decoding over a KV cache.</summary>
    Decode = 2,
}

/// <summary>
/// How the descale factors of an fp8 (<see cref="DataType.Float8E4M3"/>) KV cache are shared (C ABI 0.13's
/// <c>k_descale</c> / <c>v_descale</c>): the key attended at a cache position of KV head <c>h</c> is the stored e4m3 value
/// times the key factor of <c>h</c>, and likewise for values.
/// </summary>
public enum DescaleGranularity
{
    /// <summary>One factor per KV head: Float32 <c>[headsKv]</c> for the keys and as many for the values.</summary>
    PerKvHead = 0,

    /// <summary>One factor for the whole cache: Float32 <c>[1]</c> for the keys and one for the values.</summary>
    PerTensor = 1,
}
