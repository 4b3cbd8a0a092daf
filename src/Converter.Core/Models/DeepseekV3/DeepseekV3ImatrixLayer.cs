using Converter.Calibration;
using Converter.Decoder;

namespace Converter.Models.DeepseekV3;

/// <summary>
/// One DeepSeek layer's attention (and a dense layer's MLP) recomputed in float32 from the layer's input, for the
/// importance matrix: the input of every weight as llama.cpp's deepseek2 graph multiplies it (src/models/deepseek2.cpp,
/// MLA with the absorbed kv_b split): attn_q_a / attn_q and attn_kv_a_mqa on the normalised input, attn_q_b on the
/// normalised q_a, attn_k_b per head on q_nope (before rope), attn_v_b per head on the softmax-weighted normalised
/// c_kv (the latent attention output), attn_output on the heads' values, ffn_gate/ffn_up/ffn_down of a dense layer.
/// The arithmetic is the ONNX MLA function's (interleaved rope, YaRN tables, softmax scale with mscale²).
/// </summary>
public sealed class DeepseekV3ImatrixLayer : IImatrixLayer
{
    private readonly DeepseekV3Config _c;
    private readonly bool _dense;
    private readonly float[] _inNorm, _postNorm, _kvaNorm, _kva, _kvb, _o;
    private readonly float[]? _qa, _qaNorm, _qb, _q, _gate, _up, _down;
    private readonly string _p;

    public int Layer { get; }

    public DeepseekV3ImatrixLayer(DeepseekV3Config c, ModelCheckpoint ckpt, int layer)
    {
        (_c, Layer, _dense) = (c, layer, !c.IsMoeLayer(layer));
        string p = $"model.layers.{layer}.", a = p + "self_attn.";
        _p = $"blk.{layer}.";
        _inNorm = ckpt.ReadFloat32(p + "input_layernorm.weight");
        _postNorm = ckpt.ReadFloat32(p + "post_attention_layernorm.weight");
        if (c.QLoraRank != null)
        {
            _qa = ckpt.ReadFloat32(a + "q_a_proj.weight");
            _qaNorm = ckpt.ReadFloat32(a + "q_a_layernorm.weight");
            _qb = ckpt.ReadFloat32(a + "q_b_proj.weight");
        }
        else _q = ckpt.ReadFloat32(a + "q_proj.weight");
        _kva = ckpt.ReadFloat32(a + "kv_a_proj_with_mqa.weight");
        _kvaNorm = ckpt.ReadFloat32(a + "kv_a_layernorm.weight");
        _kvb = ckpt.ReadFloat32(a + "kv_b_proj.weight");
        _o = ckpt.ReadFloat32(a + "o_proj.weight");
        if (_dense)
        {
            _gate = ckpt.ReadFloat32(p + "mlp.gate_proj.weight");
            _up = ckpt.ReadFloat32(p + "mlp.up_proj.weight");
            _down = ckpt.ReadFloat32(p + "mlp.down_proj.weight");
        }
    }

    private string Q => _c.QLoraRank != null ? _p + "attn_q_a.weight" : _p + "attn_q.weight";

    public void Declare(ImatrixAccumulator acc)
    {
        int h = _c.HiddenSize, nh = _c.NumAttentionHeads;
        acc.Declare(Q, h);
        if (_c.QLoraRank is { } ql) acc.Declare(_p + "attn_q_b.weight", ql);
        acc.Declare(_p + "attn_kv_a_mqa.weight", h);
        acc.Declare(_p + "attn_k_b.weight", _c.QkNopeHeadDim, nh);
        acc.Declare(_p + "attn_v_b.weight", _c.KvLoraRank, nh);
        acc.Declare(_p + "attn_output.weight", nh * _c.VHeadDim);
        if (!_dense) return;
        acc.Declare(_p + "ffn_gate.weight", h);
        acc.Declare(_p + "ffn_up.weight", h);
        acc.Declare(_p + "ffn_down.weight", _c.IntermediateSize);
    }

    public void Add(ReadOnlySpan<float> hidden, int sequences, int length, ImatrixAccumulator acc)
    {
        int h = _c.HiddenSize;
        if (hidden.Length != (long)sequences * length * h) throw new ArgumentException($"layer {Layer}: {hidden.Length} hidden values are not {sequences} x {length} x {h}");
        var (cos, sin) = RotaryTables.Tables(_c.QkRopeHeadDim, _c.RopeTheta, _c.RopeScaling, length);
        var all = hidden.ToArray();
        // sequences run in parallel, their rows are summed in sequence order (float32 sums depend on the order)
        var rows = new List<(string, int, float[])>[sequences];
        Parallel.For(0, sequences, s => Sequence(all.AsSpan(s * length * h, length * h), length, cos, sin, rows[s] = []));
        foreach (var list in rows)
            foreach (var (name, matrix, values) in list) acc.Add(name, matrix, values, length);
    }

    private void Sequence(ReadOnlySpan<float> x, int t, float[] cos, float[] sin, List<(string Name, int Matrix, float[] Rows)> acc)
    {
        var c = _c;
        int h = c.HiddenSize, nh = c.NumAttentionHeads, nope = c.QkNopeHeadDim, rope = c.QkRopeHeadDim, vd = c.VHeadDim, kvr = c.KvLoraRank;
        int qk = nope + rope;
        float eps = (float)c.RmsNormEps;
        var xn = RmsNorm(x, t, h, _inNorm, eps);
        acc.Add((Q, 0, xn));
        acc.Add((_p + "attn_kv_a_mqa.weight", 0, xn));
        float[] q;
        if (c.QLoraRank is { } ql)
        {
            var qan = RmsNorm(Linear(xn, t, h, _qa!, ql), t, ql, _qaNorm!, eps);
            acc.Add((_p + "attn_q_b.weight", 0, qan));
            q = Linear(qan, t, ql, _qb!, nh * qk);
        }
        else q = Linear(xn, t, h, _q!, nh * qk);
        var kva = Linear(xn, t, h, _kva, kvr + rope);
        var cn = new float[t * kvr];
        var kpe = new float[t * rope];
        for (int i = 0; i < t; i++)
        {
            kva.AsSpan(i * (kvr + rope), kvr).CopyTo(cn.AsSpan(i * kvr));
            kva.AsSpan(i * (kvr + rope) + kvr, rope).CopyTo(kpe.AsSpan(i * rope));
        }
        cn = RmsNorm(cn, t, kvr, _kvaNorm, eps);
        RopeInterleaved(kpe, t, rope, cos, sin);

        float scale = (float)c.SoftmaxScale;
        var qNope = new float[t * nope];
        var qPe = new float[t * rope];
        var qLat = new float[t * kvr];
        var lat = new float[t * kvr];
        var merged = new float[t * nh * vd];
        var p = new float[t];
        for (int hd = 0; hd < nh; hd++)
        {
            for (int i = 0; i < t; i++)
            {
                q.AsSpan(i * nh * qk + hd * qk, nope).CopyTo(qNope.AsSpan(i * nope));
                q.AsSpan(i * nh * qk + hd * qk + nope, rope).CopyTo(qPe.AsSpan(i * rope));
            }
            acc.Add((_p + "attn_k_b.weight", hd, (float[])qNope.Clone()));
            RopeInterleaved(qPe, t, rope, cos, sin);
            // kv_b rows of this head: nope key rows, then v rows, each kv_lora_rank wide
            int row0 = hd * (nope + vd);
            // q_lat = q_nope W_UK: [t, kvr]
            Array.Clear(qLat);
            for (int i = 0; i < t; i++)
            {
                var dst = qLat.AsSpan(i * kvr, kvr);
                for (int j = 0; j < nope; j++)
                {
                    float qv = qNope[i * nope + j];
                    var w = _kvb.AsSpan((row0 + j) * kvr, kvr);
                    for (int r = 0; r < kvr; r++) dst[r] += qv * w[r];
                }
            }
            for (int i = 0; i < t; i++)
            {
                var qi = qLat.AsSpan(i * kvr, kvr);
                var qp = qPe.AsSpan(i * rope, rope);
                float max = float.NegativeInfinity;
                for (int u = 0; u <= i; u++)
                {
                    p[u] = (Calibration.ExpertForward.Dot(qi, cn.AsSpan(u * kvr, kvr)) + Calibration.ExpertForward.Dot(qp, kpe.AsSpan(u * rope, rope))) * scale;
                    max = Math.Max(max, p[u]);
                }
                double sum = 0;
                for (int u = 0; u <= i; u++) sum += p[u] = MathF.Exp(p[u] - max);
                var li = lat.AsSpan(i * kvr, kvr);
                li.Clear();
                for (int u = 0; u <= i; u++)
                {
                    float wgt = (float)(p[u] / sum);
                    var cu = cn.AsSpan(u * kvr, kvr);
                    for (int r = 0; r < kvr; r++) li[r] += wgt * cu[r];
                }
                for (int j = 0; j < vd; j++)
                    merged[i * nh * vd + hd * vd + j] = Calibration.ExpertForward.Dot(li, _kvb.AsSpan((row0 + nope + j) * kvr, kvr));
            }
            acc.Add((_p + "attn_v_b.weight", hd, (float[])lat.Clone()));
        }
        acc.Add((_p + "attn_output.weight", 0, merged));
        if (!_dense) return;
        var attn = Linear(merged, t, nh * vd, _o, h);
        for (int i = 0; i < attn.Length; i++) attn[i] += x[i];
        var yn = RmsNorm(attn, t, h, _postNorm, eps);
        acc.Add((_p + "ffn_gate.weight", 0, yn));
        acc.Add((_p + "ffn_up.weight", 0, yn));
        int ff = c.IntermediateSize;
        var g = Linear(yn, t, h, _gate!, ff);
        var u2 = Linear(yn, t, h, _up!, ff);
        for (int i = 0; i < g.Length; i++) g[i] = g[i] / (1f + MathF.Exp(-g[i])) * u2[i];
        acc.Add((_p + "ffn_down.weight", 0, g));
    }

    /// <summary>x [rows, in] times w^T (PyTorch [out, in]) -> [rows, out], float32 dot products.</summary>
    private static float[] Linear(ReadOnlySpan<float> x, int rows, int inDim, float[] w, int outDim)
    {
        var y = new float[rows * outDim];
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * inDim, inDim);
            for (int o = 0; o < outDim; o++) y[r * outDim + o] = Calibration.ExpertForward.Dot(xr, w.AsSpan(o * inDim, inDim));
        }
        return y;
    }

    /// <summary>transformers' DeepseekV3RMSNorm: x / sqrt(mean(x²) + eps) in float32, times the weight.</summary>
    private static float[] RmsNorm(ReadOnlySpan<float> x, int rows, int width, float[] w, float eps)
    {
        var y = new float[rows * width];
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * width, width);
            float ms = Calibration.ExpertForward.Dot(xr, xr) / width;
            float inv = 1f / MathF.Sqrt(ms + eps);
            for (int i = 0; i < width; i++) y[r * width + i] = w[i] * (xr[i] * inv);
        }
        return y;
    }

    /// <summary>ONNX RotaryEmbedding, interleaved: pairs (2i, 2i+1) rotate by the angle of frequency i at the row's position.</summary>
    private static void RopeInterleaved(float[] x, int rows, int dim, float[] cos, float[] sin)
    {
        int half = dim / 2;
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < half; i++)
            {
                float c = cos[r * half + i], s = sin[r * half + i];
                float a = x[r * dim + 2 * i], b = x[r * dim + 2 * i + 1];
                x[r * dim + 2 * i] = a * c - b * s;
                x[r * dim + 2 * i + 1] = a * s + b * c;
            }
    }
}
