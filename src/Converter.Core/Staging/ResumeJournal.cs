using System.Text.Json;
using System.Text.Json.Nodes;

namespace Converter.Staging;

/// <summary>One completed unit of an output: a whole file (offset 0) or a tensor's byte range inside one.</summary>
public sealed record JournalUnit(string Name, string File, long Offset, long Length, string Hash);

/// <summary>
/// The journal of a staging folder (<c>journal.jsonl</c>): its first line the fingerprint of the run's inputs and
/// options, then one line per completed unit, appended and flushed as each completes. <c>--resume</c> reads it to skip
/// what is done; a line cut short by a kill is ignored (that unit is redone).
/// </summary>
public sealed class ResumeJournal : IDisposable
{
    public const string FileName = "journal.jsonl";
    private readonly StreamWriter _out;
    private readonly List<JournalUnit> _units;

    public string Fingerprint { get; }
    public IReadOnlyList<JournalUnit> Units => _units;

    private ResumeJournal(string path, string fingerprint, List<JournalUnit> units, bool append)
    {
        Fingerprint = fingerprint;
        _units = units;
        _out = new StreamWriter(new FileStream(path, append ? FileMode.Open : FileMode.CreateNew, FileAccess.Write, FileShare.Read)) { AutoFlush = true };
        if (append) _out.BaseStream.Seek(0, SeekOrigin.End);
        else _out.WriteLine(new JsonObject { ["fingerprint"] = fingerprint, ["hash"] = ContentHash.Algorithm }.ToJsonString());
    }

    public static ResumeJournal Create(string folder, string fingerprint) => new(Path.Combine(folder, FileName), fingerprint, [], append: false);

    /// <summary>The fingerprint a journal was started with, or null when there is none (or it is unreadable).</summary>
    public static string? ReadFingerprint(string folder)
    {
        var path = Path.Combine(folder, FileName);
        if (!File.Exists(path)) return null;
        using var reader = new StreamReader(path);
        try { return JsonNode.Parse(reader.ReadLine() ?? "")?["fingerprint"]?.GetValue<string>(); }
        catch (JsonException) { return null; }
    }

    /// <summary>Reopens a journal to go on appending; a torn last line is dropped (rewritten without it).</summary>
    public static ResumeJournal Open(string folder)
    {
        var path = Path.Combine(folder, FileName);
        var lines = File.ReadAllLines(path);
        var fingerprint = JsonNode.Parse(lines[0])!["fingerprint"]!.GetValue<string>();
        var units = new List<JournalUnit>();
        int good = 1;
        for (int i = 1; i < lines.Length; i++)
        {
            try
            {
                var o = JsonNode.Parse(lines[i])!;
                units.Add(new JournalUnit(o["unit"]!.GetValue<string>(), o["file"]!.GetValue<string>(), o["offset"]!.GetValue<long>(),
                    o["length"]!.GetValue<long>(), o["hash"]!.GetValue<string>()));
                good = i + 1;
            }
            catch (Exception e) when (e is JsonException or NullReferenceException or InvalidOperationException) { break; }
        }
        if (good < lines.Length) File.WriteAllLines(path, lines[..good]);
        return new ResumeJournal(path, fingerprint, units, append: true);
    }

    /// <summary>Records a completed unit; call only once its bytes are written (flushed to the file).</summary>
    public void Completed(JournalUnit unit)
    {
        _units.Add(unit);
        _out.WriteLine(new JsonObject
        {
            ["unit"] = unit.Name, ["file"] = unit.File, ["offset"] = unit.Offset, ["length"] = unit.Length, ["hash"] = unit.Hash,
        }.ToJsonString());
    }

    /// <summary>Keeps the first <paramref name="count"/> units (the ones checked good on resume) and forgets the rest.</summary>
    public void TruncateTo(int count)
    {
        if (count >= _units.Count) return;
        _units.RemoveRange(count, _units.Count - count);
        _out.Flush();
        var path = ((FileStream)_out.BaseStream).Name;
        var lines = File.ReadAllLines(path);
        _out.BaseStream.SetLength(0);
        _out.WriteLine(lines[0]);
        foreach (var u in _units)
            _out.WriteLine(new JsonObject { ["unit"] = u.Name, ["file"] = u.File, ["offset"] = u.Offset, ["length"] = u.Length, ["hash"] = u.Hash }.ToJsonString());
    }

    public void Dispose() => _out.Dispose();
}
