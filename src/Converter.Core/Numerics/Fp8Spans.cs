using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>Span loops shared by the FP8 formats: 64 elements per step with Vector512 where the CPU has it,
/// then 32 with Vector256, then scalar tails.</summary>
internal static class Fp8Spans
{
    /// <summary>Four vectors of eight codes -> 32 bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> Pack(Vector256<uint> a, Vector256<uint> b, Vector256<uint> c, Vector256<uint> d)
        => Vector256.Narrow(Vector256.Narrow(a, b), Vector256.Narrow(c, d));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<byte> Pack(Vector512<uint> a, Vector512<uint> b, Vector512<uint> c, Vector512<uint> d)
        => Vector512.Narrow(Vector512.Narrow(a, b), Vector512.Narrow(c, d));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Unpack(Vector512<byte> v, out Vector512<uint> a, out Vector512<uint> b, out Vector512<uint> c, out Vector512<uint> d)
    {
        (Vector512<ushort> lo, Vector512<ushort> hi) = Vector512.Widen(v);
        (a, b) = Vector512.Widen(lo);
        (c, d) = Vector512.Widen(hi);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void WidenBf16(Vector512<ushort> v, out Vector512<uint> lo, out Vector512<uint> hi)
    {
        (lo, hi) = Vector512.Widen(v);
        lo <<= 16;
        hi <<= 16;
    }

    /// <summary>32 bytes -> four vectors of eight zero-extended codes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Unpack(Vector256<byte> v, out Vector256<uint> a, out Vector256<uint> b, out Vector256<uint> c, out Vector256<uint> d)
    {
        (Vector256<ushort> lo, Vector256<ushort> hi) = Vector256.Widen(v);
        (a, b) = Vector256.Widen(lo);
        (c, d) = Vector256.Widen(hi);
    }

    /// <summary>16 bf16 bit patterns -> two vectors of float32 bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void WidenBf16(Vector256<ushort> v, out Vector256<uint> lo, out Vector256<uint> hi)
    {
        (lo, hi) = Vector256.Widen(v);
        lo <<= 16;
        hi <<= 16;
    }

    internal static void Encode<T>(ReadOnlySpan<float> source, Span<byte> destination) where T : struct, IFp8Format
    {
        CheckLengths(source.Length, destination.Length);
        ReadOnlySpan<uint> src = MemoryMarshal.Cast<float, uint>(source);
        int i = 0;
        if (SimdPaths.Use512)
        {
            ref uint s = ref MemoryMarshal.GetReference(src);
            ref byte d = ref MemoryMarshal.GetReference(destination);
            for (; i <= src.Length - 64; i += 64)
            {
                Pack(T.Encode512(Vector512.LoadUnsafe(ref s, (nuint)i)),
                     T.Encode512(Vector512.LoadUnsafe(ref s, (nuint)(i + 16))),
                     T.Encode512(Vector512.LoadUnsafe(ref s, (nuint)(i + 32))),
                     T.Encode512(Vector512.LoadUnsafe(ref s, (nuint)(i + 48)))).StoreUnsafe(ref d, (nuint)i);
            }
        }
        if (SimdPaths.Use256)
        {
            ref uint s = ref MemoryMarshal.GetReference(src);
            ref byte d = ref MemoryMarshal.GetReference(destination);
            for (; i <= src.Length - 32; i += 32)
            {
                Pack(T.Encode256(Vector256.LoadUnsafe(ref s, (nuint)i)),
                     T.Encode256(Vector256.LoadUnsafe(ref s, (nuint)(i + 8))),
                     T.Encode256(Vector256.LoadUnsafe(ref s, (nuint)(i + 16))),
                     T.Encode256(Vector256.LoadUnsafe(ref s, (nuint)(i + 24)))).StoreUnsafe(ref d, (nuint)i);
            }
        }
        for (; i < src.Length; i++)
            destination[i] = (byte)T.EncodeScalar(src[i]);
    }

    internal static void EncodeBf16<T>(ReadOnlySpan<ushort> source, Span<byte> destination) where T : struct, IFp8Format
    {
        CheckLengths(source.Length, destination.Length);
        int i = 0;
        if (SimdPaths.Use512)
        {
            ref ushort s = ref MemoryMarshal.GetReference(source);
            ref byte d = ref MemoryMarshal.GetReference(destination);
            for (; i <= source.Length - 64; i += 64)
            {
                WidenBf16(Vector512.LoadUnsafe(ref s, (nuint)i), out var a, out var b);
                WidenBf16(Vector512.LoadUnsafe(ref s, (nuint)(i + 32)), out var c, out var e);
                Pack(T.Encode512(a), T.Encode512(b), T.Encode512(c), T.Encode512(e)).StoreUnsafe(ref d, (nuint)i);
            }
        }
        if (SimdPaths.Use256)
        {
            ref ushort s = ref MemoryMarshal.GetReference(source);
            ref byte d = ref MemoryMarshal.GetReference(destination);
            for (; i <= source.Length - 32; i += 32)
            {
                WidenBf16(Vector256.LoadUnsafe(ref s, (nuint)i), out var a, out var b);
                WidenBf16(Vector256.LoadUnsafe(ref s, (nuint)(i + 16)), out var c, out var e);
                Pack(T.Encode256(a), T.Encode256(b), T.Encode256(c), T.Encode256(e)).StoreUnsafe(ref d, (nuint)i);
            }
        }
        for (; i < source.Length; i++)
            destination[i] = (byte)T.EncodeScalar((uint)source[i] << 16);
    }

    internal static void Decode<T>(ReadOnlySpan<byte> source, Span<float> destination) where T : struct, IFp8Format
    {
        CheckLengths(source.Length, destination.Length);
        Span<uint> dst = MemoryMarshal.Cast<float, uint>(destination);
        int i = 0;
        if (SimdPaths.Use512)
        {
            ref byte s = ref MemoryMarshal.GetReference(source);
            ref uint d = ref MemoryMarshal.GetReference(dst);
            for (; i <= source.Length - 64; i += 64)
            {
                Unpack(Vector512.LoadUnsafe(ref s, (nuint)i), out var a, out var b, out var c, out var e);
                T.Decode512(a).StoreUnsafe(ref d, (nuint)i);
                T.Decode512(b).StoreUnsafe(ref d, (nuint)(i + 16));
                T.Decode512(c).StoreUnsafe(ref d, (nuint)(i + 32));
                T.Decode512(e).StoreUnsafe(ref d, (nuint)(i + 48));
            }
        }
        if (SimdPaths.Use256)
        {
            ref byte s = ref MemoryMarshal.GetReference(source);
            ref uint d = ref MemoryMarshal.GetReference(dst);
            for (; i <= source.Length - 32; i += 32)
            {
                Unpack(Vector256.LoadUnsafe(ref s, (nuint)i), out var a, out var b, out var c, out var e);
                T.Decode256(a).StoreUnsafe(ref d, (nuint)i);
                T.Decode256(b).StoreUnsafe(ref d, (nuint)(i + 8));
                T.Decode256(c).StoreUnsafe(ref d, (nuint)(i + 16));
                T.Decode256(e).StoreUnsafe(ref d, (nuint)(i + 24));
            }
        }
        for (; i < source.Length; i++)
            dst[i] = T.DecodeScalar(source[i]);
    }

    private static void CheckLengths(int source, int destination)
    {
        if (destination < source)
            throw new ArgumentException("Destination is shorter than source.", nameof(destination));
    }
}
