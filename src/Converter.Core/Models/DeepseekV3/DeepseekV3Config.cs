using System.Text.Json.Nodes;

namespace Converter.Models.DeepseekV3;

/// <summary>The official FP8 block layout's quantization_config.</summary>
public sealed record Fp8QuantizationConfig(string Fmt, int BlockRows, int BlockCols, string ActivationScheme);

/// <summary>
/// Typed config.json of the DeepSeek MLA family, validated: <c>deepseek_v3</c> (also DeepSeek-R1), <c>kimi_k2</c>
/// (Kimi K2's own config: DeepSeek-V3's fields under another model_type) and <c>deepseek_v2</c> (V2, V2-Lite), whose
/// defaults and rules follow transformers' DeepseekV2 (softmax routing, greedy by default, weights never
/// renormalised, MoE from layer first_k_dense_replace on).
/// </summary>
public sealed class DeepseekV3Config
{
    /// <summary>The model types this config class reads.</summary>
    public static readonly string[] ModelTypes = ["deepseek_v3", "kimi_k2", "deepseek_v2"];

    public string ModelType { get; init; } = "deepseek_v3";
    /// <summary>DeepSeek-V2's rules (transformers' DeepseekV2 modeling) rather than V3's.</summary>
    public bool IsV2 => ModelType == "deepseek_v2";

    public required ConfigJson Json { get; init; }
    public int VocabSize { get; init; }
    public int HiddenSize { get; init; }
    public int IntermediateSize { get; init; }
    public int MoeIntermediateSize { get; init; }
    public int NumHiddenLayers { get; init; }
    public int NumNextnPredictLayers { get; init; }
    public int NumAttentionHeads { get; init; }
    public int NumKeyValueHeads { get; init; }
    public int NSharedExperts { get; init; }
    public int NRoutedExperts { get; init; }
    public double RoutedScalingFactor { get; init; }
    public int KvLoraRank { get; init; }
    public int? QLoraRank { get; init; }
    public int QkRopeHeadDim { get; init; }
    public int QkNopeHeadDim { get; init; }
    public int VHeadDim { get; init; }
    public string TopkMethod { get; init; } = "noaux_tc";
    public int NGroup { get; init; }
    public int TopkGroup { get; init; }
    public int NumExpertsPerTok { get; init; }
    public int MoeLayerFreq { get; init; }
    public int FirstKDenseReplace { get; init; }
    public bool NormTopkProb { get; init; }
    public string ScoringFunc { get; init; } = "sigmoid";
    public string HiddenAct { get; init; } = "silu";
    public int MaxPositionEmbeddings { get; init; }
    public double RmsNormEps { get; init; }
    public double RopeTheta { get; init; }
    public YarnScaling? RopeScaling { get; init; }
    public bool AttentionBias { get; init; }
    public bool TieWordEmbeddings { get; init; }
    public Fp8QuantizationConfig? Fp8 { get; init; }
    /// <summary>The raw quantization_config (any method), or null.</summary>
    public JsonObject? QuantizationConfig { get; init; }

    public int QkHeadDim => QkNopeHeadDim + QkRopeHeadDim;

    public static DeepseekV3Config Parse(ConfigJson c)
    {
        if (Array.IndexOf(ModelTypes, c.ModelType) < 0)
            throw c.Invalid("model_type", $"is '{c.ModelType}', expected one of {string.Join(", ", ModelTypes)}");
        bool v2 = c.ModelType == "deepseek_v2";
        var cfg = new DeepseekV3Config
        {
            Json = c,
            ModelType = c.ModelType!,
            VocabSize = c.Int("vocab_size"),
            HiddenSize = c.Int("hidden_size"),
            IntermediateSize = c.Int("intermediate_size"),
            MoeIntermediateSize = c.Int("moe_intermediate_size"),
            NumHiddenLayers = c.Int("num_hidden_layers"),
            NumNextnPredictLayers = c.Int("num_nextn_predict_layers", 0),
            NumAttentionHeads = c.Int("num_attention_heads"),
            NumKeyValueHeads = c.Int("num_key_value_heads", c.Int("num_attention_heads")),
            NSharedExperts = c.Int("n_shared_experts", 0),
            NRoutedExperts = c.Int("n_routed_experts"),
            RoutedScalingFactor = c.Double("routed_scaling_factor", 1.0),
            KvLoraRank = c.Int("kv_lora_rank"),
            QLoraRank = c.IntOrNull("q_lora_rank"),
            QkRopeHeadDim = c.Int("qk_rope_head_dim"),
            QkNopeHeadDim = c.Int("qk_nope_head_dim"),
            VHeadDim = c.Int("v_head_dim"),
            TopkMethod = c.String("topk_method", v2 ? "greedy" : "noaux_tc"),
            NGroup = c.Int("n_group", 1),
            TopkGroup = c.Int("topk_group", 1),
            NumExpertsPerTok = c.Int("num_experts_per_tok"),
            MoeLayerFreq = c.Int("moe_layer_freq", 1),
            FirstKDenseReplace = c.Int("first_k_dense_replace", 0),
            NormTopkProb = c.Bool("norm_topk_prob", !v2),
            // transformers' DeepseekV2 always scores with softmax (the field is not read)
            ScoringFunc = v2 ? "softmax" : c.String("scoring_func", "sigmoid"),
            HiddenAct = c.String("hidden_act", "silu"),
            MaxPositionEmbeddings = c.Int("max_position_embeddings"),
            RmsNormEps = c.Double("rms_norm_eps", 1e-6),
            RopeTheta = c.Double("rope_theta", 10000.0),
            RopeScaling = YarnScaling.Parse(c),
            AttentionBias = c.Bool("attention_bias", false),
            TieWordEmbeddings = c.Bool("tie_word_embeddings", false),
            QuantizationConfig = c.Root["quantization_config"] as JsonObject,
            Fp8 = ParseFp8(c),
        };
        cfg.Validate();
        return cfg;
    }

    private static Fp8QuantizationConfig? ParseFp8(ConfigJson c)
    {
        if (c.Root["quantization_config"] is not JsonObject q) return null;
        var sub = new ConfigJson(c.Path, q);
        var method = sub.String("quant_method", "");
        if (method != "fp8") return null;
        var fmt = sub.String("fmt", "e4m3");
        if (fmt != "e4m3") throw c.Invalid("quantization_config.fmt", $"'{fmt}' is not supported (only e4m3)");
        if (q["weight_block_size"] is not JsonArray bs || bs.Count != 2)
            throw c.Invalid("quantization_config.weight_block_size", "must be [rows, cols]");
        var fp8 = new Fp8QuantizationConfig(fmt, sub.IntValue("weight_block_size", bs[0]!), sub.IntValue("weight_block_size", bs[1]!),
            sub.String("activation_scheme", "dynamic"));
        if (fp8.BlockRows != 128 || fp8.BlockCols != 128)
            throw c.Invalid("quantization_config.weight_block_size", $"[{fp8.BlockRows}, {fp8.BlockCols}] is not supported (only [128, 128])");
        return fp8;
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
        Positive("n_routed_experts", NRoutedExperts);
        Positive("kv_lora_rank", KvLoraRank);
        Positive("qk_rope_head_dim", QkRopeHeadDim);
        Positive("qk_nope_head_dim", QkNopeHeadDim);
        Positive("v_head_dim", VHeadDim);
        Positive("num_experts_per_tok", NumExpertsPerTok);
        Positive("n_group", NGroup);
        Positive("topk_group", TopkGroup);
        Positive("moe_layer_freq", MoeLayerFreq);
        Positive("max_position_embeddings", MaxPositionEmbeddings);
        if (QLoraRank is { } q && q <= 0) throw c.Invalid("q_lora_rank", $"must be positive or null, got {q}");
        if (QkRopeHeadDim % 2 != 0) throw c.Invalid("qk_rope_head_dim", $"must be even, got {QkRopeHeadDim}");
        if (NumNextnPredictLayers < 0) throw c.Invalid("num_nextn_predict_layers", "must not be negative");
        if (FirstKDenseReplace < 0 || FirstKDenseReplace > NumHiddenLayers)
            throw c.Invalid("first_k_dense_replace", $"must be in [0, num_hidden_layers], got {FirstKDenseReplace}");
        if (NRoutedExperts % NGroup != 0)
            throw c.Invalid("n_group", $"({NGroup}) must divide n_routed_experts ({NRoutedExperts})");
        if (TopkGroup > NGroup) throw c.Invalid("topk_group", $"({TopkGroup}) exceeds n_group ({NGroup})");
        if (NumExpertsPerTok > NRoutedExperts)
            throw c.Invalid("num_experts_per_tok", $"({NumExpertsPerTok}) exceeds n_routed_experts ({NRoutedExperts})");
        if (TopkMethod != "greedy" && NumExpertsPerTok > TopkGroup * (NRoutedExperts / NGroup))
            throw c.Invalid("num_experts_per_tok", $"({NumExpertsPerTok}) exceeds the experts in topk_group groups ({TopkGroup * (NRoutedExperts / NGroup)})");
        if (ScoringFunc is not ("sigmoid" or "softmax")) throw c.Invalid("scoring_func", $"'{ScoringFunc}' is not supported (sigmoid, softmax)");
        if (IsV2 && TopkMethod == "noaux_tc") throw c.Invalid("topk_method", "'noaux_tc' is DeepSeek-V3's; deepseek_v2 has greedy and group_limited_greedy");
        if (TopkMethod is not ("noaux_tc" or "greedy" or "group_limited_greedy"))
            throw c.Invalid("topk_method", $"'{TopkMethod}' is not supported (noaux_tc, greedy, group_limited_greedy)");
        if (HiddenAct != "silu") throw c.Invalid("hidden_act", $"'{HiddenAct}' is not supported (only silu)");
        if (NumKeyValueHeads != NumAttentionHeads)
            throw c.Invalid("num_key_value_heads", $"({NumKeyValueHeads}) must equal num_attention_heads for MLA");
        if (AttentionBias) throw c.Invalid("attention_bias", "true is not supported (DeepSeek-V3 has no attention bias)");
        if (RopeScaling is { } y && (y.Factor <= 0 || y.OriginalMaxPositionEmbeddings <= 0))
            throw c.Invalid("rope_scaling", "factor and original_max_position_embeddings must be positive");
    }

    /// <summary>True where the layer's MLP is a mixture of experts (V3: from first_k_dense_replace, every
    /// moe_layer_freq-th; V2 as transformers: every layer from first_k_dense_replace).</summary>
    public bool IsMoeLayer(int layer) => layer >= FirstKDenseReplace && (IsV2 || layer % MoeLayerFreq == 0);

    /// <summary>
    /// The routing as the modeling code runs it. V3: sigmoid, the correction bias for selection (noaux_tc), groups
    /// by their top-2 sum, weights renormalised (+1e-20) when norm_topk_prob, times routed_scaling_factor. V2
    /// (transformers): softmax, group_limited_greedy ranks groups by their best score, greedy has no group stage,
    /// weights never renormalised, always scaled. greedy ignores groups in both.
    /// </summary>
    public RoutingRule Routing => new(NRoutedExperts, NumExpertsPerTok,
        ScoringFunc == "softmax" ? RouterScoring.Softmax : RouterScoring.Sigmoid,
        SelectionBias: TopkMethod == "noaux_tc",
        Groups: TopkMethod == "greedy" ? 1 : NGroup,
        TopkGroups: TopkMethod == "greedy" ? 1 : TopkGroup,
        GroupScore: TopkMethod == "group_limited_greedy" ? GroupScoring.Max : GroupScoring.TopTwoSum,
        NormalizeTopK: !IsV2 && NormTopkProb,
        NormalizeEpsilon: 1e-20,
        Scale: RoutedScalingFactor);

    /// <summary>YaRN's attention-logit scale multiplier: (0.1 * mscale_all_dim * ln(factor) + 1)^2, or 1.</summary>
    public double SoftmaxScale
    {
        get
        {
            double s = 1.0 / Math.Sqrt(QkHeadDim);
            if (RopeScaling is { } y && y.MscaleAllDim != 0 && y.Factor > 1)
            {
                double m = 0.1 * y.MscaleAllDim * Math.Log(y.Factor) + 1.0;
                s *= m * m;
            }
            return s;
        }
    }
}
