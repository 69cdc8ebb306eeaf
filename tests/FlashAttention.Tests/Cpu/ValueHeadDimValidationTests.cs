using System.Runtime.InteropServices;
using FlashAttn.Internal;
using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;
using static FlashAttn.Tests.TestSupport.ForwardParamsFactory;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// A V head dim other than q's (issue 14, C ABI 0.10) through the managed API and the real native library, without a
/// GPU (fake aligned addresses that nothing dereferences): FlashAttention-3's pairs (head_dim, head_dim_v) = (192, 128)
/// and (64, 512) reach <c>fa_forward_check</c> with v's and the output's head dim in the params and are served with
/// every forward option on <see cref="KernelPath.Auto"/> and <see cref="KernelPath.Sm80"/> wherever the build has head
/// dim D (the managed side adds no refusal of its own); what the library refuses comes back with its status and
/// reason: any other pair (UNSUPPORTED, "head_dim_v", "(192, 128) and (64, 512)"), an output whose head dim is not v's
/// (INVALID_ARGUMENT, "out takes v's head dim"; the managed side says so first), the backward of (64, 512)
/// (UNSUPPORTED, "backward of a V head dim"; (192, 128)'s is served) and fp8 (UNSUPPORTED). <see cref="KernelPath.Sm90"/>
/// serves the forward of both pairs, with every forward option but dropout, and (192, 128)'s backward, at compute
/// capability 9.0 and 0 (any GPU) exactly where the build lists their <c>sm90_fwd_*_hdim&lt;D&gt;v&lt;DV&gt;_*</c> and
/// <c>sm90_bwd_*_hdim192v128_*</c> kernels (a build with sm_90a code and head dim D); everywhere else it is UNSUPPORTED
/// naming FA_PATH_SM90 and why (dropout; no sm_90a code, "90a"; another compute capability, "compute capability 9.0";
/// (64, 512)'s backward, "(192, 128) only"). The capability query with <see cref="SupportQuery.HeadDimV"/> agrees with
/// the checks.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed unsafe class ValueHeadDimValidationTests
{
    private const long Q = 0x1000_0000, K = 0x2000_0000, V = 0x3000_0000, O = 0x4000_0000, L = 0x5000_0000;
    private const long DO = 0x6000_0000, DQ = 0x6800_0000, DK = 0x7000_0000, DV = 0x7800_0000;
    private const long CQ = 0x7C00_0000, CK = 0x7D00_0000, SL = 0x7E00_0000, AL = 0x7E80_0000, DM = 0x7F00_0000;
    private const DataType F16 = DataType.Float16, BF16 = DataType.BFloat16, F32 = DataType.Float32, E4M3 = DataType.Float8E4M3;

    private static readonly (int D, int Dv)[] Pairs = [(192, 128), (64, 512)];

    [OneTimeSetUp]
    public void LoadLibrary() => NativeLib.Require();

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    /// <summary>B=2, Sq=17, Sk=33, Hq=8, Hkv=2 (or <paramref name="hkv"/>); q and k with head dim d, v and the output with dv.</summary>
    private static AttentionArguments Fixed(int d, int dv, DataType dtype = BF16, int hkv = 2, DataType? outType = null) =>
        new(T(Q, dtype, 2, 17, 8, d), T(K, dtype, 2, 33, hkv, d), T(V, dtype, 2, 33, hkv, dv), T(O, outType ?? dtype, 2, 17, 8, dv), T(L, F32, 2, 8, 17));

    /// <summary>Two sequences (q lengths 10 and 20, k lengths 20 and 30) packed; q and k with head dim d, v and the output with dv.</summary>
    private static AttentionArguments Varlen(int d, int dv, DataType dtype = BF16) =>
        new(T(Q, dtype, 30, 8, d), T(K, dtype, 50, 2, d), T(V, dtype, 50, 2, dv), T(O, dtype, 30, 8, dv), T(L, F32, 8, 30),
            VarlenBatch.FromDevice(T(CQ, DataType.Int32, 3), T(CK, DataType.Int32, 3), 25, 35, [0, 10, 30], [0, 20, 50]));

    /// <summary>Whether this build has the 16-bit forward at head dim <paramref name="d"/> (FA_HEAD_DIMS at build time).</summary>
    /// <summary>Whether the build has head dim d's own kernels (the pairs need it exactly, not a larger one).</summary>
    private static bool BuildHasHeadDim(int d) =>
        FlashAttention.CompiledKernels.Any(n => n.StartsWith("sm80_fwd_", StringComparison.Ordinal) && n.Contains($"_hdim{d}_", StringComparison.Ordinal));

    /// <summary>Whether the build has the pair's backward kernels ((192, 128) only, as FlashAttention-3's).</summary>
    private static bool BuildHasPairBackward(int d, int dv) =>
        FlashAttention.CompiledKernels.Any(n => n.StartsWith("sm80_bwd_", StringComparison.Ordinal) && n.Contains($"_hdim{d}v{dv}_", StringComparison.Ordinal));

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

    private static (FlashAttentionStatus Status, string Message, List<(string Function, object Params)> Calls) CheckForward(
        AttentionArguments args, AttentionOptions? options, int cc) =>
        Observe(() => (FlashAttention.Check(args, out string m, options, cc), m));

    private static SupportQuery QueryFor(AttentionArguments args, AttentionOptions options, int cc) =>
        SupportQuery.For(AttentionPass.Forward, args.Q.DataType, (int)args.Q.Shape[^1], options, args.IsVariableLength, cc) with
        {
            HeadDimV = (int)args.V.Shape[^1],
            Sinks = args.Sinks is not null,
            Alibi = args.AlibiSlopes is not null,
            Dropout = args.DropoutP > 0,
        };

    // ---- served ---------------------------------------------------------------------------------------------------

    /// <summary>The calls of one pair and dtype, one per forward option (each with its arguments and options, path unset).</summary>
    private static (string Name, AttentionArguments Args, AttentionOptions Options)[] CallsWithEachOption(int d, int dv, DataType dtype)
    {
        AttentionArguments ok = Fixed(d, dv, dtype);
        return
        [
            ("default", ok, new AttentionOptions()),
            ("causal bottom-right", ok, new AttentionOptions { Causal = true }),
            ("causal top-left", ok, new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft }),
            ("window + softcap", ok, new AttentionOptions { WindowLeft = 16, WindowRight = 4, Softcap = 30f }),
            ("custom scale", ok, new AttentionOptions { SoftmaxScale = 0.37f }),
            ("alibi [batch, heads_q]", ok with { AlibiSlopes = T(AL, F32, 2, 8) }, new AttentionOptions { Causal = true }),
            ("sinks", ok with { Sinks = T(SL, F32, 8) }, new AttentionOptions()),
            ("dropout with its mask", ok with { DropoutP = 0.1f, DropoutSeed = 5, DropoutMask = T(DM, DataType.UInt8, 2, 8, 17, 33) }, new AttentionOptions()),
            ("no log-sum-exp", ok with { LogSumExp = null }, new AttentionOptions()),
            ("MQA", Fixed(d, dv, dtype, hkv: 1), new AttentionOptions { Causal = true }),
            ("varlen causal", Varlen(d, dv, dtype), new AttentionOptions { Causal = true }),
        ];
    }

    public static IEnumerable<TestCaseData> ServedCalls()
    {
        foreach (var (d, dv) in Pairs)
        {
            foreach (DataType dtype in new[] { F16, BF16 })
            {
                foreach (KernelPath path in new[] { KernelPath.Auto, KernelPath.Sm80 })
                {
                    foreach (var (name, args, options) in CallsWithEachOption(d, dv, dtype))
                    {
                        yield return new TestCaseData(args, options with { KernelPath = path })
                            .SetName($"V head dim check: ({d}, {dv}) {dtype} {path} {name}");
                    }
                }
            }
        }
    }

    /// <summary>
    /// The served pairs reach fa_forward_check (no managed refusal) with v's and the output's head dim in the params,
    /// and are served at compute capability 0, 8.0 and 9.0 on Auto and Sm80 with every forward option exactly where the
    /// build has head dim D (else UNSUPPORTED naming head_dim_v); the capability query says the same.
    /// </summary>
    [TestCaseSource(nameof(ServedCalls))]
    public void ServedPairsPassWithEveryForwardOption(AttentionArguments args, AttentionOptions options)
    {
        int d = (int)args.Q.Shape[^1], dv = (int)args.V.Shape[^1];
        bool served = BuildHasHeadDim(d);
        foreach (int cc in new[] { 0, 80, 90 })
        {
            var (status, message, calls) = CheckForward(args, options, cc);
            SupportResult query = FlashAttention.QuerySupport(QueryFor(args, options, cc));
            using (Assert.EnterMultipleScope())
            {
                Assert.That(calls.Select(c => c.Function), Is.EqualTo(new[] { "fa_forward_check" }), $"cc {cc}: {message}");
                if (calls.Count == 1)
                {
                    var p = (FaForwardParams)calls[0].Params;
                    int last = p.q.rank - 1;
                    Assert.That(p.q.shape[last], Is.EqualTo(d), "q's head dim in the params");
                    Assert.That(p.v.shape[last], Is.EqualTo(dv), "v's head dim in the params");
                    Assert.That(p.@out.shape[last], Is.EqualTo(dv), "out's head dim in the params");
                }

                if (served)
                {
                    Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), $"cc {cc}: {message}");
                    Assert.That(query.IsSupported, Is.True, $"cc {cc}: the query agrees: {query.Reason}");
                }
                else
                {
                    // The build lacks head dim D: refused for that (q's head dim, or the pair's kernels it lacks).
                    Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"cc {cc}: {message}");
                    Assert.That(message, Does.Contain("head_dim"), $"cc {cc}");
                    Assert.That(query.IsSupported, Is.False, $"cc {cc}");
                }
            }
        }
    }

    /// <summary>The positional Check and CheckVarlen forms take the V head dim too.</summary>
    [TestCase(192, 128)]
    [TestCase(64, 512)]
    public void PositionalChecksTakeTheValueHeadDim(int d, int dv)
    {
        FlashAttentionStatus expected = BuildHasHeadDim(d) ? FlashAttentionStatus.Success : FlashAttentionStatus.Unsupported;
        AttentionArguments f = Fixed(d, dv), v = Varlen(d, dv);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(FlashAttention.Check(f.Q, f.K, f.V, f.Output, out string m1, f.LogSumExp, new AttentionOptions { Causal = true }), Is.EqualTo(expected), m1);
            Assert.That(FlashAttention.CheckVarlen(v.Q, v.K, v.V, v.Output, v.Batch!, out string m2, v.LogSumExp), Is.EqualTo(expected), m2);
        }
    }

    // ---- refused by the library --------------------------------------------------------------------------------------

    public static IEnumerable<TestCaseData> OtherPairs()
    {
        (int D, int Dv)[] pairs = [(128, 64), (64, 128), (64, 256), (192, 256), (256, 128), (96, 128), (128, 512), (192, 64), (64, 504), (32, 512)];
        foreach (var (d, dv) in pairs)
        {
            yield return new TestCaseData(d, dv).SetArgDisplayNames($"({d}, {dv})");
        }
    }

    /// <summary>
    /// Any other pair reaches the library (the managed side does not judge v's head dim) and is UNSUPPORTED naming
    /// head_dim_v and the served pairs, fixed-length and varlen, on Auto and Sm80, in the query too (in a build without
    /// head dim D, q's head dim is refused first, UNSUPPORTED all the same).
    /// </summary>
    [TestCaseSource(nameof(OtherPairs))]
    public void OtherPairsAreUnsupported(int d, int dv)
    {
        bool hasD = BuildHasHeadDim(d);
        foreach (AttentionArguments args in new[] { Fixed(d, dv), Varlen(d, dv, F16) })
        {
            foreach (KernelPath path in new[] { KernelPath.Auto, KernelPath.Sm80 })
            {
                foreach (int cc in new[] { 0, 90 })
                {
                    var options = new AttentionOptions { Causal = true, KernelPath = path };
                    string where = $"({d}, {dv}) {(args.IsVariableLength ? "varlen" : "fixed")} {path} cc {cc}";
                    var (status, message, calls) = CheckForward(args, options, cc);
                    SupportResult query = FlashAttention.QuerySupport(QueryFor(args, options, cc));
                    using (Assert.EnterMultipleScope())
                    {
                        Assert.That(calls, Has.Count.EqualTo(1), $"{where}: the library, not the managed side, refuses this");
                        Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"{where}: {message}");
                        Assert.That(query.IsSupported, Is.False, where);
                        if (hasD)
                        {
                            Assert.That(message, Does.Contain("head_dim_v").And.Contain("(192, 128) and (64, 512)"), where);
                            Assert.That(query.Reason, Does.Contain("head_dim_v").And.Contain("(192, 128) and (64, 512)"), where);
                        }
                    }
                }
            }
        }
    }

    /// <summary>
    /// fa_forward_check itself: an output whose head dim is not v's (q's, or neither) is INVALID_ARGUMENT saying out takes
    /// v's head dim; the same params with out at v's head dim pass where the build has head dim D.
    /// </summary>
    [TestCase(192, 128, 192)]
    [TestCase(192, 128, 64)]
    [TestCase(64, 512, 64)]
    [TestCase(64, 512, 256)]
    public void LibraryRefusesAnOutputWithoutVsHeadDim(int d, int dv, int outDim)
    {
        FaForwardParams p = Valid(d, FaDtype.Bfloat16);
        p.v = Dense(VAddress, FaDtype.Bfloat16, 2, 33, 2, dv);
        p.@out = Dense(OutAddress, FaDtype.Bfloat16, 2, 17, 8, outDim);
        var (status, message) = ForwardParamsFactory.Check(p);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(status, Is.EqualTo(FaStatus.InvalidArgument), message);
            Assert.That(message, Does.Contain("out takes v's head dim"));
        }

        p.@out = Dense(OutAddress, FaDtype.Bfloat16, 2, 17, 8, dv);
        (status, message) = ForwardParamsFactory.Check(p);
        Assert.That(status, Is.EqualTo(BuildHasHeadDim(d) ? FaStatus.Success : FaStatus.Unsupported), message);
    }

    /// <summary>The managed side tells an output without v's head dim first, in the same words, without calling the library.</summary>
    [TestCase(192, 128, 192)]
    [TestCase(64, 512, 64)]
    [TestCase(64, 512, 128)]
    public void ManagedCheckRefusesAnOutputWithoutVsHeadDim(int d, int dv, int outDim)
    {
        AttentionArguments args = Fixed(d, dv) with { Output = T(O, BF16, 2, 17, 8, outDim) };
        var (status, message, calls) = CheckForward(args, null, 0);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(calls, Is.Empty, "refused before the library");
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.InvalidArgument), message);
            Assert.That(message, Does.Contain("out takes v's head dim"));
        }
    }

    /// <summary>The shapes must still agree in every dimension but the head dim: v with k's, the output with q's.</summary>
    [Test]
    public void ManagedCheckRefusesShapesThatDisagreeElsewhere()
    {
        AttentionArguments ok = Fixed(192, 128);
        (string Name, AttentionArguments Args, string Fragment)[] cases =
        [
            ("v seqlen 32", ok with { V = T(V, BF16, 2, 32, 2, 128) }, "v must have k's shape"),
            ("v heads 1", ok with { V = T(V, BF16, 2, 33, 1, 128) }, "v must have k's shape"),
            ("v rank 3", ok with { V = T(V, BF16, 66, 2, 128) }, "v must have rank 4"),
            ("output seqlen 16", ok with { Output = T(O, BF16, 2, 16, 8, 128) }, "output must have q's shape"),
            ("output heads 4", ok with { Output = T(O, BF16, 2, 17, 4, 128) }, "output must have q's shape"),
        ];
        foreach (var (name, args, fragment) in cases)
        {
            var (status, message, calls) = CheckForward(args, null, 0);
            using (Assert.EnterMultipleScope())
            {
                Assert.That(calls, Is.Empty, $"{name}: refused before the library");
                Assert.That(status, Is.EqualTo(FlashAttentionStatus.InvalidArgument), $"{name}: {message}");
                Assert.That(message, Does.Contain(fragment), name);
            }
        }
    }

    /// <summary>
    /// The backward of a V head dim: (192, 128) is served on the sm80 path (FlashAttention-3's backward pair) where the
    /// build has head dim 192, and on the sm90 path too in a build with sm_90a code; (64, 512) is forward only. With dOut
    /// shaped like the output and dv like v, CheckBackward reaches fa_backward_check and succeeds, or is UNSUPPORTED
    /// saying why (fixed and varlen, any compute capability: AUTO takes sm90 on 9.0 where it serves, sm80 elsewhere);
    /// the query agrees.
    /// </summary>
    [TestCase(192, 128, false)]
    [TestCase(64, 512, false)]
    [TestCase(192, 128, true)]
    [TestCase(64, 512, true)]
    public void BackwardOf192And128IsServedAndOf64And512Unsupported(int d, int dv, bool varlen)
    {
        AttentionArguments f = varlen ? Varlen(d, dv) : Fixed(d, dv);
        DeviceTensor Like(long address, DeviceTensor t) => DeviceTensor.FromPointer((IntPtr)address, t.DataType, t.Shape.ToArray());
        var args = new BackwardArguments(f.Q, f.K, f.V, f.Output, Like(DO, f.Output), f.LogSumExp!, Like(DQ, f.Q), Like(DK, f.K), Like(DV, f.V), f.Batch);
        bool served = BuildHasPairBackward(d, dv);
        Assert.That(served, Is.EqualTo(d == 192 && BuildHasHeadDim(192)), "the build lists (192, 128)'s backward kernels with head dim 192's");
        string? reason = served ? null : BuildHasHeadDim(d) ? "backward of a V head dim" : "head_dim";
        foreach (int cc in new[] { 0, 80, 90 })
        {
            var (status, message, calls) = Observe(() => (FlashAttention.CheckBackward(args, out string m, new AttentionOptions { Causal = true }, cc), m));
            using (Assert.EnterMultipleScope())
            {
                Assert.That(calls.Select(c => c.Function), Is.EqualTo(new[] { "fa_backward_check" }), $"cc {cc}: {message}");
                Assert.That(status, Is.EqualTo(served ? FlashAttentionStatus.Success : FlashAttentionStatus.Unsupported), $"cc {cc}: {message}");
                if (reason is not null)
                {
                    Assert.That(message, Does.Contain(reason), $"cc {cc}");
                }
            }
        }

        SupportResult query = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Backward, BF16, d, Varlen: varlen) { HeadDimV = dv });
        Assert.That(query.IsSupported, Is.EqualTo(served), query.Reason);
        if (reason is not null)
        {
            Assert.That(query.Reason, Does.Contain(reason));
        }
    }

    /// <summary>The backward's gradients keep their managed checks: dOut like the output, dv like v.</summary>
    [Test]
    public void BackwardGradientsAreShapedLikeTheOutputAndV()
    {
        AttentionArguments f = Fixed(192, 128);
        var ok = new BackwardArguments(f.Q, f.K, f.V, f.Output, T(DO, BF16, 2, 17, 8, 128), f.LogSumExp!, T(DQ, BF16, 2, 17, 8, 192),
            T(DK, BF16, 2, 33, 2, 192), T(DV, BF16, 2, 33, 2, 128));
        (string Name, BackwardArguments Args, string Fragment)[] cases =
        [
            ("dOut shaped like q", ok with { DOut = T(DO, BF16, 2, 17, 8, 192) }, "dOut must have output's shape"),
            ("dv shaped like k", ok with { DV = T(DV, BF16, 2, 33, 2, 192) }, "dv must have v's shape"),
            ("dq shaped like the output", ok with { DQ = T(DQ, BF16, 2, 17, 8, 128) }, "dq must have q's shape"),
        ];
        foreach (var (name, args, fragment) in cases)
        {
            var (status, message, calls) = Observe(() => (FlashAttention.CheckBackward(args, out string m), m));
            using (Assert.EnterMultipleScope())
            {
                Assert.That(calls, Is.Empty, $"{name}: refused before the library");
                Assert.That(status, Is.EqualTo(FlashAttentionStatus.InvalidArgument), $"{name}: {message}");
                Assert.That(message, Does.Contain(fragment), name);
            }
        }
    }

    /// <summary>
    /// The kernel list behind the sm90 expectations: the sm90 forward lists each pair's kernels (fp16 and bf16, the four
    /// mask/softcap variants and two paged K/V ones, no dropout variant) exactly in a build with sm_90a code and the
    /// pair's head dim D ((64, 512)'s with the 128 x 64 tile of its column-chunked kernel); the sm90 backward lists
    /// (192, 128)'s there too (fp16 and bf16, the masked kernel of head dim 192's four variants: plain, softcap,
    /// deterministic, both; no dropout) and never (64, 512)'s.
    /// </summary>
    [Test]
    public void KernelListHasTheSm90PairKernelsExactlyWithSm90CodeAndHeadDim()
    {
        string[] sm90Pair = [.. FlashAttention.CompiledKernels.Where(n => n.StartsWith("sm90_", StringComparison.Ordinal) &&
            Pairs.Any(p => n.Contains(ForwardPaths.ValuePairTag(p.D, p.Dv), StringComparison.Ordinal)))];
        TestContext.Out.WriteLine($"build has sm_90a code: {ForwardPaths.BuildHasSm90a}; sm90 pair kernels: {string.Join(", ", sm90Pair)}");
        using (Assert.EnterMultipleScope())
        {
            Assert.That(sm90Pair.Where(n => n.StartsWith("sm90_bwd_", StringComparison.Ordinal) &&
                    n.Contains(ForwardPaths.ValuePairTag(64, 512), StringComparison.Ordinal)),
                Is.Empty, "the sm90 backward has no (64, 512) kernels");
            Assert.That(sm90Pair, Has.None.Contains("dropout"), "the sm90 pair kernels have no dropout variant");
            foreach (var (d, dv) in Pairs)
            {
                bool want = ForwardPaths.BuildHasSm90a && BuildHasHeadDim(d);
                string tag = ForwardPaths.ValuePairTag(d, dv);
                Assert.That(ForwardPaths.BuildHasSm90ValuePair(d, dv), Is.EqualTo(want),
                    $"the sm90 forward lists ({d}, {dv})'s kernels exactly in a build with sm_90a code and head dim {d}");
                Assert.That(ForwardPaths.BuildHasSm90ValuePair(d, dv, AttentionPass.Backward), Is.EqualTo(want && d == 192),
                    $"the sm90 backward lists ({d}, {dv})'s kernels exactly for (192, 128), in a build with sm_90a code and head dim 192");
                if (!want)
                {
                    Assert.That(sm90Pair.Where(n => n.Contains(tag, StringComparison.Ordinal)), Is.Empty,
                        $"no sm90 ({d}, {dv}) kernel without sm_90a code and head dim {d}");
                    continue;
                }

                foreach (string dt in new[] { "fp16", "bf16" })
                {
                    string prefix = $"sm90_fwd_{dt}{tag}";
                    Assert.That(sm90Pair.Count(n => n.StartsWith(prefix, StringComparison.Ordinal)), Is.EqualTo(6),
                        $"{prefix}*: plain, local, softcap, local softcap, and the paged K/V ones (C ABI 0.11): local paged, " +
                        "local softcap paged");
                    Assert.That(sm90Pair.Count(n => n.StartsWith(prefix, StringComparison.Ordinal) && n.Contains("_paged_")),
                        Is.EqualTo(2), $"{prefix}*: two paged K/V kernels, both local");
                    if (d == 64)
                    {
                        Assert.That(sm90Pair.Where(n => n.StartsWith(prefix, StringComparison.Ordinal)),
                            Has.All.EndsWith("_128x64_3wg3s"), $"{prefix}*: 128 query rows, 64 keys, 3 warpgroups, 3 stages");
                        continue;
                    }

                    string bwd = $"sm90_bwd_{dt}{tag}";
                    string[] bwdKernels = [.. sm90Pair.Where(n => n.StartsWith(bwd, StringComparison.Ordinal))];
                    Assert.That(bwdKernels, Has.Length.EqualTo(4), $"{bwd}*: local, local softcap, local det, local softcap det");
                    Assert.That(bwdKernels, Has.All.Contains("_local"), $"{bwd}*: masked only, as the head dim 192 kernel");
                    Assert.That(bwdKernels.Count(n => n.Contains("_det_", StringComparison.Ordinal)), Is.EqualTo(2),
                        $"{bwd}*: two deterministic kernels");
                    Assert.That(bwdKernels, Has.None.Contains("_paged"), $"{bwd}*: the backward has no paged K/V");
                }
            }
        }
    }

    public static IEnumerable<TestCaseData> Sm90Calls()
    {
        foreach (var (d, dv) in Pairs)
        {
            foreach (DataType dtype in new[] { F16, BF16 })
            {
                foreach (var (name, args, options) in CallsWithEachOption(d, dv, dtype))
                {
                    yield return new TestCaseData(args, options with { KernelPath = KernelPath.Sm90 })
                        .SetName($"V head dim check on Sm90: ({d}, {dv}) {dtype} {name}");
                }
            }
        }
    }

    /// <summary>
    /// <see cref="KernelPath.Sm90"/> with a V head dim other than q's, each forward option: served at compute
    /// capability 0 and 9.0 exactly where the build lists the pair's sm90 forward kernels (both pairs in a build with
    /// sm_90a code; <see cref="KernelPath.Auto"/> then takes them too) and the call has no dropout; otherwise UNSUPPORTED
    /// naming FA_PATH_SM90 and why (<see cref="ForwardPaths.ValuePairSm90Refusal"/>: dropout; "90a" in a build without
    /// sm_90a code; "compute capability 9.0" at 8.0); where the build lacks head dim D, the missing head dim is the
    /// reason. The query agrees, with its reason.
    /// </summary>
    [TestCaseSource(nameof(Sm90Calls))]
    public void Sm90PathServesBothPairsWithSm90CodeOnComputeCapability90(AttentionArguments args, AttentionOptions options)
    {
        int d = (int)args.Q.Shape[^1], dv = (int)args.V.Shape[^1];
        bool hasD = BuildHasHeadDim(d), dropout = args.DropoutP > 0;
        foreach (int cc in new[] { 0, 80, 90 })
        {
            bool served = hasD && !dropout && (cc == 0 || cc == 90) && ForwardPaths.BuildHasSm90ValuePair(d, dv);
            string? reason = ForwardPaths.ValuePairSm90Refusal(AttentionPass.Forward, d, dv, cc, dropout);
            var (status, message, calls) = CheckForward(args, options, cc);
            SupportResult query = FlashAttention.QuerySupport(QueryFor(args, options, cc));
            string where = $"cc {cc} (build has sm_90a code: {ForwardPaths.BuildHasSm90a})";
            using (Assert.EnterMultipleScope())
            {
                Assert.That(calls.Select(c => c.Function), Is.EqualTo(new[] { "fa_forward_check" }), $"{where}: {message}");
                if (served)
                {
                    Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), $"{where}: {message}");
                    Assert.That(query.IsSupported, Is.True, $"{where}: the query agrees: {query.Reason}");
                }
                else
                {
                    Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"{where}: {message}");
                    Assert.That(query.IsSupported, Is.False, where);
                    if (!hasD)
                    {
                        Assert.That(message, Does.Contain("head_dim"), where);
                    }
                    else
                    {
                        Assert.That(reason, Is.Not.Null, $"{where}: the rules serve this call, so the library may not refuse it");
                        Assert.That(message, Does.Contain("FA_PATH_SM90").And.Contain(reason ?? "FA_PATH_SM90"), where);
                        Assert.That(query.Reason, Does.Contain("FA_PATH_SM90").And.Contain(reason ?? "FA_PATH_SM90"), where);
                    }
                }
            }
        }
    }

    /// <summary>
    /// The backward on <see cref="KernelPath.Sm90"/>: (192, 128) is served at compute capability 0 and 9.0 exactly where
    /// the build lists its <c>sm90_bwd_*_hdim192v128_*</c> kernels (a build with sm_90a code and head dim 192), and
    /// elsewhere UNSUPPORTED naming FA_PATH_SM90 and why ("90a" without sm_90a code; "compute capability 9.0" at 8.0);
    /// (64, 512) has no backward on any path. Fixed and varlen; the query agrees.
    /// </summary>
    [TestCase(192, 128)]
    [TestCase(64, 512)]
    public void BackwardOnSm90Serves192And128WithSm90CodeOnComputeCapability90(int d, int dv)
    {
        bool hasD = BuildHasHeadDim(d);
        bool listed = ForwardPaths.BuildHasSm90ValuePair(d, dv, AttentionPass.Backward);
        foreach (bool varlen in new[] { false, true })
        {
            AttentionArguments f = varlen ? Varlen(d, dv) : Fixed(d, dv);
            DeviceTensor Like(long address, DeviceTensor t) => DeviceTensor.FromPointer((IntPtr)address, t.DataType, t.Shape.ToArray());
            var args = new BackwardArguments(
                f.Q, f.K, f.V, f.Output, Like(DO, f.Output), f.LogSumExp!, Like(DQ, f.Q), Like(DK, f.K), Like(DV, f.V), f.Batch);
            foreach (int cc in new[] { 0, 80, 90 })
            {
                var options = new AttentionOptions { Causal = true, KernelPath = KernelPath.Sm90 };
                var (status, message, calls) = Observe(() => (FlashAttention.CheckBackward(args, out string m, options, cc), m));
                SupportResult query = FlashAttention.QuerySupport(
                    SupportQuery.For(AttentionPass.Backward, BF16, d, options, varlen, cc) with { HeadDimV = dv });
                string where = $"{(varlen ? "varlen" : "fixed")} cc {cc} (build has sm_90a code: {ForwardPaths.BuildHasSm90a})";
                bool served = hasD && d == 192 && listed && (cc == 0 || cc == 90);
                if (served)
                {
                    using (Assert.EnterMultipleScope())
                    {
                        Assert.That(calls.Select(c => c.Function), Is.EqualTo(new[] { "fa_backward_check" }), $"{where}: {message}");
                        Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), $"{where}: {message}");
                        Assert.That(query.IsSupported, Is.True, $"{where}: the query agrees: {query.Reason}");
                    }

                    continue;
                }

                string? rule = ForwardPaths.ValuePairSm90Refusal(AttentionPass.Backward, d, dv, cc, dropout: false);
                Assert.That(!hasD || d != 192 || rule is not null, Is.True,
                    $"{where}: the rules serve this call, yet the build lists no sm90 backward kernel of (192, 128)");
                string reason = !hasD ? "head_dim" : d != 192 ? "backward of a V head dim" : rule ?? "FA_PATH_SM90";
                using (Assert.EnterMultipleScope())
                {
                    Assert.That(calls.Select(c => c.Function), Is.EqualTo(new[] { "fa_backward_check" }), $"{where}: {message}");
                    Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"{where}: {message}");
                    Assert.That(message, Does.Contain(reason), where);
                    Assert.That(query.IsSupported, Is.False, where);
                    Assert.That(query.Reason, Does.Contain(reason), where);
                    if (hasD && d == 192)
                    {
                        Assert.That(message, Does.Contain("FA_PATH_SM90"), where);
                        Assert.That(query.Reason, Does.Contain("FA_PATH_SM90"), where);
                    }
                }
            }
        }
    }

    /// <summary>fp8 (e4m3 q, k and v, a bf16 output with v's head dim) with a V head dim of its own is UNSUPPORTED on every path.</summary>
    [TestCase(192, 128)]
    [TestCase(64, 512)]
    public void Fp8IsUnsupported(int d, int dv)
    {
        AttentionArguments args = Fixed(d, dv, E4M3, outType: BF16);
        foreach (KernelPath path in new[] { KernelPath.Auto, KernelPath.Sm80, KernelPath.Sm90 })
        {
            foreach (int cc in new[] { 0, 90 })
            {
                var options = new AttentionOptions { KernelPath = path };
                var (status, message, calls) = CheckForward(args, options, cc);
                SupportResult query = FlashAttention.QuerySupport(QueryFor(args, options, cc));
                using (Assert.EnterMultipleScope())
                {
                    Assert.That(calls, Has.Count.EqualTo(1), $"{path} cc {cc}: the library refuses it: {message}");
                    Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"{path} cc {cc}: {message}");
                    Assert.That(message, Is.Not.Empty);
                    Assert.That(query.IsSupported, Is.False, $"{path} cc {cc}");
                }
            }
        }
    }

    /// <summary>Decode keeps one head dim: the query with a V head dim of its own is refused with a reason.</summary>
    [TestCase(192, 128)]
    [TestCase(64, 512)]
    public void DecodeQueryIsRefused(int d, int dv)
    {
        SupportResult r = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Decode, F16, d, Causal: true) { HeadDimV = dv });
        Assert.That(r.IsSupported, Is.False);
        Assert.That(r.Reason, Is.Not.Empty);
    }

    /// <summary>
    /// 0.10 appends head_dim_v to fa_support_query_t: a 0.9 caller's query ends before it (garbage there is not read:
    /// the query asks about equal head dims), a 0.10-sized one is read, and a negative value is INVALID_ARGUMENT.
    /// </summary>
    [Test]
    public void Version09QueriesHaveNoValueHeadDim()
    {
        uint query09 = (uint)Marshal.OffsetOf<FaSupportQuery>(nameof(FaSupportQuery.head_dim_v)).ToInt64();
        using (Assert.EnterMultipleScope())
        {
            Assert.That(query09, Is.EqualTo(52), "0.9's query");
            Assert.That(sizeof(FaSupportQuery), Is.EqualTo(query09 + (3 * sizeof(int))), "0.10, 0.11 and 0.13 append one int32 each (head_dim_v, paged_kv, kv_cache_dtype)");
        }

        FaSupportQuery q = default;
        q.struct_size = query09;
        q.pass = (int)FaPass.Forward;
        q.dtype = (int)FaDtype.Float16;
        q.head_dim = 64;
        q.head_dim_v = -5; // past a 0.9 struct: not read
        Assert.That(NativeMethods.fa_query_support(&q), Is.EqualTo(FaStatus.Success), Errors.LastErrorMessage());
        q.struct_size = (uint)sizeof(FaSupportQuery);
        Assert.That(NativeMethods.fa_query_support(&q), Is.EqualTo(FaStatus.InvalidArgument));
        Assert.That(Errors.LastErrorMessage(), Does.Contain("query->head_dim_v"));
    }

    /// <summary>
    /// HeadDimV equal to HeadDim is the same question as 0 (unset), for every pass; a negative one is refused by the managed
    /// side (ArgumentException) before the library is asked.
    /// </summary>
    [Test]
    public void QueryWithEqualHeadDimsIsTheUsualQuestion()
    {
        using (Assert.EnterMultipleScope())
        {
            foreach (AttentionPass pass in new[] { AttentionPass.Forward, AttentionPass.Backward, AttentionPass.Decode })
            {
                foreach (int d in new[] { 64, 128, 192, 264 })
                {
                    var plain = new SupportQuery(pass, BF16, d, Causal: true, ComputeCapability: 90);
                    SupportResult a = FlashAttention.QuerySupport(plain);
                    SupportResult b = FlashAttention.QuerySupport(plain with { HeadDimV = d });
                    Assert.That(b, Is.EqualTo(a), $"{pass} d {d}");
                }
            }

            Assert.That(() => FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, BF16, 64) { HeadDimV = -1 }),
                Throws.ArgumentException.With.Message.Contains("HeadDimV"));
        }
    }
}
