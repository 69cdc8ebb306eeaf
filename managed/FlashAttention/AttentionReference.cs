namespace FlashAttn;

/// <summary>
/// A float64 CPU implementation of scaled dot-product attention: the oracle the GPU kernels are checked against,
/// and a way to run the same computation on a machine without a GPU.
/// </summary>
/// <remarks>
/// Inputs are dense row-major arrays in the layout <see cref="AttentionShape"/> describes. For each batch
/// <c>b</c>, query head <c>h</c> and query row <c>i</c>: scores <c>s_j = scale * q·k_j</c> over the visible
/// keys, <c>out = Σ softmax(s)_j v_j</c> and <c>lse = log Σ exp(s_j)</c> (natural log, scale included). The
/// softmax subtracts the row maximum before exponentiating. A row that sees no key (possible with bottom-right
/// causal alignment when <c>SeqLenQ &gt; SeqLenK</c>, or when <c>SeqLenK</c> is 0) gets output 0 and
/// lse = +infinity, as the native library defines it. NaN in the inputs propagates to the affected rows.
/// </remarks>
public static class AttentionReference
{
    /// <summary>Multiply-adds below which the computation stays on the calling thread.</summary>
    private const long ParallelThresholdMacs = 1L << 20;

    /// <summary>Runs attention forward in float64.</summary>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment and scale (<see cref="AttentionOptions.KernelPath"/> is ignored).</param>
    /// <param name="output">Receives the output, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="logSumExp">
    /// Receives the log-sum-exp, <c>[Batch, HeadsQ, SeqLenQ]</c>; pass an empty span to skip it.
    /// </param>
    /// <exception cref="ArgumentException">A span length does not match <paramref name="shape"/>, or the shape is invalid.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    public static unsafe void Forward(
        ReadOnlySpan<double> q,
        ReadOnlySpan<double> k,
        ReadOnlySpan<double> v,
        AttentionShape shape,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp)
    {
        ArgumentNullException.ThrowIfNull(options);
        shape.Validate(nameof(shape));
        options.Validate(nameof(options));
        RequireLength(q.Length, shape.QElementCount, nameof(q));
        RequireLength(k.Length, shape.KvElementCount, nameof(k));
        RequireLength(v.Length, shape.KvElementCount, nameof(v));
        RequireLength(output.Length, shape.QElementCount, nameof(output));
        if (!logSumExp.IsEmpty)
        {
            RequireLength(logSumExp.Length, shape.LseElementCount, nameof(logSumExp));
        }

        long rows = (long)shape.Batch * shape.HeadsQ * shape.SeqLenQ;
        if (rows == 0)
        {
            return;
        }

        var job = new Job(shape, options);
        fixed (double* pq = q, pk = k, pv = v, po = output, pl = logSumExp)
        {
            var ptrs = new Pointers((nint)pq, (nint)pk, (nint)pv, (nint)po, logSumExp.IsEmpty ? 0 : (nint)pl);
            long macs = rows * shape.SeqLenK * shape.HeadDim;
            if (macs < ParallelThresholdMacs || Environment.ProcessorCount == 1)
            {
                var scores = new double[Math.Max(shape.SeqLenK, 1)];
                for (long r = 0; r < rows; r++)
                {
                    job.Row(ptrs, r, scores);
                }
            }
            else
            {
                Parallel.For(
                    0L,
                    rows,
                    () => new double[Math.Max(shape.SeqLenK, 1)],
                    (r, _, scores) =>
                    {
                        job.Row(ptrs, r, scores);
                        return scores;
                    },
                    _ => { });
            }
        }
    }

    /// <summary>Runs <see cref="Forward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, Span{double}, Span{double})"/> on bfloat16 inputs, widened exactly to float64.</summary>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment and scale.</param>
    /// <param name="output">Receives the output in float64.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, or empty to skip it.</param>
    public static void Forward(
        ReadOnlySpan<BFloat16> q,
        ReadOnlySpan<BFloat16> k,
        ReadOnlySpan<BFloat16> v,
        AttentionShape shape,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp) =>
        Forward(ToDouble(q), ToDouble(k), ToDouble(v), shape, options, output, logSumExp);

    /// <summary>Runs <see cref="Forward(ReadOnlySpan{double}, ReadOnlySpan{double}, ReadOnlySpan{double}, AttentionShape, AttentionOptions, Span{double}, Span{double})"/> on float16 inputs, widened exactly to float64.</summary>
    /// <param name="q">Queries, <c>[Batch, SeqLenQ, HeadsQ, HeadDim]</c>.</param>
    /// <param name="k">Keys, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="v">Values, <c>[Batch, SeqLenK, HeadsKv, HeadDim]</c>.</param>
    /// <param name="shape">The sizes.</param>
    /// <param name="options">Mask, alignment and scale.</param>
    /// <param name="output">Receives the output in float64.</param>
    /// <param name="logSumExp">Receives the log-sum-exp, or empty to skip it.</param>
    public static void Forward(
        ReadOnlySpan<Half> q,
        ReadOnlySpan<Half> k,
        ReadOnlySpan<Half> v,
        AttentionShape shape,
        AttentionOptions options,
        Span<double> output,
        Span<double> logSumExp) =>
        Forward(ToDouble(q), ToDouble(k), ToDouble(v), shape, options, output, logSumExp);

    /// <summary>Widens bfloat16 values to float64 (exact).</summary>
    /// <param name="values">The values.</param>
    /// <returns>A new array.</returns>
    public static double[] ToDouble(ReadOnlySpan<BFloat16> values)
    {
        var result = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = values[i];
        }

        return result;
    }

    /// <summary>Widens float16 values to float64 (exact).</summary>
    /// <param name="values">The values.</param>
    /// <returns>A new array.</returns>
    public static double[] ToDouble(ReadOnlySpan<Half> values)
    {
        var result = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = (double)values[i];
        }

        return result;
    }

    /// <summary>Widens float32 values to float64 (exact).</summary>
    /// <param name="values">The values.</param>
    /// <returns>A new array.</returns>
    public static double[] ToDouble(ReadOnlySpan<float> values)
    {
        var result = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = values[i];
        }

        return result;
    }

    /// <summary>
    /// Relative L2 error <c>||actual - expected|| / ||expected||</c>, in float64. NaN in either input gives NaN;
    /// when <paramref name="expected"/> is all zeros the result is the absolute norm of the difference.
    /// Infinite entries that match exactly (same sign) count as no error.
    /// </summary>
    /// <param name="expected">The reference values.</param>
    /// <param name="actual">The values to judge.</param>
    /// <returns>The relative error.</returns>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public static double RelativeL2Error(ReadOnlySpan<double> expected, ReadOnlySpan<double> actual)
    {
        if (expected.Length != actual.Length)
        {
            throw new ArgumentException(
                $"expected has {expected.Length} elements but actual has {actual.Length}.", nameof(actual));
        }

        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], a = actual[i];
            if (double.IsNaN(e) || double.IsNaN(a))
            {
                return double.NaN;
            }

            if (double.IsInfinity(e) || double.IsInfinity(a))
            {
                if (e != a)
                {
                    return double.PositiveInfinity;
                }

                continue;
            }

            double d = a - e;
            diff += d * d;
            norm += e * e;
        }

        return norm == 0 ? Math.Sqrt(diff) : Math.Sqrt(diff / norm);
    }

    private static void RequireLength(int actual, long expected, string paramName)
    {
        if (actual != expected)
        {
            throw new ArgumentException(
                $"{paramName} has {actual} elements but the shape needs {expected}.", paramName);
        }
    }

    private readonly record struct Pointers(nint Q, nint K, nint V, nint Out, nint Lse);

    private sealed class Job(AttentionShape shape, AttentionOptions options)
    {
        private readonly AttentionShape _s = shape;
        private readonly double _scale = options.EffectiveScale(shape.HeadDim);
        private readonly bool _causal = options.Causal;
        private readonly bool _topLeft = options.CausalAlignment == CausalAlignment.TopLeft;

        /// <summary>Computes one (batch, head, query) row; <paramref name="row"/> runs over [B, Hq, Sq].</summary>
        public unsafe void Row(Pointers p, long row, double[] scores)
        {
            int sq = _s.SeqLenQ, sk = _s.SeqLenK, hq = _s.HeadsQ, hkv = _s.HeadsKv, d = _s.HeadDim;
            int i = (int)(row % sq);
            long bh = row / sq;
            int h = (int)(bh % hq);
            int b = (int)(bh / hq);
            int kvHead = h / (hq / hkv);

            // Last visible key (inclusive); may be negative (no key) or beyond sk - 1 (all keys).
            long lastKey = !_causal ? sk - 1 : _topLeft ? i : (long)i + sk - sq;
            int visible = (int)Math.Clamp(lastKey + 1, 0, sk);

            double* qRow = (double*)p.Q + ((((long)b * sq) + i) * hq + h) * d;
            double* outRow = (double*)p.Out + ((((long)b * sq) + i) * hq + h) * d;
            long kvRowStride = (long)hkv * d;
            double* kBase = (double*)p.K + ((long)b * sk * hkv + kvHead) * d;
            double* vBase = (double*)p.V + ((long)b * sk * hkv + kvHead) * d;

            if (visible == 0)
            {
                new Span<double>(outRow, d).Clear();
                if (p.Lse != 0)
                {
                    ((double*)p.Lse)[row] = double.PositiveInfinity;
                }

                return;
            }

            double max = double.NegativeInfinity;
            for (int j = 0; j < visible; j++)
            {
                double* kRow = kBase + j * kvRowStride;
                double dot = 0;
                for (int x = 0; x < d; x++)
                {
                    dot += qRow[x] * kRow[x];
                }

                double s = dot * _scale;
                scores[j] = s;
                if (double.IsNaN(s) || s > max)
                {
                    max = s; // once NaN, "s > max" is never true again, so NaN sticks and propagates.
                }
            }

            var acc = new Span<double>(outRow, d);
            acc.Clear();
            double sum = 0;
            for (int j = 0; j < visible; j++)
            {
                double w = Math.Exp(scores[j] - max);
                sum += w;
                double* vRow = vBase + j * kvRowStride;
                for (int x = 0; x < d; x++)
                {
                    acc[x] += w * vRow[x];
                }
            }

            double inv = 1.0 / sum;
            for (int x = 0; x < d; x++)
            {
                acc[x] *= inv;
            }

            if (p.Lse != 0)
            {
                ((double*)p.Lse)[row] = max + Math.Log(sum);
            }
        }
    }
}
