using Converter.Formats.Onnx;
using Converter.Formats.Onnx.Proto;
using Converter.Decoder.Onnx;
using Converter.Pipelines;
using Converter.Runtime;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Xunit.Abstractions;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;

namespace Converter.Tests.Onnx;

/// <summary>Inputs, diagnostics, failure modes and large external data.</summary>
public class OnnxExportBehaviourTests(ITestOutputHelper log)
{
    private static float[] Run(InferenceSession s, long[] ids, long[] mask, long[] pos, int batch, int seq)
    {
        var inputs = new List<NamedOnnxValue>
        {
            NamedOnnxValue.CreateFromTensor("input_ids", new DenseTensor<long>(ids, [batch, seq])),
            NamedOnnxValue.CreateFromTensor("attention_mask", new DenseTensor<long>(mask, [batch, seq])),
            NamedOnnxValue.CreateFromTensor("position_ids", new DenseTensor<long>(pos, [batch, seq])),
        };
        using var r = s.Run(inputs, ["logits"]);
        return r.First().AsTensor<float>().ToArray();
    }

    [Fact]
    public void LeftPaddingWithAttentionMaskAndPositionIdsLeavesRealTokensUnchanged()
    {
        using var tmp = new TestData.TempDir();
        var export = OnnxExportPipeline.Run(TestData.Model("tiny-dsv3"), tmp["onnx"], new OnnxExportOptions());
        var golden = new GoldenEval(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        using var session = new InferenceSession(export.ModelPath);
        const int seq = 48, pad = 16, vocab = 256;
        // Row 0: 48 real tokens. Row 1: 16 pad tokens (id 0, masked) then the first 32 of the same tokens.
        var ids = new long[2 * seq];
        var mask = new long[2 * seq];
        var pos = new long[2 * seq];
        for (int t = 0; t < seq; t++)
        {
            ids[t] = golden.Tokens[t]; mask[t] = 1; pos[t] = t;
            ids[seq + t] = t < pad ? 0 : golden.Tokens[t - pad];
            mask[seq + t] = t < pad ? 0 : 1;
            pos[seq + t] = t < pad ? 1 : t - pad;
        }
        var logits = Run(session, ids, mask, pos, 2, seq);
        double max = 0;
        for (int t = pad; t < seq; t++)
            for (int v = 0; v < vocab; v++)
                max = Math.Max(max, Math.Abs(logits[(seq + t) * vocab + v] - logits[(t - pad) * vocab + v]));
        logits.Should().NotContain(float.NaN);
        log.WriteLine($"left-padded row vs unpadded row: max|d| {max:E3}");
        max.Should().BeLessThan(1e-4);

        // Real positions also agree with the golden.
        double g = 0;
        for (int t = 0; t < seq; t++)
            for (int v = 0; v < vocab; v++)
                g = Math.Max(g, Math.Abs(logits[t * vocab + v] - golden.Logits[t * vocab + v]));
        g.Should().BeLessThan(1e-3);
    }

    [Fact]
    public void DiagnosticOutputsBuiltIntoTheGraphAreUsedDirectly()
    {
        using var tmp = new TestData.TempDir();
        var export = OnnxExportPipeline.Run(TestData.Model("tiny-dsv3"), tmp["onnx"],
            new OnnxExportOptions(DiagnosticOutputs: true, AttentionMaskInput: false, PositionIdsInput: false));
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(export.ModelPath));
        model.Graph.Input.Select(i => i.Name).Should().Equal("input_ids");
        model.Graph.Output.Select(o => o.Name).Should().Contain([OnnxDecoderNames.Embedding, OnnxDecoderNames.FinalNorm,
            OnnxDecoderNames.Layer(3), OnnxDecoderNames.Routing(1)]);
        model.IrVersion.Should().Be(11);
        model.OpsetImport.Should().ContainSingle(o => o.Domain == "" && o.Version == 23);
        model.OpsetImport.Should().Contain(o => o.Domain == "com.microsoft");
        model.Functions.Select(f => f.Name).Should().Contain(["MLA", "MoE", "MLP"]);

        var golden = new GoldenEval(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        using var runner = new OnnxArtifactRunner(export.OutputDirectory);
        // Batch 2 without an attention_mask input: the causal mask [1, 1, s, s] broadcasts over the batch.
        var outs = runner.Run(golden.Tokens.AsSpan(0, 256).ToArray(), 2, 128, hiddenStates: true, routing: true);
        LogitStats.Compare(outs.Logits, golden.Logits.AsSpan(0, 2 * 128 * 256).ToArray(), 256).MaxAbs.Should().BeLessThan(1e-3);
        outs.HiddenStates!.Length.Should().Be(5);
        outs.RoutingTopK!.Length.Should().Be(3);
        // No diagnostic copy of the model is left beside the export: only the model, its serving files and the manifest.
        Directory.GetFiles(export.OutputDirectory).Select(Path.GetFileName).Should().BeEquivalentTo(
            ["manifest.json", "model.onnx", "model.onnx.data", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]);
    }

    [Fact]
    public void CorruptCheckpointFailsBeforeAnyOutputIsWritten()
    {
        using var tmp = new TestData.TempDir();
        var src = TestData.Model("tiny-dsv3");
        var bad = Directory.CreateDirectory(tmp["bad"]).FullName;
        foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(bad, Path.GetFileName(f)));
        var shard = Path.Combine(bad, "model-00002-of-00003.safetensors");
        var bytes = File.ReadAllBytes(shard);
        File.WriteAllBytes(shard, bytes.AsSpan(0, bytes.Length - 1000).ToArray()); // truncated shard
        var outDir = tmp["out"];
        var act = () => OnnxExportPipeline.Run(bad, outDir, new OnnxExportOptions());
        act.Should().Throw<InvalidDataException>().Which.Message.Should().Contain("model-00002-of-00003.safetensors");
        Directory.Exists(outDir).Should().BeFalse();
        Directory.GetDirectories(tmp.Path).Should().HaveCount(1, "no staging folder is left behind");
    }

    [Fact]
    public void ExistingOutputNeedsOverwrite()
    {
        using var tmp = new TestData.TempDir();
        var outDir = Directory.CreateDirectory(tmp["out"]).FullName;
        File.WriteAllText(Path.Combine(outDir, "keep.txt"), "x");
        var act = () => OnnxExportPipeline.Run(TestData.Model("tiny-dsv3"), outDir, new OnnxExportOptions());
        act.Should().Throw<IOException>().Which.Message.Should().Contain("--overwrite");
        File.Exists(Path.Combine(outDir, "keep.txt")).Should().BeTrue();
        OnnxExportPipeline.Run(TestData.Model("tiny-dsv3"), outDir, new OnnxExportOptions(Overwrite: true));
        File.Exists(Path.Combine(outDir, "keep.txt")).Should().BeFalse();
        File.Exists(Path.Combine(outDir, "model.onnx")).Should().BeTrue();
    }

    [Fact]
    public void CudaWithoutGpuPackageGivesAClearError()
    {
        using var tmp = new TestData.TempDir();
        var export = OnnxExportPipeline.Run(TestData.Model("tiny-dsv3"), tmp["onnx"], new OnnxExportOptions());
        var act = () => new OnnxArtifactRunner(export.OutputDirectory, new OnnxRunnerOptions(OnnxExecutionProvider.Cuda));
        act.Should().Throw<NotSupportedException>().Which.Message.Should().Contain("CUDA");
    }

    /// <summary>More than 2 GiB of external data: one 2.2 GB initializer, then a small one past offset 2^31.</summary>
    [Fact]
    [Trait("Category", "Large")]
    public void ExternalDataBeyondTwoGigabytesLoadsInOnnxRuntime()
    {
        using var tmp = new TestData.TempDir();
        const long big = 550_000_000; // floats: 2.2 GB
        var g = new OnnxGraphBuilder("large");
        string idx = g.Input("idx", DataType.Int64, 1);
        string a = g.Initializer("a"), b = g.Initializer("b");
        g.OpNamed("Gather", [a, idx], ["picked"]);
        g.OpNamed("Add", [b, "picked"], ["y"]);
        g.Output("y", DataType.Float, 4);
        var model = new OnnxModelBuilder().Build(g);
        using (var w = new OnnxExternalDataWriter(tmp["m"], overwrite: false))
        {
            using (var s = w.Begin("a", DataType.Float, [big]))
            {
                var chunk = new float[1 << 20];
                for (long done = 0; done < big; done += chunk.Length)
                {
                    int n = (int)Math.Min(chunk.Length, big - done);
                    if (done + n == big) chunk[n - 1] = 7f; // marker in the very last element
                    s.Write<float>(chunk.AsSpan(0, n));
                }
                s.Complete();
            }
            var tb = w.Add<float>("b", DataType.Float, [4], [1f, 2f, 3f, 4f]);
            long.Parse(tb.ExternalData.Single(e => e.Key == "offset").Value).Should().BeGreaterThan(1L << 31);
            w.Commit(model);
        }
        new FileInfo(Path.Combine(tmp["m"], "model.onnx")).Length.Should().BeLessThan(10_000);
        using var session = new InferenceSession(Path.Combine(tmp["m"], "model.onnx"));
        using var r = session.Run([NamedOnnxValue.CreateFromTensor("idx", new DenseTensor<long>(new[] { big - 1 }, [1]))]);
        r.First().AsTensor<float>().ToArray().Should().Equal(8f, 9f, 10f, 11f);
    }
}
