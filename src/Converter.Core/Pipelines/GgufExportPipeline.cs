using System.Diagnostics;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
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

    public static GgufExportResult Run(ModelCheckpoint src, GgufExportOptions options, ILogger log, IProgress<PipelineProgress>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        if (File.Exists(options.Output) && !options.Overwrite)
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
        var types = new GgmlType[plan.Tensors.Count];
        var counts = new Dictionary<GgmlType, int>();
        bool tied = !plan.Tensors.Any(t => t.Name == "output.weight");
        for (int i = 0; i < types.Length; i++)
        {
            var t = plan.Tensors[i];
            // with tied embeddings llama.cpp gives token_embd the output's type
            var requested = (t.Name == "output.weight" || (tied && t.Name == "token_embd.weight")) && options.OutputType is { } o
                ? o : GgufTypePolicy.Requested(options.Scheme, options.WeightType, t.Name, plan.BlockCount, plan.ExpertCount, tied);
            types[i] = ChooseType(t, requested);
            counts[types[i]] = counts.GetValueOrDefault(types[i]) + 1;
        }
        log.LogInformation("GGUF {Arch}: {Count} tensors from {Dir} to {Out} ({Types})", plan.Architecture, types.Length,
            src.Directory, options.Output, string.Join(", ", counts.Select(kv => $"{kv.Value} {kv.Key}")));

        using var writer = new GgufWriter(options.Output);
        foreach (var (key, value) in plan.Metadata) writer.Add(key, value);
        writer.Add("general.quantization_version", GgufValue.UInt32(2));
        writer.Add("general.file_type", GgufValue.UInt32((uint)GgufTypePolicy.FileType(options.Scheme, options.WeightType)));
        for (int i = 0; i < types.Length; i++) writer.AddTensor(plan.Tensors[i].Name, plan.Tensors[i].Dimensions, types[i]);
        writer.WriteHeader();

        var source = new CheckpointSource(src, options.SlabValues);
        long bytes = 0;
        for (int i = 0; i < types.Length; i++)
        {
            var t = plan.Tensors[i];
            writer.BeginTensor(t.Name);
            if (GgufInt4Passthrough.Applies(src, t, types[i]))
            {
                GgufInt4Passthrough.Write(src, t, writer, log);
            }
            else
            {
                long rowLength = t.Dimensions[0];
                // whole rows, at most ~32M values per encode call: bounds the encode buffer whatever the tensor
                int piece = (int)Math.Max(rowLength, (1L << 25) / rowLength * rowLength);
                t.Produce(source, chunk =>
                {
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
        log.LogInformation("wrote {Bytes:F3} GB in {Secs:F1} s", bytes / 1e9, clock.Elapsed.TotalSeconds);
        return new GgufExportResult(options.Output, types.Length, bytes, clock.Elapsed, counts);
    }

    /// <summary>Float32 reads of a checkpoint; row slabs map only their own bytes (and FP8 scale rows).</summary>
    private sealed class CheckpointSource(ModelCheckpoint src, long slabValues) : ICheckpointFloatSource
    {
        // The packed INT4 tensor dequantized last: its slabs are read one after the other.
        private (string Name, float[] Values)? _int4;

        public long SlabValues => slabValues;

        public float[] Read(string name) => src.ReadFloat32(name);

        public long Rows(string name) => src.IsPackedInt4(name) ? GgufInt4Passthrough.Shape(src, name).Rows
            : src.Tensors.Info(name).Shape is { Length: > 0 } s ? s[0] : 1;

        public long ElementCount(string name)
        {
            if (!src.IsPackedInt4(name)) return src.Tensors.Info(name).ElementCount;
            var (rows, cols) = GgufInt4Passthrough.Shape(src, name);
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
            var info = src.Tensors.Info(name);
            long cols = info.ElementCount / Math.Max(1, Rows(name));
            if (firstRow % 128 != 0 || dst.Length % cols != 0)
                throw new ArgumentException($"tensor '{name}': rows must start at a multiple of 128 and be whole rows of {cols}");
            int n = (int)(dst.Length / cols);
            if (src.IsFp8(name))
            {
                var scaleInfo = src.Tensors.Info(ModelCheckpoint.ScaleName(name));
                long scaleCols = scaleInfo.Shape[1];
                long sr0 = firstRow / 128, srn = (n + 127) / 128;
                using var w = src.Tensors.ReadRange(name, firstRow * cols, n * cols);
                using var s = src.Tensors.ReadRange(scaleInfo.Name, sr0 * scaleCols * 4, srn * scaleCols * 4);
                Numerics.Fp8BlockQuantizer.Dequantize(w.Bytes, s.As<float>(), n, (int)cols, dst);
                return;
            }
            int es = Tensors.DTypeInfo.SizeOf(info.DType);
            using var v = src.Tensors.ReadRange(name, firstRow * cols * es, n * cols * es);
            Tensors.TensorConvert.ToFloat32(info, v.Bytes, dst);
        }
    }
}
