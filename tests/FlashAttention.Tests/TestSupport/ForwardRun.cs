namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// One forward problem on the GPU: fresh random dtype inputs, poisoned outputs, the call, and the results read
/// back. Used by the Gpu fixtures. v and the output have <see cref="AttentionDims.HeadDimV"/> columns.
/// </summary>
internal sealed class ForwardRun : IDisposable
{
    private ForwardRun(AttentionDims dims, DataType dtype, int seed)
    {
        Dims = dims;
        DataType = dtype;
        Seed = seed;
    }

    public AttentionDims Dims { get; }

    public DataType DataType { get; }

    public int Seed { get; }

    /// <summary>Input values (already rounded to the dtype), dense [B, S, H, D].</summary>
    public float[] Q { get; private set; } = [];

    public float[] K { get; private set; } = [];

    public float[] V { get; private set; } = [];

    public DeviceArray DQ { get; private set; } = null!;

    public DeviceArray DK { get; private set; } = null!;

    public DeviceArray DV { get; private set; } = null!;

    public DeviceArray DOut { get; private set; } = null!;

    public DeviceArray DLse { get; private set; } = null!;

    public long[] QShape => [Dims.Batch, Dims.SeqQ, Dims.HeadsQ, Dims.HeadDim];

    public long[] KvShape => [Dims.Batch, Dims.SeqK, Dims.HeadsKv, Dims.HeadDim];

    /// <summary>v's shape: k's with <see cref="AttentionDims.HeadDimV"/> last.</summary>
    public long[] VShape => [Dims.Batch, Dims.SeqK, Dims.HeadsKv, Dims.HeadDimV];

    /// <summary>The output's shape: q's with <see cref="AttentionDims.HeadDimV"/> last.</summary>
    public long[] OutShape => [Dims.Batch, Dims.SeqQ, Dims.HeadsQ, Dims.HeadDimV];

    public long[] LseShape => [Dims.Batch, Dims.HeadsQ, Dims.SeqQ];

    public DeviceTensor QT => DQ.Tensor(QShape);

    public DeviceTensor KT => DK.Tensor(KvShape);

    public DeviceTensor VT => DV.Tensor(VShape);

    public DeviceTensor OutT => DOut.Tensor(OutShape);

    public DeviceTensor LseT => DLse.Tensor(LseShape);

    /// <summary>Draws N(0, 1) inputs rounded to <paramref name="dtype"/>, uploads them and poisons the outputs.</summary>
    public static ForwardRun Create(CudaDevice device, AttentionDims dims, DataType dtype, Random random, int seed)
    {
        var run = new ForwardRun(dims, dtype, seed);
        try
        {
            run.Q = RoundAll(dtype, TestRandom.Normal(random, dims.QElements));
            run.K = RoundAll(dtype, TestRandom.Normal(random, dims.KvElements));
            run.V = RoundAll(dtype, TestRandom.Normal(random, dims.VElements));
            run.DQ = DeviceArray.Upload(device, dtype, run.Q);
            run.DK = DeviceArray.Upload(device, dtype, run.K);
            run.DV = DeviceArray.Upload(device, dtype, run.V);
            run.DOut = DeviceArray.Allocate(device, dtype, dims.OutElements);
            run.DLse = DeviceArray.Allocate(device, DataType.Float32, dims.LseElements);
            run.PoisonOutputs();
            return run;
        }
        catch
        {
            run.Dispose();
            throw;
        }
    }

    public static float[] RoundAll(DataType dtype, float[] values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = DeviceArray.Round(dtype, values[i]);
            if (values[i] == 0f)
            {
                values[i] = DeviceArray.Round(dtype, 1e-3f); // never zeros
            }
        }

        return values;
    }

    /// <summary>Draws fresh inputs into the same device buffers (what a CUDA graph replay reads).</summary>
    public void Refill(Random random)
    {
        Q = RoundAll(DataType, TestRandom.Normal(random, Dims.QElements));
        K = RoundAll(DataType, TestRandom.Normal(random, Dims.KvElements));
        V = RoundAll(DataType, TestRandom.Normal(random, Dims.VElements));
        DQ.Write(Q);
        DK.Write(K);
        DV.Write(V);
    }

    public void PoisonOutputs()
    {
        DOut.Poison();
        DLse.Poison();
    }

    /// <summary>float64 reference output and log-sum-exp from the product's CPU oracle.</summary>
    public (double[] Out, double[] Lse) Reference(AttentionOptions options)
    {
        var output = new double[Dims.OutElements];
        var lse = new double[Dims.LseElements];
        AttentionReference.Forward(
            AttentionReference.ToDouble(Q), AttentionReference.ToDouble(K), AttentionReference.ToDouble(V),
            new AttentionShape(Dims.Batch, Dims.SeqQ, Dims.SeqK, Dims.HeadsQ, Dims.HeadsKv, Dims.HeadDim) { HeadDimV = Dims.HeadDimV },
            options, output, lse);
        return (output, lse);
    }

    public void Dispose()
    {
        DQ?.Dispose();
        DK?.Dispose();
        DV?.Dispose();
        DOut?.Dispose();
        DLse?.Dispose();
    }
}
