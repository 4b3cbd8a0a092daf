using System.Text.Json;
using Converter.Tensors;

namespace Converter.Formats.Safetensors;

/// <summary>
/// A folder of safetensors shards: either described by <c>model.safetensors.index.json</c> or a single
/// <c>*.safetensors</c> file. Every shard's header is validated at open; tensor data is mapped on demand.
/// </summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly Dictionary<string, SafetensorsFile> _shards;
    private readonly Dictionary<string, (TensorInfo Info, SafetensorsFile Shard)> _tensors;

    public string Directory { get; }
    /// <summary>Tensor names in a stable order: by shard (index order), then by offset within the shard.</summary>
    public IReadOnlyList<string> Names { get; }
    public IReadOnlyList<SafetensorsFile> Shards { get; }

    private SafetensorsCheckpoint(string dir, List<SafetensorsFile> shards, Dictionary<string, (TensorInfo, SafetensorsFile)> tensors, List<string> names)
    {
        Directory = dir;
        Shards = shards;
        _shards = shards.ToDictionary(s => System.IO.Path.GetFileName(s.Path));
        _tensors = tensors;
        Names = names;
    }

    public static SafetensorsCheckpoint Open(string dir)
    {
        if (!System.IO.Directory.Exists(dir))
            throw new DirectoryNotFoundException($"{dir}: checkpoint folder not found");
        var indexPath = System.IO.Path.Combine(dir, IndexFileName);
        var opened = new List<SafetensorsFile>();
        try
        {
            return File.Exists(indexPath) ? OpenIndexed(dir, indexPath, opened) : OpenSingle(dir, opened);
        }
        catch
        {
            foreach (var s in opened) s.Dispose();
            throw;
        }
    }

    private static SafetensorsCheckpoint OpenSingle(string dir, List<SafetensorsFile> opened)
    {
        var files = System.IO.Directory.GetFiles(dir, "*.safetensors");
        if (files.Length == 0) throw new FileNotFoundException($"{dir}: no {IndexFileName} and no .safetensors file");
        if (files.Length > 1)
            throw new InvalidDataException($"{dir}: {files.Length} .safetensors files but no {IndexFileName} to say which tensors each holds");
        var f = SafetensorsFile.Open(files[0]);
        opened.Add(f);
        var tensors = new Dictionary<string, (TensorInfo, SafetensorsFile)>(StringComparer.Ordinal);
        var names = new List<string>();
        foreach (var t in f.Tensors.OrderBy(t => t.FileOffset))
        {
            tensors[t.Name] = (t, f);
            names.Add(t.Name);
        }
        return new SafetensorsCheckpoint(dir, opened, tensors, names);
    }

    private static SafetensorsCheckpoint OpenIndexed(string dir, string indexPath, List<SafetensorsFile> opened)
    {
        Dictionary<string, string> weightMap;
        try
        {
            var bytes = File.ReadAllBytes(indexPath);
            if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw new InvalidDataException($"{indexPath}: not valid UTF-8");
            using var doc = JsonDocument.Parse(bytes);
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{indexPath}: no weight_map object");
            weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in wm.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{indexPath}: weight_map entry '{p.Name}' is not a file name");
                if (!weightMap.TryAdd(p.Name, p.Value.GetString()!))
                    throw new InvalidDataException($"{indexPath}: tensor '{p.Name}' appears twice in weight_map");
            }
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{indexPath}: not valid JSON ({e.Message})");
        }

        var shardOrder = new List<string>();
        foreach (var file in weightMap.Values)
            if (!shardOrder.Contains(file)) shardOrder.Add(file);
        shardOrder.Sort(StringComparer.Ordinal);

        var byFile = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        foreach (var file in shardOrder)
        {
            if (file.Contains('/') || file.Contains('\\') || file.Contains(".."))
                throw new InvalidDataException($"{indexPath}: shard name '{file}' is not a plain file name");
            var path = System.IO.Path.Combine(dir, file);
            if (!File.Exists(path))
            {
                var first = weightMap.First(kv => kv.Value == file).Key;
                throw new FileNotFoundException($"{indexPath}: shard '{file}' (holding tensor '{first}') is missing", path);
            }
            var f = SafetensorsFile.Open(path);
            opened.Add(f);
            byFile[file] = f;
        }

        var tensors = new Dictionary<string, (TensorInfo, SafetensorsFile)>(StringComparer.Ordinal);
        foreach (var (name, file) in weightMap)
        {
            var shard = byFile[file];
            if (!shard.Contains(name))
                throw new InvalidDataException($"{shard.Path}: index names tensor '{name}' in this shard but the shard lacks it");
            tensors[name] = (shard.Info(name), shard);
        }
        foreach (var shard in opened)
            foreach (var t in shard.Tensors)
                if (!weightMap.TryGetValue(t.Name, out var f) || f != System.IO.Path.GetFileName(shard.Path))
                    throw new InvalidDataException($"{shard.Path}: holds tensor '{t.Name}' that {IndexFileName} does not place in this shard");

        var names = new List<string>(tensors.Count);
        foreach (var shard in opened)
            foreach (var t in shard.Tensors.OrderBy(t => t.FileOffset))
                names.Add(t.Name);
        return new SafetensorsCheckpoint(dir, opened, tensors, names);
    }

    public bool Contains(string name) => _tensors.ContainsKey(name);

    public TensorInfo Info(string name) => _tensors.TryGetValue(name, out var t)
        ? t.Info : throw new KeyNotFoundException($"{Directory}: checkpoint has no tensor '{name}'");

    public TensorData Read(string name)
    {
        if (!_tensors.TryGetValue(name, out var t))
            throw new KeyNotFoundException($"{Directory}: checkpoint has no tensor '{name}'");
        return t.Shard.Read(t.Info);
    }

    public TensorData ReadRange(string name, long offset, long length)
    {
        if (!_tensors.TryGetValue(name, out var t))
            throw new KeyNotFoundException($"{Directory}: checkpoint has no tensor '{name}'");
        return t.Shard.ReadRange(t.Info, offset, length);
    }

    public long TotalBytes => _tensors.Values.Sum(t => t.Info.ByteLength);

    public void Dispose()
    {
        foreach (var s in Shards) s.Dispose();
    }
}
