using static Converter.Numerics.Ggml.GgmlScalar;

namespace Converter.Numerics.Ggml;

/// <summary>
/// ggml's scale searches (ggml-quants.c: make_qx_quants, make_q3_quants, make_qkx2/3_quants, make_qp_quants,
/// best_index_int8), operation for operation in ggml's float order: each product and sum is written in the order
/// the C evaluates it, because one different rounding changes a chosen scale and every byte after it.
/// </summary>
internal static class GgmlSearch
{
    public const float GroupMaxEps = 1e-15f;

    /// <summary>ggml's 16 non-linear IQ4 levels (kvalues_iq4nl).</summary>
    public static ReadOnlySpan<sbyte> Iq4Values => [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

    /// <summary>
    /// make_qx_quants with rmse_type 1: symmetric codes in [-nmax, nmax-1] stored biased by nmax, weights
    /// <paramref name="qw"/> or x^2 where it is empty; returns the scale.
    /// </summary>
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
        if (amax < GroupMaxEps)
        {
            L.Slice(0, n).Clear();
            return 0;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
            L[i] = (sbyte)(l + nmax);
            float w = weighted ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
        float best = scale * sumlx;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = -(nmax + 0.1f * step) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
                float w = weighted ? qw[i] : x[i] * x[i];
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < n; i++)
                    L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i]))));
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }

    /// <summary>make_q3_quants with do_rmse: x^2-weighted codes in [-nmax, nmax-1], refined one at a time; L biased by nmax.</summary>
    public static float MakeQ3(int nmax, ReadOnlySpan<float> x, Span<sbyte> L)
    {
        int n = x.Length;
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GroupMaxEps)
        {
            L.Slice(0, n).Clear();
            return 0;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
            L[i] = (sbyte)l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; itry++)
        {
            int changed = 0;
            for (int i = 0; i < n; i++)
            {
                float w = x[i] * x[i];
                float slx = sumlx - w * x[i] * L[i];
                if (slx > 0)
                {
                    float sl2 = suml2 - w * L[i] * L[i];
                    int newL = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(x[i] * sl2 / slx)));
                    if (newL != L[i])
                    {
                        slx += w * x[i] * newL;
                        sl2 += w * newL * newL;
                        if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2)
                        {
                            L[i] = (sbyte)newL;
                            sumlx = slx;
                            suml2 = sl2;
                            changed++;
                        }
                    }
                }
            }
            if (changed == 0) break;
        }
        for (int i = 0; i < n; i++) L[i] += (sbyte)nmax;
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }

    /// <summary>
    /// make_qkx2_quants / make_qkx3_quants (identical once weights are given): weighted least-squares scale and
    /// min over nstep+1 trial grids, error as squared or (<paramref name="useMad"/>) absolute difference.
    /// Codes in [0, nmax]; <paramref name="theMin"/> is minus the offset; returns the scale.
    /// </summary>
    public static float MakeQkx(int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<byte> L,
        out float theMin, float rmin, float rdelta, int nstep, bool useMad)
    {
        int n = x.Length;
        Span<byte> laux = stackalloc byte[n];
        float min = x[0], max = x[0];
        float sumW = w[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            sumW += w[i];
            sumX += w[i] * x[i];
        }
        if (min > 0) min = 0;
        if (max <= min)
        {
            L.Slice(0, n).Clear();
            theMin = -min;
            return 0;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * (x[i] - min));
            L[i] = (byte)Math.Max(0, Math.Min(nmax, l));
            float diff = scale * L[i] + min - x[i];
            diff = useMad ? MathF.Abs(diff) : diff * diff;
            bestError += w[i] * diff;
        }
        for (int step = 0; step <= nstep; step++)
        {
            iscale = (rmin + rdelta * step + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Max(0, Math.Min(nmax, NearestInt(iscale * (x[i] - min))));
                laux[i] = (byte)l;
                sumL += w[i] * l;
                sumL2 += w[i] * l * l;
                sumXL += w[i] * l * x[i];
            }
            float D = sumW * sumL2 - sumL * sumL;
            if (D > 0)
            {
                float thisScale = (sumW * sumXL - sumX * sumL) / D;
                float thisMin = (sumL2 * sumX - sumL * sumXL) / D;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sumXL / sumL2;
                }
                float curError = 0;
                for (int i = 0; i < n; i++)
                {
                    float diff = thisScale * laux[i] + thisMin - x[i];
                    diff = useMad ? MathF.Abs(diff) : diff * diff;
                    curError += w[i] * diff;
                }
                if (curError < bestError)
                {
                    laux.CopyTo(L);
                    bestError = curError;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin = -min;
        return scale;
    }

    /// <summary>
    /// make_qp_quants: codes in [0, nmax] for non-negative values (the sub-block scales and mins of the k-quants),
    /// weighted by <paramref name="qw"/>. L is uint8_t in ggml, so codes are stored truncated to a byte as there.
    /// </summary>
    public static float MakeQp(int nmax, ReadOnlySpan<float> x, Span<byte> L, ReadOnlySpan<float> qw)
    {
        int n = x.Length;
        float max = 0;
        for (int i = 0; i < n; i++) max = max > x[i] ? max : x[i];
        if (max < GroupMaxEps)
        {
            L.Slice(0, n).Clear();
            return 0;
        }
        float iscale = nmax / max;
        for (int i = 0; i < n; i++) L[i] = (byte)NearestInt(iscale * x[i]);
        float scale = 1 / iscale;
        float bestMse = 0;
        for (int i = 0; i < n; i++)
        {
            float diff = x[i] - scale * L[i];
            bestMse += qw[i] * diff * diff;
        }
        for (int step = -4; step <= 4; step++)
        {
            if (step == 0) continue;
            float iscaleIs = (0.1f * step + nmax) / max;
            float scaleIs = 1 / iscaleIs;
            float mse = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Min(nmax, NearestInt(iscaleIs * x[i]));
                float diff = x[i] - scaleIs * l;
                mse += qw[i] * diff * diff;
            }
            if (mse < bestMse)
            {
                bestMse = mse;
                iscale = iscaleIs;
            }
        }
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Min(nmax, NearestInt(iscale * x[i]));
            L[i] = (byte)l;
            float w = qw[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; itry++)
        {
            int changed = 0;
            for (int i = 0; i < n; i++)
            {
                float w = qw[i];
                float slx = sumlx - w * x[i] * L[i];
                float sl2 = suml2 - w * L[i] * L[i];
                if (slx > 0 && sl2 > 0)
                {
                    int newL = Math.Min(nmax, NearestInt(x[i] * sl2 / slx));
                    if (newL != L[i])
                    {
                        slx += w * x[i] * newL;
                        sl2 += w * newL * newL;
                        if (slx * slx * suml2 > sumlx * sumlx * sl2)
                        {
                            L[i] = (byte)newL;
                            sumlx = slx;
                            suml2 = sl2;
                            changed++;
                        }
                    }
                }
            }
            if (changed == 0) break;
        }
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }

    /// <summary>best_index_int8 over <see cref="Iq4Values"/>: the nearest level, ties to the upper one.</summary>
    public static int BestIq4Index(float x)
    {
        var v = Iq4Values;
        if (x <= v[0]) return 0;
        if (x >= v[15]) return 15;
        int ml = 0, mu = 15;
        while (mu - ml > 1)
        {
            int mav = (ml + mu) / 2;
            if (x < v[mav]) mu = mav;
            else ml = mav;
        }
        return x - v[mu - 1] < v[mu] - x ? mu - 1 : mu;
    }
}
