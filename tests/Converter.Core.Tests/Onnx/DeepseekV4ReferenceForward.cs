using Converter.Models;
using Converter.Models.DeepseekV4;

namespace Converter.Tests.Onnx;

/// <summary>
/// An independent float64 DeepSeek-V4 forward, written from transformers' <c>modeling_deepseek_v4.py</c> (the
/// reference of the goldens) the direct way: per token, full masks over every key as transformers builds them, the
/// compressors as transformers pools them (n = s / m windows, CSA's window 0 with kv 0 / gate -inf slots), the indexer's
/// top-k by a stable sort (equal scores lowest index first), routing by a stable sort of score + bias. Rotary angles
/// are position x inv_freq in float32 as transformers computes them; everything else in float64.
/// </summary>
public sealed class DeepseekV4ReferenceForward
{
    private readonly DeepseekV4Config _c;
    private readonly DeepseekV4Architecture _arch;
    private readonly Func<string, double[]> _w;
    private readonly Dictionary<string, double[]> _cache = new(StringComparer.Ordinal);
    private readonly float[] _mainInv, _compressInv;

    public DeepseekV4ReferenceForward(ModelCheckpoint ckpt)
    {
        _arch = (DeepseekV4Architecture)ckpt.Architecture;
        _c = _arch.Cfg;
        _w = name =>
        {
            if (_cache.TryGetValue(name, out var v)) return v;
            if (ckpt.Tensors.Info(name).DType is Converter.Tensors.DType.I32 or Converter.Tensors.DType.I64)
            {
                using var t = ckpt.Tensors.Read(name);
                return _cache[name] = Array.ConvertAll(Converter.Tensors.TensorConvert.ToInt64(t), x => (double)x);
            }
            return _cache[name] = Array.ConvertAll(ckpt.ReadFloat32(name), x => (double)x);
        };
        _mainInv = Converter.Decoder.RotaryTables.InverseFrequencies(_c.QkRopeHeadDim, _c.RopeTheta, null);
        _compressInv = Converter.Decoder.RotaryTables.InverseFrequencies(_c.QkRopeHeadDim, _c.CompressRopeTheta, _c.CompressYarn);
    }

    /// <summary>What the forward computed for a batch.</summary>
    /// <param name="Logits">[batch, seq, vocab].</param>
    /// <param name="Streams">Sequence 0: the expanded embedding, then each layer's output streams, [seq * hc * hidden] each.</param>
    /// <param name="Routing">Per layer: [batch * seq * k] experts (selection order).</param>
    /// <param name="RouteMargin">Per layer: [batch * seq] k-th minus (k+1)-th of score + bias (+inf on hashed layers).</param>
    /// <param name="Indexer">Per CSA layer (in layer order): [batch * seq * min(topk, n)] picks, -1 where not attendable.</param>
    /// <param name="IndexerMargin">Per CSA layer: [batch * seq] k-th minus (k+1)-th indexer score (+inf where all attendable entries are picked).</param>
    public sealed record Result(double[] Logits, double[][] Streams, int[][] Routing, double[][] RouteMargin, int[][] Indexer, double[][] IndexerMargin,
        int[] IndexerLayers);

    public Result Run(int[] tokens, int batch, int seq)
    {
        var c = _c;
        int L = c.NumHiddenLayers, V = c.VocabSize, D = c.HiddenSize, k = c.NumExpertsPerTok;
        var logits = new double[batch * seq * V];
        var streams = new double[L + 1][];
        var routing = Enumerable.Range(0, L).Select(_ => new int[batch * seq * k]).ToArray();
        var margins = Enumerable.Range(0, L).Select(_ => new double[batch * seq]).ToArray();
        var csa = Enumerable.Range(0, L).Where(l => c.AttentionOf(l).Kind == V4AttentionKind.Csa).ToArray();
        var picks = new List<int>[csa.Length];
        for (int i = 0; i < csa.Length; i++) picks[i] = [];
        var pickMargins = csa.Select(_ => new double[batch * seq]).ToArray();
        int pickK = 0;
        for (int b = 0; b < batch; b++)
        {
            var ids = tokens.AsSpan(b * seq, seq).ToArray();
            int hc = c.HcMult;
            var h = new double[seq][][];
            var embed = _w("embed.weight");
            for (int t = 0; t < seq; t++)
            {
                h[t] = new double[hc][];
                for (int j = 0; j < hc; j++) h[t][j] = embed.AsSpan(ids[t] * D, D).ToArray();
            }
            if (b == 0) streams[0] = Flatten(h);
            for (int l = 0; l < L; l++)
            {
                string p = _arch.Prefix(l);
                var (post, comb, x) = HyperConnection(h, p + "hc_attn_");
                var xn = x.Select(r => Rms(r, _w(p + "attn_norm.weight"))).ToArray();
                var (a, layerPicks, layerMargins, kk) = Attention(l, xn);
                h = Merge(h, post, comb, a);
                int ci = Array.IndexOf(csa, l);
                if (ci >= 0)
                {
                    picks[ci].AddRange(layerPicks!);
                    layerMargins!.CopyTo(pickMargins[ci], b * seq);
                    pickK = kk;
                }
                (post, comb, x) = HyperConnection(h, p + "hc_ffn_");
                var xn2 = x.Select(r => Rms(r, _w(p + "ffn_norm.weight"))).ToArray();
                var m = new double[seq][];
                for (int t = 0; t < seq; t++)
                {
                    var (y, sel, margin) = Moe(l, xn2[t], ids[t]);
                    m[t] = y;
                    sel.CopyTo(routing[l], (b * seq + t) * k);
                    margins[l][b * seq + t] = margin;
                }
                h = Merge(h, post, comb, m);
                if (b == 0) streams[l + 1] = Flatten(h);
            }
            var head = HyperHead(h);
            var norm = _w("norm.weight");
            var lm = _w(_arch.Names.LmHead);
            for (int t = 0; t < seq; t++)
            {
                var f = Rms(head[t], norm);
                for (int v = 0; v < V; v++) logits[(b * seq + t) * V + v] = Dot(lm.AsSpan(v * D, D), f);
            }
        }
        return new Result(logits, streams, routing, margins, picks.Select(x => x.ToArray()).ToArray(), pickMargins, csa);
    }

    private static double[] Flatten(double[][][] h) => h.SelectMany(t => t.SelectMany(s => s)).ToArray();

    private static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>W [rows, cols] x.</summary>
    private static double[] MatVec(double[] w, double[] x)
    {
        int cols = x.Length, rows = w.Length / cols;
        var y = new double[rows];
        for (int r = 0; r < rows; r++) y[r] = Dot(w.AsSpan(r * cols, cols), x);
        return y;
    }

    private double[] Rms(double[] x, double[]? w)
    {
        double ms = 0;
        foreach (var v in x) ms += v * v;
        double inv = 1 / Math.Sqrt(ms / x.Length + _c.RmsNormEps);
        var y = new double[x.Length];
        for (int i = 0; i < x.Length; i++) y[i] = x[i] * inv * (w?[i] ?? 1);
        return y;
    }

    private static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));

    private (double[][] Post, double[][][] Comb, double[][] Collapsed) HyperConnection(double[][][] h, string prefix)
    {
        int seq = h.Length, hc = _c.HcMult, D = _c.HiddenSize;
        var fn = _w(prefix + "fn");
        var bias = _w(prefix + "base");
        var scale = _w(prefix + "scale");
        double eps = _c.HcEps;
        var post = new double[seq][];
        var comb = new double[seq][][];
        var x = new double[seq][];
        for (int t = 0; t < seq; t++)
        {
            var flat = Rms(h[t].SelectMany(s => s).ToArray(), null);
            var m = MatVec(fn, flat);
            var pre = new double[hc];
            post[t] = new double[hc];
            for (int j = 0; j < hc; j++)
            {
                pre[j] = Sigmoid(m[j] * scale[0] + bias[j]) + eps;
                post[t][j] = 2 * Sigmoid(m[hc + j] * scale[1] + bias[hc + j]);
            }
            var cm = new double[hc][];
            for (int j = 0; j < hc; j++)
            {
                cm[j] = new double[hc];
                double max = double.NegativeInfinity;
                for (int q = 0; q < hc; q++) max = Math.Max(max, cm[j][q] = m[2 * hc + j * hc + q] * scale[2] + bias[2 * hc + j * hc + q]);
                double z = 0;
                for (int q = 0; q < hc; q++) z += cm[j][q] = Math.Exp(cm[j][q] - max);
                for (int q = 0; q < hc; q++) cm[j][q] = cm[j][q] / z + eps;
            }
            void Columns()
            {
                for (int q = 0; q < hc; q++)
                {
                    double s = 0;
                    for (int j = 0; j < hc; j++) s += cm[j][q];
                    for (int j = 0; j < hc; j++) cm[j][q] /= s + eps;
                }
            }
            void Rows()
            {
                for (int j = 0; j < hc; j++)
                {
                    double s = cm[j].Sum();
                    for (int q = 0; q < hc; q++) cm[j][q] /= s + eps;
                }
            }
            Columns();
            for (int i = 1; i < _c.HcSinkhornIters; i++) { Rows(); Columns(); }
            comb[t] = cm;
            x[t] = new double[D];
            for (int j = 0; j < hc; j++)
                for (int d = 0; d < D; d++) x[t][d] += pre[j] * h[t][j][d];
        }
        return (post, comb, x);
    }

    /// <summary>out_k = post_k y + sum_j comb[j][k] H_j.</summary>
    private double[][][] Merge(double[][][] h, double[][] post, double[][][] comb, double[][] y)
    {
        int seq = h.Length, hc = _c.HcMult, D = _c.HiddenSize;
        var o = new double[seq][][];
        for (int t = 0; t < seq; t++)
        {
            o[t] = new double[hc][];
            for (int q = 0; q < hc; q++)
            {
                var r = new double[D];
                for (int d = 0; d < D; d++)
                {
                    double s = post[t][q] * y[t][d];
                    for (int j = 0; j < hc; j++) s += comb[t][j][q] * h[t][j][d];
                    r[d] = s;
                }
                o[t][q] = r;
            }
        }
        return o;
    }

    private double[][] HyperHead(double[][][] h)
    {
        int seq = h.Length, hc = _c.HcMult, D = _c.HiddenSize;
        var fn = _w("hc_head_fn");
        var bias = _w("hc_head_base");
        var scale = _w("hc_head_scale");
        var o = new double[seq][];
        for (int t = 0; t < seq; t++)
        {
            var m = MatVec(fn, Rms(h[t].SelectMany(s => s).ToArray(), null));
            o[t] = new double[D];
            for (int j = 0; j < hc; j++)
            {
                double pre = Sigmoid(m[j] * scale[0] + bias[j]) + _c.HcEps;
                for (int d = 0; d < D; d++) o[t][d] += pre * h[t][j][d];
            }
        }
        return o;
    }

    /// <summary>Interleaved rope on the trailing rope dims of x (in place) at <paramref name="position"/>; <paramref name="sign"/> -1 rotates back.</summary>
    private void Rope(double[] x, int offset, int width, long position, float[] inv, double sign = 1)
    {
        int rd = _c.QkRopeHeadDim, nope = width - rd;
        for (int i = 0; i < rd / 2; i++)
        {
            float angle = (float)position * inv[i]; // float32, as transformers' rotary computes it
            double cs = Math.Cos(angle), sn = sign * Math.Sin(angle);
            int a = offset + nope + 2 * i;
            double x0 = x[a], x1 = x[a + 1];
            x[a] = x0 * cs - x1 * sn;
            x[a + 1] = x1 * cs + x0 * sn;
        }
    }

    /// <summary>
    /// transformers' compressor: n = s / m complete windows; HCA pools each window's m slots, CSA window w's 2m slots
    /// (window w-1's first half, window w's second half; window 0's first half kv 0, gate -inf); softmax of gate +
    /// position bias per feature over the slots, kv norm, compress rope at position w m.
    /// </summary>
    private double[][] Compress(double[][] x, string prefix, int m, int width, bool overlap)
    {
        int seq = x.Length, n = seq / m, dd = overlap ? 2 * width : width;
        var wkv = _w(prefix + "wkv.weight");
        var wgate = _w(prefix + "wgate.weight");
        var ape = _w(prefix + "ape");
        var norm = _w(prefix + "norm.weight");
        var kv = new double[n * m][];
        var gate = new double[n * m][];
        for (int t = 0; t < n * m; t++)
        {
            kv[t] = MatVec(wkv, x[t]);
            gate[t] = MatVec(wgate, x[t]);
            for (int f = 0; f < dd; f++) gate[t][f] += ape[(t % m) * dd + f];
        }
        var entries = new double[n][];
        for (int w = 0; w < n; w++)
        {
            var c = new double[width];
            for (int f = 0; f < width; f++)
            {
                var gs = new List<double>();
                var vs = new List<double>();
                if (overlap)
                {
                    for (int j = 0; j < m; j++)
                    {
                        if (w == 0) { gs.Add(double.NegativeInfinity); vs.Add(0); }
                        else { gs.Add(gate[(w - 1) * m + j][f]); vs.Add(kv[(w - 1) * m + j][f]); }
                    }
                    for (int j = 0; j < m; j++) { gs.Add(gate[w * m + j][width + f]); vs.Add(kv[w * m + j][width + f]); }
                }
                else
                {
                    for (int j = 0; j < m; j++) { gs.Add(gate[w * m + j][f]); vs.Add(kv[w * m + j][f]); }
                }
                double max = gs.Max(), z = 0, s = 0;
                for (int j = 0; j < gs.Count; j++) z += Math.Exp(gs[j] - max);
                for (int j = 0; j < gs.Count; j++) s += Math.Exp(gs[j] - max) / z * vs[j];
                c[f] = s;
            }
            var e = Rms(c, norm);
            Rope(e, 0, width, (long)w * m, _compressInv);
            entries[w] = e;
        }
        return entries;
    }

    private (double[][] Y, int[]? Picks, double[]? Margins, int K) Attention(int layer, double[][] x)
    {
        var c = _c;
        int seq = x.Length, nh = c.NumAttentionHeads, hd = c.HeadDim, D = c.HiddenSize, W = c.SlidingWindow;
        var att = c.AttentionOf(layer);
        string a = _arch.Prefix(layer) + "attn.";
        var inv = att.Kind == V4AttentionKind.Sliding ? _mainInv : _compressInv;
        var qr = new double[seq][];
        var q = new double[seq][];
        var kv = new double[seq][];
        for (int t = 0; t < seq; t++)
        {
            qr[t] = Rms(MatVec(_w(a + "wq_a.weight"), x[t]), _w(a + "q_norm.weight"));
            var qt = MatVec(_w(a + "wq_b.weight"), qr[t]);
            for (int hh = 0; hh < nh; hh++)
            {
                var head = Rms(qt.AsSpan(hh * hd, hd).ToArray(), null);
                head.CopyTo(qt, hh * hd);
                Rope(qt, hh * hd, hd, t, inv);
            }
            q[t] = qt;
            kv[t] = Rms(MatVec(_w(a + "wkv.weight"), x[t]), _w(a + "kv_norm.weight"));
            Rope(kv[t], 0, hd, t, inv);
        }
        double[][] entries = [];
        int m = att.Ratio;
        int[]? picks = null;
        double[]? pickMargins = null;
        int kk = 0;
        // visible[t] = the compressed entries query t attends
        var visible = new List<int>[seq];
        if (att.Kind != V4AttentionKind.Sliding)
        {
            entries = Compress(x, a + "compressor.", m, hd, att.Kind == V4AttentionKind.Csa);
            int n = entries.Length;
            if (att.Kind == V4AttentionKind.Hca)
            {
                for (int t = 0; t < seq; t++) visible[t] = Enumerable.Range(0, n).Where(w => w < (t + 1) / m).ToList();
            }
            else
            {
                (picks, pickMargins, kk) = Indexer(layer, x, qr, m);
                for (int t = 0; t < seq; t++) visible[t] = picks.AsSpan(t * kk, kk).ToArray().Where(i => i >= 0).ToList();
            }
        }
        var sinks = _w(a + "attn_sink");
        double scale = 1 / Math.Sqrt(hd);
        var y = new double[seq][];
        var woa = _w(a + "wo_a.weight");
        var wob = _w(a + "wo_b.weight");
        int g = c.OGroups, ol = c.OLoraRank, inG = nh * hd / g;
        for (int t = 0; t < seq; t++)
        {
            var keys = new List<double[]>();
            for (int j = Math.Max(0, t - W + 1); j <= t; j++) keys.Add(kv[j]); // kv_idx > q_idx - window, kv_idx <= q_idx
            if (visible[t] != null) foreach (var w in visible[t]) keys.Add(entries[w]);
            var o = new double[nh * hd];
            for (int hh = 0; hh < nh; hh++)
            {
                var l = keys.Select(kvec => Dot(q[t].AsSpan(hh * hd, hd), kvec) * scale).ToList();
                double max = Math.Max(l.DefaultIfEmpty(double.NegativeInfinity).Max(), sinks[hh]);
                double z = Math.Exp(sinks[hh] - max);
                foreach (var v in l) z += Math.Exp(v - max);
                for (int i = 0; i < keys.Count; i++)
                {
                    double pr = Math.Exp(l[i] - max) / z;
                    for (int d = 0; d < hd; d++) o[hh * hd + d] += pr * keys[i][d];
                }
                Rope(o, hh * hd, hd, t, inv, sign: -1);
            }
            var low = new double[g * ol];
            for (int gg = 0; gg < g; gg++)
                for (int r = 0; r < ol; r++)
                    low[gg * ol + r] = Dot(woa.AsSpan((gg * ol + r) * inG, inG), o.AsSpan(gg * inG, inG));
            y[t] = MatVec(wob, low);
        }
        return (y, picks, pickMargins, kk);
    }

    /// <summary>transformers' lightning indexer: picks [seq * k] (k = min(topk, n)), -1 where not attendable; margins.</summary>
    private (int[] Picks, double[] Margins, int K) Indexer(int layer, double[][] x, double[][] qr, int m)
    {
        var c = _c;
        int seq = x.Length, ni = c.IndexNHeads, di = c.IndexHeadDim;
        string a = _arch.Prefix(layer) + "attn.indexer.";
        var keys = Compress(x, a + "compressor.", m, di, overlap: true);
        int n = keys.Length, k = Math.Min(c.IndexTopk, n);
        var wq = _w(a + "wq_b.weight");
        var wp = _w(a + "weights_proj.weight");
        var picks = new int[seq * k];
        var margins = new double[seq];
        for (int t = 0; t < seq; t++)
        {
            var qi = MatVec(wq, qr[t]);
            for (int hh = 0; hh < ni; hh++) Rope(qi, hh * di, di, t, _compressInv);
            var w = MatVec(wp, x[t]);
            var score = new double[n];
            int threshold = (t + 1) / m;
            for (int e = 0; e < n; e++)
            {
                if (e >= threshold) { score[e] = double.NegativeInfinity; continue; }
                double s = 0;
                for (int hh = 0; hh < ni; hh++)
                    s += w[hh] / Math.Sqrt(ni) * Math.Max(0, Dot(qi.AsSpan(hh * di, di), keys[e])) / Math.Sqrt(di);
                score[e] = s;
            }
            var order = Enumerable.Range(0, n).OrderByDescending(e => score[e]).ThenBy(e => e).ToArray(); // stable: ties lowest index first
            for (int j = 0; j < k; j++) picks[t * k + j] = order[j] >= threshold ? -1 : order[j];
            margins[t] = k < n && double.IsFinite(score[order[k]]) ? score[order[k - 1]] - score[order[k]] : double.PositiveInfinity;
        }
        return (picks, margins, k);
    }

    private (double[] Y, int[] Selected, double Margin) Moe(int layer, double[] x, int token)
    {
        var c = _c;
        string p = _arch.Prefix(layer) + "ffn.";
        int E = c.NRoutedExperts, k = c.NumExpertsPerTok;
        var logits = MatVec(_w(p + "gate.weight"), x);
        var scores = logits.Select(l => c.ScoringFunc switch
        {
            "sigmoid" => Sigmoid(l),
            "softmax" => double.NaN, // set below
            _ => Math.Sqrt(l > 20 ? l : Math.Log(1 + Math.Exp(l))), // torch softplus (threshold 20), then sqrt
        }).ToArray();
        if (c.ScoringFunc == "softmax")
        {
            double max = logits.Max(), z = logits.Sum(l => Math.Exp(l - max));
            scores = logits.Select(l => Math.Exp(l - max) / z).ToArray();
        }
        int[] sel;
        double margin = double.PositiveInfinity;
        if (c.IsHashLayer(layer))
        {
            var table = _w(p + "gate.tid2eid");
            sel = Enumerable.Range(0, k).Select(j => (int)table[token * k + j]).ToArray();
        }
        else
        {
            var bias = _w(p + "gate.bias");
            var choice = scores.Select((s, e) => s + bias[e]).ToArray();
            var order = Enumerable.Range(0, E).OrderByDescending(e => choice[e]).ThenBy(e => e).ToArray();
            sel = order[..k];
            if (k < E) margin = choice[order[k - 1]] - choice[order[k]];
        }
        var w = sel.Select(e => scores[e]).ToArray();
        double sum = w.Sum();
        for (int j = 0; j < k; j++) w[j] = (c.NormTopkProb ? w[j] / (sum + 1e-20) : w[j]) * c.RoutedScalingFactor;
        var y = new double[c.HiddenSize];
        double L = c.SwigluLimit;
        double[] Swiglu(string w1, string w3, string w2)
        {
            var gate = MatVec(_w(w1), x);
            var up = MatVec(_w(w3), x);
            var hmid = new double[gate.Length];
            for (int i = 0; i < gate.Length; i++)
            {
                double gc = Math.Min(gate[i], L), uc = Math.Clamp(up[i], -L, L);
                hmid[i] = gc * Sigmoid(gc) * uc;
            }
            return MatVec(_w(w2), hmid);
        }
        for (int j = 0; j < k; j++)
        {
            var e = Swiglu($"{p}experts.{sel[j]}.w1.weight", $"{p}experts.{sel[j]}.w3.weight", $"{p}experts.{sel[j]}.w2.weight");
            for (int d = 0; d < y.Length; d++) y[d] += w[j] * e[d];
        }
        if (c.NSharedExperts > 0)
        {
            var s = Swiglu(p + "shared_experts.w1.weight", p + "shared_experts.w3.weight", p + "shared_experts.w2.weight");
            for (int d = 0; d < y.Length; d++) y[d] += s[d];
        }
        return (y, sel, margin);
    }
}
