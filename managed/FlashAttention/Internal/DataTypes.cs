namespace FlashAttn.Internal;

/// <summary>Maps element types to <see cref="DataType"/> and sizes.</summary>
internal static class DataTypes
{
    public static DataType? Of<T>()
        where T : unmanaged =>
        typeof(T) == typeof(Half) ? DataType.Float16
        : typeof(T) == typeof(BFloat16) ? DataType.BFloat16
        : typeof(T) == typeof(float) ? DataType.Float32
        : typeof(T) == typeof(int) ? DataType.Int32
        : typeof(T) == typeof(Float8E4M3) ? DataType.Float8E4M3
        : typeof(T) == typeof(byte) ? DataType.UInt8
        : null;

    public static int SizeOf(DataType type) => type switch
    {
        DataType.Float16 or DataType.BFloat16 => 2,
        DataType.Float32 or DataType.Int32 => 4,
        DataType.Float8E4M3 or DataType.UInt8 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "Not a defined DataType."),
    };

    public static string ShortName(DataType type) => type switch
    {
        DataType.Float16 => "f16",
        DataType.BFloat16 => "bf16",
        DataType.Float32 => "f32",
        DataType.Int32 => "i32",
        DataType.Float8E4M3 => "e4m3",
        DataType.UInt8 => "u8",
        _ => $"dtype{(int)type}",
    };
}
