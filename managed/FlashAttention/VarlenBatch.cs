namespace FlashAttn;

/// <summary>
/// The sequence boundaries of a variable-length batch for <see cref="FlashAttention.ForwardVarlen"/>: device arrays
/// <c>cu_seqlens_q</c> and <c>cu_seqlens_k</c> (int32, <c>[BatchSize + 1]</c>, prefix sums of the lengths, starting at
/// 0), optional host copies of them, and the longest sequence on each side.
/// </summary>
/// <remarks>
/// <para>
/// Sequences are packed one after another: q and the output are <c>[totalQ, headsQ, headDim]</c>, k and v
/// <c>[totalK, headsKv, headDim]</c>; sequence <c>b</c> spans query rows <c>CuSeqlensQ[b] .. CuSeqlensQ[b + 1] - 1</c>
/// and key rows <c>CuSeqlensK[b] .. CuSeqlensK[b + 1] - 1</c>. Empty sequences are allowed. With a
/// <see cref="BlockTable"/> the keys and values are paged instead (see below).
/// </para>
/// <para>
/// With host copies (always for <see cref="FromLengths"/>), the native library checks them before every launch:
/// they start at 0, never decrease, end within the tensors (q; k unless the batch is paged) and have no length above the
/// maxima. Without host copies (<see cref="FromDevice"/> with none) the device arrays are trusted: a wrong array yields
/// wrong values for the sequences it describes, but every read and write still stays inside the tensors.
/// </para>
/// <para>
/// Paged K/V (C ABI 0.11, FlashAttention-2's <c>block_table</c> of <c>flash_attn_varlen_func</c>): a batch made by
/// <see cref="WithBlockTable"/> carries a block table, and its keys and values live in a pool of fixed-size blocks, as a
/// paged KV cache (chunked prefill over the cache, prefix sharing). k is then <c>[numBlocks, blockSize, headsKv, headDim]</c>
/// and v <c>[numBlocks, blockSize, headsKv, headDimV]</c> (the same numBlocks and blockSize); key <c>j</c> of sequence
/// <c>b</c> is row <c>j % blockSize</c> of block <c>BlockTable[b, j / blockSize]</c>. <see cref="CuSeqlensK"/> keeps
/// giving the key lengths (its values index no tensor, so the host copy is checked for order and lengths only), and
/// <see cref="MaxSeqLenK"/> may not exceed the table's capacity, <c>maxBlocksPerSequence * blockSize</c>. The forward
/// pass alone takes it (the backward has none).
/// </para>
/// <para>
/// A batch made by <see cref="FromLengths"/> owns its device arrays and frees them on <see cref="Dispose"/>; one made
/// by <see cref="FromDevice"/> or <see cref="WithBlockTable"/> owns nothing. The device arrays are read by the kernel
/// when it runs, so keep the batch alive (undisposed) until the work that uses it is done.
/// </para>
/// </remarks>
public sealed class VarlenBatch : IDisposable
{
    private readonly DeviceBuffer<int>? _ownedQ;
    private readonly DeviceBuffer<int>? _ownedK;
    private readonly int[]? _hostQ;
    private readonly int[]? _hostK;
    private readonly VarlenBatch? _source;
    private int _disposed;

    private VarlenBatch(
        DeviceTensor cuQ, DeviceTensor cuK, int[]? hostQ, int[]? hostK, int maxQ, int maxK, DeviceBuffer<int>? ownedQ, DeviceBuffer<int>? ownedK)
    {
        CuSeqlensQ = cuQ;
        CuSeqlensK = cuK;
        _hostQ = hostQ;
        _hostK = hostK;
        MaxSeqLenQ = maxQ;
        MaxSeqLenK = maxK;
        _ownedQ = ownedQ;
        _ownedK = ownedK;
        BatchSize = (int)cuQ.Shape[0] - 1;
    }

    /// <summary>A batch with <paramref name="source"/>'s boundaries and a block table (<see cref="WithBlockTable"/>); owns nothing.</summary>
    private VarlenBatch(VarlenBatch source, DeviceTensor blockTable)
        : this(source.CuSeqlensQ, source.CuSeqlensK, source._hostQ, source._hostK, source.MaxSeqLenQ, source.MaxSeqLenK, ownedQ: null, ownedK: null)
    {
        _source = source;
        BlockTable = blockTable;
    }

    /// <summary>Number of sequences.</summary>
    public int BatchSize { get; }

    /// <summary>Longest query sequence; sizes the launch (longer sequences would be cut).</summary>
    public int MaxSeqLenQ { get; }

    /// <summary>Longest key sequence.</summary>
    public int MaxSeqLenK { get; }

    /// <summary>Device prefix sums of the query lengths: int32, rank 1, <c>[BatchSize + 1]</c>.</summary>
    public DeviceTensor CuSeqlensQ { get; }

    /// <summary>
    /// Device prefix sums of the key lengths: int32, rank 1, <c>[BatchSize + 1]</c>; the rows of packed k and v, or, with
    /// a <see cref="BlockTable"/>, the key lengths only (the blocks say where the keys are).
    /// </summary>
    public DeviceTensor CuSeqlensK { get; }

    /// <summary>Whether host copies of the prefix sums are held (then the native library validates them before each launch).</summary>
    public bool HasHostCopies => _hostQ is not null;

    /// <summary>Host copy of <see cref="CuSeqlensQ"/>, or empty when none was given.</summary>
    public ReadOnlyMemory<int> HostCuSeqlensQ => _hostQ;

    /// <summary>Host copy of <see cref="CuSeqlensK"/>, or empty when none was given.</summary>
    public ReadOnlyMemory<int> HostCuSeqlensK => _hostK;

    /// <summary>Total query rows (<c>CuSeqlensQ[BatchSize]</c>), or null when there are no host copies.</summary>
    public int? TotalQ => _hostQ?[^1];

    /// <summary>
    /// Total key rows (<c>CuSeqlensK[BatchSize]</c>: the keys of every sequence, in the pool's blocks when the batch is
    /// paged), or null when there are no host copies.
    /// </summary>
    public int? TotalK => _hostK?[^1];

    /// <summary>
    /// The block table of paged K/V (<see cref="WithBlockTable"/>): device int32 <c>[BatchSize, maxBlocksPerSequence]</c>,
    /// the block of each page of each sequence; null when k and v are packed <c>[totalK, headsKv, headDim]</c>.
    /// </summary>
    public DeviceTensor? BlockTable { get; }

    /// <summary>Whether the keys and values are paged (<see cref="BlockTable"/> is set).</summary>
    public bool IsPaged => BlockTable is not null;

    /// <summary>
    /// Whether <see cref="Dispose"/> was called, on this batch or, for one made by <see cref="WithBlockTable"/>, on the
    /// batch it was made from (which may own the device prefix sums it shares).
    /// </summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0 || (_source?.IsDisposed ?? false);

    /// <summary>The device the arrays (and the block table) live on, or null when they were wrapped from raw pointers.</summary>
    public CudaDevice? Device => CuSeqlensQ.Device ?? CuSeqlensK.Device ?? BlockTable?.Device;

    /// <summary>
    /// Builds a batch from per-sequence lengths: computes the prefix sums, copies them to new device arrays on
    /// <paramref name="device"/> (waiting for the copy) and keeps the host copies so the native library validates them.
    /// </summary>
    /// <param name="device">The device to allocate on.</param>
    /// <param name="seqLensQ">Query length of each sequence (0 or more each; at least one sequence).</param>
    /// <param name="seqLensK">Key length of each sequence (0 or more each), as many as <paramref name="seqLensQ"/>.</param>
    /// <param name="stream">Stream to order the copies on (the call waits for it), or null for the legacy default stream.</param>
    /// <returns>A batch that owns its device arrays.</returns>
    /// <exception cref="ArgumentException">
    /// The counts differ, there is no sequence, a length is negative, or a total exceeds <see cref="int.MaxValue"/>.
    /// </exception>
    /// <exception cref="FlashAttentionException">The allocation or the copy failed.</exception>
    public static VarlenBatch FromLengths(CudaDevice device, ReadOnlySpan<int> seqLensQ, ReadOnlySpan<int> seqLensK, CudaStream? stream = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (seqLensQ.Length != seqLensK.Length)
        {
            throw new ArgumentException(
                $"seqLensQ has {seqLensQ.Length} sequences but seqLensK has {seqLensK.Length}; give one query and one key length per sequence.",
                nameof(seqLensK));
        }

        int[] cuQ = PrefixSums(seqLensQ, nameof(seqLensQ), out int maxQ);
        int[] cuK = PrefixSums(seqLensK, nameof(seqLensK), out int maxK);

        DeviceBuffer<int>? q = null, k = null;
        try
        {
            q = new DeviceBuffer<int>(device, cuQ.Length);
            k = new DeviceBuffer<int>(device, cuK.Length);
            q.CopyFrom(cuQ, stream);
            k.CopyFrom(cuK, stream);
            return new VarlenBatch(q.AsTensor(cuQ.Length), k.AsTensor(cuK.Length), cuQ, cuK, maxQ, maxK, q, k);
        }
        catch
        {
            q?.Dispose();
            k?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Wraps prefix-sum arrays already on the device (owned by the caller, who must keep them alive and unchanged while
    /// work that uses them is queued). Disposing the batch does not free them.
    /// </summary>
    /// <param name="cuSeqlensQ">Int32, rank 1, <c>[batch + 1]</c>, contiguous: prefix sums of the query lengths, starting at 0.</param>
    /// <param name="cuSeqlensK">Int32, rank 1, same length: prefix sums of the key lengths, starting at 0.</param>
    /// <param name="maxSeqLenQ">The longest query sequence (0 or more); it sizes the launch, so a longer sequence would be cut.</param>
    /// <param name="maxSeqLenK">The longest key sequence (0 or more).</param>
    /// <param name="hostCopyQ">
    /// Optional host copy of <paramref name="cuSeqlensQ"/>'s values. Give both host copies or neither. With them the
    /// values are checked here and by the native library before each launch. Without them the device arrays are
    /// trusted: wrong values give wrong results for the sequences they describe, but no read or write outside the
    /// tensors.
    /// </param>
    /// <param name="hostCopyK">Optional host copy of <paramref name="cuSeqlensK"/>'s values.</param>
    /// <returns>A batch that owns nothing.</returns>
    /// <exception cref="ArgumentException">
    /// A tensor is not an int32 contiguous vector of at least 2 elements, the lengths differ, a maximum is negative,
    /// only one host copy is given, or a host copy has the wrong length, does not start at 0, decreases, or has a
    /// sequence longer than its maximum.
    /// </exception>
    public static VarlenBatch FromDevice(
        DeviceTensor cuSeqlensQ,
        DeviceTensor cuSeqlensK,
        int maxSeqLenQ,
        int maxSeqLenK,
        ReadOnlySpan<int> hostCopyQ = default,
        ReadOnlySpan<int> hostCopyK = default)
    {
        ArgumentNullException.ThrowIfNull(cuSeqlensQ);
        ArgumentNullException.ThrowIfNull(cuSeqlensK);
        RequireVector(cuSeqlensQ, nameof(cuSeqlensQ));
        RequireVector(cuSeqlensK, nameof(cuSeqlensK));
        if (cuSeqlensQ.Shape[0] != cuSeqlensK.Shape[0])
        {
            throw new ArgumentException(
                $"cuSeqlensQ has {cuSeqlensQ.Shape[0]} elements but cuSeqlensK has {cuSeqlensK.Shape[0]}; both are [batch + 1].", nameof(cuSeqlensK));
        }

        if (cuSeqlensQ.Device is { } dq && cuSeqlensK.Device is { } dk && dq.Ordinal != dk.Ordinal)
        {
            throw new ArgumentException(
                $"cuSeqlensQ lives on cuda:{dq.Ordinal} but cuSeqlensK on cuda:{dk.Ordinal}.", nameof(cuSeqlensK));
        }

        ArgumentOutOfRangeException.ThrowIfNegative(maxSeqLenQ);
        ArgumentOutOfRangeException.ThrowIfNegative(maxSeqLenK);
        if (hostCopyQ.IsEmpty != hostCopyK.IsEmpty)
        {
            throw new ArgumentException(
                "Give host copies of both cuSeqlensQ and cuSeqlensK, or of neither.", hostCopyQ.IsEmpty ? nameof(hostCopyQ) : nameof(hostCopyK));
        }

        int[]? hostQ = null, hostK = null;
        if (!hostCopyQ.IsEmpty)
        {
            hostQ = CheckHostCopy(hostCopyQ, cuSeqlensQ.Shape[0], maxSeqLenQ, nameof(hostCopyQ), nameof(maxSeqLenQ));
            hostK = CheckHostCopy(hostCopyK, cuSeqlensK.Shape[0], maxSeqLenK, nameof(hostCopyK), nameof(maxSeqLenK));
        }

        return new VarlenBatch(cuSeqlensQ, cuSeqlensK, hostQ, hostK, maxSeqLenQ, maxSeqLenK, ownedQ: null, ownedK: null);
    }

    /// <summary>
    /// A batch with this one's sequence boundaries (the same device prefix sums, host copies and maxima, shared, not
    /// copied) whose keys and values are paged through <paramref name="blockTable"/> (C ABI 0.11, FlashAttention-2's
    /// <c>block_table</c> of <c>flash_attn_varlen_func</c>), for <see cref="FlashAttention.ForwardVarlen"/>,
    /// <see cref="FlashAttention.CheckVarlen"/> and <see cref="AttentionArguments.Batch"/>.
    /// </summary>
    /// <param name="blockTable">
    /// Device Int32, rank 2, <c>[BatchSize, maxBlocksPerSequence]</c> (any strides of 1 or more, 4-byte aligned), on the
    /// device of the prefix sums: key <c>j</c> of sequence <c>b</c> is row <c>j % blockSize</c> of block
    /// <c>blockTable[b, j / blockSize]</c> of the pools k <c>[numBlocks, blockSize, headsKv, headDim]</c> and v
    /// <c>[numBlocks, blockSize, headsKv, headDimV]</c>. The entries of the pages a sequence uses must lie in
    /// <c>0 .. numBlocks - 1</c>: the kernels clamp one outside (no access leaves k or v) and the context reports it as
    /// <see cref="FlashAttentionStatus.DeviceCheckFailed"/> naming block_table (from
    /// <see cref="FlashAttention.CheckDeviceErrors"/> or the next call). Entries past a sequence's last page are never
    /// read, and rows of its last block past its length never used (they may hold anything, NaN included). Owned by the
    /// caller, who keeps it alive and unchanged while work that uses it is queued; the kernel reads it when it runs.
    /// </param>
    /// <returns>
    /// A batch that owns nothing: keep this batch (which may own the prefix sums) undisposed while the new one is used;
    /// disposing this one makes the new one disposed too. Called on a batch that has a block table already, the new
    /// table replaces it, and the new batch depends, as that one does, on the batch the boundaries came from.
    /// </returns>
    /// <remarks>
    /// The call checks, beyond this method, that k and v are such pools with a block size that is a multiple of 128
    /// (others are <see cref="FlashAttentionStatus.Unsupported"/>), that <see cref="MaxSeqLenK"/> fits
    /// <c>maxBlocksPerSequence * blockSize</c>, that q is Float16 or BFloat16 (Float8E4M3 with a block table is
    /// <see cref="FlashAttentionStatus.Unsupported"/>) and that the call has no dropout (<see cref="AttentionArguments.DropoutP"/>
    /// &gt; 0 with a block table is <see cref="FlashAttentionStatus.Unsupported"/>). Every other forward option applies as
    /// to packed keys (causal, window, softcap, ALiBi, sinks, GQA, a V head dim of its own), on both kernel paths. The backward
    /// pass has no paged K/V: it refuses a paged batch (<see cref="ArgumentException"/>, or
    /// <see cref="FlashAttentionStatus.InvalidArgument"/> from its check; gather the keys and values first).
    /// </remarks>
    /// <exception cref="ArgumentNullException"><paramref name="blockTable"/> is null.</exception>
    /// <exception cref="ArgumentException">
    /// <paramref name="blockTable"/> is not an Int32 matrix of <see cref="BatchSize"/> rows and 1 or more columns, or it
    /// lives on another device than the prefix sums.
    /// </exception>
    /// <exception cref="ObjectDisposedException">This batch was disposed.</exception>
    public VarlenBatch WithBlockTable(DeviceTensor blockTable)
    {
        ArgumentNullException.ThrowIfNull(blockTable);
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (blockTable.DataType != DataType.Int32 || blockTable.Rank != 2)
        {
            throw new ArgumentException(
                $"blockTable (block_table) must be an Int32 matrix [batch={BatchSize}, max_blocks_per_seq]; it is {blockTable}.", nameof(blockTable));
        }

        if (blockTable.Shape[0] != BatchSize)
        {
            throw new ArgumentException(
                $"blockTable (block_table) has {blockTable.Shape[0]} rows but the batch has {BatchSize} sequences; it is [batch, max_blocks_per_seq], one row of blocks per sequence.",
                nameof(blockTable));
        }

        if (blockTable.Shape[1] < 1)
        {
            throw new ArgumentException(
                $"blockTable (block_table) needs 1 or more columns (max_blocks_per_seq); it is {blockTable}.", nameof(blockTable));
        }

        if (blockTable.Device is { } td && (CuSeqlensQ.Device ?? CuSeqlensK.Device) is { } bd && td.Ordinal != bd.Ordinal)
        {
            throw new ArgumentException(
                $"blockTable lives on cuda:{td.Ordinal} but the batch's cu_seqlens on cuda:{bd.Ordinal}.", nameof(blockTable));
        }

        return new VarlenBatch(_source ?? this, blockTable);
    }

    /// <summary>
    /// Frees the device arrays when this batch owns them (<see cref="FromLengths"/>; a batch made by
    /// <see cref="WithBlockTable"/> frees nothing). Idempotent.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _ownedQ?.Dispose();
        _ownedK?.Dispose();
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"VarlenBatch({BatchSize} sequences, max_seqlen_q {MaxSeqLenQ}, max_seqlen_k {MaxSeqLenK}" +
        (_hostQ is null ? ", no host copies" : $", total_q {_hostQ[^1]}, total_k {_hostK![^1]}") +
        (BlockTable is { } table ? $", paged K/V: block_table [{table.Shape[0]}, {table.Shape[1]}]" : string.Empty) +
        (IsDisposed ? ", disposed)" : ")");

    /// <summary>The host copies (null when none), for pinning during a native call.</summary>
    internal int[]? HostQ => _hostQ;

    /// <summary>See <see cref="HostQ"/>.</summary>
    internal int[]? HostK => _hostK;

    private static int[] PrefixSums(ReadOnlySpan<int> lengths, string paramName, out int max)
    {
        if (lengths.IsEmpty)
        {
            throw new ArgumentException("A variable-length batch needs at least one sequence.", paramName);
        }

        var cu = new int[lengths.Length + 1];
        long total = 0;
        max = 0;
        for (int b = 0; b < lengths.Length; b++)
        {
            int n = lengths[b];
            if (n < 0)
            {
                throw new ArgumentException($"{paramName}[{b}] is {n}; sequence lengths must be 0 or more.", paramName);
            }

            total += n;
            if (total > int.MaxValue)
            {
                throw new ArgumentException(
                    $"The lengths in {paramName} add up to more than {int.MaxValue}, which int32 cu_seqlens cannot hold.", paramName);
            }

            cu[b + 1] = (int)total;
            max = Math.Max(max, n);
        }

        return cu;
    }

    private static void RequireVector(DeviceTensor t, string paramName)
    {
        if (t.DataType != DataType.Int32 || t.Rank != 1)
        {
            throw new ArgumentException($"{paramName} must be an Int32 vector [batch + 1]; it is {t}.", paramName);
        }

        if (t.Shape[0] < 2)
        {
            throw new ArgumentException(
                $"{paramName} must have batch + 1 elements for at least one sequence; it has {t.Shape[0]}.", paramName);
        }

        if (t.Strides[0] != 1)
        {
            throw new ArgumentException($"{paramName} must be contiguous (stride 1); it is {t}.", paramName);
        }
    }

    private static int[] CheckHostCopy(ReadOnlySpan<int> host, long expectedLength, int max, string paramName, string maxName)
    {
        if (host.Length != expectedLength)
        {
            throw new ArgumentException(
                $"{paramName} has {host.Length} elements but the device array has {expectedLength}.", paramName);
        }

        if (host[0] != 0)
        {
            throw new ArgumentException($"{paramName}[0] is {host[0]}; prefix sums start at 0.", paramName);
        }

        for (int b = 0; b + 1 < host.Length; b++)
        {
            long length = (long)host[b + 1] - host[b];
            if (length < 0)
            {
                throw new ArgumentException(
                    $"{paramName} decreases from {host[b]} to {host[b + 1]} at index {b + 1}; prefix sums never decrease.", paramName);
            }

            if (length > max)
            {
                throw new ArgumentException(
                    $"Sequence {b} has length {length} by {paramName}, above {maxName} = {max}.", paramName);
            }
        }

        return host.ToArray();
    }
}
