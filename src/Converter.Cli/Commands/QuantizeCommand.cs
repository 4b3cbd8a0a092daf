using System.CommandLine;
using Converter.Models;
using Converter.Numerics.Int4;
using Converter.Pipelines;
using Microsoft.Extensions.Logging;

namespace Converter.Cli.Commands;

public static class QuantizeCommand
{
    public static Command Create()
    {
        var dir = new Argument<string>("model-dir") { Description = "Source model folder (BF16, F16, F32 or DeepSeek FP8 safetensors)" };
        var output = new Option<string>("--output", "-o") { Description = "Output folder (must not exist unless --overwrite)", Required = true };
        var scheme = new Option<string>("--scheme")
        {
            Description = "fp8-block: DeepSeek's official e4m3 128x128 block layout; bf16: dequantize FP8 to BF16; " +
                "int4: compressed-tensors pack-quantized INT4 groups (what Kimi-K2-Thinking ships)",
            Required = true,
        };
        scheme.AcceptOnlyFromAmong("fp8-block", "bf16", "int4");
        var groupSize = new Option<int>("--group-size") { Description = "int4: values per scale along the input dimension", DefaultValueFactory = _ => 32 };
        groupSize.AcceptOnlyFromAmong("32", "64", "128");
        var method = new Option<string>("--method") { Description = "int4: rtn (round to nearest, MSE clipping search) or gptq (needs --calibration)", DefaultValueFactory = _ => "rtn" };
        method.AcceptOnlyFromAmong("rtn", "gptq");
        var calibration = new Option<string?>("--calibration") { Description = "int4 gptq: calibration folder made by `converter calibrate` on this model" };
        var symmetric = new Option<bool>("--symmetric") { Description = "int4: signed codes, no zero point (default)" };
        var asymmetric = new Option<bool>("--asymmetric") { Description = "int4: codes with a zero point per group" };
        var targets = new Option<string>("--targets") { Description = "int4: routed-experts (default; attention, shared experts, router, embeddings, norms, lm_head kept) or all-linear", DefaultValueFactory = _ => "routed-experts" };
        targets.AcceptOnlyFromAmong("routed-experts", "all-linear");
        var include = new Option<string?>("--include") { Description = "int4: also quantize projection weights whose name matches this regex" };
        var exclude = new Option<string?>("--exclude") { Description = "int4: never quantize weights whose name matches this regex" };
        var damp = new Option<double>("--damp") { Description = "int4 gptq: dampening, fraction of the mean Hessian diagonal", DefaultValueFactory = _ => 0.01 };
        var actOrder = new Option<bool>("--act-order") { Description = "int4 gptq: quantize columns by decreasing Hessian diagonal, static groups (default on; --act-order false for input order)", DefaultValueFactory = _ => true };
        var gptqClip = new Option<string>("--gptq-clip") { Description = "int4 gptq: group clipping search objective: saliency (default, GPTQ's own per-column loss), mse, energy (H_jj-weighted)", DefaultValueFactory = _ => "saliency" };
        gptqClip.AcceptOnlyFromAmong("saliency", "mse", "energy");
        var minTokens = new Option<long>("--min-expert-tokens") { Description = "int4 gptq: experts with fewer calibration tokens fall back (gate/up: pooled Hessian, down: rtn)", DefaultValueFactory = _ => 128 };
        var maxShard = new Option<string>("--max-shard-size") { Description = "Largest shard, e.g. 5GB, 500MB", DefaultValueFactory = _ => "5GB" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace the output folder if it exists" };
        var resume = new Option<bool>("--resume") { Description = ResumeHelp.Text };
        var cmd = new Command("quantize", "Re-encode a checkpoint's weights (streaming, sharded, atomic)")
        {
            dir, output, scheme, groupSize, method, calibration, symmetric, asymmetric, targets, include, exclude, damp, actOrder, gptqClip, minTokens, maxShard, overwrite, resume,
        };
        cmd.SetAction(parse => CommandRunner.Run(parse, (loggers, cancellation) =>
        {
            var log = loggers.CreateLogger("quantize");
            if (parse.GetValue(symmetric) && parse.GetValue(asymmetric))
                throw new ArgumentException("--symmetric and --asymmetric exclude each other");
            var s = parse.GetValue(scheme) switch { "fp8-block" => QuantizeScheme.Fp8Block, "bf16" => QuantizeScheme.Bf16, _ => QuantizeScheme.Int4 };
            var options = new QuantizeOptions(s, parse.GetValue(output)!, SizeParser.Parse(parse.GetValue(maxShard)!), parse.GetValue(overwrite))
            {
                Int4 = s != QuantizeScheme.Int4 ? null : new Int4Options(
                    parse.GetValue(groupSize), !parse.GetValue(asymmetric),
                    parse.GetValue(method) == "gptq" ? Int4Method.Gptq : Int4Method.Rtn,
                    parse.GetValue(targets) == "all-linear" ? Int4Targets.AllLinear : Int4Targets.RoutedExperts,
                    parse.GetValue(include), parse.GetValue(exclude), parse.GetValue(calibration), parse.GetValue(minTokens))
                {
                    Gptq = new GptqOptions(parse.GetValue(damp), ActOrder: parse.GetValue(actOrder))
                    {
                        ClipObjective = parse.GetValue(gptqClip) switch { "mse" => GptqClipObjective.Mse, "energy" => GptqClipObjective.InputEnergy, _ => GptqClipObjective.Saliency },
                    },
                },
                Resume = parse.GetValue(resume),
                Fault = CommandRunner.UnitFault,
            };
            using var src = ModelCheckpoint.Open(parse.GetValue(dir)!);
            var result = QuantizePipeline.Run(src, options, log, GlobalOptions.CreateProgress(parse), cancellation);
            log.LogInformation("done: {Tensors} tensors, {Shards} shard(s), {GB:F3} GB, {Secs:F2} s, peak RSS {Rss}",
                result.Tensors, result.Shards, result.BytesWritten / 1e9, result.Elapsed.TotalSeconds, ProcessStats.PeakRssText());
            return CommandRunner.Ok;
        }));
        return cmd;
    }
}
