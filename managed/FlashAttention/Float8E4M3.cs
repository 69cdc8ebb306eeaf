using System.Globalization;

namespace FlashAttn;

/// <summary>
/// An 8-bit float in the OCP FP8 E4M3 format, "FN" variant (PyTorch's <c>torch.float8_e4m3fn</c>, CUDA's
/// <c>__nv_fp8_e4m3</c>): 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, NaN only as
/// <c>S.1111.111</c> (0x7F, 0xFF); largest finite value 448, smallest normal 2^-6, smallest subnormal 2^-9.
/// </summary>
/// <remarks>
/// <para>
/// Conversions from <see cref="float"/>, <see cref="double"/> and <see cref="Half"/> round to nearest, ties to
/// even, keeping the sign (so -0 and negative values that underflow give -0). <b>Overflow gives NaN, it does not
/// saturate</b>: a magnitude up to 464 (the midpoint between 448 and the next step, 480, which would be the NaN
/// pattern) rounds to ±448, 464 itself included (a tie, to the even 448); anything above 464, and ±infinity, gives
/// NaN with the input's sign (0x7F or 0xFF); NaN stays NaN (sign kept). This is PyTorch's conversion:
/// <c>c10::detail::fp8e4m3fn_from_fp32_value</c> (c10/util/Float8_e4m3fn.h), used by
/// <c>tensor.to(torch.float8_e4m3fn)</c>, and it equals that function bit for bit on every <see cref="float"/>.
/// Clamp to ±448 first where saturation is wanted, or use <see cref="FromSingleSaturating"/>. A <see cref="double"/> is rounded once, directly; PyTorch
/// narrows a double to float first, which differs only where that narrowing lands exactly on an 8-bit tie
/// (464 + 2^-30 gives NaN here, 448 there).
/// </para>
/// <para>
/// Conversion to <see cref="float"/> and <see cref="double"/> is exact and implicit. Equality follows
/// <see cref="Half"/> as <see cref="BFloat16"/> does: <see cref="Equals(Float8E4M3)"/> treats every NaN as equal to
/// every NaN and +0 as equal to -0, while <c>==</c> is IEEE (NaN != NaN). A <see cref="DeviceBuffer{T}"/> of this type
/// backs <see cref="DataType.Float8E4M3"/> tensors, the q, k and v of the fp8 forward
/// (<see cref="FlashAttention.Forward(in AttentionArguments, AttentionOptions, CudaStream)"/>, bf16 output); on the
/// host it prepares and checks fp8 data (<see cref="AttentionReference.ForwardFloat8"/> is the float64 reference). It is
/// also the element type of an fp8 <see cref="KvCache"/> (C ABI 0.13), read through descale factors under Float16 or
/// BFloat16 queries.
/// </para>
/// </remarks>
public readonly struct Float8E4M3 : IEquatable<Float8E4M3>, IComparable<Float8E4M3>, IComparable, IFormattable
{
    private const byte SignMask = 0x80;
    private const byte ExponentMask = 0x78;
    private const byte MantissaMask = 0x07;
    private const byte NaNMagnitude = 0x7F;

    // 464.0 as a double: the midpoint between 448 (0x7E) and 480 (what 0x7F would be without the NaN code).
    private const ulong OverflowTieBits = 0x407D_0000_0000_0000UL;

    private readonly byte _bits;

    private Float8E4M3(byte bits) => _bits = bits;

    /// <summary>Positive zero.</summary>
    public static Float8E4M3 Zero => new(0x00);

    /// <summary>Negative zero.</summary>
    public static Float8E4M3 NegativeZero => new(0x80);

    /// <summary>One.</summary>
    public static Float8E4M3 One => new(0x38);

    /// <summary>The smallest positive value (a subnormal, 2^-9).</summary>
    public static Float8E4M3 Epsilon => new(0x01);

    /// <summary>The smallest positive normal value (2^-6).</summary>
    public static Float8E4M3 MinNormal => new(0x08);

    /// <summary>The largest finite value (448).</summary>
    public static Float8E4M3 MaxValue => new(0x7E);

    /// <summary>The most negative finite value (-448).</summary>
    public static Float8E4M3 MinValue => new(0xFE);

    /// <summary>The NaN with the sign bit clear (0x7F); 0xFF is the other NaN.</summary>
    public static Float8E4M3 NaN => new(0x7F);

    /// <summary>The distance from 1 to the next larger value (2^-3).</summary>
    public static Float8E4M3 MachineEpsilon => new(0x20);

    /// <summary>Creates a value from its 8-bit pattern.</summary>
    /// <param name="bits">The raw bits.</param>
    /// <returns>The value with that bit pattern.</returns>
    public static Float8E4M3 FromBits(byte bits) => new(bits);

    /// <summary>The raw 8-bit pattern.</summary>
    /// <returns>The bits.</returns>
    public byte ToBits() => _bits;

    /// <summary>Whether the value is NaN (0x7F or 0xFF).</summary>
    /// <param name="value">The value.</param>
    /// <returns><see langword="true"/> for either NaN pattern.</returns>
    public static bool IsNaN(Float8E4M3 value) => (value._bits & NaNMagnitude) == NaNMagnitude;

    /// <summary>Always <see langword="false"/>: the format has no infinities (there for symmetry with the other float types).</summary>
    /// <param name="value">The value.</param>
    /// <returns><see langword="false"/>.</returns>
    public static bool IsInfinity(Float8E4M3 value) => false;

    /// <summary>Whether the value is finite (every pattern but the two NaNs).</summary>
    /// <param name="value">The value.</param>
    /// <returns><see langword="true"/> for finite values.</returns>
    public static bool IsFinite(Float8E4M3 value) => !IsNaN(value);

    /// <summary>Whether the value is subnormal (non-zero with a zero exponent field).</summary>
    /// <param name="value">The value.</param>
    /// <returns><see langword="true"/> for subnormal values.</returns>
    public static bool IsSubnormal(Float8E4M3 value) =>
        (value._bits & ExponentMask) == 0 && (value._bits & MantissaMask) != 0;

    /// <summary>Whether the sign bit is set (including -0 and the NaN 0xFF).</summary>
    /// <param name="value">The value.</param>
    /// <returns><see langword="true"/> when the sign bit is set.</returns>
    public static bool IsNegative(Float8E4M3 value) => (value._bits & SignMask) != 0;

    /// <summary>
    /// Converts a <see cref="float"/>, rounding to nearest, ties to even; magnitudes above 464, infinities and NaN
    /// give NaN (sign kept), as PyTorch's <c>fp8e4m3fn_from_fp32_value</c> does.
    /// </summary>
    /// <param name="value">The value.</param>
    public static explicit operator Float8E4M3(float value) => new(RoundToBits(value)); // widening to double is exact

    /// <summary>
    /// Converts a <see cref="double"/>, rounding once to nearest, ties to even (no double rounding through
    /// <see cref="float"/>); magnitudes above 464, infinities and NaN give NaN (sign kept).
    /// </summary>
    /// <param name="value">The value.</param>
    public static explicit operator Float8E4M3(double value) => new(RoundToBits(value));

    /// <summary>Converts a <see cref="Half"/>, rounding to nearest, ties to even (as the <see cref="float"/> conversion).</summary>
    /// <param name="value">The value.</param>
    public static explicit operator Float8E4M3(Half value) => (Float8E4M3)(float)value;

    /// <summary>
    /// Converts a <see cref="float"/> rounding to nearest, ties to even, and <b>saturating</b>: a magnitude above 448
    /// (infinities included) gives ±448 instead of NaN; any NaN becomes 0x7F (the positive NaN, whatever its sign). This is CUDA's
    /// <c>__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)</c> (PTX <c>cvt.rn.satfinite.e4m3x2.f32</c>) and the
    /// rounding an fp8 KV cache applies to the keys and values a decode appends (C ABI 0.13, see
    /// <see cref="DecodeReference.QuantizeForCache"/>). Below 448 it equals the explicit conversion.
    /// </summary>
    /// <param name="value">The value.</param>
    /// <returns>The nearest e4m3 value, ±448 for larger magnitudes, or 0x7F for NaN.</returns>
    public static Float8E4M3 FromSingleSaturating(float value) =>
        float.IsNaN(value) ? FromBits(0x7F) : new(RoundToBits(Math.Clamp(value, -448f, 448f)));

    /// <summary>Converts to <see cref="float"/>; exact. The NaNs become a quiet float NaN with the same sign.</summary>
    /// <param name="value">The value.</param>
    public static implicit operator float(Float8E4M3 value)
    {
        uint sign = (uint)(value._bits & SignMask) << 24;
        int exponent = (value._bits & ExponentMask) >> 3;
        uint mantissa = (uint)(value._bits & MantissaMask);
        uint magnitude;
        if (exponent == 0xF && mantissa == MantissaMask)
        {
            magnitude = 0x7FC0_0000u;
        }
        else if (exponent == 0)
        {
            // Subnormal (or zero): mantissa * 2^-9, exact in float (a float normal).
            magnitude = BitConverter.SingleToUInt32Bits(mantissa * (1f / 512f));
        }
        else
        {
            // Rebias the exponent (7 -> 127) and put the 3 mantissa bits at the top of float's 23.
            magnitude = ((uint)(exponent + 120) << 23) | (mantissa << 20);
        }

        return BitConverter.UInt32BitsToSingle(sign | magnitude);
    }

    /// <summary>Converts to <see cref="double"/>; exact.</summary>
    /// <param name="value">The value.</param>
    public static implicit operator double(Float8E4M3 value) => (float)value;

    /// <summary>IEEE equality: NaN is not equal to anything, +0 equals -0.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>Whether the values are numerically equal.</returns>
    public static bool operator ==(Float8E4M3 left, Float8E4M3 right) => (float)left == (float)right;

    /// <summary>IEEE inequality.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>The negation of <c>==</c>.</returns>
    public static bool operator !=(Float8E4M3 left, Float8E4M3 right) => (float)left != (float)right;

    /// <summary>IEEE less-than.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>Whether <paramref name="left"/> is less than <paramref name="right"/>.</returns>
    public static bool operator <(Float8E4M3 left, Float8E4M3 right) => (float)left < (float)right;

    /// <summary>IEEE greater-than.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>Whether <paramref name="left"/> is greater than <paramref name="right"/>.</returns>
    public static bool operator >(Float8E4M3 left, Float8E4M3 right) => (float)left > (float)right;

    /// <summary>IEEE less-than-or-equal.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>Whether <paramref name="left"/> is at most <paramref name="right"/>.</returns>
    public static bool operator <=(Float8E4M3 left, Float8E4M3 right) => (float)left <= (float)right;

    /// <summary>IEEE greater-than-or-equal.</summary>
    /// <param name="left">The left operand.</param>
    /// <param name="right">The right operand.</param>
    /// <returns>Whether <paramref name="left"/> is at least <paramref name="right"/>.</returns>
    public static bool operator >=(Float8E4M3 left, Float8E4M3 right) => (float)left >= (float)right;

    /// <summary>Equality as <see cref="Half.Equals(Half)"/> defines it: both NaNs are equal, +0 equals -0.</summary>
    /// <param name="other">The other value.</param>
    /// <returns>Whether the values are equal.</returns>
    public bool Equals(Float8E4M3 other) => ((float)this).Equals((float)other);

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is Float8E4M3 other && Equals(other);

    /// <inheritdoc/>
    public override int GetHashCode() => ((float)this).GetHashCode();

    /// <summary>Orders values as <see cref="float.CompareTo(float)"/> does (NaN is the smallest).</summary>
    /// <param name="other">The other value.</param>
    /// <returns>Negative, zero or positive.</returns>
    public int CompareTo(Float8E4M3 other) => ((float)this).CompareTo((float)other);

    /// <inheritdoc/>
    public int CompareTo(object? obj) => obj switch
    {
        null => 1,
        Float8E4M3 other => CompareTo(other),
        _ => throw new ArgumentException("The object is not a Float8E4M3.", nameof(obj)),
    };

    /// <summary>
    /// The shortest decimal text in plain notation (invariant culture) that converts back to this exact value,
    /// e.g. "0.002" for <see cref="Epsilon"/> (2^-9), "0.1" for <c>(Float8E4M3)0.1f</c> (0.1015625) and "448" for
    /// <see cref="MaxValue"/>; "NaN" for either NaN.
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
            // Plain notation only ("448", not "4.5E+02", which would also convert back): every finite value
            // lies in [2^-9, 448], where G never switches to exponents at 3 digits or more.
            if (!text.Contains('E', StringComparison.Ordinal)
                && ((Float8E4M3)double.Parse(text, CultureInfo.InvariantCulture))._bits == _bits)
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

    private static byte RoundToBits(double value)
    {
        ulong bits = BitConverter.DoubleToUInt64Bits(value);
        byte sign = (byte)((bits >> 56) & SignMask);
        ulong magnitude = bits & 0x7FFF_FFFF_FFFF_FFFFUL;

        // Above 464, infinities and NaN (larger patterns as unsigned integers): NaN with the input's sign, as
        // PyTorch's fp8e4m3fn_from_fp32_value (c10/util/Float8_e4m3fn.h) gives: it sends every float from 480 up
        // to NaN, and round-to-nearest-even sends (464, 480) up to the 0x7F pattern, NaN as well. 464 itself is
        // a tie and goes to the even 448 below.
        if (magnitude > OverflowTieBits)
        {
            return (byte)(sign | NaNMagnitude);
        }

        int biasedExponent = (int)(magnitude >> 52); // double bias 1023
        ulong significand = (magnitude & 0x000F_FFFF_FFFF_FFFFUL) | (biasedExponent != 0 ? 1UL << 52 : 0);

        // |value| = significand * 2^(max(biasedExponent, 1) - 1075). Count it in units of the 8-bit format's
        // spacing at that magnitude: 2^(e - 3) for a normal result (|value| >= 2^-6, e the unbiased exponent),
        // 2^-9 below. Round that count to an integer, nearest, ties to even.
        bool normal = biasedExponent >= 1023 - 6;
        int shift = normal ? 49 : 1066 - Math.Max(biasedExponent, 1);
        if (shift > 53)
        {
            return sign; // below half the smallest subnormal: +0 or -0
        }

        ulong units = significand >> shift;
        ulong remainder = significand & ((1UL << shift) - 1);
        ulong half = 1UL << (shift - 1);
        if (remainder > half || (remainder == half && (units & 1) != 0))
        {
            units++;
        }

        // Normal: units is 8..16 (implicit bit included); 16 carries into the next exponent, correctly.
        // Subnormal: units is 0..8; 8 is the smallest normal's pattern.
        int code = normal ? ((biasedExponent - 1023 + 7) << 3) + (int)units - 8 : (int)units;
        return (byte)(sign | code);
    }
}
