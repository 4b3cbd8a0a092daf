namespace Converter.Tensors;

/// <summary>Where a tensor lives: its file, its dtype and shape, and its byte range in that file.</summary>
public sealed record TensorInfo(string Name, DType DType, long[] Shape, string File, long FileOffset, long ByteLength)
{
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Shape) n *= d;
            return n;
        }
    }

    /// <summary>Rows and columns of a 2-D weight ([out, in] in PyTorch order).</summary>
    public (int Rows, int Cols) Matrix => Shape.Length == 2
        ? (checked((int)Shape[0]), checked((int)Shape[1]))
        : throw new InvalidOperationException($"{Name} is not a 2-D tensor (shape [{string.Join(", ", Shape)}])");

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}
