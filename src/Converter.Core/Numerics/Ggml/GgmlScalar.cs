using System.Runtime.CompilerServices;

namespace Converter.Numerics.Ggml;

/// <summary>Scalar primitives with ggml's exact rounding behaviour.</summary>
internal static class GgmlScalar
{
    /// <summary>
    /// ggml's nearest_int: adding 1.5*2^23 leaves the rounded integer in the low mantissa bits, so this is
    /// round-half-to-even for |f| &lt;= 2^22; outside that range it yields the same garbage ggml does.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int NearestInt(float f)
    {
        float v = f + 12582912f;
        return (BitConverter.SingleToInt32Bits(v) & 0x007fffff) - 0x00400000;
    }

    /// <summary>float to IEEE half bits, round to nearest even (ggml's GGML_FP32_TO_FP16).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ToHalfBits(float f) => BitConverter.HalfToUInt16Bits((Half)f);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float FromHalfBits(ushort h) => (float)BitConverter.UInt16BitsToHalf(h);

    /// <summary>float to bfloat16 bits as ggml_compute_fp32_to_bf16: round to nearest even, NaN made quiet.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ToBf16Bits(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float FromBf16Bits(ushort h) => BitConverter.UInt32BitsToSingle((uint)h << 16);

    /// <summary>The 6-bit scale and min of sub-block j from a k-quant's 12 packed bytes (get_scale_min_k4).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void GetScaleMinK4(int j, ReadOnlySpan<byte> q, out byte sc, out byte m)
    {
        if (j < 4)
        {
            sc = (byte)(q[j] & 63);
            m = (byte)(q[j + 4] & 63);
        }
        else
        {
            sc = (byte)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            m = (byte)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
    }

    /// <summary>Packs eight 6-bit scales and mins into the 12-byte k-quant layout.</summary>
    public static void PackScaleMinK4(ReadOnlySpan<byte> ls, ReadOnlySpan<byte> lm, Span<byte> q)
    {
        for (int j = 0; j < 4; j++)
        {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        }
        for (int j = 4; j < 8; j++)
        {
            q[j + 4] = (byte)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            q[j - 4] |= (byte)((ls[j] >> 4) << 6);
            q[j] |= (byte)((lm[j] >> 4) << 6);
        }
    }
}
