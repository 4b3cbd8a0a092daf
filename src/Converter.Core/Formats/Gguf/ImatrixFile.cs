using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Converter.Numerics.Ggml;

namespace Converter.Formats.Gguf;

/// <summary>
/// One weight's entry of an importance matrix: for each of its <see cref="Matrices"/> (1 for a 2-D weight, one per
/// expert of a 3-D expert tensor, or one per head where llama.cpp multiplies a 3-D weight per head) the sum over the
/// calibration rows of x_j² per input column j (<see cref="Sums"/>, [matrices, columns] row-major) and how many rows
/// (<see cref="Counts"/>, per matrix: a 2-D weight and a per-head one have a single count for all).
/// </summary>
public sealed class ImatrixEntry
{
    public float[] Sums { get; }
    public float[] Counts { get; }
    public int Columns { get; }

    public ImatrixEntry(float[] sums, float[] counts)
    {
        if (counts.Length == 0 || sums.Length == 0 || sums.Length % counts.Length != 0)
            throw new ArgumentException($"{sums.Length} sums are not a whole number of rows for {counts.Length} counts");
        (Sums, Counts, Columns) = (sums, counts, sums.Length / counts.Length);
    }

    public int Matrices => Counts.Length;

    /// <summary>
    /// What llama-quantize hands the quantizer (tools/quantize/quantize.cpp, load_imatrix): per count slot, in_sum2 /
    /// count; a slot with count 0 (an expert no calibration token was routed to) gets 1 for every column, i.e. no
    /// weighting. The legacy format stores means times ncall: divided by ncall (<see cref="ImatrixFile.IsLegacy"/>).
    /// </summary>
    public float[] Importance(bool legacy)
    {
        var e = new float[Sums.Length];
        if (legacy)
        {
            float ncall = Counts[0];
            for (int i = 0; i < e.Length; i++) e[i] = ncall > 0 ? Sums[i] / ncall : Sums[i];
            return e;
        }
        for (int j = 0; j < Counts.Length; j++)
        {
            float count = MathF.Round(Counts[j]); // the loader rounds counts to integers (std::lround)
            var dst = e.AsSpan(j * Columns, Columns);
            if (count > 0)
            {
                var src = Sums.AsSpan(j * Columns, Columns);
                for (int i = 0; i < Columns; i++) dst[i] = src[i] / count;
            }
            else dst.Fill(1f);
        }
        return e;
    }
}

/// <summary>
/// llama.cpp's importance matrix (llama-imatrix, tools/imatrix/imatrix.cpp, v0.5.0). The GGUF form: key
/// <c>general.type = "imatrix"</c>, <c>imatrix.datasets</c> (string array), <c>imatrix.chunk_count</c> and
/// <c>imatrix.chunk_size</c> (u32), and per weight <c>NAME.in_sum2</c> F32 [columns, matrices] and <c>NAME.counts</c>
/// F32 [1, matrices] (a single matrix: [columns] and [1]), tensors sorted by name. The legacy <c>.dat</c> form (read only): i32 entry count, then per entry
/// i32 name length, name, i32 ncall, i32 nval, nval float32 (mean x² times ncall), then optionally i32 chunk count and
/// a length-prefixed dataset name. llama-quantize refuses a GGUF imatrix without the three imatrix.* keys.
/// </summary>
public sealed class ImatrixFile
{
    public const string TypeKey = "general.type", TypeValue = "imatrix", DatasetsKey = "imatrix.datasets",
        ChunkCountKey = "imatrix.chunk_count", ChunkSizeKey = "imatrix.chunk_size";
    public const string SumsSuffix = ".in_sum2", CountsSuffix = ".counts";

    public SortedDictionary<string, ImatrixEntry> Entries { get; } = new(StringComparer.Ordinal);
    public List<string> Datasets { get; } = [];
    public int ChunkCount { get; set; }
    public int ChunkSize { get; set; }
    /// <summary>Read from the legacy .dat form: sums are means times ncall and the count is ncall.</summary>
    public bool IsLegacy { get; private init; }

    /// <summary>Reads either form (GGUF by its magic, otherwise legacy). Errors name the file and the entry.</summary>
    public static ImatrixFile Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: imatrix file not found", path);
        Span<byte> magic = stackalloc byte[4];
        using (var fs = File.OpenRead(path))
            if (fs.Length < 4 || fs.Read(magic) < 4) throw new InvalidDataException($"{path}: not an imatrix file ({fs.Length} bytes)");
        return BinaryPrimitives.ReadUInt32LittleEndian(magic) == GgufFormat.Magic ? ReadGguf(path) : ReadLegacy(path);
    }

    private static ImatrixFile ReadGguf(string path)
    {
        using var r = GgufReader.Open(path);
        var f = new ImatrixFile();
        bool meta = r.TryGetValue(DatasetsKey, out var ds) & r.TryGetValue(ChunkCountKey, out var cc) & r.TryGetValue(ChunkSizeKey, out var cs);
        if (!meta) throw new InvalidDataException($"{path}: GGUF without the imatrix metadata ({DatasetsKey}, {ChunkCountKey}, {ChunkSizeKey}); llama-quantize refuses it too");
        try
        {
            f.Datasets.AddRange(ds!.AsArray<string>());
            f.ChunkCount = checked((int)cc!.AsUInt32());
            f.ChunkSize = checked((int)cs!.AsUInt32());
        }
        catch (Exception ex) when (ex is InvalidOperationException or OverflowException)
        {
            throw new InvalidDataException($"{path}: imatrix metadata: {ex.Message}");
        }
        var sums = new Dictionary<string, GgufTensorInfo>();
        var counts = new Dictionary<string, GgufTensorInfo>();
        foreach (var t in r.Tensors)
        {
            if (t.Name.EndsWith(SumsSuffix, StringComparison.Ordinal)) sums[t.Name[..^SumsSuffix.Length]] = t;
            else if (t.Name.EndsWith(CountsSuffix, StringComparison.Ordinal)) counts[t.Name[..^CountsSuffix.Length]] = t;
        }
        if (sums.Count == 0 && counts.Count == 0) throw new InvalidDataException($"{path}: no imatrix entries (no *{SumsSuffix} / *{CountsSuffix} tensors)");
        foreach (var name in sums.Keys.Union(counts.Keys))
        {
            if (!sums.TryGetValue(name, out var s)) throw new InvalidDataException($"{path}: tensor '{name}{CountsSuffix}' has no '{name}{SumsSuffix}'");
            if (!counts.TryGetValue(name, out var c)) throw new InvalidDataException($"{path}: tensor '{name}{SumsSuffix}' has no '{name}{CountsSuffix}'");
            foreach (var t in new[] { s, c })
                if (t.Type != GgmlType.F32) throw new InvalidDataException($"{path}: tensor '{t.Name}' is {t.Type}, imatrix tensors are F32");
            if (c.ElementCount == 0 || s.ElementCount % c.ElementCount != 0)
                throw new InvalidDataException($"{path}: tensor '{s.Name}' has {s.ElementCount} values, not a whole number of rows for the {c.ElementCount} counts of '{c.Name}'");
            var sv = MemoryMarshal.Cast<byte, float>(r.GetTensorData(s)).ToArray();
            var cv = MemoryMarshal.Cast<byte, float>(r.GetTensorData(c)).ToArray();
            for (int i = 0; i < cv.Length; i++)
                if (!float.IsFinite(cv[i]) || cv[i] < 0) throw new InvalidDataException($"{path}: tensor '{c.Name}' element {i} is {cv[i]}, not a count");
            for (int i = 0; i < sv.Length; i++)
                if (!float.IsFinite(sv[i])) throw new InvalidDataException($"{path}: tensor '{s.Name}' element {i} is {sv[i]} (llama-quantize refuses non-finite importance)");
            f.Entries[name] = new ImatrixEntry(sv, cv);
        }
        return f;
    }

    private static ImatrixFile ReadLegacy(string path)
    {
        var bytes = File.ReadAllBytes(path);
        int at = 0;
        string entry = "the entry count";
        int I32()
        {
            if (at + 4 > bytes.Length) throw new InvalidDataException($"{path}: legacy imatrix truncated at byte {at} reading {entry}");
            int v = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(at));
            at += 4;
            return v;
        }
        var f = new ImatrixFile { IsLegacy = true };
        int n = I32();
        if (n < 1) throw new InvalidDataException($"{path}: not an imatrix (neither GGUF nor a legacy .dat with entries: count {n})");
        for (int i = 0; i < n; i++)
        {
            entry = $"entry {i + 1} of {n}";
            int len = I32();
            if (len < 1 || len > bytes.Length - at) throw new InvalidDataException($"{path}: {entry}: name length {len} is impossible");
            string name = Encoding.UTF8.GetString(bytes, at, len);
            at += len;
            entry = $"entry '{name}'";
            int ncall = I32(), nval = I32();
            if (nval < 1 || (long)nval * 4 > bytes.Length - at) throw new InvalidDataException($"{path}: {entry}: {nval} values do not fit the file");
            var v = MemoryMarshal.Cast<byte, float>(bytes.AsSpan(at, nval * 4)).ToArray();
            at += nval * 4;
            for (int j = 0; j < v.Length; j++)
                if (!float.IsFinite(v[j])) throw new InvalidDataException($"{path}: {entry} value {j} is {v[j]}");
            f.Entries[name] = new ImatrixEntry(v, [ncall]);
        }
        if (at + 4 <= bytes.Length)
        {
            f.ChunkCount = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(at));
            at += 4;
            if (at + 4 <= bytes.Length)
            {
                int len = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(at));
                at += 4;
                if (len > 0 && len <= bytes.Length - at) f.Datasets.Add(Encoding.UTF8.GetString(bytes, at, len));
            }
        }
        return f;
    }

    /// <summary>Writes the GGUF form as llama-imatrix does (keys in its order, tensors by name, in_sum2 then counts),
    /// to a temporary file renamed into place.</summary>
    public void Write(string path, bool overwrite = false)
    {
        if (IsLegacy) throw new InvalidOperationException("a legacy imatrix holds means, not sums: it is not written as GGUF");
        if (File.Exists(path) && !overwrite) throw new IOException($"{path}: already exists (use --overwrite)");
        using var w = new GgufWriter(path);
        w.Add(TypeKey, GgufValue.String(TypeValue));
        w.Add(DatasetsKey, GgufValue.Array(Datasets.ToArray()));
        w.Add(ChunkCountKey, GgufValue.UInt32(checked((uint)ChunkCount)));
        w.Add(ChunkSizeKey, GgufValue.UInt32(checked((uint)ChunkSize)));
        foreach (var (name, e) in Entries)
        {
            // ggml writes a 2-D [n, 1] tensor with one dimension (trailing ones dropped): so does this
            w.AddTensor(name + SumsSuffix, e.Matrices == 1 ? [e.Columns] : [e.Columns, e.Matrices], GgmlType.F32);
            w.AddTensor(name + CountsSuffix, e.Matrices == 1 ? [1] : [1, e.Matrices], GgmlType.F32);
        }
        w.WriteHeader();
        foreach (var (name, e) in Entries)
        {
            w.AppendTensor(name + SumsSuffix, MemoryMarshal.AsBytes(e.Sums.AsSpan()));
            w.AppendTensor(name + CountsSuffix, MemoryMarshal.AsBytes(e.Counts.AsSpan()));
        }
        w.Commit();
    }
}
