using System.Globalization;

namespace Converter.Staging;

/// <summary>Errors the operating system reports while writing, in words: disk full, read-only file system, permission denied.</summary>
public static class OsErrors
{
    public const int ENOSPC = 28, EROFS = 30, EACCES = 13, EPERM = 1, EDQUOT = 122;

    /// <summary>The errno an IOException carries (the runtime and this project's syscalls put it in HResult), or 0.</summary>
    public static int Errno(Exception e)
    {
        if (e is UnauthorizedAccessException) return EACCES;
        if (e is not IOException || e is FileNotFoundException or DirectoryNotFoundException) return 0;
        int h = e.HResult;
        if (h is > 0 and < 4096) return h;
        // the runtime's messages where it maps the errno to an HResult of its own
        var m = e.Message;
        if (m.Contains("No space left on device", StringComparison.OrdinalIgnoreCase) || m.Contains("disk is full", StringComparison.OrdinalIgnoreCase)) return ENOSPC;
        if (m.Contains("Read-only file system", StringComparison.OrdinalIgnoreCase)) return EROFS;
        return 0;
    }

    public static bool IsDiskFull(Exception e) => Errno(e) is ENOSPC or EDQUOT;

    /// <summary>"1.2 GB", "340 MB", "12 KB": sizes in messages.</summary>
    public static string Size(long bytes) => bytes switch
    {
        >= 1_000_000_000 => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1e9:F1} GB"),
        >= 1_000_000 => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1e6:F1} MB"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{Math.Max(1, (bytes + 999) / 1000)} KB"),
    };

    /// <summary>The mount point that holds <paramref name="path"/> (the longest /proc/mounts entry above it), or its root elsewhere.</summary>
    public static string MountOf(string path)
    {
        var full = Path.GetFullPath(path);
        string best = Path.GetPathRoot(full) ?? "/";
        try
        {
            if (!File.Exists("/proc/mounts")) return best;
            foreach (var line in File.ReadLines("/proc/mounts"))
            {
                var parts = line.Split(' ');
                if (parts.Length < 2) continue;
                var mount = parts[1].Replace("\\040", " ", StringComparison.Ordinal);
                bool under = full == mount || full.StartsWith(mount.EndsWith('/') ? mount : mount + "/", StringComparison.Ordinal);
                if (under && mount.Length > best.Length) best = mount;
            }
        }
        catch (IOException) { }
        return best;
    }

    /// <summary>Bytes free to this user on the file system of <paramref name="path"/> (its nearest existing folder), or -1 when unknown.</summary>
    public static long FreeBytes(string path)
    {
        try
        {
            var dir = Path.GetFullPath(path);
            while (!Directory.Exists(dir)) dir = Path.GetDirectoryName(dir) ?? "/";
            return new DriveInfo(dir).AvailableFreeSpace;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException) { return -1; }
    }

    /// <summary>
    /// The exception to report for <paramref name="e"/> raised while writing <paramref name="path"/>: an IOException whose
    /// message says in words what the system refused (and for a full disk how much more the output needs), or null
    /// when <paramref name="e"/> is no such error.
    /// </summary>
    public static IOException? Describe(Exception e, string path, long neededMore)
    {
        if (e is DiskFullException) return null;
        int errno = Errno(e);
        string? message = errno switch
        {
            ENOSPC or EDQUOT => $"no space left on device on {MountOf(path)}" + (errno == EDQUOT ? " (disk quota exceeded)" : "") +
                                (neededMore > 0 ? $": needs about {Size(neededMore)} more" : "") + $" (writing {path})",
            EROFS => $"{path}: read-only file system ({MountOf(path)}): cannot write the output there",
            EACCES or EPERM => $"{path}: permission denied: cannot write the output there",
            _ => null,
        };
        if (message == null) return null;
        return errno is ENOSPC or EDQUOT ? new DiskFullException(message, e) : new IOException(message, e) { HResult = errno };
    }
}
