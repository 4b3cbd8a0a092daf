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

    public static void Q4_1(byte* x, float* y)
    {
        float d = Half(x), m = Half(x + 2);
        byte* qs = x + 4;
        for (int j = 0; j < 16; j++)
        {
            y[j] = (qs[j] & 0x0F) * d + m;
            y[j + 16] = (qs[j] >> 4) * d + m;
        }
    }

    public static void Q5_0(byte* x, float* y)
    {
        float d = Half(x);
        uint qh = Unsafe.ReadUnaligned<uint>(x + 2);
        byte* qs = x + 6;
        for (int j = 0; j < 16; j++)
        {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            y[j] = (((qs[j] & 0x0F) | h0) - 16) * d;
            y[j + 16] = (((qs[j] >> 4) | h1) - 16) * d;
        }
    }

    public static void Q5_1(byte* x, float* y)
    {
        float d = Half(x), m = Half(x + 2);
        uint qh = Unsafe.ReadUnaligned<uint>(x + 4);
        byte* qs = x + 8;
        for (int j = 0; j < 16; j++)
        {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            y[j] = ((qs[j] & 0x0F) | h0) * d + m;
            y[j + 16] = ((qs[j] >> 4) | h1) * d + m;
        }
    }

    public static void Q2K(byte* x, float* y)
    {
        byte* sc = x;
        byte* q = x + 16;
        float d = Half(x + 80), min = Half(x + 82);
        int isb = 0;
        for (int n = 0; n < 256; n += 128, q += 32)
        {
            for (int shift = 0; shift < 8; shift += 2)
            {
                byte s = sc[isb++];
                float dl = d * (s & 0xF), ml = min * (s >> 4);
                for (int l = 0; l < 16; l++) *y++ = dl * ((q[l] >> shift) & 3) - ml;
                s = sc[isb++];
                dl = d * (s & 0xF);
                ml = min * (s >> 4);
                for (int l = 0; l < 16; l++) *y++ = dl * ((q[l + 16] >> shift) & 3) - ml;
            }
        }
    }

    public static void Q3K(byte* x, float* y)
    {
        byte* hm = x;
        byte* q = x + 32;
        byte* sc = x + 96;
        float dAll = Half(x + 108);
        Span<sbyte> scales = stackalloc sbyte[16];
        for (int j = 0; j < 16; j++)
        {
            int low = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
            scales[j] = (sbyte)((low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
        }
        int isb = 0;
        byte m = 1;
        for (int n = 0; n < 256; n += 128, q += 32)
        {
            for (int shift = 0; shift < 8; shift += 2, m <<= 1)
            {
                float dl = dAll * scales[isb++];
                for (int l = 0; l < 16; l++) *y++ = dl * (((q[l] >> shift) & 3) - ((hm[l] & m) != 0 ? 0 : 4));
                dl = dAll * scales[isb++];
                for (int l = 0; l < 16; l++) *y++ = dl * (((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) != 0 ? 0 : 4));
            }
        }
    }

    public static void Iq4Nl(byte* x, float* y)
    {
        var values = GgmlSearch.Iq4Values;
        float d = Half(x);
        byte* qs = x + 2;
        for (int j = 0; j < 16; j++)
        {
            y[j] = d * values[qs[j] & 0xF];
            y[j + 16] = d * values[qs[j] >> 4];
        }
    }

    public static void Iq4Xs(byte* x, float* y)
    {
        var values = GgmlSearch.Iq4Values;
        float d = Half(x);
        int scalesH = Unsafe.ReadUnaligned<ushort>(x + 2);
        byte* scalesL = x + 4;
        byte* qs = x + 8;
        for (int ib = 0; ib < 8; ib++, y += 32, qs += 16)
        {
            int ls = ((scalesL[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((scalesH >> (2 * ib)) & 3) << 4);
            float dl = d * (ls - 32);
            for (int j = 0; j < 16; j++)
            {
                y[j] = dl * values[qs[j] & 0xF];
                y[j + 16] = dl * values[qs[j] >> 4];
            }
        }
    }
}
