using System.Diagnostics;

namespace Converter.Tools.Bench;

/// <summary>Runs a child process, timing it and polling its peak resident set (VmHWM) until it exits.</summary>
public static class CommandTimer
{
    /// <summary>The converter executable built beside the benchmarks (tools/Bench references the CLI project).</summary>
    public static string ConverterPath => Path.Combine(AppContext.BaseDirectory, "converter");

    public sealed record Measurement(double Seconds, long PeakRssBytes, int ExitCode, string StdErr);

    public static Measurement Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var outp = p.StandardOutput.ReadToEndAsync();
        long peak = 0;
        while (!p.WaitForExit(20))
            peak = Math.Max(peak, Converter.Cli.ProcessStats.PeakRssBytes(p.Id) ?? 0);
        double secs = clock.Elapsed.TotalSeconds;
        return new Measurement(secs, peak, p.ExitCode, err.Result + outp.Result);
    }

    /// <summary>Reads every file under a folder (and its subfolders) once so later runs see a warm page cache.</summary>
    public static long Warm(string dir)
    {
        long total = 0;
        var buf = new byte[1 << 22];
        foreach (var f in Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories))
        {
            using var fs = File.OpenRead(f);
            int n;
            while ((n = fs.Read(buf)) > 0) total += n;
        }
        return total;
    }

    public static long FolderBytes(string dir) => Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);

    public sealed record VersusCp(double Seconds, double CpSeconds, long PeakRssBytes, long OutputBytes);

    /// <summary>
    /// Best of <paramref name="runs"/> of a command that writes the folder <paramref name="output"/>, and of `cp -r`
    /// of that output. Both sides start alike: their previous output deleted (its page cache freed rather than left
    /// for the run to reclaim) and `sync` first, so neither inherits the other's writeback. The output is kept.
    /// </summary>
    public static VersusCp AgainstCp(string file, IReadOnlyList<string> args, string output, int runs)
    {
        string copy = output + "-cp";
        double best = double.MaxValue, bestCp = double.MaxValue;
        long rss = 0;
        for (int r = 0; r < runs; r++)
        {
            if (Directory.Exists(output)) Directory.Delete(output, true);
            Run("sync");
            var m = Run(file, [.. args]);
            if (m.ExitCode != 0) throw new InvalidOperationException($"{Path.GetFileName(file)} failed ({m.ExitCode}): {m.StdErr}");
            best = Math.Min(best, m.Seconds);
            rss = Math.Max(rss, m.PeakRssBytes);
            Warm(output);
            if (Directory.Exists(copy)) Directory.Delete(copy, true);
            Run("sync");
            bestCp = Math.Min(bestCp, Run("cp", "-r", output, copy).Seconds);
            Directory.Delete(copy, true);
        }
        return new VersusCp(best, bestCp, rss, FolderBytes(output));
    }
}
