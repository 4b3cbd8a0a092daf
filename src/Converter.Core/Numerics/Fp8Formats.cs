using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>
/// Bit-level codec of one 8-bit float format, as static members so that generic span loops are compiled
/// once per format with everything inlined.
/// </summary>
internal interface IFp8Format
{
    /// <summary>float32 bits -> code (low 8 bits of the result).</summary>
    static abstract uint EncodeScalar(uint f32Bits);
    /// <summary>Eight float32 bit patterns -> eight codes (low 8 bits of each lane).</summary>
    static abstract Vector256<uint> Encode256(Vector256<uint> f32Bits);
    /// <summary>Eight codes (0..255 per lane) -> eight float32 bit patterns.</summary>
    static abstract Vector256<uint> Decode256(Vector256<uint> codes);
    static abstract uint DecodeScalar(uint code);
    /// <summary>Sixteen-lane versions of <see cref="Encode256"/> and <see cref="Decode256"/> (same arithmetic).</summary>
    static abstract Vector512<uint> Encode512(Vector512<uint> f32Bits);
    static abstract Vector512<uint> Decode512(Vector512<uint> codes);
}

/// <summary>
/// e4m3fn (OCP "E4M3", no infinities): bias 7, max 448, NaN = S.1111.111. Conversion from float32 matches
/// torch's <c>.to(torch.float8_e4m3fn)</c> bit for bit: round to nearest even, no saturation: anything whose
/// magnitude rounds above 448 (|x| &gt; 464), +-inf and NaN become NaN (0x7F with the input's sign).
/// </summary>
internal readonly struct E4M3Format : IFp8Format
{
    private const uint Overflow = 1087u << 20;   // 480.0f: first magnitude at or beyond the NaN code
    private const uint MinNormal = 121u << 23;   // 2^-6
    private const uint SubMagic = 141u << 23;    // 2^14: its float32 ulp is 2^-9, the e4m3 subnormal step
    private const uint Rebias = (127u - 7u) << 23;
    internal const uint NaNBits = 0x7FF0_0000u;  // what torch decodes 0x7F to

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint EncodeScalar(uint bits)
    {
        uint sign = (bits >> 24) & 0x80u;
        uint a = bits & 0x7FFF_FFFFu;
        uint r;
        if (a >= Overflow) r = 0x7Fu;
        else if (a < MinNormal)
            // Adding 2^14 makes the FPU round a to a multiple of 2^-9 (ties to even); the low bits are then the code.
            r = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(a) + BitConverter.UInt32BitsToSingle(SubMagic)) - SubMagic;
        else
            // Rebias the exponent and round the 20 dropped mantissa bits to nearest even; a carry moves the
            // exponent up, and from 1111.110 it lands on the NaN code as torch does.
            r = (a - Rebias + 0x7FFFFu + ((a >> 20) & 1u)) >> 20;
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<uint> Encode256(Vector256<uint> bits)
    {
        Vector256<uint> sign = (bits >>> 24) & Vector256.Create(0x80u);
        Vector256<uint> a = bits & Vector256.Create(0x7FFF_FFFFu);
        Vector256<uint> normal = (a - Vector256.Create(Rebias - 0x7FFFFu) + ((a >>> 20) & Vector256<uint>.One)) >>> 20;
        Vector256<uint> sub = (a.AsSingle() + Vector256.Create(SubMagic).AsSingle()).AsUInt32() - Vector256.Create(SubMagic);
        // a < 2^31, so signed compares (native on AVX2) order it correctly.
        Vector256<int> ai = a.AsInt32();
        Vector256<uint> r = Vector256.ConditionalSelect(Vector256.LessThan(ai, Vector256.Create((int)MinNormal)).AsUInt32(), sub, normal);
        r = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(ai, Vector256.Create((int)Overflow)).AsUInt32(), Vector256.Create(0x7Fu), r);
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<uint> Encode512(Vector512<uint> bits)
    {
        Vector512<uint> sign = (bits >>> 24) & Vector512.Create(0x80u);
        Vector512<uint> a = bits & Vector512.Create(0x7FFF_FFFFu);
        Vector512<uint> normal = (a - Vector512.Create(Rebias - 0x7FFFFu) + ((a >>> 20) & Vector512<uint>.One)) >>> 20;
        Vector512<uint> sub = (a.AsSingle() + Vector512.Create(SubMagic).AsSingle()).AsUInt32() - Vector512.Create(SubMagic);
        // a < 2^31, so signed compares (native on AVX2) order it correctly.
        Vector512<int> ai = a.AsInt32();
        Vector512<uint> r = Vector512.ConditionalSelect(Vector512.LessThan(ai, Vector512.Create((int)MinNormal)).AsUInt32(), sub, normal);
        r = Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(ai, Vector512.Create((int)Overflow)).AsUInt32(), Vector512.Create(0x7Fu), r);
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint DecodeScalar(uint code)
    {
        uint sign = (code & 0x80u) << 24;
        uint em = code & 0x7Fu;
        uint r;
        if (em == 0x7Fu) r = NaNBits;
        else if (em < 8u) r = BitConverter.SingleToUInt32Bits(em * (1f / 512f)); // subnormal: m * 2^-9
        else r = (em << 20) + Rebias;
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<uint> Decode256(Vector256<uint> codes)
    {
        Vector256<uint> sign = (codes & Vector256.Create(0x80u)) << 24;
        Vector256<uint> em = codes & Vector256.Create(0x7Fu);
        Vector256<uint> normal = (em << 20) + Vector256.Create(Rebias);
        // Subnormals via int -> float conversion, so no float32 subnormal ever enters the FPU.
        Vector256<uint> sub = (Vector256.ConvertToSingle(em.AsInt32()) * Vector256.Create(1f / 512f)).AsUInt32();
        Vector256<int> ei = em.AsInt32();
        Vector256<uint> r = Vector256.ConditionalSelect(Vector256.LessThan(ei, Vector256.Create(8)).AsUInt32(), sub, normal);
        r = Vector256.ConditionalSelect(Vector256.Equals(ei, Vector256.Create(0x7F)).AsUInt32(), Vector256.Create(NaNBits), r);
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<uint> Decode512(Vector512<uint> codes)
    {
        Vector512<uint> sign = (codes & Vector512.Create(0x80u)) << 24;
        Vector512<uint> em = codes & Vector512.Create(0x7Fu);
        Vector512<uint> normal = (em << 20) + Vector512.Create(Rebias);
        // Subnormals via int -> float conversion, so no float32 subnormal ever enters the FPU.
        Vector512<uint> sub = (Vector512.ConvertToSingle(em.AsInt32()) * Vector512.Create(1f / 512f)).AsUInt32();
        Vector512<int> ei = em.AsInt32();
        Vector512<uint> r = Vector512.ConditionalSelect(Vector512.LessThan(ei, Vector512.Create(8)).AsUInt32(), sub, normal);
        r = Vector512.ConditionalSelect(Vector512.Equals(ei, Vector512.Create(0x7F)).AsUInt32(), Vector512.Create(NaNBits), r);
        return r | sign;
    }
}

/// <summary>
/// e5m2 (IEEE-like: bias 15, max 57344, infinities, NaN = S.11111.xx). Conversion from float32 matches torch's
/// <c>.to(torch.float8_e5m2)</c>: round to nearest even, magnitudes that round above 57344 (|x| &gt;= 61440)
/// and +-inf become +-inf, NaN becomes 0x7F with the input's sign.
/// </summary>
internal readonly struct E5M2Format : IFp8Format
{
    private const uint Overflow = 143u << 23;    // 65536.0f: always infinity (or NaN)
    private const uint MinNormal = 113u << 23;   // 2^-14
    private const uint SubMagic = 134u << 23;    // 2^7: float32 ulp 2^-16, the e5m2 subnormal step
    private const uint Rebias = (127u - 15u) << 23;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint EncodeScalar(uint bits)
    {
        uint sign = (bits >> 24) & 0x80u;
        uint a = bits & 0x7FFF_FFFFu;
        uint r;
        if (a >= Overflow) r = a > 0x7F80_0000u ? 0x7Fu : 0x7Cu;
        else if (a < MinNormal)
            r = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(a) + BitConverter.UInt32BitsToSingle(SubMagic)) - SubMagic;
        else
            r = (a - Rebias + 0xFFFFFu + ((a >> 21) & 1u)) >> 21; // a carry from 57344 reaches the inf code
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<uint> Encode256(Vector256<uint> bits)
    {
        Vector256<uint> sign = (bits >>> 24) & Vector256.Create(0x80u);
        Vector256<uint> a = bits & Vector256.Create(0x7FFF_FFFFu);
        Vector256<uint> normal = (a - Vector256.Create(Rebias - 0xFFFFFu) + ((a >>> 21) & Vector256<uint>.One)) >>> 21;
        Vector256<uint> sub = (a.AsSingle() + Vector256.Create(SubMagic).AsSingle()).AsUInt32() - Vector256.Create(SubMagic);
        Vector256<int> ai = a.AsInt32();
        Vector256<uint> r = Vector256.ConditionalSelect(Vector256.LessThan(ai, Vector256.Create((int)MinNormal)).AsUInt32(), sub, normal);
        Vector256<uint> big = Vector256.ConditionalSelect(Vector256.GreaterThan(ai, Vector256.Create(0x7F80_0000)).AsUInt32(), Vector256.Create(0x7Fu), Vector256.Create(0x7Cu));
        r = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(ai, Vector256.Create((int)Overflow)).AsUInt32(), big, r);
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<uint> Encode512(Vector512<uint> bits)
    {
        Vector512<uint> sign = (bits >>> 24) & Vector512.Create(0x80u);
        Vector512<uint> a = bits & Vector512.Create(0x7FFF_FFFFu);
        Vector512<uint> normal = (a - Vector512.Create(Rebias - 0xFFFFFu) + ((a >>> 21) & Vector512<uint>.One)) >>> 21;
        Vector512<uint> sub = (a.AsSingle() + Vector512.Create(SubMagic).AsSingle()).AsUInt32() - Vector512.Create(SubMagic);
        Vector512<int> ai = a.AsInt32();
        Vector512<uint> r = Vector512.ConditionalSelect(Vector512.LessThan(ai, Vector512.Create((int)MinNormal)).AsUInt32(), sub, normal);
        Vector512<uint> big = Vector512.ConditionalSelect(Vector512.GreaterThan(ai, Vector512.Create(0x7F80_0000)).AsUInt32(), Vector512.Create(0x7Fu), Vector512.Create(0x7Cu));
        r = Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(ai, Vector512.Create((int)Overflow)).AsUInt32(), big, r);
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint DecodeScalar(uint code)
    {
        uint sign = (code & 0x80u) << 24;
        uint em = code & 0x7Fu;
        uint r;
        // torch decodes through float16, so NaN payloads come out quieted: 0x7F800000 | m << 21 | quiet bit.
        if (em >= 0x7Cu) r = 0x7F80_0000u | ((em & 3u) << 21) | (em > 0x7Cu ? 0x0040_0000u : 0u);
        else if (em < 4u) r = BitConverter.SingleToUInt32Bits(em * (1f / 65536f)); // subnormal: m * 2^-16
        else r = (em << 21) + Rebias;
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<uint> Decode256(Vector256<uint> codes)
    {
        Vector256<uint> sign = (codes & Vector256.Create(0x80u)) << 24;
        Vector256<uint> em = codes & Vector256.Create(0x7Fu);
        Vector256<uint> normal = (em << 21) + Vector256.Create(Rebias);
        Vector256<uint> sub = (Vector256.ConvertToSingle(em.AsInt32()) * Vector256.Create(1f / 65536f)).AsUInt32();
        Vector256<int> ei = em.AsInt32();
        Vector256<uint> special = Vector256.Create(0x7F80_0000u) | ((em & Vector256.Create(3u)) << 21)
            | (Vector256.GreaterThan(ei, Vector256.Create(0x7C)).AsUInt32() & Vector256.Create(0x0040_0000u));
        Vector256<uint> r = Vector256.ConditionalSelect(Vector256.LessThan(ei, Vector256.Create(4)).AsUInt32(), sub, normal);
        r = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(ei, Vector256.Create(0x7C)).AsUInt32(), special, r);
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<uint> Decode512(Vector512<uint> codes)
    {
        Vector512<uint> sign = (codes & Vector512.Create(0x80u)) << 24;
        Vector512<uint> em = codes & Vector512.Create(0x7Fu);
        Vector512<uint> normal = (em << 21) + Vector512.Create(Rebias);
        Vector512<uint> sub = (Vector512.ConvertToSingle(em.AsInt32()) * Vector512.Create(1f / 65536f)).AsUInt32();
        Vector512<int> ei = em.AsInt32();
        Vector512<uint> special = Vector512.Create(0x7F80_0000u) | ((em & Vector512.Create(3u)) << 21)
            | (Vector512.GreaterThan(ei, Vector512.Create(0x7C)).AsUInt32() & Vector512.Create(0x0040_0000u));
        Vector512<uint> r = Vector512.ConditionalSelect(Vector512.LessThan(ei, Vector512.Create(4)).AsUInt32(), sub, normal);
        r = Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(ei, Vector512.Create(0x7C)).AsUInt32(), special, r);
        return r | sign;
    }
}
