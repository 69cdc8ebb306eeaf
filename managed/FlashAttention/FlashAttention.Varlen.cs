using FlashAttn.Internal;
using FlashAttn.Native;
using Microsoft.Extensions.Logging;

namespace FlashAttn;

/// <content>Variable-length batches and the checks shared with the fixed-length forward pass.</content>
public sealed partial class FlashAttention
{
    /// <summary>
    /// Validates the arguments of <see cref="ForwardVarlen"/> without touching a GPU (works on a machine without one,
    /// but needs the native library). Neither tensor memory nor the device prefix sums are read; the batch's host
    /// copies, when it has them, are checked.
    /// </summary>
    /// <param name="q">Packed queries <c>[totalQ, headsQ, headDim]</c>, Float16 or BFloat16; headDim a multiple of 8.</param>
    /// <param name="k">Packed keys <c>[totalK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ.</param>
    /// <param name="v">Packed values, k's shape and q's dtype.</param>
    /// <param name="output">Output, q's shape and dtype.</param>
    /// <param name="batch">The sequence boundaries.</param>
    /// <param name="message">"" on success; otherwise why the call would be refused.</param>
    /// <param name="logSumExp">Optional log-sum-exp <c>[headsQ, totalQ]</c>, Float32.</param>
    /// <param name="options">Options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c> (e.g. 90), or 0 for any GPU this build serves.</param>
    /// <returns>
    /// <see cref="FlashAttentionStatus.Success"/> when <see cref="ForwardVarlen"/> would accept the arguments;
    /// <see cref="FlashAttentionStatus.InvalidArgument"/> or <see cref="FlashAttentionStatus.Unsupported"/> otherwise.
    /// Managed-side checks report <see cref="FlashAttentionStatus.InvalidArgument"/> here instead of throwing.
    /// </returns>
    /// <exception cref="ArgumentNullException">A required tensor or the batch is null.</exception>
    /// <exception cref="ObjectDisposedException">The batch was disposed.</exception>
    /// <exception cref="FlashAttentionException">The native library cannot be loaded (status <see cref="FlashAttentionStatus.NoDevice"/>).</exception>
    public static unsafe FlashAttentionStatus CheckVarlen(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        VarlenBatch batch,
        out string message,
        DeviceTensor? logSumExp = null,
        AttentionOptions? options = null,
        int computeCapability = 0)
    {
        ThrowIfNull(q, k, v, output);
        ArgumentNullException.ThrowIfNull(batch);
        ObjectDisposedException.ThrowIf(batch.IsDisposed, batch);
        options ??= AttentionOptions.Default;
        NativeRuntime.EnsureLoaded();
        if (ValidateVarlen(q, k, v, output, batch, logSumExp, options, device: null) is { } problem)
        {
            message = problem.Message;
            return FlashAttentionStatus.InvalidArgument;
        }

        if (computeCapability < 0)
        {
            message = $"computeCapability must be 0 (any GPU) or major*10+minor; got {computeCapability}.";
            return FlashAttentionStatus.InvalidArgument;
        }

        using var lq = new HandleLease(q.Owner);
        using var lk = new HandleLease(k.Owner);
        using var lv = new HandleLease(v.Owner);
        using var lo = new HandleLease(output.Owner);
        using var ll = new HandleLease(logSumExp?.Owner);
        using var lcq = new HandleLease(batch.CuSeqlensQ.Owner);
        using var lck = new HandleLease(batch.CuSeqlensK.Owner);
        FaForwardParams p = BuildParams(q, lq.Pointer, k, lk.Pointer, v, lv.Pointer, output, lo.Pointer, logSumExp, ll.Pointer, options);
        fixed (int* hostQ = batch.HostQ, hostK = batch.HostK)
        {
            SetVarlen(ref p, batch, lcq.Pointer, lck.Pointer, hostQ, hostK);
            FaStatus status = NativeMethods.fa_forward_check(&p, computeCapability);
            message = status == FaStatus.Success ? string.Empty : Errors.LastErrorMessage();
            return (FlashAttentionStatus)status;
        }
    }

    /// <summary>
    /// Attention over a variable-length batch: the sequences of <paramref name="batch"/> are packed one after another
    /// along the first dimension, and each attends only within itself (masks, window and the bottom-right diagonal are
    /// placed per sequence). Queued on <paramref name="stream"/>; returns without waiting.
    /// </summary>
    /// <param name="q">
    /// Packed queries <c>[totalQ, headsQ, headDim]</c>, Float16 or BFloat16, last dimension contiguous; headDim a
    /// multiple of 8. Sequence <c>b</c> is rows <c>CuSeqlensQ[b] .. CuSeqlensQ[b + 1] - 1</c>.
    /// </param>
    /// <param name="k">Packed keys <c>[totalK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ.</param>
    /// <param name="v">Packed values, k's shape and q's dtype.</param>
    /// <param name="output">Written: <c>[totalQ, headsQ, headDim]</c>, q's dtype; must not overlap the inputs.</param>
    /// <param name="batch">The sequence boundaries; keep it undisposed until the work is done.</param>
    /// <param name="logSumExp">
    /// Optional, written: <c>[headsQ, totalQ]</c> Float32, natural log with the scale included; +infinity for rows that
    /// see no key.
    /// </param>
    /// <param name="options">Options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <remarks>
    /// Graph-safe like <see cref="Forward"/>. Rows of q past the batch's last sequence are not written.
    /// </remarks>
    /// <exception cref="ArgumentNullException">A required tensor or the batch is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused or failed the call.</exception>
    /// <exception cref="ObjectDisposedException">This instance, the batch, a tensor's buffer or the stream was disposed.</exception>
    public unsafe void ForwardVarlen(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        VarlenBatch batch,
        DeviceTensor? logSumExp = null,
        AttentionOptions? options = null,
        CudaStream? stream = null)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        ThrowIfNull(q, k, v, output);
        ArgumentNullException.ThrowIfNull(batch);
        ObjectDisposedException.ThrowIf(batch.IsDisposed, batch);
        options ??= AttentionOptions.Default;
        if (ValidateVarlen(q, k, v, output, batch, logSumExp, options, Device) is { } problem)
        {
            throw new ArgumentException(problem.Message, problem.ParamName);
        }

        if (stream?.Device is { } streamDevice && streamDevice.Ordinal != Device.Ordinal)
        {
            throw new ArgumentException(
                $"The stream belongs to cuda:{streamDevice.Ordinal} but this FlashAttention runs on cuda:{Device.Ordinal}.", nameof(stream));
        }

        if (_logger.IsEnabled(LogLevel.Debug))
        {
            LogForwardVarlen(_logger, q.ToString(), k.ToString(), batch.ToString(), logSumExp is not null, options.Causal, options.CausalAlignment,
                options.EffectiveScale((int)q.Shape[2]), DescribeMasks(options), options.KernelPath, stream?.ToString() ?? "legacy default stream");
        }

        using var ctx = new HandleLease(_context);
        using var s = new HandleLease(stream);
        using var lq = new HandleLease(q.Owner);
        using var lk = new HandleLease(k.Owner);
        using var lv = new HandleLease(v.Owner);
        using var lo = new HandleLease(output.Owner);
        using var ll = new HandleLease(logSumExp?.Owner);
        using var lcq = new HandleLease(batch.CuSeqlensQ.Owner);
        using var lck = new HandleLease(batch.CuSeqlensK.Owner);
        FaForwardParams p = BuildParams(q, lq.Pointer, k, lk.Pointer, v, lv.Pointer, output, lo.Pointer, logSumExp, ll.Pointer, options);
        fixed (int* hostQ = batch.HostQ, hostK = batch.HostK)
        {
            SetVarlen(ref p, batch, lcq.Pointer, lck.Pointer, hostQ, hostK);
            Errors.ThrowIfFailed(NativeMethods.fa_forward(ctx.Pointer, &p, s.Pointer));
        }
    }

    /// <summary>Why a head dim is refused by the managed side, or null.</summary>
    private static string? HeadDimProblem(long dim) =>
        dim >= 8 && dim % 8 == 0
            ? null
            : $"head_dim must be a positive multiple of 8 (the kernels serve multiples of 8 up to 256, padded; FlashAttention.QuerySupport tells what this build serves); q has head_dim {dim}.";

    private static string DescribeMasks(AttentionOptions options) =>
        $"window=({(options.WindowLeft?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-")}, " +
        $"{(options.WindowRight?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-")}) " +
        $"softcap={(options.Softcap?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "off")}";

    private static unsafe void SetVarlen(ref FaForwardParams p, VarlenBatch batch, IntPtr cuQOwner, IntPtr cuKOwner, int* hostQ, int* hostK)
    {
        p.cu_seqlens_q = (int*)batch.CuSeqlensQ.ToNative(cuQOwner).data;
        p.cu_seqlens_k = (int*)batch.CuSeqlensK.ToNative(cuKOwner).data;
        p.cu_seqlens_q_host = hostQ;
        p.cu_seqlens_k_host = hostK;
        p.varlen_batch = batch.BatchSize;
        p.max_seqlen_q = batch.MaxSeqLenQ;
        p.max_seqlen_k = batch.MaxSeqLenK;
    }

    /// <summary>The structural checks the managed side can make for a variable-length call; null when they pass.</summary>
    private static Problem? ValidateVarlen(
        DeviceTensor q, DeviceTensor k, DeviceTensor v, DeviceTensor output, VarlenBatch batch, DeviceTensor? lse, AttentionOptions options, CudaDevice? device)
    {
        if (options.Problem() is { } optionsProblem)
        {
            return new Problem(nameof(options), optionsProblem);
        }

        foreach ((DeviceTensor t, string name) in new[] { (q, nameof(q)), (k, nameof(k)), (v, nameof(v)), (output, nameof(output)) })
        {
            if (t.Rank != 3)
            {
                return new Problem(name, $"{name} must have rank 3 [total_tokens, heads, head_dim] in a variable-length batch; it is {t}.");
            }

            if (t.Strides[2] != 1 && t.Shape[2] > 1)
            {
                return new Problem(name, $"{name}'s last dimension (head_dim) must be contiguous (stride 1); it is {t}.");
            }

            if (device is not null && t.Device is not null && t.Device.Ordinal != device.Ordinal)
            {
                return new Problem(name, $"{name} lives on cuda:{t.Device.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.");
            }
        }

        foreach ((DeviceTensor t, string name) in new[] { (k, nameof(k)), (v, nameof(v)), (output, nameof(output)) })
        {
            if (t.DataType != q.DataType)
            {
                return new Problem(name, $"{name} is {t.DataType} but q is {q.DataType}; q, k, v and output share one dtype.");
            }
        }

        long totalQ = q.Shape[0], headsQ = q.Shape[1], dim = q.Shape[2];
        if (HeadDimProblem(dim) is { } headDimProblem)
        {
            return new Problem(nameof(q), headDimProblem);
        }

        if (k.Shape[2] != dim)
        {
            return new Problem(nameof(k), $"k must be [total_k, heads_kv, head_dim={dim}] to match q {q}; it is {k}.");
        }

        if (!k.Shape.SequenceEqual(v.Shape))
        {
            return new Problem(nameof(v), $"v must have k's shape [{string.Join(", ", k.Shape)}]; it is {v}.");
        }

        if (!q.Shape.SequenceEqual(output.Shape))
        {
            return new Problem(nameof(output), $"output must have q's shape [{string.Join(", ", q.Shape)}]; it is {output}.");
        }

        long headsKv = k.Shape[1];
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

            if (lse.Rank != 2 || lse.Shape[0] != headsQ || lse.Shape[1] != totalQ)
            {
                return new Problem("logSumExp", $"logSumExp must be [heads_q={headsQ}, total_q={totalQ}] in a variable-length batch; it is {lse}.");
            }

            if (device is not null && lse.Device is not null && lse.Device.Ordinal != device.Ordinal)
            {
                return new Problem("logSumExp", $"logSumExp lives on cuda:{lse.Device.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.");
            }
        }

        if (device is not null && batch.Device is { } batchDevice && batchDevice.Ordinal != device.Ordinal)
        {
            return new Problem(nameof(batch), $"The batch's cu_seqlens live on cuda:{batchDevice.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.");
        }

        if (batch.TotalQ is { } endQ && endQ > totalQ)
        {
            return new Problem(nameof(batch), $"The batch's cu_seqlens_q ends at {endQ} but q has only {totalQ} rows (total_q).");
        }

        if (batch.TotalK is { } endK && endK > k.Shape[0])
        {
            return new Problem(nameof(batch), $"The batch's cu_seqlens_k ends at {endK} but k has only {k.Shape[0]} rows (total_k).");
        }

        return null;
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "ForwardVarlen q={Q} k={K} batch={Batch} lse={WithLse} causal={Causal} alignment={Alignment} scale={Scale} {Masks} path={Path} stream={Stream}")]
    private static partial void LogForwardVarlen(
        ILogger logger, string q, string k, string batch, bool withLse, bool causal, CausalAlignment alignment, double scale, string masks, KernelPath path, string stream);
}
