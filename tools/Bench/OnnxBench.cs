using System.Diagnostics;
using Converter.Decoder.Onnx;
using Converter.Pipelines;
using Converter.Runtime;

namespace Converter.Tools.Bench;

/// <summary>
/// ONNX export and ONNX Runtime (CPU) forward on a checkpoint (e.g. a tools/Synth one at real DeepSeek-V3 shapes):
/// export time and size for fp32 and fp8 weights, session load time, forward time for one sequence, and the fp8
/// model's logit distance to the fp32 one.
/// </summary>
public static class OnnxBench
{
    public static int Run(string[] args)
    {
        string? model = null, work = "/tmp/converter-onnx-bench";
        int seq = 32, threads = 0, runs = 3;
        bool forward = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--model": model = args[++i]; break;
                case "--work": work = args[++i]; break;
                case "--seq": seq = int.Parse(args[++i]); break;
                case "--threads": threads = int.Parse(args[++i]); break;
                case "--runs": runs = int.Parse(args[++i]); break;
                case "--no-forward": forward = false; break;
                default:
                    Console.WriteLine("onnx --model <checkpoint dir> [--work DIR] [--seq N] [--threads T] [--runs N] [--no-forward]");
                    return args[i] is "--help" or "-h" ? 0 : 2;
            }
        }
        if (model == null)
        {
            Console.Error.WriteLine("error: --model is required (make one with tools/Synth)");
            return 2;
        }
        Directory.CreateDirectory(work);
        Console.WriteLine($"machine: {Environment.ProcessorCount} cores; model {model}; sequence {seq} tokens; forward median of {runs}");
        Console.WriteLine();
        Console.WriteLine("| weights | export s | data GB | load s | forward ms | max abs logit diff vs fp32 | top-1 vs fp32 |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        float[]? reference = null;
        var tokens = new int[seq];
        for (int i = 0; i < seq; i++) tokens[i] = (i * 7919 + 13) % 256;
        foreach (var format in new[] { OnnxWeightFormat.Fp32, OnnxWeightFormat.Fp8 })
        {
            var outDir = Path.Combine(work, format.ToString().ToLowerInvariant());
            var clock = Stopwatch.StartNew();
            var r = OnnxExportPipeline.Run(model, outDir, new OnnxExportOptions(format, Overwrite: true));
            double exportS = clock.Elapsed.TotalSeconds;
            string load = "-", fwd = "-", diff = "-", top1 = "-";
            if (forward)
            {
                clock.Restart();
                using var runner = new OnnxArtifactRunner(r.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: threads));
                load = $"{clock.Elapsed.TotalSeconds:F1}";
                var times = new List<double>();
                float[] logits = [];
                for (int k = 0; k < runs; k++)
                {
                    clock.Restart();
                    logits = runner.Run(tokens, 1, seq, false, false).Logits;
                    times.Add(clock.Elapsed.TotalMilliseconds);
                }
                times.Sort();
                fwd = $"{times[times.Count / 2]:F0}";
                if (reference == null) reference = logits;
                else
                {
                    int vocab = logits.Length / seq, agree = 0;
                    double max = 0;
                    for (int p = 0; p < seq; p++)
                    {
                        int a = 0, b = 0;
                        for (int v = 0; v < vocab; v++)
                        {
                            max = Math.Max(max, Math.Abs(logits[p * vocab + v] - reference[p * vocab + v]));
                            if (logits[p * vocab + v] > logits[p * vocab + a]) a = v;
                            if (reference[p * vocab + v] > reference[p * vocab + b]) b = v;
                        }
                        if (a == b) agree++;
                    }
                    diff = $"{max:E2}";
                    top1 = $"{agree / (double)seq:F3}";
                }
            }
            Console.WriteLine($"| {format} | {exportS:F1} | {r.DataBytes / 1e9:F2} | {load} | {fwd} | {diff} | {top1} |");
            Directory.Delete(outDir, true);
        }
        return 0;
    }
}
