using Converter.Formats.Gguf;
using Converter.Numerics.Ggml;

namespace Converter.Models;

/// <summary>llama.cpp's broad tensor categories for quantization (tensor_get_category, src/llama-quant.cpp): the
/// first of these substrings in the name decides, so MLA's attn_k_b / attn_v_b and DeepSeek-V4's attn_kv /
/// attn_output_a are <see cref="Other"/>.</summary>
public enum GgufTensorCategory { Output, TokenEmbd, AttentionQkv, AttentionKvB, AttentionV, AttentionK, AttentionQ, AttentionOutput, FfnUp, FfnGate, FfnDown, Other }

/// <summary>The model facts llama-quantize's rules read (block_count, expert_count, head counts of layer 0).</summary>
public readonly record struct GgufModelFacts(int BlockCount, int ExpertCount, int HeadCount, int HeadCountKv)
{
    /// <summary>n_gqa(): query heads per KV head (0 without KV heads).</summary>
    public int Gqa => HeadCountKv == 0 ? 0 : HeadCount / HeadCountKv;

    /// <summary>The facts from a plan's metadata keys, as llama.cpp's loader reads them.</summary>
    public static GgufModelFacts From(GgufModelPlan plan)
    {
        int Key(string name)
        {
            foreach (var (k, v) in plan.Metadata)
                if (k == $"{plan.Architecture}.{name}")
                    return v.IsArray ? Convert.ToInt32(((Array)v.Value).GetValue(0)) : Convert.ToInt32(v.Value);
            return 0;
        }
        return new(plan.BlockCount, plan.ExpertCount, Key("attention.head_count"), Key("attention.head_count_kv"));
    }
}

/// <summary>
/// llama-quantize's choice of a ggml type per tensor (llama_tensor_get_type in src/llama-quant.cpp of llama.cpp
/// v0.5.0), for the file types this exporter writes and the architectures it has (deepseek2, qwen3moe, deepseek4;
/// the Falcon and Llama-70B special cases do not apply). In order: tensors llama-quantize does not quantize keep
/// their type; <c>--token-embedding-type</c> / <c>--output-tensor-type</c>; then, for quantized file types only, the
/// first matching <c>--tensor-type</c> or else (unless pure) the file type's rule table below; last the fallback
/// for rows that are not whole blocks.
/// </summary>
public static class GgufTypePolicy
{
    /// <summary>llama.cpp's layer rule for the mixes' extra bits: the first and last eighth and every third layer between.</summary>
    public static bool UseMoreBits(int layer, int layers) =>
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;

    /// <summary>tensor_allows_quantization: 2-D and 3-D weights named *weight, except norms, routers and the
    /// DeepSeek-V4 token-to-expert table (the other exclusions name tensors of architectures not exported here).</summary>
    public static bool AllowsQuantization(string name, IReadOnlyList<long> dims)
    {
        int n = dims.Count;
        while (n > 1 && dims[n - 1] == 1) n--; // ggml_n_dims ignores trailing 1s
        return n >= 2 && name.EndsWith("weight", StringComparison.Ordinal)
               && !name.Contains("_norm.weight", StringComparison.Ordinal)
               && !name.Contains("ffn_gate_inp.weight", StringComparison.Ordinal)
               && !name.Contains("ffn_gate_tid2eid.weight", StringComparison.Ordinal);
    }

    private static readonly (string Needle, GgufTensorCategory Category)[] CategoryNeedles =
    [
        ("attn_qkv.weight", GgufTensorCategory.AttentionQkv), ("attn_kv_b.weight", GgufTensorCategory.AttentionKvB),
        ("attn_v.weight", GgufTensorCategory.AttentionV), ("attn_k.weight", GgufTensorCategory.AttentionK),
        ("attn_q.weight", GgufTensorCategory.AttentionQ), ("attn_output.weight", GgufTensorCategory.AttentionOutput),
        ("ffn_up", GgufTensorCategory.FfnUp), ("ffn_gate", GgufTensorCategory.FfnGate), ("ffn_down", GgufTensorCategory.FfnDown),
    ];

    public static GgufTensorCategory Category(string name)
    {
        if (name == "output.weight") return GgufTensorCategory.Output;
        if (name == "token_embd.weight") return GgufTensorCategory.TokenEmbd;
        foreach (var (needle, category) in CategoryNeedles)
            if (name.Contains(needle, StringComparison.Ordinal)) return category;
        return GgufTensorCategory.Other;
    }

    private static bool IsAttnV(GgufTensorCategory c) =>
        c is GgufTensorCategory.AttentionV or GgufTensorCategory.AttentionQkv or GgufTensorCategory.AttentionKvB;

    /// <summary>What a rule may look at: the tensor's row length, its layer (ffn_down), the attention-V counter.</summary>
    private readonly record struct Ctx(GgufFileType FileType, GgmlType Default, long Ne0, int Layer, int AttnV, int AttnVCount,
        GgufModelFacts Model, bool HasImatrix, GgmlType? OutputType)
    {
        public int Layers => Model.BlockCount;
    }

    /// <summary>One row of llama_tensor_get_type_impl: for these categories and file types (empty: any), when the
    /// condition holds, this type. The first matching row of the tensor's category wins; none leaves the default.</summary>
    private sealed record Rule(GgufTensorCategory[] Categories, GgufFileType[] FileTypes, Func<Ctx, bool>? When, Func<Ctx, GgmlType> Type)
    {
        public bool Matches(GgufTensorCategory c, in Ctx x) =>
            Array.IndexOf(Categories, c) >= 0 && (FileTypes.Length == 0 || Array.IndexOf(FileTypes, x.FileType) >= 0) && (When == null || When(x));
    }

    private static Rule R(GgufTensorCategory[] cats, GgufFileType[] fts, Func<Ctx, bool>? when, GgmlType type) => new(cats, fts, when, _ => type);
    private static Rule R(GgufTensorCategory[] cats, GgufFileType[] fts, Func<Ctx, bool>? when, Func<Ctx, GgmlType> type) => new(cats, fts, when, type);

    private static readonly GgufTensorCategory[] OutputCat = [GgufTensorCategory.Output];
    private static readonly GgufTensorCategory[] AttnVCats = [GgufTensorCategory.AttentionV, GgufTensorCategory.AttentionQkv, GgufTensorCategory.AttentionKvB];
    private static readonly GgufTensorCategory[] AttnKCat = [GgufTensorCategory.AttentionK];
    private static readonly GgufTensorCategory[] FfnDownCat = [GgufTensorCategory.FfnDown];
    private static readonly GgufTensorCategory[] AttnOutCat = [GgufTensorCategory.AttentionOutput];
    private static readonly GgufFileType[] Any = [];

    private static GgufFileType[] F(params GgufFileType[] fts) => fts;

    // llama_tensor_get_type_impl's branches for these file types, in its order. A later override in the C++ (the
    // 8-expert bump of attention V to Q8_0 after the file-type chain) is the first row here, which is the same.
    // Its ATTENTION_QKV branch is unreachable (the attention-V branch before it takes QKV) and is left out.
    private static readonly Rule[] Rules =
    [
        // output.weight, and token_embd with tied embeddings: Q6_K unless the file is Q8_0 or its rows are not whole default blocks
        R(OutputCat, Any, x => x.OutputType != null, x => x.OutputType!.Value),
        R(OutputCat, Any, x => x.Ne0 % GgmlTypeInfo.BlockSize(x.Default) != 0, GgmlType.Q8_0),
        R(OutputCat, Any, x => x.Default != GgmlType.Q8_0, GgmlType.Q6_K),

        R(AttnVCats, Any, x => x.Model.ExpertCount == 8, GgmlType.Q8_0),
        R(AttnVCats, F(GgufFileType.MostlyQ2_K), null, x => x.Model.Gqa >= 4 ? GgmlType.Q4_K : GgmlType.Q3_K),
        R(AttnVCats, F(GgufFileType.MostlyQ3_K_M), null, x => x.AttnV < 2 ? GgmlType.Q5_K : GgmlType.Q4_K),
        R(AttnVCats, F(GgufFileType.MostlyQ3_K_L), null, GgmlType.Q5_K),
        R(AttnVCats, F(GgufFileType.MostlyIQ4_NL, GgufFileType.MostlyIQ4_XS), x => x.Model.Gqa >= 4, GgmlType.Q5_K),
        R(AttnVCats, F(GgufFileType.MostlyQ4_K_M, GgufFileType.MostlyQ5_K_M), x => UseMoreBits(x.AttnV, x.AttnVCount), GgmlType.Q6_K),
        R(AttnVCats, F(GgufFileType.MostlyQ4_K_S), x => x.AttnV < 4, GgmlType.Q5_K),

        R(AttnKCat, Any, x => x.Model.ExpertCount == 8, GgmlType.Q8_0),

        R(FfnDownCat, F(GgufFileType.MostlyQ2_K), null, GgmlType.Q3_K),
        R(FfnDownCat, F(GgufFileType.MostlyQ3_K_M), null, x => x.Layer < x.Layers / 16 ? GgmlType.Q5_K : GgmlType.Q4_K),
        R(FfnDownCat, F(GgufFileType.MostlyQ3_K_L), null, GgmlType.Q5_K),
        R(FfnDownCat, F(GgufFileType.MostlyQ4_K_M), x => UseMoreBits(x.Layer, x.Layers), GgmlType.Q6_K),
        R(FfnDownCat, F(GgufFileType.MostlyIQ4_NL, GgufFileType.MostlyIQ4_XS), x => x.Layer < x.Layers / 8 && !x.HasImatrix, GgmlType.Q5_K),
        R(FfnDownCat, F(GgufFileType.MostlyQ5_K_M), x => UseMoreBits(x.Layer, x.Layers), GgmlType.Q6_K),
        R(FfnDownCat, F(GgufFileType.MostlyQ4_K_S), x => x.Layer < x.Layers / 8, GgmlType.Q5_K),
        R(FfnDownCat, F(GgufFileType.MostlyQ4_0), x => x.HasImatrix && x.Layer < x.Layers / 8, GgmlType.Q4_1),
        R(FfnDownCat, F(GgufFileType.MostlyQ5_0), x => x.HasImatrix && x.Layer < x.Layers / 8, GgmlType.Q5_1),

        // Mixtral's rule, which llama.cpp applies to any model with exactly 8 experts
        R(AttnOutCat, F(GgufFileType.MostlyQ2_K, GgufFileType.MostlyQ3_K_S, GgufFileType.MostlyQ3_K_M, GgufFileType.MostlyIQ4_NL,
            GgufFileType.MostlyQ4_K_S, GgufFileType.MostlyQ4_K_M, GgufFileType.MostlyIQ4_XS), x => x.Model.ExpertCount == 8, GgmlType.Q5_K),
        R(AttnOutCat, F(GgufFileType.MostlyQ2_K), x => x.Model.ExpertCount != 8, GgmlType.Q3_K),
        R(AttnOutCat, F(GgufFileType.MostlyQ3_K_M), x => x.Model.ExpertCount != 8, GgmlType.Q4_K),
        R(AttnOutCat, F(GgufFileType.MostlyQ3_K_L), x => x.Model.ExpertCount != 8, GgmlType.Q5_K),
    ];

    /// <summary>
    /// The ggml type of every tensor (null: llama-quantize does not quantize it, it keeps its type), in the order
    /// given. Counters (the attention-V index) advance in llama.cpp's tensor order: by layer, then by name.
    /// </summary>
    /// <exception cref="NotSupportedException">A type the rules give that no fallback makes fit (an
    /// <c>--output-type</c> or <c>--token-embedding-type</c> whose blocks do not divide the rows).</exception>
    public static GgmlType?[] Choose(GgufQuantization q, GgufModelFacts model, IReadOnlyList<(string Name, long[] Dimensions)> tensors)
    {
        var order = Enumerable.Range(0, tensors.Count).ToArray();
        Array.Sort(order, (a, b) => LlamaOrder(tensors[a].Name, tensors[b].Name));
        bool tied = !tensors.Any(t => t.Name == "output.weight");
        int attnVCount = tensors.Count(t => IsAttnV(Category(t.Name)));
        int attnV = 0, ffnDown = 0;
        var result = new GgmlType?[tensors.Count];
        foreach (int i in order)
        {
            var (name, dims) = tensors[i];
            if (!AllowsQuantization(name, dims)) continue;
            var category = Category(name);
            if (q.TokenEmbeddingType is { } te && category == GgufTensorCategory.TokenEmbd) { result[i] = Fits(name, dims, te); continue; }
            if (q.OutputType is { } ot && category == GgufTensorCategory.Output) { result[i] = Fits(name, dims, ot); continue; }
            var type = q.DefaultType;
            if (GgufFileTypes.IsQuantized(type))
            {
                bool manual = false;
                foreach (var o in q.Overrides)
                    if (o.Pattern.IsMatch(name)) { type = o.Type; manual = true; break; }
                if (!manual && !q.Pure)
                {
                    if (tied && category == GgufTensorCategory.TokenEmbd) category = GgufTensorCategory.Output;
                    int layer = category == GgufTensorCategory.FfnDown ? LayerForFfn(name, ffnDown, model) : -1;
                    var x = new Ctx(q.FileType, type, dims[0], layer, attnV, attnVCount, model, q.HasImatrix, q.OutputType);
                    foreach (var rule in Rules)
                        if (rule.Matches(category, x)) { type = rule.Type(x); break; }
                    if (IsAttnV(category)) attnV++;
                    if (category == GgufTensorCategory.FfnDown) ffnDown++;
                }
                type = Fallback(type, dims[0]);
            }
            result[i] = type;
        }
        return result;
    }

    /// <summary>tensor_type_fallback: a type whose blocks do not divide the rows becomes the nearest 32-block type
    /// (IQ4_XS to IQ4_NL, Q2_K/Q3_K to Q4_0, Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0), F16 where that does not fit either.</summary>
    public static GgmlType Fallback(GgmlType type, long ne0)
    {
        int block = GgmlTypeInfo.BlockSize(type);
        if (ne0 % block == 0) return type;
        var to = type switch
        {
            GgmlType.IQ4_XS => GgmlType.IQ4_NL,
            GgmlType.Q2_K or GgmlType.Q3_K => GgmlType.Q4_0,
            GgmlType.Q4_K => GgmlType.Q5_0,
            GgmlType.Q5_K => GgmlType.Q5_1,
            GgmlType.Q6_K => GgmlType.Q8_0,
            _ when block <= 32 => type,
            _ => throw new NotSupportedException($"no fallback for ggml type {type} (rows of {ne0})"),
        };
        return ne0 % GgmlTypeInfo.BlockSize(to) == 0 ? to : GgmlType.F16;
    }

    /// <summary>weight_name_comparer of llama-model-loader.h: non-block tensors first, then by block, then by name.</summary>
    public static int LlamaOrder(string a, string b)
    {
        int la = LayerOf(a) ?? -1, lb = LayerOf(b) ?? -1;
        return la != lb ? la.CompareTo(lb) : string.CompareOrdinal(a, b);
    }

    /// <summary>The block index of a <c>blk.N.*</c> tensor name, or null.</summary>
    public static int? LayerOf(string name)
    {
        if (!name.StartsWith("blk.", StringComparison.Ordinal)) return null;
        int end = name.IndexOf('.', 4);
        return end > 4 && int.TryParse(name.AsSpan(4, end - 4), out int layer) ? layer : null;
    }

    // layer_info: with experts the layer comes from the name (Mixtral's expert tensors are not in layer order), else the counter
    private static int LayerForFfn(string name, int counter, GgufModelFacts model)
    {
        if (Math.Max(1, model.ExpertCount) <= 1) return counter;
        int layer = LayerOf(name) ?? throw new InvalidDataException($"tensor '{name}': no block index for llama-quantize's layer rules");
        if (layer >= model.BlockCount)
            throw new InvalidDataException($"tensor '{name}': block {layer} is outside the {model.BlockCount} blocks llama-quantize's rules count");
        return layer;
    }

    private static GgmlType Fits(string name, long[] dims, GgmlType type) => dims[0] % GgmlTypeInfo.BlockSize(type) == 0 ? type
        : throw new NotSupportedException($"tensor '{name}': rows of {dims[0]} are not whole {type} blocks of {GgmlTypeInfo.BlockSize(type)}");
}
