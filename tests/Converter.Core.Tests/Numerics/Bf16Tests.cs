using Converter.Numerics;

namespace Converter.Tests.Numerics;

public class Bf16Tests
{
    private static IEnumerable<float> Samples()
    {
        // Every bf16 value, each with neighbours that sit exactly on, just below and just above the rounding tie.
        for (uint hi = 0; hi < 65536; hi++)
            foreach (uint lo in new uint[] { 0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF })
                yield return BitConverter.UInt32BitsToSingle(hi << 16 | lo);
        var rng = new Random(7);
        for (int i = 0; i < 200_000; i++)
            yield return BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32));
    }

    [Fact]
    public void ScalarMatchesArithmeticReference()
    {
        foreach (float f in Samples())
        {
            ushort want = Bf16.FromSingleReference(f);
            if (Bf16.FromSingle(f) != want)
                Assert.Fail($"0x{BitConverter.SingleToUInt32Bits(f):X8}: scalar 0x{Bf16.FromSingle(f):X4}, reference 0x{want:X4}");
        }
    }

    [Fact]
    public void VectorMatchesScalar()
    {
        var f = Samples().ToArray();
        foreach (int offset in new[] { 0, 3 })
        {
            var src = f.AsSpan(offset, f.Length - offset - 5);
            var got = new ushort[src.Length];
            Bf16.FromSingle(src, got);
            for (int i = 0; i < src.Length; i++)
                if (got[i] != Bf16.FromSingleReference(src[i]))
                    Assert.Fail($"0x{BitConverter.SingleToUInt32Bits(src[i]):X8}: vector 0x{got[i]:X4}, reference 0x{Bf16.FromSingleReference(src[i]):X4}");
        }
    }

    [Fact]
    public void RoundingAndSpecialCases()
    {
        Bf16.FromSingle(1f).Should().Be(0x3F80);
        Bf16.FromSingle(BitConverter.UInt32BitsToSingle(0x3F80_8000)).Should().Be(0x3F80, "tie goes to even");
        Bf16.FromSingle(BitConverter.UInt32BitsToSingle(0x3F81_8000)).Should().Be(0x3F82, "tie goes to even");
        Bf16.FromSingle(BitConverter.UInt32BitsToSingle(0x3F80_8001)).Should().Be(0x3F81);
        Bf16.FromSingle(float.MaxValue).Should().Be(0x7F80, "rounds up to infinity");
        Bf16.FromSingle(float.NegativeInfinity).Should().Be(0xFF80);
        // A NaN whose payload lives only in the dropped bits must stay NaN, and quiet.
        Bf16.FromSingle(BitConverter.UInt32BitsToSingle(0x7F80_0001)).Should().Be(0x7FC0);
        Bf16.FromSingle(BitConverter.UInt32BitsToSingle(0xFF80_0001)).Should().Be(0xFFC0);
        var v = new ushort[40];
        var nan = Enumerable.Repeat(BitConverter.UInt32BitsToSingle(0x7F80_0001), 40).ToArray();
        Bf16.FromSingle(nan, v);
        v.Should().OnlyContain(x => x == 0x7FC0);
    }

    [Fact]
    public void ToSingleIsExactForAllPatterns()
    {
        var bits = Enumerable.Range(0, 65536).Select(i => (ushort)i).ToArray();
        var f = new float[bits.Length];
        Bf16.ToSingle(bits, f);
        for (int i = 0; i < bits.Length; i++)
        {
            BitConverter.SingleToUInt32Bits(f[i]).Should().Be((uint)i << 16);
            BitConverter.SingleToUInt32Bits(Bf16.ToSingle((ushort)i)).Should().Be((uint)i << 16);
        }
    }

    [Fact]
    public void RoundTripOfEveryNonNaNPatternIsIdentity()
    {
        var bits = Enumerable.Range(0, 65536).Select(i => (ushort)i).ToArray();
        var f = new float[bits.Length];
        var back = new ushort[bits.Length];
        Bf16.ToSingle(bits, f);
        Bf16.FromSingle(f, back);
        for (int i = 0; i < bits.Length; i++)
            if (!float.IsNaN(f[i])) back[i].Should().Be((ushort)i);
            else back[i].Should().Be((ushort)(i | 0x40), "NaN is kept, quieted");
    }
}
