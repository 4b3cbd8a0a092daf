using System.Diagnostics;
using Converter.Formats.Onnx;
using Converter.Models;
using Converter.Decoder.Onnx;
using Converter.Numerics.Int4;
using Converter.Staging;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Pipelines;

/// <summary>What to export.</summary>
/// <param name="Int4GroupSize">int4: group size (32, 64, 128). From a packed INT4 checkpoint it must match the
/// checkpoint's (null: take it); from a float/FP8 source null means 32.</param>
/// <param name="Int4Symmetric">int4: symmetric codes (no zero points); null: the checkpoint's, or symmetric.</param>
/// <param name="Int4Targets">int4: which projections become INT4. Routed experts always do (QMoE). RoutedExperts
/// (default) keeps every other projection float32 unless the source stores it packed (then it stays INT4, exactly);
/// AllLinear also quantizes attention, dense MLP and shared-expert projections (MatMulNBits). Router, embeddings,
/// norms and lm_head stay float32.</param>
/// <param name="Rank">Export one expert-parallel rank's graph (its local experts only; see <see cref="OnnxRankExperts"/>).</param>
/// <param name="Slice">Export decoder layers [First, End) only, without the head (see <see cref="OnnxLayerSlice"/>).</param>
public sealed record OnnxExportOptions(
    OnnxWeightFormat Weights = OnnxWeightFormat.Fp32,
    bool Overwrite = false,
    bool DiagnosticOutputs = false,
    bool AttentionMaskInput = true,
    bool PositionIdsInput = true,
    bool Fp8CastDequantize = false,
    int? Int4GroupSize = null,
    bool? Int4Symmetric = null,
    Int4Targets Int4Targets = Int4Targets.RoutedExperts,
    CommSimulation? Comm = null,
    OnnxRankExperts? Rank = null,
    OnnxLayerSlice? Slice = null)
{
    /// <summary>Elements of a plain BF16/F32 source tensor mapped at a time (16-32 MB); smaller only to test slab edges.</summary>
    public long SlabElements { get; init; } = 1 << 23;

    /// <summary>A decoder with a KV cache (past_key_values.N.key/.value in, present.N.key/.value out, onnxruntime-genai's
    /// names) that runs prefill and single-token decode in one graph.</summary>
    public bool KvCache { get; init; }

    /// <summary>int4: MatMulNBits accuracy_level of every INT4 projection (0: float32 activations, the default; 4: int8
    /// activations, faster decode on CPU; see <see cref="OnnxInt4Tuning"/>).</summary>
    public int Int4AccuracyLevel { get; init; }

    /// <summary>An export of the same checkpoint with the same weight options (another expert-parallel rank's): its
    /// initializers that no routed expert feeds are copied from it file to file instead of being converted again.</summary>
    public string? ReuseFrom { get; init; }

    /// <summary>Benchmark baseline: sparse or compressed attention replaced by full causal attention (<see cref="OnnxDecoderOptions.FullAttentionBaseline"/>).</summary>
    public bool FullAttentionBaseline { get; init; }

    /// <summary>Continue an interrupted export to the same folder from its last finished initializer (see <see cref="StagingArea"/>).</summary>
    public bool Resume { get; init; }

    public TestFault? Fault { get; init; }

    /// <summary>The output is scratch inside a caller's own staging folder (layer slices, rank models): written in a
    /// temporary folder renamed into place as before, without a staging folder, journal or manifest of its own.</summary>
    public bool Scratch { get; init; }
}

public sealed record OnnxExportResult(string OutputDirectory, string ModelPath, long DataBytes, int Initializers,
    IReadOnlyList<string> HiddenStateOutputs, IReadOnlyList<string> RoutingOutputs, TimeSpan Elapsed);

/// <summary>
/// checkpoint folder -> ONNX folder (model.onnx + model.onnx.data). The checkpoint is opened and validated
/// first (a corrupt input fails before any output exists); initializers are then streamed tensor by tensor
/// into a staging folder that is renamed into place only when everything was written.
/// </summary>
public static class OnnxExportPipeline
{
    public static OnnxExportResult Run(string modelDir, string outputDir, OnnxExportOptions options,
        ILogger? logger = null, IProgress<PipelineProgress>? progress = null, CancellationToken cancellation = default)
    {
        using var ckpt = ModelCheckpoint.Open(modelDir);
        return Run(ckpt, outputDir, options, logger, progress, cancellation);
    }

    /// <summary>Exports an opened checkpoint (the checkpoint stays open; config.json is copied from its folder).</summary>
    public static OnnxExportResult Run(ModelCheckpoint ckpt, string outputDir, OnnxExportOptions options,
        ILogger? logger = null, IProgress<PipelineProgress>? progress = null, CancellationToken cancellation = default)
    {
        logger ??= NullLogger.Instance;
        if (options.Scratch) return Export(ckpt, outputDir, options, null, logger, progress, cancellation);
        using var staging = StagingArea.Begin(outputDir, new StagingOptions("export onnx", Overwrite: options.Overwrite)
        {
            AcceptEmptyFolder = true, Resume = options.Resume, Fault = options.Fault,
            Fingerprint = RunFingerprint.Of("export onnx", (options with { Overwrite = false, Resume = false, Fault = null }).ToString(), ckpt.Directory, options.ReuseFrom ?? ""),
        }, logger);
        try { return Export(ckpt, outputDir, options, staging, logger, progress, cancellation); }
        catch (Exception e) when (staging.Explain(e) is var better && better != e) { throw better; }
    }

    private static OnnxExportResult Export(ModelCheckpoint ckpt, string outputDir, OnnxExportOptions options, StagingArea? staging,
        ILogger logger, IProgress<PipelineProgress>? progress, CancellationToken cancellation)
    {
        var clock = Stopwatch.StartNew();
        string modelDir = ckpt.Directory;
        var arch = ckpt.Architecture;
        if (arch.Onnx == null)
            throw new NotSupportedException($"{modelDir}: ONNX export does not support model_type '{arch.ModelType}'");
        Int4Scheme? scheme = null;
        IReadOnlySet<string>? denseInt4 = null;
        if (options.Weights == OnnxWeightFormat.Int4) (scheme, denseInt4) = Int4Selection(ckpt, options, logger);
        logger.LogInformation("Exporting {Dir}: {Type}, {Layers} layers, {Experts} routed experts, source {Layout}, weights {Weights}",
            modelDir, arch.ModelType, arch.NumLayers, arch.NumRoutedExperts, ckpt.Layout, options.Weights);
        if (options.Slice != null) logger.LogInformation("Only {Slice}: no final norm or lm_head", options.Slice);
        else if (arch.NumMtpLayers > 0)
            logger.LogInformation("MTP layer(s) {First}..{Last} are not exported: they are not part of the main forward pass",
                arch.NumLayers, arch.NumLayers + arch.NumMtpLayers - 1);

        var export = OnnxDecoderGraph.Build(arch, new OnnxDecoderOptions(options.Weights, options.AttentionMaskInput,
            options.PositionIdsInput, options.DiagnosticOutputs, options.Fp8CastDequantize, scheme, denseInt4, options.Comm, options.Rank, options.Slice)
        { KvCache = options.KvCache, FullAttentionBaseline = options.FullAttentionBaseline });
        if (options.Int4AccuracyLevel != 0)
        {
            if (options.Weights != OnnxWeightFormat.Int4) throw new ArgumentException("--int4-accuracy-level applies to --weights int4 only");
            int n = OnnxInt4Tuning.SetAccuracyLevel(export.Model, options.Int4AccuracyLevel);
            logger.LogInformation("MatMulNBits accuracy_level {Level} on {Count} node(s)", options.Int4AccuracyLevel, n);
        }
        if (options.Comm is { Any: true }) logger.LogInformation("Simulating expert traffic: {Comm}", options.Comm);
        using var writer = staging == null ? new OnnxExternalDataWriter(outputDir, options.Overwrite)
            : new OnnxExternalDataWriter(staging.Output, overwrite: true, inPlace: true) { Journal = staging.Journal, Cancellation = cancellation };
        int done = 0, reused = 0;
        if (staging != null)
        {
            staging.Plan(export.Initializers.Sum(p => OnnxTensors.ByteLength(p.Type, p.Dims) + 64));
            if (staging.Resumed)
            {
                done = writer.Resume(export.Initializers.Select(p => (p.Name, p.Type, p.Dims)).ToList());
                foreach (var f in Directory.EnumerateFiles(staging.Output))
                    if (Path.GetFileName(f) != OnnxExternalDataWriter.DataFileName) File.Delete(f); // side files are written again
                logger.LogInformation("resume: {Kept} of {Count} initializers kept", done, export.Initializers.Count);
            }
        }
        var weights = new OnnxWeightWriter(ckpt, scheme, options.SlabElements);
        using var donor = options.ReuseFrom == null ? null : new OnnxExternalInitializers(options.ReuseFrom);
        foreach (var p in export.Initializers.Skip(done))
        {
            if (staging != null) staging.Step(cancellation);
            else cancellation.ThrowIfCancellationRequested();
            using (var sink = writer.Begin(p.Name, p.Type, p.Dims))
            {
                if (donor != null && !Array.Exists(p.Tensors, arch.IsRoutedExpert)
                    && donor.TryGet(p.Name, (int)p.Type, p.Dims, out var from))
                {
                    sink.CopyFrom(donor.Data, donor.DataPath, from.Offset, from.Length);
                    reused++;
                }
                else
                {
                    weights.Write(p, sink);
                }
                sink.Complete();
            }
            done++;
            progress?.Report(new PipelineProgress(done, export.Initializers.Count, writer.DataBytes, p.Name));
            logger.LogDebug("{Name} {Type} [{Dims}]", p.Name, p.Type, string.Join(", ", p.Dims));
        }
        if (donor != null) logger.LogInformation("{Reused} of {Count} initializers copied from {Donor}", reused, export.Initializers.Count, options.ReuseFrom);
        File.Copy(Path.Combine(modelDir, "config.json"), Path.Combine(writer.StagingDirectory, "config.json"));
        if (options.Rank == null && options.Slice == null)
        {
            var side = OnnxServingFiles.Write(ckpt, writer.StagingDirectory, options.KvCache, logger);
            logger.LogInformation("Serving files: {Files}", string.Join(", ", side));
        }
        long dataBytes = writer.DataBytes;
        writer.Commit(export.Model);
        staging?.Commit(cancellation);
        var destination = staging?.Destination ?? writer.Destination;
        var modelPath = Path.Combine(destination, OnnxExternalDataWriter.ModelFileName);
        logger.LogInformation("Wrote {Path}: {Count} initializers, {Bytes:N0} bytes of external data in {Secs:F1} s",
            modelPath, export.Initializers.Count, dataBytes, clock.Elapsed.TotalSeconds);
        return new OnnxExportResult(destination, modelPath, dataBytes, export.Initializers.Count,
            export.HiddenStateOutputs, export.RoutingOutputs, clock.Elapsed);
    }

    /// <summary>
    /// The INT4 scheme and the dense projections that become MatMulNBits; checks every INT4 tensor's shape against
    /// the group size before anything is written (a group size that does not divide K names the tensor).
    /// </summary>
    private static (Int4Scheme, IReadOnlySet<string>) Int4Selection(ModelCheckpoint ckpt, OnnxExportOptions o, ILogger logger)
    {
        Int4Scheme scheme;
        if (ckpt.Int4Config is { } stored)
        {
            if (o.Int4GroupSize is { } gs && gs != stored.GroupSize)
                throw new ArgumentException($"{ckpt.Directory}: the checkpoint is packed INT4 with group size {stored.GroupSize}; --group-size {gs} would need requantization (omit it to keep the codes exactly)");
            if (o.Int4Symmetric is { } sym && sym != stored.Symmetric)
                throw new ArgumentException($"{ckpt.Directory}: the checkpoint is packed INT4 {(stored.Symmetric ? "symmetric" : "asymmetric")}; the export asked for {(sym ? "symmetric" : "asymmetric")}");
            scheme = stored.Scheme;
        }
        else
        {
            scheme = new Int4Scheme(o.Int4GroupSize ?? 32, o.Int4Symmetric ?? true);
        }
        if (scheme.GroupSize is not (32 or 64 or 128))
            throw new ArgumentException($"INT4 group size {scheme.GroupSize} is not supported by this export (32, 64 or 128)");
        var dense = new HashSet<string>(StringComparer.Ordinal);
        int packed = 0, quantized = 0;
        foreach (var t in ckpt.Architecture.ExpectedTensors())
        {
            if (!t.Role.IsLinearWeight || t.Shape.Length != 2 || t.Role.IsMtp || t.Role.Layer >= ckpt.Architecture.NumLayers) continue; // MTP is not exported
            bool isPacked = ckpt.IsPackedInt4(t.Name);
            bool expert = t.Role.Kind == TensorKind.RoutedExpert;
            if (!expert && !isPacked && o.Int4Targets != Int4Targets.AllLinear) continue;
            scheme.CheckShape((int)t.Shape[0], (int)t.Shape[1], t.Name);
            if (!expert) dense.Add(t.Name);
            if (isPacked) packed++; else quantized++;
        }
        logger.LogInformation("int4 g{Group} {Sym}: {Packed} weights kept from the packed source, {Quantized} quantized with rtn, {Dense} dense projection(s) as MatMulNBits",
            scheme.GroupSize, scheme.Symmetric ? "symmetric" : "asymmetric", packed, quantized, dense.Count);
        return (scheme, dense);
    }
}
