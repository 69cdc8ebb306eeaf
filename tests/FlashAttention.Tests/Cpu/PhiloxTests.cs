using FlashAttn.Internal;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The managed twin of dropout's generator (<see cref="Philox"/>) checked the way ctest philox_test checks
/// <c>native/kernels/common/philox.cuh</c>: Random123's known-answer vectors, the element -> (lane, byte) mapping
/// against FA2's walk over its accumulator fragment, the quantised thresholds, and the digest of the same fixed sweep
/// of dropout bytes (the constant comes from <c>philox_test --print-digest</c>; both tests assert it, so the C++
/// and C# streams agree on those 512 elements).
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class PhiloxTests
{
    /// <summary>The digest of the sweep below; the same constant is kSweepDigest in native/tests/philox_test.cpp.</summary>
    private const ulong SweepDigest = 0xcae0060640c2b12bUL;

    // Random123's known-answer vectors for philox4x32, rounds 7 and 10: D. E. Shaw Research, Random123,
    // tests/kat_vectors (github.com/DEShawResearch/random123, commit 9545ff6); rounds, counter, key, output.
    private static readonly (int Rounds, uint[] Ctr, uint[] Key, uint[] Out)[] Kats =
    [
        (7, [0x00000000, 0x00000000, 0x00000000, 0x00000000], [0x00000000, 0x00000000], [0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48]),
        (7, [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff], [0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662]),
        (7, [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a]),
        (10, [0x00000000, 0x00000000, 0x00000000, 0x00000000], [0x00000000, 0x00000000], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
        (10, [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
        (10, [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
    ];

    [Test]
    public void MatchesRandom123KnownAnswers()
    {
        foreach (var (rounds, ctr, key, expected) in Kats)
        {
            var w = Philox.Generate(rounds, ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1]);
            Assert.That(new[] { w.W0, w.W1, w.W2, w.W3 }, Is.EqualTo(expected),
                $"philox4x32-{rounds} counter {ctr[0]:x8} {ctr[1]:x8} {ctr[2]:x8} {ctr[3]:x8}");
        }
    }

    // FA2's walk written from its code: lane l holds accumulator values a = 0..3 of each 8-column MMA tile
    // (row l/4 + 8*(a/2), column 2*(l%4) + a%2); convert_layout_acc_dropout makes i = a + 4*t (t the tile's parity)
    // and apply_dropout reads rnd_8[j*8 + i] for tile 2*j + t of the 32 columns.
    private static (int Lane, int Byte)[,] Fa2Walk()
    {
        var slots = new (int Lane, int Byte)[16, 32];
        var seen = new bool[16, 32];
        for (int lane = 0; lane < 32; lane++)
        {
            for (int j = 0; j < 2; j++)
            {
                for (int t = 0; t < 2; t++)
                {
                    for (int a = 0; a < 4; a++)
                    {
                        int r = (lane / 4) + (8 * (a / 2));
                        int c = (8 * ((2 * j) + t)) + (2 * (lane % 4)) + (a % 2);
                        Assert.That(seen[r, c], Is.False, $"FA2 walk serves ({r}, {c}) twice");
                        seen[r, c] = true;
                        slots[r, c] = (lane, (8 * j) + (4 * t) + a);
                    }
                }
            }
        }

        return slots;
    }

    [Test]
    public void MappingMatchesFa2WalkAndCoversA64x128TileOnce()
    {
        var walk = Fa2Walk();
        var used = new HashSet<(uint, uint, int, int)>();
        for (uint r = 0; r < 64; r++)
        {
            for (uint c = 0; c < 128; c++)
            {
                int lane = Philox.Lane(r, c), b = Philox.ByteIndex(r, c);
                Assert.That((lane, b), Is.EqualTo(walk[r % 16, c % 32]), $"({r}, {c})");
                used.Add((r / 16, c / 32, lane, b));
            }
        }

        Assert.That(used, Has.Count.EqualTo(64 * 128), "every element gets its own (tile, lane, byte)");
        for (uint tr = 0; tr < 4; tr++)
        {
            for (uint tc = 0; tc < 4; tc++)
            {
                for (int lane = 0; lane < 32; lane++)
                {
                    int n = Enumerable.Range(0, 16).Count(k => used.Contains((tr, tc, lane, k)));
                    Assert.That(n, Is.EqualTo(16), "one Philox call per (lane, 16x32 tile) serves 16 elements");
                }
            }
        }
    }

    [TestCase(0u, 0u, 0, 0)]
    [TestCase(0u, 1u, 0, 1)]
    [TestCase(8u, 0u, 0, 2)]
    [TestCase(8u, 1u, 0, 3)]
    [TestCase(0u, 8u, 0, 4)]
    [TestCase(0u, 16u, 0, 8)]
    [TestCase(0u, 24u, 0, 12)]
    [TestCase(15u, 31u, 31, 15)]
    [TestCase(1u, 2u, 5, 0)]
    [TestCase(7u, 6u, 31, 0)]
    [TestCase(9u, 27u, 5, 15)]
    [TestCase(16u, 32u, 0, 0)]
    [TestCase(23u, 45u, 30, 5)]
    [TestCase(110u, 1001u, 24, 7)]
    public void WorkedLaneAndByteExamples(uint r, uint c, int lane, int b)
    {
        Assert.That(Philox.Lane(r, c), Is.EqualTo(lane));
        Assert.That(Philox.ByteIndex(r, c), Is.EqualTo(b));
    }

    [Test]
    public void SeedZeroOffsetZeroLaneZeroReadsTheSevenRoundZeroVector()
    {
        uint[] w = [0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48];
        int seen = 0;
        for (uint r = 0; r < 16; r++)
        {
            for (uint c = 0; c < 32; c++)
            {
                if (Philox.Lane(r, c) != 0)
                {
                    continue;
                }

                int k = Philox.ByteIndex(r, c);
                Assert.That(Philox.DropoutByte(0, 0, 0, 0, 1, r, c), Is.EqualTo((w[k / 4] >> (8 * (k % 4))) & 0xFF));
                seen++;
            }
        }

        Assert.That(seen, Is.EqualTo(16));
        Assert.That(Philox.DropoutByte(0, 0, 0, 0, 1, 0, 0), Is.EqualTo(0x09u));
        Assert.That(Philox.DropoutByte(0, 0, 0, 0, 1, 0, 1), Is.EqualTo(0xb7u));
        Assert.That(Philox.DropoutByte(0, 0, 0, 0, 1, 8, 0), Is.EqualTo(0x6fu));
        Assert.That(Philox.DropoutByte(0, 0, 0, 0, 1, 8, 25), Is.EqualTo(0x4fu));
    }

    [Test]
    public void CounterIsOffsetPlusHeadSlotPlusLaneThenTiles()
    {
        // o = offset + (b*H + h)*32 + lane across the 32-bit carry; then (r/16, c/32); key (lo, hi) of the seed.
        const ulong seed = 0x0123456789abcdefUL, offset = 0xffffffffUL - 40;
        ulong o = offset + 160 + 21; // (1*3 + 2)*32 = 160; (37, 75) is lane 21
        Assert.That(o >> 32, Is.EqualTo(1UL));
        var w = Philox.Generate(7, (uint)o, (uint)(o >> 32), 2, 2, 0x89abcdefu, 0x01234567u);
        int k = Philox.ByteIndex(37, 75);
        uint word = new[] { w.W0, w.W1, w.W2, w.W3 }[k / 4];
        Assert.That(Philox.DropoutByte(seed, offset, 1, 2, 3, 37, 75), Is.EqualTo((word >> (8 * (k % 4))) & 0xFF));
        Assert.That(Philox.LaneOffset(10, 1, 2, 4, 31) + 1, Is.EqualTo(Philox.LaneOffset(10, 1, 3, 4, 0)));
        Assert.That(Philox.LaneOffset(10, 1, 3, 4, 31) + 1, Is.EqualTo(Philox.LaneOffset(10, 2, 0, 4, 0)));
    }

    [TestCase(0.17f, 211u, 0.828125)]
    [TestCase(0.1f, 229u, 0.8984375)]
    [TestCase(0.999f, 0u, 1.0 / 256)]
    [TestCase(0.0f, 255u, 1.0)]
    [TestCase(0.5f, 127u, 0.5)]
    [TestCase(0.6f, 101u, 102.0 / 256)] // 1 - p in float (FA2); the double formula would give 102
    public void QuantisedThreshold(float p, uint threshold, double keep)
    {
        Assert.That(Philox.DropoutThreshold(p), Is.EqualTo(threshold));
        Assert.That((threshold + 1) / 256.0, Is.EqualTo(keep));
    }

    [Test]
    public void KeptFractionNearQuantisedKeepProbability()
    {
        uint t = Philox.DropoutThreshold(0.17f);
        int kept = 0;
        for (uint r = 0; r < 256; r++)
        {
            for (uint c = 0; c < 256; c++)
            {
                kept += Philox.DropoutKeep(1234, 5678, 1, 3, 4, r, c, t) ? 1 : 0;
            }
        }

        Assert.That(kept / 65536.0, Is.EqualTo(0.828125).Within(0.01));
    }

    private static ulong SplitMix64(ref ulong s)
    {
        unchecked
        {
            ulong z = s += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }

    [Test]
    public void SweepDigestMatchesTheNativeGenerator()
    {
        // The sweep of native/tests/philox_test.cpp's sweep_digest(), draw for draw: 512 elements with random seed,
        // offset (up to 2^44), H, b, h, r and c, hashed with FNV-1a over their dropout bytes.
        ulong s = 2024, digest = 0xcbf29ce484222325UL;
        for (int i = 0; i < 512; i++)
        {
            ulong seed = SplitMix64(ref s);
            ulong offset = SplitMix64(ref s) >> 20;
            int heads = (int)(SplitMix64(ref s) % 64) + 1;
            int b = (int)(SplitMix64(ref s) % 16);
            int h = (int)(SplitMix64(ref s) % (ulong)heads);
            uint r = (uint)(SplitMix64(ref s) % 65536);
            uint c = (uint)(SplitMix64(ref s) % 65536);
            uint u = Philox.DropoutByte(seed, offset, b, h, heads, r, c);
            digest = unchecked((digest ^ u) * 0x100000001b3UL);
        }

        Assert.That(digest, Is.EqualTo(SweepDigest), $"digest 0x{digest:x16}");
    }
}
