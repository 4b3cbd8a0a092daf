namespace Converter.Tests;

/// <summary>Bad input through the real executable: one clear line naming file and tensor, exit 2, nothing written.</summary>
public class CliBadInputTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    [Fact]
    public void HelpListsCommands()
    {
        var r = Cli.Run("--help");
        r.ExitCode.Should().Be(0);
        r.StdOut.Should().Contain("inspect").And.Contain("quantize");
        Cli.Run("quantize", "--help").StdOut.Should().Contain("--scheme").And.Contain("--max-shard-size");
    }

    [Fact]
    public void TruncatedShardFailsAndLeavesNoOutput()
    {
        var src = _tmp["src"];
        TestCheckpoints.Copy(TestData.Model("tiny-dsv3"), src);
        var shard = Directory.GetFiles(src, "*.safetensors").Order().Last();
        using (var fs = new FileStream(shard, FileMode.Open)) fs.SetLength(fs.Length - 100);
        var outDir = _tmp["out"];
        var r = Cli.Run("quantize", src, "-o", outDir, "--scheme", "fp8-block");
        r.ExitCode.Should().Be(2, r.ToString());
        r.StdErr.Should().Contain(Path.GetFileName(shard)).And.Contain("truncated");
        Directory.Exists(outDir).Should().BeFalse();
        Directory.GetDirectories(_tmp.Path).Should().Equal(src);
    }

    [Fact]
    public void MissingShardIsNamed()
    {
        var src = _tmp["src"];
        TestCheckpoints.Copy(TestData.Model("tiny-dsv3"), src);
        File.Delete(Directory.GetFiles(src, "*.safetensors").Order().First());
        var r = Cli.Run("inspect", src);
        r.ExitCode.Should().Be(2);
        r.StdErr.Should().Contain("model-00001-of-").And.Contain("missing");
    }

    [Fact]
    public void ExistingOutputFolderIsRefused()
    {
        var outDir = Directory.CreateDirectory(_tmp["out"]).FullName;
        File.WriteAllText(Path.Combine(outDir, "keep.txt"), "user data");
        var r = Cli.Run("quantize", TestData.Model("tiny-dsv3"), "-o", outDir, "--scheme", "fp8-block");
        r.ExitCode.Should().Be(2);
        r.StdErr.Should().Contain("already exists").And.Contain("--overwrite");
        File.ReadAllText(Path.Combine(outDir, "keep.txt")).Should().Be("user data");
    }

    [Fact]
    public void InspectReportsJson()
    {
        var r = Cli.Run("inspect", TestData.Model("tiny-dsv3-fp8"), "--json");
        r.ExitCode.Should().Be(0, r.ToString());
        var json = System.Text.Json.Nodes.JsonNode.Parse(r.StdOut)!;
        json["model_type"]!.GetValue<string>().Should().Be("deepseek_v3");
        json["weight_layout"]!.GetValue<string>().Should().Be("Fp8Block");
        json["mtp_layers"]!.GetValue<int>().Should().Be(1);
        json["routed_experts"]!.GetValue<int>().Should().Be(16);
        // Independent count: the golden meta.json states transformers' parameter count (buffers such as
        // e_score_correction_bias excluded: 3 MoE layers x 16).
        var meta = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(TestData.Golden("tiny-dsv3", "meta.json")))!;
        json["total_parameters"]!.GetValue<long>().Should().Be(meta["params"]!.GetValue<long>() + 3 * 16);
    }
}
