using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Tests;

/// <summary>Writes edited copies of reference checkpoints (dropped, renamed or reshaped tensors; edited config).</summary>
public static class TestCheckpoints
{
    /// <summary>A tensor of the copy: a null result from the edit drops it.</summary>
    public sealed record Entry(string Name, DType DType, long[] Shape, byte[] Bytes);

    public static void Copy(string srcDir, string destDir, Func<Entry, Entry?>? edit = null,
        Action<JsonObject>? editConfig = null, IEnumerable<Entry>? extra = null)
    {
        using var src = SafetensorsCheckpoint.Open(srcDir);
        var entries = new List<Entry>();
        foreach (var name in src.Names)
        {
            var info = src.Info(name);
            using var data = src.Read(name);
            var e = new Entry(name, info.DType, info.Shape, data.Bytes.ToArray());
            var edited = edit == null ? e : edit(e);
            if (edited != null) entries.Add(edited);
        }
        if (extra != null) entries.AddRange(extra);
        using (var w = new SafetensorsWriter(destDir, entries.Select(e => new TensorSpec(e.Name, e.DType, e.Shape)).ToList(), 4_000_000, overwrite: true))
        {
            foreach (var e in entries) w.Write(e.Name, e.Bytes);
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(srcDir, "config.json")))!.AsObject();
            editConfig?.Invoke(config);
            File.WriteAllText(Path.Combine(w.StagingDirectory, "config.json"), config.ToJsonString());
            w.Commit();
        }
    }
}
