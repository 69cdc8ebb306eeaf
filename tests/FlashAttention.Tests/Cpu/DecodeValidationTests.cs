using System.Runtime.InteropServices;
using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// Bad decode arguments, without a GPU: straight through the real library's <c>fa_decode_check</c> (fake, aligned,
/// never dereferenced pointers), and through <see cref="FlashAttention.CheckDecode(in DecodeArguments, out string, AttentionOptions, int)"/> over a
/// <see cref="KvCache.Wrap"/> of raw-pointer views, where the managed side catches what it can and passes the rest
/// through. Each case breaks one thing and asserts the status and that the message names the argument.
/// </summary>
/// <remarks>
/// The native cases need a library that exports the decode functions (C ABI 0.3); with one that does not, they
/// report themselves as ignored with that reason instead of failing on EntryPointNotFoundException.
/// </remarks>
[TestFixture]
[Category("Cpu")]
public sealed unsafe class DecodeValidationTests
{
    private const nint Q = 0x1000_0000, KC = 0x2000_0000, VC = 0x3000_0000, KN = 0x4000_0000, VN = 0x5000_0000;
    private const nint O = 0x6000_0000, L = 0x7000_0000, SL = 0x7100_0000, BT = 0x7200_0000, WS = 0x7300_0000;

    // B=2, Snew=1, Hq=8, Hkv=2, D=64; paged cache of 10 blocks of 16, 5 pages per sequence (capacity 80).
    private const int B = 2, Sn = 1, Hq = 8, Hkv = 2, D = 64, Blocks = 10, BlockSize = 16, Pages = 5;

    // Host lengths handed to fa_decode_check (pinned for the whole run: the struct keeps a raw pointer).
    private static readonly int[] s_hostLengths = GC.AllocateArray<int>(B, pinned: true);
    private static readonly int[] s_fullLengths = GC.AllocateArray<int>(B, pinned: true);

    // Host copies of cache_batch_idx / cache_leftpad (C ABI 0.7): [pool row 4, pool row 0], and pads that fit the host
    // lengths above; then ones that do not.
    private static readonly int[] s_rows = GC.AllocateArray<int>(B, pinned: true);
    private static readonly int[] s_rowsOutside = GC.AllocateArray<int>(B, pinned: true);
    private static readonly int[] s_rowsNegative = GC.AllocateArray<int>(B, pinned: true);
    private static readonly int[] s_pads = GC.AllocateArray<int>(B, pinned: true);
    private static readonly int[] s_padsNegative = GC.AllocateArray<int>(B, pinned: true);
    private static readonly int[] s_padsPastLength = GC.AllocateArray<int>(B, pinned: true);
    private static readonly int[] s_padsPastCapacity = GC.AllocateArray<int>(B, pinned: true);
    private const nint BI = 0x7400_0000, LP = 0x7500_0000;

    // Rotary tables (C ABI 0.8): [capacity 80, rotary_dim / 2].
    private const nint RC = 0x7600_0000, RS = 0x7700_0000;

    public delegate void Breaker(ref FaDecodeParams p);

    private static bool s_decodeExported;

    private const FaStatus Invalid = FaStatus.InvalidArgument;

    [OneTimeSetUp]
    public void LoadLibrary()
    {
        NativeLib.Require();
        s_hostLengths[0] = 3;
        s_hostLengths[1] = 17;
        s_fullLengths[0] = 3;
        s_fullLengths[1] = Pages * BlockSize; // full: nothing more fits
        (s_rows[0], s_rows[1]) = (4, 0);
        (s_rowsOutside[0], s_rowsOutside[1]) = (0, 5);     // a pool of 5 rows: 0 .. 4
        (s_rowsNegative[0], s_rowsNegative[1]) = (-1, 1);
        (s_pads[0], s_pads[1]) = (3 + Sn, 0);              // a pad at the very end of sequence 0 (3 cached + 1 new)
        (s_padsNegative[0], s_padsNegative[1]) = (0, -2);
        (s_padsPastLength[0], s_padsPastLength[1]) = (0, 17 + Sn + 1);
        (s_padsPastCapacity[0], s_padsPastCapacity[1]) = (0, (Pages * BlockSize) + 1);
        nint handle = NativeLibrary.Load(NativeLibraryLoader.LoadedPath!);
        s_decodeExported = NativeLibrary.TryGetExport(handle, "fa_decode_check", out _) &&
            NativeLibrary.TryGetExport(handle, "fa_decode_params_init", out _);
    }

    private static void RequireDecodeExports()
    {
        if (!s_decodeExported)
        {
            Assert.Ignore($"{NativeLibraryLoader.LoadedPath} does not export fa_decode_check / fa_decode_params_init yet (the decode kernels are not built into it)");
        }
    }

    // ---- raw fa_decode_check ------------------------------------------------------------------------------

    private static FaTensor Tensor(nint data, FaDtype dtype, params long[] shape)
    {
        FaTensor t = default;
        t.data = data;
        t.dtype = (int)dtype;
        t.rank = shape.Length;
        long stride = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            t.shape[i] = shape[i];
            t.strides[i] = stride;
            stride *= Math.Max(1, shape[i]);
        }

        return t;
    }

    /// <summary>Valid paged decode parameters with an append and an lse; fa_decode_check accepts them.</summary>
    private static FaDecodeParams Valid(FaDtype dtype = FaDtype.Float16)
    {
        FaDecodeParams p;
        FaStatus status = NativeMethods.fa_decode_params_init(&p, (nuint)sizeof(FaDecodeParams));
        Assert.That(status, Is.EqualTo(FaStatus.Success), NativeLib.LastError());
        p.q = Tensor(Q, dtype, B, Sn, Hq, D);
        p.k_cache = Tensor(KC, dtype, Blocks, BlockSize, Hkv, D);
        p.v_cache = Tensor(VC, dtype, Blocks, BlockSize, Hkv, D);
        p.k_new = Tensor(KN, dtype, B, Sn, Hkv, D);
        p.v_new = Tensor(VN, dtype, B, Sn, Hkv, D);
        p.@out = Tensor(O, dtype, B, Sn, Hq, D);
        p.lse = Tensor(L, FaDtype.Float32, B, Hq, Sn);
        p.cache_seqlens = Tensor(SL, FaDtype.Int32, B);
        p.block_table = Tensor(BT, FaDtype.Int32, B, Pages);
        p.cache_seqlens_host = (int*)Marshal.UnsafeAddrOfPinnedArrayElement(s_hostLengths, 0);
        return p;
    }

    private static (FaStatus Status, string Message) Check(FaDecodeParams p, int cc = 0)
    {
        FaStatus status = NativeMethods.fa_decode_check(&p, cc);
        return (status, NativeLib.LastError());
    }

    private static TestCaseData Case(string name, Breaker breaker, params string[] fragments) =>
        new TestCaseData(breaker, Invalid, fragments).SetName($"fa_decode_check rejects: {name}");

    private static TestCaseData CaseWith(string name, Breaker breaker, FaStatus status, params string[] fragments) =>
        new TestCaseData(breaker, status, fragments).SetName($"fa_decode_check rejects: {name}");

    private static void Contiguous(ref FaDecodeParams p, long batch, long capacity)
    {
        p.block_table = default;
        p.k_cache = Tensor(KC, FaDtype.Float16, batch, capacity, Hkv, D);
        p.v_cache = Tensor(VC, FaDtype.Float16, batch, capacity, Hkv, D);
    }

    private static int* Pin(int[] pinned) => (int*)Marshal.UnsafeAddrOfPinnedArrayElement(pinned, 0);

    // A pool of 5 block-table rows picked by cache_batch_idx (with the given host copy).
    private static void Pool(ref FaDecodeParams p, int[] rows)
    {
        p.block_table = Tensor(BT, FaDtype.Int32, 5, Pages);
        p.cache_batch_idx = Tensor(BI, FaDtype.Int32, B);
        p.cache_batch_idx_host = Pin(rows);
    }

    private static void Pads(ref FaDecodeParams p, int[] pads)
    {
        p.cache_leftpad = Tensor(LP, FaDtype.Int32, B);
        p.cache_leftpad_host = Pin(pads);
    }

    private static void PagedBlockSize(ref FaDecodeParams p, long blockSize)
    {
        p.k_cache = Tensor(KC, FaDtype.Float16, Blocks, blockSize, Hkv, D);
        p.v_cache = Tensor(VC, FaDtype.Float16, Blocks, blockSize, Hkv, D);
    }

    public static IEnumerable<TestCaseData> NativeBadInputs() => BuildNativeBadInputs();

    private static List<TestCaseData> BuildNativeBadInputs()
    {
        var cases = new List<TestCaseData>();
        void Y(TestCaseData c) => cases.Add(c);

        // the struct
        Y(Case("struct_size 0", (ref FaDecodeParams p) => p.struct_size = 0, "struct_size"));
        Y(Case("reserved0 nonzero", (ref FaDecodeParams p) => p.reserved0 = 1, "reserved0"));
        Y(Case("advance_cache_seqlens 3", (ref FaDecodeParams p) => p.advance_cache_seqlens = 3, "advance_cache_seqlens"));

        // paging
        // Valid but not served: the paged kernels take power-of-two block sizes from 16 up.
        Y(CaseWith("block size 48", (ref FaDecodeParams p) => PagedBlockSize(ref p, 48), FaStatus.Unsupported, "block_size"));
        Y(Case("block_table fp16", (ref FaDecodeParams p) => p.block_table.dtype = (int)FaDtype.Float16, "block_table"));
        Y(Case("block_table rank 1", (ref FaDecodeParams p) => p.block_table = Tensor(BT, FaDtype.Int32, B * Pages), "block_table"));
        Y(Case("block_table rows != batch", (ref FaDecodeParams p) => p.block_table = Tensor(BT, FaDtype.Int32, B + 1, Pages), "block_table"));

        // append
        Y(Case("k_new without v_new", (ref FaDecodeParams p) => p.v_new = default, "v_new"));
        Y(Case("v_new without k_new", (ref FaDecodeParams p) => p.k_new = default, "k_new"));
        // (k_new's seqlen may differ from q's since 0.7; v_new's must match k_new's.)
        Y(Case("v_new seqlen differs from k_new", (ref FaDecodeParams p) => p.k_new = Tensor(KN, FaDtype.Float16, B, Sn + 1, Hkv, D),
            "v_new.shape[1] (seqlen_knew) is 1 but k_new.shape[1] (seqlen_knew) is 2"));
        Y(Case("seqlen_knew past the capacity", (ref FaDecodeParams p) =>
        {
            p.k_new = Tensor(KN, FaDtype.Float16, B, (Pages * BlockSize) + 1, Hkv, D);
            p.v_new = Tensor(VN, FaDtype.Float16, B, (Pages * BlockSize) + 1, Hkv, D);
        }, "fewer than the 81 new tokens k_new appends"));

        // cache_batch_idx / cache_leftpad (C ABI 0.7)
        Y(Case("cache_batch_idx fp32", (ref FaDecodeParams p) => p.cache_batch_idx = Tensor(BI, FaDtype.Float32, B), "cache_batch_idx.dtype"));
        Y(Case("cache_batch_idx rank 2", (ref FaDecodeParams p) => p.cache_batch_idx = Tensor(BI, FaDtype.Int32, B, 1), "cache_batch_idx.rank is 2"));
        Y(Case("cache_batch_idx length != batch", (ref FaDecodeParams p) => p.cache_batch_idx = Tensor(BI, FaDtype.Int32, B + 1),
            "cache_batch_idx.shape[0] (batch) is 3 but q.shape[0] (batch) is 2"));
        Y(Case("cache_batch_idx misaligned", (ref FaDecodeParams p) => p.cache_batch_idx = Tensor(BI + 2, FaDtype.Int32, B), "cache_batch_idx"));
        Y(Case("cache_leftpad fp16", (ref FaDecodeParams p) => p.cache_leftpad = Tensor(LP, FaDtype.Float16, B), "cache_leftpad.dtype"));
        Y(Case("cache_leftpad length != batch", (ref FaDecodeParams p) => p.cache_leftpad = Tensor(LP, FaDtype.Int32, B - 1),
            "cache_leftpad.shape[0] (batch) is 1"));
        Y(Case("out overlapping cache_batch_idx", (ref FaDecodeParams p) => p.cache_batch_idx = Tensor(O, FaDtype.Int32, B), "overlaps cache_batch_idx"));
        Y(Case("k_cache (appended into) overlapping cache_leftpad", (ref FaDecodeParams p) => p.cache_leftpad = Tensor(KC + 64, FaDtype.Int32, B),
            "overlaps cache_leftpad"));
        Y(Case("cache_batch_idx_host without cache_batch_idx", (ref FaDecodeParams p) => p.cache_batch_idx_host = Pin(s_rows),
            "cache_batch_idx_host is given but cache_batch_idx.data is NULL"));
        Y(Case("cache_leftpad_host without cache_leftpad", (ref FaDecodeParams p) => p.cache_leftpad_host = Pin(s_pads),
            "cache_leftpad_host is given but cache_leftpad.data is NULL"));
        Y(Case("host batch index = the pool size", (ref FaDecodeParams p) => Pool(ref p, s_rowsOutside),
            "cache_batch_idx_host[1] is 5 but the pool of cache rows is block_table.shape[0] (pool) = 5"));
        Y(Case("host batch index negative", (ref FaDecodeParams p) => Pool(ref p, s_rowsNegative), "cache_batch_idx_host[0] is -1"));
        Y(Case("host batch index past a contiguous pool", (ref FaDecodeParams p) =>
        {
            Contiguous(ref p, 3, 64);
            p.cache_batch_idx = Tensor(BI, FaDtype.Int32, B);
            p.cache_batch_idx_host = Pin(s_rows);
        }, "cache_batch_idx_host[0] is 4 but the pool of cache rows is k_cache.shape[0] (pool) = 3"));
        Y(Case("host left pad negative", (ref FaDecodeParams p) => Pads(ref p, s_padsNegative),
            "cache_leftpad_host[1] is -2; a left pad must be 0 or more"));
        Y(Case("host left pad past the sequence", (ref FaDecodeParams p) => Pads(ref p, s_padsPastLength),
            "cache_leftpad_host[1] is 19 but sequence 1 ends at 18 (cache_seqlens_host[1] = 17 plus 1 new tokens)"));
        Y(Case("host left pad past the capacity", (ref FaDecodeParams p) => Pads(ref p, s_padsPastCapacity),
            "cache_leftpad_host[1] is 81, more than the 80 positions its cache has"));
        Y(Case("v_new heads differ from k_new", (ref FaDecodeParams p) => p.v_new = Tensor(VN, FaDtype.Float16, B, Sn, Hkv * 2, D), "v_new"));

        // dtypes
        Y(Case("k_cache bf16, q fp16", (ref FaDecodeParams p) => p.k_cache.dtype = (int)FaDtype.Bfloat16, "k_cache"));
        Y(Case("v_cache bf16, q fp16", (ref FaDecodeParams p) => p.v_cache.dtype = (int)FaDtype.Bfloat16, "v_cache"));
        Y(Case("k_new bf16, q fp16", (ref FaDecodeParams p) => p.k_new.dtype = (int)FaDtype.Bfloat16, "k_new"));
        Y(Case("out bf16, q fp16", (ref FaDecodeParams p) => p.@out.dtype = (int)FaDtype.Bfloat16, "out"));
        Y(Case("q fp32", (ref FaDecodeParams p) => p.q.dtype = (int)FaDtype.Float32, "q"));
        Y(Case("lse fp16", (ref FaDecodeParams p) => p.lse.dtype = (int)FaDtype.Float16, "lse"));

        // cache_seqlens
        Y(Case("cache_seqlens wrong length", (ref FaDecodeParams p) => p.cache_seqlens = Tensor(SL, FaDtype.Int32, B + 1), "cache_seqlens"));
        Y(Case("cache_seqlens fp32", (ref FaDecodeParams p) => p.cache_seqlens.dtype = (int)FaDtype.Float32, "cache_seqlens"));
        Y(Case("cache_seqlens NULL", (ref FaDecodeParams p) => p.cache_seqlens.data = 0, "cache_seqlens"));
        Y(Case("host length past the capacity", (ref FaDecodeParams p) =>
            p.cache_seqlens_host = (int*)Marshal.UnsafeAddrOfPinnedArrayElement(s_fullLengths, 0), "cache_seqlens"));

        // num_splits
        Y(Case("num_splits -1", (ref FaDecodeParams p) => p.num_splits = -1, "num_splits"));
        Y(Case("num_splits 129", (ref FaDecodeParams p) => p.num_splits = NativeMethods.FA_DECODE_MAX_SPLITS + 1, "num_splits"));

        // shapes
        Y(Case("v_cache shape differs from k_cache", (ref FaDecodeParams p) => p.v_cache = Tensor(VC, FaDtype.Float16, Blocks + 1, BlockSize, Hkv, D), "v_cache"));
        Y(Case("k_cache head_dim differs from q", (ref FaDecodeParams p) =>
        {
            p.k_cache = Tensor(KC, FaDtype.Float16, Blocks, BlockSize, Hkv, 128);
            p.v_cache = Tensor(VC, FaDtype.Float16, Blocks, BlockSize, Hkv, 128);
        }, "k_cache"));
        Y(Case("head dim 59 with dense strides names the root cause first", (ref FaDecodeParams p) =>
        {
            p.q = Tensor(Q, FaDtype.Float16, p.q.shape[0], p.q.shape[1], p.q.shape[2], 59);
            p.@out = Tensor(O, FaDtype.Float16, p.@out.shape[0], p.@out.shape[1], p.@out.shape[2], 59);
            p.k_cache = Tensor(KC, FaDtype.Float16, Blocks, BlockSize, Hkv, 59);
            p.v_cache = Tensor(VC, FaDtype.Float16, Blocks, BlockSize, Hkv, 59);
            p.k_new = default;
            p.v_new = default;
            p.advance_cache_seqlens = 0;
        }, "q.shape[3] (head_dim) is 59; head dims must be multiples of 8", "q.strides["));
        Y(Case("heads_kv does not divide heads_q", (ref FaDecodeParams p) =>
        {
            p.k_cache = Tensor(KC, FaDtype.Float16, Blocks, BlockSize, 3, D);
            p.v_cache = Tensor(VC, FaDtype.Float16, Blocks, BlockSize, 3, D);
            p.k_new = Tensor(KN, FaDtype.Float16, B, Sn, 3, D);
            p.v_new = Tensor(VN, FaDtype.Float16, B, Sn, 3, D);
        }, "heads"));
        Y(Case("contiguous k_cache batch differs from q", (ref FaDecodeParams p) => Contiguous(ref p, B + 1, 64), "k_cache"));
        Y(Case("out shape differs from q", (ref FaDecodeParams p) => p.@out = Tensor(O, FaDtype.Float16, B, Sn, Hq / 2, D), "out"));
        Y(Case("lse shape wrong", (ref FaDecodeParams p) => p.lse = Tensor(L, FaDtype.Float32, B, Sn, Hq), "lse"));
        Y(Case("q.data NULL", (ref FaDecodeParams p) => p.q.data = 0, "q.data"));
        Y(Case("k_cache misaligned", (ref FaDecodeParams p) => p.k_cache.data = KC + 2, "k_cache"));
        Y(Case("k_cache head_dim not contiguous", (ref FaDecodeParams p) => p.k_cache.strides[3] = 2, "k_cache"));
        Y(CaseWith("compute capability 75", (ref FaDecodeParams p) => { }, FaStatus.Unsupported, "7.5"));

        // memory the call writes must not alias what it reads
        Y(Case("k_cache and v_cache the same memory with an append", (ref FaDecodeParams p) => p.v_cache.data = KC, "k_cache.data and v_cache.data"));
        Y(Case("workspace overlapping out", (ref FaDecodeParams p) =>
        {
            p.workspace = O;
            p.workspace_size = 4096;
        }, "workspace", "out"));
        Y(Case("workspace overlapping k_cache", (ref FaDecodeParams p) =>
        {
            p.workspace = KC + 256;
            p.workspace_size = 256;
        }, "workspace", "k_cache"));
        return cases;
    }

    [TestCaseSource(nameof(NativeBadInputs))]
    public void NativeCheckNamesTheArgument(Breaker breaker, FaStatus expected, string[] fragments)
    {
        RequireDecodeExports();
        FaDecodeParams p = Valid();
        breaker(ref p);
        int cc = fragments.Contains("7.5") ? 75 : 0;
        var (status, message) = Check(p, cc);
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(expected), $"message: {message}");
            foreach (string fragment in fragments)
            {
                Assert.That(message, Does.Contain(fragment));
            }
        });
    }

    [Test]
    public void NativeCheckAcceptsValidParameters()
    {
        RequireDecodeExports();
        foreach (FaDtype dtype in new[] { FaDtype.Float16, FaDtype.Bfloat16 })
        {
            FaDecodeParams p = Valid(dtype);
            var (status, message) = Check(p);
            Assert.That(status, Is.EqualTo(FaStatus.Success), $"{dtype}: {message}");

            // Variants: no append, no lse, contiguous, forced splits, every tested block size.
            p.k_new = default;
            p.v_new = default;
            p.lse = default;
            p.num_splits = NativeMethods.FA_DECODE_MAX_SPLITS;
            (status, message) = Check(p);
            Assert.That(status, Is.EqualTo(FaStatus.Success), $"{dtype} no append: {message}");
        }

        foreach (long blockSize in new long[] { 16, 32, 64, 128, 256 })
        {
            FaDecodeParams p = Valid();
            PagedBlockSize(ref p, blockSize);
            p.num_splits = 1;
            var (status, message) = Check(p);
            Assert.That(status, Is.EqualTo(FaStatus.Success), $"block size {blockSize}: {message}");
        }

        FaDecodeParams c = Valid();
        Contiguous(ref c, B, 64);
        var (cs, cm) = Check(c);
        Assert.That(cs, Is.EqualTo(FaStatus.Success), $"contiguous: {cm}");
    }

    [Test]
    public void ParamsInitSetsTheDocumentedDefaults()
    {
        RequireDecodeExports();
        FaDecodeParams init;
        Assert.That(NativeMethods.fa_decode_params_init(&init, (nuint)sizeof(FaDecodeParams)), Is.EqualTo(FaStatus.Success));
        FaDecodeParams p = init;
        Assert.Multiple(() =>
        {
            Assert.That(p.struct_size, Is.EqualTo((uint)sizeof(FaDecodeParams)));
            Assert.That(p.softmax_scale, Is.Zero);
            Assert.That(p.causal, Is.Zero);
            Assert.That(p.window_left, Is.EqualTo(-1));
            Assert.That(p.window_right, Is.EqualTo(-1));
            Assert.That(p.softcap, Is.Zero);
            Assert.That(p.num_splits, Is.Zero);
            Assert.That(p.workspace, Is.EqualTo((nint)0));
            Assert.That(p.block_table.data, Is.EqualTo((nint)0));
            Assert.That(p.k_new.data, Is.EqualTo((nint)0));
            Assert.That(p.rotary_cos, Is.EqualTo((nint)0));
            Assert.That(p.rotary_sin, Is.EqualTo((nint)0));
            Assert.That(p.rotary_interleaved, Is.EqualTo(1), "flash-attn's default: interleaved");
            Assert.That(p.reserved1, Is.Zero);
        });
    }

    // ---- FlashAttention.CheckDecode over KvCache.Wrap of raw pointers ------------------------------------------

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    /// <summary>The managed call's arguments; Lens are the host lengths the cache is wrapped with.</summary>
    public sealed record Args(
        DeviceTensor Q, DeviceTensor KCache, DeviceTensor VCache, DeviceTensor? BlockTable, DeviceTensor SeqLens, int[] Lens,
        DeviceTensor? KNew, DeviceTensor? VNew, DeviceTensor Out, DeviceTensor? Lse, AttentionOptions Options, int NumSplits)
    {
        /// <summary><see cref="DecodeArguments.CacheRows"/> of the call (null: every row).</summary>
        public int[]? Rows { get; init; }

        /// <summary><see cref="DecodeArguments.Rotary"/> of the call (null: none).</summary>
        public RotaryEmbedding? Rotary { get; init; }

        /// <summary><see cref="DecodeArguments.QueryCounts"/> of the call (null: none).</summary>
        public int[]? QueryCounts { get; init; }

        /// <summary><see cref="DecodeArguments.AppendCounts"/> of the call (null: none).</summary>
        public int[]? AppendCounts { get; init; }

        public FlashAttentionStatus Run(out string message)
        {
            using KvCache cache = KvCache.Wrap(KCache, VCache, Lens, BlockTable, SeqLens);
            return FlashAttention.CheckDecode(
                new DecodeArguments(Q, cache, KNew, VNew, Out, Lse, NumSplits)
                {
                    CacheRows = Rows, Rotary = Rotary, QueryCounts = QueryCounts, AppendCounts = AppendCounts,
                },
                out message,
                Options);
        }

        public override string ToString() => $"q {Q}, k_cache {KCache}, k_new {KNew?.ToString() ?? "none"}, lens [{string.Join(", ", Lens)}]";
    }

    private static Args ValidArgs(DataType dtype = DataType.Float16) => new(
        T(Q, dtype, B, Sn, Hq, D),
        T(KC, dtype, Blocks, BlockSize, Hkv, D),
        T(VC, dtype, Blocks, BlockSize, Hkv, D),
        T(BT, DataType.Int32, B, Pages),
        T(SL, DataType.Int32, B),
        [3, 17],
        T(KN, dtype, B, Sn, Hkv, D),
        T(VN, dtype, B, Sn, Hkv, D),
        T(O, dtype, B, Sn, Hq, D),
        T(L, DataType.Float32, B, Hq, Sn),
        new AttentionOptions { Causal = true },
        0);

    private static RotaryEmbedding Rot(long rows, long columns, DataType dtype = DataType.Float16, bool interleaved = true) =>
        new(T(RC, dtype, rows, columns), T(RS, dtype, rows, columns), interleaved);

    private static TestCaseData ManagedCase(string name, Args args, bool native, params string[] fragments) =>
        new TestCaseData(args, native, FlashAttentionStatus.InvalidArgument, fragments).SetName($"CheckDecode rejects: {name}");

    private static TestCaseData UnsupportedCase(string name, Args args, params string[] fragments) =>
        new TestCaseData(args, true, FlashAttentionStatus.Unsupported, fragments).SetName($"CheckDecode rejects: {name}");

    public static IEnumerable<TestCaseData> ManagedBadInputs()
    {
        Args ok = ValidArgs();

        // caught by the managed side (no decode export needed)
        yield return ManagedCase("top-left alignment", ok with { Options = new AttentionOptions { Causal = true, CausalAlignment = CausalAlignment.TopLeft } }, false, "bottom-right", "TopLeft");
        yield return ManagedCase("top-left alignment without a mask", ok with { Options = new AttentionOptions { CausalAlignment = CausalAlignment.TopLeft } }, false, "TopLeft");
        yield return ManagedCase("numSplits -1", ok with { NumSplits = -1 }, false, "num_splits");
        yield return ManagedCase("numSplits 129", ok with { NumSplits = 129 }, false, "num_splits");
        yield return ManagedCase("kNew without vNew", ok with { VNew = null }, false, "v_new");
        yield return ManagedCase("vNew without kNew", ok with { KNew = null }, false, "k_new");
        yield return ManagedCase("q bf16, cache fp16", ok with { Q = T(Q, DataType.BFloat16, B, Sn, Hq, D) }, false, "k_cache", "BFloat16");
        yield return ManagedCase("kNew bf16", ok with { KNew = T(KN, DataType.BFloat16, B, Sn, Hkv, D) }, false, "kNew", "BFloat16");
        yield return ManagedCase("output bf16", ok with { Out = T(O, DataType.BFloat16, B, Sn, Hq, D) }, false, "output");
        yield return ManagedCase("q batch differs from the cache", ok with
        {
            Q = T(Q, DataType.Float16, B + 1, Sn, Hq, D), Out = T(O, DataType.Float16, B + 1, Sn, Hq, D),
        }, false, "cache_seqlens");
        yield return ManagedCase("vNew seqlen differs from kNew", ok with
        {
            KNew = T(KN, DataType.Float16, B, Sn + 1, Hkv, D), VNew = T(VN, DataType.Float16, B, Sn, Hkv, D),
        }, false, "v_new", "kNew's shape");
        yield return ManagedCase("kNew batch differs from q", ok with
        {
            KNew = T(KN, DataType.Float16, B + 1, Sn, Hkv, D), VNew = T(VN, DataType.Float16, B + 1, Sn, Hkv, D),
        }, false, "k_new", "seqlen_knew");
        yield return ManagedCase("append of 3 past the capacity", ok with
        {
            Lens = [3, (Pages * BlockSize) - 2], KNew = T(KN, DataType.Float16, B, 3, Hkv, D), VNew = T(VN, DataType.Float16, B, 3, Hkv, D),
        }, false, "appends 3", "room for 80");
        yield return ManagedCase("CacheRows row past the pool", ok with { Rows = [0, 2] }, false, "CacheRows[1] is 2", "cache_batch_idx");
        yield return ManagedCase("CacheRows negative row", ok with { Rows = [-1, 0] }, false, "CacheRows[0] is -1");
        yield return ManagedCase("CacheRows repeats a row", ok with { Rows = [1, 1] }, false, "CacheRows[1] is 1", "already uses");
        yield return ManagedCase("CacheRows count differs from q's batch", ok with { Rows = [1] }, false, "CacheRows picks 1 rows");
        yield return ManagedCase("vNew shape differs", ok with { VNew = T(VN, DataType.Float16, B, Sn, Hkv, D / 2) }, false, "v_new");
        yield return ManagedCase("q head_dim differs from the cache", ok with
        {
            Q = T(Q, DataType.Float16, B, Sn, Hq, 128), Out = T(O, DataType.Float16, B, Sn, Hq, 128),
        }, false, "head_dim");
        yield return ManagedCase("heads do not divide", ok with
        {
            Q = T(Q, DataType.Float16, B, Sn, 3, D), Out = T(O, DataType.Float16, B, Sn, 3, D), Lse = null,
        }, false, "heads_kv", "does not divide");
        yield return ManagedCase("append past the capacity", ok with { Lens = [3, Pages * BlockSize] }, false, "room for 80");
        yield return ManagedCase("lse wrong shape", ok with { Lse = T(L, DataType.Float32, B, Sn, Hq) }, false, "logSumExp", "seqlen_new");
        yield return ManagedCase("lse fp16", ok with { Lse = T(L, DataType.Float16, B, Hq, Sn) }, false, "logSumExp", "Float32");
        yield return ManagedCase("q rank 3", ok with { Q = T(Q, DataType.Float16, B, Hq, D) }, false, "q", "rank 4");
        yield return ManagedCase("head_dim 60", ok with
        {
            Q = T(Q, DataType.Float16, B, Sn, Hq, 60), Out = T(O, DataType.Float16, B, Sn, Hq, 60),
            KCache = T(KC, DataType.Float16, Blocks, BlockSize, Hkv, 60), VCache = T(VC, DataType.Float16, Blocks, BlockSize, Hkv, 60),
            KNew = T(KN, DataType.Float16, B, Sn, Hkv, 60), VNew = T(VN, DataType.Float16, B, Sn, Hkv, 60),
        }, false, "head_dim", "multiple of 8");

        // Rotary (C ABI 0.8): what the managed side can tell from the tables' descriptors.
        yield return ManagedCase("rotary without kNew", ok with { KNew = null, VNew = null, Rotary = Rot(80, 32) }, false, "Rotary", "appends");
        yield return ManagedCase("rotary tables bf16 over an fp16 cache", ok with { Rotary = Rot(80, 32, DataType.BFloat16) }, false, "Rotary", "dtype");
        yield return ManagedCase("rotary cos and sin shapes differ", ok with
        {
            Rotary = new RotaryEmbedding(T(RC, DataType.Float16, 80, 32), T(RS, DataType.Float16, 80, 16)),
        }, false, "Rotary.Cos and Rotary.Sin");
        yield return ManagedCase("rotary table rank 1", ok with
        {
            Rotary = new RotaryEmbedding(T(RC, DataType.Float16, 80 * 32), T(RS, DataType.Float16, 80 * 32)),
        }, false, "[seqlenRo, rotaryDim / 2]");
        yield return ManagedCase("rotary dim 24", ok with { Rotary = Rot(80, 12) }, false, "rotaryDim 24", "multiple of 16");
        yield return ManagedCase("rotary dim above the head dim", ok with { Rotary = Rot(80, 40) }, false, "rotaryDim 80", "at most the head dim 64");

        // Per-sequence counts (C ABI 0.12): packed q [totalQ, Hq, D] with QueryCounts, packed kNew with AppendCounts.
        Args packed = ok with
        {
            Q = T(Q, DataType.Float16, 5, Hq, D), Out = T(O, DataType.Float16, 5, Hq, D), Lse = T(L, DataType.Float32, Hq, 5),
            KNew = T(KN, DataType.Float16, 4, Hkv, D), VNew = T(VN, DataType.Float16, 4, Hkv, D), QueryCounts = [2, 3], AppendCounts = [1, 3],
        };
        yield return ManagedCase("query counts past q's rows", packed with { QueryCounts = [2, 4] }, false, "QueryCounts add up to 6", "total_q");
        yield return ManagedCase("a negative query count", packed with { QueryCounts = [-1, 3] }, false, "QueryCounts[0] is -1");
        yield return ManagedCase("query counts for 3 sequences", packed with { QueryCounts = [1, 1, 1], AppendCounts = [1, 1, 2] }, false, "q has batch 3", "cache_seqlens");
        yield return ManagedCase("empty query counts", packed with { QueryCounts = [] }, false, "QueryCounts is empty");
        yield return ManagedCase("empty append counts", packed with { AppendCounts = [] }, false, "AppendCounts is empty");
        yield return ManagedCase("append counts past kNew's rows", packed with { AppendCounts = [2, 3] }, false, "AppendCounts add up to 5", "total_k_new");
        yield return ManagedCase("append counts for 1 sequence, query counts for 2", packed with { AppendCounts = [4] }, false, "AppendCounts has 1 counts", "QueryCounts 2");
        yield return ManagedCase("append counts alone for 1 sequence", ok with
        {
            KNew = T(KN, DataType.Float16, 4, Hkv, D), VNew = T(VN, DataType.Float16, 4, Hkv, D), AppendCounts = [4],
        }, false, "AppendCounts has 1 counts", "2 sequences");
        yield return ManagedCase("append counts without kNew", packed with { KNew = null, VNew = null }, false, "AppendCounts", "kNew and vNew are not given");
        yield return ManagedCase("rank-4 q with query counts", packed with { Q = T(Q, DataType.Float16, B, Sn, Hq, D) }, false, "q", "rank 3");
        yield return ManagedCase("rank-4 kNew with append counts", packed with
        {
            KNew = T(KN, DataType.Float16, B, Sn, Hkv, D), VNew = T(VN, DataType.Float16, B, Sn, Hkv, D),
        }, false, "kNew", "rank 3");
        yield return ManagedCase("lse [batch, Hq, sq] with query counts", packed with { Lse = T(L, DataType.Float32, B, Hq, 3) }, false, "logSumExp", "total_q=5");
        yield return ManagedCase("append counts past the capacity", packed with { Lens = [3, (Pages * BlockSize) - 2] }, false, "appends 3", "room for 80");

        // passed through to fa_decode_check
        yield return ManagedCase("rotary table too short", ok with { Rotary = Rot(79, 32) }, true, "rotary table too short", "79 rows", "80 positions");
        yield return UnsupportedCase("block size 48", ok with
        {
            KCache = T(KC, DataType.Float16, Blocks, 48, Hkv, D), VCache = T(VC, DataType.Float16, Blocks, 48, Hkv, D),
        }, "block_size");
        yield return ManagedCase("q misaligned", ok with { Q = T(Q + 2, DataType.Float16, B, Sn, Hq, D) }, true, "q");
        yield return ManagedCase("output aliases q", ok with { Out = T(Q, DataType.Float16, B, Sn, Hq, D) }, true, "out");
        yield return ManagedCase("cache_seqlens NULL", ok with { SeqLens = T(0, DataType.Int32, B) }, true, "cache_seqlens");
    }

    [TestCaseSource(nameof(ManagedBadInputs))]
    public void CheckDecodeReportsAndNamesTheArgument(Args args, bool needsNative, FlashAttentionStatus expected, string[] fragments)
    {
        if (needsNative)
        {
            RequireDecodeExports();
        }

        FlashAttentionStatus status = args.Run(out string message);
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(expected), $"message: {message}");
            foreach (string fragment in fragments)
            {
                Assert.That(message, Does.Contain(fragment));
            }
        });
    }

    [Test]
    public void CheckDecodePassesTheServingOptions()
    {
        RequireDecodeExports();
        Args ok = ValidArgs();
        Assert.Multiple(() =>
        {
            // More and fewer appended keys than queries.
            foreach (int sk in new[] { 1, 3, 7 })
            {
                Args a = ok with { Q = T(Q, DataType.Float16, B, 2, Hq, D), Out = T(O, DataType.Float16, B, 2, Hq, D),
                    Lse = T(L, DataType.Float32, B, Hq, 2), KNew = T(KN, DataType.Float16, B, sk, Hkv, D), VNew = T(VN, DataType.Float16, B, sk, Hkv, D) };
                Assert.That(a.Run(out string message), Is.EqualTo(FlashAttentionStatus.Success), $"seqlen_knew {sk}: {message}");
            }

            // A step over a subset (one row of two) and a permutation of the pool's rows.
            Args one = ok with
            {
                Q = T(Q, DataType.Float16, 1, Sn, Hq, D), Out = T(O, DataType.Float16, 1, Sn, Hq, D), Lse = null,
                KNew = T(KN, DataType.Float16, 1, Sn, Hkv, D), VNew = T(VN, DataType.Float16, 1, Sn, Hkv, D), Rows = [1],
            };
            Assert.That(one.Run(out string m1), Is.EqualTo(FlashAttentionStatus.Success), m1);
            Assert.That((ok with { Rows = [1, 0] }).Run(out string m2), Is.EqualTo(FlashAttentionStatus.Success), m2);
            Args contiguousPool = ok with { KCache = T(KC, DataType.Float16, B, 96, Hkv, D), VCache = T(VC, DataType.Float16, B, 96, Hkv, D), BlockTable = null, Rows = [1, 0] };
            Assert.That(contiguousPool.Run(out string m3), Is.EqualTo(FlashAttentionStatus.Success), m3);
        });
    }

    [Test]
    public void CheckDecodePassesPerSequenceCounts()
    {
        RequireDecodeExports();
        Args ok = ValidArgs();
        Args packed = ok with
        {
            Q = T(Q, DataType.Float16, 5, Hq, D), Out = T(O, DataType.Float16, 5, Hq, D), Lse = T(L, DataType.Float32, Hq, 5),
            KNew = T(KN, DataType.Float16, 4, Hkv, D), VNew = T(VN, DataType.Float16, 4, Hkv, D), QueryCounts = [2, 3], AppendCounts = [1, 3],
        };
        Assert.Multiple(() =>
        {
            Assert.That(packed.Run(out string m1), Is.EqualTo(FlashAttentionStatus.Success), m1);
            // Zero counts, rows past the sums, queries only (kNew of the fixed layout), appends only (q of the fixed layout).
            Assert.That((packed with { QueryCounts = [0, 4], AppendCounts = [0, 2] }).Run(out string m2), Is.EqualTo(FlashAttentionStatus.Success), m2);
            Assert.That((packed with { AppendCounts = null, KNew = ok.KNew, VNew = ok.VNew }).Run(out string m3), Is.EqualTo(FlashAttentionStatus.Success), m3);
            Assert.That((packed with { QueryCounts = null, Q = ok.Q, Out = ok.Out, Lse = ok.Lse }).Run(out string m4), Is.EqualTo(FlashAttentionStatus.Success), m4);
            Assert.That((packed with { Rows = [1, 0] }).Run(out string m5), Is.EqualTo(FlashAttentionStatus.Success), m5);
        });
    }

    [Test]
    public void CheckDecodePassesRotary()
    {
        RequireDecodeExports();
        Args ok = ValidArgs();
        Assert.Multiple(() =>
        {
            foreach (bool interleaved in new[] { true, false })
            {
                foreach (long columns in new long[] { 8, 16, 32 })
                {
                    Args a = ok with { Rotary = Rot(80, columns, interleaved: interleaved) };
                    Assert.That(a.Run(out string message), Is.EqualTo(FlashAttentionStatus.Success), $"interleaved {interleaved}, dim {2 * columns}: {message}");
                }
            }

            // Not causal, a longer table, and with a pool of rows.
            Args plain = ok with { Options = new AttentionOptions(), Rotary = Rot(4096, 32) };
            Assert.That(plain.Run(out string m1), Is.EqualTo(FlashAttentionStatus.Success), m1);
            Assert.That((ok with { Rows = [1, 0], Rotary = Rot(80, 32, interleaved: false) }).Run(out string m2), Is.EqualTo(FlashAttentionStatus.Success), m2);
        });
    }

    [Test]
    public void RotaryEmbeddingReportsItsDimAndPositions()
    {
        RotaryEmbedding r = Rot(80, 32, interleaved: false);
        Assert.Multiple(() =>
        {
            Assert.That(r.RotaryDim, Is.EqualTo(64));
            Assert.That(r.Positions, Is.EqualTo(80));
            Assert.That(r.Interleaved, Is.False);
            Assert.That(new RotaryEmbedding(r.Cos, r.Sin).Interleaved, Is.True, "flash-attn's default: interleaved");
        });
    }

    [Test]
    public void NativeCheckTakesTheRotaryBlockAndA07SizedStruct()
    {
        RequireDecodeExports();
        Assert.Multiple(() =>
        {
            Assert.That(Marshal.OffsetOf<FaDecodeParams>(nameof(FaDecodeParams.cu_seqlens_q)).ToInt64(), Is.EqualTo(960 + 80 + 32), "0.8 appends alibi_slopes (80 bytes) and the 32-byte rotary block to 0.7's 960");
            Assert.That(Marshal.OffsetOf<FaDecodeParams>(nameof(FaDecodeParams.k_descale)).ToInt64(), Is.EqualTo(960 + 80 + 32 + 184), "0.12 appends two tensors, two host pointers and two int32");
            Assert.That(sizeof(FaDecodeParams), Is.EqualTo(960 + 80 + 32 + 184 + 160), "0.13 appends two tensors (k_descale, v_descale)");
            Assert.That(Marshal.OffsetOf<FaDecodeParams>(nameof(FaDecodeParams.rotary_cos)).ToInt64(), Is.EqualTo(960 + 80));
        });

        FaDecodeParams p = Valid();
        p.rotary_cos = RC;
        p.rotary_sin = RS;
        p.rotary_dim = 32;
        p.rotary_seqlen = Pages * BlockSize;
        p.rotary_interleaved = 0;
        var (status, message) = Check(p);
        Assert.That(status, Is.EqualTo(FaStatus.Success), message);

        (FaDecodeParams Params, string Fragment)[] refused =
        [
            (p with { rotary_dim = 31 }, "rotary_dim is 31, which is odd"),
            (p with { rotary_dim = 40 }, "rotary_dim is 40; it must be a positive multiple of 16"),
            (p with { rotary_dim = 80 }, "rotary_dim is 80 but the head dim (q.shape[3]) is 64"),
            (p with { rotary_seqlen = 79 }, "rotary table too short: rotary_seqlen is 79 rows but the cache holds 80 positions"),
            (p with { rotary_sin = 0 }, "rotary_cos is set but rotary_sin is NULL"),
            (p with { rotary_interleaved = 5 }, "rotary_interleaved is 5; it must be 0 or 1"),
            (p with { k_new = default, v_new = default }, "rotary_cos/rotary_sin are given but k_new/v_new are not"),
        ];
        foreach (var (bad, fragment) in refused)
        {
            (status, message) = Check(bad);
            Assert.Multiple(() =>
            {
                Assert.That(status, Is.EqualTo(FaStatus.InvalidArgument), fragment);
                Assert.That(message, Does.Contain(fragment));
            });
        }

        // A caller compiled against 0.7 passes 960 bytes: the rotary block is not read (here: garbage).
        FaDecodeParams old = p with { rotary_dim = 3, rotary_interleaved = 9, reserved1 = 7 };
        old.struct_size = 960;
        (status, message) = Check(old);
        Assert.That(status, Is.EqualTo(FaStatus.Success), message);
    }

    [Test]
    public void NativeCheckAcceptsTheServingFieldsAndA06SizedStruct()
    {
        RequireDecodeExports();
        FaDecodeParams p = Valid();
        p.block_table = Tensor(BT, FaDtype.Int32, 5, Pages);
        p.cache_batch_idx = Tensor(BI, FaDtype.Int32, B);
        p.cache_batch_idx_host = Pin(s_rows);
        p.cache_leftpad = Tensor(LP, FaDtype.Int32, B);
        p.cache_leftpad_host = Pin(s_pads);
        p.k_new = Tensor(KN, FaDtype.Float16, B, 3, Hkv, D);
        p.v_new = Tensor(VN, FaDtype.Float16, B, 3, Hkv, D);
        var (status, message) = Check(p);
        Assert.That(status, Is.EqualTo(FaStatus.Success), message);

        // A caller compiled against 0.6 passes 784 bytes: whatever follows is not read (here: garbage).
        FaDecodeParams old = Valid();
        old.struct_size = 784;
        old.cache_batch_idx = Tensor(O, FaDtype.Float32, 7);
        old.cache_leftpad_host = Pin(s_padsNegative);
        (status, message) = Check(old);
        Assert.That(status, Is.EqualTo(FaStatus.Success), message);
        old.struct_size = 776;
        (status, message) = Check(old);
        Assert.Multiple(() =>
        {
            Assert.That(status, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(message, Does.Contain("for version 0.6"));
        });
    }

    [TestCase(DataType.Float16, 0)]
    [TestCase(DataType.BFloat16, 1)]
    [TestCase(DataType.BFloat16, 128)]
    public void CheckDecodePassesValidArguments(DataType dtype, int numSplits)
    {
        RequireDecodeExports();
        Args a = ValidArgs(dtype) with { NumSplits = numSplits };
        Assert.Multiple(() =>
        {
            Assert.That(a.Run(out string message), Is.EqualTo(FlashAttentionStatus.Success), message);
            Assert.That((a with { KNew = null, VNew = null, Lse = null }).Run(out message), Is.EqualTo(FlashAttentionStatus.Success), message);
            Args contiguous = a with
            {
                KCache = T(KC, dtype, B, 96, Hkv, D), VCache = T(VC, dtype, B, 96, Hkv, D), BlockTable = null,
                Options = new AttentionOptions { Causal = true, WindowLeft = 32, Softcap = 20f, SoftmaxScale = 0.2f },
            };
            Assert.That(contiguous.Run(out message), Is.EqualTo(FlashAttentionStatus.Success), message);
        });
    }

    [Test]
    public void CheckDecodeThrowsForNullArguments()
    {
        Args a = ValidArgs();
        using KvCache cache = KvCache.Wrap(a.KCache, a.VCache, a.Lens, a.BlockTable, a.SeqLens);
        Assert.Multiple(() =>
        {
            Assert.That(() => FlashAttention.CheckDecode(null!, cache, a.KNew, a.VNew, a.Out, out _), Throws.ArgumentNullException.With.Property("ParamName").EqualTo("q"));
            Assert.That(() => FlashAttention.CheckDecode(a.Q, null!, a.KNew, a.VNew, a.Out, out _), Throws.ArgumentNullException.With.Property("ParamName").EqualTo("cache"));
            Assert.That(() => FlashAttention.CheckDecode(a.Q, cache, a.KNew, a.VNew, null!, out _), Throws.ArgumentNullException.With.Property("ParamName").EqualTo("output"));
        });
    }

    [Test]
    public void CheckDecodeRefusesADisposedCache()
    {
        Args a = ValidArgs();
        KvCache cache = KvCache.Wrap(a.KCache, a.VCache, a.Lens, a.BlockTable, a.SeqLens);
        cache.Dispose();
        Assert.That(() => FlashAttention.CheckDecode(a.Q, cache, a.KNew, a.VNew, a.Out, out _), Throws.TypeOf<ObjectDisposedException>());
    }

    [Test]
    public void MaxDecodeSplitsMatchesTheHeader() =>
        Assert.That(FlashAttention.MaxDecodeSplits, Is.EqualTo(128));
}
