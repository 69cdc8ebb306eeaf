using System.Diagnostics;
using System.Globalization;
using FlashAttn;
using Microsoft.Extensions.Logging;

namespace FlashAttn.Demo;

/// <summary>
/// The main job: one bf16 causal attention forward through the managed API on the GPU, checked against the
/// float64 CPU reference and timed; then the forward features (a variable-length batch with a sliding window and
/// softcap, and a CUDA graph replayed on new inputs), each checked the same way. Without a GPU (or without the
/// native library) it says why and runs the same computations, smaller, on the CPU reference. Exit code 0 on
/// success, 1 when a result is wrong, 2 on an unexpected error or an unknown argument; --cpu runs the CPU reference
/// even where a GPU is available.
/// </summary>
internal static class Program
{
    private const double MaxRelativeL2 = 1e-2;   // DESIGN.md: bf16 output vs float64 reference.
    private const double MaxLseAbsError = 1e-3;  // fp32 log-sum-exp of bf16 inputs.

    private static int Main(string[] args)
    {
        bool forceCpu = false, verbose = false, help = false;
        foreach (string arg in args)
        {
            switch (arg)
            {
                case "--cpu":
                    forceCpu = true;
                    break;
                case "--verbose" or "-v":
                    verbose = true;
                    break;
                case "--help" or "-h":
                    help = true;
                    break;
                default:
                    // A mistyped flag (say --cpus) must not silently run the GPU path the caller meant to avoid.
                    Console.Error.WriteLine($"FlashAttention.Demo: unknown argument '{arg}'");
                    PrintUsage(Console.Error);
                    return 2;
            }
        }

        if (help)
        {
            PrintUsage(Console.Out);
            return 0;
        }

        using ILoggerFactory loggerFactory = LoggerFactory.Create(b => b
            .AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.TimestampFormat = "HH:mm:ss.fff ";
            })
            .SetMinimumLevel(verbose ? LogLevel.Debug : LogLevel.Information));
        try
        {
            Console.WriteLine(FlashAttention.TryGetNativeLibrary(out string libPath, out string libVersion)
                ? $"native library: {libPath} (version {libVersion})"
                : "native library: not loaded");
            if (!forceCpu && CudaDevice.TryGetAvailability(out _))
            {
                return RunGpu(loggerFactory.CreateLogger<FlashAttention>());
            }

            if (forceCpu)
            {
                Console.WriteLine("CPU reference (--cpu): the GPU path is not tried");
            }
            else
            {
                Console.WriteLine($"no GPU: {Reason()}");
            }

            Console.WriteLine("running the same call on the CPU reference");
            Console.WriteLine();
            return RunCpu();
        }
        catch (FlashAttentionException ex)
        {
            Console.Error.WriteLine($"FAILED ({ex.Status}): {ex.Message}");
            return 2;
        }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or OutOfMemoryException)
        {
            Console.Error.WriteLine($"FAILED: {ex}");
            return 2;
        }
    }

    private static void PrintUsage(TextWriter to)
    {
        to.WriteLine("usage: FlashAttention.Demo [--cpu] [--verbose] [--help]");
        to.WriteLine("  --cpu          use the CPU reference even where a GPU is available");
        to.WriteLine("  --verbose, -v  log at Debug (library path, call path, native log)");
        to.WriteLine("  --help, -h     print this and exit");
    }

    private static string Reason()
    {
        CudaDevice.TryGetAvailability(out string reason);
        return reason.ReplaceLineEndings(Environment.NewLine + "    ");
    }

    // ---- GPU ---------------------------------------------------------------------------------------------------

    private static int RunGpu(ILogger<FlashAttention> logger)
    {
        var shape = new AttentionShape(Batch: 2, SeqLenQ: 1024, SeqLenK: 1024, HeadsQ: 16, HeadsKv: 16, HeadDim: 128);
        var options = new AttentionOptions { Causal = true };
        CudaDevice device = CudaDevice.Open(0);
        Console.WriteLine($"GPU: {device}");
        Console.WriteLine($"problem: {Describe(shape, options)}, bf16");

        int seed = Environment.TickCount;
        BFloat16[] q = RandomBf16(shape.QElementCount, seed);
        BFloat16[] k = RandomBf16(shape.KvElementCount, seed + 1);
        BFloat16[] v = RandomBf16(shape.KvElementCount, seed + 2);
        Console.WriteLine($"inputs: standard normal, rounded to bf16 (seed {seed})");

        using var stream = CudaStream.Create(device);
        using var attention = new FlashAttention(device, logger);
        using var qBuf = new DeviceBuffer<BFloat16>(device, q.Length);
        using var kBuf = new DeviceBuffer<BFloat16>(device, k.Length);
        using var vBuf = new DeviceBuffer<BFloat16>(device, v.Length);
        using var oBuf = new DeviceBuffer<BFloat16>(device, q.Length);
        using var lBuf = new DeviceBuffer<float>(device, shape.LseElementCount);
        qBuf.CopyFrom(q, stream);
        kBuf.CopyFrom(k, stream);
        vBuf.CopyFrom(v, stream);
        oBuf.Fill(0xFF, stream); // poison: every element NaN until the kernel writes it
        lBuf.Fill(0xFF, stream);

        DeviceTensor qT = qBuf.AsTensor(shape.Batch, shape.SeqLenQ, shape.HeadsQ, shape.HeadDim);
        DeviceTensor kT = kBuf.AsTensor(shape.Batch, shape.SeqLenK, shape.HeadsKv, shape.HeadDim);
        DeviceTensor vT = vBuf.AsTensor(shape.Batch, shape.SeqLenK, shape.HeadsKv, shape.HeadDim);
        DeviceTensor oT = oBuf.AsTensor(shape.Batch, shape.SeqLenQ, shape.HeadsQ, shape.HeadDim);
        DeviceTensor lT = lBuf.AsTensor(shape.Batch, shape.HeadsQ, shape.SeqLenQ);

        FlashAttentionStatus check = FlashAttention.Check(qT, kT, vT, oT, out string why, lT, options, device.ComputeCapabilityCode);
        if (check != FlashAttentionStatus.Success)
        {
            Console.WriteLine($"FAILED: the library does not serve this call on {device.Name}: {check}: {why}");
            return 1;
        }

        attention.Forward(qT, kT, vT, oT, lT, options, stream);
        stream.Synchronize();
        var outBits = new BFloat16[q.Length];
        var lse = new float[shape.LseElementCount];
        oBuf.CopyTo(outBits, stream);
        lBuf.CopyTo(lse, stream);

        // Reference on every head (float64, parallel over rows).
        var sw = Stopwatch.StartNew();
        var expected = new double[q.Length];
        var expectedLse = new double[shape.LseElementCount];
        AttentionReference.Forward(q, k, v, shape, options, expected, expectedLse);
        sw.Stop();
        Console.WriteLine($"CPU float64 reference: all {shape.Batch * shape.HeadsQ} (batch, head) pairs in {sw.Elapsed.TotalSeconds:F2} s");

        double[] actual = AttentionReference.ToDouble(outBits);
        int nanCount = actual.Count(double.IsNaN);
        double relL2 = AttentionReference.RelativeL2Error(expected, actual);
        double floor = AttentionReference.RelativeL2Error(expected, expected.Select(x => (double)(BFloat16)x).ToArray());
        double lseErr = MaxAbsError(expectedLse, lse);
        Console.WriteLine($"output relative L2 error: {relL2:E3} (limit {MaxRelativeL2:E0}; rounding the exact result to bf16 alone gives {floor:E3})");
        Console.WriteLine($"log-sum-exp max abs error: {lseErr:E3} (limit {MaxLseAbsError:E0})");
        if (nanCount > 0)
        {
            Console.WriteLine($"{nanCount} output elements are NaN (unwritten poison or a kernel bug)");
        }

        // Timing: warm up, then batches of back-to-back launches between synchronisations; median per call.
        const int warmup = 5, batches = 15, perBatch = 20;
        for (int i = 0; i < warmup; i++)
        {
            attention.Forward(qT, kT, vT, oT, lT, options, stream);
        }

        stream.Synchronize();
        var perCallMs = new double[batches];
        for (int b = 0; b < batches; b++)
        {
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < perBatch; i++)
            {
                attention.Forward(qT, kT, vT, oT, lT, options, stream);
            }

            stream.Synchronize();
            perCallMs[b] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds / perBatch;
        }

        Array.Sort(perCallMs);
        double medianMs = perCallMs[batches / 2];
        double tflops = shape.ForwardFlops(options.Causal) / (medianMs * 1e-3) / 1e12;
        Console.WriteLine(string.Create(
            CultureInfo.InvariantCulture,
            $"time: {medianMs * 1e3:F1} us per call (median of {batches} batches of {perBatch}, after {warmup} warm-up calls; min {perCallMs[0] * 1e3:F1} us)"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"throughput: {tflops:F1} TFLOP/s (causal FLOPs = 2 * B * H * S^2 * D)"));

        bool ok = nanCount == 0 && relL2 <= MaxRelativeL2 && lseErr <= MaxLseAbsError;
        Console.WriteLine(ok ? "main call: PASS" : "main call: FAIL: the GPU result is not within the limits above");

        Console.WriteLine();
        ShowCapabilities(device.ComputeCapabilityCode);
        bool varlenOk = RunGpuVarlen(device, attention, stream, seed + 3);
        bool graphOk = RunGpuGraph(device, attention, stream, seed + 10);
        ok &= varlenOk && graphOk;
        Console.WriteLine(ok ? "PASS" : "FAIL: see the lines above");
        return ok ? 0 : 1;
    }

    /// <summary>
    /// A variable-length batch (empty sequences, a sequence with no keys, Sq != Sk) with a causal sliding window and
    /// softcap, against the float64 reference. Skipped (not failed) when this build does not serve it.
    /// </summary>
    private static bool RunGpuVarlen(CudaDevice device, FlashAttention attention, CudaStream stream, int seed)
    {
        int[] lensQ = [1, 0, 77, 130, 17, 4];
        int[] lensK = [33, 5, 77, 200, 1, 0];
        const int headsQ = 8, headsKv = 2, headDim = 96;
        var options = new AttentionOptions { Causal = true, WindowLeft = 48, Softcap = 5f };
        Console.WriteLine($"varlen: {lensQ.Length} sequences, q lengths [{string.Join(", ", lensQ)}], k lengths [{string.Join(", ", lensK)}], " +
            $"Hq={headsQ} Hkv={headsKv} D={headDim}, causal (bottom-right per sequence), window left 48, softcap 5, bf16");
        SupportResult support = FlashAttention.QuerySupport(
            SupportQuery.For(AttentionPass.Forward, DataType.BFloat16, headDim, options, varlen: true, device.ComputeCapabilityCode));
        if (!support.IsSupported)
        {
            Console.WriteLine($"varlen: skipped, this build does not serve it: {support.Reason}");
            return true;
        }

        int totalQ = lensQ.Sum(), totalK = lensK.Sum();
        BFloat16[] q = RandomBf16((long)totalQ * headsQ * headDim, seed);
        BFloat16[] k = RandomBf16((long)totalK * headsKv * headDim, seed + 1);
        BFloat16[] v = RandomBf16((long)totalK * headsKv * headDim, seed + 2);
        using var batch = VarlenBatch.FromLengths(device, lensQ, lensK, stream);
        using var qBuf = new DeviceBuffer<BFloat16>(device, q.Length);
        using var kBuf = new DeviceBuffer<BFloat16>(device, k.Length);
        using var vBuf = new DeviceBuffer<BFloat16>(device, v.Length);
        using var oBuf = new DeviceBuffer<BFloat16>(device, q.Length);
        using var lBuf = new DeviceBuffer<float>(device, (long)headsQ * totalQ);
        qBuf.CopyFrom(q, stream);
        kBuf.CopyFrom(k, stream);
        vBuf.CopyFrom(v, stream);
        oBuf.Fill(0xFF, stream);
        lBuf.Fill(0xFF, stream);
        attention.ForwardVarlen(
            qBuf.AsTensor(totalQ, headsQ, headDim), kBuf.AsTensor(totalK, headsKv, headDim), vBuf.AsTensor(totalK, headsKv, headDim),
            oBuf.AsTensor(totalQ, headsQ, headDim), batch, lBuf.AsTensor(headsQ, totalQ), options, stream);
        stream.Synchronize();
        var outBits = new BFloat16[q.Length];
        var lse = new float[lBuf.Length];
        oBuf.CopyTo(outBits, stream);
        lBuf.CopyTo(lse, stream);

        var expected = new double[q.Length];
        var expectedLse = new double[lse.Length];
        AttentionReference.ForwardVarlen(q, k, v, lensQ, lensK, headsQ, headsKv, headDim, options, expected, expectedLse);
        double[] actual = AttentionReference.ToDouble(outBits);
        int nanCount = actual.Count(double.IsNaN);
        double relL2 = AttentionReference.RelativeL2Error(expected, actual);
        double lseErr = MaxAbsError(expectedLse, lse);
        bool ok = nanCount == 0 && relL2 <= MaxRelativeL2 && lseErr <= MaxLseAbsError;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"varlen: output relative L2 error {relL2:E3} (limit {MaxRelativeL2:E0}), log-sum-exp max abs error {lseErr:E3} " +
            $"(limit {MaxLseAbsError:E0}), {nanCount} NaN: {(ok ? "PASS" : "FAIL")}"));
        return ok;
    }

    /// <summary>
    /// Captures one forward call into a CUDA graph, then replays it twice: on the captured inputs and after writing
    /// new inputs into the same buffers. Both replays are checked against the float64 reference.
    /// </summary>
    private static bool RunGpuGraph(CudaDevice device, FlashAttention attention, CudaStream stream, int seed)
    {
        var shape = new AttentionShape(Batch: 1, SeqLenQ: 300, SeqLenK: 300, HeadsQ: 4, HeadsKv: 4, HeadDim: 64);
        var options = new AttentionOptions { Causal = true };
        Console.WriteLine($"CUDA graph: {Describe(shape, options)}, bf16; capture once, replay on two sets of inputs");
        using var qBuf = new DeviceBuffer<BFloat16>(device, shape.QElementCount);
        using var kBuf = new DeviceBuffer<BFloat16>(device, shape.KvElementCount);
        using var vBuf = new DeviceBuffer<BFloat16>(device, shape.KvElementCount);
        using var oBuf = new DeviceBuffer<BFloat16>(device, shape.QElementCount);
        DeviceTensor qT = qBuf.AsTensor(shape.Batch, shape.SeqLenQ, shape.HeadsQ, shape.HeadDim);
        DeviceTensor kT = kBuf.AsTensor(shape.Batch, shape.SeqLenK, shape.HeadsKv, shape.HeadDim);
        DeviceTensor vT = vBuf.AsTensor(shape.Batch, shape.SeqLenK, shape.HeadsKv, shape.HeadDim);
        DeviceTensor oT = oBuf.AsTensor(shape.Batch, shape.SeqLenQ, shape.HeadsQ, shape.HeadDim);

        stream.Synchronize();
        stream.BeginCapture();
        try
        {
            attention.Forward(qT, kT, vT, oT, null, options, stream);
        }
        catch
        {
            // End the capture so the stream is usable again, then report the call's own error.
            try
            {
                stream.EndCapture().Dispose();
            }
            catch (FlashAttentionException)
            {
                // The capture may already be invalid; the original exception says more.
            }

            throw;
        }

        using (CudaGraph graph = stream.EndCapture())
        {
            bool ok = true;
            double[]? previous = null;
            for (int round = 0; round < 2; round++)
            {
                BFloat16[] q = RandomBf16(shape.QElementCount, seed + (3 * round));
                BFloat16[] k = RandomBf16(shape.KvElementCount, seed + (3 * round) + 1);
                BFloat16[] v = RandomBf16(shape.KvElementCount, seed + (3 * round) + 2);
                qBuf.CopyFrom(q, stream);
                kBuf.CopyFrom(k, stream);
                vBuf.CopyFrom(v, stream);
                oBuf.Fill(0xFF, stream);
                graph.Launch(stream);
                stream.Synchronize();
                var outBits = new BFloat16[shape.QElementCount];
                oBuf.CopyTo(outBits, stream);

                var expected = new double[shape.QElementCount];
                AttentionReference.Forward(q, k, v, shape, options, expected, Span<double>.Empty);
                double[] actual = AttentionReference.ToDouble(outBits);
                double relL2 = AttentionReference.RelativeL2Error(expected, actual);
                bool changed = previous is null || !previous.AsSpan().SequenceEqual(actual);
                bool roundOk = !actual.Any(double.IsNaN) && relL2 <= MaxRelativeL2 && changed;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"CUDA graph replay {round + 1}: output relative L2 error {relL2:E3} (limit {MaxRelativeL2:E0})" +
                    $"{(changed ? string.Empty : ", but the output did not change with the inputs")}: {(roundOk ? "PASS" : "FAIL")}"));
                ok &= roundOk;
                previous = actual;
            }

            return ok;
        }
    }

    // ---- CPU ---------------------------------------------------------------------------------------------------

    private static int RunCpu()
    {
        ShowNativeCheck();

        var shape = new AttentionShape(Batch: 1, SeqLenQ: 256, SeqLenK: 256, HeadsQ: 8, HeadsKv: 8, HeadDim: 64);
        var options = new AttentionOptions { Causal = true };
        Console.WriteLine($"problem: {Describe(shape, options)}, bf16 inputs, float64 arithmetic");
        int seed = Environment.TickCount;
        BFloat16[] q = RandomBf16(shape.QElementCount, seed);
        BFloat16[] k = RandomBf16(shape.KvElementCount, seed + 1);
        BFloat16[] v = RandomBf16(shape.KvElementCount, seed + 2);

        var output = new double[shape.QElementCount];
        var lse = new double[shape.LseElementCount];
        var sw = Stopwatch.StartNew();
        AttentionReference.Forward(q, k, v, shape, options, output, lse);
        sw.Stop();

        double rms = Math.Sqrt(output.Sum(x => x * x) / output.Length);
        double maxAbs = output.Max(Math.Abs);
        Console.WriteLine($"inputs: standard normal, rounded to bf16 (seed {seed})");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"output: {output.Length} values, rms {rms:F4}, max |x| {maxAbs:F4}; log-sum-exp in [{lse.Min():F4}, {lse.Max():F4}]"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"time: {sw.Elapsed.TotalMilliseconds:F1} ms on the CPU ({shape.ForwardFlops(options.Causal) / sw.Elapsed.TotalSeconds / 1e9:F2} GFLOP/s)"));

        // Self-check of two facts the mask implies: causal query 0 sees only key 0, so its output is v[0] and its
        // log-sum-exp is its single score; the last query sees every key (bottom-right alignment, Sq == Sk).
        double scale = options.EffectiveScale(shape.HeadDim);
        double worst = 0;
        for (int h = 0; h < shape.HeadsQ; h++)
        {
            int kvh = h / shape.GroupSize;
            double dot = 0;
            for (int x = 0; x < shape.HeadDim; x++)
            {
                worst = Math.Max(worst, Math.Abs(output[(h * shape.HeadDim) + x] - v[(kvh * shape.HeadDim) + x]));
                dot += (double)q[(h * shape.HeadDim) + x] * k[(kvh * shape.HeadDim) + x];
            }

            worst = Math.Max(worst, Math.Abs(lse[h * shape.SeqLenQ] - (scale * dot)));
        }

        bool ok = worst <= 1e-12 && output.All(double.IsFinite) && lse.All(double.IsFinite);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"self-check (query 0 equals v[0], its lse equals its score; all values finite): {(ok ? "PASS" : "FAIL")} (worst {worst:E2})"));
        Console.WriteLine();
        ok &= RunCpuFeatures(seed + 3);
        return ok ? 0 : 1;
    }

    /// <summary>
    /// The forward features on the CPU reference, with facts that are easy to state: a variable-length batch equals
    /// its sequences run one by one; a causal window of width 0 makes every row its diagonal value; softcap bounds
    /// every score, so the log-sum-exp of a row of n keys lies within log(n) ± cap.
    /// </summary>
    private static bool RunCpuFeatures(int seed)
    {
        int[] lensQ = [1, 0, 37, 64, 9], lensK = [20, 3, 37, 90, 0];
        const int headsQ = 4, headsKv = 2, headDim = 32;
        const float cap = 5f;
        var options = new AttentionOptions { Causal = true, WindowLeft = 16, Softcap = cap };
        int totalQ = lensQ.Sum(), totalK = lensK.Sum();
        Console.WriteLine($"varlen: q lengths [{string.Join(", ", lensQ)}], k lengths [{string.Join(", ", lensK)}], Hq={headsQ} Hkv={headsKv} " +
            $"D={headDim}, causal, window left 16, softcap {cap}");
        BFloat16[] q = RandomBf16((long)totalQ * headsQ * headDim, seed);
        BFloat16[] k = RandomBf16((long)totalK * headsKv * headDim, seed + 1);
        BFloat16[] v = RandomBf16((long)totalK * headsKv * headDim, seed + 2);
        var output = new double[q.Length];
        var lse = new double[(long)headsQ * totalQ];
        AttentionReference.ForwardVarlen(q, k, v, lensQ, lensK, headsQ, headsKv, headDim, options, output, lse);

        // 1. Each sequence on its own through the fixed-length reference gives the same numbers, bit for bit.
        bool same = true;
        int rowQ = 0, rowK = 0;
        for (int b = 0; b < lensQ.Length; b++)
        {
            var shape = new AttentionShape(1, lensQ[b], lensK[b], headsQ, headsKv, headDim);
            var o = new double[shape.QElementCount];
            var l = new double[shape.LseElementCount];
            AttentionReference.Forward(
                q.AsSpan(rowQ * headsQ * headDim, (int)shape.QElementCount), k.AsSpan(rowK * headsKv * headDim, (int)shape.KvElementCount),
                v.AsSpan(rowK * headsKv * headDim, (int)shape.KvElementCount), shape, options, o, l);
            same &= o.AsSpan().SequenceEqual(output.AsSpan(rowQ * headsQ * headDim, o.Length));
            for (int h = 0; h < headsQ; h++)
            {
                same &= l.AsSpan(h * lensQ[b], lensQ[b]).SequenceEqual(lse.AsSpan((h * totalQ) + rowQ, lensQ[b]));
            }

            rowQ += lensQ[b];
            rowK += lensK[b];
        }

        // 2. Softcap bounds: every visible score lies in (-cap, cap), so lse is within cap of log(visible keys).
        bool bounded = true;
        rowQ = 0;
        for (int b = 0; b < lensQ.Length; b++)
        {
            for (int i = 0; i < lensQ[b]; i++)
            {
                (int first, int end) = AttentionReference.VisibleKeys(options, i, lensQ[b], lensK[b]);
                for (int h = 0; h < headsQ; h++)
                {
                    double value = lse[(h * totalQ) + rowQ + i];
                    bounded &= end > first
                        ? Math.Abs(value - Math.Log(end - first)) < cap
                        : double.IsPositiveInfinity(value) && output.AsSpan((((rowQ + i) * headsQ) + h) * headDim, headDim).IndexOfAnyExcept(0.0) < 0;
                }
            }

            rowQ += lensQ[b];
        }

        // 3. A causal window of width 0 leaves each query only its diagonal key: the output is that key's value row.
        var diagonal = new AttentionShape(1, 7, 11, 2, 1, 16);
        BFloat16[] dq = RandomBf16(diagonal.QElementCount, seed + 3);
        BFloat16[] dk = RandomBf16(diagonal.KvElementCount, seed + 4);
        BFloat16[] dv = RandomBf16(diagonal.KvElementCount, seed + 5);
        var dOut = new double[diagonal.QElementCount];
        AttentionReference.Forward(dq, dk, dv, diagonal, new AttentionOptions { Causal = true, WindowLeft = 0 }, dOut, Span<double>.Empty);
        bool diagonalOk = true;
        for (int i = 0; i < diagonal.SeqLenQ; i++)
        {
            int j = i + diagonal.SeqLenK - diagonal.SeqLenQ; // bottom-right diagonal
            for (int h = 0; h < diagonal.HeadsQ; h++)
            {
                for (int x = 0; x < diagonal.HeadDim; x++)
                {
                    diagonalOk &= dOut[(((i * diagonal.HeadsQ) + h) * diagonal.HeadDim) + x] == (double)dv[(j * diagonal.HeadDim) + x];
                }
            }
        }

        bool ok = same && bounded && diagonalOk;
        Console.WriteLine($"self-check (varlen equals its sequences run alone: {Word(same)}; softcap bounds the log-sum-exp and rows " +
            $"without keys are 0 / +inf: {Word(bounded)}; a width-0 causal window returns the diagonal values: {Word(diagonalOk)}): " +
            (ok ? "PASS" : "FAIL"));
        return ok;

        static string Word(bool b) => b ? "yes" : "NO";
    }

    /// <summary>Where the native library loads but there is no GPU, show that it validates the GPU problem.</summary>
    private static void ShowNativeCheck()
    {
        // Fake, 16-byte-aligned, non-overlapping addresses: Check reads only shapes, strides, dtypes and pointers.
        long b = 2, s = 1024, h = 16, d = 128;
        DeviceTensor T(long address, DataType type, params long[] shape) => DeviceTensor.FromPointer(new IntPtr(address), type, shape);
        DeviceTensor q = T(0x1000_0000, DataType.BFloat16, b, s, h, d);
        DeviceTensor k = T(0x2000_0000, DataType.BFloat16, b, s, h, d);
        DeviceTensor v = T(0x3000_0000, DataType.BFloat16, b, s, h, d);
        DeviceTensor o = T(0x4000_0000, DataType.BFloat16, b, s, h, d);
        DeviceTensor l = T(0x5000_0000, DataType.Float32, b, h, s);
        var options = new AttentionOptions { Causal = true };
        try
        {
            FlashAttentionStatus good = FlashAttention.Check(q, k, v, o, out string goodWhy, l, options, computeCapability: 90);
            DeviceTensor badK = T(0x2000_0000, DataType.BFloat16, b, s, 5, d);
            FlashAttentionStatus bad = FlashAttention.Check(q, badK, T(0x3000_0000, DataType.BFloat16, b, s, 5, d), o, out string badWhy, l, options, 90);
            Console.WriteLine("the native library is loaded, so it can still validate the GPU call (no GPU needed):");
            Console.WriteLine($"  [2, 1024, 16, 128] bf16 causal for sm_90: {good}{(goodWhy.Length > 0 ? ": " + goodWhy : string.Empty)}");
            Console.WriteLine($"  the same with 5 kv heads: {bad}: {badWhy}");
            Console.WriteLine();
            ShowCapabilities(computeCapability: 90);
        }
        catch (FlashAttentionException)
        {
            // No native library: the reason was already printed.
        }
    }

    // ---- helpers -----------------------------------------------------------------------------------------------

    /// <summary>What this build serves: its compiled kernels and a few capability questions (no GPU needed).</summary>
    private static void ShowCapabilities(int computeCapability)
    {
        IReadOnlyList<string> kernels = FlashAttention.CompiledKernels;
        Console.WriteLine($"compiled kernels: {kernels.Count}" + (kernels.Count > 0 ? $" (first {kernels[0]}, last {kernels[^1]})" : string.Empty));
        SupportQuery[] questions =
        [
            new(AttentionPass.Forward, DataType.BFloat16, 128, Causal: true, ComputeCapability: computeCapability),
            new(AttentionPass.Forward, DataType.Float16, 96, Window: true, Softcap: true, Varlen: true, ComputeCapability: computeCapability),
            new(AttentionPass.Forward, DataType.BFloat16, 100, ComputeCapability: computeCapability),
            new(AttentionPass.Backward, DataType.BFloat16, 128, ComputeCapability: computeCapability),
        ];
        foreach (SupportQuery question in questions)
        {
            SupportResult answer = FlashAttention.QuerySupport(question);
            string flags = string.Concat(
                question.Causal ? " causal" : string.Empty, question.Window ? " window" : string.Empty,
                question.Softcap ? " softcap" : string.Empty, question.Varlen ? " varlen" : string.Empty);
            Console.WriteLine($"  {question.Pass} {question.DataType} d={question.HeadDim}{flags} on sm_{computeCapability}: " +
                (answer.IsSupported ? "served" : $"not served: {answer.Reason}"));
        }

        Console.WriteLine();
    }

    private static string Describe(AttentionShape s, AttentionOptions o) =>
        $"B={s.Batch} Sq={s.SeqLenQ} Sk={s.SeqLenK} Hq={s.HeadsQ} Hkv={s.HeadsKv} D={s.HeadDim}" +
        (o.Causal ? $" causal ({o.CausalAlignment})" : " not causal");

    private static BFloat16[] RandomBf16(long count, int seed)
    {
        var rng = new Random(seed);
        var result = new BFloat16[count];
        for (long i = 0; i < count; i++)
        {
            // Box-Muller: a standard normal sample.
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            result[i] = (BFloat16)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2));
        }

        return result;
    }

    private static double MaxAbsError(double[] expected, float[] actual)
    {
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], a = actual[i];
            if (double.IsNaN(a) || (double.IsInfinity(e) != double.IsInfinity(a)))
            {
                return double.PositiveInfinity;
            }

            if (!double.IsInfinity(e))
            {
                worst = Math.Max(worst, Math.Abs(a - e));
            }
        }

        return worst;
    }
}
