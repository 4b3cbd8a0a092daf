namespace Converter.Tensors;

/// <summary>Element types a checkpoint tensor may hold (the safetensors dtype set).</summary>
/// <remarks><see cref="F8_E8M0"/> is the OCP MX / torch <c>float8_e8m0fnu</c> exponent byte (value 2^(code-127)), the
/// dtype of DeepSeek-V4's <c>.scale</c> tensors.</remarks>
public enum DType
{
    F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL, F8_E8M0,
}

public static class DTypeInfo
{
    public static int SizeOf(DType t) => t switch
    {
        DType.F64 or DType.I64 => 8,
        DType.F32 or DType.I32 => 4,
        DType.F16 or DType.BF16 or DType.I16 => 2,
        DType.F8_E4M3 or DType.F8_E5M2 or DType.F8_E8M0 or DType.I8 or DType.U8 or DType.BOOL => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, null),
    };

    /// <summary>The safetensors header spelling of a dtype.</summary>
    public static string ToSafetensorsName(DType t) => t.ToString();

    public static bool TryParseSafetensorsName(string name, out DType t)
    {
        switch (name)
        {
            case "F64": t = DType.F64; return true;
            case "F32": t = DType.F32; return true;
            case "F16": t = DType.F16; return true;
            case "BF16": t = DType.BF16; return true;
            case "F8_E4M3": t = DType.F8_E4M3; return true;
            case "F8_E5M2": t = DType.F8_E5M2; return true;
            case "F8_E8M0": t = DType.F8_E8M0; return true;
            case "I64": t = DType.I64; return true;
            case "I32": t = DType.I32; return true;
            case "I16": t = DType.I16; return true;
            case "I8": t = DType.I8; return true;
            case "U8": t = DType.U8; return true;
            case "BOOL": t = DType.BOOL; return true;
            default: t = default; return false;
        }
    }

    /// <summary>Floating-point element types (E8M0 exponent bytes are scales, not values: not included).</summary>
    public static bool IsFloat(DType t) => t is DType.F64 or DType.F32 or DType.F16 or DType.BF16 or DType.F8_E4M3 or DType.F8_E5M2;

    /// <summary>The rank of a dtype in huggingface safetensors' own dtype enum, whose descending order (then the name)
    /// is the order <c>save_file</c> lays tensors out in.</summary>
    public static int SafetensorsRank(DType t) => t switch
    {
        DType.BOOL => 0, DType.U8 => 4, DType.I8 => 5, DType.F8_E5M2 => 6, DType.F8_E4M3 => 7, DType.F8_E8M0 => 8,
        DType.I16 => 9, DType.F16 => 11, DType.BF16 => 12, DType.I32 => 13, DType.F32 => 15, DType.F64 => 17, DType.I64 => 18,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, null),
    };
}
