using Converter.Formats.Gguf;

namespace Converter.Models.Tokenizers;

/// <summary>
/// The GGUF tokenizer keys of a checkpoint folder, for any family's GGUF map: <c>tokenizer.json</c> (BPE, see
/// <see cref="HfBpeTokenizer"/>), else Kimi K2's <c>tiktoken.model</c> (<see cref="TiktokenTokenizer"/>), else the
/// byte-level vocabulary of a 256-token checkpoint (<see cref="ByteLevelTokenizer"/>); anything else is refused
/// with what to provide.
/// </summary>
public static class GgufTokenizer
{
    public static IReadOnlyList<KeyValuePair<string, GgufValue>> Load(string directory, int vocabSize) =>
        HfBpeTokenizer.TryLoad(directory, vocabSize)
        ?? TiktokenTokenizer.TryLoad(directory, vocabSize)
        ?? ByteLevelTokenizer.Keys(vocabSize, directory);
}
