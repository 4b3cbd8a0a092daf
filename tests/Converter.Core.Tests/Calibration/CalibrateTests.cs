using Converter.Calibration;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Numerics.Int4;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Runtime.Calibration;
using Converter.Tensors;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace Converter.Tests.Calibration;

public class CalibrateTests(CalibrationFixture fx, ITestOutputHelper log) : IClassFixture<CalibrationFixture>
{
    private const int Hidden = 256, Inter = 128, K = 4, Experts = 16;
    private static readonly int[] MoeLayers = [1, 2, 3];

    [Fact]
    public void RoutingOfFirstSequenceEqualsOnnxRunnerAndCountsSumToTokensTimesK()
    {
        var data = CalibrationData.Load(fx.Calib);
        data.TopK.Keys.Order().Should().Equal(MoeLayers);
        data.Tokens.Should().Be(CalibrationFixture.Sequences * CalibrationFixture.Length);
        using var runner = new OnnxArtifactRunner(fx.Onnx, new OnnxRunnerOptions(IntraOpThreads: 2));
        var outs = runner.Run(fx.Tokens[..CalibrationFixture.Length], 1, CalibrationFixture.Length, hiddenStates: false, routing: true);
        for (int i = 0; i < MoeLayers.Length; i++)
            data.TopK[MoeLayers[i]][..(CalibrationFixture.Length * K)].Should().Equal(outs.RoutingTopK![i], $"layer {MoeLayers[i]}");

        using var f = SafetensorsFile.Open(Path.Combine(fx.Calib, CalibrationData.RoutingName));
        foreach (var l in MoeLayers)
        {
            using var c = f.Read($"counts.{l}");
            var counts = c.As<long>().ToArray();
            counts.Sum().Should().Be((long)data.Tokens * K);
            counts.Should().Equal(data.ExpertCounts(l));
        }
    }

    [Fact]
    public void HessiansAreSymmetricPsdWithTraceEqualToMeanSquaredInputs()
    {
        var data = CalibrationData.Load(fx.Calib);
        var xs = fx.MoeInputs(MoeLayers);
        using var ckpt = ModelCheckpoint.Open(fx.Model);
        var rng = new Random(5);
        foreach (var l in MoeLayers)
        {
            using var reader = HessianStats.LayerReader.TryOpen(fx.Calib, l, Experts)!;
            reader.Tokens.Should().Equal(data.ExpertCounts(l));
            var x = xs[l];
            foreach (var e in new[] { 0, 7, 15 })
            {
                var rows = Enumerable.Range(0, data.Tokens).Where(t => data.TopK[l].AsSpan(t * K, K).Contains(e)).ToArray();
                rows.Length.Should().Be((int)reader.Tokens[e]);
                var xe = new float[rows.Length * Hidden];
                for (int i = 0; i < rows.Length; i++) x.AsSpan(rows[i] * Hidden, Hidden).CopyTo(xe.AsSpan(i * Hidden));
                string p = $"model.layers.{l}.mlp.experts.{e}.";
                var fwd = new ExpertForward(ckpt.ReadFloat32(p + "gate_proj.weight"), ckpt.ReadFloat32(p + "up_proj.weight"), ckpt.ReadFloat32(p + "down_proj.weight"), Hidden, Inter);
                var act = new float[rows.Length * Inter];
                fwd.RunReference(xe, rows.Length, act, new float[rows.Length * Hidden]);

                foreach (var (name, dim, input) in new[] { (HessianStats.ExpertName(e, ExpertInput.GateUp), Hidden, xe), (HessianStats.ExpertName(e, ExpertInput.Down), Inter, act) })
                {
                    var h = reader.Read(name, dim)!;
                    double trace = 0, sumSq = 0;
                    for (int i = 0; i < dim; i++) trace += h[i * dim + i];
                    foreach (var v in input) sumSq += (double)v * v;
                    log.WriteLine($"layer {l} expert {e} {name}: {rows.Length} tokens, trace {trace:G6}, mean squared input {sumSq / rows.Length:G6}");
                    trace.Should().BeApproximately(sumSq / rows.Length, 1e-4 * trace, name);
                    for (int i = 0; i < dim; i++)
                        for (int j = 0; j < i; j++) h[i * dim + j].Should().Be(h[j * dim + i]);
                    for (int trial = 0; trial < 8; trial++)
                    {
                        var v = new double[dim];
                        for (int i = 0; i < dim; i++) v[i] = rng.NextDouble() * 2 - 1;
                        double q = 0;
                        for (int i = 0; i < dim; i++) for (int j = 0; j < dim; j++) q += v[i] * h[i * dim + j] * v[j];
                        q.Should().BeGreaterThanOrEqualTo(-1e-6 * trace);
                    }
                }
            }
        }
    }

    [Fact]
    public void GptqConsumesTheFolderAndAnotherModelIsRefused()
    {
        using var tmp = new TestData.TempDir();
        var gptq = new Int4Options(128, true, Int4Method.Gptq, Calibration: fx.Calib);
        using (var src = ModelCheckpoint.Open(fx.Model))
            QuantizePipeline.Run(src, new QuantizeOptions(QuantizeScheme.Int4, tmp["ok"], long.MaxValue, false) { Int4 = gptq }, NullLogger.Instance);
        File.Exists(Path.Combine(tmp["ok"], "config.json")).Should().BeTrue();

        TestCheckpoints.Copy(fx.Model, tmp["other"], editConfig: c => c["routed_scaling_factor"] = 2.0);
        using var other = ModelCheckpoint.Open(tmp["other"]);
        var act = () => QuantizePipeline.Run(other, new QuantizeOptions(QuantizeScheme.Int4, tmp["out"], long.MaxValue, false) { Int4 = gptq }, NullLogger.Instance);
        act.Should().Throw<InvalidDataException>().WithMessage("*calibration was recorded*");
    }

    [Fact]
    public void SummaryAndCommReportAreWritten()
    {
        var summary = File.ReadAllText(Path.Combine(fx.Calib, CalibratePipeline.SummaryName));
        summary.Should().Contain("2048 (16 sequences x 128)").And.Contain("Routing load per layer");
        var md = File.ReadAllText(Path.Combine(fx.Calib, CommReportWriter.MarkdownName));
        md.Should().Contain("LogFMT-10").And.Contain("E4M3");
        File.ReadAllText(Path.Combine(fx.Calib, CommReportWriter.SvgName)).Should().StartWith("<svg");
        // The dispatch rows are every token once, the combine rows every (token, expert) pair.
        foreach (var s in fx.Result.Comm)
        {
            s.Rows[0].Should().Be(CalibrationFixture.Sequences * CalibrationFixture.Length);
            s.Rows[1].Should().Be(CalibrationFixture.Sequences * CalibrationFixture.Length * K);
            // more bits, less error (LogFMT-n gains ~6 dB per bit)
            for (int f = 4; f < CommTrafficStats.Formats.Count; f++)
                s.Metrics(CommSide.Combine, f).SnrDb.Should().BeGreaterThan(s.Metrics(CommSide.Combine, f - 1).SnrDb);
        }
    }

    [Fact]
    public void NonFiniteActivationsNameTheTensor()
    {
        using var tmp = new TestData.TempDir();
        TestCheckpoints.Copy(fx.Model, tmp["nan"], e =>
        {
            if (e.Name != "model.layers.2.post_attention_layernorm.weight") return e;
            var b = (byte[])e.Bytes.Clone();
            b[0] = 0xC0; b[1] = 0x7F; // bf16 NaN in channel 0
            return e with { Bytes = b };
        });
        var act = () => CalibratePipeline.Run(tmp["nan"], fx.TokensPath, tmp["calib"], new CalibrateOptions(Batch: 16, Threads: 2, Hessians: false, CommReport: false));
        act.Should().Throw<InvalidDataException>().WithMessage("*moe.layer.2.input*non-finite*");
        Directory.GetFileSystemEntries(tmp.Path).Select(Path.GetFileName).Should().Equal(["nan"], "no output, staging or layer-slice folder is left");

        var stats = new CommTrafficStats(1, 4);
        var bad = () => stats.Add(CommSide.Combine, new[] { 1f, float.PositiveInfinity, 0f, 2f }, 1, "layer 1 expert 3 output");
        bad.Should().Throw<InvalidDataException>().WithMessage("*layer 1 expert 3 output*");
    }

    [Fact]
    public void OnnxFromAnotherConfigIsRefusedAndExistingOutputKept()
    {
        using var tmp = new TestData.TempDir();
        TestCheckpoints.Copy(fx.Model, tmp["other"], editConfig: c => c["routed_scaling_factor"] = 2.0);
        var act = () => CalibratePipeline.Run(tmp["other"], fx.TokensPath, tmp["c"], new CalibrateOptions(OnnxDir: fx.Onnx));
        act.Should().Throw<InvalidDataException>().WithMessage("*another config*");
        var again = () => CalibratePipeline.Run(fx.Model, fx.TokensPath, fx.Calib, new CalibrateOptions(OnnxDir: fx.Onnx));
        again.Should().Throw<IOException>().WithMessage("*exists*");
    }

    /// <summary>
    /// Layer by layer (the default: one session per MoE layer slice, hidden states handed over through a file) against
    /// the fixture's one session over the whole exported model: the same values flow through the same kernels, so every
    /// file is the same byte for byte; also when a small budget splits each layer into expert ranges, whose later ranges
    /// read the layer's stored MoE inputs instead of running the session again.
    /// </summary>
    [Theory]
    [InlineData(4L << 30)]
    [InlineData(6_500_000L)]
    public void LayerByLayerSessionsWriteWhatTheWholeModelSessionWrites(long budget)
    {
        var plan = CalibrationPassPlan.Create(MoeLayers, Experts, CalibrationPassPlan.ExpertBytesFor(Hidden, Inter, true, true),
            CalibrationPassPlan.LayerBytesFor(Hidden, Inter, Experts, true), budget);
        int ranges = plan.Passes.Sum(p => p.Count);
        if (budget > 1L << 30) ranges.Should().Be(MoeLayers.Length, "the default budget holds a whole tiny layer");
        else ranges.Should().BeGreaterThan(2 * MoeLayers.Length, "the small budget splits every layer");
        using var tmp = new TestData.TempDir();
        var r = CalibratePipeline.Run(fx.Model, fx.TokensPath, tmp["c"], new CalibrateOptions(Batch: 4, Threads: 2, MemoryBudgetBytes: budget));
        r.Passes.Should().Be(ranges, "one run of the accumulators per (layer, expert range)");
        Directory.GetFileSystemEntries(tmp.Path).Select(Path.GetFileName).Should().Equal(["c"], "the slices and stored activations are removed");
        var files = Directory.GetFiles(fx.Calib, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(fx.Calib, f)).Order().ToList();
        Directory.GetFiles(tmp["c"], "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(tmp["c"], f)).Order().Should().Equal(files);
        files.Should().Contain(Path.Combine(HessianStats.Folder, HessianStats.FileName(3)));
        foreach (var f in files.Where(f => f != CalibratePipeline.SummaryName && f != Converter.Staging.ArtifactManifest.FileName)) // the manifest hashes the summary
            File.ReadAllBytes(Path.Combine(tmp["c"], f)).SequenceEqual(File.ReadAllBytes(Path.Combine(fx.Calib, f))).Should().BeTrue($"{f} should be identical");
        File.ReadAllLines(Path.Combine(tmp["c"], CalibratePipeline.SummaryName)).Single(l => l.StartsWith("- passes:"))
            .Should().Contain("layer by layer").And.Contain($"{ranges} expert range(s)");
    }

    [Fact]
    public void ASmallMemoryBudgetSplitsLayersIntoExpertRangesWithByteIdenticalFiles()
    {
        // tiny-dsv3: 1 MiB per expert (Hessians 256²+128² float64, weights 3 x 256 x 128 float32) and ~0.55 MB per layer,
        // so 6.5 MB holds five experts: each layer is split into ranges and some passes end one layer and start the next.
        const long budget = 6_500_000;
        var plan = CalibrationPassPlan.Create(MoeLayers, Experts, CalibrationPassPlan.ExpertBytesFor(Hidden, Inter, true, true),
            CalibrationPassPlan.LayerBytesFor(Hidden, Inter, Experts, true), budget);
        plan.Passes.Should().Contain(p => p.Select(r => r.Layer).Distinct().Count() > 1, "a pass should mix two layers");
        foreach (var l in MoeLayers) plan.Passes.Count(p => p.Any(r => r.Layer == l)).Should().BeGreaterThanOrEqualTo(3);

        using var tmp = new TestData.TempDir();
        var r = CalibratePipeline.Run(fx.Model, fx.TokensPath, tmp["c"], new CalibrateOptions(Batch: 4, Threads: 2, OnnxDir: fx.Onnx, MemoryBudgetBytes: budget));
        r.Passes.Should().Be(plan.Passes.Count);
        log.WriteLine(plan.Describe());

        // every file but summary.md byte for byte the same as the default (one pass) run's
        var files = Directory.GetFiles(fx.Calib, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(fx.Calib, f)).Order().ToList();
        Directory.GetFiles(tmp["c"], "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(tmp["c"], f)).Order().Should().Equal(files);
        files.Should().Contain(Path.Combine(HessianStats.Folder, HessianStats.FileName(2))).And.Contain(CalibrationData.RoutingName);
        foreach (var f in files.Where(f => f != CalibratePipeline.SummaryName && f != Converter.Staging.ArtifactManifest.FileName)) // the manifest hashes the summary
            File.ReadAllBytes(Path.Combine(tmp["c"], f)).SequenceEqual(File.ReadAllBytes(Path.Combine(fx.Calib, f))).Should().BeTrue($"{f} should be identical");
        // the traffic metrics themselves, not only their printed digits
        for (int i = 0; i < MoeLayers.Length; i++)
            foreach (var side in new[] { CommSide.Dispatch, CommSide.Combine })
                for (int f = 0; f < CommTrafficStats.Formats.Count; f++)
                    r.Comm[i].Metrics(side, f).Should().Be(fx.Result.Comm[i].Metrics(side, f), $"layer {MoeLayers[i]} {side} {CommTrafficStats.Formats[f]}");

        // summary.md differs only in the line that states the passes
        var split = File.ReadAllLines(Path.Combine(tmp["c"], CalibratePipeline.SummaryName));
        var whole = File.ReadAllLines(Path.Combine(fx.Calib, CalibratePipeline.SummaryName));
        split.Where(l => !l.StartsWith("- passes:")).Should().Equal(whole.Where(l => !l.StartsWith("- passes:")));
        split.Single(l => l.StartsWith("- passes:")).Should().StartWith($"- passes: {r.Passes} pass(es)").And.Contain("layer 1 experts 0-4");
        whole.Single(l => l.StartsWith("- passes:")).Should().StartWith("- passes: 1 pass(es)").And.Contain("layer 3 experts 0-15");
    }

    [Fact]
    public void OnnxLogFmtAgreesWithTheCodecOnDispatchAndCombineTraffic()
    {
        var x = fx.MoeInputs([2])[2];
        int rows = 1024;
        var dispatch = x[..(rows * Hidden)];
        using var ckpt = ModelCheckpoint.Open(fx.Model);
        string p = "model.layers.2.mlp.experts.5.";
        var fwd = new ExpertForward(ckpt.ReadFloat32(p + "gate_proj.weight"), ckpt.ReadFloat32(p + "up_proj.weight"), ckpt.ReadFloat32(p + "down_proj.weight"), Hidden, Inter);
        var combine = new float[rows * Hidden];
        fwd.Run(dispatch, rows, new float[rows * Inter], combine);
        foreach (var (side, data) in new[] { ("dispatch", dispatch), ("combine", combine) })
            foreach (var bits in new[] { 6, 8, 10, 12 })
            {
                var f = Converter.Numerics.ActivationFormats.ActivationFormat.LogFmt(bits);
                var expected = new float[data.Length];
                Converter.Numerics.ActivationFormats.ActivationQuantizer.QuantizeDequantize(f, data, expected, Hidden, side);
                var actual = SimulateCommTests.RunQdq(data, rows, Hidden, f);
                int same = 0;
                for (int i = 0; i < data.Length; i++) if (BitConverter.SingleToInt32Bits(actual[i]) == BitConverter.SingleToInt32Bits(expected[i])) same++;
                log.WriteLine($"{side} {f}: {same}/{data.Length} bit-identical");
                (same / (double)data.Length).Should().BeGreaterThanOrEqualTo(0.9999);
            }
    }
}
