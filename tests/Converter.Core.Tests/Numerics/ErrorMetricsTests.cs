using Converter.Numerics;

namespace Converter.Core.Tests.Numerics;

public class ErrorMetricsTests
{
    [Fact]
    public void Hand_computed_values()
    {
        // noise 1, signal 1+4+9+16 = 30
        var m = ErrorMetrics.Compute([1f, 2f, 3f, 4f], [1f, 2f, 3f, 5f]);
        m.RelativeRmse.Should().BeApproximately(Math.Sqrt(1.0 / 30), 1e-15);
        m.SnrDb.Should().BeApproximately(10 * Math.Log10(30), 1e-12);
        m.MaxRelativeError.Should().Be(0.25);
        m.Count.Should().Be(4);
    }

    [Fact]
    public void Max_relative_error_takes_the_worst_element()
    {
        // errors 0.5/2 = 0.25, 1/-4 = 0.25... and 0.3/0.5 = 0.6
        var m = ErrorMetrics.Compute([2f, -4f, 0.5f], [2.5f, -3f, 0.8f]);
        m.MaxRelativeError.Should().BeApproximately(0.6, 1e-7);
        // noise 0.25 + 1 + 0.09, signal 4 + 16 + 0.25
        m.RelativeRmse.Should().BeApproximately(Math.Sqrt((0.25 + 1 + (0.8 - 0.5) * (0.8 - 0.5)) / 20.25), 1e-7);
    }

    [Fact]
    public void Exact_and_degenerate_inputs()
    {
        var exact = ErrorMetrics.Compute([1f, -2f, 0f], [1f, -2f, 0f]);
        exact.RelativeRmse.Should().Be(0);
        exact.MaxRelativeError.Should().Be(0);
        double.IsPositiveInfinity(exact.SnrDb).Should().BeTrue();

        var zeroRef = ErrorMetrics.Compute([0f, 0f], [0f, 1f]);
        double.IsPositiveInfinity(zeroRef.RelativeRmse).Should().BeTrue();
        double.IsPositiveInfinity(zeroRef.MaxRelativeError).Should().BeTrue();
        double.IsNegativeInfinity(zeroRef.SnrDb).Should().BeTrue();

        // 20 dB = noise power a hundredth of the signal: relative RMSE 0.1
        ErrorMetrics.SnrDbOf([10f], [11f]).Should().BeApproximately(20, 1e-12);
        ErrorMetrics.RelativeRmseOf([10f], [11f]).Should().BeApproximately(0.1, 1e-12);

        var act = () => ErrorMetrics.Compute([1f], [1f, 2f]);
        act.Should().Throw<ArgumentException>();
    }
}
