using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>
/// bfloat16 stored as its raw <see cref="ushort"/> bits: float32 with the low 16 mantissa bits dropped.
/// float32 -> bf16 rounds to nearest, ties to even (what torch and Triton do); NaN stays a quiet NaN with
/// its sign and top payload bits.
/// </summary>
public static class Bf16
{
    /// <summary>float32 -> bf16 bits, round to nearest even.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromSingle(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u)
            return (ushort)((bits >> 16) | 0x0040u); // quiet NaN; truncation alone could turn a NaN into inf
        // Adding 0x7FFF plus the lowest kept bit rounds ties to even; a carry into the exponent is correct
        // (it rounds up to the next binade or to infinity).
        return (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    }

    /// <summary>bf16 bits -> float32 (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Converts every float of <paramref name="source"/> to bf16 bits in <paramref name="destination"/>.</summary>
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
                Vector256<uint> lo = Round256(Vector256.LoadUnsafe(ref s, (nuint)i));
                Vector256<uint> hi = Round256(Vector256.LoadUnsafe(ref s, (nuint)(i + 8)));
                Vector256.Narrow(lo, hi).StoreUnsafe(ref d, (nuint)i);
            }
        }
        else if (SimdPaths.Use128)
        {
            ref uint s = ref MemoryMarshal.GetReference(src);
            ref ushort d = ref MemoryMarshal.GetReference(destination);
            for (; i <= src.Length - 8; i += 8)
            {
                Vector128<uint> lo = Round128(Vector128.LoadUnsafe(ref s, (nuint)i));
                Vector128<uint> hi = Round128(Vector128.LoadUnsafe(ref s, (nuint)(i + 4)));
                Vector128.Narrow(lo, hi).StoreUnsafe(ref d, (nuint)i);
            }
        }
        for (; i < src.Length; i++)
            destination[i] = FromSingle(source[i]);
    }

    /// <summary>Converts bf16 bits to float32 (exact).</summary>
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
                (lo << 16).StoreUnsafe(ref d, (nuint)i);
                (hi << 16).StoreUnsafe(ref d, (nuint)(i + 8));
            }
        }
        else if (SimdPaths.Use128)
        {
            ref ushort s = ref MemoryMarshal.GetReference(source);
            ref uint d = ref MemoryMarshal.GetReference(dst);
            for (; i <= source.Length - 8; i += 8)
            {
                (Vector128<uint> lo, Vector128<uint> hi) = Vector128.Widen(Vector128.LoadUnsafe(ref s, (nuint)i));
                (lo << 16).StoreUnsafe(ref d, (nuint)i);
                (hi << 16).StoreUnsafe(ref d, (nuint)(i + 4));
            }
        }
        for (; i < source.Length; i++)
            dst[i] = (uint)source[i] << 16;
    }

    /// <summary>Rounds float32 bit patterns to bf16, leaving the result in the low 16 bits of each lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<uint> Round256(Vector256<uint> bits)
    {
        Vector256<uint> rounded = bits + Vector256.Create(0x7FFFu) + ((bits >>> 16) & Vector256<uint>.One);
        Vector256<uint> isNaN = Vector256.GreaterThan(bits & Vector256.Create(0x7FFF_FFFFu), Vector256.Create(0x7F80_0000u));
        Vector256<uint> quiet = bits | Vector256.Create(0x0040_0000u);
        return Vector256.ConditionalSelect(isNaN, quiet, rounded) >>> 16;
    }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<uint> Round512(Vector512<uint> bits)
    {
        Vector512<uint> rounded = bits + Vector512.Create(0x7FFFu) + ((bits >>> 16) & Vector512<uint>.One);
        Vector512<uint> isNaN = Vector512.GreaterThan(bits & Vector512.Create(0x7FFF_FFFFu), Vector512.Create(0x7F80_0000u));
        Vector512<uint> quiet = bits | Vector512.Create(0x0040_0000u);
        return Vector512.ConditionalSelect(isNaN, quiet, rounded) >>> 16;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<uint> Round128(Vector128<uint> bits)
    {
        Vector128<uint> rounded = bits + Vector128.Create(0x7FFFu) + ((bits >>> 16) & Vector128<uint>.One);
        Vector128<uint> isNaN = Vector128.GreaterThan(bits & Vector128.Create(0x7FFF_FFFFu), Vector128.Create(0x7F80_0000u));
        Vector128<uint> quiet = bits | Vector128.Create(0x0040_0000u);
        return Vector128.ConditionalSelect(isNaN, quiet, rounded) >>> 16;
    }

    /// <summary>
    /// Reference float32 -> bf16 by explicit arithmetic on sign, exponent and mantissa (no carry tricks);
    /// tests hold the fast paths against it.
    /// </summary>
    internal static ushort FromSingleReference(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        uint sign = bits & 0x8000_0000u;
        uint exp = (bits >> 23) & 0xFF;
        uint mant = bits & 0x7F_FFFF;
        if (exp == 0xFF)
            return (ushort)((sign | 0x7F80_0000u | (mant == 0 ? 0u : (mant | 0x40_0000u))) >> 16);
        uint keep = mant >> 16, rest = mant & 0xFFFF;
        bool up = rest > 0x8000 || (rest == 0x8000 && (keep & 1) == 1);
        if (up)
        {
            keep++;
            if (keep == 0x80) { keep = 0; exp++; } // mantissa overflow moves to the next binade (or inf)
        }
        return (ushort)((sign >> 16) | (exp << 7) | keep);
    }
}
