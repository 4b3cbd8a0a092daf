namespace Converter.Decoder.Onnx;

/// <summary>Rotary cos/sin caches [positions, Half] (RotaryEmbedding's layout), shared by every layer.</summary>
public sealed record OnnxRopeTables(float[] Cos, float[] Sin, long Half);

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

    /// <summary>Emits layer <paramref name="layer"/>'s attention on its normed input [batch, sequence, hidden]
    /// and returns the attention output value (same shape), before the residual add.</summary>
    string Attention(OnnxDecoderBuilder b, int layer, string normed);
}
