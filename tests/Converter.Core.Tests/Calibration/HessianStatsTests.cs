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

    /// <summary>
    /// The blocked update (64 rows per sweep of the triangle, column tiles of 256, rows in parallel chunks) against
    /// float64 sums of outer products: k above one tile and not a multiple of the chunk, rows leaving a partial block,
    /// routing-style weights including 0. Thread count does not change a bit.
    /// </summary>
    [Theory]
    [InlineData(300, 200)]
    [InlineData(37, 8)]
    [InlineData(64, 3)]
    public void BlockedWeightedUpdateIsTheWeightedMeanOfOuterProducts(int k, int rows)
    {
        var rng = new Random(k + rows);
        var x = new float[rows * k];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        var w = new float[rows];
        for (int r = 0; r < rows; r++) w[r] = r % 7 == 3 ? 0f : (float)rng.NextDouble();
        var one = new HessianAccumulator(k) { MaxThreads = 1 };
        var two = new HessianAccumulator(k) { MaxThreads = 2 };
        one.Add(x, rows, w);
        two.Add(x, rows, w);
        var h = one.Mean();
        two.Mean().Should().Equal(h);
        double wsum = 0;
        foreach (var v in w) wsum += v;
        one.WeightSum.Should().BeApproximately(wsum, 1e-9);
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
            {
                double s = 0;
                for (int t = 0; t < rows; t++) s += (double)w[t] * x[t * k + i] * x[t * k + j];
                h[i * k + j].Should().BeApproximately(s / wsum, 1e-12, $"[{i}, {j}]");
            }
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
    [Fact]
    public void StreamedLayerWriterWritesTheSameBytesAsWriteLayer()
    {
        var data = new CalibrationData
        {
            ModelType = "deepseek_v3", ConfigFingerprint = "f", RoutedExperts = 4, ExpertsPerToken = 1, Sequences = 1, SequenceLength = 5,
            TopK = new Dictionary<int, int[]> { [1] = [0, 2, 2, 3, 0] },
        };
        var rng = new Random(3);
        float[] Rows(int n, int k) => Enumerable.Range(0, n * k).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        var tokens = data.ExpertCounts(1);
        var g = new HessianAccumulator?[4];
        var d = new HessianAccumulator?[4];
        var pooled = new HessianAccumulator(6);
        pooled.Add(Rows(5, 6), 5);
        for (int e = 0; e < 4; e++)
        {
            if (tokens[e] == 0) continue;
            (g[e] = new HessianAccumulator(6)).Add(Rows((int)tokens[e], 6), (int)tokens[e]);
            (d[e] = new HessianAccumulator(3)).Add(Rows((int)tokens[e], 3), (int)tokens[e]);
        }
        HessianStats.WriteLayer(_tmp["a"], data, 1, g, d, pooled);
        var other = new CalibrationData
        {
            ModelType = data.ModelType, ConfigFingerprint = data.ConfigFingerprint, RoutedExperts = 4, ExpertsPerToken = 1, Sequences = 1,
            SequenceLength = 5, TopK = data.TopK,
        };
        using (var w = new HessianStats.LayerWriter(_tmp["b"], 1, tokens, 6, 3, pooled: true))
        {
            var outOfOrder = () => w.WriteExpert(1, null, null);
            outOfOrder.Should().Throw<InvalidOperationException>().WithMessage("*expert 1 written, expected 0*");
            for (int e = 0; e < 4; e++) w.WriteExpert(e, g[e], d[e]);
            w.Commit(other, pooled);
        }
        string file = Path.Combine(HessianStats.Folder, HessianStats.FileName(1));
        File.ReadAllBytes(Path.Combine(_tmp["b"], file)).Should().Equal(File.ReadAllBytes(Path.Combine(_tmp["a"], file)));
        other.Extra.ToJsonString().Should().Be(data.Extra.ToJsonString());
        Directory.GetFileSystemEntries(Path.Combine(_tmp["b"], HessianStats.Folder)).Should().ContainSingle("the staging folder is gone");

        // an expert whose Hessians do not cover its planned tokens is refused
        using var bad = new HessianStats.LayerWriter(_tmp["c"], 1, tokens, 6, 3, pooled: true);
        var wrong = () => bad.WriteExpert(0, g[3], d[3]);
        wrong.Should().Throw<InvalidOperationException>().WithMessage("*expert 0*planned 2*");
    }
}
