using Converter.Calibration;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Tensors;

namespace Converter.Sharding;

/// <summary>
/// Recorded routing of a set of tokens: per MoE layer, the k experts each token selected. Read from a calibration
/// folder or from a golden eval file's <c>route_topk_idx</c> [moe_layers, sequences, length, k], optionally a range of
/// its sequences (so one file can hold both the placement's calibration and held-out tokens).
/// </summary>
public sealed class RoutingTrace
{
    public required string Source { get; init; }
    public required int ExpertsPerToken { get; init; }
    public required int Tokens { get; init; }
    /// <summary>MoE layer to [tokens * k] expert ids.</summary>
    public required IReadOnlyDictionary<int, int[]> TopK { get; init; }

    public static RoutingTrace FromCalibration(CalibrationData c, string source) =>
        new() { Source = source, ExpertsPerToken = c.ExpertsPerToken, Tokens = c.Tokens, TopK = c.TopK };

    /// <summary>A calibration folder (checked against the model) or a safetensors file holding route_topk_idx.</summary>
    public static RoutingTrace Load(string path, ModelArchitecture arch, int firstSequence = 0, int endSequence = -1)
    {
        if (Directory.Exists(path))
        {
            var c = CalibrationData.Load(path);
            c.CheckMatches(arch, path);
            var all = FromCalibration(c, path);
            return endSequence < 0 && firstSequence == 0 ? all : Slice(all, c.Sequences, c.SequenceLength, firstSequence, endSequence, path);
        }
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no calibration folder or routing file here", path);
        using var f = SafetensorsFile.Open(path);
        const string name = "route_topk_idx";
        if (!f.Contains(name)) throw new InvalidDataException($"{path}: no tensor '{name}' (expected a golden eval file or a calibration folder)");
        var info = f.Info(name);
        var mainMoe = arch.MoeLayers().Where(l => l < arch.NumLayers).ToArray();
        int k = arch.NumExpertsPerToken;
        if (info.DType != DType.I32 || info.Shape.Length != 4 || info.Shape[0] != mainMoe.Length || info.Shape[3] != k)
            throw new InvalidDataException($"{path}: tensor '{name}' is {info.DType} {info.ShapeText}, expected I32 [{mainMoe.Length}, sequences, length, {k}] for this model");
        int seqs = (int)info.Shape[1], len = (int)info.Shape[2];
        int end = endSequence < 0 ? seqs : endSequence;
        if (firstSequence < 0 || end > seqs || firstSequence >= end)
            throw new ArgumentException($"{path}: sequence range [{firstSequence}, {end}) is outside the {seqs} sequences of '{name}'");
        using var d = f.Read(info);
        var ids = d.As<int>();
        var topk = new Dictionary<int, int[]>();
        long perLayer = (long)seqs * len * k;
        for (int i = 0; i < mainMoe.Length; i++)
        {
            var slice = ids.Slice((int)(i * perLayer + (long)firstSequence * len * k), (end - firstSequence) * len * k).ToArray();
            foreach (var x in slice)
                if ((uint)x >= (uint)arch.NumRoutedExperts)
                    throw new InvalidDataException($"{path}: tensor '{name}' holds expert id {x} outside [0, {arch.NumRoutedExperts})");
            topk[mainMoe[i]] = slice;
        }
        return new RoutingTrace
        {
            Source = endSequence < 0 && firstSequence == 0 ? path : $"{path} sequences {firstSequence}..{end - 1}",
            ExpertsPerToken = k,
            Tokens = (end - firstSequence) * len,
            TopK = topk,
        };
    }

    private static RoutingTrace Slice(RoutingTrace all, int seqs, int len, int first, int endSeq, string path)
    {
        int end = endSeq < 0 ? seqs : endSeq;
        if (first < 0 || end > seqs || first >= end)
            throw new ArgumentException($"{path}: sequence range [{first}, {end}) is outside its {seqs} sequences");
        int k = all.ExpertsPerToken;
        var topk = all.TopK.ToDictionary(kv => kv.Key, kv => kv.Value.AsSpan(first * len * k, (end - first) * len * k).ToArray());
        return new RoutingTrace { Source = $"{path} sequences {first}..{end - 1}", ExpertsPerToken = k, Tokens = (end - first) * len, TopK = topk };
    }
}
