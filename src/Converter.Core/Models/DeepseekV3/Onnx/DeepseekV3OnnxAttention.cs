using Converter.Decoder;
using Converter.Decoder.Onnx;

namespace Converter.Models.DeepseekV3.Onnx;

/// <summary>The DeepSeek family's part of the ONNX decoder: MLA (expanded) per layer, YaRN rotary tables.</summary>
internal sealed class DeepseekV3OnnxAttention(DeepseekV3Config c) : IOnnxDecoderFamily
{
    public int MaxPositions => c.MaxPositionEmbeddings;

    public OnnxRopeTables Rope(int positions)
    {
        var (cos, sin) = RotaryTables.Tables(c.QkRopeHeadDim, c.RopeTheta, c.RopeScaling, positions);
        return new OnnxRopeTables(cos, sin, c.QkRopeHeadDim / 2);
    }

    /// <summary>The MLA latent (normalised c_kv, then the roped k_pe: kv_lora_rank + rope values per token) split
    /// into two equal halves, key and value, as onnxruntime-genai wants both the same shape; an odd width gets one zero.</summary>
    public OnnxKvCacheShape KvCache => new(1, (c.KvLoraRank + c.QkRopeHeadDim + 1) / 2);

    public string Attention(OnnxDecoderBuilder b, int layer, string normed, OnnxLayerCache? cache)
    {
        long h = c.HiddenSize, nh = c.NumAttentionHeads;
        var inputs = new List<string> { normed, b.Mask, b.Positions, b.Cos, b.Sin };
        var mask = new List<bool>();
        string a = $"model.layers.{layer}.self_attn.";
        if (c.QLoraRank is { } q)
        {
            inputs.AddRange(b.Proj(a + "q_a_proj.weight", q, h, mask));
            inputs.Add(b.Plain(a + "q_a_layernorm.weight", q));
            inputs.AddRange(b.Proj(a + "q_b_proj.weight", nh * c.QkHeadDim, q, mask));
        }
        else
        {
            inputs.AddRange(b.Proj(a + "q_proj.weight", nh * c.QkHeadDim, h, mask));
        }
        inputs.AddRange(b.Proj(a + "kv_a_proj_with_mqa.weight", c.KvLoraRank + c.QkRopeHeadDim, h, mask));
        inputs.Add(b.Plain(a + "kv_a_layernorm.weight", c.KvLoraRank));
        // With a cache the key half of kv_b is absorbed into the query and the value half applied after attention,
        // so kv_b is a plain float weight there.
        inputs.AddRange(cache == null
            ? b.Proj(a + "kv_b_proj.weight", nh * (c.QkNopeHeadDim + c.VHeadDim), c.KvLoraRank, mask)
            : b.FloatProj(a + "kv_b_proj.weight", nh * (c.QkNopeHeadDim + c.VHeadDim), c.KvLoraRank, mask));
        inputs.AddRange(b.Proj(a + "o_proj.weight", h, nh * c.VHeadDim, mask));
        string attn = b.Graph.Fresh($"layer{layer}.attn");
        if (cache != null)
        {
            inputs.Add(cache.PastKey);
            inputs.Add(cache.PastValue);
            string cachedFn = b.Function(DeepseekV3OnnxFunctions.MlaCachedName, mask.ToArray(),
                (n, m) => DeepseekV3OnnxFunctions.MlaCached(b.Model, c, n, KvCache.HeadSize, b.Int4, m));
            b.Graph.OpNamed(cachedFn, inputs, [attn, cache.PresentKey, cache.PresentValue], OnnxDecoderNames.Domain);
            return attn;
        }
        string fn = b.Function(DeepseekV3OnnxFunctions.MlaName, mask.ToArray(), (n, m) => DeepseekV3OnnxFunctions.Mla(b.Model, c, n, b.Int4, m));
        b.Graph.OpNamed(fn, inputs, [attn], OnnxDecoderNames.Domain);
        return attn;
    }
}
