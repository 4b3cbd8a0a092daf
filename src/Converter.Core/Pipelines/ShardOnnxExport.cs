using Converter.Formats.Onnx;
using Converter.Models;
using Converter.Decoder.Onnx;
using Converter.Sharding;
using Microsoft.Extensions.Logging;

namespace Converter.Pipelines;

/// <summary>
/// One ONNX model per expert-parallel rank (<c>shard --onnx</c>): the whole forward graph (attention, dense layers,
/// router and shared experts replicated, as the rank checkpoints hold them) whose MoE layers compute only the rank's
/// local experts, with per MoE layer an input <c>moe_peer_sum.L</c> and an output <c>moe_partial.L</c> (see
/// <see cref="OnnxRankExperts"/>). Weights are read from the source checkpoint: a rank's tensors are byte copies of
/// the source's, and a rank folder alone does not open as a full checkpoint (its other experts are missing).
/// </summary>
public static class ShardOnnxExport
{
    /// <summary>Refuses before anything is written: a model the ONNX exporter does not map.</summary>
    public static void Check(ModelCheckpoint src)
    {
        if (src.Architecture.Onnx == null)
            throw new NotSupportedException($"{src.Directory}: --onnx does not support model_type '{src.Architecture.ModelType}'");
    }

    /// <summary>The local experts of <paramref name="rank"/> in every MoE layer of the main forward pass (MTP layers are not exported).</summary>
    public static OnnxRankExperts LocalExperts(ExpertPlacement placement, int rank, int hiddenLayers)
    {
        var layers = new Dictionary<int, OnnxLocalExperts>();
        foreach (var l in placement.Layers)
        {
            if (l.Layer >= hiddenLayers) continue;
            var (experts, shares) = Sharding.RankExperts.Slots(l, rank);
            layers[l.Layer] = new OnnxLocalExperts(experts, Array.ConvertAll(shares, x => (float)x));
        }
        return new OnnxRankExperts(rank, placement.Ranks, layers, placement.Label);
    }

    /// <summary>Writes <c>model.onnx</c> and <c>model.onnx.data</c> of <paramref name="rank"/> into <paramref name="rankDir"/>.</summary>
    /// <param name="reuseFrom">An earlier rank's folder written by this method: the replicated weights (everything but the
    /// routed experts) are copied from its model.onnx.data instead of being converted again.</param>
    public static OnnxExportResult Write(ModelCheckpoint src, ExpertPlacement placement, int rank, string rankDir, OnnxWeightFormat weights, ILogger log,
        string? reuseFrom = null, CancellationToken cancellation = default)
    {
        var tmp = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(rankDir))!, "." + Path.GetFileName(rankDir) + ".onnx");
        var result = OnnxExportPipeline.Run(src, tmp, new OnnxExportOptions(weights, Rank: LocalExperts(placement, rank, src.Architecture.NumLayers)) { ReuseFrom = reuseFrom, Scratch = true }, log, null, cancellation);
        try
        {
            foreach (var name in new[] { OnnxExternalDataWriter.ModelFileName, OnnxExternalDataWriter.DataFileName })
                File.Move(Path.Combine(tmp, name), Path.Combine(rankDir, name));
        }
        finally
        {
            Directory.Delete(tmp, true);
        }
        return result with { OutputDirectory = rankDir, ModelPath = Path.Combine(rankDir, OnnxExternalDataWriter.ModelFileName) };
    }
}
