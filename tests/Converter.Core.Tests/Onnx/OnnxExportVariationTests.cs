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

    [Fact]
    public void ReferenceForwardMatchesTransformersGolden()
    {
        var golden = new GoldenEval(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        using var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv3"));
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

    public static TheoryData<string> Variants => new() { "no_q_lora", "n_group_1", "norm_topk_prob_false", "no_rope_scaling", "all_four", "heads3_v16", "heads1_v24_no_q_lora" };

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
        var dir = VariantCheckpoint.Create(tmp["model"], cfg =>
        {
            if (variant is "n_group_1" or "all_four") { cfg["n_group"] = 1; cfg["topk_group"] = 1; }
            if (variant is "norm_topk_prob_false" or "all_four") cfg["norm_topk_prob"] = false;
            if (variant is "no_rope_scaling" or "all_four") cfg.Remove("rope_scaling");
            if (noQLora) cfg["q_lora_rank"] = null;
            if (slice is { } s) { cfg["num_attention_heads"] = s.Heads; cfg["num_key_value_heads"] = s.Heads; cfg["v_head_dim"] = s.V; }
        }, rewrite);

        var export = OnnxExportPipeline.Run(dir, tmp["onnx"], new OnnxExportOptions());
        var golden = new GoldenEval(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        var tokens = golden.Tokens.AsSpan(0, Batch * Seq).ToArray();
        using var runner = new OnnxArtifactRunner(export.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: 2));
        var outs = runner.Run(tokens, Batch, Seq, hiddenStates: false, routing: true);
        using var ckpt = ModelCheckpoint.Open(dir);
        var (refLogits, refRouting, margin) = new ReferenceForward(ckpt).Run(tokens, Batch, Seq);

        var stable = margin.Select(m => m >= 1e-4).ToArray();
        var stats = LogitStats.Compare(outs.Logits, refLogits, golden.Vocab, stable);
        log.WriteLine($"{variant}: ONNX vs float64 reference on stable positions: {stats}");
        int k = ckpt.Architecture.NumExpertsPerToken, differ = 0, compared = 0;
        for (int l = 0; l < refRouting.Length; l++)
            for (int p = 0; p < Batch * Seq; p++)
            {
                if (!stable[p]) continue;
                compared++;
                if (!refRouting[l].AsSpan(p * k, k).ToArray().Order().SequenceEqual(outs.RoutingTopK![l].AsSpan(p * k, k).ToArray().Order())) differ++;
            }
        log.WriteLine($"{variant}: routing {compared} choices, {differ} differ");
        stats.Positions.Should().BeGreaterThan(Batch * Seq / 2);
        stats.MaxAbs.Should().BeLessThanOrEqualTo(1e-3);
        stats.Top1.Should().Be(1.0);
        differ.Should().Be(0);
    }
}
