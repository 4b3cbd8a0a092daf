using Converter.Decoder;
using Converter.Decoder.Onnx;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;
using F = Converter.Models.DeepseekV4.Onnx.DeepseekV4OnnxFunctions;

namespace Converter.Models.DeepseekV4.Onnx;

/// <summary>
/// DeepSeek-V4's part of the ONNX decoder: the hyper-connection streams as the scaffold's residual (expanded
/// embedding, HyperConnection before and HyperMerge after each sublayer, HyperHead before the final norm), and per layer
/// the sliding / CSA / HCA attention. The MoE (sqrt-softplus scores, hashed layers through tid2eid, clamped SwiGLU) is
/// the scaffold's, from the architecture's <see cref="MoeBlock"/>. Rotary angles are computed in the graph from the
/// positions (no tables: V4's 1M positions would need hundreds of MB of them).
/// </summary>
internal sealed class DeepseekV4OnnxFamily : IOnnxDecoderFamily, IOnnxResidualStreams
{
    private readonly DeepseekV4Architecture _arch;
    private readonly V4OnnxShape _shape;

    public DeepseekV4OnnxFamily(DeepseekV4Architecture arch)
    {
        _arch = arch;
        var c = arch.Cfg;
        _shape = new V4OnnxShape(c.HiddenSize, c.NumAttentionHeads, c.HeadDim, c.QkRopeHeadDim, c.QLoraRank, c.OGroups, c.OLoraRank,
            c.SlidingWindow, c.RmsNormEps, c.HcMult, c.HcSinkhornIters, c.HcEps, c.IndexNHeads, c.IndexHeadDim, c.IndexTopk,
            RotaryTables.InverseFrequencies(c.QkRopeHeadDim, c.RopeTheta, null),
            RotaryTables.InverseFrequencies(c.QkRopeHeadDim, c.CompressRopeTheta, c.CompressYarn));
        if (c.CompressYarn is { } y && RotaryTables.AttentionFactor(y) != 1.0)
            throw new NotSupportedException($"{c.Json.Path}: DeepSeek-V4 never scales cos/sin (attention_factor 1), got {RotaryTables.AttentionFactor(y)}");
    }

    private DeepseekV4Config C => _arch.Cfg;

    public int MaxPositions => C.MaxPositionEmbeddings;

    public OnnxRopeTables? Rope(int positions) => null;

    public OnnxKvCacheShape KvCache => throw new NotSupportedException(
        $"{C.Json.Path}: {DeepseekV4Config.Type} has no KV-cache export (its compressed attention keeps window state, not a per-token key/value cache); export without --kv-cache");

    public IOnnxResidualStreams Residual => this;

    public long[] StreamDims => [C.HcMult];

    public string Expand(OnnxDecoderBuilder b, string embedded) =>
        b.Graph.Op("Expand", [b.Graph.Unsqueeze(embedded, 2), b.Graph.ConstInt64(1, 1, C.HcMult, 1)]);

    private string Fn(OnnxDecoderBuilder b, string baseName, Action<string> create) =>
        b.Function(baseName, [], (n, _) => create(n), _shape.Signature);

    public OnnxResidualSplit Collapse(OnnxDecoderBuilder b, int layer, OnnxSublayer site, string state)
    {
        string p = _arch.Prefix(layer) + (site == OnnxSublayer.Attention ? "hc_attn_" : "hc_ffn_");
        long hc = C.HcMult, mix = (2 + hc) * hc;
        string fn = Fn(b, F.HyperConnectionName, n => F.HyperConnection(b.Model, _shape, n));
        var outs = b.Graph.Op(fn, [state, b.Plain(p + "fn", mix, hc * C.HiddenSize), b.Plain(p + "base", mix), b.Plain(p + "scale", 3)], 3,
            OnnxDecoderNames.Domain);
        return new OnnxResidualSplit(outs[2], [outs[0], outs[1]]);
    }

    public string Merge(OnnxDecoderBuilder b, int layer, OnnxSublayer site, string state, OnnxResidualSplit split, string blockOutput, string? name)
    {
        string fn = Fn(b, F.HyperMergeName, n => F.HyperMerge(b.Model, _shape, n));
        string result = name ?? b.Graph.Fresh($"layer{layer}.{(site == OnnxSublayer.Attention ? "attn" : "ffn")}.streams");
        b.Graph.OpNamed(fn, [state, split.Carry[0], split.Carry[1], blockOutput], [result], OnnxDecoderNames.Domain);
        return result;
    }

    public string Head(OnnxDecoderBuilder b, string state)
    {
        long hc = C.HcMult;
        string fn = Fn(b, F.HyperHeadName, n => F.HyperHead(b.Model, _shape, n));
        return b.Graph.Op(fn, [state, b.Plain("hc_head_fn", hc, hc * C.HiddenSize), b.Plain("hc_head_base", hc), b.Plain("hc_head_scale", 1)], 1,
            OnnxDecoderNames.Domain)[0];
    }

    public string Attention(OnnxDecoderBuilder b, int layer, string normed, OnnxLayerCache? cache)
    {
        if (cache != null) _ = KvCache; // throws: no cache export
        var c = C;
        long h = c.HiddenSize, nh = c.NumAttentionHeads, hd = c.HeadDim;
        var att = c.AttentionOf(layer);
        // The benchmark baseline attends to every earlier token (b.Options.FullAttentionBaseline), with the layer's own rope.
        var kind = b.Options.FullAttentionBaseline ? F.V4OnnxAttention.Full : att.Kind switch
        {
            V4AttentionKind.Sliding => F.V4OnnxAttention.Sliding,
            V4AttentionKind.Hca => F.V4OnnxAttention.Hca,
            _ => F.V4OnnxAttention.Csa,
        };
        string a = _arch.Prefix(layer) + "attn.";
        bool masked = b.AttentionMaskInput != null;
        var mask = new List<bool>();
        var inputs = new List<string> { normed, b.Positions };
        if (masked) inputs.Add(b.AttentionMaskInput!);
        inputs.AddRange(b.Proj(a + "wq_a.weight", c.QLoraRank, h, mask));
        inputs.Add(b.Plain(a + "q_norm.weight", c.QLoraRank));
        inputs.AddRange(b.Proj(a + "wq_b.weight", nh * hd, c.QLoraRank, mask));
        inputs.AddRange(b.Proj(a + "wkv.weight", hd, h, mask));
        inputs.Add(b.Plain(a + "kv_norm.weight", hd));
        inputs.AddRange(b.FloatProj(a + "wo_a.weight", (long)c.OGroups * c.OLoraRank, nh * hd / c.OGroups, mask));
        inputs.AddRange(b.Proj(a + "wo_b.weight", h, (long)c.OGroups * c.OLoraRank, mask));
        inputs.Add(b.Plain(a + "attn_sink", nh));
        if (kind is F.V4OnnxAttention.Hca or F.V4OnnxAttention.Csa)
        {
            long width = kind == F.V4OnnxAttention.Csa ? 2 * hd : hd;
            inputs.AddRange(b.Proj(a + "compressor.wkv.weight", width, h, mask));
            inputs.AddRange(b.Proj(a + "compressor.wgate.weight", width, h, mask));
            inputs.Add(b.Plain(a + "compressor.ape", att.Ratio, width));
            inputs.Add(b.Plain(a + "compressor.norm.weight", hd));
        }
        if (kind == F.V4OnnxAttention.Csa)
        {
            long ih = c.IndexHeadDim;
            inputs.AddRange(b.Proj(a + "indexer.wq_b.weight", (long)c.IndexNHeads * ih, c.QLoraRank, mask));
            inputs.AddRange(b.Proj(a + "indexer.weights_proj.weight", c.IndexNHeads, h, mask));
            inputs.AddRange(b.Proj(a + "indexer.compressor.wkv.weight", 2 * ih, h, mask));
            inputs.AddRange(b.Proj(a + "indexer.compressor.wgate.weight", 2 * ih, h, mask));
            inputs.Add(b.Plain(a + "indexer.compressor.ape", att.Ratio, 2 * ih));
            inputs.Add(b.Plain(a + "indexer.compressor.norm.weight", ih));
        }
        string baseName = kind switch { F.V4OnnxAttention.Sliding => F.SlidingName, F.V4OnnxAttention.Hca => F.HcaName, F.V4OnnxAttention.Csa => F.CsaName, _ => F.FullName };
        int ratio = kind is F.V4OnnxAttention.Hca or F.V4OnnxAttention.Csa ? att.Ratio : 0;
        bool mainRope = att.Kind == V4AttentionKind.Sliding;
        string fn = b.Function(baseName, mask.ToArray(), (n, m) => F.Attention(b.Model, _shape, kind, ratio, masked, mainRope, n, b.Int4, m),
            $"{_shape.Signature}/{kind}/{ratio}/{masked}/{mainRope}");
        string y = b.Graph.Fresh($"layer{layer}.attn");
        if (kind == F.V4OnnxAttention.Csa)
            b.Graph.OpNamed(fn, inputs, [y, b.ReserveSelection(layer)], OnnxDecoderNames.Domain);
        else
            b.Graph.OpNamed(fn, inputs, [y], OnnxDecoderNames.Domain);
        return y;
    }
}
