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
    [InlineData("tiny-dsv4", "tiny-dsv4", OnnxWeightFormat.Fp32)]
    [InlineData("tiny-dsv4-fp8", "tiny-dsv4-fp8", OnnxWeightFormat.Fp8)]
    [InlineData("tiny-dsv4", "tiny-dsv4-fp8", OnnxWeightFormat.Fp8)]
    [InlineData("tiny-dsv4-fp8", "tiny-dsv4-fp8", OnnxWeightFormat.Fp32)]
    public void ExportMatchesGolden(string model, string goldenName, OnnxWeightFormat weights)
    {
        using var tmp = new TestData.TempDir();
        var result = OnnxExportPipeline.Run(TestData.Model(model), tmp["onnx"], new OnnxExportOptions(weights, DiagnosticOutputs: true));
        log.WriteLine($"{model} -> {weights}: {result.DataBytes:N0} bytes of weights");
        var g = new V4Golden(TestData.Golden(goldenName, "eval.safetensors"));
        var outs = RunDiagnostic(result.OutputDirectory, g.Tokens, g.Batch, g.Seq);
        var stable = g.Stable();
        log.WriteLine($"stable: {stable.Count(x => x)} of {stable.Length}");
        var st = LogitStats.Compare(outs.Logits, g.Logits, g.Vocab, stable);
        var all = LogitStats.Compare(outs.Logits, g.Logits, g.Vocab);
        log.WriteLine($"stable positions: {st}");
        log.WriteLine($"all positions:    {all}");
        var report = Converter.Verification.GoldenComparer.Compare(Converter.Verification.GoldenSet.Load(TestData.Golden(goldenName, "eval.safetensors")),
            new Converter.Verification.ArtifactOutputs(outs.Logits, null, null), Converter.Verification.VerificationTolerances.ForPreset("fp32"), null);
        log.WriteLine($"kl_mean {report.KlMean:E3}, kl_max {report.KlMax:E3}");
        var check = Check(g, outs, stable, log);
        st.MaxAbs.Should().BeLessThanOrEqualTo(1e-3);
        st.Top1.Should().Be(1.0);
        report.KlMean.Should().BeLessThanOrEqualTo(1e-5);
        check.RoutingMismatches.Should().Be(0);
        check.IndexerMismatches.Should().Be(0);
        if (g.HcStates != null) check.WorstStreamRelative.Should().BeLessThanOrEqualTo(1e-4);
    }

    public sealed record V4Check(int RoutingChecked, int RoutingMismatches, int IndexerChecked, int IndexerMismatches, double WorstStreamRelative);

    /// <summary>Routing and indexer selections on stable positions, and sequence 0's streams layer by layer.</summary>
    public static V4Check Check(V4Golden g, V4Outputs outs, bool[] stable, ITestOutputHelper log)
    {
        int n = g.Batch * g.Seq;
        int rc = 0, rm = 0;
        for (int i = 0; i < g.RouteLayers.Length; i++)
        {
            int layer = g.RouteLayers[i];
            var got = outs.Ints[OnnxDecoderNames.Routing(layer)];
            for (int p = 0; p < n; p++)
            {
                if (!stable[p]) continue;
                rc++;
                var want = g.RouteTopk.AsSpan((i * n + p) * g.K, g.K).ToArray().OrderBy(x => x);
                var have = got.AsSpan(p * g.K, g.K).ToArray().Select(x => (int)x).OrderBy(x => x);
                if (!want.SequenceEqual(have)) rm++;
            }
        }
        int ic = 0, im = 0;
        for (int i = 0; i < g.IndexerLayers.Length; i++)
        {
            int layer = g.IndexerLayers[i];
            var got = outs.Ints[OnnxDecoderNames.Selection(layer)];
            int k = got.Length / n;
            for (int p = 0; p < n; p++)
            {
                if (!stable[p]) continue;
                ic++;
                var want = g.IndexerTopk.AsSpan((i * n + p) * g.IndexK, g.IndexK).ToArray().Where(x => x >= 0).OrderBy(x => x);
                var have = got.AsSpan(p * k, k).ToArray().Where(x => x >= 0).Select(x => (int)x).OrderBy(x => x);
                if (!want.SequenceEqual(have)) im++;
            }
        }
        log.WriteLine($"routing: {rc} stable (layer, position) choices, {rm} differ; indexer: {ic} stable choices, {im} differ");
        double worst = 0;
        if (g.HcStates is { } hs)
        {
            long entries = g.HcShape![0], positions = g.HcShape[1], per = g.HcShape[2] * g.HcShape[3];
            for (int l = 0; l < entries; l++)
            {
                var a = outs.Floats[l == 0 ? OnnxDecoderNames.Embedding : OnnxDecoderNames.Layer(l - 1)];
                double e2 = 0, r2 = 0, max = 0;
                for (long j = 0; j < positions * per; j++)
                {
                    double d = a[j] - hs[l * positions * per + j];
                    e2 += d * d; r2 += (double)hs[l * positions * per + j] * hs[l * positions * per + j]; max = Math.Max(max, Math.Abs(d));
                }
                double rel = Math.Sqrt(e2 / r2);
                worst = Math.Max(worst, rel);
                log.WriteLine($"streams {(l == 0 ? "embedding" : $"layer {l - 1}")}: relative {rel:E3}, max|d| {max:E3}");
            }
        }
        if (g.FinalHidden is { } fh)
        {
            var a = outs.Floats[OnnxDecoderNames.FinalNorm];
            double e2 = 0, r2 = 0;
            for (int j = 0; j < fh.Length; j++) { double d = a[j] - fh[j]; e2 += d * d; r2 += (double)fh[j] * fh[j]; }
            log.WriteLine($"hyper-head + final norm (sequence 0, {fh.Length / (a.Length / g.Batch / g.Seq)} positions): relative {Math.Sqrt(e2 / r2):E3}");
        }
        return new V4Check(rc, rm, ic, im, worst);
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
