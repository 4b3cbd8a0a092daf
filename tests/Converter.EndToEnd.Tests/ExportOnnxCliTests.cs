using System.CommandLine;
using Converter.Cli;
using Converter.Cli.Commands;
using Converter.Runtime;
using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Tests;

/// <summary>`export onnx` as the CLI parses it (invoked in process: the command is wired under `export` by Program.cs).</summary>
public class ExportOnnxCliTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static int Invoke(params string[] args)
    {
        var root = new RootCommand("test") { ExportOnnxCommand.Create() };
        root.Options.Add(GlobalOptions.Verbose);
        root.Options.Add(GlobalOptions.Quiet);
        return root.Parse(args).Invoke();
    }

    [Fact]
    public void ExportsFp8FromTheOfficialFp8CheckpointAndRunsInOnnxRuntime()
    {
        var outDir = _tmp["onnx"];
        Invoke("onnx", TestData.Model("tiny-dsv3-fp8"), "-o", outDir, "--weights", "fp8", "-q").Should().Be(CommandRunner.Ok);
        File.Exists(Path.Combine(outDir, "model.onnx")).Should().BeTrue();
        File.Exists(Path.Combine(outDir, "model.onnx.data")).Should().BeTrue();

        using var eval = SafetensorsFile.Open(TestData.Golden("tiny-dsv3-fp8", "eval.safetensors"));
        int[] tokens;
        using (var t = eval.Read("tokens")) tokens = t.As<int>().ToArray();
        float[] golden;
        using (var t = eval.Read("logits")) golden = TensorConvert.ToFloat32(t);
        using var runner = new OnnxArtifactRunner(outDir);
        var logits = runner.Run(tokens, 8, 128, false, false).Logits;
        double sum = 0;
        for (int i = 0; i < golden.Length; i++) sum += Math.Abs(logits[i] - golden[i]);
        (sum / golden.Length).Should().BeLessThan(1e-4);

        // A second export to the same folder needs --overwrite.
        Invoke("onnx", TestData.Model("tiny-dsv3"), "-o", outDir, "-q").Should().Be(CommandRunner.BadInput);
        Invoke("onnx", TestData.Model("tiny-dsv3"), "-o", outDir, "--overwrite", "-q").Should().Be(CommandRunner.Ok);
    }

    [Fact]
    public void CorruptInputExitsWithBadInputAndWritesNothing()
    {
        var src = _tmp["src"];
        Directory.CreateDirectory(src);
        foreach (var f in Directory.GetFiles(TestData.Model("tiny-dsv3"))) File.Copy(f, Path.Combine(src, Path.GetFileName(f)));
        File.WriteAllText(Path.Combine(src, "config.json"), File.ReadAllText(Path.Combine(src, "config.json")).Replace("\"kv_lora_rank\": 64", "\"kv_lora_rank\": 32"));
        var outDir = _tmp["out"];
        Invoke("onnx", src, "-o", outDir, "-q").Should().Be(CommandRunner.BadInput);
        Directory.Exists(outDir).Should().BeFalse();
    }

    [Fact]
    public void RejectsUnknownWeightFormat()
    {
        Invoke("onnx", TestData.Model("tiny-dsv3"), "-o", _tmp["x"], "--weights", "int2").Should().NotBe(CommandRunner.Ok);
        Directory.Exists(_tmp["x"]).Should().BeFalse();
    }
}

/// <summary>`export onnx` then `verify` (with the ONNX runner registered) on the golden: the whole ONNX path.</summary>
public class ExportOnnxVerifyTests(Xunit.Abstractions.ITestOutputHelper log) : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    [Theory]
    [InlineData("tiny-dsv3", "fp32", "tiny-dsv3", "fp32")]
    [InlineData("tiny-dsv3", "fp8", "tiny-dsv3-fp8", "fp32")]
    public void ExportedModelPassesVerify(string model, string weights, string golden, string preset)
    {
        var outDir = _tmp["onnx"];
        var export = new RootCommand("t") { ExportOnnxCommand.Create() };
        export.Options.Add(GlobalOptions.Verbose);
        export.Options.Add(GlobalOptions.Quiet);
        export.Parse(["onnx", TestData.Model(model), "-o", outDir, "--weights", weights, "-q"]).Invoke().Should().Be(CommandRunner.Ok);

        var factory = OnnxArtifactRunner.RegisterWith(new ArtifactRunnerFactory());
        var verify = new RootCommand("t") { VerifyCommand.Create(factory) };
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var parse = verify.Parse(["verify", outDir, "--golden", TestData.Golden(golden, "eval.safetensors"), "--layers", "--format-preset", preset]);
        int rc = parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr });
        log.WriteLine(stdout.ToString() + stderr);
        (rc, stdout.ToString() + stderr).Should().Be((0, stdout.ToString() + stderr));
    }
}
