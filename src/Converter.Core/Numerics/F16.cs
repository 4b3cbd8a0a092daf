using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>
/// IEEE binary16 stored as raw <see cref="ushort"/> bits. Scalars go through <see cref="Half"/>; the span
/// versions are branch-free bit arithmetic that gives the same bits as <see cref="Half"/> (round to nearest
/// even, overflow to infinity, NaN kept quiet with its sign and top payload bits).
/// </summary>
public static class F16
{
    public static ushort FromSingle(float value) => BitConverter.HalfToUInt16Bits((Half)value);

    public static float ToSingle(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    // Exponent constants in float32 bit positions.
    private const uint Exp2Pow16 = 143u << 23;      // 65536: first value that is always infinity in half
    private const uint Exp2PowM14 = 113u << 23;     // 2^-14: smallest normal half
    private const uint HalfULPDenorm = 126u << 23;  // 0.5: adding it rounds to a multiple of 2^-24 (the half subnormal step)
    private const uint RebiasDown = (127u - 15u) << 23;

    public static void FromSingle(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length < source.Length)
            throw new ArgumentException("Destination is shorter than source.", nameof(destination));
        ReadOnlySpan<uint> src = MemoryMarshal.Cast<float, uint>(source);
        int i = 0;
        if (SimdPaths.Use256)
        {
            ref uint s = ref MemoryMarshal.GetReference(src);
            ref ushort d = ref MemoryMarshal.GetReference(destination);
            for (; i <= src.Length - 16; i += 16)
            {
                Vector256<uint> lo = Encode256(Vector256.LoadUnsafe(ref s, (nuint)i));
                Vector256<uint> hi = Encode256(Vector256.LoadUnsafe(ref s, (nuint)(i + 8)));
                Vector256.Narrow(lo, hi).StoreUnsafe(ref d, (nuint)i);
            }
        }
        for (; i < src.Length; i++)
            destination[i] = EncodeScalar(src[i]);
    }

    public static void ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length)
            throw new ArgumentException("Destination is shorter than source.", nameof(destination));
        Span<uint> dst = MemoryMarshal.Cast<float, uint>(destination);
        int i = 0;
        if (SimdPaths.Use256)
        {
            ref ushort s = ref MemoryMarshal.GetReference(source);
            ref uint d = ref MemoryMarshal.GetReference(dst);
            for (; i <= source.Length - 16; i += 16)
            {
                (Vector256<uint> lo, Vector256<uint> hi) = Vector256.Widen(Vector256.LoadUnsafe(ref s, (nuint)i));
                Decode256(lo).StoreUnsafe(ref d, (nuint)i);
                Decode256(hi).StoreUnsafe(ref d, (nuint)(i + 8));
            }
        }
        for (; i < source.Length; i++)
            dst[i] = DecodeScalar(source[i]);
    }

    /// <summary>The bit trick of the vector path, one element at a time (for tails and tests).</summary>
    internal static ushort EncodeScalar(uint bits)
    {
        uint sign = (bits >> 16) & 0x8000u;
        uint a = bits & 0x7FFF_FFFFu;
        uint r;
        if (a > 0x7F80_0000u) r = 0x7E00u | ((a >> 13) & 0x3FFu);
        else if (a >= Exp2Pow16) r = 0x7C00u;
        else if (a < Exp2PowM14)
            r = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(a) + BitConverter.UInt32BitsToSingle(HalfULPDenorm)) - HalfULPDenorm;
        else r = (a - RebiasDown + 0xFFFu + ((a >> 13) & 1u)) >> 13; // ties to even; carry may reach infinity
        return (ushort)(r | sign);
    }

    internal static uint DecodeScalar(ushort h)
    {
        uint sign = (uint)(h & 0x8000) << 16;
        uint em = (uint)h & 0x7FFFu;
        uint r;
        if (em >= 0x7C00u) r = 0x7F80_0000u | ((em & 0x3FFu) << 13) | (em > 0x7C00u ? 0x0040_0000u : 0u);
        else if (em < 0x0400u) // subnormal: 2^-14 * (1 + m/1024) - 2^-14 is exact and avoids float subnormals
            r = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(Exp2PowM14 | (em << 13)) - BitConverter.UInt32BitsToSingle(Exp2PowM14));
        else r = (em << 13) + RebiasDown;
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Encode256(Vector256<uint> bits)
    {
        Vector256<uint> sign = (bits >>> 16) & Vector256.Create(0x8000u);
        Vector256<uint> a = bits & Vector256.Create(0x7FFF_FFFFu);
        Vector256<uint> normal = (a - Vector256.Create(RebiasDown) + Vector256.Create(0xFFFu) + ((a >>> 13) & Vector256<uint>.One)) >>> 13;
        Vector256<uint> sub = (a.AsSingle() + Vector256.Create(HalfULPDenorm).AsSingle()).AsUInt32() - Vector256.Create(HalfULPDenorm);
        Vector256<uint> nan = Vector256.Create(0x7E00u) | ((a >>> 13) & Vector256.Create(0x3FFu));
        Vector256<uint> r = Vector256.ConditionalSelect(Vector256.LessThan(a, Vector256.Create(Exp2PowM14)), sub, normal);
        r = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(a, Vector256.Create(Exp2Pow16)), Vector256.Create(0x7C00u), r);
        r = Vector256.ConditionalSelect(Vector256.GreaterThan(a, Vector256.Create(0x7F80_0000u)), nan, r);
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Decode256(Vector256<uint> h)
    {
        Vector256<uint> sign = (h & Vector256.Create(0x8000u)) << 16;
        Vector256<uint> em = h & Vector256.Create(0x7FFFu);
        Vector256<uint> normal = (em << 13) + Vector256.Create(RebiasDown);
        Vector256<uint> sub = ((Vector256.Create(Exp2PowM14) | (em << 13)).AsSingle() - Vector256.Create(Exp2PowM14).AsSingle()).AsUInt32();
        Vector256<uint> special = Vector256.Create(0x7F80_0000u) | ((em & Vector256.Create(0x3FFu)) << 13);
        special |= Vector256.GreaterThan(em, Vector256.Create(0x7C00u)) & Vector256.Create(0x0040_0000u);
        Vector256<uint> r = Vector256.ConditionalSelect(Vector256.LessThan(em, Vector256.Create(0x0400u)), sub, normal);
        r = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(em, Vector256.Create(0x7C00u)), special, r);
        return r | sign;
    }
}
