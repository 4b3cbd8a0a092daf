using System.Text.Json.Nodes;
using Converter.Decoder.Onnx;
using Converter.Models;

namespace Converter.Tests.Models;

/// <summary>
/// The public config.json of each supported family (golden/configs: DeepSeek-V3, Kimi K2, DeepSeek-V2 and V2-Lite,
/// Qwen3-30B-A3B and Qwen3-235B-A22B, as their hub repositories ship them) load, count the parameters their model
/// cards state, and build the ONNX graph (with and without a KV cache) without any weights.
/// </summary>
public class PublicConfigTests
{
    private static ModelArchitecture Load(string name)
    {
        var path = Path.Combine(TestData.Root, "golden", "configs", name + ".json");
        return ArchitectureRegistry.FromConfig(new ConfigJson(path, JsonNode.Parse(File.ReadAllText(path))!.AsObject()));
    }

    /// <param name="totalB">Published total parameters (billions, main model without MTP).</param>
    /// <param name="activeB">Published activated parameters per token (billions); DeepSeek-V2-Lite's card (2.4B) leaves the
    /// input embedding out (102400 x 2048 = 0.21B), so its row compares without it.</param>
    [Theory]
    [InlineData("deepseek-v3", "deepseek_v3", 671, 37, 576, true)]
    [InlineData("kimi-k2", "kimi_k2", 1040, 32.5, 576, true)]
    [InlineData("deepseek-v2", "deepseek_v2", 236, 21, 576, true)]
    [InlineData("deepseek-v2-lite", "deepseek_v2", 15.7, 2.4, 576, false)]
    [InlineData("qwen3-30b-a3b", "qwen3_moe", 30.5, 3.3, 1024, true)]
    [InlineData("qwen3-235b-a22b", "qwen3_moe", 235, 22, 1024, true)]
    public void PublicConfigsLoadCountTheirParametersAndBuildTheirGraphs(string name, string modelType, double totalB, double activeB, int kvPerToken,
        bool cardCountsEmbedding)
    {
        var arch = Load(name);
        arch.ModelType.Should().Be(modelType);
        double total = 0, routed = 0;
        foreach (var t in arch.ExpectedTensors())
        {
            if (t.Role.IsMtp) continue;
            double n = t.Shape.Aggregate(1.0, (a, d) => a * d);
            total += n;
            if (t.Role.Kind == TensorKind.RoutedExpert) routed += n;
        }
        double active = total - routed + routed * arch.NumExpertsPerToken / arch.NumRoutedExperts;
        if (!cardCountsEmbedding) active -= (double)arch.VocabSize * arch.HiddenSize;
        (total / 1e9).Should().BeApproximately(totalB, totalB * 0.02, "the model card's total");
        (active / 1e9).Should().BeApproximately(activeB, activeB * 0.05, "the model card's activated parameters");

        var onnx = arch.Onnx!;
        onnx.KvCache.ValuesPerToken.Should().Be(kvPerToken);
        foreach (var cached in new[] { false, true })
        {
            var export = OnnxDecoderGraph.Build(arch, new OnnxDecoderOptions() { KvCache = cached });
            export.Initializers.Should().Contain(p => p.Name == arch.Names.LmHead);
            export.Model.Graph.Output.Select(o => o.Name).Should().Contain(OnnxDecoderNames.Logits);
            if (cached) export.Model.Graph.Input.Count(i => i.Name.StartsWith("past_key_values.", StringComparison.Ordinal)).Should().Be(2 * arch.NumLayers);
        }
    }
}
