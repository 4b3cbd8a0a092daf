using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using static Converter.Numerics.Ggml.GgmlScalar;
using V = System.Runtime.Intrinsics.Vector256<float>;
using VI = System.Runtime.Intrinsics.Vector256<int>;

namespace Converter.Numerics.Ggml;

/// <summary>
/// Fast Q4_K / Q5_K super-block quantizer. ggml's make_qkx2_quants sums sequentially and each search step
/// depends on the previous one (the min it refines), so the vector lanes are the eight sub-blocks of a
/// super-block instead: each lane runs the scalar algorithm on its own 32 values in the scalar order, with
/// branches turned into selects, which keeps every rounding step, and so the bytes, identical.
/// </summary>
internal static unsafe class KQuantKernel
{
    private const int QK_K = GgmlTypeInfo.QK_K;

    /// <summary>Quantizes one super-block: Q5_K when <paramref name="q5"/>, else Q4_K.</summary>
    public static void QuantizeBlock(float* x, byte* y, bool q5)
    {
        int nmax = q5 ? 31 : 15;
        float rmin = q5 ? -0.5f : -1.0f;
        const float rdelta = 0.1f;
        int nstep = q5 ? 15 : 20;

        V* xt = stackalloc V[32];
        Transpose8x32(x, (float*)xt);

        Search(xt, nmax, rmin, rdelta, nstep, out V scaleV, out V theMinV, out V bestIscaleV, out V bestMinV, out V degenerateV);

        float* scales = stackalloc float[8];
        float* mins = stackalloc float[8];
        float* bestIscale = stackalloc float[8];
        float* bestMin = stackalloc float[8];
        int* degenerate = stackalloc int[8];
        scaleV.Store(scales);
        theMinV.Store(mins);
        bestIscaleV.Store(bestIscale);
        bestMinV.Store(bestMin);
        degenerateV.AsInt32().Store(degenerate);

        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 8; j++)
        {
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        float invScale = maxScale > 0 ? 63.0f / maxScale : 0.0f;
        float invMin = maxMin > 0 ? 63.0f / maxMin : 0.0f;
        byte* ls = stackalloc byte[8];
        byte* lm = stackalloc byte[8];
        for (int j = 0; j < 8; j++)
        {
            ls[j] = Math.Min((byte)63, (byte)NearestInt(invScale * scales[j]));
            lm[j] = Math.Min((byte)63, (byte)NearestInt(invMin * mins[j]));
        }
        ushort dh = ToHalfBits(maxScale / 63.0f), mh = ToHalfBits(maxMin / 63.0f);
        Unsafe.WriteUnaligned(y, dh);
        Unsafe.WriteUnaligned(y + 2, mh);
        var packed = new Span<byte>(y + 4, 12);
        PackScaleMinK4(new ReadOnlySpan<byte>(ls, 8), new ReadOnlySpan<byte>(lm, 8), packed);

        float dAll = FromHalfBits(dh), mAll = FromHalfBits(mh);
        byte* L = stackalloc byte[QK_K];
        for (int j = 0; j < 8; j++)
        {
            GetScaleMinK4(j, packed, out byte sc, out byte m);
            float d = dAll * sc;
            float* xs = x + 32 * j;
            byte* Ls = L + 32 * j;
            if (d == 0)
            {
                // ggml keeps the search's codes for this sub-block; recompute them from the winning step.
                for (int i = 0; i < 32; i++)
                    Ls[i] = degenerate[j] != 0 ? (byte)0
                        : (byte)Math.Max(0, Math.Min(nmax, NearestInt(bestIscale[j] * (xs[i] - bestMin[j]))));
                continue;
            }
            var dmV = Vector256.Create(mAll * m);
            var dV = Vector256.Create(d);
            var l0 = GgmlVec.Clamp(GgmlVec.NearestInt((Vector256.Load(xs) + dmV) / dV), 0, nmax);
            var l1 = GgmlVec.Clamp(GgmlVec.NearestInt((Vector256.Load(xs + 8) + dmV) / dV), 0, nmax);
            var l2 = GgmlVec.Clamp(GgmlVec.NearestInt((Vector256.Load(xs + 16) + dmV) / dV), 0, nmax);
            var l3 = GgmlVec.Clamp(GgmlVec.NearestInt((Vector256.Load(xs + 24) + dmV) / dV), 0, nmax);
            GgmlVec.NarrowToBytes(l0, l1, l2, l3).Store(Ls);
        }

        if (!q5)
        {
            byte* qs = y + 16;
            for (int j = 0; j < QK_K; j += 64, qs += 32)
            {
                var lo = Vector256.Load(L + j);
                var hi = Vector256.Load(L + j + 32);
                (lo | Vector256.ShiftLeft(hi, 4)).Store(qs);
            }
        }
        else
        {
            byte* qh = y + 16;
            byte* ql = y + 48;
            var low = Vector256.Create((byte)0xF);
            var one = Vector256.Create((byte)1);
            var h = Vector256<byte>.Zero;
            for (int n = 0, shift = 0; n < QK_K; n += 64, ql += 32, shift += 2)
            {
                var a = Vector256.Load(L + n);
                var b = Vector256.Load(L + n + 32);
                ((a & low) | Vector256.ShiftLeft(b & low, 4)).Store(ql);
                h |= Vector256.ShiftLeft(Vector256.ShiftRightLogical(a, 4) & one, shift)
                   | Vector256.ShiftLeft(Vector256.ShiftRightLogical(b, 4) & one, shift + 1);
            }
            h.Store(qh);
        }
    }

    /// <summary>xt[i*8 + j] = x[32*j + i]: lane j of vector i is element i of sub-block j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8x32(float* x, float* xt)
    {
        for (int j = 0; j < 8; j++)
        {
            float* src = x + 32 * j;
            for (int i = 0; i < 32; i++) xt[i * 8 + j] = src[i];
        }
    }

    /// <summary>make_qkx2_quants (use_mad false) for 8 sub-blocks at once, with Q4_K's weights av_x + |x|.</summary>
    private static void Search(V* xt, int nmax, float rmin, float rdelta, int nstep,
        out V scale, out V theMin, out V bestIscale, out V bestMin, out V degenerate)
    {
        V* w = stackalloc V[32];
        V* laux = stackalloc V[32];

        var sumX2 = V.Zero;
        for (int i = 0; i < 32; i++) sumX2 += xt[i] * xt[i];
        var avX = Vector256.Sqrt(sumX2 / Vector256.Create(32f));
        for (int i = 0; i < 32; i++) w[i] = avX + Vector256.Abs(xt[i]);

        V min = xt[0], max = xt[0];
        V sumW = w[0];
        V sumX = sumW * xt[0];
        for (int i = 1; i < 32; i++)
        {
            V xi = xt[i];
            min = Vector256.ConditionalSelect(Vector256.LessThan(xi, min), xi, min);
            max = Vector256.ConditionalSelect(Vector256.GreaterThan(xi, max), xi, max);
            sumW += w[i];
            sumX += w[i] * xi;
        }
        min = Vector256.ConditionalSelect(Vector256.GreaterThan(min, V.Zero), V.Zero, min);
        degenerate = Vector256.Equals(max, min);
        V initialMin = min;

        V iscale = Vector256.Create((float)nmax) / (max - min);
        scale = V.One / iscale;
        bestIscale = iscale;
        bestMin = min;
        V bestError = V.Zero;
        for (int i = 0; i < 32; i++)
        {
            V l = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(iscale * (xt[i] - min)), 0, nmax));
            V diff = scale * l + min - xt[i];
            diff *= diff;
            bestError += w[i] * diff;
        }

        for (int step = 0; step <= nstep; step++)
        {
            float num = rmin + rdelta * step + nmax;
            iscale = Vector256.Create(num) / (max - min);
            V sumL = V.Zero, sumL2 = V.Zero, sumXL = V.Zero;
            for (int i = 0; i < 32; i++)
            {
                V l = Vector256.ConvertToSingle(GgmlVec.Clamp(GgmlVec.NearestInt(iscale * (xt[i] - min)), 0, nmax));
                laux[i] = l;
                V wl = w[i] * l;
                sumL += wl;
                sumL2 += wl * l;
                sumXL += wl * xt[i];
            }
            V D = sumW * sumL2 - sumL * sumL;
            V thisScale = (sumW * sumXL - sumX * sumL) / D;
            V thisMin = (sumL2 * sumX - sumL * sumXL) / D;
            V positive = Vector256.GreaterThan(thisMin, V.Zero);
            thisMin = Vector256.ConditionalSelect(positive, V.Zero, thisMin);
            thisScale = Vector256.ConditionalSelect(positive, sumXL / sumL2, thisScale);
            V curError = V.Zero;
            for (int i = 0; i < 32; i++)
            {
                V diff = thisScale * laux[i] + thisMin - xt[i];
                diff *= diff;
                curError += w[i] * diff;
            }
            V better = Vector256.GreaterThan(D, V.Zero) & Vector256.LessThan(curError, bestError);
            if (Vector256.ExtractMostSignificantBits(better) == 0) continue;
            bestError = Vector256.ConditionalSelect(better, curError, bestError);
            scale = Vector256.ConditionalSelect(better, thisScale, scale);
            bestIscale = Vector256.ConditionalSelect(better, iscale, bestIscale);
            bestMin = Vector256.ConditionalSelect(better, min, bestMin);
            min = Vector256.ConditionalSelect(better, thisMin, min);
        }

        scale = Vector256.ConditionalSelect(degenerate, V.Zero, scale);
        theMin = -Vector256.ConditionalSelect(degenerate, initialMin, min);
    }
}
