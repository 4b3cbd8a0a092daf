using System.Text.Json.Nodes;
using System.Xml.Linq;
using Converter.Calibration;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Pipelines;
using Converter.Sharding;
using Converter.Tests.Sharding;

namespace Converter.Tests;

public class ShardTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    /// <summary>The calibration of the placement tests (golden eval routing, sequences 0-3) saved as a calibration folder.</summary>
    private string CalibrationFolder(string model = "tiny-dsv3")
    {
        var dir = _tmp["calib-" + model];
        if (!Directory.Exists(dir)) ShardTestData.Calibration(ShardTestData.Arch(model)).Save(dir);
        return dir;
    }

    /// <summary>
    /// Reassembles the source from the rank folders independently of ShardChecker: the union of all rank tensors must be
    /// exactly the source's names, every copy byte-identical to the source, and each expert on exactly its placement's ranks.
    /// </summary>
    private static void AssertReassemblesByteForByte(string outDir, string sourceDir, int ranks)
    {
        var placement = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "placement.json")))!.AsObject();
        placement["ranks"]!.GetValue<int>().Should().Be(ranks);
        using var src = SafetensorsCheckpoint.Open(sourceDir);
        var arch = ArchitectureRegistry.Load(sourceDir);
        var holders = new Dictionary<string, List<int>>();
        int copies = 0;
        for (int r = 0; r < ranks; r++)
        {
            var rankDir = Path.Combine(outDir, $"rank-{r:D5}");
            File.ReadAllBytes(Path.Combine(rankDir, "config.json")).Should().Equal(File.ReadAllBytes(Path.Combine(sourceDir, "config.json")));
            using var rank = SafetensorsCheckpoint.Open(rankDir);
            foreach (var name in rank.Names)
            {
                src.Contains(name).Should().BeTrue($"rank {r} holds '{name}', which the source lacks");
                var (a, b) = (rank.Info(name), src.Info(name));
                a.DType.Should().Be(b.DType, name);
                a.Shape.Should().Equal(b.Shape, name);
                using var ad = rank.Read(name);
                using var bd = src.Read(name);
                ad.Bytes.SequenceEqual(bd.Bytes).Should().BeTrue($"rank {r} tensor '{name}' must equal the source byte for byte");
                (holders.TryGetValue(name, out var l) ? l : holders[name] = new List<int>()).Add(r);
                copies++;
            }
        }
        holders.Keys.Should().BeEquivalentTo(src.Names, "the ranks together hold every source tensor");
        foreach (var name in src.Names)
        {
            var role = arch.Classify(name);
            if (role.Expert < 0)
            {
                holders[name].Should().Equal(Enumerable.Range(0, ranks), $"non-expert '{name}' is replicated on every rank");
                continue;
            }
            var layer = placement["layers"]!.AsArray().Single(l => l!["layer"]!.GetValue<int>() == role.Layer)!;
            var expected = layer["experts"]![role.Expert]!["replicas"]!.AsArray().Select(x => x!["rank"]!.GetValue<int>()).Order();
            holders[name].Should().Equal(expected, $"expert tensor '{name}' sits on its replicas' ranks");
        }
        copies.Should().BeGreaterThan(src.Names.Count);
    }

    [Theory]
    [InlineData("tiny-dsv3")]
    [InlineData("tiny-dsv3-fp8")]
    public void ContiguousFourRanksReassemblesByteForByte(string model)
    {
        var outDir = _tmp["out"];
        var r = Cli.Run("shard", TestData.Model(model), "-o", outDir, "--ranks", "4", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        AssertReassemblesByteForByte(outDir, TestData.Model(model), 4);
        using (var rank1 = SafetensorsCheckpoint.Open(Path.Combine(outDir, "rank-00001")))
        {
            rank1.Contains("model.layers.1.mlp.experts.4.down_proj.weight").Should().BeTrue("rank 1 holds experts 4-7");
            rank1.Contains("model.layers.1.mlp.experts.3.down_proj.weight").Should().BeFalse();
            if (model.EndsWith("fp8")) rank1.Contains("model.layers.1.mlp.experts.4.down_proj.weight_scale_inv").Should().BeTrue("FP8 scales follow their experts");
        }
        var check = Cli.Run("shard", "--check", outDir, "--source", TestData.Model(model));
        check.ExitCode.Should().Be(0, check.ToString());
        check.StdOut.Should().Contain("ok:");
    }

    [Theory]
    [InlineData("tiny-dsv3")]
    [InlineData("tiny-dsv3-fp8")]
    public void BalancedWithTwoRedundantReplicasReassemblesAndReplicasAreIdentical(string model)
    {
        var outDir = _tmp["out"];
        var r = Cli.Run("shard", TestData.Model(model), "-o", outDir, "--ranks", "4", "--ranks-per-node", "2", "--placement", "balanced",
            "--calibration", CalibrationFolder(model), "--redundant", "2", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        AssertReassemblesByteForByte(outDir, TestData.Model(model), 4);
        var placement = PlacementJson.Read(outDir);
        placement.Redundant.Should().Be(2);
        placement.GroupAware.Should().BeTrue();
        foreach (var l in placement.Layers)
            l.Replicas.Sum(x => x.Length).Should().Be(18, $"layer {l.Layer}: 16 experts + 2 replicas");
        ShardChecker.Check(outDir, TestData.Model(model)).Problems.Should().BeEmpty();
    }

    [Fact]
    public void PackedInt4CheckpointShardsWithItsPackedParts()
    {
        var int4 = _tmp["int4"];
        var q = Cli.Run("quantize", TestData.Model("tiny-dsv3"), "-o", int4, "--scheme", "int4", "-q");
        q.ExitCode.Should().Be(0, q.ToString());
        var outDir = _tmp["out"];
        var r = Cli.Run("shard", int4, "-o", outDir, "--ranks", "4", "--placement", "balanced", "--calibration", CalibrationFolder(), "--redundant", "2", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        AssertReassemblesByteForByte(outDir, int4, 4);
        var placement = PlacementJson.Read(outDir);
        int rank = placement.Layer(2)!.Replicas[5][0].Rank;
        using var ckpt = SafetensorsCheckpoint.Open(Path.Combine(outDir, $"rank-{rank:D5}"));
        foreach (var part in new[] { "weight_packed", "weight_scale", "weight_shape" })
            ckpt.Contains($"model.layers.2.mlp.experts.5.up_proj.{part}").Should().BeTrue($"{part} travels with its expert");
    }

    [Fact]
    public void ReportOnHeldOutTokensShowsBalancedBelowContiguous()
    {
        var outDir = _tmp["out"];
        var r = Cli.Run("shard", TestData.Model("tiny-dsv3"), "-o", outDir, "--ranks", "4", "--placement", "balanced",
            "--calibration", CalibrationFolder(), "--held-out", ShardTestData.EvalFile, "--held-out-sequences", "4:8", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        var md = File.ReadAllText(Path.Combine(outDir, LoadReport.MarkdownName));
        r.StdOut.Should().Contain("| placement | mean max/mean |");
        md.Should().Contain("| contiguous |").And.Contain("| balanced (written) |").And.Contain("LogFMT-10").And.Contain("E5M2");
        var svg = XDocument.Load(Path.Combine(outDir, LoadReport.SvgName));
        svg.Root!.Name.LocalName.Should().Be("svg");
        svg.Descendants().Count(e => e.Name.LocalName == "rect").Should().BeGreaterThan(2 * 3 * 4, "one cell per rank per layer per placement");

        // The report's numbers, recomputed: balanced beats contiguous on the held-out sequences.
        var arch = ShardTestData.Arch();
        var held = ShardTestData.HeldOut(arch);
        var contiguous = LoadEvaluator.Evaluate(PlacementPlanner.Plan(arch, new PlacementOptions(4)), held);
        var balanced = LoadEvaluator.Evaluate(PlacementJson.Read(outDir), held);
        balanced.MeanImbalance.Should().BeLessThan(contiguous.MeanImbalance);
        md.Should().Contain($"| contiguous | {contiguous.MeanImbalance:F3} |").And.Contain($"| balanced (written) | {balanced.MeanImbalance:F3} |");
    }

    [Fact]
    public void CheckFindsACorruptedReplica()
    {
        var outDir = _tmp["out"];
        Cli.Run("shard", TestData.Model("tiny-dsv3"), "-o", outDir, "--ranks", "2", "-q").ExitCode.Should().Be(0);
        // Flip one byte inside rank 1's data region (past the header).
        var file = Directory.GetFiles(Path.Combine(outDir, "rank-00001"), "*.safetensors")[0];
        var bytes = File.ReadAllBytes(file);
        bytes[^100] ^= 0x40;
        File.WriteAllBytes(file, bytes);
        var check = Cli.Run("shard", "--check", outDir, "--source", TestData.Model("tiny-dsv3"));
        check.ExitCode.Should().Be(1, check.ToString());
        check.StdErr.Should().Contain("differs from the source");
    }

    [Fact]
    public void RankWritersStreamAndOutputIsAtomic()
    {
        // A second run without --overwrite fails and leaves the first output intact; with --overwrite it replaces it.
        var outDir = _tmp["out"];
        Cli.Run("shard", TestData.Model("tiny-dsv3"), "-o", outDir, "--ranks", "2", "-q").ExitCode.Should().Be(0);
        var again = Cli.Run("shard", TestData.Model("tiny-dsv3"), "-o", outDir, "--ranks", "4", "-q");
        again.ExitCode.Should().Be(2);
        again.StdErr.Should().Contain("already exists");
        Directory.GetDirectories(outDir, "rank-*").Should().HaveCount(2);
        Cli.Run("shard", TestData.Model("tiny-dsv3"), "-o", outDir, "--ranks", "4", "--overwrite", "-q").ExitCode.Should().Be(0);
        Directory.GetDirectories(outDir, "rank-*").Should().HaveCount(4);
        Directory.GetFileSystemEntries(_tmp.Path, ".out*").Should().BeEmpty("no staging folder is left behind");
    }

    [Fact]
    public void BadInputsGetClearErrorsAndNoOutput()
    {
        var model = TestData.Model("tiny-dsv3");
        var outDir = _tmp["bad"];
        void Expect(string message, params string[] args)
        {
            var r = Cli.Run(["shard", model, "-o", outDir, .. args]);
            r.ExitCode.Should().Be(2, r.ToString());
            r.StdErr.Should().Contain(message, r.ToString());
            Directory.Exists(outDir).Should().BeFalse();
        }
        Expect("3 ranks do not divide the 16 routed experts", "--ranks", "3");
        Expect("--redundant 17 asks for more replicas than the 16 routed experts", "--ranks", "4", "--placement", "balanced", "--calibration", CalibrationFolder(), "--redundant", "17");
        Expect("--ranks-per-node 3 does not divide --ranks 4", "--ranks", "4", "--ranks-per-node", "3");
        Expect("needs --calibration", "--ranks", "4", "--placement", "balanced");

        // A calibration recorded on another config (tiny-dsv3 with another routed_scaling_factor): refused by fingerprint.
        var otherModel = _tmp["other-model"];
        TestCheckpoints.Copy(model, otherModel, editConfig: c => c["routed_scaling_factor"] = 3.0);
        var otherCal = _tmp["other-cal"];
        ShardTestData.Calibration(ArchitectureRegistry.Load(otherModel)).Save(otherCal);
        Expect("calibration was recorded on a deepseek_v3 model with config", "--ranks", "4", "--placement", "balanced", "--calibration", otherCal);
    }
}
