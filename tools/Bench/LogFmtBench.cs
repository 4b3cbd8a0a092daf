using System.Diagnostics;
using Converter.Numerics.LogFmt;

namespace Converter.Bench;

/// <summary>
/// LogFMT encode / decode / fused quantize-dequantize throughput, in GB/s of float32 input (decode: of
/// float32 output), at n = 8 and 10 with 1 and 2 threads, next to a plain copy of the same float32 bytes.
/// Data: activation-like rows of 7168 (gaussian with a few large outliers). Best of --reps runs.
/// Usage: LogFmtBench [--elements N] [--reps R]
/// </summary>
public static class LogFmtBench
{
    public static int Run(string[] args)
    {
        int elements = 7168 * 1024, reps = 5;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            if (args[i] == "--elements") elements = int.Parse(args[i + 1]) / 7168 * 7168;
            else if (args[i] == "--reps") reps = int.Parse(args[i + 1]);
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
        Console.WriteLine("| operation | bits | threads | GB/s | vs copy |");
        Console.WriteLine("|---|---:|---:|---:|---:|");
        foreach (int threads in new[] { 1, 2 })
        {
            double copyGbs = Measure(reps, bytes, () => ParallelCopy(x, copy, threads));
            Console.WriteLine($"| memory copy | - | {threads} | {copyGbs:F2} | 1.00 |");
            foreach (int bits in new[] { 8, 10 })
            {
                double enc = Measure(reps, bytes, () => LogFmtCodec.Encode(x, bits, codes, meta, "bench", row, threads));
                double dec = Measure(reps, bytes, () => LogFmtCodec.Decode(codes, meta, bits, y, "bench", row, threads));
                double qdq = Measure(reps, bytes, () => LogFmtCodec.QuantizeDequantize(x, bits, y, "bench", row, threads));
                Console.WriteLine($"| encode | {bits} | {threads} | {enc:F2} | {enc / copyGbs:F2} |");
                Console.WriteLine($"| decode | {bits} | {threads} | {dec:F2} | {dec / copyGbs:F2} |");
                Console.WriteLine($"| quantize-dequantize | {bits} | {threads} | {qdq:F2} | {qdq / copyGbs:F2} |");
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

    private static double Measure(int reps, double bytes, Action body)
    {
        body(); // warm-up (JIT, page faults)
        double best = double.MaxValue;
        for (int r = 0; r < reps; r++)
        {
            var sw = Stopwatch.StartNew();
            body();
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return bytes / best / 1e9;
    }
}
