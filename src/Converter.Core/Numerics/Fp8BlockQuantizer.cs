using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>
/// DeepSeek's official FP8 weight layout: a weight [rows, cols] (row-major) becomes e4m3fn codes of the same
/// shape plus <c>weight_scale_inv</c> float32 [ceil(rows/128), ceil(cols/128)]; edge blocks are partial.
/// Per block: amax = max |w|, scale = amax / 448 (float32), code = e4m3fn(w / scale), value = code * scale.
/// <para>This is the exact arithmetic of the reference checkpoint (golden tiny-dsv3-fp8 is reproduced byte
/// for byte): the quotient is <c>w / scale</c> in float32. <c>w * (448 / amax)</c> differs in ~1 of 6000 codes.</para>
/// <para>An all-zero block (amax = 0; the reference has none) stores the scale DeepGEMM's quantizer would
/// (amax floored at 1e-4: 1e-4f / 448) and zero codes, so no consumer ever sees a zero or NaN scale.
/// Non-finite inputs throw <see cref="ArgumentException"/> naming the block.</para>
/// All methods run block rows in parallel (<c>maxDegreeOfParallelism</c>: -1 = all cores, 1 = the calling thread only).
/// </summary>
public static class Fp8BlockQuantizer
{
    public const int BlockSize = 128;

    /// <summary>Scale used for an all-zero block.</summary>
    public const float ZeroBlockScale = 1e-4f / 448f;

    /// <summary>Shape of <c>weight_scale_inv</c> for a [rows, cols] weight.</summary>
    public static (int Rows, int Cols) ScaleShape(int rows, int cols) => (CeilDiv(rows), CeilDiv(cols));

    /// <summary>The float32 scale of a block whose largest magnitude is <paramref name="amax"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ScaleOf(float amax) => amax == 0f ? ZeroBlockScale : amax / Fp8E4M3.MaxValue;

    /// <summary>Quantizes float32 weights.</summary>
    public static unsafe void Quantize(ReadOnlySpan<float> weight, int rows, int cols, Span<byte> fp8Out, Span<float> scaleInvOut,
        int maxDegreeOfParallelism = -1)
    {
        Check(weight.Length, rows, cols, fp8Out.Length, scaleInvOut.Length);
        fixed (float* w = weight) fixed (byte* q = fp8Out) fixed (float* s = scaleInvOut)
        {
            nint pw = (nint)w, pq = (nint)q, ps = (nint)s;
            int bad = RunBlockRows(rows, maxDegreeOfParallelism, br => QuantizeBlockRow((uint*)pw, rows, cols, br, (byte*)pq, (float*)ps));
            ThrowIfBad(bad, cols);
        }
    }

    /// <summary>Quantizes bf16 weights given as raw bits.</summary>
    public static unsafe void Quantize(ReadOnlySpan<ushort> weightBf16, int rows, int cols, Span<byte> fp8Out, Span<float> scaleInvOut,
        int maxDegreeOfParallelism = -1)
    {
        Check(weightBf16.Length, rows, cols, fp8Out.Length, scaleInvOut.Length);
        fixed (ushort* w = weightBf16) fixed (byte* q = fp8Out) fixed (float* s = scaleInvOut)
        {
            nint pw = (nint)w, pq = (nint)q, ps = (nint)s;
            int bad = RunBlockRows(rows, maxDegreeOfParallelism, br => QuantizeBlockRowBf16((ushort*)pw, rows, cols, br, (byte*)pq, (float*)ps));
            ThrowIfBad(bad, cols);
        }
    }

    /// <summary>value = e4m3(code) * scale, in float32.</summary>
    public static unsafe void Dequantize(ReadOnlySpan<byte> fp8, ReadOnlySpan<float> scaleInv, int rows, int cols, Span<float> output,
        int maxDegreeOfParallelism = -1)
    {
        Check(output.Length, rows, cols, fp8.Length, scaleInv.Length);
        fixed (byte* q = fp8) fixed (float* s = scaleInv) fixed (float* o = output)
        {
            nint pq = (nint)q, ps = (nint)s, po = (nint)o;
            RunBlockRows(rows, maxDegreeOfParallelism, br => { DequantizeBlockRow((byte*)pq, (float*)ps, rows, cols, br, (uint*)po, toBf16: false); return -1; });
        }
    }

    /// <summary>bf16(e4m3(code) * scale): float32 product rounded to nearest even, what <c>fp8_cast_bf16.py</c> writes.</summary>
    public static unsafe void DequantizeToBf16(ReadOnlySpan<byte> fp8, ReadOnlySpan<float> scaleInv, int rows, int cols, Span<ushort> output,
        int maxDegreeOfParallelism = -1)
    {
        Check(output.Length, rows, cols, fp8.Length, scaleInv.Length);
        fixed (byte* q = fp8) fixed (float* s = scaleInv) fixed (ushort* o = output)
        {
            nint pq = (nint)q, ps = (nint)s, po = (nint)o;
            RunBlockRows(rows, maxDegreeOfParallelism, br => { DequantizeBlockRow((byte*)pq, (float*)ps, rows, cols, br, (ushort*)po, toBf16: true); return -1; });
        }
    }

    private static int CeilDiv(int n) => (n + BlockSize - 1) / BlockSize;

    private static void Check(int weightLength, int rows, int cols, int fp8Length, int scaleLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        long n = (long)rows * cols;
        if (weightLength < n) throw new ArgumentException($"Weight/output holds {weightLength} elements, [{rows}, {cols}] needs {n}.");
        if (fp8Length < n) throw new ArgumentException($"FP8 buffer holds {fp8Length} bytes, [{rows}, {cols}] needs {n}.");
        long ns = (long)CeilDiv(rows) * CeilDiv(cols);
        if (scaleLength < ns) throw new ArgumentException($"Scale buffer holds {scaleLength} floats, [{rows}, {cols}] needs {ns}.");
    }

    private static void ThrowIfBad(int badBlock, int cols)
    {
        if (badBlock < 0) return;
        int nb = CeilDiv(cols);
        throw new ArgumentException($"Non-finite value (NaN or infinity) in weight block ({badBlock / nb}, {badBlock % nb}); cannot quantize it to FP8.");
    }

    /// <summary>Runs <paramref name="body"/> for each block row; returns the lowest bad block index any reported, or -1.</summary>
    private static int RunBlockRows(int rows, int maxDegreeOfParallelism, Func<int, int> body)
    {
        int blockRows = CeilDiv(rows);
        int bad = int.MaxValue;
        if (blockRows == 1 || maxDegreeOfParallelism == 1)
        {
            for (int br = 0; br < blockRows; br++)
            {
                int b = body(br);
                if (b >= 0) { bad = Math.Min(bad, b); break; }
            }
        }
        else
        {
            Parallel.For(0, blockRows, new ParallelOptions { MaxDegreeOfParallelism = maxDegreeOfParallelism }, br =>
            {
                int b = body(br);
                if (b < 0) return;
                int seen;
                while (b < (seen = Volatile.Read(ref bad)) && Interlocked.CompareExchange(ref bad, b, seen) != seen) { }
            });
        }
        return bad == int.MaxValue ? -1 : bad;
    }

    // ---- quantize: bf16 source -------------------------------------------------------------------------

    private static unsafe int QuantizeBlockRowBf16(ushort* w, int rows, int cols, int br, byte* q, float* scales)
    {
        int r0 = br * BlockSize, r1 = Math.Min(rows, r0 + BlockSize), nb = CeilDiv(cols);
        for (int bc = 0; bc < nb; bc++)
        {
            int c0 = bc * BlockSize, width = Math.Min(cols, c0 + BlockSize) - c0;
            uint amaxBits = BlockMaxMagnitudeBf16(w + (long)r0 * cols + c0, cols, r1 - r0, width);
            if (amaxBits >= 0x7F80u) return br * nb + bc;
            float scale = ScaleOf(Bf16.ToSingle((ushort)amaxBits));
            scales[br * nb + bc] = scale;
            for (int r = r0; r < r1; r++)
                EncodeRowBf16(w + (long)r * cols + c0, q + (long)r * cols + c0, width, scale);
        }
        return -1;
    }

    /// <summary>Largest magnitude in a block, as bits: for non-negative floats integer order is float order,
    /// and NaN/inf sort above every finite value, so one integer max also detects them.</summary>
    private static unsafe uint BlockMaxMagnitudeBf16(ushort* p, int stride, int height, int width)
    {
        uint m = 0;
        int vw = 0;
        if (SimdPaths.Use512 && width >= 32)
        {
            vw = width & ~31;
            Vector512<ushort> mask = Vector512.Create((ushort)0x7FFF), acc = Vector512<ushort>.Zero;
            for (int r = 0; r < height; r++)
                for (int i = 0; i < vw; i += 32)
                    acc = Vector512.Max(acc, Vector512.Load(p + (long)r * stride + i) & mask);
            m = Reduce(Vector256.Max(acc.GetLower(), acc.GetUpper()));
        }
        else if (SimdPaths.Use256 && width >= 16)
        {
            vw = width & ~15;
            Vector256<ushort> mask = Vector256.Create((ushort)0x7FFF), acc = Vector256<ushort>.Zero;
            for (int r = 0; r < height; r++)
                for (int i = 0; i < vw; i += 16)
                    acc = Vector256.Max(acc, Vector256.Load(p + (long)r * stride + i) & mask);
            m = Reduce(acc);
        }
        for (int r = 0; r < height; r++)
            for (int i = vw; i < width; i++)
                m = Math.Max(m, (uint)(p[(long)r * stride + i] & 0x7FFF));
        return m;
    }

    private static uint Reduce(Vector256<ushort> v)
    {
        Vector128<ushort> h = Vector128.Max(v.GetLower(), v.GetUpper());
        uint m = 0;
        for (int k = 0; k < 8; k++) m = Math.Max(m, h.GetElement(k));
        return m;
    }

    private static unsafe void EncodeRowBf16(ushort* src, byte* dst, int n, float scale)
    {
        int i = 0;
        if (SimdPaths.Use512)
        {
            Vector512<float> s = Vector512.Create(scale);
            for (; i <= n - 64; i += 64)
            {
                Fp8Spans.WidenBf16(Vector512.Load(src + i), out var a, out var b);
                Fp8Spans.WidenBf16(Vector512.Load(src + i + 32), out var c, out var d);
                Fp8Spans.Pack(
                    E4M3Format.Encode512((a.AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode512((b.AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode512((c.AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode512((d.AsSingle() / s).AsUInt32())).Store(dst + i);
            }
        }
        if (SimdPaths.Use256)
        {
            Vector256<float> s = Vector256.Create(scale);
            for (; i <= n - 32; i += 32)
            {
                Fp8Spans.WidenBf16(Vector256.Load(src + i), out var a, out var b);
                Fp8Spans.WidenBf16(Vector256.Load(src + i + 16), out var c, out var d);
                Fp8Spans.Pack(
                    E4M3Format.Encode256((a.AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode256((b.AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode256((c.AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode256((d.AsSingle() / s).AsUInt32())).Store(dst + i);
            }
        }
        for (; i < n; i++)
            dst[i] = (byte)E4M3Format.EncodeScalar(BitConverter.SingleToUInt32Bits(Bf16.ToSingle(src[i]) / scale));
    }

    // ---- quantize: float32 source ----------------------------------------------------------------------

    private static unsafe int QuantizeBlockRow(uint* w, int rows, int cols, int br, byte* q, float* scales)
    {
        int r0 = br * BlockSize, r1 = Math.Min(rows, r0 + BlockSize), nb = CeilDiv(cols);
        for (int bc = 0; bc < nb; bc++)
        {
            int c0 = bc * BlockSize, width = Math.Min(cols, c0 + BlockSize) - c0;
            uint amaxBits = BlockMaxMagnitude(w + (long)r0 * cols + c0, cols, r1 - r0, width);
            if (amaxBits >= 0x7F80_0000u) return br * nb + bc;
            float scale = ScaleOf(BitConverter.UInt32BitsToSingle(amaxBits));
            scales[br * nb + bc] = scale;
            for (int r = r0; r < r1; r++)
                EncodeRow(w + (long)r * cols + c0, q + (long)r * cols + c0, width, scale);
        }
        return -1;
    }

    private static unsafe uint BlockMaxMagnitude(uint* p, int stride, int height, int width)
    {
        uint m = 0;
        int vw = 0;
        if (SimdPaths.Use512 && width >= 16)
        {
            vw = width & ~15;
            Vector512<uint> mask = Vector512.Create(0x7FFF_FFFFu), acc = Vector512<uint>.Zero;
            for (int r = 0; r < height; r++)
                for (int i = 0; i < vw; i += 16)
                    acc = Vector512.Max(acc, Vector512.Load(p + (long)r * stride + i) & mask);
            m = Reduce(Vector256.Max(acc.GetLower(), acc.GetUpper()));
        }
        else if (SimdPaths.Use256 && width >= 8)
        {
            vw = width & ~7;
            Vector256<uint> mask = Vector256.Create(0x7FFF_FFFFu), acc = Vector256<uint>.Zero;
            for (int r = 0; r < height; r++)
                for (int i = 0; i < vw; i += 8)
                    acc = Vector256.Max(acc, Vector256.Load(p + (long)r * stride + i) & mask);
            m = Reduce(acc);
        }
        for (int r = 0; r < height; r++)
            for (int i = vw; i < width; i++)
                m = Math.Max(m, p[(long)r * stride + i] & 0x7FFF_FFFFu);
        return m;
    }

    private static uint Reduce(Vector256<uint> v)
    {
        Vector128<uint> h = Vector128.Max(v.GetLower(), v.GetUpper());
        return Math.Max(Math.Max(h.GetElement(0), h.GetElement(1)), Math.Max(h.GetElement(2), h.GetElement(3)));
    }

    private static unsafe void EncodeRow(uint* src, byte* dst, int n, float scale)
    {
        int i = 0;
        if (SimdPaths.Use512)
        {
            Vector512<float> s = Vector512.Create(scale);
            for (; i <= n - 64; i += 64)
            {
                Fp8Spans.Pack(
                    E4M3Format.Encode512((Vector512.Load(src + i).AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode512((Vector512.Load(src + i + 16).AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode512((Vector512.Load(src + i + 32).AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode512((Vector512.Load(src + i + 48).AsSingle() / s).AsUInt32())).Store(dst + i);
            }
        }
        if (SimdPaths.Use256)
        {
            Vector256<float> s = Vector256.Create(scale);
            for (; i <= n - 32; i += 32)
            {
                Fp8Spans.Pack(
                    E4M3Format.Encode256((Vector256.Load(src + i).AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode256((Vector256.Load(src + i + 8).AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode256((Vector256.Load(src + i + 16).AsSingle() / s).AsUInt32()),
                    E4M3Format.Encode256((Vector256.Load(src + i + 24).AsSingle() / s).AsUInt32())).Store(dst + i);
            }
        }
        for (; i < n; i++)
            dst[i] = (byte)E4M3Format.EncodeScalar(BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(src[i]) / scale));
    }

    // ---- dequantize ------------------------------------------------------------------------------------

    private static unsafe void DequantizeBlockRow<TOut>(byte* q, float* scales, int rows, int cols, int br, TOut* output, bool toBf16)
        where TOut : unmanaged
    {
        int r0 = br * BlockSize, r1 = Math.Min(rows, r0 + BlockSize), nb = CeilDiv(cols);
        for (int r = r0; r < r1; r++)
        {
            for (int bc = 0; bc < nb; bc++)
            {
                int c0 = bc * BlockSize, width = Math.Min(cols, c0 + BlockSize) - c0;
                long off = (long)r * cols + c0;
                float scale = scales[br * nb + bc];
                if (toBf16) DecodeRowBf16(q + off, (ushort*)(output + off), width, scale);
                else DecodeRow(q + off, (uint*)(output + off), width, scale);
            }
        }
    }

    private static unsafe void DecodeRow(byte* src, uint* dst, int n, float scale)
    {
        int i = 0;
        if (SimdPaths.Use512)
        {
            Vector512<float> s = Vector512.Create(scale);
            for (; i <= n - 64; i += 64)
            {
                Fp8Spans.Unpack(Vector512.Load(src + i), out var a, out var b, out var c, out var d);
                (E4M3Format.Decode512(a).AsSingle() * s).AsUInt32().Store(dst + i);
                (E4M3Format.Decode512(b).AsSingle() * s).AsUInt32().Store(dst + i + 16);
                (E4M3Format.Decode512(c).AsSingle() * s).AsUInt32().Store(dst + i + 32);
                (E4M3Format.Decode512(d).AsSingle() * s).AsUInt32().Store(dst + i + 48);
            }
        }
        if (SimdPaths.Use256)
        {
            Vector256<float> s = Vector256.Create(scale);
            for (; i <= n - 32; i += 32)
            {
                Fp8Spans.Unpack(Vector256.Load(src + i), out var a, out var b, out var c, out var d);
                (E4M3Format.Decode256(a).AsSingle() * s).AsUInt32().Store(dst + i);
                (E4M3Format.Decode256(b).AsSingle() * s).AsUInt32().Store(dst + i + 8);
                (E4M3Format.Decode256(c).AsSingle() * s).AsUInt32().Store(dst + i + 16);
                (E4M3Format.Decode256(d).AsSingle() * s).AsUInt32().Store(dst + i + 24);
            }
        }
        for (; i < n; i++)
            dst[i] = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(E4M3Format.DecodeScalar(src[i])) * scale);
    }

    private static unsafe void DecodeRowBf16(byte* src, ushort* dst, int n, float scale)
    {
        int i = 0;
        if (SimdPaths.Use512)
        {
            Vector512<float> s = Vector512.Create(scale);
            for (; i <= n - 64; i += 64)
            {
                Fp8Spans.Unpack(Vector512.Load(src + i), out var a, out var b, out var c, out var d);
                Vector512<uint> ra = Bf16.Round512((E4M3Format.Decode512(a).AsSingle() * s).AsUInt32());
                Vector512<uint> rb = Bf16.Round512((E4M3Format.Decode512(b).AsSingle() * s).AsUInt32());
                Vector512<uint> rc = Bf16.Round512((E4M3Format.Decode512(c).AsSingle() * s).AsUInt32());
                Vector512<uint> rd = Bf16.Round512((E4M3Format.Decode512(d).AsSingle() * s).AsUInt32());
                Vector512.Narrow(ra, rb).Store(dst + i);
                Vector512.Narrow(rc, rd).Store(dst + i + 32);
            }
        }
        if (SimdPaths.Use256)
        {
            Vector256<float> s = Vector256.Create(scale);
            for (; i <= n - 32; i += 32)
            {
                Fp8Spans.Unpack(Vector256.Load(src + i), out var a, out var b, out var c, out var d);
                Vector256<uint> ra = Bf16.Round256((E4M3Format.Decode256(a).AsSingle() * s).AsUInt32());
                Vector256<uint> rb = Bf16.Round256((E4M3Format.Decode256(b).AsSingle() * s).AsUInt32());
                Vector256<uint> rc = Bf16.Round256((E4M3Format.Decode256(c).AsSingle() * s).AsUInt32());
                Vector256<uint> rd = Bf16.Round256((E4M3Format.Decode256(d).AsSingle() * s).AsUInt32());
                Vector256.Narrow(ra, rb).Store(dst + i);
                Vector256.Narrow(rc, rd).Store(dst + i + 16);
            }
        }
        for (; i < n; i++)
            dst[i] = Bf16.FromSingle(BitConverter.UInt32BitsToSingle(E4M3Format.DecodeScalar(src[i])) * scale);
    }
}
