using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Converter.Formats.Gguf;
using Converter.Tests;

namespace Converter.EndToEnd.Tests;

/// <summary>
/// Kimi K2 checkpoints: <c>model_type: kimi_k2</c> (DeepSeek-V3's fields, architectures DeepseekV3ForCausalLM) is the
/// DeepSeek family, so tiny-dsv3's weights under a Kimi K2 config.json inspect and export to GGUF exactly as under
/// deepseek_v3; Kimi's tokenizer (tiktoken.model + tokenization_kimi.py, no tokenizer.json) goes into GGUF the way
/// llama.cpp's converter writes it, and llama.cpp tokenizes with it as the tiktoken ranks say.
/// </summary>
public sealed class KimiK2GgufTests : IDisposable
{
    private readonly TestData.TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>Kimi K2's config.json keys beyond DeepSeek-V3's architecture (from Kimi-K2-Instruct's file).</summary>
    private static void KimiConfig(JsonObject c)
    {
        c["model_type"] = "kimi_k2";
        c["architectures"] = new JsonArray("DeepseekV3ForCausalLM");
        c["auto_map"] = new JsonObject
        {
            ["AutoConfig"] = "configuration_deepseek.DeepseekV3Config",
            ["AutoModel"] = "modeling_deepseek.DeepseekV3Model",
            ["AutoModelForCausalLM"] = "modeling_deepseek.DeepseekV3ForCausalLM",
        };
        c["aux_loss_alpha"] = 0.001;
        c["seq_aux"] = true;
        c["pretraining_tp"] = 1;
        c["attention_dropout"] = 0.0;
        c["transformers_version"] = "4.48.3";
    }

    private string KimiCopy(string name, Func<TestCheckpoints.Entry, TestCheckpoints.Entry?>? edit = null, Action<JsonObject>? more = null)
    {
        string dir = _dir[name];
        TestCheckpoints.Copy(TestData.Model("tiny-dsv3"), dir, edit, c => { KimiConfig(c); more?.Invoke(c); });
        return dir;
    }

    [Fact]
    public void InspectReadsTheKimiConfigAsTheDeepSeekFamily()
    {
        string kimi = KimiCopy("kimi");
        var k = Converter.Tests.Cli.Run("inspect", kimi, "--json");
        k.ExitCode.Should().Be(0, k.ToString());
        var d = Converter.Tests.Cli.Run("inspect", TestData.Model("tiny-dsv3"), "--json");
        d.ExitCode.Should().Be(0, d.ToString());
        var kj = JsonNode.Parse(k.StdOut)!.AsObject();
        var dj = JsonNode.Parse(d.StdOut)!.AsObject();
        ((string?)kj["model_type"]).Should().Be("kimi_k2");
        // everything but the folder, its shard files and the model type reads the same
        foreach (var o in new[] { kj, dj })
            foreach (var key in new[] { "model_type", "directory", "shards", "stored_bytes" })
                o.Remove(key);
        kj.ToJsonString().Should().Be(dj.ToJsonString());
    }

    [Fact]
    public void GgufIsTheDeepSeekOneByteForByteAndMatchesTheGoldenInLlamaCpp()
    {
        string kimi = KimiCopy("kimi");
        string a = _dir["kimi.gguf"], b = _dir["dsv3.gguf"];
        // the same general.name, so the files must be identical
        var r = Converter.Tests.Cli.Run("export", "gguf", kimi, "-o", a, "--type", "f32", "--name", "tiny");
        r.ExitCode.Should().Be(0, r.ToString());
        r = Converter.Tests.Cli.Run("export", "gguf", TestData.Model("tiny-dsv3"), "-o", b, "--type", "f32", "--name", "tiny");
        r.ExitCode.Should().Be(0, r.ToString());
        File.ReadAllBytes(a).Should().Equal(File.ReadAllBytes(b));

        // and without --name only general.name (the folder name) differs
        string c = _dir["kimi-named.gguf"];
        Converter.Tests.Cli.Run("export", "gguf", kimi, "-o", c, "--type", "f32").ExitCode.Should().Be(0);
        using (var rc = GgufReader.Open(c))
        using (var rb = GgufReader.Open(b))
        {
            rc["general.name"].AsString().Should().Be("kimi");
            rc.Metadata.Select(kv => kv.Key).Should().Equal(rb.Metadata.Select(kv => kv.Key));
            foreach (var (key, value) in rb.Metadata)
                if (key != "general.name" && !value.IsArray) rc[key].ToString().Should().Be(value.ToString(), key);
            rc["tokenizer.ggml.tokens"].AsArray<string>().Should().Equal(rb["tokenizer.ggml.tokens"].AsArray<string>());
            foreach (var t in rb.Tensors)
                rc.GetTensorData(rc.GetTensor(t.Name)).SequenceEqual(rb.GetTensorData(t)).Should().BeTrue(t.Name);
        }

        var cmp = LlamaCpp.CompareWithGolden(a, TestData.Golden("tiny-dsv3", "eval.safetensors"), 2, _dir.Path);
        // as tiny-dsv3's own F32 file (GgufLlamaCppInteropTests): measured 3.2e-5
        cmp.MaxAbsDiff.Should().BeLessThan(5e-4, $"{cmp}");
        cmp.Top1Agreement.Should().Be(1.0);
    }

    // ---------------------------------------------------------------- Kimi's tiktoken tokenizer

    /// <summary>Multi-byte tokens after the 256 single bytes, in rank order (each a merge of two earlier tokens).</summary>
    private static readonly string[] MergedTokens = ["he", "ll", "hell", "hello", " w", "or", " wor", "ld", " world", "lo", " lo", "12"];

    private const int Reserved = 256;
    private static int NumBase => 256 + MergedTokens.Length;
    private static int Vocab => NumBase + Reserved;

    /// <summary>A stand-in for Kimi K2's tokenization_kimi.py: the parts the converter's behaviour depends on.</summary>
    private const string KimiCode = """"
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
        from transformers.tokenization_utils import PreTrainedTokenizer

        VOCAB_FILES_NAMES = {"vocab_file": "tiktoken.model"}


        class TikTokenTokenizer(PreTrainedTokenizer):
            num_reserved_special_tokens = 256

            pat_str = "|".join(
                [
                    r"""[\p{Han}]+""",
                    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                    r"""\p{N}{1,3}""",
                    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
                    r"""\s*[\r\n]+""",
                    r"""\s+(?!\S)""",
                    r"""\s+""",
                ]
            )

            def __init__(self, vocab_file, added_tokens_decoder=None, **kwargs):
                special_tokens_mapping = {i: added_tokens_decoder[i].content for i in added_tokens_decoder}
                mergeable_ranks = load_tiktoken_bpe(vocab_file)
                num_base_tokens = len(mergeable_ranks)
                self.special_tokens = {
                    special_tokens_mapping.get(i, f"<|reserved_token_{i}|>"): i
                    for i in range(num_base_tokens, num_base_tokens + self.num_reserved_special_tokens)
                }
        """";

    /// <summary>tiny-dsv3 with its vocabulary grown to the tiktoken ranks + reserved specials (new rows zero), under a
    /// Kimi config, with tiktoken.model, tokenization_kimi.py and tokenizer_config.json.</summary>
    private string KimiWithTiktoken(string name)
    {
        TestCheckpoints.Entry? Grow(TestCheckpoints.Entry e)
        {
            // the main and the MTP layer's embeddings and heads
            if (!(e.Name.EndsWith("embed_tokens.weight") || e.Name.EndsWith("lm_head.weight") || e.Name.EndsWith("shared_head.head.weight"))) return e;
            long cols = e.Shape[1];
            var bytes = new byte[Vocab * cols * 2]; // BF16
            e.Bytes.CopyTo(bytes, 0);
            return e with { Shape = [Vocab, cols], Bytes = bytes };
        }
        string dir = KimiCopy(name, Grow, c =>
        {
            c["vocab_size"] = Vocab;
            c["bos_token_id"] = NumBase;      // [BOS]
            c["eos_token_id"] = NumBase + 1;  // [EOS]
        });
        var lines = new StringBuilder();
        for (int b = 0; b < 256; b++) lines.Append(Convert.ToBase64String([(byte)b])).Append(' ').Append(b).Append('\n');
        for (int i = 0; i < MergedTokens.Length; i++)
            lines.Append(Convert.ToBase64String(Encoding.UTF8.GetBytes(MergedTokens[i]))).Append(' ').Append(256 + i).Append('\n');
        File.WriteAllText(Path.Combine(dir, "tiktoken.model"), lines.ToString());
        File.WriteAllText(Path.Combine(dir, "tokenization_kimi.py"), KimiCode);
        var added = new JsonObject();
        foreach (var (off, content) in new[] { (0, "[BOS]"), (1, "[EOS]"), (4, "<|im_end|>"), (255, "[PAD]") })
            added[(NumBase + off).ToString()] = new JsonObject { ["content"] = content, ["special"] = true };
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), new JsonObject
        {
            ["added_tokens_decoder"] = added,
            ["auto_map"] = new JsonObject { ["AutoTokenizer"] = new JsonArray("tokenization_kimi.TikTokenTokenizer", null) },
            ["bos_token"] = "[BOS]",
            ["eos_token"] = "[EOS]",
            ["tokenizer_class"] = "TikTokenTokenizer",
            ["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}",
        }.ToJsonString());
        return dir;
    }

    /// <summary>tiktoken's encoding of one pre-tokenized piece: merge the adjacent pair of lowest rank until none.</summary>
    private static List<int> TiktokenEncode(string piece, Dictionary<string, int> ranks)
    {
        var parts = Encoding.UTF8.GetBytes(piece).Select(b => Encoding.Latin1.GetString([b])).ToList();
        while (true)
        {
            int at = -1, best = int.MaxValue;
            for (int i = 0; i + 1 < parts.Count; i++)
                if (ranks.TryGetValue(parts[i] + parts[i + 1], out int r) && r < best) { best = r; at = i; }
            if (at < 0) break;
            parts[at] += parts[at + 1];
            parts.RemoveAt(at + 1);
        }
        return parts.Select(p => ranks[p]).ToList();
    }

    [Fact]
    public void KimiTiktokenVocabularyIsWrittenAsLlamaCppsConverterDoesAndTokenizesByTheRanks()
    {
        string model = KimiWithTiktoken("kimi-tok");
        string gguf = _dir["kimi-tok.gguf"];
        var r = Converter.Tests.Cli.Run("export", "gguf", model, "-o", gguf, "--type", "f32");
        r.ExitCode.Should().Be(0, r.ToString());

        using (var g = GgufReader.Open(gguf))
        {
            g["tokenizer.ggml.model"].AsString().Should().Be("gpt2");
            g["tokenizer.ggml.pre"].AsString().Should().Be("kimi-k2");
            var tokens = g["tokenizer.ggml.tokens"].AsArray<string>();
            var types = g["tokenizer.ggml.token_type"].AsArray<int>();
            tokens.Should().HaveCount(Vocab);
            tokens[32].Should().Be("Ġ");
            tokens[256].Should().Be("he");
            tokens[256 + 4].Should().Be("Ġw"); // " w" in GPT-2 byte-to-unicode spelling
            tokens[NumBase].Should().Be("[BOS]");
            tokens[NumBase + 2].Should().Be($"<|reserved_token_{NumBase + 2}|>");
            tokens[NumBase + 4].Should().Be("<|im_end|>");
            tokens[Vocab - 1].Should().Be("[PAD]");
            types.Take(NumBase).Should().AllBeEquivalentTo(1);
            types.Skip(NumBase).Should().AllBeEquivalentTo(3);
            // QwenModel.bpe(token, max_rank=rank) for each multi-byte token; a 2-part result is a merge, in rank order
            g["tokenizer.ggml.merges"].AsArray<string>().Should().Equal(
                "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "l o", "Ġ lo", "1 2");
            g["tokenizer.ggml.bos_token_id"].AsUInt32().Should().Be((uint)NumBase);
            g["tokenizer.ggml.eos_token_id"].AsUInt32().Should().Be((uint)NumBase + 1);
            g["tokenizer.chat_template"].AsString().Should().Contain("messages");
        }

        var ranks = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int b = 0; b < 256; b++) ranks[Encoding.Latin1.GetString([(byte)b])] = b;
        for (int i = 0; i < MergedTokens.Length; i++) ranks[Encoding.Latin1.GetString(Encoding.UTF8.GetBytes(MergedTokens[i]))] = 256 + i;
        string[] texts = ["hello world", "hello lolo hell world", "worldly hellos 12345 lo!", "Hello  world\nhe"];
        // Kimi's pattern on ASCII text: letter runs with one optional leading non-letter, digits in runs of 1-3,
        // punctuation runs, whitespace as GPT-2's pattern splits it
        var pieces = new Regex(@"[^\r\n\p{L}\p{N}]?[A-Z]*[a-z]+|[^\r\n\p{L}\p{N}]?[A-Z]+[a-z]*|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+");
        var expected = texts.Select(t => pieces.Matches(t).SelectMany(m => TiktokenEncode(m.Value, ranks)).ToArray()).ToArray();
        expected[0].Should().Equal(256 + 3, 256 + 8); // "hello", " world": two tokens

        var got = LlamaCpp.Tokenize(gguf, texts, _dir.Path);
        for (int i = 0; i < texts.Length; i++)
            got[i].Should().Equal(expected[i], $"llama.cpp's tokens of '{texts[i]}'");

        // the file also runs: the grown vocabulary's first 256 logits are tiny-dsv3's
        var seq = new[] { Encoding.ASCII.GetBytes("hello world, again").Select(b => (int)b).ToArray() };
        string plain = _dir["plain.gguf"];
        Converter.Tests.Cli.Run("export", "gguf", TestData.Model("tiny-dsv3"), "-o", plain, "--type", "f32").ExitCode.Should().Be(0);
        var a = LlamaCpp.Logits(gguf, seq, _dir.Path, out int va);
        var p = LlamaCpp.Logits(plain, seq, _dir.Path, out int vp);
        va.Should().Be(Vocab);
        vp.Should().Be(256);
        double diff = 0;
        for (int t = 0; t < seq[0].Length; t++)
            for (int i = 0; i < 256; i++) diff = Math.Max(diff, Math.Abs(a[0][t][i] - p[0][t][i]));
        diff.Should().BeLessThan(1e-4);
    }

    [Fact]
    public void TiktokenWithoutKimisCodeIsRefusedSayingWhatToProvide()
    {
        string model = KimiWithTiktoken("kimi-nocode");
        File.Delete(Path.Combine(model, "tokenization_kimi.py"));
        string gguf = _dir["nocode.gguf"];
        var r = Converter.Tests.Cli.Run("export", "gguf", model, "-o", gguf, "--type", "f32");
        r.ExitCode.Should().Be(2, r.ToString());
        r.StdErr.Should().Contain("tokenization_kimi.py").And.Contain("tokenizer.json");
        r.StdErr.Trim().Split('\n').Should().HaveCount(1);
        File.Exists(gguf).Should().BeFalse();
    }

    [Fact]
    public void BrokenTiktokenFileIsRefusedNamingTheLine()
    {
        string model = KimiWithTiktoken("kimi-bad");
        File.AppendAllText(Path.Combine(model, "tiktoken.model"), "not-base64! 999\n");
        string gguf = _dir["bad.gguf"];
        var r = Converter.Tests.Cli.Run("export", "gguf", model, "-o", gguf, "--type", "f32");
        r.ExitCode.Should().Be(2, r.ToString());
        r.StdErr.Should().Contain("tiktoken.model").And.Contain($"line {NumBase + 1}");
        File.Exists(gguf).Should().BeFalse();
    }
}
