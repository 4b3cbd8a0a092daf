using System.Text.Json.Nodes;

namespace Converter.Models.Qwen3Moe;

/// <summary>
/// Typed config.json of <c>qwen3_moe</c> (Qwen3-30B-A3B, Qwen3-235B-A22B), validated, with transformers' rules:
/// a layer is MoE unless it is in <c>mlp_only_layers</c> or <c>(layer + 1) % decoder_sparse_step != 0</c>.
/// </summary>
public sealed class Qwen3MoeConfig
{
    public const string Type = "qwen3_moe";

    public required ConfigJson Json { get; init; }
    public int VocabSize { get; init; }
    public int HiddenSize { get; init; }
    public int IntermediateSize { get; init; }
    public int MoeIntermediateSize { get; init; }
    public int NumHiddenLayers { get; init; }
    public int NumAttentionHeads { get; init; }
    public int NumKeyValueHeads { get; init; }
    public int HeadDim { get; init; }
    public int NumExperts { get; init; }
    public int NumExpertsPerTok { get; init; }
    public bool NormTopkProb { get; init; }
    public int DecoderSparseStep { get; init; }
    public IReadOnlySet<int> MlpOnlyLayers { get; init; } = new HashSet<int>();
    public int MaxPositionEmbeddings { get; init; }
    public double RmsNormEps { get; init; }
    public double RopeTheta { get; init; }
    public YarnScaling? RopeScaling { get; init; }
    public bool TieWordEmbeddings { get; init; }
    public JsonObject? QuantizationConfig { get; init; }

    public static Qwen3MoeConfig Parse(ConfigJson c)
    {
        if (c.ModelType != Type) throw c.Invalid("model_type", $"is '{c.ModelType}', expected '{Type}'");
        int heads = c.Int("num_attention_heads");
        var mlpOnly = new HashSet<int>();
        if (c.Root["mlp_only_layers"] is JsonArray arr)
            foreach (var n in arr) mlpOnly.Add(c.IntValue("mlp_only_layers", n!));
        else if (c.Has("mlp_only_layers")) throw c.Invalid("mlp_only_layers", "must be a list of layer indices");
        var rope = c.Root["rope_parameters"] is JsonObject rp ? new ConfigJson(c.Path, rp) : null;
        var cfg = new Qwen3MoeConfig
        {
            Json = c,
            VocabSize = c.Int("vocab_size"),
            HiddenSize = c.Int("hidden_size"),
            IntermediateSize = c.Int("intermediate_size"),
            MoeIntermediateSize = c.Int("moe_intermediate_size"),
            NumHiddenLayers = c.Int("num_hidden_layers"),
            NumAttentionHeads = heads,
            NumKeyValueHeads = c.Int("num_key_value_heads", heads),
            HeadDim = c.IntOrNull("head_dim") ?? c.Int("hidden_size") / heads,
            NumExperts = c.Int("num_experts"),
            NumExpertsPerTok = c.Int("num_experts_per_tok"),
            NormTopkProb = c.Bool("norm_topk_prob", false),
            DecoderSparseStep = c.Int("decoder_sparse_step", 1),
            MlpOnlyLayers = mlpOnly,
            MaxPositionEmbeddings = c.Int("max_position_embeddings"),
            RmsNormEps = c.Double("rms_norm_eps", 1e-6),
            RopeTheta = rope?.Double("rope_theta", c.Double("rope_theta", 10000.0)) ?? c.Double("rope_theta", 10000.0),
            RopeScaling = YarnScaling.Parse(c, c.Int("max_position_embeddings")),
            TieWordEmbeddings = c.Bool("tie_word_embeddings", false),
            QuantizationConfig = c.Root["quantization_config"] as JsonObject,
        };
        cfg.Validate();
        return cfg;
    }

    private void Validate()
    {
        var c = Json;
        void Positive(string key, int v) { if (v <= 0) throw c.Invalid(key, $"must be positive, got {v}"); }
        Positive("vocab_size", VocabSize);
        Positive("hidden_size", HiddenSize);
        Positive("intermediate_size", IntermediateSize);
        Positive("moe_intermediate_size", MoeIntermediateSize);
        Positive("num_hidden_layers", NumHiddenLayers);
        Positive("num_attention_heads", NumAttentionHeads);
        Positive("num_key_value_heads", NumKeyValueHeads);
        Positive("head_dim", HeadDim);
        Positive("num_experts", NumExperts);
        Positive("num_experts_per_tok", NumExpertsPerTok);
        Positive("decoder_sparse_step", DecoderSparseStep);
        Positive("max_position_embeddings", MaxPositionEmbeddings);
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            throw c.Invalid("num_key_value_heads", $"({NumKeyValueHeads}) must divide num_attention_heads ({NumAttentionHeads})");
        if (HeadDim % 2 != 0) throw c.Invalid("head_dim", $"must be even for rotary embeddings, got {HeadDim}");
        if (NumExpertsPerTok > NumExperts)
            throw c.Invalid("num_experts_per_tok", $"({NumExpertsPerTok}) exceeds num_experts ({NumExperts})");
        foreach (var l in MlpOnlyLayers)
            if (l < 0 || l >= NumHiddenLayers) throw c.Invalid("mlp_only_layers", $"layer {l} is outside [0, {NumHiddenLayers})");
        if (c.String("hidden_act", "silu") != "silu") throw c.Invalid("hidden_act", $"'{c.String("hidden_act", "")}' is not supported (only silu)");
        if (c.Bool("attention_bias", false)) throw c.Invalid("attention_bias", "true is not supported (Qwen3-MoE has no attention bias)");
        if (c.Bool("use_sliding_window", false))
            throw c.Invalid("use_sliding_window", "true is not supported (sliding-window attention is not mapped)");
    }

    /// <summary>transformers' rule: MoE unless listed in mlp_only_layers or off the decoder_sparse_step grid.</summary>
    public bool IsMoeLayer(int layer) => layer >= 0 && layer < NumHiddenLayers && !MlpOnlyLayers.Contains(layer)
        && (layer + 1) % DecoderSparseStep == 0;

    /// <summary>Softmax over all experts, top-k, renormalised (no epsilon) when norm_topk_prob, no scale.</summary>
    public RoutingRule Routing => new(NumExperts, NumExpertsPerTok, RouterScoring.Softmax, NormalizeTopK: NormTopkProb);

    /// <summary>The attention-logit scale: 1/sqrt(head_dim).</summary>
    public double SoftmaxScale => 1.0 / Math.Sqrt(HeadDim);
}
