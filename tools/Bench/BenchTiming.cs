using System.Diagnostics;

namespace Converter.Tools.Bench;

/// <summary>Best-of-N timing of an in-process kernel, shared by the kernel benchmarks.</summary>
public static class BenchTiming
{
    /// <summary>Best wall time in seconds of <paramref name="reps"/> runs, with that run's process CPU time; with
    /// <paramref name="warm"/>, one untimed run first (JIT tiers, page faults on first touch).</summary>
    public static (double Wall, double Cpu) Best(int reps, Action action, bool warm = true)
    {
        if (warm) action();
        (double, double) best = (double.MaxValue, 0);
        var proc = Process.GetCurrentProcess();
        for (int i = 0; i < reps; i++)
        {
            proc.Refresh();
            var c0 = proc.TotalProcessorTime;
            long t0 = Stopwatch.GetTimestamp();
            action();
            double wall = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            proc.Refresh();
            if (wall < best.Item1) best = (wall, (proc.TotalProcessorTime - c0).TotalSeconds);
        }
        return best;
    }
}
