using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Converter.Runtime.Generation;

namespace Converter.Cli.Commands;

/// <summary>
/// <c>converter generate &lt;onnx-dir|model.gguf&gt; --prompt TEXT [--max-new-tokens N] [--temperature T --top-p P
/// --top-k K --seed S] [--chat] [--threads N] [--kv-cache f16|f32] [--json]</c>: streams the generated text to stdout
/// and reports prefill and decode tokens/s on stderr. An ONNX folder (<c>export onnx --kv-cache</c>) runs through
/// onnxruntime-genai, a GGUF file through llama.cpp (node-llama-cpp). Exit 0, or 2 with one line for bad input.
/// </summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var artifact = new Argument<string>("artifact")
        {
            Description = "an `export onnx --kv-cache` folder (onnxruntime-genai: genai_config.json, tokenizer, model.onnx) or a .gguf file (llama.cpp)",
        };
        var prompt = new Option<string>("--prompt", "-p") { Description = "the prompt text", Required = true };
        var maxNew = new Option<string>("--max-new-tokens", "-n") { Description = "tokens to generate at most (default 128; fewer when the model emits its end token)", DefaultValueFactory = _ => "128" };
        var temperature = new Option<string>("--temperature") { Description = "0 (default): greedy, the most likely token every step; above 0: sample", DefaultValueFactory = _ => "0" };
        var topP = new Option<string>("--top-p") { Description = "sampling: keep the most likely tokens whose probabilities add up to P (default 1: all)", DefaultValueFactory = _ => "1" };
        var topK = new Option<string>("--top-k") { Description = "sampling: keep the K most likely tokens first (default 0: off)", DefaultValueFactory = _ => "0" };
        var seed = new Option<string?>("--seed") { Description = "sampling seed (default: a new one each run)" };
        var chat = new Option<bool>("--chat") { Description = "wrap the prompt as one user turn with the model's chat template (tokenizer_config.json; for GGUF tokenizer.chat_template) and add the assistant prefix" };
        var threads = new Option<string>("--threads") { Description = "threads (default 0: the runtime's choice; llama.cpp one per logical processor)", DefaultValueFactory = _ => "0" };
        var kvCache = new Option<string>("--kv-cache") { Description = "GGUF: llama.cpp's KV cache, f16 (default, llama.cpp's defaults) or f32 (flash attention off)", DefaultValueFactory = _ => "f16" };
        kvCache.AcceptOnlyFromAmong("f16", "f32");
        var interopDir = new Option<string?>("--interop-dir") { Description = "GGUF: folder with the node-llama-cpp helper (default: tests/interop of the repository)" };
        var json = new Option<bool>("--json") { Description = "print one JSON object (prompt and generated token ids, text, timings) instead of streaming the text" };
        var cmd = new Command("generate", "Generate text from an ONNX export (onnxruntime-genai) or a GGUF file (llama.cpp), streaming tokens and reporting tokens/s")
        {
            artifact, prompt, maxNew, temperature, topP, topK, seed, chat, threads, kvCache, interopDir, json,
        };
        cmd.SetAction(parse => CommandRunner.Run(parse, loggers =>
        {
            var options = new GenerationOptions(
                MaxNewTokens: Int(parse.GetValue(maxNew)!, "--max-new-tokens"),
                Temperature: Number(parse.GetValue(temperature)!, "--temperature"),
                TopP: Number(parse.GetValue(topP)!, "--top-p"),
                TopK: Int(parse.GetValue(topK)!, "--top-k"),
                Seed: parse.GetValue(seed) is { } s ? Long(s, "--seed") : null,
                Chat: parse.GetValue(chat),
                Threads: Int(parse.GetValue(threads)!, "--threads"));
            options.Validate();
            bool quiet = parse.GetValue(GlobalOptions.Quiet), asJson = parse.GetValue(json);
            string path = parse.GetValue(artifact)!;
            if (!quiet) Console.Error.WriteLine($"loading {path} ...");
            using var generator = TextGenerators.Open(path, options, parse.GetValue(interopDir), parse.GetValue(kvCache)!);
            using var cancel = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cancel.Cancel(); };
            Console.CancelKeyPress += onCancel;
            var stdout = Console.Out;
            GenerationResult result;
            try
            {
                result = generator.Generate(GenerationPrompt.FromText(parse.GetValue(prompt)!), options, asJson ? null : t =>
                {
                    stdout.Write(t.Text);
                    stdout.Flush();
                }, cancel.Token);
            }
            catch (OperationCanceledException)
            {
                Console.Error.WriteLine();
                Console.Error.WriteLine("interrupted");
                return 130;
            }
            finally
            {
                Console.CancelKeyPress -= onCancel;
            }
            if (asJson)
            {
                stdout.WriteLine(result.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            }
            else
            {
                stdout.WriteLine();
            }
            if (!quiet)
                Console.Error.WriteLine(
                    $"prompt {result.PromptTokens.Length} tokens: prefill {result.PrefillSeconds:F3} s ({Rate(result.PrefillTokensPerSecond)} tokens/s); " +
                    $"generated {result.Tokens.Length} tokens: decode {Rate(result.DecodeTokensPerSecond)} tokens/s; stop: {result.StopReason}; {result.Runtime}");
            return CommandRunner.Ok;
        }));
        return cmd;
    }

    private static string Rate(double r) => double.IsFinite(r) ? r.ToString(r >= 100 ? "F0" : "F1", CultureInfo.InvariantCulture) : "n/a";

    private static int Int(string s, string name) =>
        int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : throw new ArgumentException($"{name} '{s}': not an integer");

    private static long Long(string s, string name) =>
        long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) ? v : throw new ArgumentException($"{name} '{s}': not an integer");

    private static double Number(string s, string name) =>
        double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v) ? v : throw new ArgumentException($"{name} '{s}': not a number");
}
