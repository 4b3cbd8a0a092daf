using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Converter.Formats.Gguf;

namespace Converter.Models.Tokenizers;

/// <summary>
/// GGUF tokenizer keys for a tiktoken vocabulary (<c>tiktoken.model</c>: one "base64-token rank" per line) with
/// Kimi K2's remote code (<c>tokenization_kimi.py</c>), the way llama.cpp's converter writes it
/// (conversion/deepseek.py, DeepseekV2Model.set_vocab, pre-tokenizer "kimi-k2"):
/// <list type="bullet">
/// <item>tokens: each tiktoken token at its rank, spelled in GPT-2 byte-to-unicode characters; the reserved special
/// tokens at ids num_base .. num_base + count - 1 (num_base = the number of tiktoken tokens, count as
/// tokenization_kimi.py states it), named from tokenizer_config.json's added_tokens_decoder, else
/// <c>&lt;|reserved_token_{id}|&gt;</c>; ids up to vocab_size without a token are <c>[PAD{id}]</c>.</item>
/// <item>token types: control for the special tokens, normal for the tiktoken tokens, unused for padding.</item>
/// <item>merges: for every multi-byte token, tiktoken's byte-pair merging of the token itself limited to ranks below
/// its own (QwenModel.bpe with max_rank); where that ends in exactly two parts, "a b" (in file order).</item>
/// <item>special ids as gguf-py's SpecialVocab finds them without a tokenizer.json: <c>{bos,eos,unk,sep,pad,mask}_token_id</c>
/// from config.json (or its text_config); add_bos/add_eos/add_sep_token and chat_template from tokenizer_config.json.</item>
/// </list>
/// llama.cpp's converter names the pre-tokenizer by hashing the tokenizer's output; without running Kimi's code, a
/// tokenization_kimi.py whose pattern has Kimi's Han alternative is taken as Kimi K2's, anything else is refused.
/// </summary>
public static class TiktokenTokenizer
{
    public const string ModelFile = "tiktoken.model", KimiCode = "tokenization_kimi.py", ConfigFile = "tokenizer_config.json";
    public const string PreTokenizer = "kimi-k2";
    private const int Normal = 1, Control = 3, Unused = 5;

    /// <summary>Null when the folder has no tiktoken.model.</summary>
    public static IReadOnlyList<KeyValuePair<string, GgufValue>>? TryLoad(string directory, int vocabSize)
    {
        string path = Path.Combine(directory, ModelFile);
        return File.Exists(path) ? Load(directory, vocabSize) : null;
    }

    public static IReadOnlyList<KeyValuePair<string, GgufValue>> Load(string directory, int vocabSize)
    {
        string path = Path.Combine(directory, ModelFile);
        int reserved = ReservedCount(directory, path);
        var ranks = ReadRanks(path);
        int numBase = ranks.Count;

        // {**vocab, **special_tokens}: token text -> id, then reversed (a later id of the same text wins)
        var textToId = new Dictionary<string, int>(StringComparer.Ordinal);
        var order = new List<string>();
        void Put(string text, int id)
        {
            if (!textToId.ContainsKey(text)) order.Add(text);
            textToId[text] = id;
        }
        var latin1 = new string[ranks.Count];
        for (int i = 0; i < ranks.Count; i++)
        {
            var (token, rank, line) = ranks[i];
            if (rank >= vocabSize)
                throw Bad(path, $"line {line}: rank {rank} is outside vocab_size {vocabSize} (config.json)");
            latin1[i] = Encoding.Latin1.GetString(token);
            Put(ByteLevelTokenizer.Spell(token), rank);
        }
        var names = AddedTokens(Path.Combine(directory, ConfigFile));
        var specialIds = new HashSet<int>();
        for (int id = numBase; id < numBase + reserved; id++)
        {
            Put(names.TryGetValue(id, out var n) ? n : $"<|reserved_token_{id}|>", id);
            specialIds.Add(id);
        }
        var reverse = new Dictionary<int, string>();
        foreach (var text in order) reverse[textToId[text]] = text;

        var tokens = new string[vocabSize];
        var types = new int[vocabSize];
        for (int i = 0; i < vocabSize; i++)
        {
            if (!reverse.TryGetValue(i, out var t)) { tokens[i] = $"[PAD{i}]"; types[i] = Unused; }
            else { tokens[i] = t; types[i] = specialIds.Contains(i) ? Control : Normal; }
        }

        var meta = new List<KeyValuePair<string, GgufValue>>
        {
            new("tokenizer.ggml.model", GgufValue.String("gpt2")),
            new("tokenizer.ggml.pre", GgufValue.String(PreTokenizer)),
            new("tokenizer.ggml.tokens", GgufValue.Array(tokens)),
            new("tokenizer.ggml.token_type", GgufValue.Array(types)),
            new("tokenizer.ggml.merges", GgufValue.Array(Merges(ranks, latin1))),
        };
        SpecialVocab(meta, directory);
        return meta;
    }

    /// <summary>The tiktoken file in order: decoded token bytes, rank, line number (load_tiktoken_bpe, duplicates refused).</summary>
    public static List<(byte[] Token, int Rank, int Line)> ReadRanks(string path)
    {
        var list = new List<(byte[], int, int)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var ranksSeen = new HashSet<int>();
        int lineNo = 0;
        foreach (var raw in File.ReadLines(path))
        {
            lineNo++;
            if (raw.Length == 0) continue;
            var parts = raw.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 2)
                throw Bad(path, $"line {lineNo}: expected \"<base64 token> <rank>\", got {parts.Length} field(s)");
            byte[] token;
            try { token = Convert.FromBase64String(parts[0]); }
            catch (FormatException) { throw Bad(path, $"line {lineNo}: '{parts[0]}' is not base64"); }
            if (token.Length == 0) throw Bad(path, $"line {lineNo}: empty token");
            if (!int.TryParse(parts[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int rank))
                throw Bad(path, $"line {lineNo}: rank '{parts[1]}' is not a non-negative integer");
            if (!seen.Add(parts[0])) throw Bad(path, $"line {lineNo}: token '{parts[0]}' appears twice");
            if (!ranksSeen.Add(rank)) throw Bad(path, $"line {lineNo}: rank {rank} appears twice");
            list.Add((token, rank, lineNo));
        }
        if (list.Count == 0) throw Bad(path, "no tokens");
        return list;
    }

    /// <summary>The merges llama.cpp's converter derives from the ranks (in file order).</summary>
    private static string[] Merges(List<(byte[] Token, int Rank, int Line)> ranks, string[] latin1)
    {
        var rankOf = new Dictionary<string, int>(latin1.Length, StringComparer.Ordinal);
        for (int i = 0; i < latin1.Length; i++) rankOf[latin1[i]] = ranks[i].Rank;
        var merges = new List<string>();
        var parts = new List<string>();
        for (int i = 0; i < latin1.Length; i++)
        {
            string token = latin1[i];
            if (token.Length == 1) continue;
            Bpe(rankOf, token, ranks[i].Rank, parts);
            if (parts.Count == 2)
                merges.Add(SpellLatin1(parts[0]) + " " + SpellLatin1(parts[1]));
        }
        return [.. merges];
    }

    /// <summary>QwenModel.bpe: merge the adjacent pair whose concatenation has the lowest rank, below maxRank, until none.</summary>
    internal static void Bpe(Dictionary<string, int> rankOf, string token, int maxRank, List<string> parts)
    {
        parts.Clear();
        foreach (char c in token) parts.Add(c.ToString());
        while (true)
        {
            int minIdx = -1, minRank = int.MaxValue;
            for (int j = 0; j + 1 < parts.Count; j++)
                if (rankOf.TryGetValue(parts[j] + parts[j + 1], out int r) && r < minRank)
                {
                    minRank = r;
                    minIdx = j;
                }
            if (minIdx < 0 || minRank >= maxRank) break;
            parts[minIdx] += parts[minIdx + 1];
            parts.RemoveAt(minIdx + 1);
        }
    }

    private static string SpellLatin1(string s) => ByteLevelTokenizer.Spell(Encoding.Latin1.GetBytes(s));

    /// <summary>How many reserved special tokens tokenization_kimi.py gives (its num_reserved_special_tokens, plus
    /// the "+ k" some versions add in the range); refuses a folder whose code is missing or not Kimi's.</summary>
    private static int ReservedCount(string directory, string modelPath)
    {
        string code = Path.Combine(directory, KimiCode);
        if (!File.Exists(code))
            throw new NotSupportedException($"{modelPath}: a tiktoken vocabulary without {KimiCode}: only Kimi K2's tiktoken tokenizer is mapped " +
                                            "(its pre-tokenizer and special tokens come from that code); provide the model's tokenizer.json instead");
        string py = File.ReadAllText(code);
        if (!py.Contains(@"\p{Han}", StringComparison.Ordinal))
            throw new NotSupportedException($"{code}: its pre-tokenizer pattern is not Kimi K2's (no \\p{{Han}} alternative), so llama.cpp's " +
                                            $"'{PreTokenizer}' pre-tokenizer would not match it; provide the model's tokenizer.json instead");
        var m = Regex.Match(py, @"num_reserved_special_tokens\s*=\s*(\d+)");
        int count = m.Success ? int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : 256;
        var plus = Regex.Match(py, @"num_base_tokens\s*\+\s*self\.num_reserved_special_tokens\s*\+\s*(\d+)");
        if (plus.Success) count += int.Parse(plus.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        return count;
    }

    /// <summary>tokenizer_config.json's added_tokens_decoder: id -> content (empty without the file).</summary>
    private static Dictionary<int, string> AddedTokens(string configPath)
    {
        var map = new Dictionary<int, string>();
        if (!File.Exists(configPath)) return map;
        using var doc = Parse(configPath);
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad(configPath, "not a JSON object");
        if (!doc.RootElement.TryGetProperty("added_tokens_decoder", out var dec) || dec.ValueKind == JsonValueKind.Null) return map;
        if (dec.ValueKind != JsonValueKind.Object) throw Bad(configPath, "added_tokens_decoder is not an object");
        foreach (var p in dec.EnumerateObject())
        {
            if (!int.TryParse(p.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                throw Bad(configPath, $"added_tokens_decoder key '{p.Name}' is not a token id");
            if (p.Value.ValueKind != JsonValueKind.Object || !p.Value.TryGetProperty("content", out var c) || c.ValueKind != JsonValueKind.String)
                throw Bad(configPath, $"added_tokens_decoder[{p.Name}] has no string content");
            map[id] = c.GetString()!;
        }
        return map;
    }

    /// <summary>gguf-py's SpecialVocab for a folder without tokenizer.json: ids from config.json, add_* flags and the
    /// chat template from tokenizer_config.json.</summary>
    private static void SpecialVocab(List<KeyValuePair<string, GgufValue>> meta, string directory)
    {
        string configJson = Path.Combine(directory, "config.json");
        if (File.Exists(configJson))
        {
            using var doc = Parse(configJson);
            var root = doc.RootElement;
            foreach (var (typ, key) in new[] { ("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("sep", "seperator"), ("pad", "padding"), ("mask", "mask") })
            {
                JsonElement v = default;
                bool found = root.TryGetProperty($"{typ}_token_id", out v) && v.ValueKind != JsonValueKind.Null;
                if (!found && root.TryGetProperty("text_config", out var tc) && tc.ValueKind == JsonValueKind.Object)
                    found = tc.TryGetProperty($"{typ}_token_id", out v) && v.ValueKind != JsonValueKind.Null;
                if (!found || v.ValueKind != JsonValueKind.Number) continue; // SpecialVocab skips non-integers
                if (!v.TryGetInt64(out long id)) continue;
                if (id < 0) throw Bad(configJson, $"{typ}_token_id is negative ({id})");
                meta.Add(new($"tokenizer.ggml.{key}_token_id", GgufValue.UInt32(checked((uint)id))));
            }
        }
        string tokConfig = Path.Combine(directory, ConfigFile);
        if (File.Exists(tokConfig))
        {
            using var tdoc = Parse(tokConfig);
            var t = tdoc.RootElement;
            foreach (var typ in new[] { "bos", "eos", "sep" })
                if (t.TryGetProperty($"add_{typ}_token", out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False)
                    meta.Add(new($"tokenizer.ggml.add_{typ}_token", GgufValue.Bool(v.GetBoolean())));
        }
        meta.AddRange(ChatTemplateKeys.Read(directory)); // tokenizer_config's chat_template wins, then chat_template.jinja
    }

    private static JsonDocument Parse(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: invalid JSON: {e.Message}", e); }
    }

    private static InvalidDataException Bad(string path, string why) => new($"{path}: {why}");
}
