using System.CommandLine;
using System.CommandLine.Invocation;
using System.Globalization;
using Converter.Models;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Verification;

namespace Converter.Cli.Commands;

/// <summary>
/// <c>converter verify &lt;artifact&gt; --golden eval.safetensors</c>: runs the artifact on the golden tokens and
/// compares. Exit codes: 0 when every set tolerance holds, 1 when one does not, 2 on bad input (missing or
/// malformed files, unknown options or values, no runner for the artifact kind, an artifact that fails to run).
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
        var golden = new Option<string>("--golden") { Description = "golden eval.safetensors", Required = true };
        var json = new Option<bool>("--json") { Description = "print exactly one JSON object instead of the table" };
        var layers = new Option<bool>("--layers") { Description = "compare sequence 0's per-layer hidden states (or residual streams)" };
        var threads = new Option<string?>("--threads") { Description = "runtime threads (default: the runtime's choice)" };
        var ep = new Option<string>("--execution-provider") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var preset = new Option<string?>("--format-preset")
        {
            Description = $"tolerance preset: {string.Join(", ", VerificationTolerances.PresetNames)} (default: fp32 for ONNX; for GGUF from the file's weight types)",
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

        var cmd = new Command("verify", "Run an artifact on golden tokens and compare its logits, routing and hidden states with the golden");
        cmd.Arguments.Add(artifact);
        foreach (var o in new Option[] { golden, json, layers, threads, ep, preset, kvCache, interopDir, decode, model, stableMargin, selectionMargin, layerThreshold }) cmd.Options.Add(o);
        foreach (var o in limitOptions) cmd.Options.Add(o);

        cmd.Action = new VerifyAction(pr =>
        {
            var output = pr.InvocationConfiguration.Output;
            var error = pr.InvocationConfiguration.Error;
            string path = pr.GetValue(artifact)!;
            VerificationTolerances tol;
            GoldenSet goldenSet;
            ArtifactKind kind;
            RunnerOptions options;
            try
            {
                kind = ArtifactRunnerFactory.Detect(path);
                tol = VerificationTolerances.ForPreset(pr.GetValue(preset) ?? (kind == ArtifactKind.Gguf ? GgufArtifactRunner.DefaultPreset(path) : "fp32"));
                bool overridden = false;
                for (int i = 0; i < LimitFlags.Length; i++)
                    if (pr.GetValue(limitOptions[i]) is { } text)
                    {
                        tol = LimitFlags[i].Set(tol, ParseLimit(LimitFlags[i].Name, text));
                        overridden = true;
                    }
                if (overridden) tol = tol with { Preset = tol.Preset + "+overrides" };
                if (pr.GetValue(stableMargin) is { } sm) tol = tol with { StableMarginThreshold = ParseNumber("--stable-margin", sm) };
                if (pr.GetValue(selectionMargin) is { } sm2) tol = tol with { SelectionMarginThreshold = ParseNumber("--selection-margin", sm2) };
                if (pr.GetValue(layerThreshold) is { } lt) tol = tol with { LayerRelativeErrorThreshold = ParseNumber("--layer-threshold", lt) };
                int nThreads = pr.GetValue(threads) is { } th ? ParseThreads(th) : 0;
                string provider = pr.GetValue(ep)!.ToLowerInvariant();
                if (provider is not ("cpu" or "cuda"))
                    throw new ArgumentException($"--execution-provider: '{provider}' is not cpu or cuda");
                options = new RunnerOptions(nThreads, provider) { KvCache = pr.GetValue(kvCache)!, InteropDirectory = pr.GetValue(interopDir), DecodePrefill = pr.GetValue(decode) };
                goldenSet = GoldenSet.Load(pr.GetValue(golden)!);
                // A sharded output's config.json sits in each rank folder.
                var configDir = kind == ArtifactKind.ShardedOnnx ? Path.Combine(path, ShardPipeline.RankFolderName(0)) : path;
                var modelDir = pr.GetValue(model) ?? (Directory.Exists(configDir) && File.Exists(Path.Combine(configDir, "config.json")) ? configDir : null);
                if (modelDir != null) goldenSet.CheckModel(ConfigJson.Load(modelDir));
            }
            catch (Exception e) when (e is ArgumentException or IOException or InvalidDataException or KeyNotFoundException or FormatException)
            {
                error.WriteLine($"error: {e.Message}");
                return ExitBadInput;
            }

            VerificationReport report;
            try
            {
                using var runner = factory.Open(path, kind, options);
                report = ArtifactVerifier.Verify(runner, goldenSet, tol, pr.GetValue(layers));
                report = report with { Artifact = $"{path} ({runner.Description})" };
            }
            catch (Exception e)
            {
                // The artifact could not be opened or run, or returned outputs of the wrong shape: bad input, not a
                // tolerance failure.
                error.WriteLine($"error: {e.Message}");
                return ExitBadInput;
            }

            if (pr.GetValue(layers) && report.Layers == null)
                error.WriteLine(goldenSet.HiddenStates == null && goldenSet.ResidualStates == null
                    ? $"note: {goldenSet.Path} has no '{GoldenSet.HiddenStatesName}' or '{GoldenSet.ResidualStatesName}'; no layer diagnostics"
                    : "note: the runner returned no hidden states; no layer diagnostics");
            if (pr.GetValue(json))
                output.WriteLine(VerificationReportWriter.ToJson(report));
            else
                output.Write(VerificationReportWriter.ToText(report));
            return report.Passed ? ExitPassed : ExitFailed;
        });
        return cmd;
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
    /// The command's action. It also owns parse errors (unknown options, a missing --golden): they are printed and
    /// answered with exit code 2, not System.CommandLine's default 1, which here means "tolerances failed".
    /// </summary>
    private sealed class VerifyAction(Func<ParseResult, int> run) : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parseResult)
        {
            var err = parseResult.InvocationConfiguration.Error;
            if (parseResult.Errors.Count > 0 || parseResult.UnmatchedTokens.Count > 0)
            {
                foreach (var e in parseResult.Errors) err.WriteLine($"error: {e.Message}");
                // Clearing parse errors also clears "unrecognized argument" ones; report those tokens here.
                if (parseResult.Errors.Count == 0)
                    err.WriteLine($"error: unrecognized argument(s): {string.Join(" ", parseResult.UnmatchedTokens)}");
                return ExitBadInput;
            }
            return run(parseResult);
        }
    }
}
