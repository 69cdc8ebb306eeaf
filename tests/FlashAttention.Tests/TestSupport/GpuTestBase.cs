using NUnit.Framework;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Decides once per process whether the Gpu tests can run: the native library loads and the driver reports at
/// least one device. Where not, every Gpu test reports itself as ignored with the reason.
/// </summary>
internal static class GpuEnvironment
{
    private static readonly Lazy<(CudaDevice? Device, string Reason)> s_state = new(Probe);

    /// <summary>The device the Gpu tests use (ordinal 0), or null.</summary>
    public static CudaDevice? Device => s_state.Value.Device;

    /// <summary>Why there is no device; "" when there is one.</summary>
    public static string Reason => s_state.Value.Reason;

    private static (CudaDevice?, string) Probe()
    {
        try
        {
            if (!CudaDevice.TryGetAvailability(out string reason) || CudaDevice.Count == 0)
            {
                return (null, reason.Length > 0 ? reason : "CudaDevice.Count is 0");
            }

            return (CudaDevice.Open(0), string.Empty);
        }
        catch (FlashAttentionException ex)
        {
            return (null, $"{ex.Status}: {ex.Message}");
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
        {
            return (null, $"the native library cannot load: {ex.Message}");
        }
    }
}

/// <summary>Base of every Gpu fixture: ignores the fixture's tests where there is no usable device.</summary>
public abstract class GpuTestBase
{
    /// <summary>The device under test (valid after the one-time set-up).</summary>
    protected CudaDevice Device { get; private set; } = null!;

    [OneTimeSetUp]
    public void RequireGpu()
    {
        CudaDevice? device = GpuEnvironment.Device;
        if (device is null)
        {
            Assert.Ignore($"no CUDA device: {GpuEnvironment.Reason}");
        }

        Device = device;
    }
}
