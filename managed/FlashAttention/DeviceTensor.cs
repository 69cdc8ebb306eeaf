using System.Collections.ObjectModel;
using System.Runtime.InteropServices;
using FlashAttn.Internal;
using FlashAttn.Native;

namespace FlashAttn;

/// <summary>
/// A strided view of device memory: a pointer, a <see cref="FlashAttn.DataType"/>, a shape and strides (in
/// elements). It owns nothing; a view made from a <see cref="DeviceBuffer{T}"/> keeps that buffer reachable
/// (the buffer must still not be disposed while the view is used).
/// </summary>
/// <remarks>
/// Attention tensors use the layout <c>[batch, seqlen, heads, head_dim]</c> with a contiguous last dimension;
/// other strides are free, so slices of a packed QKV buffer need no copy. Ranks 1 to 4 are supported.
/// </remarks>
public sealed class DeviceTensor
{
    private readonly long[] _shape;
    private readonly long[] _strides;
    private readonly IntPtr _foreignPointer;

    private DeviceTensor(
        DataType dataType, long[] shape, long[] strides, long elementOffset, SafeHandle? owner, CudaDevice? device, IntPtr foreignPointer)
    {
        DataType = dataType;
        _shape = shape;
        _strides = strides;
        Shape = new ReadOnlyCollection<long>(_shape);
        Strides = new ReadOnlyCollection<long>(_strides);
        ElementOffset = elementOffset;
        Owner = owner;
        Device = device;
        _foreignPointer = foreignPointer;
    }

    /// <summary>The element type.</summary>
    public DataType DataType { get; }

    /// <summary>Number of dimensions (1 to 4).</summary>
    public int Rank => _shape.Length;

    /// <summary>Extent of each dimension.</summary>
    public IReadOnlyList<long> Shape { get; }

    /// <summary>Distance in elements between neighbours along each dimension.</summary>
    public IReadOnlyList<long> Strides { get; }

    /// <summary>Offset in elements of element [0, ...] from the start of the backing buffer (0 for <see cref="FromPointer"/>).</summary>
    public long ElementOffset { get; }

    /// <summary>The device that holds the memory, or null for a view made by <see cref="FromPointer"/>.</summary>
    public CudaDevice? Device { get; }

    /// <summary>Size of one element in bytes.</summary>
    public int ElementSize => DataTypes.SizeOf(DataType);

    /// <summary>Number of elements (the product of <see cref="Shape"/>).</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (long d in _shape)
            {
                n *= d;
            }

            return n;
        }
    }

    /// <summary>Whether the strides are those of a dense row-major array of this shape.</summary>
    public bool IsContiguous => _strides.AsSpan().SequenceEqual(ContiguousStrides(_shape));

    /// <summary>Device address of element [0, ...].</summary>
    /// <exception cref="ObjectDisposedException">The backing buffer was disposed.</exception>
    public IntPtr Pointer => Owner is null
        ? _foreignPointer
        : PointerIn(Owner);

    /// <summary>The buffer this view keeps alive, if any.</summary>
    internal SafeHandle? Owner { get; }

    /// <summary>Views a <see cref="DeviceBuffer{T}"/>, checking that every addressed element lies inside it.</summary>
    /// <typeparam name="T"><see cref="Half"/>, <see cref="BFloat16"/>, <see cref="Float8E4M3"/>, <see cref="float"/>, <see cref="int"/> or <see cref="byte"/> (<see cref="DataType.UInt8"/>, the dropout keep mask).</typeparam>
    /// <param name="buffer">The buffer.</param>
    /// <param name="shape">The shape (rank 1 to 4, every extent 0 or more).</param>
    /// <param name="strides">Strides in elements (0 or more each), or empty for contiguous row-major.</param>
    /// <param name="elementOffset">Offset in elements of element [0, ...].</param>
    /// <returns>The view.</returns>
    /// <exception cref="ArgumentException">
    /// <typeparamref name="T"/> has no <see cref="FlashAttn.DataType"/>, the shape or strides are invalid, or the
    /// view reaches outside the buffer.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The buffer was disposed.</exception>
    public static DeviceTensor FromBuffer<T>(
        DeviceBuffer<T> buffer, ReadOnlySpan<long> shape, ReadOnlySpan<long> strides = default, long elementOffset = 0)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(buffer);
        ObjectDisposedException.ThrowIf(buffer.IsClosed, buffer);
        DataType dataType = DataTypes.Of<T>() ?? throw new ArgumentException(
            $"DeviceBuffer<{typeof(T).Name}> cannot back a tensor: use Half, BFloat16, Float8E4M3, float, int or byte elements.", nameof(buffer));
        long[] shapeArray = CheckShape(shape);
        long[] strideArray = CheckStrides(shapeArray, strides);
        if (elementOffset < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(elementOffset), elementOffset, "The element offset must be 0 or more.");
        }

        long needed;
        try
        {
            needed = checked(elementOffset + Extent(shapeArray, strideArray));
        }
        catch (OverflowException)
        {
            throw new ArgumentException("The view's extent overflows a 64-bit integer.", nameof(shape));
        }

        if (needed > buffer.Length)
        {
            throw new ArgumentException(
                $"A view of shape [{string.Join(", ", shapeArray)}], strides [{string.Join(", ", strideArray)}] and offset " +
                $"{elementOffset} reaches element {needed - 1}, but the buffer has {buffer.Length} elements.",
                nameof(shape));
        }

        return new DeviceTensor(dataType, shapeArray, strideArray, elementOffset, buffer, buffer.Device, IntPtr.Zero);
    }

    /// <summary>
    /// Views device memory owned elsewhere (another library's tensor, a raw allocation). Nothing is checked
    /// against the memory's size and nothing keeps it alive: the owner must.
    /// </summary>
    /// <param name="pointer">Device address of element [0, ...]; the native library needs it 16-byte aligned and non-null.</param>
    /// <param name="dataType">The element type.</param>
    /// <param name="shape">The shape (rank 1 to 4, every extent 0 or more).</param>
    /// <param name="strides">Strides in elements (0 or more each), or empty for contiguous row-major.</param>
    /// <returns>The view.</returns>
    /// <exception cref="ArgumentException">The data type, shape or strides are invalid.</exception>
    public static DeviceTensor FromPointer(IntPtr pointer, DataType dataType, ReadOnlySpan<long> shape, ReadOnlySpan<long> strides = default)
    {
        if (!Enum.IsDefined(dataType))
        {
            throw new ArgumentException($"DataType {(int)dataType} is not a defined value.", nameof(dataType));
        }

        long[] shapeArray = CheckShape(shape);
        long[] strideArray = CheckStrides(shapeArray, strides);
        return new DeviceTensor(dataType, shapeArray, strideArray, 0, owner: null, device: null, pointer);
    }

    /// <summary>Strides of a dense row-major array of <paramref name="shape"/>.</summary>
    /// <param name="shape">The shape.</param>
    /// <returns>The strides in elements; the last is 1.</returns>
    public static long[] ContiguousStrides(ReadOnlySpan<long> shape)
    {
        var strides = new long[shape.Length];
        long s = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            strides[i] = s;
            s *= Math.Max(shape[i], 1);
        }

        return strides;
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"{DataTypes.ShortName(DataType)}[{string.Join(", ", _shape)}] strides [{string.Join(", ", _strides)}]" +
        (ElementOffset != 0 ? $" offset {ElementOffset}" : string.Empty);

    /// <summary>Whether <paramref name="other"/> has this shape (compares without allocating).</summary>
    internal bool HasShapeOf(DeviceTensor other) => _shape.AsSpan().SequenceEqual(other._shape);

    /// <summary>
    /// Whether <paramref name="other"/> has this rank and this shape in every dimension but the last (the head dim, which
    /// v and the output may have of their own); compares without allocating.
    /// </summary>
    internal bool HasLeadingShapeOf(DeviceTensor other) =>
        _shape.Length == other._shape.Length && _shape.Length > 0 && _shape.AsSpan(0, _shape.Length - 1).SequenceEqual(other._shape.AsSpan(0, other._shape.Length - 1));

    /// <summary>Fills a native descriptor; the caller holds a lease on <see cref="Owner"/>.</summary>
    internal unsafe FaTensor ToNative(IntPtr ownerPointer)
    {
        FaTensor t = default;
        t.data = Owner is null ? _foreignPointer : ownerPointer + (nint)(ElementOffset * ElementSize);
        t.dtype = (int)DataType;
        t.rank = Rank;
        for (int i = 0; i < Rank; i++)
        {
            t.shape[i] = _shape[i];
            t.strides[i] = _strides[i];
        }

        return t;
    }

    private static long[] CheckShape(ReadOnlySpan<long> shape)
    {
        if (shape.Length is < 1 or > NativeMethods.FA_MAX_RANK)
        {
            throw new ArgumentException(
                $"A tensor has rank 1 to {NativeMethods.FA_MAX_RANK}; got rank {shape.Length}.", nameof(shape));
        }

        foreach (long d in shape)
        {
            if (d < 0)
            {
                throw new ArgumentException($"Every extent must be 0 or more; got [{string.Join(", ", shape.ToArray())}].", nameof(shape));
            }
        }

        return shape.ToArray();
    }

    private static long[] CheckStrides(long[] shape, ReadOnlySpan<long> strides)
    {
        if (strides.IsEmpty)
        {
            return ContiguousStrides(shape);
        }

        if (strides.Length != shape.Length)
        {
            throw new ArgumentException(
                $"The tensor has rank {shape.Length} but {strides.Length} strides were given.", nameof(strides));
        }

        foreach (long s in strides)
        {
            if (s < 0)
            {
                throw new ArgumentException($"Every stride must be 0 or more; got [{string.Join(", ", strides.ToArray())}].", nameof(strides));
            }
        }

        return strides.ToArray();
    }

    /// <summary>Number of elements from element [0, ...] to one past the last addressed element (0 when empty).</summary>
    private static long Extent(long[] shape, long[] strides)
    {
        long last = 0;
        for (int i = 0; i < shape.Length; i++)
        {
            if (shape[i] == 0)
            {
                return 0;
            }

            last = checked(last + ((shape[i] - 1) * strides[i]));
        }

        return checked(last + 1);
    }

    private IntPtr PointerIn(SafeHandle owner)
    {
        ObjectDisposedException.ThrowIf(owner.IsClosed, owner);
        return owner.DangerousGetHandle() + (nint)(ElementOffset * ElementSize);
    }
}
