using System.Diagnostics;
using Converter.Decoder.Onnx;
using Converter.Runtime;
using Converter.Runtime.Generation;
using Converter.Tools.Synth;

namespace Converter.Tools.Bench;

/// <summary>
/// Decode speed of a synthetic mid-size DeepSeek-V3 model (MLA with DeepSeek-V3's latent widths, tools/Synth):
/// tokens/s of one-token decode steps after a context of 0, 512 and 2048 tokens, for fp32 and INT4 weights, through
/// (a) the `export onnx --kv-cache` folder in onnxruntime-genai (what `converter generate` runs), (b) the plain
/// full-sequence ONNX graph re-run over the whole prefix for every token, and (c) llama.cpp (node-llama-cpp) on the
/// GGUF export of the same weights at the same bits (F32; INT4 g32 symmetric = Q4_0, codes passed through), all on the
/// same threads. INT4 variants: MatMulNBits accuracy_level 0 (the export's default) and 4 (`--int4-accuracy-level 4`).
/// </summary>
public static class DecodeBench
{
    private sealed record Variant(string Label, string Bits, string OnnxKv, string? OnnxFull, string? Gguf);

    public static int Run(string[] args)
    {
        string work = "/tmp/converter-decode-bench";
        string? model = null;
        int[] contexts = [0, 512, 2048];
        int newTokens = 16, fullSteps = 2;
        int[] threadCounts = [1, 2];
        bool llama = true, full = true;
        string[] llamaKv = ["f16", "f32"];
        int[] accuracyLevels = [0, 4];
        string[] formats = ["fp32", "int4"];
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--model": model = args[++i]; break;
                case "--work": work = args[++i]; break;
                case "--contexts": contexts = args[++i].Split(',').Select(int.Parse).ToArray(); break;
                case "--new-tokens": newTokens = int.Parse(args[++i]); break;
                case "--threads": threadCounts = args[++i].Split(',').Select(int.Parse).ToArray(); break;
                case "--full-steps": fullSteps = int.Parse(args[++i]); break;
                case "--formats": formats = args[++i].Split(','); break;
                case "--accuracy-levels": accuracyLevels = args[++i].Split(',').Select(int.Parse).ToArray(); break;
                case "--llama-kv": llamaKv = args[++i].Split(','); break;
                case "--no-llama": llama = false; break;
                case "--no-full": full = false; break;
                default:
                    Console.WriteLine("decode [--model <synthetic checkpoint>] [--work DIR] [--contexts 0,512,2048] [--new-tokens 16] [--threads 1,2]\n" +
                                      "       [--full-steps 2] [--formats fp32,int4[,int4-g128]] [--accuracy-levels 0,4] [--llama-kv f16,f32] [--no-llama] [--no-full]\n" +
                                      "  without --model a mid-size DeepSeek-V3 checkpoint is synthesized into <work>/ckpt (hidden 2048, 16 heads,\n" +
                                      "  q_lora 768, kv_lora 512 + rope 64 (the 576-value latent), 4 layers (1 dense), 16 experts top-4 of 512, vocab 256:\n" +
                                      "  byte-level, so GGUF needs no tokenizer.json and the head is a small share, as at full scale)");
                    return args[i] is "--help" or "-h" ? 0 : 2;
            }
        }
        Directory.CreateDirectory(work);
        if (model == null)
        {
            model = Path.Combine(work, "ckpt");
            if (!File.Exists(Path.Combine(model, "config.json")))
            {
                var o = new SynthOptions
                {
                    Layers = 4, DenseLayers = 1, Experts = 16, ExpertsPerToken = 4, Groups = 4, TopkGroups = 2, Hidden = 2048,
                    QLoraRank = 768, KvLoraRank = 512, Heads = 16, NopeDim = 128, RopeDim = 64, VDim = 128, Intermediate = 4096,
                    MoeIntermediate = 512, Vocab = 256,
                };
                Log($"synthesizing {model}");
                SyntheticCheckpoint.Write(model, o, overwrite: true);
            }
        }
        var variants = new List<Variant>();
        foreach (var f in formats)
        {
            if (f == "fp32")
            {
                variants.Add(new Variant("fp32", "fp32 / F32",
                    Convert(work, "onnx-fp32-kv", "export", "onnx", model, "-o", "{out}", "--kv-cache"),
                    full ? Convert(work, "onnx-fp32", "export", "onnx", model, "-o", "{out}") : null,
                    llama ? Convert(work, "f32.gguf", "export", "gguf", model, "-o", "{out}", "--type", "f32") : null));
            }
            else if (f == "int4")
            {
                // INT4 g32 symmetric on every projection (embeddings, router, norms and lm_head stay float): ONNX takes the
                // packed codes as they are (QMoE / MatMulNBits), GGUF Q4_0 passes them through (output.weight stays F32).
                string q = Convert(work, "int4-ckpt", "quantize", model, "-o", "{out}", "--scheme", "int4", "--group-size", "32", "--targets", "all-linear");
                string kv = Convert(work, "onnx-int4-kv", "export", "onnx", q, "-o", "{out}", "--weights", "int4", "--kv-cache");
                string? fullDir = full ? Convert(work, "onnx-int4", "export", "onnx", q, "-o", "{out}", "--weights", "int4") : null;
                string? gguf = llama ? Convert(work, "q4_0.gguf", "export", "gguf", q, "-o", "{out}", "--type", "q4_0", "--output-type", "f32") : null;
                foreach (int level in accuracyLevels)
                {
                    if (level == 0) variants.Add(new Variant("int4 (MatMulNBits accuracy_level 0)", "int4 g32 / Q4_0", kv, fullDir, gguf));
                    else variants.Add(new Variant($"int4 (MatMulNBits accuracy_level {level})", "int4 g32 / Q4_0",
                        Convert(work, $"onnx-int4-kv-acc{level}", "export", "onnx", q, "-o", "{out}", "--weights", "int4", "--kv-cache", "--int4-accuracy-level", level.ToString()),
                        full ? Convert(work, $"onnx-int4-acc{level}", "export", "onnx", q, "-o", "{out}", "--weights", "int4", "--int4-accuracy-level", level.ToString()) : null,
                        null));
                }
            }
            else if (f == "int4-g128")
            {
                // QMoE and MatMulNBits at block 128 (ONNX only: Q4_0 has 32-value blocks)
                string q = Convert(work, "int4-g128-ckpt", "quantize", model, "-o", "{out}", "--scheme", "int4", "--group-size", "128", "--targets", "all-linear");
                foreach (int level in accuracyLevels)
                    variants.Add(new Variant($"int4 g128 (MatMulNBits accuracy_level {level})", "int4 g128",
                        Convert(work, $"onnx-int4-g128-kv-acc{level}", "export", "onnx", q, "-o", "{out}", "--weights", "int4", "--kv-cache", "--int4-accuracy-level", level.ToString()),
                        null, null));
            }
            else throw new ArgumentException($"--formats: unknown '{f}' (fp32, int4, int4-g128)");
        }

        Console.WriteLine($"machine: {Environment.ProcessorCount} logical cores, load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]} at start; " +
                          $"model {model}; {newTokens} new tokens per context (decode rate over the last {newTokens - 1}); full-sequence re-run: mean of {fullSteps} steps at the most threads");
        Console.WriteLine();
        Console.WriteLine("| weights | runtime | threads | context | prefill tokens/s | decode tokens/s | decode tokens per CPU-second | ms/token |");
        Console.WriteLine("|---|---|---:|---:|---:|---:|---:|---:|");
        var tokens = new int[contexts.Max() + newTokens + fullSteps + 1];
        int vocab = Converter.Models.ConfigJson.Load(model).Int("vocab_size");
        for (int i = 0; i < tokens.Length; i++) tokens[i] = (int)((i * 2654435761L + 17) % vocab);
        foreach (var v in variants)
        foreach (int threads in threadCounts)
        {
            var options = new GenerationOptions(MaxNewTokens: newTokens, Threads: threads);
            using (var g = new GenAiTextGenerator(v.OnnxKv, threads))
                foreach (int c in contexts)
                {
                    var r = g.Generate(GenerationPrompt.FromTokens(tokens[..Math.Max(c, 1)]), options);
                    Row(v.Label, "onnxruntime-genai, KV cache", threads, c, r.PrefillTokensPerSecond, r.DecodeTokensPerSecond, r.DecodeTokensPerCpuSecond);
                }
            if (v.OnnxFull != null && threads == threadCounts.Max())
            {
                using var runner = new OnnxArtifactRunner(v.OnnxFull, new OnnxRunnerOptions(IntraOpThreads: threads));
                foreach (int c in contexts)
                {
                    var times = new List<double>();
                    using var self = Process.GetCurrentProcess();
                    self.Refresh();
                    var cpu0 = self.TotalProcessorTime;
                    for (int s = 0; s < fullSteps; s++)
                    {
                        int n = Math.Max(c, 1) + s;
                        var clock = Stopwatch.StartNew();
                        runner.Run(tokens[..n], 1, n, false, false);
                        times.Add(clock.Elapsed.TotalSeconds);
                    }
                    self.Refresh();
                    Row(v.Label, "ONNX Runtime, full sequence re-run per token", threads, c, double.NaN, fullSteps / times.Sum(),
                        fullSteps / (self.TotalProcessorTime - cpu0).TotalSeconds);
                }
            }
            if (v.Gguf != null)
                foreach (var kvType in llamaKv)
                {
                    var g = new LlamaCppTextGenerator(v.Gguf, threads, kvCache: kvType);
                    foreach (int c in contexts)
                    {
                        var r = g.Generate(GenerationPrompt.FromTokens(tokens[..Math.Max(c, 1)]), options);
                        Row(v.Label, $"llama.cpp {(kvType == "f16" ? "(F16 KV cache, defaults)" : "(F32 KV cache, no flash attention)")}", threads, c,
                            r.PrefillTokensPerSecond, r.DecodeTokensPerSecond, r.DecodeTokensPerCpuSecond);
                        if (c == contexts[0]) Log(r.Runtime);
                    }
                }
        }
        Console.WriteLine();
        Console.WriteLine($"load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]} at the end");
        return 0;
    }

    private static void Row(string weights, string runtime, int threads, int context, double prefill, double decode, double perCpu) =>
        Console.WriteLine($"| {weights} | {runtime} | {threads} | {context} | {Fmt(prefill)} | {Fmt(decode)} | {Fmt(perCpu)} | {(double.IsFinite(decode) ? (1000 / decode).ToString("F1") : "-")} |");

    private static string Fmt(double d) => double.IsFinite(d) ? d.ToString(d >= 100 ? "F0" : "F2") : "-";

    private static void Log(string s) => Console.Error.WriteLine($"[decode-bench] {s}");

    /// <summary>Runs `converter ...` once to make <paramref name="name"/> under <paramref name="work"/> (kept between runs).</summary>
    private static string Convert(string work, string name, params string[] args)
    {
        string output = Path.Combine(work, name);
        if (File.Exists(output) || File.Exists(Path.Combine(output, "model.onnx")) || File.Exists(Path.Combine(output, "config.json"))) return output;
        var a = args.Select(x => x == "{out}" ? output : x).Append("-q").ToArray();
        Log("converter " + string.Join(' ', a));
        var m = CommandTimer.Run(CommandTimer.ConverterPath, a);
        if (m.ExitCode != 0) throw new InvalidOperationException($"converter {string.Join(' ', a)} failed: {m.StdErr}");
        Log($"  {m.Seconds:F0} s, peak RSS {m.PeakRssBytes / 1e9:F2} GB");
        return output;
    }
}
