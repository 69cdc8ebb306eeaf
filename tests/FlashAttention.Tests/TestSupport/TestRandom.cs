using System.Text;
using NUnit.Framework;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Random numbers for tests: the seed is a stable hash of the running test's full name (parameters
/// included), so every case gets its own inputs and a failure reproduces on the next run. Setting
/// FA_TEST_SEED mixes another value in, to explore more inputs.
/// </summary>
internal static class TestRandom
{
    /// <summary>A seed for the current test case, optionally salted.</summary>
    public static int SeedForCurrentTest(string salt = "")
    {
        string name = TestContext.CurrentContext.Test.FullName + "|" + salt;
        uint hash = 2166136261u; // FNV-1a
        foreach (byte c in Encoding.UTF8.GetBytes(name))
        {
            hash = (hash ^ c) * 16777619u;
        }

        string? extra = Environment.GetEnvironmentVariable("FA_TEST_SEED");
        if (int.TryParse(extra, out int e))
        {
            hash ^= (uint)e * 0x9E3779B9u;
        }

        return (int)(hash & 0x7FFF_FFFF);
    }

    /// <summary>A Random seeded for the current test; put the seed in failure messages.</summary>
    public static Random ForCurrentTest(out int seed, string salt = "")
    {
        seed = SeedForCurrentTest(salt);
        return new Random(seed);
    }

    /// <summary>Standard normal samples (Box-Muller), never all zero.</summary>
    public static float[] Normal(Random random, int count, double std = 1.0)
    {
        var result = new float[count];
        for (int i = 0; i < count; i++)
        {
            double u1 = 1.0 - random.NextDouble();
            double u2 = random.NextDouble();
            result[i] = (float)(std * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2));
        }

        return result;
    }

    /// <summary>Uniform samples in [lo, hi).</summary>
    public static double[] Uniform(Random random, int count, double lo, double hi)
    {
        var result = new double[count];
        for (int i = 0; i < count; i++)
        {
            result[i] = lo + (hi - lo) * random.NextDouble();
        }

        return result;
    }
}
