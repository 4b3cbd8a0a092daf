using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>
/// A weight span read as float32 bit patterns, whatever its element type, so that one generic block kernel
/// serves float32 and bf16 weights (bf16 widens exactly: its bits are the top half of the float32).
/// </summary>
internal unsafe interface IF32Source
{
    /// <summary>Elements i .. i+15 as two vectors of eight.</summary>
    static abstract void Load16(void* p, nint i, out Vector256<uint> lo, out Vector256<uint> hi);
    /// <summary>Elements i .. i+31 as two vectors of sixteen.</summary>
    static abstract void Load32(void* p, nint i, out Vector512<uint> lo, out Vector512<uint> hi);
    static abstract uint Load(void* p, nint i);
    /// <summary>Largest magnitude of elements i .. i+n-1 as float32 bits: for non-negative floats integer order is
    /// float order, and NaN/inf sort above every finite value, so one integer max also detects them.</summary>
    static abstract uint MaxMagnitude(void* p, nint i, int n);
}

internal readonly unsafe struct F32Source : IF32Source
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16(void* p, nint i, out Vector256<uint> lo, out Vector256<uint> hi)
    {
        lo = Vector256.Load((uint*)p + i);
        hi = Vector256.Load((uint*)p + i + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load32(void* p, nint i, out Vector512<uint> lo, out Vector512<uint> hi)
    {
        lo = Vector512.Load((uint*)p + i);
        hi = Vector512.Load((uint*)p + i + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Load(void* p, nint i) => ((uint*)p)[i];

    public static uint MaxMagnitude(void* p, nint i0, int n)
    {
        uint* s = (uint*)p + i0;
        int i = 0;
        uint m = 0;
        if (SimdPaths.Use512)
        {
            Vector512<uint> abs = Vector512.Create(0x7FFF_FFFFu), acc = Vector512<uint>.Zero;
            for (; i <= n - 16; i += 16) acc = Vector512.Max(acc, Vector512.Load(s + i) & abs);
            m = Pow2Blocks.MaxLane(acc);
        }
        if (SimdPaths.Use256)
        {
            Vector256<uint> abs = Vector256.Create(0x7FFF_FFFFu), acc = Vector256<uint>.Zero;
            for (; i <= n - 8; i += 8) acc = Vector256.Max(acc, Vector256.Load(s + i) & abs);
            m = Math.Max(m, Pow2Blocks.MaxLane(acc));
        }
        for (; i < n; i++) m = Math.Max(m, s[i] & 0x7FFF_FFFFu);
        return m;
    }
}

internal readonly unsafe struct Bf16Source : IF32Source
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16(void* p, nint i, out Vector256<uint> lo, out Vector256<uint> hi)
        => Fp8Spans.WidenBf16(Vector256.Load((ushort*)p + i), out lo, out hi);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load32(void* p, nint i, out Vector512<uint> lo, out Vector512<uint> hi)
        => Fp8Spans.WidenBf16(Vector512.Load((ushort*)p + i), out lo, out hi);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Load(void* p, nint i) => (uint)((ushort*)p)[i] << 16;

    /// <summary>Taken on the 16-bit patterns: twice the lanes of a float32 max.</summary>
    public static uint MaxMagnitude(void* p, nint i0, int n)
    {
        ushort* s = (ushort*)p + i0;
        int i = 0;
        uint m = 0;
        if (SimdPaths.Use512)
        {
            Vector512<ushort> abs = Vector512.Create((ushort)0x7FFF), acc = Vector512<ushort>.Zero;
            for (; i <= n - 32; i += 32) acc = Vector512.Max(acc, Vector512.Load(s + i) & abs);
            m = Pow2Blocks.MaxLane(acc);
        }
        if (SimdPaths.Use256)
        {
            Vector256<ushort> abs = Vector256.Create((ushort)0x7FFF), acc = Vector256<ushort>.Zero;
            for (; i <= n - 16; i += 16) acc = Vector256.Max(acc, Vector256.Load(s + i) & abs);
            m = Math.Max(m, Pow2Blocks.MaxLane(acc));
        }
        for (; i < n; i++) m = Math.Max(m, (uint)(s[i] & 0x7FFF));
        return m << 16;
    }
}
