using FlashAttn.Internal;
using FlashAttn.Native;
using Microsoft.Extensions.Logging;

namespace FlashAttn;

/// <content>
/// The backward pass: gradients of q, k and v from the gradient of the output, for fixed-length and variable-length
/// batches, with their argument checks and the workspace-size query.
/// </content>
/// <remarks>
/// Shapes and strides follow <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/> and <see cref="ForwardVarlen"/>: <c>dq</c> is shaped
/// like q, <c>dk</c> like k, <c>dOut</c> like the output and <c>dv</c> like v (their head dim v's: the same as q's
/// but for the pair (192, 128), C ABI 0.10), all of q's dtype; the log-sum-exp the forward wrote is required. The options
/// (scale, causal mask and alignment, window, softcap) must be the forward call's, and so must the learnable sinks
/// (<see cref="BackwardArguments.Sinks"/>, whose gradient <see cref="BackwardArguments.DSinks"/> receives);
/// <see cref="AttentionOptions.Deterministic"/> chooses reproducible dq accumulation. A forward call whose v had a head dim
/// of its own (C ABI 0.10) takes <c>dOut</c> shaped like its output and <c>dv</c> like v: the native library serves the
/// pair (192, 128) (FlashAttention-3's backward pair: the sm80 kernels, and the sm90 ones on compute capability 9.0
/// in a build with sm_90a code, which <see cref="KernelPath.Auto"/> takes there but for dropout) and refuses (64, 512)
/// (<see cref="FlashAttentionStatus.Unsupported"/>, with the reason). There is no paged K/V in the backward (C ABI 0.11:
/// <c>fa_backward_params_t</c> has no block table, as FlashAttention-2's varlen backward): a batch with a
/// <see cref="VarlenBatch.BlockTable"/> is refused by the managed side (<see cref="ArgumentException"/>, or
/// <see cref="FlashAttentionStatus.InvalidArgument"/> from the checks) before anything else.
/// </remarks>
public sealed partial class FlashAttention
{
    /// <summary>
    /// Validates the arguments of <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/> without touching a GPU (works on a machine without one, but
    /// needs the native library). Tensor memory is not read; only pointers, shapes, strides and dtypes count.
    /// </summary>
    /// <param name="q">Queries of the forward call <c>[batch, seqLenQ, headsQ, headDim]</c>, Float16 or BFloat16.</param>
    /// <param name="k">Keys of the forward call <c>[batch, seqLenK, headsKv, headDim]</c>, q's dtype.</param>
    /// <param name="v">Values of the forward call, k's shape (but v's head dim) and q's dtype.</param>
    /// <param name="output">Output of the forward call, q's shape (but v's head dim) and dtype.</param>
    /// <param name="dOut">Gradient of the loss with respect to <paramref name="output"/>, its shape and q's dtype.</param>
    /// <param name="logSumExp">Log-sum-exp the forward call wrote, <c>[batch, headsQ, seqLenQ]</c> Float32.</param>
    /// <param name="dq">Gradient of q (written), q's shape and dtype.</param>
    /// <param name="dk">Gradient of k (written), k's shape and q's dtype.</param>
    /// <param name="dv">Gradient of v (written), v's shape and q's dtype.</param>
    /// <param name="message">"" on success; otherwise why the call would be refused.</param>
    /// <param name="options">The forward call's options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c> (e.g. 90), or 0 for any GPU this build serves.</param>
    /// <returns>
    /// <see cref="FlashAttentionStatus.Success"/> when <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/> would accept the arguments;
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
        int computeCapability = 0) =>
        CheckBackward(new BackwardArguments(q, k, v, output, dOut, logSumExp, dq, dk, dv), out message, options, computeCapability);

    /// <summary>
    /// Validates the arguments of <see cref="BackwardVarlen"/> without touching a GPU (as <see cref="CheckBackward(in BackwardArguments, out string, AttentionOptions, int)"/>;
    /// the batch's host copies, when it has them, are checked).
    /// </summary>
    /// <param name="q">Packed queries of the forward call <c>[totalQ, headsQ, headDim]</c>, Float16 or BFloat16.</param>
    /// <param name="k">Packed keys of the forward call <c>[totalK, headsKv, headDim]</c>, q's dtype.</param>
    /// <param name="v">Packed values of the forward call, k's shape (but v's head dim) and q's dtype.</param>
    /// <param name="output">Output of the forward call, q's shape (but v's head dim) and dtype.</param>
    /// <param name="dOut">Gradient of the loss with respect to <paramref name="output"/>, its shape and q's dtype.</param>
    /// <param name="logSumExp">Log-sum-exp the forward call wrote, <c>[headsQ, totalQ]</c> Float32.</param>
    /// <param name="dq">Gradient of q (written), q's shape and dtype.</param>
    /// <param name="dk">Gradient of k (written), k's shape and q's dtype.</param>
    /// <param name="dv">Gradient of v (written), v's shape and q's dtype.</param>
    /// <param name="batch">
    /// The sequence boundaries of the forward call, without a block table: the backward has no paged K/V (a paged batch,
    /// <see cref="VarlenBatch.WithBlockTable"/>, is <see cref="FlashAttentionStatus.InvalidArgument"/> here).
    /// </param>
    /// <param name="message">"" on success; otherwise why the call would be refused.</param>
    /// <param name="options">The forward call's options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c>, or 0 for any GPU this build serves.</param>
    /// <returns>As <see cref="CheckBackward(in BackwardArguments, out string, AttentionOptions, int)"/>.</returns>
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
        int computeCapability = 0) =>
        CheckBackward(new BackwardArguments(q, k, v, output, dOut, logSumExp, dq, dk, dv, RequireBatch(batch)), out message, options, computeCapability);

    /// <summary>
    /// Bytes of device workspace <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/> needs for these arguments on this instance's device (an fp32
    /// dq accumulator, per-row sums and, in deterministic mode, one int32 counter per batch, head and query block). Pass a buffer at least this large to
    /// <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/> to keep the call free of allocations (for CUDA graph capture or a caller-managed pool).
    /// </summary>
    /// <param name="q">As in <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>.</param>
    /// <param name="k">As in <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>.</param>
    /// <param name="v">As in <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>.</param>
    /// <param name="output">As in <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>.</param>
    /// <param name="dOut">As in <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>.</param>
    /// <param name="logSumExp">As in <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>.</param>
    /// <param name="dq">As in <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>.</param>
    /// <param name="dk">As in <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>.</param>
    /// <param name="dv">As in <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>.</param>
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
        AttentionOptions? options = null) =>
        GetBackwardWorkspaceSize(new BackwardArguments(q, k, v, output, dOut, logSumExp, dq, dk, dv), options);

    /// <summary>
    /// Bytes of device workspace <see cref="BackwardVarlen"/> needs for these arguments on this instance's device; see
    /// <see cref="GetBackwardWorkspaceSize(in BackwardArguments, AttentionOptions)"/>.
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
    /// <param name="batch">The sequence boundaries, without a block table (the backward has no paged K/V: a paged batch throws <see cref="ArgumentException"/>).</param>
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
        AttentionOptions? options = null) =>
        GetBackwardWorkspaceSize(new BackwardArguments(q, k, v, output, dOut, logSumExp, dq, dk, dv, RequireBatch(batch)), options);

    /// <summary>
    /// Gradients of attention: given the inputs, output and log-sum-exp of a <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/> call and the gradient
    /// of the loss with respect to its output, writes the gradients of q, k and v. The attention weights are recomputed
    /// from the log-sum-exp; nothing of size seqLenQ x seqLenK is stored. Queued on <paramref name="stream"/>; returns
    /// without waiting.
    /// </summary>
    /// <param name="q">Queries of the forward call <c>[batch, seqLenQ, headsQ, headDim]</c>, Float16 or BFloat16, last dimension contiguous.</param>
    /// <param name="k">Keys of the forward call <c>[batch, seqLenK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ.</param>
    /// <param name="v">Values of the forward call, k's shape (but v's head dim) and q's dtype.</param>
    /// <param name="output">Output of the forward call, q's shape (but v's head dim) and dtype.</param>
    /// <param name="dOut">Gradient of the loss with respect to <paramref name="output"/>, its shape and q's dtype.</param>
    /// <param name="logSumExp">
    /// Log-sum-exp the forward call wrote (<c>logSumExp</c> of <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>), <c>[batch, headsQ, seqLenQ]</c> Float32.
    /// </param>
    /// <param name="dq">Written: the gradient of q, q's shape and dtype. Rows that see no key get 0.</param>
    /// <param name="dk">
    /// Written: the gradient of k, k's shape and q's dtype; under GQA/MQA each kv head gets the sum over the query heads
    /// that read it. Keys no query sees get 0.
    /// </param>
    /// <param name="dv">Written: the gradient of v, v's shape, as <paramref name="dk"/>.</param>
    /// <param name="options">
    /// The forward call's options (scale, mask, alignment, window, softcap), or null for <see cref="AttentionOptions.Default"/>;
    /// <see cref="AttentionOptions.Deterministic"/> makes the result bitwise reproducible.
    /// </param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <param name="workspace">
    /// Scratch memory of at least <see cref="GetBackwardWorkspaceSize(in BackwardArguments, AttentionOptions)"/> bytes on this device, used only while the call
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
        DeviceBuffer<byte>? workspace = null) =>
        Backward(new BackwardArguments(q, k, v, output, dOut, logSumExp, dq, dk, dv, Workspace: workspace), options, stream);

    /// <summary>
    /// Gradients of attention over a variable-length batch (the packed layout of <see cref="ForwardVarlen"/>); see
    /// <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>. Queued on <paramref name="stream"/>; returns without waiting.
    /// </summary>
    /// <param name="q">Packed queries of the forward call <c>[totalQ, headsQ, headDim]</c>, Float16 or BFloat16.</param>
    /// <param name="k">Packed keys of the forward call <c>[totalK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ.</param>
    /// <param name="v">Packed values of the forward call, k's shape (but v's head dim) and q's dtype.</param>
    /// <param name="output">Output of the forward call, q's shape (but v's head dim) and dtype.</param>
    /// <param name="dOut">Gradient of the loss with respect to <paramref name="output"/>, its shape and q's dtype.</param>
    /// <param name="logSumExp">Log-sum-exp the forward call wrote, <c>[headsQ, totalQ]</c> Float32.</param>
    /// <param name="dq">Written: the gradient of q, q's shape and dtype; rows that see no key get 0.</param>
    /// <param name="dk">Written: the gradient of k (summed over each group's query heads), k's shape and q's dtype.</param>
    /// <param name="dv">Written: the gradient of v, v's shape, as <paramref name="dk"/>.</param>
    /// <param name="batch">
    /// The sequence boundaries of the forward call; keep it undisposed until the work is done. Without a block table: the
    /// backward has no paged K/V (a paged batch, <see cref="VarlenBatch.WithBlockTable"/>, throws <see cref="ArgumentException"/>).
    /// </param>
    /// <param name="options">The forward call's options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <param name="workspace">
    /// Scratch memory of at least <see cref="GetBackwardWorkspaceSizeVarlen"/> bytes, or null for a library allocation;
    /// see <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>.
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
        DeviceBuffer<byte>? workspace = null) =>
        Backward(new BackwardArguments(q, k, v, output, dOut, logSumExp, dq, dk, dv, RequireBatch(batch), workspace), options, stream);

    /// <summary>
    /// Validates the arguments of <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>, fixed-length
    /// or variable-length, without touching a GPU (works on a machine without one, but needs the native library).
    /// Tensor memory is not read; only pointers, shapes, strides and dtypes count, and the batch's host copies when it
    /// has them.
    /// </summary>
    /// <param name="args">The tensors (and batch) of the call; <see cref="BackwardArguments.Workspace"/> is ignored.</param>
    /// <param name="message">"" on success; otherwise why the call would be refused.</param>
    /// <param name="options">The forward call's options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c> (e.g. 90), or 0 for any GPU this build serves.</param>
    /// <returns>
    /// <see cref="FlashAttentionStatus.Success"/> when the backward call would accept the arguments;
    /// <see cref="FlashAttentionStatus.InvalidArgument"/> or <see cref="FlashAttentionStatus.Unsupported"/> otherwise.
    /// Managed-side checks report <see cref="FlashAttentionStatus.InvalidArgument"/> here instead of throwing. Whether a
    /// caller workspace is large enough depends on the device and is not checked here.
    /// </returns>
    /// <exception cref="ArgumentNullException">A tensor is null.</exception>
    /// <exception cref="ObjectDisposedException">The batch was disposed.</exception>
    /// <exception cref="FlashAttentionException">The native library cannot be loaded (status <see cref="FlashAttentionStatus.NoDevice"/>).</exception>
    public static FlashAttentionStatus CheckBackward(
        in BackwardArguments args, out string message, AttentionOptions? options = null, int computeCapability = 0)
    {
        args.ThrowIfIncomplete();
        ThrowIfDisposed(args.Batch);
        options ??= AttentionOptions.Default;
        NativeRuntime.EnsureLoaded();
        if ((ValidateBackward(args, options, device: null) ?? CapabilityProblem(computeCapability)) is { } problem)
        {
            message = problem.Message;
            return FlashAttentionStatus.InvalidArgument;
        }

        return (FlashAttentionStatus)CallBackwardNative(
            BackwardCall.Check, context: null, stream: null, args, options, computeCapability, out message, out _);
    }

    /// <summary>
    /// Bytes of device workspace <see cref="Backward(in BackwardArguments, AttentionOptions, CudaStream)"/> needs for
    /// these arguments on this instance's device (an fp32 dq accumulator, per-row sums and, in deterministic mode, one
    /// int32 counter per batch, head and query block). Pass a buffer at least this large as
    /// <see cref="BackwardArguments.Workspace"/> to keep the call free of allocations (for CUDA graph capture or a
    /// caller-managed pool).
    /// </summary>
    /// <param name="args">The tensors (and batch) of the call; <see cref="BackwardArguments.Workspace"/> is ignored.</param>
    /// <param name="options">The options the call will use (<see cref="AttentionOptions.Deterministic"/> counts), or null for the defaults.</param>
    /// <returns>The size in bytes (0 when the call needs none).</returns>
    /// <exception cref="ArgumentNullException">A tensor is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused the arguments.</exception>
    /// <exception cref="ObjectDisposedException">This instance, the batch or a tensor's buffer was disposed.</exception>
    public long GetBackwardWorkspaceSize(in BackwardArguments args, AttentionOptions? options = null)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        args.ThrowIfIncomplete();
        ThrowIfDisposed(args.Batch);
        options ??= AttentionOptions.Default;
        ThrowIfProblem(ValidateBackward(args, options, Device));
        CallBackwardNative(BackwardCall.WorkspaceSize, _context, stream: null, args, options, computeCapability: 0, out _, out long bytes);
        return bytes;
    }

    /// <summary>
    /// Gradients of attention over the tensors of <paramref name="args"/>: fixed-length when
    /// <see cref="BackwardArguments.Batch"/> is null, variable-length (the packed layout of the forward call) when it is
    /// set; see the positional
    /// <see cref="Backward(DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, AttentionOptions, CudaStream, DeviceBuffer{byte})"/>
    /// for what is written. Queued on <paramref name="stream"/>; returns without waiting.
    /// </summary>
    /// <param name="args">The tensors, batch and optional workspace of the call; see <see cref="BackwardArguments"/>.</param>
    /// <param name="options">
    /// The forward call's options (scale, mask, alignment, window, softcap), or null for <see cref="AttentionOptions.Default"/>;
    /// <see cref="AttentionOptions.Deterministic"/> makes the result bitwise reproducible.
    /// </param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <remarks>
    /// The gradients must not overlap the inputs or each other. With a caller workspace the call neither allocates nor
    /// synchronises, so it may be captured into a <see cref="CudaGraph"/>; a workspace smaller than needed is refused
    /// (<see cref="FlashAttentionException"/> with <see cref="FlashAttentionStatus.InvalidArgument"/>) before anything runs.
    /// </remarks>
    /// <exception cref="ArgumentNullException">A tensor is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused or failed the call.</exception>
    /// <exception cref="ObjectDisposedException">This instance, the batch, a tensor's buffer, the workspace or the stream was disposed.</exception>
    public void Backward(in BackwardArguments args, AttentionOptions? options = null, CudaStream? stream = null)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        args.ThrowIfIncomplete();
        ThrowIfDisposed(args.Batch);
        options ??= AttentionOptions.Default;
        ThrowIfProblem(ValidateBackward(args, options, Device));
        ThrowIfOnAnotherDevice(stream);
        if (args.Workspace is { } workspace)
        {
            ObjectDisposedException.ThrowIf(workspace.IsClosed, workspace);
            if (workspace.Device.Ordinal != Device.Ordinal)
            {
                throw new ArgumentException(
                    $"The workspace lives on cuda:{workspace.Device.Ordinal} but this FlashAttention runs on cuda:{Device.Ordinal}.", "workspace");
            }
        }

        if (_logger.IsEnabled(LogLevel.Debug))
        {
            double scale = options.EffectiveScale((int)args.Q.Shape[args.Q.Rank - 1]);
            string space = args.Workspace is { Length: > 0 } w ? $"caller {w.SizeInBytes} bytes" : "library";
            if (args.Batch is not { } batch)
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

        CallBackwardNative(BackwardCall.Run, _context, stream, args, options, computeCapability: 0, out _, out _);
    }

    /// <summary>
    /// The managed checks of a backward call: those of the forward call that produced its inputs (with the log-sum-exp
    /// required), then rank, layout, device, dtype and shape of the output gradient and the three gradients.
    /// </summary>
    private static Problem? ValidateBackward(in BackwardArguments a, AttentionOptions options, CudaDevice? device)
    {
        if (a.Batch?.BlockTable is not null)
        {
            // fa_backward_params_t has no block_table (FlashAttention-2's varlen backward has none either), so a paged
            // batch cannot be described to the library at all: refused here, before anything else.
            return new Problem(
                "batch",
                "The batch has a block table (paged K/V), but the backward pass has no paged K/V (fa_backward_params_t has no " +
                "block_table, as FlashAttention-2's varlen backward): gather each sequence's keys and values into packed k and v " +
                "[total_k, heads_kv, head_dim] and pass the batch without its block table.");
        }

        if (IsFloat8Input(a.Q, a.K, a.V))
        {
            // The fp8 forward has no backward (FlashAttention-3's neither): the native library answers UNSUPPORTED,
            // with the reason, before it checks anything else, since there is no contract to check the rest against.
            return null;
        }

        if (Validate(a.ForwardArguments, options, device) is { } problem)
        {
            return problem;
        }

        bool varlen = a.IsVariableLength;
        if (a.DSinks is not null && a.Sinks is null)
        {
            return new Problem("dSinks", "dSinks is the gradient of the sinks but Sinks is null; pass the forward call's sinks, or leave dSinks null.");
        }

        // dOut is shaped like the output and dv like v: q's and k's shapes, unless v has a head dim of its own (C ABI
        // 0.10; the native library serves the (192, 128) backward and refuses other pairs as UNSUPPORTED with the
        // reason once these shapes agree).
        bool ownValueDim = a.V.Shape[^1] != a.Q.Shape[^1];
        return GradientProblem(a.DOut, "dOut", a.Output, ownValueDim ? "output" : "q", a.Q, varlen, device) ??
            GradientProblem(a.DQ, "dq", a.Q, "q", a.Q, varlen, device) ?? GradientProblem(a.DK, "dk", a.K, "k", a.Q, varlen, device) ??
            GradientProblem(a.DV, "dv", a.V, ownValueDim ? "v" : "k", a.Q, varlen, device) ??
            SinksProblem(a.DSinks, "dSinks", a.Q.Shape[a.Q.Rank - 2], device);
    }

    /// <summary>Rank, layout, device, dtype and shape of one gradient tensor (shaped like <paramref name="like"/>); null when they pass.</summary>
    private static Problem? GradientProblem(DeviceTensor t, string name, DeviceTensor like, string likeName, DeviceTensor q, bool varlen, CudaDevice? device)
    {
        if ((TensorProblem(t, name, varlen, device) ?? DataTypeProblem(t, name, q, "q, k, v, output, dOut, dq, dk and dv")) is { } problem)
        {
            return problem;
        }

        return t.HasShapeOf(like) ? null : new Problem(name, $"{name} must have {likeName}'s shape [{string.Join(", ", like.Shape)}]; it is {t}.");
    }

    /// <summary>
    /// Leases every handle for the duration of the native call, fills <c>fa_backward_params_t</c> (the variable-length
    /// fields when the arguments have a batch, with its host copies pinned; the caller workspace only for a run) and
    /// makes <paramref name="call"/>:
    /// <c>fa_backward_check</c> (returns the status and message), <c>fa_backward_workspace_size</c> or <c>fa_backward</c>
    /// (both throw on failure). The native error message is read before the leases are released.
    /// </summary>
    private static unsafe FaStatus CallBackwardNative(
        BackwardCall call,
        SafeContextHandle? context,
        CudaStream? stream,
        in BackwardArguments a,
        AttentionOptions options,
        int computeCapability,
        out string message,
        out long workspaceBytes)
    {
        VarlenBatch? batch = a.Batch;
        DeviceBuffer<byte>? workspace = call == BackwardCall.Run ? a.Workspace : null;
        using var ctx = new HandleLease(context);
        using var s = new HandleLease(stream);
        using var lq = new HandleLease(a.Q.Owner);
        using var lk = new HandleLease(a.K.Owner);
        using var lv = new HandleLease(a.V.Owner);
        using var lo = new HandleLease(a.Output.Owner);
        using var ldo = new HandleLease(a.DOut.Owner);
        using var ll = new HandleLease(a.LogSumExp.Owner);
        using var ldq = new HandleLease(a.DQ.Owner);
        using var ldk = new HandleLease(a.DK.Owner);
        using var ldv = new HandleLease(a.DV.Owner);
        using var lw = new HandleLease(workspace is { Length: > 0 } ? workspace : null);
        using var lcq = new HandleLease(batch?.CuSeqlensQ.Owner);
        using var lck = new HandleLease(batch?.CuSeqlensK.Owner);
        using var lsk = new HandleLease(a.Sinks?.Owner);
        using var ldsk = new HandleLease(a.DSinks?.Owner);
        using var lal = new HandleLease(a.AlibiSlopes?.Owner);

        FaBackwardParams p = default;
        Errors.ThrowIfFailed(NativeMethods.fa_backward_params_init(&p, (nuint)sizeof(FaBackwardParams)));
        p.q = a.Q.ToNative(lq.Pointer);
        p.k = a.K.ToNative(lk.Pointer);
        p.v = a.V.ToNative(lv.Pointer);
        p.@out = a.Output.ToNative(lo.Pointer);
        p.dout = a.DOut.ToNative(ldo.Pointer);
        p.lse = a.LogSumExp.ToNative(ll.Pointer);
        p.dq = a.DQ.ToNative(ldq.Pointer);
        p.dk = a.DK.ToNative(ldk.Pointer);
        p.dv = a.DV.ToNative(ldv.Pointer);
        if (a.Sinks is { } sinks)
        {
            p.sinks = sinks.ToNative(lsk.Pointer);
        }

        if (a.DSinks is { } dsinks)
        {
            p.dsinks = dsinks.ToNative(ldsk.Pointer);
        }

        if (a.AlibiSlopes is { } slopes)
        {
            p.alibi_slopes = slopes.ToNative(lal.Pointer);
        }

        p.dropout_p = a.DropoutP;
        p.dropout_seed = a.DropoutSeed;
        p.dropout_offset = a.DropoutOffset;
        NativeOptions.Write(options, ref p);
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
                    NativeCallObserver.Notify("fa_backward_check", p);
                    FaStatus status = NativeMethods.fa_backward_check(&p, computeCapability);
                    message = status == FaStatus.Success ? string.Empty : Errors.LastErrorMessage();
                    return status;
                case BackwardCall.WorkspaceSize:
                    nuint bytes = 0;
                    NativeCallObserver.Notify("fa_backward_workspace_size", p);
                    Errors.ThrowIfFailed(NativeMethods.fa_backward_workspace_size(ctx.Pointer, &p, &bytes));
                    workspaceBytes = checked((long)bytes);
                    return FaStatus.Success;
                default:
                    NativeCallObserver.Notify("fa_backward", p);
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
}
