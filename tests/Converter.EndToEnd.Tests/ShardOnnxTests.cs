using System.Text.Json.Nodes;
using Converter.Runtime;
using Converter.Sharding;
using Converter.Tests.Sharding;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Converter.Tests;

/// <summary>
/// `shard --onnx` writes one ONNX model per rank whose MoE computes only the rank's experts; `verify` of the sharded
/// output runs every rank, sums their partial MoE outputs layer by layer and must meet the same fp32 tolerances as the
/// unsharded export against the transformers golden.
/// </summary>
public class ShardOnnxTests(Xunit.Abstractions.ITestOutputHelper log) : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static string Eval(string model = "tiny-dsv3") => TestData.Golden(model, "eval.safetensors");

    private string CalibrationFolder()
    {
        var dir = _tmp["calib"];
        if (!Directory.Exists(dir)) ShardTestData.Calibration(ShardTestData.Arch()).Save(dir);
        return dir;
    }

    private string Shard(string name, string model, params string[] args)
    {
        var outDir = _tmp[name];
        var r = Cli.Run(["shard", TestData.Model(model), "-o", outDir, "--onnx", "-q", .. args]);
        r.ExitCode.Should().Be(0, r.ToString());
        return outDir;
    }

    /// <summary>verify --json of an artifact: exit code and the report.</summary>
    private (int ExitCode, JsonObject? Report, Cli.Result Raw) Verify(string artifact, string golden, params string[] more)
    {
        var r = Cli.Run(["verify", artifact, "--golden", golden, "--json", "--layers", .. more]);
        log.WriteLine($"verify {artifact}: exit {r.ExitCode}\n{r.StdOut}{r.StdErr}");
        var report = r.StdOut.TrimStart().StartsWith('{') ? JsonNode.Parse(r.StdOut)!.AsObject() : null;
        return (r.ExitCode, report, r);
    }

    private static double Metric(JsonObject report, string name) => report[name]!.GetValue<double>();

    /// <summary>The sharded output passes with the default (fp32) preset and the ranks' logits agree.</summary>
    private void AssertPassesLikeTheUnshardedExport(string sharded)
    {
        var (rc, report, raw) = Verify(sharded, Eval());
        rc.Should().Be(0, raw.ToString());
        report!["preset"]!.GetValue<string>().Should().Be("fp32");
        report["passed"]!.GetValue<bool>().Should().BeTrue();
        Metric(report, "routing_agreement").Should().Be(1);
        var artifact = report["artifact"]!.GetValue<string>();
        artifact.Should().Contain("sharded ONNX, 4 ranks").And.Contain("ranks' logits agree within");
        var agree = double.Parse(artifact[(artifact.IndexOf("agree within ", StringComparison.Ordinal) + 13)..].TrimEnd(')'),
            System.Globalization.CultureInfo.InvariantCulture);
        agree.Should().BeLessThan(1e-4, "every rank ends with the same hidden state up to float summation order");
    }

    [Fact]
    public void ContiguousFourRanksPassVerifyAgainstTheGolden()
    {
        var outDir = Shard("c4", "tiny-dsv3", "--ranks", "4");
        for (int r = 0; r < 4; r++)
        {
            File.Exists(Path.Combine(outDir, $"rank-{r:D5}", "model.onnx")).Should().BeTrue();
            File.Exists(Path.Combine(outDir, $"rank-{r:D5}", "model.onnx.data")).Should().BeTrue();
        }
        AssertPassesLikeTheUnshardedExport(outDir);
    }

    [Fact]
    public void BalancedWithTwoRedundantReplicasPassesVerifyAgainstTheGolden()
    {
        var outDir = Shard("b4r2", "tiny-dsv3", "--ranks", "4", "--placement", "balanced", "--calibration", CalibrationFolder(), "--redundant", "2");
        var placement = PlacementJson.Read(outDir);
        placement.Layers.Should().Contain(l => l.Replicas.Any(x => x.Length == 2), "some expert is replicated, its token share split");
        AssertPassesLikeTheUnshardedExport(outDir);
    }

    [Fact]
    public void Fp8RankModelsPassVerifyAgainstTheFp8Golden()
    {
        // The FP8 checkpoint with FP8 rank models, against the golden computed from the same dequantized weights (as
        // ExportOnnxVerifyTests does for the unsharded FP8 export).
        var outDir = Shard("fp8", "tiny-dsv3-fp8", "--ranks", "4", "--onnx-weights", "fp8");
        var (rc, report, raw) = Verify(outDir, Eval("tiny-dsv3-fp8"));
        rc.Should().Be(0, raw.ToString());
        report!["passed"]!.GetValue<bool>().Should().BeTrue();
    }

    [Fact]
    public void OneRankAloneFailsAndItsPartialIsFiniteAndZeroWhereNoLocalExpertWasChosen()
    {
        var outDir = Shard("c4", "tiny-dsv3", "--ranks", "4");
        // Without its peers' partials a rank computes only its experts' share of the routed output: far from the golden.
        var (rc, report, raw) = Verify(Path.Combine(outDir, "rank-00001"), Eval());
        rc.Should().Be(1, raw.ToString());
        Metric(report!, "max_abs_logit_diff_stable").Should().BeGreaterThan(1e-1);

        // Contiguous with 4 ranks puts each expert group (4 experts) on one rank and a token picks 2 of the 4 groups,
        // so every token selects no expert of 2 ranks: those rows of a rank's partial must be exactly 0 (not NaN).
        using var eval = Converter.Formats.Safetensors.SafetensorsFile.Open(Eval());
        int[] tokens;
        using (var t = eval.Read("tokens")) tokens = t.As<int>().ToArray();
        int seq = 128, batch = 2;
        using var rank = new OnnxArtifactRunner(Path.Combine(outDir, "rank-00000"));
        rank.Run(tokens[..(batch * seq)], batch, seq, false, false, null, ["moe_partial.1", "moe_partial.3"], out var extra);
        foreach (var (name, partial) in extra)
        {
            int hidden = partial.Length / (batch * seq), zeroRows = 0;
            partial.Should().OnlyContain(x => float.IsFinite(x), name);
            for (int i = 0; i < batch * seq; i++)
                if (partial.AsSpan(i * hidden, hidden).IndexOfAnyExcept(0f) < 0) zeroRows++;
            log.WriteLine($"{name}: {zeroRows} of {batch * seq} tokens chose no expert of rank 0");
            zeroRows.Should().BeGreaterThan(0, name);
            zeroRows.Should().BeLessThan(batch * seq, name);
        }
    }

    [Fact]
    public void PeerSumsFedByHandGiveTheWholeLayer()
    {
        // The graph-order sum done independently of ShardedOnnxArtifactRunner, for the first MoE layer: rank r's
        // layer-1 output with peer_sum = the other ranks' partials equals the unsharded export's layer-1 output.
        var outDir = Shard("c4", "tiny-dsv3", "--ranks", "4", "--placement", "balanced", "--calibration", CalibrationFolder(), "--redundant", "2");
        var full = _tmp["full"];
        Cli.Run("export", "onnx", TestData.Model("tiny-dsv3"), "-o", full, "-q").ExitCode.Should().Be(0);
        using var eval = Converter.Formats.Safetensors.SafetensorsFile.Open(Eval());
        int[] tokens;
        using (var t = eval.Read("tokens")) tokens = t.As<int>()[..128].ToArray();
        using var whole = new OnnxArtifactRunner(full);
        var expected = whole.Run(tokens, 1, 128, true, false).HiddenStates![2]; // embedding, layer 0, layer 1
        var ranks = Enumerable.Range(0, 4).Select(r => new OnnxArtifactRunner(Path.Combine(outDir, $"rank-{r:D5}"))).ToArray();
        try
        {
            var partials = ranks.Select(x => { x.Run(tokens, 1, 128, false, false, null, ["moe_partial.1"], out var e); return e["moe_partial.1"]; }).ToArray();
            for (int r = 0; r < 4; r++)
            {
                var peer = new float[partials[0].Length];
                for (int q = 0; q < 4; q++)
                    if (q != r) for (int i = 0; i < peer.Length; i++) peer[i] += partials[q][i];
                var feeds = new Dictionary<string, DenseTensor<float>> { ["moe_peer_sum.1"] = new(peer, [1, 128, peer.Length / 128]) };
                var got = ranks[r].Run(tokens, 1, 128, true, false, feeds, null, out _).HiddenStates![2];
                double worst = 0;
                for (int i = 0; i < got.Length; i++) worst = Math.Max(worst, Math.Abs(got[i] - expected[i]));
                log.WriteLine($"rank {r}: layer 1 max |diff| vs unsharded {worst:G3}");
                worst.Should().BeLessThan(1e-5, $"rank {r}");
                // Without the peers the layer is wrong: the sum matters.
                var alone = ranks[r].Run(tokens, 1, 128, true, false).HiddenStates![2];
                double off = 0;
                for (int i = 0; i < got.Length; i++) off = Math.Max(off, Math.Abs(alone[i] - expected[i]));
                off.Should().BeGreaterThan(1e-2, $"rank {r} alone");
            }
        }
        finally
        {
            foreach (var x in ranks) x.Dispose();
        }
    }

    [Fact]
    public void BrokenShardedOutputsAreRefusedWithClearErrors()
    {
        var outDir = Shard("c4", "tiny-dsv3", "--ranks", "4");
        void Expect(string dir, string message)
        {
            var r = Cli.Run("verify", dir, "--golden", Eval());
            r.ExitCode.Should().Be(2, r.ToString());
            r.StdErr.Should().Contain(message, r.ToString());
        }

        // A placement that no longer matches the rank models (experts 0 and 4 of layer 2 swapped between ranks 0 and 1):
        // still a valid placement, but summing these ranks would compute another model.
        var swapped = _tmp["swapped"];
        CopyDir(outDir, swapped);
        var p = PlacementJson.Read(swapped);
        var l = p.Layer(2)!;
        l.Replicas[0] = [new ExpertReplica(1, 0, 1)];
        l.Replicas[4] = [new ExpertReplica(0, 0, 1)];
        l.RankSlots[0][0] = 4;
        l.RankSlots[1][0] = 0;
        PlacementJson.Write(p, Path.Combine(swapped, PlacementJson.FileName));
        Expect(swapped, "layer 2 computes experts:shares");

        var missing = _tmp["missing"];
        CopyDir(outDir, missing);
        File.Delete(Path.Combine(missing, "rank-00002", "model.onnx"));
        Expect(missing, "rank 2 has no ONNX model (shard with --onnx");

        var fewer = _tmp["fewer"];
        CopyDir(outDir, fewer);
        Directory.Delete(Path.Combine(fewer, "rank-00003"), true);
        Expect(fewer, "placement.json has 4 ranks but the folder holds [rank-00000, rank-00001, rank-00002]");

        var plain = _tmp["plain"];
        Cli.Run("shard", TestData.Model("tiny-dsv3"), "-o", plain, "--ranks", "2", "-q").ExitCode.Should().Be(0);
        Expect(plain, "rank 0 has no ONNX model (shard with --onnx");
    }

    [Fact]
    public void Int4RankModelsSumToTheUnshardedInt4Export()
    {
        // BF16 source: each rank model quantizes its own experts (RTN, group 32, symmetric) as the unsharded
        // `export onnx --weights int4` does, so the ranks' QMoE partials must sum to that export's output. Balanced with
        // replicas: a replicated expert's codes appear on two ranks, each weighted by its share.
        var outDir = Shard("int4", "tiny-dsv3", "--ranks", "4", "--placement", "balanced", "--calibration", CalibrationFolder(),
            "--redundant", "2", "--onnx-weights", "int4");
        var full = _tmp["full-int4"];
        var export = Cli.Run("export", "onnx", TestData.Model("tiny-dsv3"), "-o", full, "--weights", "int4", "-q");
        export.ExitCode.Should().Be(0, export.ToString());
        using var eval = Converter.Formats.Safetensors.SafetensorsFile.Open(Eval());
        int[] tokens;
        using (var t = eval.Read("tokens")) tokens = t.As<int>()[..256].ToArray();
        using var sharded = new ShardedOnnxArtifactRunner(outDir);
        using var whole = new OnnxArtifactRunner(full);
        var a = sharded.Run(tokens, 2, 128, false, true);
        var b = whole.Run(tokens, 2, 128, false, true);
        double worst = 0;
        for (int i = 0; i < b.Logits.Length; i++) worst = Math.Max(worst, Math.Abs(a.Logits[i] - b.Logits[i]));
        log.WriteLine($"int4 ranks summed vs unsharded int4 export: max |logit diff| {worst:G3}; {sharded.Description}");
        worst.Should().BeLessThan(1e-3, "the same INT4 codes and kernels, summed over ranks in graph order");
        for (int l = 0; l < b.RoutingTopK!.Length; l++) a.RoutingTopK![l].Should().Equal(b.RoutingTopK[l], $"MoE layer {l} routing");

        // verify against the BF16 golden with the int4 preset: passes, at the unsharded export's accuracy
        var (rc, report, raw) = Verify(outDir, Eval(), "--format-preset", "int4");
        var (rcWhole, reportWhole, rawWhole) = Verify(full, Eval(), "--format-preset", "int4");
        rcWhole.Should().Be(0, rawWhole.ToString());
        rc.Should().Be(0, raw.ToString());
        report!["passed"]!.GetValue<bool>().Should().BeTrue();
        Metric(report, "kl_mean").Should().BeApproximately(Metric(reportWhole!, "kl_mean"), 0.01 * Metric(reportWhole!, "kl_mean"));
    }

    [Fact]
    public void OnnxWeightsWithoutOnnxAreRefusedBeforeWriting()
    {
        var outDir = _tmp["orphan"];
        var orphan = Cli.Run("shard", TestData.Model("tiny-dsv3"), "-o", outDir, "--ranks", "2", "--onnx-weights", "fp8", "-q");
        orphan.ExitCode.Should().Be(2, orphan.ToString());
        orphan.StdErr.Should().Contain("--onnx-weights needs --onnx");
        Directory.Exists(outDir).Should().BeFalse();
    }

    private static void CopyDir(string from, string to)
    {
        foreach (var dir in Directory.GetDirectories(from, "*", SearchOption.AllDirectories))
            Directory.CreateDirectory(dir.Replace(from, to));
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from, "*", SearchOption.AllDirectories))
            File.Copy(file, file.Replace(from, to));
    }
}
