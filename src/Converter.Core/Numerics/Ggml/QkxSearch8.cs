using System.Runtime.Intrinsics;
using V = System.Runtime.Intrinsics.Vector256<float>;

namespace Converter.Numerics.Ggml;

/// <summary>
/// <see cref="GgmlSearch.MakeQkx"/> on 8 independent groups at once, one per Vector256 lane. Each step of the
/// search depends on the min the previous one chose, and every sum is sequential, so lanes are groups (sub-blocks
/// or blocks), each running the scalar algorithm in the scalar order with branches turned into selects: every
/// rounding, and so every byte, stays ggml's.
/// </summary>
internal static unsafe class QkxSearch8
{
    public const int Lanes = 8;

    /// <summary>
    /// Group g holds <paramref name="n"/> (16 or 32) values at x + g*n and weights at w + g*n; writes its codes to
    /// L + g*n, its scale to scale[g] and minus its offset to theMin[g].
    /// </summary>
    public static void Search(int n, int nmax, float* x, float* w, byte* L, float* scaleOut, float* theMinOut,
        float rmin, float rdelta, int nstep, bool useMad)
    {
        V* xt = stackalloc V[n];
        V* wt = stackalloc V[n];
        V* laux = stackalloc V[n];
        float* tx = (float*)xt, tw = (float*)wt;
        for (int g = 0; g < Lanes; g++)
            for (int i = 0; i < n; i++)
            {
                tx[i * Lanes + g] = x[g * n + i];
                tw[i * Lanes + g] = w[g * n + i];
            }

        V min = xt[0], max = xt[0];
        V sumW = wt[0];
        V sumX = sumW * xt[0];
        for (int i = 1; i < n; i++)
        {
            V xi = xt[i];
            min = Vector256.ConditionalSelect(Vector256.LessThan(xi, min), xi, min);
            max = Vector256.ConditionalSelect(Vector256.GreaterThan(xi, max), xi, max);
            sumW += wt[i];
            sumX += wt[i] * xi;
        }
        min = Vector256.ConditionalSelect(Vector256.GreaterThan(min, V.Zero), V.Zero, min);
        V degenerate = Vector256.LessThanOrEqual(max, min);
        V initialMin = min;

        V iscale = Vector256.Create((float)nmax) / (max - min);
        V scale = V.One / iscale;
        V bestIscale = iscale, bestMin = min, bestError = V.Zero;
        for (int i = 0; i < n; i++)
        {
            V l = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(iscale * (xt[i] - min)), 0, nmax));
            V diff = scale * l + min - xt[i];
            diff = useMad ? Vector256.Abs(diff) : diff * diff;
            bestError += wt[i] * diff;
        }

        for (int step = 0; step <= nstep; step++)
        {
            iscale = Vector256.Create(rmin + rdelta * step + nmax) / (max - min);
            V sumL = V.Zero, sumL2 = V.Zero, sumXL = V.Zero;
            for (int i = 0; i < n; i++)
            {
                V l = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(iscale * (xt[i] - min)), 0, nmax));
                laux[i] = l;
                V wl = wt[i] * l;
                sumL += wl;
                sumL2 += wl * l;
                sumXL += wl * xt[i];
            }
            V D = sumW * sumL2 - sumL * sumL;
            V thisScale = (sumW * sumXL - sumX * sumL) / D;
            V thisMin = (sumL2 * sumX - sumL * sumXL) / D;
            V positive = Vector256.GreaterThan(thisMin, V.Zero);
            thisMin = Vector256.ConditionalSelect(positive, V.Zero, thisMin);
            thisScale = Vector256.ConditionalSelect(positive, sumXL / sumL2, thisScale);
            V curError = V.Zero;
            for (int i = 0; i < n; i++)
            {
                V diff = thisScale * laux[i] + thisMin - xt[i];
                diff = useMad ? Vector256.Abs(diff) : diff * diff;
                curError += wt[i] * diff;
            }
            V better = Vector256.GreaterThan(D, V.Zero) & Vector256.LessThan(curError, bestError);
            if (Vector256.ExtractMostSignificantBits(better) == 0) continue;
            bestError = Vector256.ConditionalSelect(better, curError, bestError);
            scale = Vector256.ConditionalSelect(better, thisScale, scale);
            bestIscale = Vector256.ConditionalSelect(better, iscale, bestIscale);
            bestMin = Vector256.ConditionalSelect(better, min, bestMin);
            min = Vector256.ConditionalSelect(better, thisMin, min);
        }

        // the chosen codes are those of the best step, recomputed from the iscale and min it used
        var zeroCodes = degenerate.AsInt32();
        for (int i = 0; i < n; i++)
        {
            var l = GgmlVec.Clamp(GgmlVec.NearestInt(bestIscale * (xt[i] - bestMin)), 0, nmax);
            laux[i] = (Vector256.AndNot(l, zeroCodes)).AsSingle();
        }
        int* codes = (int*)laux;
        for (int g = 0; g < Lanes; g++)
            for (int i = 0; i < n; i++)
                L[g * n + i] = (byte)codes[i * Lanes + g];
        Vector256.ConditionalSelect(degenerate, V.Zero, scale).Store(scaleOut);
        (-Vector256.ConditionalSelect(degenerate, initialMin, min)).Store(theMinOut);
    }
}
