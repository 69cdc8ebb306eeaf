using System.Runtime.InteropServices;
using FlashAttn.Native;

namespace FlashAttn.Internal;

/// <summary>
/// Small host-to-device copies queued on a stream (the sequence lengths and block-table rows a
/// <see cref="KvCache"/> keeps in step with its host copies, and an fp8 cache's descale factors). Each copy reads its own snapshot array, allocated on
/// the pinned object heap and never written after it is queued, so later updates cannot change what an earlier,
/// still-queued copy reads. The snapshot, a lease on the destination memory and a lease on the stream are held
/// until an event recorded after the copy has completed.
/// </summary>
/// <remarks>
/// Completed copies are retired lazily: only when more than <see cref="MaxPending"/> are outstanding is the oldest
/// waited for (by then the GPU has almost always passed it), and <see cref="WaitAll"/> retires them all. Not
/// thread-safe; its owner serialises calls.
/// </remarks>
internal sealed class PendingUploads
{
    /// <summary>How many copies may be outstanding before the oldest is waited for.</summary>
    public const int MaxPending = 32;

    private readonly Queue<Entry> _queue = new();

    /// <summary>Number of copies not yet retired.</summary>
    public int Count => _queue.Count;

    /// <summary>
    /// Queues a copy of <paramref name="source"/> (a snapshot the caller gives up) to element
    /// <paramref name="elementOffset"/> of the int32 tensor <paramref name="target"/> on <paramref name="stream"/>.
    /// </summary>
    /// <param name="target">A contiguous device tensor of 4-byte elements: int32, or float32 (an fp8 cache's descale factors, given as their bits).</param>
    /// <param name="elementOffset">First destination element, counted from the tensor's element 0.</param>
    /// <param name="source">The values; must not be written after this call.</param>
    /// <param name="stream">The stream, or null for the legacy default stream.</param>
    /// <param name="deviceOrdinal">The device the copy runs on (for the completion event).</param>
    public unsafe void Upload(DeviceTensor target, long elementOffset, int[] source, CudaStream? stream, int deviceOrdinal)
    {
        if (source.Length == 0)
        {
            return;
        }

        while (_queue.Count >= MaxPending)
        {
            Retire(_queue.Dequeue(), throwOnError: true);
        }

        NativeRuntime.EnsureLoaded();
        var entry = new Entry(source);
        try
        {
            entry.Target = Lease(target.Owner);
            entry.Stream = Lease(stream);
            nint streamPointer = stream is null ? 0 : stream.DangerousGetHandle();
            nint basePointer = target.Owner is null ? target.Pointer : target.ToNative(target.Owner.DangerousGetHandle()).data;
            nint destination = basePointer + (nint)(elementOffset * sizeof(int));
            nint evt = 0;
            Errors.ThrowIfFailed(NativeMethods.fa_event_create(deviceOrdinal, &evt));
            entry.Event = evt;
            fixed (int* pinned = source)
            {
                // The array lives on the pinned object heap, so the address stays valid after the fixed block.
                Errors.ThrowIfFailed(NativeMethods.fa_memcpy_async(destination, (nint)pinned, (nuint)source.Length * sizeof(int), streamPointer));
            }

            Errors.ThrowIfFailed(NativeMethods.fa_event_record(evt, streamPointer));
            _queue.Enqueue(entry);
        }
        catch
        {
            // If the copy may be queued but the event failed, wait for the whole stream before letting go.
            if (entry.Event != 0 && entry.Stream is not null)
            {
                _ = NativeMethods.fa_stream_synchronize(entry.Stream.DangerousGetHandle());
            }
            else if (entry.Event != 0 && stream is null)
            {
                _ = NativeMethods.fa_stream_synchronize(0);
            }

            entry.Release();
            throw;
        }
    }

    /// <summary>A snapshot array on the pinned object heap, for <see cref="Upload"/>.</summary>
    public static int[] Snapshot(ReadOnlySpan<int> values)
    {
        int[] array = GC.AllocateUninitializedArray<int>(values.Length, pinned: true);
        values.CopyTo(array);
        return array;
    }

    /// <summary>Waits for every outstanding copy and releases what it held; throws the first failure after retiring all.</summary>
    public void WaitAll()
    {
        FlashAttentionException? first = null;
        while (_queue.Count > 0)
        {
            try
            {
                Retire(_queue.Dequeue(), throwOnError: true);
            }
            catch (FlashAttentionException ex)
            {
                first ??= ex;
            }
        }

        if (first is not null)
        {
            throw first;
        }
    }

    /// <summary>Like <see cref="WaitAll"/>, but never throws (for disposal).</summary>
    public void WaitAllQuietly()
    {
        while (_queue.Count > 0)
        {
            Retire(_queue.Dequeue(), throwOnError: false);
        }
    }

    private static SafeHandle? Lease(SafeHandle? handle)
    {
        if (handle is null)
        {
            return null;
        }

        bool added = false;
        handle.DangerousAddRef(ref added);
        return handle;
    }

    private static void Retire(Entry entry, bool throwOnError)
    {
        FaStatus status = FaStatus.Success;
        try
        {
            status = NativeMethods.fa_event_synchronize(entry.Event);
        }
        finally
        {
            entry.Release();
        }

        if (throwOnError)
        {
            Errors.ThrowIfFailed(status, "fa_event_synchronize");
        }
    }

    private sealed class Entry(int[] source)
    {
        public int[]? Source { get; private set; } = source;

        public nint Event { get; set; }

        public SafeHandle? Target { get; set; }

        public SafeHandle? Stream { get; set; }

        public void Release()
        {
            if (Event != 0)
            {
                _ = NativeMethods.fa_event_destroy(Event);
                Event = 0;
            }

            Stream?.DangerousRelease();
            Stream = null;
            Target?.DangerousRelease();
            Target = null;
            Source = null;
        }
    }
}
