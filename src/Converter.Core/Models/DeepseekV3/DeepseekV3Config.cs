using System.Text.Json.Nodes;

namespace Converter.Models.DeepseekV3;

/// <summary>YaRN rope scaling as DeepSeek-V3's config states it.</summary>
public sealed record YarnScaling(double Factor, int OriginalMaxPositionEmbeddings, double BetaFast, double BetaSlow,
    double Mscale, double MscaleAllDim);

/// <summary>The official FP8 block layout's quantization_config.</summary>
public sealed record Fp8QuantizationConfig(string Fmt, int BlockRows, int BlockCols, string ActivationScheme);

/// <summary>Typed config.json of <c>deepseek_v3</c> (also what DeepSeek-R1 and Kimi K2 ship), validated.</summary>
public sealed class DeepseekV3Config
{
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
        if (c.ModelType != "deepseek_v3")
            throw c.Invalid("model_type", $"is '{c.ModelType}', expected 'deepseek_v3'");
        var cfg = new DeepseekV3Config
        {
            Json = c,
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
            TopkMethod = c.String("topk_method", "noaux_tc"),
            NGroup = c.Int("n_group", 1),
            TopkGroup = c.Int("topk_group", 1),
            NumExpertsPerTok = c.Int("num_experts_per_tok"),
            MoeLayerFreq = c.Int("moe_layer_freq", 1),
            FirstKDenseReplace = c.Int("first_k_dense_replace", 0),
            NormTopkProb = c.Bool("norm_topk_prob", true),
            ScoringFunc = c.String("scoring_func", "sigmoid"),
            HiddenAct = c.String("hidden_act", "silu"),
            MaxPositionEmbeddings = c.Int("max_position_embeddings"),
            RmsNormEps = c.Double("rms_norm_eps", 1e-6),
            RopeTheta = c.Double("rope_theta", 10000.0),
            RopeScaling = ParseRopeScaling(c),
            AttentionBias = c.Bool("attention_bias", false),
            TieWordEmbeddings = c.Bool("tie_word_embeddings", false),
            QuantizationConfig = c.Root["quantization_config"] as JsonObject,
            Fp8 = ParseFp8(c),
        };
        cfg.Validate();
        return cfg;
    }

    private static YarnScaling? ParseRopeScaling(ConfigJson c)
    {
        if (!c.Has("rope_scaling")) return null;
        if (c.Root["rope_scaling"] is not JsonObject o) throw c.Invalid("rope_scaling", "must be an object or null");
        var sub = new ConfigJson(c.Path, o);
        string type = sub.Has("rope_type") ? sub.String("rope_type", "") : sub.String("type", "");
        if (type != "yarn")
            throw c.Invalid("rope_scaling", $"type '{type}' is not supported (only 'yarn' or null)");
        return new YarnScaling(
            sub.Double("factor"),
            sub.Int("original_max_position_embeddings"),
            sub.Double("beta_fast", 32),
            sub.Double("beta_slow", 1),
            sub.Double("mscale", 1),
            sub.Double("mscale_all_dim", 0));
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
        if (NumExpertsPerTok > TopkGroup * (NRoutedExperts / NGroup))
            throw c.Invalid("num_experts_per_tok", $"({NumExpertsPerTok}) exceeds the experts in topk_group groups ({TopkGroup * (NRoutedExperts / NGroup)})");
        if (ScoringFunc != "sigmoid") throw c.Invalid("scoring_func", $"'{ScoringFunc}' is not supported (only sigmoid)");
        if (TopkMethod is not ("noaux_tc" or "greedy" or "group_limited_greedy"))
            throw c.Invalid("topk_method", $"'{TopkMethod}' is not supported (noaux_tc, greedy, group_limited_greedy)");
        if (HiddenAct != "silu") throw c.Invalid("hidden_act", $"'{HiddenAct}' is not supported (only silu)");
        if (NumKeyValueHeads != NumAttentionHeads)
            throw c.Invalid("num_key_value_heads", $"({NumKeyValueHeads}) must equal num_attention_heads for MLA");
        if (AttentionBias) throw c.Invalid("attention_bias", "true is not supported (DeepSeek-V3 has no attention bias)");
        if (RopeScaling is { } y && (y.Factor <= 0 || y.OriginalMaxPositionEmbeddings <= 0))
            throw c.Invalid("rope_scaling", "factor and original_max_position_embeddings must be positive");
    }

    /// <summary>True where the layer's MLP is a mixture of experts (DeepSeek-V3's rule).</summary>
    public bool IsMoeLayer(int layer) => layer >= FirstKDenseReplace && layer % MoeLayerFreq == 0;

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
