using Converter.Calibration;
using Converter.Models;
using Converter.Sharding;

namespace Converter.Tests.Sharding;

public class PlacementTests
{
    private static readonly ModelArchitecture Arch = ShardTestData.Arch();
    private static readonly CalibrationData Cal = ShardTestData.Calibration(Arch);

    /// <summary>Checks the invariants directly (not through PlacementValidator), so a validator bug cannot hide a placement bug.</summary>
    private static void AssertWellFormed(ExpertPlacement p)
    {
        int e = Arch.NumRoutedExperts;
        p.Layers.Select(l => l.Layer).Should().Equal(Arch.MoeLayers());
        foreach (var l in p.Layers)
        {
            var copies = new int[e];
            for (int r = 0; r < p.Ranks; r++)
            {
                // Capacity: E/N each plus the replicas, spread evenly (flat) or within the group's node (group-aware).
                l.RankSlots[r].Length.Should().BeGreaterThanOrEqualTo(e / p.Ranks, $"layer {l.Layer} rank {r}");
                if (!p.GroupAware)
                    l.RankSlots[r].Length.Should().BeLessThanOrEqualTo((e + p.Redundant + p.Ranks - 1) / p.Ranks, $"layer {l.Layer} rank {r} capacity");
                else
                    l.RankSlots[r].Length.Should().BeLessThanOrEqualTo(e / p.Ranks + p.Redundant, $"layer {l.Layer} rank {r} capacity");
                l.RankSlots[r].Should().OnlyHaveUniqueItems($"layer {l.Layer} rank {r}: replicas on distinct ranks");
                foreach (var x in l.RankSlots[r]) copies[x]++;
            }
            copies.Should().OnlyContain(c => c >= 1, "every expert placed");
            copies.Sum().Should().Be(e + p.Redundant);
            for (int x = 0; x < e; x++)
            {
                l.Replicas[x].Should().HaveCount(copies[x]);
                l.Replicas[x].Select(r => r.Rank).Should().OnlyHaveUniqueItems();
                foreach (var rep in l.Replicas[x])
                {
                    l.RankSlots[rep.Rank][rep.Slot].Should().Be(x);
                    rep.Share.Should().BeApproximately(1.0 / copies[x], 1e-12, "even split");
                }
            }
        }
    }

    [Fact]
    public void ContiguousGivesRankIExpertsIE_NToIPlus1E_N()
    {
        var p = PlacementPlanner.Plan(Arch, new PlacementOptions(4));
        AssertWellFormed(p);
        foreach (var l in p.Layers)
            for (int r = 0; r < 4; r++)
                l.RankSlots[r].Should().Equal(Enumerable.Range(r * 4, 4));
        p.Model.ConfigFingerprint.Should().Be(CalibrationData.Fingerprint(Arch));
    }

    [Theory]
    [InlineData(4, 0, 0, true)]
    [InlineData(4, 0, 4, true)]
    [InlineData(2, 0, 2, true)]
    [InlineData(8, 0, 0, true)]
    [InlineData(16, 0, 0, true)]
    [InlineData(4, 2, 2, true)]
    [InlineData(8, 2, 0, true)]
    [InlineData(8, 4, 8, true)]
    [InlineData(4, 0, 2, true)]
    [InlineData(4, 0, 3, true)]
    [InlineData(4, 2, 1, true)]
    [InlineData(4, 2, 2, false)]
    public void BalancedPlacementsAreWellFormed(int ranks, int perNode, int redundant, bool groupAware)
    {
        var p = PlacementPlanner.Plan(Arch, new PlacementOptions(ranks, perNode, PlacementMethod.Balanced, redundant, groupAware), Cal);
        AssertWellFormed(p);
        p.GroupAware.Should().Be(groupAware && perNode > 0 && perNode < ranks);
        if (p.GroupAware)
        {
            int groupSize = Arch.NumRoutedExperts / Arch.NumExpertGroups;
            foreach (var l in p.Layers)
                for (int x = 0; x < Arch.NumRoutedExperts; x++)
                    l.Replicas[x].Select(r => p.NodeOf(r.Rank)).Should().OnlyContain(n => n == p.NodeOf(l.Replicas[x / groupSize * groupSize][0].Rank),
                        $"expert {x} stays on its group's node");
        }
        // Round trip through placement.json.
        using var tmp = new TestData.TempDir();
        PlacementJson.Write(p, tmp["placement.json"]);
        var back = PlacementJson.Read(tmp["placement.json"]);
        PlacementJson.ToJson(back).ToJsonString().Should().Be(PlacementJson.ToJson(p).ToJsonString());
    }

    [Fact]
    public void ReplicasGoToTheExpertsWithTheHighestLoadPerCopy()
    {
        var p = PlacementPlanner.Plan(Arch, new PlacementOptions(4, 0, PlacementMethod.Balanced, 4, GroupAware: false), Cal);
        foreach (var l in p.Layers.Where(l => l.LoadSource == "calibration"))
        {
            var counts = Cal.ExpertCounts(l.Layer);
            double maxPerCopy = Enumerable.Range(0, 16).Max(x => (double)counts[x] / l.Replicas[x].Length);
            // Greedy replication: taking any replica back would leave that expert at least as hot per copy as the hottest now.
            for (int x = 0; x < 16; x++)
                if (l.Replicas[x].Length > 1)
                    ((double)counts[x] / (l.Replicas[x].Length - 1)).Should().BeGreaterThanOrEqualTo(maxPerCopy, $"layer {l.Layer} expert {x}");
            l.Replicas[Array.IndexOf(counts, counts.Max())].Length.Should().BeGreaterThan(1, "the hottest expert is replicated");
        }
    }

    [Fact]
    public void MtpLayerWithoutRoutingDataIsPlacedOnUniformLoad()
    {
        var p = PlacementPlanner.Plan(Arch, new PlacementOptions(4, 0, PlacementMethod.Balanced), Cal);
        var mtp = p.Layer(4)!;
        mtp.LoadSource.Should().Be("uniform");
        p.Layer(1)!.LoadSource.Should().Be("calibration");
    }

    [Fact]
    public void EvaluatorCountsMatchADirectCountOfTheGoldenRouting()
    {
        var held = ShardTestData.HeldOut(Arch);
        var p = PlacementPlanner.Plan(Arch, new PlacementOptions(4, 2));
        var load = LoadEvaluator.Evaluate(p, held);
        foreach (var l in load.Layers)
        {
            var ids = held.TopK[l.Layer];
            var expect = new long[4];
            long ranksSum = 0, nodesSum = 0;
            for (int t = 0; t < ids.Length / 4; t++)
            {
                var ranks = new HashSet<int>();
                for (int j = 0; j < 4; j++) { expect[ids[t * 4 + j] / 4]++; ranks.Add(ids[t * 4 + j] / 4); }
                ranksSum += ranks.Count;
                nodesSum += ranks.Select(r => r / 2).Distinct().Count();
            }
            l.RankLoad.Should().Equal(expect);
            l.Imbalance.Should().BeApproximately(expect.Max() / (expect.Sum() / 4.0), 1e-12);
            l.RanksPerToken.Should().BeApproximately(ranksSum / (ids.Length / 4.0), 1e-12);
            l.NodesPerToken.Should().BeApproximately(nodesSum / (ids.Length / 4.0), 1e-12);
        }
        held.Tokens.Should().Be(4 * 128);
    }

    [Theory]
    [InlineData(4, 0, 0)]
    [InlineData(4, 0, 2)]
    [InlineData(8, 0, 0)]
    [InlineData(4, 2, 0)]
    [InlineData(8, 2, 0)]
    [InlineData(4, 2, 2)]
    [InlineData(8, 2, 2)]
    public void BalancedHasLowerHeldOutImbalanceThanContiguous(int ranks, int perNode, int redundant)
    {
        var held = ShardTestData.HeldOut(Arch);
        var contiguous = LoadEvaluator.Evaluate(PlacementPlanner.Plan(Arch, new PlacementOptions(ranks, perNode)), held);
        var balanced = LoadEvaluator.Evaluate(PlacementPlanner.Plan(Arch, new PlacementOptions(ranks, perNode, PlacementMethod.Balanced, redundant), Cal), held);
        balanced.MeanImbalance.Should().BeLessThan(contiguous.MeanImbalance,
            $"balanced {balanced.MeanImbalance:F3} vs contiguous {contiguous.MeanImbalance:F3}");
    }

    [Fact]
    public void GroupAwarePlacementKeepsTokensWithinTopkGroupNodes()
    {
        var held = ShardTestData.HeldOut(Arch);
        // 8 ranks, 2 per node: 4 nodes for 4 groups, one group per node.
        var grouped = PlacementPlanner.Plan(Arch, new PlacementOptions(8, 2, PlacementMethod.Balanced, 0, GroupAware: true), Cal);
        var flat = PlacementPlanner.Plan(Arch, new PlacementOptions(8, 2, PlacementMethod.Balanced, 0, GroupAware: false), Cal);
        grouped.GroupAware.Should().BeTrue();
        foreach (var (layer, ids) in held.TopK)
        {
            var lp = grouped.Layer(layer)!;
            int maxNodes = 0;
            for (int t = 0; t < ids.Length / 4; t++)
                maxNodes = Math.Max(maxNodes, Enumerable.Range(0, 4).Select(j => grouped.NodeOf(lp.Replicas[ids[t * 4 + j]][0].Rank)).Distinct().Count());
            maxNodes.Should().BeLessThanOrEqualTo(Arch.TopkExpertGroups, $"layer {layer}: group-limited routing bounds nodes per token");
        }
        LoadEvaluator.Evaluate(grouped, held).NodesPerToken.Should().BeLessThan(LoadEvaluator.Evaluate(flat, held).NodesPerToken);
    }

    [Theory]
    [InlineData(3, 0, 0, PlacementMethod.Contiguous, "3 ranks do not divide the 16 routed experts")]
    [InlineData(1, 0, 1, PlacementMethod.Balanced, "one per rank")]
    [InlineData(1, 0, 17, PlacementMethod.Balanced, "more replicas than the 16 routed experts")]
    [InlineData(4, 3, 0, PlacementMethod.Contiguous, "--ranks-per-node 3 does not divide --ranks 4")]
    [InlineData(8, 1, 0, PlacementMethod.Balanced, "8 nodes (8 ranks / 1 per node) do not divide 4 groups")]
    [InlineData(4, 1, 1, PlacementMethod.Balanced, "cannot place 1 replicas within nodes of 1 ranks")]
    [InlineData(4, 0, 4, PlacementMethod.Contiguous, "--redundant needs --placement balanced")]
    public void BadOptionsAreRejectedClearly(int ranks, int perNode, int redundant, PlacementMethod method, string message)
    {
        var act = () => PlacementPlanner.Plan(Arch, new PlacementOptions(ranks, perNode, method, redundant), Cal);
        act.Should().Throw<ArgumentException>().Which.Message.Should().Contain(message);
    }

    [Fact]
    public void BalancedWithoutCalibrationIsRejected()
    {
        var act = () => PlacementPlanner.Plan(Arch, new PlacementOptions(4, 0, PlacementMethod.Balanced));
        act.Should().Throw<ArgumentException>().Which.Message.Should().Contain("needs --calibration");
    }

    [Fact]
    public void CalibrationFromAnotherModelIsRejected()
    {
        var other = new CalibrationData
        {
            ModelType = Cal.ModelType,
            ConfigFingerprint = "00000000deadbeef",
            RoutedExperts = Cal.RoutedExperts,
            ExpertsPerToken = Cal.ExpertsPerToken,
            Sequences = Cal.Sequences,
            SequenceLength = Cal.SequenceLength,
            TopK = Cal.TopK,
        };
        var act = () => PlacementPlanner.Plan(Arch, new PlacementOptions(4, 0, PlacementMethod.Balanced), other, "/some/calib");
        act.Should().Throw<InvalidDataException>().Which.Message.Should().Contain("/some/calib").And.Contain("00000000deadbeef");
    }

    [Fact]
    public void PlacementFileWithAnExpertOnNoRankIsRejected()
    {
        using var tmp = new TestData.TempDir();
        var json = PlacementJson.ToJson(PlacementPlanner.Plan(Arch, new PlacementOptions(4)));
        var experts = json["layers"]![0]!["experts"]!.AsArray();
        experts[5]!["replicas"] = new System.Text.Json.Nodes.JsonArray();
        File.WriteAllText(tmp["placement.json"], json.ToJsonString());
        var act = () => PlacementJson.Read(tmp["placement.json"]);
        act.Should().Throw<InvalidDataException>().Which.Message.Should().Contain(tmp["placement.json"]).And.Contain("expert 5 is on no rank");
    }

    [Fact]
    public void WireBytesFollowTheFormatDefinitions()
    {
        // hidden 256 = two 1x128 tiles: BF16 2 B/value; E4M3/E5M2 1 B/value + one f32 scale per tile;
        // LogFMT-n n bits/value + (amin, amax) f32 pair per tile.
        var bytes = WireFormats.All.ToDictionary(f => f.Name, f => f.BytesPerToken(256));
        bytes.Should().Equal(new Dictionary<string, long>
        {
            ["BF16"] = 512, ["E4M3"] = 264, ["E5M2"] = 264, ["LogFMT-8"] = 272, ["LogFMT-10"] = 336,
        });
    }
}
