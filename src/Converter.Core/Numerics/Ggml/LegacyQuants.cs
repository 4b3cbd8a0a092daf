using System.Buffers.Binary;
using static Converter.Numerics.Ggml.GgmlReferenceQuantizer;

namespace Converter.Numerics.Ggml;

/// <summary>
/// The 32-value types beyond Q4_0/Q8_0: Q4_1, Q5_0, Q5_1 reference quantizers (quantize_row_*_ref) and the
/// importance-weighted rows of Q4_0, Q4_1, Q5_0, Q5_1 (quantize_row_*_impl). Those weight each value by
/// qw * sqrt(sigma2 + x^2) with sigma2 the mean square of the whole row, so they work on rows, not blocks.
/// </summary>
internal static class LegacyQuants
{
    private const int QK = 32;

    public static void Q4_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        MinMax(x, out float min, out float max);
        float d = (max - min) / ((1 << 4) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, d);
        WriteHalf(y.Slice(2), min);
        for (int j = 0; j < QK / 2; j++)
        {
            float x0 = (x[j] - min) * id, x1 = (x[QK / 2 + j] - min) * id;
            int q0 = Math.Min(15, (int)(sbyte)(x0 + 0.5f));
            int q1 = Math.Min(15, (int)(sbyte)(x1 + 0.5f));
            y[4 + j] = (byte)(q0 | (q1 << 4));
        }
    }

    public static void Q5_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0, max = 0;
        for (int j = 0; j < QK; j++)
        {
            if (amax < MathF.Abs(x[j])) { amax = MathF.Abs(x[j]); max = x[j]; }
        }
        float d = max / -16;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, d);
        Span<byte> L = stackalloc byte[QK];
        for (int j = 0; j < QK; j++) L[j] = (byte)Math.Min(31, (int)(sbyte)(x[j] * id + 16.5f));
        Pack5(L, y.Slice(2));
    }

    public static void Q5_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        MinMax(x, out float min, out float max);
        float d = (max - min) / ((1 << 5) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, d);
        WriteHalf(y.Slice(2), min);
        Span<byte> L = stackalloc byte[QK];
        for (int j = 0; j < QK; j++) L[j] = (byte)((x[j] - min) * id + 0.5f);
        Pack5(L, y.Slice(4));
    }

    private static void MinMax(ReadOnlySpan<float> x, out float min, out float max)
    {
        min = float.MaxValue;
        max = -float.MaxValue;
        for (int j = 0; j < QK; j++)
        {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
    }

    /// <summary>qh (the fifth bits, 4 bytes little-endian) then the 16 nibble bytes.</summary>
    private static void Pack5(ReadOnlySpan<byte> L, Span<byte> y)
    {
        uint qh = 0;
        for (int j = 0; j < QK / 2; j++)
        {
            int l0 = L[j], l1 = L[j + QK / 2];
            y[4 + j] = (byte)((l0 & 0x0F) | ((l1 & 0x0F) << 4));
            qh |= (uint)((l0 & 0x10) >> 4) << j;
            qh |= (uint)((l1 & 0x10) >> 4) << (j + QK / 2);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(y, qh);
    }

    /// <summary>One row of Q4_0 / Q4_1 / Q5_0 / Q5_1 with importance weights (one per column).</summary>
    /// <param name="vector">Q4_1/Q5_1: search 8 blocks at a time as lanes of <see cref="QkxSearch8"/>; Q4_0/Q5_0: the
    /// trial scales as lanes of <see cref="QxSearchSteps"/> (same bytes either way)</param>
    public static unsafe void ImportanceRow(GgmlType type, ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, bool vector)
    {
        if (vector && type is GgmlType.Q4_1 or GgmlType.Q5_1)
        {
            ImportanceRowWithMin8(type, x, y, qw);
            return;
        }
        float sumX2 = 0;
        for (int j = 0; j < x.Length; j++) sumX2 += x[j] * x[j];
        float sigma2 = sumX2 / x.Length;
        int bytes = GgmlTypeInfo.BytesPerBlock(type);
        Span<float> weight = stackalloc float[QK];
        Span<sbyte> Ls = stackalloc sbyte[QK];
        Span<byte> Lu = stackalloc byte[QK];
        for (int ib = 0; ib < x.Length / QK; ib++)
        {
            var xb = x.Slice(QK * ib, QK);
            var q = qw.Slice(QK * ib, QK);
            var yb = y.Slice(bytes * ib, bytes);
            for (int j = 0; j < QK; j++) weight[j] = q[j] * MathF.Sqrt(sigma2 + xb[j] * xb[j]);
            switch (type)
            {
                case GgmlType.Q4_0:
                {
                    float d = vector ? QxSearchSteps.MakeQx(8, xb, Ls, weight) : GgmlSearch.MakeQx(8, xb, Ls, weight);
                    WriteHalf(yb, d);
                    for (int j = 0; j < 16; j++) yb[2 + j] = (byte)((byte)Ls[j] | ((byte)Ls[j + 16] << 4));
                    break;
                }
                case GgmlType.Q5_0:
                {
                    float d = vector ? QxSearchSteps.MakeQx(16, xb, Ls, weight) : GgmlSearch.MakeQx(16, xb, Ls, weight);
                    WriteHalf(yb, d);
                    for (int j = 0; j < QK; j++) Lu[j] = (byte)Ls[j];
                    Pack5(Lu, yb.Slice(2));
                    break;
                }
                case GgmlType.Q4_1:
                {
                    float d = GgmlSearch.MakeQkx(15, xb, weight, Lu, out float min, -0.9f, 0.05f, 36, useMad: false);
                    WriteHalf(yb, d);
                    WriteHalf(yb.Slice(2), -min);
                    for (int j = 0; j < 16; j++) yb[4 + j] = (byte)(Lu[j] | (Lu[j + 16] << 4));
                    break;
                }
                case GgmlType.Q5_1:
                {
                    float d = GgmlSearch.MakeQkx(31, xb, weight, Lu, out float min, -0.9f, 0.05f, 36, useMad: false);
                    WriteHalf(yb, d);
                    WriteHalf(yb.Slice(2), -min);
                    Pack5(Lu, yb.Slice(4));
                    break;
                }
                default:
                    throw new NotSupportedException($"no importance quantizer for {type}");
            }
        }
    }

    /// <summary>Q4_1 / Q5_1 rows with importance, the make_qkx3_quants of 8 blocks at a time (scalar for a tail of fewer).</summary>
    private static unsafe void ImportanceRowWithMin8(GgmlType type, ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw)
    {
        float sumX2 = 0;
        for (int j = 0; j < x.Length; j++) sumX2 += x[j] * x[j];
        float sigma2 = sumX2 / x.Length;
        bool q5 = type == GgmlType.Q5_1;
        int nmax = q5 ? 31 : 15, bytes = q5 ? 24 : 20;
        const int G = QkxSearch8.Lanes;
        float* weight = stackalloc float[G * QK];
        byte* L = stackalloc byte[G * QK];
        float* scales = stackalloc float[G];
        float* mins = stackalloc float[G];
        int blocks = x.Length / QK;
        fixed (float* px = x)
        {
            for (int ib0 = 0; ib0 < blocks; ib0 += G)
            {
                int n = Math.Min(G, blocks - ib0);
                for (int g = 0; g < n; g++)
                    for (int j = 0; j < QK; j++)
                    {
                        int i = QK * (ib0 + g) + j;
                        weight[QK * g + j] = qw[i] * MathF.Sqrt(sigma2 + x[i] * x[i]);
                    }
                if (n == G)
                {
                    QkxSearch8.Search(QK, nmax, px + QK * ib0, weight, L, scales, mins, -0.9f, 0.05f, 36, useMad: false);
                }
                else
                {
                    for (int g = 0; g < n; g++)
                        scales[g] = GgmlSearch.MakeQkx(nmax, x.Slice(QK * (ib0 + g), QK), new ReadOnlySpan<float>(weight + QK * g, QK),
                            new Span<byte>(L + QK * g, QK), out mins[g], -0.9f, 0.05f, 36, useMad: false);
                }
                for (int g = 0; g < n; g++)
                {
                    var yb = y.Slice(bytes * (ib0 + g), bytes);
                    var Lb = new ReadOnlySpan<byte>(L + QK * g, QK);
                    WriteHalf(yb, scales[g]);
                    WriteHalf(yb.Slice(2), -mins[g]);
                    if (q5) Pack5(Lb, yb.Slice(4));
                    else for (int j = 0; j < 16; j++) yb[4 + j] = (byte)(Lb[j] | (Lb[j + 16] << 4));
                }
            }
        }
    }
}
