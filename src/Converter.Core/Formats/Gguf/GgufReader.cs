using System.IO.MemoryMappedFiles;
using System.Text;
using Converter.Numerics.Ggml;

namespace Converter.Formats.Gguf;

/// <summary>
/// Memory-mapped GGUF (v2/v3) reader. Opening validates the whole header — magic, version, counts against the
/// file size, every string, array and tensor info, the alignment, and that every tensor's data lies aligned and
/// inside the file without overlapping another — and throws <see cref="InvalidDataException"/> naming the file
/// and the key or tensor at fault. Tensor data is exposed as spans over the mapping (no copies).
/// </summary>
public sealed unsafe class GgufReader : IDisposable
{
    private static readonly UTF8Encoding StrictUtf8 = new(false, true);

    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private byte* _base;
    private readonly Dictionary<string, GgufValue> _byKey;
    private readonly Dictionary<string, GgufTensorInfo> _byName;

    public string Path { get; }
    public uint Version { get; }
    public uint Alignment { get; }
    public long FileLength { get; }

    /// <summary>Absolute file offset of the tensor data section.</summary>
    public long DataOffset { get; }

    /// <summary>Metadata in file order.</summary>
    public IReadOnlyList<KeyValuePair<string, GgufValue>> Metadata { get; }

    /// <summary>Tensor infos in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    private GgufReader(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* basePtr, long length)
    {
        Path = path;
        _map = map;
        _view = view;
        _base = basePtr;
        FileLength = length;
        var cursor = new Cursor(basePtr, length, path);
        try
        {
            if (cursor.U32("magic") != GgufFormat.Magic) throw cursor.Error("not a GGUF file (bad magic)");
            Version = cursor.U32("version");
            if (Version is not (2 or 3)) throw cursor.Error($"unsupported GGUF version {Version}");
            long tensorCount = cursor.Count("tensor count", 8 + 4 + 8 + 4 + 8);
            long keyCount = cursor.Count("metadata count", 8 + 4 + 1);

            var metadata = new List<KeyValuePair<string, GgufValue>>((int)Math.Min(keyCount, 1 << 16));
            _byKey = new Dictionary<string, GgufValue>(StringComparer.Ordinal);
            for (long i = 0; i < keyCount; i++)
            {
                string key = cursor.String($"metadata key #{i}");
                cursor.Context = $"key '{key}'";
                var type = (GgufValueType)cursor.U32("value type");
                var value = cursor.Value(type, 0);
                if (!_byKey.TryAdd(key, value)) throw cursor.Error("duplicate key");
                metadata.Add(new(key, value));
                cursor.Context = null;
            }
            Metadata = metadata;

            uint alignment = GgufFormat.DefaultAlignment;
            if (_byKey.TryGetValue(GgufFormat.AlignmentKey, out var a))
            {
                if (a.Type != GgufValueType.UInt32)
                    throw new InvalidDataException($"{path}: key '{GgufFormat.AlignmentKey}' is {a.Type}, expected UInt32");
                alignment = a.AsUInt32();
                if (!GgufFormat.IsValidAlignment(alignment))
                    throw new InvalidDataException($"{path}: key '{GgufFormat.AlignmentKey}' = {alignment} is not a power of two");
            }
            Alignment = alignment;

            var tensors = new List<GgufTensorInfo>((int)Math.Min(tensorCount, 1 << 16));
            _byName = new Dictionary<string, GgufTensorInfo>(StringComparer.Ordinal);
            Span<long> dims = stackalloc long[GgufFormat.MaxDimensions];
            for (long i = 0; i < tensorCount; i++)
            {
                string name = cursor.String($"tensor info #{i} name");
                cursor.Context = $"tensor '{name}'";
                uint nDims = cursor.U32("dimension count");
                if (nDims is < 1 or > GgufFormat.MaxDimensions) throw cursor.Error($"{nDims} dimensions (1 to {GgufFormat.MaxDimensions} allowed)");
                for (int d = 0; d < nDims; d++) dims[d] = cursor.I64("dimension");
                var type = (GgmlType)cursor.U32("ggml type");
                ulong offset = cursor.U64("data offset");
                string? error = GgufFormat.TrySize(dims[..(int)nDims], type, out long elements, out long bytes);
                if (error != null) throw cursor.Error(error);
                if (offset > long.MaxValue) throw cursor.Error($"data offset {offset} out of range");
                var info = new GgufTensorInfo(name, dims[..(int)nDims].ToArray(), type, (long)offset, elements, bytes);
                if (!_byName.TryAdd(name, info)) throw cursor.Error("duplicate tensor name");
                tensors.Add(info);
                cursor.Context = null;
            }
            Tensors = tensors;

            DataOffset = GgufFormat.AlignUp(cursor.Position, alignment);
            if (DataOffset > length && tensorCount > 0)
                throw new InvalidDataException($"{path}: truncated: data section would start at {DataOffset}, file has {length} bytes");
            ValidateDataLayout();
        }
        catch
        {
            ReleasePointer();
            view.Dispose();
            map.Dispose();
            throw;
        }
    }

    /// <summary>Opens and validates a GGUF file.</summary>
    public static GgufReader Open(string path)
    {
        path = System.IO.Path.GetFullPath(path);
        long length = new FileInfo(path).Length;
        if (length < 24) throw new InvalidDataException($"{path}: truncated: {length} bytes is shorter than a GGUF header");
        var map = MemoryMappedFile.CreateFromFile(
            new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete),
            null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
        MemoryMappedViewAccessor view;
        try
        {
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        }
        catch
        {
            map.Dispose();
            throw;
        }
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        return new GgufReader(path, map, view, p + view.PointerOffset, length);
    }

    private void ValidateDataLayout()
    {
        long dataLength = FileLength - DataOffset;
        foreach (var t in Tensors)
        {
            if (t.Offset % Alignment != 0)
                throw new InvalidDataException($"{Path}: tensor '{t.Name}': data offset {t.Offset} is not a multiple of the alignment {Alignment}");
            if (t.Offset > dataLength || t.ByteSize > dataLength - t.Offset)
                throw new InvalidDataException($"{Path}: tensor '{t.Name}': data [{t.Offset}, {t.Offset + t.ByteSize}) lies outside the {Math.Max(0, dataLength)}-byte data section (file truncated or offset wrong)");
        }
        var sorted = Tensors.Where(t => t.ByteSize > 0).OrderBy(t => t.Offset).ToList();
        for (int i = 1; i < sorted.Count; i++)
        {
            var prev = sorted[i - 1];
            if (sorted[i].Offset < prev.Offset + prev.ByteSize)
                throw new InvalidDataException($"{Path}: tensor '{sorted[i].Name}' at {sorted[i].Offset} overlaps tensor '{prev.Name}' [{prev.Offset}, {prev.Offset + prev.ByteSize})");
        }
    }

    public bool TryGetValue(string key, out GgufValue value) => _byKey.TryGetValue(key, out value!);

    /// <summary>The value of a metadata key; throws <see cref="KeyNotFoundException"/> naming the file when absent.</summary>
    public GgufValue this[string key] =>
        _byKey.TryGetValue(key, out var v) ? v : throw new KeyNotFoundException($"{Path}: no metadata key '{key}'");

    public bool TryGetTensor(string name, out GgufTensorInfo info) => _byName.TryGetValue(name, out info!);

    public GgufTensorInfo GetTensor(string name) =>
        _byName.TryGetValue(name, out var t) ? t : throw new KeyNotFoundException($"{Path}: no tensor '{name}'");

    /// <summary>The whole data of a tensor (at most 2 GiB; use the ranged overload for larger ones).</summary>
    public ReadOnlySpan<byte> GetTensorData(GgufTensorInfo tensor)
    {
        if (tensor.ByteSize > int.MaxValue)
            throw new InvalidOperationException($"{Path}: tensor '{tensor.Name}' has {tensor.ByteSize} bytes; read it in ranges");
        return GetTensorData(tensor, 0, (int)tensor.ByteSize);
    }

    /// <summary><paramref name="length"/> bytes of a tensor's data starting <paramref name="start"/> bytes into it.</summary>
    public ReadOnlySpan<byte> GetTensorData(GgufTensorInfo tensor, long start, int length)
    {
        if (_base == null) throw new ObjectDisposedException(nameof(GgufReader));
        if (!_byName.TryGetValue(tensor.Name, out var own) || !ReferenceEquals(own, tensor))
            throw new ArgumentException($"tensor '{tensor.Name}' does not belong to {Path}", nameof(tensor));
        if (start < 0 || length < 0 || start > tensor.ByteSize - length)
            throw new ArgumentOutOfRangeException(nameof(start), $"range [{start}, {start + length}) outside tensor '{tensor.Name}' of {tensor.ByteSize} bytes");
        return new ReadOnlySpan<byte>(_base + DataOffset + tensor.Offset + start, length);
    }

    public void Dispose()
    {
        ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }

    private void ReleasePointer()
    {
        if (_base != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _base = null;
        }
    }

    /// <summary>Bounds-checked little-endian reader over the mapped header.</summary>
    private struct Cursor(byte* p, long length, string path)
    {
        public long Position;
        public string? Context;

        public readonly InvalidDataException Error(string message) =>
            new($"{path}: {(Context != null ? Context + ": " : "")}{message} (at byte {Position})");

        private byte* Take(long n, string what)
        {
            if (n < 0 || n > length - Position)
                throw Error($"truncated: {what} needs {n} bytes, {Math.Max(0, length - Position)} left");
            byte* r = p + Position;
            Position += n;
            return r;
        }

        public uint U32(string what) => System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(Take(4, what), 4));
        public ulong U64(string what) => System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(Take(8, what), 8));
        public long I64(string what) => System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(new ReadOnlySpan<byte>(Take(8, what), 8));

        /// <summary>A u64 count whose entries need at least <paramref name="minEntryBytes"/> each.</summary>
        public long Count(string what, long minEntryBytes)
        {
            ulong n = U64(what);
            if (n > (ulong)((length - Position) / minEntryBytes))
                throw Error($"{what} {n} cannot fit in the remaining {length - Position} bytes");
            return (long)n;
        }

        public string String(string what)
        {
            ulong n = U64(what + " length");
            if (n > (ulong)(length - Position)) throw Error($"truncated: {what} of {n} bytes, {length - Position} left");
            byte* s = Take((long)n, what);
            try
            {
                return StrictUtf8.GetString(s, (int)n);
            }
            catch (DecoderFallbackException)
            {
                throw Error($"{what} is not valid UTF-8");
            }
            catch (ArgumentException)
            {
                throw Error($"{what} of {n} bytes is too long");
            }
        }

        public GgufValue Value(GgufValueType type, int depth)
        {
            switch (type)
            {
                case GgufValueType.UInt8: return GgufValue.UInt8(*Take(1, "u8"));
                case GgufValueType.Int8: return GgufValue.Int8((sbyte)*Take(1, "i8"));
                case GgufValueType.UInt16: return GgufValue.UInt16(Read<ushort>("u16"));
                case GgufValueType.Int16: return GgufValue.Int16(Read<short>("i16"));
                case GgufValueType.UInt32: return GgufValue.UInt32(Read<uint>("u32"));
                case GgufValueType.Int32: return GgufValue.Int32(Read<int>("i32"));
                case GgufValueType.Float32: return GgufValue.Float32(Read<float>("f32"));
                case GgufValueType.UInt64: return GgufValue.UInt64(Read<ulong>("u64"));
                case GgufValueType.Int64: return GgufValue.Int64(Read<long>("i64"));
                case GgufValueType.Float64: return GgufValue.Float64(Read<double>("f64"));
                case GgufValueType.Bool:
                {
                    byte b = *Take(1, "bool");
                    if (b > 1) throw Error($"bool value {b} is neither 0 nor 1");
                    return GgufValue.Bool(b != 0);
                }
                case GgufValueType.String: return GgufValue.String(String("string value"));
                case GgufValueType.Array: return Array(depth);
                default: throw Error($"unknown value type {(uint)type}");
            }
        }

        private T Read<T>(string what) where T : unmanaged =>
            System.Runtime.CompilerServices.Unsafe.ReadUnaligned<T>(Take(sizeof(T), what));

        private GgufValue Array(int depth)
        {
            if (depth > 8) throw Error("arrays nested too deeply");
            var element = (GgufValueType)U32("array element type");
            long minSize = element switch
            {
                GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
                GgufValueType.UInt16 or GgufValueType.Int16 => 2,
                GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
                GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 or GgufValueType.String => 8,
                GgufValueType.Array => 12,
                _ => throw Error($"unknown array element type {(uint)element}"),
            };
            long count = Count("array length", minSize);
            if (count > System.Array.MaxLength) throw Error($"array of {count} elements is too large");
            int n = (int)count;
            switch (element)
            {
                case GgufValueType.UInt8: return GgufValue.Array(Block<byte>(n));
                case GgufValueType.Int8: return GgufValue.Array(Block<sbyte>(n));
                case GgufValueType.UInt16: return GgufValue.Array(Block<ushort>(n));
                case GgufValueType.Int16: return GgufValue.Array(Block<short>(n));
                case GgufValueType.UInt32: return GgufValue.Array(Block<uint>(n));
                case GgufValueType.Int32: return GgufValue.Array(Block<int>(n));
                case GgufValueType.Float32: return GgufValue.Array(Block<float>(n));
                case GgufValueType.UInt64: return GgufValue.Array(Block<ulong>(n));
                case GgufValueType.Int64: return GgufValue.Array(Block<long>(n));
                case GgufValueType.Float64: return GgufValue.Array(Block<double>(n));
                case GgufValueType.Bool:
                {
                    var raw = Block<byte>(n);
                    var r = new bool[n];
                    for (int i = 0; i < n; i++)
                    {
                        if (raw[i] > 1) throw Error($"bool array element {i} is {raw[i]}");
                        r[i] = raw[i] != 0;
                    }
                    return GgufValue.Array(r);
                }
                case GgufValueType.String:
                {
                    var r = new string[n];
                    for (int i = 0; i < n; i++) r[i] = String($"string array element {i}");
                    return GgufValue.Array(r);
                }
                default:
                {
                    var r = new GgufValue[n];
                    // nested arrays carry no per-element type tag: each is element type, count, items
                    for (int i = 0; i < n; i++) r[i] = Array(depth + 1);
                    return GgufValue.Array(r);
                }
            }
        }

        private T[] Block<T>(int n) where T : unmanaged
        {
            byte* src = Take((long)n * sizeof(T), $"array of {n} x {typeof(T).Name}");
            var r = new T[n];
            new ReadOnlySpan<T>(src, n).CopyTo(r); // GGUF is little-endian, as is every platform .NET runs this on
            return r;
        }
    }
}
