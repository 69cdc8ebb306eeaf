using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Gpu;

/// <summary>DeviceBuffer copies (sync, on a stream, async), partial copies, fills and the device's properties.</summary>
[TestFixture]
[Category("Gpu")]
public sealed class DeviceMemoryTests : GpuTestBase
{
    [Test]
    public void DeviceReportsSaneProperties()
    {
        Assert.Multiple(() =>
        {
            Assert.That(CudaDevice.Count, Is.GreaterThanOrEqualTo(1));
            Assert.That(Device.Name, Is.Not.Empty);
            Assert.That(Device.ComputeCapabilityCode, Is.GreaterThanOrEqualTo(80), "the kernels need sm_80+; the test GPU should have it");
            Assert.That(Device.MultiprocessorCount, Is.GreaterThan(0));
            Assert.That(Device.TotalMemory, Is.GreaterThan(1L << 30));
            Assert.That(Device.SharedMemoryPerBlockOptIn, Is.GreaterThan(48 * 1024));
            Assert.That(CudaDevice.TryGetAvailability(out string reason), Is.True, reason);
            Assert.That(() => CudaDevice.Open(CudaDevice.Count), Throws.TypeOf<ArgumentOutOfRangeException>());
        });
    }

    [TestCase(1)]
    [TestCase(7)]
    [TestCase(1023)]
    [TestCase(100_003)]
    public void SyncRoundTripsWithOddLengths(int length)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        RoundTrip(random, length, seed, (buffer, src, dst) =>
        {
            buffer.CopyFrom(src);
            buffer.CopyTo(dst);
        });
    }

    [TestCase(3)]
    [TestCase(4097)]
    public void StreamRoundTrips(int length)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var stream = CudaStream.Create(Device);
        RoundTrip(random, length, seed, (buffer, src, dst) =>
        {
            buffer.CopyFrom(src, stream);
            buffer.CopyTo(dst, stream);
        });
    }

    [TestCase(5)]
    [TestCase(65_537)]
    public void AsyncRoundTrips(int length)
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        using var stream = CudaStream.Create(Device);
        RoundTrip(random, length, seed, (buffer, src, dst) =>
        {
            var srcArray = src.ToArray();
            var dstArray = new int[dst.Length];
            using (StreamOperation up = buffer.CopyFromAsync(srcArray, stream))
            {
                using StreamOperation down = buffer.CopyToAsync(dstArray, stream);
                down.Wait();
                Assert.That(down.IsCompleted, Is.True);
                Assert.That(() => down.Wait(), Throws.Nothing, "waiting twice is harmless");
            }

            dstArray.CopyTo(dst);
        });
    }

    private void RoundTrip(Random random, int length, int seed, RoundTripBody body)
    {
        var source = new int[length];
        for (int i = 0; i < length; i++)
        {
            source[i] = random.Next(int.MinValue, int.MaxValue) | 1; // never zero
        }

        var back = new int[length];
        Array.Fill(back, 0x5A5A5A5A);
        using var buffer = new DeviceBuffer<int>(Device, length);
        Assert.Multiple(() =>
        {
            Assert.That(buffer.Length, Is.EqualTo(length));
            Assert.That(buffer.SizeInBytes, Is.EqualTo(4L * length));
            Assert.That(buffer.Pointer, Is.Not.EqualTo(IntPtr.Zero));
            Assert.That((long)buffer.Pointer % 16, Is.Zero, "allocations are at least 16-byte aligned");
        });
        body(buffer, source, back);
        Assert.That(back, Is.EqualTo(source), $"seed {seed}");
    }

    private delegate void RoundTripBody(DeviceBuffer<int> buffer, ReadOnlySpan<int> source, Span<int> destination);

    [Test]
    public void HalfAndBFloat16RoundTripBitForBit()
    {
        Random random = TestRandom.ForCurrentTest(out int seed);
        float[] values = TestRandom.Normal(random, 999);
        var halves = values.Select(x => (Half)x).ToArray();
        var bf = values.Select(x => (BFloat16)x).ToArray();
        using var dh = new DeviceBuffer<Half>(Device, halves.Length);
        using var db = new DeviceBuffer<BFloat16>(Device, bf.Length);
        dh.CopyFrom(halves);
        db.CopyFrom(bf);
        var h2 = new Half[halves.Length];
        var b2 = new BFloat16[bf.Length];
        dh.CopyTo(h2);
        db.CopyTo(b2);
        Assert.Multiple(() =>
        {
            Assert.That(h2.Select(BitConverter.HalfToUInt16Bits), Is.EqualTo(halves.Select(BitConverter.HalfToUInt16Bits)), $"seed {seed}");
            Assert.That(b2.Select(x => x.ToBits()), Is.EqualTo(bf.Select(x => x.ToBits())), $"seed {seed}");
        });
    }

    [Test]
    public void PartialCopiesAndFill()
    {
        using var buffer = new DeviceBuffer<byte>(Device, 1001);
        buffer.Fill(0x3C);
        var middle = Enumerable.Range(1, 333).Select(i => (byte)i).ToArray();
        buffer.CopyFrom(middle, offset: 501);
        var all = new byte[1001];
        buffer.CopyTo(all);
        var tail = new byte[7];
        buffer.CopyTo(tail, offset: 994);
        Assert.Multiple(() =>
        {
            Assert.That(all.AsSpan(0, 501).ToArray(), Is.All.EqualTo((byte)0x3C));
            Assert.That(all.AsSpan(501, 333).ToArray(), Is.EqualTo(middle));
            Assert.That(all.AsSpan(834).ToArray(), Is.All.EqualTo((byte)0x3C));
            Assert.That(tail, Is.All.EqualTo((byte)0x3C));
            Assert.That(() => buffer.CopyFrom(new byte[1000]), Throws.ArgumentException, "whole-buffer copy needs the exact length");
            Assert.That(() => buffer.CopyFrom(new byte[10], offset: 995), Throws.ArgumentException, "past the end");
            Assert.That(() => buffer.CopyTo(new byte[2], offset: -1), Throws.ArgumentException);
        });
    }

    [Test]
    public void EmptyBufferIsValidAndCopiesNothing()
    {
        using var buffer = new DeviceBuffer<float>(Device, 0);
        Assert.Multiple(() =>
        {
            Assert.That(buffer.Length, Is.Zero);
            Assert.That(() => buffer.CopyFrom(ReadOnlySpan<float>.Empty), Throws.Nothing);
            Assert.That(() => buffer.CopyTo(Span<float>.Empty), Throws.Nothing);
            Assert.That(() => buffer.Fill(0), Throws.Nothing);
        });
        Assert.That(() => new DeviceBuffer<float>(Device, -1), Throws.TypeOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void DeviceTensorViewsAreBoundsChecked()
    {
        using var buffer = new DeviceBuffer<Half>(Device, 2 * 5 * 3 * 8);
        using var doubles = new DeviceBuffer<double>(Device, 16);
        using var bytes = new DeviceBuffer<byte>(Device, 16);
        Assert.Multiple(() =>
        {
            Assert.That(() => buffer.AsTensor(2, 5, 3, 8), Throws.Nothing);
            Assert.That(() => buffer.AsTensor(2, 5, 3, 9), Throws.ArgumentException, "one element too many");
            Assert.That(() => DeviceTensor.FromBuffer(buffer, [2, 5, 3, 8], elementOffset: 1), Throws.ArgumentException);
            Assert.That(() => DeviceTensor.FromBuffer(doubles, [16]), Throws.ArgumentException, "double has no DataType");
            Assert.That(DeviceTensor.FromBuffer(bytes, [16]).DataType, Is.EqualTo(DataType.UInt8), "byte: the keep mask's UInt8");
        });
        DeviceTensor t = DeviceTensor.FromBuffer(buffer, [2, 5, 3, 4], [120, 24, 8, 1], elementOffset: 4);
        Assert.Multiple(() =>
        {
            Assert.That(t.Pointer, Is.EqualTo(buffer.Pointer + 8), "offset in elements, pointer in bytes");
            Assert.That(t.IsContiguous, Is.False);
            Assert.That(t.DataType, Is.EqualTo(DataType.Float16));
            Assert.That(t.Device!.Ordinal, Is.EqualTo(Device.Ordinal));
        });
    }
}
