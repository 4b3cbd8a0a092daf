using Converter.Formats.Gguf;

namespace Converter.Models.DeepseekV3;

/// <summary>
/// DeepSeek-V3 family to llama.cpp's <c>deepseek2</c> GGUF architecture (facts verified against llama.cpp in
/// notes/gguf-deepseek2.md): MLA keys with head_count_kv 1, kv_b_proj split per head into attn_k_b (nope rows,
/// transposed) and attn_v_b, routed experts stacked into 3-D tensors, the MTP layer left out (llama.cpp fails on
/// unknown tensors), sigmoid gating, grouping keys only where grouping does something.
/// </summary>
public static class DeepseekV3GgufMap
{
    public const string Arch = "deepseek2";

    /// <param name="tokenizer">Tokenizer keys (<see cref="Tokenizers.GgufTokenizer"/>); null for the byte-level one of a 256-token vocabulary.</param>
    public static GgufModelPlan Build(DeepseekV3Config c, string modelName, IReadOnlyList<KeyValuePair<string, GgufValue>>? tokenizer = null)
    {
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
        U32("attention.head_count_kv", 1);
        F32("rope.freq_base", c.RopeTheta);
        F32("attention.layer_norm_rms_epsilon", c.RmsNormEps);
        U32("expert_used_count", c.NumExpertsPerTok);
        U32("leading_dense_block_count", c.FirstKDenseReplace);
        U32("vocab_size", c.VocabSize);
        U32("attention.q_lora_rank", c.QLoraRank ?? 0);
        U32("attention.kv_lora_rank", c.KvLoraRank);
        U32("attention.key_length", c.KvLoraRank + c.QkRopeHeadDim);
        U32("attention.value_length", c.KvLoraRank);
        U32("attention.key_length_mla", c.QkNopeHeadDim + c.QkRopeHeadDim);
        U32("attention.value_length_mla", c.VHeadDim);
        U32("expert_feed_forward_length", c.MoeIntermediateSize);
        U32("expert_count", c.NRoutedExperts);
        U32("expert_shared_count", c.NSharedExperts);
        // The routing keys from the family's one routing rule (the ONNX graph and calibration read the same).
        var rule = c.Routing;
        F32("expert_weights_scale", rule.Scale);
        if (rule.NormalizeTopK) Add($"{Arch}.expert_weights_norm", GgufValue.Bool(true));
        U32("expert_gating_func", rule.Scoring == RouterScoring.Sigmoid ? 2 : 1); // llama.cpp: 1 softmax, 2 sigmoid
        // llama.cpp aborts on n_group >= n_expert or topk_group >= n_group; there grouping selects nothing anyway.
        // greedy has no group stage in the rule (the checkpoint's own code ignores groups), so llama.cpp must not group either.
        if (GroupingActive(c))
        {
            U32("expert_group_count", c.NGroup);
            U32("expert_group_used_count", c.TopkGroup);
        }
        U32("rope.dimension_count", c.QkRopeHeadDim);
        if (c.RopeScaling is { } y)
        {
            Add($"{Arch}.rope.scaling.type", GgufValue.String("yarn"));
            F32("rope.scaling.factor", y.Factor);
            U32("rope.scaling.original_context_length", y.OriginalMaxPositionEmbeddings);
            F32("rope.scaling.yarn_log_multiplier", 0.1 * y.MscaleAllDim);
        }
        meta.AddRange(tokenizer ?? Tokenizers.ByteLevelTokenizer.Keys(c.VocabSize));

        var leftOut = new List<string>();
        if (c.NumNextnPredictLayers > 0)
            leftOut.Add($"{c.NumNextnPredictLayers} MTP (next-token prediction) layer(s) model.layers.{c.NumHiddenLayers}" +
                        (c.NumNextnPredictLayers > 1 ? $"..{c.NumHiddenLayers + c.NumNextnPredictLayers - 1}" : "") +
                        ": llama.cpp's deepseek2 loader fails on tensors it does not know");
        return new GgufModelPlan(Arch, meta, Tensors(c)) { Inexact = Inexact(c), LeftOut = leftOut, BlockCount = c.NumHiddenLayers, ExpertCount = c.NRoutedExperts };
    }

    /// <summary>True where group-limited routing selects something (llama.cpp aborts on the no-op combinations).</summary>
    public static bool GroupingActive(DeepseekV3Config c) => c.Routing.GroupingActive && c.NGroup < c.NRoutedExperts;

    /// <summary>
    /// What llama.cpp's deepseek2 cannot represent exactly for this config. llama.cpp: sigmoid (or softmax) scores,
    /// selection on scores + exp_probs_b when present, groups ranked by the sum of their two best (biased) scores,
    /// weights from unbiased scores, optional normalisation, times expert_weights_scale; YaRN whose rotary
    /// magnitude correction cancels (it scales cos/sin by 1 and q.k by (1 + 0.1 mscale_all_dim ln factor)^2),
    /// with ggml's default beta_fast 32 / beta_slow 1.
    /// </summary>
    public static IReadOnlyList<string> Inexact(DeepseekV3Config c)
    {
        var why = new List<string>();
        if (c.RopeScaling is { } y && y.Factor > 1)
        {
            if (y.Mscale != y.MscaleAllDim)
                why.Add($"rope_scaling.mscale ({y.Mscale}) differs from mscale_all_dim ({y.MscaleAllDim}): the checkpoint scales rotary cos/sin by " +
                        $"(1 + 0.1 mscale ln f) / (1 + 0.1 mscale_all_dim ln f) = {(0.1 * y.Mscale * Math.Log(y.Factor) + 1) / (0.1 * y.MscaleAllDim * Math.Log(y.Factor) + 1):G6}, " +
                        "llama.cpp's deepseek2 by exactly 1 (it has only rope.scaling.yarn_log_multiplier = 0.1 mscale_all_dim)");
            if (y.BetaFast != 32 || y.BetaSlow != 1)
                why.Add($"rope_scaling beta_fast {y.BetaFast} / beta_slow {y.BetaSlow}: llama.cpp's YaRN uses 32 / 1");
        }
        if (c.Routing.GroupScore == GroupScoring.Max && GroupingActive(c))
            why.Add($"topk_method {c.TopkMethod} ranks the {c.NGroup} expert groups by their best score; llama.cpp ranks groups by the sum " +
                    "of their two best scores (noaux_tc's rule), so different experts can be chosen");
        if (c.Routing.GroupingActive && c.NGroup >= c.NRoutedExperts)
            why.Add($"n_group {c.NGroup} with one expert per group: llama.cpp aborts on expert_group_count >= expert_count");
        return why;
    }

    private static List<GgufTensorPlan> Tensors(DeepseekV3Config c)
    {
        long h = c.HiddenSize, v = c.VocabSize, nh = c.NumAttentionHeads;
        var list = new List<GgufTensorPlan>();
        // a PyTorch [out, in] weight is ggml [in, out] with the same bytes
        void Matrix(string name, string src, long outDim, long inDim) =>
            list.Add(new GgufTensorPlan(name, [inDim, outDim], false, [src], Copy(src)));
        void Vector(string name, string src, long n) =>
            list.Add(new GgufTensorPlan(name, [n], true, [src], (source, write) => write(source.Read(src))));

        Matrix("token_embd.weight", "model.embed_tokens.weight", v, h);
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.", b = $"blk.{i}.";
            Vector(b + "attn_norm.weight", p + "input_layernorm.weight", h);
            if (c.QLoraRank is { } q)
            {
                Matrix(b + "attn_q_a.weight", p + "self_attn.q_a_proj.weight", q, h);
                Vector(b + "attn_q_a_norm.weight", p + "self_attn.q_a_layernorm.weight", q);
                Matrix(b + "attn_q_b.weight", p + "self_attn.q_b_proj.weight", nh * c.QkHeadDim, q);
            }
            else
            {
                Matrix(b + "attn_q.weight", p + "self_attn.q_proj.weight", nh * c.QkHeadDim, h);
            }
            Matrix(b + "attn_kv_a_mqa.weight", p + "self_attn.kv_a_proj_with_mqa.weight", c.KvLoraRank + c.QkRopeHeadDim, h);
            Vector(b + "attn_kv_a_norm.weight", p + "self_attn.kv_a_layernorm.weight", c.KvLoraRank);
            string kvb = p + "self_attn.kv_b_proj.weight";
            list.Add(new GgufTensorPlan(b + "attn_k_b.weight", [c.QkNopeHeadDim, c.KvLoraRank, nh], false, [kvb], KB(c, kvb)));
            list.Add(new GgufTensorPlan(b + "attn_v_b.weight", [c.KvLoraRank, c.VHeadDim, nh], false, [kvb], VB(c, kvb)));
            Matrix(b + "attn_output.weight", p + "self_attn.o_proj.weight", h, nh * c.VHeadDim);
            Vector(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", h);
            if (c.IsMoeLayer(i))
            {
                long mi = c.MoeIntermediateSize, e = c.NRoutedExperts;
                string gate = p + "mlp.gate.weight";
                list.Add(new GgufTensorPlan(b + "ffn_gate_inp.weight", [h, e], true, [gate], Copy(gate)));
                if (c.Routing.SelectionBias)
                    Vector(b + "exp_probs_b.bias", p + "mlp.gate.e_score_correction_bias", e);
                Experts(list, b + "ffn_gate_exps.weight", p, "gate_proj", [h, mi, e], c.NRoutedExperts);
                Experts(list, b + "ffn_up_exps.weight", p, "up_proj", [h, mi, e], c.NRoutedExperts);
                Experts(list, b + "ffn_down_exps.weight", p, "down_proj", [mi, h, e], c.NRoutedExperts);
                if (c.NSharedExperts > 0)
                {
                    long si = mi * c.NSharedExperts;
                    Matrix(b + "ffn_gate_shexp.weight", p + "mlp.shared_experts.gate_proj.weight", si, h);
                    Matrix(b + "ffn_up_shexp.weight", p + "mlp.shared_experts.up_proj.weight", si, h);
                    Matrix(b + "ffn_down_shexp.weight", p + "mlp.shared_experts.down_proj.weight", h, si);
                }
            }
            else
            {
                long ff = c.IntermediateSize;
                Matrix(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", ff, h);
                Matrix(b + "ffn_up.weight", p + "mlp.up_proj.weight", ff, h);
                Matrix(b + "ffn_down.weight", p + "mlp.down_proj.weight", h, ff);
            }
        }
        Vector("output_norm.weight", "model.norm.weight", h);
        Matrix("output.weight", "lm_head.weight", v, h);
        return list;
    }

    private static GgufTensorProducer Copy(string src) => GgufProducers.Copy(src);

    private static void Experts(List<GgufTensorPlan> list, string name, string prefix, string part, long[] dims, int experts)
    {
        var sources = Enumerable.Range(0, experts).Select(e => $"{prefix}mlp.experts.{e}.{part}.weight").ToArray();
        list.Add(new GgufTensorPlan(name, dims, false, sources, GgufProducers.Stack(sources)));
    }

    /// <summary>attn_k_b [nope, kv_lora, nh]: for each head, the nope rows of kv_b_proj transposed to [kv_lora, nope].</summary>
    private static GgufTensorProducer KB(DeepseekV3Config c, string src) => (source, write) =>
    {
        var w = source.Read(src);
        int nope = c.QkNopeHeadDim, vd = c.VHeadDim, kv = c.KvLoraRank;
        var head = new float[kv * nope];
        for (int hd = 0; hd < c.NumAttentionHeads; hd++)
        {
            int row0 = hd * (nope + vd);
            for (int r = 0; r < kv; r++)
                for (int j = 0; j < nope; j++)
                    head[r * nope + j] = w[(long)(row0 + j) * kv + r];
            write(head);
        }
    };

    /// <summary>attn_v_b [kv_lora, v, nh]: for each head, the v rows of kv_b_proj as they are.</summary>
    private static GgufTensorProducer VB(DeepseekV3Config c, string src) => (source, write) =>
    {
        var w = source.Read(src);
        int nope = c.QkNopeHeadDim, vd = c.VHeadDim, kv = c.KvLoraRank;
        for (int hd = 0; hd < c.NumAttentionHeads; hd++)
            write(w.AsSpan((hd * (nope + vd) + nope) * kv, vd * kv));
    };
}
