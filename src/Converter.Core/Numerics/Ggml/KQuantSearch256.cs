using System.Runtime.Intrinsics;
using V = System.Runtime.Intrinsics.Vector256<float>;

namespace Converter.Numerics.Ggml;

internal static unsafe partial class KQuantKernel
{
    /// <summary>
    /// make_qkx2_quants (use_mad false, weights av_x + |x| as Q4_K/Q5_K set them) on 8 consecutive 32-value
    /// sub-blocks, one per lane. Writes lanes 0..7 of <paramref name="r"/>.
    /// </summary>
    private static void Search256(float* x, int nmax, float rmin, int nstep, SearchResult* r)
    {
        const int Lanes = 8;
        V* xt = stackalloc V[32];
        V* xm = stackalloc V[32];
        V* w = stackalloc V[32];
        V* laux = stackalloc V[32];
        float* t = (float*)xt;
        for (int l = 0; l < Lanes; l++)
            for (int i = 0; i < 32; i++) t[i * Lanes + l] = x[32 * l + i];

        var sumX2 = V.Zero;
        for (int i = 0; i < 32; i++) sumX2 += xt[i] * xt[i];
        var avX = Vector256.Sqrt(sumX2 / Vector256.Create(32f));
        for (int i = 0; i < 32; i++) w[i] = avX + Vector256.Abs(xt[i]);

        V min = xt[0], max = xt[0];
        V sumW = w[0];
        V sumX = sumW * xt[0];
        for (int i = 1; i < 32; i++)
        {
            V xi = xt[i];
            min = Vector256.ConditionalSelect(Vector256.LessThan(xi, min), xi, min);
            max = Vector256.ConditionalSelect(Vector256.GreaterThan(xi, max), xi, max);
            sumW += w[i];
            sumX += w[i] * xi;
        }
        min = Vector256.ConditionalSelect(Vector256.GreaterThan(min, V.Zero), V.Zero, min);
        V degenerate = Vector256.Equals(max, min);
        V initialMin = min;
        for (int i = 0; i < 32; i++) xm[i] = xt[i] - min;

        V iscale = Vector256.Create((float)nmax) / (max - min);
        V scale = V.One / iscale;
        V bestIscale = iscale;
        V bestMin = min;
        V bestError = V.Zero;
        for (int i = 0; i < 32; i++)
        {
            V l = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(iscale * xm[i]), 0, nmax));
            V diff = scale * l + min - xt[i];
            diff *= diff;
            bestError += w[i] * diff;
        }

        for (int step = 0; step <= nstep; step++)
        {
            float num = rmin + RDelta * step + nmax;
            iscale = Vector256.Create(num) / (max - min);
            V sumL = V.Zero, sumL2 = V.Zero, sumXL = V.Zero;
            for (int i = 0; i < 32; i++)
            {
                V l = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(iscale * xm[i]), 0, nmax));
                laux[i] = l;
                V wl = w[i] * l;
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
            for (int i = 0; i < 32; i++)
            {
                V diff = thisScale * laux[i] + thisMin - xt[i];
                diff *= diff;
                curError += w[i] * diff;
            }
            V better = Vector256.GreaterThan(D, V.Zero) & Vector256.LessThan(curError, bestError);
            if (Vector256.ExtractMostSignificantBits(better) == 0) continue;
            bestError = Vector256.ConditionalSelect(better, curError, bestError);
            scale = Vector256.ConditionalSelect(better, thisScale, scale);
            bestIscale = Vector256.ConditionalSelect(better, iscale, bestIscale);
            bestMin = Vector256.ConditionalSelect(better, min, bestMin);
            min = Vector256.ConditionalSelect(better, thisMin, min);
            for (int i = 0; i < 32; i++) xm[i] = xt[i] - min;
        }

        Vector256.ConditionalSelect(degenerate, V.Zero, scale).Store(r->Scale);
        (-Vector256.ConditionalSelect(degenerate, initialMin, min)).Store(r->TheMin);
        bestIscale.Store(r->BestIscale);
        bestMin.Store(r->BestMin);
        degenerate.AsInt32().Store(r->Degenerate);
    }
}
