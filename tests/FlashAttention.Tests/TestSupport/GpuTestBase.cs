using FlashAttn.Internal;
using FlashAttn.Native;
using NUnit.Framework;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Decides once per process whether the Gpu tests can run. Only "no device" (fa_device_count returning
/// FA_STATUS_NO_DEVICE: no driver or no GPU) lets them skip; every other probe failure (the library does not load,
/// the driver reports another error, the device cannot be opened) is a broken CUDA setup, and the Gpu fixtures fail
/// with its status and message instead of hiding behind an ignore.
/// </summary>
internal static class GpuEnvironment
{
    /// <summary>The prefix of the skip reason; build.sh and build.ps1 look for it (gpu-test fails on it where a GPU is listed).</summary>
    public const string NoDevicePrefix = "no CUDA device: ";

    private static readonly Lazy<ProbeResult> s_state = new(Probe);

    /// <summary>The device the Gpu tests use (ordinal 0), or null.</summary>
    public static CudaDevice? Device => s_state.Value.Device;

    /// <summary>True when the probe found no device (FA_STATUS_NO_DEVICE): the one case where Gpu tests skip.</summary>
    public static bool NoDevice => s_state.Value.NoDevice;

    /// <summary>Why there is no device, with the status; "" when there is one.</summary>
    public static string Reason => s_state.Value.Reason;

    internal sealed record ProbeResult(CudaDevice? Device, bool NoDevice, string Reason);

    private static unsafe ProbeResult Probe()
    {
        try
        {
            // A library that does not load is a broken build, not a missing GPU (the managed side reports it with
            // status NoDevice, so it is told apart here before the device count is asked).
            if (!NativeRuntime.TryEnsureLoaded(out string loadError))
            {
                return new(null, false, $"the native library cannot load: {loadError}");
            }

            int count = 0;
            FaStatus status = NativeMethods.fa_device_count(&count);
            if (status == FaStatus.NoDevice)
            {
                string message = Errors.LastErrorMessage();
                return new(null, true, message.Length > 0 ? message : "fa_device_count returned FA_STATUS_NO_DEVICE");
            }

            if (status != FaStatus.Success)
            {
                return new(null, false,
                    $"fa_device_count returned {Errors.StatusName((FlashAttentionStatus)status)}: {Errors.LastErrorMessage()}");
            }

            if (count <= 0)
            {
                return new(null, false, $"fa_device_count returned FA_STATUS_SUCCESS with count {count} (no device is FA_STATUS_NO_DEVICE)");
            }

            return new(CudaDevice.Open(0), false, string.Empty);
        }
        catch (FlashAttentionException ex)
        {
            return new(null, false, $"opening cuda:0 failed with {Errors.StatusName(ex.Status)}: {ex.Message}");
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
        {
            return new(null, false, $"the native library cannot load: {ex.GetType().Name}: {ex.Message}");
        }
    }
}

/// <summary>
/// Base of every Gpu fixture: ignores the fixture's tests where there is no device (FA_STATUS_NO_DEVICE), fails them
/// where the probe failed any other way.
/// </summary>
public abstract class GpuTestBase
{
    /// <summary>The device under test (valid after the one-time set-up).</summary>
    protected CudaDevice Device { get; private set; } = null!;

    [OneTimeSetUp]
    public void RequireGpu()
    {
        if (GpuEnvironment.Device is { } device)
        {
            Device = device;
            return;
        }

        if (GpuEnvironment.NoDevice)
        {
            Assert.Ignore(GpuEnvironment.NoDevicePrefix + GpuEnvironment.Reason);
        }

        Assert.Fail($"the CUDA setup is broken (this is not \"no device\", so the Gpu tests do not skip): {GpuEnvironment.Reason}");
    }
}
