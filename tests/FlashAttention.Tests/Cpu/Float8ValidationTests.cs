using FlashAttn.Internal;
using FlashAttn.Native;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The fp8 (e4m3) forward's arguments through the managed API and the real native library, without a GPU (fake aligned
/// addresses that nothing dereferences): valid fp8 calls reach <c>fa_forward_check</c> with the descales in the params
/// and are served exactly where the library says the sm90 fp8 forward serves (compute capability 9.0 in a build that
/// lists <c>sm90_fwd_e4m3_</c> kernels), refused as UNSUPPORTED with the reason elsewhere and on
/// <see cref="KernelPath.Sm80"/>; what only the library checks (alignment, fp8 strides, overlaps) comes back with its
/// status and message; the backward pass and decode (an fp8 query; the fp8 KV cache under 16-bit queries is
/// Float8KvCacheTests') refuse fp8 as UNSUPPORTED, from the library (the managed side does
/// not turn that into a wrong-argument error); the capability query knows the dtype; Float8E4M3 tensors are 1-byte.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class Float8ValidationTests
{
    private const long Q = 0x1000_0000, K = 0x2000_0000, V = 0x3000_0000, O = 0x4000_0000, L = 0x5000_0000;
    private const long QD = 0x7F40_0000, KD = 0x7F50_0000, VD = 0x7F60_0000, CQ = 0x7C00_0000, CK = 0x7D00_0000;
    private const DataType E4M3 = DataType.Float8E4M3, BF16 = DataType.BFloat16, F16 = DataType.Float16, F32 = DataType.Float32;

    [OneTimeSetUp]
    public void LoadLibrary() => TestSupport.NativeLib.Require();

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    private static DeviceTensor TS(long address, DataType dtype, long[] shape, long[] strides) =>
        DeviceTensor.FromPointer((IntPtr)address, dtype, shape, strides);

    /// <summary>
    /// Whether this build has an sm90 fp8 forward kernel for head dim <paramref name="d"/>: one the library lists as
    /// <c>sm90_fwd_e4m3_hdimN_...</c> with N &gt;= d (a head dim runs the smallest kernel at least that large).
    /// </summary>
    private static bool BuildServesFp8(int d) =>
        FlashAttention.CompiledKernels.Any(n => n.StartsWith("sm90_fwd_e4m3_", StringComparison.Ordinal) && TestSupport.ForwardPaths.HeadDimOf(n) >= d);

    /// <summary>Whether this build serves the 16-bit forward at head dim <paramref name="d"/> (FA_HEAD_DIMS at build time).</summary>
    private static bool BuildServes16Bit(int d) =>
        FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, BF16, d, ComputeCapability: 80)).IsSupported;

    /// <summary>B=2, Sq=17, Sk=33, Hq=8, Hkv=2, D=64; per-(batch, kv head) q and v descales, a per-tensor k descale.</summary>
    private static AttentionArguments Fp8(int d = 64) =>
        new(T(Q, E4M3, 2, 17, 8, d), T(K, E4M3, 2, 33, 2, d), T(V, E4M3, 2, 33, 2, d), T(O, BF16, 2, 17, 8, d), T(L, F32, 2, 8, 17))
        {
            QDescale = T(QD, F32, 2, 2),
            KDescale = TS(KD, F32, [2, 2], [0, 0]),
            VDescale = T(VD, F32, 2, 2),
        };

    private static AttentionArguments Fp8Varlen() =>
        new(T(Q, E4M3, 30, 8, 64), T(K, E4M3, 50, 2, 64), T(V, E4M3, 50, 2, 64), T(O, BF16, 30, 8, 64), T(L, F32, 8, 30),
            VarlenBatch.FromDevice(T(CQ, DataType.Int32, 3), T(CK, DataType.Int32, 3), 25, 35, [0, 10, 30], [0, 20, 50]))
        {
            QDescale = T(QD, F32, 2, 2),
            KDescale = T(KD, F32, 2, 2),
            VDescale = TS(VD, F32, [2, 2], [1, 2]), // a transposed [heads_kv, batch] table
        };

    /// <summary>Runs <paramref name="check"/> and returns its status, message and the native functions it reached (with their params).</summary>
    private static (FlashAttentionStatus Status, string Message, List<(string Function, object Params)> Calls) Observe(Func<(FlashAttentionStatus, string)> check)
    {
        var calls = new List<(string, object)>();
        FlashAttentionStatus status;
        string message;
        using (NativeCallObserver.Observe((function, p) => calls.Add((function, p))))
        {
            (status, message) = check();
        }

        return (status, message, calls);
    }

    private static (FlashAttentionStatus Status, string Message, List<(string Function, object Params)> Calls) CheckForward(AttentionArguments args, AttentionOptions? options, int cc) =>
        Observe(() => (FlashAttention.Check(args, out string m, options, cc), m));

    public static IEnumerable<TestCaseData> ValidCalls()
    {
        yield return new TestCaseData(Fp8(), AttentionOptions.Default).SetArgDisplayNames("fixed", "default");
        yield return new TestCaseData(Fp8(), new AttentionOptions { Causal = true, WindowLeft = 64, Softcap = 30f }).SetArgDisplayNames("fixed", "causal-window-softcap");
        yield return new TestCaseData(Fp8(128) with { LogSumExp = T(L, F32, 2, 8, 17) }, new AttentionOptions { KernelPath = KernelPath.Sm90 }).SetArgDisplayNames("fixed-d128", "sm90");
        yield return new TestCaseData(Fp8(80), new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft }).SetArgDisplayNames("fixed-d80", "top-left");
        yield return new TestCaseData(Fp8Varlen(), new AttentionOptions { Causal = true }).SetArgDisplayNames("varlen", "causal");
    }

    /// <summary>
    /// Valid fp8 calls reach fa_forward_check (no managed refusal) with the descale tables in the params, as given
    /// (strides 0 broadcast); the library refuses them at compute capability 8.0, naming fp8 and the sm90 path, and at
    /// 9.0 serves them exactly when this build has the sm90 fp8 kernels.
    /// </summary>
    [TestCaseSource(nameof(ValidCalls))]
    public unsafe void ValidCallsReachTheLibraryAndAreServedBySm90Only(AttentionArguments args, AttentionOptions options)
    {
        var (status80, message80, calls) = CheckForward(args, options, 80);
        Assert.That(calls.Select(c => c.Function), Is.EqualTo(new[] { "fa_forward_check" }), message80);
        var p = (FaForwardParams)calls[0].Params;
        using (Assert.EnterMultipleScope())
        {
            Assert.That(p.q.dtype, Is.EqualTo((int)FaDtype.Float8E4m3));
            Assert.That(p.@out.dtype, Is.EqualTo((int)FaDtype.Bfloat16));
            Assert.That((long)p.q_descale.data, Is.EqualTo(QD));
            Assert.That((long)p.k_descale.data, Is.EqualTo(KD));
            Assert.That((long)p.v_descale.data, Is.EqualTo(VD));
            Assert.That(p.q_descale.rank, Is.EqualTo(2));
            Assert.That(p.k_descale.dtype, Is.EqualTo((int)FaDtype.Float32));
            Assert.That(new[] { p.k_descale.strides[0], p.k_descale.strides[1] }, Is.EqualTo(args.KDescale!.Strides.ToArray()));
            Assert.That(new[] { p.v_descale.strides[0], p.v_descale.strides[1] }, Is.EqualTo(args.VDescale!.Strides.ToArray()));
            Assert.That(status80, Is.EqualTo(FlashAttentionStatus.Unsupported), message80);
            // Asked for the sm90 path by name, the refusal names the path; otherwise it says fp8 runs on sm90 only.
            Assert.That(message80, options.KernelPath == KernelPath.Sm90 ? Does.Contain("FA_PATH_SM90") : Does.Contain("fp8").And.Contain("sm90"));
        }

        int d = (int)args.Q.Shape[^1];
        var (status90, message90, _) = CheckForward(args, options, 90);
        if (BuildServesFp8(d))
        {
            Assert.That(status90, Is.EqualTo(FlashAttentionStatus.Success), message90);
        }
        else
        {
            Assert.That(status90, Is.EqualTo(FlashAttentionStatus.Unsupported), message90);
            Assert.That(message90, options.KernelPath == KernelPath.Sm90 ? Does.Contain("FA_PATH_SM90") : Does.Contain("fp8"));
        }
    }

    /// <summary>The portable path has no fp8 kernels: FA_PATH_SM80 is refused on every GPU, saying to use AUTO or SM90.</summary>
    [TestCase(90)]
    [TestCase(80)]
    [TestCase(0)]
    public void Sm80PathIsRefused(int cc)
    {
        var (status, message, calls) = CheckForward(Fp8(), new AttentionOptions { KernelPath = KernelPath.Sm80 }, cc);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(calls, Has.Count.EqualTo(1));
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), message);
            Assert.That(message, Does.Contain("FA_PATH_SM80").And.Contain("fp8"));
        }
    }

    public static IEnumerable<TestCaseData> NativeRefusals()
    {
        AttentionArguments ok = Fp8();
        const FlashAttentionStatus Invalid = FlashAttentionStatus.InvalidArgument;
        TestCaseData Case(string name, AttentionArguments a, FlashAttentionStatus status, params string[] fragments) =>
            new TestCaseData(a, status, fragments).SetName($"fp8 native check: {name}");

        yield return Case("q_descale misaligned", ok with { QDescale = T(QD + 2, F32, 2, 2) }, Invalid, "q_descale", "aligned");
        yield return Case("v_descale overlaps out", ok with { VDescale = T(O, F32, 2, 2) }, Invalid, "v_descale", "overlap");
        yield return Case("k_descale with a NULL pointer is absent (factor 1)", ok with { KDescale = T(0, F32, 2, 2) }, FlashAttentionStatus.Unsupported, "fp8", "sm90");
        yield return Case("k row stride of 24 fp8 elements",
            ok with { K = TS(K, E4M3, [2, 33, 2, 16], [33 * 48, 48, 24, 1]), V = TS(V, E4M3, [2, 33, 2, 16], [33 * 48, 48, 24, 1]), Q = T(Q, E4M3, 2, 17, 8, 16), Output = T(O, BF16, 2, 17, 8, 16) },
            Invalid, "k.strides[2]", "multiples of 16");
        yield return Case("q misaligned by 8 bytes", ok with { Q = T(Q + 8, E4M3, 2, 17, 8, 64) }, Invalid, "q.data", "aligned");
    }

    /// <summary>What only the library checks comes back with its status and message (the managed side passes it on).</summary>
    [TestCaseSource(nameof(NativeRefusals))]
    public void LibraryChecksComeBackWithTheirStatusAndMessage(AttentionArguments args, FlashAttentionStatus expected, string[] fragments)
    {
        var (status, message, calls) = CheckForward(args, null, 80);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(calls, Has.Count.EqualTo(1), "the library, not the managed side, refuses this");
            Assert.That(status, Is.EqualTo(expected), message);
            foreach (string fragment in fragments)
            {
                Assert.That(message, Does.Contain(fragment));
            }
        }
    }

    /// <summary>
    /// The fp8 forward has no backward (FlashAttention-3's neither): CheckBackward with e4m3 inputs reaches
    /// fa_backward_check, whatever the other tensors' dtypes, and is UNSUPPORTED with the reason.
    /// </summary>
    [TestCase(E4M3, BF16)]
    [TestCase(E4M3, E4M3)]
    public void BackwardRefusesFp8AsUnsupported(DataType inputs, DataType gradients)
    {
        var args = new BackwardArguments(
            T(Q, inputs, 2, 17, 8, 64), T(K, inputs, 2, 33, 2, 64), T(V, inputs, 2, 33, 2, 64), T(O, BF16, 2, 17, 8, 64), T(0x6000_0000, BF16, 2, 17, 8, 64),
            T(L, F32, 2, 8, 17), T(0x6800_0000, gradients, 2, 17, 8, 64), T(0x7000_0000, gradients, 2, 33, 2, 64), T(0x7800_0000, gradients, 2, 33, 2, 64));
        var (status, message, calls) = Observe(() => (FlashAttention.CheckBackward(args, out string m, null, 90), m));
        using (Assert.EnterMultipleScope())
        {
            Assert.That(calls.Select(c => c.Function), Is.EqualTo(new[] { "fa_backward_check" }));
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), message);
            Assert.That(message, Does.Contain("FA_DTYPE_FLOAT8_E4M3").And.Contain("no backward"));
        }
    }

    /// <summary>Decode has no fp8 query: an e4m3 query over an fp16 cache reaches fa_decode_check and is UNSUPPORTED with the reason.</summary>
    [Test]
    public void DecodeRefusesFp8AsUnsupported()
    {
        KvCache cache = KvCache.Wrap(T(K, F16, 2, 64, 2, 64), T(V, F16, 2, 64, 2, 64), [3, 17], cacheSeqLens: T(0x7E00_0000, DataType.Int32, 2));
        var args = new DecodeArguments(T(Q, E4M3, 2, 1, 8, 64), cache, null, null, T(O, BF16, 2, 1, 8, 64));
        var (status, message, calls) = Observe(() => (FlashAttention.CheckDecode(args, out string m, null, 80), m));
        using (Assert.EnterMultipleScope())
        {
            Assert.That(calls.Select(c => c.Function), Is.EqualTo(new[] { "fa_decode_check" }));
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), message);
            Assert.That(message, Does.Contain("q.dtype is FA_DTYPE_FLOAT8_E4M3"));
        }
    }

    /// <summary>
    /// The capability query knows e4m3: the forward on the sm90 path at compute capability 9.0 follows the build (the
    /// same answer as Check), every other path, GPU and pass is refused with a reason, and a head dim that is not a
    /// multiple of 16 is refused saying so.
    /// </summary>
    [Test]
    public void CapabilityQueryKnowsFp8()
    {
        using (Assert.EnterMultipleScope())
        {
            foreach (int d in new[] { 16, 64, 80, 128, 144, 256 })
            {
                foreach (KernelPath path in new[] { KernelPath.Auto, KernelPath.Sm90 })
                {
                    SupportResult r = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, E4M3, d, Causal: true, ComputeCapability: 90, KernelPath: path));
                    Assert.That(r.IsSupported, Is.EqualTo(BuildServesFp8(d)), $"d {d}, {path}: {r.Reason}");
                    FlashAttentionStatus check = FlashAttention.Check(Fp8(d), out string message, new AttentionOptions { Causal = true, KernelPath = path }, 90);
                    Assert.That(check == FlashAttentionStatus.Success, Is.EqualTo(r.IsSupported), $"d {d}, {path}: Check and the query agree ({message})");
                }

                SupportResult at80 = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, E4M3, d, ComputeCapability: 80));
                Assert.That(at80.IsSupported, Is.False);
                if (BuildServes16Bit(d))
                {
                    Assert.That(at80.Reason, Does.Contain("fp8"), $"d {d}: a head dim the build serves is refused for being fp8");
                }
                SupportResult sm80 = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, E4M3, d, ComputeCapability: 90, KernelPath: KernelPath.Sm80));
                Assert.That(sm80.IsSupported, Is.False);
            }

            foreach (AttentionPass pass in new[] { AttentionPass.Backward, AttentionPass.Decode })
            {
                SupportResult r = FlashAttention.QuerySupport(new SupportQuery(pass, E4M3, 128, ComputeCapability: 90));
                Assert.That(r.IsSupported, Is.False, $"{pass}");
                Assert.That(r.Reason, Is.Not.Empty, $"{pass}");
            }

            SupportResult d24 = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, E4M3, 24, ComputeCapability: 90));
            Assert.That(d24.IsSupported, Is.False);
            Assert.That(d24.Reason, Does.Contain("16"));
        }
    }

    /// <summary>A Float8E4M3 tensor: 1-byte elements (a view's byte offset counts them so), short name e4m3, the C ABI's value 5.</summary>
    [Test]
    public void Float8TensorsHaveOneByteElements()
    {
        DeviceTensor t = DeviceTensor.FromPointer((IntPtr)Q, E4M3, [2, 3, 4, 16]);
        FaTensor native = t.ToNative(IntPtr.Zero);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(t.ElementSize, Is.EqualTo(1));
            Assert.That(t.ToString(), Does.StartWith("e4m3[2, 3, 4, 16]"));
            Assert.That((int)DataType.Float8E4M3, Is.EqualTo((int)FaDtype.Float8E4m3));
            Assert.That(native.dtype, Is.EqualTo(5));
            Assert.That(DataTypes.Of<Float8E4M3>(), Is.EqualTo(DataType.Float8E4M3));
            Assert.That(DataTypes.SizeOf(DataType.Float8E4M3), Is.EqualTo(1));
        }
    }
}
