using FlashAttn.Tests.TestSupport;
using Microsoft.Extensions.Logging;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>
/// The backward kernel against the float64 reference (<see cref="AttentionReference.Backward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, Span{double}, Span{double}, Span{double})"/>
/// and <see cref="AttentionReference.BackwardVarlen(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, int, AttentionOptions, Span{double}, Span{double}, Span{double})"/>), judged by <see cref="BackwardAcceptance"/>: per gradient, relative
/// L2 error no more than twice that of a same-dtype naive backward and under 2e-2 (bf16) / 4e-3 (fp16), every element
/// written and finite, structural zeros exact. O and the log-sum-exp fed to the backward come from our own forward;
/// the reference's q, k, v and dO are the exact 16-bit values given to the kernel; every case draws fresh random
/// inputs (never zero) and poisons the gradients with NaN first.
/// </summary>
[TestFixture]
[Category("Gpu")]
public sealed class BackwardAccuracyTests : AttentionTestBase
{
    /// <summary>The kernels the fixture's instance reports launching (the pair tests check which family ran).</summary>
    private KernelLog Kernels { get; } = new();

    private protected override ILogger? CreateLogger() => Kernels;

    private static string Name(DataType dtype) => dtype == DataType.Float16 ? "fp16" : "bf16";

    // ---- shapes and masks ---------------------------------------------------------------------------------------------

    private static readonly (int Sq, int Sk)[] SeqLens =
    [
        (1, 17), (17, 17), (113, 203), (203, 113), (128, 217), (3, 799), (1023, 3), (300, 300),
    ];

    private static readonly (int Hq, int Hkv)[] Heads = [(4, 4), (8, 2), (6, 1)];

    public static IEnumerable<TestCaseData> Cases()
    {
        int index = 0;
        foreach (var (sq, sk) in SeqLens)
        {
            var masks = sq == sk
                ? new[] { Mask.None, Mask.CausalBottomRight } // both alignments coincide when Sq == Sk
                : new[] { Mask.None, Mask.CausalBottomRight, Mask.CausalTopLeft };
            foreach (Mask mask in masks)
            {
                foreach (DataType dtype in new[] { DataType.Float16, DataType.BFloat16 })
                {
                    int d = index % 2 == 0 ? 64 : 128;
                    var (hq, hkv) = Heads[index++ % Heads.Length];
                    yield return new TestCaseData(dtype, new AttentionDims(2, sq, sk, hq, hkv, d), MaskSpec.From(mask), null)
                        .SetArgDisplayNames(Name(dtype), $"D{d}", $"Sq{sq}", $"Sk{sk}", $"Hq{hq}", $"Hkv{hkv}", mask.ToString());
                }
            }
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void GradientsMatchReference(DataType dtype, AttentionDims dims, MaskSpec mask, float? scale) =>
        RunAndJudge(dtype, dims, mask, scale);

    /// <summary>
    /// FlashAttention-3's backward pair of a V head dim other than q's, (192, 128) (C ABI 0.10; the sm80 kernels, and the
    /// sm90 ones on compute capability 9.0 in a build with sm_90a code): dq and dk over 192 columns, dv over 128, against
    /// the reference's gradients (AttentionShape.HeadDimV) by the same rule, on Auto, Sm80 and Sm90, both causal
    /// alignments with Sq &gt; Sk and Sq &lt; Sk (partial last query and key blocks, rows that see no key), a window with
    /// softcap, GQA, and the deterministic mode; the kernel that ran is the pair's of the path (Auto: sm90 where it
    /// serves). Ignored where the build lacks head dim 192, and Sm90 where that path does not serve (another GPU, a
    /// build without sm_90a code) after checking the refusal names FA_PATH_SM90.
    /// </summary>
    [TestCase(DataType.BFloat16, KernelPath.Auto, Mask.None, false)]
    [TestCase(DataType.Float16, KernelPath.Sm80, Mask.CausalBottomRight, false)]
    [TestCase(DataType.BFloat16, KernelPath.Sm80, Mask.CausalTopLeft, true)]
    [TestCase(DataType.Float16, KernelPath.Auto, Mask.CausalBottomRight, true)]
    [TestCase(DataType.BFloat16, KernelPath.Sm90, Mask.None, false)]
    [TestCase(DataType.Float16, KernelPath.Sm90, Mask.CausalTopLeft, false)]
    [TestCase(DataType.BFloat16, KernelPath.Sm90, Mask.CausalBottomRight, true)]
    [TestCase(DataType.Float16, KernelPath.Sm90, Mask.None, true)]
    public void ValueHeadDimPairMatchesReference(DataType dtype, KernelPath path, Mask mask, bool deterministic)
    {
        foreach (var (sq, sk) in new[] { (113, 203), (203, 113) })
        {
            var dims = new AttentionDims(2, sq, sk, 8, 2, 192) { HeadDimV = 128 };
            RunPairOnPath(dtype, dims, MaskSpec.From(mask), deterministic, path);
        }
    }

    [TestCase(KernelPath.Auto)]
    [TestCase(KernelPath.Sm80)]
    [TestCase(KernelPath.Sm90)]
    public void ValueHeadDimPairWithWindowAndSoftcapMatchesReference(KernelPath path)
    {
        var dims = new AttentionDims(1, 150, 150, 4, 4, 192) { HeadDimV = 128 };
        RunPairOnPath(DataType.BFloat16, dims, new MaskSpec(Causal: false, TopLeft: false, Left: 40, Right: 10, Softcap: 20f), false, path);
    }

    /// <summary>
    /// One backward of the (192, 128) pair on <paramref name="path"/>, judged against the reference; then the kernel the
    /// library reported is the pair's on the path that must have run (<see cref="KernelPath.Auto"/>: sm90 where
    /// <see cref="Sm90ServesPairBackward"/>), deterministic exactly when asked. Sm90 where it does not serve: the
    /// refusal names FA_PATH_SM90, then the test is ignored.
    /// </summary>
    private void RunPairOnPath(DataType dtype, AttentionDims dims, MaskSpec mask, bool deterministic, KernelPath path)
    {
        RequireServed(dtype, dims);
        bool sm90 = Sm90ServesPairBackward(dims);
        if (path == KernelPath.Sm90 && !sm90)
        {
            var ex = Assert.Throws<FlashAttentionException>(() => RunAndJudge(dtype, dims, mask, null, deterministic, path));
            Stream.Synchronize();
            Assert.That(ex!.Status, Is.EqualTo(FlashAttentionStatus.Unsupported), ex.Message);
            Assert.That(ex.Message, Does.Contain("FA_PATH_SM90"), "an Sm90 refusal names the path");
            Assert.Ignore($"kernel path Sm90 does not serve the pair's backward here ({Device}): {ex.Message}");
        }

        Kernels.Clear();
        RunAndJudge(dtype, dims, mask, null, deterministic, path);
        KernelPath ran = path == KernelPath.Auto ? (sm90 ? KernelPath.Sm90 : KernelPath.Sm80) : path;
        string want = $"{ForwardPaths.Tag(ran)}_bwd_{Name(dtype)}{ForwardPaths.ValuePairTag(dims.HeadDim, dims.HeadDimV)}";
        IReadOnlyList<string> kernels = Kernels.BackwardKernels;
        string where = $"{dims}, {mask}, path {path} on {Device} (build has sm_90a code: {ForwardPaths.BuildHasSm90a})";
        Assert.That(kernels, Is.Not.Empty, $"{where}: no FA_LOG_DEBUG line named a backward kernel");
        foreach (string kernel in kernels)
        {
            using (Assert.EnterMultipleScope())
            {
                Assert.That(kernel, Does.StartWith(want), $"{where}: {kernel} ran");
                Assert.That(kernel.Contains("_det_", StringComparison.Ordinal), Is.EqualTo(deterministic), $"{where}: {kernel} ran");
                Assert.That(FlashAttention.CompiledKernels, Does.Contain(kernel), $"{where}: the library does not list {kernel}");
            }
        }
    }

    /// <summary>
    /// Whether the sm90 backward must serve the pair of <paramref name="dims"/> here: a compute capability 9.0 device and
    /// a library that lists the pair's sm90 backward kernels.
    /// </summary>
    private bool Sm90ServesPairBackward(AttentionDims dims) =>
        Device.ComputeCapabilityCode == 90 && ForwardPaths.BuildHasSm90ValuePair(dims.HeadDim, dims.HeadDimV, AttentionPass.Backward);

    /// <summary>
    /// Every head dim the issue names: those with their own kernel (32, 64, 96, 128, 192, 256) and those padded up to
    /// the next one (8, 80). A dim this build does not serve (CheckBackward says Unsupported) is reported as ignored.
    /// </summary>
    [TestCase(DataType.BFloat16, 8)]
    [TestCase(DataType.Float16, 32)]
    [TestCase(DataType.BFloat16, 64)]
    [TestCase(DataType.Float16, 80)]
    [TestCase(DataType.BFloat16, 96)]
    [TestCase(DataType.Float16, 128)]
    [TestCase(DataType.BFloat16, 192)]
    [TestCase(DataType.Float16, 256)]
    [TestCase(DataType.BFloat16, 256)]
    public void EveryHeadDimMatchesReference(DataType dtype, int headDim)
    {
        var dims = new AttentionDims(2, 113, 203, 8, 2, headDim);
        RequireServed(dtype, dims);
        RunAndJudge(dtype, dims, MaskSpec.From(Mask.CausalBottomRight), scale: null);
    }

    /// <summary>
    /// Each kernel path asked for by name. On an H100 with an sm_90a build <see cref="KernelPath.Auto"/> runs the wgmma
    /// kernels at head dims 64, 128, 192 and 256, so the Sm80 cases keep the portable kernels checked there too; the Sm90 cases are ignored (with the library's reason) where that path does not serve: other GPUs,
    /// builds without sm_90a code. Head dims between its kernels (40, 96, 112, 160, 200) run the next one up with
    /// zero-filled columns. On a compute capability 9.0 GPU whose
    /// library lists the sm90 kernel of the case, an UNSUPPORTED is a failure, never an ignore.
    /// </summary>
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 64, Mask.CausalBottomRight, false)]
    [TestCase(KernelPath.Sm80, DataType.Float16, 128, Mask.None, false)]
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 256, Mask.CausalTopLeft, false)]
    [TestCase(KernelPath.Sm80, DataType.BFloat16, 128, Mask.CausalBottomRight, true)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 40, Mask.None, false)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 64, Mask.CausalBottomRight, false)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 112, Mask.CausalTopLeft, false)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 128, Mask.CausalBottomRight, true)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 200, Mask.None, false)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 256, Mask.CausalBottomRight, false)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 256, Mask.None, true)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 96, Mask.None, false)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 96, Mask.CausalTopLeft, true)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 160, Mask.CausalBottomRight, false)]
    [TestCase(KernelPath.Sm90, DataType.BFloat16, 192, Mask.None, false)]
    [TestCase(KernelPath.Sm90, DataType.Float16, 192, Mask.CausalBottomRight, true)]
    public void EachKernelPathMatchesReference(KernelPath path, DataType dtype, int headDim, Mask mask, bool deterministic)
    {
        var dims = new AttentionDims(2, 203, 331, 8, 2, headDim);
        RequireServed(dtype, dims);
        try
        {
            RunAndJudge(dtype, dims, MaskSpec.From(mask), scale: null, deterministic, path);
        }
        catch (FlashAttentionException ex) when (path == KernelPath.Sm90 && ex.Status == FlashAttentionStatus.Unsupported)
        {
            Assert.That(ex.Message, Does.Contain("FA_PATH_SM90"), "an Sm90 refusal names the path");
            if (Sm90KernelFor(dtype, headDim, deterministic) is { } kernel)
            {
                Assert.Fail($"kernel path Sm90 refused a case it serves: {Device} is compute capability 9.0 and the library has " +
                    $"{kernel} for head dim {headDim}, yet the call came back UNSUPPORTED: {ex.Message}");
            }

            Assert.Ignore($"kernel path Sm90 does not serve this case here: {ex.Message}");
        }
    }

    /// <summary>
    /// On a compute capability 9.0 device, the library's sm90 backward kernel that serves <paramref name="headDim"/>
    /// (the smallest compiled head dim at or above it, as the library pads; a deterministic one when asked), read from
    /// <see cref="FlashAttention.CompiledKernels"/> (names <c>sm90_bwd_bf16_hdim128_...</c>); null where there is none
    /// (another GPU, a build without sm_90a code, a head dim the path does not serve), the only places an Sm90
    /// UNSUPPORTED may be ignored.
    /// </summary>
    private string? Sm90KernelFor(DataType dtype, int headDim, bool deterministic)
    {
        IReadOnlyList<string> kernels = FlashAttention.CompiledKernels;
        if (Device.ComputeCapabilityCode != 90 || !kernels.Any(n => n.StartsWith("sm90_", StringComparison.Ordinal)))
        {
            return null;
        }

        string dt = Name(dtype);
        int[] HeadDims(string prefix) =>
            kernels.Where(n => n.StartsWith(prefix, StringComparison.Ordinal)).Select(ForwardPaths.HeadDimOf).OfType<int>().ToArray();
        int[] compiled = HeadDims($"sm80_bwd_{dt}_hdim").Where(d => d >= headDim).ToArray();
        if (compiled.Length == 0)
        {
            return null;
        }

        // The sm90 backward runs the smallest of its kernels at least as wide as the sm80 kernel head dim (96 on the
        // 128 kernel, 160 on the 192 one).
        int[] sm90 = HeadDims($"sm90_bwd_{dt}_hdim").Where(d => d >= compiled.Min()).ToArray();
        if (sm90.Length == 0)
        {
            return null;
        }

        string prefix = $"sm90_bwd_{dt}_hdim{sm90.Min()}_";
        return kernels.FirstOrDefault(n => n.StartsWith(prefix, StringComparison.Ordinal) && (!deterministic || n.Contains("_det_", StringComparison.Ordinal)));
    }

    /// <summary>GQA ratios 1, 2, 4, 8 and 32 (MQA): dk and dv sum the gradients of every query head of their group.</summary>
    [TestCase(DataType.BFloat16, 4, 4, Mask.CausalBottomRight)]
    [TestCase(DataType.Float16, 8, 4, Mask.None)]
    [TestCase(DataType.BFloat16, 8, 2, Mask.CausalTopLeft)]
    [TestCase(DataType.Float16, 16, 2, Mask.CausalBottomRight)]
    [TestCase(DataType.BFloat16, 32, 1, Mask.CausalBottomRight)]
    [TestCase(DataType.Float16, 32, 1, Mask.None)]
    public void GqaRatiosMatchReference(DataType dtype, int hq, int hkv, Mask mask) =>
        RunAndJudge(dtype, new AttentionDims(1, 177, 333, hq, hkv, hq / hkv % 2 == 0 ? 64 : 128), MaskSpec.From(mask), scale: null);

    public static IEnumerable<TestCaseData> WindowSoftcapScaleCases()
    {
        TestCaseData Case(DataType dtype, int d, int sq, int sk, int hq, int hkv, MaskSpec spec, float? scale = null) =>
            new TestCaseData(dtype, new AttentionDims(2, sq, sk, hq, hkv, d), spec, scale)
                .SetArgDisplayNames(Name(dtype), $"D{d}", $"Sq{sq}", $"Sk{sk}", $"Hq{hq}", $"Hkv{hkv}", spec.ToString(), $"scale {scale?.ToString() ?? "default"}");

        yield return Case(DataType.BFloat16, 128, 511, 511, 8, 2, new MaskSpec(true, false, Left: 255));
        yield return Case(DataType.Float16, 64, 113, 203, 4, 4, new MaskSpec(false, false, Left: 32, Right: 16));
        yield return Case(DataType.BFloat16, 64, 217, 128, 6, 1, new MaskSpec(false, true, Left: 7, Right: 3));
        yield return Case(DataType.Float16, 128, 128, 217, 8, 2, new MaskSpec(false, false, Softcap: 30f));
        yield return Case(DataType.BFloat16, 128, 217, 128, 4, 4, new MaskSpec(true, false, Left: 7, Softcap: 50f));
        yield return Case(DataType.BFloat16, 64, 1, 1023, 8, 2, new MaskSpec(false, false, Left: 100, Right: 0));
        yield return Case(DataType.Float16, 64, 77, 150, 8, 2, new MaskSpec(true, true), scale: 0.37f);
        yield return Case(DataType.BFloat16, 128, 77, 150, 8, 2, new MaskSpec(true, false), scale: 0.05f);
        yield return Case(DataType.BFloat16, 64, 150, 77, 4, 2, new MaskSpec(false, false, Softcap: 5f), scale: 1.0f);
    }

    [TestCaseSource(nameof(WindowSoftcapScaleCases))]
    public void WindowSoftcapAndScaleMatchReference(DataType dtype, AttentionDims dims, MaskSpec mask, float? scale) =>
        RunAndJudge(dtype, dims, mask, scale);

    // ---- deterministic mode ---------------------------------------------------------------------------------------------

    /// <summary>
    /// Deterministic mode gives bit-for-bit identical dq, dk and dv over two runs (many key blocks feed each dq row, and
    /// GQA heads feed each dk/dv row), within the accuracy rule; the default (atomic) mode on the same inputs is within
    /// the rule too.
    /// </summary>
    [TestCase(DataType.BFloat16, 2, 777, 777, 8, 2, 128, true)]
    [TestCase(DataType.Float16, 1, 300, 1500, 4, 1, 64, false)]
    public void DeterministicModeIsBitForBitReproducible(DataType dtype, int b, int sq, int sk, int hq, int hkv, int d, bool causal)
    {
        var dims = new AttentionDims(b, sq, sk, hq, hkv, d);
        var mask = new MaskSpec(causal, false);
        Random random = TestRandom.ForCurrentTest(out int seed);
        AttentionOptions deterministic = mask.ToOptions() with { Deterministic = true };
        using BackwardRun run = BackwardRun.Create(Device, dims, dtype, random);
        run.Forward(Attention, deterministic, Stream);

        run.Backward(Attention, deterministic, Stream);
        byte[] first = run.GradientBytes();
        var (dq, dk, dv) = run.ReadGradients();
        run.Backward(Attention, deterministic, Stream);
        byte[] second = run.GradientBytes();

        string context = $"seed {seed}, {Name(dtype)}, {dims}, {mask}";
        int firstDiff = FirstDifference(first, second);
        Assert.That(firstDiff, Is.EqualTo(-1), $"{context}: deterministic runs differ first at byte {firstDiff} of dq|dk|dv");
        float scale = (float)dims.DefaultScale;
        Assert.That(run.Judge(dq, dk, dv, deterministic, mask, scale), Is.Empty, context + ", deterministic");

        AttentionOptions atomic = deterministic with { Deterministic = false };
        run.Backward(Attention, atomic, Stream);
        var (aq, ak, av) = run.ReadGradients();
        Assert.That(run.Judge(aq, ak, av, atomic, mask, scale), Is.Empty, context + ", default (atomic) mode");
    }

    // ---- workspace ------------------------------------------------------------------------------------------------------

    /// <summary>
    /// A caller workspace of GetBackwardWorkspaceSize bytes, filled with garbage first (the library must initialise what it
    /// uses), gives bit-for-bit the result of a library-allocated one in deterministic mode, also when reused; in the
    /// default mode it meets the accuracy rule.
    /// </summary>
    [Test]
    public void CallerWorkspaceMatchesLibraryWorkspace()
    {
        var dims = new AttentionDims(2, 300, 400, 8, 2, 64);
        var mask = new MaskSpec(true, false);
        const DataType dtype = DataType.BFloat16;
        Random random = TestRandom.ForCurrentTest(out int seed);
        AttentionOptions options = mask.ToOptions() with { Deterministic = true };
        using BackwardRun run = BackwardRun.Create(Device, dims, dtype, random);
        run.Forward(Attention, options, Stream);

        long bytes = Attention.GetBackwardWorkspaceSize(run.QT, run.KT, run.VT, run.OutT, run.DOutT, run.LseT, run.DqT, run.DkT, run.DvT, options);
        long atomicBytes = Attention.GetBackwardWorkspaceSize(
            run.QT, run.KT, run.VT, run.OutT, run.DOutT, run.LseT, run.DqT, run.DkT, run.DvT, options with { Deterministic = false });
        Assert.That(bytes, Is.GreaterThan(0), "the backward pass needs scratch memory (its fp32 dq accumulator)");
        TestContext.Out.WriteLine($"workspace: {bytes} bytes deterministic, {atomicBytes} bytes default");
        using var workspace = new DeviceBuffer<byte>(Device, bytes);
        workspace.Fill(0xA5);

        run.Backward(Attention, options, Stream);
        byte[] library = run.GradientBytes();
        run.Backward(Attention, options, Stream, workspace);
        byte[] caller = run.GradientBytes();
        run.Backward(Attention, options, Stream, workspace);
        byte[] reused = run.GradientBytes();
        string context = $"seed {seed}, {dims}, {mask}";
        Assert.Multiple(() =>
        {
            Assert.That(FirstDifference(library, caller), Is.EqualTo(-1), context + ": caller workspace differs from the library's");
            Assert.That(FirstDifference(library, reused), Is.EqualTo(-1), context + ": a reused caller workspace changes the result");
        });

        AttentionOptions atomic = options with { Deterministic = false };
        using var atomicWorkspace = new DeviceBuffer<byte>(Device, atomicBytes);
        atomicWorkspace.Fill(0xA5);
        run.Backward(Attention, atomic, Stream, atomicWorkspace);
        var (dq, dk, dv) = run.ReadGradients();
        Assert.That(run.Judge(dq, dk, dv, atomic, mask, (float)dims.DefaultScale), Is.Empty, context + ", default mode with a caller workspace");
    }

    /// <summary>A workspace smaller than needed is refused with a message naming it, before anything runs.</summary>
    [TestCase(false)]
    [TestCase(true)]
    public void TooSmallWorkspaceIsRefused(bool deterministic)
    {
        var dims = new AttentionDims(1, 200, 260, 4, 2, 64);
        AttentionOptions options = new MaskSpec(true, false).ToOptions() with { Deterministic = deterministic };
        Random random = TestRandom.ForCurrentTest(out _);
        using BackwardRun run = BackwardRun.Create(Device, dims, DataType.BFloat16, random);
        run.Forward(Attention, options, Stream);
        long bytes = Attention.GetBackwardWorkspaceSize(run.QT, run.KT, run.VT, run.OutT, run.DOutT, run.LseT, run.DqT, run.DkT, run.DvT, options);
        Assume.That(bytes, Is.GreaterThan(1), "this call needs no workspace to be too small for");
        using var workspace = new DeviceBuffer<byte>(Device, Math.Max(1, bytes - 256));

        run.PoisonGradients();
        var ex = Assert.Throws<FlashAttentionException>(() =>
            Attention.Backward(run.QT, run.KT, run.VT, run.OutT, run.DOutT, run.LseT, run.DqT, run.DkT, run.DvT, options, Stream, workspace));
        Stream.Synchronize();
        Assert.Multiple(() =>
        {
            Assert.That(ex!.Status, Is.EqualTo(FlashAttentionStatus.InvalidArgument));
            Assert.That(ex.Message, Does.Contain("workspace"));
            Assert.That(ex.NativeMessage, Does.Contain("workspace"));
            Assert.That(run.DDq.Read().All(float.IsNaN), Is.True, "a refused call must not write dq");
            Assert.That(run.DDk.Read().All(float.IsNaN), Is.True, "a refused call must not write dk");
        });
    }

    /// <summary>With a caller workspace the backward is captured into a CUDA graph without running, and each replay computes it.</summary>
    [Test]
    public void GraphCaptureWithCallerWorkspace()
    {
        var dims = new AttentionDims(2, 190, 250, 8, 2, 128);
        var mask = new MaskSpec(true, false, Left: 64);
        AttentionOptions options = mask.ToOptions() with { Deterministic = true };
        Random random = TestRandom.ForCurrentTest(out int seed);
        using BackwardRun run = BackwardRun.Create(Device, dims, DataType.BFloat16, random);
        run.Forward(Attention, options, Stream);
        var args = new BackwardArguments(run.QT, run.KT, run.VT, run.OutT, run.DOutT, run.LseT, run.DqT, run.DkT, run.DvT);
        long bytes = Attention.GetBackwardWorkspaceSize(args, options);
        using var workspace = new DeviceBuffer<byte>(Device, Math.Max(bytes, 1));
        run.PoisonGradients();
        Stream.Synchronize();

        // Captured through the record form; the direct call it is compared with below is the positional one.
        Stream.BeginCapture();
        Attention.Backward(args with { Workspace = workspace }, options, Stream);
        using CudaGraph graph = Stream.EndCapture();
        Stream.Synchronize();
        Assert.That(run.DDq.Read().All(float.IsNaN), Is.True, "capturing must not run the backward");

        run.Backward(Attention, options, Stream);
        byte[] direct = run.GradientBytes();
        for (int replay = 1; replay <= 2; replay++)
        {
            run.PoisonGradients();
            graph.Launch(Stream);
            Stream.Synchronize();
            Assert.That(FirstDifference(direct, run.GradientBytes()), Is.EqualTo(-1), $"seed {seed}: replay {replay} differs from a direct call");
        }

        var (dq, dk, dv) = run.ReadGradients();
        Assert.That(run.Judge(dq, dk, dv, options, mask, (float)dims.DefaultScale), Is.Empty, $"seed {seed}, {dims}, {mask}, graph replay");
    }

    // ---- inputs, arguments ------------------------------------------------------------------------------------------------

    /// <summary>The backward reads q, k, v, O, dO and the log-sum-exp and writes nothing else.</summary>
    [Test]
    public void BackwardLeavesItsInputsUnchanged()
    {
        var dims = new AttentionDims(2, 129, 257, 8, 4, 64);
        AttentionOptions options = new MaskSpec(true, true).ToOptions();
        Random random = TestRandom.ForCurrentTest(out _);
        using BackwardRun run = BackwardRun.Create(Device, dims, DataType.Float16, random);
        run.Forward(Attention, options, Stream);
        DeviceArray[] inputs = [run.DQIn, run.DKIn, run.DVIn, run.DOutput, run.DDOut, run.DLse];
        byte[][] before = [.. inputs.Select(a => a.ReadBytes())];
        run.Backward(Attention, options, Stream);
        Assert.Multiple(() =>
        {
            string[] names = ["q", "k", "v", "out", "dOut", "lse"];
            for (int i = 0; i < inputs.Length; i++)
            {
                Assert.That(FirstDifference(before[i], inputs[i].ReadBytes()), Is.EqualTo(-1), $"{names[i]} was modified by the backward");
            }
        });
    }

    [Test]
    public void MismatchedGradientShapesThrowArgumentException()
    {
        var dims = new AttentionDims(1, 64, 64, 4, 2, 64);
        Random random = TestRandom.ForCurrentTest(out _);
        using BackwardRun run = BackwardRun.Create(Device, dims, DataType.BFloat16, random);
        DeviceTensor dkLikeQ = run.DDq.Tensor([1, 64, 4, 64]);
        Assert.Multiple(() =>
        {
            Assert.That(
                () => Attention.Backward(run.QT, run.KT, run.VT, run.OutT, run.DOutT, run.LseT, run.DqT, dkLikeQ, run.DvT, stream: Stream),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("dk"));
            Assert.That(
                () => Attention.Backward(run.QT, run.KT, run.VT, run.OutT, run.DOutT, run.LseT, run.DkT, run.DkT, run.DvT, stream: Stream),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("dq"));

            // The record forms check the same things in the same place.
            var args = new BackwardArguments(run.QT, run.KT, run.VT, run.OutT, run.DOutT, run.LseT, run.DqT, run.DkT, run.DvT);
            Assert.That(() => Attention.Backward(args with { DK = dkLikeQ }, stream: Stream),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("dk"));
            Assert.That(() => Attention.GetBackwardWorkspaceSize(args with { DQ = run.DkT }),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("dq"));
            Assert.That(() => Attention.Backward(args with { DOut = null! }, stream: Stream),
                Throws.ArgumentNullException.With.Property("ParamName").EqualTo("dOut"));
            Assert.That(() => Attention.Backward(default(BackwardArguments), stream: Stream),
                Throws.ArgumentNullException.With.Property("ParamName").EqualTo("q"));
        });
    }

    // ---- variable-length batches --------------------------------------------------------------------------------------

    public static IEnumerable<TestCaseData> VarlenCases()
    {
        TestCaseData Case(DataType dtype, int d, int hq, int hkv, MaskSpec spec, bool deterministic, bool callerWorkspace) =>
            new TestCaseData(dtype, d, hq, hkv, spec, deterministic, callerWorkspace)
                .SetArgDisplayNames(Name(dtype), $"D{d}", $"Hq{hq}", $"Hkv{hkv}", spec.ToString(), deterministic ? "deterministic" : "atomic",
                    callerWorkspace ? "caller workspace" : "library workspace");

        yield return Case(DataType.BFloat16, 64, 8, 2, new MaskSpec(true, false), false, false);
        yield return Case(DataType.Float16, 128, 4, 4, new MaskSpec(false, false, Left: 16, Right: 8, Softcap: 20f), false, false);
        yield return Case(DataType.BFloat16, 128, 12, 4, new MaskSpec(true, true), true, true);
        yield return Case(DataType.Float16, 64, 32, 1, new MaskSpec(true, false, Left: 31), false, true);
    }

    /// <summary>
    /// A packed batch with an empty-query sequence, an empty-key sequence, a length-1 one and Sq != Sk, in buffers with
    /// spare rows past the last sequence: the gradients match the reference, the empty sequences' gradients are 0, and
    /// the spare rows of dq, dk and dv keep their poison (the spare rows of O and dO hold NaN, which must not leak in).
    /// </summary>
    [TestCaseSource(nameof(VarlenCases))]
    public void VarlenGradientsMatchReference(DataType dtype, int headDim, int hq, int hkv, MaskSpec mask, bool deterministic, bool callerWorkspace)
    {
        int[] lensQ = [37, 0, 64, 1, 90, 5];
        int[] lensK = [50, 20, 64, 0, 33, 5];
        const int padQ = 5, padK = 3;
        int totalQ = lensQ.Sum(), totalK = lensK.Sum();
        int rowsQ = totalQ + padQ, rowsK = totalK + padK;
        int qRow = hq * headDim, kRow = hkv * headDim;
        AttentionOptions options = mask.ToOptions() with { Deterministic = deterministic };
        Random random = TestRandom.ForCurrentTest(out int seed);

        float[] q = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, rowsQ * qRow));
        float[] k = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, rowsK * kRow));
        float[] v = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, rowsK * kRow));
        float[] dOut = ForwardRun.RoundAll(dtype, TestRandom.Normal(random, rowsQ * qRow));
        Array.Fill(dOut, float.NaN, totalQ * qRow, padQ * qRow); // spare rows: never part of a sequence

        using VarlenBatch batch = VarlenBatch.FromLengths(Device, lensQ, lensK, Stream);
        using DeviceArray dq0 = DeviceArray.Upload(Device, dtype, q), dk0 = DeviceArray.Upload(Device, dtype, k), dv0 = DeviceArray.Upload(Device, dtype, v);
        using DeviceArray dDOut = DeviceArray.Upload(Device, dtype, dOut);
        using DeviceArray dO = DeviceArray.Allocate(Device, dtype, rowsQ * qRow), dLse = DeviceArray.Allocate(Device, DataType.Float32, hq * rowsQ);
        using DeviceArray gq = DeviceArray.Allocate(Device, dtype, rowsQ * qRow);
        using DeviceArray gk = DeviceArray.Allocate(Device, dtype, rowsK * kRow), gv = DeviceArray.Allocate(Device, dtype, rowsK * kRow);
        foreach (DeviceArray a in new[] { dO, dLse, gq, gk, gv })
        {
            a.Poison();
        }

        DeviceTensor qT = dq0.Tensor([rowsQ, hq, headDim]), kT = dk0.Tensor([rowsK, hkv, headDim]), vT = dv0.Tensor([rowsK, hkv, headDim]);
        DeviceTensor oT = dO.Tensor([rowsQ, hq, headDim]), dOutT = dDOut.Tensor([rowsQ, hq, headDim]), lseT = dLse.Tensor([hq, rowsQ]);
        DeviceTensor gqT = gq.Tensor([rowsQ, hq, headDim]), gkT = gk.Tensor([rowsK, hkv, headDim]), gvT = gv.Tensor([rowsK, hkv, headDim]);

        DeviceBuffer<byte>? workspace = null;
        try
        {
            if (callerWorkspace)
            {
                // The record forms (the cases without a caller workspace use the positional *Varlen methods).
                Attention.Forward(new AttentionArguments(qT, kT, vT, oT, lseT, batch), options, Stream);
                var args = new BackwardArguments(qT, kT, vT, oT, dOutT, lseT, gqT, gkT, gvT, batch);
                long bytes = Attention.GetBackwardWorkspaceSize(args, options);
                Assert.That(Attention.GetBackwardWorkspaceSizeVarlen(qT, kT, vT, oT, dOutT, lseT, gqT, gkT, gvT, batch, options), Is.EqualTo(bytes),
                    "the positional and record forms size the same workspace");
                workspace = new DeviceBuffer<byte>(Device, Math.Max(bytes, 1));
                workspace.Fill(0xA5, Stream);
                Attention.Backward(args with { Workspace = workspace }, options, Stream);
            }
            else
            {
                Attention.ForwardVarlen(qT, kT, vT, oT, batch, lseT, options, Stream);
                Attention.BackwardVarlen(qT, kT, vT, oT, dOutT, lseT, gqT, gkT, gvT, batch, options, Stream, workspace);
            }

            Stream.Synchronize();
        }
        finally
        {
            workspace?.Dispose();
        }

        string context = $"seed {seed}, {Name(dtype)}, lensQ [{string.Join(", ", lensQ)}], lensK [{string.Join(", ", lensK)}], Hq={hq} Hkv={hkv} D={headDim}, {mask}";

        // The spare rows past the last sequence keep their poison, byte for byte.
        byte[] gqBytes = gq.ReadBytes(), gkBytes = gk.ReadBytes(), gvBytes = gv.ReadBytes();
        Assert.Multiple(() =>
        {
            Assert.That(gqBytes.Skip(totalQ * qRow * 2).All(x => x == 0xFF), Is.True, context + ": dq rows past the last sequence were written");
            Assert.That(gkBytes.Skip(totalK * kRow * 2).All(x => x == 0xFF), Is.True, context + ": dk rows past the last sequence were written");
            Assert.That(gvBytes.Skip(totalK * kRow * 2).All(x => x == 0xFF), Is.True, context + ": dv rows past the last sequence were written");
        });

        float[] oursQ = gq.Read()[..(totalQ * qRow)], oursK = gk.Read()[..(totalK * kRow)], oursV = gv.Read()[..(totalK * kRow)];

        // Reference (float64) on the packed rows of the sequences only.
        var refQ = new double[totalQ * qRow];
        var refK = new double[totalK * kRow];
        var refV = new double[totalK * kRow];
        AttentionReference.BackwardVarlen(
            AttentionReference.ToDouble(q.AsSpan(0, totalQ * qRow)), AttentionReference.ToDouble(k.AsSpan(0, totalK * kRow)),
            AttentionReference.ToDouble(v.AsSpan(0, totalK * kRow)), AttentionReference.ToDouble(dOut.AsSpan(0, totalQ * qRow)),
            lensQ, lensK, hq, hkv, headDim, options, refQ, refK, refV);

        // Same-dtype naive, one sequence at a time; structural zeros per sequence.
        var naiveQ = new float[totalQ * qRow];
        var naiveK = new float[totalK * kRow];
        var naiveV = new float[totalK * kRow];
        var zeroQ = new bool[totalQ * hq];
        var zeroK = new bool[totalK * hkv];
        float scale = (float)(1.0 / Math.Sqrt(headDim));
        int startQ = 0, startK = 0;
        for (int s = 0; s < lensQ.Length; s++)
        {
            int lq = lensQ[s], lk = lensK[s];
            var dims = new AttentionDims(1, lq, lk, hq, hkv, headDim);
            for (int i = 0; i < lq; i++)
            {
                bool sees = Enumerable.Range(0, lk).Any(j => mask.Visible(i, j, lq, lk));
                for (int h = 0; h < hq; h++)
                {
                    zeroQ[((startQ + i) * hq) + h] = !sees;
                }
            }

            for (int j = 0; j < lk; j++)
            {
                bool seen = Enumerable.Range(0, lq).Any(i => mask.Visible(i, j, lq, lk));
                for (int h = 0; h < hkv; h++)
                {
                    zeroK[((startK + j) * hkv) + h] = !seen;
                }
            }

            if (lq > 0 && lk > 0)
            {
                var (nq, nk, nv) = NaiveBackward.SameDtype(
                    q[(startQ * qRow)..((startQ + lq) * qRow)], k[(startK * kRow)..((startK + lk) * kRow)],
                    v[(startK * kRow)..((startK + lk) * kRow)], dOut[(startQ * qRow)..((startQ + lq) * qRow)],
                    dims, mask, scale, x => DeviceArray.Round(dtype, x));
                nq.CopyTo(naiveQ, startQ * qRow);
                nk.CopyTo(naiveK, startK * kRow);
                nv.CopyTo(naiveV, startK * kRow);
            }

            startQ += lq;
            startK += lk;
        }

        var problems = BackwardAcceptance.Judge("dq", oursQ, naiveQ, refQ, dtype, headDim, zeroQ);
        problems.AddRange(BackwardAcceptance.Judge("dk", oursK, naiveK, refK, dtype, headDim, zeroK));
        problems.AddRange(BackwardAcceptance.Judge("dv", oursV, naiveV, refV, dtype, headDim, zeroK));
        Assert.That(problems, Is.Empty, context);

        // The empty sequences: sequence 1 has keys but no queries (its dk/dv are 0), sequence 3 a query but no keys (dq 0).
        int kStart1 = lensK[0], qStart3 = lensQ[0] + lensQ[1] + lensQ[2];
        Assert.Multiple(() =>
        {
            Assert.That(oursK.AsSpan(kStart1 * kRow, lensK[1] * kRow).ToArray(), Is.All.EqualTo(0f), context + ": dk of a sequence without queries");
            Assert.That(oursV.AsSpan(kStart1 * kRow, lensK[1] * kRow).ToArray(), Is.All.EqualTo(0f), context + ": dv of a sequence without queries");
            Assert.That(oursQ.AsSpan(qStart3 * qRow, lensQ[3] * qRow).ToArray(), Is.All.EqualTo(0f), context + ": dq of a sequence without keys");
        });
    }

    // ---- helpers --------------------------------------------------------------------------------------------------------

    private void RunAndJudge(
        DataType dtype, AttentionDims dims, MaskSpec mask, float? scale, bool deterministic = false, KernelPath path = KernelPath.Auto)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        AttentionOptions options = mask.ToOptions(scale) with { Deterministic = deterministic, KernelPath = path };
        using BackwardRun run = BackwardRun.Create(Device, dims, dtype, random);
        run.Forward(Attention, options with { KernelPath = KernelPath.Auto }, Stream); // the forward on its default path
        run.Backward(Attention, options, Stream);
        var (dq, dk, dv) = run.ReadGradients();
        float effectiveScale = scale ?? (float)dims.DefaultScale;
        string context = $"seed {seed}, {Name(dtype)}, {dims}, {mask}, scale {effectiveScale}, path {path}";
        Assert.That(run.Judge(dq, dk, dv, options, mask, effectiveScale), Is.Empty, context);
    }

    /// <summary>Ignores the test when this build does not serve the backward for the head dim (CheckBackward says Unsupported).</summary>
    private void RequireServed(DataType dtype, AttentionDims dims)
    {
        // CheckBackward never dereferences, so fake aligned addresses suffice.
        // (v, the output, dOut and dv with the V head dim, which is HeadDim unless the case sets another.)
        DeviceTensor Fake(long address, long seq, long heads, int dim) =>
            DeviceTensor.FromPointer((IntPtr)address, dtype, [dims.Batch, seq, heads, dim]);
        int d = dims.HeadDim, dv_ = dims.HeadDimV;
        DeviceTensor q = Fake(0x1000_0000, dims.SeqQ, dims.HeadsQ, d), k = Fake(0x2000_0000, dims.SeqK, dims.HeadsKv, d);
        DeviceTensor v = Fake(0x3000_0000, dims.SeqK, dims.HeadsKv, dv_), o = Fake(0x4000_0000, dims.SeqQ, dims.HeadsQ, dv_);
        DeviceTensor dOut = Fake(0x5000_0000, dims.SeqQ, dims.HeadsQ, dv_), dq = Fake(0x6000_0000, dims.SeqQ, dims.HeadsQ, d);
        DeviceTensor dk = Fake(0x7000_0000, dims.SeqK, dims.HeadsKv, d), dv = Fake(0x7800_0000, dims.SeqK, dims.HeadsKv, dv_);
        DeviceTensor lse = DeviceTensor.FromPointer((IntPtr)0x7C00_0000, DataType.Float32, [dims.Batch, dims.HeadsQ, dims.SeqQ]);
        FlashAttentionStatus status = FlashAttention.CheckBackward(
            q, k, v, o, dOut, lse, dq, dk, dv, out string message, computeCapability: Device.ComputeCapabilityCode);
        if (status == FlashAttentionStatus.Unsupported)
        {
            Assert.Ignore($"this build does not serve the backward at head dim {dims.HeadDim} (V {dims.HeadDimV}): {message}");
        }

        Assert.That(status, Is.EqualTo(FlashAttentionStatus.Success), message);
    }

    private static int FirstDifference(byte[] a, byte[] b)
    {
        if (a.Length != b.Length)
        {
            return Math.Min(a.Length, b.Length);
        }

        int i = a.AsSpan().CommonPrefixLength(b);
        return i == a.Length ? -1 : i;
    }
}
