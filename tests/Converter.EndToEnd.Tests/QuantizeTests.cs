using System.Runtime.InteropServices;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Numerics;
using Converter.Pipelines;
using Converter.Tensors;
using Converter.Tools.Synth;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Tests;

public class QuantizeTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static void AssertSameTensors(string actualDir, string expectedDir)
    {
        using var actual = SafetensorsCheckpoint.Open(actualDir);
        using var expected = SafetensorsCheckpoint.Open(expectedDir);
        actual.Names.Should().BeEquivalentTo(expected.Names);
        foreach (var name in expected.Names)
        {
            var (a, e) = (actual.Info(name), expected.Info(name));
            a.DType.Should().Be(e.DType, name);
            a.Shape.Should().Equal(e.Shape, name);
            using var ad = actual.Read(name);
            using var ed = expected.Read(name);
            ad.Bytes.SequenceEqual(ed.Bytes).Should().BeTrue($"tensor {name} must match byte for byte");
        }
    }

    [Fact]
    public void Fp8BlockOfGoldenBf16ReproducesOfficialFp8ByteForByte()
    {
        var outDir = _tmp["fp8"];
        var r = Cli.Run("quantize", TestData.Model("tiny-dsv3"), "-o", outDir, "--scheme", "fp8-block", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        AssertSameTensors(outDir, TestData.Model("tiny-dsv3-fp8"));
        using var ckpt = ModelCheckpoint.Open(outDir);
        ckpt.Layout.Should().Be(WeightLayout.Fp8Block);
        ckpt.Architecture.Config.Root["quantization_config"]!.ToJsonString()
            .Should().Be("""{"activation_scheme":"dynamic","fmt":"e4m3","quant_method":"fp8","weight_block_size":[128,128]}""");
    }

    [Fact]
    public void Bf16OfOfficialFp8IsExactlyBf16OfFp8TimesScale()
    {
        var outDir = _tmp["bf16"];
        var r = Cli.Run("quantize", TestData.Model("tiny-dsv3-fp8"), "-o", outDir, "--scheme", "bf16", "--max-shard-size", "3MB", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        using var src = SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv3-fp8"));
        using var dst = SafetensorsCheckpoint.Open(outDir);
        dst.Shards.Count.Should().BeGreaterThan(1);
        dst.Names.Should().NotContain(n => n.EndsWith("_scale_inv"));
        int checkedWeights = 0;
        foreach (var name in src.Names.Where(n => !n.EndsWith("_scale_inv")))
        {
            var info = src.Info(name);
            using var s = src.Read(name);
            using var d = dst.Read(name);
            if (info.DType != DType.F8_E4M3)
            {
                dst.Info(name).DType.Should().Be(info.DType);
                d.Bytes.SequenceEqual(s.Bytes).Should().BeTrue(name);
                continue;
            }
            dst.Info(name).DType.Should().Be(DType.BF16);
            using var scale = src.Read(name + "_scale_inv");
            var (rows, cols) = info.Matrix;
            var sc = scale.As<float>();
            var got = d.As<ushort>();
            int mismatches = 0;
            for (int r0 = 0; r0 < rows; r0++)
                for (int c = 0; c < cols; c++)
                {
                    // Scalar reference: decode e4m3 by its bit layout, multiply in float32, round to bf16 (RNE).
                    float v = DecodeE4M3(s.Bytes[r0 * cols + c]) * sc[(r0 / 128) * ((cols + 127) / 128) + c / 128];
                    if (got[r0 * cols + c] != ToBf16(v)) mismatches++;
                }
            mismatches.Should().Be(0, name);
            checkedWeights++;
        }
        checkedWeights.Should().Be(233);
        File.ReadAllText(Path.Combine(outDir, "config.json")).Should().NotContain("quantization_config");
    }

    private static float DecodeE4M3(byte b)
    {
        int e = (b >> 3) & 15, m = b & 7;
        if (e == 15 && m == 7) return float.NaN;
        float v = e == 0 ? m / 8f * MathF.Pow(2, -6) : (1 + m / 8f) * MathF.Pow(2, e - 7);
        return (b & 0x80) != 0 ? -v : v;
    }

    private static ushort ToBf16(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return (ushort)((bits >> 16) | 0x40);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    [Fact]
    public void Fp8BlockHandlesDimensionsNotMultipleOf128()
    {
        var src = _tmp["odd"];
        SyntheticCheckpoint.Write(src, new SynthOptions
        {
            Layers = 2, DenseLayers = 1, Experts = 4, ExpertsPerToken = 2, Groups = 2, TopkGroups = 1, Hidden = 200,
            QLoraRank = 136, KvLoraRank = 72, Heads = 3, NopeDim = 24, RopeDim = 8, VDim = 40, Intermediate = 260,
            MoeIntermediate = 96, Vocab = 300,
        });
        using var ckpt = ModelCheckpoint.Open(src);
        QuantizePipeline.Run(ckpt, new QuantizeOptions(QuantizeScheme.Fp8Block, _tmp["odd-fp8"]), NullLogger.Instance);
        using var q = SafetensorsCheckpoint.Open(_tmp["odd-fp8"]);
        int quantized = 0;
        foreach (var name in ckpt.Tensors.Names)
        {
            var role = ckpt.Architecture.Classify(name);
            if (!role.IsLinearWeight)
            {
                q.Info(name).DType.Should().Be(ckpt.Tensors.Info(name).DType, name);
                continue;
            }
            var (rows, cols) = ckpt.Tensors.Info(name).Matrix;
            q.Info(name).DType.Should().Be(DType.F8_E4M3);
            q.Info(name + "_scale_inv").Shape.Should().Equal((rows + 127) / 128, (cols + 127) / 128);
            // Scalar reference for the official rule: per 128x128 block, scale = amax / 448, q = e4m3(w / scale).
            var w = ckpt.ReadFloat32(name);
            using var codes = q.Read(name);
            using var scales = q.Read(name + "_scale_inv");
            int sc = (cols + 127) / 128;
            for (int br = 0; br < (rows + 127) / 128; br++)
                for (int bc = 0; bc < sc; bc++)
                {
                    float amax = 0;
                    for (int r = br * 128; r < Math.Min(rows, br * 128 + 128); r++)
                        for (int c = bc * 128; c < Math.Min(cols, bc * 128 + 128); c++)
                            amax = Math.Max(amax, Math.Abs(w[r * cols + c]));
                    float scale = amax / 448f;
                    scales.As<float>()[br * sc + bc].Should().Be(scale, $"{name} block ({br},{bc})");
                    int mismatches = 0;
                    for (int r = br * 128; r < Math.Min(rows, br * 128 + 128); r++)
                        for (int c = bc * 128; c < Math.Min(cols, bc * 128 + 128); c++)
                            if (codes.Bytes[r * cols + c] != Fp8E4M3.FromSingle(w[r * cols + c] / scale)) mismatches++;
                    mismatches.Should().Be(0, $"{name} block ({br},{bc})");
                }
            quantized++;
        }
        quantized.Should().BeGreaterThan(10);
    }
}
