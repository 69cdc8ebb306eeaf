namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// One backward problem on the GPU, fixed-length: fresh random dtype inputs (q, k, v and the output gradient dO,
/// never zero), our own forward for O and the log-sum-exp, gradients poisoned with NaN before each backward, the
/// results read back, and the float64 reference and same-dtype naive gradients computed from the exact 16-bit values
/// the kernel was given.
/// </summary>
internal sealed class BackwardRun : IDisposable
{
    private BackwardRun(AttentionDims dims, DataType dtype)
    {
        Dims = dims;
        DataType = dtype;
    }

    public AttentionDims Dims { get; }

    public DataType DataType { get; }

    /// <summary>Input values already rounded to the dtype, dense [B, S, H, D].</summary>
    public float[] Q { get; private set; } = [];

    public float[] K { get; private set; } = [];

    public float[] V { get; private set; } = [];

    public float[] DO { get; private set; } = [];

    public DeviceArray DQIn { get; private set; } = null!;

    public DeviceArray DKIn { get; private set; } = null!;

    public DeviceArray DVIn { get; private set; } = null!;

    public DeviceArray DOutput { get; private set; } = null!;

    public DeviceArray DLse { get; private set; } = null!;

    public DeviceArray DDOut { get; private set; } = null!;

    public DeviceArray DDq { get; private set; } = null!;

    public DeviceArray DDk { get; private set; } = null!;

    public DeviceArray DDv { get; private set; } = null!;

    public long[] QShape => [Dims.Batch, Dims.SeqQ, Dims.HeadsQ, Dims.HeadDim];

    public long[] KvShape => [Dims.Batch, Dims.SeqK, Dims.HeadsKv, Dims.HeadDim];

    /// <summary>v's and dv's shape: <see cref="KvShape"/> with the V head dim.</summary>
    public long[] VShape => [Dims.Batch, Dims.SeqK, Dims.HeadsKv, Dims.HeadDimV];

    /// <summary>The output's and dOut's shape: <see cref="QShape"/> with the V head dim.</summary>
    public long[] OutShape => [Dims.Batch, Dims.SeqQ, Dims.HeadsQ, Dims.HeadDimV];

    public long[] LseShape => [Dims.Batch, Dims.HeadsQ, Dims.SeqQ];

    public DeviceTensor QT => DQIn.Tensor(QShape);

    public DeviceTensor KT => DKIn.Tensor(KvShape);

    public DeviceTensor VT => DVIn.Tensor(VShape);

    public DeviceTensor OutT => DOutput.Tensor(OutShape);

    public DeviceTensor LseT => DLse.Tensor(LseShape);

    public DeviceTensor DOutT => DDOut.Tensor(OutShape);

    public DeviceTensor DqT => DDq.Tensor(QShape);

    public DeviceTensor DkT => DDk.Tensor(KvShape);

    public DeviceTensor DvT => DDv.Tensor(VShape);

    public static BackwardRun Create(CudaDevice device, AttentionDims dims, DataType dtype, Random random)
    {
        var run = new BackwardRun(dims, dtype);
        try
        {
            run.Q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.QElements));
            run.K = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.KvElements));
            run.V = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.VElements));
            run.DO = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, dims.OutElements));
            run.DQIn = DeviceArray.Upload(device, dtype, run.Q);
            run.DKIn = DeviceArray.Upload(device, dtype, run.K);
            run.DVIn = DeviceArray.Upload(device, dtype, run.V);
            run.DDOut = DeviceArray.Upload(device, dtype, run.DO);
            run.DOutput = DeviceArray.Allocate(device, dtype, dims.OutElements);
            run.DLse = DeviceArray.Allocate(device, DataType.Float32, dims.LseElements);
            run.DDq = DeviceArray.Allocate(device, dtype, dims.QElements);
            run.DDk = DeviceArray.Allocate(device, dtype, dims.KvElements);
            run.DDv = DeviceArray.Allocate(device, dtype, dims.VElements);
            run.DOutput.Poison();
            run.DLse.Poison();
            run.PoisonGradients();
            return run;
        }
        catch
        {
            run.Dispose();
            throw;
        }
    }

    public void PoisonGradients()
    {
        DDq.Poison();
        DDk.Poison();
        DDv.Poison();
    }

    /// <summary>Our forward (O and LSE for the backward), waited for.</summary>
    public void Forward(FlashAttention attention, AttentionOptions options, CudaStream stream)
    {
        attention.Forward(QT, KT, VT, OutT, LseT, options, stream);
        stream.Synchronize();
    }

    /// <summary>Poisons the gradients, runs our backward and waits for it.</summary>
    public void Backward(FlashAttention attention, AttentionOptions options, CudaStream stream, DeviceBuffer<byte>? workspace = null)
    {
        PoisonGradients();
        attention.Backward(QT, KT, VT, OutT, DOutT, LseT, DqT, DkT, DvT, options, stream, workspace);
        stream.Synchronize();
    }

    public (float[] Dq, float[] Dk, float[] Dv) ReadGradients() => (DDq.Read(), DDk.Read(), DDv.Read());

    /// <summary>The raw bytes of dq, dk and dv concatenated, for bit-for-bit comparisons.</summary>
    public byte[] GradientBytes() => [.. DDq.ReadBytes(), .. DDk.ReadBytes(), .. DDv.ReadBytes()];

    /// <summary>float64 reference gradients from the product's CPU oracle.</summary>
    public (double[] Dq, double[] Dk, double[] Dv) Reference(AttentionOptions options)
    {
        var dq = new double[Dims.QElements];
        var dk = new double[Dims.KvElements];
        var dv = new double[Dims.VElements];
        AttentionReference.Backward(
            AttentionReference.ToDouble(Q), AttentionReference.ToDouble(K), AttentionReference.ToDouble(V), AttentionReference.ToDouble(DO),
            new AttentionShape(Dims.Batch, Dims.SeqQ, Dims.SeqK, Dims.HeadsQ, Dims.HeadsKv, Dims.HeadDim) { HeadDimV = Dims.HeadDimV },
            options, dq, dk, dv);
        return (dq, dk, dv);
    }

    public (float[] Dq, float[] Dk, float[] Dv) Naive(MaskSpec mask, float scale) =>
        NaiveBackward.SameDtype(Q, K, V, DO, Dims, mask, scale, x => DeviceArray.Round(DataType, x));

    /// <summary>
    /// Rows (of HeadDim elements) that must be exactly 0: dq rows [b, i, h] of queries that see no key, and dk/dv rows
    /// [b, j, h] of keys no query sees.
    /// </summary>
    public (bool[] Dq, bool[] Dkv) ZeroRows(MaskSpec mask) => BackwardAcceptance.ZeroRows(Dims, mask);

    /// <summary>Every problem of the three gradients against the reference and the naive computation; empty when they pass.</summary>
    public List<string> Judge(float[] dq, float[] dk, float[] dv, AttentionOptions options, MaskSpec mask, float scale)
    {
        var (rq, rk, rv) = Reference(options);
        var (nq, nk, nv) = Naive(mask, scale);
        var (zq, zkv) = ZeroRows(mask);
        var problems = BackwardAcceptance.Judge("dq", dq, nq, rq, DataType, Dims.HeadDim, zq);
        problems.AddRange(BackwardAcceptance.Judge("dk", dk, nk, rk, DataType, Dims.HeadDim, zkv));
        problems.AddRange(BackwardAcceptance.Judge("dv", dv, nv, rv, DataType, Dims.HeadDimV, zkv));
        return problems;
    }

    public void Dispose()
    {
        DQIn?.Dispose();
        DKIn?.Dispose();
        DVIn?.Dispose();
        DOutput?.Dispose();
        DLse?.Dispose();
        DDOut?.Dispose();
        DDq?.Dispose();
        DDk?.Dispose();
        DDv?.Dispose();
    }
}
