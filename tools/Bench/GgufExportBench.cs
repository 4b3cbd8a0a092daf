namespace Converter.Tools.Bench;

/// <summary>
/// export gguf for each output type on a synthetic checkpoint (tools/Synth, BF16 or FP8): wall time and peak RSS of
/// the converter process, against `cp` of the same output bytes, page cache warm, best of N runs.
/// </summary>
public static class GgufExportBench
{
    public static readonly string[] AllTypes = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q4_k_m"];

    public static int Run(string[] args)
    {
        string? model = null, work = "/tmp/converter-bench-gguf";
        string[] types = AllTypes;
        int runs = 1;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--model": model = args[++i]; break;
                case "--types": types = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries); break;
                case "--work": work = args[++i]; break;
                case "--runs": runs = int.Parse(args[++i]); break;
                default:
                    Console.WriteLine($"gguf-export --model <synthetic checkpoint dir> [--types {string.Join(',', AllTypes)}] [--work DIR] [--runs N]");
                    return args[i] is "--help" or "-h" ? 0 : 2;
            }
        }
        if (model == null)
        {
            Console.Error.WriteLine("error: --model is required (make one with tools/Synth, e.g. synth -o DIR --layers 2 --experts 16)");
            return 2;
        }
        var converter = CommandTimer.ConverterPath;
        Directory.CreateDirectory(work);
        double inGb = CommandTimer.Warm(model) / 1e9;
        Console.WriteLine($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}; input {model} ({inGb:F2} GB); runs: best of {runs}");
        Console.WriteLine();
        Console.WriteLine("| type | output GB | converter s | cp s | ratio | converter GB/s (output) | peak RSS MiB |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        foreach (var type in types)
        {
            string output = Path.Combine(work, $"out-{type}.gguf"), copy = output + ".cp";
            double best = double.MaxValue, bestCp = double.MaxValue;
            long rss = 0;
            for (int r = 0; r < runs; r++)
            {
                var m = CommandTimer.Run(converter, "export", "gguf", model, "-o", output, "--type", type, "--overwrite", "-q");
                if (m.ExitCode != 0)
                {
                    Console.Error.WriteLine($"converter failed ({m.ExitCode}) for {type}: {m.StdErr}");
                    return 1;
                }
                best = Math.Min(best, m.Seconds);
                rss = Math.Max(rss, m.PeakRssBytes);
                using (var fs = File.OpenRead(output)) fs.CopyTo(Stream.Null); // warm, as for the converter's input
                var cp = CommandTimer.Run("cp", output, copy);
                bestCp = Math.Min(bestCp, cp.Seconds);
                File.Delete(copy);
            }
            double outGb = new FileInfo(output).Length / 1e9;
            Console.WriteLine($"| {type} | {outGb:F3} | {best:F2} | {bestCp:F2} | {best / bestCp:F1}x | {outGb / best:F3} | {rss / 1048576.0:F0} |");
            File.Delete(output);
        }
        return 0;
    }
}
