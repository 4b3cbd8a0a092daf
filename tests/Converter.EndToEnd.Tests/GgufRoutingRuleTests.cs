using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Tests.Onnx;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Tests;

/// <summary>
/// The routing rule reaches llama.cpp as the ONNX graph and the float64 reference read it: a <c>greedy</c> DeepSeek
/// config with 4 expert groups selects without the group stage (the checkpoint's own code ignores groups there), so
/// the GGUF carries no grouping keys and llama.cpp computes the reference's logits. Before the family contract the
/// ONNX graph applied the groups for every topk_method while the GGUF map did not.
/// </summary>
public class GgufRoutingRuleTests(Xunit.Abstractions.ITestOutputHelper log) : IDisposable
{
    private const int Batch = 2, Seq = 128;
    private readonly TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private string Variant(string name, string topkMethod) => VariantCheckpoint.Create(_tmp[name], cfg => cfg["topk_method"] = topkMethod,
        (tensor, shape, read) => tensor.EndsWith(".e_score_correction_bias", StringComparison.Ordinal) ? [] : null);

    [Fact]
    public void GreedyWithGroupsRunsInLlamaCppAsTheReferenceRoutes()
    {
        var greedy = Variant("greedy", "greedy");
        var golden = Converter.Verification.GoldenSet.Load(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        var tokens = golden.Tokens.AsSpan(0, Batch * Seq).ToArray();
        float[] refLogits;
        double[] margin;
        int[][] greedyRoutes;
        using (var ckpt = ModelCheckpoint.Open(greedy))
        {
            ckpt.Architecture.Moe(1).Routing.GroupingActive.Should().BeFalse("greedy has no group stage");
            (refLogits, greedyRoutes, margin) = new ReferenceForward(ckpt).Run(tokens, Batch, Seq);
        }
        // The same weights routed with a group stage choose other experts: a graph that grouped would be caught.
        using (var grouped = ModelCheckpoint.Open(Variant("grouped", "group_limited_greedy")))
        {
            var (_, groupedRoutes, _) = new ReferenceForward(grouped).Run(tokens, Batch, Seq);
            int differ = 0;
            for (int l = 0; l < greedyRoutes.Length; l++)
                for (int p = 0; p < Batch * Seq; p++)
                    if (!greedyRoutes[l].AsSpan(p * 4, 4).ToArray().Order().SequenceEqual(groupedRoutes[l].AsSpan(p * 4, 4).ToArray().Order())) differ++;
            log.WriteLine($"grouped routing differs from greedy at {differ} (layer, position) choices");
            differ.Should().BeGreaterThan(50);
        }

        string gguf = Path.Combine(_tmp.Path, "greedy.gguf");
        using (var ckpt = ModelCheckpoint.Open(greedy))
        {
            var plan = GgufExportPipeline.Plan(ckpt);
            plan.Metadata.Select(kv => kv.Key).Should().NotContain(k => k.Contains("expert_group"));
            GgufExportPipeline.Run(ckpt, new GgufExportOptions(gguf, GgmlType.F32), NullLogger.Instance);
        }
        using var runner = new GgufArtifactRunner(gguf);
        var got = runner.Run(tokens, Batch, Seq, hiddenStates: false, routing: false).Logits;
        double maxDiff = 0;
        int stable = 0, top1 = 0, vocab = golden.Vocab;
        for (int p = 0; p < Batch * Seq; p++)
        {
            if (margin[p] < 1e-4) continue;
            stable++;
            var a = refLogits.AsSpan(p * vocab, vocab);
            var b = got.AsSpan(p * vocab, vocab);
            int ia = 0, ib = 0;
            for (int i = 0; i < vocab; i++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(a[i] - b[i]));
                if (a[i] > a[ia]) ia = i;
                if (b[i] > b[ib]) ib = i;
            }
            if (ia == ib) top1++;
        }
        log.WriteLine($"llama.cpp vs float64 reference, greedy with 4 groups: {stable} stable positions, max |logit diff| {maxDiff:E3}, top-1 {top1}/{stable}");
        stable.Should().BeGreaterThan(Batch * Seq / 2);
        maxDiff.Should().BeLessThanOrEqualTo(1e-3);
        top1.Should().Be(stable);
    }
}
