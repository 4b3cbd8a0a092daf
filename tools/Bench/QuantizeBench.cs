namespace Converter.Tools.Bench;

/// <summary>
/// quantize --scheme fp8-block (BF16 -> FP8) and --scheme bf16 (FP8 -> BF16) on synthetic checkpoints, each
/// against `cp -r` of the same output bytes, page cache warm, `sync` before every timed run, best of N runs.
/// </summary>
public static class QuantizeBench
{
    public static int Run(string[] args)
    {
        string? bf16 = null, fp8 = null, work = "/tmp/converter-bench";
        int runs = 2;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--bf16": bf16 = args[++i]; break;
                case "--fp8": fp8 = args[++i]; break;
                case "--work": work = args[++i]; break;
                case "--runs": runs = int.Parse(args[++i]); break;
                default:
                    Console.WriteLine("quantize --bf16 <synthetic BF16 dir> --fp8 <synthetic FP8 dir> [--work DIR] [--runs N]");
                    return args[i] is "--help" or "-h" ? 0 : 2;
            }
        }
        if (bf16 == null || fp8 == null)
        {
            Console.Error.WriteLine("error: --bf16 and --fp8 are required (make them with tools/Synth)");
            return 2;
        }
        var converter = CommandTimer.ConverterPath;
        Directory.CreateDirectory(work);
        Console.WriteLine($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}; runs: best of {runs}");
        Console.WriteLine();
        Console.WriteLine("| direction | input GB | output GB | converter s | cp s | ratio | converter GB/s (output) | peak RSS MiB |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (var (name, src, scheme) in new[] { ("BF16 -> FP8 block", bf16, "fp8-block"), ("FP8 -> BF16", fp8, "bf16") })
        {
            double inGb = CommandTimer.Warm(src) / 1e9;
            var outDir = Path.Combine(work, scheme);
            var m = CommandTimer.AgainstCp(converter, ["quantize", src, "-o", outDir, "--scheme", scheme, "-q"], outDir, runs);
            double outGb = m.OutputBytes / 1e9;
            Console.WriteLine($"| {name} | {inGb:F2} | {outGb:F2} | {m.Seconds:F2} | {m.CpSeconds:F2} | {m.Seconds / m.CpSeconds:F2}x | {outGb / m.Seconds:F2} | {m.PeakRssBytes / 1048576.0:F0} |");
            Directory.Delete(outDir, true);
        }
        return 0;
    }
}
