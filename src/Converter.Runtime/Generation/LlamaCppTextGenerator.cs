using System.ComponentModel;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Converter.Runtime.Generation;

/// <summary>
/// Generation from a GGUF file in llama.cpp itself: a Node.js child process (tests/interop/generate.mjs) loads it through
/// node-llama-cpp's bundled CPU build, tokenizes (and applies the file's chat template), generates and streams one JSON
/// line per token, which this class turns into <see cref="GeneratedToken"/> callbacks. The timings are llama.cpp's own
/// (measured in the helper, without process start and model load).
/// </summary>
public sealed class LlamaCppTextGenerator : ITextGenerator
{
    public const string Script = "generate.mjs";
    private readonly string _path, _interop, _kvCache;
    private readonly int _threads;
    private string _runtime = "llama.cpp";

    public string Description =>
        $"{_runtime} via node-llama-cpp (cpu, {(_kvCache == "f32" ? "F32 KV cache, flash attention off" : "F16 KV cache, flash attention auto: llama.cpp defaults")}, " +
        $"threads {(_threads > 0 ? _threads : Environment.ProcessorCount)}) on {_path}";

    /// <param name="kvCache">f16 (llama.cpp's defaults) or f32 (F32 cache, flash attention off, as verify runs).</param>
    public LlamaCppTextGenerator(string path, int threads = 0, string? interopDirectory = null, string kvCache = "f16")
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: GGUF file not found", path);
        _kvCache = kvCache.ToLowerInvariant() is "f32" or "f16" ? kvCache.ToLowerInvariant() : throw new ArgumentException($"--kv-cache: '{kvCache}' is not f32 or f16");
        _path = Path.GetFullPath(path);
        _threads = threads;
        _interop = GgufArtifactRunner.LocateInterop(interopDirectory);
        if (!File.Exists(Path.Combine(_interop, Script)))
            throw new NotSupportedException($"{_interop}: no {Script} (the node-llama-cpp generation helper of the Converter repository)");
    }

    public GenerationResult Generate(GenerationPrompt prompt, GenerationOptions o, Action<GeneratedToken>? onToken = null, CancellationToken cancellation = default)
    {
        o.Validate();
        string request = Path.Combine(Path.GetTempPath(), $"converter-generate-{Environment.ProcessId}-{Guid.NewGuid():N}.json");
        var req = new JsonObject
        {
            ["prompt"] = prompt.Text,
            ["tokens"] = prompt.Tokens is { } t ? new JsonArray(t.Select(x => (JsonNode)x).ToArray()) : null,
            ["chat"] = o.Chat,
            ["maxNewTokens"] = o.MaxNewTokens,
            ["temperature"] = o.Temperature,
            ["topP"] = o.TopP,
            ["topK"] = o.TopK,
            ["seed"] = o.Seed,
            ["threads"] = _threads > 0 ? _threads : Environment.ProcessorCount,
            ["kvCache"] = _kvCache,
        };
        File.WriteAllText(request, req.ToJsonString());
        var psi = new ProcessStartInfo("node")
        {
            WorkingDirectory = _interop, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
        };
        psi.ArgumentList.Add(Path.Combine(_interop, Script));
        psi.ArgumentList.Add(_path);
        psi.ArgumentList.Add(request);
        Process p;
        try
        {
            p = Process.Start(psi)!;
        }
        catch (Win32Exception)
        {
            File.Delete(request);
            throw new NotSupportedException($"generating from a GGUF file runs llama.cpp through Node.js, and `node` was not found on PATH: " +
                                            $"install Node.js {GgufArtifactRunner.MinNodeMajor}+, then `cd tests/interop && npm ci`");
        }
        using var _ = p;
        using var kill = cancellation.Register(() => { try { p.Kill(true); } catch (InvalidOperationException) { } });
        var stderr = p.StandardError.ReadToEndAsync();
        int[] promptTokens = [];
        var tokens = new List<int>();
        var text = new StringBuilder();
        double prefill = 0, decode = 0, prefillCpu = double.NaN, decodeCpu = double.NaN;
        string stop = "max_new_tokens";
        try
        {
            while (p.StandardOutput.ReadLine() is { } line)
            {
                if (line.Length == 0 || line[0] != '{') continue;
                using var doc = JsonDocument.Parse(line);
                var e = doc.RootElement;
                switch (e.GetProperty("event").GetString())
                {
                    case "prompt":
                        promptTokens = e.GetProperty("tokens").EnumerateArray().Select(x => x.GetInt32()).ToArray();
                        break;
                    case "loaded":
                        _runtime = e.GetProperty("llamaCpp").GetString() ?? _runtime;
                        break;
                    case "token":
                        var tok = new GeneratedToken(e.GetProperty("id").GetInt32(), e.GetProperty("text").GetString() ?? "");
                        tokens.Add(tok.Id);
                        text.Append(tok.Text);
                        onToken?.Invoke(tok);
                        break;
                    case "done":
                        prefill = e.GetProperty("prefillSeconds").GetDouble();
                        decode = e.GetProperty("decodeSeconds").GetDouble();
                        stop = e.GetProperty("stopReason").GetString() ?? stop;
                        if (e.TryGetProperty("prefillCpuSeconds", out var pc)) prefillCpu = pc.GetDouble();
                        if (e.TryGetProperty("decodeCpuSeconds", out var dc)) decodeCpu = dc.GetDouble();
                        break;
                }
            }
            p.WaitForExit();
        }
        finally
        {
            File.Delete(request);
        }
        cancellation.ThrowIfCancellationRequested();
        string err = stderr.Result.Trim();
        if (p.ExitCode == 2) throw new ArgumentException(LastLine(err));
        if (p.ExitCode != 0)
            throw new InvalidDataException($"{_path}: llama.cpp (node {Script}) failed with exit code {p.ExitCode}: {LastLine(err)}");
        return new GenerationResult(Description, promptTokens, tokens.ToArray(), text.ToString(), prefill, decode, stop)
        {
            PrefillCpuSeconds = prefillCpu,
            DecodeCpuSeconds = decodeCpu,
        };
    }

    private static string LastLine(string s)
    {
        var lines = s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        // a Node exception prints its stack: its "...Error: message" line says what happened
        return lines.FirstOrDefault(l => l.Contains("Error:", StringComparison.Ordinal)) ?? (lines.Length == 0 ? "(no message)" : lines[^1]);
    }

    public void Dispose() { }
}
