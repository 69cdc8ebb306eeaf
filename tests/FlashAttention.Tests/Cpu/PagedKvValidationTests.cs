using FlashAttn.Internal;
using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;
using static FlashAttn.Tests.TestSupport.ForwardParamsFactory;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// Paged K/V of the variable-length forward (C ABI 0.11, <see cref="VarlenBatch.WithBlockTable"/>, the params'
/// <c>block_table</c>) through the managed API and the real native library, without a GPU (fake aligned addresses that
/// nothing dereferences): a paged batch reaches <c>fa_forward_check</c> with the table, rank-4 pools and the batch's
/// fields in the params, and is served wherever the same call over packed keys is, with every forward option but dropout, on
/// <see cref="KernelPath.Auto"/>, <see cref="KernelPath.Sm80"/> and (where the build has sm_90a code, at compute
/// capability 9.0) <see cref="KernelPath.Sm90"/>, with cu_seqlens_k's total past the pool's rows (its values index no
/// tensor). Refused, each naming the problem: a block table without a variable-length batch (INVALID_ARGUMENT from the
/// library; the managed API cannot express it), a table of the wrong rank, dtype or row count (managed, then the
/// library), packed k or v with a paged batch, pools of different blocks, max_seqlen_k past the table's capacity
/// (managed and library: INVALID_ARGUMENT), a block size that is not a multiple of 128, fp8 and dropout (UNSUPPORTED),
/// and the backward of a paged batch (managed: it has no paged K/V). The capability query's
/// <see cref="SupportQuery.PagedKv"/> agrees: forward (varlen) served, with dropout, backward and fp8 refused, decode
/// served, a forward query without varlen malformed.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed unsafe class PagedKvValidationTests
{
    private const long Q = 0x1000_0000, K = 0x2000_0000, V = 0x3000_0000, O = 0x4000_0000, L = 0x5000_0000;
    private const long DO = 0x6000_0000, DQ = 0x6800_0000, DK = 0x7000_0000, DV = 0x7800_0000;
    private const long CQ = 0x7C00_0000, CK = 0x7D00_0000, BT = 0x7D80_0000, SL = 0x7E00_0000, AL = 0x7E80_0000, DM = 0x7F00_0000;
    private const DataType F16 = DataType.Float16, BF16 = DataType.BFloat16, F32 = DataType.Float32, I32 = DataType.Int32;

    // Two sequences: q lengths 10 and 20 (total 30), k lengths 250 and 256 (total 506, more than a pool of 3 blocks of
    // 128 holds: with paged K/V the prefix sums index no tensor), the longest 256.
    private const int TotalQ = 30, MaxQ = 20, MaxK = 256;

    [OneTimeSetUp]
    public void LoadLibrary() => NativeLib.Require();

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    /// <summary>The batch, with or without host copies of the prefix sums.</summary>
    private static VarlenBatch Batch(bool hostCopies = true) =>
        hostCopies
            ? VarlenBatch.FromDevice(T(CQ, I32, 3), T(CK, I32, 3), MaxQ, MaxK, [0, 10, 30], [0, 250, 506])
            : VarlenBatch.FromDevice(T(CQ, I32, 3), T(CK, I32, 3), MaxQ, MaxK);

    /// <summary>
    /// A paged call: q [30, 8, d], pools k [blocks, blockSize, hkv, d] and v [..., dv], out [30, 8, dv], lse [8, 30], the
    /// batch with a table [2, columns] (by default 3 blocks of 128 and 2 columns: capacity 256 = max_seqlen_k).
    /// </summary>
    private static AttentionArguments Paged(
        DataType dtype = F16, int d = 64, int dv = 0, int blockSize = 128, int blocks = 3, int columns = 2, int hkv = 2, bool hostCopies = true,
        DataType? outType = null)
    {
        dv = dv == 0 ? d : dv;
        return new(
            T(Q, dtype, TotalQ, 8, d), T(K, dtype, blocks, blockSize, hkv, d), T(V, dtype, blocks, blockSize, hkv, dv),
            T(O, outType ?? dtype, TotalQ, 8, dv), T(L, F32, 8, TotalQ), Batch(hostCopies).WithBlockTable(T(BT, I32, 2, columns)));
    }

    /// <summary><paramref name="args"/> with packed keys and values (k and v [506, hkv, d]) and no block table.</summary>
    private static AttentionArguments Packed(AttentionArguments args) =>
        args with
        {
            K = T(K, args.K.DataType, 506, args.K.Shape[2], args.K.Shape[3]),
            V = T(V, args.V.DataType, 506, args.V.Shape[2], args.V.Shape[3]),
            Batch = Batch(args.Batch!.HasHostCopies),
        };

    private static (FlashAttentionStatus Status, string Message, List<(string Function, object Params)> Calls) CheckForward(
        AttentionArguments args, AttentionOptions? options, int cc)
    {
        var calls = new List<(string, object)>();
        FlashAttentionStatus status;
        string message;
        using (NativeCallObserver.Observe((function, p) => calls.Add((function, p))))
        {
            status = FlashAttention.Check(args, out message, options, cc);
        }

        return (status, message, calls);
    }

    /// <summary>The params a managed check of <paramref name="args"/> sends (the batch without host copies, so no pinned pointer dangles).</summary>
    private static FaForwardParams ParamsOf(AttentionArguments args, AttentionOptions? options = null)
    {
        var (status, message, calls) = CheckForward(args, options, 0);
        Assert.That(calls, Has.Count.EqualTo(1), $"the managed check reached the library: {status} {message}");
        return (FaForwardParams)calls[0].Params;
    }

    private static SupportQuery QueryFor(AttentionArguments args, AttentionOptions options, int cc) =>
        SupportQuery.For(AttentionPass.Forward, args.Q.DataType, (int)args.Q.Shape[^1], options, varlen: true, cc) with
        {
            HeadDimV = (int)args.V.Shape[^1],
            Sinks = args.Sinks is not null,
            Alibi = args.AlibiSlopes is not null,
            Dropout = args.DropoutP > 0,
            PagedKv = args.Batch?.IsPaged ?? false,
        };

    // ---- served ---------------------------------------------------------------------------------------------------

    /// <summary>The paged calls of one dtype, one per forward option (path unset).</summary>
    private static (string Name, AttentionArguments Args, AttentionOptions Options)[] CallsWithEachOption(DataType dtype)
    {
        AttentionArguments ok = Paged(dtype);
        VarlenBatch transposed = Batch().WithBlockTable(DeviceTensor.FromPointer((IntPtr)BT, I32, [2, 2], [1, 2]));
        return
        [
            ("default", ok, new AttentionOptions()),
            ("causal bottom-right", ok, new AttentionOptions { Causal = true }),
            ("causal top-left", ok, new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft }),
            ("window + softcap", ok, new AttentionOptions { WindowLeft = 100, WindowRight = 8, Softcap = 30f }),
            ("alibi [batch, heads_q]", ok with { AlibiSlopes = T(AL, F32, 2, 8) }, new AttentionOptions { Causal = true }),
            ("sinks", ok with { Sinks = T(SL, F32, 8) }, new AttentionOptions()),
            ("no log-sum-exp", ok with { LogSumExp = null }, new AttentionOptions()),
            ("MQA", Paged(dtype, hkv: 1), new AttentionOptions { Causal = true }),
            ("no host copies", Paged(dtype, hostCopies: false), new AttentionOptions()),
            ("blocks of 256", Paged(dtype, blockSize: 256, blocks: 2, columns: 1), new AttentionOptions()),
            ("blocks of 384, spare columns", Paged(dtype, blockSize: 384, blocks: 2, columns: 3), new AttentionOptions()),
            ("table with strides [1, 2]", ok with { Batch = transposed }, new AttentionOptions { Causal = true }),
        ];
    }

    public static IEnumerable<TestCaseData> ServedCalls()
    {
        foreach (DataType dtype in new[] { F16, BF16 })
        {
            foreach (KernelPath path in new[] { KernelPath.Auto, KernelPath.Sm80 })
            {
                foreach (var (name, args, options) in CallsWithEachOption(dtype))
                {
                    yield return new TestCaseData(args, options with { KernelPath = path }).SetName($"Paged check: {dtype} {path} {name}");
                }
            }
        }
    }

    /// <summary>
    /// A paged call reaches fa_forward_check with the table, the pools and the batch's fields in the params and is served
    /// at compute capability 0, 8.0 and 9.0 exactly where the same call over packed keys is (Success, where the build has
    /// head dim 64); the capability query with PagedKv says the same.
    /// </summary>
    [TestCaseSource(nameof(ServedCalls))]
    public void PagedCallsPassWithEveryForwardOption(AttentionArguments args, AttentionOptions options)
    {
        foreach (int cc in new[] { 0, 80, 90 })
        {
            var (packedStatus, packedMessage, _) = CheckForward(Packed(args), options, cc);
            if (packedStatus == FlashAttentionStatus.Unsupported && packedMessage.Contains("head_dim", StringComparison.Ordinal))
            {
                Assert.Ignore($"this build does not serve head dim 64: {packedMessage}");
            }

            Assert.That(packedStatus, Is.EqualTo(FlashAttentionStatus.Success), $"cc {cc}: the packed call: {packedMessage}");
            var (status, message, calls) = CheckForward(args, options, cc);
            SupportResult query = FlashAttention.QuerySupport(QueryFor(args, options, cc));
            using (Assert.EnterMultipleScope())
            {
                Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), $"cc {cc}: {message}");
                Assert.That(query.IsSupported, Is.True, $"cc {cc}: the query agrees: {query.Reason}");
                Assert.That(calls.Select(c => c.Function), Is.EqualTo(new[] { "fa_forward_check" }), $"cc {cc}");
                if (calls.Count == 1)
                {
                    var p = (FaForwardParams)calls[0].Params;
                    DeviceTensor table = args.Batch!.BlockTable!;
                    Assert.That(p.block_table.data, Is.EqualTo((nint)BT), "block_table.data");
                    Assert.That(p.block_table.dtype, Is.EqualTo((int)FaDtype.Int32), "block_table.dtype");
                    Assert.That(p.block_table.rank, Is.EqualTo(2), "block_table.rank");
                    Assert.That(new[] { p.block_table.shape[0], p.block_table.shape[1] }, Is.EqualTo(table.Shape.ToArray()), "block_table.shape");
                    Assert.That(new[] { p.block_table.strides[0], p.block_table.strides[1] }, Is.EqualTo(table.Strides.ToArray()), "block_table.strides");
                    Assert.That(p.k.rank, Is.EqualTo(4), "k is a pool");
                    Assert.That(p.k.shape[1], Is.EqualTo(args.K.Shape[1]), "k.shape[1] is the block size");
                    Assert.That(p.v.rank, Is.EqualTo(4), "v is a pool");
                    Assert.That((nint)p.cu_seqlens_q, Is.EqualTo((nint)CQ), "cu_seqlens_q");
                    Assert.That((nint)p.cu_seqlens_k, Is.EqualTo((nint)CK), "cu_seqlens_k");
                    Assert.That(p.varlen_batch, Is.EqualTo(2), "varlen_batch");
                    Assert.That(p.max_seqlen_k, Is.EqualTo(MaxK), "max_seqlen_k");
                    Assert.That((nint)p.cu_seqlens_k_host != 0, Is.EqualTo(args.Batch.HasHostCopies), "cu_seqlens_k_host");
                }
            }
        }
    }

    /// <summary>
    /// <see cref="KernelPath.Sm90"/>: a paged call is served exactly where the same packed call is (compute capability
    /// 9.0 in a build with sm_90a code; elsewhere UNSUPPORTED naming FA_PATH_SM90); the query agrees.
    /// </summary>
    [TestCase(DataType.Float16)]
    [TestCase(DataType.BFloat16)]
    public void Sm90PathServesPagedWhereItServesPacked(DataType dtype)
    {
        AttentionArguments args = Paged(dtype);
        var options = new AttentionOptions { Causal = true, KernelPath = KernelPath.Sm90 };
        foreach (int cc in new[] { 0, 80, 90 })
        {
            var (packedStatus, packedMessage, _) = CheckForward(Packed(args), options, cc);
            var (status, message, _) = CheckForward(args, options, cc);
            SupportResult query = FlashAttention.QuerySupport(QueryFor(args, options, cc));
            using (Assert.EnterMultipleScope())
            {
                Assert.That(status, Is.EqualTo(packedStatus), $"cc {cc}: paged {message}; packed {packedMessage}");
                Assert.That(query.IsSupported, Is.EqualTo(status == FlashAttentionStatus.Success), $"cc {cc}: {query.Reason}");
                if (cc == 80 || (cc == 90 && !ForwardPaths.BuildHasSm90a))
                {
                    Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"cc {cc}: {message}");
                    Assert.That(message, Does.Contain("FA_PATH_SM90"), $"cc {cc}");
                }
            }
        }
    }

    // ---- refused --------------------------------------------------------------------------------------------------

    /// <summary>
    /// The managed API cannot put a block table on a fixed-length call (the table belongs to a <see cref="VarlenBatch"/>);
    /// the library refuses one in the params without cu_seqlens as INVALID_ARGUMENT, saying paged K/V needs a
    /// variable-length batch.
    /// </summary>
    [Test]
    public void LibraryRefusesABlockTableWithoutAVariableLengthBatch()
    {
        FaForwardParams p = Valid(64, FaDtype.Float16);
        var (status, message) = ForwardParamsFactory.Check(p);
        Assert.That(status, Is.EqualTo(FaStatus.Success), $"the fixed-length call alone passes: {message}");
        p.block_table = ParamsOf(Paged(hostCopies: false)).block_table;
        (status, message) = ForwardParamsFactory.Check(p);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(status, Is.EqualTo(FaStatus.InvalidArgument), message);
            Assert.That(message, Does.Contain("block_table.data is set but cu_seqlens_q and cu_seqlens_k are NULL"));
        }
    }

    public static IEnumerable<TestCaseData> WrongTables()
    {
        yield return new TestCaseData(T(BT, I32, 4), "Int32 matrix").SetArgDisplayNames("rank 1");
        yield return new TestCaseData(T(BT, I32, 2, 2, 1), "Int32 matrix").SetArgDisplayNames("rank 3");
        yield return new TestCaseData(T(BT, F32, 2, 2), "Int32 matrix").SetArgDisplayNames("Float32");
        yield return new TestCaseData(T(BT, DataType.Float16, 2, 2), "Int32 matrix").SetArgDisplayNames("Float16");
        yield return new TestCaseData(T(BT, I32, 3, 2), "has 3 rows but the batch has 2 sequences").SetArgDisplayNames("3 rows for 2 sequences");
        yield return new TestCaseData(T(BT, I32, 1, 2), "has 1 rows but the batch has 2 sequences").SetArgDisplayNames("1 row for 2 sequences");
        yield return new TestCaseData(T(BT, I32, 2, 0), "needs 1 or more columns").SetArgDisplayNames("0 columns");
    }

    /// <summary>A table of the wrong rank, dtype or row count is refused by <see cref="VarlenBatch.WithBlockTable"/>, naming blockTable.</summary>
    [TestCaseSource(nameof(WrongTables))]
    public void WithBlockTableRefusesAWrongTable(DeviceTensor table, string fragment)
    {
        using VarlenBatch batch = Batch();
        var ex = Assert.Throws<ArgumentException>(() => batch.WithBlockTable(table));
        using (Assert.EnterMultipleScope())
        {
            Assert.That(ex!.ParamName, Is.EqualTo("blockTable"));
            Assert.That(ex.Message, Does.Contain(fragment));
            Assert.That(ex.Message, Does.Contain("block_table"));
        }
    }

    public static IEnumerable<TestCaseData> LibraryRefusals()
    {
        TestCaseData Case(string name, Action<FaTensorEditor> edit, FaStatus status, string fragment) =>
            new TestCaseData(edit, status, fragment).SetArgDisplayNames(name);

        yield return Case("block_table fp16", e => e.Table.dtype = (int)FaDtype.Float16, FaStatus.InvalidArgument, "block_table");
        yield return Case("block_table Float32", e => e.Table.dtype = (int)FaDtype.Float32, FaStatus.InvalidArgument, "block_table");
        yield return Case("block_table rank 1", e => e.Table.rank = 1, FaStatus.InvalidArgument, "block_table");
        yield return Case("block_table 3 rows", e => e.SetTableRows(3), FaStatus.InvalidArgument, "block_table.shape");
        yield return Case("max_seqlen_k past the capacity", e => e.MaxSeqLenK = 257, FaStatus.InvalidArgument,
            "max_seqlen_k is 257 but block_table holds 2 blocks of 128 keys per sequence");
        yield return Case("blocks of 64", e => e.BlockSize(64), FaStatus.Unsupported, "k.shape[1] (block_size) is 64");
        yield return Case("blocks of 192", e => e.BlockSize(192), FaStatus.Unsupported, "multiples of 128");
        yield return Case("v of other blocks", e => e.SetValueBlocks(2), FaStatus.InvalidArgument, "k and v must have the same shape");
        yield return Case("k rank 3", e => e.K.rank = 3, FaStatus.InvalidArgument, "num_blocks, block_size");
    }

    /// <summary>The library's own checks of a paged call (the params a managed check sends, one field broken), naming the problem.</summary>
    [TestCaseSource(nameof(LibraryRefusals))]
    public void LibraryRefusesABrokenPagedCall(Action<FaTensorEditor> edit, FaStatus expected, string fragment)
    {
        FaForwardParams p = ParamsOf(Paged(hostCopies: false));
        var (status, message) = ForwardParamsFactory.Check(p);
        Assert.That(status, Is.EqualTo(FaStatus.Success), $"the params as sent pass: {message}");
        var editor = new FaTensorEditor(p);
        edit(editor);
        (status, message) = ForwardParamsFactory.Check(editor.Params);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(status, Is.EqualTo(expected), message);
            Assert.That(message, Does.Contain(fragment));
        }
    }

    /// <summary>
    /// The managed side refuses what it can see before the library (INVALID_ARGUMENT from the check, no native call):
    /// packed k or v with a paged batch, pools of different blocks or head dims, max_seqlen_k past the table's capacity.
    /// </summary>
    [Test]
    public void ManagedCheckRefusesWhatItCanSee()
    {
        AttentionArguments ok = Paged();
        (string Name, AttentionArguments Args, string Fragment)[] cases =
        [
            ("packed k", ok with { K = T(K, F16, 506, 2, 64) }, "k must have rank 4 [num_blocks, block_size, heads_kv, head_dim] with a block table"),
            ("packed v", ok with { V = T(V, F16, 506, 2, 64) }, "v must have rank 4 [num_blocks, block_size, heads_kv, head_dim] with a block table"),
            ("v of other blocks", ok with { V = T(V, F16, 2, 128, 2, 64) }, "v must have k's shape [3, 128, 2, head_dim_v]"),
            ("v of another block size", ok with { V = T(V, F16, 3, 256, 2, 64) }, "v must have k's shape"),
            ("k head dim 32", ok with { K = T(K, F16, 3, 128, 2, 32), V = T(V, F16, 3, 128, 2, 32) }, "k must be a pool [num_blocks, block_size, heads_kv, head_dim=64]"),
            ("k heads 3", ok with { K = T(K, F16, 3, 128, 3, 64), V = T(V, F16, 3, 128, 3, 64) }, "does not divide q's 8 heads"),
            ("max_seqlen_k past one column of 128", Paged(columns: 1), "max_seqlen_k is 256 but its block_table holds 1 blocks of 128 keys per sequence"),
            ("max_seqlen_k past two columns of 64", Paged(blockSize: 64, blocks: 8, columns: 2), "(block_table.shape[1] x k.shape[1] = 128)"),
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
    /// Block sizes that are not multiples of 128 are UNSUPPORTED by the library, saying so; multiples of 128 pass (where
    /// the build serves head dim 64). The positional CheckVarlen takes the paged batch the same way.
    /// </summary>
    [TestCase(64, FlashAttentionStatus.Unsupported)]
    [TestCase(16, FlashAttentionStatus.Unsupported)]
    [TestCase(192, FlashAttentionStatus.Unsupported)]
    [TestCase(128, FlashAttentionStatus.Success)]
    [TestCase(512, FlashAttentionStatus.Success)]
    public void BlockSizeMustBeAMultipleOf128(int blockSize, FlashAttentionStatus expected)
    {
        int columns = (MaxK + blockSize - 1) / blockSize;
        AttentionArguments args = Paged(blockSize: blockSize, blocks: 4, columns: columns);
        var (status, message, calls) = CheckForward(args, null, 0);
        FlashAttentionStatus positional = FlashAttention.CheckVarlen(args.Q, args.K, args.V, args.Output, args.Batch!, out string positionalMessage, args.LogSumExp);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(calls, Has.Count.EqualTo(1), "the library decides");
            Assert.That(status, Is.EqualTo(expected), message);
            Assert.That(positional, Is.EqualTo(status), positionalMessage);
            Assert.That(positionalMessage, Is.EqualTo(message));
            if (expected == FlashAttentionStatus.Unsupported)
            {
                Assert.That(message, Does.Contain($"k.shape[1] (block_size) is {blockSize}").And.Contain("multiples of 128"));
            }
        }
    }

    /// <summary>fp8 with a block table is UNSUPPORTED on every path and compute capability, naming block_table and fp8.</summary>
    [TestCase(KernelPath.Auto, 90)]
    [TestCase(KernelPath.Sm90, 90)]
    [TestCase(KernelPath.Auto, 0)]
    [TestCase(KernelPath.Sm80, 80)]
    public void Float8WithABlockTableIsUnsupported(KernelPath path, int cc)
    {
        AttentionArguments args = Paged(DataType.Float8E4M3, outType: BF16);
        var (status, message, calls) = CheckForward(args, new AttentionOptions { KernelPath = path }, cc);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(calls, Has.Count.EqualTo(1), "the library decides");
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), message);
            Assert.That(message, Does.Contain("block_table is set with fp8"));
        }
    }

    /// <summary>
    /// Dropout with a block table is UNSUPPORTED on every path and compute capability (paged K/V serves a KV cache at
    /// inference), naming dropout (on Auto and Sm80: block_table with dropout_p; Sm90 refuses it too, whether or not the build has sm90 dropout), where
    /// the same call over packed keys is served on Auto and Sm80; the query with PagedKv and Dropout agrees.
    /// </summary>
    [TestCase(KernelPath.Auto)]
    [TestCase(KernelPath.Sm80)]
    [TestCase(KernelPath.Sm90)]
    public void DropoutWithABlockTableIsUnsupported(KernelPath path)
    {
        AttentionArguments args = Paged(BF16) with { DropoutP = 0.1f, DropoutSeed = 5, DropoutMask = T(DM, DataType.UInt8, 2, 8, MaxQ, MaxK) };
        var options = new AttentionOptions { Causal = true, KernelPath = path };
        foreach (int cc in new[] { 0, 80, 90 })
        {
            var (packedStatus, packedMessage, _) = CheckForward(Packed(args), options, cc);
            var (status, message, calls) = CheckForward(args, options, cc);
            SupportResult query = FlashAttention.QuerySupport(QueryFor(args, options, cc));
            using (Assert.EnterMultipleScope())
            {
                if (path != KernelPath.Sm90)
                {
                    Assert.That(packedStatus, Is.EqualTo(FlashAttentionStatus.Success), $"cc {cc}: the packed call with dropout: {packedMessage}");
                    Assert.That(message, Does.Contain("block_table is set with dropout_p 0.1"), $"cc {cc}");
                    Assert.That(query.Reason, Does.Contain("paged_kv is 1 with query->dropout 1"), $"cc {cc}");
                }

                Assert.That(calls, Has.Count.EqualTo(1), $"cc {cc}: the library decides");
                Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"cc {cc}: {message}");
                Assert.That(message, Does.Contain("dropout"), $"cc {cc}");
                Assert.That(query.IsSupported, Is.False, $"cc {cc}: the query agrees");
            }
        }
    }

    /// <summary>
    /// The backward has no paged K/V: CheckBackwardVarlen (and CheckBackward) of a paged batch are INVALID_ARGUMENT from
    /// the managed side, without a native call, saying so, whatever the tensors (fp8 ones included); the same arguments
    /// with packed tensors and the batch without its table reach the library.
    /// </summary>
    [TestCase(DataType.Float16)]
    [TestCase(DataType.BFloat16)]
    [TestCase(DataType.Float8E4M3)]
    public void BackwardRefusesAPagedBatch(DataType dtype)
    {
        AttentionArguments f = Paged(dtype, outType: dtype == DataType.Float8E4M3 ? BF16 : null);
        DeviceTensor Like(long address, DeviceTensor t) => DeviceTensor.FromPointer((IntPtr)address, t.DataType, t.Shape.ToArray());
        var calls = new List<string>();
        FlashAttentionStatus status, recordStatus;
        string message, recordMessage;
        using (NativeCallObserver.Observe((function, _) => calls.Add(function)))
        {
            status = FlashAttention.CheckBackwardVarlen(
                f.Q, f.K, f.V, f.Output, Like(DO, f.Output), f.LogSumExp!, Like(DQ, f.Q), Like(DK, f.K), Like(DV, f.V), f.Batch!, out message);
            recordStatus = FlashAttention.CheckBackward(
                new BackwardArguments(f.Q, f.K, f.V, f.Output, Like(DO, f.Output), f.LogSumExp!, Like(DQ, f.Q), Like(DK, f.K), Like(DV, f.V), f.Batch),
                out recordMessage);
        }

        using (Assert.EnterMultipleScope())
        {
            Assert.That(calls, Is.Empty, "refused before the library");
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.InvalidArgument), message);
            Assert.That(message, Does.Contain("the backward pass has no paged K/V").And.Contain("block table"));
            Assert.That(recordStatus, Is.EqualTo(FlashAttentionStatus.InvalidArgument), recordMessage);
            Assert.That(recordMessage, Is.EqualTo(message));
        }

        AttentionArguments p = Packed(f);
        using (NativeCallObserver.Observe((function, _) => calls.Add(function)))
        {
            FlashAttention.CheckBackwardVarlen(
                p.Q, p.K, p.V, p.Output, Like(DO, p.Output), p.LogSumExp!, Like(DQ, p.Q), Like(DK, p.K), Like(DV, p.V), p.Batch!, out _);
        }

        Assert.That(calls, Is.EqualTo(new[] { "fa_backward_check" }), "the packed backward reaches the library");
    }

    // ---- the capability query -------------------------------------------------------------------------------------

    /// <summary>
    /// <see cref="SupportQuery.PagedKv"/> reaches the library's query: the varlen forward is served in Float16 and
    /// BFloat16 on Auto and Sm80 (as without it), the backward is refused saying it has no paged K/V, fp8 is refused
    /// naming paged K/V, decode is served; Sm90 answers as without paging.
    /// </summary>
    [TestCase(DataType.Float16)]
    [TestCase(DataType.BFloat16)]
    public void QueryAnswersPagedKv(DataType dtype)
    {
        using (Assert.EnterMultipleScope())
        {
            foreach (KernelPath path in new[] { KernelPath.Auto, KernelPath.Sm80, KernelPath.Sm90 })
            {
                foreach (int cc in new[] { 0, 80, 90 })
                {
                    var plain = new SupportQuery(AttentionPass.Forward, dtype, 64, Causal: true, Varlen: true, ComputeCapability: cc, KernelPath: path);
                    SupportResult without = FlashAttention.QuerySupport(plain);
                    SupportResult with = FlashAttention.QuerySupport(plain with { PagedKv = true });
                    Assert.That(with, Is.EqualTo(without), $"forward {path} cc {cc}: paged answers as packed");
                    if (path != KernelPath.Sm90)
                    {
                        Assert.That(with.IsSupported, Is.True, $"forward {path} cc {cc}: {with.Reason}");
                    }
                }
            }

            SupportResult backward = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Backward, dtype, 64, Varlen: true) { PagedKv = true });
            Assert.That(backward.IsSupported, Is.False, "backward");
            Assert.That(backward.Reason, Does.Contain("the backward has no paged K/V"));
            SupportResult backwardPacked = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Backward, dtype, 64, Varlen: true));
            Assert.That(backwardPacked.IsSupported, Is.True, $"the packed backward: {backwardPacked.Reason}");

            SupportResult fp8 = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, DataType.Float8E4M3, 64, Varlen: true, ComputeCapability: 90) { PagedKv = true });
            Assert.That(fp8.IsSupported, Is.False, "fp8");
            Assert.That(fp8.Reason, Does.Contain("paged_kv is 1 with FA_DTYPE_FLOAT8_E4M3"));

            SupportResult decode = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Decode, dtype, 64, Causal: true) { PagedKv = true });
            Assert.That(decode.IsSupported, Is.True, $"decode: {decode.Reason}");
        }
    }

    /// <summary>
    /// A forward query with PagedKv but not Varlen is malformed: the managed side throws ArgumentException; the library's
    /// own query says INVALID_ARGUMENT (an older-sized query gets paged_kv 0).
    /// </summary>
    [Test]
    public void ForwardQueryWithPagedKvNeedsVarlen()
    {
        var ex = Assert.Throws<ArgumentException>(() => FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Forward, F16, 64) { PagedKv = true }));
        Assert.That(ex!.Message, Does.Contain("PagedKv is true with Varlen false"));

        FaSupportQuery q = default;
        q.struct_size = (uint)sizeof(FaSupportQuery);
        q.pass = (int)AttentionPass.Forward;
        q.dtype = (int)FaDtype.Float16;
        q.head_dim = 64;
        q.paged_kv = 1;
        FaStatus status = NativeMethods.fa_query_support(&q);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(status, Is.EqualTo(FaStatus.InvalidArgument), NativeLib.LastError());
            Assert.That(NativeLib.LastError(), Does.Contain("query->paged_kv is 1 with query->varlen 0"));
        }

        // A 0.10-sized query ends before paged_kv: the library reads 0 and serves the forward.
        q.struct_size = (uint)System.Runtime.InteropServices.Marshal.OffsetOf<FaSupportQuery>(nameof(FaSupportQuery.paged_kv)).ToInt64();
        Assert.That(NativeMethods.fa_query_support(&q), Is.EqualTo(FaStatus.Success), NativeLib.LastError());
    }

    /// <summary>
    /// 0.11 appends block_table to fa_forward_params_t (one tensor, right after the dropout block) and paged_kv to
    /// fa_support_query_t (one int32, after head_dim_v): a 0.10 caller's struct ends before them, so a table there (garbage
    /// to it) is never read and the fixed-length call passes; the 0.11 size reads it and refuses it without cu_seqlens.
    /// </summary>
    [Test]
    public void Version010StructsHaveNoBlockTable()
    {
        uint forward010 = (uint)System.Runtime.InteropServices.Marshal.OffsetOf<FaForwardParams>(nameof(FaForwardParams.block_table)).ToInt64();
        uint query010 = (uint)System.Runtime.InteropServices.Marshal.OffsetOf<FaSupportQuery>(nameof(FaSupportQuery.paged_kv)).ToInt64();
        using (Assert.EnterMultipleScope())
        {
            Assert.That(forward010, Is.EqualTo(1016), "0.10's forward");
            Assert.That(sizeof(FaForwardParams), Is.EqualTo(forward010 + sizeof(FaTensor)), "0.11 appends one tensor");
            Assert.That(query010, Is.EqualTo(56), "0.10's query");
            Assert.That(sizeof(FaSupportQuery), Is.EqualTo(query010 + (2 * sizeof(int))), "0.11 and 0.13 append one int32 each (paged_kv, kv_cache_dtype)");
            Assert.That(NativeMethods.FA_VERSION_CODE, Is.GreaterThanOrEqualTo(1100));
        }

        FaForwardParams p = Valid(64, FaDtype.Float16);
        p.block_table = ParamsOf(Paged(hostCopies: false)).block_table; // past a 0.10 struct: not read
        p.struct_size = forward010;
        Assert.That(ForwardParamsFactory.Check(p).Status, Is.EqualTo(FaStatus.Success), NativeLib.LastError());
        p.struct_size = (uint)sizeof(FaForwardParams);
        var (status, message) = ForwardParamsFactory.Check(p);
        Assert.That(status, Is.EqualTo(FaStatus.InvalidArgument), message);
        Assert.That(message, Does.Contain("block_table"));
    }

    // ---- the batch ------------------------------------------------------------------------------------------------

    /// <summary>
    /// <see cref="VarlenBatch.WithBlockTable"/> shares the boundaries (prefix sums, host copies, maxima), owns nothing,
    /// is disposed with the batch it came from, and replaces the table of a paged batch.
    /// </summary>
    [Test]
    public void WithBlockTableSharesTheBoundaries()
    {
        VarlenBatch batch = Batch();
        DeviceTensor table = T(BT, I32, 2, 2);
        VarlenBatch paged = batch.WithBlockTable(table);
        VarlenBatch other = paged.WithBlockTable(T(BT + 64, I32, 2, 5));
        using (Assert.EnterMultipleScope())
        {
            Assert.That(batch.IsPaged, Is.False);
            Assert.That(batch.BlockTable, Is.Null);
            Assert.That(paged.IsPaged, Is.True);
            Assert.That(paged.BlockTable, Is.SameAs(table));
            Assert.That(paged.CuSeqlensQ, Is.SameAs(batch.CuSeqlensQ));
            Assert.That(paged.CuSeqlensK, Is.SameAs(batch.CuSeqlensK));
            Assert.That(paged.HostCuSeqlensK.ToArray(), Is.EqualTo(new[] { 0, 250, 506 }));
            Assert.That((paged.BatchSize, paged.MaxSeqLenQ, paged.MaxSeqLenK, paged.TotalQ, paged.TotalK), Is.EqualTo((2, MaxQ, MaxK, (int?)30, (int?)506)));
            Assert.That(paged.ToString(), Does.Contain("paged K/V: block_table [2, 2]"));
            Assert.That(other.BlockTable!.Shape.ToArray(), Is.EqualTo(new long[] { 2, 5 }), "the new table replaces the old");
            Assert.That(batch.IsPaged, Is.False, "the source batch is unchanged");
        }

        paged.Dispose();
        Assert.That(batch.IsDisposed, Is.False, "disposing the paged batch leaves the source alone");
        batch.Dispose();
        using (Assert.EnterMultipleScope())
        {
            Assert.That(other.IsDisposed, Is.True, "a paged batch is disposed with its source");
            Assert.That(() => FlashAttention.Check(Paged() with { Batch = other }, out _), Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => batch.WithBlockTable(table), Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => batch.WithBlockTable(null!), Throws.ArgumentNullException);
        }
    }

    /// <summary>Edits one part of a paged call's params for <see cref="LibraryRefusesABrokenPagedCall"/>.</summary>
    public sealed unsafe class FaTensorEditor(FaForwardParams p)
    {
        private FaForwardParams _p = p;

        public FaForwardParams Params => _p;

        public ref FaTensor Table => ref _p.block_table;

        public ref FaTensor K => ref _p.k;

        public ref FaTensor V => ref _p.v;

        public int MaxSeqLenK
        {
            get => _p.max_seqlen_k;
            set => _p.max_seqlen_k = value;
        }

        public void SetTableRows(long rows) => _p.block_table.shape[0] = rows;

        public void SetValueBlocks(long blocks) => _p.v.shape[0] = blocks;

        /// <summary>
        /// Both pools' blocks of <paramref name="rows"/> rows (their strides kept dense), max_seqlen_k cut to the table's
        /// capacity so that only the block size is wrong.
        /// </summary>
        public void BlockSize(long rows)
        {
            _p.k.shape[1] = rows;
            _p.v.shape[1] = rows;
            _p.k.strides[0] = rows * _p.k.strides[1];
            _p.v.strides[0] = rows * _p.v.strides[1];
            _p.max_seqlen_k = (int)Math.Min(_p.max_seqlen_k, rows * _p.block_table.shape[1]); // within the capacity
        }
    }
}
