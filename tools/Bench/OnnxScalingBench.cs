using System.Diagnostics;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Tools.Synth;

namespace Converter.Tools.Bench;

/// <summary>
/// Issue 4's two ONNX measurements:
/// export: `converter export onnx` as a child process (wall time, peak RSS) on given checkpoints, so RSS can be
/// compared across checkpoint sizes; throughput: ONNX Runtime tokens/s on a synthetic mid-size config (same weights,
/// top-k 2, 4, 8), showing that a MoE layer's cost follows k, not the expert count.
/// </summary>
public static class OnnxScalingBench
{
    public static int Run(string[] args)
    {
        var models = new List<string>();
        string work = "/tmp/converter-onnx-scaling";
        int threads = 2, seq = 256, runs = 3;
        bool throughput = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--export": models.Add(args[++i]); break;
                case "--work": work = args[++i]; break;
                case "--threads": threads = int.Parse(args[++i]); break;
                case "--seq": seq = int.Parse(args[++i]); break;
                case "--runs": runs = int.Parse(args[++i]); break;
                case "--no-throughput": throughput = false; break;
                default:
                    Console.WriteLine("onnx-scaling [--export <checkpoint>]... [--threads 2] [--seq 256] [--runs 3] [--no-throughput] [--work DIR]");
                    return args[i] is "--help" or "-h" ? 0 : 2;
            }
        }
        Directory.CreateDirectory(work);
        var converter = CommandTimer.ConverterPath;
        if (models.Count > 0)
        {
            Console.WriteLine("| checkpoint | checkpoint GB | weights | export s | ONNX data GB | peak RSS MiB |");
            Console.WriteLine("|---|---|---|---|---|---|");
            foreach (var model in models)
                foreach (var weights in new[] { "fp32", "fp8" })
                {
                    var outDir = Path.Combine(work, "export-" + weights);
                    CommandTimer.Run("sync");
                    var m = CommandTimer.Run(converter, "export", "onnx", model, "-o", outDir, "--weights", weights, "--overwrite", "-q");
                    if (m.ExitCode != 0) { Console.Error.WriteLine(m.StdErr); return 1; }
                    Console.WriteLine($"| {Path.GetFileName(model)} | {CommandTimer.FolderBytes(model) / 1e9:F2} | {weights} | {m.Seconds:F1} | " +
                                      $"{CommandTimer.FolderBytes(outDir) / 1e9:F2} | {m.PeakRssBytes / 1048576.0:F0} |");
                    Directory.Delete(outDir, true);
                }
            Console.WriteLine();
        }
        if (!throughput) return 0;

        // Mid-size MoE: hidden 1024, 4 layers (1 dense), 64 experts of width 512 in 8 groups, vocab 4096.
        Console.WriteLine($"ONNX Runtime CPU, {threads} intra-op threads, one sequence of {seq} tokens (prefill), median of {runs}");
        Console.WriteLine();
        Console.WriteLine("| top-k | experts | forward ms | tokens/s |");
        Console.WriteLine("|---|---|---|---|");
        var tokens = new int[seq];
        for (int i = 0; i < seq; i++) tokens[i] = (i * 7919 + 13) % 4096;
        foreach (int k in new[] { 2, 4, 8 })
        {
            var ckpt = Path.Combine(work, $"mid-k{k}");
            var onnx = Path.Combine(work, $"mid-k{k}-onnx");
            SyntheticCheckpoint.Write(ckpt, new SynthOptions
            {
                Layers = 4, DenseLayers = 1, Experts = 64, ExpertsPerToken = k, Groups = 8, TopkGroups = 4, SharedExperts = 1,
                Hidden = 1024, QLoraRank = 384, KvLoraRank = 256, Heads = 8, NopeDim = 64, RopeDim = 32, VDim = 64,
                Intermediate = 2816, MoeIntermediate = 512, Vocab = 4096, Seed = 7,
            }, overwrite: true);
            OnnxExportPipeline.Run(ckpt, onnx, new OnnxExportOptions(Overwrite: true));
            using var runner = new OnnxArtifactRunner(onnx, new OnnxRunnerOptions(IntraOpThreads: threads));
            runner.Run(tokens, 1, seq, false, false); // warm-up
            var times = new List<double>();
            for (int r = 0; r < runs; r++)
            {
                var clock = Stopwatch.StartNew();
                runner.Run(tokens, 1, seq, false, false);
                times.Add(clock.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            double ms = times[times.Count / 2];
            Console.WriteLine($"| {k} | 64 | {ms:F0} | {seq / (ms / 1000):F0} |");
            Directory.Delete(ckpt, true);
            Directory.Delete(onnx, true);
        }
        return 0;
    }
}
