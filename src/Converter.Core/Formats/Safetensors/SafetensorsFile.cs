using System.IO.MemoryMappedFiles;
using Converter.Tensors;

namespace Converter.Formats.Safetensors;

/// <summary>One validated .safetensors file, memory-mapped; tensors are mapped lazily one at a time.</summary>
public sealed class SafetensorsFile : IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly Dictionary<string, TensorInfo> _byName;

    public string Path { get; }
    public IReadOnlyList<TensorInfo> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public long Length { get; }

    private SafetensorsFile(string path, MemoryMappedFile? map, IReadOnlyList<TensorInfo> tensors, IReadOnlyDictionary<string, string> metadata, long length)
    {
        Path = path;
        _map = map;
        Tensors = tensors;
        Metadata = metadata;
        Length = length;
        _byName = new Dictionary<string, TensorInfo>(tensors.Count, StringComparer.Ordinal);
        foreach (var t in tensors) _byName[t.Name] = t;
    }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: file not found", path);
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.None);
        long length = fs.Length;
        var (tensors, meta, _) = SafetensorsHeader.Read(path, fs, length);
        // A zero-length mapping is an error on Linux; a header-only file has nothing to map.
        var map = tensors.Any(t => t.ByteLength > 0)
            ? MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read)
            : null;
        return new SafetensorsFile(path, map, tensors, meta, length);
    }

    public bool Contains(string name) => _byName.ContainsKey(name);

    public TensorInfo Info(string name) => _byName.TryGetValue(name, out var t)
        ? t : throw new KeyNotFoundException($"{Path}: no tensor '{name}'");

    public TensorData Read(string name) => Read(Info(name));

    public TensorData Read(TensorInfo info) => new(info, _map, 0, info.ByteLength);

    /// <summary>Maps <paramref name="length"/> bytes of a tensor from <paramref name="offset"/> (a slab of rows).</summary>
    public TensorData ReadRange(TensorInfo info, long offset, long length) => new(info, _map, offset, length);

    public void Dispose() => _map?.Dispose();
}
