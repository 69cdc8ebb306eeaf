using System.Globalization;

namespace FlashAttn;

/// <summary>
/// A bfloat16 number: the upper 16 bits of an IEEE 754 binary32 (1 sign bit, 8 exponent bits, 7 mantissa bits).
/// </summary>
/// <remarks>
/// Conversions from <see cref="float"/> and <see cref="double"/> round to nearest, ties to even; values beyond
/// <see cref="MaxValue"/> round to infinity, NaN stays NaN (made quiet, sign kept). Conversion to
/// <see cref="float"/> is exact and implicit. Equality follows <see cref="Half"/>: <see cref="Equals(BFloat16)"/>
/// treats every NaN as equal to every NaN and +0 as equal to -0, while <c>==</c> is IEEE (NaN != NaN).
/// </remarks>
public readonly struct BFloat16 : IEquatable<BFloat16>, IComparable<BFloat16>, IComparable, IFormattable
{
    private const ushort SignMask = 0x8000;
    private const ushort ExponentMask = 0x7F80;
    private const ushort MantissaMask = 0x007F;
    private const ushort QuietBit = 0x0040;

    private readonly ushort _bits;

    private BFloat16(ushort bits) => _bits = bits;

    /// <summary>Positive zero.</summary>
    public static BFloat16 Zero => new(0x0000);

    /// <summary>Negative zero.</summary>
    public static BFloat16 NegativeZero => new(0x8000);

    /// <summary>One.</summary>
    public static BFloat16 One => new(0x3F80);

    /// <summary>The smallest positive value (a subnormal, 2^-133).</summary>
    public static BFloat16 Epsilon => new(0x0001);

    /// <summary>The smallest positive normal value (2^-126).</summary>
    public static BFloat16 MinNormal => new(0x0080);

    /// <summary>The largest finite value (about 3.3895e38).</summary>
    public static BFloat16 MaxValue => new(0x7F7F);

    /// <summary>The most negative finite value (about -3.3895e38).</summary>
    public static BFloat16 MinValue => new(0xFF7F);

    /// <summary>Positive infinity.</summary>
    public static BFloat16 PositiveInfinity => new(0x7F80);

    /// <summary>Negative infinity.</summary>
    public static BFloat16 NegativeInfinity => new(0xFF80);

    /// <summary>A quiet NaN.</summary>
    public static BFloat16 NaN => new(0x7FC0);

    /// <summary>The distance from 1 to the next larger value (2^-7).</summary>
    public static BFloat16 MachineEpsilon => new(0x3C00);

    /// <summary>Creates a value from its 16-bit pattern.</summary>
    /// <param name="bits">The raw bits.</param>
    /// <returns>The value with that bit pattern (NaN payloads are kept as given).</returns>
    public static BFloat16 FromBits(ushort bits) => new(bits);

    /// <summary>The raw 16-bit pattern.</summary>
    /// <returns>The bits.</returns>
    public ushort ToBits() => _bits;

    /// <summary>Whether the value is NaN.</summary>
    /// <param name="value">The value.</param>
    /// <returns><see langword="true"/> for any NaN.</returns>
    public static bool IsNaN(BFloat16 value) =>
        (value._bits & ExponentMask) == ExponentMask && (value._bits & MantissaMask) != 0;

    /// <summary>Whether the value is positive or negative infinity.</summary>
    /// <param name="value">The value.</param>
    /// <returns><see langword="true"/> for +/-infinity.</returns>
    public static bool IsInfinity(BFloat16 value) => (value._bits & 0x7FFF) == ExponentMask;

    /// <summary>Whether the value is finite (not infinite, not NaN).</summary>
    /// <param name="value">The value.</param>
    /// <returns><see langword="true"/> for finite values.</returns>
    public static bool IsFinite(BFloat16 value) => (value._bits & ExponentMask) != ExponentMask;

    /// <summary>Whether the value is subnormal (non-zero with a zero exponent field).</summary>
    /// <param name="value">The value.</param>
    /// <returns><see langword="true"/> for subnormal values.</returns>
    public static bool IsSubnormal(BFloat16 value) =>
        (value._bits & ExponentMask) == 0 && (value._bits & MantissaMask) != 0;

    /// <summary>Whether the sign bit is set (including -0 and negative NaNs).</summary>
    /// <param name="value">The value.</param>
    /// <returns><see langword="true"/> when the sign bit is set.</returns>
    public static bool IsNegative(BFloat16 value) => (value._bits & SignMask) != 0;

    /// <summary>Converts a <see cref="float"/>, rounding to nearest, ties to even.</summary>
    /// <param name="value">The value.</param>
    public static explicit operator BFloat16(float value) => new(RoundToBFloat16Bits(BitConverter.SingleToUInt32Bits(value)));

    /// <summary>
    /// Converts a <see cref="double"/>, rounding once to nearest, ties to even (no double rounding through
    /// <see cref="float"/>).
    /// </summary>
    /// <param name="value">The value.</param>
    public static explicit operator BFloat16(double value)
    {
        if (double.IsNaN(value))
        {
            ushort sign = double.IsNegative(value) ? SignMask : (ushort)0;
            return new((ushort)(sign | 0x7FC0));
        }

        // Round to float with round-to-odd; float keeps 16 more significant bits than bfloat16, so a
        // round-to-nearest-even from that float gives the correctly rounded bfloat16 (no double rounding).
        float f = (float)value;
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if (!float.IsInfinity(f) && (double)f != value && (bits & 1) == 0)
        {
            // f is the even neighbour; the odd one lies on the other side of value.
            bool awayFromZero = Math.Abs(value) > Math.Abs((double)f);
            bits = awayFromZero ? bits + 1 : bits - 1;
        }

        return new(RoundToBFloat16Bits(bits));
    }

    /// <summary>Converts a <see cref="Half"/>, rounding its 10-bit mantissa to 7 bits (nearest, ties to even).</summary>
    /// <param name="value">The value.</param>
    public static explicit operator BFloat16(Half value) => (BFloat16)(float)value;

    /// <summary>Converts to <see cref="float"/>; exact.</summary>
    /// <param name="value">The value.</param>
    public static implicit operator float(BFloat16 value) => BitConverter.UInt32BitsToSingle((uint)value._bits << 16);

    /// <summary>Converts to <see cref="double"/>; exact.</summary>
    /// <param name="value">The value.</param>
    public static implicit operator double(BFloat16 value) => (float)value;

    /// <summary>IEEE equality: NaN is not equal to anything, +0 equals -0.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>Whether the values are numerically equal.</returns>
    public static bool operator ==(BFloat16 left, BFloat16 right) => (float)left == (float)right;

    /// <summary>IEEE inequality.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>The negation of <c>==</c>.</returns>
    public static bool operator !=(BFloat16 left, BFloat16 right) => (float)left != (float)right;

    /// <summary>IEEE less-than.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>Whether <paramref name="left"/> is less than <paramref name="right"/>.</returns>
    public static bool operator <(BFloat16 left, BFloat16 right) => (float)left < (float)right;

    /// <summary>IEEE greater-than.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>Whether <paramref name="left"/> is greater than <paramref name="right"/>.</returns>
    public static bool operator >(BFloat16 left, BFloat16 right) => (float)left > (float)right;

    /// <summary>IEEE less-than-or-equal.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>Whether <paramref name="left"/> is at most <paramref name="right"/>.</returns>
    public static bool operator <=(BFloat16 left, BFloat16 right) => (float)left <= (float)right;

    /// <summary>IEEE greater-than-or-equal.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>Whether <paramref name="left"/> is at least <paramref name="right"/>.</returns>
    public static bool operator >=(BFloat16 left, BFloat16 right) => (float)left >= (float)right;

    /// <summary>Equality as <see cref="Half.Equals(Half)"/> defines it: all NaNs are equal, +0 equals -0.</summary>
    /// <param name="other">The other value.</param>
    /// <returns>Whether the values are equal.</returns>
    public bool Equals(BFloat16 other) => ((float)this).Equals((float)other);

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is BFloat16 other && Equals(other);

    /// <inheritdoc/>
    public override int GetHashCode() => ((float)this).GetHashCode();

    /// <summary>Orders values as <see cref="float.CompareTo(float)"/> does (NaN is the smallest).</summary>
    /// <param name="other">The other value.</param>
    /// <returns>Negative, zero or positive.</returns>
    public int CompareTo(BFloat16 other) => ((float)this).CompareTo((float)other);

    /// <inheritdoc/>
    public int CompareTo(object? obj) => obj switch
    {
        null => 1,
        BFloat16 other => CompareTo(other),
        _ => throw new ArgumentException("The object is not a BFloat16.", nameof(obj)),
    };

    /// <summary>
    /// The shortest decimal text (invariant culture) that converts back to this exact value, e.g. "0.1" for
    /// <c>(BFloat16)0.1f</c>; "NaN", "Infinity" and "-Infinity" for the special values.
    /// </summary>
    /// <returns>The text.</returns>
    public override string ToString()
    {
        float f = this;
        if (!float.IsFinite(f))
        {
            return f.ToString(CultureInfo.InvariantCulture);
        }

        for (int digits = 1; digits < 9; digits++)
        {
            string text = f.ToString("G" + digits.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
            if (((BFloat16)double.Parse(text, CultureInfo.InvariantCulture))._bits == _bits)
            {
                return text;
            }
        }

        return f.ToString(CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// Formats the value as its <see cref="float"/> would be formatted; with no format and no (or the invariant)
    /// culture, as <see cref="ToString()"/>.
    /// </summary>
    /// <param name="format">A numeric format string, or null.</param>
    /// <param name="formatProvider">A culture, or null for the current one.</param>
    /// <returns>The text.</returns>
    public string ToString(string? format, IFormatProvider? formatProvider) =>
        string.IsNullOrEmpty(format) && (formatProvider is null || formatProvider == CultureInfo.InvariantCulture)
            ? ToString()
            : ((float)this).ToString(format, formatProvider);

    private static ushort RoundToBFloat16Bits(uint floatBits)
    {
        if ((floatBits & 0x7F800000u) == 0x7F800000u && (floatBits & 0x007FFFFFu) != 0)
        {
            // NaN: keep sign and upper payload, force the quiet bit so the result cannot become infinity.
            return (ushort)((floatBits >> 16) | QuietBit);
        }

        // Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, then truncate.
        // A carry out of the mantissa correctly bumps the exponent (up to infinity).
        uint lsb = (floatBits >> 16) & 1u;
        return (ushort)((floatBits + 0x7FFFu + lsb) >> 16);
    }
}
