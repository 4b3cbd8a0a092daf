using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using static Converter.Numerics.Ggml.GgmlScalar;
using V = System.Runtime.Intrinsics.Vector256<float>;

namespace Converter.Numerics.Ggml;

/// <summary>
/// Fast Q6_K super-block quantizer: ggml's make_qx_quants (rmse_type 1) run on 16-value sub-blocks, eight (Vector256)
/// or sixteen (Vector512) at a time, one per lane, each lane in the scalar summation order so the bytes stay identical.
/// </summary>
internal static unsafe partial class Q6KKernel
{
    private const int QK_K = GgmlTypeInfo.QK_K;
    private const int NMax = 32;

    public static void QuantizeBlock(float* x, byte* y, bool allowVector512 = true)
    {
        float* scales = stackalloc float[16];
        float* bestIscale = stackalloc float[16];
        int* zero = stackalloc int[16];
        if (allowVector512 && Vector512.IsHardwareAccelerated)
        {
            MakeQx512(x, scales, bestIscale, zero);
        }
        else
        {
            MakeQx256(x, scales, bestIscale, zero);
            MakeQx256(x + 128, scales + 8, bestIscale + 8, zero + 8);
        }

        float maxScale = 0, maxAbsScale = 0;
        for (int ib = 0; ib < 16; ib++)
        {
            float abs = MathF.Abs(scales[ib]);
            if (abs > maxAbsScale) { maxAbsScale = abs; maxScale = scales[ib]; }
        }
        if (maxAbsScale < 1e-15f)
        {
            new Span<byte>(y, 210).Clear();
            return;
        }
        float iscale = -128.0f / maxScale;
        ushort dh = ToHalfBits(1 / iscale);
        Unsafe.WriteUnaligned(y + 208, dh);
        sbyte* sc = (sbyte*)(y + 192);
        for (int ib = 0; ib < 16; ib++) sc[ib] = (sbyte)Math.Min(127, NearestInt(iscale * scales[ib]));

        float dAll = FromHalfBits(dh);
        byte* L = stackalloc byte[QK_K];
        for (int j = 0; j < 16; j++)
        {
            float d = dAll * sc[j];
            float* xs = x + 16 * j;
            byte* Ls = L + 16 * j;
            if (d == 0)
            {
                // ggml keeps the search's codes for this sub-block; recompute them from the winning scale.
                for (int i = 0; i < 16; i++)
                    Ls[i] = zero[j] != 0 ? (byte)0
                        : (byte)(NMax + Math.Max(-NMax, Math.Min(NMax - 1, NearestInt(bestIscale[j] * xs[i]))));
                continue;
            }
            var dV = Vector256.Create(d);
            var l0 = GgmlVec.Clamp(GgmlVec.NearestInt(Vector256.Load(xs) / dV), -32, 31) + Vector256.Create(32);
            var l1 = GgmlVec.Clamp(GgmlVec.NearestInt(Vector256.Load(xs + 8) / dV), -32, 31) + Vector256.Create(32);
            Vector256.Narrow(Vector256.Narrow(l0.AsUInt32(), l1.AsUInt32()), Vector256<ushort>.Zero).GetLower().Store(Ls);
        }

        byte* ql = y;
        byte* qh = y + 128;
        var low = Vector256.Create((byte)0xF);
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32)
        {
            var a = Vector256.Load(L + j);
            var b = Vector256.Load(L + j + 32);
            var c = Vector256.Load(L + j + 64);
            var d = Vector256.Load(L + j + 96);
            ((a & low) | Vector256.ShiftLeft(c & low, 4)).Store(ql);
            ((b & low) | Vector256.ShiftLeft(d & low, 4)).Store(ql + 32);
            (Vector256.ShiftRightLogical(a, 4)
             | Vector256.ShiftLeft(Vector256.ShiftRightLogical(b, 4), 2)
             | Vector256.ShiftLeft(Vector256.ShiftRightLogical(c, 4), 4)
             | Vector256.ShiftLeft(Vector256.ShiftRightLogical(d, 4), 6)).Store(qh);
        }
    }
}
