using Converter.Decoder.Onnx;
using Converter.Formats.Onnx.Proto;
using Converter.Models;
using Converter.Numerics.Int4;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Verification;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace Converter.Tests.Onnx;

/// <summary>
/// DeepSeek-V4 with --weights int4: routed experts through com.microsoft.QMoE (its swiglu_limit clamping the experts as
/// transformers does), INT4 projections through MatMulNBits, checked against the fp32 export of the same dequantized
/// weights, and reported against the BF16 golden.
/// </summary>
public class DeepseekV4Int4Tests(ITestOutputHelper log)
{
    [Theory]
    [InlineData(32, true, Int4Targets.RoutedExperts)]
    [InlineData(64, false, Int4Targets.AllLinear)]
    public void Int4ExportAgreesWithTheFp32ExportOfTheSameDequantizedWeights(int group, bool symmetric, Int4Targets targets)
    {
        using var tmp = new TestData.TempDir();
        using (var src = ModelCheckpoint.Open(TestData.Model("tiny-dsv4")))
            QuantizePipeline.Run(src, new QuantizeOptions(QuantizeScheme.Int4, tmp["int4"]) { Int4 = new Int4Options(group, symmetric, Targets: targets) },
                NullLogger.Instance);
        var int4 = OnnxExportPipeline.Run(tmp["int4"], tmp["onnx-int4"], new OnnxExportOptions(OnnxWeightFormat.Int4));
        var fp32 = OnnxExportPipeline.Run(tmp["int4"], tmp["onnx-fp32"], new OnnxExportOptions(OnnxWeightFormat.Fp32));
        var ops = ModelProto.Parser.ParseFrom(File.ReadAllBytes(int4.ModelPath)).Functions.SelectMany(f => f.Node).ToList();
        ops.Where(n => n.OpType == "QMoE").Should().OnlyContain(n => n.Attribute.Any(a => a.Name == "swiglu_limit" && a.F == 10f));
        if (targets == Int4Targets.AllLinear) ops.Select(n => n.OpType).Should().Contain("MatMulNBits");

        var g = GoldenSet.Load(TestData.Golden("tiny-dsv4", "eval.safetensors"));
        int batch = 2;
        var tokens = g.Tokens.AsSpan(0, batch * g.Seq).ToArray();
        float[] Logits(string dir)
        {
            using var runner = new OnnxArtifactRunner(dir, new OnnxRunnerOptions(IntraOpThreads: 2));
            return runner.Run(tokens, batch, g.Seq, hiddenStates: false, routing: false).Logits;
        }
        var a = Logits(int4.OutputDirectory);
        var b = Logits(fp32.OutputDirectory);
        var stats = LogitStats.Compare(a, b, g.Vocab);
        log.WriteLine($"int4 g{group} {(symmetric ? "sym" : "asym")} {targets} vs fp32 of the same weights, {batch} x {g.Seq}: {stats}");
        stats.MaxAbs.Should().BeLessThan(1e-3);

        using var full = new OnnxArtifactRunner(int4.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: 2));
        var r = ArtifactVerifier.Verify(full, g, VerificationTolerances.ForPreset("int4"), layers: false);
        log.WriteLine($"  against the BF16 golden: kl_mean {r.KlMean:E3}, top-1 {r.Top1Agreement:F4}, ppl_ratio {r.PplRatio:F4}, routing {r.RoutingAgreement:F4}, " +
                      $"selections {r.SelectionAgreement:F4}; {int4.DataBytes:N0} bytes of weights (fp32 {fp32.DataBytes:N0})");
    }
}
