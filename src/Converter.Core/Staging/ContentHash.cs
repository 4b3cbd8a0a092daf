using System.Buffers;
using System.IO.Hashing;
using Microsoft.Win32.SafeHandles;

namespace Converter.Staging;

/// <summary>
/// XXH3-64 (seed 0, what <c>xxhsum -H3</c> prints) of files and file ranges, read back in 4 MiB pieces. Chosen over
/// SHA-256 for manifests and journals: 8x faster here (BENCHMARKS.md), and what it guards against is truncation and
/// corruption, not tampering.
/// </summary>
public static class ContentHash
{
    public const string Algorithm = "xxh3-64";
    private const int Piece = 4 << 20;

    public static string OfFile(string path, CancellationToken cancellation = default)
    {
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
        return OfRange(handle, 0, RandomAccess.GetLength(handle), path, cancellation);
    }

    public static string OfRange(string path, long offset, long length, CancellationToken cancellation = default)
    {
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        return OfRange(handle, offset, length, path, cancellation);
    }

    public static string OfRange(SafeFileHandle handle, long offset, long length, string path, CancellationToken cancellation = default)
    {
        var hash = new XxHash3();
        var buffer = ArrayPool<byte>.Shared.Rent(Piece);
        try
        {
            for (long done = 0; done < length;)
            {
                cancellation.ThrowIfCancellationRequested();
                int n = RandomAccess.Read(handle, buffer.AsSpan(0, (int)Math.Min(Piece, length - done)), offset + done);
                if (n <= 0) throw new InvalidDataException($"{path}: ends at {offset + done}, before the {length} bytes to hash");
                hash.Append(buffer.AsSpan(0, n));
                done += n;
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
        return Convert.ToHexStringLower(hash.GetCurrentHash());
    }
}
