using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Numerics;
using Converter.Staging;
using Converter.Tensors;
using Microsoft.Extensions.Logging;

namespace Converter.Pipelines;

public enum QuantizeScheme { Fp8Block, Bf16, Int4 }

public sealed record QuantizeOptions(QuantizeScheme Scheme, string Output, long MaxShardBytes = 5_000_000_000, bool Overwrite = false)
{
    /// <summary>Settings of <see cref="QuantizeScheme.Int4"/> (defaults when null).</summary>
    public Int4Options? Int4 { get; init; }

    /// <summary>Continue an interrupted run to the same output (its finished shards are kept; see <see cref="StagingArea"/>).</summary>
    public bool Resume { get; init; }

    public TestFault? Fault { get; init; }

    /// <summary>What a resume must find unchanged (the output, overwrite and resume themselves excluded).</summary>
    internal string Fingerprint(string source) =>
        RunFingerprint.Of("quantize", (this with { Output = "", Overwrite = false, Resume = false, Fault = null }).ToString(),
            source, Int4?.Calibration ?? "");
}

public sealed record QuantizeResult(string Output, int Tensors, int Shards, long BytesWritten, TimeSpan Elapsed);

/// <summary>
/// Re-encodes a checkpoint tensor by tensor: BF16/F16/F32 to DeepSeek's FP8 128x128-block layout, or FP8 back
/// to BF16 (what fp8_cast_bf16.py does, on CPU). Work proceeds in slabs of whole 128-row blocks, so memory
/// stays bounded by a slab, whatever the tensor or checkpoint size.
/// </summary>
public static partial class QuantizePipeline
{
    /// <summary>Rows per slab: whole FP8 blocks, about 32 MB of source per slab for wide tensors.</summary>
    private static int SlabRows(int cols, int elementSize) =>
        Math.Max(128, (int)Math.Min(int.MaxValue, 32L * 1024 * 1024 / Math.Max(1, (long)cols * elementSize)) / 128 * 128);

    private sealed record Job(string Source, TensorSpec Output, TensorSpec? Scale, Action<ModelCheckpoint, Job, WriteBehindQueue, SafetensorsWriter> Run)
    {
        /// <summary>Further tensors the job writes itself through the writer (INT4 parts), in plan order.</summary>
        public IReadOnlyList<TensorSpec> Parts { get; init; } = [];
        /// <summary>True when the job writes <see cref="Output"/> itself too, synchronously through the writer (no tensor is begun for it).</summary>
        public bool WritesAll { get; init; }
    }

    public static QuantizeResult Run(ModelCheckpoint src, QuantizeOptions options, ILogger log, IProgress<PipelineProgress>? progress = null,
        CancellationToken cancellation = default)
    {
        var clock = Stopwatch.StartNew();
        using var staging = StagingArea.Begin(options.Output, new StagingOptions("quantize", Overwrite: options.Overwrite)
            { Resume = options.Resume, Fingerprint = options.Fingerprint(src.Directory), Fault = options.Fault }, log);
        try
        {
            return Run(src, options, staging, log, progress, clock, cancellation);
        }
        catch (Exception e) when (staging.Explain(e) is var better && better != e) { throw better; }
    }

    private static QuantizeResult Run(ModelCheckpoint src, QuantizeOptions options, StagingArea staging, ILogger log, IProgress<PipelineProgress>? progress,
        Stopwatch clock, CancellationToken cancellation)
    {
        Int4Context? int4 = options.Scheme == QuantizeScheme.Int4 ? Int4Context.Create(src, options.Int4 ?? new Int4Options(), log) : null;
        using var int4Scope = int4;
        var jobs = int4 != null ? PlanInt4(src, int4) : Plan(src, options.Scheme);
        var plan = new List<TensorSpec>();
        foreach (var j in jobs)
        {
            plan.Add(j.Output);
            if (j.Scale != null) plan.Add(j.Scale);
            plan.AddRange(j.Parts);
        }
        log.LogInformation("{Scheme}: {Jobs} tensors from {Dir} ({Bytes:F2} GB) to {Out}",
            options.Scheme, plan.Count, src.Directory, src.Tensors.TotalBytes / 1e9, options.Output);

        using var writer = new SafetensorsWriter(staging.Output, plan, options.MaxShardBytes, overwrite: true, inPlace: true) { Journal = staging.Journal };
        staging.Plan(plan.Sum(t => t.ByteLength));
        int first = 0;
        long bytes = 0;
        if (staging.Resumed)
        {
            int kept = writer.Resume();
            // restart at the first job with a tensor outside the kept shards; the kept tensors it writes are discarded
            while (first < jobs.Count && Tensors(jobs[first]).All(t => writer.IsKept(t.Name)))
                bytes += Tensors(jobs[first++]).Sum(t => t.ByteLength);
            log.LogInformation("resume: {Kept} of {Shards} shard(s) kept, restarting at tensor {First} of {Jobs}", kept, writer.ShardNames.Count, first + 1, jobs.Count);
        }
        using (var queue = new WriteBehindQueue())
        {
            for (int i = first; i < jobs.Count; i++)
            {
                staging.Step(cancellation);
                var job = jobs[i];
                if (job.WritesAll) queue.Drain(); // it writes through the writer itself, so everything before it must be out
                else queue.BeginTensor(writer, job.Output.Name);
                job.Run(src, job, queue, writer);
                bytes += job.Output.ByteLength + (job.Scale?.ByteLength ?? 0) + job.Parts.Sum(p => p.ByteLength);
                progress?.Report(new PipelineProgress(i + 1, jobs.Count, bytes, job.Output.Name));
            }
            queue.Drain();
        }
        WriteSideFiles(src, writer.StagingDirectory, options.Scheme, int4?.Config);
        int4?.LogSummary();
        writer.Commit();
        staging.Commit(cancellation);
        log.LogInformation("wrote {Shards} shard(s), {Bytes:F2} GB in {Secs:F1} s", writer.ShardNames.Count, bytes / 1e9, clock.Elapsed.TotalSeconds);
        return new QuantizeResult(options.Output, plan.Count, writer.ShardNames.Count, bytes, clock.Elapsed);
    }

    private static IEnumerable<TensorSpec> Tensors(Job j) => j.Scale == null ? [j.Output, .. j.Parts] : [j.Output, j.Scale, .. j.Parts];

    private static List<Job> Plan(ModelCheckpoint src, QuantizeScheme scheme)
    {
        if (src.Layout == WeightLayout.PackedInt4)
            throw new NotSupportedException($"{src.Directory}: packed INT4 checkpoints cannot be re-encoded to {scheme}");
        var arch = src.Architecture;
        var jobs = new List<Job>();
        foreach (var name in src.Tensors.Names)
        {
            var info = src.Tensors.Info(name);
            var role = arch.Classify(name);
            if (role.Kind == TensorKind.QuantScale)
            {
                if (scheme == QuantizeScheme.Fp8Block) jobs.Add(new Job(name, Spec(info, info.DType), null, CopyJob));
                continue; // bf16: scales are folded into their weights
            }
            var stored = src.Encoding(name);
            if (scheme == QuantizeScheme.Fp8Block)
            {
                var target = info.Shape.Length == 2 && stored == WeightEncoding.Dense ? arch.OfficialEncoding(role) : WeightEncoding.Dense;
                var (rows, cols) = ((int)info.Shape[0], info.Shape.Length == 2 ? (int)info.Shape[1] : 1);
                switch (target)
                {
                    case WeightEncoding.Fp8Block:
                    {
                        var (r, c) = Fp8BlockQuantizer.ScaleShape(rows, cols);
                        jobs.Add(new Job(name, Spec(info, DType.F8_E4M3), new TensorSpec(arch.ScaleTensorName(name), DType.F32, [r, c]), Fp8QuantizeJob));
                        break;
                    }
                    case WeightEncoding.Fp8BlockPow2:
                    {
                        var (r, c) = Fp8Pow2BlockQuantizer.ScaleShape(rows, cols);
                        jobs.Add(new Job(name, Spec(info, DType.F8_E4M3), new TensorSpec(arch.ScaleTensorName(name), DType.F8_E8M0, [r, c]), Fp8Pow2QuantizeJob));
                        break;
                    }
                    case WeightEncoding.Fp4Group32:
                    {
                        if (cols % Fp4BlockQuantizer.GroupSize != 0)
                            throw new InvalidDataException($"{info.File}: '{name}' {info.ShapeText} cannot be stored as FP4: {cols} values a row is not whole 1x{Fp4BlockQuantizer.GroupSize} groups");
                        var (pr, pc) = Fp4BlockQuantizer.PackedShape(rows, cols);
                        var (r, c) = Fp4BlockQuantizer.ScaleShape(rows, cols);
                        jobs.Add(new Job(name, new TensorSpec(name, DType.I8, [pr, pc]), new TensorSpec(arch.ScaleTensorName(name), DType.F8_E8M0, [r, c]), Fp4QuantizeJob));
                        break;
                    }
                    default:
                        jobs.Add(new Job(name, Spec(info, info.DType), null, CopyJob));
                        break;
                }
            }
            else
            {
                if (stored.IsBlockScaled())
                {
                    var (rows, cols) = src.LogicalShape(name);
                    jobs.Add(new Job(name, new TensorSpec(name, DType.BF16, [rows, cols]), null, BlockToBf16Job));
                }
                else if (info.DType is DType.F32 or DType.F16 or DType.F64 && arch.NarrowsToBf16(role))
                    jobs.Add(new Job(name, Spec(info, DType.BF16), null, FloatToBf16Job));
                else
                    jobs.Add(new Job(name, Spec(info, info.DType), null, CopyJob));
            }
        }
        if (arch.UsesSafetensorsSaveOrder) SortAsSafetensorsSaves(jobs);
        return jobs;
    }

    /// <summary>Orders the output as huggingface safetensors' save_file lays it out: dtype (its enum, descending),
    /// then the name. There a scale (E8M0) comes before its weight (e4m3, I8), so each scale becomes a job of its own
    /// that computes the scales from the source slab by slab (block maxima only; the weight's job takes the same
    /// maxima again for its codes: the same arithmetic, so the same bytes).</summary>
    private static void SortAsSafetensorsSaves(List<Job> jobs)
    {
        var split = new List<Job>();
        foreach (var j in jobs)
        {
            if (j.Scale == null) { split.Add(j); continue; }
            split.Add(j with { Scale = null });
            split.Add(new Job(j.Source, j.Scale, null, j.Run == Fp4QuantizeJob ? Fp4ScaleJob : Fp8Pow2ScaleJob));
        }
        var sorted = split.OrderByDescending(j => DTypeInfo.SafetensorsRank(j.Output.DType)).ThenBy(j => j.Output.Name, StringComparer.Ordinal).ToList();
        jobs.Clear();
        jobs.AddRange(sorted);
    }

    private static TensorSpec Spec(TensorInfo info, DType dtype) => new(info.Name, dtype, info.Shape);

    private static void CopyJob(ModelCheckpoint src, Job job, WriteBehindQueue output, SafetensorsWriter _)
    {
        // Unchanged tensors move kernel to kernel (copy_file_range), as cp does: no user-space copy, no page faults.
        var info = src.Tensors.Info(job.Source);
        output.Post(stream =>
        {
            if (stream is not FileStream) return; // a tensor a resumed run already has
            using var handle = File.OpenHandle(info.File, FileMode.Open, FileAccess.Read, FileShare.Read);
            FileRangeCopy.Copy(handle, info.File, info.FileOffset, (FileStream)stream, info.ByteLength, new byte[1 << 20]);
        });
    }

    /// <summary>Visits a 2-D tensor in slabs of whole 128-row blocks, each mapped only while it is processed.</summary>
    private static void ForEachSlab(ModelCheckpoint src, string name, Action<TensorData, int, int> body)
    {
        var info = src.Tensors.Info(name);
        int rows = (int)info.Shape[0], cols = info.Shape.Length > 1 ? (int)info.Shape[1] : 1;
        int es = DTypeInfo.SizeOf(info.DType);
        int slab = SlabRows(cols, es);
        for (int r0 = 0; r0 < rows; r0 += slab)
        {
            int n = Math.Min(slab, rows - r0);
            using var view = src.Tensors.ReadRange(name, (long)r0 * cols * es, (long)n * cols * es);
            body(view, r0, n);
        }
    }

    private static void Fp8QuantizeJob(ModelCheckpoint src, Job job, WriteBehindQueue output, SafetensorsWriter writer)
    {
        var info = src.Tensors.Info(job.Source);
        var (rows, cols) = info.Matrix;
        int scaleCols = (cols + 127) / 128;
        var scales = new float[((rows + 127) / 128) * scaleCols];
        float[]? widened = null;
        ForEachSlab(src, job.Source, (view, r0, n) =>
        {
            int count = n * cols;
            var buffer = output.Rent(count);
            var fp8 = buffer.AsSpan(0, count);
            var scaleSlice = scales.AsSpan(r0 / 128 * scaleCols, (n + 127) / 128 * scaleCols);
            if (info.DType == DType.BF16)
                Fp8BlockQuantizer.Quantize(view.As<ushort>(), n, cols, fp8, scaleSlice);
            else
            {
                if (widened == null || widened.Length < count) widened = new float[count];
                TensorConvert.ToFloat32(info, view.Bytes, widened.AsSpan(0, count));
                Fp8BlockQuantizer.Quantize(widened.AsSpan(0, count), n, cols, fp8, scaleSlice);
            }
            output.Write(buffer, count);
        });
        output.Post(_ => writer.Write(job.Scale!.Name, MemoryMarshal.AsBytes(scales.AsSpan())));
    }

    /// <summary>BF16/F16/F32 to e4m3 with power-of-two E8M0 128x128 scales (the scale after the codes unless the
    /// job has none: then a scale job of its own writes it).</summary>
    private static void Fp8Pow2QuantizeJob(ModelCheckpoint src, Job job, WriteBehindQueue output, SafetensorsWriter writer)
    {
        var info = src.Tensors.Info(job.Source);
        var (rows, cols) = info.Matrix;
        int scaleCols = (cols + 127) / 128;
        var scales = new byte[((rows + 127) / 128) * scaleCols];
        float[]? widened = null;
        ForEachSlab(src, job.Source, (view, r0, n) =>
        {
            int count = n * cols;
            var buffer = output.Rent(count);
            var scaleSlice = scales.AsSpan(r0 / 128 * scaleCols, (n + 127) / 128 * scaleCols);
            Pow2Slab(info, view, n, cols, ref widened, buffer.AsSpan(0, count), scaleSlice, job.Source, r0);
            output.Write(buffer, count);
        });
        if (job.Scale != null) output.Post(_ => writer.Write(job.Scale.Name, scales));
    }

    private static void Fp8Pow2ScaleJob(ModelCheckpoint src, Job job, WriteBehindQueue output, SafetensorsWriter writer)
    {
        var info = src.Tensors.Info(job.Source);
        var (rows, cols) = info.Matrix;
        int scaleCols = (cols + 127) / 128;
        var scales = new byte[((rows + 127) / 128) * scaleCols];
        float[]? widened = null;
        ForEachSlab(src, job.Source, (view, r0, n) =>
        {
            var slice = scales.AsSpan(r0 / 128 * scaleCols, (n + 127) / 128 * scaleCols);
            try
            {
                if (info.DType == DType.BF16) Fp8Pow2BlockQuantizer.Scales(view.As<ushort>(), n, cols, slice);
                else Fp8Pow2BlockQuantizer.Scales(Widen(info, view, n * cols, ref widened), n, cols, slice);
            }
            catch (ArgumentException e) { throw new InvalidDataException($"{info.File}: '{job.Source}' rows from {r0}: {e.Message}"); }
        });
        output.Post(stream => stream.Write(scales));
    }

    private static ReadOnlySpan<float> Widen(TensorInfo info, TensorData view, int count, ref float[]? widened)
    {
        if (widened == null || widened.Length < count) widened = new float[count];
        TensorConvert.ToFloat32(info, view.Bytes, widened.AsSpan(0, count));
        return widened.AsSpan(0, count);
    }

    private static void Pow2Slab(TensorInfo info, TensorData view, int n, int cols, ref float[]? widened, Span<byte> codes, Span<byte> scales, string name, int r0)
    {
        try
        {
            if (info.DType == DType.BF16) Fp8Pow2BlockQuantizer.Quantize(view.As<ushort>(), n, cols, codes, scales);
            else Fp8Pow2BlockQuantizer.Quantize(Widen(info, view, n * cols, ref widened), n, cols, codes, scales);
        }
        catch (ArgumentException e) { throw new InvalidDataException($"{info.File}: '{name}' rows from {r0}: {e.Message}"); }
    }

    /// <summary>BF16/F16/F32 to FP4 e2m1 (I8, two a byte) with E8M0 1x32 scales.</summary>
    private static void Fp4QuantizeJob(ModelCheckpoint src, Job job, WriteBehindQueue output, SafetensorsWriter writer)
    {
        var info = src.Tensors.Info(job.Source);
        var (rows, cols) = info.Matrix;
        int groups = cols / Fp4BlockQuantizer.GroupSize;
        var scales = new byte[rows * groups];
        float[]? widened = null;
        ForEachSlab(src, job.Source, (view, r0, n) =>
        {
            int bytes = n * cols / 2;
            var buffer = output.Rent(bytes);
            Fp4Slab(info, view, n, cols, ref widened, buffer.AsSpan(0, bytes), scales.AsSpan(r0 * groups, n * groups), job.Source, r0);
            output.Write(buffer, bytes);
        });
        if (job.Scale != null) output.Post(_ => writer.Write(job.Scale.Name, scales));
    }

    private static void Fp4ScaleJob(ModelCheckpoint src, Job job, WriteBehindQueue output, SafetensorsWriter writer)
    {
        var info = src.Tensors.Info(job.Source);
        var (rows, cols) = info.Matrix;
        int groups = cols / Fp4BlockQuantizer.GroupSize;
        var scales = new byte[rows * groups];
        float[]? widened = null;
        ForEachSlab(src, job.Source, (view, r0, n) =>
        {
            var slice = scales.AsSpan(r0 * groups, n * groups);
            try
            {
                if (info.DType == DType.BF16) Fp4BlockQuantizer.Scales(view.As<ushort>(), n, cols, slice);
                else Fp4BlockQuantizer.Scales(Widen(info, view, n * cols, ref widened), n, cols, slice);
            }
            catch (ArgumentException e) { throw new InvalidDataException($"{info.File}: '{job.Source}' rows from {r0}: {e.Message}"); }
        });
        output.Post(stream => stream.Write(scales));
    }

    private static void Fp4Slab(TensorInfo info, TensorData view, int n, int cols, ref float[]? widened, Span<byte> packed, Span<byte> scales, string name, int r0)
    {
        try
        {
            if (info.DType == DType.BF16) Fp4BlockQuantizer.Quantize(view.As<ushort>(), n, cols, packed, scales);
            else Fp4BlockQuantizer.Quantize(Widen(info, view, n * cols, ref widened), n, cols, packed, scales);
        }
        catch (ArgumentException e) { throw new InvalidDataException($"{info.File}: '{name}' rows from {r0}: {e.Message}"); }
    }

    /// <summary>Any block-scaled weight (FP8 with float32 or E8M0 scales, FP4) to BF16, slab by slab of whole scale rows.</summary>
    private static void BlockToBf16Job(ModelCheckpoint src, Job job, WriteBehindQueue output, SafetensorsWriter _)
    {
        var (rows, cols) = src.LogicalShape(job.Source);
        int slab = SlabRows((int)cols, 2);
        for (long r0 = 0; r0 < rows; r0 += slab)
        {
            int n = (int)Math.Min(slab, rows - r0);
            int count = checked(n * (int)cols);
            var buffer = output.Rent(count * 2);
            src.ReadRowsBf16(job.Source, r0, MemoryMarshal.Cast<byte, ushort>(buffer.AsSpan(0, count * 2)));
            output.Write(buffer, count * 2);
        }
    }

    private static void FloatToBf16Job(ModelCheckpoint src, Job job, WriteBehindQueue output, SafetensorsWriter _)
    {
        var info = src.Tensors.Info(job.Source);
        float[]? widened = null;
        ForEachSlab(src, job.Source, (view, _, n) =>
        {
            int count = view.Length / DTypeInfo.SizeOf(info.DType);
            if (widened == null || widened.Length < count) widened = new float[count];
            TensorConvert.ToFloat32(info, view.Bytes, widened.AsSpan(0, count));
            var buffer = output.Rent(count * 2);
            Bf16.FromSingle(widened.AsSpan(0, count), MemoryMarshal.Cast<byte, ushort>(buffer.AsSpan(0, count * 2)));
            output.Write(buffer, count * 2);
        });
    }

    /// <summary>config.json with the scheme's quantization_config, and every non-weight file copied as is.</summary>
    private static void WriteSideFiles(ModelCheckpoint src, string staging, QuantizeScheme scheme, Formats.CompressedTensors.CompressedTensorsConfig? int4)
    {
        var config = (JsonObject)src.Architecture.Config.Root.DeepClone();
        if (int4 != null)
        {
            config["quantization_config"] = int4.ToJson();
            config["torch_dtype"] = "bfloat16";
        }
        else if (scheme == QuantizeScheme.Fp8Block)
            config["quantization_config"] = src.Architecture.OfficialQuantizationConfig();
        else
        {
            config.Remove("quantization_config");
            config["torch_dtype"] = "bfloat16";
        }
        File.WriteAllText(Path.Combine(staging, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        foreach (var file in Directory.EnumerateFiles(src.Directory))
        {
            var name = Path.GetFileName(file);
            if (name == "config.json" || name == SafetensorsCheckpoint.IndexFileName || name.EndsWith(".safetensors", StringComparison.Ordinal))
                continue;
            File.Copy(file, Path.Combine(staging, name), overwrite: true); // a resumed run may have copied it already
        }
    }
}
