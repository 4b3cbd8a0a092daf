using Converter.Calibration;

namespace Converter.Tests.Calibration;

public sealed class ImatrixAccumulatorTests
{
    [Fact]
    public void SumsSquaresPerColumnAndCountsPerExpert()
    {
        var acc = new ImatrixAccumulator();
        acc.Declare("e", 2, 3, countPerMatrix: true);
        acc.Declare("h", 2, 2); // per head: one count for the tokens
        acc.Add("e", 1, [1, 2, 3, 4], 2);
        acc.Add("h", 0, [1, 1], 1);
        acc.Add("h", 1, [2, 2], 1);
        var f = acc.ToFile(["d"], 1, 2);
        f.Entries["e"].Sums.Should().Equal(0, 0, 10, 20, 0, 0);
        f.Entries["e"].Counts.Should().Equal(0, 2, 0);
        f.Entries["h"].Sums.Should().Equal(1, 1, 4, 4);
        f.Entries["h"].Counts.Should().Equal(1);
    }

    [Fact]
    public void UnroutedExpertsTakeThePooledGateUpInputAndNoDownWeighting()
    {
        var names = ImatrixMoeNames.Llama(1, shared: false);
        var acc = new ImatrixAccumulator();
        acc.Declare(names.Router, 2);
        foreach (var n in new[] { names.ExpertsGate, names.ExpertsUp }) acc.Declare(n, 2, 2, countPerMatrix: true);
        acc.Declare(names.ExpertsDown, 3, 2, countPerMatrix: true);
        acc.Add(names.Router, 0, [1, 2, 3, 4], 2);
        acc.Add(names.ExpertsGate, 0, [1, 2], 1);
        acc.Add(names.ExpertsUp, 0, [1, 2], 1);
        acc.Add(names.ExpertsDown, 0, [1, 1, 1], 1);
        acc.FillUnroutedExperts(names, 2).Should().Be(1);
        var f = acc.ToFile([], 1, 2);
        f.Entries[names.ExpertsGate].Sums.Should().Equal(1, 4, 10, 20);
        f.Entries[names.ExpertsGate].Counts.Should().Equal(1, 2);
        f.Entries[names.ExpertsUp].Importance(legacy: false).Should().Equal(1, 4, 5, 10);
        f.Entries[names.ExpertsDown].Importance(legacy: false).Should().Equal(1, 1, 1, 1, 1, 1); // count 0: llama-quantize's ones
    }
}
