using FlashAttn.Internal;
using FlashAttn.Native;
using Microsoft.Extensions.Logging;

namespace FlashAttn;

/// <content>Decoding over a KV cache: <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/>, its check and its workspace and split queries.</content>
public sealed partial class FlashAttention
{
    /// <summary>Most key splits <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> runs per (sequence, head); <c>numSplits</c> may be 0 (automatic) to this.</summary>
    public const int MaxDecodeSplits = NativeMethods.FA_DECODE_MAX_SPLITS;

    private enum DecodeQuery
    {
        Check,
        WorkspaceSize,
        SplitCount,
        Run,
    }

    /// <summary>
    /// Validates the arguments of <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> without touching a GPU (works on a machine without one, but
    /// needs the native library). Neither tensor memory nor the device arrays are read; the cache's host lengths are
    /// checked against its capacity.
    /// </summary>
    /// <param name="q">New queries <c>[batch, seqLenNew, headsQ, headDim]</c>, the cache's dtype.</param>
    /// <param name="cache">The KV cache.</param>
    /// <param name="kNew">New keys <c>[batch, seqLenNew, headsKv, headDim]</c> to append, or null.</param>
    /// <param name="vNew">New values shaped like <paramref name="kNew"/>; given exactly when it is.</param>
    /// <param name="output">Output, q's shape and dtype.</param>
    /// <param name="message">"" on success; otherwise why the call would be refused.</param>
    /// <param name="logSumExp">Optional log-sum-exp <c>[batch, headsQ, seqLenNew]</c>, Float32.</param>
    /// <param name="options">Options, or null for <see cref="AttentionOptions.Default"/> (bottom-right only).</param>
    /// <param name="numSplits">Key splits per (sequence, head): 0 (automatic) or 1 .. <see cref="MaxDecodeSplits"/>.</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c>, or 0 for any GPU this build serves.</param>
    /// <returns>
    /// <see cref="FlashAttentionStatus.Success"/> when <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> would accept the arguments;
    /// <see cref="FlashAttentionStatus.InvalidArgument"/> or <see cref="FlashAttentionStatus.Unsupported"/> otherwise.
    /// Managed-side checks report <see cref="FlashAttentionStatus.InvalidArgument"/> here instead of throwing.
    /// </returns>
    /// <exception cref="ArgumentNullException">q, the cache or the output is null.</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="FlashAttentionException">The native library cannot be loaded (status <see cref="FlashAttentionStatus.NoDevice"/>).</exception>
    public static FlashAttentionStatus CheckDecode(
        DeviceTensor q,
        KvCache cache,
        DeviceTensor? kNew,
        DeviceTensor? vNew,
        DeviceTensor output,
        out string message,
        DeviceTensor? logSumExp = null,
        AttentionOptions? options = null,
        int numSplits = 0,
        int computeCapability = 0) =>
        CheckDecode(new DecodeArguments(q, cache, kNew, vNew, output, logSumExp, numSplits), out message, options, computeCapability);

    /// <summary>
    /// Validates the arguments of <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> without touching
    /// a GPU (works on a machine without one, but needs the native library). Neither tensor memory nor the device arrays
    /// are read; the cache's host lengths are checked against its capacity.
    /// </summary>
    /// <param name="args">The arguments of the call; <see cref="DecodeArguments.Workspace"/> is ignored.</param>
    /// <param name="message">"" on success; otherwise why the call would be refused.</param>
    /// <param name="options">Options, or null for <see cref="AttentionOptions.Default"/> (bottom-right only).</param>
    /// <param name="computeCapability">Target GPU as <c>major * 10 + minor</c>, or 0 for any GPU this build serves.</param>
    /// <returns>
    /// <see cref="FlashAttentionStatus.Success"/> when the decode call would accept the arguments;
    /// <see cref="FlashAttentionStatus.InvalidArgument"/> or <see cref="FlashAttentionStatus.Unsupported"/> otherwise.
    /// Managed-side checks report <see cref="FlashAttentionStatus.InvalidArgument"/> here instead of throwing.
    /// </returns>
    /// <exception cref="ArgumentNullException">q, the cache or the output is null.</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="FlashAttentionException">The native library cannot be loaded (status <see cref="FlashAttentionStatus.NoDevice"/>).</exception>
    public static FlashAttentionStatus CheckDecode(in DecodeArguments args, out string message, AttentionOptions? options = null, int computeCapability = 0)
    {
        args.ThrowIfIncomplete();
        options ??= AttentionOptions.Default;
        NativeRuntime.EnsureLoaded();
        if (ValidateDecode(args, options, device: null) is { } problem)
        {
            message = problem.Message;
            return FlashAttentionStatus.InvalidArgument;
        }

        if (computeCapability < 0)
        {
            message = $"computeCapability must be 0 (any GPU) or major*10+minor; got {computeCapability}.";
            return FlashAttentionStatus.InvalidArgument;
        }

        DecodeStep step = args.Cache.PrepareStep(args.CacheRows, args.QueryCounts, args.AppendCounts, upload: false, stream: null, deviceOrdinal: 0);
        return (FlashAttentionStatus)CallDecode(DecodeQuery.Check, context: null, stream: null, args, step, options, computeCapability, out message, out _);
    }

    /// <summary>
    /// Bytes of scratch memory <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> needs for these
    /// arguments on this device (the partial results of the key splits); 0 when it runs unsplit. Pass a buffer of at
    /// least this size as <see cref="DecodeArguments.Workspace"/> to keep the call free of allocation.
    /// </summary>
    /// <param name="args">The arguments of the call; <see cref="DecodeArguments.Workspace"/> is ignored.</param>
    /// <param name="options">Options, or null.</param>
    /// <returns>The size in bytes.</returns>
    /// <exception cref="ArgumentNullException">q, the cache or the output is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused the arguments.</exception>
    /// <exception cref="ObjectDisposedException">This instance or the cache was disposed.</exception>
    public long GetDecodeWorkspaceSize(in DecodeArguments args, AttentionOptions? options = null) =>
        Query(DecodeQuery.WorkspaceSize, args, options);

    /// <summary>
    /// How many key splits per (sequence, head) <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/>
    /// would use for these arguments on this device (the automatic choice when <see cref="DecodeArguments.NumSplits"/>
    /// is 0; otherwise the request; splits left without keys write nothing the combine uses).
    /// </summary>
    /// <param name="args">The arguments of the call; <see cref="DecodeArguments.Workspace"/> is ignored.</param>
    /// <param name="options">Options, or null.</param>
    /// <returns>The split count, 1 .. <see cref="MaxDecodeSplits"/>.</returns>
    /// <exception cref="ArgumentNullException">q, the cache or the output is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused the arguments.</exception>
    /// <exception cref="ObjectDisposedException">This instance or the cache was disposed.</exception>
    public int GetDecodeSplitCount(in DecodeArguments args, AttentionOptions? options = null) =>
        (int)Query(DecodeQuery.SplitCount, args, options);

    /// <summary>
    /// Bytes of scratch memory <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> needs for these arguments on this device (the partial results of
    /// the key splits); 0 when it runs unsplit. Pass a buffer of at least this size as <c>workspace</c> to keep the
    /// call free of allocation.
    /// </summary>
    /// <param name="q">New queries, as for <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/>.</param>
    /// <param name="cache">The KV cache.</param>
    /// <param name="kNew">New keys, or null.</param>
    /// <param name="vNew">New values, or null.</param>
    /// <param name="output">Output.</param>
    /// <param name="logSumExp">Optional log-sum-exp.</param>
    /// <param name="options">Options, or null.</param>
    /// <param name="numSplits">Key splits per (sequence, head), 0 for automatic.</param>
    /// <returns>The size in bytes.</returns>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused the arguments.</exception>
    /// <exception cref="ObjectDisposedException">This instance or the cache was disposed.</exception>
    public long GetDecodeWorkspaceSize(
        DeviceTensor q,
        KvCache cache,
        DeviceTensor? kNew,
        DeviceTensor? vNew,
        DeviceTensor output,
        DeviceTensor? logSumExp = null,
        AttentionOptions? options = null,
        int numSplits = 0) =>
        GetDecodeWorkspaceSize(new DecodeArguments(q, cache, kNew, vNew, output, logSumExp, numSplits), options);

    /// <summary>
    /// How many key splits per (sequence, head) <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> would use for these arguments on this device
    /// (the automatic choice when <paramref name="numSplits"/> is 0; otherwise the request; splits left without keys
    /// write nothing the combine uses).
    /// </summary>
    /// <param name="q">New queries, as for <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/>.</param>
    /// <param name="cache">The KV cache.</param>
    /// <param name="kNew">New keys, or null.</param>
    /// <param name="vNew">New values, or null.</param>
    /// <param name="output">Output.</param>
    /// <param name="logSumExp">Optional log-sum-exp.</param>
    /// <param name="options">Options, or null.</param>
    /// <param name="numSplits">Key splits per (sequence, head), 0 for automatic.</param>
    /// <returns>The split count, 1 .. <see cref="MaxDecodeSplits"/>.</returns>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused the arguments.</exception>
    /// <exception cref="ObjectDisposedException">This instance or the cache was disposed.</exception>
    public int GetDecodeSplitCount(
        DeviceTensor q,
        KvCache cache,
        DeviceTensor? kNew,
        DeviceTensor? vNew,
        DeviceTensor output,
        DeviceTensor? logSumExp = null,
        AttentionOptions? options = null,
        int numSplits = 0) =>
        GetDecodeSplitCount(new DecodeArguments(q, cache, kNew, vNew, output, logSumExp, numSplits), options);

    /// <summary>
    /// Decoding attention over a KV cache: when <paramref name="kNew"/> and <paramref name="vNew"/> are given their
    /// <c>seqLenKNew</c> tokens (any count, not tied to q's) are first written into the cache at positions
    /// <c>len[b] .. len[b] + seqLenKNew - 1</c> of every sequence, then the new queries attend over positions
    /// <c>pad[b] .. total[b] - 1</c> (<c>total[b] = len[b] + seqLenKNew</c> when appending, <c>len[b]</c> otherwise;
    /// <c>pad[b]</c> the row's <see cref="KvCache.LeftPadding"/>). Queued on <paramref name="stream"/>; returns without
    /// waiting. After a successful call that appended, the cache's lengths have advanced by <c>seqLenKNew</c> (host copy
    /// at once, device copy queued on the same stream after the kernel). <see cref="DecodeArguments.CacheRows"/> (through
    /// <see cref="Decode(in DecodeArguments, AttentionOptions, CudaStream)"/>) runs a step over some of the cache's rows.
    /// </summary>
    /// <param name="q">
    /// New queries <c>[batch, seqLenNew, headsQ, headDim]</c>, the cache's dtype, last dimension contiguous; headsQ a
    /// multiple of the cache's headsKv (GQA/MQA).
    /// </param>
    /// <param name="cache">The KV cache (its lengths say how many tokens each sequence already holds).</param>
    /// <param name="kNew">New keys <c>[batch, seqLenNew, headsKv, headDim]</c> to append, or null to append nothing.</param>
    /// <param name="vNew">New values, shaped like <paramref name="kNew"/>; given exactly when it is.</param>
    /// <param name="output">Written: <c>[batch, seqLenNew, headsQ, headDim]</c>, q's dtype. A row that sees no key gets 0.</param>
    /// <param name="logSumExp">Optional, written: <c>[batch, headsQ, seqLenNew]</c> Float32; +infinity for rows that see no key.</param>
    /// <param name="options">
    /// Options, or null for <see cref="AttentionOptions.Default"/>. The causal mask and window are always placed
    /// bottom-right (new token <c>i</c> is position <c>total - seqLenNew + i</c>): <see cref="CausalAlignment.TopLeft"/>
    /// is refused.
    /// </param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <param name="numSplits">Key splits per (sequence, head): 0 lets the library choose, or 1 .. <see cref="MaxDecodeSplits"/>.</param>
    /// <param name="workspace">
    /// Optional scratch memory of at least <see cref="GetDecodeWorkspaceSize(in DecodeArguments, AttentionOptions)"/> bytes (a <see cref="DeviceBuffer{T}"/> is
    /// 256-byte aligned); null lets the library allocate it stream-ordered for the call.
    /// </param>
    /// <remarks>
    /// An owned paged cache gives blocks to the pages the new tokens need before the call (and takes them back if the
    /// call fails). A decode that appends queues small host-to-device copies, so it cannot be captured into a CUDA graph.
    /// </remarks>
    /// <exception cref="ArgumentNullException">q, the cache or the output is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong (shapes, dtypes, lengths past the capacity, top-left alignment, numSplits out of range, too few free blocks, an fp8 cache without descale factors).</exception>
    /// <exception cref="FlashAttentionException">The native library refused or failed the call; the cache's lengths are unchanged.</exception>
    /// <exception cref="ObjectDisposedException">This instance, the cache, a tensor's buffer or the stream was disposed.</exception>
    public void Decode(
        DeviceTensor q,
        KvCache cache,
        DeviceTensor? kNew,
        DeviceTensor? vNew,
        DeviceTensor output,
        DeviceTensor? logSumExp = null,
        AttentionOptions? options = null,
        CudaStream? stream = null,
        int numSplits = 0,
        DeviceBuffer<byte>? workspace = null) =>
        Decode(new DecodeArguments(q, cache, kNew, vNew, output, logSumExp, numSplits, workspace), options, stream);

    /// <summary>
    /// Decoding attention over a KV cache with the arguments of <paramref name="args"/>: appends
    /// <see cref="DecodeArguments.KNew"/> and <see cref="DecodeArguments.VNew"/> when given, then attends; see the
    /// positional
    /// <see cref="Decode(DeviceTensor, KvCache, DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, AttentionOptions, CudaStream, int, DeviceBuffer{byte})"/>
    /// for the positions and what is written. Queued on <paramref name="stream"/>; returns without waiting. After a
    /// successful call that appended, the lengths of the rows it used (<see cref="DecodeArguments.CacheRows"/>, or every
    /// row) have advanced by kNew's token count.
    /// </summary>
    /// <param name="args">The arguments of the call; see <see cref="DecodeArguments"/>.</param>
    /// <param name="options">
    /// Options, or null for <see cref="AttentionOptions.Default"/>. The causal mask and window are always placed
    /// bottom-right: <see cref="CausalAlignment.TopLeft"/> is refused.
    /// </param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <remarks>
    /// An owned paged cache gives blocks to the pages the new tokens need before the call (and takes them back if the
    /// call fails). A decode that appends, or that passes CacheRows, QueryCounts or AppendCounts, queues small
    /// host-to-device copies, so it cannot be captured into a CUDA graph.
    /// </remarks>
    /// <exception cref="ArgumentNullException">q, the cache or the output is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong (shapes, dtypes, lengths past the capacity, top-left alignment, NumSplits out of range, too few free blocks, CacheRows or per-sequence counts over a cache that is a view over raw pointers, descale factors missing over an fp8 cache, given over a 16-bit one, or not Float32 <c>[headsKv]</c> or <c>[1]</c>).</exception>
    /// <exception cref="FlashAttentionException">The native library refused or failed the call; the cache's lengths are unchanged.</exception>
    /// <exception cref="ObjectDisposedException">This instance, the cache, a tensor's buffer or the stream was disposed.</exception>
    public void Decode(in DecodeArguments args, AttentionOptions? options = null, CudaStream? stream = null)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        args.ThrowIfIncomplete();
        options ??= AttentionOptions.Default;
        ThrowIfProblem(ValidateDecode(args, options, Device));
        ThrowIfOnAnotherDevice(stream);
        if (args.Workspace is { } workspace && workspace.Device.Ordinal != Device.Ordinal)
        {
            throw new ArgumentException(
                $"The workspace lives on cuda:{workspace.Device.Ordinal} but this FlashAttention runs on cuda:{Device.Ordinal}.", "workspace");
        }

        if (_logger.IsEnabled(LogLevel.Debug))
        {
            LogDecode(_logger, args.Q.ToString(), args.Cache.ToString(), args.Appends, args.LogSumExp is not null, options.Causal,
                options.EffectiveScale((int)args.Q.Shape[^1]), DescribeMasks(options), args.NumSplits, DescribeStream(stream));
        }

        KvCache cache = args.Cache;
        if ((args.CacheRows ?? args.QueryCounts ?? args.AppendCounts) is not null && cache.Device is null)
        {
            throw new ArgumentException(
                "CacheRows, QueryCounts and AppendCounts need a cache on a device for the step's per-sequence arrays " +
                "(cache_batch_idx, cu_seqlens_q, cu_seqlens_k_new); this cache is a view over raw pointers. Wrap tensors of " +
                "device buffers instead.",
                nameof(args));
        }

        int[] added = args.AppendedPerSequence();
        List<(int Sequence, int Page)>? allocated = args.Appends ? cache.PrepareAppend(added, args.CacheRows, stream, Device.Ordinal) : null;
        try
        {
            DecodeStep step = cache.PrepareStep(args.CacheRows, args.QueryCounts, args.AppendCounts, upload: true, stream, Device.Ordinal);
            CallDecode(DecodeQuery.Run, _context, stream, args, step, options, computeCapability: 0, out _, out _);
        }
        catch
        {
            cache.UndoAppend(allocated, stream, Device.Ordinal);
            throw;
        }

        if (args.Appends)
        {
            cache.Advance(added, args.CacheRows, stream, Device.Ordinal);
        }
    }

    private long Query(DecodeQuery query, in DecodeArguments args, AttentionOptions? options)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        args.ThrowIfIncomplete();
        options ??= AttentionOptions.Default;
        ThrowIfProblem(ValidateDecode(args, options, Device));
        DecodeStep step = args.Cache.PrepareStep(args.CacheRows, args.QueryCounts, args.AppendCounts, upload: false, stream: null, Device.Ordinal);
        CallDecode(query, _context, stream: null, args, step, options, computeCapability: 0, out _, out long value);
        return value;
    }

    /// <summary>
    /// Leases every handle for the duration of the native call, fills the parameters (with <paramref name="step"/>'s host
    /// lengths, rows and pads pinned as <c>cache_seqlens_host</c>, <c>cache_batch_idx_host</c> and
    /// <c>cache_leftpad_host</c>; the caller workspace only for a run) and makes the call <paramref name="query"/> names: <c>fa_decode_check</c>
    /// (returning its status and message), <c>fa_decode_workspace_size</c> or <c>fa_decode_num_splits</c> (into
    /// <paramref name="value"/>), or <c>fa_decode</c>; all but the check throw on failure.
    /// </summary>
    private static unsafe FaStatus CallDecode(
        DecodeQuery query,
        SafeContextHandle? context,
        CudaStream? stream,
        in DecodeArguments args,
        DecodeStep step,
        AttentionOptions options,
        int computeCapability,
        out string message,
        out long value)
    {
        (DeviceTensor q, KvCache cache, DeviceTensor? kNew, DeviceTensor? vNew, DeviceTensor output, DeviceTensor? lse, int numSplits, _) = args;
        DeviceBuffer<byte>? workspace = query == DecodeQuery.Run ? args.Workspace : null;
        using var ctx = new HandleLease(context);
        using var s = new HandleLease(stream);
        using var lq = new HandleLease(q.Owner);
        using var lkc = new HandleLease(cache.Keys.Owner);
        using var lvc = new HandleLease(cache.Values.Owner);
        using var lkn = new HandleLease(kNew?.Owner);
        using var lvn = new HandleLease(vNew?.Owner);
        using var lal = new HandleLease(args.AlibiSlopes?.Owner);
        using var lo = new HandleLease(output.Owner);
        using var ll = new HandleLease(lse?.Owner);
        using var lsl = new HandleLease(step.SeqLens.Owner);
        using var lrows = new HandleLease(step.Rows?.Owner);
        using var lpads = new HandleLease(step.Pads?.Owner);
        using var lbt = new HandleLease(cache.BlockTable?.Owner);
        using var lcq = new HandleLease(step.CuQ?.Owner);
        using var lck = new HandleLease(step.CuK?.Owner);
        using var lws = new HandleLease(workspace);
        RotaryEmbedding? rotary = args.Rotary;
        using var lrc = new HandleLease(rotary?.Cos?.Owner);
        using var lrs = new HandleLease(rotary?.Sin?.Owner);
        var (keyDescale, valueDescale) = args.Descales;
        using var lkd = new HandleLease(keyDescale?.Owner);
        using var lvd = new HandleLease(valueDescale?.Owner);

        FaDecodeParams p = default;
        Errors.ThrowIfFailed(NativeMethods.fa_decode_params_init(&p, (nuint)sizeof(FaDecodeParams)));
        p.q = q.ToNative(lq.Pointer);
        p.k_cache = cache.Keys.ToNative(lkc.Pointer);
        p.v_cache = cache.Values.ToNative(lvc.Pointer);
        if (kNew is not null)
        {
            p.k_new = kNew.ToNative(lkn.Pointer);
        }

        if (vNew is not null)
        {
            p.v_new = vNew.ToNative(lvn.Pointer);
        }

        p.@out = output.ToNative(lo.Pointer);
        if (lse is not null)
        {
            p.lse = lse.ToNative(ll.Pointer);
        }

        p.cache_seqlens = step.SeqLens.ToNative(lsl.Pointer);
        if (step.Rows is { } rows)
        {
            p.cache_batch_idx = rows.ToNative(lrows.Pointer);
        }

        if (step.Pads is { } pads)
        {
            p.cache_leftpad = pads.ToNative(lpads.Pointer);
        }

        if (args.AlibiSlopes is { } slopes)
        {
            p.alibi_slopes = slopes.ToNative(lal.Pointer);
        }
        if (cache.BlockTable is { } table)
        {
            p.block_table = table.ToNative(lbt.Pointer);
        }

        // An fp8 cache's factors (C ABI 0.13; ValidateDecode checked both are given with one and neither without).
        if (keyDescale is not null)
        {
            p.k_descale = keyDescale.ToNative(lkd.Pointer);
        }

        if (valueDescale is not null)
        {
            p.v_descale = valueDescale.ToNative(lvd.Pointer);
        }

        if (rotary is not null)
        {
            // Checked by ValidateDecode: both tables, rank 2, the cache's dtype.
            p.rotary_cos = rotary.Cos.ToNative(lrc.Pointer).data;
            p.rotary_sin = rotary.Sin.ToNative(lrs.Pointer).data;
            p.rotary_dim = rotary.RotaryDim;
            p.rotary_seqlen = rotary.Positions;
            p.rotary_interleaved = rotary.Interleaved ? 1 : 0;
        }

        NativeOptions.Write(options, ref p);
        p.num_splits = numSplits;
        // An append advances the device lengths inside the call (after its kernels), so the cache needs no host
        // copy of them per step. (A step over CacheRows passes gathered lengths; the cache uploads the pool's after.)
        p.advance_cache_seqlens = kNew is not null && step.Rows is null ? 1 : 0;
        if (workspace is not null)
        {
            p.workspace = lws.Pointer;
            p.workspace_size = (nuint)workspace.SizeInBytes;
        }

        fixed (int* hostLengths = step.HostLengths)
        fixed (int* hostRows = step.HostRows)
        fixed (int* hostPads = step.HostPads)
        fixed (int* hostCuQ = step.HostCuQ)
        fixed (int* hostCuK = step.HostCuK)
        {
            // Per-sequence counts (C ABI 0.12). A check or a query never reads device memory: there the arrays are
            // described at their host copies (same values, memory no device buffer overlaps), so that a cache without
            // a device (a view over raw pointers) can be checked too; a run passes the step's device copies.
            if (step.CuQ is { } cuQ)
            {
                p.cu_seqlens_q = cuQ.ToNative(lcq.Pointer);
                p.max_seqlen_q = step.MaxQueries;
                if (query != DecodeQuery.Run)
                {
                    p.cu_seqlens_q.data = (nint)hostCuQ;
                }
            }

            if (step.CuK is { } cuK)
            {
                p.cu_seqlens_k_new = cuK.ToNative(lck.Pointer);
                if (query != DecodeQuery.Run)
                {
                    p.cu_seqlens_k_new.data = (nint)hostCuK;
                }
            }

            p.cu_seqlens_q_host = hostCuQ;
            p.cu_seqlens_k_new_host = hostCuK;
            p.cache_seqlens_host = hostLengths;
            p.cache_batch_idx_host = hostRows;
            p.cache_leftpad_host = hostPads;
            value = 0;
            message = string.Empty;
            switch (query)
            {
                case DecodeQuery.Check:
                {
                    NativeCallObserver.Notify("fa_decode_check", p);
                    FaStatus status = NativeMethods.fa_decode_check(&p, computeCapability);
                    message = status == FaStatus.Success ? string.Empty : Errors.LastErrorMessage();
                    return status;
                }

                case DecodeQuery.WorkspaceSize:
                {
                    nuint bytes = 0;
                    NativeCallObserver.Notify("fa_decode_workspace_size", p);
                    Errors.ThrowIfFailed(NativeMethods.fa_decode_workspace_size(ctx.Pointer, &p, &bytes));
                    value = (long)bytes;
                    return FaStatus.Success;
                }

                case DecodeQuery.SplitCount:
                {
                    int splits = 0;
                    NativeCallObserver.Notify("fa_decode_num_splits", p);
                    Errors.ThrowIfFailed(NativeMethods.fa_decode_num_splits(ctx.Pointer, &p, &splits));
                    value = splits;
                    return FaStatus.Success;
                }

                default:
                    NativeCallObserver.Notify("fa_decode", p);
                    Errors.ThrowIfFailed(NativeMethods.fa_decode(ctx.Pointer, &p, s.Pointer));
                    return FaStatus.Success;
            }
        }
    }

    /// <summary>
    /// The structural checks the managed side can make on a <see cref="DecodeArguments"/> (after its null checks); null
    /// when they pass. The one place these arguments are checked, for the run, the check and both queries.
    /// </summary>
    private static Problem? ValidateDecode(in DecodeArguments args, AttentionOptions options, CudaDevice? device)
    {
        (DeviceTensor q, KvCache cache, DeviceTensor? kNew, DeviceTensor? vNew, DeviceTensor output, DeviceTensor? lse, int numSplits, _) = args;
        ObjectDisposedException.ThrowIf(cache.IsDisposed, cache);
        // The per-sequence counts' own shape first: the step's arrays are built from them even for a call the library
        // refuses (fp8 below), so an empty array or two of different lengths must not reach that.
        if (args.QueryCounts is { Length: 0 } || args.AppendCounts is { Length: 0 })
        {
            string name = args.QueryCounts is { Length: 0 } ? "QueryCounts" : "AppendCounts";
            return new Problem(name, $"{name} is empty; give one count per sequence of the step.");
        }

        if (args.QueryCounts is { } qc && args.AppendCounts is { } ac && qc.Length != ac.Length)
        {
            return new Problem("AppendCounts", $"AppendCounts has {ac.Length} counts but QueryCounts {qc.Length}; give one count per sequence of the step in each.");
        }

        if (q.DataType == DataType.Float8E4M3)
        {
            // Decode has no fp8 queries (an fp8 KV cache is served under 16-bit ones, C ABI 0.13): the native library
            // answers UNSUPPORTED, with the reason, before it checks anything else.
            return null;
        }

        if (options.Problem() is { } optionsProblem)
        {
            return new Problem(nameof(options), optionsProblem);
        }

        if (options.CausalAlignment != CausalAlignment.BottomRight)
        {
            return new Problem(
                nameof(options),
                "Decode places the causal mask and the window bottom-right (new token i is position total - seqLenNew + i of its " +
                "sequence); CausalAlignment.TopLeft is not served by Decode. Leave CausalAlignment at BottomRight.");
        }

        if (numSplits is < 0 or > MaxDecodeSplits)
        {
            return new Problem(nameof(numSplits), $"numSplits (num_splits) must be 0 (automatic) or 1 .. {MaxDecodeSplits}; got {numSplits}.");
        }

        int[]? queryCounts = args.QueryCounts, appendCounts = args.AppendCounts;
        bool packedQ = queryCounts is not null, packedK = appendCounts is not null;
        if ((TensorProblem(q, nameof(q), varlen: packedQ, device) ?? TensorProblem(output, nameof(output), varlen: packedQ, device)) is { } tensorProblem)
        {
            return tensorProblem;
        }

        if ((kNew is null) != (vNew is null))
        {
            return kNew is null
                ? new Problem(nameof(kNew), "vNew (v_new) is given but kNew (k_new) is not: pass both to append new tokens, or neither.")
                : new Problem(nameof(vNew), "kNew (k_new) is given but vNew (v_new) is not: pass both to append new tokens, or neither.");
        }

        if (cache.IsFloat8 && q.DataType is not (DataType.Float16 or DataType.BFloat16))
        {
            return new Problem(
                nameof(q),
                $"q is {q.DataType} but over a Float8E4M3 cache (k_cache) q, the new keys and values and output are Float16 or BFloat16 (one dtype).");
        }

        if (!cache.IsFloat8 && q.DataType != cache.DataType)
        {
            return new Problem(nameof(q), $"q is {q.DataType} but the cache holds {cache.DataType} (k_cache); q, the cache, the new keys and values and output share one dtype.");
        }

        if (DataTypeProblem(output, nameof(output), q) is { } outputType)
        {
            return outputType;
        }

        if (DescalesProblem(args, device) is { } descalesProblem)
        {
            return descalesProblem;
        }

        // Packed queries (QueryCounts): q is [totalQ, headsQ, headDim] and the batch is the counts'.
        long batch = args.Batch, seqLenNew = packedQ ? 1 : q.Shape[1], headsQ = q.Shape[^2], dim = q.Shape[^1];
        if (packedQ && CountsProblem(queryCounts!, "QueryCounts", q.Shape[0], "q's rows (q.Shape[0], total_q)") is { } qCountsProblem)
        {
            return qCountsProblem;
        }

        if (packedK && kNew is null)
        {
            return new Problem("AppendCounts", "AppendCounts (cu_seqlens_k_new) counts new keys, but kNew and vNew are not given.");
        }

        int[]? rows = args.CacheRows;
        if (rows is null && batch != cache.BatchSize)
        {
            return new Problem(nameof(q), $"q has batch {batch} but the cache holds {cache.BatchSize} sequences (cache_seqlens).");
        }

        if (rows is not null)
        {
            if (batch != rows.Length)
            {
                return new Problem(nameof(q), $"q has batch {batch} but CacheRows picks {rows.Length} rows of the cache (cache_batch_idx).");
            }

            if (cache.RowsProblem(rows) is { } rowsProblem)
            {
                return new Problem("CacheRows", rowsProblem);
            }
        }

        if (seqLenNew < 1 || seqLenNew > int.MaxValue || (packedQ && (q.Shape[0] < 1 || q.Shape[0] > int.MaxValue)))
        {
            return new Problem(nameof(q), packedQ
                ? $"q must hold 1 or more packed rows (total_q); it is {q}."
                : $"q must hold 1 or more new tokens per sequence (seqlen_new); it is {q}.");
        }

        if (dim != cache.HeadDim)
        {
            return new Problem(nameof(q), $"q has head_dim {dim} but the cache has head_dim {cache.HeadDim} (k_cache).");
        }

        if (HeadDimProblem(dim) is { } headDimProblem)
        {
            return new Problem(nameof(q), headDimProblem);
        }

        if (cache.IsFloat8 && dim % 16 != 0)
        {
            return new Problem(nameof(q), $"An fp8 (Float8E4M3) cache needs a head dim that is a multiple of 16 (its rows are read as 16-byte chunks); q and the cache have head_dim {dim}.");
        }

        if (headsQ % cache.HeadsKv != 0)
        {
            return new Problem(nameof(q), $"The cache has {cache.HeadsKv} heads (heads_kv), which does not divide q's {headsQ} heads.");
        }

        if (!q.HasShapeOf(output))
        {
            return new Problem(nameof(output), $"output must have q's shape [{string.Join(", ", q.Shape)}]; it is {output}.");
        }

        if (kNew is not null)
        {
            if ((TensorProblem(kNew, nameof(kNew), varlen: packedK, device) ?? TensorProblem(vNew!, nameof(vNew), varlen: packedK, device) ??
                 DataTypeProblem(kNew, nameof(kNew), q) ?? DataTypeProblem(vNew!, nameof(vNew), q)) is { } newProblem)
            {
                return newProblem;
            }

            if (packedK)
            {
                // Packed new keys (AppendCounts): [totalKNew, headsKv, headDim].
                if (kNew.Shape[0] < 1 || kNew.Shape[0] > int.MaxValue || kNew.Shape[1] != cache.HeadsKv || kNew.Shape[2] != dim)
                {
                    return new Problem(
                        nameof(kNew),
                        $"kNew (k_new) must be [total_k_new (1 or more), heads_kv={cache.HeadsKv}, head_dim={dim}] with AppendCounts; it is {kNew}.");
                }

                if (CountsProblem(appendCounts!, "AppendCounts", kNew.Shape[0], "kNew's rows (kNew.Shape[0], total_k_new)") is { } kCountsProblem)
                {
                    return kCountsProblem;
                }

                if (appendCounts!.Length != batch)
                {
                    return new Problem("AppendCounts", $"AppendCounts has {appendCounts.Length} counts but the step has {batch} sequences.");
                }
            }
            else if (kNew.Shape[0] != batch || kNew.Shape[1] < 1 || kNew.Shape[1] > int.MaxValue || kNew.Shape[2] != cache.HeadsKv || kNew.Shape[3] != dim)
            {
                // The appended count (seqlen_knew) is free: more or fewer than q's new tokens.
                return new Problem(
                    nameof(kNew),
                    $"kNew (k_new) must be [batch={batch}, seqlen_knew (1 or more), heads_kv={cache.HeadsKv}, head_dim={dim}] to match q and the cache; it is {kNew}.");
            }

            if (!kNew.HasShapeOf(vNew!))
            {
                return new Problem(nameof(vNew), $"vNew (v_new) must have kNew's shape [{string.Join(", ", kNew.Shape)}]; it is {vNew}.");
            }

            if (cache.AppendProblem(args.AppendedPerSequence(), rows) is { } capacityProblem)
            {
                return new Problem(nameof(cache), capacityProblem);
            }
        }

        if (args.Rotary is { } rotary)
        {
            if (kNew is null)
            {
                return new Problem(
                    "Rotary",
                    "Rotary embedding is applied only in a call that appends (kNew and vNew), as flash-attn raises otherwise: " +
                    "rotate the queries yourself or pass the new tokens.");
            }

            if (rotary.Problem(q.DataType, dim) is { } rotaryProblem)
            {
                return new Problem("Rotary", rotaryProblem);
            }

            if (device is not null && ((rotary.Cos.Device is { } cd && cd.Ordinal != device.Ordinal) || (rotary.Sin.Device is { } sd && sd.Ordinal != device.Ordinal)))
            {
                return new Problem("Rotary", $"The rotary tables must live on cuda:{device.Ordinal}, where this FlashAttention runs.");
            }
        }

        if (lse is not null)
        {
            if (lse.DataType != DataType.Float32)
            {
                return new Problem("logSumExp", $"logSumExp must be Float32; it is {lse.DataType}.");
            }

            if (packedQ && (lse.Rank != 2 || lse.Shape[0] != headsQ || lse.Shape[1] != q.Shape[0]))
            {
                return new Problem("logSumExp", $"logSumExp must be [heads_q={headsQ}, total_q={q.Shape[0]}] with QueryCounts; it is {lse}.");
            }

            if (!packedQ && (lse.Rank != 3 || lse.Shape[0] != batch || lse.Shape[1] != headsQ || lse.Shape[2] != seqLenNew))
            {
                return new Problem("logSumExp", $"logSumExp must be [batch={batch}, heads_q={headsQ}, seqlen_new={seqLenNew}]; it is {lse}.");
            }

            if (device is not null && lse.Device is not null && lse.Device.Ordinal != device.Ordinal)
            {
                return new Problem("logSumExp", $"logSumExp lives on cuda:{lse.Device.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.");
            }
        }

        if (device is not null && cache.Device is not null && cache.Device.Ordinal != device.Ordinal)
        {
            return new Problem(nameof(cache), $"The cache lives on cuda:{cache.Device.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.");
        }

        if (AlibiProblem(args.AlibiSlopes, batch, headsQ, device) is { } alibiProblem)
        {
            return alibiProblem;
        }

        return null;
    }

    /// <summary>
    /// The descale factors of the call (its own <see cref="DecodeArguments.KeyDescale"/>, else the cache's): both or
    /// neither; required over an fp8 cache and refused over a 16-bit one; Float32 <c>[headsKv]</c> or <c>[1]</c>, on this
    /// instance's device. Null when they pass.
    /// </summary>
    private static Problem? DescalesProblem(in DecodeArguments args, CudaDevice? device)
    {
        KvCache cache = args.Cache;
        if (KvCache.DescalePairProblem(args.KeyDescale, args.ValueDescale, cache.DataType, "KeyDescale", "ValueDescale", "the cache (k_cache)") is { } pair)
        {
            return new Problem(pair.ParamName, pair.Message);
        }

        var (keyDescale, valueDescale) = args.Descales;
        if (cache.IsFloat8 && (keyDescale is null || valueDescale is null))
        {
            return new Problem(
                "KeyDescale",
                "The cache (k_cache) holds Float8E4M3 keys and values but the call has no descale factors (k_descale, v_descale): " +
                "wrap the cache with keyDescale and valueDescale, or pass DecodeArguments.KeyDescale and ValueDescale.");
        }

        if ((KvCache.DescaleProblem(keyDescale, "KeyDescale", "k_descale", cache.HeadsKv) ??
             KvCache.DescaleProblem(valueDescale, "ValueDescale", "v_descale", cache.HeadsKv)) is { } shape)
        {
            return new Problem(shape.ParamName, shape.Message);
        }

        foreach (var (t, name) in new[] { (keyDescale, "KeyDescale"), (valueDescale, "ValueDescale") })
        {
            if (device is not null && t?.Device is { } d && d.Ordinal != device.Ordinal)
            {
                return new Problem(name, $"{name} (the descale factors) lives on cuda:{d.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.");
            }
        }

        return null;
    }

    /// <summary>Why per-sequence <paramref name="counts"/> cannot describe <paramref name="rows"/> packed rows, or null.</summary>
    private static Problem? CountsProblem(int[] counts, string name, long rows, string rowsWhat)
    {
        long sum = 0;
        for (int b = 0; b < counts.Length; b++)
        {
            if (counts[b] < 0)
            {
                return new Problem(name, $"{name}[{b}] is {counts[b]}; counts must be 0 or more.");
            }

            sum += counts[b];
        }

        if (counts.Length == 0)
        {
            return new Problem(name, $"{name} is empty; give one count per sequence of the step.");
        }

        return sum > rows ? new Problem(name, $"{name} add up to {sum}, more than the {rows} rows of {rowsWhat}.") : null;
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "Decode q={Q} cache={Cache} append={Append} lse={WithLse} causal={Causal} scale={Scale} {Masks} num_splits={Splits} stream={Stream}")]
    private static partial void LogDecode(
        ILogger logger, string q, string cache, bool append, bool withLse, bool causal, double scale, string masks, int splits, string stream);
}
