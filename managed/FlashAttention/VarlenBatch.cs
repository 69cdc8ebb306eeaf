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
/// and key rows <c>CuSeqlensK[b] .. CuSeqlensK[b + 1] - 1</c>. Empty sequences are allowed.
/// </para>
/// <para>
/// With host copies (always for <see cref="FromLengths"/>), the native library checks them before every launch:
/// they start at 0, never decrease, end within the tensors and have no length above the maxima. Without host copies
/// (<see cref="FromDevice"/> with none) the device arrays are trusted: a wrong array yields wrong values for the
/// sequences it describes, but every read and write still stays inside the tensors.
/// </para>
/// <para>
/// A batch made by <see cref="FromLengths"/> owns its device arrays and frees them on <see cref="Dispose"/>; one made
/// by <see cref="FromDevice"/> owns nothing. The device arrays are read by the kernel when it runs, so keep the batch
/// alive (undisposed) until the work that uses it is done.
/// </para>
/// </remarks>
public sealed class VarlenBatch : IDisposable
{
    private readonly DeviceBuffer<int>? _ownedQ;
    private readonly DeviceBuffer<int>? _ownedK;
    private readonly int[]? _hostQ;
    private readonly int[]? _hostK;
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

    /// <summary>Number of sequences.</summary>
    public int BatchSize { get; }

    /// <summary>Longest query sequence; sizes the launch (longer sequences would be cut).</summary>
    public int MaxSeqLenQ { get; }

    /// <summary>Longest key sequence.</summary>
    public int MaxSeqLenK { get; }

    /// <summary>Device prefix sums of the query lengths: int32, rank 1, <c>[BatchSize + 1]</c>.</summary>
    public DeviceTensor CuSeqlensQ { get; }

    /// <summary>Device prefix sums of the key lengths: int32, rank 1, <c>[BatchSize + 1]</c>.</summary>
    public DeviceTensor CuSeqlensK { get; }

    /// <summary>Whether host copies of the prefix sums are held (then the native library validates them before each launch).</summary>
    public bool HasHostCopies => _hostQ is not null;

    /// <summary>Host copy of <see cref="CuSeqlensQ"/>, or empty when none was given.</summary>
    public ReadOnlyMemory<int> HostCuSeqlensQ => _hostQ;

    /// <summary>Host copy of <see cref="CuSeqlensK"/>, or empty when none was given.</summary>
    public ReadOnlyMemory<int> HostCuSeqlensK => _hostK;

    /// <summary>Total query rows (<c>CuSeqlensQ[BatchSize]</c>), or null when there are no host copies.</summary>
    public int? TotalQ => _hostQ?[^1];

    /// <summary>Total key rows (<c>CuSeqlensK[BatchSize]</c>), or null when there are no host copies.</summary>
    public int? TotalK => _hostK?[^1];

    /// <summary>Whether <see cref="Dispose"/> was called.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>The device the arrays live on, or null when they were wrapped from raw pointers.</summary>
    public CudaDevice? Device => CuSeqlensQ.Device ?? CuSeqlensK.Device;

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

    /// <summary>Frees the device arrays when this batch owns them (<see cref="FromLengths"/>). Idempotent.</summary>
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
