using System.Text.Json;
using Converter.Staging;
using Converter.Tensors;

namespace Converter.Formats.Safetensors;

/// <summary>A tensor the writer will receive: declared up front so every shard header is known before data.</summary>
public sealed record TensorSpec(string Name, DType DType, long[] Shape)
{
    public long ByteLength
    {
        get
        {
            long n = DTypeInfo.SizeOf(DType);
            foreach (var d in Shape) n = checked(n * d);
            return n;
        }
    }
}

/// <summary>
/// Streams a sharded safetensors checkpoint: the plan (names, dtypes, shapes) is fixed first, shards are cut
/// at <c>maxShardBytes</c>, and each tensor's bytes are appended as soon as they are produced, in plan order.
/// Output goes to a temporary folder beside the destination and is renamed into place by <see cref="Commit"/>;
/// disposing without committing deletes it, so a failed run leaves nothing at the destination. In place
/// (<c>inPlace</c>), the destination is already a private staging folder (<see cref="StagingArea.Output"/>): shards are
/// written there directly, each finished shard is recorded in <see cref="Journal"/>, and <see cref="Resume"/> keeps the
/// shards an interrupted run finished.
/// </summary>
public sealed class SafetensorsWriter : IDisposable
{
    private readonly string _destination;
    private readonly string _tempDir;
    private readonly List<List<TensorSpec>> _shards = new();
    private readonly List<string> _shardNames = new();
    private readonly Dictionary<string, string> _metadata;
    private readonly bool _overwrite, _inPlace;
    private readonly HashSet<string> _kept = new(StringComparer.Ordinal); // tensors of the shards Resume kept: their writes are discarded
    private int _shardIndex = -1, _tensorInShard;
    private FileStream? _current;
    private bool _committed;
    private long _pendingEnd = -1;

    /// <summary>The folder being written; callers put config.json and other side files here before commit.</summary>
    public string StagingDirectory => _tempDir;

    /// <summary>Records each finished shard (in place only); <see cref="JournalPrefix"/> goes before its file name.</summary>
    public ResumeJournal? Journal { get; init; }
    public string JournalPrefix { get; init; } = "";

    public SafetensorsWriter(string destination, IReadOnlyList<TensorSpec> plan, long maxShardBytes, bool overwrite,
        IReadOnlyDictionary<string, string>? metadata = null, bool inPlace = false)
    {
        if (plan.Count == 0) throw new ArgumentException("nothing to write", nameof(plan));
        _destination = System.IO.Path.GetFullPath(destination);
        _overwrite = overwrite;
        _inPlace = inPlace;
        if (inPlace) overwrite = true; // the folder is ours: a resumed run finds its own shards there
        if (System.IO.Directory.Exists(_destination) && !overwrite)
            throw new IOException($"{_destination}: output folder already exists (use --overwrite to replace it)");
        if (File.Exists(_destination))
            throw new IOException($"{_destination}: a file is in the way of the output folder");
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var t in plan)
            if (!names.Add(t.Name)) throw new ArgumentException($"tensor '{t.Name}' planned twice");
        _metadata = metadata is null ? new() { ["format"] = "pt" } : new(metadata);

        long size = 0;
        foreach (var t in plan)
        {
            if (_shards.Count == 0 || (size > 0 && size + t.ByteLength > maxShardBytes))
            {
                _shards.Add(new List<TensorSpec>());
                size = 0;
            }
            _shards[^1].Add(t);
            size += t.ByteLength;
        }
        int n = _shards.Count;
        for (int i = 0; i < n; i++)
            _shardNames.Add(n == 1 ? "model.safetensors" : $"model-{i + 1:D5}-of-{n:D5}.safetensors");

        var parent = System.IO.Path.GetDirectoryName(_destination)!;
        System.IO.Directory.CreateDirectory(parent);
        _tempDir = inPlace ? _destination : System.IO.Path.Combine(parent, StagingNames.For(_destination));
        System.IO.Directory.CreateDirectory(_tempDir);
    }

    /// <summary>
    /// In place: keeps the leading shards that <see cref="Journal"/> lists as finished and that are on disk with their
    /// size and hash, deletes the rest, and returns how many were kept. Writes to the kept shards' tensors are then
    /// discarded (the caller may restart from any job before the first tensor that is not <see cref="IsKept"/>).
    /// </summary>
    public int Resume()
    {
        if (!_inPlace || Journal == null) throw new InvalidOperationException("resume needs an in-place writer with a journal");
        int kept = 0;
        while (kept < _shards.Count)
        {
            var file = JournalPrefix + _shardNames[kept];
            var unit = Journal.Units.LastOrDefault(u => u.File == file && u.Name == file);
            var path = System.IO.Path.Combine(_tempDir, _shardNames[kept]);
            if (unit == null || !File.Exists(path) || new FileInfo(path).Length != unit.Length || ContentHash.OfFile(path) != unit.Hash) break;
            kept++;
        }
        for (int s = kept; s < _shards.Count; s++) File.Delete(System.IO.Path.Combine(_tempDir, _shardNames[s]));
        for (int s = 0; s < kept; s++) foreach (var t in _shards[s]) _kept.Add(t.Name);
        if (kept > 0) { _shardIndex = kept - 1; _tensorInShard = _shards[kept - 1].Count; }
        return kept;
    }

    /// <summary>True for a tensor of a shard kept by <see cref="Resume"/>.</summary>
    public bool IsKept(string name) => _kept.Contains(name);

    /// <summary>True when the tensor belongs to a kept shard: its bytes are not written again.</summary>
    private bool SkipKept(string name) => _kept.Count > 0 && _kept.Contains(name);

    public IReadOnlyList<string> ShardNames => _shardNames;

    /// <summary>The spec of the next tensor the writer expects, or null when all were written.</summary>
    public TensorSpec? Next
    {
        get
        {
            int s = _shardIndex < 0 ? 0 : _shardIndex, t = _shardIndex < 0 ? 0 : _tensorInShard;
            while (s < _shards.Count && t >= _shards[s].Count) { s++; t = 0; }
            return s < _shards.Count ? _shards[s][t] : null;
        }
    }

    /// <summary>Appends the next tensor's bytes; the name must be the next in plan order.</summary>
    public void Write(string name, ReadOnlySpan<byte> bytes)
    {
        if (SkipKept(name)) return;
        var spec = AdvanceTo(name);
        if (bytes.Length != spec.ByteLength)
            throw new InvalidOperationException($"tensor '{name}': got {bytes.Length} bytes, planned {spec.ByteLength} ({spec.DType} {string.Join("x", spec.Shape)})");
        _current!.Write(bytes);
        _tensorInShard++;
    }

    /// <summary>Appends the next tensor in pieces (for tensors produced a block of rows at a time).</summary>
    public Stream BeginTensor(string name, out long byteLength)
    {
        if (SkipKept(name))
        {
            byteLength = _shards.SelectMany(t => t).First(t => t.Name == name).ByteLength;
            return Stream.Null; // a kept shard's tensor: its bytes are already on disk
        }
        var spec = AdvanceTo(name);
        byteLength = spec.ByteLength;
        _tensorInShard++;
        _pendingEnd = _current!.Position + byteLength;
        return _current!;
    }

    private TensorSpec AdvanceTo(string name)
    {
        if (_committed) throw new InvalidOperationException("writer already committed");
        CheckPending();
        if (_shardIndex < 0 || _tensorInShard >= _shards[_shardIndex].Count) OpenNextShard();
        var spec = _shards[_shardIndex][_tensorInShard];
        if (spec.Name != name)
            throw new InvalidOperationException($"expected tensor '{spec.Name}' next, got '{name}'");
        return spec;
    }

    private void OpenNextShard()
    {
        FinishShard();
        _shardIndex++;
        _tensorInShard = 0;
        if (_shardIndex >= _shards.Count) throw new InvalidOperationException("more tensors written than planned");
        var entries = new List<(string, DType, long[], long, long)>();
        long offset = 0;
        foreach (var t in _shards[_shardIndex])
        {
            entries.Add((t.Name, t.DType, t.Shape, offset, offset + t.ByteLength));
            offset += t.ByteLength;
        }
        var header = SafetensorsHeader.Build(entries, _metadata);
        _current = new FileStream(System.IO.Path.Combine(_tempDir, _shardNames[_shardIndex]), FileMode.CreateNew,
            FileAccess.Write, FileShare.None, 1 << 20);
        Span<byte> len = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
        _current.Write(len);
        _current.Write(header);
        _current.SetLength(8 + header.Length + offset); // reserve: lets the file system lay it out in one go
    }

    private void CheckPending()
    {
        if (_pendingEnd >= 0 && _current!.Position != _pendingEnd)
            throw new InvalidOperationException($"previous tensor was written {_current.Position - _pendingEnd:+#;-#} bytes off its planned size");
        _pendingEnd = -1;
    }

    private void FinishShard()
    {
        if (_current == null) return;
        CheckPending();
        if (_tensorInShard != _shards[_shardIndex].Count)
            throw new InvalidOperationException($"shard {_shardNames[_shardIndex]}: {_shards[_shardIndex].Count - _tensorInShard} planned tensors not written");
        _current.Flush();
        long length = _current.Length;
        _current.Dispose();
        _current = null;
        if (Journal != null)
        {
            var name = _shardNames[_shardIndex];
            var hash = ContentHash.OfFile(System.IO.Path.Combine(_tempDir, name));
            Journal.Completed(new JournalUnit(JournalPrefix + name, JournalPrefix + name, 0, length, hash));
        }
    }

    /// <summary>Finishes the last shard, writes the index (when sharded) and renames the folder into place.</summary>
    public void Commit()
    {
        if (_committed) return;
        if (_shardIndex != _shards.Count - 1) throw new InvalidOperationException($"{_shards.Count - 1 - _shardIndex} shards not written");
        FinishShard();
        if (_shards.Count > 1) WriteIndex();
        if (_inPlace)
        {
            _committed = true;
            return;
        }
        if (System.IO.Directory.Exists(_destination))
        {
            if (!_overwrite) throw new IOException($"{_destination}: output folder appeared while writing");
            System.IO.Directory.Delete(_destination, true);
        }
        System.IO.Directory.Move(_tempDir, _destination);
        _committed = true;
    }

    private void WriteIndex()
    {
        long total = 0;
        var map = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (int s = 0; s < _shards.Count; s++)
            foreach (var t in _shards[s])
            {
                map[t.Name] = _shardNames[s];
                total += t.ByteLength;
            }
        using var fs = new FileStream(System.IO.Path.Combine(_tempDir, SafetensorsCheckpoint.IndexFileName), FileMode.Create, FileAccess.Write);
        using var w = new Utf8JsonWriter(fs, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteStartObject("metadata");
        w.WriteNumber("total_size", total);
        w.WriteEndObject();
        w.WriteStartObject("weight_map");
        foreach (var kv in map) w.WriteString(kv.Key, kv.Value);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    public void Dispose()
    {
        _current?.Dispose();
        _current = null;
        if (!_committed && !_inPlace && System.IO.Directory.Exists(_tempDir))
        {
            try { System.IO.Directory.Delete(_tempDir, true); } catch (IOException) { }
        }
    }
}
