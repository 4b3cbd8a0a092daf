using System.Text.Json.Nodes;
using Converter.Decoder;
using Converter.Formats.Gguf;

namespace Converter.Models.Qwen3Moe;

/// <summary>
/// Qwen3-MoE to llama.cpp's <c>qwen3moe</c> GGUF architecture, as llama.cpp's converter (conversion/qwen.py,
/// Qwen3MoeModel over Qwen2MoeModel over TextModel) and loader (src/models/qwen3moe.cpp) have it:
/// <list type="bullet">
/// <item>keys in the converter's order and types: block_count, context_length, embedding_length, feed_forward_length,
/// head_count, head_count_kv, the YaRN keys where rope_scaling is YaRN, rope.freq_base, layer_norm_rms_epsilon,
/// expert_count, expert_used_count, key_length/value_length where config.json gives head_dim (llama.cpp's default
/// is hidden_size / heads, the family's too), expert_feed_forward_length;</item>
/// <item>q/k/v/o as they are: unlike llama's, the qwen converters do not permute q/k (llama.cpp's qwen3moe ropes in
/// NEOX mode, rotate-half over the whole head, as transformers does);</item>
/// <item>routed experts stacked into 3-D <c>ffn_{gate,up,down}_exps</c>; output left out with tied embeddings
/// (llama.cpp then uses token_embd).</item>
/// </list>
/// llama.cpp's qwen3moe graph has an MoE block in every layer (the loader requires ffn_gate_inp and the expert
/// tensors in each) and always renormalises the top-k weights (build_moe_ffn with norm_w true, softmax gating):
/// dense layers cannot be loaded at all (a hard refusal); <c>norm_topk_prob: false</c> loads but computes other
/// weights (refused unless forced, as every inexact mapping is).
/// </summary>
public static class Qwen3MoeGgufMap
{
    public const string Arch = "qwen3moe";

    /// <param name="tokenizer">Tokenizer keys (<see cref="Tokenizers.GgufTokenizer"/>).</param>
    public static GgufModelPlan Build(Qwen3MoeConfig c, string modelName, IReadOnlyList<KeyValuePair<string, GgufValue>> tokenizer)
    {
        RefuseUnloadable(c);

        var meta = new List<KeyValuePair<string, GgufValue>>();
        void Add(string key, GgufValue v) => meta.Add(new(key, v));
        void U32(string key, int v) => Add($"{Arch}.{key}", GgufValue.UInt32(checked((uint)v)));
        void F32(string key, double v) => Add($"{Arch}.{key}", GgufValue.Float32((float)v));

        Add("general.architecture", GgufValue.String(Arch));
        Add("general.name", GgufValue.String(modelName));
        U32("block_count", c.NumHiddenLayers);
        U32("context_length", c.MaxPositionEmbeddings);
        U32("embedding_length", c.HiddenSize);
        U32("feed_forward_length", c.IntermediateSize);
        U32("attention.head_count", c.NumAttentionHeads);
        U32("attention.head_count_kv", c.NumKeyValueHeads);
        if (c.RopeScaling is { } y)
        {
            Add($"{Arch}.rope.scaling.type", GgufValue.String("yarn"));
            F32("rope.scaling.factor", y.Factor);
            U32("rope.scaling.original_context_length", y.OriginalMaxPositionEmbeddings);
            // written where config.json states them, as the converter does; qwen3moe's loader reads none of them
            // (llama.cpp uses its defaults, which Inexact checks the config against)
            if (c.Json.Root["rope_scaling"] is JsonObject rs)
            {
                void Opt(string key, params string[] names)
                {
                    foreach (var n in names)
                        if (rs[n] is JsonValue v && v.TryGetValue<double>(out double d)) { F32(key, d); return; }
                }
                Opt("rope.scaling.yarn_ext_factor", "extrapolation_factor");
                Opt("rope.scaling.yarn_attn_factor", "attention_factor", "attn_factor");
                Opt("rope.scaling.yarn_beta_fast", "beta_fast");
                Opt("rope.scaling.yarn_beta_slow", "beta_slow");
            }
        }
        F32("rope.freq_base", c.RopeTheta);
        F32("attention.layer_norm_rms_epsilon", c.RmsNormEps);
        U32("expert_count", c.NumExperts);
        U32("expert_used_count", c.NumExpertsPerTok);
        if (c.Json.Has("head_dim"))
        {
            U32("attention.key_length", c.HeadDim);
            U32("attention.value_length", c.HeadDim);
        }
        U32("expert_feed_forward_length", c.MoeIntermediateSize);
        meta.AddRange(tokenizer);

        return new GgufModelPlan(Arch, meta, Tensors(c)) { Inexact = Inexact(c), BlockCount = c.NumHiddenLayers, ExpertCount = c.NumExperts };
    }

    /// <summary>Throws <see cref="NotSupportedException"/> naming the dense layers (and the settings that make them)
    /// where the checkpoint has any: llama.cpp's qwen3moe cannot load such a file.</summary>
    public static void RefuseUnloadable(Qwen3MoeConfig c)
    {
        var dense = Enumerable.Range(0, c.NumHiddenLayers).Where(l => !c.IsMoeLayer(l)).ToArray();
        if (dense.Length > 0)
        {
            var settings = new List<string>();
            if (c.MlpOnlyLayers.Count > 0) settings.Add($"mlp_only_layers [{string.Join(", ", c.MlpOnlyLayers.Order())}]");
            if (c.DecoderSparseStep != 1) settings.Add($"decoder_sparse_step {c.DecoderSparseStep}");
            string why = string.Join(", ", settings);
            var also = Inexact(c);
            throw new NotSupportedException($"{c.Json.Path}: layer{(dense.Length > 1 ? "s" : "")} {string.Join(", ", dense)} " +
                $"{(dense.Length > 1 ? "are" : "is a")} dense MLP layer{(dense.Length > 1 ? "s" : "")} ({why}): llama.cpp's {Arch} has an MoE block " +
                "in every layer and cannot load a dense one; not exported to GGUF" + (also.Count > 0 ? "; also: " + string.Join("; ", also) : ""));
        }

    }

    /// <summary>
    /// What llama.cpp's qwen3moe computes differently from the checkpoint: top-k weights renormalised where the
    /// checkpoint does not; YaRN with llama.cpp's fixed beta_fast 32 / beta_slow 1 and cos/sin magnitude
    /// 1 + 0.1 ln(factor) (its loader reads no beta, attention-factor or mscale key for this architecture).
    /// </summary>
    public static IReadOnlyList<string> Inexact(Qwen3MoeConfig c)
    {
        var why = new List<string>();
        if (!c.NormTopkProb)
            why.Add($"norm_topk_prob false: the checkpoint mixes its top-{c.NumExpertsPerTok} experts with their softmax probabilities as they are, " +
                    $"llama.cpp's {Arch} always renormalises them to sum to 1");
        if (c.RopeScaling is { } y)
        {
            if (y.BetaFast != 32 || y.BetaSlow != 1)
                why.Add($"rope_scaling beta_fast {y.BetaFast} / beta_slow {y.BetaSlow}: llama.cpp's {Arch} YaRN uses 32 / 1");
            double ours = RotaryTables.AttentionFactor(y), theirs = y.Factor <= 1 ? 1 : 1 + 0.1 * Math.Log(y.Factor);
            if (Math.Abs(ours - theirs) > 1e-7 * theirs)
                why.Add($"rope_scaling attention factor {ours:G6} (attention_factor / mscale / mscale_all_dim): llama.cpp's {Arch} scales rotary " +
                        $"cos/sin by 1 + 0.1 ln(factor) = {theirs:G6}");
        }
        return why;
    }

    private static List<GgufTensorPlan> Tensors(Qwen3MoeConfig c)
    {
        long h = c.HiddenSize, v = c.VocabSize, hd = c.HeadDim, q = (long)c.NumAttentionHeads * hd, kv = (long)c.NumKeyValueHeads * hd;
        long mi = c.MoeIntermediateSize, e = c.NumExperts;
        var list = new List<GgufTensorPlan>();
        // a PyTorch [out, in] weight is ggml [in, out] with the same bytes
        void Matrix(string name, string src, long outDim, long inDim, bool keepF32 = false) =>
            list.Add(new GgufTensorPlan(name, [inDim, outDim], keepF32, [src], GgufProducers.Copy(src)));
        void Vector(string name, string src, long n) =>
            list.Add(new GgufTensorPlan(name, [n], true, [src], (source, write) => write(source.Read(src))));
        void Experts(string name, string prefix, string part, long[] dims)
        {
            var sources = Enumerable.Range(0, c.NumExperts).Select(x => $"{prefix}mlp.experts.{x}.{part}.weight").ToArray();
            list.Add(new GgufTensorPlan(name, dims, false, sources, GgufProducers.Stack(sources)));
        }

        Matrix("token_embd.weight", "model.embed_tokens.weight", v, h);
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.", b = $"blk.{i}.";
            Vector(b + "attn_norm.weight", p + "input_layernorm.weight", h);
            Matrix(b + "attn_q.weight", p + "self_attn.q_proj.weight", q, h);
            Matrix(b + "attn_k.weight", p + "self_attn.k_proj.weight", kv, h);
            Matrix(b + "attn_v.weight", p + "self_attn.v_proj.weight", kv, h);
            Matrix(b + "attn_output.weight", p + "self_attn.o_proj.weight", h, q);
            Vector(b + "attn_q_norm.weight", p + "self_attn.q_norm.weight", hd);
            Vector(b + "attn_k_norm.weight", p + "self_attn.k_norm.weight", hd);
            Vector(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", h);
            Matrix(b + "ffn_gate_inp.weight", p + "mlp.gate.weight", e, h, keepF32: true);
            Experts(b + "ffn_gate_exps.weight", p, "gate_proj", [h, mi, e]);
            Experts(b + "ffn_up_exps.weight", p, "up_proj", [h, mi, e]);
            Experts(b + "ffn_down_exps.weight", p, "down_proj", [mi, h, e]);
        }
        Vector("output_norm.weight", "model.norm.weight", h);
        if (!c.TieWordEmbeddings) Matrix("output.weight", "lm_head.weight", v, h);
        return list;
    }
}
