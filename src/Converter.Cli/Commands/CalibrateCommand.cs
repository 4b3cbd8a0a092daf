using System.CommandLine;
using System.Globalization;
using Converter.Runtime.Calibration;
using Microsoft.Extensions.Logging;

namespace Converter.Cli.Commands;

/// <summary>
/// <c>converter calibrate &lt;model-dir&gt; --tokens &lt;calib.safetensors&gt; [-o &lt;dir&gt;] [--imatrix FILE] [--batch N] [--threads N] [--no-hessians]
/// [--no-comm-report] [--target-snr-db DB] [--onnx DIR] [--min-expert-tokens N] [--memory-budget SIZE] [--overwrite]</c>.
/// </summary>
public static class CalibrateCommand
{
    public static Command Create()
    {
        var dir = new Argument<string>("model-dir") { Description = "Model folder (BF16 or FP8 safetensors) of a family ONNX export supports" };
        var tokens = new Option<string>("--tokens") { Description = "safetensors file with 'tokens' int32 [sequences, length]", Required = true };
        var output = new Option<string?>("--output", "-o") { Description = "Calibration folder to write (required unless --imatrix is given)" };
        var imatrix = new Option<string?>("--imatrix")
        {
            Description = "Also (or, without -o, only) write llama.cpp's importance matrix (GGUF imatrix, as llama-imatrix writes it) for every weight " +
                          "llama-quantize looks up; experts no token was routed to get the layer's pooled input for gate/up and no weighting for down",
        };
        var batch = new Option<int>("--batch") { Description = "Sequences per ONNX Runtime run", DefaultValueFactory = _ => 8 };
        var threads = new Option<int>("--threads") { Description = "ONNX Runtime intra-op threads (0: its choice)", DefaultValueFactory = _ => 0 };
        var hessians = new Option<bool>("--hessians") { Description = "Record per-expert Hessians X^T X and absmax for GPTQ (default on)", DefaultValueFactory = _ => true };
        var noHessians = new Option<bool>("--no-hessians") { Description = "Record routing (and the traffic report) only" };
        var noComm = new Option<bool>("--no-comm-report") { Description = "Skip the dispatch/combine wire-format report" };
        var target = new Option<double>("--target-snr-db") { Description = "SNR the smallest sufficient LogFMT width is searched for", DefaultValueFactory = _ => 40 };
        var onnx = new Option<string?>("--onnx") { Description = "Run this whole-model ONNX export (fp32 or fp8, same config) in one session instead of exporting and running the model layer by layer" };
        var minTokens = new Option<long>("--min-expert-tokens") { Description = "Experts with fewer tokens are reported as starved", DefaultValueFactory = _ => 128 };
        var budget = new Option<string>("--memory-budget") { Description = "Memory per pass over the tokens, e.g. 4GB: Hessians (h²+m²)x8 and weights 3xhxmx4 bytes per routed expert, plus h²x8 per layer; small layers share a pass, a large layer's experts are split into ranges over several passes", DefaultValueFactory = _ => "4GB" };
        var routingWeighted = new Option<bool>("--routing-weighted") { Description = "Weight each token in a routed expert's Hessians by its squared routing weight (off by default)" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace the output folder if it exists" };
        var cmd = new Command("calibrate", "Run the model on ONNX Runtime over calibration tokens: routing, per-expert Hessians, expert traffic report")
        {
            dir, tokens, output, imatrix, batch, threads, hessians, noHessians, noComm, target, onnx, minTokens, budget, routingWeighted, overwrite,
        };
        cmd.SetAction(parse => CommandRunner.Run(parse, (loggers, cancellation) =>
        {
            var log = loggers.CreateLogger("calibrate");
            string? outDir = parse.GetValue(output), imatrixPath = parse.GetValue(imatrix);
            if (outDir == null && imatrixPath == null) throw new ArgumentException("give --output (the calibration folder), --imatrix FILE, or both");
            bool folder = outDir != null; // without a folder, only what the imatrix needs is computed
            var o = new CalibrateOptions(parse.GetValue(batch), parse.GetValue(threads), folder && parse.GetValue(hessians) && !parse.GetValue(noHessians),
                folder && !parse.GetValue(noComm), parse.GetValue(overwrite), parse.GetValue(onnx), parse.GetValue(target), parse.GetValue(minTokens),
                SizeParser.Parse(parse.GetValue(budget)!))
            { RoutingWeighted = parse.GetValue(routingWeighted), ImatrixPath = imatrixPath, Fault = CommandRunner.UnitFault };
            var r = CalibratePipeline.Run(parse.GetValue(dir)!, parse.GetValue(tokens)!, outDir, o, log, GlobalOptions.CreateProgress(parse), cancellation);
            log.LogInformation("{Tokens} tokens, {Layers} MoE layers, {Passes} pass(es), {Secs:F1} s, peak RSS {Rss}",
                r.Data.Tokens, r.Data.TopK.Count, r.Passes, r.Elapsed.TotalSeconds.ToString("F1", CultureInfo.InvariantCulture), ProcessStats.PeakRssText());
            if (r.OutputDirectory != null) Console.WriteLine(Path.Combine(r.OutputDirectory, CalibratePipeline.SummaryName));
            if (r.Imatrix != null) Console.WriteLine(r.Imatrix);
            return CommandRunner.Ok;
        }));
        return cmd;
    }
}
