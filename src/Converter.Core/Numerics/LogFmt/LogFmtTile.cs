namespace Converter.Numerics.LogFmt;

/// <summary>
/// The level grid of one tile, derived from its float32 metadata exactly as the spec pins it:
/// lmin = log2(amin_eff), lmax = log2(amax), step = (lmax - lmin) / (K - 1) in float64,
/// v_k = float32(2^(lmin + (k-1)*step)) for k = 1..K, v_0 = 0.
/// Encoder and decoder both build it from the stored metadata so their levels agree bit for bit.
/// </summary>
internal readonly struct LogFmtTile
{
    public readonly float AminEff;
    public readonly float Amax;
    public readonly double Lmin;
    public readonly double Step;
    /// <summary>Largest magnitude index, 2^(n-1) - 1.</summary>
    public readonly int K;
    /// <summary>amax == 0: every code is zero.</summary>
    public readonly bool IsZero;
    /// <summary>lmax == lmin: every level is amax.</summary>
    public readonly bool IsFlat;

    public LogFmtTile(float aminEff, float amax, int bits)
    {
        AminEff = aminEff;
        Amax = amax;
        K = (1 << (bits - 1)) - 1;
        IsZero = amax == 0f;
        if (IsZero) { Lmin = 0; Step = 0; IsFlat = false; return; }
        Lmin = Math.Log2(aminEff);
        double lmax = Math.Log2(amax);
        IsFlat = lmax == Lmin;
        Step = (lmax - Lmin) / (K - 1);
    }

    private const double TwoPowMinus32 = 1.0 / 4294967296.0;

    /// <summary>amin_eff = max(amin, amax * 2^-32), stored as float32 (the stored value is the one that counts).</summary>
    public static float EffectiveAmin(float amin, float amax) => (float)Math.Max(amin, amax * TwoPowMinus32);

    /// <summary>Magnitude level k (0 ≤ k ≤ K), by the spec's formula (libm pow, float32 rounding).</summary>
    public float Level(int k)
    {
        if (k == 0 || IsZero) return 0f;
        if (IsFlat) return Amax;
        return (float)Math.Pow(2.0, Lmin + (k - 1) * Step);
    }

    /// <summary>
    /// Exact nearest level index for magnitude a, ties to the larger level: the number of midpoints
    /// (v_j + v_{j+1})/2, j = 0..K-1, that are ≤ a (midpoint sums are exact in float64 because adjacent
    /// levels differ by at most 2^(32/6) in ratio). When float32 rounding makes neighbouring levels equal
    /// (tiny steps at large n) the largest index holding the nearest value is returned.
    /// </summary>
    public int Nearest(float a)
    {
        if (a == 0f || IsZero) return 0;
        if (IsFlat) return 2.0 * a >= Amax ? K : 0;
        int lo = 0, hi = K;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (2.0 * a >= (double)Level(mid - 1) + Level(mid)) lo = mid; else hi = mid - 1;
        }
        if (lo == 0 || lo == K) return lo;
        // last index whose level equals v_lo (levels are non-decreasing)
        float v = Level(lo);
        if (Level(lo + 1) != v) return lo;
        int l = lo + 1, h = K;
        while (l < h)
        {
            int mid = (l + h + 1) >> 1;
            if (Level(mid) == v) l = mid; else h = mid - 1;
        }
        return l;
    }

    /// <summary>
    /// Steps at or above this keep every pair of neighbouring float32 levels distinct (ratio 2^step exceeds
    /// twice the float32 rounding error), which the vector kernels rely on.
    /// </summary>
    public const double MinDistinctStep = 1.0 / (1 << 20);
}
