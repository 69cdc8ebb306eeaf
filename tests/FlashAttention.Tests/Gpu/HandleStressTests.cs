using System.Globalization;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// Issue 16, "SafeHandle stress": many threads create, use, dispose and abandon contexts, streams, buffers and graphs
/// while another thread keeps running the garbage collector and finalizers (<see cref="HandleStress"/> says what an
/// iteration does). Afterwards nothing failed but the expected <see cref="ObjectDisposedException"/>s, every object
/// the threads made was released (disposed, or finalized and reclaimed), a valid call still gives the right answer,
/// and device memory in use is back at its baseline.
/// </summary>
/// <remarks>
/// <para>
/// Device memory comes from the CUDA driver (<see cref="CudaDriverMemory"/>: the library exposes no memory query). The
/// baseline is taken after a warm-up that ran every configuration and feature once, so that lazily loaded kernels and
/// the driver's per-feature state are in it. The library's stream-ordered allocations (the backward without a caller
/// workspace) come from the device's pool, which keeps freed memory: before each reading the device is synchronised
/// (queued stream-ordered frees run) and the pool trimmed to 0, its used bytes are checked separately (they must be
/// back where they were, exactly), and bytes in use must be within <see cref="ToleranceBytes"/> of the baseline. A leak
/// smaller than that is not seen by the memory check; a leaked object, of any size, by the object check.
/// </para>
/// <para>
/// <see cref="ChecksCatchInjectedLeaksAndWrongCalls"/> runs the same stress with faults injected and shows that each
/// check fails on its fault. Replay: the seed is printed (TestContext output) and in every message; FA_TEST_SEED
/// varies it, FA_STRESS_SECONDS sets the duration of the main test (default 10 s).
/// </para>
/// </remarks>
[TestFixture]
[Category("Gpu")]
[NonParallelizable]
public sealed class HandleStressTests : GpuTestBase
{
    /// <summary>How far device memory in use may end above its baseline (driver allocation granularity, kernel code).</summary>
    private const long ToleranceBytes = 64L << 20;

    /// <summary>The native leak each worker injects in the fault test: well above the tolerance in total.</summary>
    private const long InjectedLeakBytes = 96L << 20;

    private const int Workers = 8;
    private const int FaultWorkers = 4;

    [Test]
    public void ThreadsCreateUseAndReleaseHandlesWhileFinalizersRun()
    {
        int seed = TestRandom.SeedForCurrentTest();
        TimeSpan duration = StressDuration();
        string replay = $"seed {seed}, {Workers} workers, {duration.TotalSeconds:F1} s";
        using CudaDriverMemory memory = OpenDriverMemory();
        using var shared = new FlashAttention(Device);
        var stress = new HandleStress(Device, shared, new HandleStressOptions { Workers = Workers, Duration = duration, Seed = seed });
        Log($"{replay}; device {Device}");

        stress.WarmUp();
        RequireConfigs(stress);
        Snapshot baseline = Measure(memory);
        HandleStressReport report = stress.Run();
        stress.Finish();
        Snapshot released = Measure(memory);
        SortedDictionary<string, int> alive = stress.Tracker.Alive();
        string? final = FinalForward(shared, stress.Configs[0], seed);
        Snapshot after = Measure(memory);

        Log(report.ToString());
        Log($"objects tracked: {HandleTracker.Describe(stress.Tracker.Tracked())}; still alive: {HandleTracker.Describe(alive)}");
        Log($"memory in use: baseline {baseline}, after the stress {released}, after the final call {after}; " +
            $"pool reserved high-water {memory.PoolReservedHighBytes() / (1 << 20)} MiB");
        long probes = report.Count("use-after-dispose probes");
        Assert.Multiple(() =>
        {
            Assert.That(report.UnexpectedTotal, Is.Zero,
                $"unexpected exceptions ({replay}), the first ones:\n{string.Join("\n", report.Unexpected)}");
            Assert.That(report.ProblemsTotal, Is.Zero, $"wrong results ({replay}), the first ones:\n{string.Join("\n", report.Problems)}");
            Assert.That(report.Count("expected: ObjectDisposedException from a probe"), Is.EqualTo(probes).And.GreaterThan(0),
                $"every use of a disposed object throws ObjectDisposedException ({replay})");
            foreach (string exercised in new[]
            {
                "graphs", "backwards (caller workspace)", "backwards (library workspace)", "contexts", "abandoned to the finalizer",
                "disposed", "shared kit swaps", "releases with work in flight", "fills (legacy stream)", "gc rounds",
            })
            {
                Assert.That(report.Count(exercised), Is.GreaterThan(0), $"the stress exercised '{exercised}' ({replay}): {report}");
            }

            Assert.That(ObjectVerdict(alive), Is.Null, replay);
            Assert.That(final, Is.Null, $"a valid call after the stress ({replay})");
            Assert.That(PoolVerdict(baseline, released), Is.Null, replay);
            Assert.That(MemoryVerdict(baseline, released), Is.Null, $"after the stress ({replay})");
            Assert.That(MemoryVerdict(baseline, after), Is.Null, $"after the final call ({replay})");
        });
    }

    /// <summary>
    /// The same stress, shorter, with four faults: each worker leaks native memory (a buffer whose handle is marked
    /// invalid, so no release path frees it), keeps one buffer referenced (a managed leak), makes one call the managed
    /// API refuses and one repeated call with another scale. Each check must see its fault, and only its own; after the
    /// leaks are freed both memory and object checks pass again.
    /// </summary>
    [Test]
    public void ChecksCatchInjectedLeaksAndWrongCalls()
    {
        int seed = TestRandom.SeedForCurrentTest();
        string replay = $"seed {seed}, {FaultWorkers} workers with injected faults";
        using CudaDriverMemory memory = OpenDriverMemory();
        using var shared = new FlashAttention(Device);
        var stress = new HandleStress(Device, shared, new HandleStressOptions
        {
            Workers = FaultWorkers,
            Duration = TimeSpan.FromSeconds(2),
            Seed = seed,
            InjectNativeLeakBytes = InjectedLeakBytes,
            InjectManagedLeak = true,
            InjectWrongCall = true,
            InjectWrongResult = true,
        });
        Log(replay);

        stress.WarmUp();
        RequireConfigs(stress);
        Snapshot baseline = Measure(memory);
        HandleStressReport report = stress.Run();
        stress.Finish();
        Snapshot leaky = Measure(memory);
        SortedDictionary<string, int> alive = stress.Tracker.Alive();
        string? leakyMemory = MemoryVerdict(baseline, leaky);
        string? leakyObjects = ObjectVerdict(alive);

        stress.ReleaseInjectedLeaks();
        Snapshot clean = Measure(memory);
        SortedDictionary<string, int> aliveAfter = stress.Tracker.Alive();
        Log($"{report}; memory in use: baseline {baseline}, with the leaks {leaky}, after freeing them {clean}; alive: {HandleTracker.Describe(alive)}");

        Assert.Multiple(() =>
        {
            Assert.That(leakyMemory, Is.Not.Null, $"the memory check sees {FaultWorkers} x {InjectedLeakBytes >> 20} MiB leaked ({replay})");
            Assert.That(leaky.InUse - baseline.InUse, Is.GreaterThanOrEqualTo((FaultWorkers * InjectedLeakBytes) - ToleranceBytes), replay);
            Assert.That(leakyObjects, Is.Not.Null, $"the object check sees the buffers kept referenced ({replay})");
            Assert.That(alive, Is.EqualTo(new SortedDictionary<string, int> { ["injected managed leak"] = FaultWorkers }),
                $"exactly the kept buffers are alive; the natively leaked ones were finalized and reclaimed ({replay})");
            Assert.That(report.UnexpectedTotal, Is.EqualTo(FaultWorkers),
                $"one unexpected exception per worker, the wrong call ({replay}):\n{string.Join("\n", report.Unexpected)}");
            Assert.That(report.Unexpected, Has.All.Contains("ArgumentException").And.All.Contains("output must have rank 4"), replay);
            Assert.That(report.ProblemsTotal, Is.EqualTo(FaultWorkers),
                $"one wrong result per worker, the skewed second call ({replay}):\n{string.Join("\n", report.Problems)}");
            Assert.That(report.Problems, Has.All.Contains("differs from the direct call"), replay);

            Assert.That(MemoryVerdict(baseline, clean), Is.Null, $"after freeing the injected leaks ({replay})");
            Assert.That(PoolVerdict(baseline, clean), Is.Null, replay);
            Assert.That(ObjectVerdict(aliveAfter), Is.Null, $"after releasing the kept buffers ({replay})");
        });
    }

    /// <summary>Null when memory in use is within the tolerance of the baseline, else what is wrong.</summary>
    private static string? MemoryVerdict(Snapshot baseline, Snapshot now)
    {
        long growth = now.InUse - baseline.InUse;
        return growth <= ToleranceBytes
            ? null
            : $"device memory in use grew by {growth / (1 << 20)} MiB ({growth} bytes) over the baseline {baseline}, " +
              $"more than the tolerance of {ToleranceBytes >> 20} MiB: something was not freed";
    }

    /// <summary>Null when the stream-ordered pool has handed out as many bytes as at the baseline.</summary>
    private static string? PoolVerdict(Snapshot baseline, Snapshot now) =>
        now.PoolUsed == baseline.PoolUsed
            ? null
            : $"the stream-ordered pool has {now.PoolUsed} bytes handed out, {baseline.PoolUsed} at the baseline: " +
              "a library workspace (cudaMallocAsync) was not freed";

    /// <summary>Null when no tracked object is alive.</summary>
    private static string? ObjectVerdict(IReadOnlyDictionary<string, int> alive) =>
        alive.Count == 0
            ? null
            : $"objects still alive after garbage collection and finalizers: {HandleTracker.Describe(alive)} (something keeps them referenced)";

    private static TimeSpan StressDuration()
    {
        string? text = Environment.GetEnvironmentVariable("FA_STRESS_SECONDS");
        return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) && seconds > 0
            ? TimeSpan.FromSeconds(seconds)
            : TimeSpan.FromSeconds(10);
    }

    private static void Log(string text) => TestContext.Out.WriteLine($"[handle stress] {text}");

    private static void RequireConfigs(HandleStress stress)
    {
        if (stress.Configs.Count == 0)
        {
            Assert.Ignore($"this build serves none of the stress configurations: {string.Join("; ", stress.Dropped)}");
        }

        if (stress.Dropped.Count > 0)
        {
            Log($"not served by this build, left out: {string.Join("; ", stress.Dropped)}");
        }
    }

    private CudaDriverMemory OpenDriverMemory()
    {
        if (!CudaDriverMemory.TryOpen(Device.Ordinal, out CudaDriverMemory? memory, out string reason))
        {
            Assert.Fail($"cannot read device memory from the CUDA driver: {reason}");
        }

        return memory!;
    }

    /// <summary>Collects garbage and runs finalizers, waits for the device, trims the pool, then reads memory.</summary>
    private Snapshot Measure(CudaDriverMemory memory)
    {
        HandleTracker.Settle();
        Device.Synchronize();
        memory.TrimPool();
        return new Snapshot(memory.UsedBytes(), memory.PoolUsedBytes(), memory.PoolReservedBytes());
    }

    /// <summary>A forward against the float64 reference on fresh buffers; null when right.</summary>
    private string? FinalForward(FlashAttention attention, HandleStress.Config config, int seed)
    {
        var random = new Random(seed);
        var dims = new AttentionDims(2, 203, 317, 4, 2, config.HeadDim);
        using ForwardRun run = ForwardRun.Create(Device, dims, config.DataType, random, seed);
        var options = new AttentionOptions { Causal = config.Causal };
        attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, options);
        Device.Synchronize();
        float[] ours = run.DOut.Read();
        int bad = Numerics.FirstNonFinite(ours);
        if (bad >= 0)
        {
            return $"{config} {dims}: output[{bad}] = {ours[bad]}";
        }

        double error = Numerics.RelativeL2(ours, run.Reference(options).Out);
        return error <= 1e-2 ? null : $"{config} {dims}: relative L2 error {error:E2} against the float64 reference (limit 1e-2)";
    }

    /// <summary>Device memory in use and the stream-ordered pool's used and reserved bytes at one moment.</summary>
    private readonly record struct Snapshot(long InUse, long PoolUsed, long PoolReserved)
    {
        public override string ToString() =>
            $"{InUse / (1 << 20)} MiB (pool: {PoolUsed} B used, {PoolReserved / (1 << 20)} MiB reserved)";
    }
}
