using System.CommandLine;
using Converter.Models.DeepseekV3.Onnx;
using Converter.Numerics.ActivationFormats;
using Converter.Pipelines;
using Microsoft.Extensions.Logging;

namespace Converter.Cli.Commands;

/// <summary><c>converter export onnx &lt;model-dir&gt; -o &lt;out-dir&gt; [--weights fp32|fp8] [--overwrite] [--simulate-comm F] [--dispatch F] [--combine F]</c> (a subcommand of <c>export</c>).</summary>
public static class ExportOnnxCommand
{
    public static Command Create()
    {
        var dir = new Argument<string>("model-dir") { Description = "Hugging Face model folder (config.json + safetensors), BF16 or official FP8" };
        var output = new Option<string>("--output", "-o") { Description = "Output folder (model.onnx + model.onnx.data)", Required = true };
        var weights = new Option<string>("--weights")
        {
            Description = "Projection weights: fp32 (float32) or fp8 (e4m3 + 128x128 block scales, dequantized in the graph)",
            DefaultValueFactory = _ => "fp32",
        };
        weights.AcceptOnlyFromAmong("fp32", "fp8");
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace an existing output folder" };
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
        var cmd = new Command("onnx", "Export a deepseek_v3 checkpoint to ONNX (model-local MLA/MoE functions, stock ONNX Runtime)")
        {
            dir, output, weights, overwrite, diagnostics, simulate, dispatch, combine,
        };
        cmd.SetAction(parse => CommandRunner.Run(parse, loggers =>
        {
            var format = parse.GetValue(weights) == "fp8" ? OnnxWeightFormat.Fp8 : OnnxWeightFormat.Fp32;
            var both = parse.GetValue(simulate);
            ActivationFormat? Fmt(string? s) => s == null ? null : ActivationFormatParser.Parse(s);
            var comm = new CommSimulation(Fmt(parse.GetValue(dispatch) ?? both), Fmt(parse.GetValue(combine) ?? both));
            var result = OnnxExportPipeline.Run(parse.GetValue(dir)!, parse.GetValue(output)!,
                new OnnxExportOptions(format, parse.GetValue(overwrite), parse.GetValue(diagnostics), Comm: comm.Any ? comm : null),
                loggers.CreateLogger("export-onnx"), GlobalOptions.CreateProgress(parse));
            Console.WriteLine(result.ModelPath);
            return CommandRunner.Ok;
        }));
        return cmd;
    }
}
