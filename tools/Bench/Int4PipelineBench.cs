namespace Converter.Tools.Bench;

/// <summary>
/// `converter quantize --scheme int4` end to end on a checkpoint (RTN, and GPTQ when a calibration folder is given):
/// wall time, throughput over the quantized routed-expert weights, peak RSS, and `cp` of the output bytes. Page
/// cache warm, output deleted and `sync` before every run, best of N.
/// </summary>
public static class Int4PipelineBench
{
    public static int Run(string[] args)
    {
        string? model = null, calibration = null, work = "/tmp/converter-bench-int4";
        int group = 128, runs = 1;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--model": model = args[++i]; break;
                case "--calibration": calibration = args[++i]; break;
                case "--group": group = int.Parse(args[++i]); break;
                case "--runs": runs = int.Parse(args[++i]); break;
                case "--work": work = args[++i]; break;
                default:
                    Console.WriteLine("int4-pipeline --model <BF16/FP8 dir> [--calibration <converter calibrate dir>] [--group 32|64|128] [--runs N] [--work DIR]");
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
        double inGb = CommandTimer.Warm(model) / 1e9;
        Console.WriteLine($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}; {model} ({inGb:F2} GB); group {group}, symmetric; best of {runs}");
        Console.WriteLine();
        Console.WriteLine("| method | output GB | converter s | cp s | ratio | input GB/s | peak RSS MiB |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        var methods = calibration == null ? new[] { "rtn" } : new[] { "rtn", "gptq" };
        if (calibration != null) CommandTimer.Warm(calibration);
        foreach (var method in methods)
        {
            var outDir = Path.Combine(work, method);
            var argv = new List<string> { "quantize", model, "-o", outDir, "--scheme", "int4", "--group-size", group.ToString(), "--method", method, "-q" };
            if (method == "gptq") argv.AddRange(["--calibration", calibration!]);
            var m = CommandTimer.AgainstCp(converter, argv, outDir, runs);
            Console.WriteLine($"| {method} | {m.OutputBytes / 1e9:F2} | {m.Seconds:F2} | {m.CpSeconds:F2} | {m.Seconds / m.CpSeconds:F1}x | {inGb / m.Seconds:F2} | {m.PeakRssBytes / 1048576.0:F0} |");
            Directory.Delete(outDir, true);
        }
        return 0;
    }
}
