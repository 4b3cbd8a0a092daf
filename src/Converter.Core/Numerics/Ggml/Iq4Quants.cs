using static Converter.Numerics.Ggml.GgmlReferenceQuantizer;
using static Converter.Numerics.Ggml.GgmlScalar;

namespace Converter.Numerics.Ggml;

/// <summary>
/// IQ4_NL (18 bytes per 32 values: a half scale and 4-bit indices into ggml's 16 non-linear levels) and IQ4_XS
/// (136 bytes per 256: a half super-scale, eight 6-bit sub-scales, the same indices), as quantize_row_iq4_nl_impl
/// with ntry = 7, the form llama-quantize runs with and without importance weights.
/// </summary>
internal static class Iq4Quants
{
    private const int Ntry = 7;

    /// <summary>One block (NL: 32 values) or super-block (XS: 256); <paramref name="qw"/> empty weighs by x^2.</summary>
    public static void Block(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, bool nl)
    {
        int superBlock = nl ? 32 : 256;
        var values = GgmlSearch.Iq4Values;
        Span<byte> L = stackalloc byte[superBlock];
        Span<float> scales = stackalloc float[superBlock / 32];
        Span<float> weight = stackalloc float[32];
        float sigma2 = 0;
        for (int j = 0; j < superBlock; j++) sigma2 += x[j] * x[j];
        sigma2 *= 2f / superBlock;

        float maxScale = 0, amaxScale = 0;
        for (int ib = 0; ib < superBlock / 32; ib++)
        {
            var xb = x.Slice(32 * ib, 32);
            var Lb = L.Slice(32 * ib, 32);
            if (qw.IsEmpty)
                for (int j = 0; j < 32; j++) weight[j] = xb[j] * xb[j];
            else
                for (int j = 0; j < 32; j++) weight[j] = qw[32 * ib + j] * MathF.Sqrt(sigma2 + xb[j] * xb[j]);
            float amax = 0, max = 0;
            for (int j = 0; j < 32; j++)
            {
                float ax = MathF.Abs(xb[j]);
                if (ax > amax) { amax = ax; max = xb[j]; }
            }
            if (amax < GgmlSearch.GroupMaxEps)
            {
                scales[ib] = 0;
                continue;
            }
            float d = -max / values[0];
            float id = 1 / d;
            float sumqx = 0, sumq2 = 0;
            for (int j = 0; j < 32; j++)
            {
                int l = GgmlSearch.BestIq4Index(id * xb[j]);
                Lb[j] = (byte)l;
                float q = values[l];
                float w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            d = sumq2 > 0 ? sumqx / sumq2 : 0f;
            float best = d * sumqx;
            for (int itry = -Ntry; itry <= Ntry; itry++)
            {
                id = (itry + values[0]) / max;
                sumqx = sumq2 = 0;
                for (int j = 0; j < 32; j++)
                {
                    float q = values[GgmlSearch.BestIq4Index(id * xb[j])];
                    float w = weight[j];
                    sumqx += w * q * xb[j];
                    sumq2 += w * q * q;
                }
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2)
                {
                    d = sumqx / sumq2;
                    best = d * sumqx;
                }
            }
            scales[ib] = d;
            float absD = MathF.Abs(d);
            if (absD > amaxScale) { amaxScale = absD; maxScale = d; }
        }

        Span<byte> q4;
        if (!nl)
        {
            // y: d, scales_h (uint16), scales_l[4], qs[128]
            ushort scalesH = 0;
            var scalesL = y.Slice(4, 4);
            float d = -maxScale / 32;
            WriteHalf(y, d);
            float id = d != 0 ? 1 / d : 0f;
            for (int ib = 0; ib < 8; ib++)
            {
                int l = Math.Max(-32, Math.Min(31, NearestInt(id * scales[ib])));
                float dl = d * l;
                float idl = dl != 0 ? 1 / dl : 0f;
                var xb = x.Slice(32 * ib, 32);
                var Lb = L.Slice(32 * ib, 32);
                for (int j = 0; j < 32; j++) Lb[j] = (byte)GgmlSearch.BestIq4Index(idl * xb[j]);
                l += 32;
                int lLow = l & 0xf, lHigh = l >> 4;
                if (ib % 2 == 0) scalesL[ib / 2] = (byte)lLow;
                else scalesL[ib / 2] |= (byte)(lLow << 4);
                scalesH |= (ushort)(lHigh << (2 * ib));
            }
            y[2] = (byte)scalesH;
            y[3] = (byte)(scalesH >> 8);
            q4 = y.Slice(8, 128);
        }
        else
        {
            WriteHalf(y, scales[0]);
            float id = scales[0] != 0 ? 1 / scales[0] : 0;
            for (int j = 0; j < 32; j++) L[j] = (byte)GgmlSearch.BestIq4Index(id * x[j]);
            q4 = y.Slice(2, 16);
        }
        for (int i = 0; i < superBlock / 32; i++)
            for (int j = 0; j < 16; j++)
                q4[16 * i + j] = (byte)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
    }
}
