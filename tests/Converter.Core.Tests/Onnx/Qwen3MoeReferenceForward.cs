using Converter.Models;
using Converter.Models.Qwen3Moe;

namespace Converter.Tests.Onnx;

/// <summary>
/// An independent float64 forward pass of qwen3_moe written from transformers 5's modeling code (Qwen3MoeAttention:
/// q/k RMSNorm over head_dim, rotate-half rope on the whole head, repeat_kv; Qwen3MoeSparseMoeBlock: softmax over all
/// experts, top-k, renormalised when norm_topk_prob), the oracle for Qwen3 configs without a transformers golden.
/// Scalar loops, no ONNX pieces; routing through the family's <see cref="RoutingRule"/> reference.
/// </summary>
public sealed class Qwen3MoeReferenceForward
{
    private readonly ModelCheckpoint _ckpt;
    private readonly Qwen3MoeConfig _c;
    private readonly ModelArchitecture _arch;
    private readonly Dictionary<string, double[]> _w = new();

    public Qwen3MoeReferenceForward(ModelCheckpoint ckpt)
    {
        _ckpt = ckpt;
        _arch = ckpt.Architecture;
        _c = ((Qwen3MoeArchitecture)ckpt.Architecture).Cfg;
    }

    private double[] W(string name)
    {
        if (_w.TryGetValue(name, out var d)) return d;
        var f = _ckpt.ReadFloat32(name);
        d = new double[f.Length];
        for (int i = 0; i < f.Length; i++) d[i] = f[i];
        return _w[name] = d;
    }

    private static double[] MatVec(double[] w, ReadOnlySpan<double> x, int rows)
    {
        int cols = x.Length;
        var y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double s = 0;
            for (int j = 0; j < cols; j++) s += w[r * cols + j] * x[j];
            y[r] = s;
        }
        return y;
    }

    private void NormInPlace(Span<double> x, double[] w)
    {
        double ms = 0;
        foreach (var v in x) ms += v * v;
        double inv = 1 / Math.Sqrt(ms / x.Length + _c.RmsNormEps);
        for (int i = 0; i < x.Length; i++) x[i] = w[i] * x[i] * inv;
    }

    private double[] Norm(double[] x, double[] w)
    {
        var y = (double[])x.Clone();
        NormInPlace(y, w);
        return y;
    }

    private double[] SwiGlu(double[] x, FeedForwardWeights f)
    {
        int inter = (int)f.Intermediate;
        var g = MatVec(W(f.Gate), x, inter);
        var u = MatVec(W(f.Up), x, inter);
        for (int i = 0; i < inter; i++) g[i] = g[i] / (1 + Math.Exp(-g[i])) * u[i];
        return MatVec(W(f.Down), g, _c.HiddenSize);
    }

    // rotate_half: pairs (x[i], x[i + d/2]) with frequency i; plain rope or YaRN (transformers' yarn: ramp, attention_factor).
    private (double[] Inv, double Mult) Rope()
    {
        int dim = _c.HeadDim;
        var inv = new double[dim / 2];
        for (int i = 0; i < inv.Length; i++) inv[i] = Math.Pow(_c.RopeTheta, -(2.0 * i) / dim);
        if (_c.RopeScaling is not { } y) return (inv, 1.0);
        double Corr(double rot) => dim * Math.Log(y.OriginalMaxPositionEmbeddings / (rot * 2 * Math.PI)) / (2 * Math.Log(_c.RopeTheta));
        double lo = Math.Max(0, Math.Floor(Corr(y.BetaFast))), hi = Math.Min(dim - 1, Math.Ceiling(Corr(y.BetaSlow)));
        if (lo == hi) hi += 0.001;
        for (int i = 0; i < inv.Length; i++)
        {
            double ramp = Math.Clamp((i - lo) / (hi - lo), 0, 1);
            inv[i] = inv[i] / y.Factor * ramp + inv[i] * (1 - ramp);
        }
        return (inv, y.Factor <= 1 ? 1 : 0.1 * Math.Log(y.Factor) + 1);
    }

    private static void RotateHalf(Span<double> v, int pos, double[] inv, double mult)
    {
        int half = v.Length / 2;
        for (int i = 0; i < half; i++)
        {
            double a = pos * inv[i], cos = Math.Cos(a) * mult, sin = Math.Sin(a) * mult;
            double x0 = v[i], x1 = v[half + i];
            v[i] = x0 * cos - x1 * sin;
            v[half + i] = x1 * cos + x0 * sin;
        }
    }

    public (float[] Logits, int[][] Routing, double[] Margin) Run(int[] tokens, int batch, int seq)
    {
        var c = _c;
        int h = c.HiddenSize, nh = c.NumAttentionHeads, nkv = c.NumKeyValueHeads, hd = c.HeadDim, rep = nh / nkv, v = c.VocabSize;
        var names = _arch.Names;
        var logits = new float[batch * seq * v];
        var moeLayers = Enumerable.Range(0, c.NumHiddenLayers).Where(c.IsMoeLayer).ToArray();
        int k = c.NumExpertsPerTok;
        var routing = moeLayers.Select(_ => new int[batch * seq * k]).ToArray();
        var margin = Enumerable.Repeat(double.PositiveInfinity, batch * seq).ToArray();
        var (inv, mult) = Rope();
        double scale = 1 / Math.Sqrt(hd);
        var embed = W(names.Embedding);
        for (int b = 0; b < batch; b++)
        {
            var x = new double[seq][];
            for (int t = 0; t < seq; t++) x[t] = embed.AsSpan(tokens[b * seq + t] * h, h).ToArray();
            int moeIndex = 0;
            for (int layer = 0; layer < c.NumHiddenLayers; layer++)
            {
                string a = $"model.layers.{layer}.self_attn.";
                var q = new double[seq][]; var key = new double[seq][]; var val = new double[seq][];
                for (int t = 0; t < seq; t++)
                {
                    var xn = Norm(x[t], W(names.InputNorm(layer)));
                    q[t] = MatVec(W(a + "q_proj.weight"), xn, nh * hd);
                    key[t] = MatVec(W(a + "k_proj.weight"), xn, nkv * hd);
                    val[t] = MatVec(W(a + "v_proj.weight"), xn, nkv * hd);
                    for (int i = 0; i < nh; i++)
                    {
                        NormInPlace(q[t].AsSpan(i * hd, hd), W(a + "q_norm.weight"));
                        RotateHalf(q[t].AsSpan(i * hd, hd), t, inv, mult);
                    }
                    for (int i = 0; i < nkv; i++)
                    {
                        NormInPlace(key[t].AsSpan(i * hd, hd), W(a + "k_norm.weight"));
                        RotateHalf(key[t].AsSpan(i * hd, hd), t, inv, mult);
                    }
                }
                var attnOut = new double[seq][];
                for (int t = 0; t < seq; t++)
                {
                    var o = new double[nh * hd];
                    for (int head = 0; head < nh; head++)
                    {
                        int kvh = head / rep;
                        var s = new double[t + 1];
                        double max = double.NegativeInfinity;
                        for (int j = 0; j <= t; j++)
                        {
                            double d = 0;
                            for (int i = 0; i < hd; i++) d += q[t][head * hd + i] * key[j][kvh * hd + i];
                            max = Math.Max(max, s[j] = d * scale);
                        }
                        double sum = 0;
                        for (int j = 0; j <= t; j++) sum += s[j] = Math.Exp(s[j] - max);
                        for (int j = 0; j <= t; j++)
                            for (int i = 0; i < hd; i++) o[head * hd + i] += s[j] / sum * val[j][kvh * hd + i];
                    }
                    attnOut[t] = MatVec(W(a + "o_proj.weight"), o, h);
                }
                for (int t = 0; t < seq; t++)
                {
                    for (int i = 0; i < h; i++) x[t][i] += attnOut[t][i];
                    var xn = Norm(x[t], W(names.PostAttentionNorm(layer)));
                    double[] y;
                    if (c.IsMoeLayer(layer))
                    {
                        var block = _arch.Moe(layer);
                        var sel = routing[moeIndex].AsSpan((b * seq + t) * k, k);
                        var wts = new double[k];
                        margin[b * seq + t] = Math.Min(margin[b * seq + t], block.Routing.Select(MatVec(W(block.Router), xn, block.Experts), [], sel, wts));
                        y = new double[h];
                        for (int j = 0; j < k; j++)
                        {
                            int e = sel[j];
                            var ex = SwiGlu(xn, new FeedForwardWeights(block.ExpertWeight(e, FfnProjection.Gate), block.ExpertWeight(e, FfnProjection.Up),
                                block.ExpertWeight(e, FfnProjection.Down), block.ExpertIntermediate));
                            for (int i = 0; i < h; i++) y[i] += wts[j] * ex[i];
                        }
                    }
                    else
                    {
                        y = SwiGlu(xn, _arch.DenseMlp(layer));
                    }
                    for (int i = 0; i < h; i++) x[t][i] += y[i];
                }
                if (c.IsMoeLayer(layer)) moeIndex++;
            }
            for (int t = 0; t < seq; t++)
            {
                var lg = MatVec(W(names.LmHead), Norm(x[t], W(names.FinalNorm)), v);
                for (int i = 0; i < v; i++) logits[(b * seq + t) * v + i] = (float)lg[i];
            }
        }
        return (logits, routing, margin);
    }
}
