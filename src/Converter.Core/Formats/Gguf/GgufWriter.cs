using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using System.IO.Hashing;
using Converter.Numerics.Ggml;
using Converter.Staging;
using Converter.Tensors;

namespace Converter.Formats.Gguf;

/// <summary>
/// Streaming GGUF v3 writer. Metadata and every tensor's name, shape and type are declared first (so the header,
/// with all offsets, can be written before any data); then tensor data is written tensor by tensor in declaration
/// order, each checked for its exact byte count. Output goes to a temporary file in the target directory that
/// <see cref="Commit"/> renames into place; disposing without committing deletes it. In place (<c>inPlace</c>), the
/// path is already private (<see cref="StagingArea.Output"/>): the file is written there, each finished tensor is recorded
/// in <see cref="Journal"/> with the XXH3 of its bytes, and <see cref="Resume"/> keeps the tensors an interrupted run finished.
/// </summary>
public sealed class GgufWriter : IGgufWriter
{
    private static readonly UTF8Encoding StrictUtf8 = new(false, true);

    private readonly string _path;
    private readonly string _tempPath;
    private readonly uint _alignment;
    private readonly List<KeyValuePair<string, GgufValue>> _metadata = [];
    private readonly HashSet<string> _keys = [];
    private readonly List<GgufTensorInfo> _tensors = [];
    private readonly Dictionary<string, int> _tensorIndex = [];
    private FileStream? _file;
    private readonly PageSpliceWriter _splice = new();
    private long _dataSize;
    private bool _headerWritten;
    private bool _committed;
    private int _current = -1;      // tensor being written, -1 when between tensors
    private int _nextTensor;        // next tensor expected by BeginTensor
    private long _currentWritten;
    private byte[]? _quantBuffer;
    private readonly bool _inPlace;
    private long _dataStart;
    private readonly XxHash3 _tensorHash = new();

    /// <summary>Records each finished tensor (in place only).</summary>
    public ResumeJournal? Journal { get; init; }

    /// <summary>Checked at every piece written: a stack of expert tensors stops within a piece of Ctrl-C.</summary>
    public CancellationToken Cancellation { get; init; }

    public GgufWriter(string path, uint alignment = GgufFormat.DefaultAlignment, bool inPlace = false)
    {
        if (!GgufFormat.IsValidAlignment(alignment)) throw new ArgumentException($"alignment {alignment} is not a power of two", nameof(alignment));
        _path = System.IO.Path.GetFullPath(path);
        _alignment = alignment;
        _inPlace = inPlace;
        string dir = System.IO.Path.GetDirectoryName(_path)!;
        Directory.CreateDirectory(dir);
        _tempPath = inPlace ? _path : System.IO.Path.Combine(dir, StagingNames.For(_path));
        _file = new FileStream(_tempPath, inPlace ? FileMode.OpenOrCreate : FileMode.CreateNew, FileAccess.Write, FileShare.Read, 1 << 20);
    }

    /// <summary>
    /// In place, after every tensor is declared: writes the header, keeps the leading tensors that <see cref="Journal"/>
    /// lists whose bytes on disk still hash the same, cuts the file after them and returns how many were kept; the
    /// caller writes from that tensor on.
    /// </summary>
    public int Resume()
    {
        if (!_inPlace || Journal == null) throw new InvalidOperationException("resume needs an in-place writer with a journal");
        long onDisk = _file!.Length;
        WriteHeader(keepData: true);
        string file = System.IO.Path.GetFileName(_path);
        int kept = 0;
        var units = Journal.Units;
        _file.Flush();
        while (kept < _tensors.Count && kept < units.Count)
        {
            var t = _tensors[kept];
            var u = units[kept];
            long at = _dataStart + t.Offset;
            if (u.Name != t.Name || u.File != file || u.Offset != at || u.Length != t.ByteSize || at + t.ByteSize > onDisk
                || ContentHash.OfRange(_tempPath, at, t.ByteSize) != u.Hash) break;
            kept++;
        }
        Journal.TruncateTo(kept);
        long end = kept == 0 ? _dataStart : _dataStart + GgufFormat.AlignUp(_tensors[kept - 1].Offset + _tensors[kept - 1].ByteSize, _alignment);
        _file.SetLength(end);
        _file.Seek(end, SeekOrigin.Begin);
        _nextTensor = kept;
        return kept;
    }


    /// <summary>The final path the file is renamed to on commit.</summary>
    public string Path => _path;

    public uint Alignment => _alignment;

    /// <summary>Tensors declared so far, with their offsets in the data section.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors => _tensors;

    /// <summary>Adds a metadata key. <c>general.alignment</c>, if given, must be a UInt32 equal to the writer's alignment.</summary>
    public void Add(string key, GgufValue value)
    {
        EnsureDeclaring();
        ArgumentException.ThrowIfNullOrEmpty(key);
        ArgumentNullException.ThrowIfNull(value);
        if (key == GgufFormat.AlignmentKey && (value.Type != GgufValueType.UInt32 || value.AsUInt32() != _alignment))
            throw new ArgumentException($"{GgufFormat.AlignmentKey} must be UInt32 {_alignment} (the writer's alignment), got {value}");
        if (!_keys.Add(key)) throw new ArgumentException($"duplicate GGUF key '{key}'", nameof(key));
        _metadata.Add(new(key, value));
    }

    /// <summary>Declares the next tensor. Dimensions are innermost first (ggml ne[]).</summary>
    public GgufTensorInfo AddTensor(string name, ReadOnlySpan<long> dimensions, GgmlType type)
    {
        EnsureDeclaring();
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (StrictUtf8.GetByteCount(name) >= GgufFormat.MaxNameBytes)
            throw new ArgumentException($"tensor name '{name}' is {StrictUtf8.GetByteCount(name)} bytes; ggml allows {GgufFormat.MaxNameBytes - 1}", nameof(name));
        if (_tensorIndex.ContainsKey(name)) throw new ArgumentException($"duplicate tensor '{name}'", nameof(name));
        string? error = GgufFormat.TrySize(dimensions, type, out long elements, out long bytes);
        if (error != null) throw new ArgumentException($"tensor '{name}': {error}");
        long offset = GgufFormat.AlignUp(_dataSize, _alignment);
        var info = new GgufTensorInfo(name, dimensions.ToArray(), type, offset, elements, bytes);
        _tensorIndex[name] = _tensors.Count;
        _tensors.Add(info);
        _dataSize = offset + bytes;
        return info;
    }

    /// <summary>Writes magic, counts, metadata and tensor infos; called implicitly by the first data write.</summary>
    public void WriteHeader() => WriteHeader(keepData: false);

    private void WriteHeader(bool keepData)
    {
        EnsureDeclaring();
        var metadata = new List<KeyValuePair<string, GgufValue>>(_metadata);
        if (_alignment != GgufFormat.DefaultAlignment && !_keys.Contains(GgufFormat.AlignmentKey))
            metadata.Add(new(GgufFormat.AlignmentKey, GgufValue.UInt32(_alignment)));

        var buf = new ArrayBufferWriter<byte>(1 << 16);
        PutU32(buf, GgufFormat.Magic);
        PutU32(buf, GgufFormat.Version);
        PutU64(buf, (ulong)_tensors.Count);
        PutU64(buf, (ulong)metadata.Count);
        foreach (var (key, value) in metadata)
        {
            PutString(buf, key);
            PutU32(buf, (uint)value.Type);
            PutValue(buf, value);
        }
        foreach (var t in _tensors)
        {
            PutString(buf, t.Name);
            PutU32(buf, (uint)t.Dimensions.Count);
            foreach (long d in t.Dimensions) PutU64(buf, (ulong)d);
            PutU32(buf, (uint)t.Type);
            PutU64(buf, (ulong)t.Offset);
        }
        var file = _file!;
        file.Seek(0, SeekOrigin.Begin);
        file.Write(buf.WrittenSpan);
        WritePadding(file, file.Position);
        _dataStart = file.Position;
        if (!keepData) file.SetLength(_dataStart);
        _headerWritten = true;
    }

    /// <summary>Starts the data of <paramref name="name"/>, which must be the next declared tensor.</summary>
    public void BeginTensor(string name)
    {
        if (_committed || _file == null) throw new InvalidOperationException("writer is closed");
        if (!_headerWritten) WriteHeader();
        if (_current >= 0) throw new InvalidOperationException($"tensor '{_tensors[_current].Name}' is not finished");
        if (_nextTensor >= _tensors.Count) throw new InvalidOperationException($"tensor '{name}' written after all {_tensors.Count} declared tensors");
        if (_tensors[_nextTensor].Name != name)
            throw new InvalidOperationException($"tensor '{name}' written out of order: expected '{_tensors[_nextTensor].Name}'");
        _current = _nextTensor++;
        _currentWritten = 0;
        _tensorHash.Reset();
    }

    /// <summary>Appends raw ggml bytes to the current tensor.</summary>
    public void WriteTensorData(ReadOnlySpan<byte> data)
    {
        Cancellation.ThrowIfCancellationRequested();
        var t = CurrentTensor();
        if (_currentWritten + data.Length > t.ByteSize)
            throw new InvalidOperationException($"tensor '{t.Name}': {_currentWritten + data.Length} bytes written, declared {t.ByteSize}");
        _splice.Write(_file!, data);
        if (Journal != null) _tensorHash.Append(data);
        _currentWritten += data.Length;
    }

    /// <summary>Converts float32 values (a whole number of blocks) to the current tensor's type and appends them.</summary>
    public void WriteTensorValues(ReadOnlySpan<float> values)
    {
        var t = CurrentTensor();
        long bytes = GgmlTypeInfo.ByteSize(t.Type, values.Length);
        if (bytes > int.MaxValue) throw new ArgumentException("write at most 2 GiB of encoded data per call", nameof(values));
        if (_quantBuffer == null || _quantBuffer.Length < bytes) _quantBuffer = new byte[Math.Max(bytes, 1 << 20)];
        var dst = _quantBuffer.AsSpan(0, (int)bytes);
        GgmlQuantizer.Quantize(t.Type, values, dst);
        WriteTensorData(dst);
    }

    /// <summary>As <see cref="WriteTensorValues(ReadOnlySpan{float})"/>, quantized with per-column importance weights
    /// (one per value of a row, llama-quantize's imatrix slice for these rows; ggml types without an importance-weighted
    /// quantizer ignore them).</summary>
    public void WriteTensorValues(ReadOnlySpan<float> values, ReadOnlySpan<float> importance)
    {
        var t = CurrentTensor();
        long bytes = GgmlTypeInfo.ByteSize(t.Type, values.Length);
        if (bytes > int.MaxValue) throw new ArgumentException("write at most 2 GiB of encoded data per call", nameof(values));
        if (_quantBuffer == null || _quantBuffer.Length < bytes) _quantBuffer = new byte[Math.Max(bytes, 1 << 20)];
        var dst = _quantBuffer.AsSpan(0, (int)bytes);
        GgmlQuantizer.Quantize(t.Type, values, dst, importance, -1);
        WriteTensorData(dst);
    }

    /// <summary>Finishes the current tensor: checks its byte count and pads to the alignment.</summary>
    public void EndTensor()
    {
        var t = CurrentTensor();
        if (_currentWritten != t.ByteSize)
            throw new InvalidOperationException($"tensor '{t.Name}': {_currentWritten} bytes written, declared {t.ByteSize}");
        WritePadding(_file!, _currentWritten);
        if (Journal != null)
        {
            _file!.Flush(); // to the kernel: what a kill -9 leaves is on disk before the journal says it is done
            Journal.Completed(new JournalUnit(t.Name, System.IO.Path.GetFileName(_path), _dataStart + t.Offset, t.ByteSize,
                Convert.ToHexStringLower(_tensorHash.GetCurrentHash())));
        }
        _current = -1;
    }

    /// <summary>Writes the whole data of the next tensor.</summary>
    public void AppendTensor(string name, ReadOnlySpan<byte> data)
    {
        BeginTensor(name);
        WriteTensorData(data);
        EndTensor();
    }

    /// <summary>Converts and writes the whole data of the next tensor from float32.</summary>
    public void AppendTensor(string name, ReadOnlySpan<float> values)
    {
        BeginTensor(name);
        WriteTensorValues(values);
        EndTensor();
    }

    /// <summary>Checks every declared tensor was written, flushes to disk and renames the file into place.</summary>
    public void Commit()
    {
        Complete();
        Publish();
    }

    /// <summary>The first half of <see cref="Commit"/>: checks every declared tensor was written and flushes the
    /// temporary file to disk (a split file's parts are all completed before any is renamed).</summary>
    internal void Complete()
    {
        if (_committed || _file == null) throw new InvalidOperationException("writer is closed");
        if (!_headerWritten) WriteHeader();
        if (_current >= 0) throw new InvalidOperationException($"tensor '{_tensors[_current].Name}' is not finished");
        if (_nextTensor != _tensors.Count)
            throw new InvalidOperationException($"{_tensors.Count - _nextTensor} declared tensors were not written, first '{_tensors[_nextTensor].Name}'");
        _file.Flush(flushToDisk: true);
        _file.Dispose();
        _file = null;
    }

    /// <summary>The second half of <see cref="Commit"/>: renames the completed file into place (in place: nothing to rename).</summary>
    internal void Publish()
    {
        if (_committed || _file != null) throw new InvalidOperationException("writer is not completed");
        if (!_inPlace) File.Move(_tempPath, _path, overwrite: true);
        _committed = true;
    }

    public void Dispose()
    {
        _splice.Dispose();
        if (_file != null)
        {
            _file.Dispose();
            _file = null;
        }
        if (!_committed && !_inPlace)
        {
            try { File.Delete(_tempPath); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    private GgufTensorInfo CurrentTensor()
    {
        if (_current < 0) throw new InvalidOperationException("no tensor started: call BeginTensor first");
        return _tensors[_current];
    }

    private void EnsureDeclaring()
    {
        if (_file == null || _committed) throw new InvalidOperationException("writer is closed");
        if (_headerWritten) throw new InvalidOperationException("the header is already written: declare all metadata and tensors first");
    }

    private void WritePadding(Stream s, long written)
    {
        long pad = GgufFormat.AlignUp(written, _alignment) - written;
        Span<byte> zeros = stackalloc byte[64];
        zeros.Clear();
        while (pad > 0)
        {
            int n = (int)Math.Min(pad, zeros.Length);
            s.Write(zeros[..n]);
            pad -= n;
        }
    }

    private static void PutU32(IBufferWriter<byte> w, uint v)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(w.GetSpan(4), v);
        w.Advance(4);
    }

    private static void PutU64(IBufferWriter<byte> w, ulong v)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(w.GetSpan(8), v);
        w.Advance(8);
    }

    private static void PutString(IBufferWriter<byte> w, string s)
    {
        int n = StrictUtf8.GetByteCount(s);
        PutU64(w, (ulong)n);
        StrictUtf8.GetBytes(s, w.GetSpan(n));
        w.Advance(n);
    }

    private static void PutScalar(IBufferWriter<byte> w, GgufValueType type, object v)
    {
        var span = w.GetSpan(8);
        switch (type)
        {
            case GgufValueType.UInt8: span[0] = (byte)v; w.Advance(1); break;
            case GgufValueType.Int8: span[0] = (byte)(sbyte)v; w.Advance(1); break;
            case GgufValueType.Bool: span[0] = (bool)v ? (byte)1 : (byte)0; w.Advance(1); break;
            case GgufValueType.UInt16: BinaryPrimitives.WriteUInt16LittleEndian(span, (ushort)v); w.Advance(2); break;
            case GgufValueType.Int16: BinaryPrimitives.WriteInt16LittleEndian(span, (short)v); w.Advance(2); break;
            case GgufValueType.UInt32: BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)v); w.Advance(4); break;
            case GgufValueType.Int32: BinaryPrimitives.WriteInt32LittleEndian(span, (int)v); w.Advance(4); break;
            case GgufValueType.Float32: BinaryPrimitives.WriteSingleLittleEndian(span, (float)v); w.Advance(4); break;
            case GgufValueType.UInt64: BinaryPrimitives.WriteUInt64LittleEndian(span, (ulong)v); w.Advance(8); break;
            case GgufValueType.Int64: BinaryPrimitives.WriteInt64LittleEndian(span, (long)v); w.Advance(8); break;
            case GgufValueType.Float64: BinaryPrimitives.WriteDoubleLittleEndian(span, (double)v); w.Advance(8); break;
            case GgufValueType.String: PutString(w, (string)v); break;
            default: throw new ArgumentException($"not a scalar GGUF type: {type}");
        }
    }

    private static void PutValue(IBufferWriter<byte> w, GgufValue value)
    {
        if (!value.IsArray)
        {
            PutScalar(w, value.Type, value.Value);
            return;
        }
        PutU32(w, (uint)value.ElementType);
        var items = (Array)value.Value;
        PutU64(w, (ulong)items.Length);
        if (value.ElementType == GgufValueType.Array)
        {
            foreach (GgufValue inner in items) PutValue(w, inner);
            return;
        }
        foreach (object item in items) PutScalar(w, value.ElementType, item);
    }
}
