namespace Converter.Core.Tests.Numerics.LogFmt;

/// <summary>
/// Plain scalar LogFMT-nBit written straight from the README spec, independent of the library:
/// explicit level table per tile, nearest level by brute force over every level (or, for big inputs,
/// by binary search over the midpoints), ties to the larger level.
/// </summary>
internal static class LogFmtReference
{
    public static float[] Levels(float aminEff, float amax, int bits)
    {
        int k = (1 << (bits - 1)) - 1;
        var lv = new float[k + 1];
        if (amax == 0f) return lv;
        double lmin = Math.Log2(aminEff), lmax = Math.Log2(amax);
        double step = (lmax - lmin) / (k - 1);
        for (int i = 1; i <= k; i++) lv[i] = lmax == lmin ? amax : (float)Math.Pow(2.0, lmin + (i - 1) * step);
        return lv;
    }

    /// <summary>Nearest level by trying all of them; on a tie (equal distance) the larger index wins.</summary>
    public static int NearestBrute(float[] lv, float a)
    {
        int best = 0;
        double bestD = a;
        for (int i = 1; i < lv.Length; i++)
        {
            double d = Math.Abs((double)a - lv[i]);
            if (d <= bestD) { best = i; bestD = d; }
        }
        return best;
    }

    /// <summary>Nearest level by upper-bound search over the float64 midpoints.</summary>
    public static int NearestSearch(float[] lv, float a)
    {
        int lo = 0, hi = lv.Length - 1; // answer = number of midpoints <= a
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            if ((double)a >= ((double)lv[mid - 1] + lv[mid]) / 2) lo = mid;
            else hi = mid - 1;
        }
        while (lo > 0 && lo + 1 < lv.Length && lv[lo + 1] == lv[lo]) lo++; // equal levels: the largest index
        return lo;
    }

    public static (ushort[] Codes, float[] Meta, float[] Decoded) Encode(float[] x, int bits, bool brute, int rowLength = 0)
    {
        int row = rowLength == 0 ? x.Length : rowLength;
        int tilesPerRow = (row + 127) / 128;
        int rows = x.Length / row;
        var codes = new ushort[x.Length];
        var meta = new float[2 * rows * tilesPerRow];
        var dec = new float[x.Length];
        int t = 0;
        for (int r = 0; r < rows; r++)
        for (int c0 = 0; c0 < row; c0 += 128, t++)
        {
            int start = r * row + c0, len = Math.Min(128, row - c0);
            float amax = 0f, amin = float.PositiveInfinity;
            for (int i = start; i < start + len; i++)
            {
                float a = Math.Abs(x[i]);
                amax = Math.Max(amax, a);
                if (a != 0f) amin = Math.Min(amin, a);
            }
            float aminEff = amax == 0f ? 0f : (float)Math.Max(amin, amax * Math.Pow(2, -32));
            meta[2 * t] = aminEff;
            meta[2 * t + 1] = amax;
            var lv = Levels(aminEff, amax, bits);
            for (int i = start; i < start + len; i++)
            {
                float a = Math.Abs(x[i]);
                int k = amax == 0f ? 0 : brute ? NearestBrute(lv, a) : NearestSearch(lv, a);
                bool neg = k != 0 && x[i] < 0f;
                codes[i] = (ushort)(k | (neg ? 1 << (bits - 1) : 0));
                dec[i] = neg ? -lv[k] : lv[k];
            }
        }
        return (codes, meta, dec);
    }
}
