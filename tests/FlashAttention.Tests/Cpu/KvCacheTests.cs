using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// <see cref="KvCache"/> without a GPU: what <see cref="KvCache.Wrap"/> accepts and refuses over raw-pointer views
/// (nothing is dereferenced or allocated when the caller passes the lengths array), the geometry it derives, and its
/// life cycle, fp8 (Float8E4M3) views with their descale factors included (Float8KvCacheTests has the rest of the fp8
/// cache). The owned caches and their block allocator need device memory and are tested in the Gpu fixture.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class KvCacheTests
{
    private const long K = 0x2000_0000, V = 0x3000_0000, SL = 0x7100_0000, BT = 0x7200_0000, KD = 0x7800_0000, VD = 0x7900_0000;

    private static DeviceTensor T(long address, DataType dtype, params long[] shape) => DeviceTensor.FromPointer((IntPtr)address, dtype, shape);

    private static DeviceTensor TS(long address, DataType dtype, long[] shape, long[] strides) => DeviceTensor.FromPointer((IntPtr)address, dtype, shape, strides);

    [Test]
    public void WrapContiguousDerivesTheGeometry()
    {
        using KvCache cache = KvCache.Wrap(T(K, DataType.BFloat16, 3, 100, 2, 64), T(V, DataType.BFloat16, 3, 100, 2, 64), [0, 1, 100], cacheSeqLens: T(SL, DataType.Int32, 3));
        Assert.Multiple(() =>
        {
            Assert.That(cache.IsPaged, Is.False);
            Assert.That(cache.OwnsMemory, Is.False);
            Assert.That(cache.HasBlockAllocator, Is.False);
            Assert.That(cache.DataType, Is.EqualTo(DataType.BFloat16));
            Assert.That(cache.BatchSize, Is.EqualTo(3));
            Assert.That(cache.Capacity, Is.EqualTo(100));
            Assert.That(cache.HeadsKv, Is.EqualTo(2));
            Assert.That(cache.HeadDim, Is.EqualTo(64));
            Assert.That(cache.BlockSize, Is.Zero);
            Assert.That(cache.NumBlocks, Is.Zero);
            Assert.That(cache.MaxBlocksPerSequence, Is.Zero);
            Assert.That(cache.BlockTable, Is.Null);
            Assert.That(cache.HostBlockTable, Is.Null);
            Assert.That(cache.FreeBlockCount, Is.Zero);
            Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 0, 1, 100 }));
            Assert.That(cache.Device, Is.Null);
            Assert.That(cache.CacheSeqLens.Pointer, Is.EqualTo((IntPtr)SL));
            Assert.That(cache.ToString(), Does.Contain("contiguous capacity 100").And.Contain("view"));
        });
    }

    [Test]
    public void WrapPagedDerivesTheGeometry()
    {
        using KvCache cache = KvCache.Wrap(
            T(K, DataType.Float16, 40, 32, 1, 128), T(V, DataType.Float16, 40, 32, 1, 128), [5, 0], T(BT, DataType.Int32, 2, 7), T(SL, DataType.Int32, 2));
        Assert.Multiple(() =>
        {
            Assert.That(cache.IsPaged, Is.True);
            Assert.That(cache.BlockSize, Is.EqualTo(32));
            Assert.That(cache.NumBlocks, Is.EqualTo(40));
            Assert.That(cache.MaxBlocksPerSequence, Is.EqualTo(7));
            Assert.That(cache.Capacity, Is.EqualTo(7 * 32));
            Assert.That(cache.HasBlockAllocator, Is.False, "a view's block table belongs to the caller");
            Assert.That(cache.HostBlockTable, Is.Null);
            Assert.That(cache.ToString(), Does.Contain("paged 40 blocks of 32"));
        });
    }

    public static IEnumerable<TestCaseData> BadWraps()
    {
        TestCaseData Case(string name, Action wrap, string param, params string[] fragments) =>
            new TestCaseData(wrap, param, fragments).SetName($"Wrap rejects: {name}");

        DeviceTensor k = T(K, DataType.Float16, 2, 64, 2, 64), v = T(V, DataType.Float16, 2, 64, 2, 64), sl = T(SL, DataType.Int32, 2);
        DeviceTensor kp = T(K, DataType.Float16, 10, 16, 2, 64), vp = T(V, DataType.Float16, 10, 16, 2, 64), bt = T(BT, DataType.Int32, 2, 4);

        yield return Case("keys rank 3", () => KvCache.Wrap(T(K, DataType.Float16, 2, 64, 128), v, [0, 0], cacheSeqLens: sl), "keys", "rank 4");
        yield return Case("keys fp32", () => KvCache.Wrap(T(K, DataType.Float32, 2, 64, 2, 64), v, [0, 0], cacheSeqLens: sl), "keys", "Float16, BFloat16 or Float8E4M3");
        yield return Case("values bf16, keys fp16", () => KvCache.Wrap(k, T(V, DataType.BFloat16, 2, 64, 2, 64), [0, 0], cacheSeqLens: sl), "values", "dtype");
        yield return Case("values shape differs", () => KvCache.Wrap(k, T(V, DataType.Float16, 2, 63, 2, 64), [0, 0], cacheSeqLens: sl), "values", "shape");
        yield return Case("head_dim not contiguous", () => KvCache.Wrap(TS(K, DataType.Float16, [2, 64, 2, 64], [64 * 256, 256, 128, 2]), v, [0, 0], cacheSeqLens: sl), "keys", "contiguous");
        yield return Case("no sequence", () => KvCache.Wrap(k, v, [], cacheSeqLens: sl), "sequenceLengths", "at least one");
        yield return Case("contiguous batch differs from the lengths", () => KvCache.Wrap(k, v, [0, 0, 0], cacheSeqLens: T(SL, DataType.Int32, 3)), "sequenceLengths", "batch");
        yield return Case("negative length", () => KvCache.Wrap(k, v, [-1, 0], cacheSeqLens: sl), "sequenceLengths", "0 .. 64");
        yield return Case("length past the capacity", () => KvCache.Wrap(k, v, [0, 65], cacheSeqLens: sl), "sequenceLengths", "0 .. 64");
        yield return Case("paged length past pages * block size", () => KvCache.Wrap(kp, vp, [0, 65], bt, sl), "sequenceLengths", "0 .. 64");
        yield return Case("block table fp32", () => KvCache.Wrap(kp, vp, [0, 0], T(BT, DataType.Float32, 2, 4), sl), "blockTable", "max_blocks_per_seq");
        yield return Case("block table rank 1", () => KvCache.Wrap(kp, vp, [0, 0], T(BT, DataType.Int32, 8), sl), "blockTable", "Int32 matrix");
        yield return Case("block table rows differ from the batch", () => KvCache.Wrap(kp, vp, [0, 0], T(BT, DataType.Int32, 3, 4), sl), "blockTable", "3 rows");
        yield return Case("cache_seqlens wrong length", () => KvCache.Wrap(k, v, [0, 0], cacheSeqLens: T(SL, DataType.Int32, 3)), "cacheSeqLens", "cache_seqlens");
        yield return Case("cache_seqlens fp32", () => KvCache.Wrap(k, v, [0, 0], cacheSeqLens: T(SL, DataType.Float32, 2)), "cacheSeqLens", "Int32");
        yield return Case("cache_seqlens strided", () => KvCache.Wrap(k, v, [0, 0], cacheSeqLens: TS(SL, DataType.Int32, [2], [2])), "cacheSeqLens", "contiguous");
        yield return Case("raw pointers without a lengths array", () => KvCache.Wrap(k, v, [0, 0]), "cacheSeqLens", "device");

        // An fp8 cache's descale factors (C ABI 0.13): Float32 [heads_kv] or [1], both or neither, Float8E4M3 keys only.
        DeviceTensor k8 = T(K, DataType.Float8E4M3, 2, 64, 2, 64), v8 = T(V, DataType.Float8E4M3, 2, 64, 2, 64);
        DeviceTensor kd = T(KD, DataType.Float32, 2), vd = T(VD, DataType.Float32, 2);
        yield return Case("descales over an fp16 cache", () => KvCache.Wrap(k, v, [0, 0], cacheSeqLens: sl, keyDescale: kd, valueDescale: vd), "keyDescale", "k_descale", "Float8E4M3");
        yield return Case("keyDescale without valueDescale", () => KvCache.Wrap(k8, v8, [0, 0], cacheSeqLens: sl, keyDescale: kd), "keyDescale", "v_descale", "both");
        yield return Case("valueDescale without keyDescale", () => KvCache.Wrap(k8, v8, [0, 0], cacheSeqLens: sl, valueDescale: vd), "valueDescale", "k_descale");
        yield return Case("keyDescale fp16", () => KvCache.Wrap(k8, v8, [0, 0], cacheSeqLens: sl, keyDescale: T(KD, DataType.Float16, 2), valueDescale: vd), "keyDescale", "k_descale", "Float32");
        yield return Case("valueDescale [3] for 2 kv heads", () => KvCache.Wrap(k8, v8, [0, 0], cacheSeqLens: sl, keyDescale: kd, valueDescale: T(VD, DataType.Float32, 3)), "valueDescale", "v_descale", "heads_kv=2");
        yield return Case("keyDescale [batch, heads_kv]", () => KvCache.Wrap(k8, v8, [0, 0], cacheSeqLens: sl, keyDescale: T(KD, DataType.Float32, 2, 2), valueDescale: vd), "keyDescale", "rank 1");
        yield return Case("fp8 keys, fp16 values", () => KvCache.Wrap(k8, v, [0, 0], cacheSeqLens: sl, keyDescale: kd, valueDescale: vd), "values", "one dtype");
    }

    [TestCaseSource(nameof(BadWraps))]
    public void WrapRejectsAndNamesTheArgument(Action wrap, string param, string[] fragments)
    {
        var ex = Assert.Throws(Is.InstanceOf<ArgumentException>(), () => wrap()) as ArgumentException;
        Assert.Multiple(() =>
        {
            Assert.That(ex!.ParamName, Is.EqualTo(param), ex.Message);
            foreach (string fragment in fragments)
            {
                Assert.That(ex.Message, Does.Contain(fragment));
            }
        });
    }

    [Test]
    public void SetLeftPaddingChecksThePadsBeforeItNeedsADevice()
    {
        // A raw-pointer view has no device for the copy, so a valid call ends in InvalidOperationException; the count
        // and range checks come first (a mutation pass found the count check untested).
        using KvCache cache = KvCache.Wrap(T(K, DataType.Float16, 2, 64, 2, 64), T(V, DataType.Float16, 2, 64, 2, 64), [5, 9], cacheSeqLens: T(SL, DataType.Int32, 2));
        Assert.Multiple(() =>
        {
            Assert.That(() => cache.SetLeftPadding([0]),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("pads").And.Message.Contain("pads has 1 entries but the cache holds 2 rows"));
            Assert.That(() => cache.SetLeftPadding([0, 0, 0]),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("pads").And.Message.Contain("pads has 3 entries"));
            Assert.That(() => cache.SetLeftPadding([0, 10]),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("pads").And.Message.Contain("pads[1] is 10"));
            Assert.That(() => cache.SetLeftPadding([-1, 0]),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("pads").And.Message.Contain("pads[0] is -1"));
            Assert.That(() => cache.SetLeftPadding([5, 9]), Throws.InvalidOperationException, "valid pads: the view has no device");
        });
    }

    [Test]
    public void WrapRejectsNullTensors()
    {
        DeviceTensor k = T(K, DataType.Float16, 1, 8, 1, 64);
        Assert.Multiple(() =>
        {
            Assert.That(() => KvCache.Wrap(null!, k, [0]), Throws.ArgumentNullException.With.Property("ParamName").EqualTo("keys"));
            Assert.That(() => KvCache.Wrap(k, null!, [0]), Throws.ArgumentNullException.With.Property("ParamName").EqualTo("values"));
        });
    }

    [Test]
    public void CreateRejectsANullDevice()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => KvCache.CreateContiguous(null!, DataType.Float16, 1, 16, 1, 64), Throws.ArgumentNullException);
            Assert.That(() => KvCache.CreatePaged(null!, DataType.Float16, 1, 4, 16, 1, 64), Throws.ArgumentNullException);
        });
    }

    [Test]
    public void WrapCopiesTheLengths()
    {
        int[] lengths = [4, 9];
        using KvCache cache = KvCache.Wrap(T(K, DataType.Float16, 2, 16, 1, 64), T(V, DataType.Float16, 2, 16, 1, 64), lengths, cacheSeqLens: T(SL, DataType.Int32, 2));
        lengths[0] = 7;
        Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 4, 9 }), "the cache keeps its own host copy");
    }

    [Test]
    public void AViewOfRawPointersCannotBeUpdated()
    {
        using KvCache cache = KvCache.Wrap(T(K, DataType.Float16, 2, 16, 1, 64), T(V, DataType.Float16, 2, 16, 1, 64), [4, 9], cacheSeqLens: T(SL, DataType.Int32, 2));
        Assert.Multiple(() =>
        {
            Assert.That(() => cache.SetSequenceLengths([1, 2]), Throws.InvalidOperationException.With.Message.Contains("device"));
            Assert.That(() => cache.SetSequenceLengths([1]), Throws.ArgumentException.With.Message.Contains("2 sequences"));
            Assert.That(() => cache.SetSequenceLengths([1, 17]), Throws.ArgumentException.With.Message.Contains("0 .. 16"));
            Assert.That(() => cache.ResetSequence(2), Throws.InstanceOf<ArgumentOutOfRangeException>());
            Assert.That(cache.SequenceLengths, Is.EqualTo(new[] { 4, 9 }), "a refused update changes nothing");
        });
    }

    [Test]
    public void DisposeIsIdempotentAndMarksTheCache()
    {
        KvCache cache = KvCache.Wrap(T(K, DataType.Float16, 1, 16, 1, 64), T(V, DataType.Float16, 1, 16, 1, 64), [0], cacheSeqLens: T(SL, DataType.Int32, 1));
        cache.Dispose();
        cache.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(cache.IsDisposed, Is.True);
            Assert.That(cache.ToString(), Does.Contain("disposed"));
            Assert.That(() => cache.SetSequenceLengths([0]), Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => cache.CopyKeysTo(new Half[1024]), Throws.TypeOf<ObjectDisposedException>());
        });
    }

    [Test]
    public void CopyOutChecksTheDestination()
    {
        using KvCache cache = KvCache.Wrap(T(K, DataType.Float16, 1, 16, 1, 64), T(V, DataType.Float16, 1, 16, 1, 64), [0], cacheSeqLens: T(SL, DataType.Int32, 1));
        Assert.Multiple(() =>
        {
            Assert.That(() => cache.CopyKeysTo(new float[1024]), Throws.ArgumentException.With.Message.Contains("4 bytes"));
            Assert.That(() => cache.CopyValuesTo(new Half[1000]), Throws.ArgumentException.With.Message.Contains("1024"));
        });
    }
}
