using System.Text.Json;
using System.Text.Json.Nodes;

namespace Converter.Models;

/// <summary>Typed, validating reads of a Hugging Face config.json; every error names the file and the field.</summary>
public sealed class ConfigJson
{
    public string Path { get; }
    public JsonObject Root { get; }

    public ConfigJson(string path, JsonObject root)
    {
        Path = path;
        Root = root;
    }

    public static ConfigJson Load(string modelDir)
    {
        var path = System.IO.Path.Combine(modelDir, "config.json");
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: config.json not found in the model folder", path);
        try
        {
            return Parse(File.ReadAllText(path)) is JsonObject o
                ? new ConfigJson(path, o)
                : throw new InvalidDataException($"{path}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({e.Message})");
        }
    }

    /// <summary>
    /// Parses JSON text refusing duplicate keys at parse time (a JsonException): JsonNode otherwise accepts them and throws
    /// an ArgumentException at the first lookup, far from the file.
    /// </summary>
    public static JsonNode? Parse(string text) =>
        JsonNode.Parse(text, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false, MaxDepth = 64 });

    public string? ModelType => Root["model_type"]?.GetValueKind() == JsonValueKind.String ? Root["model_type"]!.GetValue<string>() : null;

    public bool Has(string key) => Root.TryGetPropertyValue(key, out var v) && v is not null;

    public int Int(string key) => Has(key) ? IntValue(key, Root[key]!) : throw Missing(key);
    public int Int(string key, int fallback) => Has(key) ? IntValue(key, Root[key]!) : fallback;
    public int? IntOrNull(string key) => Has(key) ? IntValue(key, Root[key]!) : null;
    public double Double(string key) => Has(key) ? DoubleValue(key, Root[key]!) : throw Missing(key);
    public double Double(string key, double fallback) => Has(key) ? DoubleValue(key, Root[key]!) : fallback;
    public bool Bool(string key, bool fallback) => Has(key) ? BoolValue(key, Root[key]!) : fallback;
    public string String(string key, string fallback) => Has(key) ? StringValue(key, Root[key]!) : fallback;

    public int IntValue(string key, JsonNode n)
    {
        try
        {
            double d = Number(n);
            if (d != Math.Floor(d) || d < int.MinValue || d > int.MaxValue) throw new FormatException();
            return (int)d;
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            throw new InvalidDataException($"{Path}: '{key}' must be an integer, got {n.ToJsonString()}");
        }
    }

    public double DoubleValue(string key, JsonNode n)
    {
        try { return Number(n); }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            throw new InvalidDataException($"{Path}: '{key}' must be a number, got {n.ToJsonString()}");
        }
    }

    // JsonValue built in code holds its CLR type (int, double...); parsed ones hold a JsonElement: read both as text.
    private static double Number(JsonNode n) => n.GetValueKind() == JsonValueKind.Number
        ? double.Parse(n.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture)
        : throw new FormatException();

    public bool BoolValue(string key, JsonNode n)
    {
        try { return n.GetValue<bool>(); }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            throw new InvalidDataException($"{Path}: '{key}' must be true or false, got {n.ToJsonString()}");
        }
    }

    public string StringValue(string key, JsonNode n)
    {
        try { return n.GetValue<string>(); }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            throw new InvalidDataException($"{Path}: '{key}' must be a string, got {n.ToJsonString()}");
        }
    }

    public InvalidDataException Missing(string key) => new($"{Path}: required field '{key}' is missing");
    public InvalidDataException Invalid(string key, string why) => new($"{Path}: '{key}' {why}");
}
