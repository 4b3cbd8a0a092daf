using System.Buffers.Binary;
using static Converter.Numerics.Ggml.GgmlReferenceQuantizer;
using static Converter.Numerics.Ggml.GgmlScalar;

namespace Converter.Numerics.Ggml;

/// <summary>
/// Q2_K (84 bytes: 16 scale/min nibble pairs, 64 bytes of 2-bit codes, d, dmin) and Q3_K (110 bytes: 32 bytes of
/// high bits, 64 of 2-bit codes, 12 of packed 6-bit scales, d): the reference quantizers (quantize_row_q2_K_ref,
/// quantize_row_q3_K_ref) and the importance-weighted ones (quantize_row_q2_K_impl, quantize_row_q3_K_impl), one
/// 256-value super-block at a time.
/// </summary>
internal static class KQuantLowBits
{
    private const int QK_K = GgmlTypeInfo.QK_K;

    /// <param name="vector">run the 16 sub-block searches 8 at a time (<see cref="QkxSearch8"/>, same bytes)</param>
    public static void Q2K(ReadOnlySpan<float> x, Span<byte> y, bool vector)
    {
        Span<byte> L = stackalloc byte[QK_K];
        Span<float> weights = stackalloc float[QK_K];
        Span<float> mins = stackalloc float[16];
        Span<float> scales = stackalloc float[16];
        const float q4scale = 15f;
        var sc = y.Slice(0, 16);
        for (int l = 0; l < QK_K; l++) weights[l] = MathF.Abs(x[l]);
        SubBlockSearch(x, weights, L, scales, mins, -0.5f, 0.1f, 15, useMad: true, vector);
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 16; j++)
        {
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        if (maxScale > 0)
        {
            float iscale = q4scale / maxScale;
            for (int j = 0; j < 16; j++) sc[j] = (byte)NearestInt(iscale * scales[j]);
            WriteHalf(y.Slice(80), maxScale / q4scale);
        }
        else
        {
            sc.Clear();
            WriteHalf(y.Slice(80), 0f);
        }
        if (maxMin > 0)
        {
            float iscale = q4scale / maxMin;
            for (int j = 0; j < 16; j++) sc[j] |= (byte)(NearestInt(iscale * mins[j]) << 4);
            WriteHalf(y.Slice(82), maxMin / q4scale);
        }
        else
        {
            WriteHalf(y.Slice(82), 0f);
        }
        Q2KCodes(x, y, L);
    }

    public static void Q2KImportance(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, bool vector)
    {
        Span<byte> L = stackalloc byte[QK_K];
        Span<float> weight = stackalloc float[QK_K];
        Span<float> mins = stackalloc float[16];
        Span<float> scales = stackalloc float[16];
        Span<float> sw = stackalloc float[16];
        Span<byte> Ls = stackalloc byte[16];
        Span<byte> Lm = stackalloc byte[16];
        float sumX2 = 0;
        for (int j = 0; j < QK_K; j++) sumX2 += x[j] * x[j];
        float sigma2 = sumX2 / QK_K;
        for (int j = 0; j < 16; j++)
        {
            var xs = x.Slice(16 * j, 16);
            var q = qw.Slice(16 * j, 16);
            var wj = weight.Slice(16 * j, 16);
            for (int l = 0; l < 16; l++) wj[l] = q[l] * MathF.Sqrt(sigma2 + xs[l] * xs[l]);
            float sumw = 0;
            for (int l = 0; l < 16; l++) sumw += wj[l];
            sw[j] = sumw;
        }
        SubBlockSearch(x, weight, L, scales, mins, -0.9f, 0.05f, 36, useMad: false, vector);
        float dm = GgmlSearch.MakeQp(15, scales, Ls, sw);
        float mm = GgmlSearch.MakeQp(15, mins, Lm, sw);
        WriteHalf(y.Slice(80), dm);
        WriteHalf(y.Slice(82), mm);
        for (int j = 0; j < 16; j++) y[j] = (byte)(Ls[j] | (Lm[j] << 4));
        Q2KCodes(x, y, L);
    }

    /// <summary>make_qkx2/3_quants on each of the 16 sub-blocks of 16 (codes 0..3), 8 lanes at a time when <paramref name="vector"/>.</summary>
    private static unsafe void SubBlockSearch(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<byte> L, Span<float> scales,
        Span<float> mins, float rmin, float rdelta, int nstep, bool useMad, bool vector)
    {
        if (vector)
        {
            fixed (float* px = x)
            fixed (float* pw = w)
            fixed (byte* pl = L)
            fixed (float* ps = scales)
            fixed (float* pm = mins)
                for (int g = 0; g < 16; g += QkxSearch8.Lanes)
                    QkxSearch8.Search(16, 3, px + 16 * g, pw + 16 * g, pl + 16 * g, ps + g, pm + g, rmin, rdelta, nstep, useMad);
            return;
        }
        for (int j = 0; j < 16; j++)
            scales[j] = GgmlSearch.MakeQkx(3, x.Slice(16 * j, 16), w.Slice(16 * j, 16), L.Slice(16 * j, 16), out mins[j], rmin, rdelta, nstep, useMad);
    }

    /// <summary>Requantizes every value against its stored (half-rounded) scale and min, then packs the codes.</summary>
    private static void Q2KCodes(ReadOnlySpan<float> x, Span<byte> y, Span<byte> L)
    {
        float dAll = ReadHalf(y.Slice(80)), mAll = ReadHalf(y.Slice(82));
        for (int j = 0; j < 16; j++)
        {
            float d = dAll * (y[j] & 0xF);
            if (d == 0) continue;
            float dm = mAll * (y[j] >> 4);
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (byte)Math.Max(0, Math.Min(3, l));
            }
        }
        var qs = y.Slice(16, 64);
        for (int j = 0; j < QK_K; j += 128)
            for (int l = 0; l < 32; l++)
                qs[j / 4 + l] = (byte)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }

    public static void Q3K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<sbyte> L = stackalloc sbyte[QK_K];
        Span<float> scales = stackalloc float[16];
        float maxScale = 0, amax = 0;
        for (int j = 0; j < 16; j++)
        {
            scales[j] = GgmlSearch.MakeQ3(4, x.Slice(16 * j, 16), L.Slice(16 * j, 16));
            float scale = MathF.Abs(scales[j]);
            if (scale > amax) { amax = scale; maxScale = scales[j]; }
        }
        var sc = y.Slice(96, 12);
        sc.Clear();
        if (maxScale != 0)
        {
            float iscale = -32f / maxScale;
            for (int j = 0; j < 16; j++)
            {
                int l = (sbyte)NearestInt(iscale * scales[j]);
                PackQ3Scale(sc, j, Math.Max(-32, Math.Min(31, l)) + 32);
            }
            WriteHalf(y.Slice(108), 1 / iscale);
        }
        else
        {
            WriteHalf(y.Slice(108), 0f);
        }
        Q3KCodes(x, y, L);
    }

    public static void Q3KImportance(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, bool vector)
    {
        Span<sbyte> L = stackalloc sbyte[QK_K];
        Span<float> scales = stackalloc float[16];
        Span<float> weight = stackalloc float[16];
        Span<float> sw = stackalloc float[16];
        Span<sbyte> Ls = stackalloc sbyte[16];
        float sumX2 = 0;
        for (int j = 0; j < QK_K; j++) sumX2 += x[j] * x[j];
        float sigma2 = 2 * sumX2 / QK_K;
        for (int j = 0; j < 16; j++)
        {
            var xs = x.Slice(16 * j, 16);
            var q = qw.Slice(16 * j, 16);
            for (int l = 0; l < 16; l++) weight[l] = q[l] * MathF.Sqrt(sigma2 + xs[l] * xs[l]);
            float sumw = 0;
            for (int l = 0; l < 16; l++) sumw += weight[l];
            sw[j] = sumw;
            scales[j] = vector ? QxSearchSteps.MakeQx(4, xs, L.Slice(16 * j, 16), weight) : GgmlSearch.MakeQx(4, xs, L.Slice(16 * j, 16), weight);
        }
        var sc = y.Slice(96, 12);
        sc.Clear();
        float dBlock = vector ? QxSearchSteps.MakeQx(32, scales, Ls, sw) : GgmlSearch.MakeQx(32, scales, Ls, sw);
        for (int j = 0; j < 16; j++) PackQ3Scale(sc, j, Ls[j]);
        WriteHalf(y.Slice(108), dBlock);
        Q3KCodes(x, y, L);
    }

    /// <summary>Scale j (6 bits, biased by 32): low nibble in bytes 0..7, high two bits in bytes 8..11.</summary>
    private static void PackQ3Scale(Span<byte> sc, int j, int l)
    {
        if (j < 8) sc[j] = (byte)(l & 0xF);
        else sc[j - 8] |= (byte)((l & 0xF) << 4);
        l >>= 4;
        sc[j % 4 + 8] |= (byte)(l << (2 * (j / 4)));
    }

    private static void Q3KCodes(ReadOnlySpan<float> x, Span<byte> y, Span<sbyte> L)
    {
        var sc = y.Slice(96, 12);
        float dAll = ReadHalf(y.Slice(108));
        for (int j = 0; j < 16; j++)
        {
            int s = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
            s = (sbyte)((s | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
            float d = dAll * s;
            if (d == 0) continue;
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt(x[16 * j + ii] / d);
                L[16 * j + ii] = (sbyte)(Math.Max(-4, Math.Min(3, l)) + 4);
            }
        }
        var hmask = y.Slice(0, 32);
        hmask.Clear();
        int m = 0;
        byte hm = 1;
        for (int j = 0; j < QK_K; j++)
        {
            if (L[j] > 3)
            {
                hmask[m] |= hm;
                L[j] -= 4;
            }
            if (++m == QK_K / 8)
            {
                m = 0;
                hm <<= 1;
            }
        }
        var qs = y.Slice(32, 64);
        for (int j = 0; j < QK_K; j += 128)
            for (int l = 0; l < 32; l++)
                qs[j / 4 + l] = (byte)((byte)L[j + l] | ((byte)L[j + l + 32] << 2) | ((byte)L[j + l + 64] << 4) | ((byte)L[j + l + 96] << 6));
    }

    internal static void WriteUInt16(Span<byte> y, int v) => BinaryPrimitives.WriteUInt16LittleEndian(y, (ushort)v);
}
