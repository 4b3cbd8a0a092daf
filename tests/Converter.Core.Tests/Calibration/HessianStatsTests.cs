using Converter.Calibration;

namespace Converter.Tests.Calibration;

public class HessianStatsTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    [Fact]
    public void AccumulatorIsTheMeanOfOuterProducts()
    {
        int k = 13, rows = 7;
        var rng = new Random(5);
        var x = new float[rows * k];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() - 0.5);
        var acc = new HessianAccumulator(k);
        acc.Add(x.AsSpan(0, 3 * k), 3);
        acc.Add(x.AsSpan(3 * k), rows - 3);
        var h = acc.Mean();
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
            {
                double s = 0;
                for (int t = 0; t < rows; t++) s += (double)x[t * k + i] * x[t * k + j];
                h[i * k + j].Should().BeApproximately(s / rows, 1e-12);
            }
        acc.Count.Should().Be(rows);
    }

    [Fact]
    public void LayerFileRoundTripsAndIsListedInTheManifest()
    {
        var dir = _tmp["calib"];
        var data = new CalibrationData
        {
            ModelType = "deepseek_v3", ConfigFingerprint = "f", RoutedExperts = 3, ExpertsPerToken = 1, Sequences = 1, SequenceLength = 4,
            TopK = new Dictionary<int, int[]> { [1] = [0, 0, 2, 0] },
        };
        var g = new HessianAccumulator?[3];
        var d = new HessianAccumulator?[3];
        g[0] = new HessianAccumulator(4);
        g[0]!.Add([1, 2, 3, 4, 0, 1, 0, 1], 2);
        d[0] = new HessianAccumulator(2);
        d[0]!.Add([1, -1], 1);
        HessianStats.WriteLayer(dir, data, 1, g, d, g[0]);
        data.Save(dir);
        var loaded = CalibrationData.Load(dir);
        loaded.Extra["stats"]!["hessian"]![0]!.GetValue<string>().Should().Be("stats/hessian.layer1.safetensors");
        using var r = HessianStats.LayerReader.TryOpen(dir, 1, 3)!;
        r.Tokens.Should().Equal(2, 0, 0);
        r.Read(HessianStats.ExpertName(0, ExpertInput.GateUp), 4)!.Should().Equal(g[0]!.Mean().Select(v => (double)(float)v));
        r.Read(HessianStats.ExpertName(1, ExpertInput.GateUp), 4).Should().BeNull();
        var wrong = () => r.Read(HessianStats.ExpertName(0, ExpertInput.Down), 3);
        wrong.Should().Throw<InvalidDataException>().WithMessage("*experts.0.down*expected F32 [3, 3]*");
        HessianStats.LayerReader.TryOpen(dir, 2, 3).Should().BeNull();
    }
}
