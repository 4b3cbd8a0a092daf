using Converter.Calibration;

namespace Converter.Tests.Calibration;

public class ExpertForwardTests
{
    /// <summary>
    /// The blocked kernel (rows four at a time per weight row) against its definition, each output = Dot(input row,
    /// weight row), bit for bit; and against the float64 reference. Widths that are not multiples of 8 exercise the
    /// scalar tails, row counts that are not multiples of 4 or 16 the leftover rows.
    /// </summary>
    [Theory]
    [InlineData(64, 32, 37)]
    [InlineData(72, 40, 16)]
    [InlineData(5, 3, 9)]
    [InlineData(256, 128, 1)]
    public void BlockedRowsGiveTheBitsOfOneDotPerOutput(int hidden, int inter, int rows)
    {
        var rng = new Random(hidden * 1000 + rows);
        float[] Rand(int n, float scale) { var a = new float[n]; for (int k = 0; k < n; k++) a[k] = (float)(rng.NextDouble() * 2 - 1) * scale; return a; }
        var gate = Rand(hidden * inter, 0.2f);
        var up = Rand(hidden * inter, 0.2f);
        var down = Rand(hidden * inter, 0.2f);
        var x = Rand(rows * hidden, 1f);
        var fwd = new ExpertForward(gate, up, down, hidden, inter) { MaxThreads = 2 };
        var act = new float[rows * inter];
        var y = new float[rows * hidden];
        fwd.Run(x, rows, act, y);

        for (int r = 0; r < rows; r++)
        {
            var xr = x.AsSpan(r * hidden, hidden);
            for (int o = 0; o < inter; o++)
            {
                float g = ExpertForward.Dot(xr, gate.AsSpan(o * hidden, hidden)), u = ExpertForward.Dot(xr, up.AsSpan(o * hidden, hidden));
                act[r * inter + o].Should().Be(g / (1f + MathF.Exp(-g)) * u, $"act[{r}, {o}]");
            }
            for (int o = 0; o < hidden; o++)
                y[r * hidden + o].Should().Be(ExpertForward.Dot(act.AsSpan(r * inter, inter), down.AsSpan(o * inter, inter)), $"y[{r}, {o}]");
        }

        var actRef = new float[rows * inter];
        var yRef = new float[rows * hidden];
        fwd.RunReference(x, rows, actRef, yRef);
        for (int k = 0; k < y.Length; k++) y[k].Should().BeApproximately(yRef[k], 1e-4f + 1e-4f * Math.Abs(yRef[k]));
    }
}
