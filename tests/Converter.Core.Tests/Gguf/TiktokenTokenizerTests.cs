using System.Text;
using Converter.Formats.Gguf;
using Converter.Models.Tokenizers;

namespace Converter.Core.Tests.Gguf;

/// <summary>Kimi's tiktoken vocabulary on small folders made here: reserved special range, padding, refusals.</summary>
public sealed class TiktokenTokenizerTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "tiktoken-" + Guid.NewGuid().ToString("N"));

    public TiktokenTokenizerTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, true);

    private void Write(string code, params string[] extraTokens)
    {
        var s = new StringBuilder();
        for (int b = 0; b < 256; b++) s.Append(Convert.ToBase64String([(byte)b])).Append(' ').Append(b).Append('\n');
        for (int i = 0; i < extraTokens.Length; i++) s.Append(Convert.ToBase64String(Encoding.UTF8.GetBytes(extraTokens[i]))).Append(' ').Append(256 + i).Append('\n');
        File.WriteAllText(Path.Combine(_dir, TiktokenTokenizer.ModelFile), s.ToString());
        File.WriteAllText(Path.Combine(_dir, TiktokenTokenizer.KimiCode), code);
    }

    private static Dictionary<string, GgufValue> Map(IReadOnlyList<KeyValuePair<string, GgufValue>> kv) => kv.ToDictionary(p => p.Key, p => p.Value);

    private const string K2 = "pat_str = r'''[\\p{Han}]+'''\nnum_reserved_special_tokens = 256\nrange(num_base_tokens, num_base_tokens + self.num_reserved_special_tokens)\n";

    [Fact]
    public void ReservedRangeFollowsTheCodeAndTheRestIsPadding()
    {
        Write(K2, "ab");
        var m = Map(TiktokenTokenizer.Load(_dir, 600));
        var tokens = m["tokenizer.ggml.tokens"].AsArray<string>();
        var types = m["tokenizer.ggml.token_type"].AsArray<int>();
        tokens[257].Should().Be("<|reserved_token_257|>");
        tokens[257 + 255].Should().Be("<|reserved_token_512|>");
        types[512].Should().Be(3);
        tokens[513].Should().Be("[PAD513]");
        types[513].Should().Be(5);
        m["tokenizer.ggml.merges"].AsArray<string>().Should().Equal("a b");

        // Kimi-Linear's code reserves two more
        Write(K2.Replace("self.num_reserved_special_tokens)", "self.num_reserved_special_tokens + 2)"), "ab");
        Map(TiktokenTokenizer.Load(_dir, 600))["tokenizer.ggml.tokens"].AsArray<string>()[514].Should().Be("<|reserved_token_514|>");
    }

    [Fact]
    public void BadFoldersAreRefusedNamingTheFile()
    {
        Write("no pattern here", "ab");
        var notKimi = () => TiktokenTokenizer.Load(_dir, 600);
        notKimi.Should().Throw<NotSupportedException>().WithMessage("*tokenization_kimi.py*not Kimi K2's*tokenizer.json*");

        Write(K2, "ab");
        File.AppendAllText(Path.Combine(_dir, TiktokenTokenizer.ModelFile), "YWI= 300\n"); // "ab" again
        var dup = () => TiktokenTokenizer.Load(_dir, 600);
        dup.Should().Throw<InvalidDataException>().WithMessage("*tiktoken.model: line 258: token 'YWI=' appears twice*");

        Write(K2, "ab");
        var small = () => TiktokenTokenizer.Load(_dir, 200);
        small.Should().Throw<InvalidDataException>().WithMessage("*line 201: rank 200 is outside vocab_size 200*");
    }
}
