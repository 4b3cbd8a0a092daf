using System.ComponentModel;
using System.Diagnostics;
using System.Text.Json;
using Converter.Formats.Gguf;
using Converter.Numerics.Ggml;
using Converter.Verification;

namespace Converter.Runtime;

/// <summary>KV cache of the llama.cpp context: F32 (verification default) or llama.cpp's default F16.</summary>
public enum LlamaKvCache { F32, F16 }

/// <param name="KvCache">F32 with flash attention off (default: the F16 cache flips near-tie expert routing by
/// itself), or F16 with llama.cpp's default flash attention, what users get.</param>
/// <param name="Threads">llama.cpp threads; 0 uses one per logical processor (node-llama-cpp's own default oversubscribes:
/// 80 s instead of 7 s for 8 x 128 tokens on a 2-core machine).</param>
/// <param name="InteropDirectory">Folder holding logits.mjs and node_modules/node-llama-cpp; null to use
/// <c>CONVERTER_INTEROP_DIR</c> or <c>tests/interop</c> of the repository (found by walking up to Converter.sln).</param>
public sealed record GgufRunnerOptions(LlamaKvCache KvCache = LlamaKvCache.F32, int Threads = 0, string? InteropDirectory = null);

/// <summary>
/// Runs a GGUF file in llama.cpp itself: a Node.js child process (tests/interop/logits.mjs) loads it through the
/// npm package node-llama-cpp (bundled llama.cpp CPU build) and writes every position's raw logits. Hidden states
/// and routing are not available from llama.cpp (routing agreement is reported as null).
/// </summary>
public sealed class GgufArtifactRunner : IArtifactRunner
{
    public const string InteropEnvironmentVariable = "CONVERTER_INTEROP_DIR";
    public const string Script = "logits.mjs";
    public const int MinNodeMajor = 20;

    private readonly string _path, _interop;
    private readonly GgufRunnerOptions _options;
    private string _runtime = "llama.cpp (node-llama-cpp)";

    public string Description =>
        $"{_runtime} via node-llama-cpp (cpu, {(_options.KvCache == LlamaKvCache.F32 ? "F32 KV cache, flash attention off" : "F16 KV cache, flash attention auto: llama.cpp defaults")}, " +
        $"threads {ThreadCount}) on {_path}";

    private int ThreadCount => _options.Threads > 0 ? _options.Threads : Environment.ProcessorCount;

    public GgufArtifactRunner(string path, GgufRunnerOptions? options = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: GGUF file not found", path);
        _path = Path.GetFullPath(path);
        _options = options ?? new GgufRunnerOptions();
        _interop = LocateInterop(_options.InteropDirectory);
        CheckNode();
    }

    /// <summary>
    /// The interop folder: the explicit one, else <c>CONVERTER_INTEROP_DIR</c>, else <c>tests/interop</c> beside
    /// the Converter.sln found above the executable or the current directory. Throws with what to install.
    /// </summary>
    public static string LocateInterop(string? explicitDirectory = null)
    {
        string? dir = explicitDirectory;
        if (dir == null && Environment.GetEnvironmentVariable(InteropEnvironmentVariable) is { Length: > 0 } env) dir = env;
        if (dir == null)
            foreach (var start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
                for (var d = new DirectoryInfo(start); d != null; d = d.Parent)
                    if (File.Exists(Path.Combine(d.FullName, "Converter.sln")))
                    {
                        dir = Path.Combine(d.FullName, "tests", "interop");
                        goto found;
                    }
        found:
        if (dir == null || !File.Exists(Path.Combine(dir, Script)))
            throw new NotSupportedException(
                $"verifying a GGUF file runs llama.cpp through tests/interop/{Script} of the Converter repository, which was not found " +
                $"({(dir == null ? "no Converter.sln above the executable or the current directory" : $"no {Script} in {dir}")}); " +
                $"pass --interop-dir <repo>/tests/interop or set {InteropEnvironmentVariable}");
        if (!File.Exists(Path.Combine(dir, "node_modules", "node-llama-cpp", "package.json")))
            throw new NotSupportedException(
                $"the npm package node-llama-cpp is not installed in {dir}: run `cd {dir} && npm ci` (needs Node.js {MinNodeMajor}+; " +
                "in the repository: `cd tests/interop && npm ci`)");
        return Path.GetFullPath(dir);
    }

    /// <summary>Fails with what to install when <c>node</c> is absent or older than <see cref="MinNodeMajor"/>.</summary>
    private static void CheckNode()
    {
        string version;
        try
        {
            var psi = new ProcessStartInfo("node", ["--version"]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            using var p = Process.Start(psi)!;
            version = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
        }
        catch (Win32Exception)
        {
            throw new NotSupportedException(
                $"verifying a GGUF file runs llama.cpp through Node.js, and `node` was not found on PATH: install Node.js {MinNodeMajor}+ " +
                "(https://nodejs.org), then `cd tests/interop && npm ci`");
        }
        if (!version.StartsWith('v') || !int.TryParse(version[1..].Split('.')[0], out int major) || major < MinNodeMajor)
            throw new NotSupportedException($"Node.js {version} is too old: install Node.js {MinNodeMajor}+ (https://nodejs.org), then `cd tests/interop && npm ci`");
    }

    public ArtifactOutputs Run(int[] tokens, int batch, int seq, bool hiddenStates, bool routing)
    {
        if (tokens.Length != batch * seq) throw new ArgumentException($"{tokens.Length} tokens for batch {batch} x seq {seq}");
        string work = Path.Combine(Path.GetTempPath(), $"converter-gguf-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(work);
        try
        {
            string tokensPath = Path.Combine(work, "tokens.i32"), outPath = Path.Combine(work, "logits.f32");
            File.WriteAllBytes(tokensPath, System.Runtime.InteropServices.MemoryMarshal.AsBytes(tokens.AsSpan()).ToArray());
            var psi = new ProcessStartInfo("node")
            {
                WorkingDirectory = _interop, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            };
            foreach (var a in new[] { Path.Combine(_interop, Script), _path, tokensPath, batch.ToString(), seq.ToString(), outPath,
                         ThreadCount.ToString(), _options.KvCache == LlamaKvCache.F32 ? "f32" : "f16" })
                psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            p.WaitForExit();
            if (p.ExitCode != 0)
                throw new InvalidDataException($"{_path}: llama.cpp (node {Script}) failed with exit code {p.ExitCode}: {Tail(stderr.Result)}");
            string header = stdout.Result.Trim().Split('\n')[^1];
            int vocab;
            using (var doc = JsonDocument.Parse(header))
            {
                vocab = doc.RootElement.GetProperty("vocab").GetInt32();
                if (doc.RootElement.TryGetProperty("llamaCpp", out var v)) _runtime = "llama.cpp " + v.GetString();
            }
            var bytes = File.ReadAllBytes(outPath);
            if (bytes.Length != (long)batch * seq * vocab * 4)
                throw new InvalidDataException($"{_path}: llama.cpp wrote {bytes.Length} bytes of logits, expected {batch} x {seq} x {vocab} float32");
            var logits = new float[bytes.Length / 4];
            Buffer.BlockCopy(bytes, 0, logits, 0, bytes.Length);
            return new ArtifactOutputs(logits, null, null);
        }
        finally
        {
            try { Directory.Delete(work, true); } catch (IOException) { }
        }
    }

    private static string Tail(string text) => text.Length <= 2000 ? text.Trim() : "..." + text[^2000..].Trim();

    /// <summary>
    /// The verify preset a GGUF file's weights call for: every 2-D+ tensor F32 gives gguf-f32; otherwise the
    /// lowest-precision weight type decides (bf16, f16, q8_0 judged; q6_k, q5_k, q4_k, q4_0 and others report only).
    /// A file the GGUF reader cannot parse gets gguf-f32: running it then reports what is wrong with it.
    /// </summary>
    public static string DefaultPreset(string path)
    {
        GgmlType? lowest = null;
        try
        {
            using var reader = GgufReader.Open(path);
            foreach (var t in reader.Tensors)
            {
                if (t.Dimensions.Count < 2) continue;
                if (lowest == null || Rank(t.Type) > Rank(lowest.Value)) lowest = t.Type;
            }
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or ArgumentException)
        {
            return "gguf-f32";
        }
        return lowest switch
        {
            null or GgmlType.F32 => "gguf-f32",
            GgmlType.BF16 => "bf16",
            GgmlType.F16 => "f16",
            GgmlType.Q8_0 => "q8_0",
            var t => VerificationTolerances.PresetNames.Contains(t.Value.ToString().ToLowerInvariant()) ? t.Value.ToString().ToLowerInvariant() : "report",
        };
    }

    /// <summary>Bits lost: higher is coarser.</summary>
    private static int Rank(GgmlType t) => t switch
    {
        GgmlType.F32 or GgmlType.F64 or GgmlType.I32 or GgmlType.I64 => 0,
        GgmlType.F16 => 1,
        GgmlType.BF16 => 2,
        GgmlType.Q8_0 or GgmlType.Q8_1 or GgmlType.Q8_K => 3,
        GgmlType.Q6_K => 4,
        GgmlType.Q5_K or GgmlType.Q5_0 or GgmlType.Q5_1 => 5,
        GgmlType.Q4_K or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.IQ4_NL or GgmlType.IQ4_XS or GgmlType.MXFP4 => 6,
        GgmlType.Q3_K => 7,
        _ => 8,
    };

    /// <summary>Opens GGUF files for <see cref="ArtifactRunnerFactory"/>: threads, <see cref="RunnerOptions.KvCache"/>,
    /// <see cref="RunnerOptions.InteropDirectory"/>; the execution provider must be cpu.</summary>
    public static IArtifactRunner Open(string path, RunnerOptions options)
    {
        if (!options.ExecutionProvider.Equals("cpu", StringComparison.OrdinalIgnoreCase))
            throw new NotSupportedException($"{path}: GGUF files run on llama.cpp's CPU build only (execution provider '{options.ExecutionProvider}')");
        var kv = options.KvCache.ToLowerInvariant() switch
        {
            "f32" => LlamaKvCache.F32,
            "f16" => LlamaKvCache.F16,
            var other => throw new ArgumentException($"--kv-cache: '{other}' is not f32 or f16"),
        };
        return new GgufArtifactRunner(path, new GgufRunnerOptions(kv, options.Threads, options.InteropDirectory));
    }

    /// <summary>Registers <see cref="Open"/> as the factory's GGUF runner.</summary>
    public static ArtifactRunnerFactory RegisterWith(ArtifactRunnerFactory factory) => factory.Register(ArtifactKind.Gguf, Open);

    public void Dispose() { }
}
