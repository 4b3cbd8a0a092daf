using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>
/// DeepSeek-V4's routed-expert layout: a weight [rows, cols] (row-major, cols = the input dimension) becomes FP4
/// e2m1 codes packed two a byte ([rows, cols/2], the checkpoint's I8; element 2k in the low nibble) plus one E8M0
/// scale per 32 values along the row ([rows, cols/32], <c>F8_E8M0</c>).
/// <para>Per group: e = ceil(log2(amax / 6)) exactly (amax 0: e = 0; see <see cref="E8M0.ScaleFor"/>), scale code
/// e + 127, codes <c>RNE_e2m1(w / 2^e)</c> (<see cref="Fp4E2M1"/>: ties to the even code, zero always code 0).
/// This is the rule that made the reference tiny-dsv4-fp8 from tiny-dsv4, reproduced byte for byte.
/// Values are <c>e2m1(code) * 2^(e-127)</c>, exact in float32 and in bf16 (scales of 2^126 and up, which no
/// finite weight produces, overflow to infinity as any float product would).</para>
/// <para>cols must be a multiple of 32 (so also even); the groups then tile the flat span, and any slab of whole
/// rows is a valid call. Non-finite weights throw <see cref="ArgumentException"/> naming the group; a 0xFF (NaN)
/// scale throws <see cref="InvalidDataException"/>. Messages name no file or tensor: callers prefix them.</para>
/// All methods run in parallel chunks (<c>maxDegreeOfParallelism</c>: -1 = all cores, 1 = the calling thread only).
/// </summary>
public static class Fp4BlockQuantizer
{
    public const int GroupSize = 32;

    /// <summary>Bytes of packed codes per group.</summary>
    private const int GroupBytes = GroupSize / 2;

    /// <summary>Groups per parallel work item (64K values).</summary>
    private const int GroupsPerChunk = 2048;

    private const uint MaxBits = E2M1Kernels.MaxBits;   // 6.0f

    /// <summary>Shape of the packed codes ([rows, cols/2], the checkpoint's I8 tensor) of a [rows, cols] weight.</summary>
    public static (int Rows, int Cols) PackedShape(int rows, int cols)
    {
        CheckShape(rows, cols);
        return (rows, cols / 2);
    }

    /// <summary>Shape of the E8M0 scales ([rows, cols/32]) of a [rows, cols] weight.</summary>
    public static (int Rows, int Cols) ScaleShape(int rows, int cols)
    {
        CheckShape(rows, cols);
        return (rows, cols / GroupSize);
    }

    /// <summary>
    /// Checks a stored pair, packed codes [out, in/2] and scales [out, in/32], and returns the weight's logical
    /// [rows, cols] = [out, in]. Throws <see cref="InvalidDataException"/> saying what shape was expected.
    /// </summary>
    public static (int Rows, int Cols) ValidateLayout(ReadOnlySpan<long> packedShape, ReadOnlySpan<long> scaleShape)
    {
        if (packedShape.Length != 2)
            throw new InvalidDataException($"FP4 weight has shape {Pow2Blocks.ShapeText(packedShape)}; expected 2-D [out, in/2] (two values a byte)");
        long rows = packedShape[0], cols = packedShape[1] * 2;
        if (rows < 0 || cols < 0 || rows * cols > int.MaxValue)
            throw new InvalidDataException($"FP4 weight {Pow2Blocks.ShapeText(packedShape)} holds {rows * cols} values, more than one span can address");
        if (cols % GroupSize != 0)
            throw new InvalidDataException($"FP4 weight {Pow2Blocks.ShapeText(packedShape)} has rows of {cols} values, not a multiple of the {GroupSize}-value scale group");
        if (scaleShape.Length != 2 || scaleShape[0] != rows || scaleShape[1] != cols / GroupSize)
            throw new InvalidDataException($"FP4 scale has shape {Pow2Blocks.ShapeText(scaleShape)}; weight {Pow2Blocks.ShapeText(packedShape)} " +
                $"([{rows}, {cols}] values) needs [{rows}, {cols / GroupSize}] (one E8M0 scale per {GroupSize} values along a row)");
        return ((int)rows, (int)cols);
    }

    /// <summary>Quantizes bf16 weights (raw bits) by the rule, writing codes and scales.</summary>
    public static unsafe void Quantize(ReadOnlySpan<ushort> weightBf16, int rows, int cols, Span<byte> packedOut, Span<byte> scaleOut,
        int maxDegreeOfParallelism = -1)
    {
        int groups = CheckBuffers(rows, cols, weightBf16.Length, packedOut.Length, scaleOut.Length, exactScales: false);
        fixed (ushort* w = weightBf16) fixed (byte* q = packedOut) fixed (byte* s = scaleOut)
        {
            nint pw = (nint)w, pq = (nint)q, ps = (nint)s;
            ThrowIfNonFinite(Pow2Blocks.ForEachChunk(groups, GroupsPerChunk, maxDegreeOfParallelism,
                (g0, g1) => QuantizeGroups<Bf16Source>((void*)pw, (byte*)pq, (byte*)ps, g0, g1)), cols);
        }
    }

    /// <summary>Quantizes float32 weights by the rule, writing codes and scales.</summary>
    public static unsafe void Quantize(ReadOnlySpan<float> weight, int rows, int cols, Span<byte> packedOut, Span<byte> scaleOut,
        int maxDegreeOfParallelism = -1)
    {
        int groups = CheckBuffers(rows, cols, weight.Length, packedOut.Length, scaleOut.Length, exactScales: false);
        fixed (float* w = weight) fixed (byte* q = packedOut) fixed (byte* s = scaleOut)
        {
            nint pw = (nint)w, pq = (nint)q, ps = (nint)s;
            ThrowIfNonFinite(Pow2Blocks.ForEachChunk(groups, GroupsPerChunk, maxDegreeOfParallelism,
                (g0, g1) => QuantizeGroups<F32Source>((void*)pw, (byte*)pq, (byte*)ps, g0, g1)), cols);
        }
    }

    /// <summary>The rule's scales alone, as <see cref="Quantize(ReadOnlySpan{ushort}, int, int, Span{byte}, Span{byte}, int)"/>
    /// writes them (one max per group, no codes): for layouts that store each scale before its weight.</summary>
    public static unsafe void Scales(ReadOnlySpan<ushort> weightBf16, int rows, int cols, Span<byte> scaleOut, int maxDegreeOfParallelism = -1)
    {
        int groups = CheckBuffers(rows, cols, weightBf16.Length, weightBf16.Length, scaleOut.Length, exactScales: false);
        fixed (ushort* w = weightBf16) fixed (byte* s = scaleOut)
        {
            nint pw = (nint)w, ps = (nint)s;
            ThrowIfNonFinite(Pow2Blocks.ForEachChunk(groups, GroupsPerChunk, maxDegreeOfParallelism,
                (g0, g1) => ScaleGroups<Bf16Source>((void*)pw, (byte*)ps, g0, g1)), cols);
        }
    }

    /// <summary>The rule's scales alone for float32 weights.</summary>
    public static unsafe void Scales(ReadOnlySpan<float> weight, int rows, int cols, Span<byte> scaleOut, int maxDegreeOfParallelism = -1)
    {
        int groups = CheckBuffers(rows, cols, weight.Length, weight.Length, scaleOut.Length, exactScales: false);
        fixed (float* w = weight) fixed (byte* s = scaleOut)
        {
            nint pw = (nint)w, ps = (nint)s;
            ThrowIfNonFinite(Pow2Blocks.ForEachChunk(groups, GroupsPerChunk, maxDegreeOfParallelism,
                (g0, g1) => ScaleGroups<F32Source>((void*)pw, (byte*)ps, g0, g1)), cols);
        }
    }

    /// <summary>
    /// Encodes bf16 weights with given scales (for example the <c>.scale</c> tensor of the checkpoint they were
    /// dequantized from: recomputing scales from amax cannot always give back the stored ones), codes
    /// <c>RNE_e2m1(clamp(w / s, ±6))</c>. Returns how many values the codes do not reproduce exactly
    /// (0: lossless); NaN and infinities saturate and count.
    /// </summary>
    public static unsafe int QuantizeWithScales(ReadOnlySpan<ushort> weightBf16, ReadOnlySpan<byte> scales, int rows, int cols,
        Span<byte> packedOut, int maxDegreeOfParallelism = -1)
    {
        int groups = CheckBuffers(rows, cols, weightBf16.Length, packedOut.Length, scales.Length, exactScales: true);
        ThrowIfNaNScale(scales, cols);
        int inexact = 0;
        fixed (ushort* w = weightBf16) fixed (byte* q = packedOut) fixed (byte* s = scales)
        {
            nint pw = (nint)w, pq = (nint)q, ps = (nint)s;
            Pow2Blocks.ForEachChunk(groups, GroupsPerChunk, maxDegreeOfParallelism, (g0, g1) =>
            {
                Interlocked.Add(ref inexact, EncodeGroupsWithScales<Bf16Source>((void*)pw, (byte*)pq, (byte*)ps, g0, g1));
                return -1;
            });
        }
        return inexact;
    }

    /// <summary>value = e2m1(code) * 2^(scale-127), in float32 (exact).</summary>
    public static unsafe void Dequantize(ReadOnlySpan<byte> packed, ReadOnlySpan<byte> scales, int rows, int cols, Span<float> output,
        int maxDegreeOfParallelism = -1)
    {
        int groups = CheckBuffers(rows, cols, output.Length, packed.Length, scales.Length, exactScales: true);
        ThrowIfNaNScale(scales, cols);
        fixed (byte* q = packed) fixed (byte* s = scales) fixed (float* o = output)
        {
            nint pq = (nint)q, ps = (nint)s, po = (nint)o;
            Pow2Blocks.ForEachChunk(groups, GroupsPerChunk, maxDegreeOfParallelism,
                (g0, g1) => { DequantizeGroups((byte*)pq, (byte*)ps, g0, g1, (void*)po, toBf16: false); return -1; });
        }
    }

    /// <summary>bf16(e2m1(code) * 2^(scale-127)), the float32 value rounded to nearest even; exact for every code
    /// and scale (all are multiples of 2^-128, within bf16's subnormals).</summary>
    public static unsafe void DequantizeToBf16(ReadOnlySpan<byte> packed, ReadOnlySpan<byte> scales, int rows, int cols, Span<ushort> output,
        int maxDegreeOfParallelism = -1)
    {
        int groups = CheckBuffers(rows, cols, output.Length, packed.Length, scales.Length, exactScales: true);
        ThrowIfNaNScale(scales, cols);
        fixed (byte* q = packed) fixed (byte* s = scales) fixed (ushort* o = output)
        {
            nint pq = (nint)q, ps = (nint)s, po = (nint)o;
            Pow2Blocks.ForEachChunk(groups, GroupsPerChunk, maxDegreeOfParallelism,
                (g0, g1) => { DequantizeGroups((byte*)pq, (byte*)ps, g0, g1, (void*)po, toBf16: true); return -1; });
        }
    }

    // ---- checks ----------------------------------------------------------------------------------------

    private static int CheckShape(int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        if ((cols & 1) != 0)
            throw new ArgumentException($"FP4 weight [{rows}, {cols}]: a row of {cols} values is odd; FP4 packs two values a byte, and its scale groups are {GroupSize} values.", nameof(cols));
        if (cols % GroupSize != 0)
            throw new ArgumentException($"FP4 weight [{rows}, {cols}]: a row of {cols} values is not a multiple of the {GroupSize}-value scale group.", nameof(cols));
        long n = (long)rows * cols;
        if (n > int.MaxValue) throw new ArgumentException($"FP4 weight [{rows}, {cols}] has {n} values, more than one span can address.", nameof(rows));
        return (int)(n / GroupSize);
    }

    /// <summary>Values and codes need at least the weight's size; scales that are an input must match exactly
    /// (a scale tensor of another size is a layout error, not a roomy buffer).</summary>
    private static int CheckBuffers(int rows, int cols, int valuesLength, int packedLength, int scaleLength, bool exactScales)
    {
        int groups = CheckShape(rows, cols);
        long n = (long)groups * GroupSize;
        if (valuesLength < n) throw new ArgumentException($"Weight/output holds {valuesLength} values; FP4 weight [{rows}, {cols}] needs {n}.");
        if (packedLength < n / 2) throw new ArgumentException($"Packed FP4 buffer holds {packedLength} bytes; [{rows}, {cols}] needs {n / 2} ([{rows}, {cols / 2}]).");
        if (exactScales ? scaleLength != groups : scaleLength < groups)
            throw new ArgumentException($"FP4 scale holds {scaleLength} bytes; weight [{rows}, {cols}] needs {(exactScales ? "exactly " : "")}{groups} " +
                $"([{rows}, {cols / GroupSize}], one per {GroupSize} values along a row).");
        return groups;
    }

    private static void ThrowIfNaNScale(ReadOnlySpan<byte> scales, int cols)
    {
        int i = scales.IndexOf(E8M0.NaNCode);
        if (i < 0) return;
        int perRow = cols / GroupSize;
        throw new InvalidDataException($"FP4 scale [{i / perRow}, {i % perRow}] is 0xFF, which is NaN in E8M0");
    }

    private static void ThrowIfNonFinite(int badGroup, int cols)
    {
        if (badGroup < 0) return;
        int perRow = cols / GroupSize, c0 = badGroup % perRow * GroupSize;
        throw new ArgumentException($"Non-finite value (NaN or infinity) in weight row {badGroup / perRow}, columns {c0}..{c0 + GroupSize - 1}; cannot quantize it to FP4.");
    }

    // ---- quantize ---------------------------------------------------------------------------------------

    /// <summary>Groups [g0, g1) by the rule; returns the first group holding a non-finite value, or -1.</summary>
    private static unsafe int QuantizeGroups<TSrc>(void* w, byte* q, byte* s, int g0, int g1) where TSrc : struct, IF32Source
    {
        int g = g0;
        if (SimdPaths.Use512)
        {
            Vector512<uint> abs = Vector512.Create(0x7FFF_FFFFu);
            for (; g + 2 <= g1; g += 2)
            {
                TSrc.Load32(w, (nint)g * GroupSize, out var a, out var b);
                TSrc.Load32(w, (nint)g * GroupSize + GroupSize, out var c, out var d);
                uint m0 = Pow2Blocks.MaxLane(Vector512.Max(a & abs, b & abs)), m1 = Pow2Blocks.MaxLane(Vector512.Max(c & abs, d & abs));
                if (m0 >= 0x7F80_0000u) return g;
                if (m1 >= 0x7F80_0000u) return g + 1;
                byte s0 = E8M0.ScaleForBits(m0, MaxBits), s1 = E8M0.ScaleForBits(m1, MaxBits);
                s[g] = s0;
                s[g + 1] = s1;
                EncodeTwoGroups512<No>(a, b, c, d, s0, s1, q + (nint)g * GroupBytes);
            }
        }
        if (SimdPaths.Use256)
        {
            Vector256<uint> abs = Vector256.Create(0x7FFF_FFFFu);
            for (; g < g1; g++)
            {
                TSrc.Load16(w, (nint)g * GroupSize, out var a, out var b);
                TSrc.Load16(w, (nint)g * GroupSize + 16, out var c, out var d);
                uint m = Pow2Blocks.MaxLane(Vector256.Max(Vector256.Max(a & abs, b & abs), Vector256.Max(c & abs, d & abs)));
                if (m >= 0x7F80_0000u) return g;
                byte sc = E8M0.ScaleForBits(m, MaxBits);
                s[g] = sc;
                EncodeGroup256<No>(a, b, c, d, sc, q + (nint)g * GroupBytes);
            }
        }
        for (; g < g1; g++)
        {
            nint i0 = (nint)g * GroupSize;
            uint m = 0;
            for (int k = 0; k < GroupSize; k++) m = Math.Max(m, TSrc.Load(w, i0 + k) & 0x7FFF_FFFFu);
            if (m >= 0x7F80_0000u) return g;
            byte sc = E8M0.ScaleForBits(m, MaxBits);
            s[g] = sc;
            EncodeGroupScalar<TSrc, No>(w, i0, sc, q + (nint)g * GroupBytes);
        }
        return -1;
    }

    /// <summary>The scales of groups [g0, g1) (the amax and scale steps of <c>QuantizeGroups</c>).</summary>
    private static unsafe int ScaleGroups<TSrc>(void* w, byte* s, int g0, int g1) where TSrc : struct, IF32Source
    {
        for (int g = g0; g < g1; g++)
        {
            uint m = TSrc.MaxMagnitude(w, (nint)g * GroupSize, GroupSize);
            if (m >= 0x7F80_0000u) return g;
            s[g] = E8M0.ScaleForBits(m, MaxBits);
        }
        return -1;
    }

    /// <summary>Groups [g0, g1) with the given scales; returns how many values the codes miss.</summary>
    private static unsafe int EncodeGroupsWithScales<TSrc>(void* w, byte* q, byte* s, int g0, int g1) where TSrc : struct, IF32Source
    {
        int g = g0, inexact = 0;
        if (SimdPaths.Use512)
            for (; g + 2 <= g1; g += 2)
            {
                TSrc.Load32(w, (nint)g * GroupSize, out var a, out var b);
                TSrc.Load32(w, (nint)g * GroupSize + GroupSize, out var c, out var d);
                inexact += EncodeTwoGroups512<Yes>(a, b, c, d, s[g], s[g + 1], q + (nint)g * GroupBytes);
            }
        if (SimdPaths.Use256)
            for (; g < g1; g++)
            {
                TSrc.Load16(w, (nint)g * GroupSize, out var a, out var b);
                TSrc.Load16(w, (nint)g * GroupSize + 16, out var c, out var d);
                inexact += EncodeGroup256<Yes>(a, b, c, d, s[g], q + (nint)g * GroupBytes);
            }
        for (; g < g1; g++)
            inexact += EncodeGroupScalar<TSrc, Yes>(w, (nint)g * GroupSize, s[g], q + (nint)g * GroupBytes);
        return inexact;
    }

    // w / 2^e is computed as w * 2^-e: both are the correctly rounded quotient, and 2^-e is exact for every code.

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe int EncodeTwoGroups512<TCount>(Vector512<uint> a, Vector512<uint> b, Vector512<uint> c, Vector512<uint> d,
        byte s0, byte s1, byte* dst) where TCount : struct, IFlag
    {
        Vector512<float> r0 = Vector512.Create(E8M0.ReciprocalBits(s0)).AsSingle(), r1 = Vector512.Create(E8M0.ReciprocalBits(s1)).AsSingle();
        Vector512<float> ya = a.AsSingle() * r0, yb = b.AsSingle() * r0, yc = c.AsSingle() * r1, yd = d.AsSingle() * r1;
        Vector512<uint> ca = E2M1Kernels.Encode512(ya.AsUInt32()), cb = E2M1Kernels.Encode512(yb.AsUInt32());
        Vector512<uint> cc = E2M1Kernels.Encode512(yc.AsUInt32()), cd = E2M1Kernels.Encode512(yd.AsUInt32());
        E2M1Kernels.PackNibbles(Fp8Spans.Pack(ca, cb, cc, cd)).Store(dst);
        if (!TCount.On) return 0;
        ulong exact = Vector512.Equals(E2M1Kernels.Decode512(ca).AsSingle(), ya).ExtractMostSignificantBits()
            | Vector512.Equals(E2M1Kernels.Decode512(cb).AsSingle(), yb).ExtractMostSignificantBits() << 16
            | Vector512.Equals(E2M1Kernels.Decode512(cc).AsSingle(), yc).ExtractMostSignificantBits() << 32
            | Vector512.Equals(E2M1Kernels.Decode512(cd).AsSingle(), yd).ExtractMostSignificantBits() << 48;
        return 64 - BitOperations.PopCount(exact);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe int EncodeGroup256<TCount>(Vector256<uint> a, Vector256<uint> b, Vector256<uint> c, Vector256<uint> d,
        byte scale, byte* dst) where TCount : struct, IFlag
    {
        Vector256<float> r = Vector256.Create(E8M0.ReciprocalBits(scale)).AsSingle();
        Vector256<float> ya = a.AsSingle() * r, yb = b.AsSingle() * r, yc = c.AsSingle() * r, yd = d.AsSingle() * r;
        Vector256<uint> ca = E2M1Kernels.Encode256(ya.AsUInt32()), cb = E2M1Kernels.Encode256(yb.AsUInt32());
        Vector256<uint> cc = E2M1Kernels.Encode256(yc.AsUInt32()), cd = E2M1Kernels.Encode256(yd.AsUInt32());
        E2M1Kernels.PackNibbles(Fp8Spans.Pack(ca, cb, cc, cd)).Store(dst);
        if (!TCount.On) return 0;
        uint exact = Vector256.Equals(E2M1Kernels.Decode256(ca).AsSingle(), ya).ExtractMostSignificantBits()
            | Vector256.Equals(E2M1Kernels.Decode256(cb).AsSingle(), yb).ExtractMostSignificantBits() << 8
            | Vector256.Equals(E2M1Kernels.Decode256(cc).AsSingle(), yc).ExtractMostSignificantBits() << 16
            | Vector256.Equals(E2M1Kernels.Decode256(cd).AsSingle(), yd).ExtractMostSignificantBits() << 24;
        return 32 - BitOperations.PopCount(exact);
    }

    private static unsafe int EncodeGroupScalar<TSrc, TCount>(void* w, nint i0, byte scale, byte* dst)
        where TSrc : struct, IF32Source where TCount : struct, IFlag
    {
        float r = BitConverter.UInt32BitsToSingle(E8M0.ReciprocalBits(scale));
        int inexact = 0;
        for (int k = 0; k < GroupBytes; k++)
        {
            float y0 = BitConverter.UInt32BitsToSingle(TSrc.Load(w, i0 + 2 * k)) * r;
            float y1 = BitConverter.UInt32BitsToSingle(TSrc.Load(w, i0 + 2 * k + 1)) * r;
            uint c0 = E2M1Kernels.EncodeScalar(BitConverter.SingleToUInt32Bits(y0));
            uint c1 = E2M1Kernels.EncodeScalar(BitConverter.SingleToUInt32Bits(y1));
            dst[k] = (byte)(c0 | (c1 << 4));
            if (TCount.On)
                inexact += (BitConverter.UInt32BitsToSingle(E2M1Kernels.DecodeScalar(c0)) == y0 ? 0 : 1)
                    + (BitConverter.UInt32BitsToSingle(E2M1Kernels.DecodeScalar(c1)) == y1 ? 0 : 1);
        }
        return inexact;
    }

    // ---- dequantize ------------------------------------------------------------------------------------

    /// <summary>bf16 output takes the top half of the float32 product: e2m1 values have one mantissa bit, so
    /// every product (subnormal, or infinity past 2^128, included) has zero low 16 bits, and truncation is exact.</summary>
    private static unsafe void DequantizeGroups(byte* q, byte* s, int g0, int g1, void* output, bool toBf16)
    {
        float* of = (float*)output;
        ushort* ob = (ushort*)output;
        int g = g0;
        if (SimdPaths.Use512)
            for (; g + 2 <= g1; g += 2)
            {
                Fp8Spans.Unpack(E2M1Kernels.UnpackNibbles(Vector256.Load(q + (nint)g * GroupBytes)), out var a, out var b, out var c, out var d);
                Vector512<float> s0 = Vector512.Create(E8M0.ToSingle(s[g])), s1 = Vector512.Create(E8M0.ToSingle(s[g + 1]));
                Vector512<uint> va = (E2M1Kernels.Decode512(a).AsSingle() * s0).AsUInt32(), vb = (E2M1Kernels.Decode512(b).AsSingle() * s0).AsUInt32();
                Vector512<uint> vc = (E2M1Kernels.Decode512(c).AsSingle() * s1).AsUInt32(), vd = (E2M1Kernels.Decode512(d).AsSingle() * s1).AsUInt32();
                nint o = (nint)g * GroupSize;
                if (toBf16)
                {
                    Vector512.Narrow(va >>> 16, vb >>> 16).Store(ob + o);
                    Vector512.Narrow(vc >>> 16, vd >>> 16).Store(ob + o + 32);
                }
                else
                {
                    va.AsSingle().Store(of + o);
                    vb.AsSingle().Store(of + o + 16);
                    vc.AsSingle().Store(of + o + 32);
                    vd.AsSingle().Store(of + o + 48);
                }
            }
        if (SimdPaths.Use256)
            for (; g < g1; g++)
            {
                Fp8Spans.Unpack(E2M1Kernels.UnpackNibbles(Vector128.Load(q + (nint)g * GroupBytes)), out var a, out var b, out var c, out var d);
                Vector256<float> sc = Vector256.Create(E8M0.ToSingle(s[g]));
                Vector256<uint> va = (E2M1Kernels.Decode256(a).AsSingle() * sc).AsUInt32(), vb = (E2M1Kernels.Decode256(b).AsSingle() * sc).AsUInt32();
                Vector256<uint> vc = (E2M1Kernels.Decode256(c).AsSingle() * sc).AsUInt32(), vd = (E2M1Kernels.Decode256(d).AsSingle() * sc).AsUInt32();
                nint o = (nint)g * GroupSize;
                if (toBf16)
                {
                    Vector256.Narrow(va >>> 16, vb >>> 16).Store(ob + o);
                    Vector256.Narrow(vc >>> 16, vd >>> 16).Store(ob + o + 16);
                }
                else
                {
                    va.AsSingle().Store(of + o);
                    vb.AsSingle().Store(of + o + 8);
                    vc.AsSingle().Store(of + o + 16);
                    vd.AsSingle().Store(of + o + 24);
                }
            }
        for (; g < g1; g++)
        {
            float sc = E8M0.ToSingle(s[g]);
            for (int k = 0; k < GroupSize; k++)
            {
                byte packed = q[(nint)g * GroupBytes + k / 2];
                float v = BitConverter.UInt32BitsToSingle(E2M1Kernels.DecodeScalar((uint)(k % 2 == 0 ? packed & 0xF : packed >> 4))) * sc;
                nint o = (nint)g * GroupSize + k;
                if (toBf16) ob[o] = (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16);
                else of[o] = v;
            }
        }
    }
}
