using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using FlashAttn.Native;

namespace FlashAttn.Tests.TestSupport;

/// <summary>What <see cref="HandleStress"/> runs, and the faults it injects to show that its checks can fail.</summary>
internal sealed record HandleStressOptions
{
    /// <summary>Worker threads (besides one thread that keeps collecting garbage and running finalizers).</summary>
    public int Workers { get; init; } = 8;

    /// <summary>How long the workers keep starting iterations (each does at least two).</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>At most this many iterations per worker.</summary>
    public int MaxIterationsPerWorker { get; init; } = 20_000;

    /// <summary>The seed; worker <c>w</c> draws from <c>Random(Seed + 7919 * (w + 1))</c>.</summary>
    public int Seed { get; init; }

    /// <summary>
    /// Fault injection: each worker allocates one buffer of this many bytes and marks its handle invalid, so neither
    /// Dispose nor the finalizer frees it (a release path that forgets the native free). 0: none.
    /// </summary>
    public long InjectNativeLeakBytes { get; init; }

    /// <summary>Fault injection: each worker keeps one small buffer referenced for good (a managed leak).</summary>
    public bool InjectManagedLeak { get; init; }

    /// <summary>Fault injection: each worker's first iteration makes one call the managed API refuses (ArgumentException).</summary>
    public bool InjectWrongCall { get; init; }

    /// <summary>
    /// Fault injection: in each worker's second iteration the repeated (or captured) forward uses another softmax
    /// scale, so its result must be reported as differing from the direct call's.
    /// </summary>
    public bool InjectWrongResult { get; init; }
}

/// <summary>What a <see cref="HandleStress"/> run did and what went wrong.</summary>
internal sealed record HandleStressReport(
    IReadOnlyList<long> IterationsPerWorker,
    IReadOnlyDictionary<string, long> Counts,
    IReadOnlyList<string> Unexpected,
    long UnexpectedTotal,
    IReadOnlyList<string> Problems,
    long ProblemsTotal,
    TimeSpan Elapsed)
{
    public long Count(string name) => Counts.GetValueOrDefault(name);

    public override string ToString() =>
        $"{IterationsPerWorker.Sum()} iterations in {Elapsed.TotalSeconds:F1} s (per worker {string.Join("/", IterationsPerWorker)}); " +
        string.Join(", ", Counts.Select(p => $"{p.Key} {p.Value}"));
}

/// <summary>
/// The SafeHandle stress of issue 16: worker threads create, use and release contexts (<see cref="FlashAttention"/>),
/// streams, device buffers of random sizes and CUDA graphs, each thread with its own objects and, racing each other,
/// on a shared "kit" that any worker may replace and dispose while others use it; one more thread keeps collecting
/// garbage and running finalizers. Every object is either disposed (sometimes twice, sometimes followed by a use that
/// must throw <see cref="ObjectDisposedException"/>) or abandoned to its finalizer, some with work still queued.
/// </summary>
/// <remarks>
/// <para>
/// An iteration: a context (the shared one, or its own), a non-blocking stream, q/k/v/out/LSE of a random shape (fp16
/// or bf16, head dim 64 or 128, causal or not, GQA), uploaded with synchronous or asynchronous copies; the forward on
/// the stream; the same forward again either directly or captured into a graph and replayed one to three times; the
/// backward half the time with a caller workspace and half with the library's stream-ordered one; a buffer of 1 byte to
/// 16 MiB filled on the stream or the legacy default stream. Then the two outputs and LSEs must be bitwise equal (the
/// forward is deterministic), the outputs and gradients finite. Sometimes the graph is launched once more and
/// everything released without waiting, so finalizers and Dispose free memory that queued work still uses (the API
/// says freeing waits for the device).
/// </para>
/// <para>
/// Expected exceptions are counted, not failures: <see cref="ObjectDisposedException"/> from a use of a shared kit
/// another worker disposed, and from the deliberate use-after-dispose probes (which must throw it every time). Any
/// other exception is unexpected and reported with the worker, iteration and plan.
/// </para>
/// <para>
/// Replay: the seed fixes each worker's sequence of plans and sizes; the interleaving of the threads, and so which
/// shared-kit uses meet a disposed kit, is not reproducible.
/// </para>
/// </remarks>
internal sealed class HandleStress
{
    private const int MaxSeq = 256;
    private const int MaxHeadsQ = 4;
    private const int MaxHeadDim = 128;
    private const int MaxBatch = 2;
    private const int HostElements = MaxBatch * MaxSeq * MaxHeadsQ * MaxHeadDim;
    private const int MaxRecorded = 20;

    private static readonly Config[] s_candidates =
    [
        .. from dtype in new[] { DataType.BFloat16, DataType.Float16 }
           from headDim in new[] { 64, 128 }
           from causal in new[] { false, true }
           select new Config(dtype, headDim, causal),
    ];

    private readonly CudaDevice _device;
    private readonly FlashAttention _shared;
    private readonly HandleStressOptions _options;
    private readonly ConcurrentDictionary<string, long> _counts = new(StringComparer.Ordinal);
    private readonly ConcurrentQueue<string> _unexpected = new();
    private readonly ConcurrentQueue<string> _problems = new();
    private readonly ConcurrentQueue<nint> _leakedPointers = new();
    private readonly List<object> _kept = [];
    private long _unexpectedTotal;
    private long _problemsTotal;
    private Config[] _configs = [];
    private Kit? _kit;

    public HandleStress(CudaDevice device, FlashAttention shared, HandleStressOptions options)
    {
        _device = device;
        _shared = shared;
        _options = options;
    }

    /// <summary>Every object the stress created (the shared context aside), for the leak check.</summary>
    public HandleTracker Tracker { get; } = new();

    /// <summary>The configurations this build serves (after <see cref="WarmUp"/>).</summary>
    public IReadOnlyList<Config> Configs => _configs;

    /// <summary>Why candidate configurations were dropped by <see cref="WarmUp"/> (unsupported by this build).</summary>
    public List<string> Dropped { get; } = [];

    /// <summary>
    /// Finds the configurations this build serves and runs each through every feature once on this thread (forward,
    /// graph capture and replay, backward with both workspaces, the shared kit), so that the kernels are loaded, the
    /// stream-ordered pool exists and the driver's lazily created state is there before a baseline is taken.
    /// </summary>
    public void WarmUp()
    {
        var served = new List<Config>();
        foreach (Config config in s_candidates)
        {
            if (Serves(config, out string why))
            {
                served.Add(config);
            }
            else
            {
                Dropped.Add($"{config}: {why}");
            }
        }

        _configs = [.. served];
        if (_configs.Length == 0)
        {
            return;
        }

        var random = new Random(_options.Seed);
        var host = new HostData(random);
        foreach (Config config in _configs)
        {
            var dims = new Dims(2, 97, 203, 4, 2, config.HeadDim);
            Plan[] plans =
            [
                new(config, dims, OwnContext: true, Graph: true, Launches: 2, Backward: true, CallerWorkspace: true,
                    AsyncUpload: false, ExtraBytes: 1 << 20, LegacyFill: false, AbandonInFlight: false, WrongCall: false),
                new(config, dims, OwnContext: false, Graph: false, Launches: 0, Backward: true, CallerWorkspace: false,
                    AsyncUpload: true, ExtraBytes: 4099, LegacyFill: true, AbandonInFlight: false, WrongCall: false),
            ];
            foreach (Plan plan in plans)
            {
                RunPlan(-1, 0, plan, host, random, disposeFraction: 1.0);
            }
        }

        UseSharedKit(random);
        Interlocked.Exchange(ref _kit, null)?.Dispose();
        ResetCounts();
    }

    /// <summary>Runs the workers and the collector thread until the duration is over; returns what happened.</summary>
    public HandleStressReport Run()
    {
        if (_configs.Length == 0)
        {
            throw new InvalidOperationException("WarmUp found no configuration this build serves.");
        }

        int workers = _options.Workers;
        var iterations = new long[workers];
        var clock = Stopwatch.StartNew();
        var threads = new Thread[workers];
        for (int w = 0; w < workers; w++)
        {
            int worker = w;
            threads[w] = new Thread(() => iterations[worker] = Work(worker, clock))
            {
                IsBackground = true,
                Name = $"stress worker {worker}",
            };
        }

        int done = 0;
        var collector = new Thread(() => Collect(ref done)) { IsBackground = true, Name = "stress collector" };
        collector.Start();
        foreach (Thread t in threads)
        {
            t.Start();
        }

        TimeSpan patience = _options.Duration + TimeSpan.FromSeconds(60);
        for (int w = 0; w < workers; w++)
        {
            if (!threads[w].Join(Remaining(clock, patience)))
            {
                RecordUnexpected($"worker {w} did not finish within {patience.TotalSeconds:F0} s (a hang)");
            }
        }

        Volatile.Write(ref done, 1);
        if (!collector.Join(TimeSpan.FromSeconds(60)))
        {
            RecordUnexpected("the collector thread did not finish (GC.WaitForPendingFinalizers hangs: a finalizer blocks)");
        }

        clock.Stop();
        return new HandleStressReport(
            iterations, new SortedDictionary<string, long>(_counts, StringComparer.Ordinal), [.. _unexpected],
            Interlocked.Read(ref _unexpectedTotal), [.. _problems], Interlocked.Read(ref _problemsTotal), clock.Elapsed);
    }

    /// <summary>Disposes the shared kit the workers left behind (its objects are tracked like the others).</summary>
    public void Finish() => Interlocked.Exchange(ref _kit, null)?.Dispose();

    /// <summary>Frees what the fault injection leaked: the invalidated buffers' memory and the kept objects.</summary>
    public void ReleaseInjectedLeaks()
    {
        while (_leakedPointers.TryDequeue(out nint pointer))
        {
            _ = NativeMethods.fa_memory_free(_device.Ordinal, pointer);
        }

        lock (_kept)
        {
            foreach (object o in _kept)
            {
                (o as IDisposable)?.Dispose();
            }

            _kept.Clear();
        }
    }

    private static TimeSpan Remaining(Stopwatch clock, TimeSpan total)
    {
        TimeSpan left = total - clock.Elapsed;
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }

    private static int NextSeq(Random random) => random.NextDouble() < 0.5 ? random.Next(1, 65) : random.Next(65, MaxSeq + 1);

    private static bool AllFinite<T>(T[] values, DataType dtype, out int index)
        where T : unmanaged
    {
        ushort mask = dtype == DataType.Float16 ? (ushort)0x7C00 : (ushort)0x7F80;
        ReadOnlySpan<ushort> bits = MemoryMarshal.Cast<T, ushort>(values.AsSpan());
        for (int i = 0; i < bits.Length; i++)
        {
            if ((bits[i] & mask) == mask)
            {
                index = i;
                return false;
            }
        }

        index = -1;
        return true;
    }

    private static int FirstDifference<T>(T[] a, T[] b)
        where T : unmanaged
    {
        ReadOnlySpan<byte> x = MemoryMarshal.AsBytes(a.AsSpan());
        ReadOnlySpan<byte> y = MemoryMarshal.AsBytes(b.AsSpan());
        int common = x.CommonPrefixLength(y);
        return common == x.Length && x.Length == y.Length ? -1 : common / Unsafe.SizeOf<T>();
    }

    private bool Serves(Config config, out string why)
    {
        var dims = new Dims(1, 64, 64, 2, 1, config.HeadDim);
        long qBytes = (long)dims.QElements * 2, kvBytes = (long)dims.KvElements * 2;

        // Fake, aligned, distinct addresses: the checks read only pointers, shapes, strides and dtypes.
        long next = 0x7000_0000_0000;
        DeviceTensor Fake(long bytes, DataType dtype, params long[] shape)
        {
            var t = DeviceTensor.FromPointer((IntPtr)next, dtype, shape);
            next += (bytes + 0xFFFF) & ~0xFFFFL;
            return t;
        }

        long[] qs = [dims.B, dims.Sq, dims.Hq, dims.D], kvs = [dims.B, dims.Sk, dims.Hkv, dims.D], ls = [dims.B, dims.Hq, dims.Sq];
        DeviceTensor q = Fake(qBytes, config.DataType, qs), k = Fake(kvBytes, config.DataType, kvs), v = Fake(kvBytes, config.DataType, kvs);
        DeviceTensor o = Fake(qBytes, config.DataType, qs), dO = Fake(qBytes, config.DataType, qs), lse = Fake(dims.LseElements * 4, DataType.Float32, ls);
        DeviceTensor dq = Fake(qBytes, config.DataType, qs), dk = Fake(kvBytes, config.DataType, kvs), dv = Fake(kvBytes, config.DataType, kvs);
        var options = new AttentionOptions { Causal = config.Causal };
        int cc = _device.ComputeCapabilityCode;
        if (FlashAttention.Check(q, k, v, o, out string message, lse, options, cc) != FlashAttentionStatus.Success)
        {
            why = $"forward: {message}";
            return false;
        }

        if (FlashAttention.CheckBackward(q, k, v, o, dO, lse, dq, dk, dv, out message, options, cc) != FlashAttentionStatus.Success)
        {
            why = $"backward: {message}";
            return false;
        }

        why = string.Empty;
        return true;
    }

    private long Work(int worker, Stopwatch clock)
    {
        var random = new Random(_options.Seed + (7919 * (worker + 1)));
        var host = new HostData(random);
        InjectLeaks(worker);
        long i = 0;
        do
        {
            Plan plan = Plan.Draw(random, _configs) with
            {
                WrongCall = _options.InjectWrongCall && i == 0,
                SkewSecond = _options.InjectWrongResult && i == 1,
            };
            RunPlan(worker, i, plan, host, random, disposeFraction: 0.5);
            if (random.NextDouble() < 0.3)
            {
                try
                {
                    UseSharedKit(random);
                }
                catch (Exception ex)
                {
                    RecordUnexpected($"worker {worker} iteration {i} (shared kit): {ex.GetType().Name}: {ex.Message}");
                }
            }

            i++;
        }
        while (i < _options.MaxIterationsPerWorker && (i < 2 || clock.Elapsed < _options.Duration));

        return i;
    }

    private void Collect(ref int done)
    {
        var random = new Random(_options.Seed ^ 0x5EED);
        while (Volatile.Read(ref done) == 0)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            Add("gc rounds");
            Thread.Sleep(random.Next(0, 6));
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void InjectLeaks(int worker)
    {
        try
        {
            if (_options.InjectNativeLeakBytes > 0)
            {
                var leak = Tracker.Track(new DeviceBuffer<byte>(_device, _options.InjectNativeLeakBytes), "injected native leak");
                leak.Fill(0x5A);
                _leakedPointers.Enqueue(leak.Pointer);
                leak.SetHandleAsInvalid(); // neither Dispose nor the finalizer will free it now
            }

            if (_options.InjectManagedLeak)
            {
                var kept = Tracker.Track(new DeviceBuffer<byte>(_device, 4096), "injected managed leak");
                lock (_kept)
                {
                    _kept.Add(kept);
                }
            }
        }
        catch (Exception ex)
        {
            RecordUnexpected($"worker {worker} (fault injection): {ex.GetType().Name}: {ex.Message}");
        }
    }

    private void RunPlan(int worker, long iteration, Plan plan, HostData host, Random random, double disposeFraction)
    {
        var scope = new Scope(this, random, disposeFraction);
        try
        {
            if (plan.Config.DataType == DataType.Float16)
            {
                Iterate(worker, iteration, plan, host.Half, scope, random);
            }
            else
            {
                Iterate(worker, iteration, plan, host.BFloat16, scope, random);
            }
        }
        catch (Exception ex)
        {
            RecordUnexpected($"worker {worker} iteration {iteration} ({plan}): {ex.GetType().Name}: {ex.Message}");
        }
        finally
        {
            try
            {
                scope.Release();
            }
            catch (Exception ex)
            {
                RecordUnexpected($"worker {worker} iteration {iteration} ({plan}), releasing: {ex.GetType().Name}: {ex.Message}");
            }
        }

        Add("iterations");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void Iterate<T>(int worker, long iteration, Plan plan, T[] host, Scope scope, Random random)
        where T : unmanaged
    {
        Dims d = plan.Dims;
        DataType dtype = plan.Config.DataType;
        var options = new AttentionOptions { Causal = plan.Config.Causal };
        AttentionOptions secondOptions = plan.SkewSecond ? options with { SoftmaxScale = 0.5f } : options; // fault injection
        string where = $"worker {worker} iteration {iteration} ({plan})";

        FlashAttention attention = _shared;
        if (plan.OwnContext)
        {
            attention = scope.Own(new FlashAttention(_device), "context", a => a.Dispose(),
                a => a.Forward(default(AttentionArguments)));
            Add("contexts");
        }

        CudaStream stream = scope.Own(CudaStream.Create(_device), "stream", s => s.Dispose(), s => s.Synchronize());
        Add("streams");

        long[] qs = [d.B, d.Sq, d.Hq, d.D], kvs = [d.B, d.Sk, d.Hkv, d.D], ls = [d.B, d.Hq, d.Sq];
        DeviceBuffer<T> q = Buffer<T>(scope, d.QElements), k = Buffer<T>(scope, d.KvElements), v = Buffer<T>(scope, d.KvElements);
        DeviceBuffer<T> o1 = Buffer<T>(scope, d.QElements), o2 = Buffer<T>(scope, d.QElements);
        DeviceBuffer<float> l1 = Buffer<float>(scope, d.LseElements), l2 = Buffer<float>(scope, d.LseElements);

        List<StreamOperation> uploads = scope.Operations;
        Upload(q, host, random, stream, plan.AsyncUpload, uploads);
        Upload(k, host, random, stream, plan.AsyncUpload, uploads);
        Upload(v, host, random, stream, plan.AsyncUpload, uploads);
        o1.Fill(0xFF, stream);
        l1.Fill(0xFF, stream);
        if (plan.WrongCall)
        {
            // Fault injection: a rank-3 output, which the managed side refuses with an ArgumentException.
            attention.Forward(q.AsTensor(qs), k.AsTensor(kvs), v.AsTensor(kvs), o1.AsTensor(d.B * d.Sq, d.Hq, d.D), null, options, stream);
        }

        attention.Forward(q.AsTensor(qs), k.AsTensor(kvs), v.AsTensor(kvs), o1.AsTensor(qs), l1.AsTensor(ls), options, stream);
        Add("forwards");

        CudaGraph? graph = null;
        if (plan.Graph)
        {
            stream.BeginCapture();
            CudaGraph? captured = null;
            try
            {
                o2.Fill(0xFF, stream);
                l2.Fill(0xFF, stream);
                attention.Forward(q.AsTensor(qs), k.AsTensor(kvs), v.AsTensor(kvs), o2.AsTensor(qs), l2.AsTensor(ls), secondOptions, stream);
            }
            finally
            {
                captured = stream.EndCapture(); // ends the capture even when the call threw
            }

            graph = scope.Own(captured, "graph", g => g.Dispose(), g => g.Launch());
            Add("graphs");
            for (int i = 0; i < plan.Launches; i++)
            {
                graph.Launch(stream);
                Add("graph launches");
            }
        }
        else
        {
            o2.Fill(0xFF, stream);
            l2.Fill(0xFF, stream);
            attention.Forward(q.AsTensor(qs), k.AsTensor(kvs), v.AsTensor(kvs), o2.AsTensor(qs), l2.AsTensor(ls), secondOptions, stream);
            Add("forwards");
        }

        DeviceBuffer<T>? dq = null, dk = null, dv = null;
        if (plan.Backward)
        {
            DeviceBuffer<T> dO = Buffer<T>(scope, d.QElements);
            Upload(dO, host, random, stream, plan.AsyncUpload, uploads);
            dq = Buffer<T>(scope, d.QElements);
            dk = Buffer<T>(scope, d.KvElements);
            dv = Buffer<T>(scope, d.KvElements);
            var args = new BackwardArguments(
                q.AsTensor(qs), k.AsTensor(kvs), v.AsTensor(kvs), o1.AsTensor(qs), dO.AsTensor(qs), l1.AsTensor(ls),
                dq.AsTensor(qs), dk.AsTensor(kvs), dv.AsTensor(kvs));
            if (plan.CallerWorkspace)
            {
                long bytes = attention.GetBackwardWorkspaceSize(args, options);
                args = args with { Workspace = Buffer<byte>(scope, bytes) };
                Add("backwards (caller workspace)");
            }
            else
            {
                Add("backwards (library workspace)");
            }

            attention.Backward(args, options, stream);
        }

        if (plan.ExtraBytes > 0)
        {
            DeviceBuffer<byte> extra = Buffer<byte>(scope, plan.ExtraBytes);
            extra.Fill((byte)random.Next(256), plan.LegacyFill ? null : stream);
            Add(plan.LegacyFill ? "fills (legacy stream)" : "fills (own stream)");
        }

        foreach (StreamOperation op in uploads)
        {
            op.Dispose(); // waits for its copy
        }

        stream.Synchronize();

        var a = new T[d.QElements];
        var b = new T[d.QElements];
        o1.CopyTo(a, stream);
        o2.CopyTo(b, stream);
        var la = new float[d.LseElements];
        var lb = new float[d.LseElements];
        l1.CopyTo(la, stream);
        l2.CopyTo(lb, stream);
        string second = plan.Graph ? $"the graph's replay (after {plan.Launches} launches)" : "a second direct call";
        if (!AllFinite(a, dtype, out int bad))
        {
            RecordProblem($"{where}: output[{bad}] is not finite (not written, or corrupted)");
        }
        else if (FirstDifference(a, b) is int diff and >= 0)
        {
            RecordProblem($"{where}: output of {second} differs from the direct call at element {diff}");
        }
        else if (FirstDifference(la, lb) is int lseDiff and >= 0)
        {
            RecordProblem($"{where}: log-sum-exp of {second} differs from the direct call at element {lseDiff}");
        }

        if (dq is not null && dk is not null && dv is not null)
        {
            var gq = new T[d.QElements];
            var gk = new T[d.KvElements];
            var gv = new T[d.KvElements];
            dq.CopyTo(gq, stream);
            dk.CopyTo(gk, stream);
            dv.CopyTo(gv, stream);
            if (!AllFinite(gq, dtype, out bad) || !AllFinite(gk, dtype, out bad) || !AllFinite(gv, dtype, out bad))
            {
                RecordProblem($"{where}: a gradient has a non-finite element at {bad}");
            }
        }

        if (plan.AbandonInFlight && graph is not null)
        {
            graph.Launch(stream); // still queued (or running) while everything is released below
            Add("releases with work in flight");
        }
    }

    private DeviceBuffer<T> Buffer<T>(Scope scope, long length)
        where T : unmanaged
    {
        var buffer = scope.Own(new DeviceBuffer<T>(_device, length), "buffer", b => b.Dispose(), b => _ = b.Pointer);
        Add("buffers");
        Add("bytes allocated", buffer.SizeInBytes);
        return buffer;
    }

    private static void Upload<T>(DeviceBuffer<T> buffer, T[] host, Random random, CudaStream stream, bool async, List<StreamOperation> pending)
        where T : unmanaged
    {
        int length = checked((int)buffer.Length);
        int offset = random.Next(0, host.Length - length + 1);
        if (async)
        {
            pending.Add(buffer.CopyFromAsync(host.AsMemory(offset, length), stream));
        }
        else
        {
            buffer.CopyFrom(host.AsSpan(offset, length), stream);
        }
    }

    /// <summary>
    /// Uses the shared kit (a forward on its own stream and buffers, maybe with its own context) that any worker may
    /// have disposed meanwhile, and sometimes replaces it, disposing or abandoning the old one.
    /// </summary>
    private void UseSharedKit(Random random)
    {
        Kit? kit = Volatile.Read(ref _kit);
        if (kit is null || random.NextDouble() < 0.25)
        {
            var fresh = Kit.Create(this, random);
            Kit? old = Interlocked.Exchange(ref _kit, fresh);
            Add("shared kit swaps");
            if (old is not null && random.NextDouble() < 0.5)
            {
                old.Dispose();
            }

            // Half the time use the kit just replaced (possibly disposed an instant ago), else the fresh one.
            kit = old is not null && random.NextDouble() < 0.5 ? old : fresh;
        }

        Add("shared kit uses");
        try
        {
            kit.Forward();
        }
        catch (ObjectDisposedException)
        {
            Add("expected: ObjectDisposedException from a disposed shared kit");
        }
    }

    private void ResetCounts() => _counts.Clear();

    private void Add(string name, long amount = 1) => _counts.AddOrUpdate(name, amount, (_, n) => n + amount);

    private void RecordUnexpected(string text)
    {
        if (Interlocked.Increment(ref _unexpectedTotal) <= MaxRecorded)
        {
            _unexpected.Enqueue(text);
        }
    }

    private void RecordProblem(string text)
    {
        if (Interlocked.Increment(ref _problemsTotal) <= MaxRecorded)
        {
            _problems.Enqueue(text);
        }
    }

    /// <summary>An element type, head dim and mask the stress draws from.</summary>
    internal sealed record Config(DataType DataType, int HeadDim, bool Causal)
    {
        public override string ToString() => $"{DataType} D={HeadDim}{(Causal ? " causal" : string.Empty)}";
    }

    private readonly record struct Dims(int B, int Sq, int Sk, int Hq, int Hkv, int D)
    {
        public int QElements => B * Sq * Hq * D;

        public int KvElements => B * Sk * Hkv * D;

        public int LseElements => B * Hq * Sq;

        public override string ToString() => $"B={B} Sq={Sq} Sk={Sk} Hq={Hq} Hkv={Hkv} D={D}";
    }

    private sealed record Plan(
        Config Config, Dims Dims, bool OwnContext, bool Graph, int Launches, bool Backward, bool CallerWorkspace,
        bool AsyncUpload, long ExtraBytes, bool LegacyFill, bool AbandonInFlight, bool WrongCall, bool SkewSecond = false)
    {
        public static Plan Draw(Random r, Config[] configs)
        {
            Config config = configs[r.Next(configs.Length)];
            int hkv = r.Next(1, 3);
            var dims = new Dims(r.Next(1, MaxBatch + 1), NextSeq(r), NextSeq(r), hkv * r.Next(1, (MaxHeadsQ / hkv) + 1), hkv, config.HeadDim);
            bool graph = r.NextDouble() < 0.5;
            return new Plan(
                config, dims,
                OwnContext: r.NextDouble() < 0.25,
                Graph: graph,
                Launches: r.Next(1, 4),
                Backward: r.NextDouble() < 0.4,
                CallerWorkspace: r.NextDouble() < 0.5,
                AsyncUpload: r.NextDouble() < 0.3,
                ExtraBytes: r.NextDouble() < 0.5 ? (1L << r.Next(0, 25)) + r.Next(0, 4096) : 0,
                LegacyFill: r.NextDouble() < 0.2,
                AbandonInFlight: graph && r.NextDouble() < 0.15,
                WrongCall: false);
        }

        public override string ToString() =>
            $"{Config} {Dims}{(OwnContext ? " own context" : string.Empty)}{(Graph ? $" graph x{Launches}" : string.Empty)}" +
            $"{(Backward ? (CallerWorkspace ? " bwd+workspace" : " bwd") : string.Empty)}{(AsyncUpload ? " async" : string.Empty)}" +
            $"{(ExtraBytes > 0 ? $" extra {ExtraBytes} B" : string.Empty)}{(AbandonInFlight ? " in-flight" : string.Empty)}";
    }

    /// <summary>Random fp16 and bf16 values (normal, std 1) that uploads take slices of.</summary>
    private sealed class HostData
    {
        public HostData(Random random)
        {
            float[] values = TestRandom.Normal(random, HostElements + 1);
            Half = [.. values.Select(x => (Half)x)];
            BFloat16 = [.. values.Select(x => (BFloat16)x)];
        }

        public Half[] Half { get; }

        public BFloat16[] BFloat16 { get; }
    }

    /// <summary>
    /// The objects one iteration owns. <see cref="Release"/> goes through them in random order and disposes each with
    /// probability disposeFraction (then, a quarter of the time, disposes it again and makes a use that must throw
    /// <see cref="ObjectDisposedException"/>), or abandons it to its finalizer.
    /// </summary>
    private sealed class Scope(HandleStress stress, Random random, double disposeFraction)
    {
        private readonly List<(Action Dispose, Action Probe, string Kind)> _owned = [];

        /// <summary>
        /// Asynchronous copies of the iteration, waited for and disposed first in <see cref="Release"/> (also when the
        /// iteration failed): an operation never disposed keeps its buffer and stream referenced for good, by design.
        /// </summary>
        public List<StreamOperation> Operations { get; } = [];

        public T Own<T>(T value, string kind, Action<T> dispose, Action<T> probe)
            where T : class
        {
            stress.Tracker.Track(value, kind);
            _owned.Add((() => dispose(value), () => probe(value), kind));
            return value;
        }

        public void Release()
        {
            foreach (StreamOperation op in Operations)
            {
                op.Dispose();
            }

            Operations.Clear();
            var order = _owned.ToArray();
            _owned.Clear();
            random.Shuffle(order);
            foreach ((Action dispose, Action probe, string kind) in order)
            {
                if (random.NextDouble() >= disposeFraction)
                {
                    stress.Add("abandoned to the finalizer");
                    continue;
                }

                dispose();
                stress.Add("disposed");
                if (random.NextDouble() < 0.25)
                {
                    dispose(); // twice: harmless
                    stress.Add("use-after-dispose probes");
                    try
                    {
                        probe();
                        stress.RecordUnexpected($"a disposed {kind} could still be used (no ObjectDisposedException)");
                    }
                    catch (ObjectDisposedException)
                    {
                        stress.Add("expected: ObjectDisposedException from a probe");
                    }
                }
            }
        }
    }

    /// <summary>
    /// Objects several workers use at once while any of them may dispose them: a stream, q/k/v/out (of the first
    /// configuration, a fixed shape) and, half the time, a context of its own (else the shared one, never disposed here).
    /// </summary>
    private sealed class Kit : IDisposable
    {
        private readonly IDisposable[] _owned;

        private readonly AttentionOptions _options;

        private Kit(
            FlashAttention attention, CudaStream stream, DeviceTensor q, DeviceTensor k, DeviceTensor v, DeviceTensor o,
            AttentionOptions options, IDisposable[] owned)
        {
            Attention = attention;
            Stream = stream;
            Q = q;
            K = k;
            V = v;
            O = o;
            _options = options;
            _owned = owned;
        }

        public FlashAttention Attention { get; }

        public CudaStream Stream { get; }

        public DeviceTensor Q { get; }

        public DeviceTensor K { get; }

        public DeviceTensor V { get; }

        public DeviceTensor O { get; }

        public static Kit Create(HandleStress stress, Random random)
        {
            HandleTracker tracker = stress.Tracker;
            Config config = stress._configs[0];
            var owned = new List<IDisposable>();
            FlashAttention attention = stress._shared;
            if (random.NextDouble() < 0.5)
            {
                attention = tracker.Track(new FlashAttention(stress._device), "kit context");
                owned.Add(attention);
            }

            CudaStream stream = tracker.Track(CudaStream.Create(stress._device), "kit stream");
            owned.Add(stream);
            long[] shape = [1, 64, 2, config.HeadDim];
            DeviceTensor Make()
            {
                return config.DataType == DataType.Float16 ? Zeros<Half>() : Zeros<BFloat16>();

                DeviceTensor Zeros<T>()
                    where T : unmanaged
                {
                    var buffer = tracker.Track(new DeviceBuffer<T>(stress._device, 64 * 2 * config.HeadDim), "kit buffer");
                    owned.Add(buffer);
                    buffer.Fill(0, stream);
                    return buffer.AsTensor(shape);
                }
            }

            DeviceTensor q = Make(), k = Make(), v = Make(), o = Make();
            stream.Synchronize();
            return new Kit(attention, stream, q, k, v, o, new AttentionOptions { Causal = config.Causal }, [.. owned]);
        }

        public void Forward() => Attention.Forward(Q, K, V, O, null, _options, Stream);

        public void Dispose()
        {
            foreach (IDisposable d in _owned)
            {
                d.Dispose();
            }
        }
    }
}
