using FlashAttn.Native;
using static FlashAttn.Tests.TestSupport.ForwardParamsFactory;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Valid fa_backward_params_t values over fake, 256-byte-aligned, non-overlapping addresses, for tests of
/// fa_backward_check (which never dereferences the pointers). Tests break one field at a time. The forward's
/// addresses (q, k, v, out, lse) are reused from <see cref="ForwardParamsFactory"/>.
/// </summary>
internal static unsafe class BackwardParamsFactory
{
    public const nint DOutAddress = 0x6000_0000;
    public const nint DqAddress = 0x7000_0000;
    public const nint DkAddress = 0x7800_0000;
    public const nint DvAddress = 0x7C00_0000;
    public const nint WorkspaceAddress = 0x0800_0000;
    public const nint CuQAddress = 0x0900_0000;
    public const nint CuKAddress = 0x0900_1000;

    /// <summary>B=2, Sq=17, Sk=33, Hq=8, Hkv=2 (GQA 4), as <see cref="ForwardParamsFactory.Valid"/>.</summary>
    public const long B = 2, Sq = 17, Sk = 33, Hq = 8, Hkv = 2;

    /// <summary>
    /// A params struct that fa_backward_check accepts: the forward's shapes with the given head dim and dtype, lse
    /// present, gradients of matching shapes, no workspace. Filled by fa_backward_params_init first.
    /// </summary>
    public static FaBackwardParams Valid(int headDim = 64, FaDtype dtype = FaDtype.Float16)
    {
        FaBackwardParams p;
        FaStatus status = NativeMethods.fa_backward_params_init(&p, (nuint)sizeof(FaBackwardParams));
        if (status != FaStatus.Success)
        {
            throw new InvalidOperationException($"fa_backward_params_init returned {status}");
        }

        p.q = Dense(QAddress, dtype, B, Sq, Hq, headDim);
        p.k = Dense(KAddress, dtype, B, Sk, Hkv, headDim);
        p.v = Dense(VAddress, dtype, B, Sk, Hkv, headDim);
        p.@out = Dense(OutAddress, dtype, B, Sq, Hq, headDim);
        p.dout = Dense(DOutAddress, dtype, B, Sq, Hq, headDim);
        p.lse = Lse(LseAddress, B, Hq, Sq);
        p.dq = Dense(DqAddress, dtype, B, Sq, Hq, headDim);
        p.dk = Dense(DkAddress, dtype, B, Sk, Hkv, headDim);
        p.dv = Dense(DvAddress, dtype, B, Sk, Hkv, headDim);
        return p;
    }

    /// <summary>Dense packed [total, H, D] tensor descriptor of a variable-length batch.</summary>
    public static FaTensor Packed(nint data, FaDtype dtype, long total, long h, long d)
    {
        FaTensor t = default;
        t.data = data;
        t.dtype = (int)dtype;
        t.rank = 3;
        t.shape[0] = total;
        t.shape[1] = h;
        t.shape[2] = d;
        t.strides[2] = 1;
        t.strides[1] = d;
        t.strides[0] = h * d;
        return t;
    }

    /// <summary>Dense fp32 [H, total_q] log-sum-exp descriptor of a variable-length batch.</summary>
    public static FaTensor PackedLse(nint data, long h, long totalQ)
    {
        FaTensor t = default;
        t.data = data;
        t.dtype = (int)FaDtype.Float32;
        t.rank = 2;
        t.shape[0] = h;
        t.shape[1] = totalQ;
        t.strides[1] = 1;
        t.strides[0] = totalQ;
        return t;
    }

    /// <summary>Query and key lengths of the variable-length batch <see cref="ValidVarlen"/> describes (an empty sequence inside).</summary>
    public static readonly int[] VarlenCuQ = [0, 5, 5, 17];

    /// <summary>See <see cref="VarlenCuQ"/>.</summary>
    public static readonly int[] VarlenCuK = [0, 9, 12, 33];

    /// <summary>
    /// A variable-length params struct over the batch of <see cref="VarlenCuQ"/>/<see cref="VarlenCuK"/> (device
    /// arrays at fake addresses; the host copies point into the given pinned arrays, which must outlive the check).
    /// </summary>
    public static FaBackwardParams ValidVarlen(int* hostQ, int* hostK, int headDim = 64, FaDtype dtype = FaDtype.Bfloat16)
    {
        FaBackwardParams p = Valid(headDim, dtype);
        long totalQ = VarlenCuQ[^1], totalK = VarlenCuK[^1];
        p.q = Packed(QAddress, dtype, totalQ, Hq, headDim);
        p.k = Packed(KAddress, dtype, totalK, Hkv, headDim);
        p.v = Packed(VAddress, dtype, totalK, Hkv, headDim);
        p.@out = Packed(OutAddress, dtype, totalQ, Hq, headDim);
        p.dout = Packed(DOutAddress, dtype, totalQ, Hq, headDim);
        p.lse = PackedLse(LseAddress, Hq, totalQ);
        p.dq = Packed(DqAddress, dtype, totalQ, Hq, headDim);
        p.dk = Packed(DkAddress, dtype, totalK, Hkv, headDim);
        p.dv = Packed(DvAddress, dtype, totalK, Hkv, headDim);
        p.cu_seqlens_q = (int*)CuQAddress;
        p.cu_seqlens_k = (int*)CuKAddress;
        p.cu_seqlens_q_host = hostQ;
        p.cu_seqlens_k_host = hostK;
        p.varlen_batch = VarlenCuQ.Length - 1;
        p.max_seqlen_q = 12;
        p.max_seqlen_k = 21;
        return p;
    }

    /// <summary>Runs fa_backward_check and returns the status and this thread's message.</summary>
    public static (FaStatus Status, string Message) Check(FaBackwardParams p, int computeCapability = 0)
    {
        FaStatus status = NativeMethods.fa_backward_check(&p, computeCapability);
        return (status, NativeLib.LastError());
    }
}
