using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The fp8 (e4m3) KV cache of C ABI 0.13 in the float64 decode reference: the saturating conversion
/// (<see cref="Float8E4M3.FromSingleSaturating"/>) and the appended elements' quantization
/// (<see cref="DecodeReference.QuantizeForCache"/>) on hand-picked values whose bytes are written out here (ties to even
/// at several exponents, subnormals down to 2^-9, 448 and above, -0, NaN, infinities, the fp32 division and the rounding
/// to q's dtype that come first); then the Float8E4M3 overloads of <see cref="DecodeReference"/> against its 16-bit
/// overloads over the dequantized cache, with the appended bytes rebuilt here element by element.
/// </summary>
[TestFixture]
[Category("Cpu")]
public sealed class ReferenceFloat8CacheTests
{
    private const DataType Bf16 = DataType.BFloat16, F16 = DataType.Float16;

    // ---- the saturating conversion ----------------------------------------------------------------------------

    /// <summary>
    /// Hand-picked floats and the byte the saturating conversion must give. Ties go to the even code (1.0625 between
    /// 1 and 1.125 goes down, 1.1875 between 1.125 and 1.25 up; likewise at 16 and at the smallest normal 2^-6);
    /// subnormals are multiples of 2^-9 (2^-10 is a tie between 0 and 2^-9, and goes to 0); every magnitude from 448 up,
    /// infinity included, gives ±448 (0x7E, 0xFE) where the plain conversion gives NaN above 464; the sign of zero is kept.
    /// </summary>
    [TestCase(0f, 0x00)]
    [TestCase(-0f, 0x80)]
    [TestCase(1.0625f, 0x38)]
    [TestCase(1.1875f, 0x3A)]
    [TestCase(-1.0625f, 0xB8)]
    [TestCase(17f, 0x58)]
    [TestCase(19f, 0x5A)]
    [TestCase(0.0166015625f, 0x08)]      // 2^-6 + 2^-10: a tie at the smallest normal, to the even 2^-6
    [TestCase(0.0185546875f, 0x0A)]      // 2^-6 + 3 * 2^-10: a tie, to the even 2^-6 + 2^-8
    [TestCase(0.001953125f, 0x01)]       // 2^-9, the smallest subnormal
    [TestCase(0.0009765625f, 0x00)]      // 2^-10: a tie between 0 and 2^-9, to the even 0
    [TestCase(0.00097656256f, 0x01)]     // just above 2^-10
    [TestCase(0.0029296875f, 0x02)]      // 3 * 2^-10: a tie, to the even 2^-8
    [TestCase(0.013671875f, 0x07)]       // 7 * 2^-9, the largest subnormal
    [TestCase(0.0146484375f, 0x08)]      // 15 * 2^-10: a tie between the largest subnormal and 2^-6, to the even 2^-6
    [TestCase(-0.0009765625f, 0x80)]     // underflows to -0
    [TestCase(-0.0029296875f, 0x82)]
    [TestCase(0.00048828125f, 0x00)]     // 2^-11
    [TestCase(448f, 0x7E)]
    [TestCase(449f, 0x7E)]
    [TestCase(464f, 0x7E)]
    [TestCase(465f, 0x7E)]               // the plain conversion: NaN
    [TestCase(480f, 0x7E)]
    [TestCase(1e30f, 0x7E)]
    [TestCase(float.MaxValue, 0x7E)]
    [TestCase(float.PositiveInfinity, 0x7E)]
    [TestCase(float.NegativeInfinity, 0xFE)]
    [TestCase(-465f, 0xFE)]
    public void SaturatingConversionGivesTheByte(float value, int expected)
    {
        byte bits = Float8E4M3.FromSingleSaturating(value).ToBits();
        Assert.That(bits, Is.EqualTo((byte)expected), $"{value:R} -> 0x{bits:X2}, expected 0x{expected:X2}");
    }

    [Test]
    public void SaturatingConversionKeepsNaN()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Float8E4M3.IsNaN(Float8E4M3.FromSingleSaturating(float.NaN)), Is.True);
            Assert.That(Float8E4M3.IsNaN(Float8E4M3.FromSingleSaturating(-float.NaN)), Is.True);
            // CUDA's satfinite conversion stores every NaN as 0x7F, whatever its sign (the kernels' appended bytes).
            Assert.That(Float8E4M3.FromSingleSaturating(BitConverter.Int32BitsToSingle(unchecked((int)0xFFC0_0001u))).ToBits(), Is.EqualTo((byte)0x7F), "a negative NaN");
            Assert.That(Float8E4M3.FromSingleSaturating(float.NaN).ToBits(), Is.EqualTo((byte)0x7F), "a positive NaN");
            Assert.That(DecodeReference.QuantizeForCache(-double.NaN, 1f, Bf16).ToBits(), Is.EqualTo((byte)0x7F), "a negative NaN appended");
        });
    }

    /// <summary>
    /// Below 448 the saturating conversion is the plain one (which Float8E4M3Tests checks against an oracle): at every
    /// code, at every midpoint between neighbouring codes and one float step either side of it.
    /// </summary>
    [Test]
    public void BelowTheLargestValueSaturatingIsThePlainConversion()
    {
        int wrong = 0;
        string first = string.Empty;
        for (int code = 0; code < 0x7E; code++)
        {
            float low = Float8E4M3.FromBits((byte)code), high = Float8E4M3.FromBits((byte)(code + 1));
            float mid = (low + high) / 2;
            foreach (float magnitude in new[] { low, mid, MathF.BitDecrement(mid), MathF.BitIncrement(mid), high })
            {
                foreach (float x in new[] { magnitude, -magnitude })
                {
                    byte saturating = Float8E4M3.FromSingleSaturating(x).ToBits(), plain = ((Float8E4M3)x).ToBits();
                    if (saturating != plain && wrong++ == 0)
                    {
                        first = $"{x:R}: saturating 0x{saturating:X2}, plain 0x{plain:X2}";
                    }
                }
            }
        }

        Assert.That(wrong, Is.Zero, first);
    }

    // ---- an appended element's quantization ---------------------------------------------------------------------

    /// <summary>
    /// QuantizeForCache(value, descale, q's dtype) on hand-picked inputs. The first three are chosen so that each step
    /// of the contract shows: 1.5859375 / 0.74632353 is 2.12500001 exactly, which would round to 2.25 (0x41), but the
    /// fp32 quotient is the tie 2.125, which goes to the even 2.0 (0x40); likewise 1.0625 (0x38) and not 1.125 for
    /// 1.9316406 / 1.8180146; the next two are quotients that the fp32 reciprocal would move across a tie (a kernel must
    /// divide); and 1.0625 + 2^-12 is rounded to q's dtype (1.0625) before the division, so it ties to
    /// 0x38 where the unrounded value would give 0x39. Then saturation, a factor of 0 (±Inf saturates, 0/0 is NaN), a
    /// negative factor, a subnormal reached through a large factor, -0 and an fp16 overflow to infinity.
    /// </summary>
    [TestCase(1.5859375, 0x3F3F0F0Fu, Bf16, 0x40)]
    [TestCase(1.5859375, 0x3F3F0F0Fu, F16, 0x40)]
    [TestCase(1.931640625, 0x3FE8B4B4u, F16, 0x38)]
    [TestCase(1.3515625, 0x3F22D2D2u, Bf16, 0x41)]                // a division: times the fp32 reciprocal gives the tie 2.125, 0x40
    [TestCase(25.625, 0x3FF2F685u, F16, 0x56)]                   // a division: 13.5, a tie to 14; times the reciprocal 13.499999 gives 13
    [TestCase(1.0625 + (1.0 / 4096), 0x3F800000u, Bf16, 0x38)]
    [TestCase(1.0625 + (1.0 / 4096), 0x3F800000u, F16, 0x38)]
    [TestCase(1.0625 + (1.0 / 128), 0x3F800000u, Bf16, 0x39)]   // bf16 keeps 1.0703125, above the tie
    [TestCase(100.0, 0x3E000000u, Bf16, 0x7E)]                  // 100 / 0.125 = 800: saturates
    [TestCase(-100.0, 0x3E000000u, F16, 0xFE)]
    [TestCase(1.0, 0x00000000u, Bf16, 0x7E)]                    // 1 / 0 = +Inf: saturates
    [TestCase(-1.0, 0x00000000u, Bf16, 0xFE)]
    [TestCase(1.0, 0xC0000000u, F16, 0xB0)]                     // 1 / -2 = -0.5
    [TestCase(0.125, 0x42800000u, Bf16, 0x01)]                  // 0.125 / 64 = 2^-9
    [TestCase(0.0625, 0x42800000u, Bf16, 0x00)]                 // 0.0625 / 64 = 2^-10: a tie, to 0
    [TestCase(-0.0, 0x3F800000u, F16, 0x80)]
    [TestCase(1e6, 0x3F800000u, F16, 0x7E)]                     // fp16 overflows to +Inf first: saturates
    [TestCase(1e6, 0x49742400u, Bf16, 0x38)]                    // bf16 999424 / 1e6 = 0.999424 -> 1
    public void QuantizeForCacheGivesTheByte(double value, uint descaleBits, DataType queryType, int expected)
    {
        float descale = BitConverter.UInt32BitsToSingle(descaleBits);
        byte bits = DecodeReference.QuantizeForCache(value, descale, queryType).ToBits();
        Assert.That(bits, Is.EqualTo((byte)expected), $"{value:R} / {descale:R} ({queryType}) -> 0x{bits:X2}, expected 0x{expected:X2}");
    }

    [Test]
    public void QuantizeForCacheKeepsNaNAndRefusesOtherQueryTypes()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Float8E4M3.IsNaN(DecodeReference.QuantizeForCache(double.NaN, 1f, Bf16)), Is.True);
            Assert.That(Float8E4M3.IsNaN(DecodeReference.QuantizeForCache(0.0, 0f, F16)), Is.True, "0 / 0");
            Assert.That(() => DecodeReference.QuantizeForCache(1.0, 1f, DataType.Float32),
                Throws.ArgumentException.With.Message.Contain("Float16 or BFloat16"));
            Assert.That(() => DecodeReference.QuantizeForCache(1.0, 1f, DataType.Float8E4M3), Throws.ArgumentException);
        });
    }

    // ---- the reference decode over an fp8 cache -----------------------------------------------------------------

    /// <summary>
    /// The Float8E4M3 overloads against the 16-bit ones: a cache of random e4m3 bytes (NaN, 0x7F, wherever no call
    /// reads: past each length, before each pad, rows outside the step), per-head or per-tensor factors that are not 1,
    /// an append (the new keys and values random values of q's dtype, some large enough to saturate), GQA, causal,
    /// cache rows and left pads; contiguous and paged (shuffled blocks). The bytes after the call must be the original
    /// ones with exactly the appended slots replaced by QuantizeForCache of the new elements with their own head's
    /// factor (built here, element by element), and the output and log-sum-exp those of the 16-bit overload over the
    /// dequantized cache (stored byte times its head's factor, in double).
    /// </summary>
    [TestCase(false, false, Bf16)]
    [TestCase(false, true, F16)]
    [TestCase(true, false, F16)]
    [TestCase(true, true, Bf16)]
    public void Float8CacheEqualsTheDequantizedCache(bool paged, bool perTensor, DataType queryType)
    {
        const int headsQ = 6, headsKv = 2, headDim = 16, seqQ = 2, seqNew = 3, blockSize = 4, pool = 4;
        int row = headsKv * headDim;
        int[] rows = [2, 0, 3];
        int[] lens = [9, 0, 14];
        int[] pads = [2, 0, 5];
        int batch = rows.Length;
        Random random = TestRandom.ForCurrentTest(out int seed);
        float[] kd = TestRandom.Uniform(random, perTensor ? 1 : headsKv, 0.02, 0.05).Select(x => (float)x).ToArray();
        float[] vd = TestRandom.Uniform(random, perTensor ? 1 : headsKv, 0.02, 0.3).Select(x => (float)x).ToArray();
        float Factor(float[] table, int element) => table[table.Length == 1 ? 0 : element % row / headDim];

        // Logical (pool row, position) -> slot: contiguous rows of `capacity`, or shuffled blocks.
        int capacity = 20, maxBlocks = capacity / blockSize, numBlocks = pool * maxBlocks;
        int[] table = Enumerable.Range(0, numBlocks).ToArray();
        random.Shuffle(table);
        long Slot(int r, int p) => paged ? ((long)table[(r * maxBlocks) + (p / blockSize)] * blockSize) + (p % blockSize) : ((long)r * capacity) + p;

        // The cache: 0x7F everywhere, random e4m3 values (quantized N(0, 1) / factor) in each step row's valid positions.
        var k8 = Enumerable.Repeat(Float8E4M3.NaN, pool * capacity * row).ToArray();
        var v8 = (Float8E4M3[])k8.Clone();
        for (int b = 0; b < batch; b++)
        {
            for (int p = pads[b]; p < lens[b]; p++)
            {
                float[] kr = TestRandom.Normal(random, row), vr = TestRandom.Normal(random, row);
                for (int e = 0; e < row; e++)
                {
                    k8[(Slot(rows[b], p) * row) + e] = Float8E4M3.FromSingleSaturating(kr[e] / Factor(kd, e));
                    v8[(Slot(rows[b], p) * row) + e] = Float8E4M3.FromSingleSaturating(vr[e] / Factor(vd, e));
                }
            }
        }

        double[] q = Rounded(TestRandom.Normal(random, batch * seqQ * headsQ * headDim), queryType);
        double[] kn = Rounded(TestRandom.Normal(random, batch * seqNew * row, std: 20), queryType);  // std 20 / 0.02: some saturate
        double[] vn = Rounded(TestRandom.Normal(random, batch * seqNew * row), queryType);

        // What the cache must hold after the call.
        var expectK = (Float8E4M3[])k8.Clone();
        var expectV = (Float8E4M3[])v8.Clone();
        int saturated = 0;
        for (int b = 0; b < batch; b++)
        {
            for (int j = 0; j < seqNew; j++)
            {
                for (int h = 0; h < headsKv; h++)
                {
                    for (int x = 0; x < headDim; x++)
                    {
                        int source = (((b * seqNew) + j) * row) + (h * headDim) + x;
                        long slot = (Slot(rows[b], lens[b] + j) * row) + (h * headDim) + x;
                        float kFactor = kd[perTensor ? 0 : h], vFactor = vd[perTensor ? 0 : h];
                        expectK[slot] = DecodeReference.QuantizeForCache(kn[source], kFactor, queryType);
                        expectV[slot] = DecodeReference.QuantizeForCache(vn[source], vFactor, queryType);
                        saturated += (expectK[slot].ToBits() & 0x7F) == 0x7E ? 1 : 0;
                    }
                }
            }
        }

        Assert.That(saturated, Is.Positive, "the draw should saturate some appended keys");
        var options = new AttentionOptions { Causal = true };
        var serving = new DecodeServingOptions
        {
            SeqLenQ = seqQ, CacheBatchIndex = rows, CacheRows = pool, CacheLeftPad = pads,
            KeyDescale = kd, ValueDescale = vd, QueryDataType = queryType,
        };
        var output = new double[q.Length];
        var lse = new double[batch * headsQ * seqQ];
        if (paged)
        {
            DecodeReference.ForwardPaged(q, k8, v8, table, lens, kn, vn, seqNew, headsQ, headsKv, headDim, blockSize, options, serving, output, lse);
        }
        else
        {
            DecodeReference.ForwardContiguous(q, k8, v8, lens, kn, vn, seqNew, headsQ, headsKv, headDim, capacity, options, serving, output, lse);
        }

        // The 16-bit overload over the dequantized expected cache, without an append (the lengths already include it).
        double[] kWide = Dequantized(expectK, e => Factor(kd, e)), vWide = Dequantized(expectV, e => Factor(vd, e));
        int[] after = lens.Select(l => l + seqNew).ToArray();
        var plain = serving with { KeyDescale = null, ValueDescale = null, QueryDataType = null };
        var refOut = new double[q.Length];
        var refLse = new double[lse.Length];
        if (paged)
        {
            DecodeReference.ForwardPaged(q, kWide, vWide, table, after, [], [], 0, headsQ, headsKv, headDim, blockSize, options, plain, refOut, refLse);
        }
        else
        {
            DecodeReference.ForwardContiguous(q, kWide, vWide, after, [], [], 0, headsQ, headsKv, headDim, capacity, options, plain, refOut, refLse);
        }

        Assert.Multiple(() =>
        {
            Assert.That(k8.Select(x => x.ToBits()), Is.EqualTo(expectK.Select(x => x.ToBits())), $"seed {seed}: key bytes");
            Assert.That(v8.Select(x => x.ToBits()), Is.EqualTo(expectV.Select(x => x.ToBits())), $"seed {seed}: value bytes");
            Assert.That(output, Is.EqualTo(refOut).Within(1e-12), $"seed {seed}: output");
            Assert.That(lse, Is.EqualTo(refLse).Within(1e-12), $"seed {seed}: lse");
            Assert.That(output.All(double.IsFinite), Is.True, $"seed {seed}: a NaN slot was read");
        });
    }

    /// <summary>
    /// With rotary the appended key is rotated first (in float64 here), then rounded to q's dtype and quantized: the
    /// stored bytes are QuantizeForCache of the rotated key (rotated here with <see cref="DecodeReference.Rotate"/>),
    /// the values unrotated.
    /// </summary>
    [Test]
    public void RotaryKeysAreRotatedBeforeTheyAreQuantized()
    {
        const int headsKv = 1, headDim = 32, rotaryDim = 16, capacity = 8;
        Random random = TestRandom.ForCurrentTest(out int seed);
        int half = rotaryDim / 2;
        var cos = new double[capacity * half];
        var sin = new double[capacity * half];
        for (int p = 0; p < capacity; p++)
        {
            for (int t = 0; t < half; t++)
            {
                double theta = p * Math.Pow(10000.0, -2.0 * t / rotaryDim);
                (cos[(p * half) + t], sin[(p * half) + t]) = (Math.Cos(theta), Math.Sin(theta));
            }
        }

        var k8 = Enumerable.Repeat(Float8E4M3.NaN, capacity * headDim).ToArray();
        var v8 = (Float8E4M3[])k8.Clone();
        for (int e = 0; e < 3 * headDim; e++)
        {
            k8[e] = (Float8E4M3)TestRandom.Normal(random, 1)[0];
            v8[e] = (Float8E4M3)TestRandom.Normal(random, 1)[0];
        }

        double[] kn = Rounded(TestRandom.Normal(random, headDim), Bf16), vn = Rounded(TestRandom.Normal(random, headDim), Bf16);
        double[] q = Rounded(TestRandom.Normal(random, 2 * headDim), Bf16);
        float[] kd = [0.25f], vd = [0.5f];
        var serving = new DecodeServingOptions
        {
            RotaryCos = cos, RotarySin = sin, RotaryDim = rotaryDim, RotaryInterleaved = false,
            KeyDescale = kd, ValueDescale = vd, QueryDataType = Bf16,
        };
        DecodeReference.ForwardContiguous(q, k8, v8, [3], kn, vn, 1, 2, headsKv, headDim, capacity, new AttentionOptions(), serving, new double[q.Length], []);

        double[] rotated = (double[])kn.Clone();
        DecodeReference.Rotate(rotated, cos.AsSpan(3 * half, half), sin.AsSpan(3 * half, half), rotaryDim, interleaved: false);
        Assert.Multiple(() =>
        {
            for (int x = 0; x < headDim; x++)
            {
                Assert.That(k8[(3 * headDim) + x].ToBits(), Is.EqualTo(DecodeReference.QuantizeForCache(rotated[x], 0.25f, Bf16).ToBits()), $"seed {seed}: key {x}");
                Assert.That(v8[(3 * headDim) + x].ToBits(), Is.EqualTo(DecodeReference.QuantizeForCache(vn[x], 0.5f, Bf16).ToBits()), $"seed {seed}: value {x}");
            }

            Assert.That(Enumerable.Range(0, rotaryDim).Any(x => rotated[x] != kn[x]), Is.True, "position 3 rotates the first dims");
        });
    }

    [Test]
    public void Float8SettingsAreCheckedAndBelongToTheFloat8Overloads()
    {
        var k8 = new Float8E4M3[8 * 2 * 8];
        var v8 = new Float8E4M3[k8.Length];
        double[] q = new double[4 * 8], kn = new double[2 * 8], vn = new double[2 * 8];
        var options = new AttentionOptions();
        void Fp8(DecodeServingOptions serving, bool append = true) =>
            DecodeReference.ForwardContiguous(q, k8, v8, [2], append ? kn : [], append ? vn : [], 1, 4, 2, 8, 8, options, serving, new double[q.Length], []);

        var ok = new DecodeServingOptions { KeyDescale = [1f, 2f], ValueDescale = [1f], QueryDataType = F16 };
        Assert.Multiple(() =>
        {
            Assert.That(() => Fp8(ok), Throws.Nothing);
            Assert.That(() => Fp8(ok with { QueryDataType = null }, append: false), Throws.Nothing, "no append: no rounding to q's dtype needed");
            Assert.That(() => Fp8(ok with { KeyDescale = null }), Throws.ArgumentException.With.Message.Contain("KeyDescale"));
            Assert.That(() => Fp8(ok with { ValueDescale = [1f, 1f, 1f] }), Throws.ArgumentException.With.Message.Contain("ValueDescale").And.Message.Contain("has 3"));
            Assert.That(() => Fp8(ok with { QueryDataType = null }), Throws.ArgumentException.With.Message.Contain("QueryDataType"));
            Assert.That(() => Fp8(ok with { QueryDataType = DataType.Float32 }), Throws.ArgumentException.With.Message.Contain("QueryDataType"));
            Assert.That(() => DecodeReference.ForwardContiguous(q, new double[k8.Length], new double[k8.Length], [2], kn, vn, 1, 4, 2, 8, 8, options, ok, new double[q.Length], []),
                Throws.ArgumentException.With.Message.Contain("Float8E4M3"));
            Assert.That(() => DecodeReference.ForwardPaged(q, new double[k8.Length], new double[k8.Length], [0, 1], [2], kn, vn, 1, 4, 2, 8, 8, options, ok with { KeyDescale = null, ValueDescale = null }, new double[q.Length], []),
                Throws.ArgumentException.With.Message.Contain("Float8E4M3"), "QueryDataType alone is an fp8 setting too");
        });
    }

    private static double[] Rounded(float[] values, DataType dtype) => AttentionReference.ToDouble(ForwardRun.RoundAll(dtype, values));

    private static double[] Dequantized(Float8E4M3[] cache, Func<int, float> factor)
    {
        var wide = new double[cache.Length];
        for (int i = 0; i < cache.Length; i++)
        {
            wide[i] = (double)cache[i] * factor(i);
        }

        return wide;
    }
}
