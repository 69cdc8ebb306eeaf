using System.Runtime.InteropServices;
using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;
using static FlashAttn.Tests.TestSupport.ForwardParamsFactory;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// Bad arguments through the real native library's fa_forward_check (no GPU needed: it never dereferences the
/// fake pointers). Each case breaks one thing and asserts the exact status and that the message names the
/// culprit, so a user can act on it.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed unsafe class NativeValidationTests
{
    public delegate void Breaker(ref FaForwardParams p);

    [OneTimeSetUp]
    public void LoadLibrary() => NativeLib.Require();

    private static TestCaseData Case(
        string name, Breaker breaker, FaStatus expected, params string[] fragments) =>
        new TestCaseData(breaker, 0, expected, fragments).SetName($"Check rejects: {name}");

    private static TestCaseData CaseAt(
        string name, int computeCapability, Breaker breaker, FaStatus expected, params string[] fragments) =>
        new TestCaseData(breaker, computeCapability, expected, fragments).SetName($"Check rejects: {name}");

    private const FaStatus Invalid = FaStatus.InvalidArgument;
    private const FaStatus Unsupported = FaStatus.Unsupported;

    private static void SetHeads(ref FaForwardParams p, long hq, long hkv)
    {
        p.q = Dense(QAddress, FaDtype.Float16, 2, 17, hq, 64);
        p.@out = Dense(OutAddress, FaDtype.Float16, 2, 17, hq, 64);
        p.k = Dense(KAddress, FaDtype.Float16, 2, 33, hkv, 64);
        p.v = Dense(VAddress, FaDtype.Float16, 2, 33, hkv, 64);
        p.lse = Lse(LseAddress, 2, hq, 17);
    }

    private static void SetHeadDim(ref FaForwardParams p, long d)
    {
        p.q = Dense(QAddress, FaDtype.Float16, 2, 17, 8, d);
        p.@out = Dense(OutAddress, FaDtype.Float16, 2, 17, 8, d);
        p.k = Dense(KAddress, FaDtype.Float16, 2, 33, 2, d);
        p.v = Dense(VAddress, FaDtype.Float16, 2, 33, 2, d);
    }

    private static void PadHeadStride(ref FaTensor t, long headStride)
    {
        t.strides[2] = headStride;
        t.strides[1] = t.shape[2] * headStride;
        t.strides[0] = t.shape[1] * t.strides[1];
    }

    /// <summary>Size of fa_forward_params_t in version 0.1 (up to kernel_path); older callers send this much.</summary>
    private static uint V01Size => (uint)Marshal.OffsetOf<FaForwardParams>(nameof(FaForwardParams.window_left));

    public static IEnumerable<TestCaseData> BadInputs() => BuildBadInputs();

    private static List<TestCaseData> BuildBadInputs()
    {
        var cases = new List<TestCaseData>();
        void Y(TestCaseData c) => cases.Add(c);

        // the struct itself
        Y(Case("struct_size 0", (ref FaForwardParams p) => p.struct_size = 0, Invalid, "struct_size", "fa_forward_params_init"));
        Y(Case("struct_size below version 0.1", (ref FaForwardParams p) => p.struct_size = V01Size - 4, Invalid, "struct_size"));
        Y(Case("reserved1 nonzero", (ref FaForwardParams p) => p.reserved1 = 7, Invalid, "reserved1"));
        Y(Case("reserved2 nonzero", (ref FaForwardParams p) => p.reserved2 = -1, Invalid, "reserved2"));
        Y(Case("reserved0 nonzero", (ref FaForwardParams p) => p.reserved0 = 1, Invalid, "reserved0"));
        Y(CaseAt("negative compute capability", -1, (ref FaForwardParams p) => { }, Invalid, "compute_capability"));

        // null data pointers
        Y(Case("q.data NULL", (ref FaForwardParams p) => p.q.data = 0, Invalid, "q.data", "NULL"));
        Y(Case("k.data NULL", (ref FaForwardParams p) => p.k.data = 0, Invalid, "k.data", "NULL"));
        Y(Case("v.data NULL", (ref FaForwardParams p) => p.v.data = 0, Invalid, "v.data", "NULL"));
        Y(Case("out.data NULL", (ref FaForwardParams p) => p.@out.data = 0, Invalid, "out.data", "NULL"));

        // dtypes
        Y(Case("q dtype fp32", (ref FaForwardParams p) => p.q.dtype = (int)FaDtype.Float32, Invalid, "q.dtype", "FA_DTYPE_FLOAT16"));
        Y(Case("q dtype int32", (ref FaForwardParams p) => p.q.dtype = (int)FaDtype.Int32, Invalid, "q.dtype"));
        Y(Case("v dtype unknown 99", (ref FaForwardParams p) => p.v.dtype = 99, Invalid, "v.dtype", "99"));
        Y(Case("mixed dtypes k bf16 q fp16", (ref FaForwardParams p) => p.k.dtype = (int)FaDtype.Bfloat16, Invalid, "k.dtype", "q.dtype"));
        Y(Case("mixed dtypes out bf16", (ref FaForwardParams p) => p.@out.dtype = (int)FaDtype.Bfloat16, Invalid, "out.dtype", "q.dtype"));
        Y(Case("lse dtype fp16", (ref FaForwardParams p) => p.lse.dtype = (int)FaDtype.Float16, Invalid, "lse.dtype", "FA_DTYPE_FLOAT32"));

        // ranks
        Y(Case("q rank 3", (ref FaForwardParams p) => p.q.rank = 3, Invalid, "q.rank", "rank 4"));
        Y(Case("k rank 5", (ref FaForwardParams p) => p.k.rank = 5, Invalid, "k.rank"));
        Y(Case("out rank 0", (ref FaForwardParams p) => p.@out.rank = 0, Invalid, "out.rank"));
        Y(Case("lse rank 4", (ref FaForwardParams p) => p.lse.rank = 4, Invalid, "lse.rank", "rank 3"));

        // zero or negative sizes
        Y(Case("q batch 0", (ref FaForwardParams p) => p.q.shape[0] = 0, Invalid, "q.shape[0]", "batch"));
        Y(Case("q seqlen 0", (ref FaForwardParams p) => p.q.shape[1] = 0, Invalid, "q.shape[1]", "seqlen_q"));
        Y(Case("k heads negative", (ref FaForwardParams p) => p.k.shape[2] = -2, Invalid, "k.shape[2]", "heads_kv"));
        Y(Case("v head_dim 0", (ref FaForwardParams p) => p.v.shape[3] = 0, Invalid, "v.shape[3]", "head_dim"));

        // shapes against each other
        Y(Case("batch mismatch", (ref FaForwardParams p) => p.v = Dense(VAddress, FaDtype.Float16, 3, 33, 2, 64), Invalid, "v.shape[0]", "batch"));
        Y(Case("k/v seqlen mismatch", (ref FaForwardParams p) => p.v = Dense(VAddress, FaDtype.Float16, 2, 34, 2, 64), Invalid, "v.shape", "k.shape"));
        Y(Case("k/v heads mismatch", (ref FaForwardParams p) => p.v = Dense(VAddress, FaDtype.Float16, 2, 33, 1, 64), Invalid, "v.shape", "k.shape"));
        Y(Case("head_dim mismatch k", (ref FaForwardParams p) => p.k = Dense(KAddress, FaDtype.Float16, 2, 33, 2, 128), Invalid, "k.shape[3]", "head_dim", "q.shape[3]"));
        Y(Case("out shape != q shape", (ref FaForwardParams p) => p.@out = Dense(OutAddress, FaDtype.Float16, 2, 18, 8, 64), Invalid, "out.shape", "q.shape"));
        Y(Case("Hq not a multiple of Hkv", (ref FaForwardParams p) => SetHeads(ref p, 6, 4), Invalid, "does not divide", "heads"));
        Y(Case("lse shape wrong", (ref FaForwardParams p) => p.lse = Lse(LseAddress, 2, 8, 16), Invalid, "lse.shape", "[batch, heads_q, seqlen_q]"));
        Y(Case("lse shape transposed", (ref FaForwardParams p) => p.lse = Lse(LseAddress, 2, 17, 8), Invalid, "lse.shape"));

        // strides and alignment
        Y(Case("q last stride 2", (ref FaForwardParams p) => p.q.strides[3] = 2, Invalid, "q.strides[3]", "contiguous"));
        Y(Case("out last stride 0", (ref FaForwardParams p) => p.@out.strides[3] = 0, Invalid, "out.strides[3]"));
        Y(Case("k negative row stride", (ref FaForwardParams p) => p.k.strides[1] = -128, Invalid, "k.strides[1]", "positive"));
        Y(Case("q row stride not a multiple of 8", (ref FaForwardParams p) =>
        {
            p.q.strides[1] = (8 * 64) + 4;
            p.q.strides[0] = 17 * 520; // a valid batch stride, so the row stride is the first problem
        }, Invalid, "q.strides[1]", "multiples of 8"));
        Y(Case("v head stride not a multiple of 8", (ref FaForwardParams p) => p.v.strides[2] = 68, Invalid, "v.strides[2]", "multiples of 8"));
        Y(Case("q misaligned by 2 bytes", (ref FaForwardParams p) => p.q.data = QAddress + 2, Invalid, "q.data", "16-byte aligned"));
        Y(Case("v misaligned by 8 bytes", (ref FaForwardParams p) => p.v.data = VAddress + 8, Invalid, "v.data", "aligned"));
        Y(Case("lse misaligned by 2 bytes", (ref FaForwardParams p) => p.lse.data = LseAddress + 2, Invalid, "lse.data", "aligned"));
        Y(Case("q spans more than 2^63 bytes", (ref FaForwardParams p) => p.q.strides[0] = (long.MaxValue / 16) * 8, Invalid, "q", "too large"));

        // scalars
        Y(Case("negative scale", (ref FaForwardParams p) => p.softmax_scale = -0.5f, Invalid, "softmax_scale"));
        Y(Case("NaN scale", (ref FaForwardParams p) => p.softmax_scale = float.NaN, Invalid, "softmax_scale"));
        Y(Case("infinite scale", (ref FaForwardParams p) => p.softmax_scale = float.PositiveInfinity, Invalid, "softmax_scale"));
        Y(Case("causal 2", (ref FaForwardParams p) => p.causal = 2, Invalid, "causal is 2"));
        Y(Case("causal -1", (ref FaForwardParams p) => p.causal = -1, Invalid, "causal"));
        Y(Case("causal alignment 2", (ref FaForwardParams p) => p.causal_alignment = 2, Invalid, "causal_alignment"));
        Y(Case("kernel path 7", (ref FaForwardParams p) => p.kernel_path = 7, Invalid, "kernel_path"));
        Y(Case("window_left -2", (ref FaForwardParams p) => p.window_left = -2, Invalid, "window_left"));
        Y(Case("window_right -5", (ref FaForwardParams p) => p.window_right = -5, Invalid, "window_right"));
        Y(Case("negative softcap", (ref FaForwardParams p) => p.softcap = -1f, Invalid, "softcap"));
        Y(Case("NaN softcap", (ref FaForwardParams p) => p.softcap = float.NaN, Invalid, "softcap"));

        // variable-length fields on a fixed-length call, and half-set varlen calls
        Y(Case("varlen_batch without cu_seqlens", (ref FaForwardParams p) => p.varlen_batch = 3, Invalid, "varlen_batch", "cu_seqlens_q"));
        Y(Case("max_seqlen_k without cu_seqlens", (ref FaForwardParams p) => p.max_seqlen_k = 64, Invalid, "max_seqlen_k"));
        Y(Case("host cu_seqlens without device arrays", (ref FaForwardParams p) => p.cu_seqlens_q_host = (int*)0x6000_0000, Invalid, "cu_seqlens_q_host"));
        Y(Case("cu_seqlens_k without cu_seqlens_q", (ref FaForwardParams p) => p.cu_seqlens_k = (int*)0x6000_0000, Invalid, "cu_seqlens_q", "NULL"));

        // outputs overlapping inputs
        Y(Case("out overlaps q", (ref FaForwardParams p) => p.@out.data = QAddress + 16, Invalid, "out", "overlaps", "q"));
        Y(Case("out is v", (ref FaForwardParams p) => p.@out.data = VAddress, Invalid, "out", "overlaps", "v"));
        Y(Case("lse overlaps k", (ref FaForwardParams p) => p.lse.data = KAddress + 64, Invalid, "lse", "overlaps", "k"));
        Y(Case("lse overlaps out", (ref FaForwardParams p) => p.lse.data = OutAddress + 1024, Invalid, "out", "overlaps", "lse"));

        // valid but not served
        Y(Case("head dim 264 not served", (ref FaForwardParams p) => SetHeadDim(ref p, 264), Unsupported, "q.shape[3]", "head_dim", "264"));
        // The sm90 forward runs on compute capability 9.0 only (Sm90PathSupportTests: what 9.0 and "any GPU" get per build).
        Y(CaseAt("kernel path FA_PATH_SM90 on compute capability 8.0", 80, (ref FaForwardParams p) => p.kernel_path = (int)FaKernelPath.Sm90,
            Unsupported, "kernel_path", "FA_PATH_SM90"));
        Y(Case("head dim 100 (not a multiple of 8) with padded strides not served", (ref FaForwardParams p) =>
        {
            SetHeadDim(ref p, 100);
            PadHeadStride(ref p.q, 104);
            PadHeadStride(ref p.@out, 104);
            PadHeadStride(ref p.k, 104);
            PadHeadStride(ref p.v, 104);
        }, Unsupported, "q.shape[3]", "100"));
        Y(Case("head dim 59 with dense strides names the root cause first", (ref FaForwardParams p) => SetHeadDim(ref p, 59), Invalid,
            "q.shape[3] (head_dim) is 59; head dims must be multiples of 8", "q.strides["));
        Y(Case("head dim 100 with dense strides is a stride error", (ref FaForwardParams p) => SetHeadDim(ref p, 100), Invalid, "q.strides[2]", "multiples of 8"));
        Y(Case("head dim 512 not served", (ref FaForwardParams p) => SetHeadDim(ref p, 512), Unsupported, "q.shape[3]", "512"));
        Y(Case("seqlen_q beyond int32", (ref FaForwardParams p) =>
        {
            const long sq = 3_000_000_000;
            p.q = Dense(QAddress, FaDtype.Float16, 1, sq, 8, 64);
            p.k = Dense(KAddress, FaDtype.Float16, 1, 33, 2, 64);
            p.v = Dense(VAddress, FaDtype.Float16, 1, 33, 2, 64);
            p.@out = Dense(unchecked(QAddress + (nint)(1L << 42)), FaDtype.Float16, 1, sq, 8, 64);
            p.lse = default;
        }, Unsupported, "q.shape[1]", "seqlen_q"));
        Y(CaseAt("compute capability 75", 75, (ref FaForwardParams p) => { }, Unsupported, "compute_capability", "7.5", "8.0"));
        Y(CaseAt("compute capability 70", 70, (ref FaForwardParams p) => { }, Unsupported, "compute_capability"));

        // ordering: a wrong argument is reported before something this build does not serve
        Y(Case("head dim 264 with indivisible heads reports the heads", (ref FaForwardParams p) =>
        {
            SetHeads(ref p, 6, 4);
            p.q = Dense(QAddress, FaDtype.Float16, 2, 17, 6, 264);
            p.@out = Dense(OutAddress, FaDtype.Float16, 2, 17, 6, 264);
            p.k = Dense(KAddress, FaDtype.Float16, 2, 33, 4, 264);
            p.v = Dense(VAddress, FaDtype.Float16, 2, 33, 4, 264);
        }, Invalid, "does not divide"));
        Y(CaseAt("compute capability 75 with null q reports q", 75, (ref FaForwardParams p) => p.q.data = 0, Invalid, "q.data"));
        return cases;
    }

    [TestCaseSource(nameof(BadInputs))]
    public void CheckReportsStatusAndNamesTheArgument(Breaker breaker, int computeCapability, FaStatus expected, string[] fragments)
    {
        FaForwardParams p = Valid();
        breaker(ref p);
        var (status, message) = Check(p, computeCapability);
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(expected), $"message: {message}");
            foreach (string fragment in fragments)
            {
                Assert.That(message, Does.Contain(fragment), "the message must name what is wrong");
            }
        });
    }

    [Test]
    public void NullParamsIsInvalid()
    {
        FaStatus status = NativeMethods.fa_forward_check(null, 0);
        string message = NativeLib.LastError();
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(message, Does.Contain("params"));
        });
    }

    [Test]
    public void ForwardWithNullContextIsInvalidBeforeAnyCudaCall()
    {
        FaForwardParams p = Valid();
        FaStatus status = NativeMethods.fa_forward(0, &p, 0);
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("context"));
        });
    }

    [TestCase(64, FaDtype.Float16, true, 0)]
    [TestCase(64, FaDtype.Bfloat16, false, 80)]
    [TestCase(128, FaDtype.Float16, false, 90)]
    [TestCase(128, FaDtype.Bfloat16, true, 86)]
    [TestCase(80, FaDtype.Float16, true, 90)]
    [TestCase(8, FaDtype.Float16, false, 0)]
    public void ValidArgumentsPass(int headDim, FaDtype dtype, bool withLse, int computeCapability)
    {
        var (status, message) = Check(Valid(headDim, dtype, withLse), computeCapability);
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(FaStatus.Success), message);
            Assert.That(message, Is.Empty, "fa_last_error_message is empty after a success");
        });
    }

    [Test]
    public void StridedSlicesOfAPackedBufferPass()
    {
        // q, k, v as views into one packed [B, S, 3, H, D] buffer: row stride 3*H*D, head stride D.
        const long b = 2, s = 17, h = 4, d = 64;
        FaForwardParams p = Valid();
        FaTensor Slice(int which)
        {
            FaTensor t = Dense(QAddress + (nint)(which * h * d * 2), FaDtype.Float16, b, s, h, d);
            t.strides[1] = 3 * h * d;
            t.strides[0] = s * 3 * h * d;
            return t;
        }

        p.q = Slice(0);
        p.k = Slice(1);
        p.v = Slice(2);
        p.@out = Dense(OutAddress, FaDtype.Float16, b, s, h, d);
        p.lse = Lse(LseAddress, b, h, s);
        var (status, message) = Check(p);
        Assert.That(status, Is.EqualTo(FaStatus.Success), message);
    }

    [Test]
    public void ZeroScaleMeansDefaultAndCausalVariantsPass()
    {
        FaForwardParams p = Valid();
        p.softmax_scale = 0f;
        p.causal = 1;
        p.causal_alignment = (int)FaCausalAlignment.TopLeft;
        p.kernel_path = (int)FaKernelPath.Sm80;
        var (status, message) = Check(p, 90);
        Assert.That(status, Is.EqualTo(FaStatus.Success), message);
    }

    [Test]
    public void VersionZeroOneStructIsAcceptedAndItsTailIgnored()
    {
        // An older caller's struct ends after kernel_path: whatever lies beyond must not be read.
        FaForwardParams p = Valid();
        p.struct_size = V01Size;
        p.window_left = -77;
        p.softcap = float.NaN;
        p.reserved2 = 5;
        p.varlen_batch = 9;
        var (status, message) = Check(p);
        Assert.That(status, Is.EqualTo(FaStatus.Success), message);
    }

    [Test]
    public void LargerStructSizeFromANewerCallerIsAccepted()
    {
        FaForwardParams p = Valid();
        p.struct_size += 64;
        var (status, message) = Check(p);
        Assert.That(status, Is.EqualTo(FaStatus.Success), message);
    }
}
