using System.Runtime.InteropServices;

namespace FlashAttn.Internal;

/// <summary>
/// Holds a reference on a <see cref="SafeHandle"/> for the duration of a native call, so another thread cannot
/// release it in the middle. A null handle leases nothing and yields <see cref="IntPtr.Zero"/>.
/// </summary>
internal ref struct HandleLease
{
    private SafeHandle? _handle;

    public HandleLease(SafeHandle? handle)
    {
        if (handle is null)
        {
            return;
        }

        // Throws ObjectDisposedException if the handle is already closed.
        bool added = false;
        handle.DangerousAddRef(ref added);
        _handle = handle;
        Pointer = handle.DangerousGetHandle();
    }

    /// <summary>The raw handle value while leased.</summary>
    public IntPtr Pointer { get; }

    public void Dispose()
    {
        _handle?.DangerousRelease();
        _handle = null;
    }
}
