using Converter.Numerics.Ggml;

namespace Converter.Formats.Gguf;

/// <summary>Constants and shared checks of the GGUF container (ggml's gguf.cpp is the reference loader).</summary>
public static class GgufFormat
{
    /// <summary>"GGUF" as a little-endian u32.</summary>
    public const uint Magic = 0x46554747;
    public const uint Version = 3;
    public const uint DefaultAlignment = 32;
    public const string AlignmentKey = "general.alignment";

    /// <summary>ggml's GGML_MAX_DIMS.</summary>
    public const int MaxDimensions = 4;

    /// <summary>ggml's GGML_MAX_NAME: names must be shorter (it counts the terminator).</summary>
    public const int MaxNameBytes = 64;

    public static long AlignUp(long value, uint alignment) => (value + alignment - 1) / alignment * alignment;

    internal static bool IsValidAlignment(uint a) => a != 0 && (a & (a - 1)) == 0;

    /// <summary>Element count and byte size of a tensor, or an error message.</summary>
    internal static string? TrySize(ReadOnlySpan<long> dims, GgmlType type, out long elements, out long bytes)
    {
        elements = 0;
        bytes = 0;
        if (dims.Length is < 1 or > MaxDimensions) return $"{dims.Length} dimensions (1 to {MaxDimensions} allowed)";
        if (!GgmlTypeInfo.TryGetLayout(type, out int block, out int blockBytes)) return $"unknown ggml type {(uint)type}";
        long n = 1;
        foreach (long d in dims)
        {
            if (d < 0) return $"negative dimension {d}";
            if (d != 0 && n > long.MaxValue / d) return "element count overflows";
            n *= d;
        }
        if (dims[0] % block != 0) return $"innermost dimension {dims[0]} is not a multiple of the {type} block size {block}";
        if (n / block > long.MaxValue / blockBytes) return "byte size overflows";
        elements = n;
        bytes = n / block * blockBytes;
        return null;
    }
}
