using Converter.Numerics.Ggml;

namespace Converter.Core.Tests.Ggml;

public class GgmlQuantizerTests
{
    /// <summary>Rows that stress the branches the golden input may not reach: zeros, constants, one outlier,
    /// all-negative and all-positive blocks, tiny and huge magnitudes, exact grids, signed zeros.</summary>
    private static float[] StressInput(int blocksOf256, int seed)
    {
        var rng = new Random(seed);
        var x = new float[blocksOf256 * 256];
        for (int b = 0; b < blocksOf256; b++)
        {
            var blk = x.AsSpan(b * 256, 256);
            int kind = b % 12;
            for (int i = 0; i < 256; i++)
            {
                double g = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
                blk[i] = kind switch
                {
                    0 => 0f,
                    1 => 0.37f,
                    2 => -1.25f,
                    3 => i == 77 ? 50f : (float)(g * 1e-3),
                    4 => (float)-Math.Abs(g),
                    5 => (float)Math.Abs(g) + 0.5f,
                    6 => (float)(g * 1e-30),
                    7 => (float)(g * 1e4),
                    8 => (i % 16 - 8) / 8f,
                    9 => (i & 1) == 0 ? 0f : -0f,
                    10 => i < 32 ? (float)g : (float)(g * 1e-6),
                    _ => (float)g,
                };
            }
        }
        return x;
    }

    [Theory]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    [InlineData(GgmlType.Q2_K)]
    [InlineData(GgmlType.Q5_0)]
    public void FastEqualsScalarReferenceOnStressAndRandomData(GgmlType type)
    {
        var x = StressInput(240, 1234);
        long size = GgmlTypeInfo.ByteSize(type, x.Length);
        var fast = new byte[size];
        var reference = new byte[size];
        GgmlQuantizer.Quantize(type, x, fast);
        GgmlReferenceQuantizer.Quantize(type, x, reference);
        int at = GgmlGolden.FirstDifference<byte>(fast, reference);
        at.Should().Be(-1, $"{type}: first differing byte at {at} (block {(at < 0 ? -1 : at / GgmlTypeInfo.BytesPerBlock(type))})");
    }

    [Theory]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q2_K)]
    [InlineData(GgmlType.Q5_0)]
    public void EveryKernelPathEqualsScalarReference(GgmlType type)
    {
        // an odd block count so the Vector512 path also runs its single-block remainder
        var x = StressInput(37, 99);
        long size = GgmlTypeInfo.ByteSize(type, x.Length);
        var reference = new byte[size];
        GgmlReferenceQuantizer.Quantize(type, x, reference);
        foreach (var path in new[] { GgmlQuantizer.KernelPath.Best, GgmlQuantizer.KernelPath.Vector256, GgmlQuantizer.KernelPath.Scalar })
        {
            var y = new byte[size];
            GgmlQuantizer.QuantizeWith(path, type, x, y);
            int at = GgmlGolden.FirstDifference<byte>(y, reference);
            at.Should().Be(-1, $"{type} via {path}: first differing byte at {at}");
        }
    }

    [Theory]
    [InlineData(GgmlType.Q8_0, 0.01)]
    [InlineData(GgmlType.Q4_0, 0.2)]
    [InlineData(GgmlType.Q4_K, 0.12)]
    [InlineData(GgmlType.Q5_K, 0.06)]
    [InlineData(GgmlType.Q6_K, 0.03)]
    public void RoundTripErrorIsSmallForGaussianData(GgmlType type, double maxRelRmse)
    {
        var rng = new Random(7);
        var x = new float[64 * 1024];
        for (int i = 0; i < x.Length; i++)
            x[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        var q = new byte[GgmlTypeInfo.ByteSize(type, x.Length)];
        GgmlQuantizer.Quantize(type, x, q);
        var y = new float[x.Length];
        GgmlQuantizer.Dequantize(type, q, y);
        double se = 0, ss = 0;
        for (int i = 0; i < x.Length; i++) { se += (x[i] - y[i]) * (double)(x[i] - y[i]); ss += x[i] * (double)x[i]; }
        Math.Sqrt(se / ss).Should().BeLessThan(maxRelRmse);
    }

    [Fact]
    public void Bf16RoundsToNearestEvenAndQuietsNaN()
    {
        uint[] inputs = [0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x7F800001, 0xFF800000, 0x7F7FFFFF, 0x00018000];
        ushort[] expected = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x7FC0, 0xFF80, 0x7F80, 0x0002];
        // run through the vector path too (16 at a time)
        var x = new float[32];
        for (int i = 0; i < x.Length; i++) x[i] = BitConverter.UInt32BitsToSingle(inputs[i % inputs.Length]);
        var y = new byte[64];
        GgmlQuantizer.Quantize(GgmlType.BF16, x, y);
        for (int i = 0; i < x.Length; i++)
            BitConverter.ToUInt16(y, 2 * i).Should().Be(expected[i % inputs.Length], $"input 0x{inputs[i % inputs.Length]:X8}");
    }

    [Fact]
    public void F16RoundsToNearestEven()
    {
        float[] x = [1.0f, 65504f, 65520f, 5.9604645e-8f, 2.9802322e-8f, 1.0009766f, 1.00146484f, -2.5f];
        ushort[] expected = [0x3C00, 0x7BFF, 0x7C00, 0x0001, 0x0000, 0x3C01, 0x3C02, 0xC100];
        var y = new byte[2 * x.Length];
        GgmlQuantizer.Quantize(GgmlType.F16, x, y);
        for (int i = 0; i < x.Length; i++) BitConverter.ToUInt16(y, 2 * i).Should().Be(expected[i], $"input {x[i]}");
        var back = new float[x.Length];
        GgmlQuantizer.Dequantize(GgmlType.F16, y, back);
        back[0].Should().Be(1.0f);
        back[7].Should().Be(-2.5f);
    }

    [Theory]
    [InlineData(GgmlType.Q8_0, float.NaN)]
    [InlineData(GgmlType.Q4_K, float.PositiveInfinity)]
    [InlineData(GgmlType.Q6_K, float.NegativeInfinity)]
    public void RefusesNonFiniteValuesNamingTheBlock(GgmlType type, float bad)
    {
        var x = new float[256 * 300];
        x[256 * 200 + 3] = bad;
        var y = new byte[GgmlTypeInfo.ByteSize(type, x.Length)];
        var act = () => GgmlQuantizer.Quantize(type, x, y);
        int block = (256 * 200 + 3) / GgmlTypeInfo.BlockSize(type);
        act.Should().Throw<ArgumentException>().WithMessage($"*value {256 * 200 + 3} (block {block})*");
        // plain float types carry non-finite values through
        var h = new byte[2 * x.Length];
        GgmlQuantizer.Quantize(GgmlType.BF16, x, h);
    }

    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    [InlineData(GgmlType.Q2_K)]
    [InlineData(GgmlType.Q3_K)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    [InlineData(GgmlType.IQ4_NL)]
    [InlineData(GgmlType.IQ4_XS)]
    public void ImportanceLowersTheErrorWhereTheWeightsAre(GgmlType type)
    {
        // a quarter of the columns carry nearly all the importance: their error must drop
        const int cols = 1024, rows = 64;
        var rng = new Random(11);
        var x = new float[rows * cols];
        for (int i = 0; i < x.Length; i++)
            x[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        var w = new float[cols];
        for (int c = 0; c < cols; c++) w[c] = c % 4 == 0 ? 100f : 0.01f;
        double Weighted(ReadOnlySpan<float> importance)
        {
            var q = new byte[GgmlTypeInfo.ByteSize(type, x.Length)];
            GgmlQuantizer.Quantize(type, x, q, importance, -1);
            var y = new float[x.Length];
            GgmlQuantizer.Dequantize(type, q, y);
            double e = 0;
            for (int i = 0; i < x.Length; i++) e += w[i % cols] * (x[i] - y[i]) * (double)(x[i] - y[i]);
            return e;
        }
        Weighted(w).Should().BeLessThan(0.9 * Weighted(default), $"{type}");
    }

    [Theory]
    [InlineData(GgmlType.Q4_1, 27 * 32)]
    [InlineData(GgmlType.Q5_1, 27 * 32)]
    [InlineData(GgmlType.Q4_1, 5 * 32)]
    [InlineData(GgmlType.Q2_K, 768)]
    [InlineData(GgmlType.Q4_K, 768)]
    [InlineData(GgmlType.Q5_K, 768)]
    [InlineData(GgmlType.Q4_0, 27 * 32)]
    [InlineData(GgmlType.Q5_0, 27 * 32)]
    [InlineData(GgmlType.Q3_K, 768)]
    [InlineData(GgmlType.Q6_K, 768)]
    public void VectorImportanceSearchEqualsScalar(GgmlType type, int cols)
    {
        // stress blocks (zeros, constants, outliers, signed zeros) with weights that include zeros and huge spreads
        var x = StressInput(48, 77);
        var rng = new Random(3);
        var w = new float[cols];
        for (int i = 0; i < cols; i++) w[i] = i % 29 == 0 ? 0f : (float)Math.Pow(10, rng.NextDouble() * 8 - 4);
        int rowBytes = (int)GgmlTypeInfo.ByteSize(type, cols);
        for (int r = 0; r + cols <= x.Length; r += cols)
        {
            var vec = new byte[rowBytes];
            var scalar = new byte[rowBytes];
            GgmlQuantizer.QuantizeRowWithImportance(type, x.AsSpan(r, cols), vec, w, vector: true);
            GgmlQuantizer.QuantizeRowWithImportance(type, x.AsSpan(r, cols), scalar, w, vector: false);
            int at = GgmlGolden.FirstDifference<byte>(vec, scalar);
            at.Should().Be(-1, $"{type} row at value {r}: first differing byte {at}");
        }
    }

    [Fact]
    public void TypesThatIgnoreImportanceGiveTheReferenceBytes()
    {
        var x = StressInput(8, 5);
        var w = new float[512];
        for (int i = 0; i < w.Length; i++) w[i] = i % 3;
        foreach (var type in new[] { GgmlType.Q8_0, GgmlType.MXFP4, GgmlType.F16, GgmlType.BF16 })
        {
            GgmlQuantizer.UsesImportance(type).Should().BeFalse($"{type}");
            var plain = new byte[GgmlTypeInfo.ByteSize(type, x.Length)];
            var weighted = new byte[plain.Length];
            GgmlQuantizer.Quantize(type, x, plain);
            GgmlQuantizer.Quantize(type, x, weighted, w, -1);
            weighted.Should().Equal(plain, $"{type}");
        }
    }

    [Fact]
    public void ImportanceMustBeWholeBlocksFiniteAndDivideTheInput()
    {
        var x = new float[1024];
        var y = new byte[GgmlTypeInfo.ByteSize(GgmlType.Q4_K, x.Length)];
        var partialBlock = () => GgmlQuantizer.Quantize(GgmlType.Q4_K, x, y, new float[128], -1);
        partialBlock.Should().Throw<ArgumentException>().WithMessage("*row of 128 values*256-value blocks*");
        var notRows = () => GgmlQuantizer.Quantize(GgmlType.Q4_K, x, y, new float[768], -1);
        notRows.Should().Throw<ArgumentException>().WithMessage("*1024 values are not whole rows of 768*");
        var w = new float[512];
        w[300] = float.NaN;
        var nan = () => GgmlQuantizer.Quantize(GgmlType.Q4_K, x, y, w, -1);
        nan.Should().Throw<ArgumentException>().WithMessage("*importance weight 300 is NaN*");
        x[700] = float.PositiveInfinity;
        var inf = () => GgmlQuantizer.Quantize(GgmlType.Q4_K, x, y, new float[512], -1);
        inf.Should().Throw<ArgumentException>().WithMessage("*value 700 (block 2)*");
    }

    [Fact]
    public void RejectsPartialBlocksAndWrongDestinationSize()
    {
        var act1 = () => GgmlQuantizer.Quantize(GgmlType.Q4_K, new float[255], new byte[144]);
        act1.Should().Throw<ArgumentException>();
        var act2 = () => GgmlQuantizer.Quantize(GgmlType.Q8_0, new float[64], new byte[67]);
        act2.Should().Throw<ArgumentException>();
    }

    [Fact]
    public void TypeLayoutsMatchGgml()
    {
        GgmlTypeInfo.BytesPerBlock(GgmlType.Q4_K).Should().Be(144);
        GgmlTypeInfo.BytesPerBlock(GgmlType.Q5_K).Should().Be(176);
        GgmlTypeInfo.BytesPerBlock(GgmlType.Q6_K).Should().Be(210);
        GgmlTypeInfo.BytesPerBlock(GgmlType.Q8_0).Should().Be(34);
        GgmlTypeInfo.BytesPerBlock(GgmlType.Q4_0).Should().Be(18);
        GgmlTypeInfo.BytesPerBlock(GgmlType.Q4_1).Should().Be(20);
        GgmlTypeInfo.BytesPerBlock(GgmlType.Q5_0).Should().Be(22);
        GgmlTypeInfo.BytesPerBlock(GgmlType.Q5_1).Should().Be(24);
        GgmlTypeInfo.BytesPerBlock(GgmlType.Q2_K).Should().Be(84);
        GgmlTypeInfo.BytesPerBlock(GgmlType.Q3_K).Should().Be(110);
        GgmlTypeInfo.BytesPerBlock(GgmlType.IQ4_NL).Should().Be(18);
        GgmlTypeInfo.BytesPerBlock(GgmlType.IQ4_XS).Should().Be(136);
        foreach (var t in new[] { GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.IQ4_NL, GgmlType.IQ4_XS })
            GgmlTypeInfo.CanQuantize(t).Should().BeTrue($"{t}");
        GgmlTypeInfo.ByteSize(GgmlType.BF16, 10).Should().Be(20);
        ((uint)GgmlType.BF16).Should().Be(30);
        ((uint)GgmlType.Q6_K).Should().Be(14);
    }
}
