using Converter.Numerics.Ggml;

namespace Converter.Core.Tests.Ggml;

public class GgmlQuantizerGoldenTests
{
    public static TheoryData<string> Types => new()
    {
        "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs",
    };

    /// <summary>The types whose ggml quantizer reads importance weights (q8_0 ignores them).</summary>
    public static TheoryData<string> ImportanceTypes => new()
    {
        "q4_0", "q4_1", "q5_0", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs",
    };

    private static GgmlType Parse(string name) => Enum.Parse<GgmlType>(name, ignoreCase: true);

    [Theory]
    [MemberData(nameof(Types))]
    public void FastQuantizerBytesEqualGgml(string name)
    {
        var type = Parse(name);
        var input = GgmlGolden.Floats("input.f32");
        var expected = GgmlGolden.Bytes(name + ".bin");
        var actual = new byte[expected.Length];
        GgmlQuantizer.Quantize(type, input, actual);
        int at = GgmlGolden.FirstDifference<byte>(actual, expected);
        at.Should().Be(-1, $"{name}: first differing byte at {at} (block {(at < 0 ? -1 : at / GgmlTypeInfo.BytesPerBlock(type))})");
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void FastQuantizerRowByRowEqualsGgml(string name)
    {
        var type = Parse(name);
        var input = GgmlGolden.Floats("input.f32");
        var expected = GgmlGolden.Bytes(name + ".bin");
        int rowBytes = expected.Length / GgmlGolden.Rows;
        for (int r = 0; r < GgmlGolden.Rows; r++)
        {
            var actual = new byte[rowBytes];
            GgmlQuantizer.Quantize(type, input.AsSpan(r * GgmlGolden.Cols, GgmlGolden.Cols), actual, 1);
            actual.Should().Equal(expected.AsSpan(r * rowBytes, rowBytes).ToArray(), $"{name} row {r}");
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void ReferenceQuantizerBytesEqualGgml(string name)
    {
        var type = Parse(name);
        var input = GgmlGolden.Floats("input.f32");
        var expected = GgmlGolden.Bytes(name + ".bin");
        var actual = new byte[expected.Length];
        GgmlReferenceQuantizer.Quantize(type, input, actual);
        int at = GgmlGolden.FirstDifference<byte>(actual, expected);
        at.Should().Be(-1, $"{name}: first differing byte at {at}");
    }

    [Theory]
    [MemberData(nameof(ImportanceTypes))]
    public void ImportanceWeightedBytesEqualGgml(string name)
    {
        var type = Parse(name);
        var input = GgmlGolden.Floats("input.f32");
        var importance = GgmlGolden.Floats("importance.f32");
        var expected = GgmlGolden.Bytes(name + ".imatrix.bin");
        var actual = new byte[expected.Length];
        GgmlQuantizer.Quantize(type, input, actual, importance, -1);
        int at = GgmlGolden.FirstDifference<byte>(actual, expected);
        at.Should().Be(-1, $"{name}: first differing byte at {at} (block {(at < 0 ? -1 : at / GgmlTypeInfo.BytesPerBlock(type))})");
        // the weights matter: without them the bytes are the reference quantizer's
        var plain = new byte[expected.Length];
        GgmlQuantizer.Quantize(type, input, plain);
        plain.Should().NotEqual(expected, $"{name} without importance");
    }

    [Theory]
    [MemberData(nameof(ImportanceTypes))]
    public void ImportanceWeightedRowByRowSingleThreadedEqualsGgml(string name)
    {
        var type = Parse(name);
        var input = GgmlGolden.Floats("input.f32");
        var importance = GgmlGolden.Floats("importance.f32");
        var expected = GgmlGolden.Bytes(name + ".imatrix.bin");
        int rowBytes = expected.Length / GgmlGolden.Rows;
        for (int r = 0; r < GgmlGolden.Rows; r++)
        {
            var actual = new byte[rowBytes];
            GgmlQuantizer.Quantize(type, input.AsSpan(r * GgmlGolden.Cols, GgmlGolden.Cols), actual, importance, 1);
            actual.Should().Equal(expected.AsSpan(r * rowBytes, rowBytes).ToArray(), $"{name} row {r}");
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void DequantizationEqualsGgmlBitForBit(string name)
    {
        var type = Parse(name);
        var bytes = GgmlGolden.Bytes(name + ".bin");
        var expected = GgmlGolden.Floats(name + ".dequant.f32");
        var actual = new float[expected.Length];
        GgmlQuantizer.Dequantize(type, bytes, actual);
        var a = actual.Select(BitConverter.SingleToInt32Bits).ToArray();
        var e = expected.Select(BitConverter.SingleToInt32Bits).ToArray();
        int at = GgmlGolden.FirstDifference<int>(a, e);
        at.Should().Be(-1, $"{name}: first differing value at {at}: {(at < 0 ? 0 : actual[at])} vs {(at < 0 ? 0 : expected[at])}");
    }
}
