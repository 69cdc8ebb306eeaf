using System.Runtime.InteropServices;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// A device buffer of Float16, BFloat16, Float32 or Float8E4M3 elements handled through float values on the host, so
/// one test body serves every dtype. Values uploaded must already be representable in the dtype.
/// </summary>
internal sealed class DeviceArray : IDisposable
{
    private readonly DeviceBuffer<Half>? _half;
    private readonly DeviceBuffer<BFloat16>? _bf16;
    private readonly DeviceBuffer<float>? _f32;
    private readonly DeviceBuffer<Float8E4M3>? _f8;

    private DeviceArray(CudaDevice device, DataType dtype, long length)
    {
        DataType = dtype;
        Length = length;
        switch (dtype)
        {
            case DataType.Float16: _half = new DeviceBuffer<Half>(device, length); break;
            case DataType.BFloat16: _bf16 = new DeviceBuffer<BFloat16>(device, length); break;
            case DataType.Float32: _f32 = new DeviceBuffer<float>(device, length); break;
            case DataType.Float8E4M3: _f8 = new DeviceBuffer<Float8E4M3>(device, length); break;
            default: throw new ArgumentOutOfRangeException(nameof(dtype));
        }
    }

    public DataType DataType { get; }

    public long Length { get; }

    public SafeHandle Buffer => (SafeHandle?)_half ?? (SafeHandle?)_bf16 ?? (SafeHandle?)_f8 ?? _f32!;

    public static DeviceArray Allocate(CudaDevice device, DataType dtype, long length) => new(device, dtype, length);

    public static DeviceArray Upload(CudaDevice device, DataType dtype, float[] values)
    {
        var array = new DeviceArray(device, dtype, values.Length);
        array.Write(values);
        return array;
    }

    /// <summary>Rounds to the dtype (nearest even); identity for Float32.</summary>
    public static float Round(DataType dtype, float value) => dtype switch
    {
        DataType.Float16 => Numerics.RoundToHalf(value),
        DataType.BFloat16 => Numerics.RoundToBf16(value),
        DataType.Float8E4M3 => (Float8E4M3)value,
        _ => value,
    };

    public void Write(float[] values)
    {
        if (_half is not null)
        {
            _half.CopyFrom(values.Select(x => (Half)x).ToArray());
        }
        else if (_bf16 is not null)
        {
            _bf16.CopyFrom(values.Select(x => (BFloat16)x).ToArray());
        }
        else if (_f8 is not null)
        {
            _f8.CopyFrom(values.Select(x => (Float8E4M3)x).ToArray());
        }
        else
        {
            _f32!.CopyFrom(values);
        }
    }

    public float[] Read()
    {
        if (_half is not null)
        {
            var h = new Half[Length];
            _half.CopyTo(h);
            return h.Select(x => (float)x).ToArray();
        }

        if (_bf16 is not null)
        {
            var b = new BFloat16[Length];
            _bf16.CopyTo(b);
            return b.Select(x => (float)x).ToArray();
        }

        if (_f8 is not null)
        {
            var e = new Float8E4M3[Length];
            _f8.CopyTo(e);
            return e.Select(x => (float)x).ToArray();
        }

        var f = new float[Length];
        _f32!.CopyTo(f);
        return f;
    }

    /// <summary>The raw bytes, for bit-for-bit comparisons.</summary>
    public byte[] ReadBytes()
    {
        var bytes = new byte[Length * DeviceTensor.FromPointer(IntPtr.Zero, DataType, [1]).ElementSize];
        if (_half is not null)
        {
            _half.CopyTo(MemoryMarshal.Cast<byte, Half>(bytes.AsSpan()));
        }
        else if (_bf16 is not null)
        {
            _bf16.CopyTo(MemoryMarshal.Cast<byte, BFloat16>(bytes.AsSpan()));
        }
        else if (_f8 is not null)
        {
            _f8.CopyTo(MemoryMarshal.Cast<byte, Float8E4M3>(bytes.AsSpan()));
        }
        else
        {
            _f32!.CopyTo(MemoryMarshal.Cast<byte, float>(bytes.AsSpan()));
        }

        return bytes;
    }

    /// <summary>Sets every byte to 0xFF: a NaN in each of fp16, bf16, fp32 and e4m3.</summary>
    public void Poison()
    {
        _half?.Fill(0xFF);
        _bf16?.Fill(0xFF);
        _f32?.Fill(0xFF);
        _f8?.Fill(0xFF);
    }

    public DeviceTensor Tensor(long[] shape, long[]? strides = null, long elementOffset = 0)
    {
        if (_half is not null)
        {
            return DeviceTensor.FromBuffer(_half, shape, strides ?? default(ReadOnlySpan<long>), elementOffset);
        }

        if (_bf16 is not null)
        {
            return DeviceTensor.FromBuffer(_bf16, shape, strides ?? default(ReadOnlySpan<long>), elementOffset);
        }

        if (_f8 is not null)
        {
            return DeviceTensor.FromBuffer(_f8, shape, strides ?? default(ReadOnlySpan<long>), elementOffset);
        }

        return DeviceTensor.FromBuffer(_f32!, shape, strides ?? default(ReadOnlySpan<long>), elementOffset);
    }

    public void Dispose()
    {
        _half?.Dispose();
        _bf16?.Dispose();
        _f32?.Dispose();
        _f8?.Dispose();
    }
}
