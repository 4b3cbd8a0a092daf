using System.Text;
using Microsoft.Extensions.Logging;

namespace Converter.Staging;

/// <param name="Command">What writes the artifact (for the manifest's <c>written_by</c>): quantize, export gguf, ...</param>
/// <param name="IsFile">The destination is one file (a .gguf, a golden) rather than a folder.</param>
public sealed record StagingOptions(string Command, bool IsFile = false, bool Overwrite = false)
{
    /// <summary>Continue an interrupted run's staging folder whose journal has the same <see cref="Fingerprint"/>.</summary>
    public bool Resume { get; init; }
    /// <summary>Identifies the inputs and options (see <see cref="RunFingerprint"/>); a resume needs it to match.</summary>
    public string Fingerprint { get; init; } = "";
    /// <summary>An existing empty destination folder is not in the way (export onnx's rule).</summary>
    public bool AcceptEmptyFolder { get; init; }
    public TestFault? Fault { get; init; }
}

/// <summary>
/// Where a command builds its artifact: the hidden folder <c>.&lt;name&gt;.converter-staging-&lt;pid&gt;-&lt;guid&gt;</c> beside the
/// destination, holding a <c>lock</c> file (its pid, held open exclusively while the run lives), the resume journal,
/// scratch folders and the artifact itself (<see cref="Output"/>), which <see cref="Commit"/> hashes into its manifest and
/// renames into place. Disposing without committing (an error, a cancellation) removes everything; what a killed run
/// leaves is removed by the next run to the same destination (<see cref="Leftovers"/>), or continued with
/// <see cref="StagingOptions.Resume"/>. Every command that writes stages through this class.
/// </summary>
public sealed class StagingArea : IDisposable
{
    public const string LockName = "lock";
    private readonly StagingOptions _o;
    private readonly ILogger _log;
    private FileStream? _lock;
    private readonly long _freeAtStart;
    private int _steps;
    private bool _committed, _abandoned;

    public string Destination { get; }
    public string Root { get; }
    /// <summary>The artifact being built (a folder or a file, not created here): writers write it in place.</summary>
    public string Output { get; }
    public ResumeJournal Journal { get; }
    /// <summary>True when this run continues an interrupted one (its journal's units are done).</summary>
    public bool Resumed { get; }
    public long PlannedBytes { get; private set; }

    private StagingArea(string destination, string root, StagingOptions o, ILogger log, bool resumed)
    {
        Destination = destination;
        Root = root;
        _o = o;
        _log = log;
        Output = Path.Combine(root, Path.GetFileName(destination));
        Resumed = resumed;
        try
        {
            if (!resumed) Directory.CreateDirectory(root);
            _lock = new FileStream(Path.Combine(root, LockName), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            _lock.SetLength(0);
            _lock.Write(Encoding.ASCII.GetBytes($"{Environment.ProcessId}\n"));
            _lock.Flush();
            Journal = resumed ? ResumeJournal.Open(root) : ResumeJournal.Create(root, o.Fingerprint);
        }
        catch
        {
            _lock?.Dispose();
            TryDelete(root);
            throw;
        }
        _freeAtStart = OsErrors.FreeBytes(root);
    }

    /// <summary>
    /// Checks the destination is free (or may be replaced), removes or adopts what killed runs left for it, and creates
    /// the staging folder. Fails before any work when the output exists without overwrite, or its folder is read-only.
    /// </summary>
    public static StagingArea Begin(string destination, StagingOptions o, ILogger log)
    {
        var dest = Path.GetFullPath(Path.TrimEndingDirectorySeparator(destination));
        CheckDestination(dest, o);
        var parent = Path.GetDirectoryName(dest)!;
        try
        {
            Directory.CreateDirectory(parent);
            string? adopt = null;
            if (o.Resume)
            {
                var journaled = Leftovers.Find(dest).Where(l => l.IsDirectory && ResumeJournal.ReadFingerprint(l.Path) != null)
                    .OrderByDescending(l => Directory.GetLastWriteTimeUtc(l.Path)).ToList();
                adopt = journaled.FirstOrDefault(l => ResumeJournal.ReadFingerprint(l.Path) == o.Fingerprint)?.Path;
                if (adopt == null && journaled.Count > 0)
                    throw new ArgumentException($"{dest}: cannot resume: the interrupted run ({journaled[0].Path}) had other inputs or options; " +
                                                "run again with the same ones, or without --resume to start over");
                if (adopt == null) log.LogInformation("nothing to resume for {Dest}: starting from the beginning", dest);
            }
            Leftovers.RemoveAll(dest, log, keep: adopt);
            var root = Path.Combine(parent, StagingNames.For(dest));
            if (adopt != null)
            {
                Directory.Move(adopt, root);
                log.LogInformation("resuming the interrupted run staged in {Path}", adopt);
            }
            return new StagingArea(dest, root, o, log, adopt != null);
        }
        catch (Exception e) when (OsErrors.Describe(e, dest, 0) is { } words) { throw words; }
    }

    private static void CheckDestination(string dest, StagingOptions o)
    {
        if (o.IsFile)
        {
            if (Directory.Exists(dest)) throw new IOException($"{dest}: is a folder; the output is a file (give a file name)");
            if (File.Exists(dest) && !o.Overwrite) throw new IOException($"{dest}: already exists (use --overwrite to replace it)");
            return;
        }
        if (File.Exists(dest)) throw new IOException($"{dest}: a file is in the way of the output folder");
        if (Directory.Exists(dest) && !o.Overwrite && !(o.AcceptEmptyFolder && !Directory.EnumerateFileSystemEntries(dest).Any()))
            throw new IOException($"{dest}: output folder already exists (use --overwrite to replace it)");
    }

    /// <summary>A scratch folder inside the staging folder (layer slices, hidden states): removed with it.</summary>
    public string WorkFolder(string name)
    {
        var dir = Path.Combine(Root, "work", name);
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>
    /// Declares how many bytes the artifact will take; fails now, before the work, when its file system has less free
    /// (what a resumed run already staged counts as written).
    /// </summary>
    public void Plan(long bytes)
    {
        PlannedBytes = bytes;
        long needed = bytes - (Resumed ? Leftovers.SizeOf(Root) : 0);
        if (_freeAtStart >= 0 && needed > _freeAtStart)
            throw new DiskFullException($"no space left on device on {OsErrors.MountOf(Root)}: needs about {OsErrors.Size(needed - _freeAtStart)} more " +
                                        $"(the output takes about {OsErrors.Size(bytes)}, {OsErrors.Size(_freeAtStart)} free)");
    }

    /// <summary>Between units (tensors, files, batches): stops here when cancelled, and fires the test fault when one is set.</summary>
    public void Step(CancellationToken cancellation)
    {
        cancellation.ThrowIfCancellationRequested();
        if (_o.Fault is { } f)
        {
            if (f.Kind == TestFaultKind.Cancel && _steps == f.After) throw new OperationCanceledException($"cancelled after {_steps} units (test hook)");
            try { f.Fire(_steps, Output, null); }
            catch (SimulatedKillException) { _abandoned = true; throw; }
        }
        _steps++;
    }

    /// <summary>The exception to report for a failure while staging: errors of the system in words (see <see cref="OsErrors"/>).</summary>
    public Exception Explain(Exception e)
    {
        if (e is DiskFullException) return e; // already in words
        if (!OsErrors.IsDiskFull(e)) return OsErrors.Describe(e, Output, 0) ?? e;
        long staged = Leftovers.SizeOf(Root);
        long more = PlannedBytes <= 0 ? 0 : Math.Max(PlannedBytes - Math.Max(_freeAtStart, 0), PlannedBytes - staged);
        return OsErrors.Describe(e, Destination, Math.Max(more, 0)) ?? e;
    }

    /// <summary>
    /// Writes the manifest (files already hashed by the journal are not read again) and moves the artifact to the
    /// destination, replacing what is there when overwrite was given; then removes the staging folder.
    /// </summary>
    public IReadOnlyList<ManifestEntry> Commit(CancellationToken cancellation = default)
    {
        ObjectDisposedException.ThrowIf(_lock == null, this);
        try
        {
            if (!Path.Exists(Output)) throw new InvalidOperationException($"{Output}: nothing was staged to commit");
            var known = new Dictionary<string, ManifestEntry>(StringComparer.Ordinal);
            foreach (var u in Journal.Units)
                if (u.Offset == 0 && u.Name == u.File) known[u.File] = new ManifestEntry(u.File, u.Length, u.Hash);
            var entries = ArtifactManifest.Collect(Output, known, cancellation);
            string manifest = _o.IsFile ? Output + ArtifactManifest.SideSuffix : Path.Combine(Output, ArtifactManifest.FileName);
            ArtifactManifest.Write(manifest, _o.Command, entries);
            cancellation.ThrowIfCancellationRequested();
            if (_o.IsFile)
            {
                File.Move(Output, Destination, overwrite: true);
                File.Move(manifest, Destination + ArtifactManifest.SideSuffix, overwrite: true);
            }
            else
            {
                if (Directory.Exists(Destination))
                {
                    CheckDestination(Destination, _o); // it may have appeared while we worked
                    Directory.Move(Destination, Path.Combine(Root, "replaced"));
                }
                Directory.Move(Output, Destination);
            }
            _committed = true;
            return entries;
        }
        catch (Exception e) when (e is not OperationCanceledException && Explain(e) is var better && better != e) { throw better; }
        finally { if (_committed) Release(); }
    }

    private void Release()
    {
        Journal.Dispose();
        _lock?.Dispose();
        _lock = null;
        TryDelete(Root);
    }

    private static void TryDelete(string path)
    {
        try { if (Directory.Exists(path)) Directory.Delete(path, true); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }

    public void Dispose()
    {
        if (_lock == null) return;
        if (_abandoned)
        {
            Journal.Dispose(); // as a kill leaves it: folder and journal on disk, the lock no longer held
            _lock.Dispose();
            _lock = null;
            return;
        }
        if (!_committed)
        {
            long size = Leftovers.SizeOf(Root);
            Release();
            _log.LogDebug("removed the staging folder {Root} ({Size})", Root, OsErrors.Size(size));
        }
    }
}

/// <summary>A full disk, already said in words (with how much more the output needs).</summary>
public sealed class DiskFullException : IOException
{
    public DiskFullException(string message, Exception? inner = null) : base(message, inner) => HResult = OsErrors.ENOSPC;
}
