using System.Runtime.InteropServices;
using Converter.Formats.Safetensors;
using Converter.Numerics;
using Converter.Tensors;

namespace Converter.Tests.Numerics;

public class Fp8BlockQuantizerTests
{
    /// <summary>Straight-line reference of the layout: per block amax, scale = amax / 448, code = e4m3(w / scale).</summary>
    private static (byte[] Codes, float[] Scales) ReferenceQuantize(float[] w, int rows, int cols)
    {
        int sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        var codes = new byte[w.Length];
        var scales = new float[sr * sc];
        for (int br = 0; br < sr; br++)
            for (int bc = 0; bc < sc; bc++)
            {
                float amax = 0;
                for (int r = br * 128; r < Math.Min(rows, br * 128 + 128); r++)
                    for (int c = bc * 128; c < Math.Min(cols, bc * 128 + 128); c++)
                        amax = Math.Max(amax, Math.Abs(w[r * cols + c]));
                float scale = amax == 0 ? 1e-4f / 448f : amax / 448f;
                scales[br * sc + bc] = scale;
                for (int r = br * 128; r < Math.Min(rows, br * 128 + 128); r++)
                    for (int c = bc * 128; c < Math.Min(cols, bc * 128 + 128); c++)
                        codes[r * cols + c] = Fp8Reference.E4M3.Encode(w[r * cols + c] / scale);
            }
        return (codes, scales);
    }

    private static ushort ReferenceBf16(float x)
    {
        // Round to nearest even via double: x is exact in double, the bf16 neighbours are exact too.
        if (float.IsNaN(x)) return (ushort)((BitConverter.SingleToUInt32Bits(x) >> 16) | 0x40);
        uint b = BitConverter.SingleToUInt32Bits(x);
        float lo = BitConverter.UInt32BitsToSingle(b & 0xFFFF_0000u);
        float hi = BitConverter.UInt32BitsToSingle((b & 0xFFFF_0000u) + 0x1_0000u);
        double dl = Math.Abs((double)x - lo), dh = Math.Abs((double)hi - x);
        uint keep = b >> 16;
        if (dh < dl || (dh == dl && (keep & 1) == 1)) keep++;
        return (ushort)keep;
    }

    private static float[] RandomWeight(int rows, int cols, int seed)
    {
        var rng = new Random(seed);
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++)
        {
            // Gaussian-ish values with a few outliers; round to bf16 so the bf16 overload sees the same numbers.
            double g = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
            if (rng.Next(500) == 0) g *= 40;
            w[i] = Bf16.ToSingle(Bf16.FromSingle((float)(g * 0.02)));
        }
        return w;
    }

    [Theory]
    [InlineData(200, 300)]
    [InlineData(128, 128)]
    [InlineData(1, 1)]
    [InlineData(129, 257)]
    [InlineData(300, 45)]
    public void PartialBlocksMatchScalarReference(int rows, int cols)
    {
        var w = RandomWeight(rows, cols, rows * 1000 + cols);
        // An all-zero block and a block with a single non-zero value, where the shape has room for them.
        if (rows > 128 && cols > 128)
        {
            for (int r = 128; r < rows; r++) for (int c = 0; c < 128; c++) w[r * cols + c] = 0;
            for (int r = 0; r < 128; r++) for (int c = 128; c < Math.Min(cols, 256); c++) w[r * cols + c] = r == 5 && c == 130 ? -0.5f : 0f;
            w[128 * cols + 3] = -0f;
        }
        var (wantCodes, wantScales) = ReferenceQuantize(w, rows, cols);
        var (sr, sc) = Fp8BlockQuantizer.ScaleShape(rows, cols);
        sr.Should().Be((rows + 127) / 128);
        sc.Should().Be((cols + 127) / 128);

        foreach (int threads in new[] { 1, -1 })
        {
            var codes = new byte[w.Length];
            var scales = new float[sr * sc];
            Fp8BlockQuantizer.Quantize(w, rows, cols, codes, scales, threads);
            codes.Should().Equal(wantCodes);
            scales.Should().Equal(wantScales);

            var bf = w.Select(Bf16.FromSingle).ToArray();
            var codes2 = new byte[w.Length];
            var scales2 = new float[sr * sc];
            Fp8BlockQuantizer.Quantize(bf, rows, cols, codes2, scales2, threads);
            codes2.Should().Equal(wantCodes);
            scales2.Should().Equal(wantScales);

            var deq = new float[w.Length];
            var deqBf16 = new ushort[w.Length];
            Fp8BlockQuantizer.Dequantize(codes, scales, rows, cols, deq, threads);
            Fp8BlockQuantizer.DequantizeToBf16(codes, scales, rows, cols, deqBf16, threads);
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++)
                {
                    int i = r * cols + c;
                    float want = (float)Fp8Reference.E4M3.Decode(codes[i]) * wantScales[(r / 128) * sc + c / 128];
                    if (BitConverter.SingleToUInt32Bits(deq[i]) != BitConverter.SingleToUInt32Bits(want) || deqBf16[i] != ReferenceBf16(want))
                        Assert.Fail($"({r},{c}): code 0x{codes[i]:X2} float {deq[i]:R} want {want:R}; bf16 0x{deqBf16[i]:X4} want 0x{ReferenceBf16(want):X4}");
                }
        }
    }

    [Fact]
    public void NonFiniteWeightIsRejectedNamingTheBlock()
    {
        var w = new float[200 * 300];
        w[150 * 300 + 260] = float.NaN;
        var act = () => Fp8BlockQuantizer.Quantize(w, 200, 300, new byte[w.Length], new float[6]);
        act.Should().Throw<ArgumentException>().WithMessage("*block (1, 2)*");
        var bf = new ushort[200 * 300];
        bf[10] = 0xFF80; // -inf
        var act2 = () => Fp8BlockQuantizer.Quantize(bf, 200, 300, new byte[w.Length], new float[6]);
        act2.Should().Throw<ArgumentException>().WithMessage("*block (0, 0)*");
    }

    [Fact]
    public void ShortBuffersAreRejected()
    {
        var act = () => Fp8BlockQuantizer.Quantize(new float[100], 10, 10, new byte[100], new float[0]);
        act.Should().Throw<ArgumentException>();
        var act2 = () => Fp8BlockQuantizer.Dequantize(new byte[99], new float[1], 10, 10, new float[100]);
        act2.Should().Throw<ArgumentException>();
    }

    /// <summary>The FP8 tensors of the golden checkpoint with their BF16 sources, read by the project's reader.</summary>
    private static List<string> GoldenFp8Weights(SafetensorsCheckpoint fp8)
        => fp8.Names.Where(n => fp8.Info(n).DType == DType.F8_E4M3).ToList();

    [Fact]
    public void QuantizingGoldenBf16ReproducesOfficialFp8CheckpointByteForByte()
    {
        using var bf16 = SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv3"));
        using var fp8 = SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv3-fp8"));
        var names = GoldenFp8Weights(fp8);
        names.Should().HaveCountGreaterThan(100);
        foreach (var name in names)
        {
            var info = fp8.Info(name);
            info.Shape.Should().HaveCount(2);
            int rows = (int)info.Shape[0], cols = (int)info.Shape[1];
            using var src = bf16.Read(name);
            src.Info.DType.Should().Be(DType.BF16, name);
            src.Info.Shape.Should().Equal(info.Shape, name);
            using var wantCodes = fp8.Read(name);
            using var wantScales = fp8.Read(name + "_scale_inv");
            wantScales.Info.DType.Should().Be(DType.F32);
            var (sr, sc) = Fp8BlockQuantizer.ScaleShape(rows, cols);
            wantScales.Info.Shape.Should().Equal(new long[] { sr, sc }, name);

            var codes = new byte[rows * cols];
            var scales = new float[sr * sc];
            Fp8BlockQuantizer.Quantize(src.As<ushort>(), rows, cols, codes, scales);
            int diff = 0, first = -1;
            var want = wantCodes.Bytes;
            for (int i = 0; i < codes.Length; i++)
                if (codes[i] != want[i]) { diff++; if (first < 0) first = i; }
            diff.Should().Be(0, $"{name}: {diff} codes differ, first at {first}");
            MemoryMarshal.AsBytes(scales.AsSpan()).SequenceEqual(wantScales.Bytes).Should().BeTrue($"{name}: scales differ");

            // The float32 source path must agree too.
            var f = new float[rows * cols];
            Bf16.ToSingle(src.As<ushort>(), f);
            var codesF = new byte[rows * cols];
            var scalesF = new float[sr * sc];
            Fp8BlockQuantizer.Quantize(f, rows, cols, codesF, scalesF);
            codesF.AsSpan().SequenceEqual(want).Should().BeTrue(name);
        }
        // Every tensor of the FP8 checkpoint is either an FP8 weight, its scale, or copied unchanged from BF16.
        foreach (var name in fp8.Names.Where(n => !names.Contains(n) && !n.EndsWith("_scale_inv")))
        {
            using var a = fp8.Read(name);
            using var b = bf16.Read(name);
            a.Bytes.SequenceEqual(b.Bytes).Should().BeTrue(name);
        }
    }

    [Fact]
    public void DequantizingGoldenFp8GivesBf16OfCodeTimesScale()
    {
        using var fp8 = SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv3-fp8"));
        var names = GoldenFp8Weights(fp8);
        names.Should().NotBeEmpty();
        foreach (var name in names)
        {
            int rows = (int)fp8.Info(name).Shape[0], cols = (int)fp8.Info(name).Shape[1];
            using var codes = fp8.Read(name);
            using var scales = fp8.Read(name + "_scale_inv");
            var s = scales.As<float>();
            int sc = (cols + 127) / 128;
            var got = new ushort[rows * cols];
            var gotF = new float[rows * cols];
            Fp8BlockQuantizer.DequantizeToBf16(codes.Bytes, s, rows, cols, got);
            Fp8BlockQuantizer.Dequantize(codes.Bytes, s, rows, cols, gotF);
            var q = codes.Bytes;
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++)
                {
                    int i = r * cols + c;
                    float want = (float)Fp8Reference.E4M3.Decode(q[i]) * s[(r / 128) * sc + c / 128];
                    if (got[i] != ReferenceBf16(want) || gotF[i] != want)
                        Assert.Fail($"{name} ({r},{c}): code 0x{q[i]:X2}: bf16 0x{got[i]:X4} want 0x{ReferenceBf16(want):X4}, float {gotF[i]:R} want {want:R}");
                }
        }
    }
}
