using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Models;
using Converter.Pipelines;

namespace Converter.Cli.Commands;

public static class InspectCommand
{
    public static Command Create()
    {
        var dir = new Argument<string>("model-dir") { Description = "Hugging Face model folder (config.json + safetensors)" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of a table" };
        var cmd = new Command("inspect", "Report architecture, parameter counts, dtypes, shards, quantization and estimated output sizes")
        {
            dir, json,
        };
        cmd.SetAction(parse => CommandRunner.Run(parse, _ =>
        {
            using var ckpt = ModelCheckpoint.Open(parse.GetValue(dir)!);
            var report = ModelInspector.Inspect(ckpt);
            Console.WriteLine(parse.GetValue(json) ? ToJson(report).ToJsonString(new JsonSerializerOptions { WriteIndented = true }) : ToText(report));
            return CommandRunner.Ok;
        }));
        return cmd;
    }

    private static string Human(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F2} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:F1} KiB",
        _ => $"{bytes} B",
    };

    private static string ToText(InspectReport r)
    {
        var w = new StringWriter();
        w.WriteLine($"model          {r.Directory}");
        w.WriteLine($"architecture   {r.ModelType}, {r.Layers} layers (+{r.MtpLayers} MTP), hidden {r.HiddenSize}, vocab {r.VocabSize}");
        w.WriteLine($"experts        {r.RoutedExperts} routed, top-{r.ExpertsPerToken}, {r.SharedExperts} shared, {r.ExpertGroups} groups (top-{r.TopkGroups}); MoE layers [{string.Join(", ", r.MoeLayers)}]");
        foreach (var f in r.Facts) w.WriteLine($"{f.Label,-14} {f.Value}");
        w.WriteLine($"parameters     {r.TotalParameters:N0} total, {r.ActiveParametersPerToken:N0} active per token, {r.MtpParameters:N0} in MTP layers");
        w.WriteLine($"weights        {r.Layout}{(r.QuantizationConfig is null ? "" : " " + r.QuantizationConfig.ToJsonString())}");
        w.WriteLine($"dtypes         {string.Join(", ", r.TensorsByDType.Select(kv => $"{kv.Key} x{kv.Value}"))}");
        w.WriteLine($"shards         {r.Shards.Count}, {Human(r.StoredBytes)} of tensor data");
        foreach (var (file, bytes, n) in r.Shards) w.WriteLine($"  {file,-40} {Human(bytes),12} {n,6} tensors");
        w.WriteLine("estimated size (main graph)");
        foreach (var (format, bytes) in r.EstimatedSizes) w.WriteLine($"  {format,-40} {Human(bytes),12}");
        foreach (var n in r.Notes) w.WriteLine($"note           {n}");
        return w.ToString();
    }

    private static JsonObject ToJson(InspectReport r) => new()
    {
        ["directory"] = r.Directory,
        ["model_type"] = r.ModelType,
        ["weight_layout"] = r.Layout.ToString(),
        ["quantization_config"] = r.QuantizationConfig?.DeepClone(),
        ["layers"] = r.Layers,
        ["mtp_layers"] = r.MtpLayers,
        ["hidden_size"] = r.HiddenSize,
        ["vocab_size"] = r.VocabSize,
        ["routed_experts"] = r.RoutedExperts,
        ["experts_per_token"] = r.ExpertsPerToken,
        ["shared_experts"] = r.SharedExperts,
        ["expert_groups"] = r.ExpertGroups,
        ["topk_groups"] = r.TopkGroups,
        ["family"] = new JsonObject(r.Facts.Select(f => KeyValuePair.Create(f.Label.Replace(' ', '_'), (JsonNode?)f.Value))),
        ["moe_layers"] = new JsonArray(r.MoeLayers.Select(l => (JsonNode)l).ToArray()),
        ["total_parameters"] = r.TotalParameters,
        ["active_parameters_per_token"] = r.ActiveParametersPerToken,
        ["mtp_parameters"] = r.MtpParameters,
        ["tensors_by_dtype"] = new JsonObject(r.TensorsByDType.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
        ["shards"] = new JsonArray(r.Shards.Select(s => (JsonNode)new JsonObject { ["file"] = s.File, ["bytes"] = s.Bytes, ["tensors"] = s.Tensors }).ToArray()),
        ["stored_bytes"] = r.StoredBytes,
        ["estimated_bytes"] = new JsonObject(r.EstimatedSizes.Select(e => KeyValuePair.Create(e.Format, (JsonNode?)e.Bytes))),
        ["notes"] = new JsonArray(r.Notes.Select(n => (JsonNode)n).ToArray()),
    };
}
