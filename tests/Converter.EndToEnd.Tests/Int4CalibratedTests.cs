using Converter.Calibration;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Pipelines;
using Converter.Runtime.Calibration;
using Converter.Tensors;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace Converter.Tests;

/// <summary>
/// GPTQ against RTN on tiny-dsv3 through the product path: `calibrate` (<see cref="CalibratePipeline"/>, ONNX Runtime)
/// over every golden calib.safetensors sequence, `quantize --scheme int4`, quality measured on the held-out
/// eval.safetensors with the float64 reference forward. The Hessians of `calibrate` are checked against the
/// reference forward's.
/// </summary>
public class Int4CalibratedTests(ITestOutputHelper output) : IDisposable
{
    private readonly TestData.TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private static (int[] Tokens, int Seqs, int Len) Tokens(string file)
    {
        using var f = SafetensorsFile.Open(TestData.Golden("tiny-dsv3", file));
        var info = f.Info("tokens");
        using var d = f.Read(info);
        return (d.As<int>().ToArray(), (int)info.Shape[0], (int)info.Shape[1]);
    }

    private static float[] GoldenLogits()
    {
        using var f = SafetensorsFile.Open(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        using var d = f.Read("logits");
        return d.As<float>().ToArray();
    }

    [Fact]
    public void ReferenceForwardMatchesTheGoldenHiddenStatesAndLogits()
    {
        using var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv3"));
        var (tokens, _, len) = Tokens("eval.safetensors");
        var hidden = new List<double[]>();
        var logits = new TinyDsv3Reference(ckpt).Forward(tokens, 1, len, hidden);
        using var f = SafetensorsFile.Open(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        using var hs = f.Read("hidden_states_seq0");
        var golden = hs.As<float>();
        int per = len * 256;
        for (int layer = 0; layer < hidden.Count; layer++)
        {
            double max = 0;
            for (int i = 0; i < per; i++) max = Math.Max(max, Math.Abs(hidden[layer][i] - golden[layer * per + i]));
            output.WriteLine($"hidden state {layer}: max abs diff {max:E2}");
            max.Should().BeLessThan(1e-3, $"hidden state {layer}");
        }
        var gl = GoldenLogits();
        double ml = 0;
        for (int i = 0; i < len * 256; i++) ml = Math.Max(ml, Math.Abs(logits[i] - gl[i]));
        output.WriteLine($"logits seq 0: max abs diff {ml:E2}");
        ml.Should().BeLessThan(1e-3);
    }

    /// <summary>Runs the reference forward over calibration tokens and writes a calibration folder with per-expert Hessians.</summary>
    private static string Calibrate(ModelCheckpoint ckpt, string dir, int seqs, bool routingWeighted = false)
    {
        var (tokens, _, len) = Tokens("calib.safetensors");
        var arch = ckpt.Architecture;
        int h = arch.HiddenSize, e = arch.NumRoutedExperts, k = arch.NumExpertsPerToken, mi = ((Converter.Models.DeepseekV3.DeepseekV3Architecture)arch).Cfg.MoeIntermediateSize;
        var moeLayers = Enumerable.Range(0, arch.NumLayers).Where(arch.IsMoeLayer).ToList();
        var gateUp = moeLayers.ToDictionary(l => l, _ => Enumerable.Range(0, e).Select(_ => (HessianAccumulator?)new HessianAccumulator(h)).ToArray());
        var down = moeLayers.ToDictionary(l => l, _ => Enumerable.Range(0, e).Select(_ => (HessianAccumulator?)new HessianAccumulator(mi)).ToArray());
        var pooled = moeLayers.ToDictionary(l => l, _ => new HessianAccumulator(h));
        var topk = moeLayers.ToDictionary(l => l, _ => new List<int>());
        var model = new TinyDsv3Reference(ckpt)
        {
            OnMoe = (l, x, sel, weights, downIn) =>
            {
                var xf = Array.ConvertAll(x, v => (float)v);
                pooled[l].Add(xf, 1);
                for (int s = 0; s < sel.Length; s++)
                {
                    float[] w2 = [routingWeighted ? (float)(weights[s] * weights[s]) : 1f];
                    gateUp[l][sel[s]]!.Add(xf, 1, w2);
                    down[l][sel[s]]!.Add(Array.ConvertAll(downIn[s], v => (float)v), 1, w2);
                    topk[l].Add(sel[s]);
                }
            },
        };
        model.Forward(tokens.AsSpan(0, seqs * len).ToArray(), seqs, len);
        var data = new CalibrationData
        {
            ModelType = arch.ModelType, ConfigFingerprint = CalibrationData.Fingerprint(arch), RoutedExperts = e, ExpertsPerToken = k,
            Sequences = seqs, SequenceLength = len, TopK = topk.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray()),
        };
        foreach (var l in moeLayers) HessianStats.WriteLayer(dir, data, l, gateUp[l], down[l], pooled[l]);
        data.Save(dir);
        return dir;
    }

    /// <summary>The first <paramref name="seqs"/> calibration sequences as a tokens file for `calibrate`.</summary>
    private string TokensFile(int seqs)
    {
        var (ids, _, len) = Tokens("calib.safetensors");
        var dir = _tmp[$"tokens{seqs}"];
        using (var w = new SafetensorsWriter(dir, [new TensorSpec("tokens", DType.I32, [seqs, len])], long.MaxValue, overwrite: true))
        {
            w.Write("tokens", System.Runtime.InteropServices.MemoryMarshal.AsBytes(ids.AsSpan(0, seqs * len)));
            w.Commit();
        }
        return Path.Combine(dir, "model.safetensors");
    }

    /// <summary>
    /// `calibrate` (ONNX Runtime fp32, several batches with a partial last one) and the float64 reference forward give the
    /// same per-expert token counts and Hessians (every expert's gate_up and down, and the pooled one) on the same tokens;
    /// with routing weighting, each token's row weighted by the square of the routing weight the reference applies.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void CalibrateHessiansMatchTheReferenceForward(bool routingWeighted)
    {
        const int seqs = 8;
        using var src = ModelCheckpoint.Open(TestData.Model("tiny-dsv3"));
        var refDir = Calibrate(src, _tmp["ref"], seqs, routingWeighted);
        var prodDir = _tmp["prod"];
        CalibratePipeline.Run(TestData.Model("tiny-dsv3"), TokensFile(seqs), prodDir,
            new CalibrateOptions(Batch: 3, CommReport: false) { RoutingWeighted = routingWeighted });
        var arch = src.Architecture;
        int e = arch.NumRoutedExperts, h = arch.HiddenSize, mi = ((Converter.Models.DeepseekV3.DeepseekV3Architecture)arch).Cfg.MoeIntermediateSize;
        double worst = 0;
        foreach (var l in Enumerable.Range(0, arch.NumLayers).Where(arch.IsMoeLayer))
        {
            using var a = HessianStats.LayerReader.TryOpen(refDir, l, e)!;
            using var b = HessianStats.LayerReader.TryOpen(prodDir, l, e)!;
            b.Tokens.Should().Equal(a.Tokens, $"layer {l}: tokens per expert");
            var names = new List<(string, int)> { (HessianStats.PooledGateUpName, h) };
            for (int x = 0; x < e; x++)
                if (a.Tokens[x] > 0) names.AddRange([(HessianStats.ExpertName(x, ExpertInput.GateUp), h), (HessianStats.ExpertName(x, ExpertInput.Down), mi)]);
            foreach (var (n, k) in names)
            {
                var r = a.Read(n, k)!;
                var p = b.Read(n, k);
                p.Should().NotBeNull($"layer {l} {n}");
                double d = 0, s = 0;
                for (int i = 0; i < r.Length; i++) { d += (r[i] - p![i]) * (r[i] - p[i]); s += r[i] * r[i]; }
                double rel = Math.Sqrt(d / s);
                worst = Math.Max(worst, rel);
                rel.Should().BeLessThan(1e-5, $"layer {l} {n}: relative Frobenius difference");
            }
        }
        output.WriteLine($"largest relative Frobenius difference between calibrate's and the reference's Hessians: {worst:E2}");
    }

    /// <summary>Per-position KL(golden || quantized) over [positions, v] logits.</summary>
    private static double[] Kl(double[] logits, float[] golden, int positions, int v)
    {
        var kl = new double[positions];
        Parallel.For(0, positions, i =>
        {
            double mg = double.NegativeInfinity, mq = double.NegativeInfinity;
            for (int j = 0; j < v; j++) { mg = Math.Max(mg, golden[i * v + j]); mq = Math.Max(mq, logits[i * v + j]); }
            double zg = 0, zq = 0;
            for (int j = 0; j < v; j++) { zg += Math.Exp(golden[i * v + j] - mg); zq += Math.Exp(logits[i * v + j] - mq); }
            double s = 0;
            for (int j = 0; j < v; j++)
            {
                double lp = golden[i * v + j] - mg - Math.Log(zg), lq = logits[i * v + j] - mq - Math.Log(zq);
                s += Math.Exp(lp) * (lp - lq);
            }
            kl[i] = s;
        });
        return kl;
    }

    /// <summary>
    /// The product path end to end: `calibrate` over all of calib.safetensors, then int4 symmetric rtn and gptq (default
    /// options: act-order, group scales from the updated weights, saliency-weighted clipping) at group 32, 64 and 128,
    /// measured on eval.safetensors. kl_mean over the 1024 eval positions is dominated by a handful of positions where
    /// the quantized model's routing flips (see the output), so it moves a lot with the calibration subset: at g128 gptq
    /// is 24% below rtn with all 64 sequences but 2-35% below with 32- or 48-sequence subsets (README). Asserted: the
    /// issue's acceptance (g128 kl_mean >= 20% lower with all of calib), and at every size the per-position median
    /// >= 20% lower and kl_mean lower.
    /// </summary>
    [Fact]
    public void GptqFromCalibrateBeatsRtnOnHeldOutEval()
    {
        using var src = ModelCheckpoint.Open(TestData.Model("tiny-dsv3"));
        var calib = _tmp["calib"];
        CalibratePipeline.Run(TestData.Model("tiny-dsv3"), TestData.Golden("tiny-dsv3", "calib.safetensors"), calib, new CalibrateOptions(CommReport: false));
        var (tokens, seqs, len) = Tokens("eval.safetensors");
        var golden = GoldenLogits();
        var mean = new Dictionary<(int, Int4Method), double>();
        var median = new Dictionary<(int, Int4Method), double>();
        foreach (int g in new[] { 32, 64, 128 })
            foreach (var method in new[] { Int4Method.Rtn, Int4Method.Gptq })
            {
                var outDir = _tmp[$"q{g}{method}"];
                QuantizePipeline.Run(src, new QuantizeOptions(QuantizeScheme.Int4, outDir)
                {
                    Int4 = new Int4Options(g, true, method, Calibration: method == Int4Method.Gptq ? calib : null),
                }, NullLogger.Instance);
                using var q = ModelCheckpoint.Open(outDir);
                var kl = Kl(new TinyDsv3Reference(q).Forward(tokens, seqs, len), golden, seqs * len, 256);
                var sorted = kl.OrderDescending().ToArray();
                double sum = kl.Sum();
                mean[(g, method)] = sum / kl.Length;
                median[(g, method)] = sorted[kl.Length / 2];
                output.WriteLine($"g{g} {method}: kl_mean {mean[(g, method)]:E3}, median {median[(g, method)]:E3}, " +
                                 $"largest 10 of {kl.Length} positions hold {sorted.Take(10).Sum() / sum:P0} of the sum");
            }
        foreach (int g in new[] { 32, 64, 128 })
            output.WriteLine($"g{g}: gptq kl_mean {100 * (1 - mean[(g, Int4Method.Gptq)] / mean[(g, Int4Method.Rtn)]):F1}% lower than rtn, " +
                             $"median {100 * (1 - median[(g, Int4Method.Gptq)] / median[(g, Int4Method.Rtn)]):F1}% lower");
        // The acceptance, on its own setup (all of calib.safetensors): 24% measured. Not a knife edge: damping
        // 0.0099..0.0105 moves gptq's kl_mean by under 1.5% (3.03e-3..3.08e-3 against rtn's 4.00e-3).
        mean[(128, Int4Method.Gptq)].Should().BeLessThanOrEqualTo(0.8 * mean[(128, Int4Method.Rtn)], "g128: gptq kl_mean >= 20% below rtn's");
        foreach (int g in new[] { 32, 64, 128 })
        {
            median[(g, Int4Method.Gptq)].Should().BeLessThan(0.8 * median[(g, Int4Method.Rtn)], $"g{g}: gptq's per-position median KL should be >= 20% lower than rtn's");
            mean[(g, Int4Method.Gptq)].Should().BeLessThan(mean[(g, Int4Method.Rtn)], $"g{g}: gptq kl_mean below rtn's");
        }
    }
}
