namespace Converter.Numerics.Ggml;

/// <summary>ggml tensor types (the numeric values are the on-disk GGUF type ids).</summary>
/// <remarks>
/// <see cref="GgmlQuantizer"/> converts to and from F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K,
/// Q5_K, Q6_K, IQ4_NL, IQ4_XS and MXFP4; the other
/// members exist so that a GGUF reader can size and skip tensors of those types.
/// </remarks>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ4_NL = 20,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    BF16 = 30,
    MXFP4 = 39,
}

/// <summary>Block geometry of the ggml types (ggml-common.h).</summary>
public static class GgmlTypeInfo
{
    /// <summary>Super-block size of the k-quants.</summary>
    public const int QK_K = 256;

    /// <summary>True when the type's block size and byte size are known.</summary>
    public static bool IsKnown(GgmlType type) => TryGetLayout(type, out _, out _);

    /// <summary>True when <see cref="GgmlQuantizer"/> can produce and decode the type.</summary>
    public static bool CanQuantize(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0
        or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K
        or GgmlType.IQ4_NL or GgmlType.IQ4_XS or GgmlType.MXFP4;

    /// <summary>Number of values in one block (1 for plain types).</summary>
    public static int BlockSize(GgmlType type) =>
        TryGetLayout(type, out int block, out _) ? block : throw Unknown(type);

    /// <summary>Bytes of one block.</summary>
    public static int BytesPerBlock(GgmlType type) =>
        TryGetLayout(type, out _, out int bytes) ? bytes : throw Unknown(type);

    /// <summary>Bytes holding <paramref name="values"/> values, which must be a multiple of the block size.</summary>
    public static long ByteSize(GgmlType type, long values)
    {
        if (!TryGetLayout(type, out int block, out int bytes)) throw Unknown(type);
        if (values < 0 || values % block != 0)
            throw new ArgumentException($"{values} values is not a multiple of the {type} block size {block}", nameof(values));
        return checked(values / block * bytes);
    }

    public static bool TryGetLayout(GgmlType type, out int blockSize, out int bytesPerBlock)
    {
        (blockSize, bytesPerBlock) = type switch
        {
            GgmlType.F32 => (1, 4),
            GgmlType.F16 => (1, 2),
            GgmlType.BF16 => (1, 2),
            GgmlType.Q4_0 => (32, 18),
            GgmlType.Q4_1 => (32, 20),
            GgmlType.Q5_0 => (32, 22),
            GgmlType.Q5_1 => (32, 24),
            GgmlType.Q8_0 => (32, 34),
            GgmlType.Q8_1 => (32, 36),
            GgmlType.Q2_K => (QK_K, 84),
            GgmlType.Q3_K => (QK_K, 110),
            GgmlType.Q4_K => (QK_K, 144),
            GgmlType.Q5_K => (QK_K, 176),
            GgmlType.Q6_K => (QK_K, 210),
            GgmlType.Q8_K => (QK_K, 292),
            GgmlType.IQ4_NL => (32, 18),
            GgmlType.IQ4_XS => (QK_K, 136),
            GgmlType.I8 => (1, 1),
            GgmlType.I16 => (1, 2),
            GgmlType.I32 => (1, 4),
            GgmlType.I64 => (1, 8),
            GgmlType.F64 => (1, 8),
            GgmlType.MXFP4 => (32, 17),
            _ => (0, 0),
        };
        return blockSize != 0;
    }

    private static ArgumentException Unknown(GgmlType type) =>
        new($"ggml type {(uint)type} has no known block layout", nameof(type));
}
