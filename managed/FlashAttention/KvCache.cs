using System.Collections.ObjectModel;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using FlashAttn.Internal;
using FlashAttn.Native;

namespace FlashAttn;

/// <summary>
/// A key/value cache for <see cref="FlashAttention.Decode(in DecodeArguments, AttentionOptions, CudaStream)"/>: the K and V arrays, the number of tokens each sequence
/// holds (a host copy and a device int32 <c>[BatchSize]</c> array, kept in step), and for a paged cache the device
/// block table. After a successful decode that appends new keys and values, the lengths advance by the number of new
/// tokens on both sides.
/// </summary>
/// <remarks>
/// <para>
/// Two layouts. <b>Contiguous</b>: K and V are <c>[BatchSize, Capacity, HeadsKv, HeadDim]</c> and position <c>p</c>
/// of sequence <c>b</c> is row <c>[b, p]</c>. <b>Paged</b>: K and V are <c>[NumBlocks, BlockSize, HeadsKv, HeadDim]</c>
/// and an int32 block table <c>[BatchSize, MaxBlocksPerSequence]</c> names the physical block of each page, so position
/// <c>p</c> of sequence <c>b</c> is row <c>p % BlockSize</c> of block <c>blockTable[b, p / BlockSize]</c>; a sequence
/// holds at most <c>MaxBlocksPerSequence * BlockSize</c> positions. The native library decides which block sizes it
/// serves (powers of two from 16 up; <see cref="FlashAttention.CheckDecode(in DecodeArguments, out string, AttentionOptions, int)"/> names <c>block_size</c> otherwise).
/// </para>
/// <para>
/// A cache is either <b>owned</b> (<see cref="CreateContiguous"/>, <see cref="CreatePaged"/>: the device memory is
/// allocated here and freed on <see cref="Dispose"/>; a paged one also allocates blocks to sequences itself, from a
/// free list, as they grow) or a <b>view</b> (<see cref="Wrap"/>: K, V and the block table are the caller's tensors and
/// are never freed here; the caller fills the block table, and every page a decode reads or appends into must name a
/// valid block).
/// </para>
/// <para>
/// The device copies of the lengths (and, for an owned paged cache, of changed block-table rows) are updated with
/// asynchronous copies on the stream of the call that changed them, so queue the next decode on the same stream (or
/// synchronise first). Those copies read host snapshots that stay pinned until the copy is done; they make a decode
/// that appends not capturable into a CUDA graph (a decode without new keys queues no copy, unless it passes
/// CacheRows, QueryCounts or AppendCounts, whose per-step arrays are copied the same way). Not thread-safe: use one
/// cache from one thread at a time.
/// </para>
/// <para>
/// <b>Serving</b> (C ABI 0.7, flash-attn's <c>cache_batch_idx</c> and <c>cache_leftpad</c>): the cache's
/// <see cref="BatchSize"/> rows are a pool. A decode with <see cref="DecodeArguments.CacheRows"/> runs a step for a
/// subset or permutation of them (sequence <c>b</c> of q uses row <c>CacheRows[b]</c>; continuous batching), and
/// <see cref="SetLeftPadding"/> gives each row a first valid position (keys before it are never read, the masks are
/// bottom-right over the rest). A step with <see cref="DecodeArguments.CacheRows"/> queues one small copy of the step's
/// lengths, row indices and pads before the call and, when it appends, one of the pool's lengths after it; such a step
/// is not capturable into a CUDA graph either.
/// </para>
/// <para>
/// <b>FP8</b> (C ABI 0.13): a cache of <see cref="DataType.Float8E4M3"/> keys and values holds half the bytes of a
/// 16-bit one under the same Float16 or BFloat16 queries, new keys, new values and output. The key attended at a
/// position of KV head <c>h</c> is the stored e4m3 value times <c>KeyDescale[h]</c> (<c>KeyDescale[0]</c> for a
/// per-tensor factor), the value likewise with <see cref="ValueDescale"/>. A key a decode appends is first what a
/// 16-bit cache would store (rotated when the call has <see cref="DecodeArguments.Rotary"/>, rounded to q's dtype), then
/// divided by its factor in fp32 and rounded to e4m3 (nearest even, saturated to ±448, NaN kept). An owned fp8 cache
/// allocates its factors (all 1 until <see cref="SetDescales"/>); a view takes the caller's (<see cref="Wrap"/>), or
/// none, in which case every call passes them (<see cref="DecodeArguments.KeyDescale"/>). The factors are read by the
/// kernels only, so a captured graph uses what they hold at replay.
/// </para>
/// </remarks>
public sealed class KvCache : IDisposable
{
    private readonly SafeHandle? _ownedKeys;
    private readonly SafeHandle? _ownedValues;
    private readonly DeviceBuffer<int>? _ownedSeqLens;
    private readonly DeviceBuffer<int>? _ownedBlockTable;
    private readonly DeviceBuffer<float>? _ownedDescales;
    private readonly int[] _lengths;
    private readonly int[]? _hostBlockTable;
    private readonly Stack<int>? _freeBlocks;
    private readonly PendingUploads _uploads = new();
    private readonly int[] _pads;
    private bool _hasPads;

    // Device int32 [4 * BatchSize], allocated on first use: the rows' left pads [0, B), then one step's gathered
    // lengths, row indices and pads (3 x its batch) from B.
    private DeviceBuffer<int>? _serving;
    private int _disposed;

    private KvCache(
        DeviceTensor keys,
        DeviceTensor values,
        DeviceTensor cacheSeqLens,
        DeviceTensor? blockTable,
        int[] lengths,
        CudaDevice? device,
        SafeHandle? ownedKeys,
        SafeHandle? ownedValues,
        DeviceBuffer<int>? ownedSeqLens,
        DeviceBuffer<int>? ownedBlockTable,
        (DeviceTensor Keys, DeviceTensor Values)? descales = null,
        DeviceBuffer<float>? ownedDescales = null)
    {
        Keys = keys;
        Values = values;
        KeyDescale = descales?.Keys;
        ValueDescale = descales?.Values;
        _ownedDescales = ownedDescales;
        CacheSeqLens = cacheSeqLens;
        BlockTable = blockTable;
        Device = device;
        _lengths = lengths;
        SequenceLengths = new ReadOnlyCollection<int>(_lengths);
        _pads = new int[lengths.Length];
        LeftPadding = new ReadOnlyCollection<int>(_pads);
        _ownedKeys = ownedKeys;
        _ownedValues = ownedValues;
        _ownedSeqLens = ownedSeqLens;
        _ownedBlockTable = ownedBlockTable;
        DataType = keys.DataType;
        BatchSize = lengths.Length;
        HeadsKv = (int)keys.Shape[2];
        HeadDim = (int)keys.Shape[3];
        if (blockTable is null)
        {
            Capacity = (int)keys.Shape[1];
        }
        else
        {
            BlockSize = (int)keys.Shape[1];
            NumBlocks = (int)keys.Shape[0];
            MaxBlocksPerSequence = (int)blockTable.Shape[1];
            Capacity = (int)Math.Min(int.MaxValue, (long)BlockSize * MaxBlocksPerSequence);
            if (ownedBlockTable is not null)
            {
                _hostBlockTable = new int[(long)BatchSize * MaxBlocksPerSequence];
                Array.Fill(_hostBlockTable, -1);
                HostBlockTable = new ReadOnlyCollection<int>(_hostBlockTable);
                _freeBlocks = new Stack<int>(NumBlocks);
                for (int block = NumBlocks - 1; block >= 0; block--)
                {
                    _freeBlocks.Push(block);
                }
            }
        }
    }

    /// <summary>
    /// The first valid position of each row (flash-attn's <c>cache_leftpad</c>), 0 unless <see cref="SetLeftPadding"/>
    /// set it: a decode over row <c>r</c> attends to positions <c>LeftPadding[r] .. length - 1</c> only, with the causal
    /// mask and window bottom-right over those keys.
    /// </summary>
    public IReadOnlyList<int> LeftPadding { get; }

    /// <summary>The device the cache lives on, or null when every tensor was wrapped from a raw pointer.</summary>
    public CudaDevice? Device { get; }

    /// <summary>Element type of K and V: Float16, BFloat16, or Float8E4M3 for an fp8 cache (<see cref="IsFloat8"/>).</summary>
    public DataType DataType { get; }

    /// <summary>Whether K and V hold <see cref="DataType.Float8E4M3"/> elements, read through descale factors (C ABI 0.13).</summary>
    public bool IsFloat8 => DataType == DataType.Float8E4M3;

    /// <summary>
    /// The descale factors of an fp8 cache's keys (<c>k_descale</c>): device Float32 <c>[HeadsKv]</c> (one per KV head) or
    /// <c>[1]</c> (one for the whole cache); the key attended at a position of KV head <c>h</c> is the stored e4m3 value
    /// times factor <c>h</c> (or factor 0). Allocated by an owned fp8 cache (1 until <see cref="SetDescales"/>), the
    /// caller's for a view; null for a 16-bit cache, and for an fp8 view wrapped without factors (every call then passes
    /// <see cref="DecodeArguments.KeyDescale"/>).
    /// </summary>
    public DeviceTensor? KeyDescale { get; }

    /// <summary>The descale factors of an fp8 cache's values (<c>v_descale</c>), shaped like <see cref="KeyDescale"/>.</summary>
    public DeviceTensor? ValueDescale { get; }

    /// <summary>Number of sequences.</summary>
    public int BatchSize { get; }

    /// <summary>Key/value heads.</summary>
    public int HeadsKv { get; }

    /// <summary>Head dimension.</summary>
    public int HeadDim { get; }

    /// <summary>Whether the cache is paged (has a block table).</summary>
    public bool IsPaged => BlockTable is not null;

    /// <summary>Whether this object allocated (and will free) the K and V memory.</summary>
    public bool OwnsMemory => _ownedKeys is not null;

    /// <summary>Positions one sequence can hold: the capacity of a contiguous cache, <c>MaxBlocksPerSequence * BlockSize</c> of a paged one.</summary>
    public int Capacity { get; }

    /// <summary>Positions per block of a paged cache; 0 for a contiguous one.</summary>
    public int BlockSize { get; }

    /// <summary>Physical blocks of a paged cache; 0 for a contiguous one.</summary>
    public int NumBlocks { get; }

    /// <summary>Columns of the block table (pages per sequence) of a paged cache; 0 for a contiguous one.</summary>
    public int MaxBlocksPerSequence { get; }

    /// <summary>
    /// Blocks not given to any sequence, for an owned paged cache (which allocates blocks itself); 0 otherwise.
    /// </summary>
    public int FreeBlockCount => _freeBlocks?.Count ?? 0;

    /// <summary>Whether this cache hands out blocks to sequences itself (owned paged caches).</summary>
    public bool HasBlockAllocator => _freeBlocks is not null;

    /// <summary>The keys: <c>[BatchSize, Capacity, HeadsKv, HeadDim]</c> or <c>[NumBlocks, BlockSize, HeadsKv, HeadDim]</c>.</summary>
    public DeviceTensor Keys { get; }

    /// <summary>The values, shaped like <see cref="Keys"/>.</summary>
    public DeviceTensor Values { get; }

    /// <summary>The device copy of the sequence lengths: int32, <c>[BatchSize]</c>.</summary>
    public DeviceTensor CacheSeqLens { get; }

    /// <summary>The device block table of a paged cache, int32 <c>[BatchSize, MaxBlocksPerSequence]</c>; null when contiguous.</summary>
    public DeviceTensor? BlockTable { get; }

    /// <summary>Tokens each sequence holds (the host copy; it changes as the cache is used).</summary>
    public IReadOnlyList<int> SequenceLengths { get; }

    /// <summary>
    /// The host copy of the block table of an owned paged cache (row-major <c>[BatchSize, MaxBlocksPerSequence]</c>,
    /// -1 for pages without a block); null otherwise.
    /// </summary>
    public IReadOnlyList<int>? HostBlockTable { get; }

    /// <summary>Whether <see cref="Dispose"/> was called.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>Host copy of the lengths, for pinning during a native call.</summary>
    internal int[] HostLengths => _lengths;

    /// <summary>
    /// Allocates a contiguous cache <c>[batchSize, capacity, headsKv, headDim]</c> for K and for V (contents undefined),
    /// with every sequence empty. An fp8 cache (<see cref="DataType.Float8E4M3"/>) also allocates its descale factors,
    /// all 1 (<see cref="SetDescales"/> sets them).
    /// </summary>
    /// <param name="device">The device.</param>
    /// <param name="dataType">Float16 or BFloat16, or Float8E4M3 for an fp8 cache (read and appended by decodes with Float16 or BFloat16 queries).</param>
    /// <param name="batchSize">Sequences (1 or more).</param>
    /// <param name="capacity">Positions per sequence (1 or more).</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more; the kernels need a multiple of 8, of 16 for a Float8E4M3 cache).</param>
    /// <param name="stream">Stream to order the initialisation on (the call waits for it), or null for the legacy default stream.</param>
    /// <param name="descales">
    /// An fp8 cache's descale factors: one per KV head (<c>[headsKv]</c>, the default) or one for the whole cache
    /// (<c>[1]</c>), for the keys and for the values. Ignored for Float16 and BFloat16.
    /// </param>
    /// <returns>An owned cache.</returns>
    /// <exception cref="ArgumentException">A size is out of range, the data type is not Float16, BFloat16 or Float8E4M3, a Float8E4M3 cache's head dim is not a multiple of 16, or <paramref name="descales"/> is not a defined value.</exception>
    /// <exception cref="FlashAttentionException">An allocation failed.</exception>
    public static KvCache CreateContiguous(
        CudaDevice device,
        DataType dataType,
        int batchSize,
        int capacity,
        int headsKv,
        int headDim,
        CudaStream? stream = null,
        DescaleGranularity descales = DescaleGranularity.PerKvHead)
    {
        ArgumentNullException.ThrowIfNull(device);
        RequireCacheType(dataType, descales, headDim);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headsKv, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headDim, 1);
        long[] shape = [batchSize, capacity, headsKv, headDim];
        return CreateOwned(device, dataType, shape, batchSize, blockTableColumns: 0, stream, descales);
    }

    /// <summary>
    /// Allocates a paged cache of <paramref name="numBlocks"/> blocks <c>[blockSize, headsKv, headDim]</c> for K and for
    /// V (contents undefined) and a block table <c>[batchSize, maxBlocksPerSequence]</c>, with every sequence empty and
    /// every block free. Blocks are given to sequences as they grow (by <see cref="FlashAttention.Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> with new keys,
    /// or <see cref="SetSequenceLengths"/>) and returned by <see cref="ResetSequence"/> or shorter lengths. An fp8 cache
    /// (<see cref="DataType.Float8E4M3"/>) also allocates its descale factors, all 1 (<see cref="SetDescales"/> sets them).
    /// </summary>
    /// <param name="device">The device.</param>
    /// <param name="dataType">Float16 or BFloat16, or Float8E4M3 for an fp8 cache (read and appended by decodes with Float16 or BFloat16 queries).</param>
    /// <param name="batchSize">Sequences (1 or more).</param>
    /// <param name="numBlocks">Physical blocks (1 or more).</param>
    /// <param name="blockSize">Positions per block (1 or more; the native library serves powers of two from 16 up).</param>
    /// <param name="headsKv">Key/value heads (1 or more).</param>
    /// <param name="headDim">Head dimension (1 or more; the kernels need a multiple of 8, of 16 for a Float8E4M3 cache).</param>
    /// <param name="maxBlocksPerSequence">Pages one sequence may use; 0 means <paramref name="numBlocks"/>.</param>
    /// <param name="stream">Stream to order the initialisation on (the call waits for it), or null for the legacy default stream.</param>
    /// <param name="descales">
    /// An fp8 cache's descale factors: one per KV head (<c>[headsKv]</c>, the default) or one for the whole cache
    /// (<c>[1]</c>), for the keys and for the values. Ignored for Float16 and BFloat16.
    /// </param>
    /// <returns>An owned cache with a block allocator.</returns>
    /// <exception cref="ArgumentException">A size is out of range, the data type is not Float16, BFloat16 or Float8E4M3, a Float8E4M3 cache's head dim is not a multiple of 16, or <paramref name="descales"/> is not a defined value.</exception>
    /// <exception cref="FlashAttentionException">An allocation failed.</exception>
    public static KvCache CreatePaged(
        CudaDevice device,
        DataType dataType,
        int batchSize,
        int numBlocks,
        int blockSize,
        int headsKv,
        int headDim,
        int maxBlocksPerSequence = 0,
        CudaStream? stream = null,
        DescaleGranularity descales = DescaleGranularity.PerKvHead)
    {
        ArgumentNullException.ThrowIfNull(device);
        RequireCacheType(dataType, descales, headDim);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(numBlocks, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headsKv, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headDim, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(maxBlocksPerSequence);
        int columns = maxBlocksPerSequence == 0 ? numBlocks : maxBlocksPerSequence;
        long[] shape = [numBlocks, blockSize, headsKv, headDim];
        return CreateOwned(device, dataType, shape, batchSize, columns, stream, descales);
    }

    /// <summary>
    /// Views K and V tensors (and a block table) the caller owns; disposing the cache never frees them. The caller keeps
    /// them alive and, for a paged cache, fills the block table so that every page a call reads or appends into names a
    /// block in <c>0 .. NumBlocks - 1</c> (entries past a sequence's last page are never read).
    /// </summary>
    /// <param name="keys">
    /// Key cache, Float16, BFloat16 or Float8E4M3 (an fp8 cache, under Float16 or BFloat16 queries), last dimension
    /// contiguous: <c>[batch, capacity, headsKv, headDim]</c> without a block table,
    /// <c>[numBlocks, blockSize, headsKv, headDim]</c> with one.
    /// </param>
    /// <param name="values">Value cache, the shape and dtype of <paramref name="keys"/>.</param>
    /// <param name="sequenceLengths">Tokens each sequence already holds (0 .. capacity each); its length is the batch size.</param>
    /// <param name="blockTable">Paged cache: device int32 <c>[batch, maxBlocksPerSequence]</c>, last dimension contiguous; null for a contiguous cache.</param>
    /// <param name="cacheSeqLens">
    /// Optional device int32 <c>[batch]</c> array (contiguous) that already holds <paramref name="sequenceLengths"/>; the
    /// cache then updates it in place. Null: the cache allocates its own on the tensors' device and copies the lengths
    /// there (which needs a device, so K must not be a raw-pointer view).
    /// </param>
    /// <param name="stream">Stream to order the initial copy on (the call waits for it), or null for the legacy default stream.</param>
    /// <param name="keyDescale">
    /// An fp8 cache's key descale factors (<c>k_descale</c>): device Float32, rank 1, <c>[headsKv]</c> (one per KV head)
    /// or <c>[1]</c> (one for the whole cache), on the cache's device; the caller keeps them alive and may change them
    /// between calls (the kernels read them, the host never does). Given exactly when <paramref name="valueDescale"/> is,
    /// and only with Float8E4M3 keys. Null over an fp8 cache: every call passes <see cref="DecodeArguments.KeyDescale"/>.
    /// </param>
    /// <param name="valueDescale">The value descale factors (<c>v_descale</c>), shaped like <paramref name="keyDescale"/>.</param>
    /// <returns>A view cache.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="keys"/> or <paramref name="values"/> is null.</exception>
    /// <exception cref="ArgumentException">
    /// A shape, dtype or length is inconsistent, or a length is out of range; or descale factors are given for a 16-bit
    /// cache, only one of them is given, or one is not Float32 <c>[headsKv]</c> or <c>[1]</c>.
    /// </exception>
    /// <exception cref="FlashAttentionException">Allocating or filling the lengths array failed.</exception>
    public static KvCache Wrap(
        DeviceTensor keys,
        DeviceTensor values,
        ReadOnlySpan<int> sequenceLengths,
        DeviceTensor? blockTable = null,
        DeviceTensor? cacheSeqLens = null,
        CudaStream? stream = null,
        DeviceTensor? keyDescale = null,
        DeviceTensor? valueDescale = null)
    {
        ArgumentNullException.ThrowIfNull(keys);
        ArgumentNullException.ThrowIfNull(values);
        CheckCacheTensor(keys, nameof(keys), blockTable is not null);
        CheckCacheTensor(values, nameof(values), blockTable is not null);
        if (values.DataType != keys.DataType)
        {
            throw new ArgumentException($"values is {values.DataType} but keys is {keys.DataType}; K and V share one dtype.", nameof(values));
        }

        if (DescalePairProblem(keyDescale, valueDescale, keys.DataType, "keyDescale", "valueDescale", "keys") is { } pairProblem)
        {
            throw new ArgumentException(pairProblem.Message, pairProblem.ParamName);
        }

        if ((DescaleProblem(keyDescale, "keyDescale", "k_descale", keys.Shape[2]) ?? DescaleProblem(valueDescale, "valueDescale", "v_descale", keys.Shape[2])) is { } descaleProblem)
        {
            throw new ArgumentException(descaleProblem.Message, descaleProblem.ParamName);
        }

        if (!values.HasShapeOf(keys))
        {
            throw new ArgumentException($"values must have the shape of keys [{string.Join(", ", keys.Shape)}]; it is {values}.", nameof(values));
        }

        int batch = sequenceLengths.Length;
        if (batch < 1)
        {
            throw new ArgumentException("sequenceLengths must give the length of at least one sequence.", nameof(sequenceLengths));
        }

        long capacity;
        if (blockTable is null)
        {
            if (keys.Shape[0] != batch)
            {
                throw new ArgumentException(
                    $"A contiguous cache is [batch, capacity, heads_kv, head_dim]: keys has batch {keys.Shape[0]} but sequenceLengths gives {batch} sequences.",
                    nameof(sequenceLengths));
            }

            capacity = keys.Shape[1];
        }
        else
        {
            if (blockTable.DataType != DataType.Int32 || blockTable.Rank != 2)
            {
                throw new ArgumentException($"blockTable must be an Int32 matrix [batch, max_blocks_per_seq]; it is {blockTable}.", nameof(blockTable));
            }

            if (blockTable.Shape[0] != batch)
            {
                throw new ArgumentException(
                    $"blockTable has {blockTable.Shape[0]} rows but sequenceLengths gives {batch} sequences; it is [batch, max_blocks_per_seq].",
                    nameof(blockTable));
            }

            if (blockTable.Shape[1] < 1 || blockTable.Shape[1] > int.MaxValue || (blockTable.Strides[1] != 1 && blockTable.Shape[1] > 1))
            {
                throw new ArgumentException($"blockTable needs 1 or more columns and a contiguous last dimension; it is {blockTable}.", nameof(blockTable));
            }

            capacity = keys.Shape[1] * blockTable.Shape[1];
        }

        for (int b = 0; b < batch; b++)
        {
            if (sequenceLengths[b] < 0 || sequenceLengths[b] > capacity)
            {
                throw new ArgumentException(
                    $"sequenceLengths[{b}] is {sequenceLengths[b]}; each sequence holds 0 .. {capacity} tokens in this cache.", nameof(sequenceLengths));
            }
        }

        CudaDevice? device = keys.Device ?? values.Device ?? blockTable?.Device ?? cacheSeqLens?.Device ?? keyDescale?.Device ?? valueDescale?.Device;
        int[] lengths = sequenceLengths.ToArray();
        (DeviceTensor, DeviceTensor)? descales = keyDescale is null ? null : (keyDescale, valueDescale!);
        if (cacheSeqLens is not null)
        {
            CheckSeqLensTensor(cacheSeqLens, batch);
            return new KvCache(keys, values, cacheSeqLens, blockTable, lengths, device, null, null, null, null, descales);
        }

        if (device is null)
        {
            throw new ArgumentException(
                "keys, values and blockTable are raw-pointer views, so the cache does not know which device to put its lengths array on; pass cacheSeqLens.",
                nameof(cacheSeqLens));
        }

        var seqLens = new DeviceBuffer<int>(device, batch);
        try
        {
            seqLens.CopyFrom(lengths, stream);
            return new KvCache(keys, values, seqLens.AsTensor(batch), blockTable, lengths, device, null, null, seqLens, null, descales);
        }
        catch
        {
            seqLens.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Sets the number of tokens each sequence holds (for example after filling the cache some other way, or to drop
    /// tokens), on the host and, with a copy queued on <paramref name="stream"/>, on the device. An owned paged cache
    /// gives blocks to sequences that grow and takes back the pages past a sequence's new end.
    /// </summary>
    /// <param name="lengths">One length per sequence, 0 .. <see cref="Capacity"/> each.</param>
    /// <param name="stream">The stream later decodes use, or null for the legacy default stream.</param>
    /// <exception cref="ArgumentException">The count differs from <see cref="BatchSize"/> or a length is out of range.</exception>
    /// <exception cref="InvalidOperationException">An owned paged cache has too few free blocks (nothing is changed).</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public void SetSequenceLengths(ReadOnlySpan<int> lengths, CudaStream? stream = null)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (lengths.Length != BatchSize)
        {
            throw new ArgumentException($"lengths has {lengths.Length} entries but the cache holds {BatchSize} sequences.", nameof(lengths));
        }

        for (int b = 0; b < BatchSize; b++)
        {
            if (lengths[b] < 0 || lengths[b] > Capacity)
            {
                throw new ArgumentException($"lengths[{b}] is {lengths[b]}; each sequence holds 0 .. {Capacity} tokens in this cache.", nameof(lengths));
            }

            if (lengths[b] < _pads[b])
            {
                throw new ArgumentException(
                    $"lengths[{b}] is {lengths[b]}, below the row's left padding {_pads[b]} (LeftPadding); lower the padding first " +
                    "(SetLeftPadding) or reset the row (ResetSequence).",
                    nameof(lengths));
            }
        }

        int ordinal = RequireDevice().Ordinal;
        if (_freeBlocks is not null)
        {
            int missing = BlocksMissing(lengths), freed = BlocksFreed(lengths);
            if (missing > _freeBlocks.Count + freed)
            {
                throw new InvalidOperationException(
                    $"The cache has {_freeBlocks.Count} free blocks (and these lengths release {freed}), fewer than they need " +
                    $"({missing} more of {BlockSize} positions).");
            }

            // The block bookkeeping changes before the uploads; if one throws (a disposed stream, a failed copy),
            // put it back so that no block is both free and in a sequence's table, and try to put the device
            // table back too (rows already queued would otherwise disagree with the old lengths).
            var (tableBefore, freeBefore) = SnapshotBlocks();
            try
            {
                ResizeAllAndUpload(lengths, stream, ordinal);
                UploadLengths(lengths, stream, ordinal);
            }
            catch
            {
                RestoreBlocks(tableBefore, freeBefore);
                try
                {
                    UploadTableRows(0, BatchSize - 1, stream, ordinal);
                }
                catch (Exception)
                {
                    // The first failure is the one to report; the cache is then in doubt until SetSequenceLengths succeeds.
                }

                throw;
            }

            return;
        }

        UploadLengths(lengths, stream, ordinal);
    }

    // Queues the device copy of `lengths`, then makes them the host lengths (only once the copy is queued).
    private void UploadLengths(ReadOnlySpan<int> lengths, CudaStream? stream, int ordinal)
    {
        int[] next = lengths.ToArray();
        _uploads.Upload(CacheSeqLens, 0, PendingUploads.Snapshot(next), stream, ordinal);
        next.CopyTo(_lengths, 0);
    }

    private void ResizeAllAndUpload(ReadOnlySpan<int> lengths, CudaStream? stream, int ordinal)
    {
        {
            // Release first, so that blocks one sequence gives up can go to another.
            int first = int.MaxValue, last = -1;
            for (int b = 0; b < BatchSize; b++)
            {
                if (lengths[b] < _lengths[b] && ResizePages(b, lengths[b]))
                {
                    first = Math.Min(first, b);
                    last = b;
                }
            }

            for (int b = 0; b < BatchSize; b++)
            {
                if (lengths[b] >= _lengths[b] && ResizePages(b, lengths[b]))
                {
                    first = Math.Min(first, b);
                    last = Math.Max(last, b);
                }
            }

            UploadTableRows(first, last, stream, ordinal);
        }
    }

    // A copy of the host block table and the free list, and putting them back.
    private (int[] Table, int[] Free) SnapshotBlocks() => ((int[])_hostBlockTable!.Clone(), _freeBlocks!.ToArray());

    private void RestoreBlocks(int[] table, int[] free)
    {
        table.CopyTo(_hostBlockTable!, 0);
        _freeBlocks!.Clear();
        for (int i = free.Length - 1; i >= 0; i--)
        {
            _freeBlocks.Push(free[i]);  // ToArray lists the top first
        }
    }

    /// <summary>Empties one sequence (its length becomes 0; an owned paged cache takes back its blocks).</summary>
    /// <param name="sequence">The sequence, 0 .. <see cref="BatchSize"/> - 1.</param>
    /// <param name="stream">The stream later decodes use, or null for the legacy default stream.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="sequence"/> is out of range.</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public void ResetSequence(int sequence, CudaStream? stream = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sequence);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(sequence, BatchSize);
        if (_pads[sequence] != 0)
        {
            int[] pads = (int[])_pads.Clone();
            pads[sequence] = 0;
            SetLeftPadding(pads, stream);
        }

        int[] lengths = (int[])_lengths.Clone();
        lengths[sequence] = 0;
        SetSequenceLengths(lengths, stream);
    }

    /// <summary>
    /// Sets each row's first valid position (flash-attn's <c>cache_leftpad</c>: a prompt left-padded to a common length
    /// keeps its padding out of attention), on the host and, with a copy queued on <paramref name="stream"/>, on the
    /// device. Later decodes over row <c>r</c> attend to positions <c>pads[r] .. length - 1</c>; the causal mask and
    /// window are placed bottom-right over those keys. <see cref="ResetSequence"/> sets a row's padding back to 0.
    /// </summary>
    /// <param name="pads">One pad per row, 0 .. the row's current length (<see cref="SequenceLengths"/>).</param>
    /// <param name="stream">The stream later decodes use, or null for the legacy default stream.</param>
    /// <exception cref="ArgumentException">The count differs from <see cref="BatchSize"/> or a pad is out of range.</exception>
    /// <exception cref="InvalidOperationException">The cache has no device to keep the pads on (a raw-pointer view).</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public void SetLeftPadding(ReadOnlySpan<int> pads, CudaStream? stream = null)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (pads.Length != BatchSize)
        {
            throw new ArgumentException($"pads has {pads.Length} entries but the cache holds {BatchSize} rows.", nameof(pads));
        }

        for (int b = 0; b < BatchSize; b++)
        {
            if (pads[b] < 0 || pads[b] > _lengths[b])
            {
                throw new ArgumentException(
                    $"pads[{b}] is {pads[b]}; a row's left padding is 0 .. its length ({_lengths[b]} tokens; cache_leftpad).", nameof(pads));
            }
        }

        int ordinal = RequireDevice().Ordinal;
        DeviceBuffer<int> serving = ServingBuffer();
        int[] next = pads.ToArray();
        _uploads.Upload(serving.AsTensor(4L * BatchSize), 0, PendingUploads.Snapshot(next), stream, ordinal);
        next.CopyTo(_pads, 0);
        _hasPads = Array.Exists(_pads, x => x != 0) || _hasPads;
    }

    // The serving arrays' device buffer, allocated on first use on the cache's device.
    // Layout: [BatchSize pads][3 x BatchSize gathered lengths, rows, pads][2 x (BatchSize + 1) cu_seqlens_q, cu_seqlens_k_new].
    private DeviceBuffer<int> ServingBuffer() =>
        _serving ??= new DeviceBuffer<int>(
            Device ?? throw new InvalidOperationException(
                "This cache wraps raw pointers only, so it has no device for its left pads, row indices and per-sequence counts " +
                "(cache_leftpad, cache_batch_idx, cu_seqlens_q, cu_seqlens_k_new)."),
            CountsOffset + (2L * (BatchSize + 1)));

    // Where the serving buffer keeps a step's cu_seqlens_q and cu_seqlens_k_new.
    private long CountsOffset => 4L * BatchSize;

    /// <summary>
    /// The lengths, row indices, pads and per-sequence counts one decode passes (fa_decode's cache_seqlens,
    /// cache_batch_idx, cache_leftpad, cu_seqlens_q and cu_seqlens_k_new with their host copies). Without
    /// <paramref name="rows"/>: the cache's own lengths, and its pads when any was set. With rows: the step's gathered
    /// values, copied to the device on <paramref name="stream"/> when <paramref name="upload"/> (a run); for a check or
    /// a query (which never read device memory) the descriptors point at the device arrays the cache already has. The
    /// step's query and append counts (C ABI 0.12; null: none) become prefix sums, with a device copy likewise.
    /// </summary>
    internal DecodeStep PrepareStep(int[]? rows, int[]? queryCounts, int[]? appendCounts, bool upload, CudaStream? stream, int deviceOrdinal)
    {
        DecodeStep step = PrepareRows(rows, upload, stream, deviceOrdinal);
        if (queryCounts is null && appendCounts is null)
        {
            return step;
        }

        int n = (queryCounts ?? appendCounts)!.Length;
        var cu = new int[2 * (n + 1)];
        for (int b = 0; b < n; b++)
        {
            cu[b + 1] = cu[b] + (queryCounts?[b] ?? 0);
            cu[n + 1 + b + 1] = cu[n + 1 + b] + (appendCounts?[b] ?? 0);
        }

        DeviceTensor cuQ, cuK;
        if (upload)
        {
            DeviceBuffer<int> serving = ServingBuffer();
            cuQ = DeviceTensor.FromBuffer(serving, [n + 1], elementOffset: CountsOffset);
            cuK = DeviceTensor.FromBuffer(serving, [n + 1], elementOffset: CountsOffset + n + 1);
            _uploads.Upload(serving.AsTensor(CountsOffset + (2L * (BatchSize + 1))), CountsOffset, PendingUploads.Snapshot(cu), stream, deviceOrdinal);
        }
        else
        {
            // Only described, never read (fa_decode_check and the queries): the call describes them at the host copies.
            cuQ = cuK = DeviceTensor.FromPointer(CacheSeqLens.Pointer, DataType.Int32, [n + 1]);
        }

        return step with
        {
            HostCuQ = queryCounts is null ? null : cu[..(n + 1)],
            CuQ = queryCounts is null ? null : cuQ,
            MaxQueries = queryCounts is null ? 0 : Math.Max(1, queryCounts.Max()),
            HostCuK = appendCounts is null ? null : cu[(n + 1)..],
            CuK = appendCounts is null ? null : cuK,
        };
    }

    private DecodeStep PrepareRows(int[]? rows, bool upload, CudaStream? stream, int deviceOrdinal)
    {
        DeviceTensor? rowPads = _hasPads ? (_serving?.AsTensor(BatchSize) ?? CacheSeqLens) : null;
        if (rows is null)
        {
            return new DecodeStep(_lengths, CacheSeqLens, null, null, _hasPads ? _pads : null, rowPads);
        }

        int n = rows.Length;
        var gathered = new int[3 * n];
        for (int b = 0; b < n; b++)
        {
            gathered[b] = _lengths[rows[b]];
            gathered[n + b] = rows[b];
            gathered[(2 * n) + b] = _pads[rows[b]];
        }

        int[] hostLengths = gathered[..n], hostRows = gathered[n..(2 * n)], hostPads = gathered[(2 * n)..];
        DeviceTensor lengthsT, rowsT, padsT;
        if (upload || _serving is not null)
        {
            DeviceBuffer<int> serving = ServingBuffer();
            lengthsT = DeviceTensor.FromBuffer(serving, [n], elementOffset: BatchSize);
            rowsT = DeviceTensor.FromBuffer(serving, [n], elementOffset: BatchSize + n);
            padsT = DeviceTensor.FromBuffer(serving, [n], elementOffset: BatchSize + (2L * n));
            if (upload)
            {
                _uploads.Upload(serving.AsTensor(CountsOffset), BatchSize, PendingUploads.Snapshot(gathered), stream, deviceOrdinal);
            }
        }
        else
        {
            // Only described, never read (fa_decode_check and the queries): the pool's lengths array has room for n.
            DeviceTensor pool = CacheSeqLens;
            lengthsT = rowsT = padsT = pool.Owner is DeviceBuffer<int> buffer ? DeviceTensor.FromBuffer(buffer, [n]) : DeviceTensor.FromPointer(pool.Pointer, DataType.Int32, [n]);
        }

        return new DecodeStep(hostLengths, lengthsT, hostRows, rowsT, _hasPads ? hostPads : null, _hasPads ? padsT : null);
    }

    /// <summary>
    /// Waits until the device copies of the lengths and block table queued so far are done (they are otherwise
    /// retired lazily). Decodes queued on the same stream never need this.
    /// </summary>
    /// <exception cref="FlashAttentionException">A copy failed.</exception>
    public void Synchronize() => _uploads.WaitAll();

    /// <summary>
    /// Sets the descale factors of an fp8 cache (<see cref="KeyDescale"/> and <see cref="ValueDescale"/>) with copies
    /// queued on <paramref name="stream"/>; decodes queued after them on the same stream use the new factors. The
    /// factors are taken as given (C ABI 0.13: 0, negative or non-finite ones make the attended values Inf or NaN, as
    /// FlashAttention-3's descales do). The keys and values already in the cache are not rescaled: they are read with
    /// the new factors. For a view, the copies write the caller's descale tensors. Like the appends' uploads, the copies
    /// read pinned host snapshots, so this is not capturable into a CUDA graph (set the factors before capturing).
    /// </summary>
    /// <param name="keyDescale">One factor per element of <see cref="KeyDescale"/> (<c>HeadsKv</c>, or 1 per-tensor).</param>
    /// <param name="valueDescale">One factor per element of <see cref="ValueDescale"/>.</param>
    /// <param name="stream">The stream later decodes use, or null for the legacy default stream.</param>
    /// <exception cref="ArgumentException">A span's length differs from its tensor's.</exception>
    /// <exception cref="InvalidOperationException">
    /// The cache is not fp8, is a view wrapped without descale factors, has strided factors, or wraps raw pointers only
    /// (no device to queue the copies on).
    /// </exception>
    /// <exception cref="ObjectDisposedException">The cache or the stream was disposed.</exception>
    /// <exception cref="FlashAttentionException">A copy could not be queued.</exception>
    public void SetDescales(ReadOnlySpan<float> keyDescale, ReadOnlySpan<float> valueDescale, CudaStream? stream = null)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (!IsFloat8)
        {
            throw new InvalidOperationException($"This cache holds {DataType} keys and values; descale factors belong to a Float8E4M3 cache only.");
        }

        if (KeyDescale is null || ValueDescale is null)
        {
            throw new InvalidOperationException(
                "This fp8 view was wrapped without descale factors; pass them per call (DecodeArguments.KeyDescale and ValueDescale) or wrap it with keyDescale/valueDescale.");
        }

        foreach (var (tensor, given, name) in new[] { (KeyDescale, keyDescale.Length, nameof(keyDescale)), (ValueDescale, valueDescale.Length, nameof(valueDescale)) })
        {
            if (given != tensor.ElementCount)
            {
                throw new ArgumentException($"{name} has {given} factors but the cache's tensor holds {tensor.ElementCount} ({tensor}).", name);
            }

            if (tensor.Shape[0] > 1 && tensor.Strides[0] != 1)
            {
                throw new InvalidOperationException($"The cache's {name} tensor is strided ({tensor}); write it yourself.");
            }
        }

        int ordinal = RequireDevice().Ordinal;
        _uploads.Upload(KeyDescale, 0, FloatBits(keyDescale), stream, ordinal);
        _uploads.Upload(ValueDescale, 0, FloatBits(valueDescale), stream, ordinal);
    }

    // A pinned snapshot of the bit patterns of `values`, for PendingUploads (which copies 4-byte elements).
    private static int[] FloatBits(ReadOnlySpan<float> values) => PendingUploads.Snapshot(MemoryMarshal.Cast<float, int>(values));

    /// <summary>Copies the whole key cache to host memory (the cache must be a dense array: owned, or a contiguous view).</summary>
    /// <typeparam name="T">
    /// An element type of the cache's size: <see cref="Half"/> or <see cref="BFloat16"/> (or <see cref="ushort"/> for the
    /// raw bits); <see cref="Float8E4M3"/> (or <see cref="byte"/>) for an fp8 cache, whose stored values are read without
    /// their descale factors.
    /// </typeparam>
    /// <param name="destination">Exactly <c>Keys.ElementCount</c> elements.</param>
    /// <param name="stream">Stream to order the copy on (the call waits for it), or null for the legacy default stream.</param>
    /// <exception cref="ArgumentException">The element size or the length is wrong, or the tensor is not dense.</exception>
    public void CopyKeysTo<T>(Span<T> destination, CudaStream? stream = null)
        where T : unmanaged => CopyOut(Keys, destination, stream, nameof(destination));

    /// <summary>Copies the whole value cache to host memory; see <see cref="CopyKeysTo{T}"/>.</summary>
    /// <typeparam name="T">An element type of the cache's size (see <see cref="CopyKeysTo{T}"/>).</typeparam>
    /// <param name="destination">Exactly <c>Values.ElementCount</c> elements.</param>
    /// <param name="stream">Stream to order the copy on (the call waits for it), or null for the legacy default stream.</param>
    /// <exception cref="ArgumentException">The element size or the length is wrong, or the tensor is not dense.</exception>
    public void CopyValuesTo<T>(Span<T> destination, CudaStream? stream = null)
        where T : unmanaged => CopyOut(Values, destination, stream, nameof(destination));

    /// <summary>
    /// Waits for the queued length and block-table copies, then frees what this cache allocated (the K and V memory of
    /// an owned cache, the lengths array and block table it made). Caller tensors of a view are not touched. Idempotent.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _uploads.WaitAllQuietly();
        _ownedKeys?.Dispose();
        _ownedValues?.Dispose();
        _ownedSeqLens?.Dispose();
        _ownedBlockTable?.Dispose();
        _ownedDescales?.Dispose();
        _serving?.Dispose();
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"KvCache({(IsPaged ? $"paged {NumBlocks} blocks of {BlockSize}, {MaxBlocksPerSequence} pages per sequence" : $"contiguous capacity {Capacity}")}, " +
        $"{DataTypes.ShortName(DataType)}{(KeyDescale is { } kd ? (kd.Shape[0] == 1 && HeadsKv > 1 ? " (descales per tensor)" : " (descales per kv head)") : string.Empty)}, {BatchSize} sequences, heads_kv {HeadsKv}, head_dim {HeadDim}, " +
        $"{(OwnsMemory ? "owned" : "view")}{(IsDisposed ? ", disposed" : string.Empty)})";

    /// <summary>
    /// Why appending <paramref name="added"/>[i] tokens to the step's i-th row (<paramref name="rows"/>[i], or row i)
    /// cannot work, or null.
    /// </summary>
    internal string? AppendProblem(int[] added, int[]? rows)
    {
        int i = 0;
        foreach (int b in RowsOf(rows))
        {
            long total = (long)_lengths[b] + added[i++];
            if (total > Capacity)
            {
                return $"Sequence {b} holds {_lengths[b]} tokens and appends {added[i - 1]}, {total} in all, but the cache has room for {Capacity} per sequence (cache_seqlens).";
            }
        }

        if (_freeBlocks is not null)
        {
            int[] after = (int[])_lengths.Clone();
            i = 0;
            foreach (int b in RowsOf(rows))
            {
                after[b] = _lengths[b] + added[i++];
            }

            int missing = BlocksMissing(after);
            if (missing > _freeBlocks.Count)
            {
                return $"Appending {added.Sum()} tokens needs {missing} more blocks of {BlockSize} positions but the cache has {_freeBlocks.Count} free (block_table).";
            }
        }

        return null;
    }


    /// <summary>
    /// Before a decode that appends: gives blocks to the pages the new tokens need (owned paged caches) and queues the
    /// changed block-table rows on <paramref name="stream"/>. Returns the (sequence, page) pairs allocated, for
    /// <see cref="UndoAppend"/>; null when nothing was allocated.
    /// </summary>
    internal List<(int Sequence, int Page)>? PrepareAppend(int[] added, int[]? rows, CudaStream? stream, int deviceOrdinal)
    {
        if (_freeBlocks is null)
        {
            return null;
        }

        List<(int, int)>? allocated = null;
        int first = int.MaxValue, last = -1;
        var (tableBefore, freeBefore) = SnapshotBlocks();
        try
        {
            int step = 0;
            foreach (int b in RowsOf(rows))
            {
                int have = PagesFor(_lengths[b]);
                int need = PagesFor(_lengths[b] + added[step++]);
                for (int page = have; page < need; page++)
                {
                    long slot = ((long)b * MaxBlocksPerSequence) + page;
                    if (_hostBlockTable![slot] >= 0)
                    {
                        continue;
                    }

                    _hostBlockTable[slot] = _freeBlocks.Pop();
                    (allocated ??= []).Add((b, page));
                    first = Math.Min(first, b);
                    last = Math.Max(last, b);
                }
            }

            UploadTableRows(first, last, stream, deviceOrdinal);
        }
        catch
        {
            // Nothing reached the device (or the copy failed): the host table must not claim pages the device
            // table lacks, or a retry would skip their upload and the kernel would read a clamped block.
            RestoreBlocks(tableBefore, freeBefore);
            throw;
        }

        return allocated;
    }

    /// <summary>After a failed decode: returns the blocks <see cref="PrepareAppend"/> gave out.</summary>
    internal void UndoAppend(List<(int Sequence, int Page)>? allocated, CudaStream? stream, int deviceOrdinal)
    {
        if (allocated is null)
        {
            return;
        }

        int first = int.MaxValue, last = -1;
        for (int i = allocated.Count - 1; i >= 0; i--)
        {
            var (b, page) = allocated[i];
            long slot = ((long)b * MaxBlocksPerSequence) + page;
            _freeBlocks!.Push(_hostBlockTable![slot]);
            _hostBlockTable[slot] = -1;
            first = Math.Min(first, b);
            last = Math.Max(last, b);
        }

        try
        {
            UploadTableRows(first, last, stream, deviceOrdinal);
        }
        catch (FlashAttentionException)
        {
            // The rows past each sequence's end are never read, so a stale device copy is harmless.
        }
    }

    /// <summary>
    /// After a successful decode that appended: advances the host lengths. Without <paramref name="rows"/> the call
    /// itself advanced the device lengths; with them it advanced only the step's gathered copy, so the pool's device
    /// lengths are uploaded here (on the call's stream, after it).
    /// </summary>
    internal void Advance(int[] added, int[]? rows, CudaStream? stream, int deviceOrdinal)
    {
        if (rows is null)
        {
            // fa_decode_params_t.advance_cache_seqlens advanced the device copy (by each sequence's count), on the
            // call's stream after its kernels.
            for (int b = 0; b < BatchSize; b++)
            {
                _lengths[b] += added[b];
            }

            return;
        }

        int[] next = (int[])_lengths.Clone();
        for (int i = 0; i < rows.Length; i++)
        {
            next[rows[i]] += added[i];
        }

        UploadLengths(next, stream, deviceOrdinal);
    }

    /// <summary>The rows a step touches: <paramref name="rows"/>, or every row.</summary>
    private IEnumerable<int> RowsOf(int[]? rows) => rows ?? Enumerable.Range(0, BatchSize);

    /// <summary>Why <paramref name="rows"/> cannot pick the rows of a step over this cache, or null.</summary>
    internal string? RowsProblem(int[] rows)
    {
        var seen = new HashSet<int>();
        for (int b = 0; b < rows.Length; b++)
        {
            if (rows[b] < 0 || rows[b] >= BatchSize)
            {
                return $"CacheRows[{b}] is {rows[b]}, but the cache has rows 0 .. {BatchSize - 1} (cache_batch_idx).";
            }

            if (!seen.Add(rows[b]))
            {
                return $"CacheRows[{b}] is {rows[b]}, which an earlier sequence of the step already uses; each row serves one sequence (cache_batch_idx).";
            }
        }

        return null;
    }

    private static KvCache CreateOwned(
        CudaDevice device, DataType dataType, long[] shape, int batch, int blockTableColumns, CudaStream? stream, DescaleGranularity granularity)
    {
        long elements = shape[0] * shape[1] * shape[2] * shape[3];
        SafeHandle? keys = null, values = null;
        DeviceBuffer<int>? seqLens = null, table = null;
        DeviceBuffer<float>? descaleBuffer = null;
        try
        {
            DeviceTensor kT, vT;
            (DeviceTensor, DeviceTensor)? descales = null;
            if (dataType == DataType.Float16)
            {
                (kT, vT) = Allocate<Half>(device, elements, shape, out keys, out values);
            }
            else if (dataType == DataType.BFloat16)
            {
                (kT, vT) = Allocate<BFloat16>(device, elements, shape, out keys, out values);
            }
            else
            {
                (kT, vT) = Allocate<Float8E4M3>(device, elements, shape, out keys, out values);

                // The factors of K then V in one buffer (V's from a 16-byte boundary, as tensors start), 1 until SetDescales.
                long count = granularity == DescaleGranularity.PerTensor ? 1 : shape[2];
                long valueOffset = (count + 3) / 4 * 4;
                descaleBuffer = new DeviceBuffer<float>(device, valueOffset + count);
                float[] ones = new float[valueOffset + count];
                Array.Fill(ones, 1f);
                descaleBuffer.CopyFrom(ones, stream);
                descales = (DeviceTensor.FromBuffer(descaleBuffer, [count]), DeviceTensor.FromBuffer(descaleBuffer, [count], elementOffset: valueOffset));
            }

            seqLens = new DeviceBuffer<int>(device, batch);
            seqLens.Fill(0, stream);
            DeviceTensor? tableT = null;
            if (blockTableColumns > 0)
            {
                table = new DeviceBuffer<int>(device, (long)batch * blockTableColumns);
                table.Fill(0xFF, stream); // every entry -1: no block
                tableT = table.AsTensor(batch, blockTableColumns);
            }

            stream?.Synchronize();
            return new KvCache(kT, vT, seqLens.AsTensor(batch), tableT, new int[batch], device, keys, values, seqLens, table, descales, descaleBuffer);
        }
        catch
        {
            keys?.Dispose();
            values?.Dispose();
            seqLens?.Dispose();
            table?.Dispose();
            descaleBuffer?.Dispose();
            throw;
        }

        static (DeviceTensor, DeviceTensor) Allocate<T>(CudaDevice device, long elements, long[] shape, out SafeHandle? keys, out SafeHandle? values)
            where T : unmanaged
        {
            var k = new DeviceBuffer<T>(device, elements);
            keys = k;
            values = null;
            var v = new DeviceBuffer<T>(device, elements);
            values = v;
            return (k.AsTensor(shape), v.AsTensor(shape));
        }
    }

    private static void RequireCacheType(DataType dataType, DescaleGranularity descales, int headDim)
    {
        if (dataType == DataType.Float8E4M3 && headDim % 16 != 0)
        {
            throw new ArgumentException(
                $"An fp8 (Float8E4M3) cache needs a head dim that is a multiple of 16 (its rows are read as 16-byte chunks); got {headDim}.",
                nameof(headDim));
        }

        if (dataType is not (DataType.Float16 or DataType.BFloat16 or DataType.Float8E4M3))
        {
            throw new ArgumentException($"A KV cache holds Float16, BFloat16 or Float8E4M3 (fp8) elements; got {dataType}.", nameof(dataType));
        }

        if (!Enum.IsDefined(descales))
        {
            throw new ArgumentException($"descales {(int)descales} is not a defined DescaleGranularity value.", nameof(descales));
        }
    }

    /// <summary>
    /// Why a pair of descale tensors cannot go with a cache of <paramref name="cacheType"/>: one without the other, or
    /// either over a 16-bit cache. Null when they fit (both null counts as fitting: an fp8 cache may take them per call).
    /// </summary>
    internal static (string ParamName, string Message)? DescalePairProblem(
        DeviceTensor? keyDescale, DeviceTensor? valueDescale, DataType cacheType, string keyName, string valueName, string cacheName)
    {
        if ((keyDescale is null) != (valueDescale is null))
        {
            return keyDescale is null
                ? (valueName, $"{valueName} (v_descale) is given but {keyName} (k_descale) is not: an fp8 cache's keys and values each take their factors; pass both.")
                : (keyName, $"{keyName} (k_descale) is given but {valueName} (v_descale) is not: an fp8 cache's keys and values each take their factors; pass both.");
        }

        return keyDescale is not null && cacheType != DataType.Float8E4M3
            ? (keyName, $"{keyName} (k_descale) is given but {cacheName} holds {cacheType}: descale factors belong to a Float8E4M3 (fp8) cache only.")
            : null;
    }

    /// <summary>
    /// Why <paramref name="t"/> cannot be the descale factors (<paramref name="field"/>) of a cache with
    /// <paramref name="headsKv"/> KV heads: Float32, rank 1, <c>[headsKv]</c> or <c>[1]</c>. Null when it can (or is null).
    /// </summary>
    internal static (string ParamName, string Message)? DescaleProblem(DeviceTensor? t, string name, string field, long headsKv)
    {
        if (t is null)
        {
            return null;
        }

        if (t.DataType != DataType.Float32)
        {
            return (name, $"{name} ({field}) must be Float32; it is {t}.");
        }

        return t.Rank != 1 || (t.Shape[0] != headsKv && t.Shape[0] != 1)
            ? (name, $"{name} ({field}) must be rank 1, [heads_kv={headsKv}] (one factor per KV head) or [1] (one for the whole cache); it is {t}.")
            : null;
    }

    private static void CheckCacheTensor(DeviceTensor t, string name, bool paged)
    {
        string layout = paged ? "[num_blocks, block_size, heads_kv, head_dim]" : "[batch, capacity, heads_kv, head_dim]";
        if (t.Rank != 4)
        {
            throw new ArgumentException($"{name} must have rank 4 {layout}; it is {t}.", name);
        }

        if (t.DataType is not (DataType.Float16 or DataType.BFloat16 or DataType.Float8E4M3))
        {
            throw new ArgumentException($"{name} must be Float16, BFloat16 or Float8E4M3 (an fp8 cache); it is {t}.", name);
        }

        if (t.Strides[3] != 1 && t.Shape[3] > 1)
        {
            throw new ArgumentException($"{name}'s last dimension (head_dim) must be contiguous (stride 1); it is {t}.", name);
        }

        for (int i = 0; i < 4; i++)
        {
            if (t.Shape[i] < 1 || t.Shape[i] > int.MaxValue)
            {
                throw new ArgumentException($"Every extent of {name} {layout} must be 1 .. {int.MaxValue}; it is {t}.", name);
            }
        }
    }

    private static void CheckSeqLensTensor(DeviceTensor t, int batch)
    {
        if (t.DataType != DataType.Int32 || t.Rank != 1 || t.Shape[0] != batch || (t.Strides[0] != 1 && batch > 1))
        {
            throw new ArgumentException(
                $"cacheSeqLens must be a contiguous Int32 vector [batch = {batch}] (cache_seqlens); it is {t}.", "cacheSeqLens");
        }
    }

    private void CopyOut<T>(DeviceTensor tensor, Span<T> destination, CudaStream? stream, string paramName)
        where T : unmanaged
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (Unsafe.SizeOf<T>() != tensor.ElementSize)
        {
            throw new ArgumentException($"{typeof(T).Name} has {Unsafe.SizeOf<T>()} bytes but the cache holds {tensor.ElementSize}-byte elements.", paramName);
        }

        if (!tensor.IsContiguous)
        {
            throw new ArgumentException($"Only a dense cache can be copied whole; this one is {tensor}.", paramName);
        }

        if (destination.Length != tensor.ElementCount)
        {
            throw new ArgumentException($"{paramName} has {destination.Length} elements but the cache has {tensor.ElementCount}.", paramName);
        }

        NativeRuntime.EnsureLoaded();
        using var owner = new HandleLease(tensor.Owner);
        using var s = new HandleLease(stream);
        nint source = tensor.ToNative(owner.Pointer).data;
        nuint bytes = (nuint)destination.Length * (nuint)Unsafe.SizeOf<T>();
        unsafe
        {
            fixed (T* host = destination)
            {
                if (stream is null)
                {
                    Errors.ThrowIfFailed(NativeMethods.fa_memcpy((nint)host, source, bytes));
                }
                else
                {
                    Errors.ThrowIfFailed(NativeMethods.fa_memcpy_async((nint)host, source, bytes, s.Pointer));
                    Errors.ThrowIfFailed(NativeMethods.fa_stream_synchronize(s.Pointer));
                }
            }
        }
    }

    private CudaDevice RequireDevice() =>
        Device ?? throw new InvalidOperationException("This cache wraps raw pointers only, so its device is unknown; it can be checked but not updated.");

    private int PagesFor(long length) => (int)((length + BlockSize - 1) / BlockSize);

    private int BlocksMissing(ReadOnlySpan<int> lengths)
    {
        int missing = 0;
        for (int b = 0; b < BatchSize; b++)
        {
            int need = PagesFor(lengths[b]);
            for (int page = PagesFor(_lengths[b]); page < need; page++)
            {
                if (_hostBlockTable![((long)b * MaxBlocksPerSequence) + page] < 0)
                {
                    missing++;
                }
            }
        }

        return missing;
    }

    private int BlocksFreed(ReadOnlySpan<int> lengths)
    {
        int freed = 0;
        for (int b = 0; b < BatchSize; b++)
        {
            for (int page = PagesFor(lengths[b]); page < MaxBlocksPerSequence; page++)
            {
                if (_hostBlockTable![((long)b * MaxBlocksPerSequence) + page] >= 0)
                {
                    freed++;
                }
            }
        }

        return freed;
    }

    /// <summary>Gives sequence <paramref name="b"/> exactly the pages <paramref name="length"/> needs; true when its row changed.</summary>
    private bool ResizePages(int b, int length)
    {
        int need = PagesFor(length);
        bool changed = false;
        for (int page = 0; page < MaxBlocksPerSequence; page++)
        {
            long slot = ((long)b * MaxBlocksPerSequence) + page;
            int block = _hostBlockTable![slot];
            if (page < need && block < 0)
            {
                _hostBlockTable[slot] = _freeBlocks!.Pop();
                changed = true;
            }
            else if (page >= need && block >= 0)
            {
                _freeBlocks!.Push(block);
                _hostBlockTable[slot] = -1;
                changed = true;
            }
        }

        return changed;
    }

    private void UploadTableRows(int first, int last, CudaStream? stream, int deviceOrdinal)
    {
        if (last < first)
        {
            return;
        }

        long start = (long)first * MaxBlocksPerSequence;
        int count = (last - first + 1) * MaxBlocksPerSequence;
        int[] rows = PendingUploads.Snapshot(_hostBlockTable.AsSpan((int)start, count));
        _uploads.Upload(BlockTable!, start, rows, stream, deviceOrdinal);
    }
}

/// <summary>
/// What one decode passes for fa_decode's <c>cache_seqlens</c>, <c>cache_batch_idx</c> and <c>cache_leftpad</c>: the
/// host copies (checked by the native library before it launches) and the device arrays the kernels read.
/// </summary>
internal readonly record struct DecodeStep(
    int[] HostLengths, DeviceTensor SeqLens, int[]? HostRows, DeviceTensor? Rows, int[]? HostPads, DeviceTensor? Pads)
{
    /// <summary>The step's cu_seqlens_q (host copy and device array) with per-sequence query counts (C ABI 0.12), else null.</summary>
    public int[]? HostCuQ { get; init; }

    /// <summary>See <see cref="HostCuQ"/>.</summary>
    public DeviceTensor? CuQ { get; init; }

    /// <summary>max_seqlen_q with <see cref="CuQ"/>: the largest count (at least 1), else 0.</summary>
    public int MaxQueries { get; init; }

    /// <summary>The step's cu_seqlens_k_new (host copy and device array) with per-sequence append counts, else null.</summary>
    public int[]? HostCuK { get; init; }

    /// <summary>See <see cref="HostCuK"/>.</summary>
    public DeviceTensor? CuK { get; init; }
}
