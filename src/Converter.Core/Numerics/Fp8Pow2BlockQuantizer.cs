using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>
/// DeepSeek-V4's FP8 layout (<c>scale_fmt: ue8m0</c>): a weight [rows, cols] (row-major) becomes e4m3fn codes of
/// the same shape plus one power-of-two scale per 128x128 block, stored as E8M0 bytes [ceil(rows/128),
/// ceil(cols/128)] (<c>&lt;name&gt;.scale</c>, <c>F8_E8M0</c>); edge blocks are partial.
/// <para>Per block: e = ceil(log2(amax / 448)) exactly (amax 0: e = 0; see <see cref="E8M0.ScaleFor"/>), scale
/// code e + 127, codes <c>e4m3(w / 2^e)</c> with <see cref="Fp8E4M3"/>'s torch rounding (nearest even; a
/// negative value that rounds to zero keeps its sign, 0x80, as torch's cast does). This is the rule that made the
/// reference tiny-dsv4-fp8 from tiny-dsv4, reproduced byte for byte. Values are <c>e4m3(code) * 2^(e-127)</c>.</para>
/// <para>Unlike <see cref="Fp8BlockQuantizer"/> (V3: float32 scale amax / 448), the scale is never below what
/// amax needs, so a block's largest |code| lies in [224, 448]. Non-finite weights throw
/// <see cref="ArgumentException"/> naming the block; a 0xFF (NaN) scale throws <see cref="InvalidDataException"/>.
/// Messages name no file or tensor: callers prefix them.</para>
/// All methods run block rows in parallel (<c>maxDegreeOfParallelism</c>: -1 = all cores, 1 = the calling thread only).
/// </summary>
public static class Fp8Pow2BlockQuantizer
{
    public const int BlockSize = 128;

    private const uint MaxBits = 0x43E0_0000u;   // 448.0f, e4m3's largest value

    /// <summary>Shape of the scales of a [rows, cols] weight.</summary>
    public static (int Rows, int Cols) ScaleShape(int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        return (CeilDiv(rows), CeilDiv(cols));
    }

    /// <summary>The scale code of a block whose largest magnitude is <paramref name="amax"/>.</summary>
    public static byte ScaleFor(float amax) => E8M0.ScaleFor(amax, Fp8E4M3.MaxValue);

    /// <summary>Checks a stored pair, codes [rows, cols] and scales [ceil(rows/128), ceil(cols/128)], and returns
    /// [rows, cols]. Throws <see cref="InvalidDataException"/> saying what shape was expected.</summary>
    public static (int Rows, int Cols) ValidateLayout(ReadOnlySpan<long> weightShape, ReadOnlySpan<long> scaleShape)
    {
        if (weightShape.Length != 2)
            throw new InvalidDataException($"FP8 weight has shape {Pow2Blocks.ShapeText(weightShape)}; expected 2-D");
        long rows = weightShape[0], cols = weightShape[1];
        if (rows < 0 || cols < 0 || rows * cols > int.MaxValue)
            throw new InvalidDataException($"FP8 weight {Pow2Blocks.ShapeText(weightShape)} holds {rows * cols} values, more than one span can address");
        long sr = (rows + BlockSize - 1) / BlockSize, sc = (cols + BlockSize - 1) / BlockSize;
        if (scaleShape.Length != 2 || scaleShape[0] != sr || scaleShape[1] != sc)
            throw new InvalidDataException($"FP8 scale has shape {Pow2Blocks.ShapeText(scaleShape)}; weight {Pow2Blocks.ShapeText(weightShape)} " +
                $"needs [{sr}, {sc}] (one E8M0 scale per {BlockSize}x{BlockSize} block)");
        return ((int)rows, (int)cols);
    }

    /// <summary>Quantizes bf16 weights (raw bits) by the rule, writing codes and scales.</summary>
    public static unsafe void Quantize(ReadOnlySpan<ushort> weightBf16, int rows, int cols, Span<byte> fp8Out, Span<byte> scaleOut,
        int maxDegreeOfParallelism = -1)
    {
        Check(rows, cols, weightBf16.Length, fp8Out.Length, scaleOut.Length, exactScales: false);
        fixed (ushort* w = weightBf16) fixed (byte* q = fp8Out) fixed (byte* s = scaleOut)
        {
            nint pw = (nint)w, pq = (nint)q, ps = (nint)s;
            ThrowIfNonFinite(Pow2Blocks.ForEachChunk(CeilDiv(rows), 1, maxDegreeOfParallelism,
                (br, _) => QuantizeBlockRow<Bf16Source>((void*)pw, rows, cols, br, (byte*)pq, (byte*)ps)), cols);
        }
    }

    /// <summary>Quantizes float32 weights by the rule, writing codes and scales.</summary>
    public static unsafe void Quantize(ReadOnlySpan<float> weight, int rows, int cols, Span<byte> fp8Out, Span<byte> scaleOut,
        int maxDegreeOfParallelism = -1)
    {
        Check(rows, cols, weight.Length, fp8Out.Length, scaleOut.Length, exactScales: false);
        fixed (float* w = weight) fixed (byte* q = fp8Out) fixed (byte* s = scaleOut)
        {
            nint pw = (nint)w, pq = (nint)q, ps = (nint)s;
            ThrowIfNonFinite(Pow2Blocks.ForEachChunk(CeilDiv(rows), 1, maxDegreeOfParallelism,
                (br, _) => QuantizeBlockRow<F32Source>((void*)pw, rows, cols, br, (byte*)pq, (byte*)ps)), cols);
        }
    }

    /// <summary>The rule's scales alone, as <see cref="Quantize(ReadOnlySpan{ushort}, int, int, Span{byte}, Span{byte}, int)"/>
    /// writes them (one max per block, no codes): for layouts that store each scale before its weight.</summary>
    public static unsafe void Scales(ReadOnlySpan<ushort> weightBf16, int rows, int cols, Span<byte> scaleOut, int maxDegreeOfParallelism = -1)
    {
        Check(rows, cols, weightBf16.Length, weightBf16.Length, scaleOut.Length, exactScales: false);
        fixed (ushort* w = weightBf16) fixed (byte* s = scaleOut)
        {
            nint pw = (nint)w, ps = (nint)s;
            ThrowIfNonFinite(Pow2Blocks.ForEachChunk(CeilDiv(rows), 1, maxDegreeOfParallelism,
                (br, _) => ScaleBlockRow<Bf16Source>((void*)pw, rows, cols, br, (byte*)ps)), cols);
        }
    }

    /// <summary>The rule's scales alone for float32 weights.</summary>
    public static unsafe void Scales(ReadOnlySpan<float> weight, int rows, int cols, Span<byte> scaleOut, int maxDegreeOfParallelism = -1)
    {
        Check(rows, cols, weight.Length, weight.Length, scaleOut.Length, exactScales: false);
        fixed (float* w = weight) fixed (byte* s = scaleOut)
        {
            nint pw = (nint)w, ps = (nint)s;
            ThrowIfNonFinite(Pow2Blocks.ForEachChunk(CeilDiv(rows), 1, maxDegreeOfParallelism,
                (br, _) => ScaleBlockRow<F32Source>((void*)pw, rows, cols, br, (byte*)ps)), cols);
        }
    }

    /// <summary>
    /// Encodes bf16 weights with given scales (for example the <c>.scale</c> tensor of the checkpoint they were
    /// dequantized from: recomputing scales from amax cannot always give back the stored ones), codes
    /// <c>e4m3(clamp(w / s, ±448))</c> as DeepSeek's kernels clamp. Returns how many values the codes do not
    /// reproduce exactly (0: lossless); NaN becomes the NaN code and infinities saturate, and both count.
    /// </summary>
    public static unsafe int QuantizeWithScales(ReadOnlySpan<ushort> weightBf16, ReadOnlySpan<byte> scales, int rows, int cols,
        Span<byte> fp8Out, int maxDegreeOfParallelism = -1)
    {
        Check(rows, cols, weightBf16.Length, fp8Out.Length, scales.Length, exactScales: true);
        ThrowIfNaNScale(scales, cols);
        int inexact = 0;
        fixed (ushort* w = weightBf16) fixed (byte* q = fp8Out) fixed (byte* s = scales)
        {
            nint pw = (nint)w, pq = (nint)q, ps = (nint)s;
            Pow2Blocks.ForEachChunk(CeilDiv(rows), 1, maxDegreeOfParallelism, (br, _) =>
            {
                Interlocked.Add(ref inexact, EncodeBlockRowWithScales<Bf16Source>((void*)pw, rows, cols, br, (byte*)pq, (byte*)ps));
                return -1;
            });
        }
        return inexact;
    }

    /// <summary>value = e4m3(code) * 2^(scale-127), in float32 (exact).</summary>
    public static void Dequantize(ReadOnlySpan<byte> fp8, ReadOnlySpan<byte> scales, int rows, int cols, Span<float> output,
        int maxDegreeOfParallelism = -1)
    {
        Check(rows, cols, output.Length, fp8.Length, scales.Length, exactScales: true);
        ThrowIfNaNScale(scales, cols);
        float[] s = ArrayPool<float>.Shared.Rent(scales.Length);
        try
        {
            E8M0.ToSingle(scales, s);
            // The V3 codec multiplies each code by a float32 scale: with 2^(e-127) that product is exact.
            Fp8BlockQuantizer.Dequantize(fp8, s.AsSpan(0, scales.Length), rows, cols, output, maxDegreeOfParallelism);
        }
        finally { ArrayPool<float>.Shared.Return(s); }
    }

    /// <summary>bf16(e4m3(code) * 2^(scale-127)): the exact float32 value rounded to nearest even, which only
    /// changes values below bf16's smallest subnormal 2^-133 (scale codes under 7).</summary>
    public static void DequantizeToBf16(ReadOnlySpan<byte> fp8, ReadOnlySpan<byte> scales, int rows, int cols, Span<ushort> output,
        int maxDegreeOfParallelism = -1)
    {
        Check(rows, cols, output.Length, fp8.Length, scales.Length, exactScales: true);
        ThrowIfNaNScale(scales, cols);
        float[] s = ArrayPool<float>.Shared.Rent(scales.Length);
        try
        {
            E8M0.ToSingle(scales, s);
            Fp8BlockQuantizer.DequantizeToBf16(fp8, s.AsSpan(0, scales.Length), rows, cols, output, maxDegreeOfParallelism);
        }
        finally { ArrayPool<float>.Shared.Return(s); }
    }

    // ---- checks ----------------------------------------------------------------------------------------

    private static int CeilDiv(int n) => (n + BlockSize - 1) / BlockSize;

    /// <summary>Values and codes need at least the weight's size; scales that are an input must match exactly.</summary>
    private static void Check(int rows, int cols, int valuesLength, int fp8Length, int scaleLength, bool exactScales)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        long n = (long)rows * cols;
        if (valuesLength < n) throw new ArgumentException($"Weight/output holds {valuesLength} values; FP8 weight [{rows}, {cols}] needs {n}.");
        if (fp8Length < n) throw new ArgumentException($"FP8 buffer holds {fp8Length} bytes; [{rows}, {cols}] needs {n}.");
        long ns = (long)CeilDiv(rows) * CeilDiv(cols);
        if (exactScales ? scaleLength != ns : scaleLength < ns)
            throw new ArgumentException($"FP8 scale holds {scaleLength} bytes; weight [{rows}, {cols}] needs {(exactScales ? "exactly " : "")}{ns} " +
                $"([{CeilDiv(rows)}, {CeilDiv(cols)}], one per {BlockSize}x{BlockSize} block).");
    }

    private static void ThrowIfNaNScale(ReadOnlySpan<byte> scales, int cols)
    {
        int i = scales.IndexOf(E8M0.NaNCode);
        if (i < 0) return;
        int nb = CeilDiv(cols);
        throw new InvalidDataException($"FP8 scale [{i / nb}, {i % nb}] is 0xFF, which is NaN in E8M0");
    }

    private static void ThrowIfNonFinite(int badBlock, int cols)
    {
        if (badBlock < 0) return;
        int nb = CeilDiv(cols);
        throw new ArgumentException($"Non-finite value (NaN or infinity) in weight block ({badBlock / nb}, {badBlock % nb}); cannot quantize it to FP8.");
    }

    // ---- quantize ---------------------------------------------------------------------------------------

    /// <summary>One row of blocks by the rule; returns the first block holding a non-finite value, or -1.</summary>
    private static unsafe int QuantizeBlockRow<TSrc>(void* w, int rows, int cols, int br, byte* q, byte* scales) where TSrc : struct, IF32Source
    {
        int r0 = br * BlockSize, r1 = Math.Min(rows, r0 + BlockSize), nb = CeilDiv(cols);
        for (int bc = 0; bc < nb; bc++)
        {
            int c0 = bc * BlockSize, width = Math.Min(cols, c0 + BlockSize) - c0;
            uint amax = 0;
            for (int r = r0; r < r1; r++) amax = Math.Max(amax, TSrc.MaxMagnitude(w, (nint)r * cols + c0, width));
            if (amax >= 0x7F80_0000u) return br * nb + bc;
            byte sc = E8M0.ScaleForBits(amax, MaxBits);
            scales[br * nb + bc] = sc;
            float recip = BitConverter.UInt32BitsToSingle(E8M0.ReciprocalBits(sc));
            for (int r = r0; r < r1; r++)
                EncodeRow<TSrc, No>(w, (nint)r * cols + c0, width, recip, q + (nint)r * cols + c0);
        }
        return -1;
    }

    /// <summary>The scales of one row of blocks (the amax and scale steps of <c>QuantizeBlockRow</c>).</summary>
    private static unsafe int ScaleBlockRow<TSrc>(void* w, int rows, int cols, int br, byte* scales) where TSrc : struct, IF32Source
    {
        int r0 = br * BlockSize, r1 = Math.Min(rows, r0 + BlockSize), nb = CeilDiv(cols);
        for (int bc = 0; bc < nb; bc++)
        {
            int c0 = bc * BlockSize, width = Math.Min(cols, c0 + BlockSize) - c0;
            uint amax = 0;
            for (int r = r0; r < r1; r++) amax = Math.Max(amax, TSrc.MaxMagnitude(w, (nint)r * cols + c0, width));
            if (amax >= 0x7F80_0000u) return br * nb + bc;
            scales[br * nb + bc] = E8M0.ScaleForBits(amax, MaxBits);
        }
        return -1;
    }

    private static unsafe int EncodeBlockRowWithScales<TSrc>(void* w, int rows, int cols, int br, byte* q, byte* scales) where TSrc : struct, IF32Source
    {
        int r0 = br * BlockSize, r1 = Math.Min(rows, r0 + BlockSize), nb = CeilDiv(cols), inexact = 0;
        for (int bc = 0; bc < nb; bc++)
        {
            int c0 = bc * BlockSize, width = Math.Min(cols, c0 + BlockSize) - c0;
            float recip = BitConverter.UInt32BitsToSingle(E8M0.ReciprocalBits(scales[br * nb + bc]));
            for (int r = r0; r < r1; r++)
                inexact += EncodeRow<TSrc, Yes>(w, (nint)r * cols + c0, width, recip, q + (nint)r * cols + c0);
        }
        return inexact;
    }

    // w / 2^e is computed as w * 2^-e: both are the correctly rounded quotient, and 2^-e is exact for every code.

    /// <summary>Encodes n values times <paramref name="recip"/>. With given scales (<typeparamref name="TGiven"/>)
    /// w / s may exceed 448: it is clamped there, and the codes that do not decode to w / s are counted. The
    /// rule's own scales keep |w / s| &lt;= 448, so that variant skips both.</summary>
    private static unsafe int EncodeRow<TSrc, TGiven>(void* w, nint i0, int n, float recip, byte* dst)
        where TSrc : struct, IF32Source where TGiven : struct, IFlag
    {
        int i = 0, inexact = 0;
        if (SimdPaths.Use512)
        {
            Vector512<float> r = Vector512.Create(recip);
            for (; i <= n - 64; i += 64)
            {
                TSrc.Load32(w, i0 + i, out var a, out var b);
                TSrc.Load32(w, i0 + i + 32, out var c, out var d);
                Vector512<float> ya = a.AsSingle() * r, yb = b.AsSingle() * r, yc = c.AsSingle() * r, yd = d.AsSingle() * r;
                Vector512<uint> ca = Encode512<TGiven>(ya), cb = Encode512<TGiven>(yb), cc = Encode512<TGiven>(yc), cd = Encode512<TGiven>(yd);
                Fp8Spans.Pack(ca, cb, cc, cd).Store(dst + i);
                if (TGiven.On)
                    inexact += 64 - BitOperations.PopCount(Exact512(ca, ya) | Exact512(cb, yb) << 16 | Exact512(cc, yc) << 32 | Exact512(cd, yd) << 48);
            }
        }
        if (SimdPaths.Use256)
        {
            Vector256<float> r = Vector256.Create(recip);
            for (; i <= n - 32; i += 32)
            {
                TSrc.Load16(w, i0 + i, out var a, out var b);
                TSrc.Load16(w, i0 + i + 16, out var c, out var d);
                Vector256<float> ya = a.AsSingle() * r, yb = b.AsSingle() * r, yc = c.AsSingle() * r, yd = d.AsSingle() * r;
                Vector256<uint> ca = Encode256<TGiven>(ya), cb = Encode256<TGiven>(yb), cc = Encode256<TGiven>(yc), cd = Encode256<TGiven>(yd);
                Fp8Spans.Pack(ca, cb, cc, cd).Store(dst + i);
                if (TGiven.On)
                    inexact += 32 - BitOperations.PopCount(Exact256(ca, ya) | Exact256(cb, yb) << 8 | Exact256(cc, yc) << 16 | Exact256(cd, yd) << 24);
            }
        }
        for (; i < n; i++)
        {
            float y = BitConverter.UInt32BitsToSingle(TSrc.Load(w, i0 + i)) * recip;
            uint bits = BitConverter.SingleToUInt32Bits(y);
            uint code = E4M3Format.EncodeScalar(TGiven.On ? Clamp(bits) : bits);
            dst[i] = (byte)code;
            if (TGiven.On && BitConverter.UInt32BitsToSingle(E4M3Format.DecodeScalar(code)) != y) inexact++;
        }
        return inexact;
    }

    // |y| clamped to 448 keeping the sign; NaN (bits above inf) is left alone so that it stays NaN.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Clamp(uint bits)
    {
        uint a = bits & 0x7FFF_FFFFu;
        return a > MaxBits && a <= 0x7F80_0000u ? (bits & 0x8000_0000u) | MaxBits : bits;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Encode256<TClamp>(Vector256<float> y) where TClamp : struct, IFlag
    {
        if (!TClamp.On) return E4M3Format.Encode256(y.AsUInt32());
        Vector256<uint> bits = y.AsUInt32(), a = bits & Vector256.Create(0x7FFF_FFFFu);
        Vector256<uint> over = Vector256.GreaterThan(a.AsInt32(), Vector256.Create((int)MaxBits)).AsUInt32()
            & Vector256.LessThanOrEqual(a.AsInt32(), Vector256.Create(0x7F80_0000)).AsUInt32();
        return E4M3Format.Encode256(Vector256.ConditionalSelect(over, (bits & Vector256.Create(0x8000_0000u)) | Vector256.Create(MaxBits), bits));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Encode512<TClamp>(Vector512<float> y) where TClamp : struct, IFlag
    {
        if (!TClamp.On) return E4M3Format.Encode512(y.AsUInt32());
        Vector512<uint> bits = y.AsUInt32(), a = bits & Vector512.Create(0x7FFF_FFFFu);
        Vector512<uint> over = Vector512.GreaterThan(a.AsInt32(), Vector512.Create((int)MaxBits)).AsUInt32()
            & Vector512.LessThanOrEqual(a.AsInt32(), Vector512.Create(0x7F80_0000)).AsUInt32();
        return E4M3Format.Encode512(Vector512.ConditionalSelect(over, (bits & Vector512.Create(0x8000_0000u)) | Vector512.Create(MaxBits), bits));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Exact512(Vector512<uint> codes, Vector512<float> y)
        => Vector512.Equals(E4M3Format.Decode512(codes).AsSingle(), y).ExtractMostSignificantBits();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Exact256(Vector256<uint> codes, Vector256<float> y)
        => Vector256.Equals(E4M3Format.Decode256(codes).AsSingle(), y).ExtractMostSignificantBits();
}
