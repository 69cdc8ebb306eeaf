using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// One serving decode problem (C ABI 0.7, flash-attn's cache plumbing): a cache of <see cref="PoolLens"/>.Length rows
/// (the pool) holding those lengths, a step over <see cref="Rows"/> (cache_batch_idx; null: every row in order), the
/// rows' left pads (cache_leftpad; null: none), <see cref="SeqQ"/> queries and <see cref="SeqKNew"/> appended keys per
/// sequence (0: no append), contiguous or paged (<see cref="BlockSize"/> &gt; 0, shuffled table), a mask and a forced
/// split count (0: automatic).
/// </summary>
public sealed record ServingSpec(
    DataType Dtype, int HeadDim, int HeadsQ, int HeadsKv, int SeqQ, int SeqKNew, int[] PoolLens, int[]? Rows, int[]? Pads, int BlockSize,
    MaskSpec Mask, int NumSplits = 0, string Alibi = "none")
{
    /// <summary>Whether the step passes ALiBi slopes: "head" ([headsQ]), "batch" ([batch, headsQ]) or "none".</summary>
    public bool HasAlibi => Alibi != "none";

    public int Pool => PoolLens.Length;

    /// <summary>Rotary embedding on append (C ABI 0.8): elements rotated per head (a multiple of 16), 0: none.</summary>
    public int RotaryDim { get; init; }

    /// <summary>Rotary pairs: true (flash-attn's default) interleaved (2t, 2t+1), false half-split (t, t + RotaryDim/2).</summary>
    public bool RotaryInterleaved { get; init; } = true;

    /// <summary>Per-sequence query counts (C ABI 0.12, cu_seqlens_q; packed q): one per step row, or null (SeqQ each).</summary>
    public int[]? QueryCounts { get; init; }

    /// <summary>Per-sequence appended counts (cu_seqlens_k_new; packed kNew): one per step row, or null (SeqKNew each).</summary>
    public int[]? AppendCounts { get; init; }

    /// <summary>
    /// An fp8 (e4m3) cache (C ABI 0.13) under the <see cref="Dtype"/> queries: "head" (one factor per KV head), "tensor"
    /// (one for the cache) or "none" (a cache of <see cref="Dtype"/>).
    /// </summary>
    public string Fp8 { get; init; } = "none";

    public bool Fp8Cache => Fp8 != "none";

    /// <summary>The range the fp8 cache's descale factors are drawn from (uniform; keys and values drawn apart).</summary>
    public (double Lo, double Hi) DescaleRange { get; init; } = (0.01, 0.05);

    /// <summary>The fp8 factors are the call's (DecodeArguments.KeyDescale) over a cache wrapped without its own.</summary>
    public bool DescalesPerCall { get; init; }

    public int[] StepRows => Rows ?? [.. Enumerable.Range(0, Pool)];

    public int Batch => StepRows.Length;

    public bool Paged => BlockSize > 0;

    public override string ToString() =>
        $"{(Dtype == DataType.Float16 ? "fp16" : "bf16")} D{HeadDim} Hq{HeadsQ} Hkv{HeadsKv} Sq{SeqQ} Sknew{SeqKNew} pool[{string.Join(",", PoolLens)}] " +
        $"rows[{(Rows is null ? "all" : string.Join(",", Rows))}] pads[{(Pads is null ? "none" : string.Join(",", Pads))}] " +
        $"{(Paged ? $"paged bs{BlockSize}" : "contiguous")} {Mask} splits {NumSplits}" + (HasAlibi ? $" alibi {Alibi}" : string.Empty) +
        (RotaryDim > 0 ? $" rotary {RotaryDim} {(RotaryInterleaved ? "interleaved" : "half-split")}" : string.Empty) +
        (QueryCounts is null ? string.Empty : $" qcounts[{string.Join(",", QueryCounts)}]") +
        (AppendCounts is null ? string.Empty : $" kcounts[{string.Join(",", AppendCounts)}]") +
        (Fp8Cache ? $" e4m3 cache, descales per {Fp8} in [{DescaleRange.Lo}, {DescaleRange.Hi}]{(DescalesPerCall ? " per call" : string.Empty)}" : string.Empty);
}

/// <summary>
/// fa_decode's serving options through <see cref="FlashAttention.Decode(in DecodeArguments, AttentionOptions, CudaStream)"/>
/// (<see cref="DecodeArguments.CacheRows"/>, <see cref="KvCache.SetLeftPadding"/>, a kNew token count other than q's)
/// against the float64 <see cref="DecodeReference"/> with the matching <see cref="DecodeServingOptions"/>, judged as
/// <see cref="DecodeAccuracyTests"/> judges decode (same acceptance rule, no tolerance widened): fresh random inputs,
/// NaN in every cache slot no call may read (past each row's length, before its pad, whole rows outside the step),
/// poisoned outputs, every output element checked, the cache read back (appended rows in their slots of the right
/// pool rows, every other element unchanged, NaN included) and the lengths on host and device advanced for the step's
/// rows only.
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class DecodeServingTests : AttentionTestBase
{
    private const DataType F16 = DataType.Float16, Bf16 = DataType.BFloat16;
    private static readonly MaskSpec Full = new(false, false);
    private static readonly MaskSpec Causal = new(true, false);

    private static TestCaseData Case(ServingSpec spec) => new TestCaseData(spec).SetArgDisplayNames(spec.ToString());

    public static IEnumerable<TestCaseData> Cases()
    {
        // cache_batch_idx: a shuffled subset / permutation of a larger pool, contiguous and paged, GQA, forced splits
        yield return Case(new(F16, 64, 8, 2, 1, 1, [0, 1, 150, 299, 40, 7, 77], [5, 2, 0, 3], null, 0, Causal));
        yield return Case(new(Bf16, 128, 8, 2, 3, 3, [13, 0, 200, 64, 31, 90], [4, 1, 2], null, 16, Causal, 5));
        yield return Case(new(F16, 64, 4, 4, 1, 1, [300, 17, 5], [2, 0, 1], null, 0, Full, 13));
        yield return Case(new(Bf16, 64, 16, 1, 2, 2, [500, 1, 129], [1, 2], null, 64, Causal));

        // cache_leftpad: none, mid, every cached key (only the new ones seen; without an append nothing: O 0, lse +inf)
        yield return Case(new(Bf16, 64, 4, 2, 2, 2, [100, 37, 0, 250], null, [17, 37, 0, 1], 0, Causal));
        yield return Case(new(F16, 128, 6, 3, 2, 0, [100, 33, 400], null, [40, 33, 0], 32, new MaskSpec(false, false, 20, 0, 10f), 4));
        yield return Case(new(F16, 64, 8, 2, 1, 1, [700, 517, 3], null, [650, 0, 3], 128, Causal, 7));

        // seqlen_knew != seqlen_q: fewer keys than queries (first rows see nothing when the cache is empty), and more
        yield return Case(new(Bf16, 64, 4, 2, 4, 1, [0, 2, 150], null, null, 0, Causal));
        yield return Case(new(F16, 128, 8, 1, 2, 5, [60, 300], null, null, 64, Causal, 7));
        yield return Case(new(Bf16, 64, 8, 2, 1, 6, [33, 0, 100], null, null, 16, new MaskSpec(true, false, 12, null)));

        // everything at once, and without an append
        yield return Case(new(Bf16, 64, 8, 2, 1, 3, [20, 10, 180, 55, 1], [3, 0, 4], [0, 10, 100, 30, 0], 16, new MaskSpec(false, false, 50, null), 2));
        yield return Case(new(F16, 64, 4, 1, 2, 0, [128, 5, 77, 60, 9, 1], [4, 1, 2], [3, 5, 0, 0, 2, 0], 0, Causal, 4));
        yield return Case(new(F16, 128, 16, 2, 3, 2, [257, 33, 1000, 64], [2, 3, 0], [0, 30, 513, 0], 32, Causal));

        // ALiBi (C ABI 0.8): distances from the left pad; causal keeps FA2's column form (its LSE) even for one token
        yield return Case(new(Bf16, 64, 8, 2, 1, 1, [100, 37, 0, 250], null, [17, 37, 0, 1], 0, Causal, 0, "head"));
        yield return Case(new(F16, 128, 8, 2, 1, 1, [300, 17, 5], [2, 0, 1], [40, 0, 2], 16, Causal, 7, "batch"));
        yield return Case(new(F16, 64, 4, 2, 2, 2, [100, 37, 0, 250], null, [17, 37, 0, 1], 0, Full, 0, "batch"));
        yield return Case(new(Bf16, 64, 8, 2, 3, 3, [60, 300, 1], null, [5, 0, 1], 32, new MaskSpec(true, false, 20, null, 10f), 3, "head"));
        yield return Case(new(F16, 128, 6, 3, 2, 0, [100, 33, 400], null, [40, 33, 0], 0, new MaskSpec(false, false, 20, 0, 10f), 4, "head"));

        // Per-sequence counts (C ABI 0.12, FA3's cu_seqlens_q / cu_seqlens_k_new): speculative drafts of 0..9 tokens
        // appended and queried, queries only, appends only, with rows, pads, splits, rotary and ALiBi.
        yield return Case(new(Bf16, 64, 8, 2, 1, 0, [13, 0, 200, 100], null, null, 16, Causal) { QueryCounts = [0, 1, 5, 9], AppendCounts = [0, 1, 5, 9] });
        yield return Case(new(F16, 128, 8, 2, 1, 2, [60, 300, 7, 40], [3, 1, 0], [5, 0, 0, 0], 0, Causal, 3) { QueryCounts = [4, 1, 7] });
        yield return Case(new(Bf16, 64, 4, 1, 2, 0, [20, 40, 180], null, [0, 10, 100], 32, Causal) { AppendCounts = [4, 0, 2], RotaryDim = 64, RotaryInterleaved = false });
        yield return Case(new(F16, 64, 8, 2, 1, 0, [100, 37, 0, 250], null, [17, 0, 0, 1], 0, new MaskSpec(true, false, 20, null), 0, "head") { QueryCounts = [3, 0, 2, 1], AppendCounts = [1, 2, 2, 0] });
    }

    [TestCaseSource(nameof(Cases))]
    public void MatchesTheReference(ServingSpec spec)
    {
        RequireHeadDim(spec.HeadDim, spec.Dtype);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var run = ServingRun.Create(Device, Stream, spec, random);
        run.Step(Attention, Stream, spec.Rows, spec.SeqQ, spec.SeqKNew, spec.NumSplits, $"seed {seed}, {spec}", spec.QueryCounts, spec.AppendCounts);
    }

    [Test]
    public void SplitCountsAgreeWithTheReference([Values(1, 3, 16, 64)] int splits)
    {
        var spec = new ServingSpec(Bf16, 64, 8, 2, 2, 3, [700, 400, 33, 900, 0], [3, 0, 1], [100, 0, 10, 450, 0], 32, Causal, splits);
        RequireHeadDim(spec.HeadDim, spec.Dtype);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var run = ServingRun.Create(Device, Stream, spec, random);
        run.Step(Attention, Stream, spec.Rows, spec.SeqQ, spec.SeqKNew, splits, $"seed {seed}, {spec}");
    }

    [Test]
    public void StepsOverDifferentRowsAdvanceOnlyTheirRows([Values(0, 16)] int blockSize)
    {
        // Three steps queued on one stream over one cache: rows [2, 0], then [1, 2] (row 2 again, now longer), then every
        // row; a different token count each time. Each is judged against the reference run over the host state the
        // previous steps left.
        var spec = new ServingSpec(F16, 64, 8, 2, 1, 1, [30, 0, 65, 12], null, [5, 0, 0, 12], blockSize, Causal);
        RequireHeadDim(spec.HeadDim, spec.Dtype);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var run = ServingRun.Create(Device, Stream, spec, random, extraCapacity: 16);
        run.StepsOverDifferentRows(Attention, Stream, $"seed {seed}, {spec}");
    }

    [Test]
    public void LengthsBelowARowsLeftPadAreRefusedUntilThePadIsLowered()
    {
        // (A mutation pass over the managed refusals found this one reached by no test; it needs pads, which only a
        // cache on a device keeps.)
        using KvCache cache = KvCache.CreateContiguous(Device, Bf16, batchSize: 2, capacity: 64, headsKv: 2, headDim: 64, Stream);
        cache.SetSequenceLengths([10, 20], Stream);
        cache.SetLeftPadding([4, 0], Stream);
        Assert.Multiple(() =>
        {
            Assert.That(() => cache.SetSequenceLengths([3, 20], Stream),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("lengths").And.Message.Contain("lengths[0] is 3, below the row's left padding 4"));
            Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 10, 20 }), "a refused call changes no length");
            Assert.That(cache.LeftPadding, Is.EqualTo(new[] { 4, 0 }));
        });
        cache.SetSequenceLengths([4, 20], Stream); // down to the pad itself: allowed (no key left to attend to)
        cache.SetLeftPadding([0, 0], Stream);
        cache.SetSequenceLengths([3, 20], Stream);
        cache.Synchronize();
        Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 3, 20 }));
    }

    [Test]
    public void OwnedPagedCacheAllocatesBlocksOnlyForTheStepsRows()
    {
        RequireHeadDim(64, F16);
        Random random = TestRandom.ForCurrentTest(out int seed);
        using KvCache cache = KvCache.CreatePaged(Device, F16, batchSize: 4, numBlocks: 8, blockSize: 16, headsKv: 1, headDim: 64, maxBlocksPerSequence: 4, Stream);
        using var q = DeviceArray.Upload(Device, F16, ForwardRun.RoundAll(F16, TestRandom.Normal(random, 2 * 1 * 2 * 64)));
        using var kn = DeviceArray.Upload(Device, F16, ForwardRun.RoundAll(F16, TestRandom.Normal(random, 2 * 17 * 64)));
        using var vn = DeviceArray.Upload(Device, F16, ForwardRun.RoundAll(F16, TestRandom.Normal(random, 2 * 17 * 64)));
        using var o = DeviceArray.Allocate(Device, F16, 2 * 1 * 2 * 64);
        var args = new DecodeArguments(q.Tensor([2, 1, 2, 64]), cache, kn.Tensor([2, 17, 1, 64]), vn.Tensor([2, 17, 1, 64]), o.Tensor([2, 1, 2, 64]))
        {
            CacheRows = [3, 1],
        };
        Attention.Decode(args, new AttentionOptions { Causal = true }, Stream);
        Stream.Synchronize();
        cache.Synchronize();
        Assert.Multiple(() =>
        {
            Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 0, 17, 0, 17 }), $"seed {seed}");
            Assert.That(cache.FreeBlockCount, Is.EqualTo(8 - 4), "17 tokens take 2 pages in each of the two rows");
            Assert.That(cache.HostBlockTable![0], Is.EqualTo(-1));
            Assert.That(cache.HostBlockTable![8], Is.EqualTo(-1));
            Assert.That(cache.HostBlockTable![4], Is.Not.EqualTo(-1));
            Assert.That(cache.HostBlockTable![12], Is.Not.EqualTo(-1));
        });
    }

    [Test]
    public void CountsOverARawPointerViewAreRefusedBeforeAnythingIsQueued([Values("rows", "queries", "appends")] string which)
    {
        // A view over raw pointers has no device buffer for the step's per-sequence arrays; Decode says so (an
        // ArgumentException naming the view) before any copy or append, and the cache's lengths stay as they were.
        RequireHeadDim(64, F16);
        Random random = TestRandom.ForCurrentTest(out int seed);
        long[] cacheShape = [2, 32, 1, 64];
        using var k = DeviceArray.Upload(Device, F16, ForwardRun.RoundAll(F16, TestRandom.Normal(random, 2 * 32 * 64)));
        using var v = DeviceArray.Upload(Device, F16, ForwardRun.RoundAll(F16, TestRandom.Normal(random, 2 * 32 * 64)));
        using var lens = new DeviceBuffer<int>(Device, 2);
        lens.CopyFrom([3, 5]);
        DeviceTensor Raw(DeviceTensor t) => DeviceTensor.FromPointer(t.Pointer, t.DataType, [.. t.Shape]);
        using KvCache cache = KvCache.Wrap(Raw(k.Tensor(cacheShape)), Raw(v.Tensor(cacheShape)), [3, 5], cacheSeqLens: Raw(lens.AsTensor(2)));
        using var q = DeviceArray.Upload(Device, F16, ForwardRun.RoundAll(F16, TestRandom.Normal(random, 2 * 2 * 64)));
        using var kn = DeviceArray.Upload(Device, F16, ForwardRun.RoundAll(F16, TestRandom.Normal(random, 2 * 64)));
        using var vn = DeviceArray.Upload(Device, F16, ForwardRun.RoundAll(F16, TestRandom.Normal(random, 2 * 64)));
        using var o = DeviceArray.Allocate(Device, F16, 2 * 2 * 64);
        DecodeArguments args = which switch
        {
            "rows" => new DecodeArguments(q.Tensor([2, 1, 2, 64]), cache, kn.Tensor([2, 1, 1, 64]), vn.Tensor([2, 1, 1, 64]), o.Tensor([2, 1, 2, 64]))
            {
                CacheRows = [1, 0],
            },
            "queries" => new DecodeArguments(q.Tensor([2, 2, 64]), cache, kn.Tensor([2, 1, 1, 64]), vn.Tensor([2, 1, 1, 64]), o.Tensor([2, 2, 64]))
            {
                QueryCounts = [1, 1],
            },
            _ => new DecodeArguments(q.Tensor([2, 1, 2, 64]), cache, kn.Tensor([2, 1, 64]), vn.Tensor([2, 1, 64]), o.Tensor([2, 1, 2, 64]))
            {
                AppendCounts = [2, 0],
            },
        };
        var e = Assert.Throws<ArgumentException>(() => Attention.Decode(args, new AttentionOptions { Causal = true }, Stream), $"seed {seed}");
        Assert.Multiple(() =>
        {
            Assert.That(e!.Message, Does.Contain("view over raw pointers"));
            Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 3, 5 }));
        });
    }

    private void RequireHeadDim(int headDim, DataType dtype)
    {
        SupportResult result = FlashAttention.QuerySupport(new SupportQuery(AttentionPass.Decode, dtype, headDim, ComputeCapability: Device.ComputeCapabilityCode));
        if (!result.IsSupported)
        {
            Assert.Ignore($"this build does not serve decode with head dim {headDim}: {result.Reason}");
        }
    }
}

/// <summary>
/// A serving cache on the GPU and its host mirror: NaN everywhere a call may not read, random rounded values in each
/// row's valid positions, a <see cref="KvCache"/> view over it with the left pads set. <see cref="Step"/> runs one decode
/// and judges it; the host mirror (cache, lengths) then holds what the GPU must hold.
/// </summary>
internal sealed class ServingRun : IDisposable
{
    private readonly CudaDevice _device;
    private readonly ServingSpec _spec;
    private readonly List<IDisposable> _owned = [];
    private Random _random = null!;
    // The 16-bit cache's mirror, or the fp8 cache's (its bytes, with the factors the kernels multiply them by).
    private double[] _k = [], _v = [];
    private Float8E4M3[] _k8 = [], _v8 = [];
    private float[] _kd = [], _vd = [];
    private DeviceTensor? _dkd, _dvd;
    private int[] _table = [];
    private int[] _lens = [];
    private int _capacity, _maxBlocks, _numBlocks;
    private DeviceArray _dk = null!, _dv = null!;
    // Rotary tables (spec.RotaryDim > 0): [rows, RotaryDim / 2], rounded to the dtype, as the GPU reads them.
    private double[] _cos = [], _sin = [];
    private int _rotaryRows;
    private DeviceArray? _dcos, _dsin;

    private ServingRun(CudaDevice device, ServingSpec spec)
    {
        _device = device;
        _spec = spec;
    }

    public KvCache Cache { get; private set; } = null!;

    private int Row => _spec.HeadsKv * _spec.HeadDim;

    private long[] CacheShape => _spec.Paged
        ? [_numBlocks, _spec.BlockSize, _spec.HeadsKv, _spec.HeadDim]
        : [_spec.Pool, _capacity, _spec.HeadsKv, _spec.HeadDim];

    public static ServingRun Create(CudaDevice device, CudaStream stream, ServingSpec spec, Random random, int extraCapacity = 0)
    {
        var run = new ServingRun(device, spec);
        try
        {
            run._random = random;
            run.Build(stream, random, extraCapacity);
            return run;
        }
        catch
        {
            run.Dispose();
            throw;
        }
    }

    /// <summary>The key element <paramref name="e"/> of the cache as attention reads it (an fp8 byte times its head's factor).</summary>
    private float AttendedKey(long e) => _spec.Fp8Cache ? (float)((double)_k8[e] * Factor(_kd, e)) : (float)_k[e];

    /// <summary>See <see cref="AttendedKey"/>.</summary>
    private float AttendedValue(long e) => _spec.Fp8Cache ? (float)((double)_v8[e] * Factor(_vd, e)) : (float)_v[e];

    /// <summary>The factor of cache element <paramref name="e"/>: its KV head's, or the one per-tensor factor.</summary>
    private float Factor(float[] factors, long e) => factors[factors.Length == 1 ? 0 : (int)(e % Row / _spec.HeadDim)];

    /// <summary>Row (in units of Hkv*D elements) of position p of pool row r.</summary>
    private long RowOf(int r, int p) => _spec.Paged
        ? ((long)_table[(r * _maxBlocks) + (p / _spec.BlockSize)] * _spec.BlockSize) + (p % _spec.BlockSize)
        : ((long)r * _capacity) + p;

    private void Build(CudaStream stream, Random random, int extraCapacity)
    {
        ServingSpec s = _spec;
        _lens = (int[])s.PoolLens.Clone();
        int[] pads = s.Pads ?? new int[s.Pool];
        int growth = Math.Max(Math.Max(s.SeqKNew, s.AppendCounts?.Max() ?? 0), 1) + extraCapacity;
        if (s.Paged)
        {
            // Pages for each row's length plus what the steps may append; pages before a row's pad and past its end are -1.
            int[] pages = _lens.Select(l => (l + growth + s.BlockSize - 1) / s.BlockSize).ToArray();
            _maxBlocks = pages.Max() + 1;
            _numBlocks = pages.Sum() + 2;
            int[] order = Enumerable.Range(0, _numBlocks).ToArray();
            random.Shuffle(order);
            int next = 0;
            _table = new int[s.Pool * _maxBlocks];
            for (int r = 0; r < s.Pool; r++)
            {
                for (int p = 0; p < _maxBlocks; p++)
                {
                    bool beforePad = (p + 1) * s.BlockSize <= pads[r] && pads[r] > 0;
                    _table[(r * _maxBlocks) + p] = p < pages[r] && !beforePad ? order[next++] : -1;
                }
            }

            _capacity = _maxBlocks * s.BlockSize;
        }
        else
        {
            _capacity = _lens.Max() + growth + 7;
        }

        long elements = CacheShape.Aggregate(1L, (a, x) => a * x);
        var k = new float[elements];
        var v = new float[elements];
        Array.Fill(k, float.NaN);  // 0x7F in an fp8 cache
        Array.Fill(v, float.NaN);
        if (s.Fp8Cache)
        {
            int factors = s.Fp8 == "tensor" ? 1 : s.HeadsKv;
            _kd = TestRandom.Uniform(random, factors, s.DescaleRange.Lo, s.DescaleRange.Hi).Select(x => (float)x).ToArray();
            _vd = TestRandom.Uniform(random, factors, s.DescaleRange.Lo, s.DescaleRange.Hi).Select(x => (float)x).ToArray();
        }

        for (int r = 0; r < s.Pool; r++)
        {
            for (int p = pads[r]; p < _lens[r]; p++)
            {
                long at = RowOf(r, p) * Row;
                ForwardRun.RoundAll(s.Dtype, TestRandom.Normal(random, Row)).CopyTo(k, at);
                ForwardRun.RoundAll(s.Dtype, TestRandom.Normal(random, Row)).CopyTo(v, at);
                for (long e = at; s.Fp8Cache && e < at + Row; e++)
                {
                    // Stored e4m3 values whose dequantized values are about N(0, 1).
                    k[e] = Float8E4M3.FromSingleSaturating(k[e] / Factor(_kd, e));
                    v[e] = Float8E4M3.FromSingleSaturating(v[e] / Factor(_vd, e));
                }
            }
        }

        DataType cacheType = s.Fp8Cache ? DataType.Float8E4M3 : s.Dtype;
        if (s.Fp8Cache)
        {
            _k8 = k.Select(x => (Float8E4M3)x).ToArray();
            _v8 = v.Select(x => (Float8E4M3)x).ToArray();
            var keyDescale = Own(new DeviceBuffer<float>(_device, _kd.Length));
            var valueDescale = Own(new DeviceBuffer<float>(_device, _vd.Length));
            keyDescale.CopyFrom(_kd);
            valueDescale.CopyFrom(_vd);
            _dkd = keyDescale.AsTensor(_kd.Length);
            _dvd = valueDescale.AsTensor(_vd.Length);
        }
        else
        {
            _k = AttentionReference.ToDouble(k);
            _v = AttentionReference.ToDouble(v);
        }

        _dk = Own(DeviceArray.Upload(_device, cacheType, k));
        _dv = Own(DeviceArray.Upload(_device, cacheType, v));
        DeviceTensor? table = null;
        if (s.Paged)
        {
            var dt = Own(new DeviceBuffer<int>(_device, _table.Length));
            dt.CopyFrom(_table);
            table = dt.AsTensor(s.Pool, _maxBlocks);
        }

        if (s.RotaryDim > 0)
        {
            // Angles p / 10000^(2t / rd), as models build them; rows past the capacity so every query position fits.
            int half = s.RotaryDim / 2;
            _rotaryRows = _capacity + 16;
            var cos = new float[_rotaryRows * half];
            var sin = new float[cos.Length];
            for (int p = 0; p < _rotaryRows; p++)
            {
                for (int t = 0; t < half; t++)
                {
                    double theta = p * Math.Pow(10000.0, -2.0 * t / s.RotaryDim);
                    cos[(p * half) + t] = (float)Math.Cos(theta);
                    sin[(p * half) + t] = (float)Math.Sin(theta);
                }
            }

            cos = ForwardRun.RoundAll(s.Dtype, cos);
            sin = ForwardRun.RoundAll(s.Dtype, sin);
            _cos = AttentionReference.ToDouble(cos);
            _sin = AttentionReference.ToDouble(sin);
            _dcos = Own(DeviceArray.Upload(_device, s.Dtype, cos));
            _dsin = Own(DeviceArray.Upload(_device, s.Dtype, sin));
        }

        Cache = s.DescalesPerCall
            ? KvCache.Wrap(_dk.Tensor(CacheShape), _dv.Tensor(CacheShape), _lens, table, stream: stream)
            : KvCache.Wrap(_dk.Tensor(CacheShape), _dv.Tensor(CacheShape), _lens, table, stream: stream, keyDescale: _dkd, valueDescale: _dvd);
        if (s.Pads is not null)
        {
            Cache.SetLeftPadding(s.Pads, stream);
        }
    }

    private T Own<T>(T disposable)
        where T : IDisposable
    {
        _owned.Add(disposable);
        return disposable;
    }

    /// <summary>
    /// Three decodes queued on one stream over different rows and token counts, each judged against the reference over
    /// the host state the previous ones left: rows [2, 0] (2 queries, 3 new keys), then [1, 2] (row 2 again, now longer;
    /// 1 and 1, 3 splits), then every row (3 and 2). The cache needs 4 rows and 16 positions of spare capacity.
    /// </summary>
    public void StepsOverDifferentRows(FlashAttention attention, CudaStream stream, string context)
    {
        Step(attention, stream, [2, 0], seqQ: 2, seqKNew: 3, numSplits: 0, context + ", step 1");
        Step(attention, stream, [1, 2], seqQ: 1, seqKNew: 1, numSplits: 3, context + ", step 2");
        Step(attention, stream, null, seqQ: 3, seqKNew: 2, numSplits: 0, context + ", step 3");
    }

    /// <summary>
    /// One decode over <paramref name="rows"/> (null: every row), judged; then the host mirror holds the new state. With
    /// <paramref name="queryCounts"/> / <paramref name="appendCounts"/> (C ABI 0.12) q (one spare row past the counts,
    /// NaN) and kNew are packed and each sequence has its own counts; seqQ / seqKNew are then ignored.
    /// </summary>
    public void Step(
        FlashAttention attention, CudaStream stream, int[]? rows, int seqQ, int seqKNew, int numSplits, string context,
        int[]? queryCounts = null, int[]? appendCounts = null)
    {
        ServingSpec s = _spec;
        int[] stepRows = rows ?? [.. Enumerable.Range(0, s.Pool)];
        int batch = stepRows.Length, d = s.HeadDim;
        int[] qn = queryCounts ?? Enumerable.Repeat(seqQ, batch).ToArray();
        int[] kc = appendCounts ?? Enumerable.Repeat(seqKNew, batch).ToArray();
        int[] q0 = new int[batch], k0 = new int[batch];
        for (int b = 1; b < batch; b++)
        {
            q0[b] = q0[b - 1] + qn[b - 1];
            k0[b] = k0[b - 1] + kc[b - 1];
        }

        int totalQ = qn.Sum(), totalK = kc.Sum(), qRows = totalQ + (queryCounts is null ? 0 : 1);
        Random random = _random;
        float[] q = ForwardRun.RoundAll(s.Dtype, TestRandom.Normal(random, qRows * s.HeadsQ * d));
        float[] kn = ForwardRun.RoundAll(s.Dtype, TestRandom.Normal(random, Math.Max(1, totalK * Row)));
        float[] vn = ForwardRun.RoundAll(s.Dtype, TestRandom.Normal(random, Math.Max(1, totalK * Row)));
        if (queryCounts is not null)
        {
            Array.Fill(q, float.NaN, totalQ * s.HeadsQ * d, s.HeadsQ * d);  // the spare row: never read
        }

        using var dq = DeviceArray.Upload(_device, s.Dtype, q);
        using var dkn = DeviceArray.Upload(_device, s.Dtype, kn);
        using var dvn = DeviceArray.Upload(_device, s.Dtype, vn);
        using var dout = DeviceArray.Allocate(_device, s.Dtype, q.Length);
        using var dlse = DeviceArray.Allocate(_device, DataType.Float32, qRows * s.HeadsQ);
        dout.Poison();
        dlse.Poison();
        // ALiBi slopes (FA2's test draw, rand * 0.3), [Hq] or [batch, Hq]; fp32 on the device, exactly these in the reference.
        float[]? slopes = s.HasAlibi
            ? TestRandom.Uniform(random, s.Alibi == "batch" ? batch * s.HeadsQ : s.HeadsQ, 0, 0.3).Select(x => (float)x).ToArray()
            : null;
        using var dslopes = slopes is null ? null : DeviceArray.Upload(_device, DataType.Float32, slopes);
        bool append = appendCounts is null ? seqKNew > 0 : totalK > 0;
        long[] newShape = appendCounts is null ? [batch, seqKNew, s.HeadsKv, d] : [totalK, s.HeadsKv, d];
        long[] qShape = queryCounts is null ? [batch, seqQ, s.HeadsQ, d] : [qRows, s.HeadsQ, d];
        long[] lseShape = queryCounts is null ? [batch, s.HeadsQ, seqQ] : [s.HeadsQ, qRows];
        var args = new DecodeArguments(
            dq.Tensor(qShape), Cache, append ? dkn.Tensor(newShape) : null, append ? dvn.Tensor(newShape) : null,
            dout.Tensor(qShape), dlse.Tensor(lseShape), numSplits)
        {
            CacheRows = rows,
            QueryCounts = queryCounts,
            AppendCounts = appendCounts,
            AlibiSlopes = dslopes?.Tensor(s.Alibi == "batch" ? [batch, s.HeadsQ] : [s.HeadsQ]),
            Rotary = s.RotaryDim > 0 && append
                ? new RotaryEmbedding(_dcos!.Tensor([_rotaryRows, s.RotaryDim / 2]), _dsin!.Tensor([_rotaryRows, s.RotaryDim / 2]), s.RotaryInterleaved)
                : null,
            KeyDescale = s.DescalesPerCall ? _dkd : null,
            ValueDescale = s.DescalesPerCall ? _dvd : null,
        };
        bool rotary = args.Rotary is not null;
        AttentionOptions options = s.Mask.ToOptions();
        attention.Decode(args, options, stream);
        stream.Synchronize();
        float[] ours = dout.Read(), lse = dlse.Read();
        if (queryCounts is not null)
        {
            // The spare row past the counts is never written (out and lse keep their poison), then judged no further.
            int spareOut = totalQ * s.HeadsQ * d;
            Assert.That(ours.Skip(spareOut).All(float.IsNaN), Is.True, $"{context}: out's row past the counts was written");
            Assert.That(Enumerable.Range(0, s.HeadsQ).All(h => float.IsNaN(lse[(h * qRows) + totalQ])), Is.True, $"{context}: lse's column past the counts was written");
            ours = ours[..spareOut];
            lse = Enumerable.Range(0, s.HeadsQ).SelectMany(h => lse.Skip(h * qRows).Take(totalQ)).ToArray();
            q = q[..spareOut];
        }

        // The reference, over the host mirror (it appends into _k/_v itself).
        int[] lens = stepRows.Select(r => _lens[r]).ToArray();
        int[] pads = stepRows.Select(r => Cache.LeftPadding[r]).ToArray();
        var serving = new DecodeServingOptions
        {
            SeqLenQ = queryCounts is null ? seqQ : null, QueryCounts = queryCounts, AppendCounts = appendCounts,
            CacheBatchIndex = stepRows, CacheRows = s.Pool, CacheLeftPad = pads,
            AlibiSlopes = slopes?.Select(x => (double)x).ToArray(),
            RotaryCos = rotary ? _cos : null, RotarySin = rotary ? _sin : null, RotaryDim = rotary ? s.RotaryDim : 0,
            RotaryInterleaved = s.RotaryInterleaved,
        };
        var refOut = new double[q.Length];
        var refLse = new double[lse.Length];
        double[] qd = AttentionReference.ToDouble(q);
        double[] knd = append ? AttentionReference.ToDouble(kn) : [], vnd = append ? AttentionReference.ToDouble(vn) : [];
        // The float64 reference over the host mirror (it appends into _k/_v itself when given new keys).
        void Reference(double[] queries, int[] lengths, double[] keysNew, double[] valuesNew, int appended, DecodeServingOptions opts, double[] o, double[] l)
        {
            if (s.Fp8Cache)
            {
                // The fp8 cache's reference reads its bytes times the factors and quantizes what it appends (C ABI 0.13).
                DecodeServingOptions fp8 = opts with { KeyDescale = _kd, ValueDescale = _vd, QueryDataType = s.Dtype };
                if (s.Paged)
                {
                    DecodeReference.ForwardPaged(queries, _k8, _v8, _table, lengths, keysNew, valuesNew, appended, s.HeadsQ, s.HeadsKv, d, s.BlockSize, options, fp8, o, l);
                }
                else
                {
                    DecodeReference.ForwardContiguous(queries, _k8, _v8, lengths, keysNew, valuesNew, appended, s.HeadsQ, s.HeadsKv, d, _capacity, options, fp8, o, l);
                }
            }
            else if (s.Paged)
            {
                DecodeReference.ForwardPaged(queries, _k, _v, _table, lengths, keysNew, valuesNew, appended, s.HeadsQ, s.HeadsKv, d, s.BlockSize, options, opts, o, l);
            }
            else
            {
                DecodeReference.ForwardContiguous(queries, _k, _v, lengths, keysNew, valuesNew, appended, s.HeadsQ, s.HeadsKv, d, _capacity, options, opts, o, l);
            }
        }

        Reference(qd, lens, knd, vnd, appendCounts is null ? seqKNew : 0, serving, refOut, refLse);

        // The cache: exactly the mirror (appended rows in their pool rows' slots, NaN everywhere else unchanged). With
        // rotary the appended keys are the float64 rotation in the mirror and the GPU's fp32 rotation rounded once to the
        // dtype: within one unit in the last place, after which the mirror takes the stored value (what later steps and
        // the same-dtype naive attention read).
        var rotatedSlots = new HashSet<long>();
        if (rotary)
        {
            for (int b = 0; b < batch; b++)
            {
                for (int j = 0; j < kc[b]; j++)
                {
                    rotatedSlots.Add(RowOf(stepRows[b], lens[b] + j));
                }
            }
        }

        double ulp = s.Dtype == DataType.BFloat16 ? 1.0 / 128 : 1.0 / 1024;
        if (s.Fp8Cache)
        {
            CheckFloat8Cache(rotatedSlots, context);
        }

        foreach (var (device, host, name) in s.Fp8Cache ? [] : new[] { (_dk, _k, "k"), (_dv, _v, "v") })
        {
            float[] back = device.Read();
            int wrong = 0;
            string first = string.Empty;
            for (long e = 0; e < back.Length; e++)
            {
                bool rotated = name == "k" && rotatedSlots.Contains(e / Row);
                bool same = double.IsNaN(host[e]) ? float.IsNaN(back[e])
                    : rotated ? Math.Abs(back[e] - host[e]) <= (ulp * Math.Abs(host[e])) + 1e-6 : back[e] == host[e];
                if (!same && wrong++ == 0)
                {
                    first = $"{name} element {e} (cache row {e / Row}) is {back[e]}, expected {host[e]}{(rotated ? " (rotated key)" : string.Empty)}";
                }

                if (rotated)
                {
                    host[e] = back[e];
                }
            }

            Assert.That(wrong, Is.Zero, $"{context}: {wrong} wrong {name} cache elements; first: {first}");
        }

        // The same-dtype naive attention sees the queries as the kernel does: rotated and rounded to the dtype.
        float[] qNaive = q;
        if (rotary)
        {
            qNaive = (float[])q.Clone();
            bool perRow = options.Causal || options.WindowLeft < _capacity || options.WindowRight < _capacity;  // FA2: a side >= capacity is no window
            int half = s.RotaryDim / 2;
            var x = new double[d];
            for (int b = 0; b < batch; b++)
            {
                for (int i = 0; i < qn[b]; i++)
                {
                    int position = lens[b] + (perRow ? i : 0);
                    for (int h = 0; h < s.HeadsQ; h++)
                    {
                        int at = (((q0[b]) + i) * s.HeadsQ * d) + (h * d);
                        for (int e = 0; e < d; e++)
                        {
                            x[e] = q[at + e];
                        }

                        DecodeReference.Rotate(x, _cos.AsSpan(position * half, half), _sin.AsSpan(position * half, half), s.RotaryDim, s.RotaryInterleaved);
                        for (int e = 0; e < d; e++)
                        {
                            qNaive[at + e] = DeviceArray.Round(s.Dtype, (float)x[e]);
                        }
                    }
                }
            }
        }

        // With rotary the kernel rotates q in fp32 and rounds it to the dtype before the products (as FlashAttention
        // does), so the output and the LSE are judged against the float64 attention of that q (qNaive) over the cache as
        // stored (the mirror now holds the kernel's rotated keys), not of the unrounded float64 rotation, whose LSE
        // differs by the rounding of q (about 1e-3 in bf16, past the LSE bar of 1e-4 that assumes exact inputs). The
        // rotation itself is judged on the appended keys above (one unit in the last place of the float64 rotation),
        // and a wrong rotation of q fails this judgement (qNaive is rotated here, from the tables, independently).
        double[] judgeOut = refOut, judgeLse = refLse;
        if (rotary)
        {
            int[] after = lens.Select((l, b) => l + kc[b]).ToArray();
            DecodeServingOptions plain = serving with { RotaryCos = null, RotarySin = null, RotaryDim = 0, AppendCounts = null };
            judgeOut = new double[q.Length];
            judgeLse = new double[lse.Length];
            Reference(AttentionReference.ToDouble(qNaive), after, [], [], 0, plain, judgeOut, judgeLse);
        }

        DecodeAccuracyTests.JudgeOutput(ours, Naive(qNaive, stepRows, lens, pads, qn, kc, slopes), judgeOut, lse, judgeLse, s.Dtype, context);

        for (int b = 0; b < batch; b++)
        {
            _lens[stepRows[b]] += kc[b];
        }

        Cache.Synchronize();
        var deviceLengths = new int[s.Pool];
        ((DeviceBuffer<int>)Cache.CacheSeqLens.Owner!).CopyTo(deviceLengths);
        Assert.Multiple(() =>
        {
            Assert.That(Cache.SequenceLengths, Is.EqualTo(_lens), $"{context}: host lengths");
            Assert.That(deviceLengths, Is.EqualTo(_lens), $"{context}: device lengths");
        });
    }

    /// <summary>
    /// The fp8 cache read back against its mirror, byte for byte: every byte unchanged but the appended ones, which are
    /// the reference's quantization (the contract's: the 16-bit value divided by its factor in fp32, rounded to e4m3
    /// nearest even, saturated), and 0x7F wherever nothing was written. Keys appended with rotary may be one e4m3 step
    /// away: the kernels rotate in fp32 and round to q's dtype where the reference rotates in float64, so the 16-bit key
    /// can differ by one unit in its last place (as the 16-bit cache's check allows), and quantizing two neighbouring
    /// 16-bit values gives the same or neighbouring e4m3 codes, never codes further apart. The mirror then takes the
    /// stored byte (what later steps and the naive attention read).
    /// </summary>
    private void CheckFloat8Cache(HashSet<long> rotatedSlots, string context)
    {
        // Position on the number line: codes of one sign are ordered by magnitude, -0 and +0 are the same point.
        static int Ordinal(byte bits) => (bits & 0x80) != 0 ? -(bits & 0x7F) : bits & 0x7F;
        foreach (var (device, host, name) in new[] { (_dk, _k8, "k"), (_dv, _v8, "v") })
        {
            byte[] back = device.ReadBytes();
            int wrong = 0, moved = 0;
            string first = string.Empty;
            for (long e = 0; e < back.Length; e++)
            {
                byte expected = host[e].ToBits();
                bool rotated = name == "k" && rotatedSlots.Contains(e / Row);
                bool same = Float8E4M3.IsNaN(host[e]) ? Float8E4M3.IsNaN(Float8E4M3.FromBits(back[e]))
                    : rotated ? !Float8E4M3.IsNaN(Float8E4M3.FromBits(back[e])) && Math.Abs(Ordinal(back[e]) - Ordinal(expected)) <= 1
                    : back[e] == expected;
                if (!same && wrong++ == 0)
                {
                    first = $"{name} element {e} (cache row {e / Row}) is 0x{back[e]:X2} ({(float)Float8E4M3.FromBits(back[e])}), expected 0x{expected:X2} " +
                        $"({(float)host[e]}){(rotated ? " (rotated key: within one e4m3 step)" : string.Empty)}";
                }

                if (rotated)
                {
                    moved += back[e] != expected ? 1 : 0;
                    host[e] = Float8E4M3.FromBits(back[e]);
                }
            }

            Assert.That(wrong, Is.Zero, $"{context}: {wrong} wrong {name} cache bytes; first: {first}");
            if (moved > 0)
            {
                TestContext.Out.WriteLine($"{context}: {moved} rotated {name} bytes one e4m3 step from the float64 rotation's");
            }
        }
    }

    /// <summary>
    /// Same-dtype naive attention per sequence over its keys pad .. total - 1 (from the mirror after the append), with
    /// FlashAttention-2's ALiBi bias when <paramref name="slopes"/> is given: keys counted from the pad, the causal column
    /// form +m·j for a causal mask without a left window shorter than the capacity (kept for one new token), else
    /// -m·|i + sk - sq - j| (written out here, independently of the reference).
    /// </summary>
    private float[] Naive(float[] q, int[] rows, int[] lens, int[] pads, int[] queryCounts, int[] appendCounts, float[]? slopes = null)
    {
        ServingSpec s = _spec;
        int rowQ = s.HeadsQ * s.HeadDim;
        var result = new float[q.Length];
        int qStart = 0;
        for (int b = 0; b < rows.Length; b++)
        {
            int seqQ = queryCounts[b], qPer = seqQ * rowQ, start = qStart;
            qStart += qPer;
            if (seqQ == 0)
            {
                continue;
            }

            int total = lens[b] + appendCounts[b], sk = total - pads[b];
            var k = new float[Math.Max(1, sk * Row)];
            var v = new float[k.Length];
            for (int j = 0; j < sk; j++)
            {
                long at = RowOf(rows[b], pads[b] + j) * Row;
                for (int x = 0; x < Row; x++)
                {
                    k[(j * Row) + x] = AttendedKey(at + x);
                    v[(j * Row) + x] = AttendedValue(at + x);
                }
            }

            var dims = new AttentionDims(1, seqQ, sk, s.HeadsQ, s.HeadsKv, s.HeadDim);
            Func<int, int, int, int, float>? bias = null;
            if (slopes is not null)
            {
                bool columnForm = (s.Mask.Causal || s.Mask.Right == 0) && (s.Mask.Left is not { } left || left >= _capacity);
                int seq = b;
                float Slope(int h) => slopes.Length == s.HeadsQ ? slopes[h] : slopes[(seq * s.HeadsQ) + h];
                bias = (_, h, i, j) => columnForm ? Slope(h) * j : -Slope(h) * Math.Abs(i + sk - seqQ - j);
            }

            NaiveAttention.ForwardSameDtype(q[start..(start + qPer)], k, v, dims, s.Mask, (float)(1.0 / Math.Sqrt(s.HeadDim)),
                x => DeviceArray.Round(s.Dtype, x), bias).CopyTo(result, start);
        }

        return result;
    }

    public void Dispose()
    {
        Cache?.Dispose();
        foreach (IDisposable d in _owned)
        {
            d.Dispose();
        }
    }
}
