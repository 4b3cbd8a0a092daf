using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Formats.CompressedTensors;
using Converter.Formats.Gguf;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Runtime;
using Converter.Sharding;
using Converter.Tensors;
using Converter.Verification;

namespace Converter.Fuzz;

/// <summary>
/// One fuzz target per parser: each takes the raw bytes of one input file, runs the parser the CLI runs on it (and
/// what the CLI then reads from the result), and lets every exception escape. <see cref="IsBadInput"/> tells the
/// documented bad-input exceptions (the CLI's exit 2) from crashes. The AFL++ harness (Program.cs) and the test
/// suite's replay (FuzzReplayTests) share this file, so a crash found by AFL++ fails the suite until it is fixed.
/// </summary>
public sealed class FuzzTargets : IDisposable
{
    /// <summary>Target names, as tools/fuzz.sh and the corpus/ and regressions/ folders spell them.</summary>
    public static readonly string[] Names = ["safetensors", "index", "config", "compressed-tensors", "gguf", "golden", "onnx", "placement"];

    private readonly string _work;

    /// <param name="workDirectory">A private scratch folder (created; deleted on dispose).</param>
    public FuzzTargets(string workDirectory)
    {
        _work = workDirectory;
        Directory.CreateDirectory(_work);
        Directory.CreateDirectory(Dir("index"));
        foreach (var (file, bytes) in IndexShards()) File.WriteAllBytes(Path.Combine(Dir("index"), file), bytes);
        Directory.CreateDirectory(Dir("config"));
    }

    private string Dir(string name) => Path.Combine(_work, name);

    /// <summary>The exceptions the CLI reports as bad input naming the file: anything else escaping a parser is a bug.</summary>
    public static bool IsBadInput(Exception e) => e is InvalidDataException or NotSupportedException or FileNotFoundException;

    public void Run(string target, byte[] data)
    {
        switch (target)
        {
            case "safetensors": Safetensors(data); break;
            case "index": Index(data); break;
            case "config": Config(data); break;
            case "compressed-tensors": CompressedTensors(data); break;
            case "gguf": Gguf(data); break;
            case "golden": Golden(data); break;
            case "onnx": Onnx(data); break;
            case "placement": Placement(data); break;
            default: throw new ArgumentException($"unknown fuzz target '{target}' (targets: {string.Join(", ", Names)})");
        }
    }

    /// <summary>A shard's header: length prefix, JSON, offsets against the data region.</summary>
    private static void Safetensors(byte[] data)
    {
        var (tensors, _, _) = SafetensorsHeader.Read("fuzz.safetensors", new MemoryStream(data, false), data.Length);
        foreach (var t in tensors) _ = t.ElementCount;
    }

    /// <summary>model.safetensors.index.json beside two small valid shards (<see cref="IndexShards"/>).</summary>
    private void Index(byte[] data)
    {
        File.WriteAllBytes(Path.Combine(Dir("index"), SafetensorsCheckpoint.IndexFileName), data);
        using var ckpt = SafetensorsCheckpoint.Open(Dir("index"));
        foreach (var n in ckpt.Names) _ = ckpt.Info(n);
    }

    /// <summary>config.json through the family registry, then what inspect derives from it (tensor map, facts, routing).</summary>
    private void Config(byte[] data)
    {
        File.WriteAllBytes(Path.Combine(Dir("config"), "config.json"), data);
        var arch = ArchitectureRegistry.Load(Dir("config"));
        foreach (var t in arch.ExpectedTensors()) arch.Classify(t.Name);
        _ = arch.Facts();
        for (int l = 0; l < arch.NumLayers; l++) _ = arch.IsMoeLayer(l);
    }

    /// <summary>A quantization_config object (config.json's JSON errors are the config target's).</summary>
    private static void CompressedTensors(byte[] data)
    {
        JsonNode? node;
        try { node = ConfigJson.Parse(System.Text.Encoding.UTF8.GetString(data)); }
        catch (JsonException) { return; }
        if (node is not JsonObject q) return;
        var c = CompressedTensorsConfig.Parse(q, "config.json");
        _ = c.IsIgnored("model.layers.0.mlp.experts.0.gate_proj");
        _ = c.IsIgnored("lm_head");
        _ = c.ToJson().ToJsonString();
    }

    /// <summary>A GGUF file: the reader, every value and tensor range, and what verify reads from it before running it.</summary>
    private void Gguf(byte[] data)
    {
        var path = Path.Combine(_work, "fuzz.gguf");
        File.WriteAllBytes(path, data);
        using (var r = GgufReader.Open(path))
        {
            foreach (var kv in r.Metadata) _ = kv.Value.ToString();
            foreach (var t in r.Tensors)
                if (t.ByteSize <= int.MaxValue) _ = r.GetTensorData(t).Length;
        }
        _ = ArtifactModelInfo.Read(path, ArtifactKind.Gguf);
    }

    /// <summary>A golden eval.safetensors as verify loads it.</summary>
    private void Golden(byte[] data)
    {
        var path = Path.Combine(_work, "golden.safetensors");
        File.WriteAllBytes(path, data);
        _ = GoldenSet.Load(path);
    }

    /// <summary>model.onnx as verify reads its metadata before running it.</summary>
    private void Onnx(byte[] data)
    {
        var path = Path.Combine(_work, "model.onnx");
        File.WriteAllBytes(path, data);
        _ = ArtifactModelInfo.Read(path, ArtifactKind.Onnx);
    }

    /// <summary>placement.json of a shard output.</summary>
    private void Placement(byte[] data)
    {
        var path = Path.Combine(_work, PlacementJson.FileName);
        File.WriteAllBytes(path, data);
        _ = PlacementJson.Read(path);
    }

    /// <summary>Two BF16 shards the index seeds name (model-0000N-of-00002.safetensors).</summary>
    public static IEnumerable<(string File, byte[] Bytes)> IndexShards()
    {
        static byte[] Shard(params (string Name, long[] Shape)[] tensors)
        {
            var entries = new List<(string, DType, long[], long, long)>();
            long at = 0;
            foreach (var (name, shape) in tensors)
            {
                long n = 2;
                foreach (var d in shape) n *= d;
                entries.Add((name, DType.BF16, shape, at, at + n));
                at += n;
            }
            var header = SafetensorsHeader.Build(entries, null);
            var file = new byte[8 + header.Length + at];
            System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(file.AsSpan(0, 8), header.Length);
            header.CopyTo(file, 8);
            return file;
        }
        yield return ("model-00001-of-00002.safetensors", Shard(("model.embed_tokens.weight", [4, 2]), ("model.norm.weight", [2])));
        yield return ("model-00002-of-00002.safetensors", Shard(("lm_head.weight", [4, 2])));
    }

    public void Dispose()
    {
        try { Directory.Delete(_work, true); }
        catch (IOException) { }
    }
}
