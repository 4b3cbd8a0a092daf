using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics.Ggml;

/// <summary>
/// One entry point for every ggml type a GGUF writer emits: float32 rows to ggml bytes and back.
/// The quantized bytes equal what llama-quantize writes bit for bit: without an importance matrix ggml's
/// reference quantizers (quantize_row_*_ref; for IQ4_NL/IQ4_XS quantize_iq4_*), with one its weighted
/// quantize_row_*_impl; decoding equals ggml's to_float bit for bit. Block types refuse NaN and
/// infinity (ArgumentException naming the value), for which ggml's result is not defined.
/// </summary>
public static unsafe class GgmlQuantizer
{
    /// <summary>Values per parallel work item: enough to amortise scheduling, small enough to balance.</summary>
    private const int ChunkValues = 1 << 15;

    /// <summary>Quantizes <paramref name="src"/> (a whole number of blocks) into exactly <see cref="GgmlTypeInfo.ByteSize"/> bytes.</summary>
    public static void Quantize(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst) => Quantize(type, src, dst, -1);

    /// <param name="maxDegreeOfParallelism">-1 for all cores, 1 for the calling thread only.</param>
    public static void Quantize(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst, int maxDegreeOfParallelism)
    {
        if (!GgmlTypeInfo.CanQuantize(type)) throw new NotSupportedException($"cannot quantize to ggml type {type}");
        long need = GgmlTypeInfo.ByteSize(type, src.Length);
        if (dst.Length != need)
            throw new ArgumentException($"{type}: {src.Length} values need {need} bytes, destination has {dst.Length}", nameof(dst));
        int block = GgmlTypeInfo.BlockSize(type), bytes = GgmlTypeInfo.BytesPerBlock(type);
        fixed (float* ps = src)
        fixed (byte* pd = dst)
        {
            ForChunks(src.Length / block, block, maxDegreeOfParallelism, (nint)ps, (nint)pd,
                (s, d, first, count) =>
                {
                    if (type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16))
                        EnsureFinite(type, (float*)s + (long)first * block, (long)count * block, (long)first * block);
                    QuantizeBlocks(type, (float*)s + (long)first * block, (byte*)d + (long)first * bytes, count);
                });
        }
    }

    /// <summary>
    /// Quantizes whole rows as llama-quantize does with an importance matrix: <paramref name="importance"/> holds
    /// one weight per column (its length is the row length, a whole number of blocks) and applies to every row of
    /// <paramref name="src"/>; empty means no importance matrix, the reference quantizer (same bytes as
    /// <see cref="Quantize(GgmlType, ReadOnlySpan{float}, Span{byte}, int)"/>). Q8_0, MXFP4 and the float types
    /// ignore the weights, as ggml does.
    /// </summary>
    /// <param name="maxDegreeOfParallelism">-1 for all cores, 1 for the calling thread only.</param>
    public static void Quantize(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst, ReadOnlySpan<float> importance,
        int maxDegreeOfParallelism)
    {
        if (importance.IsEmpty || !UsesImportance(type))
        {
            Quantize(type, src, dst, maxDegreeOfParallelism);
            return;
        }
        if (!GgmlTypeInfo.CanQuantize(type)) throw new NotSupportedException($"cannot quantize to ggml type {type}");
        int rowLength = importance.Length, block = GgmlTypeInfo.BlockSize(type);
        if (rowLength % block != 0)
            throw new ArgumentException($"{type}: a row of {rowLength} values (the importance length) is not a whole number of {block}-value blocks", nameof(importance));
        if (src.Length % rowLength != 0)
            throw new ArgumentException($"{type}: {src.Length} values are not whole rows of {rowLength} (the importance length)", nameof(src));
        long need = GgmlTypeInfo.ByteSize(type, src.Length);
        if (dst.Length != need)
            throw new ArgumentException($"{type}: {src.Length} values need {need} bytes, destination has {dst.Length}", nameof(dst));
        for (int i = 0; i < importance.Length; i++)
            if (!float.IsFinite(importance[i]))
                throw new ArgumentException($"{type}: importance weight {i} is {importance[i]}; weights must be finite", nameof(importance));
        int rows = src.Length / rowLength, rowBytes = (int)GgmlTypeInfo.ByteSize(type, rowLength);
        fixed (float* ps = src)
        fixed (byte* pd = dst)
        fixed (float* pw = importance)
        {
            nint w = (nint)pw;
            ForChunks(rows, rowLength, maxDegreeOfParallelism, (nint)ps, (nint)pd, (s, d, first, count) =>
            {
                float* x = (float*)s + (long)first * rowLength;
                EnsureFinite(type, x, (long)count * rowLength, (long)first * rowLength);
                var qw = new ReadOnlySpan<float>((float*)w, rowLength);
                for (int r = 0; r < count; r++)
                    QuantizeRowWithImportance(type, new ReadOnlySpan<float>(x + (long)r * rowLength, rowLength),
                        new Span<byte>((byte*)d + (long)(first + r) * rowBytes, rowBytes), qw, Vector256.IsHardwareAccelerated);
            });
        }
    }

    /// <summary>True for the types whose ggml quantizer reads an importance matrix.</summary>
    public static bool UsesImportance(GgmlType type) => type is GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0
        or GgmlType.Q5_1 or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K
        or GgmlType.IQ4_NL or GgmlType.IQ4_XS;

    /// <summary>One row through ggml's quantize_row_*_impl (or quantize_iq4_* with weights).</summary>
    /// <param name="vector">use the Vector256 searches (tests pin both; the bytes are the same)</param>
    internal static void QuantizeRowWithImportance(GgmlType type, ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, bool vector)
    {
        int block = GgmlTypeInfo.BlockSize(type), bytes = GgmlTypeInfo.BytesPerBlock(type);
        if (type is GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1)
        {
            LegacyQuants.ImportanceRow(type, x, y, qw, vector);
            return;
        }
        for (int b = 0; b < x.Length / block; b++)
        {
            var xb = x.Slice(b * block, block);
            var yb = y.Slice(b * bytes, bytes);
            var wb = qw.Slice(b * block, block);
            switch (type)
            {
                case GgmlType.Q2_K: KQuantLowBits.Q2KImportance(xb, yb, wb, vector); break;
                case GgmlType.Q3_K: KQuantLowBits.Q3KImportance(xb, yb, wb, vector); break;
                case GgmlType.Q4_K: KQuantImportance.Q4KOrQ5K(xb, yb, wb, q5: false, vector); break;
                case GgmlType.Q5_K: KQuantImportance.Q4KOrQ5K(xb, yb, wb, q5: true, vector); break;
                case GgmlType.Q6_K: KQuantImportance.Q6K(xb, yb, wb, vector); break;
                case GgmlType.IQ4_NL: Iq4Quants.Block(xb, yb, wb, nl: true); break;
                case GgmlType.IQ4_XS: Iq4Quants.Block(xb, yb, wb, nl: false); break;
                default: throw new NotSupportedException($"{type} has no importance-weighted quantizer");
            }
        }
    }

    /// <summary>Decodes <paramref name="src"/> (whole blocks) into exactly as many floats as it holds.</summary>
    public static void Dequantize(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst) => Dequantize(type, src, dst, -1);

    public static void Dequantize(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst, int maxDegreeOfParallelism)
    {
        if (!GgmlTypeInfo.CanQuantize(type)) throw new NotSupportedException($"cannot decode ggml type {type}");
        long need = GgmlTypeInfo.ByteSize(type, dst.Length);
        if (src.Length != need)
            throw new ArgumentException($"{type}: {dst.Length} values need {need} bytes, source has {src.Length}", nameof(src));
        int block = GgmlTypeInfo.BlockSize(type), bytes = GgmlTypeInfo.BytesPerBlock(type);
        fixed (byte* ps = src)
        fixed (float* pd = dst)
        {
            ForChunks(dst.Length / block, block, maxDegreeOfParallelism, (nint)ps, (nint)pd,
                (s, d, first, count) => DequantizeBlocks(type, (byte*)s + (long)first * bytes, (float*)d + (long)first * block, count));
        }
    }

    private delegate void ChunkAction(nint src, nint dst, int firstBlock, int blockCount);

    private static void ForChunks(int blocks, int blockSize, int maxDop, nint src, nint dst, ChunkAction action)
    {
        int perChunk = Math.Max(1, ChunkValues / blockSize);
        int chunks = (blocks + perChunk - 1) / perChunk;
        if (chunks <= 1 || maxDop == 1)
        {
            action(src, dst, 0, blocks);
            return;
        }
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = maxDop }, c =>
        {
            int first = c * perChunk;
            action(src, dst, first, Math.Min(perChunk, blocks - first));
        });
    }

    /// <summary>
    /// Block quantization of NaN or infinity has no meaningful result (ggml's depends on comparison order and
    /// undefined float-to-int casts), so it is refused, naming the value's index.
    /// </summary>
    private static void EnsureFinite(GgmlType type, float* x, long n, long firstIndex)
    {
        long i = 0;
        bool allFinite = true;
        if (Vector256.IsHardwareAccelerated)
        {
            var max = Vector256.Create(float.MaxValue);
            var ok = Vector256<float>.AllBitsSet;
            for (; i + 8 <= n; i += 8) ok &= Vector256.LessThanOrEqual(Vector256.Abs(Vector256.Load(x + i)), max);
            allFinite = Vector256.ExtractMostSignificantBits(ok) == 0xFFu;
        }
        for (long j = i; j < n; j++) allFinite &= float.IsFinite(x[j]);
        if (allFinite) return;
        for (long j = 0; j < n; j++)
            if (!float.IsFinite(x[j]))
                throw new ArgumentException($"{type}: value {firstIndex + j} (block {(firstIndex + j) / GgmlTypeInfo.BlockSize(type)}) is {x[j]}; only finite values can be quantized");
    }

    /// <summary>Which kernels run; tests pin each so every path is checked on any machine.</summary>
    internal enum KernelPath { Best, Vector256, Scalar }

    /// <summary>Single-threaded quantization through a chosen kernel path (for tests).</summary>
    internal static void QuantizeWith(KernelPath path, GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        if (GgmlTypeInfo.ByteSize(type, src.Length) != dst.Length) throw new ArgumentException("size mismatch", nameof(dst));
        fixed (float* ps = src)
        fixed (byte* pd = dst)
            QuantizeBlocks(type, ps, pd, src.Length / GgmlTypeInfo.BlockSize(type), path);
    }

    private static void QuantizeBlocks(GgmlType type, float* x, byte* y, int count, KernelPath path = KernelPath.Best)
    {
        bool allow512 = path == KernelPath.Best;
        if ((path == KernelPath.Scalar || !Vector256.IsHardwareAccelerated) && type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16))
        {
            int block = GgmlTypeInfo.BlockSize(type), bytes = GgmlTypeInfo.BytesPerBlock(type);
            GgmlReferenceQuantizer.Quantize(type, new ReadOnlySpan<float>(x, count * block), new Span<byte>(y, count * bytes));
            return;
        }
        switch (type)
        {
            case GgmlType.F32:
                Buffer.MemoryCopy(x, y, (long)count * 4, (long)count * 4);
                break;
            case GgmlType.F16:
                FloatConvert.ToHalf(x, (ushort*)y, count);
                break;
            case GgmlType.BF16:
                FloatConvert.ToBf16(x, (ushort*)y, count);
                break;
            case GgmlType.Q8_0:
                for (int b = 0; b < count; b++) LegacyKernels.Q8_0(x + 32 * b, y + 34 * b);
                break;
            case GgmlType.Q4_0:
                for (int b = 0; b < count; b++) LegacyKernels.Q4_0(x + 32 * b, y + 18 * b);
                break;
            case GgmlType.Q5_0:
                for (int b = 0; b < count; b++) LegacyKernels.Q5_0(x + 32 * b, y + 22 * b);
                break;
            case GgmlType.Q4_K:
                KQuantKernel.QuantizeBlocks(x, y, count, q5: false, allow512);
                break;
            case GgmlType.Q5_K:
                KQuantKernel.QuantizeBlocks(x, y, count, q5: true, allow512);
                break;
            case GgmlType.Q6_K:
                for (int b = 0; b < count; b++) Q6KKernel.QuantizeBlock(x + 256 * b, y + 210 * b, allow512);
                break;
            case GgmlType.MXFP4:
                for (int b = 0; b < count; b++) Mxfp4.QuantizeBlock(x + 32 * b, y + 17 * b);
                break;
            case GgmlType.Q2_K:
                for (int b = 0; b < count; b++)
                    KQuantLowBits.Q2K(new ReadOnlySpan<float>(x + 256 * b, 256), new Span<byte>(y + 84 * b, 84), vector: true);
                break;
            case GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q3_K
                or GgmlType.IQ4_NL or GgmlType.IQ4_XS:
            {
                int block = GgmlTypeInfo.BlockSize(type), bytes = GgmlTypeInfo.BytesPerBlock(type);
                GgmlReferenceQuantizer.Quantize(type, new ReadOnlySpan<float>(x, count * block), new Span<byte>(y, count * bytes));
                break;
            }
            default:
                throw new NotSupportedException($"cannot quantize to ggml type {type}");
        }
    }

    private static void DequantizeBlocks(GgmlType type, byte* x, float* y, int count)
    {
        switch (type)
        {
            case GgmlType.F32:
                Buffer.MemoryCopy(x, y, (long)count * 4, (long)count * 4);
                break;
            case GgmlType.F16:
                FloatConvert.FromHalf((ushort*)x, y, count);
                break;
            case GgmlType.BF16:
                FloatConvert.FromBf16((ushort*)x, y, count);
                break;
            case GgmlType.Q8_0:
                for (int b = 0; b < count; b++) GgmlDequantizer.Q8_0(x + 34 * b, y + 32 * b);
                break;
            case GgmlType.Q4_0:
                for (int b = 0; b < count; b++) GgmlDequantizer.Q4_0(x + 18 * b, y + 32 * b);
                break;
            case GgmlType.Q4_K:
                for (int b = 0; b < count; b++) GgmlDequantizer.Q4K(x + 144 * b, y + 256 * b);
                break;
            case GgmlType.Q5_K:
                for (int b = 0; b < count; b++) GgmlDequantizer.Q5K(x + 176 * b, y + 256 * b);
                break;
            case GgmlType.Q6_K:
                for (int b = 0; b < count; b++) GgmlDequantizer.Q6K(x + 210 * b, y + 256 * b);
                break;
            case GgmlType.MXFP4:
                for (int b = 0; b < count; b++) Mxfp4.DequantizeBlock(x + 17 * b, y + 32 * b);
                break;
            case GgmlType.Q4_1:
                for (int b = 0; b < count; b++) GgmlDequantizer.Q4_1(x + 20 * b, y + 32 * b);
                break;
            case GgmlType.Q5_0:
                for (int b = 0; b < count; b++) GgmlDequantizer.Q5_0(x + 22 * b, y + 32 * b);
                break;
            case GgmlType.Q5_1:
                for (int b = 0; b < count; b++) GgmlDequantizer.Q5_1(x + 24 * b, y + 32 * b);
                break;
            case GgmlType.Q2_K:
                for (int b = 0; b < count; b++) GgmlDequantizer.Q2K(x + 84 * b, y + 256 * b);
                break;
            case GgmlType.Q3_K:
                for (int b = 0; b < count; b++) GgmlDequantizer.Q3K(x + 110 * b, y + 256 * b);
                break;
            case GgmlType.IQ4_NL:
                for (int b = 0; b < count; b++) GgmlDequantizer.Iq4Nl(x + 18 * b, y + 32 * b);
                break;
            case GgmlType.IQ4_XS:
                for (int b = 0; b < count; b++) GgmlDequantizer.Iq4Xs(x + 136 * b, y + 256 * b);
                break;
            default:
                throw new NotSupportedException($"cannot decode ggml type {type}");
        }
    }
}
