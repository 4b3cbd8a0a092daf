using Converter.Calibration;

namespace Converter.Tests.Calibration;

public class CalibrationPassPlanTests
{
    /// <summary>Every expert of every layer in exactly one range; a layer's ranges contiguous, in order, in consecutive passes.</summary>
    private static void CheckCoverage(CalibrationPassPlan plan, int[] layers, int experts)
    {
        var seen = plan.Passes.SelectMany((p, i) => p.Select(r => (Pass: i, Range: r))).ToList();
        seen.Select(s => s.Range.Layer).Distinct().Should().Equal(layers);
        foreach (var l in layers)
        {
            var mine = seen.Where(s => s.Range.Layer == l).ToList();
            mine[0].Range.First.Should().Be(0);
            mine[^1].Range.End.Should().Be(experts);
            for (int i = 1; i < mine.Count; i++)
            {
                mine[i].Range.First.Should().Be(mine[i - 1].Range.End, $"layer {l}'s ranges follow each other");
                mine[i].Pass.Should().Be(mine[i - 1].Pass + 1, $"layer {l}'s ranges are in consecutive passes");
            }
            mine.Should().OnlyContain(s => s.Range.Count > 0);
        }
    }

    [Fact]
    public void SizesFollowTheDocumentedFormula()
    {
        // DeepSeek-V3: hidden 7168, moe_intermediate 2048, 256 routed experts
        CalibrationPassPlan.ExpertBytesFor(7168, 2048, true, true).Should().Be((7168L * 7168 + 2048L * 2048) * 8 + 3L * 7168 * 2048 * 4);
        CalibrationPassPlan.ExpertBytesFor(7168, 2048, false, true).Should().Be(3L * 7168 * 2048 * 4);
        CalibrationPassPlan.ExpertBytesFor(7168, 2048, false, false).Should().Be(0);
        CalibrationPassPlan.LayerBytesFor(7168, 2048, 256, true).Should().Be(7168L * 7168 * 8 + (256L * (7168 + 2048) + 7168) * 4);
        CalibrationPassPlan.LayerBytesFor(7168, 2048, 256, false).Should().Be(0);
    }

    [Theory]
    [InlineData(1)]                 // below one expert: one expert per pass
    [InlineData(5_000_000)]
    [InlineData(6_500_000)]
    [InlineData(17_000_000)]        // one layer and a bit
    [InlineData(long.MaxValue)]     // everything in one pass
    public void PassesCoverEveryExpertOnceAndStayUnderTheBudget(long budget)
    {
        int[] layers = [1, 2, 3];
        const int experts = 16;
        long expert = CalibrationPassPlan.ExpertBytesFor(256, 128, true, true), layer = CalibrationPassPlan.LayerBytesFor(256, 128, experts, true);
        var plan = CalibrationPassPlan.Create(layers, experts, expert, layer, budget);
        CheckCoverage(plan, layers, experts);
        for (int p = 0; p < plan.Passes.Count; p++)
        {
            if (expert + layer <= budget) plan.PassBytes(p).Should().BeLessThanOrEqualTo(budget, plan.Describe());
            else plan.Passes[p].Should().ContainSingle().Which.Count.Should().Be(1);
        }
        // greedy packing: a pass is closed only when the next expert would not fit in it
        for (int p = 0; p + 1 < plan.Passes.Count; p++)
            (plan.PassBytes(p) + expert + (plan.Passes[p][^1].End == experts ? layer : 0)).Should().BeGreaterThan(budget);
        if (budget == long.MaxValue) plan.Passes.Should().ContainSingle().Which.Should().OnlyContain(r => r.Count == experts);
        if (budget == 1) plan.Passes.Should().HaveCount(layers.Length * experts);
    }

    [Fact]
    public void DeepSeekV3AtFourGigabytesSplitsEachLayer()
    {
        int[] layers = Enumerable.Range(3, 58).ToArray();
        long expert = CalibrationPassPlan.ExpertBytesFor(7168, 2048, true, true), layer = CalibrationPassPlan.LayerBytesFor(7168, 2048, 256, true);
        var plan = CalibrationPassPlan.Create(layers, 256, expert, layer, 4L << 30);
        CheckCoverage(plan, layers, 256);
        for (int p = 0; p < plan.Passes.Count; p++) plan.PassBytes(p).Should().BeLessThanOrEqualTo(4L << 30);
        long perLayer = 256 * expert + layer;
        plan.Passes.Count.Should().BeGreaterThanOrEqualTo((int)(layers.Length * perLayer / (4L << 30)));
        plan.Describe().Should().StartWith($"{plan.Passes.Count} pass(es)").And.Contain("more");
    }

    [Fact]
    public void RoutingOnlyIsOnePass()
    {
        var plan = CalibrationPassPlan.Create([1, 2], 8, 0, 0, 1);
        plan.Passes.Should().ContainSingle().Which.Should().Equal(new ExpertRange(1, 0, 8), new ExpertRange(2, 0, 8));
    }
}
