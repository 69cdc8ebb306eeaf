namespace FlashAttn.Tests.TestSupport;

/// <summary>How a Gpu fp8 case passes its descale factors.</summary>
public enum Float8Descales
{
    /// <summary>No tables: every factor 1.</summary>
    None,

    /// <summary>One factor per tensor: a <c>[batch, heads_kv]</c> view with strides 0 of one value, for each of q, k, v.</summary>
    PerTensor,

    /// <summary>FA3's <c>rand(batch, heads_kv) * 2</c> for each of q, k and v.</summary>
    PerHead,

    /// <summary>q none, k per tensor, v per (batch, kv head).</summary>
    Mixed,
}

/// <summary>
/// One fixed-length fp8 (e4m3) forward problem on the GPU: FA3's inputs (bf16 normals rounded to e4m3; q times
/// softcap / 4 with a soft-cap) and descales, a poisoned bf16 output and fp32 log-sum-exp, the arguments of the call,
/// and the judgement of its results by <see cref="Float8Testing"/>'s rule against the float64 reference.
/// </summary>
internal sealed class Float8Run : IDisposable
{
    private readonly List<IDisposable> _owned = [];

    private Float8Run(AttentionDims dims) => Dims = dims;

    public AttentionDims Dims { get; }

    public Float8E4M3[] Q { get; private set; } = [];

    public Float8E4M3[] K { get; private set; } = [];

    public Float8E4M3[] V { get; private set; } = [];

    /// <summary>Dense <c>[batch, heads_kv]</c> host copies of the factors (empty: 1).</summary>
    public float[] QDescale { get; private set; } = [];

    public float[] KDescale { get; private set; } = [];

    public float[] VDescale { get; private set; } = [];

    public DeviceArray DQ { get; private set; } = null!;

    public DeviceArray DK { get; private set; } = null!;

    public DeviceArray DV { get; private set; } = null!;

    public DeviceArray DOut { get; private set; } = null!;

    public DeviceArray DLse { get; private set; } = null!;

    public DeviceTensor? QDescaleT { get; private set; }

    public DeviceTensor? KDescaleT { get; private set; }

    public DeviceTensor? VDescaleT { get; private set; }

    public long[] QShape => [Dims.Batch, Dims.SeqQ, Dims.HeadsQ, Dims.HeadDim];

    public long[] KvShape => [Dims.Batch, Dims.SeqK, Dims.HeadsKv, Dims.HeadDim];

    /// <summary>The call's arguments: e4m3 q, k, v, bf16 output, fp32 LSE and the descale tables.</summary>
    public AttentionArguments Arguments => new(
        DQ.Tensor(QShape), DK.Tensor(KvShape), DV.Tensor(KvShape), DOut.Tensor(QShape), DLse.Tensor([Dims.Batch, Dims.HeadsQ, Dims.SeqQ]))
    {
        QDescale = QDescaleT,
        KDescale = KDescaleT,
        VDescale = VDescaleT,
    };

    public static Float8Run Create(CudaDevice device, AttentionDims dims, float softcap, Float8Descales descales, Random random)
    {
        var run = new Float8Run(dims);
        try
        {
            (run.Q, run.K, run.V) = Float8Testing.RandomQkv(random, dims, softcap);
            run.DQ = run.Own(DeviceArray.Upload(device, DataType.Float8E4M3, Float8Testing.ToFloat(run.Q)));
            run.DK = run.Own(DeviceArray.Upload(device, DataType.Float8E4M3, Float8Testing.ToFloat(run.K)));
            run.DV = run.Own(DeviceArray.Upload(device, DataType.Float8E4M3, Float8Testing.ToFloat(run.V)));
            run.DOut = run.Own(DeviceArray.Allocate(device, DataType.BFloat16, dims.QElements));
            run.DLse = run.Own(DeviceArray.Allocate(device, DataType.Float32, dims.LseElements));
            int n = dims.Batch * dims.HeadsKv;
            (run.QDescale, run.QDescaleT) = descales switch
            {
                Float8Descales.PerTensor => run.PerTensor(device, random, n),
                Float8Descales.PerHead => run.PerHead(device, random, n),
                _ => ([], null),
            };
            (run.KDescale, run.KDescaleT) = descales switch
            {
                Float8Descales.PerTensor or Float8Descales.Mixed => run.PerTensor(device, random, n),
                Float8Descales.PerHead => run.PerHead(device, random, n),
                _ => ([], null),
            };
            (run.VDescale, run.VDescaleT) = descales switch
            {
                Float8Descales.PerTensor => run.PerTensor(device, random, n),
                Float8Descales.PerHead or Float8Descales.Mixed => run.PerHead(device, random, n),
                _ => ([], null),
            };
            run.PoisonOutputs();
            return run;
        }
        catch
        {
            run.Dispose();
            throw;
        }
    }

    public void PoisonOutputs()
    {
        DOut.Poison();
        DLse.Poison();
    }

    /// <summary>The host side of the problem (inputs and dense descale factors), for the reference and the rule.</summary>
    public Float8Problem Problem => new(Dims, Q, K, V, QDescale, KDescale, VDescale);

    /// <summary>FA3's output rule and our LSE bound on what the call wrote; empty when accepted.</summary>
    public List<string> Judge(float[] ours, float[] lse, AttentionOptions options)
    {
        var (problems, lseProblems) = Problem.Judge(ours, lse, options, options.EffectiveScale(Dims.HeadDim), options.Softcap is not null);
        problems.AddRange(lseProblems);
        return problems;
    }

    /// <summary>Whether some row sees no key (the reference's LSE is +infinity there).</summary>
    public bool HasRowsWithoutKeys(AttentionOptions options)
    {
        for (int i = 0; i < Dims.SeqQ; i++)
        {
            var (first, end) = AttentionReference.VisibleKeys(options, i, Dims.SeqQ, Dims.SeqK);
            if (end <= first)
            {
                return true;
            }
        }

        return false;
    }

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--)
        {
            _owned[i].Dispose();
        }
    }

    private T Own<T>(T disposable)
        where T : IDisposable
    {
        _owned.Add(disposable);
        return disposable;
    }

    private (float[] Host, DeviceTensor Tensor) PerHead(CudaDevice device, Random random, int n)
    {
        float[] values = Float8Testing.RandomDescales(random, n);
        DeviceBuffer<float> buffer = Own(new DeviceBuffer<float>(device, n));
        buffer.CopyFrom(values);
        return (values, buffer.AsTensor(Dims.Batch, Dims.HeadsKv));
    }

    private (float[] Host, DeviceTensor Tensor) PerTensor(CudaDevice device, Random random, int n)
    {
        float value = Float8Testing.RandomDescales(random, 1)[0];
        DeviceBuffer<float> buffer = Own(new DeviceBuffer<float>(device, 1));
        buffer.CopyFrom([value]);
        return (Enumerable.Repeat(value, n).ToArray(), DeviceTensor.FromBuffer(buffer, [Dims.Batch, Dims.HeadsKv], [0, 0]));
    }
}
