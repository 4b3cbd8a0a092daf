using System.CommandLine;
using Converter.Models;
using Converter.Runtime.Golden;
using Converter.Verification;
using Microsoft.Extensions.Logging;

namespace Converter.Cli.Commands;

/// <summary>
/// <c>converter golden &lt;model-dir&gt; (--text FILE | --tokens FILE) [--seq-len N] [--max-sequences M] [--full-logits]
/// [--top-k K] [--tail-samples S] [--batch B] [--threads N] -o FILE [--overwrite]</c>: reference logits, routing and
/// hidden states from the source checkpoint, for <c>verify --golden</c>.
/// </summary>
public static class GoldenCommand
{
    /// <summary>The options golden and verify --reference share.</summary>
    public sealed record InputOptions(Option<string?> Tokens, Option<string?> Text, Option<int?> SeqLen, Option<int?> MaxSequences,
        Option<bool> FullLogits, Option<int> TopK, Option<int> TailSamples, Option<int> Batch)
    {
        public static InputOptions Create() => new(
            new Option<string?>("--tokens") { Description = "safetensors file with an int32 'tokens' tensor [sequences, length] (a golden's own tokens can be reused)" },
            new Option<string?>("--text") { Description = "UTF-8 text file, tokenized by the model's tokenizer.json (or as bytes for a 256-token vocabulary) and cut into --seq-len" },
            new Option<int?>("--seq-len") { Description = $"tokens per sequence (--text: default {GoldenTokens.DefaultTextSequenceLength}; --tokens: keep the first N of each)" },
            new Option<int?>("--max-sequences") { Description = "use at most this many sequences" },
            new Option<bool>("--full-logits") { Description = $"store every logit; default for vocabularies up to {GoldenLogitsForm.FullByDefaultUpTo}, otherwise the compact form (top-k + tail samples)" },
            new Option<int>("--top-k") { Description = "compact form: most probable tokens kept exactly per position", DefaultValueFactory = _ => 256 },
            new Option<int>("--tail-samples") { Description = "compact form: tokens sampled from the rest per position", DefaultValueFactory = _ => 768 },
            new Option<int>("--batch") { Description = "sequences per ONNX Runtime run", DefaultValueFactory = _ => 8 });

        public IEnumerable<Option> All => [Tokens, Text, SeqLen, MaxSequences, FullLogits, TopK, TailSamples, Batch];

        /// <summary>The token set (exactly one of --tokens / --text) for a model of <paramref name="vocab"/> tokens.</summary>
        public GoldenTokenSet Read(ParseResult parse, int vocab, string? tokenizerDir)
        {
            string? tokens = parse.GetValue(Tokens), text = parse.GetValue(Text);
            if ((tokens == null) == (text == null)) throw new ArgumentException("give exactly one of --tokens FILE or --text FILE");
            int? seqLen = parse.GetValue(SeqLen), max = parse.GetValue(MaxSequences);
            if (max is < 1) throw new ArgumentException($"--max-sequences {max} must be at least 1");
            return tokens != null
                ? GoldenTokens.FromTokensFile(tokens, vocab, seqLen, max)
                : GoldenTokens.FromText(text!, tokenizerDir, vocab, seqLen, max);
        }

        public GoldenLogitsForm Form(ParseResult parse, int vocab)
        {
            int k = parse.GetValue(TopK), m = parse.GetValue(TailSamples);
            if (k < 1 || m < 0) throw new ArgumentException($"--top-k {k} must be at least 1 and --tail-samples {m} at least 0");
            return parse.GetValue(FullLogits) ? new GoldenLogitsForm(true, k, m) : new GoldenLogitsForm(vocab <= GoldenLogitsForm.FullByDefaultUpTo, k, m);
        }
    }

    public static Command Create()
    {
        var dir = new Argument<string>("model-dir") { Description = "Source model folder (config.json + safetensors) of a family with ONNX export" };
        var output = new Option<string>("--output", "-o") { Description = "golden file to write (safetensors)", Required = true };
        var threads = new Option<int>("--threads") { Description = "ONNX Runtime intra-op threads (0: its choice)", DefaultValueFactory = _ => 0 };
        var overwrite = new Option<bool>("--overwrite") { Description = "replace the output file if it exists" };
        var inputs = InputOptions.Create();
        var cmd = new Command("golden", "Compute reference logits, routing and hidden states from a checkpoint (its fp32 ONNX export, " +
                                        "layer slice by layer slice in ONNX Runtime) in the golden format verify reads");
        cmd.Arguments.Add(dir);
        foreach (var o in inputs.All.Concat([output, threads, overwrite])) cmd.Options.Add(o);
        cmd.SetAction(parse => CommandRunner.Run(parse, (loggers, cancellation) =>
        {
            var log = loggers.CreateLogger("golden");
            string modelDir = parse.GetValue(dir)!;
            var arch = ArchitectureRegistry.Load(modelDir);
            var tokens = inputs.Read(parse, arch.VocabSize, modelDir);
            var r = GoldenPipeline.Run(modelDir, tokens.Tokens, tokens.Sequences, tokens.Length, parse.GetValue(output)!,
                new GoldenOptions(parse.GetValue(inputs.Batch), parse.GetValue(threads), inputs.Form(parse, arch.VocabSize), parse.GetValue(overwrite), tokens.Source) { Fault = CommandRunner.UnitFault },
                log, GlobalOptions.CreateProgress(parse), cancellation);
            log.LogInformation("{Seq} x {Len} tokens, {Slices} slices, {Bytes:N0} bytes ({Form}), {Secs:F1} s, peak RSS {Rss}",
                r.Sequences, r.SequenceLength, r.Slices, r.FileBytes, r.Form, r.Elapsed.TotalSeconds, ProcessStats.PeakRssText());
            parse.InvocationConfiguration.Output.WriteLine(r.Path);
            return CommandRunner.Ok;
        }, logToStandardError: true));
        return cmd;
    }
}
