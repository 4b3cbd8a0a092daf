using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Calibration;

/// <summary>
/// One routed expert's SwiGLU in float32, for calibration: a = silu(x Wg^T) * (x Wu^T) (down_proj's input) and
/// y = a Wd^T (the expert's output before its routing weight: the combine traffic). Weights in PyTorch layout
/// [out, in]. Rows run in parallel; each output is a vectorised dot product accumulated in float32.
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

    /// <summary>x [rows, hidden] -> act [rows, intermediate] and y [rows, hidden].</summary>
    public void Run(ReadOnlySpan<float> x, int rows, Span<float> act, Span<float> y)
    {
        if (x.Length < rows * Hidden || act.Length < rows * Intermediate || y.Length < rows * Hidden)
            throw new ArgumentException("buffers too small");
        var xa = x[..(rows * Hidden)].ToArray();
        var aa = new float[rows * Intermediate];
        var ya = new float[rows * Hidden];
        int h = Hidden, i = Intermediate;
        Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = MaxThreads > 0 ? MaxThreads : -1 }, r =>
        {
            var xr = xa.AsSpan(r * h, h);
            var ar = aa.AsSpan(r * i, i);
            for (int o = 0; o < i; o++)
            {
                float g = Dot(xr, _gate.AsSpan(o * h, h)), u = Dot(xr, _up.AsSpan(o * h, h));
                ar[o] = g / (1f + MathF.Exp(-g)) * u;
            }
            var yr = ya.AsSpan(r * h, h);
            for (int o = 0; o < h; o++) yr[o] = Dot(ar, _down.AsSpan(o * i, i));
        });
        aa.CopyTo(act);
        ya.CopyTo(y);
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
