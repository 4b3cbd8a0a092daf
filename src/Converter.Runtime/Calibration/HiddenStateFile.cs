using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Converter.Runtime.Calibration;

/// <summary>
/// float32 rows [tokens, hidden] on disk: the hidden state handed from one layer slice to the next during layer-by-layer
/// calibration. At real width a calibration set is GBs of activations (65,536 tokens x 7168 x 4 B = 1.9 GB), so it is
/// streamed batch by batch instead of held; the page cache keeps it in memory when there is room. Deleted on dispose.
/// </summary>
internal sealed class HiddenStateFile : IDisposable
{
    private readonly SafeFileHandle _file;
    private readonly int _hidden;

    public string Path { get; }

    public HiddenStateFile(string path, long tokens, int hidden)
    {
        Path = path;
        _hidden = hidden;
        _file = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose, tokens * hidden * sizeof(float));
    }

    public void Write(long firstRow, ReadOnlySpan<float> rows) =>
        RandomAccess.Write(_file, MemoryMarshal.AsBytes(rows), firstRow * _hidden * sizeof(float));

    public float[] Read(long firstRow, int rows)
    {
        var dst = GC.AllocateUninitializedArray<float>(rows * _hidden);
        var bytes = MemoryMarshal.AsBytes(dst.AsSpan());
        long offset = firstRow * _hidden * sizeof(float);
        for (int done = 0; done < bytes.Length;)
        {
            int n = RandomAccess.Read(_file, bytes[done..], offset + done);
            if (n <= 0) throw new EndOfStreamException($"{Path}: rows {firstRow}..{firstRow + rows - 1} were never written");
            done += n;
        }
        return dst;
    }

    public void Dispose() => _file.Dispose();
}
