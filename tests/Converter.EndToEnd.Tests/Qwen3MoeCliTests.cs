using System.Text.Json.Nodes;
using Converter.Runtime;
using Converter.Verification;

namespace Converter.Tests;

/// <summary>
/// The Qwen3-MoE family through every ONNX path of the CLI, as a user runs them on tiny-qwen3moe (GQA with q/k norms,
/// softmax top-2 of 8 without renormalisation, layer 0 dense): fp8 and int4 exports, calibrate + GPTQ, shard --onnx.
/// fp32 against the transformers golden is OnnxExportGoldenTests; these compare each path with the fp32 export of the
/// same (dequantized) weights, which isolates the path from its quantization error, and report against the golden.
/// </summary>
public class Qwen3MoeCliTests(Xunit.Abstractions.ITestOutputHelper log) : IDisposable
{
    private const string Model = "tiny-qwen3moe";
    private readonly TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private static string Eval => TestData.Golden(Model, "eval.safetensors");

    private string Run(string name, params string[] args)
    {
        var r = Cli.Run([.. args, "-q"]);
        r.ExitCode.Should().Be(0, r.ToString());
        return _tmp[name];
    }

    private string Export(string source, string name, string weights) =>
        Run(name, "export", "onnx", source, "-o", _tmp[name], "--weights", weights);

    private JsonObject Verify(string artifact, string preset)
    {
        var r = Cli.Run("verify", artifact, "--golden", Eval, "--json", "--format-preset", preset);
        log.WriteLine($"verify {Path.GetFileName(artifact)} ({preset}): {r.StdOut}");
        r.ExitCode.Should().Be(0, r.ToString());
        return JsonNode.Parse(r.StdOut)!.AsObject();
    }

    private static float[] Logits(string onnxDir, GoldenSet golden)
    {
        using var runner = new OnnxArtifactRunner(onnxDir, new OnnxRunnerOptions(IntraOpThreads: 2));
        return runner.Run(golden.Tokens, golden.Batch, golden.Seq, hiddenStates: false, routing: false).Logits;
    }

    private static double MaxAbsDiff(float[] a, float[] b)
    {
        a.Length.Should().Be(b.Length);
        double m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs(a[i] - b[i]));
        return m;
    }

    [Theory]
    [InlineData("fp8-block", "fp8", 1e-4)]
    [InlineData("int4", "int4", 1e-3)]
    public void QuantizedExportComputesWhatTheFp32ExportOfItsWeightsComputes(string scheme, string weights, double limit)
    {
        var quantized = Run("q", "quantize", TestData.Model(Model), "-o", _tmp["q"], "--scheme", scheme);
        var low = Export(quantized, "low", weights);
        var fp32 = Export(quantized, "fp32", "fp32");
        var golden = GoldenSet.Load(Eval);
        double diff = MaxAbsDiff(Logits(low, golden), Logits(fp32, golden));
        var report = Verify(low, weights == "fp8" ? "report" : "int4");
        log.WriteLine($"{scheme}: {weights} export vs fp32 export of the same weights: max |logit diff| {diff:E3}; vs BF16 golden kl_mean " +
                      $"{report["kl_mean"]} top1 {report["top1_agreement"]}");
        diff.Should().BeLessThanOrEqualTo(limit);
        report["kl_mean"]!.GetValue<double>().Should().BeLessThan(0.02, "the quantized model still tracks the BF16 golden");
    }

    /// <summary>
    /// The fp8 preset (the one DeepSeek-V3's fp8 export meets against transformers on its FP8 weights) against the float64
    /// Qwen3 reference forward run on the FP8 checkpoint's dequantized weights: the reference matches transformers' BF16
    /// golden to 6.7e-5 (Qwen3MoeVariationTests), and no transformers golden of Qwen3 FP8 weights exists here.
    /// </summary>
    [Fact]
    public void Fp8ExportMeetsTheFp8PresetAgainstTheReferenceOfItsWeights()
    {
        var quantized = Run("q", "quantize", TestData.Model(Model), "-o", _tmp["q"], "--scheme", "fp8-block");
        var fp8 = Export(quantized, "fp8", "fp8");
        var golden = GoldenSet.Load(Eval);
        const int batch = 2;
        var tokens = golden.Tokens.AsSpan(0, batch * golden.Seq).ToArray();
        float[] reference;
        using (var ckpt = Converter.Models.ModelCheckpoint.Open(quantized))
            (reference, _, _) = new Converter.Tests.Onnx.Qwen3MoeReferenceForward(ckpt).Run(tokens, batch, golden.Seq);
        // The reference's own next-token NLL, so a preset's perplexity limit compares like with like.
        int seq = golden.Seq, vocab = golden.Vocab;
        var nll = new float[batch * (seq - 1)];
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < seq - 1; t++)
            {
                var row = reference.AsSpan((b * seq + t) * vocab, vocab);
                double max = double.NegativeInfinity, z = 0;
                foreach (var x in row) max = Math.Max(max, x);
                foreach (var x in row) z += Math.Exp(x - max);
                nll[b * (seq - 1) + t] = (float)(max + Math.Log(z) - row[tokens[b * seq + t + 1]]);
            }
        var refGolden = GoldenSet.FromArrays("float64 reference of the FP8 weights", batch, golden.Seq, golden.Vocab, tokens, reference, nll);
        float[] logits;
        using (var runner = new OnnxArtifactRunner(fp8, new OnnxRunnerOptions(IntraOpThreads: 2)))
            logits = runner.Run(tokens, batch, golden.Seq, hiddenStates: false, routing: false).Logits;
        var report = GoldenComparer.Compare(refGolden, new ArtifactOutputs(logits, null, null), VerificationTolerances.ForPreset("fp8"), null);
        log.WriteLine($"fp8 export vs float64 reference of its weights: max |diff| {report.MaxAbsLogitDiff:E3}, mean {report.MeanAbsLogitDiff:E3}, top-1 {report.Top1Agreement}, kl {report.KlMean:E3}");
        report.Failures.Should().BeEmpty();
    }

    [Fact]
    public void GptqFromCalibrateBeatsRtnOnHeldOutEval()
    {
        var calib = Run("calib", "calibrate", TestData.Model(Model), "--tokens", TestData.Golden(Model, "calib.safetensors"), "-o", _tmp["calib"]);
        double Kl(string method)
        {
            var q = Run(method, "quantize", TestData.Model(Model), "-o", _tmp[method], "--scheme", "int4", "--group-size", "32",
                "--method", method, "--calibration", calib);
            return Verify(Export(q, method + ".onnx", "int4"), "int4")["kl_mean"]!.GetValue<double>();
        }
        double rtn = Kl("rtn"), gptq = Kl("gptq");
        log.WriteLine($"g32 kl_mean: rtn {rtn:E3}, gptq {gptq:E3} ({1 - gptq / rtn:P1} lower)");
        gptq.Should().BeLessThanOrEqualTo(0.8 * rtn);
    }

    [Fact]
    public void ShardedOnnxSumsToTheUnshardedExport()
    {
        var sharded = Run("sharded", "shard", TestData.Model(Model), "-o", _tmp["sharded"], "--ranks", "2", "--onnx");
        var report = Verify(sharded, "fp32");
        report["passed"]!.GetValue<bool>().Should().BeTrue();
        report["routing_agreement"]!.GetValue<double>().Should().Be(1);
        report["kl_mean"]!.GetValue<double>().Should().BeLessThanOrEqualTo(1e-5);
        report["max_abs_logit_diff_stable"]!.GetValue<double>().Should().BeLessThanOrEqualTo(1e-3);
    }
}
