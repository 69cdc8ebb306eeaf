using FlashAttn.Internal;
using FlashAttn.Native;

namespace FlashAttn;

/// <summary>A CUDA device, opened by ordinal, with the properties attention dispatch depends on.</summary>
/// <remarks>
/// A <see cref="CudaDevice"/> holds no native resource (it is an ordinal plus cached properties), so it needs no
/// disposal. <see cref="Count"/> and <see cref="TryGetAvailability(out string)"/> never throw because the
/// library, the driver or the GPU is missing; <see cref="Open(int)"/> throws one
/// <see cref="FlashAttentionException"/> with <see cref="FlashAttentionStatus.NoDevice"/> in those cases.
/// </remarks>
public sealed class CudaDevice
{
    private CudaDevice(int ordinal, string name, int major, int minor, int multiprocessors, long totalMemory, long sharedOptIn)
    {
        Ordinal = ordinal;
        Name = name;
        ComputeCapability = new Version(major, minor);
        MultiprocessorCount = multiprocessors;
        TotalMemory = totalMemory;
        SharedMemoryPerBlockOptIn = sharedOptIn;
    }

    /// <summary>
    /// Number of CUDA devices; 0 where the native library cannot be loaded, there is no driver or the driver sees
    /// no GPU. Never throws for those reasons.
    /// </summary>
    public static int Count => TryGetAvailability(out _, out int count) ? count : 0;

    /// <summary>The device ordinal (0-based).</summary>
    public int Ordinal { get; }

    /// <summary>The device name, e.g. "NVIDIA H100 80GB HBM3".</summary>
    public string Name { get; }

    /// <summary>Compute capability, e.g. 9.0 for H100.</summary>
    public Version ComputeCapability { get; }

    /// <summary>Compute capability as <c>major * 10 + minor</c> (e.g. 90), the form <see cref="FlashAttention.Check(in AttentionArguments, out string, AttentionOptions, int)"/> takes.</summary>
    public int ComputeCapabilityCode => (ComputeCapability.Major * 10) + ComputeCapability.Minor;

    /// <summary>Number of streaming multiprocessors.</summary>
    public int MultiprocessorCount { get; }

    /// <summary>Global memory in bytes.</summary>
    public long TotalMemory { get; }

    /// <summary>Largest shared memory a block may opt in to, in bytes.</summary>
    public long SharedMemoryPerBlockOptIn { get; }

    /// <summary>Says whether a GPU can be used from this process, and if not, why (without throwing).</summary>
    /// <param name="reason">"" when a device is available; otherwise a sentence saying what is missing and what to do.</param>
    /// <returns><see langword="true"/> when at least one device is available.</returns>
    public static bool TryGetAvailability(out string reason) => TryGetAvailability(out reason, out _);

    /// <summary>Opens a device and reads its properties.</summary>
    /// <param name="ordinal">The device ordinal.</param>
    /// <returns>The device.</returns>
    /// <exception cref="FlashAttentionException">
    /// Status <see cref="FlashAttentionStatus.NoDevice"/>: no native library, no driver or no GPU (the message
    /// says which and what to do); any other status: the driver failed.
    /// </exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="ordinal"/> is negative or not below <see cref="Count"/>.</exception>
    public static unsafe CudaDevice Open(int ordinal = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(ordinal);
        NativeRuntime.EnsureLoaded();
        int count;
        Errors.ThrowIfFailed(NativeMethods.fa_device_count(&count));
        if (count == 0)
        {
            throw new FlashAttentionException(FlashAttentionStatus.NoDevice, Errors.WithNoDeviceAdvice("The CUDA driver reports no GPU"));
        }

        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(ordinal, count);

        FaDeviceProperties props = default;
        props.struct_size = (uint)sizeof(FaDeviceProperties);
        Errors.ThrowIfFailed(NativeMethods.fa_device_get_properties(ordinal, &props));
        string name = NativeUtf8.Read((nint)props.name).Trim();
        return new CudaDevice(ordinal, name, props.major, props.minor, props.multiprocessor_count, props.total_memory, props.shared_memory_per_block_optin);
    }

    /// <summary>Waits for all work on this device.</summary>
    /// <exception cref="FlashAttentionException">A CUDA error was reported.</exception>
    public void Synchronize() => Errors.ThrowIfFailed(NativeMethods.fa_device_synchronize(Ordinal));

    /// <inheritdoc/>
    public override string ToString() =>
        $"cuda:{Ordinal} {Name} (sm_{ComputeCapabilityCode}, {MultiprocessorCount} SMs, {TotalMemory / (1024.0 * 1024 * 1024):F1} GiB)";

    private static unsafe bool TryGetAvailability(out string reason, out int count)
    {
        count = 0;
        if (!NativeRuntime.TryEnsureLoaded(out reason))
        {
            return false;
        }

        int n;
        FaStatus status = NativeMethods.fa_device_count(&n);
        if (status != FaStatus.Success)
        {
            string native = Errors.LastErrorMessage();
            reason = native.Length > 0 ? native : Errors.StatusName((FlashAttentionStatus)status);
            if (status == FaStatus.NoDevice)
            {
                reason = Errors.WithNoDeviceAdvice(reason);
            }
            return false;
        }

        if (n <= 0)
        {
            reason = Errors.WithNoDeviceAdvice("The CUDA driver reports no GPU");
            return false;
        }

        count = n;
        reason = string.Empty;
        return true;
    }
}
