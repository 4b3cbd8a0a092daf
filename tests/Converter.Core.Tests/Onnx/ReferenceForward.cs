using Converter.Models;
using Converter.Models.DeepseekV3;

namespace Converter.Tests.Onnx;

/// <summary>
/// An independent, plain float64 forward pass of deepseek_v3 written from the transformers 5 modeling code,
/// used as the oracle for config variations that have no transformers golden. Scalar loops, no ONNX pieces.
/// Returns logits [b, s, vocab], each MoE layer's selected experts [b*s, k] and the smallest routing margin
/// per position (expert stage k-th minus (k+1)-th choice score, group stage likewise).
/// </summary>
public sealed class ReferenceForward
{
    private readonly ModelCheckpoint _ckpt;
    private readonly DeepseekV3Config _c;
    private readonly Dictionary<string, double[]> _w = new();

    public ReferenceForward(ModelCheckpoint ckpt)
    {
        _ckpt = ckpt;
        _c = ((DeepseekV3Architecture)ckpt.Architecture).Cfg;
    }

    private double[] W(string name)
    {
        if (_w.TryGetValue(name, out var d)) return d;
        var f = _ckpt.ReadFloat32(name);
        d = new double[f.Length];
        for (int i = 0; i < f.Length; i++) d[i] = f[i];
        return _w[name] = d;
    }

    private static double[] MatVec(double[] w, double[] x, int rows)
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

    private double[] Norm(double[] x, double[] w)
    {
        double ms = 0;
        foreach (var v in x) ms += v * v;
        double inv = 1 / Math.Sqrt(ms / x.Length + _c.RmsNormEps);
        var y = new double[x.Length];
        for (int i = 0; i < x.Length; i++) y[i] = w[i] * x[i] * inv;
        return y;
    }

    private static double Silu(double v) => v / (1 + Math.Exp(-v));

    private double[] SwiGlu(double[] x, string p, int inter)
    {
        var g = MatVec(W(p + "gate_proj.weight"), x, inter);
        var u = MatVec(W(p + "up_proj.weight"), x, inter);
        for (int i = 0; i < inter; i++) g[i] = Silu(g[i]) * u[i];
        return MatVec(W(p + "down_proj.weight"), g, _c.HiddenSize);
    }

    /// <summary>Rope frequencies and cos/sin multiplier (YaRN per transformers' _compute_yarn_parameters, or plain).</summary>
    private (double[] Inv, double Mult) Rope()
    {
        int dim = _c.QkRopeHeadDim;
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
        static double M(double s, double m) => s <= 1 ? 1 : 0.1 * m * Math.Log(s) + 1;
        return (inv, y.MscaleAllDim != 0 && y.Mscale != 0 ? M(y.Factor, y.Mscale) / M(y.Factor, y.MscaleAllDim) : M(y.Factor, 1));
    }

    // transformers applies DeepSeek's rope to interleaved pairs (x[2i], x[2i+1]) with frequency i.
    private static void ApplyRope(double[] v, int offset, int dim, int pos, double[] inv, double mult)
    {
        for (int i = 0; i < dim / 2; i++)
        {
            double a = pos * inv[i], cos = Math.Cos(a) * mult, sin = Math.Sin(a) * mult;
            double x0 = v[offset + 2 * i], x1 = v[offset + 2 * i + 1];
            v[offset + 2 * i] = x0 * cos - x1 * sin;
            v[offset + 2 * i + 1] = x1 * cos + x0 * sin;
        }
    }

    public (float[] Logits, int[][] Routing, double[] Margin) Run(int[] tokens, int batch, int seq)
    {
        var c = _c;
        int h = c.HiddenSize, nh = c.NumAttentionHeads, nope = c.QkNopeHeadDim, rope = c.QkRopeHeadDim, qk = nope + rope, vd = c.VHeadDim;
        var logits = new float[batch * seq * c.VocabSize];
        var moeLayers = Enumerable.Range(0, c.NumHiddenLayers).Where(c.IsMoeLayer).ToArray();
        var routing = moeLayers.Select(_ => new int[batch * seq * c.NumExpertsPerTok]).ToArray();
        var margin = Enumerable.Repeat(double.PositiveInfinity, batch * seq).ToArray();
        var (inv, mult) = Rope();
        double scale = 1 / Math.Sqrt(qk);
        if (c.RopeScaling is { } ys && ys.MscaleAllDim != 0 && ys.Factor > 1)
        {
            double m = 0.1 * ys.MscaleAllDim * Math.Log(ys.Factor) + 1;
            scale *= m * m;
        }
        var embed = W("model.embed_tokens.weight");
        for (int b = 0; b < batch; b++)
        {
            var x = new double[seq][];
            for (int t = 0; t < seq; t++) x[t] = embed.AsSpan(tokens[b * seq + t] * h, h).ToArray();
            int moeIndex = 0;
            for (int layer = 0; layer < c.NumHiddenLayers; layer++)
            {
                string p = $"model.layers.{layer}.", a = p + "self_attn.";
                var q = new double[seq][]; var k = new double[seq][]; var v = new double[seq][];
                for (int t = 0; t < seq; t++)
                {
                    var xn = Norm(x[t], W(p + "input_layernorm.weight"));
                    double[] qt = c.QLoraRank is { } ql
                        ? MatVec(W(a + "q_b_proj.weight"), Norm(MatVec(W(a + "q_a_proj.weight"), xn, ql), W(a + "q_a_layernorm.weight")), nh * qk)
                        : MatVec(W(a + "q_proj.weight"), xn, nh * qk);
                    var ckv = MatVec(W(a + "kv_a_proj_with_mqa.weight"), xn, c.KvLoraRank + rope);
                    var kv = MatVec(W(a + "kv_b_proj.weight"), Norm(ckv[..c.KvLoraRank], W(a + "kv_a_layernorm.weight")), nh * (nope + vd));
                    var kpe = ckv[c.KvLoraRank..];
                    ApplyRope(kpe, 0, rope, t, inv, mult);
                    k[t] = new double[nh * qk];
                    v[t] = new double[nh * vd];
                    for (int hd = 0; hd < nh; hd++)
                    {
                        ApplyRope(qt, hd * qk + nope, rope, t, inv, mult);
                        Array.Copy(kv, hd * (nope + vd), k[t], hd * qk, nope);
                        Array.Copy(kpe, 0, k[t], hd * qk + nope, rope);
                        Array.Copy(kv, hd * (nope + vd) + nope, v[t], hd * vd, vd);
                    }
                    q[t] = qt;
                }
                for (int t = 0; t < seq; t++)
                {
                    var o = new double[nh * vd];
                    for (int hd = 0; hd < nh; hd++)
                    {
                        var s = new double[t + 1];
                        double max = double.NegativeInfinity;
                        for (int j = 0; j <= t; j++)
                        {
                            double d = 0;
                            for (int i = 0; i < qk; i++) d += q[t][hd * qk + i] * k[j][hd * qk + i];
                            s[j] = d * scale;
                            max = Math.Max(max, s[j]);
                        }
                        double sum = 0;
                        for (int j = 0; j <= t; j++) sum += s[j] = Math.Exp(s[j] - max);
                        for (int j = 0; j <= t; j++)
                            for (int i = 0; i < vd; i++) o[hd * vd + i] += s[j] / sum * v[j][hd * vd + i];
                    }
                    var attn = MatVec(W(a + "o_proj.weight"), o, h);
                    for (int i = 0; i < h; i++) x[t][i] += attn[i];
                }
                for (int t = 0; t < seq; t++)
                {
                    var xn = Norm(x[t], W(p + "post_attention_layernorm.weight"));
                    double[] y = c.IsMoeLayer(layer)
                        ? Moe(xn, p + "mlp.", routing[moeIndex].AsSpan((b * seq + t) * c.NumExpertsPerTok, c.NumExpertsPerTok), ref margin[b * seq + t])
                        : SwiGlu(xn, p + "mlp.", c.IntermediateSize);
                    for (int i = 0; i < h; i++) x[t][i] += y[i];
                }
                if (c.IsMoeLayer(layer)) moeIndex++;
            }
            for (int t = 0; t < seq; t++)
            {
                var lg = MatVec(W("lm_head.weight"), Norm(x[t], W("model.norm.weight")), c.VocabSize);
                for (int i = 0; i < lg.Length; i++) logits[(b * seq + t) * c.VocabSize + i] = (float)lg[i];
            }
        }
        return (logits, routing, margin);
    }

    private double[] Moe(double[] x, string p, Span<int> chosen, ref double margin)
    {
        var c = _c;
        int e = c.NRoutedExperts, kTop = c.NumExpertsPerTok;
        var logits = MatVec(W(p + "gate.weight"), x, e);
        var bias = c.TopkMethod == "noaux_tc" ? W(p + "gate.e_score_correction_bias") : new double[e];
        // The family's routing rule, in its float64 reference form (the ONNX graph emits the same rule as nodes).
        var order = new int[kTop];
        var w = new double[kTop];
        margin = Math.Min(margin, c.Routing.Select(logits, bias, order, w));
        var y = new double[c.HiddenSize];
        for (int j = 0; j < kTop; j++)
        {
            chosen[j] = order[j];
            double wj = w[j];
            var ex = SwiGlu(x, $"{p}experts.{order[j]}.", c.MoeIntermediateSize);
            for (int i = 0; i < y.Length; i++) y[i] += wj * ex[i];
        }
        if (c.NSharedExperts > 0)
        {
            var s = SwiGlu(x, p + "shared_experts.", c.MoeIntermediateSize * c.NSharedExperts);
            for (int i = 0; i < y.Length; i++) y[i] += s[i];
        }
        return y;
    }
}
