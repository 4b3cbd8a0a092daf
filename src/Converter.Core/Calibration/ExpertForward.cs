using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Calibration;

/// <summary>
/// One routed expert's SwiGLU in float32, for calibration: a = silu(x Wg^T) * (x Wu^T) (down_proj's input) and
/// y = a Wd^T (the expert's output before its routing weight: the combine traffic). Weights in PyTorch layout
/// [out, in]. Blocks of rows run in parallel; each output is a vectorised dot product accumulated in float32.
/// </summary>
public sealed class ExpertForward
{
    public int Hidden { get; }
    public int Intermediate { get; }
    /// <summary>Rows computed in parallel by at most this many threads (0: all cores).</summary>
    public int MaxThreads { get; init; }
    private readonly float[] _gate, _up, _down;

    public ExpertForward(float[] gate, float[] up, float[] down, int hidden, int intermediate)
    {
        long gu = (long)hidden * intermediate;
        if (gate.Length != gu || up.Length != gu || down.Length != gu)
            throw new ArgumentException($"expert weights have {gate.Length}/{up.Length}/{down.Length} elements, expected {gu} each");
        (_gate, _up, _down, Hidden, Intermediate) = (gate, up, down, hidden, intermediate);
    }

    /// <summary>Rows sharing one pass over the weights: 16 rows of x (448 KB at hidden 7168) stay in L2 while every
    /// weight row is read once for all of them, instead of once per row (a whole expert, 176 MB, per token).</summary>
    private const int RowBlock = 16;

    /// <summary>x [rows, hidden] -> act [rows, intermediate] and y [rows, hidden]. Every output is <see cref="Dot"/> of
    /// its input row and weight row, bit for bit; rows are computed four at a time against each weight row.</summary>
    public void Run(ReadOnlySpan<float> x, int rows, Span<float> act, Span<float> y)
    {
        if (x.Length < rows * Hidden || act.Length < rows * Intermediate || y.Length < rows * Hidden)
            throw new ArgumentException("buffers too small");
        var xa = x[..(rows * Hidden)].ToArray();
        var aa = new float[rows * Intermediate];
        var ya = new float[rows * Hidden];
        int h = Hidden, i = Intermediate;
        Parallel.For(0, (rows + RowBlock - 1) / RowBlock, new ParallelOptions { MaxDegreeOfParallelism = MaxThreads > 0 ? MaxThreads : -1 }, blk =>
        {
            int r0 = blk * RowBlock, n = Math.Min(RowBlock, rows - r0);
            Span<float> g = stackalloc float[4], u = stackalloc float[4];
            for (int o = 0; o < i; o++)
            {
                var wg = _gate.AsSpan(o * h, h);
                var wu = _up.AsSpan(o * h, h);
                int r = 0;
                for (; r + 4 <= n; r += 4)
                {
                    Dot4(xa.AsSpan((r0 + r) * h, 4 * h), wg, g);
                    Dot4(xa.AsSpan((r0 + r) * h, 4 * h), wu, u);
                    for (int q = 0; q < 4; q++) aa[(r0 + r + q) * i + o] = g[q] / (1f + MathF.Exp(-g[q])) * u[q];
                }
                for (; r < n; r++)
                {
                    var xr = xa.AsSpan((r0 + r) * h, h);
                    float gs = Dot(xr, wg), us = Dot(xr, wu);
                    aa[(r0 + r) * i + o] = gs / (1f + MathF.Exp(-gs)) * us;
                }
            }
            for (int o = 0; o < h; o++)
            {
                var wd = _down.AsSpan(o * i, i);
                int r = 0;
                for (; r + 4 <= n; r += 4)
                {
                    Dot4(aa.AsSpan((r0 + r) * i, 4 * i), wd, g);
                    for (int q = 0; q < 4; q++) ya[(r0 + r + q) * h + o] = g[q];
                }
                for (; r < n; r++) ya[(r0 + r) * h + o] = Dot(aa.AsSpan((r0 + r) * i, i), wd);
            }
        });
        aa.CopyTo(act);
        ya.CopyTo(y);
    }

    /// <summary>dst[q] = <see cref="Dot"/>(rows[q], w) for the 4 consecutive rows of length w.Length, each with the same
    /// operations in the same order as Dot (so the same bits), sharing every load of w.</summary>
    private static void Dot4(ReadOnlySpan<float> rows, ReadOnlySpan<float> w, Span<float> dst)
    {
        int n = w.Length;
        if (!Vector256.IsHardwareAccelerated || n < 8)
        {
            for (int q = 0; q < 4; q++) dst[q] = Dot(rows.Slice(q * n, n), w);
            return;
        }
        ref float pw = ref MemoryMarshal.GetReference(w);
        ref float p0 = ref MemoryMarshal.GetReference(rows);
        ref float p1 = ref Unsafe.Add(ref p0, n);
        ref float p2 = ref Unsafe.Add(ref p1, n);
        ref float p3 = ref Unsafe.Add(ref p2, n);
        Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0;
        int j = 0;
        for (; j <= n - 8; j += 8)
        {
            var wv = Vector256.LoadUnsafe(ref pw, (nuint)j);
            a0 += Vector256.LoadUnsafe(ref p0, (nuint)j) * wv;
            a1 += Vector256.LoadUnsafe(ref p1, (nuint)j) * wv;
            a2 += Vector256.LoadUnsafe(ref p2, (nuint)j) * wv;
            a3 += Vector256.LoadUnsafe(ref p3, (nuint)j) * wv;
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; j < n; j++)
        {
            float wj = w[j];
            s0 += rows[j] * wj;
            s1 += rows[n + j] * wj;
            s2 += rows[2 * n + j] * wj;
            s3 += rows[3 * n + j] * wj;
        }
        (dst[0], dst[1], dst[2], dst[3]) = (s0, s1, s2, s3);
    }

    public static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int n = a.Length, j = 0;
        float s = 0;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var acc = Vector256<float>.Zero;
            ref float pa = ref MemoryMarshal.GetReference(a);
            ref float pb = ref MemoryMarshal.GetReference(b);
            for (; j <= n - 8; j += 8) acc += Vector256.LoadUnsafe(ref pa, (nuint)j) * Vector256.LoadUnsafe(ref pb, (nuint)j);
            s = Vector256.Sum(acc);
        }
        for (; j < n; j++) s += a[j] * b[j];
        return s;
    }

    /// <summary>Scalar reference of <see cref="Run"/> in float64 (tests).</summary>
    public void RunReference(ReadOnlySpan<float> x, int rows, Span<float> act, Span<float> y)
    {
        int h = Hidden, i = Intermediate;
        var a = new double[i];
        for (int r = 0; r < rows; r++)
        {
            for (int o = 0; o < i; o++)
            {
                double g = 0, u = 0;
                for (int c = 0; c < h; c++) { g += (double)x[r * h + c] * _gate[o * h + c]; u += (double)x[r * h + c] * _up[o * h + c]; }
                a[o] = g / (1 + Math.Exp(-g)) * u;
                act[r * i + o] = (float)a[o];
            }
            for (int o = 0; o < h; o++)
            {
                double s = 0;
                for (int c = 0; c < i; c++) s += a[c] * _down[o * i + c];
                y[r * h + o] = (float)s;
            }
        }
    }
}
