using System.Globalization;
using Converter.Formats.Onnx.Proto;
using Microsoft.Win32.SafeHandles;

namespace Converter.Formats.Onnx;

/// <summary>
/// The external-data initializers of a model folder written by <see cref="OnnxExternalDataWriter"/>: where each one's
/// bytes lie in <c>model.onnx.data</c>, with its type and shape, so another export can copy them instead of computing
/// them again.
/// </summary>
public sealed class OnnxExternalInitializers : IDisposable
{
    public readonly record struct Entry(int Type, long[] Dims, long Offset, long Length);

    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);

    public string DataPath { get; }
    public SafeFileHandle Data { get; }

    public OnnxExternalInitializers(string folder)
    {
        string modelPath = Path.Combine(folder, OnnxExternalDataWriter.ModelFileName);
        DataPath = Path.Combine(folder, OnnxExternalDataWriter.DataFileName);
        ModelProto model;
        using (var fs = File.OpenRead(modelPath)) model = ModelProto.Parser.ParseFrom(fs);
        Data = File.OpenHandle(DataPath, FileMode.Open, FileAccess.Read, FileShare.Read);
        long size = RandomAccess.GetLength(Data);
        foreach (var t in model.Graph.Initializer)
        {
            if (t.DataLocation != TensorProto.Types.DataLocation.External) continue;
            string? location = null, offset = null, length = null;
            foreach (var kv in t.ExternalData)
                switch (kv.Key)
                {
                    case "location": location = kv.Value; break;
                    case "offset": offset = kv.Value; break;
                    case "length": length = kv.Value; break;
                }
            if (location != OnnxExternalDataWriter.DataFileName || offset == null || length == null) continue;
            var e = new Entry(t.DataType, t.Dims.ToArray(), long.Parse(offset, CultureInfo.InvariantCulture), long.Parse(length, CultureInfo.InvariantCulture));
            if (e.Offset < 0 || e.Length < 0 || e.Offset + e.Length > size)
                throw new InvalidDataException($"{modelPath}: initializer '{t.Name}' lies at [{e.Offset}, +{e.Length}), outside {DataPath} ({size} bytes)");
            _entries[t.Name] = e;
        }
    }

    /// <summary>The initializer called <paramref name="name"/> when it has exactly this type and shape.</summary>
    public bool TryGet(string name, int type, long[] dims, out Entry entry) =>
        _entries.TryGetValue(name, out entry) && entry.Type == type && entry.Dims.AsSpan().SequenceEqual(dims);

    public void Dispose() => Data.Dispose();
}
