using Converter.Numerics;

namespace Converter.Tests.Numerics;

/// <summary>FP8 codecs against torch's conversions (golden/vectors/fp8) and an independent reference.</summary>
public class Fp8CodecTests
{
    private static string Vec(string name) => TestData.Golden("vectors", "fp8", name);

    private static readonly ushort[] AllBf16 = Fp8Reference.ReadU16(Vec("bf16_all.u16"));

    private static float[] AllBf16AsFloat()
    {
        var f = new float[AllBf16.Length];
        for (int i = 0; i < f.Length; i++) f[i] = Bf16.ToSingle(AllBf16[i]);
        return f;
    }

    public static TheoryData<string> Formats => new() { "e4m3fn", "e5m2" };

    private static byte EncodeScalar(string fmt, float x) => fmt == "e4m3fn" ? Fp8E4M3.FromSingle(x) : Fp8E5M2.FromSingle(x);
    private static float DecodeScalar(string fmt, byte c) => fmt == "e4m3fn" ? Fp8E4M3.ToSingle(c) : Fp8E5M2.ToSingle(c);
    private static Fp8Reference Ref(string fmt) => fmt == "e4m3fn" ? Fp8Reference.E4M3 : Fp8Reference.E5M2;

    private static void EncodeSpan(string fmt, ReadOnlySpan<float> s, Span<byte> d)
    {
        if (fmt == "e4m3fn") Fp8E4M3.FromSingle(s, d); else Fp8E5M2.FromSingle(s, d);
    }

    private static void EncodeBf16Span(string fmt, ReadOnlySpan<ushort> s, Span<byte> d)
    {
        if (fmt == "e4m3fn") Fp8E4M3.FromBf16(s, d); else Fp8E5M2.FromBf16(s, d);
    }

    private static void DecodeSpan(string fmt, ReadOnlySpan<byte> s, Span<float> d)
    {
        if (fmt == "e4m3fn") Fp8E4M3.ToSingle(s, d); else Fp8E5M2.ToSingle(s, d);
    }

    private static void AssertSameBytes(byte[] expected, byte[] actual, Func<int, string> describe)
    {
        actual.Length.Should().Be(expected.Length);
        var bad = Enumerable.Range(0, expected.Length).Where(i => expected[i] != actual[i]).ToList();
        bad.Should().BeEmpty($"{bad.Count} mismatches, first: {string.Join("; ", bad.Take(5).Select(i => $"{describe(i)} expected 0x{expected[i]:X2} got 0x{actual[i]:X2}"))}");
    }

    [Fact]
    public void Bf16InputFileHoldsEveryPatternInOrder()
    {
        AllBf16.Length.Should().Be(65536);
        for (int i = 0; i < AllBf16.Length; i++) AllBf16[i].Should().Be((ushort)i);
    }

    [Theory, MemberData(nameof(Formats))]
    public void AllBf16Patterns_ScalarMatchesTorch(string fmt)
    {
        var expected = File.ReadAllBytes(Vec($"bf16_all_to_{fmt}.u8"));
        var f = AllBf16AsFloat();
        var got = new byte[f.Length];
        for (int i = 0; i < f.Length; i++) got[i] = EncodeScalar(fmt, f[i]);
        AssertSameBytes(expected, got, i => $"bf16 0x{i:X4} ({f[i]})");
    }

    [Theory, MemberData(nameof(Formats))]
    public void AllBf16Patterns_VectorFromFloatMatchesTorch(string fmt)
    {
        var expected = File.ReadAllBytes(Vec($"bf16_all_to_{fmt}.u8"));
        var f = AllBf16AsFloat();
        var got = new byte[f.Length];
        EncodeSpan(fmt, f, got);
        AssertSameBytes(expected, got, i => $"bf16 0x{i:X4} ({f[i]})");
        // Odd offsets and lengths exercise the scalar tails next to the vector body.
        var part = new byte[f.Length - 37];
        EncodeSpan(fmt, f.AsSpan(5, part.Length), part);
        AssertSameBytes(expected.AsSpan(5, part.Length).ToArray(), part, i => $"bf16 0x{i + 5:X4}");
    }

    [Theory, MemberData(nameof(Formats))]
    public void AllBf16Patterns_VectorFromBf16MatchesTorch(string fmt)
    {
        var expected = File.ReadAllBytes(Vec($"bf16_all_to_{fmt}.u8"));
        var got = new byte[AllBf16.Length];
        EncodeBf16Span(fmt, AllBf16, got);
        AssertSameBytes(expected, got, i => $"bf16 0x{i:X4}");
    }

    [Theory, MemberData(nameof(Formats))]
    public void AllBf16Patterns_IndependentReferenceMatchesTorch(string fmt)
    {
        // Guards the reference itself, which the random-float test below relies on.
        var expected = File.ReadAllBytes(Vec($"bf16_all_to_{fmt}.u8"));
        var f = AllBf16AsFloat();
        var got = new byte[f.Length];
        for (int i = 0; i < f.Length; i++) got[i] = Ref(fmt).Encode(f[i]);
        AssertSameBytes(expected, got, i => $"bf16 0x{i:X4} ({f[i]})");
    }

    [Theory, MemberData(nameof(Formats))]
    public void Probes_MatchTorch(string fmt)
    {
        var probe = Fp8Reference.ReadF32(Vec("probe.f32"));
        var expected = File.ReadAllBytes(Vec($"probe_to_{fmt}.u8"));
        expected.Length.Should().Be(probe.Length);
        var scalar = probe.Select(x => EncodeScalar(fmt, x)).ToArray();
        AssertSameBytes(expected, scalar, i => $"scalar probe {probe[i]:R}");
        var vector = new byte[probe.Length];
        EncodeSpan(fmt, probe, vector);
        AssertSameBytes(expected, vector, i => $"vector probe {probe[i]:R}");
        var reference = probe.Select(x => Ref(fmt).Encode(x)).ToArray();
        AssertSameBytes(expected, reference, i => $"reference probe {probe[i]:R}");
    }

    [Theory, MemberData(nameof(Formats))]
    public void DecodeTable_MatchesTorchBitForBit(string fmt)
    {
        var table = Fp8Reference.ReadF32(Vec($"{fmt}_decode.f32"));
        table.Length.Should().Be(256);
        var codes = Enumerable.Range(0, 256).Select(i => (byte)i).ToArray();
        var vector = new float[256];
        DecodeSpan(fmt, codes, vector);
        for (int c = 0; c < 256; c++)
        {
            uint want = BitConverter.SingleToUInt32Bits(table[c]);
            BitConverter.SingleToUInt32Bits(DecodeScalar(fmt, (byte)c)).Should().Be(want, $"scalar decode of 0x{c:X2}");
            BitConverter.SingleToUInt32Bits(vector[c]).Should().Be(want, $"vector decode of 0x{c:X2}");
            double r = Ref(fmt).Decode((byte)c);
            if (double.IsNaN(r)) float.IsNaN(table[c]).Should().BeTrue();
            else ((double)table[c]).Should().Be(r, $"definition value of 0x{c:X2}");
        }
    }

    [Theory, MemberData(nameof(Formats))]
    public void RandomFloats_VectorScalarAndReferenceAgree(string fmt)
    {
        var rng = new Random(1234);
        var f = new float[200_003];
        for (int i = 0; i < f.Length; i++)
        {
            // Mix of raw bit patterns (all exponents, NaNs, subnormals) and values in the formats' ranges.
            f[i] = (i % 3) switch
            {
                0 => BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32)),
                1 => (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-20, 18))),
                _ => (float)((rng.NextDouble() * 2 - 1) * 600),
            };
        }
        var vector = new byte[f.Length];
        EncodeSpan(fmt, f, vector);
        var reference = Ref(fmt);
        var bad = new List<int>();
        for (int i = 0; i < f.Length; i++)
        {
            byte want = reference.Encode(f[i]);
            if (vector[i] != want || EncodeScalar(fmt, f[i]) != want) bad.Add(i);
        }
        bad.Should().BeEmpty($"first: {string.Join("; ", bad.Take(5).Select(i => $"{f[i]:R} ref 0x{reference.Encode(f[i]):X2} vec 0x{vector[i]:X2} scalar 0x{EncodeScalar(fmt, f[i]):X2}"))}");
    }

    [Theory, MemberData(nameof(Formats))]
    public void EveryFiniteCodeRoundTrips(string fmt)
    {
        for (int c = 0; c < 256; c++)
        {
            float v = DecodeScalar(fmt, (byte)c);
            if (!float.IsFinite(v)) continue;
            EncodeScalar(fmt, v).Should().Be((byte)c, $"code 0x{c:X2} = {v}");
        }
    }
}
