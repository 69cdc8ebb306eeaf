using System.Runtime.InteropServices;
using FlashAttn.Native;

namespace FlashAttn.Internal;

/// <summary>Owns an <c>fa_context_t</c>; destroyed with <c>fa_context_destroy</c>, never throwing.</summary>
internal sealed class SafeContextHandle : SafeHandle
{
    /// <summary>Creates an invalid handle (CA1419).</summary>
    public SafeContextHandle()
        : base(IntPtr.Zero, ownsHandle: true)
    {
    }

    /// <inheritdoc/>
    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Creates a context for a device ordinal.</summary>
    public static unsafe SafeContextHandle Create(int device)
    {
        var result = new SafeContextHandle();
        nint raw = 0;
        FaStatus status = NativeMethods.fa_context_create(device, &raw);
        if (status != FaStatus.Success)
        {
            result.Dispose();
            throw Errors.Create((FlashAttentionStatus)status, "fa_context_create");
        }

        result.SetHandle(raw);
        return result;
    }

    /// <inheritdoc/>
    protected override bool ReleaseHandle()
    {
        try
        {
            FaStatus status = NativeMethods.fa_context_destroy(handle);
            if (status != FaStatus.Success)
            {
                NativeLogBridge.ReleaseFailed("a FlashAttention context", status);
            }
        }
        catch (Exception)
        {
            // Nothing useful can be done on a release path.
        }

        return true;
    }
}
