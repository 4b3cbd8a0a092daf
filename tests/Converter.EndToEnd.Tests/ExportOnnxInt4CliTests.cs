using System.Text.Json.Nodes;

namespace Converter.Tests;

/// <summary>The README's INT4 job as a user runs it: quantize, export onnx --weights int4, verify --format-preset int4.</summary>
public class ExportOnnxInt4CliTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    [Fact]
    public void QuantizeExportInt4AndVerifyAgainstTheGolden()
    {
        string q = _tmp["int4"], onnx = _tmp["onnx"];
        var r = Cli.Run("quantize", TestData.Model("tiny-dsv3"), "-o", q, "--scheme", "int4", "--group-size", "32", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        r = Cli.Run("export", "onnx", q, "-o", onnx, "--weights", "int4", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        r = Cli.Run("verify", onnx, "--golden", TestData.Golden("tiny-dsv3", "eval.safetensors"), "--format-preset", "int4", "--json");
        r.ExitCode.Should().Be(0, r.ToString());
        var report = JsonNode.Parse(r.StdOut)!;
        report["passed"]!.GetValue<bool>().Should().BeTrue();
        report["top1_agreement"]!.GetValue<double>().Should().BeGreaterThan(0.9);

        // A packed g32 checkpoint keeps its codes: another group size is refused, naming both.
        r = Cli.Run("export", "onnx", q, "-o", _tmp["bad"], "--weights", "int4", "--group-size", "128", "-q");
        r.ExitCode.Should().Be(2, r.ToString());
        (r.StdErr + r.StdOut).Should().Contain("group size 32").And.Contain("--group-size 128");
        Directory.Exists(_tmp["bad"]).Should().BeFalse();
    }
}
