using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Converter.Tensors;

namespace Converter.Formats.Safetensors;

/// <summary>
/// Parses and validates a safetensors header: 8-byte little-endian length, JSON object, data region.
/// Every check that can catch a truncated or lying file is done here, before any tensor is read.
/// </summary>
public static class SafetensorsHeader
{
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    /// <summary>Parses the header of <paramref name="path"/>; <paramref name="fileLength"/> is the file's size.</summary>
    public static (IReadOnlyList<TensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata, long DataStart)
        Read(string path, Stream stream, long fileLength)
    {
        if (fileLength < 8)
            throw Bad(path, $"file is {fileLength} bytes, shorter than the 8-byte header length (truncated?)");
        Span<byte> lenBytes = stackalloc byte[8];
        stream.ReadExactly(lenBytes);
        ulong headerLen = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (headerLen > MaxHeaderBytes)
            throw Bad(path, $"header length {headerLen} exceeds the {MaxHeaderBytes}-byte limit");
        if ((long)headerLen > fileLength - 8)
            throw Bad(path, $"header length {headerLen} is larger than the file ({fileLength} bytes; truncated?)");
        var json = new byte[headerLen];
        stream.ReadExactly(json);
        long dataStart = 8 + (long)headerLen;
        return (Parse(path, json, dataStart, fileLength - dataStart, out var meta), meta, dataStart);
    }

    internal static List<TensorInfo> Parse(string path, ReadOnlySpan<byte> json, long dataStart, long dataLength,
        out Dictionary<string, string> metadata)
    {
        metadata = new Dictionary<string, string>();
        // JsonDocument accepts invalid UTF-8 inside strings and only fails when a name is read (not as a JsonException)
        if (!System.Text.Unicode.Utf8.IsValid(json))
            throw Bad(path, "header is not valid UTF-8");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json.ToArray(), new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw Bad(path, $"header is not valid JSON ({e.Message})");
        }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
            throw Bad(path, "header JSON is not an object");

        var tensors = new List<TensorInfo>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            ParseEntries(path, doc.RootElement, dataStart, tensors, seen, metadata);
        }
        catch (InvalidOperationException)
        {
            // an escape such as "\ud800" (a lone surrogate) is valid JSON but no text
            throw Bad(path, "header has a string that is not valid text (a lone surrogate escape)");
        }
        ValidateLayout(path, tensors, dataStart, dataLength);
        return tensors;
    }

    private static void ParseEntries(string path, JsonElement root, long dataStart, List<TensorInfo> tensors, HashSet<string> seen,
        Dictionary<string, string> metadata)
    {
        foreach (var prop in root.EnumerateObject())
        {
            if (!seen.Add(prop.Name))
                throw Bad(path, $"tensor '{prop.Name}' appears twice in the header");
            if (prop.Name == "__metadata__")
            {
                if (prop.Value.ValueKind != JsonValueKind.Object)
                    throw Bad(path, "__metadata__ is not an object");
                foreach (var m in prop.Value.EnumerateObject())
                    metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                continue;
            }
            tensors.Add(ParseEntry(path, prop.Name, prop.Value, dataStart));
        }
    }

    private static TensorInfo ParseEntry(string path, string name, JsonElement e, long dataStart)
    {
        if (e.ValueKind != JsonValueKind.Object)
            throw Bad(path, $"tensor '{name}': entry is not an object");
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw Bad(path, $"tensor '{name}': missing dtype");
        if (!DTypeInfo.TryParseSafetensorsName(dt.GetString()!, out var dtype))
            throw Bad(path, $"tensor '{name}': unknown dtype '{dt.GetString()}'");
        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw Bad(path, $"tensor '{name}': missing shape");
        var shape = new long[sh.GetArrayLength()];
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out var v) || v < 0)
                throw Bad(path, $"tensor '{name}': invalid shape dimension {d.GetRawText()}");
            shape[i++] = v;
        }
        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Bad(path, $"tensor '{name}': data_offsets must be [begin, end]");
        long begin = off[0].TryGetInt64(out var b) ? b : -1, end = off[1].TryGetInt64(out var en) ? en : -1;
        if (begin < 0 || end < begin)
            throw Bad(path, $"tensor '{name}': invalid data_offsets [{off[0].GetRawText()}, {off[1].GetRawText()}]");
        long expected = DTypeInfo.SizeOf(dtype);
        try
        {
            foreach (var d in shape) expected = checked(expected * d);
        }
        catch (OverflowException)
        {
            throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] overflows");
        }
        if (end - begin != expected)
            throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] x {dtype} is {expected} bytes but data_offsets span {end - begin}");
        return new TensorInfo(name, dtype, shape, path, dataStart + begin, end - begin);
    }

    /// <summary>Offsets must tile the data region exactly: no gaps, no overlaps, nothing past the end.</summary>
    private static void ValidateLayout(string path, List<TensorInfo> tensors, long dataStart, long dataLength)
    {
        var sorted = tensors.ToArray();
        Array.Sort(sorted, (a, b) => a.FileOffset != b.FileOffset ? a.FileOffset.CompareTo(b.FileOffset) : a.ByteLength.CompareTo(b.ByteLength));
        long cursor = dataStart;
        foreach (var t in sorted)
        {
            if (t.FileOffset + t.ByteLength > dataStart + dataLength)
                throw Bad(path, $"tensor '{t.Name}': data_offsets end at {t.FileOffset + t.ByteLength - dataStart}, past the data region ({dataLength} bytes; truncated?)");
            if (t.FileOffset < cursor)
                throw Bad(path, $"tensor '{t.Name}': data overlaps the previous tensor");
            if (t.FileOffset > cursor)
                throw Bad(path, $"tensor '{t.Name}': gap of {t.FileOffset - cursor} bytes before it in the data region");
            cursor = t.FileOffset + t.ByteLength;
        }
        if (cursor != dataStart + dataLength)
            throw Bad(path, $"data region is {dataLength} bytes but tensors cover {cursor - dataStart} (trailing bytes or truncated file)");
    }

    internal static InvalidDataException Bad(string path, string message) => new($"{path}: {message}");

    /// <summary>Serialises a header for the given entries (in order), padded with spaces to 8 bytes as safetensors does.</summary>
    public static byte[] Build(IReadOnlyList<(string Name, DType DType, long[] Shape, long Begin, long End)> entries,
        IReadOnlyDictionary<string, string>? metadata)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var kv in metadata.OrderBy(k => k.Key, StringComparer.Ordinal)) w.WriteString(kv.Key, kv.Value);
                w.WriteEndObject();
            }
            foreach (var e in entries)
            {
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", DTypeInfo.ToSafetensorsName(e.DType));
                w.WriteStartArray("shape");
                foreach (var d in e.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(e.Begin);
                w.WriteNumberValue(e.End);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        int len = (int)ms.Length, padded = (len + 7) & ~7;
        var result = new byte[padded];
        ms.GetBuffer().AsSpan(0, len).CopyTo(result);
        result.AsSpan(len).Fill((byte)' ');
        return result;
    }
}
