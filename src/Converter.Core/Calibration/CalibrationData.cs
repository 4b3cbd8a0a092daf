using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Tensors;

namespace Converter.Calibration;

/// <summary>
/// What `converter calibrate` records for one model, in a folder:
/// <list type="bullet">
/// <item><c>calibration.json</c>: identity (model_type, config fingerprint, expert counts), token counts, file list.</item>
/// <item><c>routing.safetensors</c>: per MoE layer L, <c>topk.L</c> int32 [tokens, k] (selected experts per token)
/// and <c>counts.L</c> int64 [n_routed_experts] (tokens routed to each expert).</item>
/// <item><c>stats/*.safetensors</c>: per-linear input statistics written by quantizer-specific producers (Hessians
/// <c>X^T X</c>, absmax per channel, activation samples); their names are listed in calibration.json.</item>
/// </list>
/// Consumers refuse a folder whose fingerprint does not match the model they work on.
/// </summary>
public sealed class CalibrationData
{
    public const string ManifestName = "calibration.json";
    public const string RoutingName = "routing.safetensors";

    public required string ModelType { get; init; }
    public required string ConfigFingerprint { get; init; }
    public required int RoutedExperts { get; init; }
    public required int ExpertsPerToken { get; init; }
    public required int Sequences { get; init; }
    public required int SequenceLength { get; init; }
    /// <summary>MoE layer index to [tokens * k] selected expert ids.</summary>
    public required IReadOnlyDictionary<int, int[]> TopK { get; init; }
    public JsonObject Extra { get; init; } = new();

    public int Tokens => Sequences * SequenceLength;

    /// <summary>Tokens routed to each expert of a layer (a token counts once per selected expert).</summary>
    public long[] ExpertCounts(int layer)
    {
        var counts = new long[RoutedExperts];
        foreach (var e in TopK[layer]) counts[e]++;
        return counts;
    }

    /// <summary>A fingerprint of the config fields that decide tensor shapes and routing (not of the weights' dtype).</summary>
    public static string Fingerprint(ModelArchitecture arch)
    {
        var c = (JsonObject)arch.Config.Root.DeepClone();
        c.Remove("quantization_config");
        c.Remove("torch_dtype");
        c.Remove("dtype");
        c.Remove("transformers_version");
        c.Remove("_name_or_path");
        var sorted = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var kv in c) sorted[kv.Key] = kv.Value?.ToJsonString() ?? "null";
        var text = string.Join("\n", sorted.Select(kv => kv.Key + "=" + kv.Value));
        return Convert.ToHexString(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text)))[..16].ToLowerInvariant();
    }

    /// <summary>Throws when this calibration was recorded on a model of another config.</summary>
    public void CheckMatches(ModelArchitecture arch, string folder)
    {
        var fp = Fingerprint(arch);
        if (ModelType != arch.ModelType || ConfigFingerprint != fp || RoutedExperts != arch.NumRoutedExperts)
            throw new InvalidDataException(
                $"{Path.Combine(folder, ManifestName)}: calibration was recorded on a {ModelType} model with config {ConfigFingerprint} " +
                $"and {RoutedExperts} experts, not on this {arch.ModelType} model (config {fp}, {arch.NumRoutedExperts} experts)");
    }

    public void Save(string folder)
    {
        Directory.CreateDirectory(folder);
        var layers = TopK.Keys.Order().ToList();
        var plan = new List<TensorSpec>();
        foreach (var l in layers)
        {
            plan.Add(new TensorSpec($"topk.{l}", DType.I32, [TopK[l].Length / ExpertsPerToken, ExpertsPerToken]));
            plan.Add(new TensorSpec($"counts.{l}", DType.I64, [RoutedExperts]));
        }
        var routingDir = Path.Combine(folder, ".routing");
        using (var w = new SafetensorsWriter(routingDir, plan, long.MaxValue, overwrite: true))
        {
            foreach (var l in layers)
            {
                w.Write($"topk.{l}", MemoryMarshal.AsBytes(TopK[l].AsSpan()));
                w.Write($"counts.{l}", MemoryMarshal.AsBytes(ExpertCounts(l).AsSpan()));
            }
            w.Commit();
        }
        File.Move(Path.Combine(routingDir, "model.safetensors"), Path.Combine(folder, RoutingName), overwrite: true);
        Directory.Delete(routingDir, true);

        var manifest = new JsonObject
        {
            ["model_type"] = ModelType,
            ["config_fingerprint"] = ConfigFingerprint,
            ["n_routed_experts"] = RoutedExperts,
            ["num_experts_per_tok"] = ExpertsPerToken,
            ["sequences"] = Sequences,
            ["sequence_length"] = SequenceLength,
            ["moe_layers"] = new JsonArray(layers.Select(l => (JsonNode)l).ToArray()),
            ["extra"] = Extra.DeepClone(),
        };
        File.WriteAllText(Path.Combine(folder, ManifestName), manifest.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    public static CalibrationData Load(string folder)
    {
        var manifestPath = Path.Combine(folder, ManifestName);
        if (!File.Exists(manifestPath))
            throw new FileNotFoundException($"{folder}: not a calibration folder (no {ManifestName}; run `converter calibrate`)", manifestPath);
        JsonObject m;
        try { m = JsonNode.Parse(File.ReadAllText(manifestPath)) as JsonObject ?? throw new InvalidDataException($"{manifestPath}: not a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{manifestPath}: not valid JSON ({e.Message})"); }
        var cfg = new ConfigJson(manifestPath, m);
        int k = cfg.Int("num_experts_per_tok"), experts = cfg.Int("n_routed_experts");
        var topk = new Dictionary<int, int[]>();
        using (var f = SafetensorsFile.Open(Path.Combine(folder, RoutingName)))
        {
            foreach (var node in m["moe_layers"] as JsonArray ?? throw cfg.Missing("moe_layers"))
            {
                int layer = cfg.IntValue("moe_layers", node!);
                var name = $"topk.{layer}";
                if (!f.Contains(name)) throw new InvalidDataException($"{f.Path}: tensor '{name}' is missing");
                var info = f.Info(name);
                if (info.DType != DType.I32 || info.Shape.Length != 2 || info.Shape[1] != k)
                    throw new InvalidDataException($"{f.Path}: tensor '{name}' is {info.DType} {info.ShapeText}, expected I32 [tokens, {k}]");
                using var d = f.Read(info);
                var ids = d.As<int>().ToArray();
                foreach (var e in ids)
                    if ((uint)e >= (uint)experts) throw new InvalidDataException($"{f.Path}: tensor '{name}' holds expert id {e} outside [0, {experts})");
                topk[layer] = ids;
            }
        }
        return new CalibrationData
        {
            ModelType = cfg.String("model_type", ""),
            ConfigFingerprint = cfg.String("config_fingerprint", ""),
            RoutedExperts = experts,
            ExpertsPerToken = k,
            Sequences = cfg.Int("sequences"),
            SequenceLength = cfg.Int("sequence_length"),
            TopK = topk,
            Extra = m["extra"] as JsonObject ?? new JsonObject(),
        };
    }
}
