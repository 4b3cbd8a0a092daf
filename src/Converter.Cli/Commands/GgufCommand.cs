using System.CommandLine;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Microsoft.Extensions.Logging;

namespace Converter.Cli.Commands;

public static class GgufCommand
{
    private static readonly Dictionary<string, GgmlType> Types = new(StringComparer.OrdinalIgnoreCase)
    {
        ["f32"] = GgmlType.F32, ["f16"] = GgmlType.F16, ["bf16"] = GgmlType.BF16, ["q8_0"] = GgmlType.Q8_0,
        ["q4_0"] = GgmlType.Q4_0, ["q4_k"] = GgmlType.Q4_K, ["q5_k"] = GgmlType.Q5_K, ["q6_k"] = GgmlType.Q6_K,
        ["q4_k_m"] = GgmlType.Q4_K, // the mix: see GgufTypeScheme.Q4_K_M
        ["mxfp4_moe"] = GgmlType.MXFP4, // types as stored: see GgufTypeScheme.Mxfp4Moe
    };

    public static Command Create()
    {
        var dir = new Argument<string>("model-dir") { Description = "Source model folder (BF16, F16, F32 or DeepSeek FP8 safetensors)" };
        var output = new Option<string>("--output", "-o") { Description = "Output .gguf file (must not exist unless --overwrite)", Required = true };
        var type = new Option<string>("--type")
        {
            Description = "ggml type of the weights (rows that are not whole blocks fall back to q8_0, then f16); norms, router and biases stay f32; " +
                          "q4_k_m: llama.cpp's Q4_K_M mix (output and ffn_down of some layers q6_k, the rest q4_k); " +
                          "mxfp4_moe: what llama.cpp's converter writes from block-scaled checkpoints (routed experts mxfp4, FP8 weights q8_0, the rest as stored)",
            DefaultValueFactory = _ => "f16",
        };
        type.AcceptOnlyFromAmong([.. Types.Keys]);
        var outputType = new Option<string?>("--output-type") { Description = "Type of output.weight (default: --type)" };
        outputType.AcceptOnlyFromAmong([.. Types.Keys]);
        var name = new Option<string?>("--name") { Description = "general.name (default: the folder name)" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace the output file if it exists" };
        var force = new Option<bool>("--force") { Description = "Export even where llama.cpp cannot represent the checkpoint exactly" };
        var resume = new Option<bool>("--resume") { Description = ResumeHelp.Text };
        var cmd = new Command("gguf", "Export a checkpoint to GGUF for llama.cpp (the family's llama.cpp architecture: deepseek2, qwen3moe, deepseek4; ggml-exact quantizers; streaming, atomic)")
        {
            dir, output, type, outputType, name, overwrite, force, resume,
        };
        cmd.SetAction(parse => CommandRunner.Run(parse, (loggers, cancellation) =>
        {
            var log = loggers.CreateLogger("gguf");
            string typeName = parse.GetValue(type)!;
            var options = new GgufExportOptions(
                parse.GetValue(output)!,
                Types[typeName],
                parse.GetValue(outputType) is { } o ? Types[o] : null,
                parse.GetValue(name),
                parse.GetValue(overwrite))
            {
                Scheme = typeName.ToLowerInvariant() switch { "q4_k_m" => GgufTypeScheme.Q4_K_M, "mxfp4_moe" => GgufTypeScheme.Mxfp4Moe, _ => GgufTypeScheme.Uniform },
                Force = parse.GetValue(force),
                Resume = parse.GetValue(resume),
                Fault = CommandRunner.UnitFault,
            };
            using var src = ModelCheckpoint.Open(parse.GetValue(dir)!);
            var result = GgufExportPipeline.Run(src, options, log, GlobalOptions.CreateProgress(parse), cancellation);
            log.LogInformation("done: {Tensors} tensors, {GB:F3} GB, {Secs:F2} s, peak RSS {Rss}",
                result.Tensors, result.BytesWritten / 1e9, result.Elapsed.TotalSeconds, ProcessStats.PeakRssText());
            return CommandRunner.Ok;
        }));
        return cmd;
    }
}
