using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using static Converter.Numerics.Ggml.GgmlScalar;

namespace Converter.Numerics.Ggml;

/// <summary>
/// Fast Q4_K / Q5_K quantizer. ggml's make_qkx2_quants sums sequentially and each search step depends on the
/// previous one (the min it refines), so the vector lanes are sub-blocks instead: each lane runs the scalar
/// algorithm on its own 32 values in the scalar order, branches turned into selects, which keeps every
/// rounding step, and so the bytes, identical. Vector512 takes two super-blocks (16 sub-blocks) at a time.
/// </summary>
internal static unsafe partial class KQuantKernel
{
    private const int QK_K = GgmlTypeInfo.QK_K;
    private const float RDelta = 0.1f;

    /// <summary>Per-lane search results, 16 lanes each.</summary>
    private struct SearchResult
    {
        public fixed float Scale[16];
        public fixed float TheMin[16];
        public fixed float BestIscale[16];
        public fixed float BestMin[16];
        public fixed int Degenerate[16];
    }

    /// <summary>Quantizes <paramref name="count"/> super-blocks: Q5_K when <paramref name="q5"/>, else Q4_K.</summary>
    public static void QuantizeBlocks(float* x, byte* y, int count, bool q5, bool allowVector512 = true)
    {
        int nmax = q5 ? 31 : 15;
        float rmin = q5 ? -0.5f : -1.0f;
        int nstep = q5 ? 15 : 20;
        int bytes = q5 ? 176 : 144;
        SearchResult r;
        int b = 0;
        if (allowVector512 && Vector512.IsHardwareAccelerated)
        {
            for (; b + 2 <= count; b += 2)
            {
                Search512(x + QK_K * b, nmax, rmin, nstep, &r);
                Assemble(x + QK_K * b, y + bytes * b, q5, nmax, &r, 0);
                Assemble(x + QK_K * (b + 1), y + bytes * (b + 1), q5, nmax, &r, 8);
            }
        }
        for (; b < count; b++)
        {
            Search256(x + QK_K * b, nmax, rmin, nstep, &r);
            Assemble(x + QK_K * b, y + bytes * b, q5, nmax, &r, 0);
        }
    }

    /// <summary>The rest of quantize_row_q{4,5}_K_ref for one super-block whose sub-blocks are lanes
    /// <paramref name="lane0"/>..+7 of <paramref name="r"/>: 6-bit scales, fp16 d/dmin, requantization, packing.</summary>
    private static void Assemble(float* x, byte* y, bool q5, int nmax, SearchResult* r, int lane0)
    {
        float* scales = r->Scale + lane0;
        float* mins = r->TheMin + lane0;
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
                float bi = r->BestIscale[lane0 + j], bm = r->BestMin[lane0 + j];
                bool degenerate = r->Degenerate[lane0 + j] != 0;
                for (int i = 0; i < 32; i++)
                    Ls[i] = degenerate ? (byte)0 : (byte)Math.Max(0, Math.Min(nmax, NearestInt(bi * (xs[i] - bm))));
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
}
