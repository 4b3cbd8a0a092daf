using System.Diagnostics;
using System.Text.Json;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.EndToEnd.Tests;

/// <summary>
/// GGUF files exported from tiny-dsv3 are loaded and run by llama.cpp (node-llama-cpp 3.22.1, tests/interop,
/// installed by <c>npm ci</c>) and their logits compared with the transformers float64 golden.
/// </summary>
public sealed class GgufLlamaCppInteropTests : IDisposable
{
    private const int Sequences = 2, Positions = 128, Vocab = 256;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "gguf-interop-" + Guid.NewGuid().ToString("N"));

    public GgufLlamaCppInteropTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    private static string Root
    {
        get
        {
            for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "Converter.sln"))) return d.FullName;
            throw new DirectoryNotFoundException("Converter.sln not found above " + AppContext.BaseDirectory);
        }
    }

    private sealed record Comparison(double MaxAbsDiff, double Top1Agreement, double KlMean);

    private Comparison ExportAndEvaluate(GgmlType type, string model = "tiny-dsv3")
    {
        string interop = Path.Combine(Root, "tests", "interop");
        Directory.Exists(Path.Combine(interop, "node_modules", "node-llama-cpp"))
            .Should().BeTrue("tests/interop needs its packages: run `npm ci` there (.ci/run does)");

        string gguf = Path.Combine(_dir, $"{model}-{type}.gguf");
        using (var ckpt = ModelCheckpoint.Open(Path.Combine(Root, "golden", "models", model)))
            GgufExportPipeline.Run(ckpt, new GgufExportOptions(gguf, type), NullLogger.Instance);

        using var golden = SafetensorsFile.Open(Path.Combine(Root, "golden", model, "eval.safetensors"));
        int[] tokens;
        float[] logits;
        using (var t = golden.Read("tokens")) tokens = t.As<int>().ToArray();
        using (var l = golden.Read("logits")) logits = l.As<float>().ToArray();
        var seqs = Enumerable.Range(0, Sequences).Select(s => tokens.AsSpan(s * Positions, Positions).ToArray()).ToArray();
        string tokensPath = Path.Combine(_dir, "tokens.json"), outPath = Path.Combine(_dir, $"out-{type}.json");
        File.WriteAllText(tokensPath, JsonSerializer.Serialize(seqs));

        var psi = new ProcessStartInfo("node", [Path.Combine(interop, "eval.mjs"), gguf, tokensPath, outPath, "2"])
        {
            WorkingDirectory = interop,
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        using (var p = Process.Start(psi)!)
        {
            string err = p.StandardError.ReadToEnd();
            p.StandardOutput.ReadToEnd();
            p.WaitForExit(300_000).Should().BeTrue("llama.cpp evaluation timed out");
            p.ExitCode.Should().Be(0, $"node eval.mjs failed: {err}");
        }

        using var doc = JsonDocument.Parse(File.ReadAllBytes(outPath));
        doc.RootElement.GetProperty("vocab").GetInt32().Should().Be(Vocab);
        var got = doc.RootElement.GetProperty("logits");
        double maxDiff = 0, kl = 0;
        int agree = 0;
        for (int s = 0; s < Sequences; s++)
        {
            var rows = got[s];
            rows.GetArrayLength().Should().Be(Positions);
            for (int p = 0; p < Positions; p++)
            {
                var a = logits.AsSpan((s * Positions + p) * Vocab, Vocab);
                var b = rows[p].EnumerateArray().Select(e => e.GetDouble()).ToArray();
                for (int i = 0; i < Vocab; i++) maxDiff = Math.Max(maxDiff, Math.Abs(a[i] - b[i]));
                if (ArgMax(a) == ArgMax(b)) agree++;
                kl += Kl(a, b);
            }
        }
        int n = Sequences * Positions;
        return new Comparison(maxDiff, agree / (double)n, kl / n);
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    private static int ArgMax(double[] v) => Array.IndexOf(v, v.Max());

    /// <summary>KL(golden || llama.cpp) of the softmax distributions.</summary>
    private static double Kl(ReadOnlySpan<float> a, double[] b)
    {
        double ma = double.MinValue, mb = b.Max();
        foreach (var x in a) ma = Math.Max(ma, x);
        double sa = 0, sb = 0;
        for (int i = 0; i < a.Length; i++) { sa += Math.Exp(a[i] - ma); sb += Math.Exp(b[i] - mb); }
        double la = Math.Log(sa), lb = Math.Log(sb), kl = 0;
        for (int i = 0; i < a.Length; i++)
        {
            double pa = a[i] - ma - la, pb = b[i] - mb - lb;
            kl += Math.Exp(pa) * (pa - pb);
        }
        return kl;
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
