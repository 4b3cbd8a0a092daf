using System.Runtime.Intrinsics;
using static Converter.Numerics.Ggml.GgmlScalar;

namespace Converter.Numerics.Ggml;

/// <summary>float32 to and from F16 / BF16 with ggml's rounding.</summary>
internal static unsafe class FloatConvert
{
    public static void ToHalf(float* x, ushort* y, int n)
    {
        for (int i = 0; i < n; i++) y[i] = ToHalfBits(x[i]);
    }

    public static void FromHalf(ushort* x, float* y, int n)
    {
        for (int i = 0; i < n; i++) y[i] = FromHalfBits(x[i]);
    }

    /// <summary>ggml_compute_fp32_to_bf16: round to nearest even; NaN keeps its top bits and is made quiet.</summary>
    public static void ToBf16(float* x, ushort* y, int n)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var absMask = Vector256.Create(0x7fffffffu);
            var inf = Vector256.Create(0x7f800000u);
            var bias = Vector256.Create(0x7fffu);
            var one = Vector256.Create(1u);
            var quiet = Vector256.Create(64u);
            for (; i + 16 <= n; i += 16)
            {
                var a = Vector256.Load((uint*)(x + i));
                var b = Vector256.Load((uint*)(x + i + 8));
                Vector256.Narrow(Round(a), Round(b)).Store(y + i);
            }

            Vector256<uint> Round(Vector256<uint> u)
            {
                var isNan = Vector256.GreaterThan(u & absMask, inf);
                var rounded = Vector256.ShiftRightLogical(u + bias + (Vector256.ShiftRightLogical(u, 16) & one), 16);
                return Vector256.ConditionalSelect(isNan, Vector256.ShiftRightLogical(u, 16) | quiet, rounded);
            }
        }
        for (; i < n; i++) y[i] = ToBf16Bits(x[i]);
    }

    public static void FromBf16(ushort* x, float* y, int n)
    {
        for (int i = 0; i < n; i++) y[i] = FromBf16Bits(x[i]);
    }
}
