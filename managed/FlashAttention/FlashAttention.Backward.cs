using FlashAttn.Internal;
using FlashAttn.Native;
using Microsoft.Extensions.Logging;

namespace FlashAttn;

/// <content>
/// The backward pass: gradients of q, k and v from the gradient of the output, for fixed-length and variable-length
/// batches, with their argument checks and the workspace-size query.
/// </content>
/// <remarks>
/// Shapes and strides follow <see cref="Forward"/> and <see cref="ForwardVarlen"/>: <c>dOut</c> and <c>dq</c> are shaped
/// like q, <c>dk</c> and <c>dv</c> like k, all of q's dtype; the log-sum-exp the forward wrote is required. The options
/// (scale, causal mask and alignment, window, softcap) must be the forward call's; <see cref="AttentionOptions.Deterministic"/>
/// chooses reproducible dq accumulation.
/// </remarks>
public sealed partial class FlashAttention
{
    /// <summary>
    /// Validates the arguments of <see cref="Backward"/> without touching a GPU (works on a machine without one, but
    /// needs the native library). Tensor memory is not read; only pointers, shapes, strides and dtypes count.
    /// </summary>
    /// <param name="q">Queries of the forward call <c>[batch, seqLenQ, headsQ, headDim]</c>, Float16 or BFloat16.</param>
    /// <param name="k">Keys of the forward call <c>[batch, seqLenK, headsKv, headDim]</c>, q's dtype.</param>
    /// <param name="v">Values of the forward call, k's shape and q's dtype.</param>
    /// <param name="output">Output of the forward call, q's shape and dtype.</param>
    /// <param name="dOut">Gradient of the loss with respect to <paramref name="output"/>, q's shape and dtype.</param>
    /// <param name="logSumExp">Log-sum-exp the forward call wrote, <c>[batch, headsQ, seqLenQ]</c> Float32.</param>
    /// <param name="dq">Gradient of q (written), q's shape and dtype.</param>
    /// <param name="dk">Gradient of k (written), k's shape and q's dtype.</param>
    /// <param name="dv">Gradient of v (written), k's shape and q's dtype.</param>
    /// <param name="message">"" on success; otherwise why the call would be refused.</param>
    /// <param name="options">The forward call's options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c> (e.g. 90), or 0 for any GPU this build serves.</param>
    /// <returns>
    /// <see cref="FlashAttentionStatus.Success"/> when <see cref="Backward"/> would accept the arguments;
    /// <see cref="FlashAttentionStatus.InvalidArgument"/> or <see cref="FlashAttentionStatus.Unsupported"/> otherwise.
    /// Managed-side checks report <see cref="FlashAttentionStatus.InvalidArgument"/> here instead of throwing. Whether a
    /// caller workspace is large enough depends on the device and is not checked here.
    /// </returns>
    /// <exception cref="ArgumentNullException">A tensor is null.</exception>
    /// <exception cref="FlashAttentionException">The native library cannot be loaded (status <see cref="FlashAttentionStatus.NoDevice"/>).</exception>
    public static FlashAttentionStatus CheckBackward(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        DeviceTensor dOut,
        DeviceTensor logSumExp,
        DeviceTensor dq,
        DeviceTensor dk,
        DeviceTensor dv,
        out string message,
        AttentionOptions? options = null,
        int computeCapability = 0)
    {
        var args = BackwardArgs.Create(q, k, v, output, dOut, logSumExp, dq, dk, dv);
        return CheckBackwardCore(args, batch: null, options, computeCapability, out message);
    }

    /// <summary>
    /// Validates the arguments of <see cref="BackwardVarlen"/> without touching a GPU (as <see cref="CheckBackward"/>;
    /// the batch's host copies, when it has them, are checked).
    /// </summary>
    /// <param name="q">Packed queries of the forward call <c>[totalQ, headsQ, headDim]</c>, Float16 or BFloat16.</param>
    /// <param name="k">Packed keys of the forward call <c>[totalK, headsKv, headDim]</c>, q's dtype.</param>
    /// <param name="v">Packed values of the forward call, k's shape and q's dtype.</param>
    /// <param name="output">Output of the forward call, q's shape and dtype.</param>
    /// <param name="dOut">Gradient of the loss with respect to <paramref name="output"/>, q's shape and dtype.</param>
    /// <param name="logSumExp">Log-sum-exp the forward call wrote, <c>[headsQ, totalQ]</c> Float32.</param>
    /// <param name="dq">Gradient of q (written), q's shape and dtype.</param>
    /// <param name="dk">Gradient of k (written), k's shape and q's dtype.</param>
    /// <param name="dv">Gradient of v (written), k's shape and q's dtype.</param>
    /// <param name="batch">The sequence boundaries of the forward call.</param>
    /// <param name="message">"" on success; otherwise why the call would be refused.</param>
    /// <param name="options">The forward call's options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c>, or 0 for any GPU this build serves.</param>
    /// <returns>As <see cref="CheckBackward"/>.</returns>
    /// <exception cref="ArgumentNullException">A tensor or the batch is null.</exception>
    /// <exception cref="ObjectDisposedException">The batch was disposed.</exception>
    /// <exception cref="FlashAttentionException">The native library cannot be loaded (status <see cref="FlashAttentionStatus.NoDevice"/>).</exception>
    public static FlashAttentionStatus CheckBackwardVarlen(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        DeviceTensor dOut,
        DeviceTensor logSumExp,
        DeviceTensor dq,
        DeviceTensor dk,
        DeviceTensor dv,
        VarlenBatch batch,
        out string message,
        AttentionOptions? options = null,
        int computeCapability = 0)
    {
        var args = BackwardArgs.Create(q, k, v, output, dOut, logSumExp, dq, dk, dv);
        ArgumentNullException.ThrowIfNull(batch);
        return CheckBackwardCore(args, batch, options, computeCapability, out message);
    }

    /// <summary>
    /// Bytes of device workspace <see cref="Backward"/> needs for these arguments on this instance's device (an fp32
    /// dq accumulator, per-row sums and, in deterministic mode, one int32 counter per batch, head and query block). Pass a buffer at least this large to
    /// <see cref="Backward"/> to keep the call free of allocations (for CUDA graph capture or a caller-managed pool).
    /// </summary>
    /// <param name="q">As in <see cref="Backward"/>.</param>
    /// <param name="k">As in <see cref="Backward"/>.</param>
    /// <param name="v">As in <see cref="Backward"/>.</param>
    /// <param name="output">As in <see cref="Backward"/>.</param>
    /// <param name="dOut">As in <see cref="Backward"/>.</param>
    /// <param name="logSumExp">As in <see cref="Backward"/>.</param>
    /// <param name="dq">As in <see cref="Backward"/>.</param>
    /// <param name="dk">As in <see cref="Backward"/>.</param>
    /// <param name="dv">As in <see cref="Backward"/>.</param>
    /// <param name="options">The options the call will use (<see cref="AttentionOptions.Deterministic"/> counts), or null for the defaults.</param>
    /// <returns>The size in bytes (0 when the call needs none).</returns>
    /// <exception cref="ArgumentNullException">A tensor is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused the arguments.</exception>
    /// <exception cref="ObjectDisposedException">This instance or a tensor's buffer was disposed.</exception>
    public long GetBackwardWorkspaceSize(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        DeviceTensor dOut,
        DeviceTensor logSumExp,
        DeviceTensor dq,
        DeviceTensor dk,
        DeviceTensor dv,
        AttentionOptions? options = null)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        var args = BackwardArgs.Create(q, k, v, output, dOut, logSumExp, dq, dk, dv);
        return WorkspaceSizeCore(args, batch: null, options);
    }

    /// <summary>
    /// Bytes of device workspace <see cref="BackwardVarlen"/> needs for these arguments on this instance's device; see
    /// <see cref="GetBackwardWorkspaceSize"/>.
    /// </summary>
    /// <param name="q">As in <see cref="BackwardVarlen"/>.</param>
    /// <param name="k">As in <see cref="BackwardVarlen"/>.</param>
    /// <param name="v">As in <see cref="BackwardVarlen"/>.</param>
    /// <param name="output">As in <see cref="BackwardVarlen"/>.</param>
    /// <param name="dOut">As in <see cref="BackwardVarlen"/>.</param>
    /// <param name="logSumExp">As in <see cref="BackwardVarlen"/>.</param>
    /// <param name="dq">As in <see cref="BackwardVarlen"/>.</param>
    /// <param name="dk">As in <see cref="BackwardVarlen"/>.</param>
    /// <param name="dv">As in <see cref="BackwardVarlen"/>.</param>
    /// <param name="batch">The sequence boundaries.</param>
    /// <param name="options">The options the call will use, or null for the defaults.</param>
    /// <returns>The size in bytes (0 when the call needs none).</returns>
    /// <exception cref="ArgumentNullException">A tensor or the batch is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused the arguments.</exception>
    /// <exception cref="ObjectDisposedException">This instance, the batch or a tensor's buffer was disposed.</exception>
    public long GetBackwardWorkspaceSizeVarlen(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        DeviceTensor dOut,
        DeviceTensor logSumExp,
        DeviceTensor dq,
        DeviceTensor dk,
        DeviceTensor dv,
        VarlenBatch batch,
        AttentionOptions? options = null)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        var args = BackwardArgs.Create(q, k, v, output, dOut, logSumExp, dq, dk, dv);
        ArgumentNullException.ThrowIfNull(batch);
        return WorkspaceSizeCore(args, batch, options);
    }

    /// <summary>
    /// Gradients of attention: given the inputs, output and log-sum-exp of a <see cref="Forward"/> call and the gradient
    /// of the loss with respect to its output, writes the gradients of q, k and v. The attention weights are recomputed
    /// from the log-sum-exp; nothing of size seqLenQ x seqLenK is stored. Queued on <paramref name="stream"/>; returns
    /// without waiting.
    /// </summary>
    /// <param name="q">Queries of the forward call <c>[batch, seqLenQ, headsQ, headDim]</c>, Float16 or BFloat16, last dimension contiguous.</param>
    /// <param name="k">Keys of the forward call <c>[batch, seqLenK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ.</param>
    /// <param name="v">Values of the forward call, k's shape and q's dtype.</param>
    /// <param name="output">Output of the forward call, q's shape and dtype.</param>
    /// <param name="dOut">Gradient of the loss with respect to <paramref name="output"/>, q's shape and dtype.</param>
    /// <param name="logSumExp">
    /// Log-sum-exp the forward call wrote (<c>logSumExp</c> of <see cref="Forward"/>), <c>[batch, headsQ, seqLenQ]</c> Float32.
    /// </param>
    /// <param name="dq">Written: the gradient of q, q's shape and dtype. Rows that see no key get 0.</param>
    /// <param name="dk">
    /// Written: the gradient of k, k's shape and q's dtype; under GQA/MQA each kv head gets the sum over the query heads
    /// that read it. Keys no query sees get 0.
    /// </param>
    /// <param name="dv">Written: the gradient of v, as <paramref name="dk"/>.</param>
    /// <param name="options">
    /// The forward call's options (scale, mask, alignment, window, softcap), or null for <see cref="AttentionOptions.Default"/>;
    /// <see cref="AttentionOptions.Deterministic"/> makes the result bitwise reproducible.
    /// </param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <param name="workspace">
    /// Scratch memory of at least <see cref="GetBackwardWorkspaceSize"/> bytes on this device, used only while the call
    /// runs on <paramref name="stream"/> (reuse it for the next call on the same stream). Null or empty: the library
    /// allocates and frees it stream-ordered on each call.
    /// </param>
    /// <remarks>
    /// The gradients must not overlap the inputs or each other. With a caller workspace the call neither allocates nor
    /// synchronises, so it may be captured into a <see cref="CudaGraph"/>; a workspace smaller than needed is refused
    /// (<see cref="FlashAttentionException"/> with <see cref="FlashAttentionStatus.InvalidArgument"/>) before anything runs.
    /// </remarks>
    /// <exception cref="ArgumentNullException">A tensor is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused or failed the call.</exception>
    /// <exception cref="ObjectDisposedException">This instance, a tensor's buffer, the workspace or the stream was disposed.</exception>
    public void Backward(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        DeviceTensor dOut,
        DeviceTensor logSumExp,
        DeviceTensor dq,
        DeviceTensor dk,
        DeviceTensor dv,
        AttentionOptions? options = null,
        CudaStream? stream = null,
        DeviceBuffer<byte>? workspace = null)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        var args = BackwardArgs.Create(q, k, v, output, dOut, logSumExp, dq, dk, dv);
        BackwardCore(args, batch: null, options, stream, workspace);
    }

    /// <summary>
    /// Gradients of attention over a variable-length batch (the packed layout of <see cref="ForwardVarlen"/>); see
    /// <see cref="Backward"/>. Queued on <paramref name="stream"/>; returns without waiting.
    /// </summary>
    /// <param name="q">Packed queries of the forward call <c>[totalQ, headsQ, headDim]</c>, Float16 or BFloat16.</param>
    /// <param name="k">Packed keys of the forward call <c>[totalK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ.</param>
    /// <param name="v">Packed values of the forward call, k's shape and q's dtype.</param>
    /// <param name="output">Output of the forward call, q's shape and dtype.</param>
    /// <param name="dOut">Gradient of the loss with respect to <paramref name="output"/>, q's shape and dtype.</param>
    /// <param name="logSumExp">Log-sum-exp the forward call wrote, <c>[headsQ, totalQ]</c> Float32.</param>
    /// <param name="dq">Written: the gradient of q, q's shape and dtype; rows that see no key get 0.</param>
    /// <param name="dk">Written: the gradient of k (summed over each group's query heads), k's shape and q's dtype.</param>
    /// <param name="dv">Written: the gradient of v, as <paramref name="dk"/>.</param>
    /// <param name="batch">The sequence boundaries of the forward call; keep it undisposed until the work is done.</param>
    /// <param name="options">The forward call's options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <param name="workspace">
    /// Scratch memory of at least <see cref="GetBackwardWorkspaceSizeVarlen"/> bytes, or null for a library allocation;
    /// see <see cref="Backward"/>.
    /// </param>
    /// <remarks>
    /// Gradients of an empty sequence's rows are 0 (a sequence with queries but no keys gets dq 0; keys no query sees get
    /// dk and dv 0). Rows of dq past the batch's last query row, and of dk and dv past its last key row, are not written.
    /// </remarks>
    /// <exception cref="ArgumentNullException">A tensor or the batch is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused or failed the call.</exception>
    /// <exception cref="ObjectDisposedException">This instance, the batch, a tensor's buffer, the workspace or the stream was disposed.</exception>
    public void BackwardVarlen(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        DeviceTensor dOut,
        DeviceTensor logSumExp,
        DeviceTensor dq,
        DeviceTensor dk,
        DeviceTensor dv,
        VarlenBatch batch,
        AttentionOptions? options = null,
        CudaStream? stream = null,
        DeviceBuffer<byte>? workspace = null)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        var args = BackwardArgs.Create(q, k, v, output, dOut, logSumExp, dq, dk, dv);
        ArgumentNullException.ThrowIfNull(batch);
        BackwardCore(args, batch, options, stream, workspace);
    }

    private static FlashAttentionStatus CheckBackwardCore(
        BackwardArgs args, VarlenBatch? batch, AttentionOptions? options, int computeCapability, out string message)
    {
        ThrowIfDisposed(batch);
        options ??= AttentionOptions.Default;
        NativeRuntime.EnsureLoaded();
        if ((ValidateBackward(args, batch, options, device: null) ?? CapabilityProblem(computeCapability)) is { } problem)
        {
            message = problem.Message;
            return FlashAttentionStatus.InvalidArgument;
        }

        return (FlashAttentionStatus)CallBackwardNative(
            BackwardCall.Check, context: null, stream: null, args, batch, options, workspace: null, computeCapability, out message, out _);
    }

    private long WorkspaceSizeCore(BackwardArgs args, VarlenBatch? batch, AttentionOptions? options)
    {
        ThrowIfDisposed(batch);
        options ??= AttentionOptions.Default;
        ThrowIfProblem(ValidateBackward(args, batch, options, Device));
        CallBackwardNative(BackwardCall.WorkspaceSize, _context, stream: null, args, batch, options, workspace: null, computeCapability: 0, out _, out long bytes);
        return bytes;
    }

    private void BackwardCore(BackwardArgs args, VarlenBatch? batch, AttentionOptions? options, CudaStream? stream, DeviceBuffer<byte>? workspace)
    {
        ThrowIfDisposed(batch);
        options ??= AttentionOptions.Default;
        ThrowIfProblem(ValidateBackward(args, batch, options, Device));
        ThrowIfOnAnotherDevice(stream);
        if (workspace is not null)
        {
            ObjectDisposedException.ThrowIf(workspace.IsClosed, workspace);
            if (workspace.Device.Ordinal != Device.Ordinal)
            {
                throw new ArgumentException(
                    $"The workspace lives on cuda:{workspace.Device.Ordinal} but this FlashAttention runs on cuda:{Device.Ordinal}.", nameof(workspace));
            }
        }

        if (_logger.IsEnabled(LogLevel.Debug))
        {
            double scale = options.EffectiveScale((int)args.Q.Shape[args.Q.Rank - 1]);
            string space = workspace is { Length: > 0 } ? $"caller {workspace.SizeInBytes} bytes" : "library";
            if (batch is null)
            {
                LogBackward(_logger, args.Q.ToString(), args.K.ToString(), options.Causal, options.CausalAlignment, scale, DescribeMasks(options),
                    options.Deterministic, space, options.KernelPath, DescribeStream(stream));
            }
            else
            {
                LogBackwardVarlen(_logger, args.Q.ToString(), args.K.ToString(), batch.ToString(), options.Causal, options.CausalAlignment, scale,
                    DescribeMasks(options), options.Deterministic, space, options.KernelPath, DescribeStream(stream));
            }
        }

        CallBackwardNative(BackwardCall.Run, _context, stream, args, batch, options, workspace, computeCapability: 0, out _, out _);
    }

    /// <summary>
    /// The managed checks of a backward call: those of the forward call that produced its inputs (with the log-sum-exp
    /// required), then rank, layout, device, dtype and shape of the output gradient and the three gradients.
    /// </summary>
    private static Problem? ValidateBackward(BackwardArgs a, VarlenBatch? batch, AttentionOptions options, CudaDevice? device)
    {
        if (Validate(a.Q, a.K, a.V, a.Output, batch, a.Lse, options, device) is { } problem)
        {
            return problem;
        }

        bool varlen = batch is not null;
        return GradientProblem(a.DOut, "dOut", a.Q, "q", a, varlen, device) ?? GradientProblem(a.DQ, "dq", a.Q, "q", a, varlen, device) ??
            GradientProblem(a.DK, "dk", a.K, "k", a, varlen, device) ?? GradientProblem(a.DV, "dv", a.K, "k", a, varlen, device);
    }

    /// <summary>Rank, layout, device, dtype and shape of one gradient tensor (shaped like <paramref name="like"/>); null when they pass.</summary>
    private static Problem? GradientProblem(DeviceTensor t, string name, DeviceTensor like, string likeName, BackwardArgs a, bool varlen, CudaDevice? device)
    {
        if ((TensorProblem(t, name, varlen, device) ?? DataTypeProblem(t, name, a.Q, "q, k, v, output, dOut, dq, dk and dv")) is { } problem)
        {
            return problem;
        }

        return t.HasShapeOf(like) ? null : new Problem(name, $"{name} must have {likeName}'s shape [{string.Join(", ", like.Shape)}]; it is {t}.");
    }

    /// <summary>
    /// Leases every handle for the duration of the native call, fills <c>fa_backward_params_t</c> (the variable-length
    /// fields when <paramref name="batch"/> is given, with its host copies pinned) and makes <paramref name="call"/>:
    /// <c>fa_backward_check</c> (returns the status and message), <c>fa_backward_workspace_size</c> or <c>fa_backward</c>
    /// (both throw on failure). The native error message is read before the leases are released.
    /// </summary>
    private static unsafe FaStatus CallBackwardNative(
        BackwardCall call,
        SafeContextHandle? context,
        CudaStream? stream,
        BackwardArgs a,
        VarlenBatch? batch,
        AttentionOptions options,
        DeviceBuffer<byte>? workspace,
        int computeCapability,
        out string message,
        out long workspaceBytes)
    {
        using var ctx = new HandleLease(context);
        using var s = new HandleLease(stream);
        using var lq = new HandleLease(a.Q.Owner);
        using var lk = new HandleLease(a.K.Owner);
        using var lv = new HandleLease(a.V.Owner);
        using var lo = new HandleLease(a.Output.Owner);
        using var ldo = new HandleLease(a.DOut.Owner);
        using var ll = new HandleLease(a.Lse.Owner);
        using var ldq = new HandleLease(a.DQ.Owner);
        using var ldk = new HandleLease(a.DK.Owner);
        using var ldv = new HandleLease(a.DV.Owner);
        using var lw = new HandleLease(workspace is { Length: > 0 } ? workspace : null);
        using var lcq = new HandleLease(batch?.CuSeqlensQ.Owner);
        using var lck = new HandleLease(batch?.CuSeqlensK.Owner);

        FaBackwardParams p = default;
        Errors.ThrowIfFailed(NativeMethods.fa_backward_params_init(&p, (nuint)sizeof(FaBackwardParams)));
        p.q = a.Q.ToNative(lq.Pointer);
        p.k = a.K.ToNative(lk.Pointer);
        p.v = a.V.ToNative(lv.Pointer);
        p.@out = a.Output.ToNative(lo.Pointer);
        p.dout = a.DOut.ToNative(ldo.Pointer);
        p.lse = a.Lse.ToNative(ll.Pointer);
        p.dq = a.DQ.ToNative(ldq.Pointer);
        p.dk = a.DK.ToNative(ldk.Pointer);
        p.dv = a.DV.ToNative(ldv.Pointer);
        var o = new NativeOptionFields(options);
        p.softmax_scale = o.SoftmaxScale;
        p.causal = o.Causal;
        p.causal_alignment = o.CausalAlignment;
        p.kernel_path = o.KernelPath;
        p.window_left = o.WindowLeft;
        p.window_right = o.WindowRight;
        p.softcap = o.Softcap;
        p.deterministic = options.Deterministic ? 1 : 0;
        if (lw.Pointer != IntPtr.Zero)
        {
            p.workspace = lw.Pointer;
            p.workspace_size = (nuint)workspace!.SizeInBytes;
        }

        fixed (int* hostQ = batch?.HostQ, hostK = batch?.HostK)
        {
            if (batch is not null)
            {
                VarlenFields f = VarlenFields.From(batch, lcq.Pointer, lck.Pointer, hostQ, hostK);
                p.cu_seqlens_q = f.CuSeqlensQ;
                p.cu_seqlens_k = f.CuSeqlensK;
                p.cu_seqlens_q_host = f.HostQ;
                p.cu_seqlens_k_host = f.HostK;
                p.varlen_batch = f.Batch;
                p.max_seqlen_q = f.MaxSeqLenQ;
                p.max_seqlen_k = f.MaxSeqLenK;
            }

            message = string.Empty;
            workspaceBytes = 0;
            switch (call)
            {
                case BackwardCall.Check:
                    FaStatus status = NativeMethods.fa_backward_check(&p, computeCapability);
                    message = status == FaStatus.Success ? string.Empty : Errors.LastErrorMessage();
                    return status;
                case BackwardCall.WorkspaceSize:
                    nuint bytes = 0;
                    Errors.ThrowIfFailed(NativeMethods.fa_backward_workspace_size(ctx.Pointer, &p, &bytes));
                    workspaceBytes = checked((long)bytes);
                    return FaStatus.Success;
                default:
                    Errors.ThrowIfFailed(NativeMethods.fa_backward(ctx.Pointer, &p, s.Pointer));
                    return FaStatus.Success;
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "Backward q={Q} k={K} causal={Causal} alignment={Alignment} scale={Scale} {Masks} deterministic={Deterministic} workspace={Workspace} path={Path} stream={Stream}")]
    private static partial void LogBackward(
        ILogger logger, string q, string k, bool causal, CausalAlignment alignment, double scale, string masks, bool deterministic, string workspace,
        KernelPath path, string stream);

    [LoggerMessage(Level = LogLevel.Debug, Message = "BackwardVarlen q={Q} k={K} batch={Batch} causal={Causal} alignment={Alignment} scale={Scale} {Masks} deterministic={Deterministic} workspace={Workspace} path={Path} stream={Stream}")]
    private static partial void LogBackwardVarlen(
        ILogger logger, string q, string k, string batch, bool causal, CausalAlignment alignment, double scale, string masks, bool deterministic,
        string workspace, KernelPath path, string stream);

    /// <summary>Which native function <see cref="CallBackwardNative"/> calls.</summary>
    private enum BackwardCall
    {
        Check,
        WorkspaceSize,
        Run,
    }

    /// <summary>The nine tensors of a backward call, null-checked.</summary>
    private sealed record BackwardArgs(
        DeviceTensor Q, DeviceTensor K, DeviceTensor V, DeviceTensor Output, DeviceTensor DOut, DeviceTensor Lse,
        DeviceTensor DQ, DeviceTensor DK, DeviceTensor DV)
    {
        public static BackwardArgs Create(
            DeviceTensor q, DeviceTensor k, DeviceTensor v, DeviceTensor output, DeviceTensor dOut, DeviceTensor logSumExp,
            DeviceTensor dq, DeviceTensor dk, DeviceTensor dv)
        {
            ThrowIfNull(q, k, v, output);
            ArgumentNullException.ThrowIfNull(dOut);
            ArgumentNullException.ThrowIfNull(logSumExp);
            ArgumentNullException.ThrowIfNull(dq);
            ArgumentNullException.ThrowIfNull(dk);
            ArgumentNullException.ThrowIfNull(dv);
            return new BackwardArgs(q, k, v, output, dOut, logSumExp, dq, dk, dv);
        }
    }
}
