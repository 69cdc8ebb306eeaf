// Times FlashAttention.Forward through the managed API, one JSON line per shape on stdout; the
// contract with bench/run.py is in bench/README.md. Shapes are fixed-length ([b, s, h, d], GQA through
// hkv) or variable-length ("kind": "varlen": packed [total, h, d] with per-sequence lengths, timed
// through ForwardVarlen). Method: inputs random normal, output poisoned once, warm-up calls, then each
// timed call preceded by a 256 MiB scratch write on the same stream (flushes L2, as triton's do_bench
// does) and timed alone with a pair of events.
// A second figure, "call_us", is the host-side cost of one Forward call (median over many calls
// on a tiny shape, see --interop), for the interop-cost comparison with a launch from C.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using FlashAttn;

internal static class Program
{
    private const long FlushBytes = 256L << 20;

    // Normal samples in the pool Random16 copies inputs from (odd, so rows do not line up with its period).
    private const int PoolSize = (1 << 22) + 1;

    private static ushort[]? s_poolBf16;
    private static ushort[]? s_poolFp16;

    private static int Main(string[] args)
    {
        try
        {
            return Run(args);
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"bad arguments: {e.Message}");
            return 2;
        }
        catch (FlashAttentionException e)
        {
            Console.Error.WriteLine($"FlashAttention.Bench: {e.Message}");
            return 1;
        }
    }

    private static int Run(string[] args)
    {
        var options = ParseOptions(args);
        int warmup = GetInt(options, "warmup", 20);
        int iters = GetInt(options, "iters", 100);
        int deviceOrdinal = GetInt(options, "device", 0);
        List<JsonObject> shapes = LoadShapes(options);

        using var device = new DeviceScope(deviceOrdinal);
        int failures = 0;
        foreach (JsonObject shape in shapes)
        {
            JsonObject line = shape.DeepClone().AsObject();
            line["pass"] = "fwd";
            try
            {
                (double median, double min) = (string?)shape["kind"] == "varlen"
                    ? TimeVarlen(device, shape, warmup, iters)
                    : TimeShape(device, shape, warmup, iters);
                line["ours_ms"] = median;
                line["min_ms"] = min;
                line["kernel_path"] = "Auto"; // requested: the library picks the family (sm90 forward on Hopper)
            }
            catch (FlashAttentionException e)
            {
                line["ours_ms"] = null;
                line["error"] = $"{e.Status}: {e.NativeMessage}";
                failures++;
            }

            Console.WriteLine(line.ToJsonString());
        }

        if (options.ContainsKey("interop"))
        {
            Console.WriteLine(InteropCost(device).ToJsonString());
        }

        return failures == 0 ? 0 : 1;
    }

    private sealed class DeviceScope : IDisposable
    {
        public DeviceScope(int ordinal)
        {
            Device = CudaDevice.Open(ordinal);
            Attention = new FlashAttention(Device);
            Stream = CudaStream.Create(Device);
            Flush = new DeviceBuffer<byte>(Device, FlushBytes);
            Start = CudaEvent.Create(Device);
            End = CudaEvent.Create(Device);
        }

        public CudaDevice Device { get; }

        public FlashAttention Attention { get; }

        public CudaStream Stream { get; }

        public DeviceBuffer<byte> Flush { get; }

        public CudaEvent Start { get; }

        public CudaEvent End { get; }

        public void Dispose()
        {
            Stream.Synchronize();
            End.Dispose();
            Start.Dispose();
            Flush.Dispose();
            Stream.Dispose();
            Attention.Dispose();
        }
    }

    private static (double Median, double Min) TimeShape(DeviceScope s, JsonObject shape, int warmup, int iters)
    {
        bool bf16 = ParseDType(shape);
        int d = (int)shape["d"]!, b = (int)shape["b"]!, h = (int)shape["h"]!;
        int hkv = (int?)shape["hkv"] ?? h;
        int sq = (int)shape["sq"]!, sk = (int)shape["sk"]!;
        bool causal = ((int?)shape["causal"] ?? 0) != 0;

        using var q = Random16(s, (long)b * sq * h * d, bf16, seed: 1);
        using var k = Random16(s, (long)b * sk * hkv * d, bf16, seed: 2);
        using var v = Random16(s, (long)b * sk * hkv * d, bf16, seed: 3);
        using var o = new DeviceBuffer<ushort>(s.Device, (long)b * sq * h * d);
        o.Fill(0xFF, s.Stream);
        DataType type = bf16 ? DataType.BFloat16 : DataType.Float16;
        DeviceTensor tq = DeviceTensor.FromPointer(q.Pointer, type, [b, sq, h, d]);
        DeviceTensor tk = DeviceTensor.FromPointer(k.Pointer, type, [b, sk, hkv, d]);
        DeviceTensor tv = DeviceTensor.FromPointer(v.Pointer, type, [b, sk, hkv, d]);
        DeviceTensor to = DeviceTensor.FromPointer(o.Pointer, type, [b, sq, h, d]);
        // PyTorch's is_causal is top-left; equal to bottom-right when sq == sk.
        var options = new AttentionOptions { Causal = causal, CausalAlignment = CausalAlignment.TopLeft };
        return TimeCalls(s, warmup, iters, () => s.Attention.Forward(tq, tk, tv, to, null, options, s.Stream));
    }

    // A packed variable-length batch: q, k, v [total, h|hkv, d], every sequence with sq == sk.
    private static (double Median, double Min) TimeVarlen(DeviceScope s, JsonObject shape, int warmup, int iters)
    {
        bool bf16 = ParseDType(shape);
        int d = (int)shape["d"]!, h = (int)shape["h"]!;
        int hkv = (int?)shape["hkv"] ?? h;
        bool causal = ((int?)shape["causal"] ?? 0) != 0;
        int[] lens = (shape["lens"] as JsonArray ?? throw new ArgumentException("a varlen shape needs \"lens\": [...]"))
            .Select(n => (int)n!).ToArray();
        if (lens.Length == 0)
        {
            throw new ArgumentException("a varlen shape needs at least one length in \"lens\"");
        }

        long total = lens.Sum(n => (long)n);
        using var batch = VarlenBatch.FromLengths(s.Device, lens, lens, s.Stream);
        using var q = Random16(s, total * h * d, bf16, seed: 1);
        using var k = Random16(s, total * hkv * d, bf16, seed: 2);
        using var v = Random16(s, total * hkv * d, bf16, seed: 3);
        using var o = new DeviceBuffer<ushort>(s.Device, total * h * d);
        o.Fill(0xFF, s.Stream);
        DataType type = bf16 ? DataType.BFloat16 : DataType.Float16;
        DeviceTensor tq = DeviceTensor.FromPointer(q.Pointer, type, [total, h, d]);
        DeviceTensor tk = DeviceTensor.FromPointer(k.Pointer, type, [total, hkv, d]);
        DeviceTensor tv = DeviceTensor.FromPointer(v.Pointer, type, [total, hkv, d]);
        DeviceTensor to = DeviceTensor.FromPointer(o.Pointer, type, [total, h, d]);
        var options = new AttentionOptions { Causal = causal, CausalAlignment = CausalAlignment.TopLeft };
        return TimeCalls(s, warmup, iters, () => s.Attention.ForwardVarlen(tq, tk, tv, to, batch, null, options, s.Stream));
    }

    // warmup untimed calls, then iters calls each after an L2 flush, timed alone with events.
    private static (double Median, double Min) TimeCalls(DeviceScope s, int warmup, int iters, Action call)
    {
        for (int i = 0; i < warmup; i++)
        {
            call();
        }

        var samples = new double[iters];
        for (int i = 0; i < iters; i++)
        {
            s.Flush.Fill((byte)i, s.Stream);
            s.Start.Record(s.Stream);
            call();
            s.End.Record(s.Stream);
            s.End.Synchronize();
            samples[i] = CudaEvent.ElapsedMilliseconds(s.Start, s.End);
        }

        Array.Sort(samples);
        return (samples[iters / 2], samples[0]);
    }

    private static bool ParseDType(JsonObject shape)
    {
        string dtype = (string?)shape["dtype"] ?? "bf16";
        return dtype switch
        {
            "bf16" => true,
            "fp16" => false,
            _ => throw new ArgumentException($"dtype '{dtype}' is not bf16 or fp16"),
        };
    }

    // Host cost of one managed Forward call: many calls on a tiny shape, timed on the host in batches
    // that each start on an idle stream, so the launches queue and the kernel is not what is measured.
    // bench/interop_c.c measures the same launch from C the same way (warm-up, 20 batches of 100 calls).
    private static JsonObject InteropCost(DeviceScope s)
    {
        const int b = 1, sq = 128, h = 1, d = 64, batches = 20, callsPerBatch = 100;
        using var q = Random16(s, (long)b * sq * h * d, true, seed: 7);
        using var o = new DeviceBuffer<ushort>(s.Device, (long)b * sq * h * d);
        DeviceTensor t = DeviceTensor.FromPointer(q.Pointer, DataType.BFloat16, [b, sq, h, d]);
        DeviceTensor to = DeviceTensor.FromPointer(o.Pointer, DataType.BFloat16, [b, sq, h, d]);
        var options = new AttentionOptions();

        // Warm-up long enough (about a second) for tiered compilation to replace the first, unoptimised code.
        long warmEnd = Stopwatch.GetTimestamp() + Stopwatch.Frequency;
        while (Stopwatch.GetTimestamp() < warmEnd)
        {
            s.Stream.Synchronize();
            for (int i = 0; i < callsPerBatch; i++)
            {
                s.Attention.Forward(t, t, t, to, null, options, s.Stream);
            }
        }

        var perCall = new double[batches];
        for (int rep = 0; rep < batches; rep++)
        {
            s.Stream.Synchronize();
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < callsPerBatch; i++)
            {
                s.Attention.Forward(t, t, t, to, null, options, s.Stream);
            }

            long t1 = Stopwatch.GetTimestamp();
            perCall[rep] = (t1 - t0) * 1e6 / Stopwatch.Frequency / callsPerBatch;
        }

        s.Stream.Synchronize();
        Array.Sort(perCall);
        return new JsonObject
        {
            ["pass"] = "interop",
            ["dtype"] = "bf16",
            ["b"] = b,
            ["h"] = h,
            ["sq"] = sq,
            ["sk"] = sq,
            ["d"] = d,
            ["batches"] = batches,
            ["calls_per_batch"] = callsPerBatch,
            ["call_us"] = perCall[batches / 2],
            ["min_call_us"] = perCall[0],
        };
    }

    // Random normal inputs, fast: one pool of PoolSize normal samples per dtype, made once, is copied over the
    // buffer from a seed-dependent start (the pool size is odd, so rows do not line up with the period).
    private static DeviceBuffer<ushort> Random16(DeviceScope s, long count, bool bf16, int seed)
    {
        ushort[] pool = bf16 ? (s_poolBf16 ??= MakePool(true)) : (s_poolFp16 ??= MakePool(false));
        var buffer = new DeviceBuffer<ushort>(s.Device, count);
        try
        {
            int start = (int)((seed * 104729L) % pool.Length);
            long offset = 0;
            while (offset < count)
            {
                int n = (int)Math.Min(pool.Length - start, count - offset);
                buffer.CopyFrom(pool.AsSpan(start, n), offset, s.Stream);
                offset += n;
                start = 0;
            }
        }
        catch
        {
            buffer.Dispose();
            throw;
        }

        return buffer;
    }

    private static ushort[] MakePool(bool bf16)
    {
        var rng = new Random(12345);
        var pool = new ushort[PoolSize];
        for (int i = 0; i < pool.Length; i++)
        {
            // Box-Muller normal samples.
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            float x = (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            pool[i] = bf16 ? ((BFloat16)x).ToBits() : BitConverter.HalfToUInt16Bits((Half)x);
        }

        return pool;
    }

    private static Dictionary<string, string> ParseOptions(string[] args)
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal))
            {
                throw new ArgumentException($"unexpected argument '{args[i]}'");
            }

            string key = args[i][2..];
            if (key == "interop")
            {
                map[key] = "1";
                continue;
            }

            if (i + 1 >= args.Length)
            {
                throw new ArgumentException($"--{key} needs a value");
            }

            map[key] = args[++i];
        }

        return map;
    }

    private static int GetInt(Dictionary<string, string> options, string key, int fallback) =>
        options.TryGetValue(key, out string? text) ? int.Parse(text, CultureInfo.InvariantCulture) : fallback;

    private static List<JsonObject> LoadShapes(Dictionary<string, string> options)
    {
        if (options.TryGetValue("shapes", out string? file))
        {
            JsonArray array = JsonNode.Parse(File.ReadAllText(file))?.AsArray()
                ?? throw new ArgumentException($"{file} holds no JSON array");
            return array.Select(n => n!.AsObject()).ToList();
        }

        if (!options.ContainsKey("d"))
        {
            return options.ContainsKey("interop") ? [] : throw new ArgumentException("give --shapes FILE or --d/--b/--h/--s");
        }

        int s = GetInt(options, "s", 1024);
        var shape = new JsonObject
        {
            ["dtype"] = options.GetValueOrDefault("dtype", "bf16"),
            ["d"] = GetInt(options, "d", 64),
            ["causal"] = GetInt(options, "causal", 0),
            ["b"] = GetInt(options, "b", 1),
            ["h"] = GetInt(options, "h", 16),
            ["hkv"] = GetInt(options, "hkv", GetInt(options, "h", 16)),
            ["sq"] = GetInt(options, "sq", s),
            ["sk"] = GetInt(options, "sk", s),
        };
        return [shape];
    }
}
