using Converter.Numerics;

namespace Converter.Tests.Numerics;

public class E8M0Tests
{
    [Fact]
    public void EveryCodeDecodesToItsPowerOfTwoAnd0xFFIsNaN()
    {
        var all = new byte[256];
        for (int c = 0; c < 256; c++) all[c] = (byte)c;
        var spans = new float[256];
        E8M0.ToSingle(all, spans);
        for (int c = 0; c < 255; c++)
        {
            float v = E8M0.ToSingle((byte)c);
            ((double)v).Should().Be(Pow2Reference.E8M0((byte)c), $"code {c}");
            spans[c].Should().Be(v);
            E8M0.TryFromSingle(v, out byte back).Should().BeTrue($"code {c}");
            back.Should().Be((byte)c);
            E8M0.FromExponent(c - 127).Should().Be((byte)c);
        }
        float.IsNaN(E8M0.ToSingle(E8M0.NaNCode)).Should().BeTrue();
        float.IsNaN(spans[255]).Should().BeTrue();
        BitConverter.SingleToUInt32Bits(E8M0.ToSingle(0)).Should().Be(0x0040_0000u, "2^-127 is a float32 subnormal");
    }

    [Fact]
    public void ReciprocalIsExactForEveryFiniteCode()
    {
        for (int c = 0; c < 255; c++)
            ((double)BitConverter.UInt32BitsToSingle(E8M0.ReciprocalBits((byte)c))).Should().Be(1 / Pow2Reference.E8M0((byte)c), $"code {c}");
    }

    [Theory]
    [InlineData(0f)]
    [InlineData(-1f)]
    [InlineData(3f)]
    [InlineData(0.75f)]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(-0.5f)]
    public void TryFromSingleRejectsAllButPowersOfTwoInRange(float v)
    {
        E8M0.TryFromSingle(v, out _).Should().BeFalse($"{v:R}");
        E8M0.TryFromSingle(MathF.ScaleB(1f, 127), out byte top).Should().BeTrue();
        top.Should().Be(254);
        E8M0.TryFromSingle(MathF.ScaleB(1f, -128), out _).Should().BeFalse("2^-128 is a power of two below E8M0's range");
    }

    [Fact]
    public void FromExponentRejectsOutOfRange()
    {
        ((Action)(() => E8M0.FromExponent(128))).Should().Throw<ArgumentOutOfRangeException>();
        ((Action)(() => E8M0.FromExponent(-128))).Should().Throw<ArgumentOutOfRangeException>();
    }

    [Fact]
    public void ScaleIsTheCeilingPowerOfTwoComputedExactly()
    {
        // Boundaries: amax = max * 2^k exactly gives k; the next float up gives k + 1 (a rounded division
        // amax / max could land on 2^k and lose that); just below gives k.
        foreach (float max in new[] { 448f, 6f })
            for (int k = -120; k <= 120; k += 7)
            {
                float amax = (float)(max * Math.Pow(2, k));
                E8M0.CeilLog2Ratio(amax, max).Should().Be(k);
                E8M0.CeilLog2Ratio(MathF.BitIncrement(amax), max).Should().Be(k + 1);
                E8M0.CeilLog2Ratio(MathF.BitDecrement(amax), max).Should().Be(k);
                E8M0.ScaleFor(amax, max).Should().Be((byte)(k + 127));
            }
        E8M0.ScaleFor(0f, 448f).Should().Be(127, "an all-zero block gets 2^0");
        E8M0.ScaleFor(0f, 6f).Should().Be(127);

        var rng = new Random(7);
        for (int i = 0; i < 200_000; i++)
        {
            // Random bit patterns cover subnormals and every binade.
            float amax = BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(1, 0x7F80_0000L));
            foreach (float max in new[] { 448f, 6f })
            {
                int want = Pow2Reference.ScaleExponent(amax, max);
                E8M0.ScaleFor(amax, max).Should().Be((byte)(want + 127));
                if (want > -127) E8M0.CeilLog2Ratio(amax, max).Should().Be(want);
            }
        }
    }

    [Fact]
    public void TinyAmaxClampsToTheSmallestScaleAndStillFits()
    {
        float amax = 1e-40f; // 448 * 2^-127 is about 2.6e-36
        E8M0.CeilLog2Ratio(amax, 448f).Should().BeLessThan(-127);
        E8M0.ScaleFor(amax, 448f).Should().Be(0);
        (amax / E8M0.ToSingle(0)).Should().BeLessThanOrEqualTo(448f);
    }

    [Fact]
    public void BadArgumentsThrow()
    {
        ((Action)(() => E8M0.ScaleFor(float.NaN, 448f))).Should().Throw<ArgumentOutOfRangeException>();
        ((Action)(() => E8M0.ScaleFor(float.PositiveInfinity, 6f))).Should().Throw<ArgumentOutOfRangeException>();
        ((Action)(() => E8M0.ScaleFor(-1f, 6f))).Should().Throw<ArgumentOutOfRangeException>();
        ((Action)(() => E8M0.ScaleFor(float.MaxValue, 1f))).Should().Throw<ArgumentOutOfRangeException>().WithMessage("*above*");
        ((Action)(() => E8M0.ToSingle(new byte[3], new float[2]))).Should().Throw<ArgumentException>();
    }
}
