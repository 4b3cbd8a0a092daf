using Converter.Calibration;
using Converter.Models;

namespace Converter.Tools.Bench;

/// <summary>
/// converter shard on a synthetic checkpoint (tools/Synth) for several rank counts: wall time and peak RSS of the child
/// process against `cp -r` of the same output bytes, page cache warm, best of N runs. Balanced runs use a synthetic
/// skewed calibration (Zipf-like expert popularity) so replicas and the load report are exercised at real shapes.
/// With --onnx, every rank also gets its ONNX model (fp32, fp8 or int4 weights).
/// </summary>
public static class ShardBench
{
    public static int Run(string[] args)
    {
        string? model = null, work = "/tmp/converter-bench-shard";
        int runs = 2;
        var ranks = new List<int> { 4, 8 };
        int redundant = 2;
        string? onnx = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--model": model = args[++i]; break;
                case "--work": work = args[++i]; break;
                case "--runs": runs = int.Parse(args[++i]); break;
                case "--ranks": ranks = args[++i].Split(',').Select(int.Parse).ToList(); break;
                case "--redundant": redundant = int.Parse(args[++i]); break;
                case "--onnx": onnx = args[++i]; break;
                default:
                    Console.WriteLine("shard --model <synthetic dir> [--ranks 4,8] [--redundant R] [--onnx fp32|fp8|int4] [--work DIR] [--runs N]");
                    return args[i] is "--help" or "-h" ? 0 : 2;
            }
        }
        if (model == null)
        {
            Console.Error.WriteLine("error: --model is required (make one with tools/Synth)");
            return 2;
        }
        var converter = CommandTimer.ConverterPath;
        Directory.CreateDirectory(work);
        var calib = Path.Combine(work, "calib");
        SkewedCalibration(ArchitectureRegistry.Load(model), 8192).Save(calib);
        double inGb = CommandTimer.Warm(model) / 1e9;
        Console.WriteLine($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}; input {inGb:F2} GB; runs: best of {runs}" +
            (onnx == null ? "" : $"; with --onnx --onnx-weights {onnx} (a model per rank as well as its checkpoint)"));
        Console.WriteLine();
        Console.WriteLine("| placement | ranks | output GB | converter s | cp s | ratio | converter GB/s (output) | peak RSS MiB |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (var n in ranks)
        {
            var variants = new List<(string Name, string[] Args)>
            {
                ("contiguous", []),
                ($"balanced +{redundant}", ["--placement", "balanced", "--calibration", calib, "--redundant", redundant.ToString()]),
            };
            foreach (var (name, extra) in variants)
            {
                var outDir = Path.Combine(work, "out");
                string[] withOnnx = onnx == null ? [] : ["--onnx", "--onnx-weights", onnx];
                var m = CommandTimer.AgainstCp(converter, ["shard", model, "-o", outDir, "--ranks", n.ToString(), "-q", .. extra, .. withOnnx], outDir, runs);
                double outGb = m.OutputBytes / 1e9;
                Console.WriteLine($"| {name} | {n} | {outGb:F2} | {m.Seconds:F2} | {m.CpSeconds:F2} | {m.Seconds / m.CpSeconds:F2}x | {outGb / m.Seconds:F2} | {m.PeakRssBytes / 1048576.0:F0} |");
                Directory.Delete(outDir, true);
            }
        }
        return 0;
    }

    /// <summary>Every token picks k distinct experts with probability ~ 1/(rank+2): a few hot experts, as real routers show.</summary>
    private static CalibrationData SkewedCalibration(ModelArchitecture arch, int tokens)
    {
        int e = arch.NumRoutedExperts, k = arch.NumExpertsPerToken;
        var rng = new Random(7);
        var weights = Enumerable.Range(0, e).Select(i => 1.0 / (((i * 7) % e) + 2)).ToArray();
        var topk = new Dictionary<int, int[]>();
        foreach (var layer in arch.MoeLayers().Where(l => l < arch.NumLayers))
        {
            var ids = new int[tokens * k];
            for (int t = 0; t < tokens; t++)
            {
                var chosen = new HashSet<int>();
                while (chosen.Count < k)
                {
                    double u = rng.NextDouble() * weights.Sum();
                    int x = 0;
                    for (; x < e - 1 && u >= weights[x]; x++) u -= weights[x];
                    chosen.Add(x);
                }
                int j = 0;
                foreach (var x in chosen) ids[t * k + j++] = x;
            }
            topk[layer] = ids;
        }
        return new CalibrationData
        {
            ModelType = arch.ModelType,
            ConfigFingerprint = CalibrationData.Fingerprint(arch),
            RoutedExperts = e,
            ExpertsPerToken = k,
            Sequences = tokens / 128,
            SequenceLength = 128,
            TopK = topk,
        };
    }
}
