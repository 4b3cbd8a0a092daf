using System.CommandLine;
using Converter.Decoder.Onnx;
using Converter.Numerics.ActivationFormats;
using Converter.Pipelines;
using Microsoft.Extensions.Logging;

namespace Converter.Cli.Commands;

/// <summary>
/// <c>converter export onnx &lt;model-dir&gt; -o &lt;out-dir&gt; [--weights fp32|fp8|int4] [--group-size N] [--asymmetric]
/// [--int4-targets routed-experts|all-linear] [--overwrite] [--simulate-comm F] [--dispatch F] [--combine F]</c>
/// (a subcommand of <c>export</c>).
/// </summary>
public static class ExportOnnxCommand
{
    public static Command Create()
    {
        var dir = new Argument<string>("model-dir") { Description = "Hugging Face model folder (config.json + safetensors), BF16 or official FP8" };
        var output = new Option<string>("--output", "-o") { Description = "Output folder (model.onnx + model.onnx.data)", Required = true };
        var weights = new Option<string>("--weights")
        {
            Description = "Projection weights: fp32 (float32), fp8 (e4m3 + 128x128 block scales, dequantized in the graph) or " +
                "int4 (routed experts through com.microsoft.QMoE, INT4 projections through MatMulNBits; a packed INT4 checkpoint keeps its codes exactly, " +
                "other sources are quantized with rtn)",
            DefaultValueFactory = _ => "fp32",
        };
        weights.AcceptOnlyFromAmong("fp32", "fp8", "int4");
        var groupSize = new Option<int?>("--group-size") { Description = "int4: values per scale (32, 64, 128; default: the packed checkpoint's, else 32)" };
        groupSize.AcceptOnlyFromAmong("32", "64", "128");
        var asymmetric = new Option<bool>("--asymmetric") { Description = "int4 from a float/FP8 source: codes with a zero point per group" };
        var targets = new Option<string>("--int4-targets")
        {
            Description = "int4: routed-experts (default; other projections float32 unless stored packed) or all-linear (attention, dense MLP and shared experts too)",
            DefaultValueFactory = _ => "routed-experts",
        };
        targets.AcceptOnlyFromAmong("routed-experts", "all-linear");
        var kvCache = new Option<bool>("--kv-cache")
        {
            Description = "A decoder with a KV cache (past_key_values.N.key/.value in, present.N.key/.value out, onnxruntime-genai's names) " +
                          "that runs prefill and one-token decode in one graph: MLA keeps its latent cache, GQA its key/value heads",
        };
        var accuracy = new Option<string>("--int4-accuracy-level")
        {
            Description = "int4: MatMulNBits accuracy_level, 0 (default: float32 activations) or 4 (int8 activations: faster CPU decode, slightly less exact); QMoE is not affected",
            DefaultValueFactory = _ => "0",
        };
        accuracy.AcceptOnlyFromAmong("0", "1", "2", "3", "4");
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace an existing output folder" };
        var resume = new Option<bool>("--resume") { Description = ResumeHelp.Text };
        var diagnostics = new Option<bool>("--diagnostic-outputs")
        {
            Description = "Also expose every hidden state and each MoE layer's top-k expert ids as graph outputs",
        };
        var simulate = new Option<string?>("--simulate-comm")
        {
            Description = "Quantize-dequantize expert traffic (dispatch and combine) inside MoE: bf16, e4m3, e5m2 or logfmt<n> (n 4..16)",
        };
        var dispatch = new Option<string?>("--dispatch") { Description = "Format of the dispatch traffic only (overrides --simulate-comm for dispatch)" };
        var combine = new Option<string?>("--combine") { Description = "Format of the combine traffic only (overrides --simulate-comm for combine)" };
        var cmd = new Command("onnx", "Export a checkpoint to ONNX (model-local attention/MoE functions, stock ONNX Runtime)")
        {
            dir, output, weights, groupSize, asymmetric, targets, kvCache, accuracy, overwrite, resume, diagnostics, simulate, dispatch, combine,
        };
        cmd.SetAction(parse => CommandRunner.Run(parse, (loggers, cancellation) =>
        {
            var format = Enum.Parse<OnnxWeightFormat>(parse.GetValue(weights)!, ignoreCase: true);
            var both = parse.GetValue(simulate);
            ActivationFormat? Fmt(string? s) => s == null ? null : ActivationFormatParser.Parse(s);
            var comm = new CommSimulation(Fmt(parse.GetValue(dispatch) ?? both), Fmt(parse.GetValue(combine) ?? both));
            var result = OnnxExportPipeline.Run(parse.GetValue(dir)!, parse.GetValue(output)!,
                new OnnxExportOptions(format, parse.GetValue(overwrite), parse.GetValue(diagnostics),
                    Int4GroupSize: parse.GetValue(groupSize), Int4Symmetric: parse.GetValue(asymmetric) ? false : null,
                    Int4Targets: parse.GetValue(targets) == "all-linear" ? Int4Targets.AllLinear : Int4Targets.RoutedExperts,
                    Comm: comm.Any ? comm : null) {
                    KvCache = parse.GetValue(kvCache), Int4AccuracyLevel = int.Parse(parse.GetValue(accuracy)!),
                    Resume = parse.GetValue(resume), Fault = CommandRunner.UnitFault,
                },
                loggers.CreateLogger("export-onnx"), GlobalOptions.CreateProgress(parse), cancellation);
            Console.WriteLine(result.ModelPath);
            return CommandRunner.Ok;
        }));
        return cmd;
    }
}
