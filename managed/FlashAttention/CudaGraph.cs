using System.Runtime.InteropServices;
using FlashAttn.Internal;
using FlashAttn.Native;

namespace FlashAttn;

/// <summary>
/// An executable CUDA graph (<c>cudaGraphExec_t</c>) recorded with <see cref="CudaStream.BeginCapture"/> and
/// <see cref="CudaStream.EndCapture"/>. Destroyed on <see cref="SafeHandle.Dispose()"/> or finalization.
/// </summary>
/// <remarks>
/// <para>
/// A graph replays exactly the work that was queued during the capture, with the same arguments: every
/// <see cref="FlashAttention.Forward(in AttentionArguments, AttentionOptions, CudaStream)"/> it holds reads and writes the same device pointers on every
/// <see cref="Launch"/>. To run it on new inputs, write them into the same buffers (for example with
/// <see cref="DeviceBuffer{T}.CopyFromAsync(ReadOnlyMemory{T}, CudaStream)"/> on the launch stream) before
/// launching, and read the results from the same outputs afterwards. Every buffer the captured work touches must
/// stay alive (not disposed) for as long as the graph may be launched; the graph does not keep them alive.
/// </para>
/// <para>
/// <see cref="FlashAttention.Forward(in AttentionArguments, AttentionOptions, CudaStream)"/> and <see cref="FlashAttention.ForwardVarlen"/> are graph-safe: they neither
/// synchronise nor allocate, so they may be called between <see cref="CudaStream.BeginCapture"/> and
/// <see cref="CudaStream.EndCapture"/>. Calls that wait for the stream or the device (the copies without
/// <c>Async</c>, <see cref="CudaStream.Synchronize"/>, <see cref="CudaDevice.Synchronize"/>, disposing a
/// <see cref="DeviceBuffer{T}"/>) must not be made while a capture is in progress: they would invalidate it.
/// </para>
/// </remarks>
public sealed class CudaGraph : SafeHandle
{
    private CudaGraph(CudaDevice? device)
        : base(IntPtr.Zero, ownsHandle: true)
    {
        Device = device;
    }

    /// <summary>The device of the stream the graph was captured on; <see langword="null"/> for a borrowed stream.</summary>
    public CudaDevice? Device { get; }

    /// <inheritdoc/>
    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>
    /// Queues one replay of the graph on <paramref name="stream"/> and returns at once. Replays on one stream run in
    /// order; synchronise the stream before reading results on the host.
    /// </summary>
    /// <param name="stream">The stream to launch on, or null for the legacy default stream.</param>
    /// <exception cref="ArgumentException">The stream belongs to another device than the graph.</exception>
    /// <exception cref="FlashAttentionException">CUDA refused the launch.</exception>
    /// <exception cref="ObjectDisposedException">The graph or the stream was disposed.</exception>
    public unsafe void Launch(CudaStream? stream = null)
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        if (stream?.Device is { } streamDevice && Device is not null && streamDevice.Ordinal != Device.Ordinal)
        {
            throw new ArgumentException(
                $"The stream belongs to cuda:{streamDevice.Ordinal} but the graph was captured on cuda:{Device.Ordinal}.", nameof(stream));
        }

        NativeRuntime.EnsureLoaded();
        using var g = new HandleLease(this);
        using var s = new HandleLease(stream);
        Errors.ThrowIfFailed(NativeMethods.fa_graph_launch(g.Pointer, s.Pointer));
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"CudaGraph(0x{(long)handle:x}{(Device is null ? string.Empty : $" on cuda:{Device.Ordinal}")}{(IsClosed ? ", disposed" : string.Empty)})";

    /// <summary>Ends the capture on a leased stream and wraps the instantiated graph.</summary>
    internal static unsafe CudaGraph EndCapture(CudaDevice? device, nint stream)
    {
        var graph = new CudaGraph(device);
        nint raw = 0;
        FaStatus status = NativeMethods.fa_stream_end_capture(stream, &raw);
        if (status != FaStatus.Success)
        {
            FlashAttentionException error = Errors.Create((FlashAttentionStatus)status, "fa_stream_end_capture");
            graph.SetHandleAsInvalid();
            graph.Dispose();
            throw error;
        }

        graph.SetHandle(raw);
        return graph;
    }

    /// <inheritdoc/>
    protected override bool ReleaseHandle()
    {
        // Never throws.
        try
        {
            FaStatus status = NativeMethods.fa_graph_destroy(handle);
            if (status != FaStatus.Success)
            {
                NativeLogBridge.ReleaseFailed("a CUDA graph", status);
            }
        }
        catch (Exception)
        {
            // Nothing useful can be done on a release path.
        }

        return true;
    }
}
