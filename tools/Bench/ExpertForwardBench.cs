using Converter.Calibration;

namespace Converter.Tools.Bench;

/// <summary>
/// Calibration's float32 expert forward (gate/up, SwiGLU, down) at DeepSeek-V3 width (hidden 7168, expert 2048): the
/// blocked kernel against one dot product per output row by row (what it replaced), 1 and 2 threads.
/// Usage: expert-forward [rows] [repetitions]
/// </summary>
public static class ExpertForwardBench
{
    public static int Run(string[] args)
    {
        int rows = args.Length > 0 && int.TryParse(args[0], out int r) && r > 0 ? r : 256;
        int reps = args.Length > 1 && int.TryParse(args[1], out int n) && n > 0 ? n : 3;
        const int h = 7168, i = 2048;
        var rng = new Random(7);
        float[] Rand(long count, float scale) { var a = new float[count]; for (long k = 0; k < count; k++) a[k] = (float)(rng.NextDouble() * 2 - 1) * scale; return a; }
        var gate = Rand((long)h * i, 0.02f);
        var up = Rand((long)h * i, 0.02f);
        var down = Rand((long)h * i, 0.02f);
        var x = Rand((long)rows * h, 1f);
        var act = new float[rows * i];
        var y = new float[rows * h];
        double gflop = 3.0 * 2 * h * i * rows / 1e9;
        Console.WriteLine($"expert forward, hidden {h}, intermediate {i}, {rows} rows ({gflop:F1} GFLOP), best of {reps}, {Environment.ProcessorCount} logical cores");
        Console.WriteLine();
        Console.WriteLine("| kernel | threads | s | GFLOP/s | rows/s |");
        Console.WriteLine("|---|---:|---:|---:|---:|");
        foreach (int threads in new[] { 1, 2 })
        {
            var fwd = new ExpertForward(gate, up, down, h, i) { MaxThreads = threads };
            double rowByRow = BenchTiming.Best(reps, () => RowByRow(gate, up, down, x, rows, h, i, act, y, threads), warm: false).Wall;
            double blocked = BenchTiming.Best(reps, () => fwd.Run(x, rows, act, y), warm: false).Wall;
            Console.WriteLine($"| one dot per output, row by row | {threads} | {rowByRow:F2} | {gflop / rowByRow:F1} | {rows / rowByRow:F0} |");
            Console.WriteLine($"| blocked, 16 rows per weight pass (ExpertForward.Run) | {threads} | {blocked:F2} | {gflop / blocked:F1} | {rows / blocked:F0} |");
        }
        // The Hessian of the expert's gate/up input: sum of x x^T over the rows, float64, lower triangle.
        double hflop = (double)h * (h + 1) / 2 * 2 * rows / 1e9;
        foreach (int threads in new[] { 1, 2 })
        {
            double s = BenchTiming.Best(reps, () => new HessianAccumulator(h) { MaxThreads = threads }.Add(x, rows), warm: false).Wall;
            Console.WriteLine($"| Hessian X^T X [{h}, {h}] float64 (HessianAccumulator.Add, {hflop:F1} GFLOP) | {threads} | {s:F2} | {hflop / s:F1} | {rows / s:F0} |");
        }
        return 0;
    }

    private static void RowByRow(float[] gate, float[] up, float[] down, float[] x, int rows, int h, int i, float[] act, float[] y, int threads) =>
        Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = threads }, r =>
        {
            var xr = x.AsSpan(r * h, h);
            var ar = act.AsSpan(r * i, i);
            for (int o = 0; o < i; o++)
            {
                float g = ExpertForward.Dot(xr, gate.AsSpan(o * h, h)), u = ExpertForward.Dot(xr, up.AsSpan(o * h, h));
                ar[o] = g / (1f + MathF.Exp(-g)) * u;
            }
            for (int o = 0; o < h; o++) y[r * h + o] = ExpertForward.Dot(ar, down.AsSpan(o * i, i));
        });
}
