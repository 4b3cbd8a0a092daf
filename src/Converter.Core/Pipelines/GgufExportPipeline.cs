using System.Diagnostics;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Staging;
using Microsoft.Extensions.Logging;

namespace Converter.Pipelines;

/// <param name="WeightType">ggml type of the projection weights, embeddings and output head.</param>
/// <param name="OutputType">Overrides the type of <c>output.weight</c> (llama.cpp's mixes keep it at Q6_K or above).</param>
public sealed record GgufExportOptions(string Output, GgmlType WeightType = GgmlType.F16, GgmlType? OutputType = null,
    string? ModelName = null, bool Overwrite = false)
{
    /// <summary>Uniform <see cref="WeightType"/>, or a llama.cpp mix (Q4_K_M) that ignores <see cref="WeightType"/>.</summary>
    public GgufTypeScheme Scheme { get; init; } = GgufTypeScheme.Uniform;

    /// <summary>Export even where llama.cpp cannot represent the checkpoint exactly (the reasons are logged as warnings).</summary>
    public bool Force { get; init; }

    /// <summary>Values read per slab of a large 2-D tensor (whole 128-row blocks, at least one).</summary>
    public long SlabValues { get; init; } = 1L << 24;

    /// <summary>Continue an interrupted export to the same file from its last finished tensor (see <see cref="StagingArea"/>).</summary>
    public bool Resume { get; init; }

    public TestFault? Fault { get; init; }
}

public sealed record GgufExportResult(string Output, int Tensors, long BytesWritten, TimeSpan Elapsed,
    IReadOnlyDictionary<GgmlType, int> TypeCounts);

/// <summary>
/// Checkpoint to GGUF: the architecture's map decides keys and tensors; weights are read as float32 (FP8 blocks
/// dequantized), converted to the requested ggml type with the ggml-exact quantizers and streamed to the file
/// tensor by tensor (3-D expert tensors one expert at a time), so memory stays bounded by one source tensor.
/// </summary>
public static class GgufExportPipeline
{
    public static GgufModelPlan Plan(ModelCheckpoint src, string? modelName = null) =>
        src.Architecture.Gguf(src.Directory, modelName ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(src.Directory)));

    /// <summary>The requested type where the tensor's rows are whole blocks of it; otherwise Q8_0, then F16, then F32.</summary>
    public static GgmlType ChooseType(GgufTensorPlan t, GgmlType requested)
    {
        if (t.KeepF32) return GgmlType.F32;
        long ne0 = t.Dimensions[0];
        foreach (var type in new[] { requested, GgmlType.Q8_0, GgmlType.F16 })
        {
            if (!GgmlTypeInfo.CanQuantize(type)) throw new NotSupportedException($"cannot write ggml type {type}");
            if (ne0 % GgmlTypeInfo.BlockSize(type) == 0)
                return type;
        }
        return GgmlType.F32;
    }

    public static GgufExportResult Run(ModelCheckpoint src, GgufExportOptions options, ILogger log, IProgress<PipelineProgress>? progress = null,
        CancellationToken cancellation = default)
    {
        using var staging = StagingArea.Begin(options.Output, new StagingOptions("export gguf", IsFile: true, Overwrite: options.Overwrite)
        {
            Resume = options.Resume, Fault = options.Fault,
            Fingerprint = RunFingerprint.Of("export gguf", (options with { Output = "", Overwrite = false, Resume = false, Fault = null }).ToString(), src.Directory),
        }, log);
        try { return Export(src, options, staging, log, progress, cancellation); }
        catch (Exception e) when (staging.Explain(e) is var better && better != e) { throw better; }
    }

    private static GgufExportResult Export(ModelCheckpoint src, GgufExportOptions options, StagingArea staging, ILogger log, IProgress<PipelineProgress>? progress,
        CancellationToken cancellation)
    {
        var clock = Stopwatch.StartNew();
        var plan = Plan(src, options.ModelName);
        if (plan.Inexact.Count > 0)
        {
            if (!options.Force)
                throw new NotSupportedException($"{src.Directory}: llama.cpp's {plan.Architecture} cannot represent this checkpoint exactly: " +
                                                string.Join("; ", plan.Inexact) + ". Use --force to export anyway (outputs will differ).");
            foreach (var why in plan.Inexact) log.LogWarning("exporting anyway (--force), llama.cpp will differ: {Why}", why);
        }
        foreach (var part in plan.LeftOut) log.LogInformation("left out: {Part}", part);
        var types = new GgmlType[plan.Tensors.Count];
        var counts = new Dictionary<GgmlType, int>();
        bool tied = !plan.Tensors.Any(t => t.Name == "output.weight");
        for (int i = 0; i < types.Length; i++)
        {
            var t = plan.Tensors[i];
            if (t.FixedType is { } fixedType) types[i] = fixedType;
            else if (options.Scheme == GgufTypeScheme.Mxfp4Moe && !(t.Name == "output.weight" && options.OutputType != null)) types[i] = AsStored(src, t);
            else
            {
                // with tied embeddings llama.cpp gives token_embd the output's type
                var requested = (t.Name == "output.weight" || (tied && t.Name == "token_embd.weight")) && options.OutputType is { } o
                    ? o : GgufTypePolicy.Requested(options.Scheme, options.WeightType, t.Name, plan.BlockCount, plan.ExpertCount, tied);
                types[i] = ChooseType(t, requested);
            }
            counts[types[i]] = counts.GetValueOrDefault(types[i]) + 1;
        }
        log.LogInformation("GGUF {Arch}: {Count} tensors from {Dir} to {Out} ({Types})", plan.Architecture, types.Length,
            src.Directory, options.Output, string.Join(", ", counts.Select(kv => $"{kv.Value} {kv.Key}")));

        using var writer = new GgufWriter(staging.Output, inPlace: true) { Journal = staging.Journal, Cancellation = cancellation };
        foreach (var (key, value) in plan.Metadata) writer.Add(key, value);
        writer.Add("general.quantization_version", GgufValue.UInt32(2));
        writer.Add("general.file_type", GgufValue.UInt32((uint)GgufTypePolicy.FileType(options.Scheme, options.WeightType)));
        for (int i = 0; i < types.Length; i++) writer.AddTensor(plan.Tensors[i].Name, plan.Tensors[i].Dimensions, types[i]);
        int first = staging.Resumed ? writer.Resume() : 0;
        if (!staging.Resumed) writer.WriteHeader();
        else log.LogInformation("resume: {Kept} of {Count} tensors kept", first, types.Length);
        staging.Plan(writer.Tensors.Count == 0 ? 0 : writer.Tensors[^1].Offset + writer.Tensors[^1].ByteSize);

        var source = new CheckpointSource(src, options.SlabValues);
        long bytes = 0;
        for (int i = 0; i < first; i++) bytes += writer.Tensors[i].ByteSize;
        for (int i = first; i < types.Length; i++)
        {
            staging.Step(cancellation);
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
                t.Produce(source, chunk =>
                {
                    cancellation.ThrowIfCancellationRequested();
                    if (chunk.Length % rowLength != 0)
                        throw new InvalidOperationException($"tensor '{t.Name}': a chunk of {chunk.Length} values is not whole rows of {rowLength}");
                    for (int at = 0; at < chunk.Length; at += piece)
                        writer.WriteTensorValues(chunk.Slice(at, Math.Min(piece, chunk.Length - at)));
                });
            }
            writer.EndTensor();
            bytes += writer.Tensors[i].ByteSize;
            progress?.Report(new PipelineProgress(i + 1, types.Length, bytes, t.Name));
        }
        writer.Commit();
        staging.Commit(cancellation);
        log.LogInformation("wrote {Bytes:F3} GB in {Secs:F1} s", bytes / 1e9, clock.Elapsed.TotalSeconds);
        return new GgufExportResult(options.Output, types.Length, bytes, clock.Elapsed, counts);
    }

    /// <summary>The <see cref="GgufTypeScheme.Mxfp4Moe"/> type of a tensor, from how its sources are stored (see the scheme).</summary>
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
    private static void WriteFp4AsMxfp4(ModelCheckpoint src, GgufTensorPlan t, GgufWriter writer, long slabValues)
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
    private static void WriteStoredIntegers(ModelCheckpoint src, GgufTensorPlan t, GgmlType type, GgufWriter writer)
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
