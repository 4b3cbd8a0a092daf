using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics.Ggml;

/// <summary>Vector256 forms of <see cref="GgmlScalar"/> primitives; lane results equal the scalar ones bit for bit.</summary>
internal static class GgmlVec
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> NearestInt(Vector256<float> f) =>
        (Vector256.AsInt32(f + Vector256.Create(12582912f)) & Vector256.Create(0x007fffff)) - Vector256.Create(0x00400000);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Clamp(Vector256<int> v, int lo, int hi) =>
        Vector256.Max(Vector256.Create(lo), Vector256.Min(Vector256.Create(hi), v));

    /// <summary>32 ints (four vectors, values 0..255) to 32 bytes in order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> NarrowToBytes(Vector256<int> a, Vector256<int> b, Vector256<int> c, Vector256<int> d) =>
        Vector256.Narrow(Vector256.Narrow(a.AsUInt32(), b.AsUInt32()), Vector256.Narrow(c.AsUInt32(), d.AsUInt32()));

    /// <summary>roundf (half away from zero), exact for |v| &lt; 2^23.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> RoundAwayFromZero(Vector256<float> v)
    {
        var t = Vector256.Truncate(v);
        var frac = v - t; // exact below 2^23
        var bump = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(Vector256.Abs(frac), Vector256.Create(0.5f)),
            Vector256.CopySign(Vector256<float>.One, v), Vector256<float>.Zero);
        return t + bump;
    }
}

/// <summary>Vector512 forms of the <see cref="GgmlVec"/> primitives.</summary>
internal static class GgmlVec512
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> NearestInt(Vector512<float> f) =>
        (Vector512.AsInt32(f + Vector512.Create(12582912f)) & Vector512.Create(0x007fffff)) - Vector512.Create(0x00400000);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> Clamp(Vector512<int> v, int lo, int hi) =>
        Vector512.Max(Vector512.Create(lo), Vector512.Min(Vector512.Create(hi), v));
}
