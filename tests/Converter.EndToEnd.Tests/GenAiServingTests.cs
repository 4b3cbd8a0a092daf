using System.Text;
using System.Text.Json.Nodes;
using Converter.Runtime;
using Converter.Verification;
using Microsoft.ML.OnnxRuntimeGenAI;

namespace Converter.Tests;

/// <summary>
/// The `export onnx --kv-cache` folder served unmodified by onnxruntime-genai 0.18.0 (NuGet Microsoft.ML.OnnxRuntimeGenAI,
/// whose native library runs on the Microsoft.ML.OnnxRuntime 1.31.1 the tool ships): its genai_config.json and
/// tokenizer load, 16 golden tokens prefill, the rest are appended one at a time, and every step's logits match the
/// transformers golden; greedy generation through genai equals `converter generate --temperature 0`, an independent
/// full-sequence argmax through ONNX Runtime, and (tiny-dsv3) llama.cpp on the GGUF F32 export.
/// </summary>
public class GenAiServingTests(Xunit.Abstractions.ITestOutputHelper log) : IDisposable
{
    private readonly TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private const int Prefill = 16;
    private const string Prompt = "The quick brown fox";

    private string Export(string model)
    {
        var dir = _tmp[model];
        var export = Cli.Run("export", "onnx", TestData.Model(model), "-o", dir, "--kv-cache", "-q");
        export.ExitCode.Should().Be(0, export.ToString());
        foreach (var f in new[] { "genai_config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json" })
            File.Exists(Path.Combine(dir, f)).Should().BeTrue(f);
        return dir;
    }

    [Theory]
    [InlineData("tiny-dsv3")]
    [InlineData("tiny-qwen3moe")]
    public void GenAiPrefillThenOneTokenAtATimeMatchesTheGolden(string model)
    {
        var dir = Export(model);
        var golden = GoldenSet.Load(TestData.Golden(model, "eval.safetensors"));
        var stable = golden.StableMask(new VerificationTolerances().StableMarginThreshold);
        int vocab = golden.Vocab, seq = golden.Seq;
        using var config = new Config(dir);
        using var genai = new Model(config);
        double maxStable = 0, maxAll = 0;
        int positions = 0, stablePositions = 0, top1 = 0, prefillRows = 0;
        for (int b = 0; b < golden.Batch; b++)
        {
            var tokens = golden.Tokens.AsSpan(b * seq, seq).ToArray();
            using var p = new GeneratorParams(genai);
            p.SetSearchOption("max_length", seq);
            using var g = new Generator(genai, p);
            void Compare(int start)
            {
                using var t = g.GetOutput("logits");
                var shape = t.Shape();
                shape.Length.Should().Be(3);
                shape[2].Should().Be(vocab);
                int rows = (int)shape[1];
                if (start == 0) prefillRows = rows;
                var data = t.GetData<float>();
                // genai returns every appended position's logits, or the last one's only
                int first = start + (start == 0 ? Prefill : 1) - rows;
                for (int r = 0; r < rows; r++)
                {
                    int pos = first + r, at = b * seq + pos;
                    var got = data.Slice(r * vocab, vocab);
                    var want = golden.Logits.AsSpan(at * vocab, vocab);
                    double d = 0;
                    int argGot = 0, argWant = 0;
                    for (int v = 0; v < vocab; v++)
                    {
                        d = Math.Max(d, Math.Abs(got[v] - want[v]));
                        if (got[v] > got[argGot]) argGot = v;
                        if (want[v] > want[argWant]) argWant = v;
                    }
                    positions++;
                    maxAll = Math.Max(maxAll, d);
                    if (!stable[at]) continue;
                    stablePositions++;
                    maxStable = Math.Max(maxStable, d);
                    if (argGot == argWant) top1++;
                }
            }
            g.AppendTokens(tokens.AsSpan(0, Prefill));
            Compare(0);
            for (int i = Prefill; i < seq; i++)
            {
                g.AppendTokens(tokens.AsSpan(i, 1));
                Compare(i);
            }
        }
        log.WriteLine($"{model}: {golden.Batch} sequences, prefill {Prefill} (genai returned {prefillRows} prefill rows), {positions} positions compared, " +
                      $"{stablePositions} routing-stable: max |logit diff| stable {maxStable:E2} (all {maxAll:E2}), top-1 {top1}/{stablePositions}");
        positions.Should().BeGreaterThanOrEqualTo(golden.Batch * (seq - Prefill + 1));
        maxStable.Should().BeLessThanOrEqualTo(1e-3);
        top1.Should().Be(stablePositions);
    }

    [Theory]
    [InlineData("tiny-dsv3")]
    [InlineData("tiny-qwen3moe")]
    public void GreedyGenerationThroughGenAiEqualsConverterGenerateAndTheFullSequenceArgmax(string model)
    {
        const int newTokens = 24;
        var dir = Export(model);
        int[] prompt, greedy;
        using (var config = new Config(dir))
        using (var genai = new Model(config))
        using (var tokenizer = new Tokenizer(genai))
        {
            using (var enc = tokenizer.Encode(Prompt)) prompt = enc[0].ToArray();
            prompt.Should().Equal(Encoding.UTF8.GetBytes(Prompt).Select(x => (int)x), "the byte-level tokenizer maps each UTF-8 byte to its id");
            using var p = new GeneratorParams(genai);
            p.SetSearchOption("max_length", prompt.Length + newTokens);
            p.SetSearchOption("do_sample", false);
            using var g = new Generator(genai, p);
            g.AppendTokens(prompt);
            var list = new List<int>();
            while (!g.IsDone())
            {
                g.GenerateNextToken();
                list.Add(g.GetNextTokens()[0]);
            }
            greedy = list.ToArray();
            tokenizer.Decode(prompt).Should().Be(Prompt);
        }
        greedy.Should().HaveCount(newTokens);
        log.WriteLine($"{model}: greedy {string.Join(",", greedy)}");

        var r = Cli.Run("generate", dir, "--prompt", Prompt, "--temperature", "0", "--max-new-tokens", newTokens.ToString(), "--json");
        r.ExitCode.Should().Be(0, r.ToString());
        var json = JsonNode.Parse(r.StdOut)!;
        json["prompt_tokens"]!.AsArray().Select(x => x!.GetValue<int>()).Should().Equal(prompt);
        json["tokens"]!.AsArray().Select(x => x!.GetValue<int>()).Should().Equal(greedy);
        json["text"]!.GetValue<string>().Should().Be(Encoding.UTF8.GetString(greedy.Select(x => (byte)x).ToArray()));
        json["decode_tokens_per_second"]!.GetValue<double>().Should().BePositive();

        // Independent of genai: the whole sequence through ONNX Runtime (empty past) every step, highest logit.
        using var ort = new OnnxArtifactRunner(dir);
        var seqTokens = prompt.ToList();
        for (int i = 0; i < newTokens; i++)
        {
            var logits = ort.Run(seqTokens.ToArray(), 1, seqTokens.Count, false, false).Logits;
            int vocab = logits.Length / seqTokens.Count;
            var last = logits.AsSpan((seqTokens.Count - 1) * vocab, vocab);
            int arg = 0;
            for (int v = 1; v < vocab; v++) if (last[v] > last[arg]) arg = v;
            seqTokens.Add(arg);
        }
        seqTokens.Skip(prompt.Length).Should().Equal(greedy);
    }

    [Fact]
    public void GreedyGenerationOfTheGgufF32ExportInLlamaCppEqualsTheOnnxOne()
    {
        var dir = Export("tiny-dsv3");
        var gguf = _tmp["tiny-dsv3-f32.gguf"];
        var e = Cli.Run("export", "gguf", TestData.Model("tiny-dsv3"), "-o", gguf, "--type", "f32", "-q");
        e.ExitCode.Should().Be(0, e.ToString());
        JsonNode Generate(string artifact, params string[] more)
        {
            var r = Cli.Run(["generate", artifact, "--prompt", Prompt, "--temperature", "0", "--max-new-tokens", "24", "--json", "--threads", "1", .. more]);
            r.ExitCode.Should().Be(0, r.ToString());
            return JsonNode.Parse(r.StdOut)!;
        }
        var onnx = Generate(dir);
        var llama = Generate(gguf, "--kv-cache", "f32");
        log.WriteLine($"onnx: {onnx["decode_tokens_per_second"]} tokens/s, llama.cpp: {llama["decode_tokens_per_second"]} tokens/s; {llama["runtime"]}");
        llama["prompt_tokens"]!.ToJsonString().Should().Be(onnx["prompt_tokens"]!.ToJsonString());
        llama["tokens"]!.ToJsonString().Should().Be(onnx["tokens"]!.ToJsonString());
        llama["text"]!.GetValue<string>().Should().Be(onnx["text"]!.GetValue<string>());
    }

    [Fact]
    public void ChatWrapsThePromptWithTheTokenizerConfigTemplate()
    {
        var dir = Export("tiny-qwen3moe");
        var configPath = Path.Combine(dir, "tokenizer_config.json");
        var cfg = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        cfg["chat_template"] = "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        File.WriteAllText(configPath, cfg.ToJsonString());
        var r = Cli.Run("generate", dir, "--prompt", "hi", "--chat", "--max-new-tokens", "4", "--json");
        r.ExitCode.Should().Be(0, r.ToString());
        var prompt = JsonNode.Parse(r.StdOut)!["prompt_tokens"]!.AsArray().Select(x => (byte)x!.GetValue<int>()).ToArray();
        Encoding.UTF8.GetString(prompt).Should().Be("<user>hi\n<assistant>");
    }

    [Fact]
    public void ACheckpointsTokenizerAndChatTemplateReachBothOnnxAndGguf()
    {
        // tiny-dsv3 with tokenizer files of its own: export onnx copies them, export gguf carries the chat template
        var src = _tmp["with-tokenizer"];
        Directory.CreateDirectory(src);
        foreach (var f in Directory.GetFiles(TestData.Model("tiny-dsv3"))) File.Copy(f, Path.Combine(src, Path.GetFileName(f)));
        File.WriteAllText(Path.Combine(src, "tokenizer.json"), Converter.Models.Tokenizers.ByteLevelTokenizerFiles.TokenizerJson().ToJsonString());
        var cfg = Converter.Models.Tokenizers.ByteLevelTokenizerFiles.TokenizerConfigJson(1024);
        cfg["chat_template"] = "{% for message in messages %}[{{ message['role'] }}] {{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}";
        File.WriteAllText(Path.Combine(src, "tokenizer_config.json"), cfg.ToJsonString());
        var onnx = _tmp["onnx"];
        Cli.Run("export", "onnx", src, "-o", onnx, "--kv-cache", "-q").ExitCode.Should().Be(0);
        File.ReadAllText(Path.Combine(onnx, "tokenizer_config.json")).Should().Be(File.ReadAllText(Path.Combine(src, "tokenizer_config.json")));
        var gguf = _tmp["chat.gguf"];
        var e = Cli.Run("export", "gguf", src, "-o", gguf, "--type", "f32", "-q");
        e.ExitCode.Should().Be(0, e.ToString());
        JsonNode Generate(string artifact, params string[] more)
        {
            var r = Cli.Run(["generate", artifact, "--prompt", "hello", "--chat", "--temperature", "0", "--max-new-tokens", "12", "--json", "--threads", "1", .. more]);
            r.ExitCode.Should().Be(0, r.ToString());
            return JsonNode.Parse(r.StdOut)!;
        }
        var a = Generate(onnx);
        var b = Generate(gguf, "--kv-cache", "f32");
        var prompt = a["prompt_tokens"]!.AsArray().Select(x => (byte)x!.GetValue<int>()).ToArray();
        Encoding.UTF8.GetString(prompt).Should().Be("[user] hello\n[assistant] ");
        b["prompt_tokens"]!.ToJsonString().Should().Be(a["prompt_tokens"]!.ToJsonString());
        b["tokens"]!.ToJsonString().Should().Be(a["tokens"]!.ToJsonString());
    }

    [Fact]
    public void GenerateRefusesBadInputWithOneLine()
    {
        var plain = _tmp["plain"];
        Cli.Run("export", "onnx", TestData.Model("tiny-qwen3moe"), "-o", plain, "-q").ExitCode.Should().Be(0);
        var kv = Export("tiny-qwen3moe");
        foreach (var (args, says) in new (string[], string)[]
                 {
                     ([plain, "--prompt", "x"], "--kv-cache"),
                     ([kv, "--prompt", "x", "--chat"], "chat_template"),
                     ([kv, "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
                     ([kv, "--prompt", "x", "--temperature", "hot"], "--temperature"),
                     ([kv, "--prompt", "x", "--temperature", "1", "--top-p", "1.5"], "--top-p"),
                     ([_tmp["missing"], "--prompt", "x"], "missing"),
                 })
        {
            var r = Cli.Run(["generate", .. args]);
            r.ExitCode.Should().Be(2, r.ToString());
            var errors = r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("error:")).ToList();
            errors.Should().ContainSingle(r.ToString()).Which.Should().Contain(says);
        }
    }
}
