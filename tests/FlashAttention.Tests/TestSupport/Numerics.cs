namespace FlashAttn.Tests.TestSupport;

/// <summary>Error measures and an independent bfloat16 rounding used as an oracle.</summary>
internal static class Numerics
{
    /// <summary>||actual - expected||_2 / ||expected||_2 over finite reference entries; NaN in actual gives NaN.</summary>
    public static double RelativeL2(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected)
    {
        if (actual.Length != expected.Length)
        {
            throw new ArgumentException($"length {actual.Length} != {expected.Length}");
        }

        double diff = 0;
        double norm = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double e = expected[i];
            if (!double.IsFinite(e))
            {
                continue;
            }

            double a = actual[i];
            diff += (a - e) * (a - e);
            norm += e * e;
        }

        return norm == 0 ? Math.Sqrt(diff) : Math.Sqrt(diff / norm);
    }

    /// <summary>Same as <see cref="RelativeL2(ReadOnlySpan{double}, ReadOnlySpan{double})"/> for a float result.</summary>
    public static double RelativeL2(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected)
    {
        var a = new double[actual.Length];
        for (int i = 0; i < a.Length; i++)
        {
            a[i] = actual[i];
        }

        return RelativeL2(a, expected);
    }

    /// <summary>Index of the first NaN or infinity, or -1.</summary>
    public static int FirstNonFinite(ReadOnlySpan<float> values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>
    /// bfloat16 bits of <paramref name="value"/>, rounded to nearest, ties to even; NaN becomes a quiet NaN
    /// with the same sign and the top of the payload. Written with integer arithmetic on purpose, as an
    /// oracle that shares nothing with the product's conversion.
    /// </summary>
    public static ushort Bf16BitsOracle(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7F80_0000u) == 0x7F80_0000u && (bits & 0x007F_FFFFu) != 0)
        {
            return (ushort)((bits >> 16) | 0x0040u);
        }

        uint upper = bits >> 16;
        uint lower = bits & 0xFFFFu;
        if (lower > 0x8000u || (lower == 0x8000u && (upper & 1u) == 1u))
        {
            upper++; // carries into the exponent when the mantissa overflows, which is correct (up to infinity)
        }

        return (ushort)upper;
    }

    /// <summary>The float a bfloat16 bit pattern stands for (exact: bf16 is the top half of a float).</summary>
    public static float Bf16BitsToFloat(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Rounds a float to the nearest bfloat16 value (ties to even).</summary>
    public static float RoundToBf16(float value) => Bf16BitsToFloat(Bf16BitsOracle(value));

    /// <summary>Rounds a float to the nearest binary16 value (the BCL conversion rounds to nearest even).</summary>
    public static float RoundToHalf(float value) => (float)(Half)value;
}
