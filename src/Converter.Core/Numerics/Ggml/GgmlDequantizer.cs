using System.Runtime.CompilerServices;
using static Converter.Numerics.Ggml.GgmlScalar;

namespace Converter.Numerics.Ggml;

/// <summary>Block decoders in ggml's to_float arithmetic order (dequantize_row_*), so results match bit for bit.</summary>
internal static unsafe class GgmlDequantizer
{
    private static float Half(byte* p) => FromHalfBits(Unsafe.ReadUnaligned<ushort>(p));

    public static void Q8_0(byte* x, float* y)
    {
        float d = Half(x);
        sbyte* qs = (sbyte*)(x + 2);
        for (int j = 0; j < 32; j++) y[j] = qs[j] * d;
    }

    public static void Q4_0(byte* x, float* y)
    {
        float d = Half(x);
        byte* qs = x + 2;
        for (int j = 0; j < 16; j++)
        {
            y[j] = ((qs[j] & 0x0F) - 8) * d;
            y[j + 16] = ((qs[j] >> 4) - 8) * d;
        }
    }

    public static void Q4K(byte* x, float* y)
    {
        float d = Half(x), min = Half(x + 2);
        var scales = new ReadOnlySpan<byte>(x + 4, 12);
        byte* q = x + 16;
        for (int j = 0, isb = 0; j < 256; j += 64, q += 32, isb += 2)
        {
            GetScaleMinK4(isb, scales, out byte sc, out byte m);
            float d1 = d * sc, m1 = min * m;
            GetScaleMinK4(isb + 1, scales, out sc, out m);
            float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
        }
    }

    public static void Q5K(byte* x, float* y)
    {
        float d = Half(x), min = Half(x + 2);
        var scales = new ReadOnlySpan<byte>(x + 4, 12);
        byte* qh = x + 16;
        byte* ql = x + 48;
        for (int k = 0, isb = 0; k < 4; k++, ql += 32, isb += 2)
        {
            GetScaleMinK4(isb, scales, out byte sc, out byte m);
            float d1 = d * sc, m1 = min * m;
            GetScaleMinK4(isb + 1, scales, out sc, out m);
            float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * ((ql[l] & 0xF) + (((qh[l] >> (2 * k)) & 1) << 4)) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * ((ql[l] >> 4) + (((qh[l] >> (2 * k + 1)) & 1) << 4)) - m2;
        }
    }

    public static void Q6K(byte* x, float* y)
    {
        float d = Half(x + 208);
        byte* ql = x;
        byte* qh = x + 128;
        sbyte* sc = (sbyte*)(x + 192);
        for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8)
        {
            for (int l = 0; l < 32; l++)
            {
                int isb = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[isb] * q1;
                y[l + 32] = d * sc[isb + 2] * q2;
                y[l + 64] = d * sc[isb + 4] * q3;
                y[l + 96] = d * sc[isb + 6] * q4;
            }
        }
    }
}
