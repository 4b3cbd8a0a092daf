using System.CommandLine;
using Converter.Calibration;
using Converter.Models;
using Converter.Decoder.Onnx;
using Converter.Pipelines;
using Converter.Sharding;
using Microsoft.Extensions.Logging;

namespace Converter.Cli.Commands;

public static class ShardCommand
{
    public static Command Create()
    {
        var dir = new Argument<string?>("model-dir") { Description = "Source model folder (BF16, DeepSeek FP8 or packed INT4 safetensors)", Arity = ArgumentArity.ZeroOrOne };
        var output = new Option<string?>("--output", "-o") { Description = "Output folder: rank-XXXXX/ checkpoints and placement.json (must not exist unless --overwrite)" };
        var ranks = new Option<int>("--ranks") { Description = "Expert-parallel ranks; must divide the routed experts (plus --redundant)" };
        var perNode = new Option<int>("--ranks-per-node") { Description = "Ranks per node (default: all on one node); balanced placement then keeps each expert group on one node" };
        var placement = new Option<string>("--placement") { Description = "contiguous: rank i gets experts [i*E/N, (i+1)*E/N); balanced: from calibration routing counts", DefaultValueFactory = _ => "contiguous" };
        placement.AcceptOnlyFromAmong("contiguous", "balanced");
        var calibration = new Option<string?>("--calibration") { Description = "Calibration folder (converter calibrate) whose routing counts drive balanced placement" };
        var redundant = new Option<int>("--redundant") { Description = "Extra replicas per layer of the hottest experts (EPLB-style, tokens split evenly between replicas)" };
        var heldOut = new Option<string?>("--held-out") { Description = "Routing of held-out tokens for the load report: a calibration folder or a golden eval.safetensors (route_topk_idx)" };
        var heldOutSeqs = new Option<string?>("--held-out-sequences") { Description = "Sequence range of --held-out to use, e.g. 4:8 (start inclusive, end exclusive)" };
        var maxShard = new Option<string>("--max-shard-size") { Description = "Largest safetensors shard per rank, e.g. 5GB", DefaultValueFactory = _ => "5GB" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace the output folder if it exists" };
        var onnx = new Option<bool>("--onnx")
        {
            Description = "Also write rank-XXXXX/model.onnx per rank: the full graph whose MoE computes only the rank's experts " +
                "(routing identical on every rank); the ranks' partial MoE outputs sum to the whole model (converter verify <out-dir> runs them)",
        };
        var onnxWeights = new Option<string>("--onnx-weights") { Description = "Weights of the rank ONNX models: fp32, fp8 (DeepSeek 128x128 blocks) or int4 " +
            "(routed experts through QMoE: a packed INT4 source's codes exactly, otherwise RTN group 32 symmetric as export onnx --weights int4)", DefaultValueFactory = _ => "fp32" };
        onnxWeights.AcceptOnlyFromAmong("fp32", "fp8", "int4");
        var check = new Option<string?>("--check") { Description = "Instead of sharding: check a sharded output folder against --source byte for byte" };
        var source = new Option<string?>("--source") { Description = "With --check: the source model folder" };
        var resume = new Option<bool>("--resume") { Description = ResumeHelp.Text };
        var cmd = new Command("shard", "Split routed experts across expert-parallel ranks (placement.json, one checkpoint per rank, load report)")
        {
            dir, output, ranks, perNode, placement, calibration, redundant, heldOut, heldOutSeqs, maxShard, overwrite, onnx, onnxWeights, check, source, resume,
        };
        cmd.SetAction(parse => CommandRunner.Run(parse, (loggers, cancellation) =>
        {
            var log = loggers.CreateLogger("shard");
            if (parse.GetValue(check) is { } checkDir)
            {
                var src = parse.GetValue(source) ?? throw new ArgumentException("--check needs --source <model-dir>");
                var r = ShardChecker.Check(checkDir, src);
                foreach (var p in r.Problems) Console.Error.WriteLine($"mismatch: {p}");
                Console.WriteLine(r.Ok
                    ? $"ok: {r.SourceTensors} source tensors found byte for byte in {r.RankCopies} rank copies ({r.BytesCompared / 1e6:F1} MB compared)"
                    : $"FAILED: {r.Problems.Count} problem(s) in {checkDir}");
                return r.Ok ? CommandRunner.Ok : CommandRunner.Failed;
            }
            var modelDir = parse.GetValue(dir) ?? throw new ArgumentException("model-dir is required (or --check <out-dir> --source <model-dir>)");
            var outDir = parse.GetValue(output) ?? throw new ArgumentException("--output is required");
            if (parse.GetResult(ranks) == null) throw new ArgumentException("--ranks is required");
            var method = parse.GetValue(placement) == "balanced" ? PlacementMethod.Balanced : PlacementMethod.Contiguous;
            if (parse.GetResult(onnxWeights) is { Implicit: false } && !parse.GetValue(onnx))
                throw new ArgumentException("--onnx-weights needs --onnx");

            using var ckpt = ModelCheckpoint.Open(modelDir);
            var calDir = parse.GetValue(calibration);
            var cal = calDir == null ? null : CalibrationData.Load(calDir);
            var options = new PlacementOptions(parse.GetValue(ranks), parse.GetValue(perNode), method, parse.GetValue(redundant));
            var plan = PlacementPlanner.Plan(ckpt.Architecture, options, cal, calDir);

            LoadReport? report = null;
            if (parse.GetValue(heldOut) is { } heldPath)
            {
                var (first, end) = ParseRange(parse.GetValue(heldOutSeqs));
                var trace = RoutingTrace.Load(heldPath, ckpt.Architecture, first, end);
                report = PlacementComparison.Build(ckpt.Architecture, plan, cal, trace);
            }
            var result = ShardPipeline.Run(ckpt, plan, new ShardOptions(outDir, SizeParser.Parse(parse.GetValue(maxShard)!), parse.GetValue(overwrite),
                report == null ? null : staging => report.Write(staging),
                parse.GetValue(onnx) ? Enum.Parse<OnnxWeightFormat>(parse.GetValue(onnxWeights)!, ignoreCase: true) : null)
                { Resume = parse.GetValue(resume), Fault = CommandRunner.UnitFault },
                log, GlobalOptions.CreateProgress(parse), cancellation);
            if (report != null)
            {
                Console.WriteLine(report.ToMarkdown());
                log.LogInformation("load report: {Md}, {Svg}", Path.Combine(result.Output, LoadReport.MarkdownName), Path.Combine(result.Output, LoadReport.SvgName));
            }
            log.LogInformation("done: {Ranks} ranks, {Tensors} source tensors, read {InGB:F3} GB, wrote {OutGB:F3} GB, {Secs:F2} s, peak RSS {Rss}",
                result.Ranks, result.SourceTensors, result.BytesRead / 1e9, result.BytesWritten / 1e9, result.Elapsed.TotalSeconds, ProcessStats.PeakRssText());
            return CommandRunner.Ok;
        }));
        return cmd;
    }

    private static (int First, int End) ParseRange(string? text)
    {
        if (string.IsNullOrEmpty(text)) return (0, -1);
        var parts = text.Split(':');
        if (parts.Length == 2 && int.TryParse(parts[0], out var a) && int.TryParse(parts[1], out var b) && a >= 0 && b > a) return (a, b);
        throw new ArgumentException($"--held-out-sequences '{text}' is not START:END with 0 <= START < END");
    }
}
