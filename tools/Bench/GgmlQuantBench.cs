using System.Diagnostics;
using System.Runtime.InteropServices;
using Converter.Numerics.Ggml;

namespace Converter.Tools.Bench;

/// <summary>
/// Throughput of the ggml quantizers (float32 rows to ggml blocks, and back) on N(0,1) values in rows of 7168
/// (DeepSeek-V3's hidden size), on 1 and 2 threads, without and with an importance row (random weights, as
/// llama-quantize --imatrix passes), with the scalar reference quantizer on one thread for comparison and, given
/// the path of a libggml-base.so (e.g. tests/interop/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so),
/// ggml's own ggml_quantize_chunk (what llama-quantize calls) without and with the same importance, same run, same values.
/// Usage: GgmlQuantBench [million values, default 16] [repetitions, default 3] [--ggml path/to/libggml-base.so] [--types Q4_K,Q2_K,...]
/// </summary>
public static unsafe class GgmlQuantBench
{
    public static int Run(string[] args)
    {
        int typesAt = Array.IndexOf(args, "--types");
        string? typeList = typesAt >= 0 && typesAt + 1 < args.Length ? args[typesAt + 1] : null;
        if (typesAt >= 0) args = [.. args[..typesAt], .. args[Math.Min(args.Length, typesAt + 2)..]];
        int ggmlAt = Array.IndexOf(args, "--ggml");
        string? ggmlPath = ggmlAt >= 0 && ggmlAt + 1 < args.Length ? args[ggmlAt + 1] : null;
        if (ggmlAt >= 0) args = [.. args[..ggmlAt], .. args[Math.Min(args.Length, ggmlAt + 2)..]];
        int millions = args.Length > 0 && int.TryParse(args[0], out int m) && m > 0 ? m : 16;
        int reps = args.Length > 1 && int.TryParse(args[1], out int r) && r > 0 ? r : 3;
        nint ggml = ggmlPath != null ? NativeLibrary.Load(ggmlPath) : 0;
        const int cols = 7168;
        int count = millions * 1024 * 1024 / cols * cols;

        var rng = new Random(42);
        var x = new float[count];
        for (int i = 0; i < count; i++)
            x[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        var y = new float[count];
        var importance = new float[cols];
        for (int i = 0; i < cols; i++) importance[i] = (float)Math.Pow(10, rng.NextDouble() * 4 - 2);

        GgmlType[] types = typeList != null
            ? [.. typeList.Split(',').Select(t => Enum.Parse<GgmlType>(t, ignoreCase: true))]
            : [GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q2_K, GgmlType.Q3_K,
               GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_NL, GgmlType.IQ4_XS, GgmlType.F16, GgmlType.BF16];
        Console.WriteLine($"ggml quantizers, {count / 1e6:F1}M N(0,1) values in rows of {cols}, best of {reps}, {Environment.ProcessorCount} cores");
        Console.WriteLine();
        Console.WriteLine("M values/s; \"a / b\": a per wall-clock second, b per CPU second of this process (robust to other load);");
        Console.WriteLine("\"imatrix\": with one importance weight per column; ggml: ggml_quantize_chunk, 1 thread, on the first 1M values");
        Console.WriteLine();
        Console.WriteLine("| type | quantize 1 thread | quantize 2 threads | C# scalar reference 1 thread | ggml 1 thread | imatrix 1 thread | imatrix 2 threads | ggml imatrix 1 thread | dequantize 1 thread | dequantize 2 threads |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var type in types)
        {
            var q = new byte[GgmlTypeInfo.ByteSize(type, count)];
            var q1 = BestBoth(reps, count, () => GgmlQuantizer.Quantize(type, x, q, 1));
            double q2 = Best(reps, count, () => GgmlQuantizer.Quantize(type, x, q, 2));
            string refRate = "-", ggmlRate = "-", imRate1 = "-", imRate2 = "-", ggmlImRate = "-";
            if (type is not (GgmlType.F16 or GgmlType.BF16))
            {
                // the scalar paths are slow: time a slice of about 1M values (whole rows)
                int n = Math.Min(count, (1 << 20) / cols * cols);
                var qs = new byte[GgmlTypeInfo.ByteSize(type, n)];
                refRate = Best(1, n, () => GgmlReferenceQuantizer.Quantize(type, x.AsSpan(0, n), qs)).ToString("F1");
                if (GgmlQuantizer.UsesImportance(type))
                {
                    var i1 = BestBoth(reps, count, () => GgmlQuantizer.Quantize(type, x, q, importance, 1));
                    imRate1 = $"{i1.Wall:F1} / {i1.Cpu:F1}";
                    imRate2 = Best(reps, count, () => GgmlQuantizer.Quantize(type, x, q, importance, 2)).ToString("F1");
                }
                if (ggml != 0)
                {
                    var chunk = (delegate* unmanaged<int, float*, byte*, long, long, long, float*, nuint>)NativeLibrary.GetExport(ggml, "ggml_quantize_chunk");
                    (double Wall, double Cpu) Ggml(bool withImportance) => BestBoth(2, n, () =>
                    {
                        fixed (float* px = x)
                        fixed (byte* py = qs)
                        fixed (float* pw = importance)
                            chunk((int)type, px, py, 0, n / cols, cols, withImportance ? pw : null);
                    });
                    var g = Ggml(false);
                    ggmlRate = $"{g.Wall:F1} / {g.Cpu:F1}";
                    if (GgmlQuantizer.UsesImportance(type))
                    {
                        var gi = Ggml(true);
                        ggmlImRate = $"{gi.Wall:F1} / {gi.Cpu:F1}";
                    }
                }
            }
            double d1 = Best(reps, count, () => GgmlQuantizer.Dequantize(type, q, y, 1));
            double d2 = Best(reps, count, () => GgmlQuantizer.Dequantize(type, q, y, 2));
            Console.WriteLine($"| {type} | {q1.Wall:F1} / {q1.Cpu:F1} | {q2:F1} | {refRate} | {ggmlRate} | {imRate1} | {imRate2} | {ggmlImRate} | {d1:F1} | {d2:F1} |");
        }
        return 0;
    }

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
