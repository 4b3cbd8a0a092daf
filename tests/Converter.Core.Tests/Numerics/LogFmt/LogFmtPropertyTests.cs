using Converter.Numerics.LogFmt;

namespace Converter.Core.Tests.Numerics.LogFmt;

/// <summary>Properties of the codec for every n in 4..16, checked against the independent scalar reference.</summary>
public class LogFmtPropertyTests
{
    public static IEnumerable<object[]> AllBits() => Enumerable.Range(4, 13).Select(n => new object[] { n });

    public static IEnumerable<object[]> BitsAndKinds()
    {
        foreach (int n in Enumerable.Range(4, 13))
            foreach (var kind in new[] { "gaussian", "lognormal", "zeros", "narrow", "tiny", "subnormal", "clamped", "ties" })
                yield return [n, kind];
    }

    /// <summary>Test data of several shapes; 300 elements = two full tiles and a short one.</summary>
    internal static float[] Make(string kind, int len, int seed)
    {
        var rng = new Random(seed);
        var x = new float[len];
        for (int i = 0; i < len; i++)
        {
            double g = Gauss(rng);
            x[i] = kind switch
            {
                "gaussian" => (float)g,
                "lognormal" => (float)(Math.Sign(g) * Math.Exp(4 * Gauss(rng))),
                "zeros" => i % 3 == 0 ? (i % 2 == 0 ? 0f : -0f) : (float)g,
                // amax/amin below 1.0005: at large n neighbouring float32 levels coincide
                "narrow" => (float)((rng.Next(2) * 2 - 1) * (1.0 + 0.0005 * rng.NextDouble())),
                "tiny" => (float)(g * 1e-30),
                "subnormal" => (float)(g * 1e-39),
                // tiny values under amax*2^-32: amin is clamped and they round to zero or v_1
                "clamped" => i % 4 == 0 ? (float)(g * 1e-12) : (float)(g * 1e3),
                // exact float64 midpoints of adjacent float32 numbers cannot occur in float32 input, so
                // make ties on the 0/v_1 boundary: amax 1, amin_eff 2^-32, x = 2^-33
                "ties" => i == 0 ? 1f : i == 1 ? (float)Math.Pow(2, -32) : (i % 5 == 0 ? (float)Math.Pow(2, -33) : (float)g),
                _ => throw new ArgumentException(kind),
            };
        }
        return x;
    }

    internal static double Gauss(Random rng)
        => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());

    [Theory]
    [MemberData(nameof(BitsAndKinds))]
    public void Matches_brute_force_nearest_level(int bits, string kind)
    {
        var x = Make(kind, 300, bits * 31 + kind.Length);
        var (wantCodes, wantMeta, wantDec) = LogFmtReference.Encode(x, bits, brute: true);

        var codes = new ushort[x.Length];
        var meta = new float[2 * LogFmtCodec.TileCount(x.Length)];
        LogFmtCodec.Encode(x, bits, codes, meta, kind);
        meta.Should().Equal(wantMeta);
        codes.Should().Equal(wantCodes);

        var y = new float[x.Length];
        LogFmtCodec.Decode(codes, meta, bits, y, kind);
        Bits(y).Should().Equal(Bits(wantDec));
        var fused = new float[x.Length];
        LogFmtCodec.QuantizeDequantize(x, bits, fused, kind);
        Bits(fused).Should().Equal(Bits(wantDec));
    }

    [Theory]
    [MemberData(nameof(AllBits))]
    public void Values_at_level_midpoints_and_their_neighbours_match_reference(int bits)
    {
        // Per tile: amax and amin fix the grid; the other 126 values are float32 roundings of the float64
        // midpoints between adjacent levels and their ±1 ulp neighbours, the hardest cases for the vector path.
        var rng = new Random(bits * 7 + 1);
        int tiles = 40;
        var x = new float[tiles * 128];
        for (int t = 0; t < tiles; t++)
        {
            float amax = (float)Math.Exp(rng.NextDouble() * 20 - 10);
            float amin = amax * (float)Math.Pow(2, -rng.NextDouble() * (t % 4 == 0 ? 40 : 16));
            float aminEff = (float)Math.Max(amin, amax * Math.Pow(2, -32));
            var lv = LogFmtReference.Levels(aminEff, amax, bits);
            x[t * 128] = amax;
            x[t * 128 + 1] = -amin;
            for (int i = 2; i < 128; i++)
            {
                int j = rng.Next(lv.Length - 1);
                float mid = (float)(((double)lv[j] + lv[j + 1]) / 2);
                int wiggle = i % 3 - 1;
                float v = wiggle == 0 ? mid : wiggle > 0 ? MathF.BitIncrement(mid) : MathF.BitDecrement(mid);
                v = Math.Clamp(v, 0f, amax);
                x[t * 128 + i] = rng.Next(2) == 0 ? v : -v;
            }
        }
        var (wantCodes, wantMeta, wantDec) = LogFmtReference.Encode(x, bits, brute: false);
        var codes = new ushort[x.Length];
        var meta = new float[2 * tiles];
        LogFmtCodec.Encode(x, bits, codes, meta, "midpoints");
        meta.Should().Equal(wantMeta);
        codes.Should().Equal(wantCodes);
        var y = new float[x.Length];
        LogFmtCodec.QuantizeDequantize(x, bits, y);
        Bits(y).Should().Equal(Bits(wantDec));
    }

    [Theory]
    [InlineData(8, 1)]
    [InlineData(10, 2)]
    [InlineData(12, 0)]
    [InlineData(5, 0)]
    public void Large_parallel_input_matches_reference_at_any_thread_count(int bits, int threads)
    {
        // 4000 tiles of lognormal data in rows of 7168 (DeepSeek-V3 hidden size): vector path, parallel chunks
        var x = Make("lognormal", 7168 * 72, 1234 + bits);
        var (wantCodes, wantMeta, wantDec) = LogFmtReference.Encode(x, bits, brute: false, rowLength: 7168);
        var codes = new ushort[x.Length];
        var meta = new float[2 * LogFmtCodec.TileCount(x.Length, 7168)];
        LogFmtCodec.Encode(x, bits, codes, meta, "big", rowLength: 7168, maxThreads: threads);
        meta.Should().Equal(wantMeta);
        codes.Should().Equal(wantCodes);
        var y = new float[x.Length];
        LogFmtCodec.Decode(codes, meta, bits, y, "big", rowLength: 7168, maxThreads: threads);
        Bits(y).Should().Equal(Bits(wantDec));
        LogFmtCodec.QuantizeDequantize(x, bits, y, "big", rowLength: 7168, maxThreads: threads);
        Bits(y).Should().Equal(Bits(wantDec));
    }

    [Theory]
    [InlineData(8)]
    [InlineData(16)]
    public void Quantize_dequantize_works_in_place(int bits)
    {
        var x = Make("lognormal", 7168 * 40, 77);
        var want = new float[x.Length];
        LogFmtCodec.QuantizeDequantize(x, bits, want, rowLength: 7168);
        LogFmtCodec.QuantizeDequantize(x, bits, x, rowLength: 7168);
        Bits(x).Should().Equal(Bits(want));
    }

    [Fact]
    public void Rows_restart_tiles_and_keep_a_short_last_tile_per_row()
    {
        var x = Make("gaussian", 3 * 200, 7);
        var codes = new ushort[x.Length];
        var meta = new float[2 * LogFmtCodec.TileCount(x.Length, 200)];
        meta.Length.Should().Be(2 * 3 * 2);
        LogFmtCodec.Encode(x, 8, codes, meta, rowLength: 200);
        for (int r = 0; r < 3; r++)
        {
            var (c, m, _) = LogFmtReference.Encode(x[(r * 200)..((r + 1) * 200)], 8, brute: true);
            codes[(r * 200)..((r + 1) * 200)].Should().Equal(c);
            meta[(r * 4)..((r + 1) * 4)].Should().Equal(m);
        }
    }

    [Theory]
    [MemberData(nameof(AllBits))]
    public void Decoded_magnitude_is_monotonic_in_input_magnitude(int bits)
    {
        // one tile: fixed endpoints 1e-3 and 10, the rest a dense sweep between them
        var x = new float[128];
        x[0] = 1e-3f;
        x[1] = 10f;
        var rng = new Random(bits);
        for (int i = 2; i < 128; i++) x[i] = (float)Math.Exp(Math.Log(1e-3) + rng.NextDouble() * Math.Log(1e4));
        var codes = new ushort[128];
        var meta = new float[2];
        var y = new float[128];
        LogFmtCodec.Encode(x, bits, codes, meta);
        LogFmtCodec.Decode(codes, meta, bits, y);
        var order = Enumerable.Range(0, 128).OrderBy(i => x[i]).ToArray();
        for (int j = 1; j < order.Length; j++)
        {
            codes[order[j]].Should().BeGreaterThanOrEqualTo(codes[order[j - 1]]);
            y[order[j]].Should().BeGreaterThanOrEqualTo(y[order[j - 1]]);
        }
        codes[1].Should().Be((ushort)((1 << (bits - 1)) - 1), "amax takes the top level");
        codes[0].Should().Be((ushort)1, "amin takes the bottom level");
    }

    [Theory]
    [MemberData(nameof(AllBits))]
    public void Sign_is_the_top_bit_and_zero_is_code_zero(int bits)
    {
        var x = Make("zeros", 256, bits);
        var neg = Array.ConvertAll(x, v => -v);
        var c1 = new ushort[256]; var c2 = new ushort[256];
        var m1 = new float[4]; var m2 = new float[4];
        LogFmtCodec.Encode(x, bits, c1, m1);
        LogFmtCodec.Encode(neg, bits, c2, m2);
        m2.Should().Equal(m1);
        int signBit = 1 << (bits - 1);
        var y1 = new float[256]; var y2 = new float[256];
        LogFmtCodec.Decode(c1, m1, bits, y1);
        LogFmtCodec.Decode(c2, m2, bits, y2);
        for (int i = 0; i < 256; i++)
        {
            if (x[i] == 0f)
            {
                c1[i].Should().Be(0);
                c2[i].Should().Be(0);
                BitConverter.SingleToInt32Bits(y1[i]).Should().Be(0, "zero decodes to +0");
                continue;
            }
            (c1[i] ^ c2[i]).Should().Be(signBit);
            ((c1[i] & signBit) != 0).Should().Be(x[i] < 0);
            y2[i].Should().Be(-y1[i]);
        }
    }

    [Theory]
    [MemberData(nameof(AllBits))]
    public void Constant_and_all_zero_tiles(int bits)
    {
        int top = (1 << (bits - 1)) - 1;
        var x = new float[256];
        for (int i = 0; i < 128; i++) x[i] = i % 2 == 0 ? 0.3f : -0.3f;
        var codes = new ushort[256];
        var meta = new float[4];
        LogFmtCodec.Encode(x, bits, codes, meta);
        meta.Should().Equal(0.3f, 0.3f, 0f, 0f);
        for (int i = 0; i < 128; i++) codes[i].Should().Be((ushort)(i % 2 == 0 ? top : top | (1 << (bits - 1))));
        codes[128..].Should().OnlyContain(c => c == 0);
        var y = new float[256];
        LogFmtCodec.Decode(codes, meta, bits, y);
        y.Should().Equal(x);
    }

    [Theory]
    [InlineData(float.NaN, 5, 100)]
    [InlineData(float.PositiveInfinity, 127, 128)]
    [InlineData(float.NegativeInfinity, 128, 300)]
    [InlineData(float.NaN, 70000, 7168 * 20)]
    public void Non_finite_input_throws_naming_tensor_and_index(float bad, int index, int len)
    {
        var x = Make("gaussian", len, 3);
        x[index] = bad;
        if (index + 1000 < len) x[index + 1000] = float.NaN; // a later one must not be the one reported
        var codes = new ushort[len];
        var meta = new float[2 * LogFmtCodec.TileCount(len)];
        var act = () => LogFmtCodec.Encode(x, 8, codes, meta, "layers.3.combine");
        act.Should().Throw<InvalidDataException>().Where(e => e.Message.Contains("layers.3.combine") && e.Message.Contains($"element {index} "));
        var act2 = () => LogFmtCodec.QuantizeDequantize(x, 10, new float[len], "dispatch");
        act2.Should().Throw<InvalidDataException>().Where(e => e.Message.Contains("dispatch") && e.Message.Contains($"element {index} "));
    }

    [Fact]
    public void Bad_arguments_and_bad_codes_are_rejected()
    {
        var x = new float[128];
        var act = () => LogFmtCodec.Encode(x, 3, new ushort[128], new float[2]);
        act.Should().Throw<ArgumentOutOfRangeException>();
        act = () => LogFmtCodec.Encode(x, 17, new ushort[128], new float[2]);
        act.Should().Throw<ArgumentOutOfRangeException>();
        act = () => LogFmtCodec.Encode(x, 8, new ushort[128], new float[1]);
        act.Should().Throw<ArgumentException>();

        var codes = new ushort[128];
        codes[7] = 256;
        act = () => LogFmtCodec.Decode(codes, new float[] { 1f, 2f }, 8, new float[128], "t");
        act.Should().Throw<InvalidDataException>().Where(e => e.Message.Contains("element 7"));
        act = () => LogFmtCodec.Decode(new ushort[128], new float[] { 3f, 2f }, 8, new float[128], "t");
        act.Should().Throw<InvalidDataException>().Where(e => e.Message.Contains("tile 0"));
        var one = new ushort[128];
        one[0] = 1;
        act = () => LogFmtCodec.Decode(one, new float[] { 0f, 0f }, 8, new float[128], "t");
        act.Should().Throw<InvalidDataException>();
        act = () => LogFmtCodec.Pack(codes, 8, new byte[128]);
        act.Should().Throw<ArgumentException>();
    }

    [Theory]
    [MemberData(nameof(AllBits))]
    public void Pack_is_lsb_first_and_unpack_inverts_it(int bits)
    {
        var rng = new Random(bits);
        foreach (int len in new[] { 0, 1, 7, 8, 9, 31, 33, 1001 })
        {
            var codes = new ushort[len];
            for (int i = 0; i < len; i++) codes[i] = (ushort)rng.Next(1 << bits);
            var packed = new byte[LogFmtCodec.PackedByteCount(len, bits)];
            packed.Length.Should().Be((len * bits + 7) / 8);
            LogFmtCodec.Pack(codes, bits, packed);
            // naive bit-by-bit layout: bit b of code i is stream bit i*n+b, stream bit p is bit p%8 of byte p/8
            var want = new byte[packed.Length];
            for (int i = 0; i < len; i++)
                for (int b = 0; b < bits; b++)
                    if ((codes[i] >> b & 1) != 0) want[(i * bits + b) / 8] |= (byte)(1 << ((i * bits + b) % 8));
            packed.Should().Equal(want);
            var back = new ushort[len];
            LogFmtCodec.Unpack(packed, bits, back);
            back.Should().Equal(codes);
        }
    }

    private static int[] Bits(float[] v) => Array.ConvertAll(v, BitConverter.SingleToInt32Bits);
}
