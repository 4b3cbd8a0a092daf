using System.Text.Json.Nodes;
using Converter.Decoder.Onnx;
using Converter.Formats.Onnx.Proto;

namespace Converter.Tests;

/// <summary>
/// `export onnx --kv-cache` and `verify --decode`: the cached decoder, prefilled with 16 golden tokens and fed the rest
/// one at a time, meets the same tolerances against the transformers golden as the full-sequence graph; its present
/// tensors hold exactly what `inspect` reports per token.
/// </summary>
public class KvCacheDecodeTests(Xunit.Abstractions.ITestOutputHelper log) : IDisposable
{
    private readonly TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private JsonObject Verify(string artifact, string model, params string[] more)
    {
        var r = Cli.Run(["verify", artifact, "--golden", TestData.Golden(model, "eval.safetensors"), "--json", .. more]);
        log.WriteLine($"verify {string.Join(' ', more)}: {r.StdOut}{r.StdErr}");
        r.ExitCode.Should().Be(0, r.ToString());
        return JsonNode.Parse(r.StdOut)!.AsObject();
    }

    [Theory]
    [InlineData("tiny-dsv3", 80)]      // MLA latent: kv_lora 64 + rope 16
    [InlineData("tiny-qwen3moe", 128)] // GQA: 2 key-value heads x 32, key and value
    public void DecodingThroughTheCacheMeetsTheFullSequenceTolerances(string model, int valuesPerToken)
    {
        var dir = _tmp[model];
        var export = Cli.Run("export", "onnx", TestData.Model(model), "-o", dir, "--kv-cache", "-q");
        export.ExitCode.Should().Be(0, export.ToString());

        foreach (var args in new[] { Array.Empty<string>(), ["--decode", "16"] })
        {
            var report = Verify(dir, model, args);
            report["passed"]!.GetValue<bool>().Should().BeTrue();
            report["max_abs_logit_diff_stable"]!.GetValue<double>().Should().BeLessThanOrEqualTo(1e-3);
            report["top1_agreement_stable"]!.GetValue<double>().Should().Be(1);
            report["kl_mean"]!.GetValue<double>().Should().BeLessThanOrEqualTo(1e-5);
        }

        // The present tensors: [batch, heads, total, head size] with heads x head size x 2 = what inspect reports.
        var proto = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(dir, "model.onnx")));
        var present = proto.Graph.Output.Single(o => o.Name == OnnxDecoderNames.PresentKey(0)).Type.TensorType.Shape.Dim;
        long perToken = 2 * present[1].DimValue * present[3].DimValue;
        perToken.Should().Be(valuesPerToken);
        var inspect = Cli.Run("inspect", TestData.Model(model), "--json");
        inspect.ExitCode.Should().Be(0, inspect.ToString());
        JsonNode.Parse(inspect.StdOut)!["family"]!["kv_cache"]!.GetValue<string>().Should().StartWith($"{valuesPerToken} values per token per layer");
    }

    [Fact]
    public void DecodeOfAModelWithoutCacheIsBadInput()
    {
        var dir = _tmp["plain"];
        Cli.Run("export", "onnx", TestData.Model("tiny-qwen3moe"), "-o", dir, "-q").ExitCode.Should().Be(0);
        var r = Cli.Run("verify", dir, "--golden", TestData.Golden("tiny-qwen3moe", "eval.safetensors"), "--decode", "16");
        r.ExitCode.Should().Be(2, r.ToString());
        r.StdErr.Should().Contain("--kv-cache");
    }
}
