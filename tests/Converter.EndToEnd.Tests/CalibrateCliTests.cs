using System.CommandLine;
using System.Runtime.InteropServices;
using Converter.Calibration;
using Converter.Cli;
using Converter.Cli.Commands;
using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Tests;

/// <summary>`calibrate` and `export onnx --simulate-comm` as the CLI parses them (in process).</summary>
public class CalibrateCliTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static int Invoke(params string[] args)
    {
        var root = new RootCommand("test") { CalibrateCommand.Create(), ExportOnnxCommand.Create() };
        root.Options.Add(GlobalOptions.Verbose);
        root.Options.Add(GlobalOptions.Quiet);
        return root.Parse(args).Invoke();
    }

    private string Tokens(int seqs)
    {
        int[] ids;
        using (var f = SafetensorsFile.Open(TestData.Golden("tiny-dsv3", "calib.safetensors")))
        using (var t = f.Read("tokens")) ids = t.As<int>()[..(seqs * 128)].ToArray();
        using (var w = new SafetensorsWriter(_tmp["tokens"], [new TensorSpec("tokens", DType.I32, [seqs, 128])], long.MaxValue, overwrite: true))
        {
            w.Write("tokens", MemoryMarshal.AsBytes(ids.AsSpan()));
            w.Commit();
        }
        return Path.Combine(_tmp["tokens"], "model.safetensors");
    }

    [Fact]
    public void CalibratesTheFp8CheckpointWithRoutingOnly()
    {
        var outDir = _tmp["calib"];
        Invoke("calibrate", TestData.Model("tiny-dsv3-fp8"), "--tokens", Tokens(4), "-o", outDir, "--batch", "2", "--no-hessians",
            "--target-snr-db", "30", "-q").Should().Be(CommandRunner.Ok);
        var data = CalibrationData.Load(outDir);
        data.Tokens.Should().Be(512);
        foreach (var l in data.TopK.Keys) data.ExpertCounts(l).Sum().Should().Be(512L * data.ExpertsPerToken);
        Directory.Exists(Path.Combine(outDir, HessianStats.Folder)).Should().BeFalse();
        File.ReadAllText(Path.Combine(outDir, "summary.md")).Should().Contain("Hessians: no");
        File.ReadAllText(Path.Combine(outDir, CommReportWriter.MarkdownName)).Should().Contain("reaching 30 dB");
        // refuses to overwrite without --overwrite
        Invoke("calibrate", TestData.Model("tiny-dsv3-fp8"), "--tokens", Tokens(4), "-o", outDir, "--no-hessians", "-q").Should().Be(CommandRunner.BadInput);
    }

    [Fact]
    public void BadTrafficFormatIsBadInput()
    {
        Invoke("onnx", TestData.Model("tiny-dsv3"), "-o", _tmp["x"], "--combine", "logfmt17", "-q").Should().Be(CommandRunner.BadInput);
        Directory.Exists(_tmp["x"]).Should().BeFalse();
    }

    [Fact]
    public void TokensOutsideTheVocabularyAreBadInput()
    {
        using (var w = new SafetensorsWriter(_tmp["bad"], [new TensorSpec("tokens", DType.I32, [1, 4])], long.MaxValue, overwrite: true))
        {
            w.Write("tokens", MemoryMarshal.AsBytes(new[] { 1, 2, 300, 4 }.AsSpan()));
            w.Commit();
        }
        Invoke("calibrate", TestData.Model("tiny-dsv3"), "--tokens", Path.Combine(_tmp["bad"], "model.safetensors"), "-o", _tmp["c"], "-q")
            .Should().Be(CommandRunner.BadInput);
        Directory.Exists(_tmp["c"]).Should().BeFalse();
    }
}
