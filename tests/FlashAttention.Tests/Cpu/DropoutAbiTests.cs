using FlashAttn.Internal;
using System.Runtime.InteropServices;
using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// Dropout's C ABI (0.9, FEATURES.md §1) through the real native library, without a GPU: the appended fields' layout,
/// 0.8-sized structs and queries still accepted as "no dropout", every refusal naming its argument (p outside [0, 1), a
/// keep mask of the wrong dtype or shape, misaligned seed/offset pointers, outputs without dropout, the sm90 path and
/// fp8), and the verdict on a valid dropout call: served (by the sm80 path, and by the sm90 path where the build has its
/// dropout kernels).
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed unsafe class DropoutAbiTests
{
    private const nint MaskAddress = 0x0A00_0000;
    private const nint StateAddress = 0x0B00_0000;

    private static void AssertServed((FaStatus Status, string Message) result, string what) =>
        Assert.That(result.Status, Is.EqualTo(FaStatus.Success), $"{what}: {result.Message}");

    /// <summary>Whether the library has the sm90 forward's dropout kernels (FA_SM90_FWD_DROPOUT, on by default in a
    /// build with sm_90a code, whose FA_PATH_SM90 then serves a dropout forward on 9.0).</summary>
    private static bool Sm90ForwardDropout =>
        FlashAttention.CompiledKernels.Any(k => k.StartsWith("sm90_fwd_", StringComparison.Ordinal) && k.Contains("_dropout_"));

    /// <summary>The forward on FA_PATH_SM90 at 9.0: refused, saying the sm90 kernels have no dropout, or served in a
    /// build with them.</summary>
    private static void AssertSm90ForwardVerdict((FaStatus Status, string Message) result)
    {
        if (Sm90ForwardDropout)
        {
            AssertServed(result, "FA_PATH_SM90 in a build with the sm90 dropout kernels");
        }
        else
        {
            AssertRefused(result, FaStatus.Unsupported, "the sm90 kernels have no dropout");
        }
    }

    private static void AssertRefused((FaStatus Status, string Message) result, FaStatus status, string fragment)
    {
        Assert.That(result.Status, Is.EqualTo(status), result.Message);
        Assert.That(result.Message, Does.Contain(fragment));
    }

    /// <summary>A uint8 keep mask [b, hq, sq, sk], contiguous.</summary>
    private static FaTensor Mask(nint data, long b, long hq, long sq, long sk)
    {
        FaTensor t = ForwardParamsFactory.Dense(data, FaDtype.Uint8, b, hq, sq, sk);
        return t;
    }

    [Test]
    public void LayoutAppendsTheDropoutBlockAfterTheSlopes()
    {
        long fwdBlock = Marshal.OffsetOf<FaForwardParams>(nameof(FaForwardParams.dropout_p)).ToInt64();
        long bwdBlock = Marshal.OffsetOf<FaBackwardParams>(nameof(FaBackwardParams.dropout_p)).ToInt64();
        Assert.Multiple(() =>
        {
            Assert.That(fwdBlock, Is.EqualTo(Marshal.OffsetOf<FaForwardParams>(nameof(FaForwardParams.alibi_slopes)).ToInt64() + sizeof(FaTensor)));
            // 0.11 appends block_table right after the dropout block (PagedKvValidationTests checks it).
            Assert.That(Marshal.OffsetOf<FaForwardParams>(nameof(FaForwardParams.block_table)).ToInt64() - fwdBlock, Is.EqualTo(128),
                "p, reserved3, seed, offset, three pointers, the mask");
            Assert.That(Marshal.OffsetOf<FaForwardParams>(nameof(FaForwardParams.dropout_seed)).ToInt64() % 8, Is.Zero);
            Assert.That(bwdBlock, Is.EqualTo(Marshal.OffsetOf<FaBackwardParams>(nameof(FaBackwardParams.alibi_slopes)).ToInt64() + sizeof(FaTensor)));
            Assert.That(sizeof(FaBackwardParams) - bwdBlock, Is.EqualTo(40), "p, reserved2, seed, offset, two pointers");
            // 0.10 appends head_dim_v right after dropout (ValueHeadDimValidationTests checks it).
            Assert.That(Marshal.OffsetOf<FaSupportQuery>(nameof(FaSupportQuery.dropout)).ToInt64() + sizeof(int),
                Is.EqualTo(Marshal.OffsetOf<FaSupportQuery>(nameof(FaSupportQuery.head_dim_v)).ToInt64()));
            Assert.That((int)FaDtype.Uint8, Is.EqualTo(6));
            Assert.That(NativeMethods.FA_VERSION_CODE, Is.GreaterThanOrEqualTo(900));
        });
    }

    [Test]
    public void Version08StructSizesAreStillAccepted()
    {
        uint forward08 = (uint)Marshal.OffsetOf<FaForwardParams>(nameof(FaForwardParams.dropout_p)).ToInt64();
        uint backward08 = (uint)Marshal.OffsetOf<FaBackwardParams>(nameof(FaBackwardParams.dropout_p)).ToInt64();
        uint query08 = (uint)Marshal.OffsetOf<FaSupportQuery>(nameof(FaSupportQuery.dropout)).ToInt64();
        Assert.Multiple(() =>
        {
            Assert.That(forward08, Is.EqualTo(728 + (2 * 80)), "0.8's forward: 0.6's 728 bytes, sinks and slopes");
            Assert.That(backward08, Is.EqualTo(824 + (3 * 80)), "0.8's backward: 0.6's 824 bytes, sinks, dsinks, slopes");
            Assert.That(query08, Is.EqualTo(48), "0.8's query");
        });

        FaForwardParams f = ForwardParamsFactory.Valid();
        f.dropout_p = 7f;  // garbage a 0.8 caller never wrote
        f.reserved3 = 5;
        f.struct_size = forward08;
        Assert.That(ForwardParamsFactory.Check(f).Status, Is.EqualTo(FaStatus.Success));
        f.struct_size = (uint)sizeof(FaForwardParams);
        AssertRefused(ForwardParamsFactory.Check(f), FaStatus.InvalidArgument, "params->reserved3 is 5");

        FaBackwardParams b = BackwardParamsFactory.Valid();
        b.dropout_p = -3f;
        b.struct_size = backward08;
        Assert.That(NativeMethods.fa_backward_check(&b, 0), Is.EqualTo(FaStatus.Success), Errors.LastErrorMessage());
        b.struct_size = (uint)sizeof(FaBackwardParams);
        Assert.That(NativeMethods.fa_backward_check(&b, 0), Is.EqualTo(FaStatus.InvalidArgument));
        Assert.That(Errors.LastErrorMessage(), Does.Contain("dropout_p is -3"));

        FaSupportQuery q = default;
        q.struct_size = query08;
        q.pass = (int)FaPass.Forward;
        q.dtype = (int)FaDtype.Float16;
        q.head_dim = 64;
        q.dropout = 7;  // past a 0.8 struct: not read
        Assert.That(NativeMethods.fa_query_support(&q), Is.EqualTo(FaStatus.Success), Errors.LastErrorMessage());
        q.struct_size = (uint)sizeof(FaSupportQuery);
        Assert.That(NativeMethods.fa_query_support(&q), Is.EqualTo(FaStatus.InvalidArgument));
        Assert.That(Errors.LastErrorMessage(), Does.Contain("query->dropout"));
    }

    [TestCase(1.0f, "dropout_p is 1; it must be in [0, 1)")]
    [TestCase(1.5f, "dropout_p is 1.5; it must be in [0, 1)")]
    [TestCase(-0.25f, "dropout_p is -0.25; it must be in [0, 1)")]
    [TestCase(float.NaN, "nan; it must be in [0, 1)")]
    [TestCase(float.PositiveInfinity, "dropout_p is inf; it must be in [0, 1)")]
    public void ProbabilityOutsideTheUnitIntervalIsRefused(float p, string message)
    {
        FaForwardParams f = ForwardParamsFactory.Valid();
        f.dropout_p = p;
        AssertRefused(ForwardParamsFactory.Check(f), FaStatus.InvalidArgument, message);
        FaBackwardParams b = BackwardParamsFactory.Valid();
        b.dropout_p = p;
        Assert.That(NativeMethods.fa_backward_check(&b, 0), Is.EqualTo(FaStatus.InvalidArgument));
        Assert.That(Errors.LastErrorMessage(), Does.Contain(message));
    }

    [Test]
    public void ValidDropoutCallsGetTheKernelsVerdict()
    {
        FaForwardParams f = ForwardParamsFactory.Valid();
        f.dropout_p = 0.17f;
        f.dropout_seed = 42;
        AssertServed(ForwardParamsFactory.Check(f), "host seed");
        f.dropout_seed_device = (ulong*)0x0C00_0000;
        f.dropout_offset_device = (ulong*)0x0C00_0008;
        f.dropout_rng_state = (ulong*)StateAddress;
        f.dropout_mask = Mask(MaskAddress, 2, 8, 17, 33);
        f.causal = 1;
        f.softcap = 30f;
        AssertServed(ForwardParamsFactory.Check(f), "device seed/offset, rng_state, mask, causal, softcap");
        AssertServed(ForwardParamsFactory.Check(f, 90), "FA_PATH_AUTO on 9.0 serves it (sm90 or sm80)");
        f.kernel_path = (int)FaKernelPath.Sm90;
        AssertSm90ForwardVerdict(ForwardParamsFactory.Check(f, 90));

        FaBackwardParams b = BackwardParamsFactory.Valid();
        b.dropout_p = 0.17f;
        b.dropout_seed_device = (ulong*)StateAddress;
        b.dropout_offset_device = (ulong*)StateAddress + 1;
        FaStatus status = NativeMethods.fa_backward_check(&b, 0);
        AssertServed((status, Errors.LastErrorMessage()), "backward from the forward's rng_state");
    }

    [Test]
    public void MaskAndStateRefusalsNameTheArgument()
    {
        FaForwardParams f = ForwardParamsFactory.Valid();
        f.dropout_p = 0.1f;
        f.dropout_mask = Mask(MaskAddress, 2, 2, 17, 33);
        AssertRefused(ForwardParamsFactory.Check(f), FaStatus.InvalidArgument, "dropout_mask.shape is [2, 2, 17, 33] but must be [2, 8, 17, 33]");
        f.dropout_mask = Mask(MaskAddress, 2, 8, 17, 33);
        f.dropout_mask.dtype = (int)FaDtype.Float16;
        AssertRefused(ForwardParamsFactory.Check(f), FaStatus.InvalidArgument, "dropout_mask must be FA_DTYPE_UINT8");
        f.dropout_mask = Mask(ForwardParamsFactory.OutAddress, 2, 8, 17, 33);
        AssertRefused(ForwardParamsFactory.Check(f), FaStatus.InvalidArgument, "dropout_mask");
        f.dropout_mask = default;
        f.dropout_seed_device = (ulong*)0x0C00_0004;
        AssertRefused(ForwardParamsFactory.Check(f), FaStatus.InvalidArgument, "dropout_seed_device (0xc000004) is not 8-byte aligned");
        f.dropout_seed_device = null;
        f.dropout_p = 0f;
        f.dropout_rng_state = (ulong*)StateAddress;
        AssertRefused(ForwardParamsFactory.Check(f), FaStatus.InvalidArgument, "dropout_rng_state is set but dropout_p is 0");
    }

    [Test]
    public void SupportQueryKnowsDropout()
    {
        FaSupportQuery q = default;
        q.struct_size = (uint)sizeof(FaSupportQuery);
        q.pass = (int)FaPass.Forward;
        q.dtype = (int)FaDtype.Bfloat16;
        q.head_dim = 64;
        q.dropout = 1;
        FaStatus status = NativeMethods.fa_query_support(&q);
        AssertServed((status, Errors.LastErrorMessage()), "forward");
        q.kernel_path = (int)FaKernelPath.Sm90;
        q.compute_capability = 90;
        FaStatus sm90 = NativeMethods.fa_query_support(&q);
        AssertSm90ForwardVerdict((sm90, Errors.LastErrorMessage()));
        q.kernel_path = (int)FaKernelPath.Auto;
        q.compute_capability = 0;
        q.pass = (int)FaPass.Decode;
        Assert.That(NativeMethods.fa_query_support(&q), Is.EqualTo(FaStatus.Unsupported));
        Assert.That(Errors.LastErrorMessage(), Does.Contain("fa_decode has no dropout"));
    }

    /// <summary>The managed SupportQuery asks the same question (its Dropout flag reaches fa_query_support).</summary>
    [Test]
    public void ManagedSupportQueryKnowsDropout()
    {
        var query = new SupportQuery(AttentionPass.Forward, DataType.BFloat16, 64) { Dropout = true };
        SupportResult forward = FlashAttention.QuerySupport(query);
        if (!forward.IsSupported)
        {
            Assert.That(forward.Reason, Does.Contain("head dim"), "only a build without head dim 64 may refuse it");
            Assert.Ignore($"this build does not serve head dim 64: {forward.Reason}");
        }

        using (Assert.EnterMultipleScope())
        {
            Assert.That(FlashAttention.QuerySupport(query with { Pass = AttentionPass.Backward }).IsSupported, Is.True);
            SupportResult sm90 = FlashAttention.QuerySupport(query with { KernelPath = KernelPath.Sm90, ComputeCapability = 90 });
            Assert.That(sm90.IsSupported, Is.EqualTo(Sm90ForwardDropout), sm90.Reason);
            if (!Sm90ForwardDropout)
            {
                Assert.That(sm90.Reason, Does.Contain("the sm90 kernels have no dropout"));
            }
            SupportResult decode = FlashAttention.QuerySupport(query with { Pass = AttentionPass.Decode });
            Assert.That(decode.IsSupported, Is.False);
            Assert.That(decode.Reason, Does.Contain("fa_decode has no dropout"));
            // Without the flag the same sm90 question is answered for a call without dropout.
            Assert.That(FlashAttention.QuerySupport(query with { Dropout = false, KernelPath = KernelPath.Sm90, ComputeCapability = 90 }).Reason,
                Does.Not.Contain("dropout"));
        }
    }

    /// <summary>The managed API carries dropout to the native checks (fake, aligned, disjoint addresses).</summary>
    [Test]
    public void ManagedArgumentsCarryDropout()
    {
        static DeviceTensor T(nint at, DataType dtype, params long[] shape) => DeviceTensor.FromPointer(at, dtype, shape);
        var ok = new AttentionArguments(
            T(ForwardParamsFactory.QAddress, DataType.BFloat16, 2, 17, 8, 64),
            T(ForwardParamsFactory.KAddress, DataType.BFloat16, 2, 33, 2, 64),
            T(ForwardParamsFactory.VAddress, DataType.BFloat16, 2, 33, 2, 64),
            T(ForwardParamsFactory.OutAddress, DataType.BFloat16, 2, 17, 8, 64),
            T(ForwardParamsFactory.LseAddress, DataType.Float32, 2, 8, 17));
        Assert.That(FlashAttention.Check(ok with { DropoutP = 0.17f, DropoutSeed = 1, DropoutOffset = 32 }, out string m1),
            Is.EqualTo(FlashAttentionStatus.Success), m1);
        var withMask = ok with { DropoutP = 0.17f, DropoutMask = T(MaskAddress, DataType.UInt8, 2, 8, 17, 33) };
        Assert.That(FlashAttention.Check(withMask, out string m2), Is.EqualTo(FlashAttentionStatus.Success), m2);
        Assert.That(FlashAttention.Check(ok with { DropoutP = 1f }, out string m3), Is.EqualTo(FlashAttentionStatus.InvalidArgument));
        Assert.That(m3, Does.Contain("dropout_p is 1"));
        var badMask = ok with { DropoutP = 0.1f, DropoutMask = T(MaskAddress, DataType.UInt8, 2, 8, 33, 17) };
        Assert.That(FlashAttention.Check(badMask, out string m4), Is.EqualTo(FlashAttentionStatus.InvalidArgument));
        Assert.That(m4, Does.Contain("dropout_mask.shape is [2, 8, 33, 17] but must be [2, 8, 17, 33]"));
        var sm90 = new AttentionOptions { KernelPath = KernelPath.Sm90 };
        FlashAttentionStatus s5 = FlashAttention.Check(ok with { DropoutP = 0.1f }, out string m5, sm90, 90);
        if (Sm90ForwardDropout)
        {
            Assert.That(s5, Is.EqualTo(FlashAttentionStatus.Success), m5);
        }
        else
        {
            Assert.That(s5, Is.EqualTo(FlashAttentionStatus.Unsupported));
            Assert.That(m5, Does.Contain("the sm90 kernels have no dropout"));
        }
    }
}
