using System.Text.Json;
using Converter.Formats.Gguf;

namespace Converter.Models.Tokenizers;

/// <summary>
/// GGUF tokenizer keys for a Hugging Face BPE <c>tokenizer.json</c> (+ optional <c>tokenizer_config.json</c>), the
/// way llama.cpp's converter writes a GPT-2 style vocabulary: tokens by id padded with "[PAD{id}]" up to
/// vocab_size, token types (1 normal, 3 control for special added tokens, 4 user-defined for other added tokens,
/// 5 unused for padding), merges as "a b", the pre-tokenizer name, and special token ids as uint32.
/// </summary>
public static class HfBpeTokenizer
{
    public const string TokenizerFile = "tokenizer.json", ConfigFile = "tokenizer_config.json";
    private const int Normal = 1, Control = 3, UserDefined = 4, Unused = 5;

    /// <summary>Null when the folder has no tokenizer.json.</summary>
    public static IReadOnlyList<KeyValuePair<string, GgufValue>>? TryLoad(string directory, int vocabSize)
    {
        string path = Path.Combine(directory, TokenizerFile);
        return File.Exists(path) ? Load(path, Path.Combine(directory, ConfigFile), vocabSize) : null;
    }

    public static IReadOnlyList<KeyValuePair<string, GgufValue>> Load(string tokenizerPath, string? configPath, int vocabSize)
    {
        using var doc = Parse(tokenizerPath);
        var root = doc.RootElement;
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw Bad(tokenizerPath, "no \"model\" object");
        string? type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        if (type != "BPE")
            throw Bad(tokenizerPath, $"model.type is '{type ?? "(missing)"}'; only BPE tokenizers are mapped to GGUF");
        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
            throw Bad(tokenizerPath, "model.vocab is not an object");

        var tokens = new string?[vocabSize];
        var types = new int[vocabSize];
        void Put(string content, JsonElement idElement, int tokenType, string where)
        {
            if (idElement.ValueKind != JsonValueKind.Number || !idElement.TryGetInt32(out int id))
                throw Bad(tokenizerPath, $"{where} '{content}' has no integer id");
            if (id < 0 || id >= vocabSize)
                throw Bad(tokenizerPath, $"{where} '{content}' has id {id}, outside vocab_size {vocabSize}");
            tokens[id] = content;
            types[id] = tokenType;
        }
        int vocabCount = 0;
        foreach (var p in vocab.EnumerateObject())
        {
            vocabCount++;
            if (vocabCount > vocabSize)
                throw Bad(tokenizerPath, $"model.vocab has more than vocab_size {vocabSize} tokens");
            Put(p.Name, p.Value, Normal, "model.vocab token");
        }
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
            foreach (var a in added.EnumerateArray())
            {
                if (a.ValueKind != JsonValueKind.Object || !a.TryGetProperty("content", out var c) || c.ValueKind != JsonValueKind.String)
                    throw Bad(tokenizerPath, "an added_tokens entry has no string content");
                string content = c.GetString()!;
                bool control = (a.TryGetProperty("special", out var s) && s.ValueKind == JsonValueKind.True) || LooksSpecial(content);
                // llama.cpp expects user-defined tokens pre-normalised: SentencePiece's "▁" back to a space
                Put(control ? content : content.Replace('\u2581', ' '), a.TryGetProperty("id", out var id) ? id : default,
                    control ? Control : UserDefined, "added token");
            }
        for (int i = 0; i < vocabSize; i++)
            if (tokens[i] is null) { tokens[i] = $"[PAD{i}]"; types[i] = Unused; }

        var meta = new List<KeyValuePair<string, GgufValue>>
        {
            new("tokenizer.ggml.model", GgufValue.String("gpt2")),
            new("tokenizer.ggml.pre", GgufValue.String(PreTokenizer(root))),
            new("tokenizer.ggml.tokens", GgufValue.Array(tokens!)),
            new("tokenizer.ggml.token_type", GgufValue.Array(types)),
            new("tokenizer.ggml.merges", GgufValue.Array(Merges(model, tokenizerPath))),
        };
        if (configPath is not null && File.Exists(configPath))
            AddConfig(meta, configPath, tokens!, tokenizerPath);
        // the Jinja chat template(s), as llama.cpp's converter carries them (what `generate --chat` renders for a GGUF file)
        meta.AddRange(ChatTemplateKeys.Read(Path.GetDirectoryName(Path.GetFullPath(configPath ?? tokenizerPath))!));
        return meta;
    }

    /// <summary>Added tokens llama.cpp's converter treats as control even when not marked special.</summary>
    internal static bool LooksSpecial(string t) =>
        t is "<pad>" or "<mask>" or "<2mass>" or "[@BOS@]"
        || (t.StartsWith("<|", StringComparison.Ordinal) && t.EndsWith("|>", StringComparison.Ordinal))
        || (t.StartsWith("<｜", StringComparison.Ordinal) && t.EndsWith("｜>", StringComparison.Ordinal))
        || (t.StartsWith("<unused", StringComparison.Ordinal) && t.EndsWith('>'));

    /// <summary>
    /// llama.cpp names the pre-tokenizer by hashing its output on a test text; without running it we recognise
    /// DeepSeek-V3's split sequence (digits in runs of 1-3, a CJK run, then the GPT-2 style pattern) and Qwen2's
    /// single split (what Qwen2, Qwen2.5 and Qwen3 ship, llama.cpp's "qwen2").
    /// </summary>
    internal static string PreTokenizer(JsonElement root)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var pre) || pre.ValueKind != JsonValueKind.Object) return "default";
        string text = pre.GetRawText();
        // JSON escapes the backslash: \\p{N}{1,3}; the CJK range may be written raw or \u-escaped
        bool digits13 = text.Contains(@"\\p{N}{1,3}", StringComparison.Ordinal);
        bool cjk = text.Contains("一-龥", StringComparison.Ordinal) || text.Contains(@"\u4e00-\u9fa5", StringComparison.OrdinalIgnoreCase);
        if (digits13 && cjk) return "deepseek-v3";
        return SplitPatterns(pre).Any(p => p == Qwen2Pattern) ? "qwen2" : "default";
    }

    /// <summary>Qwen2's pre-tokenizer regex (tokenizer.json Split pattern; llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2).</summary>
    internal const string Qwen2Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>The Regex patterns of a pre-tokenizer's Split steps (itself or inside a Sequence).</summary>
    private static IEnumerable<string> SplitPatterns(JsonElement pre)
    {
        if (pre.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "Sequence"
            && pre.TryGetProperty("pretokenizers", out var seq) && seq.ValueKind == JsonValueKind.Array)
        {
            foreach (var p in seq.EnumerateArray())
                if (p.ValueKind == JsonValueKind.Object)
                    foreach (var s in SplitPatterns(p)) yield return s;
            yield break;
        }
        if (pre.TryGetProperty("pattern", out var pat) && pat.ValueKind == JsonValueKind.Object
            && pat.TryGetProperty("Regex", out var r) && r.ValueKind == JsonValueKind.String)
            yield return r.GetString()!;
    }

    private static string[] Merges(JsonElement model, string path)
    {
        if (!model.TryGetProperty("merges", out var merges) || merges.ValueKind == JsonValueKind.Null) return [];
        if (merges.ValueKind != JsonValueKind.Array) throw Bad(path, "model.merges is not an array");
        var list = new string[merges.GetArrayLength()];
        int i = 0;
        foreach (var m in merges.EnumerateArray())
        {
            // older files: "a b"; newer (tokenizers >= 0.20): ["a", "b"]
            if (m.ValueKind == JsonValueKind.String) list[i] = m.GetString()!;
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2
                     && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                list[i] = m[0].GetString() + " " + m[1].GetString();
            else throw Bad(path, $"model.merges[{i}] is neither \"a b\" nor [a, b]");
            i++;
        }
        return list;
    }

    private static void AddConfig(List<KeyValuePair<string, GgufValue>> meta, string configPath, string[] tokens, string tokenizerPath)
    {
        using var doc = Parse(configPath);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw Bad(configPath, "not a JSON object");
        foreach (var (field, key) in new[] { ("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown") })
        {
            if (!root.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) continue;
            string? content = v.ValueKind switch
            {
                JsonValueKind.String => v.GetString(),
                JsonValueKind.Object when v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
                _ => throw Bad(configPath, $"{field} is neither a string nor an object with string content"),
            };
            int id = Array.IndexOf(tokens, content); // ordinal; the lowest id wins on duplicates
            if (id < 0)
                throw Bad(configPath, $"{field} '{content}' is not a token of {Path.GetFileName(tokenizerPath)}");
            meta.Add(new($"tokenizer.ggml.{key}_token_id", GgufValue.UInt32((uint)id)));
        }
        foreach (var field in new[] { "add_bos_token", "add_eos_token" })
            if (root.TryGetProperty(field, out var v))
            {
                if (v.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
                    throw Bad(configPath, $"{field} is not a boolean");
                meta.Add(new($"tokenizer.ggml.{field}", GgufValue.Bool(v.GetBoolean())));
            }
    }

    private static JsonDocument Parse(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: invalid JSON: {e.Message}", e); }
    }

    private static InvalidDataException Bad(string path, string why) => new($"{path}: {why}");
}
