using System.Globalization;
using Converter.Numerics.Ggml;

namespace Converter.Formats.Gguf;

/// <summary>
/// llama.cpp's split GGUF (what <c>llama-gguf-split --split</c> writes and llama-model-loader reads): files
/// <c>PREFIX-00001-of-0000N.gguf</c>, each a complete GGUF holding a run of the tensors in declaration order; the first
/// carries every metadata key, each carries <c>split.no</c> (u16, from 0), <c>split.count</c> (u16) and
/// <c>split.tensors.count</c> (i32, all tensors). A part is closed before the tensor that would take its tensor data
/// (padded, as gguf-split counts it; the header is not counted) past <see cref="MaxBytes"/>, or at
/// <see cref="MaxTensors"/> tensors. A tensor larger than the limit gets a part of its own (gguf-split refuses).
/// Every part is written to a temporary file and all are renamed only once every part is complete.
/// </summary>
public sealed class GgufSplitWriter : IGgufWriter
{
    public const string SplitNoKey = "split.no", SplitCountKey = "split.count", SplitTensorsCountKey = "split.tensors.count";

    private readonly string _prefix;
    private readonly List<KeyValuePair<string, GgufValue>> _metadata = [];
    private readonly List<(string Name, long[] Dims, GgmlType Type, long Bytes)> _declared = [];
    private readonly HashSet<string> _names = [];
    private List<GgufWriter>? _parts;
    private int[]? _partOf;
    private int _current = -1;
    private bool _committed;

    /// <param name="prefix">Path without the <c>-00001-of-0000N.gguf</c> suffix.</param>
    /// <param name="maxBytes">Most tensor bytes per part (0: no limit).</param>
    /// <param name="maxTensors">Most tensors per part (0: no limit).</param>
    public GgufSplitWriter(string prefix, long maxBytes, int maxTensors = 0)
    {
        if (maxBytes < 0 || maxTensors < 0 || (maxBytes == 0 && maxTensors == 0))
            throw new ArgumentException("a split needs a positive size or tensor limit");
        _prefix = Path.GetFullPath(prefix);
        MaxBytes = maxBytes;
        MaxTensors = maxTensors;
    }

    public long MaxBytes { get; }

    public int MaxTensors { get; }

    /// <summary>llama_split_path: <c>PREFIX-%05d-of-%05d.gguf</c> of part <paramref name="index"/> (from 0).</summary>
    public static string PartPath(string prefix, int index, int count) =>
        string.Create(CultureInfo.InvariantCulture, $"{prefix}-{index + 1:D5}-of-{count:D5}.gguf");

    /// <summary>The prefix of an output path: without its <c>.gguf</c> extension.</summary>
    public static string PrefixOf(string output) =>
        output.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) ? output[..^5] : output;

    /// <summary>The part files, known once the header is written.</summary>
    public IReadOnlyList<string> Paths => _parts?.Select(p => p.Path).ToArray() ?? [];

    public void Add(string key, GgufValue value)
    {
        EnsureDeclaring();
        if (key.StartsWith("split.", StringComparison.Ordinal)) throw new ArgumentException($"key '{key}' is the split writer's own");
        _metadata.Add(new(key, value));
    }

    public GgufTensorInfo AddTensor(string name, ReadOnlySpan<long> dimensions, GgmlType type)
    {
        EnsureDeclaring();
        if (!_names.Add(name)) throw new ArgumentException($"duplicate tensor '{name}'", nameof(name));
        string? error = GgufFormat.TrySize(dimensions, type, out long elements, out long bytes);
        if (error != null) throw new ArgumentException($"tensor '{name}': {error}");
        _declared.Add((name, dimensions.ToArray(), type, bytes));
        return new GgufTensorInfo(name, dimensions.ToArray(), type, -1, elements, bytes);
    }

    /// <summary>Partitions the tensors, creates the parts' temporary files and writes their headers.</summary>
    public void WriteHeader()
    {
        EnsureDeclaring();
        _partOf = Partition(_declared.Select(d => d.Bytes).ToArray(), MaxBytes, MaxTensors);
        int count = _declared.Count == 0 ? 1 : _partOf[^1] + 1;
        if (count > ushort.MaxValue) throw new ArgumentException($"{count} split files: split.count is a u16");
        var parts = new List<GgufWriter>(count);
        try
        {
            for (int p = 0; p < count; p++)
            {
                var w = new GgufWriter(PartPath(_prefix, p, count));
                parts.Add(w);
                if (p == 0) foreach (var (k, v) in _metadata) w.Add(k, v);
                w.Add(SplitNoKey, GgufValue.UInt16((ushort)p));
                w.Add(SplitCountKey, GgufValue.UInt16((ushort)count));
                w.Add(SplitTensorsCountKey, GgufValue.Int32(_declared.Count));
            }
            for (int i = 0; i < _declared.Count; i++)
                parts[_partOf[i]].AddTensor(_declared[i].Name, _declared[i].Dims, _declared[i].Type);
            foreach (var w in parts) w.WriteHeader();
        }
        catch
        {
            foreach (var w in parts) w.Dispose();
            throw;
        }
        _parts = parts;
    }

    /// <summary>The part (from 0) of each tensor: gguf-split's rule, except that no part is left empty.</summary>
    public static int[] Partition(IReadOnlyList<long> tensorBytes, long maxBytes, int maxTensors)
    {
        var part = new int[tensorBytes.Count];
        int p = 0, inPart = 0;
        long size = 0;
        for (int i = 0; i < tensorBytes.Count; i++)
        {
            long padded = GgufFormat.AlignUp(tensorBytes[i], GgufFormat.DefaultAlignment);
            bool full = inPart > 0 && ((maxBytes > 0 && size + padded > maxBytes) || (maxTensors > 0 && inPart == maxTensors));
            if (full)
            {
                p++;
                inPart = 0;
                size = 0;
            }
            part[i] = p;
            inPart++;
            size += padded;
        }
        return part;
    }

    public void BeginTensor(string name)
    {
        if (_parts == null) WriteHeader();
        int i = _declared.FindIndex(_current + 1, d => d.Name == name);
        if (i != _current + 1)
            throw new InvalidOperationException($"tensor '{name}' written out of order: expected '{(_current + 1 < _declared.Count ? _declared[_current + 1].Name : "none")}'");
        _current = i;
        _parts![_partOf![i]].BeginTensor(name);
    }

    public void WriteTensorData(ReadOnlySpan<byte> data) => Current.WriteTensorData(data);

    public void WriteTensorValues(ReadOnlySpan<float> values) => Current.WriteTensorValues(values);

    public void WriteTensorValues(ReadOnlySpan<float> values, ReadOnlySpan<float> importance) => Current.WriteTensorValues(values, importance);

    public void EndTensor() => Current.EndTensor();

    /// <summary>Completes every part (all data flushed), then renames them all into place.</summary>
    public void Commit()
    {
        if (_committed) throw new InvalidOperationException("writer is closed");
        if (_parts == null) WriteHeader();
        foreach (var w in _parts!) w.Complete();
        foreach (var w in _parts) w.Publish();
        _committed = true;
    }

    public void Dispose()
    {
        if (_parts != null) foreach (var w in _parts) w.Dispose();
    }

    private GgufWriter Current => _current >= 0 && _parts != null ? _parts[_partOf![_current]]
        : throw new InvalidOperationException("no tensor started: call BeginTensor first");

    private void EnsureDeclaring()
    {
        if (_committed) throw new InvalidOperationException("writer is closed");
        if (_parts != null) throw new InvalidOperationException("the header is already written: declare all metadata and tensors first");
    }
}
