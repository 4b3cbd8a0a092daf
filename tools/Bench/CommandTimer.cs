using System.Diagnostics;

namespace Converter.Tools.Bench;

/// <summary>Runs a child process, timing it and polling its peak resident set (VmHWM) until it exits.</summary>
public static class CommandTimer
{
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

    /// <summary>Reads every file under a folder once so later runs see a warm page cache.</summary>
    public static long Warm(string dir)
    {
        long total = 0;
        var buf = new byte[1 << 22];
        foreach (var f in Directory.EnumerateFiles(dir))
        {
            using var fs = File.OpenRead(f);
            int n;
            while ((n = fs.Read(buf)) > 0) total += n;
        }
        return total;
    }

    public static long FolderBytes(string dir) => Directory.EnumerateFiles(dir).Sum(f => new FileInfo(f).Length);
}
