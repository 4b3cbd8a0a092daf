using System.CommandLine;
using System.CommandLine.Invocation;
using System.Globalization;
using Converter.Models;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Verification;
using Converter.Cli;

namespace Converter.Cli.Commands;

/// <summary>
/// <c>converter verify &lt;artifact&gt; --golden eval.safetensors</c>: runs the artifact on the golden tokens and
/// compares. Exit codes: 0 when every set tolerance holds (or the preset sets none: REPORTED), 1 when one does not, 2 on
/// bad input (missing or malformed files, unknown options or values, no runner for the artifact kind, an artifact that
/// fails to run, a golden of another model), 3 on an internal error.
/// </summary>
public static class VerifyCommand
{
    public const int ExitPassed = 0, ExitFailed = 1, ExitBadInput = 2;

    /// <summary>Tolerance flags: option name, and how a value sets it on the tolerances.</summary>
    private static readonly (string Name, string Help, Func<VerificationTolerances, double?, VerificationTolerances> Set)[] LimitFlags =
    [
        ("--max-abs-logit-diff", "upper bound on max |logit diff| over all positions", (t, v) => t with { MaxAbsLogitDiff = v }),
        ("--max-abs-logit-diff-stable", "upper bound on max |logit diff| over routing-stable positions", (t, v) => t with { MaxAbsLogitDiffStable = v }),
        ("--mean-abs-logit-diff", "upper bound on mean |logit diff|", (t, v) => t with { MeanAbsLogitDiff = v }),
        ("--top1-agreement", "lower bound on top-1 agreement", (t, v) => t with { Top1Agreement = v }),
        ("--top1-agreement-stable", "lower bound on top-1 agreement over stable positions", (t, v) => t with { Top1AgreementStable = v }),
        ("--kl-mean", "upper bound on mean KL(golden || artifact)", (t, v) => t with { KlMean = v }),
        ("--kl-p99", "upper bound on the 99th percentile of KL", (t, v) => t with { KlP99 = v }),
        ("--kl-max", "upper bound on the largest KL", (t, v) => t with { KlMax = v }),
        ("--ppl-ratio", "upper bound on exp(nll_mean - golden_nll_mean)", (t, v) => t with { PplRatio = v }),
        ("--routing-agreement", "lower bound on routing agreement over stable positions", (t, v) => t with { RoutingAgreement = v }),
        ("--selection-agreement", "lower bound on sparse-attention selection agreement (the lightning indexer's picks) over stable positions",
            (t, v) => t with { SelectionAgreement = v }),
    ];

    public static Command Create(ArtifactRunnerFactory? factory = null)
    {
        factory ??= ArtifactRunnerFactory.Default;
        var artifact = new Argument<string>("artifact")
        {
            Description = "ONNX folder or .onnx file, .gguf file, or a sharded output folder (shard --onnx: every rank runs, " +
                "their partial MoE outputs are summed layer by layer)",
        };
        var golden = new Option<string?>("--golden") { Description = "golden eval.safetensors (from `converter golden` or transformers); or --reference" };
        var reference = new Option<string?>("--reference")
        {
            Description = "compute the reference on the fly instead of --golden: a source model folder (run as `converter golden` does) or " +
                          "another artifact (run as is); with --tokens or --text",
        };
        var inputs = GoldenCommand.InputOptions.Create();
        var json = new Option<bool>("--json") { Description = "print exactly one JSON object instead of the table" };
        var layers = new Option<bool>("--layers") { Description = "compare sequence 0's per-layer hidden states (or residual streams)" };
        var threads = new Option<string?>("--threads") { Description = "runtime threads (default: the runtime's choice)" };
        var ep = new Option<string>("--execution-provider") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var preset = new Option<string?>("--format-preset")
        {
            Description = $"tolerance preset: {string.Join(", ", VerificationTolerances.PresetNames)} (default: from the artifact's own metadata: " +
                          "ONNX converter.weights/converter.int4, GGUF general.file_type or its weight types; 'report' sets no limit and prints REPORTED)",
        };
        var kvCache = new Option<string>("--kv-cache")
        {
            Description = "GGUF: llama.cpp KV cache, f32 (flash attention off) or f16 (llama.cpp's defaults)", DefaultValueFactory = _ => "f32",
        };
        kvCache.AcceptOnlyFromAmong("f32", "f16");
        var interopDir = new Option<string?>("--interop-dir") { Description = "GGUF: folder with the node-llama-cpp helper (default: tests/interop of the repository)" };
        var decode = new Option<int?>("--decode")
        {
            Description = "ONNX KV-cache decoder: prefill this many tokens of each sequence, then feed the rest one at a time through the cache (e.g. 16)",
        };
        var model = new Option<string?>("--model") { Description = "model folder (config.json) to check the golden against" };
        var stableMargin = new Option<string?>("--stable-margin") { Description = "routing margin below which a position is unstable (default 1e-4)" };
        var selectionMargin = new Option<string?>("--selection-margin")
        {
            Description = "sparse-attention selection (indexer) margin below which a position is unstable (default 1e-5)",
        };
        var layerThreshold = new Option<string?>("--layer-threshold") { Description = "relative error that marks a layer as diverging (default 1e-3)" };
        var limitOptions = LimitFlags.Select(f => new Option<string?>(f.Name) { Description = f.Help + "; a number, or 'none' to drop the preset's limit" }).ToArray();

        var cmd = new Command("verify", "Run an artifact on golden tokens and compare its logits, routing and hidden states with the golden " +
                                        "(a file, or a reference computed on the fly with --reference)");
        cmd.Arguments.Add(artifact);
        foreach (var o in new Option[] { golden, reference, json, layers, threads, ep, preset, kvCache, interopDir, decode, model, stableMargin, selectionMargin, layerThreshold }) cmd.Options.Add(o);
        foreach (var o in inputs.All) cmd.Options.Add(o);
        foreach (var o in limitOptions) cmd.Options.Add(o);

        cmd.Action = new VerifyAction(pr =>
        {
            var output = pr.InvocationConfiguration.Output;
            var error = pr.InvocationConfiguration.Error;
            bool verbose = pr.GetValue(Converter.Cli.GlobalOptions.Verbose), quiet = pr.GetValue(Converter.Cli.GlobalOptions.Quiet);
            string path = pr.GetValue(artifact)!;
            VerificationTolerances tol;
            GoldenSet goldenSet;
            ArtifactKind kind;
            RunnerOptions options;
            string? presetReason;
            var progress = quiet ? null : new StepProgress(error);
            try
            {
                kind = ArtifactRunnerFactory.Detect(path);
                string? presetFlag = pr.GetValue(preset);
                if (presetFlag != null) VerificationTolerances.ForPreset(presetFlag); // an unknown name fails before any work
                int nThreads = pr.GetValue(threads) is { } th ? ParseThreads(th) : 0;
                string provider = pr.GetValue(ep)!.ToLowerInvariant();
                if (provider is not ("cpu" or "cuda"))
                    throw new ArgumentException($"--execution-provider: '{provider}' is not cpu or cuda");
                options = new RunnerOptions(nThreads, provider) { KvCache = pr.GetValue(kvCache)!, InteropDirectory = pr.GetValue(interopDir), DecodePrefill = pr.GetValue(decode) };
                var limits = new List<(int Index, double? Value)>();
                for (int i = 0; i < LimitFlags.Length; i++)
                    if (pr.GetValue(limitOptions[i]) is { } text) limits.Add((i, ParseLimit(LimitFlags[i].Name, text)));
                double? sm = pr.GetValue(stableMargin) is { } smText ? ParseNumber("--stable-margin", smText) : null;
                double? lt = pr.GetValue(layerThreshold) is { } ltText ? ParseNumber("--layer-threshold", ltText) : null;
                double? selm = pr.GetValue(selectionMargin) is { } selText ? ParseNumber("--selection-margin", selText) : null;

                string? goldenPath = pr.GetValue(golden), referencePath = pr.GetValue(reference);
                if ((goldenPath == null) == (referencePath == null)) throw new ArgumentException("give exactly one of --golden FILE or --reference <model-dir|artifact>");
                if (goldenPath != null && (pr.GetValue(inputs.Tokens) != null || pr.GetValue(inputs.Text) != null))
                    throw new ArgumentException("--tokens and --text go with --reference; a golden file brings its own tokens");
                progress?.Step(goldenPath != null ? $"loading {goldenPath}" : $"computing the reference from {referencePath}");
                goldenSet = goldenPath != null
                    ? GoldenSet.Load(goldenPath)
                    : Reference(referencePath!, inputs, pr, factory, options, kind, path, verbose, quiet, error);

                var info = ArtifactModelInfo.Read(path, kind, goldenSet);
                string presetName = presetFlag ?? info.Preset;
                presetReason = presetFlag != null ? "--format-preset" : info.PresetReason;
                tol = VerificationTolerances.ForPreset(presetName);
                foreach (var (i, value) in limits) tol = LimitFlags[i].Set(tol, value);
                if (limits.Count > 0) tol = tol with { Preset = tol.Preset + "+overrides" };
                if (sm is double smv) tol = tol with { StableMarginThreshold = smv };
                if (lt is double ltv) tol = tol with { LayerRelativeErrorThreshold = ltv };
                if (selm is double selv) tol = tol with { SelectionMarginThreshold = selv };

                // The golden must belong to the artifact's model: config.json beside the artifact (ONNX exports copy it),
                // --model, or what a GGUF file states about its shapes.
                var configDir = kind == ArtifactKind.ShardedOnnx ? Path.Combine(path, ShardPipeline.RankFolderName(0)) : path;
                var modelDir = pr.GetValue(model) ?? (Directory.Exists(configDir) && File.Exists(Path.Combine(configDir, "config.json")) ? configDir : null);
                if (modelDir != null) goldenSet.CheckModel(ConfigJson.Load(modelDir));
                goldenSet.CheckShapes(info.Vocab, info.Hidden, info.Layers, info.RoutedExperts, info.ExpertsPerToken, path);
            }
            catch (Exception e) when (CommandRunner.Classify(e) != CommandRunner.InternalError || e is Microsoft.ML.OnnxRuntime.OnnxRuntimeException)
            {
                // Bad input: a missing or malformed file, an unknown option value, another model's golden, a reference that fails.
                CommandRunner.Report(e is Microsoft.ML.OnnxRuntime.OnnxRuntimeException ? new InvalidDataException(e.Message, e) : e, error, verbose);
                return e is OperationCanceledException ? CommandRunner.Cancelled : ExitBadInput;
            }
            catch (Exception e)
            {
                return CommandRunner.Report(e, error, verbose);
            }

            VerificationReport report;
            try
            {
                progress?.Step($"running {path}");
                using var runner = factory.Open(path, kind, options);
                // ONNX runs sequence by sequence so progress shows; llama.cpp loads the file once per call, so it gets them all at once.
                int chunk = kind == ArtifactKind.Gguf ? 0 : 1;
                report = ArtifactVerifier.Verify(runner, goldenSet, tol, pr.GetValue(layers), chunk,
                    progress == null ? null : new Progress<(int Done, int Total)>(p => progress.Sequences(p.Done, p.Total)));
                progress?.Done();
                report = report with { Artifact = $"{path} ({runner.Description})", PresetReason = presetReason };
            }
            catch (Exception e) when (CommandRunner.Classify(e) != CommandRunner.InternalError || e is Microsoft.ML.OnnxRuntime.OnnxRuntimeException)
            {
                // The artifact could not be opened or run, or returned outputs of the wrong shape: bad input, not a
                // tolerance failure.
                progress?.Done();
                error.WriteLine($"error: {e.Message}");
                if (verbose) error.WriteLine(e);
                return e is OperationCanceledException ? CommandRunner.Cancelled : ExitBadInput;
            }
            catch (Exception e)
            {
                progress?.Done();
                return CommandRunner.Report(e, error, verbose);
            }

            if (pr.GetValue(layers) && report.Layers == null)
                error.WriteLine(goldenSet.HiddenStates == null && goldenSet.ResidualStates == null
                    ? $"note: {goldenSet.Path} has no '{GoldenSet.HiddenStatesName}' or '{GoldenSet.ResidualStatesName}'; no layer diagnostics"
                    : "note: the runner returned no hidden states; no layer diagnostics");
            if (pr.GetValue(json))
                output.WriteLine(VerificationReportWriter.ToJson(report));
            else
                output.Write(VerificationReportWriter.ToText(report));
            return report.ReportOnly || report.Passed ? ExitPassed : ExitFailed;
        });
        return cmd;
    }

    /// <summary>
    /// The reference for --reference: a model folder runs through the golden pipeline into a temporary golden file (the
    /// same file `converter golden` writes, compact for large vocabularies unless --full-logits); an artifact runs as is.
    /// </summary>
    private static GoldenSet Reference(string reference, GoldenCommand.InputOptions inputs, ParseResult pr, ArtifactRunnerFactory factory,
        RunnerOptions options, ArtifactKind artifactKind, string artifactPath, bool verbose, bool quiet, TextWriter error)
    {
        bool modelFolder = Directory.Exists(reference) && File.Exists(Path.Combine(reference, "config.json"))
                           && !File.Exists(Path.Combine(reference, "model.onnx")) && !File.Exists(Path.Combine(reference, Converter.Sharding.PlacementJson.FileName));
        if (modelFolder)
        {
            var arch = ArchitectureRegistry.Load(reference);
            var tokens = inputs.Read(pr, arch.VocabSize, reference);
            string tmp = Path.Combine(Path.GetTempPath(), $"converter-reference-{Environment.ProcessId}-{Guid.NewGuid():N}.safetensors");
            try
            {
                using var loggers = Converter.Cli.GlobalOptions.CreateLoggerFactory(pr, toStandardError: true);
                Converter.Runtime.Golden.GoldenPipeline.Run(reference, tokens.Tokens, tokens.Sequences, tokens.Length, tmp,
                    new Converter.Runtime.Golden.GoldenOptions(pr.GetValue(inputs.Batch), options.Threads, inputs.Form(pr, arch.VocabSize), TokensSource: tokens.Source),
                    loggers.CreateLogger("reference"), quiet ? null : Converter.Cli.GlobalOptions.CreateProgress(pr));
                var set = GoldenSet.Load(tmp);
                return set.With(identity: set.Identity);
            }
            finally
            {
                if (File.Exists(tmp)) File.Delete(tmp);
                File.Delete(tmp + Converter.Staging.ArtifactManifest.SideSuffix);
            }
        }
        var kind = ArtifactRunnerFactory.Detect(reference);
        var info = ArtifactModelInfo.Read(reference, kind);
        int vocab = info.Vocab ?? (Directory.Exists(reference) && File.Exists(Path.Combine(reference, "config.json"))
            ? ConfigJson.Load(reference).Int("vocab_size")
            : throw new InvalidDataException($"{reference}: cannot tell the reference's vocabulary; pass a model folder"));
        var ts = inputs.Read(pr, vocab, Directory.Exists(reference) ? reference : null);
        using var runner = factory.Open(reference, kind, options);
        var outputs = ArtifactVerifier.Run(runner, ts.Tokens, ts.Sequences, ts.Length, hiddenStates: true, routing: false, 0, null);
        return GoldenSet.FromOutputs($"{reference} ({runner.Description})", ts.Tokens, ts.Sequences, ts.Length, outputs);
    }

    /// <summary>verify's progress on stderr: each step on its own line, sequences on one updating line.</summary>
    private sealed class StepProgress(TextWriter error)
    {
        private readonly bool _interactive = !Console.IsErrorRedirected;
        private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
        private long _last = -1;
        private bool _open;

        public void Step(string what)
        {
            Done();
            error.WriteLine($"verify: {what}");
        }

        public void Sequences(int done, int total)
        {
            long now = _clock.ElapsedMilliseconds;
            if (done < total && now - _last < (_interactive ? 200 : 5000)) return;
            _last = now;
            string line = $"[{done}/{total}] sequences, {now / 1000.0:F1} s";
            if (_interactive) { error.Write("\r" + line); _open = done < total; if (!_open) error.WriteLine(); }
            else error.WriteLine(line);
        }

        public void Done()
        {
            if (_open) error.WriteLine();
            _open = false;
        }
    }

    private static double? ParseLimit(string flag, string text) =>
        text.Equals("none", StringComparison.OrdinalIgnoreCase) || text.Equals("off", StringComparison.OrdinalIgnoreCase)
            ? null : ParseNumber(flag, text);

    private static double ParseNumber(string flag, string text)
    {
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || !double.IsFinite(v) || v < 0)
            throw new ArgumentException($"{flag}: '{text}' is not a non-negative number");
        return v;
    }

    private static int ParseThreads(string text)
    {
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) || n < 0)
            throw new ArgumentException($"--threads: '{text}' is not a non-negative integer");
        return n;
    }

    /// <summary>
    /// The command's action. It also owns parse errors (unknown options, a bad value): they are printed with a pointer to
    /// --help and answered with exit code 2, not System.CommandLine's default 1, which here means "tolerances failed".
    /// </summary>
    private sealed class VerifyAction(Func<ParseResult, int> run) : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parseResult)
        {
            if (Converter.Cli.CommandRunner.ReportParseErrors(parseResult) is { } code) return code;
            if (Environment.GetEnvironmentVariable(Converter.Cli.CommandRunner.FaultInjectionVariable) == "internal")
                return Converter.Cli.CommandRunner.Report(new InvalidOperationException($"fault injected by {Converter.Cli.CommandRunner.FaultInjectionVariable}=internal (test hook)"),
                    parseResult.InvocationConfiguration.Error, parseResult.GetValue(Converter.Cli.GlobalOptions.Verbose));
            return run(parseResult);
        }
    }
}
