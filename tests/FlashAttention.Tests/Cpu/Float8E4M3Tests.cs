using System.Runtime.CompilerServices;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// <see cref="Float8E4M3"/> against the OCP E4M3 "FN" definition and PyTorch's float -> float8_e4m3fn conversion
/// (<c>c10::detail::fp8e4m3fn_from_fp32_value</c>): round to nearest even, |x| &lt;= 464 rounds to at most 448,
/// anything larger (and infinity, NaN) becomes NaN with the input's sign.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class Float8E4M3Tests
{
    /// <summary>The value of a non-NaN pattern from the format's definition, in double (exact).</summary>
    private static double DecodeByFormula(int bits)
    {
        int sign = (bits & 0x80) != 0 ? -1 : 1;
        int e = (bits >> 3) & 0xF;
        int m = bits & 0x7;
        double magnitude = e == 0 ? m / 8.0 * Math.Pow(2, -6) : (1 + m / 8.0) * Math.Pow(2, e - 7);
        return sign * magnitude;
    }

    /// <summary>
    /// Independent oracle: the pattern whose value is nearest to <paramref name="x"/> found by scanning the
    /// non-negative patterns in order, ties to the even pattern. 0x7F takes part in rounding as the value it would
    /// have if it were not NaN (480), so everything that rounds to it, and everything from 480 up, is NaN: that is
    /// PyTorch's behaviour. Exact for any double: the two differences compared are exact (Sterbenz).
    /// </summary>
    private static byte OracleBits(double x)
    {
        byte sign = double.IsNegative(x) ? (byte)0x80 : (byte)0;
        double a = Math.Abs(x);
        if (double.IsNaN(a) || a >= 480)
        {
            return (byte)(sign | 0x7F);
        }

        int c = 0;
        while (c < 0x7F && ValueForRounding(c + 1) <= a)
        {
            c++;
        }

        int r = c;
        if (c < 0x7F && ValueForRounding(c) != a)
        {
            double below = a - ValueForRounding(c);
            double above = ValueForRounding(c + 1) - a;
            r = below < above ? c : above < below ? c + 1 : (c % 2 == 0 ? c : c + 1);
        }

        return (byte)(sign | r);
    }

    private static double ValueForRounding(int code) => code == 0x7F ? 480.0 : DecodeByFormula(code);

    private static byte Bits(float value) => ((Float8E4M3)value).ToBits();

    private static byte Bits(double value) => ((Float8E4M3)value).ToBits();

    [Test]
    public void IsOneByte() => Assert.That(Unsafe.SizeOf<Float8E4M3>(), Is.EqualTo(1));

    [Test]
    public void EveryPatternDecodesAsTheFormulaSays()
    {
        for (int i = 0; i < 256; i++)
        {
            var x = Float8E4M3.FromBits((byte)i);
            float f = x;
            double d = x;
            if ((i & 0x7F) == 0x7F)
            {
                Assert.That(float.IsNaN(f) && double.IsNaN(d) && Float8E4M3.IsNaN(x) && !Float8E4M3.IsFinite(x), Is.True, $"0x{i:X2}");
                Assert.That(float.IsNegative(f), Is.EqualTo(i == 0xFF), $"0x{i:X2}: NaN sign");
                continue;
            }

            double expected = DecodeByFormula(i);
            Assert.That(BitConverter.DoubleToInt64Bits(d), Is.EqualTo(BitConverter.DoubleToInt64Bits(expected)), $"0x{i:X2}: {d} vs {expected}");
            Assert.That((double)f, Is.EqualTo(d), $"0x{i:X2}: float and double agree");
            Assert.That(double.IsNegative(d), Is.EqualTo(i >= 0x80), $"0x{i:X2}: sign (zero included)");
            Assert.That(Float8E4M3.IsNaN(x) || Float8E4M3.IsInfinity(x), Is.False, $"0x{i:X2}");
            Assert.That(Float8E4M3.IsSubnormal(x), Is.EqualTo((i & 0x78) == 0 && (i & 0x07) != 0), $"0x{i:X2}");
            Assert.That(Float8E4M3.IsNegative(x), Is.EqualTo(i >= 0x80), $"0x{i:X2}");
        }
    }

    [Test]
    public void AllBitPatternsRoundTripThroughFloatAndDouble()
    {
        for (int i = 0; i < 256; i++)
        {
            var x = Float8E4M3.FromBits((byte)i);
            Assert.That(Bits((float)x), Is.EqualTo((byte)i), $"0x{i:X2} through float ({(float)x})");
            Assert.That(Bits((double)x), Is.EqualTo((byte)i), $"0x{i:X2} through double");
            Assert.That(((Float8E4M3)(Half)(float)x).ToBits(), Is.EqualTo((byte)i), $"0x{i:X2} through Half");
            Assert.That(OracleBits(x), Is.EqualTo((byte)i), $"0x{i:X2}: the oracle agrees");
        }
    }

    [Test]
    public void Constants()
    {
        Assert.Multiple(() =>
        {
            Assert.That((float)Float8E4M3.Zero, Is.EqualTo(0f));
            Assert.That(float.IsNegative(Float8E4M3.NegativeZero), Is.True);
            Assert.That((float)Float8E4M3.One, Is.EqualTo(1f));
            Assert.That((float)Float8E4M3.Epsilon, Is.EqualTo(MathF.Pow(2, -9)));
            Assert.That((float)Float8E4M3.MinNormal, Is.EqualTo(MathF.Pow(2, -6)));
            Assert.That((float)Float8E4M3.MaxValue, Is.EqualTo(448f));
            Assert.That((float)Float8E4M3.MinValue, Is.EqualTo(-448f));
            Assert.That(Float8E4M3.IsNaN(Float8E4M3.NaN), Is.True);
            Assert.That(Float8E4M3.NaN.ToBits(), Is.EqualTo((byte)0x7F));
            Assert.That((float)Float8E4M3.MachineEpsilon, Is.EqualTo(0.125f));
            Assert.That((float)Float8E4M3.FromBits((byte)(Float8E4M3.One.ToBits() + 1)) - 1f, Is.EqualTo((float)Float8E4M3.MachineEpsilon));
            Assert.That(Float8E4M3.IsSubnormal(Float8E4M3.Epsilon) && !Float8E4M3.IsSubnormal(Float8E4M3.MinNormal), Is.True);
        });
    }

    // Hand values; each is also checked against the oracle.
    [TestCase(0x3F88_0000u, (byte)0x38, TestName = "Tie 1 + 2^-4 to even 1")]
    [TestCase(0x3F98_0000u, (byte)0x3A, TestName = "Tie 1.1875 from odd 1.125 up to 1.25")]
    [TestCase(0x3F88_0001u, (byte)0x39, TestName = "Just above a tie rounds up")]
    [TestCase(0x3F87_FFFFu, (byte)0x38, TestName = "Just below a tie rounds down")]
    [TestCase(0x3F97_FFFFu, (byte)0x39, TestName = "Just below a tie from odd rounds down")]
    [TestCase(0xBF88_0000u, (byte)0xB8, TestName = "Negative tie to even stays")]
    [TestCase(0xBF98_0000u, (byte)0xBA, TestName = "Negative tie from odd rounds away")]
    [TestCase(0x3FF8_0000u, (byte)0x40, TestName = "Tie 1.9375 carries into the exponent (2)")]
    [TestCase(0x3C88_0000u, (byte)0x08, TestName = "Tie above the smallest normal to even")]
    [TestCase(0x3C98_0000u, (byte)0x0A, TestName = "Tie in the lowest normal binade from odd")]
    [TestCase(0x3B40_0000u, (byte)0x02, TestName = "Subnormal tie 1.5 x 2^-9 to even 2")]
    [TestCase(0x3BA0_0000u, (byte)0x02, TestName = "Subnormal tie 2.5 x 2^-9 to even 2")]
    [TestCase(0x3C50_0000u, (byte)0x06, TestName = "Subnormal tie 6.5 x 2^-9 to even 6")]
    [TestCase(0x3C70_0000u, (byte)0x08, TestName = "Largest subnormal tie becomes the smallest normal")]
    [TestCase(0x3C7F_FFFFu, (byte)0x08, TestName = "Just below 2^-6 rounds to the smallest normal")]
    [TestCase(0x3B00_0000u, (byte)0x01, TestName = "Smallest subnormal 2^-9 exact")]
    [TestCase(0x3A80_0000u, (byte)0x00, TestName = "Half the smallest subnormal: tie to even +0")]
    [TestCase(0x3A80_0001u, (byte)0x01, TestName = "Just above half the smallest subnormal rounds up")]
    [TestCase(0x3A7F_FFFFu, (byte)0x00, TestName = "Just below half the smallest subnormal underflows")]
    [TestCase(0xBA80_0000u, (byte)0x80, TestName = "Negative half of the smallest subnormal: -0")]
    [TestCase(0xBA80_0001u, (byte)0x81, TestName = "Negative just above half: -2^-9")]
    [TestCase(0x0000_0001u, (byte)0x00, TestName = "Smallest float subnormal underflows to +0")]
    [TestCase(0x8000_0001u, (byte)0x80, TestName = "Negative tiny float underflows to -0")]
    [TestCase(0x0000_0000u, (byte)0x00, TestName = "+0")]
    [TestCase(0x8000_0000u, (byte)0x80, TestName = "-0 preserved")]
    public void FromFloatRoundsToNearestEven(uint floatBits, byte expected)
    {
        float f = BitConverter.UInt32BitsToSingle(floatBits);
        Assert.That(Bits(f), Is.EqualTo(expected), $"float bits 0x{floatBits:X8} ({f})");
        Assert.That(Bits((double)f), Is.EqualTo(expected), "through double");
        Assert.That(OracleBits(f), Is.EqualTo(expected), "test oracle disagrees with the hand value");
    }

    // The overflow policy, as PyTorch's fp8e4m3fn_from_fp32_value behaves: nothing saturates; values round to
    // nearest even with 0x7F (NaN) standing where 480 would be, and everything from 480 up is NaN.
    [TestCase(0x43E0_0000u, (byte)0x7E, TestName = "448 is MaxValue")]
    [TestCase(0x43E0_8000u, (byte)0x7E, TestName = "449 rounds down to 448")]
    [TestCase(0x43E7_FFFFu, (byte)0x7E, TestName = "Largest float below 464 rounds to 448")]
    [TestCase(0x43E8_0000u, (byte)0x7E, TestName = "464 (the midpoint to 480) is a tie: to the even 448")]
    [TestCase(0x43E8_0001u, (byte)0x7F, TestName = "Next float above 464 rounds to the NaN pattern")]
    [TestCase(0x43E8_8000u, (byte)0x7F, TestName = "465 is NaN")]
    [TestCase(0x43EF_FFFFu, (byte)0x7F, TestName = "Just below 480 is NaN")]
    [TestCase(0x43F0_0000u, (byte)0x7F, TestName = "480 is NaN")]
    [TestCase(0x447A_0000u, (byte)0x7F, TestName = "1000 is NaN")]
    [TestCase(0x7F7F_FFFFu, (byte)0x7F, TestName = "float.MaxValue is NaN")]
    [TestCase(0xC3E8_0000u, (byte)0xFE, TestName = "-464 rounds to -448")]
    [TestCase(0xC3E8_0001u, (byte)0xFF, TestName = "Beyond -464 is NaN with the sign set (0xFF)")]
    [TestCase(0xFF7F_FFFFu, (byte)0xFF, TestName = "float.MinValue is 0xFF")]
    [TestCase(0x7F80_0000u, (byte)0x7F, TestName = "+infinity is NaN 0x7F")]
    [TestCase(0xFF80_0000u, (byte)0xFF, TestName = "-infinity is NaN 0xFF")]
    [TestCase(0x7FC0_0000u, (byte)0x7F, TestName = "Quiet NaN")]
    [TestCase(0xFFC0_0000u, (byte)0xFF, TestName = "Negative quiet NaN keeps its sign")]
    [TestCase(0x7F80_0001u, (byte)0x7F, TestName = "Signalling NaN")]
    [TestCase(0x7FFF_FFFFu, (byte)0x7F, TestName = "NaN with a full payload")]
    public void OverflowInfinityAndNaNGiveNaN(uint floatBits, byte expected)
    {
        float f = BitConverter.UInt32BitsToSingle(floatBits);
        var x = (Float8E4M3)f;
        Assert.Multiple(() =>
        {
            Assert.That(x.ToBits(), Is.EqualTo(expected), $"float bits 0x{floatBits:X8} ({f})");
            Assert.That(Bits((double)f), Is.EqualTo(expected), "through double");
            Assert.That(OracleBits(f), Is.EqualTo(expected), "test oracle disagrees with the hand value");
            Assert.That(Float8E4M3.IsNaN(x), Is.EqualTo((expected & 0x7F) == 0x7F));
            Assert.That(Float8E4M3.IsNegative(x), Is.EqualTo(float.IsNegative(f)), "sign kept");
        });
    }

    [Test]
    public void HalfInputsFollowTheSamePolicy()
    {
        Assert.Multiple(() =>
        {
            Assert.That(((Float8E4M3)(Half)464f).ToBits(), Is.EqualTo((byte)0x7E));
            Assert.That(((Float8E4M3)(Half)465f).ToBits(), Is.EqualTo((byte)0x7F));
            Assert.That(((Float8E4M3)Half.MaxValue).ToBits(), Is.EqualTo((byte)0x7F));
            Assert.That(((Float8E4M3)Half.NegativeInfinity).ToBits(), Is.EqualTo((byte)0xFF));
            Assert.That(Float8E4M3.IsNaN((Float8E4M3)Half.NaN), Is.True);
            Assert.That((float)(Float8E4M3)(Half)0.3f, Is.EqualTo(0.3125f));
        });
    }

    [Test]
    public void EveryMidpointTiesToEvenAndItsNeighboursRoundAway()
    {
        // Both signs, every pair of adjacent non-negative patterns (0x7E with 0x7F standing for 480), as float and
        // as double: the midpoint goes to the even pattern, the next value down to the lower, the next up to the
        // upper one.
        for (int c = 0; c < 0x7F; c++)
        {
            double lo = DecodeByFormula(c);
            double hi = ValueForRounding(c + 1);
            double mid = (lo + hi) / 2; // exact
            int even = c % 2 == 0 ? c : c + 1;
            foreach (int sign in new[] { 1, -1 })
            {
                byte s = sign < 0 ? (byte)0x80 : (byte)0;
                double m = sign * mid;
                string where = $"between 0x{c:X2} and 0x{c + 1:X2}, sign {sign}";
                Assert.That(Bits((float)m), Is.EqualTo((byte)(s | even)), $"float tie {where}");
                Assert.That(Bits(m), Is.EqualTo((byte)(s | even)), $"double tie {where}");
                Assert.That(Bits(sign * MathF.BitDecrement((float)mid)), Is.EqualTo((byte)(s | c)), $"float below {where}");
                Assert.That(Bits(sign * MathF.BitIncrement((float)mid)), Is.EqualTo((byte)(s | (c + 1))), $"float above {where}");
                Assert.That(Bits(sign * Math.BitDecrement(mid)), Is.EqualTo((byte)(s | c)), $"double below {where}");
                Assert.That(Bits(sign * Math.BitIncrement(mid)), Is.EqualTo((byte)(s | (c + 1))), $"double above {where}");
            }
        }
    }

    [Test]
    public void UnderflowAndNegativeZero()
    {
        float smallest = MathF.Pow(2, -9);
        Assert.Multiple(() =>
        {
            Assert.That(Bits(smallest), Is.EqualTo((byte)0x01));
            Assert.That(Bits(-smallest), Is.EqualTo((byte)0x81));
            Assert.That(Bits(smallest * 0.75f), Is.EqualTo((byte)0x01), "three quarters rounds up");
            Assert.That(Bits(smallest * 0.5f), Is.EqualTo((byte)0x00), "half: tie to even +0");
            Assert.That(Bits(-smallest * 0.5f), Is.EqualTo((byte)0x80), "negative half: -0");
            Assert.That(Bits(-smallest * 0.25f), Is.EqualTo((byte)0x80), "negative underflow: -0");
            Assert.That(Bits(1e-30), Is.EqualTo((byte)0x00));
            Assert.That(Bits(-1e-300), Is.EqualTo((byte)0x80));
            Assert.That(Bits(-double.Epsilon), Is.EqualTo((byte)0x80));
            Assert.That(Bits(-0f), Is.EqualTo((byte)0x80));
            Assert.That(Bits(-0.0), Is.EqualTo((byte)0x80));
            Assert.That(BitConverter.SingleToUInt32Bits(Float8E4M3.NegativeZero), Is.EqualTo(0x8000_0000u), "-0 widens to -0f");
            Assert.That(Float8E4M3.IsSubnormal(Float8E4M3.NegativeZero), Is.False);
            Assert.That(Float8E4M3.IsNegative(Float8E4M3.NegativeZero), Is.True);
            Assert.That(Float8E4M3.NegativeZero == Float8E4M3.Zero, Is.True, "-0 == +0");
            Assert.That(Float8E4M3.NegativeZero.Equals(Float8E4M3.Zero), Is.True);
            Assert.That(Float8E4M3.NegativeZero.GetHashCode(), Is.EqualTo(Float8E4M3.Zero.GetHashCode()));
            Assert.That(Float8E4M3.NegativeZero.ToString(), Is.EqualTo("-0"));
        });
    }

    [Test]
    public void FromDoubleRoundsOnce()
    {
        // Rounded to float first, these land exactly on an 8-bit tie and then go to even; rounded once they are
        // off the tie. PyTorch narrows doubles to float first (its Float8_e4m3fn has only a float constructor),
        // so these few inputs are where this conversion and torch's differ.
        double aboveTie = 1.0625 + Math.Pow(2, -40);
        double aboveOverflowTie = 464 + Math.Pow(2, -30);
        Assert.Multiple(() =>
        {
            Assert.That(Bits((float)aboveTie), Is.EqualTo((byte)0x38), "via float: the tie, to even");
            Assert.That(Bits(aboveTie), Is.EqualTo((byte)0x39), "once: above the tie, up");
            Assert.That(Bits(-aboveTie), Is.EqualTo((byte)0xB9));
            Assert.That(Bits(1.0625 - Math.Pow(2, -40)), Is.EqualTo((byte)0x38));
            Assert.That(Bits((float)aboveOverflowTie), Is.EqualTo((byte)0x7E), "via float: 464, to 448");
            Assert.That(Bits(aboveOverflowTie), Is.EqualTo((byte)0x7F), "once: above 464, NaN");
            Assert.That(Bits(464.0), Is.EqualTo((byte)0x7E));
            Assert.That(Bits(1e300), Is.EqualTo((byte)0x7F));
            Assert.That(Bits(double.NegativeInfinity), Is.EqualTo((byte)0xFF));
            Assert.That(Float8E4M3.IsNaN((Float8E4M3)double.NaN), Is.True);
        });
    }

    [Test]
    public void RandomFloatsMatchIndependentOracle()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        var buffer = new byte[4];
        for (int i = 0; i < 1_000_000; i++)
        {
            random.NextBytes(buffer);
            uint bits = BitConverter.ToUInt32(buffer);
            if (i % 2 == 0)
            {
                // Mostly within and around the format's range: float exponents 2^-12 .. 2^9.
                bits = (bits & 0x807F_FFFFu) | ((uint)random.Next(127 - 12, 127 + 10) << 23);
            }

            if (i % 4 == 0)
            {
                bits = (bits & 0xFFF0_0000u) | 0x0008_0000u; // an exact tie in the normal range
            }

            float f = BitConverter.UInt32BitsToSingle(bits);
            byte expected = OracleBits(f);
            byte actual = Bits(f);
            if (actual != expected || Bits((double)f) != expected)
            {
                Assert.Fail($"seed {seed}: float 0x{bits:X8} ({f}) -> 0x{actual:X2}, expected 0x{expected:X2}");
            }
        }
    }

    [Test]
    public void RandomDoublesMatchIndependentOracle()
    {
        var random = TestRandom.ForCurrentTest(out int seed);
        var buffer = new byte[8];
        for (int i = 0; i < 1_000_000; i++)
        {
            random.NextBytes(buffer);
            ulong bits = BitConverter.ToUInt64(buffer);
            bits = (bits & 0x800F_FFFF_FFFF_FFFFUL) | ((ulong)random.Next(1023 - 12, 1023 + 10) << 52);
            if (i % 4 == 0)
            {
                // An exact tie (normal range), or one ulp either side of one.
                bits = (bits & 0xFFFE_0000_0000_0000UL) | 0x0001_0000_0000_0000UL;
                bits = (ulong)((long)bits + random.Next(-1, 2));
            }

            double d = BitConverter.UInt64BitsToDouble(bits);
            byte expected = OracleBits(d);
            byte actual = Bits(d);
            if (actual != expected)
            {
                Assert.Fail($"seed {seed}: double 0x{bits:X16} ({d}) -> 0x{actual:X2}, expected 0x{expected:X2}");
            }
        }
    }

    [Test]
    public void EqualityAndComparison()
    {
        var one = Float8E4M3.One;
        var two = (Float8E4M3)2f;
        var oneAgain = Float8E4M3.FromBits(one.ToBits());
        var nan1 = Float8E4M3.FromBits(0x7F);
        var nan2 = Float8E4M3.FromBits(0xFF);
        Assert.Multiple(() =>
        {
            Assert.That(one == (Float8E4M3)1f, Is.True);
            Assert.That(one != two, Is.True);
            Assert.That(one < two && two > one && one <= oneAgain && one >= oneAgain && !(one < oneAgain), Is.True);
            Assert.That(Float8E4M3.MinValue < Float8E4M3.MaxValue, Is.True);
#pragma warning disable CS1718 // comparison with itself is the point: IEEE says NaN != NaN
            Assert.That(nan1 == nan1, Is.False, "NaN == NaN is false");
            Assert.That(nan1 != nan1, Is.True);
#pragma warning restore CS1718
            Assert.That(nan1 < one || nan1 > one || nan1 <= one || nan1 >= one, Is.False, "NaN is unordered");
            Assert.That(nan1.Equals(nan2), Is.True, "Equals treats both NaNs as equal");
            Assert.That(nan1.GetHashCode(), Is.EqualTo(nan2.GetHashCode()));
            Assert.That(nan1.CompareTo(Float8E4M3.MinValue), Is.LessThan(0), "NaN sorts first");
            Assert.That(one.CompareTo(two), Is.LessThan(0));
            Assert.That(two.CompareTo(one), Is.GreaterThan(0));
            Assert.That(one.CompareTo((object?)null), Is.GreaterThan(0));
            Assert.That(() => one.CompareTo((object)1f), Throws.ArgumentException);
            Assert.That(one.Equals((object)1f), Is.False, "a boxed float is not a Float8E4M3");
            Assert.That(one.Equals((object)(Float8E4M3)1f), Is.True);
        });
    }

    [Test]
    public void ToStringIsShortestRoundTrip()
    {
        Assert.Multiple(() =>
        {
            Assert.That(((Float8E4M3)(-2.5f)).ToString(), Is.EqualTo("-2.5"));
            Assert.That(Float8E4M3.MaxValue.ToString(), Is.EqualTo("448"));
            Assert.That(Float8E4M3.Epsilon.ToString(), Is.EqualTo("0.002"));
            Assert.That(((Float8E4M3)0.1f).ToString(), Is.EqualTo("0.1"));
            Assert.That(Float8E4M3.NaN.ToString(), Is.EqualTo("NaN"));
            Assert.That(Float8E4M3.FromBits(0xFF).ToString(), Is.EqualTo("NaN"));
            Assert.That(Float8E4M3.One.ToString("F2", System.Globalization.CultureInfo.InvariantCulture), Is.EqualTo("1.00"));
            for (int i = 0; i < 256; i++)
            {
                var x = Float8E4M3.FromBits((byte)i);
                if (!Float8E4M3.IsNaN(x))
                {
                    var back = (Float8E4M3)double.Parse(x.ToString(), System.Globalization.CultureInfo.InvariantCulture);
                    Assert.That(back.ToBits(), Is.EqualTo((byte)i), $"0x{i:X2} \"{x}\"");
                }
            }
        });
    }
}
