using System.Text.Json.Nodes;
using Converter.Formats.Gguf;
using Converter.Numerics.Ggml;

namespace Converter.Models.DeepseekV4;

/// <summary>
/// DeepSeek-V4 to llama.cpp's <c>deepseek4</c> GGUF architecture, as llama.cpp v0.5.0's converter
/// (<c>conversion/deepseek.py</c>, <c>DeepseekV4Model</c>) writes it: its <c>deepseek4.*</c> keys in its order, its tensor
/// names, and its tensor order (the hash layers' <c>tid2eid</c> as I32, then per layer the stacked routed experts
/// gate / down / up, then every other tensor in the order it reads them: shard by shard, names sorted). The MTP layers
/// are left out (as its converter does without <c>--mtp</c>), and so is a hash layer's unused <c>ffn.gate.bias</c>.
/// Checkpoints its graph cannot run (hc_mult other than 4, compress ratios other than 0/4/128, scores other than
/// sqrt-softplus) are marked inexact: refused unless forced.
/// </summary>
public static class DeepseekV4GgufMap
{
    public const string Arch = "deepseek4";

    public static GgufModelPlan Build(DeepseekV4Architecture arch, string modelName, string? directory = null)
    {
        var c = arch.Cfg;
        var meta = new List<KeyValuePair<string, GgufValue>>();
        void Add(string key, GgufValue v) => meta.Add(new(key, v));
        void U32(string key, int v) => Add($"{Arch}.{key}", GgufValue.UInt32(checked((uint)v)));
        void F32(string key, double v) => Add($"{Arch}.{key}", GgufValue.Float32((float)v));
        int blocks = c.NumHiddenLayers;

        Add("general.architecture", GgufValue.String(Arch));
        Add("general.type", GgufValue.String("model"));
        Add("general.name", GgufValue.String(modelName));
        U32("block_count", blocks);
        U32("context_length", c.MaxPositionEmbeddings);
        U32("embedding_length", c.HiddenSize);
        U32("attention.head_count", c.NumAttentionHeads);
        U32("attention.head_count_kv", c.NumKeyValueHeads);
        if (c.CompressYarn is { } y)
        {
            Add($"{Arch}.rope.scaling.type", GgufValue.String("yarn"));
            F32("rope.scaling.factor", y.Factor);
            U32("rope.scaling.original_context_length", y.OriginalMaxPositionEmbeddings);
            if (!HubRope(c)) F32("rope.scaling.yarn_attn_factor", 1.0); // transformers-style configs carry attention_factor 1
            F32("rope.scaling.yarn_beta_fast", y.BetaFast);
            F32("rope.scaling.yarn_beta_slow", y.BetaSlow);
        }
        F32("rope.freq_base", c.RopeTheta);
        F32("attention.layer_norm_rms_epsilon", c.RmsNormEps);
        U32("expert_count", c.NRoutedExperts);
        U32("expert_used_count", c.NumExpertsPerTok);
        U32("expert_gating_func", c.ScoringFunc switch { "softmax" => 1, "sigmoid" => 2, _ => 4 });
        U32("attention.key_length", c.HeadDim);
        U32("attention.value_length", c.HeadDim);
        U32("rope.dimension_count", c.QkRopeHeadDim);
        U32("attention.q_lora_rank", c.QLoraRank);
        U32("attention.sliding_window", c.SlidingWindow);
        U32("expert_feed_forward_length", c.MoeIntermediateSize);
        U32("expert_shared_count", c.NSharedExperts);
        F32("expert_weights_scale", c.RoutedScalingFactor);
        Add($"{Arch}.expert_weights_norm", GgufValue.Bool(c.NormTopkProb));
        Add($"{Arch}.swiglu_clamp_exp", GgufValue.Array(Enumerable.Repeat((float)c.SwigluLimit, blocks).ToArray()));
        Add($"{Arch}.swiglu_clamp_shexp", GgufValue.Array(Enumerable.Repeat((float)c.SwigluLimit, blocks).ToArray()));
        U32("attention.indexer.head_count", c.IndexNHeads);
        U32("attention.indexer.key_length", c.IndexHeadDim);
        U32("attention.indexer.top_k", c.IndexTopk);
        U32("attention.output_group_count", c.OGroups);
        U32("attention.output_lora_rank", c.OLoraRank);
        var ratios = c.CompressRatios ?? c.Attention.Select(a => a.Ratio).ToList();
        Add($"{Arch}.attention.compress_ratios", GgufValue.Array(ratios.ToArray()));
        F32("attention.compress_rope_freq_base", c.CompressRopeTheta);
        U32("hyper_connection.count", c.HcMult);
        U32("hyper_connection.sinkhorn_iterations", c.HcSinkhornIters);
        F32("hyper_connection.epsilon", c.HcEps);
        U32("hash_layer_count", c.NumHashLayers);
        U32("embedding_length_out", c.HiddenSize * c.HcMult);
        // tokenizer.json where the checkpoint has one (BPE, as for DeepSeek-V3); the tiny references have none: a
        // 256-token byte-level vocabulary, as llama.cpp's helper writes it
        meta.AddRange((directory == null ? null : Tokenizers.HfBpeTokenizer.TryLoad(directory, c.VocabSize)) ?? ByteLevelTokenizer(c.VocabSize));

        var leftOut = new List<string>();
        if (c.NumNextnPredictLayers > 0)
            leftOut.Add($"{c.NumNextnPredictLayers} MTP layer(s) (mtp.*): llama.cpp's converter exports them only on their own (--mtp)");
        return new GgufModelPlan(Arch, meta, Tensors(arch, directory)) { Inexact = Inexact(c), LeftOut = leftOut, BlockCount = blocks, ExpertCount = c.NRoutedExperts };
    }

    /// <summary>True for a hub-style config (rope_scaling), whose YaRN dict carries no attention_factor.</summary>
    private static bool HubRope(DeepseekV4Config c) => c.Json.Root["rope_parameters"] is not JsonObject;

    /// <summary>What llama.cpp's deepseek4 cannot run (v0.5.0: its graph asserts hc_mult == 4, its loader knows compress
    /// ratios 0, 4 and 128 only and sqrt-softplus scoring only).</summary>
    public static IReadOnlyList<string> Inexact(DeepseekV4Config c)
    {
        var why = new List<string>();
        if (c.HcMult != 4)
            why.Add($"hc_mult is {c.HcMult}: llama.cpp's deepseek4 graph asserts 4 hyper-connection streams");
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            var a = c.AttentionOf(l);
            bool ok = a.Kind switch { V4AttentionKind.Sliding => true, V4AttentionKind.Csa => a.Ratio == 4, _ => a.Ratio == 128 };
            if (!ok) why.Add($"layer {l} is {a}: llama.cpp's deepseek4 knows compress ratios 0, 4 (CSA) and 128 (HCA) only");
        }
        if (c.ScoringFunc != "sqrtsoftplus")
            why.Add($"scoring_func is {c.ScoringFunc}: llama.cpp's deepseek4 loader requires sqrt-softplus expert scores");
        return why;
    }

    /// <summary>The GPT-2 byte-to-unicode vocabulary of a byte-level (256-token) checkpoint, as llama.cpp's converter writes it.</summary>
    public static IReadOnlyList<KeyValuePair<string, GgufValue>> ByteLevelTokenizer(int vocabSize)
    {
        if (vocabSize != 256)
            throw new NotSupportedException($"vocab_size {vocabSize}: only byte-level (256-token) vocabularies are mapped for deepseek4 (no tokenizer.json support yet)");
        var tokens = new string[256];
        int extra = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= 33 and <= 126 or >= 161 and <= 172 or >= 174 and <= 255;
            tokens[b] = char.ConvertFromUtf32(printable ? b : 256 + extra++);
        }
        return
        [
            new("tokenizer.ggml.model", GgufValue.String("gpt2")),
            new("tokenizer.ggml.pre", GgufValue.String("default")),
            new("tokenizer.ggml.tokens", GgufValue.Array(tokens)),
            new("tokenizer.ggml.token_type", GgufValue.Array(Enumerable.Repeat(1, 256).ToArray())),
            new("tokenizer.ggml.merges", GgufValue.Array(Array.Empty<string>())),
        ];
    }

    /// <summary>llama.cpp's name of a hub tensor of layer <paramref name="l"/> (its part after "layers.L."), or null where it writes none.</summary>
    private static readonly Dictionary<string, string> LayerNames = new(StringComparer.Ordinal)
    {
        ["hc_attn_fn"] = "hc_attn_fn.weight", ["hc_attn_base"] = "hc_attn_base.weight", ["hc_attn_scale"] = "hc_attn_scale.weight",
        ["hc_ffn_fn"] = "hc_ffn_fn.weight", ["hc_ffn_base"] = "hc_ffn_base.weight", ["hc_ffn_scale"] = "hc_ffn_scale.weight",
        ["attn.attn_sink"] = "attn_sinks.weight",
        ["attn.wq_a.weight"] = "attn_q_a.weight", ["attn.wq_b.weight"] = "attn_q_b.weight", ["attn.q_norm.weight"] = "attn_q_a_norm.weight",
        ["attn.wkv.weight"] = "attn_kv.weight", ["attn.kv_norm.weight"] = "attn_kv_a_norm.weight",
        ["attn.wo_a.weight"] = "attn_output_a.weight", ["attn.wo_b.weight"] = "attn_output_b.weight",
        ["attn.compressor.ape"] = "attn_compressor_ape.weight", ["attn.compressor.wkv.weight"] = "attn_compressor_kv.weight",
        ["attn.compressor.wgate.weight"] = "attn_compressor_gate.weight", ["attn.compressor.norm.weight"] = "attn_compressor_norm.weight",
        ["attn.indexer.wq_b.weight"] = "indexer.attn_q_b.weight", ["attn.indexer.weights_proj.weight"] = "indexer.proj.weight",
        ["attn.indexer.compressor.ape"] = "indexer_compressor_ape.weight", ["attn.indexer.compressor.wkv.weight"] = "indexer_compressor_kv.weight",
        ["attn.indexer.compressor.wgate.weight"] = "indexer_compressor_gate.weight", ["attn.indexer.compressor.norm.weight"] = "indexer_compressor_norm.weight",
        ["attn_norm.weight"] = "attn_norm.weight", ["ffn_norm.weight"] = "ffn_norm.weight",
        ["ffn.gate.weight"] = "ffn_gate_inp.weight", ["ffn.gate.bias"] = "exp_probs_b.bias",
        ["ffn.shared_experts.w1.weight"] = "ffn_gate_shexp.weight", ["ffn.shared_experts.w2.weight"] = "ffn_down_shexp.weight",
        ["ffn.shared_experts.w3.weight"] = "ffn_up_shexp.weight",
    };

    private static readonly Dictionary<string, string> RootNames = new(StringComparer.Ordinal)
    {
        ["embed.weight"] = "token_embd.weight", ["norm.weight"] = "output_norm.weight", ["head.weight"] = "output.weight",
        ["hc_head_fn"] = "output_hc_fn.weight", ["hc_head_base"] = "output_hc_base.weight", ["hc_head_scale"] = "output_hc_scale.weight",
    };

    /// <summary>Tensors llama.cpp keeps in F32 under a uniform type: 1-D ones, the hyper-connection mixing, position
    /// biases and sinks (used by element-wise ops), the router and the indexer's head weights (its default rules).</summary>
    private static bool KeepF32(string ggufName, long[] dims) => dims.Length <= 1 || ggufName.Contains("_hc_", StringComparison.Ordinal)
        || ggufName.StartsWith("output_hc_", StringComparison.Ordinal) || ggufName.EndsWith("_ape.weight", StringComparison.Ordinal)
        || ggufName.EndsWith("ffn_gate_inp.weight", StringComparison.Ordinal) || ggufName.EndsWith("indexer.proj.weight", StringComparison.Ordinal)
        || ggufName.Contains(".hc_", StringComparison.Ordinal);

    private static List<GgufTensorPlan> Tensors(DeepseekV4Architecture arch, string? directory)
    {
        var c = arch.Cfg;
        var expected = arch.ExpectedTensors().Where(t => !t.Role.IsMtp).ToDictionary(t => t.Name, t => t, StringComparer.Ordinal);
        var list = new List<GgufTensorPlan>();
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            if (!c.IsHashLayer(l)) continue;
            string src = $"layers.{l}.ffn.gate.tid2eid";
            list.Add(new GgufTensorPlan($"blk.{l}.ffn_gate_tid2eid.weight", [c.NumExpertsPerTok, c.VocabSize], false, [src], (_, _) => { })
                { FixedType = GgmlType.I32 });
        }
        long h = c.HiddenSize, mi = c.MoeIntermediateSize, e = c.NRoutedExperts;
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            Experts(list, $"blk.{l}.ffn_gate_exps.weight", l, "w1", [h, mi, e], c.NRoutedExperts);
            Experts(list, $"blk.{l}.ffn_down_exps.weight", l, "w2", [mi, h, e], c.NRoutedExperts);
            Experts(list, $"blk.{l}.ffn_up_exps.weight", l, "w3", [h, mi, e], c.NRoutedExperts);
        }
        foreach (var name in ReadOrder(expected.Keys, directory))
        {
            var t = expected[name];
            string? gguf;
            if (RootNames.TryGetValue(name, out var root)) gguf = root;
            else
            {
                int l = t.Role.Layer;
                string part = name[$"layers.{l}.".Length..];
                if (part.StartsWith("ffn.experts.", StringComparison.Ordinal) || part == "ffn.gate.tid2eid") continue; // written above
                gguf = LayerNames.TryGetValue(part, out var n) ? $"blk.{l}.{n}"
                    : throw new InvalidDataException($"tensor '{name}' has no deepseek4 GGUF name");
            }
            long[] dims = t.Shape.Reverse().ToArray(); // a PyTorch [out, in] tensor is ggml [in, out] with the same bytes
            list.Add(new GgufTensorPlan(gguf, dims, KeepF32(gguf, dims), [name], Copy(name)));
        }
        if (c.TieWordEmbeddings)
            list.Add(new GgufTensorPlan("output.weight", [h, c.VocabSize], false, ["embed.weight"], Copy("embed.weight")));
        return list;
    }

    /// <summary>The order llama.cpp's converter reads the checkpoint's tensors in: shard files sorted by name (from
    /// the index where there is one), each shard's names sorted (ordinal, as Python sorts).</summary>
    private static IEnumerable<string> ReadOrder(IEnumerable<string> names, string? directory)
    {
        Dictionary<string, string>? shardOf = null;
        var index = directory == null ? null : Path.Combine(directory, "model.safetensors.index.json");
        if (index != null && File.Exists(index) && JsonNode.Parse(File.ReadAllText(index))?["weight_map"] is JsonObject map)
            shardOf = map.ToDictionary(kv => kv.Key, kv => kv.Value?.GetValue<string>() ?? "", StringComparer.Ordinal);
        return names.OrderBy(n => shardOf != null && shardOf.TryGetValue(n, out var f) ? f : "", StringComparer.Ordinal)
            .ThenBy(n => n, StringComparer.Ordinal);
    }

    /// <summary>A 2-D (or 1-D) tensor as it is, in slabs of whole 128-row blocks.</summary>
    private static GgufTensorProducer Copy(string src) => (source, write) =>
    {
        long rows = source.Rows(src), cols = source.ElementCount(src) / Math.Max(1, rows);
        long slabRows = Math.Max(128, source.SlabValues / Math.Max(1, cols) / 128 * 128);
        if (rows <= slabRows || cols == 1)
        {
            write(source.Read(src));
            return;
        }
        var buffer = new float[checked((int)(slabRows * cols))];
        for (long r0 = 0; r0 < rows; r0 += slabRows)
        {
            var slab = buffer.AsSpan(0, (int)(Math.Min(slabRows, rows - r0) * cols));
            source.ReadRows(src, r0, slab);
            write(slab);
        }
    };

    /// <summary>Experts 0..E-1 of one projection stacked into a 3-D tensor, written one expert at a time.</summary>
    private static void Experts(List<GgufTensorPlan> list, string name, int layer, string proj, long[] dims, int experts)
    {
        var sources = Enumerable.Range(0, experts).Select(x => $"layers.{layer}.ffn.experts.{x}.{proj}.weight").ToArray();
        list.Add(new GgufTensorPlan(name, dims, false, sources, (source, write) =>
        {
            foreach (var s in sources) write(source.Read(s));
        }));
    }
}
