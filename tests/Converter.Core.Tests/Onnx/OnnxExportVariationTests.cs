using System.Text.Json.Nodes;
using Converter.Models;
using Converter.Pipelines;
using Converter.Runtime;
using Xunit.Abstractions;

namespace Converter.Tests.Onnx;

/// <summary>
/// Config variations of the deepseek_v3 family built from the tiny reference weights, checked against the
/// float64 <see cref="ReferenceForward"/> (itself checked against the transformers golden below).
/// </summary>
public class OnnxExportVariationTests(ITestOutputHelper log)
{
    private const int Batch = 4, Seq = 128;

    [Theory]
    [InlineData("tiny-dsv3")]
    [InlineData("tiny-dsv2-lite")]
    public void ReferenceForwardMatchesTransformersGolden(string model)
    {
        var golden = new GoldenEval(TestData.Golden(model, "eval.safetensors"));
        using var ckpt = ModelCheckpoint.Open(TestData.Model(model));
        var (logits, routing, _) = new ReferenceForward(ckpt).Run(golden.Tokens, golden.Batch, golden.Seq);
        var stats = LogitStats.Compare(logits, golden.Logits, golden.Vocab);
        log.WriteLine($"float64 reference vs transformers golden: {stats}");
        stats.MaxAbs.Should().BeLessThan(1e-4);
        int n = golden.Batch * golden.Seq, k = (int)golden.RouteShape![3], differ = 0;
        for (int l = 0; l < routing.Length; l++)
            for (int p = 0; p < n; p++)
                if (golden.RouteMargin![l * n + p] >= 1e-4 &&
                    !golden.RouteTopk!.AsSpan((l * n + p) * k, k).ToArray().Order().SequenceEqual(routing[l].AsSpan(p * k, k).ToArray().Order()))
                    differ++;
        differ.Should().Be(0);
    }

    public static TheoryData<string> Variants => new() { "no_q_lora", "n_group_1", "norm_topk_prob_false", "no_rope_scaling", "all_four", "heads3_v16", "heads1_v24_no_q_lora",
        "greedy_n_group_4", "group_limited_greedy", "deepseek_v2_greedy", "deepseek_v2_group_limited" };

    [Theory]
    [MemberData(nameof(Variants))]
    public void VariantExportMatchesFloat64Reference(string variant)
    {
        using var tmp = new TestData.TempDir();
        bool noQLora = variant is "no_q_lora" or "all_four" or "heads1_v24_no_q_lora";
        (int Heads, int V)? slice = variant switch { "heads3_v16" => (3, 16), "heads1_v24_no_q_lora" => (1, 24), _ => null };
        VariantCheckpoint.Rewrite? rewrite = null;
        if (slice is { } sl)
        {
            var heads = VariantCheckpoint.SliceHeads(sl.Heads, sl.V);
            rewrite = noQLora
                // q_proj is built from the kept heads' rows of q_b (48 rows of 128 per head in tiny-dsv3).
                ? (name, shape, read) => VariantCheckpoint.RemoveQLora(name, shape,
                      n => n.EndsWith(".q_b_proj.weight") ? read(n).AsSpan(0, sl.Heads * 48 * 128).ToArray() : read(n)) ?? heads(name, shape, read)
                : heads;
        }
        else if (noQLora) rewrite = VariantCheckpoint.RemoveQLora;
        // Routing without the correction bias (greedy and group_limited_greedy have none): the tensor goes.
        string? method = variant switch
        {
            "greedy_n_group_4" or "deepseek_v2_greedy" => "greedy",
            "group_limited_greedy" or "deepseek_v2_group_limited" => "group_limited_greedy",
            _ => null,
        };
        if (method != null)
            rewrite = (name, shape, read) => name.EndsWith(".e_score_correction_bias", StringComparison.Ordinal) ? [] : null;
        var dir = VariantCheckpoint.Create(tmp["model"], cfg =>
        {
            if (variant is "n_group_1" or "all_four") { cfg["n_group"] = 1; cfg["topk_group"] = 1; }
            if (variant is "norm_topk_prob_false" or "all_four") cfg["norm_topk_prob"] = false;
            if (variant is "no_rope_scaling" or "all_four") cfg.Remove("rope_scaling");
            if (noQLora) cfg["q_lora_rank"] = null;
            if (method != null) cfg["topk_method"] = method;
            if (variant.StartsWith("deepseek_v2", StringComparison.Ordinal)) cfg["model_type"] = "deepseek_v2";
            if (slice is { } s) { cfg["num_attention_heads"] = s.Heads; cfg["num_key_value_heads"] = s.Heads; cfg["v_head_dim"] = s.V; }
        }, rewrite);

        var export = OnnxExportPipeline.Run(dir, tmp["onnx"], new OnnxExportOptions());
        var golden = new GoldenEval(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        var tokens = golden.Tokens.AsSpan(0, Batch * Seq).ToArray();
        using var runner = new OnnxArtifactRunner(export.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: 2));
        var outs = runner.Run(tokens, Batch, Seq, hiddenStates: false, routing: true);
        using var ckpt = ModelCheckpoint.Open(dir);
        var (refLogits, refRouting, margin) = new ReferenceForward(ckpt).Run(tokens, Batch, Seq);

        ReferenceAgreement.Check(outs, refLogits, refRouting, margin, golden.Vocab, ckpt.Architecture.NumExpertsPerToken, log, variant);
    }
}

/// <summary>DeepSeek-V3's real attention shapes and YaRN settings on random weights, against the float64 reference.</summary>
public class OnnxExportRealShapeTests(ITestOutputHelper log)
{
    [Fact]
    [Trait("Category", "Large")]
    public void DeepseekV3AttentionShapesMatchFloat64Reference()
    {
        using var tmp = new TestData.TempDir();
        // 128 heads, nope 128 / rope 64 / v 128, q_lora 1536, kv_lora 512, YaRN factor 40 over 4096 (mscale 1/1),
        // 16 experts in 8 groups (top-4 groups, top-8 experts): DeepSeek-V3's ratios; hidden and vocab kept small.
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(TestData.Model("tiny-dsv3"), "config.json")))!.AsObject();
        cfg["hidden_size"] = 512; cfg["intermediate_size"] = 1024; cfg["moe_intermediate_size"] = 128;
        cfg["num_hidden_layers"] = 2; cfg["num_nextn_predict_layers"] = 0;
        cfg["num_attention_heads"] = 128; cfg["num_key_value_heads"] = 128;
        cfg["q_lora_rank"] = 1536; cfg["kv_lora_rank"] = 512;
        cfg["qk_nope_head_dim"] = 128; cfg["qk_rope_head_dim"] = 64; cfg["v_head_dim"] = 128;
        cfg["n_routed_experts"] = 16; cfg["n_group"] = 8; cfg["topk_group"] = 4; cfg["num_experts_per_tok"] = 8;
        cfg["max_position_embeddings"] = 163840;
        cfg["rope_scaling"] = new JsonObject
        {
            ["type"] = "yarn", ["rope_type"] = "yarn", ["factor"] = 40.0, ["original_max_position_embeddings"] = 4096,
            ["beta_fast"] = 32, ["beta_slow"] = 1, ["mscale"] = 1.0, ["mscale_all_dim"] = 1.0,
        };
        var dir = RandomCheckpoint.Create(tmp["model"], cfg);
        var export = OnnxExportPipeline.Run(dir, tmp["onnx"], new OnnxExportOptions());

        const int batch = 1, seq = 32;
        var tokens = Enumerable.Range(0, batch * seq).Select(i => (i * 37 + 11) % 256).ToArray();
        float[] logits;
        int[][] routing;
        using (var runner = new OnnxArtifactRunner(export.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: 2)))
        {
            var o = runner.Run(tokens, batch, seq, hiddenStates: false, routing: true);
            logits = o.Logits;
            routing = o.RoutingTopK!;
        }
        using var ckpt = ModelCheckpoint.Open(dir);
        var (refLogits, refRouting, margin) = new ReferenceForward(ckpt).Run(tokens, batch, seq);
        var stable = margin.Select(m => m >= 1e-4).ToArray();
        var stats = LogitStats.Compare(logits, refLogits, 256, stable);
        double scale = refLogits.Max(Math.Abs);
        log.WriteLine($"real attention shapes: {stats}; max |logit| {scale:F2}");
        int differ = 0;
        for (int l = 0; l < routing.Length; l++)
            for (int p = 0; p < batch * seq; p++)
                if (stable[p] && !routing[l].AsSpan(p * 8, 8).ToArray().Order().SequenceEqual(refRouting[l].AsSpan(p * 8, 8).ToArray().Order())) differ++;
        stats.Positions.Should().BeGreaterThan(seq / 2);
        stats.MaxAbs.Should().BeLessThanOrEqualTo(1e-3 * Math.Max(1, scale));
        stats.Top1.Should().Be(1.0);
        differ.Should().Be(0);
    }
}
