using System.Text.RegularExpressions;
using Converter.Decoder.Onnx;
using Converter.Models.Qwen3Moe.Onnx;
using Converter.Models.Tokenizers;

namespace Converter.Models.Qwen3Moe;

/// <summary>
/// The Qwen3-MoE family: GQA attention with per-head q/k RMSNorm and rotate-half rope over the whole head, softmax
/// top-k routing (renormalised when norm_topk_prob), no shared experts, dense SwiGLU layers where
/// <see cref="Qwen3MoeConfig.IsMoeLayer"/> says so. A declarative name map over <see cref="Qwen3MoeConfig"/>.
/// </summary>
public sealed partial class Qwen3MoeArchitecture(Qwen3MoeConfig cfg) : ModelArchitecture
{
    public Qwen3MoeConfig Cfg { get; } = cfg;

    public override string ModelType => Qwen3MoeConfig.Type;
    public override ConfigJson Config => Cfg.Json;
    public override int VocabSize => Cfg.VocabSize;
    public override int HiddenSize => Cfg.HiddenSize;
    public override int NumLayers => Cfg.NumHiddenLayers;
    public override int NumMtpLayers => 0;
    public override int NumRoutedExperts => Cfg.NumExperts;
    public override int NumExpertsPerToken => Cfg.NumExpertsPerTok;
    public override bool IsMoeLayer(int layer) => Cfg.IsMoeLayer(layer);
    public override double RmsNormEps => Cfg.RmsNormEps;

    public override DecoderTensorNames Names => Cfg.TieWordEmbeddings
        ? DecoderTensorNames.HuggingFace with { LmHead = DecoderTensorNames.HuggingFace.Embedding }
        : DecoderTensorNames.HuggingFace;

    public override IReadOnlyList<ExpectedTensor> ExpectedTensors()
    {
        var c = Cfg;
        long h = c.HiddenSize, v = c.VocabSize, hd = c.HeadDim, q = (long)c.NumAttentionHeads * hd, kv = (long)c.NumKeyValueHeads * hd;
        var list = new List<ExpectedTensor> { new("model.embed_tokens.weight", [v, h], new TensorRole(TensorKind.Embedding)) };
        for (int layer = 0; layer < c.NumHiddenLayers; layer++)
        {
            string p = $"model.layers.{layer}.";
            void Add(string name, long[] shape, TensorKind kind, string part = "", int expert = -1) =>
                list.Add(new ExpectedTensor(p + name, shape, new TensorRole(kind, layer, expert, part)));
            Add("input_layernorm.weight", [h], TensorKind.Norm, "input_layernorm");
            Add("post_attention_layernorm.weight", [h], TensorKind.Norm, "post_attention_layernorm");
            Add("self_attn.q_proj.weight", [q, h], TensorKind.AttentionProjection, "q_proj");
            Add("self_attn.k_proj.weight", [kv, h], TensorKind.AttentionProjection, "k_proj");
            Add("self_attn.v_proj.weight", [kv, h], TensorKind.AttentionProjection, "v_proj");
            Add("self_attn.o_proj.weight", [h, q], TensorKind.AttentionProjection, "o_proj");
            Add("self_attn.q_norm.weight", [hd], TensorKind.Norm, "q_norm");
            Add("self_attn.k_norm.weight", [hd], TensorKind.Norm, "k_norm");
            if (c.IsMoeLayer(layer))
            {
                long mi = c.MoeIntermediateSize;
                Add("mlp.gate.weight", [c.NumExperts, h], TensorKind.Router, "gate");
                for (int e = 0; e < c.NumExperts; e++)
                {
                    Add($"mlp.experts.{e}.gate_proj.weight", [mi, h], TensorKind.RoutedExpert, "gate_proj", e);
                    Add($"mlp.experts.{e}.up_proj.weight", [mi, h], TensorKind.RoutedExpert, "up_proj", e);
                    Add($"mlp.experts.{e}.down_proj.weight", [h, mi], TensorKind.RoutedExpert, "down_proj", e);
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
        if (!c.TieWordEmbeddings) list.Add(new ExpectedTensor("lm_head.weight", [v, h], new TensorRole(TensorKind.LmHead)));
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

    public override MoeBlock Moe(int layer)
    {
        if (!Cfg.IsMoeLayer(layer)) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} is not an MoE layer");
        string m = $"model.layers.{layer}.mlp.";
        return new MoeBlock(layer, m + "gate.weight", null, (e, p) => $"{m}experts.{e}.{ProjName(p)}.weight", Cfg.MoeIntermediateSize,
            null, Cfg.Routing, m + "experts.");
    }

    public override FeedForwardWeights DenseMlp(int layer)
    {
        string m = $"model.layers.{layer}.mlp.";
        return new FeedForwardWeights(m + "gate_proj.weight", m + "up_proj.weight", m + "down_proj.weight", Cfg.IntermediateSize);
    }

    private static string ProjName(FfnProjection p) => p switch { FfnProjection.Gate => "gate_proj", FfnProjection.Up => "up_proj", _ => "down_proj" };

    public override IOnnxDecoderFamily Onnx => new Qwen3MoeOnnxAttention(Cfg);

    public override GgufModelPlan Gguf(string directory, string modelName)
    {
        // refusals that do not depend on the tokenizer first, so a dense layer is named even without tokenizer files
        Qwen3MoeGgufMap.RefuseUnloadable(Cfg);
        return Qwen3MoeGgufMap.Build(Cfg, modelName, GgufTokenizer.Load(directory, Cfg.VocabSize));
    }

    public override IReadOnlyList<ArchitectureFact> Facts()
    {
        var c = Cfg;
        var dense = Enumerable.Range(0, c.NumHiddenLayers).Where(l => !c.IsMoeLayer(l)).ToArray();
        return
        [
            new("attention", $"GQA: {c.NumAttentionHeads} query / {c.NumKeyValueHeads} key-value heads of {c.HeadDim}, q/k norm, rope theta {c.RopeTheta}" +
                (c.RopeScaling is { } y ? $", YaRN factor {y.Factor}" : "")),
            new("routing", $"softmax top-{c.NumExpertsPerTok} of {c.NumExperts}{(c.NormTopkProb ? ", renormalised" : ", not renormalised")}" +
                (dense.Length > 0 ? $"; dense layers [{string.Join(", ", dense)}]" : "")),
            new("kv cache", $"{Onnx.KvCache.ValuesPerToken} values per token per layer (GQA K and V); " +
                $"fp32: {Onnx.KvCache.ValuesPerToken * 4L * c.NumHiddenLayers:N0} bytes per token over {c.NumHiddenLayers} layers"),
        ];
    }
}
