using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Core.Tests.Gguf;

/// <summary>Packed INT4 checkpoints to GGUF: symmetric group 32 maps to Q4_0 exactly; other schemes go through float32.</summary>
public sealed class GgufInt4Q4_0Tests : IDisposable
{
    private readonly Converter.Tests.TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private string QuantizeTiny(int group, bool symmetric)
    {
        var dir = _tmp[$"int4-g{group}-{symmetric}"];
        using var src = ModelCheckpoint.Open(Converter.Tests.TestData.Model("tiny-dsv3"));
        QuantizePipeline.Run(src, new QuantizeOptions(QuantizeScheme.Int4, dir) { Int4 = new Int4Options(group, symmetric) }, NullLogger.Instance);
        return dir;
    }

    [Fact]
    public void Int4SymmetricG32ConvertsToQ4_0WithEveryDequantizedWeightBitIdentical()
    {
        var dir = QuantizeTiny(32, true);
        var output = _tmp["q4_0.gguf"];
        using var ckpt = ModelCheckpoint.Open(dir);
        GgufExportPipeline.Run(ckpt, new GgufExportOptions(output, GgmlType.Q4_0), NullLogger.Instance);

        using var r = GgufReader.Open(output);
        int compared = 0;
        for (int layer = 1; layer < 4; layer++)
            foreach (var (ggml, part) in new[] { ("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj") })
            {
                var t = r.GetTensor($"blk.{layer}.ffn_{ggml}_exps.weight");
                t.Type.Should().Be(GgmlType.Q4_0);
                long n = 1;
                foreach (var d in t.Dimensions) n *= d;
                var values = new float[n];
                GgmlQuantizer.Dequantize(GgmlType.Q4_0, r.GetTensorData(t), values);
                int per = (int)(n / 16);
                for (int e = 0; e < 16; e++)
                {
                    var expected = ckpt.ReadFloat32($"model.layers.{layer}.mlp.experts.{e}.{part}.weight");
                    expected.Length.Should().Be(per);
                    var got = values.AsSpan(e * per, per);
                    int mismatches = 0;
                    for (int i = 0; i < per; i++)
                        if (BitConverter.SingleToInt32Bits(got[i]) != BitConverter.SingleToInt32Bits(expected[i])) mismatches++;
                    mismatches.Should().Be(0, $"layer {layer} expert {e} {part}");
                    compared++;
                }
            }
        compared.Should().Be(3 * 3 * 16);

        // The test can fail: requantizing the dequantized values with ggml's own Q4_0 rule does change some of them.
        var w = ckpt.ReadFloat32("model.layers.1.mlp.experts.0.down_proj.weight");
        var blocks = new byte[w.Length / 32 * 18];
        GgmlQuantizer.Quantize(GgmlType.Q4_0, w, blocks);
        var back = new float[w.Length];
        GgmlQuantizer.Dequantize(GgmlType.Q4_0, blocks, back);
        back.Where((v, i) => v != w[i]).Should().NotBeEmpty();
    }

    [Fact]
    public void OtherInt4SchemesAreDequantizedAndRequantized()
    {
        // Group 128 asymmetric has no exact Q4_0 form: it must still export (through float32), not fail.
        var dir = QuantizeTiny(128, false);
        var output = _tmp["g128.gguf"];
        using var ckpt = ModelCheckpoint.Open(dir);
        GgufExportPipeline.Run(ckpt, new GgufExportOptions(output, GgmlType.Q4_0), NullLogger.Instance);
        using var r = GgufReader.Open(output);
        var t = r.GetTensor("blk.1.ffn_down_exps.weight");
        t.Type.Should().Be(GgmlType.Q4_0);
        var values = new float[256 * 128 * 16];
        GgmlQuantizer.Dequantize(GgmlType.Q4_0, r.GetTensorData(t), values);
        var w = ckpt.ReadFloat32("model.layers.1.mlp.experts.0.down_proj.weight");
        double err = 0, norm = 0;
        for (int i = 0; i < w.Length; i++) { err += Math.Pow(values[i] - w[i], 2); norm += (double)w[i] * w[i]; }
        Math.Sqrt(err / norm).Should().BeLessThan(0.2);
    }
}
