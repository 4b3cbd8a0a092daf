using System.Diagnostics;
using System.Runtime.InteropServices;
using Converter.Numerics.Ggml;

namespace Converter.Tools.Bench;

/// <summary>
/// Throughput of the ggml quantizers (float32 rows to ggml blocks, and back) on N(0,1) values, on 1 and 2
/// threads, with the scalar reference quantizer on one thread for comparison and, given the path of a
/// libggml-base.so (e.g. tests/interop/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so),
/// ggml's own quantize_row_*_ref timed in the same run on the same values.
/// Usage: GgmlQuantBench [million values, default 16] [repetitions, default 3] [--ggml path/to/libggml-base.so]
/// </summary>
public static unsafe class GgmlQuantBench
{
    public static int Run(string[] args)
    {
        int ggmlAt = Array.IndexOf(args, "--ggml");
        string? ggmlPath = ggmlAt >= 0 && ggmlAt + 1 < args.Length ? args[ggmlAt + 1] : null;
        if (ggmlAt >= 0) args = [.. args[..ggmlAt], .. args[Math.Min(args.Length, ggmlAt + 2)..]];
        int millions = args.Length > 0 && int.TryParse(args[0], out int m) && m > 0 ? m : 16;
        int reps = args.Length > 1 && int.TryParse(args[1], out int r) && r > 0 ? r : 3;
        nint ggml = ggmlPath != null ? NativeLibrary.Load(ggmlPath) : 0;
        int count = millions * 1024 * 1024;

        var rng = new Random(42);
        var x = new float[count];
        for (int i = 0; i < count; i++)
            x[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        var y = new float[count];

        GgmlType[] types = [GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.F16, GgmlType.BF16];
        Console.WriteLine($"ggml quantizers, {millions}M N(0,1) values, best of {reps}, {Environment.ProcessorCount} cores");
        Console.WriteLine();
        Console.WriteLine("M values/s; \"a / b\": a per wall-clock second, b per CPU second of this process (robust to other load)");
        Console.WriteLine();
        Console.WriteLine("| type | quantize 1 thread | quantize 2 threads | C# scalar reference 1 thread | ggml quantize_row_*_ref 1 thread | dequantize 1 thread | dequantize 2 threads |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (var type in types)
        {
            var q = new byte[GgmlTypeInfo.ByteSize(type, count)];
            var q1 = BestBoth(reps, count, () => GgmlQuantizer.Quantize(type, x, q, 1));
            double q2 = Best(reps, count, () => GgmlQuantizer.Quantize(type, x, q, 2));
            string refRate = "-", ggmlRate = "-";
            if (type is not (GgmlType.F16 or GgmlType.BF16))
            {
                // the scalar paths are slow: time a slice of 1M values
                int n = Math.Min(count, 1 << 20);
                var qs = new byte[GgmlTypeInfo.ByteSize(type, n)];
                refRate = Best(1, n, () => GgmlReferenceQuantizer.Quantize(type, x.AsSpan(0, n), qs)).ToString("F1");
                if (ggml != 0)
                {
                    var f = (delegate* unmanaged<float*, byte*, long, void>)NativeLibrary.GetExport(ggml, $"quantize_row_{GgmlName(type)}_ref");
                    var g = BestBoth(2, n, () =>
                    {
                        fixed (float* px = x)
                        fixed (byte* py = qs)
                            f(px, py, n);
                    });
                    ggmlRate = $"{g.Wall:F1} / {g.Cpu:F1}";
                }
            }
            double d1 = Best(reps, count, () => GgmlQuantizer.Dequantize(type, q, y, 1));
            double d2 = Best(reps, count, () => GgmlQuantizer.Dequantize(type, q, y, 2));
            Console.WriteLine($"| {type} | {q1.Wall:F1} / {q1.Cpu:F1} | {q2:F1} | {refRate} | {ggmlRate} | {d1:F1} | {d2:F1} |");
        }
        return 0;
    }

    private static string GgmlName(GgmlType t) => t switch
    {
        GgmlType.Q4_K => "q4_K", GgmlType.Q5_K => "q5_K", GgmlType.Q6_K => "q6_K",
        _ => t.ToString().ToLowerInvariant(),
    };

    /// <summary>M values per second of wall time, best of <paramref name="reps"/>.</summary>
    private static double Best(int reps, int values, Action action) => BestBoth(reps, values, action).Wall;

    /// <summary>Wall-clock and process-CPU-time rates (the latter stays meaningful on a shared, loaded machine).</summary>
    private static (double Wall, double Cpu) BestBoth(int reps, int values, Action action)
    {
        action(); // warm up (JIT tiers, page faults)
        double wall = double.MaxValue, cpu = double.MaxValue;
        var process = Process.GetCurrentProcess();
        for (int i = 0; i < reps; i++)
        {
            process.Refresh();
            var c0 = process.TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            action();
            wall = Math.Min(wall, sw.Elapsed.TotalSeconds);
            process.Refresh();
            cpu = Math.Min(cpu, (process.TotalProcessorTime - c0).TotalSeconds);
        }
        return (values / wall / 1e6, values / Math.Max(cpu, 1e-9) / 1e6);
    }
}
