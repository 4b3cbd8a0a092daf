using System.Text.Json.Nodes;

namespace Converter.Models.DeepseekV4;

/// <summary>The attention of one DeepSeek-V4 layer.</summary>
public enum V4AttentionKind
{
    /// <summary>Sliding-window attention only (compress ratio 0).</summary>
    Sliding,
    /// <summary>Compressed sparse attention: overlapping windows of the compressor (2 x head_dim wide), the lightning
    /// indexer picking the top-k compressed entries, plus the sliding window.</summary>
    Csa,
    /// <summary>Heavily compressed attention: non-overlapping windows of the compressor, every entry attended, plus the
    /// sliding window.</summary>
    Hca,
}

/// <summary>One layer's attention kind and compress ratio (0 for sliding).</summary>
public readonly record struct V4LayerAttention(V4AttentionKind Kind, int Ratio)
{
    public override string ToString() => Kind switch
    {
        V4AttentionKind.Sliding => "sliding",
        V4AttentionKind.Csa => $"CSA m={Ratio}",
        _ => $"HCA m={Ratio}",
    };
}

/// <summary>
/// Typed config.json of DeepSeek-V4 (<c>deepseek_v4</c>), validated, from either spelling:
/// <list type="bullet">
/// <item>the hub's (DeepSeek's own files): <c>compress_ratios</c> per layer (0 sliding, 4 CSA, 128 HCA; entries past
/// <c>num_hidden_layers</c> belong to the MTP layers), <c>num_hash_layers</c>, <c>qk_rope_head_dim</c>, YaRN in
/// <c>rope_scaling</c> for the compressed layers with base <c>compress_rope_theta</c>;</item>
/// <item>transformers' (<c>DeepseekV4Config</c>): <c>layer_types</c> (sliding_attention, compressed_sparse_attention,
/// heavily_compressed_attention) with <c>compress_rates</c> per type (or <c>compress_rate_csa</c> /
/// <c>compress_rate_hca</c>), <c>mlp_layer_types</c> (hash_moe, moe), <c>partial_rotary_factor</c>, and
/// <c>rope_parameters</c> either nested as <c>{main, compress}</c> or flat (the YaRN keys).</item>
/// </list>
/// Missing keys take transformers' defaults (V4-Flash's values, 3 hash layers, the V4-Pro layer schedule).
/// </summary>
public sealed class DeepseekV4Config
{
    public const string Type = "deepseek_v4";

    /// <summary>The compress ratios the hub spelling knows (as transformers folds them).</summary>
    public static readonly IReadOnlyDictionary<int, V4AttentionKind> HubRatios = new Dictionary<int, V4AttentionKind>
    {
        [0] = V4AttentionKind.Sliding, [4] = V4AttentionKind.Csa, [128] = V4AttentionKind.Hca,
    };

    public required ConfigJson Json { get; init; }
    public int VocabSize { get; init; }
    public int HiddenSize { get; init; }
    public int MoeIntermediateSize { get; init; }
    public int NumHiddenLayers { get; init; }
    public int NumAttentionHeads { get; init; }
    public int NumKeyValueHeads { get; init; }
    public int HeadDim { get; init; }
    public int QLoraRank { get; init; }
    public int QkRopeHeadDim { get; init; }
    public int NumExpertsPerTok { get; init; }
    public int NRoutedExperts { get; init; }
    public int NSharedExperts { get; init; }
    public string ScoringFunc { get; init; } = "sqrtsoftplus";
    public string TopkMethod { get; init; } = "noaux_tc";
    public bool NormTopkProb { get; init; }
    public double RoutedScalingFactor { get; init; }
    public int MaxPositionEmbeddings { get; init; }
    public double RopeTheta { get; init; }
    public double CompressRopeTheta { get; init; }
    /// <summary>YaRN of the compressed layers (no mscale: V4 forces attention_factor 1); null for plain rope.</summary>
    public YarnScaling? CompressYarn { get; init; }
    public int HcMult { get; init; }
    public int HcSinkhornIters { get; init; }
    public double HcEps { get; init; }
    public double SwigluLimit { get; init; }
    public int SlidingWindow { get; init; }
    public int OGroups { get; init; }
    public int OLoraRank { get; init; }
    public int IndexNHeads { get; init; }
    public int IndexHeadDim { get; init; }
    public int IndexTopk { get; init; }
    public int NumNextnPredictLayers { get; init; }
    public bool TieWordEmbeddings { get; init; }
    public double RmsNormEps { get; init; }
    /// <summary>Attention of the main layers, then of the MTP layers.</summary>
    public required IReadOnlyList<V4LayerAttention> Attention { get; init; }
    /// <summary>Per main layer: routed by the token id through <c>tid2eid</c> (hash_moe) rather than the learned router.</summary>
    public required IReadOnlyList<bool> HashRouted { get; init; }
    /// <summary>The quantization_config's scale_fmt ("ue8m0": power-of-two scales), or null.</summary>
    public string? ScaleFmt { get; init; }
    /// <summary>The raw hub compress_ratios (all entries, MTP included), or null for a transformers-style config.</summary>
    public IReadOnlyList<int>? CompressRatios { get; init; }

    public int NumHashLayers => HashRouted.Count(h => h);
    public bool IsHashLayer(int layer) => layer < HashRouted.Count && HashRouted[layer];
    public V4LayerAttention AttentionOf(int layer) => Attention[layer];

    public static DeepseekV4Config Parse(ConfigJson c)
    {
        if (c.ModelType != Type) throw c.Invalid("model_type", $"is '{c.ModelType}', expected {Type}");
        int layers = c.Int("num_hidden_layers", 43);
        int mtp = c.Int("num_nextn_predict_layers", 1);
        int headDim = c.Int("head_dim", 512);
        if (layers <= 0) throw c.Invalid("num_hidden_layers", $"must be positive, got {layers}");
        if (mtp < 0) throw c.Invalid("num_nextn_predict_layers", "must not be negative");
        var (theta, compressTheta, yarn) = ParseRope(c);
        int rope = c.Has("qk_rope_head_dim") ? c.Int("qk_rope_head_dim")
            : (int)(headDim * (c.Has("partial_rotary_factor") ? c.Double("partial_rotary_factor") : 64.0 / 512));
        var cfg = new DeepseekV4Config
        {
            Json = c,
            VocabSize = c.Int("vocab_size", 129280),
            HiddenSize = c.Int("hidden_size", 4096),
            MoeIntermediateSize = c.Int("moe_intermediate_size", 2048),
            NumHiddenLayers = layers,
            NumAttentionHeads = c.Int("num_attention_heads", 64),
            NumKeyValueHeads = c.Int("num_key_value_heads", 1),
            HeadDim = headDim,
            QLoraRank = c.Int("q_lora_rank", 1024),
            QkRopeHeadDim = rope,
            NumExpertsPerTok = c.Int("num_experts_per_tok", 6),
            NRoutedExperts = c.Int("n_routed_experts", 256),
            NSharedExperts = c.Int("n_shared_experts", 1),
            ScoringFunc = c.String("scoring_func", "sqrtsoftplus"),
            TopkMethod = c.String("topk_method", "noaux_tc"),
            NormTopkProb = c.Bool("norm_topk_prob", true),
            RoutedScalingFactor = c.Double("routed_scaling_factor", 1.5),
            MaxPositionEmbeddings = c.Int("max_position_embeddings", 1048576),
            RopeTheta = theta,
            CompressRopeTheta = compressTheta,
            CompressYarn = yarn,
            HcMult = c.Int("hc_mult", 4),
            HcSinkhornIters = c.Int("hc_sinkhorn_iters", 20),
            HcEps = c.Double("hc_eps", 1e-6),
            SwigluLimit = c.Double("swiglu_limit", 10.0),
            SlidingWindow = c.Int("sliding_window", 128),
            OGroups = c.Int("o_groups", 8),
            OLoraRank = c.Int("o_lora_rank", 1024),
            IndexNHeads = c.Int("index_n_heads", 64),
            IndexHeadDim = c.Int("index_head_dim", 128),
            IndexTopk = c.Int("index_topk", 512),
            NumNextnPredictLayers = mtp,
            TieWordEmbeddings = c.Bool("tie_word_embeddings", false),
            RmsNormEps = c.Double("rms_norm_eps", 1e-6),
            Attention = ParseAttention(c, layers, mtp, out var ratios),
            CompressRatios = ratios,
            HashRouted = ParseHash(c, layers),
            ScaleFmt = ParseQuantization(c),
        };
        cfg.Validate();
        return cfg;
    }

    /// <summary>Main and compressed rope bases and the compressed layers' YaRN, from rope_scaling (hub) or rope_parameters (transformers).</summary>
    private static (double Main, double Compress, YarnScaling? Yarn) ParseRope(ConfigJson c)
    {
        double main = c.Double("rope_theta", 10000.0), compress = c.Double("compress_rope_theta", 160000.0);
        if (c.Root["rope_parameters"] is JsonObject rp)
        {
            if (rp["main"] is JsonObject m && rp["compress"] is JsonObject cp)
            {
                var mc = new ConfigJson(c.Path, m);
                var cc = new ConfigJson(c.Path, cp);
                if (mc.Has("rope_type") && mc.String("rope_type", "default") != "default")
                    throw c.Invalid("rope_parameters.main.rope_type", "must be 'default' (the sliding layers' plain rope)");
                return (mc.Double("rope_theta", main), cc.Double("rope_theta", compress), Yarn(c, cp, "rope_parameters.compress"));
            }
            return (main, compress, Yarn(c, rp, "rope_parameters"));
        }
        return (main, compress, c.Root["rope_scaling"] is JsonObject rs ? Yarn(c, rs, "rope_scaling") : null);
    }

    private static YarnScaling? Yarn(ConfigJson c, JsonObject o, string key)
    {
        var sub = new ConfigJson(c.Path, o);
        string type = sub.Has("rope_type") ? sub.String("rope_type", "") : sub.String("type", "default");
        if (type == "default") return null;
        if (type != "yarn") throw c.Invalid(key, $"type '{type}' is not supported (yarn or default)");
        var y = new YarnScaling(sub.Double("factor"), sub.Int("original_max_position_embeddings"), sub.Double("beta_fast", 32), sub.Double("beta_slow", 1),
            1, 0, AttentionFactor: 1.0);
        if (y.Factor <= 0 || y.OriginalMaxPositionEmbeddings <= 0)
            throw c.Invalid(key, "factor and original_max_position_embeddings must be positive");
        return y;
    }

    private static List<V4LayerAttention> ParseAttention(ConfigJson c, int layers, int mtp, out IReadOnlyList<int>? ratios)
    {
        var list = new List<V4LayerAttention>();
        ratios = null;
        if (c.Root["compress_ratios"] is { } node && !c.Has("layer_types"))
        {
            if (node is not JsonArray a) throw c.Invalid("compress_ratios", "must be a list of integers");
            if (a.Count < layers) throw c.Invalid("compress_ratios", $"has {a.Count} entries, num_hidden_layers is {layers}");
            var r = new List<int>();
            for (int i = 0; i < a.Count; i++)
            {
                int v = c.IntValue($"compress_ratios[{i}]", a[i] ?? throw c.Invalid($"compress_ratios[{i}]", "is null"));
                if (!HubRatios.TryGetValue(v, out var kind))
                    throw c.Invalid($"compress_ratios[{i}]", $"is {v}: not a known compress ratio (0 sliding, 4 compressed sparse, 128 heavily compressed)");
                r.Add(v);
                if (i < layers + mtp) list.Add(new V4LayerAttention(kind, v));
            }
            ratios = r;
        }
        else
        {
            var rates = new Dictionary<V4AttentionKind, int> { [V4AttentionKind.Csa] = 4, [V4AttentionKind.Hca] = 128 };
            if (c.Root["compress_rates"] is JsonObject cr)
            {
                var sub = new ConfigJson(c.Path, cr);
                if (sub.Has("compressed_sparse_attention")) rates[V4AttentionKind.Csa] = sub.Int("compressed_sparse_attention");
                if (sub.Has("heavily_compressed_attention")) rates[V4AttentionKind.Hca] = sub.Int("heavily_compressed_attention");
            }
            if (c.Has("compress_rate_csa")) rates[V4AttentionKind.Csa] = c.Int("compress_rate_csa");
            if (c.Has("compress_rate_hca")) rates[V4AttentionKind.Hca] = c.Int("compress_rate_hca");
            foreach (var (kind, rate) in rates)
                if (rate < 2) throw c.Invalid(kind == V4AttentionKind.Csa ? "compress_rates.compressed_sparse_attention" : "compress_rates.heavily_compressed_attention",
                    $"is {rate}: a compress ratio must be at least 2");
            var types = new List<string>();
            if (c.Root["layer_types"] is { } lt)
            {
                if (lt is not JsonArray a) throw c.Invalid("layer_types", "must be a list of strings");
                for (int i = 0; i < a.Count; i++) types.Add(c.StringValue($"layer_types[{i}]", a[i] ?? throw c.Invalid($"layer_types[{i}]", "is null")));
                if (types.Count < layers) throw c.Invalid("layer_types", $"has {types.Count} entries, num_hidden_layers is {layers}");
            }
            else
            {
                // transformers' default: two HCA layers, then CSA and HCA in turn
                for (int i = 0; i < layers; i++)
                    types.Add(i < 2 ? "heavily_compressed_attention" : (i - 2) % 2 == 1 ? "compressed_sparse_attention" : "heavily_compressed_attention");
            }
            for (int i = 0; i < Math.Min(types.Count, layers + mtp); i++)
            {
                list.Add(types[i] switch
                {
                    "sliding_attention" => new V4LayerAttention(V4AttentionKind.Sliding, 0),
                    "compressed_sparse_attention" => new V4LayerAttention(V4AttentionKind.Csa, rates[V4AttentionKind.Csa]),
                    "heavily_compressed_attention" => new V4LayerAttention(V4AttentionKind.Hca, rates[V4AttentionKind.Hca]),
                    var t => throw c.Invalid($"layer_types[{i}]", $"is '{t}' (sliding_attention, compressed_sparse_attention or heavily_compressed_attention)"),
                });
            }
        }
        // MTP layers past the list: sliding, as the hub's last entry is
        while (list.Count < layers + mtp) list.Add(new V4LayerAttention(V4AttentionKind.Sliding, 0));
        return list;
    }

    private static List<bool> ParseHash(ConfigJson c, int layers)
    {
        var list = new List<bool>();
        if (c.Root["mlp_layer_types"] is { } node)
        {
            if (node is not JsonArray a || a.Count < layers) throw c.Invalid("mlp_layer_types", $"must be a list of {layers} strings");
            for (int i = 0; i < layers; i++)
                list.Add(c.StringValue($"mlp_layer_types[{i}]", a[i] ?? throw c.Invalid($"mlp_layer_types[{i}]", "is null")) switch
                {
                    "hash_moe" => true,
                    "moe" => false,
                    var t => throw c.Invalid($"mlp_layer_types[{i}]", $"is '{t}' (hash_moe or moe)"),
                });
            return list;
        }
        int n = c.Int("num_hash_layers", 3);
        if (n < 0) throw c.Invalid("num_hash_layers", "must not be negative");
        for (int i = 0; i < layers; i++) list.Add(i < n);
        return list;
    }

    private static string? ParseQuantization(ConfigJson c)
    {
        if (c.Root["quantization_config"] is not JsonObject q) return null;
        var sub = new ConfigJson(c.Path, q);
        if (sub.String("quant_method", "") != "fp8") return null;
        var fmt = sub.String("fmt", "e4m3");
        if (fmt != "e4m3") throw c.Invalid("quantization_config.fmt", $"'{fmt}' is not supported (only e4m3)");
        if (q["weight_block_size"] is JsonArray bs)
        {
            if (bs.Count != 2 || sub.IntValue("weight_block_size", bs[0]!) != 128 || sub.IntValue("weight_block_size", bs[1]!) != 128)
                throw c.Invalid("quantization_config.weight_block_size", $"{bs.ToJsonString()} is not supported (only [128, 128])");
        }
        return q["scale_fmt"] is null ? null : sub.String("scale_fmt", "");
    }

    private void Validate()
    {
        var c = Json;
        void Positive(string key, int v) { if (v <= 0) throw c.Invalid(key, $"must be positive, got {v}"); }
        Positive("vocab_size", VocabSize);
        Positive("hidden_size", HiddenSize);
        Positive("moe_intermediate_size", MoeIntermediateSize);
        Positive("num_attention_heads", NumAttentionHeads);
        Positive("head_dim", HeadDim);
        Positive("q_lora_rank", QLoraRank);
        Positive("num_experts_per_tok", NumExpertsPerTok);
        Positive("n_routed_experts", NRoutedExperts);
        Positive("max_position_embeddings", MaxPositionEmbeddings);
        Positive("hc_mult", HcMult);
        Positive("hc_sinkhorn_iters", HcSinkhornIters);
        Positive("sliding_window", SlidingWindow);
        Positive("o_groups", OGroups);
        Positive("o_lora_rank", OLoraRank);
        if (NSharedExperts < 0) throw c.Invalid("n_shared_experts", "must not be negative");
        if (NumKeyValueHeads != 1)
            throw c.Invalid("num_key_value_heads", $"is {NumKeyValueHeads}: DeepSeek-V4 attention shares one key/value head (wkv is [head_dim, hidden])");
        if (QkRopeHeadDim <= 0 || QkRopeHeadDim % 2 != 0 || QkRopeHeadDim > HeadDim)
            throw c.Invalid("qk_rope_head_dim", $"is {QkRopeHeadDim}: must be even, positive and at most head_dim ({HeadDim})");
        if ((long)NumAttentionHeads * HeadDim % OGroups != 0)
            throw c.Invalid("o_groups", $"({OGroups}) must divide num_attention_heads x head_dim ({(long)NumAttentionHeads * HeadDim})");
        if (NumExpertsPerTok > NRoutedExperts)
            throw c.Invalid("num_experts_per_tok", $"({NumExpertsPerTok}) exceeds n_routed_experts ({NRoutedExperts})");
        if (ScoringFunc is not ("sqrtsoftplus" or "sigmoid" or "softmax"))
            throw c.Invalid("scoring_func", $"'{ScoringFunc}' is not supported (sqrtsoftplus, sigmoid, softmax)");
        if (TopkMethod != "noaux_tc") throw c.Invalid("topk_method", $"'{TopkMethod}' is not supported (DeepSeek-V4 selects with noaux_tc)");
        if (Attention.Any(a => a.Kind == V4AttentionKind.Csa))
        {
            Positive("index_n_heads", IndexNHeads);
            Positive("index_head_dim", IndexHeadDim);
            Positive("index_topk", IndexTopk);
            if (IndexHeadDim < QkRopeHeadDim)
                throw c.Invalid("index_head_dim", $"({IndexHeadDim}) is smaller than the rope dimensions ({QkRopeHeadDim})");
        }
    }

    /// <summary>The routing of a learned (non-hash) layer: sqrt-softplus (or the config's) scores, the selection bias
    /// for selection only, top-k, weights renormalised (+1e-20) when norm_topk_prob, times routed_scaling_factor.
    /// Hash layers take their experts from tid2eid[token] and weigh them the same way, without the bias.</summary>
    public RoutingRule Routing(bool hash) => new(NRoutedExperts, NumExpertsPerTok,
        ScoringFunc switch { "sigmoid" => RouterScoring.Sigmoid, "softmax" => RouterScoring.Softmax, _ => RouterScoring.SqrtSoftplus },
        SelectionBias: !hash, NormalizeTopK: NormTopkProb, NormalizeEpsilon: 1e-20, Scale: RoutedScalingFactor, Hashed: hash);
}
