using Converter.Numerics.Ggml;

namespace Converter.Models;

/// <summary>llama.cpp's <c>general.file_type</c> values (enum llama_ftype in llama.h) for the file types the exporter
/// writes.</summary>
public enum GgufFileType : uint
{
    AllF32 = 0, MostlyF16 = 1, MostlyQ4_0 = 2, MostlyQ4_1 = 3, MostlyQ8_0 = 7, MostlyQ5_0 = 8, MostlyQ5_1 = 9,
    MostlyQ2_K = 10, MostlyQ3_K_S = 11, MostlyQ3_K_M = 12, MostlyQ3_K_L = 13, MostlyQ4_K_S = 14, MostlyQ4_K_M = 15,
    MostlyQ5_K_S = 16, MostlyQ5_K_M = 17, MostlyQ6_K = 18, MostlyIQ4_NL = 25, MostlyIQ4_XS = 30, MostlyBF16 = 32,
    MostlyMXFP4_MOE = 38,
}

/// <summary>The names <c>export gguf --type</c> accepts (any case) and what each file type starts from.</summary>
public static class GgufFileTypes
{
    /// <summary>A type name: the llama.cpp file type it writes, and whether every quantizable weight gets the file
    /// type's default ggml type (llama-quantize <c>--pure</c>: no per-tensor rules, the whole-block fallback still).</summary>
    public readonly record struct Entry(string Name, GgufFileType FileType, bool Pure, string Description);

    /// <summary>In llama-quantize's order of precision. <c>q4_k</c>/<c>q5_k</c> are this tool's all-Q4_K / all-Q5_K
    /// files (llama-quantize names them Q4_K_S/Q5_K_S with <c>--pure</c>; its own Q4_K/Q5_K are aliases of the _M mixes).</summary>
    public static readonly IReadOnlyList<Entry> All =
    [
        new("f32", GgufFileType.AllF32, false, "every weight f32"),
        new("f16", GgufFileType.MostlyF16, false, "weights f16"),
        new("bf16", GgufFileType.MostlyBF16, false, "weights bf16"),
        new("q8_0", GgufFileType.MostlyQ8_0, false, "weights q8_0"),
        new("q6_k", GgufFileType.MostlyQ6_K, false, "llama-quantize Q6_K"),
        new("q5_k_m", GgufFileType.MostlyQ5_K_M, false, "llama-quantize Q5_K_M"),
        new("q5_k_s", GgufFileType.MostlyQ5_K_S, false, "llama-quantize Q5_K_S"),
        new("q5_k", GgufFileType.MostlyQ5_K_S, true, "every quantizable weight q5_k (llama-quantize Q5_K_S --pure)"),
        new("q5_1", GgufFileType.MostlyQ5_1, false, "llama-quantize Q5_1"),
        new("q5_0", GgufFileType.MostlyQ5_0, false, "llama-quantize Q5_0"),
        new("q4_k_m", GgufFileType.MostlyQ4_K_M, false, "llama-quantize Q4_K_M"),
        new("q4_k_s", GgufFileType.MostlyQ4_K_S, false, "llama-quantize Q4_K_S"),
        new("q4_k", GgufFileType.MostlyQ4_K_S, true, "every quantizable weight q4_k (llama-quantize Q4_K_S --pure)"),
        new("iq4_nl", GgufFileType.MostlyIQ4_NL, false, "llama-quantize IQ4_NL"),
        new("q4_0", GgufFileType.MostlyQ4_0, false, "llama-quantize Q4_0"),
        new("iq4_xs", GgufFileType.MostlyIQ4_XS, false, "llama-quantize IQ4_XS"),
        new("q3_k_l", GgufFileType.MostlyQ3_K_L, false, "llama-quantize Q3_K_L"),
        new("q3_k_m", GgufFileType.MostlyQ3_K_M, false, "llama-quantize Q3_K_M"),
        new("q3_k_s", GgufFileType.MostlyQ3_K_S, false, "llama-quantize Q3_K_S"),
        new("q2_k", GgufFileType.MostlyQ2_K, false, "llama-quantize Q2_K"),
        new("mxfp4_moe", GgufFileType.MostlyMXFP4_MOE, false,
            "what llama.cpp's converter writes from block-scaled checkpoints: routed experts mxfp4, FP8 weights q8_0, the rest as stored"),
    ];

    /// <summary>The entry of a type name in any case, or null.</summary>
    public static Entry? Find(string name)
    {
        foreach (var e in All)
            if (string.Equals(e.Name, name, StringComparison.OrdinalIgnoreCase)) return e;
        return null;
    }

    /// <summary>The names, for usage messages.</summary>
    public static string Names => string.Join(", ", All.Select(e => e.Name));

    /// <summary>llama_ftype_get_default_type: the ggml type a file type gives every quantizable weight before its rules.</summary>
    public static GgmlType DefaultType(GgufFileType fileType) => fileType switch
    {
        GgufFileType.AllF32 => GgmlType.F32,
        GgufFileType.MostlyF16 => GgmlType.F16,
        GgufFileType.MostlyBF16 => GgmlType.BF16,
        GgufFileType.MostlyQ4_0 => GgmlType.Q4_0,
        GgufFileType.MostlyQ4_1 => GgmlType.Q4_1,
        GgufFileType.MostlyQ5_0 => GgmlType.Q5_0,
        GgufFileType.MostlyQ5_1 => GgmlType.Q5_1,
        GgufFileType.MostlyQ8_0 => GgmlType.Q8_0,
        GgufFileType.MostlyQ2_K => GgmlType.Q2_K,
        GgufFileType.MostlyQ3_K_S or GgufFileType.MostlyQ3_K_M or GgufFileType.MostlyQ3_K_L => GgmlType.Q3_K,
        GgufFileType.MostlyQ4_K_S or GgufFileType.MostlyQ4_K_M => GgmlType.Q4_K,
        GgufFileType.MostlyQ5_K_S or GgufFileType.MostlyQ5_K_M => GgmlType.Q5_K,
        GgufFileType.MostlyQ6_K => GgmlType.Q6_K,
        GgufFileType.MostlyIQ4_NL => GgmlType.IQ4_NL,
        GgufFileType.MostlyIQ4_XS => GgmlType.IQ4_XS,
        GgufFileType.MostlyMXFP4_MOE => GgmlType.MXFP4,
        _ => throw new ArgumentOutOfRangeException(nameof(fileType), fileType, "not a file type this exporter writes"),
    };

    /// <summary>ggml_is_quantized: block types (llama-quantize applies its rules and fallbacks only to these).</summary>
    public static bool IsQuantized(GgmlType type) => GgmlTypeInfo.BlockSize(type) > 1;

    /// <summary>Float and block types a weight can be stored in (not the integer tables, F64 or the dot-product-only Q8_1/Q8_K).</summary>
    private static bool IsStorageType(GgmlType t) => GgmlTypeInfo.IsKnown(t)
        && t is not (GgmlType.I8 or GgmlType.I16 or GgmlType.I32 or GgmlType.I64 or GgmlType.F64 or GgmlType.Q8_1 or GgmlType.Q8_K);

    /// <summary>A ggml type name in any case (<c>q6_k</c>, <c>Q5_0</c>, <c>iq4_xs</c>), for <c>--tensor-type</c> and
    /// <c>--output-type</c>; null when unknown.</summary>
    public static GgmlType? ParseGgmlType(string name)
    {
        foreach (var t in Enum.GetValues<GgmlType>())
            if (string.Equals(t.ToString(), name, StringComparison.OrdinalIgnoreCase) && IsStorageType(t)) return t;
        return null;
    }
}
