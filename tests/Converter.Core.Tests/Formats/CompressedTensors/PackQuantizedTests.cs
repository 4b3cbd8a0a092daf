using System.Text.Json.Nodes;
using Converter.Formats.CompressedTensors;
using Converter.Formats.Safetensors;
using Converter.Numerics.Int4;
using Converter.Tensors;
using Converter.Tests.Numerics.Int4;

namespace Converter.Tests.Formats.CompressedTensors;

public class PackQuantizedTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    [Fact]
    public void CodesPackLowNibbleFirstAsQPlus8()
    {
        // Row of q = -8..7, -8..7: by the layout, word 0 = 0x76543210 and word 1 = 0xFEDCBA98.
        var q = new sbyte[32];
        for (int i = 0; i < 32; i++) q[i] = (sbyte)(i % 16 - 8);
        var packed = new int[4];
        PackQuantized.PackCodes(q, 1, 32, packed);
        ((uint)packed[0]).Should().Be(0x76543210u);
        ((uint)packed[1]).Should().Be(0xFEDCBA98u);
        var back = new sbyte[32];
        PackQuantized.UnpackCodes(packed, 1, 32, back);
        back.Should().Equal(q);
    }

    [Fact]
    public void ZeroPointsPackAlongTheOutputDimension()
    {
        // 9 rows, 2 groups: word [0, g] holds rows 0..7 of group g, word [1, g] row 8.
        var zp = new sbyte[18];
        for (int r = 0; r < 9; r++) { zp[r * 2] = (sbyte)(r - 8); zp[r * 2 + 1] = 7; }
        var packed = new int[4];
        PackQuantized.PackZeroPoints(zp, 9, 2, packed);
        ((uint)packed[0]).Should().Be(0x76543210u);
        ((uint)packed[1]).Should().Be(0xFFFFFFFFu);
        ((uint)packed[2]).Should().Be(0x8u);
        ((uint)packed[3]).Should().Be(0xFu);
        var back = new sbyte[18];
        PackQuantized.UnpackZeroPoints(packed, 9, 2, back);
        back.Should().Equal(zp);
    }

    [Theory]
    [InlineData(32, true)]
    [InlineData(64, false)]
    [InlineData(128, false)]
    public void WrittenWeightReadsBackToExactlyWhatTheQuantizerProduced(int group, bool symmetric)
    {
        int rows = 20, cols = 256;
        var w = Int4QuantizerTests.RandomWeight(rows, cols, group);
        var q = Int4GroupQuantizer.Quantize(w, rows, cols, new Int4Scheme(group, symmetric), Int4ClipSearch.Default);
        const string name = "model.layers.1.mlp.experts.0.down_proj.weight";
        var dir = _tmp["ct"];
        using (var writer = new SafetensorsWriter(dir, PackQuantized.Plan(name, rows, cols, q.Scheme), long.MaxValue, false))
        {
            PackQuantized.Write(writer, name, q);
            writer.Commit();
        }
        using var st = SafetensorsCheckpoint.Open(dir);
        st.Info("model.layers.1.mlp.experts.0.down_proj.weight_packed").DType.Should().Be(DType.I32);
        st.Info("model.layers.1.mlp.experts.0.down_proj.weight_shape").DType.Should().Be(DType.I64);
        st.Contains("model.layers.1.mlp.experts.0.down_proj.weight_zero_point").Should().Be(!symmetric);
        var back = PackQuantized.Read(st, name, q.Scheme);
        back.Q.Should().Equal(q.Q);
        back.Scales.Should().Equal(q.Scales);
        back.Zeros.Should().Equal(q.Zeros);
        var expected = q.Dequantize();
        var deq = PackQuantized.Dequantize(st, name, q.Scheme);
        for (int i = 0; i < deq.Length; i++)
            BitConverter.SingleToInt32Bits(deq[i]).Should().Be(BitConverter.SingleToInt32Bits(expected[i]));
        // Wrong expectations are named: the model implies another shape.
        var act = () => PackQuantized.Validate(st, name, rows, cols * 2, q.Scheme);
        act.Should().Throw<InvalidDataException>().WithMessage("*down_proj.weight_packed*");
    }

    [Fact]
    public void ConfigRoundTripsAndMatchesIgnoreEntries()
    {
        var cfg = new CompressedTensorsConfig(64, false, ["Linear"], ["lm_head", "re:.*self_attn.*", "model.layers.0.mlp.down_proj"], "mse");
        var json = cfg.ToJson();
        json["quant_method"]!.GetValue<string>().Should().Be("compressed-tensors");
        json["format"]!.GetValue<string>().Should().Be("pack-quantized");
        json["quantization_status"]!.GetValue<string>().Should().Be("compressed");
        var weights = json["config_groups"]!["group_0"]!["weights"]!;
        weights["num_bits"]!.GetValue<int>().Should().Be(4);
        weights["strategy"]!.GetValue<string>().Should().Be("group");
        weights["type"]!.GetValue<string>().Should().Be("int");
        var back = CompressedTensorsConfig.Parse(JsonNode.Parse(json.ToJsonString())!.AsObject(), "config.json");
        back.GroupSize.Should().Be(64);
        back.Symmetric.Should().BeFalse();
        back.Targets.Should().Equal("Linear");
        back.Ignore.Should().Equal(cfg.Ignore);
        back.IsIgnored("lm_head").Should().BeTrue();
        back.IsIgnored("model.layers.3.self_attn.o_proj").Should().BeTrue();
        back.IsIgnored("model.layers.3.mlp.experts.1.up_proj").Should().BeFalse();
    }

    [Fact]
    public void UnsupportedConfigsAreRefusedWithAReason()
    {
        var json = new CompressedTensorsConfig(32, true, ["Linear"], []).ToJson();
        json["config_groups"]!["group_0"]!["weights"]!["num_bits"] = 8;
        var act = () => CompressedTensorsConfig.Parse(json, "x/config.json");
        act.Should().Throw<InvalidDataException>().WithMessage("x/config.json*num_bits*");
    }
}
