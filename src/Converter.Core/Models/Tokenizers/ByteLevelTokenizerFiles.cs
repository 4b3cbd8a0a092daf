using System.Text.Json.Nodes;

namespace Converter.Models.Tokenizers;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> and <c>tokenizer_config.json</c> for a byte-level vocabulary of 256 tokens
/// (token id = byte value), for checkpoints that ship no tokenizer: a GPT-2 style BPE with no merges whose tokens
/// are the GPT-2 byte-to-unicode characters, a ByteLevel pre-tokenizer without the split regex and a ByteLevel
/// decoder. Text encodes to its UTF-8 bytes and ids decode back to them, in transformers, in onnxruntime-genai's
/// tokenizer (onnxruntime-extensions) and, with the same characters as GGUF tokens, in llama.cpp.
/// </summary>
public static class ByteLevelTokenizerFiles
{
    public const int VocabSize = 256;

    /// <summary>The GPT-2 byte-to-unicode character of every byte (printable Latin-1 maps to itself, the rest to 256+).</summary>
    public static string[] Characters()
    {
        var chars = new string[VocabSize];
        int extra = 0;
        for (int b = 0; b < VocabSize; b++)
        {
            bool printable = b is >= 33 and <= 126 or >= 161 and <= 172 or >= 174 and <= 255;
            chars[b] = char.ConvertFromUtf32(printable ? b : 256 + extra++);
        }
        return chars;
    }

    public static JsonObject TokenizerJson()
    {
        var vocab = new JsonObject();
        var chars = Characters();
        for (int b = 0; b < VocabSize; b++) vocab[chars[b]] = b;
        JsonObject ByteLevel() => new()
        {
            ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false,
        };
        return new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(),
            ["normalizer"] = null,
            ["pre_tokenizer"] = ByteLevel(),
            ["post_processor"] = null,
            ["decoder"] = ByteLevel(),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null, ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false,
                ["vocab"] = vocab, ["merges"] = new JsonArray(),
            },
        };
    }

    /// <param name="maxLength">model_max_length (the positions the model covers).</param>
    public static JsonObject TokenizerConfigJson(int maxLength) => new()
    {
        ["tokenizer_class"] = "GPT2Tokenizer",
        ["add_bos_token"] = false,
        ["add_eos_token"] = false,
        ["clean_up_tokenization_spaces"] = false,
        ["model_max_length"] = maxLength,
    };
}
