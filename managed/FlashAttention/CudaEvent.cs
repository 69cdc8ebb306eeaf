using System.Runtime.InteropServices;
using FlashAttn.Internal;
using FlashAttn.Native;

namespace FlashAttn;

/// <summary>
/// A CUDA event for timing work on a stream: <see cref="Record"/> it before and after the work, wait with
/// <see cref="Synchronize"/>, then read <see cref="ElapsedMilliseconds"/>. Disposing it destroys the event.
/// </summary>
public sealed class CudaEvent : SafeHandle
{
    private CudaEvent()
        : base(IntPtr.Zero, ownsHandle: true)
    {
    }

    /// <inheritdoc/>
    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Creates a timing event on <paramref name="device"/>.</summary>
    /// <param name="device">The device.</param>
    /// <returns>The event.</returns>
    /// <exception cref="FlashAttentionException">The event could not be created.</exception>
    public static unsafe CudaEvent Create(CudaDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        NativeRuntime.EnsureLoaded();
        var ev = new CudaEvent();
        nint raw = 0;
        FaStatus status = NativeMethods.fa_event_create(device.Ordinal, &raw);
        if (status != FaStatus.Success)
        {
            FlashAttentionException error = Errors.Create((FlashAttentionStatus)status, "fa_event_create");
            ev.SetHandleAsInvalid();
            ev.Dispose();
            throw error;
        }

        ev.SetHandle(raw);
        return ev;
    }

    /// <summary>Records the event on <paramref name="stream"/> (the legacy default stream when null).</summary>
    /// <param name="stream">The stream.</param>
    /// <exception cref="FlashAttentionException">A CUDA error was reported.</exception>
    /// <exception cref="ObjectDisposedException">The event or the stream was disposed.</exception>
    public void Record(CudaStream? stream = null)
    {
        using var self = new HandleLease(this);
        using var s = new HandleLease(stream);  // null leases nothing: the legacy default stream
        Errors.ThrowIfFailed(NativeMethods.fa_event_record(self.Pointer, s.Pointer));
    }

    /// <summary>Waits until the work recorded before this event is done.</summary>
    /// <exception cref="FlashAttentionException">A CUDA error was reported.</exception>
    /// <exception cref="ObjectDisposedException">The event was disposed.</exception>
    public void Synchronize()
    {
        using var self = new HandleLease(this);
        Errors.ThrowIfFailed(NativeMethods.fa_event_synchronize(self.Pointer));
    }

    /// <summary>Milliseconds between two recorded and completed events.</summary>
    /// <param name="start">The earlier event.</param>
    /// <param name="end">The later event.</param>
    /// <returns>The elapsed time in milliseconds (about 0.5 microsecond resolution).</returns>
    /// <exception cref="FlashAttentionException">An event was not recorded or has not completed.</exception>
    public static unsafe float ElapsedMilliseconds(CudaEvent start, CudaEvent end)
    {
        ArgumentNullException.ThrowIfNull(start);
        ArgumentNullException.ThrowIfNull(end);
        using var a = new HandleLease(start);
        using var b = new HandleLease(end);
        float ms = 0;
        Errors.ThrowIfFailed(NativeMethods.fa_event_elapsed_ms(a.Pointer, b.Pointer, &ms));
        return ms;
    }

    /// <inheritdoc/>
    protected override bool ReleaseHandle()
    {
        // Never throws: nothing useful can be done on a release path.
        try
        {
            FaStatus status = NativeMethods.fa_event_destroy(handle);
            if (status != FaStatus.Success)
            {
                NativeLogBridge.ReleaseFailed("a CUDA event", status);
            }
        }
        catch (Exception)
        {
        }

        return true;
    }
}
