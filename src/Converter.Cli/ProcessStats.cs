namespace Converter.Cli;

/// <summary>Peak resident set size (Linux VmHWM) of this process or of a child, for summaries and benchmarks.</summary>
public static class ProcessStats
{
    public static long? PeakRssBytes() => PeakRssBytes("self");

    /// <summary>VmHWM of process <paramref name="pid"/>, or null where /proc cannot tell (gone, not Linux).</summary>
    public static long? PeakRssBytes(int pid) => PeakRssBytes(pid.ToString(System.Globalization.CultureInfo.InvariantCulture));

    private static long? PeakRssBytes(string proc)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{proc}/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line[6..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }

    public static string PeakRssText() => PeakRssBytes() is { } b ? $"{b / 1048576.0:F0} MiB" : "n/a";
}
