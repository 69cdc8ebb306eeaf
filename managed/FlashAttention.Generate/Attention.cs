using System.Diagnostics;
using System.Globalization;
using FlashAttn;

namespace FlashAttn.Generate;

/// <summary>
/// What both attention backends share: a host mirror of every layer's cache (contiguous
/// <c>[batch, capacity, headsKv, headDim]</c>: float64 holding the exact 16-bit values appended, or, with
/// <c>--fp8-cache</c>, the e4m3 bytes the appends quantize to with <see cref="KeyDescale"/> and
/// <see cref="ValueDescale"/>) and the lengths, so <see cref="DecodeReference"/> can compute the same call.
/// </summary>
internal abstract class AttentionBackend : IAttention, IDisposable
{
    protected static readonly AttentionOptions Causal = new() { Causal = true };

    private readonly double[][] _kMirror;
    private readonly double[][] _vMirror;
    private readonly Float8E4M3[][] _kMirror8;
    private readonly Float8E4M3[][] _vMirror8;
    private readonly int[][] _mirrorLengths;

    protected AttentionBackend(Program.Settings settings, ToyModel model, int batch, int capacity)
    {
        Settings = settings;
        Model = model;
        Batch = batch;
        Capacity = capacity;
        long size = (long)batch * capacity * model.HeadsKv * model.HeadDim;
        _kMirror = new double[model.Layers][];
        _vMirror = new double[model.Layers][];
        _kMirror8 = new Float8E4M3[model.Layers][];
        _vMirror8 = new Float8E4M3[model.Layers][];
        _mirrorLengths = new int[model.Layers][];
        for (int l = 0; l < model.Layers; l++)
        {
            _kMirror[l] = settings.Fp8Cache ? [] : new double[size];
            _vMirror[l] = settings.Fp8Cache ? [] : new double[size];
            _kMirror8[l] = settings.Fp8Cache ? new Float8E4M3[size] : [];
            _vMirror8[l] = settings.Fp8Cache ? new Float8E4M3[size] : [];
            _mirrorLengths[l] = new int[batch];
        }

        // Fixed factors of the e4m3 cache, a different one per KV head (keys up to 448 / 16 = 28 are stored unsaturated).
        KeyDescale = Enumerable.Range(0, model.HeadsKv).Select(h => 1f / (16 + (8 * h))).ToArray();
        ValueDescale = Enumerable.Range(0, model.HeadsKv).Select(h => 1f / (32 + (8 * h))).ToArray();
    }

    public ToyModel Model { get; }

    public abstract string CacheDescription { get; }

    /// <summary>GPU time of the last step's decode calls (all layers), or null on the CPU.</summary>
    public double? LastStepMilliseconds { get; protected set; }

    protected Program.Settings Settings { get; }

    protected int Batch { get; }

    protected int Capacity { get; }

    /// <summary>The e4m3 cache's key descale factors, one per KV head (with <c>--fp8-cache</c>).</summary>
    protected float[] KeyDescale { get; }

    /// <summary>The e4m3 cache's value descale factors, one per KV head.</summary>
    protected float[] ValueDescale { get; }

    public abstract void Attend(int layer, float[] q, float[] k, float[] v, int seqLenNew, float[] output);

    /// <summary>What to print after a step (timing, checks), resetting the per-step counters.</summary>
    public abstract string TakeStepReport();

    public virtual void Dispose()
    {
    }

    /// <summary>The lengths of a layer's cache as the mirror has them (before the next append).</summary>
    protected int[] MirrorLengths(int layer) => _mirrorLengths[layer];

    /// <summary>Appends to the mirror and computes the float64 reference output and log-sum-exp of the call.</summary>
    protected (double[] Output, double[] Lse) Reference(int layer, float[] q, float[] k, float[] v, int seqLenNew)
    {
        var output = new double[q.Length];
        var lse = new double[Batch * Model.HeadsQ * seqLenNew];
        if (Settings.Fp8Cache)
        {
            var fp8 = new DecodeServingOptions { KeyDescale = KeyDescale, ValueDescale = ValueDescale, QueryDataType = Settings.DataType };
            DecodeReference.ForwardContiguous(
                AttentionReference.ToDouble(q), _kMirror8[layer], _vMirror8[layer], _mirrorLengths[layer],
                AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
                seqLenNew, Model.HeadsQ, Model.HeadsKv, Model.HeadDim, Capacity, Causal, fp8, output, lse);
        }
        else
        {
            DecodeReference.ForwardContiguous(
                AttentionReference.ToDouble(q), _kMirror[layer], _vMirror[layer], _mirrorLengths[layer],
                AttentionReference.ToDouble(k), AttentionReference.ToDouble(v),
                seqLenNew, Model.HeadsQ, Model.HeadsKv, Model.HeadDim, Capacity, Causal, output, lse);
        }

        Advance(layer, seqLenNew);
        return (output, lse);
    }

    /// <summary>Appends to the mirror without computing anything.</summary>
    protected void AppendOnly(int layer, float[] k, float[] v, int seqLenNew)
    {
        int row = Model.HeadsKv * Model.HeadDim;
        for (int b = 0; b < Batch; b++)
        {
            for (int t = 0; t < seqLenNew; t++)
            {
                long destination = (((long)b * Capacity) + _mirrorLengths[layer][b] + t) * row;
                int source = ((b * seqLenNew) + t) * row;
                for (int x = 0; x < row; x++)
                {
                    if (Settings.Fp8Cache)
                    {
                        int h = x / Model.HeadDim;
                        _kMirror8[layer][destination + x] = DecodeReference.QuantizeForCache(k[source + x], KeyDescale[h], Settings.DataType);
                        _vMirror8[layer][destination + x] = DecodeReference.QuantizeForCache(v[source + x], ValueDescale[h], Settings.DataType);
                    }
                    else
                    {
                        _kMirror[layer][destination + x] = k[source + x];
                        _vMirror[layer][destination + x] = v[source + x];
                    }
                }
            }
        }

        Advance(layer, seqLenNew);
    }

    private void Advance(int layer, int seqLenNew)
    {
        for (int b = 0; b < Batch; b++)
        {
            _mirrorLengths[layer][b] += seqLenNew;
        }
    }
}

/// <summary>Attention on the CPU reference itself (no GPU): the mirror is the cache.</summary>
internal sealed class CpuAttention(Program.Settings settings, ToyModel model)
    : AttentionBackend(settings, model, 2, model.MaxPositions)
{
    private readonly Stopwatch _watch = new();

    public override string CacheDescription =>
        $"host {(Settings.Fp8Cache ? "e4m3 (descales per kv head)" : "float64")} contiguous [{Batch}, {Capacity}, {Model.HeadsKv}, {Model.HeadDim}] per layer";

    public override void Attend(int layer, float[] q, float[] k, float[] v, int seqLenNew, float[] output)
    {
        _watch.Start();
        (double[] result, _) = Reference(layer, q, k, v, seqLenNew);
        _watch.Stop();
        Func<float, float> round = Settings.Fp16 ? x => (float)(Half)x : x => (float)(BFloat16)x;
        for (int i = 0; i < result.Length; i++)
        {
            output[i] = round((float)result[i]);
        }
    }

    public override string TakeStepReport()
    {
        string report = string.Create(CultureInfo.InvariantCulture, $"(CPU reference attention {_watch.Elapsed.TotalMilliseconds:F2} ms)");
        _watch.Reset();
        return report;
    }
}

/// <summary>Attention through <see cref="FlashAttention.Decode(in DecodeArguments, AttentionOptions, CudaStream)"/>, one <see cref="KvCache"/> per layer.</summary>
internal abstract class GpuAttention(Program.Settings settings, ToyModel model, int batch, int capacity)
    : AttentionBackend(settings, model, batch, capacity)
{
    public List<string> Failures { get; } = [];

    public int CheckedCalls { get; protected set; }

    public double Cap => Settings.Fp16 ? 2e-3 : 1e-2;
}

/// <summary><see cref="GpuAttention"/> for one element type.</summary>
/// <typeparam name="T"><see cref="Half"/> or <see cref="BFloat16"/>.</typeparam>
internal sealed class GpuAttention<T> : GpuAttention
    where T : unmanaged
{
    private readonly FlashAttention _attention;
    private readonly CudaStream _stream;
    private readonly KvCache[] _caches;
    private readonly DeviceBuffer<T> _q, _k, _v, _out;
    private readonly DeviceBuffer<float> _lse;
    private readonly CudaEvent _start, _end;
    private readonly Func<float, T> _to;
    private readonly Func<T, float> _from;
    private readonly int _maxNew;
    private int _step = -1;
    private int _lastLayerSeen = int.MaxValue;
    private double _stepMs;
    private string _stepChecks = string.Empty;

    public GpuAttention(CudaDevice device, Program.Settings settings, ToyModel model, Func<float, T> to, Func<T, float> from)
        : base(settings, model, 2, model.MaxPositions)
    {
        _to = to;
        _from = from;
        _maxNew = model.MaxPositions;
        DataType dtype = settings.Fp8Cache ? DataType.Float8E4M3 : settings.DataType;
        _attention = new FlashAttention(device);
        _stream = CudaStream.Create(device);
        _caches = new KvCache[model.Layers];
        for (int l = 0; l < model.Layers; l++)
        {
            int pages = (Capacity + settings.BlockSize - 1) / settings.BlockSize;
            _caches[l] = settings.Contiguous
                ? KvCache.CreateContiguous(device, dtype, Batch, Capacity, model.HeadsKv, model.HeadDim, _stream)
                : KvCache.CreatePaged(device, dtype, Batch, Batch * pages, settings.BlockSize, model.HeadsKv, model.HeadDim, pages, _stream);
            if (settings.Fp8Cache)
            {
                _caches[l].SetDescales(KeyDescale, ValueDescale, _stream);
            }
        }

        _q = new DeviceBuffer<T>(device, (long)Batch * _maxNew * model.HeadsQ * model.HeadDim);
        _out = new DeviceBuffer<T>(device, _q.Length);
        _k = new DeviceBuffer<T>(device, (long)Batch * _maxNew * model.HeadsKv * model.HeadDim);
        _v = new DeviceBuffer<T>(device, _k.Length);
        _lse = new DeviceBuffer<float>(device, (long)Batch * model.HeadsQ * _maxNew);
        _start = CudaEvent.Create(device);
        _end = CudaEvent.Create(device);
    }

    public override string CacheDescription => _caches[0].ToString();

    public override void Attend(int layer, float[] q, float[] k, float[] v, int seqLenNew, float[] output)
    {
        if (layer <= _lastLayerSeen)
        {
            _step++; // layer 0 again: a new step
        }

        _lastLayerSeen = layer;
        bool check = _step < Settings.CheckSteps;
        KvCache cache = _caches[layer];
        int[] before = cache.SequenceLengths.ToArray();
        int hq = Model.HeadsQ, hkv = Model.HeadsKv, d = Model.HeadDim;

        _q.CopyFrom(q.Select(_to).ToArray(), 0, _stream);
        _k.CopyFrom(k.Select(_to).ToArray(), 0, _stream);
        _v.CopyFrom(v.Select(_to).ToArray(), 0, _stream);
        if (check)
        {
            _out.Fill(0xFF, _stream); // NaN until written
            _lse.Fill(0xFF, _stream);
        }

        DeviceTensor qT = _q.AsTensor(Batch, seqLenNew, hq, d);
        DeviceTensor kT = _k.AsTensor(Batch, seqLenNew, hkv, d);
        DeviceTensor vT = _v.AsTensor(Batch, seqLenNew, hkv, d);
        DeviceTensor oT = _out.AsTensor(Batch, seqLenNew, hq, d);
        DeviceTensor lT = _lse.AsTensor(Batch, hq, seqLenNew);
        if (_step == 1 && layer == 0)
        {
            int splits = _attention.GetDecodeSplitCount(qT, cache, kT, vT, oT, lT, Causal);
            long bytes = _attention.GetDecodeWorkspaceSize(qT, cache, kT, vT, oT, lT, Causal);
            Console.WriteLine($"          (one-token step: the library picks {splits} key split(s), workspace {bytes} bytes)");
        }

        _start.Record(_stream);
        _attention.Decode(qT, cache, kT, vT, oT, lT, Causal, _stream);
        _end.Record(_stream);
        _stream.Synchronize();
        _stepMs += CudaEvent.ElapsedMilliseconds(_start, _end);

        var hostOut = new T[q.Length];
        _out.CopyTo(hostOut, 0, _stream);
        for (int i = 0; i < hostOut.Length; i++)
        {
            output[i] = _from(hostOut[i]);
        }

        for (int b = 0; b < Batch; b++)
        {
            if (cache.SequenceLengths[b] != before[b] + seqLenNew)
            {
                Failures.Add($"step {_step} layer {layer}: cache length of sequence {b} is {cache.SequenceLengths[b]}, expected {before[b] + seqLenNew}");
            }
        }

        if (!check)
        {
            AppendOnly(layer, k, v, seqLenNew);
            return;
        }

        var lse = new float[Batch * hq * seqLenNew];
        _lse.CopyTo(lse, 0, _stream);
        var (refOut, refLse) = Reference(layer, q, k, v, seqLenNew);
        CheckedCalls++;
        int nan = output.Count(float.IsNaN);
        double rel = AttentionReference.RelativeL2Error(refOut, AttentionReference.ToDouble(output));
        double worstLse = 0;
        for (int i = 0; i < lse.Length; i++)
        {
            double err = Math.Abs(lse[i] - refLse[i]) / Math.Max(1.0, Math.Abs(refLse[i]));
            worstLse = double.IsNaN(err) ? double.PositiveInfinity : Math.Max(worstLse, err);
        }

        string line = string.Create(CultureInfo.InvariantCulture, $"L{layer} rel L2 {rel:E2} lse {worstLse:E1}");
        _stepChecks += (_stepChecks.Length > 0 ? ", " : string.Empty) + line;
        if (nan > 0 || !(rel <= Cap) || !(worstLse <= 1e-4))
        {
            Failures.Add($"step {_step} layer {layer}: {nan} NaN, {line} (limits {Cap:E0}, 1e-4)");
        }
    }

    public override string TakeStepReport()
    {
        string report = string.Create(CultureInfo.InvariantCulture, $"decode {_stepMs * 1e3,7:F1} us") +
            (_stepChecks.Length > 0 ? $"  [checked vs DecodeReference: {_stepChecks}]" : string.Empty);
        LastStepMilliseconds = _stepMs;
        _stepMs = 0;
        _stepChecks = string.Empty;
        return report;
    }

    public override void Dispose()
    {
        foreach (KvCache cache in _caches)
        {
            cache?.Dispose();
        }

        _q.Dispose();
        _k.Dispose();
        _v.Dispose();
        _out.Dispose();
        _lse.Dispose();
        _start.Dispose();
        _end.Dispose();
        _stream.Dispose();
        _attention.Dispose();
    }
}
