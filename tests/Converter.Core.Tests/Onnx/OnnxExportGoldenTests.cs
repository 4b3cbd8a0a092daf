using Converter.Decoder.Onnx;
using Converter.Pipelines;
using Converter.Runtime;
using Xunit.Abstractions;

namespace Converter.Tests.Onnx;

/// <summary>Each family's tiny model exported to ONNX and run through ONNX Runtime against the transformers goldens.</summary>
public class OnnxExportGoldenTests(ITestOutputHelper log)
{
    [Theory]
    [InlineData("tiny-dsv3")]
    [InlineData("tiny-qwen3moe")]
    [InlineData("tiny-qwen3moe-norm")]
    [InlineData("tiny-dsv2-lite")]
    public void Fp32ExportMatchesTransformersGolden(string model)
    {
        using var tmp = new TestData.TempDir();
        var result = OnnxExportPipeline.Run(TestData.Model(model), tmp["onnx"], new OnnxExportOptions());
        var golden = new GoldenEval(TestData.Golden(model, "eval.safetensors"));
        using var runner = new OnnxArtifactRunner(result.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: 2));
        var outs = runner.Run(golden.Tokens, golden.Batch, golden.Seq, hiddenStates: true, routing: true);

        var stable = golden.Stable(1e-4);
        var stats = LogitStats.Compare(outs.Logits, golden.Logits, golden.Vocab, stable);
        var all = LogitStats.Compare(outs.Logits, golden.Logits, golden.Vocab);
        log.WriteLine($"stable positions: {stats}");
        log.WriteLine($"all positions:    {all}");

        // Hidden states of sequence 0, layer by layer.
        var hs = golden.HiddenShape!;
        int per = (int)(hs[1] * hs[2]);
        outs.HiddenStates!.Length.Should().Be((int)hs[0]);
        for (int l = 0; l < hs[0]; l++)
        {
            double max = 0, scale = 0;
            for (int s = 0; s < hs[1]; s++)
            {
                if (!stable[s]) continue;
                for (int j = 0; j < hs[2]; j++)
                {
                    int i = s * (int)hs[2] + j;
                    max = Math.Max(max, Math.Abs(outs.HiddenStates[l][i] - golden.HiddenSeq0![l * per + i]));
                    scale = Math.Max(scale, Math.Abs(golden.HiddenSeq0[l * per + i]));
                }
            }
            log.WriteLine($"hidden state {l}: max|d| {max:E3} (max|x| {scale:F2})");
            max.Should().BeLessThan(1e-3 * Math.Max(1, scale), $"hidden state {l}");
        }

        // Routing: every stable golden choice reproduced (as a set per position).
        var rs = golden.RouteShape!;
        int layers = (int)rs[0], n = (int)(rs[1] * rs[2]), k = (int)rs[3];
        outs.RoutingTopK!.Length.Should().Be(layers);
        int checkedChoices = 0, mismatched = 0;
        for (int l = 0; l < layers; l++)
            for (int p = 0; p < n; p++)
            {
                if (golden.RouteMargin![l * n + p] < 1e-4) continue;
                var want = golden.RouteTopk!.AsSpan((l * n + p) * k, k).ToArray().OrderBy(x => x);
                var got = outs.RoutingTopK[l].AsSpan(p * k, k).ToArray().OrderBy(x => x);
                checkedChoices++;
                if (!want.SequenceEqual(got)) mismatched++;
            }
        log.WriteLine($"routing: {checkedChoices} stable (layer, position) choices, {mismatched} differ");

        var report = Converter.Verification.GoldenComparer.Compare(Converter.Verification.GoldenSet.Load(TestData.Golden(model, "eval.safetensors")),
            new Converter.Verification.ArtifactOutputs(outs.Logits, null, null), Converter.Verification.VerificationTolerances.ForPreset("fp32"), null);
        log.WriteLine($"kl_mean {report.KlMean:E3}");
        stats.MaxAbs.Should().BeLessThanOrEqualTo(1e-3);
        stats.Top1.Should().Be(1.0);
        report.KlMean.Should().BeLessThanOrEqualTo(1e-5);
        mismatched.Should().Be(0);
        checkedChoices.Should().BeGreaterThan(n);
    }
}
