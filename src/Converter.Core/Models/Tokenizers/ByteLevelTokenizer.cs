using Converter.Formats.Gguf;

namespace Converter.Models.Tokenizers;

/// <summary>
/// GPT-2's byte-to-unicode spelling of bytes (what llama.cpp's BPE vocabularies are written in), and the GGUF
/// tokenizer keys of a byte-level checkpoint without tokenizer files: 256 byte tokens, empty merges.
/// </summary>
public static class ByteLevelTokenizer
{
    private static readonly char[] ByteChars = BuildByteChars();

    private static char[] BuildByteChars()
    {
        var chars = new char[256];
        int extra = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= 33 and <= 126 or >= 161 and <= 172 or >= 174 and <= 255;
            chars[b] = (char)(printable ? b : 256 + extra++);
        }
        return chars;
    }

    /// <summary>The character GPT-2's bytes_to_unicode gives byte <paramref name="b"/>.</summary>
    public static char Char(byte b) => ByteChars[b];

    /// <summary>A byte string spelled in GPT-2's byte-to-unicode characters (QwenModel.token_bytes_to_string).</summary>
    public static string Spell(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ByteChars[bytes[i]];
        return new string(chars);
    }

    /// <summary>The byte-level vocabulary llama.cpp needs for a 256-token checkpoint that ships no tokenizer files.</summary>
    /// <param name="directory">The checkpoint folder, named in the refusal.</param>
    public static IReadOnlyList<KeyValuePair<string, GgufValue>> Keys(int vocabSize, string? directory = null)
    {
        if (vocabSize != 256)
            throw new NotSupportedException($"{(directory is null ? "" : directory + ": ")}vocab_size {vocabSize}: the checkpoint has no tokenizer.json (nor a Kimi tiktoken.model), " +
                                            "and without one only byte-level (256-token) vocabularies are mapped; provide the model's tokenizer.json");
        var tokens = new string[256];
        for (int b = 0; b < 256; b++) tokens[b] = ByteChars[b].ToString();
        return
        [
            new("tokenizer.ggml.model", GgufValue.String("gpt2")),
            new("tokenizer.ggml.tokens", GgufValue.Array(tokens)),
            new("tokenizer.ggml.token_type", GgufValue.Array(Enumerable.Repeat(1, 256).ToArray())),
            new("tokenizer.ggml.merges", GgufValue.Array(Array.Empty<string>())),
        ];
    }
}
