using System.Text.Json.Nodes;
using Converter.Models;
using Converter.Pipelines;
using Converter.Runtime;
using Xunit.Abstractions;

namespace Converter.Tests.Onnx;

/// <summary>
/// Qwen3-MoE configs the bundled model does not have, built from tiny-qwen3moe's weights and checked against the
/// float64 <see cref="Qwen3MoeReferenceForward"/> (itself checked against the transformers golden below).
/// </summary>
public class Qwen3MoeVariationTests(ITestOutputHelper log)
{
    private const int Batch = 4, Seq = 128;
    private const string Model = "tiny-qwen3moe";

    [Fact]
    public void ReferenceForwardMatchesTransformersGolden()
    {
        var golden = new GoldenEval(TestData.Golden(Model, "eval.safetensors"));
        using var ckpt = ModelCheckpoint.Open(TestData.Model(Model));
        var (logits, routing, _) = new Qwen3MoeReferenceForward(ckpt).Run(golden.Tokens, golden.Batch, golden.Seq);
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

    public static TheoryData<string> Variants => new() { "norm_topk_prob_true", "top3", "yarn_theta_1e6", "tied_embeddings", "mha_from_repeated_kv" };

    [Theory]
    [MemberData(nameof(Variants))]
    public void VariantExportMatchesFloat64Reference(string variant)
    {
        using var tmp = new TestData.TempDir();
        VariantCheckpoint.Rewrite? rewrite = variant switch
        {
            "tied_embeddings" => (name, shape, read) => name == "lm_head.weight" ? [] : null,
            // Each key/value head repeated 3 times: the same model as multi-head attention (6 kv heads).
            "mha_from_repeated_kv" => (name, shape, read) =>
            {
                if (!name.EndsWith(".k_proj.weight", StringComparison.Ordinal) && !name.EndsWith(".v_proj.weight", StringComparison.Ordinal)) return null;
                var w = read(name);
                int rows = 32 * 192;
                var o = new float[w.Length * 3];
                for (int head = 0; head < 6; head++) w.AsSpan(head / 3 * rows, rows).CopyTo(o.AsSpan(head * rows));
                return [(name, [6 * 32, 192], o)];
            },
            _ => null,
        };
        var dir = VariantCheckpoint.Create(tmp["model"], cfg =>
        {
            if (variant == "norm_topk_prob_true") cfg["norm_topk_prob"] = true;
            if (variant == "top3") cfg["num_experts_per_tok"] = 3;
            if (variant == "yarn_theta_1e6")
            {
                cfg["rope_theta"] = 1e6;
                cfg["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0, ["original_max_position_embeddings"] = 128 };
            }
            if (variant == "tied_embeddings") cfg["tie_word_embeddings"] = true;
            if (variant == "mha_from_repeated_kv") cfg["num_key_value_heads"] = 6;
        }, rewrite, Model);

        var export = OnnxExportPipeline.Run(dir, tmp["onnx"], new OnnxExportOptions());
        var golden = new GoldenEval(TestData.Golden(Model, "eval.safetensors"));
        var tokens = golden.Tokens.AsSpan(0, Batch * Seq).ToArray();
        using var runner = new OnnxArtifactRunner(export.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: 2));
        var outs = runner.Run(tokens, Batch, Seq, hiddenStates: false, routing: true);
        using var ckpt = ModelCheckpoint.Open(dir);
        var (refLogits, refRouting, margin) = new Qwen3MoeReferenceForward(ckpt).Run(tokens, Batch, Seq);

        ReferenceAgreement.Check(outs, refLogits, refRouting, margin, golden.Vocab, ckpt.Architecture.NumExpertsPerToken, log, variant);
    }
}
