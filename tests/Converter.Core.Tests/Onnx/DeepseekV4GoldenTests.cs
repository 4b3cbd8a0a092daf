using Converter.Decoder.Onnx;
using Converter.Formats.Safetensors;
using Converter.Pipelines;
using Converter.Tensors;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Xunit.Abstractions;

namespace Converter.Tests.Onnx;

/// <summary>DeepSeek-V4's tiny references exported to ONNX and run through ONNX Runtime against the transformers goldens.</summary>
public class DeepseekV4GoldenTests(ITestOutputHelper log)
{
    /// <summary>What one diagnostic run of a V4 export returns.</summary>
    public sealed record V4Outputs(float[] Logits, Dictionary<string, float[]> Floats, Dictionary<string, long[]> Ints);

    public static V4Outputs RunDiagnostic(string onnxDir, int[] tokens, int batch, int seq)
    {
        using var so = new SessionOptions { IntraOpNumThreads = 2 };
        using var s = new InferenceSession(Path.Combine(onnxDir, "model.onnx"), so);
        var ids = Array.ConvertAll(tokens, t => (long)t);
        var pos = new long[batch * seq];
        for (int i = 0; i < pos.Length; i++) pos[i] = i % seq;
        var mask = new long[batch * seq];
        Array.Fill(mask, 1L);
        var inputs = new List<NamedOnnxValue> { NamedOnnxValue.CreateFromTensor("input_ids", new DenseTensor<long>(ids, [batch, seq])) };
        if (s.InputMetadata.ContainsKey("attention_mask")) inputs.Add(NamedOnnxValue.CreateFromTensor("attention_mask", new DenseTensor<long>(mask, [batch, seq])));
        if (s.InputMetadata.ContainsKey("position_ids")) inputs.Add(NamedOnnxValue.CreateFromTensor("position_ids", new DenseTensor<long>(pos, [batch, seq])));
        using var r = s.Run(inputs);
        var floats = new Dictionary<string, float[]>();
        var ints = new Dictionary<string, long[]>();
        foreach (var o in r)
        {
            if (o.ElementType == TensorElementType.Float) floats[o.Name] = o.AsTensor<float>().ToArray();
            else if (o.ElementType == TensorElementType.Int64) ints[o.Name] = o.AsTensor<long>().ToArray();
        }
        return new V4Outputs(floats["logits"], floats, ints);
    }

    [Theory]
    [InlineData("tiny-dsv4", "tiny-dsv4")]
    public void Fp32ExportMatchesGolden(string model, string goldenName)
    {
        using var tmp = new TestData.TempDir();
        var result = OnnxExportPipeline.Run(TestData.Model(model), tmp["onnx"], new OnnxExportOptions(DiagnosticOutputs: true));
        var g = new V4Golden(TestData.Golden(goldenName, "eval.safetensors"));
        var outs = RunDiagnostic(result.OutputDirectory, g.Tokens, g.Batch, g.Seq);
        var stable = g.Stable();
        log.WriteLine($"stable: {stable.Count(x => x)} of {stable.Length}");
        var st = LogitStats.Compare(outs.Logits, g.Logits, g.Vocab, stable);
        var all = LogitStats.Compare(outs.Logits, g.Logits, g.Vocab);
        log.WriteLine($"stable positions: {st}");
        log.WriteLine($"all positions:    {all}");
        st.MaxAbs.Should().BeLessThan(1e-3);
    }
}

/// <summary>A V4 golden: tokens, logits, streams of sequence 0, routing and indexer selections with their margins.</summary>
public sealed class V4Golden
{
    public int Batch, Seq, Vocab;
    public int[] Tokens;
    public float[] Logits;
    public float[]? HcStates; public long[]? HcShape;
    public float[]? FinalHidden;
    public int[] RouteLayers; public int[] RouteTopk; public float[] RouteMargin; public int K;
    public int[] IndexerLayers; public int[] IndexerTopk; public float[] IndexerMargin; public int IndexK;

    public V4Golden(string path)
    {
        using var f = SafetensorsFile.Open(path);
        float[] F(string n) { using var t = f.Read(n); return TensorConvert.ToFloat32(t); }
        int[] I(string n) { using var t = f.Read(n); return Array.ConvertAll(TensorConvert.ToInt64(t), x => (int)x); }
        var tok = f.Info("tokens");
        Batch = (int)tok.Shape[0]; Seq = (int)tok.Shape[1];
        Tokens = I("tokens");
        Logits = F("logits");
        Vocab = (int)f.Info("logits").Shape[2];
        if (f.Contains("hc_states_seq0")) { HcStates = F("hc_states_seq0"); HcShape = f.Info("hc_states_seq0").Shape; }
        if (f.Contains("final_hidden_seq0")) FinalHidden = F("final_hidden_seq0");
        RouteLayers = I("route_layers"); RouteTopk = I("route_topk_idx"); RouteMargin = F("route_margin"); K = (int)f.Info("route_topk_idx").Shape[3];
        IndexerLayers = I("indexer_layers"); IndexerTopk = I("indexer_topk_idx"); IndexerMargin = F("indexer_margin"); IndexK = (int)f.Info("indexer_topk_idx").Shape[3];
    }

    public bool[] Stable(double route = 1e-4, double indexer = 1e-5)
    {
        int n = Batch * Seq;
        var ok = new bool[n];
        for (int p = 0; p < n; p++)
        {
            ok[p] = true;
            for (int l = 0; l < RouteLayers.Length; l++) if (!(RouteMargin[l * n + p] >= route)) ok[p] = false;
            for (int l = 0; l < IndexerLayers.Length; l++) if (!(IndexerMargin[l * n + p] >= indexer)) ok[p] = false;
        }
        return ok;
    }
}
