using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Converter.Runtime.Calibration;
using Microsoft.ML.Tokenizers;

namespace Converter.Runtime.Golden;

/// <summary>Token sequences [sequences, length] for a golden, and where they came from.</summary>
public sealed record GoldenTokenSet(int[] Tokens, int Sequences, int Length, string Source);

/// <summary>
/// The tokens of <c>converter golden</c> and <c>verify --reference</c>: a safetensors file with an int32 <c>tokens</c>
/// tensor [sequences, length] (the golden format's own, so an existing golden's tokens can be reused), or a text file
/// tokenized by the model's own tokenizer and cut into sequences of <c>--seq-len</c> tokens (the remainder dropped).
/// </summary>
public static class GoldenTokens
{
    public const int DefaultTextSequenceLength = 512;

    /// <param name="seqLen">Tokens file: keep the first seqLen tokens of each sequence (null: all). Text: the sequence length.</param>
    /// <param name="maxSequences">Keep at most this many sequences (null: all).</param>
    public static GoldenTokenSet FromTokensFile(string path, int vocab, int? seqLen, int? maxSequences)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: tokens file not found", path);
        var (ids, sequences, length) = CalibratePipeline.ReadTokens(path, vocab);
        if (length < 2) throw new InvalidDataException($"{path}: tensor 'tokens' has sequences of {length} token(s); a golden needs at least 2");
        int len = seqLen ?? length;
        if (len < 2 || len > length)
            throw new ArgumentException($"--seq-len {len}: the tokens in {path} are {length} long (choose 2..{length})");
        int n = Math.Min(sequences, maxSequences ?? sequences);
        if (n < 1) throw new ArgumentException($"--max-sequences {maxSequences} keeps no sequence");
        var tokens = new int[n * len];
        for (int s = 0; s < n; s++) ids.AsSpan(s * length, len).CopyTo(tokens.AsSpan(s * len));
        return new GoldenTokenSet(tokens, n, len, $"{Path.GetFileName(path)} ({n} x {len}{(len < length || n < sequences ? $" of {sequences} x {length}" : "")})");
    }

    public static GoldenTokenSet FromText(string path, string? tokenizerDir, int vocab, int? seqLen, int? maxSequences)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: text file not found", path);
        int len = seqLen ?? DefaultTextSequenceLength;
        if (len < 2) throw new ArgumentException($"--seq-len {len}: sequences need at least 2 tokens");
        var (encode, what) = Tokenizer(tokenizerDir, vocab);
        var ids = encode(File.ReadAllText(path, Encoding.UTF8));
        int n = ids.Count / len;
        if (maxSequences is int max) n = Math.Min(n, max);
        if (n < 1)
            throw new InvalidDataException($"{path}: {ids.Count} tokens ({what}) are fewer than one sequence of --seq-len {len}");
        foreach (var id in ids)
            if ((uint)id >= (uint)vocab) throw new InvalidDataException($"{path}: the tokenizer gave id {id}, outside the model's vocabulary [0, {vocab})");
        return new GoldenTokenSet(ids.Take(n * len).ToArray(), n, len, $"{Path.GetFileName(path)} ({what}; {n} x {len} of {ids.Count} tokens)");
    }

    /// <summary>
    /// The model's tokenizer: tokenizer.json (a byte-level BPE model, through Microsoft.ML.Tokenizers' BPE with the file's
    /// vocabulary, merges, split pre-tokenizers and NFC normalizer) or, for a model of 256 tokens without one, UTF-8 bytes.
    /// </summary>
    public static (Func<string, IReadOnlyList<int>> Encode, string What) Tokenizer(string? modelDir, int vocab)
    {
        string? json = modelDir != null ? Path.Combine(modelDir, "tokenizer.json") : null;
        if (json != null && File.Exists(json))
        {
            var tok = LoadBpe(json);
            return (text => tok.EncodeToIds(text, considerPreTokenization: true, considerNormalization: true), "tokenizer.json");
        }
        if (vocab == 256) return (text => Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToArray(), "UTF-8 bytes (byte-level vocabulary)");
        throw new NotSupportedException($"{modelDir ?? "the reference"}: no tokenizer.json to tokenize --text with (vocabulary {vocab}); pass --tokens instead");
    }

    /// <summary>A Hugging Face byte-level BPE tokenizer.json as a Microsoft.ML.Tokenizers BpeTokenizer.</summary>
    public static BpeTokenizer LoadBpe(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
        var root = doc.RootElement;
        var model = root.GetProperty("model");
        if (model.GetProperty("type").GetString() != "BPE")
            throw new NotSupportedException($"{path}: model.type is '{model.GetProperty("type").GetString()}'; only BPE tokenizers are supported for --text");
        var vocab = model.GetProperty("vocab").EnumerateObject().Select(p => KeyValuePair.Create(p.Name, p.Value.GetInt32())).ToList();
        var merges = new List<string>();
        if (model.TryGetProperty("merges", out var m))
            foreach (var e in m.EnumerateArray())
                merges.Add(e.ValueKind == JsonValueKind.Array ? $"{e[0].GetString()} {e[1].GetString()}" : e.GetString()!);
        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        if (root.TryGetProperty("added_tokens", out var added))
            foreach (var a in added.EnumerateArray())
                if (a.TryGetProperty("special", out var sp) && sp.GetBoolean())
                    special[a.GetProperty("content").GetString()!] = a.GetProperty("id").GetInt32();
        bool byteLevel = false;
        var splits = new List<PreTokenizer>();
        void Pre(JsonElement p)
        {
            switch (p.GetProperty("type").GetString())
            {
                case "Sequence":
                    foreach (var q in p.GetProperty("pretokenizers").EnumerateArray()) Pre(q);
                    break;
                case "Split":
                    var pattern = p.GetProperty("pattern");
                    string regex = pattern.TryGetProperty("Regex", out var r) ? r.GetString()! : Regex.Escape(pattern.GetProperty("String").GetString()!);
                    splits.Add(new RegexPreTokenizer(new Regex(regex, RegexOptions.Compiled), null));
                    break;
                case "ByteLevel":
                    byteLevel = true;
                    if (p.TryGetProperty("use_regex", out var ur) && ur.GetBoolean())
                        splits.Add(new RegexPreTokenizer(new Regex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.Compiled), null));
                    break;
                case var other:
                    throw new NotSupportedException($"{path}: pre-tokenizer '{other}' is not supported for --text (pass --tokens)");
            }
        }
        if (root.TryGetProperty("pre_tokenizer", out var pre) && pre.ValueKind == JsonValueKind.Object) Pre(pre);
        if (!byteLevel) throw new NotSupportedException($"{path}: only byte-level BPE tokenizers are supported for --text (pass --tokens)");
        Normalizer? normalizer = null;
        if (root.TryGetProperty("normalizer", out var norm) && norm.ValueKind == JsonValueKind.Object)
            normalizer = norm.GetProperty("type").GetString() switch
            {
                "NFC" => new NfcNormalizer(),
                var other => throw new NotSupportedException($"{path}: normalizer '{other}' is not supported for --text (pass --tokens)"),
            };
        return BpeTokenizer.Create(new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = splits.Count == 0 ? null : splits.Count == 1 ? splits[0] : new CompositePreTokenizer(splits, special.Count > 0 ? special : null),
            SpecialTokens = special.Count > 0 ? special : null,
            Normalizer = normalizer,
        });
    }

    private sealed class NfcNormalizer : Normalizer
    {
        public override string Normalize(string original) => original.Normalize(NormalizationForm.FormC);
        public override string Normalize(ReadOnlySpan<char> original) => original.ToString().Normalize(NormalizationForm.FormC);
    }
}
