using System.Reflection;
using System.Runtime.CompilerServices;
using FlashAttn.Internal;
using Microsoft.Extensions.Logging.Abstractions;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// Every check the managed side makes, one case each, on inputs that break only that check. The attention entry
/// points (Check, CheckVarlen, CheckBackward, CheckDecode) are watched through <see cref="NativeCallObserver"/>: a
/// managed refusal is InvalidArgument with the managed message and no native call at all, so removing or loosening
/// the check sends the call to the native library (or to a later check with another message) and the case fails,
/// even where the native library would refuse the same input with a similar message. The argument types
/// (AttentionOptions, AttentionShape, DeviceTensor, DeviceBuffer, VarlenBatch, KvCache, the argument records,
/// QuerySupport) are held to the exact exception type and parameter name. The instance calls (Forward, Backward,
/// Decode and their size queries) throw ArgumentException for the same checks; they run here on an instance whose
/// native context was never created (see <see cref="OfflineInstance"/>), held to the exact exception type, parameter
/// name and no native call. Checks against another device's tensors, streams and workspaces need two devices; they
/// are not here.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ManagedRefusalTests
{
    private const long Q = 0x1000_0000, K = 0x2000_0000, V = 0x3000_0000, O = 0x4000_0000, L = 0x5000_0000;
    private const long DO = 0x6000_0000, DQ = 0x6800_0000, DK = 0x7000_0000, DV = 0x7800_0000;
    private const long CQ = 0x7C00_0000, CK = 0x7D00_0000, SL = 0x7E00_0000, KN = 0x7E80_0000, VN = 0x7F00_0000;

    private const long QD = 0x7F40_0000, KD = 0x7F50_0000, VD = 0x7F60_0000;

    private const DataType F16 = DataType.Float16, BF16 = DataType.BFloat16, F32 = DataType.Float32, I32 = DataType.Int32;
    private const DataType E4M3 = DataType.Float8E4M3;

    /// <summary>A call of one of the static checks.</summary>
    public delegate FlashAttentionStatus CheckCall(out string message);

    /// <summary>One refusal: the call and a fragment only the managed message of that check contains.</summary>
    public sealed record Refusal(string Name, CheckCall Run, string Fragment)
    {
        public override string ToString() => Name;
    }

    /// <summary>One throwing refusal: the call, the exact exception type and the parameter it names (null: not checked).</summary>
    public sealed record Throwing(string Name, Action Run, Type Exception, string? ParamName, string? Fragment = null)
    {
        public override string ToString() => Name;
    }

    [OneTimeSetUp]
    public void RequireLibrary() => TestSupport.NativeLib.Require();

    // ---- tensors ----------------------------------------------------------------------------------------------------

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    private static DeviceTensor T(long address, params long[] shape) => T(address, F16, shape);

    private static DeviceTensor TS(long address, long[] shape, long[] strides) => DeviceTensor.FromPointer((IntPtr)address, F16, shape, strides);

    /// <summary>A CudaDevice that was never opened (ordinal 0): reaches the argument checks that run before any device use.</summary>
    private static CudaDevice FakeDevice() => (CudaDevice)RuntimeHelpers.GetUninitializedObject(typeof(CudaDevice));

    // fixed-length forward: B=2, Sq=17, Sk=33, Hq=8, Hkv=2, D=64
    private static AttentionArguments Fwd() => new(T(Q, 2, 17, 8, 64), T(K, 2, 33, 2, 64), T(V, 2, 33, 2, 64), T(O, 2, 17, 8, 64), T(L, F32, 2, 8, 17));

    // variable-length forward: 2 sequences, q lengths 10 and 20, k lengths 20 and 30
    private static VarlenBatch Batch(int totalQ = 30, int totalK = 50) =>
        VarlenBatch.FromDevice(T(CQ, I32, 3), T(CK, I32, 3), 25, 35, [0, 10, totalQ], [0, 20, totalK]);

    private static AttentionArguments Varlen(VarlenBatch? batch = null) =>
        new(T(Q, 30, 8, 64), T(K, 50, 2, 64), T(V, 50, 2, 64), T(O, 30, 8, 64), T(L, F32, 8, 30), batch ?? Batch());

    // the fp8 forward: e4m3 q, k, v, a bf16 output, per-(batch, kv head) descales (the kDescale one broadcast: strides 0)
    private static AttentionArguments Fp8() =>
        new(T(Q, E4M3, 2, 17, 8, 64), T(K, E4M3, 2, 33, 2, 64), T(V, E4M3, 2, 33, 2, 64), T(O, BF16, 2, 17, 8, 64), T(L, F32, 2, 8, 17))
        {
            QDescale = T(QD, F32, 2, 2),
            KDescale = DeviceTensor.FromPointer((IntPtr)KD, F32, [2, 2], [0, 0]),
            VDescale = T(VD, F32, 2, 2),
        };

    private static AttentionArguments Fp8Varlen() =>
        new(T(Q, E4M3, 30, 8, 64), T(K, E4M3, 50, 2, 64), T(V, E4M3, 50, 2, 64), T(O, BF16, 30, 8, 64), T(L, F32, 8, 30), Batch())
        {
            QDescale = T(QD, F32, 2, 2),
            KDescale = T(KD, F32, 2, 2),
            VDescale = T(VD, F32, 2, 2),
        };

    private static BackwardArguments Bwd() =>
        new(T(Q, 2, 17, 8, 64), T(K, 2, 33, 2, 64), T(V, 2, 33, 2, 64), T(O, 2, 17, 8, 64), T(DO, 2, 17, 8, 64), T(L, F32, 2, 8, 17),
            T(DQ, 2, 17, 8, 64), T(DK, 2, 33, 2, 64), T(DV, 2, 33, 2, 64));

    private static BackwardArguments BwdVarlen() =>
        new(T(Q, 30, 8, 64), T(K, 50, 2, 64), T(V, 50, 2, 64), T(O, 30, 8, 64), T(DO, 30, 8, 64), T(L, F32, 8, 30),
            T(DQ, 30, 8, 64), T(DK, 50, 2, 64), T(DV, 50, 2, 64), Batch());

    // decode: a contiguous cache of 2 sequences (3 and 17 tokens) of capacity 64, heads_kv 2, head_dim 64
    private static KvCache Cache(int[]? lengths = null, long dim = 64, DataType dtype = F16) =>
        KvCache.Wrap(T(K, dtype, 2, 64, 2, dim), T(V, dtype, 2, 64, 2, dim), lengths ?? [3, 17], cacheSeqLens: T(SL, I32, 2));

    private static DecodeArguments Dec(KvCache? cache = null) =>
        new(T(Q, 2, 1, 8, 64), cache ?? Cache(), T(KN, 2, 1, 2, 64), T(VN, 2, 1, 2, 64), T(O, 2, 1, 8, 64), T(L, F32, 2, 8, 1));

    // ---- the attention checks: InvalidArgument, the managed message, no native call -----------------------------------

    private static Refusal F(string name, AttentionArguments a, string fragment, AttentionOptions? options = null, int cc = 0) =>
        new($"forward: {name}", (out string m) => FlashAttention.Check(a, out m, options, cc), fragment);

    private static Refusal B(string name, BackwardArguments a, string fragment, AttentionOptions? options = null, int cc = 0) =>
        new($"backward: {name}", (out string m) => FlashAttention.CheckBackward(a, out m, options, cc), fragment);

    private static Refusal D(string name, DecodeArguments a, string fragment, AttentionOptions? options = null, int cc = 0) =>
        new($"decode: {name}", (out string m) => FlashAttention.CheckDecode(a, out m, options, cc), fragment);

    public static IEnumerable<Refusal> OptionRefusals()
    {
        AttentionArguments ok = Fwd();
        yield return F("SoftmaxScale NaN", ok, "SoftmaxScale must be finite", new AttentionOptions { SoftmaxScale = float.NaN });
        yield return F("SoftmaxScale +infinity", ok, "SoftmaxScale must be finite", new AttentionOptions { SoftmaxScale = float.PositiveInfinity });
        yield return F("SoftmaxScale 0", ok, "SoftmaxScale must be finite", new AttentionOptions { SoftmaxScale = 0f });
        yield return F("WindowLeft -1", ok, "WindowLeft and WindowRight must be 0 or more", new AttentionOptions { WindowLeft = -1 });
        yield return F("WindowRight -1", ok, "WindowLeft and WindowRight must be 0 or more", new AttentionOptions { WindowRight = -1 });
        yield return F("Softcap 0", ok, "Softcap must be finite and greater than 0", new AttentionOptions { Softcap = 0f });
        yield return F("Softcap -1", ok, "Softcap must be finite and greater than 0", new AttentionOptions { Softcap = -1f });
        yield return F("Softcap NaN", ok, "Softcap must be finite and greater than 0", new AttentionOptions { Softcap = float.NaN });
        yield return F("Softcap +infinity", ok, "Softcap must be finite and greater than 0", new AttentionOptions { Softcap = float.PositiveInfinity });
        yield return F("CausalAlignment 7", ok, "CausalAlignment 7 is not a defined value", new AttentionOptions { CausalAlignment = (CausalAlignment)7 });
        yield return F("KernelPath 9", ok, "KernelPath 9 is not a defined value", new AttentionOptions { KernelPath = (KernelPath)9 });
    }

    public static IEnumerable<Refusal> ForwardRefusals()
    {
        AttentionArguments ok = Fwd();
        yield return F("q rank 3", ok with { Q = T(Q, 34, 8, 64) }, "q must have rank 4");
        yield return F("k rank 3", ok with { K = T(K, 66, 2, 64) }, "k must have rank 4");
        yield return F("v rank 3", ok with { V = T(V, 66, 2, 64) }, "v must have rank 4");
        yield return F("output rank 3", ok with { Output = T(O, 34, 8, 64) }, "output must have rank 4");
        yield return F("q head_dim strided", ok with { Q = TS(Q, [2, 17, 8, 64], [17 * 8 * 128, 8 * 128, 128, 2]) }, "q's last dimension (head_dim) must be contiguous");
        yield return F("k head_dim strided", ok with { K = TS(K, [2, 33, 2, 64], [33 * 256, 256, 128, 2]) }, "k's last dimension (head_dim) must be contiguous");
        yield return F("v head_dim strided", ok with { V = TS(V, [2, 33, 2, 64], [33 * 256, 256, 128, 2]) }, "v's last dimension (head_dim) must be contiguous");
        yield return F("output head_dim strided", ok with { Output = TS(O, [2, 17, 8, 64], [17 * 8 * 128, 8 * 128, 128, 2]) }, "output's last dimension (head_dim) must be contiguous");
        yield return F("k bf16", ok with { K = T(K, BF16, 2, 33, 2, 64) }, "k is BFloat16 but q is Float16");
        yield return F("v bf16", ok with { V = T(V, BF16, 2, 33, 2, 64) }, "v is BFloat16 but q is Float16");
        yield return F("output bf16", ok with { Output = T(O, BF16, 2, 17, 8, 64) }, "output is BFloat16 but q is Float16");
        yield return F("head_dim 12", new AttentionArguments(T(Q, 2, 17, 8, 12), T(K, 2, 33, 2, 12), T(V, 2, 33, 2, 12), T(O, 2, 17, 8, 12)),
            "head_dim must be a positive multiple of 8");
        yield return F("head_dim 0", new AttentionArguments(T(Q, 2, 17, 8, 0), T(K, 2, 33, 2, 0), T(V, 2, 33, 2, 0), T(O, 2, 17, 8, 0)),
            "head_dim must be a positive multiple of 8");
        yield return F("k batch 3", ok with { K = T(K, 3, 33, 2, 64), V = T(V, 3, 33, 2, 64) }, "k must be [batch=2, seqlen_k");
        yield return F("k head_dim 128", ok with { K = T(K, 2, 33, 2, 128), V = T(V, 2, 33, 2, 128) }, "k must be [batch=2, seqlen_k");
        yield return F("v shape differs from k", ok with { V = T(V, 2, 32, 2, 64) }, "v must have k's shape");
        yield return F("output shape differs from q", ok with { Output = T(O, 2, 17, 4, 64) }, "output must have q's shape");
        yield return F("heads_kv 3 does not divide 8", ok with { K = T(K, 2, 33, 3, 64), V = T(V, 2, 33, 3, 64) }, "k has 3 heads, which does not divide");
        yield return F("heads_kv 0", ok with { K = T(K, 2, 33, 0, 64), V = T(V, 2, 33, 0, 64) }, "k has 0 heads, which does not divide");
        yield return F("lse fp16", ok with { LogSumExp = T(L, F16, 2, 8, 17) }, "logSumExp must be Float32");
        yield return F("lse rank 2", ok with { LogSumExp = T(L, F32, 16, 17) }, "logSumExp must be [batch=2, heads_q=8, seqlen_q=17]");
        yield return F("lse batch 3", ok with { LogSumExp = T(L, F32, 3, 8, 17) }, "logSumExp must be [batch=2, heads_q=8, seqlen_q=17]");
        yield return F("lse heads 4", ok with { LogSumExp = T(L, F32, 2, 4, 17) }, "logSumExp must be [batch=2, heads_q=8, seqlen_q=17]");
        yield return F("lse seqlen 16", ok with { LogSumExp = T(L, F32, 2, 8, 16) }, "logSumExp must be [batch=2, heads_q=8, seqlen_q=17]");
        yield return F("compute capability -5", ok, "computeCapability must be 0", cc: -5);

        // fp8 (e4m3): q, k and v together, a bf16 output, head dims of 16, descales Float32 [batch, heads_kv] for fp8 only
        AttentionArguments f8 = Fp8();
        yield return F("fp8 output fp16", f8 with { Output = T(O, F16, 2, 17, 8, 64) }, "output must be BFloat16 when q, k and v are Float8E4M3");
        yield return F("fp8 output fp8", f8 with { Output = T(O, E4M3, 2, 17, 8, 64) }, "output must be BFloat16 when q, k and v are Float8E4M3");
        yield return F("fp8 q, k bf16", f8 with { K = T(K, BF16, 2, 33, 2, 64) }, "k is BFloat16 but q is Float8E4M3; q, k and v share one dtype");
        yield return F("fp8 q, v fp16", f8 with { V = T(V, F16, 2, 33, 2, 64) }, "v is Float16 but q is Float8E4M3");
        yield return F("fp16 q, k fp8", ok with { K = T(K, E4M3, 2, 33, 2, 64) }, "k is Float8E4M3 but q is Float16");
        yield return F("fp8 head_dim 24", new AttentionArguments(T(Q, E4M3, 2, 17, 8, 24), T(K, E4M3, 2, 33, 2, 24), T(V, E4M3, 2, 33, 2, 24), T(O, BF16, 2, 17, 8, 24)),
            "head_dim must be a multiple of 16 for Float8E4M3");
        yield return F("qDescale on an fp16 call", ok with { QDescale = T(QD, F32, 2, 2) }, "qDescale is given but q is Float16");
        yield return F("vDescale on an fp16 call", ok with { VDescale = T(VD, F32, 2, 2) }, "vDescale is given but q is Float16");
        yield return F("kDescale fp16", f8 with { KDescale = T(KD, F16, 2, 2) }, "kDescale must be Float32");
        yield return F("vDescale rank 1", f8 with { VDescale = T(VD, F32, 4) }, "vDescale must be [batch=2, heads_kv=2]");
        yield return F("qDescale per query head", f8 with { QDescale = T(QD, F32, 2, 8) }, "qDescale must be [batch=2, heads_kv=2]");
        yield return F("kDescale batch 3", f8 with { KDescale = T(KD, F32, 3, 2) }, "kDescale must be [batch=2, heads_kv=2]");
        AttentionArguments f8v = Fp8Varlen();
        yield return F("varlen fp8 kDescale of 3 sequences", f8v with { KDescale = T(KD, F32, 3, 2) }, "kDescale must be [sequences=2, heads_kv=2]");
        yield return F("varlen fp8 output fp16", f8v with { Output = T(O, F16, 30, 8, 64) }, "output must be BFloat16 when q, k and v are Float8E4M3");

        AttentionArguments vl = Varlen();
        yield return F("varlen q rank 4", vl with { Q = T(Q, 1, 30, 8, 64) }, "q must have rank 3");
        yield return F("varlen k rank 4", vl with { K = T(K, 1, 50, 2, 64) }, "k must have rank 3");
        yield return F("varlen k head_dim 128", vl with { K = T(K, 50, 2, 128), V = T(V, 50, 2, 128) }, "k must be [total_k, heads_kv, head_dim=64]");
        yield return F("varlen lse rank 3", vl with { LogSumExp = T(L, F32, 1, 8, 30) }, "logSumExp must be [heads_q=8, total_q=30] in a variable-length batch");
        yield return F("varlen lse heads 4", vl with { LogSumExp = T(L, F32, 4, 30) }, "logSumExp must be [heads_q=8, total_q=30] in a variable-length batch");
        yield return F("varlen lse total 29", vl with { LogSumExp = T(L, F32, 8, 29) }, "logSumExp must be [heads_q=8, total_q=30] in a variable-length batch");
        yield return F("varlen cu_seqlens_q past q", Varlen() with { Batch = Batch(totalQ: 31) }, "cu_seqlens_q ends at 31 but q has only 30 rows");
        yield return F("varlen cu_seqlens_k past k", Varlen() with { Batch = Batch(totalK: 51) }, "cu_seqlens_k ends at 51 but k has only 50 rows");
        yield return new Refusal("forward: CheckVarlen positional form", (out string m) =>
            FlashAttention.CheckVarlen(vl.Q, vl.K, vl.V, vl.Output, Batch(totalQ: 31), out m, vl.LogSumExp), "cu_seqlens_q ends at 31");
        yield return new Refusal("forward: Check positional form", (out string m) =>
            FlashAttention.Check(ok.Q, T(K, 3, 33, 2, 64), T(V, 3, 33, 2, 64), ok.Output, out m, ok.LogSumExp), "k must be [batch=2, seqlen_k");
    }

    public static IEnumerable<Refusal> BackwardRefusals()
    {
        BackwardArguments ok = Bwd();
        yield return B("forward part: k batch 3", ok with { K = T(K, 3, 33, 2, 64), V = T(V, 3, 33, 2, 64) }, "k must be [batch=2, seqlen_k");
        yield return B("options: Softcap 0", ok, "Softcap must be finite and greater than 0", new AttentionOptions { Softcap = 0f });
        yield return B("compute capability -1", ok, "computeCapability must be 0", cc: -1);
        foreach ((string name, long address, long[] shape, Func<BackwardArguments, DeviceTensor, BackwardArguments> set) in new (string, long, long[], Func<BackwardArguments, DeviceTensor, BackwardArguments>)[]
        {
            ("dOut", DO, [2, 17, 8, 64], (a, t) => a with { DOut = t }),
            ("dq", DQ, [2, 17, 8, 64], (a, t) => a with { DQ = t }),
            ("dk", DK, [2, 33, 2, 64], (a, t) => a with { DK = t }),
            ("dv", DV, [2, 33, 2, 64], (a, t) => a with { DV = t }),
        })
        {
            long[] rank3 = [shape[0] * shape[1], shape[2], shape[3]];
            long[] wrong = [shape[0], shape[1] - 1, shape[2], shape[3]];
            long[] strides = [shape[1] * shape[2] * 128, shape[2] * 128, 128, 2];
            yield return B($"{name} rank 3", set(ok, T(address, rank3)), $"{name} must have rank 4");
            yield return B($"{name} head_dim strided", set(ok, TS(address, shape, strides)), $"{name}'s last dimension (head_dim) must be contiguous");
            yield return B($"{name} bf16", set(ok, T(address, BF16, shape)), $"{name} is BFloat16 but q is Float16");
            yield return B($"{name} shape", set(ok, T(address, wrong)), $"{name} must have {(name is "dk" or "dv" ? "k" : "q")}'s shape");
        }

        BackwardArguments vl = BwdVarlen();
        yield return B("varlen dq rank 4", vl with { DQ = T(DQ, 1, 30, 8, 64) }, "dq must have rank 3");
        yield return B("varlen cu_seqlens_k past k", vl with { Batch = Batch(totalK: 51) }, "cu_seqlens_k ends at 51");
        yield return new Refusal("backward: CheckBackward positional form", (out string m) =>
            FlashAttention.CheckBackward(ok.Q, ok.K, ok.V, ok.Output, ok.DOut, ok.LogSumExp, T(DQ, BF16, 2, 17, 8, 64), ok.DK, ok.DV, out m),
            "dq is BFloat16");
        yield return new Refusal("backward: CheckBackwardVarlen positional form", (out string m) =>
            FlashAttention.CheckBackwardVarlen(vl.Q, vl.K, vl.V, vl.Output, vl.DOut, vl.LogSumExp, vl.DQ, vl.DK, T(DV, 50, 2, 56), Batch(), out m),
            "dv must have k's shape");
    }

    public static IEnumerable<Refusal> DecodeRefusals()
    {
        DecodeArguments ok = Dec();
        yield return D("options: WindowLeft -1", ok, "WindowLeft and WindowRight must be 0 or more", new AttentionOptions { WindowLeft = -1 });
        yield return D("top-left alignment", ok, "CausalAlignment.TopLeft is not served by Decode", new AttentionOptions { CausalAlignment = CausalAlignment.TopLeft });
        yield return D("numSplits -1", ok with { NumSplits = -1 }, "numSplits (num_splits) must be 0 (automatic)");
        yield return D($"numSplits {FlashAttention.MaxDecodeSplits + 1}", ok with { NumSplits = FlashAttention.MaxDecodeSplits + 1 }, "numSplits (num_splits) must be 0 (automatic)");
        yield return D("q rank 3", ok with { Q = T(Q, 2, 8, 64) }, "q must have rank 4");
        yield return D("output rank 3", ok with { Output = T(O, 2, 8, 64) }, "output must have rank 4");
        yield return D("q head_dim strided", ok with { Q = TS(Q, [2, 1, 8, 64], [8 * 128, 8 * 128, 128, 2]) }, "q's last dimension (head_dim) must be contiguous");
        yield return D("kNew without vNew", ok with { VNew = null }, "kNew (k_new) is given but vNew (v_new) is not");
        yield return D("vNew without kNew", ok with { KNew = null }, "vNew (v_new) is given but kNew (k_new) is not");
        yield return D("q bf16, cache fp16", ok with { Q = T(Q, BF16, 2, 1, 8, 64) }, "q is BFloat16 but the cache holds Float16");
        yield return D("output bf16", ok with { Output = T(O, BF16, 2, 1, 8, 64) }, "output is BFloat16 but q is Float16");
        yield return D("q batch 3", ok with { Q = T(Q, 3, 1, 8, 64), Output = T(O, 3, 1, 8, 64), KNew = null, VNew = null, LogSumExp = null },
            "q has batch 3 but the cache holds 2 sequences");
        yield return D("no new token", ok with { Q = T(Q, 2, 0, 8, 64), Output = T(O, 2, 0, 8, 64), KNew = null, VNew = null, LogSumExp = null },
            "q must hold 1 or more new tokens");
        long huge = (long)int.MaxValue + 1;
        yield return D("2^31 new tokens", ok with { Q = T(Q, 2, huge, 8, 64), Output = T(O, 2, huge, 8, 64), KNew = null, VNew = null, LogSumExp = null },
            "q must hold 1 or more new tokens");
        yield return D("q head_dim 128, cache 64", ok with { Q = T(Q, 2, 1, 8, 128), Output = T(O, 2, 1, 8, 128), KNew = null, VNew = null },
            "q has head_dim 128 but the cache has head_dim 64");
        yield return D("head_dim 12", new DecodeArguments(T(Q, 2, 1, 8, 12), Cache(dim: 12), null, null, T(O, 2, 1, 8, 12)),
            "head_dim must be a positive multiple of 8");
        yield return D("7 query heads over 2", ok with { Q = T(Q, 2, 1, 7, 64), Output = T(O, 2, 1, 7, 64), LogSumExp = null },
            "which does not divide q's 7 heads");
        yield return D("output shape differs from q", ok with { Output = T(O, 2, 1, 4, 64) }, "output must have q's shape");
        yield return D("kNew rank 3", ok with { KNew = T(KN, 2, 2, 64) }, "kNew must have rank 4");
        yield return D("vNew rank 3", ok with { VNew = T(VN, 2, 2, 64) }, "vNew must have rank 4");
        yield return D("kNew bf16", ok with { KNew = T(KN, BF16, 2, 1, 2, 64) }, "kNew is BFloat16 but q is Float16");
        yield return D("vNew bf16", ok with { VNew = T(VN, BF16, 2, 1, 2, 64) }, "vNew is BFloat16 but q is Float16");
        // (kNew's token count is free since C ABI 0.7: more or fewer than q's.)
        yield return D("kNew batch 3", ok with { KNew = T(KN, 3, 1, 2, 64), VNew = T(VN, 3, 1, 2, 64) }, "kNew (k_new) must be [batch=2, seqlen_knew (1 or more)");
        yield return D("kNew 2 tokens, vNew 1", ok with { KNew = T(KN, 2, 2, 2, 64), VNew = T(VN, 2, 1, 2, 64) }, "vNew (v_new) must have kNew's shape");
        yield return D("kNew 1 head", ok with { KNew = T(KN, 2, 1, 1, 64), VNew = T(VN, 2, 1, 1, 64) }, "kNew (k_new) must be [batch=2, seqlen_knew (1 or more)");
        yield return D("kNew head_dim 128", ok with { KNew = T(KN, 2, 1, 2, 128), VNew = T(VN, 2, 1, 2, 128) }, "kNew (k_new) must be [batch=2, seqlen_knew (1 or more)");
        yield return D("vNew shape differs from kNew", ok with { VNew = T(VN, 2, 1, 2, 56) }, "vNew (v_new) must have kNew's shape");
        yield return D("append past the capacity", Dec(Cache([3, 64])), "but the cache has room for 64 per sequence");
        yield return D("lse fp16", ok with { LogSumExp = T(L, F16, 2, 8, 1) }, "logSumExp must be Float32");
        yield return D("lse rank 2", ok with { LogSumExp = T(L, F32, 2, 8) }, "logSumExp must be [batch=2, heads_q=8, seqlen_new=1]");
        yield return D("lse batch 3", ok with { LogSumExp = T(L, F32, 3, 8, 1) }, "logSumExp must be [batch=2, heads_q=8, seqlen_new=1]");
        yield return D("lse heads 4", ok with { LogSumExp = T(L, F32, 2, 4, 1) }, "logSumExp must be [batch=2, heads_q=8, seqlen_new=1]");
        yield return D("lse 2 tokens", ok with { LogSumExp = T(L, F32, 2, 8, 2) }, "logSumExp must be [batch=2, heads_q=8, seqlen_new=1]");
        yield return D("compute capability -1", ok, "computeCapability must be 0", cc: -1);
        yield return new Refusal("decode: CheckDecode positional form", (out string m) =>
            FlashAttention.CheckDecode(ok.Q, ok.Cache, ok.KNew, null, ok.Output, out m), "kNew (k_new) is given but vNew");
    }

    public static IEnumerable<TestCaseData> RefusalCases() =>
        OptionRefusals().Concat(ForwardRefusals()).Concat(BackwardRefusals()).Concat(DecodeRefusals())
            .Select(r => new TestCaseData(r).SetName($"Managed refusal: {r.Name}"));

    [TestCaseSource(nameof(RefusalCases))]
    public void ManagedCheckRefusesBeforeAnyNativeCall(Refusal refusal)
    {
        var calls = new List<string>();
        FlashAttentionStatus status;
        string message;
        using (NativeCallObserver.Observe((function, _) => calls.Add(function)))
        {
            status = refusal.Run(out message);
        }

        Assert.Multiple(() =>
        {
            Assert.That(calls, Is.Empty, $"the managed side should have refused without calling the native library (message: {message})");
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.InvalidArgument), message);
            Assert.That(message, Does.Contain(refusal.Fragment));
        });
    }

    /// <summary>
    /// The valid inputs every refusal above is derived from reach the native library (once) and pass, so each
    /// refusal is caused by the one thing it changes, and the observer does see native calls.
    /// </summary>
    [Test]
    public void TheValidInputsReachTheNativeLibraryAndPass()
    {
        var cases = new (string Expected, CheckCall Run)[]
        {
            ("fa_forward_check", (out string m) => FlashAttention.Check(Fwd(), out m)),
            ("fa_forward_check", (out string m) => FlashAttention.Check(Varlen(), out m)),
            ("fa_backward_check", (out string m) => FlashAttention.CheckBackward(Bwd(), out m)),
            ("fa_backward_check", (out string m) => FlashAttention.CheckBackward(BwdVarlen(), out m)),
            ("fa_decode_check", (out string m) => FlashAttention.CheckDecode(Dec(), out m)),
            ("fa_decode_check", (out string m) => FlashAttention.CheckDecode(Dec() with { KNew = null, VNew = null, LogSumExp = null }, out m)),
        };
        Assert.Multiple(() =>
        {
            foreach ((string expected, CheckCall run) in cases)
            {
                var calls = new List<string>();
                FlashAttentionStatus status;
                string message;
                using (NativeCallObserver.Observe((function, _) => calls.Add(function)))
                {
                    status = run(out message);
                }

                Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), $"{expected}: {message}");
                Assert.That(calls, Is.EqualTo(new[] { expected }));
            }
        });
    }

    // ---- throwing checks --------------------------------------------------------------------------------------------

    private static Throwing Th<TException>(string name, Action run, string? paramName, string? fragment = null)
        where TException : Exception => new(name, run, typeof(TException), paramName, fragment);

    public static IEnumerable<Throwing> AttentionCallThrows()
    {
        AttentionArguments f = Fwd();
        yield return Th<ArgumentNullException>("forward: null q", () => FlashAttention.Check(f with { Q = null! }, out _), "q");
        yield return Th<ArgumentNullException>("forward: null k", () => FlashAttention.Check(f with { K = null! }, out _), "k");
        yield return Th<ArgumentNullException>("forward: null v", () => FlashAttention.Check(f with { V = null! }, out _), "v");
        yield return Th<ArgumentNullException>("forward: null output", () => FlashAttention.Check(f with { Output = null! }, out _), "output");
        yield return Th<ArgumentNullException>("forward: CheckVarlen null batch", () => FlashAttention.CheckVarlen(f.Q, f.K, f.V, f.Output, null!, out _), "batch");
        yield return Th<ObjectDisposedException>("forward: disposed batch", () =>
        {
            VarlenBatch batch = Batch();
            batch.Dispose();
            FlashAttention.Check(Varlen(batch), out _);
        }, null);

        BackwardArguments b = Bwd();
        yield return Th<ArgumentNullException>("backward: null q", () => FlashAttention.CheckBackward(b with { Q = null! }, out _), "q");
        yield return Th<ArgumentNullException>("backward: null dOut", () => FlashAttention.CheckBackward(b with { DOut = null! }, out _), "dOut");
        yield return Th<ArgumentNullException>("backward: null logSumExp", () => FlashAttention.CheckBackward(b with { LogSumExp = null! }, out _), "logSumExp");
        yield return Th<ArgumentNullException>("backward: null dq", () => FlashAttention.CheckBackward(b with { DQ = null! }, out _), "dq");
        yield return Th<ArgumentNullException>("backward: null dk", () => FlashAttention.CheckBackward(b with { DK = null! }, out _), "dk");
        yield return Th<ArgumentNullException>("backward: null dv", () => FlashAttention.CheckBackward(b with { DV = null! }, out _), "dv");
        yield return Th<ArgumentNullException>("backward: CheckBackwardVarlen null batch", () =>
            FlashAttention.CheckBackwardVarlen(b.Q, b.K, b.V, b.Output, b.DOut, b.LogSumExp, b.DQ, b.DK, b.DV, null!, out _), "batch");
        yield return Th<ObjectDisposedException>("backward: disposed batch", () =>
        {
            VarlenBatch batch = Batch();
            batch.Dispose();
            FlashAttention.CheckBackward(BwdVarlen() with { Batch = batch }, out _);
        }, null);

        DecodeArguments d = Dec();
        yield return Th<ArgumentNullException>("decode: null q", () => FlashAttention.CheckDecode(d with { Q = null! }, out _), "q");
        yield return Th<ArgumentNullException>("decode: null cache", () => FlashAttention.CheckDecode(d with { Cache = null! }, out _), "cache");
        yield return Th<ArgumentNullException>("decode: null output", () => FlashAttention.CheckDecode(d with { Output = null! }, out _), "output");
        yield return Th<ObjectDisposedException>("decode: disposed cache", () =>
        {
            KvCache cache = Cache();
            cache.Dispose();
            FlashAttention.CheckDecode(Dec(cache), out _);
        }, null);
    }

    public static IEnumerable<Throwing> ArgumentTypeThrows()
    {
        // AttentionOptions.Validate (the CPU reference's entry) and AttentionShape.Validate
        var shape = new AttentionShape(1, 4, 4, 2, 1, 8);
        yield return Th<ArgumentException>("AttentionOptions.Validate: Softcap 0", () =>
            AttentionReference.Forward(new double[64], new double[32], new double[32], shape, new AttentionOptions { Softcap = 0f }, new double[64], new double[8]),
            "options", "Softcap must be finite");
        yield return Th<ArgumentException>("AttentionShape: batch -1", () => (shape with { Batch = -1 }).Validate(), "shape", "must be 0 or more");
        yield return Th<ArgumentException>("AttentionShape: seqlen_q -1", () => (shape with { SeqLenQ = -1 }).Validate(), "shape", "must be 0 or more");
        yield return Th<ArgumentException>("AttentionShape: seqlen_k -1", () => (shape with { SeqLenK = -1 }).Validate(), "shape", "must be 0 or more");
        yield return Th<ArgumentException>("AttentionShape: heads_q 0", () => (shape with { HeadsQ = 0 }).Validate(), "shape", "must be 1 or more");
        yield return Th<ArgumentException>("AttentionShape: heads_kv 0", () => (shape with { HeadsKv = 0 }).Validate(), "shape", "must be 1 or more");
        yield return Th<ArgumentException>("AttentionShape: head_dim 0", () => (shape with { HeadDim = 0 }).Validate(), "shape", "must be 1 or more");
        yield return Th<ArgumentException>("AttentionShape: heads_kv 3 of 2", () => (shape with { HeadsKv = 3, HeadsQ = 4 }).Validate(), "shape", "must divide");

        // DeviceTensor
        yield return Th<ArgumentException>("DeviceTensor.FromPointer: dtype 42", () => DeviceTensor.FromPointer((IntPtr)Q, (DataType)42, [2]), "dataType");
        yield return Th<ArgumentException>("DeviceTensor.FromPointer: rank 0", () => DeviceTensor.FromPointer((IntPtr)Q, F16, []), "shape", "rank 1 to 4");
        yield return Th<ArgumentException>("DeviceTensor.FromPointer: rank 5", () => DeviceTensor.FromPointer((IntPtr)Q, F16, [1, 2, 3, 4, 5]), "shape", "rank 1 to 4");
        yield return Th<ArgumentException>("DeviceTensor.FromPointer: extent -1", () => DeviceTensor.FromPointer((IntPtr)Q, F16, [2, -1]), "shape", "0 or more");
        yield return Th<ArgumentException>("DeviceTensor.FromPointer: 1 stride for rank 2", () => DeviceTensor.FromPointer((IntPtr)Q, F16, [2, 3], [1]), "strides", "rank 2 but 1 strides");
        yield return Th<ArgumentException>("DeviceTensor.FromPointer: stride -3", () => DeviceTensor.FromPointer((IntPtr)Q, F16, [2, 3], [-3, 1]), "strides", "0 or more");
        yield return Th<ArgumentNullException>("DeviceTensor.FromBuffer: null", () => DeviceTensor.FromBuffer<Half>(null!, [1]), "buffer");
        yield return Th<ObjectDisposedException>("DeviceTensor.FromBuffer: disposed", () =>
        {
            var buffer = new DeviceBuffer<Half>(FakeDevice(), 0);
            buffer.Dispose();
            DeviceTensor.FromBuffer(buffer, [0]);
        }, null);
        yield return Th<ArgumentException>("DeviceTensor.FromBuffer: long elements", () => DeviceTensor.FromBuffer(new DeviceBuffer<long>(FakeDevice(), 0), [0]), "buffer", "cannot back a tensor");
        yield return Th<ArgumentException>("DeviceTensor.FromBuffer: rank 0", () => DeviceTensor.FromBuffer(new DeviceBuffer<Half>(FakeDevice(), 0), []), "shape", "rank 1 to 4");
        yield return Th<ArgumentOutOfRangeException>("DeviceTensor.FromBuffer: offset -1", () => DeviceTensor.FromBuffer(new DeviceBuffer<Half>(FakeDevice(), 0), [0], default, -1), "elementOffset");
        yield return Th<ArgumentException>("DeviceTensor.FromBuffer: past the end", () => DeviceTensor.FromBuffer(new DeviceBuffer<Half>(FakeDevice(), 0), [1]), "shape", "reaches element 0");
        yield return Th<ArgumentException>("DeviceTensor.FromBuffer: extent overflows", () =>
            DeviceTensor.FromBuffer(new DeviceBuffer<Half>(FakeDevice(), 0), [3, 2], [long.MaxValue / 2, 1]), "shape", "overflows");

        // DeviceBuffer
        yield return Th<ArgumentNullException>("DeviceBuffer: null device", () => _ = new DeviceBuffer<float>(null!, 4), "device");
        yield return Th<ArgumentOutOfRangeException>("DeviceBuffer: length -1", () => _ = new DeviceBuffer<float>(FakeDevice(), -1), "length");
        yield return Th<ArgumentOutOfRangeException>("DeviceBuffer: bytes overflow", () => _ = new DeviceBuffer<float>(FakeDevice(), long.MaxValue / 2), "length", "overflows");
        yield return Th<ArgumentException>("DeviceBuffer.CopyFrom: length differs", () => new DeviceBuffer<float>(FakeDevice(), 0).CopyFrom(new float[1]), "source", "the buffer has 0");
        yield return Th<ArgumentException>("DeviceBuffer.CopyTo: length differs", () => new DeviceBuffer<float>(FakeDevice(), 0).CopyTo(new float[1]), "destination", "the buffer has 0");
        yield return Th<ArgumentException>("DeviceBuffer.CopyFrom: offset -1", () => new DeviceBuffer<float>(FakeDevice(), 0).CopyFrom(ReadOnlySpan<float>.Empty, -1), "source", "do not fit");
        yield return Th<ArgumentException>("DeviceBuffer.CopyFrom: offset past the end", () => new DeviceBuffer<float>(FakeDevice(), 0).CopyFrom(ReadOnlySpan<float>.Empty, 1), "source", "do not fit");
        yield return Th<ArgumentException>("DeviceBuffer.CopyTo: too long at offset 0", () => new DeviceBuffer<float>(FakeDevice(), 0).CopyTo(new float[1], 0), "destination", "do not fit");
        yield return Th<ArgumentException>("DeviceBuffer.CopyFromAsync: length differs", () => new DeviceBuffer<float>(FakeDevice(), 0).CopyFromAsync(new float[1], null!), "source", "the buffer has 0");
        yield return Th<ArgumentException>("DeviceBuffer.CopyToAsync: length differs", () => new DeviceBuffer<float>(FakeDevice(), 0).CopyToAsync(new float[1], null!), "destination", "the buffer has 0");
        yield return Th<ArgumentNullException>("DeviceBuffer.CopyFromAsync: null stream", () => new DeviceBuffer<float>(FakeDevice(), 0).CopyFromAsync(ReadOnlyMemory<float>.Empty, 0, null!), "stream");
        yield return Th<ArgumentNullException>("DeviceBuffer.CopyToAsync: null stream", () => new DeviceBuffer<float>(FakeDevice(), 0).CopyToAsync(Memory<float>.Empty, 0, null!), "stream");
        yield return Th<ArgumentException>("DeviceBuffer.CopyFromAsync: offset past the end", () =>
            new DeviceBuffer<float>(FakeDevice(), 0).CopyFromAsync(ReadOnlyMemory<float>.Empty, 1, CudaStream.FromHandle((IntPtr)0x7F00_1230)), "source", "do not fit");
        yield return Th<ArgumentException>("DeviceBuffer.CopyToAsync: offset -1", () =>
            new DeviceBuffer<float>(FakeDevice(), 0).CopyToAsync(Memory<float>.Empty, -1, CudaStream.FromHandle((IntPtr)0x7F00_1230)), "destination", "do not fit");

        // VarlenBatch.FromDevice
        DeviceTensor cq = T(CQ, I32, 3), ck = T(CK, I32, 3);
        yield return Th<ArgumentNullException>("VarlenBatch.FromDevice: null cuSeqlensQ", () => VarlenBatch.FromDevice(null!, ck, 1, 1), "cuSeqlensQ");
        yield return Th<ArgumentNullException>("VarlenBatch.FromDevice: null cuSeqlensK", () => VarlenBatch.FromDevice(cq, null!, 1, 1), "cuSeqlensK");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: fp32 cu_seqlens_q", () => VarlenBatch.FromDevice(T(CQ, F32, 3), ck, 1, 1), "cuSeqlensQ", "Int32 vector");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: rank-2 cu_seqlens_k", () => VarlenBatch.FromDevice(cq, T(CK, I32, 3, 1), 1, 1), "cuSeqlensK", "Int32 vector");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: 1 element", () => VarlenBatch.FromDevice(T(CQ, I32, 1), T(CK, I32, 1), 1, 1), "cuSeqlensQ", "batch + 1 elements");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: strided", () =>
            VarlenBatch.FromDevice(DeviceTensor.FromPointer((IntPtr)CQ, I32, [3], [2]), ck, 1, 1), "cuSeqlensQ", "contiguous");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: lengths differ", () => VarlenBatch.FromDevice(cq, T(CK, I32, 4), 1, 1), "cuSeqlensK", "both are [batch + 1]");
        yield return Th<ArgumentOutOfRangeException>("VarlenBatch.FromDevice: max_seqlen_q -1", () => VarlenBatch.FromDevice(cq, ck, -1, 1), "maxSeqLenQ");
        yield return Th<ArgumentOutOfRangeException>("VarlenBatch.FromDevice: max_seqlen_k -1", () => VarlenBatch.FromDevice(cq, ck, 1, -1), "maxSeqLenK");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: host copy of q only", () => VarlenBatch.FromDevice(cq, ck, 20, 30, [0, 10, 30]), "hostCopyK", "or of neither");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: host copy of k only", () => VarlenBatch.FromDevice(cq, ck, 20, 30, default, [0, 20, 50]), "hostCopyQ", "or of neither");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: host copy too short", () => VarlenBatch.FromDevice(cq, ck, 20, 30, [0, 10], [0, 20, 50]), "hostCopyQ", "has 2 elements but the device array has 3");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: host copy starts at 1", () => VarlenBatch.FromDevice(cq, ck, 20, 30, [0, 10, 30], [1, 20, 50]), "hostCopyK", "prefix sums start at 0");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: host copy decreases", () => VarlenBatch.FromDevice(cq, ck, 20, 30, [0, 10, 5], [0, 20, 50]), "hostCopyQ", "never decrease");
        yield return Th<ArgumentException>("VarlenBatch.FromDevice: a sequence above max_seqlen_k", () => VarlenBatch.FromDevice(cq, ck, 20, 29, [0, 10, 30], [0, 20, 50]), "hostCopyK", "above maxSeqLenK = 29");

        // VarlenBatch.FromLengths (every check runs before the device is touched)
        yield return Th<ArgumentNullException>("VarlenBatch.FromLengths: null device", () => VarlenBatch.FromLengths(null!, [1], [1]), "device");
        yield return Th<ArgumentException>("VarlenBatch.FromLengths: counts differ", () => VarlenBatch.FromLengths(FakeDevice(), [1, 2], [1]), "seqLensK", "give one query and one key length");
        yield return Th<ArgumentException>("VarlenBatch.FromLengths: no sequence", () => VarlenBatch.FromLengths(FakeDevice(), [], []), "seqLensQ", "at least one sequence");
        yield return Th<ArgumentException>("VarlenBatch.FromLengths: negative length", () => VarlenBatch.FromLengths(FakeDevice(), [1, 2], [3, -1]), "seqLensK", "0 or more");
        yield return Th<ArgumentException>("VarlenBatch.FromLengths: total past int32", () => VarlenBatch.FromLengths(FakeDevice(), [int.MaxValue, 1], [1, 1]), "seqLensQ", "int32 cu_seqlens cannot hold");

        // QuerySupport
        var query = new SupportQuery(AttentionPass.Forward, F16, 64);
        yield return Th<ArgumentNullException>("QuerySupport: null", () => FlashAttention.QuerySupport(null!), "query");
        yield return Th<ArgumentException>("QuerySupport: pass 9", () => FlashAttention.QuerySupport(query with { Pass = (AttentionPass)9 }), "query", "AttentionPass");
        yield return Th<ArgumentException>("QuerySupport: dtype 42", () => FlashAttention.QuerySupport(query with { DataType = (DataType)42 }), "query", "DataType 42");
        yield return Th<ArgumentException>("QuerySupport: kernel path 9", () => FlashAttention.QuerySupport(query with { KernelPath = (KernelPath)9 }), "query", "KernelPath 9");
        yield return Th<ArgumentException>("QuerySupport: head dim 0", () => FlashAttention.QuerySupport(query with { HeadDim = 0 }), "query", "HeadDim must be 1 or more");
        yield return Th<ArgumentException>("QuerySupport: compute capability -1", () => FlashAttention.QuerySupport(query with { ComputeCapability = -1 }), "query", "ComputeCapability must be 0");
    }

    public static IEnumerable<Throwing> KvCacheThrows()
    {
        DeviceTensor k = T(K, 2, 64, 2, 64), v = T(V, 2, 64, 2, 64), sl = T(SL, I32, 2);
        DeviceTensor kp = T(K, 10, 16, 2, 64), vp = T(V, 10, 16, 2, 64);
        yield return Th<ArgumentException>("KvCache.Wrap: keys extent 0", () => KvCache.Wrap(T(K, 2, 0, 2, 64), T(V, 2, 0, 2, 64), [0, 0], cacheSeqLens: sl), "keys", "Every extent of keys");
        yield return Th<ArgumentException>("KvCache.Wrap: values rank 3", () => KvCache.Wrap(k, T(V, 2, 64, 128), [0, 0], cacheSeqLens: sl), "values", "values must have rank 4");
        yield return Th<ArgumentException>("KvCache.Wrap: values fp32", () => KvCache.Wrap(T(K, F32, 2, 64, 2, 64), T(V, F32, 2, 64, 2, 64), [0, 0], cacheSeqLens: sl), "keys", "Float16, BFloat16 or Float8E4M3");
        yield return Th<ArgumentException>("KvCache.Wrap: fp8 keys, descales fp16", () => KvCache.Wrap(T(K, E4M3, 2, 64, 2, 64), T(V, E4M3, 2, 64, 2, 64), [0, 0], cacheSeqLens: sl,
            keyDescale: T(0x7E80_0000, 2), valueDescale: T(0x7E80_0100, 2)), "keyDescale", "Float32");
        yield return Th<ArgumentException>("KvCache.Wrap: block table of 0 columns", () => KvCache.Wrap(kp, vp, [0, 0], T(0x7E90_0000, I32, 2, 0), sl), "blockTable", "1 or more columns");
        yield return Th<ArgumentException>("KvCache.Wrap: block table strided", () =>
            KvCache.Wrap(kp, vp, [0, 0], DeviceTensor.FromPointer((IntPtr)0x7E90_0000, I32, [2, 4], [8, 2]), sl), "blockTable", "contiguous last dimension");
        yield return Th<ArgumentException>("KvCache.Wrap: cache_seqlens rank 2", () => KvCache.Wrap(k, v, [0, 0], cacheSeqLens: T(SL, I32, 2, 1)), "cacheSeqLens", "contiguous Int32 vector");
        yield return Th<ArgumentException>("KvCache.SetSequenceLengths: negative", () => Cache().SetSequenceLengths([-1, 0]), "lengths", "0 .. 64");
        yield return Th<ArgumentOutOfRangeException>("KvCache.ResetSequence: -1", () => Cache().ResetSequence(-1), "sequence");
        yield return Th<ArgumentException>("KvCache.CopyKeysTo: strided cache", () =>
        {
            var strided = KvCache.Wrap(TS(K, [2, 64, 2, 64], [64 * 256, 256, 64, 1]), TS(V, [2, 64, 2, 64], [64 * 256, 256, 64, 1]), [0, 0], cacheSeqLens: sl);
            strided.CopyKeysTo(new Half[2 * 64 * 2 * 64]);
        }, "destination", "Only a dense cache");
        yield return Th<ArgumentNullException>("KvCache.CreateContiguous: null device", () => KvCache.CreateContiguous(null!, F16, 1, 16, 1, 64), "device");
        yield return Th<ArgumentException>("KvCache.CreateContiguous: fp32", () => KvCache.CreateContiguous(FakeDevice(), F32, 1, 16, 1, 64), "dataType", "Float16, BFloat16 or Float8E4M3");
        yield return Th<ArgumentException>("KvCache.CreateContiguous: fp8 with descales 2", () => KvCache.CreateContiguous(FakeDevice(), E4M3, 1, 16, 1, 64, descales: (DescaleGranularity)2), "descales", "DescaleGranularity");
        yield return Th<ArgumentOutOfRangeException>("KvCache.CreateContiguous: batch 0", () => KvCache.CreateContiguous(FakeDevice(), F16, 0, 16, 1, 64), "batchSize");
        yield return Th<ArgumentOutOfRangeException>("KvCache.CreateContiguous: capacity 0", () => KvCache.CreateContiguous(FakeDevice(), F16, 1, 0, 1, 64), "capacity");
        yield return Th<ArgumentOutOfRangeException>("KvCache.CreateContiguous: heads 0", () => KvCache.CreateContiguous(FakeDevice(), F16, 1, 16, 0, 64), "headsKv");
        yield return Th<ArgumentOutOfRangeException>("KvCache.CreateContiguous: head dim 0", () => KvCache.CreateContiguous(FakeDevice(), F16, 1, 16, 1, 0), "headDim");
        yield return Th<ArgumentNullException>("KvCache.CreatePaged: null device", () => KvCache.CreatePaged(null!, F16, 1, 4, 16, 1, 64), "device");
        yield return Th<ArgumentException>("KvCache.CreatePaged: int32", () => KvCache.CreatePaged(FakeDevice(), I32, 1, 4, 16, 1, 64), "dataType", "Float16, BFloat16 or Float8E4M3");
        yield return Th<ArgumentOutOfRangeException>("KvCache.CreatePaged: batch 0", () => KvCache.CreatePaged(FakeDevice(), F16, 0, 4, 16, 1, 64), "batchSize");
        yield return Th<ArgumentOutOfRangeException>("KvCache.CreatePaged: 0 blocks", () => KvCache.CreatePaged(FakeDevice(), F16, 1, 0, 16, 1, 64), "numBlocks");
        yield return Th<ArgumentOutOfRangeException>("KvCache.CreatePaged: block size 0", () => KvCache.CreatePaged(FakeDevice(), F16, 1, 4, 0, 1, 64), "blockSize");
        yield return Th<ArgumentOutOfRangeException>("KvCache.CreatePaged: heads 0", () => KvCache.CreatePaged(FakeDevice(), F16, 1, 4, 16, 0, 64), "headsKv");
        yield return Th<ArgumentOutOfRangeException>("KvCache.CreatePaged: head dim 0", () => KvCache.CreatePaged(FakeDevice(), F16, 1, 4, 16, 1, 0), "headDim");
        yield return Th<ArgumentOutOfRangeException>("KvCache.CreatePaged: -1 blocks per sequence", () => KvCache.CreatePaged(FakeDevice(), F16, 1, 4, 16, 1, 64, -1), "maxBlocksPerSequence");
    }

    public static IEnumerable<TestCaseData> ThrowingCases() =>
        AttentionCallThrows().Concat(ArgumentTypeThrows()).Concat(KvCacheThrows())
            .Select(t => new TestCaseData(t).SetName($"Managed throw: {t.Name}"));

    [TestCaseSource(nameof(ThrowingCases))]
    public void ManagedCheckThrowsBeforeAnyNativeCall(Throwing t)
    {
        var calls = new List<string>();
        Exception? thrown = null;
        using (NativeCallObserver.Observe((function, _) => calls.Add(function)))
        {
            try
            {
                t.Run();
            }
            catch (Exception ex)
            {
                thrown = ex;
            }
        }

        Assert.Multiple(() =>
        {
            Assert.That(calls, Is.Empty, "no native attention call may be made");
            Assert.That(thrown, Is.Not.Null.And.TypeOf(t.Exception), thrown?.ToString());
            if (t.ParamName is not null)
            {
                Assert.That((thrown as ArgumentException)?.ParamName, Is.EqualTo(t.ParamName), thrown?.Message);
            }

            if (t.Fragment is not null)
            {
                Assert.That(thrown?.Message, Does.Contain(t.Fragment));
            }
        });
    }

    // ---- instance calls: ArgumentException before any native call ---------------------------------------------------

    /// <summary>Thrown by the observer of the instance tests, so a call that gets past the managed checks stops there.</summary>
    private sealed class NativeCallReached(string function) : Exception($"the call reached {function}");

    /// <summary>
    /// A FlashAttention on a CudaDevice that was never opened, with a context handle that was never created (zero,
    /// not closed): every managed check of the instance calls runs as on a GPU, and a call that passes them reaches
    /// the observer with a native function's name (<see cref="ValidInstanceCallsReachTheNativeLibrary"/>), which
    /// throws <see cref="NativeCallReached"/> so the native call itself is never made. The zero handle is invalid, so
    /// nothing is ever released.
    /// </summary>
    private static FlashAttention OfflineInstance()
    {
        var fa = (FlashAttention)RuntimeHelpers.GetUninitializedObject(typeof(FlashAttention));
        SetField(fa, "_context", new SafeContextHandle());
        SetField(fa, "_logger", NullLogger.Instance);
        SetField(fa, "<Device>k__BackingField", FakeDevice());
        return fa;
    }

    private static void SetField(object target, string name, object value)
    {
        FieldInfo field = typeof(FlashAttention).GetField(name, BindingFlags.Instance | BindingFlags.NonPublic)
            ?? throw new InvalidOperationException($"FlashAttention has no field {name}: update OfflineInstance() to the class's fields");
        field.SetValue(target, value);
    }

    public static IEnumerable<Throwing> InstanceThrows()
    {
        FlashAttention fa = OfflineInstance();
        AttentionArguments f = Fwd();
        AttentionArguments kBatch3 = f with { K = T(K, 3, 33, 2, 64), V = T(V, 3, 33, 2, 64) };
        const string batchFragment = "k must be [batch=2, seqlen_k";
        yield return Th<ArgumentException>("Forward: k batch 3", () => fa.Forward(kBatch3), "k", batchFragment);
        yield return Th<ArgumentException>("Forward positional: k batch 3", () => fa.Forward(f.Q, kBatch3.K, kBatch3.V, f.Output, f.LogSumExp), "k", batchFragment);

        var badOptions = new (string Name, AttentionOptions Options, string Fragment)[]
        {
            ("WindowLeft -1", new AttentionOptions { WindowLeft = -1 }, "WindowLeft and WindowRight must be 0 or more"),
            ("WindowRight -1", new AttentionOptions { WindowRight = -1 }, "WindowLeft and WindowRight must be 0 or more"),
            ("causal, WindowLeft -1", new AttentionOptions { Causal = true, WindowLeft = -1, WindowRight = 0 }, "WindowLeft and WindowRight must be 0 or more"),
            ("Softcap 0", new AttentionOptions { Softcap = 0f }, "Softcap must be finite and greater than 0"),
            ("Softcap -0", new AttentionOptions { Softcap = -0f }, "Softcap must be finite and greater than 0"),
            ("Softcap -1", new AttentionOptions { Softcap = -1f }, "Softcap must be finite and greater than 0"),
            ("Softcap NaN", new AttentionOptions { Softcap = float.NaN }, "Softcap must be finite and greater than 0"),
            ("Softcap +infinity", new AttentionOptions { Softcap = float.PositiveInfinity }, "Softcap must be finite and greater than 0"),
        };
        foreach ((string name, AttentionOptions options, string fragment) in badOptions)
        {
            yield return Th<ArgumentException>($"Forward: {name}", () => fa.Forward(f, options), "options", fragment);
        }

        BackwardArguments b = Bwd();
        BackwardArguments bBatch3 = b with { K = T(K, 3, 33, 2, 64), V = T(V, 3, 33, 2, 64) };
        yield return Th<ArgumentException>("Backward: k batch 3", () => fa.Backward(bBatch3), "k", batchFragment);
        yield return Th<ArgumentException>("GetBackwardWorkspaceSize: k batch 3", () => fa.GetBackwardWorkspaceSize(bBatch3), "k", batchFragment);
        foreach ((string name, AttentionOptions options, string fragment) in badOptions)
        {
            yield return Th<ArgumentException>($"Backward: {name}", () => fa.Backward(b, options), "options", fragment);
        }

        yield return Th<ArgumentException>("GetBackwardWorkspaceSize: Softcap 0", () => fa.GetBackwardWorkspaceSize(b, new AttentionOptions { Softcap = 0f }),
            "options", "Softcap must be finite and greater than 0");

        DecodeArguments d = Dec() with { KNew = null, VNew = null };
        foreach ((string name, AttentionOptions options, string fragment) in badOptions)
        {
            yield return Th<ArgumentException>($"Decode: {name}", () => fa.Decode(d, options), "options", fragment);
        }

        yield return Th<ArgumentException>("Decode: q batch 3", () =>
            fa.Decode(d with { Q = T(Q, 3, 1, 8, 64), Output = T(O, 3, 1, 8, 64), LogSumExp = null }), "q", "q has batch 3 but the cache holds 2 sequences");
        yield return Th<ArgumentException>("GetDecodeWorkspaceSize: WindowRight -1", () => fa.GetDecodeWorkspaceSize(d, new AttentionOptions { WindowRight = -1 }),
            "options", "WindowLeft and WindowRight must be 0 or more");
        yield return Th<ArgumentException>("GetDecodeSplitCount: Softcap 0", () => fa.GetDecodeSplitCount(d, new AttentionOptions { Softcap = 0f }),
            "options", "Softcap must be finite and greater than 0");
    }

    public static IEnumerable<TestCaseData> InstanceCases() =>
        InstanceThrows().Select(t => new TestCaseData(t).SetName($"Managed instance throw: {t.Name}"));

    /// <summary>
    /// The instance calls throw exactly ArgumentException naming the parameter, with the managed message, and make no
    /// native call: removing or loosening the check lets the call reach the observer, which stops it with another
    /// exception type, so the case fails.
    /// </summary>
    [TestCaseSource(nameof(InstanceCases))]
    public void InstanceCallThrowsBeforeAnyNativeCall(Throwing t)
    {
        var calls = new List<string>();
        Exception? thrown = null;
        using (NativeCallObserver.Observe((function, _) =>
        {
            calls.Add(function);
            throw new NativeCallReached(function);
        }))
        {
            try
            {
                t.Run();
            }
            catch (Exception ex)
            {
                thrown = ex;
            }
        }

        Assert.Multiple(() =>
        {
            Assert.That(calls, Is.Empty, "no native attention call may be made");
            Assert.That(thrown, Is.Not.Null.And.TypeOf(t.Exception), thrown?.ToString());
            Assert.That((thrown as ArgumentException)?.ParamName, Is.EqualTo(t.ParamName), thrown?.Message);
            Assert.That(thrown?.Message, Does.Contain(t.Fragment));
        });
    }

    /// <summary>
    /// The valid inputs the instance cases are derived from pass every managed check of the offline instance and
    /// reach the observer with the native function each call makes, so the cases above test the managed checks and
    /// not the offline instance.
    /// </summary>
    [Test]
    public void ValidInstanceCallsReachTheNativeLibrary()
    {
        FlashAttention fa = OfflineInstance();
        DecodeArguments d = Dec() with { KNew = null, VNew = null };
        var cases = new (string Expected, Action Run)[]
        {
            ("fa_forward", () => fa.Forward(Fwd())),
            ("fa_forward", () => fa.Forward(Fwd(), new AttentionOptions { Causal = true, WindowLeft = 0, WindowRight = 0, Softcap = 1e-3f })),
            ("fa_backward", () => fa.Backward(Bwd())),
            ("fa_backward", () => fa.Backward(Bwd(), new AttentionOptions { WindowLeft = 5, WindowRight = 0, Softcap = 30f })),
            ("fa_backward_workspace_size", () => fa.GetBackwardWorkspaceSize(Bwd())),
            ("fa_decode", () => fa.Decode(d)),
            ("fa_decode", () => fa.Decode(d, new AttentionOptions { WindowLeft = 0, Softcap = 30f })),
            ("fa_decode_workspace_size", () => fa.GetDecodeWorkspaceSize(d)),
            ("fa_decode_num_splits", () => fa.GetDecodeSplitCount(d)),
        };
        Assert.Multiple(() =>
        {
            foreach ((string expected, Action run) in cases)
            {
                var calls = new List<string>();
                using (NativeCallObserver.Observe((function, _) =>
                {
                    calls.Add(function);
                    throw new NativeCallReached(function);
                }))
                {
                    Assert.That(() => run(), Throws.TypeOf<NativeCallReached>(), expected);
                }

                Assert.That(calls, Is.EqualTo(new[] { expected }));
            }
        });
    }
}
