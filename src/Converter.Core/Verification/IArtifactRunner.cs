namespace Converter.Verification;

/// <summary>What an artifact computed for a batch of token sequences.</summary>
/// <param name="Logits">[batch, seq, vocab] row-major.</param>
/// <param name="HiddenStates">For sequence 0 only: [layers + 1][seq * hidden] (embedding output, each layer's
/// output, the last one after the final norm), or null when not requested or not available.</param>
/// <param name="RoutingTopK">Per MoE layer: [batch * seq * k] selected expert ids (order within a position is
/// irrelevant), or null when not requested or not available.</param>
public sealed record ArtifactOutputs(float[] Logits, float[][]? HiddenStates, int[][]? RoutingTopK)
{
    /// <summary>For sequence 0 only, where the model carries several residual streams: [layers + 1][seq * streams * hidden]
    /// (the expanded embedding, then every layer's output streams), or null.</summary>
    public float[][]? ResidualStates { get; init; }

    /// <summary>Per layer that selects its attention keys by a top-k (DeepSeek-V4's lightning indexer), in layer order:
    /// [batch * seq * k] selected entries, -1 where a pick is not attendable; or null.</summary>
    public int[][]? Selections { get; init; }
}

/// <summary>Runs an exported artifact (ONNX via ONNX Runtime, GGUF via llama.cpp, ...) on golden tokens.</summary>
public interface IArtifactRunner : IDisposable
{
    /// <summary>A one-line description for reports (runtime, version, execution provider, threads).</summary>
    string Description { get; }

    ArtifactOutputs Run(int[] tokens, int batch, int seq, bool hiddenStates, bool routing);
}
