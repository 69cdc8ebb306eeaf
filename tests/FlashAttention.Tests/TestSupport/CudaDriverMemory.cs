using System.Runtime.InteropServices;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Device memory as the CUDA driver reports it, for tests that check that work returns memory: bytes in use on the
/// device (total minus free, <c>cuMemGetInfo</c>, what <c>cudaMemGetInfo</c> reports) and the state of the device's
/// current stream-ordered memory pool (the one <c>cudaMallocAsync</c> draws from, which the library uses for a
/// backward or decode call without a caller workspace).
/// </summary>
/// <remarks>
/// <para>
/// Neither the C ABI nor the managed API has a memory query, so the tests ask the driver directly (libcuda.so.1 /
/// nvcuda.dll, present wherever there is a GPU; the library links the runtime statically, so there is no shared
/// libcudart to ask). The runtime inside the library works in the device's primary context; this probe retains the
/// same primary context and makes it current only around <c>cuMemGetInfo</c>, restoring the thread's context
/// afterwards, so it changes nothing the library sees.
/// </para>
/// <para>
/// Bytes in use are device-wide: they include the CUDA context itself, loaded kernel code, and other processes on the
/// same GPU. Compare two readings taken in the same process with nothing else running on the device.
/// </para>
/// </remarks>
internal sealed unsafe class CudaDriverMemory : IDisposable
{
    // CUmemPool_attribute (cuda.h)
    private const int MempoolAttrReservedMemCurrent = 5;
    private const int MempoolAttrReservedMemHigh = 6;
    private const int MempoolAttrUsedMemCurrent = 7;

    private readonly nint _library;
    private readonly int _device;
    private readonly nint _context;
    private readonly delegate* unmanaged<int, int> _primaryCtxRelease;
    private readonly delegate* unmanaged<nint, int> _ctxPush;
    private readonly delegate* unmanaged<nint*, int> _ctxPop;
    private readonly delegate* unmanaged<nuint*, nuint*, int> _memGetInfo;
    private readonly delegate* unmanaged<nint*, int, int> _deviceGetMemPool;
    private readonly delegate* unmanaged<nint, nuint, int> _memPoolTrimTo;
    private readonly delegate* unmanaged<nint, int, void*, int> _memPoolGetAttribute;
    private bool _disposed;

    private CudaDriverMemory(nint library, int ordinal)
    {
        _library = library;
        var init = (delegate* unmanaged<uint, int>)Export("cuInit");
        var deviceGet = (delegate* unmanaged<int*, int, int>)Export("cuDeviceGet");
        var primaryCtxRetain = (delegate* unmanaged<nint*, int, int>)Export("cuDevicePrimaryCtxRetain");
        _primaryCtxRelease = (delegate* unmanaged<int, int>)Export("cuDevicePrimaryCtxRelease_v2");
        _ctxPush = (delegate* unmanaged<nint, int>)Export("cuCtxPushCurrent_v2");
        _ctxPop = (delegate* unmanaged<nint*, int>)Export("cuCtxPopCurrent_v2");
        _memGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)Export("cuMemGetInfo_v2");
        _deviceGetMemPool = (delegate* unmanaged<nint*, int, int>)Export("cuDeviceGetMemPool");
        _memPoolTrimTo = (delegate* unmanaged<nint, nuint, int>)Export("cuMemPoolTrimTo");
        _memPoolGetAttribute = (delegate* unmanaged<nint, int, void*, int>)Export("cuMemPoolGetAttribute");

        Check(init(0), "cuInit");
        int device;
        Check(deviceGet(&device, ordinal), "cuDeviceGet");
        nint context;
        Check(primaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain");
        _device = device;
        _context = context;
    }

    /// <summary>Loads the driver and retains the primary context of device <paramref name="ordinal"/>.</summary>
    /// <param name="ordinal">The device ordinal.</param>
    /// <param name="probe">The probe, or null.</param>
    /// <param name="reason">Why there is no probe ("" when there is one).</param>
    /// <returns>Whether the driver could be loaded and the device opened.</returns>
    public static bool TryOpen(int ordinal, out CudaDriverMemory? probe, out string reason)
    {
        probe = null;
        string[] names = OperatingSystem.IsWindows() ? ["nvcuda.dll"] : ["libcuda.so.1", "libcuda.so"];
        nint library = 0;
        foreach (string name in names)
        {
            if (NativeLibrary.TryLoad(name, out library))
            {
                break;
            }
        }

        if (library == 0)
        {
            reason = $"the CUDA driver library ({string.Join(" or ", names)}) cannot be loaded";
            return false;
        }

        try
        {
            probe = new CudaDriverMemory(library, ordinal);
            reason = string.Empty;
            return true;
        }
        catch (InvalidOperationException ex)
        {
            reason = ex.Message;
            return false;
        }
    }

    /// <summary>Bytes of device memory in use (total minus free), device-wide.</summary>
    public long UsedBytes()
    {
        (long free, long total) = GetInfo();
        return total - free;
    }

    /// <summary>Free and total device memory in bytes (<c>cuMemGetInfo</c> in the primary context).</summary>
    public (long Free, long Total) GetInfo()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Check(_ctxPush(_context), "cuCtxPushCurrent");
        nuint free = 0, total = 0;
        int status = _memGetInfo(&free, &total);
        nint popped;
        Check(_ctxPop(&popped), "cuCtxPopCurrent");
        Check(status, "cuMemGetInfo");
        return ((long)free, (long)total);
    }

    /// <summary>
    /// Releases the unused memory the device's current stream-ordered pool holds back to the driver
    /// (<c>cuMemPoolTrimTo(pool, 0)</c>). Memory of outstanding stream-ordered allocations cannot be released.
    /// Synchronise the device first so that queued stream-ordered frees have run.
    /// </summary>
    public void TrimPool() => Check(_memPoolTrimTo(Pool(), 0), "cuMemPoolTrimTo");

    /// <summary>Bytes of the current pool handed out to stream-ordered allocations and not freed yet.</summary>
    public long PoolUsedBytes() => PoolAttribute(MempoolAttrUsedMemCurrent);

    /// <summary>Bytes of device memory backing the current pool now.</summary>
    public long PoolReservedBytes() => PoolAttribute(MempoolAttrReservedMemCurrent);

    /// <summary>The most bytes that backed the current pool since it was created (or the mark was reset).</summary>
    public long PoolReservedHighBytes() => PoolAttribute(MempoolAttrReservedMemHigh);

    /// <summary>Releases the primary context this probe retained.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _ = _primaryCtxRelease(_device);
    }

    private nint Pool()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        nint pool;
        Check(_deviceGetMemPool(&pool, _device), "cuDeviceGetMemPool");
        return pool;
    }

    private long PoolAttribute(int attribute)
    {
        ulong value = 0;
        Check(_memPoolGetAttribute(Pool(), attribute, &value), "cuMemPoolGetAttribute");
        return (long)value;
    }

    private nint Export(string name) =>
        NativeLibrary.TryGetExport(_library, name, out nint address)
            ? address
            : throw new InvalidOperationException($"the CUDA driver has no {name} (a driver older than CUDA 11.2?)");

    private static void Check(int status, string call)
    {
        if (status != 0)
        {
            throw new InvalidOperationException($"{call} returned CUresult {status}");
        }
    }
}
