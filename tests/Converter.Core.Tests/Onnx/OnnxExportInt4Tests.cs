using Converter.Formats.CompressedTensors;
using Converter.Formats.Onnx;
using Converter.Formats.Onnx.Proto;
using Converter.Models;
using Converter.Decoder.Onnx;
using Converter.Numerics;
using Converter.Numerics.Int4;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Verification;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace Converter.Tests.Onnx;

/// <summary>
/// --weights int4: routed experts through QMoE, INT4 projections through MatMulNBits. Checked against the fp32 export
/// of the same dequantized weights (packing and kernels, independent of quantization error) and reported against
/// the BF16 golden.
/// </summary>
public class OnnxExportInt4Tests(ITestOutputHelper log) : IDisposable
{
    private readonly TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private string QuantizeTiny(int group, bool symmetric, Int4Targets targets = Int4Targets.RoutedExperts)
    {
        var dir = _tmp[$"int4-g{group}-{(symmetric ? "sym" : "asym")}-{targets}"];
        using var src = ModelCheckpoint.Open(TestData.Model("tiny-dsv3"));
        QuantizePipeline.Run(src, new QuantizeOptions(QuantizeScheme.Int4, dir) { Int4 = new Int4Options(group, symmetric, Targets: targets) },
            NullLogger.Instance);
        return dir;
    }

    private static float[] Logits(string onnxDir, GoldenEval golden)
    {
        using var runner = new OnnxArtifactRunner(onnxDir, new OnnxRunnerOptions(IntraOpThreads: 2));
        return runner.Run(golden.Tokens, golden.Batch, golden.Seq, hiddenStates: false, routing: false).Logits;
    }

    [Theory]
    [InlineData(32, true, Int4Targets.RoutedExperts)]
    [InlineData(128, false, Int4Targets.RoutedExperts)]
    [InlineData(64, false, Int4Targets.AllLinear)]
    public void Int4ExportAgreesWithTheFp32ExportOfTheSameDequantizedWeights(int group, bool symmetric, Int4Targets targets)
    {
        var ckpt = QuantizeTiny(group, symmetric, targets);
        var int4 = OnnxExportPipeline.Run(ckpt, _tmp["onnx-int4"], new OnnxExportOptions(OnnxWeightFormat.Int4));
        var fp32 = OnnxExportPipeline.Run(ckpt, _tmp["onnx-fp32"], new OnnxExportOptions(OnnxWeightFormat.Fp32));

        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(int4.ModelPath));
        var ops = model.Functions.SelectMany(f => f.Node).Select(n => n.OpType).ToHashSet();
        ops.Should().Contain("QMoE").And.NotContain("MoE");
        if (targets == Int4Targets.AllLinear) ops.Should().Contain("MatMulNBits");
        else ops.Should().NotContain("MatMulNBits");

        var golden = new GoldenEval(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        var a = Logits(int4.OutputDirectory, golden);
        var b = Logits(fp32.OutputDirectory, golden);
        var stats = LogitStats.Compare(a, b, golden.Vocab);
        log.WriteLine($"g{group} {(symmetric ? "sym" : "asym")} {targets}: int4 {int4.DataBytes:N0} bytes vs fp32 {fp32.DataBytes:N0} bytes; int4 vs fp32 of the same weights: {stats}");
        var vsGolden = GoldenComparer.Compare(GoldenSet.Load(TestData.Golden("tiny-dsv3", "eval.safetensors")),
            new ArtifactOutputs(a, null, null), VerificationTolerances.ForPreset("int4"), null);
        log.WriteLine($"  int4 vs golden: kl_mean {vsGolden.KlMean:E3}, top1 {vsGolden.Top1Agreement:F4}, ppl_ratio {vsGolden.PplRatio:F4}");
        stats.MaxAbs.Should().BeLessThanOrEqualTo(1e-3);
        int4.DataBytes.Should().BeLessThan(fp32.DataBytes);
    }

    [Fact]
    public void VariantConfigAgreesWithFp32OfTheSameWeights()
    {
        // No q_lora (q_proj as MatMulNBits), one group, norm_topk_prob false (raw weights through router_weights), no rope scaling.
        var dir = VariantCheckpoint.Create(_tmp["variant"], cfg =>
        {
            cfg["n_group"] = 1; cfg["topk_group"] = 1; cfg["norm_topk_prob"] = false; cfg.Remove("rope_scaling"); cfg["q_lora_rank"] = null;
        }, VariantCheckpoint.RemoveQLora);
        var q = _tmp["variant-int4"];
        using (var src = ModelCheckpoint.Open(dir))
            QuantizePipeline.Run(src, new QuantizeOptions(QuantizeScheme.Int4, q) { Int4 = new Int4Options(32, false, Targets: Int4Targets.AllLinear) },
                NullLogger.Instance);
        var int4 = OnnxExportPipeline.Run(q, _tmp["v-int4"], new OnnxExportOptions(OnnxWeightFormat.Int4));
        var fp32 = OnnxExportPipeline.Run(q, _tmp["v-fp32"], new OnnxExportOptions(OnnxWeightFormat.Fp32));
        var golden = new GoldenEval(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        var stats = LogitStats.Compare(Logits(int4.OutputDirectory, golden), Logits(fp32.OutputDirectory, golden), golden.Vocab);
        log.WriteLine($"variant int4 (all linear, g32 asym) vs fp32 of the same weights: {stats}");
        stats.MaxAbs.Should().BeLessThanOrEqualTo(1e-3);
    }

    [Fact]
    public void PackedCodesScalesAndZeroPointsAreCopiedExactly()
    {
        var ckpt = QuantizeTiny(32, false);
        var r = OnnxExportPipeline.Run(ckpt, _tmp["onnx"], new OnnxExportOptions(OnnxWeightFormat.Int4));
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(r.ModelPath));
        var data = File.ReadAllBytes(Path.Combine(r.OutputDirectory, OnnxExternalDataWriter.DataFileName));
        var byName = model.Graph.Initializer.ToDictionary(t => t.Name);
        ReadOnlySpan<byte> Bytes(string name)
        {
            var t = byName[name];
            long off = long.Parse(t.ExternalData.Single(e => e.Key == "offset").Value);
            long len = long.Parse(t.ExternalData.Single(e => e.Key == "length").Value);
            return data.AsSpan((int)off, (int)len);
        }
        using var q = ModelCheckpoint.Open(ckpt);
        var scheme = q.Int4Config!.Scheme;
        const string layer = "model.layers.2.mlp.";
        // fc2 (down_proj) of expert 5: the compressed-tensors int32 words, little-endian, are exactly QMoE's bytes.
        int rows = 256, cols = 128, groups = cols / 32;
        byte[] packed;
        using (var p = q.Tensors.Read(PackQuantized.PartName(layer + "experts.5.down_proj.weight", PackQuantized.Packed))) packed = p.Bytes.ToArray();
        Bytes(layer + "experts.fc2.weight").Slice(5 * packed.Length, packed.Length).SequenceEqual(packed).Should().BeTrue();
        var w = PackQuantized.Read(q.Tensors, layer + "experts.5.down_proj.weight", scheme);
        var scales = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(Bytes(layer + "experts.fc2.weight_scales")).Slice(5 * rows * groups, rows * groups);
        var zeros = Bytes(layer + "experts.fc2.weight_zero_points").Slice(5 * rows * (groups / 2), rows * (groups / 2));
        for (int i = 0; i < rows * groups; i++)
        {
            scales[i].Should().Be(Bf16.ToSingle(w.Scales[i]));
            int zp = (zeros[i / 2] >> (4 * (i % 2))) & 15;
            (zp - 8).Should().Be(w.Zeros[i]);
        }
        // fc1: row 2i is gate row i, row 2i + 1 is up row i.
        var gate = PackQuantized.Read(q.Tensors, layer + "experts.0.gate_proj.weight", scheme);
        var up = PackQuantized.Read(q.Tensors, layer + "experts.0.up_proj.weight", scheme);
        var fc1 = Bytes(layer + "experts.fc1.weight");
        for (int row = 0; row < 8; row++)
            for (int c = 0; c < 256; c++)
            {
                var src = row % 2 == 0 ? gate : up;
                int nib = (fc1[(row * 256 + c) / 2] >> (4 * (c % 2))) & 15;
                (nib - 8).Should().Be(src.Q[row / 2 * 256 + c]);
            }
    }

    [Fact]
    public void QuantizingOnTheWayEqualsExportingTheQuantizedCheckpoint()
    {
        // BF16 source --weights int4 --group-size 64 uses the same RTN quantizer as `quantize --scheme int4`.
        var ckpt = QuantizeTiny(64, true);
        var fromPacked = OnnxExportPipeline.Run(ckpt, _tmp["a"], new OnnxExportOptions(OnnxWeightFormat.Int4));
        var fromBf16 = OnnxExportPipeline.Run(TestData.Model("tiny-dsv3"), _tmp["b"], new OnnxExportOptions(OnnxWeightFormat.Int4, Int4GroupSize: 64));
        File.ReadAllBytes(Path.Combine(fromPacked.OutputDirectory, OnnxExternalDataWriter.DataFileName))
            .SequenceEqual(File.ReadAllBytes(Path.Combine(fromBf16.OutputDirectory, OnnxExternalDataWriter.DataFileName))).Should().BeTrue();
    }

    [Fact]
    public void APackedCheckpointRefusesAnotherGroupSize()
    {
        var ckpt = QuantizeTiny(32, true);
        var act = () => OnnxExportPipeline.Run(ckpt, _tmp["x"], new OnnxExportOptions(OnnxWeightFormat.Int4, Int4GroupSize: 128));
        act.Should().Throw<ArgumentException>().WithMessage("*group size 32*--group-size 128*");
        Directory.Exists(_tmp["x"]).Should().BeFalse();
    }
}
