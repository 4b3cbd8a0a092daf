using System.Text.Json;
using Converter.Core.Tests.Ggml;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Models.Tokenizers;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Core.Tests.Gguf;

public sealed class HfBpeTokenizerTests : IDisposable
{
    private const string Bos = "<｜begin▁of▁sentence｜>", Eos = "<｜end▁of▁sentence｜>";
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "hf-tok-" + Guid.NewGuid().ToString("N"));

    public HfBpeTokenizerTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the rest to 256, 257, ... in order.</summary>
    private static string[] Gpt2Bytes()
    {
        var t = new string[256];
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            t[b] = ((char)(keep ? b : 256 + n++)).ToString();
        }
        return t;
    }

    // DeepSeek-V3's pre_tokenizer shape (first two splits and the byte-level stage), as in its tokenizer.json
    private const string DeepseekPre = """
        {"type":"Sequence","pretokenizers":[
          {"type":"Split","pattern":{"Regex":"\\p{N}{1,3}"},"behavior":"Isolated","invert":false},
          {"type":"Split","pattern":{"Regex":"[一-龥\u3040-ゟ゠-ヿ]+"},"behavior":"Isolated","invert":false},
          {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]}
        """;

    private string WriteTokenizer(string folder, Dictionary<string, int> vocab, object[] merges, string modelType = "BPE",
        string? preTokenizer = DeepseekPre, object[]? added = null)
    {
        Directory.CreateDirectory(folder);
        string json = "{\"version\":\"1.0\",\"added_tokens\":" + JsonSerializer.Serialize(added ?? []) +
                      ",\"pre_tokenizer\":" + (preTokenizer ?? "null") +
                      ",\"model\":{\"type\":" + JsonSerializer.Serialize(modelType) + ",\"vocab\":" + JsonSerializer.Serialize(vocab) +
                      ",\"merges\":" + JsonSerializer.Serialize(merges) + "}}";
        string path = Path.Combine(folder, "tokenizer.json");
        File.WriteAllText(path, json);
        return path;
    }

    private static Dictionary<string, int> ByteVocab()
    {
        var v = new Dictionary<string, int>();
        var bytes = Gpt2Bytes();
        for (int i = 0; i < 256; i++) v[bytes[i]] = i;
        return v;
    }

    private string WriteSynthetic()
    {
        var vocab = ByteVocab();
        vocab["Ġt"] = 258;
        var added = new object[]
        {
            new { id = 256, content = Bos, single_word = false, lstrip = false, rstrip = false, normalized = true, special = true },
            new { id = 257, content = Eos, single_word = false, lstrip = false, rstrip = false, normalized = true, special = true },
            // not marked special, but llama.cpp's converter treats "<｜...｜>" as control
            new { id = 259, content = "<｜fim▁hole｜>", single_word = false, lstrip = false, rstrip = false, normalized = true, special = false },
            // user-defined: "▁" written back as a space
            new { id = 260, content = "x▁y", single_word = false, lstrip = false, rstrip = false, normalized = true, special = false },
        };
        WriteTokenizer(_dir, vocab, [new[] { "Ġ", "t" }, "h e"], added: added);
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), $$"""
            {"add_bos_token":true,"add_eos_token":false,
             "bos_token":{"__type":"AddedToken","content":"{{Bos}}","lstrip":false,"normalized":true,"rstrip":false,"single_word":false},
             "eos_token":"{{Eos}}","pad_token":"{{Eos}}","model_max_length":16384}
            """);
        return _dir;
    }

    private static Dictionary<string, GgufValue> AsMap(IReadOnlyList<KeyValuePair<string, GgufValue>> kv)
    {
        var map = new Dictionary<string, GgufValue>();
        foreach (var (k, v) in kv) map.Add(k, v); // throws on a duplicate key
        return map;
    }

    [Fact]
    public void EveryKeyHasLlamaCppsValueAndType()
    {
        var m = AsMap(HfBpeTokenizer.TryLoad(WriteSynthetic(), 262)!);
        m.Keys.Should().BeEquivalentTo("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token");
        m["tokenizer.ggml.model"].Type.Should().Be(GgufValueType.String);
        m["tokenizer.ggml.model"].AsString().Should().Be("gpt2");
        m["tokenizer.ggml.pre"].AsString().Should().Be("deepseek-v3");

        var tokens = m["tokenizer.ggml.tokens"];
        tokens.ElementType.Should().Be(GgufValueType.String);
        var expected = Gpt2Bytes().Concat([Bos, Eos, "Ġt", "<｜fim▁hole｜>", "x y", "[PAD261]"]).ToArray();
        tokens.AsArray<string>().Should().Equal(expected);

        var types = m["tokenizer.ggml.token_type"];
        types.ElementType.Should().Be(GgufValueType.Int32);
        types.AsArray<int>().Should().Equal(Enumerable.Repeat(1, 256).Concat([3, 3, 1, 3, 4, 5]));

        var merges = m["tokenizer.ggml.merges"];
        merges.ElementType.Should().Be(GgufValueType.String);
        merges.AsArray<string>().Should().Equal("Ġ t", "h e");

        foreach (var (key, id) in new[] { ("bos", 256u), ("eos", 257u), ("padding", 257u) })
        {
            m[$"tokenizer.ggml.{key}_token_id"].Type.Should().Be(GgufValueType.UInt32);
            m[$"tokenizer.ggml.{key}_token_id"].AsUInt32().Should().Be(id, key);
        }
        m["tokenizer.ggml.add_bos_token"].Type.Should().Be(GgufValueType.Bool);
        m["tokenizer.ggml.add_bos_token"].AsBool().Should().BeTrue();
        m["tokenizer.ggml.add_eos_token"].AsBool().Should().BeFalse();
    }

    [Fact]
    public void KeysSurviveTheGgufWriterAndReader()
    {
        var kv = HfBpeTokenizer.TryLoad(WriteSynthetic(), 262)!;
        string path = Path.Combine(_dir, "t.gguf");
        // round trip through the project's writer: exact value types must come back
        using (var w = new GgufWriter(path))
        {
            foreach (var (k, v) in kv) w.Add(k, v);
            w.Commit();
        }
        using var r = GgufReader.Open(path);
        foreach (var (k, v) in kv) r[k].Should().Be(v, k);
    }

    [Fact]
    public void NoTokenizerJsonGivesNull() => HfBpeTokenizer.TryLoad(_dir, 256).Should().BeNull();

    [Fact]
    public void PlainGpt2PreTokenizerIsDefault()
    {
        WriteTokenizer(_dir, ByteVocab(), [], preTokenizer: """{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}""");
        AsMap(HfBpeTokenizer.TryLoad(_dir, 256)!)["tokenizer.ggml.pre"].AsString().Should().Be("default");
    }

    // Qwen3's pre_tokenizer as its tokenizer.json has it (llama.cpp names it "qwen2")
    private const string QwenPre = """
        {"type":"Sequence","pretokenizers":[
          {"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},
          {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false}]}
        """;

    [Fact]
    public void Qwen3PreTokenizerIsQwen2()
    {
        WriteTokenizer(_dir, ByteVocab(), [], preTokenizer: QwenPre);
        AsMap(HfBpeTokenizer.TryLoad(_dir, 256)!)["tokenizer.ggml.pre"].AsString().Should().Be("qwen2");
        // one digit more per run is another pre-tokenizer (llama3's), not qwen2
        WriteTokenizer(_dir, ByteVocab(), [], preTokenizer: QwenPre.Replace("\\\\p{N}|", "\\\\p{N}{1,3}|"));
        AsMap(HfBpeTokenizer.TryLoad(_dir, 256)!)["tokenizer.ggml.pre"].AsString().Should().Be("default");
    }

    [Fact]
    public void BadTokenizersAreRefusedNamingTheFile()
    {
        string path = WriteTokenizer(_dir, ByteVocab(), [], modelType: "WordPiece");
        Check(256, "only BPE");

        var big = ByteVocab();
        big["Ġt"] = 256;
        WriteTokenizer(_dir, big, []);
        Check(256, "more than vocab_size");

        var outOfRange = ByteVocab();
        outOfRange.Remove("A");
        outOfRange["A"] = 300;
        WriteTokenizer(_dir, outOfRange, []);
        Check(260, "id 300");

        File.WriteAllText(path, "{\"model\": {");
        Check(256, "invalid JSON");

        WriteTokenizer(_dir, ByteVocab(), []);
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), """{"bos_token":"<nope>"}""");
        var e = FluentActions.Invoking(() => HfBpeTokenizer.TryLoad(_dir, 256)).Should().Throw<InvalidDataException>().Which;
        e.Message.Should().Contain("tokenizer_config.json").And.Contain("<nope>");

        void Check(int vocabSize, string why) =>
            FluentActions.Invoking(() => HfBpeTokenizer.TryLoad(_dir, vocabSize)).Should().Throw<InvalidDataException>()
                .Which.Message.Should().Contain(path).And.Contain(why);
    }

    [Fact]
    public void ByteVocabularyTokenizerJsonExportsTheSameTokensAsTheByteLevelPath()
    {
        string golden = Path.Combine(Path.GetDirectoryName(Path.GetDirectoryName(GgmlGolden.Dir))!, "models", "tiny-dsv3");
        string model = Path.Combine(_dir, "tiny-dsv3");
        Directory.CreateDirectory(model);
        foreach (var f in Directory.GetFiles(golden)) File.Copy(f, Path.Combine(model, Path.GetFileName(f)));

        string plain = Path.Combine(_dir, "plain.gguf"), withJson = Path.Combine(_dir, "json.gguf");
        Export(model, plain);
        WriteTokenizer(model, ByteVocab(), [], preTokenizer: null);
        Export(model, withJson);

        using var a = GgufReader.Open(plain);
        using var b = GgufReader.Open(withJson);
        b["tokenizer.ggml.model"].Should().Be(a["tokenizer.ggml.model"]);
        b["tokenizer.ggml.tokens"].Should().Be(a["tokenizer.ggml.tokens"]);
        b["tokenizer.ggml.token_type"].Should().Be(a["tokenizer.ggml.token_type"]);
        b["tokenizer.ggml.merges"].Should().Be(a["tokenizer.ggml.merges"]);
        b["tokenizer.ggml.pre"].AsString().Should().Be("default");
        b["tokenizer.ggml.tokens"].AsArray<string>().Should().Equal(Gpt2Bytes());
    }

    private static void Export(string model, string output)
    {
        using var ckpt = ModelCheckpoint.Open(model);
        GgufExportPipeline.Run(ckpt, new GgufExportOptions(output, GgmlType.F32), NullLogger.Instance);
    }
}
