using System.Diagnostics;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Staging;
using Microsoft.Extensions.Logging;

namespace Converter.Pipelines;

/// <param name="Types">The file type and llama-quantize's options (default F16).</param>
public sealed record GgufExportOptions(string Output, GgufQuantization? Types = null, string? ModelName = null, bool Overwrite = false)
{
    /// <summary>Every quantizable weight <paramref name="type"/> where the type has a name here (<see cref="GgufQuantization.Of"/>).</summary>
    public GgufExportOptions(string output, GgmlType type) : this(output, GgufQuantization.Of(type)) { }

    public GgufQuantization Quantization => Types ?? new GgufQuantization(GgufFileType.MostlyF16);

    /// <summary>Export even where llama.cpp cannot represent the checkpoint exactly (the reasons are logged as warnings).</summary>
    public bool Force { get; init; }

    /// <summary>An importance matrix (llama-imatrix's or calibrate's) and the path it was read from: each quantized
    /// tensor it has an entry for is quantized with that entry's weights, as llama-quantize does (<see cref="GgufImatrix"/>).</summary>
    public (ImatrixFile File, string Path)? Imatrix { get; init; }

    /// <summary>Values read per slab of a large 2-D tensor (whole 128-row blocks, at least one).</summary>
    public long SlabValues { get; init; } = 1L << 24;

    /// <summary>Continue an interrupted export to the same file from its last finished tensor (see <see cref="StagingArea"/>;
    /// not with split output).</summary>
    public bool Resume { get; init; }

    public TestFault? Fault { get; init; }

    /// <summary>Write llama.cpp's split files with at most this many tensor bytes each (0: one file).</summary>
    public long SplitMaxBytes { get; init; }

    /// <summary>Write llama.cpp's split files with at most this many tensors each (0: no tensor limit).</summary>
    public int SplitMaxTensors { get; init; }

    public bool Split => SplitMaxBytes > 0 || SplitMaxTensors > 0;
}

/// <summary>One tensor of the export with the ggml type it is written in.</summary>
public sealed record GgufTypedTensor(GgufTensorPlan Tensor, GgmlType Type);

/// <param name="Files">The files written: the output, or its split parts in order.</param>
public sealed record GgufExportResult(string Output, int Tensors, long BytesWritten, TimeSpan Elapsed,
    IReadOnlyDictionary<GgmlType, int> TypeCounts, IReadOnlyList<string> Files);

/// <summary>
/// Checkpoint to GGUF: the architecture's map decides keys and tensors; weights are read as float32 (FP8 blocks
/// dequantized), converted to the requested ggml type with the ggml-exact quantizers and streamed to the file
/// tensor by tensor (3-D expert tensors one expert at a time), so memory stays bounded by one source tensor.
/// </summary>
public static class GgufExportPipeline
{
    public static GgufModelPlan Plan(ModelCheckpoint src, string? modelName = null) =>
        src.Architecture.Gguf(src.Directory, modelName ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(src.Directory)));

    /// <summary>The file types llama.cpp's converter writes itself (<c>--outtype</c>): these keep the tensors the
    /// architecture's map marks F32 (DeepSeek-V4's hyper-connection and position tables) as the converter does;
    /// every other file type is llama-quantize's, which quantizes any 2-D weight its rules allow.</summary>
    private static bool IsConverterOutType(GgufFileType f) =>
        f is GgufFileType.AllF32 or GgufFileType.MostlyF16 or GgufFileType.MostlyBF16 or GgufFileType.MostlyQ8_0;

    /// <summary>Every tensor of the export with its ggml type, in the file's order (what <c>--dry-run</c> lists).</summary>
    public static IReadOnlyList<GgufTypedTensor> PlanTypes(ModelCheckpoint src, GgufModelPlan plan, GgufExportOptions options)
    {
        var q = options.Quantization;
        var result = new GgufTypedTensor[plan.Tensors.Count];
        if (q.FileType == GgufFileType.MostlyMXFP4_MOE)
        {
            for (int i = 0; i < result.Length; i++)
            {
                var t = plan.Tensors[i];
                var type = t.FixedType ?? (t.Name == "output.weight" && q.OutputType is { } o ? o : AsStored(src, t));
                result[i] = new(t, type);
            }
            return result;
        }
        var chosen = GgufTypePolicy.Choose(q, GgufModelFacts.From(plan), plan.Tensors.Select(t => (t.Name, t.Dimensions)).ToArray());
        bool converter = IsConverterOutType(q.FileType);
        for (int i = 0; i < result.Length; i++)
        {
            var t = plan.Tensors[i];
            result[i] = new(t, t.FixedType ?? (converter && t.KeepF32 ? GgmlType.F32 : chosen[i] ?? GgmlType.F32));
        }
        return result;
    }

    /// <summary>Why <c>--resume</c> is refused with split output.</summary>
    public const string ResumeWithSplitError =
        "--resume cannot be combined with --split-max-size/--split-max-tensors: split output is not journaled; run again without --resume to start over";

    public static GgufExportResult Run(ModelCheckpoint src, GgufExportOptions options, ILogger log, IProgress<PipelineProgress>? progress = null,
        CancellationToken cancellation = default)
    {
        if (options.Split)
        {
            // The split writer stages its parts beside the destination and renames them together; it keeps no journal.
            if (options.Resume) throw new ArgumentException(ResumeWithSplitError);
            return Export(src, options, null, log, progress, cancellation);
        }
        using var staging = StagingArea.Begin(options.Output, new StagingOptions("export gguf", IsFile: true, Overwrite: options.Overwrite)
        {
            Resume = options.Resume, Fault = options.Fault,
            Fingerprint = RunFingerprint.Of("export gguf", (options with { Output = "", Overwrite = false, Resume = false, Fault = null, Imatrix = null }).ToString() +
                string.Concat(options.Quantization.Overrides.Select(o => $" --tensor-type {o.Pattern}={o.Type}")) +
                (options.Imatrix is { } im ? " --imatrix " + Path.GetFullPath(im.Path) : ""), src.Directory),
        }, log);
        try { return Export(src, options, staging, log, progress, cancellation); }
        catch (Exception e) when (staging.Explain(e) is var better && better != e) { throw better; }
    }

    private static GgufExportResult Export(ModelCheckpoint src, GgufExportOptions options, StagingArea? staging, ILogger log, IProgress<PipelineProgress>? progress,
        CancellationToken cancellation)
    {
        var clock = Stopwatch.StartNew();
        if (options.Split && File.Exists(options.Output) && !options.Overwrite)
            throw new IOException($"{options.Output}: already exists (use overwrite)");
        var plan = Plan(src, options.ModelName);
        if (plan.Inexact.Count > 0)
        {
            if (!options.Force)
                throw new NotSupportedException($"{src.Directory}: llama.cpp's {plan.Architecture} cannot represent this checkpoint exactly: " +
                                                string.Join("; ", plan.Inexact) + ". Use --force to export anyway (outputs will differ).");
            foreach (var why in plan.Inexact) log.LogWarning("exporting anyway (--force), llama.cpp will differ: {Why}", why);
        }
        foreach (var part in plan.LeftOut) log.LogInformation("left out: {Part}", part);
        var typed = PlanTypes(src, plan, options);
        var types = typed.Select(t => t.Type).ToArray();
        foreach (var (t, type) in typed)
            if (t.FixedType == null && !GgmlTypeInfo.CanQuantize(type))
                throw new NotSupportedException($"tensor '{t.Name}': {options.Quantization.FileType} asks for ggml type {type}, which this exporter cannot write yet");
        var counts = new Dictionary<GgmlType, int>();
        foreach (var type in types) counts[type] = counts.GetValueOrDefault(type) + 1;
        log.LogInformation("GGUF {Arch}: {Count} tensors from {Dir} to {Out} ({Types})", plan.Architecture, types.Length,
            src.Directory, options.Output, string.Join(", ", counts.Select(kv => $"{kv.Value} {kv.Key}")));

        var importance = options.Imatrix is { } im ? new GgufImatrix(im.File, im.Path, plan.Tensors, types, log) : null;

        // One file: written in place in the staging area (journal for --resume, manifest, removed on cancel or error).
        // Split: the split writer's own temporary parts beside the destination, renamed together on commit, deleted otherwise.
        using IGgufWriter writer = staging == null
            ? new GgufSplitWriter(GgufSplitWriter.PrefixOf(options.Output), options.SplitMaxBytes, options.SplitMaxTensors)
            : new GgufWriter(staging.Output, inPlace: true) { Journal = staging.Journal, Cancellation = cancellation };
        foreach (var (key, value) in plan.Metadata) writer.Add(key, value);
        writer.Add("general.quantization_version", GgufValue.UInt32(2));
        writer.Add("general.file_type", GgufValue.UInt32((uint)options.Quantization.FileType));
        importance?.AddKeys(writer);
        var sizes = new long[types.Length];
        GgufTensorInfo? last = null;
        for (int i = 0; i < types.Length; i++)
        {
            last = writer.AddTensor(plan.Tensors[i].Name, plan.Tensors[i].Dimensions, types[i]);
            sizes[i] = last.ByteSize;
        }
        int first = 0;
        if (staging != null && staging.Resumed)
        {
            first = ((GgufWriter)writer).Resume();
            log.LogInformation("resume: {Kept} of {Count} tensors kept", first, types.Length);
        }
        else writer.WriteHeader();
        staging?.Plan(last == null ? 0 : last.Offset + last.ByteSize);
        var files = writer is GgufSplitWriter split ? split.Paths : [Path.GetFullPath(options.Output)];
        if (options.Split)
        {
            foreach (var f in files)
                if (File.Exists(f) && !options.Overwrite) throw new IOException($"{f}: already exists (use overwrite)");
            log.LogInformation("split into {Count} files: {First} ...", files.Count, files[0]);
        }

        var source = new CheckpointSource(src, options.SlabValues);
        long bytes = 0;
        for (int i = 0; i < first; i++) bytes += sizes[i];
        for (int i = first; i < types.Length; i++)
        {
            if (staging != null) staging.Step(cancellation);
            else cancellation.ThrowIfCancellationRequested();
            var t = plan.Tensors[i];
            writer.BeginTensor(t.Name);
            if (t.FixedType != null)
            {
                WriteStoredIntegers(src, t, types[i], writer);
            }
            else if (GgufInt4Passthrough.Applies(src, t, types[i]))
            {
                GgufInt4Passthrough.Write(src, t, writer, log);
            }
            else if (types[i] == GgmlType.MXFP4 && IsStackOfFp4Rows(src, t))
            {
                WriteFp4AsMxfp4(src, t, writer, options.SlabValues);
            }
            else
            {
                long rowLength = t.Dimensions[0];
                // whole rows, at most ~32M values per encode call: bounds the encode buffer whatever the tensor
                int piece = (int)Math.Max(rowLength, (1L << 25) / rowLength * rowLength);
                var weights = importance?.For(i);
                // rows per importance slice: an expert's (or head's) rows, ne1; a piece never crosses a slice
                long sliceRows = t.Dimensions.Length > 1 ? t.Dimensions[1] : 1, row = 0;
                t.Produce(source, chunk =>
                {
                    cancellation.ThrowIfCancellationRequested();
                    if (chunk.Length % rowLength != 0)
                        throw new InvalidOperationException($"tensor '{t.Name}': a chunk of {chunk.Length} values is not whole rows of {rowLength}");
                    for (int at = 0; at < chunk.Length;)
                    {
                        int n = Math.Min(piece, chunk.Length - at);
                        if (weights == null)
                        {
                            writer.WriteTensorValues(chunk.Slice(at, n));
                        }
                        else
                        {
                            long slice = row / sliceRows, left = (slice + 1) * sliceRows - row;
                            n = (int)Math.Min(n, left * rowLength);
                            writer.WriteTensorValues(chunk.Slice(at, n), weights.AsSpan(checked((int)(slice * rowLength)), (int)rowLength));
                        }
                        at += n;
                        row += n / rowLength;
                    }
                });
            }
            writer.EndTensor();
            bytes += sizes[i];
            progress?.Report(new PipelineProgress(i + 1, types.Length, bytes, t.Name));
        }
        writer.Commit();
        staging?.Commit(cancellation);
        log.LogInformation("wrote {Bytes:F3} GB in {Secs:F1} s", bytes / 1e9, clock.Elapsed.TotalSeconds);
        return new GgufExportResult(options.Output, types.Length, bytes, clock.Elapsed, counts, files);
    }

    /// <summary>The <c>mxfp4_moe</c> type of a tensor, from how its sources are stored (see the scheme).</summary>
    public static GgmlType AsStored(ModelCheckpoint src, GgufTensorPlan t)
    {
        long ne0 = t.Dimensions[0];
        bool experts = t.Sources.Count > 0 && t.Sources.All(s => src.Architecture.Classify(s).Kind == TensorKind.RoutedExpert);
        if (experts && ne0 % Numerics.Ggml.Mxfp4.BlockValues == 0) return GgmlType.MXFP4;
        if (t.Dimensions.Length <= 1 || t.Name.EndsWith("_norm.weight", StringComparison.Ordinal) || t.Sources.Count == 0) return GgmlType.F32;
        var first = t.Sources[0];
        var encoding = src.Encoding(first);
        if (encoding is WeightEncoding.Fp8Block or WeightEncoding.Fp8BlockPow2 || experts)
            return ne0 % 32 == 0 ? GgmlType.Q8_0 : GgmlType.F16;
        if (encoding != WeightEncoding.Dense) return ne0 % 32 == 0 ? GgmlType.Q8_0 : GgmlType.F16;
        return src.Tensors.Info(first).DType switch
        {
            Tensors.DType.BF16 => GgmlType.BF16,
            Tensors.DType.F16 => GgmlType.F16,
            _ => GgmlType.F32,
        };
    }

    /// <summary>True where the tensor is its sources' FP4 rows as they are: 2-D [K, N] or stacked [K, N, E].</summary>
    private static bool IsStackOfFp4Rows(ModelCheckpoint src, GgufTensorPlan t)
    {
        if (t.Sources.Count == 0 || t.Dimensions.Length < 2) return false;
        long count = 1;
        foreach (var d in t.Dimensions) count *= d;
        foreach (var s in t.Sources)
        {
            if (src.Encoding(s) != WeightEncoding.Fp4Group32) return false;
            var (rows, cols) = src.LogicalShape(s);
            if (t.Dimensions[0] != cols || t.Dimensions[1] != rows) return false;
            count -= rows * cols;
        }
        return count == 0;
    }

    /// <summary>FP4 e2m1 + E8M0 rows repacked into MXFP4 blocks, bit for bit, a slab of rows at a time.</summary>
    private static void WriteFp4AsMxfp4(ModelCheckpoint src, GgufTensorPlan t, IGgufWriter writer, long slabValues)
    {
        byte[]? blocks = null;
        foreach (var s in t.Sources)
        {
            var (rows, cols) = src.LogicalShape(s);
            long groupsPerRow = cols / Numerics.Ggml.Mxfp4.BlockValues;
            long slab = Math.Max(1, slabValues / cols);
            var scaleName = src.ScaleOf(s);
            for (long r0 = 0; r0 < rows; r0 += slab)
            {
                long n = Math.Min(slab, rows - r0);
                using var packed = src.Tensors.ReadRange(s, r0 * cols / 2, n * cols / 2);
                using var scales = src.Tensors.ReadRange(scaleName, r0 * groupsPerRow, n * groupsPerRow);
                int bytes = checked((int)(n * groupsPerRow * Numerics.Ggml.Mxfp4.BlockBytes));
                if (blocks == null || blocks.Length < bytes) blocks = new byte[bytes];
                Numerics.Ggml.Mxfp4.Repack(packed.Bytes, scales.Bytes, (int)cols, blocks.AsSpan(0, bytes));
                writer.WriteTensorData(blocks.AsSpan(0, bytes));
            }
        }
    }

    /// <summary>An integer table in its fixed ggml type (I32 from any stored integer dtype in range).</summary>
    private static void WriteStoredIntegers(ModelCheckpoint src, GgufTensorPlan t, GgmlType type, IGgufWriter writer)
    {
        if (type != GgmlType.I32 || t.Sources.Count != 1)
            throw new NotSupportedException($"tensor '{t.Name}': fixed type {type} from {t.Sources.Count} source(s) is not supported (one source to I32)");
        using var data = src.Tensors.Read(t.Sources[0]);
        if (data.Info.DType == Tensors.DType.I32)
        {
            writer.WriteTensorData(data.Bytes);
            return;
        }
        var values = Tensors.TensorConvert.ToInt64(data);
        var i32 = new int[values.Length];
        for (int i = 0; i < values.Length; i++)
            i32[i] = values[i] is >= int.MinValue and <= int.MaxValue ? (int)values[i]
                : throw new InvalidDataException($"{data.Info.File}: '{data.Info.Name}' element {i} = {values[i]} does not fit I32");
        writer.WriteTensorData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(i32.AsSpan()));
    }

    /// <summary>Float32 reads of a checkpoint; row slabs map only their own bytes (and FP8 scale rows).</summary>
    private sealed class CheckpointSource(ModelCheckpoint src, long slabValues) : ICheckpointFloatSource
    {
        // The packed INT4 tensor dequantized last: its slabs are read one after the other.
        private (string Name, float[] Values)? _int4;

        public long SlabValues => slabValues;

        public float[] Read(string name) => src.ReadFloat32(name);

        public long Rows(string name) => src.IsPackedInt4(name) ? GgufInt4Passthrough.Shape(src, name).Rows : src.LogicalShape(name).Rows;

        public long ElementCount(string name)
        {
            var (rows, cols) = src.IsPackedInt4(name) ? GgufInt4Passthrough.Shape(src, name) : src.LogicalShape(name);
            return rows * cols;
        }

        public void ReadRows(string name, long firstRow, Span<float> dst)
        {
            if (src.IsPackedInt4(name))
            {
                // Packed INT4 is dequantized whole (it is 8x smaller than float32 on disk), once for all its slabs.
                long c = ElementCount(name) / Rows(name);
                if (_int4?.Name != name) _int4 = (name, src.ReadFloat32(name));
                var all = _int4.Value.Values;
                all.AsSpan(checked((int)(firstRow * c)), dst.Length).CopyTo(dst);
                if (firstRow * c + dst.Length == all.Length) _int4 = null; // its last slab: not held past the tensor
                return;
            }
            src.ReadRows(name, firstRow, dst);
        }
    }
}
