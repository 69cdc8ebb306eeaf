using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// What the library says, without a GPU, about <see cref="KernelPath.Sm90"/> for the forward and decode: the forward is
/// served on compute capability 9.0 (and for "any GPU", 0) for every head dim the build serves, with every option,
/// exactly in a build with sm_90a code (it lists <c>sm90_</c> kernels, among them <c>sm90_fwd_</c> ones of kernel
/// classes 64, 128, 192 and 256); it is refused naming FA_PATH_SM90 on other compute capabilities, and naming 90a in a
/// build without sm_90a code. Decode stays on the sm80 path. The capability query and Check agree on every answer.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class Sm90PathSupportTests
{
    private static readonly DataType[] DataTypes = [DataType.Float16, DataType.BFloat16];

    [OneTimeSetUp]
    public void LoadLibrary() => NativeLib.Require();

    /// <summary>The head dims this build serves at all (multiples of 8 up to its largest kernel), by the default path's query.</summary>
    private static int[] ServedHeadDims(DataType dtype) =>
        [.. Enumerable.Range(1, 32).Select(i => i * 8)
            .Where(d => FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, dtype, d, ComputeCapability: 90)).IsSupported)];

    [Test]
    public void ForwardOnSm90AtComputeCapability80IsRefusedNamingThePath()
    {
        using (Assert.EnterMultipleScope())
        {
            foreach (DataType dtype in DataTypes)
            {
                SupportResult r = FlashAttention.QuerySupport(
                    new SupportQuery(AttentionPass.Forward, dtype, 128, Causal: true, ComputeCapability: 80, KernelPath: KernelPath.Sm90));
                Assert.That(r.IsSupported, Is.False, $"{dtype}: the sm90 forward runs on compute capability 9.0 only");
                Assert.That(r.Reason, Does.Contain("FA_PATH_SM90"), $"{dtype}");

                FlashAttentionStatus status = Check(dtype, 128, new AttentionOptions { Causal = true, KernelPath = KernelPath.Sm90 }, 80, out string message);
                Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"{dtype}, Check at 8.0: {message}");
                Assert.That(message, Does.Contain("FA_PATH_SM90"), $"{dtype}, Check at 8.0");
            }
        }
    }

    /// <summary>
    /// On compute capability 9.0 (and 0, any GPU) the sm90 forward serves every head dim of the build, plain and with
    /// causal, window, softcap and varlen, where the build has sm_90a code; elsewhere each is refused naming 90a.
    /// </summary>
    [Test]
    public void ForwardOnSm90AtComputeCapability90FollowsTheBuild()
    {
        bool has90a = ForwardPaths.BuildHasSm90a;
        TestContext.Out.WriteLine($"build has sm_90a code: {has90a}");
        var problems = new List<string>();
        int asked = 0;
        void Judge(string what, bool supported, string reason)
        {
            asked++;
            if (has90a ? !supported : supported || !reason.Contains("FA_PATH_SM90", StringComparison.Ordinal) || !reason.Contains("90a", StringComparison.Ordinal))
            {
                problems.Add($"{what}: {(supported ? "served" : "refused")} \"{reason}\"");
            }
        }

        foreach (DataType dtype in DataTypes)
        {
            int[] dims = ServedHeadDims(dtype);
            Assert.That(dims, Is.Not.Empty, $"{dtype}: the build serves no head dim");
            foreach (int d in dims)
            {
                foreach (int cc in new[] { 90, 0 })
                {
                    foreach (bool everything in new[] { false, true })
                    {
                        SupportResult r = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, dtype, d, Causal: everything,
                            Window: everything, Softcap: everything, Varlen: everything, ComputeCapability: cc, KernelPath: KernelPath.Sm90));
                        Judge($"query {dtype} head dim {d} at {cc}{(everything ? " with causal, window, softcap, varlen" : string.Empty)}", r.IsSupported, r.Reason);
                    }

                    FlashAttentionStatus status = Check(dtype, d, new AttentionOptions { Causal = true, KernelPath = KernelPath.Sm90 }, cc, out string message);
                    Assert.That(status, Is.AnyOf(FlashAttentionStatus.Success, FlashAttentionStatus.Unsupported), message);
                    Judge($"Check {dtype} head dim {d} at {cc}", status == FlashAttentionStatus.Success, message);
                }
            }
        }

        Assert.That(problems, Is.Empty,
            $"{problems.Count} of {asked} answers for the sm90 forward at compute capability 9.0 / 0 are not " +
            (has90a ? "served (a build with sm_90a code serves every head dim with every option)"
                    : "refused naming FA_PATH_SM90 and 90a (a build without sm_90a code)") + "; the first: " +
            string.Join(" | ", problems.Take(4)));
    }

    [Test]
    public void DecodeOnSm90IsRefusedNamingTheSm80Path()
    {
        using (Assert.EnterMultipleScope())
        {
            foreach (int cc in new[] { 0, 80, 90 })
            {
                SupportResult r = FlashAttention.QuerySupport(
                    new SupportQuery(AttentionPass.Decode, DataType.BFloat16, 128, ComputeCapability: cc, KernelPath: KernelPath.Sm90));
                Assert.That(r.IsSupported, Is.False, $"decode on Sm90 at compute capability {cc}");
                Assert.That(r.Reason, Does.Contain("decode runs on the sm80 path"), $"decode on Sm90 at compute capability {cc}");
            }
        }
    }

    /// <summary>A build with sm_90a code lists sm90 forward kernels for both dtypes, each of kernel class 64, 128 or 256.</summary>
    [Test]
    public void KernelListHasTheSm90ForwardExactlyWithSm90Code()
    {
        string[] sm90Forward = [.. FlashAttention.CompiledKernels.Where(n => n.StartsWith("sm90_fwd_", StringComparison.Ordinal))];
        TestContext.Out.WriteLine($"{sm90Forward.Length} sm90 forward kernels: {string.Join(", ", sm90Forward)}");
        if (!ForwardPaths.BuildHasSm90a)
        {
            Assert.That(sm90Forward, Is.Empty, "a build without sm_90a code lists no sm90 forward kernel");
            return;
        }

        using (Assert.EnterMultipleScope())
        {
            Assert.That(sm90Forward, Has.Some.Contains("_fp16_"), "an fp16 sm90 forward kernel");
            Assert.That(sm90Forward, Has.Some.Contains("_bf16_"), "a bf16 sm90 forward kernel");
            foreach (string name in sm90Forward)
            {
                Assert.That(ForwardPaths.HeadDimOf(name), name.Contains("_e4m3_") ? Is.AnyOf(128, 256) : Is.AnyOf(64, 128, 192, 256),
                            $"{name}: the sm90 forward's kernel classes are 64, 128, 192 and 256 (fp8: 128 and 256)");
            }
        }
    }

    /// <summary>fa_forward_check through FlashAttention.Check, on fake aligned addresses (never dereferenced).</summary>
    private static FlashAttentionStatus Check(DataType dtype, int d, AttentionOptions options, int cc, out string message)
    {
        DeviceTensor Fake(long address, long seq, long heads) => DeviceTensor.FromPointer((IntPtr)address, dtype, [2, seq, heads, d]);
        return FlashAttention.Check(
            Fake(0x1000_0000, 77, 8), Fake(0x2000_0000, 150, 2), Fake(0x3000_0000, 150, 2), Fake(0x4000_0000, 77, 8),
            out message, options: options, computeCapability: cc);
    }
}
