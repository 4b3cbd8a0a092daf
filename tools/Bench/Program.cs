using Converter.Tools.Bench;

// Each benchmark prints a Markdown table for BENCHMARKS.md. Benchmarks are never tests.
var benches = new Dictionary<string, (string Help, Func<string[], int> Run)>
{
    ["quantize"] = ("quantize fp8-block and bf16 on a synthetic checkpoint against cp of the output bytes", QuantizeBench.Run),
    ["logfmt"] = ("LogFMT-n encode/decode and activation-format throughput against a memory copy", LogFmtBench.Run),
    ["onnx"] = ("ONNX export time/RSS at DeepSeek-V3 shapes and ONNX Runtime tokens/s with top-k 2, 4, 8", OnnxBench.Run),
    ["ggml-quant"] = ("ggml block quantizers (every GGUF type, without and with importance) vs ggml's own", GgmlQuantBench.Run),
    ["onnx-scaling"] = ("ONNX export time/peak RSS per checkpoint size, and ORT tokens/s with top-k 2, 4, 8", OnnxScalingBench.Run),
    ["gguf-export"] = ("export gguf time and peak RSS per output type on a synthetic checkpoint against cp of the output bytes", GgufExportBench.Run),
    ["verify"] = ("golden comparison (softmax/KL) throughput", VerifyBench.Run),
    ["shard"] = ("expert-parallel sharding of a synthetic checkpoint (contiguous, balanced +R) against cp of the output bytes", ShardBench.Run),
    ["int4-quant"] = ("INT4 RTN (MSE clip) and GPTQ throughput on a 2048x7168 expert weight, 1 and 2 threads", Int4QuantBench.Run),
    ["int4-pipeline"] = ("quantize --scheme int4 (RTN, and GPTQ with a calibration folder) on a checkpoint: time, peak RSS, against cp of the output", Int4PipelineBench.Run),
    ["expert-forward"] = ("calibration's float32 expert forward at DeepSeek-V3 width: blocked kernel against one dot per output, 1 and 2 threads", ExpertForwardBench.Run),
    ["fp8-codec"] = ("FP8 block quantize (bf16->fp8) and dequantize (fp8->bf16) of a 7168x2048 weight, 1 and 2 threads, against Span copy", Fp8CodecBench.Run),
    ["decode"] = ("decode tokens/s at context 0/512/2k of a synthetic mid-size DeepSeek-V3, fp32 and int4: onnxruntime-genai with the KV cache, the full-sequence graph per token, llama.cpp", DecodeBench.Run),
    ["v4-prefill"] = ("DeepSeek-V4 prefill (512, 2k, 8k tokens) on ONNX Runtime: the sparse V4 attention against full attention, time and peak RSS", V4PrefillBench.Run),
    ["hash"] = ("SHA-256, XXH64 and XXH3-64 throughput: the manifest and resume journal hash", HashBench.Run),
    ["fp4-codec"] = ("DeepSeek-V4 FP4 (1x32 E8M0) and FP8 (128x128 E8M0) quantize/dequantize of a 2048x4096 weight, 1 and 2 threads, against Span copy", Fp4CodecBench.Run),
};
if (args.Length == 0 || !benches.TryGetValue(args[0], out var bench))
{
    Console.WriteLine("bench <name> [options]   (dotnet run --project tools/Bench -c Release -- <name> --help)");
    foreach (var (name, b) in benches) Console.WriteLine($"  {name,-12} {b.Help}");
    return args.Length == 0 ? 0 : 2;
}
return bench.Run(args[1..]);
