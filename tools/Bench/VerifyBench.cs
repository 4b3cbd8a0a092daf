using System.Diagnostics;
using Converter.Verification;

namespace Converter.Tools.Bench;

/// <summary>
/// Golden comparison throughput (logits compared per second) on synthetic goldens, vectorised parallel kernel vs
/// the scalar reference, and what one comparison allocates. Usage: VerifyBench [vocab ...].
/// </summary>
public static class VerifyBench
{
    public static int Run(string[] args)
    {
        var vocabs = args.Length > 0 ? args.Select(int.Parse).ToArray() : [256, 32768, 129280];
        Console.WriteLine($"| batch x seq | vocab | compare (ms) | M logits/s | kernel 1 thread (ms) | scalar 1 thread (ms) | allocated (KiB) |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        foreach (int v in vocabs)
        {
            int b = v > 32768 ? 2 : 8, s = 128, n = b * s;
            var rng = new Random(1);
            var g = new float[(long)n * v];
            var a = new float[g.Length];
            for (int i = 0; i < g.Length; i++)
            {
                g[i] = (float)(rng.NextDouble() * 20 - 10);
                a[i] = g[i] + (float)(rng.NextDouble() - 0.5) * 1e-3f;
            }
            var tokens = new int[n];
            for (int i = 0; i < n; i++) tokens[i] = rng.Next(v);
            var golden = GoldenSet.FromArrays("synthetic", b, s, v, tokens, g, new float[b * (s - 1)]);
            var outputs = new ArtifactOutputs(a, null, null);
            var tol = VerificationTolerances.ReportOnly;

            GoldenComparer.Compare(golden, outputs, tol); // warm-up
            long alloc0 = GC.GetTotalAllocatedBytes(true);
            var sw = Stopwatch.StartNew();
            const int reps = 3;
            for (int r = 0; r < reps; r++) GoldenComparer.Compare(golden, outputs, tol);
            double ms = sw.Elapsed.TotalMilliseconds / reps;
            long alloc = (GC.GetTotalAllocatedBytes(true) - alloc0) / reps;

            sw.Restart();
            double sink = 0;
            for (int p = 0; p < n; p++) sink += PositionMetrics.Compute(g.AsSpan(p * v, v), a.AsSpan(p * v, v), -1).Kl;
            double kernelMs = sw.Elapsed.TotalMilliseconds;
            sw.Restart();
            for (int p = 0; p < n; p++) sink += PositionMetrics.ComputeScalar(g.AsSpan(p * v, v), a.AsSpan(p * v, v), -1).Kl;
            double scalarMs = sw.Elapsed.TotalMilliseconds;
            if (double.IsNaN(sink)) Console.WriteLine("NaN");

            Console.WriteLine($"| {b} x {s} | {v} | {ms:F1} | {(double)n * v / ms / 1e3:F0} | {kernelMs:F1} | {scalarMs:F1} | {alloc / 1024.0:F0} |");
        }
        return 0;
    }
}
