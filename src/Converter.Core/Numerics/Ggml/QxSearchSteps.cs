using System.Runtime.Intrinsics;
using static Converter.Numerics.Ggml.GgmlScalar;
using V = System.Runtime.Intrinsics.Vector256<float>;

namespace Converter.Numerics.Ggml;

/// <summary>
/// <see cref="GgmlSearch.MakeQx"/> with its 19 trial scales as Vector256 lanes: each trial's sums run over the
/// values in ggml's order within its lane, so they are bit for bit the scalar ones, and the choice between trials
/// is then made in scalar code in ggml's order (the first strictly better wins).
/// </summary>
internal static unsafe class QxSearchSteps
{
    /// <summary>Same contract and result as <see cref="GgmlSearch.MakeQx"/>.</summary>
    public static float MakeQx(int nmax, ReadOnlySpan<float> x, Span<sbyte> L, ReadOnlySpan<float> qw)
    {
        int n = x.Length;
        bool weighted = !qw.IsEmpty;
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GgmlSearch.GroupMaxEps)
        {
            L.Slice(0, n).Clear();
            return 0;
        }
        // lane k is trial is = k - 9; is = 0 gives -(nmax + 0f)/max, the same float as ggml's first -nmax/max
        float* isc = stackalloc float[24];
        for (int k = 0; k < 24; k++) isc[k] = -(nmax + 0.1f * (k - 9)) / max;
        V i0 = Vector256.Load(isc), i1 = Vector256.Load(isc + 8), i2 = Vector256.Load(isc + 16);
        V lx0 = V.Zero, lx1 = V.Zero, lx2 = V.Zero, l20 = V.Zero, l21 = V.Zero, l22 = V.Zero;
        for (int i = 0; i < n; i++)
        {
            float xi = x[i];
            float w = weighted ? qw[i] : xi * xi;
            V xv = Vector256.Create(xi), wv = Vector256.Create(w), wx = Vector256.Create(w * xi);
            V a = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(i0 * xv), -nmax, nmax - 1));
            V b = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(i1 * xv), -nmax, nmax - 1));
            V c = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(i2 * xv), -nmax, nmax - 1));
            lx0 += wx * a;
            lx1 += wx * b;
            lx2 += wx * c;
            l20 += wv * a * a;
            l21 += wv * b * b;
            l22 += wv * c * c;
        }
        float* sumlx = stackalloc float[24];
        float* suml2 = stackalloc float[24];
        lx0.Store(sumlx);
        lx1.Store(sumlx + 8);
        lx2.Store(sumlx + 16);
        l20.Store(suml2);
        l21.Store(suml2 + 8);
        l22.Store(suml2 + 16);

        int chosen = 9;
        float scale = suml2[9] != 0 ? sumlx[9] / suml2[9] : 0.0f;
        float best = scale * sumlx[9];
        for (int k = 0; k < 19; k++)
        {
            if (k == 9) continue;
            if (suml2[k] > 0 && sumlx[k] * sumlx[k] > best * suml2[k])
            {
                scale = sumlx[k] / suml2[k];
                best = scale * sumlx[k];
                chosen = k;
            }
        }
        float iscale = isc[chosen];
        for (int i = 0; i < n; i++)
            L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i]))));
        return scale;
    }
}
