using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Converter.Numerics.Int4;

namespace Converter.Formats.CompressedTensors;

/// <summary>
/// The <c>quantization_config</c> of a compressed-tensors <c>pack-quantized</c> INT4 weight-only checkpoint, as
/// llm-compressor writes it (and Kimi-K2-Thinking ships): one config group whose weights are
/// {num_bits 4, type int, strategy group, group_size, symmetric}, targets (usually ["Linear"]) and an ignore list
/// of module names (or "re:" regular expressions) kept in high precision.
/// </summary>
public sealed record CompressedTensorsConfig(int GroupSize, bool Symmetric, IReadOnlyList<string> Targets, IReadOnlyList<string> Ignore,
    string Observer = "minmax", string? ActOrder = null)
{
    public const string QuantMethod = "compressed-tensors", Format = "pack-quantized";

    public Int4Scheme Scheme => new(GroupSize, Symmetric);

    public static bool IsCompressedTensors(JsonObject? q) =>
        q?["quant_method"] is JsonValue v && v.GetValueKind() == JsonValueKind.String && v.GetValue<string>() == QuantMethod;

    public JsonObject ToJson() => new()
    {
        ["config_groups"] = new JsonObject
        {
            ["group_0"] = new JsonObject
            {
                ["format"] = Format,
                ["input_activations"] = null,
                ["output_activations"] = null,
                ["targets"] = new JsonArray(Targets.Select(t => (JsonNode)t).ToArray()),
                ["weights"] = new JsonObject
                {
                    ["actorder"] = ActOrder,
                    ["block_structure"] = null,
                    ["dynamic"] = false,
                    ["group_size"] = GroupSize,
                    ["num_bits"] = 4,
                    ["observer"] = Observer,
                    ["observer_kwargs"] = new JsonObject(),
                    ["strategy"] = "group",
                    ["symmetric"] = Symmetric,
                    ["type"] = "int",
                },
            },
        },
        ["format"] = Format,
        ["global_compression_ratio"] = null,
        ["ignore"] = new JsonArray(Ignore.Select(t => (JsonNode)t).ToArray()),
        ["kv_cache_scheme"] = null,
        ["quant_method"] = QuantMethod,
        ["quantization_status"] = "compressed",
    };

    /// <summary>Parses and checks a quantization_config; anything but 4-bit int group weight-only pack-quantized is refused with a reason.</summary>
    public static CompressedTensorsConfig Parse(JsonObject q, string path)
    {
        InvalidDataException Bad(string why) => new($"{path}: quantization_config {why}");
        string Str(JsonObject o, string key, string? fallback = null)
        {
            var n = o[key];
            if (n is null) return fallback ?? throw Bad($"has no '{key}'");
            return n is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : throw Bad($"'{key}' is not a string");
        }
        if (!IsCompressedTensors(q)) throw Bad("is not compressed-tensors");
        var format = Str(q, "format", "");
        var groups = q["config_groups"] as JsonObject ?? throw Bad("has no config_groups");
        if (groups.Count != 1) throw Bad($"has {groups.Count} config groups; only one INT4 group is supported");
        var g = groups.First().Value as JsonObject ?? throw Bad("config group is not an object");
        var groupFormat = Str(g, "format", format);
        if (groupFormat != Format) throw Bad($"format '{groupFormat}' is not supported (only {Format})");
        if (g["input_activations"] is not null) throw Bad("quantizes input activations; only weight-only INT4 is supported");
        var w = g["weights"] as JsonObject ?? throw Bad("group has no weights");
        int Int(string key) => w[key] is JsonValue v && v.TryGetValue<int>(out var i) ? i : throw Bad($"weights.{key} is missing or not an integer");
        bool Bool(string key, bool fallback) => w[key] is null ? fallback : w[key] is JsonValue v && v.TryGetValue<bool>(out var b) ? b : throw Bad($"weights.{key} is not a boolean");
        if (Int("num_bits") != 4) throw Bad($"weights.num_bits is {Int("num_bits")}; only 4 is supported");
        if (Str(w, "type", "int") != "int") throw Bad("weights.type is not int");
        var strategy = Str(w, "strategy", "group");
        if (strategy != "group") throw Bad($"weights.strategy '{strategy}' is not supported (only group)");
        int groupSize = Int("group_size");
        if (groupSize <= 0 || groupSize % 8 != 0) throw Bad($"weights.group_size {groupSize} is not supported (a positive multiple of 8)");
        string? actorder = w["actorder"] is JsonValue av && av.GetValueKind() == JsonValueKind.String ? av.GetValue<string>() : null;
        if (actorder == "group") throw Bad("weights.actorder 'group' (g_idx) is not supported; static groups only");
        List<string> Strings(JsonArray a, string key)
        {
            var r = new List<string>(a.Count);
            foreach (var n in a)
                r.Add(n is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : throw Bad($"'{key}' holds {n?.ToJsonString() ?? "null"}, not a string"));
            return r;
        }
        var targets = g["targets"] is JsonArray ta ? Strings(ta, "targets") : throw Bad("group has no targets");
        var ignore = q["ignore"] is JsonArray ia ? Strings(ia, "ignore") : [];
        foreach (var i in ignore)
        {
            if (!i.StartsWith("re:", StringComparison.Ordinal)) continue;
            try { _ = new Regex("^(?:" + i[3..] + ")"); }
            catch (ArgumentException e) { throw Bad($"ignore pattern '{i}' is not a valid regular expression ({e.Message})"); }
        }
        return new CompressedTensorsConfig(groupSize, Bool("symmetric", true), targets, ignore, Str(w, "observer", "minmax"), actorder);
    }

    /// <summary>True when a module (e.g. "model.layers.3.self_attn.o_proj") is in the ignore list: an exact name, or "re:" + a pattern matched at the start of the name (Python re.match, as compressed-tensors does).</summary>
    public bool IsIgnored(string module)
    {
        foreach (var i in Ignore)
        {
            if (i.StartsWith("re:", StringComparison.Ordinal) ? Regex.IsMatch(module, "^(?:" + i[3..] + ")") : i == module) return true;
        }
        return false;
    }
}
