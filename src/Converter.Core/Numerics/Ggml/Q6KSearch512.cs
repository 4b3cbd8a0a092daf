using System.Runtime.Intrinsics;
using V = System.Runtime.Intrinsics.Vector512<float>;

namespace Converter.Numerics.Ggml;

internal static unsafe partial class Q6KKernel
{
    /// <summary>make_qx_quants(16, 32, x, L, 1, NULL) on 16 consecutive 16-value sub-blocks, one per lane: the scale,
    /// the winning iscale (L is recomputed from it when needed) and the all-zero mask (L = 0 there).</summary>
    private static void MakeQx512(float* x, float* scaleOut, float* bestIscaleOut, int* zeroOut)
    {
        const int Lanes = 16;
        V* xt = stackalloc V[16];
        float* t = (float*)xt;
        for (int l = 0; l < Lanes; l++)
            for (int i = 0; i < 16; i++) t[i * Lanes + l] = x[16 * l + i];
        V* w = stackalloc V[16];
        V* wx = stackalloc V[16];
        V amax = V.Zero, max = V.Zero;
        for (int i = 0; i < 16; i++)
        {
            V ax = Vector512.Abs(xt[i]);
            V gt = Vector512.GreaterThan(ax, amax);
            amax = Vector512.ConditionalSelect(gt, ax, amax);
            max = Vector512.ConditionalSelect(gt, xt[i], max);
            w[i] = xt[i] * xt[i];
            wx[i] = w[i] * xt[i];
        }
        V zero = Vector512.LessThan(amax, Vector512.Create(1e-15f));

        V iscale = Vector512.Create((float)-NMax) / max;
        V sumlx = V.Zero, suml2 = V.Zero;
        for (int i = 0; i < 16; i++)
        {
            V l = Vector512.ConvertToSingle(GgmlVec512.Clamp(GgmlVec512.NearestInt(iscale * xt[i]), -NMax, NMax - 1));
            sumlx += wx[i] * l;
            suml2 += w[i] * l * l;
        }
        V scale = Vector512.ConditionalSelect(Vector512.Equals(suml2, V.Zero), V.Zero, sumlx / suml2);
        V best = scale * sumlx;
        V bestIscale = iscale;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = Vector512.Create(-(NMax + 0.1f * step)) / max;
            sumlx = V.Zero;
            suml2 = V.Zero;
            for (int i = 0; i < 16; i++)
            {
                V l = Vector512.ConvertToSingle(GgmlVec512.Clamp(GgmlVec512.NearestInt(iscale * xt[i]), -NMax, NMax - 1));
                sumlx += wx[i] * l;
                suml2 += w[i] * l * l;
            }
            V better = Vector512.GreaterThan(suml2, V.Zero) & Vector512.GreaterThan(sumlx * sumlx, best * suml2);
            if (Vector512.ExtractMostSignificantBits(better) == 0) continue;
            V s = sumlx / suml2;
            scale = Vector512.ConditionalSelect(better, s, scale);
            best = Vector512.ConditionalSelect(better, s * sumlx, best);
            bestIscale = Vector512.ConditionalSelect(better, iscale, bestIscale);
        }
        Vector512.ConditionalSelect(zero, V.Zero, scale).Store(scaleOut);
        bestIscale.Store(bestIscaleOut);
        zero.AsInt32().Store(zeroOut);
    }
}
