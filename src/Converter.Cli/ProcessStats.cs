namespace Converter.Cli;

/// <summary>Peak resident set size of this process (Linux VmHWM), for the summary line of long commands.</summary>
public static class ProcessStats
{
    public static long? PeakRssBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line[6..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }

    public static string PeakRssText() => PeakRssBytes() is { } b ? $"{b / 1048576.0:F0} MiB" : "n/a";
}
