using Converter.Decoder.Onnx;
using System.Text.Json.Nodes;

namespace Converter.Models.DeepseekV4;

/// <summary>
/// The DeepSeek-V4 family in the official hub layout (DeepSeek's tensor names, no <c>model.</c> prefix): hyper-connection
/// streams mixed per layer (<c>hc_attn_*</c>, <c>hc_ffn_*</c>, <c>hc_head_*</c>), MQA with one shared K=V head, attention
/// sinks and a grouped low-rank output, per layer sliding / CSA (compressor + lightning indexer) / HCA (compressor)
/// attention, MoE on every layer (hash-routed through <c>tid2eid</c> on the first layers), MTP layers under <c>mtp.N.</c>.
/// A declarative name map over <see cref="DeepseekV4Config"/>; names it does not know fail loudly.
/// <para>The official layout (what <c>quantize --scheme fp8-block</c> writes, notes section 4): FP8 e4m3 with E8M0
/// 128x128 scales for <c>attn.{wq_a,wq_b,wkv,wo_a,wo_b}</c>, <c>attn.indexer.wq_b</c>, the shared experts and the MTP
/// <c>e_proj</c>/<c>h_proj</c>; FP4 e2m1 with E8M0 1x32 scales for the routed experts; everything else as stored.
/// Scales are <c>&lt;prefix&gt;.scale</c>.</para>
/// </summary>
public sealed class DeepseekV4Architecture(DeepseekV4Config cfg) : ModelArchitecture
{
    public DeepseekV4Config Cfg { get; } = cfg;

    public override string ModelType => DeepseekV4Config.Type;
    public override ConfigJson Config => Cfg.Json;
    public override int VocabSize => Cfg.VocabSize;
    public override int HiddenSize => Cfg.HiddenSize;
    public override int NumLayers => Cfg.NumHiddenLayers;
    public override int NumMtpLayers => Cfg.NumNextnPredictLayers;
    public override int NumRoutedExperts => Cfg.NRoutedExperts;
    public override int NumExpertsPerToken => Cfg.NumExpertsPerTok;
    public override bool IsMoeLayer(int layer) => layer >= 0 && layer < Cfg.NumHiddenLayers + Cfg.NumNextnPredictLayers;
    public override double RmsNormEps => Cfg.RmsNormEps;

    public override DecoderTensorNames Names => new("embed.weight", "norm.weight", Cfg.TieWordEmbeddings ? "embed.weight" : "head.weight",
        l => $"{Prefix(l)}attn_norm.weight", l => $"{Prefix(l)}ffn_norm.weight");

    /// <summary>"layers.L." for a main layer, "mtp.i." for MTP layer i (layer index NumLayers + i).</summary>
    public string Prefix(int layer) => layer < Cfg.NumHiddenLayers ? $"layers.{layer}." : $"mtp.{layer - Cfg.NumHiddenLayers}.";

    private static readonly HashSet<string> Fp8Parts = new(StringComparer.Ordinal)
    {
        "attn.wq_a", "attn.wq_b", "attn.wkv", "attn.wo_a", "attn.wo_b", "attn.indexer.wq_b", "e_proj", "h_proj",
    };

    public override WeightEncoding OfficialEncoding(TensorRole role) => role.Kind switch
    {
        TensorKind.RoutedExpert => WeightEncoding.Fp4Group32,
        TensorKind.SharedExpert => WeightEncoding.Fp8BlockPow2,
        TensorKind.AttentionProjection or TensorKind.MtpProjection when Fp8Parts.Contains(role.Part) => WeightEncoding.Fp8BlockPow2,
        _ => WeightEncoding.Dense,
    };

    public override bool IsFp8Quantized(TensorRole role) => OfficialEncoding(role) != WeightEncoding.Dense;

    public override string ScaleTensorName(string weightName) =>
        weightName.EndsWith(".weight", StringComparison.Ordinal) ? weightName[..^".weight".Length] + ".scale" : weightName + ".scale";

    public override string? ScaledWeightName(string scaleName) =>
        scaleName.EndsWith(".scale", StringComparison.Ordinal) ? scaleName[..^".scale".Length] + ".weight" : null;

    public override JsonObject OfficialQuantizationConfig() => new()
    {
        ["quant_method"] = "fp8",
        ["fmt"] = "e4m3",
        ["scale_fmt"] = "ue8m0",
        ["activation_scheme"] = "dynamic",
        ["weight_block_size"] = new JsonArray(128, 128),
    };

    public override bool UsesSafetensorsSaveOrder => true;

    /// <summary>The official BF16 checkpoint keeps hyper-connections, sinks, position biases and the gate bias in F32.</summary>
    public override bool NarrowsToBf16(TensorRole role) => false;

    public override IReadOnlyList<ExpectedTensor> ExpectedTensors()
    {
        var c = Cfg;
        long h = c.HiddenSize, v = c.VocabSize, hc = c.HcMult, hd = c.HeadDim;
        var list = new List<ExpectedTensor>
        {
            new("embed.weight", [v, h], new TensorRole(TensorKind.Embedding)),
        };
        void Root(string name, long[] shape, TensorKind kind, string part) => list.Add(new(name, shape, new TensorRole(kind, Part: part)));
        for (int layer = 0; layer < c.NumHiddenLayers + c.NumNextnPredictLayers; layer++)
        {
            string p = Prefix(layer);
            bool mtp = layer >= c.NumHiddenLayers;
            void Add(string name, long[] shape, TensorKind kind, int expert = -1) =>
                list.Add(new ExpectedTensor(p + name, shape, new TensorRole(kind, layer, expert, PartOf(name), mtp)));
            if (mtp)
            {
                Add("e_proj.weight", [h, h], TensorKind.MtpProjection);
                Add("h_proj.weight", [h, h], TensorKind.MtpProjection);
                Add("enorm.weight", [h], TensorKind.Norm);
                Add("hnorm.weight", [h], TensorKind.Norm);
                Add("norm.weight", [h], TensorKind.Norm);
                Add("hc_head_fn", [hc, hc * h], TensorKind.Auxiliary);
                Add("hc_head_base", [hc], TensorKind.Auxiliary);
                Add("hc_head_scale", [1], TensorKind.Auxiliary);
            }
            long mix = (2 + hc) * hc;
            foreach (var site in new[] { "attn", "ffn" })
            {
                Add($"hc_{site}_fn", [mix, hc * h], TensorKind.Auxiliary);
                Add($"hc_{site}_base", [mix], TensorKind.Auxiliary);
                Add($"hc_{site}_scale", [3], TensorKind.Auxiliary);
            }
            Add("attn_norm.weight", [h], TensorKind.Norm);
            Add("ffn_norm.weight", [h], TensorKind.Norm);
            Add("attn.attn_sink", [c.NumAttentionHeads], TensorKind.Auxiliary);
            Add("attn.wq_a.weight", [c.QLoraRank, h], TensorKind.AttentionProjection);
            Add("attn.q_norm.weight", [c.QLoraRank], TensorKind.Norm);
            Add("attn.wq_b.weight", [c.NumAttentionHeads * hd, c.QLoraRank], TensorKind.AttentionProjection);
            Add("attn.wkv.weight", [hd, h], TensorKind.AttentionProjection);
            Add("attn.kv_norm.weight", [hd], TensorKind.Norm);
            Add("attn.wo_a.weight", [(long)c.OGroups * c.OLoraRank, c.NumAttentionHeads * hd / c.OGroups], TensorKind.AttentionProjection);
            Add("attn.wo_b.weight", [h, (long)c.OGroups * c.OLoraRank], TensorKind.AttentionProjection);
            var att = c.AttentionOf(layer);
            if (att.Kind != V4AttentionKind.Sliding)
            {
                long width = att.Kind == V4AttentionKind.Csa ? 2 * hd : hd; // CSA: two overlapping halves Ca | Cb
                Add("attn.compressor.wkv.weight", [width, h], TensorKind.AttentionProjection);
                Add("attn.compressor.wgate.weight", [width, h], TensorKind.AttentionProjection);
                Add("attn.compressor.ape", [att.Ratio, width], TensorKind.Auxiliary);
                Add("attn.compressor.norm.weight", [hd], TensorKind.Norm);
            }
            if (att.Kind == V4AttentionKind.Csa)
            {
                long ih = c.IndexHeadDim;
                Add("attn.indexer.wq_b.weight", [(long)c.IndexNHeads * ih, c.QLoraRank], TensorKind.AttentionProjection);
                Add("attn.indexer.weights_proj.weight", [c.IndexNHeads, h], TensorKind.AttentionProjection);
                Add("attn.indexer.compressor.wkv.weight", [2 * ih, h], TensorKind.AttentionProjection);
                Add("attn.indexer.compressor.wgate.weight", [2 * ih, h], TensorKind.AttentionProjection);
                Add("attn.indexer.compressor.ape", [att.Ratio, 2 * ih], TensorKind.Auxiliary);
                Add("attn.indexer.compressor.norm.weight", [ih], TensorKind.Norm);
            }
            long e = c.NRoutedExperts, mi = c.MoeIntermediateSize;
            Add("ffn.gate.weight", [e, h], TensorKind.Router);
            if (c.IsHashLayer(layer)) Add("ffn.gate.tid2eid", [v, c.NumExpertsPerTok], TensorKind.Auxiliary);
            else Add("ffn.gate.bias", [e], TensorKind.RouterBias);
            for (int x = 0; x < e; x++)
            {
                Add($"ffn.experts.{x}.w1.weight", [mi, h], TensorKind.RoutedExpert, x);
                Add($"ffn.experts.{x}.w3.weight", [mi, h], TensorKind.RoutedExpert, x);
                Add($"ffn.experts.{x}.w2.weight", [h, mi], TensorKind.RoutedExpert, x);
            }
            if (c.NSharedExperts > 0)
            {
                long si = mi * c.NSharedExperts;
                Add("ffn.shared_experts.w1.weight", [si, h], TensorKind.SharedExpert);
                Add("ffn.shared_experts.w3.weight", [si, h], TensorKind.SharedExpert);
                Add("ffn.shared_experts.w2.weight", [h, si], TensorKind.SharedExpert);
            }
        }
        Root("hc_head_fn", [hc, hc * h], TensorKind.Auxiliary, "hc_head_fn");
        Root("hc_head_base", [hc], TensorKind.Auxiliary, "hc_head_base");
        Root("hc_head_scale", [1], TensorKind.Auxiliary, "hc_head_scale");
        Root("norm.weight", [h], TensorKind.Norm, "norm");
        if (!c.TieWordEmbeddings) list.Add(new ExpectedTensor("head.weight", [v, h], new TensorRole(TensorKind.LmHead)));
        return list;
    }

    /// <summary>The part of a layer tensor: its name within the layer without ".weight" ("attn.wq_a", "ffn.experts.3.w1" -> "w1").</summary>
    private static string PartOf(string name)
    {
        var part = name.EndsWith(".weight", StringComparison.Ordinal) ? name[..^".weight".Length] : name;
        if (part.StartsWith("ffn.experts.", StringComparison.Ordinal)) return part[(part.LastIndexOf('.') + 1)..];
        if (part.StartsWith("ffn.shared_experts.", StringComparison.Ordinal)) return part["ffn.shared_experts.".Length..];
        return part;
    }

    private Dictionary<string, TensorRole>? _roles;

    public override TensorRole Classify(string name)
    {
        _roles ??= ExpectedTensors().ToDictionary(t => t.Name, t => t.Role, StringComparer.Ordinal);
        if (_roles.TryGetValue(name, out var role)) return role;
        if (ScaledWeightName(name) is { } weight && _roles.TryGetValue(weight, out var owner) && owner.IsLinearWeight)
            return owner with { Kind = TensorKind.QuantScale };
        // compressed-tensors pack-quantized parts of a linear weight (quantize --scheme int4)
        if (Converter.Formats.CompressedTensors.PackQuantized.IsPart(name, out var packedWeight) && _roles.TryGetValue(packedWeight, out var packedOwner)
            && packedOwner.IsLinearWeight)
            return packedOwner with { Kind = TensorKind.QuantPacked };
        // a hash layer's unused selection bias (llama.cpp drops it; the hub checkpoints carry one)
        if (name.EndsWith(".ffn.gate.bias", StringComparison.Ordinal) && _roles.TryGetValue(name[..^"bias".Length] + "tid2eid", out var table))
            return table with { Kind = TensorKind.RouterBias, Part = "ffn.gate.bias" };
        throw new InvalidDataException($"tensor '{name}' is not part of a {ModelType} checkpoint with this config");
    }

    public override MoeBlock Moe(int layer)
    {
        if (!IsMoeLayer(layer)) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} is not a layer of this model");
        string p = Prefix(layer) + "ffn.";
        bool hash = Cfg.IsHashLayer(layer);
        long mi = Cfg.MoeIntermediateSize;
        var shared = Cfg.NSharedExperts > 0
            ? new FeedForwardWeights(p + "shared_experts.w1.weight", p + "shared_experts.w3.weight", p + "shared_experts.w2.weight", mi * Cfg.NSharedExperts)
            : null;
        return new MoeBlock(layer, p + "gate.weight", hash ? null : p + "gate.bias", (e, f) => $"{p}experts.{e}.{Proj(f)}.weight", mi, shared,
            Cfg.Routing(hash), p + "experts.")
        {
            // transformers clamps the routed and the shared experts' SwiGLU alike (DeepSeek's reference leaves the shared one unclamped)
            HashTable = hash ? p + "gate.tid2eid" : null, SwigluLimit = Cfg.SwigluLimit, SharedSwigluLimit = Cfg.SwigluLimit,
        };
    }

    /// <summary>The ONNX decoder: hyper-connection streams as the residual, sliding / CSA / HCA attention (<see cref="Onnx.DeepseekV4OnnxFamily"/>).</summary>
    public override IOnnxDecoderFamily Onnx => new Onnx.DeepseekV4OnnxFamily(this);

    /// <summary>w1 is the gate, w3 the up and w2 the down projection.</summary>
    private static string Proj(FfnProjection f) => f switch { FfnProjection.Gate => "w1", FfnProjection.Up => "w3", _ => "w2" };

    public override FeedForwardWeights DenseMlp(int layer) =>
        throw new ArgumentOutOfRangeException(nameof(layer), $"{ModelType} has no dense MLP layers (layer {layer} is MoE)");

    public override GgufModelPlan Gguf(string directory, string modelName) => DeepseekV4GgufMap.Build(this, modelName, directory);

    public override IReadOnlyList<ArchitectureFact> Facts() => DeepseekV4Facts.Build(Cfg);
}
