using FlashAttn.Native;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Valid fa_forward_params_t values over fake, 16-byte-aligned, non-overlapping addresses, for tests of
/// fa_forward_check (which never dereferences the pointers). Tests break one field at a time.
/// </summary>
internal static unsafe class ForwardParamsFactory
{
    public const nint QAddress = 0x1000_0000;
    public const nint KAddress = 0x2000_0000;
    public const nint VAddress = 0x3000_0000;
    public const nint OutAddress = 0x4000_0000;
    public const nint LseAddress = 0x5000_0000;

    /// <summary>Dense [B, S, H, D] tensor descriptor.</summary>
    public static FaTensor Dense(nint data, FaDtype dtype, long b, long s, long h, long d)
    {
        FaTensor t = default;
        t.data = data;
        t.dtype = (int)dtype;
        t.rank = 4;
        t.shape[0] = b;
        t.shape[1] = s;
        t.shape[2] = h;
        t.shape[3] = d;
        t.strides[3] = 1;
        t.strides[2] = d;
        t.strides[1] = h * d;
        t.strides[0] = s * h * d;
        return t;
    }

    /// <summary>Dense fp32 [B, H, Sq] log-sum-exp descriptor.</summary>
    public static FaTensor Lse(nint data, long b, long h, long sq)
    {
        FaTensor t = default;
        t.data = data;
        t.dtype = (int)FaDtype.Float32;
        t.rank = 3;
        t.shape[0] = b;
        t.shape[1] = h;
        t.shape[2] = sq;
        t.strides[2] = 1;
        t.strides[1] = sq;
        t.strides[0] = h * sq;
        return t;
    }

    /// <summary>
    /// A params struct that fa_forward_check accepts: B=2, Sq=17, Sk=33, Hq=8, Hkv=2, the given head dim and
    /// dtype, with an lse output. Filled by fa_forward_params_init first so defaults come from the library.
    /// </summary>
    public static FaForwardParams Valid(int headDim = 64, FaDtype dtype = FaDtype.Float16, bool withLse = true)
    {
        FaForwardParams p;
        FaStatus status = NativeMethods.fa_forward_params_init(&p, (nuint)sizeof(FaForwardParams));
        if (status != FaStatus.Success)
        {
            throw new InvalidOperationException($"fa_forward_params_init returned {status}");
        }

        p.q = Dense(QAddress, dtype, 2, 17, 8, headDim);
        p.k = Dense(KAddress, dtype, 2, 33, 2, headDim);
        p.v = Dense(VAddress, dtype, 2, 33, 2, headDim);
        p.@out = Dense(OutAddress, dtype, 2, 17, 8, headDim);
        if (withLse)
        {
            p.lse = Lse(LseAddress, 2, 8, 17);
        }

        return p;
    }

    /// <summary>Runs fa_forward_check and returns the status and this thread's message.</summary>
    public static (FaStatus Status, string Message) Check(FaForwardParams p, int computeCapability = 0)
    {
        FaStatus status = NativeMethods.fa_forward_check(&p, computeCapability);
        return (status, NativeLib.LastError());
    }
}
