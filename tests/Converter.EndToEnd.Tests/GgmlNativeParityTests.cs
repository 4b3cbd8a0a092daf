using System.Runtime.InteropServices;
using Converter.Numerics.Ggml;

namespace Converter.EndToEnd.Tests;

/// <summary>
/// Calls ggml's own reference quantizers and decoders (quantize_row_*_ref, dequantize_row_*) in the libggml-base
/// that node-llama-cpp ships (tests/interop, installed by <c>npm ci</c>) and checks ours equal them bit for bit on
/// data far larger and wilder than the golden vectors.
/// </summary>
public sealed unsafe class GgmlNativeParityTests
{
    private static string LibraryPath
    {
        get
        {
            for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "Converter.sln")))
                    return Path.Combine(d.FullName, "tests", "interop", "node_modules", "@node-llama-cpp", "linux-x64", "bins", "linux-x64", "libggml-base.so");
            throw new DirectoryNotFoundException("Converter.sln not found above " + AppContext.BaseDirectory);
        }
    }

    /// <summary>Gaussian rows at many scales plus blocks that hit the quantizers' special cases.</summary>
    private static float[] Input(int blocksOf256)
    {
        var rng = new Random(2024);
        var x = new float[blocksOf256 * 256];
        for (int b = 0; b < blocksOf256; b++)
        {
            double scale = Math.Pow(10, rng.Next(-8, 5));
            int kind = b % 16;
            for (int i = 0; i < 256; i++)
            {
                double g = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
                x[b * 256 + i] = kind switch
                {
                    0 => 0f,
                    1 => -0.5f,
                    2 => (float)Math.Abs(g * scale),
                    3 => (float)(-Math.Abs(g) * scale),
                    4 => i % 7 == 0 ? (float)(g * 100 * scale) : (float)(g * scale * 1e-3),
                    5 => (float)Math.Round(g * 4) / 4,
                    6 => i < 16 ? (float)(g * scale) : 0f,
                    _ => (float)(g * scale),
                };
            }
        }
        return x;
    }

    [Theory]
    [InlineData(GgmlType.Q8_0, "q8_0")]
    [InlineData(GgmlType.Q4_0, "q4_0")]
    [InlineData(GgmlType.Q4_K, "q4_K")]
    [InlineData(GgmlType.Q5_K, "q5_K")]
    [InlineData(GgmlType.Q6_K, "q6_K")]
    [InlineData(GgmlType.MXFP4, "mxfp4")]
    public void QuantizeAndDequantizeEqualGgmlItself(GgmlType type, string name)
    {
        File.Exists(LibraryPath).Should().BeTrue("tests/interop needs its packages: run `npm ci` there (.ci/run does)");
        nint lib = NativeLibrary.Load(LibraryPath);
        try
        {
            var quantize = (delegate* unmanaged<float*, byte*, long, void>)NativeLibrary.GetExport(lib, $"quantize_row_{name}_ref");
            var dequantize = (delegate* unmanaged<byte*, float*, long, void>)NativeLibrary.GetExport(lib, $"dequantize_row_{name}");
            var x = Input(2048);
            long size = GgmlTypeInfo.ByteSize(type, x.Length);
            var expected = new byte[size];
            var actual = new byte[size];
            fixed (float* px = x)
            fixed (byte* py = expected)
                quantize(px, py, x.Length);
            GgmlQuantizer.Quantize(type, x, actual);
            int at = actual.AsSpan().SequenceEqual(expected) ? -1 : Enumerable.Range(0, actual.Length).First(i => actual[i] != expected[i]);
            at.Should().Be(-1, $"{type}: first differing byte {at}, block {at / GgmlTypeInfo.BytesPerBlock(type)}");

            var decodedByGgml = new float[x.Length];
            var decoded = new float[x.Length];
            fixed (byte* py = expected)
            fixed (float* pd = decodedByGgml)
                dequantize(py, pd, x.Length);
            GgmlQuantizer.Dequantize(type, expected, decoded);
            MemoryMarshal.Cast<float, int>(decoded).SequenceEqual(MemoryMarshal.Cast<float, int>(decodedByGgml)).Should().BeTrue($"{type} decode");
        }
        finally
        {
            NativeLibrary.Free(lib);
        }
    }

    /// <summary>
    /// ggml_quantize_chunk is what llama-quantize calls per tensor: with a null importance matrix the reference
    /// quantizers (quantize_iq4_* for IQ4), with one the weighted quantize_row_*_impl. Rows of 512 so the
    /// row-wide sigma2 of the 32-value types spans several blocks; the weights are random and span 1e-6 to 1e3.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q4_0, false)]
    [InlineData(GgmlType.Q4_0, true)]
    [InlineData(GgmlType.Q4_1, false)]
    [InlineData(GgmlType.Q4_1, true)]
    [InlineData(GgmlType.Q5_0, false)]
    [InlineData(GgmlType.Q5_0, true)]
    [InlineData(GgmlType.Q5_1, false)]
    [InlineData(GgmlType.Q5_1, true)]
    [InlineData(GgmlType.Q8_0, true)]
    [InlineData(GgmlType.Q2_K, false)]
    [InlineData(GgmlType.Q2_K, true)]
    [InlineData(GgmlType.Q3_K, false)]
    [InlineData(GgmlType.Q3_K, true)]
    [InlineData(GgmlType.Q4_K, true)]
    [InlineData(GgmlType.Q5_K, true)]
    [InlineData(GgmlType.Q6_K, true)]
    [InlineData(GgmlType.IQ4_NL, false)]
    [InlineData(GgmlType.IQ4_NL, true)]
    [InlineData(GgmlType.IQ4_XS, false)]
    [InlineData(GgmlType.IQ4_XS, true)]
    public void QuantizeChunkWithAndWithoutImportanceEqualsGgmlItself(GgmlType type, bool withImportance)
    {
        File.Exists(LibraryPath).Should().BeTrue("tests/interop needs its packages: run `npm ci` there (.ci/run does)");
        nint lib = NativeLibrary.Load(LibraryPath);
        try
        {
            var chunk = (delegate* unmanaged<int, float*, byte*, long, long, long, float*, nuint>)NativeLibrary.GetExport(lib, "ggml_quantize_chunk");
            var dequantize = (delegate* unmanaged<byte*, float*, long, void>)NativeLibrary.GetExport(lib,
                "dequantize_row_" + type.ToString().ToLowerInvariant().Replace("_k", "_K"));
            const int cols = 512;
            var x = Input(1024);
            int rows = x.Length / cols;
            var rng = new Random(5);
            var w = new float[cols];
            for (int i = 0; i < cols; i++) w[i] = i % 61 == 0 ? 0f : (float)Math.Pow(10, rng.NextDouble() * 9 - 6);
            long size = GgmlTypeInfo.ByteSize(type, x.Length);
            var expected = new byte[size];
            var actual = new byte[size];
            fixed (float* px = x)
            fixed (byte* py = expected)
            fixed (float* pw = w)
                chunk((int)type, px, py, 0, rows, cols, withImportance ? pw : null);
            GgmlQuantizer.Quantize(type, x, actual, withImportance ? w : default, -1);
            int at = actual.AsSpan().SequenceEqual(expected) ? -1 : Enumerable.Range(0, actual.Length).First(i => actual[i] != expected[i]);
            at.Should().Be(-1, $"{type}: first differing byte {at}, block {at / GgmlTypeInfo.BytesPerBlock(type)}");

            var decodedByGgml = new float[x.Length];
            var decoded = new float[x.Length];
            fixed (byte* py = expected)
            fixed (float* pd = decodedByGgml)
                dequantize(py, pd, x.Length);
            GgmlQuantizer.Dequantize(type, expected, decoded);
            MemoryMarshal.Cast<float, int>(decoded).SequenceEqual(MemoryMarshal.Cast<float, int>(decodedByGgml)).Should().BeTrue($"{type} decode");
        }
        finally
        {
            NativeLibrary.Free(lib);
        }
    }

    /// <summary>FP4 e2m1 + E8M0 rows repacked into MXFP4 decode, in ggml's own decoder, to exactly e2m1 x 2^(e-127).</summary>
    [Fact]
    public void RepackedFp4DecodesInGgmlToTheFp4Values()
    {
        File.Exists(LibraryPath).Should().BeTrue("tests/interop needs its packages: run `npm ci` there (.ci/run does)");
        nint lib = NativeLibrary.Load(LibraryPath);
        try
        {
            var dequantize = (delegate* unmanaged<byte*, float*, long, void>)NativeLibrary.GetExport(lib, "dequantize_row_mxfp4");
            var rng = new Random(7);
            const int rows = 64, cols = 256;
            var packed = new byte[rows * cols / 2];
            var scales = new byte[rows * cols / 32];
            rng.NextBytes(packed);
            for (int i = 0; i < scales.Length; i++) scales[i] = (byte)rng.Next(0, 251); // every E8M0 whose products stay finite in float32
            var blocks = new byte[scales.Length * Mxfp4.BlockBytes];
            Mxfp4.Repack(packed, scales, cols, blocks);
            var got = new float[rows * cols];
            fixed (byte* pb = blocks)
            fixed (float* pg = got)
                dequantize(pb, pg, got.Length);
            double[] e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6];
            for (int i = 0; i < got.Length; i++)
            {
                int code = i % 2 == 0 ? packed[i / 2] & 15 : packed[i / 2] >> 4;
                double want = e2m1[code] * Math.Pow(2, scales[i / 32] - 127);
                if ((double)got[i] != want) Assert.Fail($"element {i}: code {code}, scale {scales[i / 32]}: ggml {got[i]:R}, want {want:R}");
            }
        }
        finally
        {
            NativeLibrary.Free(lib);
        }
    }
}
