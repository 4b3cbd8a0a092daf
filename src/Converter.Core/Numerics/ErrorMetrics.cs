namespace Converter.Numerics;

/// <summary>
/// How far an approximation is from a reference, accumulated in float64.
/// RelativeRmse = sqrt(Σ(a-r)² / Σr²); SnrDb = 10·log10(Σr² / Σ(a-r)²);
/// MaxRelativeError = max |a-r| / |r| over elements with r ≠ 0 (an element with r = 0 and a ≠ 0 makes it +∞).
/// Exact agreement gives RelativeRmse 0, MaxRelativeError 0 and SnrDb +∞; an all-zero reference with a
/// nonzero approximation gives RelativeRmse +∞ and SnrDb -∞ (0/0 cases are 0 and +∞).
/// </summary>
public readonly record struct ErrorMetrics(double RelativeRmse, double MaxRelativeError, double SnrDb, long Count)
{
    public static ErrorMetrics Compute(ReadOnlySpan<float> reference, ReadOnlySpan<float> approx)
    {
        if (reference.Length != approx.Length)
            throw new ArgumentException($"reference has {reference.Length} elements, approximation {approx.Length}");
        double signal = 0, noise = 0, maxRel = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            double r = reference[i], d = (double)approx[i] - r;
            signal += r * r;
            noise += d * d;
            if (d != 0) maxRel = Math.Max(maxRel, r == 0 ? double.PositiveInfinity : Math.Abs(d) / Math.Abs(r)); // NaN propagates
        }
        return new ErrorMetrics(RmseFrom(signal, noise), maxRel, SnrFrom(signal, noise), reference.Length);
    }

    public static double RelativeRmseOf(ReadOnlySpan<float> reference, ReadOnlySpan<float> approx) => Compute(reference, approx).RelativeRmse;

    public static double MaxRelativeErrorOf(ReadOnlySpan<float> reference, ReadOnlySpan<float> approx) => Compute(reference, approx).MaxRelativeError;

    public static double SnrDbOf(ReadOnlySpan<float> reference, ReadOnlySpan<float> approx) => Compute(reference, approx).SnrDb;

    private static double RmseFrom(double signal, double noise)
        => noise == 0 ? 0 : Math.Sqrt(noise / signal); // signal 0 -> +inf

    private static double SnrFrom(double signal, double noise)
        => noise == 0 ? double.PositiveInfinity : 10 * Math.Log10(signal / noise); // signal 0 -> -inf
}
