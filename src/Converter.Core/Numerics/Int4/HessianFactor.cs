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
    private const int Tile = 32;

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
            // Columns before the tile: every row of the tile against each finished row j (streamed once per tile).
            Parallel.For(i0, i1, opts, i =>
            {
                var ri = a.AsSpan((int)((long)i * k), k);
                for (int j = 0; j < i0; j++)
                {
                    var rj = a.AsSpan((int)((long)j * k), j);
                    ri[j] = (ri[j] - Dot(ri[..j], rj)) / a[(long)j * k + j];
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

    /// <summary>M = L^-1 for lower-triangular L (row-major, upper part ignored): rows of M in tiles, row i = (e_i - sum_j L[i,j] M[j,:]) / L[i,i].</summary>
    public static double[] InvertLower(double[] l, int k, int maxThreads = -1)
    {
        // Column blocks of M are independent: M[:, c0..c1] solves L X = I[:, c0..c1]; X rows below c0 only.
        var m = new double[(long)k * k];
        const int cb = 64;
        int blocks = (k + cb - 1) / cb;
        Parallel.For(0, blocks, new ParallelOptions { MaxDegreeOfParallelism = maxThreads }, b =>
        {
            int c0 = b * cb, c1 = Math.Min(k, c0 + cb), w = c1 - c0;
            var x = new double[(long)(k - c0) * w]; // rows c0..k of the block, row-major width w
            for (int i = c0; i < k; i++)
            {
                var xi = x.AsSpan((i - c0) * w, w);
                if (i < c1) xi[i - c0] = 1;
                var li = l.AsSpan((int)((long)i * k), i);
                for (int j = c0; j < i; j++)
                {
                    double f = li[j];
                    if (f != 0) Axpy(-f, x.AsSpan((j - c0) * w, w), xi);
                }
                double inv = 1 / l[(long)i * k + i];
                for (int t = 0; t < w; t++) xi[t] *= inv;
            }
            for (int i = c0; i < k; i++)
                x.AsSpan((i - c0) * w, w).CopyTo(m.AsSpan((int)((long)i * k + c0), w));
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

    internal static void Axpy(double alpha, ReadOnlySpan<double> x, Span<double> y)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref double px = ref MemoryMarshal.GetReference(x);
            ref double py = ref MemoryMarshal.GetReference(y);
            var va = Vector256.Create(alpha);
            for (; i <= x.Length - 4; i += 4)
                (Vector256.LoadUnsafe(ref py, (nuint)i) + va * Vector256.LoadUnsafe(ref px, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
        }
        for (; i < x.Length; i++) y[i] += alpha * x[i];
    }
}
