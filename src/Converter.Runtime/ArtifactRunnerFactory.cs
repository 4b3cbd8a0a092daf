using Converter.Verification;

namespace Converter.Runtime;

/// <summary>What kind of artifact a path holds; decides which runner opens it.</summary>
/// <remarks>ShardedOnnx: a <c>shard --onnx</c> output folder (placement.json and one ONNX model per rank).</remarks>
public enum ArtifactKind { Onnx, Gguf, ShardedOnnx }

/// <summary>How to run an artifact. <paramref name="Threads"/> 0 lets the runtime choose.</summary>
public sealed record RunnerOptions(int Threads = 0, string ExecutionProvider = "cpu")
{
    /// <summary>GGUF only: llama.cpp's KV cache type, f32 (default) or f16 (llama.cpp's defaults).</summary>
    public string KvCache { get; init; } = "f32";

    /// <summary>GGUF only: the folder holding the node-llama-cpp helper (default: tests/interop of the repository).</summary>
    public string? InteropDirectory { get; init; }

    /// <summary>ONNX KV-cache decoders only: prefill this many tokens, then decode the rest one at a time (verify --decode).</summary>
    public int? DecodePrefill { get; init; }
}

/// <summary>Opens an artifact at a path (file or folder, as given on the command line).</summary>
public delegate IArtifactRunner ArtifactRunnerOpener(string path, RunnerOptions options);

/// <summary>
/// The runners available to <c>verify</c>, one per artifact kind. Runners live in their own files (ONNX Runtime,
/// llama.cpp) and register here at start-up, so verification code never names a runtime.
/// </summary>
public sealed class ArtifactRunnerFactory
{
    private readonly Dictionary<ArtifactKind, ArtifactRunnerOpener> _openers = new();

    /// <summary>The process-wide registry the CLI uses.</summary>
    public static ArtifactRunnerFactory Default { get; } = new();

    /// <summary>Registers (or replaces) the opener for <paramref name="kind"/>.</summary>
    public ArtifactRunnerFactory Register(ArtifactKind kind, ArtifactRunnerOpener opener)
    {
        lock (_openers) _openers[kind] = opener;
        return this;
    }

    public bool IsRegistered(ArtifactKind kind)
    {
        lock (_openers) return _openers.ContainsKey(kind);
    }

    /// <summary>
    /// A folder with a placement.json is a sharded output (<c>shard</c>); any other folder or a <c>.onnx</c> file is
    /// ONNX (external data sits beside the graph); a <c>.gguf</c> file is GGUF.
    /// Throws <see cref="FileNotFoundException"/> for a missing path and <see cref="ArgumentException"/> otherwise.
    /// </summary>
    public static ArtifactKind Detect(string path)
    {
        if (Directory.Exists(path))
            return File.Exists(Path.Combine(path, Converter.Sharding.PlacementJson.FileName)) ? ArtifactKind.ShardedOnnx : ArtifactKind.Onnx;
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: artifact not found", path);
        return Path.GetExtension(path).ToLowerInvariant() switch
        {
            ".onnx" => ArtifactKind.Onnx,
            ".gguf" => ArtifactKind.Gguf,
            var ext => throw new ArgumentException($"{path}: cannot tell the artifact kind from '{ext}' (expected a folder, .onnx or .gguf)"),
        };
    }

    public IArtifactRunner Open(string path, RunnerOptions options) => Open(path, Detect(path), options);

    public IArtifactRunner Open(string path, ArtifactKind kind, RunnerOptions options)
    {
        ArtifactRunnerOpener? opener;
        lock (_openers) _openers.TryGetValue(kind, out opener);
        if (opener == null)
            throw new NotSupportedException($"{path}: no runner for {kind} artifacts is registered in this build");
        return opener(path, options);
    }
}
