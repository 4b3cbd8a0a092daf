using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>
/// FP4 e2m1 (OCP MX "E2M1", DeepSeek-V4's routed-expert format): 4-bit codes S.EE.M, bias 1, values
/// ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}; no infinities, no NaN. Code 0x8 is -0.0.
/// <para>Encoding rounds to the nearest value, ties to the even code (0.25 -&gt; 0, 0.75 -&gt; 1, 1.25 -&gt; 1,
/// 1.75 -&gt; 2, 2.5 -&gt; 2, 3.5 -&gt; 4, 5 -&gt; 4), saturates beyond ±6 (DeepSeek clamps to ±6 before its cast),
/// and gives code 0 for every result of zero, negative inputs included: the official checkpoints never hold 0x8.</para>
/// Packing, as DeepSeek's I8 tensors: element 2k in the low nibble of byte k, element 2k+1 in the high nibble.
/// </summary>
public static class Fp4E2M1
{
    /// <summary>Largest finite value, 6.</summary>
    public const float MaxValue = 6f;

    /// <summary>The value of a code (low four bits); 0x8 is -0.0 (DeepSeek's and llama.cpp's tables write +0.0,
    /// transformers' -0.0; equal as numbers).</summary>
    public static float ToSingle(int code) => BitConverter.UInt32BitsToSingle(E2M1Kernels.DecodeScalar((uint)code & 0xFu));

    /// <summary>The value of a code as bf16 bits (exact: every e2m1 value is a bf16).</summary>
    public static ushort ToBf16(int code) => (ushort)(E2M1Kernels.DecodeScalar((uint)code & 0xFu) >> 16);

    /// <summary>The nearest code (see the class remarks); NaN has no code and throws.</summary>
    public static byte FromSingle(float value)
    {
        if (float.IsNaN(value)) throw new ArgumentException("NaN has no FP4 e2m1 code.", nameof(value));
        return (byte)E2M1Kernels.EncodeScalar(BitConverter.SingleToUInt32Bits(value));
    }

    /// <summary>Two codes per byte, element 2k low: <paramref name="codes"/> must have an even length.</summary>
    public static void Pack(ReadOnlySpan<byte> codes, Span<byte> packed)
    {
        if ((codes.Length & 1) != 0) throw new ArgumentException($"{codes.Length} codes: FP4 packs two a byte, so the count must be even.", nameof(codes));
        if (packed.Length < codes.Length / 2) throw new ArgumentException("Destination is shorter than half the codes.", nameof(packed));
        for (int k = 0; k < codes.Length / 2; k++)
            packed[k] = (byte)((codes[2 * k] & 0xF) | (codes[2 * k + 1] << 4));
    }

    /// <summary>Byte k -&gt; codes 2k (low nibble) and 2k+1 (high nibble).</summary>
    public static void Unpack(ReadOnlySpan<byte> packed, Span<byte> codes)
    {
        if (codes.Length < 2 * packed.Length) throw new ArgumentException("Destination is shorter than twice the packed bytes.", nameof(codes));
        for (int k = 0; k < packed.Length; k++)
        {
            codes[2 * k] = (byte)(packed[k] & 0xF);
            codes[2 * k + 1] = (byte)(packed[k] >> 4);
        }
    }
}

/// <summary>Bit-level e2m1 codec on float32 bit patterns; the vector and scalar forms do the same arithmetic.</summary>
internal static class E2M1Kernels
{
    internal const uint MaxBits = 0x40C0_0000u;   // 6.0f
    private const uint One = 0x3F80_0000u;        // 1.0f: below it the codes are 0, 0.5 (and 1.0 by rounding)
    private const uint SubMagic = 149u << 23;     // 2^22: its float32 ulp is 0.5, the e2m1 subnormal step
    private const uint Rebias = (127u - 1u) << 23;
    private const uint Half = 0x3F00_0000u;       // 0.5f

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint EncodeScalar(uint bits)
    {
        // Clamp first: the integer min of non-negative floats is their float min (inf and NaN saturate too).
        uint a = Math.Min(bits & 0x7FFF_FFFFu, MaxBits);
        uint r = a < One
            // Adding 2^22 rounds a to a multiple of 0.5 (ties to even): 0, 1 or 2 halves, which are codes 0, 1, 2.
            ? BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(a) + BitConverter.UInt32BitsToSingle(SubMagic)) - SubMagic
            // Rebias the exponent and round the 22 dropped mantissa bits to nearest even; code parity is the
            // mantissa bit, so ties go to the even code. 6 is the largest input, so no carry leaves the format.
            : (a - Rebias + 0x1F_FFFFu + ((a >> 22) & 1u)) >> 22;
        return r == 0 ? 0 : r | ((bits >> 28) & 8u);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<uint> Encode256(Vector256<uint> bits)
    {
        Vector256<uint> a = Vector256.Min(bits & Vector256.Create(0x7FFF_FFFFu), Vector256.Create(MaxBits));
        Vector256<uint> normal = (a - Vector256.Create(Rebias - 0x1F_FFFFu) + ((a >>> 22) & Vector256<uint>.One)) >>> 22;
        Vector256<uint> sub = (a.AsSingle() + Vector256.Create(SubMagic).AsSingle()).AsUInt32() - Vector256.Create(SubMagic);
        // a < 2^31, so signed compares order it correctly.
        Vector256<uint> r = Vector256.ConditionalSelect(Vector256.LessThan(a.AsInt32(), Vector256.Create((int)One)).AsUInt32(), sub, normal);
        Vector256<uint> sign = (bits >>> 28) & Vector256.Create(8u);
        return r | Vector256.AndNot(sign, Vector256.Equals(r, Vector256<uint>.Zero));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<uint> Encode512(Vector512<uint> bits)
    {
        Vector512<uint> a = Vector512.Min(bits & Vector512.Create(0x7FFF_FFFFu), Vector512.Create(MaxBits));
        Vector512<uint> normal = (a - Vector512.Create(Rebias - 0x1F_FFFFu) + ((a >>> 22) & Vector512<uint>.One)) >>> 22;
        Vector512<uint> sub = (a.AsSingle() + Vector512.Create(SubMagic).AsSingle()).AsUInt32() - Vector512.Create(SubMagic);
        Vector512<uint> r = Vector512.ConditionalSelect(Vector512.LessThan(a.AsInt32(), Vector512.Create((int)One)).AsUInt32(), sub, normal);
        Vector512<uint> sign = (bits >>> 28) & Vector512.Create(8u);
        return r | Vector512.AndNot(sign, Vector512.Equals(r, Vector512<uint>.Zero));
    }

    /// <summary>Code (0..15) -&gt; float32 bits. Codes with exponent bits: (em &lt;&lt; 22) + 2^-1's bits places
    /// E.M under the float32 exponent; em 1 is 0.5 and em 0 is zero.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint DecodeScalar(uint code)
    {
        uint em = code & 7u;
        uint r = em >= 2 ? (em << 22) + Half : em * Half;
        return r | ((code & 8u) << 28);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<uint> Decode256(Vector256<uint> codes)
    {
        Vector256<uint> em = codes & Vector256.Create(7u);
        Vector256<uint> normal = (em << 22) + Vector256.Create(Half);
        Vector256<uint> sub = (Vector256<uint>.Zero - em) & Vector256.Create(Half); // em 0 or 1 where selected
        Vector256<uint> r = Vector256.ConditionalSelect(Vector256.LessThan(em.AsInt32(), Vector256.Create(2)).AsUInt32(), sub, normal);
        return r | ((codes & Vector256.Create(8u)) << 28);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<uint> Decode512(Vector512<uint> codes)
    {
        Vector512<uint> em = codes & Vector512.Create(7u);
        Vector512<uint> normal = (em << 22) + Vector512.Create(Half);
        Vector512<uint> sub = (Vector512<uint>.Zero - em) & Vector512.Create(Half);
        Vector512<uint> r = Vector512.ConditionalSelect(Vector512.LessThan(em.AsInt32(), Vector512.Create(2)).AsUInt32(), sub, normal);
        return r | ((codes & Vector512.Create(8u)) << 28);
    }

    /// <summary>32 one-code bytes (element order) -&gt; 16 packed bytes, element 2k low.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<byte> PackNibbles(Vector256<byte> codes)
    {
        // Little-endian: ushort k holds code 2k in its low byte and code 2k+1 in its high byte.
        Vector256<ushort> u = codes.AsUInt16();
        u = (u & Vector256.Create((ushort)0x0F)) | ((u >>> 4) & Vector256.Create((ushort)0xF0));
        return Vector128.Narrow(u.GetLower(), u.GetUpper());
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> PackNibbles(Vector512<byte> codes)
    {
        Vector512<ushort> u = codes.AsUInt16();
        u = (u & Vector512.Create((ushort)0x0F)) | ((u >>> 4) & Vector512.Create((ushort)0xF0));
        return Vector256.Narrow(u.GetLower(), u.GetUpper());
    }

    /// <summary>16 packed bytes -&gt; 32 one-code bytes in element order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> UnpackNibbles(Vector128<byte> packed)
    {
        (Vector128<ushort> lo, Vector128<ushort> hi) = Vector128.Widen(packed);
        Vector256<ushort> u = Vector256.Create(lo, hi);
        return ((u & Vector256.Create((ushort)0x0F)) | ((u & Vector256.Create((ushort)0xF0)) << 4)).AsByte();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<byte> UnpackNibbles(Vector256<byte> packed)
    {
        (Vector256<ushort> lo, Vector256<ushort> hi) = Vector256.Widen(packed);
        Vector512<ushort> u = Vector512.Create(lo, hi);
        return ((u & Vector512.Create((ushort)0x0F)) | ((u & Vector512.Create((ushort)0xF0)) << 4)).AsByte();
    }
}
