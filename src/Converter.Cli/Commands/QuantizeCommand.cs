using System.CommandLine;
using Converter.Models;
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
            Description = "fp8-block: DeepSeek's official e4m3 128x128 block layout; bf16: dequantize FP8 to BF16",
            Required = true,
        };
        scheme.AcceptOnlyFromAmong("fp8-block", "bf16");
        var maxShard = new Option<string>("--max-shard-size") { Description = "Largest shard, e.g. 5GB, 500MB", DefaultValueFactory = _ => "5GB" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace the output folder if it exists" };
        var cmd = new Command("quantize", "Re-encode a checkpoint's weights (streaming, sharded, atomic)") { dir, output, scheme, maxShard, overwrite };
        cmd.SetAction(parse => CommandRunner.Run(parse, loggers =>
        {
            var log = loggers.CreateLogger("quantize");
            var options = new QuantizeOptions(
                parse.GetValue(scheme) == "fp8-block" ? QuantizeScheme.Fp8Block : QuantizeScheme.Bf16,
                parse.GetValue(output)!,
                SizeParser.Parse(parse.GetValue(maxShard)!),
                parse.GetValue(overwrite));
            using var src = ModelCheckpoint.Open(parse.GetValue(dir)!);
            var result = QuantizePipeline.Run(src, options, log, GlobalOptions.CreateProgress(parse));
            log.LogInformation("done: {Tensors} tensors, {Shards} shard(s), {GB:F3} GB, {Secs:F2} s, peak RSS {Rss}",
                result.Tensors, result.Shards, result.BytesWritten / 1e9, result.Elapsed.TotalSeconds, ProcessStats.PeakRssText());
            return CommandRunner.Ok;
        }));
        return cmd;
    }
}
