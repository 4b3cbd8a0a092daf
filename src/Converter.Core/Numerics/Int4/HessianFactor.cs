using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics.Int4;

/// <summary>
/// What GPTQ needs from a Hessian H = X^T X: the upper Cholesky factor U of H^-1 (U^T U = H^-1), after dead
/// columns (zero diagonal) are set to 1 and H is dampened by percdamp * mean(diag). Computed without forming
/// H^-1: with J the reversal, J H J = L L^T (lower Cholesky) gives U = J L^-1 J. Double precision throughout,
/// row tiles so each earlier row is streamed once per tile, rows of a tile in parallel.
/// </summary>
public static class HessianFactor
{
    private const int Tile = 64;

    /// <summary>Returns U (row-major [k, k], upper) as float32 and the dead-column mask.</summary>
    public static float[] InverseCholeskyUpper(ReadOnlySpan<double> hessian, int k, double percDamp, out bool[] dead, int maxThreads = -1)
    {
        if (hessian.Length != (long)k * k) throw new ArgumentException($"Hessian has {hessian.Length} values, expected {k}x{k}");
        dead = new bool[k];
        double mean = 0;
        for (int i = 0; i < k; i++)
        {
            double d = hessian[i * k + i];
            if (!double.IsFinite(d) || d < 0) throw new InvalidDataException($"Hessian diagonal {i} is {d}");
            if (d == 0) dead[i] = true;
            mean += d == 0 ? 1 : d;
        }
        double damp = percDamp * mean / k;
        // a = J H J, lower half only is read.
        var a = new double[(long)k * k];
        for (int i = 0; i < k; i++)
            for (int j = 0; j <= i; j++)
            {
                int hi = k - 1 - i, hj = k - 1 - j;
                a[(long)i * k + j] = hessian[hi * k + hj];
            }
        for (int i = 0; i < k; i++)
        {
            if (dead[k - 1 - i]) a[(long)i * k + i] = 1;
            a[(long)i * k + i] += damp;
        }
        CholeskyLowerInPlace(a, k, maxThreads);
        var m = InvertLower(a, k, maxThreads);
        var u = new float[(long)k * k];
        Parallel.For(0, k, new ParallelOptions { MaxDegreeOfParallelism = maxThreads }, i =>
        {
            for (int j = i; j < k; j++) u[(long)i * k + j] = (float)m[(long)(k - 1 - i) * k + (k - 1 - j)];
        });
        return u;
    }

    /// <summary>Lower Cholesky factor in place (the strict upper part is left as is and never read).</summary>
    public static void CholeskyLowerInPlace(double[] a, int k, int maxThreads = -1)
    {
        var opts = new ParallelOptions { MaxDegreeOfParallelism = maxThreads };
        for (int i0 = 0; i0 < k; i0 += Tile)
        {
            int i1 = Math.Min(k, i0 + Tile);
            // Columns before the tile: each finished row j is streamed once per half tile and dotted with every
            // row of that half (j outer keeps row j in cache; the rows' own prefixes are complete up to j).
            int half = (i1 - i0 + 1) / 2;
            Parallel.For(0, 2, opts, part =>
            {
                int r0 = i0 + part * half, r1 = Math.Min(i1, r0 + half);
                for (int j = 0; j < i0; j++)
                {
                    var rj = a.AsSpan((int)((long)j * k), j);
                    double d = a[(long)j * k + j];
                    for (int i = r0; i < r1; i++)
                    {
                        var ri = a.AsSpan((int)((long)i * k), j + 1);
                        ri[j] = (ri[j] - Dot(ri[..j], rj)) / d;
                    }
                }
            });
            // Inside the tile: sequential over columns.
            for (int j = i0; j < i1; j++)
            {
                var rj = a.AsSpan((int)((long)j * k), k);
                double d = rj[j] - Dot(rj[..j], rj[..j]);
                if (!(d > 0)) throw new InvalidDataException($"Hessian is not positive definite at column {j} (pivot {d}); increase dampening");
                rj[j] = Math.Sqrt(d);
                for (int i = j + 1; i < i1; i++)
                {
                    var ri = a.AsSpan((int)((long)i * k), k);
                    ri[j] = (ri[j] - Dot(ri[..j], rj[..j])) / rj[j];
                }
            }
        }
    }

    /// <summary>
    /// M = L^-1 for lower-triangular L (row-major, upper part ignored). Column blocks of M are independent
    /// (M[:, c0..c0+32] solves L X = I[:, c0..c0+32], rows below c0 only); within a block row i is
    /// (e_i - sum_j L[i,j] X[j,:]) / L[i,i], its 32 values held in eight 4-wide accumulators.
    /// </summary>
    public static double[] InvertLower(double[] l, int k, int maxThreads = -1)
    {
        var m = new double[(long)k * k];
        const int cb = 32;
        int blocks = (k + cb - 1) / cb;
        Parallel.For(0, blocks, new ParallelOptions { MaxDegreeOfParallelism = maxThreads }, b =>
        {
            int c0 = b * cb, w = Math.Min(cb, k - c0);
            var x = new double[(long)(k - c0) * cb]; // rows c0..k of the block, row-major, width cb (zero padded)
            var tmp = new double[cb];
            for (int i = c0; i < k; i++)
            {
                var li = l.AsSpan((int)((long)i * k), i);
                var xi = x.AsSpan((i - c0) * cb, cb);
                if (Vector256.IsHardwareAccelerated)
                {
                    Vector256<double> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
                    ref double px = ref x[0];
                    for (int j = c0; j < i; j++)
                    {
                        var f = Vector256.Create(li[j]);
                        nuint o = (nuint)((j - c0) * cb);
                        a0 += f * Vector256.LoadUnsafe(ref px, o);
                        a1 += f * Vector256.LoadUnsafe(ref px, o + 4);
                        a2 += f * Vector256.LoadUnsafe(ref px, o + 8);
                        a3 += f * Vector256.LoadUnsafe(ref px, o + 12);
                        a4 += f * Vector256.LoadUnsafe(ref px, o + 16);
                        a5 += f * Vector256.LoadUnsafe(ref px, o + 20);
                        a6 += f * Vector256.LoadUnsafe(ref px, o + 24);
                        a7 += f * Vector256.LoadUnsafe(ref px, o + 28);
                    }
                    ref double pt = ref tmp[0];
                    a0.StoreUnsafe(ref pt, 0); a1.StoreUnsafe(ref pt, 4); a2.StoreUnsafe(ref pt, 8); a3.StoreUnsafe(ref pt, 12);
                    a4.StoreUnsafe(ref pt, 16); a5.StoreUnsafe(ref pt, 20); a6.StoreUnsafe(ref pt, 24); a7.StoreUnsafe(ref pt, 28);
                }
                else
                {
                    Array.Clear(tmp);
                    for (int j = c0; j < i; j++) VectorKernels.Axpy(li[j], x.AsSpan((j - c0) * cb, cb), tmp);
                }
                double inv = 1 / l[(long)i * k + i];
                for (int t = 0; t < w; t++) xi[t] = ((i - c0 == t ? 1.0 : 0.0) - tmp[t]) * inv;
            }
            for (int i = c0; i < k; i++)
                x.AsSpan((i - c0) * cb, w).CopyTo(m.AsSpan((int)((long)i * k + c0), w));
        });
        return m;
    }

    internal static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
    {
        int i = 0;
        double sum = 0;
        if (Vector256.IsHardwareAccelerated && a.Length >= 8)
        {
            ref double pa = ref MemoryMarshal.GetReference(a);
            ref double pb = ref MemoryMarshal.GetReference(b);
            var s0 = Vector256<double>.Zero;
            var s1 = Vector256<double>.Zero;
            for (; i <= a.Length - 8; i += 8)
            {
                s0 += Vector256.LoadUnsafe(ref pa, (nuint)i) * Vector256.LoadUnsafe(ref pb, (nuint)i);
                s1 += Vector256.LoadUnsafe(ref pa, (nuint)(i + 4)) * Vector256.LoadUnsafe(ref pb, (nuint)(i + 4));
            }
            sum = Vector256.Sum(s0 + s1);
        }
        for (; i < a.Length; i++) sum += a[i] * b[i];
        return sum;
    }
}
