using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

[TestFixture]
[Category("Cpu")]
public sealed class BFloat16Tests
{
    private static bool IsQuietNaNBits(ushort bits) => (bits & 0x7F80) == 0x7F80 && (bits & 0x0040) != 0;

    [TestCase(0x3F80_8000u, (ushort)0x3F80, TestName = "Tie below even stays (1 + 2^-8 -> 1)")]
    [TestCase(0x3F81_8000u, (ushort)0x3F82, TestName = "Tie above odd rounds up to even")]
    [TestCase(0xBF80_8000u, (ushort)0xBF80, TestName = "Negative tie to even stays")]
    [TestCase(0xBF81_8000u, (ushort)0xBF82, TestName = "Negative tie from odd rounds away")]
    [TestCase(0x3F80_8001u, (ushort)0x3F81, TestName = "Just above a tie rounds up")]
    [TestCase(0x3F80_7FFFu, (ushort)0x3F80, TestName = "Just below a tie rounds down")]
    [TestCase(0x3F81_7FFFu, (ushort)0x3F81, TestName = "Just below a tie from odd rounds down")]
    [TestCase(0x3FFF_8000u, (ushort)0x4000, TestName = "Tie carries into the exponent")]
    [TestCase(0x0000_8000u, (ushort)0x0000, TestName = "Subnormal tie to even zero")]
    [TestCase(0x0001_8000u, (ushort)0x0002, TestName = "Subnormal tie from odd rounds up")]
    [TestCase(0x007F_8000u, (ushort)0x0080, TestName = "Largest subnormal tie becomes smallest normal")]
    [TestCase(0x0000_0001u, (ushort)0x0000, TestName = "Tiny float subnormal flushes to zero by rounding")]
    [TestCase(0x8000_0001u, (ushort)0x8000, TestName = "Tiny negative rounds to negative zero")]
    [TestCase(0x7F7F_7FFFu, (ushort)0x7F7F, TestName = "Below the overflow tie stays at MaxValue")]
    [TestCase(0x7F7F_8000u, (ushort)0x7F80, TestName = "MaxValue tie overflows to infinity (odd mantissa)")]
    [TestCase(0x7F7F_FFFFu, (ushort)0x7F80, TestName = "float.MaxValue overflows to +infinity")]
    [TestCase(0xFF7F_FFFFu, (ushort)0xFF80, TestName = "float.MinValue overflows to -infinity")]
    [TestCase(0x7F80_0000u, (ushort)0x7F80, TestName = "+infinity")]
    [TestCase(0xFF80_0000u, (ushort)0xFF80, TestName = "-infinity")]
    [TestCase(0x0000_0000u, (ushort)0x0000, TestName = "+0")]
    [TestCase(0x8000_0000u, (ushort)0x8000, TestName = "-0")]
    public void FromFloatRoundsToNearestEven(uint floatBits, ushort expected)
    {
        float f = BitConverter.UInt32BitsToSingle(floatBits);
        Assert.That(((BFloat16)f).ToBits(), Is.EqualTo(expected), $"float bits 0x{floatBits:X8}");
        Assert.That(Numerics.Bf16BitsOracle(f), Is.EqualTo(expected), "test oracle disagrees with the hand value");
    }

    [TestCase(0x7FC0_0000u, TestName = "Quiet NaN")]
    [TestCase(0xFFC0_0000u, TestName = "Negative quiet NaN")]
    [TestCase(0x7F80_0001u, TestName = "Signalling NaN with payload only in the dropped bits")]
    [TestCase(0xFF80_0001u, TestName = "Negative signalling NaN with low payload")]
    [TestCase(0x7FBF_FFFFu, TestName = "Signalling NaN with full payload")]
    [TestCase(0x7FFF_FFFFu, TestName = "Quiet NaN whose rounding would carry")]
    public void NaNStaysQuietNaN(uint floatBits)
    {
        float f = BitConverter.UInt32BitsToSingle(floatBits);
        Assume.That(float.IsNaN(f));
        var b = (BFloat16)f;
        Assert.Multiple(() =>
        {
            Assert.That(BFloat16.IsNaN(b), Is.True, $"0x{floatBits:X8} -> 0x{b.ToBits():X4}");
            Assert.That(IsQuietNaNBits(b.ToBits()), Is.True, $"quiet bit: 0x{b.ToBits():X4}");
            Assert.That(float.IsNaN((float)b), Is.True);
            Assert.That(BFloat16.IsNegative(b), Is.EqualTo((floatBits & 0x8000_0000u) != 0), "sign kept");
        });
    }

    [Test]
    public void NaNFromDoubleAndHalfStaysNaN()
    {
        Assert.Multiple(() =>
        {
            Assert.That(BFloat16.IsNaN((BFloat16)double.NaN), Is.True);
            Assert.That(IsQuietNaNBits(((BFloat16)double.NaN).ToBits()), Is.True);
            Assert.That(BFloat16.IsNaN((BFloat16)Half.NaN), Is.True);
            Assert.That(double.IsNaN((double)BFloat16.NaN), Is.True);
        });
    }

    [Test]
    public void InfinitiesAndOverflow()
    {
        Assert.Multiple(() =>
        {
            Assert.That((float)(BFloat16)float.PositiveInfinity, Is.EqualTo(float.PositiveInfinity));
            Assert.That((float)(BFloat16)float.NegativeInfinity, Is.EqualTo(float.NegativeInfinity));
            Assert.That((float)(BFloat16)1e39, Is.EqualTo(float.PositiveInfinity), "double beyond float range");
            Assert.That((float)(BFloat16)(-3.4e38f), Is.EqualTo(float.NegativeInfinity));
            Assert.That(((BFloat16)3.39e38f).ToBits(), Is.EqualTo((ushort)0x7F7F), "just above MaxValue rounds down to it");
            Assert.That(BFloat16.IsInfinity(BFloat16.PositiveInfinity), Is.True);
            Assert.That(BFloat16.IsFinite(BFloat16.MaxValue), Is.True);
            Assert.That((float)BFloat16.MaxValue, Is.EqualTo(BitConverter.UInt32BitsToSingle(0x7F7F_0000u)));
        });
    }

    [Test]
    public void Subnormals()
    {
        float smallest = BitConverter.UInt32BitsToSingle(0x0001_0000u); // 2^-133
        Assert.Multiple(() =>
        {
            Assert.That((float)BFloat16.Epsilon, Is.EqualTo(smallest));
            Assert.That(smallest, Is.EqualTo(MathF.Pow(2, -133)));
            Assert.That(BFloat16.IsSubnormal((BFloat16)smallest), Is.True);
            Assert.That(BFloat16.IsSubnormal(BFloat16.MinNormal), Is.False);
            Assert.That((float)BFloat16.MinNormal, Is.EqualTo(MathF.Pow(2, -126)));
            Assert.That(((BFloat16)(smallest * 0.5f)).ToBits(), Is.EqualTo((ushort)0), "half the smallest: tie to even 0");
            Assert.That(((BFloat16)(smallest * 1.5f)).ToBits(), Is.EqualTo((ushort)0x0002), "1.5 x smallest: tie to even 2");
            Assert.That(((BFloat16)(smallest * 0.75f)).ToBits(), Is.EqualTo((ushort)0x0001), "above half rounds up");
            Assert.That(((BFloat16)(-smallest * 3f)).ToBits(), Is.EqualTo((ushort)0x8003), "exact negative subnormal");
        });
    }

    [Test]
    public void AllBitPatternsRoundTripThroughFloat()
    {
        int mismatches = 0;
        string first = string.Empty;
        for (int i = 0; i <= 0xFFFF; i++)
        {
            ushort bits = (ushort)i;
            var b = BFloat16.FromBits(bits);
            float f = b;
            bool ok;
            if (BFloat16.IsNaN(b))
            {
                var back = (BFloat16)f;
                ok = float.IsNaN(f) && BFloat16.IsNaN(back) && IsQuietNaNBits(back.ToBits());
            }
            else
            {
                ok = BitConverter.SingleToUInt32Bits(f) == (uint)bits << 16 && ((BFloat16)f).ToBits() == bits
                    && ((BFloat16)(double)f).ToBits() == bits;
            }

            if (!ok && mismatches++ == 0)
            {
                first = $"0x{bits:X4}";
            }
        }

        Assert.That(mismatches, Is.Zero, $"first mismatch at {first}");
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
            if (i % 4 == 0)
            {
                bits = (bits & 0xFFFF_0000u) | 0x8000u; // force exact ties often
            }

            float f = BitConverter.UInt32BitsToSingle(bits);
            ushort expected = Numerics.Bf16BitsOracle(f);
            ushort actual = ((BFloat16)f).ToBits();
            bool ok = float.IsNaN(f) ? BFloat16.IsNaN(BFloat16.FromBits(actual)) : actual == expected;
            if (!ok)
            {
                Assert.Fail($"seed {seed}: float 0x{bits:X8} -> 0x{actual:X4}, expected 0x{expected:X4}");
            }
        }
    }

    [Test]
    public void FromDoubleRoundsOnce()
    {
        // 1 + 2^-8 + 2^-40: rounding to float first lands exactly on the bf16 tie 1 + 2^-8, which would then
        // round to even (1.0). Rounded once, the value is above the tie and goes up to 1 + 2^-7.
        double above = 1.0 + Math.Pow(2, -8) + Math.Pow(2, -40);
        double below = 1.0 + Math.Pow(2, -8) - Math.Pow(2, -40);
        double tie = 1.0 + Math.Pow(2, -8);
        Assert.Multiple(() =>
        {
            Assert.That(((BFloat16)above).ToBits(), Is.EqualTo((ushort)0x3F81));
            Assert.That(((BFloat16)below).ToBits(), Is.EqualTo((ushort)0x3F80));
            Assert.That(((BFloat16)tie).ToBits(), Is.EqualTo((ushort)0x3F80));
            Assert.That(((BFloat16)(-above)).ToBits(), Is.EqualTo((ushort)0xBF81));
            Assert.That(((BFloat16)0.1).ToBits(), Is.EqualTo(((BFloat16)0.1f).ToBits()));
        });
    }

    [Test]
    public void HalfConversionIsExactWhereRepresentable()
    {
        Assert.Multiple(() =>
        {
            Assert.That((float)(BFloat16)(Half)1.5f, Is.EqualTo(1.5f));
            Assert.That((float)(BFloat16)Half.MaxValue, Is.EqualTo(65536f), "65504 rounds to 2^16 in bf16");
            Assert.That((float)(BFloat16)Half.NegativeInfinity, Is.EqualTo(float.NegativeInfinity));
        });
    }

    [Test]
    public void EqualityAndComparison()
    {
        var one = BFloat16.One;
        var two = (BFloat16)2f;
        var oneAgain = BFloat16.FromBits(one.ToBits());
        var nan1 = BFloat16.FromBits(0x7FC0);
        var nan2 = BFloat16.FromBits(0xFFC1);
        Assert.Multiple(() =>
        {
            Assert.That(one == (BFloat16)1f, Is.True);
            Assert.That(one != two, Is.True);
            Assert.That(one < two && two > one && one <= oneAgain && one >= oneAgain && !(one < oneAgain), Is.True);
            Assert.That(BFloat16.Zero == BFloat16.NegativeZero, Is.True, "+0 == -0");
            Assert.That(BFloat16.Zero.Equals(BFloat16.NegativeZero), Is.True);
            Assert.That(BFloat16.Zero.GetHashCode(), Is.EqualTo(BFloat16.NegativeZero.GetHashCode()));
#pragma warning disable CS1718 // comparison with itself is the point: IEEE says NaN != NaN
            Assert.That(nan1 == nan1, Is.False, "NaN == NaN is false");
            Assert.That(nan1 != nan1, Is.True);
#pragma warning restore CS1718
            Assert.That(nan1 < one || nan1 > one || nan1 <= one || nan1 >= one, Is.False, "NaN is unordered");
            Assert.That(nan1.Equals(nan2), Is.True, "Equals treats all NaNs as equal");
            Assert.That(nan1.GetHashCode(), Is.EqualTo(nan2.GetHashCode()));
            Assert.That(nan1.CompareTo(one), Is.LessThan(0), "NaN sorts first");
            Assert.That(one.CompareTo(two), Is.LessThan(0));
            Assert.That(two.CompareTo(one), Is.GreaterThan(0));
            Assert.That(one.CompareTo((object?)null), Is.GreaterThan(0));
            Assert.That(() => one.CompareTo((object)1f), Throws.ArgumentException);
            Assert.That(one.Equals((object)1f), Is.False, "a boxed float is not a BFloat16");
            Assert.That(one.Equals((object)(BFloat16)1f), Is.True);
            Assert.That(((BFloat16)(-2.5f)).ToString(), Is.EqualTo("-2.5"));
        });
    }
}
