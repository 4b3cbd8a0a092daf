using System.Text.Json;
using System.Text.Json.Nodes;

namespace Converter.Staging;

/// <summary>One file of an artifact as its manifest lists it (path relative to the artifact folder, '/'-separated).</summary>
public sealed record ManifestEntry(string Path, long Size, string Hash);

/// <summary>The outcome of <see cref="ArtifactManifest.Check"/>: what differs, and how much was compared.</summary>
public sealed record ManifestCheck(IReadOnlyList<string> Problems, int Files, long Bytes)
{
    public bool Ok => Problems.Count == 0;
}

/// <summary>
/// <c>manifest.json</c>: every file of an artifact with its size and XXH3-64 (<see cref="ContentHash"/>), written by the
/// command that made it, checked by <c>converter check</c>. A folder artifact holds it (it does not list itself); a
/// single-file artifact (<c>x.gguf</c>) has it beside, as <c>x.gguf.manifest.json</c>.
/// </summary>
public static class ArtifactManifest
{
    public const string FileName = "manifest.json";
    public const string SideSuffix = ".manifest.json";
    public const int Version = 1;

    /// <summary>Where the manifest of <paramref name="artifact"/> (a folder or a file) lives.</summary>
    public static string PathFor(string artifact) =>
        Directory.Exists(artifact) ? Path.Combine(artifact, FileName) : artifact + SideSuffix;

    /// <summary>Hashes every file under <paramref name="root"/> (or the one file) except those in <paramref name="known"/>, whose hash is already known.</summary>
    public static List<ManifestEntry> Collect(string root, IReadOnlyDictionary<string, ManifestEntry>? known = null, CancellationToken cancellation = default)
    {
        var entries = new List<ManifestEntry>();
        if (File.Exists(root))
        {
            entries.Add(new ManifestEntry(Path.GetFileName(root), new FileInfo(root).Length, ContentHash.OfFile(root, cancellation)));
            return entries;
        }
        var files = Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(root, f).Replace('\\', '/'))
            .Where(f => f != FileName).Order(StringComparer.Ordinal);
        foreach (var rel in files)
        {
            long size = new FileInfo(Path.Combine(root, rel)).Length;
            entries.Add(known != null && known.TryGetValue(rel, out var k) && k.Size == size
                ? k : new ManifestEntry(rel, size, ContentHash.OfFile(Path.Combine(root, rel), cancellation)));
        }
        return entries;
    }

    public static void Write(string manifestPath, string command, IReadOnlyList<ManifestEntry> entries)
    {
        var files = new JsonArray();
        foreach (var e in entries) files.Add(new JsonObject { ["path"] = e.Path, ["size"] = e.Size, ["hash"] = e.Hash });
        var doc = new JsonObject
        {
            ["manifest_version"] = Version,
            ["written_by"] = $"converter {command}",
            ["hash"] = ContentHash.Algorithm,
            ["total_size"] = entries.Sum(e => e.Size),
            ["files"] = files,
        };
        File.WriteAllText(manifestPath, doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>Reads a manifest; a missing, unreadable or malformed one is bad input (InvalidDataException / FileNotFoundException naming it).</summary>
    public static IReadOnlyList<ManifestEntry> Read(string manifestPath)
    {
        if (!File.Exists(manifestPath)) throw new FileNotFoundException($"{manifestPath}: no manifest (written by converter 0.x and later beside every artifact)", manifestPath);
        JsonNode? doc;
        try { doc = JsonNode.Parse(File.ReadAllText(manifestPath)); }
        catch (JsonException e) { throw new InvalidDataException($"{manifestPath}: not valid JSON: {e.Message}"); }
        IReadOnlyList<ManifestEntry> Bad(string what) => throw new InvalidDataException($"{manifestPath}: {what}");
        if (doc is not JsonObject o) return Bad("not a JSON object");
        if (o["manifest_version"] is not JsonValue v || !v.TryGetValue(out int version) || version != Version) return Bad($"manifest_version is not {Version}");
        if (o["hash"]?.GetValueKind() != JsonValueKind.String || o["hash"]!.GetValue<string>() != ContentHash.Algorithm)
            return Bad($"hash is not \"{ContentHash.Algorithm}\"");
        if (o["files"] is not JsonArray files) return Bad("'files' is not an array");
        var entries = new List<ManifestEntry>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < files.Count; i++)
        {
            if (files[i] is not JsonObject f || f["path"] is not JsonValue p || !p.TryGetValue(out string? path) || string.IsNullOrEmpty(path)
                || f["size"] is not JsonValue s || !s.TryGetValue(out long size) || size < 0
                || f["hash"] is not JsonValue h || !h.TryGetValue(out string? hash) || hash.Length != 16)
                return Bad($"files[{i}] needs a path, a size >= 0 and a 16-digit hash");
            if (path.StartsWith('/') || path.Split('/').Contains("..")) return Bad($"files[{i}]: path '{path}' leaves the artifact folder");
            if (!seen.Add(path)) return Bad($"files[{i}]: '{path}' listed twice");
            entries.Add(new ManifestEntry(path, size, hash));
        }
        return entries;
    }

    /// <summary>
    /// Checks <paramref name="artifact"/> (a folder, a file with a side manifest, or a manifest path) against its manifest:
    /// every listed file present with its size and hash, no unlisted file in a folder.
    /// </summary>
    public static ManifestCheck Check(string artifact, CancellationToken cancellation = default)
    {
        string manifest, root;
        if (artifact.EndsWith(SideSuffix, StringComparison.Ordinal) && File.Exists(artifact)) (manifest, root) = (artifact, artifact[..^SideSuffix.Length]);
        else if (Path.GetFileName(artifact) == FileName && File.Exists(artifact)) (manifest, root) = (artifact, Path.GetDirectoryName(Path.GetFullPath(artifact))!);
        else if (Directory.Exists(artifact) || File.Exists(artifact)) (manifest, root) = (PathFor(artifact), artifact);
        else throw new FileNotFoundException($"{artifact}: no such file or folder", artifact);
        var entries = Read(manifest);
        bool folder = Directory.Exists(root);
        var problems = new List<string>();
        long bytes = 0;
        foreach (var e in entries)
        {
            var path = folder ? Path.Combine(root, e.Path) : (e.Path == Path.GetFileName(root) ? root : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(root))!, e.Path));
            if (!File.Exists(path)) { problems.Add($"{e.Path}: missing"); continue; }
            long size = new FileInfo(path).Length;
            if (size != e.Size) { problems.Add($"{e.Path}: {size:N0} bytes, the manifest says {e.Size:N0}"); continue; }
            var hash = ContentHash.OfFile(path, cancellation);
            bytes += size;
            if (hash != e.Hash) problems.Add($"{e.Path}: content differs ({ContentHash.Algorithm} {hash}, the manifest says {e.Hash})");
        }
        if (folder)
        {
            var listed = entries.Select(e => e.Path).ToHashSet(StringComparer.Ordinal);
            foreach (var f in Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories))
            {
                var rel = Path.GetRelativePath(root, f).Replace('\\', '/');
                if (rel != FileName && !listed.Contains(rel)) problems.Add($"{rel}: not in the manifest");
            }
        }
        return new ManifestCheck(problems, entries.Count, bytes);
    }
}
