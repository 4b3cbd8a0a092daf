using Converter.Decoder.Onnx;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Verification;
using Xunit.Abstractions;

namespace Converter.Tests.Onnx;

/// <summary>DeepSeek-V4's tiny references exported to ONNX and run through ONNX Runtime against the transformers goldens
/// (4 x 512 positions), through <c>verify</c>'s own comparison: logits, routing, the lightning indexer's selections and,
/// where the golden has them, sequence 0's hyper-connection streams layer by layer.</summary>
public class DeepseekV4GoldenTests(ITestOutputHelper log)
{
    [Theory]
    [InlineData("tiny-dsv4", "tiny-dsv4", OnnxWeightFormat.Fp32)]
    [InlineData("tiny-dsv4-fp8", "tiny-dsv4-fp8", OnnxWeightFormat.Fp8)]
    [InlineData("tiny-dsv4", "tiny-dsv4-fp8", OnnxWeightFormat.Fp8)]     // BF16 rounded to the official FP8/FP4 layout at export
    [InlineData("tiny-dsv4-fp8", "tiny-dsv4-fp8", OnnxWeightFormat.Fp32)]
    [InlineData("tiny-dsv4-hc4", "tiny-dsv4-hc4", OnnxWeightFormat.Fp32)] // four streams
    public void ExportMatchesGolden(string model, string golden, OnnxWeightFormat weights)
    {
        using var tmp = new TestData.TempDir();
        var result = OnnxExportPipeline.Run(TestData.Model(model), tmp["onnx"], new OnnxExportOptions(weights));
        var gs = GoldenSet.Load(TestData.Golden(golden, "eval.safetensors"));
        using var runner = new OnnxArtifactRunner(result.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: 2));
        var r = ArtifactVerifier.Verify(runner, gs, VerificationTolerances.ForPreset("fp32"), layers: true);
        log.WriteLine($"{model} -> {weights} ({result.DataBytes:N0} bytes of weights) against {golden}:");
        log.WriteLine($"  stable {r.StablePositions} of {r.Positions}: max |logit diff| {r.MaxAbsLogitDiffStable:E3} (all positions {r.MaxAbsLogitDiff:E3}), " +
                      $"top-1 {r.Top1AgreementStable}, kl_mean {r.KlMean:E3}, routing {r.RoutingAgreement}, selections {r.SelectionAgreement}");
        log.WriteLine($"  unstable {r.Unstable.Count}: max |logit diff| {r.Unstable.MaxAbsLogitDiff:E3}, routing {r.Unstable.RoutingAgreement}, selections {r.Unstable.SelectionAgreement}");
        if (r.Layers is { } lr)
            foreach (var l in lr.Layers) log.WriteLine($"  {l.Name}: relative {l.RelativeError:E3}, max |d| {l.MaxAbsDiff:E3}");

        r.MaxAbsLogitDiffStable.Should().BeLessThanOrEqualTo(1e-3);
        r.Top1AgreementStable.Should().Be(1);
        r.KlMean.Should().BeLessThanOrEqualTo(1e-5);
        r.RoutingAgreement.Should().Be(1);
        r.SelectionAgreement.Should().Be(1);
        r.StablePositions.Should().BeGreaterThan(r.Positions * 9 / 10);
        if (gs.ResidualStates != null)
        {
            r.Layers.Should().NotBeNull();
            r.Layers!.Layers.Should().HaveCount(gs.ResidualStateCount + 1); // every layer's streams and the head + final norm
            r.Layers.Layers.Should().AllSatisfy(l => l.RelativeError.Should().BeLessThanOrEqualTo(1e-4, l.Name));
        }
        r.Passed.Should().BeTrue();
    }
}
