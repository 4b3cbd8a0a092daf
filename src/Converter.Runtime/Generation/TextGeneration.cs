using System.Text.Json;
using System.Text.Json.Nodes;

namespace Converter.Runtime.Generation;

/// <summary>How to generate. Temperature 0 is greedy (the highest logit every step); above 0 samples.</summary>
/// <param name="TopP">Nucleus sampling threshold (1: off); only when sampling.</param>
/// <param name="TopK">Keep the K most likely tokens before top-p (0: off); only when sampling.</param>
/// <param name="Seed">Sampling seed; null draws one.</param>
/// <param name="Chat">Wrap the prompt as one user message with the model's chat template.</param>
/// <param name="Threads">Intra-op / llama.cpp threads; 0 lets the runtime choose.</param>
public sealed record GenerationOptions(int MaxNewTokens = 128, double Temperature = 0, double TopP = 1, int TopK = 0,
    long? Seed = null, bool Chat = false, int Threads = 0)
{
    public bool Greedy => Temperature <= 0;

    public void Validate()
    {
        if (MaxNewTokens < 1) throw new ArgumentException($"--max-new-tokens {MaxNewTokens}: must be at least 1");
        if (!(Temperature >= 0) || double.IsInfinity(Temperature)) throw new ArgumentException($"--temperature {Temperature}: must be 0 (greedy) or positive");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"--top-p {TopP}: must be in (0, 1]");
        if (TopK < 0) throw new ArgumentException($"--top-k {TopK}: must be 0 (off) or positive");
        if (Threads < 0) throw new ArgumentException($"--threads {Threads}: must be 0 (runtime's choice) or positive");
    }
}

/// <summary>One generated token as it streams: its id and the text it completes (may be empty mid-character).</summary>
public readonly record struct GeneratedToken(int Id, string Text);

/// <summary>
/// A finished generation. Prefill is the time from the prompt to the first generated token (the prompt's forward pass
/// and the first pick); decode the time of every further token (one forward pass with the cache each). The CPU
/// seconds are the runtime process's (all its threads) over the same spans: on a shared machine tokens per CPU-second
/// of a one-thread run is the figure that other people's load does not move.
/// </summary>
public sealed record GenerationResult(string Runtime, int[] PromptTokens, int[] Tokens, string Text, double PrefillSeconds,
    double DecodeSeconds, string StopReason)
{
    public double PrefillCpuSeconds { get; init; } = double.NaN;
    public double DecodeCpuSeconds { get; init; } = double.NaN;
    public double DecodeTokensPerCpuSecond => Tokens.Length > 1 && DecodeCpuSeconds > 0 ? (Tokens.Length - 1) / DecodeCpuSeconds : double.NaN;

    public double PrefillTokensPerSecond => PrefillSeconds > 0 ? PromptTokens.Length / PrefillSeconds : double.NaN;
    public double DecodeTokensPerSecond => Tokens.Length > 1 && DecodeSeconds > 0 ? (Tokens.Length - 1) / DecodeSeconds : double.NaN;

    public JsonObject ToJson() => new()
    {
        ["runtime"] = Runtime,
        ["prompt_tokens"] = new JsonArray(PromptTokens.Select(t => (JsonNode)t).ToArray()),
        ["tokens"] = new JsonArray(Tokens.Select(t => (JsonNode)t).ToArray()),
        ["text"] = Text,
        ["stop_reason"] = StopReason,
        ["prefill_seconds"] = PrefillSeconds,
        ["decode_seconds"] = DecodeSeconds,
        ["prefill_tokens_per_second"] = Finite(PrefillTokensPerSecond),
        ["decode_tokens_per_second"] = Finite(DecodeTokensPerSecond),
        ["prefill_cpu_seconds"] = Finite(PrefillCpuSeconds),
        ["decode_cpu_seconds"] = Finite(DecodeCpuSeconds),
    };

    private static JsonNode? Finite(double d) => double.IsFinite(d) ? d : null;
}

/// <summary>A prompt: text (tokenized by the artifact's tokenizer, wrapped in its chat template when
/// <see cref="GenerationOptions.Chat"/>) or token ids as they are.</summary>
public sealed record GenerationPrompt(string? Text, int[]? Tokens)
{
    public static GenerationPrompt FromText(string text) => new(text, null);
    public static GenerationPrompt FromTokens(int[] tokens) => new(null, tokens);
}

/// <summary>Generates text from a deployable artifact: an ONNX export folder or a GGUF file.</summary>
public interface ITextGenerator : IDisposable
{
    /// <summary>Runtime and artifact, for the report.</summary>
    string Description { get; }

    /// <summary>Generates, calling <paramref name="onToken"/> as each token is picked.</summary>
    GenerationResult Generate(GenerationPrompt prompt, GenerationOptions options, Action<GeneratedToken>? onToken = null,
        CancellationToken cancellation = default);
}

/// <summary>Opens the generator for a path: a folder (or model.onnx) through onnxruntime-genai, a .gguf file through llama.cpp.</summary>
public static class TextGenerators
{
    public static ITextGenerator Open(string path, GenerationOptions options, string? interopDirectory = null, string llamaKvCache = "f16")
    {
        if (Directory.Exists(path)) return new GenAiTextGenerator(path, options.Threads);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such ONNX folder or GGUF file", path);
        return Path.GetExtension(path).ToLowerInvariant() switch
        {
            ".onnx" => new GenAiTextGenerator(Path.GetDirectoryName(Path.GetFullPath(path))!, options.Threads),
            ".gguf" => new LlamaCppTextGenerator(path, options.Threads, interopDirectory, llamaKvCache),
            var ext => throw new ArgumentException($"{path}: not an ONNX export folder or a .gguf file (extension '{ext}')"),
        };
    }

    /// <summary>The chat template of a Hugging Face tokenizer_config.json (or chat_template.jinja beside it); null if none.</summary>
    public static string? ChatTemplate(string folder)
    {
        string jinja = Path.Combine(folder, "chat_template.jinja");
        string config = Path.Combine(folder, "tokenizer_config.json");
        if (File.Exists(config))
        {
            try
            {
                if (JsonNode.Parse(File.ReadAllText(config)) is JsonObject o && o["chat_template"] is { } t)
                {
                    if (t is JsonValue v && v.GetValueKind() == JsonValueKind.String) return v.GetValue<string>();
                    // a list of named templates: the "default" one
                    if (t is JsonArray a)
                        foreach (var e in a)
                            if (e?["name"]?.GetValue<string>() == "default") return e["template"]?.GetValue<string>();
                }
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{config}: not valid JSON ({e.Message})");
            }
        }
        return File.Exists(jinja) ? File.ReadAllText(jinja) : null;
    }

    /// <summary>The chat messages of one user turn, as the templates expect them.</summary>
    public static string UserMessages(string prompt) =>
        new JsonArray(new JsonObject { ["role"] = "user", ["content"] = prompt }).ToJsonString();
}
