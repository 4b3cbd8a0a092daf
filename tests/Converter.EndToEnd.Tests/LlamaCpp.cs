using System.Diagnostics;
using System.Text.Json;
using Converter.Formats.Safetensors;

namespace Converter.EndToEnd.Tests;

/// <summary>
/// Runs GGUF files in llama.cpp (node-llama-cpp 3.22.1, tests/interop, installed by <c>npm ci</c>): logits of token
/// sequences (eval.mjs: F32 KV cache, flash attention off) and tokenization (tokenize.mjs), and the comparison of
/// logits with a transformers golden.
/// </summary>
public static class LlamaCpp
{
    public sealed record Comparison(double MaxAbsDiff, double Top1Agreement, double KlMean, int Positions);

    public static string InteropDir
    {
        get
        {
            string interop = Path.Combine(Converter.Tests.TestData.Root, "tests", "interop");
            Directory.Exists(Path.Combine(interop, "node_modules", "node-llama-cpp"))
                .Should().BeTrue("tests/interop needs its packages: run `npm ci` there (.ci/run does)");
            return interop;
        }
    }

    private static void Node(string script, string workDir, params string[] args)
    {
        var psi = new ProcessStartInfo("node", [Path.Combine(InteropDir, script), .. args])
        {
            WorkingDirectory = InteropDir,
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit(300_000).Should().BeTrue($"node {script} timed out");
        p.ExitCode.Should().Be(0, $"node {script} failed: {err.Result}");
    }

    /// <summary>llama.cpp's logits [seq][pos][vocab] for each sequence (a fresh context per sequence).</summary>
    public static double[][][] Logits(string gguf, int[][] sequences, string workDir, out int vocab)
    {
        string tokensPath = Path.Combine(workDir, "tokens-" + Guid.NewGuid().ToString("N") + ".json");
        string outPath = Path.ChangeExtension(tokensPath, ".out.json");
        File.WriteAllText(tokensPath, JsonSerializer.Serialize(sequences));
        Node("eval.mjs", workDir, gguf, tokensPath, outPath, "2");
        using var doc = JsonDocument.Parse(File.ReadAllBytes(outPath));
        vocab = doc.RootElement.GetProperty("vocab").GetInt32();
        return doc.RootElement.GetProperty("logits").EnumerateArray()
            .Select(s => s.EnumerateArray().Select(r => r.EnumerateArray().Select(e => e.GetDouble()).ToArray()).ToArray()).ToArray();
    }

    /// <summary>How llama.cpp tokenizes each text (no BOS/EOS, special tokens not parsed).</summary>
    public static int[][] Tokenize(string gguf, string[] texts, string workDir)
    {
        string textsPath = Path.Combine(workDir, "texts-" + Guid.NewGuid().ToString("N") + ".json");
        string outPath = Path.ChangeExtension(textsPath, ".out.json");
        File.WriteAllText(textsPath, JsonSerializer.Serialize(texts));
        Node("tokenize.mjs", workDir, gguf, textsPath, outPath);
        using var doc = JsonDocument.Parse(File.ReadAllBytes(outPath));
        return doc.RootElement.GetProperty("tokens").EnumerateArray().Select(a => a.EnumerateArray().Select(e => e.GetInt32()).ToArray()).ToArray();
    }

    /// <summary>The file's logits on the first <paramref name="sequences"/> golden sequences against the golden's.</summary>
    public static Comparison CompareWithGolden(string gguf, string goldenEval, int sequences, string workDir)
    {
        using var golden = SafetensorsFile.Open(goldenEval);
        var shape = golden.Info("logits").Shape;
        int positions = (int)shape[1], vocab = (int)shape[2];
        int[] tokens;
        float[] logits;
        using (var t = golden.Read("tokens")) tokens = t.As<int>().ToArray();
        using (var l = golden.Read("logits")) logits = l.As<float>().ToArray();
        var seqs = Enumerable.Range(0, sequences).Select(s => tokens.AsSpan(s * positions, positions).ToArray()).ToArray();
        var got = Logits(gguf, seqs, workDir, out int gotVocab);
        gotVocab.Should().Be(vocab);
        double maxDiff = 0, kl = 0;
        int agree = 0;
        for (int s = 0; s < sequences; s++)
        {
            got[s].Should().HaveCount(positions);
            for (int p = 0; p < positions; p++)
            {
                var a = logits.AsSpan((s * positions + p) * vocab, vocab);
                var b = got[s][p];
                for (int i = 0; i < vocab; i++) maxDiff = Math.Max(maxDiff, Math.Abs(a[i] - b[i]));
                if (ArgMax(a) == Array.IndexOf(b, b.Max())) agree++;
                kl += Kl(a, b);
            }
        }
        int n = sequences * positions;
        return new Comparison(maxDiff, agree / (double)n, kl / n, n);
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

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
}
