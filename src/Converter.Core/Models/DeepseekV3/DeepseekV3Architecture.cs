using System.Text.RegularExpressions;

namespace Converter.Models.DeepseekV3;

/// <summary>The DeepSeek-V3 family (V3, R1, Kimi K2): a declarative name map over <see cref="DeepseekV3Config"/>.</summary>
public sealed partial class DeepseekV3Architecture : ModelArchitecture
{
    public DeepseekV3Config Cfg { get; }

    public DeepseekV3Architecture(DeepseekV3Config cfg) => Cfg = cfg;

    public override string ModelType => "deepseek_v3";
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
