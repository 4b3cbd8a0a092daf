using System.Globalization;
using System.Text.RegularExpressions;
using Converter.Formats.Gguf;
using Converter.Formats.Onnx.Proto;
using Converter.Verification;

namespace Converter.Runtime;

/// <summary>
/// What an artifact says about itself without running it: its weight format (ONNX <c>converter.weights</c> /
/// <c>converter.int4</c> metadata, GGUF <c>general.file_type</c> and tensor types), hence the verify preset that fits it,
/// and the model shapes it states (GGUF metadata), checked against a golden before anything runs.
/// </summary>
public sealed record ArtifactModelInfo(string Preset, string PresetReason, int? Vocab = null, int? Hidden = null, int? Layers = null,
    int? RoutedExperts = null, int? ExpertsPerToken = null)
{
    /// <summary>Reads <paramref name="path"/>; <paramref name="golden"/> (optional) tells a reference of the same FP8 weights.</summary>
    public static ArtifactModelInfo Read(string path, ArtifactKind kind, GoldenSet? golden = null) => kind switch
    {
        ArtifactKind.Gguf => FromGguf(path),
        ArtifactKind.ShardedOnnx => FromOnnx(Path.Combine(path, Converter.Pipelines.ShardPipeline.RankFolderName(0), "model.onnx"), golden),
        _ => FromOnnx(Directory.Exists(path) ? Path.Combine(path, "model.onnx") : path, golden),
    };

    private static ArtifactModelInfo FromOnnx(string modelPath, GoldenSet? golden)
    {
        if (!File.Exists(modelPath)) return new("fp32", "no model.onnx to read metadata from");
        ModelProto proto;
        try
        {
            using var fs = File.OpenRead(modelPath);
            proto = ModelProto.Parser.ParseFrom(fs);
        }
        catch (Google.Protobuf.InvalidProtocolBufferException)
        {
            return new("fp32", "model.onnx does not parse; running it will say why");
        }
        string? Meta(string key) => proto.MetadataProps.FirstOrDefault(p => p.Key == key)?.Value;
        string? weights = Meta("converter.weights");
        switch (weights)
        {
            case "fp8":
                return golden?.Identity.SourceWeights == "fp8-block"
                    ? new("fp8-exact", "ONNX converter.weights = fp8, golden computed from FP8 block weights")
                    : new("fp8", "ONNX converter.weights = fp8, golden not computed from the same FP8 weights");
            case "int4":
                var m = Regex.Match(Meta("converter.int4") ?? "", @"(\d+) dense projection");
                bool allLinear = m.Success && int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) > 0;
                return allLinear
                    ? new("int4-all-linear", $"ONNX converter.weights = int4 with dense projections in INT4 ({Meta("converter.int4")})")
                    : new("int4", $"ONNX converter.weights = int4, routed experts only ({Meta("converter.int4")})");
            case "fp32":
                return new("fp32", "ONNX converter.weights = fp32");
            default:
                return new("fp32", weights == null ? "ONNX model without converter.weights metadata" : $"ONNX converter.weights = {weights}");
        }
    }

    /// <summary>llama.h's enum llama_ftype to presets; null where the file type says nothing this project measures.</summary>
    private static string? FileTypePreset(uint fileType) => fileType switch
    {
        0 => "gguf-f32", 1 => "f16", 32 => "bf16", 7 => "q8_0", 2 => "q4_0", 3 => "q4_1", 8 => "q5_0", 9 => "q5_1",
        14 => "q4_k", 15 => "q4_k_m", 16 or 17 => "q5_k", 18 => "q6_k",
        10 or 11 or 12 or 13 or 25 or 30 => "report", // Q2_K, Q3_K_S/M/L, IQ4_NL, IQ4_XS: no measured limits (README table)
        _ => null,
    };

    private static ArtifactModelInfo FromGguf(string path)
    {
        GgufReader reader;
        try
        {
            reader = GgufReader.Open(path);
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or ArgumentException)
        {
            return new("gguf-f32", "the GGUF file does not parse; running it will say why");
        }
        using (reader)
        {
            int? U(string key) => reader.TryGetValue(key, out var v) && !v.IsArray ? Convert.ToInt32(v.Value, CultureInfo.InvariantCulture) : null;
            string? arch = reader.TryGetValue("general.architecture", out var a) ? a.Value as string : null;
            int? vocab = reader.TryGetTensor("token_embd.weight", out var emb) && emb.Dimensions.Count == 2 ? (int)emb.Dimensions[1]
                : reader.TryGetValue("tokenizer.ggml.tokens", out var toks) && toks.IsArray ? toks.ArrayLength : null;
            int? hidden = arch != null ? U(arch + ".embedding_length") : null;
            int? layers = arch != null ? U(arch + ".block_count") : null;
            int? experts = arch != null ? U(arch + ".expert_count") : null;
            int? used = arch != null ? U(arch + ".expert_used_count") : null;
            string preset, reason;
            if (U("general.file_type") is int ft && FileTypePreset((uint)ft) is { } p)
            {
                preset = p;
                reason = $"GGUF general.file_type = {ft}";
            }
            else
            {
                preset = GgufArtifactRunner.DefaultPreset(path);
                reason = "GGUF: the lowest-precision weight type";
            }
            if (preset == "report") reason += ": no measured limits for this type (REPORTED, not judged)";
            return new(preset, reason, vocab, hidden, layers, experts, used);
        }
    }
}
