using System.Text.Json;
using Converter.Formats.Gguf;

namespace Converter.Models.Tokenizers;

/// <summary>
/// The chat template keys llama.cpp's converter writes (gguf-py SpecialVocab + GGUFWriter.add_chat_template):
/// tokenizer_config.json's <c>chat_template</c> wins, else <c>chat_template.jinja</c>, else chat_template.json's
/// <c>chat_template</c>. A string becomes <c>tokenizer.chat_template</c>; the list-of-named-templates form gives its
/// "default" entry that key, every other entry <c>tokenizer.chat_template.NAME</c> (characters other than ASCII
/// letters and digits in NAME replaced by '_'), and their names in <c>tokenizer.chat_templates</c>.
/// </summary>
public static class ChatTemplateKeys
{
    public static IReadOnlyList<KeyValuePair<string, GgufValue>> Read(string directory)
    {
        string config = Path.Combine(directory, "tokenizer_config.json");
        if (File.Exists(config))
        {
            using var doc = Parse(config);
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("chat_template", out var t))
                return FromJson(t, config);
        }
        string jinja = Path.Combine(directory, "chat_template.jinja");
        if (File.Exists(jinja)) return [new("tokenizer.chat_template", GgufValue.String(File.ReadAllText(jinja)))];
        string json = Path.Combine(directory, "chat_template.json");
        if (File.Exists(json))
        {
            using var doc = Parse(json);
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("chat_template", out var t))
                return FromJson(t, json);
        }
        return [];
    }

    private static List<KeyValuePair<string, GgufValue>> FromJson(JsonElement t, string file)
    {
        var keys = new List<KeyValuePair<string, GgufValue>>();
        switch (t.ValueKind)
        {
            case JsonValueKind.String:
                keys.Add(new("tokenizer.chat_template", GgufValue.String(t.GetString()!)));
                break;
            case JsonValueKind.Array:
                string? fallback = null;
                var names = new List<string>();
                foreach (var e in t.EnumerateArray())
                {
                    if (e.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{file}: chat_template list entries must be objects with name and template");
                    string name = e.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString()! : "";
                    if (!e.TryGetProperty("template", out var tpl) || tpl.ValueKind != JsonValueKind.String || name.Length == 0) continue;
                    name = string.Concat(name.Select(c => char.IsAsciiLetterOrDigit(c) ? c : '_'));
                    if (name == "default") fallback = tpl.GetString();
                    else if (!names.Contains(name))
                    {
                        names.Add(name);
                        keys.Add(new($"tokenizer.chat_template.{name}", GgufValue.String(tpl.GetString()!)));
                    }
                }
                if (names.Count > 0) keys.Add(new("tokenizer.chat_templates", GgufValue.Array(names.ToArray())));
                if (fallback != null) keys.Add(new("tokenizer.chat_template", GgufValue.String(fallback)));
                break;
            case JsonValueKind.Null:
                break;
            default:
                throw new InvalidDataException($"{file}: chat_template is neither a string nor a list of named templates");
        }
        return keys;
    }

    private static JsonDocument Parse(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: invalid JSON: {e.Message}", e); }
    }
}
