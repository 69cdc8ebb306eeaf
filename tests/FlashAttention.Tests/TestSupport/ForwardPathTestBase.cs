using Microsoft.Extensions.Logging;
using NUnit.Framework;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// An <see cref="AttentionTestBase"/> whose instance logs the forward kernels it launches (<see cref="KernelLog"/>), with
/// <see cref="ForwardOnPath(AttentionOptions, DataType, int, bool, Action, IReadOnlyList{DeviceArray}, string, bool)"/> to run
/// a forward on a chosen <see cref="KernelPath"/> and hold it to <see cref="ForwardPaths"/>' contract: where the path
/// serves, the call succeeds on the expected kernel family; where it does not (Sm90 on another GPU or a build without
/// sm_90a code), the call is refused as the contract says and writes nothing. A refusal is asserted, never ignored.
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
    /// <paramref name="outputs"/> (poisoned by the caller) still 0xFF. <paramref name="pagedKv"/>: the call's keys and values
    /// are paged (a batch with a block table, C ABI 0.11), which the capability query is told too; the path contract is
    /// the same.
    /// </summary>
    private protected bool ForwardOnPath(
        AttentionOptions options, DataType dtype, int headDim, bool varlen, Action forward, IReadOnlyList<DeviceArray> outputs, string context,
        bool pagedKv = false)
    {
        KernelPath path = options.KernelPath;
        var contract = new PathContract(
            ForwardPaths.Serves(path, Device),
            "FA_PATH_SM90",
            $"a build with sm_90a code: {ForwardPaths.BuildHasSm90a}; path {path} must serve the forward at head dim {headDim}",
            (ex, where) => ForwardPaths.AssertSm90Refusal(ex.Status, ex.NativeMessage, Device, where),
            (_, query, where) => Assert.That(query.Reason, Does.Contain("FA_PATH_SM90"), where),
            PagedKv: pagedKv);
        return ForwardOnPath(options, dtype, headDim, varlen, forward, outputs, context, contract);
    }

    /// <summary>
    /// <see cref="ForwardOnPath(AttentionOptions, DataType, int, bool, Action, IReadOnlyList{DeviceArray}, string, bool)"/> under
    /// the given <paramref name="contract"/> (the fp8 forward has its own): where the contract serves the call, it must run
    /// (UNSUPPORTED fails the test) on the kernel family <see cref="ForwardPaths.AssertRan"/> expects, and the capability
    /// query must agree; elsewhere it must be refused as the contract says, the query must refuse too, no kernel may run
    /// and every byte of <paramref name="outputs"/> must still be 0xFF.
    /// </summary>
    private protected bool ForwardOnPath(
        AttentionOptions options,
        DataType dtype,
        int headDim,
        bool varlen,
        Action forward,
        IReadOnlyList<DeviceArray> outputs,
        string context,
        PathContract contract)
    {
        KernelPath path = options.KernelPath;
        context = $"{context}, path {path}";
        SupportResult query = FlashAttention.QuerySupport(
            SupportQuery.For(AttentionPass.Forward, dtype, headDim, options, varlen, Device.ComputeCapabilityCode) with
            {
                HeadDimV = contract.HeadDimV,
                Dropout = contract.Dropout,
                PagedKv = contract.PagedKv,
            });
        Kernels.Clear();
        if (!contract.Serves)
        {
            var ex = Assert.Throws<FlashAttentionException>(() => forward(), $"{context}: {Device} must refuse {contract.Refuses}");
            Stream.Synchronize();
            contract.AssertRefusal?.Invoke(ex!, context);
            using (Assert.EnterMultipleScope())
            {
                contract.AssertRefusalAmongChecks(ex!, query, context);
                Assert.That(query.IsSupported, Is.False, $"{context}: the capability query for {Device} must refuse what the call refuses");
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
            Assert.Fail($"{context}: {Device}, {contract.MustServe}, yet the call came back UNSUPPORTED: {ex.NativeMessage}");
        }

        Assert.That(query.IsSupported, Is.True, $"{context}: the capability query refuses what the call served: {query.Reason}");
        if (contract.AssertRan is { } assertRan)
        {
            assertRan(Kernels.ForwardKernels, context);
        }
        else
        {
            ForwardPaths.AssertRan(Kernels.ForwardKernels, path, Device, dtype, headDim, context);
        }

        return true;
    }

    /// <summary>
    /// <see cref="ForwardOnPath(AttentionOptions, DataType, int, bool, Action, IReadOnlyList{DeviceArray}, string, bool)"/> for a
    /// call whose v and output have a head dim of their own (<paramref name="headDimV"/>, C ABI 0.10;
    /// <paramref name="dropout"/>: whether the call has dropout). The sm80 forward serves the pairs on every GPU, so
    /// <see cref="KernelPath.Sm80"/> must run the pair's sm80 kernels; <see cref="KernelPath.Sm90"/> must run the pair's
    /// sm90 kernels where <see cref="ForwardPaths.Sm90ServesValuePair"/> says it serves (either pair without dropout on a
    /// compute capability 9.0 GPU whose library lists them) and be refused elsewhere, writing nothing
    /// (<see cref="ForwardPaths.AssertValueHeadDimSm90Refusal"/>: FA_PATH_SM90 and the reason for this device and build);
    /// <see cref="KernelPath.Auto"/> must run the sm90 kernels where Sm90 serves and the sm80 ones elsewhere
    /// (<see cref="ForwardPaths.AssertRanValuePair"/>). The capability query with <see cref="SupportQuery.HeadDimV"/> and
    /// <see cref="SupportQuery.Dropout"/> must agree.
    /// </summary>
    private protected bool ForwardValueHeadDimOnPath(
        AttentionOptions options,
        DataType dtype,
        int headDim,
        int headDimV,
        bool varlen,
        Action forward,
        IReadOnlyList<DeviceArray> outputs,
        string context,
        bool dropout = false)
    {
        KernelPath path = options.KernelPath;
        bool sm90 = ForwardPaths.Sm90ServesValuePair(Device, headDim, headDimV, dropout);
        string? reason = ForwardPaths.ValuePairSm90Refusal(AttentionPass.Forward, headDim, headDimV, Device.ComputeCapabilityCode, dropout);
        var contract = new PathContract(
            path != KernelPath.Sm90 || sm90,
            $"FA_PATH_SM90 for (head dim {headDim}, V head dim {headDimV}){(dropout ? " with dropout" : string.Empty)} " +
            $"(a build with sm_90a code: {ForwardPaths.BuildHasSm90a}; it lists the pair's sm90 kernels: " +
            $"{ForwardPaths.BuildHasSm90ValuePair(headDim, headDimV)})",
            path == KernelPath.Sm90
                ? $"the library lists the sm90 forward kernels of (head dim {headDim}, V head dim {headDimV}) and the GPU is compute capability 9.0"
                : $"the sm80 forward serves (head dim {headDim}, V head dim {headDimV}) on every GPU of a build with head dim {headDim}",
            (ex, where) => ForwardPaths.AssertValueHeadDimSm90Refusal(ex.Status, ex.NativeMessage, Device, headDim, headDimV, dropout, where),
            (_, query, where) => Assert.That(
                query.Reason, reason is null ? Does.Contain("FA_PATH_SM90") : Does.Contain("FA_PATH_SM90").And.Contain(reason), where),
            HeadDimV: headDimV,
            AssertRan: (ran, where) => ForwardPaths.AssertRanValuePair(
                ran, ForwardPaths.ResolveValuePair(path, Device, headDim, headDimV, dropout), dtype, headDim, headDimV, where),
            Dropout: dropout);
        return ForwardOnPath(options, dtype, headDim, varlen, forward, outputs, context, contract);
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

    /// <summary>
    /// What a kernel path promises one forward call, as
    /// <see cref="ForwardOnPath(AttentionOptions, DataType, int, bool, Action, IReadOnlyList{DeviceArray}, string, PathContract)"/>
    /// checks it.
    /// </summary>
    /// <param name="Serves">Whether the call must run on this device and build.</param>
    /// <param name="Refuses">What the device must refuse otherwise, for the message of a call that ran anyway.</param>
    /// <param name="MustServe">Why the call must run, for the message of one that came back UNSUPPORTED.</param>
    /// <param name="AssertRefusal">
    /// Checks the refusal (its status and message; the context) on its own, before the other checks; null: nothing.
    /// </param>
    /// <param name="AssertRefusalAmongChecks">
    /// Checks the refusal (with the capability query's answer; the context) among the other checks of a refused call.
    /// </param>
    /// <param name="HeadDimV">The V head dim the capability query asks about (<see cref="SupportQuery.HeadDimV"/>; 0: q's).</param>
    /// <param name="AssertRan">
    /// Checks the forward kernels a served call ran (from the log; the context); null: <see cref="ForwardPaths.AssertRan"/>
    /// for the path.
    /// </param>
    /// <param name="Dropout">Whether the call has dropout, for the capability query (<see cref="SupportQuery.Dropout"/>).</param>
    /// <param name="PagedKv">Whether the call's keys and values are paged, for the capability query (<see cref="SupportQuery.PagedKv"/>).</param>
    private protected sealed record PathContract(
        bool Serves,
        string Refuses,
        string MustServe,
        Action<FlashAttentionException, string>? AssertRefusal,
        Action<FlashAttentionException, SupportResult, string> AssertRefusalAmongChecks,
        int HeadDimV = 0,
        Action<IReadOnlyList<string>, string>? AssertRan = null,
        bool Dropout = false,
        bool PagedKv = false);
}
