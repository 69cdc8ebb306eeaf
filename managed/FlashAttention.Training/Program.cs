using System.Diagnostics;
using System.Globalization;
using FlashAttn;
using Microsoft.Extensions.Logging;

namespace FlashAttn.Training;

/// <summary>
/// Sample: trains one causal self-attention layer for a few steps with
/// <see cref="FlashAttention.Forward(in AttentionArguments, AttentionOptions, CudaStream)"/> and
/// <see cref="FlashAttention.Backward(in BackwardArguments, AttentionOptions, CudaStream)"/>. A fixed input X [tokens, model] is projected by learned weights Wq, Wk, Wv into
/// q, k, v [batch, seq, heads, headDim]; the layer's output is pulled by plain SGD towards the output of a "teacher"
/// layer (same shape, other weights). Attention runs on the GPU in bf16; the projections, the loss and the weight
/// update run on the CPU (the library has no elementwise or matmul kernels): each step uploads q, k, v and dO and
/// copies dq, dk, dv back. Without a GPU (or the native library) it says so and trains a smaller layer on the float64
/// CPU reference instead. Prints the loss of every step; exit code 0 when the final loss is below half the first,
/// 1 when it is not, 2 on an unexpected error.
/// </summary>
internal static class Program
{
    /// <summary>The final loss must be below this fraction of the first.</summary>
    private const double RequiredDrop = 0.5;

    private static int Main(string[] args)
    {
        if (args.Contains("--help") || args.Contains("-h"))
        {
            Console.WriteLine("usage: FlashAttention.Training [--cpu] [--steps N] [--lr X] [--verbose]");
            Console.WriteLine("  --cpu      train on the CPU reference even where a GPU is available");
            Console.WriteLine("  --steps N  SGD steps (default 30)");
            Console.WriteLine("  --lr X     learning rate (default: the one tuned for the layer size)");
            Console.WriteLine("  --gpu-size with --cpu (or without a GPU): train the GPU-sized layer on the CPU reference (slow)");
            Console.WriteLine("  --verbose  log at Debug (library path, every Forward/Backward call)");
            return 0;
        }

        bool forceCpu = args.Contains("--cpu");
        bool verbose = args.Contains("--verbose") || args.Contains("-v");
        int steps = 30;
        int at = Array.IndexOf(args, "--steps");
        if (at >= 0 && (at + 1 >= args.Length || !int.TryParse(args[at + 1], CultureInfo.InvariantCulture, out steps) || steps < 1))
        {
            Console.Error.WriteLine("--steps needs a positive integer");
            return 2;
        }

        float? lrOverride = null;
        int lrAt = Array.IndexOf(args, "--lr");
        if (lrAt >= 0)
        {
            if (lrAt + 1 >= args.Length || !float.TryParse(args[lrAt + 1], CultureInfo.InvariantCulture, out float lr) || !(lr > 0))
            {
                Console.Error.WriteLine("--lr needs a positive number");
                return 2;
            }

            lrOverride = lr;
        }

        using ILoggerFactory loggerFactory = LoggerFactory.Create(b => b
            .AddSimpleConsole(o => o.SingleLine = true)
            .SetMinimumLevel(verbose ? LogLevel.Debug : LogLevel.Warning));
        try
        {
            if (!forceCpu && CudaDevice.TryGetAvailability(out _))
            {
                CudaDevice device = CudaDevice.Open(0);
                Console.WriteLine($"attention on the GPU: {device}, bf16 (dq/dk/dv deterministic)");
                LayerConfig gpu = LayerConfig.Gpu with { LearningRate = lrOverride ?? LayerConfig.Gpu.LearningRate };
                using var engine = new GpuEngine(device, gpu, loggerFactory.CreateLogger<FlashAttention>());
                return Train(engine, gpu, steps);
            }

            string reason = forceCpu ? "--cpu was given" : Reason();
            Console.WriteLine($"no GPU: {reason}");
            Console.WriteLine("training a smaller layer on the float64 CPU reference instead (AttentionReference.Forward/Backward)");
            LayerConfig config = (args.Contains("--gpu-size") ? LayerConfig.Gpu : LayerConfig.Cpu) with
            {
                LearningRate = lrOverride ?? (args.Contains("--gpu-size") ? LayerConfig.Gpu : LayerConfig.Cpu).LearningRate,
            };
            using var cpu = new CpuEngine(config);
            return Train(cpu, config, steps);
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

    private static string Reason()
    {
        CudaDevice.TryGetAvailability(out string reason);
        return reason.ReplaceLineEndings(Environment.NewLine + "    ");
    }

    /// <summary>The training loop (the same for both engines); returns the exit code.</summary>
    private static int Train(IAttentionEngine engine, LayerConfig c, int steps)
    {
        int tokens = c.Batch * c.Seq;
        int width = c.Heads * c.HeadDim;
        Console.WriteLine($"layer: X [{c.Batch} x {c.Seq} tokens, {c.Model}] -> q, k, v [{c.Batch}, {c.Seq}, {c.Heads}, {c.HeadDim}], causal; " +
            $"loss 0.5 * sum((O - T)^2) / tokens; SGD, learning rate {c.LearningRate.ToString(CultureInfo.InvariantCulture)}, {steps} steps");

        var random = new Random(20261125);
        float[] x = Normal(random, tokens * c.Model, 1.0);
        double wScale = 1.0 / Math.Sqrt(c.Model);
        float[][] teacher = [Normal(random, c.Model * width, wScale), Normal(random, c.Model * width, wScale), Normal(random, c.Model * width, wScale)];
        float[][] weights = [Normal(random, c.Model * width, wScale), Normal(random, c.Model * width, wScale), Normal(random, c.Model * width, wScale)];

        float[] target = engine.Forward(Project(x, teacher[0], tokens, c.Model, width), Project(x, teacher[1], tokens, c.Model, width),
            Project(x, teacher[2], tokens, c.Model, width));

        var losses = new List<double>();
        var sw = Stopwatch.StartNew();
        for (int step = 0; step <= steps; step++)
        {
            float[] q = Project(x, weights[0], tokens, c.Model, width);
            float[] k = Project(x, weights[1], tokens, c.Model, width);
            float[] v = Project(x, weights[2], tokens, c.Model, width);
            float[] o = engine.Forward(q, k, v);

            // dL/dO = (O - T) / tokens. The unscaled difference goes to the device (well inside bf16's range); the
            // 1/tokens factor is applied to the weight gradients on the CPU.
            var diff = new float[o.Length];
            double loss = 0;
            for (int i = 0; i < o.Length; i++)
            {
                diff[i] = o[i] - target[i];
                loss += 0.5 * diff[i] * diff[i];
            }

            loss /= tokens;
            losses.Add(loss);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"step {step,3}  loss {loss:E4}"));
            if (!double.IsFinite(loss) || step == steps)
            {
                break;
            }

            var (dq, dk, dv) = engine.Backward(diff);
            float[][] grads = [dq, dk, dv];
            for (int p = 0; p < 3; p++)
            {
                // W -= lr * X^T dP / tokens (the chain rule through P = X W).
                float[] dw = WeightGradient(x, grads[p], tokens, c.Model, width);
                float lr = c.LearningRate / tokens;
                for (int i = 0; i < dw.Length; i++)
                {
                    weights[p][i] -= lr * dw[i];
                }
            }
        }

        sw.Stop();
        double first = losses[0], last = losses[^1];
        bool ok = double.IsFinite(last) && last < RequiredDrop * first;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"loss {first:E4} -> {last:E4} ({100 * last / first:F1}% of the first) in {steps} steps, {sw.Elapsed.TotalSeconds:F1} s on {engine.Name}"));
        Console.WriteLine(ok ? "PASS: the loss went down" : $"FAIL: the final loss is not below {RequiredDrop:P0} of the first");
        return ok ? 0 : 1;
    }

    /// <summary>[n, a] x [a, b] -> [n, b], row-major.</summary>
    private static float[] Project(float[] x, float[] w, int n, int a, int b)
    {
        var result = new float[n * b];
        Parallel.For(0, n, i =>
        {
            Span<float> row = result.AsSpan(i * b, b);
            for (int kk = 0; kk < a; kk++)
            {
                float xv = x[(i * a) + kk];
                ReadOnlySpan<float> wRow = w.AsSpan(kk * b, b);
                for (int j = 0; j < b; j++)
                {
                    row[j] += xv * wRow[j];
                }
            }
        });
        return result;
    }

    /// <summary>X^T G: [n, a]^T x [n, b] -> [a, b].</summary>
    private static float[] WeightGradient(float[] x, float[] g, int n, int a, int b)
    {
        var result = new float[a * b];
        Parallel.For(0, a, kk =>
        {
            Span<float> row = result.AsSpan(kk * b, b);
            for (int i = 0; i < n; i++)
            {
                float xv = x[(i * a) + kk];
                ReadOnlySpan<float> gRow = g.AsSpan(i * b, b);
                for (int j = 0; j < b; j++)
                {
                    row[j] += xv * gRow[j];
                }
            }
        });
        return result;
    }

    private static float[] Normal(Random random, int count, double std)
    {
        var result = new float[count];
        for (int i = 0; i < count; i++)
        {
            double u1 = 1.0 - random.NextDouble();
            double u2 = random.NextDouble();
            result[i] = (float)(std * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2));
        }

        return result;
    }
}

/// <summary>Sizes of the layer and the learning rate.</summary>
internal sealed record LayerConfig(int Batch, int Seq, int Heads, int HeadDim, int Model, float LearningRate)
{
    /// <summary>On the GPU: 4 x 512 tokens, 8 heads of 64.</summary>
    public static LayerConfig Gpu { get; } = new(4, 512, 8, 64, 128, 1.0f);

    /// <summary>On the CPU reference: small enough for a few seconds per run.</summary>
    public static LayerConfig Cpu { get; } = new(2, 64, 4, 32, 64, 0.3f);

    public AttentionShape Shape => new(Batch, Seq, Seq, Heads, Heads, HeadDim);

    /// <summary>Causal self-attention; deterministic gradients so that a rerun prints the same losses.</summary>
    public static AttentionOptions Options { get; } = new() { Causal = true, Deterministic = true };
}

/// <summary>Attention forward and backward over host arrays laid out [batch, seq, heads, headDim].</summary>
internal interface IAttentionEngine : IDisposable
{
    string Name { get; }

    /// <summary>The attention output for q, k, v (remembered for the next <see cref="Backward"/>).</summary>
    float[] Forward(float[] q, float[] k, float[] v);

    /// <summary>Gradients of q, k and v for the output gradient <paramref name="dOut"/> of the last forward.</summary>
    (float[] Dq, float[] Dk, float[] Dv) Backward(float[] dOut);
}

/// <summary>
/// The GPU: bf16 device buffers allocated once; Forward writes O and the log-sum-exp, Backward reads them with dO and
/// writes dq, dk, dv, using a caller workspace sized once with <see cref="FlashAttention.GetBackwardWorkspaceSize(in BackwardArguments, AttentionOptions)"/>.
/// </summary>
internal sealed class GpuEngine : IAttentionEngine
{
    private readonly FlashAttention _attention;
    private readonly CudaStream _stream;
    private readonly DeviceBuffer<BFloat16> _q, _k, _v, _o, _dO, _dq, _dk, _dv;
    private readonly DeviceBuffer<float> _lse;
    private readonly DeviceBuffer<byte> _workspace;

    // The tensors of both passes, described once: the backward record carries the forward one's tensors, the
    // gradients and the workspace.
    private readonly AttentionArguments _forward;
    private readonly BackwardArguments _backward;
    private readonly BFloat16[] _host;

    public GpuEngine(CudaDevice device, LayerConfig c, ILogger logger)
    {
        AttentionShape s = c.Shape;
        _attention = new FlashAttention(device, logger);
        _stream = CudaStream.Create(device);
        DeviceBuffer<BFloat16> Buffer() => new(device, s.QElementCount);
        (_q, _k, _v, _o, _dO, _dq, _dk, _dv) = (Buffer(), Buffer(), Buffer(), Buffer(), Buffer(), Buffer(), Buffer(), Buffer());
        _lse = new DeviceBuffer<float>(device, s.LseElementCount);
        long[] shape = [s.Batch, s.SeqLenQ, s.HeadsQ, s.HeadDim];
        _forward = new AttentionArguments(_q.AsTensor(shape), _k.AsTensor(shape), _v.AsTensor(shape), _o.AsTensor(shape),
            LogSumExp: _lse.AsTensor(s.Batch, s.HeadsQ, s.SeqLenQ));
        var backward = new BackwardArguments(_forward.Q, _forward.K, _forward.V, _forward.Output, _dO.AsTensor(shape), _forward.LogSumExp!,
            _dq.AsTensor(shape), _dk.AsTensor(shape), _dv.AsTensor(shape));
        long bytes = _attention.GetBackwardWorkspaceSize(backward, LayerConfig.Options);
        _workspace = new DeviceBuffer<byte>(device, bytes);
        _backward = backward with { Workspace = _workspace };
        _host = new BFloat16[s.QElementCount];
        Name = $"{device.Name} (backward workspace {bytes / 1024.0:F0} KiB, allocated once)";
    }

    public string Name { get; }

    public float[] Forward(float[] q, float[] k, float[] v)
    {
        Upload(_q, q);
        Upload(_k, k);
        Upload(_v, v);
        _attention.Forward(_forward, LayerConfig.Options, _stream);
        return Download(_o);
    }

    public (float[] Dq, float[] Dk, float[] Dv) Backward(float[] dOut)
    {
        Upload(_dO, dOut);
        _attention.Backward(_backward, LayerConfig.Options, _stream);
        return (Download(_dq), Download(_dk), Download(_dv));
    }

    public void Dispose()
    {
        foreach (IDisposable d in new IDisposable[] { _q, _k, _v, _o, _dO, _dq, _dk, _dv, _lse, _workspace, _stream, _attention })
        {
            d.Dispose();
        }
    }

    private void Upload(DeviceBuffer<BFloat16> buffer, float[] values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            _host[i] = (BFloat16)values[i];
        }

        buffer.CopyFrom(_host, _stream); // ordered on the stream, waits for the copy
    }

    private float[] Download(DeviceBuffer<BFloat16> buffer)
    {
        buffer.CopyTo(_host, _stream); // waits for the work queued before it
        var result = new float[_host.Length];
        for (int i = 0; i < result.Length; i++)
        {
            result[i] = (float)_host[i];
        }

        return result;
    }
}

/// <summary>The float64 CPU reference (no GPU, no native library needed).</summary>
internal sealed class CpuEngine(LayerConfig c) : IAttentionEngine
{
    private readonly AttentionShape _shape = c.Shape;
    private double[] _q = [], _k = [], _v = [];

    public string Name => "the CPU (float64 reference)";

    public float[] Forward(float[] q, float[] k, float[] v)
    {
        (_q, _k, _v) = (AttentionReference.ToDouble(q), AttentionReference.ToDouble(k), AttentionReference.ToDouble(v));
        var output = new double[_shape.QElementCount];
        AttentionReference.Forward(_q, _k, _v, _shape, LayerConfig.Options, output, []);
        return [.. output.Select(x => (float)x)];
    }

    public (float[] Dq, float[] Dk, float[] Dv) Backward(float[] dOut)
    {
        var dq = new double[_shape.QElementCount];
        var dk = new double[_shape.KvElementCount];
        var dv = new double[_shape.KvElementCount];
        AttentionReference.Backward(_q, _k, _v, AttentionReference.ToDouble(dOut), _shape, LayerConfig.Options, dq, dk, dv);
        return ([.. dq.Select(x => (float)x)], [.. dk.Select(x => (float)x)], [.. dv.Select(x => (float)x)]);
    }

    public void Dispose()
    {
    }
}
