using System.Runtime.CompilerServices;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>SafeHandle lifetimes with real native resources.</summary>
[TestFixture]
[Category("Gpu")]
public sealed class LifetimeGpuTests : GpuTestBase
{
    [Test]
    public void OwnedStreamDisposeTwiceThenUseThrows()
    {
        var stream = CudaStream.Create(Device);
        Assert.Multiple(() =>
        {
            Assert.That(stream.OwnsHandle, Is.True);
            Assert.That(stream.IsInvalid, Is.False);
            Assert.That(stream.Device!.Ordinal, Is.EqualTo(Device.Ordinal));
        });
        stream.Synchronize();
        stream.Dispose();
        Assert.That(() => stream.Dispose(), Throws.Nothing);
        Assert.Multiple(() =>
        {
            Assert.That(() => stream.Synchronize(), Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => stream.NativeHandle, Throws.TypeOf<ObjectDisposedException>());
            using var buffer = new DeviceBuffer<int>(Device, 4);
            Assert.That(() => buffer.CopyFrom(new int[4], stream), Throws.TypeOf<ObjectDisposedException>());
        });
    }

    [Test]
    public void EventsTimeWorkAndThrowAfterDispose()
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var stream = CudaStream.Create(Device);
        using var attention = new FlashAttention(Device);
        using ForwardRun run = ForwardRun.Create(Device, new AttentionDims(2, 1023, 1023, 8, 2, 128), DataType.BFloat16, random, seed);
        var start = CudaEvent.Create(Device);
        var end = CudaEvent.Create(Device);
        start.Record(stream);
        attention.Forward(run.QT, run.KT, run.VT, run.OutT, run.LseT, null, stream);
        end.Record(stream);
        end.Synchronize();
        float ms = CudaEvent.ElapsedMilliseconds(start, end);
        Assert.That(ms, Is.GreaterThan(0f).And.LessThan(10_000f), "a 1023x1023 forward takes a measurable, finite time");

        start.Dispose();
        start.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(() => start.Record(stream), Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => CudaEvent.ElapsedMilliseconds(start, end), Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => CudaEvent.Create(null!), Throws.ArgumentNullException);
        });
        end.Dispose();
    }

    [Test]
    public void DisposedBufferThrowsOnUse()
    {
        var buffer = new DeviceBuffer<Half>(Device, 2 * 3 * 4 * 64);
        buffer.Dispose();
        Assert.That(() => buffer.Dispose(), Throws.Nothing);
        Assert.Multiple(() =>
        {
            Assert.That(() => buffer.Pointer, Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => buffer.CopyFrom(new Half[buffer.Length]), Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => buffer.CopyTo(new Half[buffer.Length]), Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => buffer.Fill(0), Throws.TypeOf<ObjectDisposedException>());
            Assert.That(() => buffer.AsTensor(2, 3, 4, 64), Throws.TypeOf<ObjectDisposedException>());
        });
    }

    [Test]
    public void ForwardWithADisposedBufferOrInstanceThrows()
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        var dims = new AttentionDims(1, 16, 16, 2, 2, 64);
        using ForwardRun run = ForwardRun.Create(Device, dims, DataType.Float16, random, seed);
        DeviceTensor q = run.QT;
        var attention = new FlashAttention(Device);
        attention.Forward(q, run.KT, run.VT, run.OutT);
        Device.Synchronize();

        run.DQ.Dispose(); // the view q now points at freed memory
        Assert.That(() => attention.Forward(q, run.KT, run.VT, run.OutT), Throws.TypeOf<ObjectDisposedException>());

        Assert.That(() => attention.CheckDeviceErrors(), Throws.Nothing, "calls that found nothing leave nothing to report");
        attention.Dispose();
        Assert.That(() => attention.Dispose(), Throws.Nothing);
        Assert.That(() => attention.Forward(run.KT, run.KT, run.VT, run.OutT), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => attention.CheckDeviceErrors(), Throws.TypeOf<ObjectDisposedException>());
    }

    [Test]
    public void AsyncCopyKeepsItsBufferAliveUntilWaited()
    {
        using var stream = CudaStream.Create(Device);
        var buffer = new DeviceBuffer<int>(Device, 4099);
        int[] source = Enumerable.Range(17, 4099).ToArray();
        buffer.CopyFrom(source);
        var back = new int[4099];
        StreamOperation op = buffer.CopyToAsync(back, stream);
        buffer.Dispose(); // the release is deferred while the copy holds a reference
        op.Wait();
        Assert.Multiple(() =>
        {
            Assert.That(back, Is.EqualTo(source));
            Assert.That(buffer.IsClosed, Is.True);
        });
        op.Dispose();
    }

    [Test]
    public void FinalizersReleaseForgottenHandlesWithoutCrashing()
    {
        for (int round = 0; round < 3; round++)
        {
            Forget();
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
        }

        // The device still works: allocate, copy and run attention after the finalizers ran.
        Random random = TestRandom.ForCurrentTest(out int seed);
        using ForwardRun run = ForwardRun.Create(Device, new AttentionDims(1, 17, 17, 2, 2, 64), DataType.BFloat16, random, seed);
        using var attention = new FlashAttention(Device);
        attention.Forward(run.QT, run.KT, run.VT, run.OutT);
        Device.Synchronize();
        Assert.That(Numerics.FirstNonFinite(run.DOut.Read()), Is.EqualTo(-1), $"seed {seed}");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void Forget()
    {
        for (int i = 0; i < 8; i++)
        {
            _ = CudaStream.Create(Device);
            _ = new DeviceBuffer<float>(Device, 1 << 16);
            _ = new FlashAttention(Device);
            _ = CudaEvent.Create(Device);
        }
    }
}
