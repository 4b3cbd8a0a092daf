using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Converter.Tests;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.EndToEnd.Tests;

/// <summary>
/// GGUF files exported from tiny-dsv3 are loaded and run by llama.cpp (node-llama-cpp 3.22.1, tests/interop,
/// installed by <c>npm ci</c>) and their logits compared with the transformers float64 golden.
/// </summary>
public sealed class GgufLlamaCppInteropTests : IDisposable
{
    private const int Sequences = 2;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "gguf-interop-" + Guid.NewGuid().ToString("N"));

    public GgufLlamaCppInteropTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    private LlamaCpp.Comparison ExportAndEvaluate(GgmlType type, string model = "tiny-dsv3")
    {
        string gguf = Path.Combine(_dir, $"{model}-{type}.gguf");
        using (var ckpt = ModelCheckpoint.Open(TestData.Model(model)))
            GgufExportPipeline.Run(ckpt, new GgufExportOptions(gguf, type), NullLogger.Instance);
        return LlamaCpp.CompareWithGolden(gguf, TestData.Golden(model, "eval.safetensors"), Sequences, _dir);
    }

    [Fact]
    public void F32GgufMatchesTheGoldenLogits()
    {
        var c = ExportAndEvaluate(GgmlType.F32);
        // measured 3.2e-5 (float32 accumulation order); a wrong key or layout moves logits by far more
        c.MaxAbsDiff.Should().BeLessThan(5e-4, $"{c}");
        c.Top1Agreement.Should().Be(1.0);
    }

    [Fact]
    public void F32GgufFromTheFp8CheckpointMatchesItsGolden()
    {
        // FP8 blocks are dequantized with their scales on the way; measured 3.1e-5
        var c = ExportAndEvaluate(GgmlType.F32, "tiny-dsv3-fp8");
        c.MaxAbsDiff.Should().BeLessThan(5e-4, $"{c}");
        c.Top1Agreement.Should().Be(1.0);
    }

    [Fact]
    public void Q8_0GgufStaysCloseToTheGolden()
    {
        var c = ExportAndEvaluate(GgmlType.Q8_0);
        // measured kl_mean 8.1e-4, top-1 0.992
        c.KlMean.Should().BeLessThan(3e-3, $"{c}");
        c.Top1Agreement.Should().BeGreaterThan(0.97, $"{c}");
    }

    [Fact]
    public void Q4_KGgufLoadsAndStaysNearTheGolden()
    {
        var c = ExportAndEvaluate(GgmlType.Q4_K);
        // measured kl_mean 7.5e-3, top-1 0.953
        c.KlMean.Should().BeLessThan(0.03, $"{c}");
        c.Top1Agreement.Should().BeGreaterThan(0.9, $"{c}");
    }
}
