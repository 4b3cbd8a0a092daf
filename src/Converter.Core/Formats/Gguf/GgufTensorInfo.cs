using Converter.Numerics.Ggml;

namespace Converter.Formats.Gguf;

/// <summary>
/// A tensor's entry in a GGUF header. <see cref="Dimensions"/> are ggml's ne[], innermost (contiguous) first:
/// a row-major PyTorch [out, in] weight is [in, out] here with the same bytes.
/// </summary>
public sealed class GgufTensorInfo
{
    public string Name { get; }
    public IReadOnlyList<long> Dimensions { get; }
    public GgmlType Type { get; }

    /// <summary>Byte offset from the start of the data section.</summary>
    public long Offset { get; }

    public long ElementCount { get; }
    public long ByteSize { get; }

    internal GgufTensorInfo(string name, long[] dimensions, GgmlType type, long offset, long elementCount, long byteSize)
    {
        Name = name;
        Dimensions = dimensions;
        Type = type;
        Offset = offset;
        ElementCount = elementCount;
        ByteSize = byteSize;
    }

    public override string ToString() => $"{Name} {Type} [{string.Join(", ", Dimensions)}] @{Offset}";
}
