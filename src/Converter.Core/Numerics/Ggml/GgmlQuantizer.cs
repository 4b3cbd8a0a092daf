using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics.Ggml;

/// <summary>
/// One entry point for every ggml type a GGUF writer emits: float32 rows to ggml bytes and back.
/// The quantized bytes equal ggml's reference quantizers (quantize_row_*_ref, what llama-quantize runs without
/// an importance matrix) bit for bit; decoding equals ggml's to_float bit for bit. Block types refuse NaN and
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
            default:
                throw new NotSupportedException($"cannot decode ggml type {type}");
        }
    }
}
