using System.Text.Json.Nodes;
using Converter.Models;
using Converter.Models.Qwen3Moe;
using Converter.Models.Tokenizers;

namespace Converter.Core.Tests.Gguf;

/// <summary>The qwen3moe map's refusals and YaRN keys, on configs made in memory.</summary>
public class Qwen3MoeGgufMapTests
{
    private static Qwen3MoeConfig Config(Action<JsonObject>? edit = null)
    {
        var o = new JsonObject
        {
            ["model_type"] = "qwen3_moe", ["vocab_size"] = 256, ["hidden_size"] = 64, ["intermediate_size"] = 128,
            ["moe_intermediate_size"] = 32, ["num_hidden_layers"] = 4, ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2,
            ["head_dim"] = 16, ["num_experts"] = 8, ["num_experts_per_tok"] = 2, ["norm_topk_prob"] = true,
            ["max_position_embeddings"] = 4096, ["rope_theta"] = 1000000.0, ["rms_norm_eps"] = 1e-6,
        };
        edit?.Invoke(o);
        return Qwen3MoeConfig.Parse(new ConfigJson("/m/config.json", o));
    }

    private static GgufModelPlan Plan(Qwen3MoeConfig c) => Qwen3MoeGgufMap.Build(c, "m", ByteLevelTokenizer.Keys(256));

    [Fact]
    public void DecoderSparseStepDenseLayersAreRefusedByNameAndSetting()
    {
        var c = Config(o => o["decoder_sparse_step"] = 2); // (layer + 1) % 2 != 0: layers 0 and 2 dense
        var act = () => Plan(c);
        act.Should().Throw<NotSupportedException>().WithMessage("*layers 0, 2 are dense MLP layers (decoder_sparse_step 2)*qwen3moe*");
        var mlpOnly = () => Plan(Config(o => o["mlp_only_layers"] = new JsonArray(3)));
        mlpOnly.Should().Throw<NotSupportedException>().WithMessage("*layer 3 is a dense MLP layer (mlp_only_layers [3])*");
    }

    [Fact]
    public void NormalisedSparseConfigIsExact()
    {
        var p = Plan(Config());
        p.Inexact.Should().BeEmpty();
        p.Tensors.Should().HaveCount(3 + 12 * 4);
        p.Metadata.Select(kv => kv.Key).Should().NotContain(k => k.Contains("rope.scaling"));
    }

    [Fact]
    public void YarnIsWrittenAndExactOnlyWithLlamaCppsFixedParameters()
    {
        var y = Plan(Config(o => o["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0, ["original_max_position_embeddings"] = 1024 }));
        y.Inexact.Should().BeEmpty();
        var meta = y.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value);
        meta["qwen3moe.rope.scaling.type"].AsString().Should().Be("yarn");
        meta["qwen3moe.rope.scaling.factor"].AsFloat32().Should().Be(4f);
        meta["qwen3moe.rope.scaling.original_context_length"].AsUInt32().Should().Be(1024);

        Plan(Config(o => o["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0, ["original_max_position_embeddings"] = 1024, ["beta_fast"] = 16.0 }))
            .Inexact.Should().ContainSingle().Which.Should().Contain("beta_fast 16");
        Plan(Config(o => o["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0, ["original_max_position_embeddings"] = 1024, ["attention_factor"] = 1.0 }))
            .Inexact.Should().ContainSingle().Which.Should().Contain("attention factor 1");
    }

    [Fact]
    public void TiedEmbeddingsLeaveOutputOut()
    {
        var p = Plan(Config(o => o["tie_word_embeddings"] = true));
        p.Tensors.Select(t => t.Name).Should().NotContain("output.weight").And.Contain("token_embd.weight");
    }
}
