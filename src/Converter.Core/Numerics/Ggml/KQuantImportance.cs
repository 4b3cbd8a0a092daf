using static Converter.Numerics.Ggml.GgmlReferenceQuantizer;
using static Converter.Numerics.Ggml.GgmlScalar;

namespace Converter.Numerics.Ggml;

/// <summary>
/// Q4_K, Q5_K and Q6_K with importance weights, one 256-value super-block at a time (quantize_row_q4_K_impl,
/// _q5_K_impl, _q6_K_impl): the sub-block scales and mins are themselves fitted by a weighted search
/// (make_qp_quants) instead of being rounded against the largest.
/// </summary>
internal static class KQuantImportance
{
    private const int QK_K = GgmlTypeInfo.QK_K;

    /// <param name="vector">run the 8 sub-block searches as lanes of one <see cref="QkxSearch8"/> (same bytes)</param>
    public static unsafe void Q4KOrQ5K(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, bool q5, bool vector)
    {
        int nmax = q5 ? 31 : 15;
        Span<byte> L = stackalloc byte[QK_K];
        Span<float> weights = stackalloc float[QK_K];
        Span<float> sw = stackalloc float[8];
        Span<float> mins = stackalloc float[8];
        Span<float> scales = stackalloc float[8];
        Span<byte> Ls = stackalloc byte[8];
        Span<byte> Lm = stackalloc byte[8];
        float sumX2 = 0;
        for (int l = 0; l < QK_K; l++) sumX2 += x[l] * x[l];
        float sigma2 = 2 * sumX2 / QK_K;
        for (int j = 0; j < 8; j++)
        {
            var xs = x.Slice(32 * j, 32);
            var q = qw.Slice(32 * j, 32);
            var wj = weights.Slice(32 * j, 32);
            for (int l = 0; l < 32; l++) wj[l] = q[l] * MathF.Sqrt(sigma2 + xs[l] * xs[l]);
            float sumw = 0;
            for (int l = 0; l < 32; l++) sumw += wj[l];
            sw[j] = sumw;
            if (!vector)
                scales[j] = GgmlSearch.MakeQkx(nmax, xs, wj, L.Slice(32 * j, 32), out mins[j], -0.9f, 0.05f, 36, useMad: false);
        }
        if (vector)
        {
            fixed (float* px = x)
            fixed (float* pw = weights)
            fixed (byte* pl = L)
            fixed (float* ps = scales)
            fixed (float* pm = mins)
                QkxSearch8.Search(32, nmax, px, pw, pl, ps, pm, -0.9f, 0.05f, 36, useMad: false);
        }
        float dBlock = GgmlSearch.MakeQp(63, scales, Ls, sw);
        float mBlock = GgmlSearch.MakeQp(63, mins, Lm, sw);
        if (q5)
        {
            // only Q5_K clamps here; Q4_K packs make_qp_quants' bytes as they are
            for (int j = 0; j < 8; j++)
            {
                Ls[j] = Math.Min((byte)63, Ls[j]);
                Lm[j] = Math.Min((byte)63, Lm[j]);
            }
        }
        var sc = y.Slice(4, 12);
        for (int j = 0; j < 8; j++)
        {
            byte ls = Ls[j], lm = Lm[j];
            if (j < 4)
            {
                sc[j] = ls;
                sc[j + 4] = lm;
            }
            else
            {
                sc[j + 4] = (byte)((ls & 0xF) | ((lm & 0xF) << 4));
                sc[j - 4] |= (byte)((ls >> 4) << 6);
                sc[j] |= (byte)((lm >> 4) << 6);
            }
        }
        WriteHalf(y, dBlock);
        WriteHalf(y.Slice(2), mBlock);

        float dAll = ReadHalf(y), mAll = ReadHalf(y.Slice(2));
        for (int j = 0; j < 8; j++)
        {
            GetScaleMinK4(j, sc, out byte s, out byte m);
            float d = dAll * s;
            if (d == 0) continue;
            float dm = mAll * m;
            for (int ii = 0; ii < 32; ii++)
            {
                int l = NearestInt((x[32 * j + ii] + dm) / d);
                L[32 * j + ii] = (byte)Math.Max(0, Math.Min(nmax, l));
            }
        }
        if (q5) PackQ5K(L, y);
        else PackQ4K(L, y);
    }

    public static void Q6K(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, bool vector)
    {
        Span<sbyte> L = stackalloc sbyte[QK_K];
        Span<float> scales = stackalloc float[16];
        float maxScale = 0, maxAbsScale = 0;
        for (int ib = 0; ib < 16; ib++)
        {
            // ggml passes the raw importance here (its sigma2 weighting is commented out)
            float scale = vector
                ? QxSearchSteps.MakeQx(32, x.Slice(16 * ib, 16), L.Slice(16 * ib, 16), qw.Slice(16 * ib, 16))
                : GgmlSearch.MakeQx(32, x.Slice(16 * ib, 16), L.Slice(16 * ib, 16), qw.Slice(16 * ib, 16));
            scales[ib] = scale;
            float abs = MathF.Abs(scale);
            if (abs > maxAbsScale) { maxAbsScale = abs; maxScale = scale; }
        }
        Q6KFinish(x, y, L, scales, maxScale, maxAbsScale);
    }
}
