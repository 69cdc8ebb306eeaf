using Microsoft.Extensions.Logging;
using NUnit.Framework;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// A <see cref="GpuTestBase"/> fixture with one <see cref="FlashAttention"/> and one stream on the device under test,
/// created once for the fixture and disposed after it.
/// </summary>
public abstract class AttentionTestBase : GpuTestBase
{
    /// <summary>The instance under test (valid after the one-time set-up).</summary>
    protected FlashAttention Attention { get; private set; } = null!;

    /// <summary>A stream of the device under test (valid after the one-time set-up).</summary>
    protected CudaStream Stream { get; private set; } = null!;

    /// <summary>The logger the fixture's instance gets; null (no logging) unless a fixture needs one.</summary>
    private protected virtual ILogger? CreateLogger() => null;

    [OneTimeSetUp]
    public void CreateAttention()
    {
        Attention = new FlashAttention(Device, CreateLogger());
        Stream = CudaStream.Create(Device);
    }

    [OneTimeTearDown]
    public void DisposeAttention()
    {
        Stream?.Dispose();
        Attention?.Dispose();
    }
}
