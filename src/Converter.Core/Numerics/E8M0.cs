using System.Numerics;
using System.Runtime.CompilerServices;

namespace Converter.Numerics;

/// <summary>
/// E8M0 scales (OCP MX "E8M0", torch <c>float8_e8m0fnu</c>, DeepSeek's <c>scale_fmt: ue8m0</c>): one byte that is
/// a biased exponent, value 2^(code - 127). No sign, no zero, no mantissa; 0xFF is NaN.
/// <para>The scale of a block is chosen as in DeepSeek-V4's official checkpoints (and DeepSeek's
/// <c>fast_log2_ceil</c>): the smallest power of two s with amax / s &lt;= the format's largest value, i.e.
/// e = ceil(log2(amax / formatMax)) computed exactly (no float division); amax = 0 gives e = 0.</para>
/// </summary>
public static class E8M0
{
    public const int Bias = 127;

    /// <summary>The NaN code (OCP MX spec); never a valid scale.</summary>
    public const byte NaNCode = 0xFF;

    /// <summary>Exponent range of the finite codes 0x00..0xFE.</summary>
    public const int MinExponent = -127, MaxExponent = 127;

    /// <summary>2^(code - 127) as float32 (exact: code 0 is the subnormal 2^-127); 0xFF gives NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(byte code) => BitConverter.UInt32BitsToSingle(ToSingleBits(code));

    /// <summary>float32 bits of 2^(code - 127): the code is the float32 exponent field, except 0 (subnormal) and 0xFF.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint ToSingleBits(byte code) => code switch
    {
        0 => 0x0040_0000u,
        NaNCode => 0x7FC0_0000u,
        _ => (uint)code << 23,
    };

    /// <summary>2^-(code - 127) as float32 bits: the exact reciprocal, used to quantize with a multiply. Codes
    /// 1..253 map to the exponent fields 253..1; 254 gives 2^-127 (subnormal), 0 gives 2^127.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint ReciprocalBits(byte code) => code == 254 ? 0x0040_0000u : (uint)(254 - code) << 23;

    /// <summary>Converts each code with <see cref="ToSingle(byte)"/>.</summary>
    public static void ToSingle(ReadOnlySpan<byte> codes, Span<float> destination)
    {
        if (destination.Length < codes.Length)
            throw new ArgumentException("Destination is shorter than source.", nameof(destination));
        for (int i = 0; i < codes.Length; i++) destination[i] = ToSingle(codes[i]);
    }

    /// <summary>The code of 2^<paramref name="exponent"/>.</summary>
    public static byte FromExponent(int exponent)
    {
        if (exponent is < MinExponent or > MaxExponent)
            throw new ArgumentOutOfRangeException(nameof(exponent), exponent, $"E8M0 holds 2^{MinExponent} .. 2^{MaxExponent}");
        return (byte)(exponent + Bias);
    }

    /// <summary>The code of <paramref name="value"/> if it is exactly a power of two in 2^-127 .. 2^127 (for
    /// scales stored as floats by other tools); false for anything else, zero and negatives included.</summary>
    public static bool TryFromSingle(float value, out byte code)
    {
        uint b = BitConverter.SingleToUInt32Bits(value);
        code = 0;
        if (b == 0x0040_0000u) return true;                 // 2^-127, the one subnormal power of two in range
        uint exp = b >> 23;                                 // sign bit set: exp > 255
        if ((b & 0x7F_FFFFu) != 0 || exp is 0 or >= 255) return false;
        code = (byte)exp;
        return true;
    }

    /// <summary>ceil(log2(<paramref name="amax"/> / <paramref name="formatMax"/>)), exactly: the smallest e with
    /// amax &lt;= formatMax * 2^e. Both must be positive and finite; formatMax a normal float.</summary>
    public static int CeilLog2Ratio(float amax, float formatMax)
    {
        if (!(amax > 0f) || !float.IsFinite(amax)) throw new ArgumentOutOfRangeException(nameof(amax), amax, "must be positive and finite");
        if (!float.IsNormal(formatMax) || formatMax < 0f) throw new ArgumentOutOfRangeException(nameof(formatMax), formatMax, "must be a positive normal float");
        return CeilLog2RatioBits(BitConverter.SingleToUInt32Bits(amax), BitConverter.SingleToUInt32Bits(formatMax));
    }

    /// <summary><see cref="CeilLog2Ratio"/> on bits (amax: positive finite, max: positive normal). With
    /// amax = 1.f * 2^ea and max = 1.g * 2^em, amax / max lies in (2^(ea-em-1), 2^(ea-em+1)), and it is above
    /// 2^(ea-em) exactly when f &gt; g, which compares the mantissa fields without rounding.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int CeilLog2RatioBits(uint amax, uint max)
    {
        int ea = (int)(amax >> 23);
        uint fa = amax & 0x7F_FFFFu;
        if (ea == 0)
        {
            // Subnormal: shift the leading one up to the implicit bit (amax > 0, so fa != 0).
            int shift = BitOperations.LeadingZeroCount(fa) - 8;
            fa = (fa << shift) & 0x7F_FFFFu;
            ea = 1 - shift;
        }
        return ea - (int)(max >> 23) + (fa > (max & 0x7F_FFFFu) ? 1 : 0);
    }

    /// <summary>
    /// The scale code of a block whose largest magnitude is <paramref name="amax"/> for a format whose largest
    /// value is <paramref name="formatMax"/> (448 for e4m3, 6 for e2m1): 127 + ceil(log2(amax / formatMax));
    /// amax = 0 gives code 127 (2^0). Below 2^-127 (amax under formatMax * 2^-127, only for near-subnormal blocks)
    /// the code is clamped to 0, which still fits every value, with less precision.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">amax negative or not finite, or the scale above 2^127.</exception>
    public static byte ScaleFor(float amax, float formatMax)
    {
        if (amax == 0f) return Bias;
        return FromClampedExponent(CeilLog2Ratio(amax, formatMax));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static byte ScaleForBits(uint amaxBits, uint formatMaxBits)
        => amaxBits == 0 ? (byte)Bias : FromClampedExponent(CeilLog2RatioBits(amaxBits, formatMaxBits));

    // With formatMax >= 2 (every format here) amax < 2^128 keeps e <= 126; a smaller formatMax can overflow.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static byte FromClampedExponent(int e)
    {
        if (e > MaxExponent) throw new ArgumentOutOfRangeException(nameof(e), e, $"scale 2^{e} is above E8M0's 2^{MaxExponent}");
        return (byte)(Math.Max(e, MinExponent) + Bias);
    }
}
