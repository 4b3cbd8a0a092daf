using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.ML.OnnxRuntimeGenAI;

namespace Converter.Runtime.Generation;

/// <summary>
/// Generation from an <c>export onnx --kv-cache</c> folder through onnxruntime-genai 0.18.0 (NuGet
/// Microsoft.ML.OnnxRuntimeGenAI), unmodified: genai_config.json, the tokenizer and model.onnx as exported. Its native
/// library loads the ONNX Runtime of the application folder (Microsoft.ML.OnnxRuntime 1.31.1, the version the rest of
/// the tool uses).
/// </summary>
public sealed class GenAiTextGenerator : ITextGenerator
{
    private readonly string _folder;
    private readonly Config _config;
    private readonly Model _model;
    private readonly Tokenizer? _tokenizer;
    private readonly int _vocab;

    public string Description { get; }

    public GenAiTextGenerator(string folder, int threads = 0)
    {
        _folder = Path.GetFullPath(folder);
        string genai = Path.Combine(_folder, "genai_config.json");
        if (!File.Exists(Path.Combine(_folder, "model.onnx")))
            throw new FileNotFoundException($"{_folder}: no model.onnx (an `export onnx --kv-cache` folder is expected)", Path.Combine(_folder, "model.onnx"));
        if (!File.Exists(genai))
            throw new NotSupportedException($"{_folder}: no genai_config.json; generation needs a KV-cache decoder: export it with `export onnx --kv-cache`");
        try
        {
            _vocab = JsonNode.Parse(File.ReadAllText(genai))?["model"]?["vocab_size"]?.GetValue<int>() ?? 0;
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"{genai}: not a valid genai_config.json ({e.Message})");
        }
        try
        {
            _config = new Config(_folder);
            if (threads > 0)
                _config.Overlay("{\"model\":{\"decoder\":{\"session_options\":{\"intra_op_num_threads\":" + threads + "}}}}");
            _model = new Model(_config);
        }
        catch (OnnxRuntimeGenAIException e)
        {
            _config?.Dispose();
            throw new InvalidDataException($"{_folder}: onnxruntime-genai could not load the model: {e.Message}");
        }
        if (File.Exists(Path.Combine(_folder, "tokenizer.json")))
        {
            try
            {
                _tokenizer = new Tokenizer(_model);
            }
            catch (OnnxRuntimeGenAIException e)
            {
                throw new InvalidDataException($"{_folder}: onnxruntime-genai could not load the tokenizer: {e.Message}");
            }
        }
        Description = $"onnxruntime-genai 0.18.0 (ONNX Runtime {Microsoft.ML.OnnxRuntime.OrtEnv.Instance().GetVersionString()}, cpu, " +
                      $"threads {(threads > 0 ? threads : "default")}) on {_folder}";
    }

    private Tokenizer Tok => _tokenizer ?? throw new NotSupportedException($"{_folder}: no tokenizer.json, so no text prompt (the checkpoint had no tokenizer)");

    /// <summary>The prompt's token ids, after the chat template when <paramref name="chat"/>.</summary>
    public int[] Tokenize(string prompt, bool chat)
    {
        string text = prompt;
        if (chat)
        {
            string template = TextGenerators.ChatTemplate(_folder)
                ?? throw new NotSupportedException($"{_folder}: --chat needs a chat template, and tokenizer_config.json has no chat_template");
            try
            {
                text = Tok.ApplyChatTemplate(template, TextGenerators.UserMessages(prompt), null, true);
            }
            catch (OnnxRuntimeGenAIException e)
            {
                throw new InvalidDataException($"{_folder}: the chat template failed: {e.Message}");
            }
        }
        using var seq = Tok.Encode(text);
        return seq[0].ToArray();
    }

    public GenerationResult Generate(GenerationPrompt prompt, GenerationOptions o, Action<GeneratedToken>? onToken = null, CancellationToken cancellation = default)
    {
        o.Validate();
        int[] promptTokens = prompt.Tokens ?? Tokenize(prompt.Text ?? "", o.Chat);
        if (promptTokens.Length == 0) throw new ArgumentException("the prompt has no tokens");
        foreach (var t in promptTokens)
            if (t < 0 || (_vocab > 0 && t >= _vocab)) throw new ArgumentException($"prompt token {t} is outside the vocabulary (0..{_vocab - 1})");
        using var p = new GeneratorParams(_model);
        p.SetSearchOption("max_length", promptTokens.Length + o.MaxNewTokens);
        p.SetSearchOption("min_length", 0);
        p.SetSearchOption("do_sample", !o.Greedy);
        if (!o.Greedy)
        {
            p.SetSearchOption("temperature", o.Temperature);
            p.SetSearchOption("top_p", o.TopP);
            p.SetSearchOption("top_k", o.TopK > 0 ? o.TopK : Math.Max(_vocab, 1));
            if (o.Seed is { } s) p.SetSearchOption("random_seed", (double)(s & 0x7fffffff));
        }
        using var g = new Generator(_model, p);
        using var stream = _tokenizer?.CreateStream();
        using var self = Process.GetCurrentProcess();
        TimeSpan Cpu() { self.Refresh(); return self.TotalProcessorTime; }
        var cpu0 = Cpu();
        var cpuFirst = cpu0;
        var clock = Stopwatch.StartNew();
        g.AppendTokens(promptTokens);
        var tokens = new List<int>();
        var text = new StringBuilder();
        double prefill = 0;
        string stop = "max_new_tokens";
        while (tokens.Count < o.MaxNewTokens)
        {
            cancellation.ThrowIfCancellationRequested();
            if (g.IsDone()) { stop = "eos"; break; }
            g.GenerateNextToken();
            int id = g.GetNextTokens()[0];
            if (tokens.Count == 0) { prefill = clock.Elapsed.TotalSeconds; cpuFirst = Cpu(); clock.Restart(); }
            tokens.Add(id);
            string piece = stream?.Decode(id) ?? "";
            text.Append(piece);
            onToken?.Invoke(new GeneratedToken(id, piece));
        }
        if (stop != "eos" && g.IsDone() && tokens.Count < o.MaxNewTokens) stop = "eos";
        double decode = tokens.Count > 1 ? clock.Elapsed.TotalSeconds : 0;
        var cpuEnd = Cpu();
        return new GenerationResult(Description, promptTokens, tokens.ToArray(), text.ToString(), prefill, decode, stop)
        {
            PrefillCpuSeconds = (cpuFirst - cpu0).TotalSeconds,
            DecodeCpuSeconds = (cpuEnd - cpuFirst).TotalSeconds,
        };
    }

    public void Dispose()
    {
        _tokenizer?.Dispose();
        _model.Dispose();
        _config.Dispose();
    }
}
