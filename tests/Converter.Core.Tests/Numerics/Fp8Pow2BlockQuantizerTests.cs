using Converter.Numerics;

namespace Converter.Tests.Numerics;

public class Fp8Pow2BlockQuantizerTests
{
    [Theory]
    [InlineData(200, 300)]
    [InlineData(128, 128)]
    [InlineData(1, 1)]
    [InlineData(129, 257)]
    [InlineData(300, 45)]
    [InlineData(64, 256)]
    public void MatchesScalarReference(int rows, int cols)
    {
        var w = Pow2Reference.RandomWeight(rows, cols, rows * 1000 + cols);
        if (rows > 128 && cols > 128)
        {
            // An all-zero block, a block holding one value, exactly 448 * 2^-8 with a -0 beside it, and
            // subnormals in the last block.
            for (int r = 128; r < rows; r++) for (int c = 0; c < 128; c++) w[r * cols + c] = 0;
            for (int r = 0; r < 128; r++) for (int c = 128; c < Math.Min(cols, 256); c++) w[r * cols + c] = r == 5 && c == 130 ? -1.75f : 0f;
            w[6 * cols + 130] = -0f;
            for (int c = 256; c < cols; c++) w[(rows - 1) * cols + c] = Bf16.ToSingle((ushort)(c & 0x7F));
        }
        var bf = Pow2Reference.ToBf16Bits(w);
        var (wantCodes, wantScales) = Pow2Reference.QuantizeFp8(w, rows, cols);
        var (sr, sc) = Fp8Pow2BlockQuantizer.ScaleShape(rows, cols);
        (sr, sc).Should().Be(((rows + 127) / 128, (cols + 127) / 128));
        if (rows > 128 && cols > 128)
        {
            wantScales[sc].Should().Be(127, "all-zero block");
            wantScales[1].Should().Be(127 - 8, "amax 448 * 2^-8 exactly");
        }

        foreach (int threads in new[] { 1, -1 })
        {
            var codes = new byte[w.Length];
            var scales = new byte[sr * sc];
            Fp8Pow2BlockQuantizer.Quantize(bf, rows, cols, codes, scales, threads);
            codes.Should().Equal(wantCodes);
            scales.Should().Equal(wantScales);

            var codesF = new byte[w.Length];
            var scalesF = new byte[sr * sc];
            Fp8Pow2BlockQuantizer.Quantize(w, rows, cols, codesF, scalesF, threads);
            codesF.Should().Equal(wantCodes);
            scalesF.Should().Equal(wantScales);

            var deq = new float[w.Length];
            var deqBf = new ushort[w.Length];
            Fp8Pow2BlockQuantizer.Dequantize(codes, scales, rows, cols, deq, threads);
            Fp8Pow2BlockQuantizer.DequantizeToBf16(codes, scales, rows, cols, deqBf, threads);
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++)
                {
                    int i = r * cols + c;
                    double want = Pow2Reference.Fp8Value(codes, scales, cols, r, c);
                    if (BitConverter.SingleToUInt32Bits(deq[i]) != BitConverter.SingleToUInt32Bits((float)want) || deqBf[i] != Pow2Reference.Bf16(want))
                        Assert.Fail($"({r},{c}): code 0x{codes[i]:X2} float {deq[i]:R} bf16 0x{deqBf[i]:X4}, want {want:R}");
                }

            // With the stored scales the dequantized weights re-encode to the same codes, losslessly.
            var again = new byte[w.Length];
            Fp8Pow2BlockQuantizer.QuantizeWithScales(deqBf, scales, rows, cols, again, threads).Should().Be(0);
            again.Should().Equal(codes);
        }
    }

    [Fact]
    public void LargestCodeOfABlockIsAbove224()
    {
        // The scale is the smallest power of two that fits amax, so amax / s lies in (224, 448].
        var w = Pow2Reference.RandomWeight(256, 384, 11);
        var codes = new byte[w.Length];
        var scales = new byte[6];
        Fp8Pow2BlockQuantizer.Quantize(w, 256, 384, codes, scales);
        for (int b = 0; b < 6; b++)
        {
            double top = 0;
            for (int r = b / 3 * 128; r < b / 3 * 128 + 128; r++)
                for (int c = b % 3 * 128; c < b % 3 * 128 + 128; c++)
                    top = Math.Max(top, Math.Abs(Fp8Reference.E4M3.Decode(codes[r * 384 + c])));
            top.Should().BeInRange(224, 448);
        }
    }

    [Fact]
    public void WithScalesClampsAndCounts()
    {
        var w = Pow2Reference.RandomWeight(128, 128, 5);
        var bf = Pow2Reference.ToBf16Bits(w);
        var codes = new byte[w.Length];
        var scales = new byte[1];
        Fp8Pow2BlockQuantizer.Quantize(bf, 128, 128, codes, scales);
        var deq = new ushort[w.Length];
        Fp8Pow2BlockQuantizer.DequantizeToBf16(codes, scales, 128, 128, deq);
        // A quarter of the scale: values past 112 * s saturate at 448 (DeepSeek's clamp, never NaN).
        var small = new[] { (byte)(scales[0] - 2) };
        var re = new byte[w.Length];
        int inexact = Fp8Pow2BlockQuantizer.QuantizeWithScales(deq, small, 128, 128, re);
        int want = 0;
        for (int i = 0; i < w.Length; i++)
            if (Math.Abs(Bf16.ToSingle(deq[i]) / Pow2Reference.E8M0(small[0])) > 448) want++;
        want.Should().BeGreaterThan(0);
        inexact.Should().Be(want, "multiplying an e4m3 value by 4 is exact below 448");
        for (int i = 0; i < w.Length; i++)
            if (Math.Abs(Bf16.ToSingle(deq[i]) / Pow2Reference.E8M0(small[0])) > 448)
                (re[i] & 0x7F).Should().Be(0x7E, "saturated to 448");
    }

    [Fact]
    public void ValidateLayoutChecksTheStoredShapes()
    {
        Fp8Pow2BlockQuantizer.ValidateLayout([64, 256], [1, 2]).Should().Be((64, 256));
        var act = () => Fp8Pow2BlockQuantizer.ValidateLayout([64, 256], [2, 1]);
        act.Should().Throw<InvalidDataException>().WithMessage(
            "FP8 scale has shape [2, 1]; weight [64, 256] needs [1, 2] (one E8M0 scale per 128x128 block)");
        ((Action)(() => Fp8Pow2BlockQuantizer.ValidateLayout([64, 256], [2]))).Should().Throw<InvalidDataException>();
        ((Action)(() => Fp8Pow2BlockQuantizer.ValidateLayout([4, 64, 256], [1, 2]))).Should().Throw<InvalidDataException>().WithMessage("*expected 2-D*");
    }

    [Fact]
    public void BadBuffersAndScalesAreRejected()
    {
        var act = () => Fp8Pow2BlockQuantizer.Dequantize(new byte[64 * 256], new byte[3], 64, 256, new float[64 * 256]);
        act.Should().Throw<ArgumentException>().WithMessage("FP8 scale holds 3 bytes; weight [64, 256] needs exactly 2 ([1, 2], one per 128x128 block).");
        var act2 = () => Fp8Pow2BlockQuantizer.Quantize(new float[100], 10, 10, new byte[99], new byte[1]);
        act2.Should().Throw<ArgumentException>().WithMessage("FP8 buffer holds 99 bytes*");
        var act3 = () => Fp8Pow2BlockQuantizer.DequantizeToBf16(new byte[256 * 128], new byte[] { 127, 0xFF }, 256, 128, new ushort[256 * 128]);
        act3.Should().Throw<InvalidDataException>().WithMessage("FP8 scale [1, 0] is 0xFF, which is NaN in E8M0");
        var w = new float[200 * 300];
        w[150 * 300 + 260] = float.NaN;
        var act4 = () => Fp8Pow2BlockQuantizer.Quantize(w, 200, 300, new byte[w.Length], new byte[6]);
        act4.Should().Throw<ArgumentException>().WithMessage("*block (1, 2)*");
    }
}
