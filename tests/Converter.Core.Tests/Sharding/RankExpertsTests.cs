using Converter.Calibration;
using Converter.Models;
using Converter.Pipelines;
using Converter.Sharding;

namespace Converter.Tests.Sharding;

/// <summary>The slot weights a rank graph computes: summed over ranks they must give back every expert's routing weight.</summary>
public class RankExpertsTests
{
    private static readonly ModelArchitecture Arch = ShardTestData.Arch();
    private static readonly CalibrationData Cal = ShardTestData.Calibration(Arch);

    public static TheoryData<int, int, PlacementMethod, int> Placements => new()
    {
        { 4, 0, PlacementMethod.Contiguous, 0 },
        { 8, 0, PlacementMethod.Contiguous, 0 },
        { 4, 0, PlacementMethod.Balanced, 2 },
        { 4, 2, PlacementMethod.Balanced, 2 },
        { 2, 0, PlacementMethod.Balanced, 5 },
    };

    /// <summary>
    /// Dense routing weights of golden-routed tokens (top-k from the reference's route_topk_idx, random positive
    /// weights) are split into each rank's slot weights and scattered back: per expert the ranks' weights must sum to
    /// the original (to float rounding of the shares), each slot must carry its replica's share, and no rank may see
    /// an expert it does not hold.
    /// </summary>
    [Theory]
    [MemberData(nameof(Placements))]
    public void SlotWeightsSumOverRanksToTheDenseWeights(int ranks, int perNode, PlacementMethod method, int redundant)
    {
        var p = PlacementPlanner.Plan(Arch, new PlacementOptions(ranks, perNode, method, redundant), method == PlacementMethod.Balanced ? Cal : null);
        int e = Arch.NumRoutedExperts, k = Arch.NumExpertsPerToken;
        var held = ShardTestData.HeldOut(Arch);
        var rng = new Random(7);
        foreach (var l in p.Layers)
        {
            var top = held.TopK.TryGetValue(l.Layer, out var t) ? t : null;
            if (top == null) continue; // the MTP layer has no golden routing
            int tokens = top.Length / k;
            var dense = new float[tokens * e];
            for (int i = 0; i < tokens; i++)
                for (int j = 0; j < k; j++) dense[i * e + top[i * k + j]] = 0.05f + (float)rng.NextDouble();
            var back = new double[tokens * e];
            for (int r = 0; r < ranks; r++)
            {
                var (experts, shares) = RankExperts.Slots(l, r);
                experts.Should().Equal(l.RankSlots[r]);
                for (int s = 0; s < experts.Length; s++)
                    shares[s].Should().Be(l.Replicas[experts[s]].Single(x => x.Rank == r).Share);
                var local = new float[tokens * experts.Length];
                RankExperts.LocalWeights(dense, e, experts, Array.ConvertAll(shares, x => (float)x), local);
                for (int i = 0; i < tokens; i++)
                    for (int s = 0; s < experts.Length; s++) back[i * e + experts[s]] += local[i * experts.Length + s];
            }
            for (int i = 0; i < dense.Length; i++)
                back[i].Should().BeApproximately(dense[i], 2e-7 * dense[i] + 1e-30, $"layer {l.Layer} token {i / e} expert {i % e}");
        }
    }

    [Fact]
    public void OnnxRankExpertsCoverTheMainLayersOnly()
    {
        var p = PlacementPlanner.Plan(Arch, new PlacementOptions(4, 0, PlacementMethod.Balanced, 2), Cal);
        int hidden = ((Converter.Models.DeepseekV3.DeepseekV3Architecture)Arch).Cfg.NumHiddenLayers;
        var rank = ShardOnnxExport.LocalExperts(p, 3, hidden);
        rank.Rank.Should().Be(3);
        rank.Ranks.Should().Be(4);
        rank.Layers.Keys.Order().Should().Equal(p.Layers.Select(l => l.Layer).Where(l => l < hidden), "MTP layers are not exported");
        foreach (var (layer, local) in rank.Layers)
        {
            local.Experts.Should().Equal(p.Layer(layer)!.RankSlots[3]);
            local.Shares.Should().OnlyContain(s => s == 1f || s == 0.5f, "one replica or an even split of two");
        }
    }
}
