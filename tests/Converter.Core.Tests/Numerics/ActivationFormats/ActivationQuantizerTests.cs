using System.Runtime.InteropServices;
using Converter.Numerics;
using Converter.Numerics.ActivationFormats;
using Converter.Numerics.LogFmt;

namespace Converter.Core.Tests.Numerics.ActivationFormats;

public class ActivationQuantizerTests
{
    private static readonly string Fp8Dir = Path.Combine(Path.GetDirectoryName(Converter.Core.Tests.Numerics.LogFmt.LogFmtTestData.Dir)!, "fp8");

    /// <summary>float32 value of every code, from torch (golden/vectors/fp8).</summary>
    private static float[] DecodeTable(string file) => MemoryMarshal.Cast<byte, float>(File.ReadAllBytes(Path.Combine(Fp8Dir, file))).ToArray();

    /// <summary>Reference: nearest finite positive code by brute force over torch's value table, ties to the even code.</summary>
    private static float RoundFp8(float v, float[] table, int maxFiniteCode)
    {
        float a = Math.Abs(v);
        int best = 0;
        double bestD = a;
        for (int c = 1; c <= maxFiniteCode; c++)
        {
            double d = Math.Abs((double)a - table[c]);
            if (d < bestD || (d == bestD && (c & 1) == 0)) { best = c; bestD = d; }
        }
        return v < 0 ? -table[best] : table[best];
    }

    private static float[] ReferenceFp8(float[] x, int row, bool e5m2)
    {
        var table = DecodeTable(e5m2 ? "e5m2_decode.f32" : "e4m3fn_decode.f32");
        int maxCode = e5m2 ? 0x7B : 0x7E;
        float fmax = e5m2 ? 57344f : 448f;
        var y = new float[x.Length];
        for (int r = 0; r < x.Length / row; r++)
            for (int c0 = 0; c0 < row; c0 += 128)
            {
                int start = r * row + c0, len = Math.Min(128, row - c0);
                float amax = 0;
                for (int i = start; i < start + len; i++) amax = Math.Max(amax, Math.Abs(x[i]));
                float s = Math.Max(amax, 1e-4f) / fmax;
                for (int i = start; i < start + len; i++) y[i] = RoundFp8(x[i] / s, table, maxCode) * s;
            }
        return y;
    }

    private static float[] Data(int n, int seed, double scale = 1)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++)
            x[i] = (float)(scale * Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()) * (i % 50 == 0 ? 30 : 1));
        return x;
    }

    [Theory]
    [InlineData(false, 300)]
    [InlineData(true, 300)]
    [InlineData(false, 7168)]
    [InlineData(true, 7168)]
    public void Fp8_tiles_match_reference_built_on_torch_tables(bool e5m2, int row)
    {
        var x = Data(row * 3, row + (e5m2 ? 1 : 0));
        x[5] = 1e-7f; // tiny values, and a whole tile of them below the amax floor
        for (int i = 128; i < 256 && i < row; i++) x[i] = 3e-6f * (i % 7 - 3);
        var want = ReferenceFp8(x, row, e5m2);
        var y = new float[x.Length];
        ActivationQuantizer.QuantizeDequantize(e5m2 ? ActivationFormat.E5M2 : ActivationFormat.E4M3, x, y, rowLength: row);
        y.Should().Equal(want);
    }

    [Fact]
    public void E4M3_hand_computed_tile()
    {
        // amax 448 -> scale exactly 1, so y is plain e4m3 rounding
        var x = new float[] { 448f, 0.3f, -0.3f, 1f, 17f, 0.001f, 0f };
        var y = new float[x.Length];
        ActivationQuantizer.E4M3QuantizeDequantize(x, y);
        // 0.3 = 1.2*2^-2: neighbours 1.125*2^-2 = 0.28125 and 1.25*2^-2 = 0.3125; 17 is a tie between 16 and 18 -> even 16;
        // 0.001 is subnormal (step 2^-9 = 0.001953125) and above half a step, so it becomes 2^-9
        y.Should().Equal(448f, 0.3125f, -0.3125f, 1f, 16f, 0.001953125f, 0f);
    }

    [Fact]
    public void Amax_floor_sets_the_scale_of_tiny_tiles()
    {
        var x = new float[] { 1e-6f, -2e-6f, 0f };
        var y = new float[3];
        ActivationQuantizer.E4M3QuantizeDequantize(x, y);
        float s = 1e-4f / 448f;
        ActivationQuantizer.Fp8TileScale(2e-6f, 448f).Should().Be(s);
        // x/s = 4.48 and -8.96: e4m3 steps are 0.5 in [4,8) and 1 in [8,16): 4.5 and -9
        y[0].Should().Be(Fp8E4M3.ToSingle(Fp8E4M3.FromSingle(1e-6f / s)) * s);
        Fp8E4M3.ToSingle(Fp8E4M3.FromSingle(1e-6f / s)).Should().Be(4.5f);
        Fp8E4M3.ToSingle(Fp8E4M3.FromSingle(-2e-6f / s)).Should().Be(-9f);
        y[1].Should().Be(-9f * s);
        y[2].Should().Be(0f);
    }

    [Fact]
    public void Power_of_two_scale_rounds_up()
    {
        ActivationQuantizer.Fp8TileScale(448f, 448f, powerOfTwoScale: true).Should().Be(1f);
        ActivationQuantizer.Fp8TileScale(449f, 448f, powerOfTwoScale: true).Should().Be(2f);
        ActivationQuantizer.Fp8TileScale(3f, 448f, powerOfTwoScale: true).Should().Be(1f / 128); // 3/448 = 0.0067 -> 2^-7
        ActivationQuantizer.Fp8TileScale(0f, 448f, powerOfTwoScale: true).Should().Be(MathF.ScaleB(1f, -22)); // 1e-4/448 = 2.2e-7 -> 2^-22
    }

    [Fact]
    public void Bf16_rounds_to_nearest_even()
    {
        var x = new float[] { 1f + 1f / 256, 1f + 3f / 256, 1f + 1f / 256 + 1f / 65536, -2.5f, 1e-40f, 3.4e38f, 0f, -0f, 1, 2, 3 };
        var y = new float[x.Length];
        ActivationQuantizer.Bf16QuantizeDequantize(x, y);
        // bf16 keeps 7 mantissa bits: 1+2^-8 is a tie -> 1 (even); 1+3*2^-8 is a tie -> 1+4*2^-8; just above a tie -> up
        y[0].Should().Be(1f);
        y[1].Should().Be(1f + 4f / 256);
        y[2].Should().Be(1f + 2f / 256);
        y[3].Should().Be(-2.5f);
        for (int i = 0; i < x.Length; i++) y[i].Should().Be(Bf16.ToSingle(Bf16.FromSingle(x[i])));
        var big = Data(1000, 3);
        var yb = new float[1000];
        ActivationQuantizer.QuantizeDequantize(ActivationFormat.Bf16, big, yb);
        for (int i = 0; i < 1000; i++) yb[i].Should().Be(Bf16.ToSingle(Bf16.FromSingleReference(big[i])));
    }

    [Fact]
    public void LogFmt_format_is_the_codec()
    {
        var x = Data(7168 * 2, 9);
        var a = new float[x.Length];
        var b = new float[x.Length];
        ActivationQuantizer.QuantizeDequantize(ActivationFormat.LogFmt(8), x, a, rowLength: 7168);
        LogFmtCodec.QuantizeDequantize(x, 8, b, rowLength: 7168);
        a.Should().Equal(b);
    }

    [Theory]
    [InlineData(7168, 14336, 7392, 7392, 7616, 9408)]
    [InlineData(200, 400, 208, 208, 216, 266)] // 2 tiles; LogFMT-10 packs 2000 bits = 250 bytes
    [InlineData(1, 2, 5, 5, 9, 10)]
    public void Wire_bytes_per_token(int hidden, long bf16, long e4m3, long e5m2, long log8, long log10)
    {
        ActivationQuantizer.WireBytesPerToken(ActivationFormat.Bf16, hidden).Should().Be(bf16);
        ActivationQuantizer.WireBytesPerToken(ActivationFormat.E4M3, hidden).Should().Be(e4m3);
        ActivationQuantizer.WireBytesPerToken(ActivationFormat.E5M2, hidden).Should().Be(e5m2);
        ActivationQuantizer.WireBytesPerToken(ActivationFormat.LogFmt(8), hidden).Should().Be(log8);
        ActivationQuantizer.WireBytesPerToken(ActivationFormat.LogFmt(10), hidden).Should().Be(log10);
        ActivationFormat.LogFmt(10).ToString().Should().Be("LogFMT-10");
    }

    [Theory]
    [InlineData(ActivationFormatKind.Bf16)]
    [InlineData(ActivationFormatKind.E4M3)]
    [InlineData(ActivationFormatKind.E5M2)]
    [InlineData(ActivationFormatKind.LogFmt)]
    public void Non_finite_input_is_rejected_with_tensor_and_index(ActivationFormatKind kind)
    {
        var x = Data(7168 * 10, 4);
        x[40000] = float.NegativeInfinity;
        x[50000] = float.NaN;
        var f = kind == ActivationFormatKind.LogFmt ? ActivationFormat.LogFmt(8) : new ActivationFormat(kind, kind == ActivationFormatKind.Bf16 ? 16 : 8);
        var act = () => ActivationQuantizer.QuantizeDequantize(f, x, new float[x.Length], rowLength: 7168, name: "h.7");
        act.Should().Throw<InvalidDataException>().Where(e => e.Message.Contains("'h.7'") && e.Message.Contains("element 40000 "));
    }

    [Fact]
    public void Error_ordering_on_activation_like_rows_is_LogFmt10_LogFmt8_E4M3_E5M2()
    {
        // the ordering the paper reports qualitatively (it gives no numbers) and the notes measure on tiny-dsv3
        var x = Data(7168 * 8, 11);
        double Err(ActivationFormat f)
        {
            var y = new float[x.Length];
            ActivationQuantizer.QuantizeDequantize(f, x, y, rowLength: 7168);
            return ErrorMetrics.RelativeRmseOf(x, y);
        }
        double l10 = Err(ActivationFormat.LogFmt(10)), l8 = Err(ActivationFormat.LogFmt(8)), e4 = Err(ActivationFormat.E4M3), e5 = Err(ActivationFormat.E5M2);
        l10.Should().BeLessThan(l8);
        l8.Should().BeLessThan(e4);
        e4.Should().BeLessThan(e5);
    }
}
