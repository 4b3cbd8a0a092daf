namespace Converter.Decoder.Onnx;

/// <summary>Rotary cos/sin caches [positions, Half] (RotaryEmbedding's layout), shared by every layer.</summary>
public sealed record OnnxRopeTables(float[] Cos, float[] Sin, long Half);

/// <summary>A layer's key and value cache tensors as the graph holds them: [batch, Heads, sequence, HeadSize] each.</summary>
public sealed record OnnxKvCacheShape(int Heads, int HeadSize)
{
    /// <summary>Values one token adds to one layer's cache (key and value together).</summary>
    public long ValuesPerToken => 2L * Heads * HeadSize;
}

/// <summary>One layer's cache in a KV-cache decoder: the past inputs, and the present values the attention must produce
/// (past followed by this call's tokens).</summary>
public sealed record OnnxLayerCache(string PastKey, string PastValue, string PresentKey, string PresentValue);

/// <summary>
/// What a model family contributes to the shared ONNX decoder graph (<see cref="OnnxDecoderGraph"/>): its
/// attention. The scaffold owns the rest: embedding, mask and positions, the residual chain with its norms, the
/// dense and MoE feed-forward blocks (routing from the family's <see cref="Models.RoutingRule"/>), the head,
/// layer slices, expert-parallel rank graphs and the metadata the runtime reads.
/// </summary>
public interface IOnnxDecoderFamily
{
    /// <summary>Positions the rotary tables cover (the graph accepts position ids below this).</summary>
    int MaxPositions { get; }

    /// <summary>The rotary tables the attention reads through <see cref="OnnxDecoderBuilder.Cos"/> / <see cref="OnnxDecoderBuilder.Sin"/>.</summary>
    OnnxRopeTables Rope(int positions);

    /// <summary>The per-layer cache a KV-cache decoder keeps (what the family stores per token).</summary>
    OnnxKvCacheShape KvCache { get; }

    /// <summary>Emits layer <paramref name="layer"/>'s attention on its normed input [batch, sequence, hidden]
    /// and returns the attention output value (same shape), before the residual add. With <paramref name="cache"/>,
    /// keys and values of earlier tokens come from its past inputs and the attention writes its present outputs;
    /// <see cref="OnnxDecoderBuilder.Mask"/> then spans past and new tokens.</summary>
    string Attention(OnnxDecoderBuilder b, int layer, string normed, OnnxLayerCache? cache);
}
