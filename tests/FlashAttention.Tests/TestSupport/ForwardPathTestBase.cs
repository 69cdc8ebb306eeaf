using Microsoft.Extensions.Logging;
using NUnit.Framework;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// An <see cref="AttentionTestBase"/> whose instance logs the forward kernels it launches (<see cref="KernelLog"/>), with
/// <see cref="ForwardOnPath"/> to run a forward on a chosen <see cref="KernelPath"/> and hold it to
/// <see cref="ForwardPaths"/>' contract: where the path serves, the call succeeds on the expected kernel family; where
/// it does not (Sm90 on another GPU or a build without sm_90a code), the call is refused as the contract says and
/// writes nothing. A refusal is asserted, never ignored.
/// </summary>
public abstract class ForwardPathTestBase : AttentionTestBase
{
    private protected KernelLog Kernels { get; } = new();

    private protected override ILogger? CreateLogger() => Kernels;

    /// <summary>
    /// Runs <paramref name="forward"/> (forward calls with <paramref name="options"/>, whose <see cref="AttentionOptions.KernelPath"/>
    /// is the path under test, then a stream synchronise) and checks the path contract for a call of
    /// <paramref name="dtype"/> and <paramref name="headDim"/>. The capability query for this device must agree. Returns true
    /// when the forward ran (the caller then judges its results); false after a checked refusal, with every byte of
    /// <paramref name="outputs"/> (poisoned by the caller) still 0xFF.
    /// </summary>
    private protected bool ForwardOnPath(
        AttentionOptions options, DataType dtype, int headDim, bool varlen, Action forward, IReadOnlyList<DeviceArray> outputs, string context)
    {
        KernelPath path = options.KernelPath;
        context = $"{context}, path {path}";
        SupportResult query = FlashAttention.QuerySupport(
            SupportQuery.For(AttentionPass.Forward, dtype, headDim, options, varlen, Device.ComputeCapabilityCode));
        Kernels.Clear();
        if (!ForwardPaths.Serves(path, Device))
        {
            var ex = Assert.Throws<FlashAttentionException>(() => forward(), $"{context}: {Device} must refuse FA_PATH_SM90");
            Stream.Synchronize();
            ForwardPaths.AssertSm90Refusal(ex!.Status, ex.NativeMessage, Device, context);
            using (Assert.EnterMultipleScope())
            {
                Assert.That(query.IsSupported, Is.False, $"{context}: the capability query for {Device} must refuse what the call refuses");
                Assert.That(query.Reason, Does.Contain("FA_PATH_SM90"), context);
                Assert.That(Kernels.ForwardKernels, Is.Empty, $"{context}: a refused call launched a kernel");
                for (int i = 0; i < outputs.Count; i++)
                {
                    Assert.That(outputs[i].ReadBytes().All(b => b == 0xFF), Is.True, $"{context}: a refused call wrote output {i}");
                }
            }

            return false;
        }

        try
        {
            forward();
        }
        catch (FlashAttentionException ex) when (ex.Status == FlashAttentionStatus.Unsupported)
        {
            Assert.Fail($"{context}: {Device}, a build with sm_90a code: {ForwardPaths.BuildHasSm90a}; path {path} must serve the " +
                $"forward at head dim {headDim}, yet the call came back UNSUPPORTED: {ex.NativeMessage}");
        }

        Assert.That(query.IsSupported, Is.True, $"{context}: the capability query refuses what the call served: {query.Reason}");
        ForwardPaths.AssertRan(Kernels.ForwardKernels, path, Device, dtype, headDim, context);
        return true;
    }

    /// <summary>
    /// Ignores the test when this build does not serve the forward at the head dim on any path (FA_HEAD_DIMS at build
    /// time; Check with the default path says Unsupported).
    /// </summary>
    private protected void RequireServed(DataType dtype, AttentionDims dims)
    {
        // Check never dereferences, so fake aligned addresses suffice.
        DeviceTensor Fake(long address, long seq, long heads) =>
            DeviceTensor.FromPointer((IntPtr)address, dtype, [dims.Batch, seq, heads, dims.HeadDim]);
        FlashAttentionStatus status = FlashAttention.Check(
            Fake(0x1000_0000, dims.SeqQ, dims.HeadsQ), Fake(0x2000_0000, dims.SeqK, dims.HeadsKv),
            Fake(0x3000_0000, dims.SeqK, dims.HeadsKv), Fake(0x4000_0000, dims.SeqQ, dims.HeadsQ),
            out string message, computeCapability: Device.ComputeCapabilityCode);
        if (status == FlashAttentionStatus.Unsupported)
        {
            Assert.Ignore($"this build does not serve head dim {dims.HeadDim}: {message}");
        }

        Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), message);
    }
}
