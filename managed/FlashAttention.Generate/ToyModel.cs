namespace FlashAttn.Generate;

/// <summary>
/// Attention over a KV cache for one layer: given the new tokens' queries, keys and values (already rounded to the
/// cache's dtype), append the keys and values to the layer's cache and return the attention output of the new tokens.
/// </summary>
internal interface IAttention
{
    /// <summary>Appends k/v of <paramref name="seqLenNew"/> tokens per sequence and attends (causal, bottom-right).</summary>
    /// <param name="layer">The layer (each has its own cache).</param>
    /// <param name="q">[batch, seqLenNew, headsQ, headDim].</param>
    /// <param name="k">[batch, seqLenNew, headsKv, headDim].</param>
    /// <param name="v">[batch, seqLenNew, headsKv, headDim].</param>
    /// <param name="seqLenNew">New tokens per sequence.</param>
    /// <param name="output">Receives [batch, seqLenNew, headsQ, headDim].</param>
    void Attend(int layer, float[] q, float[] k, float[] v, int seqLenNew, float[] output);
}

/// <summary>
/// A tiny decoder-only transformer with random weights: token and position embeddings, <see cref="Layers"/> pre-norm
/// blocks (GQA attention through an <see cref="IAttention"/>, a GELU MLP), a final norm and an unembedding. All
/// matrix products run on the CPU in float32; only attention is delegated.
/// </summary>
internal sealed class ToyModel
{
    public const string Alphabet = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.";

    private readonly float[] _embedding;   // [Vocab, Model]
    private readonly float[] _positions;   // [MaxPositions, Model]
    private readonly float[] _unembedding; // [Vocab, Model]
    private readonly Layer[] _layers;

    public ToyModel(int seed, int layers, int headsQ, int headsKv, int headDim, int maxPositions)
    {
        Layers = layers;
        HeadsQ = headsQ;
        HeadsKv = headsKv;
        HeadDim = headDim;
        MaxPositions = maxPositions;
        Model = headsQ * headDim;
        var random = new Random(seed);
        _embedding = Normal(random, Vocab * Model, 1.0);
        _positions = Normal(random, maxPositions * Model, 0.5);
        _unembedding = Normal(random, Vocab * Model, 1.0);
        _layers = new Layer[layers];
        int hidden = 2 * Model;
        for (int l = 0; l < layers; l++)
        {
            _layers[l] = new Layer(
                Normal(random, Model * headsQ * headDim, 1.0 / Math.Sqrt(Model)),
                Normal(random, Model * headsKv * headDim, 1.0 / Math.Sqrt(Model)),
                Normal(random, Model * headsKv * headDim, 1.0 / Math.Sqrt(Model)),
                Normal(random, headsQ * headDim * Model, 1.0 / Math.Sqrt(headsQ * headDim)),
                Normal(random, Model * hidden, 1.0 / Math.Sqrt(Model)),
                Normal(random, hidden * Model, 1.0 / Math.Sqrt(hidden)),
                hidden);
        }
    }

    public static int Vocab => Alphabet.Length;

    public int Layers { get; }

    public int HeadsQ { get; }

    public int HeadsKv { get; }

    public int HeadDim { get; }

    public int Model { get; }

    public int MaxPositions { get; }

    /// <summary>
    /// Runs <paramref name="seqLenNew"/> new tokens per sequence (at positions <paramref name="start"/> ..) through
    /// the model and returns the logits of each sequence's last new token, [batch, Vocab].
    /// </summary>
    public float[] Forward(int[] tokens, int batch, int seqLenNew, int start, IAttention attention, Func<float, float> round)
    {
        int rows = batch * seqLenNew;
        var h = new float[rows * Model];
        for (int b = 0; b < batch; b++)
        {
            for (int t = 0; t < seqLenNew; t++)
            {
                int row = (b * seqLenNew) + t;
                int token = tokens[row];
                for (int x = 0; x < Model; x++)
                {
                    h[(row * Model) + x] = _embedding[(token * Model) + x] + _positions[((start + t) * Model) + x];
                }
            }
        }

        var attnOut = new float[rows * HeadsQ * HeadDim];
        for (int l = 0; l < Layers; l++)
        {
            Layer layer = _layers[l];
            float[] a = RmsNorm(h, rows, Model);
            float[] q = Round(MatMul(a, layer.Wq, rows, Model, HeadsQ * HeadDim), round);
            float[] k = Round(MatMul(a, layer.Wk, rows, Model, HeadsKv * HeadDim), round);
            float[] v = Round(MatMul(a, layer.Wv, rows, Model, HeadsKv * HeadDim), round);
            attention.Attend(l, q, k, v, seqLenNew, attnOut);
            AddInPlace(h, MatMul(attnOut, layer.Wo, rows, HeadsQ * HeadDim, Model));
            float[] m = RmsNorm(h, rows, Model);
            float[] up = MatMul(m, layer.W1, rows, Model, layer.Hidden);
            for (int i = 0; i < up.Length; i++)
            {
                float x = up[i];
                up[i] = 0.5f * x * (1f + MathF.Tanh(0.7978846f * (x + (0.044715f * x * x * x))));
            }

            AddInPlace(h, MatMul(up, layer.W2, rows, layer.Hidden, Model));
        }

        // Logits of each sequence's last new token.
        float[] final = RmsNorm(h, rows, Model);
        var logits = new float[batch * Vocab];
        for (int b = 0; b < batch; b++)
        {
            int row = (b * seqLenNew) + seqLenNew - 1;
            for (int token = 0; token < Vocab; token++)
            {
                float dot = 0;
                for (int x = 0; x < Model; x++)
                {
                    dot += final[(row * Model) + x] * _unembedding[(token * Model) + x];
                }

                logits[(b * Vocab) + token] = dot / MathF.Sqrt(Model) * 3f;
            }
        }

        return logits;
    }

    public static int[] Encode(string text) => text.Select(c => Math.Max(0, Alphabet.IndexOf(c, StringComparison.Ordinal))).ToArray();

    public static char Decode(int token) => Alphabet[token];

    /// <summary>Greedy (temperature 0) or sampled next token.</summary>
    public static int NextToken(ReadOnlySpan<float> logits, double temperature, Random random)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
        {
            if (logits[i] > logits[best])
            {
                best = i;
            }
        }

        if (temperature <= 0)
        {
            return best;
        }

        var p = new double[logits.Length];
        double sum = 0;
        for (int i = 0; i < p.Length; i++)
        {
            p[i] = Math.Exp((logits[i] - logits[best]) / temperature);
            sum += p[i];
        }

        double u = random.NextDouble() * sum;
        for (int i = 0; i < p.Length; i++)
        {
            u -= p[i];
            if (u <= 0)
            {
                return i;
            }
        }

        return best;
    }

    private static float[] Normal(Random random, int count, double std)
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

    private static float[] RmsNorm(float[] x, int rows, int width)
    {
        var y = new float[x.Length];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < width; i++)
            {
                ss += x[(r * width) + i] * (double)x[(r * width) + i];
            }

            float inv = (float)(1.0 / Math.Sqrt((ss / width) + 1e-6));
            for (int i = 0; i < width; i++)
            {
                y[(r * width) + i] = x[(r * width) + i] * inv;
            }
        }

        return y;
    }

    /// <summary>[rows, inner] x [inner, cols].</summary>
    private static float[] MatMul(float[] a, float[] w, int rows, int inner, int cols)
    {
        var c = new float[rows * cols];
        Parallel.For(0, rows, r =>
        {
            var acc = new float[cols];
            for (int i = 0; i < inner; i++)
            {
                float x = a[(r * inner) + i];
                int wRow = i * cols;
                for (int j = 0; j < cols; j++)
                {
                    acc[j] += x * w[wRow + j];
                }
            }

            acc.CopyTo(c, r * cols);
        });
        return c;
    }

    private static float[] Round(float[] x, Func<float, float> round)
    {
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = round(x[i]);
        }

        return x;
    }

    private static void AddInPlace(float[] h, float[] delta)
    {
        for (int i = 0; i < h.Length; i++)
        {
            h[i] += delta[i];
        }
    }

    private sealed record Layer(float[] Wq, float[] Wk, float[] Wv, float[] Wo, float[] W1, float[] W2, int Hidden);
}
