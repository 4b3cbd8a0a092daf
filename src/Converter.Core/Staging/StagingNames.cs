using System.Globalization;

namespace Converter.Staging;

/// <summary>
/// The one name every command gives what it stages beside a destination, <c>.&lt;name&gt;.converter-staging-&lt;pid&gt;-&lt;guid&gt;</c>,
/// and the names older versions used (<c>.&lt;name&gt;.tmp-&lt;pid&gt;[-&lt;guid&gt;]</c>, <c>&lt;name&gt;.work-&lt;pid&gt;</c>,
/// <c>&lt;name&gt;.partial-&lt;pid&gt;</c>, <c>.&lt;name&gt;.&lt;guid&gt;.tmp</c>), so the leftovers of killed runs can be recognised.
/// </summary>
public static class StagingNames
{
    public const string Marker = ".converter-staging-";

    public static string For(string destination) =>
        $".{Path.GetFileName(Path.TrimEndingDirectorySeparator(destination))}{Marker}{Environment.ProcessId}-{Guid.NewGuid():N}";

    /// <summary>The pid that staged <paramref name="entry"/> for <paramref name="destName"/>, or null when the name is not one of ours.</summary>
    public static int? OwnerPid(string entry, string destName)
    {
        foreach (var prefix in (string[])[$".{destName}{Marker}", $".{destName}.tmp-", $"{destName}.work-", $"{destName}.partial-"])
        {
            if (!entry.StartsWith(prefix, StringComparison.Ordinal)) continue;
            var rest = entry[prefix.Length..];
            int dash = rest.IndexOf('-');
            var pid = dash < 0 ? rest : rest[..dash];
            if (int.TryParse(pid, NumberStyles.None, CultureInfo.InvariantCulture, out int p) && p > 0) return p;
        }
        // GgufWriter's old temp file: .<name>.<32 hex>.tmp (no pid: a leftover only when its lock is free, see Leftovers)
        if (entry.Length == destName.Length + 38 && entry.StartsWith($".{destName}.", StringComparison.Ordinal) && entry.EndsWith(".tmp", StringComparison.Ordinal))
            return 0;
        return null;
    }
}
