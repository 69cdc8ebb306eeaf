using System.Reflection;
using System.Runtime.InteropServices;
using FlashAttn.Internal;
using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;
using NUnit.Framework.Constraints;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The argument records (<see cref="AttentionArguments"/>, <see cref="BackwardArguments"/>, <see cref="DecodeArguments"/>)
/// and the one option mapping, without a GPU: tensors are <see cref="DeviceTensor.FromPointer"/> views of fake
/// addresses, and <see cref="NativeCallObserver"/> shows the params struct each call hands to the native library.
/// <list type="bullet">
/// <item>Each positional entry point and its record form send byte-identical params (and return the same status and
/// message) for many random argument sets, valid and not, fixed and variable-length.</item>
/// <item>The option mapping writes every option field each pass's struct has; dropping one fails a test.</item>
/// <item>The records' null and shape checks happen before any native call.</item>
/// </list>
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed unsafe class ArgumentRecordTests
{
    private const long Q = 0x1000_0000, K = 0x2000_0000, V = 0x3000_0000, O = 0x4000_0000, L = 0x5000_0000;
    private const long DO = 0x6000_0000, DQ = 0x7000_0000, DK = 0x7100_0000, DV = 0x7200_0000, CuQ = 0x7300_0000, CuK = 0x7400_0000;
    private const long KC = 0x7500_0000, VC = 0x7600_0000, KN = 0x7700_0000, VN = 0x7800_0000, SL = 0x7900_0000, BT = 0x7A00_0000;
    private const int RandomSets = 60;

    /// <summary>
    /// Every <see cref="AttentionOptions"/> property the caller sets, and the params field it becomes. A pass's struct
    /// that has the field must receive the option; <see cref="EveryOptionHasANativeField"/> keeps this table complete.
    /// </summary>
    private static readonly (string Option, string Field)[] OptionFields =
    [
        (nameof(AttentionOptions.SoftmaxScale), "softmax_scale"),
        (nameof(AttentionOptions.Causal), "causal"),
        (nameof(AttentionOptions.CausalAlignment), "causal_alignment"),
        (nameof(AttentionOptions.KernelPath), "kernel_path"),
        (nameof(AttentionOptions.WindowLeft), "window_left"),
        (nameof(AttentionOptions.WindowRight), "window_right"),
        (nameof(AttentionOptions.Softcap), "softcap"),
        (nameof(AttentionOptions.Deterministic), "deterministic"),
    ];

    private static bool s_decodeExported;

    [OneTimeSetUp]
    public void LoadLibrary()
    {
        NativeLib.Require();
        nint handle = NativeLibrary.Load(NativeLibraryLoader.LoadedPath!);
        s_decodeExported = NativeLibrary.TryGetExport(handle, "fa_decode_check", out _) &&
            NativeLibrary.TryGetExport(handle, "fa_decode_params_init", out _);
    }

    // ---- positional forms and records send the same params --------------------------------------------------

    [Test]
    public void CheckAndItsRecordFormSendTheSameParams([Values] bool varlen)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        int nativeCalls = 0;
        for (int i = 0; i < RandomSets; i++)
        {
            using VarlenBatch? batch = varlen ? RandomBatch(random, out _, out _) : null;
            AttentionArguments a = RandomForward(random, batch);
            AttentionOptions options = RandomOptions(random);
            int cc = random.Next(8) == 0 ? -1 : (random.Next(2) == 0 ? 0 : 80);

            var positional = Capture(out FlashAttentionStatus s1, out string m1, () =>
            {
                string m;
                FlashAttentionStatus s = batch is null
                    ? FlashAttention.Check(a.Q, a.K, a.V, a.Output, out m, a.LogSumExp, options, cc)
                    : FlashAttention.CheckVarlen(a.Q, a.K, a.V, a.Output, batch, out m, a.LogSumExp, options, cc);
                return (s, m);
            });
            var record = Capture(out FlashAttentionStatus s2, out string m2, () => (FlashAttention.Check(a, out string m, options, cc), m));

            AssertSameCalls(positional, record, $"seed {seed}, set {i}: {a}, {options}, cc {cc}");
            Assert.That((s2, m2), Is.EqualTo((s1, m1)), $"seed {seed}, set {i}");
            nativeCalls += record.Count;
        }

        // The random sets must reach the native library often, or the comparison above says little.
        Assert.That(nativeCalls, Is.GreaterThan(RandomSets / 3), "too few random sets passed the managed checks");
    }

    [Test]
    public void CheckBackwardAndItsRecordFormSendTheSameParams([Values] bool varlen)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        int nativeCalls = 0;
        for (int i = 0; i < RandomSets; i++)
        {
            using VarlenBatch? batch = varlen ? RandomBatch(random, out _, out _) : null;
            BackwardArguments a = RandomBackward(random, batch);
            AttentionOptions options = RandomOptions(random);
            int cc = random.Next(2) == 0 ? 0 : 90;

            var positional = Capture(out FlashAttentionStatus s1, out string m1, () =>
            {
                string m;
                FlashAttentionStatus s = batch is null
                    ? FlashAttention.CheckBackward(a.Q, a.K, a.V, a.Output, a.DOut, a.LogSumExp, a.DQ, a.DK, a.DV, out m, options, cc)
                    : FlashAttention.CheckBackwardVarlen(a.Q, a.K, a.V, a.Output, a.DOut, a.LogSumExp, a.DQ, a.DK, a.DV, batch, out m, options, cc);
                return (s, m);
            });
            var record = Capture(out FlashAttentionStatus s2, out string m2, () => (FlashAttention.CheckBackward(a, out string m, options, cc), m));

            AssertSameCalls(positional, record, $"seed {seed}, set {i}: {a}, {options}, cc {cc}");
            Assert.That((s2, m2), Is.EqualTo((s1, m1)), $"seed {seed}, set {i}");
            nativeCalls += record.Count;
        }

        Assert.That(nativeCalls, Is.GreaterThan(RandomSets / 3), "too few random sets passed the managed checks");
    }

    [Test]
    public void CheckDecodeAndItsRecordFormSendTheSameParams()
    {
        RequireDecodeExports();
        Random random = TestRandom.ForCurrentTest(out int seed);
        int nativeCalls = 0;
        for (int i = 0; i < RandomSets; i++)
        {
            int[] lengths = [random.Next(0, 40), random.Next(0, 40)];
            using KvCache cache = Cache(lengths);
            DecodeArguments a = RandomDecode(random, cache);
            AttentionOptions options = RandomOptions(random) with { CausalAlignment = CausalAlignment.BottomRight };
            int cc = random.Next(2) == 0 ? 0 : 80;

            var positional = Capture(out FlashAttentionStatus s1, out string m1, () =>
                (FlashAttention.CheckDecode(a.Q, a.Cache, a.KNew, a.VNew, a.Output, out string m, a.LogSumExp, options, a.NumSplits, cc), m));
            var record = Capture(out FlashAttentionStatus s2, out string m2, () => (FlashAttention.CheckDecode(a, out string m, options, cc), m));

            AssertSameCalls(positional, record, $"seed {seed}, set {i}: {a}, {options}, cc {cc}");
            Assert.That((s2, m2), Is.EqualTo((s1, m1)), $"seed {seed}, set {i}");
            nativeCalls += record.Count;
        }

        Assert.That(nativeCalls, Is.GreaterThan(RandomSets / 3), "too few random sets passed the managed checks");
    }

    [Test]
    public void TheRecordsCarryEveryArgumentIntoTheParams()
    {
        // Guards the comparisons above against a form that drops an argument in both paths: the params must
        // actually hold the record's lse, varlen fields and decode split count.
        using VarlenBatch batch = Batch([0, 5, 12], [0, 7, 20]);
        var forward = new AttentionArguments(T(Q, 12, 4, 64), T(K, 20, 2, 64), T(V, 20, 2, 64), T(O, 12, 4, 64), T32(L, 4, 12), batch);
        var fwd = (FaForwardParams)Capture(out _, out _, () => (FlashAttention.Check(forward, out string m), m)).Single().Params;
        bool hostCopiesPinned = fwd.cu_seqlens_q_host != null && fwd.cu_seqlens_k_host != null;
        nint cuQ = (nint)fwd.cu_seqlens_q;
        Assert.Multiple(() =>
        {
            Assert.That(fwd.lse.data, Is.EqualTo((nint)L));
            Assert.That(fwd.varlen_batch, Is.EqualTo(2));
            Assert.That(fwd.max_seqlen_q, Is.EqualTo(7));
            Assert.That(fwd.max_seqlen_k, Is.EqualTo(13));
            Assert.That(cuQ, Is.EqualTo((nint)CuQ));
            Assert.That(hostCopiesPinned, "host copies pinned into the params");
        });

        if (s_decodeExported)
        {
            using KvCache cache = Cache([3, 9]);
            var decode = new DecodeArguments(T(Q, 2, 1, 8, 64), cache, null, null, T(O, 2, 1, 8, 64), NumSplits: 7);
            var dec = (FaDecodeParams)Capture(out _, out _, () => (FlashAttention.CheckDecode(decode, out string m), m)).Single().Params;
            Assert.Multiple(() =>
            {
                Assert.That(dec.num_splits, Is.EqualTo(7));
                Assert.That(dec.advance_cache_seqlens, Is.EqualTo(0));
                Assert.That(dec.workspace, Is.EqualTo((nint)0), "the check ignores the workspace");
            });
        }
    }

    // ---- the one option mapping ----------------------------------------------------------------------------

    [Test]
    public void EveryOptionHasANativeField()
    {
        string[] settable = typeof(AttentionOptions).GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.SetMethod is not null)
            .Select(p => p.Name)
            .Order()
            .ToArray();
        Assert.That(OptionFields.Select(f => f.Option).Order(), Is.EqualTo(settable),
            "an AttentionOptions property was added or removed: map it in Internal/NativeOptions.cs and in this table");
    }

    [TestCase(AttentionPass.Forward)]
    [TestCase(AttentionPass.Backward)]
    [TestCase(AttentionPass.Decode)]
    public void TheOptionMappingWritesEveryOptionFieldOfThePass(AttentionPass pass)
    {
        // Every option away from its default (decode serves only the bottom-right diagonal, which is the default).
        AttentionOptions set = new()
        {
            SoftmaxScale = 0.375f,
            Causal = true,
            CausalAlignment = pass == AttentionPass.Decode ? CausalAlignment.BottomRight : CausalAlignment.TopLeft,
            KernelPath = KernelPath.Sm80,
            WindowLeft = 5,
            WindowRight = 7,
            Softcap = 12.5f,
            Deterministic = true,
        };
        var expected = new Dictionary<string, object>
        {
            ["softmax_scale"] = 0.375f,
            ["causal"] = 1,
            ["causal_alignment"] = (int)CausalAlignment.TopLeft,
            ["kernel_path"] = (int)KernelPath.Sm80,
            ["window_left"] = 5,
            ["window_right"] = 7,
            ["softcap"] = 12.5f,
            ["deterministic"] = 1,
        };

        object withOptions = ParamsOf(pass, set);
        object withDefaults = ParamsOf(pass, AttentionOptions.Default);
        var checkedFields = new List<string>();
        Assert.Multiple(() =>
        {
            foreach ((string option, string name) in OptionFields)
            {
                FieldInfo? field = withOptions.GetType().GetField(name);
                if (field is null)
                {
                    continue;
                }

                checkedFields.Add(name);
                Assert.That(field.GetValue(withOptions), Is.EqualTo(expected[name]), $"{pass}: {name} from {option}");
                Assert.That(field.GetValue(withDefaults), Is.Not.EqualTo(expected[name]), $"{pass}: {name} should differ under the defaults");
            }
        });

        // The fields each pass has (a pass that gains one must be mapped, which the loop above then checks).
        string[] expectedFields = pass switch
        {
            AttentionPass.Forward => ["softmax_scale", "causal", "causal_alignment", "kernel_path", "window_left", "window_right", "softcap"],
            AttentionPass.Backward => OptionFields.Select(f => f.Field).ToArray(),
            _ => ["softmax_scale", "causal", "kernel_path", "window_left", "window_right", "softcap"],
        };
        Assert.That(checkedFields, Is.EquivalentTo(expectedFields));
    }

    [TestCase(AttentionPass.Forward)]
    [TestCase(AttentionPass.Backward)]
    [TestCase(AttentionPass.Decode)]
    public void TheOptionMappingSpellsUnsetOptionsAsTheAbiDefaults(AttentionPass pass)
    {
        // Unset scale and softcap are 0, an unbounded window side -1 (what fa_*_params_init would leave).
        object p = ParamsOf(pass, new AttentionOptions { Causal = true, WindowLeft = 3 });
        Type t = p.GetType();
        Assert.Multiple(() =>
        {
            Assert.That(t.GetField("softmax_scale")!.GetValue(p), Is.EqualTo(0f));
            Assert.That(t.GetField("softcap")!.GetValue(p), Is.EqualTo(0f));
            Assert.That(t.GetField("window_left")!.GetValue(p), Is.EqualTo(3));
            Assert.That(t.GetField("window_right")!.GetValue(p), Is.EqualTo(-1));
            Assert.That(t.GetField("causal")!.GetValue(p), Is.EqualTo(1));
        });
    }

    // ---- validation before any native call -----------------------------------------------------------------

    [Test]
    public void IncompleteRecordsThrowBeforeAnyNativeCall()
    {
        AttentionArguments fwd = ValidForward();
        BackwardArguments bwd = ValidBackward();
        var calls = new List<string>();
        using (NativeCallObserver.Observe((function, _) => calls.Add(function)))
        {
            Assert.Multiple(() =>
            {
                Assert.That(() => FlashAttention.Check(default, out _), ThrowsNull("q"));
                Assert.That(() => FlashAttention.Check(fwd with { V = null! }, out _), ThrowsNull("v"));
                Assert.That(() => FlashAttention.Check(fwd with { Output = null! }, out _), ThrowsNull("output"));
                Assert.That(() => FlashAttention.CheckVarlen(fwd.Q, fwd.K, fwd.V, fwd.Output, null!, out _), ThrowsNull("batch"));
                Assert.That(() => FlashAttention.CheckBackward(default, out _), ThrowsNull("q"));
                Assert.That(() => FlashAttention.CheckBackward(bwd with { DOut = null! }, out _), ThrowsNull("dOut"));
                Assert.That(() => FlashAttention.CheckBackward(bwd with { LogSumExp = null! }, out _), ThrowsNull("logSumExp"));
                Assert.That(() => FlashAttention.CheckBackward(bwd with { DV = null! }, out _), ThrowsNull("dv"));
                Assert.That(() => FlashAttention.CheckDecode(default, out _), ThrowsNull("q"));
            });
        }

        Assert.That(calls, Is.Empty, "a native call was made before the null checks");
    }

    [Test]
    public void ManagedShapeChecksOfTheRecordsAnswerWithoutANativeCall()
    {
        AttentionArguments fwd = ValidForward();
        BackwardArguments bwd = ValidBackward();
        var calls = new List<string>();
        var results = new List<(FlashAttentionStatus Status, string Message)>();
        using (NativeCallObserver.Observe((function, _) => calls.Add(function)))
        {
            string m;
            results.Add((FlashAttention.Check(fwd with { K = T(K, DataType.BFloat16, 2, 33, 2, 64) }, out m), m));
            results.Add((FlashAttention.Check(fwd with { LogSumExp = T32(L, 2, 17, 8) }, out m), m));
            results.Add((FlashAttention.CheckBackward(bwd with { DQ = T(DQ, 2, 17, 4, 64) }, out m), m));
            results.Add((FlashAttention.CheckBackward(bwd with { DK = T(DK, DataType.BFloat16, 2, 33, 2, 64) }, out m), m));
            if (s_decodeExported)
            {
                using KvCache cache = Cache([3, 9]);
                var decode = new DecodeArguments(T(Q, 2, 1, 8, 64), cache, T(KN, 2, 1, 2, 64), null, T(O, 2, 1, 8, 64));
                results.Add((FlashAttention.CheckDecode(decode, out m), m));
                results.Add((FlashAttention.CheckDecode(decode with { VNew = T(VN, 2, 1, 2, 64), NumSplits = 500 }, out m), m));
                results.Add((FlashAttention.CheckDecode(decode with { VNew = T(VN, 2, 1, 2, 64) }, out m, new AttentionOptions { CausalAlignment = CausalAlignment.TopLeft }), m));
            }
        }

        Assert.Multiple(() =>
        {
            Assert.That(calls, Is.Empty, "the managed checks should have answered");
            Assert.That(results.Select(r => r.Status), Is.All.EqualTo(FlashAttentionStatus.InvalidArgument));
            Assert.That(results[0].Message, Does.Contain("BFloat16"));
            Assert.That(results[1].Message, Does.Contain("logSumExp"));
            Assert.That(results[2].Message, Does.Contain("dq"));
            Assert.That(results[3].Message, Does.Contain("dk"));
            if (results.Count > 4)
            {
                Assert.That(results[4].Message, Does.Contain("v_new"));
                Assert.That(results[5].Message, Does.Contain("num_splits"));
                Assert.That(results[6].Message, Does.Contain("TopLeft"));
            }
        });

        // The same records, made valid, do reach the native library: the observer is not blind.
        using (NativeCallObserver.Observe((function, _) => calls.Add(function)))
        {
            FlashAttention.Check(fwd, out _);
            FlashAttention.CheckBackward(bwd, out _);
        }

        Assert.That(calls, Is.EqualTo(new[] { "fa_forward_check", "fa_backward_check" }));
    }

    // ---- helpers -------------------------------------------------------------------------------------------

    private static IResolveConstraint ThrowsNull(string paramName) =>
        Throws.ArgumentNullException.With.Property(nameof(ArgumentException.ParamName)).EqualTo(paramName);

    private static void RequireDecodeExports()
    {
        if (!s_decodeExported)
        {
            Assert.Ignore($"{NativeLibraryLoader.LoadedPath} does not export fa_decode_check / fa_decode_params_init");
        }
    }

    private static DeviceTensor T(long address, params long[] shape) => T(address, DataType.Float16, shape);

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    private static DeviceTensor T32(long address, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, DataType.Float32, shape);

    private static AttentionArguments ValidForward() =>
        new(T(Q, 2, 17, 8, 64), T(K, 2, 33, 2, 64), T(V, 2, 33, 2, 64), T(O, 2, 17, 8, 64), T32(L, 2, 8, 17));

    private static BackwardArguments ValidBackward() =>
        new(T(Q, 2, 17, 8, 64), T(K, 2, 33, 2, 64), T(V, 2, 33, 2, 64), T(O, 2, 17, 8, 64), T(DO, 2, 17, 8, 64), T32(L, 2, 8, 17),
            T(DQ, 2, 17, 8, 64), T(DK, 2, 33, 2, 64), T(DV, 2, 33, 2, 64));

    private static VarlenBatch Batch(int[] cuQ, int[] cuK)
    {
        int maxQ = 0, maxK = 0;
        for (int b = 0; b + 1 < cuQ.Length; b++)
        {
            maxQ = Math.Max(maxQ, cuQ[b + 1] - cuQ[b]);
            maxK = Math.Max(maxK, cuK[b + 1] - cuK[b]);
        }

        return VarlenBatch.FromDevice(
            DeviceTensor.FromPointer((IntPtr)CuQ, DataType.Int32, [cuQ.Length]),
            DeviceTensor.FromPointer((IntPtr)CuK, DataType.Int32, [cuK.Length]), maxQ, maxK, cuQ, cuK);
    }

    private static VarlenBatch RandomBatch(Random random, out int totalQ, out int totalK)
    {
        int n = random.Next(1, 5);
        int[] cuQ = new int[n + 1], cuK = new int[n + 1];
        for (int b = 0; b < n; b++)
        {
            cuQ[b + 1] = cuQ[b] + random.Next(0, 30);
            cuK[b + 1] = cuK[b] + random.Next(0, 30);
        }

        (totalQ, totalK) = (cuQ[n], cuK[n]);
        return Batch(cuQ, cuK);
    }

    /// <summary>Mostly valid forward tensors (a head dim of 60, a k dtype or an lse shape sometimes wrong).</summary>
    private static AttentionArguments RandomForward(Random random, VarlenBatch? batch)
    {
        DataType dtype = random.Next(2) == 0 ? DataType.Float16 : DataType.BFloat16;
        long d = new long[] { 32, 64, 96, 128, 256, 60 }[random.Next(6)];
        long hkv = new long[] { 1, 2, 4 }[random.Next(3)], hq = hkv * random.Next(1, 4);
        DataType kType = random.Next(12) == 0 ? (dtype == DataType.Float16 ? DataType.BFloat16 : DataType.Float16) : dtype;
        bool withLse = random.Next(3) != 0;
        if (batch is not null)
        {
            long totalQ = Math.Max(1, batch.TotalQ!.Value + random.Next(0, 3)), totalK = Math.Max(1, batch.TotalK!.Value);
            return new AttentionArguments(
                T(Q, dtype, totalQ, hq, d), T(K, kType, totalK, hkv, d), T(V, dtype, totalK, hkv, d), T(O, dtype, totalQ, hq, d),
                withLse ? T32(L, hq, random.Next(12) == 0 ? totalQ + 1 : totalQ) : null, batch);
        }

        long b = random.Next(1, 4), sq = random.Next(1, 60), sk = random.Next(1, 60);
        return new AttentionArguments(
            T(Q, dtype, b, sq, hq, d), T(K, kType, b, sk, hkv, d), T(V, dtype, b, sk, hkv, d), T(O, dtype, b, sq, hq, d),
            withLse ? T32(L, b, hq, random.Next(12) == 0 ? sq + 1 : sq) : null);
    }

    /// <summary>The tensors of a backward call around <see cref="RandomForward"/>'s, a gradient's shape sometimes wrong.</summary>
    private static BackwardArguments RandomBackward(Random random, VarlenBatch? batch)
    {
        AttentionArguments f = RandomForward(random, batch);
        DeviceTensor lse = f.LogSumExp ?? (batch is null
            ? T32(L, f.Q.Shape[0], f.Q.Shape[2], f.Q.Shape[1])
            : T32(L, f.Q.Shape[1], f.Q.Shape[0]));
        DeviceTensor Like(long address, DeviceTensor t) => DeviceTensor.FromPointer((IntPtr)address, f.Q.DataType, t.Shape.ToArray());
        DeviceTensor dk = random.Next(12) == 0 ? DeviceTensor.FromPointer((IntPtr)DK, f.Q.DataType, f.Q.Shape.ToArray()) : Like(DK, f.K);
        return new BackwardArguments(f.Q, f.K, f.V, f.Output, Like(DO, f.Q), lse, Like(DQ, f.Q), dk, Like(DV, f.K), batch);
    }

    /// <summary>A paged fp16 cache of 10 blocks of 16 tokens, 2 kv heads of 64, 2 sequences of 5 pages, wrapping fake pointers.</summary>
    private static KvCache Cache(int[] lengths) =>
        KvCache.Wrap(T(KC, 10, 16, 2, 64), T(VC, 10, 16, 2, 64), lengths, DeviceTensor.FromPointer((IntPtr)BT, DataType.Int32, [2, 5]),
            DeviceTensor.FromPointer((IntPtr)SL, DataType.Int32, [2]));

    private static DecodeArguments RandomDecode(Random random, KvCache cache)
    {
        long sn = random.Next(1, 4), hq = 2 * random.Next(1, 5);
        bool append = random.Next(3) != 0;
        bool vMissing = append && random.Next(15) == 0;
        return new DecodeArguments(
            T(Q, 2, sn, hq, 64),
            cache,
            append ? T(KN, 2, sn, 2, 64) : null,
            append && !vMissing ? T(VN, 2, sn, 2, 64) : null,
            T(O, 2, sn, hq, 64),
            random.Next(2) == 0 ? T32(L, 2, hq, sn) : null,
            random.Next(6) == 0 ? 200 : random.Next(0, 9));
    }

    private static AttentionOptions RandomOptions(Random random) => new()
    {
        Causal = random.Next(2) == 0,
        CausalAlignment = random.Next(2) == 0 ? CausalAlignment.BottomRight : CausalAlignment.TopLeft,
        SoftmaxScale = random.Next(3) == 0 ? (float)random.NextDouble() + 0.05f : null,
        KernelPath = (KernelPath)random.Next(3),
        WindowLeft = random.Next(3) == 0 ? random.Next(0, 20) : null,
        WindowRight = random.Next(3) == 0 ? random.Next(0, 20) : null,
        Softcap = random.Next(4) == 0 ? 30f : null,
        Deterministic = random.Next(2) == 0,
    };

    /// <summary>The params the check of <paramref name="pass"/> sends for valid arguments and these options.</summary>
    private static object ParamsOf(AttentionPass pass, AttentionOptions options)
    {
        List<(string Function, object Params)> calls;
        switch (pass)
        {
            case AttentionPass.Forward:
                calls = Capture(out _, out _, () => (FlashAttention.Check(ValidForward(), out string m, options), m));
                break;
            case AttentionPass.Backward:
                calls = Capture(out _, out _, () => (FlashAttention.CheckBackward(ValidBackward(), out string m, options), m));
                break;
            default:
                RequireDecodeExports();
                using (KvCache cache = Cache([3, 9]))
                {
                    var args = new DecodeArguments(T(Q, 2, 1, 8, 64), cache, T(KN, 2, 1, 2, 64), T(VN, 2, 1, 2, 64), T(O, 2, 1, 8, 64));
                    calls = Capture(out _, out _, () => (FlashAttention.CheckDecode(args, out string m, options), m));
                }

                break;
        }

        Assert.That(calls, Has.Count.EqualTo(1), $"the {pass} check should reach the native library once");
        return calls[0].Params;
    }

    private static List<(string Function, object Params)> Capture(
        out FlashAttentionStatus status, out string message, Func<(FlashAttentionStatus, string)> call)
    {
        var calls = new List<(string, object)>();
        using (NativeCallObserver.Observe((function, p) => calls.Add((function, p))))
        {
            (status, message) = call();
        }

        return calls;
    }

    private static void AssertSameCalls(List<(string Function, object Params)> expected, List<(string Function, object Params)> actual, string context)
    {
        Assert.That(actual.Select(c => c.Function), Is.EqualTo(expected.Select(c => c.Function)), context);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.That(Bytes(actual[i].Params), Is.EqualTo(Bytes(expected[i].Params)), $"{context}: params of {expected[i].Function} differ");
        }
    }

    /// <summary>
    /// The struct's bytes, with the pinned host-array pointers cleared (the same array may be pinned at another
    /// address in the second call); whether they are set is kept as one byte.
    /// </summary>
    private static byte[] Bytes(object boxed)
    {
        switch (boxed)
        {
            case FaForwardParams f:
                bool fh = f.cu_seqlens_q_host != null;
                f.cu_seqlens_q_host = null;
                f.cu_seqlens_k_host = null;
                return [.. MemoryMarshal.AsBytes(new ReadOnlySpan<FaForwardParams>(in f)), fh ? (byte)1 : (byte)0];
            case FaBackwardParams b:
                bool bh = b.cu_seqlens_q_host != null;
                b.cu_seqlens_q_host = null;
                b.cu_seqlens_k_host = null;
                return [.. MemoryMarshal.AsBytes(new ReadOnlySpan<FaBackwardParams>(in b)), bh ? (byte)1 : (byte)0];
            case FaDecodeParams d:
                bool dh = d.cache_seqlens_host != null;
                d.cache_seqlens_host = null;
                return [.. MemoryMarshal.AsBytes(new ReadOnlySpan<FaDecodeParams>(in d)), dh ? (byte)1 : (byte)0];
            default:
                throw new AssertionException($"unexpected params type {boxed.GetType()}");
        }
    }
}
