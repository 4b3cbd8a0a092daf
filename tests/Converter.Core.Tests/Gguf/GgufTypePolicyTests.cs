using Converter.Models;
using Converter.Numerics.Ggml;

namespace Converter.Core.Tests.Gguf;

/// <summary>The Q4_K_M mix against llama.cpp's rule worked by hand for DeepSeek-V3's 61 blocks (n/8 = 7, 7n/8 = 53).</summary>
public class GgufTypePolicyTests
{
    [Theory]
    [InlineData(0, GgmlType.Q6_K)]
    [InlineData(6, GgmlType.Q6_K)]
    [InlineData(7, GgmlType.Q4_K)]
    [InlineData(8, GgmlType.Q4_K)]
    [InlineData(9, GgmlType.Q6_K)]  // (9 - 7) % 3 == 2
    [InlineData(12, GgmlType.Q6_K)]
    [InlineData(52, GgmlType.Q4_K)]
    [InlineData(53, GgmlType.Q6_K)]
    [InlineData(60, GgmlType.Q6_K)]
    public void FfnDownOfDeepSeekV3(int layer, GgmlType expected)
    {
        foreach (var part in new[] { "ffn_down_exps", "ffn_down_shexp", "ffn_down" })
            GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, $"blk.{layer}.{part}.weight", 61, 256).Should().Be(expected);
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, $"blk.{layer}.ffn_up_exps.weight", 61, 256).Should().Be(GgmlType.Q4_K);
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, $"blk.{layer}.attn_v_b.weight", 61, 256).Should().Be(GgmlType.Q4_K);
    }

    [Fact]
    public void OutputIsQ6_KAndEmbeddingQ4_K()
    {
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, "output.weight", 61, 256).Should().Be(GgmlType.Q6_K);
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, "token_embd.weight", 61, 256).Should().Be(GgmlType.Q4_K);
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, "blk.3.attn_output.weight", 61, 8).Should().Be(GgmlType.Q5_K);
        GgufTypePolicy.Requested(GgufTypeScheme.Uniform, GgmlType.Q8_0, "output.weight", 61, 256).Should().Be(GgmlType.Q8_0);
    }

    [Theory]
    [InlineData(0, GgmlType.Q6_K)]
    [InlineData(5, GgmlType.Q6_K)]
    [InlineData(6, GgmlType.Q4_K)]  // Qwen3-30B-A3B: 48 blocks, n/8 = 6, 7n/8 = 42
    [InlineData(8, GgmlType.Q6_K)]  // (8 - 6) % 3 == 2
    [InlineData(40, GgmlType.Q4_K)]
    [InlineData(41, GgmlType.Q6_K)]  // (41 - 6) % 3 == 2
    [InlineData(42, GgmlType.Q6_K)]
    public void AttnVAndFfnDownOfQwen3MoeGetMoreBitsOnTheSameRule(int layer, GgmlType expected)
    {
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, $"blk.{layer}.attn_v.weight", 48, 128).Should().Be(expected);
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, $"blk.{layer}.ffn_down_exps.weight", 48, 128).Should().Be(expected);
        foreach (var part in new[] { "attn_q", "attn_k", "attn_output", "ffn_gate_exps", "ffn_up_exps" })
            GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, $"blk.{layer}.{part}.weight", 48, 128).Should().Be(GgmlType.Q4_K, part);
    }

    [Fact]
    public void EightExpertsRaiseAttnKAndAttnVToQ8_0AndAttnOutputToQ5_K()
    {
        // llama.cpp's n_expert == 8 rules (Mixtral's), whatever the architecture
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, "blk.1.attn_v.weight", 3, 8).Should().Be(GgmlType.Q8_0);
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, "blk.1.attn_k.weight", 3, 8).Should().Be(GgmlType.Q8_0);
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, "blk.1.attn_output.weight", 3, 8).Should().Be(GgmlType.Q5_K);
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, "blk.1.attn_q.weight", 3, 8).Should().Be(GgmlType.Q4_K);
    }

    [Fact]
    public void TiedEmbeddingsGiveTokenEmbdTheOutputsType()
    {
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, "token_embd.weight", 48, 128, tiedEmbeddings: true).Should().Be(GgmlType.Q6_K);
        GgufTypePolicy.Requested(GgufTypeScheme.Q4_K_M, GgmlType.F16, "token_embd.weight", 48, 128).Should().Be(GgmlType.Q4_K);
    }
}
