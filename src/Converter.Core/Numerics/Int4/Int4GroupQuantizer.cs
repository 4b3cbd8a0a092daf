using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics.Int4;

/// <summary>
/// Round-to-nearest INT4 group quantization with a per-group MSE clipping search (see <see cref="Int4Scheme"/>
/// for the conventions). Rows are independent and run in parallel; each group's candidates are evaluated with
/// 256-bit vectors. <see cref="QuantizeGroupScalar"/> is the scalar reference the vector path must match bit for bit.
/// </summary>
public static class Int4GroupQuantizer
{
    /// <summary>Quantizes a row-major [rows, cols] float32 weight.</summary>
    public static Int4Weight Quantize(ReadOnlySpan<float> weight, int rows, int cols, Int4Scheme scheme, Int4ClipSearch clip,
        int maxThreads = -1, string tensor = "weight")
    {
        scheme.CheckShape(rows, cols, tensor);
        if (weight.Length < (long)rows * cols) throw new ArgumentException("weight is shorter than rows * cols", nameof(weight));
        var result = Int4Weight.Allocate(rows, cols, scheme);
        unsafe
        {
            fixed (float* p = weight)
            {
                var w = (nint)p;
                Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = maxThreads }, r =>
                {
                    var row = new ReadOnlySpan<float>((float*)w + (long)r * cols, cols);
                    QuantizeRow(row, scheme, clip, result, r);
                });
            }
        }
        return result;
    }

    private static void QuantizeRow(ReadOnlySpan<float> row, Int4Scheme scheme, Int4ClipSearch clip, Int4Weight into, int r)
    {
        int g = scheme.GroupSize, groups = row.Length / g;
        var q = into.Q.AsSpan(r * row.Length, row.Length);
        for (int k = 0; k < groups; k++)
        {
            var (s, z) = QuantizeGroup(row.Slice(k * g, g), scheme.Symmetric, clip, q.Slice(k * g, g));
            into.Scales[r * groups + k] = s;
            into.Zeros[r * groups + k] = z;
        }
    }

    /// <summary>Chooses the group's scale and zero point (MSE search over shrunk ranges) and writes its codes.</summary>
    public static (ushort Scale, sbyte Zero) QuantizeGroup(ReadOnlySpan<float> x, bool symmetric, Int4ClipSearch clip, Span<sbyte> q)
    {
        if (!SimdPaths.Use256 || x.Length % 8 != 0) return QuantizeGroupScalar(x, symmetric, clip, q);
        var (lo, hi) = MinMax256(x);
        var best = BestCandidate(lo, hi, symmetric, clip, new PlainError256(x));
        Codes256(x, best.Scale, best.Zero, q);
        return best;
    }

    /// <summary>Scalar reference of <see cref="QuantizeGroup"/>: the same candidates, the error summed in the same 8 lanes.</summary>
    public static (ushort Scale, sbyte Zero) QuantizeGroupScalar(ReadOnlySpan<float> x, bool symmetric, Int4ClipSearch clip, Span<sbyte> q)
    {
        float lo = float.PositiveInfinity, hi = float.NegativeInfinity;
        foreach (var v in x) { lo = MathF.Min(lo, v); hi = MathF.Max(hi, v); }
        var best = BestCandidate(lo, hi, symmetric, clip, new PlainErrorScalar(x));
        float s = Bf16.ToSingle(best.Scale);
        for (int i = 0; i < x.Length; i++) q[i] = Int4Scheme.Quantize(x[i], s, best.Zero);
        return best;
    }

    /// <summary>
    /// The same candidates as <see cref="QuantizeGroupScalar"/>, chosen by the importance-weighted error
    /// sum_i importance_i (x_i - dq(x_i))^2 (GPTQ passes the per-column weight of its own objective). Codes are not written.
    /// </summary>
    public static (ushort Scale, sbyte Zero) ChooseGroupWeighted(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, bool symmetric, Int4ClipSearch clip)
    {
        float lo = float.PositiveInfinity, hi = float.NegativeInfinity;
        foreach (var v in x) { lo = MathF.Min(lo, v); hi = MathF.Max(hi, v); }
        return BestCandidate(lo, hi, symmetric, clip, new WeightedErrorOf(x, importance));
    }

    /// <summary>A group's error for one candidate (scale bits, zero point): what the clipping search minimises.</summary>
    private interface IGroupError
    {
        double Of(ushort scaleBits, sbyte zero);
    }

    private readonly ref struct PlainError256(ReadOnlySpan<float> x) : IGroupError
    {
        private readonly ReadOnlySpan<float> _x = x;
        public double Of(ushort scaleBits, sbyte zero) => Error256(_x, scaleBits, zero);
    }

    private readonly ref struct PlainErrorScalar(ReadOnlySpan<float> x) : IGroupError
    {
        private readonly ReadOnlySpan<float> _x = x;
        public double Of(ushort scaleBits, sbyte zero) => ErrorScalar(_x, scaleBits, zero);
    }

    private readonly ref struct WeightedErrorOf(ReadOnlySpan<float> x, ReadOnlySpan<float> importance) : IGroupError
    {
        private readonly ReadOnlySpan<float> _x = x, _importance = importance;
        public double Of(ushort scaleBits, sbyte zero) => WeightedError(_x, _importance, scaleBits, zero);
    }

    /// <summary>
    /// The clipping search shared by every quantizer here: the full range [lo, hi], then ranges shrunk by
    /// <see cref="Int4ClipSearch.Shrink"/>; a candidate replaces the best only with a strictly smaller error
    /// (float errors widen to double exactly, so the order is theirs).
    /// </summary>
    private static (ushort Scale, sbyte Zero) BestCandidate<TError>(float lo, float hi, bool symmetric, Int4ClipSearch clip, TError error)
        where TError : IGroupError, allows ref struct
    {
        var best = Int4Scheme.FromRange(lo, hi, symmetric);
        if (clip.Steps <= 1) return best;
        double bestErr = error.Of(best.Scale, best.Zero);
        for (int i = 1; i < clip.Steps; i++)
        {
            float p = clip.Shrink(i);
            var cand = Int4Scheme.FromRange(lo * p, hi * p, symmetric);
            if (cand == best) continue;
            double e = error.Of(cand.Scale, cand.Zero);
            if (e < bestErr) { bestErr = e; best = cand; }
        }
        return best;
    }

    private static double WeightedError(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, ushort scaleBits, sbyte zero)
    {
        float s = Bf16.ToSingle(scaleBits);
        double sum = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double d = Int4Scheme.Dequantize(Int4Scheme.Quantize(x[i], s, zero), s, zero) - x[i];
            sum += importance[i] * d * d;
        }
        return sum;
    }

    /// <summary>Sum of squared dequantization errors of a group, accumulated in 8 lanes (lane = index % 8), lanes summed in order.</summary>
    internal static float ErrorScalar(ReadOnlySpan<float> x, ushort scaleBits, sbyte zero)
    {
        float s = Bf16.ToSingle(scaleBits);
        Span<float> acc = stackalloc float[8];
        acc.Clear();
        for (int i = 0; i < x.Length; i++)
        {
            float d = Int4Scheme.Dequantize(Int4Scheme.Quantize(x[i], s, zero), s, zero) - x[i];
            acc[i & 7] += d * d;
        }
        float sum = 0;
        for (int i = 0; i < 8; i++) sum += acc[i];
        return sum;
    }

    private static (float, float) MinMax256(ReadOnlySpan<float> x)
    {
        ref float p = ref MemoryMarshal.GetReference(x);
        var lo = Vector256.LoadUnsafe(ref p);
        var hi = lo;
        for (int i = 8; i < x.Length; i += 8)
        {
            var v = Vector256.LoadUnsafe(ref p, (nuint)i);
            lo = Vector256.Min(lo, v);
            hi = Vector256.Max(hi, v);
        }
        float l = lo[0], h = hi[0];
        for (int i = 1; i < 8; i++) { l = MathF.Min(l, lo[i]); h = MathF.Max(h, hi[i]); }
        return (l, h);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Codes(Vector256<float> v, Vector256<float> s, Vector256<float> z) =>
        Vector256.Min(Vector256.Max(Vector256.Round(v / s + z), Vector256.Create(-8f)), Vector256.Create(7f));

    private static float Error256(ReadOnlySpan<float> x, ushort scaleBits, sbyte zero)
    {
        ref float p = ref MemoryMarshal.GetReference(x);
        var s = Vector256.Create(Bf16.ToSingle(scaleBits));
        var z = Vector256.Create((float)zero);
        var acc = Vector256<float>.Zero;
        for (int i = 0; i < x.Length; i += 8)
        {
            var v = Vector256.LoadUnsafe(ref p, (nuint)i);
            var d = (Codes(v, s, z) - z) * s - v;
            acc += d * d;
        }
        float sum = 0;
        for (int i = 0; i < 8; i++) sum += acc[i];
        return sum;
    }

    private static void Codes256(ReadOnlySpan<float> x, ushort scaleBits, sbyte zero, Span<sbyte> q)
    {
        ref float p = ref MemoryMarshal.GetReference(x);
        var s = Vector256.Create(Bf16.ToSingle(scaleBits));
        var z = Vector256.Create((float)zero);
        for (int i = 0; i < x.Length; i += 8)
        {
            var c = Vector256.ConvertToInt32(Codes(Vector256.LoadUnsafe(ref p, (nuint)i), s, z));
            for (int j = 0; j < 8; j++) q[i + j] = (sbyte)c[j];
        }
    }
}
