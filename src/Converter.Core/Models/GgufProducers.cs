namespace Converter.Models;

/// <summary>The tensor producers GGUF maps share: a 2-D weight as it is, and stacked per-expert weights.</summary>
public static class GgufProducers
{
    /// <summary>A 2-D weight as it is, in slabs of whole 128-row blocks, so a huge embedding never sits in memory whole.</summary>
    public static GgufTensorProducer Copy(string src) => (source, write) =>
    {
        long rows = source.Rows(src), cols = source.ElementCount(src) / Math.Max(1, rows);
        long slabRows = Math.Max(128, source.SlabValues / Math.Max(1, cols) / 128 * 128);
        if (rows <= slabRows)
        {
            write(source.Read(src));
            return;
        }
        var buffer = new float[checked((int)(slabRows * cols))];
        for (long r0 = 0; r0 < rows; r0 += slabRows)
        {
            var slab = buffer.AsSpan(0, (int)(Math.Min(slabRows, rows - r0) * cols));
            source.ReadRows(src, r0, slab);
            write(slab);
        }
    };

    /// <summary>A 3-D tensor whose e-th [rows, cols] slab is <paramref name="sources"/>[e], written one expert at a time.</summary>
    public static GgufTensorProducer Stack(IReadOnlyList<string> sources) => (source, write) =>
    {
        foreach (var s in sources) write(source.Read(s));
    };
}
