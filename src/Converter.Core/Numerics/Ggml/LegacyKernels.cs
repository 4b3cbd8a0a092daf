using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using static Converter.Numerics.Ggml.GgmlScalar;
using V = System.Runtime.Intrinsics.Vector256<float>;

namespace Converter.Numerics.Ggml;

/// <summary>Vectorised Q8_0, Q4_0 and Q5_0 block quantizers (32 values per block; element-wise, so trivially exact).</summary>
internal static unsafe class LegacyKernels
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float HorizontalMax(V m)
    {
        var h = Vector128.Max(m.GetLower(), m.GetUpper());
        float r = h.GetElement(0);
        for (int i = 1; i < 4; i++) r = Math.Max(r, h.GetElement(i));
        return r;
    }

    public static void Q8_0(float* x, byte* y)
    {
        V a0 = Vector256.Load(x), a1 = Vector256.Load(x + 8), a2 = Vector256.Load(x + 16), a3 = Vector256.Load(x + 24);
        float amax = HorizontalMax(Vector256.Max(
            Vector256.Max(Vector256.Abs(a0), Vector256.Abs(a1)),
            Vector256.Max(Vector256.Abs(a2), Vector256.Abs(a3))));
        float d = amax / 127;
        float id = d != 0 ? 1.0f / d : 0.0f;
        Unsafe.WriteUnaligned(y, ToHalfBits(d));
        var idV = Vector256.Create(id);
        GgmlVec.NarrowToBytes(
            Vector256.ConvertToInt32(GgmlVec.RoundAwayFromZero(a0 * idV)),
            Vector256.ConvertToInt32(GgmlVec.RoundAwayFromZero(a1 * idV)),
            Vector256.ConvertToInt32(GgmlVec.RoundAwayFromZero(a2 * idV)),
            Vector256.ConvertToInt32(GgmlVec.RoundAwayFromZero(a3 * idV))).Store(y + 2);
    }

    public static void Q4_0(float* x, byte* y)
    {
        V a0 = Vector256.Load(x), a1 = Vector256.Load(x + 8), a2 = Vector256.Load(x + 16), a3 = Vector256.Load(x + 24);
        V b0 = Vector256.Abs(a0), b1 = Vector256.Abs(a1), b2 = Vector256.Abs(a2), b3 = Vector256.Abs(a3);
        float amax = HorizontalMax(Vector256.Max(Vector256.Max(b0, b1), Vector256.Max(b2, b3)));
        // ggml keeps the first value of largest magnitude, with its sign
        var am = Vector256.Create(amax);
        uint hits = Vector256.ExtractMostSignificantBits(Vector256.Equals(b0, am))
                  | Vector256.ExtractMostSignificantBits(Vector256.Equals(b1, am)) << 8
                  | Vector256.ExtractMostSignificantBits(Vector256.Equals(b2, am)) << 16
                  | Vector256.ExtractMostSignificantBits(Vector256.Equals(b3, am)) << 24;
        float max = amax > 0 ? x[System.Numerics.BitOperations.TrailingZeroCount(hits)] : 0;
        float d = max / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        Unsafe.WriteUnaligned(y, ToHalfBits(d));
        var idV = Vector256.Create(id);
        var half = Vector256.Create(8.5f);
        var q = GgmlVec.NarrowToBytes(
            Vector256.Min(Vector256.ConvertToInt32(a0 * idV + half), Vector256.Create(15)),
            Vector256.Min(Vector256.ConvertToInt32(a1 * idV + half), Vector256.Create(15)),
            Vector256.Min(Vector256.ConvertToInt32(a2 * idV + half), Vector256.Create(15)),
            Vector256.Min(Vector256.ConvertToInt32(a3 * idV + half), Vector256.Create(15)));
        (q.GetLower() | Vector128.ShiftLeft(q.GetUpper(), 4)).Store(y + 2);
    }

    /// <summary>Q5_0 as Q4_0 with 32 levels; the fifth bits go to qh through the bytes' sign bits.</summary>
    public static void Q5_0(float* x, byte* y)
    {
        V a0 = Vector256.Load(x), a1 = Vector256.Load(x + 8), a2 = Vector256.Load(x + 16), a3 = Vector256.Load(x + 24);
        V b0 = Vector256.Abs(a0), b1 = Vector256.Abs(a1), b2 = Vector256.Abs(a2), b3 = Vector256.Abs(a3);
        float amax = HorizontalMax(Vector256.Max(Vector256.Max(b0, b1), Vector256.Max(b2, b3)));
        var am = Vector256.Create(amax);
        uint hits = Vector256.ExtractMostSignificantBits(Vector256.Equals(b0, am))
                  | Vector256.ExtractMostSignificantBits(Vector256.Equals(b1, am)) << 8
                  | Vector256.ExtractMostSignificantBits(Vector256.Equals(b2, am)) << 16
                  | Vector256.ExtractMostSignificantBits(Vector256.Equals(b3, am)) << 24;
        float max = amax > 0 ? x[System.Numerics.BitOperations.TrailingZeroCount(hits)] : 0;
        float d = max / -16;
        float id = d != 0 ? 1.0f / d : 0.0f;
        Unsafe.WriteUnaligned(y, ToHalfBits(d));
        var idV = Vector256.Create(id);
        var half = Vector256.Create(16.5f);
        var q = GgmlVec.NarrowToBytes(
            Vector256.Min(Vector256.ConvertToInt32(a0 * idV + half), Vector256.Create(31)),
            Vector256.Min(Vector256.ConvertToInt32(a1 * idV + half), Vector256.Create(31)),
            Vector256.Min(Vector256.ConvertToInt32(a2 * idV + half), Vector256.Create(31)),
            Vector256.Min(Vector256.ConvertToInt32(a3 * idV + half), Vector256.Create(31)));
        Unsafe.WriteUnaligned(y + 2, Vector256.ExtractMostSignificantBits(Vector256.ShiftLeft(q, 3)));
        var low = q & Vector256.Create((byte)0x0F);
        (low.GetLower() | Vector128.ShiftLeft(low.GetUpper(), 4)).Store(y + 6);
    }
}
