using Converter.Numerics.Ggml;

namespace Converter.Models;

/// <summary>llama.cpp's <c>general.file_type</c> values (enum llama_ftype) for the schemes the exporter writes.</summary>
public enum GgufFileType : uint
{
    AllF32 = 0, MostlyF16 = 1, MostlyQ4_0 = 2, MostlyQ8_0 = 7, MostlyQ4_K_S = 14, MostlyQ4_K_M = 15,
    MostlyQ5_K_S = 16, MostlyQ6_K = 18, MostlyBF16 = 32, MostlyMXFP4_MOE = 38,
}

/// <summary>
/// What ggml type each GGUF weight gets. <see cref="Uniform"/>: one type for every weight (norms, router and
/// biases stay F32; rows that are not whole blocks fall back). <see cref="Q4_K_M"/>: llama.cpp's Q4_K_M mix as
/// <c>llama_tensor_get_type</c> (src/llama-quant.cpp) picks it without an importance matrix, so the result matches
/// what <c>llama-quantize F32.gguf Q4_K_M</c> would choose for the same tensors:
/// <list type="bullet">
/// <item><c>output.weight</c>: Q6_K (Q8_0 where its rows are not whole 256-blocks).</item>
/// <item>every tensor whose name contains <c>ffn_down</c> (dense, <c>ffn_down_exps</c>, <c>ffn_down_shexp</c>) in a
/// layer i of n where <c>i &lt; n/8 || i &gt;= 7n/8 || (i - n/8) % 3 == 2</c> ("use_more_bits"): Q6_K.</item>
/// <item>attention-V-like tensors (<c>attn_v</c>, <c>attn_qkv</c>, <c>attn_kv_b</c>) get Q6_K on the same rule counted
/// over those tensors, but deepseek2 files have none of them (MLA's kv_b is split into <c>attn_k_b</c>/<c>attn_v_b</c>,
/// which llama.cpp's name match does not catch), so none is raised here either.</item>
/// <item><c>attn_output</c> Q5_K when the model has exactly 8 routed experts (llama.cpp's Mixtral rule, which it
/// applies to any architecture).</item>
/// <item>everything else, token_embd included: Q4_K.</item>
/// </list>
/// Fallbacks for rows that are not whole blocks: llama.cpp takes Q4_K to Q5_0 and Q6_K to Q8_0; this exporter has no
/// Q5_0 quantizer and takes both to Q8_0 (then F16, then F32), a deliberate difference that costs bits, not accuracy.
/// </summary>
/// <remarks><see cref="Mxfp4Moe"/>: what llama.cpp's own converter writes from a checkpoint with block-scaled weights
/// (its <c>MOSTLY_MXFP4_MOE</c> file type), decided by how each source is stored: routed experts MXFP4 (FP4 e2m1 + E8M0
/// experts repacked bit for bit, other experts quantized with ggml's quantize_row_mxfp4_ref), FP8-stored weights Q8_0
/// (F16 where a row is not whole 32-value blocks), 1-D tensors and norms F32, other BF16 / F16 / F32 tensors as stored,
/// integer tables in their fixed type.</remarks>
public enum GgufTypeScheme { Uniform, Q4_K_M, Mxfp4Moe }

public static class GgufTypePolicy
{
    /// <summary>llama.cpp's layer rule for the mixes' extra bits: the first and last eighth and every third layer between.</summary>
    public static bool UseMoreBits(int layer, int layers) =>
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;

    /// <summary>The type the scheme asks for (before the whole-block fallback) of a quantizable weight.</summary>
    /// <param name="expertCount">Routed experts per MoE layer (0 for a dense model).</param>
    public static GgmlType Requested(GgufTypeScheme scheme, GgmlType uniform, string name, int blockCount, int expertCount = 0)
    {
        if (scheme == GgufTypeScheme.Uniform) return uniform;
        if (name == "output.weight") return GgmlType.Q6_K;
        if (expertCount == 8 && name.Contains("attn_output.weight", StringComparison.Ordinal)) return GgmlType.Q5_K;
        if (name.Contains("ffn_down", StringComparison.Ordinal) && LayerOf(name) is { } layer && UseMoreBits(layer, blockCount))
            return GgmlType.Q6_K;
        return GgmlType.Q4_K;
    }

    /// <summary>The file_type key for a scheme: q4_k uniform is written as Q4_K_S (what <c>llama-quantize --pure</c> names it).</summary>
    public static GgufFileType FileType(GgufTypeScheme scheme, GgmlType uniform) => scheme == GgufTypeScheme.Q4_K_M
        ? GgufFileType.MostlyQ4_K_M
        : scheme == GgufTypeScheme.Mxfp4Moe ? GgufFileType.MostlyMXFP4_MOE
        : uniform switch
        {
            GgmlType.F32 => GgufFileType.AllF32,
            GgmlType.F16 => GgufFileType.MostlyF16,
            GgmlType.BF16 => GgufFileType.MostlyBF16,
            GgmlType.Q8_0 => GgufFileType.MostlyQ8_0,
            GgmlType.Q4_0 => GgufFileType.MostlyQ4_0,
            GgmlType.Q4_K => GgufFileType.MostlyQ4_K_S,
            GgmlType.Q5_K => GgufFileType.MostlyQ5_K_S,
            GgmlType.Q6_K => GgufFileType.MostlyQ6_K,
            _ => throw new NotSupportedException($"no llama.cpp file type for uniform {uniform}"),
        };

    /// <summary>The block index of a <c>blk.N.*</c> tensor name, or null.</summary>
    public static int? LayerOf(string name)
    {
        if (!name.StartsWith("blk.", StringComparison.Ordinal)) return null;
        int end = name.IndexOf('.', 4);
        return end > 4 && int.TryParse(name.AsSpan(4, end - 4), out int layer) ? layer : null;
    }
}
