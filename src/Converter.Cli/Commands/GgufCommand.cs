using System.CommandLine;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Microsoft.Extensions.Logging;

namespace Converter.Cli.Commands;

public static class GgufCommand
{
    public static Command Create()
    {
        var dir = new Argument<string>("model-dir") { Description = "Source model folder (BF16, F16, F32 or DeepSeek FP8 safetensors)" };
        var output = new Option<string>("--output", "-o")
        {
            Description = "Output .gguf file (must not exist unless --overwrite); with --split-max-size/--split-max-tensors the parts are NAME-00001-of-0000N.gguf",
            Required = true,
        };
        var type = new Option<string>("--type")
        {
            Description = "llama.cpp file type, any case: f32, f16, bf16, q8_0, and llama-quantize's q6_k, q5_k_m, q5_k_s, q5_1, q5_0, q4_k_m, q4_k_s, " +
                          "iq4_nl, q4_0, iq4_xs, q3_k_l, q3_k_m, q3_k_s, q2_k with its per-tensor rules (output, attention V, ffn_down by layer, " +
                          "8-expert rules) and its fallbacks for rows that are not whole blocks (q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0, " +
                          "q2_k/q3_k -> q4_0, iq4_xs -> iq4_nl, then f16); q4_k, q5_k: every quantizable weight that type (llama-quantize " +
                          "Q4_K_S/Q5_K_S --pure; llama-quantize's own Q4_K/Q5_K mean the _M mixes); mxfp4_moe: what llama.cpp's converter " +
                          "writes from block-scaled checkpoints (routed experts mxfp4, FP8 weights q8_0, the rest as stored). Norms, routers and " +
                          "biases stay f32",
            DefaultValueFactory = _ => "f16",
        };
        // a usage error (with the pointer to --help), as AcceptOnlyFromAmong gives, but in any case
        type.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<string>() is { } v && GgufFileTypes.Find(v) == null)
                r.AddError($"unknown GGUF type '{v}' (one of {GgufFileTypes.Names})");
        });
        var tensorType = new Option<string[]>("--tensor-type")
        {
            Description = "REGEX=TYPE, repeatable: tensors whose GGUF name the regex matches anywhere get TYPE instead of the file type's rules " +
                          "(first match wins; the fallback for rows that are not whole blocks still applies; ignored for f32/f16/bf16, as llama-quantize)",
            AllowMultipleArgumentsPerToken = false,
        };
        var outputType = new Option<string?>("--output-type") { Description = "ggml type of output.weight (llama-quantize --output-tensor-type)" };
        var embeddingType = new Option<string?>("--token-embedding-type") { Description = "ggml type of token_embd.weight (llama-quantize --token-embedding-type)" };
        var pure = new Option<bool>("--pure") { Description = "No per-tensor rules: every quantizable weight the file type's default type (llama-quantize --pure)" };
        var splitSize = new Option<string?>("--split-max-size")
        {
            Description = "Write llama.cpp's split files (llama-gguf-split's format, loaded from the first part) of at most this many tensor bytes each: " +
                          "50G, 300M (decimal, as llama-gguf-split), 2GiB, or bytes",
        };
        var splitTensors = new Option<int?>("--split-max-tensors") { Description = "Write split files of at most N tensors each (with or without --split-max-size)" };
        var dryRun = new Option<bool>("--dry-run") { Description = "Print every tensor's ggml type and shape and the total size; write nothing" };
        var name = new Option<string?>("--name") { Description = "general.name (default: the folder name)" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace the output file(s) if they exist" };
        var imatrix = new Option<string?>("--imatrix")
        {
            Description = "Importance matrix (llama-imatrix's GGUF or legacy .dat, or calibrate --imatrix's): every quantized tensor with an entry is " +
                          "quantized with its weights (per expert for 3-D expert tensors), as llama-quantize --imatrix; tensors without one are quantized without",
        };
        var force = new Option<bool>("--force") { Description = "Export even where llama.cpp cannot represent the checkpoint exactly" };
        var cmd = new Command("gguf", "Export a checkpoint to GGUF for llama.cpp (the family's llama.cpp architecture: deepseek2, qwen3moe, deepseek4; " +
                                      "llama-quantize's type mixes; ggml-exact quantizers; streaming, atomic)")
        {
            dir, output, type, tensorType, outputType, embeddingType, pure, splitSize, splitTensors, dryRun, name, overwrite, force, imatrix,
        };
        cmd.SetAction(parse => CommandRunner.Run(parse, loggers =>
        {
            var log = loggers.CreateLogger("gguf");
            var q = GgufQuantization.Parse(parse.GetValue(type)!);
            q = q with
            {
                Pure = q.Pure || parse.GetValue(pure),
                OutputType = GgmlTypeOption(parse.GetValue(outputType), "--output-type"),
                TokenEmbeddingType = GgmlTypeOption(parse.GetValue(embeddingType), "--token-embedding-type"),
                Overrides = (parse.GetValue(tensorType) ?? []).Select(GgufTensorTypeOverride.Parse).ToArray(),
            };
            int? maxTensors = parse.GetValue(splitTensors);
            if (maxTensors is <= 0) throw new ArgumentException($"--split-max-tensors {maxTensors}: must be at least 1");
            var options = new GgufExportOptions(parse.GetValue(output)!, q, parse.GetValue(name), parse.GetValue(overwrite))
            {
                Force = parse.GetValue(force),
                SplitMaxBytes = parse.GetValue(splitSize) is { } s ? SizeParser.Parse(s) : 0,
                SplitMaxTensors = maxTensors ?? 0,
                Imatrix = parse.GetValue(imatrix) is { } im ? (ImatrixFile.Read(im), im) : null,
            };
            using var src = ModelCheckpoint.Open(parse.GetValue(dir)!);
            if (parse.GetValue(dryRun))
            {
                PrintTypes(src, options, parse.InvocationConfiguration.Output);
                return CommandRunner.Ok;
            }
            var result = GgufExportPipeline.Run(src, options, log, GlobalOptions.CreateProgress(parse));
            log.LogInformation("done: {Tensors} tensors in {Files} file(s), {GB:F3} GB, {Secs:F2} s, peak RSS {Rss}",
                result.Tensors, result.Files.Count, result.BytesWritten / 1e9, result.Elapsed.TotalSeconds, ProcessStats.PeakRssText());
            return CommandRunner.Ok;
        }));
        return cmd;
    }

    private static GgmlType? GgmlTypeOption(string? value, string option) => value == null ? null
        : GgufFileTypes.ParseGgmlType(value) ?? throw new ArgumentException($"{option} '{value}': unknown ggml type");

    /// <summary>One line per tensor (name, type, ggml shape, bytes) in llama.cpp's order, then the totals.</summary>
    private static void PrintTypes(ModelCheckpoint src, GgufExportOptions options, TextWriter output)
    {
        var plan = GgufExportPipeline.Plan(src, options.ModelName);
        var typed = GgufExportPipeline.PlanTypes(src, plan, options).ToList();
        typed.Sort((a, b) => GgufTypePolicy.LlamaOrder(a.Tensor.Name, b.Tensor.Name));
        long bytes = 0, values = 0;
        foreach (var (t, type) in typed)
        {
            long n = 1;
            foreach (var d in t.Dimensions) n *= d;
            long size = GgmlTypeInfo.ByteSize(type, n);
            bytes += size;
            values += n;
            output.WriteLine($"{t.Name,-40} {type,-7} {string.Join("x", t.Dimensions),-16} {size,12}");
        }
        output.WriteLine($"{typed.Count} tensors, {bytes} bytes, {bytes * 8.0 / values:F2} bits per weight ({options.Quantization.FileType})");
    }
}
