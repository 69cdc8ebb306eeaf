using FlashAttn.Native;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>The C ABI's error, version and helper entry points, called directly through the generated bindings.</summary>
[TestFixture]
[Category("Cpu")]
public sealed unsafe class NativeAbiTests
{
    [OneTimeSetUp]
    public void LoadLibrary() => NativeLib.Require();

    [TestCase(FaStatus.Success, "FA_STATUS_SUCCESS")]
    [TestCase(FaStatus.InvalidArgument, "FA_STATUS_INVALID_ARGUMENT")]
    [TestCase(FaStatus.Unsupported, "FA_STATUS_UNSUPPORTED")]
    [TestCase(FaStatus.NoDevice, "FA_STATUS_NO_DEVICE")]
    [TestCase(FaStatus.OutOfMemory, "FA_STATUS_OUT_OF_MEMORY")]
    [TestCase(FaStatus.CudaError, "FA_STATUS_CUDA_ERROR")]
    [TestCase(FaStatus.Internal, "FA_STATUS_INTERNAL")]
    [TestCase(FaStatus.DeviceCheckFailed, "FA_STATUS_DEVICE_CHECK_FAILED")]
    public void StatusStringNamesEveryStatus(FaStatus status, string expected)
    {
        Assert.Multiple(() =>
        {
            Assert.That(NativeUtf8.Read(NativeMethods.fa_status_string(status)), Is.EqualTo(expected));
            Assert.That(NativeMethods.GetStatusString(status), Is.EqualTo(expected));
        });
    }

    [TestCase(8)]
    [TestCase(-1)]
    [TestCase(int.MaxValue)]
    public void StatusStringOfAnUnknownValueIsNotNull(int value)
    {
        nint text = NativeMethods.fa_status_string((FaStatus)value);
        Assert.That(text, Is.Not.EqualTo((nint)0));
        Assert.That(NativeUtf8.Read(text), Is.Not.Empty.And.Not.StartsWith("FA_STATUS_SUCCESS"));
    }

    [Test]
    public void EveryGeneratedStatusHasADistinctName()
    {
        var names = Enum.GetValues<FaStatus>().Select(NativeMethods.GetStatusString).ToList();
        Assert.That(names, Is.Unique);
        Assert.That(names, Has.Count.EqualTo(8));
    }

    [Test]
    public void VersionMatchesTheHeader()
    {
        Assert.Multiple(() =>
        {
            Assert.That(NativeMethods.fa_version(), Is.EqualTo(NativeMethods.FA_VERSION_CODE));
            Assert.That(NativeMethods.FA_VERSION_CODE, Is.EqualTo(
                (NativeMethods.FA_VERSION_MAJOR * 10000) + (NativeMethods.FA_VERSION_MINOR * 100) + NativeMethods.FA_VERSION_PATCH));
        });
    }

    [Test]
    public void ManagedSideReportsTheLoadedLibrary()
    {
        Assert.That(FlashAttention.TryGetNativeLibrary(out string path, out string version), Is.True);
        Assert.Multiple(() =>
        {
            Assert.That(Path.GetFileName(path), Is.EqualTo("libflash_attention.so"));
            Assert.That(File.Exists(path), Is.True, path);
            Assert.That(version, Is.EqualTo($"{NativeMethods.FA_VERSION_MAJOR}.{NativeMethods.FA_VERSION_MINOR}.{NativeMethods.FA_VERSION_PATCH}"));
            Assert.That(NativeLibraryLoader.LoadedPath, Is.EqualTo(path));
        });
    }

    [Test]
    public void LastErrorIsEmptyAfterSuccessAndSetAfterFailure()
    {
        FaForwardParams p;
        Assert.That(NativeMethods.fa_forward_params_init(null, (nuint)sizeof(FaForwardParams)), Is.EqualTo(FaStatus.InvalidArgument));
        string afterFailure = NativeLib.LastError();
        Assert.That(afterFailure, Does.Contain("params"));

        Assert.That(NativeMethods.fa_forward_params_init(&p, (nuint)sizeof(FaForwardParams)), Is.EqualTo(FaStatus.Success));
        Assert.That(NativeLib.LastError(), Is.Empty, "a successful call clears the message");

        FaForwardParams valid = ForwardParamsFactory.Valid();
        valid.causal = 5;
        Assert.That(NativeMethods.fa_forward_check(&valid, 0), Is.EqualTo(FaStatus.InvalidArgument));
        Assert.That(NativeLib.LastError(), Does.Contain("causal"));
        valid.causal = 1;
        Assert.That(NativeMethods.fa_forward_check(&valid, 0), Is.EqualTo(FaStatus.Success));
        Assert.That(NativeLib.LastError(), Is.Empty);
    }

    [Test]
    public void LastErrorIsPerThread()
    {
        FaForwardParams p = ForwardParamsFactory.Valid();
        p.reserved0 = 3;
        Assert.That(NativeMethods.fa_forward_check(&p, 0), Is.EqualTo(FaStatus.InvalidArgument));
        string mine = NativeLib.LastError();

        string other = "unset";
        var thread = new Thread(() =>
        {
            FaForwardParams ok = ForwardParamsFactory.Valid();
            _ = NativeMethods.fa_forward_check(&ok, 0);
            other = NativeLib.LastError();
        });
        thread.Start();
        thread.Join();

        Assert.Multiple(() =>
        {
            Assert.That(other, Is.Empty, "a success on another thread sees its own (empty) message");
            Assert.That(NativeLib.LastError(), Is.EqualTo(mine), "this thread's message is untouched by the other thread");
            Assert.That(mine, Does.Contain("reserved0"));
        });
    }

    [Test]
    public void ParamsInitFillsDefaults()
    {
        FaForwardParams p;
        new Span<byte>(&p, sizeof(FaForwardParams)).Fill(0xAB); // poison
        Assert.That(NativeMethods.fa_forward_params_init(&p, (nuint)sizeof(FaForwardParams)), Is.EqualTo(FaStatus.Success));
        using (Assert.EnterMultipleScope())
        {
            Assert.That(p.struct_size, Is.EqualTo((uint)sizeof(FaForwardParams)));
            Assert.That(p.reserved0, Is.Zero);
            Assert.That(p.softmax_scale, Is.Zero);
            Assert.That(p.causal, Is.Zero);
            Assert.That(p.causal_alignment, Is.EqualTo((int)FaCausalAlignment.BottomRight));
            Assert.That(p.kernel_path, Is.EqualTo((int)FaKernelPath.Auto));
            Assert.That(p.q.data, Is.EqualTo((nint)0));
            Assert.That(p.lse.data, Is.EqualTo((nint)0));
            Assert.That(p.q.rank, Is.Zero);
            Assert.That(p.window_left, Is.EqualTo(-1), "no window");
            Assert.That(p.window_right, Is.EqualTo(-1));
            Assert.That(p.softcap, Is.Zero);
            Assert.That(p.reserved1, Is.Zero);
            Assert.That(p.reserved2, Is.Zero);
            Assert.That((nint)p.cu_seqlens_q, Is.EqualTo((nint)0));
            Assert.That((nint)p.cu_seqlens_k_host, Is.EqualTo((nint)0));
            Assert.That(p.varlen_batch, Is.Zero);
            Assert.That(p.max_seqlen_q, Is.Zero);
            Assert.That(p.@out.shape[3], Is.Zero);
        }
    }

    [Test]
    public void DeviceCountDoesNotThrowWithoutAGpu()
    {
        int count = -1;
        FaStatus status = NativeMethods.fa_device_count(&count);
        int reported = count;
        string message = NativeLib.LastError();
        Assert.That(status, Is.EqualTo(FaStatus.Success).Or.EqualTo(FaStatus.NoDevice), message);
        if (status == FaStatus.NoDevice)
        {
            Assert.Multiple(() =>
            {
                Assert.That(reported, Is.Zero, "count is 0 with FA_STATUS_NO_DEVICE");
                Assert.That(message, Is.Not.Empty, "NO_DEVICE says why");
            });
        }
        else
        {
            Assert.That(reported, Is.GreaterThanOrEqualTo(0));
        }

        Assert.That(() => CudaDevice.Count, Throws.Nothing);
        Assert.That(CudaDevice.Count, Is.EqualTo(status == FaStatus.Success ? reported : 0));
    }

    [Test]
    public void HelpersRejectNullOutputsBeforeTouchingCuda()
    {
        Assert.Multiple(() =>
        {
            Assert.That(NativeMethods.fa_device_count(null), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("count"));
            Assert.That(NativeMethods.fa_device_get_properties(0, null), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("props"));
            FaDeviceProperties props = default; // struct_size 0
            Assert.That(NativeMethods.fa_device_get_properties(0, &props), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("struct_size"));
            Assert.That(NativeMethods.fa_memory_alloc(0, 16, null), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("ptr"));
            Assert.That(NativeMethods.fa_stream_create(0, null), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("stream"));
            Assert.That(NativeMethods.fa_context_create(0, null), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("context"));
            Assert.That(NativeMethods.fa_memset_async(0x1000, 256, 16, 0), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("value"));
            Assert.That(NativeMethods.fa_memcpy(0, 0x1000, 16), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("dst"));
            Assert.That(NativeMethods.fa_event_record(0, 0), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("event"));
        });
    }

    private static FaSupportQuery ForwardQuery(FaDtype dtype = FaDtype.Bfloat16, int headDim = 64, int cc = 90)
    {
        FaSupportQuery query = default;
        query.struct_size = (uint)sizeof(FaSupportQuery);
        query.pass = (int)FaPass.Forward;
        query.compute_capability = cc;
        query.dtype = (int)dtype;
        query.head_dim = headDim;
        return query;
    }

    private static (FaStatus Status, string Message) Query(FaSupportQuery query) =>
        (NativeMethods.fa_query_support(&query), NativeLib.LastError());

    [Test]
    public void SupportQueryAnswersWithoutAGpu()
    {
        using (Assert.EnterMultipleScope())
        {
            var (status, message) = Query(ForwardQuery(FaDtype.Bfloat16, 64, 90));
            Assert.That(status, Is.EqualTo(FaStatus.Success), message);
            Assert.That(message, Is.Empty);
            Assert.That(Query(ForwardQuery(FaDtype.Float16, 64, 0)).Status, Is.EqualTo(FaStatus.Success));

            var causalWindow = ForwardQuery();
            causalWindow.causal = 1;
            causalWindow.window = 1;
            causalWindow.softcap = 1;
            Assert.That(Query(causalWindow).Status, Is.EqualTo(FaStatus.Success), "forward serves causal, window and softcap");

            (status, message) = Query(ForwardQuery(headDim: 264));
            Assert.That(status, Is.EqualTo(FaStatus.Unsupported));
            Assert.That(message, Does.Contain("head_dim").And.Contain("264"));

            (status, message) = Query(ForwardQuery(cc: 75));
            Assert.That(status, Is.EqualTo(FaStatus.Unsupported));
            Assert.That(message, Does.Contain("compute_capability"));

            (status, message) = Query(ForwardQuery(FaDtype.Float32));
            Assert.That(status, Is.EqualTo(FaStatus.Unsupported), "fp32 attention is a valid dtype the kernels do not serve");
            Assert.That(message, Does.Contain("dtype"));
        }
    }

    [Test]
    public void SupportQueryRejectsMalformedQueries()
    {
        using (Assert.EnterMultipleScope())
        {
            Assert.That(NativeMethods.fa_query_support(null), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeLib.LastError(), Does.Contain("query"));

            var q = ForwardQuery();
            q.struct_size = 8;
            Assert.That(Query(q).Status, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(Query(q).Message, Does.Contain("struct_size"));

            q = ForwardQuery();
            q.pass = 9;
            Assert.That(Query(q).Status, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(Query(q).Message, Does.Contain("pass"));

            q = ForwardQuery();
            q.dtype = 42;
            Assert.That(Query(q).Status, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(Query(q).Message, Does.Contain("dtype"));

            q = ForwardQuery(headDim: 0);
            Assert.That(Query(q).Status, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(Query(q).Message, Does.Contain("head_dim"));

            q = ForwardQuery();
            q.causal = 2;
            Assert.That(Query(q).Status, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(Query(q).Message, Does.Contain("causal"));

            q = ForwardQuery(cc: -3);
            Assert.That(Query(q).Status, Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(Query(q).Message, Does.Contain("compute_capability"));
        }
    }

    [Test]
    public void KernelListNamesEveryCompiledKernel()
    {
        int count = -1;
        Assert.That(NativeMethods.fa_kernel_count(&count), Is.EqualTo(FaStatus.Success), NativeLib.LastError());
        Assert.That(count, Is.GreaterThanOrEqualTo(2), "at least the fp16 and bf16 forward kernels of one head dim");
        var names = new List<string>();
        for (int i = 0; i < count; i++)
        {
            nint name = 0;
            Assert.That(NativeMethods.fa_kernel_name(i, &name), Is.EqualTo(FaStatus.Success), NativeLib.LastError());
            names.Add(NativeUtf8.Read(name));
        }

        nint none = 0x1234;
        using (Assert.EnterMultipleScope())
        {
            Assert.That(names, Is.All.Not.Empty);
            Assert.That(names, Is.Unique);
            Assert.That(names, Has.Some.Contains("bf16"));
            Assert.That(names, Has.Some.Contains("fp16"));
            Assert.That(NativeMethods.fa_kernel_name(count, &none), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(none, Is.EqualTo((nint)0), "the output is cleared on failure");
            Assert.That(NativeLib.LastError(), Does.Contain("index"));
            Assert.That(NativeMethods.fa_kernel_name(-1, &none), Is.EqualTo(FaStatus.InvalidArgument));
            Assert.That(NativeMethods.fa_kernel_count(null), Is.EqualTo(FaStatus.InvalidArgument));
        }
    }

    [Test]
    public void NullHandlesAreNoOps()
    {
        Assert.Multiple(() =>
        {
            Assert.That(NativeMethods.fa_memory_free(0, 0), Is.EqualTo(FaStatus.Success));
            Assert.That(NativeMethods.fa_stream_destroy(0), Is.EqualTo(FaStatus.Success));
            Assert.That(NativeMethods.fa_event_destroy(0), Is.EqualTo(FaStatus.Success));
            Assert.That(NativeMethods.fa_context_destroy(0), Is.EqualTo(FaStatus.Success));
            Assert.That(NativeMethods.fa_memcpy(0, 0, 0), Is.EqualTo(FaStatus.Success), "zero bytes is a no-op");
        });
    }
}
