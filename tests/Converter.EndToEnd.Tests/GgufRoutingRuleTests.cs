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

    private string Variant(string name, string topkMethod, string model = "tiny-dsv3") => VariantCheckpoint.Create(_tmp[name], cfg => cfg["topk_method"] = topkMethod,
        (tensor, shape, read) => tensor.EndsWith(".e_score_correction_bias", StringComparison.Ordinal) ? [] : null, model);

    /// <summary>llama.cpp's logits against the float64 reference on its stable positions: (stable, max |diff|, top-1 agreeing).</summary>
    private static (int Stable, double MaxDiff, int Top1) Compare(float[] reference, double[] margin, float[] got, int vocab)
    {
        double maxDiff = 0;
        int stable = 0, top1 = 0;
        for (int p = 0; p < margin.Length; p++)
        {
            if (margin[p] < 1e-4) continue;
            stable++;
            var a = reference.AsSpan(p * vocab, vocab);
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
        return (stable, maxDiff, top1);
    }

    /// <summary>
    /// DeepSeek-V2-Lite (softmax scores, weights unnormalised, two shared experts, no q_lora) in llama.cpp's deepseek2:
    /// with V2-Lite's own greedy routing the tiny reference's weights compute the float64 reference (itself checked
    /// against transformers' golden of the same weights in OnnxExportVariationTests). The tiny reference's own config
    /// routes group_limited_greedy, which llama.cpp cannot (it ranks groups by a top-2 sum): refused with the reason
    /// and no file.
    /// </summary>
    [Fact]
    public void DeepseekV2LiteRunsInLlamaCppAsTheReferenceRoutes()
    {
        var golden = Converter.Verification.GoldenSet.Load(TestData.Golden("tiny-dsv2-lite", "eval.safetensors"));
        var tokens = golden.Tokens.AsSpan(0, Batch * Seq).ToArray();
        var greedy = Variant("v2-greedy", "greedy", "tiny-dsv2-lite");
        float[] refLogits;
        double[] margin;
        using (var ckpt = ModelCheckpoint.Open(greedy))
            (refLogits, _, margin) = new ReferenceForward(ckpt).Run(tokens, Batch, Seq);
        string gguf = Path.Combine(_tmp.Path, "v2-greedy.gguf");
        using (var ckpt = ModelCheckpoint.Open(greedy))
            GgufExportPipeline.Run(ckpt, new GgufExportOptions(gguf, GgmlType.F32), NullLogger.Instance);
        float[] got;
        using (var runner = new GgufArtifactRunner(gguf))
            got = runner.Run(tokens, Batch, Seq, hiddenStates: false, routing: false).Logits;
        var (stable, maxDiff, top1) = Compare(refLogits, margin, got, golden.Vocab);
        log.WriteLine($"llama.cpp vs float64 reference, tiny-dsv2-lite greedy: {stable} stable positions, max |logit diff| {maxDiff:E3}, top-1 {top1}/{stable}");
        stable.Should().BeGreaterThan(Batch * Seq / 2);
        maxDiff.Should().BeLessThanOrEqualTo(1e-3);
        top1.Should().Be(stable);

        string refused = Path.Combine(_tmp.Path, "v2-grouped.gguf");
        var r = Cli.Run("export", "gguf", TestData.Model("tiny-dsv2-lite"), "-o", refused, "--type", "f32");
        r.ExitCode.Should().Be(2, r.ToString());
        r.StdErr.Should().Contain("group_limited_greedy").And.Contain("best score");
        File.Exists(refused).Should().BeFalse();
        Directory.GetFiles(_tmp.Path, "v2-grouped*").Should().BeEmpty();
    }

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
