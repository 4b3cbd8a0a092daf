using System.Runtime.CompilerServices;

namespace Converter.Numerics.Int4;

/// <summary>
/// INT4 group quantization along the input dimension (K) of a [N, K] weight, compressed-tensors conventions:
/// q in [-8, 7]; symmetric: scale = absmax / 7.5 and zero point 0 (so +absmax rounds to 8 and clamps to 7, as
/// compressed-tensors does); asymmetric: range widened to include 0, scale = (max - min) / 15 and
/// zp = round(-8 - min / scale) clamped to [-8, 7] (int8 in [-8, 7]). Scales are stored in BF16 and the BF16
/// value is the one used to quantize, so dequantization (q - zp) * scale reproduces the quantizer exactly.
/// Rounding is to nearest, ties to even (torch.round); a zero scale becomes BF16's epsilon (2^-7), as
/// compressed-tensors does.
/// </summary>
public readonly record struct Int4Scheme(int GroupSize, bool Symmetric)
{
    public const int QMin = -8, QMax = 7;
    /// <summary>torch.finfo(bfloat16).eps, what compressed-tensors puts in place of a zero scale.</summary>
    public const float ZeroScale = 0.0078125f;

    public int Groups(int cols) => cols / GroupSize;

    /// <summary>Throws unless the group size is supported and divides K (no padding: a clear error instead).</summary>
    public void CheckShape(int rows, int cols, string tensor)
    {
        if (GroupSize is not (32 or 64 or 128))
            throw new ArgumentException($"INT4 group size {GroupSize} is not supported (32, 64 or 128)");
        if (cols % GroupSize != 0)
            throw new InvalidDataException($"tensor '{tensor}' [{rows}, {cols}]: INT4 group size {GroupSize} does not divide its input dimension {cols}; choose a group size that divides it or exclude the tensor");
    }

    /// <summary>Scale (BF16 bits) and zero point for a group whose values lie in [lo, hi].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (ushort Scale, sbyte Zero) FromRange(float lo, float hi, bool symmetric)
    {
        lo = MathF.Min(lo, 0f);
        hi = MathF.Max(hi, 0f);
        if (symmetric)
        {
            ushort s = Bf16.FromSingle(MathF.Max(-lo, hi) / 7.5f);
            return (s == 0 ? ScaleZeroBits : s, 0);
        }
        ushort a = Bf16.FromSingle((hi - lo) / 15f);
        if (a == 0) a = ScaleZeroBits;
        float zp = MathF.Round(-8f - lo / Bf16.ToSingle(a));
        return (a, (sbyte)Math.Clamp(zp, QMin, QMax));
    }

    internal const ushort ScaleZeroBits = 0x3C00; // bf16 of 2^-7

    /// <summary>q = clamp(round(x / scale + zp), -8, 7).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static sbyte Quantize(float x, float scale, float zero) =>
        (sbyte)Math.Clamp(MathF.Round(x / scale + zero), QMin, QMax);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dequantize(int q, float scale, int zero) => (q - zero) * scale;
}

/// <summary>MSE-optimal clipping: candidate ranges shrunk by 1, 1 - Step, ..., 1 - (Steps - 1) * Step; the one with the least squared error wins.</summary>
public readonly record struct Int4ClipSearch(int Steps = 30, float Step = 0.01f)
{
    public static Int4ClipSearch None => new(1, 0f);
    public static Int4ClipSearch Default => new(30, 0.01f);
    public float Shrink(int i) => 1f - i * Step;
}

/// <summary>A quantized [Rows, Cols] weight: codes q in [-8, 7] row-major, BF16 scales and int8 zero points [Rows, Cols / GroupSize].</summary>
public sealed class Int4Weight
{
    public required int Rows { get; init; }
    public required int Cols { get; init; }
    public required Int4Scheme Scheme { get; init; }
    public required sbyte[] Q { get; init; }
    public required ushort[] Scales { get; init; }
    /// <summary>Zero points; all zero (never null) when symmetric.</summary>
    public required sbyte[] Zeros { get; init; }

    public int Groups => Cols / Scheme.GroupSize;

    public static Int4Weight Allocate(int rows, int cols, Int4Scheme scheme) => new()
    {
        Rows = rows, Cols = cols, Scheme = scheme,
        Q = new sbyte[(long)rows * cols],
        Scales = new ushort[(long)rows * (cols / scheme.GroupSize)],
        Zeros = new sbyte[(long)rows * (cols / scheme.GroupSize)],
    };

    /// <summary>(q - zp) * scale in float32 (exact: a 4-bit integer times a BF16 value fits float32).</summary>
    public float[] Dequantize()
    {
        var w = new float[(long)Rows * Cols];
        int g = Scheme.GroupSize, groups = Groups;
        Parallel.For(0, Rows, r =>
        {
            for (int c = 0; c < Cols; c++)
            {
                int k = r * groups + c / g;
                w[(long)r * Cols + c] = Int4Scheme.Dequantize(Q[(long)r * Cols + c], Bf16.ToSingle(Scales[k]), Zeros[k]);
            }
        });
        return w;
    }
}
