using System.Text.Json;
using Converter.Numerics;
using Converter.Numerics.LogFmt;

namespace Converter.Core.Tests.Numerics.LogFmt;

/// <summary>golden/vectors/logfmt, bit for bit, for every case at n = 8 and 10.</summary>
public class LogFmtConformanceTests
{
    public static IEnumerable<object[]> Vectors()
    {
        foreach (var c in LogFmtTestData.Cases)
            foreach (int n in new[] { 8, 10 })
                yield return [c, n];
    }

    [Theory]
    [MemberData(nameof(Vectors))]
    public void Encode_matches_codes_and_metadata(string name, int bits)
    {
        var x = LogFmtTestData.Read<float>($"{name}.in.f32");
        var want = LogFmtTestData.Read<ushort>($"{name}.n{bits}.codes.u16");
        var wantMeta = LogFmtTestData.Read<float>($"{name}.n{bits}.meta.f32");
        var codes = new ushort[x.Length];
        var meta = new float[2 * LogFmtCodec.TileCount(x.Length)];
        meta.Length.Should().Be(wantMeta.Length);

        LogFmtCodec.Encode(x, bits, codes, meta, name);

        codes.Should().Equal(want);
        Bits(meta).Should().Equal(Bits(wantMeta));
    }

    [Theory]
    [MemberData(nameof(Vectors))]
    public void Decode_and_fused_path_match_decoded(string name, int bits)
    {
        var codes = LogFmtTestData.Read<ushort>($"{name}.n{bits}.codes.u16");
        var meta = LogFmtTestData.Read<float>($"{name}.n{bits}.meta.f32");
        var want = LogFmtTestData.Read<float>($"{name}.n{bits}.decoded.f32");
        var x = LogFmtTestData.Read<float>($"{name}.in.f32");

        var y = new float[codes.Length];
        LogFmtCodec.Decode(codes, meta, bits, y, name);
        Bits(y).Should().Equal(Bits(want));

        var fused = new float[x.Length];
        LogFmtCodec.QuantizeDequantize(x, bits, fused, name);
        Bits(fused).Should().Equal(Bits(want));
    }

    [Theory]
    [MemberData(nameof(Vectors))]
    public void Pack_and_unpack_match_packed_bytes(string name, int bits)
    {
        var codes = LogFmtTestData.Read<ushort>($"{name}.n{bits}.codes.u16");
        var want = LogFmtTestData.ReadBytes($"{name}.n{bits}.packed.bin");
        var packed = new byte[LogFmtCodec.PackedByteCount(codes.Length, bits)];
        packed.Length.Should().Be(want.Length);

        LogFmtCodec.Pack(codes, bits, packed);
        packed.Should().Equal(want);

        var back = new ushort[codes.Length];
        LogFmtCodec.Unpack(want, bits, back);
        back.Should().Equal(codes);
    }

    [Theory]
    [MemberData(nameof(Vectors))]
    public void Scalar_reference_matches_vectors(string name, int bits)
    {
        var x = LogFmtTestData.Read<float>($"{name}.in.f32");
        var (codes, meta, dec) = LogFmtReference.Encode(x, bits, brute: true);
        codes.Should().Equal(LogFmtTestData.Read<ushort>($"{name}.n{bits}.codes.u16"));
        Bits(meta).Should().Equal(Bits(LogFmtTestData.Read<float>($"{name}.n{bits}.meta.f32")));
        Bits(dec).Should().Equal(Bits(LogFmtTestData.Read<float>($"{name}.n{bits}.decoded.f32")));
    }

    [Theory]
    [MemberData(nameof(Vectors))]
    public void Relative_rmse_matches_readme(string name, int bits)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(LogFmtTestData.Dir, "README.json")));
        var entry = doc.RootElement.GetProperty("cases").GetProperty($"{name}.n{bits}");
        double want = entry.GetProperty("relative_rmse").GetDouble();
        var x = LogFmtTestData.Read<float>($"{name}.in.f32");
        x.Length.Should().Be(entry.GetProperty("elements").GetInt32());
        LogFmtCodec.TileCount(x.Length).Should().Be(entry.GetProperty("tiles").GetInt32());

        var y = new float[x.Length];
        LogFmtCodec.QuantizeDequantize(x, bits, y, name);
        double got = ErrorMetrics.RelativeRmseOf(x, y);
        if (want == 0) got.Should().Be(0);
        else got.Should().BeApproximately(want, want * 1e-9);
    }

    private static int[] Bits(float[] v) => Array.ConvertAll(v, BitConverter.SingleToInt32Bits);
}
