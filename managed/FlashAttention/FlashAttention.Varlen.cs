using FlashAttn.Native;
using Microsoft.Extensions.Logging;

namespace FlashAttn;

/// <content>Variable-length batches: their entry points and what only they need (the cu_seqlens fields and checks).</content>
public sealed partial class FlashAttention
{
    /// <summary>
    /// Validates the arguments of <see cref="ForwardVarlen"/> without touching a GPU (works on a machine without one,
    /// but needs the native library). Neither tensor memory nor the device prefix sums are read; the batch's host
    /// copies, when it has them, are checked.
    /// </summary>
    /// <param name="q">Packed queries <c>[totalQ, headsQ, headDim]</c>, Float16, BFloat16 or Float8E4M3; headDim a multiple of 8 (16 for Float8E4M3).</param>
    /// <param name="k">
    /// Packed keys <c>[totalK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ. With a paged batch
    /// (<see cref="VarlenBatch.BlockTable"/>): a pool of blocks <c>[numBlocks, blockSize, headsKv, headDim]</c>.
    /// </param>
    /// <param name="v">
    /// Packed values <c>[totalK, headsKv, headDimV]</c>, q's dtype: k's shape, or with a head dim of its own (see
    /// <see cref="ForwardVarlen"/>); with a paged batch, a pool <c>[numBlocks, blockSize, headsKv, headDimV]</c> (k's blocks).
    /// </param>
    /// <param name="output">Output <c>[totalQ, headsQ, headDimV]</c> (q's shape with v's head dim), q's dtype (BFloat16 when q is Float8E4M3).</param>
    /// <param name="batch">The sequence boundaries, and the block table when the keys and values are paged (<see cref="VarlenBatch.WithBlockTable"/>).</param>
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
    public static FlashAttentionStatus CheckVarlen(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        VarlenBatch batch,
        out string message,
        DeviceTensor? logSumExp = null,
        AttentionOptions? options = null,
        int computeCapability = 0) =>
        Check(new AttentionArguments(q, k, v, output, logSumExp, RequireBatch(batch)), out message, options, computeCapability);

    /// <summary>
    /// Attention over a variable-length batch: the sequences of <paramref name="batch"/> are packed one after another
    /// along the first dimension, and each attends only within itself (masks, window and the bottom-right diagonal are
    /// placed per sequence). Queued on <paramref name="stream"/>; returns without waiting.
    /// </summary>
    /// <param name="q">
    /// Packed queries <c>[totalQ, headsQ, headDim]</c>, Float16, BFloat16 or Float8E4M3, last dimension contiguous;
    /// headDim a multiple of 8 (16 for Float8E4M3). Sequence <c>b</c> is rows <c>CuSeqlensQ[b] .. CuSeqlensQ[b + 1] - 1</c>.
    /// </param>
    /// <param name="k">
    /// Packed keys <c>[totalK, headsKv, headDim]</c>, q's dtype; headsKv divides headsQ. Sequence <c>b</c> is rows
    /// <c>CuSeqlensK[b] .. CuSeqlensK[b + 1] - 1</c>. With a paged batch (<see cref="VarlenBatch.BlockTable"/>): a pool of
    /// blocks <c>[numBlocks, blockSize, headsKv, headDim]</c>, key <c>j</c> of sequence <c>b</c> being row
    /// <c>j % blockSize</c> of block <c>BlockTable[b, j / blockSize]</c> (see the remarks).
    /// </param>
    /// <param name="v">
    /// Packed values <c>[totalK, headsKv, headDimV]</c>, q's dtype: k's shape, or with a head dim of its own (headDimV: the
    /// pairs <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/> describes). With a paged batch: a
    /// pool <c>[numBlocks, blockSize, headsKv, headDimV]</c>, k's numBlocks and blockSize.
    /// </param>
    /// <param name="output">
    /// Written: <c>[totalQ, headsQ, headDimV]</c> (q's shape with v's head dim), q's dtype (BFloat16 when q is Float8E4M3);
    /// must not overlap the inputs.
    /// </param>
    /// <param name="batch">
    /// The sequence boundaries, and the block table when the keys and values are paged
    /// (<see cref="VarlenBatch.WithBlockTable"/>); keep it undisposed until the work is done.
    /// </param>
    /// <param name="logSumExp">
    /// Optional, written: <c>[headsQ, totalQ]</c> Float32, natural log with the scale included; +infinity for rows that
    /// see no key.
    /// </param>
    /// <param name="options">Options, or null for <see cref="AttentionOptions.Default"/>.</param>
    /// <param name="stream">The stream to queue on, or null for the legacy default stream.</param>
    /// <remarks>
    /// Graph-safe like <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>. Rows of q past the batch's last sequence are not written.
    /// fp8 descale factors (<c>[sequences, headsKv]</c>) go in <see cref="AttentionArguments.QDescale"/> and its
    /// siblings, with <see cref="Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>.
    /// <para>
    /// Paged K/V (C ABI 0.11, FlashAttention-2's <c>block_table</c>): with a batch from
    /// <see cref="VarlenBatch.WithBlockTable"/>, k and v are pools of blocks as above; <see cref="VarlenBatch.CuSeqlensK"/>
    /// gives the key lengths only, <see cref="VarlenBatch.MaxSeqLenK"/> may not exceed <c>maxBlocksPerSequence * blockSize</c>
    /// (<see cref="ArgumentException"/>), and blockSize must be a multiple of 128 (else
    /// <see cref="FlashAttentionException"/> with <see cref="FlashAttentionStatus.Unsupported"/>). Served by both kernel
    /// paths in Float16 and BFloat16 with every forward option but dropout (causal, window, softcap, ALiBi, sinks, GQA, a
    /// V head dim of its own); Float8E4M3 and <see cref="AttentionArguments.DropoutP"/> &gt; 0 are
    /// <see cref="FlashAttentionStatus.Unsupported"/> (paged K/V serves a KV cache at inference; gather the keys and values
    /// into packed tensors to train with dropout). Table entries past
    /// a sequence's last page are never read and rows of its last block past its length never used (they may hold
    /// anything, NaN included). A used entry outside <c>0 .. numBlocks - 1</c> is clamped by the kernels and reported as
    /// <see cref="FlashAttentionStatus.DeviceCheckFailed"/> naming block_table by <see cref="CheckDeviceErrors"/> or the
    /// next call on this instance. <see cref="QuerySupport(SupportQuery)"/> with <see cref="SupportQuery.PagedKv"/> tells
    /// beforehand. The backward pass has no paged K/V.
    /// </para>
    /// </remarks>
    /// <exception cref="ArgumentNullException">A required tensor or the batch is null.</exception>
    /// <exception cref="ArgumentException">The managed side can already tell the arguments are wrong.</exception>
    /// <exception cref="FlashAttentionException">The native library refused or failed the call.</exception>
    /// <exception cref="ObjectDisposedException">This instance, the batch, a tensor's buffer or the stream was disposed.</exception>
    public void ForwardVarlen(
        DeviceTensor q,
        DeviceTensor k,
        DeviceTensor v,
        DeviceTensor output,
        VarlenBatch batch,
        DeviceTensor? logSumExp = null,
        AttentionOptions? options = null,
        CudaStream? stream = null) =>
        Forward(new AttentionArguments(q, k, v, output, logSumExp, RequireBatch(batch)), options, stream);

    /// <summary>
    /// The batch a positional <c>*Varlen</c> entry point was given, which must not be null (a null batch would turn the
    /// record form into a fixed-length call).
    /// </summary>
    private static VarlenBatch RequireBatch(VarlenBatch batch) => batch ?? throw new ArgumentNullException(nameof(batch));

    /// <summary>
    /// The variable-length fields <c>fa_forward_params_t</c> and <c>fa_backward_params_t</c> share. <see cref="From"/>
    /// takes a batch whose cu_seqlens buffers the caller has leased (their owners' pointers) and whose host copies it
    /// has pinned (null when the batch has none).
    /// </summary>
    private readonly unsafe struct VarlenFields
    {
        public int* CuSeqlensQ { get; init; }

        public int* CuSeqlensK { get; init; }

        public int* HostQ { get; init; }

        public int* HostK { get; init; }

        public int Batch { get; init; }

        public int MaxSeqLenQ { get; init; }

        public int MaxSeqLenK { get; init; }

        public static VarlenFields From(VarlenBatch batch, IntPtr cuQOwner, IntPtr cuKOwner, int* hostQ, int* hostK) => new()
        {
            CuSeqlensQ = (int*)batch.CuSeqlensQ.ToNative(cuQOwner).data,
            CuSeqlensK = (int*)batch.CuSeqlensK.ToNative(cuKOwner).data,
            HostQ = hostQ,
            HostK = hostK,
            Batch = batch.BatchSize,
            MaxSeqLenQ = batch.MaxSeqLenQ,
            MaxSeqLenK = batch.MaxSeqLenK,
        };
    }

    /// <summary>
    /// The checks of a variable-length batch against the packed q and k, or, for a paged batch, k's pool of blocks (after
    /// the tensor checks); null when they pass.
    /// </summary>
    private static Problem? BatchProblem(VarlenBatch batch, long totalQ, DeviceTensor k, CudaDevice? device)
    {
        if (device is not null && (batch.CuSeqlensQ.Device ?? batch.CuSeqlensK.Device) is { } batchDevice && batchDevice.Ordinal != device.Ordinal)
        {
            return new Problem(nameof(batch), $"The batch's cu_seqlens live on cuda:{batchDevice.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.");
        }

        if (batch.TotalQ is { } endQ && endQ > totalQ)
        {
            return new Problem(nameof(batch), $"The batch's cu_seqlens_q ends at {endQ} but q has only {totalQ} rows (total_q).");
        }

        if (batch.BlockTable is not { } table)
        {
            return batch.TotalK is { } endK && endK > k.Shape[0]
                ? new Problem(nameof(batch), $"The batch's cu_seqlens_k ends at {endK} but k has only {k.Shape[0]} rows (total_k).")
                : null;
        }

        // Paged K/V: cu_seqlens_k gives lengths only (its values index no tensor); the blocks say where the keys are.
        if (device is not null && table.Device is { } tableDevice && tableDevice.Ordinal != device.Ordinal)
        {
            return new Problem(nameof(batch), $"The batch's block_table lives on cuda:{tableDevice.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.");
        }

        long blockSize = k.Shape[1], maxBlocks = table.Shape[1];
        long capacity = maxBlocks <= long.MaxValue / Math.Max(blockSize, 1) ? blockSize * maxBlocks : long.MaxValue;
        return batch.MaxSeqLenK > capacity
            ? new Problem(
                nameof(batch),
                $"The batch's max_seqlen_k is {batch.MaxSeqLenK} but its block_table holds {maxBlocks} blocks of {blockSize} keys per sequence " +
                $"(block_table.shape[1] x k.shape[1] = {capacity}); a sequence's keys must fit its blocks.")
            : null;
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "ForwardVarlen q={Q} k={K} batch={Batch} lse={WithLse} causal={Causal} alignment={Alignment} scale={Scale} {Masks} path={Path} stream={Stream}")]
    private static partial void LogForwardVarlen(
        ILogger logger, string q, string k, string batch, bool withLse, bool causal, CausalAlignment alignment, double scale, string masks, KernelPath path, string stream);
}
