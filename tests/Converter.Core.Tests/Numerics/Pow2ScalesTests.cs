using Converter.Numerics;

namespace Converter.Tests.Numerics;

/// <summary>The scales-only passes (used where a layout stores each scale before its weight) give exactly the scales
/// the quantizers write with their codes, and refuse non-finite values as they do.</summary>
public class Pow2ScalesTests
{
    private static (ushort[] Bf16, float[] F32) Weights(int rows, int cols, int seed)
    {
        var rng = new Random(seed);
        var f = new float[rows * cols];
        for (int i = 0; i < f.Length; i++)
        {
            double scale = Math.Pow(2, rng.Next(-20, 12));
            f[i] = i % 97 == 0 ? 0 : (float)((rng.NextDouble() - 0.5) * scale);
        }
        for (int i = 0; i < Math.Min(f.Length, 64); i++) f[i] = 0; // an all-zero group / part of a block
        var b = new ushort[f.Length];
        Bf16.FromSingle(f, b);
        Bf16.ToSingle(b, f);
        return (b, f);
    }

    [Theory]
    [InlineData(128, 128)]
    [InlineData(300, 200)]
    [InlineData(1, 129)]
    [InlineData(257, 1024)]
    public void Fp8ScalesEqualTheQuantizers(int rows, int cols)
    {
        var (b, f) = Weights(rows, cols, rows * 31 + cols);
        var (sr, sc) = Fp8Pow2BlockQuantizer.ScaleShape(rows, cols);
        var want = new byte[sr * sc];
        Fp8Pow2BlockQuantizer.Quantize(b, rows, cols, new byte[rows * cols], want);
        var got = new byte[sr * sc];
        Fp8Pow2BlockQuantizer.Scales(b, rows, cols, got);
        got.Should().Equal(want);
        Array.Clear(got);
        Fp8Pow2BlockQuantizer.Scales(f, rows, cols, got);
        got.Should().Equal(want);
    }

    [Theory]
    [InlineData(4, 32)]
    [InlineData(33, 96)]
    [InlineData(128, 2048)]
    public void Fp4ScalesEqualTheQuantizers(int rows, int cols)
    {
        var (b, f) = Weights(rows, cols, rows * 7 + cols);
        var want = new byte[rows * cols / 32];
        Fp4BlockQuantizer.Quantize(b, rows, cols, new byte[rows * cols / 2], want);
        var got = new byte[want.Length];
        Fp4BlockQuantizer.Scales(b, rows, cols, got);
        got.Should().Equal(want);
        Array.Clear(got);
        Fp4BlockQuantizer.Scales(f, rows, cols, got);
        got.Should().Equal(want);
    }

    [Fact]
    public void NonFiniteValuesAreRefused()
    {
        var (_, f) = Weights(130, 64, 5);
        f[129 * 64 + 40] = float.NaN;
        FluentActions.Invoking(() => Fp8Pow2BlockQuantizer.Scales(f, 130, 64, new byte[2])).Should().Throw<ArgumentException>().WithMessage("*block (1, 0)*");
        FluentActions.Invoking(() => Fp4BlockQuantizer.Scales(f, 130, 64, new byte[130 * 2])).Should().Throw<ArgumentException>().WithMessage("*row 129, columns 32..63*");
    }
}
