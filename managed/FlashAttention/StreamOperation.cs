using System.Buffers;
using System.Runtime.InteropServices;
using FlashAttn.Internal;
using FlashAttn.Native;
using Microsoft.Extensions.Logging;

namespace FlashAttn;

/// <summary>
/// A copy queued on a <see cref="CudaStream"/> that involves host memory. Until <see cref="Wait"/> or
/// <see cref="Dispose"/> returns, the host memory stays pinned and the device buffer and stream stay alive, so
/// the copy can never touch memory the garbage collector has moved or freed.
/// </summary>
/// <remarks>
/// Completion is tracked with a CUDA event recorded right after the copy, so waiting does not wait for work queued
/// on the stream later. An operation that is never disposed keeps its memory pinned (a leak, never a corruption).
/// </remarks>
public sealed class StreamOperation : IDisposable
{
    private readonly Lock _lock = new();
    private MemoryHandle _pin;
    private nint _event;
    private SafeHandle? _buffer;
    private SafeHandle? _stream;
    private bool _done;

    private StreamOperation(MemoryHandle pin, SafeHandle buffer, SafeHandle stream)
    {
        _pin = pin;
        _buffer = buffer;
        _stream = stream;
    }

    internal delegate FaStatus QueueCall(nint buffer, nint stream);

    /// <summary>Whether <see cref="Wait"/> or <see cref="Dispose"/> has completed (the memory is unpinned).</summary>
    public bool IsCompleted
    {
        get
        {
            lock (_lock)
            {
                return _done;
            }
        }
    }

    /// <summary>Waits for the copy to finish, then unpins the host memory. Calling it again does nothing.</summary>
    /// <exception cref="FlashAttentionException">CUDA reported an error (the memory is unpinned anyway).</exception>
    public void Wait()
    {
        lock (_lock)
        {
            if (_done)
            {
                return;
            }

            FaStatus status = FaStatus.Success;
            try
            {
                status = NativeMethods.fa_event_synchronize(_event);
            }
            finally
            {
                // If synchronising failed the context is broken and the copy will not run, so unpinning is safe.
                ReleaseAll();
            }

            Errors.ThrowIfFailed(status, "fa_event_synchronize");
        }
    }

    /// <summary>Waits for the copy (like <see cref="Wait"/>) and releases everything; never throws, logs a failure instead.</summary>
    public void Dispose()
    {
        try
        {
            Wait();
        }
        catch (FlashAttentionException ex)
        {
            NativeLogBridge.Current?.LogWarning(ex, "Waiting for a stream copy failed while disposing it.");
        }
    }

    /// <summary>Queues <paramref name="call"/> on the stream with both handles leased, then records the completion event.</summary>
    internal static unsafe StreamOperation Start(
        MemoryHandle pin, SafeHandle buffer, int bufferDevice, CudaStream stream, QueueCall call, string name)
    {
        var op = new StreamOperation(pin, buffer, stream);
        bool bufferAdded = false, streamAdded = false;
        try
        {
            NativeRuntime.EnsureLoaded();
            buffer.DangerousAddRef(ref bufferAdded);
            stream.DangerousAddRef(ref streamAdded);
            if (!bufferAdded || !streamAdded)
            {
                throw new ObjectDisposedException(bufferAdded ? nameof(stream) : nameof(buffer));
            }

            // The event must live on the stream's device; a borrowed stream is assumed to be on the buffer's.
            int device = stream.Device?.Ordinal ?? bufferDevice;
            nint evt = 0;
            Errors.ThrowIfFailed(NativeMethods.fa_event_create(device, &evt));
            op._event = evt;

            FaStatus status = call(buffer.DangerousGetHandle(), stream.DangerousGetHandle());
            if (status != FaStatus.Success)
            {
                throw Errors.Create((FlashAttentionStatus)status, name);
            }

            Errors.ThrowIfFailed(NativeMethods.fa_event_record(evt, stream.DangerousGetHandle()));
            return op;
        }
        catch
        {
            // Nothing is left queued that reads the pinned memory only if the copy itself failed; if recording the
            // event failed after a queued copy, wait for the whole stream before unpinning.
            if (streamAdded && op._event != IntPtr.Zero)
            {
                _ = NativeMethods.fa_stream_synchronize(stream.DangerousGetHandle());
            }

            if (!bufferAdded)
            {
                op._buffer = null;
            }

            if (!streamAdded)
            {
                op._stream = null;
            }

            op.ReleaseAll();
            throw;
        }
    }

    private void ReleaseAll()
    {
        _done = true;
        if (_event != IntPtr.Zero)
        {
            _ = NativeMethods.fa_event_destroy(_event);
            _event = IntPtr.Zero;
        }

        _pin.Dispose();
        _pin = default;
        _stream?.DangerousRelease();
        _stream = null;
        _buffer?.DangerousRelease();
        _buffer = null;
    }
}
