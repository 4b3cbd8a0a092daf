namespace Converter.Tests.Numerics;

/// <summary>
/// Slow, independent references for the power-of-two (E8M0) layouts, straight from the definitions in double
/// precision: scale exponents by search, e2m1 by nearest-value search with ties to the even code, values as
/// code * 2^e, bf16 by comparing the two neighbours.
/// </summary>
internal static class Pow2Reference
{
    /// <summary>e2m1 magnitudes of codes 0..7.</summary>
    public static readonly double[] E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];

    /// <summary>2^(code-127); NaN for 0xFF.</summary>
    public static double E8M0(byte code) => code == 255 ? double.NaN : Math.Pow(2, code - 127);

    /// <summary>The smallest e with amax &lt;= max * 2^e (amax 0: 0), clamped to -127, by search from a log estimate.</summary>
    public static int ScaleExponent(double amax, double max)
    {
        if (amax == 0) return 0;
        int e = (int)Math.Ceiling(Math.Log2(amax / max));
        while (max * Math.Pow(2, e) < amax) e++;
        while (max * Math.Pow(2, e - 1) >= amax) e--;
        return Math.Max(e, -127);
    }

    /// <summary>Nearest e2m1 code of y: ties to the even code, beyond 6 saturates, a zero result is code 0.</summary>
    public static byte EncodeE2M1(double y)
    {
        double a = Math.Abs(y);
        // From 6 up it saturates (searching would see equal distances to 4 and 6 once they round in double).
        int best = a >= 6 ? 7 : 0;
        for (int c = 1; c < 8 && a < 6; c++)
        {
            double d = Math.Abs(a - E2M1[c]), dBest = Math.Abs(a - E2M1[best]);
            if (d < dBest || (d == dBest && c % 2 == 0)) best = c;
        }
        return (byte)(best != 0 && y < 0 ? best | 8 : best);
    }

    public static double DecodeE2M1(int code) => (code & 8) != 0 ? -E2M1[code & 7] : E2M1[code & 7];

    /// <summary>bf16 bits nearest to v (ties to even), for v exact in float32.</summary>
    public static ushort Bf16(double v)
    {
        float x = (float)v;
        if ((double)x != v && !double.IsNaN(v)) throw new InvalidOperationException($"{v:R} is not exact in float32");
        if (float.IsNaN(x)) return (ushort)((BitConverter.SingleToUInt32Bits(x) >> 16) | 0x40);
        uint b = BitConverter.SingleToUInt32Bits(x);
        float lo = BitConverter.UInt32BitsToSingle(b & 0xFFFF_0000u);
        float hi = BitConverter.UInt32BitsToSingle((b & 0xFFFF_0000u) + 0x1_0000u);
        double dl = Math.Abs(v - lo), dh = Math.Abs((double)hi - v);
        uint keep = b >> 16;
        if (dh < dl || (dh == dl && (keep & 1) == 1)) keep++;
        return (ushort)keep;
    }

    /// <summary>The FP4 layout by the rule: per row, groups of 32 along it.</summary>
    public static (byte[] Packed, byte[] Scales) QuantizeFp4(float[] w, int rows, int cols)
    {
        var packed = new byte[w.Length / 2];
        var scales = new byte[rows * cols / 32];
        for (int g = 0; g < scales.Length; g++)
        {
            double amax = 0;
            for (int k = 0; k < 32; k++) amax = Math.Max(amax, Math.Abs((double)w[g * 32 + k]));
            int e = ScaleExponent(amax, 6);
            scales[g] = (byte)(e + 127);
            for (int k = 0; k < 32; k++)
            {
                int i = g * 32 + k;
                byte code = EncodeE2M1(w[i] / Math.Pow(2, e));
                packed[i / 2] |= (byte)(i % 2 == 0 ? code : code << 4);
            }
        }
        return (packed, scales);
    }

    /// <summary>FP4 value of element i: LUT[nibble] * 2^(scale-127).</summary>
    public static double Fp4Value(ReadOnlySpan<byte> packed, ReadOnlySpan<byte> scales, int i)
    {
        int code = i % 2 == 0 ? packed[i / 2] & 0xF : packed[i / 2] >> 4;
        return DecodeE2M1(code) * E8M0(scales[i / 32]);
    }

    /// <summary>The FP8 layout by the rule: 128x128 blocks, e4m3 of w / 2^e.</summary>
    public static (byte[] Codes, byte[] Scales) QuantizeFp8(float[] w, int rows, int cols)
    {
        int sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        var codes = new byte[w.Length];
        var scales = new byte[sr * sc];
        for (int br = 0; br < sr; br++)
            for (int bc = 0; bc < sc; bc++)
            {
                double amax = 0;
                for (int r = br * 128; r < Math.Min(rows, br * 128 + 128); r++)
                    for (int c = bc * 128; c < Math.Min(cols, bc * 128 + 128); c++)
                        amax = Math.Max(amax, Math.Abs((double)w[r * cols + c]));
                int e = ScaleExponent(amax, 448);
                scales[br * sc + bc] = (byte)(e + 127);
                for (int r = br * 128; r < Math.Min(rows, br * 128 + 128); r++)
                    for (int c = bc * 128; c < Math.Min(cols, bc * 128 + 128); c++)
                        codes[r * cols + c] = Fp8Reference.E4M3.Encode((float)(w[r * cols + c] / Math.Pow(2, e)));
            }
        return (codes, scales);
    }

    public static double Fp8Value(ReadOnlySpan<byte> codes, ReadOnlySpan<byte> scales, int cols, int r, int c)
        => Fp8Reference.E4M3.Decode(codes[r * cols + c]) * E8M0(scales[r / 128 * ((cols + 127) / 128) + c / 128]);

    /// <summary>Gaussian-ish weights with a few outliers, exact in bf16 so both source types see the same numbers.</summary>
    public static float[] RandomWeight(int rows, int cols, int seed)
    {
        var rng = new Random(seed);
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++)
        {
            double g = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
            if (rng.Next(300) == 0) g *= 40;
            w[i] = Converter.Numerics.Bf16.ToSingle(Converter.Numerics.Bf16.FromSingle((float)(g * 0.02)));
        }
        return w;
    }

    public static ushort[] ToBf16Bits(float[] w)
    {
        var r = new ushort[w.Length];
        for (int i = 0; i < w.Length; i++) r[i] = Converter.Numerics.Bf16.FromSingle(w[i]);
        return r;
    }
}
