using Converter.Decoder;
using Converter.Decoder.Onnx;
using Converter.Formats.Onnx;
using Converter.Numerics.Int4;
using static Converter.Formats.Onnx.OnnxAttr;

namespace Converter.Models.Qwen3Moe.Onnx;

/// <summary>The Qwen3-MoE family's part of the ONNX decoder: GQA attention with q/k norms per layer, rotate-half rope.</summary>
internal sealed class Qwen3MoeOnnxAttention(Qwen3MoeConfig c) : IOnnxDecoderFamily
{
    public const string GqaName = "GQA", GqaCachedName = "GQA_cached";

    /// <summary>The GQA cache: each key-value head's normed, roped keys and its values.</summary>
    public OnnxKvCacheShape KvCache => new(c.NumKeyValueHeads, c.HeadDim);

    public int MaxPositions => c.MaxPositionEmbeddings;

    public OnnxRopeTables Rope(int positions)
    {
        var (cos, sin) = RotaryTables.Tables(c.HeadDim, c.RopeTheta, c.RopeScaling, positions);
        return new OnnxRopeTables(cos, sin, c.HeadDim / 2);
    }

    public string Attention(OnnxDecoderBuilder b, int layer, string normed, OnnxLayerCache? cache)
    {
        long h = c.HiddenSize, hd = c.HeadDim, q = c.NumAttentionHeads * hd, kv = c.NumKeyValueHeads * hd;
        string a = $"model.layers.{layer}.self_attn.";
        var mask = new List<bool>();
        var inputs = new List<string> { normed, b.Mask, b.Positions, b.Cos, b.Sin };
        inputs.AddRange(b.Proj(a + "q_proj.weight", q, h, mask));
        inputs.AddRange(b.Proj(a + "k_proj.weight", kv, h, mask));
        inputs.AddRange(b.Proj(a + "v_proj.weight", kv, h, mask));
        inputs.AddRange(b.Proj(a + "o_proj.weight", h, q, mask));
        inputs.Add(b.Plain(a + "q_norm.weight", hd));
        inputs.Add(b.Plain(a + "k_norm.weight", hd));
        string attn = b.Graph.Fresh($"layer{layer}.attn");
        if (cache != null)
        {
            inputs.Add(cache.PastKey);
            inputs.Add(cache.PastValue);
            string cachedFn = b.Function(GqaCachedName, mask.ToArray(), (n, m) => Gqa(b.Model, n, b.Int4, m, b.Epsilon, cached: true));
            b.Graph.OpNamed(cachedFn, inputs, [attn, cache.PresentKey, cache.PresentValue], OnnxDecoderNames.Domain);
            return attn;
        }
        string fn = b.Function(GqaName, mask.ToArray(), (n, m) => Gqa(b.Model, n, b.Int4, m, b.Epsilon));
        b.Graph.OpNamed(fn, inputs, [attn], OnnxDecoderNames.Domain);
        return attn;
    }

    /// <summary>
    /// Inputs: x, additive mask [b|1, 1, s, s], position_ids, cos, sin, q/k/v/o projections, q_norm, k_norm. Each head's
    /// q and k are RMS-normalised over head_dim before rotate-half rope; the key/value heads are repeated to the query
    /// heads (transformers' repeat_kv) and attended with scale 1/sqrt(head_dim). <paramref name="cached"/>: two more inputs,
    /// past_key and past_value [b, kv heads, P, head_dim], that precede this call's keys and values, and two more
    /// outputs, present_key and present_value (past then new).
    /// </summary>
    private void Gqa(OnnxModelBuilder model, string name, Int4Scheme? scheme, bool[]? int4, float eps, bool cached = false)
    {
        var f = model.Function(OnnxDecoderNames.Domain, name);
        f.DocString = "Qwen3 grouped-query attention with q/k RMSNorm, causal, rotate-half rope";
        bool Q(int i) => int4 != null && int4[i];
        int nh = c.NumAttentionHeads, nkv = c.NumKeyValueHeads, hd = c.HeadDim, h = c.HiddenSize;
        string x = f.Input("x"), mask = f.Input("mask"), pos = f.Input("position_ids"), cos = f.Input("cos"), sin = f.Input("sin");
        var qp = Proj.In(f, "q_proj", Q(0), scheme, nh * hd, h);
        var kp = Proj.In(f, "k_proj", Q(1), scheme, nkv * hd, h);
        var vp = Proj.In(f, "v_proj", Q(2), scheme, nkv * hd, h);
        var op = Proj.In(f, "o_proj", Q(3), scheme, h, nh * hd);
        string qNorm = f.Input("q_norm"), kNorm = f.Input("k_norm");

        string bs = f.Shape(x, 0, 2);
        string x2 = f.Reshape(x, -1, h);
        // [b, s, heads, hd] -> RMSNorm over hd -> [b, heads, s, hd]
        string Heads(string flat, int heads, string? norm)
        {
            string t = f.Reshape(flat, f.Concat(0, bs, f.ConstInt64(heads, hd)));
            if (norm != null) t = f.Op("RMSNormalization", [t, norm], Float("epsilon", eps), Int("axis", -1));
            return f.Transpose(t, 0, 2, 1, 3);
        }
        string qh = f.Op("RotaryEmbedding", [Heads(qp.Apply(f, x2), nh, qNorm), cos, sin, pos], Int("interleaved", 0));
        string kh = f.Op("RotaryEmbedding", [Heads(kp.Apply(f, x2), nkv, kNorm), cos, sin, pos], Int("interleaved", 0));
        string vh = Heads(vp.Apply(f, x2), nkv, null);
        string? presentKey = null, presentValue = null;
        if (cached)
        {
            string pastKey = f.Input("past_key"), pastValue = f.Input("past_value");
            kh = presentKey = f.Concat(2, pastKey, kh);
            vh = presentValue = f.Concat(2, pastValue, vh);
        }
        if (nkv != nh)
        {
            // repeat_kv: [b, nkv, s, hd] -> [b, nkv, rep, s, hd] -> [b, nh, s, hd]
            string Repeat(string t) => f.Reshape(f.Op("Expand", [f.Unsqueeze(t, 2), f.ConstInt64(1, 1, nh / nkv, 1, 1)]),
                f.Concat(0, f.Shape(t, 0, 1), f.ConstInt64(nh), f.Shape(t, 2, 4)));
            kh = Repeat(kh);
            vh = Repeat(vh);
        }
        string attn = f.Op("Attention", [qh, kh, vh, mask], Float("scale", (float)c.SoftmaxScale));
        string merged = f.Reshape(f.Transpose(attn, 0, 2, 1, 3), -1, nh * hd);
        f.Output(f.Reshape(op.Apply(f, merged), f.Shape(x)));
        if (cached)
        {
            f.Output(presentKey!);
            f.Output(presentValue!);
        }
    }
}
