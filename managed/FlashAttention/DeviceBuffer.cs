using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using FlashAttn.Internal;
using FlashAttn.Native;

namespace FlashAttn;

/// <summary>
/// An owned allocation of <see cref="Length"/> elements of <typeparamref name="T"/> in device memory
/// (256-byte aligned). Freed on <see cref="SafeHandle.Dispose()"/>, or by the finalizer if it is forgotten.
/// </summary>
/// <typeparam name="T">
/// The element type. <see cref="Half"/>, <see cref="BFloat16"/>, <see cref="Float8E4M3"/>, <see cref="float"/> and
/// <see cref="int"/> map to a <see cref="DataType"/> and can back a <see cref="DeviceTensor"/>; any unmanaged type can
/// be stored.
/// </typeparam>
/// <remarks>
/// <para>
/// Copies without a stream go through the legacy default stream and return when done. Copies with a stream are
/// ordered after the work already queued on that stream: <see cref="CopyFrom(ReadOnlySpan{T}, CudaStream?)"/> and
/// <see cref="CopyTo(Span{T}, CudaStream?)"/> then wait for the stream before returning, while
/// <see cref="CopyFromAsync(ReadOnlyMemory{T}, CudaStream)"/> and <see cref="CopyToAsync(Memory{T}, CudaStream)"/>
/// return a <see cref="StreamOperation"/> that keeps the host memory pinned until it is waited for or disposed.
/// </para>
/// <para>
/// Freeing device memory waits for the device, so disposing a buffer that queued kernels still use is safe
/// (but stalls); the finalizer frees on the finalizer thread and logs, never throws.
/// </para>
/// </remarks>
public sealed class DeviceBuffer<T> : SafeHandle
    where T : unmanaged
{
    /// <summary>Allocates <paramref name="length"/> elements on <paramref name="device"/>. The contents are undefined.</summary>
    /// <param name="device">The device.</param>
    /// <param name="length">Number of elements (0 or more; 0 allocates nothing and has a null <see cref="Pointer"/>).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="length"/> is negative or the size overflows.</exception>
    /// <exception cref="FlashAttentionException">The allocation failed (<see cref="FlashAttentionStatus.OutOfMemory"/>, ...).</exception>
    public unsafe DeviceBuffer(CudaDevice device, long length)
        : base(IntPtr.Zero, ownsHandle: true)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        long elementSize = Unsafe.SizeOf<T>();
        if (length > long.MaxValue / elementSize)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, "The buffer size in bytes overflows a 64-bit integer.");
        }

        Device = device;
        Length = length;
        SizeInBytes = length * elementSize;
        if (SizeInBytes == 0)
        {
            return;
        }

        NativeRuntime.EnsureLoaded();
        nint p = 0;
        FaStatus status = NativeMethods.fa_memory_alloc(device.Ordinal, (nuint)SizeInBytes, &p);
        if (status != FaStatus.Success)
        {
            GC.SuppressFinalize(this);
            throw Errors.Create((FlashAttentionStatus)status, "fa_memory_alloc");
        }

        SetHandle(p);
    }

    /// <summary>Number of elements.</summary>
    public long Length { get; }

    /// <summary>Size in bytes (<see cref="Length"/> times the size of <typeparamref name="T"/>).</summary>
    public long SizeInBytes { get; }

    /// <summary>The device that holds the memory.</summary>
    public CudaDevice Device { get; }

    /// <summary>The device address of element 0.</summary>
    /// <exception cref="ObjectDisposedException">The buffer was disposed.</exception>
    public IntPtr Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsClosed, this);
            return handle;
        }
    }

    /// <inheritdoc/>
    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Views the whole buffer (from element 0) as a contiguous row-major tensor.</summary>
    /// <param name="shape">The shape; its element count must not exceed <see cref="Length"/>.</param>
    /// <returns>The tensor view, which keeps this buffer alive.</returns>
    /// <exception cref="ArgumentException">The shape is invalid, does not fit, or <typeparamref name="T"/> has no <see cref="FlashAttn.DataType"/>.</exception>
    public DeviceTensor AsTensor(params ReadOnlySpan<long> shape) => DeviceTensor.FromBuffer(this, shape);

    /// <summary>Copies <paramref name="source"/> into the whole buffer.</summary>
    /// <param name="source">Host data; its length must equal <see cref="Length"/>.</param>
    /// <param name="stream">Stream to order the copy on (the call waits for it), or null for the legacy default stream.</param>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public void CopyFrom(ReadOnlySpan<T> source, CudaStream? stream = null)
    {
        RequireEqualLength(source.Length, nameof(source));
        CopyFrom(source, 0, stream);
    }

    /// <summary>Copies <paramref name="source"/> into elements <c>[offset, offset + source.Length)</c>.</summary>
    /// <param name="source">Host data.</param>
    /// <param name="offset">First destination element.</param>
    /// <param name="stream">Stream to order the copy on (the call waits for it), or null for the legacy default stream.</param>
    /// <exception cref="ArgumentException">The range does not fit in the buffer.</exception>
    public void CopyFrom(ReadOnlySpan<T> source, long offset, CudaStream? stream = null) =>
        CopyHost(ref MemoryMarshal.GetReference(source), source.Length, offset, stream, toDevice: true, nameof(source));

    /// <summary>Copies the whole buffer into <paramref name="destination"/>.</summary>
    /// <param name="destination">Host memory; its length must equal <see cref="Length"/>.</param>
    /// <param name="stream">
    /// Stream to order the copy on (the call waits for it), or null for the legacy default stream (which does not
    /// wait for non-blocking streams: synchronise those first).
    /// </param>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public void CopyTo(Span<T> destination, CudaStream? stream = null)
    {
        RequireEqualLength(destination.Length, nameof(destination));
        CopyTo(destination, 0, stream);
    }

    /// <summary>Copies elements <c>[offset, offset + destination.Length)</c> into <paramref name="destination"/>.</summary>
    /// <param name="destination">Host memory.</param>
    /// <param name="offset">First source element.</param>
    /// <param name="stream">Stream to order the copy on (the call waits for it), or null for the legacy default stream.</param>
    /// <exception cref="ArgumentException">The range does not fit in the buffer.</exception>
    public void CopyTo(Span<T> destination, long offset, CudaStream? stream = null) =>
        CopyHost(ref MemoryMarshal.GetReference(destination), destination.Length, offset, stream, toDevice: false, nameof(destination));

    /// <summary>
    /// Queues a copy of <paramref name="source"/> into the whole buffer on <paramref name="stream"/> and returns at
    /// once. The host memory stays pinned, and this buffer and the stream stay alive, until the returned operation
    /// is waited for or disposed; do not change <paramref name="source"/> before then.
    /// </summary>
    /// <param name="source">Host data; its length must equal <see cref="Length"/>.</param>
    /// <param name="stream">The stream.</param>
    /// <returns>The pending operation; dispose it (or call <see cref="StreamOperation.Wait"/>) to wait and unpin.</returns>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public StreamOperation CopyFromAsync(ReadOnlyMemory<T> source, CudaStream stream)
    {
        RequireEqualLength(source.Length, nameof(source));
        return CopyFromAsync(source, 0, stream);
    }

    /// <summary>Queues a copy of <paramref name="source"/> into elements <c>[offset, offset + source.Length)</c>; see <see cref="CopyFromAsync(ReadOnlyMemory{T}, CudaStream)"/>.</summary>
    /// <param name="source">Host data.</param>
    /// <param name="offset">First destination element.</param>
    /// <param name="stream">The stream.</param>
    /// <returns>The pending operation.</returns>
    /// <exception cref="ArgumentException">The range does not fit in the buffer.</exception>
    public StreamOperation CopyFromAsync(ReadOnlyMemory<T> source, long offset, CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        RequireRange(offset, source.Length, nameof(source));
        return QueueCopy(source.Pin(), source.Length, offset, stream, toDevice: true);
    }

    /// <summary>
    /// Queues a copy of the whole buffer into <paramref name="destination"/> on <paramref name="stream"/> and returns
    /// at once. The data is in <paramref name="destination"/> only after the returned operation is waited for or
    /// disposed; until then the memory stays pinned.
    /// </summary>
    /// <param name="destination">Host memory; its length must equal <see cref="Length"/>.</param>
    /// <param name="stream">The stream.</param>
    /// <returns>The pending operation; dispose it (or call <see cref="StreamOperation.Wait"/>) to wait and unpin.</returns>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public StreamOperation CopyToAsync(Memory<T> destination, CudaStream stream)
    {
        RequireEqualLength(destination.Length, nameof(destination));
        return CopyToAsync(destination, 0, stream);
    }

    /// <summary>Queues a copy of elements <c>[offset, offset + destination.Length)</c>; see <see cref="CopyToAsync(Memory{T}, CudaStream)"/>.</summary>
    /// <param name="destination">Host memory.</param>
    /// <param name="offset">First source element.</param>
    /// <param name="stream">The stream.</param>
    /// <returns>The pending operation.</returns>
    /// <exception cref="ArgumentException">The range does not fit in the buffer.</exception>
    public StreamOperation CopyToAsync(Memory<T> destination, long offset, CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        RequireRange(offset, destination.Length, nameof(destination));
        return QueueCopy(destination.Pin(), destination.Length, offset, stream, toDevice: false);
    }

    /// <summary>
    /// Sets every byte of the buffer to <paramref name="value"/> (handy for poisoning outputs: 0xFF makes every
    /// float16, bfloat16 and float32 element a NaN).
    /// </summary>
    /// <param name="value">The byte value.</param>
    /// <param name="stream">
    /// Stream to order the fill on; the call then returns at once. Null: the legacy default stream, and the call
    /// waits for it.
    /// </param>
    public unsafe void Fill(byte value, CudaStream? stream = null)
    {
        NativeRuntime.EnsureLoaded();
        using var self = new HandleLease(this);
        using var s = new HandleLease(stream);
        if (SizeInBytes == 0)
        {
            return;
        }

        Errors.ThrowIfFailed(NativeMethods.fa_memset_async(self.Pointer, value, (nuint)SizeInBytes, s.Pointer));
        if (stream is null)
        {
            Errors.ThrowIfFailed(NativeMethods.fa_stream_synchronize(0));
        }
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"DeviceBuffer<{typeof(T).Name}>[{Length}] on cuda:{Device.Ordinal}{(IsClosed ? " (disposed)" : string.Empty)}";

    /// <inheritdoc/>
    protected override unsafe bool ReleaseHandle()
    {
        // Never throws. fa_memory_free selects the buffer's device itself.
        try
        {
            FaStatus status = NativeMethods.fa_memory_free(Device.Ordinal, handle);
            if (status != FaStatus.Success)
            {
                NativeLogBridge.ReleaseFailed($"{SizeInBytes} bytes of device memory", status);
            }
        }
        catch (Exception)
        {
            // Nothing useful can be done on a release path.
        }

        return true;
    }

    /// <summary>
    /// The synchronous copies between <paramref name="length"/> host elements at <paramref name="host"/> and elements
    /// <c>[offset, offset + length)</c> of this buffer, in the direction <paramref name="toDevice"/> says.
    /// </summary>
    private unsafe void CopyHost(ref T host, int length, long offset, CudaStream? stream, bool toDevice, string paramName)
    {
        RequireRange(offset, length, paramName);
        NativeRuntime.EnsureLoaded();
        using var self = new HandleLease(this);
        using var s = new HandleLease(stream);
        if (length == 0)
        {
            return;
        }

        fixed (T* pinned = &host)
        {
            nint device = self.Pointer + (nint)(offset * sizeof(T));
            nuint bytes = (nuint)length * (nuint)sizeof(T);
            if (toDevice)
            {
                Copy(device, (nint)pinned, bytes, stream is not null, s.Pointer);
            }
            else
            {
                Copy((nint)pinned, device, bytes, stream is not null, s.Pointer);
            }
        }
    }

    /// <summary>
    /// The asynchronous copies: queues a copy between the pinned host memory and elements
    /// <c>[offset, offset + length)</c> of this buffer; the returned operation owns <paramref name="pin"/>.
    /// </summary>
    private unsafe StreamOperation QueueCopy(MemoryHandle pin, int length, long offset, CudaStream stream, bool toDevice)
    {
        nint host = (nint)pin.Pointer;
        nuint bytes = (nuint)length * (nuint)sizeof(T);
        nint byteOffset = (nint)(offset * sizeof(T));
        return StreamOperation.Start(
            pin,
            this,
            Device.Ordinal,
            stream,
            toDevice
                ? (device, s) => NativeMethods.fa_memcpy_async(device + byteOffset, host, bytes, s)
                : (device, s) => NativeMethods.fa_memcpy_async(host, device + byteOffset, bytes, s),
            "fa_memcpy_async");
    }

    private static void Copy(nint dst, nint src, nuint bytes, bool onStream, nint stream)
    {
        if (onStream)
        {
            Errors.ThrowIfFailed(NativeMethods.fa_memcpy_async(dst, src, bytes, stream));
            Errors.ThrowIfFailed(NativeMethods.fa_stream_synchronize(stream));
        }
        else
        {
            Errors.ThrowIfFailed(NativeMethods.fa_memcpy(dst, src, bytes));
        }
    }

    private void RequireEqualLength(int length, string paramName)
    {
        if (length != Length)
        {
            throw new ArgumentException(
                $"{paramName} has {length} elements but the buffer has {Length}; use the overload with an offset to copy part of it.",
                paramName);
        }
    }

    private void RequireRange(long offset, int length, string paramName)
    {
        if (offset < 0 || offset > Length || length > Length - offset)
        {
            throw new ArgumentException(
                $"Elements [{offset}, {offset + length}) do not fit in a buffer of {Length} elements.", paramName);
        }
    }
}
