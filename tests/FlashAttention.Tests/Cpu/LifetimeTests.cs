using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>SafeHandle semantics that need no GPU (the real checks with a device are in Gpu/LifetimeGpuTests).</summary>
[TestFixture]
[Category("Cpu")]
public sealed class LifetimeTests
{
    [Test]
    public void ForeignStreamIsBorrowedAndDisposeIsHarmless()
    {
        // A fake cudaStream_t: if Dispose tried to destroy it, the driver would be handed garbage. A borrowed
        // handle must never be released, so this never reaches the native library at all.
        var stream = CudaStream.FromHandle((IntPtr)0x7F00_1230);
        Assert.Multiple(() =>
        {
            Assert.That(stream.OwnsHandle, Is.False);
            Assert.That(stream.IsInvalid, Is.False);
            Assert.That(stream.Device, Is.Null);
            Assert.That(stream.NativeHandle, Is.EqualTo((IntPtr)0x7F00_1230));
        });

        stream.Dispose();
        Assert.That(() => stream.Dispose(), Throws.Nothing, "Dispose twice is harmless");
        Assert.Multiple(() =>
        {
            Assert.That(stream.IsClosed, Is.True);
            Assert.That(() => stream.NativeHandle, Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => stream.Synchronize(), Throws.TypeOf<ObjectDisposedException>());
        });
    }

    [Test]
    public void LegacyDefaultStreamHandleIsInvalidButUsableAsNull()
    {
        using var stream = CudaStream.FromHandle(IntPtr.Zero);
        Assert.Multiple(() =>
        {
            Assert.That(stream.IsInvalid, Is.True, "zero is the legacy default stream, which nobody owns");
            Assert.That(stream.OwnsHandle, Is.False);
            Assert.That(stream.NativeHandle, Is.EqualTo(IntPtr.Zero));
        });
    }

    [Test]
    public void ForgottenForeignStreamsAreNotReleasedByTheFinalizer()
    {
        MakeGarbage();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect(); // reaching this line means finalizing borrowed streams with garbage handles did not crash

        static void MakeGarbage()
        {
            for (int i = 1; i <= 64; i++)
            {
                _ = CudaStream.FromHandle((IntPtr)(0x6000_0000 + (i * 256)));
            }
        }
    }

    [Test]
    public void CreateRejectsNullDevice()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => CudaStream.Create(null!), Throws.ArgumentNullException);
            Assert.That(() => CudaEvent.Create(null!), Throws.ArgumentNullException);
            Assert.That(() => new FlashAttention(null!), Throws.ArgumentNullException);
            Assert.That(() => new DeviceBuffer<float>(null!, 4), Throws.ArgumentNullException);
        });
    }

    [Test]
    public void OpenWithoutAGpuThrowsNoDevice()
    {
        if (CudaDevice.Count > 0)
        {
            Assert.Ignore("a GPU is present; Gpu/LifetimeGpuTests covers Open there");
        }

        Assert.Multiple(() =>
        {
            Assert.That(CudaDevice.TryGetAvailability(out string reason), Is.False);
            Assert.That(reason, Is.Not.Empty, "the reason says what is missing");
            var ex = Assert.Throws<FlashAttentionException>(() => CudaDevice.Open(0));
            Assert.That(ex!.Status, Is.EqualTo(FlashAttentionStatus.NoDevice));
            Assert.That(ex.Message, Is.Not.Empty);
        });
    }

    [Test]
    public void OpenRejectsNegativeOrdinal() =>
        Assert.That(() => CudaDevice.Open(-1), Throws.TypeOf<ArgumentOutOfRangeException>());

    [Test]
    public void ExceptionCarriesStatusAndNativeMessage()
    {
        var ex = new FlashAttentionException(FlashAttentionStatus.Unsupported, "full text", "native text");
        Assert.Multiple(() =>
        {
            Assert.That(ex.Status, Is.EqualTo(FlashAttentionStatus.Unsupported));
            Assert.That(ex.NativeMessage, Is.EqualTo("native text"));
            Assert.That(ex.Message, Is.EqualTo("full text"));
            Assert.That(new FlashAttentionException("x").NativeMessage, Is.Empty);
            Assert.That((int)FlashAttentionStatus.Internal, Is.EqualTo((int)Native.FaStatus.Internal), "managed and native status values agree");
            Assert.That((int)FlashAttentionStatus.DeviceCheckFailed, Is.EqualTo((int)Native.FaStatus.DeviceCheckFailed));
            Assert.That((int)DataType.BFloat16, Is.EqualTo((int)Native.FaDtype.Bfloat16));
            Assert.That((int)CausalAlignment.TopLeft, Is.EqualTo((int)Native.FaCausalAlignment.TopLeft));
            Assert.That((int)KernelPath.Sm80, Is.EqualTo((int)Native.FaKernelPath.Sm80));
            Assert.That((int)KernelPath.Sm90, Is.EqualTo((int)Native.FaKernelPath.Sm90));
        });
    }
}
