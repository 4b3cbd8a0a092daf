using Converter.Models;

namespace Converter.Decoder;

/// <summary>
/// Rotary tables as transformers 5 builds them: plain rope, or YaRN (<c>_compute_yarn_parameters</c>: ramp between
/// extrapolated and interpolated frequencies, truncated correction range, cos/sin multiplied by attention_factor).
/// Frequencies are derived in float64 and kept as float32 (what transformers stores); angles are the float32 product
/// position * inv_freq as transformers computes them; cos/sin of that angle are rounded once to float32.
/// </summary>
public static class RotaryTables
{
    /// <param name="dim">The rotated width (the rope slice of a head, or the whole head).</param>
    public static float[] InverseFrequencies(int dim, double theta, YarnScaling? yarn)
    {
        int half = dim / 2;
        var result = new float[half];
        var extrap = new double[half];
        for (int i = 0; i < half; i++) extrap[i] = 1.0 / Math.Pow(theta, 2.0 * i / dim);
        if (yarn is not { } y)
        {
            for (int i = 0; i < half; i++) result[i] = (float)extrap[i];
            return result;
        }
        double factor = y.Factor;
        double CorrectionDim(double rotations) =>
            dim * Math.Log(y.OriginalMaxPositionEmbeddings / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));
        double low = Math.Max(Math.Floor(CorrectionDim(y.BetaFast)), 0);
        double high = Math.Min(Math.Ceiling(CorrectionDim(y.BetaSlow)), dim - 1);
        if (low == high) high += 0.001;
        for (int i = 0; i < half; i++)
        {
            double ramp = Math.Clamp((i - low) / (high - low), 0, 1);
            double extrapolationFactor = 1 - ramp;
            double interp = extrap[i] / factor;
            result[i] = (float)(interp * (1 - extrapolationFactor) + extrap[i] * extrapolationFactor);
        }
        return result;
    }

    /// <summary>YaRN's cos/sin multiplier (attention_factor): as given, the mscale ratio, or get_mscale(factor).</summary>
    public static double AttentionFactor(YarnScaling? yarn)
    {
        if (yarn is not { } y) return 1.0;
        static double GetMscale(double scale, double m) => scale <= 1 ? 1.0 : 0.1 * m * Math.Log(scale) + 1.0;
        if (y.AttentionFactor is { } af) return af;
        return y.HasMscales && y.Mscale != 0 && y.MscaleAllDim != 0
            ? GetMscale(y.Factor, y.Mscale) / GetMscale(y.Factor, y.MscaleAllDim)
            : GetMscale(y.Factor, 1);
    }

    /// <summary>cos and sin caches [positions, dim / 2] (RotaryEmbedding's layout).</summary>
    public static (float[] Cos, float[] Sin) Tables(int dim, double theta, YarnScaling? yarn, int positions)
    {
        var inv = InverseFrequencies(dim, theta, yarn);
        double af = AttentionFactor(yarn);
        int half = inv.Length;
        var cos = new float[positions * half];
        var sin = new float[positions * half];
        for (int p = 0; p < positions; p++)
            for (int i = 0; i < half; i++)
            {
                float angle = p * inv[i];
                cos[p * half + i] = (float)((float)Math.Cos(angle) * af);
                sin[p * half + i] = (float)((float)Math.Sin(angle) * af);
            }
        return (cos, sin);
    }
}
