using System.Text.Json.Nodes;
using Converter.Formats.Onnx.Proto;

namespace Converter.Tests;

/// <summary>
/// `export onnx --weights int4 --int4-accuracy-level 4`: every MatMulNBits of the graph and its functions computes
/// with int8 activations (the decode-speed setting of BENCHMARKS.md), and the model stays as close to the golden as
/// the float-activation export (tiny-dsv3, every projection INT4, through the KV cache).
/// </summary>
public class Int4AccuracyLevelTests(Xunit.Abstractions.ITestOutputHelper log) : IDisposable
{
    private readonly TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private double KlMean(string dir)
    {
        var r = Cli.Run("verify", dir, "--golden", TestData.Golden("tiny-dsv3", "eval.safetensors"), "--format-preset", "int4", "--decode", "16", "--json");
        r.ExitCode.Should().Be(0, r.ToString());
        return JsonNode.Parse(r.StdOut)!["kl_mean"]!.GetValue<double>();
    }

    [Fact]
    public void AccuracyLevel4SetsEveryMatMulNBitsAndCostsLittle()
    {
        var levels = new Dictionary<int, double>();
        foreach (int level in new[] { 0, 4 })
        {
            var dir = _tmp[$"acc{level}"];
            var e = Cli.Run("export", "onnx", TestData.Model("tiny-dsv3"), "-o", dir, "--weights", "int4", "--int4-targets", "all-linear",
                "--kv-cache", "--int4-accuracy-level", level.ToString(), "-q");
            e.ExitCode.Should().Be(0, e.ToString());
            var proto = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(dir, "model.onnx")));
            var nodes = proto.Graph.Node.Concat(proto.Functions.SelectMany(f => f.Node)).Where(n => n.OpType == "MatMulNBits").ToList();
            nodes.Should().NotBeEmpty();
            nodes.Select(n => n.Attribute.Single(a => a.Name == "accuracy_level").I).Should().AllBeEquivalentTo(level);
            levels[level] = KlMean(dir);
        }
        log.WriteLine($"kl_mean: accuracy_level 0 {levels[0]:E3}, 4 {levels[4]:E3}");
        levels[4].Should().BeLessThan(levels[0] * 1.1);

        var plain = Cli.Run("export", "onnx", TestData.Model("tiny-dsv3"), "-o", _tmp["fp32"], "--int4-accuracy-level", "4");
        plain.ExitCode.Should().Be(2, plain.ToString());
        plain.StdErr.Should().Contain("--weights int4");
    }
}
