using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// FlashAttention.Check over DeviceTensor.FromPointer views of fake, 16-byte-aligned addresses: works without a
/// GPU (nothing is dereferenced) but goes through the real native library. Some mistakes are caught by the managed
/// side (reported as InvalidArgument with a managed message); the rest pass through to fa_forward_check, whose
/// status and message come back unchanged.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ManagedCheckTests
{
    private const long Q = 0x1000_0000, K = 0x2000_0000, V = 0x3000_0000, O = 0x4000_0000, L = 0x5000_0000;

    public sealed record Args(DeviceTensor Q, DeviceTensor K, DeviceTensor V, DeviceTensor Out, DeviceTensor? Lse, AttentionOptions Options, int Cc)
    {
        public override string ToString() => $"q {Q}, k {K}, v {V}, out {Out}, lse {Lse?.ToString() ?? "none"}, cc {Cc}";
    }

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) =>
        DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    private static DeviceTensor TS(long address, DataType dtype, long[] shape, long[] strides) =>
        DeviceTensor.FromPointer((IntPtr)address, dtype, shape, strides);

    /// <summary>B=2, Sq=17, Sk=33, Hq=8, Hkv=2: valid for head dims the build serves.</summary>
    private static Args Valid(int d = 64, DataType dtype = DataType.Float16) => new(
        T(Q, dtype, 2, 17, 8, d),
        T(K, dtype, 2, 33, 2, d),
        T(V, dtype, 2, 33, 2, d),
        T(O, dtype, 2, 17, 8, d),
        T(L, DataType.Float32, 2, 8, 17),
        AttentionOptions.Default,
        0);

    private static FlashAttentionStatus Run(Args a, out string message) =>
        FlashAttention.Check(a.Q, a.K, a.V, a.Out, out message, a.Lse, a.Options, a.Cc);

    private static TestCaseData Case(string name, Args args, FlashAttentionStatus expected, params string[] fragments) =>
        new TestCaseData(args, expected, fragments).SetName($"Managed Check: {name}");

    private const FlashAttentionStatus Invalid = FlashAttentionStatus.InvalidArgument;
    private const FlashAttentionStatus Unsupported = FlashAttentionStatus.Unsupported;

    public static IEnumerable<TestCaseData> BadInputs()
    {
        Args ok = Valid();

        // caught by the managed side
        yield return Case("q rank 3", ok with { Q = T(Q, DataType.Float16, 34, 8, 64) }, Invalid, "q", "rank 4");
        yield return Case("k rank 2", ok with { K = T(K, DataType.Float16, 66, 128) }, Invalid, "k", "rank 4");
        yield return Case("q head_dim not contiguous",
            ok with { Q = TS(Q, DataType.Float16, [2, 17, 8, 64], [17 * 8 * 128, 8 * 128, 128, 2]) }, Invalid, "q", "contiguous");
        yield return Case("mixed dtypes", ok with { K = T(K, DataType.BFloat16, 2, 33, 2, 64) }, Invalid, "k", "BFloat16", "Float16");
        yield return Case("batch mismatch", ok with { K = T(K, DataType.Float16, 3, 33, 2, 64), V = T(V, DataType.Float16, 3, 33, 2, 64) }, Invalid, "k", "batch");
        yield return Case("head_dim mismatch", ok with { K = T(K, DataType.Float16, 2, 33, 2, 128), V = T(V, DataType.Float16, 2, 33, 2, 128) }, Invalid, "k", "head_dim");
        yield return Case("k and v shapes differ", ok with { V = T(V, DataType.Float16, 2, 32, 2, 64) }, Invalid, "v", "k's shape");
        yield return Case("output shape differs from q", ok with { Out = T(O, DataType.Float16, 2, 17, 4, 64) }, Invalid, "output", "q's shape");
        yield return Case("heads do not divide",
            ok with { K = T(K, DataType.Float16, 2, 33, 3, 64), V = T(V, DataType.Float16, 2, 33, 3, 64) }, Invalid, "does not divide", "heads");
        yield return Case("lse fp16", ok with { Lse = T(L, DataType.Float16, 2, 8, 17) }, Invalid, "logSumExp", "Float32");
        yield return Case("lse wrong shape", ok with { Lse = T(L, DataType.Float32, 2, 17, 8) }, Invalid, "logSumExp", "heads_q");
        yield return Case("NaN scale", ok with { Options = new AttentionOptions { SoftmaxScale = float.NaN } }, Invalid, "SoftmaxScale");
        yield return Case("zero scale", ok with { Options = new AttentionOptions { SoftmaxScale = 0f } }, Invalid, "SoftmaxScale");
        yield return Case("undefined alignment", ok with { Options = new AttentionOptions { Causal = true, CausalAlignment = (CausalAlignment)7 } }, Invalid, "CausalAlignment");
        yield return Case("undefined kernel path", ok with { Options = new AttentionOptions { KernelPath = (KernelPath)9 } }, Invalid, "KernelPath");
        yield return Case("negative compute capability", ok with { Cc = -5 }, Invalid, "computeCapability");

        // passed through to the native library
        yield return Case("null q pointer", ok with { Q = T(0, DataType.Float16, 2, 17, 8, 64) }, Invalid, "q.data", "NULL");
        yield return Case("q misaligned by 2 bytes", ok with { Q = T(Q + 2, DataType.Float16, 2, 17, 8, 64) }, Invalid, "q.data", "aligned");
        yield return Case("k row stride not a multiple of 8",
            ok with { K = TS(K, DataType.Float16, [2, 33, 2, 64], [33 * 136, 132, 64, 1]) }, Invalid, "k.strides[1]", "multiples of 8");
        yield return Case("zero seqlen", ok with { Q = T(Q, DataType.Float16, 2, 0, 8, 64), Out = T(O, DataType.Float16, 2, 0, 8, 64), Lse = null }, Invalid, "q.shape[1]");
        yield return Case("fp32 attention inputs",
            new Args(T(Q, DataType.Float32, 2, 17, 8, 64), T(K, DataType.Float32, 2, 33, 2, 64), T(V, DataType.Float32, 2, 33, 2, 64), T(O, DataType.Float32, 2, 17, 8, 64), null, AttentionOptions.Default, 0),
            Invalid, "q.dtype");
        yield return Case("negative scale", ok with { Options = new AttentionOptions { SoftmaxScale = -1f } }, Invalid, "softmax_scale");
        yield return Case("output aliases q", ok with { Out = T(Q, DataType.Float16, 2, 17, 8, 64) }, Invalid, "out", "overlaps", "q");
        yield return Case("lse aliases v", ok with { Lse = T(V, DataType.Float32, 2, 8, 17) }, Invalid, "lse", "overlaps", "v");
        yield return Case("lse misaligned", ok with { Lse = T(L + 2, DataType.Float32, 2, 8, 17) }, Invalid, "lse.data", "aligned");
        yield return Case("head dim 264 not served", Valid(264), Unsupported, "q.shape[3]", "head_dim", "264");
        yield return Case("compute capability 75", ok with { Cc = 75 }, Unsupported, "compute_capability", "7.5");
    }

    [TestCaseSource(nameof(BadInputs))]
    public void CheckReportsStatusAndNamesTheArgument(Args args, FlashAttentionStatus expected, string[] fragments)
    {
        FlashAttentionStatus status = Run(args, out string message);
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(expected), $"message: {message}");
            foreach (string fragment in fragments)
            {
                Assert.That(message, Does.Contain(fragment));
            }
        });
    }

    [TestCase(64, DataType.Float16, 0)]
    [TestCase(64, DataType.BFloat16, 80)]
    [TestCase(128, DataType.Float16, 90)]
    [TestCase(128, DataType.BFloat16, 0)]
    [TestCase(80, DataType.Float16, 90)]
    [TestCase(8, DataType.BFloat16, 0)]
    public void ValidArgumentsPass(int headDim, DataType dtype, int cc)
    {
        Args a = Valid(headDim, dtype) with { Cc = cc, Options = new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft, SoftmaxScale = 0.3f } };
        Assert.Multiple(() =>
        {
            Assert.That(Run(a, out string message), Is.EqualTo(FlashAttentionStatus.Success), message);
            Assert.That(message, Is.Empty);
            Assert.That(Run(a with { Lse = null }, out message), Is.EqualTo(FlashAttentionStatus.Success), message);
        });
    }

    [Test]
    public void PackedQkvSlicesPass()
    {
        // [B, S, 3, H, D] packed buffer: q, k, v are views with row stride 3*H*D and an element offset.
        const long b = 2, s = 33, h = 4, d = 128;
        long[] shape = [b, s, h, d];
        long[] strides = [s * 3 * h * d, 3 * h * d, d, 1];
        var q = TS(Q, DataType.BFloat16, shape, strides);
        var k = TS(Q + (h * d * 2), DataType.BFloat16, shape, strides);
        var v = TS(Q + (2 * h * d * 2), DataType.BFloat16, shape, strides);
        var o = T(O, DataType.BFloat16, b, s, h, d);
        Assert.That(FlashAttention.Check(q, k, v, o, out string message), Is.EqualTo(FlashAttentionStatus.Success), message);
    }

    [Test]
    public void NullTensorsThrowArgumentNullException()
    {
        Args a = Valid();
        Assert.Multiple(() =>
        {
            Assert.That(() => FlashAttention.Check(null!, a.K, a.V, a.Out, out _), Throws.ArgumentNullException.With.Property("ParamName").EqualTo("q"));
            Assert.That(() => FlashAttention.Check(a.Q, a.K, a.V, null!, out _), Throws.ArgumentNullException.With.Property("ParamName").EqualTo("output"));
        });
    }

    [Test]
    public void DeviceTensorRejectsMalformedShapesAtOnce()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => DeviceTensor.FromPointer((IntPtr)Q, DataType.Float16, []), Throws.ArgumentException);
            Assert.That(() => DeviceTensor.FromPointer((IntPtr)Q, DataType.Float16, [1, 2, 3, 4, 5]), Throws.ArgumentException);
            Assert.That(() => DeviceTensor.FromPointer((IntPtr)Q, DataType.Float16, [2, -1, 8, 64]), Throws.ArgumentException);
            Assert.That(() => DeviceTensor.FromPointer((IntPtr)Q, DataType.Float16, [2, 3], [1]), Throws.ArgumentException);
            Assert.That(() => DeviceTensor.FromPointer((IntPtr)Q, DataType.Float16, [2, 3], [-3, 1]), Throws.ArgumentException);
            Assert.That(() => DeviceTensor.FromPointer((IntPtr)Q, (DataType)42, [2, 3]), Throws.ArgumentException);
        });
        var t = DeviceTensor.FromPointer((IntPtr)Q, DataType.BFloat16, [2, 3, 4, 8]);
        Assert.Multiple(() =>
        {
            Assert.That(t.Strides, Is.EqualTo(new long[] { 96, 32, 8, 1 }));
            Assert.That(t.IsContiguous, Is.True);
            Assert.That(t.ElementCount, Is.EqualTo(192));
            Assert.That(t.ElementSize, Is.EqualTo(2));
            Assert.That(t.Pointer, Is.EqualTo((IntPtr)Q));
            Assert.That(t.Device, Is.Null);
        });
    }
}
