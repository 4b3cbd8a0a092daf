using System.CommandLine;
using System.Text.Json;
using Converter.Cli.Commands;
using Converter.Runtime;
using Converter.Verification;

namespace Converter.EndToEnd.Tests.Cli;

/// <summary>The verify command's logic (options, presets, exit codes) with a fake runner serving golden logits.</summary>
public class VerifyCommandTests : IDisposable
{
    private static readonly string Root = FindRoot();
    private static readonly string Dsv3Eval = Path.Combine(Root, "golden", "tiny-dsv3", "eval.safetensors");
    private static readonly Lazy<GoldenSet> Dsv3 = new(() => GoldenSet.Load(Dsv3Eval));

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "converter-verify-" + Guid.NewGuid().ToString("N"));
    private readonly string _onnx, _gguf;

    public VerifyCommandTests()
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllBytes(_onnx = Path.Combine(_dir, "model.onnx"), []);
        // a valid header-only GGUF (file type F32): verify reads it before handing it to the (fake) runner
        using (var w = new Converter.Formats.Gguf.GgufWriter(_gguf = Path.Combine(_dir, "model.gguf")))
        {
            w.Add("general.file_type", Converter.Formats.Gguf.GgufValue.UInt32(0));
            w.WriteHeader();
            w.Commit();
        }
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Converter.sln"))) return d.FullName;
        throw new DirectoryNotFoundException("Converter.sln not found above " + AppContext.BaseDirectory);
    }

    /// <summary>
    /// Replays the golden's own outputs, optionally changed, and records how it was opened and run. verify runs ONNX
    /// sequence by sequence (for progress), so calls come in order and each gets the next sequences' outputs.
    /// </summary>
    private sealed class FakeRunner(GoldenSet g, Action<float[]>? perturb, bool routing, bool hidden, int vocabDelta = 0) : IArtifactRunner
    {
        public RunnerOptions? Options;
        public (bool Hidden, bool Routing)? Asked;
        public string Description => "fake runner";
        private float[]? _all;
        private int _next;

        public ArtifactOutputs Run(int[] tokens, int batch, int seq, bool hiddenStates, bool wantRouting)
        {
            if (_next >= g.Batch) _next = 0; // a second verify with the same runner
            int first = _next;
            seq.Should().Be(g.Seq);
            tokens.Should().Equal(g.Tokens.AsSpan(first * g.Seq, batch * g.Seq).ToArray());
            _next += batch;
            Asked = ((Asked?.Hidden ?? false) || hiddenStates, (Asked?.Routing ?? false) || wantRouting);
            int v = g.Vocab + vocabDelta;
            if (first == 0)
            {
                _all = vocabDelta == 0 ? (float[])g.Logits!.Clone() : new float[g.Batch * g.Seq * v];
                perturb?.Invoke(_all);
            }
            var logits = _all.AsSpan(first * g.Seq * v, batch * g.Seq * v).ToArray();
            int[][]? r = null;
            if (routing && wantRouting)
            {
                int per = g.Positions * g.TopK, part = batch * g.Seq * g.TopK;
                r = Enumerable.Range(0, g.MoeLayers).Select(m => g.RouteTopK!.AsSpan(m * per + first * g.Seq * g.TopK, part).ToArray()).ToArray();
            }
            float[][]? h = null;
            if (hidden && hiddenStates)
            {
                int per = g.Seq * g.HiddenSize;
                h = Enumerable.Range(0, g.HiddenStateCount).Select(l => g.HiddenStates!.AsSpan(l * per, per).ToArray()).ToArray();
            }
            return new ArtifactOutputs(logits, h, r);
        }

        public void Dispose() { }
    }

    private (int Code, string Out, string Err, FakeRunner Runner) Run(Action<float[]>? perturb, params string[] args) =>
        RunWith(new FakeRunner(Dsv3.Value, perturb, routing: true, hidden: true), args);

    private static (int Code, string Out, string Err, FakeRunner Runner) RunWith(FakeRunner runner, params string[] args)
    {
        var factory = new ArtifactRunnerFactory();
        factory.Register(ArtifactKind.Onnx, (p, o) => { runner.Options = o; return runner; });
        factory.Register(ArtifactKind.Gguf, (p, o) => { runner.Options = o; return runner; });
        var cmd = VerifyCommand.Create(factory);
        var output = new StringWriter();
        var error = new StringWriter();
        int code = cmd.Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString(), runner);
    }

    // A change of 0.01 in one logit at a stable position: over fp32's 1e-3 stable max-diff limit, harmless otherwise.
    private static void NudgeOneLogit(float[] a) => a[10 * 256 + 42] += 0.01f;

    [Fact]
    public void IdenticalOutputsPassWithExitZeroAndOneJsonObject()
    {
        var (code, output, err, runner) = Run(null, _onnx, "--golden", Dsv3Eval, "--json", "--layers", "--threads", "2");
        err.Should().NotContain("error"); // progress lines only; stdout holds the one JSON object
        code.Should().Be(VerifyCommand.ExitPassed);
        using var doc = JsonDocument.Parse(output);
        var root = doc.RootElement;
        root.GetProperty("passed").GetBoolean().Should().BeTrue();
        root.GetProperty("top1_agreement").GetDouble().Should().Be(1);
        root.GetProperty("routing_agreement").GetDouble().Should().Be(1);
        root.GetProperty("preset").GetString().Should().Be("fp32");
        root.GetProperty("layers").GetProperty("per_layer").GetArrayLength().Should().Be(5);
        runner.Options.Should().Be(new RunnerOptions(2, "cpu"));
        runner.Asked.Should().Be((true, true));
    }

    [Fact]
    public void ToleranceFailureExitsOneAndNamesTheMetric()
    {
        var (code, output, _, runner) = Run(NudgeOneLogit, _onnx, "--golden", Dsv3Eval);
        code.Should().Be(VerifyCommand.ExitFailed);
        output.Should().Contain("FAIL: max_abs_logit_diff_stable = 0.01").And.Contain("FAILED");
        runner.Asked.Should().Be((false, true)); // no --layers: no hidden states asked for
    }

    [Fact]
    public void OverrideFlagLoosensThePresetLimit()
    {
        var (code, output, _, _) = Run(NudgeOneLogit, _onnx, "--golden", Dsv3Eval, "--max-abs-logit-diff-stable", "0.1", "--json");
        code.Should().Be(VerifyCommand.ExitPassed);
        using var doc = JsonDocument.Parse(output);
        doc.RootElement.GetProperty("preset").GetString().Should().Be("fp32+overrides");
        doc.RootElement.GetProperty("checks").EnumerateArray()
            .Single(c => c.GetProperty("metric").GetString() == "max_abs_logit_diff_stable").GetProperty("limit").GetDouble().Should().Be(0.1);

        var dropped = Run(NudgeOneLogit, _onnx, "--golden", Dsv3Eval, "--max-abs-logit-diff-stable", "none");
        dropped.Code.Should().Be(VerifyCommand.ExitPassed);
        var tighter = Run(null, _onnx, "--golden", Dsv3Eval, "--format-preset", "report", "--kl-max", "0");
        tighter.Code.Should().Be(VerifyCommand.ExitPassed); // identical outputs: KL is exactly 0
    }

    [Fact]
    public void GgufPathUsesTheGgufRunnerAndPreset()
    {
        var (code, output, _, runner) = Run(NudgeOneLogit, _gguf, "--golden", Dsv3Eval, "--json", "--execution-provider", "cuda");
        code.Should().Be(VerifyCommand.ExitFailed); // gguf-f32: max_abs_logit_diff <= 1e-3 over all positions
        using var doc = JsonDocument.Parse(output);
        doc.RootElement.GetProperty("preset").GetString().Should().Be("gguf-f32");
        doc.RootElement.GetProperty("failures").EnumerateArray().Select(f => f.GetString()).Should().Equal("max_abs_logit_diff");
        runner.Options!.ExecutionProvider.Should().Be("cuda");
    }

    [Theory]
    [InlineData("--format-preset", "fp64")]
    [InlineData("--kl-mean", "abc")]
    [InlineData("--kl-mean", "-1")]
    [InlineData("--threads", "many")]
    [InlineData("--execution-provider", "tpu")]
    [InlineData("--bogus-flag", "1")]
    public void BadOptionsExitTwo(string flag, string value)
    {
        var (code, output, err, _) = Run(null, _onnx, "--golden", Dsv3Eval, flag, value);
        code.Should().Be(VerifyCommand.ExitBadInput);
        output.Should().BeEmpty();
        err.Should().Contain("error:");
    }

    [Fact]
    public void MissingGoldenOptionExitsTwo()
    {
        var (code, _, err, _) = Run(null, _onnx);
        code.Should().Be(VerifyCommand.ExitBadInput);
        err.Should().Contain("--golden");
    }

    [Fact]
    public void BadPathsExitTwo()
    {
        Run(null, Path.Combine(_dir, "absent.onnx"), "--golden", Dsv3Eval).Code.Should().Be(VerifyCommand.ExitBadInput);
        var txt = Path.Combine(_dir, "model.txt");
        File.WriteAllText(txt, "");
        var wrongKind = Run(null, txt, "--golden", Dsv3Eval);
        wrongKind.Code.Should().Be(VerifyCommand.ExitBadInput);
        wrongKind.Err.Should().Contain("cannot tell the artifact kind");
        var noGolden = Run(null, _onnx, "--golden", Path.Combine(_dir, "absent.safetensors"));
        noGolden.Code.Should().Be(VerifyCommand.ExitBadInput);
        noGolden.Err.Should().Contain("golden file not found");
        var notSafetensors = Run(null, _onnx, "--golden", txt);
        notSafetensors.Code.Should().Be(VerifyCommand.ExitBadInput);
    }

    [Fact]
    public void RunnerWithTheWrongVocabularyExitsTwo()
    {
        var runner = new FakeRunner(Dsv3.Value, null, routing: false, hidden: false, vocabDelta: 1);
        var (code, _, err, _) = RunWith(runner, _onnx, "--golden", Dsv3Eval);
        code.Should().Be(VerifyCommand.ExitBadInput);
        err.Should().Contain("vocabulary 257").And.Contain("256");
    }

    [Fact]
    public void UnregisteredKindExitsTwo()
    {
        var cmd = VerifyCommand.Create(new ArtifactRunnerFactory());
        var error = new StringWriter();
        int code = cmd.Parse([_gguf, "--golden", Dsv3Eval]).Invoke(new InvocationConfiguration { Output = new StringWriter(), Error = error });
        code.Should().Be(VerifyCommand.ExitBadInput);
        error.ToString().Should().Contain("no runner for Gguf artifacts");
    }

    [Fact]
    public void ModelFolderMismatchExitsTwo()
    {
        // tiny-qwen3moe's golden checked against tiny-dsv3's config: hidden size 192 vs 256.
        var qwenEval = Path.Combine(Root, "golden", "tiny-qwen3moe", "eval.safetensors");
        var (code, _, err, _) = Run(null, _onnx, "--golden", qwenEval, "--model", Path.Combine(Root, "golden", "models", "tiny-dsv3"));
        code.Should().Be(VerifyCommand.ExitBadInput);
        err.Should().Contain("qwen3moe").And.Contain("hidden");
    }

    [Fact]
    public void UnderARootCommandParseErrorsStillExitTwoAndHelpStillWorks()
    {
        var runner = new FakeRunner(Dsv3.Value, null, routing: true, hidden: false);
        var factory = new ArtifactRunnerFactory().Register(ArtifactKind.Onnx, (p, o) => runner);
        var root = new RootCommand("converter");
        root.Subcommands.Add(VerifyCommand.Create(factory));
        int Invoke(params string[] args) =>
            root.Parse(args).Invoke(new InvocationConfiguration { Output = new StringWriter(), Error = new StringWriter() });

        Invoke("verify", _onnx, "--golden", Dsv3Eval).Should().Be(VerifyCommand.ExitPassed);
        Invoke("verify", _onnx, "--golden", Dsv3Eval, "--bogus").Should().Be(VerifyCommand.ExitBadInput);
        Invoke("verify", _onnx).Should().Be(VerifyCommand.ExitBadInput);
        Invoke("verify", "--help").Should().Be(0);
    }

    private void WriteOnnxMetadata(params (string Key, string Value)[] meta)
    {
        var proto = new Converter.Formats.Onnx.Proto.ModelProto();
        foreach (var (k, v) in meta) proto.MetadataProps.Add(new Converter.Formats.Onnx.Proto.StringStringEntryProto { Key = k, Value = v });
        using var fs = File.Create(_onnx);
        Google.Protobuf.MessageExtensions.WriteTo(proto, fs);
    }

    [Theory]
    [InlineData("fp32", null, "fp32")]
    [InlineData("fp8", null, "fp8")]
    [InlineData("int4", "group 32, symmetric, 0 dense projection(s) MatMulNBits", "int4")]
    [InlineData("int4", "group 128, symmetric, 12 dense projection(s) MatMulNBits", "int4-all-linear")]
    public void PresetFollowsTheOnnxMetadata(string weights, string? int4, string preset)
    {
        var meta = new List<(string, string)> { ("converter.weights", weights) };
        if (int4 != null) meta.Add(("converter.int4", int4));
        WriteOnnxMetadata([.. meta]);
        var (code, output, _, _) = Run(null, _onnx, "--golden", Dsv3Eval, "--json");
        code.Should().Be(VerifyCommand.ExitPassed);
        using var doc = JsonDocument.Parse(output);
        doc.RootElement.GetProperty("preset").GetString().Should().Be(preset);
        doc.RootElement.GetProperty("preset_reason").GetString().Should().Contain("converter.weights = " + weights);
        doc.RootElement.GetProperty("checks").GetArrayLength().Should().BeGreaterThan(0, "every preset has limits");
    }

    [Fact]
    public void Fp8AgainstAGoldenOfTheSameFp8WeightsIsExact()
    {
        WriteOnnxMetadata(("converter.weights", "fp8"));
        var g = Dsv3.Value;
        string path = Path.Combine(_dir, "fp8-golden.safetensors");
        using (var w = new GoldenWriter(path, g.Tokens, g.Batch, g.Seq, g.Vocab, new GoldenLogitsForm(true), new GoldenIdentity { SourceWeights = "fp8-block" }, 0, 0, 0, 0, true))
        {
            w.AddLogits(0, g.Batch, g.Logits);
            w.Commit();
        }
        var (_, output, _, _) = RunWith(new FakeRunner(g, null, routing: false, hidden: false), _onnx, "--golden", path, "--json");
        using var doc = JsonDocument.Parse(output);
        doc.RootElement.GetProperty("preset").GetString().Should().Be("fp8-exact");
    }

    [Fact]
    public void ReportPresetIsReportedNeverPassed()
    {
        var (code, output, _, _) = Run(NudgeOneLogit, _onnx, "--golden", Dsv3Eval, "--format-preset", "report");
        code.Should().Be(VerifyCommand.ExitPassed);
        output.Should().Contain("REPORTED").And.NotContain("PASSED");
        var json = Run(NudgeOneLogit, _onnx, "--golden", Dsv3Eval, "--format-preset", "report", "--json");
        using var doc = JsonDocument.Parse(json.Out);
        doc.RootElement.GetProperty("status").GetString().Should().Be("reported");
        doc.RootElement.GetProperty("passed").ValueKind.Should().Be(JsonValueKind.Null);
    }

    [Fact]
    public void GoldenOfAnotherConfigIsRefusedWithExitTwo()
    {
        var g = Dsv3.Value;
        string path = Path.Combine(_dir, "other-config.safetensors");
        using (var w = new GoldenWriter(path, g.Tokens, g.Batch, g.Seq, g.Vocab, new GoldenLogitsForm(true),
                   new GoldenIdentity { ModelType = "deepseek_v3", ConfigFingerprint = "0123456789abcdef", Model = "another-dsv3" }, 0, 0, 0, 0, true))
        {
            w.AddLogits(0, g.Batch, g.Logits);
            w.Commit();
        }
        var (code, output, err, _) = Run(null, _onnx, "--golden", path, "--model", Path.Combine(Root, "golden", "models", "tiny-dsv3"));
        code.Should().Be(VerifyCommand.ExitBadInput);
        output.Should().BeEmpty();
        err.Should().Contain("config fingerprint 0123456789abcdef").And.Contain("another-dsv3");
    }

    [Fact]
    public void CompactGoldenOfFullVocabularyGivesTheSameReport()
    {
        // k = vocabulary: the compact form holds every logit, so every metric equals the full form's
        var g = Dsv3.Value;
        string path = Path.Combine(_dir, "compact.safetensors");
        using (var w = new GoldenWriter(path, g.Tokens, g.Batch, g.Seq, g.Vocab, new GoldenLogitsForm(false, 256, 0), GoldenIdentity.Unknown, 0, 0, 0, 0, true))
        {
            w.AddLogits(0, g.Batch, g.Logits);
            w.Commit();
        }
        var full = Run(NudgeOneLogit, _onnx, "--golden", Dsv3Eval, "--json", "--format-preset", "report");
        var compact = Run(NudgeOneLogit, _onnx, "--golden", path, "--json", "--format-preset", "report");
        compact.Code.Should().Be(VerifyCommand.ExitPassed, compact.Err);
        using var f = JsonDocument.Parse(full.Out);
        using var c = JsonDocument.Parse(compact.Out);
        foreach (var key in new[] { "kl_mean", "kl_max", "max_abs_logit_diff", "top1_agreement", "nll_mean" })
            c.RootElement.GetProperty(key).GetDouble().Should().BeApproximately(f.RootElement.GetProperty(key).GetDouble(), 1e-6, key);
        c.RootElement.GetProperty("compact_golden").GetProperty("top_k").GetInt32().Should().Be(256);
    }
}
