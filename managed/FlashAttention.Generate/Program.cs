using System.Globalization;
using FlashAttn;

namespace FlashAttn.Generate;

/// <summary>
/// Generates text from a random-weight toy transformer (2 layers, vocabulary of 64 characters, GQA 4:2 heads of 64)
/// with attention through <see cref="FlashAttention.Decode(in DecodeArguments, AttentionOptions, CudaStream)"/> over one <see cref="KvCache"/> per layer: the prompts
/// are prefilled in one causal call per layer (seqLenNew = prompt length, appending to the cache), then each step
/// appends and attends one token per sequence. Matrix products run on the CPU. Prints the tokens and the GPU time of
/// each step's decode calls, and checks the first steps' attention outputs (and log-sum-exp) against
/// <see cref="DecodeReference"/>. Without a GPU it says so and runs the same generation on the CPU reference.
/// Exit code 0 on success (also without a GPU), 1 when a checked output does not match, 2 on an unexpected error.
/// </summary>
internal static class Program
{
    private static readonly string[] Prompts = ["hello world.", "flash decode"];

    private static int Main(string[] args)
    {
        Settings? settings = Settings.Parse(args);
        if (settings is null)
        {
            return 2;
        }

        if (settings.Help)
        {
            Console.WriteLine("usage: FlashAttention.Generate [--cpu] [--fp16] [--fp8-cache] [--tokens N] [--sample T | --greedy] [--seed S] [--contiguous] [--block-size N] [--check-steps N]");
            Console.WriteLine("  --cpu            use the CPU reference (DecodeReference) even where a GPU is available");
            Console.WriteLine("  --fp16           Float16 cache and activations (default BFloat16)");
            Console.WriteLine("  --fp8-cache      Float8E4M3 (e4m3) KV cache with per-KV-head descale factors, under the 16-bit activations");
            Console.WriteLine("  --tokens N       tokens to generate after the prompt (default 32)");
            Console.WriteLine("  --sample T       sample with temperature T (default 1)");
            Console.WriteLine("  --greedy         take the most likely token instead of sampling");
            Console.WriteLine("  --seed S         weights and sampling seed (default 1234)");
            Console.WriteLine("  --contiguous     contiguous cache (default: paged)");
            Console.WriteLine("  --block-size N   page size of the paged cache (default 16)");
            Console.WriteLine("  --check-steps N  steps (prefill included) whose attention is checked against DecodeReference (default 4)");
            return 0;
        }

        try
        {
            Console.WriteLine(FlashAttention.TryGetNativeLibrary(out string libPath, out string libVersion)
                ? $"native library: {libPath} (version {libVersion})"
                : "native library: not loaded");
            if (!settings.ForceCpu && CudaDevice.TryGetAvailability(out _))
            {
                return RunGpu(settings);
            }

            CudaDevice.TryGetAvailability(out string reason);
            Console.WriteLine($"no GPU: {(settings.ForceCpu ? "--cpu was given" : reason.ReplaceLineEndings(" "))}");
            Console.WriteLine("generating with the CPU reference (DecodeReference) as the attention instead; nothing runs on a GPU");
            Console.WriteLine();
            using var cpu = new CpuAttention(settings, ToyModelFor(settings));
            Generate(settings, cpu, "CPU reference");
            return 0;
        }
        catch (FlashAttentionException ex)
        {
            Console.Error.WriteLine($"FAILED ({ex.Status}): {ex.Message}");
            return 2;
        }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or EntryPointNotFoundException or OutOfMemoryException)
        {
            Console.Error.WriteLine($"FAILED: {ex}");
            return 2;
        }
    }

    private static ToyModel ToyModelFor(Settings s) =>
        new(s.Seed, layers: 2, headsQ: 4, headsKv: 2, headDim: 64, maxPositions: Prompts[0].Length + s.Tokens + 1);

    private static int RunGpu(Settings settings)
    {
        CudaDevice device = CudaDevice.Open(0);
        Console.WriteLine($"GPU: {device}");
        ToyModel model = ToyModelFor(settings);
        using GpuAttention gpu = settings.Fp16
            ? new GpuAttention<Half>(device, settings, model, x => (Half)x, x => (float)x)
            : new GpuAttention<BFloat16>(device, settings, model, x => (BFloat16)x, x => (float)x);
        Generate(settings, gpu, $"FlashAttention.Decode on {device.Name}");
        Console.WriteLine();
        if (gpu.Failures.Count > 0)
        {
            Console.WriteLine($"FAIL: {gpu.Failures.Count} checked attention call(s) do not match DecodeReference:");
            foreach (string failure in gpu.Failures.Take(10))
            {
                Console.WriteLine("  " + failure);
            }

            return 1;
        }

        Console.WriteLine($"PASS: {gpu.CheckedCalls} attention calls checked against DecodeReference (rel L2 <= {gpu.Cap:E0}, lse <= 1e-4 relative, no NaN); cache lengths advanced as expected");
        return 0;
    }

    private static void Generate(Settings settings, AttentionBackend attention, string what)
    {
        ToyModel model = attention.Model;
        int batch = Prompts.Length, promptLength = Prompts[0].Length;
        string dtype = (settings.Fp16 ? "fp16" : "bf16") + (settings.Fp8Cache ? " (e4m3 KV cache)" : string.Empty);
        Console.WriteLine($"model: {model.Layers} layers, vocabulary {ToyModel.Vocab}, d_model {model.Model}, heads {model.HeadsQ} (kv {model.HeadsKv}) x {model.HeadDim}, random weights (seed {settings.Seed}), {dtype}");
        Console.WriteLine($"cache: {attention.CacheDescription}; attention: {what}");
        Console.WriteLine($"decoding: {(settings.Temperature > 0 ? $"sampled, temperature {settings.Temperature.ToString(CultureInfo.InvariantCulture)}" : "greedy")}, {settings.Tokens} tokens after prompts of {promptLength}");
        Console.WriteLine();

        Func<float, float> round = settings.Fp16 ? x => (float)(Half)x : x => (float)(BFloat16)x;
        var sampler = new Random(settings.Seed + 1);
        var text = Prompts.Select(p => new System.Text.StringBuilder(p)).ToArray();
        int[] tokens = Prompts.SelectMany(ToyModel.Encode).ToArray();

        float[] logits = model.Forward(tokens, batch, promptLength, 0, attention, round);
        Console.WriteLine($"prefill: {batch} x {promptLength} tokens (causal, appended to the cache): {attention.TakeStepReport()}");
        var stepMs = new List<double>();
        for (int step = 1; step <= settings.Tokens; step++)
        {
            var next = new int[batch];
            for (int b = 0; b < batch; b++)
            {
                next[b] = ToyModel.NextToken(logits.AsSpan(b * ToyModel.Vocab, ToyModel.Vocab), settings.Temperature, sampler);
                text[b].Append(ToyModel.Decode(next[b]));
            }

            int position = promptLength + step - 1;
            logits = model.Forward(next, batch, 1, position, attention, round);
            string tokenList = string.Join(" ", next.Select(t => $"'{ToyModel.Decode(t)}'({t,2})"));
            Console.WriteLine($"step {step,3}: {tokenList}  {attention.TakeStepReport()}");
            if (attention.LastStepMilliseconds is { } ms)
            {
                stepMs.Add(ms);
            }
        }

        Console.WriteLine();
        for (int b = 0; b < batch; b++)
        {
            Console.WriteLine($"sequence {b}: \"{text[b]}\"");
        }

        if (stepMs.Count > 0)
        {
            stepMs.Sort();
            Console.WriteLine(string.Create(
                CultureInfo.InvariantCulture,
                $"decode time per step ({model.Layers} layers, batch {batch}, one token each): median {stepMs[stepMs.Count / 2] * 1e3:F1} us, min {stepMs[0] * 1e3:F1} us (GPU events around each Decode call)"));
        }
    }

    internal sealed record Settings(
        bool ForceCpu, bool Fp16, int Tokens, double Temperature, int Seed, bool Contiguous, int BlockSize, int CheckSteps, bool Help)
    {
        /// <summary>An fp8 (e4m3) KV cache (C ABI 0.13) with per-KV-head descale factors under the 16-bit activations.</summary>
        public bool Fp8Cache { get; init; }

        /// <summary>The dtype of the activations (q, new keys and values, output).</summary>
        public DataType DataType => Fp16 ? DataType.Float16 : DataType.BFloat16;

        public static Settings? Parse(string[] args)
        {
            var s = new Settings(false, false, 32, 1.0, 1234, false, 16, 4, false);
            for (int i = 0; i < args.Length; i++)
            {
                string a = args[i];
                string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
                try
                {
                    s = a switch
                    {
                        "--cpu" => s with { ForceCpu = true },
                        "--fp16" => s with { Fp16 = true },
                        "--fp8-cache" => s with { Fp8Cache = true },
                        "--contiguous" => s with { Contiguous = true },
                        "--tokens" => s with { Tokens = int.Parse(Next(), CultureInfo.InvariantCulture) },
                        "--sample" => s with { Temperature = double.Parse(Next(), CultureInfo.InvariantCulture) },
                        "--greedy" => s with { Temperature = 0 },
                        "--seed" => s with { Seed = int.Parse(Next(), CultureInfo.InvariantCulture) },
                        "--block-size" => s with { BlockSize = int.Parse(Next(), CultureInfo.InvariantCulture) },
                        "--check-steps" => s with { CheckSteps = int.Parse(Next(), CultureInfo.InvariantCulture) },
                        "--help" or "-h" => s with { Help = true },
                        _ => throw new ArgumentException($"unknown argument {a}"),
                    };
                }
                catch (Exception ex) when (ex is ArgumentException or FormatException or OverflowException)
                {
                    Console.Error.WriteLine($"error: {ex.Message} (see --help)");
                    return null;
                }
            }

            if (s.Tokens < 0 || s.BlockSize < 1 || s.CheckSteps < 0)
            {
                Console.Error.WriteLine("error: --tokens, --check-steps must be 0 or more and --block-size 1 or more");
                return null;
            }

            return s;
        }
    }
}
