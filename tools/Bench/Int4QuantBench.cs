using Converter.Numerics;
using Converter.Numerics.Int4;

namespace Converter.Tools.Bench;

/// <summary>
/// INT4 group quantization throughput on one expert-shaped weight (default [2048, 7168], DeepSeek-V3's
/// gate_proj/up_proj): RTN with the MSE clipping search, and GPTQ (Hessian factorization timed apart from the
/// column sweep, since gate_proj and up_proj share one factor), 1 and 2 threads.
/// Usage: Int4QuantBench [--rows N] [--cols K] [--group G] [--reps R] [--no-gptq]
/// </summary>
public static class Int4QuantBench
{
    public static int Run(string[] args)
    {
        int rows = 2048, cols = 7168, group = 32, reps = 2;
        bool gptq = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--rows": rows = int.Parse(args[++i]); break;
                case "--cols": cols = int.Parse(args[++i]); break;
                case "--group": group = int.Parse(args[++i]); break;
                case "--reps": reps = int.Parse(args[++i]); break;
                case "--no-gptq": gptq = false; break;
                default:
                    Console.WriteLine("int4-quant [--rows N] [--cols K] [--group 32|64|128] [--reps R] [--no-gptq]");
                    return args[i] is "--help" or "-h" ? 0 : 2;
            }
        }
        var rng = new Random(42);
        double G() => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
        var w = new float[(long)rows * cols];
        for (long i = 0; i < w.Length; i++) w[i] = Bf16.ToSingle(Bf16.FromSingle((float)(0.02 * G())));
        // A full-rank, correlated Hessian: diagonal energies spread over two decades plus a rank-64 component.
        var h = new double[(long)cols * cols];
        const int rank = 64;
        var f = new double[rank * cols];
        for (int i = 0; i < f.Length; i++) f[i] = G();
        Parallel.For(0, cols, i =>
        {
            for (int j = 0; j <= i; j++)
            {
                double s = 0;
                for (int r = 0; r < rank; r++) s += f[r * cols + i] * f[r * cols + j];
                h[(long)i * cols + j] = h[(long)j * cols + i] = s / rank;
            }
            h[(long)i * cols + i] += Math.Exp(2 * G());
        });
        var scheme = new Int4Scheme(group, true);
        double mw = (double)rows * cols / 1e6;
        Console.WriteLine($"INT4 g{group} symmetric, weight [{rows}, {cols}], best of {reps}, {Environment.ProcessorCount} logical cores");
        Console.WriteLine();
        Console.WriteLine("Wall seconds, with the process CPU seconds of the same run: on a shared machine wall > CPU / threads shows contention.");
        Console.WriteLine();
        Console.WriteLine("| method | threads | wall s | CPU s | M weights/s (wall) |");
        Console.WriteLine("|---|---:|---:|---:|---:|");
        foreach (int threads in new[] { 1, 2 })
        {
            var (s, c) = BenchTiming.Best(reps, () => Int4GroupQuantizer.Quantize(w, rows, cols, scheme, Int4ClipSearch.Default, threads));
            Console.WriteLine($"| rtn, MSE clip search (30 steps) | {threads} | {s:F3} | {c:F3} | {mw / s:F1} |");
            (s, c) = BenchTiming.Best(reps, () => Int4GroupQuantizer.Quantize(w, rows, cols, scheme, Int4ClipSearch.None, threads));
            Console.WriteLine($"| rtn, min-max | {threads} | {s:F3} | {c:F3} | {mw / s:F1} |");
        }
        if (gptq)
        {
            var opts = new GptqOptions();
            foreach (int threads in new[] { 1, 2 })
            {
                GptqFactor? factor = null;
                var (sf, cf) = BenchTiming.Best(1, () => factor = GptqFactor.Create(h, cols, opts, threads), warm: false);
                Console.WriteLine($"| gptq Hessian factor [{cols}, {cols}] (once per expert input) | {threads} | {sf:F2} | {cf:F2} | - |");
                var (sq, cq) = BenchTiming.Best(1, () => Gptq.Quantize(w, rows, cols, factor!, scheme, opts, threads), warm: false);
                Console.WriteLine($"| gptq column sweep (block 128) | {threads} | {sq:F2} | {cq:F2} | {mw / sq:F2} |");
                Console.WriteLine($"| gptq total, one weight | {threads} | {sf + sq:F2} | {cf + cq:F2} | {mw / (sf + sq):F2} |");
            }
        }
        return 0;
    }
}
