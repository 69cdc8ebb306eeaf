using System.Runtime.InteropServices;
using FlashAttn.Internal;
using FlashAttn.Native;

namespace FlashAttn;

/// <summary>
/// A CUDA stream (<c>cudaStream_t</c>): either created and owned by this object (<see cref="Create"/>, destroyed on
/// <see cref="SafeHandle.Dispose()"/> or finalization) or borrowed from another library (<see cref="FromHandle"/>,
/// never destroyed here).
/// </summary>
/// <remarks>
/// Streams made by <see cref="Create"/> are non-blocking: they do not synchronise with the legacy default stream,
/// so order host copies on the same stream (the <c>stream</c> arguments of <see cref="DeviceBuffer{T}"/>) or call
/// <see cref="Synchronize"/> before reading results. Passing <see langword="null"/> where a stream is optional
/// means the legacy default stream.
/// </remarks>
public sealed class CudaStream : SafeHandle
{
    private CudaStream(CudaDevice? device, bool ownsHandle)
        : base(IntPtr.Zero, ownsHandle)
    {
        Device = device;
        OwnsHandle = ownsHandle;
    }

    /// <summary>Whether this object destroys the stream when it is released.</summary>
    public bool OwnsHandle { get; }

    /// <summary>The device the stream was created on; <see langword="null"/> for a borrowed stream.</summary>
    public CudaDevice? Device { get; }

    /// <summary>The raw <c>cudaStream_t</c>, for passing to other libraries. Zero is the legacy default stream.</summary>
    /// <exception cref="ObjectDisposedException">The stream was disposed.</exception>
    public IntPtr NativeHandle
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsClosed, this);
            return handle;
        }
    }

    /// <inheritdoc/>
    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Creates a non-blocking stream on <paramref name="device"/>; disposing it destroys the stream.</summary>
    /// <param name="device">The device.</param>
    /// <returns>The stream.</returns>
    /// <exception cref="FlashAttentionException">The stream could not be created.</exception>
    public static unsafe CudaStream Create(CudaDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        NativeRuntime.EnsureLoaded();
        var stream = new CudaStream(device, ownsHandle: true);
        nint raw = 0;
        FaStatus status = NativeMethods.fa_stream_create(device.Ordinal, &raw);
        if (status != FaStatus.Success)
        {
            FlashAttentionException error = Errors.Create((FlashAttentionStatus)status, "fa_stream_create");
            stream.SetHandleAsInvalid();
            stream.Dispose();
            throw error;
        }

        stream.SetHandle(raw);
        return stream;
    }

    /// <summary>
    /// Wraps a stream owned elsewhere (PyTorch, ONNX Runtime, another CUDA binding). It is never destroyed by this
    /// object; the owner must keep it alive while work is queued on it through this library.
    /// </summary>
    /// <param name="foreignStream">The <c>cudaStream_t</c>; zero is the legacy default stream.</param>
    /// <returns>A non-owning stream.</returns>
    public static CudaStream FromHandle(IntPtr foreignStream)
    {
        var stream = new CudaStream(device: null, ownsHandle: false);
        stream.SetHandle(foreignStream);
        return stream;
    }

    /// <summary>Waits until all work queued on the stream is done.</summary>
    /// <exception cref="FlashAttentionException">A CUDA error was reported.</exception>
    /// <exception cref="ObjectDisposedException">The stream was disposed.</exception>
    public unsafe void Synchronize()
    {
        NativeRuntime.EnsureLoaded();
        using var lease = new HandleLease(this);
        Errors.ThrowIfFailed(NativeMethods.fa_stream_synchronize(lease.Pointer));
    }

    /// <summary>
    /// Starts capturing the work queued on this stream into a CUDA graph instead of running it (thread-local
    /// capture mode: other threads may keep using CUDA). End it with <see cref="EndCapture"/> on the same thread.
    /// </summary>
    /// <remarks>
    /// Only queue work that neither waits nor allocates during the capture: <see cref="FlashAttention.Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>,
    /// <see cref="FlashAttention.ForwardVarlen"/>, <see cref="DeviceBuffer{T}.Fill(byte, CudaStream?)"/> with this
    /// stream. See <see cref="CudaGraph"/> for what a replay reads and writes.
    /// </remarks>
    /// <exception cref="InvalidOperationException">This is the legacy default stream (handle zero), which CUDA cannot capture.</exception>
    /// <exception cref="FlashAttentionException">CUDA refused to start the capture (for example, one is already in progress).</exception>
    /// <exception cref="ObjectDisposedException">The stream was disposed.</exception>
    public unsafe void BeginCapture()
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        if (handle == IntPtr.Zero)
        {
            throw new InvalidOperationException(
                "The legacy default stream cannot be captured into a CUDA graph; capture a stream from CudaStream.Create instead.");
        }

        NativeRuntime.EnsureLoaded();
        using var lease = new HandleLease(this);
        Errors.ThrowIfFailed(NativeMethods.fa_stream_begin_capture(lease.Pointer));
    }

    /// <summary>
    /// Ends the capture started by <see cref="BeginCapture"/> and instantiates it: the returned graph replays the
    /// captured work each time it is launched. Dispose it when done.
    /// </summary>
    /// <returns>The executable graph.</returns>
    /// <exception cref="InvalidOperationException">This is the legacy default stream (handle zero), which is never capturing.</exception>
    /// <exception cref="FlashAttentionException">
    /// No capture was in progress, the capture was invalidated (by a call that waited or allocated while capturing),
    /// or the graph could not be instantiated.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The stream was disposed.</exception>
    public CudaGraph EndCapture()
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        if (handle == IntPtr.Zero)
        {
            throw new InvalidOperationException(
                "The legacy default stream cannot be capturing; end the capture on the stream that BeginCapture was called on.");
        }

        NativeRuntime.EnsureLoaded();
        using var lease = new HandleLease(this);
        return CudaGraph.EndCapture(Device, lease.Pointer);
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"CudaStream(0x{(long)handle:x}, {(OwnsHandle ? "owned" : "borrowed")}{(IsClosed ? ", disposed" : string.Empty)})";

    /// <inheritdoc/>
    protected override unsafe bool ReleaseHandle()
    {
        // Only called for owned, valid handles. Never throws.
        try
        {
            FaStatus status = NativeMethods.fa_stream_destroy(handle);
            if (status != FaStatus.Success)
            {
                NativeLogBridge.ReleaseFailed("a CUDA stream", status);
            }
        }
        catch (Exception)
        {
            // Nothing useful can be done on a release path.
        }

        return true;
    }
}
