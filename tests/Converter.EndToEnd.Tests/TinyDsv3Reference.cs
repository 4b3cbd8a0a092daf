using Converter.Models;
using Converter.Models.DeepseekV3;

namespace Converter.Tests;

/// <summary>
/// A straight float64 forward pass of a deepseek_v3 checkpoint, written from transformers' DeepseekV3 modeling
/// (RMSNorm, MLA with interleaved YaRN rope, sigmoid group-limited routing, shared experts), for tests only:
/// it reads weights through <see cref="ModelCheckpoint.ReadFloat32"/> (so FP8 and packed INT4 checkpoints run too)
/// and reports each MoE layer's inputs and routing, which is what GPTQ's per-expert Hessians need before the
/// ONNX-based `calibrate` command exists. Verified against the golden hidden states and logits.
/// </summary>
public sealed class TinyDsv3Reference
{
    private readonly DeepseekV3Config _c;
    private readonly Dictionary<string, double[]> _w = new();
    private readonly ModelCheckpoint _ckpt;
    private readonly double[] _invFreq;

    /// <summary>Per MoE layer, per token: the MoE input, the selected experts, their routing weights, and each selected expert's down_proj input.</summary>
    public Action<int, double[], int[], double[], double[][]>? OnMoe { get; set; }

    public TinyDsv3Reference(ModelCheckpoint ckpt)
    {
        _ckpt = ckpt;
        _c = ((DeepseekV3Architecture)ckpt.Architecture).Cfg;
        _invFreq = YarnInvFreq();
    }

    private double[] W(string name)
    {
        lock (_w)
        {
            if (!_w.TryGetValue(name, out var v)) _w[name] = v = Array.ConvertAll(_ckpt.ReadFloat32(name), f => (double)f);
            return v;
        }
    }

    private double[] YarnInvFreq()
    {
        int dim = _c.QkRopeHeadDim;
        double b = _c.RopeTheta;
        var y = _c.RopeScaling!;
        double factor = (double)_c.MaxPositionEmbeddings / y.OriginalMaxPositionEmbeddings;
        double Dim(double rot) => dim * Math.Log(y.OriginalMaxPositionEmbeddings / (rot * 2 * Math.PI)) / (2 * Math.Log(b));
        double low = Math.Max(Math.Floor(Dim(y.BetaFast)), 0), high = Math.Min(Math.Ceiling(Dim(y.BetaSlow)), dim - 1);
        if (low == high) high += 0.001;
        var inv = new double[dim / 2];
        for (int i = 0; i < dim / 2; i++)
        {
            double pos = Math.Pow(b, 2.0 * i / dim);
            double ramp = Math.Clamp((i - low) / (high - low), 0, 1);
            double extrap = 1 - ramp;
            inv[i] = 1 / (factor * pos) * (1 - extrap) + 1 / pos * extrap;
        }
        return inv;
    }

    private static double[] Linear(double[] x, int t, int k, double[] w, int n)
    {
        var y = new double[t * n];
        Parallel.For(0, t, i =>
        {
            for (int o = 0; o < n; o++)
            {
                double s = 0;
                int wo = o * k, xo = i * k;
                for (int j = 0; j < k; j++) s += x[xo + j] * w[wo + j];
                y[i * n + o] = s;
            }
        });
        return y;
    }

    private double[] Norm(double[] x, int t, int d, double[] w)
    {
        var y = new double[t * d];
        for (int i = 0; i < t; i++)
        {
            double ms = 0;
            for (int j = 0; j < d; j++) ms += x[i * d + j] * x[i * d + j];
            double r = 1 / Math.Sqrt(ms / d + _c.RmsNormEps);
            for (int j = 0; j < d; j++) y[i * d + j] = w[j] * x[i * d + j] * r;
        }
        return y;
    }

    private static double Silu(double v) => v / (1 + Math.Exp(-v));

    private double[] Mlp(double[] x, int t, string p, int inter)
    {
        int h = _c.HiddenSize;
        var g = Linear(x, t, h, W(p + "gate_proj.weight"), inter);
        var u = Linear(x, t, h, W(p + "up_proj.weight"), inter);
        for (int i = 0; i < g.Length; i++) g[i] = Silu(g[i]) * u[i];
        return Linear(g, t, inter, W(p + "down_proj.weight"), h);
    }

    /// <summary>Logits [seqs * len, vocab] of token ids [seqs, len]; <paramref name="hidden"/> gets seq 0's states (embedding, each layer, final norm last).</summary>
    public double[] Forward(int[] tokens, int seqs, int len, List<double[]>? hidden = null)
    {
        int h = _c.HiddenSize, v = _c.VocabSize;
        var logits = new double[seqs * len * v];
        for (int s = 0; s < seqs; s++)
        {
            var emb = W("model.embed_tokens.weight");
            var x = new double[len * h];
            for (int i = 0; i < len; i++) Array.Copy(emb, tokens[s * len + i] * h, x, i * h, h);
            if (s == 0) hidden?.Add((double[])x.Clone());
            for (int l = 0; l < _c.NumHiddenLayers; l++)
            {
                x = Layer(x, len, l);
                if (s == 0 && l < _c.NumHiddenLayers - 1) hidden?.Add((double[])x.Clone());
            }
            var n = Norm(x, len, h, W("model.norm.weight"));
            if (s == 0) hidden?.Add(n);
            Array.Copy(Linear(n, len, h, W("lm_head.weight"), v), 0, logits, s * len * v, len * v);
        }
        return logits;
    }

    private double[] Layer(double[] x, int t, int l)
    {
        int h = _c.HiddenSize;
        string p = $"model.layers.{l}.";
        var a = Attention(Norm(x, t, h, W(p + "input_layernorm.weight")), t, p);
        for (int i = 0; i < x.Length; i++) x[i] += a[i];
        var y = Norm(x, t, h, W(p + "post_attention_layernorm.weight"));
        var m = _c.IsMoeLayer(l) ? Moe(y, t, l, p) : Mlp(y, t, p + "mlp.", _c.IntermediateSize);
        for (int i = 0; i < x.Length; i++) x[i] += m[i];
        return x;
    }

    private double[] Attention(double[] x, int t, string p)
    {
        int h = _c.HiddenSize, nh = _c.NumAttentionHeads, nope = _c.QkNopeHeadDim, rope = _c.QkRopeHeadDim, vd = _c.VHeadDim;
        int qd = nope + rope, lora = _c.KvLoraRank, ql = _c.QLoraRank!.Value;
        var q = Linear(Norm(Linear(x, t, h, W(p + "self_attn.q_a_proj.weight"), ql), t, ql, W(p + "self_attn.q_a_layernorm.weight")),
            t, ql, W(p + "self_attn.q_b_proj.weight"), nh * qd);
        var ckv = Linear(x, t, h, W(p + "self_attn.kv_a_proj_with_mqa.weight"), lora + rope);
        var c = new double[t * lora];
        var kpe = new double[t * rope];
        for (int i = 0; i < t; i++)
        {
            Array.Copy(ckv, i * (lora + rope), c, i * lora, lora);
            Array.Copy(ckv, i * (lora + rope) + lora, kpe, i * rope, rope);
        }
        var kv = Linear(Norm(c, t, lora, W(p + "self_attn.kv_a_layernorm.weight")), t, lora, W(p + "self_attn.kv_b_proj.weight"), nh * (nope + vd));
        for (int i = 0; i < t; i++)
        {
            Rope(kpe.AsSpan(i * rope, rope), i);
            for (int hd = 0; hd < nh; hd++) Rope(q.AsSpan(i * nh * qd + hd * qd + nope, rope), i);
        }
        double scale = _c.SoftmaxScale;
        var o = new double[t * nh * vd];
        Parallel.For(0, nh, hd =>
        {
            var sc = new double[t];
            for (int i = 0; i < t; i++)
            {
                double mx = double.NegativeInfinity;
                for (int j = 0; j <= i; j++)
                {
                    double s = 0;
                    for (int d = 0; d < nope; d++) s += q[i * nh * qd + hd * qd + d] * kv[j * nh * (nope + vd) + hd * (nope + vd) + d];
                    for (int d = 0; d < rope; d++) s += q[i * nh * qd + hd * qd + nope + d] * kpe[j * rope + d];
                    sc[j] = s * scale;
                    mx = Math.Max(mx, sc[j]);
                }
                double z = 0;
                for (int j = 0; j <= i; j++) { sc[j] = Math.Exp(sc[j] - mx); z += sc[j]; }
                for (int j = 0; j <= i; j++)
                    for (int d = 0; d < vd; d++) o[i * nh * vd + hd * vd + d] += sc[j] / z * kv[j * nh * (nope + vd) + hd * (nope + vd) + nope + d];
            }
        });
        return Linear(o, t, nh * vd, W(p + "self_attn.o_proj.weight"), h);
    }

    /// <summary>Interleaved rope: de-interleave (even, odd), then rotate halves by pos * inv_freq.</summary>
    private void Rope(Span<double> x, int pos)
    {
        int half = x.Length / 2;
        Span<double> y = stackalloc double[x.Length];
        for (int j = 0; j < half; j++) { y[j] = x[2 * j]; y[half + j] = x[2 * j + 1]; }
        for (int j = 0; j < half; j++)
        {
            double f = pos * _invFreq[j], cs = Math.Cos(f), sn = Math.Sin(f);
            x[j] = y[j] * cs - y[half + j] * sn;
            x[half + j] = y[half + j] * cs + y[j] * sn;
        }
    }

    private double[] Moe(double[] x, int t, int l, string p)
    {
        int h = _c.HiddenSize, e = _c.NRoutedExperts, k = _c.NumExpertsPerTok, mi = _c.MoeIntermediateSize;
        var logits = Linear(x, t, h, W(p + "mlp.gate.weight"), e);
        var bias = W(p + "mlp.gate.e_score_correction_bias");
        var y = Mlp(x, t, p + "mlp.shared_experts.", mi * _c.NSharedExperts);
        for (int i = 0; i < t; i++)
        {
            var sel = new int[k];
            var routed = new double[k];
            _c.Routing.Select(logits.AsSpan(i * e, e), bias, sel, routed);
            var xi = x.AsSpan(i * h, h).ToArray();
            var downIn = new double[k][];
            var weights = new double[k];
            for (int s = 0; s < k; s++)
            {
                string ep = $"{p}mlp.experts.{sel[s]}.";
                var g1 = Linear(xi, 1, h, W(ep + "gate_proj.weight"), mi);
                var u1 = Linear(xi, 1, h, W(ep + "up_proj.weight"), mi);
                for (int j = 0; j < mi; j++) g1[j] = Silu(g1[j]) * u1[j];
                downIn[s] = g1;
                var d = Linear(g1, 1, mi, W(ep + "down_proj.weight"), h);
                double wgt = weights[s] = routed[s];
                for (int j = 0; j < h; j++) y[i * h + j] += wgt * d[j];
            }
            OnMoe?.Invoke(l, xi, sel, weights, downIn);
        }
        return y;
    }
}
