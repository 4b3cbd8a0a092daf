using Converter.Formats.Onnx;
using Converter.Formats.Onnx.Proto;
using Converter.Formats.Safetensors;
using Converter.Decoder.Onnx;
using Converter.Pipelines;
using Converter.Runtime;
using Xunit.Abstractions;

namespace Converter.Tests.Onnx;

/// <summary>--weights fp8 exports against the FP8 golden (transformers on the dequantized FP8 weights).</summary>
public class OnnxExportFp8Tests(ITestOutputHelper log)
{
    [Theory]
    [InlineData("tiny-dsv3", false)]
    [InlineData("tiny-dsv3-fp8", false)]
    [InlineData("tiny-dsv3", true)]
    public void Fp8ExportMatchesFp8Golden(string source, bool castDequantize)
    {
        using var tmp = new TestData.TempDir();
        var fp8 = OnnxExportPipeline.Run(TestData.Model(source), tmp["fp8"],
            new OnnxExportOptions(OnnxWeightFormat.Fp8, Fp8CastDequantize: castDequantize));
        var fp32 = OnnxExportPipeline.Run(TestData.Model(source), tmp["fp32"], new OnnxExportOptions(OnnxWeightFormat.Fp32));
        double ratio = fp8.DataBytes / (double)fp32.DataBytes;
        log.WriteLine($"{source}: fp8 data {fp8.DataBytes:N0} bytes, fp32 data {fp32.DataBytes:N0} bytes, ratio {ratio:P1}");

        var golden = new GoldenEval(TestData.Golden("tiny-dsv3-fp8", "eval.safetensors"));
        using var runner = new OnnxArtifactRunner(fp8.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: 2));
        var outs = runner.Run(golden.Tokens, golden.Batch, golden.Seq, hiddenStates: false, routing: false);
        var stats = LogitStats.Compare(outs.Logits, golden.Logits, golden.Vocab);
        log.WriteLine($"{source} -> fp8 (cast dequantize: {castDequantize}) vs fp8 golden: {stats}");

        long fileFp8 = new FileInfo(Path.Combine(fp8.OutputDirectory, "model.onnx.data")).Length + new FileInfo(fp8.ModelPath).Length;
        long fileFp32 = new FileInfo(Path.Combine(fp32.OutputDirectory, "model.onnx.data")).Length + new FileInfo(fp32.ModelPath).Length;
        ((double)fileFp8 / fileFp32).Should().BeLessThan(0.40);
        stats.MeanAbs.Should().BeLessThanOrEqualTo(1e-4);
        stats.Top1.Should().BeGreaterThanOrEqualTo(0.998);
    }

    [Fact]
    public void Fp8CodesAndScalesEqualTheOfficialFp8Checkpoint()
    {
        // From the FP8 source the bytes are copied; from BF16 they are quantized: both must equal the reference file.
        using var reference = SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv3-fp8"));
        foreach (var source in new[] { "tiny-dsv3-fp8", "tiny-dsv3" })
        {
            using var tmp = new TestData.TempDir();
            var r = OnnxExportPipeline.Run(TestData.Model(source), tmp["fp8"], new OnnxExportOptions(OnnxWeightFormat.Fp8));
            var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(r.ModelPath));
            var data = File.ReadAllBytes(Path.Combine(r.OutputDirectory, OnnxExternalDataWriter.DataFileName));
            ReadOnlySpan<byte> Bytes(TensorProto t)
            {
                long off = long.Parse(t.ExternalData.Single(e => e.Key == "offset").Value);
                long len = long.Parse(t.ExternalData.Single(e => e.Key == "length").Value);
                off.Should().Be(off / 64 * 64, "offsets are 64-byte aligned");
                return data.AsSpan((int)off, (int)len);
            }
            var byName = model.Graph.Initializer.ToDictionary(t => t.Name);
            int compared = 0;
            // A plain projection, and a stacked expert tensor (expert 3's slice).
            foreach (var name in new[] { "model.layers.1.self_attn.kv_b_proj.weight", "model.layers.2.mlp.shared_experts.down_proj.weight" })
            {
                using var w = reference.Read(name);
                using var s = reference.Read(name + "_scale_inv");
                Bytes(byName[name]).SequenceEqual(w.Bytes).Should().BeTrue($"{source}: {name} codes");
                Bytes(byName[name + "_scale_inv"]).SequenceEqual(s.Bytes).Should().BeTrue($"{source}: {name} scales");
                compared++;
            }
            {
                using var w = reference.Read("model.layers.3.mlp.experts.3.up_proj.weight");
                var stacked = byName["model.layers.3.mlp.experts.up_proj.weight"];
                stacked.DataType.Should().Be((int)TensorProto.Types.DataType.Float8E4M3Fn);
                int len = w.Bytes.Length;
                Bytes(stacked).Slice(3 * len, len).SequenceEqual(w.Bytes).Should().BeTrue($"{source}: stacked expert 3 codes");
            }
            log.WriteLine($"{source}: {compared + 1} FP8 tensors byte-identical to the official layout");
        }
    }
}
