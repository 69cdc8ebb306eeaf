using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;
using static FlashAttn.Tests.TestSupport.BackwardParamsFactory;
using static FlashAttn.Tests.TestSupport.ForwardParamsFactory;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// Bad backward arguments through the real native library (no GPU needed: nothing is dereferenced): first
/// fa_backward_check directly, one broken field at a time, asserting the exact status and that the message names the
/// culprit (the C ABI's names: q, k, v, out, dout, lse, dq, dk, dv, workspace); then FlashAttention.CheckBackward and
/// CheckBackwardVarlen, whose managed checks name the C# parameters (dOut, dq, dk, dv, logSumExp) and pass the rest
/// through unchanged.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed unsafe class BackwardValidationTests
{
    public delegate void Breaker(ref FaBackwardParams p);

    private const FaStatus Invalid = FaStatus.InvalidArgument;
    private const FaStatus Unsupported = FaStatus.Unsupported;

    [OneTimeSetUp]
    public void LoadLibrary() => NativeLib.Require();

    private static TestCaseData Case(string name, Breaker breaker, FaStatus expected, params string[] fragments) =>
        new TestCaseData(breaker, 0, expected, fragments).SetName($"Backward check rejects: {name}");

    private static TestCaseData CaseAt(string name, int computeCapability, Breaker breaker, FaStatus expected, params string[] fragments) =>
        new TestCaseData(breaker, computeCapability, expected, fragments).SetName($"Backward check rejects: {name}");

    private static void SetHeadDim(ref FaBackwardParams p, long d)
    {
        const FaDtype t = FaDtype.Float16;
        p.q = Dense(QAddress, t, B, Sq, Hq, d);
        p.@out = Dense(OutAddress, t, B, Sq, Hq, d);
        p.dout = Dense(DOutAddress, t, B, Sq, Hq, d);
        p.dq = Dense(DqAddress, t, B, Sq, Hq, d);
        p.k = Dense(KAddress, t, B, Sk, Hkv, d);
        p.v = Dense(VAddress, t, B, Sk, Hkv, d);
        p.dk = Dense(DkAddress, t, B, Sk, Hkv, d);
        p.dv = Dense(DvAddress, t, B, Sk, Hkv, d);
    }

    public static IEnumerable<TestCaseData> BadInputs() => BuildBadInputs();

    // A list, not an iterator: the breakers touch fixed-size buffers, which needs an unsafe context.
    private static List<TestCaseData> BuildBadInputs()
    {
        const FaDtype f16 = FaDtype.Float16;
        var cases = new List<TestCaseData>();
        void Y(TestCaseData c) => cases.Add(c);

        // the struct itself
        Y(Case("struct_size 0", (ref FaBackwardParams p) => p.struct_size = 0, Invalid, "struct_size"));
        Y(Case("reserved0 nonzero", (ref FaBackwardParams p) => p.reserved0 = 1, Invalid, "reserved0"));
        Y(Case("reserved1 nonzero", (ref FaBackwardParams p) => p.reserved1 = 3, Invalid, "reserved1"));
        Y(CaseAt("negative compute capability", -1, (ref FaBackwardParams p) => { }, Invalid, "compute_capability"));

        // the tensors the forward call also had: still named as in fa_forward
        Y(Case("q.data NULL", (ref FaBackwardParams p) => p.q.data = 0, Invalid, "q.data", "NULL"));
        Y(Case("out.data NULL", (ref FaBackwardParams p) => p.@out.data = 0, Invalid, "out.data", "NULL"));
        Y(Case("k/v heads mismatch", (ref FaBackwardParams p) => p.v = Dense(VAddress, f16, B, Sk, 1, 64), Invalid, "v.shape", "k.shape"));
        Y(Case("Hq not a multiple of Hkv", (ref FaBackwardParams p) =>
        {
            p.k = Dense(KAddress, f16, B, Sk, 3, 64);
            p.v = Dense(VAddress, f16, B, Sk, 3, 64);
            p.dk = Dense(DkAddress, f16, B, Sk, 3, 64);
            p.dv = Dense(DvAddress, f16, B, Sk, 3, 64);
        }, Invalid, "does not divide"));

        // lse: required by the backward pass
        Y(Case("lse missing", (ref FaBackwardParams p) => p.lse = default, Invalid, "lse"));
        Y(Case("lse.data NULL", (ref FaBackwardParams p) => p.lse.data = 0, Invalid, "lse.data", "NULL"));
        Y(Case("lse dtype fp16", (ref FaBackwardParams p) => p.lse.dtype = (int)FaDtype.Float16, Invalid, "lse.dtype"));
        Y(Case("lse rank 4", (ref FaBackwardParams p) => p.lse.rank = 4, Invalid, "lse.rank"));
        Y(Case("lse shape transposed", (ref FaBackwardParams p) => p.lse = Lse(LseAddress, B, Sq, Hq), Invalid, "lse.shape"));
        Y(Case("lse misaligned by 2 bytes", (ref FaBackwardParams p) => p.lse.data = LseAddress + 2, Invalid, "lse.data", "aligned"));

        // dout
        Y(Case("dout.data NULL", (ref FaBackwardParams p) => p.dout.data = 0, Invalid, "dout.data", "NULL"));
        Y(Case("dout dtype bf16", (ref FaBackwardParams p) => p.dout.dtype = (int)FaDtype.Bfloat16, Invalid, "dout.dtype"));
        Y(Case("dout rank 3", (ref FaBackwardParams p) => p.dout.rank = 3, Invalid, "dout.rank"));
        Y(Case("dout seqlen differs from out", (ref FaBackwardParams p) => p.dout = Dense(DOutAddress, f16, B, Sq + 1, Hq, 64), Invalid, "dout.shape"));
        Y(Case("dout last stride 2", (ref FaBackwardParams p) => p.dout.strides[3] = 2, Invalid, "dout.strides[3]"));
        Y(Case("dout misaligned", (ref FaBackwardParams p) => p.dout.data = DOutAddress + 2, Invalid, "dout.data", "aligned"));

        // dq
        Y(Case("dq.data NULL", (ref FaBackwardParams p) => p.dq.data = 0, Invalid, "dq.data", "NULL"));
        Y(Case("dq dtype fp32", (ref FaBackwardParams p) => p.dq.dtype = (int)FaDtype.Float32, Invalid, "dq.dtype"));
        Y(Case("dq rank 3", (ref FaBackwardParams p) => p.dq.rank = 3, Invalid, "dq.rank"));
        Y(Case("dq seqlen differs from q", (ref FaBackwardParams p) => p.dq = Dense(DqAddress, f16, B, Sq + 1, Hq, 64), Invalid, "dq.shape"));
        Y(Case("dq heads differ from q", (ref FaBackwardParams p) => p.dq = Dense(DqAddress, f16, B, Sq, Hq / 2, 64), Invalid, "dq.shape"));
        Y(Case("dq row stride not a multiple of 8", (ref FaBackwardParams p) =>
        {
            p.dq.strides[1] = (Hq * 64) + 4;
            p.dq.strides[0] = Sq * ((Hq * 64) + 8);
        }, Invalid, "dq.strides[1]"));
        Y(Case("dq misaligned", (ref FaBackwardParams p) => p.dq.data = DqAddress + 8, Invalid, "dq.data", "aligned"));

        // dk, dv
        Y(Case("dk.data NULL", (ref FaBackwardParams p) => p.dk.data = 0, Invalid, "dk.data", "NULL"));
        Y(Case("dv.data NULL", (ref FaBackwardParams p) => p.dv.data = 0, Invalid, "dv.data", "NULL"));
        Y(Case("dk dtype bf16", (ref FaBackwardParams p) => p.dk.dtype = (int)FaDtype.Bfloat16, Invalid, "dk.dtype"));
        Y(Case("dv heads of q (not expanded GQA)", (ref FaBackwardParams p) => p.dv = Dense(DvAddress, f16, B, Sk, Hq, 64), Invalid, "dv.shape"));
        Y(Case("dk seqlen differs from k", (ref FaBackwardParams p) => p.dk = Dense(DkAddress, f16, B, Sk - 1, Hkv, 64), Invalid, "dk.shape"));
        Y(Case("dv head stride not a multiple of 8", (ref FaBackwardParams p) => p.dv.strides[2] = 68, Invalid, "dv.strides[2]"));

        // gradients overlapping inputs or each other
        Y(Case("dq is q", (ref FaBackwardParams p) => p.dq.data = QAddress, Invalid, "dq", "overlaps"));
        Y(Case("dk overlaps dv", (ref FaBackwardParams p) => p.dk.data = DvAddress + 64, Invalid, "overlaps", "dk"));
        Y(Case("dv overlaps dout", (ref FaBackwardParams p) => p.dv.data = DOutAddress + 32, Invalid, "overlaps", "dv"));
        Y(Case("dq overlaps lse", (ref FaBackwardParams p) => p.dq.data = LseAddress, Invalid, "overlaps", "dq"));

        // scalars and flags
        Y(Case("deterministic 2", (ref FaBackwardParams p) => p.deterministic = 2, Invalid, "deterministic"));
        Y(Case("deterministic -1", (ref FaBackwardParams p) => p.deterministic = -1, Invalid, "deterministic"));
        Y(Case("causal 2", (ref FaBackwardParams p) => p.causal = 2, Invalid, "causal"));
        Y(Case("negative scale", (ref FaBackwardParams p) => p.softmax_scale = -0.5f, Invalid, "softmax_scale"));
        Y(Case("window_left -2", (ref FaBackwardParams p) => p.window_left = -2, Invalid, "window_left"));
        Y(Case("NaN softcap", (ref FaBackwardParams p) => p.softcap = float.NaN, Invalid, "softcap"));

        // workspace
        Y(Case("workspace misaligned (256 bytes needed)", (ref FaBackwardParams p) =>
        {
            p.workspace = WorkspaceAddress + 16;
            p.workspace_size = 1 << 20;
        }, Invalid, "workspace", "aligned"));
        Y(Case("workspace overlaps dq", (ref FaBackwardParams p) =>
        {
            p.workspace = DqAddress;
            p.workspace_size = 1 << 20;
        }, Invalid, "workspace", "overlaps"));

        // variable-length fields on a fixed-length call
        Y(Case("varlen_batch without cu_seqlens", (ref FaBackwardParams p) => p.varlen_batch = 3, Invalid, "varlen_batch"));

        // valid but not served
        Y(Case("head dim 59 with dense strides names the root cause first", (ref FaBackwardParams p) => SetHeadDim(ref p, 59), Invalid,
            "q.shape[3] (head_dim) is 59; head dims must be multiples of 8", "q.strides["));
        Y(Case("head dim 264 not served", (ref FaBackwardParams p) => SetHeadDim(ref p, 264), Unsupported, "head_dim", "264"));
        Y(CaseAt("compute capability 75", 75, (ref FaBackwardParams p) => { }, Unsupported, "compute_capability"));
        Y(CaseAt("d128 on compute capability 8.6 (99 KB of shared memory per block)", 86, (ref FaBackwardParams p) => SetHeadDim(ref p, 128),
            Unsupported, "head dim 128", "shared memory", "8.6"));
        Y(CaseAt("kernel path FA_PATH_SM90 on compute capability 8.0", 80, (ref FaBackwardParams p) => p.kernel_path = (int)FaKernelPath.Sm90,
            Unsupported, "kernel_path is FA_PATH_SM90"));
        Y(Case("kernel path 3", (ref FaBackwardParams p) => p.kernel_path = 3, Invalid, "kernel_path is 3"));

        // ordering: a wrong argument is reported before something this build does not serve
        Y(CaseAt("compute capability 75 with null dq reports dq", 75, (ref FaBackwardParams p) => p.dq.data = 0, Invalid, "dq.data"));
        return cases;
    }

    [TestCaseSource(nameof(BadInputs))]
    public void CheckReportsStatusAndNamesTheArgument(Breaker breaker, int computeCapability, FaStatus expected, string[] fragments)
    {
        FaBackwardParams p = BackwardParamsFactory.Valid();
        breaker(ref p);
        var (status, message) = BackwardParamsFactory.Check(p, computeCapability);
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(expected), $"message: {message}");
            foreach (string fragment in fragments)
            {
                Assert.That(message, Does.Contain(fragment), "the message must name what is wrong");
            }
        });
    }

    [TestCase(64, FaDtype.Float16, 0, false)]
    [TestCase(64, FaDtype.Bfloat16, 80, true)]
    [TestCase(128, FaDtype.Bfloat16, 90, false)]
    [TestCase(32, FaDtype.Float16, 86, true)]
    [TestCase(80, FaDtype.Bfloat16, 0, false)]
    public void ValidArgumentsPass(int headDim, FaDtype dtype, int computeCapability, bool deterministic)
    {
        FaBackwardParams p = BackwardParamsFactory.Valid(headDim, dtype);
        p.deterministic = deterministic ? 1 : 0;
        p.causal = 1;
        p.causal_alignment = (int)FaCausalAlignment.TopLeft;
        var (status, message) = BackwardParamsFactory.Check(p, computeCapability);
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(FaStatus.Success), message);
            Assert.That(message, Is.Empty, "fa_last_error_message is empty after a success");
        });
    }

    [Test]
    public void AlignedCallerWorkspacePassesTheCheck()
    {
        FaBackwardParams p = BackwardParamsFactory.Valid();
        p.workspace = WorkspaceAddress;
        p.workspace_size = 1 << 20;
        var (status, message) = BackwardParamsFactory.Check(p);
        Assert.That(status, Is.EqualTo(FaStatus.Success), message);
    }

    [Test]
    public void ParamsInitSetsTheBackwardDefaults()
    {
        FaBackwardParams p;
        for (int i = 0; i < sizeof(FaBackwardParams); i++)
        {
            ((byte*)&p)[i] = 0xCD;
        }

        Assert.That(NativeMethods.fa_backward_params_init(&p, (nuint)sizeof(FaBackwardParams)), Is.EqualTo(FaStatus.Success));
        FaBackwardParams init = p;
        Assert.Multiple(() =>
        {
            Assert.That(init.struct_size, Is.EqualTo((uint)sizeof(FaBackwardParams)));
            Assert.That(init.deterministic, Is.Zero, "not deterministic by default");
            Assert.That(init.workspace, Is.EqualTo((nint)0), "no caller workspace by default");
            Assert.That(init.workspace_size, Is.EqualTo((nuint)0));
            Assert.That(init.window_left, Is.EqualTo(-1));
            Assert.That(init.window_right, Is.EqualTo(-1));
            Assert.That(init.causal, Is.Zero);
            Assert.That(init.softmax_scale, Is.Zero);
            Assert.That((nint)init.dq.data, Is.EqualTo((nint)0));
            Assert.That((nint)init.cu_seqlens_q, Is.EqualTo((nint)0));
        });
    }

    [Test]
    public void NullParamsIsInvalid()
    {
        FaStatus status = NativeMethods.fa_backward_check(null, 0);
        string message = NativeLib.LastError();
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(message, Does.Contain("params"));
        });
    }

    [Test]
    public void BackwardAndWorkspaceSizeWithNullContextAreInvalidBeforeAnyCudaCall()
    {
        FaBackwardParams p = BackwardParamsFactory.Valid();
        FaStatus run = NativeMethods.fa_backward(0, &p, 0);
        string runMessage = NativeLib.LastError();
        nuint bytes = 12345;
        FaStatus size = NativeMethods.fa_backward_workspace_size(0, &p, &bytes);
        string sizeMessage = NativeLib.LastError();
        Assert.Multiple(() =>
        {
            Assert.That(run, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(runMessage, Does.Contain("context"));
            Assert.That(size, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(sizeMessage, Does.Contain("context"));
        });
    }

    // ---- variable-length --------------------------------------------------------------------------------------------

    public delegate void VarlenBreaker(ref FaBackwardParams p, int[] hostQ, int[] hostK);

    private static TestCaseData VarlenCase(string name, VarlenBreaker breaker, FaStatus expected, params string[] fragments) =>
        new TestCaseData(breaker, expected, fragments).SetName($"Backward varlen check rejects: {name}");

    public static IEnumerable<TestCaseData> BadVarlenInputs() => BuildBadVarlenInputs();

    private static List<TestCaseData> BuildBadVarlenInputs()
    {
        const FaDtype bf16 = FaDtype.Bfloat16;
        return
        [
            VarlenCase("dq rank 4", (ref FaBackwardParams p, int[] hq, int[] hk) => p.dq = Dense(DqAddress, bf16, 1, 17, Hq, 64), Invalid, "dq.rank"),
            VarlenCase("dk rows differ from k", (ref FaBackwardParams p, int[] hq, int[] hk) => p.dk = Packed(DkAddress, bf16, 32, Hkv, 64), Invalid, "dk.shape"),
            VarlenCase("dout rows differ from out", (ref FaBackwardParams p, int[] hq, int[] hk) => p.dout = Packed(DOutAddress, bf16, 18, Hq, 64), Invalid, "dout.shape"),
            VarlenCase("lse fixed-length shape", (ref FaBackwardParams p, int[] hq, int[] hk) => p.lse = Lse(LseAddress, 1, Hq, 17), Invalid, "lse"),
            VarlenCase("lse rows transposed", (ref FaBackwardParams p, int[] hq, int[] hk) => p.lse = PackedLse(LseAddress, 17, Hq), Invalid, "lse.shape"),
            VarlenCase("host cu_seqlens_q decreases", (ref FaBackwardParams p, int[] hq, int[] hk) => hq[2] = 3, Invalid, "cu_seqlens_q"),
            VarlenCase("host cu_seqlens_k past k's rows", (ref FaBackwardParams p, int[] hq, int[] hk) => hk[3] = 40, Invalid, "cu_seqlens_k"),
            VarlenCase("cu_seqlens_k NULL", (ref FaBackwardParams p, int[] hq, int[] hk) => p.cu_seqlens_k = null, Invalid, "cu_seqlens"),
        ];
    }

    [TestCaseSource(nameof(BadVarlenInputs))]
    public void VarlenCheckReportsStatusAndNamesTheArgument(VarlenBreaker breaker, FaStatus expected, string[] fragments)
    {
        int[] hostQ = [.. VarlenCuQ];
        int[] hostK = [.. VarlenCuK];
        fixed (int* pq = hostQ, pk = hostK)
        {
            FaBackwardParams p = ValidVarlen(pq, pk);
            breaker(ref p, hostQ, hostK);
            var (status, message) = BackwardParamsFactory.Check(p);
            Assert.Multiple(() =>
            {
                Assert.That(status, Is.EqualTo(expected), $"message: {message}");
                foreach (string fragment in fragments)
                {
                    Assert.That(message, Does.Contain(fragment), "the message must name what is wrong");
                }
            });
        }
    }

    [Test]
    public void ValidVarlenArgumentsPass()
    {
        int[] hostQ = [.. VarlenCuQ];
        int[] hostK = [.. VarlenCuK];
        fixed (int* pq = hostQ, pk = hostK)
        {
            FaBackwardParams p = ValidVarlen(pq, pk);
            p.causal = 1;
            p.window_left = 4;
            p.deterministic = 1;
            var (status, message) = BackwardParamsFactory.Check(p, 90);
            Assert.That(status, Is.EqualTo(FaStatus.Success), message);
        }
    }

    // ---- the managed CheckBackward / CheckBackwardVarlen ---------------------------------------------------------

    /// <summary>The nine tensors of a managed backward call, over the same fake addresses.</summary>
    public sealed record Args(
        DeviceTensor Q, DeviceTensor K, DeviceTensor V, DeviceTensor Out, DeviceTensor DOut, DeviceTensor Lse,
        DeviceTensor DQ, DeviceTensor DK, DeviceTensor DV, AttentionOptions Options, int Cc)
    {
        public override string ToString() => $"q {Q}, k {K}, dq {DQ}, dk {DK}, lse {Lse}, cc {Cc}";
    }

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) =>
        DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    private static Args ManagedValid(int d = 64, DataType dtype = DataType.BFloat16) => new(
        T(QAddress, dtype, B, Sq, Hq, d),
        T(KAddress, dtype, B, Sk, Hkv, d),
        T(VAddress, dtype, B, Sk, Hkv, d),
        T(OutAddress, dtype, B, Sq, Hq, d),
        T(DOutAddress, dtype, B, Sq, Hq, d),
        T(LseAddress, DataType.Float32, B, Hq, Sq),
        T(DqAddress, dtype, B, Sq, Hq, d),
        T(DkAddress, dtype, B, Sk, Hkv, d),
        T(DvAddress, dtype, B, Sk, Hkv, d),
        AttentionOptions.Default,
        0);

    private static FlashAttentionStatus RunManaged(Args a, out string message) =>
        FlashAttention.CheckBackward(a.Q, a.K, a.V, a.Out, a.DOut, a.Lse, a.DQ, a.DK, a.DV, out message, a.Options, a.Cc);

    private static TestCaseData ManagedCase(string name, Args args, FlashAttentionStatus expected, params string[] fragments) =>
        new TestCaseData(args, expected, fragments).SetName($"Managed CheckBackward: {name}");

    public static IEnumerable<TestCaseData> ManagedBadInputs()
    {
        Args ok = ManagedValid();
        const DataType bf16 = DataType.BFloat16;
        const FlashAttentionStatus invalid = FlashAttentionStatus.InvalidArgument;

        // caught by the managed side
        yield return ManagedCase("dq rank 3", ok with { DQ = T(DqAddress, bf16, B * Sq, Hq, 64) }, invalid, "dq", "rank 4");
        yield return ManagedCase("dq shape differs from q", ok with { DQ = T(DqAddress, bf16, B, Sq + 1, Hq, 64) }, invalid, "dq", "q's shape");
        yield return ManagedCase("dk shaped like q", ok with { DK = T(DkAddress, bf16, B, Sq, Hq, 64) }, invalid, "dk", "k's shape");
        yield return ManagedCase("dv fp16", ok with { DV = T(DvAddress, DataType.Float16, B, Sk, Hkv, 64) }, invalid, "dv", "Float16", "BFloat16");
        yield return ManagedCase("dOut shape differs from output", ok with { DOut = T(DOutAddress, bf16, B, Sq, Hq / 2, 64) }, invalid, "dOut", "q's shape");
        yield return ManagedCase("lse wrong shape", ok with { Lse = T(LseAddress, DataType.Float32, B, Sq, Hq) }, invalid, "logSumExp", "heads_q");
        yield return ManagedCase("lse bf16", ok with { Lse = T(LseAddress, bf16, B, Hq, Sq) }, invalid, "logSumExp", "Float32");
        yield return ManagedCase("negative compute capability", ok with { Cc = -2 }, invalid, "computeCapability");
        yield return ManagedCase("zero scale", ok with { Options = new AttentionOptions { SoftmaxScale = 0f } }, invalid, "SoftmaxScale");

        // passed through to fa_backward_check
        yield return ManagedCase("null dq pointer", ok with { DQ = T(0, bf16, B, Sq, Hq, 64) }, invalid, "dq.data", "NULL");
        yield return ManagedCase("null lse pointer", ok with { Lse = T(0, DataType.Float32, B, Hq, Sq) }, invalid, "lse.data", "NULL");
        yield return ManagedCase("null dout pointer", ok with { DOut = T(0, bf16, B, Sq, Hq, 64) }, invalid, "dout.data", "NULL");
        yield return ManagedCase("dk aliases k", ok with { DK = T(KAddress, bf16, B, Sk, Hkv, 64) }, invalid, "dk", "overlaps");
        yield return ManagedCase("dv misaligned", ok with { DV = T(DvAddress + 2, bf16, B, Sk, Hkv, 64) }, invalid, "dv.data", "aligned");
        yield return ManagedCase("head dim 264 not served", ManagedValid(264), FlashAttentionStatus.Unsupported, "head_dim", "264");
        yield return ManagedCase("compute capability 75", ok with { Cc = 75 }, FlashAttentionStatus.Unsupported, "compute_capability");
    }

    [TestCaseSource(nameof(ManagedBadInputs))]
    public void ManagedCheckReportsStatusAndNamesTheArgument(Args args, FlashAttentionStatus expected, string[] fragments)
    {
        FlashAttentionStatus status = RunManaged(args, out string message);
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(expected), $"message: {message}");
            foreach (string fragment in fragments)
            {
                Assert.That(message, Does.Contain(fragment));
            }
        });
    }

    [TestCase(64, DataType.BFloat16, 0, false)]
    [TestCase(128, DataType.Float16, 90, true)]
    [TestCase(96, DataType.BFloat16, 80, true)]
    public void ManagedValidArgumentsPass(int headDim, DataType dtype, int cc, bool deterministic)
    {
        Args a = ManagedValid(headDim, dtype) with
        {
            Cc = cc,
            Options = new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft, Deterministic = deterministic, Softcap = 20f },
        };
        Assert.Multiple(() =>
        {
            Assert.That(RunManaged(a, out string message), Is.EqualTo(FlashAttentionStatus.Success), message);
            Assert.That(message, Is.Empty);
        });
    }

    [Test]
    public void ManagedNullTensorsThrowArgumentNullException()
    {
        Args a = ManagedValid();
        Assert.Multiple(() =>
        {
            Assert.That(() => FlashAttention.CheckBackward(a.Q, a.K, a.V, a.Out, null!, a.Lse, a.DQ, a.DK, a.DV, out _),
                Throws.ArgumentNullException.With.Property("ParamName").EqualTo("dOut"));
            Assert.That(() => FlashAttention.CheckBackward(a.Q, a.K, a.V, a.Out, a.DOut, null!, a.DQ, a.DK, a.DV, out _),
                Throws.ArgumentNullException.With.Property("ParamName").EqualTo("logSumExp"));
            Assert.That(() => FlashAttention.CheckBackward(a.Q, a.K, a.V, a.Out, a.DOut, a.Lse, a.DQ, a.DK, null!, out _),
                Throws.ArgumentNullException.With.Property("ParamName").EqualTo("dv"));
        });
    }

    /// <summary>The managed varlen check over the batch of <see cref="BackwardParamsFactory.VarlenCuQ"/>, with host copies.</summary>
    [Test]
    public void ManagedVarlenCheckAcceptsAValidBatchAndNamesABadGradient()
    {
        const DataType bf16 = DataType.BFloat16;
        long totalQ = VarlenCuQ[^1], totalK = VarlenCuK[^1];
        using VarlenBatch batch = VarlenBatch.FromDevice(
            T(CuQAddress, DataType.Int32, VarlenCuQ.Length), T(CuKAddress, DataType.Int32, VarlenCuK.Length), 12, 21, VarlenCuQ, VarlenCuK);
        DeviceTensor q = T(QAddress, bf16, totalQ, Hq, 64), k = T(KAddress, bf16, totalK, Hkv, 64), v = T(VAddress, bf16, totalK, Hkv, 64);
        DeviceTensor o = T(OutAddress, bf16, totalQ, Hq, 64), dO = T(DOutAddress, bf16, totalQ, Hq, 64);
        DeviceTensor lse = T(LseAddress, DataType.Float32, Hq, totalQ);
        DeviceTensor dq = T(DqAddress, bf16, totalQ, Hq, 64), dk = T(DkAddress, bf16, totalK, Hkv, 64), dv = T(DvAddress, bf16, totalK, Hkv, 64);
        var options = new AttentionOptions { Causal = true, Deterministic = true };

        FlashAttentionStatus good = FlashAttention.CheckBackwardVarlen(q, k, v, o, dO, lse, dq, dk, dv, batch, out string goodMessage, options);
        FlashAttentionStatus badRank = FlashAttention.CheckBackwardVarlen(
            q, k, v, o, dO, lse, T(DqAddress, bf16, 1, totalQ, Hq, 64), dk, dv, batch, out string rankMessage, options);
        FlashAttentionStatus badLse = FlashAttention.CheckBackwardVarlen(
            q, k, v, o, dO, T(LseAddress, DataType.Float32, 1, Hq, totalQ), dq, dk, dv, batch, out string lseMessage, options);
        FlashAttentionStatus nullDk = FlashAttention.CheckBackwardVarlen(
            q, k, v, o, dO, lse, dq, T(0, bf16, totalK, Hkv, 64), dv, batch, out string nullMessage, options);
        Assert.Multiple(() =>
        {
            Assert.That(good, Is.EqualTo(FlashAttentionStatus.Success), goodMessage);
            Assert.That(badRank, Is.EqualTo(FlashAttentionStatus.InvalidArgument));
            Assert.That(rankMessage, Does.Contain("dq").And.Contain("rank 3"));
            Assert.That(badLse, Is.EqualTo(FlashAttentionStatus.InvalidArgument));
            Assert.That(lseMessage, Does.Contain("logSumExp"));
            Assert.That(nullDk, Is.EqualTo(FlashAttentionStatus.InvalidArgument));
            Assert.That(nullMessage, Does.Contain("dk.data").And.Contain("NULL"));
        });
    }

    [Test]
    public void DeterministicIsPartOfTheOptionsAndOffByDefault()
    {
        var deterministic = new AttentionOptions { Causal = true, Deterministic = true };
        Assert.Multiple(() =>
        {
            Assert.That(AttentionOptions.Default.Deterministic, Is.False);
            Assert.That(deterministic, Is.Not.EqualTo(deterministic with { Deterministic = false }));
            Assert.That(deterministic with { Deterministic = false }, Is.EqualTo(new AttentionOptions { Causal = true }));
        });
    }

    [Test]
    public void ForwardCheckIgnoresDeterministic()
    {
        Args a = ManagedValid();
        FlashAttentionStatus status = FlashAttention.Check(
            a.Q, a.K, a.V, a.Out, out string message, a.Lse, new AttentionOptions { Deterministic = true });
        Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), message);
    }
}

/// <summary>
/// The GPU backward tests' own oracle: the same-dtype naive backward (<see cref="NaiveBackward"/>) with rounding turned
/// off is the float32 version of the maths, so it must agree with the product's float64 reference to float32 accuracy;
/// with bf16 rounding on it must be close but not exact. Checks the yardstick before it is used to judge the kernel.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class BackwardOracleTests
{
    [TestCase(2, 37, 53, 4, 2, 32, true, false, null, null, 0f)]
    [TestCase(1, 53, 37, 6, 1, 16, true, true, null, null, 0f)]
    [TestCase(2, 41, 41, 4, 4, 24, false, false, 9, 5, 0f)]
    [TestCase(1, 29, 47, 8, 2, 16, true, false, 11, null, 3f)]
    public void NaiveBackwardWithoutRoundingMatchesTheReference(
        int b, int sq, int sk, int hq, int hkv, int d, bool causal, bool topLeft, int? left, int? right, float softcap)
    {
        var dims = new AttentionDims(b, sq, sk, hq, hkv, d);
        var mask = new MaskSpec(causal, topLeft, left, right, softcap);
        Random random = TestRandom.ForCurrentTest(out int seed);
        float[] q = TestRandom.Normal(random, dims.QElements), k = TestRandom.Normal(random, dims.KvElements);
        float[] v = TestRandom.Normal(random, dims.KvElements), dOut = TestRandom.Normal(random, dims.QElements);
        float scale = (float)dims.DefaultScale;

        var rq = new double[dims.QElements];
        var rk = new double[dims.KvElements];
        var rv = new double[dims.KvElements];
        AttentionReference.Backward(
            AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v), AttentionReference.ToDouble(dOut),
            new AttentionShape(b, sq, sk, hq, hkv, d), mask.ToOptions(scale), rq, rk, rv);
        var (fq, fk, fv) = NaiveBackward.SameDtype(q, k, v, dOut, dims, mask, scale, x => x);
        var (bq, bk, bv) = NaiveBackward.SameDtype(q, k, v, dOut, dims, mask, scale, Numerics.RoundToBf16);

        Assert.Multiple(() =>
        {
            foreach (var (name, f, bf, r) in new[] { ("dq", fq, bq, rq), ("dk", fk, bk, rk), ("dv", fv, bv, rv) })
            {
                double errF32 = Numerics.RelativeL2(f, r), errBf16 = Numerics.RelativeL2(bf, r);
                Assert.That(errF32, Is.LessThan(1e-5), $"seed {seed}: {name} float32 naive vs float64 reference");
                Assert.That(errBf16, Is.InRange(1e-4, 2e-2), $"seed {seed}: {name} bf16 naive vs float64 reference");
            }
        });
    }
}
