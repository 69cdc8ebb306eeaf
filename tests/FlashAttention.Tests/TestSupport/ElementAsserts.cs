using NUnit.Framework;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Element-by-element comparisons of float64 results, for the reference tests: every element is checked and the
/// first mismatch is named with its index and the case's context.
/// </summary>
internal static class ElementAsserts
{
    /// <summary>
    /// |actual - expected| &lt;= <paramref name="tolerance"/> * (1 + |expected|) for every element; an infinite expected
    /// element must be matched exactly.
    /// </summary>
    public static void Close(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, double tolerance, string what, string context)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what} ({context})");
        for (int i = 0; i < actual.Length; i++)
        {
            double a = actual[i], e = expected[i];
            bool ok = double.IsInfinity(e) ? a == e : Math.Abs(a - e) <= tolerance * (1 + Math.Abs(e));
            if (!ok)
            {
                Assert.Fail($"{what}[{i}] = {a:R}, expected {e:R} ({context})");
            }
        }
    }

    /// <summary>Every element bit for bit (NaN payloads and the sign of zero included).</summary>
    public static void BitwiseEqual(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, string what, string context)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what} ({context})");
        for (int i = 0; i < actual.Length; i++)
        {
            if (BitConverter.DoubleToInt64Bits(actual[i]) != BitConverter.DoubleToInt64Bits(expected[i]))
            {
                Assert.Fail($"{what}[{i}] = {actual[i]:R}, expected exactly {expected[i]:R} ({context})");
            }
        }
    }
}
