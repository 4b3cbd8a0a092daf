using Converter.Numerics;

namespace Converter.Tests.Numerics;

public class Fp4BlockQuantizerTests
{
    /// <summary>Random weights with, where there is room, an all-zero group, a group of one negative value, a
    /// group whose amax is exactly 6 * 2^-7, one a bf16 step above, a group of subnormals and a -0. All values are
    /// bf16, so the bf16 and float32 overloads see the same numbers.</summary>
    private static float[] Weight(int rows, int cols)
    {
        var w = Pow2Reference.RandomWeight(rows, cols, rows * 7919 + cols);
        if (w.Length >= 6 * 32)
        {
            w.AsSpan(0, 4 * 32).Clear();
            w[40] = Bf16.ToSingle(Bf16.FromSingle(-0.006f));
            w[64 + 3] = 6f * 0.0078125f;
            w[96 + 5] = Bf16.ToSingle((ushort)(Bf16.FromSingle(6f * 0.0078125f) + 1));
            for (int k = 0; k < 32; k++) w[128 + k] = Bf16.ToSingle((ushort)(((k * 4 + 1) & 0x7F) | (k % 2 == 0 ? 0 : 0x8000)));
            w[160 + 7] = -0f;
        }
        return w;
    }

    [Theory]
    [InlineData(1, 32)]
    [InlineData(3, 64)]
    [InlineData(5, 96)]
    [InlineData(128, 256)]
    [InlineData(129, 160)]
    [InlineData(64, 2048)]
    public void MatchesScalarReference(int rows, int cols)
    {
        var w = Weight(rows, cols);
        var bf = Pow2Reference.ToBf16Bits(w);
        var (wantPacked, wantScales) = Pow2Reference.QuantizeFp4(w, rows, cols);
        Fp4BlockQuantizer.PackedShape(rows, cols).Should().Be((rows, cols / 2));
        Fp4BlockQuantizer.ScaleShape(rows, cols).Should().Be((rows, cols / 32));
        foreach (int threads in new[] { 1, -1 })
        {
            var packed = new byte[w.Length / 2];
            var scales = new byte[w.Length / 32];
            Fp4BlockQuantizer.Quantize(bf, rows, cols, packed, scales, threads);
            packed.Should().Equal(wantPacked);
            scales.Should().Equal(wantScales);

            var packedF = new byte[w.Length / 2];
            var scalesF = new byte[w.Length / 32];
            Fp4BlockQuantizer.Quantize(w, rows, cols, packedF, scalesF, threads);
            packedF.Should().Equal(wantPacked);
            scalesF.Should().Equal(wantScales);

            var deq = new float[w.Length];
            var deqBf = new ushort[w.Length];
            Fp4BlockQuantizer.Dequantize(packed, scales, rows, cols, deq, threads);
            Fp4BlockQuantizer.DequantizeToBf16(packed, scales, rows, cols, deqBf, threads);
            for (int i = 0; i < w.Length; i++)
            {
                // Every FP4 value is exact in float32 and in bf16.
                double want = Pow2Reference.Fp4Value(packed, scales, i);
                if (BitConverter.SingleToUInt32Bits(deq[i]) != BitConverter.SingleToUInt32Bits((float)want)
                    || deqBf[i] != Pow2Reference.Bf16(want) || Bf16.ToSingle(deqBf[i]) != deq[i])
                    Assert.Fail($"element {i}: float {deq[i]:R} bf16 0x{deqBf[i]:X4}, want {want:R}");
            }

            // Re-encoding the dequantized weights with the stored scales is lossless and gives the same codes.
            var again = new byte[packed.Length];
            Fp4BlockQuantizer.QuantizeWithScales(deqBf, scales, rows, cols, again, threads).Should().Be(0);
            again.Should().Equal(packed);
        }
    }

    [Fact]
    public void RuleDetails()
    {
        var w = Weight(1, 256);
        var bf = Pow2Reference.ToBf16Bits(w);
        var packed = new byte[128];
        var scales = new byte[8];
        Fp4BlockQuantizer.Quantize(bf, 1, 256, packed, scales);
        scales[0].Should().Be(127, "an all-zero group gets 2^0");
        packed.AsSpan(0, 16).ToArray().Should().OnlyContain(b => b == 0);
        // A lone bf16(-0.006) = -0.0060119...: amax / 6 = 1.03 * 2^-10 -> 2^-9 (ceil), and -0.00601 / 2^-9 = -3.08
        // rounds to -3 (code 0xD). Just above a power of two, ceil leaves the top of the grid unused: a group's
        // largest code lies in [3, 6].
        scales[1].Should().Be(127 - 9);
        (packed[16 + 4] & 0xF).Should().Be(0xD);
        scales[2].Should().Be(127 - 7, "amax exactly 6 * 2^-7 gives 2^-7, so amax codes to 6");
        scales[3].Should().Be(127 - 6, "one bf16 step above 6 * 2^-7 needs 2^-6");
        scales[4].Should().Be(0, "subnormal amax: ceil(log2(amax / 6)) is below -127, clamped to the smallest scale");
        // Nothing quantizes to 0x8 (negative zero): the -0 input and the negative subnormals all give code 0.
        for (int i = 0; i < 256; i++)
        {
            int code = i % 2 == 0 ? packed[i / 2] & 0xF : packed[i / 2] >> 4;
            code.Should().NotBe(8, $"element {i}");
        }
    }

    [Fact]
    public void WithScalesCountsWhatDoesNotFit()
    {
        // Halving a group's scale doubles w / s: codes past 3 saturate at 6 and values between grid points round.
        var w = Weight(2, 64);
        var bf = Pow2Reference.ToBf16Bits(w);
        var packed = new byte[64];
        var scales = new byte[4];
        Fp4BlockQuantizer.Quantize(bf, 2, 64, packed, scales);
        var deq = new ushort[128];
        Fp4BlockQuantizer.DequantizeToBf16(packed, scales, 2, 64, deq);
        var smaller = scales.Select(s => (byte)(s - 1)).ToArray();
        var re = new byte[64];
        int inexact = Fp4BlockQuantizer.QuantizeWithScales(deq, smaller, 2, 64, re);
        int want = 0;
        for (int i = 0; i < 128; i++)
            if (Math.Abs(Bf16.ToSingle(deq[i]) / Pow2Reference.E8M0(smaller[i / 32])) > 6) want++;
        want.Should().BeGreaterThan(0);
        inexact.Should().Be(want, "doubling a code value is exact up to 6, so only the saturated ones miss");
        var nan = (ushort[])deq.Clone();
        nan[5] = 0x7FC0;
        nan[70] = 0xFF80; // -inf
        Fp4BlockQuantizer.QuantizeWithScales(nan, scales, 2, 64, re).Should().Be(2);
    }

    [Theory]
    [InlineData(7)]
    [InlineData(33)]
    public void OddRowLengthIsRejected(int cols)
    {
        var act = () => Fp4BlockQuantizer.Quantize(new float[2 * cols], 2, cols, new byte[cols], new byte[2]);
        act.Should().Throw<ArgumentException>().WithMessage($"*row of {cols} values is odd*two values a byte*");
        var act2 = () => Fp4BlockQuantizer.ScaleShape(4, cols);
        act2.Should().Throw<ArgumentException>().WithMessage("*odd*");
    }

    [Fact]
    public void RowNotWholeGroupsIsRejected()
    {
        var act = () => Fp4BlockQuantizer.Quantize(new ushort[48], 1, 48, new byte[24], new byte[2]);
        act.Should().Throw<ArgumentException>().WithMessage("*48 values is not a multiple of the 32-value scale group*");
    }

    [Fact]
    public void WrongBufferSizesAreRejected()
    {
        // Scales given as input must be exactly [rows, cols/32]; outputs may be larger.
        var act = () => Fp4BlockQuantizer.Dequantize(new byte[64], new byte[5], 2, 64, new float[128]);
        act.Should().Throw<ArgumentException>().WithMessage("FP4 scale holds 5 bytes; weight [2, 64] needs exactly 4 ([2, 2], one per 32 values along a row).");
        var act2 = () => Fp4BlockQuantizer.DequantizeToBf16(new byte[63], new byte[4], 2, 64, new ushort[128]);
        act2.Should().Throw<ArgumentException>().WithMessage("Packed FP4 buffer holds 63 bytes*");
        var act3 = () => Fp4BlockQuantizer.Quantize(new float[128], 2, 64, new byte[64], new byte[3]);
        act3.Should().Throw<ArgumentException>().WithMessage("FP4 scale holds 3 bytes*needs 4*");
        var act4 = () => Fp4BlockQuantizer.Quantize(new float[127], 2, 64, new byte[64], new byte[4]);
        act4.Should().Throw<ArgumentException>().WithMessage("Weight/output holds 127 values*");
        Fp4BlockQuantizer.Quantize(new float[128], 2, 64, new byte[100], new byte[9]); // roomy outputs are fine
    }

    [Fact]
    public void ValidateLayoutChecksTheStoredShapes()
    {
        Fp4BlockQuantizer.ValidateLayout([128, 64], [128, 4]).Should().Be((128, 128));
        var act = () => Fp4BlockQuantizer.ValidateLayout([128, 64], [4, 128]);
        act.Should().Throw<InvalidDataException>().WithMessage(
            "FP4 scale has shape [4, 128]; weight [128, 64] ([128, 128] values) needs [128, 4] (one E8M0 scale per 32 values along a row)");
        ((Action)(() => Fp4BlockQuantizer.ValidateLayout([128, 64], [1, 1]))).Should().Throw<InvalidDataException>();
        ((Action)(() => Fp4BlockQuantizer.ValidateLayout([128, 64], [128, 4, 1]))).Should().Throw<InvalidDataException>();
        ((Action)(() => Fp4BlockQuantizer.ValidateLayout([8192], [256]))).Should().Throw<InvalidDataException>().WithMessage("*expected 2-D*");
        ((Action)(() => Fp4BlockQuantizer.ValidateLayout([8, 24], [8, 1]))).Should().Throw<InvalidDataException>().WithMessage("*48 values, not a multiple*");
    }

    [Fact]
    public void NaNScaleIsInvalidData()
    {
        var scales = new byte[] { 127, 127, 127, 0xFF };
        var act = () => Fp4BlockQuantizer.Dequantize(new byte[64], scales, 2, 64, new float[128]);
        act.Should().Throw<InvalidDataException>().WithMessage("FP4 scale [1, 1] is 0xFF, which is NaN in E8M0");
        var act2 = () => Fp4BlockQuantizer.QuantizeWithScales(new ushort[128], scales, 2, 64, new byte[64]);
        act2.Should().Throw<InvalidDataException>();
    }

    [Fact]
    public void NonFiniteWeightIsRejectedNamingTheGroup()
    {
        foreach (int threads in new[] { 1, -1 })
        {
            var w = new float[200 * 64];
            w[150 * 64 + 40] = float.NaN;
            w[190 * 64] = float.PositiveInfinity;
            var act = () => Fp4BlockQuantizer.Quantize(w, 200, 64, new byte[w.Length / 2], new byte[400], threads);
            act.Should().Throw<ArgumentException>().WithMessage("Non-finite value (NaN or infinity) in weight row 150, columns 32..63*");
            var bf = new ushort[200 * 64];
            bf[3] = 0xFF80;
            var act2 = () => Fp4BlockQuantizer.Quantize(bf, 200, 64, new byte[bf.Length / 2], new byte[400], threads);
            act2.Should().Throw<ArgumentException>().WithMessage("*row 0, columns 0..31*");
        }
    }
}
