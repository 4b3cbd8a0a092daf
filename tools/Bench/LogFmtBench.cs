using System.Diagnostics;
using Converter.Numerics.LogFmt;

namespace Converter.Tools.Bench;

/// <summary>
/// LogFMT encode / decode / fused quantize-dequantize throughput, in GB/s of float32 input (decode: of
/// float32 output), at n = 8 and 10 with 1 and 2 threads, next to a plain copy of the same float32 bytes.
/// Data: activation-like rows of 7168 (gaussian with a few large outliers). Best of --reps runs.
/// "GB per CPU-s" divides by the process CPU time of that best run instead of wall time: on a shared,
/// oversubscribed machine it is the better estimate of what the code does on cores it actually gets.
/// Usage: LogFmtBench [--elements N] [--reps R] [--threads 1,2]
/// </summary>
public static class LogFmtBench
{
    public static int Run(string[] args)
    {
        int elements = 7168 * 1024, reps = 5;
        int[] threadCounts = [1, 2];
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            if (args[i] == "--elements") elements = Math.Max(1, int.Parse(args[i + 1]) / 7168) * 7168;
            else if (args[i] == "--reps") reps = int.Parse(args[i + 1]);
            else if (args[i] == "--threads") threadCounts = Array.ConvertAll(args[i + 1].Split(','), int.Parse);
        }
        const int row = 7168;
        var x = new float[elements];
        var rng = new Random(42);
        for (int i = 0; i < elements; i++)
        {
            double g = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
            x[i] = (float)(i % 997 == 0 ? g * 50 : g);
        }
        var codes = new ushort[elements];
        var meta = new float[2 * LogFmtCodec.TileCount(elements, row)];
        var y = new float[elements];
        var copy = new float[elements];
        double bytes = 4.0 * elements;

        Console.WriteLine($"LogFMT throughput: {elements} float32 ({bytes / 1e6:F0} MB) in rows of {row}, best of {reps}; " +
                          $"{Environment.ProcessorCount} logical cores, AVX2 vector path: {LogFmtCodec.IsHardwareAccelerated}");
        Console.WriteLine();
        Console.WriteLine("| operation | bits | threads | GB/s (wall) | vs copy | GB per CPU-s |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        foreach (int threads in threadCounts)
        {
            var (copyGbs, copyCpu) = Measure(reps, bytes, () => ParallelCopy(x, copy, threads));
            Console.WriteLine($"| memory copy | - | {threads} | {copyGbs:F2} | 1.00 | {copyCpu:F2} |");
            foreach (int bits in new[] { 8, 10 })
            {
                var (enc, encCpu) = Measure(reps, bytes, () => LogFmtCodec.Encode(x, bits, codes, meta, "bench", row, threads));
                var (dec, decCpu) = Measure(reps, bytes, () => LogFmtCodec.Decode(codes, meta, bits, y, "bench", row, threads));
                var (qdq, qdqCpu) = Measure(reps, bytes, () => LogFmtCodec.QuantizeDequantize(x, bits, y, "bench", row, threads));
                Console.WriteLine($"| encode | {bits} | {threads} | {enc:F2} | {enc / copyGbs:F3} | {encCpu:F2} |");
                Console.WriteLine($"| decode | {bits} | {threads} | {dec:F2} | {dec / copyGbs:F3} | {decCpu:F2} |");
                Console.WriteLine($"| quantize-dequantize | {bits} | {threads} | {qdq:F2} | {qdq / copyGbs:F3} | {qdqCpu:F2} |");
            }
        }
        return 0;
    }

    private static void ParallelCopy(float[] src, float[] dst, int threads)
    {
        if (threads == 1) { src.AsSpan().CopyTo(dst); return; }
        int chunk = (src.Length + threads - 1) / threads;
        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
        {
            int s = t * chunk, n = Math.Min(chunk, src.Length - s);
            src.AsSpan(s, n).CopyTo(dst.AsSpan(s, n));
        });
    }

    /// <summary>
    /// (GB/s by wall time, GB per CPU-second) of the fastest of <paramref name="reps"/> runs; each run repeats
    /// the body for at least 0.3 s so the process CPU time (10 ms ticks) is meaningful.
    /// </summary>
    private static (double Wall, double Cpu) Measure(int reps, double bytes, Action body)
    {
        body(); // warm-up (JIT, page faults)
        var proc = Process.GetCurrentProcess();
        double best = double.MaxValue, bestCpu = double.MaxValue;
        for (int r = 0; r < reps; r++)
        {
            proc.Refresh();
            var cpu0 = proc.TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            int iters = 0;
            do { body(); iters++; } while (sw.Elapsed.TotalSeconds < 0.3);
            double wall = sw.Elapsed.TotalSeconds / iters;
            proc.Refresh();
            double cpu = (proc.TotalProcessorTime - cpu0).TotalSeconds / iters;
            best = Math.Min(best, wall);
            if (cpu > 0) bestCpu = Math.Min(bestCpu, cpu);
        }
        return (bytes / best / 1e9, bytes / bestCpu / 1e9);
    }
}
