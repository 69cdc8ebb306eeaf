namespace FlashAttn.Internal;

/// <summary>
/// The reference-side twin of <c>native/kernels/common/philox.cuh</c>: Random123's Philox4x32 and
/// FlashAttention-2's dropout stream (which random byte each element of a call reads, and the quantised keep test),
/// so that the float64 reference can reproduce a dropout call's mask bit for bit. Nothing uses it yet (issue 14);
/// <c>../shared/FEATURES.md</c> section 1 is the specification, and the formulas are those of philox.cuh:
/// key = (lo32(seed), hi32(seed)); counter = (lo32(o), hi32(o), r / 16, c / 32) with
/// o = offset + (b * H + h) * 32 + lane; lane = 4 * (r % 8) + (c % 8) / 2;
/// byte = 8 * (nt / 2) + 4 * (nt % 2) + 2 * ((r % 16) / 8) + (c % 2) with nt = (c % 32) / 8; kept iff
/// byte &lt;= floor(float(1 - p) * 255).
/// </summary>
internal static class Philox
{
    private const uint M0 = 0xD2511F53u;
    private const uint M1 = 0xCD9E8D57u;
    private const uint W0 = 0x9E3779B9u;
    private const uint W1 = 0xBB67AE85u;

    /// <summary>The rounds of FlashAttention-2's dropout generator (the standard Philox4x32 has 10).</summary>
    public const int DropoutRounds = 7;

    /// <summary>
    /// Philox4x32 with <paramref name="rounds"/> rounds of counter (c0..c3) under key (k0, k1); the key is bumped
    /// between rounds (rounds - 1 bumps), as in Random123.
    /// </summary>
    public static (uint W0, uint W1, uint W2, uint W3) Generate(
        int rounds, uint c0, uint c1, uint c2, uint c3, uint k0, uint k1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rounds, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(rounds, 16);
        for (int i = 0; i < rounds; i++)
        {
            if (i > 0)
            {
                unchecked
                {
                    k0 += W0;
                    k1 += W1;
                }
            }

            ulong p0 = (ulong)M0 * c0;
            ulong p1 = (ulong)M1 * c2;
            uint x0 = (uint)(p1 >> 32) ^ c1 ^ k0;
            uint x1 = (uint)p1;
            uint x2 = (uint)(p0 >> 32) ^ c3 ^ k1;
            uint x3 = (uint)p0;
            (c0, c1, c2, c3) = (x0, x1, x2, x3);
        }

        return (c0, c1, c2, c3);
    }

    /// <summary>The lane (0..31) whose Philox call serves element (r, c) of its 16x32 tile.</summary>
    public static int Lane(uint r, uint c) => (int)((4 * (r % 8)) + ((c % 8) / 2));

    /// <summary>The byte (0..15) of that call's output that element (r, c) reads.</summary>
    public static int ByteIndex(uint r, uint c)
    {
        uint nt = (c % 32) / 8;
        return (int)((8 * (nt / 2)) + (4 * (nt % 2)) + (2 * ((r % 16) / 8)) + (c % 2));
    }

    /// <summary>The Philox offset of <paramref name="lane"/> of (batch b, query head h) with H query heads.</summary>
    public static ulong LaneOffset(ulong offset, int b, int h, int heads, int lane) =>
        unchecked(offset + (((((ulong)b) * (ulong)heads) + (ulong)h) * 32) + (ulong)lane);

    /// <summary>
    /// The random byte (0..255) of element (r, c), the query row and key column within the sequence, of batch
    /// <paramref name="b"/> (for varlen: the sequence's index) and query head <paramref name="h"/> of
    /// <paramref name="heads"/>, under the call's (seed, offset).
    /// </summary>
    public static uint DropoutByte(ulong seed, ulong offset, int b, int h, int heads, uint r, uint c)
    {
        ulong o = LaneOffset(offset, b, h, heads, Lane(r, c));
        var w = Generate(DropoutRounds, (uint)o, (uint)(o >> 32), r / 16, c / 32, (uint)seed, (uint)(seed >> 32));
        int k = ByteIndex(r, c);
        uint word = (k / 4) switch { 0 => w.W0, 1 => w.W1, 2 => w.W2, _ => w.W3 };
        return (word >> (8 * (k % 4))) & 0xFFu;
    }

    /// <summary>
    /// The quantised keep threshold of drop probability <paramref name="p"/> in [0, 1): FA2 takes 1 - p in float
    /// and then floor(keep * 255.0), so the float step is kept (p = 0.6 gives 101, not the double formula's 102).
    /// </summary>
    public static uint DropoutThreshold(float p)
    {
        float keep = 1f - p;
        return (uint)Math.Floor((double)keep * 255.0);
    }

    /// <summary>Whether element (r, c) is kept: its byte is at most <paramref name="threshold"/>.</summary>
    public static bool DropoutKeep(ulong seed, ulong offset, int b, int h, int heads, uint r, uint c, uint threshold) =>
        DropoutByte(seed, offset, b, h, heads, r, c) <= threshold;
}
