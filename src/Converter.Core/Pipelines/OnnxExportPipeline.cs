using System.Diagnostics;
using Converter.Formats.Onnx;
using Converter.Models;
using Converter.Models.DeepseekV3;
using Converter.Models.DeepseekV3.Onnx;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Pipelines;

/// <summary>What to export.</summary>
public sealed record OnnxExportOptions(
    OnnxWeightFormat Weights = OnnxWeightFormat.Fp32,
    bool Overwrite = false,
    bool DiagnosticOutputs = false,
    bool AttentionMaskInput = true,
    bool PositionIdsInput = true,
    bool Fp8CastDequantize = false,
    CommSimulation? Comm = null);

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
        logger ??= NullLogger.Instance;
        var clock = Stopwatch.StartNew();
        using var ckpt = ModelCheckpoint.Open(modelDir);
        if (ckpt.Architecture is not DeepseekV3Architecture arch)
            throw new NotSupportedException($"{modelDir}: ONNX export supports deepseek_v3, not {ckpt.Architecture.ModelType}");
        if (ckpt.Layout == WeightLayout.PackedInt4)
            throw new NotSupportedException($"{modelDir}: packed INT4 checkpoints cannot be exported to ONNX yet");
        var cfg = arch.Cfg;
        logger.LogInformation("Exporting {Dir}: deepseek_v3, {Layers} layers, {Experts} routed experts, source {Layout}, weights {Weights}",
            modelDir, cfg.NumHiddenLayers, cfg.NRoutedExperts, ckpt.Layout, options.Weights);
        if (cfg.NumNextnPredictLayers > 0)
            logger.LogInformation("MTP layer(s) {First}..{Last} are not exported: they are not part of the main forward pass",
                cfg.NumHiddenLayers, cfg.NumHiddenLayers + cfg.NumNextnPredictLayers - 1);

        var export = DeepseekV3OnnxGraph.Build(cfg, new DeepseekV3OnnxOptions(options.Weights, options.AttentionMaskInput,
            options.PositionIdsInput, options.DiagnosticOutputs, options.Fp8CastDequantize, options.Comm));
        if (options.Comm is { Any: true }) logger.LogInformation("Simulating expert traffic: {Comm}", options.Comm);
        using var writer = new OnnxExternalDataWriter(outputDir, options.Overwrite);
        var weights = new DeepseekV3OnnxWeightWriter(ckpt);
        int done = 0;
        foreach (var p in export.Initializers)
        {
            cancellation.ThrowIfCancellationRequested();
            using (var sink = writer.Begin(p.Name, p.Type, p.Dims))
            {
                weights.Write(p, sink);
                sink.Complete();
            }
            done++;
            progress?.Report(new PipelineProgress(done, export.Initializers.Count, writer.DataBytes, p.Name));
            logger.LogDebug("{Name} {Type} [{Dims}]", p.Name, p.Type, string.Join(", ", p.Dims));
        }
        File.Copy(Path.Combine(modelDir, "config.json"), Path.Combine(writer.StagingDirectory, "config.json"));
        long dataBytes = writer.DataBytes;
        writer.Commit(export.Model);
        var modelPath = Path.Combine(writer.Destination, OnnxExternalDataWriter.ModelFileName);
        logger.LogInformation("Wrote {Path}: {Count} initializers, {Bytes:N0} bytes of external data in {Secs:F1} s",
            modelPath, export.Initializers.Count, dataBytes, clock.Elapsed.TotalSeconds);
        return new OnnxExportResult(writer.Destination, modelPath, dataBytes, export.Initializers.Count,
            export.HiddenStateOutputs, export.RoutingOutputs, clock.Elapsed);
    }
}
