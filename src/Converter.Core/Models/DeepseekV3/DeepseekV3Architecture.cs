using System.Text.RegularExpressions;
using Converter.Decoder.Onnx;
using Converter.Models.DeepseekV3.Onnx;
using Converter.Models.Tokenizers;

namespace Converter.Models.DeepseekV3;

/// <summary>The DeepSeek MLA family (V3, R1, Kimi K2, V2, V2-Lite): a declarative name map over <see cref="DeepseekV3Config"/>.</summary>
public sealed partial class DeepseekV3Architecture : ModelArchitecture
{
    public DeepseekV3Config Cfg { get; }

    public DeepseekV3Architecture(DeepseekV3Config cfg) => Cfg = cfg;

    public override string ModelType => Cfg.ModelType;
    public override ConfigJson Config => Cfg.Json;
    public override int VocabSize => Cfg.VocabSize;
    public override int HiddenSize => Cfg.HiddenSize;
    public override int NumLayers => Cfg.NumHiddenLayers;
    public override int NumMtpLayers => Cfg.NumNextnPredictLayers;
    public override int NumRoutedExperts => Cfg.NRoutedExperts;
    public override int NumExpertsPerToken => Cfg.NumExpertsPerTok;
    public override bool IsMoeLayer(int layer) => Cfg.IsMoeLayer(layer);
    public override int NumExpertGroups => Cfg.NGroup;
    public override int TopkExpertGroups => Cfg.TopkGroup;
    public override double RmsNormEps => Cfg.RmsNormEps;

    public override MoeBlock Moe(int layer)
    {
        if (!Cfg.IsMoeLayer(layer)) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} is not an MoE layer");
        string m = $"model.layers.{layer}.mlp.";
        var shared = Cfg.NSharedExperts > 0
            ? new FeedForwardWeights(m + "shared_experts.gate_proj.weight", m + "shared_experts.up_proj.weight", m + "shared_experts.down_proj.weight",
                (long)Cfg.MoeIntermediateSize * Cfg.NSharedExperts)
            : null;
        return new MoeBlock(layer, m + "gate.weight", Cfg.TopkMethod == "noaux_tc" ? m + "gate.e_score_correction_bias" : null,
            (e, p) => $"{m}experts.{e}.{ProjName(p)}.weight", Cfg.MoeIntermediateSize, shared, Cfg.Routing, m + "experts.");
    }

    public override FeedForwardWeights DenseMlp(int layer)
    {
        string m = $"model.layers.{layer}.mlp.";
        return new FeedForwardWeights(m + "gate_proj.weight", m + "up_proj.weight", m + "down_proj.weight", Cfg.IntermediateSize);
    }

    private static string ProjName(FfnProjection p) => p switch { FfnProjection.Gate => "gate_proj", FfnProjection.Up => "up_proj", _ => "down_proj" };

    public override Calibration.IImatrixLayer ImatrixLayer(ModelCheckpoint checkpoint, int layer) => new DeepseekV3ImatrixLayer(Cfg, checkpoint, layer);

    public override Calibration.ImatrixMoeNames ImatrixMoe(int layer) => Calibration.ImatrixMoeNames.Llama(layer, Cfg.NSharedExperts > 0);

    public override IOnnxDecoderFamily Onnx => new DeepseekV3OnnxAttention(Cfg);

    public override GgufModelPlan Gguf(string directory, string modelName) =>
        DeepseekV3GgufMap.Build(Cfg, modelName, GgufTokenizer.Load(directory, Cfg.VocabSize));

    public override IReadOnlyList<ArchitectureFact> Facts()
    {
        var c = Cfg;
        var r = c.Routing;
        return
        [
            new("attention", $"MLA: {c.NumAttentionHeads} heads, q_lora {(c.QLoraRank is { } q ? q.ToString() : "none")}, kv_lora {c.KvLoraRank}, nope {c.QkNopeHeadDim} / rope {c.QkRopeHeadDim} / v {c.VHeadDim}" +
                (c.RopeScaling is { } y ? $", YaRN factor {y.Factor}" : "")),
            new("routing", $"{c.TopkMethod}: {r.Scoring.ToString().ToLowerInvariant()} top-{r.TopK} of {r.Experts}" +
                (r.GroupingActive ? $", {r.TopkGroups} of {r.Groups} groups ({(r.GroupScore == GroupScoring.Max ? "best score" : "top-2 sum")})" : "") +
                (r.SelectionBias ? ", selection bias" : "") + (r.NormalizeTopK ? ", renormalised" : "") + $", scale {r.Scale}"),
            new("kv cache", $"{Onnx.KvCache.ValuesPerToken} values per token per layer (MLA latent: kv_lora_rank + rope), " +
                $"{(long)c.NumAttentionHeads * (c.QkHeadDim + c.VHeadDim)} with a per-head K/V cache; " +
                $"fp32: {Onnx.KvCache.ValuesPerToken * 4L * c.NumHiddenLayers:N0} bytes per token over {c.NumHiddenLayers} layers"),
        ];
    }

    public override IReadOnlyList<ExpectedTensor> ExpectedTensors()
    {
        var c = Cfg;
        long h = c.HiddenSize, v = c.VocabSize, nh = c.NumAttentionHeads;
        var list = new List<ExpectedTensor>
        {
            new("model.embed_tokens.weight", [v, h], new TensorRole(TensorKind.Embedding)),
        };
        for (int layer = 0; layer < c.NumHiddenLayers + c.NumNextnPredictLayers; layer++)
        {
            bool mtp = layer >= c.NumHiddenLayers;
            string p = $"model.layers.{layer}.";
            void Add(string name, long[] shape, TensorKind kind, string part = "", int expert = -1) =>
                list.Add(new ExpectedTensor(p + name, shape, new TensorRole(kind, layer, expert, part, mtp)));

            if (mtp)
            {
                Add("embed_tokens.weight", [v, h], TensorKind.Embedding);
                Add("enorm.weight", [h], TensorKind.Norm, "enorm");
                Add("hnorm.weight", [h], TensorKind.Norm, "hnorm");
                Add("eh_proj.weight", [h, 2 * h], TensorKind.MtpProjection, "eh_proj");
                Add("shared_head.norm.weight", [h], TensorKind.Norm, "shared_head.norm");
                Add("shared_head.head.weight", [v, h], TensorKind.LmHead);
            }
            Add("input_layernorm.weight", [h], TensorKind.Norm, "input_layernorm");
            Add("post_attention_layernorm.weight", [h], TensorKind.Norm, "post_attention_layernorm");
            if (c.QLoraRank is { } q)
            {
                Add("self_attn.q_a_proj.weight", [q, h], TensorKind.AttentionProjection, "q_a_proj");
                Add("self_attn.q_a_layernorm.weight", [q], TensorKind.Norm, "q_a_layernorm");
                Add("self_attn.q_b_proj.weight", [nh * c.QkHeadDim, q], TensorKind.AttentionProjection, "q_b_proj");
            }
            else
            {
                Add("self_attn.q_proj.weight", [nh * c.QkHeadDim, h], TensorKind.AttentionProjection, "q_proj");
            }
            Add("self_attn.kv_a_proj_with_mqa.weight", [c.KvLoraRank + c.QkRopeHeadDim, h], TensorKind.AttentionProjection, "kv_a_proj_with_mqa");
            Add("self_attn.kv_a_layernorm.weight", [c.KvLoraRank], TensorKind.Norm, "kv_a_layernorm");
            Add("self_attn.kv_b_proj.weight", [nh * (c.QkNopeHeadDim + c.VHeadDim), c.KvLoraRank], TensorKind.AttentionProjection, "kv_b_proj");
            Add("self_attn.o_proj.weight", [h, nh * c.VHeadDim], TensorKind.AttentionProjection, "o_proj");
            if (c.IsMoeLayer(layer))
            {
                long mi = c.MoeIntermediateSize;
                Add("mlp.gate.weight", [c.NRoutedExperts, h], TensorKind.Router, "gate");
                if (c.TopkMethod == "noaux_tc")
                    Add("mlp.gate.e_score_correction_bias", [c.NRoutedExperts], TensorKind.RouterBias, "e_score_correction_bias");
                for (int e = 0; e < c.NRoutedExperts; e++)
                {
                    Add($"mlp.experts.{e}.gate_proj.weight", [mi, h], TensorKind.RoutedExpert, "gate_proj", e);
                    Add($"mlp.experts.{e}.up_proj.weight", [mi, h], TensorKind.RoutedExpert, "up_proj", e);
                    Add($"mlp.experts.{e}.down_proj.weight", [h, mi], TensorKind.RoutedExpert, "down_proj", e);
                }
                if (c.NSharedExperts > 0)
                {
                    long si = mi * c.NSharedExperts;
                    Add("mlp.shared_experts.gate_proj.weight", [si, h], TensorKind.SharedExpert, "gate_proj");
                    Add("mlp.shared_experts.up_proj.weight", [si, h], TensorKind.SharedExpert, "up_proj");
                    Add("mlp.shared_experts.down_proj.weight", [h, si], TensorKind.SharedExpert, "down_proj");
                }
            }
            else
            {
                long i = c.IntermediateSize;
                Add("mlp.gate_proj.weight", [i, h], TensorKind.DenseMlp, "gate_proj");
                Add("mlp.up_proj.weight", [i, h], TensorKind.DenseMlp, "up_proj");
                Add("mlp.down_proj.weight", [h, i], TensorKind.DenseMlp, "down_proj");
            }
        }
        list.Add(new ExpectedTensor("model.norm.weight", [h], new TensorRole(TensorKind.Norm, Part: "norm")));
        list.Add(new ExpectedTensor("lm_head.weight", [v, h], new TensorRole(TensorKind.LmHead)));
        return list;
    }

    private Dictionary<string, TensorRole>? _roles;

    public override TensorRole Classify(string name)
    {
        _roles ??= ExpectedTensors().ToDictionary(t => t.Name, t => t.Role, StringComparer.Ordinal);
        if (_roles.TryGetValue(name, out var role)) return role;
        var m = SuffixPattern().Match(name);
        if (m.Success && _roles.TryGetValue(m.Groups[1].Value + ".weight", out var owner) && owner.IsLinearWeight)
            return owner with { Kind = m.Groups[2].Value == "weight_scale_inv" ? TensorKind.QuantScale : TensorKind.QuantPacked };
        throw new InvalidDataException($"tensor '{name}' is not part of a {ModelType} checkpoint with this config");
    }

    // Quantization side tensors: FP8 scales and compressed-tensors pack-quantized parts of a linear weight.
    [GeneratedRegex(@"^(.*)\.(weight_scale_inv|weight_packed|weight_scale|weight_shape|weight_zero_point)$")]
    private static partial Regex SuffixPattern();
}
