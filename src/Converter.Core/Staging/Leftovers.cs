using Microsoft.Extensions.Logging;

namespace Converter.Staging;

/// <summary>A staging folder or file left beside a destination by a run that died (kill -9, power loss, an older version).</summary>
public sealed record Leftover(string Path, int Pid, long Bytes, bool IsDirectory);

/// <summary>
/// Finds what killed runs staged beside a destination (<see cref="StagingNames"/>): an entry is a leftover when the pid
/// in its name is not running, or when its lock file is not held (the pid was reused, or it is this process after a
/// test's simulated kill). Entries of live runs, this process's included, are left alone.
/// </summary>
public static class Leftovers
{
    public static List<Leftover> Find(string destination)
    {
        var dest = System.IO.Path.GetFullPath(System.IO.Path.TrimEndingDirectorySeparator(destination));
        var parent = System.IO.Path.GetDirectoryName(dest)!;
        var name = System.IO.Path.GetFileName(dest);
        var found = new List<Leftover>();
        if (!Directory.Exists(parent)) return found;
        foreach (var entry in Directory.EnumerateFileSystemEntries(parent))
        {
            var entryName = System.IO.Path.GetFileName(entry);
            if (StagingNames.OwnerPid(entryName, name) is not { } pid) continue;
            bool isDir = Directory.Exists(entry);
            var lockPath = isDir ? System.IO.Path.Combine(entry, StagingArea.LockName) : null;
            bool stale = pid == 0 || !IsRunning(pid) || (lockPath != null && File.Exists(lockPath) && !IsLockHeld(lockPath));
            if (stale) found.Add(new Leftover(entry, pid, SizeOf(entry), isDir));
        }
        return found;
    }

    /// <summary>Removes every leftover of <paramref name="destination"/> except <paramref name="keep"/>, logging each with the space freed.</summary>
    public static long RemoveAll(string destination, ILogger log, string? keep = null)
    {
        long freed = 0;
        foreach (var l in Find(destination))
        {
            if (keep != null && l.Path == keep) continue;
            try
            {
                if (l.IsDirectory) Directory.Delete(l.Path, true); else File.Delete(l.Path);
                freed += l.Bytes;
                log.LogInformation("removed {Path}, left by an interrupted run{Pid}: {Size} freed", l.Path,
                    l.Pid > 0 ? $" (pid {l.Pid})" : "", OsErrors.Size(l.Bytes));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                log.LogWarning("could not remove {Path}, left by an interrupted run: {Why}", l.Path, e.Message);
            }
        }
        return freed;
    }

    public static bool IsRunning(int pid)
    {
        if (pid == Environment.ProcessId) return true;
        if (OperatingSystem.IsLinux()) return Directory.Exists($"/proc/{pid}");
        try
        {
            using var p = System.Diagnostics.Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    /// <summary>True while another open handle (of any process, this one included) holds the lock file exclusively.</summary>
    public static bool IsLockHeld(string lockPath)
    {
        try
        {
            using var probe = new FileStream(lockPath, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
            return false;
        }
        catch (FileNotFoundException) { return false; }
        catch (DirectoryNotFoundException) { return false; }
        catch (IOException) { return true; }
        catch (UnauthorizedAccessException) { return true; } // not ours to judge
    }

    public static long SizeOf(string path)
    {
        try
        {
            if (File.Exists(path)) return new FileInfo(path).Length;
            long n = 0;
            foreach (var f in new DirectoryInfo(path).EnumerateFiles("*", SearchOption.AllDirectories)) n += f.Length;
            return n;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return 0; }
    }
}
