using static Converter.Numerics.Ggml.GgmlScalar;

namespace Converter.Numerics.Ggml;

/// <summary>
/// Straightforward scalar versions of ggml's reference quantizers (quantize_row_*_ref, the path llama-quantize
/// takes without an importance matrix), operation for operation in the same float order so the bytes match.
/// IQ4_NL and IQ4_XS have no separate reference: this is what ggml_quantize_chunk (llama-quantize) runs for them
/// without weights (quantize_iq4_nl / _xs with 7 trial scales; quantize_row_iq4_nl_ref, ggml's on-the-fly
/// conversion, tries none and differs). Slow; <see cref="GgmlQuantizer"/> is the fast path and is tested against this.
/// </summary>
public static class GgmlReferenceQuantizer
{
    private const int QK = 32;
    private const int QK_K = GgmlTypeInfo.QK_K;
    private const float GroupMaxEps = 1e-15f;

    /// <summary>Quantizes whole blocks of <paramref name="x"/> into <paramref name="y"/> (every block type <see cref="GgmlTypeInfo.CanQuantize"/> accepts).</summary>
    public static void Quantize(GgmlType type, ReadOnlySpan<float> x, Span<byte> y)
    {
        int block = GgmlTypeInfo.BlockSize(type), bytes = GgmlTypeInfo.BytesPerBlock(type);
        if (x.Length % block != 0 || y.Length != x.Length / block * bytes)
            throw new ArgumentException($"{type}: {x.Length} values do not fill {y.Length} bytes of whole blocks");
        for (int b = 0; b < x.Length / block; b++)
        {
            var xb = x.Slice(b * block, block);
            var yb = y.Slice(b * bytes, bytes);
            switch (type)
            {
                case GgmlType.Q8_0: Q8_0(xb, yb); break;
                case GgmlType.Q4_0: Q4_0(xb, yb); break;
                case GgmlType.Q4_K: Q4K(xb, yb); break;
                case GgmlType.Q5_K: Q5K(xb, yb); break;
                case GgmlType.Q6_K: Q6K(xb, yb); break;
                case GgmlType.Q2_K: KQuantLowBits.Q2K(xb, yb, vector: false); break;
                case GgmlType.Q3_K: KQuantLowBits.Q3K(xb, yb); break;
                case GgmlType.Q4_1: LegacyQuants.Q4_1(xb, yb); break;
                case GgmlType.Q5_0: LegacyQuants.Q5_0(xb, yb); break;
                case GgmlType.Q5_1: LegacyQuants.Q5_1(xb, yb); break;
                case GgmlType.IQ4_NL: Iq4Quants.Block(xb, yb, default, nl: true); break;
                case GgmlType.IQ4_XS: Iq4Quants.Block(xb, yb, default, nl: false); break;
                case GgmlType.MXFP4:
                    unsafe
                    {
                        fixed (float* px = xb)
                        fixed (byte* py = yb)
                            Mxfp4.QuantizeBlock(px, py);
                    }
                    break;
                default: throw new NotSupportedException($"no reference quantizer for {type}");
            }
        }
    }

    internal static void Q8_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = Math.Max(amax, MathF.Abs(x[j]));
        float d = amax / 127;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, d);
        for (int j = 0; j < QK; j++)
            y[2 + j] = (byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
    }

    internal static void Q4_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0, max = 0;
        for (int j = 0; j < QK; j++)
        {
            if (amax < MathF.Abs(x[j])) { amax = MathF.Abs(x[j]); max = x[j]; }
        }
        float d = max / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, d);
        for (int j = 0; j < QK / 2; j++)
        {
            float x0 = x[j] * id, x1 = x[QK / 2 + j] * id;
            int q0 = Math.Min(15, (int)(sbyte)(x0 + 8.5f));
            int q1 = Math.Min(15, (int)(sbyte)(x1 + 8.5f));
            y[2 + j] = (byte)(q0 | (q1 << 4));
        }
    }

    /// <summary>Q4_K and Q5_K share everything but the code width and the search grid.</summary>
    private static void KQuantScalesMins(ReadOnlySpan<float> x, int nmax, float rmin, float rdelta, int nstep,
        Span<byte> L, Span<byte> y)
    {
        Span<float> weights = stackalloc float[32];
        Span<float> scales = stackalloc float[8];
        Span<float> mins = stackalloc float[8];
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 8; j++)
        {
            var xs = x.Slice(32 * j, 32);
            float sumX2 = 0;
            for (int l = 0; l < 32; l++) sumX2 += xs[l] * xs[l];
            float avX = MathF.Sqrt(sumX2 / 32);
            for (int l = 0; l < 32; l++) weights[l] = avX + MathF.Abs(xs[l]);
            scales[j] = GgmlSearch.MakeQkx(nmax, xs, weights, L.Slice(32 * j, 32), out mins[j], rmin, rdelta, nstep, useMad: false);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        float invScale = maxScale > 0 ? 63.0f / maxScale : 0.0f;
        float invMin = maxMin > 0 ? 63.0f / maxMin : 0.0f;
        Span<byte> ls = stackalloc byte[8];
        Span<byte> lm = stackalloc byte[8];
        for (int j = 0; j < 8; j++)
        {
            ls[j] = Math.Min((byte)63, (byte)NearestInt(invScale * scales[j]));
            lm[j] = Math.Min((byte)63, (byte)NearestInt(invMin * mins[j]));
        }
        WriteHalf(y, maxScale / 63.0f);
        WriteHalf(y.Slice(2), maxMin / 63.0f);
        PackScaleMinK4(ls, lm, y.Slice(4, 12));

        float dAll = ReadHalf(y), mAll = ReadHalf(y.Slice(2));
        for (int j = 0; j < 8; j++)
        {
            GetScaleMinK4(j, y.Slice(4, 12), out byte sc, out byte m);
            float d = dAll * sc;
            if (d == 0) continue;
            float dm = mAll * m;
            for (int i = 0; i < 32; i++)
            {
                int l = NearestInt((x[32 * j + i] + dm) / d);
                L[32 * j + i] = (byte)Math.Max(0, Math.Min(nmax, l));
            }
        }
    }

    internal static void Q4K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[QK_K];
        KQuantScalesMins(x, 15, -1.0f, 0.1f, 20, L, y);
        PackQ4K(L, y);
    }

    internal static void PackQ4K(ReadOnlySpan<byte> L, Span<byte> y)
    {
        var qs = y.Slice(16, 128);
        for (int j = 0, o = 0; j < QK_K; j += 64, o += 32)
            for (int l = 0; l < 32; l++)
                qs[o + l] = (byte)(L[j + l] | (L[j + l + 32] << 4));
    }

    internal static void Q5K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[QK_K];
        KQuantScalesMins(x, 31, -0.5f, 0.1f, 15, L, y);
        PackQ5K(L, y);
    }

    internal static void PackQ5K(ReadOnlySpan<byte> L, Span<byte> y)
    {
        var qh = y.Slice(16, 32);
        var ql = y.Slice(48, 128);
        qh.Clear();
        int m1 = 1, m2 = 2;
        for (int n = 0, o = 0; n < QK_K; n += 64, o += 32)
        {
            for (int j = 0; j < 32; j++)
            {
                int l1 = L[n + j];
                if (l1 > 15) { l1 -= 16; qh[j] |= (byte)m1; }
                int l2 = L[n + j + 32];
                if (l2 > 15) { l2 -= 16; qh[j] |= (byte)m2; }
                ql[o + j] = (byte)(l1 | (l2 << 4));
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }

    internal static void Q6K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<sbyte> L = stackalloc sbyte[QK_K];
        Span<float> scales = stackalloc float[16];
        float maxScale = 0, maxAbsScale = 0;
        for (int ib = 0; ib < 16; ib++)
        {
            float scale = GgmlSearch.MakeQx(32, x.Slice(16 * ib, 16), L.Slice(16 * ib, 16), default);
            scales[ib] = scale;
            float abs = MathF.Abs(scale);
            if (abs > maxAbsScale) { maxAbsScale = abs; maxScale = scale; }
        }
        Q6KFinish(x, y, L, scales, maxScale, maxAbsScale);
    }

    /// <summary>Rounds the 16 sub-block scales to int8 against the largest, requantizes and packs (both Q6_K paths).</summary>
    internal static void Q6KFinish(ReadOnlySpan<float> x, Span<byte> y, Span<sbyte> L, ReadOnlySpan<float> scales,
        float maxScale, float maxAbsScale)
    {
        if (maxAbsScale < GroupMaxEps)
        {
            y.Slice(0, 210).Clear();
            return;
        }
        float iscale = -128.0f / maxScale;
        WriteHalf(y.Slice(208), 1 / iscale);
        var sc = y.Slice(192, 16);
        for (int ib = 0; ib < 16; ib++)
            sc[ib] = (byte)(sbyte)Math.Min(127, NearestInt(iscale * scales[ib]));
        float dAll = ReadHalf(y.Slice(208));
        for (int j = 0; j < 16; j++)
        {
            float d = dAll * (sbyte)sc[j];
            if (d == 0) continue;
            for (int i = 0; i < 16; i++)
            {
                int l = Math.Max(-32, Math.Min(31, NearestInt(x[16 * j + i] / d)));
                L[16 * j + i] = (sbyte)(l + 32);
            }
        }
        PackQ6K(L, y);
    }

    internal static void PackQ6K(ReadOnlySpan<sbyte> L, Span<byte> y)
    {
        var ql = y.Slice(0, 128);
        var qh = y.Slice(128, 64);
        for (int j = 0, lo = 0, ho = 0; j < QK_K; j += 128, lo += 64, ho += 32)
        {
            for (int l = 0; l < 32; l++)
            {
                int a = L[j + l], b = L[j + l + 32], c = L[j + l + 64], d = L[j + l + 96];
                ql[lo + l] = (byte)((a & 0xF) | ((c & 0xF) << 4));
                ql[lo + l + 32] = (byte)((b & 0xF) | ((d & 0xF) << 4));
                qh[ho + l] = (byte)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6));
            }
        }
    }

    internal static void WriteHalf(Span<byte> y, float v)
    {
        ushort h = ToHalfBits(v);
        y[0] = (byte)h;
        y[1] = (byte)(h >> 8);
    }

    internal static float ReadHalf(ReadOnlySpan<byte> y) => FromHalfBits((ushort)(y[0] | (y[1] << 8)));
}
