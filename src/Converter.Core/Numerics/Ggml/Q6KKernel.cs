using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using static Converter.Numerics.Ggml.GgmlScalar;
using V = System.Runtime.Intrinsics.Vector256<float>;

namespace Converter.Numerics.Ggml;

/// <summary>
/// Fast Q6_K super-block quantizer: ggml's make_qx_quants (rmse_type 1) run on eight 16-value sub-blocks per
/// vector, one sub-block per lane, each lane in the scalar summation order so the bytes stay identical.
/// </summary>
internal static unsafe class Q6KKernel
{
    private const int QK_K = GgmlTypeInfo.QK_K;
    private const int NMax = 32;

    public static void QuantizeBlock(float* x, byte* y)
    {
        float* scales = stackalloc float[16];
        float* bestIscale = stackalloc float[16];
        int* zero = stackalloc int[16];
        V* xt = stackalloc V[16];
        for (int g = 0; g < 2; g++)
        {
            float* t = (float*)xt;
            for (int j = 0; j < 8; j++)
            {
                float* src = x + 16 * (8 * g + j);
                for (int i = 0; i < 16; i++) t[i * 8 + j] = src[i];
            }
            MakeQx(xt, out V s, out V bi, out V z);
            s.Store(scales + 8 * g);
            bi.Store(bestIscale + 8 * g);
            z.AsInt32().Store(zero + 8 * g);
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

    /// <summary>make_qx_quants(16, 32, x, L, 1, NULL) for 8 sub-blocks: returns scale, the winning iscale and
    /// the all-zero mask (L = 0 there).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MakeQx(V* xt, out V scale, out V bestIscale, out V zero)
    {
        V* w = stackalloc V[16];
        V* wx = stackalloc V[16];
        V amax = V.Zero, max = V.Zero;
        for (int i = 0; i < 16; i++)
        {
            V ax = Vector256.Abs(xt[i]);
            V gt = Vector256.GreaterThan(ax, amax);
            amax = Vector256.ConditionalSelect(gt, ax, amax);
            max = Vector256.ConditionalSelect(gt, xt[i], max);
            w[i] = xt[i] * xt[i];
            wx[i] = w[i] * xt[i];
        }
        zero = Vector256.LessThan(amax, Vector256.Create(1e-15f));

        V iscale = Vector256.Create((float)-NMax) / max;
        V sumlx = V.Zero, suml2 = V.Zero;
        for (int i = 0; i < 16; i++)
        {
            V l = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(iscale * xt[i]), -NMax, NMax - 1));
            sumlx += wx[i] * l;
            suml2 += w[i] * l * l;
        }
        scale = Vector256.ConditionalSelect(Vector256.Equals(suml2, V.Zero), V.Zero, sumlx / suml2);
        V best = scale * sumlx;
        bestIscale = iscale;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = Vector256.Create(-(NMax + 0.1f * step)) / max;
            sumlx = V.Zero;
            suml2 = V.Zero;
            for (int i = 0; i < 16; i++)
            {
                V l = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(iscale * xt[i]), -NMax, NMax - 1));
                sumlx += wx[i] * l;
                suml2 += w[i] * l * l;
            }
            V better = Vector256.GreaterThan(suml2, V.Zero) & Vector256.GreaterThan(sumlx * sumlx, best * suml2);
            if (Vector256.ExtractMostSignificantBits(better) == 0) continue;
            V s = sumlx / suml2;
            scale = Vector256.ConditionalSelect(better, s, scale);
            best = Vector256.ConditionalSelect(better, s * sumlx, best);
            bestIscale = Vector256.ConditionalSelect(better, iscale, bestIscale);
        }
        scale = Vector256.ConditionalSelect(zero, V.Zero, scale);
    }
}
