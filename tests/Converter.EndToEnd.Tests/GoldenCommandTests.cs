using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Runtime.Golden;
using Converter.Tensors;
using Converter.Tests;
using Converter.Tools.Synth;
using Converter.Verification;
using Xunit.Abstractions;

namespace Converter.EndToEnd.Tests;

/// <summary>
/// <c>converter golden</c> through the real executable: the reference from the checkpoint (fp32 ONNX export, layer slice
/// by layer slice) against what transformers computed in float64, text input, and the compact form at DeepSeek-V3's
/// vocabulary.
/// </summary>
public sealed class GoldenCommandTests(ITestOutputHelper output) : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static double MaxAbs(float[] a, float[] b)
    {
        a.Length.Should().Be(b.Length);
        double m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs((double)a[i] - b[i]));
        return m;
    }

    private static double MaxAbsAt(float[] a, float[] b, bool[] stable, int perPosition)
    {
        a.Length.Should().Be(b.Length);
        double m = 0;
        for (int p = 0; p < stable.Length; p++)
            if (stable[p])
                for (int i = p * perPosition; i < (p + 1) * perPosition; i++) m = Math.Max(m, Math.Abs((double)a[i] - b[i]));
        return m;
    }

    /// <summary>Largest |a - b| relative to the largest |b| of each entry (a layer's streams).</summary>
    private static double MaxRelativePerEntry(float[] a, float[] b, int entries)
    {
        a.Length.Should().Be(b.Length);
        int per = b.Length / entries;
        double worst = 0;
        for (int e = 0; e < entries; e++)
        {
            double diff = 0, scale = 0;
            for (int i = e * per; i < (e + 1) * per; i++)
            {
                diff = Math.Max(diff, Math.Abs((double)a[i] - b[i]));
                scale = Math.Max(scale, Math.Abs((double)b[i]));
            }
            worst = Math.Max(worst, diff / scale);
        }
        return worst;
    }

    /// <summary>DeepSeek-V4 (hyper-connection streams, compressed sparse attention, hash routing) through the same
    /// sliced reference: logits at positions whose routing and indexer choices are not near-ties, the residual
    /// streams, and the routing.</summary>
    [Fact]
    public void ReproducesTransformersForDeepSeekV4()
    {
        const string model = "tiny-dsv4";
        string path = _tmp[model + ".golden.safetensors"], eval = TestData.Golden(model, "eval.safetensors");
        var r = Converter.Tests.Cli.Run("golden", TestData.Model(model), "--tokens", eval, "--full-logits", "-o", path);
        r.ExitCode.Should().Be(0, r.ToString());
        var ours = GoldenSet.Load(path);
        var hf = GoldenSet.Load(eval);
        ours.Tokens.Should().Equal(hf.Tokens);
        var stable = hf.StableMask(1e-4, 1e-5);
        int stableCount = stable.Count(x => x);
        double logits = MaxAbsAt(ours.Logits!, hf.Logits!, stable, hf.Vocab), all = MaxAbs(ours.Logits!, hf.Logits!);
        // the goldens keep sequence 0's streams for its first positions: compare those
        ours.ResidualPositions.Should().Be(hf.ResidualPositions);
        double streams = MaxRelativePerEntry(ours.ResidualStates!, hf.ResidualStates!, hf.ResidualStateCount);
        double final = MaxRelativePerEntry(ours.FinalHidden!, hf.FinalHidden!, 1);
        int k = hf.TopK, n = hf.Positions, same = 0, total = 0;
        for (int m = 0; m < hf.MoeLayers; m++)
            for (int p = 0; p < n; p++)
            {
                if (!stable[p]) continue;
                total++;
                if (GoldenComparer.SameSet(ours.RouteTopK.AsSpan((m * n + p) * k, k), hf.RouteTopK.AsSpan((m * n + p) * k, k))) same++;
            }
        output.WriteLine($"{model}: {stableCount}/{n} stable positions; max |logit diff| {logits:E2} there ({all:E2} over all), " +
                         $"streams {streams:E2} and final hidden {final:E2} relative, routing {same}/{total} the same");
        logits.Should().BeLessThanOrEqualTo(1e-4);
        streams.Should().BeLessThanOrEqualTo(1e-4);
        final.Should().BeLessThanOrEqualTo(1e-4);
        same.Should().Be(total);
        ours.Identity.ModelType.Should().Be("deepseek_v4");
    }

    [Theory]
    [InlineData("tiny-dsv3")]
    [InlineData("tiny-qwen3moe")]
    public void ReproducesTransformersFromTheCheckpoint(string model)
    {
        string path = _tmp[model + ".golden.safetensors"], eval = TestData.Golden(model, "eval.safetensors");
        var r = Converter.Tests.Cli.Run("golden", TestData.Model(model), "--tokens", eval, "--full-logits", "-o", path);
        r.ExitCode.Should().Be(0, r.ToString());
        r.StdOut.Trim().Should().Be(Path.GetFullPath(path)); // stdout: the file written; logs and progress on stderr
        var ours = GoldenSet.Load(path);
        var hf = GoldenSet.Load(eval);
        ours.Tokens.Should().Equal(hf.Tokens);
        double logits = MaxAbs(ours.Logits!, hf.Logits!), nll = MaxAbs(ours.Nll, hf.Nll), hidden = MaxAbs(ours.HiddenStates!, hf.HiddenStates!);
        // routing: the same expert set at every stable (layer, position), margins alike
        var stable = hf.StableMask(1e-4);
        int k = hf.TopK, n = hf.Positions, same = 0, total = 0;
        for (int m = 0; m < hf.MoeLayers; m++)
            for (int p = 0; p < n; p++)
            {
                if (!stable[p]) continue;
                total++;
                if (GoldenComparer.SameSet(ours.RouteTopK.AsSpan((m * n + p) * k, k), hf.RouteTopK.AsSpan((m * n + p) * k, k))) same++;
            }
        double margins = MaxAbs(ours.RouteMargin!, hf.RouteMargin!);
        output.WriteLine($"{model}: max |logit diff| {logits:E2}, |nll diff| {nll:E2}, |hidden diff| {hidden:E2}, routing {same}/{total} stable " +
                         $"(layer, position) pairs the same, |margin diff| {margins:E2}");
        logits.Should().BeLessThanOrEqualTo(1e-4);
        nll.Should().BeLessThanOrEqualTo(1e-4);
        hidden.Should().BeLessThanOrEqualTo(1e-4);
        same.Should().Be(total);
        margins.Should().BeLessThanOrEqualTo(1e-5);
        ours.Identity.ModelType.Should().Be(model == "tiny-dsv3" ? "deepseek_v3" : "qwen3_moe");
        ours.Identity.ConfigFingerprint.Should().NotBeNullOrEmpty();

        // verify of the fp32 export against this golden: the fp32 preset holds, and the golden knows its model
        var onnx = _tmp[model + ".onnx"];
        Converter.Tests.Cli.Run("export", "onnx", TestData.Model(model), "-o", onnx, "-q").ExitCode.Should().Be(0);
        var v = Converter.Tests.Cli.Run("verify", onnx, "--golden", path);
        v.ExitCode.Should().Be(0, v.ToString());
        v.StdOut.Should().Contain("preset:   fp32 (ONNX converter.weights = fp32)").And.Contain("PASSED");
        // and refuses another model's
        string other = model == "tiny-dsv3" ? "tiny-qwen3moe" : "tiny-dsv3";
        var wrong = Converter.Tests.Cli.Run("verify", onnx, "--model", TestData.Model(other), "--golden", path);
        wrong.ExitCode.Should().Be(2, wrong.ToString());
    }

    [Fact]
    public void TextIsTokenizedAsBytesForAByteLevelModel()
    {
        string text = _tmp["text.txt"];
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("The quick brown fox jumps over the lazy dog. ", 20)));
        string path = _tmp["text.golden.safetensors"];
        var r = Converter.Tests.Cli.Run("golden", TestData.Model("tiny-dsv3"), "--text", text, "--seq-len", "64", "--max-sequences", "3", "-o", path);
        r.ExitCode.Should().Be(0, r.ToString());
        var g = GoldenSet.Load(path);
        (g.Batch, g.Seq).Should().Be((3, 64));
        g.Tokens.Take(4).Should().Equal((int)'T', (int)'h', (int)'e', (int)' ');
        g.Identity.Tokens.Should().Contain("UTF-8 bytes");
    }

    [Fact]
    public void TokenizerJsonGoesThroughTheBpeMerges()
    {
        string dir = _tmp["tok"];
        Directory.CreateDirectory(dir);
        WriteByteLevelTokenizer(Path.Combine(dir, "tokenizer.json"), [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]);
        var (encode, what) = GoldenTokens.Tokenizer(dir, 129280);
        what.Should().Be("tokenizer.json");
        // "a the": pre-tokenized into "a", " the"; " the" -> Ġt + he -> Ġthe (ids 256, 257, 258 in merge order)
        encode("a the").Should().Equal(97, 258);
        encode("the").Should().Equal(116, 257);
    }

    /// <summary>A GPT-2 byte-level BPE tokenizer.json: the 256 byte symbols as ids 0..255, then one token per merge.</summary>
    public static void WriteByteLevelTokenizer(string path, (string A, string B)[] merges)
    {
        var bs = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToList();
        var cs = bs.ToList();
        int extra = 0;
        for (int b = 0; b < 256; b++)
            if (!bs.Contains(b)) { bs.Add(b); cs.Add(256 + extra++); }
        var vocab = new JsonObject();
        foreach (var (b, c) in bs.Zip(cs).OrderBy(x => x.First)) vocab[((char)c).ToString()] = b;
        int id = 256;
        foreach (var (a, b) in merges) vocab[a + b] = id++;
        var doc = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = new JsonArray(merges.Select(m => (JsonNode)$"{m.A} {m.B}").ToArray()),
            },
        };
        File.WriteAllText(path, doc.ToJsonString());
    }

    /// <summary>tokens int32 [sequences, length] as a safetensors file (the golden format's own tokens tensor).</summary>
    public static void WriteTokens(string path, int[] tokens, int sequences, int length)
    {
        var bytes = MemoryMarshal.AsBytes(tokens.AsSpan()).ToArray();
        var header = SafetensorsHeader.Build([("tokens", DType.I32, [sequences, length], 0, bytes.Length)], null);
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes((long)header.Length));
        fs.Write(header);
        fs.Write(bytes);
    }

    /// <summary>
    /// The compact golden at DeepSeek-V3's vocabulary (129,280, a synthetic checkpoint from tools/Synth with a byte-level
    /// tokenizer.json for the GGUF export): at most 1/50 of the full-logits file, and verify's kl_mean within 1% of the
    /// full computation on a Q4_K_M GGUF and an INT4 ONNX export of the same checkpoint.
    /// </summary>
    [Fact]
    public void CompactGoldenAtDeepSeekVocabularyIsSmallAndGivesTheSameKl()
    {
        string model = _tmp["synth"];
        SyntheticCheckpoint.Write(model, new SynthOptions
        {
            Layers = 2, DenseLayers = 1, Experts = 8, ExpertsPerToken = 2, Groups = 1, TopkGroups = 1, Hidden = 256, MoeIntermediate = 256,
            Intermediate = 512, Heads = 2, QLoraRank = 64, KvLoraRank = 64, NopeDim = 32, RopeDim = 32, VDim = 32, Vocab = 129280,
        });
        WriteByteLevelTokenizer(Path.Combine(model, "tokenizer.json"), []);
        var rng = new Random(7);
        const int sequences = 8, length = 64;
        var tokens = Enumerable.Range(0, sequences * length).Select(_ => rng.Next(129280)).ToArray();
        string tokensPath = _tmp["tokens.safetensors"];
        WriteTokens(tokensPath, tokens, sequences, length);

        string full = _tmp["full.safetensors"], compact = _tmp["compact.safetensors"];
        Converter.Tests.Cli.Run("golden", model, "--tokens", tokensPath, "--full-logits", "-o", full, "-q").ExitCode.Should().Be(0);
        var rc = Converter.Tests.Cli.Run("golden", model, "--tokens", tokensPath, "-o", compact, "-q");
        rc.ExitCode.Should().Be(0, rc.ToString());
        long fullBytes = new FileInfo(full).Length, compactBytes = new FileInfo(compact).Length;
        output.WriteLine($"full logits {fullBytes:N0} bytes, compact {compactBytes:N0} bytes (1/{(double)fullBytes / compactBytes:F1})");
        compactBytes.Should().BeLessThanOrEqualTo(fullBytes / 50);
        GoldenSet.Load(compact).Compact!.K.Should().Be(256);

        string gguf = _tmp["q4km.gguf"], int4 = _tmp["int4"];
        Converter.Tests.Cli.Run("export", "gguf", model, "-o", gguf, "--type", "q4_k_m", "-q").ExitCode.Should().Be(0);
        Converter.Tests.Cli.Run("export", "onnx", model, "-o", int4, "--weights", "int4", "-q").ExitCode.Should().Be(0);
        foreach (var artifact in new[] { gguf, int4 })
        {
            JsonElement Verify(string golden)
            {
                var r = Converter.Tests.Cli.Run("verify", artifact, "--golden", golden, "--json", "-q");
                r.ExitCode.Should().BeOneOf([0, 1], r.ToString()); // a random-weight model is far from its presets' limits on top-1
                return JsonDocument.Parse(r.StdOut).RootElement.Clone();
            }
            var f = Verify(full);
            var c = Verify(compact);
            double klF = f.GetProperty("kl_mean").GetDouble(), klC = c.GetProperty("kl_mean").GetDouble();
            var cs = c.GetProperty("compact_golden");
            output.WriteLine($"{Path.GetFileName(artifact)}: kl_mean full {klF:E4}, compact {klC:E4} ({klC / klF - 1:P2}); compact: tail mass " +
                             $"{cs.GetProperty("tail_mass_mean").GetDouble():F4}, top-k part {cs.GetProperty("kl_mean_lower_bound").GetDouble():E3}, " +
                             $"stderr {cs.GetProperty("kl_mean_stderr").GetDouble():E3}; top1 {f.GetProperty("top1_agreement").GetDouble():F4} / " +
                             $"{c.GetProperty("top1_agreement").GetDouble():F4}");
            Math.Abs(klC / klF - 1).Should().BeLessThanOrEqualTo(0.01);
            c.GetProperty("top1_agreement").GetDouble().Should().Be(f.GetProperty("top1_agreement").GetDouble());
            c.GetProperty("nll_mean").GetDouble().Should().BeApproximately(f.GetProperty("nll_mean").GetDouble(), 1e-9);
        }
    }
}
