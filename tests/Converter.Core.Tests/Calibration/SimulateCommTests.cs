using Converter.Formats.Onnx;
using Converter.Decoder.Onnx;
using Converter.Numerics.ActivationFormats;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Tests.Onnx;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Xunit.Abstractions;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;

namespace Converter.Tests.Calibration;

/// <summary>The ONNX quantize-dequantize of expert traffic against the C# codecs, and its end-to-end effect on tiny-dsv3.</summary>
public class SimulateCommTests(ITestOutputHelper log)
{
    /// <summary>Real activations: golden hidden states of sequence 0 (every layer), [rows, 256].</summary>
    private static float[] RealActivations(out int rows)
    {
        var g = new GoldenEval(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        rows = (int)(g.HiddenShape![0] * g.HiddenShape[1]);
        return g.HiddenSeq0!;
    }

    internal static float[] RunQdq(float[] x, int rows, int width, ActivationFormat format)
    {
        var model = new OnnxModelBuilder();
        var g = new OnnxGraphBuilder("qdq");
        string input = g.Input("x", DataType.Float, "rows", width);
        string y = OnnxCommQdq.Emit(g, input, format, width);
        g.OpNamed("Identity", [y], ["y"]);
        g.Output("y", DataType.Float, "rows", width);
        using var s = new InferenceSession(model.Build(g).ToByteArray());
        using var r = s.Run([NamedOnnxValue.CreateFromTensor("x", new DenseTensor<float>(x, [rows, width]))]);
        return r.First().AsTensor<float>().ToArray();
    }

    [Theory]
    [InlineData(256)]
    [InlineData(200)] // a partial last tile: the ONNX graph pads with zeros
    public void OnnxQdqAgreesWithTheCodecsOnRealActivations(int width)
    {
        var all = RealActivations(out int rows0);
        int rows = all.Length / width;
        var x = all[..(rows * width)];
        foreach (var f in new[] { ActivationFormat.Bf16, ActivationFormat.E4M3, ActivationFormat.E5M2,
                     ActivationFormat.LogFmt(4), ActivationFormat.LogFmt(8), ActivationFormat.LogFmt(10), ActivationFormat.LogFmt(16) })
        {
            var expected = new float[x.Length];
            ActivationQuantizer.QuantizeDequantize(f, x, expected, width, "golden hidden states");
            var actual = RunQdq(x, rows, width, f);
            int same = 0;
            double maxRel = 0;
            for (int i = 0; i < x.Length; i++)
            {
                if (BitConverter.SingleToInt32Bits(actual[i]) == BitConverter.SingleToInt32Bits(expected[i])) same++;
                else maxRel = Math.Max(maxRel, Math.Abs(actual[i] - expected[i]) / Math.Max(Math.Abs(expected[i]), 1e-30));
            }
            double agree = same / (double)x.Length;
            log.WriteLine($"{f} width {width}: {same}/{x.Length} bit-identical ({agree:P4}), max relative difference elsewhere {maxRel:E2}");
            if (f.Kind == ActivationFormatKind.LogFmt) agree.Should().BeGreaterThanOrEqualTo(0.9999, f.ToString());
            else agree.Should().Be(1.0, f.ToString());
        }
    }

    private static double KlMean(float[] p, float[] q, int vocab)
    {
        double sum = 0;
        int n = p.Length / vocab;
        for (int t = 0; t < n; t++)
        {
            var a = p.AsSpan(t * vocab, vocab);
            var b = q.AsSpan(t * vocab, vocab);
            double ma = double.MinValue, mb = double.MinValue;
            foreach (var v in a) ma = Math.Max(ma, v);
            foreach (var v in b) mb = Math.Max(mb, v);
            double za = 0, zb = 0;
            foreach (var v in a) za += Math.Exp(v - ma);
            foreach (var v in b) zb += Math.Exp(v - mb);
            double kl = 0;
            for (int i = 0; i < vocab; i++)
            {
                double lp = a[i] - ma - Math.Log(za), lq = b[i] - mb - Math.Log(zb);
                kl += Math.Exp(lp) * (lp - lq);
            }
            sum += kl;
        }
        return sum / n;
    }

    [Fact]
    public void SimulatedTrafficChangesLogitsAsTheFormatPredicts()
    {
        using var tmp = new TestData.TempDir();
        var golden = new GoldenEval(TestData.Golden("tiny-dsv3", "eval.safetensors"));
        float[] Logits(string name, CommSimulation? comm)
        {
            var r = OnnxExportPipeline.Run(TestData.Model("tiny-dsv3"), tmp[name], new OnnxExportOptions(Comm: comm));
            using var runner = new OnnxArtifactRunner(r.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: 2));
            return runner.Run(golden.Tokens, golden.Batch, golden.Seq, false, false).Logits;
        }
        var plain = Logits("plain", null);
        double Kl(string name, ActivationFormat? d, ActivationFormat? c)
        {
            double kl = KlMean(plain, Logits(name, new CommSimulation(d, c)), golden.Vocab);
            log.WriteLine($"{name}: kl_mean vs plain export {kl:E3}");
            return kl;
        }
        double bf16 = Kl("bf16-both", ActivationFormat.Bf16, ActivationFormat.Bf16);
        bf16.Should().BeLessThan(2e-4);
        double c8 = Kl("combine-logfmt8", null, ActivationFormat.LogFmt(8)), c10 = Kl("combine-logfmt10", null, ActivationFormat.LogFmt(10));
        double d8 = Kl("dispatch-logfmt8", ActivationFormat.LogFmt(8), null), d10 = Kl("dispatch-logfmt10", ActivationFormat.LogFmt(10), null);
        c10.Should().BeLessThan(c8);
        d10.Should().BeLessThan(d8);
    }

    [Fact]
    public void FormatNamesParse()
    {
        ActivationFormatParser.Parse("logfmt10").Should().Be(ActivationFormat.LogFmt(10));
        ActivationFormatParser.Parse("E4M3").Should().Be(ActivationFormat.E4M3);
        ActivationFormatParser.Name(ActivationFormat.LogFmt(8)).Should().Be("logfmt8");
        var bad = () => ActivationFormatParser.Parse("logfmt3");
        bad.Should().Throw<ArgumentException>().WithMessage("*logfmt3*");
    }
}
