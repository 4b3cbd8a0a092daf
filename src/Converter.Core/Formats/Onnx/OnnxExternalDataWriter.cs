using System.Globalization;
using System.Runtime.InteropServices;
using Converter.Formats.Onnx.Proto;
using Converter.Staging;
using Converter.Tensors;
using Google.Protobuf;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;

namespace Converter.Formats.Onnx;

/// <summary>
/// Writes an ONNX model folder: <c>model.onnx</c> plus every initializer streamed, tensor by tensor, into
/// <c>model.onnx.data</c> (TensorProto data_location EXTERNAL with location/offset/length, offsets aligned).
/// Everything goes to a hidden temporary folder beside the destination and is renamed into place by
/// <see cref="Commit"/>; disposing without committing deletes it, so a failed export leaves nothing behind.
/// Memory use is whatever the caller holds for the tensor being written; the writer only buffers the stream.
/// In place (<c>inPlace</c>), the destination is already private (<see cref="StagingArea.Output"/>): files are written there,
/// each finished initializer is recorded in <see cref="Journal"/> with the XXH3 of its bytes, and <see cref="Resume"/>
/// keeps the initializers an interrupted run finished.
/// </summary>
public sealed class OnnxExternalDataWriter : IDisposable
{
    public const string ModelFileName = "model.onnx";
    public const string DataFileName = "model.onnx.data";

    private readonly string _destination;
    private readonly string _tempDir;
    private readonly bool _overwrite;
    private readonly int _alignment;
    private readonly FileStream _data;
    private readonly PageSpliceWriter _splice = new();
    private byte[]? _copyBuffer; // for CopyFrom where the kernel cannot copy file to file
    private readonly List<TensorProto> _initializers = new();
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private TensorSink? _open;
    private bool _committed, _disposed;
    private readonly bool _inPlace;

    /// <summary>Records each finished initializer (in place only).</summary>
    public ResumeJournal? Journal { get; init; }

    /// <summary>Checked at every piece written: a multi-GB initializer (stacked experts) stops within a slab of Ctrl-C.</summary>
    public CancellationToken Cancellation { get; init; }

    public string Destination => _destination;
    /// <summary>The folder being written; side files (config copies, notes) may be put here before commit.</summary>
    public string StagingDirectory => _tempDir;
    public IReadOnlyList<TensorProto> Initializers => _initializers;
    public long DataBytes => _data.Length;

    public OnnxExternalDataWriter(string destination, bool overwrite, int alignment = 64, bool inPlace = false)
    {
        _inPlace = inPlace;
        if (alignment <= 0 || (alignment & (alignment - 1)) != 0) throw new ArgumentException("alignment must be a power of two", nameof(alignment));
        _destination = Path.GetFullPath(destination);
        _overwrite = overwrite;
        _alignment = alignment;
        if (File.Exists(_destination)) throw new IOException($"{_destination}: a file is in the way of the output folder");
        if (!inPlace && Directory.Exists(_destination) && !overwrite && Directory.EnumerateFileSystemEntries(_destination).Any())
            throw new IOException($"{_destination}: output folder already exists and is not empty (use --overwrite to replace it)");
        var parent = Path.GetDirectoryName(_destination)!;
        Directory.CreateDirectory(parent);
        _tempDir = inPlace ? _destination : Path.Combine(parent, StagingNames.For(_destination));
        Directory.CreateDirectory(_tempDir);
        _data = new FileStream(Path.Combine(_tempDir, DataFileName), inPlace ? FileMode.OpenOrCreate : FileMode.CreateNew, FileAccess.Write, FileShare.Read, 1 << 20);
    }

    /// <summary>
    /// In place, before any initializer is written: keeps the leading initializers of <paramref name="plan"/> that
    /// <see cref="Journal"/> lists and whose bytes on disk still hash the same, cuts the data file after them and returns
    /// how many were kept; the caller writes from that one on.
    /// </summary>
    public int Resume(IReadOnlyList<(string Name, DataType Type, long[] Dims)> plan)
    {
        if (!_inPlace || Journal == null) throw new InvalidOperationException("resume needs an in-place writer with a journal");
        if (_initializers.Count > 0 || _open != null) throw new InvalidOperationException("resume before writing any initializer");
        long onDisk = _data.Length, at = 0;
        var units = Journal.Units;
        int kept = 0;
        while (kept < plan.Count && kept < units.Count)
        {
            var (name, type, dims) = plan[kept];
            long offset = at + (_alignment - at % _alignment) % _alignment, length = OnnxTensors.ByteLength(type, dims);
            var u = units[kept];
            if (u.Name != name || u.File != DataFileName || u.Offset != offset || u.Length != length || offset + length > onDisk
                || ContentHash.OfRange(Path.Combine(_tempDir, DataFileName), offset, length) != u.Hash) break;
            _names.Add(name);
            _initializers.Add(Proto(name, type, dims, offset, length));
            at = offset + length;
            kept++;
        }
        Journal.TruncateTo(kept);
        _data.SetLength(at);
        _data.Seek(at, SeekOrigin.Begin);
        return kept;
    }

    /// <summary>Writes a whole initializer at once.</summary>
    public TensorProto Add(string name, DataType type, long[] dims, ReadOnlySpan<byte> bytes)
    {
        using var s = Begin(name, type, dims);
        s.Write(bytes);
        return s.Complete();
    }

    public TensorProto Add<T>(string name, DataType type, long[] dims, ReadOnlySpan<T> values) where T : unmanaged =>
        Add(name, type, dims, MemoryMarshal.AsBytes(values));

    /// <summary>Starts an initializer whose bytes arrive in pieces (e.g. expert by expert); one at a time.</summary>
    public TensorSink Begin(string name, DataType type, long[] dims)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_committed) throw new InvalidOperationException("writer already committed");
        if (_open != null) throw new InvalidOperationException($"initializer '{_open.Name}' is still being written");
        if (!_names.Add(name)) throw new ArgumentException($"initializer '{name}' written twice");
        long pad = (_alignment - _data.Position % _alignment) % _alignment;
        for (long i = 0; i < pad; i++) _data.WriteByte(0);
        _open = new TensorSink(this, name, type, dims, _data.Position, OnnxTensors.ByteLength(type, dims));
        return _open;
    }

    private TensorProto Finish(TensorSink s)
    {
        long written = _data.Position - s.Offset;
        if (written != s.ByteLength)
            throw new InvalidOperationException($"initializer '{s.Name}': {written} bytes written, {s.ByteLength} expected for its shape");
        var t = Proto(s.Name, s.Type, s.Dims, s.Offset, s.ByteLength);
        _initializers.Add(t);
        _open = null;
        if (Journal != null)
        {
            _data.Flush(); // to the kernel first: the journal never lists bytes a kill could lose
            Journal.Completed(new JournalUnit(s.Name, DataFileName, s.Offset, s.ByteLength,
                ContentHash.OfRange(Path.Combine(_tempDir, DataFileName), s.Offset, s.ByteLength)));
        }
        return t;
    }

    private static TensorProto Proto(string name, DataType type, long[] dims, long offset, long length)
    {
        var t = new TensorProto { Name = name, DataType = (int)type, DataLocation = TensorProto.Types.DataLocation.External };
        t.Dims.AddRange(dims);
        t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = DataFileName });
        t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(CultureInfo.InvariantCulture) });
        t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString(CultureInfo.InvariantCulture) });
        return t;
    }

    /// <summary>
    /// Adds the written initializers to <paramref name="model"/>'s graph, writes model.onnx, and moves the
    /// folder to the destination (replacing an existing one only when overwrite was allowed).
    /// </summary>
    public void Commit(ModelProto model)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_open != null) throw new InvalidOperationException($"initializer '{_open.Name}' was not completed");
        model.Graph.Initializer.AddRange(_initializers);
        _data.Flush(true);
        _data.Dispose();
        var modelPath = Path.Combine(_tempDir, ModelFileName);
        using (var fs = new FileStream(modelPath, _inPlace ? FileMode.Create : FileMode.CreateNew, FileAccess.Write))
        {
            model.WriteTo(fs);
            fs.Flush(true);
        }
        if (_inPlace)
        {
            _committed = true;
            return;
        }
        string? backup = null;
        if (Directory.Exists(_destination))
        {
            if (!_overwrite && Directory.EnumerateFileSystemEntries(_destination).Any())
                throw new IOException($"{_destination}: output folder appeared during the export (use --overwrite to replace it)");
            backup = _tempDir + ".old";
            Directory.Move(_destination, backup);
        }
        Directory.Move(_tempDir, _destination);
        if (backup != null) Directory.Delete(backup, true);
        _committed = true;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _splice.Dispose();
        _data.Dispose();
        if (!_committed && !_inPlace && Directory.Exists(_tempDir))
        {
            try { Directory.Delete(_tempDir, true); } catch (IOException) { }
        }
    }

    /// <summary>The open initializer: append its bytes in order, then <see cref="Complete"/>.</summary>
    public sealed class TensorSink : IDisposable
    {
        private readonly OnnxExternalDataWriter _owner;
        private TensorProto? _done;

        public string Name { get; }
        public DataType Type { get; }
        public long[] Dims { get; }
        public long Offset { get; }
        public long ByteLength { get; }
        public long Written => _owner._data.Position - Offset;

        internal TensorSink(OnnxExternalDataWriter owner, string name, DataType type, long[] dims, long offset, long byteLength)
        {
            _owner = owner;
            Name = name;
            Type = type;
            Dims = dims;
            Offset = offset;
            ByteLength = byteLength;
        }

        public void Write(ReadOnlySpan<byte> bytes)
        {
            CheckAppend(bytes.Length);
            _owner._splice.Write(_owner._data, bytes);
        }

        private void CheckAppend(long length)
        {
            _owner.Cancellation.ThrowIfCancellationRequested();
            if (_done != null) throw new InvalidOperationException($"initializer '{Name}' already completed");
            if (Written + length > ByteLength)
                throw new InvalidOperationException($"initializer '{Name}': more than {ByteLength} bytes written");
        }

        /// <summary>Appends <paramref name="length"/> bytes of another file from <paramref name="offset"/>, file to file
        /// (copy_file_range where the kernel can).</summary>
        public void CopyFrom(Microsoft.Win32.SafeHandles.SafeFileHandle src, string srcPath, long offset, long length)
        {
            CheckAppend(length);
            FileRangeCopy.Copy(src, srcPath, offset, _owner._data, length, _owner._copyBuffer ??= new byte[1 << 20]);
        }

        /// <summary>Appends typed values; spans over 2 GiB of bytes are written in pieces.</summary>
        public unsafe void Write<T>(ReadOnlySpan<T> values) where T : unmanaged
        {
            int chunk = (1 << 30) / sizeof(T);
            for (int i = 0; i < values.Length; i += chunk)
                Write(MemoryMarshal.AsBytes(values.Slice(i, Math.Min(chunk, values.Length - i))));
        }

        public TensorProto Complete() => _done ??= _owner.Finish(this);

        /// <summary>Disposing an incomplete sink leaves the writer unusable for commit (the export failed).</summary>
        public void Dispose()
        {
            if (_done == null && _owner._open == this) _owner._open = this; // stays open: Commit will refuse
        }
    }
}
