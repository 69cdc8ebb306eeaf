using System.Globalization;
using NUnit.Framework;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// The forward's kernel-path contract, as the Gpu tests check it. <see cref="KernelPath.Sm80"/> serves the forward on
/// every GPU the library runs on. <see cref="KernelPath.Sm90"/> serves it, for every head dim the build serves, exactly
/// where the build has sm_90a code (FA_CUDA_ARCHS contains 90a; the library then lists <c>sm90_</c> kernels) and the GPU
/// is compute capability 9.0; anywhere else it is UNSUPPORTED with a reason that names FA_PATH_SM90.
/// <see cref="KernelPath.Auto"/> takes Sm90 where it serves and Sm80 elsewhere. A V head dim other than q's (C ABI 0.10)
/// has its own contract: Sm80 serves the pairs (192, 128) and (64, 512) on every GPU; Sm90 serves both without dropout
/// on compute capability 9.0 where the library lists their <c>sm90_fwd_*_hdim&lt;D&gt;v&lt;DV&gt;_*</c> kernels, and
/// nothing else (<see cref="Sm90ServesValuePair"/>, <see cref="ResolveValuePair"/>). Kernel names are
/// <c>&lt;path&gt;_fwd_&lt;dtype&gt;_hdim&lt;kernel head dim&gt;_...</c>; a head dim without its own kernel runs the
/// smallest larger one of its path (the sm90 forward has kernel classes 64, 128, 192 and 256; fp8 128 and 256).
/// </summary>
internal static class ForwardPaths
{
    /// <summary>Whether the loaded library has sm_90a code (any <c>sm90_</c> kernel: the backward's exist in every such build).</summary>
    public static bool BuildHasSm90a => FlashAttention.CompiledKernels.Any(n => n.StartsWith("sm90_", StringComparison.Ordinal));

    /// <summary>
    /// Whether the loaded library has the sm90 fp8 (e4m3) forward kernels (any <c>sm90_fwd_e4m3_</c> kernel): a build
    /// with sm_90a code may still lack them (a build from before they were verified on the GPU), and then refuses fp8.
    /// </summary>
    public static bool BuildHasFp8Forward =>
        FlashAttention.CompiledKernels.Any(n => n.StartsWith("sm90_fwd_e4m3_", StringComparison.Ordinal));

    /// <summary>Whether <see cref="KernelPath.Sm90"/> must serve the forward on <paramref name="device"/>.</summary>
    public static bool Sm90ServesForward(CudaDevice device) => device.ComputeCapabilityCode == 90 && BuildHasSm90a;

    /// <summary>Whether a forward asked for on <paramref name="path"/> must run on <paramref name="device"/> (else UNSUPPORTED).</summary>
    public static bool Serves(KernelPath path, CudaDevice device) => path != KernelPath.Sm90 || Sm90ServesForward(device);

    /// <summary>The path whose kernels a call on <paramref name="path"/> must run: Auto resolved for the device.</summary>
    public static KernelPath Resolve(KernelPath path, CudaDevice device) =>
        path != KernelPath.Auto ? path : Sm90ServesForward(device) ? KernelPath.Sm90 : KernelPath.Sm80;

    public static string Tag(KernelPath path) => path == KernelPath.Sm90 ? "sm90" : "sm80";

    public static string DtypeTag(DataType dtype) => dtype switch
    {
        DataType.Float16 => "fp16",
        DataType.Float8E4M3 => "e4m3",
        _ => "bf16",
    };

    /// <summary>
    /// The kernel head dim that serves <paramref name="headDim"/> on <paramref name="path"/> (Auto resolved first): the
    /// smallest <c>hdimN</c>, N &gt;= head dim, among the library's forward kernels of that path and dtype; null when
    /// the library has none.
    /// </summary>
    public static int? KernelHeadDim(KernelPath path, DataType dtype, int headDim)
    {
        string prefix = $"{Tag(path)}_fwd_";
        string dt = $"_{DtypeTag(dtype)}_";
        int? best = null;
        foreach (string name in FlashAttention.CompiledKernels)
        {
            if (!name.StartsWith(prefix, StringComparison.Ordinal) || !name.Contains(dt, StringComparison.Ordinal) ||
                HeadDimOf(name) is not { } n || n < headDim)
            {
                continue;
            }

            best = best is { } b ? Math.Min(b, n) : n;
        }

        return best;
    }

    /// <summary>The N of a kernel name's <c>_hdimN_</c>, or null.</summary>
    public static int? HeadDimOf(string kernel)
    {
        int at = kernel.IndexOf("_hdim", StringComparison.Ordinal);
        if (at < 0)
        {
            return null;
        }

        int start = at + "_hdim".Length, end = start;
        while (end < kernel.Length && char.IsAsciiDigit(kernel[end]))
        {
            end++;
        }

        return end > start ? int.Parse(kernel.AsSpan(start, end - start), CultureInfo.InvariantCulture) : null;
    }

    /// <summary>
    /// Asserts that the forward kernels <paramref name="ran"/> (at least one) are all of the family a call on
    /// <paramref name="path"/> must run on <paramref name="device"/>: compiled kernels named
    /// <c>&lt;path&gt;_fwd_</c> with the call's dtype and the kernel head dim that serves <paramref name="headDim"/>.
    /// </summary>
    public static void AssertRan(IReadOnlyList<string> ran, KernelPath path, CudaDevice device, DataType dtype, int headDim, string context)
    {
        KernelPath resolved = Resolve(path, device);
        int? kernelDim = KernelHeadDim(resolved, dtype, headDim);
        string want = $"{Tag(resolved)}_fwd_ {DtypeTag(dtype)} hdim{kernelDim?.ToString(CultureInfo.InvariantCulture) ?? "?"}";
        string where = $"{context}: path {path} on {device} (build has sm_90a code: {BuildHasSm90a}) must run {want} kernels";
        Assert.That(kernelDim, Is.Not.Null,
            $"{where}, but the library lists no {Tag(resolved)}_fwd_ {DtypeTag(dtype)} kernel for head dim {headDim} or larger");
        Assert.That(ran, Is.Not.Empty, $"{where}; no FA_LOG_DEBUG line named a forward kernel");
        foreach (string kernel in ran)
        {
            Assert.That(FlashAttention.CompiledKernels, Does.Contain(kernel), $"{where}; the log named {kernel}, which the library does not list");
            Assert.That(
                kernel.StartsWith($"{Tag(resolved)}_fwd_", StringComparison.Ordinal) &&
                kernel.Contains($"_{DtypeTag(dtype)}_", StringComparison.Ordinal) && HeadDimOf(kernel) == kernelDim,
                Is.True, $"{where}; {kernel} ran");
        }
    }

    /// <summary>
    /// The part of a kernel name that marks the kernels of a V head dim other than q's: <c>_hdim&lt;D&gt;v&lt;DV&gt;_</c>
    /// (native/kernels/registry.cu names them <c>sm80_fwd_&lt;dtype&gt;_hdim&lt;D&gt;v&lt;DV&gt;[_local][_softcap][_dropout]_&lt;tile&gt;</c>,
    /// <c>sm80_bwd_&lt;dtype&gt;_hdim192v128_...</c> and, in a build with sm_90a code,
    /// <c>sm90_fwd_&lt;dtype&gt;_hdim&lt;D&gt;v&lt;DV&gt;[_local][_softcap][_paged]_&lt;tile&gt;</c> and
    /// <c>sm90_bwd_&lt;dtype&gt;_hdim192v128_local[_softcap][_det]_&lt;tile&gt;</c>).
    /// </summary>
    public static string ValuePairTag(int headDim, int headDimV) =>
        $"_hdim{headDim.ToString(CultureInfo.InvariantCulture)}v{headDimV.ToString(CultureInfo.InvariantCulture)}_";

    /// <summary>
    /// Whether the loaded library lists sm90 kernels of <paramref name="pass"/> (forward or backward) for the pair
    /// (<paramref name="headDim"/>, <paramref name="headDimV"/>) (<c>sm90_fwd_*_hdim&lt;D&gt;v&lt;DV&gt;_*</c>,
    /// <c>sm90_bwd_*_hdim&lt;D&gt;v&lt;DV&gt;_*</c>): the forward's of both pairs and the backward's of (192, 128) in a build
    /// with sm_90a code and head dim D, never (64, 512)'s backward (Cpu/ValueHeadDimValidationTests checks the list
    /// follows that rule).
    /// </summary>
    public static bool BuildHasSm90ValuePair(int headDim, int headDimV, AttentionPass pass = AttentionPass.Forward)
    {
        string tag = ValuePairTag(headDim, headDimV);
        string prefix = pass == AttentionPass.Backward ? "sm90_bwd_" : "sm90_fwd_";
        return FlashAttention.CompiledKernels.Any(
            n => n.StartsWith(prefix, StringComparison.Ordinal) && n.Contains(tag, StringComparison.Ordinal));
    }

    /// <summary>
    /// Whether <see cref="KernelPath.Sm90"/> must serve a forward of the pair (<paramref name="headDim"/>,
    /// <paramref name="headDimV"/>) on <paramref name="device"/>: a compute capability 9.0 GPU, a library that lists the
    /// pair's sm90 forward kernels, and no dropout (the sm90 kernels have none).
    /// </summary>
    public static bool Sm90ServesValuePair(CudaDevice device, int headDim, int headDimV, bool dropout) =>
        device.ComputeCapabilityCode == 90 && !dropout && BuildHasSm90ValuePair(headDim, headDimV);

    /// <summary>
    /// The path whose kernels a pair's forward asked for on <paramref name="path"/> must run: <see cref="KernelPath.Auto"/>
    /// takes Sm90 where <see cref="Sm90ServesValuePair"/> says so, else Sm80.
    /// </summary>
    public static KernelPath ResolveValuePair(KernelPath path, CudaDevice device, int headDim, int headDimV, bool dropout) =>
        path != KernelPath.Auto ? path : Sm90ServesValuePair(device, headDim, headDimV, dropout) ? KernelPath.Sm90 : KernelPath.Sm80;

    /// <summary>
    /// Asserts that the forward kernels <paramref name="ran"/> (at least one) are all forward kernels of
    /// <paramref name="path"/> (Auto resolved by the caller, <see cref="ResolveValuePair"/>) for the pair
    /// (<paramref name="headDim"/>, <paramref name="headDimV"/>) in <paramref name="dtype"/>, listed by the library.
    /// </summary>
    public static void AssertRanValuePair(
        IReadOnlyList<string> ran, KernelPath path, DataType dtype, int headDim, int headDimV, string context)
    {
        Assert.That(path, Is.Not.EqualTo(KernelPath.Auto), $"{context}: resolve Auto before asking which kernels ran");
        string tag = ValuePairTag(headDim, headDimV);
        string want = $"{Tag(path)}_fwd_{DtypeTag(dtype)}{tag}";
        string where = $"{context}: a V head dim other than q's on path {path} must run {want}* kernels";
        Assert.That(FlashAttention.CompiledKernels.Any(n => n.StartsWith(want, StringComparison.Ordinal)), Is.True,
            $"{where}, but the library lists none");
        Assert.That(ran, Is.Not.Empty, $"{where}; no FA_LOG_DEBUG line named a forward kernel");
        foreach (string kernel in ran)
        {
            Assert.That(FlashAttention.CompiledKernels, Does.Contain(kernel), $"{where}; the log named {kernel}, which the library does not list");
            Assert.That(kernel.StartsWith(want, StringComparison.Ordinal), Is.True, $"{where}; {kernel} ran");
        }
    }

    /// <summary>
    /// The words a refusal of <see cref="KernelPath.Sm90"/> for the pair (<paramref name="headDim"/>,
    /// <paramref name="headDimV"/>) must contain besides FA_PATH_SM90, at compute capability <paramref name="cc"/> (0: any
    /// GPU), in the order native/src/dispatch.cpp checks: dropout (the sm90 kernels have none), a build without sm_90a
    /// code ("90a"), another compute capability ("compute capability 9.0"), then the pass: the sm90 backward serves
    /// (192, 128) only. Null where the rules serve the call (the forward of both pairs, (192, 128)'s backward), or where
    /// the build lacks the pair's sm90 kernels for another reason (no head dim D): FA_PATH_SM90 alone is asserted then.
    /// </summary>
    public static string? ValuePairSm90Refusal(AttentionPass pass, int headDim, int headDimV, int cc, bool dropout)
    {
        if (dropout)
        {
            return "dropout";
        }

        if (!BuildHasSm90a)
        {
            return "90a";
        }

        if (cc != 0 && cc != 90)
        {
            return "compute capability 9.0";
        }

        if ((headDim, headDimV) == (192, 128))
        {
            return null;
        }

        // Both of FlashAttention-3's pairs have sm90 forward kernels; the backward serves (192, 128) only (another pair
        // is refused before any path).
        return pass == AttentionPass.Backward ? "(192, 128) only" : null;
    }

    /// <summary>
    /// Asserts that a refusal of <see cref="KernelPath.Sm90"/> for a forward with a V head dim other than q's on
    /// <paramref name="device"/> is the contract's: UNSUPPORTED, naming FA_PATH_SM90 and the reason
    /// <see cref="ValuePairSm90Refusal"/> gives for the device, build and call.
    /// </summary>
    public static void AssertValueHeadDimSm90Refusal(
        FlashAttentionStatus status, string message, CudaDevice device, int headDim, int headDimV, bool dropout, string context)
    {
        string? reason = ValuePairSm90Refusal(AttentionPass.Forward, headDim, headDimV, device.ComputeCapabilityCode, dropout);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"{context}: {message}");
            Assert.That(message, Does.Contain("FA_PATH_SM90"), $"{context}: an Sm90 refusal names the path");
            if (reason is not null)
            {
                Assert.That(message, Does.Contain(reason), $"{context}: on {device} (build has sm_90a code: {BuildHasSm90a})");
            }
        }
    }

    /// <summary>
    /// Asserts that a refusal of <see cref="KernelPath.Sm90"/> is the contract's: UNSUPPORTED, naming FA_PATH_SM90, and
    /// on a compute capability 9.0 device (so the build lacks sm_90a code) naming 90a.
    /// </summary>
    public static void AssertSm90Refusal(FlashAttentionStatus status, string message, CudaDevice device, string context)
    {
        using (Assert.EnterMultipleScope())
        {
            Assert.That(status, Is.EqualTo(FlashAttentionStatus.Unsupported), $"{context}: {message}");
            Assert.That(message, Does.Contain("FA_PATH_SM90"), $"{context}: an Sm90 refusal names the path");
            if (device.ComputeCapabilityCode == 90)
            {
                Assert.That(message, Does.Contain("90a"), $"{context}: on {device} the build lacks sm_90a code, and the refusal says so");
            }
        }
    }
}
