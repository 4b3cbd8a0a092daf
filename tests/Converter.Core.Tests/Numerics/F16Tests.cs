using Converter.Numerics;

namespace Converter.Tests.Numerics;

/// <summary>Span conversions of half precision against <see cref="System.Half"/>.</summary>
public class F16Tests
{
    [Fact]
    public void ToSingleMatchesSystemHalfForAllPatterns()
    {
        var bits = Enumerable.Range(0, 65536).Select(i => (ushort)i).ToArray();
        var f = new float[bits.Length];
        F16.ToSingle(bits, f);
        for (int i = 0; i < bits.Length; i++)
        {
            uint want = BitConverter.SingleToUInt32Bits((float)BitConverter.UInt16BitsToHalf((ushort)i));
            if (BitConverter.SingleToUInt32Bits(f[i]) != want || F16.DecodeScalar((ushort)i) != want)
                Assert.Fail($"half 0x{i:X4}: vector 0x{BitConverter.SingleToUInt32Bits(f[i]):X8} scalar 0x{F16.DecodeScalar((ushort)i):X8} Half 0x{want:X8}");
        }
    }

    [Fact]
    public void FromSingleMatchesSystemHalf()
    {
        var list = new List<float>();
        // Every half value and the float32 neighbours of every rounding midpoint between halves.
        for (int h = 0; h < 65536; h++)
        {
            uint b = BitConverter.SingleToUInt32Bits((float)BitConverter.UInt16BitsToHalf((ushort)h));
            list.Add(BitConverter.UInt32BitsToSingle(b));
            uint mid = b + (1u << 12); // midpoint for normal halves (13 dropped bits)
            list.Add(BitConverter.UInt32BitsToSingle(mid - 1));
            list.Add(BitConverter.UInt32BitsToSingle(mid));
            list.Add(BitConverter.UInt32BitsToSingle(mid + 1));
        }
        var rng = new Random(11);
        for (int i = 0; i < 300_000; i++)
            list.Add(i % 2 == 0 ? BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32))
                                : (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-26, 17))));
        // Subnormal-half range with exact ties at multiples of 2^-25.
        for (int k = 0; k < 4096; k++) list.Add(k * MathF.Pow(2, -25));
        var f = list.ToArray();
        var got = new ushort[f.Length];
        F16.FromSingle(f, got);
        for (int i = 0; i < f.Length; i++)
        {
            ushort want = BitConverter.HalfToUInt16Bits((Half)f[i]);
            if (got[i] != want || F16.EncodeScalar(BitConverter.SingleToUInt32Bits(f[i])) != want || F16.FromSingle(f[i]) != want)
                Assert.Fail($"float 0x{BitConverter.SingleToUInt32Bits(f[i]):X8} ({f[i]:R}): vector 0x{got[i]:X4} Half 0x{want:X4}");
        }
    }
}
