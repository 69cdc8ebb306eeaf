using FlashAttn.Internal;
using FlashAttn.Native;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace FlashAttn;

/// <summary>
/// FlashAttention-2 on one CUDA device. Owns the native context (device, cached properties); the stream is an
/// argument of every call, so one instance serves many streams and threads at once.
/// </summary>
/// <remarks>
/// <para>
/// Argument errors the managed side can see (null tensors, wrong ranks, mismatched dtypes or shapes, tensors on
/// another device, an invalid scale) throw <see cref="ArgumentException"/> before any native call. Everything the
/// native library rejects or fails at throws <see cref="FlashAttentionException"/> with its status and message.
/// </para>
/// <para>
/// With a logger, the loaded library's path is logged at Debug when the instance is created, each call's shapes
/// and options at Debug, and the native library's own log messages at their level (process-wide: the most
/// recently created live instance's logger receives them).
/// </para>
/// </remarks>
public sealed partial class FlashAttention : IDisposable
{
    private readonly SafeContextHandle _context;
    private readonly ILogger _logger;
    private readonly bool _bridged;
    private int _disposed;

    /// <summary>Creates the native context for <paramref name="device"/>.</summary>
    /// <param name="device">The device (from <see cref="CudaDevice.Open(int)"/>).</param>
    /// <param name="logger">Receives Debug diagnostics and the native library's log; null for none.</param>
    /// <exception cref="FlashAttentionException">The native library is missing, or the context could not be created.</exception>
    public FlashAttention(CudaDevice device, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        NativeRuntime.EnsureLoaded();
        Device = device;
        _logger = logger ?? NullLogger.Instance;
        LogCreated(_logger, NativeRuntime.LoadedPath ?? "(unknown)", NativeRuntime.FormatVersion(NativeRuntime.Version), device.ToString());
        _context = SafeContextHandle.Create(device.Ordinal);
        if (logger is not null)
        {
            NativeLogBridge.Register(logger);
            _bridged = true;
        }
    }

    /// <summary>The device this instance runs on.</summary>
    public CudaDevice Device { get; }

    /// <summary>
    /// Where the native library was loaded from and its version, loading it if needed. Never throws: when the
    /// library cannot be loaded the result is false (<see cref="CudaDevice.TryGetAvailability(out string)"/> says why).
    /// </summary>
    /// <param name="path">The loaded file, or "" when it could not be loaded.</param>
    /// <param name="version">Its version as MAJOR.MINOR.PATCH, or "" when it could not be loaded.</param>
    /// <returns><see langword="true"/> when the native library is loaded.</returns>
    public static bool TryGetNativeLibrary(out string path, out string version)
    {
        if (NativeRuntime.TryEnsureLoaded(out _))
        {
            path = NativeRuntime.LoadedPath ?? string.Empty;
            version = NativeRuntime.FormatVersion(NativeRuntime.Version);
            return true;
        }

        path = string.Empty;
        version = string.Empty;
        return false;
    }

    /// <summary>
    /// Validates the arguments of a fixed-length <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>
    /// without touching a GPU; the positional form of <see cref="Check(in AttentionArguments, out string, AttentionOptions, int)"/>.
    /// </summary>
    /// <param name="q">Queries <c>[batch, seqLenQ, headsQ, headDim]</c>, Float16, BFloat16 or Float8E4M3; headDim a multiple of 8 (16 for Float8E4M3).</param>
    /// <param name="k">Keys <c>[batch, seqLenK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ.</param>
    /// <param name="v">
    /// Values <c>[batch, seqLenK, headsKv, headDimV]</c>, q's dtype: k's shape, but for a head dim of its own where the
    /// library serves one (see <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>).
    /// </param>
    /// <param name="output">Output <c>[batch, seqLenQ, headsQ, headDimV]</c>: q's shape with v's head dim; q's dtype (BFloat16 when q is Float8E4M3).</param>
    /// <param name="message">"" on success; otherwise why the call would be refused.</param>
    /// <param name="logSumExp">Optional log-sum-exp <c>[batch, headsQ, seqLenQ]</c>, Float32.</param>
    /// <param name="options">Options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c> (e.g. 90), or 0 for any GPU this build serves.</param>
    /// <returns>As <see cref="Check(in AttentionArguments, out string, AttentionOptions, int)"/>.</returns>
    /// <exception cref="ArgumentNullException">A required tensor is null.</exception>
    /// <exception cref="FlashAttentionException">The native library cannot be loaded (status <see cref="FlashAttentionStatus.NoDevice"/>).</exception>
    public static FlashAttentionStatus Check(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        out string message,
        DeviceTensor? logSumExp = null,
        AttentionOptions? options = null,
        int computeCapability = 0) =>
        Check(new AttentionArguments(q, k, v, output, logSumExp), out message, options, computeCapability);

    /// <summary>
    /// Validates the arguments of <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>, fixed-length
    /// or variable-length, without touching a GPU (works on a machine without one, but needs the native library).
    /// Tensor memory and the device prefix sums are not read; only pointers, shapes, strides and dtypes count, and the
    /// batch's host copies when it has them.
    /// </summary>
    /// <param name="args">The tensors (and batch) of the call.</param>
    /// <param name="message">"" on success; otherwise why the call would be refused.</param>
    /// <param name="options">Options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c> (e.g. 90), or 0 for any GPU this build serves.</param>
    /// <returns>
    /// <see cref="FlashAttentionStatus.Success"/> when the forward call would accept the arguments;
    /// <see cref="FlashAttentionStatus.InvalidArgument"/> or <see cref="FlashAttentionStatus.Unsupported"/> otherwise.
    /// Managed-side checks report <see cref="FlashAttentionStatus.InvalidArgument"/> here instead of throwing.
    /// </returns>
    /// <exception cref="ArgumentNullException">A required tensor is null.</exception>
    /// <exception cref="ObjectDisposedException">The batch was disposed.</exception>
    /// <exception cref="FlashAttentionException">The native library cannot be loaded (status <see cref="FlashAttentionStatus.NoDevice"/>).</exception>
    public static FlashAttentionStatus Check(in AttentionArguments args, out string message, AttentionOptions? options = null, int computeCapability = 0)
    {
        args.ThrowIfIncomplete();
        ThrowIfDisposed(args.Batch);
        options ??= AttentionOptions.Default;
        NativeRuntime.EnsureLoaded();
        if ((Validate(args, options, device: null) ?? CapabilityProblem(computeCapability)) is { } problem)
        {
            message = problem.Message;
            return FlashAttentionStatus.InvalidArgument;
        }

        return (FlashAttentionStatus)CallNative(context: null, stream: null, args, options, computeCapability, out message);
    }

    /// <summary>
    /// Scaled dot-product attention: <c>output = softmax(scale * q kᵀ + mask) v</c>, and the log-sum-exp of each
    /// row when <paramref name="logSumExp"/> is given. Queued on <paramref name="stream"/>; returns without waiting.
    /// </summary>
    /// <param name="q">
    /// Queries <c>[batch, seqLenQ, headsQ, headDim]</c>, Float16, BFloat16 or Float8E4M3, last dimension contiguous;
    /// headDim a multiple of 8 (every multiple of 8 up to 256 is served; <see cref="QuerySupport(SupportQuery)"/> tells
    /// for a build), of 16 for Float8E4M3.
    /// </param>
    /// <param name="k">Keys <c>[batch, seqLenK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ (GQA/MQA).</param>
    /// <param name="v">
    /// Values <c>[batch, seqLenK, headsKv, headDimV]</c>, q's dtype: k's shape, or with a head dim of its own (headDimV;
    /// see the remarks).
    /// </param>
    /// <param name="output">
    /// Written: <c>[batch, seqLenQ, headsQ, headDimV]</c> (q's shape with v's head dim), q's dtype (BFloat16 when q is
    /// Float8E4M3); must not overlap the inputs.
    /// </param>
    /// <param name="logSumExp">
    /// Optional, written: <c>[batch, headsQ, seqLenQ]</c> Float32, natural log with the scale included; +infinity for
    /// rows that see no key.
    /// </param>
    /// <param name="options">Options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <remarks>
    /// <para>
    /// Graph-safe: the call neither synchronises nor allocates, so it may be captured into a <see cref="CudaGraph"/>
    /// (<see cref="CudaStream.BeginCapture"/>); each replay then reads and writes the same device pointers.
    /// </para>
    /// <para>
    /// A V head dim of its own (FlashAttention-3's, C ABI 0.10): v <c>[batch, seqLenK, headsKv, headDimV]</c> and the
    /// output <c>[batch, seqLenQ, headsQ, headDimV]</c>, as in
    /// <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>.
    /// </para>
    /// <para>
    /// fp8 (Float8E4M3 q, k and v, BFloat16 output) without descale factors; for per-(batch, KV head) factors use
    /// <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/> with
    /// <see cref="AttentionArguments.QDescale"/>, <see cref="AttentionArguments.KDescale"/> and
    /// <see cref="AttentionArguments.VDescale"/>.
    /// </para>
    /// </remarks>
    /// <exception cref="ArgumentNullException">A required tensor is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong (including a head dim that is not a multiple of 8).</exception>
    /// <exception cref="FlashAttentionException">The native library refused or failed the call.</exception>
    /// <exception cref="ObjectDisposedException">This instance, a tensor's buffer or the stream was disposed.</exception>
    public void Forward(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        DeviceTensor? logSumExp = null,
        AttentionOptions? options = null,
        CudaStream? stream = null) =>
        Forward(new AttentionArguments(q, k, v, output, logSumExp), options, stream);

    /// <summary>
    /// Scaled dot-product attention over the tensors of <paramref name="args"/>: fixed-length as
    /// <see cref="Forward(DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, AttentionOptions, CudaStream)"/>
    /// when <see cref="AttentionArguments.Batch"/> is null, variable-length as
    /// <see cref="ForwardVarlen(DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, VarlenBatch, DeviceTensor, AttentionOptions, CudaStream)"/>
    /// when it is set. Queued on <paramref name="stream"/>; returns without waiting.
    /// </summary>
    /// <param name="args">
    /// The tensors (and batch) of the call; see <see cref="AttentionArguments"/> for their shapes. fp8: q, k and v
    /// Float8E4M3, the output BFloat16, and the optional descale factors <see cref="AttentionArguments.QDescale"/>,
    /// <see cref="AttentionArguments.KDescale"/> and <see cref="AttentionArguments.VDescale"/>.
    /// </param>
    /// <param name="options">Options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <remarks>
    /// <para>
    /// Graph-safe: the call neither synchronises nor allocates, so it may be captured into a <see cref="CudaGraph"/>.
    /// </para>
    /// <para>
    /// A V head dim of its own (FlashAttention-3's separate V head dim, C ABI 0.10): v may have a last dimension headDimV
    /// other than q's and k's headDim, and the output then has it too (q's shape with v's head dim; the managed side
    /// checks only that the shapes agree so). Scores, the default scale <c>headDim^-0.5</c> and the log-sum-exp use q and
    /// k alone; each output row is the weighted sum of headDimV-long value rows (<see cref="AttentionShape.HeadDimV"/>
    /// and <see cref="AttentionReference"/> describe the same maths). Served: (headDim, headDimV) = (192, 128) and
    /// (64, 512), Float16 and BFloat16, on the sm80 kernels with every forward option (causal, window, softcap, ALiBi,
    /// sinks, dropout, varlen, GQA, log-sum-exp). The sm90 kernels serve both pairs on compute capability 9.0 in a build
    /// with sm_90a code, every option but dropout; <see cref="KernelPath.Auto"/> takes them there and the sm80 kernels
    /// elsewhere. Every other pair, <see cref="KernelPath.Sm90"/> where it does not serve (dropout, another GPU, a build
    /// without sm_90a code) and Float8E4M3 throw <see cref="FlashAttentionException"/> with
    /// <see cref="FlashAttentionStatus.Unsupported"/> and the native library's reason
    /// (<see cref="QuerySupport(SupportQuery)"/> with <see cref="SupportQuery.HeadDimV"/> tells beforehand). The backward
    /// pass serves (192, 128) on the sm80 kernels, and on the sm90 kernels where they serve (every option but dropout;
    /// <see cref="KernelPath.Auto"/> takes them there too); decode has no V head dim of its own.
    /// </para>
    /// <para>
    /// fp8 (FlashAttention-3's fp8 forward): the attention of the true values <c>q · QDescale[b, h / (headsQ / headsKv)]</c>,
    /// <c>k · KDescale[b, hk]</c> and <c>v · VDescale[b, hk]</c> (a missing table is 1), the log-sum-exp that of their
    /// logits; the kernels round the softmax weights to e4m3 before <c>P·V</c> (FEATURES.md §6), so expect fp8 accuracy
    /// (<see cref="AttentionReference.ForwardFloat8"/> is the float64 reference). Served by the sm90 kernels only (compute
    /// capability 9.0, a build with sm_90a code): <see cref="KernelPath.Auto"/> or <see cref="KernelPath.Sm90"/>;
    /// <see cref="KernelPath.Sm80"/>, and any path where the sm90 fp8 forward does not serve, throw
    /// <see cref="FlashAttentionException"/> with <see cref="FlashAttentionStatus.Unsupported"/> and the reason
    /// (there is no fallback). <see cref="QuerySupport(SupportQuery)"/> with <see cref="DataType.Float8E4M3"/> tells
    /// beforehand.
    /// </para>
    /// <para>
    /// Paged K/V (C ABI 0.11): a <see cref="AttentionArguments.Batch"/> with a block table
    /// (<see cref="VarlenBatch.WithBlockTable"/>) takes k and v as pools of blocks
    /// <c>[numBlocks, blockSize, headsKv, headDim]</c> and <c>[numBlocks, blockSize, headsKv, headDimV]</c>; see
    /// <see cref="ForwardVarlen(DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, VarlenBatch, DeviceTensor, AttentionOptions, CudaStream)"/>
    /// for the rules (block sizes that are multiples of 128, Float16 and BFloat16 on both paths without dropout, a used
    /// block id outside the pool reported as <see cref="FlashAttentionStatus.DeviceCheckFailed"/>).
    /// </para>
    /// </remarks>
    /// <exception cref="ArgumentNullException">A required tensor is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused or failed the call.</exception>
    /// <exception cref="ObjectDisposedException">This instance, the batch, a tensor's buffer or the stream was disposed.</exception>
    public void Forward(in AttentionArguments args, AttentionOptions? options = null, CudaStream? stream = null)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        args.ThrowIfIncomplete();
        ThrowIfDisposed(args.Batch);
        options ??= AttentionOptions.Default;
        ThrowIfProblem(Validate(args, options, Device));
        ThrowIfOnAnotherDevice(stream);
        if (_logger.IsEnabled(LogLevel.Debug))
        {
            DeviceTensor q = args.Q;
            double scale = options.EffectiveScale((int)q.Shape[q.Rank - 1]);
            string streamName = DescribeStream(stream);
            bool withLse = args.LogSumExp is not null;
            if (args.Batch is not { } batch)
            {
                LogForward(_logger, q.ToString(), args.K.ToString(), withLse, options.Causal, options.CausalAlignment,
                    scale, DescribeMasks(options), options.KernelPath, streamName);
            }
            else
            {
                LogForwardVarlen(_logger, q.ToString(), args.K.ToString(), batch.ToString(), withLse, options.Causal, options.CausalAlignment,
                    scale, DescribeMasks(options), options.KernelPath, streamName);
            }
        }

        CallNative(_context, stream, args, options, computeCapability: 0, out _);
    }

    /// <summary>
    /// Throws what the GPU found during earlier calls on this instance that no check before the launch could see
    /// (<see cref="FlashAttentionStatus.DeviceCheckFailed"/>, with the cause), and forgets it; returns when there is
    /// nothing. Does not synchronise: it covers the calls that have finished, so call it after waiting for their
    /// stream (or graph launch). Forward, backward and decode calls make the same check first. The deterministic
    /// backward waits for its turn on dQ at most <c>FLASH_ATTENTION_DETERMINISTIC_WAIT_MS</c> milliseconds (read
    /// when the instance is created; default 10000, 0 for no bound).
    /// </summary>
    /// <exception cref="FlashAttentionException">A device check failed.</exception>
    /// <exception cref="ObjectDisposedException">The instance is disposed.</exception>
    public void CheckDeviceErrors()
    {
        using var ctx = new HandleLease(_context);
        Errors.ThrowIfFailed(NativeMethods.fa_context_check(ctx.Pointer));
    }

    /// <summary>
    /// Destroys the native context (work already queued is not waited for) and stops routing the native log to
    /// this instance's logger. Idempotent and thread-safe. An instance that is never disposed has its context
    /// released by the finalizer of its handle, but keeps its logger registered.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _context.Dispose();
        if (_bridged)
        {
            NativeLogBridge.Unregister(_logger);
        }
    }

    /// <summary>
    /// Leases every handle for the duration of the native call, fills the parameters (the variable-length fields
    /// when the arguments have a batch, with its host copies pinned, and its block table when it is paged) and calls <c>fa_forward</c> on
    /// <paramref name="context"/>, throwing on failure, or, when <paramref name="context"/> is null,
    /// <c>fa_forward_check</c> for <paramref name="computeCapability"/>. The native error message is read before
    /// the leases are released.
    /// </summary>
    private static unsafe FaStatus CallNative(
        SafeContextHandle? context,
        CudaStream? stream,
        in AttentionArguments args,
        AttentionOptions options,
        int computeCapability,
        out string message)
    {
        (DeviceTensor q, DeviceTensor k, DeviceTensor v, DeviceTensor output, DeviceTensor? lse, VarlenBatch? batch) = args;
        using var ctx = new HandleLease(context);
        using var s = new HandleLease(stream);
        using var lq = new HandleLease(q.Owner);
        using var lk = new HandleLease(k.Owner);
        using var lv = new HandleLease(v.Owner);
        using var lo = new HandleLease(output.Owner);
        using var ll = new HandleLease(lse?.Owner);
        using var lcq = new HandleLease(batch?.CuSeqlensQ.Owner);
        using var lck = new HandleLease(batch?.CuSeqlensK.Owner);
        using var lbt = new HandleLease(batch?.BlockTable?.Owner);
        using var lqd = new HandleLease(args.QDescale?.Owner);
        using var lkd = new HandleLease(args.KDescale?.Owner);
        using var lvd = new HandleLease(args.VDescale?.Owner);
        using var lsk = new HandleLease(args.Sinks?.Owner);
        using var lal = new HandleLease(args.AlibiSlopes?.Owner);
        using var ldm = new HandleLease(args.DropoutMask?.Owner);
        FaForwardParams p = BuildParams(q, lq.Pointer, k, lk.Pointer, v, lv.Pointer, output, lo.Pointer, lse, ll.Pointer, options);
        p.dropout_p = args.DropoutP;
        p.dropout_seed = args.DropoutSeed;
        p.dropout_offset = args.DropoutOffset;
        if (args.DropoutMask is { } dropoutMask)
        {
            p.dropout_mask = dropoutMask.ToNative(ldm.Pointer);
        }
        if (args.Sinks is { } sinks)
        {
            p.sinks = sinks.ToNative(lsk.Pointer);
        }

        if (args.AlibiSlopes is { } slopes)
        {
            p.alibi_slopes = slopes.ToNative(lal.Pointer);
        }

        if (args.QDescale is { } qd)
        {
            p.q_descale = qd.ToNative(lqd.Pointer);
        }

        if (args.KDescale is { } kd)
        {
            p.k_descale = kd.ToNative(lkd.Pointer);
        }

        if (args.VDescale is { } vd)
        {
            p.v_descale = vd.ToNative(lvd.Pointer);
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
                if (batch.BlockTable is { } table)
                {
                    p.block_table = table.ToNative(lbt.Pointer);
                }
            }

            if (context is null)
            {
                NativeCallObserver.Notify("fa_forward_check", p);
                FaStatus status = NativeMethods.fa_forward_check(&p, computeCapability);
                message = status == FaStatus.Success ? string.Empty : Errors.LastErrorMessage();
                return status;
            }

            NativeCallObserver.Notify("fa_forward", p);
            Errors.ThrowIfFailed(NativeMethods.fa_forward(ctx.Pointer, &p, s.Pointer));
            message = string.Empty;
            return FaStatus.Success;
        }
    }

    /// <summary>
    /// The structural checks the managed side can make on an <see cref="AttentionArguments"/> (after its null checks),
    /// for a fixed-length call (no batch: rank-4 tensors) or a variable-length one (rank 3); null when they pass.
    /// Allocates nothing when they pass. The one place these arguments are checked, for the forward call, its check,
    /// and (through <see cref="ValidateBackward"/>) the backward pass.
    /// </summary>
    private static Problem? Validate(in AttentionArguments args, AttentionOptions options, CudaDevice? device)
    {
        (DeviceTensor q, DeviceTensor k, DeviceTensor v, DeviceTensor output, DeviceTensor? lse, VarlenBatch? batch) = args;
        if (options.Problem() is { } optionsProblem)
        {
            return new Problem(nameof(options), optionsProblem);
        }

        bool varlen = batch is not null;
        bool paged = batch?.BlockTable is not null;
        if ((TensorProblem(q, nameof(q), varlen, device) ?? TensorProblem(k, nameof(k), varlen, device, paged) ??
             TensorProblem(v, nameof(v), varlen, device, paged) ?? TensorProblem(output, nameof(output), varlen, device) ??
             DataTypeProblem(k, nameof(k), q, "q, k and v") ?? DataTypeProblem(v, nameof(v), q, "q, k and v") ??
             OutputDataTypeProblem(output, q)) is { } tensorProblem)
        {
            return tensorProblem;
        }

        // Fixed: q [batch, seqlen_q, heads_q, head_dim]. Varlen: q [total_q, heads_q, head_dim]. k and v have q's rank,
        // but for a paged batch's pools [num_blocks, block_size, heads_kv, head_dim].
        int last = q.Rank - 1, kvLast = k.Rank - 1;
        long headsQ = q.Shape[last - 1], dim = q.Shape[last];
        if ((HeadDimProblem(dim) ?? Float8HeadDimProblem(q.DataType, dim)) is { } headDimProblem)
        {
            return new Problem(nameof(q), headDimProblem);
        }

        if (!varlen && (k.Shape[0] != q.Shape[0] || k.Shape[3] != dim))
        {
            return new Problem(nameof(k), $"k must be [batch={q.Shape[0]}, seqlen_k, heads_kv, head_dim={dim}] to match q {q}; it is {k}.");
        }

        if (varlen && !paged && k.Shape[2] != dim)
        {
            return new Problem(nameof(k), $"k must be [total_k, heads_kv, head_dim={dim}] to match q {q}; it is {k}.");
        }

        if (paged && k.Shape[3] != dim)
        {
            return new Problem(nameof(k), $"k must be a pool [num_blocks, block_size, heads_kv, head_dim={dim}] to match q {q} (the batch has a block table); it is {k}.");
        }

        // v and the output may have a head dim of their own (head_dim_v, C ABI 0.10): which pairs are served is the
        // native library's answer (UNSUPPORTED with the reason), so only the shapes' agreement is checked here.
        if (!k.HasLeadingShapeOf(v))
        {
            return new Problem(
                nameof(v), $"v must have k's shape [{string.Join(", ", k.Shape.Take(kvLast))}, head_dim_v] (its own head dim last); it is {v}.");
        }

        long dimV = v.Shape[kvLast];
        if (!q.HasLeadingShapeOf(output))
        {
            return new Problem(
                nameof(output), $"output must have q's shape [{string.Join(", ", q.Shape.Take(last))}] with v's head dim ({dimV}) last; it is {output}.");
        }

        if (output.Shape[last] != dimV)
        {
            return new Problem(
                nameof(output), $"output's head dim is {output.Shape[last]} but v's is {dimV}: out takes v's head dim (q's is {dim}); output is {output}, v is {v}.");
        }

        long headsKv = k.Shape[kvLast - 1];
        if (headsKv == 0 || headsQ % headsKv != 0)
        {
            return new Problem(nameof(k), $"k has {headsKv} heads, which does not divide q's {headsQ} heads.");
        }

        if (lse is not null)
        {
            if (lse.DataType != DataType.Float32)
            {
                return new Problem("logSumExp", $"logSumExp must be Float32; it is {lse.DataType}.");
            }

            if (varlen)
            {
                long totalQ = q.Shape[0];
                if (lse.Rank != 2 || lse.Shape[0] != headsQ || lse.Shape[1] != totalQ)
                {
                    return new Problem("logSumExp", $"logSumExp must be [heads_q={headsQ}, total_q={totalQ}] in a variable-length batch; it is {lse}.");
                }
            }
            else
            {
                long batchSize = q.Shape[0], seqQ = q.Shape[1];
                if (lse.Rank != 3 || lse.Shape[0] != batchSize || lse.Shape[1] != headsQ || lse.Shape[2] != seqQ)
                {
                    return new Problem("logSumExp", $"logSumExp must be [batch={batchSize}, heads_q={headsQ}, seqlen_q={seqQ}]; it is {lse}.");
                }
            }

            if (device is not null && lse.Device is not null && lse.Device.Ordinal != device.Ordinal)
            {
                return new Problem("logSumExp", $"logSumExp lives on cuda:{lse.Device.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.");
            }
        }

        return (batch is null ? null : BatchProblem(batch, q.Shape[0], k, device)) ??
            DescaleProblems(args, batch?.BatchSize ?? q.Shape[0], headsKv, device) ??
            SinksProblem(args.Sinks, "sinks", headsQ, device) ??
            AlibiProblem(args.AlibiSlopes, batch?.BatchSize ?? q.Shape[0], headsQ, device);
    }

    /// <summary>
    /// Dtype, rank, shape and device of ALiBi slopes (Float32 <c>[headsQ]</c> or <c>[batch, headsQ]</c>); null when absent
    /// or when they pass. Strides and alignment are the native library's checks.
    /// </summary>
    private static Problem? AlibiProblem(DeviceTensor? t, long batch, long headsQ, CudaDevice? device)
    {
        const string name = "alibiSlopes";
        if (t is null)
        {
            return null;
        }

        if (t.DataType != DataType.Float32)
        {
            return new Problem(name, $"alibiSlopes (alibi_slopes) must be Float32; it is {t.DataType}.");
        }

        bool perHead = t.Rank == 1 && t.Shape[0] == headsQ;
        bool perBatch = t.Rank == 2 && t.Shape[0] == batch && t.Shape[1] == headsQ;
        if (!perHead && !perBatch)
        {
            return new Problem(
                name, $"alibiSlopes (alibi_slopes) must be [heads_q={headsQ}] or [batch={batch}, heads_q={headsQ}] (one slope per query head); it is {t}.");
        }

        return device is not null && t.Device is not null && t.Device.Ordinal != device.Ordinal
            ? new Problem(name, $"alibiSlopes lives on cuda:{t.Device.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.")
            : null;
    }

    /// <summary>
    /// Dtype, rank, shape and device of the sinks or their gradient (Float32 <c>[headsQ]</c>); null when absent or
    /// when they pass. Strides and alignment are the native library's checks.
    /// </summary>
    private static Problem? SinksProblem(DeviceTensor? t, string name, long headsQ, CudaDevice? device)
    {
        if (t is null)
        {
            return null;
        }

        if (t.DataType != DataType.Float32)
        {
            return new Problem(name, $"{name} must be Float32 (one logit per query head); it is {t.DataType}.");
        }

        if (t.Rank != 1 || t.Shape[0] != headsQ)
        {
            return new Problem(name, $"{name} must be [heads_q={headsQ}] (one value per query head); it is {t}.");
        }

        return device is not null && t.Device is not null && t.Device.Ordinal != device.Ordinal
            ? new Problem(name, $"{name} lives on cuda:{t.Device.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.")
            : null;
    }

    /// <summary>
    /// Rank, contiguous head_dim and device of one of q, k, v, output; null when they pass. <paramref name="paged"/>: k or
    /// v of a batch with a block table, a pool of blocks (rank 4).
    /// </summary>
    private static Problem? TensorProblem(DeviceTensor t, string name, bool varlen, CudaDevice? device, bool paged = false)
    {
        int rank = varlen && !paged ? 3 : 4;
        if (t.Rank != rank)
        {
            return new Problem(name, paged
                ? $"{name} must have rank 4 [num_blocks, block_size, heads_kv, head_dim] with a block table (paged K/V: a pool of blocks); it is {t}."
                : varlen
                ? $"{name} must have rank 3 [total_tokens, heads, head_dim] in a variable-length batch; it is {t}."
                : $"{name} must have rank 4 [batch, seqlen, heads, head_dim]; it is {t}.");
        }

        if (t.Strides[rank - 1] != 1 && t.Shape[rank - 1] > 1)
        {
            return new Problem(name, $"{name}'s last dimension (head_dim) must be contiguous (stride 1); it is {t}.");
        }

        if (device is not null && t.Device is not null && t.Device.Ordinal != device.Ordinal)
        {
            return new Problem(name, $"{name} lives on cuda:{t.Device.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.");
        }

        return null;
    }

    private static Problem? DataTypeProblem(DeviceTensor t, string name, DeviceTensor q, string group = "q, k, v and output") =>
        t.DataType == q.DataType
            ? null
            : new Problem(name, $"{name} is {t.DataType} but q is {q.DataType}; {group} share one dtype.");

    private static Problem? CapabilityProblem(int computeCapability) =>
        computeCapability < 0
            ? new Problem(nameof(computeCapability), $"computeCapability must be 0 (any GPU) or major*10+minor; got {computeCapability}.")
            : null;

    private static void ThrowIfDisposed(VarlenBatch? batch)
    {
        if (batch is not null)
        {
            ObjectDisposedException.ThrowIf(batch.IsDisposed, batch);
        }
    }

    private static void ThrowIfProblem(Problem? problem)
    {
        if (problem is not null)
        {
            throw new ArgumentException(problem.Message, problem.ParamName);
        }
    }

    private void ThrowIfOnAnotherDevice(CudaStream? stream)
    {
        if (stream?.Device is { } streamDevice && streamDevice.Ordinal != Device.Ordinal)
        {
            throw new ArgumentException(
                $"The stream belongs to cuda:{streamDevice.Ordinal} but this FlashAttention runs on cuda:{Device.Ordinal}.", nameof(stream));
        }
    }

    private static string DescribeStream(CudaStream? stream) => stream?.ToString() ?? "legacy default stream";

    /// <summary>Why a head dim is refused by the managed side, or null.</summary>
    private static string? HeadDimProblem(long dim) =>
        dim >= 8 && dim % 8 == 0
            ? null
            : $"head_dim must be a positive multiple of 8 (the kernels serve multiples of 8 up to 256, padded; FlashAttention.QuerySupport tells what this build serves); q has head_dim {dim}.";

    private static string DescribeMasks(AttentionOptions options) =>
        $"window=({(options.WindowLeft?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-")}, " +
        $"{(options.WindowRight?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-")}) " +
        $"softcap={(options.Softcap?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "off")}";

    private static unsafe FaForwardParams BuildParams(
        DeviceTensor q, IntPtr qBase,
        DeviceTensor k, IntPtr kBase,
        DeviceTensor v, IntPtr vBase,
        DeviceTensor output, IntPtr outBase,
        DeviceTensor? lse, IntPtr lseBase,
        AttentionOptions options)
    {
        FaForwardParams p = default;
        Errors.ThrowIfFailed(NativeMethods.fa_forward_params_init(&p, (nuint)sizeof(FaForwardParams)));
        p.q = q.ToNative(qBase);
        p.k = k.ToNative(kBase);
        p.v = v.ToNative(vBase);
        p.@out = output.ToNative(outBase);
        if (lse is not null)
        {
            p.lse = lse.ToNative(lseBase);
        }

        NativeOptions.Write(options, ref p);
        return p;
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "FlashAttention: native library {Path} (version {Version}) on {Device}")]
    private static partial void LogCreated(ILogger logger, string path, string version, string device);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Forward q={Q} k={K} lse={WithLse} causal={Causal} alignment={Alignment} scale={Scale} {Masks} path={Path} stream={Stream}")]
    private static partial void LogForward(
        ILogger logger, string q, string k, bool withLse, bool causal, CausalAlignment alignment, double scale, string masks, KernelPath path, string stream);

    private sealed record Problem(string ParamName, string Message);
}
