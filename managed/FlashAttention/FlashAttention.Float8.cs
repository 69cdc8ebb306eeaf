namespace FlashAttn;

/// <content>
/// The fp8 (e4m3) forward's managed checks: the dtype combination (q, k and v Float8E4M3 together, a BFloat16 output),
/// the head dim (a multiple of 16) and the descale factor tables (Float32 <c>[batch, headsKv]</c>, fp8 only).
/// </content>
/// <remarks>
/// FlashAttention-3's fp8 forward (FEATURES.md §6), served by the sm90 kernels: the true inputs are
/// <c>q · QDescale[b, h / (headsQ / headsKv)]</c>, <c>k · KDescale[b, hk]</c> and <c>v · VDescale[b, hk]</c>; scores,
/// soft-cap, masks, softmax and log-sum-exp are those of the true values; the output is bf16. What only the native
/// library can judge (a build or GPU without the fp8 kernels, <see cref="KernelPath.Sm80"/>, the backward pass, an fp8
/// query to decode) comes back as <see cref="FlashAttentionStatus.Unsupported"/> with its reason.
/// </remarks>
public sealed partial class FlashAttention
{
    /// <summary>
    /// Whether any of these tensors is Float8E4M3: the inputs of the backward pass, which has no fp8 and which the native
    /// library refuses as <see cref="FlashAttentionStatus.Unsupported"/> right after its struct checks, so the managed side
    /// leaves them to it (its own checks would report the dtype combination as a wrong argument instead). Decode does the
    /// same with an fp8 query (its fp8 KV cache, under 16-bit queries, is served).
    /// </summary>
    private static bool IsFloat8Input(DeviceTensor? a, DeviceTensor? b, DeviceTensor? c) =>
        a?.DataType == DataType.Float8E4M3 || b?.DataType == DataType.Float8E4M3 || c?.DataType == DataType.Float8E4M3;

    /// <summary>
    /// The output's dtype: q's for Float16 and BFloat16; BFloat16 for a Float8E4M3 q (the fp8 forward writes bf16, as
    /// FlashAttention-3's does). Null when it is right.
    /// </summary>
    private static Problem? OutputDataTypeProblem(DeviceTensor output, DeviceTensor q)
    {
        if (q.DataType != DataType.Float8E4M3)
        {
            return DataTypeProblem(output, nameof(output), q, "q, k, v and output");
        }

        return output.DataType == DataType.BFloat16
            ? null
            : new Problem(nameof(output), $"output must be BFloat16 when q, k and v are Float8E4M3 (the fp8 forward writes bf16); it is {output}.");
    }

    /// <summary>Why a Float8E4M3 head dim is refused (the fp8 kernels need multiples of 16), or null.</summary>
    private static string? Float8HeadDimProblem(DataType dtype, long dim) =>
        dtype != DataType.Float8E4M3 || dim % 16 == 0
            ? null
            : $"head_dim must be a multiple of 16 for Float8E4M3 inputs (the fp8 kernels read 16-element rows); q has head_dim {dim}.";

    /// <summary>
    /// The descale factor tables of <paramref name="args"/>: none unless q is Float8E4M3, and each given one Float32,
    /// rank 2 <c>[batch, headsKv]</c> (<paramref name="batch"/> is the number of sequences of a variable-length batch), on
    /// this instance's device. Null when they pass.
    /// </summary>
    private static Problem? DescaleProblems(in AttentionArguments args, long batch, long headsKv, CudaDevice? device)
    {
        if (!args.HasDescale)
        {
            return null;
        }

        if (args.Q.DataType != DataType.Float8E4M3)
        {
            string given = args.QDescale is not null ? "qDescale" : args.KDescale is not null ? "kDescale" : "vDescale";
            return new Problem(given, $"{given} is given but q is {args.Q.DataType}: descale factors belong to Float8E4M3 inputs only.");
        }

        return DescaleProblem(args.QDescale, "qDescale", batch, headsKv, args.IsVariableLength, device) ??
            DescaleProblem(args.KDescale, "kDescale", batch, headsKv, args.IsVariableLength, device) ??
            DescaleProblem(args.VDescale, "vDescale", batch, headsKv, args.IsVariableLength, device);
    }

    private static Problem? DescaleProblem(DeviceTensor? t, string name, long batch, long headsKv, bool varlen, CudaDevice? device)
    {
        if (t is null)
        {
            return null;
        }

        if (t.DataType != DataType.Float32)
        {
            return new Problem(name, $"{name} must be Float32; it is {t}.");
        }

        if (t.Rank != 2 || t.Shape[0] != batch || t.Shape[1] != headsKv)
        {
            string rows = varlen ? $"sequences={batch}" : $"batch={batch}";
            return new Problem(
                name,
                $"{name} must be [{rows}, heads_kv={headsKv}] (one factor per sequence and KV head; strides 0 broadcast one value); it is {t}.");
        }

        return device is not null && t.Device is not null && t.Device.Ordinal != device.Ordinal
            ? new Problem(name, $"{name} lives on cuda:{t.Device.Ordinal} but this FlashAttention runs on cuda:{device.Ordinal}.")
            : null;
    }
}
