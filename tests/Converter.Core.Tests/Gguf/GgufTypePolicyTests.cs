using System.Text.Json.Nodes;
using Converter.Models;
using Converter.Tests;
using Converter.Models.DeepseekV3;
using Converter.Numerics.Ggml;

namespace Converter.Core.Tests.Gguf;

/// <summary>
/// llama-quantize's per-tensor type choice against llama.cpp's own reference: the snapshots of its
/// test-quant-type-selection (golden/peer/llama-quant-type-selection, copied from tests/snapshots of llama.cpp v0.5.0:
/// every quantizable tensor's type for every file type, from the models' real tensor lists) for DeepSeek-V3.1 (the
/// deepseek2 tensors of our map from DeepSeek-V3's public config) and Qwen3-14B (attention V/K rules with GQA 5).
/// </summary>
public class GgufTypePolicyTests
{
    private static readonly string SnapshotDir = TestData.Golden("peer", "llama-quant-type-selection");

    /// <summary>The sections of a snapshot: file type name, its default type, the tensors that differ from it.</summary>
    private static List<(string FileType, string Default, Dictionary<string, string> Overrides)> Snapshot(string file)
    {
        var sections = new List<(string, string, Dictionary<string, string>)>();
        foreach (var raw in File.ReadLines(Path.Combine(SnapshotDir, file)))
        {
            var line = raw.Trim();
            if (line.Length == 0 || line[0] == '#') continue;
            if (line[0] == '[')
            {
                int close = line.IndexOf(']');
                sections.Add((line[1..close], line[(close + 1)..].Trim(), new Dictionary<string, string>()));
                continue;
            }
            int sp = line.LastIndexOf(' ');
            sections[^1].Item3[line[..sp]] = line[(sp + 1)..];
        }
        return sections;
    }

    /// <summary>Compares every section this exporter has a file type for; returns how many were compared.</summary>
    private static int CompareWithSnapshot(string file, GgufModelFacts facts, (string Name, long[] Dimensions)[] tensors)
    {
        int compared = 0;
        foreach (var (name, dflt, overrides) in Snapshot(file))
        {
            if (GgufFileTypes.Find(name) is not { Pure: false } entry || entry.FileType == GgufFileType.MostlyMXFP4_MOE) continue;
            var got = GgufTypePolicy.Choose(new GgufQuantization(entry.FileType), facts, tensors);
            int quantizable = 0;
            for (int i = 0; i < tensors.Length; i++)
            {
                if (got[i] is not { } type) continue;
                quantizable++;
                type.ToString().Should().BeEquivalentTo(overrides.GetValueOrDefault(tensors[i].Name, dflt), $"{name} {tensors[i].Name}");
            }
            overrides.Keys.Should().BeSubsetOf(tensors.Where((t, i) => got[i] != null).Select(t => t.Name), name);
            quantizable.Should().BeGreaterThan(0);
            compared++;
        }
        return compared;
    }

    [Fact]
    public void DeepSeekV3MatchesLlamaCppsSnapshotForEveryFileType()
    {
        var path = TestData.Golden("configs", "deepseek-v3.json");
        var arch = (DeepseekV3Architecture)ArchitectureRegistry.FromConfig(new ConfigJson(path, JsonNode.Parse(File.ReadAllText(path))!.AsObject()));
        var plan = DeepseekV3GgufMap.Build(arch.Cfg, "DeepSeek-V3", []);
        var tensors = plan.Tensors.Select(t => (t.Name, t.Dimensions)).ToArray();
        tensors.Should().Contain(t => t.Name == "blk.60.ffn_down_exps.weight").And.Contain(t => t.Name == "blk.0.attn_k_b.weight");
        var facts = GgufModelFacts.From(plan);
        facts.Should().Be(new GgufModelFacts(61, 256, 128, 1));
        // F32 F16 BF16 Q4_0 Q8_0 Q5_0 Q5_1 Q2_K Q3_K_S/M/L Q4_K_S/M Q5_K_S/M Q6_K IQ4_NL IQ4_XS (Q4_1 and the IQ1-3 types are not written here)
        CompareWithSnapshot("deepseek-v3.1.schema", facts, tensors).Should().Be(18);
    }

    [Fact]
    public void Qwen3DenseAttentionRulesMatchLlamaCppsSnapshot()
    {
        // Qwen3-14B's tensors (llama.cpp's qwen3 names, ggml shapes): 40 blocks, 40 query heads over 8 KV heads, untied output
        const long h = 5120, kv = 1024, ff = 17408, vocab = 151936;
        var list = new List<(string, long[])> { ("token_embd.weight", [h, vocab]), ("output.weight", [h, vocab]), ("output_norm.weight", [h]) };
        for (int l = 0; l < 40; l++)
        {
            list.Add(($"blk.{l}.attn_q.weight", [h, h]));
            list.Add(($"blk.{l}.attn_k.weight", [h, kv]));
            list.Add(($"blk.{l}.attn_v.weight", [h, kv]));
            list.Add(($"blk.{l}.attn_output.weight", [h, h]));
            list.Add(($"blk.{l}.ffn_gate.weight", [h, ff]));
            list.Add(($"blk.{l}.ffn_up.weight", [h, ff]));
            list.Add(($"blk.{l}.ffn_down.weight", [ff, h]));
            list.Add(($"blk.{l}.attn_norm.weight", [h]));
        }
        CompareWithSnapshot("qwen3-14b.schema", new GgufModelFacts(40, 0, 40, 8), [.. list]).Should().Be(18);
    }

    private static GgmlType?[] Choose(string type, GgufModelFacts facts, params (string, long[])[] tensors) =>
        GgufTypePolicy.Choose(GgufQuantization.Parse(type), facts, tensors);

    [Fact]
    public void EightExpertsRaiseAttnKAndAttnVToQ8_0AndAttnOutputToQ5_K()
    {
        // llama.cpp's n_expert == 8 rules (Mixtral's), whatever the architecture: tiny-qwen3moe has 8 experts
        var facts = new GgufModelFacts(3, 8, 6, 2);
        (string, long[])[] t =
        [
            ("output.weight", [256, 256]), ("blk.1.attn_v.weight", [256, 64]), ("blk.1.attn_k.weight", [256, 64]),
            ("blk.1.attn_output.weight", [256, 256]), ("blk.1.attn_q.weight", [256, 192]),
        ];
        Choose("q4_k_m", facts, t).Should().Equal(GgmlType.Q6_K, GgmlType.Q8_0, GgmlType.Q8_0, GgmlType.Q5_K, GgmlType.Q4_K);
        Choose("q3_k_l", facts, t).Should().Equal(GgmlType.Q6_K, GgmlType.Q8_0, GgmlType.Q8_0, GgmlType.Q3_K, GgmlType.Q3_K);
        Choose("q8_0", facts, t).Should().Equal(GgmlType.Q8_0, GgmlType.Q8_0, GgmlType.Q8_0, GgmlType.Q8_0, GgmlType.Q8_0);
        Choose("q4_k", facts, t).Should().OnlyContain(x => x == GgmlType.Q4_K, "pure: no rules");
        Choose("f16", facts, t).Should().OnlyContain(x => x == GgmlType.F16, "no rules for unquantized file types");
    }

    [Fact]
    public void TiedEmbeddingsGiveTokenEmbdTheOutputsType()
    {
        var facts = new GgufModelFacts(48, 128, 32, 4);
        Choose("q4_k_m", facts, ("token_embd.weight", [2048, 1000])).Should().Equal(GgmlType.Q6_K);
        Choose("q4_k_m", facts, ("token_embd.weight", [2048, 1000]), ("output.weight", [2048, 1000])).Should().Equal(GgmlType.Q4_K, GgmlType.Q6_K);
        // output rows that are not whole blocks of the default type: Q8_0
        Choose("q4_k_m", facts, ("output.weight", [384, 1000])).Should().Equal(GgmlType.Q8_0);
    }

    [Fact]
    public void TensorTypeOverridesWinInOrderAndStillFallBack()
    {
        var facts = new GgufModelFacts(4, 16, 4, 1);
        var q = GgufQuantization.Parse("Q4_K_M") with
        {
            Overrides = [GgufTensorTypeOverride.Parse(@"ffn_down_exps=q2_k"), GgufTensorTypeOverride.Parse("ffn_.*=Q8_0"), GgufTensorTypeOverride.Parse("output=q5_k")],
        };
        (string, long[])[] t =
        [
            ("output.weight", [256, 256]), ("blk.1.ffn_down_exps.weight", [128, 256, 16]), ("blk.1.ffn_up_exps.weight", [256, 128, 16]),
            ("blk.1.ffn_norm.weight", [256]), ("blk.1.attn_q_a.weight", [256, 128]),
        ];
        GgufTypePolicy.Choose(q, facts, t).Should().Equal(GgmlType.Q5_K, GgmlType.Q4_0 /* Q2_K on 128-wide rows */, GgmlType.Q8_0, null, GgmlType.Q4_K);
        GgufTypePolicy.Choose(q with { OutputType = GgmlType.Q8_0 }, facts, t)[0].Should().Be(GgmlType.Q8_0, "--output-type before the overrides");
    }

    [Theory]
    [InlineData(GgmlType.Q4_K, 128, GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_K, 128, GgmlType.Q5_1)]
    [InlineData(GgmlType.Q6_K, 128, GgmlType.Q8_0)]
    [InlineData(GgmlType.Q3_K, 64, GgmlType.Q4_0)]
    [InlineData(GgmlType.Q2_K, 96, GgmlType.Q4_0)]
    [InlineData(GgmlType.IQ4_XS, 160, GgmlType.IQ4_NL)]
    [InlineData(GgmlType.Q4_K, 80, GgmlType.F16)]
    [InlineData(GgmlType.Q8_0, 48, GgmlType.F16)]
    [InlineData(GgmlType.Q4_K, 512, GgmlType.Q4_K)]
    public void RowsThatAreNotWholeBlocksFallBackAsLlamaCpp(GgmlType asked, long ne0, GgmlType expected) =>
        GgufTypePolicy.Fallback(asked, ne0).Should().Be(expected);

    [Theory]
    [InlineData("Q4_K_M", GgufFileType.MostlyQ4_K_M, false)]
    [InlineData("q4_k_m", GgufFileType.MostlyQ4_K_M, false)]
    [InlineData("IQ4_xs", GgufFileType.MostlyIQ4_XS, false)]
    [InlineData("q4_k", GgufFileType.MostlyQ4_K_S, true)]
    [InlineData("Q5_K", GgufFileType.MostlyQ5_K_S, true)]
    [InlineData("bf16", GgufFileType.MostlyBF16, false)]
    public void TypeNamesInAnyCase(string name, GgufFileType fileType, bool pure)
    {
        var q = GgufQuantization.Parse(name);
        q.FileType.Should().Be(fileType);
        q.Pure.Should().Be(pure);
    }

    [Theory]
    [InlineData("q4_k_x")]
    [InlineData("q3_k")]
    [InlineData("")]
    public void UnknownTypeNamesAreRefused(string name) =>
        FluentActions.Invoking(() => GgufQuantization.Parse(name)).Should().Throw<ArgumentException>().WithMessage("unknown GGUF type*");

    [Theory]
    [InlineData("ffn_down", "expected REGEX=TYPE")]
    [InlineData("=q4_k", "expected REGEX=TYPE")]
    [InlineData("ffn_down=q9_k", "unknown ggml type 'q9_k'")]
    [InlineData("ffn_(down=q4_k", "bad regular expression")]
    [InlineData("ffn_down=i32", "unknown ggml type 'i32'")]
    public void BadTensorTypeOverridesAreRefused(string text, string message) =>
        FluentActions.Invoking(() => GgufTensorTypeOverride.Parse(text)).Should().Throw<ArgumentException>().WithMessage($"*{message}*");
}
