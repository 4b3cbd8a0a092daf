using System.Text.Json.Nodes;
using Converter.Models;
using Converter.Tensors;

namespace Converter.Pipelines;

/// <summary>Everything `converter inspect` reports about a checkpoint, computed from headers only.</summary>
public sealed record InspectReport(
    string Directory,
    string ModelType,
    WeightLayout Layout,
    JsonObject? QuantizationConfig,
    int Layers,
    int MtpLayers,
    int HiddenSize,
    int VocabSize,
    int RoutedExperts,
    int ExpertsPerToken,
    int SharedExperts,
    int ExpertGroups,
    int TopkGroups,
    IReadOnlyList<int> MoeLayers,
    long TotalParameters,
    long MtpParameters,
    long ActiveParametersPerToken,
    IReadOnlyDictionary<string, long> TensorsByDType,
    IReadOnlyList<(string File, long Bytes, int Tensors)> Shards,
    long StoredBytes,
    IReadOnlyList<(string Format, long Bytes)> EstimatedSizes,
    IReadOnlyList<string> Notes)
{
    /// <summary>The family's own lines (attention kind, routing rule, KV cache per token).</summary>
    public IReadOnlyList<ArchitectureFact> Facts { get; init; } = [];
}

public static class ModelInspector
{
    public static InspectReport Inspect(ModelCheckpoint ckpt)
    {
        var arch = ckpt.Architecture;
        long total = 0, mtp = 0, routed = 0;
        var counts = new SortedDictionary<string, long>(StringComparer.Ordinal);
        foreach (var name in ckpt.Tensors.Names)
        {
            var dt = ckpt.Tensors.Info(name).DType.ToString();
            counts[dt] = counts.GetValueOrDefault(dt) + 1;
        }
        var sizes = new Dictionary<string, double>();
        foreach (var t in arch.ExpectedTensors())
        {
            long n = 1;
            foreach (var d in t.Shape) n *= d;
            if (t.Role.IsMtp) { mtp += n; continue; }
            total += n;
            if (t.Role.Kind == TensorKind.RoutedExpert) routed += n;
            foreach (var (format, bytesPerElement) in EstimateFormats(arch, t)) sizes[format] = sizes.GetValueOrDefault(format) + n * bytesPerElement;
        }
        long active = total - routed + (arch.NumRoutedExperts == 0 ? 0 : routed * arch.NumExpertsPerToken / arch.NumRoutedExperts);

        var moeLayers = new List<int>();
        for (int l = 0; l < arch.NumLayers; l++) if (arch.IsMoeLayer(l)) moeLayers.Add(l);
        int shared = 0, groups = 1, topkGroups = 1;
        if (moeLayers.Count > 0)
        {
            var first = arch.Moe(moeLayers[0]);
            shared = arch.NumSharedExpertsOf(moeLayers[0]);
            (groups, topkGroups) = (first.Routing.Groups, first.Routing.TopkGroups);
        }

        var shards = ckpt.Tensors.Shards.Select(s => (Path.GetFileName(s.Path), s.Length, s.Tensors.Count)).ToList();
        var notes = new List<string>();
        if (ckpt.Int4Config is { } ct)
        {
            int packed = arch.ExpectedTensors().Count(t => ckpt.IsPackedInt4(t.Name));
            notes.Add($"INT4 compressed-tensors pack-quantized: group size {ct.GroupSize}, {(ct.Symmetric ? "symmetric" : "asymmetric")}, " +
                $"targets [{string.Join(", ", ct.Targets)}], {packed} packed linear(s), {ct.Ignore.Count} ignore entr{(ct.Ignore.Count == 1 ? "y" : "ies")}");
        }
        var stored = arch.ExpectedTensors().GroupBy(t => ckpt.Encoding(t.Name)).Where(g => g.Key.IsBlockScaled())
            .Select(g => $"{g.Count()} {Describe(g.Key)} ({string.Join(", ", g.Select(t => t.Role.Kind).Distinct())})").ToList();
        if (stored.Count > 0) notes.Add("block-scaled weights: " + string.Join("; ", stored));
        if (arch.NumMtpLayers > 0)
            notes.Add($"{arch.NumMtpLayers} multi-token-prediction layer(s) (layer {arch.NumLayers}..): kept in safetensors outputs, not part of the ONNX or GGUF main graph");
        return new InspectReport(ckpt.Directory, arch.ModelType, ckpt.Layout,
            (arch.Config.Root["quantization_config"] as JsonObject)?.DeepClone() as JsonObject,
            arch.NumLayers, arch.NumMtpLayers, arch.HiddenSize, arch.VocabSize, arch.NumRoutedExperts, arch.NumExpertsPerToken,
            shared, groups, topkGroups, moeLayers, total, mtp, active, counts, shards, ckpt.Tensors.TotalBytes,
            sizes.OrderBy(kv => kv.Value).Select(kv => (kv.Key, (long)kv.Value)).ToList(), notes) { Facts = arch.Facts() };
    }

    private static string Describe(WeightEncoding e) => e switch
    {
        WeightEncoding.Fp8Block => "FP8 e4m3 (float32 128x128 scales)",
        WeightEncoding.Fp8BlockPow2 => "FP8 e4m3 (E8M0 128x128 scales)",
        WeightEncoding.Fp4Group32 => "FP4 e2m1 (E8M0 1x32 scales)",
        _ => e.ToString(),
    };

    /// <summary>Bytes per element of one tensor in each output format (main graph only, MTP excluded).</summary>
    private static IEnumerable<(string, double)> EstimateFormats(ModelArchitecture arch, ExpectedTensor t)
    {
        bool linear = t.Role.IsLinearWeight, matrix = t.Shape.Length == 2;
        bool keepF32 = t.Role.Kind is TensorKind.RouterBias or TensorKind.Norm;
        double hi = keepF32 ? 4 : 2;
        yield return ("safetensors bf16", hi);
        yield return ("safetensors fp8-block", !matrix ? hi : arch.OfficialEncoding(t.Role) switch
        {
            WeightEncoding.Fp8Block => 1 + 4.0 / (128 * 128),
            WeightEncoding.Fp8BlockPow2 => 1 + 1.0 / (128 * 128),
            WeightEncoding.Fp4Group32 => 0.5 + 1.0 / 32,
            _ => hi,
        });
        yield return ("safetensors int4 g32 (routed experts)", t.Role.Kind == TensorKind.RoutedExpert ? 0.5 + 2.0 / 32 : hi);
        if (arch.Onnx != null)
        {
            yield return ("onnx fp32", 4);
            yield return ("onnx fp8", linear ? 1 + 4.0 / (128 * 128) : 4);
        }
        // GGUF quantizes 2-D weights except the router; norms, router and biases stay F32.
        bool gq = matrix && t.Role.Kind != TensorKind.Router;
        yield return ("gguf f16", gq ? 2 : 4);
        yield return ("gguf q8_0", gq ? 34.0 / 32 : 4);
        yield return ("gguf q4_k", gq ? 144.0 / 256 : 4);
        yield return ("gguf q4_0", gq ? 18.0 / 32 : 4);
    }
}
