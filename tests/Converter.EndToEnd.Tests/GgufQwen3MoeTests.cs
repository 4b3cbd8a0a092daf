using System.Text.Json.Nodes;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Tests;

namespace Converter.EndToEnd.Tests;

/// <summary>
/// Qwen3-MoE to llama.cpp's <c>qwen3moe</c>: tiny-qwen3moe-norm (norm_topk_prob true, every layer sparse) exported
/// as GGUF F32 runs in llama.cpp within 1e-3 of its transformers golden; tiny-qwen3moe (a dense layer 0,
/// norm_topk_prob false) is refused with exit 2, the layer and settings named, and no file.
/// </summary>
public sealed class GgufQwen3MoeTests : IDisposable
{
    private const string Norm = "tiny-qwen3moe-norm";
    private readonly TestData.TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private string Export(string model, string type, params string[] extra)
    {
        string output = _dir[$"{Path.GetFileName(model)}-{type}.gguf"];
        var r = Converter.Tests.Cli.Run(["export", "gguf", model, "-o", output, "--type", type, .. extra]);
        r.ExitCode.Should().Be(0, r.ToString());
        return output;
    }

    [Fact]
    public void F32GgufMatchesTheGoldenInLlamaCpp()
    {
        string gguf = Export(TestData.Model(Norm), "f32");
        var c = LlamaCpp.CompareWithGolden(gguf, TestData.Golden(Norm, "eval.safetensors"), 8, _dir.Path);
        // measured 2.4e-5, top-1 1, kl_mean 4.5e-13; a wrong key, a permuted q/k or an unnormalised top-k move logits by far more
        c.MaxAbsDiff.Should().BeLessThan(1e-3, $"{c}");
        c.Top1Agreement.Should().Be(1.0, $"{c}");
        c.KlMean.Should().BeLessThan(1e-5, $"{c}");
    }

    [Fact]
    public void KeysAndTensorsAreLlamaCppsQwen3Moe()
    {
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(TestData.Model(Norm), "config.json")))!.AsObject();
        int layers = (int)cfg["num_hidden_layers"]!, hidden = (int)cfg["hidden_size"]!, heads = (int)cfg["num_attention_heads"]!;
        int kvHeads = (int)cfg["num_key_value_heads"]!, headDim = (int)cfg["head_dim"]!, experts = (int)cfg["num_experts"]!;
        int moeFf = (int)cfg["moe_intermediate_size"]!, vocab = (int)cfg["vocab_size"]!;
        using var r = GgufReader.Open(Export(TestData.Model(Norm), "f32"));
        r["general.architecture"].AsString().Should().Be("qwen3moe");
        r["qwen3moe.block_count"].AsUInt32().Should().Be((uint)layers);
        r["qwen3moe.context_length"].AsUInt32().Should().Be((uint)(int)cfg["max_position_embeddings"]!);
        r["qwen3moe.embedding_length"].AsUInt32().Should().Be((uint)hidden);
        r["qwen3moe.feed_forward_length"].AsUInt32().Should().Be((uint)(int)cfg["intermediate_size"]!);
        r["qwen3moe.attention.head_count"].AsUInt32().Should().Be((uint)heads);
        r["qwen3moe.attention.head_count_kv"].AsUInt32().Should().Be((uint)kvHeads);
        r["qwen3moe.attention.key_length"].AsUInt32().Should().Be((uint)headDim);
        r["qwen3moe.attention.value_length"].AsUInt32().Should().Be((uint)headDim);
        r["qwen3moe.rope.freq_base"].AsFloat32().Should().Be((float)(double)cfg["rope_theta"]!);
        r["qwen3moe.attention.layer_norm_rms_epsilon"].AsFloat32().Should().Be((float)(double)cfg["rms_norm_eps"]!);
        r["qwen3moe.expert_count"].AsUInt32().Should().Be((uint)experts);
        r["qwen3moe.expert_used_count"].AsUInt32().Should().Be((uint)(int)cfg["num_experts_per_tok"]!);
        r["qwen3moe.expert_feed_forward_length"].AsUInt32().Should().Be((uint)moeFf);
        r.TryGetValue("qwen3moe.rope.scaling.type", out _).Should().BeFalse(); // no rope_scaling in the config
        r["tokenizer.ggml.tokens"].AsArray<string>().Should().HaveCount(vocab);

        r.GetTensor("token_embd.weight").Dimensions.Should().Equal((long)hidden, vocab);
        r.GetTensor("output.weight").Dimensions.Should().Equal((long)hidden, vocab);
        r.GetTensor("output_norm.weight").Dimensions.Should().Equal((long)hidden);
        for (int l = 0; l < layers; l++)
        {
            string b = $"blk.{l}.";
            r.GetTensor(b + "attn_norm.weight").Dimensions.Should().Equal((long)hidden);
            r.GetTensor(b + "attn_q.weight").Dimensions.Should().Equal((long)hidden, heads * headDim);
            r.GetTensor(b + "attn_k.weight").Dimensions.Should().Equal((long)hidden, kvHeads * headDim);
            r.GetTensor(b + "attn_v.weight").Dimensions.Should().Equal((long)hidden, kvHeads * headDim);
            r.GetTensor(b + "attn_output.weight").Dimensions.Should().Equal((long)heads * headDim, hidden);
            r.GetTensor(b + "attn_q_norm.weight").Dimensions.Should().Equal((long)headDim);
            r.GetTensor(b + "attn_k_norm.weight").Dimensions.Should().Equal((long)headDim);
            r.GetTensor(b + "ffn_norm.weight").Dimensions.Should().Equal((long)hidden);
            r.GetTensor(b + "ffn_gate_inp.weight").Dimensions.Should().Equal((long)hidden, experts);
            r.GetTensor(b + "ffn_gate_exps.weight").Dimensions.Should().Equal((long)hidden, moeFf, experts);
            r.GetTensor(b + "ffn_up_exps.weight").Dimensions.Should().Equal((long)hidden, moeFf, experts);
            r.GetTensor(b + "ffn_down_exps.weight").Dimensions.Should().Equal((long)moeFf, hidden, experts);
        }
        r.Tensors.Should().HaveCount(3 + 12 * layers);
        r.Tensors.Where(t => t.Name.Contains("norm") || t.Name.Contains("ffn_gate_inp")).Should().OnlyContain(t => t.Type == GgmlType.F32);
    }

    [Fact]
    public void Q4_K_MFollowsLlamaCppsMixByQwenTensorNames()
    {
        using var r = GgufReader.Open(Export(TestData.Model(Norm), "q4_k_m"));
        int experts = (int)r["qwen3moe.expert_count"].AsUInt32();
        long hidden = r["qwen3moe.embedding_length"].AsUInt32();
        // rows of the tiny model are not whole 256-blocks: K-quants fall back as llama.cpp (Q4_K to Q5_0, Q6_K to Q8_0)
        GgmlType K(GgmlType t) => GgufTypePolicy.Fallback(t, hidden);
        r.GetTensor("blk.0.attn_q.weight").Type.Should().Be(K(GgmlType.Q4_K));
        r.GetTensor("blk.0.attn_k.weight").Type.Should().Be(experts == 8 ? GgmlType.Q8_0 : K(GgmlType.Q4_K));
        r.GetTensor("blk.0.attn_v.weight").Type.Should().Be(experts == 8 ? GgmlType.Q8_0 : K(GgmlType.Q6_K)); // layer 0: use_more_bits
        r.GetTensor("output.weight").Type.Should().Be(hidden % 256 == 0 ? GgmlType.Q6_K : GgmlType.Q8_0);
        r["general.file_type"].AsUInt32().Should().Be(15);
    }

    [Fact]
    public void TinyQwen3MoeIsRefusedNamingTheDenseLayerAndWritesNothing()
    {
        string output = _dir["refused.gguf"];
        foreach (var force in new[] { false, true })
        {
            var r = Converter.Tests.Cli.Run(["export", "gguf", TestData.Model("tiny-qwen3moe"), "-o", output, "--type", "f32", .. force ? new[] { "--force" } : []]);
            r.ExitCode.Should().Be(2, r.ToString());
            r.StdErr.Should().Contain("layer 0").And.Contain("mlp_only_layers [0]").And.Contain("dense").And.Contain("qwen3moe")
                .And.Contain("norm_topk_prob");
            r.StdErr.Trim().Split('\n').Should().HaveCount(1, r.StdErr);
            File.Exists(output).Should().BeFalse();
            Directory.GetFiles(_dir.Path).Should().BeEmpty("no partial or temporary file is left");
        }
    }

    [Fact]
    public void NormTopkProbFalseIsRefusedUnlessForced()
    {
        string model = _dir["unnormalised"];
        TestCheckpoints.Copy(TestData.Model(Norm), model, editConfig: c => c["norm_topk_prob"] = false);
        string output = _dir["unnormalised.gguf"];
        var refused = Converter.Tests.Cli.Run("export", "gguf", model, "-o", output, "--type", "f32");
        refused.ExitCode.Should().Be(2, refused.ToString());
        refused.StdErr.Should().Contain("cannot represent").And.Contain("norm_topk_prob false").And.Contain("renormalises").And.Contain("--force");
        File.Exists(output).Should().BeFalse();

        var forced = Converter.Tests.Cli.Run("export", "gguf", model, "-o", output, "--type", "f32", "--force");
        forced.ExitCode.Should().Be(0, forced.ToString());
        (forced.StdOut + forced.StdErr).Should().Contain("norm_topk_prob");
        File.Exists(output).Should().BeTrue();
    }
}
