using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Converter.Numerics.LogFmt;

namespace Converter.Core.Tests.Numerics.LogFmt;

/// <summary>The vector 2^x either rounds to the same float32 as libm pow or flags the lane.</summary>
public class LogFmtExp2Tests
{
    [Fact]
    public void Vector_exp2_agrees_with_pow_or_flags_the_lane()
    {
        if (!Avx2.IsSupported) return; // scalar-only machine: nothing to check
        var rng = new Random(5);
        int flagged = 0, total = 0;
        for (int it = 0; it < 250_000; it++)
        {
            var e = new double[4];
            for (int l = 0; l < 4; l++)
            {
                if (it % 2 == 0) e[l] = -126 + rng.NextDouble() * 254;
                else
                {
                    // exponents whose 2^e lands next to a float32 rounding midpoint
                    float f = BitConverter.Int32BitsToSingle(rng.Next(0x00800000, 0x7F000000));
                    double mid = ((double)f + MathF.BitIncrement(f)) / 2;
                    e[l] = Math.Log2(mid) + (rng.Next(3) - 1) * 1e-16;
                }
            }
            var v = LogFmtKernels.Exp2Float(Vector256.Create(e[0], e[1], e[2], e[3]), out var unsafeMask);
            for (int l = 0; l < 4; l++)
            {
                total++;
                if (BitConverter.DoubleToInt64Bits(unsafeMask[l]) != 0) { flagged++; continue; }
                float want = (float)Math.Pow(2.0, e[l]);
                ((float)v[l]).Should().Be(want, $"2^{e[l]:R}");
            }
        }
        flagged.Should().BeGreaterThan(0, "the midpoint half of the inputs must trip the guard");
        flagged.Should().BeLessThan(total / 2 + total / 100);
    }
}
