using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Converter.Numerics.LogFmt;

namespace Converter.Numerics.ActivationFormats;

/// <summary>
/// Quantize-dequantize of activation rows (one row per token) in the formats compared with LogFMT, i.e. what
/// a tensor looks like after crossing the wire, and the wire size per token.
/// FP8 follows DeepSeek-V3's activation quantizer (inference/kernel.py act_quant): per 1x128 tile,
/// s = max(amax, 1e-4) / FP8_MAX in float32, code = fp8(x / s), value = fp8value(code) * s; with
/// <c>powerOfTwoScale</c> (V3.1's "ue8m0") s is rounded up to a power of two. BF16 rounds to nearest even.
/// Non-finite input is rejected with an <see cref="InvalidDataException"/> naming the tensor and element.
/// </summary>
public static class ActivationQuantizer
{
    public const int TileSize = 128;
    /// <summary>Floor on a tile's amax before the FP8 scale is taken (keeps the scale nonzero).</summary>
    public const float AmaxFloor = 1e-4f;

    /// <summary>y = what <paramref name="x"/> becomes after encoding in <paramref name="format"/> and decoding.</summary>
    public static void QuantizeDequantize(ActivationFormat format, ReadOnlySpan<float> x, Span<float> y,
        int rowLength = 0, string name = "activations", bool powerOfTwoScale = false, int maxThreads = 0)
    {
        switch (format.Kind)
        {
            case ActivationFormatKind.Bf16: Bf16QuantizeDequantize(x, y, name); break;
            case ActivationFormatKind.E4M3: Fp8QuantizeDequantize(x, y, e5m2: false, rowLength, name, powerOfTwoScale, maxThreads); break;
            case ActivationFormatKind.E5M2: Fp8QuantizeDequantize(x, y, e5m2: true, rowLength, name, powerOfTwoScale, maxThreads); break;
            case ActivationFormatKind.LogFmt: LogFmtCodec.QuantizeDequantize(x, format.Bits, y, name, rowLength, maxThreads); break;
            default: throw new ArgumentOutOfRangeException(nameof(format), format, null);
        }
    }

    /// <summary>Bytes one token of <paramref name="hiddenSize"/> values takes on the wire: packed codes plus per-tile metadata.</summary>
    public static long WireBytesPerToken(ActivationFormat format, int hiddenSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(hiddenSize);
        long tiles = (hiddenSize + TileSize - 1) / TileSize;
        return format.Kind switch
        {
            ActivationFormatKind.Bf16 => 2L * hiddenSize,
            ActivationFormatKind.E4M3 or ActivationFormatKind.E5M2 => hiddenSize + 4 * tiles,
            ActivationFormatKind.LogFmt => LogFmtCodec.PackedByteCount(hiddenSize, format.Bits) + 8 * tiles,
            _ => throw new ArgumentOutOfRangeException(nameof(format), format, null),
        };
    }

    /// <summary>The float32 FP8 scale of a tile: max(amax, 1e-4) / fp8Max, optionally rounded up to a power of two.</summary>
    public static float Fp8TileScale(float amax, float fp8Max, bool powerOfTwoScale = false)
    {
        float s = Math.Max(amax, AmaxFloor) / fp8Max;
        if (!powerOfTwoScale) return s;
        // ceil(log2 s) exactly: the exponent, plus one unless s is already a power of two
        int bits = BitConverter.SingleToInt32Bits(s);
        int exp = (bits >> 23) - 127 + ((bits & 0x7FFFFF) != 0 ? 1 : 0);
        return MathF.ScaleB(1f, exp);
    }

    /// <summary>E4M3 (e4m3fn) with one float32 scale per 1x128 tile of each row.</summary>
    public static void E4M3QuantizeDequantize(ReadOnlySpan<float> x, Span<float> y, int rowLength = 0,
        string name = "activations", bool powerOfTwoScale = false, int maxThreads = 0)
        => Fp8QuantizeDequantize(x, y, e5m2: false, rowLength, name, powerOfTwoScale, maxThreads);

    /// <summary>E5M2 with one float32 scale per 1x128 tile of each row.</summary>
    public static void E5M2QuantizeDequantize(ReadOnlySpan<float> x, Span<float> y, int rowLength = 0,
        string name = "activations", bool powerOfTwoScale = false, int maxThreads = 0)
        => Fp8QuantizeDequantize(x, y, e5m2: true, rowLength, name, powerOfTwoScale, maxThreads);

    /// <summary>float32 -> bf16 (round to nearest even) -> float32.</summary>
    public static void Bf16QuantizeDequantize(ReadOnlySpan<float> x, Span<float> y, string name = "activations")
    {
        CheckLengths(x, y);
        ThrowIfNonFinite(x, 0, name, "BF16");
        var bits = MemoryMarshal.Cast<float, uint>(x);
        var outBits = MemoryMarshal.Cast<float, uint>(y);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref uint s = ref MemoryMarshal.GetReference(bits);
            ref uint d = ref MemoryMarshal.GetReference(outBits);
            for (; i <= x.Length - 8; i += 8)
                (Numerics.Bf16.Round256(Vector256.LoadUnsafe(ref s, (nuint)i)) << 16).StoreUnsafe(ref d, (nuint)i);
        }
        for (; i < x.Length; i++) y[i] = Numerics.Bf16.ToSingle(Numerics.Bf16.FromSingle(x[i]));
    }

    private static unsafe void Fp8QuantizeDequantize(ReadOnlySpan<float> x, Span<float> y, bool e5m2, int rowLength,
        string name, bool powerOfTwoScale, int maxThreads)
    {
        CheckLengths(x, y);
        var layout = new RowTiles(x.Length, rowLength, TileSize);
        float fp8Max = e5m2 ? Fp8E5M2.MaxValue : Fp8E4M3.MaxValue;
        long firstBad = long.MaxValue;
        fixed (float* px = x)
        fixed (float* py = y)
        {
            float* xi = px, yo = py;
            layout.ForEachChunk(maxThreads, (t0, t1) =>
            {
                Span<float> q = stackalloc float[TileSize];
                Span<byte> codes = stackalloc byte[TileSize];
                for (int t = t0; t < t1; t++)
                {
                    var (start, len) = layout[t];
                    var xs = new ReadOnlySpan<float>(xi + start, len);
                    var ys = new Span<float>(yo + start, len);
                    int bad = TileStats.Scan(xs, out float amax, out _);
                    if (bad >= 0)
                    {
                        long idx = start + bad, seen;
                        while (idx < (seen = Interlocked.Read(ref firstBad)) && Interlocked.CompareExchange(ref firstBad, idx, seen) != seen) { }
                        return;
                    }
                    float s = Fp8TileScale(amax, fp8Max, powerOfTwoScale);
                    var qs = q[..len];
                    var cs = codes[..len];
                    for (int i = 0; i < len; i++) qs[i] = xs[i] / s; // float32 division, as the kernel does
                    if (e5m2) { Fp8E5M2.FromSingle(qs, cs); Fp8E5M2.ToSingle(cs, ys); }
                    else { Fp8E4M3.FromSingle(qs, cs); Fp8E4M3.ToSingle(cs, ys); }
                    for (int i = 0; i < len; i++) ys[i] *= s;
                }
            });
        }
        if (firstBad != long.MaxValue)
            throw new InvalidDataException($"{(e5m2 ? "E5M2" : "E4M3")} quantization of '{name}': element {firstBad} is {x[(int)firstBad]} (non-finite)");
    }

    private static void ThrowIfNonFinite(ReadOnlySpan<float> x, int offset, string name, string format)
    {
        // non-finite = exponent all ones, either sign: two vectorised range searches over the bit patterns
        var bits = MemoryMarshal.Cast<float, uint>(x);
        int a = bits.IndexOfAnyInRange(0x7F800000u, 0x7FFFFFFFu), b = bits.IndexOfAnyInRange(0xFF800000u, 0xFFFFFFFFu);
        int j = a < 0 ? b : b < 0 ? a : Math.Min(a, b);
        if (j >= 0)
            throw new InvalidDataException($"{format} quantization of '{name}': element {offset + j} is {x[j]} (non-finite)");
    }

    private static void CheckLengths(ReadOnlySpan<float> x, Span<float> y)
    {
        if (y.Length < x.Length) throw new ArgumentException($"y holds {y.Length} < {x.Length} elements", nameof(y));
    }
}
