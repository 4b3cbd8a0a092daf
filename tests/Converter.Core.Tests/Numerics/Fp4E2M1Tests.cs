using System.Runtime.Intrinsics;
using Converter.Numerics;

namespace Converter.Tests.Numerics;

public class Fp4E2M1Tests
{
    [Fact]
    public void DecodeTableIsTheE2M1Values()
    {
        float[] want = [0f, 0.5f, 1f, 1.5f, 2f, 3f, 4f, 6f, -0f, -0.5f, -1f, -1.5f, -2f, -3f, -4f, -6f];
        for (int c = 0; c < 16; c++)
        {
            BitConverter.SingleToUInt32Bits(Fp4E2M1.ToSingle(c)).Should().Be(BitConverter.SingleToUInt32Bits(want[c]), $"code {c}");
            Fp4E2M1.ToBf16(c).Should().Be(Bf16.FromSingle(want[c]));
            Fp4E2M1.ToSingle(c).Should().Be((float)Pow2Reference.DecodeE2M1(c));
        }
    }

    [Fact]
    public void TiesGoToTheEvenCodeAndZeroIsAlwaysCodeZero()
    {
        // The midpoints between neighbours, as the reference checkpoint rounds them (checked there: 35k ties).
        (float In, int Code)[] cases =
        [
            (0.25f, 0), (0.75f, 2), (1.25f, 2), (1.75f, 4), (2.5f, 4), (3.5f, 6), (5f, 6),
            (-0.25f, 0), (-0.75f, 10), (-5f, 14), (6.5f, 7), (1e30f, 7), (float.PositiveInfinity, 7), (float.NegativeInfinity, 15),
            (-0f, 0), (-1e-30f, 0), (-0.2499f, 0), (0.2501f, 1), (-0.2501f, 9),
        ];
        foreach (var (x, code) in cases) Fp4E2M1.FromSingle(x).Should().Be((byte)code, $"{x:R}");
        ((Action)(() => Fp4E2M1.FromSingle(float.NaN))).Should().Throw<ArgumentException>();
    }

    private static IEnumerable<uint> Probes()
    {
        // Every bf16 pattern (as float32) but NaN, plus each value and midpoint with its float32 neighbours.
        for (uint b = 0; b < 0x10000; b++)
            if ((b & 0x7FFF) <= 0x7F80) yield return b << 16;
        foreach (double m in new[] { 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6 })
            foreach (float s in new[] { 1f, -1f })
            {
                float f = (float)m * s;
                yield return BitConverter.SingleToUInt32Bits(f);
                yield return BitConverter.SingleToUInt32Bits(MathF.BitIncrement(f));
                yield return BitConverter.SingleToUInt32Bits(MathF.BitDecrement(f));
            }
        var rng = new Random(3);
        for (int i = 0; i < 100_000; i++)
        {
            uint b = (uint)rng.NextInt64(0, 0x1_0000_0000L);
            if ((b & 0x7FFF_FFFFu) <= 0x7F80_0000u) yield return b;
        }
    }

    [Fact]
    public void ScalarEncodeMatchesNearestSearch()
    {
        foreach (uint b in Probes())
        {
            float x = BitConverter.UInt32BitsToSingle(b);
            byte got = Fp4E2M1.FromSingle(x), want = Pow2Reference.EncodeE2M1(x);
            if (got != want) Assert.Fail($"{x:R} (0x{b:X8}): code {got} want {want}");
        }
    }

    /// <summary>The vector kernels against the scalar one, lane by lane, on every probe (and NaN, which the block
    /// quantizers never pass but which must not break a lane's neighbours).</summary>
    [Fact]
    public void VectorKernelsMatchScalar()
    {
        var bits = Probes().Append(0x7FC0_0000u).Append(0xFFC0_0001u).ToArray();
        Array.Resize(ref bits, (bits.Length + 15) & ~15);
        for (int i = 0; i < bits.Length; i += 16)
        {
            var v512 = Vector512.Create(bits.AsSpan(i, 16));
            Vector512<uint> e512 = E2M1Kernels.Encode512(v512);
            Vector256<uint> e256lo = E2M1Kernels.Encode256(v512.GetLower()), e256hi = E2M1Kernels.Encode256(v512.GetUpper());
            for (int k = 0; k < 16; k++)
            {
                uint want = E2M1Kernels.EncodeScalar(bits[i + k]);
                uint got256 = k < 8 ? e256lo.GetElement(k) : e256hi.GetElement(k - 8);
                if (e512.GetElement(k) != want || got256 != want)
                    Assert.Fail($"0x{bits[i + k]:X8}: 512 {e512.GetElement(k)} 256 {got256} scalar {want}");
            }
        }
        var codes = Vector512.Create(0u, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        Vector512<uint> d512 = E2M1Kernels.Decode512(codes);
        for (int c = 0; c < 16; c++)
        {
            d512.GetElement(c).Should().Be(E2M1Kernels.DecodeScalar((uint)c));
            E2M1Kernels.Decode256(c < 8 ? codes.GetLower() : codes.GetUpper()).GetElement(c & 7).Should().Be(E2M1Kernels.DecodeScalar((uint)c));
        }
    }

    [Fact]
    public void PackingIsLowNibbleFirstAndVectorPackingAgrees()
    {
        var codes = new byte[64];
        var rng = new Random(5);
        for (int i = 0; i < codes.Length; i++) codes[i] = (byte)rng.Next(16);
        var packed = new byte[32];
        Fp4E2M1.Pack(codes, packed);
        for (int k = 0; k < 32; k++) packed[k].Should().Be((byte)(codes[2 * k] | codes[2 * k + 1] << 4));
        var back = new byte[64];
        Fp4E2M1.Unpack(packed, back);
        back.Should().Equal(codes);

        var out32 = new byte[32];
        var out16 = new byte[16];
        var out64 = new byte[64];
        E2M1Kernels.PackNibbles(Vector512.Create((ReadOnlySpan<byte>)codes)).CopyTo(out32);
        out32.Should().Equal(packed);
        E2M1Kernels.PackNibbles(Vector256.Create((ReadOnlySpan<byte>)codes.AsSpan(0, 32))).CopyTo(out16);
        out16.Should().Equal(packed[..16]);
        E2M1Kernels.UnpackNibbles(Vector256.Create((ReadOnlySpan<byte>)packed)).CopyTo(out64);
        out64.Should().Equal(codes);
        E2M1Kernels.UnpackNibbles(Vector128.Create((ReadOnlySpan<byte>)packed.AsSpan(0, 16))).CopyTo(out32);
        out32.Should().Equal(codes[..32]);

        ((Action)(() => Fp4E2M1.Pack(new byte[3], new byte[2]))).Should().Throw<ArgumentException>().WithMessage("*even*");
        ((Action)(() => Fp4E2M1.Unpack(new byte[3], new byte[5]))).Should().Throw<ArgumentException>();
    }
}
